"""The Parquet archive of a run: schema, streaming writer, reader.

One file per run. Rows at three scopes (interval, stage, run), each with the encoded latency
and service-time histograms and the percentiles computed from them; at each scope, rows with
outcome "ok" merge the successful responses again, and are where headline latency comes from. Labels become constant
`label_<key>` string columns so that a directory of runs reads as one dataset in pyarrow or
DuckDB; everything else about the run goes into the Parquet key-value metadata under
`loadforge.`. The column names of DESIGN.md "Parquet results" are a contract with other tools.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hdrh.histogram import HdrHistogram

import loadforge
from loadforge.errors import InputError, ResultsError, RunError
from loadforge.results import histogram

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

SCHEMA_VERSION = 1
METADATA_PREFIX = "loadforge."
# metric: one observed value (observe/pollers.py); action: one timed action's outcome (observe/actions.py).
SCOPES = ("interval", "stage", "run", "metric", "action", "shard")
# Rows buffered before a row group is written: bounds the writer's memory whatever the run's
# length, and keeps row groups large enough for column statistics to be useful.
ROW_GROUP_ROWS = 1024
ROW_GROUP_BYTES = 1 << 20

# Arrow types by name: pyarrow is imported when a file is first written or read, not at
# start-up (it costs more CPU than a run's first second).
_BASE_FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("run_id", "string", False),
    ("scope", "string", False),
    ("stage", "string", False),
    ("name", "string", False),
    ("outcome", "string", False),
    ("backend", "string", False),
    ("start_ms", "int64", False),
    ("end_ms", "int64", False),
    ("count", "int64", False),
    # Only on rows merged over name and outcome (name = outcome = "*"), null elsewhere.
    ("scheduled", "int64", True),
    ("unsent", "int64", True),
    # Only on metric rows (the observed value, null when a poll failed) and action rows.
    ("value", "float64", True),
    ("latency_hdr", "binary", False),
    ("service_hdr", "binary", False),
    ("p50_us", "int64", False),
    ("p90_us", "int64", False),
    ("p99_us", "int64", False),
    ("p999_us", "int64", False),
    ("max_us", "int64", False),
    ("mean_us", "float64", False),
    ("service_p50_us", "int64", False),
    ("service_p99_us", "int64", False),
    # TCP connect times (µs) of the connections opened in the row's time, V2-compressed, on
    # the rows merged over name and outcome (name = outcome = "*"); null elsewhere.
    ("connect_hdr", "binary", True),
    # TLS handshake times (µs) of the handshakes ended in the row's time, on the same rows;
    # null over plain TCP.
    ("tls_hdr", "binary", True),
    # A sharded run's per-shard rows (scope "shard") carry the shard's index; "*" elsewhere.
    ("shard", "string", False),
)
BASE_COLUMNS = tuple(name for name, _, _ in _BASE_FIELDS)
# What a reader needs from any file, whatever later schema versions add.
REQUIRED_COLUMNS = (
    "run_id", "scope", "stage", "name", "outcome", "start_ms", "end_ms", "count",
    "latency_hdr", "service_hdr", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us",
)
# The outcome of the rows merged over the successful responses (status classes not in the
# profile's fail_status), at every scope, per request name and with name "*": the headline
# latency's source (DESIGN.md "Parquet results").
OK = "ok"
_EMPTY = histogram.new_histogram()


def _arrow() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, imported on first use."""
    import pyarrow
    import pyarrow.parquet

    return pyarrow, pyarrow.parquet
_LABEL_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def label_column(key: str) -> str:
    return f"label_{key}"


def check_label_key(key: str) -> None:
    # Label keys become column names; keep them to what SQL engines accept unquoted.
    if not _LABEL_KEY.match(key):
        raise InputError(
            f"label {key!r}: keys must be letters, digits and '_', not starting with a digit"
        )


def result_schema(label_keys: Iterable[str] = ()) -> pa.Schema:
    """The Arrow schema of a result file with these label keys (in sorted order)."""
    pa, _ = _arrow()
    fields = [pa.field(name, getattr(pa, dtype)(), nullable=nullable)
              for name, dtype, nullable in _BASE_FIELDS]
    for key in sorted(label_keys):
        check_label_key(key)
        fields.append(pa.field(label_column(key), pa.string(), nullable=False))
    return pa.schema(fields)


