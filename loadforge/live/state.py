"""The live figures of one run, folded from each interval the coordinator merges.

`LiveRun.add` reads a `MergedInterval` (run/merge.py) once, in the coordinator's thread,
and keeps only numbers: the interval's point (what `--stream` writes and `--dashboard` draws)
and running totals (what `--metrics` exposes). The rows' histograms are the coordinator's
accumulators: they are read here and never kept. Everything is per interval, never per
request: a few dozen cells a second whatever the rate.
"""

from __future__ import annotations

from typing import Any

from loadforge.analysis.slo import LiveVerdicts
from loadforge.config.outcomes import error_outcomes
from loadforge.config.plan import FLOW_PREFIX, STATUS_OUTCOMES, Plan
from loadforge.engine import histogram
from loadforge.results.store import OK

# loadforge_latency_seconds' bucket bounds (le), seconds: Prometheus' defaults from 0.5 ms
# to 10 s with a 1-2.5-5 step; above 10 s is +Inf. Within a bucket the HDR histogram's
# precision (0.1 %) decides on which side of a bound a value falls.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0)
_BUCKET_INDEX = tuple(histogram.new_histogram().get_counts_array_index(int(le * 1e6))
                      for le in LATENCY_BUCKETS_S)
LATENCY_KEYS = ("p50", "p90", "p99", "p999", "max", "mean")


def latency_block(h: Any) -> dict[str, Any]:
    """The percentiles of a histogram, µs, as the summary JSON writes `latency_us`."""
    st = histogram.stats(h)
    return {k: round(st[k], 1) if k == "mean" else st[k] for k in LATENCY_KEYS}


def bucket_counts(h: Any) -> list[int]:
    """Counts of `h` per LATENCY_BUCKETS_S bucket (not cumulative), +Inf last."""
    out = [0] * (len(LATENCY_BUCKETS_S) + 1)
    total = int(h.total_count)
    if not total:
        return out
    counts = memoryview(h.counts).cast("B").cast("Q")
    limit = min(h.get_counts_array_index(h.max_value) + 1, len(counts))
    lo = 0
    for k, index in enumerate(_BUCKET_INDEX):
        hi = min(index + 1, limit)
        if hi > lo:
            out[k] = sum(counts[lo:hi])
            lo = hi
    out[-1] = total - sum(out[:-1])
    return out


