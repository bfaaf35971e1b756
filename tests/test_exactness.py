"""The engine stays exact, and alive, where ordinary servers and machines differ from nginx's
small keep-alive responses: connects that fail at once, answers that come before the request is
written, HTTP/1.0 and close-delimited bodies, keep-alive connections the server closes.

Each run is bounded (about a second, a few hundred requests) against a server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from servers import OK, ROOT, CannedServer, free_port, loadforge, wait_for

from loadforge.results.store import read_result


def run_json(tmp_path, *args: str, expect: int = 0, timeout: float = 60) -> dict:
    summary = tmp_path / "summary.json"
    out = loadforge("run", *args, "--quiet", "--out", str(tmp_path / "results"),
                    "--summary-json", str(summary), timeout=timeout)
    assert out.returncode == expect, out.stderr
    return json.loads(summary.read_text())


# -- connect failures: backoff, never recursion -----------------------------------------------

def test_closed_model_backs_off_from_a_refused_port(tmp_path):
    """Two closed-model users against a port nothing listens on, for 1 s: each user retries
    after 1, 2, 4, ... ms, so about ten attempts each, every one counted as a connect error
    (the run itself completes: exit 0, no objective failed)."""
    url = f"http://127.0.0.1:{free_port()}/"
    s = run_json(tmp_path, "--target", url, "--concurrency", "2", "--duration", "1s",
                 "--workers", "1", "--no-preflight")
    connect = s["errors_by_kind"]["connect"]
    assert 2 <= connect <= 30, s["errors_by_kind"]
    assert s["errors"] == connect and s["requests"] == 0
    # Each failed connect is one user's arrival's: the pool's warm-up, which failed before
    # the first arrival, is tried again by it and counted once.
    assert s["connections"]["failed"] == s["connections"]["opened"] == connect


def test_open_model_counts_each_failed_connect_once(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/"
    s = run_json(tmp_path, "--target", url, "--rate", "20", "--duration", "1s",
                 "--connections", "8", "--workers", "1", "--no-preflight")
    assert s["errors_by_kind"]["connect"] == 20 == s["scheduled"]
    assert s["connections"]["failed"] == s["connections"]["opened"] == 20


_FD_EXHAUSTED = r"""
import os, resource, struct, sys
from loadforge import _core
from loadforge.run.workers import decode_interval, interval_message

port = int(sys.argv[1])
engine = _core.Engine("127.0.0.1", port, [(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False)], [0],
                      [(False, 0.0, 0.0, 1.0, 2, 0.0)], 2)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
hold = []
try:
    while True:
        hold.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
counts = []
engine.run(_core.now_ns(), lambda p, o, f: counts.append(
    decode_interval(interval_message(p, o, f))))
for fd in hold:
    os.close(fd)
