"""`loadforge compare`: runs side by side per stage, deltas against the first (baseline) run,
and regression gates (`--fail-on p99=+10%`).

Every latency figure comes from the stage rows' merged histograms (decoded from the Parquet
file), never from the stored percentile columns of other scopes or from averaging.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from loadforge.analysis import noise, scoped
from loadforge.analysis.figures import ALL_STAGES, ScopeFigures
from loadforge.analysis.readback import (  # noqa: F401  (compare's figures, read back there)
    RunFigures,
    bootstrap_intervals,
    fail_status_of,
    load_runs,
    run_figures,
    run_title,
    stages_of,
)
from loadforge.errors import InputError
from loadforge.units import format_us, parse_duration

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
FORMATS = ("table", "markdown", "json")


# -- deltas ----------------------------------------------------------------------------------

def delta(kind: str, base: float, value: float) -> float | None:
    """Change against the baseline: percentage points for ratios, % for everything else."""
    if kind == "ratio":
        return (value - base) * 100
    if base == 0:
        return None if value == 0 else math.copysign(math.inf, value)
    return (value - base) / base * 100


def _delta_of(kind: str, base: float | None, value: float | None) -> float | None:
    return None if base is None or value is None else delta(kind, base, value)


def stage_names(runs: list[RunFigures]) -> list[str]:
    names: list[str] = []
    for run in runs:
        names += [s.name for s in run.stages if s.name not in names]
    if any(len(run.stages) > 1 for run in runs) or not names:
        names.append(ALL_STAGES)
    return names


def scoped_figures(runs: list[RunFigures], groups: list[Group] | None = None
                   ) -> list[dict[str, dict[str, Any]]]:
    """Per run (or group: its runs merged), per stage: figures per request name and per
    backend, and the fairness of the backends' shares (analysis/scoped.py)."""
    if groups is None:
        return [scoped.figures(scoped.tallies(r)) for r in runs]
    return [scoped.figures(scoped.pool([scoped.tallies(r) for r in g.runs])) for g in groups]


def comparison(runs: list[RunFigures], groups: list[Group] | None = None,
               significance: list[dict[str, dict[str, Any]] | None] | None = None,
               scoped_figs: list[dict[str, dict[str, Any]]] | None = None
               ) -> dict[str, Any]:
    """The JSON form: runs (or groups' pooled figures), and per stage each one's figures and
    deltas against the first; with groups, how sure each delta is (group_noise)."""
    stages = []
    for name in stage_names(runs):
        values: list[dict[str, float | None] | None] = []
        for run in runs:
            scope = run.scope(name)
            values.append(scope.values() if scope is not None else None)
        base = values[0]
        deltas: list[dict[str, float | None] | None] = [None]
        for v in values[1:]:
            deltas.append(None if v is None or base is None else
                          {k: _delta_of(KIND[k], base[k], v[k]) for k in v})
        stage: dict[str, Any] = {"stage": name, "values": values, "deltas": deltas}
        if significance is not None:
            stage["noise"] = [None if n is None else n.get(name) for n in significance]
        if scoped_figs is not None and any(f.get(name) for f in scoped_figs):
            stage["scoped"] = [f.get(name) for f in scoped_figs]
        stages.append(stage)
    data: dict[str, Any] = {
        "runs": [{"title": r.title, "path": r.result.path, "run_id": r.result.run_id,
                  "labels": r.result.labels,
                  "start_time": r.result.metadata.get("start_time", ""),
                  "profile": r.result.metadata.get("profile_name", "")} for r in runs],
        "baseline": runs[0].result.path,
        "delta_units": {k: ("pp" if kind == "ratio" else "%") for k, _, kind in FIGURES},
        "stages": stages,
    }
    members = [[r] for r in runs] if groups is None else [g.runs for g in groups]
    flows = [flow_checks(m) for m in members]
    if any(flows):
        data["flows"] = flows
    notes = condition_notes(runs if groups is None else [r for g in groups for r in g.runs])
    if notes:
        data["notes"] = notes
    if groups is not None:
        data["groups"] = [{"title": g.title, "labels": g.labels, "runs": len(g.runs),
                           "paths": [r.result.path for r in g.runs]} for g in groups]
        data["baseline"] = groups[0].title
        data["noise_estimate"] = all(len(g.runs) > 1 for g in groups)
        for g, power in zip(data["groups"], group_power(groups), strict=True):
            g["power"] = power
    return data


