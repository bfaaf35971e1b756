"""Worker processes: starting them, the start barrier, interval reports, shutdown.

Each worker runs one `_core.Engine` over its stripe of the global schedule. It talks to the
coordinator over one socket pair: it receives its `WorkerSpec`, sends `READY` once its engine
is built and its pool open (Engine.warm: the spec's `preconnect` connections, their connects,
TLS handshakes and HTTP/2 SETTINGS, for at most WARM_S), receives the common start time
(CLOCK_MONOTONIC, the same clock in every process), then sends one `INTERVAL` message a
second and `DONE` at the end. The coordinator stops a worker early by writing a byte to the
socket; the engine watches it in its epoll set, so a worker whose coordinator dies sees the
socket close and stops by itself.

A worker is forked by the command's fork server (forkserver.py: forked from the command
before its first thread, the engine imported), or, where none runs (the library used without
the command line), a fresh interpreter that imports this module and the engine, nothing else:
not multiprocessing's spawn (which re-imports the command line, click and rich, and starts a
resource tracker), nor a fork of the coordinator (it has threads by the time workers start).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from loadforge.config.outcomes import OUTCOMES
from loadforge.errors import WorkerCrashed
from loadforge.run.wire import (
    BACKEND,
    CELL,
    FLOWS,
    GAUGES,
    HEADER,
    HIST,
    STAGE,
    TLS,
    TRAILER,
    Channel,
    ReportSender,
    check_header,
    wait,
)

if TYPE_CHECKING:
    from loadforge.run.forkserver import ForkedWorker, ForkServer

# Message tags, first byte of every message a worker sends.
READY, INTERVAL, DONE, FAILED = b"R", b"I", b"D", b"F"
WARM_S = 1.0    # at most, the pool's opening before READY (above)
# What follows DONE: the feeder table whose `unique` rows ran out and ended the run, and when
# (CLOCK_MONOTONIC ns), table -1 when none did; then, as JSON, over TLS what the worker's
# first completed handshake negotiated ({"protocol", "cipher", "alpn"}), and under "engine"
# the engine's end-of-run counts (ENGINE_COUNTS).
EXHAUSTED = struct.Struct("<iq")


# The decoded messages are NamedTuples: made per interval and cell, never changed, and cheap
# to define (a frozen dataclass generates six methods by exec at import, 0.5 ms each class,
# before the run's time zero).
class HistSlice(NamedTuple):
    lo: int
    counts: bytes          # uint32 counts of indices lo, lo+1, ...
    total: int
    min_us: int
    max_us: int


class CellDelta(NamedTuple):
    stage: int
    request: int
    outcome: str
    backend: str
    n: int                 # outcomes in the cell
    latency: HistSlice
    service: HistSlice


class IntervalReport(NamedTuple):
    worker: int
    interval: int          # its index
    final: bool
    scheduled: list[int]   # per stage
    sent: list[int]
    unsent: list[int]
    cells: list[CellDelta]
    connects: int
    connect_failures: int
    open_connections: int
    in_flight: int
    # Open-model sends that waited for a free connection, and sends late on a free one (the
    # loop was late): what names the cause of unsent arrivals.
    waited: list[int]
    late: list[int]
    cpu_ns: int = 0        # the worker's CPU time from time zero to this report
    retried: int = 0       # so far: arrivals sent again after a reused connection closed
    dropped: int = 0       # so far: outcomes the engine had no memory to record
    closed_by_server: int = 0   # so far: connections the server ended
    closed_by_us: int = 0       # so far: connections the engine ended (errors, timeouts)
    connect_time: HistSlice | None = None   # TCP connect times (µs) of this interval
    tls_time: HistSlice | None = None       # TLS handshake times (µs) of this interval
    # so far: TLS handshakes that were full, that resumed a session, that failed
    tls_handshakes: tuple[int, int, int] = (0, 0, 0)
    # scripted flows (the FLOWS section): this interval's checks {name: [passed, failed]} and
    # flow failures {"flow|ExceptionType": count}
    checks: dict[str, list[int]] | None = None
    flow_errors: dict[str, int] | None = None
    flow_samples: dict[str, str] | None = None   # one message per "flow|ExceptionType"
    clamped: int = 0       # so far: latencies past the histograms' 1 h, recorded as 1 h


def interval_message(payload: bytes, open_conns: int, in_flight: int, cpu_ns: int = 0) -> bytes:
    """The INTERVAL message a worker sends for one engine payload (Engine.run's callback
    arguments) with its gauges: the one place that lays the message out."""
    return INTERVAL + GAUGES.pack(open_conns, in_flight, cpu_ns) + payload


def is_final(payload: bytes) -> bool:
    """Whether an engine payload is its run's final report."""
    return bool(HEADER.unpack_from(payload, 0)[2])


