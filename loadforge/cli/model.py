"""The modelled target: `sandbox` serves it (load balancer, backends, autoscaler), `simulate`
replays a profile's arrivals against it without sending a request."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from loadforge.cli.app import main, one_stdout_output, parse_labels
from loadforge.errors import InputError
from loadforge.units import parse_duration


@main.command()
@click.option("--port", type=int, default=8080, show_default=True, help="Load balancer port.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="A TOML file with a [sandbox] table (a profile works).")
@click.option("--admin-port", type=int, default=None,
              help="Admin and metrics port.  [default: --port + 1]")
def sandbox(port: int, config_path: str | None, admin_port: int | None) -> None:
    """Run the embedded target (load balancer, backends, autoscaler) in the foreground."""
    from loadforge.sandbox import run_foreground, validate_sandbox_config

    if not 1 <= port <= 65535:
        raise InputError(f"sandbox --port must be from 1 to 65535, got {port}")
    if admin_port is not None and not 1 <= admin_port <= 65535:
        raise InputError(f"sandbox --admin-port must be from 1 to 65535, got {admin_port}")
    cfg: dict[str, Any] = {}
    if config_path:
        from loadforge.sandbox.runner import load_config_file

        # A profile's [sandbox] table, or a file that holds only that table.
        cfg = load_config_file(config_path)
    where = f"{config_path}: sandbox" if config_path else "sandbox"
    base = os.path.dirname(os.path.abspath(config_path)) if config_path else None
    run_foreground(validate_sandbox_config(cfg, where, base_dir=base), port, admin_port)



def _replica_rps(text: str | None) -> float | None:
    """--replica-rps: a number, or a capacity result (Parquet or summary JSON) to read it from."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    if not os.path.isfile(text):
        raise InputError(f"simulate --replica-rps {text!r}: expected a number of requests per "
                         "second or a `loadforge capacity` result (.parquet or .json)")
    if text.endswith(".parquet"):
        from loadforge.results.store import read_result

        found = json.loads(read_result(text).metadata.get("capacity") or "{}")
    else:
        try:
            with open(text, encoding="utf-8") as f:
                found = json.load(f)
        except (OSError, ValueError) as exc:
            raise InputError(f"simulate --replica-rps {text}: cannot read it as JSON "
                             f"({exc})") from None
    value = found.get("capacity_rps") if isinstance(found, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise InputError(f"simulate --replica-rps {text}: not a capacity result with a "
                         "capacity_rps above 0")
    return float(value)


@main.command()
@click.argument("profile", type=click.Path(dir_okay=False))
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False),
              help="An autoscaling/v2 HorizontalPodAutoscaler manifest (YAML) [default: the "
              "profile's [sandbox.autoscale] hpa; without either the replicas stay fixed].")
@click.option("--replica-rps", "replica_rps_text", metavar="N|CAPACITY",
              help="Requests per second one replica serves at 100 % busy, or a `capacity` "
              "result (its Parquet file or --summary-json) to take it from [default: the "
              "profile's [sandbox.backend] concurrency / service_time].")
@click.option("--replicas", type=click.IntRange(1, 100_000), help="Replicas at time 0 "
              "[default: the HPA's minReplicas].")
@click.option("--startup", help="How long a new replica takes to serve, e.g. 40s [default: the "
              "profile's [sandbox.autoscale] startup_delay, else 0s].")
@click.option("--slots", type=click.IntRange(1, 100_000), help="Requests one replica serves at "
              "once [default: the profile's [sandbox.backend] concurrency, else 1].")
@click.option("--service-from", "service_from", type=click.Path(dir_okay=False),
              help="A run's result: the shape of its measured service times replaces the "
              "modelled distribution (scaled to --slots / --replica-rps; that is, with no "
              "--replica-rps, to the run's own mean).")
@click.option("--queue", type=click.IntRange(0, 10_000_000), help="Requests waiting per replica "
              "beyond its slots; more are answered 503 [default: the profile's, else 1024].")