print(sum(c.n for r in counts for c in r.cells if c.outcome == "connect"))
"""


def test_closed_model_survives_connects_that_fail_at_once():
    """No file descriptor left: socket() fails inside the call that starts the request. The
    next request used to start from inside the failure's own handling, recursing until the
    stack overflowed; now the slot waits its backoff."""
    out = subprocess.run([sys.executable, "-c", _FD_EXHAUSTED, str(free_port())], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert 2 <= int(out.stdout) <= 30, out.stdout


# -- an answer before the request is written ---------------------------------------------------

class EarlyAnswerServer:
    """Answers 413 as soon as it has a request's head, before reading the body, then reads
    the body slowly (to its Content-Length) and serves the next request on the connection.
    Counts heads that are not a POST (a client that reused a half-written connection would
    splice its next request into the body) and bodies cut short by the client's close."""

    ANSWER = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.answered = 0
        self.bad_heads = 0
        self.cut_short = 0
        self.open = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._requests(conn)
        finally:
            with self.lock:
                self.open -= 1

    def wait_closed(self, timeout: float) -> None:
        """Until every connection is done with: a body cut short is known at its end."""
        limit = time.monotonic() + timeout
        while self.open and time.monotonic() < limit:
            time.sleep(0.05)

    def _requests(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buf = b""
        with conn:
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(4096)
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    with self.lock:
                        self.answered += 1
                        if not head.startswith(b"POST "):
                            self.bad_heads += 1
                    conn.sendall(self.ANSWER)
                    while len(buf) < length:
                        try:
                            data = conn.recv(65536)
                        except OSError:
                            data = b""
                        if not data:
                            with self.lock:
                                self.cut_short += 1
                            return
                        buf += data
                        time.sleep(0.001)
                    buf = buf[length:]
            except OSError:
                pass

    def stop(self) -> None:
        self.listener.close()


def test_an_early_answer_ends_the_request_and_the_connection(tmp_path):
    """An 8 MiB POST answered with 413 before its body is sent: the answer ends the request;
    a connection whose request was not yet fully written is closed, never reused, so no
    request is spliced into another's body."""
    server = EarlyAnswerServer()
    profile = tmp_path / "early.toml"
    profile.write_text(f"""
target = "{server.url}"
[load]
connections = 4
workers = 1
[[stages]]
name = "steady"
rate = 20
duration = "1s"
[[requests]]
name = "upload"
method = "POST"
path = "/"
body = '{"x" * (8 << 20)}'
""")
    try:
        s = run_json(tmp_path, str(profile), "--no-preflight")
        server.wait_closed(20)
    finally:
        server.stop()
    assert s["status"]["4xx"] == 20 == s["requests"] == s["scheduled"], s
    assert s["errors"] == 20                  # a 4xx is an error by default, as in k6 and Locust
    assert server.answered == 20 and server.bad_heads == 0
    # Requests answered before they were written whole: their connections were closed.
    assert server.cut_short >= 1


# -- HTTP/1.0, bodies to the close, keep-alive connections the server ends ---------------------

class _Http10Handler(BaseHTTPRequestHandler):
    # http.server's default: HTTP/1.0, one response per connection, then close.
    def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.answered += 1  # type: ignore[attr-defined]
        self.send_response(200)
        if not self.path.startswith("/to-close"):
            self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def http10_server() -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Http10Handler)
    server.request_queue_size = 256
    server.daemon_threads = True
    server.lock = threading.Lock()  # type: ignore[attr-defined]
    server.answered = 0  # type: ignore[attr-defined]
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("path", ["/", "/to-close"])
@pytest.mark.parametrize("model", [("--rate", "200"), ("--concurrency", "2")])
def test_http10_server_gives_no_false_errors(tmp_path, path, model):
    """Python's http.server speaks HTTP/1.0 and closes after every response, with or without
    a Content-Length: every request is a success, and as many as the server answered."""
    with http10_server() as server:
        s = run_json(tmp_path, "--target", server.url + path, *model, "--duration", "1s",
                     "--connections", "4", "--workers", "1", "--no-preflight")
        answered = server.answered
    assert s["errors"] == 0, s["errors_by_kind"]
    assert s["requests"] == s["status"]["2xx"] == answered > 0
    if model[0] == "--rate":
        assert s["requests"] == 200


@pytest.mark.parametrize("path", ["/ka5", "/idle"])
@pytest.mark.parametrize("model", [("--rate", "400"), ("--concurrency", "4")])
def test_keep_alive_connections_the_server_ends_give_no_false_errors(nginx, tmp_path, path,
                                                                     model):
    """nginx ends each connection after 5 requests (Connection: close on the 5th answer), or
    after 50 ms idle (a bare close, which may cross a request on its way): the counts are
    nginx's, with no error."""
    before = nginx.served()
    s = run_json(tmp_path, "--target", nginx.url + path, *model, "--duration", "1s",
                 "--connections", "4", "--workers", "1", "--no-preflight")
    assert s["errors"] == 0, s["errors_by_kind"]
    assert s["requests"] == s["status"]["2xx"] == nginx.served() - before > 0


# -- large responses ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [256 << 10, 2 << 20])
def test_large_responses_are_timed_by_the_server_not_the_loop(nginx, tmp_path, size):
    """A body larger than the socket buffers at a low rate: the server can send it only as
    fast as the client reads, so a loop that slept until the next arrival would have
    stretched each response to the arrival gap (100 ms here; p50 ~270 ms at 2 MiB before).
    Read to EAGAIN, with the loop woken by every in-progress response, it takes ~1 ms."""
    files = os.path.join(nginx.dir, "files")
    os.makedirs(files, exist_ok=True)
    with open(os.path.join(files, f"{size}.bin"), "wb") as f:
        f.write(b"x" * size)
    # nginx's workers run as an unprivileged user; mkdtemp made the directory 0700.
    for path in (nginx.dir, files):
        os.chmod(path, 0o755)
    os.chmod(os.path.join(files, f"{size}.bin"), 0o644)
    s = run_json(tmp_path, "--target", f"{nginx.url}/files/{size}.bin", "--rate", "10",
                 "--duration", "2s", "--connections", "4", "--workers", "1")
    assert s["requests"] == s["status"]["2xx"] == 20 and s["errors"] == 0
    # A generous bound (the loop's pace would be 50-100 ms); benchmarks/large_body.py
    # measures it against wrk and curl.
    assert s["latency_us"]["p50"] < 30_000, s["latency_us"]


# -- ends timed when the kernel saw them --------------------------------------------------------

