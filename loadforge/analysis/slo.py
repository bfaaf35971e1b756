"""SLO verdicts: the objectives of `Plan.slo` (shape in profile.py's docstring) judged from
merged histograms.

Everything is computed from the interval rows a run writes: at the end of a run from the
Parquet file read back (`evaluate`), during the run from the same rows as the coordinator
writes them (`LiveSLO`, for `abort_after`). Both go through `IntervalFigures`, so a window
that aborted a run is judged by exactly the numbers the archived file holds.

Sliding windows keep a sparse running sum of histogram buckets (add the interval that enters,
subtract the one that leaves): re-merging N histograms per step would cost N x 23552 bucket
additions per window position on an hour-long run. Each interval's own buckets are kept in
two arrays (`SparseBuckets`), ~16 bytes a bucket where a dict takes ~100, since a whole run's
intervals are held at once.
"""

from __future__ import annotations

import json
import tomllib
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress
from typing import Any
from xml.etree import ElementTree

from hdrh.histogram import HdrHistogram

from loadforge.config.plan import ERROR_KINDS, STATUS_OUTCOMES, Plan
from loadforge.errors import ProfileError, ResultsError
from loadforge.results import histogram
from loadforge.results.store import OK, Result, headline_row, outcome_row, read_result

LATENCY_OBJECTIVES = ("p50", "p90", "p99", "p999", "max", "mean")
FRACTION_OBJECTIVES = ("error_rate", "success_rate", "rate_shortfall")
OBJECTIVES = LATENCY_OBJECTIVES + FRACTION_OBJECTIVES
# Objectives that hold when observed >= limit; every other one holds when observed <= limit.
AT_LEAST = ("success_rate",)
_LABELS = {"p999": "p99.9"}

__all__ = [
    "IntervalFigures",
    "LiveSLO",
    "evaluate",
    "junit_xml",
    "plan_of_result",
    "write_junit",
]


# -- figures of one interval, or of a merge of intervals -------------------------------------

class SparseBuckets(Mapping[int, int]):
    """Nonzero histogram buckets (hdrh index -> count), read-only, in two sorted arrays."""

    __slots__ = ("_count", "_index")

    def __init__(self, buckets: Mapping[int, int]):
        keys = sorted(buckets)
        self._index = array("q", keys)
        self._count = array("Q", (buckets[k] for k in keys))

    def __getitem__(self, key: int) -> int:
        i = bisect_left(self._index, key)
        if i < len(self._index) and self._index[i] == key:
            return self._count[i]
        raise KeyError(key)

    def __iter__(self) -> Iterator[int]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def pairs(self) -> Iterator[tuple[int, int]]:
        return zip(self._index, self._count, strict=True)


def _pairs(buckets: Mapping[int, int]) -> Iterable[tuple[int, int]]:
    return buckets.pairs() if isinstance(buckets, SparseBuckets) else buckets.items()


@dataclass
class IntervalFigures:
    """What the objectives need from a span of time: latency bucket counts (sparse, hdrh
    index -> count) and outcome counts. A running sum holds them in a dict; `compact()`
    freezes one interval's into a `SparseBuckets`, and adding to it thaws it again."""

    latency: Mapping[int, int] = field(default_factory=dict)
    sent: int = 0            # arrivals that ended: responses + transport failures
    errors: int = 0          # transport failures + responses in Plan.fail_status
    scheduled: int = 0       # arrivals due, open-model stages only
    open_responses: int = 0  # responses, open-model stages only (for the rate shortfall)

    def _buckets(self) -> dict[int, int]:
        if not isinstance(self.latency, dict):
            self.latency = dict(_pairs(self.latency))
        return self.latency

    def compact(self) -> None:
        """Keep the latency buckets in arrays: for figures held until the end of a run."""
        if isinstance(self.latency, dict):
            self.latency = SparseBuckets(self.latency)

    def add(self, other: IntervalFigures, sign: int = 1) -> None:
        lat = self._buckets()
        for index, count in _pairs(other.latency):
            left = lat.get(index, 0) + sign * count
            if left:
                lat[index] = left
            else:
                lat.pop(index, None)
        self.sent += sign * other.sent
        self.errors += sign * other.errors
        self.scheduled += sign * other.scheduled
        self.open_responses += sign * other.open_responses

    def add_histogram(self, h: HdrHistogram) -> None:
        if not h.total_count:
            return
        counts = memoryview(h.counts).cast("B").cast("Q")
        limit = min(h.get_counts_array_index(h.max_value) + 1, len(counts))
        lat = self._buckets()
        for index in compress(range(limit), counts[:limit]):
            lat[index] = lat.get(index, 0) + counts[index]

    def latency_stats(self) -> dict[str, Any]:
        """histogram.stats() of the merged latency (same percentile definitions)."""
        h = histogram.new_histogram()
        if self.latency:
            hc = h.counts
            for index, count in _pairs(self.latency):
                hc[index] = count
            h.total_count = sum(count for _, count in _pairs(self.latency))
            h.min_value = h.get_value_from_index(min(self.latency))
            h.max_value = h.get_value_from_index(max(self.latency))
        return histogram.stats(h)

    def observe(self, objective: str, cache: dict[str, Any] | None = None) -> float | None:
        """The observed value of `objective` (µs for latency, a fraction otherwise); None when
        the span has nothing to judge it by."""
        if objective in LATENCY_OBJECTIVES:
            if not self.latency:
                return None
            if cache is None:
                cache = {}
            if "stats" not in cache:
                cache["stats"] = self.latency_stats()
            return float(cache["stats"][objective])
        if objective == "error_rate":
            return self.errors / self.sent if self.sent else None
        if objective == "success_rate":
            return (self.sent - self.errors) / self.sent if self.sent else None
        if objective == "rate_shortfall":
            if not self.scheduled:
                return None
            # Late responses of the previous interval can make achieved exceed target.
            return max(0.0, (self.scheduled - self.open_responses) / self.scheduled)
        raise ValueError(f"unknown SLO objective {objective!r}")


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


