"""A run's Parquet archive read back: `read_result` (the whole file, checked), `find_results`
(directories of them, oldest first), `check_regular_file`. Every problem is a ResultsError
naming the file: a damaged or foreign file is exit 2 in one line, never a traceback.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loadforge.config.files import DIRECTORY, LOOP, MISSING, NUL, SPECIAL, UNREADABLE, file_problem
from loadforge.engine import histogram
from loadforge.errors import ResultsError
from loadforge.results.schema import (
    BASE_FIELDS,
    METADATA_PREFIX,
    OK,
    REQUIRED_COLUMNS,
    SCHEMA_VERSION,
    arrow,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from hdrh.histogram import HdrHistogram


@dataclass(eq=False)
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
        and their readers merge the successful outcome rows themselves (figures.RowSource.headline)."""
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


def check_regular_file(path: str, what: str = "results") -> None:
    """A ResultsError unless `path` is a regular file (through symlinks): a FIFO or a device
    would block the reader, or never end."""
    problem = file_problem(path)
    if problem is None:
        return
    kind, why = problem
    if kind == NUL:
        raise ResultsError(f"{what} {path!r}: the path holds a NUL byte")
    raise ResultsError(f"{what} {path}: " + {
        MISSING: "no such file",
        LOOP: "a loop of symbolic links; point it at a file",
        UNREADABLE: f"cannot read ({why})",
        DIRECTORY: "is a directory, expected a .parquet file",
        SPECIAL: "not a regular file (a FIFO, socket or device); expected a .parquet file",
    }[kind])


def _read_metadata(path: str) -> dict[str, str]:
    """The loadforge.* footer metadata of `path` (prefix removed), validated."""
    pa, pq = arrow()
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
    pa, pq = arrow()
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
    pa, _ = arrow()
    schema = table.schema
    expected = {name: dtype for name, dtype, _ in BASE_FIELDS}
    nullable = {name: can for name, _, can in BASE_FIELDS}
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
