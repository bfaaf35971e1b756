"""The sandbox's server side of HTTP/1.1: canned responses and one connection's parser.

HTTP/1.1 is parsed by hand and only as far as a target needs to: request line, headers up to the
blank line, a Content-Length body (discarded), keep-alive and `Connection: close`. Responses are
pre-encoded; a request costs one `find`, a few slices and one `transport.write`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import Protocol

# A response as the pair (keep-alive bytes, close bytes), indexed by the request's `close` flag.
Response = tuple[bytes, bytes]

MAX_HEAD = 64 * 1024


def encode_response(
    status: str, body: bytes, content_type: str = "text/plain", extra: str = ""
) -> Response:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}"
    ).encode("latin-1")
    return head + b"\r\n" + body, head + b"Connection: close\r\n\r\n" + body


LB_HEALTHY = encode_response("200 OK", b"ok\n")
# No backend in rotation: what a load balancer with an empty pool answers (nginx, HAProxy: 503).
NO_BACKEND = encode_response("503 Service Unavailable", b"no backend available\n")
# A backend that is dead but still in rotation: the LB's connection to it is refused, so the
# client gets 502 Bad Gateway, as from nginx or HAProxy, until health checks take it out.
BAD_GATEWAY = encode_response("502 Bad Gateway", b"backend unreachable\n")
BAD_REQUEST = encode_response("400 Bad Request", b"bad request\n")
HEAD_TOO_LARGE = encode_response("431 Request Header Fields Too Large", b"header too large\n")
NOT_IMPLEMENTED = encode_response("501 Not Implemented", b"transfer-encoding not supported\n")


class Responder(Protocol):
    """Whoever waits for a backend's answer: a client connection or a health-check probe."""

    def respond(self, response: Response, close: bool) -> None: ...


class Client(Protocol):
    """What a balancing algorithm reads of a client connection, HTTP/1.1 or HTTP/2."""

    hash_key: int


Handler = Callable[["HTTPConnection", bytes, bytes, bytes, bool], None]


def peer_hash(transport: asyncio.BaseTransport) -> int:
    """ip_hash's key for a client connection. Every client of the sandbox is 127.0.0.1, so
    hashing the address alone would send all traffic to one backend; the source port is hashed
    too, which makes the stickiness per connection rather than per client host."""
    peer = transport.get_extra_info("peername")
    return zlib.crc32(f"{peer[0]}:{peer[1]}".encode()) if peer else 0


class HTTPConnection(asyncio.Protocol):
    """One client connection: a minimal HTTP/1.1 server side, one request in flight at a time.

    Pipelined requests wait in the buffer until the previous response is written, which keeps
    responses in order without tracking them.
    """

    __slots__ = ("handler", "transport", "buf", "waiting", "closed", "in_process", "hash_key")

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiting = False
        self.closed = False
        self.in_process = False
        self.hash_key = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.hash_key = peer_hash(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.waiting and not self.in_process:
            self._process()

    def respond(self, response: Response, close: bool) -> None:
        transport = self.transport
        if self.closed or transport is None:
            return
        transport.write(response[close])
        if close:
            self.closed = True
            transport.close()
            return
        self.waiting = False
        if self.buf and not self.in_process:
            self._process()

    def _fail(self, response: Response) -> None:
        self.buf.clear()
        self.respond(response, True)

    def _process(self) -> None:
        self.in_process = True
        buf = self.buf
        handler = self.handler
        try:
            while not self.closed:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        self._fail(HEAD_TOO_LARGE)
                    return
                line_end = buf.find(b"\r\n")
                parts = buf[:line_end].split(b" ")
                if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                    self._fail(BAD_REQUEST)
                    return
                close = parts[2] == b"HTTP/1.0"
                body_len = 0
                if line_end < end:
                    headers = buf[line_end:end + 2].lower()
                    i = headers.find(b"\r\nconnection:")
                    if i >= 0:
                        value = headers[i + 13:headers.find(b"\r\n", i + 2)]
                        if b"close" in value:
                            close = True
                        elif b"keep-alive" in value:
                            close = False
                    i = headers.find(b"\r\ncontent-length:")
                    if i >= 0:
                        try:
                            body_len = int(headers[i + 17:headers.find(b"\r\n", i + 2)])
                        except ValueError:
                            body_len = -1
                        if body_len < 0:
                            self._fail(BAD_REQUEST)
                            return
                    if b"\r\ntransfer-encoding:" in headers:
                        self._fail(NOT_IMPLEMENTED)
                        return
                total = end + 4 + body_len
                if len(buf) < total:
                    return
                body = bytes(buf[end + 4:total]) if body_len else b""
                method = bytes(parts[0])
                target = bytes(parts[1])
                del buf[:total]
                self.waiting = True
                handler(self, method, target, body, close)
                if self.waiting:
                    return
        finally:
            self.in_process = False
