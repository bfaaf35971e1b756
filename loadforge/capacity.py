"""`loadforge capacity`: the highest open-model rate at which every SLO holds.

The search runs one short open-model run per step (runner.execute, the same engine and
verdicts as `run`): it doubles the rate from `start_rps` until a step fails, then bisects
between the last rate that held and the first that did not until they are within
`precision` of each other. Near the edge (every bisection step) a rate is tried up to three
times and decided by two agreeing tries, so one noisy step cannot move the answer.

A step fails when an objective fails or when the generator could not send what it should
(more than 1 % of the arrivals unsent, or less than 95 % of the rate achieved): then the
client, not the target, is the limit, and the answer says so (`limited_by` "unsent
(connections)" or "unsent (cpu)").

All the steps are written as one result, one stage per step in the order they ran, so
`report` plots the rate-latency curve and `compare` compares two capacities; the summary
JSON has `capacity_rps`, `limited_by`, `knee_rps` and `steps[]`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from loadforge.config.plan import Plan, Request, Stage
from loadforge.config.profile import with_slo_flags
from loadforge.engine import histogram
from loadforge.errors import InputError
from loadforge.results.store import ResultWriter, read_result
from loadforge.run.session import RunOptions, new_run_id

UNSENT_SHARE = 0.01          # more unsent than this: the client could not keep up
ACHIEVED_SHARE = 0.95        # less achieved than this share of the target: same
KNEE_FACTOR = 1.5            # the knee: the last rate whose p50 is within this of the lowest's


@dataclass(frozen=True)
class CapacityOptions:
    target: str
    slos: dict[str, float]
    start_rps: float = 100.0
    max_rps: float = 100_000.0
    step_s: float = 10.0
    precision: float = 0.05
    connections: int = 256
    timeout_s: float = 5.0
    workers: int | None = None
    out_dir: str = "results"
    labels: dict[str, str] = field(default_factory=dict)
    max_steps: int = 40


@dataclass
class Step:
    rate: float
    ok: bool
    failed: list[str]
    summary: dict[str, Any]
    path: str | None
    phase: str                     # "up", "bisect"

    def describe(self) -> dict[str, Any]:
        s = self.summary
        return {"rate_rps": round(self.rate, 3), "ok": self.ok, "failed": self.failed,
                "phase": self.phase, "achieved_rps": round(s.get("achieved_rps", 0.0), 3),
                "latency_us": s.get("latency_us", {}), "error_rate": s.get("error_rate", 0.0),
                "unsent": s.get("unsent", 0), "unsent_cause": s.get("unsent_cause")}


def _plan(opts: CapacityOptions, rate: float) -> Plan:
    query = "" if opts.target == "sandbox" else urlsplit(opts.target).query
    plan = Plan(name="capacity", target=opts.target,
                stages=(Stage(f"{rate:g}rps", opts.step_s, rate_from=rate, rate_to=rate),),
                requests=(Request("default", path=f"?{query}" if query else ""),),
                connections=opts.connections, timeout_s=opts.timeout_s)
    return replace(plan, slo=with_slo_flags(plan.slo, opts.slos))


def _judge(summary: dict[str, Any]) -> list[str]:
    failed = [v.get("objective") or v["name"] for v in summary.get("slo", []) if not v["ok"]]
    scheduled = summary.get("scheduled", 0)
    target = summary.get("target_rps") or 0.0
    short = (summary.get("unsent", 0) > UNSENT_SHARE * max(scheduled, 1)
             or summary.get("achieved_rps", 0.0) < ACHIEVED_SHARE * target)
    if short:
        failed.append(f"unsent ({summary.get('unsent_cause') or 'connections'})")
    return failed


class Search:
    def __init__(self, opts: CapacityOptions, console: Any, quiet: bool = False) -> None:
        if not opts.slos:
            raise InputError("capacity: give at least one --slo (e.g. --slo p99=100ms): the "
                             "capacity is the highest rate at which they all hold")
        if not 0 < opts.start_rps <= opts.max_rps:
            raise InputError(f"capacity: --start must be > 0 and <= --max, got "
                             f"{opts.start_rps:g} and {opts.max_rps:g}")
        if not 0 < opts.precision < 1:
            raise InputError(f"capacity: --precision must be between 0 and 1, got "
                             f"{opts.precision:g}")
        self.opts = opts
        self.console = console
        self.quiet = quiet
        self.steps: list[Step] = []
        self.tmp = tempfile.mkdtemp(prefix="loadforge-capacity-")

    def _try(self, rate: float, phase: str) -> Step:
        from loadforge import runner

        if len(self.steps) >= self.opts.max_steps:
            raise InputError(f"capacity: no answer within {self.opts.max_steps} steps")
        run_opts = RunOptions(target=None, workers=self.opts.workers, out_dir=self.tmp,
                              quiet=True, preflight=not self.steps, slo_flags=self.opts.slos)
        outcome = runner.execute(_plan(self.opts, rate), run_opts, self.console)
        if outcome.failure or outcome.signum:
            from loadforge.errors import Interrupted, RunError

            if outcome.signum:
                raise Interrupted(outcome.signum)
            raise RunError(f"capacity: the step at {rate:g}/s could not run: {outcome.failure}")
        if outcome.summary.get("errors") and not outcome.summary.get("requests"):
            from loadforge.errors import RunError
            kinds = {k: v for k, v in outcome.summary.get("errors_by_kind", {}).items() if v}
            raise RunError(f"capacity: the target answered nothing at {rate:g}/s ({kinds}): "
                           "it is down, not at capacity")
        failed = _judge(outcome.summary)
        step = Step(rate, not failed, failed, outcome.summary, outcome.path, phase)
        self.steps.append(step)
        if not self.quiet:
            p99 = outcome.summary.get("latency_us", {}).get("p99", 0) / 1000
            verdict = "holds" if step.ok else "fails: " + ", ".join(failed)
            self.console.print(f"  {rate:>10,.1f}/s  p99 {p99:8.1f} ms  "
                               f"errors {outcome.summary.get('error_rate', 0):.2%}  {verdict}",
                               highlight=False)
        return step

    def _decide(self, rate: float, phase: str, first: bool | None = None) -> bool:
        """Two agreeing tries out of at most three (`first`: a try already made)."""
        votes = [] if first is None else [first]
        while len(votes) < 2:
            votes.append(self._try(rate, phase).ok)
        if votes[0] != votes[1]:
            votes.append(self._try(rate, phase).ok)
        return sum(votes) * 2 > len(votes)

    def run(self) -> dict[str, Any]:
        """Search, write the steps as one result, and say what was found. Interrupted (a
        signal), the steps that ran are still written as one result before it goes on up."""
        import shutil

        from loadforge.errors import Interrupted

        try:
            return self._search()
        except (KeyboardInterrupt, Interrupted):
            if self.steps:
                path = self._write(0.0, None)
                if path and not self.quiet:
                    self.console.print(f"interrupted: the {len(self.steps)} steps that ran are "
                                       f"in {path}", highlight=False)
            raise
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _search(self) -> dict[str, Any]:
        o = self.opts
        good, bad = 0.0, None
        rate = o.start_rps
        while True:
            # A step that fails is tried again before it ends the climb: it may be noise.
            ok = self._try(rate, "up").ok or self._decide(rate, "up", first=False)
            if ok:
                good = rate
                if rate >= o.max_rps:
                    break
                rate = min(rate * 2, o.max_rps)
            else:
                bad = rate
                break
        while bad is not None and good > 0 and (bad - good) / good > o.precision:
            mid = (good + bad) / 2
            if self._decide(mid, "bisect"):
                good = mid
            else:
                bad = mid
        return self._summary(good, bad)

    def _limited_by(self, bad: float | None) -> str | None:
        if bad is None:
            return "max rate reached (--max)"
        near = [s for s in self.steps if not s.ok and s.rate <= bad * (1 + 1e-9)]
        if not near:
            return None
        edge = min(near, key=lambda s: s.rate)
        return ", ".join(edge.failed)

    def _knee(self) -> float | None:
        """The last rate, going up, before the median p50 of a rate's tries passes
        KNEE_FACTOR x the lowest rate's: where queueing starts."""
        by_rate: dict[float, list[float]] = {}
        for st in self.steps:
            by_rate.setdefault(st.rate, []).append(st.summary.get("latency_us", {}).get("p50", 0))
        rates = sorted(by_rate)
        if not rates:
            return None

        def median(values: list[float]) -> float:
            ordered = sorted(values)
            return ordered[len(ordered) // 2]

        base = max(1.0, median(by_rate[rates[0]]))
        knee = rates[0]
        for rate in rates:
            if median(by_rate[rate]) > KNEE_FACTOR * base:
                break
            knee = rate
        return knee

    def _summary(self, good: float, bad: float | None) -> dict[str, Any]:
        path = self._write(good, bad)
        return {"capacity_rps": round(good, 3) if good else 0.0,
                "limited_by": self._limited_by(bad), "knee_rps": self._knee(),
                "first_failing_rps": None if bad is None else round(bad, 3),
                "slo": dict(self.opts.slos), "target": self.opts.target,
                "steps": [s.describe() for s in self.steps], "result": path,
                "ok": good > 0}

    # -- the combined result --------------------------------------------------------------

    def _write(self, good: float, bad: float | None) -> str | None:
        steps = [s for s in self.steps if s.path]
        if not steps:
            return None
        first = read_result(steps[0].path or "")
        run_id = new_run_id(_plan(self.opts, good or self.opts.start_rps))
        path = os.path.join(self.opts.out_dir, f"{run_id}.parquet")
        names = [f"step{i + 1:02d} {s.rate:g}rps" for i, s in enumerate(steps)]
        metadata: dict[str, Any] = {k: v for k, v in first.metadata.items()
                    if k in ("target", "engine", "workers", "connections", "http",
                             "interval_ms", "timer_resolution_us")}
        metadata.update({
            "profile": "", "profile_name": "capacity",
            "stages": [{"name": n, "duration_s": self.opts.step_s, "rate_from": s.rate,
                        "rate_to": s.rate, "concurrency": None, "think_s": 0.0}
                       for n, s in zip(names, steps, strict=True)],
            # The objectives are the search's, not the whole file's (which holds the failing
            # steps by design): kept here, not as slo_flags that `ls` would judge again.
            "capacity": {"capacity_rps": good, "first_failing_rps": bad,
                         "limited_by": self._limited_by(bad), "slo": dict(self.opts.slos),
                         "knee_rps": self._knee()},
        })
        run_acc: dict[tuple[str, str, str], list[Any]] = {}
        with ResultWriter(path, run_id, metadata, self.opts.labels) as writer:
            offset = 0
            for name, step in zip(names, steps, strict=True):
                result = read_result(step.path or "")
                rows = []
                for scope in ("interval", "stage"):
                    for r in result.rows(scope, name=None, outcome=None):
                        row = _copy(result, r, name, offset)
                        rows.append(row)
                        if scope == "stage":
                            _accumulate(run_acc, row)
                writer.write(rows)
                offset += int(self.opts.step_s * 1000)
            writer.write([_run_row(k, v, offset) for k, v in run_acc.items()], last=True)
            writer.close({"interrupted": "false", "ran_s": f"{offset / 1000:.3f}",
                          "complete": "true"})
        for s in self.steps:
            if s.path and os.path.exists(s.path):
                os.remove(s.path)
        return path


def _copy(result: Any, r: dict[str, Any], stage: str, offset_ms: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "scope": r["scope"], "stage": stage, "name": r["name"], "outcome": r["outcome"],
        "backend": r.get("backend") or "*", "start_ms": r["start_ms"] + offset_ms,
        "end_ms": r["end_ms"] + offset_ms, "count": r["count"],
        "scheduled": r.get("scheduled"), "unsent": r.get("unsent"),
        "latency": result.histogram(r), "service": result.service_histogram(r)}
    if r.get("connect_hdr") is not None:
        row["connect"] = result.histogram(r, "connect_hdr")
    return row


def _accumulate(acc: dict[tuple[str, str, str], list[Any]], row: dict[str, Any]) -> None:
    key = (row["name"], row["outcome"], row["backend"])
    a = acc.get(key)
    if a is None:
        a = acc[key] = [histogram.new_histogram(), histogram.new_histogram(), 0, None, None,
                        None]
    histogram.merge(a[0], row["latency"])
    histogram.merge(a[1], row["service"])
    a[2] += row["count"]
    if row.get("scheduled") is not None:
        a[3] = (a[3] or 0) + row["scheduled"]
        a[4] = (a[4] or 0) + (row.get("unsent") or 0)
    if row.get("connect") is not None:
        if a[5] is None:
            a[5] = histogram.new_histogram()
        histogram.merge(a[5], row["connect"])


def _run_row(key: tuple[str, str, str], a: list[Any], end_ms: int) -> dict[str, Any]:
    name, outcome, backend = key
    row = {"scope": "run", "stage": "*", "name": name, "outcome": outcome, "backend": backend,
           "start_ms": 0, "end_ms": end_ms, "count": a[2], "latency": a[0], "service": a[1],
           "scheduled": a[3], "unsent": a[4]}
    if a[5] is not None:
        row["connect"] = a[5]
    return row
