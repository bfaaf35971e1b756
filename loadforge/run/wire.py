"""The worker wire format: the interval payload a worker's engine hands over once an interval,
and the INTERVAL message that carries it to the coordinator.

Defined twice only where it must be: here, as the struct layouts Python reads, and in
`loadforge/engine/wire.pxd`, as the packed C structs the engine (`engine/cells.pxi` `flush`)
writes; tests/test_wire.py checks one against the other field by field. Little-endian ("<")
throughout, no padding. A payload of another version is refused, not misread: a coordinator
and its workers (or shards) must run the same loadforge.

Payload, in this order: HEADER; STAGE x nstages; BACKEND x nbackends (captured header values,
slots 1..nbackends); per cell CELL, then HIST + uint32 counts twice (latency, service);
TRAILER; HIST + uint32 counts (the interval's connect times); TLS (handshakes so far, zeros
over plain TCP); HIST + uint32 counts (the interval's TLS handshake times); then, from version
5, an optional FLOWS section (scripted flows' workers only: loadforge/flows/driver.py appends
it): uint32 length, then that many bytes of UTF-8 JSON {"checks": {name: [passed, failed]},
"errors": {"flow|ExceptionType": count}}, the interval's counts. A HIST is followed by its n
uint32 counts of histogram indices lo, lo+1, ...

The worker's channel to its coordinator (`Channel`): one end of a socketpair, each message
framed as multiprocessing.connection frames it; a worker sends on it through a thread
(`ReportSender`).
"""

from __future__ import annotations

import os
import select
import struct
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

MAGIC = 0x4957464C           # b"LFWI" read little-endian
VERSION = 6                  # 3: TLS handshake counts and times after the connect times;
                             # 4: outcomes 9-11 (HTTP/2 stream errors); 5: the optional FLOWS
                             # section (checks, flow failures) at the end; 6: the trailer's
                             # fifth count, latencies clamped to 1 h
_MAGIC_V1 = 0x3149464C       # b"LFI1": version 1, before the format had a version field

# magic, version, final, worker, stages, interval index, cells, backends, connects so far,
# connect failures so far
HEADER = struct.Struct("<IHHIIqIIQQ")
STAGE = struct.Struct("<QQQQQ")        # scheduled, sent, unsent, waited, late
BACKEND = struct.Struct("<I48s")       # length, name (CAPTURE_MAX bytes)
CELL = struct.Struct("<IIIIQ")         # stage, request, outcome, backend slot, count
HIST = struct.Struct("<iiQqq")         # lo, n, total, min, max; then n uint32 counts
# so far: retried, dropped, closed by server, by us, latencies clamped to 1 h
TRAILER = struct.Struct("<QQQQQ")
TLS = struct.Struct("<QQQ")            # so far: full handshakes, resumed, failed
FLOWS = struct.Struct("<I")            # length of the FLOWS section's JSON that follows

# The INTERVAL message: its tag byte, GAUGES, then the payload.
# open connections, in flight, the worker's CPU time since time zero (ns)
GAUGES = struct.Struct("<IIQ")


class WireFormatError(ValueError):
    """A payload this loadforge cannot read: not an interval payload, or another version."""


def check_header(magic: int, version: int) -> None:
    """Refuse a payload that is not of this wire format's version, with a line that says why."""
    if magic == _MAGIC_V1:
        version = 1
    elif magic != MAGIC:
        raise WireFormatError("interval payload with a bad magic number")
    if version != VERSION:
        raise WireFormatError(
            f"interval payload of wire format version {version}; this loadforge reads "
            f"version {VERSION}: run the same loadforge on the coordinator and its workers")


# A message's length, before its bytes (big-endian, as multiprocessing.connection writes it;
# -1 and then an unsigned 8-byte length for a message over 2 GiB).
_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")
_SMALL = 16384      # a message this short goes out in one write with its length


