"""`loadforge simulate`: a profile's arrival curve replayed against modelled replicas, scaled by
a Kubernetes HPA (sandbox/hpa.py, the same policy the sandbox runs), written as a result.

No socket is opened. Time advances in intervals (1 s); each interval:

- arrivals are the profile's schedule (schedule.expected_between: ramps and spikes as a run
  sends them);
- `ready` replicas serve them, each `replica_rps` per second over `slots` concurrent slots
  (service time = slots / replica_rps, its distribution the sandbox backend's, exponential by
  default);
- the queue is modelled in two regimes. While the replicas keep up (no backlog, arrival rate
  under capacity), waiting times are the stationary M/M/c (Erlang-C) distribution at that
  interval's rate: c = ready x slots servers, FIFO, one queue (a balancer spreading requests
  over replicas). Past capacity, what is not served waits as a fluid backlog carried from
  interval to interval, FIFO: a request waits for the backlog ahead of it to drain at the
  replicas' capacity; beyond `queue` waiting requests per replica, arrivals are answered 503
  at once (as the sandbox's backends do), and an answer later than the profile's timeout is
  a timeout;
- every sync period (15 s) the HPA sees each replica's utilization (served / capacity), mean
  in-flight and request rate over the period, starting replicas as not ready, and sets the
  replica count; new replicas become ready `startup` later.

Why this model: the replica count changes every 15 s and the arrival rate per stage, while a
request lasts milliseconds, so each interval is close to its own steady state (the pointwise
stationary approximation) and Erlang-C gives its tail exactly for exponential service, in
microseconds of CPU; a discrete-event simulation would cost a Python event per request (a 13-
minute profile at 10,000/s is 8 million) and the answer is wanted in seconds. Its stationary
assumption fails only in overload, which the fluid backlog covers (queueing then is the
backlog's, not the randomness').

The result has the run's Parquet schema (metadata `simulated = "true"`): interval, stage and
run rows with latency histograms, `replicas` and `backends_ready` metric rows, so SLO
verdicts, scaling verdicts, `compare` and `report` read it as they read a run.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from loadforge import limits
from loadforge.analysis import figures, scaling, slo
from loadforge.config.plan import Plan
from loadforge.config.redact import redact_profile
from loadforge.errors import InputError
from loadforge.results import histogram
from loadforge.results.store import ResultWriter, read_result
from loadforge.run.coordinator import RunInputs, RunOutcome, ScopeRun, new_run_id, run_target_rps
from loadforge.sandbox.hpa import HPA, HPASpec, PodSample
from loadforge.schedule import expected_between, layout

INTERVAL_S = 1.0
# Quantile points per interval: waits x service times. 16 x 16 keeps a 13-minute profile
# under a second of histogram work whatever the rate, and p99 within a point of the model's.
WAIT_POINTS = 16
SERVICE_POINTS = 16
MODEL = ("M/M/c Erlang-C per 1 s interval while below capacity; FIFO fluid backlog past it; "
         "HPA every sync period")


@dataclass(frozen=True)
class SimOptions:
    replica_rps: float               # requests per second one replica serves at 100 % busy
    policy: HPASpec | None = None    # None: the replica count stays at `replicas`
    replicas: int | None = None      # at time 0; default the HPA's minReplicas
    slots: int = 1                   # requests one replica serves at once
    queue: int = 1024                # requests waiting per replica beyond that: 503
    startup_s: float = 0.0           # a new replica serves this long after it is created
    distribution: str = "exponential"
    sigma: float = 0.5
    out_dir: str = "results"
    labels: dict[str, str] = field(default_factory=dict)


@lru_cache(maxsize=4096)
def erlang_c(servers: int, offered: float) -> float:
    """The probability that an arrival waits in an M/M/c queue: c servers, offered load
    a = lambda / mu (< c), through the Erlang-B recursion (stable for any c)."""
    if offered <= 0:
        return 0.0
    b = 1.0
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    rho = offered / servers
    return b / (1 - rho * (1 - b))


def _service_quantiles(mean: float, distribution: str, sigma: float) -> list[float]:
    ps = [(k + 0.5) / SERVICE_POINTS for k in range(SERVICE_POINTS)]
    if distribution == "constant":
        return [mean] * SERVICE_POINTS
    if distribution == "lognormal":
        from statistics import NormalDist

        mu = math.log(mean) - sigma * sigma / 2
        return [math.exp(mu + sigma * NormalDist().inv_cdf(p)) for p in ps]
    return [-mean * math.log(1 - p) for p in ps]


class _Pods:
    """The replicas: when each was created and when it is ready, newest last."""

    def __init__(self, count: int, startup_s: float) -> None:
        self.startup_s = startup_s
        self.ready_at = [0.0] * count

    def __len__(self) -> int:
        return len(self.ready_at)

    def ready(self, t: float) -> int:
        return sum(1 for r in self.ready_at if r <= t)

    def scale(self, t: float, desired: int) -> None:
        if desired > len(self.ready_at):
            self.ready_at += [t + self.startup_s] * (desired - len(self.ready_at))
        else:
            del self.ready_at[desired:]


@dataclass
class _Cell:
    """One interval's figures of the modelled service, what the HPA averages over a sync."""

    ready: int
    utilization: float
    inflight: float
    rps: float


