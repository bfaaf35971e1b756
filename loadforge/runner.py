"""The coordinator of one run: target, preflight, workers, exact merging, results, summary.

Workers report each 1 s interval; once every worker has reported an interval, its cells are
merged with hdrh into interval rows and streamed to the Parquet file, and folded into the
per-stage histograms. Only those per-stage histograms stay in memory, so memory does not grow
with the length of a run.
"""

from __future__ import annotations

import gc
import os
import secrets
import signal
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from hdrh.histogram import HdrHistogram
from rich.console import Console

from loadforge import __version__, _core, histogram, observe, scaling, schedule, slo, summary
from loadforge.errors import InputError, RunError, TargetUnreachable, WorkerCrashed
from loadforge.plan import ERROR_KINDS, OUTCOMES, STATUS_OUTCOMES, Plan, Request
from loadforge.progress import LiveProgress
from loadforge.results import ResultWriter, read_result
from loadforge.workers import (
    DONE,
    FAILED,
    INTERVAL,
    READY,
    WorkerPool,
    WorkerSpec,
    decode_interval,
    fd_limit,
)

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


@dataclass
class Target:
    url: str
    host: str          # for the Host header
    address: str       # what the engine connects to
    port: int


@dataclass
class RunOutcome:
    summary: dict[str, Any]
    path: str
    ok: bool


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
    return Target(url, host, str(info[0][4][0]), port)


