"""The validated form of a profile: what the engine, the schedule and the reports work from.

`profile.py` builds a Plan from TOML, `cli.py` builds one from flags; nothing downstream reads
TOML. Times are in seconds (floats) here and turned into nanoseconds only at the engine's edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Outcomes of one arrival, in the order the engine numbers them. Status classes are responses,
# the rest are transport failures (no response).
OUTCOMES = ("1xx", "2xx", "3xx", "4xx", "5xx", "connect", "timeout", "reset", "protocol",
            "stream_reset", "goaway", "flow_control")
STATUS_OUTCOMES = OUTCOMES[:5]
DEFAULT_STREAMS = 100             # HTTP/2 streams per connection, as h2load -m 100
ERROR_KINDS = OUTCOMES[5:]
# Stream-level failures of HTTP/2: shown (summary, report) in HTTP/2 runs or when they happened.
HTTP2_ERROR_KINDS = OUTCOMES[9:]


@dataclass(frozen=True)
class Request:
    name: str
    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    weight: int = 1


@dataclass(frozen=True)
class Stage:
    """One stage of traffic.

    Open model: `rate_from`/`rate_to` in requests per second (equal for a steady stage or a
    spike, different for a linear ramp). Closed model: `concurrency` connections, each sending
    its next request `think_s` after the previous response.
    """

    name: str
    duration_s: float
    rate_from: float | None = None
    rate_to: float | None = None
    concurrency: int | None = None
    think_s: float = 0.0

    @property
    def open_model(self) -> bool:
        return self.concurrency is None


@dataclass(frozen=True)
class Plan:
    name: str
    target: str                       # URL, or "sandbox" for the embedded target
    stages: tuple[Stage, ...]
    requests: tuple[Request, ...]
    connections: int = 64             # upper bound on open connections, split across workers
    workers: int | None = None        # None: one per core
    timeout_s: float = 5.0            # per request
    # Response status classes that count as errors next to transport failures.
    fail_status: tuple[str, ...] = ("5xx",)
    # Open model: arrivals closer together than this share one timer wake-up, so each may be
    # sent up to this late (counted in its latency). 0 sends every arrival on its own wake-up.
    timer_resolution_s: float = 100e-6
    # Close each connection after this many responses (1: a new connection per request), so
    # a load balancer sees new connections spread as they would be; 0 reuses without end.
    requests_per_connection: int = 0
    # "1.1", or "2": HTTP/2 by prior knowledge over TCP (h2c); `streams` is the most concurrent
    # streams per connection, lowered further by the server's SETTINGS_MAX_CONCURRENT_STREAMS.
    http: str = "1.1"
    streams: int = DEFAULT_STREAMS
    # Raw, validated [slo] table; slo.py gives it meaning.
    slo: dict[str, Any] = field(default_factory=dict)
    # Raw [observe] and [[actions]] tables (scaling validation).
    observe: dict[str, Any] = field(default_factory=dict)
    actions: tuple[dict[str, Any], ...] = ()
    # Raw [sandbox] table: the embedded target's configuration.
    sandbox: dict[str, Any] = field(default_factory=dict)
    source: str = ""                  # the profile's text, archived with the results
    path: str = ""                    # where it came from, for messages

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.stages)
