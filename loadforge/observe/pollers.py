"""Observers of a run besides the engine's own numbers: metrics polled during the run, and
backend attribution read back from the results.

`[observe]` in a profile (every key optional)::

    [observe]
    backend_header = "X-Served-By"   # attribute responses to backends by this header
    window = "1s"                    # windows of the scaling verdicts (scaling.py)
    replicas = "backends_ready"      # the metric counting backends, for the scale-out timeline
    prometheus = { name = "replicas", url = "http://127.0.0.1:9090",
                   query = 'count(up{job="api"} == 1)' }      # or an array of such tables
    metrics = [{ name = "backends", url = "http://127.0.0.1:9100/metrics",
                 metric = "sandbox_backends_ready", labels = { pool = "a" } }]
    command = [{ name = "pods", run = "kubectl get pods -l app=api --no-headers | wc -l",
                 timeout = "2s" }]

Every source is polled once per interval, each in its own thread (a slow source delays only
itself), with a short timeout. A poll that fails, times out or does not yield a number is
recorded as a missing value: a flaky metrics endpoint never stops a load test. The samples
are stored with the results as rows of scope `metric` (`name` = the metric's name, `start_ms`
= when the poll started, `value`, null when missing).

With `target = "sandbox"` the sandbox's own metrics are observed without configuration:
`backends`, `backends_ready` and `utilization`, and responses are attributed by `X-Served-By`.
"""

from __future__ import annotations

import math
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from loadforge.config.observe import DEFAULT_HTTP_TIMEOUT_S, Source
from loadforge.config.plan import Plan
from loadforge.errors import InputError

if TYPE_CHECKING:
    # httpx costs start-up CPU before the first request: imported where a poll needs it.
    import httpx

# Sandbox metric -> the name its samples are stored under.
SANDBOX_METRICS = (("backends", "sandbox_backends"), ("backends_ready", "sandbox_backends_ready"),
                   ("utilization", "sandbox_utilization"))
SANDBOX_BACKEND_HEADER = "X-Served-By"
# Metric names that count backends, in order of preference, for the scale-out timeline.
REPLICA_METRICS = ("backends_ready", "replicas", "backends", "pods")

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


# -- reading one value -----------------------------------------------------------------------

def parse_exposition(text: str, metric: str, labels: dict[str, str] | None = None
                     ) -> float | None:
    """The sum of the samples of `metric` whose labels include `labels`, from Prometheus
    text exposition; None when no sample matches."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(metric):
            continue
        m = _SAMPLE.match(line)
        if m is None or m.group(1) != metric:
            continue
        if labels:
            have = dict(_LABEL.findall(m.group(3) or ""))
            if any(have.get(k) != v for k, v in labels.items()):
                continue
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        if math.isnan(value):
            continue
        total += value
        found = True
    return total if found else None


def _client(url: str, timeout: float) -> httpx.Client:
    import httpx

    # Loopback calls must not be diverted by proxy settings from the environment.
    host = urlsplit(url).hostname or ""
    local = host in ("127.0.0.1", "localhost", "::1")
    return httpx.Client(timeout=timeout, trust_env=not local)


def _poll_scalar(source: Source, client: httpx.Client) -> float | None:
    body = client.get(source.url.rstrip("/") + "/api/v1/query",
                      params={"query": source.query}).raise_for_status().json()
    data = body.get("data") or {}
    # An instant query answers a vector (summed here) or a scalar.
    if data.get("resultType") in ("scalar", "string"):
        return float(data["result"][1])
    return _vector_sum(data.get("result"))


def _vector_sum(result: Any) -> float | None:
    if not isinstance(result, list) or not result:
        return None
    return sum(float(r["value"][1]) for r in result)


def _poll_metrics(source: Source, client: httpx.Client) -> float | None:
    text = client.get(source.url).raise_for_status().text
    return parse_exposition(text, source.metric, source.labels)


def _poll_command(source: Source, commands: Any = None) -> float | None:
    from loadforge.observe.actions import run_shell

    done = run_shell(source.run, source.timeout_s, commands)
    if done.returncode != 0:
        return None
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return float(lines[-1].split()[0]) if lines else None


def poll_once(source: Source, client: httpx.Client | None = None,
              commands: Any = None) -> float | None:
    """One value of a source; None for any failure (network, status, parse, timeout).
    commands: the run's actions.ShellCommands, which ends a command source with the run."""
    import httpx

    try:
        if source.kind == "command":
            return _poll_command(source, commands)
        own = client is None
        client = client or _client(source.url, source.timeout_s)
        try:
            if source.kind == "prometheus":
                return _poll_scalar(source, client)
            return _poll_metrics(source, client)
        finally:
            if own:
                client.close()
    except (httpx.HTTPError, subprocess.SubprocessError, OSError, ValueError, KeyError,
            TypeError, IndexError):
        return None


