"""A scripted misbehaving HTTP/1.1 server for the torture tests: one process, a mode per fault.

The request path picks the mode (`/garbage`, `/slow?ms=40`, `/body?size=1048576`, ...), so one
server serves every mode at once; two more ports misbehave before any request: one resets every
connection it accepts, one listens and never accepts. The server counts, per mode, the
connections it accepted, the requests it read, the ones it answered (began to answer, for modes
whose answer never ends) and the ones it dropped (read, then closed without a byte), and returns
those counts as JSON to `GET /_stats`, so a test reconciles them with what loadforge reports.

Run as `python tests/torture.py`: prints one JSON line with its ports, serves until its stdin
closes (the test's end of the pipe), so it never outlives the test run.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import defaultdict
from urllib.parse import parse_qs, urlsplit

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
LIMIT_S = 10.0      # no answer goes on longer than this, whatever the client does


def _head(status: str, *headers: str) -> bytes:
    return ("HTTP/1.1 " + status + "\r\n" + "".join(h + "\r\n" for h in headers)
            + "\r\n").encode()


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = defaultdict(
            lambda: {"accepted": 0, "requests": 0, "answered": 0, "dropped": 0})

    def add(self, mode: str, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[mode][what] += n

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {mode: dict(c) for mode, c in self.counts.items()}


STATS = Stats()


class Closed(Exception):
    """The client closed its end (or reset it)."""


class _Handler(socketserver.BaseRequestHandler):
    def setup(self) -> None:
        self.sock: socket.socket = self.request
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(LIMIT_S)
        self.buf = b""
        self.served = 0        # requests answered on this connection
        self.counted_accept: set[str] = set()

    def read_head(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise Closed
            self.buf += data
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return head

    def read_body(self, head: bytes) -> None:
        """Read (and discard) the request's body, by its Content-Length."""
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buf) < length:
            data = self.sock.recv(65536)
            if not data:
                raise Closed
            self.buf += data
        self.buf = self.buf[length:]

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            raise Closed from None

    def wait_for_close(self) -> None:
        """Read and discard until the client closes (or LIMIT_S)."""
        try:
            while self.sock.recv(65536):
                pass
        except OSError:
            pass

    def handle(self) -> None:
        try:
            while True:
                head = self.read_head()
                target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
                url = urlsplit(target)
                mode = url.path.strip("/") or "ok"
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                if mode == "_stats":
                    body = json.dumps(STATS.snapshot()).encode()
                    self.send(_head("200 OK", f"Content-Length: {len(body)}") + body)
                    continue
                if mode not in self.counted_accept:
                    self.counted_accept.add(mode)
                    STATS.add(mode, "accepted")
                STATS.add(mode, "requests")
                if mode == "continue":
                    # An interim answer before the body is read: not the final one.
                    self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                if mode != "early-413":
                    self.read_body(head)
                if not self.answer(mode, params):
                    return
        except (Closed, OSError, IndexError):
            return

    def answer(self, mode: str, params: dict[str, str]) -> bool:
        """Answer one request; False once the connection is done with."""
        sock = self.sock
        if mode == "silent":
            self.wait_for_close()
            return False
        if mode == "early-413":
            # A final answer after the head of a request whose body is still coming (a
            # proxy's body limit): the connection stays open and everything else is read and
            # thrown away, the next request's bytes too.
            STATS.add(mode, "answered")
            self.send(_head("413 Content Too Large", "Content-Length: 0"))
            self.wait_for_close()
            return False
        if mode == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            STATS.add(mode, "dropped")
            return False
        if mode == "close-after":
            if self.served >= int(params.get("n", "5")):
                # As a keep-alive timeout or limit that crosses the request on its way: the
                # request is read, and the connection closed without a byte.
                STATS.add(mode, "dropped")
                return False
        STATS.add(mode, "answered")
        self.served += 1
        if mode in ("ok", "close-after", "continue"):
            self.send(OK)
        elif mode == "delay":
            time.sleep(int(params.get("ms", "0")) / 1000)
            self.send(OK)
        elif mode == "spread":
            # Delays taken in turn from the list, across all connections: one request name
            # whose latencies span several decades.
            delays = [int(x) for x in params.get("ms", "0").split(",")]
            with STATS.lock:
                self.server.turn = getattr(self.server, "turn", -1) + 1  # type: ignore[attr-defined]
                turn = self.server.turn  # type: ignore[attr-defined]
            time.sleep(delays[turn % len(delays)] / 1000)
            self.send(OK)
        elif mode == "slow":
            # The response dribbles out a byte at a time over `ms` milliseconds.
            gap = int(params.get("ms", "40")) / 1000 / (len(OK) - 1)
            for i in range(len(OK)):
                if i:
                    time.sleep(gap)
                self.send(OK[i:i + 1])
        elif mode == "body":
            size = int(params.get("size", "0"))
            self.send(_head("200 OK", f"Content-Length: {size}"))
            chunk = b"x" * 65536
            while size > 0:
                self.send(chunk[:size])
                size -= len(chunk)
        elif mode == "garbage":
            self.send(b"SSH-2.0-OpenSSH_9.2p1\r\n\r\n")
        elif mode == "huge-header":
            self.send(_head("200 OK", "X-Big: " + "a" * 70000, "Content-Length: 0"))
        elif mode == "endless-header":
            self.send(b"HTTP/1.1 200 OK\r\n")
            line = b"X-More: " + b"m" * 1000 + b"\r\n"
            for _ in range(1024):        # 1 MiB at most; the client gives up at 64 KiB
                self.send(line)
            return False
        elif mode == "bad-length":
            self.send(_head("200 OK", "Content-Length: 12abc") + b"ok")
        elif mode == "huge-length":
            self.send(_head("200 OK", "Content-Length: 99999999999") + b"0123456789")
            return False
        elif mode == "bad-chunk":
            self.send(_head("200 OK", "Transfer-Encoding: chunked") + b"zz\r\nok\r\n0\r\n\r\n")
        elif mode == "huge-chunk":
            self.send(_head("200 OK", "Transfer-Encoding: chunked")
                      + b"fffffffffffffff\r\n0123456789")
            return False
        elif mode == "endless-chunk":
            self.send(_head("200 OK", "Transfer-Encoding: chunked"))
            end = time.monotonic() + LIMIT_S
            while time.monotonic() < end:
                self.send(b"400\r\n" + b"c" * 1024 + b"\r\n")
                time.sleep(0.005)
            return False
        elif mode == "flood":
            # A body without length or end, as fast as the server can write it.
            self.send(_head("200 OK"))
            chunk = b"f" * 65536
            end = time.monotonic() + LIMIT_S
            while time.monotonic() < end:
                self.send(chunk)
            return False
        elif mode == "http10":
            self.send(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return False
        elif mode == "to-close":
            self.send(_head("200 OK") + b"the body runs to the close")
            return False
        elif mode == "interim-storm":
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n" * 200
                      + b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n" * 50 + OK)
        elif mode == "204-body":
            self.send(_head("204 No Content", "Content-Length: 5") + b"hello")
        elif mode == "304-body":
            self.send(_head("304 Not Modified", "Content-Length: 5") + b"hello")
        elif mode == "two-responses":
            self.send(OK + OK)
        elif mode == "space-before-colon":
            # RFC 9112 5.1: refused at once, not read as a body that runs to the close.
            self.send(_head("200 OK", "Content-Length : 2") + b"ok")
        elif mode == "obs-fold":
            self.send(_head("200 OK", "X-Folded: a,", " b", "Content-Length: 2") + b"ok")
        elif mode == "cl-list":
            self.send(_head("200 OK", "Content-Length: 2, 2") + b"ok")
        elif mode == "chunk-bare-cr":
            self.send(_head("200 OK", "Transfer-Encoding: chunked") + b"2\r0\r\nok\r\n0\r\n\r\n")
        elif mode == "status-999":
            self.send(_head("999 Odd", "Content-Length: 0"))
        else:
            self.send(_head("404 Not Found", "Content-Length: 0"))
        return True


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


class _ResetAll(socketserver.BaseRequestHandler):
    """Accepts, then resets at once: a crashing backend behind a listening socket."""

    def handle(self) -> None:
        STATS.add("accept-then-reset", "accepted")
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def main() -> None:
    servers = [_Server(("127.0.0.1", 0), _Handler), _Server(("127.0.0.1", 0), _ResetAll)]
    never = socket.socket()
    never.bind(("127.0.0.1", 0))
    never.listen(0)          # a full backlog: further SYNs are dropped, and nothing accepts
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(json.dumps({"port": servers[0].server_address[1],
                      "reset_port": servers[1].server_address[1],
                      "never_port": never.getsockname()[1]}), flush=True)
    sys.stdin.read()         # until the test closes the pipe
    os._exit(0)


if __name__ == "__main__":
    main()
