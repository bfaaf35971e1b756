"""Runs read back from their result files: what `compare`, `ls`, `trend` and `report` fold.

The fold itself is analysis/figures.py's (rows -> figures); this module finds the rows and
what the fold needs besides them in a file (results/store.read_result):

- `run_figures` / `load_runs`: a file's stage and run rows folded into `RunFigures`, rates
  over the planned stage times of its `stages` metadata;
- `run_fold`: a file's rows folded into the `RunFold` the verdicts judge (analysis/slo,
  analysis/scaling), as `run` folds the same rows in memory while it writes them;
- `interval_cells`, `bootstrap_intervals`: the interval series of the report and of
  `compare`'s bootstrap;
- `plan_of_result`: the Plan a run was made with, rebuilt from its archived profile, its
  `--slo` flags and the `fail_status` it recorded.

Only the later commands read files back: a run's own summary and verdicts come from memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from loadforge.analysis import noise
from loadforge.analysis.figures import (
    ALL_STAGES,
    RowSource,
    RunFold,
    ScopeFigures,
    fold_scopes,
)
from loadforge.config.plan import STATUS_OUTCOMES, Plan
from loadforge.engine import histogram
from loadforge.errors import ProfileError, ResultsError
from loadforge.results.store import Result, find_results, outcome_row, read_result

__all__ = [
    "LEGACY_FAIL_STATUS",
    "RunFigures",
    "bootstrap_intervals",
    "fail_status_of",
    "flows_of",
    "interval_cells",
    "interval_ms_of",
    "load_runs",
    "plan_of_result",
    "run_figures",
    "run_fold",
    "run_title",
    "stages_of",
]


@dataclass
class RunFigures:
    result: Result
    title: str
    stages: list[ScopeFigures]
    run: ScopeFigures
    fail_status: tuple[str, ...] = ("4xx", "5xx")     # the status classes counted as errors

    def scope(self, name: str) -> ScopeFigures | None:
        if name == ALL_STAGES:
            return self.run
        return next((s for s in self.stages if s.name == name), None)


def fail_status_of(result: Result, plan: Plan | None = None) -> tuple[str, ...]:
    """The status classes the run counted as errors: the Plan of the archived profile
    (config/ reads it, with the recorded or legacy default, see _recorded_fail_status)."""
    if plan is None:
        plan = plan_of_result(result)
    if plan is not None:
        return plan.fail_status
    return _recorded_fail_status(result) or LEGACY_FAIL_STATUS


def stages_of(result: Result) -> list[dict[str, Any]]:
    """The `stages` metadata: name, duration_s, rate_from, rate_to, concurrency."""
    try:
        stages = json.loads(result.metadata.get("stages", "[]"))
        return [s for s in stages if isinstance(s, dict) and "name" in s]
    except ValueError:
        return []


def _target_rps(stage: dict[str, Any]) -> float | None:
    if stage.get("concurrency") or stage.get("rate_from") is None:
        return None     # closed model: no arrival schedule, no target
    # A linear ramp's mean rate; a steady stage has from == to.
    return (float(stage["rate_from"]) + float(stage.get("rate_to") or stage["rate_from"])) / 2


def _stopped_early(result: Result, planned: dict[str, dict[str, Any]]) -> bool:
    """Whether the run ended before its planned end (a signal, an SLO abort, a crash): its
    stage rows then span the time each stage ran, which rates are over."""
    try:
        ran_s = float(result.metadata["ran_s"])
    except (KeyError, ValueError):
        return False
    return ran_s < sum(float(s.get("duration_s") or 0) for s in planned.values()) - 0.001


def run_figures(result: Result, title: str = "", plan: Plan | None = None,
                full: bool = False) -> RunFigures:
    """A result file's figures per stage and for the run: its stage and run rows folded
    (`fold_scopes`; `full`: all the summary shows), rates over the planned stage times (the
    `stages` metadata)."""
    fail_status = fail_status_of(result, plan)
    source = RowSource.of_file(result, fail_status)
    planned = {s["name"]: s for s in stages_of(result)}
    stopped_early = _stopped_early(result, planned)
    rows = (result.rows("stage", stage=None, name=None, outcome=None)
            + result.rows("run", stage=None, name=None, outcome=None))
    folded = fold_scopes(rows, source, full)
    scopes = {stage: fig for (scope, stage), fig in folded.items() if scope == "stage"}
    for name, fig in scopes.items():
        if name in planned:
            if not stopped_early:       # else the stage row spans the time it ran
                fig.duration_s = float(planned[name].get("duration_s") or fig.duration_s)
            fig.target_rps = _target_rps(planned[name])
    stage_list = [scopes[name] for name in planned if name in scopes]
    stage_list += [f for name, f in scopes.items() if name not in planned]
    run_scope = folded.get(("run", ALL_STAGES)) or ScopeFigures(ALL_STAGES, 0.0)
    planned_s = sum(float(s.get("duration_s") or 0) for s in planned.values())
    if planned_s:
        run_scope.duration_s = min(run_scope.duration_s, planned_s) or planned_s
        # Closed-model stages have no target and stay out of the run's.
        open_stages = [(rps, float(s.get("duration_s") or 0)) for s in planned.values()
                       if (rps := _target_rps(s)) is not None]
        open_s = sum(d for _, d in open_stages)
        run_scope.target_rps = (sum(rps * d for rps, d in open_stages) / open_s
                                if open_s else None)
    return RunFigures(result, title or run_title(result), stage_list, run_scope,
                      fail_status)


def run_title(result: Result) -> str:
    if result.labels:
        return ",".join(f"{k}={v}" for k, v in sorted(result.labels.items()))
    return result.run_id or os.path.basename(result.path).removesuffix(".parquet")


def load_runs(paths: list[str]) -> list[RunFigures]:
    """Read RUN arguments (files, or directories of them, oldest first) into figures."""
    files = find_results(list(paths))
    results = [read_result(f) for f in files]
    titles = [run_title(r) for r in results]
    for i, t in enumerate(titles):
        if titles.count(t) > 1:
            titles[i] = f"{t} #{i + 1}"
    return [run_figures(r, t) for r, t in zip(results, titles, strict=True)]


def interval_cells(result: Result, interval_ms: int, fail_status: tuple[str, ...]
                   ) -> dict[int, dict[str, Any]]:
    """Per interval index, every stage's together: arrivals due ("scheduled"), responses,
    errors by kind and the headline latency (None when there is none): the report's series."""
    source = RowSource.of_file(result, fail_status)
    per: dict[int, dict[str, Any]] = {}
    for row in result.rows("interval", stage=None, name=None, outcome=None):
        index = int(row["start_ms"]) // interval_ms
        cell = per.get(index)
        if cell is None:
            cell = per[index] = {"scheduled": 0, "responses": 0, "errors": {},
                                 "latency": None}
        if source.headline(row):
            h = source.latency(row)
            if cell["latency"] is None:
                cell["latency"] = h
            else:
                histogram.merge(cell["latency"], h)
        if row["name"] == "*" and row["outcome"] == "*":
            cell["scheduled"] += int(row.get("scheduled") or 0)
            continue
        if not outcome_row(row):
            continue
        outcome, count = row["outcome"], int(row["count"])
        if outcome in STATUS_OUTCOMES:
            cell["responses"] += count
        if source.is_error(row):
            cell["errors"][outcome] = cell["errors"].get(outcome, 0) + count
    return per


