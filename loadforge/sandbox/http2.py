"""The sandbox's server side of HTTP/2 (h2c, prior knowledge), on the same port as HTTP/1.1.

A connection starts with `FirstBytes`, which reads until the first bytes say which protocol the
client speaks and then hands the transport to an `HTTPConnection` (HTTP/1.1, unchanged: after
that first read it costs exactly what it did) or to an `H2Server` here, built on the `h2`
library. Each HTTP/2 stream is one request through the cluster (`Cluster.route_stream`), with the
same responses as HTTP/1.1, translated once per distinct response (`h2_form`).

Flow control: request bodies are discarded and acknowledged at once, so the client's windows
reopen as it sends; response bodies go out as far as the client's windows allow, the rest when a
WINDOW_UPDATE opens them. The client may open at most `max_concurrent_streams` streams at once
(SETTINGS_MAX_CONCURRENT_STREAMS).

`h2` is pure Python and costs far more per request than the hand-made HTTP/1.1 side: measured
on the 2-core development machine (shared), h2load -c 4 -m 100 got about 12,500 requests/s from
the sandbox, where wrk over HTTP/1.1 keep-alive got 30,000 to 70,000. Enough to show balancing;
benchmark an HTTP/2 client against nginx, not against the sandbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from loadforge.sandbox.http import HTTPConnection, Response, peer_hash

if TYPE_CHECKING:
    from loadforge.sandbox.capacity import Backend

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# A response as HTTP/2 sees it: (header list with :status first, body).
H2Response = tuple[list[tuple[bytes, bytes]], bytes]

_forms: dict[Response, H2Response] = {}
_MAX_FORMS = 4096
_HOP_BY_HOP = (b"connection", b"keep-alive", b"transfer-encoding")


def h2_form(response: Response) -> H2Response:
    """The HTTP/2 headers and body of a pre-encoded HTTP/1.1 response, parsed once and kept:
    the sandbox answers from a handful of distinct responses (a few per backend)."""
    form = _forms.get(response)
    if form is not None:
        return form
    raw = response[0]
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = [(b":status", lines[0].split(b" ", 2)[1])]
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name not in _HOP_BY_HOP:
            headers.append((name, value.strip()))
    form = (headers, body)
    if len(_forms) >= _MAX_FORMS:
        _forms.clear()
    _forms[response] = form
    return form


class FirstBytes(asyncio.Protocol):
    """A new connection until its first bytes tell HTTP/2's preface from HTTP/1.1."""

    __slots__ = ("make_h1", "make_h2", "transport", "buf")

    def __init__(self, make_h1: Callable[[], HTTPConnection],
                 make_h2: Callable[[], H2Server]) -> None:
        self.make_h1 = make_h1
        self.make_h2 = make_h2
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if len(buf) < len(PREFACE) and PREFACE.startswith(buf):
            self.buf = buf     # "PRI * HT": too early to tell (and "P" could be a POST)
            return
        transport = self.transport
        assert transport is not None
        protocol: asyncio.Protocol = (self.make_h2() if buf.startswith(PREFACE)
                                      else self.make_h1())
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(buf)


class _Stream:
    """One request on an HTTP/2 connection: what the backend answers through (a Responder)."""

    __slots__ = ("conn", "stream_id")

    def __init__(self, conn: H2Server, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id

    def respond(self, response: Response, close: bool) -> None:
        # `close` is HTTP/1.1's Connection: close; a stream's end is its end.
        self.conn.respond(self.stream_id, response)


class H2Server(asyncio.Protocol):
    """One HTTP/2 client connection; its streams go to `route(conn, stream, method, target)`.

    `backend` is the backend the connection is pinned to under per-connection balancing
    (Cluster.route_stream sets and reads it); `hash_key` is ip_hash's key, as for HTTP/1.1.
    """

    def __init__(self, route: Callable[[H2Server, _Stream, bytes, bytes], None],
                 max_concurrent_streams: int) -> None:
        self.route = route
        self.max_concurrent_streams = max_concurrent_streams
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.receiving = False
        self.hash_key = 0
        self.backend: Backend | None = None
        self.requests: dict[int, tuple[bytes, bytes]] = {}   # stream id -> (method, path)
        self.live: set[int] = set()                          # routed, not yet answered
        self.unsent: dict[int, bytes] = {}                   # body bytes waiting for a window

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.hash_key = peer_hash(transport)
        # Replaced before the first SETTINGS frame goes out, so the limit holds from the start
        # (a later update_settings would apply only once the client acknowledged it).
        conn = self.conn
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: conn.DEFAULT_MAX_HEADER_LIST_SIZE,
        })
        self.conn.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.live.clear()
        self.unsent.clear()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # h2 has queued a GOAWAY naming the error; send it and hang up.
            self._flush()
            self._close()
            return
        self.receiving = True
        try:
            for event in events:
                self._event(event)
        finally:
            self.receiving = False
        self._flush()

    def _event(self, event: h2.events.Event) -> None:
        conn = self.conn
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None
            method = path = b""
            for name, value in event.headers or ():
                if name == b":method":
                    method = bytes(value)
                elif name == b":path":
                    path = bytes(value)
            self.requests[event.stream_id] = (method, path)
            if event.stream_ended is not None:
                self._dispatch(event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            # The body is discarded; acknowledging it reopens the client's windows.
            if event.flow_controlled_length:
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            self._dispatch(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            self.requests.pop(event.stream_id, None)
            self.live.discard(event.stream_id)
            self.unsent.pop(event.stream_id, None)
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            if self.unsent:
                for stream_id in list(self.unsent):
                    self._send_body(stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._flush()
            self._close()

    def _dispatch(self, stream_id: int) -> None:
        request = self.requests.pop(stream_id, None)
        if request is None:
            return
        self.live.add(stream_id)
        self.route(self, _Stream(self, stream_id), request[0], request[1])

    def respond(self, stream_id: int, response: Response) -> None:
        if self.closed or stream_id not in self.live:
            return       # the client reset the stream, or the connection is gone
        self.live.discard(stream_id)
        headers, body = h2_form(response)
        try:
            self.conn.send_headers(stream_id, headers, end_stream=not body)
        except h2.exceptions.ProtocolError:
            return
        if body:
            self.unsent[stream_id] = body
            self._send_body(stream_id)
        if not self.receiving:
            self._flush()

    def _send_body(self, stream_id: int) -> None:
        conn = self.conn
        body = self.unsent[stream_id]
        try:
            while body:
                size = min(conn.local_flow_control_window(stream_id),
                           conn.max_outbound_frame_size, len(body))
                if size <= 0:
                    self.unsent[stream_id] = body
                    return
                conn.send_data(stream_id, body[:size], end_stream=size == len(body))
                body = body[size:]
        except h2.exceptions.ProtocolError:
            pass      # the stream was closed under us
        del self.unsent[stream_id]

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
