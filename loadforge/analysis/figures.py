"""The one fold: every figure loadforge reports comes from rows folded here.

Rows are the interval, stage and run rows a run writes (DESIGN.md "Parquet results"): the
coordinator's row dicts as it writes them (HdrHistogram objects under "latency"), or the same
rows read back from the Parquet file (histograms decoded on demand). Folded here into:

- `ScopeFigures`, per stage and for the whole run: counts by outcome, the headline latency
  (successful responses), and for the summary service time, failures' latency, connect times
  and per-name figures. `summary_figures` makes the terminal summary and `--summary-json` of
  them, `run_figures` makes `compare`, `ls`, `trend` and the report's of them: the same fold of
  the same rows, so the summary of a run and `compare`/`ls` of its file agree to the µs.
- `IntervalFigures`, per interval and stage (`fold_intervals`): what SLO windows, `abort_after`
  and the scaling verdicts judge.

Every latency figure comes from a merged histogram (histogram.stats), never from averaging
percentiles. Nothing here renders: present/ does.
"""

from __future__ import annotations

import json
import os
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress
from typing import TYPE_CHECKING, Any

from hdrh.histogram import HdrHistogram

from loadforge.analysis import noise
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
    Plan,
)
from loadforge.errors import ProfileError
from loadforge.results import histogram
from loadforge.results.store import OK, Result, find_results, headline_row, outcome_row, read_result

if TYPE_CHECKING:
    from loadforge.run.merge import RunInputs, ScopeRun

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

@dataclass
class ScopeFigures:
    """One stage (or the whole run) of one run, folded from its rows (`add_row`).

    The counts and the headline latency are what `compare`, `ls` and `trend` need; `full`
    folds (the summary's) also keep what `stats_block` shows besides: service time and
    failures' latency, unsent arrivals, connect times and per-name figures."""

    name: str
    duration_s: float
    requests: int = 0         # responses of any status
    sent: int = 0             # responses + transport failures
    errors: int = 0
    scheduled: int = 0
    target_rps: float | None = 0.0          # None: closed model, no target
    # successful responses only (DESIGN.md "Latency semantics")
    latency: HdrHistogram = field(default_factory=histogram.new_histogram)
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    # A full fold's:
    outcomes: dict[str, int] = field(default_factory=dict)
    unsent: int = 0
    service: HdrHistogram = field(default_factory=histogram.new_histogram)
    error_latency: HdrHistogram = field(default_factory=histogram.new_histogram)
    connect: HdrHistogram = field(default_factory=histogram.new_histogram)
    tls: HdrHistogram | None = None         # TLS handshake times; None: not an https:// run
    # request name -> [responses, errors, latency of its successful responses]
    by_name: dict[str, list[Any]] = field(default_factory=dict)

    def values(self) -> dict[str, float | None]:
        stats = histogram.stats(self.latency)
        out: dict[str, float | None] = {
            "target_rps": self.target_rps,
            "achieved_rps": self.requests / self.duration_s if self.duration_s > 0 else 0.0,
            "error_rate": self.errors / self.sent if self.sent else 0.0,
        }
        out.update({k: float(stats[k]) for k in ("p50", "p90", "p99", "p999", "max", "mean")})
        return out

    def add_row(self, row: dict[str, Any], reader: RowReader, full: bool = False) -> None:
        """Fold one row of this scope: headline latency from the merged "ok" row (else, in
        an old file, the successful outcome rows), counts from the outcome rows, scheduled
        and unsent from the "*" row."""
        headline = headline_row(row, reader.has_ok_rows, reader.error_outcomes)
        if row["name"].startswith(FLOW_PREFIX):
            # A scripted flow's own row (flows/loader.py): its named figures only; the
            # scope's totals and headline latency are its steps'.
            if not full:
                return
            entry = self.by_name.setdefault(row["name"], [0, 0, histogram.new_histogram()])
            if row["outcome"] == OK if reader.has_ok_rows else headline:
                histogram.merge(entry[2], reader.latency(row))
            if outcome_row(row):
                if row["outcome"] in STATUS_OUTCOMES:
                    entry[0] += int(row["count"])
                if row["outcome"] in reader.error_outcomes:
                    entry[1] += int(row["count"])
            return
        if headline:
            histogram.merge(self.latency, reader.latency(row))
            if full:
                histogram.merge(self.service, reader.service(row))
        name, outcome = row["name"], row["outcome"]
        if name == "*" and outcome == "*":
            self.scheduled += int(row.get("scheduled") or 0)
            if full:
                self.unsent += int(row.get("unsent") or 0)
                connect = reader.connect(row)
                if connect is not None:
                    histogram.merge(self.connect, connect)
                tls = reader.tls(row)
                if tls is not None:
                    if self.tls is None:
                        self.tls = histogram.new_histogram()
                    histogram.merge(self.tls, tls)
            return
        if full and name != "*" and (outcome == OK if reader.has_ok_rows else headline):
            entry = self.by_name.setdefault(name, [0, 0, histogram.new_histogram()])
            histogram.merge(entry[2], reader.latency(row))
        if not outcome_row(row):
            return
        count = int(row["count"])
        self.sent += count
        if outcome in STATUS_OUTCOMES:
            self.requests += count
        if outcome in reader.error_outcomes:
            self.errors += count
            self.errors_by_kind[outcome] = self.errors_by_kind.get(outcome, 0) + count
        if full:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count
            entry = self.by_name.setdefault(name, [0, 0, histogram.new_histogram()])
            if outcome in STATUS_OUTCOMES:
                entry[0] += count
            if outcome in reader.error_outcomes:
                entry[1] += count
                histogram.merge(self.error_latency, reader.latency(row))


