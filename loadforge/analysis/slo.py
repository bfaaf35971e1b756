"""SLO verdicts: the objectives of `Plan.slo` (config/plan.py's SLO, their meaning in
config/profile.py's docstring) judged from merged histograms.

Everything is computed from the interval rows a run writes, folded by figures.fold_intervals
into `IntervalFigures`: at the end of a run from the `RunFold` the runner fed as it wrote the
rows (`evaluate`; `ls` and `report` fold the file's rows into the same, readback.run_fold),
during the run from the same rows one interval at a time (`LiveSLO`, for `abort_after`). So
a window that aborted a run is judged by exactly the numbers the archived file holds.

Sliding windows keep a sparse running sum of histogram buckets (add the interval that enters,
subtract the one that leaves): re-merging N histograms per step would cost N x 23552 bucket
additions per window position on an hour-long run.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from loadforge.analysis.figures import (  # noqa: F401  (their home is the one fold)
    LATENCY_OBJECTIVES,
    IntervalFigures,
    RowSource,
    RunFold,
    SparseBuckets,
    fold_intervals,
)
from loadforge.config.plan import Plan, WindowObjectives
from loadforge.results.schema import OK

# What reads a result file back (readback.py, with the noise model and the file reader) loads
# where a file is judged (`ls`, `report`, `compare`): a run judges the fold it wrote.
if TYPE_CHECKING:
    from loadforge.results.reader import Result

FRACTION_OBJECTIVES = ("error_rate", "success_rate", "rate_shortfall")
OBJECTIVES = LATENCY_OBJECTIVES + FRACTION_OBJECTIVES
# Objectives that hold when observed >= limit; every other one holds when observed <= limit.
AT_LEAST = ("success_rate", "checks")
_LABELS = {"p999": "p99.9"}

__all__ = [
    "IntervalFigures",
    "LiveSLO",
    "LiveVerdicts",
    "evaluate",
    "needs_latency",
]


def _holds(objective: str, observed: float, limit: float) -> bool:
    return observed >= limit if objective in AT_LEAST else observed <= limit


def _worse(objective: str, a: float, b: float) -> bool:
    """True when `a` is a worse observation than `b`."""
    return a < b if objective in AT_LEAST else a > b


def _limit(objective: str, value: float) -> tuple[float, str]:
    """The limit in the verdict's unit: latency limits are seconds in the Plan, µs here."""
    if objective in LATENCY_OBJECTIVES:
        return value * 1e6, "us"
    return value, "ratio"


def _label(objective: str) -> str:
    return _LABELS.get(objective, objective)


def fmt_seconds(value: float) -> str:
    return f"{value:g}s"


def _open_stages(plan: Plan) -> dict[str, bool]:
    return {s.name: s.open_model for s in plan.stages}


def _stage_starts(plan: Plan) -> dict[str, float]:
    starts, t = {}, 0.0
    for s in plan.stages:
        starts[s.name] = t
        t += s.duration_s
    return starts


# -- windows ---------------------------------------------------------------------------------

def _series(figures: dict[tuple[int, str], IntervalFigures],
            stage: str | None) -> list[tuple[int, IntervalFigures]]:
    """Per interval index, the figures of one stage, or of every stage merged."""
    by_index: dict[int, IntervalFigures] = {}
    for (index, name), fig in figures.items():
        if stage is not None and name != stage:
            continue
        acc = by_index.get(index)
        if acc is None:
            acc = by_index[index] = IntervalFigures()
        acc.add(fig)
    for acc in by_index.values():
        acc.compact()
    return sorted(by_index.items())


class _Window:
    """A sliding window of `size` intervals over a series fed in index order."""

    def __init__(self, size: int):
        self.size = size
        self.intervals: deque[tuple[int, IntervalFigures]] = deque()
        self.sum = IntervalFigures()

    def push(self, index: int, fig: IntervalFigures) -> None:
        self.intervals.append((index, fig))
        self.sum.add(fig)
        # Index-based, so that a gap in the series (a stage not running) empties the window.
        while self.intervals and self.intervals[0][0] <= index - self.size:
            _, old = self.intervals.popleft()
            self.sum.add(old, -1)

    @property
    def full(self) -> bool:
        return bool(self.intervals) and \
            self.intervals[-1][0] - self.intervals[0][0] + 1 >= self.size

    @property
    def start_index(self) -> int:
        return self.intervals[-1][0] - self.size + 1


