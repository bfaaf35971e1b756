"""The engine's input tables: feeders and request templates compiled for `engine/template.pxi`.

The config half (`config/feeders.py`) parses `[[feeders]]` and templates and loads the rows;
this module turns them into what the engine reads, next to the engine's own declarations
(`engine/template.pxd`), so both ends of the format live together.

What the engine gets (`engine/template.pxi`), so that it runs no Python per request:

- each feeder as one table: a header, a uint64 offsets table (column-major: view v of row r
  is entry v * rows + r; one entry per cell plus one) and one contiguous data buffer holding
  every cell's bytes. A table of `MMAP_MIN_BYTES` or more is written to a file the workers
  memory-map (read-only, shared in the page cache); a smaller one, or any in a sharded run,
  travels inline in the worker spec.
- each templated request as segments: literal bytes, a cell (feeder, view), or the body's
  Content-Length, computed by the engine when it assembles the request into the connection's
  preallocated buffer. A request without slots stays one pre-encoded bytes object. Over
  HTTP/2 (compile_h2_templates) the segments are the templated header values (:path among
  them) and the body, each a part the engine expands into the stream slot's buffer.

A table column is a *view*: a feeder column in one encoding. A value in the path is
percent-encoded (every byte but RFC 3986's unreserved `A-Za-z0-9-._~`), so a row can never
break the request line; a value in a header must be printable ASCII (a CR, LF or other control
character is refused at load, exit 2, naming the feeder, row and column); a value in the body
goes in as it is (the engine frames the body by its computed Content-Length), except inside a
string of a JSON body (`is_json_body`, `body_encodings`), where it is JSON-string-escaped.

Rows follow the run-wide arrival sequence: the n-th arrival (all workers together) of the
requests that use a feeder takes feeder index n; `sequential` takes row n mod rows, `random`
a row drawn from (seed, n) by splitmix64 (reproducible across runs and worker counts),
`unique` row n, and the run ends at the first arrival (of any request) after the one that
took the last row. A closed-model stage's feeder indices follow the open-model stages' and
interleave by worker.
"""

from __future__ import annotations

import os
import re
import struct
from array import array
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any
from urllib.parse import quote

from loadforge.config.feeders import (
    HEADER,
    JSON,
    ORDER_CODE,
    ORDERS,
    PATH,
    RAW,
    Feeder,
    Parts,
    Slot,
    Template,
    json_string,
    load_rows,
    template_body_encodings,
)
from loadforge.errors import ProfileError

MMAP_MIN_BYTES = 1 << 20
TABLE_MAGIC = b"LFFT"
TABLE_VERSION = 1
# magic, version, views, padding, rows, offsets start, data start (the offsets 8-aligned)
TABLE_HEADER = struct.Struct("<4sIIIQQQ")
MAX_TEMPLATE_BYTES = 1 << 20       # the largest request a template can expand to

@dataclass
class Table:
    """A feeder compiled for the engine: views are (column, encoding) pairs."""

    feeder: Feeder
    rows: int
    views: list[tuple[str, str]]
    widths: list[int]                  # the longest value of each view
    data: bytes | None = None          # inline table (header included)
    file: str | None = None            # or a file the workers memory-map

    def spec(self) -> tuple[Any, ...]:
        """What a worker spec carries: (inline bytes or None, file or None, rows, views,
        order code, seed)."""
        return (self.data, self.file, self.rows, len(self.views),
                ORDER_CODE[self.feeder.order], self.feeder.seed)


