"""The end of a run shown: the terminal tables and notes, the `--summary-json` file.

The figures themselves come from analysis/figures.py (`stats_block`, one fold of the rows). Target and achieved rates always appear side by side, and arrivals that were due
but never sent are shown, not dropped (DESIGN.md "Latency semantics").
"""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from loadforge.analysis.figures import (  # noqa: F401  (the figures this module shows)
    BUSY_CPU,
    NAME_LATENCY_KEYS,
    STATUS_CLASSES,
    connect_block,
    name_block,
    stats_block,
    unsent_cause,
)
from loadforge.config.outcomes import EXPECTED, UNEXPECTED
from loadforge.config.plan import ERROR_KINDS, GRPC_CODES, HTTP2_ERROR_KINDS
from loadforge.units import format_us

# Reports arrive some milliseconds after their interval ends; past this the run was seen late.
REPORT_LAG_WARN_MS = 1000.0


def _render_connections(c: dict[str, Any], console: Console) -> None:
    """One line: connections opened (and how long connecting took), failed, ended by either
    side, retried, the most open at once."""
    if not c:
        return
    ct = c.get("connect_time_us") or {}
    connect = (f" (connect p50 {format_us(ct['p50'])}, p99 {format_us(ct['p99'])})"
               if ct.get("count") else "")
    console.print(f"connections: {int(c.get('opened', 0)):,} opened{connect}, "
                  f"{int(c.get('failed', 0)):,} failed, "
                  f"{int(c.get('closed_by_server', 0)):,} closed by the server, "
                  f"{int(c.get('closed_by_us', 0)):,} by loadforge, "
                  f"{int(c.get('retried', 0)):,} requests retried, "
                  f"at most {int(c.get('open_peak', 0)):,} open", highlight=False, soft_wrap=True)
    zero = int(c.get("h2_zero_streams") or 0)
    if zero:
        console.print(f"HTTP/2: the server allowed no stream at all (SETTINGS_MAX_CONCURRENT_STREAMS"
                      f" = 0) on {zero:,} connection{'s' if zero != 1 else ''}: nothing could be "
                      "sent on them", style="bold red", highlight=False, soft_wrap=True)


def _render_tls(tls: dict[str, Any] | None, c: dict[str, Any], console: Console) -> None:
    """One line for an https:// run: what was negotiated, handshakes full and resumed and how
    long they took; and a warning when verification was off."""
    if not tls:
        return
    hs = c.get("tls_handshakes") or {}
    ht = c.get("tls_handshake_us") or {}
    took = (f" (p50 {format_us(ht['p50'])}, p99 {format_us(ht['p99'])})"
            if ht.get("count") else "")
    negotiated = ", ".join(str(tls[k]) for k in ("protocol", "cipher") if tls.get(k))
    alpn = f", ALPN {tls['alpn']}" if tls.get("alpn") else ""
    console.print(f"tls: {negotiated or 'no handshake completed'}{alpn}; handshakes "
                  f"{int(hs.get('full', 0)):,} full, {int(hs.get('resumed', 0)):,} resumed, "
                  f"{int(hs.get('failed', 0)):,} failed{took}", highlight=False, soft_wrap=True)
    if not tls.get("verify", True):
        console.print("tls: the server's certificate was NOT verified (--insecure)",
                      style="bold red", highlight=False)


def _format_rps(rps: float) -> str:
    return f"{rps:.1f}" if rps < 999.95 else f"{rps:,.0f}"    # never 1000.0 beside 1,000


def _format_slo_value(name: str, value: Any, unit: str | None) -> str:
    if value is None:
        return "-"
    if not isinstance(value, int | float):
        return str(value)
    kind = unit or ("ratio" if "rate" in name else "us")
    if kind == "ratio":
        return f"{value * 100:.3g}%"
    if kind == "us":
        return format_us(value)
    return f"{value:g}"


def _scope_rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [(str(stage.get("name", "?")), stage) for stage in summary.get("stages", [])]
    rows.append(("all", summary))
    return rows


