"""The one fold: every figure loadforge reports comes from rows folded here (rows -> figures).

Rows are the interval, stage and run rows a run writes (DESIGN.md "Parquet results"): the
coordinator's row dicts as it hands them to the writer (HdrHistogram objects under
"latency"), or the same rows read back from the Parquet file (histograms decoded on demand;
analysis/readback.py finds them). A `RowSource` says which of the two it is and holds the one
rule of what counts as an error (`RowSource.is_error`). Folded here into:

- `ScopeFigures`, per stage and for the whole run: counts by outcome, the headline latency
  (successful responses), and for the summary service time, failures' latency, connect times
  and per-name figures. `summary_figures` makes the terminal summary and `--summary-json` of
  them from the rows in memory, readback.run_figures makes `compare`, `ls`, `trend` and the
  report's of the file: the same fold of the same rows, so they agree to the µs.
- `IntervalFigures`, per interval and stage (`fold_intervals`): what SLO windows, `abort_after`
  and the scaling verdicts judge; `RunFold` gathers them with the rest the verdicts read
  (backend attribution, polled metrics, timed actions, checks), fed the rows as the writer is
  fed them (runner.py) or read back (readback.run_fold).

Every latency figure comes from a merged histogram (histogram.stats), never from averaging
percentiles. Nothing here reads a file or renders: readback.py reads, present/ renders.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress
from typing import TYPE_CHECKING, Any

from loadforge.config.outcomes import EXPECTED, UNEXPECTED, error_outcomes
from loadforge.config.plan import (
    ERROR_KIND_NAMES,
    ERROR_KINDS,
    FLOW_PREFIX,
    GRPC_OUTCOMES,
    GRPC_PREFIX,
    HTTP2_ERROR_KINDS,
    OUTCOMES,
    STATUS_OUTCOMES,
)
from loadforge.engine import histogram
from loadforge.results.schema import OK, outcome_row

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram

    from loadforge.results.reader import Result
    from loadforge.run.merge import RunInputs, ScopeRun

__all__ = [
    "ALL_STAGES",
    "BUSY_CPU",
    "ERROR_LATENCY_KEYS",
    "LATENCY_KEYS",
    "LATENCY_OBJECTIVES",
    "LATE_SHARE_CPU",
    "NAME_LATENCY_KEYS",
    "STATUS_CLASSES",
    "IntervalFigures",
    "RowSource",
    "RunFold",
    "ScopeFigures",
    "SparseBuckets",
    "connect_block",
    "error_outcomes",
    "fold_intervals",
    "fold_scopes",
    "name_block",
    "stats_block",
    "summary_figures",
    "unsent_cause",
]

LATENCY_OBJECTIVES = ("p50", "p90", "p99", "p999", "max", "mean")
ALL_STAGES = "all"


# -- one scope's fields of --summary-json ------------------------------------------------------

# The status classes the summary reports (1xx is not a final response; it still counts in
# `requests` if an engine ever reports one).
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")
LATENCY_KEYS = ("p50", "p90", "p99", "p999", "max", "mean")
ERROR_LATENCY_KEYS = ("p50", "p90", "p99", "max")
NAME_LATENCY_KEYS = ("p50", "p90", "p99")
# Sends this share late on a free connection (the loop itself late), or workers this busy,
# make the generator, not the connections, the cause of unsent arrivals.
LATE_SHARE_CPU = 0.01
BUSY_CPU = 0.8


def _latency_block(h: HdrHistogram, keys: tuple[str, ...] = LATENCY_KEYS) -> dict[str, Any]:
    s = histogram.stats(h)
    return {key: s[key] for key in keys}


def unsent_cause(unsent: int, sent: int, late: int,
                 worker_cpu: float | None = None) -> str | None:
    """Why arrivals went unsent: "cpu" when the generator was short of CPU, else
    "connections" (every connection was busy waiting on the target); None when nothing went
    unsent.

    An arrival is only ever left unsent for want of a free connection at its stage's end;
    what tells the causes apart is the generator itself: its workers used (nearly) all of
    their cores, or at least 1% of the sends left 10 ms or more late on a connection that was
    free (the loop was late: a stall, or a core shared with other work)."""
    if not unsent:
        return None
    if (late and late >= LATE_SHARE_CPU * max(sent, 1)) or \
            (worker_cpu is not None and worker_cpu >= BUSY_CPU):
        return "cpu"
    return "connections"


def name_block(requests: int, errors: int, ok_latency: HdrHistogram) -> dict[str, Any]:
    """One request name's entry of `requests_by_name`: latency over its successful responses."""
    return {"requests": int(requests), "errors": int(errors),
            "latency_us": _latency_block(ok_latency, NAME_LATENCY_KEYS)}


