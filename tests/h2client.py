"""A small blocking HTTP/2 client on the `h2` library, for tests that must see frames.

It records every frame it receives (parsed with `hyperframe`, the same bytes it feeds `h2`), the
events `h2` makes of them, and each stream's response, so a test can check what a server sent
on the wire: CONTINUATION frames, HPACK table-size updates, RST_STREAM codes, GOAWAY's last
stream id, PINGs, SETTINGS changes. Request bodies larger than the server's windows wait for
WINDOW_UPDATE; response data is acknowledged as it arrives (`auto_ack`), which opens windows.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import Frame, GoAwayFrame

FRAME_NAMES = {0: "DATA", 1: "HEADERS", 2: "PRIORITY", 3: "RST_STREAM", 4: "SETTINGS",
               5: "PUSH_PROMISE", 6: "PING", 7: "GOAWAY", 8: "WINDOW_UPDATE",
               9: "CONTINUATION"}


@dataclass
class Reply:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    ended: bool = False
    reset: int | None = None      # RST_STREAM error code from the server

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class H2Client:
    """One HTTP/2 connection to 127.0.0.1:`port` (h2c prior knowledge, or TLS with `ssl_context`).

    `settings` go in the client's first SETTINGS frame (say INITIAL_WINDOW_SIZE = 1).
    """

    def __init__(self, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 settings: dict[int, int] | None = None, auto_ack: bool = True,
                 timeout: float = 5.0) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.alpn: str | None = None
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname="localhost")
            self.alpn = sock.selected_alpn_protocol()
        self.sock = sock
        self.timeout = timeout
        self.auto_ack = auto_ack
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        if settings:
            values = dict(self.conn.local_settings.items())
            values.update(settings)
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=values)
        self.conn.initiate_connection()
        self.frames: list[Frame] = []
        self.events: list[h2.events.Event] = []
        self.replies: dict[int, Reply] = {}
        self.goaway: GoAwayFrame | None = None
        self.closed = False
        self.window_updates_sent = 0
        self._unsent: dict[int, bytes] = {}
        self._rbuf = b""
        self._flush()

    # -- requests ---------------------------------------------------------------------------

    def request(self, path: str = "/", method: str = "GET", body: bytes = b"",
                headers: list[tuple[bytes, bytes]] | None = None) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [
            (b":method", method.encode()), (b":scheme", b"http"),
            (b":authority", b"127.0.0.1"), (b":path", path.encode()),
            *(headers or []),
        ], end_stream=not body)
        self.replies[stream_id] = Reply()
        if body:
            self._unsent[stream_id] = body
            self._send_body(stream_id)
        self._flush()
        return stream_id

    def ping(self, data: bytes = b"clientpi") -> None:
        self.conn.ping(data)
        self._flush()

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self._flush()
        except (OSError, h2.exceptions.ProtocolError):
            pass
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- receiving --------------------------------------------------------------------------

    def run(self, until: Callable[[], bool], timeout: float | None = None) -> None:
        """Read and handle frames until `until()` holds; AssertionError after `timeout` s or
        if the server closes the connection first."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not until():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                raise AssertionError(
                    f"h2 client: condition not met ({'closed' if self.closed else 'timeout'}); "
                    f"replies {self.replies}"
                )
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                self.closed = True
                continue
            self._receive(data)

    def run_until_closed(self, timeout: float | None = None) -> None:
        try:
            self.run(lambda: self.closed, timeout)
        except AssertionError:
            if not self.closed:
                raise

    def done(self, *stream_ids: int) -> bool:
        return all(self.replies[s].ended or self.replies[s].reset is not None for s in stream_ids)

    def frame_types(self) -> list[str]:
        return [FRAME_NAMES.get(f.type or 0, str(f.type)) for f in self.frames]

    def _receive(self, data: bytes) -> None:
        self._rbuf += data
        buf = self._rbuf
        while len(buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
            if len(buf) < 9 + length:
                break
            raw, buf = buf[:9 + length], buf[9 + length:]
            frame.parse_body(memoryview(raw[9:]))
            self.frames.append(frame)
            if isinstance(frame, GoAwayFrame):
                # Kept from h2, which refuses every frame after a GOAWAY, while a server may
                # still answer the streams up to last_stream_id (RFC 9113 6.8).
                self.goaway = frame
                continue
            try:
                events = self.conn.receive_data(raw)
            except h2.exceptions.ProtocolError:
                self._flush()
                raise
            for event in events:
                self.events.append(event)
                self._event(event)
        self._rbuf = buf
        self._flush()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            assert event.stream_id is not None
            reply = self.replies[event.stream_id]
            reply.headers = [(bytes(k), bytes(v)) for k, v in event.headers or ()]
            reply.status = int(reply.header(b":status") or 0)
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None and event.data is not None
            self.replies[event.stream_id].body += event.data
            if self.auto_ack and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
                self.window_updates_sent += 1
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            self.replies[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            self.replies[event.stream_id].reset = int(event.error_code or 0)
            self._unsent.pop(event.stream_id, None)
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            for stream_id in list(self._unsent):
                self._send_body(stream_id)

    def _send_body(self, stream_id: int) -> None:
        conn = self.conn
        body = self._unsent[stream_id]
        while body:
            size = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size,
                       len(body))
            if size <= 0:
                self._unsent[stream_id] = body
                return
            conn.send_data(stream_id, body[:size], end_stream=size == len(body))
            body = body[size:]
        del self._unsent[stream_id]

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True
