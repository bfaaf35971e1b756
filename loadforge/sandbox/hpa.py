"""A Kubernetes HorizontalPodAutoscaler (`autoscaling/v2`), as a pure policy.

`HPA.step(now, current, pods)` is what the controller does once per sync period (15 s by
default, `--horizontal-pod-autoscaler-sync-period`): compute a replica count per metric from the
pods' samples, take the largest, stabilize it over the behavior's windows, limit the change by
the behavior's rate policies and clamp it to [minReplicas, maxReplicas]. It holds no loop and no
sockets: the sandbox's cluster calls it with measured samples, the simulator with modelled ones,
so both take the same decisions for the same inputs.

Written from the upstream controller's algorithm (kubernetes/kubernetes,
pkg/controller/podautoscaler: replica_calculator.go and horizontal.go) and the documentation's
"Algorithm details" and "Configurable scaling behavior":

- per metric, usage ratio = current / target; within the tolerance (0.1) of 1: no change; else
  ceil(ratio x ready pods);
- pods not ready yet (starting) are ignored; on a scale-up they are then counted at 0 % usage,
  and pods without a metric sample are counted at 0 % on a scale-up and at 100 % of the target
  on a scale-down; if that flips the direction or lands within the tolerance, no change;
- the recommendation is stabilized: the lowest recommendation of the scale-up window and the
  highest of the scale-down window bound it (defaults 0 s and 300 s);
- the change is limited by the direction's policies (Pods: add/remove N, Percent: N % of the
  replicas at the start of the policy's period), counting the changes made within each
  policy's period; selectPolicy Max (default) takes the policy allowing the largest change,
  Min the smallest, Disabled forbids the direction.

What a pod's metrics are comes from the model (`PodSample`): `utilization` (busy / capacity,
0..1; the CPU a replica uses at its request), `inflight` (requests in service or waiting) and
`rps` (requests per second it answered). `metric_source()` maps a metric spec onto one of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from loadforge.errors import ProfileError

TOLERANCE = 0.1
SYNC_PERIOD_S = 15.0
DEFAULT_SCALE_DOWN_WINDOW_S = 300.0
# An Object/Pods metric name is mapped to what the model measures by these words.
_RPS_WORDS = ("requests_per_second", "request_rate", "requests-per-second", "rps", "qps",
              "http_requests", "requests")
_INFLIGHT_WORDS = ("inflight", "in_flight", "in-flight", "concurrency", "active_requests",
                   "queue")
_UTILIZATION_WORDS = ("utilization", "cpu")
SOURCES = ("utilization", "inflight", "rps")
# Memory has no model of its own: a request holds its buffers while in service or waiting,
# so memory is taken as in-flight requests, MEMORY_PER_REQUEST bytes each, and a pod's request
# as its concurrency's worth.
MEMORY_PER_REQUEST = 1 << 20


@dataclass(frozen=True)
class ScalingPolicy:
    type: str          # "Pods" or "Percent"
    value: int
    period_s: float


@dataclass(frozen=True)
class ScalingRules:
    stabilization_s: float
    select: str        # "Max", "Min" or "Disabled"
    policies: tuple[ScalingPolicy, ...]
    tolerance: float | None = None     # behavior's own (Kubernetes 1.33+); None: the spec's


@dataclass(frozen=True)
class MetricSpec:
    """One entry of spec.metrics, reduced to what the model knows."""

    type: str          # "Resource", "Pods" or "Object"
    name: str          # "cpu", "memory" or the metric's name
    target_type: str   # "Utilization", "AverageValue" or "Value"
    target: float      # Utilization: a fraction (50 % -> 0.5); else the value in the source's unit
    source: str        # what the model measures: one of SOURCES

    def describe(self) -> str:
        shown = f"{self.target:.0%}" if self.target_type == "Utilization" else f"{self.target:g}"
        return f"{self.type} {self.name} {self.target_type} {shown}"


def _default_up() -> ScalingRules:
    return ScalingRules(0.0, "Max", (ScalingPolicy("Percent", 100, 15.0),
                                     ScalingPolicy("Pods", 4, 15.0)))


def _default_down() -> ScalingRules:
    return ScalingRules(DEFAULT_SCALE_DOWN_WINDOW_S, "Max", (ScalingPolicy("Percent", 100, 15.0),))


@dataclass(frozen=True)
class HPASpec:
    """A validated HorizontalPodAutoscaler; `to_dict`/`from_dict` carry it through JSON."""

    name: str
    min_replicas: int
    max_replicas: int
    metrics: tuple[MetricSpec, ...]
    scale_up: ScalingRules = field(default_factory=_default_up)
    scale_down: ScalingRules = field(default_factory=_default_down)
    tolerance: float = TOLERANCE
    sync_period_s: float = SYNC_PERIOD_S

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HPASpec:
        def rules(r: Mapping[str, Any]) -> ScalingRules:
            return ScalingRules(r["stabilization_s"], r["select"],
                                tuple(ScalingPolicy(**p) for p in r["policies"]),
                                r.get("tolerance"))
        return cls(name=d["name"], min_replicas=d["min_replicas"],
                   max_replicas=d["max_replicas"],
                   metrics=tuple(MetricSpec(**m) for m in d["metrics"]),
                   scale_up=rules(d["scale_up"]), scale_down=rules(d["scale_down"]),
                   tolerance=d["tolerance"], sync_period_s=d["sync_period_s"])

    def describe(self) -> str:
        return (f"HPA {self.name}: {self.min_replicas}..{self.max_replicas} replicas, "
                + ", ".join(m.describe() for m in self.metrics))


# -- parsing ----------------------------------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([a-zA-Z]*)$")
_SUFFIX = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 1024.0, "Mi": 1024.0 ** 2, "Gi": 1024.0 ** 3, "Ti": 1024.0 ** 4}


def parse_quantity(value: object, where: str) -> float:
    """A Kubernetes quantity: 100, "500m", "1.5k", "256Mi"."""
    if isinstance(value, bool):
        raise ProfileError(f"{where} must be a quantity such as 100, \"500m\" or \"1Mi\", "
                           f"got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        m = _QUANTITY.match(str(value).strip())
        if not m or m.group(2) not in _SUFFIX:
            raise ProfileError(f"{where} must be a quantity such as 100, \"500m\" or \"1Mi\", "
                               f"got {value!r}")
        number = float(m.group(1)) * _SUFFIX[m.group(2)]
    if not math.isfinite(number) or number <= 0:
        raise ProfileError(f"{where} must be > 0, got {value!r}")
    return number


def _map(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ProfileError(f"{where} must be a mapping, got {table!r}")
    return table


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProfileError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _source_by_name(name: str, where: str) -> str:
    lowered = name.lower()
    for words, source in ((_INFLIGHT_WORDS, "inflight"), (_RPS_WORDS, "rps"),
                          (_UTILIZATION_WORDS, "utilization")):
        if any(w in lowered for w in words):
            return source
    raise ProfileError(
        f"{where}: metric {name!r} means nothing to the model; name it after what it measures: "
        "requests per second (e.g. http_requests_per_second), in-flight requests (e.g. "
        "inflight_requests) or utilization")


def _metric(raw: Any, where: str, concurrency: int) -> MetricSpec:
    m = _map(raw, where)
    kind = m.get("type")
    if kind == "Resource":
        res = _map(m.get("resource"), f"{where}.resource")
        name = res.get("name")
        if name not in ("cpu", "memory"):
            raise ProfileError(f"{where}.resource.name must be cpu or memory, got {name!r}")
        target = _map(res.get("target"), f"{where}.resource.target")
        ttype = target.get("type")
        if ttype == "Utilization":
            util = _int(target.get("averageUtilization"),
                        f"{where}.resource.target.averageUtilization", 1)
            # cpu: busy / capacity; memory: in-flight requests over the concurrency's worth
            value = util / 100.0 if name == "cpu" else util / 100.0 * concurrency
        elif ttype == "AverageValue":
            value = parse_quantity(target.get("averageValue"),
                                   f"{where}.resource.target.averageValue")
            if name == "memory":
                value = value / MEMORY_PER_REQUEST       # in-flight requests per pod
            # cpu: cores; a replica's request is 1 core, so 500m is utilization 0.5
        else:
            raise ProfileError(f"{where}.resource.target.type must be Utilization or "
                               f"AverageValue, got {ttype!r}")
        source = "utilization" if name == "cpu" else "inflight"
        return MetricSpec("Resource", name, ttype, value, source)
    if kind in ("Pods", "Object"):
        key = "pods" if kind == "Pods" else "object"
        body = _map(m.get(key), f"{where}.{key}")
        metric = _map(body.get("metric"), f"{where}.{key}.metric")
        name = metric.get("name")
        if not isinstance(name, str) or not name:
            raise ProfileError(f"{where}.{key}.metric.name must be a metric name")
        target = _map(body.get("target"), f"{where}.{key}.target")
        ttype = target.get("type")
        allowed = ("AverageValue",) if kind == "Pods" else ("Value", "AverageValue")
        if ttype not in allowed:
            raise ProfileError(f"{where}.{key}.target.type must be "
                               f"{' or '.join(allowed)} for a {kind} metric, got {ttype!r}")
        field_name = "averageValue" if ttype == "AverageValue" else "value"
        value = parse_quantity(target.get(field_name), f"{where}.{key}.target.{field_name}")
        source = _source_by_name(name, f"{where}.{key}.metric.name")
        if source == "utilization" and value > 1:
            value /= 100.0      # "cpu_utilization: 50" reads as percent
        return MetricSpec(kind, name, str(ttype), value, source)
    if kind == "External" or kind == "ContainerResource":
        raise ProfileError(f"{where}.type {kind} is not modelled: use Resource, Pods or Object "
                           "metrics")
    raise ProfileError(f"{where}.type must be Resource, Pods or Object, got {kind!r}")


def _rules(raw: Any, where: str, default: ScalingRules) -> ScalingRules:
    if raw is None:
        return default
    r = _map(raw, where)
    known = ("stabilizationWindowSeconds", "selectPolicy", "policies", "tolerance")
    for key in r:
        if key not in known:
            raise ProfileError(f"{where}.{key} is not a known key (expected one of: "
                               f"{', '.join(known)})")
    window = default.stabilization_s
    if "stabilizationWindowSeconds" in r:
        window = float(_int(r["stabilizationWindowSeconds"],
                            f"{where}.stabilizationWindowSeconds", 0))
        if window > 3600:
            raise ProfileError(f"{where}.stabilizationWindowSeconds must be <= 3600, "
                               f"got {window:g}")
    select = r.get("selectPolicy", "Max")
    if select not in ("Max", "Min", "Disabled"):
        raise ProfileError(f"{where}.selectPolicy must be Max, Min or Disabled, got {select!r}")
    policies = default.policies
    if "policies" in r:
        raw_policies = r["policies"]
        if not isinstance(raw_policies, list) or not raw_policies:
            raise ProfileError(f"{where}.policies must be a non-empty list")
        out = []
        for i, p in enumerate(raw_policies):
            pw = f"{where}.policies[{i}]"
            p = _map(p, pw)
            ptype = p.get("type")
            if ptype not in ("Pods", "Percent"):
                raise ProfileError(f"{pw}.type must be Pods or Percent, got {ptype!r}")
            period = _int(p.get("periodSeconds"), f"{pw}.periodSeconds", 1)
            if period > 1800:
                raise ProfileError(f"{pw}.periodSeconds must be <= 1800, got {period}")
            out.append(ScalingPolicy(ptype, _int(p.get("value"), f"{pw}.value", 1),
                                     float(period)))
        policies = tuple(out)
    tolerance = None
    if "tolerance" in r:
        tolerance = parse_quantity(r["tolerance"], f"{where}.tolerance")
        if tolerance >= 1:
            raise ProfileError(f"{where}.tolerance must be below 1, got {r['tolerance']!r}")
    return ScalingRules(window, select, policies, tolerance)


def parse_hpa(doc: Any, where: str = "hpa", concurrency: int = 64) -> HPASpec:
    """A HorizontalPodAutoscaler manifest (already loaded from YAML) into an HPASpec.

    ProfileError naming the field for anything the controller would reject or the model cannot
    map. `concurrency` is a replica's slots, the unit of a memory request (see MEMORY_PER_REQUEST).
    """
    d = _map(doc, where)
    api = d.get("apiVersion")
    if api != "autoscaling/v2":
        raise ProfileError(f"{where}.apiVersion must be autoscaling/v2, got {api!r}")
    if d.get("kind") != "HorizontalPodAutoscaler":
        raise ProfileError(f"{where}.kind must be HorizontalPodAutoscaler, got {d.get('kind')!r}")
    meta = d.get("metadata") or {}
    name = str(meta.get("name", "hpa")) if isinstance(meta, dict) else "hpa"
    spec = _map(d.get("spec"), f"{where}.spec")
    minimum = _int(spec.get("minReplicas", 1), f"{where}.spec.minReplicas", 1)
    maximum = _int(spec.get("maxReplicas"), f"{where}.spec.maxReplicas", 1)
    if minimum > maximum:
        raise ProfileError(f"{where}.spec.minReplicas must be <= maxReplicas "
                           f"(got {minimum} > {maximum})")
    raw_metrics = spec.get("metrics")
    if raw_metrics is None:
        # The API's default: CPU at 80 %.
        metrics: tuple[MetricSpec, ...] = (MetricSpec("Resource", "cpu", "Utilization", 0.8,
                                                      "utilization"),)
    else:
        if not isinstance(raw_metrics, list) or not raw_metrics:
            raise ProfileError(f"{where}.spec.metrics must be a non-empty list")
        metrics = tuple(_metric(m, f"{where}.spec.metrics[{i}]", concurrency)
                        for i, m in enumerate(raw_metrics))
    behavior = spec.get("behavior")
    b = _map(behavior, f"{where}.spec.behavior") if behavior is not None else {}
    up = _rules(b.get("scaleUp"), f"{where}.spec.behavior.scaleUp", _default_up())
    down = _rules(b.get("scaleDown"), f"{where}.spec.behavior.scaleDown", _default_down())
    return HPASpec(name, minimum, maximum, metrics, up, down)


def load_hpa(path: str, where: str | None = None, concurrency: int = 64) -> HPASpec:
    """Read and validate an HPA manifest file (the first HorizontalPodAutoscaler in it)."""
    import yaml  # PyYAML: imported here, only profiles naming an HPA need it

    label = where or path
    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except OSError as exc:
        raise ProfileError(f"{label}: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{label}: {path} is not valid YAML: "
                           f"{str(exc).splitlines()[0]}") from None
    hpas = [d for d in docs if isinstance(d, dict) and d.get("kind") == "HorizontalPodAutoscaler"]
    if not hpas:
        raise ProfileError(f"{label}: {path} holds no HorizontalPodAutoscaler")
    return parse_hpa(hpas[0], label, concurrency)


# -- the controller ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PodSample:
    """One pod as the controller sees it at a sync: ready or not, and its metrics over the last
    window (None: no sample yet, a "missing" pod)."""

    ready: bool
    utilization: float | None = None
    inflight: float | None = None
    rps: float | None = None

    def value(self, source: str) -> float | None:
        v: float | None = getattr(self, source)
        return v


@dataclass(frozen=True)
class HPADecision:
    desired: int
    current: int
    proposal: int               # the largest per-metric recommendation, before behaviors
    reason: str
    limited_by: str = ""        # "", "ScaleUpLimit", "ScaleDownLimit", "TooManyReplicas"...

    @property
    def change(self) -> int:
        return self.desired - self.current


def _ceil(x: float) -> int:
    # ratio x pods in floating point: 0.5 x 8 / 0.5 must not become 8.000000001 -> 9.
    return math.ceil(round(x, 9))


def replicas_for_metric(spec: MetricSpec, current: int, pods: Sequence[PodSample],
                        tolerance: float | tuple[float, float]) -> tuple[int, float] | None:
    """(replicas, observed value) for one metric, or None when no pod has a sample (the
    controller's "did not receive metrics for any ready pods": the metric is invalid).
    `tolerance`: one for both directions, or (scale-up, scale-down)."""
    up_tol, down_tol = (tolerance, tolerance) if isinstance(tolerance, float | int) \
        else tolerance

    def within(ratio: float) -> bool:
        return 1.0 - down_tol <= ratio <= 1.0 + up_tol

    src = spec.source
    if spec.type == "Object":
        values = [p.value(src) for p in pods if p.ready]
        known = [v for v in values if v is not None]
        if not known:
            return None
        total = sum(known)
        if spec.target_type == "Value":
            ratio = total / spec.target
            if current == 0:
                return _ceil(ratio), total
            if within(ratio):
                return current, total
            ready = sum(1 for p in pods if p.ready)
            return _ceil(ratio * ready), total
        ratio = total / (spec.target * current)
        if within(ratio):
            return current, total
        return _ceil(total / spec.target), total

    # Resource and Pods metrics: per-pod values, averaged over the pods with a sample.
    ignored = [p for p in pods if not p.ready]
    missing = [p for p in pods if p.ready and p.value(src) is None]
    samples = [v for p in pods if p.ready and (v := p.value(src)) is not None]
    if not samples:
        return None
    target = spec.target
    ratio = sum(samples) / len(samples) / target
    observed = sum(samples) / len(samples)
    rebalance = bool(ignored) and ratio > 1.0
    if not rebalance and not missing:
        if within(ratio):
            return current, observed
        return _ceil(ratio * len(samples)), observed
    filled = list(samples)
    if missing:
        filled += [target if ratio < 1.0 else 0.0] * len(missing)
    if rebalance:
        filled += [0.0] * len(ignored)
    new_ratio = sum(filled) / len(filled) / target
    if (within(new_ratio) or (ratio < 1.0 < new_ratio)
            or (ratio > 1.0 > new_ratio)):
        return current, observed
    proposal = _ceil(new_ratio * len(filled))
    if (new_ratio < 1.0 and proposal > current) or (new_ratio > 1.0 and proposal < current):
        return current, observed
    return proposal, observed


class HPA:
    """The controller's state for one HPA: recent recommendations and scale events."""

    def __init__(self, spec: HPASpec) -> None:
        self.spec = spec
        self.recommendations: list[tuple[float, int]] = []
        self.up_events: list[tuple[float, int]] = []
        self.down_events: list[tuple[float, int]] = []
        self.last: dict[str, float] = {}      # metric -> observed at the last sync

    def step(self, now: float, current: int, pods: Sequence[PodSample]) -> HPADecision:
        """One sync at `now` (seconds): `current` replicas (the scale's spec.replicas, starting
        pods included), `pods` their samples. The caller sets the replicas to `desired`."""
        s = self.spec
        if not self.recommendations:
            # As the controller does for a new HPA: the current count is the first
            # recommendation, so a fresh controller does not scale down within its window.
            self.recommendations.append((now, current))
        if current == 0:
            # The controller leaves a target scaled to zero by hand alone.
            return HPADecision(0, 0, 0, "scaled to zero: autoscaling disabled")
        if current > s.max_replicas:
            return self._record(now, current, s.max_replicas, s.max_replicas,
                                "current replicas above maxReplicas", "TooManyReplicas")
        if current < s.min_replicas:
            return self._record(now, current, s.min_replicas, s.min_replicas,
                                "current replicas below minReplicas", "TooFewReplicas")
        proposal = 0
        invalid = 0
        why = ""
        for metric in s.metrics:
            tolerance = (s.scale_up.tolerance if s.scale_up.tolerance is not None
                         else s.tolerance,
                         s.scale_down.tolerance if s.scale_down.tolerance is not None
                         else s.tolerance)
            got = replicas_for_metric(metric, current, pods, tolerance)
            if got is None:
                invalid += 1
                continue
            replicas, observed = got
            self.last[metric.describe()] = observed
            if proposal == 0 or replicas > proposal:
                proposal, why = replicas, metric.describe()
        if invalid == len(s.metrics):
            return HPADecision(current, current, current, "no metrics for any ready pod")
        if invalid and proposal < current:
            # Some metric could not be read: never scale down on the others alone.
            return HPADecision(current, current, proposal,
                               "a metric is missing: not scaling down")
        stabilized = self._stabilize(now, current, proposal)
        desired, limited = self._rate_limit(now, current, stabilized)
        return self._record(now, current, desired, proposal,
                            f"{why} -> {proposal}" + (f", stabilized {stabilized}"
                                                      if stabilized != proposal else ""),
                            limited)

    def _record(self, now: float, current: int, desired: int, proposal: int, reason: str,
                limited: str) -> HPADecision:
        keep = max((p.period_s for r in (self.spec.scale_up, self.spec.scale_down)
                    for p in r.policies), default=0.0)
        self.up_events = [e for e in self.up_events if e[0] > now - keep]
        self.down_events = [e for e in self.down_events if e[0] > now - keep]
        if desired > current:
            self.up_events.append((now, desired - current))
        elif desired < current:
            self.down_events.append((now, current - desired))
        return HPADecision(desired, current, proposal, reason, limited)

    def _stabilize(self, now: float, current: int, proposal: int) -> int:
        up_cut = now - self.spec.scale_up.stabilization_s
        down_cut = now - self.spec.scale_down.stabilization_s
        up = down = proposal
        for t, rec in self.recommendations:
            if t > up_cut:
                up = min(up, rec)
            if t > down_cut:
                down = max(down, rec)
        oldest = min(up_cut, down_cut)
        self.recommendations = [(t, r) for t, r in self.recommendations if t > oldest]
        self.recommendations.append((now, proposal))
        return min(max(current, up), down)

    @staticmethod
    def _changed(events: list[tuple[float, int]], now: float, period_s: float) -> int:
        return sum(change for t, change in events if t > now - period_s)

    def _rate_limit(self, now: float, current: int, desired: int) -> tuple[int, str]:
        s = self.spec
        if desired > current:
            rules = s.scale_up
            limit = current
            if rules.select != "Disabled":
                proposals = []
                for p in rules.policies:
                    start = current - self._changed(self.up_events, now, p.period_s)
                    proposals.append(start + p.value if p.type == "Pods"
                                     else math.ceil(start * (1 + p.value / 100)))
                limit = max(proposals) if rules.select == "Max" else min(proposals)
            limit = max(limit, current)
            allowed, why = ((limit, "ScaleUpLimit") if s.max_replicas > limit
                            else (s.max_replicas, "TooManyReplicas"))
            return (allowed, why) if desired > allowed else (desired, "")
        if desired < current:
            rules = s.scale_down
            limit = current
            if rules.select != "Disabled":
                proposals = []
                for p in rules.policies:
                    start = current + self._changed(self.down_events, now, p.period_s)
                    proposals.append(start - p.value if p.type == "Pods"
                                     else int(start * (1 - p.value / 100)))
                limit = min(proposals) if rules.select == "Max" else max(proposals)
            limit = min(limit, current)
            allowed, why = ((limit, "ScaleDownLimit") if s.min_replicas < limit
                            else (s.min_replicas, "TooFewReplicas"))
            return (allowed, why) if desired < allowed else (desired, "")
        return desired, ""
