"""A simulated backend's capacity model: concurrency slots, a bounded queue, service times.

A backend is an object, not a server: the load balancer hands it whoever waits for the answer
(a `Responder`), and the model decides when that answer comes, through timers of whatever loop
it is given. It knows no sockets, so the same model runs behind the sandbox's listener or in a
simulation driven by a virtual clock.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from loadforge.config.sandbox import BackendModel
from loadforge.sandbox.http import BAD_GATEWAY, Responder, encode_response


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """What the model needs of a loop: asyncio's loop has it, so can a simulated clock."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., object],
                   *args: Any) -> Cancellable: ...


class _Job:
    __slots__ = ("responder", "close", "handle")

    def __init__(self, responder: Responder, close: bool) -> None:
        self.responder = responder
        self.close = close
        self.handle: Cancellable | None = None


class Backend:
    """A simulated backend: `concurrency` requests served at once, `queue` more waiting.

    Busy slots and queue length are integrated over time so that the autoscaler sees the
    average over its evaluation window, not a sample of one instant.
    """

    def __init__(self, loop: Timers, name: str, weight: int, cfg: BackendModel,
                 on_drained: Callable[[Backend], None]) -> None:
        self.loop = loop
        self.on_drained = on_drained     # called once a draining backend has nothing in service
        self.name = name
        self.weight = weight
        self.state = "starting"          # starting -> ready -> draining -> (removed)
        self.dead = False                # killed through admin: refuses connections
        self.failing = False             # answers 500 and fails health checks
        self.healthy = True              # the health checker's verdict
        self.concurrency: int = cfg.concurrency
        self.queue_limit: int = cfg.queue
        self.busy = 0
        self.waiting: deque[tuple[Responder, bool, float]] = deque()
        self.active: set[_Job] = set()
        self.requests = 0
        self.rejected = 0
        self.failed = 0
        self.ok_streak = 0
        self.fail_streak = 0
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
        self._window_requests = 0
        # Requests per second over the last window (take_window), for an HPA's Pods metrics.
        self.window_rps = 0.0
        self.ready_since = now

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
        self.window_rps = (self.requests - self._window_requests) / elapsed if elapsed > 0 else 0.0
        self._window_requests = self.requests
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
            self.on_drained(self)

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
            self.on_drained(self)

    def describe(self, in_rotation: bool) -> dict[str, Any]:
        return {
            "name": self.name,
            "weight": self.weight,
            "state": self.state,
            "alive": not self.dead,
            "failing": self.failing,
            "healthy": self.healthy,
            "in_rotation": in_rotation,
            "busy": self.busy,
            "queued": len(self.waiting),
            "inflight": self.inflight,
            "concurrency": self.concurrency,
            "queue": self.queue_limit,
            "requests": self.requests,
            "rejected": self.rejected,
            "failed": self.failed,
        }


def _sampler(cfg: BackendModel) -> Callable[[], float] | None:
    mean = float(cfg.service_time_s)
    if mean <= 0:
        return None
    rng = random.Random()
    distribution = cfg.distribution
    if distribution == "exponential":
        rate = 1.0 / mean
        return lambda: rng.expovariate(rate)
    if distribution == "lognormal":
        sigma = float(cfg.sigma)
        # Choose mu so that the distribution's mean, exp(mu + sigma^2 / 2), is the configured one.
        mu = math.log(mean) - sigma * sigma / 2
        return lambda: rng.lognormvariate(mu, sigma)
    return lambda: mean