@dataclass
class Compiled:
    """Every feeder table and, per request, None (fixed) or its engine segments."""

    tables: list[Table] = field(default_factory=list)
    templates: list[tuple[list[tuple[Any, ...]], int, int] | None] = field(default_factory=list)
    tempdir: str | None = None
    # HTTP/2 (compile_h2_templates): per request None (fixed) or what the engine's h2_setup
    # takes for it: its header block (a templated value b""), its body (b"") and its parts,
    # (header index or -1 for the body, first segment, end segment) of its template.
    h2: list[tuple[list[tuple[bytes, bytes]], bytes, list[tuple[int, int, int]]] | None] = \
        field(default_factory=list)

    def cleanup(self) -> None:
        if self.tempdir:
            for name in os.listdir(self.tempdir):
                os.unlink(os.path.join(self.tempdir, name))
            os.rmdir(self.tempdir)
            self.tempdir = None


# -- the row an arrival takes -----------------------------------------------------------------

_MASK = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def row_for(index: int, order: str, seed: int, rows: int) -> int | None:
    """The row feeder index `index` takes (the engine's `feed_row`); None: `unique` is spent."""
    if order == "unique":
        return index if index < rows else None
    if order == "random":
        return splitmix64((seed * 0x9E3779B97F4A7C15 + index) & _MASK) % rows
    return index % rows


# -- compiling --------------------------------------------------------------------------------

_UNRESERVED_TEXT = re.compile(r"[A-Za-z0-9\-._~]*")
_PRINTABLE_TEXT = re.compile(r"[\x20-\x7e\t]*")
# What a JSON string cannot hold as it is (RFC 8259 section 7), and lone surrogates: compiled
# (re's cache) where a feeder's values go into JSON, not at every run's start.
_JSON_ESCAPED = r'["\\\x00-\x1f\ud800-\udfff]'


def _encode_column(values: tuple[str, ...], encoding: Any, feeder: str, column: str,
                   before: int, where: str) -> tuple[bytes, list[int]]:
    """A chunk of one column in one encoding: its bytes, concatenated, and each value's
    length. Checked over the whole chunk at once; value by value only when it must be.
    An encoding that is a callable (Template.body_encoder) makes each value's bytes."""
    if callable(encoding):
        made = [encoding(v) for v in values]
        return b"".join(made), list(map(len, made))
    joined = "".join(values)
    if encoding == HEADER and not _PRINTABLE_TEXT.fullmatch(joined):
        i = next(i for i, v in enumerate(values) if not _PRINTABLE_TEXT.fullmatch(v))
        raise ProfileError(
            f"{where}: feeder {feeder!r} row {before + i + 1} column {column!r} has a value "
            "with CR, LF or another control or non-ASCII character, which cannot go in a "
            "header")
    if encoding == PATH and not _UNRESERVED_TEXT.fullmatch(joined):
        encoded = [quote(v.encode("utf-8", "surrogateescape"), safe="") for v in values]
        return "".join(encoded).encode(), list(map(len, encoded))
    if encoding == JSON and re.search(_JSON_ESCAPED, joined):
        escaped = [json_string(v) for v in values]
        return b"".join(escaped), list(map(len, escaped))
    if joined.isascii():
        return joined.encode(), list(map(len, values))
    data = [v.encode("utf-8", "surrogateescape") for v in values]
    return b"".join(data), list(map(len, data))