def render_summary(
    summary: dict[str, Any], console: Console, closed_model_stages: set[str] | None = None
) -> None:
    """Print the end-of-run tables, notes and SLO verdicts. Plain text on a non-terminal."""
    closed = set(closed_model_stages or ())
    scopes = _scope_rows(summary)

    # Three narrow tables rather than one wide one: CI logs and pipes render at 80 columns.
    def table(title: str, headers: tuple[str, ...]) -> Table:
        # At least as wide as its title, which rich would otherwise fold to the columns' width.
        t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False,
                  padding=(0, 1), collapse_padding=True, min_width=len(title))
        for header in headers:
            t.add_column(header, justify="left" if header in ("stage", "request") else "right",
                         no_wrap=True)
        return t

    def stage_cell(name: str) -> Text:
        return Text(name + (" *" if name in closed else ""), style="bold" if name == "all" else "")

    # A scripted-flow run counts flows in the headline (scheduled, completed and achieved
    # against the target are all flows; err %: failed flows) and its steps apart.
    flow_run = any("flow_totals" in block for _, block in scopes)
    rates = table(
        "loadforge run " + str(summary.get("run_id", "")) + (" (flows)" if flow_run else ""),
        ("stage", "scheduled", "completed", "unsent", "target/s", "achieved/s", "err %"),
    )
    steps = table("steps (the requests of the flows)",
                  ("stage", "requests", "achieved/s", "errors", "err %"))
    for name, block in scopes:
        unsent = int(block.get("unsent", 0))
        error_rate = float(block.get("error_rate", 0.0))
        flows = block.get("flow_totals") or {}
        completed = int(flows.get("completed", 0) if flow_run else block.get("requests", 0))
        scheduled = int(block.get("scheduled", 0))
        if flow_run:
            failure_rate = float(flows.get("failure_rate", 0.0))
            if int(block.get("requests", 0)) or int(block.get("errors", 0)):
                steps.add_row(stage_cell(name), f"{int(block.get('requests', 0)):,}",
                              _format_rps(float(block.get("achieved_rps", 0.0))),
                              f"{int(block.get('errors', 0)):,}",
                              Text(f"{error_rate * 100:.3g}", style="red" if error_rate else ""))
            error_rate = failure_rate
        if not (scheduled or completed or unsent or int(flows.get("failed", 0))
                or int(block.get("sent", 0))):
            continue                      # no empty rows: a stage nothing ran in
        rates.add_row(
            stage_cell(name),
            f"{scheduled:,}",
            f"{completed:,}",
            Text(f"{unsent:,}", style="bold red" if unsent else ""),
            "-" if block.get("target_rps") is None else _format_rps(float(block["target_rps"])),
            _format_rps(float(flows.get("achieved_rps", 0.0)) if flow_run
                        else float(block.get("achieved_rps", 0.0))),
            Text(f"{error_rate * 100:.3g}", style="red" if error_rate else ""),
        )
    console.print(rates)
    if flow_run:
        console.print(steps)

    latency = table(
        "latency of successful responses, from intended send time",
        ("stage", "p50", "p90", "p99", "p99.9", "max", "mean"),
    )
    for name, block in scopes:
        lat = block.get("latency_us", {})
        latency.add_row(
            stage_cell(name),
            *(format_us(lat.get(k, 0)) for k in ("p50", "p90", "p99", "p999", "max", "mean")),
        )
    console.print(latency)

    # a request's expect_status verdicts (config/outcomes.py) where the run has them
    classes = [*STATUS_CLASSES] + ([EXPECTED] if any(EXPECTED in block.get("status", {})
                                                     for _, block in scopes) else [])
    responses = table("responses by status class", ("stage", *classes))
    connection_kinds = [k for k in ERROR_KINDS if k not in HTTP2_ERROR_KINDS] + (
        [UNEXPECTED] if any(UNEXPECTED in block.get("errors_by_kind", {}) for _, block in scopes)
        else [])
    # HTTP/2's stream-level kinds in a table of their own, when the run has them: eight
    # columns would not fit 80
    stream_kinds = [k for k in HTTP2_ERROR_KINDS
                    if any(k in block.get("errors_by_kind", {}) for _, block in scopes)]
    failures = table("failures (errors: these plus failing statuses)",
                     ("stage", *connection_kinds, "errors"))
    streams = table("HTTP/2 stream failures (in errors too)", ("stage", *stream_kinds))
    for name, block in scopes:
        status = block.get("status", {})
        kinds = block.get("errors_by_kind", {})
        errors = int(block.get("errors", 0))
        responses.add_row(stage_cell(name), *(f"{int(status.get(c, 0)):,}" for c in classes))
        failures.add_row(
            stage_cell(name),
            *(f"{int(kinds.get(k, 0)):,}" for k in connection_kinds),
            Text(f"{errors:,}", style="red" if errors else ""),
        )
        streams.add_row(stage_cell(name), *(f"{int(kinds.get(k, 0)):,}" for k in stream_kinds))
    console.print(responses)
    # gRPC calls by grpc-status (their HTTP status is no status class): the codes seen
    codes = [c for c in GRPC_CODES if any(c in block.get("grpc_status", {}) for _, block in scopes)]
    if codes:
        calls = table("gRPC calls by status", ("stage", *codes))
        for name, block in scopes:
            seen = block.get("grpc_status", {})
            calls.add_row(stage_cell(name), *(f"{int(seen.get(c, 0)):,}" for c in codes))
        console.print(calls)
    console.print(failures)
    if stream_kinds:
        console.print(streams)
    _render_error_latency(summary, console)
    _render_by_name(summary, console, table)
    _render_checks(summary, console)
    _render_shards(summary, console, table)

    if closed:
        console.print(
            "* closed model (" + ", ".join(sorted(closed)) + "): latency there is service "
            "time, there being no intended send time at fixed concurrency.",
            highlight=False, markup=False,     # stage names are the user's text
        )

    unsent_total = int(summary.get("unsent", 0))
    if unsent_total:
        per_stage = ", ".join(
            f"{name} {int(block.get('unsent', 0)):,}"
            for name, block in scopes[:-1]
            if int(block.get("unsent", 0))
        )
        message = Text(
            f"UNSENT: {unsent_total:,} arrivals were due but never sent"
            + (f" ({per_stage})" if per_stage else "")
            + ": " + _UNSENT_CAUSES.get(str(summary.get("unsent_cause")), _UNSENT_CAUSES["connections"])
            + "; achieved rate and latency describe less load than the profile asked for.",
            style="bold red",
        )
        console.print(message)
    if not summary.get("simulated"):
        # a simulation (loadforge simulate) opens no connection: no line of zeros
        _render_connections(summary.get("connections") or {}, console)
    _render_tls(summary.get("tls"), summary.get("connections") or {}, console)
    lag_ms = float(summary.get("report_lag_ms") or 0.0)
    if lag_ms > REPORT_LAG_WARN_MS:
        console.print(f"the coordinator was late: interval reports reached it up to "
                      f"{lag_ms / 1000:.1f} s after their interval (a busy machine); the live "
                      "view and abort_after acted that late, the latencies are unaffected",
                      highlight=False, soft_wrap=True)
    preflight = summary.get("preflight") or {}
    if preflight.get("requests"):
        console.print(f"preflight: {int(preflight['requests'])} request before the run "
                      "(the target saw it; not counted above)", highlight=False)

    from loadforge.present.scaling import render_scaling  # backends, scaling, actions

    render_scaling(summary, console)

    if summary.get("result"):
        # One line, so that the path can be copied whole.
        console.print(f"results: {summary['result']}", highlight=False, markup=False,
                      soft_wrap=True)

    slos = summary.get("slo") or []
    if slos:
        console.print(Text("SLO", style="bold"))
        for slo in slos:
            name = str(slo.get("name", "?"))
            unit = slo.get("unit")
            ok = bool(slo.get("ok"))
            line = Text("  ")
            line.append("✓" if ok else "✗", style="bold green" if ok else "bold red")
            line.append(
                f" {name}: observed {_format_slo_value(name, slo.get('observed'), unit)}, "
                f"limit {_format_slo_value(name, slo.get('limit'), unit)}"
            )
            if slo.get("note"):
                # why the observation reads as it does: a stage that never recovered (observed
                # as its whole length), a scope with no data
                line.append(f" ({slo['note']})", style="dim")
            console.print(line)


