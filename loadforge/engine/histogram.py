"""Bridge between the engine's HDR count arrays and `hdrh.histogram.HdrHistogram`.

The engine records latencies in C into uint32 count arrays with exactly hdrh's index layout
(1 µs .. 1 h, 3 significant digits), and ships the parent only the touched slice of each
array. Everything else (merging, percentiles, the V2 encoding stored in Parquet) goes through
hdrh so that stored histograms stay readable by every HdrHistogram library. It lives beside
the engine (its output format, as requests.py and tables.py are its input), below every
reader: the exact merge (run/merge.py), the store (results/) and the folds (analysis/).
"""

from __future__ import annotations

import array
import base64
import sys
from collections.abc import Iterable
from itertools import compress
from typing import TYPE_CHECKING, Any

from loadforge import _core
from loadforge.errors import ResultsError

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3
# counts_len of the layout above; the engine's arrays have this many uint32 entries.
COUNTS_LEN = 23552

# Percentile levels behind the stats() keys, in ascending order (one pass walks them in turn).
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p999", 99.9),
)

__all__ = [
    "COUNTS_LEN",
    "HIGHEST_US",
    "LOWEST_US",
    "PERCENTILES",
    "SIGNIFICANT_DIGITS",
    "Sum",
    "add_slice",
    "add_slice_of",
    "copy",
    "decode",
    "encode",
    "merge",
    "new_histogram",
    "stats",
    "stats_of_buckets",
    "stats_of_counts",
]


def new_histogram() -> HdrHistogram:
    """An empty histogram with the engine's layout (µs, 1 µs .. 1 h, 3 digits)."""
    # hdrh (with ctypes, 4 ms) is imported where a histogram is first made: a run's merge
    # makes its first an interval after time zero, off the way of the run's start.
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


_layout_histogram: HdrHistogram | None = None


def _layout() -> HdrHistogram:
    """An empty histogram of the layout, for its index arithmetic."""
    global _layout_histogram
    if _layout_histogram is None:
        _layout_histogram = new_histogram()
    return _layout_histogram


def _uint32_view(counts: bytes) -> memoryview | array.array[int]:
    if len(counts) % 4:
        raise ValueError(f"histogram slice: {len(counts)} bytes is not a whole number of uint32")
    if sys.byteorder == "little":
        return memoryview(counts).cast("I")
    # The wire format is little-endian whatever the host; only big-endian hosts pay a copy.
    swapped = array.array("I")
    swapped.frombytes(counts)
    swapped.byteswap()
    return swapped


def add_slice(h: HdrHistogram, lo: int, counts: bytes, total: int, min_us: int, max_us: int) -> None:
    """Add an engine slice (uint32 LE counts of indices lo..lo+n-1) into `h`.

    `total`, `min_us` and `max_us` are the worker's own bookkeeping for the slice: total must
    equal the sum of the counts (checked before anything is changed), min/max are exact values
    and are clamped into the buckets of the lowest/highest nonzero index so that hdrh's
    encoder, which encodes up to the index of `max_value`, never drops a count.
    """
    values = _uint32_view(counts)
    n = len(values)
    if lo < 0 or lo + n > h.counts_len:
        raise ValueError(
            f"histogram slice: indices {lo}..{lo + n - 1} outside 0..{h.counts_len - 1}"
        )
    # compress() walks the array in C and yields only the nonzero positions: a slice from a
    # busy interval has a few hundred nonzero entries among thousands.
    nonzero = list(compress(range(n), values))
    added = [values[i] for i in nonzero]
    got = sum(added)
    if got != total:
        raise ValueError(f"histogram slice: counts sum to {got}, total says {total}")
    if not nonzero:
        return
    hc = h.counts
    for i, c in zip(nonzero, added, strict=True):
        hc[lo + i] += c

    low_bucket = h.get_value_from_index(lo + nonzero[0])
    if not low_bucket <= min_us <= h.get_highest_equivalent_value(low_bucket):
        min_us = low_bucket
    high_bucket = h.get_value_from_index(lo + nonzero[-1])
    if not high_bucket <= max_us <= h.get_highest_equivalent_value(high_bucket):
        max_us = high_bucket
    h.total_count += total
    # min_value starts at sys.maxsize in an empty histogram, max_value at 0.
    h.min_value = min(h.min_value, min_us)
    h.max_value = max(h.max_value, max_us)


def add_slice_of(h: HdrHistogram, piece: Any) -> None:
    """add_slice of a worker's slice object (lo, counts, total, min_us, max_us); None adds
    nothing."""
    if piece is not None:
        add_slice(h, piece.lo, piece.counts, piece.total, piece.min_us, piece.max_us)


def merge(dst: HdrHistogram, src: HdrHistogram) -> None:
    """Add `src` into `dst` exactly (same layout: an in-place add of the count arrays)."""
    if not src.total_count:
        return
    dst_empty = not dst.total_count
    dst_min, dst_max = dst.min_value, dst.max_value
    dst.add(src)
    # hdrh's add() takes min(dst.get_min_value(), src.get_min_value()), and get_min_value() is
    # 0 for an empty histogram: merging into an empty one would report min 0. Keep the raw
    # tracked values instead (get_min_value/get_max_value apply the bucket bounds later).
    dst.min_value = src.min_value if dst_empty else min(dst_min, src.min_value)
    dst.max_value = max(dst_max, src.max_value)


def copy(h: HdrHistogram) -> HdrHistogram:
    out = new_histogram()
    merge(out, h)
    return out


