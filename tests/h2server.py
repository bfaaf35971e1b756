"""An HTTP/2 test server on the `h2` library that does, on purpose, what nginx never sends.

For the engine's HTTP/2 tests: one asyncio loop in a thread, listening on 127.0.0.1 (a free
port), h2c with prior knowledge or TLS with ALPN `h2` (`tls=True`; `alpn=("http/1.1",)` makes a
server that will not negotiate h2; `cert_tool` "trustme" or "openssl", and "auto" takes trustme
when it is installed). Each mode exercises one thing a client must cope with (`MODES`, options
in `Options`):

    normal        every stream answered 200 with a body of `body_size` bytes
    continuation  response headers over the frame size: HEADERS + CONTINUATION frames
    hpack         many repeated headers (indexed in the dynamic table after the first
                  response), and every `table_reset_every`-th response starts with dynamic
                  table size updates (0, then back to the client's limit), emptying the table
    window        a tiny SETTINGS_INITIAL_WINDOW_SIZE for request bodies, WINDOW_UPDATEs sent
                  only after `window_delay`; response bodies larger than the client's windows
    ping          a PING before each answer (the client must acknowledge it)
    goaway        requests are held until `goaway_after` have arrived on a connection, then
                  GOAWAY with last_stream_id = the `goaway_keep`-th request's stream: the
                  streams above it are in flight and never answered ("refused_goaway"); the
                  connection closes once the kept ones are answered. Only the first
                  `goaway_connections` connections do this; later ones (the client's retries)
                  are served normally
    settings      after `settings_after` requests, SETTINGS lowering MAX_CONCURRENT_STREAMS to
                  `lowered_streams`; once the client acknowledged it, a stream beyond the
                  limit is refused with RST_STREAM(REFUSED_STREAM) and counted "over_limit"
    reset         RST_STREAM by arrival order, cycling through `reset_codes`
                  (none, REFUSED_STREAM, INTERNAL_ERROR by default)
    delay         answers after `delay` seconds per stream, cycling (0.2, 0, 0.1): out of order

Every option works in every mode (say `delay` with `reset`). `length_lie=N` announces a
`content-length` N bytes over the body it sends: a malformed response (RFC 9113 8.1.1) that the
client must reject. A request's query may ask for
`size=N` (body bytes) and `delay=MS`. `grpc_status="5"` ends every stream with trailers holding
that grpc-status after the body (`x` bytes: no valid gRPC message framing unless empty). `counts()` says what the server accepted and did, so a test
can reconcile it with what the client saw: connections, opened (requests received), answered
(response ended), reset ({code: n}), refused_goaway, over_limit, client_reset, request_bytes,
pings_sent, ping_acks, goaways_sent, settings_sent, protocol_errors and frames_sent ({frame
type: n}, e.g. "CONTINUATION", "WINDOW_UPDATE").
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, SettingsFrame

MODES = ("normal", "continuation", "hpack", "window", "ping", "goaway", "settings", "reset",
         "delay")

FRAME_NAMES = {0: "DATA", 1: "HEADERS", 2: "PRIORITY", 3: "RST_STREAM", 4: "SETTINGS",
               5: "PUSH_PROMISE", 6: "PING", 7: "GOAWAY", 8: "WINDOW_UPDATE",
               9: "CONTINUATION"}


@dataclasses.dataclass
class Options:
    body_size: int = 16
    delay: float | Sequence[float] = 0.0            # seconds per stream, cycled
    max_concurrent_streams: int = 100
    header_bytes: int = 0                           # big headers: continuation mode
    indexed_headers: int = 0                        # repeated headers: hpack mode
    table_reset_every: int = 0                      # hpack: every n-th response resizes the table
    initial_window: int = 65_535                    # SETTINGS_INITIAL_WINDOW_SIZE
    window_delay: float = 0.0                       # before acknowledging request data
    ping: bool = False
    goaway_after: int = 0
    goaway_keep: int = 0
    goaway_connections: int = 1                     # connections that get one; later ones don't
    settings_after: int = 0
    lowered_streams: int = 1
    reset_codes: Sequence[int | None] = ()
    length_lie: int = 0                             # content-length this much over the body
    grpc_status: str = ""                           # trailers with this grpc-status end streams


PRESETS: dict[str, dict[str, Any]] = {
    "normal": {},
    "continuation": {"header_bytes": 36_000},
    "hpack": {"indexed_headers": 24, "table_reset_every": 3},
    "window": {"initial_window": 256, "window_delay": 0.01, "body_size": 200_000},
    "ping": {"ping": True},
    "goaway": {"goaway_after": 4, "goaway_keep": 2},
    "settings": {"settings_after": 2, "lowered_streams": 1},
    "reset": {"reset_codes": (None, ErrorCodes.REFUSED_STREAM, ErrorCodes.INTERNAL_ERROR)},
    "delay": {"delay": (0.2, 0.0, 0.1)},
}


class H2Server:
    """The server; a context manager. `port`, `url`, and for TLS `ca_file` (PEM) and
    `client_context()`."""

    def __init__(self, mode: str = "normal", *, tls: bool = False, cert_tool: str = "auto",
                 alpn: Sequence[str] = ("h2",), **options: Any) -> None:
        if mode not in PRESETS:
            raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
        self.mode = mode
        self.options = Options(**{**PRESETS[mode], **options})
        self._lock = threading.Lock()
        self._counts: dict[str, Any] = {
            "connections": 0, "opened": 0, "answered": 0, "reset": collections.Counter(),
            "refused_goaway": 0, "over_limit": 0, "client_reset": 0, "request_bytes": 0,
            "pings_sent": 0, "ping_acks": 0, "goaways_sent": 0, "settings_sent": 0,
            "protocol_errors": 0, "frames_sent": collections.Counter(),
        }
        self._tmp = tempfile.TemporaryDirectory(prefix="h2server-")
        self.ca_file: str | None = None
        context = self._server_context(cert_tool, alpn) if tls else None
        self.tls = tls
        self._conns: set[_Connection] = set()
        self.goaways_left = self.options.goaway_connections if self.options.goaway_after else 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="h2server",
                                        daemon=True)
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(self.loop.create_server(
            lambda: _Connection(self), "127.0.0.1", 0, ssl=context), self.loop).result(5)
        self._server = server
        self.port: int = server.sockets[0].getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    # -- counts -----------------------------------------------------------------------------

    def count(self, key: str, n: int = 1, sub: Any = None) -> None:
        with self._lock:
            if sub is None:
                self._counts[key] += n
            else:
                self._counts[key][sub] += n

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {k: dict(v) if isinstance(v, collections.Counter) else v
                    for k, v in self._counts.items()}

    # -- TLS --------------------------------------------------------------------------------

    def _server_context(self, cert_tool: str, alpn: Sequence[str]) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_alpn_protocols(list(alpn))
        tmp = Path(self._tmp.name)
        trustme: Any = None
        if cert_tool in ("auto", "trustme"):
            try:
                import trustme
            except ImportError:
                if cert_tool == "trustme":
                    raise
        if trustme is not None:
            ca = trustme.CA()
            cert = ca.issue_cert("localhost", "127.0.0.1")
            cert.configure_cert(context)
            ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
        else:
            # A self-signed certificate is its own CA.
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                 "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "ca.pem"),
                 "-subj", "/CN=localhost",
                 "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                check=True, capture_output=True, timeout=30,
            )
            context.load_cert_chain(str(tmp / "ca.pem"), str(tmp / "key.pem"))
        self.ca_file = str(tmp / "ca.pem")
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's certificate and offers ALPN h2."""
        assert self.ca_file is not None, "not a TLS server"
        context = ssl.create_default_context(cafile=self.ca_file)
        context.set_alpn_protocols(["h2"])
        return context

    # -- lifecycle --------------------------------------------------------------------------

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        def shutdown() -> None:
            self._server.close()
            for conn in list(self._conns):
                conn.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(shutdown)
        self._thread.join(5)
        self.loop.close()
        self._tmp.cleanup()

    def __enter__(self) -> H2Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Connection(asyncio.Protocol):
    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.o = server.options
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.ordinal = 0                          # requests received on this connection
        self.paths: dict[int, bytes] = {}
        self.ordinals: dict[int, int] = {}
        self.open: set[int] = set()               # received, not yet answered or reset
        self.unsent: dict[int, bytes] = {}
        self.bodies: set[int] = set()             # request body still arriving
        self.held: list[int] = []                 # goaway: waiting for the decision
        self.last_stream_id: int | None = None    # goaway: sent with this id
        self.kept: set[int] = set()
        self.settings_acks = 0
        self.limit_from_ack: int | None = None    # settings: the ack that puts the limit in force
        self.limit: int | None = None
        self.goaway = server.goaways_left > 0
        if self.goaway:
            server.goaways_left -= 1

    # -- plumbing ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._conns.add(self)
        self.server.count("connections")
        conn = self.conn
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.o.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: conn.DEFAULT_MAX_HEADER_LIST_SIZE,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.o.initial_window,
        })
        conn.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._conns.discard(self)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def write(self, data: bytes) -> None:
        if not data or self.closed or self.transport is None:
            return
        i = 0
        while i + 9 <= len(data):
            length = int.from_bytes(data[i:i + 3], "big")
            self.server.count("frames_sent", sub=FRAME_NAMES.get(data[i + 3], str(data[i + 3])))
            i += 9 + length
        self.transport.write(data)

    def flush(self) -> None:
        self.write(self.conn.data_to_send())

    def later(self, delay: float, callback: Any, *args: Any) -> None:
        def run() -> None:
            if not self.closed:
                callback(*args)
                self.flush()
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, run)
        else:
            callback(*args)

    # -- events -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.server.count("protocol_errors")
            self.flush()
            self.close()
            return
        for event in events:
            self.event(event)
        self.flush()

    def event(self, event: h2.events.Event) -> None:
        server = self.server
        if isinstance(event, h2.events.RequestReceived):
            sid = event.stream_id
            assert sid is not None
            self.ordinal += 1
            server.count("opened")
            self.ordinals[sid] = self.ordinal
            self.paths[sid] = dict(event.headers or ()).get(b":path", b"/")
            if self.limit is not None and len(self.open) >= self.limit:
                server.count("over_limit")
                self.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
                return
            self.open.add(sid)
            if event.stream_ended is not None:
                self.request_complete(sid)
            else:
                self.bodies.add(sid)
        elif isinstance(event, h2.events.DataReceived):
            sid = event.stream_id
            assert sid is not None and event.data is not None
            server.count("request_bytes", len(event.data))
            if event.flow_controlled_length:
                self.later(self.o.window_delay, self.acknowledge, event.flow_controlled_length,
                           sid)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            if event.stream_id in self.bodies:
                self.bodies.discard(event.stream_id)
                self.request_complete(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            if event.stream_id in self.open:
                server.count("client_reset")
            self.forget(event.stream_id)
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            for sid in list(self.unsent):
                self.send_body(sid)
        elif isinstance(event, h2.events.PingAckReceived):
            server.count("ping_acks")
        elif isinstance(event, h2.events.SettingsAcknowledged):
            self.settings_acks += 1
            if self.limit_from_ack is not None and self.settings_acks >= self.limit_from_ack:
                self.limit = self.o.lowered_streams
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def acknowledge(self, size: int, sid: int) -> None:
        try:
            self.conn.acknowledge_received_data(size, sid)
        except h2.exceptions.ProtocolError:
            pass     # the stream is gone; h2 still credits the connection window

    def forget(self, sid: int) -> None:
        self.open.discard(sid)
        self.bodies.discard(sid)
        self.unsent.pop(sid, None)

    # -- behaviours -------------------------------------------------------------------------

    def request_complete(self, sid: int) -> None:
        o, server, ordinal = self.o, self.server, self.ordinals[sid]
        if o.settings_after and ordinal == o.settings_after and self.limit_from_ack is None:
            # Written past h2 (which would enforce the new limit itself, as a connection error):
            # the server enforces it per stream, as RFC 9113 5.1.2 allows.
            self.flush()
            frame = SettingsFrame(0, settings={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: o.lowered_streams})
            self.write(frame.serialize())
            self.limit_from_ack = self.settings_acks + 1
            server.count("settings_sent")
        if self.last_stream_id is not None and sid > self.last_stream_id:
            server.count("refused_goaway")
            self.forget(sid)
            return
        if self.goaway and self.last_stream_id is None:
            self.held.append(sid)
            if len(self.held) < o.goaway_after:
                return
            # h2 stops a connection that has sent GOAWAY from sending anything else, so the
            # frame goes out past it: the kept streams are still answered, as RFC 9113 6.8 says.
            last = self.held[o.goaway_keep - 1] if o.goaway_keep else 0
            self.last_stream_id = last
            self.flush()
            self.write(GoAwayFrame(0, last_stream_id=last,
                                   error_code=ErrorCodes.NO_ERROR).serialize())
            server.count("goaways_sent")
            self.kept = {held for held in self.held if held <= last}
            for held in self.held:
                if held > last:
                    server.count("refused_goaway")
                    self.forget(held)
            kept, self.held = sorted(self.kept), []
            if not kept:
                self.close()
            for held in kept:
                self.schedule(held)
            return
        if o.reset_codes:
            code = o.reset_codes[(ordinal - 1) % len(o.reset_codes)]
            if code is not None:
                self.conn.reset_stream(sid, code)
                server.count("reset", sub=int(code))
                self.forget(sid)
                return
        self.schedule(sid)

    def schedule(self, sid: int) -> None:
        o = self.o
        if o.ping:
            self.conn.ping(self.ordinals[sid].to_bytes(8, "big"))
            self.server.count("pings_sent")
        delay = o.delay if isinstance(o.delay, (int, float)) else \
            o.delay[(self.ordinals[sid] - 1) % len(o.delay)]
        query = parse_qs(self.paths[sid].partition(b"?")[2].decode("latin-1"))
        if "delay" in query:
            delay = float(query["delay"][0]) / 1000
        self.later(delay, self.answer, sid)

    def answer(self, sid: int) -> None:
        if sid not in self.open:
            return
        o = self.o
        query = parse_qs(self.paths[sid].partition(b"?")[2].decode("latin-1"))
        size = int(query["size"][0]) if "size" in query else o.body_size
        headers = [(b":status", b"200"), (b"content-type", b"application/octet-stream"),
                   (b"content-length", str(size + o.length_lie).encode()),
                   (b"x-stream-id", str(sid).encode()),
                   (b"x-mode", self.server.mode.encode())]
        if o.header_bytes:
            # Hex digits barely compress under Huffman coding, so the block stays large.
            chunk = 8_000
            for i in range(0, o.header_bytes, chunk):
                value = (f"{sid:x}{i:x}" * chunk)[:min(chunk, o.header_bytes - i)]
                headers.append((f"x-big-{i // chunk}".encode(), value.encode()))
        if o.indexed_headers:
            headers += [(f"x-repeat-{i}".encode(), f"value-{i}-{'v' * 20}".encode())
                        for i in range(o.indexed_headers)]
            if o.table_reset_every and self.ordinals[sid] % o.table_reset_every == 0:
                encoder = self.conn.encoder
                limit = self.conn.remote_settings.header_table_size
                encoder.header_table_size = 0         # empties the dynamic table ...
                encoder.header_table_size = limit     # ... and gives its room back
        trailers = [(b"grpc-status", o.grpc_status.encode())] if o.grpc_status else None
        self.conn.send_headers(sid, headers, end_stream=size == 0 and trailers is None)
        if size == 0:
            if trailers is not None:
                self.conn.send_headers(sid, trailers, end_stream=True)
            self.done(sid)
            return
        self.unsent[sid] = b"x" * size
        self.send_body(sid)

    def send_body(self, sid: int) -> None:
        conn, o = self.conn, self.o
        body = self.unsent[sid]
        try:
            while body:
                n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size,
                        len(body))
                if n <= 0:
                    self.unsent[sid] = body
                    return
                conn.send_data(sid, body[:n], end_stream=n == len(body) and not o.grpc_status)
                body = body[n:]
            if o.grpc_status:
                conn.send_headers(sid, [(b"grpc-status", o.grpc_status.encode())],
                                  end_stream=True)
        except h2.exceptions.ProtocolError:
            self.forget(sid)
            return
        del self.unsent[sid]
        self.done(sid)

    def done(self, sid: int) -> None:
        self.open.discard(sid)
        self.server.count("answered")
        if self.last_stream_id is not None:
            self.kept.discard(sid)
            if not self.kept:
                self.flush()
                self.close()