def connect_block(h: HdrHistogram) -> dict[str, Any]:
    """TCP connect times (µs) of the connections opened: `connections.connect_time_us` and a
    stage's `connect_time_us`."""
    st = histogram.stats(h)
    return {"count": st["count"], **{k: st[k] for k in ("p50", "p90", "p99", "max")}}


def stats_block(
    latency: HdrHistogram,
    service: HdrHistogram,
    outcome_counts: dict[str, int],
    scheduled: int,
    unsent: int,
    duration_s: float,
    target_rps: float | None,
    fail_status: tuple[str, ...] = ("4xx", "5xx"),
    *,
    error_latency: HdrHistogram | None = None,
    waited: int = 0,
    late: int = 0,
    worker_cpu: float | None = None,
    http2: bool = False,
) -> dict[str, Any]:
    """The fields of one scope (the run, or one stage) of `--summary-json`.

    latency/service: over the successful responses (DESIGN.md: headline latency);
    error_latency: over the failures (transport failures and failing statuses).
    requests: responses of any status; errors: transport failures plus responses whose class
    is in `fail_status`; sent: arrivals that reached an outcome (a response or a failure);
    error_rate: errors / sent; achieved_rps: requests / duration_s; target_rps: None for a
    closed-model scope (no arrival schedule, hence no target).
    """
    unknown = set(outcome_counts) - set(OUTCOMES)
    if unknown:
        raise ValueError(f"outcome_counts: unknown outcomes {sorted(unknown)}, expected {OUTCOMES}")
    counts = {outcome: int(outcome_counts.get(outcome, 0)) for outcome in OUTCOMES}
    requests = sum(counts[o] for o in STATUS_OUTCOMES)
    failures = sum(counts[o] for o in ERROR_KINDS)
    errors = sum(counts[o] for o in error_outcomes(fail_status) if o in counts)
    sent = requests + failures
    block = {
        "scheduled": int(scheduled),
        "requests": requests,
        "errors": errors,
        "target_rps": None if target_rps is None else float(target_rps),
        "achieved_rps": requests / duration_s if duration_s > 0 else 0.0,
        "latency_us": _latency_block(latency),
        "service_time_us": _latency_block(service),
        # HTTP/2's stream-level kinds only where they can happen: an HTTP/1.1 summary keeps
        # the four kinds it always had
        # ... and responses outside a request's expect_status where there were some
        "errors_by_kind": {kind: counts[kind] for kind in ERROR_KIND_NAMES
                           if counts[kind] or kind not in HTTP2_ERROR_KINDS + (UNEXPECTED,)
                           or (http2 and kind in HTTP2_ERROR_KINDS)},
        # ... and `expected`: responses a request's expect_status accepted whose class
        # fail_status counts (a 404 the request expects), where there were some
        "status": {cls: counts[cls] for cls in STATUS_CLASSES
                   + ((EXPECTED,) if counts[EXPECTED] else ())},
        "unsent": int(unsent),
        "sent": sent,
        "error_rate": errors / sent if sent else 0.0,
        "duration_s": float(duration_s),
        "error_latency_us": _latency_block(error_latency or histogram.new_histogram(),
                                           ERROR_LATENCY_KEYS),
        "unsent_cause": unsent_cause(unsent, sent, late, worker_cpu),
        # Sends that waited for a free connection / left late on a free one (the loop late).
        "delayed_sends": {"connections": int(waited), "cpu": int(late)},
        # The share of its core each worker used (None where not measured).
        "worker_cpu": None if worker_cpu is None else round(worker_cpu, 3),
    }
    if any(counts[o] for o in GRPC_OUTCOMES):
        # gRPC calls by grpc-status (DESIGN.md): OK and every code that was seen
        block["grpc_status"] = {o[len(GRPC_PREFIX):]: counts[o] for o in GRPC_OUTCOMES
                                if counts[o] or o == GRPC_OUTCOMES[0]}
    return block


