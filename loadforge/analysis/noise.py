"""How sure a difference between two groups of runs is: a p-value and a confidence interval.

Two identical back-to-back runs against nginx differed in p99 by +17 % and +32 % on this
project's VM: a gate on one run a side cries wolf. With several runs a side,

- **significance and the confidence interval** come from a two-level (hierarchical)
  bootstrap that respects the runs' structure: runs resampled with replacement, and within
  each run, blocks of consecutive intervals (a moving block bootstrap, which keeps the
  autocorrelation of a run's seconds), merged exactly into one histogram per side and read
  with the same percentile walk as every other figure. The interval is the bootstrap
  distribution's 2.5th..97.5th percentiles of the relative change; the p-value is twice the
  share of resamples on the far side of zero (the percentile test that inverts that interval),
  so its smallest value is 2 / (resamples + 1), whatever the number of runs;
- **the Mann-Whitney U test over the runs' figures** (as Go's benchstat and google/benchmark's
  compare.py do) is reported beside it: it assumes nothing about the distribution, but with
  n runs a side its smallest two-sided p is 2 / C(2n, n) (0.1 at three runs a side), so alone
  it cannot decide anything below four runs a side. That is why the gate uses the bootstrap.

Everything is seeded: the same files give the same answer.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations, compress
from typing import cast

from loadforge.engine import histogram

# Figures the bootstrap can resample, as in compare.FIGURES.
LATENCY = ("p50", "p90", "p99", "p999", "max", "mean")
METRICS = (*LATENCY, "error_rate", "achieved_rps")
RATIOS = ("error_rate",)       # changed in absolute terms (a fraction), not relative to the base
EXACT_LIMIT = 20_000          # splits enumerated for an exact U test; beyond, the approximation


@dataclass
class Interval:
    """One interval of one stage of one run, as the bootstrap needs it."""

    seconds: float
    requests: int = 0              # responses of any status
    sent: int = 0                  # responses + transport failures
    errors: int = 0
    indices: list[int] = field(default_factory=list)   # nonzero latency buckets (hdrh index)
    counts: list[int] = field(default_factory=list)

    def add_latency(self, h: object) -> None:
        """Add a decoded HdrHistogram's counts (sparse: only its nonzero buckets)."""
        dense = memoryview(h.counts).cast("B").cast("Q")  # type: ignore[attr-defined]
        nonzero = list(compress(range(len(dense)), dense))
        self.indices += nonzero
        self.counts += [dense[i] for i in nonzero]


