"""Validation of a profile's `[sandbox]` table into the SandboxConfig the cluster runs from.

A SandboxConfig (dataclasses below) has every key, durations in seconds (floats) and one
weight per initial backend. config/profile.py builds it once into the Plan; start_sandbox
hands it to the subprocess as JSON (`to_json`/`from_json`), so the child runs exactly what the
parent accepted.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from loadforge.errors import ProfileError
from loadforge.units import parse_duration

ALGORITHMS = ("round_robin", "weighted_round_robin", "least_connections", "random", "ip_hash")
DISTRIBUTIONS = ("constant", "exponential", "lognormal")
METRICS = ("utilization", "inflight")
BALANCES = ("connection", "request")

# Limits that keep a mistyped profile from starting thousands of in-process backends or a
# weighted round-robin cycle of millions of slots (the cycle is precomputed, see cluster.py).
MAX_BACKENDS = 256
MAX_WEIGHT = 1000
# HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS is a 31-bit field; beyond a few thousand streams a
# connection only queues more work in one process, so the cap is a sanity bound.
MAX_STREAMS = 100_000

_TOP_KEYS = ("algorithm", "backends", "weights", "backend", "health", "autoscale", "balance",
             "max_concurrent_streams")
_BACKEND_KEYS = ("service_time", "distribution", "sigma", "concurrency", "queue")
_HEALTH_KEYS = ("enabled", "interval", "timeout", "unhealthy_threshold", "healthy_threshold")
_AUTOSCALE_KEYS = (
    "enabled", "metric", "threshold", "for", "step", "cooldown", "min", "max",
    "startup_delay", "evaluation_interval", "scale_in", "hpa", "sync_period",
)
# With `hpa`, the HorizontalPodAutoscaler decides; the step rule's keys would be ignored.
_STEP_RULE_KEYS = ("metric", "threshold", "for", "step", "cooldown", "min", "max", "scale_in",
                   "evaluation_interval")
_SCALE_IN_KEYS = ("enabled", "threshold", "for", "step")

DEFAULT_BACKENDS = 4

def _check_keys(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ProfileError(
                f"{where}.{key} is not a known key (expected one of: {', '.join(allowed)})"
            )


def _table(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProfileError(f"{where} must be a table, got {value!r}")
    return value


def _int(value: object, where: str, minimum: int, maximum: int | None = None) -> int:
    # TOML booleans are Python ints; `concurrency = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProfileError(f"{where} must be an integer, got {value!r}")
    if value < minimum:
        raise ProfileError(f"{where} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ProfileError(f"{where} must be <= {maximum}, got {value}")
    return value


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProfileError(f"{where} must be a number, got {value!r}")
    return float(value)


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ProfileError(f"{where} must be true or false, got {value!r}")
    return value


def _choice(value: object, choices: tuple[str, ...], where: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ProfileError(f"{where} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _duration(value: object, where: str, positive: bool = False) -> float:
    return parse_duration(value, where, allow_zero=not positive)


@dataclass(frozen=True)
class BackendModel:
    """What one backend does with a request: a service time drawn from `distribution`, at
    most `concurrency` in service, at most `queue` waiting."""

    service_time_s: float = 0.0
    distribution: str = "constant"
    sigma: float = 0.5                 # lognormal only
    concurrency: int = 64
    queue: int = 1024


@dataclass(frozen=True)
class HealthCheck:
    enabled: bool = True
    interval_s: float = 1.0
    timeout_s: float = 0.5
    unhealthy_threshold: int = 2
    healthy_threshold: int = 2


@dataclass(frozen=True)
class ScaleIn:
    enabled: bool
    threshold: float
    for_s: float
    step: int


@dataclass(frozen=True)
class Autoscale:
    """[sandbox.autoscale]: sandbox/policy.py's AutoscalePolicy is built from it."""

    enabled: bool
    metric: str
    threshold: float
    for_s: float
    step: int
    cooldown_s: float
    min: int
    max: int
    startup_delay_s: float
    evaluation_interval_s: float
    scale_in: ScaleIn
    # `hpa = "hpa.yaml"`: the manifest validated (sandbox/hpa.py's HPASpec.to_dict()), and the
    # path as written; None where the file was not read (a past run's profile).
    hpa: dict[str, Any] | None = None
    hpa_path: str = ""


@dataclass(frozen=True)
class SandboxConfig:
    """A validated `[sandbox]` table; validating it again returns it unchanged."""

    algorithm: str
    backends: int
    weights: tuple[int, ...]
    backend: BackendModel
    health: HealthCheck
    autoscale: Autoscale | None
    balance: str = "connection"        # how HTTP/2 connections are balanced
    max_concurrent_streams: int = 100

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SandboxConfig:
        """The inverse of to_json (a config the parent validated: not checked again)."""
        d = json.loads(text)
        a = d["autoscale"]
        autoscale = None if a is None else Autoscale(**{**a, "scale_in": ScaleIn(**a["scale_in"])})
        return cls(**{**d, "weights": tuple(d["weights"]), "backend": BackendModel(**d["backend"]),
                      "health": HealthCheck(**d["health"]), "autoscale": autoscale})


