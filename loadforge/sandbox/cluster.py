"""The sandbox cluster: load balancer, simulated backends, health checks, autoscaler, admin.

Everything runs in one asyncio loop. A backend is an object, not a server: the load balancer
picks one and hands it the client connection, and the backend's capacity model (concurrency
slots, a bounded queue, a service-time distribution) decides when the response is written.
There is no second TCP hop, so the sandbox spends its CPU on the client side of the socket only;
the load generator runs on the machine's other core and must not be starved by its target.

HTTP/1.1 is parsed by hand and only as far as a target needs to: request line, headers up to the
blank line, a Content-Length body (discarded), keep-alive and `Connection: close`. Responses are
pre-encoded per backend; a request costs one `find`, a few slices and one `transport.write`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import selectors
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

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


Handler = Callable[["HTTPConnection", bytes, bytes, bytes, bool], None]


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
        # ip_hash: every client of the sandbox is 127.0.0.1, so hashing the address alone would
        # send all traffic to one backend; the source port is hashed too, which makes the
        # stickiness per connection rather than per client host.
        peer = transport.get_extra_info("peername")
        if peer:
            self.hash_key = zlib.crc32(f"{peer[0]}:{peer[1]}".encode())

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


class _Job:
    __slots__ = ("responder", "close", "handle")

    def __init__(self, responder: Responder, close: bool) -> None:
        self.responder = responder
        self.close = close
        self.handle: asyncio.TimerHandle | None = None


class Backend:
    """A simulated backend: `concurrency` requests served at once, `queue` more waiting.

    Busy slots and queue length are integrated over time so that the autoscaler sees the
    average over its evaluation window, not a sample of one instant.
    """

    def __init__(self, cluster: Cluster, name: str, weight: int, cfg: dict[str, Any]) -> None:
        self.cluster = cluster
        self.loop = cluster.loop
        self.name = name
        self.weight = weight
        self.state = "starting"          # starting -> ready -> draining -> (removed)
        self.dead = False                # killed through admin: refuses connections
        self.failing = False             # answers 500 and fails health checks
        self.healthy = True              # the health checker's verdict
        self.concurrency: int = cfg["concurrency"]
        self.queue_limit: int = cfg["queue"]
        self.busy = 0
        self.waiting: deque[tuple[Responder, bool, float]] = deque()
        self.active: set[_Job] = set()
        self.requests = 0
        self.rejected = 0
        self.failed = 0
        self.ok_streak = 0
        self.fail_streak = 0
        self.created = time.time()
        served_by = f"X-Served-By: {name}\r\n"
        self.ok = encode_response("200 OK", b"ok\n", extra=served_by)
        self.unavailable = encode_response("503 Service Unavailable", b"queue full\n",
                                           extra=served_by)
        self.error = encode_response("500 Internal Server Error", b"failing\n", extra=served_by)
        self.sample = _sampler(cfg)
        now = self.loop.time()
        self._t = now
        self._window_start = now
        self._busy_area = 0.0
        self._inflight_area = 0.0

    @property
    def inflight(self) -> int:
        return self.busy + len(self.waiting)

    def _mark(self) -> None:
        now = self.loop.time()
        dt = now - self._t
        if dt > 0:
            self._busy_area += self.busy * dt
            self._inflight_area += (self.busy + len(self.waiting)) * dt
            self._t = now

    def take_window(self) -> tuple[float, float]:
        """(utilization, mean in-flight) since the previous call; starts a new window."""
        self._mark()
        elapsed = self._t - self._window_start
        if elapsed <= 0:
            result = (self.busy / self.concurrency, float(self.inflight))
        else:
            result = (self._busy_area / elapsed / self.concurrency, self._inflight_area / elapsed)
        self._busy_area = self._inflight_area = 0.0
        self._window_start = self._t
        return result

    def submit(self, responder: Responder, close: bool, service: float | None) -> None:
        if self.dead:
            self.failed += 1
            responder.respond(BAD_GATEWAY, close)
            return
        if self.failing:
            self.failed += 1
            responder.respond(self.error, close)
            return
        if service is None:
            sample = self.sample
            if sample is None:
                # Zero service time: infinite capacity, no timer, no bookkeeping.
                responder.respond(self.ok, close)
                return
            service = sample()
        if self.busy < self.concurrency:
            self._mark()
            self.busy += 1
            self._start(responder, close, service)
        elif len(self.waiting) < self.queue_limit:
            self._mark()
            self.waiting.append((responder, close, service))
        else:
            self.rejected += 1
            responder.respond(self.unavailable, close)

    def _start(self, responder: Responder, close: bool, service: float) -> None:
        job = _Job(responder, close)
        job.handle = self.loop.call_later(service, self._finish, job)
        self.active.add(job)

    def _finish(self, job: _Job) -> None:
        self.active.discard(job)
        self._mark()
        # Free the slot before answering: the answer may let the same connection send its next
        # request, which must see this backend's capacity as it now is.
        if self.waiting:
            self._start(*self.waiting.popleft())
        else:
            self.busy -= 1
        job.responder.respond(self.ok, job.close)
        if self.state == "draining" and not self.busy:
            self.cluster.forget(self)

    def kill(self) -> None:
        """Die: requests in service or waiting get 502, as their connections would be reset."""
        self.dead = True
        self._mark()
        jobs = [(job.responder, job.close) for job in self.active]
        for job in self.active:
            if job.handle is not None:
                job.handle.cancel()
        jobs += [(responder, close) for responder, close, _ in self.waiting]
        self.active.clear()
        self.waiting.clear()
        self.busy = 0
        for responder, close in jobs:
            self.failed += 1
            responder.respond(BAD_GATEWAY, close)
        if self.state == "draining":
            self.cluster.forget(self)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weight": self.weight,
            "state": self.state,
            "alive": not self.dead,
            "failing": self.failing,
            "healthy": self.healthy,
            "in_rotation": self in self.cluster.rotation,
            "busy": self.busy,
            "queued": len(self.waiting),
            "inflight": self.inflight,
            "concurrency": self.concurrency,
            "queue": self.queue_limit,
            "requests": self.requests,
            "rejected": self.rejected,
            "failed": self.failed,
        }


def _sampler(cfg: dict[str, Any]) -> Callable[[], float] | None:
    mean = float(cfg["service_time"])
    if mean <= 0:
        return None
    rng = random.Random()
    distribution = cfg["distribution"]
    if distribution == "exponential":
        rate = 1.0 / mean
        return lambda: rng.expovariate(rate)
    if distribution == "lognormal":
        sigma = float(cfg["sigma"])
        # Choose mu so that the distribution's mean, exp(mu + sigma^2 / 2), is the configured one.
        mu = math.log(mean) - sigma * sigma / 2
        return lambda: rng.lognormvariate(mu, sigma)
    return lambda: mean


class _Probe:
    """One health check of one backend: a request through its capacity model, with a timeout."""

    __slots__ = ("cluster", "backend", "done", "timer")

    def __init__(self, cluster: Cluster, backend: Backend, timeout: float) -> None:
        self.cluster = cluster
        self.backend = backend
        self.done = False
        self.timer = cluster.loop.call_later(timeout, self.expire)

    def respond(self, response: Response, close: bool) -> None:
        if not self.done:
            self.done = True
            self.timer.cancel()
            self.cluster.health_result(self.backend, response is self.backend.ok)

    def expire(self) -> None:
        if not self.done:
            self.done = True
            self.cluster.health_result(self.backend, False)


def _smooth_weighted_cycle(backends: list[Backend]) -> list[Backend]:
    """One cycle of nginx's smooth weighted round-robin, precomputed: weights 5,1,1 give
    a a b a c a a instead of a a a a a b c."""
    total = sum(b.weight for b in backends)
    current = [0] * len(backends)
    cycle = []
    for _ in range(total):
        for i, b in enumerate(backends):
            current[i] += b.weight
        best = max(range(len(backends)), key=current.__getitem__)
        current[best] -= total
        cycle.append(backends[best])
    return cycle


class Cluster:
    """The load balancer's pool and everything that changes it."""

    def __init__(
        self,
        cfg: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.loop = loop
        self.on_event = on_event
        self.algorithm: str = cfg["algorithm"]
        self.backends: list[Backend] = []
        self.rotation: list[Backend] = []
        self._ids = itertools.count(1)
        self._cursor = 0
        self._cycle: list[Backend] = []
        self._rng = random.Random()
        self.pick: Callable[[HTTPConnection], Backend] = {
            "round_robin": self._pick_round_robin,
            "weighted_round_robin": self._pick_weighted,
            "least_connections": self._pick_least_connections,
            "random": self._pick_random,
            "ip_hash": self._pick_ip_hash,
        }[self.algorithm]
        self.utilization = 0.0
        self.inflight_mean = 0.0
        self.scale_events = {"out": 0, "in": 0}
        self.events: deque[dict[str, Any]] = deque(maxlen=100)
        self._started = loop.time()
        self._above_since: float | None = None
        self._below_since: float | None = None
        self._last_scale = -math.inf
        self._tasks: list[asyncio.Task[None]] = []
        # The initial pool is recorded in `events` but not announced: the caller prints a
        # summary once the ports are bound.
        self.on_event = None
        for weight in cfg["weights"]:
            self.add_backend(weight, delay=0.0)
        self.on_event = on_event

    # -- pool -------------------------------------------------------------------------------

    def event(self, text: str) -> None:
        self.events.append({"t": round(self.loop.time() - self._started, 3), "event": text})
        if self.on_event is not None:
            self.on_event(text)

    def add_backend(self, weight: int = 1, delay: float | None = None) -> Backend:
        if delay is None:
            autoscale = self.cfg["autoscale"]
            delay = autoscale["startup_delay"] if autoscale else 0.0
        backend = Backend(self, f"backend-{next(self._ids)}", weight, self.cfg["backend"])
        self.backends.append(backend)
        if delay > 0:
            self.loop.call_later(delay, self._ready, backend)
        else:
            self._ready(backend)
        return backend

    def _ready(self, backend: Backend) -> None:
        if backend.state != "starting" or backend not in self.backends:
            return
        backend.state = "ready"
        backend.take_window()
        self.rebuild_rotation()
        self.event(f"{backend.name} ready")

    def find(self, name: str) -> Backend | None:
        for backend in self.backends:
            if backend.name == name:
                return backend
        return None

    def drain(self, backend: Backend) -> None:
        """Take a backend out of rotation; it leaves once its in-flight requests are answered."""
        if backend.state == "draining":
            return
        backend.state = "draining"
        self.rebuild_rotation()
        self.event(f"{backend.name} draining")
        if not backend.busy:
            self.forget(backend)

    def forget(self, backend: Backend) -> None:
        if backend in self.backends:
            self.backends.remove(backend)
            self.event(f"{backend.name} removed")

    def rebuild_rotation(self) -> None:
        self.rotation = [b for b in self.backends if b.state == "ready" and b.healthy]
        self._cycle = _smooth_weighted_cycle(self.rotation)
        self._cursor = 0

    @property
    def active_count(self) -> int:
        """Backends that count towards autoscale min/max: starting or ready, not draining."""
        return sum(1 for b in self.backends if b.state != "draining")

    # -- load balancing (the hot path) ------------------------------------------------------

    def route(
        self, conn: HTTPConnection, method: bytes, target: bytes, body: bytes, close: bool
    ) -> None:
        if target == b"/healthz":
            conn.respond(LB_HEALTHY, close)
            return
        if not self.rotation:
            conn.respond(NO_BACKEND, close)
            return
        service = None
        if target.startswith(b"/slow?"):
            service = _slow_ms(target)
        backend = self.pick(conn)
        backend.requests += 1
        backend.submit(conn, close, service)

    def _pick_round_robin(self, conn: HTTPConnection) -> Backend:
        rotation = self.rotation
        i = self._cursor
        if i >= len(rotation):
            i = 0
        self._cursor = i + 1
        return rotation[i]

    def _pick_weighted(self, conn: HTTPConnection) -> Backend:
        cycle = self._cycle
        i = self._cursor
        if i >= len(cycle):
            i = 0
        self._cursor = i + 1
        return cycle[i]

    def _pick_least_connections(self, conn: HTTPConnection) -> Backend:
        rotation = self.rotation
        n = len(rotation)
        # Start the scan one further each time so that ties (all idle) are spread round-robin.
        start = self._cursor = (self._cursor + 1) % n
        best = rotation[start]
        best_load = best.busy + len(best.waiting)
        for i in range(1, n):
            if not best_load:
                break
            candidate = rotation[(start + i) % n]
            load = candidate.busy + len(candidate.waiting)
            if load < best_load:
                best, best_load = candidate, load
        return best

    def _pick_random(self, conn: HTTPConnection) -> Backend:
        return self._rng.choice(self.rotation)

    def _pick_ip_hash(self, conn: HTTPConnection) -> Backend:
        # Modulo the current pool, like nginx's ip_hash: a pool change remaps most clients.
        return self.rotation[conn.hash_key % len(self.rotation)]

    # -- health checks ----------------------------------------------------------------------

    def check_health(self) -> None:
        timeout = self.cfg["health"]["timeout"]
        for backend in list(self.backends):
            if backend.state != "ready":
                continue
            if backend.dead or backend.failing:
                # Refused connection or a 500: known at once, no need to go through the queue.
                self.health_result(backend, False)
            else:
                backend.submit(_Probe(self, backend, timeout), False, None)

    def health_result(self, backend: Backend, ok: bool) -> None:
        if backend.state != "ready":
            return
        health = self.cfg["health"]
        if ok:
            backend.fail_streak = 0
            backend.ok_streak += 1
            if not backend.healthy and backend.ok_streak >= health["healthy_threshold"]:
                backend.healthy = True
                backend.take_window()
                self.rebuild_rotation()
                self.event(f"{backend.name} healthy, back in rotation")
        else:
            backend.ok_streak = 0
            backend.fail_streak += 1
            if backend.healthy and backend.fail_streak >= health["unhealthy_threshold"]:
                backend.healthy = False
                self.rebuild_rotation()
                self.event(f"{backend.name} unhealthy, out of rotation "
                           f"after {backend.fail_streak} failed checks")

    # -- autoscaling ------------------------------------------------------------------------

    def evaluate(self) -> None:
        """Close the measurement window; scale out or in if the policy says so."""
        now = self.loop.time()
        windows = {b: b.take_window() for b in self.backends}
        if not self.rotation:
            return
        self.utilization = sum(windows[b][0] for b in self.rotation) / len(self.rotation)
        self.inflight_mean = sum(windows[b][1] for b in self.rotation) / len(self.rotation)
        policy = self.cfg["autoscale"]
        if not policy or not policy["enabled"]:
            return
        value = self.utilization if policy["metric"] == "utilization" else self.inflight_mean
        metric = policy["metric"]
        count = self.active_count
        if value > policy["threshold"]:
            self._below_since = None
            if self._above_since is None:
                self._above_since = now
            if (now - self._above_since >= policy["for"]
                    and now - self._last_scale >= policy["cooldown"] and count < policy["max"]):
                added = [self.add_backend() for _ in range(min(policy["step"], policy["max"] - count))]
                self._last_scale = now
                self._above_since = None
                self.scale_events["out"] += 1
                self.event(f"scale out: {metric} {value:.2f} > {policy['threshold']}, adding "
                           + ", ".join(b.name for b in added))
            return
        self._above_since = None
        scale_in = policy["scale_in"]
        if not scale_in["enabled"] or value >= scale_in["threshold"]:
            self._below_since = None
            return
        if self._below_since is None:
            self._below_since = now
        if (now - self._below_since >= scale_in["for"]
                and now - self._last_scale >= policy["cooldown"] and count > policy["min"]):
            victims = [b for b in self.backends if b.state != "draining"][::-1]
            victims = victims[:min(scale_in["step"], count - policy["min"])]
            self._last_scale = now
            self._below_since = None
            self.scale_events["in"] += 1
            self.event(f"scale in: {metric} {value:.2f} < {scale_in['threshold']}, removing "
                       + ", ".join(b.name for b in victims))
            for backend in victims:
                self.drain(backend)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        health = self.cfg["health"]
        if health["enabled"]:
            self._tasks.append(self.loop.create_task(self._every(health["interval"],
                                                                 self.check_health)))
        autoscale = self.cfg["autoscale"]
        interval = autoscale["evaluation_interval"] if autoscale else 1.0
        self._tasks.append(self.loop.create_task(self._every(interval, self.evaluate)))

    async def _every(self, interval: float, action: Callable[[], None]) -> None:
        # Ticks on a fixed grid, so a slow tick does not push the following ones back.
        next_at = self.loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - self.loop.time()))
            next_at += interval
            action()

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    # -- admin and metrics ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "backends": [b.describe() for b in self.backends],
            "count": self.active_count,
            "ready": len(self.rotation),
            "utilization": round(self.utilization, 4),
            "inflight_mean": round(self.inflight_mean, 4),
            "scale_events": dict(self.scale_events),
            "events": list(self.events),
        }

    def metrics(self) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{labels} {_number(value)}")

        per = [(f'{{backend="{b.name}"}}', b) for b in self.backends]
        family("sandbox_backends", "gauge",
               "Backends in the cluster, starting or ready (draining ones excluded).",
               [("", self.active_count)])
        family("sandbox_backends_ready", "gauge", "Backends in the load balancer's rotation.",
               [("", len(self.rotation))])
        family("sandbox_utilization", "gauge",
               "Busy slots / concurrency, averaged over the last evaluation window and the "
               "backends in rotation.", [("", self.utilization)])
        family("sandbox_inflight_mean", "gauge",
               "Requests in service or queued per backend in rotation, averaged over the last "
               "evaluation window.", [("", self.inflight_mean)])
        family("sandbox_requests_total", "counter",
               "Requests the load balancer routed to a backend.", [(lb, b.requests) for lb, b in per])
        family("sandbox_inflight", "gauge", "Requests in service or queued at a backend now.",
               [(lb, b.inflight) for lb, b in per])
        family("sandbox_rejected_total", "counter",
               "Requests answered 503 because the backend's queue was full.",
               [(lb, b.rejected) for lb, b in per])
        family("sandbox_failed_total", "counter",
               "Requests answered 502 (backend dead) or 500 (backend failing).",
               [(lb, b.failed) for lb, b in per])
        family("sandbox_backend_up", "gauge", "1 if the backend is in rotation, else 0.",
               [(lb, 1 if b in self.rotation else 0) for lb, b in per])
        family("sandbox_scale_events_total", "counter", "Autoscaler actions.",
               [(f'{{direction="{d}"}}', n) for d, n in self.scale_events.items()])
        return "\n".join(lines) + "\n"

    def admin(
        self, conn: HTTPConnection, method: bytes, target: bytes, body: bytes, close: bool
    ) -> None:
        path, _, query = target.decode("latin-1").partition("?")
        parts = [p for p in path.split("/") if p]
        verb = method.decode("latin-1")
        status = "404 Not Found"
        payload: dict[str, Any] = {"error": f"no route {path}"}
        if verb == "GET" and path == "/metrics":
            text = self.metrics().encode()
            conn.respond(encode_response("200 OK", text, "text/plain; version=0.0.4"), close)
            return
        if verb == "GET" and path in ("/healthz", "/"):
            conn.respond(LB_HEALTHY, close)
            return
        if parts[:2] == ["admin", "state"] and len(parts) == 2:
            status, payload = ("200 OK", self.state()) if verb == "GET" else _not_allowed(verb)
        elif parts[:2] == ["admin", "backends"] and len(parts) == 2:
            if verb == "GET":
                status, payload = "200 OK", {"backends": [b.describe() for b in self.backends]}
            elif verb == "POST":
                weight = _weight(query, body)
                if weight is None:
                    status, payload = "400 Bad Request", {"error": "weight must be 1..1000"}
                else:
                    added = self.add_backend(weight)
                    self.event(f"{added.name} added through admin")
                    status, payload = "201 Created", added.describe()
            else:
                status, payload = _not_allowed(verb)
        elif parts[:2] == ["admin", "backends"] and len(parts) == 4:
            backend = self.find(parts[2])
            action = parts[3]
            if backend is None:
                payload = {"error": f"no backend {parts[2]}"}
            elif verb != "POST":
                status, payload = _not_allowed(verb)
            elif action in ("kill", "revive", "fail", "remove"):
                if action == "kill":
                    backend.kill()
                elif action == "fail":
                    backend.failing = True
                elif action == "revive":
                    backend.dead = backend.failing = False
                else:
                    self.drain(backend)
                self.event(f"{backend.name}: {action} through admin")
                status, payload = "200 OK", backend.describe()
            else:
                payload = {"error": f"unknown action {action} (kill, revive, fail, remove)"}
        data = (json.dumps(payload) + "\n").encode()
        conn.respond(encode_response(status, data, "application/json"), close)


