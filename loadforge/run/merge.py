"""The exact merge of a run: the workers' interval reports into rows, in interval order.

Workers report each 1 s interval; once every worker has reported an interval, its cells are
merged with hdrh into interval rows (a `MergedInterval`, queued until its caller `take`s it:
run/session.collect hands them to the runner, which writes, folds and judges them) and
folded into the per-stage histograms. Only those per-stage histograms stay in memory, so
memory does not grow with the length of a run. `Aggregator.finish` adds the stage and run
rows and what the summary takes besides them (`RunInputs`).

Pure: it reads decoded reports (run/workers.IntervalReport) and returns rows, with no process,
socket, signal, writer or callback of its own (tests/test_merge.py drives it with synthetic
reports).
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loadforge import _core, schedule
from loadforge.config.outcomes import error_outcomes
from loadforge.config.plan import FLOW_PREFIX, STATUS_OUTCOMES, Plan
from loadforge.engine import histogram
from loadforge.run.workers import decode_done, decode_done_counts, decode_done_tls

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram


class StageTotals:
    def __init__(self) -> None:
        self.scheduled = 0
        self.sent = 0
        self.unsent = 0
        self.waited = 0      # sends that waited for a free connection
        self.late = 0        # sends late on a free connection (the loop was late)
        self.cpu_ns = 0      # workers' CPU time in the stage's intervals
        self.wall_ns = 0     # and the time those intervals spanned, per worker

    @property
    def worker_cpu(self) -> float | None:
        """The share of its core each worker used during the stage."""
        return self.cpu_ns / self.wall_ns if self.wall_ns else None

    @staticmethod
    def combined_cpu(totals: list[StageTotals]) -> float | None:
        wall = sum(t.wall_ns for t in totals)
        return sum(t.cpu_ns for t in totals) / wall if wall else None


@dataclass(eq=False)
class ScopeRun:
    """Of one stage, or of the run ("all"): what its rows do not hold. How long it ran, its
    target rate (None: closed model), the generator's own figures (sends delayed, CPU)."""

    name: str
    duration_s: float
    target_rps: float | None
    open_model: bool = True
    waited: int = 0
    late: int = 0
    worker_cpu: float | None = None


@dataclass(eq=False)
class RunInputs:
    """What the summary takes from the live merge besides the rows (Aggregator.finish)."""

    stages: list[ScopeRun]
    run: ScopeRun
    connections: dict[str, Any]       # opened, failed, open_peak, closed_by_*, retried,
                                      # tls_handshakes (https:// runs)
    extra: dict[str, Any]             # dropped_samples, clamped_samples, report_lag_ms
    http2: bool = False               # an HTTP/2 run: its stream error kinds are listed


@dataclass(eq=False)
class MergedInterval:
    """One interval once every worker's report of it is merged (Aggregator.take): what the
    runner writes, folds and judges, and what the live outputs and the progress line show.
    `rows` are the interval rows; their histograms may be shared with other rows and with the
    stage's sums (histogram.Sum), and never change once merged: a reader may keep them."""

    index: int
    start_s: float
    end_s: float
    stage: str                    # the stage running at the interval's middle
    target_rps: float | None      # None in a closed-model stage
    achieved_rps: float
    rows: list[dict[str, Any]]
    # A sharded run's per-shard rows of the interval (scope "shard"), written after `rows`.
    shard_rows: list[dict[str, Any]] = field(default_factory=list)
    responses: int = 0            # the interval's responses (status outcomes)
    ok_latency: Any = None        # latency of its successful responses, all stages (hdrh)
    requests: int = 0             # the run's responses so far, this interval's included
    errors: int = 0               # and its errors so far


