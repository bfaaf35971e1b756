"""`loadforge report RUN... --html PATH`: one self-contained HTML file of plots.

The page carries its data as JSON and draws it with the small canvas plotter in
`report_assets/report.js` (inlined, with the CSS, into the page: it must open offline, from an
artifact store or a mail attachment, so nothing is fetched). Series come from the interval rows
(the "ok" rows for latency, `*`/`*` rows for the target, outcome rows for rates and errors),
spectra from each stage's merged histogram of successful responses. Per-second rates are
drawn as steps: each is a count over its whole interval. Next to the plots: the SLO verdicts
(judged again from the file, as `ls` does), responses by status class and failures by kind,
and one row per request name.

When the page has drawn, `<body>` gets `data-ready` (charts drawn with data) next to
`data-charts` (charts on the page), and `data-errors` if a script error happened: the Chromium
test reads them back from `--dump-dom`.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

from hdrh.histogram import HdrHistogram

from loadforge.analysis.figures import name_block
from loadforge.analysis.readback import (
    RunFigures,
    interval_cells,
    load_runs,
    run_figures,
    stages_of,
)
from loadforge.config.outcomes import EXPECTED, UNEXPECTED
from loadforge.config.plan import GRPC_OUTCOMES, HTTP2_ERROR_KINDS, OUTCOMES
from loadforge.engine import histogram
from loadforge.results.store import Result

# Percentile levels of the spectrum: 1 - 10^(-k/20), k = 0..100, i.e. 0% .. 99.999% with
# 20 points per decade of 1/(1-q) (the x axis of an HDR percentile plot).
SPECTRUM_LEVELS = tuple(1 - 10 ** (-k / 20) for k in range(101))


def spectrum(h: HdrHistogram) -> list[list[float]]:
    """[[1/(1-q), latency µs], ...] at SPECTRUM_LEVELS, in one walk of the nonzero buckets,
    with histogram.stats()'s percentile definition."""
    total = int(h.total_count)
    if not total:
        return []
    counts = memoryview(h.counts).cast("B").cast("Q")
    limit = min(h.get_counts_array_index(h.max_value) + 1, len(counts))
    targets = [max(int(q * total + 0.5), 1) for q in SPECTRUM_LEVELS]
    out: list[list[float]] = []
    cumulative = 0
    t = 0
    for index in range(limit):
        c = counts[index]
        if not c:
            continue
        cumulative += c
        while t < len(targets) and cumulative >= targets[t]:
            value = h.get_highest_equivalent_value(h.get_value_from_index(index))
            out.append([round(1 / (1 - SPECTRUM_LEVELS[t]), 6) if t else 1.0, float(value)])
            t += 1
        if t == len(targets):
            break
    return out


def _run_series(run: RunFigures) -> dict[str, Any]:
    result = run.result
    try:
        interval_ms = int(result.metadata.get("interval_ms", "1000"))
    except ValueError:
        interval_ms = 1000
    interval_s = interval_ms / 1000
    per = interval_cells(result, interval_ms, run.fail_status)
    kinds = sorted({k for cell in per.values() for k in cell["errors"]})
    t, target, achieved = [], [], []
    lat: dict[str, list[float | None]] = {k: [] for k in ("p50", "p90", "p99", "max")}
    errors: dict[str, list[float]] = {k: [] for k in kinds}
    for index in sorted(per):
        cell = per[index]
        # Plotted at the interval's middle: the figures describe the whole interval.
        t.append(round((index + 0.5) * interval_s, 3))
        target.append(cell["scheduled"] / interval_s)
        achieved.append(cell["responses"] / interval_s)
        stats = histogram.stats(cell["latency"]) if cell["latency"] is not None else None
        for key in lat:
            lat[key].append(float(stats[key]) if stats and stats["count"] else None)
        for kind in kinds:
            errors[kind].append(cell["errors"].get(kind, 0) / interval_s)
    stages_meta = stages_of(result)
    marks, start = [], 0.0
    for stage in stages_meta:
        marks.append({"t": start, "name": stage["name"]})
        start += float(stage.get("duration_s") or 0)
    spectra = {s.name: spectrum(s.latency) for s in run.stages}
    whole = run_figures(result, run.title, full=True).run
    summary = {s.name: s.values() for s in [*run.stages, run.run]}
    return {
        "title": run.title,
        "run_id": result.run_id,
        "path": result.path,
        "start_time": result.metadata.get("start_time", ""),
        "target": result.metadata.get("target", ""),
        "profile": result.metadata.get("profile_name", ""),
        "labels": result.labels,
        "interval_s": interval_s,
        "t": t,
        "target_rps": target,
        "achieved_rps": achieved,
        "latency_us": lat,
        "errors_per_s": errors,
        "stage_marks": marks,
        "stages": [s.name for s in run.stages],
        "spectra": spectra,
        "summary": summary,
        "unsent": int(whole.unsent),
        # HTTP/2's stream-level kinds and gRPC codes are listed when they happened
        "outcomes": {outcome: whole.outcomes.get(outcome, 0) for outcome in OUTCOMES
                     if whole.outcomes.get(outcome, 0)
                     or (outcome not in HTTP2_ERROR_KINDS and outcome not in GRPC_OUTCOMES
                         and outcome not in (UNEXPECTED, EXPECTED))},
        "requests_by_name": {name: name_block(*whole.name_figures(name)) for name in whole.by_name},
        "slo": _verdicts(result),
        "backends": _backends(run),
        "flows": _flows(result),
        "replicas": _replicas(result),
    }