def _not_allowed(verb: str) -> tuple[str, dict[str, Any]]:
    return "405 Method Not Allowed", {"error": f"method {verb} not allowed"}


def _weight(query: str, body: bytes) -> int | None:
    weight: object = 1
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key == "weight":
            weight = int(value) if value.isdigit() else None
    if body.strip():
        try:
            weight = json.loads(body).get("weight", weight)
        except (ValueError, AttributeError):
            return None
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 1000:
        return None
    return weight


def _slow_ms(target: bytes) -> float | None:
    for item in target[6:].split(b"&"):
        if item.startswith(b"ms="):
            try:
                ms = float(item[3:])
            except ValueError:
                return None
            if math.isfinite(ms) and 0 <= ms <= 600_000:
                return ms / 1000.0
    return None


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(round(value, 6))


class _NearestMillisecondSelector(selectors.DefaultSelector):
    """epoll waits in whole milliseconds and Python rounds the timeout up, so a 2 ms service
    time came out as 2 to 3 ms (measured: 2.9 ms mean). Rounding to the nearest millisecond
    instead, with timers allowed to fire up to 0.5 ms early (new_event_loop), centres the
    error on zero: within +-0.5 ms, without spinning."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0:
            # Just under a whole millisecond, so that the selector's ceiling keeps it there.
            timeout = max(0.0, round(timeout * 1000) / 1000 - 1e-6)
        return super().select(timeout)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The sandbox's loop: a selector loop whose timers are accurate to about +-0.5 ms."""
    loop = asyncio.SelectorEventLoop(_NearestMillisecondSelector())
    # Timers due within this much of now run now (BaseEventLoop._run_once). A private attribute,
    # present since Python 3.4; if it ever goes, timers are simply up to 1 ms late again.
    if hasattr(loop, "_clock_resolution"):
        loop._clock_resolution = 0.0005
    return loop


async def serve(
    cfg: dict[str, Any],
    port: int,
    admin_port: int,
    stop: asyncio.Event,
    on_ready: Callable[[int, int], None],
    on_event: Callable[[str], None] | None = None,
) -> None:
    """Run the cluster on 127.0.0.1 until `stop` is set; `on_ready(port, admin_port)` once bound."""
    loop = asyncio.get_running_loop()
    cluster = Cluster(cfg, loop, on_event)
    lb = await loop.create_server(
        lambda: HTTPConnection(cluster.route), "127.0.0.1", port, backlog=4096
    )
    admin = await loop.create_server(
        lambda: HTTPConnection(cluster.admin), "127.0.0.1", admin_port, backlog=128
    )
    cluster.start()
    try:
        on_ready(lb.sockets[0].getsockname()[1], admin.sockets[0].getsockname()[1])
        await stop.wait()
    finally:
        cluster.stop()
        lb.close()
        admin.close()
