"""The rate-latency curve of a `loadforge capacity` search, as a table, with its answer."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def render_capacity(result: dict[str, Any], console: Console) -> None:
    table = Table(title="rate-latency curve (every step, by rate)", title_justify="left",
                  box=None, header_style="bold")
    for column in ("rate/s", "achieved/s", "p50", "p99", "errors", "unsent", "verdict"):
        table.add_column(column, justify="left" if column == "verdict" else "right")
    knee = result.get("knee_rps")
    marked = False
    for s in sorted(result["steps"], key=lambda s: s["rate_rps"]):
        lat = s["latency_us"]
        mark = ""
        if knee is not None and s["rate_rps"] == knee and not marked:
            mark, marked = "  <- knee", True
        table.add_row(f"{s['rate_rps']:,.1f}", f"{s['achieved_rps']:,.1f}",
                      f"{lat.get('p50', 0) / 1000:.1f}ms", f"{lat.get('p99', 0) / 1000:.1f}ms",
                      f"{s['error_rate']:.2%}", f"{s['unsent']:,}",
                      ("holds" if s["ok"] else "fails: " + ", ".join(s["failed"])) + mark)
    console.print(table)
    if result["capacity_rps"]:
        console.print(f"capacity: {result['capacity_rps']:,.1f} requests/s "
                      f"(limited by {result['limited_by']}; knee at {knee:,.1f}/s)"
                      if knee is not None else
                      f"capacity: {result['capacity_rps']:,.1f} requests/s "
                      f"(limited by {result['limited_by']})", highlight=False)
    else:
        console.print(f"capacity: none: the objectives fail at the first rate tried "
                      f"({result['limited_by']})", highlight=False)
    if result.get("result"):
        console.print(f"result: {result['result']}", highlight=False)