# -- the fold of a scope's rows ------------------------------------------------------------------

@dataclass(eq=False)
class ScopeFigures:
    """One stage (or the whole run) of one run, folded from its rows (`add_row`).

    The counts and the headline latency are what `compare`, `ls` and `trend` need; `full`
    folds (the summary's) also keep what `stats_block` shows besides: service time and
    failures' latency, unsent arrivals, connect times and per-name figures.

    The histograms are sums of the rows' (histogram.Sum: a scope of one row shares that
    row's histogram), read through the properties once the rows are folded and added to
    with `add_latency` only."""

    name: str
    duration_s: float
    requests: int = 0         # responses of any status
    sent: int = 0             # responses + transport failures
    errors: int = 0
    scheduled: int = 0
    target_rps: float | None = 0.0          # None: closed model, no target
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    # A full fold's:
    outcomes: dict[str, int] = field(default_factory=dict)
    unsent: int = 0
    # request name -> [responses, errors, latency of its successful responses (a Sum)]
    by_name: dict[str, list[Any]] = field(default_factory=dict)
    # successful responses only (DESIGN.md "Latency semantics")
    _latency: histogram.Sum = field(default_factory=histogram.Sum, repr=False)
    _service: histogram.Sum = field(default_factory=histogram.Sum, repr=False)
    _error_latency: histogram.Sum = field(default_factory=histogram.Sum, repr=False)
    _connect: histogram.Sum = field(default_factory=histogram.Sum, repr=False)
    # TLS handshake times; None: not an https:// run
    _tls: histogram.Sum | None = field(default=None, repr=False)

    @property
    def latency(self) -> HdrHistogram:
        return self._latency.value

    @property
    def service(self) -> HdrHistogram:
        return self._service.value

    @property
    def error_latency(self) -> HdrHistogram:
        return self._error_latency.value

    @property
    def connect(self) -> HdrHistogram:
        return self._connect.value

    @property
    def tls(self) -> HdrHistogram | None:
        return None if self._tls is None else self._tls.value

    def add_latency(self, h: HdrHistogram) -> None:
        """Adds to the headline latency (pooled scopes: compare.py)."""
        self._latency.add(h)

    def name_figures(self, name: str) -> tuple[int, int, HdrHistogram]:
        """A request name's responses, errors and latency of its successful responses."""
        entry = self.by_name.get(name)
        if entry is None:
            return 0, 0, histogram.new_histogram()
        return entry[0], entry[1], entry[2].value

    def _name_entry(self, name: str) -> list[Any]:
        entry = self.by_name.get(name)
        if entry is None:
            entry = self.by_name[name] = [0, 0, histogram.Sum()]
        return entry

    def values(self) -> dict[str, float | None]:
        stats = histogram.stats(self.latency)
        out: dict[str, float | None] = {
            "target_rps": self.target_rps,
            "achieved_rps": self.requests / self.duration_s if self.duration_s > 0 else 0.0,
            "error_rate": self.errors / self.sent if self.sent else 0.0,
        }
        out.update({k: float(stats[k]) for k in ("p50", "p90", "p99", "p999", "max", "mean")})
        return out

    def add_row(self, row: dict[str, Any], source: RowSource, full: bool = False) -> None:
        """Fold one row of this scope: headline latency from the merged "ok" row (else, in
        an old file, the successful outcome rows), counts from the outcome rows, scheduled
        and unsent from the "*" row."""
        headline = source.headline(row)
        if row["name"].startswith(FLOW_PREFIX):
            # A scripted flow's own row (flows/loader.py): its named figures only; the
            # scope's totals and headline latency are its steps'.
            if not full:
                return
            entry = self._name_entry(row["name"])
            if row["outcome"] == OK if source.has_ok_rows else headline:
                entry[2].add(source.latency(row))
            if outcome_row(row):
                if row["outcome"] in STATUS_OUTCOMES:
                    entry[0] += int(row["count"])
                if source.is_error(row):
                    entry[1] += int(row["count"])
            return
        if headline:
            self._latency.add(source.latency(row))
            if full:
                self._service.add(source.service(row))
        name, outcome = row["name"], row["outcome"]
        if name == "*" and outcome == "*":
            self.scheduled += int(row.get("scheduled") or 0)
            if full:
                self.unsent += int(row.get("unsent") or 0)
                connect = source.connect(row)
                if connect is not None:
                    self._connect.add(connect)
                tls = source.tls(row)
                if tls is not None:
                    if self._tls is None:
                        self._tls = histogram.Sum()
                    self._tls.add(tls)
            return
        if full and name != "*" and (outcome == OK if source.has_ok_rows else headline):
            self._name_entry(name)[2].add(source.latency(row))
        if not outcome_row(row):
            return
        count = int(row["count"])
        self.sent += count
        if outcome in STATUS_OUTCOMES:
            self.requests += count
        if source.is_error(row):
            self.errors += count
            self.errors_by_kind[outcome] = self.errors_by_kind.get(outcome, 0) + count
        if full:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count
            entry = self._name_entry(name)
            if outcome in STATUS_OUTCOMES:
                entry[0] += count
            if source.is_error(row):
                entry[1] += count
                self._error_latency.add(source.latency(row))