class LiveRun:
    """One run as the live outputs see it: `add` each merged interval, `finish` with the
    summary. `points` keeps every interval's point (a few hundred bytes each) so that a page
    opened late draws the run from its start."""

    def __init__(self, plan: Plan, run_id: str, target: str, interval_s: float,
                 started: float):
        self.plan = plan
        self.run_id = run_id
        self.interval_s = interval_s
        self.error_outcomes = set(error_outcomes(plan.fail_status))
        self.flows = plan.flows is not None
        self.verdicts_live = LiveVerdicts(plan, interval_s)
        self.header: dict[str, Any] = {
            "type": "start", "run_id": run_id, "profile": plan.name, "target": target,
            "started": started, "interval_s": interval_s, "duration_s": plan.duration_s,
            "stages": [{"name": s.name, "duration_s": s.duration_s,
                        "open_model": s.open_model} for s in plan.stages]}
        # Running totals since the start of the run.
        self.counts: dict[tuple[str, str, str], int] = {}        # (stage, name, outcome)
        self.buckets: dict[tuple[str, str], list[float]] = {}    # (stage, name): counts, sum_s
        self.by_backend: dict[str, int] = {}
        self.scheduled = 0
        self.unsent = 0
        self.requests = 0
        self.errors = 0
        self.last: dict[str, Any] | None = None
        self.points: list[dict[str, Any]] = []
        self.verdicts: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None

    def _counted(self, name: str) -> bool:
        """Whether a name's rows count towards the run's totals: a flow's own row does not."""
        return not (self.flows and name.startswith(FLOW_PREFIX))

    def add(self, merged: Any) -> dict[str, Any]:
        """Folds one MergedInterval in; returns its point (a `--stream` line's object)."""
        cells: dict[tuple[str, str, str], list[Any]] = {}
        by_name: dict[str, dict[str, Any]] = {}
        ok_by_name: dict[str, Any] = {}
        ok_all = histogram.new_histogram()
        scheduled = unsent = 0
        backends: dict[str, int] = {}
        for row in merged.rows:
            stage, name, outcome, count = row["stage"], row["name"], row["outcome"], row["count"]
            if name == "*":
                if outcome == "*":
                    scheduled += int(row.get("scheduled") or 0)
                    unsent += int(row.get("unsent") or 0)
                elif outcome == OK:
                    histogram.merge(ok_all, row["latency"])
                continue
            if outcome == OK:
                ok = ok_by_name.get(name)
                if ok is None:
                    ok_by_name[name] = row["latency"]
                else:
                    # The name ran in two stages of this interval: merged into a copy.
                    ok_by_name[name] = histogram.copy(ok)
                    histogram.merge(ok_by_name[name], row["latency"])
                acc = self.buckets.setdefault((stage, name),
                                              [0] * (len(LATENCY_BUCKETS_S) + 1) + [0.0])
                for k, n in enumerate(bucket_counts(row["latency"])):
                    acc[k] += n
                acc[-1] += histogram.stats(row["latency"])["mean"] * count / 1e6
                continue
            cell = cells.get((stage, name, outcome))
            if cell is None:
                cells[(stage, name, outcome)] = [count, row["latency"], False]
            else:
                # One cell per backend: merged into a histogram of the cell's own.
                if not cell[2]:
                    cell[1], cell[2] = histogram.copy(cell[1]), True
                histogram.merge(cell[1], row["latency"])
                cell[0] += count
            backend = row.get("backend") or "*"
            if backend != "*" and outcome in STATUS_OUTCOMES and self._counted(name):
                backends[backend] = backends.get(backend, 0) + count
        requests = errors = 0
        errors_by_kind: dict[str, int] = {}
        out_cells = []
        for (stage, name, outcome), (count, lat, _) in sorted(cells.items()):
            key = (stage, name, outcome)
            self.counts[key] = self.counts.get(key, 0) + count
            entry = by_name.setdefault(name, {"requests": 0, "errors": 0})
            if outcome in STATUS_OUTCOMES:
                entry["requests"] += count
            if outcome in self.error_outcomes:
                entry["errors"] += count
            if self._counted(name):
                if outcome in STATUS_OUTCOMES:
                    requests += count
                if outcome in self.error_outcomes:
                    errors += count
                    errors_by_kind[outcome] = errors_by_kind.get(outcome, 0) + count
            out_cells.append({"stage": stage, "name": name, "outcome": outcome, "count": count,
                              "latency_us": latency_block(lat)})
        for name, ok in ok_by_name.items():
            by_name.setdefault(name, {"requests": 0, "errors": 0})["latency_us"] = \
                latency_block(ok)
        for backend, n in backends.items():
            self.by_backend[backend] = self.by_backend.get(backend, 0) + n
        self.scheduled += scheduled
        self.unsent += unsent
        self.requests += requests
        self.errors += errors
        self.verdicts = [{k: v[k] for k in ("name", "ok", "observed", "limit", "unit")}
                         for v in self.verdicts_live.interval(merged.index, merged.rows)]
        point = {
            "type": "interval", "run_id": self.run_id, "index": merged.index,
            "start_s": merged.start_s, "end_s": merged.end_s, "stage": merged.stage,
            "target_rps": merged.target_rps, "achieved_rps": merged.achieved_rps,
            "scheduled": scheduled, "unsent": unsent, "requests": requests, "errors": errors,
            "latency_us": latency_block(ok_all), "errors_by_kind": errors_by_kind,
            "by_name": by_name, "by_backend": backends, "cells": out_cells,
            "slo": self.verdicts,
            "totals": {"requests": self.requests, "errors": self.errors,
                       "scheduled": self.scheduled, "unsent": self.unsent}}
        self.last = point
        self.points.append(point)
        return point

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The run's summary (as --summary-json writes it): the figures that count from now."""
        self.summary = summary
        self.verdicts = [{k: v.get(k) for k in ("name", "ok", "observed", "limit", "unit")}
                         for v in summary.get("slo") or []]
        return {"type": "summary", **summary}
