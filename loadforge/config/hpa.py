"""The HorizontalPodAutoscaler manifest (`autoscaling/v2` YAML) read and validated into an
`HPASpec`: metrics, min/max replicas, behavior with the Kubernetes defaults. The policy that
acts on it is sandbox/hpa.py; this half lives in config/ so that validating a profile's
`[sandbox.autoscale] hpa` reads it without importing the sandbox."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
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
