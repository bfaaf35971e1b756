"""results/parquet.py, the result files' writer, against pyarrow and DuckDB: what they read
back from it is, value for value and type for type, what was written, and what pyarrow's own
writer makes of the same rows; its statistics are the columns' minima and maxima. Every run's
file in the other tests is read back by pyarrow too (results/reader.py)."""

from __future__ import annotations

import io
import math
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loadforge.results.parquet import ParquetWriter
from loadforge.results.schema import BASE_FIELDS, result_schema

ARROW = {"string": pa.string(), "binary": pa.binary(), "int64": pa.int64(),
         "float64": pa.float64()}


def written(columns: list[tuple[str, str, bool]], groups: list[dict[str, list[Any]]],
            metadata: dict[str, str] | None = None) -> bytes:
    sink = io.BytesIO()
    writer = ParquetWriter(sink, columns, metadata or {}, "1.2.3")
    for group in groups:
        writer.write_row_group(group, len(next(iter(group.values()))))
    writer.close()
    return sink.getvalue()


def values(kind: str, n: int, rng: random.Random, nulls: bool) -> list[Any]:
    def one(i: int) -> Any:
        if nulls and i % 3 == 1:
            return None
        if kind == "int64":
            return rng.choice([0, -1, 1, 2**63 - 1, -(2**63), rng.randrange(-10**12, 10**12)])
        if kind == "float64":
            return rng.choice([0.0, -0.0, 1.5, -2.25, math.inf, -math.inf, rng.random() * 1e9])
        if kind == "string":
            return rng.choice(["", "*", "ok", "stage0", "é ü 東京", "x" * 300, str(i)])
        return rng.randbytes(rng.choice([0, 1, 127, 128, 5000]))
    return [one(i) for i in range(n)]


def test_pyarrow_reads_back_every_kind_with_and_without_nulls() -> None:
    rng = random.Random(7)
    columns = [(f"{kind}_{'null' if nullable else 'req'}", kind, nullable)
               for kind in ARROW for nullable in (False, True)]
    # Row groups of 1, 3 and 1,000 rows (more than 8 rows: several bit-packed level bytes;
    # long strings and binaries: multi-byte lengths).
    groups = [{name: values(kind, n, rng, nullable) for name, kind, nullable in columns}
              for n in (1, 3, 1000)]
    table = pq.read_table(io.BytesIO(written(columns, groups, {"loadforge.k": "v"})))
    assert table.schema == pa.schema([pa.field(name, ARROW[kind], nullable=nullable)
                                      for name, kind, nullable in columns])
    for name, _, _ in columns:
        assert table.column(name).to_pylist() == [v for g in groups for v in g[name]], name


def test_the_same_rows_as_pyarrows_own_writer_makes_them() -> None:
    rng = random.Random(11)
    columns = list(BASE_FIELDS) + [("label_branch", "string", False)]
    rows = {name: values(kind, 40, rng, nullable) for name, kind, nullable in columns}
    ours = pq.read_table(io.BytesIO(written(columns, [rows])))
    sink = io.BytesIO()
    pq.write_table(pa.table(rows, schema=result_schema(["branch"])), sink)
    theirs = pq.read_table(io.BytesIO(sink.getvalue()))
    assert ours.equals(theirs)


def test_duckdb_reads_the_same_rows_types_metadata_and_statistics(tmp_path: Path) -> None:
    # A second, independent implementation of the format (C++, not Arrow's): what a query over
    # an archive of results runs on.
    import duckdb

    rng = random.Random(5)
    columns = list(BASE_FIELDS) + [("label_branch", "string", False)]
    groups = [{name: values(kind, n, rng, nullable) for name, kind, nullable in columns}
              for n in (3, 200)]
    path = tmp_path / "run.parquet"
    path.write_bytes(written(columns, groups, {"loadforge.run_id": "r1", "loadforge.x": "é"}))
    con = duckdb.connect()
    described = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()
    sql = {"string": "VARCHAR", "binary": "BLOB", "int64": "BIGINT", "float64": "DOUBLE"}
    assert [(r[0], r[1]) for r in described] == [(name, sql[kind]) for name, kind, _ in columns]
    names = ", ".join(f'"{name}"' for name, _, _ in columns)
    rows = con.execute(f"SELECT {names} FROM read_parquet('{path}')").fetchall()
    expected = [tuple(g[name][i] for name, _, _ in columns) for g in groups
                for i in range(len(g["run_id"]))]
    assert rows == expected
    metadata = dict(con.execute(
        f"SELECT decode(key), decode(value) FROM parquet_kv_metadata('{path}')").fetchall())
    assert metadata == {"loadforge.run_id": "r1", "loadforge.x": "é"}
    # The row groups' statistics, as DuckDB reads them, bound each column's values.
    stats = con.execute(f"SELECT row_group_id, path_in_schema, stats_min_value, stats_max_value "
                        f"FROM parquet_metadata('{path}') WHERE path_in_schema = 'start_ms'"
                        ).fetchall()
    for group_id, _, low, high in stats:
        kept = [v for v in groups[group_id]["start_ms"] if v is not None]
        assert (int(low), int(high)) == (min(kept), max(kept))


