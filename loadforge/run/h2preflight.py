"""The preflight request over HTTP/2 (h2c by prior knowledge), for `--http 2` runs: a target
such as nginx's `listen ... http2` without TLS answers nothing else. One blocking socket and
the `h2` library, once per run, outside the counts; the engine itself uses libnghttp2."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class H2PreflightError(OSError):
    """The target did not answer the preflight over HTTP/2."""


def h2_status(address: str, port: int, headers: list[tuple[str, str]],
              timeout_s: float,
              wrap: Callable[[socket.socket], socket.socket] | None = None,
              reset_answers: bool = False) -> int:
    """The status of one request (headers: pseudo-headers first), read to its end. wrap:
    turns the connected socket into a TLS one (h2 negotiated by ALPN); None for h2c.
    reset_answers: a stream reset before any status is an answer too (status 0), as grpcio
    resets the GET a gRPC run's unjudged preflight sends."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding="latin-1"))
    with socket.create_connection((address, port), timeout=timeout_s) as raw, \
            (wrap(raw) if wrap is not None else raw) as sock:
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers, end_stream=True)
        sock.sendall(conn.data_to_send())
        status = 0
        first = True
        # The whole exchange within timeout_s, not each read (a server that trickles a byte a
        # second would otherwise hold the preflight forever).
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the whole exchange took longer than the timeout")
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if first:
                    raise                   # not a byte: no answer at all
                raise TimeoutError("the whole exchange took longer than the timeout") from None
            if not data:
                raise H2PreflightError("the connection closed before a response (does the "
                                       "target speak HTTP/2 without TLS, h2c?)")
            if first and data.startswith(b"HTTP/"):
                # h2 would read "HTTP/1.1 ..." as a frame header of megabytes and wait for it.
                raise H2PreflightError("an HTTP/1.x answer to an HTTP/2 request: the port does "
                                       "not speak HTTP/2 (drop --http 2, or enable HTTP/2 on "
                                       "it)")
            first = False
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                # h2's message quotes the frame bytes received: noise in a one-line error.
                raise H2PreflightError("not an HTTP/2 answer to an HTTP/2 request: the port "
                                       "does not speak HTTP/2 (drop --http 2, or enable "
                                       "HTTP/2 on it)") from None
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    for name, value in event.headers or ():
                        if name in (b":status", ":status"):
                            status = int(value)
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                    return status
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
                    if reset_answers:
                        return status
                    raise H2PreflightError(f"the stream was reset ({event.error_code!r})")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise H2PreflightError(f"GOAWAY ({event.error_code!r})")
            pending = conn.data_to_send()
            if pending:
                sock.sendall(pending)