class Simulation:
    def __init__(self, plan: Plan, opts: SimOptions) -> None:
        if any(not s.open_model for s in plan.stages):
            raise InputError("simulate: every stage must be open-model (rate = ...): a closed "
                             "model's arrivals depend on the answers, which is what is "
                             "being modelled")
        if not opts.replica_rps > 0 or not math.isfinite(opts.replica_rps):
            raise InputError(f"simulate: --replica-rps must be > 0, got {opts.replica_rps}")
        self.plan = plan
        self.opts = opts
        self.windows = layout(plan)
        self.service_s = opts.slots / opts.replica_rps
        self.service_q = _service_quantiles(self.service_s, opts.distribution, opts.sigma)
        policy = opts.policy
        start = opts.replicas if opts.replicas is not None else (
            policy.min_replicas if policy else 1)
        self.pods = _Pods(start, opts.startup_s)
        self.hpa = HPA(policy) if policy else None
        self.backlog = 0.0
        self.timeline: list[dict[str, Any]] = [{"t_s": 0.0, "replicas": start}]
        self.replica_seconds = 0.0
        self.decisions: list[dict[str, Any]] = []

    # -- one interval -------------------------------------------------------------------------

    def _waits(self, arrivals: int, ready: int) -> tuple[list[float], int, float]:
        """(waiting time at each of WAIT_POINTS quantiles, rejected arrivals, mean in
        service and waiting) for the interval's arrivals; updates the backlog."""
        capacity = ready * self.opts.replica_rps * INTERVAL_S
        rate = ready * self.opts.replica_rps
        servers = ready * self.opts.slots
        if self.backlog <= 0 and arrivals < capacity:
            lam = arrivals / INTERVAL_S
            mu = 1.0 / self.service_s
            offered = lam / mu
            prob = erlang_c(servers, round(offered, 3)) if arrivals else 0.0
            drain = servers * mu - lam
            waits = []
            for j in range(WAIT_POINTS):
                p = (j + 0.5) / WAIT_POINTS
                waits.append(0.0 if p <= 1 - prob else -math.log((1 - p) / prob) / drain)
            queued = prob * lam / drain if drain > 0 else 0.0     # Erlang-C's mean queue
            return waits, 0, offered + queued
        limit = ready * self.opts.queue
        start = self.backlog
        grow = arrivals - capacity
        end = start + grow
        rejected = 0
        if end > limit:
            rejected = int(round(end - limit))
            end = float(limit)
        end = max(0.0, end)
        waits = []
        for j in range(WAIT_POINTS):
            u = (j + 0.5) / WAIT_POINTS
            ahead = min(max(0.0, start + grow * u), float(limit))
            waits.append(ahead / rate if rate > 0 else math.inf)
        self.backlog = end
        busy = min(1.0, (arrivals + start) / capacity) if capacity else 0.0
        return waits, min(rejected, arrivals), busy * servers + (start + end) / 2

    def _record(self, arrivals: int, waits: list[float], rejected: int,
                cells: dict[str, list[Any]]) -> int:
        """Fill the outcome histograms of one interval; returns the responses that were
        successful (neither rejected nor timed out)."""
        timeout_us = self.plan.timeout_s * 1e6
        answered = arrivals - rejected
        per = answered / (WAIT_POINTS * SERVICE_POINTS)
        carry = 0.0
        ok = 0
        for w in waits:
            for s in self.service_q:
                carry += per
                n = int(carry)
                if not n:
                    continue
                carry -= n
                us = max(1, int((w + s) * 1e6))
                outcome = "2xx"
                if us > timeout_us:
                    outcome, us = "timeout", int(timeout_us)
                else:
                    ok += n
                cell = cells.get(outcome)
                if cell is None:
                    cell = cells[outcome] = [histogram.new_histogram(), 0]
                cell[0].record_value(min(us, histogram.HIGHEST_US), n)
                cell[1] += n
        if rejected:
            cells["5xx"] = [histogram.new_histogram(), rejected]
            cells["5xx"][0].record_value(1, rejected)
        return ok

    def run(self) -> tuple[list[dict[str, Any]], list[tuple[str, float, float]]]:
        """Every interval's rows, and (stage, start, end) of each stage."""
        plan = self.plan
        duration = plan.duration_s
        intervals = int(math.ceil(duration / INTERVAL_S - 1e-9))
        sync = self.hpa.spec.sync_period_s if self.hpa else math.inf
        next_sync = sync
        fresh = min(1.0, sync / 2)
        window: list[_Cell] = []
        rows: list[dict[str, Any]] = []
        done = 0.0       # arrivals scheduled so far (fractional), to hand out whole ones
        for i in range(intervals):
            t0, t1 = i * INTERVAL_S, min((i + 1) * INTERVAL_S, duration)
            while self.hpa is not None and next_sync <= t0 + 1e-9:
                self._sync(next_sync, window, fresh)
                window = []
                next_sync += sync
            due = done + expected_between(self.windows, t0, t1)
            arrivals = int(due) - int(done)
            done = due
            ready = self.pods.ready(t0)
            self.replica_seconds += len(self.pods) * (t1 - t0)
            cells: dict[str, list[Any]] = {}
            if ready == 0:
                rejected, inflight = arrivals, 0.0
                if arrivals:
                    cells["5xx"] = [histogram.new_histogram(), arrivals]
                    cells["5xx"][0].record_value(1, arrivals)
                served = 0
            else:
                waits, rejected, inflight = self._waits(arrivals, ready)
                self._record(arrivals, waits, rejected, cells)
                served = arrivals - rejected
            capacity = ready * self.opts.replica_rps * (t1 - t0)
            util = min(1.0, served / capacity) if capacity else 0.0
            if self.backlog > 0:
                util = 1.0
            window.append(_Cell(ready, util, inflight / ready if ready else 0.0,
                                served / (t1 - t0) / ready if ready else 0.0))
            stage = next(w for w in self.windows if w.start_s <= t0 < w.end_s or
                         w is self.windows[-1]).stage.name
            rows += self._interval_rows(stage, t0, t1, arrivals, cells)
            at_ms = int(t0 * 1000)
            for name, value in (("replicas", len(self.pods)), ("backends_ready", ready)):
                rows.append({"scope": "metric", "stage": stage, "name": name, "outcome": "*",
                             "backend": "*", "start_ms": at_ms, "end_ms": at_ms, "count": 1,
                             "value": float(value)})
        stages = [(w.stage.name, w.start_s, w.end_s) for w in self.windows]
        return rows, stages

    def _sync(self, t: float, window: list[_Cell], fresh: float) -> None:
        assert self.hpa is not None
        cells = [c for c in window if c.ready] or window[-1:]
        n = len(cells) or 1
        util = sum(c.utilization for c in cells) / n
        inflight = sum(c.inflight for c in cells) / n
        rps = sum(c.rps for c in cells) / n
        pods = []
        for ready_at in self.pods.ready_at:
            if ready_at > t:
                pods.append(PodSample(False))
            elif ready_at > t - fresh:
                pods.append(PodSample(True))
            else:
                pods.append(PodSample(True, utilization=util, inflight=inflight, rps=rps))
        current = len(self.pods)
        decision = self.hpa.step(t, current, pods)
        if decision.desired != current:
            self.pods.scale(t, decision.desired)
            self.timeline.append({"t_s": round(t, 3), "replicas": decision.desired})
            self.decisions.append({"t_s": round(t, 3), "from": current,
                                   "to": decision.desired, "reason": decision.reason,
                                   "limited_by": decision.limited_by})

    def _interval_rows(self, stage: str, t0: float, t1: float, arrivals: int,
                       cells: dict[str, list[Any]]) -> list[dict[str, Any]]:
        name = self.plan.requests[0].name
        s_ms, e_ms = int(t0 * 1000), int(t1 * 1000)
        rows = []
        total_lat = histogram.new_histogram()
        ok_lat = histogram.new_histogram()
        count = ok = 0
        for outcome, (lat, n) in sorted(cells.items()):
            rows.append(_row("interval", stage, name, outcome, s_ms, e_ms, n, lat))
            histogram.merge(total_lat, lat)
            count += n
            if outcome == "2xx":
                histogram.merge(ok_lat, lat)
                ok += n
        if cells:
            rows.append(_row("interval", stage, name, "ok", s_ms, e_ms, ok, ok_lat))
            rows.append(_row("interval", stage, "*", "ok", s_ms, e_ms, ok, ok_lat))
        star = _row("interval", stage, "*", "*", s_ms, e_ms, count, total_lat)
        star["scheduled"], star["unsent"] = arrivals, 0
        rows.append(star)
        return rows