def flow_checks(runs: list[RunFigures]) -> dict[str, Any] | None:
    """The scripted flows' checks {name: {passed, failed}} and failed flows {flow: {type: n}}
    of these runs together, as they recorded them (metadata `flows`); None without flows."""
    checks: dict[str, dict[str, int]] = {}
    failed: dict[str, dict[str, int]] = {}
    seen = False
    for run in runs:
        try:
            flows = json.loads(run.result.metadata.get("flows") or "null")
        except ValueError:
            continue
        if not isinstance(flows, dict):
            continue
        seen = True
        for name, c in (flows.get("checks") or {}).items():
            into = checks.setdefault(name, {"passed": 0, "failed": 0})
            into["passed"] += int(c.get("passed", 0))
            into["failed"] += int(c.get("failed", 0))
        for flow, kinds in (flows.get("failed_flows") or {}).items():
            for kind, n in kinds.items():
                failed.setdefault(flow, {})[kind] = failed.get(flow, {}).get(kind, 0) + int(n)
    return {"checks": checks, "failed_flows": failed} if seen else None


def condition_notes(runs: list[RunFigures]) -> list[str]:
    """What differs in how the runs measured, not in what they measured: open-model sends are
    up to the timer resolution late, and that lateness is part of their latency."""
    seen = {r.result.metadata.get("timer_resolution_us") for r in runs}
    if len(seen) < 2:
        return []
    # Files written before the resolution was recorded used 100 µs unless the profile said.
    shown = sorted(f"{v} µs" if v is not None else "not recorded" for v in seen)
    return ["the runs used different timer resolutions (" + ", ".join(shown) + "): their "
            "open-model latencies differ by up to the larger one for that reason alone"]


# -- groups of runs: pooled figures, and how sure each difference is ------------------------

ALPHA = 0.05                  # a gate fails on a group comparison only below this p-value


@dataclass
class Group:
    """Runs that share the values of the --group-by labels (say five runs of build=main)."""

    labels: dict[str, str]
    runs: list[RunFigures]
    pooled: RunFigures        # every run's histograms and counts merged: the group's figures

    @property
    def title(self) -> str:
        return self.pooled.title


def _pool_scope(name: str, scopes: list[ScopeFigures]) -> ScopeFigures:
    out = ScopeFigures(name, sum(s.duration_s for s in scopes))
    targets = [s.target_rps for s in scopes]
    out.target_rps = None if any(t is None for t in targets) else (
        sum(t or 0.0 for t in targets) / len(targets))
    for s in scopes:
        out.requests += s.requests
        out.sent += s.sent
        out.errors += s.errors
        out.scheduled += s.scheduled
        out.add_latency(s.latency)
        for kind, count in s.errors_by_kind.items():
            out.errors_by_kind[kind] = out.errors_by_kind.get(kind, 0) + count
    return out


def group_runs(runs: list[RunFigures], by: list[str],
               baseline: dict[str, str] | None = None) -> list[Group]:
    """Groups by the values of the `by` labels, in order of their first run; the group whose
    labels match `baseline` first (else the first group)."""
    members: dict[tuple[str, ...], list[RunFigures]] = {}
    for run in runs:
        members.setdefault(tuple(run.result.labels.get(k, "") for k in by), []).append(run)
    groups = []
    for key, group in members.items():
        labels = dict(zip(by, key, strict=True))
        title = ",".join(f"{k}={v}" for k, v in labels.items())
        names: list[str] = []
        for run in group:
            names += [s.name for s in run.stages if s.name not in names]
        stages = [_pool_scope(n, [sc for r in group if (sc := r.scope(n)) is not None])
                  for n in names]
        pooled = RunFigures(group[0].result, f"{title} ({len(group)} run"
                            f"{'s' if len(group) != 1 else ''})", stages,
                            _pool_scope(ALL_STAGES, [r.run for r in group]))
        groups.append(Group(labels, group, pooled))
    if baseline:
        first = next((g for g in groups
                      if all(g.labels.get(k) == v for k, v in baseline.items())), None)
        if first is None:
            wanted = ",".join(f"{k}={v}" for k, v in baseline.items())
            have = "; ".join(g.title for g in groups)
            raise InputError(f"compare --baseline {wanted}: no group of runs has these labels "
                             f"(groups: {have})")
        groups.remove(first)
        groups.insert(0, first)
    return groups


