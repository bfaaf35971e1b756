"""The validated form of a profile: what the engine, the schedule and the reports work from.

`profile.py` builds a Plan from TOML, `cli/load.py` builds one from flags; nothing downstream reads
TOML. Times are in seconds (floats) here and turned into nanoseconds only at the engine's edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loadforge.config.outcomes import GRPC_CODES as GRPC_CODES
from loadforge.config.outcomes import GRPC_OUTCOMES as GRPC_OUTCOMES
from loadforge.config.outcomes import GRPC_PREFIX as GRPC_PREFIX
from loadforge.config.outcomes import OUTCOMES as OUTCOMES
from loadforge.config.outcomes import UNEXPECTED

# A plan's optional parts are read where they are written (profile.py) and used (observe/,
# sandbox/, the TLS transport): a run that has none does without their modules.
if TYPE_CHECKING:
    from loadforge.config.feeders import Feeder, Template
    from loadforge.config.observe import Action, Source
    from loadforge.config.sandbox import SandboxConfig
    from loadforge.config.tls import TLS

# Outcomes of one arrival, in the order the engine numbers them (config/outcomes.py, where a
# worker imports them from without the rest of the plan).
# Responses (they have a latency): status classes, gRPC codes, and a request's expect_status
# verdicts (config/outcomes.py: "unexpected" is an error, "expected" a success).
STATUS_OUTCOMES = OUTCOMES[:5] + GRPC_OUTCOMES + OUTCOMES[-2:]
DEFAULT_STREAMS = 100             # HTTP/2 streams per connection, as h2load -m 100
ERROR_KINDS = OUTCOMES[5:12]
# The kinds a summary's errors_by_kind lists: the transport failures, and responses outside a
# request's expect_status.
ERROR_KIND_NAMES = ERROR_KINDS + (UNEXPECTED,)
# Stream-level failures of HTTP/2: shown (summary, report) in HTTP/2 runs or when they happened.
HTTP2_ERROR_KINDS = OUTCOMES[9:12]
# The name prefix of a scripted flow's own rows ("flow:checkout"): named rows only, outside
# the totals and headline latency (which are the steps'); no [[requests]] name may take it.
FLOW_PREFIX = "flow:"
DEFAULT_WINDOW_S = 1.0            # [observe] window


@dataclass(frozen=True)
class Observe:
    """[observe] (validated by config/observe.py): how responses are attributed to backends,
    the scaling verdicts' window, the metric that counts backends, the sources polled."""

    backend_header: str | None = None
    window_s: float = DEFAULT_WINDOW_S
    replicas: str | None = None
    sources: tuple[Source, ...] = ()


@dataclass(frozen=True)
class Request:
    """One request of the profile: what is sent, and which statuses count as successes."""

    name: str
    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    weight: int = 1
    # The statuses that are successes for this request, whatever fail_status says; any other
    # status is the error outcome "unexpected" (config/outcomes.py). Empty: fail_status rules.
    expect_status: tuple[int, ...] = ()


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
class StageObjectives:
    """[[slo.stages]]: objectives of one stage, judged after its first `grace_s` seconds."""

    stage: str
    limits: dict[str, float]          # objective -> limit: seconds for latency, else a fraction
    grace_s: float = 0.0


@dataclass(frozen=True)
class WindowObjectives:
    """[[slo.windows]]: objectives over every sliding window of `window_s` seconds, within
    `stage` (else the whole run); the run stops once they have failed for `abort_after_s`."""

    window_s: float
    limits: dict[str, float]
    stage: str | None = None
    abort_after_s: float | None = None


@dataclass(frozen=True)
class ScalingObjectives:
    """time_to_recover and failover limits (seconds) of one stage, or of the run (stage None)."""

    limits: dict[str, float]
    stage: str | None = None


@dataclass(frozen=True)
class SLO:
    """The [slo] table, validated (profile.py's docstring gives each objective's meaning):
    analysis/slo.py judges `run`, `stages` and `windows`, analysis/scaling.py the scaling
    objectives. Empty: no objectives."""

    run: dict[str, float] = field(default_factory=dict)
    stages: tuple[StageObjectives, ...] = ()
    windows: tuple[WindowObjectives, ...] = ()
    scaling: tuple[ScalingObjectives, ...] = ()   # the run's (stage None) first, if any
    # `checks`: the least fraction of scripted flows' checks that pass, over the run
    checks: float | None = None

    def __bool__(self) -> bool:
        return bool(self.run or self.stages or self.windows or self.scaling
                    or self.checks is not None)

    @property
    def scaling_run(self) -> dict[str, float]:
        return next((s.limits for s in self.scaling if s.stage is None), {})


@dataclass(frozen=True)
class Plan:
    """A validated profile with the command line's overrides: everything a run needs."""

    name: str
    target: str                       # URL, or "sandbox" for the embedded target
    stages: tuple[Stage, ...]
    requests: tuple[Request, ...]
    connections: int = 64             # upper bound on open connections, split across workers
    workers: int | None = None        # None: "auto" (run/session.auto_workers)
    timeout_s: float = 5.0            # per request
    # Response status classes that count as errors next to transport failures.
    fail_status: tuple[str, ...] = ("4xx", "5xx")
    # Open model: arrivals closer together than this share one timer wake-up, so each may be
    # sent up to this late (counted in its latency). 0 sends every arrival on its own wake-up.
    timer_resolution_s: float = 200e-6
    # Close each connection after this many responses (1: a new connection per request), so
    # a load balancer sees new connections spread as they would be; 0 reuses without end.
    requests_per_connection: int = 0
    # After a reused connection closed without a byte of answer, send the request once more on
    # a new one: "idempotent" (GET, HEAD, OPTIONS, TRACE, PUT, DELETE, or a request carrying
    # Idempotency-Key, RFC 9110 9.2.2) or "never"; what is not sent again ends as `reset`.
    retry: str = "idempotent"
    # "1.1", or "2": HTTP/2 by prior knowledge over TCP (h2c); `streams` is the most concurrent
    # streams per connection, lowered further by the server's SETTINGS_MAX_CONCURRENT_STREAMS.
    http: str = "1.1"
    streams: int = DEFAULT_STREAMS
    tls: TLS | None = None            # [tls] of https:// targets (config/tls.py)
    slo: SLO = field(default_factory=SLO)
    # [observe] (metric sources, backend attribution) and [[actions]], in time order.
    observe: Observe = field(default_factory=Observe)
    actions: tuple[Action, ...] = ()
    # [sandbox], the embedded target's configuration; None: the profile has none (defaults).
    sandbox: SandboxConfig | None = None
    source: str = ""                  # the profile's text, archived with the results
    path: str = ""                    # where it came from, for messages
    # [[feeders]] and, when a request holds {feeder.column} slots, one feeders.Template or
    # None per request (config/feeders.py); values taken from the environment (redacted).
    feeders: tuple[Feeder, ...] = ()
    templates: tuple[Template | None, ...] = ()
    secrets: tuple[str, ...] = ()
    # [flows] module: scripted flows (loadforge/flows), the path resolved against the
    # profile's folder; None: the [[requests]] run. With flows, `requests` is one Request per
    # step name and per flow (flows/loader.py FlowModule.names), set when the run starts.
    flows: str | None = None

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.stages)