# -- polling during a run --------------------------------------------------------------------

@dataclass
class Sample:
    name: str
    at_ms: int
    value: float | None


class Watchers:
    """The metric pollers and the timed actions of one run.

    Built before the workers start (so that a profile asking for what the target cannot do
    fails before any load is sent), started at the run's time zero, stopped after the last
    interval; `stop()` returns the rows to store (scopes `metric` and `action`).
    """

    def __init__(self, plan: Plan, interval_s: float, sandbox: Any = None):
        from loadforge.observe import actions

        require_sandbox(plan, sandbox)
        self.plan = plan
        self.interval_s = interval_s
        self.sources = list(plan.observe.sources)
        if sandbox is not None:
            taken = {s.name for s in self.sources}
            for name, metric in SANDBOX_METRICS:
                if name not in taken:
                    self.sources.append(Source("metrics", name, DEFAULT_HTTP_TIMEOUT_S,
                                               url=sandbox.metrics_url, metric=metric))
        # Shell commands (observers and actions) are killed when the run ends.
        self.commands = actions.ShellCommands()
        self.actions = actions.ActionRunner(list(plan.actions), sandbox, self.commands)
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.t0_ns = 0

    def start(self, t0_ns: int) -> None:
        """Start at `t0_ns`, the run's time zero on the monotonic clock."""
        self.t0_ns = t0_ns
        for source in self.sources:
            thread = threading.Thread(target=self._poll, args=(source,), daemon=True,
                                      name=f"observe-{source.name}")
            thread.start()
            self._threads.append(thread)
        self.actions.start(t0_ns, self._stop)

    def _poll(self, source: Source) -> None:
        client = None if source.kind == "command" else _client(source.url,
                                                                   source.timeout_s)
        try:
            k = 0
            while True:
                # Polls at the middle of each interval, on the run's clock.
                due_ns = self.t0_ns + int((k + 0.5) * self.interval_s * 1e9)
                wait_s = (due_ns - time.monotonic_ns()) / 1e9
                if self._stop.wait(max(0.0, wait_s)):
                    return
                at_ms = (time.monotonic_ns() - self.t0_ns) // 1_000_000
                value = poll_once(source, client, self.commands)
                if self._stop.is_set():
                    return      # cut short by the run's end: no sample
                with self._lock:
                    self.samples.append(Sample(source.name, int(at_ms), value))
                k = max(k + 1, int((time.monotonic_ns() - self.t0_ns) / 1e9 / self.interval_s))
        finally:
            if client is not None:
                client.close()

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self.commands.end()
        for thread in self._threads:
            thread.join(timeout=5.0)
        rows = [self._metric_row(s) for s in sorted(self.samples, key=lambda s: s.at_ms)]
        return rows + self.actions.stop(self.stage_at)

    def stage_at(self, at_ms: float) -> str:
        t = 0.0
        for stage in self.plan.stages:
            t += stage.duration_s
            if at_ms < t * 1000:
                return stage.name
        return self.plan.stages[-1].name

    def _metric_row(self, sample: Sample) -> dict[str, Any]:
        return {"scope": "metric", "stage": self.stage_at(sample.at_ms), "name": sample.name,
                "outcome": "*" if sample.value is not None else "missing", "backend": "*",
                "start_ms": sample.at_ms, "end_ms": sample.at_ms,
                "count": 0 if sample.value is None else 1, "value": sample.value}


def backend_header(plan: Plan, given: str | None, sandbox: Any) -> str | None:
    """The header that attributes responses: the flag, else [observe], else the sandbox's."""
    if given:
        return given
    header = plan.observe.backend_header
    if header:
        return str(header)
    return SANDBOX_BACKEND_HEADER if sandbox is not None else None


def require_sandbox(plan: Plan, sandbox: Any) -> None:
    if sandbox is None and any(a.kind == "sandbox" for a in plan.actions):
        raise InputError("actions: a sandbox action needs target = \"sandbox\" "
                         "(the target is another server)")


__all__ = ["Watchers", "backend_header", "parse_exposition", "poll_once"]
