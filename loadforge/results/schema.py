"""The schema of a run's Parquet archive: columns, scopes, the merged "ok" rows, labels.

The column names and types of DESIGN.md "Parquet results" are a contract with other tools.
Shared by the writer (results/store.py) and the reader (results/reader.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from loadforge.errors import InputError

if TYPE_CHECKING:
    import pyarrow as pa

SCHEMA_VERSION = 1
METADATA_PREFIX = "loadforge."
# metric: one observed value (observe/pollers.py); action: one timed action's outcome (observe/actions.py).
SCOPES = ("interval", "stage", "run", "metric", "action", "shard")

# Arrow types by name: pyarrow is imported when a file is first written or read, not at
# start-up (it costs more CPU than a run's first second).
BASE_FIELDS: tuple[tuple[str, str, bool], ...] = (
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
BASE_COLUMNS = tuple(name for name, _, _ in BASE_FIELDS)
# What a reader needs from any file, whatever later schema versions add.
REQUIRED_COLUMNS = (
    "run_id", "scope", "stage", "name", "outcome", "start_ms", "end_ms", "count",
    "latency_hdr", "service_hdr", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us",
)
# The outcome of the rows merged over the successful responses (status classes not in the
# profile's fail_status), at every scope, per request name and with name "*": the headline
# latency's source (DESIGN.md "Parquet results").
OK = "ok"


def arrow() -> tuple[Any, Any]:
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
    # pyarrow alone: a writer has no use for pyarrow.parquet's module (store.parquet_writer).
    import pyarrow as pa
    fields = [pa.field(name, getattr(pa, dtype)(), nullable=nullable)
              for name, dtype, nullable in BASE_FIELDS]
    for key in sorted(label_keys):
        check_label_key(key)
        fields.append(pa.field(label_column(key), pa.string(), nullable=False))
    return pa.schema(fields)


def outcome_row(row: dict[str, Any]) -> bool:
    """A row that counts one outcome of one request name (not a merged "*" or "ok" row)."""
    return row["name"] != "*" and row["outcome"] not in ("*", OK)