_UNSENT_CAUSES = {
    "connections": "every connection was busy waiting on the target (raise `connections`, "
                   "or the target is saturated)",
    "cpu": "the load generator was short of CPU (arrivals were overdue while connections "
           "were free; use more workers or fewer other processes)",
}


def _render_error_latency(summary: dict[str, Any], console: Console) -> None:
    """One line on the failures' own latency, when there were any: the tables above are over
    successful responses only."""
    errors = int(summary.get("errors", 0))
    if not errors:
        return
    lat = summary.get("error_latency_us") or {}
    console.print(
        f"errors: {errors:,}, their own latency p50 {format_us(lat.get('p50', 0))} "
        f"p90 {format_us(lat.get('p90', 0))} p99 {format_us(lat.get('p99', 0))} "
        f"max {format_us(lat.get('max', 0))}", highlight=False)


def _render_by_name(summary: dict[str, Any], console: Console, table: Any) -> None:
    by_name = summary.get("requests_by_name") or {}
    if not by_name:
        return
    names = table("requests by name (latency of successful responses)",
                  ("request", "completed", "errors", "p50", "p90", "p99"))
    for name, entry in by_name.items():
        lat = entry.get("latency_us") or {}
        errors = int(entry.get("errors", 0))
        if not errors and not int(entry.get("requests", 0)):
            continue                  # a name nothing ran under (an unused step:other)
        names.add_row(Text(str(name)), f"{int(entry.get('requests', 0)):,}",
                      Text(f"{errors:,}", style="red" if errors else ""),
                      *(format_us(lat.get(k, 0)) for k in NAME_LATENCY_KEYS))
    console.print(names)