def test_footer_metadata_row_groups_and_many_columns() -> None:
    # More than 15 columns, row groups and key-value pairs: the compact protocol's long list
    # headers.
    columns = [(f"c{i}", "int64", False) for i in range(20)]
    groups = [{f"c{i}": [g * 100 + i, g] for i in range(20)} for g in range(17)]
    metadata = {f"loadforge.key{i}": f"value {i} é" for i in range(16)}
    data = written(columns, groups, metadata)
    footer = pq.read_metadata(io.BytesIO(data))
    assert footer.num_rows == 34 and footer.num_row_groups == 17 and footer.num_columns == 20
    assert [footer.row_group(g).num_rows for g in range(17)] == [2] * 17
    assert {k.decode(): v.decode() for k, v in footer.metadata.items()} == metadata
    assert footer.created_by == "loadforge version 1.2.3"
    table = pq.read_table(io.BytesIO(data))
    assert table.column("c19").to_pylist() == [v for g in range(17) for v in (g * 100 + 19, g)]


def test_statistics_are_the_minimum_and_maximum_of_each_chunk() -> None:
    columns = [("n", "int64", True), ("s", "string", False), ("f", "float64", False),
               ("nan", "float64", False), ("b", "binary", False)]
    group = {"n": [5, None, -3, 9], "s": ["b", "é", "a", "zz"], "f": [2.5, -1.0, 0.0, 7.0],
             "nan": [1.0, math.nan, 2.0, 3.0], "b": [b"\x00", b"\xff", b"a", b"b"]}
    chunks = pq.read_metadata(io.BytesIO(written(columns, [group]))).row_group(0)
    n, s, f, nan, b = (chunks.column(i).statistics for i in range(5))
    assert (n.min, n.max, n.null_count) == (-3, 9, 1)
    assert (s.min, s.max) == ("a", "é")           # UTF-8 order: é (0xC3 0xA9) after zz
    assert (f.min, f.max) == (-1.0, 7.0)
    # No order with a NaN among the values, and none kept for the histograms' bytes.
    assert nan is None or not nan.has_min_max
    assert b is None or not b.has_min_max
    # Zero bounds as the format asks: -0.0 for a minimum, +0.0 for a maximum.
    zeros = [("lo", "float64", False), ("hi", "float64", False)]
    bounds = pq.read_metadata(io.BytesIO(written(zeros, [{"lo": [0.0, 1.0], "hi": [-1.0, -0.0]}])))
    lo, hi = (bounds.row_group(0).column(i).statistics for i in range(2))
    assert math.copysign(1, lo.min) == -1 and math.copysign(1, hi.max) == 1
    # A filter on the statistics reads what it should (what a query over an archive does).
    table = pq.read_table(io.BytesIO(written(columns, [group])), filters=[("n", ">", 6)])
    assert table.column("n").to_pylist() == [9]


def test_columns_compress_only_where_it_pays() -> None:
    rng = random.Random(3)
    histograms = [rng.randbytes(200) for _ in range(100)]
    # A run's "*" and "ok" rows repeat their name's histogram: five rows a histogram here.
    columns = [("run_id", "string", False), ("hdr", "binary", False),
               ("once", "binary", False), ("n", "int64", False)]
    group = {"run_id": ["20261207T203056-adhoc-3645bb"] * 500,
             "hdr": [h for h in histograms for _ in range(5)],
             "once": [rng.randbytes(rng.randrange(1000, 3000)) for _ in range(500)],
             "n": [1] * 500}
    data = written(columns, [group])
    chunks = pq.read_metadata(io.BytesIO(data)).row_group(0)
    sizes = [(chunks.column(i).compression, chunks.column(i).total_compressed_size,
              chunks.column(i).total_uncompressed_size) for i in range(4)]
    assert sizes[0][0] == "GZIP" and sizes[0][1] < sizes[0][2] / 20
    assert sizes[1][0] == "GZIP" and sizes[1][1] < sizes[1][2] / 3
    # Whatever each chunk holds, it is stored compressed only where that is smaller.
    assert all(packed <= raw for _, packed, raw in sizes)
    assert pq.read_table(io.BytesIO(data)).column("hdr").to_pylist() == group["hdr"]
    tiny = pq.read_metadata(io.BytesIO(written(columns[3:], [{"n": [1]}]))).row_group(0)
    assert tiny.column(0).compression == "UNCOMPRESSED"


def test_a_file_without_rows_reads_as_an_empty_table() -> None:
    table = pq.read_table(io.BytesIO(written([("a", "string", False)], [])))
    assert table.num_rows == 0 and table.schema == pa.schema([pa.field("a", pa.string(), False)])


def test_rows_that_do_not_fit_the_columns_are_refused() -> None:
    writer = ParquetWriter(io.BytesIO(), [("a", "int64", False), ("b", "string", True)], {})
    with pytest.raises(ValueError, match="column a: 1 values in a row group of 2 rows"):
        writer.write_row_group({"a": [1], "b": ["x", None]}, 2)
    with pytest.raises(ValueError, match="column a is not nullable"):
        writer.write_row_group({"a": [1, None], "b": ["x", None]}, 2)
    with pytest.raises(ValueError, match="column a: kind 'int32'"):
        ParquetWriter(io.BytesIO(), [("a", "int32", False)], {})