def _window_name(entry: WindowObjectives, objective: str) -> str:
    where = f"stage {entry.stage} " if entry.stage else ""
    return f"{where}{_label(objective)} over any {fmt_seconds(entry.window_s)} window"


# -- evaluation at the end of a run ----------------------------------------------------------

def _verdict(name: str, objective: str, observed: float | None, limit_value: float,
             scope: str, **extra: Any) -> dict[str, Any]:
    limit, unit = _limit(objective, limit_value)
    verdict: dict[str, Any] = {
        "name": name,
        "ok": observed is not None and _holds(objective, observed, limit),
        "observed": observed,
        "limit": limit,
        "unit": unit,
        "objective": objective,
        "scope": scope,
    }
    verdict.update(extra)
    if observed is None:
        verdict["note"] = "no data in scope"
    return verdict


def needs_latency(plan: Plan) -> bool:
    """Whether any objective of `plan.slo` judges latency (else counts are enough)."""
    slo = plan.slo
    limits = [slo.run, *(e.limits for e in slo.stages), *(w.limits for w in slo.windows)]
    return any(objective in LATENCY_OBJECTIVES for entry in limits for objective in entry)


def _judged(plan: Plan, fold: RunFold) -> dict[tuple[int, str], IntervalFigures]:
    """The fold's interval figures as the objectives judge them: arrivals due and responses
    of closed-model stages stay out of the rate shortfall."""
    open_stages = _open_stages(plan)
    return {key: fig if open_stages.get(key[1], True)
            else IntervalFigures(fig.latency, fig.sent, fig.errors)
            for key, fig in fold.intervals.items()}


def evaluate(plan: Plan, source: RunFold | Result | str) -> list[dict[str, Any]]:
    """Every objective of `plan.slo`, judged from the interval rows of a run: folded as they
    were written (a RunFold), or read back from its result file (a Result, or its path).

    Verdict: {"name", "ok", "observed", "limit", "unit" ("us" | "ratio"), "objective",
    "scope" ("run" | "stage" | "window"), "stage", and for windows "window_s" and
    "window_start_s" (the start of the worst window, seconds from the run's start)}.
    An objective with no data to judge it by (no responses in its scope) fails.
    """
    slo = plan.slo
    if not (slo.run or slo.stages or slo.windows or slo.checks is not None):
        return []
    if not isinstance(source, RunFold):
        from loadforge.analysis.readback import flows_of, run_fold
        from loadforge.results.store import read_result

        result = read_result(source) if isinstance(source, str) else source
        if not (slo.run or slo.stages or slo.windows):
            assert slo.checks is not None
            return [_checks_verdict(slo.checks, flows_of(result))]
        source = run_fold(result, plan.fail_status)
    if not (slo.run or slo.stages or slo.windows):
        assert slo.checks is not None
        return [_checks_verdict(slo.checks, source.flows)]
    fold = source
    interval_ms = fold.interval_ms
    figures = _judged(plan, fold)
    interval_s = interval_ms / 1000
    verdicts: list[dict[str, Any]] = []
    if slo.checks is not None:
        verdicts.append(_checks_verdict(slo.checks, fold.flows))

    run_fig = IntervalFigures()
    for fig in figures.values():
        run_fig.add(fig)
    cache: dict[str, Any] = {}
    for objective, limit in slo.run.items():
        verdicts.append(_verdict(_label(objective), objective,
                                 run_fig.observe(objective, cache), limit, "run", stage=None))

    starts = _stage_starts(plan)
    for entry in slo.stages:
        stage, grace = entry.stage, entry.grace_s
        from_ms = (starts.get(stage, 0.0) + grace) * 1000
        mine = [(i, f) for (i, name), f in figures.items() if name == stage]
        if grace > 0:
            after = [(i, f) for i, f in mine if i * interval_ms >= from_ms - 0.5]
            # Grace ending inside the stage's last interval: judge that interval.
            mine = after or [(i, f) for i, f in mine if (i + 1) * interval_ms > from_ms]
        fig = IntervalFigures()
        for _, f in mine:
            fig.add(f)
        cache = {}
        suffix = f" (after {fmt_seconds(grace)} grace)" if grace > 0 else ""
        for objective, limit in entry.limits.items():
            verdicts.append(_verdict(f"stage {stage} {_label(objective)}{suffix}", objective,
                                     fig.observe(objective, cache), limit, "stage",
                                     stage=stage, grace_s=grace))

    for win in slo.windows:
        size = max(1, round(win.window_s * 1000 / interval_ms))
        series = _series(figures, win.stage)
        objectives = list(win.limits.items())
        worst: dict[str, tuple[float, int]] = {}
        window = _Window(size)
        any_full = False
        for index, fig in series:
            window.push(index, fig)
            if window.full:
                any_full = True
                _keep_worst(worst, objectives, window.start_index, window.sum)
        if not any_full and series:
            # Fewer intervals than the window (the run was cut short): judge what there is.
            whole = IntervalFigures()
            for _, fig in series:
                whole.add(fig)
            _keep_worst(worst, objectives, series[0][0], whole)
        for objective, limit in objectives:
            observed, start = worst.get(objective, (None, None))
            verdicts.append(_verdict(
                _window_name(win, objective), objective, observed, limit, "window",
                stage=win.stage, window_s=win.window_s,
                window_start_s=None if start is None else round(start * interval_s, 3)))
    return verdicts


