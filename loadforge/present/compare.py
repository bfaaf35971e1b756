"""`loadforge compare` shown: the tables per stage (terminal, markdown), the gates' lines,
the significance lines (analysis/compare.py computes them all)."""

from __future__ import annotations

import re
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from loadforge.analysis.compare import (
    ALL_STAGES,
    FIGURES,
    fmt_figure,
    fmt_pct,
    significant,
    sureness,
)
from loadforge.present.text import fits, print_table


def flow_lines(data: dict[str, Any]) -> list[str]:
    """Per check and per failed flow type: passed / failed in each run, baseline first."""
    flows = data.get("flows")
    if not flows:
        return []
    titles = [r["title"] for r in data["runs"]]
    lines = []
    names = list(dict.fromkeys(n for f in flows if f for n in f["checks"]))
    for name in names:
        cells = []
        for title, f in zip(titles, flows, strict=True):
            c = (f or {}).get("checks", {}).get(name)
            cells.append(f"{title} " + ("-" if c is None else
                                        f"{c['passed']:,} / {c['failed']:,}"))
        failed = any(((f or {}).get("checks", {}).get(name) or {}).get("failed") for f in flows)
        lines.append(f"{'✗' if failed else '✓'} check {name}: " + "; ".join(cells))
    kinds = list(dict.fromkeys((flow, kind) for f in flows if f
                               for flow, ks in f["failed_flows"].items() for kind in ks))
    for flow, kind in kinds:
        cells = [f"{title} {((f or {}).get('failed_flows', {}).get(flow) or {}).get(kind, 0):,}"
                 for title, f in zip(titles, flows, strict=True)]
        lines.append(f"✗ flow {flow} failed with {kind}: " + "; ".join(cells))
    return lines


def power_lines(data: dict[str, Any]) -> list[str]:
    """Per compared group, what its test can detect with the runs it has (one line)."""
    return [f"{g['title']}: {g['power']['line']}" for g in data.get("groups") or []
            if g.get("power")]


def noise_lines(data: dict[str, Any], stage: dict[str, Any]) -> list[str]:
    """Per compared group and figure: p and the interval, significant figures first. "No
    significant change" only where the test could have found one."""
    lines = []
    powers = [g.get("power") for g in data.get("groups") or []]
    for i, judged in enumerate(stage.get("noise") or []):
        if not judged:
            continue
        title = data["runs"][i]["title"]
        power = powers[i] if i < len(powers) else None
        order = sorted(judged.items(), key=lambda mj: not significant(mj[1]))
        if not any(significant(j) for j in judged.values()) and (power is None
                                                                  or power["can_decide"]):
            lines.append(f"{title}: no significant change in any figure")
        lines += [f"{title}: {m} {sureness(j, m)}" for m, j in order]
    return lines


def _delta_text(kind: str, d: float | None) -> str:
    if d is None:
        return ""
    return fmt_pct(d, "pp" if kind == "ratio" else "%")


