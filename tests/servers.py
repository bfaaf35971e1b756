"""Real servers on 127.0.0.1 for the engine's tests: nginx from Debian's package, and small
socket servers whose misbehaviour is the point (freezes, resets, garbage, silence)."""

from __future__ import annotations

import os
import shutil
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loadforge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The command line, as a user runs it, from the repository root."""
    return subprocess.run([sys.executable, "-m", "loadforge.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Polls `predicate` until it returns something true and returns that; an AssertionError
    naming `what` after `timeout` seconds. What the tests use instead of a fixed sleep."""
    limit = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > limit:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)


# /proc/net/tcp states in which the server's side of a connection may still have a request to
# log: ESTABLISHED (01) and CLOSE_WAIT (08, the client closed, the server has not yet seen it).
_OPEN_STATES = {"01", "08"}


def connections_to(port: int) -> int:
    """Connections whose server side on 127.0.0.1/::1:`port` is open (ESTABLISHED or
    CLOSE_WAIT), from /proc/net/tcp and tcp6."""
    suffix = f":{port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[1].endswith(suffix) and fields[3] in _OPEN_STATES:
                        count += 1
        except FileNotFoundError:
            continue
    return count


def wait_listening(port: int, timeout: float = 10.0) -> None:
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {dir}/access.log;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests {keepalive_requests};
  server {{
    listen 127.0.0.1:{port}{listen_options};
{tls}
    location / {{ return 200 "ok\\n"; }}
    location /chunked {{ chunked_transfer_encoding on; return 200 "chunk"; }}
    location /missing {{ return 404; }}
    location /fail {{ return 503; }}
    # keep-alive connections that the server ends: after 5 requests (with Connection: close
    # on the 5th response), or after 50 ms idle (a bare close between requests)
    location /ka5 {{ keepalive_requests 5; return 200 "ok\n"; }}
    location /idle {{ keepalive_timeout 50ms; return 200 "ok\n"; }}
    location /files/ {{ alias {dir}/files/; }}
  }}
}}
"""


LOGGING_NGINX_CONF = """{main}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  log_format lf escape=none '{log_format}';
  access_log {dir}/access.log lf;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port}{listen_options};
{plain}
{tls}
    location / {{ return 200 "ok\\n"; }}
{locations}
  }}
}}
"""


class LoggingNginx:
    """nginx logging chosen fields of each request, '|'-separated (log_format, e.g.
    '$request|$http_authorization|$request_body'), with the server's own `locations` (nginx
    directives, `{port}` filled in; braces doubled as in str.format) besides `location /`.
    tls and http2 as for Nginx; with either, `{port}` in `locations` is a second, plain
    HTTP/1.1 port of the same server (what proxy_pass speaks to). `main`: directives of the
    main context (`load_module ...;`)."""

    def __init__(self, log_format: str, locations: str, prefix: str = "lf-nginx-",
                 tls: str = "", http2: bool = False, main: str = "") -> None:
        self.fields = log_format.count("|") + 1
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            options = (" ssl" if tls else "") + (" http2" if http2 else "")
            plain = free_port() if options else self.port
            f.write(LOGGING_NGINX_CONF.format(
                dir=self.dir, port=self.port, listen_options=options, tls=tls,
                plain=f"    listen 127.0.0.1:{plain};" if options else "",
                log_format=log_format, locations=locations.format(port=plain), main=main))
        self.proc = subprocess.Popen([shutil.which("nginx") or "nginx", "-c", conf, "-e",
                                      os.path.join(self.dir, "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_listening(self.port)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def take(self) -> list[list[str]]:
        """The logged requests since the last call, one list of fields each; the preflight's
        GET / left out."""
        path = os.path.join(self.dir, "access.log")
        with open(path, "rb") as f:
            # nginx ends a line with \n only: a logged body may hold U+2028 or \x85, which
            # str.splitlines would also split on.
            lines = f.read().decode().split("\n")[:-1]
        open(path, "wb").close()
        os.kill(self.proc.pid, 10)          # SIGUSR1: reopen the log
        out = [line.split("|", self.fields - 1) for line in lines]
        return [r for r in out if not r[0].startswith("GET / ")]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Nginx:
    """nginx on a free port with its own access log, so a test can count what it served.

    tls: server directives (ssl_certificate, ...) that make it an https:// server.
    http2: the port speaks HTTP/2 only: h2c by prior knowledge without TLS (`listen ... http2`,
    nginx 1.22), h2 by ALPN with it. keepalive_requests: requests per connection (HTTP/2 too,
    where nginx then sends GOAWAY)."""

    def __init__(self, tls: str = "", http2: bool = False,
                 keepalive_requests: int = 1_000_000) -> None:
        self.dir = tempfile.mkdtemp(prefix="lf-nginx-")
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            options = (" ssl" if tls else "") + (" http2" if http2 else "")
            f.write(NGINX_CONF.format(dir=self.dir, port=self.port, listen_options=options,
                                      tls=tls, keepalive_requests=keepalive_requests))
        self.proc = subprocess.Popen([shutil.which("nginx") or "nginx", "-c", conf, "-e",
                                      os.path.join(self.dir, "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_listening(self.port)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def logged(self) -> int:
        """Lines in the access log now (for polling while a run is under way)."""
        with open(os.path.join(self.dir, "access.log"), "rb") as f:
            return sum(1 for _ in f)

    def served(self, timeout: float = 10.0) -> int:
        """Requests nginx logged, once it has logged them all. nginx logs a request right after
        sending its response, before it handles anything else on that connection, so once no
        connection to it is open (established, or closed by the client and not yet by nginx)
        every request it answered is in the log. A test that holds a connection open gets the
        count after `timeout` seconds."""
        limit = time.monotonic() + timeout
        while connections_to(self.port) and time.monotonic() < limit:
            time.sleep(0.01)
        return self.logged()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class _Handler(socketserver.BaseRequestHandler):
    server: CannedServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            _, _, buf = buf.partition(b"\r\n\r\n")
            with self.server.lock:
                self.server.requests += 1
            mode = self.server.mode
            if mode == "silent":
                time.sleep(30)
                return
            if mode == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if mode == "close-early":
                return
            delay = self.server.delay_for(time.monotonic())
            if delay > 0:
                time.sleep(delay)
            for part in self.server.parts:
                sock.sendall(part)
            if mode == "close":
                return


class OneConnectionServer:
    """Listens on 127.0.0.1 (a free port) and hands the first connection it accepts to
    `handle(conn)` in a thread of its own; `stopped` is set by stop(), which handle() waits on
    between its steps so that a test's end ends it. Subclasses say what the server does."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            try:
                self.handle(conn)
            except OSError:
                pass

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()


