"""Change points in a series of run figures: E-divisive with a permutation test.

Matteson and James, "A Nonparametric Approach for Multiple Change Point Analysis of
Multivariate Data" (JASA 2014), the method behind MongoDB's performance CI and Apache Otava
(formerly Hunter). It assumes nothing about the distribution: a split at τ of a segment is
scored by the energy distance between the values before and after it,

    Q(τ) = m·k/(m+k) · ( 2/(m·k) Σ|xᵢ−yⱼ| − 1/C(m,2) Σ|xᵢ−xᵢ'| − 1/C(k,2) Σ|yⱼ−yⱼ'| ),

the best split of each segment is found in O(n) from 2-D prefix sums of the distance matrix, and
it is kept only if a permutation test of the segment says it is unlikely under no change. The
divisive loop then splits the segment whose best split scores highest, until one is not
significant. The permutations are seeded: the same series always gives the same answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ChangePoint:
    index: int          # the first value after the shift
    p_value: float


def _prefix(values: Sequence[float]) -> list[list[float]]:
    """P[a][b] = Σ_{i<a, j<b} |x_i − x_j|."""
    n = len(values)
    prefix = [[0.0] * (n + 1) for _ in range(n + 1)]
    for i in range(n):
        xi = values[i]
        row, above = prefix[i + 1], prefix[i]
        acc = 0.0
        for j in range(n):
            acc += abs(xi - values[j])
            row[j + 1] = above[j + 1] + acc
    return prefix


def _block(p: list[list[float]], a: int, b: int, c: int, d: int) -> float:
    return p[b][d] - p[a][d] - p[b][c] + p[a][c]


def _best_split(p: list[list[float]], start: int, end: int, min_size: int) -> tuple[int, float]:
    """The split τ in [start, end) with the highest Q, and that Q; (-1, 0) if none fits."""
    best, best_q = -1, 0.0
    for tau in range(start + min_size, end - min_size + 1):
        m, k = tau - start, end - tau
        between = _block(p, start, tau, tau, end)
        left = _block(p, start, tau, start, tau) / 2      # each pair once
        right = _block(p, tau, end, tau, end) / 2
        energy = 2 * between / (m * k)
        if m > 1:
            energy -= left / (m * (m - 1) / 2)
        if k > 1:
            energy -= right / (k * (k - 1) / 2)
        q = m * k / (m + k) * energy
        if q > best_q:
            best, best_q = tau, q
    return best, best_q


def change_points(values: Sequence[float], min_size: int = 3, alpha: float = 0.05,
                  permutations: int = 199, seed: int = 0) -> list[ChangePoint]:
    """Indices where the series shifts, in order; each the first value of a new segment."""
    n = len(values)
    if min_size < 1:
        raise ValueError("min_size must be >= 1")
    xs = [float(v) for v in values]
    whole = _prefix(xs)
    rng = random.Random(seed)
    segments = [(0, n)]
    found: list[ChangePoint] = []
    candidates: dict[tuple[int, int], tuple[int, float]] = {}
    while True:
        for seg in segments:
            if seg not in candidates:
                candidates[seg] = _best_split(whole, seg[0], seg[1], min_size)
        seg = max(segments, key=lambda s: candidates[s][1])
        tau, q = candidates[seg]
        if tau < 0 or q <= 0:
            break
        # Permutation test on this segment alone: how often does a shuffle of its values
        # split at least as well? (Matteson and James, section 3.2.)
        piece = xs[seg[0]:seg[1]]
        exceed = 0
        for _ in range(permutations):
            rng.shuffle(piece)
            if _best_split(_prefix(piece), 0, len(piece), min_size)[1] >= q:
                exceed += 1
        p_value = (exceed + 1) / (permutations + 1)
        if p_value > alpha:
            break
        found.append(ChangePoint(tau, p_value))
        segments.remove(seg)
        segments += [(seg[0], tau), (tau, seg[1])]
    return sorted(found, key=lambda c: c.index)
