"""The Parquet archive of a run: the streaming writer, and the archive's public face.

One file per run. Rows at three scopes (interval, stage, run), each with the encoded latency
and service-time histograms and the percentiles computed from them; at each scope, rows with
outcome "ok" merge the successful responses again, and are where headline latency comes from. Labels become constant
`label_<key>` string columns so that a directory of runs reads as one dataset in pyarrow or
DuckDB; everything else about the run goes into the Parquet key-value metadata under
`loadforge.`. The column names of DESIGN.md "Parquet results" are a contract with other tools.

The schema is results/schema.py's, the reader results/reader.py's; both are re-exported here,
where the rest of loadforge imports them from (the reader's names on first use: a run writes
its file without the reader's module).
"""

from __future__ import annotations

import errno
import json
import os
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import loadforge
from loadforge.engine import histogram
from loadforge.results.parquet import ParquetWriter
from loadforge.results.partial import SPARE_MIN_BYTES, SpareSpaceFile, claim, why
from loadforge.results.schema import (
    BASE_COLUMNS,
    BASE_FIELDS,
    METADATA_PREFIX,
    OK,
    REQUIRED_COLUMNS,
    SCHEMA_VERSION,
    SCOPES,
    check_label_key,
    label_column,
    outcome_row,
    result_schema,
)

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram

    from loadforge.results.reader import (
        Result,
        check_regular_file,
        find_results,
        read_result,
        start_key,
    )

# The reader's names, re-exported on first use (PEP 562).
_READER = ("Result", "check_regular_file", "find_results", "read_result", "start_key")

__all__ = [
    "BASE_COLUMNS",
    "BASE_FIELDS",
    "METADATA_PREFIX",
    "OK",
    "REQUIRED_COLUMNS",
    "ROW_GROUP_BYTES",
    "ROW_GROUP_ROWS",
    "SCHEMA_VERSION",
    "SCOPES",
    "Result",
    "ResultWriter",
    "check_label_key",
    "check_regular_file",
    "find_results",
    "label_column",
    "outcome_row",
    "read_result",
    "result_schema",
    "start_key",
]

# Rows buffered before a row group is written: bounds the writer's memory whatever the run's
# length, and keeps row groups large enough for column statistics to be useful.
ROW_GROUP_ROWS = 1024
ROW_GROUP_BYTES = 1 << 20


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
        claimed: SpareSpaceFile | None = None,
    ) -> None:
        """claimed: the partial file, claimed before the run started (partial.claim);
        claimed here when not given."""
        self.path = os.fspath(path)
        self.partial_path = self.path + ".partial"
        self.run_id = run_id
        self.labels = dict(labels or {})
        for key in self.labels:
            check_label_key(key)
        # Labels are constant string columns, after the base columns, in sorted order.
        self.fields = list(BASE_FIELDS) + [(label_column(k), "string", False)
                                           for k in sorted(self.labels)]
        columns = [name for name, _, _ in self.fields]
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
        self._writer: ParquetWriter | None = None
        self._empty_histogram: HdrHistogram | None = None
        self._closed = False
        self._file = claimed if claimed is not None else claim(self.path)

    def _open(self) -> ParquetWriter:
        """The Parquet writer (results/parquet.py), made with the first row group (or at
        close)."""
        if self._writer is None:
            self._writer = ParquetWriter(
                self._file, self.fields,
                {METADATA_PREFIX + k: v for k, v in self.metadata.items()},
                loadforge.__version__)
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
        # The merge's rows share histograms (engine/histogram.Sum: a cell's row, its stage's,
        # the run's): each is encoded and walked once per call, in which none changes.
        encoded: dict[int, bytes] = {}
        walked: dict[int, dict[str, Any]] = {}

        def encode(h: HdrHistogram) -> bytes:
            code = encoded.get(id(h))
            if code is None:
                code = encoded[id(h)] = histogram.encode(h)
            return code

        def stats(h: HdrHistogram) -> dict[str, Any]:
            figures = walked.get(id(h))
            if figures is None:
                figures = walked[id(h)] = histogram.stats(h)
            return figures

        for row in rows:
            scope = row["scope"]
            if scope not in SCOPES:
                raise ValueError(f"row scope {scope!r}, expected one of {SCOPES}")
            # Metric and action rows carry no latency: empty histograms keep columns non-null.
            latency: HdrHistogram = row.get("latency") or self._empty()
            service: HdrHistogram = row.get("service") or self._empty()
            lat = stats(latency)
            svc = stats(service)
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
            lat_hdr, svc_hdr = encode(latency), encode(service)
            buf["latency_hdr"].append(lat_hdr)
            buf["service_hdr"].append(svc_hdr)
            connect: HdrHistogram | None = row.get("connect")
            buf["connect_hdr"].append(None if connect is None else encode(connect))
            handshakes: HdrHistogram | None = row.get("tls")
            buf["tls_hdr"].append(None if handshakes is None else encode(handshakes))
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

    def _empty(self) -> HdrHistogram:
        if self._empty_histogram is None:
            self._empty_histogram = histogram.new_histogram()
        return self._empty_histogram

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
        try:
            self._open().write_row_group(self._buffer, self._buffered)
        except OSError as exc:
            # A row group cut short: nothing more is written after it (`_broken`).
            self._broken = True
            self.failure = self.failure or (f"results {self.path}: cannot write ({why(exc)}) "
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
                writer.add_metadata({METADATA_PREFIX + k: v for k, v in end_metadata.items()})
            writer.close()
        except OSError as exc:
            self.failure = self.failure or f"results {self.path}: cannot write ({why(exc)})"
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
                            f"the result could not be saved ({why(exc)})")
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
        self._file.close()
        self._remove_partial()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def __getattr__(name: str) -> Any:
    if name in _READER:
        from loadforge.results import reader

        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