def _objectives(entry: dict[str, Any]) -> list[tuple[str, float]]:
    # Only the objectives judged here: scaling objectives (time_to_recover, failover) have
    # their own judge, and an entry may hold nothing else.
    return [(k, float(v)) for k, v in entry.items() if k in OBJECTIVES]


def _label(objective: str) -> str:
    return _LABELS.get(objective, objective)


def _seconds(value: float) -> str:
    return f"{value:g}s"


# -- reading interval rows -------------------------------------------------------------------

class _RowFolder:
    """Turns interval rows (Parquet rows, or the coordinator's row dicts) into
    IntervalFigures per (interval index, stage)."""

    def __init__(self, plan: Plan, interval_ms: int):
        self.interval_ms = interval_ms
        self.open = {s.name: s.open_model for s in plan.stages}
        self.error_outcomes = set(ERROR_KINDS) | set(plan.fail_status)

    def fold(self, rows: Iterable[dict[str, Any]],
             latency_of: Callable[[dict[str, Any]], HdrHistogram],
             has_ok_rows: bool = True) -> dict[tuple[int, str], IntervalFigures]:
        """Latency from the successful responses only (the "ok" rows, see results.OK):
        a p99 objective must not hold because errors are fast."""
        out: dict[tuple[int, str], IntervalFigures] = {}
        for row in rows:
            if row["scope"] != "interval" or row["stage"] == "*":
                continue
            stage = row["stage"]
            key = (int(row["start_ms"]) // self.interval_ms, stage)
            fig = out.get(key)
            if fig is None:
                fig = out[key] = IntervalFigures()
            if headline_row(row, has_ok_rows, self.error_outcomes):
                fig.add_histogram(latency_of(row))
            if row["name"] == "*" and row["outcome"] == "*":
                if self.open.get(stage, True):
                    fig.scheduled += int(row.get("scheduled") or 0)
                continue
            if not outcome_row(row):
                continue
            count = int(row["count"])
            outcome = row["outcome"]
            fig.sent += count
            if outcome in self.error_outcomes:
                fig.errors += count
            if outcome in STATUS_OUTCOMES and self.open.get(stage, True):
                fig.open_responses += count
        for fig in out.values():
            fig.compact()
        return out


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


def _window_name(entry: dict[str, Any], objective: str) -> str:
    where = f"stage {entry['stage']} " if entry.get("stage") else ""
    return f"{where}{_label(objective)} over any {_seconds(entry['window'])} window"


# -- evaluation from a result file -----------------------------------------------------------

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


def evaluate(plan: Plan, result: Result | str) -> list[dict[str, Any]]:
    """Every objective of `plan.slo`, judged from the interval rows of `result`.

    Verdict: {"name", "ok", "observed", "limit", "unit" ("us" | "ratio"), "objective",
    "scope" ("run" | "stage" | "window"), "stage", and for windows "window_s" and
    "window_start_s" (the start of the worst window, seconds from the run's start)}.
    An objective with no data to judge it by (no responses in its scope) fails.
    """
    slo = plan.slo or {}
    if not any(slo.get(k) for k in ("run", "stages", "windows")):
        return []
    if isinstance(result, str):
        result = read_result(result)
    interval_ms = _interval_ms(result)
    rows = result.rows("interval", stage=None, name=None, outcome=None)
    # Only the headline rows' histograms are decoded; decoding is the cost.
    figures = _RowFolder(plan, interval_ms).fold(rows, result.histogram, result.has_ok_rows)
    interval_s = interval_ms / 1000
    verdicts: list[dict[str, Any]] = []

    run_fig = IntervalFigures()
    for fig in figures.values():
        run_fig.add(fig)
    cache: dict[str, Any] = {}
    for objective, limit in _objectives(slo.get("run") or {}):
        verdicts.append(_verdict(_label(objective), objective,
                                 run_fig.observe(objective, cache), limit, "run", stage=None))

    starts = _stage_starts(plan)
    for entry in slo.get("stages") or []:
        stage, grace = entry["stage"], float(entry.get("grace") or 0.0)
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
        suffix = f" (after {_seconds(grace)} grace)" if grace > 0 else ""
        for objective, limit in _objectives(entry):
            verdicts.append(_verdict(f"stage {stage} {_label(objective)}{suffix}", objective,
                                     fig.observe(objective, cache), limit, "stage",
                                     stage=stage, grace_s=grace))

    for entry in slo.get("windows") or []:
        size = max(1, round(float(entry["window"]) * 1000 / interval_ms))
        series = _series(figures, entry.get("stage"))
        objectives = _objectives(entry)
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
                _window_name(entry, objective), objective, observed, limit, "window",
                stage=entry.get("stage"), window_s=float(entry["window"]),
                window_start_s=None if start is None else round(start * interval_s, 3)))
    return verdicts