def _metric_values(run: RunFigures, stage: str) -> dict[str, float]:
    scope = run.scope(stage)
    values = scope.values() if scope is not None else {}
    return {k: float(v or 0.0) for k, v in values.items()}


RESAMPLES = 1000              # the hierarchical bootstrap's; its smallest p is 2 / 1001


def group_noise(groups: list[Group], stage_names: list[str], resamples: int = RESAMPLES
                ) -> list[dict[str, dict[str, Any]] | None]:
    """Per group (None for the baseline, and for a side of one run: no noise estimate) and per
    stage, per metric: the hierarchical bootstrap's p-value and 95 % interval of the change
    (relative; absolute for error_rate), which decide, and the U test's p over the runs'
    figures beside them (p_runs), which alone cannot decide below four runs a side."""
    intervals = {id(r): bootstrap_intervals(r) for g in groups for r in g.runs}
    base = groups[0]
    out: list[dict[str, dict[str, Any]] | None] = [None]
    metrics = [k for k in noise.METRICS if k in GATE_METRICS]
    for group in groups[1:]:
        if len(base.runs) < 2 or len(group.runs) < 2:
            out.append(None)
            continue
        per_stage: dict[str, dict[str, Any]] = {}
        for name in stage_names:
            sides = [[r for r in g.runs if r.scope(name) is not None] for g in (base, group)]
            if not all(sides):
                continue
            a, b = ([_metric_values(r, name) for r in side] for side in sides)
            tested = noise.hierarchical_test(
                [intervals[id(r)].get(name, []) for r in sides[0]],
                [intervals[id(r)].get(name, []) for r in sides[1]], metrics,
                resamples=resamples)
            per_stage[name] = {m: {**tested[m],
                                   "p_runs": noise.mann_whitney_p([v[m] for v in a],
                                                                  [v[m] for v in b])}
                               for m in metrics}
        out.append(per_stage)
    return out


def group_power(groups: list[Group], resamples: int = RESAMPLES) -> list[dict[str, Any] | None]:
    """Per compared group (None for the baseline): what the comparison can detect with the
    runs it has. `min_p` is the smallest p its test can reach, `can_decide` whether that is
    below ALPHA, `runs_needed` the runs a side it would take otherwise, and `line` says it."""
    out: list[dict[str, Any] | None] = [None]
    m = len(groups[0].runs)
    for group in groups[1:]:
        n = len(group.runs)
        u_min = noise.min_p_u(m, n)
        u_needed = noise.runs_needed_u(ALPHA)
        if m < 2 or n < 2:
            line = (f"{m} + {n} runs: no noise estimate, so no test of significance can decide "
                    f"(one run on a side); 2 runs a side needed for the "
                    f"hierarchical bootstrap, {u_needed} for a U test alone; gates judge the "
                    "change alone")
            out.append({"runs": [m, n], "test": None, "min_p": 1.0, "level": ALPHA,
                        "can_decide": False, "runs_needed": 2, "line": line})
            continue
        min_p = noise.min_p_bootstrap(resamples)
        can = min_p < ALPHA
        line = (f"{m} + {n} runs: hierarchical bootstrap (runs, then blocks of intervals within "
                f"runs, {resamples} resamples) can reach p = {min_p:.2g} "
                + (f"< {ALPHA}" if can else f">= {ALPHA}: it cannot find a change at this level")
                + f"; the runs' U test alone could reach {u_min:.2g}"
                + ("" if u_min < ALPHA else f" ({u_needed} runs a side needed)"))
        out.append({"runs": [m, n], "test": "hierarchical bootstrap", "min_p": min_p,
                    "min_p_runs": u_min, "level": ALPHA, "can_decide": can,
                    "runs_needed": 2 if can else None, "resamples": resamples, "line": line})
    return out


# -- gates -----------------------------------------------------------------------------------

_LIMIT = re.compile(r"^\s*([+-])\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(%|pp|us|µs|ms|s)?\s*$")
_SCOPED = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)\s*(?:\[(.*)\])?$")

# Metrics of one backend or of the backends together (scoped.py), besides FIGURES': a gate
# names them as `share[b3]`, `share[*]` (every backend), `fairness` (Jain's index, no scope).
# Kind "ratio": a fraction (limits in pp or %); "index": a bare number (limits without unit).
SCOPED_KIND = {"share": "ratio", "fairness": "index"}
# Figures a request name or a backend has (scoped.py's `figures`): `p99[/slow]=+10%`.
SCOPE_FIGURES = ("p50", "p90", "p99", "error_rate")


