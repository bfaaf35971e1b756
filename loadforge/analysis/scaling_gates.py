"""Policies compared: `compare`'s figures and gates on scaling verdicts.

Per run and stage (and "all" for the run): time to recover, seconds in breach, SLO (error
budget) burn, peak replicas and replica-seconds, from analysis/scaling.py's verdicts of the
result and its replica metric rows (`replicas`, `backends`, ...: a sandbox rehearsal's polled
metric or a simulation's modelled one). Gates: `--fail-on "time_to_recover=+20s"`,
`breach_s=+10s`, `burn=+0.5`, `peak_replicas=+2`, `replica_seconds=+10%`.

Kept apart from compare.py's latency gates (one table, one parser, one check), so that its
grammar can change without touching these.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from loadforge.analysis import backends, scaling
from loadforge.analysis.readback import RunFigures, plan_of_result
from loadforge.errors import InputError
from loadforge.observe import pollers
from loadforge.units import parse_duration

# metric -> (label, unit): "s" seconds, "x" a plain number
SCALING_METRICS: dict[str, tuple[str, str]] = {
    "time_to_recover": ("time to recover", "s"),
    "breach_s": ("breach", "s"),
    "burn": ("SLO burn", "x"),
    "peak_replicas": ("peak replicas", "x"),
    "replica_seconds": ("replica-seconds", "x"),
}
ALIASES = {"time_to_recover_s": "time_to_recover", "violation_s": "breach_s",
           "error_budget_burn": "burn", "replicas": "peak_replicas"}
_LIMIT = re.compile(r"^\s*([+-])\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(%|ms|s|m)?\s*$")


def is_scaling_gate(spec: str) -> bool:
    name = spec.partition("=")[0].strip()
    return ALIASES.get(name, name) in SCALING_METRICS


@dataclass(frozen=True)
class ScalingGate:
    spec: str
    metric: str
    direction: int       # +1: a rise beyond the amount fails; -1: a fall
    amount: float
    relative: bool       # amount in % of the baseline

    def change(self, base: float, value: float) -> float:
        if self.relative:
            if base == 0:
                return 0.0 if value == 0 else math.copysign(math.inf, value)
            return (value - base) / base * 100
        return value - base

    def breached(self, base: float, value: float) -> bool:
        return self.change(base, value) * self.direction > self.amount


def parse_scaling_gate(spec: str) -> ScalingGate:
    expected = ("expected METRIC=+N (a time such as +20s for time_to_recover and breach_s, a "
                "number for burn, peak_replicas and replica_seconds) or +N%, METRIC one of "
                f"{', '.join(SCALING_METRICS)}")
    name, _, rest = spec.partition("=")
    metric = ALIASES.get(name.strip(), name.strip())
    if metric not in SCALING_METRICS:
        raise InputError(f"--fail-on {spec!r}: {expected}")
    match = _LIMIT.match(rest)
    if not match:
        raise InputError(f"--fail-on {spec!r}: {expected}")
    sign, number, unit = match.groups()
    amount = float(number)
    if unit in ("ms", "s", "m"):
        if SCALING_METRICS[metric][1] != "s":
            raise InputError(f"--fail-on {spec!r}: a time applies to time_to_recover and "
                             f"breach_s only; {metric} is a number")
        amount = parse_duration(f"{number}{unit}", f"--fail-on {spec!r}")
    return ScalingGate(spec.strip(), metric, 1 if sign == "+" else -1, amount, unit == "%")


def _replica_series(run: RunFigures) -> list[tuple[int, float]]:
    series = backends.metric_series(run.result)
    for name in pollers.REPLICA_METRICS[1:] + pollers.REPLICA_METRICS[:1]:
        # The replica count asked for (replicas, backends) before what was ready: that is
        # what is paid for.
        if name in series:
            return [(t, v) for t, v in series[name] if v is not None]
    return []


def has_replicas(runs: list[RunFigures]) -> bool:
    """Whether any run has a replica metric (a sandbox rehearsal, a simulation)."""
    return any(_replica_series(r) for r in runs)


def _replica_seconds(points: list[tuple[int, float]], start_ms: float, end_ms: float
                     ) -> float | None:
    """The area under the step function of the samples, within [start, end)."""
    if not points:
        return None
    area = 0.0
    for k, (t, v) in enumerate(points):
        nxt = points[k + 1][0] if k + 1 < len(points) else end_ms
        lo, hi = max(t, start_ms), min(nxt, end_ms)
        if hi > lo:
            area += v * (hi - lo) / 1000
    return round(area, 3)


def scaling_figures(run: RunFigures) -> dict[str, dict[str, float | None]]:
    """{stage (and "*" for the run): {metric: value}}; empty without a plan to judge by."""
    plan = plan_of_result(run.result)
    if plan is None:
        return {}
    analysis = scaling.analyze(plan, run.result)
    points = _replica_series(run)
    out: dict[str, dict[str, float | None]] = {}
    t = 0.0
    for stage in plan.stages:
        block = analysis["stages"].get(stage.name, {})
        inside = [v for at, v in points if t * 1000 <= at < (t + stage.duration_s) * 1000]
        out[stage.name] = {
            "time_to_recover": block.get("time_to_recover_s")
            if block.get("recovered") is not False else stage.duration_s,
            "breach_s": block.get("violation_s"),
            "burn": block.get("error_budget_burn"),
            "peak_replicas": max(inside, default=None),
            "replica_seconds": _replica_seconds(points, t * 1000,
                                                (t + stage.duration_s) * 1000),
        }
        t += stage.duration_s
    stages = list(out.values())

    def total(key: str) -> float | None:
        values = [s[key] for s in stages if s[key] is not None]
        return round(sum(values), 3) if values else None  # type: ignore[arg-type]

    out["*"] = {"time_to_recover": max((s["time_to_recover"] for s in stages
                                        if s["time_to_recover"] is not None), default=None),
                "breach_s": total("breach_s"), "burn": None,
                "peak_replicas": max((s["peak_replicas"] for s in stages
                                      if s["peak_replicas"] is not None), default=None),
                "replica_seconds": total("replica_seconds")}
    return out


def scaling_comparison(runs: list[RunFigures]) -> dict[str, Any]:
    """compare's JSON `scaling`: per run, its figures per stage."""
    return {"metrics": {k: label for k, (label, _) in SCALING_METRICS.items()},
            "runs": [{"run": r.title, "stages": scaling_figures(r)} for r in runs]}


