"""`loadforge trend` shown: plain lines per group and metric, or CSV (analysis/trend.py finds
the shifts)."""

from __future__ import annotations

import csv
import io
import os

from loadforge.analysis.compare import KIND
from loadforge.analysis.figures import ALL_STAGES, RunFigures
from loadforge.analysis.trend import METRICS, Series, scope_values
from loadforge.units import format_us


def render_csv(runs: list[RunFigures], stage: str = ALL_STAGES) -> str:
    keys = sorted({k for r in runs for k in r.result.labels})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["time", "run_id", "file", *(f"label_{k}" for k in keys), *METRICS])
    for run in runs:
        values = scope_values(run, stage)
        writer.writerow([run.result.metadata.get("start_time", ""), run.result.run_id,
                         os.path.basename(run.result.path),
                         *(run.result.labels.get(k, "") for k in keys),
                         *(_plain(values[m]) for m in METRICS)])
    return buf.getvalue()


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(round(value, 6))


def format_value(metric: str, value: float) -> str:
    kind = KIND[metric]
    if kind == "us":
        return format_us(value)
    if kind == "ratio":
        return f"{value * 100:.3g}%"
    return f"{value:,.1f}/s"


def render_text(series: list[Series]) -> str:
    """Plain lines: one header per group and metric, one line per shift."""
    lines = []
    for s in series:
        group = " ".join(f"{k}={v}" for k, v in s.group.items()) or "all runs"
        found = f"{len(s.shifts)} shift{'s' if len(s.shifts) != 1 else ''}"
        runs = f"{len(s.runs)} run{'s' if len(s.runs) != 1 else ''}"
        lines.append(f"{group}  {s.metric}: {runs}, {found}")
        for shift in s.shifts:
            change = "" if shift.change is None else f" ({shift.change * 100:+.1f}%)"
            lines.append(
                f"  run {shift.index + 1} {shift.run} ({shift.start_time or '?'}): "
                f"{format_value(s.metric, shift.before)} -> {format_value(s.metric, shift.after)}"
                f"{change}, p={shift.p_value:.3f}")
    return "\n".join(lines)
