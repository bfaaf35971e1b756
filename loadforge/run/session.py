"""A run's session with its workers: prepare them, start them, collect until done, stop.

`compile_feeders` and `worker_specs` make what each worker process gets (with the fd and
buffer checks, exit 2 before anything starts); `start` passes the local workers' start
barrier; `collect` merges their reports until every one is done and yields each merged
interval to its caller (the runner writes, folds and judges it, and asks for a stop through
`Stop.ask`: the collect loop calls nothing above it), turning Ctrl-C, SIGTERM and SIGHUP
into an orderly stop (a second one kills). The collect loop is one, for a pool of local
workers (run/workers.WorkerPool) and a pool of shards (run/shards.ShardPool) alike: each
pool reads its own framing (`Pool.receive`) and knows how its members fail.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from loadforge import _core, schedule
from loadforge.config.files import RELATIVE_HINT, check_regular
from loadforge.config.outcomes import expect_words
from loadforge.config.plan import Plan
from loadforge.engine.requests import (
    USER_AGENT,
    encode_h2_request,
    encode_request,
    h2_template_head,
    template_head,
)
from loadforge.errors import InputError, WorkerCrashed
from loadforge.run.target import Target
from loadforge.run.wire import Channel
from loadforge.run.workers import WorkerPool, WorkerSpec, fd_limit

if TYPE_CHECKING:
    # The engine's tables load for a plan with feeders (compile_feeders); the merge once the
    # workers run (runner.py): the start of a plain run does without both.
    from loadforge.engine import tables
    from loadforge.run.merge import Aggregator, MergedInterval

READY_TIMEOUT_S = 30.0
# Time zero lies this far after the last worker is ready. Each worker has opened its pool by
# then (Engine.warm: connects, TLS handshakes, HTTP/2 SETTINGS), waits in recv() for time
# zero and is woken within microseconds; the margin covers a busy machine's scheduling delay
# (a worker woken later sends its first arrivals late, timed from when they were due), and
# the coordinator's own start of the merge and the writer, which shares the cores (their
# modules load after time zero, runner.py). 1,000/s for 1 s on the 2-core VM, 14 runs each at
# 5 and at 10 ms: p99 median 223 and 236 µs, max median 3.0 ms at both. (While the pool opened
# after time zero was known, 5 ms let an HTTP/2 connection's first requests go before a slow
# server's SETTINGS: test_http2's window tests, 3 of 20; warm() waits for them.)
START_DELAY_NS = 5_000_000
# How many of its connections a worker opens before time zero, over HTTP/1.1 in the open
# model: enough for its share of the peak rate at this response time (Little's law: rate x
# latency), at least PRECONNECT_MIN, at most its share of the pool; the rest open when an
# arrival finds every open one busy. A slower server needs more, and a new connection's connect
# is then a small part of the latency that made it needed. Opening the whole pool cost a worker
# at 50/s over TLS (nginx on 127.0.0.1, 5 runs) 17.0 ms of CPU before time zero and 11.1 ms in
# the run, 28 of its 32 handshakes and close_notify unused; with 8: 4.7 and 9.7 ms (over TCP,
# 0.8 and 0.3 ms before time zero). HTTP/2 spreads its streams over every open connection
# (round robin), and a closed-model user holds one: both open what they will use.
PRECONNECT_S = 0.1
PRECONNECT_MIN = 8
# Workers = "auto": in the open model, one per AUTO_RATE arrivals per second of the peak rate,
# at most one per core; one per core for closed-model users and scripted flows, whose work
# is the workers'. A worker costs a process (its fork, its pool, 8 ms of CPU in a 1 s run,
# benchmarks/startup.py) and one at 1,000/s spends a few percent of a core: against nginx on
# 127.0.0.1, 7 runs of 2 s each, p99 157 us with one worker and 159 us with two at 1,000/s
# (169 and 141 us at 2,000/s). h2load starts one thread unless told more (-t).
AUTO_RATE = 1000.0


def auto_workers(plan: Plan) -> int:
    """Worker processes for `workers = "auto"` (AUTO_RATE)."""
    cores = os.cpu_count() or 1
    peak = schedule.peak_rate(plan)
    if plan.flows is not None or peak is None or not all(s.open_model for s in plan.stages):
        return cores
    return max(1, min(cores, math.ceil(peak / AUTO_RATE)))


@dataclass(eq=False)
class RunOptions:
    """How a run is made, apart from its plan: the command line's run options."""

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
    # --coordinator-address (local, external), --shard-token-file and --shard-start-timeout
    coordinator_address: tuple[str, int] | None = None
    shard_token_file: str | None = None
    shard_start_timeout_s: float | None = None