def _compile_table(feeder: Feeder, views: list[tuple[str, str]] | None, where: str,
                   out: Compiled, inline: bool) -> Table:
    """One feeder's table: `views` (column, encoding) pairs, or None for every column of the
    file as it is (RAW), in the file's order. Written to a file in out.tempdir when large."""
    columns, rows = load_rows(feeder, where)
    if views is None:
        views = [(c, RAW) for c in columns]
        src = list(range(len(columns)))
    else:
        for column, _ in views:
            if column not in columns:
                raise ProfileError(f"{where}: {feeder.file} has no column {column!r} (slot "
                                   f"{{{feeder.name}.{column}}}); its columns are "
                                   f"{', '.join(columns)}")
        src = [columns.index(c) for c, _ in views]
    # Column-major: view v's cells are rows v*R .. v*R + R-1 of the offsets table.
    lengths = [array("Q") for _ in views]
    chunks: list[list[bytes]] = [[] for _ in views]
    widths = [0] * len(views)
    nrows = 0
    for chunk in rows:
        cols = list(zip(*chunk, strict=True))
        for v, (column, enc) in enumerate(views):
            data, lens = _encode_column(cols[src[v]], enc, feeder.name, column, nrows, where)
            chunks[v].append(data)
            lengths[v].extend(lens)
            widths[v] = max(widths[v], max(lens))
        nrows += len(chunk)
    if not nrows:
        raise ProfileError(f"{where}: {feeder.file} has no rows")
    offsets = array("Q", [0])
    for v in range(len(views)):
        running = accumulate(lengths[v], initial=offsets[-1])
        next(running)
        offsets.extend(running)
    start = TABLE_HEADER.size
    data_start = start + 8 * len(offsets)
    blob = b"".join([TABLE_HEADER.pack(TABLE_MAGIC, TABLE_VERSION, len(views), 0, nrows,
                                       start, data_start), offsets.tobytes(),
                     *(d for view_chunks in chunks for d in view_chunks)])
    del chunks, offsets, lengths
    table = Table(feeder, nrows, views, widths)
    if len(blob) >= MMAP_MIN_BYTES and not inline:
        if out.tempdir is None:
            # tempfile (and shutil with it: 2 ms) loads where a table goes to a file
            import tempfile

            out.tempdir = tempfile.mkdtemp(prefix="loadforge-feeders-")
        table.file = os.path.join(out.tempdir, f"{len(out.tables)}.table")
        with open(table.file, "wb") as f:
            f.write(blob)
    else:
        table.data = blob
    return table


def compile_rows(feeders: tuple[Feeder, ...], label: str, inline: bool = False) -> Compiled:
    """The tables scripted flows read rows from (user.row): table i is feeders[i], every
    column as it is in the file (RAW), so that a worker decodes the one row an arrival takes,
    when it takes it, from the shared (memory-mapped when large) table."""
    out = Compiled()
    try:
        for i, feeder in enumerate(feeders):
            out.tables.append(_compile_table(feeder, None, f"{label}: feeders[{i}]", out,
                                             inline))
    except BaseException:
        out.cleanup()
        raise
    return out


def _compile_views(feeders: tuple[Feeder, ...], templates: list[Template | None], label: str,
                   inline: bool) -> tuple[Compiled, dict[tuple[str, str, str], tuple[int, int]]]:
    """The tables the templates' slots read, and each slot's (table, view) by (feeder,
    column, encoding)."""
    by_name = {f.name: f for f in feeders}
    used: dict[str, list[tuple[str, str]]] = {}
    for tpl in templates:
        if tpl is None:
            continue
        for parts, encs in [(tpl.path, PATH), (tpl.body, template_body_encodings(tpl)),
                            *[(p, HEADER) for _, p in tpl.headers]]:
            for i, p in enumerate(parts):
                enc = encs if isinstance(encs, str) else encs[i]
                if isinstance(p, Slot) and (p.column, enc) not in used.setdefault(p.feeder, []):
                    used[p.feeder].append((p.column, enc))
    out = Compiled()
    view_of: dict[tuple[str, str, str], tuple[int, int]] = {}
    try:
        for name, views in used.items():
            feeder = by_name[name]
            table = _compile_table(feeder, views,
                                   f"{label}: feeders[{feeders.index(feeder)}]", out, inline)
            for v, (column, enc) in enumerate(views):
                view_of[(name, column, enc)] = (len(out.tables), v)
            out.tables.append(table)
    except BaseException:
        out.cleanup()
        raise
    return out, view_of