def bootstrap_intervals(fig: RunFigures) -> dict[str, list[noise.Interval]]:
    """Each stage's intervals (and ALL_STAGES: the run's), for `compare`'s bootstrap: the
    interval rows read with run_figures' rules (headline latency of successful responses;
    counts from outcome rows)."""
    result = fig.result
    source = RowSource.of_file(result, fig.fail_status)
    stages: dict[str, dict[int, noise.Interval]] = {}
    whole: dict[int, noise.Interval] = {}
    for row in result.rows("interval", stage=None, name=None, outcome=None):
        start = int(row["start_ms"])
        seconds = (int(row["end_ms"]) - start) / 1000
        # An interval that spans a stage boundary is one interval of the run.
        targets = [stages.setdefault(row["stage"], {}).setdefault(
            start, noise.Interval(seconds)), whole.setdefault(start, noise.Interval(seconds))]
        if source.headline(row):
            h = source.latency(row)
            for iv in targets:
                iv.add_latency(h)
        if not outcome_row(row):
            continue
        count, outcome = int(row["count"]), row["outcome"]
        for iv in targets:
            iv.sent += count
            iv.requests += count if outcome in STATUS_OUTCOMES else 0
            iv.errors += count if source.is_error(row) else 0
    out = {name: [ivs[k] for k in sorted(ivs)] for name, ivs in stages.items()}
    out[ALL_STAGES] = [whole[k] for k in sorted(whole)]
    return out


