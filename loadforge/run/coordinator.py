"""The coordinator of one run: target, preflight, workers, exact merging, results, summary.

Workers report each 1 s interval; once every worker has reported an interval, its cells are
merged with hdrh into interval rows and streamed to the Parquet file, and folded into the
per-stage histograms. Only those per-stage histograms stay in memory, so memory does not grow
with the length of a run.
"""

from __future__ import annotations

import gc
import json
import os
import secrets
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from loadforge import __version__, _core, schedule
from loadforge.analysis import scaling, slo
from loadforge.config.plan import ERROR_KINDS, OUTCOMES, STATUS_OUTCOMES, Plan, Request
from loadforge.config.redact import redact_profile, redact_url
from loadforge.errors import (
    InputError,
    ResultsWriteFailed,
    RunError,
    TargetUnreachable,
    WorkerCrashed,
)
from loadforge.observe import pollers as observe
from loadforge.present import summary
from loadforge.results import histogram
from loadforge.results.store import ResultWriter, read_result
from loadforge.run.progress import LiveProgress
from loadforge.run.workers import (
    DONE,
    FAILED,
    INTERVAL,
    WorkerPool,
    WorkerSpec,
    decode_interval,
    fd_limit,
)

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram
    from rich.console import Console

    from loadforge.run.shards import ShardPool

USER_AGENT = f"loadforge/{__version__}"
READY_TIMEOUT_S = 30.0
START_DELAY_NS = 100_000_000      # time zero lies this far after the last worker is ready


@dataclass
class RunOptions:
    target: str | None = None         # overrides the profile's target
    workers: int | None = None
    out_dir: str = "results"
    labels: dict[str, str] = field(default_factory=dict)
    quiet: bool = False
    preflight: bool = True
    interval_s: float = 1.0
    backend_header: str | None = None
    # --slo objectives, archived apart from the profile so that `ls` judges them again.
    slo_flags: dict[str, float] = field(default_factory=dict)
    # Sharded runs (shards.py): how many shard processes, who starts them, the clock tolerance.
    shards: int = 0
    launcher: str = "local"
    max_clock_offset_s: float = 0.05
    kube: Any = None                  # kube.KubeOptions, with --launcher kubernetes


@dataclass
class Target:
    url: str
    host: str          # for the Host header
    address: str       # what the engine connects to
    port: int
    path: str = ""     # the URL's path: a prefix of every request's path


@dataclass
class RunOutcome:
    summary: dict[str, Any]
    path: str | None          # None when not even a partial result could be saved
    ok: bool
    signum: int = 0           # the signal that interrupted the run, 0 if none
    failure: str | None = None    # why the run could not go on (results kept, incomplete)

    @property
    def exit_code(self) -> int:
        """DESIGN.md's: 3 could not go on, 128 + N interrupted, 1 an SLO failed, else 0."""
        if self.failure:
            return 3
        if self.signum:
            return 128 + self.signum
        return 0 if self.ok else 1


def parse_target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme == "https":
        raise InputError(f"target {url}: https targets are not supported yet, use http://")
    if parts.scheme != "http" or not parts.hostname:
        raise InputError(f"target {url}: expected an http:// URL such as http://127.0.0.1:8080/")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise InputError(f"target {url}: {exc}") from None
    try:
        info = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetUnreachable(f"target {url}: cannot resolve {parts.hostname} ({exc.strerror})") from None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return Target(url, host, str(info[0][4][0]), port, parts.path)


def request_path(prefix: str, path: str) -> str:
    """The request target sent for `path` under the target URL's path `prefix`:
    http://h/api + /users -> /api/users (one slash between them). A path that does not start
    with "/" (the flags-only run's "" or "?query") is appended to the prefix as it is."""
    if not path.startswith("/"):
        return (prefix or "/") + path
    return prefix.rstrip("/") + path


def host_header(req: Request, host: str) -> str:
    """The request's own Host header (a virtual host on a load balancer reached by address),
    else the target's."""
    return next((value for name, value in req.headers if name.lower() == "host"), host)


