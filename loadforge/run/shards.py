"""Sharded runs: one coordinator, N shard processes (here or on other machines), one result.

Shard s of N runs the arrivals whose global index is s (mod N); within the shard, its W workers
stripe again, so engine stripe k = s + N*w of K = N*W takes arrival i exactly when
i = k (mod K), which is the engine's own rule (`_core.Engine(worker=k, workers=K)`). The request
mix is a function of the global index, so a sharded run sends what a single run would.
Closed-model concurrency and connections are split over the K stripes in the same way.

The protocol, over one TCP connection per shard (multiprocessing's length-prefixed framing,
the first byte of each message its tag):

    shard -> coordinator                      coordinator -> shard
    H  HELLO {protocol, version, index,
              token} JSON
                                              A  the shard's plan (pickled), or
                                              X  refused: one line saying why
    P  ping: t0 (shard clock)                 p  pong: t0, t1 (received), t2 (sent)
       ... several rounds; the shard keeps the round with the least delay
    R  READY {offset_ns, delay_ns} JSON       G  START: time zero, coordinator's CLOCK_REALTIME
    W  a worker's message (INTERVAL, DONE,    S  stop scheduling (a signal, an SLO abort)
       FAILED), after the shard's index (u16) K  kill the workers now
    D  DONE, F  FAILED: one line

Clocks: CLOCK_MONOTONIC is per machine, so the exchange is on CLOCK_REALTIME (time.time_ns()).
offset = ((t1 - t0) + (t2 - t3)) / 2 is how far the coordinator's clock is ahead of the shard's,
delay = (t3 - t0) - (t2 - t1) the round trip; the shard converts the start time once to its own
monotonic clock. A shard whose |offset| exceeds the tolerance fails the start. Offsets are
recorded as the shard's clock minus the coordinator's. Pickle is used between processes of the
same loadforge version only: the HELLO is JSON, and a version mismatch is refused before any
pickle is exchanged.

Only the run's shards join: each run has a random token (secrets.token_urlsafe) that its shards
present in their HELLO. The local launcher hands it to its processes in LOADFORGE_SHARD_TOKEN,
the Kubernetes launcher through a Secret the pods read into that variable, and external shards
take it from that variable or from a file (--token-file). A connection whose HELLO lacks the
token (or is not the protocol, or says nothing within HELLO_TIMEOUT_S) is refused, said on
stderr, and takes no slot: the start goes on. Once every shard is in, the coordinator stops
listening. The token authenticates the shards to the coordinator, not the other way round, and
nothing is encrypted: run shards on networks you trust with the plan and the results.

LOADFORGE_TEST_CLOCK_SKEW_MS (test-only): a shard reads its clock this far ahead ("20" for
every shard, "0,200" per shard index), so that the tests can see a skew measured and refused.
"""

from __future__ import annotations

import hmac
import json
import os
import pickle
import secrets
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

from loadforge import __version__, _core
from loadforge.config.plan import STATUS_OUTCOMES
from loadforge.errors import InputError, RunError, WorkerCrashed
from loadforge.run.wire import Channel, wait
from loadforge.run.workers import (
    DONE,
    FAILED,
    INTERVAL,
    WorkerPool,
    WorkerSpec,
    decode_interval,
)

PROTOCOL = 1
# Message tags (see the module's docstring).
HELLO, PING, SHARD_READY, WORKER, SHARD_DONE, SHARD_FAILED = b"H", b"P", b"R", b"W", b"D", b"F"
ACCEPT, REFUSE, PONG, START, STOP, KILL = b"A", b"X", b"p", b"G", b"S", b"K"

CLOCK_ROUNDS = 8
START_TIMEOUT_S = 30.0         # every shard dialled in, built its workers and is ready
START_DELAY_NS = 300_000_000   # time zero lies this far after the last shard is ready
STALL_INTERVALS = 5            # a shard silent this many intervals has stalled
SKEW_ENV = "LOADFORGE_TEST_CLOCK_SKEW_MS"
TOKEN_ENV = "LOADFORGE_SHARD_TOKEN"
HELLO_TIMEOUT_S = 5.0          # a connection has this long to send its whole HELLO
HELLO_MAX = 64 * 1024          # the most a HELLO may weigh
_FRAME = struct.Struct("!i")   # multiprocessing.connection's length prefix

