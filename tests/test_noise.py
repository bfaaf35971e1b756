"""The statistics behind noise-aware comparisons: exact U test, exact merges, bootstrap CIs."""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from loadforge.analysis.noise import Interval, bootstrap_change, figures, mann_whitney_p
from loadforge.engine import histogram


def test_u_test_exact_values():
    # Complete separation of 5 and 5: 2 of the C(10, 5) = 252 splits are as extreme.
    assert math.isclose(mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]), 2 / 252)
    assert mann_whitney_p([1, 2, 3], [1, 2, 3]) == 1.0
    assert mann_whitney_p([], [1.0]) == 1.0
    # Two runs a side can never be significant: the best is 2 / C(4, 2).
    assert math.isclose(mann_whitney_p([1, 2], [3, 4]), 1 / 3)


def test_u_test_approximation_agrees_with_the_exact_test_near_its_limit():
    rng = random.Random(2)
    a = [rng.gauss(0, 1) for _ in range(9)]
    b = [rng.gauss(0.8, 1) for _ in range(9)]          # C(18, 9) = 48,620: approximated
    assert 0 < mann_whitney_p(a, b) < 1
    import loadforge.analysis.noise as noise
    exact_limit = noise.EXACT_LIMIT
    try:
        noise.EXACT_LIMIT = 10**6
        exact = mann_whitney_p(a, b)
    finally:
        noise.EXACT_LIMIT = exact_limit
    assert abs(mann_whitney_p(a, b) - exact) < 0.01


@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=6),
       st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=6))
def test_u_test_is_a_probability_and_symmetric(a, b):
    p = mann_whitney_p(a, b)
    assert 0 < p <= 1
    assert math.isclose(p, mann_whitney_p(b, a))


def interval(rng: random.Random, median_us: float, n: int = 200, errors: int = 0) -> Interval:
    h = histogram.new_histogram()
    for _ in range(n):
        h.record_value(max(1, int(median_us * rng.lognormvariate(0, 0.3))))
    iv = Interval(seconds=1.0, requests=n, sent=n + errors, errors=errors)
    iv.add_latency(h)
    return iv


def run(rng: random.Random, median_us: float, seconds: int = 10) -> list[Interval]:
    # Each run drifts a little as a whole, as real runs do from one to the next.
    level = median_us * rng.lognormvariate(0, 0.02)
    return [interval(rng, level) for _ in range(seconds)]


def test_figures_are_the_exact_merge():
    rng = random.Random(4)
    intervals = run(rng, 1000, 5)
    merged = histogram.new_histogram()
    for iv in intervals:
        h = histogram.new_histogram()
        for i, c in zip(iv.indices, iv.counts, strict=True):
            h.record_value(h.get_value_from_index(i), c)
        histogram.merge(merged, h)
    expected = histogram.stats(merged)
    got = figures(intervals)
    for key in ("p50", "p90", "p99", "p999", "max", "mean"):
        assert got[key] == expected[key], key
    assert got["achieved_rps"] == 200.0 and got["error_rate"] == 0.0


def test_bootstrap_interval_covers_no_change_and_finds_a_real_one():
    rng = random.Random(5)
    base = [run(rng, 1000) for _ in range(5)]
    same = [run(rng, 1000) for _ in range(5)]
    slower = [run(rng, 1200) for _ in range(5)]
    ci = bootstrap_change(base, same, ("p50", "p99"), resamples=100)
    for lo_hi in ci.values():
        assert lo_hi is not None and lo_hi[0] < 0 < lo_hi[1]
    ci = bootstrap_change(base, slower, ("p50",), resamples=100)
    lo, hi = ci["p50"]  # type: ignore[misc]
    assert 0.1 < lo < 0.2 < hi < 0.3


def test_hierarchical_test_decides_with_three_runs_a_side():
    """Where the U test over three runs a side cannot go below 0.1, the two-level bootstrap
    finds a 20 % shift (p at its floor, 2 / (resamples + 1)) and not a null one."""
    from loadforge.analysis.noise import hierarchical_test, min_p_bootstrap, min_p_u, runs_needed_u

    assert math.isclose(min_p_u(3, 3), 0.1) and runs_needed_u(0.05) == 4
    assert math.isclose(min_p_bootstrap(1000), 2 / 1001)
    rng = random.Random(7)
    base = [run(rng, 1000) for _ in range(3)]
    same = [run(rng, 1000) for _ in range(3)]
    slower = [run(rng, 1200) for _ in range(3)]
    found = hierarchical_test(base, slower, ("p50", "error_rate"), resamples=200)
    assert math.isclose(found["p50"]["p"], 2 / 201)
    lo, hi = found["p50"]["ci"]
    assert 0.1 < lo < 0.2 < hi < 0.3
    # error_rate: an absolute change (no errors either side: exactly zero, p = 1)
    assert found["error_rate"]["ci"] == (0.0, 0.0) and found["error_rate"]["p"] == 1.0
    # Same level: each run drifts ~2 % as a whole, so two groups of three can truly differ by
    # a few percent, and with thousands of requests a run the bootstrap may call that
    # significant (here p50: +1..+7 %). A gate's limit (+10 %) is what keeps it from failing.
    null = hierarchical_test(base, same, ("p50", "p99"), resamples=200)
    for judged in null.values():
        lo, hi = judged["ci"]
        assert -0.1 < lo < hi < 0.15