def encode_request(req: Request, host: str, prefix: str = "") -> bytes:
    lines = [f"{req.method} {request_path(prefix, req.path)} HTTP/1.1",
             f"Host: {host_header(req, host)}", f"User-Agent: {USER_AGENT}"]
    lines += [f"{name}: {value}" for name, value in req.headers if name.lower() != "host"]
    if req.body or req.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(req.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + req.body


# HTTP/2 forbids connection-specific headers (RFC 9113 8.2.2); Host becomes :authority.
_H2_DROPPED = ("host", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
               "upgrade", "content-length")


def h2_headers(req: Request, host: str, prefix: str = "",
               scheme: str = "http") -> list[tuple[str, str]]:
    """The request's HTTP/2 header list, pseudo-headers first, names in lower case; scheme is
    the target URL's (https once TLS carries h2)."""
    headers = [(":method", req.method), (":path", request_path(prefix, req.path) or "/"),
               (":scheme", scheme), (":authority", host_header(req, host)),
               ("user-agent", USER_AGENT)]
    headers += [(name.lower(), value) for name, value in req.headers
                if name.lower() not in _H2_DROPPED]
    if req.body or req.method in ("POST", "PUT", "PATCH"):
        headers.append(("content-length", str(len(req.body))))
    return headers


def encode_h2_request(req: Request, host: str, prefix: str = "", scheme: str = "http",
                      ) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """What the engine's HTTP/2 side sends for req: its header list and body, as bytes."""
    return ([(k.encode("latin-1"), v.encode("latin-1"))
             for k, v in h2_headers(req, host, prefix, scheme)], req.body)


# Headers that describe a body: the preflight sends none.
_BODY_HEADERS = ("content-type", "content-length", "transfer-encoding", "content-encoding")


def preflight_request(requests: tuple[Request, ...]) -> tuple[Request, bool]:
    """What the preflight sends, and whether its status is judged (a 404 stops the run).

    The first request of the mix that is a GET or HEAD without a body, as it stands; else (every
    request sends a body or changes state) a GET of the first request's path without its body
    headers, whose status says nothing about that path and is not judged. Never a body, never
    a method that changes state: the preflight reaches the target outside the run's counts.
    """
    for req in requests:
        if req.method in ("GET", "HEAD") and not req.body:
            return req, True
    first = requests[0]
    headers = tuple((k, v) for k, v in first.headers if k.lower() not in _BODY_HEADERS)
    return Request(first.name, "GET", first.path, headers, b"", first.weight), False


def preflight(target: Target, req: Request, timeout_s: float, judge_status: bool = True,
              http: str = "1.1") -> None:
    """One request before the run, so a wrong URL fails in seconds with a clear message."""
    url = f"http://{target.host}{request_path(target.path, req.path)}"
    try:
        if http == "2":
            from loadforge.run.h2preflight import h2_status

            status = h2_status(target.address, target.port,
                               h2_headers(req, target.host, target.path,
                                          urlsplit(target.url).scheme),
                               min(timeout_s, 5.0))
        else:
            status = _preflight_status(target, req, min(timeout_s, 5.0))
    except (OSError, HTTPException) as exc:
        over = " over HTTP/2" if http == "2" else ""
        raise TargetUnreachable(f"target {target.url} is unreachable: {req.method} {url}{over} "
                                f"failed ({type(exc).__name__}: {exc})") from None
    if status == 404 and judge_status:
        raise TargetUnreachable(f"target {target.url}: {req.method} {url} returned 404 Not Found; "
                                "check the URL and the request paths (or pass --no-preflight)")


def _preflight_status(target: Target, req: Request, timeout_s: float) -> int:
    """The status of one request sent where the engine sends (the resolved address: no proxy
    from the environment). http.client rather than httpx: importing httpx cost 60 ms of
    start-up CPU, a third of the coordinator's before its first request."""
    conn = HTTPConnection(target.address, target.port, timeout=timeout_s)
    try:
        # One Host header: the request's own (a virtual host) or the target's.
        headers = {"Host": host_header(req, target.host), "User-Agent": USER_AGENT}
        headers.update((k, v) for k, v in req.headers if k.lower() != "host")
        conn.request(req.method, request_path(target.path, req.path), headers=headers)
        resp = conn.getresponse()
        resp.read(1 << 20)
        return resp.status
    finally:
        conn.close()


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


class Aggregator:
    """Merges interval reports from all workers, exactly, in interval order."""

    def __init__(self, plan: Plan, writer: ResultWriter, workers: int, interval_s: float,
                 progress: LiveProgress):
        self.plan = plan
        self.writer = writer
        self.workers = workers
        self.interval_ms = int(interval_s * 1000)
        self.interval_s = interval_s
        self.progress = progress
        self.windows = schedule.layout(plan)
        self.pending: dict[int, list[Any]] = defaultdict(list)
        self.final_index: dict[int, int] = {}
        self.next_index = 0
        # (stage, request, outcome, backend) -> [latency, service, count], whole stage
        self.cells: dict[tuple[int, int, str, str], list[Any]] = {}
        self.totals = [StageTotals() for _ in plan.stages]
        self.requests = 0
        self.errors = 0
        self.sent_by_workers = 0
        self.last_index = -1
        # per worker: connects and failed connects so far (cumulative), open connections
        self.connects: dict[int, tuple[int, int]] = {}
        # per worker, cumulative: arrivals retried on a new connection, outcomes dropped,
        # connections closed by the server, by the engine
        self.engine_counts: dict[int, tuple[int, int, int, int]] = {}
        self.t0_ns = 0               # time zero, once the workers started
        self.report_lag_ns = 0       # the latest an interval report reached the coordinator
        # per stage: TCP connect times of the connections opened in its intervals
        self.connect_times = [histogram.new_histogram() for _ in plan.stages]
        self.open_peak = 0
        # Windowed objectives with abort_after, judged as each interval is merged.
        self.live_slo = slo.LiveSLO(plan, interval_s)
        self.abort_reason: str | None = None
        self.error_outcomes = set(ERROR_KINDS) | set(plan.fail_status)
        self.cpu_ns: dict[int, int] = {}      # per worker: CPU time reported so far
        self.write_failed = False
        # A sharded run: the shard of a worker (its engine stripe), for the per-shard rows.
        self.shard_of: Callable[[int], int] | None = None

    def add(self, report: Any) -> None:
        if self.t0_ns and not report.final:
            # How late the report reached us after its interval ended: the engine never waits
            # for the coordinator (workers.ReportSender), but a busy coordinator sees the run
            # late, and so do the live view and abort_after.
            due = self.t0_ns + (report.index + 1) * self.interval_ms * 1_000_000
            self.report_lag_ns = max(self.report_lag_ns, _core.now_ns() - due)
        self.pending[report.index].append(report)
        if report.final:
            self.final_index[report.worker] = report.index
        merged = False
        while self._complete(self.next_index):
            self._merge(self.pending.pop(self.next_index, []), self.next_index)
            self.next_index += 1
            merged = True
        if merged:
            # hdrh histograms are reference cycles (histogram <-> encoder) of 184 KiB each;
            # collect an interval's as soon as it is merged rather than whenever the cyclic
            # GC gets round to it, so the coordinator's memory stays flat however long the run.
            gc.collect(1)

    def _complete(self, index: int) -> bool:
        # Every worker reports every interval up to its final one, so an interval is whole
        # once each worker has reported it or has already sent its final report.
        if index not in self.pending:
            return False
        reported = {r.worker for r in self.pending[index]}
        return all(w in reported or self.final_index.get(w, 1 << 62) < index
                   for w in range(self.workers))

    def drain(self) -> None:
        for index in sorted(self.pending):
            self._merge(self.pending.pop(index), index)

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
        for r in reports:
            ct = r.connect_time
            if ct is not None:
                histogram.add_slice(connect_time, ct.lo, ct.counts, ct.total, ct.min_us,
                                    ct.max_us)
            self.connects[r.worker] = (r.connects, r.connect_failures)
            self.totals[cpu_stage].cpu_ns += r.cpu_ns - self.cpu_ns.get(r.worker, 0)
            self.totals[cpu_stage].wall_ns += self.interval_ms * 1_000_000
            self.cpu_ns[r.worker] = r.cpu_ns
            self.engine_counts[r.worker] = (r.retried, r.dropped, r.closed_by_server,
                                            r.closed_by_us)
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
                histogram.add_slice(m[0], c.latency.lo, c.latency.counts, c.latency.total,
                                    c.latency.min_us, c.latency.max_us)
                histogram.add_slice(m[1], c.service.lo, c.service.counts, c.service.total,
                                    c.service.min_us, c.service.max_us)
                m[2] += c.count
        rows: list[dict[str, Any]] = []
        per_stage: dict[int, list[Any]] = {}
        # latency of the successful responses, responses, errors
        interval_all = [histogram.new_histogram(), 0, 0, 0]
        rows += self._ok_rows("interval", merged, lambda stage: (start_ms, end_ms))
        for key, (lat, svc, count) in sorted(merged.items()):
            stage, request, outcome, backend = key
            rows.append(self._row("interval", stage, request, outcome, backend, start_ms, end_ms,
                                  count, lat, svc))
            s = per_stage.get(stage)
            if s is None:
                s = per_stage[stage] = [histogram.new_histogram(), histogram.new_histogram(), 0]
            histogram.merge(s[0], lat)
            histogram.merge(s[1], svc)
            s[2] += count
            if outcome not in self.error_outcomes:
                histogram.merge(interval_all[0], lat)
            if outcome in STATUS_OUTCOMES:
                interval_all[1] += count
            if outcome in self.error_outcomes:
                interval_all[2] += count
            acc = self.cells.get(key)
            if acc is None:
                self.cells[key] = [lat, svc, count]
            else:
                histogram.merge(acc[0], lat)
                histogram.merge(acc[1], svc)
                acc[2] += count
        for i in range(nstages):
            t = self.totals[i]
            t.scheduled += scheduled[i]
            t.unsent += unsent[i]
            t.sent += sent[i]
            t.waited += waited[i]
            t.late += late[i]
            self.sent_by_workers += sent[i]
            connects = connect_time if i == cpu_stage else None
            if connects is not None:
                histogram.merge(self.connect_times[i], connects)
            if i in per_stage or scheduled[i] or unsent[i] or (connects and
                                                                connects.total_count):
                lat, svc, count = per_stage.get(i) or (histogram.new_histogram(),
                                                        histogram.new_histogram(), 0)
                row = self._row("interval", i, None, "*", "*", start_ms, end_ms, count, lat, svc)
                row["scheduled"], row["unsent"] = scheduled[i], unsent[i]
                row["connect"] = connects
                rows.append(row)
        self.writer.write(rows)
        if self.shard_of is not None:
            self.writer.write(self._shard_rows(reports, start_ms, end_ms))
        if self.writer.failure and not self.write_failed:
            self.write_failed = True        # raised once, to stop the run; later rows drop
            raise ResultsWriteFailed(self.writer.failure)
        reason = self.live_slo.interval(index, rows)
        if reason and self.abort_reason is None:
            self.abort_reason = reason
        self.requests += interval_all[1]
        self.errors += interval_all[2]
        self._show(index, interval_all)

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
                    a = acc.setdefault((shard, i), [histogram.new_histogram(),
                                                    histogram.new_histogram(), 0, 0, 0])
                    a[3] += r.scheduled[i]
                    a[4] += r.unsent[i]
            for c in r.cells:
                a = acc.setdefault((shard, c.stage), [histogram.new_histogram(),
                                                      histogram.new_histogram(), 0, 0, 0])
                histogram.add_slice(a[0], c.latency.lo, c.latency.counts, c.latency.total,
                                    c.latency.min_us, c.latency.max_us)
                histogram.add_slice(a[1], c.service.lo, c.service.counts, c.service.total,
                                    c.service.min_us, c.service.max_us)
                a[2] += c.count
        rows = []
        for (shard, stage), (lat, svc, count, scheduled, unsent) in sorted(acc.items()):
            row = self._row("shard", stage, None, "*", "*", start_ms, end_ms, count, lat, svc)
            row["scheduled"], row["unsent"], row["shard"] = scheduled, unsent, str(shard)
            rows.append(row)
        return rows

    def _show(self, index: int, interval_all: list[Any]) -> None:
        t = (index + 0.5) * self.interval_s
        window = next((w for w in self.windows if w.start_s <= t < w.end_s), self.windows[-1])
        stage = window.stage.name
        expected = schedule.expected_between(self.windows, index * self.interval_s,
                                             (index + 1) * self.interval_s)
        st = histogram.stats(interval_all[0])
        # A closed-model stage has no target rate to show.
        target = expected / self.interval_s if window.stage.open_model else None
        self.progress.update(stage, min((index + 1) * self.interval_s, self.plan.duration_s),
                             target, interval_all[1] / self.interval_s,
                             st["p50"], st["p99"], self.errors, self.requests)

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
                acc = merged.get(key)
                if acc is None:
                    acc = merged[key] = [histogram.new_histogram(), histogram.new_histogram(), 0]
                if outcome not in self.error_outcomes:
                    histogram.merge(acc[0], lat)
                    histogram.merge(acc[1], svc)
                    acc[2] += count
        rows = []
        for (stage, request), (lat, svc, count) in sorted(
                merged.items(), key=lambda kv: (-1 if kv[0][0] is None else kv[0][0],
                                                -1 if kv[0][1] is None else kv[0][1])):
            start_ms, end_ms = span(stage)
            rows.append(self._row(scope, stage, request, "ok", "*", start_ms, end_ms, count,
                                  lat, svc))
        return rows

    # -- the end of the run -----------------------------------------------------------------

    def finish(self, elapsed_s: float, stopped_s: float | None = None
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Stage and run rows, and the summary's figures (without SLO verdicts).

        stopped_s: when a run stopped early (a signal, an SLO abort, a crash), how long it
        ran; the rates of the stages it cut short are over the time they ran."""
        rows: list[dict[str, Any]] = []
        run_cells: dict[tuple[int, str, str], list[Any]] = {}
        run_all = [histogram.new_histogram(), histogram.new_histogram()]
        # successful responses' latency and service time, failures' latency
        run_ok = [histogram.new_histogram(), histogram.new_histogram(), histogram.new_histogram()]
        run_outcomes: dict[str, int] = defaultdict(int)
        stages_out = []
        end_ms = int((elapsed_s if stopped_s is None else stopped_s) * 1000)
        for i, w in enumerate(self.windows):
            s_lat, s_svc = histogram.new_histogram(), histogram.new_histogram()
            s_err = histogram.new_histogram()
            outcomes: dict[str, int] = defaultdict(int)
            ran = _ran_in(w, stopped_s)
            s_ms, e_ms = int(w.start_s * 1000), int((w.start_s + ran) * 1000)
            for key in sorted(k for k in self.cells if k[0] == i):
                lat, svc, count = self.cells[key]
                _, request, outcome, backend = key
                rows.append(self._row("stage", i, request, outcome, backend, s_ms, e_ms,
                                      count, lat, svc))
                histogram.merge(s_lat, lat)
                histogram.merge(s_svc, svc)
                if outcome in self.error_outcomes:
                    histogram.merge(s_err, lat)
                outcomes[outcome] += count
                rk = (request, outcome, backend)
                acc = run_cells.get(rk)
                if acc is None:
                    run_cells[rk] = [histogram.copy(lat), histogram.copy(svc), count]
                else:
                    histogram.merge(acc[0], lat)
                    histogram.merge(acc[1], svc)
                    acc[2] += count
            t = self.totals[i]
            row = self._row("stage", i, None, "*", "*", s_ms, e_ms, sum(outcomes.values()),
                            s_lat, s_svc)
            row["scheduled"], row["unsent"] = t.scheduled, t.unsent
            row["connect"] = self.connect_times[i]
            rows.append(row)
            ok_rows = self._ok_rows("stage", {k: v for k, v in self.cells.items() if k[0] == i},
                                    lambda _, span=(s_ms, e_ms): span)
            rows += ok_rows
            ok = next((r for r in ok_rows if r["name"] == "*"), None)
            s_ok, s_ok_svc = ((ok["latency"], ok["service"]) if ok is not None else
                              (histogram.new_histogram(), histogram.new_histogram()))
            histogram.merge(run_all[0], s_lat)
            histogram.merge(run_all[1], s_svc)
            for h, part in zip(run_ok, (s_ok, s_ok_svc, s_err), strict=True):
                histogram.merge(h, part)
            for k, v in outcomes.items():
                run_outcomes[k] += v
            # A closed-model stage has no arrival schedule, hence no target rate; one cut
            # short is judged over the time it ran.
            target = None
            if w.stage.open_model:
                target = schedule.arrivals(w.stage) / w.stage.duration_s
                if 0 < ran < w.stage.duration_s:
                    target = schedule.expected_between(self.windows, w.start_s,
                                                       w.start_s + ran) / ran
            block = summary.stats_block(s_ok, s_ok_svc, dict(outcomes), t.scheduled, t.unsent,
                                        ran, target, self.plan.fail_status,
                                        error_latency=s_err, waited=t.waited, late=t.late,
                                        worker_cpu=t.worker_cpu, http2=self.plan.http == "2")
            block["connect_time_us"] = summary.connect_block(self.connect_times[i])
            stages_out.append({"name": w.stage.name,
                               "model": "open" if w.stage.open_model else "closed", **block})
        for (request, outcome, backend), (lat, svc, count) in sorted(run_cells.items()):
            rows.append(self._row("run", None, request, outcome, backend, 0, end_ms, count,
                                  lat, svc))
        run_ok_rows = self._ok_rows("run", {(None, *k): v for k, v in run_cells.items()},
                                    lambda _: (0, end_ms))
        rows += run_ok_rows
        scheduled = sum(t.scheduled for t in self.totals)
        unsent = sum(t.unsent for t in self.totals)
        row = self._row("run", None, None, "*", "*", 0, end_ms, sum(run_outcomes.values()),
                        run_all[0], run_all[1])
        row["scheduled"], row["unsent"] = scheduled, unsent
        run_connect = histogram.new_histogram()
        for h in self.connect_times:
            histogram.merge(run_connect, h)
        row["connect"] = run_connect
        rows.append(row)
        duration = (min(elapsed_s, self.plan.duration_s) or self.plan.duration_s
                    if stopped_s is None else stopped_s)
        run_block = summary.stats_block(run_ok[0], run_ok[1], dict(run_outcomes), scheduled,
                                        unsent, duration, self._run_target(stopped_s),
                                        self.plan.fail_status, error_latency=run_ok[2],
                                        waited=sum(t.waited for t in self.totals),
                                        late=sum(t.late for t in self.totals),
                                        worker_cpu=StageTotals.combined_cpu(self.totals),
                                        http2=self.plan.http == "2")
        run_block["requests_by_name"] = self._by_name(run_cells, run_ok_rows)
        connections = {"opened": sum(c for c, _ in self.connects.values()),
                       "failed": sum(f for _, f in self.connects.values()),
                       "open_peak": self.open_peak,
                       "closed_by_server": sum(c[2] for c in self.engine_counts.values()),
                       "closed_by_us": sum(c[3] for c in self.engine_counts.values()),
                       "retried": sum(c[0] for c in self.engine_counts.values()),
                       "connect_time_us": summary.connect_block(run_connect)}
        dropped = sum(c[1] for c in self.engine_counts.values())
        return rows, {**run_block, "connections": connections, "stages": stages_out,
                      "dropped_samples": dropped,
                      "report_lag_ms": round(max(0, self.report_lag_ns) / 1e6, 1)}

    def _run_target(self, stopped_s: float | None) -> float | None:
        """The run's target rate: its open-model arrivals over the open-model stages' time
        (up to where the run stopped); None when no stage is open-model."""
        if stopped_s is None:
            return run_target_rps(self.plan)
        open_s = sum(_ran_in(w, stopped_s) for w in self.windows if w.stage.open_model)
        if not open_s:
            return None
        return schedule.expected_between(self.windows, 0.0, stopped_s) / open_s

    def _by_name(self, run_cells: dict[tuple[int, str, str], list[Any]],
                 ok_rows: list[dict[str, Any]]) -> dict[str, Any]:
        """`requests_by_name`: per request name, responses, errors and the latency of its
        successful responses (the run's per-name "ok" rows)."""
        ok_latency = {r["name"]: r["latency"] for r in ok_rows if r["name"] != "*"}
        counts: dict[int, list[int]] = {}
        for (request, outcome, _), (_, _, count) in run_cells.items():
            c = counts.setdefault(request, [0, 0])
            if outcome in STATUS_OUTCOMES:
                c[0] += count
            if outcome in self.error_outcomes:
                c[1] += count
        out = {}
        for request, req in enumerate(self.plan.requests):
            requests, errors = counts.get(request, [0, 0])
            out[req.name] = summary.name_block(requests, errors, ok_latency.get(req.name)
                                               or histogram.new_histogram())
        return out


def run_target_rps(plan: Plan) -> float | None:
    """The run's target rate: its open-model arrivals over the open-model stages' time.
    Closed-model stages have no target and stay out of it; None when every stage is closed."""
    open_s = sum(s.duration_s for s in plan.stages if s.open_model)
    if not open_s:
        return None
    return sum(schedule.arrivals(s) for s in plan.stages if s.open_model) / open_s


def _ran_in(window: Any, stopped_s: float | None) -> float:
    """How long a stage ran: all of it, unless the run stopped before its end."""
    if stopped_s is None:
        return float(window.stage.duration_s)
    return min(max(0.0, stopped_s - window.start_s), float(window.stage.duration_s))


def _worker_specs(plan: Plan, target: Target, workers: int, interval_s: float,
                  backend_header: str | None) -> list[WorkerSpec]:
    requests = [(encode_request(r, target.host, target.path), r.method == "HEAD")
                for r in plan.requests]
    http2 = ([encode_h2_request(r, target.host, target.path, urlsplit(target.url).scheme)
              for r in plan.requests]
             if plan.http == "2" else None)
    mix = schedule.request_mix(plan.requests)
    stages = [(s.open_model, s.rate_from or 0.0, s.rate_to or 0.0, s.duration_s,
               s.concurrency or 0, s.think_s) for s in plan.stages]
    closed = max((s.concurrency or 0 for s in plan.stages), default=0)
    specs = []
    for w in range(workers):
        share = plan.connections // workers + (1 if w < plan.connections % workers else 0)
        closed_share = closed // workers + (1 if w < closed % workers else 0)
        if http2 is not None:
            # a closed-model user holds a stream, not a connection
            closed_share = -(-closed_share // plan.streams)
        specs.append(WorkerSpec(w, workers, target.address, target.port, requests, mix, stages,
                                max(share, closed_share, 1), plan.timeout_s, interval_s,
                                backend_header, plan.timer_resolution_s,
                                plan.requests_per_connection, http2, plan.streams))
    return specs


def _check_fd_limit(specs: list[WorkerSpec], plan: Plan) -> None:
    limit = fd_limit()
    need = max(s.connections for s in specs) + 64
    if need > limit:
        raise InputError(
            f"connections: {plan.connections} connections over {len(specs)} worker(s) need "
            f"{need} open files per worker, but the limit is {limit}; raise it (ulimit -n) "
            "or use more workers")


@dataclass
class Stop:
    """How the collection ended early, if it did."""

    signum: int = 0       # the signal that interrupted the run (SIGINT, SIGTERM), 0 if none
    at_ns: int = 0        # when scheduling was asked to stop (a signal, an SLO abort)
    hard: bool = False    # a second signal: workers killed, in-flight requests not awaited

    def ran_s(self, t0: int, elapsed_s: float, planned_s: float) -> float:
        """How long the run ran: to the stop, else to its planned end."""
        if self.at_ns:
            return min(max(0.0, (self.at_ns - t0) / 1e9), planned_s)
        return min(elapsed_s, planned_s)


def _collect(pool: WorkerPool | ShardPool, agg: Aggregator, plan: Plan, t0: int,
             stop: Stop) -> None:
    done = [False] * len(pool.channels)
    deadline = t0 + int((plan.duration_s + plan.timeout_s + 10.0) * 1e9)

    def on_signal(signum: int, frame: Any) -> None:
        # Ctrl-C or SIGTERM ends the run early but keeps it: workers stop scheduling, report
        # what is in flight, and the results are written as usual. A second one kills the
        # workers at once; what they reported is still written.
        if stop.signum:
            stop.hard = True
            pool.kill()
            return
        stop.signum, stop.at_ns = signum, _core.now_ns()
        pool.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if isinstance(pool, WorkerPool):
            _collect_until_done(pool, agg, plan, done, deadline, stop)
        else:
            pool.collect_until_done(agg, plan, done, deadline, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _collect_until_done(pool: WorkerPool, agg: Aggregator, plan: Plan, done: list[bool],
                        deadline: int, stop: Stop) -> None:
    stopping = False
    while not all(done) and not stop.hard:
        ready = pool.ready([i for i in range(len(done)) if not done[i]], timeout=0.5)
        for i in ready:
            try:
                msg = pool.channels[i].recv_bytes()
            except (EOFError, OSError):
                if stop.hard:
                    return
                raise WorkerCrashed(f"worker {i} exited unexpectedly "
                                    f"(exit code {pool.exitcode(i)})") from None
            tag = msg[:1]
            if tag == INTERVAL:
                agg.add(decode_interval(msg))
            elif tag == DONE:
                done[i] = True
            elif tag == FAILED:
                last = (msg[1:].decode(errors="replace").strip().splitlines() or ["?"])[-1]
                raise WorkerCrashed(f"worker {i} failed: {last}")
        for i in range(len(done)):
            if not done[i] and pool.exitcode(i) is not None and not ready and not stop.hard:
                raise WorkerCrashed(f"worker {i} exited unexpectedly "
                                    f"(exit code {pool.exitcode(i)})")
        if agg.abort_reason and not stopping:
            pool.stop()
            stopping = True
            stop.at_ns = stop.at_ns or _core.now_ns()
        now = _core.now_ns()
        if now > deadline and not stopping:
            pool.stop()
            stopping = True
            deadline = now + int((plan.timeout_s + 5.0) * 1e9)
        elif now > deadline:
            raise WorkerCrashed("workers did not finish within the run's time plus its timeout")
    if stop.hard:
        _read_what_was_sent(pool, agg)


def _read_what_was_sent(pool: WorkerPool, agg: Aggregator) -> None:
    """The intervals killed workers had already sent (bounded: their sockets only drain)."""
    for channel in pool.channels:
        try:
            while channel.poll(0):
                msg = channel.recv_bytes()
                if msg[:1] == INTERVAL:
                    agg.add(decode_interval(msg))
        except (EOFError, OSError):
            continue


def _start(pool: WorkerPool) -> int:
    pool.wait_ready(READY_TIMEOUT_S)
    t0 = _core.now_ns() + START_DELAY_NS
    for ch in pool.channels:
        ch.send_bytes(str(t0).encode())
    return t0


def new_run_id(plan: Plan) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in plan.name)[:40]
    return f"{stamp}-{name}-{secrets.token_hex(3)}"


def execute(plan: Plan, opts: RunOptions, console: Console) -> RunOutcome:
    target_url = opts.target or plan.target
    sandbox = None
    if target_url == "sandbox":
        from loadforge.sandbox import start_sandbox

        sandbox = start_sandbox(plan.sandbox or None)
        target_url = sandbox.url
    try:
        return _execute(plan, opts, console, target_url, sandbox)
    finally:
        if sandbox is not None:
            sandbox.stop()


def _execute(plan: Plan, opts: RunOptions, console: Console, target_url: str,
             sandbox: Any = None) -> RunOutcome:
    target = parse_target(target_url)
    if plan.http == "2" and (missing := _core.http2_library()):
        raise RunError(f"--http 2 needs libnghttp2.so.14 (Debian package libnghttp2-14), "
                       f"which did not load: {missing}")
    workers = opts.workers or plan.workers or os.cpu_count() or 1
    workers = max(1, min(workers, plan.connections))
    per_shard = 0
    if opts.shards:
        from loadforge.run.shards import shard_workers

        requested = opts.workers or plan.workers
        if opts.kube is not None and not requested:
            from loadforge.run.kube import default_workers

            requested = default_workers(opts.kube.cpu)
        per_shard = shard_workers(requested, opts.shards, plan.connections)
        workers = opts.shards * per_shard
    specs = _worker_specs(plan, target, workers, opts.interval_s,
                          observe.backend_header(plan, opts.backend_header, sandbox))
    _check_fd_limit(specs, plan)
    # Metric pollers and timed actions, started at time zero (observe/).
    watchers = observe.Watchers(plan, opts.interval_s, sandbox)
    if opts.preflight:
        first, judged = preflight_request(plan.requests)
        preflight(target, first, plan.timeout_s, judge_status=judged, http=plan.http)
    run_id = new_run_id(plan)
    path = os.path.join(opts.out_dir, f"{run_id}.parquet")
    metadata: dict[str, Any] = {
        # Result files are shared (CI artifacts): no credentials in them (redact.py).
        "profile": redact_profile(plan.source), "profile_name": plan.name,
        "profile_path": plan.path, "target": redact_url(target.url), "engine": "cython-epoll", "workers": str(workers),
        "connections": str(plan.connections),
        "http": plan.http,
        **({"streams": str(plan.streams)} if plan.http == "2" else {}),
        "stages": [{"name": s.name, "duration_s": s.duration_s, "rate_from": s.rate_from,
                    "rate_to": s.rate_to, "concurrency": s.concurrency, "think_s": s.think_s}
                   for s in plan.stages],
        "interval_ms": str(int(opts.interval_s * 1000)),
    }
    if opts.slo_flags:
        metadata["slo_flags"] = opts.slo_flags
    if opts.shards:
        metadata["shard_count"] = str(opts.shards)
    started = time.time()
    writer = ResultWriter(path, run_id, metadata, opts.labels)
    pool: WorkerPool | ShardPool | None = None
    stop = Stop()
    failure: str | None = None
    try:
        with LiveProgress(plan.duration_s, console, opts.quiet) as progress:
            agg = Aggregator(plan, writer, workers, opts.interval_s, progress)
            if opts.shards:
                from loadforge.run.shards import ShardPool

                agg.shard_of = lambda k: k % opts.shards
                pool = ShardPool(specs, opts.shards, per_shard, opts.max_clock_offset_s,
                                 opts.launcher, **_remote_shards(opts, run_id))
                t0 = pool.start()
            else:
                pool = WorkerPool(specs)
                t0 = _start(pool)
            watchers.start(t0)
            agg.t0_ns = t0
            try:
                _collect(pool, agg, plan, t0, stop)
            except RunError as exc:
                # A worker crashed or the disk filled: keep what was merged, marked incomplete.
                failure = str(exc)
                stop.at_ns = stop.at_ns or _core.now_ns()
                pool.kill()
            finally:
                watched = watchers.stop()
            elapsed = (_core.now_ns() - t0) / 1e9
            agg.drain()
        pool.join()
        ran_s = stop.ran_s(t0, elapsed, plan.duration_s)
        rows, figures = agg.finish(elapsed, ran_s if stop.at_ns else None)
        writer.write(rows + watched, last=True)
        end_meta = _end_metadata(stop, ran_s, failure or writer.failure)
        if pool is not None and not isinstance(pool, WorkerPool):
            end_meta["shards"] = json.dumps(pool.metadata(), sort_keys=True)
        writer.close(end_meta)
        failure = failure or writer.failure
    except BaseException:
        if pool is not None:
            pool.terminate()
        writer.abort()
        raise
    state = {"interrupted": bool(stop.signum), "ran_s": round(ran_s, 3),
             "complete": failure is None, "error": failure}
    saved = path if writer.published else None
    verdicts: list[dict[str, Any]] = []
    if saved:
        # Judged from the file just written, so the verdicts are those any later reader gets.
        written = read_result(saved)
        verdicts = slo.evaluate(plan, written) + scaling.annotate(figures, plan, written)
    ok = all(v["ok"] for v in verdicts) and agg.abort_reason is None and failure is None
    result = {"run_id": run_id, "result": saved, "ok": ok, "target": redact_url(target.url),
              "profile": plan.name, "workers": workers, "connections": plan.connections,
              "started": started, **figures, "slo": verdicts, "aborted": agg.abort_reason,
              # The target saw these too: servers' counts reconcile with requests + these.
              "preflight": {"requests": 1 if opts.preflight else 0}, **state}
    if pool is not None and not isinstance(pool, WorkerPool):
        result["shards"] = pool.figures(ran_s)
    return RunOutcome(result, saved, ok, stop.signum, failure)


def _remote_shards(opts: RunOptions, run_id: str) -> dict[str, Any]:
    """ShardPool's arguments for a launcher other than local (kube.py)."""
    if opts.launcher != "kubernetes":
        return {}
    from loadforge.run.kube import KubeLauncher, bind_address

    kube = opts.kube
    return {"bind": bind_address(kube.coordinator_host), "port": kube.coordinator_port,
            "remote": KubeLauncher(kube, run_id, opts.shards),
            "start_timeout_s": kube.start_timeout_s}


def _end_metadata(stop: Stop, ran_s: float, failure: str | None) -> dict[str, str]:
    """What the Parquet metadata says of how the run ended (known only at its end)."""
    meta = {"interrupted": "true" if stop.signum else "false", "ran_s": f"{ran_s:.3f}",
            "complete": "false" if failure else "true"}
    if stop.signum:
        meta["interrupted_by"] = signal.Signals(stop.signum).name
    if failure:
        meta["incomplete_reason"] = failure
    return meta


__all__ = ["RunOptions", "RunOutcome", "execute", "parse_target", "encode_request",
           "RunError", "OUTCOMES"]