def validate_sandbox_config(cfg: dict[str, Any] | SandboxConfig | None,
                            where: str = "sandbox", base_dir: str | None = None,
                            read_files: bool = True) -> SandboxConfig:
    """Validate a raw `[sandbox]` table; return it normalized (see the package docstring).

    Raises ProfileError naming the field, e.g. `sandbox.autoscale.min must be <= max (got 5 > 3)`.
    `autoscale.hpa` is read relative to `base_dir` (the profile's folder; default the current
    one), unless `read_files` is false (a past run's profile, whose files may be gone).
    A SandboxConfig is returned as it is, so that callers may pass either form on to
    start_sandbox or run_foreground.
    """
    if isinstance(cfg, SandboxConfig):
        return cfg
    top = _table(cfg, where)
    _check_keys(top, _TOP_KEYS, where)

    algorithm = _choice(top.get("algorithm", "round_robin"), ALGORITHMS, f"{where}.algorithm")
    backend = _validate_backend(_table(top.get("backend"), f"{where}.backend"), f"{where}.backend")
    health = _validate_health(_table(top.get("health"), f"{where}.health"), f"{where}.health")
    autoscale = None
    if "autoscale" in top:
        raw = _table(top["autoscale"], f"{where}.autoscale")
        if "hpa" in raw:
            autoscale = _validate_hpa(raw, f"{where}.autoscale", base_dir, read_files,
                                      backend.concurrency)
        else:
            autoscale = _validate_autoscale(raw, f"{where}.autoscale")

    if "backends" in top:
        backends = _int(top["backends"], f"{where}.backends", 1, MAX_BACKENDS)
        if autoscale is not None and not autoscale.min <= backends <= autoscale.max:
            raise ProfileError(
                f"{where}.backends must be between autoscale.min and autoscale.max "
                f"(got {backends}, min {autoscale.min}, max {autoscale.max})"
            )
    elif autoscale is not None:
        backends = min(max(DEFAULT_BACKENDS, autoscale.min), autoscale.max)
    else:
        backends = DEFAULT_BACKENDS

    weights = [1] * backends
    if "weights" in top:
        if algorithm != "weighted_round_robin":
            raise ProfileError(
                f"{where}.weights is only used with algorithm = \"weighted_round_robin\" "
                f"(algorithm is {algorithm!r})"
            )
        raw = top["weights"]
        if not isinstance(raw, list):
            raise ProfileError(f"{where}.weights must be a list of integers, got {raw!r}")
        if len(raw) != backends:
            raise ProfileError(
                f"{where}.weights must have one weight per backend "
                f"(got {len(raw)} weights for {backends} backends)"
            )
        weights = [_int(w, f"{where}.weights[{i}]", 1, MAX_WEIGHT) for i, w in enumerate(raw)]

    return SandboxConfig(algorithm, backends, tuple(weights), backend, health, autoscale,
                         **_validate_http2(top, where))


def _validate_http2(top: dict[str, Any], where: str) -> dict[str, Any]:
    """The HTTP/2 listener's keys: how its multiplexed connections are balanced, and how many
    streams a client may open at once on one of them."""
    return {
        "balance": _choice(top.get("balance", "connection"), BALANCES, f"{where}.balance"),
        "max_concurrent_streams": _int(top.get("max_concurrent_streams", 100),
                                       f"{where}.max_concurrent_streams", 1, MAX_STREAMS),
    }


def _validate_backend(table: dict[str, Any], where: str) -> BackendModel:
    _check_keys(table, _BACKEND_KEYS, where)
    distribution = _choice(
        table.get("distribution", "constant"), DISTRIBUTIONS, f"{where}.distribution"
    )
    sigma = 0.5
    if "sigma" in table:
        if distribution != "lognormal":
            raise ProfileError(
                f"{where}.sigma is only used with distribution = \"lognormal\" "
                f"(distribution is {distribution!r})"
            )
        sigma = _number(table["sigma"], f"{where}.sigma")
        if sigma <= 0:
            raise ProfileError(f"{where}.sigma must be > 0, got {table['sigma']!r}")
    return BackendModel(
        service_time_s=_duration(table.get("service_time", "0s"), f"{where}.service_time"),
        distribution=distribution,
        sigma=sigma,
        concurrency=_int(table.get("concurrency", 64), f"{where}.concurrency", 1),
        queue=_int(table.get("queue", 1024), f"{where}.queue", 0),
    )


def _validate_health(table: dict[str, Any], where: str) -> HealthCheck:
    _check_keys(table, _HEALTH_KEYS, where)
    interval = _duration(table.get("interval", "1s"), f"{where}.interval", positive=True)
    timeout = _duration(table.get("timeout", "500ms"), f"{where}.timeout", positive=True)
    if timeout > interval:
        raise ProfileError(
            f"{where}.timeout must be <= interval (got {table.get('timeout')!r} > "
            f"{table.get('interval', '1s')!r})"
        )
    return HealthCheck(
        enabled=_bool(table.get("enabled", True), f"{where}.enabled"),
        interval_s=interval,
        timeout_s=timeout,
        unhealthy_threshold=_int(
            table.get("unhealthy_threshold", 2), f"{where}.unhealthy_threshold", 1
        ),
        healthy_threshold=_int(
            table.get("healthy_threshold", 2), f"{where}.healthy_threshold", 1
        ),
    )


