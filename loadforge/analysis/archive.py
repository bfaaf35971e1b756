"""`loadforge ls DIR`: the runs of an archive directory, one line each.

The verdict is recomputed from the file itself: the profile archived in the metadata gives the
objectives, the interval rows give the figures (slo.evaluate, the very code `run` uses). So a
result file never needs rewriting after it is closed, and a directory of results carries its
verdicts with it whatever tool copied it around. The price is a full read per file, which `ls`
pays for tens of runs in well under a second each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from loadforge.analysis import scaling, slo
from loadforge.analysis.figures import run_figures, run_title
from loadforge.errors import ResultsError
from loadforge.results.store import read_result


@dataclass
class RunEntry:
    path: str
    run_id: str
    start_time: str
    profile: str
    labels: dict[str, str]
    target_rps: float | None       # None: every stage closed-model, no target
    achieved_rps: float
    p99_us: float
    error_rate: float
    verdict: str              # "pass", "FAIL n/m", or "-" (no objectives)
    failed: list[str]
    p50_us: float = 0.0            # with p99_us: over the successful responses

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _files(paths: list[str]) -> tuple[list[str], list[str]]:
    files, problems = [], []
    for given in paths:
        if os.path.isdir(given):
            found = sorted(os.path.join(given, e) for e in os.listdir(given)
                           if e.endswith(".parquet") and os.path.isfile(os.path.join(given, e)))
            if not found:
                problems.append(f"results {given}: directory holds no .parquet files")
            files += found
        elif os.path.exists(given):
            files.append(given)
        else:
            problems.append(f"results {given}: no such file or directory")
    return files, problems


def list_runs(paths: list[str]) -> tuple[list[RunEntry], list[str]]:
    """Entries of the readable runs (oldest first) and a message per unreadable file."""
    files, problems = _files(paths)
    entries = []
    for path in files:
        try:
            result = read_result(path)
            figures = run_figures(result, run_title(result))
            values = figures.run.values()
            plan = slo.plan_of_result(result)
            verdicts = (slo.evaluate(plan, result) + scaling.analyze(plan, result)["slo"]
                        if plan is not None else [])
        except ResultsError as exc:
            problems.append(str(exc))
            continue
        failed = [v["name"] for v in verdicts if not v["ok"]]
        verdict = "-" if not verdicts else ("pass" if not failed else
                                            f"FAIL {len(failed)}/{len(verdicts)}")
        entries.append(RunEntry(
            path=path, run_id=result.run_id,
            start_time=result.metadata.get("start_time", ""),
            profile=result.metadata.get("profile_name", ""), labels=result.labels,
            target_rps=values["target_rps"], achieved_rps=float(values["achieved_rps"] or 0),
            p99_us=float(values["p99"] or 0), error_rate=float(values["error_rate"] or 0),
            verdict=verdict,
            failed=failed, p50_us=float(values["p50"] or 0)))
    entries.sort(key=lambda e: (e.start_time, e.path))
    return entries, problems


def _when(start_time: str) -> str:
    try:
        return datetime.fromisoformat(start_time).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return start_time or "?"


def render_ls(entries: list[RunEntry], console: Console) -> None:
    from loadforge.present.text import fits, print_table

    table = _ls_table(entries, narrow=False)
    if not fits(console, table):
        # A terminal too narrow for one line per run: profile, labels and file stack in one
        # column that wraps, so that the numbers keep their width.
        table = _ls_table(entries, narrow=True)
    print_table(console, table)


def _ls_table(entries: list[RunEntry], *, narrow: bool) -> Table:
    from loadforge.present.summary import format_us

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