def _why(exc: OSError) -> str:
    # pyarrow's I/O errors carry the errno in their text only ("[errno 28] No space ...").
    if exc.errno == errno.ENOSPC or f"[errno {errno.ENOSPC}]" in str(exc):
        return "disk full"
    return str(exc.strerror or exc)


# Disk space set aside beside a partial result: given back when the disk fills, so that the
# row group being written, the stage and run rows and the footer still fit. A file whose
# footer cannot be written is unreadable, and loses everything before it.
SPARE_BYTES = 1 << 20
SPARE_MIN_BYTES = 16 << 10


class _SpareSpaceFile(io.RawIOBase):
    """The partial result file (what pyarrow writes to), with space set aside beside it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.spare_path = path + ".spare"
        self.disk_full = False
        self._pos = 0
        # Read too: copy_to() recovers what was written when the folder is removed mid-run.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        fs = os.fstatvfs(self._fd)
        # A nearly full disk: set aside three quarters of what it has, or nothing.
        size = min(SPARE_BYTES, fs.f_bavail * fs.f_frsize * 3 // 4)
        if size >= SPARE_MIN_BYTES:
            try:
                fd = os.open(self.spare_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                             0o600)
                try:
                    os.posix_fallocate(fd, 0, size)
                finally:
                    os.close(fd)
            except OSError:
                self.release()

    def release(self) -> bool:
        """Give the space set aside back; False if there was none left."""
        try:
            os.remove(self.spare_path)
            return True
        except OSError:
            return False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            try:
                done += os.write(self._fd, view[done:])
            except OSError as exc:
                if exc.errno != errno.ENOSPC or not self.release():
                    raise
                self.disk_full = True
        self._pos += done
        return done

    def tell(self) -> int:
        return self._pos

    def unlinked(self) -> bool:
        """Whether the file was removed (its folder deleted) while open: writes still land,
        in a file no name reaches."""
        try:
            return os.fstat(self._fd).st_nlink == 0
        except OSError:
            return True

    def free_bytes(self) -> int:
        try:
            fs = os.fstatvfs(self._fd)
        except OSError:
            return 0
        return fs.f_bavail * fs.f_frsize

    def copy_to(self, path: str) -> None:
        """Copy what was written into a new file at `path` (flushed to disk)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            offset = 0
            while offset < self._pos:
                chunk = os.pread(self._fd, min(1 << 20, self._pos - offset), offset)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                offset += len(chunk)
        finally:
            os.close(fd)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
            self.release()
        super().close()


