"""Rate curves and the global arrival schedule.

An open-model stage's rate goes linearly from `rate_from` to `rate_to` (equal for a steady
stage or a spike). Arrival k of the stage is due when the integral of the rate reaches k; the
engine computes those times in C (`_core.arrival_offsets` exposes the same function). Arrival i
of the run-wide sequence belongs to worker i mod W, so every worker lays the same schedule and
the stripes are disjoint and cover it.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadforge import _core
from loadforge.config.plan import Plan, Request, Stage


def arrivals(stage: Stage) -> int:
    """Arrivals of an open-model stage, all workers together (0 for a closed-model stage)."""
    if not stage.open_model:
        return 0
    return int(_core.arrival_count(stage.rate_from or 0.0, stage.rate_to or 0.0,
                                   stage.duration_s))


def peak_rate(plan: Plan) -> float | None:
    """The highest rate of the plan's open-model stages (requests per second, all workers
    together); None without open-model stages."""
    return max((max(s.rate_from or 0.0, s.rate_to or 0.0) for s in plan.stages
                if s.open_model), default=None)


def cumulative(stage: Stage, t: float) -> float:
    """The integral of the stage's rate from its start to t seconds into it."""
    if not stage.open_model:
        return 0.0
    t = min(max(t, 0.0), stage.duration_s)
    assert stage.rate_from is not None and stage.rate_to is not None
    slope = (stage.rate_to - stage.rate_from) / stage.duration_s
    return stage.rate_from * t + slope * t * t / 2.0


@dataclass(frozen=True)
class Window:
    """Where a stage sits in the run."""

    stage: Stage
    index: int
    start_s: float
    end_s: float
    base: int          # run-wide index of the stage's first arrival


def layout(plan: Plan) -> list[Window]:
    out, start, base = [], 0.0, 0
    for i, stage in enumerate(plan.stages):
        out.append(Window(stage, i, start, start + stage.duration_s, base))
        start += stage.duration_s
        base += arrivals(stage)
    return out


def expected_between(windows: list[Window], t0: float, t1: float) -> float:
    """Arrivals the open-model stages schedule between t0 and t1 seconds into the run."""
    total = 0.0
    for w in windows:
        lo, hi = max(t0, w.start_s), min(t1, w.end_s)
        if hi > lo:
            total += cumulative(w.stage, hi - w.start_s) - cumulative(w.stage, lo - w.start_s)
    return total


def stripe(count: int, base: int, worker: int, workers: int) -> range:
    """Stage-local arrival indices that belong to `worker`: base + k = worker (mod workers)."""
    return range((worker - base) % workers, count, workers)


def request_mix(requests: tuple[Request, ...]) -> list[int]:
    """One cycle of smooth weighted round robin (as nginx's upstream): weights 9 and 1 give
    nine of one and one of the other, spread out rather than in runs."""
    weights = [r.weight for r in requests]
    current = [0] * len(weights)
    total = sum(weights)
    cycle = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=current.__getitem__)
        current[best] -= total
        cycle.append(best)
    return cycle