@dataclass(frozen=True)
class Limit:
    """One amount a change must exceed: relative (%), in percentage points (pp), in time
    (us) or absolute ("": an index such as fairness)."""

    amount: float
    unit: str             # "%", "pp", "us" or ""

    def change(self, base: float, value: float) -> float:
        if self.unit == "%":
            if base == 0:
                return 0.0 if value == 0 else math.copysign(math.inf, value)
            return (value - base) / base * 100
        if self.unit == "pp":
            return (value - base) * 100
        return value - base


@dataclass(frozen=True)
class Gate:
    """`metric=+10%`: fail when the metric rises (+) or falls (-) by more than the amount.
    `p99=+10%,+1ms`: by more than every amount listed, so that a relative limit on a tiny
    baseline (10 % of 200 µs) does not fail on a change nobody would notice.
    `metric[scope]=...`: the metric of one request name or backend (`*`: each backend)."""

    spec: str
    metric: str
    direction: int        # +1: an increase beyond the amounts fails; -1: a decrease
    limits: tuple[Limit, ...]
    scope: str | None = None

    @property
    def amount(self) -> float:
        return self.limits[0].amount

    @property
    def unit(self) -> str:
        return self.limits[0].unit

    @property
    def kind(self) -> str:
        return SCOPED_KIND.get(self.metric) or KIND[self.metric]

    def breached(self, base: float, value: float) -> tuple[bool, float]:
        """Whether the change exceeds every limit; the change in the first limit's unit."""
        changes = [limit.change(base, value) for limit in self.limits]
        bad = all(c * self.direction > limit.amount
                  for c, limit in zip(changes, self.limits, strict=True))
        return bad, changes[0]


def parse_gate(spec: str) -> Gate:
    expected = ("expected METRIC=+N% or METRIC=-N% (also +Npp for rates, +Nms for latency, a "
                "bare number for fairness, and several limits that must all be exceeded, as "
                "in p99=+10%,+1ms), METRIC one of "
                f"{', '.join(sorted(GATE_METRICS | set(SCOPED_KIND)))}, optionally scoped to "
                "a request name or backend in brackets, e.g. p99=+10%, error_rate=+0.1pp, "
                "p99[/slow]=+10%, share[b3]=+5pp, share[*]=+5pp, fairness=-0.05")
    name, eq, rest = spec.partition("=")
    name = name.strip()
    match = _SCOPED.match(name)
    if not eq or not name or not match:
        raise InputError(f"--fail-on {spec!r}: {expected}")
    bare, scope = match.group(1), match.group(2)
    metric = GATE_ALIASES.get(bare, bare)
    if metric not in GATE_METRICS and metric not in SCOPED_KIND:
        raise InputError(f"--fail-on {spec!r}: unknown metric {bare!r}; {expected}")
    if scope is not None:
        scope = scope.strip()
        if not scope:
            raise InputError(f"--fail-on {spec!r}: empty scope []: name a request or a "
                             "backend, or * for every backend")
        if metric == "fairness":
            raise InputError(f"--fail-on {spec!r}: fairness is over all backends; write "
                             "fairness=-0.05 without a scope")
        if metric not in SCOPE_FIGURES and metric != "share":
            raise InputError(f"--fail-on {spec!r}: a request name or backend has "
                             f"{', '.join(SCOPE_FIGURES)} and share, not {bare}")
    elif metric == "share":
        raise InputError(f"--fail-on {spec!r}: share needs a backend, as in share[b3]=+5pp, "
                         "or share[*]=+5pp for every backend")
    kind = SCOPED_KIND.get(metric) or KIND[metric]
    limits = []
    signs = set()
    for part in rest.split(","):
        limit = _LIMIT.match(part)
        if not limit:
            raise InputError(f"--fail-on {spec!r}: {expected}")
        sign, number, unit = limit.groups()
        signs.add(sign)
        amount = float(number)
        if unit is None:
            if kind != "index":
                raise InputError(f"--fail-on {spec!r}: {part.strip()!r} needs a unit "
                                 f"({'% or pp' if kind == 'ratio' else '% or ms'}); {expected}")
            unit = ""
        elif kind == "index":
            raise InputError(f"--fail-on {spec!r}: {bare} is an index from 0 to 1; write its "
                             "change as a bare number, e.g. fairness=-0.05")
        if unit == "pp" and kind != "ratio":
            raise InputError(f"--fail-on {spec!r}: 'pp' (percentage points) applies to "
                             f"rates and shares only; use % for {name}")
        if unit in ("us", "µs", "ms", "s"):
            if kind != "us":
                raise InputError(f"--fail-on {spec!r}: a time ({unit}) applies to latency "
                                 f"figures only; use % for {name}")
            amount = parse_duration(f"{number}{unit}", f"--fail-on {spec!r}") * 1e6
            unit = "us"
        limits.append(Limit(amount, unit))
    if len(signs) > 1:
        raise InputError(f"--fail-on {spec!r}: every limit of one gate goes the same way "
                         "(all + or all -)")
    return Gate(spec.strip(), metric, 1 if "+" in signs else -1, tuple(limits), scope)