@dataclass(eq=False)
class RunOutcome:
    """What a run ends with: its summary, where its results are, and how it ended."""

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


def new_run_id(plan: Plan) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in plan.name)[:40]
    # os.urandom, as secrets.token_hex does, without its import (hmac, hashlib: 1.5 ms)
    return f"{stamp}-{name}-{os.urandom(3).hex()}"


# -- what the workers get ----------------------------------------------------------------------

def compile_feeders(plan: Plan, target: Target, inline: bool = False) -> tables.Compiled | None:
    """The plan's feeder tables and request templates, compiled for the engine (exit 2 naming
    a missing column, an unreadable file or a value that would break the request framing);
    None for a plan with no templates and no flows (its feeders' files checked all the same),
    which then does without engine/tables."""
    label = "profile" if plan.path in ("", "<profile>") else f"profile {os.path.basename(plan.path)}"
    for i, feeder in enumerate(plan.feeders):
        # A feeder no slot uses is not loaded, but a file that is not there is still an error.
        # Regular files only: a FIFO would block the read below for ever.
        check_regular(feeder.path, f"{label}: feeders[{i}]", RELATIVE_HINT)
        if not os.access(feeder.path, os.R_OK):
            raise InputError(f"{label}: feeders[{i}]: cannot read {feeder.path} (permission "
                             "denied)")
    if plan.flows is None and not plan.templates:
        return None
    from loadforge.engine import tables

    if plan.flows is not None:
        # Flows read every feeder's rows (user.rows) from tables of their own: table i is
        # feeder i, its columns as they are in the file.
        return tables.compile_rows(plan.feeders, label, inline=inline)
    if plan.http == "2":
        h2_heads = [None if t is None else
                    h2_template_head(r, t, target.host, target.path, target.scheme)
                    for r, t in zip(plan.requests, plan.templates, strict=True)]
        return tables.compile_h2_templates(plan.feeders, list(plan.templates), h2_heads, label,
                                           inline=inline)
    heads = [template_head(r, target.host, target.path) for r in plan.requests]
    return tables.compile_templates(plan.feeders, list(plan.templates), heads, label,
                                    inline=inline)