def decode_interval(message: bytes) -> IntervalReport:
    view = memoryview(message)
    open_conns, in_flight, cpu_ns = GAUGES.unpack_from(view, 1)
    off = 1 + GAUGES.size
    (magic, version, final, worker, nstages, index, ncells, nbackends,
     connects, connect_failures) = HEADER.unpack_from(view, off)
    check_header(magic, version)
    off += HEADER.size
    scheduled, sent, unsent, waited, late = [], [], [], [], []
    for _ in range(nstages):
        s, t, u, w, lt = STAGE.unpack_from(view, off)
        scheduled.append(s)
        sent.append(t)
        unsent.append(u)
        waited.append(w)
        late.append(lt)
        off += STAGE.size
    backends = ["*"]
    for _ in range(nbackends):
        n, name = BACKEND.unpack_from(view, off)
        backends.append(name[:n].decode("latin-1"))
        off += BACKEND.size
    cells = []
    for _ in range(ncells):
        stage, request, outcome, backend, count = CELL.unpack_from(view, off)
        off += CELL.size
        hists = []
        for _ in range(2):
            lo, n, total, lo_v, hi_v = HIST.unpack_from(view, off)
            off += HIST.size
            hists.append(HistSlice(lo, bytes(view[off:off + 4 * n]), total, lo_v, hi_v))
            off += 4 * n
        cells.append(CellDelta(stage, request, OUTCOMES[outcome], backends[backend], count,
                               hists[0], hists[1]))
    retried = dropped = by_server = by_us = clamped = 0
    connect_time = None
    if len(view) >= off + TRAILER.size:
        retried, dropped, by_server, by_us, clamped = TRAILER.unpack_from(view, off)
        off += TRAILER.size
    if len(view) >= off + HIST.size:
        lo, n, total, lo_v, hi_v = HIST.unpack_from(view, off)
        off += HIST.size
        connect_time = HistSlice(lo, bytes(view[off:off + 4 * n]), total, lo_v, hi_v)
        off += 4 * n
    tls_time = None
    tls_handshakes = (0, 0, 0)
    if len(view) >= off + TLS.size + HIST.size:
        tls_handshakes = TLS.unpack_from(view, off)
        off += TLS.size
        lo, n, total, lo_v, hi_v = HIST.unpack_from(view, off)
        off += HIST.size
        tls_time = HistSlice(lo, bytes(view[off:off + 4 * n]), total, lo_v, hi_v)
        off += 4 * n
    checks = flow_errors = flow_samples = None
    if len(view) >= off + FLOWS.size:
        (length,) = FLOWS.unpack_from(view, off)
        off += FLOWS.size
        if length:
            section = json.loads(bytes(view[off:off + length]))
            checks = section.get("checks") or None
            flow_errors = section.get("errors") or None
            flow_samples = section.get("samples") or None
    return IntervalReport(worker, index, bool(final), scheduled, sent, unsent, cells,
                          connects, connect_failures, open_conns, in_flight, waited, late,
                          cpu_ns, retried, dropped, by_server, by_us, connect_time, tls_time,
                          tls_handshakes, checks, flow_errors, flow_samples, clamped)


