"""The autoscaler's policy, as a pure function of time, the metric and the pool size.

`Autoscaler.step(now, metric, active)` holds no loop, no sockets and no backends: it remembers
only when the metric crossed its thresholds and when it last acted, and answers what to do. The
sandbox's cluster calls it once per evaluation window with the measured metric; a dry-run
simulator can call it with a modelled one and get the same decisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from loadforge.config.sandbox import ScaleIn

if TYPE_CHECKING:
    from loadforge.config.sandbox import Autoscale


@dataclass(frozen=True)
class AutoscalePolicy:
    """A validated `[sandbox.autoscale]` table (see loadforge.sandbox), durations in seconds."""

    enabled: bool
    metric: str                  # "utilization" or "inflight"
    threshold: float
    for_s: float
    step: int
    cooldown_s: float
    min: int
    max: int
    startup_delay_s: float
    evaluation_interval_s: float
    scale_in: ScaleIn

    @classmethod
    def from_config(cls, a: Autoscale) -> AutoscalePolicy:
        """From the [sandbox.autoscale] config/sandbox.py validated."""
        s = a.scale_in
        return cls(
            enabled=a.enabled, metric=a.metric, threshold=a.threshold, for_s=a.for_s,
            step=a.step, cooldown_s=a.cooldown_s, min=a.min, max=a.max,
            startup_delay_s=a.startup_delay_s, evaluation_interval_s=a.evaluation_interval_s,
            scale_in=ScaleIn(s.enabled, s.threshold, s.for_s, s.step))


@dataclass(frozen=True)
class Decision:
    action: Literal["hold", "out", "in"]
    count: int = 0               # backends to add (out) or drain (in)
    reason: str = ""


HOLD = Decision("hold")


class Autoscaler:
    """Threshold-for-duration scaling with a shared cooldown, like a Kubernetes HPA's
    stabilization window or an AWS step-scaling alarm with `for` evaluation periods.

    Scale out when the metric has stayed above `threshold` for `for_s`; scale in when it has
    stayed below `scale_in.threshold` for `scale_in.for_s`; after either, wait `cooldown_s`.
    A decision never takes the active count outside [min, max].
    """

    def __init__(self, policy: AutoscalePolicy) -> None:
        self.policy = policy
        self.above_since: float | None = None
        self.below_since: float | None = None
        self.last_scale = -math.inf

    def step(self, now: float, metric: float, active: int) -> Decision:
        """What to do at time `now` (seconds, any monotonic origin), given the metric over the
        window that just ended and the backends that count towards min/max."""
        p = self.policy
        if not p.enabled:
            return HOLD
        cooled = now - self.last_scale >= p.cooldown_s
        if metric > p.threshold:
            self.below_since = None
            if self.above_since is None:
                self.above_since = now
            if now - self.above_since >= p.for_s and cooled and active < p.max:
                self.last_scale = now
                self.above_since = None
                return Decision("out", min(p.step, p.max - active),
                                f"{p.metric} {metric:.2f} > {p.threshold}")
            return HOLD
        self.above_since = None
        s = p.scale_in
        if not s.enabled or metric >= s.threshold:
            self.below_since = None
            return HOLD
        if self.below_since is None:
            self.below_since = now
        if now - self.below_since >= s.for_s and cooled and active > p.min:
            self.last_scale = now
            self.below_since = None
            return Decision("in", min(s.step, active - p.min),
                            f"{p.metric} {metric:.2f} < {s.threshold}")
        return HOLD