class Aggregator:
    """Merges interval reports from all workers, exactly, in interval order.

    `add` queues each interval it completes as a MergedInterval; `take` (and `drain`, at the
    end) hands the queued ones to the caller, in interval order: the merge writes nothing and
    calls nobody back (run/session.collect yields them to the runner)."""

    def __init__(self, plan: Plan, workers: int, interval_s: float):
        self.plan = plan
        self.workers = workers
        self.interval_ms = int(interval_s * 1000)
        self.interval_s = interval_s
        self.merged: list[MergedInterval] = []    # merged, not yet taken
        self.windows = schedule.layout(plan)
        self.pending: dict[int, list[Any]] = defaultdict(list)
        self.final_index: dict[int, int] = {}
        self.next_index = 0
        # (stage, request, outcome, backend) -> [latency, service (Sums), count], whole stage
        self.cells: dict[tuple[int, int, str, str], list[Any]] = {}
        self.totals = [StageTotals() for _ in plan.stages]
        self.requests = 0
        self.errors = 0
        self.sent_by_workers = 0
        self.last_index = -1
        # per worker: connects and failed connects so far (cumulative), open connections
        self.connects: dict[int, tuple[int, int]] = {}
        # per worker, cumulative: arrivals retried on a new connection, outcomes dropped,
        # connections closed by the server, by the engine, latencies clamped to 1 h
        self.engine_counts: dict[int, tuple[int, int, int, int, int]] = {}
        self.t0_ns = 0               # time zero, once the workers started
        self.report_lag_ns = 0       # the latest an interval report reached the coordinator
        # per stage: TCP connect times of the connections opened in its intervals
        self.connect_times = [histogram.Sum() for _ in plan.stages]
        # ... and their TLS handshake times; per worker, handshakes so far (full, resumed,
        # failed)
        self.tls_times = [histogram.Sum() for _ in plan.stages]
        self.tls_handshakes: dict[int, tuple[int, int, int]] = {}
        self.open_peak = 0
        # (feeder table, when) of the first `unique` feeder that ran out and ended the run
        self.exhausted: tuple[int, int] | None = None
        # What the engine's first completed TLS handshake negotiated (a worker's DONE), for
        # runs without the preflight: {"protocol", "cipher", "alpn"}, None until known.
        self.negotiated: dict[str, Any] | None = None
        # The engines' end-of-run counts (workers.ENGINE_COUNTS), summed over the workers
        self.done_counts: dict[str, int] = {}
        self.error_outcomes = set(error_outcomes(plan.fail_status))
        self.cpu_ns: dict[int, int] = {}      # per worker: CPU time reported so far
        # A sharded run: the shard of a worker (its engine stripe), for the per-shard rows.
        self.shard_of: Callable[[int], int] | None = None
        # Scripted flows: checks {name: [passed, failed]} and flow failures
        # {"flow|ExceptionType": count}, the whole run's so far.
        self.checks: dict[str, list[int]] = {}
        self.flow_errors: dict[str, int] = {}
        self.flow_samples: dict[str, str] = {}
        # Request indices of flows' own rows ("flow:<name>"): named rows only, never part of
        # the stage's and the run's totals and headline latency, which are the steps'.
        self.flow_requests = frozenset(
            i for i, r in enumerate(plan.requests)
            if plan.flows is not None and r.name.startswith(FLOW_PREFIX))

    def flow_figures(self) -> dict[str, Any]:
        """The summary's `flows`: checks passed and failed by name, with the run's total and
        pass fraction, and failed flows by flow and exception type."""
        passed = sum(p for p, _ in self.checks.values())
        failed = sum(f for _, f in self.checks.values())
        errors: dict[str, dict[str, int]] = {}
        samples: dict[str, dict[str, str]] = {}
        for key, n in sorted(self.flow_errors.items()):
            flow, _, kind = key.partition("|")
            errors.setdefault(flow, {})[kind] = n
            if key in self.flow_samples:
                samples.setdefault(flow, {})[kind] = self.flow_samples[key]
        return {"checks": {name: {"passed": p, "failed": f}
                           for name, (p, f) in sorted(self.checks.items())},
                "checks_passed": passed, "checks_failed": failed,
                "checks_rate": round(passed / (passed + failed), 6) if passed + failed else None,
                "failed_flows": errors, "failed_flow_samples": samples}

    def add(self, report: Any) -> None:
        if self.t0_ns and not report.final:
            # How late the report reached us after its interval ended: the engine never waits
            # for the coordinator (workers.ReportSender), but a busy coordinator sees the run
            # late, and so do the live view and abort_after.
            due = self.t0_ns + (report.interval + 1) * self.interval_ms * 1_000_000
            self.report_lag_ns = max(self.report_lag_ns, _core.now_ns() - due)
        self.pending[report.interval].append(report)
        if report.checks:
            for name, (p, f) in report.checks.items():
                counts = self.checks.setdefault(name, [0, 0])
                counts[0] += p
                counts[1] += f
        if report.flow_errors:
            for key, n in report.flow_errors.items():
                self.flow_errors[key] = self.flow_errors.get(key, 0) + n
        if report.flow_samples:
            for key, message in report.flow_samples.items():
                self.flow_samples.setdefault(key, message)
        if report.final:
            self.final_index[report.worker] = report.interval
        merged = False
        while self._complete(self.next_index):
            self._merge(self.pending.pop(self.next_index, []), self.next_index)
            self.next_index += 1
            merged = True
        if merged and not self._over():
            # hdrh histograms are reference cycles (histogram <-> encoder) of 184 KiB each;
            # collect an interval's as soon as it is merged rather than whenever the cyclic
            # GC gets round to it, so the coordinator's memory stays flat however long the run.
            gc.collect(1)

    def _over(self) -> bool:
        """The run is over: its intervals are merged up to its end, or every worker sent its
        final report. (No collection then: the first of a run, of what its start left young,
        takes 2 ms, and a 1 s run's one interval is merged after its last arrival.)"""
        return (self.next_index * self.interval_s >= self.plan.duration_s
                or len(self.final_index) >= self.workers)

    def note_counts(self, message: bytes) -> None:
        """Adds a worker's end-of-run engine counts (its DONE message) to the run's."""
        for key, n in decode_done_counts(message).items():
            self.done_counts[key] = self.done_counts.get(key, 0) + n

    def note_done(self, message: bytes) -> int | None:
        """A worker's DONE: a `unique` feeder that ran out ended its part of the run (every
        worker's, as the rows follow the run-wide arrival sequence); returns when (the run
        ran until then; session.Stop.ran_out), else None. Over TLS it also says what the
        worker's handshakes negotiated; the first kept."""
        self.note_counts(message)
        if self.negotiated is None:
            self.negotiated = decode_done_tls(message)
        exhausted = decode_done(message)
        if exhausted is None:
            return None
        if self.exhausted is None or exhausted[1] < self.exhausted[1]:
            self.exhausted = exhausted
        return exhausted[1]

    def _complete(self, index: int) -> bool:
        # Every worker reports every interval up to its final one, so an interval is whole
        # once each worker has reported it or has already sent its final report.
        if index not in self.pending:
            return False
        reported = {r.worker for r in self.pending[index]}
        return all(w in reported or self.final_index.get(w, 1 << 62) < index
                   for w in range(self.workers))

    def take(self) -> list[MergedInterval]:
        """The intervals merged since the last take, in interval order."""
        out, self.merged = self.merged, []
        return out

    def drain(self) -> list[MergedInterval]:
        """Merges every interval still pending (the run is over: no more reports come) and
        returns what was not yet taken."""
        for index in sorted(self.pending):
            self._merge(self.pending.pop(index), index)
        return self.take()

    def _merge(self, reports: list[Any], index: int) -> None:
        if not reports:
            return
        self.last_index = max(self.last_index, index)
        start_ms, end_ms = index * self.interval_ms, (index + 1) * self.interval_ms
        merged: dict[tuple[int, int, str, str], list[Any]] = {}
        nstages = len(self.plan.stages)
        scheduled, unsent, sent = [0] * nstages, [0] * nstages, [0] * nstages
        waited, late = [0] * nstages, [0] * nstages
        self.open_peak = max(self.open_peak, sum(r.open_connections for r in reports))
        # The workers' CPU time and connect times go to the stage running at the interval's
        # middle.
        mid_s = (index + 0.5) * self.interval_s
        cpu_stage = next((i for i, w in enumerate(self.windows) if w.start_s <= mid_s < w.end_s),
                         len(self.windows) - 1)
        connect_time = histogram.new_histogram()
        tls_time = histogram.new_histogram() if self.plan.tls is not None else None
        for r in reports:
            histogram.add_slice_of(connect_time, r.connect_time)
            if tls_time is not None:
                histogram.add_slice_of(tls_time, r.tls_time)
            self.tls_handshakes[r.worker] = r.tls_handshakes
            self.connects[r.worker] = (r.connects, r.connect_failures)
            self.totals[cpu_stage].cpu_ns += r.cpu_ns - self.cpu_ns.get(r.worker, 0)
            self.totals[cpu_stage].wall_ns += self.interval_ms * 1_000_000
            self.cpu_ns[r.worker] = r.cpu_ns
            self.engine_counts[r.worker] = (r.retried, r.dropped, r.closed_by_server,
                                            r.closed_by_us, r.clamped)
            for i in range(nstages):
                scheduled[i] += r.scheduled[i]
                unsent[i] += r.unsent[i]
                sent[i] += r.sent[i]
                waited[i] += r.waited[i]
                late[i] += r.late[i]
            for c in r.cells:
                key = (c.stage, c.request, c.outcome, c.backend)
                m = merged.get(key)
                if m is None:
                    m = merged[key] = [histogram.new_histogram(), histogram.new_histogram(), 0]
                histogram.add_slice_of(m[0], c.latency)
                histogram.add_slice_of(m[1], c.service)
                m[2] += c.n
        rows: list[dict[str, Any]] = []
        # The sums below share the cells' histograms where they can (histogram.Sum): nothing
        # merged later changes a histogram of this interval's rows.
        per_stage: dict[int, list[Any]] = {}
        # the interval's successful responses' latency, its responses and its errors
        ok_latency = histogram.Sum()
        responses = errors = 0
        rows += self._ok_rows("interval", merged, lambda stage: (start_ms, end_ms))
        for key, (lat, svc, count) in sorted(merged.items()):
            stage, request, outcome, backend = key
            rows.append(self._row("interval", stage, request, outcome, backend, start_ms, end_ms,
                                  count, lat, svc))
            acc = self.cells.get(key)
            if acc is None:
                acc = self.cells[key] = [histogram.Sum(), histogram.Sum(), 0]
            acc[0].add(lat)
            acc[1].add(svc)
            acc[2] += count
            if request in self.flow_requests:
                continue
            s = per_stage.get(stage)
            if s is None:
                s = per_stage[stage] = [histogram.Sum(), histogram.Sum(), 0]
            s[0].add(lat)
            s[1].add(svc)
            s[2] += count
            if outcome not in self.error_outcomes:
                ok_latency.add(lat)
            if outcome in STATUS_OUTCOMES:
                responses += count
            if outcome in self.error_outcomes:
                errors += count
        for i in range(nstages):
            t = self.totals[i]
            t.scheduled += scheduled[i]
            t.unsent += unsent[i]
            t.sent += sent[i]
            t.waited += waited[i]
            t.late += late[i]
            self.sent_by_workers += sent[i]
            connects = connect_time if i == cpu_stage else None
            handshakes = tls_time if i == cpu_stage else None
            if connects is not None:
                self.connect_times[i].add(connects)
            if handshakes is not None:
                self.tls_times[i].add(handshakes)
            if i in per_stage or scheduled[i] or unsent[i] or (connects and
                                                                connects.total_count):
                lat, svc, count = per_stage.get(i) or (histogram.Sum(), histogram.Sum(), 0)
                row = self._row("interval", i, None, "*", "*", start_ms, end_ms, count,
                                lat.value, svc.value)
                row["scheduled"], row["unsent"] = scheduled[i], unsent[i]
                row["connect"] = connects
                row["tls"] = handshakes
                rows.append(row)
        shard_rows = ([] if self.shard_of is None
                      else self._shard_rows(reports, start_ms, end_ms))
        self.requests += responses
        self.errors += errors
        name, target, achieved = self._rates(index, responses)
        self.merged.append(MergedInterval(index, start_ms / 1000, end_ms / 1000, name, target,
                                          achieved, rows, shard_rows, responses,
                                          ok_latency.value, self.requests, self.errors))

    def _shard_rows(self, reports: list[Any], start_ms: int, end_ms: int
                    ) -> list[dict[str, Any]]:
        """A sharded run's interval, per shard and stage (scope "shard", name and outcome
        "*"): what each shard scheduled, left unsent and got back, kept for diagnosis."""
        assert self.shard_of is not None
        acc: dict[tuple[int, int], list[Any]] = {}
        nstages = len(self.plan.stages)
        for r in reports:
            shard = self.shard_of(r.worker)
            for i in range(nstages):
                if r.scheduled[i] or r.unsent[i]:
                    a = _shard_acc(acc, (shard, i))
                    a[3] += r.scheduled[i]
                    a[4] += r.unsent[i]
            for c in r.cells:
                a = _shard_acc(acc, (shard, c.stage))
                histogram.add_slice_of(a[0], c.latency)
                histogram.add_slice_of(a[1], c.service)
                a[2] += c.n
        rows = []
        for (shard, stage), (lat, svc, count, scheduled, unsent) in sorted(acc.items()):
            row = self._row("shard", stage, None, "*", "*", start_ms, end_ms, count, lat, svc)
            row["scheduled"], row["unsent"], row["shard"] = scheduled, unsent, str(shard)
            rows.append(row)
        return rows

    def _rates(self, index: int, responses: int) -> tuple[str, float | None, float]:
        """The stage at the interval's middle, its target rate and the achieved one."""
        t = (index + 0.5) * self.interval_s
        window = next((w for w in self.windows if w.start_s <= t < w.end_s), self.windows[-1])
        expected = schedule.expected_between(self.windows, index * self.interval_s,
                                             (index + 1) * self.interval_s)
        # A closed-model stage has no target rate to show.
        target = expected / self.interval_s if window.stage.open_model else None
        return window.stage.name, target, responses / self.interval_s

    def _row(self, scope: str, stage: int | None, request: int | None, outcome: str,
             backend: str, start_ms: int, end_ms: int, count: int, lat: HdrHistogram,
             svc: HdrHistogram) -> dict[str, Any]:
        return {
            "scope": scope,
            "stage": "*" if stage is None else self.plan.stages[stage].name,
            "name": "*" if request is None else self.plan.requests[request].name,
            "outcome": outcome, "backend": backend,
            "start_ms": start_ms, "end_ms": end_ms, "count": count,
            "latency": lat, "service": svc,
        }

    def _ok_rows(self, scope: str, cells: dict[tuple[Any, Any, str, str], list[Any]],
                 span: Any) -> list[dict[str, Any]]:
        """Rows merged over the successful responses (outcome "ok", backend "*"), per stage
        and request name and per stage with name "*": where every reader takes the headline
        latency from (DESIGN.md "Parquet results"). One per (stage, name) that had any
        outcome, with count 0 when everything failed. `span(stage)` gives (start_ms, end_ms).
        """
        merged: dict[tuple[Any, Any], list[Any]] = {}
        for (stage, request, outcome, _), (lat, svc, count) in cells.items():
            for key in ((stage, request), (stage, None)):
                if key[1] is None and request in self.flow_requests:
                    continue
                acc = merged.get(key)
                if acc is None:
                    acc = merged[key] = [histogram.Sum(), histogram.Sum(), 0]
                if outcome not in self.error_outcomes:
                    acc[0].add(lat)
                    acc[1].add(svc)
                    acc[2] += count
        rows = []
        for (stage, request), (lat, svc, count) in sorted(
                merged.items(), key=lambda kv: (-1 if kv[0][0] is None else kv[0][0],
                                                -1 if kv[0][1] is None else kv[0][1])):
            start_ms, end_ms = span(stage)
            rows.append(self._row(scope, stage, request, "ok", "*", start_ms, end_ms, count,
                                  lat.value, svc.value))
        return rows

    # -- the end of the run -----------------------------------------------------------------

    def finish(self, elapsed_s: float, stopped_s: float | None = None
               ) -> tuple[list[dict[str, Any]], RunInputs]:
        """Stage and run rows, and what the summary needs besides them (RunInputs): the
        summary's figures are folded from these rows (analysis/figures.summary_figures), as
        `compare` and `ls` fold the same rows read back from the file.

        stopped_s: when a run stopped early (a signal, an SLO abort, a crash), how long it
        ran; the rates of the stages it cut short are over the time they ran."""
        rows: list[dict[str, Any]] = []
        # The stage and run sums share histograms where one holds all (histogram.Sum).
        cells = {key: [lat.value, svc.value, count]
                 for key, (lat, svc, count) in self.cells.items()}
        run_cells: dict[tuple[int, str, str], list[Any]] = {}
        run_all = [histogram.Sum(), histogram.Sum()]
        run_count = 0
        stages: list[ScopeRun] = []
        end_ms = int((elapsed_s if stopped_s is None else stopped_s) * 1000)
        for i, w in enumerate(self.windows):
            s_lat, s_svc = histogram.Sum(), histogram.Sum()
            s_count = 0
            ran = _ran_in(w, stopped_s)
            s_ms, e_ms = int(w.start_s * 1000), int((w.start_s + ran) * 1000)
            for key in sorted(k for k in cells if k[0] == i):
                lat, svc, count = cells[key]
                _, request, outcome, backend = key
                rows.append(self._row("stage", i, request, outcome, backend, s_ms, e_ms,
                                      count, lat, svc))
                if request not in self.flow_requests:
                    s_lat.add(lat)
                    s_svc.add(svc)
                    s_count += count
                rk = (request, outcome, backend)
                acc = run_cells.get(rk)
                if acc is None:
                    acc = run_cells[rk] = [histogram.Sum(), histogram.Sum(), 0]
                acc[0].add(lat)
                acc[1].add(svc)
                acc[2] += count
            t = self.totals[i]
            s_lat_h, s_svc_h = s_lat.value, s_svc.value
            row = self._row("stage", i, None, "*", "*", s_ms, e_ms, s_count, s_lat_h, s_svc_h)
            row["scheduled"], row["unsent"] = t.scheduled, t.unsent
            row["connect"] = self.connect_times[i].value
            row["tls"] = self.tls_times[i].value if self.plan.tls is not None else None
            rows.append(row)
            rows += self._ok_rows("stage", {k: v for k, v in cells.items() if k[0] == i},
                                  lambda _, span=(s_ms, e_ms): span)
            run_all[0].add(s_lat_h)
            run_all[1].add(s_svc_h)
            run_count += s_count
            # A closed-model stage has no arrival schedule, hence no target rate; one cut
            # short is judged over the time it ran.
            target = None
            if w.stage.open_model:
                target = schedule.arrivals(w.stage) / w.stage.duration_s
                if 0 < ran < w.stage.duration_s:
                    target = schedule.expected_between(self.windows, w.start_s,
                                                       w.start_s + ran) / ran
            stages.append(ScopeRun(w.stage.name, ran, target, w.stage.open_model,
                                   t.waited, t.late, t.worker_cpu))
        run_rows = {key: [lat.value, svc.value, count]
                    for key, (lat, svc, count) in sorted(run_cells.items())}
        for (request, outcome, backend), (lat, svc, count) in run_rows.items():
            rows.append(self._row("run", None, request, outcome, backend, 0, end_ms, count,
                                  lat, svc))
        rows += self._ok_rows("run", {(None, *k): v for k, v in run_rows.items()},
                              lambda _: (0, end_ms))
        row = self._row("run", None, None, "*", "*", 0, end_ms, run_count,
                        run_all[0].value, run_all[1].value)
        row["scheduled"] = sum(t.scheduled for t in self.totals)
        row["unsent"] = sum(t.unsent for t in self.totals)
        run_connect = histogram.Sum()
        for h in self.connect_times:
            run_connect.add(h.value)
        row["connect"] = run_connect.value
        if self.plan.tls is not None:
            run_tls = histogram.Sum()
            for h in self.tls_times:
                run_tls.add(h.value)
            row["tls"] = run_tls.value
        else:
            row["tls"] = None
        rows.append(row)
        duration = (min(elapsed_s, self.plan.duration_s) or self.plan.duration_s
                    if stopped_s is None else stopped_s)
        run = ScopeRun("all", duration, self._run_target(stopped_s), True,
                       sum(t.waited for t in self.totals), sum(t.late for t in self.totals),
                       StageTotals.combined_cpu(self.totals))
        connections: dict[str, Any] = {
            "opened": sum(c for c, _ in self.connects.values()),
            "failed": sum(f for _, f in self.connects.values()),
            "open_peak": self.open_peak,
            "closed_by_server": sum(c[2] for c in self.engine_counts.values()),
            "closed_by_us": sum(c[3] for c in self.engine_counts.values()),
            "retried": sum(c[0] for c in self.engine_counts.values())}
        if self.done_counts:
            # Connections by the protocol they spoke: over TLS the one ALPN chose for each.
            connections["by_protocol"] = {
                "http/1.1": self.done_counts.get("protocol_h1", 0),
                "h2": self.done_counts.get("protocol_h2", 0)}
        if self.plan.http == "2":
            connections["h2_zero_streams"] = self.done_counts.get("h2_zero_streams", 0)
        if self.plan.tls is not None:
            full, resumed, failed = (sum(h[k] for h in self.tls_handshakes.values())
                                     for k in range(3))
            connections["tls_handshakes"] = {"full": full, "resumed": resumed,
                                             "failed": failed}
        dropped = sum(c[1] for c in self.engine_counts.values())
        return rows, RunInputs(stages, run, connections, {
            "dropped_samples": dropped,
            "clamped_samples": sum(c[4] for c in self.engine_counts.values()),
            "report_lag_ms": round(max(0, self.report_lag_ns) / 1e6, 1)},
            http2=self.plan.http == "2")

    def _run_target(self, stopped_s: float | None) -> float | None:
        """The run's target rate: its open-model arrivals over the open-model stages' time
        (up to where the run stopped); None when no stage is open-model."""
        if stopped_s is None:
            return run_target_rps(self.plan)
        open_s = sum(_ran_in(w, stopped_s) for w in self.windows if w.stage.open_model)
        if not open_s:
            return None
        return schedule.expected_between(self.windows, 0.0, stopped_s) / open_s


def run_target_rps(plan: Plan) -> float | None:
    """The run's target rate: its open-model arrivals over the open-model stages' time.
    Closed-model stages have no target and stay out of it; None when every stage is closed."""
    open_s = sum(s.duration_s for s in plan.stages if s.open_model)
    if not open_s:
        return None
    return sum(schedule.arrivals(s) for s in plan.stages if s.open_model) / open_s


def _shard_acc(acc: dict[tuple[int, int], list[Any]], key: tuple[int, int]) -> list[Any]:
    """A shard's and stage's [latency, service, count, scheduled, unsent] in `acc`."""
    a = acc.get(key)
    if a is None:
        a = acc[key] = [histogram.new_histogram(), histogram.new_histogram(), 0, 0, 0]
    return a


def _ran_in(window: Any, stopped_s: float | None) -> float:
    """How long a stage ran: all of it, unless the run stopped before its end."""
    if stopped_s is None:
        return float(window.stage.duration_s)
    return min(max(0.0, stopped_s - window.start_s), float(window.stage.duration_s))
