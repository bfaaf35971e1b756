"""The arrival schedule: `_core.arrival_count`/`arrival_offsets` and `loadforge/schedule.py`,
table-driven and with Hypothesis properties."""

from __future__ import annotations

import bisect
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from loadforge import _core, schedule
from loadforge.config.plan import Plan, Request, Stage


def integral(r0: float, r1: float, t: float) -> float:
    return (r0 + r1) / 2.0 * t


def assert_count_is_ceiling(count: int, r0: float, r1: float, t: float) -> None:
    """count == ceil(integral), tolerating an integral within 1e-6 above an integer (floating
    point may put an exact 5 at 5.0000000001; that must not gain a sixth arrival)."""
    n = integral(r0, r1, t)
    assert math.ceil(n - 1e-6) <= count <= math.ceil(n)


# ---------------------------------------------------------------------------------------------
# Tables.

COUNTS = [
    # (r0, r1, T, count)
    (10.0, 10.0, 1.0, 10),
    (10.0, 10.0, 0.95, 10),       # 9.5 -> 10 (k = 9 is due at 0.9 s < 0.95 s)
    (10.0, 10.0, 0.9, 9),
    (0.1, 0.1, 30.0, 3),          # 3.0000000000000004 in floating point: still 3
    (0.7, 0.7, 10.0, 7),          # 6.999999999999999: 7
    (3.0, 3.0, 0.1 + 0.2, 1),     # 0.9000000000000001
    (0.0, 10.0, 10.0, 50),        # ramp from zero
    (10.0, 0.0, 10.0, 50),        # ramp down to zero
    (1.0, 100.0, 60.0, 3030),
    (100.0, 1.0, 60.0, 3030),
    (0.0, 0.0, 10.0, 0),
    (5.0, 5.0, 0.0, 0),
]


@pytest.mark.parametrize("r0, r1, t, count", COUNTS)
def test_arrival_count(r0: float, r1: float, t: float, count: int) -> None:
    assert _core.arrival_count(r0, r1, t) == count
    assert len(_core.arrival_offsets(r0, r1, t)) == count


OFFSETS = [
    # (r0, r1, T, offsets)
    (4.0, 4.0, 1.0, [0.0, 0.25, 0.5, 0.75]),
    (2.0, 2.0, 1.5, [0.0, 0.5, 1.0]),
    # Ramp 0 -> 2 over 2 s: integral t^2 / 2, so arrival k at sqrt(2k).
    (0.0, 2.0, 2.0, [0.0, math.sqrt(2.0)]),
    # Ramp 2 -> 0 over 2 s: integral 2t - t^2 / 2 = k, t = 2 - sqrt(4 - 2k).
    (2.0, 0.0, 2.0, [0.0, 2.0 - math.sqrt(2.0)]),
    (0.0, 0.0, 5.0, []),
]


@pytest.mark.parametrize("r0, r1, t, offsets", OFFSETS)
def test_arrival_offsets(r0: float, r1: float, t: float, offsets: list[float]) -> None:
    assert _core.arrival_offsets(r0, r1, t) == pytest.approx(offsets, abs=1e-12)