def _checks_verdict(limit: float, flows: dict[str, Any]) -> dict[str, Any]:
    """`checks`: the fraction of scripted flows' checks that passed over the run (its flows'
    figures, recorded in the result's `flows` metadata), at least `limit`."""
    observed = flows.get("checks_rate")
    return _verdict("checks", "checks", observed, limit, "run", stage=None)


def _keep_worst(worst: dict[str, tuple[float, int]], objectives: list[tuple[str, float]],
                start_index: int, span: IntervalFigures) -> None:
    cache: dict[str, Any] = {}
    for objective, _ in objectives:
        observed = span.observe(objective, cache)
        if observed is None:
            continue
        if objective not in worst or _worse(objective, observed, worst[objective][0]):
            worst[objective] = (observed, start_index)


# -- during the run: abort_after -------------------------------------------------------------

class LiveSLO:
    """Judges the windowed objectives that carry `abort_after`, once per merged interval.

    The coordinator calls `interval(index, rows)` with the interval rows it has just written
    (HdrHistogram objects under "latency"); the return value is the reason to stop the run, or
    None. Memory is bounded by the windows' lengths.
    """

    def __init__(self, plan: Plan, interval_s: float = 1.0):
        self.interval_ms = int(round(interval_s * 1000))
        self.open_stages = _open_stages(plan)
        self.fail_status = plan.fail_status
        self.entries: list[tuple[WindowObjectives, _Window, list[int | None]]] = []
        for entry in plan.slo.windows:
            if entry.abort_after_s is None:
                continue
            size = max(1, round(entry.window_s * 1000 / self.interval_ms))
            # [index of the first failing window end of the current streak]
            self.entries.append((entry, _Window(size), [None]))

    def interval(self, index: int, rows: list[dict[str, Any]]) -> str | None:
        if not self.entries:
            return None
        # The rows' histograms are also the coordinator's accumulators: read, never keep.
        source = RowSource.live(self.fail_status, any(row["outcome"] == OK for row in rows))
        figures = fold_intervals(rows, self.interval_ms, source, self.open_stages)
        reason = None
        for entry, window, streak in self.entries:
            series = _series(figures, entry.stage)
            if not series:
                continue
            window.push(index, series[0][1])
            if not window.full:
                continue
            failed = []
            cache: dict[str, Any] = {}
            for objective, limit in entry.limits.items():
                observed = window.sum.observe(objective, cache)
                if observed is not None and not _holds(objective, observed,
                                                       _limit(objective, limit)[0]):
                    failed.append((objective, observed, limit))
            if not failed:
                streak[0] = None
                continue
            first = streak[0] = index if streak[0] is None else streak[0]
            failing_s = (index - first) * self.interval_ms / 1000
            abort_after = entry.abort_after_s or 0.0
            if reason is None and failing_s >= abort_after - 1e-9:
                objective, observed, limit = failed[0]
                shown, unit = _limit(objective, limit)
                reason = (f"{_window_name(entry, objective)}: observed "
                          f"{show_limit(observed, unit)} > limit {show_limit(shown, unit)}"
                          if objective not in AT_LEAST else
                          f"{_window_name(entry, objective)}: observed "
                          f"{show_limit(observed, unit)} < limit {show_limit(shown, unit)}")
                reason += (f", failing for {fmt_seconds(failing_s)} (abort_after "
                           f"{fmt_seconds(abort_after)}) at "
                           f"{fmt_seconds((index + 1) * self.interval_ms / 1000)}")
        return reason


