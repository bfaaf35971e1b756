"""Scaling verdicts: how a stage recovers, how long it is out of its SLO, what scaling out
looked like, and what each timed action cost; all from a run's rows (figures.RunFold: fed
as the run wrote them, or read back from its result file).

Per stage (the stage's own `[[slo.stages]]` latency and error objectives, else the run's
`[slo]`, judged over trailing windows of `[observe] window`, 1 s by default, clipped to the
stage):

- `violation_s`: the time the windows spent outside the objectives;
- `time_to_recover_s`: from the stage's start until the windows are back inside and stay
  there to the stage's end (late responses of the stage included); 0 without a violation,
  None (`recovered: false`) when the stage ends in violation;
- `error_budget_burn`: errors / (allowed error rate x arrivals that ended), 1.0 meaning the
  stage used exactly its budget;
- `scale_out`: the first backend seen serving (backend attribution) that had not served
  before the stage, and when the backend count (the `replicas` metric, else the number of
  backends serving) last changed in the stage, that is when it settled.

Per action (actions.py): errors in the intervals from the action to the next one, the time
from the first to the last failed request (at the resolution of the 1 s intervals), and for
an action naming a backend, when that backend stopped (or, for revive, started) serving.

`time_to_recover` and `failover` in `[slo]` / `[[slo.stages]]` (Plan.slo.scaling, see
config/plan.py) are judged here; verdicts have slo.py's shape, times in µs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loadforge.analysis import backends
from loadforge.analysis.figures import IntervalFigures, RunFold
from loadforge.analysis.readback import run_fold
from loadforge.config.plan import Plan
from loadforge.observe import pollers as observe
from loadforge.results.store import Result

# Objectives a window is judged by for recovery; rate_shortfall is about the generator's
# target, not the service.
RECOVERY_OBJECTIVES = ("p50", "p90", "p99", "p999", "max", "mean", "error_rate", "success_rate")
LATENCY = ("p50", "p90", "p99", "p999", "max", "mean")


@dataclass
class _Interval:
    by_stage: dict[str, IntervalFigures] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)     # backend -> responses
    errors: int = 0


def needs_latency(plan: Plan) -> bool:
    """Whether a recovery objective judges latency: each interval's latency buckets are then
    kept, the one part of the analysis that grows with the run."""
    return any(objective in LATENCY for stage in plan.stages
               for objective in _thresholds(plan, stage.name))


def _intervals(fold: RunFold) -> dict[int, _Interval]:
    """Per interval, each stage's figures (arrivals due counted in every stage), the errors
    and the responses per backend."""
    out: dict[int, _Interval] = {}
    for (index, stage), fig in fold.intervals.items():
        iv = out.setdefault(index, _Interval())
        iv.by_stage[stage] = fig
        iv.errors += fig.errors
    for index, by_backend in fold.served.items():
        out[index].served = by_backend
    return out


def _thresholds(plan: Plan, stage: str) -> dict[str, float]:
    """The objectives a stage recovers to: its [[slo.stages]] entries, else the run's."""
    limits: dict[str, float] = {}
    for entry in plan.slo.stages:
        if entry.stage == stage:
            limits.update({k: v for k, v in entry.limits.items() if k in RECOVERY_OBJECTIVES})
    if not limits:
        limits = {k: v for k, v in plan.slo.run.items() if k in RECOVERY_OBJECTIVES}
    return limits


def _violates(fig: IntervalFigures, limits: dict[str, float]) -> bool:
    if not fig.sent:
        # Arrivals due but nothing ended: stalled, which no objective tolerates.
        return fig.scheduled > 0
    cache: dict[str, Any] = {}
    for objective, limit in limits.items():
        observed = fig.observe(objective, cache)
        if observed is None:
            continue
        if objective in LATENCY:
            if observed > limit * 1e6:
                return True
        elif objective == "success_rate":
            if observed < limit:
                return True
        elif observed > limit:
            return True
    return False


def _stage_windows(plan: Plan) -> list[tuple[str, float, float]]:
    out, t = [], 0.0
    for s in plan.stages:
        out.append((s.name, t, t + s.duration_s))
        t += s.duration_s
    return out