@dataclass(frozen=True, eq=False)
class WorkerSpec:
    """Everything a worker needs to build its engine; sent, pickled, to its worker process."""

    index: int
    workers: int
    address: str
    port: int
    requests: list[tuple[bytes, bool]]
    mix: list[int]
    stages: list[tuple[bool, float, float, float, int, float]]
    connections: int
    timeout_s: float
    interval_s: float
    capture_header: str | None
    timer_resolution_s: float
    requests_per_connection: int = 0
    # Feeder tables (feeders.Table.spec()) and, per request, None or its template segments
    # (engine/tables.py): empty when no request holds {feeder.column} slots.
    feeders: list[tuple[Any, ...]] = field(default_factory=list)
    templates: list[Any] = field(default_factory=list)
    tls: dict[str, Any] | None = None      # TLS settings (config/tls.py engine_settings)
    # HTTP/2: (header list, body) per request, and streams per connection; None for HTTP/1.1.
    # A templated request's adds its parts (tables.compile_h2_templates; engine h2_setup).
    http2: list[tuple[list[tuple[bytes, bytes]], bytes]
                | tuple[list[tuple[bytes, bytes]], bytes, list[tuple[int, int, int]]]] | None = None
    streams: int = 100
    # Scripted flows (loadforge/flows): (the module's path, its text), (Host header, path prefix,
    # User-Agent), per table of `feeders` (engine/tables.compile_rows: table i is feeder i) its name
    # and the (column, view) pairs flows read, and the open-model arrivals of the run (where
    # closed-model rows start). None: no flows.
    flows: tuple[Any, ...] | None = None
    retry: str = "idempotent"              # Plan.retry: "idempotent" or "never"
    # Per request, its expect_status as engine words (config/outcomes.py expect_words), or ()
    expect: list[tuple[int, ...]] = field(default_factory=list)
    # Connections opened before time zero (Engine.warm; session.PRECONNECT_S): -1, all.
    preconnect: int = -1


# Counts an engine reports once, at its end, in its DONE message (summed over workers).
ENGINE_COUNTS = ("h2_zero_streams", "protocol_h1", "protocol_h2")


def engine_counts(engine: Any) -> dict[str, int]:
    """ENGINE_COUNTS of a finished engine: HTTP/2 connections whose server allowed no stream,
    and connections by the protocol they spoke (http/1.1, h2)."""
    h1, h2 = engine.connections_by_protocol
    return {"h2_zero_streams": int(engine.h2_zero_streams), "protocol_h1": int(h1),
            "protocol_h2": int(h2)}


def done_message(exhausted: tuple[int, int] | None,
                 negotiated: dict[str, Any] | None = None,
                 counts: dict[str, int] | None = None) -> bytes:
    """DONE, with the `unique` feeder that ran out, if one did, what TLS negotiated and the
    engine's end-of-run counts."""
    message = DONE + EXHAUSTED.pack(*(exhausted or (-1, 0)))
    payload: dict[str, Any] = dict(negotiated or {})
    if counts:
        payload["engine"] = counts
    if payload:
        message += json.dumps(payload).encode()
    return message


def decode_done(message: bytes) -> tuple[int, int] | None:
    """(feeder table, when) from a DONE message, or None."""
    if len(message) < 1 + EXHAUSTED.size:
        return None
    table, at_ns = EXHAUSTED.unpack_from(message, 1)
    return None if table < 0 else (int(table), int(at_ns))


def decode_done_tls(message: bytes) -> dict[str, Any] | None:
    """What a worker's TLS handshakes negotiated ({"protocol", "cipher", "alpn"}) from its
    DONE message, or None (plain TCP, or no handshake completed)."""
    negotiated = _done_json(message)
    negotiated.pop("engine", None)
    return negotiated or None


def decode_done_counts(message: bytes) -> dict[str, int]:
    """The engine's end-of-run counts (ENGINE_COUNTS) from a DONE message; {} when absent."""
    counts = _done_json(message).get("engine")
    if not isinstance(counts, dict):
        return {}
    return {k: int(counts[k]) for k in ENGINE_COUNTS if isinstance(counts.get(k), int)}