def compile_templates(feeders: tuple[Feeder, ...], templates: list[Template | None],
                      heads: list[tuple[str, str, bool]], label: str,
                      inline: bool = False) -> Compiled:
    """Tables and engine segments for the requests. `heads[i]`: request i's request-line
    prefix ("GET /api"), the text between the path and its headers (" HTTP/1.1\\r\\nHost:
    ...\\r\\nUser-Agent: ...\\r\\n") and whether it sends a Content-Length without a body.
    `inline`: never a memory-mapped file (a sharded run sends the tables over the network)."""
    out, view_of = _compile_views(feeders, templates, label, inline)
    for tpl, (start_line, head_rest, needs_length) in zip(templates, heads, strict=True):
        if tpl is None:
            out.templates.append(None)
            continue
        segs: list[tuple[Any, ...]] = []
        size = 0

        def emit(parts: Parts, enc: str | list[str], segs: list[tuple[Any, ...]] = segs) -> int:
            return _emit(segs, parts, enc, view_of, out.tables)

        size += emit((start_line,), RAW)
        size += emit(tpl.path, PATH)
        size += emit((head_rest,), RAW)
        for name, parts in tpl.headers:
            size += emit((f"{name}: ",), RAW)
            size += emit(parts, HEADER)
            size += emit(("\r\n",), RAW)
        body_fixed = all(not isinstance(p, Slot) for p in tpl.body)
        body_len = sum(len(p) if isinstance(p, bytes) else len(str(p).encode())
                       for p in tpl.body if not isinstance(p, Slot))
        if (tpl.body or needs_length) and body_fixed:
            size += emit((f"Content-Length: {body_len}\r\n\r\n",), RAW)
        elif tpl.body:
            size += emit(("Content-Length: ",), RAW)
            segs.append((2,))
            size += 20
            size += emit(("\r\n\r\n",), RAW)
        else:
            size += emit(("\r\n",), RAW)
        body_from = len(segs)
        body: list[tuple[Any, ...]] = []      # not merged into the head's last literal
        size += _emit(body, tpl.body, template_body_encodings(tpl), view_of,
                      out.tables)
        segs += body
        if size > MAX_TEMPLATE_BYTES:
            raise ProfileError(f"{label}: a templated request may expand to {size:,} bytes; "
                               f"templates expand to at most {MAX_TEMPLATE_BYTES:,}")
        out.templates.append((segs, body_from, size))
    return out


# In an HTTP/2 header block given to compile_h2_templates: the body's length, computed.
BODY_LENGTH = None


def compile_h2_templates(feeders: tuple[Feeder, ...], templates: list[Template | None],
                         heads: list[list[tuple[str, Parts | None]] | None], label: str,
                         inline: bool = False) -> Compiled:
    """Tables, engine segments and HTTP/2 parts for the requests (out.h2). `heads[i]`:
    request i's HTTP/2 header block when it is templated, pseudo-headers first, names in
    lower case; each value literal text and slots (a slot in ":path" percent-encoded, in any
    other header checked as a header value), or BODY_LENGTH for the body's computed length.

    A templated request's segments are its templated header values, one part each, then its
    body, last (the length segment counts from body_from to the end): the engine expands
    them per stream into the stream slot's buffer, where the header block's entries for them
    and the stream's body point. Values without slots stay in the header block as bytes."""
    out, view_of = _compile_views(feeders, templates, label, inline)
    for tpl, head in zip(templates, heads, strict=True):
        if tpl is None or head is None:
            out.templates.append(None)
            out.h2.append(None)
            continue
        segs: list[tuple[Any, ...]] = []
        parts: list[tuple[int, int, int]] = []
        block: list[tuple[bytes, bytes]] = []
        size = 0
        for k, (name, value) in enumerate(head):
            if value is not None and all(not isinstance(p, Slot) for p in value):
                block.append((name.encode("latin-1"), b"".join(
                    p if isinstance(p, bytes) else str(p).encode("utf-8", "surrogateescape")
                    for p in value)))
                continue
            block.append((name.encode("latin-1"), b""))
            part: list[tuple[Any, ...]] = []      # not merged into the previous part
            if value is None:             # BODY_LENGTH
                part.append((2,))
                size += 20
            else:
                size += _emit(part, value, PATH if name == ":path" else HEADER, view_of,
                              out.tables)
            parts.append((k, len(segs), len(segs) + len(part)))
            segs += part
        body_from = len(segs)
        if tpl.body:
            body: list[tuple[Any, ...]] = []
            size += _emit(body, tpl.body, template_body_encodings(tpl), view_of,
                          out.tables)
            parts.append((-1, len(segs), len(segs) + len(body)))
            segs += body
        if size > MAX_TEMPLATE_BYTES:
            raise ProfileError(f"{label}: a templated request may expand to {size:,} bytes; "
                               f"templates expand to at most {MAX_TEMPLATE_BYTES:,}")
        out.templates.append((segs, body_from, size))
        out.h2.append((block, b"", parts))
    return out


