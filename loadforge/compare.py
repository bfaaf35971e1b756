"""`loadforge compare`: runs side by side per stage, deltas against the first (baseline) run,
and regression gates (`--fail-on p99=+10%`).

Every latency figure comes from the stage rows' merged histograms (decoded from the Parquet
file), never from the stored percentile columns of other scopes or from averaging.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from loadforge import histogram
from loadforge.errors import InputError
from loadforge.plan import ERROR_KINDS, STATUS_OUTCOMES
from loadforge.results import Result, find_results, read_result
from loadforge.units import parse_duration

# (key, label, kind): kind "rps" | "ratio" | "us" decides formatting and delta units.
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("target_rps", "target rps", "rps"),
    ("achieved_rps", "achieved rps", "rps"),
    ("error_rate", "error rate", "ratio"),
    ("p50", "p50", "us"),
    ("p90", "p90", "us"),
    ("p99", "p99", "us"),
    ("p999", "p99.9", "us"),
    ("max", "max", "us"),
    ("mean", "mean", "us"),
)
KIND = {key: kind for key, _, kind in FIGURES}
GATE_METRICS = {key for key, _, _ in FIGURES if key != "target_rps"}
GATE_ALIASES = {"p99.9": "p999", "rps": "achieved_rps", "throughput": "achieved_rps"}
ALL_STAGES = "all"
FORMATS = ("table", "markdown", "json")


# -- figures of a run ------------------------------------------------------------------------

@dataclass
class ScopeFigures:
    """One stage (or the whole run) of one result."""

    name: str
    duration_s: float
    requests: int = 0         # responses of any status
    sent: int = 0             # responses + transport failures
    errors: int = 0
    scheduled: int = 0
    target_rps: float = 0.0
    latency: HdrHistogram = field(default_factory=histogram.new_histogram)
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def values(self) -> dict[str, float]:
        stats = histogram.stats(self.latency)
        out = {
            "target_rps": self.target_rps,
            "achieved_rps": self.requests / self.duration_s if self.duration_s > 0 else 0.0,
            "error_rate": self.errors / self.sent if self.sent else 0.0,
        }
        out.update({k: float(stats[k]) for k in ("p50", "p90", "p99", "p999", "max", "mean")})
        return out


@dataclass
class RunFigures:
    result: Result
    title: str
    stages: list[ScopeFigures]
    run: ScopeFigures

    def scope(self, name: str) -> ScopeFigures | None:
        if name == ALL_STAGES:
            return self.run
        return next((s for s in self.stages if s.name == name), None)


def fail_status_of(result: Result) -> tuple[str, ...]:
    """The status classes the run's profile counted as errors (DESIGN.md default: 5xx)."""
    text = result.metadata.get("profile", "")
    try:
        load = tomllib.loads(text).get("load", {}) if text.strip() else {}
        value = load.get("fail_status", ["5xx"]) if isinstance(load, dict) else ["5xx"]
        return tuple(str(v) for v in value)
    except (tomllib.TOMLDecodeError, TypeError):
        return ("5xx",)


def stages_of(result: Result) -> list[dict[str, Any]]:
    """The `stages` metadata: name, duration_s, rate_from, rate_to, concurrency."""
    try:
        stages = json.loads(result.metadata.get("stages", "[]"))
        return [s for s in stages if isinstance(s, dict) and "name" in s]
    except ValueError:
        return []


def _target_rps(stage: dict[str, Any]) -> float:
    if stage.get("concurrency") or stage.get("rate_from") is None:
        return 0.0
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


def run_figures(result: Result, title: str = "") -> RunFigures:
    fail_status = set(fail_status_of(result)) | set(ERROR_KINDS)
    planned = {s["name"]: s for s in stages_of(result)}
    stopped_early = _stopped_early(result, planned)
    scopes: dict[str, ScopeFigures] = {}
    run_scope: ScopeFigures | None = None
    for scope in ("stage", "run"):
        for row in result.rows(scope, stage=None, name=None, outcome=None):
            key = row["stage"] if scope == "stage" else ALL_STAGES
            fig = scopes.get(key)
            if fig is None:
                duration = (int(row["end_ms"]) - int(row["start_ms"])) / 1000
                fig = scopes[key] = ScopeFigures(key, duration)
                if scope == "stage" and key in planned:
                    fig.duration_s = float(planned[key].get("duration_s") or duration)
                    if stopped_early:       # the stage row spans the time it ran
                        fig.duration_s = duration
                    fig.target_rps = _target_rps(planned[key])
            if row["name"] == "*" and row["outcome"] == "*":
                histogram.merge(fig.latency, result.histogram(row))
                fig.scheduled += int(row.get("scheduled") or 0)
                continue
            count = int(row["count"])
            outcome = row["outcome"]
            fig.sent += count
            if outcome in STATUS_OUTCOMES:
                fig.requests += count
            if outcome in fail_status:
                fig.errors += count
            if outcome in ERROR_KINDS or outcome in fail_status:
                fig.errors_by_kind[outcome] = fig.errors_by_kind.get(outcome, 0) + count
        if scope == "run":
            run_scope = scopes.pop(ALL_STAGES, None)
    stage_list = [scopes[name] for name in planned if name in scopes]
    stage_list += [f for name, f in scopes.items() if name not in planned]
    if run_scope is None:
        run_scope = ScopeFigures(ALL_STAGES, 0.0)
    planned_s = sum(float(s.get("duration_s") or 0) for s in planned.values())
    if planned_s:
        run_scope.duration_s = min(run_scope.duration_s, planned_s) or planned_s
        arrivals = sum(_target_rps(s) * float(s.get("duration_s") or 0) for s in planned.values())
        run_scope.target_rps = arrivals / planned_s
    return RunFigures(result, title or run_title(result), stage_list, run_scope)


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