def _keep_worst(worst: dict[str, tuple[float, int]], objectives: list[tuple[str, float]],
                start_index: int, span: IntervalFigures) -> None:
    cache: dict[str, Any] = {}
    for objective, _ in objectives:
        observed = span.observe(objective, cache)
        if observed is None:
            continue
        if objective not in worst or _worse(objective, observed, worst[objective][0]):
            worst[objective] = (observed, start_index)


def _interval_ms(result: Result) -> int:
    raw = result.metadata.get("interval_ms", "1000")
    try:
        value = int(raw)
        if value <= 0:
            raise ValueError
    except ValueError:
        raise ResultsError(f"results {result.path}: metadata loadforge.interval_ms is "
                           f"{raw!r}, expected a positive integer") from None
    return value


def plan_of_result(result: Result) -> Plan | None:
    """The Plan of the profile archived in a result's metadata; None for a run started from
    flags (no profile, hence no objectives) or a profile this version no longer accepts."""
    from loadforge.config.profile import plan_from_dict

    text = result.metadata.get("profile", "")
    flags = _slo_flags_of(result)
    if not text.strip():
        return _flag_plan_of_result(result, flags) if flags else None
    try:
        plan = plan_from_dict(tomllib.loads(text), source=text,
                              path=result.metadata.get("profile_path") or "<profile>",
                              archived=True)
    except (tomllib.TOMLDecodeError, ProfileError):
        return None
    return _with_flags(plan, flags)


def _slo_flags_of(result: Result) -> dict[str, float]:
    """The run's `--slo` objectives (metadata `slo_flags`), which the profile does not hold."""
    try:
        flags = json.loads(result.metadata.get("slo_flags") or "{}")
    except ValueError:
        return {}
    if not isinstance(flags, dict):
        return {}
    return {k: float(v) for k, v in flags.items()
            if isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)}


def _with_flags(plan: Plan, flags: dict[str, float]) -> Plan:
    from dataclasses import replace

    from loadforge.config.profile import with_slo_flags

    return replace(plan, slo=with_slo_flags(plan.slo, flags)) if flags else plan


def _flag_plan_of_result(result: Result, flags: dict[str, float]) -> Plan | None:
    """A run started from flags, with `--slo`: its one stage from the `stages` metadata."""
    from loadforge.config.plan import Request, Stage

    try:
        stages = tuple(Stage(str(s["name"]), float(s["duration_s"]), s.get("rate_from"),
                             s.get("rate_to"), s.get("concurrency"), float(s.get("think_s") or 0))
                       for s in json.loads(result.metadata.get("stages") or "[]"))
    except (ValueError, KeyError, TypeError):
        return None
    if not stages:
        return None
    plan = Plan(name=result.metadata.get("profile_name") or "adhoc",
                target=result.metadata.get("target") or "", stages=stages,
                requests=(Request("default"),))
    return _with_flags(plan, flags)


# -- during the run: abort_after -------------------------------------------------------------