def _row(scope: str, stage: str, name: str, outcome: str, start_ms: int, end_ms: int,
         count: int, lat: Any) -> dict[str, Any]:
    # The model has no client side: the service time is the latency.
    return {"scope": scope, "stage": stage, "name": name, "outcome": outcome, "backend": "*",
            "start_ms": start_ms, "end_ms": end_ms, "count": count, "latency": lat,
            "service": lat}


def _merged(rows: list[dict[str, Any]], stages: list[tuple[str, float, float]],
            duration_s: float) -> list[dict[str, Any]]:
    """Stage and run rows: the interval rows merged, as the coordinator's finish() does."""
    out = []
    spans = {name: (int(a * 1000), int(b * 1000)) for name, a, b in stages}
    spans["*"] = (0, int(duration_s * 1000))
    acc: dict[tuple[str, str, str, str], list[Any]] = {}
    for r in rows:
        if r["scope"] != "interval":
            continue
        for scope, stage in (("stage", r["stage"]), ("run", "*")):
            key = (scope, stage, r["name"], r["outcome"])
            a = acc.get(key)
            if a is None:
                a = acc[key] = [histogram.new_histogram(), 0, 0]
            histogram.merge(a[0], r["latency"])
            a[1] += r["count"]
            a[2] += r.get("scheduled") or 0
    for (scope, stage, name, outcome), (lat, count, scheduled) in acc.items():
        row = _row(scope, stage, name, outcome, *spans[stage], count, lat)
        if name == "*" and outcome == "*":
            row["scheduled"], row["unsent"] = scheduled, 0
        out.append(row)
    return out