@pytest.mark.parametrize(("mode", "response"), [
    ("close", b"HTTP/1.1 200 OK\r\n\r\nbody runs to the close"),
    ("close", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("reset", OK),
])
def test_ends_at_close_and_errors_are_timed_when_they_happen(tmp_path, mode, response):
    """At 10 arrivals/s the loop sleeps ~100 ms between them. A body that ends at the close,
    and a reset, used to be timed when the loop next woke (p50 ~10 ms at 100/s, more at
    10/s); they are timed by their last bytes' receive timestamp, or when the kernel
    reported them, which is within a few ms of the send."""
    server = CannedServer(response, mode=mode)
    try:
        s = run_json(tmp_path, "--target", server.url + "/", "--rate", "10", "--duration", "2s",
                     "--connections", "4", "--workers", "1", "--no-preflight")
    finally:
        server.stop()
    if mode == "reset":
        assert s["errors_by_kind"]["reset"] == 20 == s["errors"]
        (row,) = read_result(s["result"]).rows("run", name=None, outcome="reset")
        assert row["p50_us"] < 30_000, row
    else:
        assert s["status"]["2xx"] == 20 == s["requests"] and s["errors"] == 0
        assert s["latency_us"]["p50"] < 30_000, s["latency_us"]


# -- a slow coordinator ---------------------------------------------------------------------------

def test_interval_reports_never_wait_for_the_coordinator():
    """The worker's reports go through ReportSender: while the coordinator reads nothing,
    handing over 64 MiB of reports returns at once (a blocking send would stall after the
    socket buffer's few hundred KiB); the coordinator then gets them all, in order."""
    from loadforge.run.wire import Channel, ReportSender

    ours, theirs = socket.socketpair()
    worker_end, coordinator = Channel(ours.detach()), Channel(theirs.detach())
    sender = ReportSender(worker_end)
    messages = [bytes([i]) * (1 << 20) for i in range(64)]
    handing = threading.Thread(target=lambda: [sender.send(m) for m in messages], daemon=True)
    handing.start()
    handing.join(10)
    blocked = handing.is_alive()
    received = [coordinator.recv_bytes() for _ in messages]
    sender.close(timeout=10)
    assert not blocked, "handing a report over waited for the coordinator to read"
    assert received == messages


# -- connection churn -----------------------------------------------------------------------------

def test_one_request_per_connection(nginx, tmp_path):
    """--requests-per-connection 1: every request on a connection of its own, as a load
    balancer sees clients that do not reuse connections; nginx's counts, no error."""
    before = nginx.served()
    s = run_json(tmp_path, "--target", nginx.url + "/", "--rate", "200", "--duration", "1s",
                 "--connections", "8", "--workers", "1", "--no-preflight",
                 "--requests-per-connection", "1")
    assert s["requests"] == s["status"]["2xx"] == 200 == nginx.served() - before
    assert s["errors"] == 0
    conns = s["connections"]
    assert conns["opened"] == 200 == conns["closed_by_us"] and conns["closed_by_server"] == 0


def test_requests_per_connection_in_the_closed_model(nginx, tmp_path):
    profile = tmp_path / "churn.toml"
    profile.write_text(f"""
target = "{nginx.url}"
[load]
connections = 4
workers = 1
requests_per_connection = 5
[[stages]]
name = "closed"
concurrency = 4
duration = "500ms"
""")
    s = run_json(tmp_path, str(profile), "--no-preflight")
    n, closed = s["requests"], s["connections"]["closed_by_us"]
    assert n > 100 and s["errors"] == 0
    # Every connection closed after exactly 5 responses; at the end, up to 4 stay open with
    # fewer (none where the stage ended right after a fifth response, before a new one opened).
    assert 5 * closed <= n <= 5 * closed + 4 * 4
    assert closed <= s["connections"]["opened"] <= closed + 4
    assert s["connections"]["closed_by_server"] == 0


@pytest.mark.parametrize(("args", "message"), [
    (("--requests-per-connection", "-1"), "--requests-per-connection must be >= 0"),
])
def test_bad_requests_per_connection_exits_2(tmp_path, args, message):
    out = loadforge("run", "--target", "http://127.0.0.1:1/", "--rate", "5", "--duration", "1s",
                    *args, "--out", str(tmp_path))
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_bad_requests_per_connection_in_a_profile_exits_2(tmp_path):
    profile = tmp_path / "bad.toml"
    profile.write_text("""
target = "http://127.0.0.1:1"
[load]
requests_per_connection = -2
[[stages]]
rate = 5
duration = "1s"
""")
    out = loadforge("run", str(profile), "--out", str(tmp_path))
    assert out.returncode == 2, out.stderr
    assert "load.requests_per_connection" in out.stderr and "Traceback" not in out.stderr


# -- the pool before time zero ------------------------------------------------------------------

@pytest.mark.parametrize(("args", "opened"), [
    (("--rate", "20"), 8),                              # auto: one worker at 20/s
    (("--rate", "20", "--workers", "1"), 8),            # session.PRECONNECT_MIN
    (("--rate", "20", "--workers", "2"), 16),           # 8 each
    (("--rate", "300", "--workers", "1"), 30),          # 300/s x PRECONNECT_S (0.1 s)
    (("--concurrency", "3", "--workers", "1"), 3),      # one per closed-model user
])
def test_a_worker_opens_what_its_load_needs_not_its_whole_pool(nginx, tmp_path, args, opened):
    # Before time zero each worker opens what its share of the peak rate needs at a 100 ms
    # response time (at least 8), or one connection per closed-model user; nginx answers in
    # well under a millisecond, so the run needs no more: a pool of 64, `opened` of it used.
    s = run_json(tmp_path, "--target", nginx.url + "/", *args, "--duration", "0.5s",
                 "--connections", "64", "--no-preflight")
    assert s["errors"] == 0 and s["requests"] > 0
    assert s["connections"]["opened"] == s["connections"]["open_peak"] == opened
    if "--workers" not in args:
        assert s["workers"] == 1


class _CountingServer(CannedServer):
    accepted = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.accepted += 1
        super().process_request(request, client_address)


def test_arrivals_beyond_the_warm_pool_open_the_connections_they_need(tmp_path):
    # A server that holds every response for 0.4 s from its first request: at 60/s the
    # worker's 8 warm connections are soon all busy, and each arrival that finds none free opens
    # one (within the pool of 64) and waits for its connect, which its latency includes. Every
    # arrival is answered and counted once, and the connects are the ones the server accepted.
    server = _CountingServer(OK, freeze=(0.0, 0.4))
    s = run_json(tmp_path, "--target", server.url + "/", "--rate", "60", "--duration", "1s",
                 "--connections", "64", "--workers", "1", "--no-preflight")
    assert s["requests"] == s["status"]["2xx"] == 60 == server.requests and s["errors"] == 0
    c = s["connections"]
    assert 8 < c["opened"] == server.accepted <= 64 and c["failed"] == 0
    assert c["connect_time_us"]["count"] == c["opened"]


def test_connect_times_are_recorded_per_interval(nginx, tmp_path):
    # A new connection per request: every request pays a connect, and each connect's time is
    # counted once, in the interval it completed, on the stage's and the run's rows too.
    from loadforge.engine import histogram

    s = run_json(tmp_path, "--target", nginx.url + "/", "--rate", "100", "--duration", "2s",
                 "--connections", "8", "--requests-per-connection", "1", "--no-preflight")
    c = s["connections"]
    assert s["requests"] == 200 and c["failed"] == 0
    assert c["connect_time_us"]["count"] == c["opened"] >= 200
    assert 0 < c["connect_time_us"]["p50"] <= c["connect_time_us"]["p99"] < 1_000_000
    assert s["stages"][0]["connect_time_us"]["count"] == c["opened"]
    result = read_result(s["result"])
    merged = [r for r in result.rows("interval", stage=None, name="*", outcome="*")]
    per_interval = sum(histogram.decode(r["connect_hdr"]).total_count for r in merged
                       if r["connect_hdr"] is not None)
    (run_row,) = result.rows("run", stage=None, name="*", outcome="*")
    assert per_interval == histogram.decode(run_row["connect_hdr"]).total_count == c["opened"]


def test_a_late_coordinator_is_visible_and_costs_no_request(nginx, tmp_path):
    # The coordinator stopped for 2.5 s mid-run: the workers go on (their reports wait in a
    # queue), every arrival is still sent on time and answered, and the summary says how late
    # the reports were.
    import signal as sig

    summary = tmp_path / "s.json"
    before = nginx.served()
    proc = subprocess.Popen([sys.executable, "-m", "loadforge.cli", "run", "--target",
                             nginx.url + "/", "--rate", "200", "--duration", "5s",
                             "--workers", "1", "--no-preflight", "--out", str(tmp_path / "r"),
                             "--summary-json", str(summary)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # A second of the run answered, then the coordinator stopped for 2.5 s (the
        # behaviour under test, hence a sleep).
        wait_for(lambda: nginx.logged() >= before + 200 or proc.poll() is not None, 60,
                 "a second of load")
        proc.send_signal(sig.SIGSTOP)
        time.sleep(2.5)
        proc.send_signal(sig.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    s = json.loads(summary.read_text())
    assert s["requests"] == s["scheduled"] == 1000 and s["errors"] == 0 and s["unsent"] == 0
    assert s["report_lag_ms"] >= 1000
    assert "the coordinator was late" in out