def _recovery(intervals: dict[int, _Interval], stage: str, first: int, last: int,
              window: int, limits: dict[str, float], interval_s: float) -> dict[str, Any]:
    if not limits:
        return {"time_to_recover_s": None, "violation_s": None, "recovered": None,
                "first_violation_s": None,
                "recovery_note": "no latency or error objective to judge by"}
    violating: list[int] = []
    for i in range(first, last + 1):
        span = IntervalFigures()
        for j in range(max(first, i - window + 1), i + 1):
            fig = intervals.get(j, _Interval()).by_stage.get(stage)
            if fig is not None:
                span.add(fig)
        if _violates(span, limits):
            violating.append(i)
    if not violating:
        return {"time_to_recover_s": 0.0, "violation_s": 0.0, "recovered": True,
                "first_violation_s": None}
    recovered = violating[-1] < last
    return {
        "time_to_recover_s": round((violating[-1] + 1 - first) * interval_s, 3)
        if recovered else None,
        "violation_s": round(len(violating) * interval_s, 3),
        "recovered": recovered,
        "first_violation_s": round((violating[0] - first) * interval_s, 3),
    }


def _budget(intervals: dict[int, _Interval], stage: str, limits: dict[str, float]
            ) -> float | None:
    allowed = limits.get("error_rate")
    if allowed is None and "success_rate" in limits:
        allowed = 1.0 - limits["success_rate"]
    if allowed is None or allowed <= 0:
        return None
    sent = errors = 0
    for iv in intervals.values():
        fig = iv.by_stage.get(stage)
        if fig is not None:
            sent += fig.sent
            errors += fig.errors
    return round(errors / (allowed * sent), 4) if sent else None


def _replicas_series(plan: Plan, series: dict[str, list[tuple[int, float | None]]]
                     ) -> tuple[str | None, list[tuple[int, float]]]:
    wanted = plan.observe.replicas
    names = [wanted] if wanted else list(observe.REPLICA_METRICS)
    for name in names:
        if name in series:
            return name, [(t, v) for t, v in series[name] if v is not None]
    return None, []


def _scale_out(intervals: dict[int, _Interval], first: int, last: int, start_ms: float,
               end_ms: float, interval_s: float, metric: str | None,
               replicas: list[tuple[int, float]]) -> dict[str, Any]:
    before = {b for i, iv in intervals.items() if i < first for b in iv.served}
    if not before:
        # The first stage: what serves in its first interval is the starting pool.
        start = min((i for i in intervals if i >= first and intervals[i].served), default=None)
        before = set(intervals[start].served) if start is not None else set()
    seen = set(before)
    new: list[str] = []
    first_new_s = None
    for i in range(first, last + 1):
        for b in sorted(intervals.get(i, _Interval()).served):
            if b not in seen:
                seen.add(b)
                new.append(b)
                if first_new_s is None:
                    first_new_s = round((i - first) * interval_s, 3)
    out: dict[str, Any] = {"first_new_backend_s": first_new_s, "new_backends": new}
    if metric is not None:
        inside = [(t, v) for t, v in replicas if start_ms <= t < end_ms]
        prior = [v for t, v in replicas if t < start_ms]
        source = "metric " + metric
    else:
        inside = [(int(i * interval_s * 1000), float(len(intervals[i].served)))
                  for i in range(first, last + 1) if i in intervals and intervals[i].served]
        prior = [float(len(intervals[i].served)) for i in sorted(intervals)
                 if i < first and intervals[i].served][-1:]
        source = "backends serving"
    settle_s = None
    previous = prior[-1] if prior else (inside[0][1] if inside else None)
    for t, v in inside:
        if previous is not None and v != previous:
            settle_s = round((t - start_ms) / 1000, 3)
        previous = v
    out.update({
        "backends_source": source,
        "backends_start": prior[-1] if prior else (inside[0][1] if inside else None),
        "backends_end": inside[-1][1] if inside else None,
        "backends_max": max((v for _, v in inside), default=None),
        "settle_s": settle_s,
    })
    return out