# -- what the verdicts judge -----------------------------------------------------------------

def interval_ms_of(result: Result) -> int:
    """The run's interval (metadata `interval_ms`); a ResultsError naming the file when it
    is not a positive integer."""
    raw = result.metadata.get("interval_ms", "1000")
    try:
        value = int(raw)
        if value <= 0:
            raise ValueError
    except ValueError:
        raise ResultsError(f"results {result.path}: metadata loadforge.interval_ms is "
                           f"{raw!r}, expected a positive integer") from None
    return value


def flows_of(result: Result) -> dict[str, Any]:
    """The scripted flows' figures the run recorded (metadata `flows`); {} without flows."""
    raw = result.metadata.get("flows")
    figures = json.loads(raw) if raw else {}
    return figures if isinstance(figures, dict) else {}


def run_fold(result: Result, fail_status: tuple[str, ...], latency: bool = True) -> RunFold:
    """A file's rows folded as `run` folds them while it writes them (figures.RunFold): what
    `ls`, `report` and `compare`'s scaling gates judge verdicts by."""
    fold = RunFold(RowSource.of_file(result, fail_status), interval_ms_of(result), latency)
    fold.add(result.rows("interval", stage=None, name=None, outcome=None))
    fold.add(result.rows("stage", stage=None, name=None, outcome=None))
    if "value" in result.table.column_names:
        fold.add(result.rows("metric", stage=None, name=None, outcome=None))
        fold.add(result.rows("action", stage=None, name=None, outcome=None))
    fold.flows = flows_of(result)
    return fold


# -- the plan a result was run with ------------------------------------------------------

def plan_of_result(result: Result) -> Plan | None:
    """The Plan of the profile archived in a result's metadata; None for a run started from
    flags (no profile, hence no objectives) or a profile this version no longer accepts."""
    from loadforge.config.profile import plan_from_text

    text = result.metadata.get("profile", "")
    flags = _slo_flags_of(result)
    if not text.strip():
        return _flag_plan_of_result(result, flags) if flags else None
    try:
        plan = plan_from_text(text, result.metadata.get("profile_path") or "<profile>",
                              archived=True)
    except ProfileError:
        return None
    recorded = _recorded_fail_status(result, text)
    if recorded is not None and recorded != plan.fail_status:
        from dataclasses import replace

        plan = replace(plan, fail_status=recorded)
    return _with_flags(plan, flags)


LEGACY_FAIL_STATUS = ("5xx",)     # the default before 4xx counted as errors (issue 22)


def _recorded_fail_status(result: Result, profile_text: str = "") -> tuple[str, ...] | None:
    """What the run counted as errors: the `fail_status` metadata that runs record; for files
    written before it was recorded, the profile's own setting, else the default of that time
    (5xx only), so that an archived verdict does not change under a newer default. None: the
    profile's (parsed) value stands."""
    try:
        recorded = json.loads(result.metadata.get("fail_status") or "null")
    except ValueError:
        recorded = None
    if isinstance(recorded, list) and all(isinstance(c, str) for c in recorded):
        return tuple(recorded)
    if not profile_text.strip():
        return LEGACY_FAIL_STATUS
    import tomllib

    try:
        load = tomllib.loads(profile_text).get("load", {})
    except tomllib.TOMLDecodeError:
        return None
    return None if isinstance(load, dict) and "fail_status" in load else LEGACY_FAIL_STATUS


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
                requests=(Request("default"),),
                fail_status=_recorded_fail_status(result) or LEGACY_FAIL_STATUS)
    return _with_flags(plan, flags)