def _backends(run: RunFigures) -> dict[str, Any]:
    """Per stage and for the run ("*"): each backend's share, p50/p99 and error rate, and
    Jain's fairness of the shares; {} for a run without --backend-header."""
    from loadforge.analysis import scoped

    per_stage = scoped.figures(scoped.tallies(run))
    return {stage: {"backends": fig["backends"], "fairness": fig["fairness"]}
            for stage, fig in per_stage.items() if fig["backends"]}


def _flows(result: Result) -> dict[str, Any] | None:
    """The scripted flows' checks and failures, as the run recorded them (metadata)."""
    try:
        flows = json.loads(result.metadata.get("flows") or "null")
    except ValueError:
        return None
    return flows if isinstance(flows, dict) else None


def _replicas(result: Result) -> list[dict[str, Any]]:
    """The replica counts over time (a sandbox rehearsal's polled metrics, a simulation's
    modelled ones: asked for and ready), for the chart beside latency; [] when none."""
    from loadforge.analysis import backends
    from loadforge.observe import pollers

    series = backends.metric_series(result)
    out = []
    for name in pollers.REPLICA_METRICS:
        points = [[t / 1000, v] for t, v in series.get(name, []) if v is not None]
        if points:
            out.append({"metric": name, "points": points})
    return out


def _verdicts(result: Result) -> list[dict[str, Any]]:
    """The SLO verdicts of the archived profile, judged again from the file (as `ls`)."""
    from loadforge.analysis import readback
    from loadforge.analysis.archive import verdicts_of

    plan = readback.plan_of_result(result)
    if plan is None:
        return []
    verdicts = verdicts_of(plan, result)
    return [{"name": v["name"], "ok": bool(v["ok"]), "observed": v.get("observed"),
             "limit": v.get("limit"), "unit": v.get("unit")} for v in verdicts]


def report_data(runs: list[RunFigures], group_by: list[str] | None = None,
                baseline: dict[str, str] | None = None) -> dict[str, Any]:
    """Each run's series; with two runs or groups or more, the comparison `compare` prints
    (with --group-by: p-values and intervals); with three runs or more, the trend over them."""
    from loadforge.analysis import compare

    data: dict[str, Any] = {"runs": [_run_series(r) for r in runs]}
    figures, groups, significance = runs, None, None
    if group_by:
        groups = compare.group_runs(runs, group_by, baseline)
        figures = [g.pooled for g in groups]
        significance = compare.group_noise(groups, compare.stage_names(figures))
    if len(figures) > 1:
        data["comparison"] = compare.comparison(figures, groups, significance,
                                                compare.scoped_figures(figures, groups))
    if len(runs) > 2:
        data["trend"] = _trend(runs)
    return data


TREND_METRICS = ("p50", "p99", "achieved_rps")


def _trend(runs: list[RunFigures]) -> dict[str, Any]:
    """The whole-run figures of each run in start order, and where each shifted
    (changepoint.change_points, as `loadforge trend` finds them)."""
    from loadforge.analysis.changepoint import change_points
    from loadforge.results.store import start_key

    ordered = sorted(runs, key=lambda r: start_key(r.result.path, r.result.metadata))
    out: dict[str, Any] = {"titles": [r.title for r in ordered],
                           "start_times": [r.result.metadata.get("start_time", "")
                                           for r in ordered], "metrics": {}}
    for metric in TREND_METRICS:
        values = [float(r.run.values()[metric] or 0.0) for r in ordered]
        out["metrics"][metric] = {"values": values,
                                  "shifts": [c.index for c in change_points(values)]}
    return out


def _asset(name: str) -> str:
    return resources.files("loadforge.present").joinpath("report_assets", name).read_text("utf-8")


def render_html(data: dict[str, Any]) -> str:
    titles = ", ".join(r["title"] for r in data["runs"])
    # "</" would end the <script> element early; "<\/" is the same JSON string.
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>loadforge report: {html.escape(titles)}</title>\n"
        f"<style>\n{_asset('report.css')}</style>\n</head>\n"
        "<body data-ready=\"0\">\n"
        f"<header><h1>loadforge report</h1><p class=\"sub\">{html.escape(titles)}</p></header>\n"
        "<main id=\"report\"></main>\n"
        f"<script type=\"application/json\" id=\"report-data\">{payload}</script>\n"
        f"<script>\n{_asset('report.js')}</script>\n</body>\n</html>\n"
    )


def _finite(data: Any) -> Any:
    """JSON has no inf/NaN: deltas against a zero baseline become null."""
    if isinstance(data, float):
        return data if data == data and abs(data) != float("inf") else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_finite(v) for v in data]
    return data


def write_report(paths: list[str], out_path: str, group_by: list[str] | None = None,
                 baseline: dict[str, str] | None = None) -> int:
    """Write the report of the runs at `paths` to `out_path`; returns the number of runs."""
    runs = load_runs(paths)
    text = render_html(_finite(report_data(runs, group_by, baseline)))
    from loadforge.present.outputs import write_output

    write_output(out_path, text, "--html")
    return len(runs)
