"""`loadforge trend`: where a metric shifted over an archive of runs.

The runs of an archive (files or directories, ordered by start time) are grouped by the values
of the `--by` labels; within each group the metric of each run (the same figures `compare` and
`ls` show, from run_figures) forms a series, and changepoint.change_points finds where it
shifted. A shift is reported at the first run after it, with the medians of the segments before
and after. `--format csv` writes one row per run (time, run id, file, labels, every metric), the
layout Apache Otava's CSV source reads.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from loadforge.analysis.changepoint import change_points
from loadforge.analysis.figures import ALL_STAGES, RunFigures, load_runs
from loadforge.errors import InputError
from loadforge.results.store import start_key

METRICS = ("p50", "p90", "p99", "p999", "max", "mean", "error_rate", "achieved_rps")
FORMATS = ("table", "csv", "json")


@dataclass
class Shift:
    index: int                  # position in the group's series: the first run after the shift
    run: str                    # that run's title
    start_time: str
    path: str
    before: float               # median of the segment before
    after: float                # median of the segment after
    p_value: float

    @property
    def change(self) -> float | None:
        return (self.after - self.before) / self.before if self.before else None

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "run": self.run, "start_time": self.start_time,
                "path": self.path, "before": self.before, "after": self.after,
                "change": self.change, "p_value": self.p_value}


@dataclass
class Series:
    group: dict[str, str]       # the --by labels' values
    metric: str
    runs: list[RunFigures] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    shifts: list[Shift] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"group": self.group, "metric": self.metric, "runs": len(self.runs),
                "values": self.values, "shifts": [s.as_json() for s in self.shifts]}


def trend(paths: list[str], metrics: list[str], by: list[str], stage: str = ALL_STAGES,
          min_size: int = 3) -> tuple[list[RunFigures], list[Series]]:
    """Every run read (oldest first), and one series per label group and metric."""
    for metric in metrics:
        if metric not in METRICS:
            raise InputError(f"trend --metric {metric}: expected one of {', '.join(METRICS)}")
    # Oldest first across all the paths given, not only within each directory.
    runs = sorted(load_runs(paths), key=lambda r: start_key(r.result.path, r.result.metadata))
    groups: dict[tuple[str, ...], list[RunFigures]] = {}
    for run in runs:
        key = tuple(run.result.labels.get(k, "") for k in by)
        groups.setdefault(key, []).append(run)
    out = []
    for key, members in groups.items():
        for metric in metrics:
            series = Series(dict(zip(by, key, strict=True)), metric, members,
                            [scope_values(r, stage)[metric] for r in members])
            points = change_points(series.values, min_size)
            bounds = [0] + [c.index for c in points] + [len(members)]
            for i, cp in enumerate(points):
                before = series.values[bounds[i]:cp.index]
                after = series.values[cp.index:bounds[i + 2]]
                first = members[cp.index]
                series.shifts.append(Shift(
                    cp.index, first.title, first.result.metadata.get("start_time", ""),
                    first.result.path, statistics.median(before), statistics.median(after),
                    cp.p_value))
            out.append(series)
    return runs, out


def scope_values(run: RunFigures, stage: str) -> dict[str, float]:
    """The METRICS of a run (or one stage of it); target_rps, the one figure that may be
    missing (closed-model stages have none), is not among them."""
    scope = run.scope(stage)
    if scope is None:
        raise InputError(f"trend --stage {stage}: run {run.title} has no such stage")
    values = scope.values()
    return {m: float(values[m] or 0.0) for m in METRICS}
