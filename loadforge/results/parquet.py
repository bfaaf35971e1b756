"""A Parquet writer for the result files: flat columns of four kinds (UTF-8 strings, binary,
int64, float64; optional ones null where a row has no value), streamed row group by row group
into a file object, with the file's key-value metadata in its footer.

Why not pyarrow's writer: importing pyarrow costs 0.025-0.03 s of CPU (its C++ libraries'
loading and symbol binding, its module's set-up), a fifth of a 1 s run's, to write a few
kilobytes of a fixed shape. The format written is the plain subset every reader takes
(Apache Parquet format 2, "parquet.thrift"): data pages v1, PLAIN values, definition levels
RLE/bit-packed, each column chunk GZIP-compressed where that makes it smaller (a row's
histograms are V2-compressed already, but the rows merged over names and outcomes often
repeat them), min/max statistics on the text and number columns. Every later command reads
the files with pyarrow (results/reader.py), and tests/test_parquet.py checks them column by
column against what pyarrow reads back and what pyarrow's own writer makes of the same rows.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable
from typing import Any

__all__ = ["KINDS", "ParquetWriter"]

MAGIC = b"PAR1"

# parquet.thrift's enums, the values used here.
INT64, DOUBLE, BYTE_ARRAY = 2, 5, 6           # Type
# Column kinds: the Parquet physical type, and whether the values are UTF-8 text.
KINDS = {"string": (BYTE_ARRAY, True), "binary": (BYTE_ARRAY, False), "int64": (INT64, False),
         "float64": (DOUBLE, False)}
REQUIRED, OPTIONAL = 0, 1                     # FieldRepetitionType
PLAIN, RLE = 0, 3                             # Encoding
UNCOMPRESSED, GZIP = 0, 2                     # CompressionCodec
DATA_PAGE = 0                                 # PageType
UTF8 = 0                                      # ConvertedType
# Chunks smaller than this are stored as they are: a gzip stream's set-up (30-40 µs) and its
# 18 bytes of framing cost more than it saves there (a short run's file is such chunks).
MIN_COMPRESS = 512
# zlib's fastest level: 9 µs a row where level 6 takes 20, for files 7 % larger (rows of a
# busy run; a run's repeated histograms, its "*" and "ok" rows, compress at either).
GZIP_LEVEL = 1
CREATED_BY = "loadforge version {version}"

# Thrift compact protocol: the field and element types used here.
T_I16, T_I32, T_I64, T_BINARY, T_LIST, T_STRUCT = 4, 5, 6, 8, 9, 12


def _varint(n: int, out: bytearray) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _struct(fields: Iterable[tuple[int, int, Any]], out: bytearray) -> None:
    """A Thrift struct in the compact protocol: (field id, type, value) in ascending field id;
    a None value is left out. A struct's value is its own fields; a list's (element type,
    items)."""
    last = 0
    for fid, ttype, value in fields:
        if value is None:
            continue
        if 0 < fid - last <= 15:
            out.append((fid - last) << 4 | ttype)
        else:
            out.append(ttype)
            _varint(_zigzag(fid), out)
        _value(ttype, value, out)
        last = fid
    out.append(0)                       # stop


def _value(ttype: int, value: Any, out: bytearray) -> None:
    if ttype in (T_I16, T_I32, T_I64):
        _varint(_zigzag(value), out)
    elif ttype == T_BINARY:
        data = value.encode() if isinstance(value, str) else value
        _varint(len(data), out)
        out += data
    elif ttype == T_STRUCT:
        _struct(value, out)
    elif ttype == T_LIST:
        etype, items = value
        if len(items) < 15:
            out.append(len(items) << 4 | etype)
        else:
            out.append(0xF0 | etype)
            _varint(len(items), out)
        for item in items:
            _value(etype, item, out)
    else:
        raise ValueError(f"thrift type {ttype}")


def _plain(physical: int, values: list[Any]) -> bytes:
    """PLAIN-encoded non-null values (text encoded to UTF-8 already)."""
    if physical == INT64:
        return struct.pack(f"<{len(values)}q", *values)
    if physical == DOUBLE:
        return struct.pack(f"<{len(values)}d", *values)
    parts = []
    for data in values:
        parts.append(len(data).to_bytes(4, "little"))
        parts.append(data)
    return b"".join(parts)


def _levels(present: list[bool]) -> bytes:
    """Definition levels 0/1 as one bit-packed run of the RLE/bit-packed hybrid (bit width 1,
    values from the least significant bit of each byte), with the 4-byte length prefix of a
    v1 data page."""
    groups = (len(present) + 7) // 8
    bits = 0
    for i, here in enumerate(present):
        if here:
            bits |= 1 << i
    run = bytearray()
    _varint(groups << 1 | 1, run)
    run += bits.to_bytes(groups, "little")
    return struct.pack("<I", len(run)) + run


def _statistics(physical: int, text: bool, values: list[Any], nulls: int) -> list[Any] | None:
    """min_value/max_value (PLAIN-encoded, ordered as the column's type orders them: text as
    its UTF-8 bytes, which order as code points do) and null_count; none for binary columns
    (histograms) or where a NaN leaves no order."""
    if not values:
        return [(3, T_I64, nulls)]
    if physical == BYTE_ARRAY:
        if not text:
            return None
        low, high = min(values), max(values)
    elif physical == DOUBLE:
        if any(math.isnan(v) for v in values):
            return None
        # A zero bound is written -0.0 as a minimum, +0.0 as a maximum (the format's rule for
        # readers that compare them as bits).
        low, high = min(values) or -0.0, max(values) or 0.0
        low, high = struct.pack("<d", low), struct.pack("<d", high)
    else:
        low, high = struct.pack("<q", min(values)), struct.pack("<q", max(values))
    return [(3, T_I64, nulls), (5, T_BINARY, high), (6, T_BINARY, low)]


class ParquetWriter:
    """Writes one Parquet file into `sink` (a binary file object written from its start):
    `columns` are (name, kind, nullable) with kind one of KINDS; `metadata` the footer's
    key-value pairs. write_row_group per row group, close once (add_metadata before it)."""

    def __init__(self, sink: Any, columns: Iterable[tuple[str, str, bool]],
                 metadata: dict[str, str], version: str = "") -> None:
        self.sink = sink
        self.columns: list[tuple[str, int, bool, bool]] = []
        for name, kind, nullable in columns:
            if kind not in KINDS:
                raise ValueError(f"column {name}: kind {kind!r}, expected one of {list(KINDS)}")
            self.columns.append((name, *KINDS[kind], nullable))
        self.metadata = dict(metadata)
        self.created_by = CREATED_BY.format(version=version or "unknown")
        self.row_groups: list[list[Any]] = []
        self.num_rows = 0
        self._pos = 0
        self._write(MAGIC)

    def _write(self, data: bytes) -> None:
        self.sink.write(data)
        self._pos += len(data)

    def add_metadata(self, metadata: dict[str, str]) -> None:
        self.metadata.update(metadata)

    def write_row_group(self, data: dict[str, list[Any]], num_rows: int) -> None:
        """One row group: each column's `num_rows` values (None for a null), in one write."""
        if num_rows <= 0:
            return
        start = self._pos
        out = bytearray()
        chunks = []
        total_uncompressed = 0
        for name, physical, text, nullable in self.columns:
            values = data[name]
            if len(values) != num_rows:
                raise ValueError(f"column {name}: {len(values)} values in a row group of "
                                 f"{num_rows} rows")
            kept = [v for v in values if v is not None] if nullable else values
            if not nullable and None in values:
                raise ValueError(f"column {name} is not nullable, got a null")
            if text:
                kept = [v.encode() for v in kept]
            raw = _plain(physical, kept)
            if nullable:
                raw = _levels([v is not None for v in values]) + raw
            codec, page = UNCOMPRESSED, raw
            if len(raw) >= MIN_COMPRESS:
                packed = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: the gzip format
                squeezed = packed.compress(raw) + packed.flush()
                if len(squeezed) < len(raw):
                    codec, page = GZIP, squeezed
            header = bytearray()
            _struct([(1, T_I32, DATA_PAGE), (2, T_I32, len(raw)), (3, T_I32, len(page)),
                     (5, T_STRUCT, [(1, T_I32, num_rows), (2, T_I32, PLAIN),
                                    (3, T_I32, RLE), (4, T_I32, RLE)])], header)
            offset = start + len(out)
            out += header
            out += page
            uncompressed = len(header) + len(raw)
            compressed = len(header) + len(page)
            total_uncompressed += uncompressed
            meta = [(1, T_I32, physical), (2, T_LIST, (T_I32, [PLAIN, RLE])),
                    (3, T_LIST, (T_BINARY, [name])), (4, T_I32, codec),
                    (5, T_I64, num_rows), (6, T_I64, uncompressed), (7, T_I64, compressed),
                    (9, T_I64, offset),
                    (12, T_STRUCT, _statistics(physical, text, kept, num_rows - len(kept)))]
            chunks.append([(2, T_I64, offset), (3, T_STRUCT, meta)])
        self._write(bytes(out))
        self.row_groups.append([(1, T_LIST, (T_STRUCT, chunks)),
                                (2, T_I64, total_uncompressed), (3, T_I64, num_rows),
                                (5, T_I64, start), (6, T_I64, len(out)),
                                (7, T_I16, len(self.row_groups))])
        self.num_rows += num_rows

    def close(self) -> None:
        """The footer: the schema, the row groups, the key-value metadata."""
        schema: list[Any] = [[(4, T_BINARY, "schema"), (5, T_I32, len(self.columns))]]
        for name, physical, text, nullable in self.columns:
            schema.append([(1, T_I32, physical), (3, T_I32, OPTIONAL if nullable else REQUIRED),
                           (4, T_BINARY, name), (6, T_I32, UTF8 if text else None),
                           (10, T_STRUCT, [(1, T_STRUCT, [])] if text else None)])
        footer = bytearray()
        _struct([(1, T_I32, 2), (2, T_LIST, (T_STRUCT, schema)), (3, T_I64, self.num_rows),
                 (4, T_LIST, (T_STRUCT, self.row_groups)),
                 (5, T_LIST, (T_STRUCT, [[(1, T_BINARY, k), (2, T_BINARY, v)]
                                         for k, v in self.metadata.items()])),
                 (6, T_BINARY, self.created_by),
                 # Each column's min/max by its type's order (TypeDefinedOrder).
                 (7, T_LIST, (T_STRUCT, [[(1, T_STRUCT, [])] for _ in self.columns]))],
                footer)
        self._write(bytes(footer) + struct.pack("<I", len(footer)) + MAGIC)