def show_limit(value: float, unit: str) -> str:
    if unit == "ratio":
        return f"{value * 100:.4g}%"
    if value >= 1_000_000:
        return f"{value / 1e6:.4g}s"
    if value >= 1000:
        return f"{value / 1000:.4g}ms"
    return f"{value:.0f}µs"


# -- during the run: every objective on what ran so far (the live outputs) -------------------

class LiveVerdicts:
    """The objectives of `plan.slo` judged on the run so far, once per merged interval, for
    the live outputs (`--metrics`' loadforge_slo_ok, `--dashboard`): the run's objectives over
    every interval merged yet, a stage's over its intervals after the grace, a window's over
    the worst window yet. Named as `evaluate` names them; once the run is over, `evaluate`'s
    verdicts of the whole run's fold are the ones that count (a stage whose grace ends inside its last
    interval, and `checks`, are judged only there). Memory is bounded by the windows' lengths.
    """

    def __init__(self, plan: Plan, interval_s: float = 1.0):
        self.interval_ms = int(round(interval_s * 1000))
        self.open_stages = _open_stages(plan)
        self.fail_status = plan.fail_status
        self.slo = plan.slo
        self.starts = _stage_starts(plan)
        self.run = IntervalFigures()
        self.stages = [IntervalFigures() for _ in plan.slo.stages]
        # per window objective: the sliding window, the worst of its full positions so far
        self.windows = [(_Window(max(1, round(w.window_s * 1000 / self.interval_ms))),
                         dict[str, tuple[float, int]]()) for w in plan.slo.windows]
        self.filled = [False] * len(plan.slo.windows)

    def interval(self, index: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The verdicts once the interval `index` (its rows as the coordinator wrote them)
        is added: {"name", "ok", "observed", "limit", "unit", "objective", "scope"}."""
        slo = self.slo
        if not (slo.run or slo.stages or slo.windows):
            return []
        source = RowSource.live(self.fail_status, any(row["outcome"] == OK for row in rows))
        figures = fold_intervals(rows, self.interval_ms, source, self.open_stages)
        for fig in figures.values():
            self.run.add(fig)
        verdicts: list[dict[str, Any]] = []
        cache: dict[str, Any] = {}
        for objective, limit in slo.run.items():
            verdicts.append(_verdict(_label(objective), objective,
                                     self.run.observe(objective, cache), limit, "run"))
        for entry, acc in zip(slo.stages, self.stages, strict=True):
            from_ms = (self.starts.get(entry.stage, 0.0) + entry.grace_s) * 1000
            for (i, name), fig in figures.items():
                if name == entry.stage and i * self.interval_ms >= from_ms - 0.5:
                    acc.add(fig)
            cache = {}
            suffix = f" (after {fmt_seconds(entry.grace_s)} grace)" if entry.grace_s > 0 else ""
            for objective, limit in entry.limits.items():
                verdicts.append(_verdict(f"stage {entry.stage} {_label(objective)}{suffix}",
                                         objective, acc.observe(objective, cache), limit,
                                         "stage"))
        for k, (win, (window, worst)) in enumerate(zip(slo.windows, self.windows,
                                                        strict=True)):
            objectives = list(win.limits.items())
            for i, fig in _series(figures, win.stage):
                window.push(i, fig)
                if window.full:
                    if not self.filled[k]:
                        worst.clear()
                        self.filled[k] = True
                    _keep_worst(worst, objectives, window.start_index, window.sum)
                elif not self.filled[k]:
                    # Until a first window is whole, what ran of it is judged (as evaluate
                    # judges a run shorter than the window).
                    worst.clear()
                    _keep_worst(worst, objectives, 0, window.sum)
            for objective, limit in objectives:
                observed = worst.get(objective, (None, 0))[0]
                verdicts.append(_verdict(_window_name(win, objective), objective, observed,
                                         limit, "window"))
        return verdicts