def simulate(plan: Plan, opts: SimOptions) -> RunOutcome:
    """Model the run, write its result, judge it: a RunOutcome as runner.execute returns."""
    if plan.duration_s > limits.MAX_RUN_S:
        raise InputError(f"simulate: the profile lasts {plan.duration_s:g}s, more than "
                         f"{limits.MAX_RUN_S:g}s")
    sim = Simulation(plan, opts)
    started = time.time()
    interval_rows, stages = sim.run()
    final = _merged(interval_rows, stages, plan.duration_s)
    run_id = new_run_id(plan)
    path = os.path.join(opts.out_dir, f"{run_id}.parquet")
    policy = opts.policy
    metadata: dict[str, Any] = {
        "profile": redact_profile(plan.source, plan.secrets), "profile_name": plan.name,
        "profile_path": plan.path, "target": "simulate", "engine": "simulate",
        "simulated": "true", "model": MODEL,
        "simulation": {"replica_rps": opts.replica_rps, "slots": opts.slots,
                       "queue": opts.queue, "startup_s": opts.startup_s,
                       "distribution": opts.distribution,
                       "policy": policy.to_dict() if policy else None},
        "workers": "0", "connections": "0", "http": plan.http,
        "stages": [{"name": s.name, "duration_s": s.duration_s, "rate_from": s.rate_from,
                    "rate_to": s.rate_to, "concurrency": s.concurrency, "think_s": s.think_s}
                   for s in plan.stages],
        "interval_ms": str(int(INTERVAL_S * 1000)),
        "timer_resolution_us": "0",
    }
    with ResultWriter(path, run_id, metadata, opts.labels) as writer:
        writer.write(interval_rows)
        writer.write(final, last=True)
        writer.close({"interrupted": "false", "ran_s": f"{plan.duration_s:.3f}",
                      "complete": "true"})
    inputs = RunInputs(
        [ScopeRun(s.name, s.duration_s, _stage_target(s)) for s in plan.stages],
        ScopeRun("all", plan.duration_s, run_target_rps(plan)),
        {"opened": 0, "failed": 0, "open_peak": 0, "closed_by_server": 0, "closed_by_us": 0,
         "retried": 0}, {})
    summary = figures.summary_figures(final, plan.fail_status,
                                      [r.name for r in plan.requests[:1]], inputs)
    written = read_result(path)
    verdicts = slo.evaluate(plan, written) + scaling.annotate(summary, plan, written)
    ok = all(v["ok"] for v in verdicts)
    result = {"run_id": run_id, "result": path, "ok": ok, "target": "simulate",
              "simulated": True, "model": MODEL, "profile": plan.name, "started": started,
              **summary, "slo": verdicts,
              "policy": policy.describe() if policy else None,
              "replicas": sim.timeline, "replica_seconds": round(sim.replica_seconds, 3),
              "scaling_decisions": sim.decisions,
              "interrupted": False, "ran_s": plan.duration_s, "complete": True, "error": None}
    return RunOutcome(result, path, ok)


def _stage_target(stage: Any) -> float | None:
    from loadforge.schedule import arrivals

    return arrivals(stage) / stage.duration_s if stage.duration_s else None