def _emit(segs: list[tuple[Any, ...]], parts: Parts, enc: Any,
          view_of: dict[tuple[str, str, str], tuple[int, int]], tables: list[Table]) -> int:
    """Append parts as engine segments (adjacent literals merged); returns their largest
    size. `enc`: the slots' encoding, or each part's."""
    size = 0
    for i, p in enumerate(parts):
        if isinstance(p, Slot):
            t, v = view_of[(p.feeder, p.column, enc if isinstance(enc, str) else enc[i])]
            segs.append((1, t, v))
            size += tables[t].widths[v]
        else:
            b = p if isinstance(p, bytes) else p.encode("utf-8", "surrogateescape")
            if segs and segs[-1][0] == 0:
                segs[-1] = (0, segs[-1][1] + b)
            else:
                segs.append((0, b))
            size += len(b)
    return size


def open_table(spec: tuple[Any, ...]) -> tuple[Any, int, int, int, int, int, int]:
    """A worker's view of a table spec: (buffer, offsets start, data start, rows, views,
    order code, seed); a file is memory-mapped read-only."""
    import mmap

    data, file, rows, views, order, seed = spec
    if data is None:
        with open(file, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    magic, version, nviews, _, nrows, start, data_start = TABLE_HEADER.unpack_from(data, 0)
    if magic != TABLE_MAGIC or version != TABLE_VERSION or nviews != views or nrows != rows:
        raise ValueError("feeder table of another format")
    return data, start, data_start, rows, views, order, seed


class RowReader:
    """A compiled table read by Python one row at a time (scripted flows' user.row): the
    offsets and data stay in the table's buffer (memory-mapped when large, shared with every
    worker), and a row's values are decoded only when an arrival takes that row.

    `columns`: (name, view) pairs, the views to read; compile_rows' tables hold every column
    once, as it is in the file (RAW), never an encoded view (a path's percent-encoding)."""

    __slots__ = ("rows", "order", "seed", "_names", "_starts", "_offsets", "_data_start",
                 "_buf")

    def __init__(self, spec: tuple[Any, ...], columns: list[tuple[str, int]]) -> None:
        buf, start, data_start, rows, views, order, seed = open_table(spec)
        self._buf = buf                     # bytes, or an mmap: slicing either gives bytes
        self._offsets = memoryview(buf)[start:start + 8 * (rows * views + 1)].cast("Q")
        self._data_start = data_start
        self.rows = rows
        self.order = ORDERS[order]
        self.seed = seed
        self._names = [name for name, _ in columns]
        self._starts = [view * rows for _, view in columns]

    def row(self, r: int) -> dict[str, str]:
        """Row r's values by column name, decoded as load_rows read them."""
        offsets, buf, base = self._offsets, self._buf, self._data_start
        out = {}
        for name, k in zip(self._names, self._starts, strict=True):
            k += r
            out[name] = buf[base + offsets[k]:base + offsets[k + 1]].decode(
                "utf-8", "surrogateescape")
        return out


def raw_columns(table: Table) -> list[tuple[str, int]]:
    """(column, view) of every RAW view of a table: what a RowReader of it reads."""
    return [(column, v) for v, (column, enc) in enumerate(table.views) if enc == RAW]