def _actions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": r["name"], "ok": r["outcome"] == "ok",
             "backend": None if r["backend"] == "*" else r["backend"],
             "started_s": int(r["start_ms"]) / 1000, "ended_s": int(r["end_ms"]) / 1000,
             "stage": r["stage"], "value": None if r.get("value") is None else float(r["value"])}
            for r in sorted(rows, key=lambda r: int(r["start_ms"]))]


def _failover(intervals: dict[int, _Interval], action: dict[str, Any], until_ms: float,
              interval_ms: int) -> dict[str, Any]:
    at_ms = action["started_s"] * 1000
    hit = [i for i in sorted(intervals)
           if intervals[i].errors and (i + 1) * interval_ms > at_ms and i * interval_ms < until_ms]
    out: dict[str, Any] = {
        "errors": sum(intervals[i].errors for i in hit),
        "first_error_s": None, "last_error_s": None, "failover_s": 0.0,
    }
    if hit:
        first_ms = max(hit[0] * interval_ms, at_ms)
        last_ms = (hit[-1] + 1) * interval_ms
        out.update(first_error_s=round(first_ms / 1000, 3), last_error_s=round(last_ms / 1000, 3),
                   failover_s=round((last_ms - first_ms) / 1000, 3))
    backend = action.get("backend")
    if backend:
        after = [i for i in sorted(intervals)
                 if (i + 1) * interval_ms > at_ms and i * interval_ms < until_ms]
        serving = [i for i in after if intervals[i].served.get(backend)]
        if action["name"].startswith(("sandbox revive", "sandbox add")):
            out["backend_back_s"] = (round(max(serving[0] * interval_ms - at_ms, 0) / 1000, 3)
                                     if serving else None)
        else:
            # Still serving in the last interval before the next action: never taken out.
            gone = not serving or serving[-1] < after[-1]
            out["backend_out_s"] = (round(((serving[-1] + 1) * interval_ms - at_ms) / 1000, 3)
                                    if serving else 0.0) if gone else None
            out["backend_requests_after"] = sum(intervals[i].served.get(backend, 0)
                                                for i in after)
    return out


def _metrics_summary(series: dict[str, list[tuple[int, float | None]]]) -> dict[str, Any]:
    out = {}
    for name, points in series.items():
        values = [v for _, v in points if v is not None]
        out[name] = {"samples": len(points), "missing": len(points) - len(values),
                     "first": values[0] if values else None,
                     "last": values[-1] if values else None,
                     "min": min(values, default=None), "max": max(values, default=None)}
    return out


def analyze(plan: Plan, source: RunFold | Result) -> dict[str, Any]:
    """Everything of the module docstring, from a run's rows (folded as written, or read back
    from its result file):
    {"backends", "fairness", "unattributed", "metrics", "actions": [...],
     "stages": {name: {"backends", "fairness", "time_to_recover_s", "violation_s", "recovered",
                       "first_violation_s", "error_budget_burn", "scale_out"}},
     "slo": [verdicts of time_to_recover / failover objectives]}"""
    fold = (source if isinstance(source, RunFold)
            else run_fold(source, plan.fail_status, latency=needs_latency(plan)))
    interval_ms = fold.interval_ms
    interval_s = interval_ms / 1000
    window = max(1, round(plan.observe.window_s / interval_s))
    intervals = _intervals(fold)
    attribution = backends.backend_figures_of(fold.stage_rows, fold.source)
    series = backends.metric_series_of(fold.metric_rows)
    metric, replicas = _replicas_series(plan, series)
    last_index = max(intervals, default=0)

    stages: dict[str, Any] = {}
    for name, start_s, end_s in _stage_windows(plan):
        first = int(round(start_s / interval_s))
        # Late responses of the stage count as the stage's, even after its end.
        mine = [i for i, iv in intervals.items() if name in iv.by_stage]
        last = max([int(round(end_s / interval_s)) - 1, *mine])
        last = min(last, last_index) if intervals else last
        limits = _thresholds(plan, name)
        block: dict[str, Any] = dict(attribution["stages"].get(name) or {})
        block.update(_recovery(intervals, name, first, last, window, limits, interval_s))
        block["error_budget_burn"] = _budget(intervals, name, limits)
        block["scale_out"] = _scale_out(intervals, first, last, start_s * 1000, end_s * 1000,
                                        interval_s, metric, replicas)
        stages[name] = block

    actions = _actions(fold.action_rows)
    run_end_ms = (last_index + 1) * interval_ms
    for k, action in enumerate(actions):
        until = actions[k + 1]["started_s"] * 1000 if k + 1 < len(actions) else run_end_ms
        action["failover"] = _failover(intervals, action, until, interval_ms)

    run = attribution["run"]
    out = {"backends": run.get("backends", {}), "fairness": run.get("fairness"),
           "unattributed": run.get("unattributed", 0), "metrics": _metrics_summary(series),
           "actions": actions, "stages": stages}
    out["slo"] = verdicts(plan, stages, actions)
    return out


