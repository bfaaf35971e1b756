"""`loadforge ls` in the terminal: one line per run (analysis/archive.py lists them)."""

from __future__ import annotations

import os
from datetime import datetime

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from loadforge.analysis.archive import RunEntry
from loadforge.present.text import fits, print_table
from loadforge.units import format_us


def _when(start_time: str) -> str:
    try:
        return datetime.fromisoformat(start_time).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return start_time or "?"


def render_ls(entries: list[RunEntry], console: Console) -> None:
    table = _ls_table(entries, narrow=False)
    if not fits(console, table):
        # A terminal too narrow for one line per run: profile, labels and file stack in one
        # column that wraps, so that the numbers keep their width.
        table = _ls_table(entries, narrow=True)
    print_table(console, table)


def _ls_table(entries: list[RunEntry], *, narrow: bool) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    text_columns = (("run",) if narrow else ("started (UTC)", "profile", "labels"))
    for header in text_columns:
        table.add_column(header, no_wrap=header == "started (UTC)", overflow="fold",
                         min_width=12 if narrow else None)
    for header in ("target/s", "achieved/s", "p99", "err %"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("SLO", no_wrap=True)
    if not narrow:
        table.add_column("file", no_wrap=True)
    for e in entries:
        style = "bold red" if e.verdict.startswith("FAIL") else "green" if e.verdict == "pass" else ""
        labels = " ".join(f"{k}={v}" for k, v in sorted(e.labels.items()))
        # User strings (profile names, labels) as Text: never read as rich markup.
        text = ([Text("\n".join(x for x in (f"{_when(e.start_time)}  {e.profile}", labels,
                                             os.path.basename(e.path)) if x))]
                if narrow else [Text(_when(e.start_time)), Text(e.profile), Text(labels)])
        table.add_row(
            *text,
            "-" if e.target_rps is None else f"{e.target_rps:,.1f}", f"{e.achieved_rps:,.1f}",
            format_us(e.p99_us),
            f"{e.error_rate * 100:.3g}", Text(e.verdict, style=style),
            *([] if narrow else [Text(os.path.basename(e.path))]))
    return table