def worker_specs(plan: Plan, target: Target, workers: int, interval_s: float,
                 backend_header: str | None,
                 compiled: tables.Compiled | None = None) -> list[WorkerSpec]:
    requests = [(encode_request(r, target.host, target.path), r.method == "HEAD")
                for r in plan.requests]
    feeder_tables = [t.spec() for t in compiled.tables] if compiled else []
    templates = list(compiled.templates) if compiled and compiled.templates else []
    h2_templated = compiled.h2 if compiled and compiled.h2 else [None] * len(plan.requests)
    http2 = ([t if t is not None else
              encode_h2_request(r, target.host, target.path, target.scheme)
              for r, t in zip(plan.requests, h2_templated, strict=True)]
             if plan.http == "2" else None)
    mix = schedule.request_mix(plan.requests)
    stages = [(s.open_model, s.rate_from or 0.0, s.rate_to or 0.0, s.duration_s,
               s.concurrency or 0, s.think_s) for s in plan.stages]
    closed = max((s.concurrency or 0 for s in plan.stages), default=0)
    open_pool = _open_pool(plan, workers)
    flows = None
    if plan.flows is not None:
        from loadforge.engine import tables

        open_rows = sum(schedule.arrivals(s) for s in plan.stages if s.open_model)
        # The module's text goes with the spec: a shard on another machine (Kubernetes) has
        # no copy of it, and every worker runs the text the coordinator checked.
        with open(plan.flows, "rb") as f:
            source = f.read()
        flows = ((plan.flows, source), (target.host, target.path.rstrip("/"), USER_AGENT),
                 [(t.feeder.name, tables.raw_columns(t)) for t in compiled.tables]
                 if compiled else [], open_rows)
    specs = []
    for w in range(workers):
        share = plan.connections // workers + (1 if w < plan.connections % workers else 0)
        closed_share = closed // workers + (1 if w < closed % workers else 0)
        if http2 is not None:
            # a closed-model user holds a stream, not a connection
            closed_share = -(-closed_share // plan.streams)
        pool = max(share, closed_share, 1)
        specs.append(WorkerSpec(w, workers, target.address, target.port, requests, mix, stages,
                                pool, plan.timeout_s, interval_s,
                                backend_header, plan.timer_resolution_s,
                                plan.requests_per_connection, feeder_tables, templates,
                                None if plan.tls is None else
                                plan.tls.engine_settings(target.hostname),
                                http2, plan.streams, flows, retry=plan.retry,
                                expect=[expect_words(r.expect_status, plan.fail_status)
                                        for r in plan.requests],
                                preconnect=pool if http2 is not None else
                                min(pool, max(closed_share, open_pool))))
    return specs


def _open_pool(plan: Plan, workers: int) -> int:
    """Connections a worker opens before time zero for the open model's arrivals
    (PRECONNECT_S): none without open-model stages."""
    peak = schedule.peak_rate(plan)
    if peak is None:
        return 0
    return max(PRECONNECT_MIN, math.ceil(peak / workers * PRECONNECT_S))


def check_fd_limit(specs: list[WorkerSpec], plan: Plan) -> None:
    limit = fd_limit()
    need = max(s.connections for s in specs) + 64
    if need > limit:
        raise InputError(
            f"connections: {plan.connections} connections over {len(specs)} worker(s) need "
            f"{need} open files per worker, but the limit is {limit}; raise it (ulimit -n) "
            "or use more workers")


# Each connection of a worker (each stream slot over HTTP/2: connections x streams) holds a
# buffer for the largest templated request.
MAX_TEMPLATE_BUFFERS = 512 << 20


def check_template_buffers(specs: list[WorkerSpec], compiled: tables.Compiled | None) -> None:
    if compiled is None:
        return
    largest = max((t[2] for t in compiled.templates if t is not None), default=0)
    conns = max(s.connections * (s.streams if s.http2 is not None else 1) for s in specs)
    what = "connections" if specs[0].http2 is None else "streams (connections x streams)"
    if largest * conns > MAX_TEMPLATE_BUFFERS:
        raise InputError(
            f"requests: templated requests expand to up to {largest:,} bytes and each of a "
            f"worker's {conns:,} {what} holds one: {largest * conns / 2**20:,.0f} MiB per "
            f"worker, more than {MAX_TEMPLATE_BUFFERS >> 20} MiB; use fewer "
            f"{'connections' if specs[0].http2 is None else 'connections or streams'}, "
            "more workers or a smaller templated body")


# -- start, collect, stop ----------------------------------------------------------------------

# The signals that end a run early and keep its results (exit 128 + N): Ctrl-C, a service
# manager's stop, and the hang-up of a closed terminal or SSH session.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(eq=False)
class Stop:
    """How the collection ended early, if it did."""

    signum: int = 0       # the signal that interrupted the run (SIGINT, SIGTERM), 0 if none
    at_ns: int = 0        # when scheduling was asked to stop (a signal, an SLO abort)
    hard: bool = False    # a second signal: workers killed, in-flight requests not awaited
    asked: bool = False   # the collect loop's caller asked for a stop (ask)

    def ask(self) -> None:
        """Stop scheduling at the collect loop's next turn, keeping what is in flight: an
        objective's abort_after, or a result file that can no longer be written (a full
        disk), both judged by the runner from the intervals collect yields."""
        self.asked = True

    def ran_s(self, t0: int, elapsed_s: float, planned_s: float) -> float:
        """How long the run ran: to the stop, else to its planned end."""
        if self.at_ns:
            return min(max(0.0, (self.at_ns - t0) / 1e9), planned_s)
        return min(elapsed_s, planned_s)

    def ran_out(self, at_ns: int | None) -> None:
        """A `unique` feeder ran out at at_ns (Aggregator.note_done): the run ends there."""
        if at_ns is not None and (not self.at_ns or at_ns < self.at_ns):
            self.at_ns = at_ns


class Pool(Protocol):
    """What the collect loop needs of a pool: one channel per member (a worker, or a shard of
    workers), each member's messages read in its own framing, and how its members fail."""

    channels: list[Channel]
    noun: str                 # "workers", "shards": the time-out's words

    def ready(self, members: list[int], timeout: float, /) -> list[int]: ...

    def receive(self, member: int, message: bytes, agg: Aggregator, stop: Stop, /) -> bool:
        """Hands the message to the merge; True when the member is done."""

    def lost(self, member: int, /) -> str:
        """Why the member's channel closed before it was done, in one line."""

    def check(self, done: list[bool], heard: bool, stop: Stop, /) -> None:
        """Raises WorkerCrashed when a member not done has gone (exited, stalled)."""

    def drain(self, agg: Aggregator, stop: Stop, /) -> None:
        """After a hard stop: what the killed members had already sent."""

    def stop(self) -> None: ...

    def kill(self) -> None: ...


def start(pool: WorkerPool) -> int:
    """The local workers' start barrier: time zero, once every worker has built its engine."""
    pool.wait_ready(READY_TIMEOUT_S)
    t0 = _core.now_ns() + START_DELAY_NS
    for ch in pool.channels:
        ch.send_bytes(str(t0).encode())
    return t0


def collect(pool: Pool, agg: Aggregator, plan: Plan, t0: int, stop: Stop
            ) -> Generator[MergedInterval, None, None]:
    """Merges the pool's reports until every member is done, yielding each interval once it
    is merged; a stop signal stops the run. A generator: the signal handlers are the run's
    from the first interval asked for until it ends or is closed (contextlib.closing)."""
    done = [False] * len(pool.channels)
    deadline = t0 + int((plan.duration_s + plan.timeout_s + 10.0) * 1e9)

    def on_signal(signum: int, frame: Any) -> None:
        # Ctrl-C, SIGTERM or SIGHUP (a closed terminal or SSH session) ends the run early but
        # keeps it: workers stop scheduling, report what is in flight, and the results are
        # written as usual. A second one kills the workers at once; what they reported is
        # still written.
        if stop.signum:
            stop.hard = True
            pool.kill()
            return
        stop.signum, stop.at_ns = signum, _core.now_ns()
        pool.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield from collect_until_done(pool, agg, plan, done, deadline, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def collect_until_done(pool: Pool, agg: Aggregator, plan: Plan, done: list[bool],
                       deadline: int, stop: Stop
                       ) -> Generator[MergedInterval, None, None]:
    """The collect loop: every member's messages to the merge until all are done, each
    interval merged yielded at once; stops scheduling when the caller asks (Stop.ask:
    abort_after, a failed write) or the run overruns its time, and fails the run when a
    member is lost or overruns the stop too."""
    stopping = False
    while not all(done) and not stop.hard:
        ready = pool.ready([i for i in range(len(done)) if not done[i]], 0.5)
        for i in ready:
            try:
                msg = pool.channels[i].recv_bytes()
            except (EOFError, OSError):
                if stop.hard:
                    return
                raise WorkerCrashed(pool.lost(i)) from None
            if pool.receive(i, msg, agg, stop):
                done[i] = True
            yield from agg.take()
        if not stop.hard:
            pool.check(done, bool(ready), stop)
        if stop.asked and not stopping:
            pool.stop()
            stopping = True
            stop.at_ns = stop.at_ns or _core.now_ns()
        now = _core.now_ns()
        if now > deadline and not stopping:
            pool.stop()
            stopping = True
            deadline = now + int((plan.timeout_s + 5.0) * 1e9)
        elif now > deadline:
            raise WorkerCrashed(f"{pool.noun} did not finish within the run's time plus its "
                                "timeout")
    if stop.hard:
        pool.drain(agg, stop)
        yield from agg.take()
