"""Objectives: a profile's [slo] table and the --slo flags, checked as profile.py checks the
rest (checker.py), into `Plan.slo`.

The [slo] table becomes `Plan.slo`, an `SLO` (plan.py), the contract analysis/slo.py and
analysis/scaling.py judge, never re-validated downstream::

    SLO(run={OBJECTIVE: limit, ...},                                  # whole run; may be empty
        stages=(StageObjectives("spike", {OBJECTIVE: limit}, grace_s=15.0), ...),
        windows=(WindowObjectives(10.0, {OBJECTIVE: limit}, "spike" | None,
                                  abort_after_s=30.0 | None), ...),
        scaling=(ScalingObjectives({"time_to_recover": 30.0}, stage=None | "spike"), ...))

OBJECTIVE keys, only those the profile sets (each stage or window entry has at least one):

- latency, limit in seconds (float), holds when observed <= limit, observed from the merged
  latency histogram: "p50", "p90", "p99", "p999", "max", "mean";
- fractions in [0, 1] (float), over arrivals that ended (a response or a transport failure);
  errors are as in DESIGN.md: transport failures plus responses in `Plan.fail_status`:
  "error_rate"     holds when errors / ended <= limit,
  "success_rate"   holds when (ended - errors) / ended >= limit,
  "rate_shortfall" holds when (target_rps - achieved_rps) / target_rps <= limit, over the
                   open-model stages only (a closed-model stage has no target rate).

"grace" (seconds, >= 0, < the stage's duration): the first `grace` seconds of the stage are
left out of its evaluation. "window" (seconds, a whole number of 1 s intervals, no longer than
the stage or run it covers): objectives are evaluated over every sliding window of that length,
within "stage" when given, else over the whole run. "abort_after" (seconds, >= 0, or None): the
run is stopped once a window's objectives have failed continuously for that long.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from loadforge.config.checker import Checker
from loadforge.config.plan import SLO, ScalingObjectives, Stage, StageObjectives, WindowObjectives
from loadforge.errors import ProfileError
from loadforge.limits import MAX_LATENCY_OBJECTIVE_S
from loadforge.units import show_value

LATENCY_OBJECTIVES = ("p50", "p90", "p99", "p999", "max", "mean")
FRACTION_OBJECTIVES = ("error_rate", "success_rate", "rate_shortfall")
OBJECTIVES = LATENCY_OBJECTIVES + FRACTION_OBJECTIVES
# Judged by scaling.py (durations): kept in Plan.slo.scaling, out of slo.py's objectives.
SCALING_OBJECTIVES = ("time_to_recover", "failover")
SLO_KEYS = OBJECTIVES + SCALING_OBJECTIVES + ("stages", "windows", "checks")
SLO_STAGE_KEYS = ("stage", "grace") + OBJECTIVES + SCALING_OBJECTIVES
SLO_WINDOW_KEYS = ("window", "stage", "abort_after") + OBJECTIVES
# Workers report every second (DESIGN.md), so SLO windows are made of whole intervals.
INTERVAL_S = 1.0


def parse_slo_flags(values: Iterable[str]) -> dict[str, float]:
    """`--slo p99=250ms --slo error_rate=1%`: whole-run objectives, checked as [slo]'s are."""
    check = Checker("--slo")
    table: dict[str, Any] = {}
    for item in values:
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise ProfileError(f"--slo {show_value(item)}: expected OBJECTIVE=LIMIT, "
                               "e.g. p99=250ms or error_rate=1%")
        if key not in OBJECTIVES:
            import difflib  # a mistyped name only: not on every run's way

            close = difflib.get_close_matches(key, OBJECTIVES, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ProfileError(f"--slo {show_value(item)}: unknown objective '{key}'{hint}; "
                               f"one of {', '.join(OBJECTIVES)}")
        if key in table:
            raise ProfileError(f"--slo {show_value(item)}: {key} is given twice")
        try:
            table[key] = float(value) if key in FRACTION_OBJECTIVES else value
        except ValueError:
            table[key] = value
    return objectives(check, table, "")


def with_slo_flags(slo: SLO, objectives: dict[str, float]) -> SLO:
    """A Plan's `slo` with these whole-run objectives added, replacing any of the same name."""
    if not objectives:
        return slo
    return replace(slo, run={**slo.run, **objectives})


def objectives(check: Checker, table: dict[str, Any], path: str) -> dict[str, float]:
    limits: dict[str, float] = {}
    for key in OBJECTIVES:
        if key not in table:
            continue
        where = f"{path}.{key}" if path else key
        if key in LATENCY_OBJECTIVES:
            limits[key] = check.duration(table[key], where,
                                         maximum=MAX_LATENCY_OBJECTIVE_S)
        else:
            limits[key] = check.percent(table[key], where)
    return limits


def slo_table(check: Checker, value: Any, stages: tuple[Stage, ...]) -> SLO:
    slo = check.table(value, "slo")
    check.keys(slo, "slo", SLO_KEYS)
    by_name = {s.name: s for s in stages}
    run_s = sum(s.duration_s for s in stages)
    required = f"an objective: one of {', '.join(OBJECTIVES + SCALING_OBJECTIVES)}"
    scaling_stages = []

    def stage_named(entry: dict[str, Any], path: str, *, required_key: bool) -> Stage | None:
        if "stage" not in entry and not required_key:
            return None
        name = check.string(check.require(entry, path, "stage", "the stage's name"),
                            f"{path}.stage")
        if name not in by_name:
            import difflib

            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f" (did you mean {show_value(close[0])}?)" if close else ""
            check.fail(f"{path}.stage", f"names no stage: got {show_value(name)}{hint}; "
                                        f"the stages are {', '.join(by_name)}")
        return by_name[name]

    stage_entries = []
    for i, entry in enumerate(check.array_of_tables(slo.get("stages", []), "slo.stages")):
        path = f"slo.stages[{i}]"
        check.keys(entry, path, SLO_STAGE_KEYS)
        stage = stage_named(entry, path, required_key=True)
        assert stage is not None
        grace = (check.duration(entry["grace"], f"{path}.grace", allow_zero=True)
                 if "grace" in entry else 0.0)
        if grace >= stage.duration_s:
            check.fail(f"{path}.grace", f"({grace:g}s) must be shorter than stage "
                                        f"{show_value(stage.name)} ({stage.duration_s:g}s)")
        limits = objectives(check, entry, path)
        scaling = scalingobjectives(check, entry, path)
        if not limits and not scaling:
            check.fail(path, f"needs {required}")
        if scaling:
            scaling_stages.append(ScalingObjectives(scaling, stage.name))
        if limits:
            stage_entries.append(StageObjectives(stage.name, limits, grace))

    window_entries = []
    for i, entry in enumerate(check.array_of_tables(slo.get("windows", []), "slo.windows")):
        path = f"slo.windows[{i}]"
        check.keys(entry, path, SLO_WINDOW_KEYS)
        stage = stage_named(entry, path, required_key=False)
        window = check.duration(check.require(entry, path, "window", 'e.g. "10s"'),
                                f"{path}.window")
        intervals = window / INTERVAL_S
        if intervals < 1 or abs(intervals - round(intervals)) > 1e-9:
            check.fail(f"{path}.window", f"must be a whole number of {INTERVAL_S:g}s intervals "
                                         f"(results are kept per interval), got "
                                         f"{show_value(entry['window'])}")
        span_s, span = ((stage.duration_s, f"stage {show_value(stage.name)}") if stage
                        else (run_s, "the run"))
        if window > span_s + 1e-9:
            check.fail(f"{path}.window", f"({window:g}s) is longer than {span} ({span_s:g}s)")
        abort_after = (check.duration(entry["abort_after"], f"{path}.abort_after",
                                      allow_zero=True)
                       if "abort_after" in entry else None)
        limits = objectives(check, entry, path)
        if not limits:
            check.fail(path, f"needs {required}")
        window_entries.append(WindowObjectives(window, limits, stage.name if stage else None,
                                               abort_after))

    scaling_run = scalingobjectives(check, slo, "slo")
    checks = check.percent(slo["checks"], "slo.checks") if "checks" in slo else None
    return SLO(objectives(check, slo, "slo"), tuple(stage_entries), tuple(window_entries),
               ((ScalingObjectives(scaling_run),) if scaling_run else ()) + tuple(scaling_stages),
               checks)


def scalingobjectives(check: Checker, table: dict[str, Any], path: str) -> dict[str, float]:
    """time_to_recover and failover limits, in seconds (scaling.py judges them)."""
    return {key: check.duration(table[key], f"{path}.{key}", allow_zero=True)
            for key in SCALING_OBJECTIVES if key in table}