def check_scaling_gates(runs: list[RunFigures], gates: list[ScalingGate],
                        figures: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One check per gate x stage x non-baseline run, in compare's check shape."""
    if not gates or len(runs) < 2:
        return []
    table = figures or scaling_comparison(runs)
    base = table["runs"][0]
    checks = []
    for run, other in zip(runs[1:], table["runs"][1:], strict=True):
        for stage, values in other["stages"].items():
            b_values = base["stages"].get(stage)
            if b_values is None:
                continue
            for gate in gates:
                b, v = b_values.get(gate.metric), values.get(gate.metric)
                if b is None or v is None:
                    continue
                bad = gate.breached(b, v)
                change = gate.change(b, v)
                unit = "%" if gate.relative else SCALING_METRICS[gate.metric][1]
                shown = f"{change:+.3g}{'' if unit == 'x' else unit}"
                where = "all stages" if stage == "*" else f"stage {stage}"
                checks.append({
                    "gate": gate.spec, "metric": gate.metric, "stage": stage,
                    "run": run.title, "baseline": runs[0].title, "ok": not bad,
                    "baseline_value": b, "value": v, "change": change, "unit": unit,
                    "message": f"{where}: {gate.metric} {shown} ({b:g} -> {v:g}), "
                               f"{run.title} vs baseline {runs[0].title}; gate {gate.spec}"})
    return checks


def render_scaling(table: dict[str, Any], console: Any) -> None:
    """The scaling figures side by side, one row per run and stage (only if any run has
    them)."""
    from rich.table import Table

    rows = [(r["run"], stage, v) for r in table["runs"] for stage, v in r["stages"].items()]
    if not any(any(x is not None for x in v.values()) for _, _, v in rows):
        return
    t = Table(title="scaling", title_justify="left", box=None, header_style="bold")
    t.add_column("run")
    t.add_column("stage")
    for _, (label, _) in SCALING_METRICS.items():
        t.add_column(label, justify="right")
    for run, stage, v in rows:
        cells = []
        for key, (_, unit) in SCALING_METRICS.items():
            x = v.get(key)
            cells.append("-" if x is None else f"{x:g}s" if unit == "s" else f"{x:g}")
        t.add_row(run, "all" if stage == "*" else stage, *cells)
    console.print(t)