@pytest.mark.parametrize("start, step, stop, want", [
    (0, 1, -1, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
    (0, 3, -1, [0, 3, 6, 9]),
    (2, 3, -1, [2, 5, 8]),
    (0, 1, 4, [0, 1, 2, 3]),
    (1, 2, 6, [1, 3, 5]),
    (0, 1, 1000, list(range(10))),   # stop past the end clamps to the count
    (5, 1, 5, []),
    (10, 1, -1, []),
    (12, 1, -1, []),
])
def test_arrival_offsets_slices(start: int, step: int, stop: int, want: list[int]) -> None:
    got = _core.arrival_offsets(10.0, 10.0, 1.0, start, step, stop)
    assert got == [k / 10.0 for k in want]


def test_closed_model_stage_has_no_arrivals() -> None:
    stage = Stage("c", 10.0, concurrency=8)
    assert schedule.arrivals(stage) == 0
    assert schedule.cumulative(stage, 5.0) == 0.0


@pytest.mark.parametrize("t, want", [(-1.0, 0.0), (0.0, 0.0), (5.0, 25.0), (10.0, 100.0),
                                     (20.0, 100.0)])
def test_cumulative_clamps_to_the_stage(t: float, want: float) -> None:
    # Ramp 0 -> 20 over 10 s: integral t^2.
    assert schedule.cumulative(Stage("r", 10.0, rate_from=0.0, rate_to=20.0), t) == \
        pytest.approx(want)


def make_plan(*stages: Stage) -> Plan:
    return Plan("p", "http://127.0.0.1:1/", stages, (Request("r"),))


def test_layout() -> None:
    stages = (Stage("warm", 10.0, rate_from=0.0, rate_to=10.0),       # 50
              Stage("closed", 5.0, concurrency=4),                      # 0
              Stage("steady", 2.5, rate_from=8.0, rate_to=8.0),         # 20
              Stage("spike", 1.0, rate_from=0.5, rate_to=0.5))          # 1
    windows = schedule.layout(make_plan(*stages))
    assert [(w.stage, w.index, w.start_s, w.end_s, w.base) for w in windows] == [
        (stages[0], 0, 0.0, 10.0, 0),
        (stages[1], 1, 10.0, 15.0, 50),
        (stages[2], 2, 15.0, 17.5, 50),
        (stages[3], 3, 17.5, 18.5, 70),
    ]
    assert schedule.expected_between(windows, 0.0, 18.5) == pytest.approx(50 + 20 + 0.5)
    assert schedule.expected_between(windows, -5.0, 100.0) == pytest.approx(70.5)
    assert schedule.expected_between(windows, 10.0, 15.0) == 0.0         # closed stage
    assert schedule.expected_between(windows, 5.0, 10.0) == pytest.approx(50 - 12.5)
    assert schedule.expected_between(windows, 9.0, 16.0) == pytest.approx(50 - 40.5 + 8.0)
    assert schedule.expected_between(windows, 3.0, 3.0) == 0.0
    assert schedule.expected_between(windows, 4.0, 2.0) == 0.0


@pytest.mark.parametrize("count, base, workers, want", [
    (10, 0, 3, [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]),
    (10, 1, 3, [[2, 5, 8], [0, 3, 6, 9], [1, 4, 7]]),    # global 1 is local 0 -> worker 1
    (10, 5, 3, [[1, 4, 7], [2, 5, 8], [0, 3, 6, 9]]),
    (2, 7, 4, [[1], [], [], [0]]),
    (0, 3, 2, [[], []]),
    (5, 4, 1, [[0, 1, 2, 3, 4]]),
])
def test_stripe_table(count: int, base: int, workers: int, want: list[list[int]]) -> None:
    assert [list(schedule.stripe(count, base, w, workers)) for w in range(workers)] == want


def mix(*weights: int) -> list[int]:
    return schedule.request_mix(tuple(Request(f"r{i}", weight=w) for i, w in enumerate(weights)))


@pytest.mark.parametrize("weights, cycle", [
    ((1,), [0]),
    ((3,), [0, 0, 0]),
    ((1, 1), [0, 1]),
    ((2, 1), [0, 1, 0]),
    ((5, 1, 1), [0, 0, 1, 0, 2, 0, 0]),     # nginx's example: a a b a c a a
])
def test_request_mix_table(weights: tuple[int, ...], cycle: list[int]) -> None:
    assert mix(*weights) == cycle


def test_request_mix_nine_to_one_is_spread() -> None:
    cycle = mix(9, 1)
    assert len(cycle) == 10 and cycle.count(0) == 9 and cycle.count(1) == 1
    assert cycle[0] != 1 and cycle[-1] != 1       # no run of nine 0s inside the cycle
    cycle = mix(1, 9)
    assert cycle.count(0) == 1 and cycle[0] != 0 and cycle[-1] != 0


# ---------------------------------------------------------------------------------------------
# Properties.

rates = st.floats(min_value=0.0, max_value=2000.0, allow_nan=False, allow_infinity=False)
durations = st.floats(min_value=0.01, max_value=120.0, allow_nan=False, allow_infinity=False)


@st.composite
def open_stages(draw: st.DrawFn) -> Stage:
    t = draw(durations)
    r0 = draw(rates)
    r1 = r0 if draw(st.booleans()) else draw(rates)
    assume(integral(r0, r1, t) <= 20000)           # keep the offset lists small
    return Stage("s", t, rate_from=r0, rate_to=r1)


@settings(max_examples=300, deadline=None)
@given(rates, rates, durations)
def test_count_is_the_integral_rounded_up(r0: float, r1: float, t: float) -> None:
    count = _core.arrival_count(r0, r1, t)
    assert_count_is_ceiling(count, r0, r1, t)
    stage = Stage("s", t, rate_from=r0, rate_to=r1)
    assert schedule.arrivals(stage) == count
    assert schedule.cumulative(stage, t) == pytest.approx(integral(r0, r1, t), rel=1e-9,
                                                          abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(open_stages())
def test_offsets_monotone_from_zero_below_duration(stage: Stage) -> None:
    assert stage.rate_from is not None and stage.rate_to is not None
    offs = _core.arrival_offsets(stage.rate_from, stage.rate_to, stage.duration_s)
    assert len(offs) == schedule.arrivals(stage)
    if not offs:
        return
    assert offs[0] == 0.0
    assert all(a <= b for a, b in zip(offs, offs[1:], strict=False))
    assert offs[-1] < stage.duration_s


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-3, max_value=1e5, allow_nan=False), durations)
def test_steady_offset_k_is_k_over_rate(r: float, t: float) -> None:
    assume(r * t <= 20000)
    offs = _core.arrival_offsets(r, r, t)
    assert offs == [k / r for k in range(len(offs))]