def figures(intervals: Sequence[Interval]) -> dict[str, float]:
    """Every figure of METRICS over these intervals, merged exactly."""
    dense = array("Q", bytes(8 * histogram.COUNTS_LEN))
    requests = sent = errors = 0
    seconds = 0.0
    for iv in intervals:
        for i, c in zip(iv.indices, iv.counts, strict=True):
            dense[i] += c
        requests += iv.requests
        sent += iv.sent
        errors += iv.errors
        seconds += iv.seconds
    out = histogram.stats_of_counts(dense)
    out["error_rate"] = errors / sent if sent else 0.0
    out["achieved_rps"] = requests / seconds if seconds > 0 else 0.0
    return out


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test of a against b (1.0 if either is empty)."""
    m, n = len(a), len(b)
    if not m or not n:
        return 1.0
    pooled = list(a) + list(b)
    ranks = _ranks(pooled)
    total = m * (m + n + 1) / 2            # E[rank sum of a] under H0
    observed = abs(sum(ranks[:m]) - total)
    if math.comb(m + n, m) <= EXACT_LIMIT:
        # Exact: every way to pick which m of the pooled values were "a", ties kept as ranked.
        hits = splits = 0
        for chosen in combinations(ranks, m):
            splits += 1
            if abs(sum(chosen) - total) >= observed - 1e-9:
                hits += 1
        return hits / splits
    ties = _tie_term(pooled)
    variance = m * n / 12 * ((m + n + 1) - ties / ((m + n) * (m + n - 1)))
    if variance <= 0:
        return 1.0
    z = (observed - 0.5) / math.sqrt(variance)       # continuity correction
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1         # mid-rank of a tie
        i = j + 1
    return ranks


def _tie_term(values: list[float]) -> float:
    counts: dict[float, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return float(sum(t ** 3 - t for t in counts.values()))


def _block_resample(rng: random.Random, intervals: Sequence[Interval]) -> list[Interval]:
    n = len(intervals)
    if n <= 1:
        return list(intervals)
    length = max(1, round(n ** (1 / 3)))           # the usual n^(1/3) block length
    out: list[Interval] = []
    while len(out) < n:
        start = rng.randrange(n - length + 1)
        out += intervals[start:start + length]
    return out[:n]


def _resample(rng: random.Random, runs: Sequence[Sequence[Interval]]) -> dict[str, float]:
    chosen: list[Interval] = []
    for _ in runs:
        chosen += _block_resample(rng, runs[rng.randrange(len(runs))])
    return figures(chosen)


def min_p_u(m: int, n: int) -> float:
    """The smallest two-sided p the exact U test can reach with m and n runs."""
    return 1.0 if not m or not n else min(1.0, 2 / math.comb(m + n, m))


def runs_needed_u(alpha: float) -> int:
    """Runs a side the U test needs before its smallest p is below alpha."""
    n = 1
    while min_p_u(n, n) >= alpha:
        n += 1
    return n


def min_p_bootstrap(resamples: int) -> float:
    """The smallest p of hierarchical_test with this many resamples."""
    return min(1.0, 2 / (resamples + 1))


def hierarchical_test(base: Sequence[Sequence[Interval]], new: Sequence[Sequence[Interval]],
                      metrics: Sequence[str] = METRICS, resamples: int = 1000,
                      confidence: float = 0.95, seed: int = 0
                      ) -> dict[str, dict[str, float | tuple[float, float] | None]]:
    """Per metric, {"p", "ci"}: the two-level bootstrap's p-value of "no change" and the
    interval of (new - base) / base (of new - base for RATIOS, a fraction). Both None where the baseline figure is 0 in most
    resamples (a relative change of nothing)."""
    changes = _bootstrap(base, new, metrics, resamples, seed)
    tail = (1 - confidence) / 2
    out: dict[str, dict[str, float | tuple[float, float] | None]] = {}
    for m, values in changes.items():
        if len(values) < resamples // 2:
            out[m] = {"p": None, "ci": None}
            continue
        values.sort()
        lo = values[int(tail * (len(values) - 1))]
        hi = values[int(math.ceil((1 - tail) * (len(values) - 1)))]
        below = sum(1 for v in values if v <= 0)
        above = sum(1 for v in values if v >= 0)
        p = min(1.0, 2 * (min(below, above) + 1) / (len(values) + 1))
        out[m] = {"p": p, "ci": (lo, hi)}
    return out


def _bootstrap(base: Sequence[Sequence[Interval]], new: Sequence[Sequence[Interval]],
               metrics: Sequence[str], resamples: int, seed: int) -> dict[str, list[float]]:
    rng = random.Random(seed)
    changes: dict[str, list[float]] = {m: [] for m in metrics}
    for _ in range(resamples):
        b, n = _resample(rng, base), _resample(rng, new)
        for m in metrics:
            if m in RATIOS:
                changes[m].append(n[m] - b[m])
            elif b[m]:
                changes[m].append((n[m] - b[m]) / b[m])
    return changes


def bootstrap_change(base: Sequence[Sequence[Interval]], new: Sequence[Sequence[Interval]],
                     metrics: Sequence[str] = METRICS, resamples: int = 400,
                     confidence: float = 0.95, seed: int = 0
                     ) -> dict[str, tuple[float, float] | None]:
    """Confidence interval of (new − base) / base for each metric (new − base for RATIOS);
    None where the base is 0. The interval of hierarchical_test, without its p."""
    tested = hierarchical_test(base, new, metrics, resamples, confidence, seed)
    return {m: cast("tuple[float, float] | None", t["ci"]) for m, t in tested.items()}