@click.option("--out", "out_dir", default="results", show_default=True,
              help="Directory for the Parquet result.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Label stored with the result (repeatable).")
@click.option("--slo", "slos", multiple=True, metavar="OBJECTIVE=LIMIT",
              help="Whole-run objective, as for run (repeatable). A miss exits 1.")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Write the summary here.")
@click.option("--quiet", "-q", is_flag=True, help="No summary table.")
def simulate(profile: str, policy_path: str | None, replica_rps_text: str | None,
             replicas: int | None, startup: str | None, slots: int | None, queue: int | None,
             service_from: str | None, out_dir: str, labels: tuple[str, ...], slos: tuple[str, ...],
             summary_json: str | None, quiet: bool) -> None:
    """Replay a profile's arrivals against modelled replicas scaled by an HPA, without
    sending a request; writes a result that compare and report read as a run's."""
    from dataclasses import replace

    from loadforge.config.hpa import HPASpec, load_hpa
    from loadforge.config.profile import load_profile, parse_slo_flags, with_slo_flags
    from loadforge.present import summary
    from loadforge.simulate import SimOptions
    from loadforge.simulate import simulate as run_simulation

    plan = load_profile(profile)
    objectives = parse_slo_flags(slos)
    plan = replace(plan, slo=with_slo_flags(plan.slo, objectives))
    replica_rps = _replica_rps(replica_rps_text)
    box = plan.sandbox
    backend = box.backend if box is not None else None
    autoscale = box.autoscale if box is not None else None
    from loadforge.simulate import measured_service

    measured = measured_service(service_from) if service_from else None
    if slots is None:
        slots = backend.concurrency if backend is not None else 1
    if replica_rps is None and measured is not None:
        replica_rps = slots / (sum(measured) / len(measured) / 1e6)
    if replica_rps is None:
        if backend is None or backend.service_time_s <= 0:
            raise InputError("simulate: give --replica-rps (what one replica serves per "
                             "second), or a profile whose [sandbox.backend] has a service_time")
        replica_rps = backend.concurrency / backend.service_time_s
    if queue is None:
        queue = backend.queue if backend is not None else 1024
    if startup is None:
        startup_s = autoscale.startup_delay_s if autoscale is not None else 0.0
    else:
        startup_s = parse_duration(startup, "--startup", allow_zero=True)
    policy: HPASpec | None = None
    if policy_path:
        policy = load_hpa(policy_path, "--policy", slots)
    elif autoscale is not None and autoscale.hpa is not None:
        policy = HPASpec.from_dict(autoscale.hpa)
    if policy is None and replicas is None:
        raise InputError("simulate: give --policy HPA.yaml (or a profile with [sandbox.autoscale] "
                         "hpa), or --replicas N for a fixed count")
    opts = SimOptions(replica_rps=replica_rps, policy=policy, replicas=replicas, slots=slots,
                      queue=queue, startup_s=startup_s,
                      distribution=backend.distribution if backend is not None and
                      backend.service_time_s > 0 else "exponential",
                      sigma=backend.sigma if backend is not None else 0.5,
                      measured_service_us=measured, out_dir=out_dir, labels=parse_labels(labels),
                      slo_flags=objectives)
    stdout_taken = one_stdout_output(("--summary-json", summary_json))
    outcome = run_simulation(plan, opts)
    from rich.console import Console

    console = Console(stderr=True) if stdout_taken else Console()
    if not quiet:
        summary.render_summary(outcome.summary, console, set())
        timeline = ", ".join(f"{p['replicas']} at {p['t_s']:g}s"
                             for p in outcome.summary["replicas"])
        console.print(f"simulated: {outcome.summary.get('policy') or 'fixed replicas'}; "
                      f"replicas {timeline}; "
                      f"{outcome.summary['replica_seconds']:g} replica-seconds",
                      highlight=False)
    if summary_json:
        summary.write_summary_json(outcome.summary, summary_json)
    sys.exit(outcome.exit_code)