# -- deltas ----------------------------------------------------------------------------------

def delta(kind: str, base: float, value: float) -> float | None:
    """Change against the baseline: percentage points for ratios, % for everything else."""
    if kind == "ratio":
        return (value - base) * 100
    if base == 0:
        return None if value == 0 else math.copysign(math.inf, value)
    return (value - base) / base * 100


def _stage_names(runs: list[RunFigures]) -> list[str]:
    names: list[str] = []
    for run in runs:
        names += [s.name for s in run.stages if s.name not in names]
    if any(len(run.stages) > 1 for run in runs) or not names:
        names.append(ALL_STAGES)
    return names


def comparison(runs: list[RunFigures]) -> dict[str, Any]:
    """The JSON form: runs, and per stage each run's figures and deltas against runs[0]."""
    stages = []
    for name in _stage_names(runs):
        values: list[dict[str, float] | None] = []
        for run in runs:
            scope = run.scope(name)
            values.append(scope.values() if scope is not None else None)
        base = values[0]
        deltas: list[dict[str, float | None] | None] = [None]
        for v in values[1:]:
            deltas.append(None if v is None or base is None else
                          {k: delta(KIND[k], base[k], v[k]) for k in v})
        stages.append({"stage": name, "values": values, "deltas": deltas})
    return {
        "runs": [{"title": r.title, "path": r.result.path, "run_id": r.result.run_id,
                  "labels": r.result.labels,
                  "start_time": r.result.metadata.get("start_time", ""),
                  "profile": r.result.metadata.get("profile_name", "")} for r in runs],
        "baseline": runs[0].result.path,
        "delta_units": {k: ("pp" if kind == "ratio" else "%") for k, _, kind in FIGURES},
        "stages": stages,
    }


# -- gates -----------------------------------------------------------------------------------

_GATE = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*=\s*([+-])\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*"
                   r"(%|pp|us|µs|ms|s)\s*$")


@dataclass(frozen=True)
class Gate:
    """`metric=+10%`: fail when the metric rises (+) or falls (-) by more than the amount,
    relative (%), in percentage points (pp, error_rate only) or in time (latency only)."""

    spec: str
    metric: str
    direction: int        # +1: an increase beyond the amount fails; -1: a decrease
    amount: float         # in the unit below
    unit: str             # "%", "pp" or "us"

    def change(self, base: float, value: float) -> float | None:
        if self.unit == "%":
            if base == 0:
                return 0.0 if value == 0 else math.copysign(math.inf, value)
            return (value - base) / base * 100
        if self.unit == "pp":
            return (value - base) * 100
        return value - base

    def breached(self, base: float, value: float) -> tuple[bool, float | None]:
        change = self.change(base, value)
        if change is None:
            return False, None
        return change * self.direction > self.amount, change


def parse_gate(spec: str) -> Gate:
    match = _GATE.match(spec)
    expected = ("expected METRIC=+N% or METRIC=-N% (also +Npp for error_rate, +Nms for "
                f"latency), METRIC one of {', '.join(sorted(GATE_METRICS))}, "
                "e.g. p99=+10%, error_rate=+0.1pp, achieved_rps=-5%")
    if not match:
        raise InputError(f"--fail-on {spec!r}: {expected}")
    name, sign, number, unit = match.groups()
    metric = GATE_ALIASES.get(name, name)
    if metric not in GATE_METRICS:
        raise InputError(f"--fail-on {spec!r}: unknown metric {name!r}; {expected}")
    kind = KIND[metric]
    amount = float(number)
    if unit == "pp" and kind != "ratio":
        raise InputError(f"--fail-on {spec!r}: 'pp' (percentage points) applies to error_rate "
                         f"only; use % for {name}")
    if unit in ("us", "µs", "ms", "s"):
        if kind != "us":
            raise InputError(f"--fail-on {spec!r}: a time ({unit}) applies to latency "
                             f"figures only; use % for {name}")
        amount = parse_duration(f"{number}{unit}", f"--fail-on {spec!r}") * 1e6
        unit = "us"
    return Gate(spec.strip(), metric, 1 if sign == "+" else -1, amount, unit)


