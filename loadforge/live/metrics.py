"""`--metrics`: the live figures as Prometheus text at `/metrics`.

Written by hand (about fifty lines) rather than with prometheus_client: the figures already
exist as totals in state.LiveRun, a scrape only formats them, and no registry of the
library's own outlives a run. Both formats Prometheus asks for are served: OpenMetrics 1.0
when the scrape's Accept header offers it (Prometheus does), else the classic text format
0.0.4 (curl, older scrapers). The two differ here only in a counter's TYPE line naming the
family without `_total` and in the closing `# EOF`.

    loadforge_requests_total{stage,name,outcome}   counter  responses and failures
    loadforge_latency_seconds{stage,name}          histogram  successful responses, from the
                                                   intended send (latency_us of the summary)
    loadforge_target_rps / loadforge_achieved_rps  gauge    the latest interval's
    loadforge_scheduled_total / loadforge_unsent_total  counter  arrivals due / never sent
    loadforge_backend_responses_total{backend}     counter  responses by backend
    loadforge_slo_ok{objective}                    gauge    1 while the objective holds
    loadforge_run_info{run_id,profile}             gauge    1; loadforge_run_finished 0 / 1
"""

from __future__ import annotations

from typing import Any

from loadforge.live.state import LATENCY_BUCKETS_S, LiveRun

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT = "text/plain; version=0.0.4; charset=utf-8"


def content_type(accept: str | None) -> str:
    return OPENMETRICS if accept and "application/openmetrics-text" in accept else TEXT


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(run: LiveRun | None, openmetrics: bool) -> str:
    """The exposition of `run` (None before the first run starts: no samples)."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        # OpenMetrics names a counter's family without the _total of its samples.
        shown = name.removesuffix("_total") if openmetrics and kind == "counter" else name
        lines.append(f"# HELP {shown} {help_text}")
        lines.append(f"# TYPE {shown} {kind}")

    if run is not None:
        family("loadforge_run_info", "gauge", "The run being measured (value 1).")
        lines.append(f"loadforge_run_info{_labels(run_id=run.run_id, profile=run.plan.name)} 1")
        family("loadforge_run_finished", "gauge", "1 once the run has ended.")
        lines.append(f"loadforge_run_finished {1 if run.summary is not None else 0}")
        family("loadforge_requests_total", "counter",
               "Responses by status class and failures by kind.")
        for (stage, name, outcome), n in sorted(run.counts.items()):
            lines.append(f"loadforge_requests_total"
                         f"{_labels(stage=stage, name=name, outcome=outcome)} {n}")
        family("loadforge_latency_seconds", "histogram",
               "Latency of successful responses, from the intended send.")
        for (stage, name), acc in sorted(run.buckets.items()):
            cumulative = 0.0
            for le, in_bucket in zip((*map(repr, LATENCY_BUCKETS_S), "+Inf"), acc[:-1], strict=True):
                cumulative += in_bucket
                lines.append(f"loadforge_latency_seconds_bucket"
                             f"{_labels(stage=stage, name=name, le=le)} {_number(cumulative)}")
            lines.append(f"loadforge_latency_seconds_count{_labels(stage=stage, name=name)} "
                         f"{_number(cumulative)}")
            lines.append(f"loadforge_latency_seconds_sum{_labels(stage=stage, name=name)} "
                         f"{_number(round(acc[-1], 6))}")
        last: dict[str, Any] = run.last or {}
        family("loadforge_target_rps", "gauge",
               "Target rate of the latest interval (absent in a closed-model stage).")
        if last.get("target_rps") is not None:
            lines.append(f"loadforge_target_rps {_number(round(last['target_rps'], 3))}")
        family("loadforge_achieved_rps", "gauge", "Responses per second, latest interval.")
        if last:
            lines.append(f"loadforge_achieved_rps {_number(round(last['achieved_rps'], 3))}")
        family("loadforge_scheduled_total", "counter", "Open-model arrivals due so far.")
        lines.append(f"loadforge_scheduled_total {run.scheduled}")
        family("loadforge_unsent_total", "counter",
               "Arrivals that could not be sent by the end of their stage.")
        lines.append(f"loadforge_unsent_total {run.unsent}")
        family("loadforge_backend_responses_total", "counter",
               "Responses by the backend that served them (--backend-header).")
        for backend, n in sorted(run.by_backend.items()):
            lines.append(f"loadforge_backend_responses_total{_labels(backend=backend)} {n}")
        family("loadforge_slo_ok", "gauge",
               "1 while the objective holds on the run so far, 0 once missed.")
        for verdict in run.verdicts:
            lines.append(f"loadforge_slo_ok{_labels(objective=str(verdict['name']))} "
                         f"{1 if verdict['ok'] else 0}")
    if openmetrics:
        lines.append("# EOF")
    return "\n".join(lines) + "\n"