@dataclass
class RowReader:
    """How to read a run's rows: which outcomes are errors (transport failures plus the
    profile's `fail_status`), whether the rows carry merged "ok" rows, and where a row's
    histograms are: objects in the coordinator's rows, encoded in a file's."""

    error_outcomes: set[str]
    has_ok_rows: bool = True
    result: Result | None = None      # None: the coordinator's own rows

    @classmethod
    def of(cls, result: Result, fail_status: tuple[str, ...]) -> RowReader:
        return cls(set(error_outcomes(fail_status)), result.has_ok_rows, result)

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


def fold_scopes(rows: Iterable[dict[str, Any]], reader: RowReader, full: bool = False
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
        fig.add_row(row, reader, full)
    return out


@dataclass
class RunFigures:
    result: Result
    title: str
    stages: list[ScopeFigures]
    run: ScopeFigures
    fail_status: tuple[str, ...] = ("4xx", "5xx")     # the status classes counted as errors

    def scope(self, name: str) -> ScopeFigures | None:
        if name == ALL_STAGES:
            return self.run
        return next((s for s in self.stages if s.name == name), None)


def fail_status_of(result: Result, plan: Plan | None = None) -> tuple[str, ...]:
    """The status classes the run counted as errors: the Plan of the archived profile
    (config/ reads it, with the recorded or legacy default, see _recorded_fail_status)."""
    if plan is None:
        plan = plan_of_result(result)
    if plan is not None:
        return plan.fail_status
    return _recorded_fail_status(result) or LEGACY_FAIL_STATUS


def stages_of(result: Result) -> list[dict[str, Any]]:
    """The `stages` metadata: name, duration_s, rate_from, rate_to, concurrency."""
    try:
        stages = json.loads(result.metadata.get("stages", "[]"))
        return [s for s in stages if isinstance(s, dict) and "name" in s]
    except ValueError:
        return []


def _target_rps(stage: dict[str, Any]) -> float | None:
    if stage.get("concurrency") or stage.get("rate_from") is None:
        return None     # closed model: no arrival schedule, no target
    # A linear ramp's mean rate; a steady stage has from == to.
    return (float(stage["rate_from"]) + float(stage.get("rate_to") or stage["rate_from"])) / 2


def _stopped_early(result: Result, planned: dict[str, dict[str, Any]]) -> bool:
    """Whether the run ended before its planned end (a signal, an SLO abort, a crash): its
    stage rows then span the time each stage ran, which rates are over."""
    try:
        ran_s = float(result.metadata["ran_s"])
    except (KeyError, ValueError):
        return False
    return ran_s < sum(float(s.get("duration_s") or 0) for s in planned.values()) - 0.001


def run_figures(result: Result, title: str = "", plan: Plan | None = None,
                full: bool = False) -> RunFigures:
    """A result file's figures per stage and for the run: its stage and run rows folded
    (`fold_scopes`; `full`: all the summary shows), rates over the planned stage times (the
    `stages` metadata)."""
    fail_status = fail_status_of(result, plan)
    reader = RowReader.of(result, fail_status)
    planned = {s["name"]: s for s in stages_of(result)}
    stopped_early = _stopped_early(result, planned)
    rows = (result.rows("stage", stage=None, name=None, outcome=None)
            + result.rows("run", stage=None, name=None, outcome=None))
    folded = fold_scopes(rows, reader, full)
    scopes = {stage: fig for (scope, stage), fig in folded.items() if scope == "stage"}
    for name, fig in scopes.items():
        if name in planned:
            if not stopped_early:       # else the stage row spans the time it ran
                fig.duration_s = float(planned[name].get("duration_s") or fig.duration_s)
            fig.target_rps = _target_rps(planned[name])
    stage_list = [scopes[name] for name in planned if name in scopes]
    stage_list += [f for name, f in scopes.items() if name not in planned]
    run_scope = folded.get(("run", ALL_STAGES)) or ScopeFigures(ALL_STAGES, 0.0)
    planned_s = sum(float(s.get("duration_s") or 0) for s in planned.values())
    if planned_s:
        run_scope.duration_s = min(run_scope.duration_s, planned_s) or planned_s
        # Closed-model stages have no target and stay out of the run's.
        open_stages = [(rps, float(s.get("duration_s") or 0)) for s in planned.values()
                       if (rps := _target_rps(s)) is not None]
        open_s = sum(d for _, d in open_stages)
        run_scope.target_rps = (sum(rps * d for rps, d in open_stages) / open_s
                                if open_s else None)
    return RunFigures(result, title or run_title(result), stage_list, run_scope,
                      fail_status)


def run_title(result: Result) -> str:
    if result.labels:
        return ",".join(f"{k}={v}" for k, v in sorted(result.labels.items()))
    return result.run_id or os.path.basename(result.path).removesuffix(".parquet")


def load_runs(paths: list[str]) -> list[RunFigures]:
    """Read RUN arguments (files, or directories of them, oldest first) into figures."""
    files = find_results(list(paths))
    results = [read_result(f) for f in files]
    titles = [run_title(r) for r in results]
    for i, t in enumerate(titles):
        if titles.count(t) > 1:
            titles[i] = f"{t} #{i + 1}"
    return [run_figures(r, t) for r, t in zip(results, titles, strict=True)]


def interval_cells(result: Result, interval_ms: int, fail_status: tuple[str, ...]
                   ) -> dict[int, dict[str, Any]]:
    """Per interval index, every stage's together: arrivals due ("scheduled"), responses,
    errors by kind and the headline latency (None when there is none): the report's series."""
    reader = RowReader.of(result, fail_status)
    per: dict[int, dict[str, Any]] = {}
    for row in result.rows("interval", stage=None, name=None, outcome=None):
        index = int(row["start_ms"]) // interval_ms
        cell = per.get(index)
        if cell is None:
            cell = per[index] = {"scheduled": 0, "responses": 0, "errors": {},
                                 "latency": None}
        if headline_row(row, reader.has_ok_rows, reader.error_outcomes):
            h = reader.latency(row)
            if cell["latency"] is None:
                cell["latency"] = h
            else:
                histogram.merge(cell["latency"], h)
        if row["name"] == "*" and row["outcome"] == "*":
            cell["scheduled"] += int(row.get("scheduled") or 0)
            continue
        if not outcome_row(row):
            continue
        outcome, count = row["outcome"], int(row["count"])
        if outcome in STATUS_OUTCOMES:
            cell["responses"] += count
        if outcome in reader.error_outcomes:
            cell["errors"][outcome] = cell["errors"].get(outcome, 0) + count
    return per


def bootstrap_intervals(fig: RunFigures) -> dict[str, list[noise.Interval]]:
    """Each stage's intervals (and ALL_STAGES: the run's), for `compare`'s bootstrap: the
    interval rows read with run_figures' rules (headline latency of successful responses;
    counts from outcome rows)."""
    result = fig.result
    reader = RowReader.of(result, fig.fail_status)
    stages: dict[str, dict[int, noise.Interval]] = {}
    whole: dict[int, noise.Interval] = {}
    for row in result.rows("interval", stage=None, name=None, outcome=None):
        start = int(row["start_ms"])
        seconds = (int(row["end_ms"]) - start) / 1000
        # An interval that spans a stage boundary is one interval of the run.
        targets = [stages.setdefault(row["stage"], {}).setdefault(
            start, noise.Interval(seconds)), whole.setdefault(start, noise.Interval(seconds))]
        if headline_row(row, reader.has_ok_rows, reader.error_outcomes):
            h = reader.latency(row)
            for iv in targets:
                iv.add_latency(h)
        if not outcome_row(row):
            continue
        count, outcome = int(row["count"]), row["outcome"]
        for iv in targets:
            iv.sent += count
            iv.requests += count if outcome in STATUS_OUTCOMES else 0
            iv.errors += count if outcome in reader.error_outcomes else 0
    out = {name: [ivs[k] for k in sorted(ivs)] for name, ivs in stages.items()}
    out[ALL_STAGES] = [whole[k] for k in sorted(whole)]
    return out


# -- the plan a result was run with ------------------------------------------------------

def plan_of_result(result: Result) -> Plan | None:
    """The Plan of the profile archived in a result's metadata; None for a run started from
    flags (no profile, hence no objectives) or a profile this version no longer accepts."""
    from loadforge.config.profile import plan_from_text

    text = result.metadata.get("profile", "")
    flags = _slo_flags_of(result)
    if not text.strip():
        return _flag_plan_of_result(result, flags) if flags else None
    try:
        plan = plan_from_text(text, result.metadata.get("profile_path") or "<profile>",
                              archived=True)
    except ProfileError:
        return None
    recorded = _recorded_fail_status(result, text)
    if recorded is not None and recorded != plan.fail_status:
        from dataclasses import replace

        plan = replace(plan, fail_status=recorded)
    return _with_flags(plan, flags)


LEGACY_FAIL_STATUS = ("5xx",)     # the default before 4xx counted as errors (issue 22)


def _recorded_fail_status(result: Result, profile_text: str = "") -> tuple[str, ...] | None:
    """What the run counted as errors: the `fail_status` metadata that runs record; for files
    written before it was recorded, the profile's own setting, else the default of that time
    (5xx only), so that an archived verdict does not change under a newer default. None: the
    profile's (parsed) value stands."""
    try:
        recorded = json.loads(result.metadata.get("fail_status") or "null")
    except ValueError:
        recorded = None
    if isinstance(recorded, list) and all(isinstance(c, str) for c in recorded):
        return tuple(recorded)
    if not profile_text.strip():
        return LEGACY_FAIL_STATUS
    import tomllib

    try:
        load = tomllib.loads(profile_text).get("load", {})
    except tomllib.TOMLDecodeError:
        return None
    return None if isinstance(load, dict) and "fail_status" in load else LEGACY_FAIL_STATUS


def _slo_flags_of(result: Result) -> dict[str, float]:
    """The run's `--slo` objectives (metadata `slo_flags`), which the profile does not hold."""
    try:
        flags = json.loads(result.metadata.get("slo_flags") or "{}")
    except ValueError:
        return {}
    if not isinstance(flags, dict):
        return {}
    return {k: float(v) for k, v in flags.items()
            if isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)}