def fmt_figure(kind: str, value: float | None) -> str:
    if value is None:
        return "-"
    if kind == "rps":
        return f"{value:.1f}" if value < 999.95 else f"{value:,.0f}"
    if kind == "ratio":
        return f"{value * 100:.3g}%"
    return format_us(value)


def _fmt_change(gate: Gate, change: float) -> str:
    if gate.unit == "us":
        return ("+" if change >= 0 else "-") + format_us(abs(change))
    if gate.unit == "":
        return f"{change:+.3f}"
    return fmt_pct(change, gate.unit)


def _fmt_value(kind: str, value: float) -> str:
    return f"{value:.3f}" if kind == "index" else fmt_figure(kind, value)


def _scoped_values(gate: Gate, base: dict[str, Any] | None, run: dict[str, Any] | None
                   ) -> list[tuple[str, float, float]]:
    """(label, baseline value, value) for a scoped gate or a backends' metric, for each scope
    it names that both sides have (share: a backend absent on one side has a share of 0)."""
    if not base or not run:
        return []
    if gate.metric == "fairness":
        b, v = base.get("fairness"), run.get("fairness")
        return [] if b is None or v is None else [("fairness", b, v)]
    if gate.metric == "share":
        keys = (sorted(set(base["backends"]) | set(run["backends"])) if gate.scope == "*"
                else [gate.scope] if gate.scope in base["backends"] or gate.scope in
                run["backends"] else [])
        return [(f"share[{k}]", base["backends"].get(k, {}).get("share", 0.0),
                 run["backends"].get(k, {}).get("share", 0.0)) for k in keys]
    out = []
    for kind in ("names", "backends"):
        keys = (sorted(set(base[kind]) & set(run[kind])) if gate.scope == "*"
                else [gate.scope] if gate.scope in base[kind] and gate.scope in run[kind]
                else [])
        out += [(f"{gate.metric}[{k}]", float(base[kind][k][gate.metric]),
                 float(run[kind][k][gate.metric])) for k in keys
                if base[kind][k][gate.metric] is not None
                and run[kind][k][gate.metric] is not None]
        if out:
            break           # a request name before a backend of the same name
    return out