@dataclass(eq=False)
class RowSource:
    """Where a run's rows come from, and the rules they are folded by: which outcome rows
    are errors (`is_error`, the one test every fold makes), whether the rows carry merged "ok"
    rows, and where a row's histograms are: HdrHistogram objects in the coordinator's rows
    (`live`), V2-encoded bytes in a file's (`of_file`, decoded on demand)."""

    error_outcomes: frozenset[str]
    has_ok_rows: bool = True
    result: Result | None = None      # None: the coordinator's own rows

    @classmethod
    def live(cls, fail_status: Iterable[str], has_ok_rows: bool = True) -> RowSource:
        return cls(error_outcomes(fail_status), has_ok_rows)

    @classmethod
    def of_file(cls, result: Result, fail_status: Iterable[str]) -> RowSource:
        return cls(error_outcomes(fail_status), result.has_ok_rows, result)

    def is_error(self, row: dict[str, Any]) -> bool:
        """Whether an outcome row's arrivals count as errors (transport failures and failing
        statuses)."""
        return row["outcome"] in self.error_outcomes

    def headline(self, row: dict[str, Any]) -> bool:
        """Whether `row`'s latency is part of its scope's headline latency (successful
        responses, all request names): the merged "ok" row with name "*"; in a file without
        "ok" rows, each outcome row that is not an error. Either way the same buckets."""
        if self.has_ok_rows:
            return row["name"] == "*" and row["outcome"] == OK
        return outcome_row(row) and not self.is_error(row)

    def latency(self, row: dict[str, Any]) -> HdrHistogram:
        return row["latency"] if self.result is None else self.result.histogram(row)

    def service(self, row: dict[str, Any]) -> HdrHistogram:
        return row["service"] if self.result is None else self.result.service_histogram(row)

    def connect(self, row: dict[str, Any]) -> HdrHistogram | None:
        if self.result is None:
            return row.get("connect")
        return (None if row.get("connect_hdr") is None
                else self.result.histogram(row, "connect_hdr"))

    def tls(self, row: dict[str, Any]) -> HdrHistogram | None:
        """TLS handshake times of a "*" row; None over plain TCP."""
        if self.result is None:
            return row.get("tls")
        return (None if row.get("tls_hdr") is None
                else self.result.histogram(row, "tls_hdr"))