class CannedServer(socketserver.ThreadingTCPServer):
    """Answers every request with the same bytes, in `parts` (to split a response across
    reads), in one of the modes: keep-alive, close (after the response), close-early (close
    without answering), reset (RST without answering), silent (never answer).

    freeze=(after, length): from `after` seconds past the first request, for `length`
    seconds, hold every response until the freeze ends, like a stalled server."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, response: bytes | list[bytes], mode: str = "keep-alive",
                 freeze: tuple[float, float] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.parts = response if isinstance(response, list) else [response]
        self.mode = mode
        self.freeze = freeze
        self.first: float | None = None
        self.lock = threading.Lock()
        self.requests = 0
        self.port = self.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def delay_for(self, now: float) -> float:
        with self.lock:
            if self.first is None:
                self.first = now
        if self.freeze is None:
            return 0.0
        start = self.first + self.freeze[0]
        end = start + self.freeze[1]
        return end - now if start <= now < end else 0.0

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"

# A one-stage constant-rate profile with objectives, for tests of verdicts and archives;
# format with name, target, duration and slo (TOML lines of the [slo] table).
STEADY_PROFILE = """
name = "{name}"
target = "{target}"
[load]
connections = 8
workers = 1
[[stages]]
name = "steady"
rate = 200
duration = "{duration}"
[slo]
{slo}
"""


class _HTTPHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the body waits for the client's
    # delayed ACK of the headers (~40 ms), which would dwarf the delays the tests set.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
        if self.path.startswith("/fastfail"):
            # A failure that does not wait for the delay: errors faster than successes.
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        delay = getattr(self.server, "delay_s", 0.0)
        if delay:
            time.sleep(delay)
        status = 500 if self.path.startswith("/fail") else 200
        if self.path.startswith("/flaky"):
            # Every 10th request fails: errors in every interval, still mostly successes.
            with self.server.lock:  # type: ignore[attr-defined]
                self.server.served += 1  # type: ignore[attr-defined]
                status = 500 if self.server.served % 10 == 0 else 200  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a run opening its connections at once would
    # see SYNs dropped and retried a second later.
    request_queue_size = 256


@contextmanager
def http_server(delay_s: float = 0.0) -> Iterator[str]:
    server = _HTTPServer(("127.0.0.1", 0), _HTTPHandler)
    server.daemon_threads = True
    server.delay_s = delay_s  # type: ignore[attr-defined]
    server.lock = threading.Lock()  # type: ignore[attr-defined]
    server.served = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _RecordingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: RecordingServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.seen.append((self.command, self.path, dict(self.headers.items())))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = do_HEAD = _answer  # noqa: N815 -- http.server's naming

    def log_message(self, *args: Any) -> None:
        pass


class RecordingServer(ThreadingHTTPServer):
    """Answers 200 "ok" to everything and keeps each request's method, path and headers
    (`seen`), so a test can check what reached the server."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self) -> RecordingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
