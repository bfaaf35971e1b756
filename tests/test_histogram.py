"""histogram.py against hdrh itself: slices, merging, percentiles, the V2 encoding."""

from __future__ import annotations

import array
import base64
import random
import struct

import pytest
from hdrh.histogram import HdrHistogram
from hypothesis import given, settings
from hypothesis import strategies as st

from loadforge.engine import histogram as hist
from loadforge.errors import ResultsError

values_us = st.integers(min_value=1, max_value=hist.HIGHEST_US)


def engine_slice(values: list[int]) -> tuple[int, bytes, int, int, int]:
    """What a worker would ship for these values: (lo, counts, total, min_us, max_us)."""
    ref = hist.new_histogram()
    counts = array.array("I", bytes(4 * hist.COUNTS_LEN))
    for v in values:
        counts[ref.get_counts_array_index(v)] += 1
    nonzero = [i for i, c in enumerate(counts) if c]
    if not nonzero:
        return 0, b"", 0, 0, 0
    lo, hi = nonzero[0], nonzero[-1]
    raw = counts[lo : hi + 1]
    if raw.itemsize != 4:  # pragma: no cover - every supported platform has 4-byte "I"
        pytest.skip("array 'I' is not 32-bit here")
    data = struct.pack(f"<{len(raw)}I", *raw)
    return lo, data, len(values), min(values), max(values)


def recorded(values: list[int]) -> HdrHistogram:
    h = hist.new_histogram()
    for v in values:
        h.record_value(v)
    return h


def counts_of(h: HdrHistogram) -> list[int]:
    return list(h.counts)


def test_layout_matches_the_engine() -> None:
    h = hist.new_histogram()
    assert h.counts_len == hist.COUNTS_LEN == 23552
    assert (h.lowest_trackable_value, h.highest_trackable_value, h.significant_figures) == (
        1, 3_600_000_000, 3,
    )


def test_add_slice_equals_record_value() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(8, 1.5)) + 1 for _ in range(5000)] + [1, 3_600_000_000]
    h = hist.new_histogram()
    hist.add_slice(h, *engine_slice(values))
    ref = recorded(values)
    assert counts_of(h) == counts_of(ref)
    assert h.get_total_count() == len(values)
    assert h.get_min_value() == ref.get_min_value()
    assert h.get_max_value() == ref.get_max_value()
    assert h.equals(ref)


def test_add_slice_accumulates_and_skips_empty() -> None:
    h = hist.new_histogram()
    hist.add_slice(h, 0, b"", 0, 0, 0)
    hist.add_slice(h, 100, bytes(40), 0, 0, 0)
    assert h.get_total_count() == 0 and h.get_min_value() == 0 and h.get_max_value() == 0
    hist.add_slice(h, *engine_slice([500, 600]))
    hist.add_slice(h, *engine_slice([50, 90_000]))
    assert h.equals(recorded([500, 600, 50, 90_000]))


def test_add_slice_rejects_inconsistent_slices_without_changing_anything() -> None:
    h = hist.new_histogram()
    lo, data, total, lo_us, hi_us = engine_slice([10, 20, 30])
    with pytest.raises(ValueError, match="total says 4"):
        hist.add_slice(h, lo, data, 4, lo_us, hi_us)
    with pytest.raises(ValueError, match="outside"):
        hist.add_slice(h, hist.COUNTS_LEN - 1, data, total, lo_us, hi_us)
    with pytest.raises(ValueError, match="uint32"):
        hist.add_slice(h, lo, data + b"\0", total, lo_us, hi_us)
    assert h.get_total_count() == 0 and not any(h.counts)


def test_add_slice_clamps_min_max_into_the_recorded_buckets() -> None:
    # A min/max outside the buckets actually present must not make the encoder (which stops
    # at the index of max_value) drop counts.
    lo, data, total, _, _ = engine_slice([1000, 250_000])
    h = hist.new_histogram()
    hist.add_slice(h, lo, data, total, 5, 7)
    decoded = hist.decode(hist.encode(h))
    assert decoded.get_total_count() == 2
    assert counts_of(decoded) == counts_of(recorded([1000, 250_000]))
    assert h.get_min_value() == h.get_lowest_equivalent_value(1000)
    assert h.get_max_value() == h.get_highest_equivalent_value(250_000)


def test_merge_into_empty_keeps_min() -> None:
    src = recorded([700, 800])
    dst = hist.new_histogram()
    hist.merge(dst, src)
    assert dst.get_min_value() == src.get_min_value() == 700
    hist.merge(dst, hist.new_histogram())
    assert dst.get_min_value() == 700 and dst.get_total_count() == 2
    hist.merge(dst, recorded([3]))
    assert dst.get_min_value() == 3 and dst.get_max_value() == src.get_max_value()