def fold_scopes(rows: Iterable[dict[str, Any]], source: RowSource, full: bool = False
                ) -> dict[tuple[str, str], ScopeFigures]:
    """(scope, stage) -> ScopeFigures of the stage and run rows; each scope's duration is
    the span of its first row."""
    out: dict[tuple[str, str], ScopeFigures] = {}
    for row in rows:
        scope = row["scope"]
        if scope not in ("stage", "run"):
            continue
        key = (scope, row["stage"] if scope == "stage" else ALL_STAGES)
        fig = out.get(key)
        if fig is None:
            duration = (int(row["end_ms"]) - int(row["start_ms"])) / 1000
            fig = out[key] = ScopeFigures(key[1], duration)
        fig.add_row(row, source, full)
    return out


# -- the fold of interval rows: figures of one interval, or of a merge of intervals ---------

class SparseBuckets(Mapping[int, int]):
    """Nonzero histogram buckets (hdrh index -> count), read-only, in two sorted arrays."""

    __slots__ = ("_count", "_index")

    def __init__(self, buckets: Mapping[int, int]):
        keys = sorted(buckets)
        self._index = array("q", keys)
        self._count = array("Q", (buckets[k] for k in keys))

    def __getitem__(self, key: int) -> int:
        i = bisect_left(self._index, key)
        if i < len(self._index) and self._index[i] == key:
            return self._count[i]
        raise KeyError(key)

    def __iter__(self) -> Iterator[int]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def pairs(self) -> Iterator[tuple[int, int]]:
        return zip(self._index, self._count, strict=True)


_NO_BUCKETS = SparseBuckets({})


def _pairs(buckets: Mapping[int, int]) -> Iterable[tuple[int, int]]:
    return buckets.pairs() if isinstance(buckets, SparseBuckets) else buckets.items()


@dataclass(slots=True, eq=False)
class IntervalFigures:
    """What the objectives need from a span of time: latency bucket counts (sparse, hdrh
    index -> count) and outcome counts. A running sum holds them in a dict; `compact()`
    freezes one interval's into a `SparseBuckets`, and adding to it thaws it again."""

    latency: Mapping[int, int] = field(default_factory=dict)
    sent: int = 0            # arrivals that ended: responses + transport failures
    errors: int = 0          # transport failures + responses in Plan.fail_status
    scheduled: int = 0       # arrivals due, open-model stages only
    open_responses: int = 0  # responses, open-model stages only (for the rate shortfall)

    def _buckets(self) -> dict[int, int]:
        if not isinstance(self.latency, dict):
            self.latency = dict(_pairs(self.latency))
        return self.latency

    def compact(self) -> None:
        """Keep the latency buckets in arrays: for figures held until the end of a run."""
        if isinstance(self.latency, dict):
            # No latency (counts only, or no successful response): one shared, read-only empty.
            self.latency = SparseBuckets(self.latency) if self.latency else _NO_BUCKETS

    def add(self, other: IntervalFigures, sign: int = 1) -> None:
        lat = self._buckets()
        for index, count in _pairs(other.latency):
            left = lat.get(index, 0) + sign * count
            if left:
                lat[index] = left
            else:
                lat.pop(index, None)
        self.sent += sign * other.sent
        self.errors += sign * other.errors
        self.scheduled += sign * other.scheduled
        self.open_responses += sign * other.open_responses

    def add_histogram(self, h: HdrHistogram) -> None:
        if not h.total_count:
            return
        counts = memoryview(h.counts).cast("B").cast("Q")
        limit = min(h.get_counts_array_index(h.max_value) + 1, len(counts))
        lat = self._buckets()
        for index in compress(range(limit), counts[:limit]):
            lat[index] = lat.get(index, 0) + counts[index]

    def latency_stats(self) -> dict[str, Any]:
        """histogram.stats() of the merged latency (same percentile definitions), without
        building an HdrHistogram (the windows of the verdicts ask for one per position)."""
        return histogram.stats_of_buckets(_pairs(self.latency))

    def observe(self, objective: str, cache: dict[str, Any] | None = None) -> float | None:
        """The observed value of `objective` (µs for latency, a fraction otherwise); None when
        the span has nothing to judge it by."""
        if objective in LATENCY_OBJECTIVES:
            if not self.latency:
                return None
            if cache is None:
                cache = {}
            if "stats" not in cache:
                cache["stats"] = self.latency_stats()
            return float(cache["stats"][objective])
        if objective == "error_rate":
            return self.errors / self.sent if self.sent else None
        if objective == "success_rate":
            return (self.sent - self.errors) / self.sent if self.sent else None
        if objective == "rate_shortfall":
            if not self.scheduled:
                return None
            # Late responses of the previous interval can make achieved exceed target.
            return max(0.0, (self.scheduled - self.open_responses) / self.scheduled)
        raise ValueError(f"unknown SLO objective {objective!r}")