def _fmt(kind: str, value: float | None) -> str:
    if value is None:
        return "-"
    if kind == "rps":
        return f"{value:.1f}" if value < 1000 else f"{value:,.0f}"
    if kind == "ratio":
        return f"{value * 100:.3g}%"
    from loadforge.summary import format_us

    return format_us(value)


def _fmt_change(gate: Gate, change: float) -> str:
    if gate.unit == "us":
        from loadforge.summary import format_us

        return ("+" if change >= 0 else "-") + format_us(abs(change))
    return f"{change:+.3g}{gate.unit}"


def check_gates(runs: list[RunFigures], gates: list[Gate]) -> list[dict[str, Any]]:
    """One check per gate x stage x non-baseline run, on stages the baseline also has."""
    checks = []
    base = runs[0]
    for run in runs[1:]:
        for name in _stage_names([base, run]):
            b_scope, r_scope = base.scope(name), run.scope(name)
            if b_scope is None or r_scope is None:
                continue
            b_values, r_values = b_scope.values(), r_scope.values()
            for gate in gates:
                b, v = b_values[gate.metric], r_values[gate.metric]
                bad, change = gate.breached(b, v)
                kind = KIND[gate.metric]
                where = "all stages" if name == ALL_STAGES else f"stage {name}"
                shown = "n/a" if change is None else _fmt_change(gate, change)
                message = (f"{where}: {gate.metric} {shown} ({_fmt(kind, b)} -> "
                           f"{_fmt(kind, v)}), {run.title} vs baseline {base.title}; "
                           f"gate {gate.spec}")
                checks.append({"gate": gate.spec, "metric": gate.metric, "stage": name,
                               "run": run.title, "baseline": base.title, "ok": not bad,
                               "baseline_value": b, "value": v, "change": change,
                               "unit": gate.unit, "message": message})
    return checks


def gate_cases(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": f"{c['gate']} {c['stage']} {c['run']}", "ok": c["ok"],
             "message": c["message"], "classname": "loadforge.compare",
             "details": json.dumps(c, indent=2)} for c in checks]


# -- output ----------------------------------------------------------------------------------

def _delta_text(kind: str, d: float | None) -> str:
    if d is None:
        return ""
    if math.isinf(d):
        return "+inf%" if d > 0 else "-inf%"
    unit = "pp" if kind == "ratio" else "%"
    return f"{d:+.3g}{unit}" if abs(d) < 1000 else f"{d:+,.0f}{unit}"


def _cells(data: dict[str, Any], stage: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, label, kind in FIGURES:
        row = [label]
        for i, values in enumerate(stage["values"]):
            row.append(_fmt(kind, None if values is None else values[key]))
            if i:
                deltas = stage["deltas"][i]
                row.append(_delta_text(kind, None if deltas is None else deltas[key]))
        rows.append(row)
    return rows


def _headers(data: dict[str, Any]) -> list[str]:
    headers = ["figure"]
    for i, run in enumerate(data["runs"]):
        headers.append(f"{run['title']} (baseline)" if i == 0 else run["title"])
        if i:
            headers.append("Δ")
    return headers


def render_table(data: dict[str, Any], console: Console) -> None:
    headers = _headers(data)
    for stage in data["stages"]:
        title = "all stages" if stage["stage"] == ALL_STAGES else f"stage {stage['stage']}"
        table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)
        for h in headers:
            table.add_column(h, justify="left" if h == "figure" else "right", no_wrap=True)
        for row in _cells(data, stage):
            table.add_row(*(Text(c) for c in row))
        console.print(table)


def render_markdown(data: dict[str, Any]) -> str:
    headers = _headers(data)
    out = []
    for stage in data["stages"]:
        title = "all stages" if stage["stage"] == ALL_STAGES else f"stage `{stage['stage']}`"
        out.append(f"#### {title}\n")
        out.append("| " + " | ".join(headers) + " |")
        out.append("|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|")
        for row in _cells(data, stage):
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        out.append("")
    return "\n".join(out)


def render_gates_markdown(checks: list[dict[str, Any]]) -> str:
    failed = [c for c in checks if not c["ok"]]
    if not checks:
        return ""
    if not failed:
        return f"**Regression gates: all {len(checks)} checks passed.**\n"
    lines = [f"**Regression gates: {len(failed)} of {len(checks)} checks failed.**\n"]
    lines += [f"- :x: {c['message']}" for c in failed]
    return "\n".join(lines) + "\n"