def test_copy_is_independent() -> None:
    h = recorded([5, 6, 7])
    c = hist.copy(h)
    assert c.equals(h)
    c.record_value(100)
    assert h.get_total_count() == 3


def test_stats_matches_hdrh_on_a_known_distribution() -> None:
    # 1..10000 µs once each: p50 is 5000 µs within the 3-digit bucket.
    h = recorded(list(range(1, 10_001)))
    s = hist.stats(h)
    for key, p in hist.PERCENTILES:
        assert s[key] == h.get_value_at_percentile(p)
    assert s["max"] == h.get_max_value()
    assert s["mean"] == pytest.approx(h.get_mean_value(), rel=1e-12)
    assert s["count"] == 10_000
    assert 4995 <= s["p50"] <= 5005 and 9890 <= s["p99"] <= 9910
    assert all(isinstance(s[k], int) for k in ("p50", "p90", "p99", "p999", "max"))


def test_stats_of_an_empty_histogram_is_zero() -> None:
    assert hist.stats(hist.new_histogram()) == {
        "p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0, "mean": 0.0, "count": 0,
    }


def _built(buckets: dict[int, int]) -> HdrHistogram:
    """The HdrHistogram whose nonzero buckets are `buckets`, min and max at the outer ones."""
    h = hist.new_histogram()
    for index, count in buckets.items():
        h.counts[index] = count
    if buckets:
        h.total_count = sum(buckets.values())
        h.min_value = h.get_value_from_index(min(buckets))
        h.max_value = h.get_value_from_index(max(buckets))
    return h


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(0, hist.COUNTS_LEN - 1), st.integers(1, 10**9), max_size=60))
def test_stats_of_buckets_equals_stats_of_the_histogram(buckets: dict[int, int]) -> None:
    assert hist.stats_of_buckets(buckets.items()) == hist.stats(_built(buckets))
    # The scratch array is left zeroed: a second call sees nothing of the first.
    assert hist.stats_of_buckets([]) == hist.stats(hist.new_histogram())


def test_encode_is_the_standard_v2_compressed_form() -> None:
    h = recorded([1, 42, 1_000_000])
    blob = hist.encode(h)
    cookie, length = struct.unpack(">II", blob[:8])
    assert cookie & ~0xF0 == 0x1C849304  # V2 compression cookie
    assert length == len(blob) - 8
    plain = HdrHistogram.decode(base64.b64encode(blob))
    assert counts_of(plain) == counts_of(h)
    assert hist.decode(blob).equals(h)


def test_encode_decode_empty() -> None:
    d = hist.decode(hist.encode(hist.new_histogram()))
    assert d.get_total_count() == 0 and hist.stats(d)["p99"] == 0


@pytest.mark.parametrize(
    "blob",
    [b"", b"garbage", bytes(range(256)), b"\x1c\x84\x93\x14\x00\x00\x00\x04abcd"],
)
def test_decode_garbage_is_a_results_error(blob: bytes) -> None:
    with pytest.raises(ResultsError, match="row 3: not a V2-compressed HdrHistogram"):
        hist.decode(blob, what="row 3")


def test_decode_rejects_another_layout() -> None:
    other = HdrHistogram(1, 60_000_000, 2)
    other.record_value(10)
    with pytest.raises(ResultsError, match="layout"):
        hist.decode(base64.b64decode(other.encode()))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(values_us, max_size=200),
    st.lists(values_us, max_size=200),
)
def test_merging_slices_equals_one_histogram_of_all_values(a: list[int], b: list[int]) -> None:
    ha, hb = hist.new_histogram(), hist.new_histogram()
    hist.add_slice(ha, *engine_slice(a))
    hist.add_slice(hb, *engine_slice(b))
    merged = hist.new_histogram()
    hist.merge(merged, ha)
    hist.merge(merged, hb)
    whole = hist.new_histogram()
    hist.add_slice(whole, *engine_slice(a + b))
    assert counts_of(merged) == counts_of(whole)
    assert merged.get_total_count() == whole.get_total_count() == len(a) + len(b)
    assert merged.get_min_value() == whole.get_min_value()
    assert merged.get_max_value() == whole.get_max_value()
    assert hist.stats(merged) == hist.stats(whole)
    assert hist.stats(whole) == hist.stats(hist.decode(hist.encode(whole)))
    ref = recorded(a + b)
    for key, p in hist.PERCENTILES:
        assert hist.stats(whole)[key] == (ref.get_value_at_percentile(p) if a + b else 0)
