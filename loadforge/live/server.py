"""The small HTTP server behind `--metrics` and `--dashboard`: one thread per client, daemon
threads so that nothing here can keep the process alive, bound before the run starts so a
taken port is an error before any load is sent.

Routes (whichever of the two flags is given on an address; both may share one):
`/metrics` (Prometheus), `/` (the dashboard page), `/events` (server-sent events: every event
of the runs so far, then each new one), `/state` (the current run's events as one JSON array).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from loadforge.errors import InputError

# A comment line on an idle event stream this often: a client that went away is noticed.
HEARTBEAT_S = 10.0


def parse_address(value: str, option: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """`[HOST:]PORT` (an IPv6 host in brackets: `[::1]:9464`) -> (host, port)."""
    host, port_text = default_host, value
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1:end + 2] != ":":
            raise InputError(f"{option} {value}: expected [HOST:]PORT, e.g. 9464, "
                             "127.0.0.1:9464 or [::1]:9464")
        host, port_text = value[1:end], value[end + 2:]
    elif ":" in value:
        host, _, port_text = value.rpartition(":")
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise InputError(f"{option} {value}: expected [HOST:]PORT with a port from 0 to 65535, "
                         "e.g. 9464 or 127.0.0.1:9464") from None
    if not host:
        raise InputError(f"{option} {value}: the host before ':' is empty")
    return host, port


class Routes:
    """What one listening address serves: set by LiveOutputs for the flags it carries."""

    def __init__(self) -> None:
        self.get: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        route = self.server.routes.get.get(path)
        if route is None:
            self.reply(404, "text/plain; charset=utf-8", b"not found\n")
            return
        try:
            route(self)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass     # the run's console is the user's: no access log on it


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], routes: Routes, family: int):
        self.address_family = family
        self.routes = routes
        super().__init__(address, _Handler)


class LiveServer:
    """Listens on (host, port) from construction (InputError naming `option` if it cannot)
    and serves `routes` from a thread of its own until `close()`."""

    def __init__(self, host: str, port: int, routes: Routes, option: str):
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                      flags=socket.AI_PASSIVE)
            family, _, _, _, sockaddr = info[0]
            self.server = _Server((str(sockaddr[0]), int(sockaddr[1])), routes, family)
        except (OSError, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise InputError(f"{option} {host}:{port}: cannot listen there ({reason})") from None
        self.routes = routes
        bound = self.server.server_address
        self.host, self.port = str(bound[0]), int(bound[1])
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.2},
                                       name=f"loadforge-live-{self.port}", daemon=True)
        self.thread.start()

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
