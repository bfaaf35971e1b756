"""The commands that read results: `compare` (with its regression gates), `report`,
`export`, `ls` and `trend`."""

from __future__ import annotations

import json
import sys

import click

from loadforge.cli.app import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    main,
    one_stdout_output,
    parse_labels,
    wide_console,
)
from loadforge.errors import InputError


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]),
              default="table", show_default=True, help="Output format.")
@click.option("--fail-on", "fail_on", multiple=True,
              metavar="METRIC[SCOPE]=±N(%|pp|us|ms|s)[,±N…]",
              help="Regression gate against the first (baseline) run, e.g. p99=+10%, "
              "error_rate=+0.1pp, achieved_rps=-5%, p99=+10%,+1ms; of one request name or "
              "backend: p99[/slow]=+10%, share[b3]=+5pp, share[*]=+5pp (every backend); "
              "fairness=-0.05 (Jain's index of the backends' shares); scaling verdicts: "
              "time_to_recover=+20s, peak_replicas=+1. Repeatable; a breach exits 1.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False),
              help="Write the gate checks as JUnit XML.")
@click.option("--group-by", "group_by", multiple=True, metavar="LABEL",
              help="Compare groups of runs that share this label's value (repeatable): "
              "pooled figures, a U test's p-value and a bootstrap interval per change; a gate "
              "fails only on a significant change.")
@click.option("--baseline", "baseline", multiple=True, metavar="LABEL=VALUE",
              help="With --group-by: the baseline group (default: the first run's).")
def compare(runs: tuple[str, ...], fmt: str, fail_on: tuple[str, ...],
            junit_path: str | None, group_by: tuple[str, ...], baseline: tuple[str, ...]
            ) -> None:
    """Compare runs (Parquet files or directories) per stage against the first one, or groups
    of runs (--group-by) against a baseline group."""
    from loadforge.analysis import compare as cmp
    from loadforge.analysis import scaling_gates as sg
    from loadforge.present import compare as shown
    from loadforge.present import junit
    from loadforge.present.text import print_error

    junit_on_stdout = one_stdout_output(("--junit", junit_path))
    gates = [cmp.parse_gate(spec) for spec in fail_on if not sg.is_scaling_gate(spec)]
    scaling_gates = [sg.parse_scaling_gate(spec) for spec in fail_on if sg.is_scaling_gate(spec)]
    if baseline and not group_by:
        raise InputError("compare --baseline: needs --group-by (which labels make a group)")
    figures = cmp.load_runs(list(runs))
    groups = significance = None
    if group_by:
        groups = cmp.group_runs(figures, list(group_by), parse_labels(baseline, "--baseline"))
        figures = [g.pooled for g in groups]
        significance = cmp.group_noise(groups, cmp.stage_names(figures))
    if len(figures) < 2 and (gates or scaling_gates):
        what = "groups" if group_by else "runs"
        raise InputError(f"compare --fail-on: needs at least two {what}, got {len(figures)}")
    scoped_figs = cmp.scoped_figures(figures, groups)
    data = cmp.comparison(figures, groups, significance, scoped_figs)
    checks = cmp.check_gates(figures, gates, significance, scoped_figs)
    # Scaling verdicts (time to recover, replicas, ...), per run: not pooled over groups.
    scaling = (sg.scaling_comparison(figures)
               if not group_by and (scaling_gates or sg.has_replicas(figures)) else None)
    if scaling is not None:
        data["scaling"] = scaling
        checks += sg.check_scaling_gates(figures, scaling_gates, scaling)
    data["gates"] = checks
    data["ok"] = all(c["ok"] for c in checks)
    if junit_path:
        junit.write_junit(junit_path, "loadforge compare", junit.gate_cases(checks))
    if fmt == "json":
        click.echo(json.dumps(data, indent=2), err=junit_on_stdout)
    elif fmt == "markdown":
        click.echo(shown.markdown_document(data, checks), nl=False, err=junit_on_stdout)
    else:
        from rich.console import Console

        table_console = Console(stderr=True) if junit_on_stdout else wide_console()
        shown.render_table(data, table_console)
        if scaling is not None:
            sg.render_scaling(scaling, table_console)
    for note in data.get("notes", []):
        click.echo(f"note: {note}", err=True)
    for check in checks:
        if not check["ok"]:
            print_error(check["message"], "regression")
    sys.exit(EXIT_OK if data["ok"] else EXIT_FAILED)


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--html", "html_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the self-contained HTML report.")
@click.option("--group-by", "group_by", multiple=True, metavar="LABEL",
              help="Compare groups of runs as `compare --group-by` does (repeatable).")