def check_gates(runs: list[RunFigures], gates: list[Gate],
                significance: list[dict[str, dict[str, Any]] | None] | None = None,
                scoped_figs: list[dict[str, dict[str, Any]]] | None = None
                ) -> list[dict[str, Any]]:
    """One check per gate x stage x non-baseline run (x backend for `share[*]`), on stages the
    baseline also has. Where `significance` has a comparison's p-values (groups of several runs
    a side), a gate fails only when the change is beyond its limits *and* significant
    (p < ALPHA). A scoped gate (a request name, a backend) has no significance test: its
    change alone decides, and its message says so when groups are compared."""
    checks = []
    base = runs[0]
    for i, run in enumerate(runs[1:], 1):
        judgements = significance[i] if significance is not None else None
        for name in stage_names([base, run]):
            b_scope, r_scope = base.scope(name), run.scope(name)
            if b_scope is None or r_scope is None:
                continue
            b_values, r_values = b_scope.values(), r_scope.values()
            where = "all stages" if name == ALL_STAGES else f"stage {name}"
            for gate in gates:
                if gate.scope is None and gate.metric in GATE_METRICS:
                    b, v = b_values[gate.metric], r_values[gate.metric]
                    if b is None or v is None:     # only target_rps is ever None, never gated
                        continue
                    values = [(gate.metric, float(b), float(v))]
                else:
                    values = _scoped_values(
                        gate, None if scoped_figs is None else scoped_figs[0].get(name),
                        None if scoped_figs is None else scoped_figs[i].get(name))
                for label, b, v in values:
                    bad, change = gate.breached(b, v)
                    shown = _fmt_change(gate, change)
                    message = (f"{where}: {label} {shown} ({_fmt_value(gate.kind, b)} -> "
                               f"{_fmt_value(gate.kind, v)}), {run.title} vs baseline "
                               f"{base.title}; gate {gate.spec}")
                    check: dict[str, Any] = {
                        "gate": gate.spec, "metric": gate.metric, "scope": gate.scope,
                        "figure": label, "stage": name, "run": run.title,
                        "baseline": base.title, "ok": not bad, "baseline_value": b, "value": v,
                        "change": change, "unit": gate.unit, "message": message}
                    judged = (judgements.get(name, {}).get(gate.metric)
                              if judgements and label == gate.metric else None)
                    if judgeable(judged):
                        assert judged is not None
                        sure = significant(judged)
                        check.update(ok=not (bad and sure), p_value=judged["p"],
                                     ci=judged["ci"], p_runs=judged.get("p_runs"),
                                     significant=sure)
                        check["message"] += f"; {sureness(judged, gate.metric)}"
                    elif judgements:
                        check["message"] += "; no significance test for this figure"
                    checks.append(check)
    for gate in gates:
        if not any(c["gate"] == gate.spec for c in checks) and len(runs) > 1:
            raise InputError(f"--fail-on {gate.spec!r}: {_missing(gate, scoped_figs)}")
    return checks


def _missing(gate: Gate, scoped_figs: list[dict[str, dict[str, Any]]] | None) -> str:
    """Why a gate found nothing to judge: the names and backends the runs do have."""
    names: set[str] = set()
    backends: set[str] = set()
    for per_stage in scoped_figs or []:
        for fig in per_stage.values():
            names |= set(fig["names"])
            backends |= set(fig["backends"])
    if gate.metric in ("share", "fairness") and not backends:
        return ("no run has backend figures (run with --backend-header NAME, the response "
                "header that names the backend)")
    return (f"no request name or backend {gate.scope!r} in both the baseline and a compared "
            f"run (names: {', '.join(sorted(names)) or 'none'}; backends: "
            f"{', '.join(sorted(backends)) or 'none'})")


def significant(judged: dict[str, Any]) -> bool:
    """The hierarchical bootstrap finds the change (p < ALPHA) and its interval excludes zero
    (the same resamples; both said, so that a reader sees why)."""
    ci, p = judged["ci"], judged["p"]
    return p is not None and p < ALPHA and ci is not None and (ci[0] > 0 or ci[1] < 0)


def judgeable(judged: dict[str, Any] | None) -> bool:
    return judged is not None and judged.get("p") is not None


def sureness(judged: dict[str, Any], metric: str = "") -> str:
    """"p=0.008, 95% CI +8.1%..+14.9%" (the CI of the relative change; in pp for a rate), and
    whether that is significant."""
    ci, p = judged["ci"], judged["p"]
    if p is None:
        return "no p-value (the baseline figure is 0: no relative change to test)"
    if ci is None:
        interval = ""
    elif KIND.get(metric) == "ratio":
        interval = f", 95% CI {ci[0] * 100:+.3g}pp..{ci[1] * 100:+.3g}pp"
    else:
        interval = f", 95% CI {fmt_pct(ci[0] * 100)}..{fmt_pct(ci[1] * 100)}"
    runs = f", runs' U test p={judged['p_runs']:.2g}" if "p_runs" in judged else ""
    verdict = "significant" if significant(judged) else "not significant"
    return f"p={p:.2g}{interval}{runs} ({verdict})"


def fmt_pct(value: float, unit: str = "%") -> str:
    """A change in % as people read it: +4.5%, +120%, +11,000% (never 1.1e+04)."""
    if math.isinf(value):
        return ("+" if value > 0 else "-") + "inf" + unit
    if abs(value) >= 99.95:       # .3g would print 999.7 as 1e+03
        return f"{value:+,.0f}{unit}"
    return f"{value:+.3g}{unit}"