def _validate_hpa(table: dict[str, Any], where: str, base_dir: str | None, read_files: bool,
                  concurrency: int) -> Autoscale:
    """`hpa = "hpa.yaml"`: a Kubernetes HorizontalPodAutoscaler decides, every `sync_period`
    (15 s, the controller's default); min and max are the manifest's."""
    import os

    from loadforge.config.hpa import load_hpa

    _check_keys(table, _AUTOSCALE_KEYS, where)
    both = [k for k in _STEP_RULE_KEYS if k in table]
    if both:
        raise ProfileError(f"{where}.hpa and {where}.{both[0]} cannot both be given: the "
                           "HorizontalPodAutoscaler's manifest sets its own targets and limits")
    path = table["hpa"]
    if not isinstance(path, str) or not path:
        raise ProfileError(f"{where}.hpa must be the path of an autoscaling/v2 "
                           f"HorizontalPodAutoscaler manifest (YAML), got {path!r}")
    sync = _duration(table.get("sync_period", "15s"), f"{where}.sync_period", positive=True)
    spec = None
    minimum, maximum = 1, MAX_BACKENDS
    if read_files:
        full = os.path.join(base_dir if base_dir is not None else os.getcwd(), path)
        hpa = load_hpa(full, f"{where}.hpa", concurrency)
        if hpa.max_replicas > MAX_BACKENDS:
            raise ProfileError(f"{where}.hpa: maxReplicas must be <= {MAX_BACKENDS} in the "
                               f"sandbox, got {hpa.max_replicas}")
        from dataclasses import replace
        spec = replace(hpa, sync_period_s=sync).to_dict()
        minimum, maximum = hpa.min_replicas, hpa.max_replicas
    return Autoscale(
        enabled=_bool(table.get("enabled", True), f"{where}.enabled"),
        metric="hpa", threshold=0.0, for_s=0.0, step=1, cooldown_s=0.0,
        min=minimum, max=maximum,
        startup_delay_s=_duration(table.get("startup_delay", "5s"), f"{where}.startup_delay"),
        evaluation_interval_s=sync,
        scale_in=ScaleIn(False, 0.0, 0.0, 1),
        hpa=spec, hpa_path=path,
    )


def _validate_autoscale(table: dict[str, Any], where: str) -> Autoscale:
    _check_keys(table, _AUTOSCALE_KEYS, where)
    if "sync_period" in table:
        raise ProfileError(f"{where}.sync_period is only used with hpa (the step rule has "
                           "evaluation_interval)")
    metric = _choice(table.get("metric", "utilization"), METRICS, f"{where}.metric")
    threshold = _number(table.get("threshold", 0.8), f"{where}.threshold")
    if threshold <= 0 or (metric == "utilization" and threshold > 1):
        expected = "in (0, 1]" if metric == "utilization" else "> 0"
        raise ProfileError(f"{where}.threshold must be {expected} for metric {metric!r}, "
                           f"got {table.get('threshold')!r}")
    minimum = _int(table.get("min", 1), f"{where}.min", 1, MAX_BACKENDS)
    maximum = _int(table.get("max", 10), f"{where}.max", 1, MAX_BACKENDS)
    if minimum > maximum:
        raise ProfileError(f"{where}.min must be <= max (got {minimum} > {maximum})")
    cooldown = _duration(table.get("cooldown", "30s"), f"{where}.cooldown")

    scale_in_raw = _table(table.get("scale_in"), f"{where}.scale_in")
    _check_keys(scale_in_raw, _SCALE_IN_KEYS, f"{where}.scale_in")
    in_threshold = _number(scale_in_raw.get("threshold", threshold / 2),
                           f"{where}.scale_in.threshold")
    if not 0 <= in_threshold < threshold:
        raise ProfileError(
            f"{where}.scale_in.threshold must be >= 0 and < threshold "
            f"(got {in_threshold} with threshold {threshold})"
        )
    scale_in = ScaleIn(
        enabled=_bool(scale_in_raw.get("enabled", True), f"{where}.scale_in.enabled"),
        threshold=in_threshold,
        for_s=_duration(scale_in_raw.get("for", "30s"), f"{where}.scale_in.for"),
        step=_int(scale_in_raw.get("step", 1), f"{where}.scale_in.step", 1),
    )
    return Autoscale(
        enabled=_bool(table.get("enabled", True), f"{where}.enabled"),
        metric=metric,
        threshold=threshold,
        for_s=_duration(table.get("for", "30s"), f"{where}.for"),
        step=_int(table.get("step", 1), f"{where}.step", 1),
        cooldown_s=cooldown,
        min=minimum,
        max=maximum,
        startup_delay_s=_duration(table.get("startup_delay", "5s"), f"{where}.startup_delay"),
        evaluation_interval_s=_duration(
            table.get("evaluation_interval", "1s"), f"{where}.evaluation_interval", positive=True
        ),
        scale_in=scale_in,
    )
