"""The polled metric series, and backend attribution (each backend's responses, share and
p99, the fairness of the shares), per stage and for the run: folded from a run's metric and
stage rows (`metric_series_of`, `backend_figures_of`: in memory at the end of a run, or read
back from its file by `metric_series`, `backend_figures`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from loadforge.analysis.figures import RowSource
from loadforge.config.plan import STATUS_OUTCOMES
from loadforge.engine import histogram
from loadforge.results.store import Result, outcome_row


def metric_series(result: Result) -> dict[str, list[tuple[int, float | None]]]:
    """name -> [(start_ms, value or None)], in time order, of a result file."""
    if "value" not in result.table.column_names:
        return {}
    return metric_series_of(result.rows("metric", name=None, outcome=None))


def metric_series_of(rows: Iterable[dict[str, Any]]
                     ) -> dict[str, list[tuple[int, float | None]]]:
    """name -> [(start_ms, value or None)], in time order, of metric rows."""
    out: dict[str, list[tuple[int, float | None]]] = {}
    for row in rows:
        value = row.get("value")
        out.setdefault(row["name"], []).append((int(row["start_ms"]),
                                                None if value is None else float(value)))
    for series in out.values():
        series.sort(key=lambda p: p[0])
    return out


def jain_index(shares: list[float]) -> float | None:
    """Jain's fairness index, (sum x)^2 / (n sum x^2): 1 when all equal, 1/n when one has all."""
    squares = sum(x * x for x in shares)
    if not shares or not squares:
        return None
    return sum(shares) ** 2 / (len(shares) * squares)


def _block(counts: dict[str, int], hists: dict[str, Any]) -> dict[str, Any]:
    total = sum(counts.values())
    backends = {}
    for name in sorted(counts):
        backends[name] = {"requests": counts[name],
                          "share": counts[name] / total if total else 0.0,
                          "p99_us": histogram.stats(hists[name])["p99"]}
    shares = [b["share"] for b in backends.values()]
    positive = [s for s in shares if s > 0]
    return {"backends": backends, "fairness": {
        "jain": jain_index(shares),
        "max_min_ratio": max(positive) / min(positive) if positive else None,
    }}


def backend_figures(result: Result) -> dict[str, Any]:
    """backend_figures_of a result file's stage rows."""
    if "backend" not in result.table.column_names:
        return {"run": {}, "stages": {}}
    return backend_figures_of(result.rows("stage", name=None, outcome=None),
                              RowSource.of_file(result, ()))


def backend_figures_of(rows: Iterable[dict[str, Any]], source: RowSource) -> dict[str, Any]:
    """Per-backend responses, share and p99 over the run and per stage, from the stage rows
    (merged histograms, per backend; `source` reads them). Responses without the header (and
    transport failures) are counted as `unattributed`, outside the shares.

    {"run": {"backends": {name: {requests, share, p99_us}}, "fairness": {jain, max_min_ratio},
             "unattributed": n},
     "stages": {stage: same}}  -- empty dicts when nothing was attributed.
    """
    counts: dict[str, dict[str, int]] = {}
    hists: dict[str, dict[str, Any]] = {}
    unattributed: dict[str, int] = {}
    for row in rows:
        if row["scope"] != "stage" or not outcome_row(row):
            continue
        stage, backend = row["stage"], row.get("backend") or "*"
        if backend == "*" or row["outcome"] not in STATUS_OUTCOMES:
            unattributed[stage] = unattributed.get(stage, 0) + int(row["count"])
            continue
        for scope in (stage, "*"):
            c = counts.setdefault(scope, {})
            c[backend] = c.get(backend, 0) + int(row["count"])
            h = hists.setdefault(scope, {})
            if backend not in h:
                h[backend] = histogram.new_histogram()
            histogram.merge(h[backend], source.latency(row))
    if "*" not in counts:
        return {"run": {}, "stages": {}}
    out: dict[str, Any] = {"run": {**_block(counts["*"], hists["*"]),
                                   "unattributed": sum(unattributed.values())},
                           "stages": {}}
    for stage in counts:
        if stage != "*":
            out["stages"][stage] = {**_block(counts[stage], hists[stage]),
                                    "unattributed": unattributed.get(stage, 0)}
    return out
