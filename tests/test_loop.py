"""The engine's loop in one process: what wakes it, and when a response counts as received.

Each run is bounded (about a second, a few hundred requests) against a server on 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
from servers import http_server

from loadforge import _core
from loadforge.run.workers import IntervalReport, decode_interval, interval_message

GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def run_engine(url: str, stage: tuple, connections: int, *, timer_resolution_s: float = 0.0,
               interval_s: float = 1.0, on_first_interval=None,
               request: bytes = GET) -> tuple[_core.Engine, list[IntervalReport]]:
    parts = urlsplit(url)
    engine = _core.Engine(parts.hostname, parts.port, [(request, False)], [0], [stage],
                          connections, interval_s=interval_s,
                          timer_resolution_s=timer_resolution_s)
    reports: list[IntervalReport] = []

    def on_interval(payload: bytes, open_conns: int, in_flight: int) -> None:
        if not reports and on_first_interval is not None:
            on_first_interval()
        reports.append(decode_interval(interval_message(payload, open_conns, in_flight)))

    engine.run(_core.now_ns() + 50_000_000, on_interval)
    return engine, reports


def completed(reports: list[IntervalReport]) -> int:
    return sum(c.n for r in reports for c in r.cells)


def test_responses_do_not_wake_an_open_model_loop(nginx):
    """Open model, 1000 arrivals/s, 1 ms apart: the loop wakes for each arrival and reads the
    previous responses then. Waking for responses as well would take two wake-ups per request."""
    engine, reports = run_engine(nginx.url, (True, 1000.0, 1000.0, 1.0, 0, 0.0), 8)
    assert engine.receive_timestamps
    assert completed(reports) == 1000
    assert engine.wakeups < 1.3 * 1000, engine.wakeups


def test_requests_in_flight_do_not_wake_a_slow_open_model_loop(nginx):
    """40 arrivals/s, 25 ms apart, each answered long before the next: the loop wakes for the
    arrivals alone. Timeouts are looked for when one can be due (a timeout after a request
    began), not every 10 ms while a request is in flight: that was 2-3 wake-ups an arrival."""
    engine, reports = run_engine(nginx.url, (True, 40.0, 40.0, 1.0, 0, 0.0), 4)
    assert completed(reports) == 40
    assert engine.wakeups <= 40 * 1.3, engine.wakeups


def test_warm_opens_the_pool_before_time_zero(nginx):
    """warm() opens every connection of the pool before time zero is known (a worker's
    READY): the run then opens none, and the connects count once."""
    parts = urlsplit(nginx.url)
    engine = _core.Engine(parts.hostname, parts.port, [(GET, False)], [0],
                          [(True, 50.0, 50.0, 0.2, 0, 0.0)], 6)
    assert engine.warm(-1, 5.0) == 6
    reports: list[IntervalReport] = []
    engine.run(_core.now_ns() + 5_000_000, lambda p, o, f: reports.append(
        decode_interval(interval_message(p, o, f))))
    assert completed(reports) == 10
    assert sum(r.connects for r in reports) == 6
    assert sum(r.connect_failures for r in reports) == 0


def test_closed_model_loop_wakes_for_responses(nginx):
    """The closed model has no schedule to wait for: responses are what wake it, and each
    one sends the next request at once."""
    engine, reports = run_engine(nginx.url, (False, 0.0, 0.0, 0.5, 4, 0.0), 4)
    n = completed(reports)
    assert n > 100
    assert engine.wakeups >= n / 4 / 2


def test_responses_are_timed_when_they_arrive_not_when_read():
    """The loop is held up for 0.4 s (here by the interval callback) while a response is on
    its way; the server answers each request after 50 ms. Service time stays ~50 ms, because
    a response is timed by the kernel's receive timestamp, not by when it was read; the
    arrivals due during the hold-up are sent late and their latency shows it."""
    with http_server(delay_s=0.05) as url:
        # 20 arrivals/s: arrival 10 is due at 0.5 s, together with the interval's end, so it is
        # in flight while the callback holds the loop.
        engine, reports = run_engine(url, (True, 20.0, 20.0, 1.0, 0, 0.0), 16, interval_s=0.5,
                                     on_first_interval=lambda: time.sleep(0.4))
    cells = [c for r in reports for c in r.cells]
    assert sum(c.n for c in cells) == 20
    assert {c.outcome for c in cells} == {"2xx"}
    service_max = max(c.service.max_us for c in cells if c.n)
    latency_max = max(c.latency.max_us for c in cells if c.n)
    assert engine.receive_timestamps
    assert 50_000 <= service_max < 250_000, service_max
    assert latency_max >= 350_000, latency_max


def test_a_request_larger_than_the_socket_buffer_is_written_in_parts():
    """A 4 MB POST to a server that reads slowly through a small receive buffer: the engine
    writes what fits, waits for EPOLLOUT, writes on, and times the response as usual."""
    body = b"x" * (4 << 20)
    request = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
               % len(body)) + body
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    received: list[int] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while len(data) < len(request):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
                time.sleep(0.001)
            received.append(len(data))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.recv(1)     # until the engine closes its end

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        _, reports = run_engine(url, (True, 1.0, 1.0, 1.0, 0, 0.0), 1, request=request)
    finally:
        listener.close()
    cells = [c for r in reports for c in r.cells if c.n]
    assert received == [len(request)]
    assert [(c.outcome, c.n) for c in cells] == [("2xx", 1)]


def test_latencies_past_the_histogram_range_are_counted(nginx):
    """Arrivals due over an hour before they could be sent (time zero an hour ago): each is
    recorded at the top of the histograms' range (1 h) and counted as clamped, so the summary
    can say so (`clamped_samples`)."""
    parts = urlsplit(nginx.url)
    engine = _core.Engine(parts.hostname, parts.port, [(GET, False)], [0],
                          [(True, 5.0, 5.0, 1.0, 0, 0.0)], 8, interval_s=1000.0)
    reports: list[IntervalReport] = []
    engine.run(_core.now_ns() - 3_700 * 1_000_000_000, lambda p, o, f: reports.append(
        decode_interval(interval_message(p, o, f))), preconnect=0)
    cells = [c for r in reports for c in r.cells if c.n]
    assert sum(c.n for c in cells) == 5 and {c.outcome for c in cells} == {"2xx"}
    assert reports[-1].clamped == 5
    assert max(c.latency.max_us for c in cells) == 3_600_000_000


@pytest.mark.parametrize("fault", [1, 2, 3], ids=["add", "add-wake", "mod-connected"])
def test_a_socket_epoll_refuses_is_a_failed_connect(nginx, fault):
    """The kernel refuses to watch a connection's socket (ENOMEM, or fs.epoll.max_user_watches
    reached; made to happen here at the first connection's 1st, 2nd or 3rd epoll_ctl): its
    arrival ends at once as a failed connect, never as a timeout, and the others go on."""
    parts = urlsplit(nginx.url)
    engine = _core.Engine(parts.hostname, parts.port, [(GET, False)], [0],
                          [(True, 50.0, 50.0, 0.1, 0, 0.0)], 8, timeout_s=5.0,
                          fault_epoll=fault)
    reports: list[IntervalReport] = []
    engine.run(_core.now_ns() + 20_000_000, lambda p, o, f: reports.append(
        decode_interval(interval_message(p, o, f))), preconnect=0)
    counts: dict[str, int] = {}
    for c in (c for r in reports for c in r.cells):
        counts[c.outcome] = counts.get(c.outcome, 0) + c.n
    assert {k: v for k, v in counts.items() if v} == {"2xx": 4, "connect": 1}
    # The failed one, and one that carried the other four
    assert (reports[-1].connects, reports[-1].connect_failures) == (2, 1)


class _HoldingServer:
    """Reads one request on each of `n` connections, answers none until release(), then all
    at once: more ready sockets than one epoll wait used to hand back (512)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=n)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.released = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(self.n):
            conn, _ = self.sock.accept()
            conn.settimeout(10)
            conn.recv(4096)
            self.conns.append(conn)
        self.released.wait(10)
        for conn in self.conns:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            self.sent += 1

    def stop(self) -> None:
        self.released.set()
        self.sock.close()
        for c in self.conns:
            c.close()


def test_one_wait_hands_back_every_ready_connection():
    """600 responses ready at once: a single poll reads them all, so that no answered
    connection waits for a later wake-up (a quiet sleep would not look at it)."""
    n = 600
    server = _HoldingServer(n)
    engine = _core.FlowEngine("127.0.0.1", server.port, ["step"],
                              [(True, 10.0, 10.0, 10.0, 0, 0.0)], n, timeout_s=10.0)
    try:
        engine.start(_core.now_ns(), lambda p, o, f: None)
        now = _core.now_ns()
        for token in range(n):
            assert engine.submit(GET, False, 0, 0, now, now, token) == 0
        done: list = []
        while len(server.conns) < n:    # connects and writes need the loop
            done += engine.poll(1_000_000)[0]
        assert done == []
        server.released.set()
        while server.sent < n:
            time.sleep(0.001)
        done = engine.poll(0)[0]
        assert len(done) == n and {d[1] for d in done} == {1}    # all 2xx (outcome 1)
    finally:
        server.stop()
        engine.finish_run()
