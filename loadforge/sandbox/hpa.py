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
from collections.abc import Sequence
from dataclasses import dataclass

from loadforge.config.hpa import HPASpec, MetricSpec


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