def _with_flags(plan: Plan, flags: dict[str, float]) -> Plan:
    from dataclasses import replace

    from loadforge.config.profile import with_slo_flags

    return replace(plan, slo=with_slo_flags(plan.slo, flags)) if flags else plan


def _flag_plan_of_result(result: Result, flags: dict[str, float]) -> Plan | None:
    """A run started from flags, with `--slo`: its one stage from the `stages` metadata."""
    from loadforge.config.plan import Request, Stage

    try:
        stages = tuple(Stage(str(s["name"]), float(s["duration_s"]), s.get("rate_from"),
                             s.get("rate_to"), s.get("concurrency"), float(s.get("think_s") or 0))
                       for s in json.loads(result.metadata.get("stages") or "[]"))
    except (ValueError, KeyError, TypeError):
        return None
    if not stages:
        return None
    plan = Plan(name=result.metadata.get("profile_name") or "adhoc",
                target=result.metadata.get("target") or "", stages=stages,
                requests=(Request("default"),),
                fail_status=_recorded_fail_status(result) or LEGACY_FAIL_STATUS)
    return _with_flags(plan, flags)


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


def _pairs(buckets: Mapping[int, int]) -> Iterable[tuple[int, int]]:
    return buckets.pairs() if isinstance(buckets, SparseBuckets) else buckets.items()