def _done_json(message: bytes) -> dict[str, Any]:
    rest = message[1 + EXHAUSTED.size:]
    if not rest:
        return {}
    try:
        payload = json.loads(rest)
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def fd_limit() -> int:
    """Raise this process's open-file limit as far as allowed; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return hard if soft == resource.RLIM_INFINITY else soft


def load_flows(path: str, source: bytes) -> Any:
    """The flows module this worker runs: the coordinator's own file when this machine has it,
    unchanged (modules beside it import as they would by hand); else (a shard on another
    machine, or the file edited since the run started) the coordinator's text, loaded from a
    copy under the same name that is removed once imported."""
    from loadforge.flows import loader

    try:
        with open(path, "rb") as f:
            if f.read() == source:
                return loader.load(path)
    except OSError:
        pass
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="loadforge-flows-")
    try:
        copy = os.path.join(folder, os.path.basename(path))
        with open(copy, "wb") as f:
            f.write(source)
        return loader.load(copy)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_flows(spec: WorkerSpec, channel: Channel) -> None:
    """worker_main for a run of scripted flows: a FlowEngine driven by flows/driver.py."""
    from loadforge import _core
    from loadforge.engine.tables import RowReader
    from loadforge.flows import driver

    assert spec.flows is not None
    (path, source), base, feeder_columns, open_rows = spec.flows
    module = load_flows(path, source)
    feeds = None
    if feeder_columns:
        # The compiled tables, memory-mapped when large: a row is decoded when an arrival
        # takes it, never the whole file into Python objects.
        feeds = driver.Feeds([(name, RowReader(table, columns)) for (name, columns), table
                              in zip(feeder_columns, spec.feeders, strict=True)],
                             open_rows, spec.index, spec.workers)
    fd_limit()
    engine = _core.FlowEngine(
        spec.address, spec.port, module.names, spec.stages, spec.connections,
        worker=spec.index, workers=spec.workers, timeout_s=spec.timeout_s,
        interval_s=spec.interval_s, control_fd=channel.fileno(), tls=spec.tls,
        retry=spec.retry)
    base_url = ("https" if spec.tls is not None else "http") + f"://{base[0]}{base[1]}"
    if module.asyncio:
        # The slower path, for a module that awaits httpx/anyio/asyncio (flows/loader.py)
        from loadforge.flows import aio

        drive: driver.Driver = aio.AsyncDriver(engine, module, base, feeds,
                                               spec.timer_resolution_s, spec.timeout_s,
                                               base_url)
    else:
        drive = driver.Driver(engine, module, base, feeds, spec.timer_resolution_s,
                              spec.timeout_s, base_url)
    engine.warm(min(spec.connections, 64), min(spec.timeout_s, WARM_S))
    channel.send_bytes(READY)
    t0 = int(channel.recv_bytes())
    cpu_ns = time.process_time_ns
    cpu0 = cpu_ns()
    sender = ReportSender(channel)
    send = sender.send

    def on_interval(payload: bytes, open_conns: int, in_flight: int) -> None:
        send(interval_message(payload, open_conns, in_flight, cpu_ns() - cpu0))

    try:
        drive.run(t0, on_interval)     # its pool opened before READY (warm)
    finally:
        sender.close()
    channel.send_bytes(done_message(feeds.exhausted if feeds is not None else None))


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit): (.+)$")


def failure_words(report: bytes) -> str:
    """A failed worker's traceback (its FAILED message) as one line a user can act on: the
    last line's message, without the exception's class name; an allocation that failed said
    as what to change."""
    last = (report.decode(errors="replace").strip().splitlines() or ["?"])[-1].strip()
    if last.split(":", 1)[0].endswith("MemoryError"):
        return ("out of memory: the engine's connection, stream and buffer tables did not fit; "
                "lower --connections (or --streams, or the body size), or use more workers")
    match = _EXCEPTION_LINE.match(last)
    return match.group(1) if match else last


def worker_main(fd: int | None = None) -> None:
    """A worker process: `python -c "from loadforge.run.workers import worker_main; worker_main()"
    FD`, with FD its end of the socket pair to the coordinator; or forked by the fork server
    (forkserver.py) with that descriptor as `fd`."""
    # Ctrl-C reaches the whole process group, and so may a SIGTERM (a service manager, a
    # container stop); the coordinator alone decides how to stop, and a worker whose
    # coordinator is gone stops by itself when its socket closes.
    # A closed terminal hangs up its whole process group, workers included.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    channel = Channel(int(sys.argv[1]) if fd is None else fd)
    sender: ReportSender | None = None
    try:
        from loadforge import _core

        spec: WorkerSpec = pickle.loads(channel.recv_bytes())
        fd_limit()
        if spec.flows is not None:
            run_flows(spec, channel)
            return
        tables = []
        if spec.feeders:
            from loadforge.engine.tables import open_table

            tables = [open_table(t) for t in spec.feeders]
        engine = _core.Engine(
            spec.address, spec.port, spec.requests, spec.mix, spec.stages, spec.connections,
            worker=spec.index, workers=spec.workers, timeout_s=spec.timeout_s,
            interval_s=spec.interval_s, capture_header=spec.capture_header,
            control_fd=channel.fileno(), timer_resolution_s=spec.timer_resolution_s,
            requests_per_connection=spec.requests_per_connection, feeders=tables,
            templates=spec.templates, tls=spec.tls,
            http2=spec.http2, streams=spec.streams, retry=spec.retry, expect=spec.expect)
        engine.warm(spec.preconnect, min(spec.timeout_s, WARM_S))
        channel.send_bytes(READY)
        t0 = int(channel.recv_bytes())
        # CPU time per interval: a worker that used its whole core is the reason arrivals
        # went unsent, rather than the connections (summary.unsent_cause).
        cpu_ns = time.process_time_ns
        cpu0 = cpu_ns()
        sender = ReportSender(channel)
        send = sender.send

        def on_interval(payload: bytes, open_conns: int, in_flight: int) -> None:
            message = interval_message(payload, open_conns, in_flight, cpu_ns() - cpu0)
            if not is_final(payload):
                send(message)
                return
            # The run has ended: this goes out now, not queued behind the engine's closing of
            # its connections, which holds the GIL the sender's thread needs (1-2 ms).
            sender.finish(message)

        engine.run(t0, on_interval)
        sender.close()
        channel.send_bytes(done_message(engine.exhausted, engine.tls_negotiated,
                                        engine_counts(engine)))
        # The engine's end closes its connections (TLS close_notify, HTTP/2 GOAWAY), as the
        # return did; the interpreter's own teardown, which the coordinator's join would wait
        # for, has nothing left to do.
        del engine
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    except BaseException:
        if sender is not None:
            # The sender's thread must be off the channel before the failure goes out on it.
            sender.abandon(5)
        try:
            import traceback

            channel.send_bytes(FAILED + traceback.format_exc().encode())
        except OSError:
            pass
        os._exit(1)


# `-P` keeps the working directory off sys.path: typed in a source checkout, it would shadow
# the installed package with one that has no compiled engine. The package's own root goes first
# instead, so a worker imports exactly the loadforge its coordinator imported.
_WORKER_CODE = ("import sys; sys.path.insert(0, sys.argv[2]); "
                "from loadforge.run.workers import worker_main; worker_main()")
# The folder that holds the package (loadforge/run/workers.py is three levels down).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# The fork server workers start from (forkserver.py), once the command has started one.
_fork_server: ForkServer | None = None


def use_fork_server() -> None:
    """Fork the workers of the runs to come from a fork server, started now: call it before
    any thread starts (where one runs already, workers start as fresh interpreters)."""
    global _fork_server
    from loadforge.run.forkserver import ForkServer

    if _fork_server is not None and _fork_server.usable():
        return                  # one per process: `main` called again in the same one
    try:
        _fork_server = ForkServer.start()
    except OSError:
        _fork_server = None


def exit_words(code: int | None) -> str:
    """A worker's exit status in words: "exit code 7", "killed by SIGKILL"."""
    if code is None:
        return "still running, its socket closed"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class WorkerPool:
    """The worker processes of one run (a run/session.Pool: its members are the workers)."""

    noun = "workers"

    def __init__(self, specs: list[WorkerSpec]):
        self.channels: list[Channel] = []
        self.processes: list[subprocess.Popen[bytes] | ForkedWorker] = []
        server = _fork_server if _fork_server is not None and _fork_server.usable() else None
        try:
            for spec in specs:
                ours, theirs = socket.socketpair()
                proc: subprocess.Popen[bytes] | ForkedWorker | None = None
                if server is not None:
                    try:
                        proc = server.spawn(theirs.fileno())
                    except OSError:
                        server = None
                if proc is None:
                    # -S: no site, whose .pth files (an editable install's finder) cost a
                    # worker 10-20 ms of CPU; the package root on sys.path is all it imports
                    # from. A flows worker keeps site: its module may import installed packages.
                    site = ("-S",) if spec.flows is None else ()
                    proc = subprocess.Popen([sys.executable, "-P", *site, "-c", _WORKER_CODE,
                                             str(theirs.fileno()), _PACKAGE_ROOT],
                                            pass_fds=(theirs.fileno(),),
                                            stdin=subprocess.DEVNULL)
                theirs.close()
                channel = Channel(ours.detach())
                self.channels.append(channel)
                self.processes.append(proc)
                channel.send_bytes(pickle.dumps(spec))
        except BaseException:
            self.terminate()
            raise

    def exitcode(self, i: int, wait_s: float = 0.0) -> int | None:
        """Worker i's exit status, None while it runs. wait_s: how long to wait for it to
        end (its socket closes a moment before the kernel reports its exit)."""
        if wait_s > 0:
            try:
                return self.processes[i].wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                return None
        return self.processes[i].poll()

    def wait_ready(self, timeout_s: float) -> None:
        """The start barrier's first half: every worker has built its engine (READY), or
        WorkerCrashed names the one that failed, exited or took longer than timeout_s."""
        pending = set(range(len(self.channels)))
        limit = time.monotonic() + timeout_s
        while pending:
            for i in self.ready(sorted(pending), timeout=0.5):
                try:
                    msg = self.channels[i].recv_bytes()
                except (EOFError, OSError):
                    raise WorkerCrashed(f"worker {i} exited while starting") from None
                if msg[:1] == FAILED:
                    raise WorkerCrashed(f"worker {i} failed to start: "
                                        f"{failure_words(msg[1:])}")
                if msg[:1] == READY:
                    pending.discard(i)
            if time.monotonic() > limit:
                raise WorkerCrashed(f"workers {sorted(pending)} did not start in "
                                    f"{timeout_s:.0f} s")

    def ready(self, workers: list[int], timeout: float) -> list[int]:
        """Which of these workers have a message waiting, within timeout seconds."""
        channels = {id(self.channels[i]): i for i in workers}
        return [channels[id(ch)] for ch in wait([self.channels[i] for i in workers], timeout)]

    # -- what run/session.collect asks of a pool (agg: run/merge.Aggregator, stop: session.Stop)

    def receive(self, i: int, msg: bytes, agg: Any, stop: Any) -> bool:
        """Worker i's message to the merge; True once it is done."""
        tag = msg[:1]
        if tag == INTERVAL:
            agg.add(decode_interval(msg))
        elif tag == DONE:
            stop.ran_out(agg.note_done(msg))
            return True
        elif tag == FAILED:
            raise WorkerCrashed(f"worker {i} failed: {failure_words(msg[1:])}")
        return False

    def lost(self, i: int) -> str:
        return f"worker {i} exited unexpectedly ({exit_words(self.exitcode(i, wait_s=2.0))})"

    def check(self, done: list[bool], heard: bool, stop: Any) -> None:
        """A worker that exited before it was done (and sent nothing this round)."""
        for i in range(len(done)):
            if not done[i] and self.exitcode(i) is not None and not heard:
                raise WorkerCrashed(f"worker {i} exited unexpectedly "
                                    f"({exit_words(self.exitcode(i))})")

    def drain(self, agg: Any, stop: Any) -> None:
        """The intervals killed workers had already sent (bounded: their sockets only drain)."""
        for channel in self.channels:
            try:
                while channel.poll(0):
                    msg = channel.recv_bytes()
                    if msg[:1] == INTERVAL:
                        agg.add(decode_interval(msg))
            except (EOFError, OSError):
                continue

    def stop(self) -> None:
        """Ask every worker to stop scheduling; they still report what is in flight."""
        for ch in self.channels:
            try:
                ch.send_bytes(b"S")
            except OSError:
                pass

    def kill(self) -> None:
        """Kill every worker now, keeping the channels (what they sent can still be read).
        Safe in a signal handler."""
        for proc in self.processes:
            if proc.returncode is None:
                try:
                    proc.kill()
                except OSError:
                    pass

    def terminate(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
        for proc in self.processes:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        for ch in self.channels:
            ch.close()
        self.channels = []

    def join(self, timeout: float = 5.0) -> None:
        for proc in self.processes:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.terminate()