@click.option("--baseline", "baseline", multiple=True, metavar="LABEL=VALUE",
              help="With --group-by: the baseline group.")
def report(runs: tuple[str, ...], html_path: str, group_by: tuple[str, ...],
           baseline: tuple[str, ...]) -> None:
    """Plot runs (Parquet files or directories) into one offline HTML file; several runs are
    overlaid, compared (with intervals, by groups) and, from three on, followed as a trend."""
    from loadforge.present.report import write_report

    if baseline and not group_by:
        raise InputError("report --baseline: needs --group-by (which labels make a group)")
    count = write_report(list(runs), html_path, list(group_by),
                         parse_labels(baseline, "--baseline"))
    click.echo(f"report of {count} run{'s' if count != 1 else ''}: {html_path}",
               err=html_path == "-")


@main.command()
@click.argument("run_path", metavar="RUN", type=click.Path())
@click.option("--hlog", "hlog_path", required=True, type=click.Path(dir_okay=False),
              help="Write an HdrHistogram interval log here (one tag per stage).")
def export(run_path: str, hlog_path: str) -> None:
    """Export a run's interval histograms (one Parquet file)."""
    from loadforge.present.export import write_hlog

    lines = write_hlog(run_path, hlog_path)
    click.echo(f"{lines} interval histograms: {hlog_path}", err=hlog_path == "-")


@main.command(name="ls")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run instead.")
def ls_runs(paths: tuple[str, ...], as_json: bool) -> None:
    """List archived runs: time, profile, labels, achieved rate, p99, SLO verdict (the
    objectives of the archived profile, judged again from the file)."""
    from loadforge.analysis.archive import list_runs
    from loadforge.present.archive import render_ls
    from loadforge.present.text import print_error

    entries, problems = list_runs(list(paths) or ["results"])
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry.as_json()))
    elif entries or not problems:
        # Nothing readable: the errors alone, no empty table above them.
        render_ls(entries, wide_console())
    for problem in problems:
        print_error(problem)
    sys.exit(EXIT_INPUT if problems else EXIT_OK)


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--metric", "metrics", multiple=True, default=("p99",), show_default=True,
              help="Figure to follow: p50 p90 p99 p999 max mean error_rate achieved_rps "
              "(repeatable).")
@click.option("--by", "by", multiple=True, metavar="LABEL",
              help="Follow each value of this label on its own (repeatable).")
@click.option("--stage", default="all", show_default=True,
              help="A stage's figures instead of the whole run's.")
@click.option("--min-runs", "min_size", type=click.IntRange(1, 1000), default=3,
              show_default=True, help="Fewest runs between two shifts.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="csv: one row per run, as Apache Otava reads it.")
def trend(runs: tuple[str, ...], metrics: tuple[str, ...], by: tuple[str, ...], stage: str,
          min_size: int, fmt: str) -> None:
    """Find where a metric shifted over an archive of runs (E-divisive change points)."""
    from loadforge.analysis import trend as tr
    from loadforge.present import trend as trend_shown

    figures, series = tr.trend(list(runs), list(metrics), list(by), stage, min_size)
    if fmt == "csv":
        click.echo(trend_shown.render_csv(figures, stage), nl=False)
    elif fmt == "json":
        click.echo(json.dumps([s.as_json() for s in series], indent=2))
    else:
        click.echo(trend_shown.render_text(series))

