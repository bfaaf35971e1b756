"""The summary's scaling part in the terminal: backends and their shares, how each stage
recovered and scaled out, what each timed action cost (analysis/scaling.py's figures)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from loadforge.units import format_us


def render_scaling(summary: dict[str, Any], console: Any) -> None:
    """Backends table, scaling table and action lines of a summary (when it has them)."""
    def table(title: str, headers: tuple[str, ...]) -> Table:
        t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False,
                  padding=(0, 1), collapse_padding=True)
        for i, header in enumerate(headers):
            # Stage and backend names are the user's (and the servers') text, never markup.
            t.add_column(Text(header), justify="left" if i == 0 else "right", no_wrap=True)
        return t

    def seconds(value: Any) -> str:
        return "-" if value is None else f"{value:.3g}s"

    stages = summary.get("stages", [])
    backends = summary.get("backends") or {}
    if backends:
        shown = [s for s in stages if s.get("backends")][:4]
        t = table("backends (share of attributed responses)",
                  ("backend", "requests", "share", "p99", *(s["name"] for s in shown)))
        for name, b in backends.items():
            t.add_row(Text(name), f"{b['requests']:,}", f"{b['share'] * 100:.1f}%",
                      format_us(b["p99_us"]),
                      *(f"{s['backends'][name]['share'] * 100:.1f}%" if name in s["backends"]
                        else "-" for s in shown))
        console.print(t)
        fair = summary.get("fairness") or {}
        jain, ratio = fair.get("jain"), fair.get("max_min_ratio")
        console.print(f"fairness: Jain {'-' if jain is None else f'{jain:.3f}'}, max/min share "
                      f"{'-' if ratio is None else f'{ratio:.2f}'}"
                      + (f"; {summary['unattributed']:,} unattributed"
                         if summary.get("unattributed") else ""), highlight=False)
    if any(s.get("recovered") is not None or (s.get("scale_out") or {}).get("new_backends")
           or (s.get("scale_out") or {}).get("settle_s") is not None for s in stages):
        # Narrow headers: CI logs render at 80 columns (see present/summary.py).
        t = table("scaling (times from each stage's start)",
                  ("stage", "breach", "recovered", "burn", "new backend", "settled", "backends"))
        for s in stages:
            so = s.get("scale_out") or {}
            recover = ("never" if s.get("recovered") is False
                       else seconds(s.get("time_to_recover_s")))
            burn = s.get("error_budget_burn")
            counts = (f"{so.get('backends_start'):g}→{so.get('backends_end'):g}"
                      if so.get("backends_start") is not None
                      and so.get("backends_end") is not None else "-")
            t.add_row(Text(s["name"]), seconds(s.get("violation_s")), recover,
                      "-" if burn is None else f"{burn:.2f}",
                      seconds(so.get("first_new_backend_s")), seconds(so.get("settle_s")),
                      counts)
        console.print(t)
    for a in summary.get("actions") or []:
        f = a.get("failover") or {}
        line = (f"action at {a['started_s']:.1f}s {a['name']}: {'ok' if a['ok'] else 'FAILED'}; "
                f"{f.get('errors', 0):,} errors, failover {seconds(f.get('failover_s'))}")
        if "backend_out_s" in f:
            line += (f", {a['backend']} out after {seconds(f['backend_out_s'])}"
                     if f["backend_out_s"] is not None else f", {a['backend']} still serving")
        if f.get("backend_back_s") is not None:
            line += f", {a['backend']} back after {seconds(f['backend_back_s'])}"
        console.print(line, highlight=False, markup=False)
