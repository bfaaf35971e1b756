"""The sandbox cluster: the load balancer's pool, its algorithms, health checks, and the
autoscaler's policy applied to it, all in one asyncio loop.

The pieces it wires together live beside it: `http` (the server side of HTTP/1.1), `capacity`
(a backend's capacity model), `policy` (the autoscaler as a pure function) and `admin` (metrics
and faults on the admin port). There is no second TCP hop, so the sandbox spends its CPU on the
client side of the socket only; the load generator runs on the machine's other core and must
not be starved by its target.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import selectors
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from loadforge.config.hpa import HPASpec
from loadforge.config.sandbox import SandboxConfig
from loadforge.sandbox import admin
from loadforge.sandbox.capacity import Backend
from loadforge.sandbox.hpa import HPA, PodSample
from loadforge.sandbox.http import (
    LB_HEALTHY,
    NO_BACKEND,
    Client,
    HTTPConnection,
    Responder,
    Response,
)
from loadforge.sandbox.http2 import FirstBytes, H2Server
from loadforge.sandbox.policy import AutoscalePolicy, Autoscaler

# A backend ready for less than this (or half the sync period, if shorter) at a sync has no
# metric sample yet (the metrics pipeline has not scraped it): the HPA counts it as a pod with
# a missing metric.
HPA_MIN_SAMPLE_S = 1.0


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
        cfg: SandboxConfig,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.loop = loop
        self.on_event = on_event
        self.algorithm: str = cfg.algorithm
        self.backends: list[Backend] = []
        self.rotation: list[Backend] = []
        self._ids = itertools.count(1)
        self._cursor = 0
        self._cycle: list[Backend] = []
        self._rng = random.Random()
        # HTTP/2 only (route_stream): HTTP/1.1 is balanced per request whatever this says.
        self.pin = cfg.balance == "connection"
        self.pick: Callable[[Client], Backend] = {
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
        autoscale = cfg.autoscale
        self.hpa = (HPA(HPASpec.from_dict(autoscale.hpa))
                    if autoscale and autoscale.enabled and autoscale.hpa else None)
        self.autoscaler = (Autoscaler(AutoscalePolicy.from_config(autoscale))
                           if autoscale and autoscale.enabled and not autoscale.hpa_path
                           else None)
        self._tasks: list[asyncio.Task[None]] = []
        # The initial pool is recorded in `events` but not announced: the caller prints a
        # summary once the ports are bound.
        self.on_event = None
        for weight in cfg.weights:
            self.add_backend(weight, delay=0.0)
        self.on_event = on_event

    # -- pool -------------------------------------------------------------------------------

    def event(self, text: str) -> None:
        self.events.append({"t": round(self.loop.time() - self._started, 3), "event": text})
        if self.on_event is not None:
            self.on_event(text)

    def add_backend(self, weight: int = 1, delay: float | None = None) -> Backend:
        if delay is None:
            autoscale = self.cfg.autoscale
            delay = autoscale.startup_delay_s if autoscale else 0.0
        backend = Backend(self.loop, f"backend-{next(self._ids)}", weight, self.cfg.backend,
                          self.forget)
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
        backend.ready_since = self.loop.time()
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

    def route_stream(
        self, conn: H2Server, stream: Responder, method: bytes, target: bytes
    ) -> None:
        """One HTTP/2 stream, as `route` answers a request. With balance = "connection" every
        stream of a connection goes to the backend its first routed stream was given, as long
        as that backend stays in rotation (then the connection is pinned to a new pick, as an
        L4 balancer's client would reconnect); with "request", each stream is balanced."""
        if target == b"/healthz":
            stream.respond(LB_HEALTHY, False)
            return
        if not self.rotation:
            stream.respond(NO_BACKEND, False)
            return
        service = None
        if target.startswith(b"/slow?"):
            service = _slow_ms(target)
        if self.pin:
            backend = conn.backend
            if backend is None or backend.state != "ready" or not backend.healthy:
                backend = conn.backend = self.pick(conn)
        else:
            backend = self.pick(conn)
        backend.requests += 1
        backend.submit(stream, False, service)

    def _pick_round_robin(self, conn: Client) -> Backend:
        rotation = self.rotation
        i = self._cursor
        if i >= len(rotation):
            i = 0
        self._cursor = i + 1
        return rotation[i]

    def _pick_weighted(self, conn: Client) -> Backend:
        cycle = self._cycle
        i = self._cursor
        if i >= len(cycle):
            i = 0
        self._cursor = i + 1
        return cycle[i]

    def _pick_least_connections(self, conn: Client) -> Backend:
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

    def _pick_random(self, conn: Client) -> Backend:
        return self._rng.choice(self.rotation)

    def _pick_ip_hash(self, conn: Client) -> Backend:
        # Modulo the current pool, like nginx's ip_hash: a pool change remaps most clients.
        return self.rotation[conn.hash_key % len(self.rotation)]

    # -- health checks ----------------------------------------------------------------------

    def check_health(self) -> None:
        timeout = self.cfg.health.timeout_s
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
        health = self.cfg.health
        if ok:
            backend.fail_streak = 0
            backend.ok_streak += 1
            if not backend.healthy and backend.ok_streak >= health.healthy_threshold:
                backend.healthy = True
                backend.take_window()
                self.rebuild_rotation()
                self.event(f"{backend.name} healthy, back in rotation")
        else:
            backend.ok_streak = 0
            backend.fail_streak += 1
            if backend.healthy and backend.fail_streak >= health.unhealthy_threshold:
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
        if self.hpa is not None:
            self._step_hpa(now, windows)
            return
        if self.autoscaler is None:
            return
        metric = (self.utilization if self.autoscaler.policy.metric == "utilization"
                  else self.inflight_mean)
        decision = self.autoscaler.step(now, metric, self.active_count)
        if decision.action == "out":
            added = [self.add_backend() for _ in range(decision.count)]
            self.scale_events["out"] += 1
            self.event(f"scale out: {decision.reason}, adding "
                       + ", ".join(b.name for b in added))
        elif decision.action == "in":
            # The newest backends go first: the oldest have the warmest caches in real life.
            victims = [b for b in self.backends if b.state != "draining"][::-1][:decision.count]
            self.scale_events["in"] += 1
            self.event(f"scale in: {decision.reason}, removing "
                       + ", ".join(b.name for b in victims))
            for backend in victims:
                self.drain(backend)

    def _step_hpa(self, now: float, windows: dict[Backend, tuple[float, float]]) -> None:
        """One sync of the HorizontalPodAutoscaler: starting or unhealthy backends are pods not
        ready, a backend ready for less than HPA_MIN_SAMPLE_S one without a metric."""
        assert self.hpa is not None
        fresh = min(HPA_MIN_SAMPLE_S, self.hpa.spec.sync_period_s / 2)
        pods = []
        for b in self.backends:
            if b.state == "draining":
                continue
            if b.state != "ready" or not b.healthy or b.dead:
                pods.append(PodSample(False))
            elif now - b.ready_since < fresh:
                pods.append(PodSample(True))
            else:
                util, inflight = windows[b]
                pods.append(PodSample(True, utilization=min(util, 1.0), inflight=inflight,
                                      rps=b.window_rps))
        current = self.active_count
        decision = self.hpa.step(now, current, pods)
        if decision.desired > current:
            added = [self.add_backend() for _ in range(decision.desired - current)]
            self.scale_events["out"] += 1
            self.event(f"scale out: HPA {decision.reason}, {current} -> {decision.desired}, "
                       "adding " + ", ".join(b.name for b in added))
        elif decision.desired < current:
            victims = [b for b in self.backends if b.state != "draining"][::-1]
            victims = victims[:current - decision.desired]
            self.scale_events["in"] += 1
            self.event(f"scale in: HPA {decision.reason}, {current} -> {decision.desired}, "
                       "removing " + ", ".join(b.name for b in victims))
            for backend in victims:
                self.drain(backend)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        health = self.cfg.health
        if health.enabled:
            self._tasks.append(self.loop.create_task(self._every(health.interval_s,
                                                                 self.check_health)))
        autoscale = self.cfg.autoscale
        interval = autoscale.evaluation_interval_s if autoscale else 1.0
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

    # -- state ------------------------------------------------------------------

    def describe(self, backend: Backend) -> dict[str, Any]:
        return backend.describe(in_rotation=backend in self.rotation)

    def state(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "backends": [self.describe(b) for b in self.backends],
            "count": self.active_count,
            "ready": len(self.rotation),
            "utilization": round(self.utilization, 4),
            "inflight_mean": round(self.inflight_mean, 4),
            "scale_events": dict(self.scale_events),
            "events": list(self.events),
        }


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
    cfg: SandboxConfig,
    port: int,
    admin_port: int,
    stop: asyncio.Event,
    on_ready: Callable[[int, int], None],
    on_event: Callable[[str], None] | None = None,
) -> None:
    """Run the cluster on 127.0.0.1 until `stop` is set; `on_ready(port, admin_port)` once bound."""
    loop = asyncio.get_running_loop()
    cluster = Cluster(cfg, loop, on_event)
    max_streams = cfg.max_concurrent_streams
    lb = await loop.create_server(
        lambda: FirstBytes(lambda: HTTPConnection(cluster.route),
                           lambda: H2Server(cluster.route_stream, max_streams)),
        "127.0.0.1", port, backlog=4096,
    )
    control = await loop.create_server(
        lambda: HTTPConnection(partial(admin.handle, cluster)), "127.0.0.1", admin_port,
        backlog=128,
    )
    cluster.start()
    try:
        on_ready(lb.sockets[0].getsockname()[1], control.sockets[0].getsockname()[1])
        await stop.wait()
    finally:
        cluster.stop()
        lb.close()
        control.close()