class Channel:
    """A worker's end, or the coordinator's, of their socketpair: whole messages (bytes) sent
    and received, in the framing of multiprocessing.connection.Connection, whose methods it
    keeps (send_bytes, recv_bytes, poll, fileno, close), without importing multiprocessing
    (5 ms at a run's start: tempfile, shutil, random, the compression modules). The engine
    watches the worker's end for a stop message; it reads whatever bytes come."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise OSError("the channel is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def send_bytes(self, data: bytes) -> None:
        n = len(data)
        if n > 0x7FFFFFFF:
            self._write(_LENGTH.pack(-1) + _LONG_LENGTH.pack(n))
            self._write(data)
        elif n <= _SMALL:
            self._write(_LENGTH.pack(n) + data)
        else:
            self._write(_LENGTH.pack(n))
            self._write(data)

    def recv_bytes(self) -> bytes:
        """The next message; EOFError once the other end has closed."""
        (n,) = _LENGTH.unpack(self._read(_LENGTH.size, first=True))
        if n == -1:
            (n,) = _LONG_LENGTH.unpack(self._read(_LONG_LENGTH.size))
        return self._read(n)

    def poll(self, timeout: float = 0.0) -> bool:
        """Whether a message (or the other end's close) is waiting, within timeout seconds."""
        return bool(wait([self], timeout))

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __del__(self) -> None:
        self.close()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fileno(), view):]

    def _read(self, n: int, first: bool = False) -> bytes:
        chunks = []
        left = n
        while left:
            chunk = os.read(self.fileno(), left)
            if not chunk:
                raise EOFError("the channel's other end closed" if first and left == n
                               else "the channel closed within a message")
            chunks.append(chunk)
            left -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ReportSender:
    """Sends a worker's messages to the coordinator from a thread of its own, in order.

    The engine hands over each interval report from inside its loop; a blocking send there
    would stall the loop whenever the coordinator is slow to read (a busy merge, a paused
    process), and the stall would show up as server latency. The queue takes the report at
    once; a coordinator that falls behind receives the reports late, never the server's
    responses. A send that fails is raised at the next hand-over, which stops the engine.
    `finish` sends what is queued, and a last message, from the calling thread: the run's end
    waits for no thread to be scheduled (0.3-2 ms on a busy machine)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.pending: deque[bytes] = deque()
        self.sending = False        # the thread sends a message it took (under `ready`)
        self.closing = False
        self.error: BaseException | None = None
        self.ready = threading.Condition(threading.Lock())
        self.thread = threading.Thread(target=self._run, name="report-sender", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        ready = self.ready
        while True:
            with ready:
                while not self.pending and not self.closing:
                    ready.wait()
                if not self.pending or self.error is not None:
                    return
                message = self.pending.popleft()
                self.sending = True
            try:
                self.channel.send_bytes(message)
            except BaseException as exc:  # noqa: BLE001 -- handed to the engine's thread
                self.error = exc
            with ready:
                self.sending = False
                ready.notify_all()

    def send(self, message: bytes) -> None:
        if self.error is not None:
            raise self.error
        with self.ready:
            self.pending.append(message)
            self.ready.notify()

    def finish(self, last: bytes | None = None, timeout: float | None = None) -> None:
        """Stop the thread, then send what it had not taken and `last` from this thread, in
        order (a message the thread is sending goes out first). Raises what a send raised.
        Once is enough."""
        with self.ready:
            self.closing = True
            self.ready.notify_all()
            self.ready.wait_for(lambda: not self.sending, timeout)
            rest = list(self.pending)
            self.pending.clear()
        if self.error is not None:
            raise self.error
        for message in rest:
            self.channel.send_bytes(message)
        if last is not None:
            self.channel.send_bytes(last)

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued, then stop; raises what a send raised. Once is enough."""
        self.finish(None, timeout)

    def abandon(self, timeout: float) -> None:
        """Stop the thread and drop what is queued: once it returns, nothing of this sender's
        is on the channel (a failure report may follow)."""
        with self.ready:
            self.closing = True
            self.pending.clear()
            self.ready.notify_all()
            self.ready.wait_for(lambda: not self.sending, timeout)


def wait(channels: Sequence[Any], timeout: float | None) -> list[Any]:
    """The channels (or sockets: anything with a fileno) with a message, a connection or a
    closed other end waiting, within timeout seconds (None: until one has), in the order
    given, as multiprocessing.connection.wait answers."""
    poller = select.poll()
    for ch in channels:
        poller.register(ch.fileno(), select.POLLIN)
    ready = {fd for fd, _ in poller.poll(None if timeout is None else max(0.0, timeout) * 1000)}
    return [ch for ch in channels if ch.fileno() in ready]