@settings(max_examples=200, deadline=None)
@given(open_stages(), st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1,
                               max_size=10))
def test_offsets_before_t_track_cumulative(stage: Stage, fractions: list[float]) -> None:
    assert stage.rate_from is not None and stage.rate_to is not None
    offs = _core.arrival_offsets(stage.rate_from, stage.rate_to, stage.duration_s)
    for f in fractions:
        t = f * stage.duration_s
        before = bisect.bisect_left(offs, t)
        assert abs(before - schedule.cumulative(stage, t)) <= 1.0 + 1e-6


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 500), st.integers(0, 10**6), st.integers(1, 17))
def test_stripes_partition_the_stage(count: int, base: int, workers: int) -> None:
    stripes = [schedule.stripe(count, base, w, workers) for w in range(workers)]
    seen = [k for s in stripes for k in s]
    assert sorted(seen) == list(range(count))             # disjoint, and cover the stage
    for w, s in enumerate(stripes):
        assert all((base + k) % workers == w for k in s)  # the global index decides


@settings(max_examples=100, deadline=None)
@given(st.lists(open_stages(), min_size=1, max_size=4), st.integers(1, 8))
def test_stripes_across_a_plan_follow_the_global_index(stages: list[Stage],
                                                       workers: int) -> None:
    windows = schedule.layout(make_plan(*stages))
    total = sum(schedule.arrivals(s) for s in stages)
    owner: dict[int, int] = {}
    for w in windows:
        count = schedule.arrivals(w.stage)
        for worker in range(workers):
            for k in schedule.stripe(count, w.base, worker, workers):
                assert w.base + k not in owner
                owner[w.base + k] = worker
    assert sorted(owner) == list(range(total))
    assert all(owner[i] == i % workers for i in owner)


@settings(max_examples=100, deadline=None)
@given(open_stages(), st.integers(1, 8))
def test_striped_offsets_are_the_stage_offsets(stage: Stage, workers: int) -> None:
    assert stage.rate_from is not None and stage.rate_to is not None
    r0, r1, t = stage.rate_from, stage.rate_to, stage.duration_s
    full = _core.arrival_offsets(r0, r1, t)
    merged: list[float] = []
    for w in range(workers):
        s = schedule.stripe(len(full), 0, w, workers)
        part = _core.arrival_offsets(r0, r1, t, s.start, s.step)
        assert part == full[s.start::s.step]
        merged += part
    assert sorted(merged) == full


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=6))
def test_request_mix_exact_counts(weights: list[int]) -> None:
    cycle = mix(*weights)
    assert len(cycle) == sum(weights)
    assert [cycle.count(i) for i in range(len(weights))] == weights


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 30))
def test_request_mix_heavy_light_is_spread(heavy: int) -> None:
    for weights, light in (((heavy, 1), 1), ((1, heavy), 0)):
        cycle = mix(*weights)
        assert cycle.count(light) == 1
        # The single light request is not at either end, so the heavy one never runs
        # `heavy` in a row within the cycle.
        assert cycle[0] != light and cycle[-1] != light


# ---------------------------------------------------------------------------------------------
# How many workers and warm connections a plan gets (run/session.py).

def _plan(*stages: Stage, flows: str | None = None) -> Plan:
    return Plan("p", "http://127.0.0.1:9/", stages, (Request("r"),), flows=flows)


@pytest.mark.parametrize(("stages", "peak", "workers"), [
    ((Stage("s", 1.0, 100.0, 100.0),), 100.0, 1),
    ((Stage("s", 1.0, 1000.0, 1000.0),), 1000.0, 1),
    ((Stage("s", 1.0, 1000.5, 1000.5),), 1000.5, 2),
    ((Stage("a", 3.0, 0.0, 2500.0), Stage("b", 1.0, 300.0, 300.0)), 2500.0, 3),
    ((Stage("s", 1.0, 90000.0, 90000.0),), 90000.0, 8),        # at most one per core
    ((Stage("s", 1.0, 0.0, 0.0),), 0.0, 1),
    ((Stage("s", 1.0, concurrency=4),), None, 8),              # closed model: one per core
    ((Stage("a", 1.0, 10.0, 10.0), Stage("b", 1.0, concurrency=4)), 10.0, 8),
])
def test_auto_workers_follow_the_peak_rate_up_to_one_per_core(monkeypatch, stages, peak,
                                                               workers):
    from loadforge.run import session

    monkeypatch.setattr(session.os, "cpu_count", lambda: 8)
    plan = _plan(*stages)
    assert schedule.peak_rate(plan) == peak
    assert session.auto_workers(plan) == workers


def test_auto_workers_give_scripted_flows_one_per_core(monkeypatch):
    from loadforge.run import session

    monkeypatch.setattr(session.os, "cpu_count", lambda: 8)
    assert session.auto_workers(_plan(Stage("s", 1.0, 10.0, 10.0), flows="f.py")) == 8