class LiveSLO:
    """Judges the windowed objectives that carry `abort_after`, once per merged interval.

    The coordinator calls `interval(index, rows)` with the interval rows it has just written
    (HdrHistogram objects under "latency"); the return value is the reason to stop the run, or
    None. Memory is bounded by the windows' lengths.
    """

    def __init__(self, plan: Plan, interval_s: float = 1.0):
        self.interval_ms = int(round(interval_s * 1000))
        self.folder = _RowFolder(plan, self.interval_ms)
        self.entries: list[tuple[dict[str, Any], _Window, list[int | None]]] = []
        for entry in (plan.slo or {}).get("windows") or []:
            if entry.get("abort_after") is None:
                continue
            size = max(1, round(float(entry["window"]) * 1000 / self.interval_ms))
            # [index of the first failing window end of the current streak]
            self.entries.append((entry, _Window(size), [None]))

    def interval(self, index: int, rows: list[dict[str, Any]]) -> str | None:
        if not self.entries:
            return None
        # The rows' histograms are also the coordinator's accumulators: read, never keep.
        figures = self.folder.fold(rows, lambda row: row["latency"],
                                   any(row["outcome"] == OK for row in rows))
        reason = None
        for entry, window, streak in self.entries:
            series = _series(figures, entry.get("stage"))
            if not series:
                continue
            window.push(index, series[0][1])
            if not window.full:
                continue
            failed = []
            cache: dict[str, Any] = {}
            for objective, limit in _objectives(entry):
                observed = window.sum.observe(objective, cache)
                if observed is not None and not _holds(objective, observed,
                                                       _limit(objective, limit)[0]):
                    failed.append((objective, observed, limit))
            if not failed:
                streak[0] = None
                continue
            first = streak[0] = index if streak[0] is None else streak[0]
            failing_s = (index - first) * self.interval_ms / 1000
            if reason is None and failing_s >= float(entry["abort_after"]) - 1e-9:
                objective, observed, limit = failed[0]
                shown, unit = _limit(objective, limit)
                reason = (f"{_window_name(entry, objective)}: observed "
                          f"{_show(observed, unit)} > limit {_show(shown, unit)}"
                          if objective not in AT_LEAST else
                          f"{_window_name(entry, objective)}: observed "
                          f"{_show(observed, unit)} < limit {_show(shown, unit)}")
                reason += (f", failing for {_seconds(failing_s)} (abort_after "
                           f"{_seconds(float(entry['abort_after']))}) at "
                           f"{_seconds((index + 1) * self.interval_ms / 1000)}")
        return reason


def _show(value: float, unit: str) -> str:
    if unit == "ratio":
        return f"{value * 100:.4g}%"
    if value >= 1_000_000:
        return f"{value / 1e6:.4g}s"
    if value >= 1000:
        return f"{value / 1000:.4g}ms"
    return f"{value:.0f}µs"


# -- JUnit XML -------------------------------------------------------------------------------

def junit_xml(suite: str, cases: list[dict[str, Any]]) -> str:
    """JUnit XML: one <testcase> per case {"name", "ok", "message", "classname"?, "details"?};
    a failing case carries <failure message=...> with the details as its text."""
    failures = sum(1 for c in cases if not c["ok"])
    root = ElementTree.Element("testsuites", name="loadforge", tests=str(len(cases)),
                               failures=str(failures))
    ts = ElementTree.SubElement(root, "testsuite", name=suite, tests=str(len(cases)),
                                failures=str(failures), errors="0", skipped="0")
    for case in cases:
        tc = ElementTree.SubElement(ts, "testcase", name=str(case["name"]),
                                    classname=str(case.get("classname", suite)))
        if not case["ok"]:
            failure = ElementTree.SubElement(tc, "failure", message=str(case["message"]),
                                             type="breach")
            failure.text = str(case.get("details", case["message"]))
        elif case.get("message"):
            ElementTree.SubElement(tc, "system-out").text = str(case["message"])
    ElementTree.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + \
        ElementTree.tostring(root, encoding="unicode") + "\n"


def slo_cases(verdicts: list[dict[str, Any]], run: str = "") -> list[dict[str, Any]]:
    """JUnit cases of SLO verdicts: 'observed X, limit Y' as message."""
    cases = []
    for v in verdicts:
        unit = v.get("unit", "us")
        observed = "no data" if v.get("observed") is None else _show(v["observed"], unit)
        relation = ">=" if v.get("objective") in AT_LEAST else "<="
        message = f"{v['name']}: observed {observed}, limit {relation} {_show(v['limit'], unit)}"
        if v.get("window_start_s") is not None:
            message += f" (worst window from {_seconds(v['window_start_s'])})"
        cases.append({"name": v["name"], "ok": bool(v["ok"]), "message": message,
                      "classname": f"loadforge.slo.{run}" if run else "loadforge.slo",
                      "details": json.dumps(v, indent=2)})
    return cases


def write_junit(path: str, suite: str, cases: list[dict[str, Any]]) -> None:
    from loadforge.present.outputs import write_output

    write_output(path, junit_xml(suite, cases), "--junit")