def fold_intervals(rows: Iterable[dict[str, Any]], interval_ms: int, source: RowSource,
                   open_stages: Mapping[str, bool] | None = None, latency: bool = True,
                   served: dict[int, dict[str, int]] | None = None,
                   into: dict[tuple[int, str], IntervalFigures] | None = None
                   ) -> dict[tuple[int, str], IntervalFigures]:
    """(interval index, stage) -> IntervalFigures of the interval rows (of a file, or the
    coordinator's as it writes them): what SLO windows, `abort_after` and the scaling
    verdicts judge. Latency from the successful responses only: a p99 objective must not
    hold because errors are fast.

    open_stages: stage -> open model; arrivals due and responses count towards the rate
    shortfall in open-model stages only (a stage not named counts); None: every stage's.
    latency: False skips decoding histograms (a judge of counts only).
    served: filled with interval index -> backend -> responses (backend attribution).
    into: the figures to add to (a fold fed interval by interval); a new dict by default."""
    out: dict[tuple[int, str], IntervalFigures] = {} if into is None else into
    touched: list[IntervalFigures] = []
    for row in rows:
        if row["scope"] != "interval" or row["stage"] == "*":
            continue
        stage = row["stage"]
        index = int(row["start_ms"]) // interval_ms
        fig = out.get((index, stage))
        if fig is None:
            fig = out[(index, stage)] = IntervalFigures()
        touched.append(fig)
        if latency and source.headline(row):
            fig.add_histogram(source.latency(row))
        counted = open_stages is None or open_stages.get(stage, True)
        if row["name"] == "*" and row["outcome"] == "*":
            if counted:
                fig.scheduled += int(row.get("scheduled") or 0)
            continue
        if not outcome_row(row):
            continue
        count = int(row["count"])
        outcome = row["outcome"]
        fig.sent += count
        if source.is_error(row):
            fig.errors += count
        if outcome in STATUS_OUTCOMES and counted:
            fig.open_responses += count
        if served is not None:
            backend = row.get("backend") or "*"
            if backend != "*" and outcome in STATUS_OUTCOMES and count:
                by_backend = served.setdefault(index, {})
                by_backend[backend] = by_backend.get(backend, 0) + count
    for fig in touched:
        fig.compact()
    return out