def _verdict(name: str, objective: str, observed_s: float | None, limit_s: float,
             scope: str, stage: str | None, note: str | None = None) -> dict[str, Any]:
    v: dict[str, Any] = {
        "name": name, "ok": observed_s is not None and observed_s <= limit_s + 1e-9,
        "observed": None if observed_s is None else observed_s * 1e6,
        "limit": limit_s * 1e6, "unit": "us", "objective": objective, "scope": scope,
        "stage": stage,
    }
    if note:
        v["note"] = note
    return v


def _recover_observed(plan: Plan, stage: str, block: dict[str, Any]
                      ) -> tuple[float | None, str | None]:
    if block.get("recovered") is None:
        return None, block.get("recovery_note")
    if not block["recovered"]:
        duration = next(s.duration_s for s in plan.stages if s.name == stage)
        return duration, "not recovered by the stage's end"
    return float(block["time_to_recover_s"]), None


def _failover_verdicts(actions: list[dict[str, Any]], limit: float, scope: str,
                       stage: str | None) -> list[dict[str, Any]]:
    judged = [a for a in actions if not a["name"].startswith(("sandbox revive", "sandbox add"))
              and (stage is None or a["stage"] == stage)]
    where = f"stage {stage} " if stage else ""
    if not judged:
        return [_verdict(f"{where}failover", "failover", None, limit, scope, stage,
                         "no action to fail over from")]
    return [_verdict(f"{where}failover after {a['name']}", "failover",
                     a["failover"]["failover_s"], limit, scope, stage) for a in judged]


def verdicts(plan: Plan, stages: dict[str, Any], actions: list[dict[str, Any]]
             ) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    run = plan.slo.scaling_run
    if "time_to_recover" in run:
        judged = [(name, *_recover_observed(plan, name, block))
                  for name, block in stages.items() if block.get("recovered") is not None]
        if not judged:
            out.append(_verdict("time_to_recover", "time_to_recover", None,
                                run["time_to_recover"], "run", None,
                                "no latency or error objective to judge by"))
        else:
            name, observed, note = max(judged, key=lambda j: j[1] if j[1] is not None else -1)
            out.append(_verdict(f"time_to_recover (worst: stage {name})", "time_to_recover",
                                observed, run["time_to_recover"], "run", name, note))
    if "failover" in run:
        out += _failover_verdicts(actions, run["failover"], "run", None)
    for entry in plan.slo.scaling:
        stage, limits = entry.stage, entry.limits
        if stage is None:
            continue
        if "time_to_recover" in limits:
            observed, note = _recover_observed(plan, stage, stages.get(stage, {}))
            out.append(_verdict(f"stage {stage} time_to_recover", "time_to_recover", observed,
                                limits["time_to_recover"], "stage", stage, note))
        if "failover" in limits:
            out += _failover_verdicts(actions, limits["failover"], "stage", stage)
    return out


def annotate(summary: dict[str, Any], plan: Plan, source: RunFold | Result
             ) -> list[dict[str, Any]]:
    """Add the analysis to a run's summary (top level and each stage's block); return the
    verdicts of the scaling objectives."""
    analysis = analyze(plan, source)
    for key in ("backends", "fairness", "unattributed", "metrics", "actions"):
        summary[key] = analysis[key]
    for block in summary.get("stages", []):
        block.update(analysis["stages"].get(block.get("name"), {}))
    return list(analysis["slo"])