class Sum:
    """The exact sum of the histograms added to it (`merge`), without a copy until it holds
    two: while one histogram with counts has been added, `value` is that histogram itself.
    So a cell's interval row, its stage's and the run's can share one histogram where one
    cell is all they hold, instead of three of 184 KiB each, copied. A second histogram makes
    one of its own to add into: nothing added to a Sum ever changes a histogram added to it.

    Read `value` once nothing more is added (what it returns may be the Sum's own histogram,
    which a later `add` changes); a Sum of nothing is a new empty histogram."""

    __slots__ = ("_h", "_own")

    def __init__(self, first: HdrHistogram | None = None) -> None:
        self._h: HdrHistogram | None = None
        self._own = False
        if first is not None:
            self.add(first)

    def add(self, h: HdrHistogram) -> None:
        if not h.total_count:
            return                  # merge() adds nothing either
        if self._h is None:
            self._h = h
            return
        if not self._own:
            self._h, self._own = copy(self._h), True
        merge(self._h, h)

    @property
    def value(self) -> HdrHistogram:
        if self._h is None:
            self._h, self._own = new_histogram(), True
        return self._h


def stats(h: HdrHistogram) -> dict[str, Any]:
    """p50, p90, p99, p999, max (int µs), mean (float µs) and count, in one pass.

    Same definitions as hdrh's get_value_at_percentile / get_max_value / get_mean_value
    (values are the highest equivalent value of the bucket; mean uses bucket midpoints),
    but walking the array once in C instead of once per query in Python.
    """
    total = int(h.total_count)
    out: dict[str, Any] = {key: 0 for key, _ in PERCENTILES}
    out.update(max=0, mean=0.0, count=total)
    if not total:
        return out
    counts = memoryview(h.counts).cast("B").cast("Q")
    limit = min(h.get_counts_array_index(h.max_value) + 1, len(counts))
    _walk(out, counts, limit, total)
    out["max"] = int(h.get_max_value())
    return out


def stats_of_counts(counts: Any) -> dict[str, Any]:
    """stats() of a bare uint64 counts array in the engine's layout (COUNTS_LEN entries), for
    merges that never build an HdrHistogram (noise.py's bootstrap)."""
    total = sum(counts)
    out: dict[str, Any] = {key: 0 for key, _ in PERCENTILES}
    out.update(max=0, mean=0.0, count=total)
    if total:
        # The value at the last count is the highest equivalent value of the top bucket: max.
        out["max"] = _walk(out, counts, len(counts), total, extra=total)
    return out


# A zeroed counts array in the engine's layout, for stats_of_buckets: filled, walked, zeroed.
_scratch: array.array[int] | None = None


def stats_of_buckets(pairs: Iterable[tuple[int, int]]) -> dict[str, Any]:
    """stats() of the histogram whose only nonzero buckets are `pairs` (hdrh index, count):
    the same figures as building that HdrHistogram (its min and max tracked at the lowest
    and highest bucket) and calling stats(), without allocating one."""
    pairs = [(index, count) for index, count in pairs if count]
    out: dict[str, Any] = {key: 0 for key, _ in PERCENTILES}
    out.update(max=0, mean=0.0, count=0)
    if not pairs:
        return out
    global _scratch
    if _scratch is None:
        _scratch = array.array("Q", bytes(8 * COUNTS_LEN))
    scratch = _scratch
    try:
        for index, count in pairs:
            scratch[index] = count
        top = max(index for index, _ in pairs)
        total = sum(count for _, count in pairs)
        out["count"] = total
        _walk(out, scratch, top + 1, total)
    finally:
        for index, _ in pairs:
            scratch[index] = 0
    layout = _layout()
    top_value = layout.get_value_from_index(top)
    out["max"] = int(layout.get_highest_equivalent_value(top_value)) if top_value else 0
    return out


def _walk(out: dict[str, Any], counts: Any, limit: int, total: int, extra: int = 0) -> int:
    targets = [max(int(p * total / 100 + 0.5), 1) for _, p in PERCENTILES]
    if extra:
        targets.append(extra)
    layout = _layout()
    values, weighted = _core.hdr_walk(counts, limit, targets, layout.unit_magnitude,
                                      layout.sub_bucket_half_count_magnitude)
    for (key, _), value in zip(PERCENTILES, values, strict=False):
        out[key] = value
    out["mean"] = weighted / total
    return int(values[-1])


def encode(h: HdrHistogram) -> bytes:
    """The standard V2 compressed encoding as raw bytes (what Java's
    `decodeFromCompressedByteBuffer` and Go/C `decode` read; hdrh's encode() is its base64)."""
    return base64.b64decode(h.encode())


def decode(blob: bytes, what: str = "histogram") -> HdrHistogram:
    """Decode a V2 compressed histogram; `what` names it in the error message."""
    from hdrh.histogram import HdrHistogram

    try:
        h = HdrHistogram.decode(base64.b64encode(bytes(blob)))
    except Exception as exc:  # hdrh raises zlib, ctypes, cookie and length errors alike
        reason = str(exc) or type(exc).__name__
        raise ResultsError(f"{what}: not a V2-compressed HdrHistogram ({reason})") from exc
    layout = (h.lowest_trackable_value, h.highest_trackable_value, h.significant_figures)
    if layout != (LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS):
        raise ResultsError(
            f"{what}: histogram layout (lowest, highest, digits) = {layout}, expected "
            f"{(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)}"
        )
    return h