@dataclass
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
            self.latency = SparseBuckets(self.latency)

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
        """histogram.stats() of the merged latency (same percentile definitions)."""
        h = histogram.new_histogram()
        if self.latency:
            hc = h.counts
            for index, count in _pairs(self.latency):
                hc[index] = count
            h.total_count = sum(count for _, count in _pairs(self.latency))
            h.min_value = h.get_value_from_index(min(self.latency))
            h.max_value = h.get_value_from_index(max(self.latency))
        return histogram.stats(h)

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

def fold_intervals(rows: Iterable[dict[str, Any]], interval_ms: int, reader: RowReader,
                   open_stages: Mapping[str, bool] | None = None, latency: bool = True,
                   served: dict[int, dict[str, int]] | None = None
                   ) -> dict[tuple[int, str], IntervalFigures]:
    """(interval index, stage) -> IntervalFigures of the interval rows (of a file, or the
    coordinator's as it writes them): what SLO windows, `abort_after` and the scaling
    verdicts judge. Latency from the successful responses only: a p99 objective must not
    hold because errors are fast.

    open_stages: stage -> open model; arrivals due and responses count towards the rate
    shortfall in open-model stages only (a stage not named counts); None: every stage's.
    latency: False skips decoding histograms (a judge of counts only).
    served: filled with interval index -> backend -> responses (backend attribution)."""
    out: dict[tuple[int, str], IntervalFigures] = {}
    for row in rows:
        if row["scope"] != "interval" or row["stage"] == "*":
            continue
        stage = row["stage"]
        index = int(row["start_ms"]) // interval_ms
        fig = out.get((index, stage))
        if fig is None:
            fig = out[(index, stage)] = IntervalFigures()
        if latency and headline_row(row, reader.has_ok_rows, reader.error_outcomes):
            fig.add_histogram(reader.latency(row))
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
        if outcome in reader.error_outcomes:
            fig.errors += count
        if outcome in STATUS_OUTCOMES and counted:
            fig.open_responses += count
        if served is not None:
            backend = row.get("backend") or "*"
            if backend != "*" and outcome in STATUS_OUTCOMES and count:
                by_backend = served.setdefault(index, {})
                by_backend[backend] = by_backend.get(backend, 0) + count
    for fig in out.values():
        fig.compact()
    return out


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
    reader = RowReader(set(error_outcomes(fail_status)))
    folded = fold_scopes(rows, reader, full=True)
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
        name: name_block(*whole.by_name.get(name, (0, 0, histogram.new_histogram())))
        for name in request_names}
    out["connections"] = {**inputs.connections, "connect_time_us": connect_block(whole.connect)}
    if tls:
        out["connections"]["tls_handshake_us"] = connect_block(
            whole.tls or histogram.new_histogram())
    out["stages"] = stages_out
    out.update(inputs.extra)
    return out