def encode_request(req: Request, host: str) -> bytes:
    lines = [f"{req.method} {req.path} HTTP/1.1", f"Host: {host}", f"User-Agent: {USER_AGENT}"]
    lines += [f"{name}: {value}" for name, value in req.headers]
    if req.body or req.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(req.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + req.body


def preflight(target: Target, req: Request, timeout_s: float) -> None:
    """One request before the run, so a wrong URL fails in seconds with a clear message."""
    url = f"http://{target.host}{req.path}"
    try:
        # The engine connects straight to the target over plain HTTP, so the preflight does
        # too: no proxy from the environment, and no CA bundle to load for TLS it never uses.
        with httpx.Client(timeout=min(timeout_s, 5.0), headers={"User-Agent": USER_AGENT},
                          trust_env=False, verify=False) as client:
            resp = client.request(req.method, url, headers=dict(req.headers), content=req.body)
    except httpx.HTTPError as exc:
        raise TargetUnreachable(f"target {target.url} is unreachable: {req.method} {url} "
                                f"failed ({type(exc).__name__}: {exc})") from None
    if resp.status_code == 404:
        raise TargetUnreachable(f"target {target.url}: {req.method} {url} returned 404 Not Found; "
                                "check the URL and the request paths (or pass --no-preflight)")


class StageTotals:
    def __init__(self) -> None:
        self.scheduled = 0
        self.sent = 0
        self.unsent = 0


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
        self.open_peak = 0
        # Windowed objectives with abort_after, judged as each interval is merged.
        self.live_slo = slo.LiveSLO(plan, interval_s)
        self.abort_reason: str | None = None

    def add(self, report: Any) -> None:
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
        self.open_peak = max(self.open_peak, sum(r.open_connections for r in reports))
        for r in reports:
            self.connects[r.worker] = (r.connects, r.connect_failures)
            self.engine_counts[r.worker] = (r.retried, r.dropped, r.closed_by_server,
                                            r.closed_by_us)
            for i in range(nstages):
                scheduled[i] += r.scheduled[i]
                unsent[i] += r.unsent[i]
                sent[i] += r.sent[i]
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
        interval_all = [histogram.new_histogram(), 0, 0, 0]   # latency, responses, errors
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
            histogram.merge(interval_all[0], lat)
            if outcome in STATUS_OUTCOMES:
                interval_all[1] += count
            if outcome in ERROR_KINDS or outcome in self.plan.fail_status:
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
            self.sent_by_workers += sent[i]
            if i in per_stage or scheduled[i] or unsent[i]:
                lat, svc, count = per_stage.get(i) or (histogram.new_histogram(),
                                                        histogram.new_histogram(), 0)
                row = self._row("interval", i, None, "*", "*", start_ms, end_ms, count, lat, svc)
                row["scheduled"], row["unsent"] = scheduled[i], unsent[i]
                rows.append(row)
        self.writer.write(rows)
        reason = self.live_slo.interval(index, rows)
        if reason and self.abort_reason is None:
            self.abort_reason = reason
        self.requests += interval_all[1]
        self.errors += interval_all[2]
        self._show(index, interval_all)

    def _show(self, index: int, interval_all: list[Any]) -> None:
        t = (index + 0.5) * self.interval_s
        stage = next((w.stage.name for w in self.windows if w.start_s <= t < w.end_s),
                     self.windows[-1].stage.name)
        expected = schedule.expected_between(self.windows, index * self.interval_s,
                                             (index + 1) * self.interval_s)
        st = histogram.stats(interval_all[0])
        self.progress.update(stage, min((index + 1) * self.interval_s, self.plan.duration_s),
                             expected / self.interval_s, interval_all[1] / self.interval_s,
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

    # -- the end of the run -----------------------------------------------------------------

    def finish(self, elapsed_s: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Stage and run rows, and the summary's figures (without SLO verdicts)."""
        rows: list[dict[str, Any]] = []
        run_cells: dict[tuple[int, str, str], list[Any]] = {}
        run_all = [histogram.new_histogram(), histogram.new_histogram()]
        run_outcomes: dict[str, int] = defaultdict(int)
        stages_out = []
        end_ms = int(elapsed_s * 1000)
        for i, w in enumerate(self.windows):
            s_lat, s_svc = histogram.new_histogram(), histogram.new_histogram()
            outcomes: dict[str, int] = defaultdict(int)
            s_ms, e_ms = int(w.start_s * 1000), int(w.end_s * 1000)
            for key in sorted(k for k in self.cells if k[0] == i):
                lat, svc, count = self.cells[key]
                _, request, outcome, backend = key
                rows.append(self._row("stage", i, request, outcome, backend, s_ms, e_ms,
                                      count, lat, svc))
                histogram.merge(s_lat, lat)
                histogram.merge(s_svc, svc)
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
            rows.append(row)
            histogram.merge(run_all[0], s_lat)
            histogram.merge(run_all[1], s_svc)
            for k, v in outcomes.items():
                run_outcomes[k] += v
            target = schedule.arrivals(w.stage) / w.stage.duration_s if w.stage.open_model else 0.0
            block = summary.stats_block(s_lat, s_svc, dict(outcomes), t.scheduled, t.unsent,
                                        w.stage.duration_s, target, self.plan.fail_status)
            stages_out.append({"name": w.stage.name,
                               "model": "open" if w.stage.open_model else "closed", **block})
        for (request, outcome, backend), (lat, svc, count) in sorted(run_cells.items()):
            rows.append(self._row("run", None, request, outcome, backend, 0, end_ms, count,
                                  lat, svc))
        scheduled = sum(t.scheduled for t in self.totals)
        unsent = sum(t.unsent for t in self.totals)
        row = self._row("run", None, None, "*", "*", 0, end_ms, sum(run_outcomes.values()),
                        run_all[0], run_all[1])
        row["scheduled"], row["unsent"] = scheduled, unsent
        rows.append(row)
        duration = min(elapsed_s, self.plan.duration_s) or self.plan.duration_s
        open_arrivals = sum(schedule.arrivals(s) for s in self.plan.stages)
        run_block = summary.stats_block(run_all[0], run_all[1], dict(run_outcomes), scheduled,
                                        unsent, duration, open_arrivals / self.plan.duration_s,
                                        self.plan.fail_status)
        connections = {"opened": sum(c for c, _ in self.connects.values()),
                       "failed": sum(f for _, f in self.connects.values()),
                       "open_peak": self.open_peak,
                       "closed_by_server": sum(c[2] for c in self.engine_counts.values()),
                       "closed_by_us": sum(c[3] for c in self.engine_counts.values()),
                       "retried": sum(c[0] for c in self.engine_counts.values())}
        dropped = sum(c[1] for c in self.engine_counts.values())
        return rows, {**run_block, "connections": connections, "stages": stages_out,
                      "dropped_samples": dropped}


def _worker_specs(plan: Plan, target: Target, workers: int, interval_s: float,
                  backend_header: str | None) -> list[WorkerSpec]:
    requests = [(encode_request(r, target.host), r.method == "HEAD") for r in plan.requests]
    mix = schedule.request_mix(plan.requests)
    stages = [(s.open_model, s.rate_from or 0.0, s.rate_to or 0.0, s.duration_s,
               s.concurrency or 0, s.think_s) for s in plan.stages]
    closed = max((s.concurrency or 0 for s in plan.stages), default=0)
    specs = []
    for w in range(workers):
        share = plan.connections // workers + (1 if w < plan.connections % workers else 0)
        closed_share = closed // workers + (1 if w < closed % workers else 0)
        specs.append(WorkerSpec(w, workers, target.address, target.port, requests, mix, stages,
                                max(share, closed_share, 1), plan.timeout_s, interval_s,
                                backend_header, plan.timer_resolution_s,
                                plan.requests_per_connection))
    return specs


def _check_fd_limit(specs: list[WorkerSpec], plan: Plan) -> None:
    limit = fd_limit()
    need = max(s.connections for s in specs) + 64
    if need > limit:
        raise InputError(
            f"connections: {plan.connections} connections over {len(specs)} worker(s) need "
            f"{need} open files per worker, but the limit is {limit}; raise it (ulimit -n) "
            "or use more workers")


def _collect(pool: WorkerPool, agg: Aggregator, plan: Plan, t0: int) -> None:
    done = [False] * len(pool.channels)
    deadline = t0 + int((plan.duration_s + plan.timeout_s + 10.0) * 1e9)
    interrupted: list[bool] = []

    def on_sigint(signum: int, frame: Any) -> None:
        # Ctrl-C ends the run early but keeps it: workers stop scheduling, report what is in
        # flight, and the results are written as usual. A second Ctrl-C aborts.
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
        pool.stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        _collect_until_done(pool, agg, plan, done, deadline)
    finally:
        signal.signal(signal.SIGINT, previous)


def _collect_until_done(pool: WorkerPool, agg: Aggregator, plan: Plan, done: list[bool],
                        deadline: int) -> None:
    stopping = False
    while not all(done):
        ready = pool.ready([i for i in range(len(done)) if not done[i]], timeout=0.5)
        for i in ready:
            try:
                msg = pool.channels[i].recv_bytes()
            except (EOFError, OSError):
                raise WorkerCrashed(f"worker {i} exited unexpectedly "
                                    f"(exit code {pool.exitcode(i)})") from None
            tag = msg[:1]
            if tag == INTERVAL:
                agg.add(decode_interval(msg))
            elif tag == DONE:
                done[i] = True
            elif tag == FAILED:
                raise WorkerCrashed(f"worker {i} failed: {msg[1:].decode(errors='replace')}")
        for i in range(len(done)):
            if not done[i] and pool.exitcode(i) is not None and not ready:
                raise WorkerCrashed(f"worker {i} exited unexpectedly "
                                    f"(exit code {pool.exitcode(i)})")
        if agg.abort_reason and not stopping:
            pool.stop()
            stopping = True
        now = _core.now_ns()
        if now > deadline and not stopping:
            pool.stop()
            stopping = True
            deadline = now + int((plan.timeout_s + 5.0) * 1e9)
        elif now > deadline:
            raise WorkerCrashed("workers did not finish within the run's time plus its timeout")


def _start(pool: WorkerPool) -> int:
    pending = set(range(len(pool.channels)))
    limit = time.monotonic() + READY_TIMEOUT_S
    while pending:
        for i in pool.ready(sorted(pending), timeout=0.5):
            try:
                msg = pool.channels[i].recv_bytes()
            except (EOFError, OSError):
                raise WorkerCrashed(f"worker {i} exited while starting") from None
            if msg[:1] == FAILED:
                raise WorkerCrashed(f"worker {i} failed to start: "
                                    f"{msg[1:].decode(errors='replace').strip().splitlines()[-1]}")
            if msg[:1] == READY:
                pending.discard(i)
        if time.monotonic() > limit:
            raise WorkerCrashed(f"workers {sorted(pending)} did not start in {READY_TIMEOUT_S:.0f} s")
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
    workers = opts.workers or plan.workers or os.cpu_count() or 1
    workers = max(1, min(workers, plan.connections))
    specs = _worker_specs(plan, target, workers, opts.interval_s,
                          observe.backend_header(plan, opts.backend_header, sandbox))
    _check_fd_limit(specs, plan)
    # Metric pollers and timed actions, started at time zero (observe.py, actions.py).
    watchers = observe.Watchers(plan, opts.interval_s, sandbox)
    if opts.preflight:
        preflight(target, plan.requests[0], plan.timeout_s)
    run_id = new_run_id(plan)
    path = os.path.join(opts.out_dir, f"{run_id}.parquet")
    metadata: dict[str, Any] = {
        "profile": plan.source, "profile_name": plan.name, "profile_path": plan.path,
        "target": target.url, "engine": "cython-epoll", "workers": str(workers),
        "connections": str(plan.connections),
        "stages": [{"name": s.name, "duration_s": s.duration_s, "rate_from": s.rate_from,
                    "rate_to": s.rate_to, "concurrency": s.concurrency, "think_s": s.think_s}
                   for s in plan.stages],
        "interval_ms": str(int(opts.interval_s * 1000)),
    }
    started = time.time()
    writer = ResultWriter(path, run_id, metadata, opts.labels)
    pool = None
    try:
        with LiveProgress(plan.duration_s, console, opts.quiet) as progress:
            agg = Aggregator(plan, writer, workers, opts.interval_s, progress)
            pool = WorkerPool(specs)
            t0 = _start(pool)
            watchers.start(t0)
            try:
                _collect(pool, agg, plan, t0)
            finally:
                watched = watchers.stop()
            elapsed = (_core.now_ns() - t0) / 1e9
            agg.drain()
        pool.join()
        rows, figures = agg.finish(elapsed)
        writer.write(rows + watched)
        writer.close()
    except BaseException:
        if pool is not None:
            pool.terminate()
        writer.abort()
        raise
    # Judged from the file just written, so the verdicts are those any later reader gets.
    written = read_result(path)
    verdicts = slo.evaluate(plan, written) + scaling.annotate(figures, plan, written)
    ok = all(v["ok"] for v in verdicts) and agg.abort_reason is None
    result = {"run_id": run_id, "result": path, "ok": ok, "target": target.url,
              "profile": plan.name, "workers": workers, "connections": plan.connections,
              "started": started, **figures, "slo": verdicts, "aborted": agg.abort_reason}
    return RunOutcome(result, path, ok)


__all__ = ["RunOptions", "RunOutcome", "execute", "parse_target", "encode_request",
           "RunError", "OUTCOMES"]