def _cells(data: dict[str, Any], stage: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, label, kind in FIGURES:
        row = [label]
        for i, values in enumerate(stage["values"]):
            row.append(fmt_figure(kind, None if values is None else values[key]))
            if i:
                deltas = stage["deltas"][i]
                row.append(_delta_text(kind, None if deltas is None else deltas[key]))
        rows.append(row)
    return rows + scoped_cells(stage)


# (key, label, kind) of a request name's or a backend's figures (analysis/scoped.py).
SCOPE_FIGURES = (("requests", "requests", "count"), ("error_rate", "error rate", "ratio"),
                 ("p50", "p50", "us"), ("p99", "p99", "us"))


def _scoped_text(kind: str, value: float | None) -> str:
    if value is None:
        return "-"
    if kind == "count":
        return f"{value:,.0f}"
    if kind == "index":
        return f"{value:.3f}"
    return fmt_figure(kind, value)


def _scoped_delta(kind: str, base: float | None, value: float | None) -> str:
    if base is None or value is None:
        return ""
    if kind == "index":
        return f"{value - base:+.3f}"
    if kind == "ratio":
        return fmt_pct((value - base) * 100, "pp")
    if base == 0:
        return "" if value == 0 else "+inf%"
    return fmt_pct((value - base) / base * 100)


def scoped_cells(stage: dict[str, Any]) -> list[list[str]]:
    """Rows per backend (share, then its figures), the backends' fairness, and per request
    name, each with its value per run and Δ against the baseline: "" where none is."""
    per_run = stage.get("scoped")
    if not per_run:
        return []
    rows: list[list[str]] = []

    def add(label: str, kind: str, get: Any) -> None:
        values = [None if f is None else get(f) for f in per_run]
        row = [label]
        for i, v in enumerate(values):
            row.append(_scoped_text(kind, v))
            if i:
                row.append(_scoped_delta(kind, values[0], v))
        rows.append(row)

    backends = sorted({b for f in per_run if f for b in f["backends"]})
    for b in backends:
        add(f"backend {b} share", "ratio",
            lambda f, b=b: f["backends"].get(b, {}).get("share", 0.0))
        for key, label, kind in SCOPE_FIGURES:
            add(f"backend {b} {label}", kind,
                lambda f, b=b, key=key: f["backends"].get(b, {}).get(key))
    if backends:
        add("fairness (Jain)", "index", lambda f: f.get("fairness"))
    # A name nothing ran under in any run (an empty step:other) has no row.
    names = [n for n in dict.fromkeys(n for f in per_run if f for n in f["names"])
             if any(f and (f["names"].get(n, {}).get("requests") or
                           f["names"].get(n, {}).get("errors")) for f in per_run)]
    if len(names) > 1:
        for n in names:
            for key, label, kind in SCOPE_FIGURES:
                add(f"{n} {label}", kind, lambda f, n=n, key=key: f["names"].get(n, {}).get(key))
    return rows


def _headers(data: dict[str, Any]) -> list[str]:
    headers = ["figure"]
    for i, run in enumerate(data["runs"]):
        headers.append(f"{run['title']} (baseline)" if i == 0 else run["title"])
        if i:
            headers.append("Δ")
    return headers


def render_table(data: dict[str, Any], console: Console) -> None:
    tables = [_table(data, stage, _headers(data)) for stage in data["stages"]]
    if not all(fits(console, t) for t in tables):
        # Run titles (labels) too long for the terminal: number the runs in a legend above
        # and head the columns with the numbers, so that no figure is cut short.
        for i, run in enumerate(data["runs"]):
            console.print(Text(f"#{i + 1} {run['title']}" + (" (baseline)" if i == 0 else "")),
                          overflow="fold")
        headers = ["figure"]
        for i in range(len(data["runs"])):
            headers += [f"#{i + 1}"] + ([f"Δ #{i + 1}"] if i else [])
        tables = [_table(data, stage, headers) for stage in data["stages"]]
    for line in power_lines(data):
        console.print(Text(line), overflow="fold")
    for stage, table in zip(data["stages"], tables, strict=True):
        print_table(console, table)
        for line in noise_lines(data, stage):
            console.print(Text("  " + line), overflow="fold")
    for line in flow_lines(data):
        console.print(Text(line), overflow="fold")
    if data.get("groups") is None and len(data["runs"]) > 1:
        console.print(Text("one run on a side: no noise estimate; gates judge the change alone "
                           "(--group-by with several runs a side tests significance)"),
                      style="dim", overflow="fold")


def _table(data: dict[str, Any], stage: dict[str, Any], headers: list[str]) -> Table:
    # Titles and headers hold stage names and labels: Text, never rich markup.
    title = "all stages" if stage["stage"] == ALL_STAGES else f"stage {stage['stage']}"
    table = Table(box=box.SIMPLE_HEAD, title=Text(title), title_justify="left", pad_edge=False)
    for i, h in enumerate(headers):
        table.add_column(Text(h), justify="left" if i == 0 else "right", no_wrap=True)
    for row in _cells(data, stage):
        table.add_row(*(Text(c) for c in row))
    return table


def markdown_document(data: dict[str, Any], checks: list[dict[str, Any]]) -> str:
    """`compare --format markdown`: the tables, then the gates, each block apart from the
    next by a blank line (a line right after a table would be read as one more row)."""
    blocks = [render_markdown(data).strip("\n"), render_gates_markdown(checks).strip("\n"),
              "\n".join(f"Note: {markdown_text(n)}" for n in data.get("notes", []))]
    return "\n\n".join(b for b in blocks if b) + "\n"


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#!&])")


def markdown_text(text: str) -> str:
    """A user's string (a label, a stage name) as literal GitHub markdown: every character
    that could start markup, a table cell's end or an HTML tag is escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def render_markdown(data: dict[str, Any]) -> str:
    headers = [markdown_text(h) for h in _headers(data)]
    out = [f"- {markdown_text(line)}" for line in power_lines(data)]
    out += [""] if out else []
    for stage in data["stages"]:
        title = ("all stages" if stage["stage"] == ALL_STAGES
                 else f"stage {markdown_text(stage['stage'])}")
        out.append(f"#### {title}\n")
        out.append("| " + " | ".join(headers) + " |")
        out.append("|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|")
        for row in _cells(data, stage):
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        out.append("")
        lines = noise_lines(data, stage)
        if lines:
            out += [f"- {markdown_text(line)}" for line in lines] + [""]
    flows = flow_lines(data)
    if flows:
        out += [f"- {markdown_text(line)}" for line in flows] + [""]
    return "\n".join(out)


def render_gates_markdown(checks: list[dict[str, Any]]) -> str:
    failed = [c for c in checks if not c["ok"]]
    if not checks:
        return ""
    if not failed:
        return f"**Regression gates: all {len(checks)} checks passed.**\n"
    lines = [f"**Regression gates: {len(failed)} of {len(checks)} checks failed.**\n"]
    lines += [f"- :x: {markdown_text(c['message'])}" for c in failed]
    return "\n".join(lines) + "\n"