class ResultWriter:
    """Streams rows of one run into `path`, via `path + ".partial"` renamed on close().

    A file at `path` is therefore always complete; a crashed run leaves only a `.partial`.
    Use as a context manager: a clean exit closes (and publishes) the file, an exception
    aborts it (the partial file is removed).
    """

    def __init__(
        self,
        path: str,
        run_id: str,
        metadata: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.partial_path = self.path + ".partial"
        self.run_id = run_id
        self.labels = dict(labels or {})
        for key in self.labels:
            check_label_key(key)
        # Built, with pyarrow, when the first rows are written.
        self.schema: pa.Schema | None = None
        columns = list(BASE_COLUMNS) + [label_column(k) for k in sorted(self.labels)]
        self.rows_written = 0
        # Why writing stopped (a full disk); rows written before stay, later ones are dropped.
        self.failure: str | None = None
        self.published = False
        self._broken = False        # a write failed even into the space set aside
        self._buffer: dict[str, list[Any]] = {name: [] for name in columns}
        self._buffered = 0
        self._buffered_bytes = 0

        kv: dict[str, str] = {
            "host": socket.gethostname(),
            "engine": "",
            "start_time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "profile": "",
        }
        for key, value in (metadata or {}).items():
            key = key.removeprefix(METADATA_PREFIX)
            kv[key] = value if isinstance(value, str) else json.dumps(value)
        kv.update(
            run_id=run_id,
            version=loadforge.__version__,
            schema_version=str(SCHEMA_VERSION),
            labels=json.dumps(self.labels, sort_keys=True),
        )
        self.metadata = kv
        self._writer: pq.ParquetWriter | None = None
        self._closed = False
        parent = os.path.dirname(self.path)
        try:
            if parent:
                os.makedirs(parent, exist_ok=True)
            self._file = _SpareSpaceFile(self.partial_path)
            fs = os.statvfs(self.partial_path)
            if fs.f_bavail * fs.f_frsize < SPARE_MIN_BYTES:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            if getattr(self, "_file", None) is not None:
                self._file.close()
                self._remove_partial()
            if _why(exc) == "disk full":
                raise RunError(f"results {self.path}: cannot write (disk full)") from None
            raise InputError(f"results {self.path}: cannot write ({exc.strerror or exc})") from exc

    def _open(self) -> pq.ParquetWriter:
        """The Parquet writer, made with the first row group (or at close)."""
        if self._writer is None:
            _, parquet = _arrow()
            self.schema = result_schema(self.labels).with_metadata(
                {METADATA_PREFIX + k: v for k, v in self.metadata.items()})
            self._writer = parquet.ParquetWriter(self._file, self.schema, compression="zstd")
        return self._writer

    def write(self, rows: list[dict[str, Any]], last: bool = False) -> bool:
        """Append rows. Each row: scope, stage, name, outcome, start_ms, end_ms, count,
        latency and service (HdrHistogram), optional scheduled, unsent, backend. Returns
        whether the rows were taken.

        Once the disk has filled (`failure`), rows are dropped, except the run's `last` ones
        (its stage and run rows), which go into the space set aside for them."""
        if self._closed:
            raise ValueError(f"results {self.path}: writer already closed")
        if self._broken or (self.failure and not last):
            return False
        if not last:
            self._check_disk()
        buf = self._buffer
        for row in rows:
            scope = row["scope"]
            if scope not in SCOPES:
                raise ValueError(f"row scope {scope!r}, expected one of {SCOPES}")
            # Metric and action rows carry no latency: empty histograms keep columns non-null.
            latency: HdrHistogram = row.get("latency") or _EMPTY
            service: HdrHistogram = row.get("service") or _EMPTY
            lat = histogram.stats(latency)
            svc = histogram.stats(service)
            buf["run_id"].append(self.run_id)
            buf["scope"].append(scope)
            buf["stage"].append(row["stage"])
            buf["name"].append(row["name"])
            buf["outcome"].append(row["outcome"])
            buf["backend"].append(row.get("backend", "*"))
            buf["shard"].append(row.get("shard", "*"))
            buf["start_ms"].append(int(row["start_ms"]))
            buf["end_ms"].append(int(row["end_ms"]))
            buf["count"].append(int(row["count"]))
            buf["scheduled"].append(row.get("scheduled"))
            buf["unsent"].append(row.get("unsent"))
            buf["value"].append(row.get("value"))
            lat_hdr, svc_hdr = histogram.encode(latency), histogram.encode(service)
            buf["latency_hdr"].append(lat_hdr)
            buf["service_hdr"].append(svc_hdr)
            connect: HdrHistogram | None = row.get("connect")
            buf["connect_hdr"].append(None if connect is None else histogram.encode(connect))
            handshakes: HdrHistogram | None = row.get("tls")
            buf["tls_hdr"].append(None if handshakes is None else histogram.encode(handshakes))
            self._buffered_bytes += len(lat_hdr) + len(svc_hdr)
            buf["p50_us"].append(lat["p50"])
            buf["p90_us"].append(lat["p90"])
            buf["p99_us"].append(lat["p99"])
            buf["p999_us"].append(lat["p999"])
            buf["max_us"].append(lat["max"])
            buf["mean_us"].append(lat["mean"])
            buf["service_p50_us"].append(svc["p50"])
            buf["service_p99_us"].append(svc["p99"])
            for key, value in self.labels.items():
                buf[label_column(key)].append(value)
            self._buffered += 1
            # A row group by rows or by bytes, so memory stays flat on long runs whatever
            # the rows per interval.
            if self._buffered >= ROW_GROUP_ROWS or self._buffered_bytes >= ROW_GROUP_BYTES:
                self._flush()
        return True

    def _check_disk(self) -> None:
        """Once per interval: a disk filled by others, or the result's folder removed, stops
        the run now (`failure`), not when the rows buffered meet it at the end. What the run
        measured still goes into the space set aside (or, for a removed folder, into the
        folder made again at close)."""
        if self._file.unlinked():
            self.failure = (f"results {self.path}: its folder was removed during the run "
                            f"after {self.rows_written + self._buffered} rows")
        elif self._file.free_bytes() < SPARE_MIN_BYTES:
            self.failure = (f"results {self.path}: disk full after "
                            f"{self.rows_written + self._buffered} rows")

    def _flush(self) -> None:
        if not self._buffered or self._closed:
            return
        pa, _ = _arrow()
        try:
            writer = self._open()
            table = pa.table(self._buffer, schema=self.schema)
            writer.write_table(table, row_group_size=max(self._buffered, 1))
        except OSError as exc:
            # pyarrow closes the file on a failed write: nothing more can be written to it.
            self._broken = True
            self.failure = self.failure or (f"results {self.path}: cannot write ({_why(exc)}) "
                                            f"after {self.rows_written} rows")
        else:
            self.rows_written += self._buffered
            if self._file.disk_full and not self.failure:
                self.failure = (f"results {self.path}: disk full after {self.rows_written} "
                                "rows")
        # Cleared in place: write() holds a reference to these lists across a flush.
        for column in self._buffer.values():
            column.clear()
        self._buffered = 0
        self._buffered_bytes = 0

    def close(self, end_metadata: dict[str, str] | None = None) -> str:
        """Write what is buffered, close, and publish the file at `path`. Returns the path.

        end_metadata: key-value metadata known only at the end (how the run ended). After a
        write failure the rows written before it are still published when the footer fits;
        `published` says whether a file is at `path`."""
        if self._closed:
            return self.path
        self._flush()
        self._closed = True
        if self._file.unlinked() and not self.failure:
            self.failure = f"results {self.path}: its folder was removed during the run"
        end_metadata = dict(end_metadata or {})
        if self.failure:
            # A write that failed only now (the last rows met a full disk) makes the file
            # incomplete too: its metadata says so, whatever the caller knew before.
            end_metadata["complete"] = "false"
            end_metadata.setdefault("incomplete_reason", self.failure)
        try:
            if self._broken:
                raise OSError(errno.EIO, "a write failed")
            writer = self._open()
            if end_metadata:
                writer.add_key_value_metadata(
                    {METADATA_PREFIX + k: v for k, v in end_metadata.items()})
            writer.close()
        except OSError as exc:
            self.failure = self.failure or f"results {self.path}: cannot write ({_why(exc)})"
            self._file.close()
            self._remove_partial()
            return self.path
        try:
            if self._file.unlinked():
                # The folder went away under the run: make it again and save what was written.
                parent = os.path.dirname(self.path)
                if parent:
                    os.makedirs(parent, exist_ok=True)
                self._file.copy_to(self.partial_path)
            self._file.close()
            os.replace(self.partial_path, self.path)
        except OSError as exc:
            self._file.close()
            self._remove_partial()
            self.failure = (f"{self.failure or f'results {self.path}: cannot write'}; "
                            f"the result could not be saved ({_why(exc)})")
            return self.path
        self.published = True
        return self.path

    def _remove_partial(self) -> None:
        try:
            os.remove(self.partial_path)
        except OSError:
            pass

    def abort(self) -> None:
        """Close without publishing; removes the partial file."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._writer is not None:
                self._writer.close()
        except OSError:
            pass
        finally:
            self._file.close()
            self._remove_partial()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass
class Result:
    """One run read back: metadata without the `loadforge.` prefix, labels, the whole table."""

    path: str
    run_id: str
    metadata: dict[str, str]
    labels: dict[str, str]
    table: pa.Table
    _keys: list[tuple[str, str, str, str]] | None = field(default=None, init=False, repr=False)
    _has_ok: bool | None = field(default=None, init=False, repr=False)

    @property
    def has_ok_rows(self) -> bool:
        """Whether the file carries the merged "ok" rows; files written before them do not,
        and their readers merge the successful outcome rows themselves (`headline_row`)."""
        if self._has_ok is None:
            self.rows("run", name=None, outcome=None)   # builds the key list
            self._has_ok = any(oc == OK and sc in ("interval", "stage", "run")
                               for sc, _, _, oc in self._keys or [])
        return self._has_ok

    def rows(
        self,
        scope: str,
        stage: str | None = None,
        name: str | None = "*",
        outcome: str | None = "*",
    ) -> list[dict[str, Any]]:
        """Rows of a scope, in file order; None for stage/name/outcome means any value."""
        # Matched in Python on the four key columns, then only the matching runs of rows are
        # converted: pyarrow.compute alone takes longer to import than a run's file to scan.
        if self._keys is None:
            self._keys = list(zip(*(self.table.column(c).to_pylist()
                                    for c in ("scope", "stage", "name", "outcome")),
                                  strict=True))
        keys = self._keys

        def matches(key: tuple[str, str, str, str]) -> bool:
            sc, st, nm, oc = key
            return (sc == scope and (stage is None or st == stage)
                    and (name is None or nm == name) and (outcome is None or oc == outcome))

        rows: list[dict[str, Any]] = []
        i = 0
        while i < len(keys):
            if not matches(keys[i]):
                i += 1
                continue
            j = i + 1
            while j < len(keys) and matches(keys[j]):
                j += 1
            rows += self.table.slice(i, j - i).to_pylist()
            i = j
        return rows

    def histogram(self, row: dict[str, Any], column: str = "latency_hdr") -> HdrHistogram:
        what = (
            f"results {self.path}: {column} of {row.get('scope')} row "
            f"stage={row.get('stage')!r} name={row.get('name')!r} "
            f"outcome={row.get('outcome')!r} start_ms={row.get('start_ms')}"
        )
        return histogram.decode(row[column], what=what)

    def service_histogram(self, row: dict[str, Any]) -> HdrHistogram:
        return self.histogram(row, "service_hdr")


def outcome_row(row: dict[str, Any]) -> bool:
    """A row that counts one outcome of one request name (not a merged "*" or "ok" row)."""
    return row["name"] != "*" and row["outcome"] not in ("*", OK)


def headline_row(row: dict[str, Any], has_ok_rows: bool, error_outcomes: set[str]) -> bool:
    """Whether `row`'s latency is part of its scope's headline latency (successful responses,
    all request names): the merged "ok" row with name "*"; in a file without "ok" rows, each
    outcome row of a successful status. Either way the same buckets, merged."""
    if has_ok_rows:
        return row["name"] == "*" and row["outcome"] == OK
    return outcome_row(row) and row["outcome"] not in error_outcomes


def check_regular_file(path: str, what: str = "results") -> None:
    """A ResultsError unless `path` is a regular file (through symlinks): a FIFO or a device
    would block the reader, or never end."""
    if "\0" in path:
        raise ResultsError(f"{what} {path!r}: the path holds a NUL byte")
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ResultsError(f"{what} {path}: a loop of symbolic links; point it at a "
                               "file") from None
        if exc.errno == errno.ENOENT:
            raise ResultsError(f"{what} {path}: no such file") from None
        raise ResultsError(f"{what} {path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ResultsError(f"{what} {path}: is a directory, expected a .parquet file")
    if not stat.S_ISREG(st.st_mode):
        raise ResultsError(f"{what} {path}: not a regular file (a FIFO, socket or device); "
                           "expected a .parquet file")


def _read_metadata(path: str) -> dict[str, str]:
    """The loadforge.* footer metadata of `path` (prefix removed), validated."""
    pa, pq = _arrow()
    check_regular_file(path)
    try:
        footer = pq.read_metadata(path)
    except PermissionError as exc:
        raise ResultsError(f"results {path}: cannot read ({exc.strerror})") from exc
    except (pa.ArrowException, OSError, ValueError) as exc:
        # A damaged footer can fail in decoding too (UnicodeDecodeError is a ValueError).
        raise ResultsError(f"results {path}: not a Parquet file ({exc})") from exc
    raw = footer.metadata or {}
    meta: dict[str, str] = {}
    for key, value in raw.items():
        k = key.decode("utf-8", "replace")
        if k.startswith(METADATA_PREFIX):
            meta[k.removeprefix(METADATA_PREFIX)] = value.decode("utf-8", "replace")
    if "schema_version" not in meta:
        raise ResultsError(
            f"results {path}: a Parquet file but not a loadforge result (no loadforge metadata)"
        )
    try:
        version = int(meta["schema_version"])
    except ValueError:
        raise ResultsError(
            f"results {path}: schema version {meta['schema_version']!r} is not a number"
        ) from None
    if version > SCHEMA_VERSION:
        raise ResultsError(
            f"results {path}: written with result schema {version} by loadforge "
            f"{meta.get('version', '?')}; this loadforge reads up to schema {SCHEMA_VERSION}"
        )
    return meta


def read_result(path: str) -> Result:
    """Read a whole result file. Every problem is a ResultsError naming the file."""
    path = os.fspath(path)
    meta = _read_metadata(path)
    pa, pq = _arrow()
    try:
        # One file: ParquetFile reads it without pyarrow.dataset (and pyarrow.compute).
        with pq.ParquetFile(path) as pf:
            table = pf.read()
        # Strings that are not UTF-8, offsets out of range: found once here, not as a
        # UnicodeDecodeError in whichever fold converts the column first.
        table.validate(full=True)
    except (pa.ArrowException, OSError, ValueError, MemoryError) as exc:
        # A damaged page may claim any size: MemoryError is a damaged file too.
        raise ResultsError(f"results {path}: unreadable Parquet data "
                           f"({exc or type(exc).__name__})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ResultsError(f"results {path}: missing required columns {', '.join(missing)}")
    _check_column_types(path, table)
    _check_json_metadata(path, meta)
    labels = json.loads(meta.get("labels", "{}"))
    run_id = meta.get("run_id", "")
    if not run_id and table.num_rows:
        run_id = str(table["run_id"][0])
    return Result(
        path=path,
        run_id=run_id,
        metadata=meta,
        labels={str(k): str(v) for k, v in labels.items()},
        table=table,
    )


def _check_column_types(path: str, table: pa.Table) -> None:
    """The columns every reader folds have the types the writer gives them: a `count` of
    strings is a file this loadforge did not write, said once here, not as a ValueError deep
    in a fold."""
    pa, _ = _arrow()
    schema = table.schema
    expected = {name: dtype for name, dtype, _ in _BASE_FIELDS}
    nullable = {name: can for name, _, can in _BASE_FIELDS}
    for name in REQUIRED_COLUMNS + ("scheduled", "unsent", "value", "connect_hdr", "tls_hdr",
                                    "backend", "shard"):
        if name not in schema.names:
            continue
        got = schema.field(name).type
        want = getattr(pa, expected[name])()
        fits = (got == want or (want == pa.string() and pa.types.is_large_string(got))
                or (want == pa.binary() and pa.types.is_large_binary(got))
                or (pa.types.is_integer(want) and pa.types.is_integer(got))
                or (pa.types.is_floating(want) and (pa.types.is_floating(got)
                                                     or pa.types.is_integer(got))))
        if not fits:
            raise ResultsError(f"results {path}: column {name} holds {got}, expected "
                               f"{expected[name]}: not a result this loadforge wrote")
        if not nullable[name] and table.column(name).null_count:
            raise ResultsError(f"results {path}: column {name} has empty (null) values: not a "
                               "result this loadforge wrote")


# Metadata values that hold JSON, and the type each must have: parsed once here, so that a
# value nested too deeply (RecursionError) or of the wrong shape is one error naming the file.
_JSON_METADATA: dict[str, type | tuple[type, ...]] = {"labels": dict, "stages": list, "slo_flags": dict, "flows": dict,
                  "tls": dict, "shards": dict}


def _check_json_metadata(path: str, meta: dict[str, str]) -> None:
    for key, kind in _JSON_METADATA.items():
        if key not in meta:
            continue
        try:
            value = json.loads(meta[key])
        except ValueError as exc:
            raise ResultsError(f"results {path}: metadata loadforge.{key} is not JSON "
                               f"({exc})") from None
        except RecursionError:
            raise ResultsError(f"results {path}: metadata loadforge.{key} is nested too "
                               "deeply") from None
        if not isinstance(value, kind):
            raise ResultsError(f"results {path}: metadata loadforge.{key} is not a JSON "
                               f"{'object' if kind is dict else 'array'}")
        if isinstance(value, list) and not all(isinstance(v, dict) for v in value):
            raise ResultsError(f"results {path}: metadata loadforge.stages is not an array of "
                               "objects")


def start_key(path: str, meta: dict[str, str]) -> tuple[float, str]:
    """Orders runs by start time (unreadable times last), then by path."""
    start = meta.get("start_time", "")
    try:
        moment = datetime.fromisoformat(start)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return (moment.timestamp(), path)
    except ValueError:
        return (float("inf"), path)


def find_results(paths: list[str]) -> list[str]:
    """Expand directories to their *.parquet results, oldest run first; files stay as given.

    Every file is checked to be a loadforge result (footer only, cheap).
    """
    found: list[str] = []
    for given in paths:
        given = os.fspath(given)
        if os.path.isdir(given):
            files = [
                os.path.join(given, entry)
                for entry in os.listdir(given)
                if entry.endswith(".parquet") and os.path.isfile(os.path.join(given, entry))
            ]
            if not files:
                raise ResultsError(f"results {given}: directory holds no .parquet files")
            files.sort(key=lambda f: start_key(f, _read_metadata(f)))
            found.extend(files)
        else:
            _read_metadata(given)
            found.append(given)
    return found
