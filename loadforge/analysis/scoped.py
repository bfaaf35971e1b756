"""Figures of one request name or one backend, per stage and for the run, as `compare`, its
gates (`p99[/slow]=+10%`, `share[b3]=+5pp`, `fairness=-0.05`) and the report read them.

Counts and latency come from the stage rows' outcome rows (one per name x outcome x backend),
merged exactly; a group of runs merges its runs' (`pool`). Latency is over successful
responses, as everywhere; an error is a transport failure or a status in the run's
fail_status. A backend's share is of the attributed responses (analysis/backends.py's rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loadforge.analysis.backends import jain_index
from loadforge.analysis.figures import ALL_STAGES
from loadforge.analysis.readback import RunFigures
from loadforge.config.outcomes import error_outcomes
from loadforge.config.plan import STATUS_OUTCOMES
from loadforge.engine import histogram
from loadforge.results.store import outcome_row


@dataclass
class _Tally:
    """One name's or one backend's counts and successful-response latency."""

    sent: int = 0                 # responses + transport failures
    responses: int = 0
    errors: int = 0
    latency: Any = field(default_factory=histogram.new_histogram)

    def merge(self, other: _Tally) -> None:
        self.sent += other.sent
        self.responses += other.responses
        self.errors += other.errors
        histogram.merge(self.latency, other.latency)

    def figures(self) -> dict[str, float | int | None]:
        """Latency None without a successful response (nothing to take a percentile of)."""
        stats = histogram.stats(self.latency) if self.latency.total_count else {}
        return {"requests": self.responses, "errors": self.errors,
                "error_rate": self.errors / self.sent if self.sent else 0.0,
                "p50": stats.get("p50"), "p90": stats.get("p90"), "p99": stats.get("p99")}


# stage -> ("name" | "backend") -> key -> tally
Tallies = dict[str, dict[str, dict[str, _Tally]]]


def tallies(run: RunFigures) -> Tallies:
    """Per stage and for the run (ALL_STAGES), per request name and per backend."""
    result = run.result
    errors = set(error_outcomes(run.fail_status))
    has_backend = "backend" in result.table.column_names
    out: Tallies = {}
    for row in result.rows("stage", name=None, outcome=None):
        if not outcome_row(row):
            continue
        count, outcome = int(row["count"]), row["outcome"]
        backend = (row.get("backend") or "*") if has_backend else "*"
        keys = [("name", row["name"])]
        if backend != "*" and outcome in STATUS_OUTCOMES:
            keys.append(("backend", backend))
        latency = (result.histogram(row) if outcome in STATUS_OUTCOMES
                   and outcome not in errors and count else None)
        for stage in (row["stage"], ALL_STAGES):
            for kind, key in keys:
                t = out.setdefault(stage, {"name": {}, "backend": {}})[kind].setdefault(
                    key, _Tally())
                t.sent += count
                t.responses += count if outcome in STATUS_OUTCOMES else 0
                t.errors += count if outcome in errors else 0
                if latency is not None:
                    histogram.merge(t.latency, latency)
    return out


def pool(parts: list[Tallies]) -> Tallies:
    """The runs of a group merged, as their histograms are."""
    out: Tallies = {}
    for part in parts:
        for stage, kinds in part.items():
            for kind, keyed in kinds.items():
                for key, tally in keyed.items():
                    out.setdefault(stage, {"name": {}, "backend": {}})[kind].setdefault(
                        key, _Tally()).merge(tally)
    return out


def figures(t: Tallies) -> dict[str, dict[str, Any]]:
    """stage -> {"names": {name: figures}, "backends": {backend: figures + share},
    "fairness": Jain's index of the shares (None without backends)}."""
    out: dict[str, dict[str, Any]] = {}
    for stage, kinds in t.items():
        names = {k: v.figures() for k, v in sorted(kinds["name"].items())}
        attributed = sum(v.responses for v in kinds["backend"].values())
        backends = {}
        for k, v in sorted(kinds["backend"].items()):
            backends[k] = {**v.figures(),
                           "share": v.responses / attributed if attributed else 0.0}
        shares = [float(b["share"] or 0.0) for b in backends.values()]
        out[stage] = {"names": names, "backends": backends,
                      "fairness": jain_index(shares) if backends else None}
    return out
