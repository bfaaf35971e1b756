"""The command line: parses options and calls the library. Exit codes are DESIGN.md's:
0 ran and every SLO held, 1 an SLO or regression gate failed, 2 invalid input, 3 could not run.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

# Result tables are small (thousands of rows); pyarrow's default mimalloc pool kept 13-22 MB
# resident after reading one back, more the longer the run. The system allocator gives it back.
# Set before pyarrow is first imported, and only where the user has not chosen a pool.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

import click
from rich.console import Console

from loadforge import __version__
from loadforge.errors import InputError, LoadforgeError
from loadforge.plan import Plan, Request, Stage
from loadforge.units import parse_duration

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_RUN = 0, 1, 2, 3


class Group(click.Group):
    """Turns the library's errors into a message and the documented exit code, and click's
    usage errors into exit 2 (click's own code for them as well)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LoadforgeError as exc:
            Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
            sys.exit(exc.exit_code)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="loadforge")
def main() -> None:
    """Load tester and benchmark harness for HTTP services behind load balancers."""


def _wide_console() -> Console:
    """stdout for tables: a CI log or a pipe is no 80-column terminal, so don't wrap there."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--label {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _flag_plan(target: str | None, rate: float | None, concurrency: int | None,
               duration: str | None, connections: int | None, timeout: str) -> Plan:
    if not target:
        raise InputError("run: give a PROFILE, or --target URL with --duration")
    if duration is None:
        raise InputError("run --target: --duration is required without a profile (e.g. 30s)")
    if rate is not None and concurrency is not None:
        raise InputError("run: --rate (open model) and --concurrency (closed model) exclude "
                         "each other")
    if rate is not None and rate <= 0:
        raise InputError(f"--rate must be > 0, got {rate:g}")
    if concurrency is not None and concurrency < 1:
        raise InputError(f"--concurrency must be >= 1, got {concurrency}")
    seconds = parse_duration(duration, "--duration")
    from urllib.parse import urlsplit

    path, query = ("/", "") if target == "sandbox" else (urlsplit(target).path or "/",
                                                         urlsplit(target).query)
    if query:
        path = f"{path}?{query}"
    if rate is not None:
        stage = Stage("steady", seconds, rate_from=rate, rate_to=rate)
        conns = connections or 64
    else:
        conc = concurrency or connections or 50
        stage = Stage("steady", seconds, concurrency=conc)
        conns = max(conc, connections or 0)
    return Plan(name="adhoc", target=target, stages=(stage,), requests=(Request("default",
                path=path),), connections=conns, timeout_s=parse_duration(timeout, "--timeout"))


@main.command()
@click.argument("profile", required=False, type=click.Path(dir_okay=False))
@click.option("--target", help="Target URL (overrides the profile's); 'sandbox' for the "
              "embedded target.")
@click.option("--rate", type=float, help="Without a profile: requests per second (open model).")
@click.option("--concurrency", type=int, help="Without a profile: connections each sending "
              "back to back (closed model, like wrk).")
@click.option("--duration", help="Without a profile: how long, e.g. 30s.")
@click.option("--connections", type=int, help="Upper bound on open connections.")
@click.option("--timeout", default="5s", show_default=True, help="Without a profile: per-request "
              "timeout.")
@click.option("--timer-resolution", help="Open model: arrivals closer together than this "
              "share a wake-up and may be sent up to this late, counted in latency "
              "[default: 100us; 0 for exact sends at more CPU].")
@click.option("--requests-per-connection", type=int, help="Close each connection after this "
              "many responses (1: a new connection per request; 0: reuse) [default: the "
              "profile's, else 0].")
@click.option("--workers", type=int, help="Worker processes (default: the profile's, else one "
              "per core).")
@click.option("--out", "out_dir", default="results", show_default=True,
              help="Directory for the Parquet result.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Label stored with the result (repeatable).")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Write the summary here.")
@click.option("--backend-header", help="Attribute requests to backends by this response header "
              "(e.g. X-Served-By).")
@click.option("--no-preflight", is_flag=True, help="Skip the request sent before the run.")
@click.option("--quiet", "-q", is_flag=True, help="No live progress, no summary table.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False),
              help="Write the SLO verdicts as JUnit XML (one test case per objective).")
def run(profile: str | None, target: str | None, rate: float | None, concurrency: int | None,
        duration: str | None, connections: int | None, timeout: str,
        timer_resolution: str | None, requests_per_connection: int | None, workers: int | None,
        out_dir: str, labels: tuple[str, ...], summary_json: str | None,
        backend_header: str | None, no_preflight: bool, quiet: bool,
        junit_path: str | None) -> None:
    """Run a load test: `loadforge run PROFILE` or `loadforge run --target URL --rate R
    --duration D`."""
    from dataclasses import replace

    from loadforge import runner, summary
    from loadforge.profile import load_profile

    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    if connections is not None and connections < 1:
        raise InputError(f"--connections must be >= 1, got {connections}")
    if profile:
        if rate is not None or concurrency is not None or duration is not None:
            raise InputError("run: --rate, --concurrency and --duration apply only without a "
                             "profile; the profile's stages set the load")
        plan = load_profile(profile)
        if connections is not None:
            plan = replace(plan, connections=connections)
    else:
        plan = _flag_plan(target, rate, concurrency, duration, connections, timeout)
    if requests_per_connection is not None:
        if requests_per_connection < 0:
            raise InputError("--requests-per-connection must be >= 0, got "
                             f"{requests_per_connection}")
        plan = replace(plan, requests_per_connection=requests_per_connection)
    if timer_resolution is not None:
        plan = replace(plan, timer_resolution_s=parse_duration(
            timer_resolution, "--timer-resolution", allow_zero=True))
    console = Console(stderr=True)
    opts = runner.RunOptions(target=target, workers=workers, out_dir=out_dir,
                             labels=_labels(labels), quiet=quiet, preflight=not no_preflight,
                             backend_header=backend_header)
    outcome = runner.execute(plan, opts, console)
    if summary_json:
        summary.write_summary_json(outcome.summary, summary_json)
    if junit_path:
        from loadforge import slo

        slo.write_junit(junit_path, f"loadforge run {plan.name}",
                        slo.slo_cases(outcome.summary.get("slo", []), plan.name))
    if not quiet:
        summary.render_summary(outcome.summary, Console(),
                               {s.name for s in plan.stages if not s.open_model})
    if outcome.summary.get("aborted"):
        console.print(f"[bold red]aborted:[/] {outcome.summary['aborted']}", highlight=False)
    sys.exit(EXIT_OK if outcome.ok else EXIT_FAILED)


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]),
              default="table", show_default=True, help="Output format.")
@click.option("--fail-on", "fail_on", multiple=True, metavar="METRIC=±N(%|pp|ms)",
              help="Regression gate against the first (baseline) run, e.g. p99=+10%, "
              "error_rate=+0.1pp, achieved_rps=-5% (repeatable). A breach exits 1.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False),
              help="Write the gate checks as JUnit XML.")
def compare(runs: tuple[str, ...], fmt: str, fail_on: tuple[str, ...],
            junit_path: str | None) -> None:
    """Compare runs (Parquet files or directories) per stage against the first one."""
    from loadforge import compare as cmp
    from loadforge import slo

    gates = [cmp.parse_gate(spec) for spec in fail_on]
    figures = cmp.load_runs(list(runs))
    if len(figures) < 2 and gates:
        raise InputError(f"compare --fail-on: needs at least two runs, got {len(figures)}")
    data = cmp.comparison(figures)
    checks = cmp.check_gates(figures, gates)
    data["gates"] = checks
    data["ok"] = all(c["ok"] for c in checks)
    if junit_path:
        slo.write_junit(junit_path, "loadforge compare", cmp.gate_cases(checks))
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    elif fmt == "markdown":
        click.echo(cmp.render_markdown(data) + cmp.render_gates_markdown(checks))
    else:
        cmp.render_table(data, _wide_console())
    err = Console(stderr=True)
    for check in checks:
        if not check["ok"]:
            err.print(f"[bold red]regression:[/] {check['message']}", highlight=False,
                      soft_wrap=True)
    sys.exit(EXIT_OK if data["ok"] else EXIT_FAILED)


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--html", "html_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the self-contained HTML report.")
def report(runs: tuple[str, ...], html_path: str) -> None:
    """Plot runs (Parquet files or directories) into one offline HTML file; several runs are
    overlaid."""
    from loadforge.report import write_report

    count = write_report(list(runs), html_path)
    click.echo(f"report of {count} run{'s' if count != 1 else ''}: {html_path}")


@main.command()
@click.argument("run_path", metavar="RUN", type=click.Path())
@click.option("--hlog", "hlog_path", required=True, type=click.Path(dir_okay=False),
              help="Write an HdrHistogram interval log here (one tag per stage).")
def export(run_path: str, hlog_path: str) -> None:
    """Export a run's interval histograms (one Parquet file)."""
    from loadforge.export import write_hlog

    lines = write_hlog(run_path, hlog_path)
    click.echo(f"{lines} interval histograms: {hlog_path}")


@main.command(name="ls")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run instead.")
def ls_runs(paths: tuple[str, ...], as_json: bool) -> None:
    """List archived runs: time, profile, labels, achieved rate, p99, SLO verdict (the
    objectives of the archived profile, judged again from the file)."""
    from loadforge.archive import list_runs, render_ls

    entries, problems = list_runs(list(paths) or ["results"])
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry.as_json()))
    else:
        render_ls(entries, _wide_console())
    err = Console(stderr=True)
    for problem in problems:
        err.print(f"[bold red]error:[/] {problem}", highlight=False, soft_wrap=True)
    sys.exit(EXIT_INPUT if problems else EXIT_OK)


@main.command()
@click.option("--port", type=int, default=8080, show_default=True, help="Load balancer port.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="A TOML file with a [sandbox] table (a profile works).")
def sandbox(port: int, config_path: str | None) -> None:
    """Run the embedded target (load balancer, backends, autoscaler) in the foreground."""
    from loadforge.sandbox import run_foreground, validate_sandbox_config

    cfg: dict[str, Any] = {}
    if config_path:
        from loadforge.profile import load_profile

        cfg = load_profile(config_path).sandbox
    run_foreground(validate_sandbox_config(cfg), port)


if __name__ == "__main__":
    main()
