'''The embedded default target: a load balancer in front of simulated backends.

`target = "sandbox"` in a profile starts it as a subprocess for the duration of a run
(`start_sandbox`); `loadforge sandbox` runs it in the foreground (`run_foreground`). It all
listens on 127.0.0.1 only, in one asyncio process: the load balancer on the public port, the
admin API and Prometheus metrics on a second port.

Configuration, the `[sandbox]` table of a profile (every key optional; defaults shown)::

    [sandbox]
    algorithm = "round_robin"    # weighted_round_robin, least_connections, random, ip_hash
    backends = 4                 # initial count (with [sandbox.autoscale]: 4 clamped to min..max)
    weights = [1, 1, 2, 1]       # one per initial backend; only with weighted_round_robin
    balance = "connection"       # HTTP/2: "connection" pins a connection's streams to one
                                 # backend; "request" balances each stream
    max_concurrent_streams = 100 # HTTP/2: SETTINGS_MAX_CONCURRENT_STREAMS, 1..100000

    [sandbox.backend]            # every backend alike
    service_time = "0s"          # mean; 0 answers at once, without timers (the fast path)
    distribution = "constant"    # exponential, lognormal
    sigma = 0.5                  # lognormal only: shape; the mean stays service_time
    concurrency = 64             # requests served at once
    queue = 1024                 # requests waiting beyond that; when full: 503 at once

    [sandbox.health]             # active checks of every ready backend
    enabled = true
    interval = "1s"
    timeout = "500ms"            # must be <= interval
    unhealthy_threshold = 2      # consecutive failures that take a backend out of rotation
    healthy_threshold = 2        # consecutive successes that put it back

    [sandbox.autoscale]          # present: autoscaling on (enabled = false turns it off)
    metric = "utilization"       # busy / concurrency, or "inflight" (in service + queued)
    threshold = 0.8              # scale out while metric > threshold ...
    for = "30s"                  # ... for this long
    step = 1                     # backends added per scale-out
    cooldown = "30s"             # after any scaling action, before the next
    min = 1
    max = 10
    startup_delay = "5s"         # a new backend takes traffic after this
    evaluation_interval = "1s"
    scale_in = { enabled = true, threshold = 0.4, for = "30s", step = 1 }
                                 # threshold defaults to half the scale-out threshold

Durations are strings with a unit: "250ms", "5s", "1m", "1h" (loadforge.units). Unknown keys,
wrong types, min > max and the like raise ProfileError naming the field. The validated form
(config/sandbox.py's SandboxConfig dataclasses: all keys, durations in seconds) is accepted
wherever the raw table is.

Behaviour worth knowing:

- The load balancer's port speaks HTTP/1.1 and HTTP/2 over cleartext with prior knowledge
  (h2c: the client starts with the `PRI * HTTP/2.0` preface; no Upgrade, no TLS). The first
  bytes of a connection decide; HTTP/1.1 then runs exactly as before. Every HTTP/2 stream is
  one request, routed like an HTTP/1.1 one and answered with the same status, body and
  `x-served-by` header (http2.py).
- `balance` applies to HTTP/2 only (HTTP/1.1 is balanced per request). "connection", what an
  L4 balancer (and most balancers in front of HTTP/2) does: a connection's first stream is
  balanced by `algorithm`, every later stream goes to the same backend, so a few multiplexed
  connections load a few backends however many there are. If that backend leaves rotation
  (unhealthy, draining), the connection's next stream picks a new one. "request", an L7
  balancer terminating HTTP/2: each stream is balanced on its own.

- Any path is answered `200 ok` through the capacity model, with `X-Served-By: backend-<n>`.
  `/healthz` is answered by the load balancer itself. `/slow?ms=N` is served with a service
  time of N ms instead of a sample from the distribution.
- Metrics are averaged over the evaluation window (time-weighted), over backends in rotation.
  With service_time 0 nothing is ever busy, so utilization stays 0: give the backends a service
  time to exercise the autoscaler.
- Health checks are requests through a backend's capacity model: a backend so overloaded that a
  check waits longer than `timeout` (or finds the queue full) fails it, as in real life.
- A backend killed through the admin API refuses connections; until the health checks take it
  out of rotation, requests routed to it are answered `502 Bad Gateway` by the load balancer,
  as nginx or HAProxy would, and so are those it was serving or queueing when it died.
  No backend in rotation: `503`.
- `ip_hash` hashes the client's address and source port: all clients are 127.0.0.1, so the
  address alone would send everything to one backend. Stickiness is therefore per connection;
  the hash is taken modulo the current pool, so a pool change remaps connections.
- Scale-in drains the newest backend: out of rotation at once, gone when its requests are done.

Admin API (on `admin_url`): `GET /admin/state` (JSON: backends, weights, ready, in-flight,
counts, recent events), `POST /admin/backends[?weight=N]` (adds one, answers its name),
`POST /admin/backends/<name>/kill|revive|fail|remove`, `GET /metrics` (Prometheus text:
sandbox_backends, sandbox_backends_ready, sandbox_utilization, sandbox_inflight_mean,
sandbox_requests_total, sandbox_inflight, sandbox_rejected_total, sandbox_failed_total,
sandbox_backend_up per backend, sandbox_scale_events_total).
'''

from loadforge.config.sandbox import (
    ALGORITHMS,
    DISTRIBUTIONS,
    METRICS,
    SandboxConfig,
    validate_sandbox_config,
)
from loadforge.sandbox.runner import Sandbox, main, run_foreground, start_sandbox

__all__ = [
    "ALGORITHMS",
    "DISTRIBUTIONS",
    "METRICS",
    "Sandbox",
    "SandboxConfig",
    "main",
    "run_foreground",
    "start_sandbox",
    "validate_sandbox_config",
]