class RunFold:
    """What the verdicts judge of one run (analysis/slo.evaluate, analysis/scaling.analyze),
    folded from its rows as they are written: per interval and stage `IntervalFigures`
    (arrivals due counted in every stage: slo.py leaves closed-model stages' out), responses
    per backend per interval, and the few rows kept as they are (stage rows for backend
    attribution, metric and action rows), with the scripted flows' figures (`checks`).

    `run` and `simulate` feed it the rows they hand the writer, so a run's verdicts need no
    read-back of its file; readback.run_fold feeds it a file's rows (`ls`, `report`):
    the same fold of the same rows. Interval rows' histograms are read during `add` and never
    kept (in a run they are the coordinator's accumulators). latency: False keeps counts
    only, for verdicts that judge no latency. Held for the whole run, it grows with it: about
    200 bytes per interval and stage for counts (17 MB a day at 1 s intervals), plus the
    nonzero latency buckets when an objective judges latency (what reading the file back
    held at the end of a run before)."""

    def __init__(self, source: RowSource, interval_ms: int, latency: bool = True) -> None:
        self.source = source
        self.interval_ms = interval_ms
        self.latency = latency
        self.intervals: dict[tuple[int, str], IntervalFigures] = {}
        self.served: dict[int, dict[str, int]] = {}       # index -> backend -> responses
        self.stage_rows: list[dict[str, Any]] = []
        self.metric_rows: list[dict[str, Any]] = []
        self.action_rows: list[dict[str, Any]] = []
        self.flows: dict[str, Any] = {}     # the scripted flows' figures (flows/), if any

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Fold rows of any scope, in the order they are written."""
        fold_intervals(rows, self.interval_ms, self.source, latency=self.latency,
                       served=self.served, into=self.intervals)
        for row in rows:
            scope = row["scope"]
            if scope == "stage":
                self.stage_rows.append(row)
            elif scope == "metric":
                self.metric_rows.append(row)
            elif scope == "action":
                self.action_rows.append(row)


# -- the summary of a run (the terminal summary, --summary-json) -----------------------------

def _block(fig: ScopeFigures, run: ScopeRun, fail_status: tuple[str, ...],
           http2: bool = False) -> dict[str, Any]:
    block = stats_block(fig.latency, fig.service, fig.outcomes, fig.scheduled, fig.unsent,
                        run.duration_s, run.target_rps, fail_status,
                        error_latency=fig.error_latency, waited=run.waited, late=run.late,
                        worker_cpu=run.worker_cpu, http2=http2)
    flows = [entry for name, entry in fig.by_name.items() if name.startswith(FLOW_PREFIX)]
    if flows:
        # A scripted-flow run: its arrivals are flows, whose requests are steps; `scheduled`
        # and `target_rps` count flows, `requests` and `achieved_rps` the steps. The flows'
        # own counts, so that the headline compares flows with flows.
        completed = sum(int(e[0]) for e in flows)
        failed = sum(int(e[1]) for e in flows)
        block["flow_totals"] = {
            "completed": completed, "failed": failed,
            "achieved_rps": completed / run.duration_s if run.duration_s > 0 else 0.0,
            "failure_rate": failed / (completed + failed) if completed + failed else 0.0}
    return block


def summary_figures(rows: Iterable[dict[str, Any]], fail_status: tuple[str, ...],
                    request_names: Iterable[str], inputs: RunInputs) -> dict[str, Any]:
    """The summary's figures (without verdicts) of a run's stage and run rows, as the
    coordinator writes them, and what the rows do not hold (`inputs`: durations, targets,
    the generator's own figures): the fold `run_figures` makes of the same rows in the file.
    """
    folded = fold_scopes(rows, RowSource.live(fail_status), full=True)
    stages_out = []
    run = inputs.run
    tls = "tls_handshakes" in inputs.connections      # an https:// run
    for st in inputs.stages:
        fig = folded.get(("stage", st.name)) or ScopeFigures(st.name, st.duration_s)
        block = _block(fig, st, fail_status, inputs.http2)
        block["connect_time_us"] = connect_block(fig.connect)
        if tls:
            block["tls_handshake_us"] = connect_block(fig.tls or histogram.new_histogram())
        stages_out.append({"name": st.name, "model": "open" if st.open_model else "closed",
                           **block})
    whole = folded.get(("run", ALL_STAGES)) or ScopeFigures(ALL_STAGES, run.duration_s)
    out = _block(whole, run, fail_status, inputs.http2)
    out["requests_by_name"] = {
        name: name_block(*whole.name_figures(name)) for name in request_names}
    out["connections"] = {**inputs.connections, "connect_time_us": connect_block(whole.connect)}
    if tls:
        out["connections"]["tls_handshake_us"] = connect_block(
            whole.tls or histogram.new_histogram())
    out["stages"] = stages_out
    out.update(inputs.extra)
    return out