def _render_checks(summary: dict[str, Any], console: Console) -> None:
    """Scripted flows: flows apart from their steps, each check's passed / failed, and the
    failed flows by exception type with one sample message."""
    flows = summary.get("flows")
    if not flows:
        return
    by_name = summary.get("requests_by_name") or {}
    runs = {n[len("flow:"):]: e for n, e in by_name.items() if n.startswith("flow:")}
    if runs:
        done = sum(int(e.get("requests", 0)) for e in runs.values())
        failed = sum(int(e.get("errors", 0)) for e in runs.values())
        steps = sum(int(e.get("requests", 0)) for n, e in by_name.items()
                    if not n.startswith("flow:"))
        scheduled = int(summary.get("scheduled", 0))
        console.print(Text(f"flows: {scheduled:,} scheduled, {done:,} completed, {failed:,} "
                           f"failed; their {steps:,} step requests are counted apart (steps)"),
                      soft_wrap=True)
    checks = flows.get("checks") or {}
    if checks:
        console.print(Text("checks", style="bold"))
        width = max(len(str(n)) for n in checks)
        for name, counts in checks.items():
            passed, failed = int(counts.get("passed", 0)), int(counts.get("failed", 0))
            total = passed + failed
            line = Text("  ")
            line.append("✗" if failed else "✓", style="bold red" if failed else "bold green")
            line.append(f" {str(name):<{width}}  {passed:,} / {failed:,}"
                        + (f"  ({passed / total * 100:.3g}% passed)" if total else ""))
            console.print(line, soft_wrap=True)
    samples = flows.get("failed_flow_samples") or {}
    for flow, kinds in (flows.get("failed_flows") or {}).items():
        for kind, n in kinds.items():
            sample = (samples.get(flow) or {}).get(kind)
            line = Text("  ")
            line.append("✗", style="bold red")
            line.append(f" flow {flow} failed {int(n):,}× with {kind}"
                        + (f": {sample}" if sample else ""))
            console.print(line, soft_wrap=True)


def _render_shards(summary: dict[str, Any], console: Console, table: Any) -> None:
    """A sharded run: what each shard sent, and its clock against the coordinator's."""
    shards = summary.get("shards") or []
    if not shards:
        return
    t = table("shards (clock offset: the shard's minus the coordinator's)",
              ("shard", "scheduled", "completed", "unsent", "achieved/s", "offset", "delay"))
    for entry in shards:
        unsent = int(entry.get("unsent", 0))
        t.add_row(str(entry.get("index", "?")), f"{int(entry.get('scheduled', 0)):,}",
                  f"{int(entry.get('requests', 0)):,}",
                  Text(f"{unsent:,}", style="bold red" if unsent else ""),
                  _format_rps(float(entry.get("achieved_rps", 0.0))),
                  f"{float(entry.get('offset_ms', 0.0)):+.2f}ms",
                  f"{float(entry.get('delay_ms', 0.0)):.2f}ms")
    console.print(t)


def write_summary_json(summary: dict[str, Any], path: str) -> None:
    """Write the summary as JSON to `path` (outputs.write_output: "-" is stdout)."""
    from loadforge.present.outputs import write_output

    write_output(path, json.dumps(summary, indent=2, sort_keys=False) + "\n", "--summary-json")
