"""The Parquet archive: real files in tmp_path, read back, corrupted, found."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hdrh.histogram import HdrHistogram

import loadforge
from loadforge.engine import histogram as hist
from loadforge.errors import InputError, ResultsError
from loadforge.results import store as results


def recorded(values: list[int]) -> HdrHistogram:
    h = hist.new_histogram()
    for v in values:
        h.record_value(v)
    return h


def run_rows() -> list[dict[str, Any]]:
    """Two 1 s intervals of one stage, one request name, 2xx and timeout; stage and run rows."""
    rows: list[dict[str, Any]] = []
    stage_lat, stage_svc = hist.new_histogram(), hist.new_histogram()
    for i in range(2):
        ok = recorded([800 + 10 * j + i for j in range(100)])
        slow = recorded([5_000_000])
        svc = recorded([500 + j for j in range(100)])
        both = hist.copy(ok)
        hist.merge(both, slow)
        for outcome, lat, count in (("2xx", ok, 100), ("timeout", slow, 1)):
            rows.append(dict(scope="interval", stage="steady", name="home", outcome=outcome,
                             start_ms=1000 * i, end_ms=1000 * (i + 1), count=count,
                             latency=lat, service=svc if outcome == "2xx" else hist.new_histogram()))
        rows.append(dict(scope="interval", stage="steady", name="*", outcome="*",
                         start_ms=1000 * i, end_ms=1000 * (i + 1), count=101, latency=both,
                         service=svc, scheduled=102, unsent=1))
        hist.merge(stage_lat, both)
        hist.merge(stage_svc, svc)
    for scope, stage in (("stage", "steady"), ("run", "*")):
        rows.append(dict(scope=scope, stage=stage, name="*", outcome="*", start_ms=0,
                         end_ms=2000, count=202, latency=stage_lat, service=stage_svc,
                         scheduled=204, unsent=2))
    return rows


def write_run(path: Path, run_id: str = "r1", start: str = "2024-05-01T10:00:00+00:00",
              labels: dict[str, str] | None = None) -> Path:
    with results.ResultWriter(
        str(path), run_id,
        metadata={"profile": 'name = "t"\n', "engine": "cython", "start_time": start,
                  "target": "http://127.0.0.1:1"},
        labels=labels if labels is not None else {"lb": "round_robin", "commit": "abc123"},
    ) as writer:
        writer.write(run_rows())
    return path


def test_round_trip(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.parquet")
    assert not os.path.exists(str(path) + ".partial")
    result = results.read_result(str(path))
    assert result.run_id == "r1"
    assert result.labels == {"lb": "round_robin", "commit": "abc123"}
    assert result.metadata["profile"] == 'name = "t"\n'
    assert result.metadata["engine"] == "cython"
    assert result.metadata["target"] == "http://127.0.0.1:1"
    assert result.metadata["version"] == loadforge.__version__
    assert result.metadata["schema_version"] == str(results.SCHEMA_VERSION)
    assert result.metadata["host"]
    assert result.table.num_rows == 8
    assert result.table.schema.equals(results.result_schema(["lb", "commit"]), check_metadata=False)
    for column in results.REQUIRED_COLUMNS:
        assert column in result.table.column_names
    assert set(result.table["label_lb"].to_pylist()) == {"round_robin"}
    assert set(result.table["backend"].to_pylist()) == {"*"}

    footer = pq.read_metadata(str(path)).metadata
    assert footer[b"loadforge.run_id"] == b"r1"
    assert json.loads(footer[b"loadforge.labels"]) == {"commit": "abc123", "lb": "round_robin"}


def test_rows_and_nullable_columns(tmp_path: Path) -> None:
    result = results.read_result(str(write_run(tmp_path / "run.parquet")))
    merged = result.rows("interval", "steady")
    assert [(r["start_ms"], r["scheduled"], r["unsent"]) for r in merged] == [
        (0, 102, 1), (1000, 102, 1)]
    timeouts = result.rows("interval", name="home", outcome="timeout")
    assert [r["count"] for r in timeouts] == [1, 1]
    assert all(r["scheduled"] is None and r["unsent"] is None for r in timeouts)
    assert len(result.rows("interval", name=None, outcome=None)) == 6
    (run,) = result.rows("run")
    assert run["count"] == 202 and run["scheduled"] == 204
    assert result.histogram(run).get_total_count() == 202
    assert result.service_histogram(run).get_total_count() == 200


def test_stored_histograms_are_plain_hdrh_and_match_the_percentile_columns(
    tmp_path: Path,
) -> None:
    rows = run_rows()
    result = results.read_result(str(write_run(tmp_path / "run.parquet")))
    for written, stored in zip(rows, result.table.to_pylist(), strict=True):
        plain = HdrHistogram.decode(base64.b64encode(stored["latency_hdr"]))
        assert list(plain.counts) == list(written["latency"].counts)
        service = HdrHistogram.decode(base64.b64encode(stored["service_hdr"]))
        assert list(service.counts) == list(written["service"].counts)
        if plain.get_total_count():
            assert stored["p50_us"] == plain.get_value_at_percentile(50)
            assert stored["p90_us"] == plain.get_value_at_percentile(90)
            assert stored["p99_us"] == plain.get_value_at_percentile(99)
            assert stored["p999_us"] == plain.get_value_at_percentile(99.9)
            assert stored["max_us"] == plain.get_max_value()
            assert stored["mean_us"] == pytest.approx(plain.get_mean_value())
        else:
            assert stored["p99_us"] == 0 and stored["max_us"] == 0
        if service.get_total_count():
            assert stored["service_p50_us"] == service.get_value_at_percentile(50)
            assert stored["service_p99_us"] == service.get_value_at_percentile(99)
    (run,) = result.rows("run")
    # The two 5 s timeouts are 1 % of the run: above p99, inside p99.9.
    assert run["p99_us"] < 2000 and run["p999_us"] >= 4_990_000 and run["max_us"] >= 5_000_000


def test_streams_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "ROW_GROUP_ROWS", 3)
    path = tmp_path / "run.parquet"
    writer = results.ResultWriter(str(path), "r2", {}, {})
    writer.write(run_rows())
    # Only the full row groups have gone out; the file is not published yet.
    assert writer.rows_written == 6
    assert not path.exists() and Path(str(path) + ".partial").exists()
    assert writer.close() == str(path)
    footer = pq.ParquetFile(str(path)).metadata
    assert [footer.row_group(i).num_rows for i in range(footer.num_row_groups)] == [3, 3, 2]
    assert results.read_result(str(path)).table.num_rows == 8


def test_exception_in_the_block_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "run.parquet"
    with pytest.raises(RuntimeError), results.ResultWriter(str(path), "r3", {}, {}) as writer:
        writer.write(run_rows())
        raise RuntimeError("worker crashed")
    assert not path.exists() and not Path(str(path) + ".partial").exists()


def test_bad_rows_and_labels(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="label 'a b'"):
        results.ResultWriter(str(tmp_path / "x.parquet"), "r", {}, {"a b": "1"})
    writer = results.ResultWriter(str(tmp_path / "y.parquet"), "r", {}, {})
    bad = dict(run_rows()[0], scope="minute")
    with pytest.raises(ValueError, match="scope"):
        writer.write([bad])
    writer.abort()
    assert not (tmp_path / "y.parquet.partial").exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=r"nope\.parquet: no such file"):
        results.read_result(str(tmp_path / "nope.parquet"))


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.parquet"
    path.write_bytes(os.urandom(3000))
    with pytest.raises(ResultsError, match=r"noise\.parquet: not a Parquet file"):
        results.read_result(str(path))


def test_truncated_parquet(tmp_path: Path) -> None:
    good = write_run(tmp_path / "good.parquet")
    path = tmp_path / "cut.parquet"
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResultsError, match=r"cut\.parquet: not a Parquet file"):
        results.read_result(str(path))


def test_parquet_without_loadforge_metadata(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), str(path))
    with pytest.raises(ResultsError, match=r"other\.parquet: .*not a loadforge result"):
        results.read_result(str(path))


def test_missing_required_columns(tmp_path: Path) -> None:
    path = tmp_path / "thin.parquet"
    table = pa.table({"run_id": ["r"], "scope": ["run"]}).replace_schema_metadata(
        {"loadforge.schema_version": "1", "loadforge.run_id": "r"})
    pq.write_table(table, str(path))
    with pytest.raises(ResultsError, match=r"thin\.parquet: missing required columns stage, name"):
        results.read_result(str(path))


def test_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.parquet"
    table = pa.table({"x": [1]}).replace_schema_metadata({"loadforge.schema_version": "99"})
    pq.write_table(table, str(path))
    with pytest.raises(ResultsError, match=r"future\.parquet: written with result schema 99"):
        results.read_result(str(path))


def test_corrupt_histogram_names_the_file_and_row(tmp_path: Path) -> None:
    result = results.read_result(str(write_run(tmp_path / "run.parquet")))
    (row,) = result.rows("run")
    row["latency_hdr"] = b"not a histogram"
    with pytest.raises(ResultsError, match=r"run\.parquet: latency_hdr of run row"):
        result.histogram(row)


def test_find_results(tmp_path: Path) -> None:
    runs = tmp_path / "results"
    runs.mkdir()
    write_run(runs / "b.parquet", "late", "2024-05-02T09:00:00+00:00")
    write_run(runs / "a.parquet", "early", "2024-05-01T23:00:00-02:00")  # 05-02 01:00 UTC
    write_run(runs / "c.parquet", "earliest", "2024-05-01T12:00:00+00:00")
    (runs / "notes.txt").write_text("ignored")
    (runs / "d.parquet.partial").write_bytes(b"crashed run")
    single = write_run(tmp_path / "single.parquet", "single")
    found = results.find_results([str(runs), str(single)])
    assert [os.path.basename(f) for f in found] == [
        "c.parquet", "a.parquet", "b.parquet", "single.parquet"]
    # A directory of runs is one dataset: same schema, labels as columns.
    dataset = pq.ParquetDataset([f for f in found])
    assert set(dataset.read(columns=["label_lb"])["label_lb"].to_pylist()) == {"round_robin"}


def test_find_results_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ResultsError, match="empty: directory holds no .parquet files"):
        results.find_results([str(empty)])
    with pytest.raises(ResultsError, match="missing.parquet: no such file"):
        results.find_results([str(tmp_path / "missing.parquet")])
    (empty / "bad.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(ResultsError, match=r"bad\.parquet: not a Parquet file"):
        results.find_results([str(empty)])