_TS = struct.Struct("<q")
_PONG = struct.Struct("<qqq")
_SHARD = struct.Struct("<H")


def stripes(shard: int, shards: int, workers: int) -> list[int]:
    """The engine stripes (of shards * workers) that shard `shard` runs, one per worker."""
    return [shard + shards * w for w in range(workers)]


def shard_workers(requested: int | None, shards: int, connections: int) -> int:
    """Workers per shard: as asked, else this machine's cores shared among the local shards;
    never more stripes than connections."""
    if shards > connections:
        raise InputError(f"--shards {shards}: {connections} connection(s) cannot be split over "
                         f"{shards} shards; raise connections or lower --shards")
    workers = requested or max(1, (os.cpu_count() or 1) // shards)
    return max(1, min(workers, connections // shards))


def offset_from(t0: int, t1: int, t2: int, t3: int) -> tuple[int, int]:
    """NTP's four-timestamp exchange: (the shard's clock minus the coordinator's, the delay)."""
    return -((t1 - t0) + (t2 - t3)) // 2, (t3 - t0) - (t2 - t1)


# -- the coordinator's side -------------------------------------------------------------------

class ShardPool:
    """The shards of one run, as the runner sees them: the stand-in for its WorkerPool (a
    run/session.Pool: its members are the shards)."""

    noun = "shards"

    def __init__(self, specs: list[WorkerSpec], shards: int, workers: int,
                 max_offset_s: float, launcher: str = "local", bind: str = "127.0.0.1",
                 port: int = 0, remote: Any = None, start_timeout_s: float = START_TIMEOUT_S,
                 token: str | None = None):
        self.shards = shards
        self.workers = workers
        self.launcher = launcher
        self.max_offset_s = max_offset_s
        self.plans = [[specs[k] for k in stripes(s, shards, workers)] for s in range(shards)]
        self.interval_s = specs[0].interval_s
        self.channels: list[Channel] = []
        self.offsets: dict[int, tuple[int, int]] = {}
        # per shard: responses, sent, unsent, scheduled
        self.counts = [[0, 0, 0, 0] for _ in range(shards)]
        self.heard: list[int] = []   # per shard: when it was last heard from (collect)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        # A local shard's stderr: the coordinator says it, once, in its own error line.
        self.logs: dict[int, Any] = {}
        # Another launcher (kube.KubeLauncher): launch(port) once listening, check(indices) of
        # the shards not dialled in yet while starting (raises if they cannot start), cleanup().
        self.remote = remote
        self.start_timeout_s = start_timeout_s
        # What the run's shards present; anything else that dials in is refused.
        self.token = token or new_token()
        self.refused = 0
        if remote is not None and hasattr(remote, "token"):
            remote.token = self.token
        try:
            self.listener = socket.create_server(
                (bind, port), family=socket.AF_INET6 if ":" in bind else socket.AF_INET)
        except OSError as exc:
            raise RunError(f"the coordinator cannot listen on {bind}:{port} "
                           f"({exc.strerror or exc})") from None
        host, port = self.listener.getsockname()[:2]
        self.address = f"{host}:{port}"
        if launcher == "local":
            try:
                for s in range(shards):
                    self.logs[s] = tempfile.TemporaryFile()
                    self.processes[s] = _launch_local(self.address, s, self.logs[s],
                                                      self.token)
            except BaseException:
                self.terminate()
                raise
        elif launcher == "external":
            print(f"waiting up to {self.start_timeout_s:g} s for {shards} shard(s) on "
                  f"{self.address}: loadforge shard --coordinator HOST:{port} --index I "
                  f"(I from 0 to {shards - 1}), with the run's token in {TOKEN_ENV} or "
                  "--token-file", file=sys.stderr, flush=True)
        elif remote is not None:
            try:
                remote.launch(port)
            except BaseException:
                self.terminate()
                raise

    # -- the start barrier

    def start(self) -> int:
        """Wait for every shard to say hello, measure its clock and be ready; send them all one
        absolute start time. Returns time zero on this process's monotonic clock."""
        limit = time.monotonic() + self.start_timeout_s
        conns: dict[int, Channel] = {}      # by shard index, once it said hello
        pending: list[socket.socket] = []      # dialled in, no hello yet
        ready: set[int] = set()
        next_free = 0
        while len(ready) < self.shards:
            if time.monotonic() > limit:
                missing = sorted(set(range(self.shards)) - ready)
                silent = sorted(set(range(self.shards)) - set(conns))
                if (self.remote is not None or self.launcher == "external") and silent \
                        and not pending:
                    raise WorkerCrashed(f"shards {silent} never dialled in within "
                                        f"{self.start_timeout_s:g} s (coordinator "
                                        f"{self.address}); see --shard-start-timeout")
                raise WorkerCrashed(f"shards {missing} were not ready within "
                                    f"{self.start_timeout_s:g} s (coordinator {self.address})")
            self._check_local_alive()
            if self.remote is not None:
                self.remote.check(sorted(set(range(self.shards)) - set(conns)))
            waiting: list[Any] = [self.listener, *pending, *conns.values()]
            for ch in wait(waiting, timeout=0.5):
                if ch is self.listener:
                    try:
                        sock, _ = self.listener.accept()
                    except OSError:
                        continue
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.settimeout(HELLO_TIMEOUT_S)
                    pending.append(sock)
                    continue
                if isinstance(ch, socket.socket):
                    pending.remove(ch)
                    joined = self._hello(ch, conns, next_free)
                    if joined is not None:
                        conns[joined[0]] = joined[1]
                        while next_free in conns:
                            next_free += 1
                    continue
                assert isinstance(ch, Channel)
                index = next(s for s, c in conns.items() if c is ch)
                try:
                    msg = ch.recv_bytes()
                except (EOFError, OSError):
                    raise WorkerCrashed(f"shard {index} disconnected while starting"
                                        f"{self._exit_note(index)}") from None
                if msg[:1] == PING:
                    t1 = time.time_ns()
                    (t0,) = _TS.unpack(msg[1:])
                    ch.send_bytes(PONG + _PONG.pack(t0, t1, time.time_ns()))
                elif msg[:1] == SHARD_READY:
                    info = json.loads(msg[1:])
                    self.offsets[index] = (int(info["offset_ns"]), int(info["delay_ns"]))
                    ready.add(index)
                elif msg[:1] == SHARD_FAILED:
                    raise WorkerCrashed(f"shard {index} failed to start: {_line(msg[1:])}")
        # A shard that dials in from now on (a restarted pod) is refused: no resuming mid-run.
        self.listener.close()
        for sock in pending:
            sock.close()
        self.channels = [conns[s] for s in range(self.shards)]
        self._check_offsets()
        start_real = time.time_ns() + START_DELAY_NS
        t0 = _core.now_ns() + START_DELAY_NS
        self.heard = [t0] * self.shards
        for ch in self.channels:
            ch.send_bytes(START + str(start_real).encode())
        return t0

    def _hello(self, sock: socket.socket, conns: dict[int, Channel],
               next_free: int) -> tuple[int, Channel] | None:
        """A new connection's HELLO. The run's shard (it has the token): its index and its
        channel, or the run fails when it cannot take part (another version, an index out of
        range or taken). Anything else is refused and said on stderr; the start goes on."""
        try:
            host, port = sock.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "?"
        try:
            msg = _read_hello(sock)
            hello = json.loads(msg[1:]) if msg[:1] == HELLO else None
            if not isinstance(hello, dict):
                raise ValueError("not a HELLO")
            token = hello.get("token")
            protocol, version, index = hello["protocol"], hello["version"], hello.get("index")
        except (OSError, EOFError, ValueError, KeyError, TypeError):
            self._refuse_foreign(sock, peer, "it did not speak the loadforge shard protocol")
            return None
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(),
                                                                 self.token.encode()):
            self._refuse_foreign(sock, peer, "it has not this run's shard token" if token else
                                 "it presented no shard token")
            return None
        sock.settimeout(None)
        ch = Channel(sock.detach())

        def refuse(reason: str) -> WorkerCrashed:
            try:
                ch.send_bytes(REFUSE + reason.encode())
            except OSError:
                pass
            return WorkerCrashed(reason)

        if protocol != PROTOCOL or version != __version__:
            raise refuse(f"shard {index if index is not None else '?'} runs loadforge {version} "
                         f"(shard protocol {protocol}), the coordinator {__version__} (protocol "
                         f"{PROTOCOL}); run the same version everywhere")
        if index is None:
            index = next_free
        if not isinstance(index, int) or not 0 <= index < self.shards:
            raise refuse(f"shard index {index} is out of range for --shards {self.shards}")
        if index in conns:
            raise refuse(f"shard {index} dialled in twice")
        ch.send_bytes(ACCEPT + pickle.dumps({"index": index, "shards": self.shards,
                                             "specs": self.plans[index]}))
        return index, ch

    def _refuse_foreign(self, sock: socket.socket, peer: str, why: str) -> None:
        """Not one of this run's shards: say so to it (if it listens) and on stderr, once per
        connection; it takes no slot and sends nothing into the result."""
        self.refused += 1
        try:
            sock.settimeout(1.0)
            reason = (f"refused: {why}; this coordinator takes only its run's shards "
                      f"(their token in {TOKEN_ENV} or --token-file)").encode()
            sock.sendall(_FRAME.pack(1 + len(reason)) + REFUSE + reason)
        except OSError:
            pass
        finally:
            sock.close()
        print(f"warning: the coordinator refused a connection from {peer}: {why}",
              file=sys.stderr, flush=True)

    def _check_offsets(self) -> None:
        limit_ns = self.max_offset_s * 1e9
        for s in range(self.shards):
            offset, delay = self.offsets[s]
            if abs(offset) > limit_ns:
                reason = (f"shard {s}: its clock is {offset / 1e6:+.1f} ms off the coordinator's "
                          f"(round trip {delay / 1e6:.1f} ms), beyond --max-clock-offset "
                          f"{self.max_offset_s * 1000:g} ms; synchronise the clocks (NTP, chrony)")
                self._send_all(REFUSE + reason.encode())
                raise WorkerCrashed(reason)

    def _exit_note(self, index: int | None) -> str:
        if index is None or index not in self.processes:
            return ""
        proc = self.processes[index]
        if proc is None:
            return ""
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return ""
        said = ""
        log = self.logs.get(index)
        if log is not None:
            log.seek(0)
            said = _line(log.read()[-4096:])
        return f" (exit code {proc.returncode}{': ' + said if said != '?' else ''})"

    def _check_local_alive(self) -> None:
        for s, proc in self.processes.items():
            if proc.poll() is not None:
                raise WorkerCrashed(f"shard {s} exited while starting{self._exit_note(s)}")

    # -- the run

    def ready(self, shards: list[int], timeout: float) -> list[int]:
        """Which of these shards have a message waiting, within timeout seconds."""
        channels = {id(self.channels[s]): s for s in shards}
        return [channels[id(ch)] for ch in wait([self.channels[s] for s in shards], timeout)]

    def receive(self, s: int, msg: bytes, agg: Any, stop: Any) -> bool:
        """Shard s's message (run/session.collect): its workers' reports to the merge; True
        once the shard is done."""
        self.heard[s] = _core.now_ns()
        tag = msg[:1]
        if tag == WORKER:
            self._worker_message(s, msg[1 + _SHARD.size:], agg, stop)
        elif tag == SHARD_DONE:
            return True
        elif tag == SHARD_FAILED:
            raise WorkerCrashed(f"shard {s} failed: {_line(msg[1:])}")
        return False

    def lost(self, s: int) -> str:
        return f"shard {s} disconnected{self._exit_note(s)}"

    def check(self, done: list[bool], heard: bool, stop: Any) -> None:
        """A shard silent for STALL_INTERVALS intervals has stalled: the run fails."""
        now = _core.now_ns()
        stall_ns = int(STALL_INTERVALS * self.interval_s * 1e9)
        for s in range(self.shards):
            if not done[s] and now - self.heard[s] > stall_ns:
                raise WorkerCrashed(f"shard {s} sent nothing for {(now - self.heard[s]) / 1e9:.1f} "
                                    f"s ({STALL_INTERVALS} intervals): it stalled")

    def drain(self, agg: Any, stop: Any) -> None:
        """After a hard stop: what the shards had already sent."""
        for s, ch in enumerate(self.channels):
            try:
                while ch.poll(0):
                    msg = ch.recv_bytes()
                    if msg[:1] == WORKER:
                        self._worker_message(s, msg[1 + _SHARD.size:], agg, stop)
            except (EOFError, OSError, WorkerCrashed):
                continue

    def _worker_message(self, shard: int, msg: bytes, agg: Any, stop: Any) -> None:
        tag = msg[:1]
        if tag == INTERVAL:
            report = decode_interval(msg)
            c = self.counts[shard]
            c[0] += sum(cell.n for cell in report.cells if cell.outcome in STATUS_OUTCOMES)
            c[1] += sum(report.sent)
            c[2] += sum(report.unsent)
            c[3] += sum(report.scheduled)
            agg.add(report)
        elif tag == FAILED:
            raise WorkerCrashed(f"shard {shard}: a worker failed: {_line(msg[1:])}")
        elif tag == DONE:
            stop.ran_out(agg.note_done(msg))

    def figures(self, ran_s: float) -> list[dict[str, Any]]:
        """The summary's `shards`: per shard what it sent and its clock."""
        out = []
        for s, (responses, sent, unsent, scheduled) in enumerate(self.counts):
            offset, delay = self.offsets.get(s, (0, 0))
            out.append({"index": s, "workers": self.workers, "scheduled": scheduled,
                        "sent": sent, "requests": responses, "unsent": unsent,
                        "achieved_rps": round(responses / ran_s, 3) if ran_s > 0 else 0.0,
                        "offset_ms": round(offset / 1e6, 3), "delay_ms": round(delay / 1e6, 3)})
        return out

    def metadata(self) -> dict[str, Any]:
        """The Parquet metadata's `shards`: index -> the measured clock offset and delay."""
        return {str(s): {"offset_ms": round(o / 1e6, 3), "delay_ms": round(d / 1e6, 3)}
                for s, (o, d) in sorted(self.offsets.items())}

    # -- stopping

    def _send_all(self, tag: bytes) -> None:
        for ch in self.channels:
            try:
                ch.send_bytes(tag)
            except OSError:
                pass

    def stop(self) -> None:
        """Ask every shard to stop scheduling; they still report what is in flight."""
        self._send_all(STOP)

    def kill(self) -> None:
        """Kill every shard's workers now (safe in a signal handler): a local shard is killed
        too (a stalled one reads no message), and its workers stop as its sockets close.
        What the shards already sent can still be read."""
        self._send_all(KILL)
        for proc in self.processes.values():
            if proc.returncode is None:
                try:
                    proc.kill()
                except OSError:
                    pass

    def terminate(self) -> None:
        if self.remote is not None:
            self.remote.cleanup()
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        for ch in self.channels:
            ch.close()
        self.channels = []
        self.listener.close()
        for log in self.logs.values():
            log.close()
        self.logs = {}

    def join(self, timeout: float = 10.0) -> None:
        for proc in self.processes.values():
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.terminate()


_SHARD_CODE = ("import sys; sys.path.insert(0, sys.argv[1]); del sys.argv[1]; "
               "sys.argv[0] = 'loadforge'; from loadforge.cli import main; main()")
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch_local(address: str, index: int, log: Any, token: str) -> subprocess.Popen[bytes]:
    """The local launcher: `loadforge shard` as a process of this machine, in a session of its
    own (Ctrl-C is the coordinator's to handle; a shard whose coordinator is gone stops). The
    token goes in its environment, never on its command line (which `ps` shows)."""
    return subprocess.Popen([sys.executable, "-P", "-c", _SHARD_CODE, _PACKAGE_ROOT, "shard",
                             "--coordinator", address, "--index", str(index)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                            start_new_session=True, env={**os.environ, TOKEN_ENV: token})


def new_token() -> str:
    """A run's shard token: 256 random bits, URL-safe (it goes in a Secret, a file, a
    variable)."""
    return secrets.token_urlsafe(32)


def write_token(path: str, token: str) -> None:
    """--shard-token-file: the run's token, readable by its owner only."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
    except OSError as exc:
        raise InputError(f"--shard-token-file {path}: cannot write it "
                         f"({exc.strerror or exc})") from None


def _read_exactly(sock: socket.socket, n: int, limit: float) -> bytes:
    """n bytes, by time.monotonic() `limit` (else TimeoutError), however slowly they come."""
    data = b""
    while len(data) < n:
        left = limit - time.monotonic()
        if left <= 0:
            raise TimeoutError("too slow")
        sock.settimeout(left)
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return data


def _read_hello(sock: socket.socket) -> bytes:
    """One message in multiprocessing's framing, whole within HELLO_TIMEOUT_S and at most
    HELLO_MAX bytes: a connection that says too little, too slowly or too much cannot hold up
    the start for longer."""
    limit = time.monotonic() + HELLO_TIMEOUT_S
    (size,) = _FRAME.unpack(_read_exactly(sock, _FRAME.size, limit))
    if not 0 < size <= HELLO_MAX:
        raise ValueError(f"a message of {size} bytes")
    return _read_exactly(sock, size, limit)


def _line(raw: bytes) -> str:
    return (raw.decode(errors="replace").strip().splitlines() or ["?"])[-1]


# -- the shard's side --------------------------------------------------------------------------

def parse_coordinator(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--coordinator {value}: expected HOST:PORT, e.g. 127.0.0.1:7070")
    return host.strip("[]"), int(port)


def _dial(host: str, port: int, timeout_s: float) -> socket.socket:
    """Connect, retrying while the coordinator is not up yet (pods start in any order)."""
    limit = time.monotonic() + timeout_s
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=5.0)
        except OSError as exc:
            if time.monotonic() > limit:
                raise RunError(f"shard: cannot reach the coordinator at {host}:{port} "
                               f"({exc.strerror or exc})") from None
            time.sleep(0.2)
            continue
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _recv(conn: Channel, timeout_s: float, what: str) -> bytes:
    try:
        if not conn.poll(timeout_s):
            raise RunError(f"shard: the coordinator sent no {what} within {timeout_s:.0f} s")
        return conn.recv_bytes()
    except (EOFError, OSError):
        raise RunError(f"shard: the coordinator closed the connection (waiting for {what})"
                       ) from None


def test_skew_ns(value: str, index: int) -> int:
    """LOADFORGE_TEST_CLOCK_SKEW_MS (test-only): one skew for every shard ("20"), or one per
    shard index ("0,200"); shards past the list's end read their clock as it is."""
    parts = [p.strip() for p in value.split(",")] if value.strip() else []
    try:
        return int(float(parts[index]) * 1e6) if index < len(parts) else (
            int(float(parts[0]) * 1e6) if len(parts) == 1 else 0)
    except ValueError:
        raise InputError(f"{SKEW_ENV}={value}: expected milliseconds, e.g. 20 or 0,200") from None


def read_token(token_file: str | None) -> str:
    """The shard's token: from --token-file, else from LOADFORGE_SHARD_TOKEN."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--token-file {token_file}: cannot read it "
                             f"({getattr(exc, 'strerror', None) or exc})") from None
        if not token:
            raise InputError(f"--token-file {token_file}: the file is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise InputError(f"shard: no shard token: set {TOKEN_ENV} to the run's token, or give "
                         "--token-file PATH (the coordinator's --shard-token-file)")
    return token


def shard_main(coordinator: str, index: int | None, token_file: str | None = None) -> None:
    """`loadforge shard`: dial in, take a stripe of the plan, run it, stream the reports."""
    host, port = parse_coordinator(coordinator)
    token = read_token(token_file)
    if index is None and os.environ.get("JOB_COMPLETION_INDEX", "").isdigit():
        index = int(os.environ["JOB_COMPLETION_INDEX"])
    skew_ns = 0

    def clock() -> int:
        return time.time_ns() + skew_ns

    conn = Channel(_dial(host, port, START_TIMEOUT_S).detach())
    conn.send_bytes(HELLO + json.dumps({"protocol": PROTOCOL, "version": __version__,
                                        "index": index, "token": token}).encode())
    msg = _recv(conn, START_TIMEOUT_S, "plan")
    if msg[:1] == REFUSE:
        raise RunError(f"shard: the coordinator refused it: {_line(msg[1:])}")
    if msg[:1] != ACCEPT:
        raise RunError("shard: the coordinator does not speak the loadforge shard protocol")
    assigned = pickle.loads(msg[1:])
    index = int(assigned["index"])
    skew_ns = test_skew_ns(os.environ.get(SKEW_ENV, ""), index)
    best: tuple[int, int] | None = None
    for _ in range(CLOCK_ROUNDS):
        t0 = clock()
        conn.send_bytes(PING + _TS.pack(t0))
        reply = _recv(conn, START_TIMEOUT_S, "clock reply")
        t3 = clock()
        _, t1, t2 = _PONG.unpack(reply[1:])
        offset, delay = offset_from(t0, t1, t2, t3)
        if best is None or delay < best[1]:
            best = (offset, delay)
    assert best is not None
    pool = WorkerPool(assigned["specs"])
    try:
        _run_shard(conn, pool, index, best, clock)
    finally:
        pool.terminate()


def _run_shard(conn: Channel, pool: WorkerPool, index: int, best: tuple[int, int],
               clock: Any) -> None:
    try:
        pool.wait_ready(START_TIMEOUT_S)
    except RunError as exc:
        conn.send_bytes(SHARD_FAILED + str(exc).encode())
        raise
    conn.send_bytes(SHARD_READY + json.dumps({"offset_ns": best[0],
                                              "delay_ns": best[1]}).encode())
    msg = _recv(conn, START_TIMEOUT_S + 30.0, "start time")
    if msg[:1] == REFUSE:
        raise RunError(f"shard {index}: the coordinator called the run off: {_line(msg[1:])}")
    if msg[:1] != START:
        raise RunError(f"shard {index}: expected the start time, got message {msg[:1]!r}")
    # The coordinator's start time on this shard's clock, then on its monotonic clock: once.
    start = int(msg[1:]) + best[0]
    t0 = _core.now_ns() + (start - clock())
    for worker in pool.channels:
        worker.send_bytes(str(t0).encode())
    tag = _SHARD.pack(index)
    done = [False] * len(pool.channels)
    while not all(done):
        waiting: list[Any] = [conn] + [pool.channels[i] for i in range(len(done)) if not done[i]]
        for ch in wait(waiting, timeout=0.5):
            if ch is conn:
                try:
                    order = conn.recv_bytes()
                except (EOFError, OSError):
                    pool.kill()
                    raise RunError("shard: the coordinator went away; stopped") from None
                if order == STOP:
                    pool.stop()
                elif order == KILL:
                    pool.kill()
                    return
                continue
            assert isinstance(ch, Channel)
            i = pool.channels.index(ch)
            try:
                msg = ch.recv_bytes()
            except (EOFError, OSError):
                reason = f"worker {i} exited unexpectedly (exit code {pool.exitcode(i)})"
                conn.send_bytes(SHARD_FAILED + reason.encode())
                raise RunError(f"shard {index}: {reason}") from None
            conn.send_bytes(WORKER + tag + msg)
            if msg[:1] == DONE:
                done[i] = True
            elif msg[:1] == FAILED:
                raise RunError(f"shard {index}: worker {i} failed: {_line(msg[1:])}")
    conn.send_bytes(SHARD_DONE)
    pool.join()
