"""The commands that send load: `run` (with its shard, Kubernetes and live-output flags),
`capacity` (a search over short runs) and `shard` (one stripe of a sharded run)."""

from __future__ import annotations

import math
import os
import signal
from typing import TYPE_CHECKING, Any, cast

import click

from loadforge import __version__, limits
from loadforge.cli import start_up_over
from loadforge.cli.app import (
    EXIT_FAILED,
    EXIT_OK,
    LazyConsole,
    check_at_most,
    end,
    main,
    one_stdout_output,
    parse_labels,
    parse_timeout,
    raise_interrupted,
)
from loadforge.errors import InputError
from loadforge.units import parse_duration

if TYPE_CHECKING:
    from rich.console import Console

    from loadforge.config.plan import Plan


def _flag_plan(target: str | None, rate: float | None, concurrency: int | None,
               duration: str | None, connections: int | None, timeout: str | None,
               http_version: str | None = None, streams: int | None = None) -> Plan:
    if not target:
        raise InputError("run: give a PROFILE, or --target URL with --duration")
    if duration is None:
        raise InputError("run --target: --duration is required without a profile (e.g. 30s)")
    if rate is not None and concurrency is not None:
        raise InputError("run: --rate (open model) and --concurrency (closed model) exclude "
                         "each other")
    if rate is None and concurrency is None:
        raise InputError("run --target: pick the load: --rate R (open model, requests per "
                         "second) or --concurrency C (closed model, C connections back to back)")
    seconds = parse_duration(duration, "--duration", maximum=limits.MAX_RUN_S)
    from urllib.parse import urlsplit

    from loadforge.config.plan import DEFAULT_STREAMS, Plan, Request, Stage

    # The one request goes to the target URL's own path and query: runner.request_path()
    # appends a path without a leading "/" to the target's path as it is.
    query = "" if target == "sandbox" else urlsplit(target).query
    path = f"?{query}" if query else ""
    h2_streams = streams or DEFAULT_STREAMS
    if rate is not None:
        stage = Stage("steady", seconds, rate_from=rate, rate_to=rate)
        # HTTP/2 multiplexes: a few connections, as h2load and browsers open
        conns = connections or (H2_CONNECTIONS if http_version == "2" else 64)
    elif http_version == "2":
        assert concurrency is not None
        stage = Stage("steady", seconds, concurrency=concurrency)
        conns = connections or -(-concurrency // h2_streams)
    else:
        assert concurrency is not None
        stage = Stage("steady", seconds, concurrency=concurrency)
        conns = max(concurrency, connections or 0)
    return Plan(name="adhoc", target=target, stages=(stage,), requests=(Request("default",
                path=path),), connections=conns,
                timeout_s=parse_timeout(timeout or "5s"))


# Connections of an HTTP/2 open-model run without --connections.
H2_CONNECTIONS = 4


def _with_http(plan: Plan, http_version: str | None, streams: int | None) -> Plan:
    """--http and --streams over the profile's [load] http and streams."""
    from dataclasses import replace

    if streams is not None and not 1 <= streams <= limits.MAX_STREAMS:
        raise InputError(f"--streams must be between 1 and {limits.MAX_STREAMS:,}, got {streams}")
    plan = replace(plan, http=http_version or plan.http, streams=streams or plan.streams)
    if streams is not None and plan.http != "2":
        raise InputError("--streams applies to HTTP/2 only: add --http 2")
    if plan.http == "2" and plan.connections * plan.streams > limits.MAX_STREAM_SLOTS:
        raise InputError(f"--connections x --streams ({plan.connections} x {plan.streams}) must "
                         f"be at most {limits.MAX_STREAM_SLOTS:,}: each stream is a slot the "
                         "engine allocates up front")
    for stage in plan.stages:
        if plan.http == "2" and stage.concurrency and \
                stage.concurrency > plan.connections * plan.streams:
            raise InputError(f"--concurrency ({stage.concurrency}) must be <= --connections x "
                             f"--streams ({plan.connections} x {plan.streams}): each "
                             "closed-model user holds a stream")
    return plan



def _check_flags(target: str | None, rate: float | None, concurrency: int | None,
                 connections: int | None, workers: int | None, has_profile: bool) -> None:
    """The numeric flags, against what the engine can represent (limits.py)."""
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise InputError(f"--rate must be a number > 0, got {rate:g}")
    if rate is not None:
        check_at_most(rate, limits.MAX_RATE, "--rate")
    for value, option, maximum in ((concurrency, "--concurrency", limits.MAX_CONNECTIONS),
                                   (workers, "--workers", limits.MAX_WORKERS),
                                   (connections, "--connections", limits.MAX_CONNECTIONS)):
        if value is not None and value < 1:
            raise InputError(f"{option} must be >= 1, got {value}")
        if value is not None:
            check_at_most(value, maximum, option)
    if target is not None:
        from loadforge.config.checker import check_target

        check_target(target, "--target", allow_query=not has_profile)



@main.command()
@click.argument("profile", required=False, type=click.Path(dir_okay=False))
@click.option("--target", help="Target URL (overrides the profile's); 'sandbox' for the "
              "embedded target.")
@click.option("--rate", type=float, help="Without a profile: requests per second (open model).")
@click.option("--concurrency", type=int, help="Without a profile: users each sending back to "
              "back (closed model, like wrk): one connection each, or one stream each with "
              "--http 2.")
@click.option("--duration", help="Without a profile: how long, e.g. 30s.")
@click.option("--connections", type=int, help="Upper bound on open connections.")
@click.option("--timeout", help="Per-request timeout (overrides the profile's) [default: 5s].")
@click.option("--timer-resolution", help="Open model: arrivals closer together than this "
              "share a wake-up and may be sent up to this late, counted in latency "
              "[default: 200us; 0 for exact sends at more CPU].")
@click.option("--requests-per-connection", type=int, help="Close each connection after this "
              "many responses (1: a new connection per request; 0: reuse) [default: the "
              "profile's, else 0].")
@click.option("--retry", type=click.Choice(["idempotent", "never"]), help="After a reused "
              "connection closed without an answer, send the request again on a new one: "
              "idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE or with Idempotency-Key) or "
              "never; the rest end as reset [default: the profile's, else idempotent].")
@click.option("--http", "http_version", type=click.Choice(["1.1", "2"]),
              help="HTTP version: 1.1, or 2 (h2c by prior knowledge over http://) "
              "[default: the profile's, else 1.1].")
@click.option("--streams", type=int, help="HTTP/2: most concurrent streams per connection, "
              "lowered by the server's SETTINGS_MAX_CONCURRENT_STREAMS [default: the "
              "profile's, else 100].")
@click.option("--workers", type=int, help="Worker processes (default: the profile's, else one "
              "per 1,000/s of the peak rate, at most one per core; one per core for closed-model "
              "stages and flows).")
@click.option("--out", "out_dir", default="results", show_default=True,
              help="Directory for the Parquet result.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Label stored with the result (repeatable).")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Write the summary here.")
@click.option("--backend-header", help="Attribute requests to backends by this response header "
              "(e.g. X-Served-By).")
@click.option("--no-preflight", is_flag=True, help="Skip the request sent before the run.")
@click.option("--ca-cert", type=click.Path(dir_okay=False), help="https: trust this CA bundle "
              "(PEM) instead of the system store (overrides tls.ca).")
@click.option("--client-cert", type=click.Path(dir_okay=False), help="https: client "
              "certificate chain (PEM) for mutual TLS (overrides tls.cert).")
@click.option("--client-key", type=click.Path(dir_okay=False), help="https: the client "
              "certificate's private key (PEM), if not in --client-cert.")
@click.option("--client-key-password-env", metavar="NAME", help="https: the environment "
              "variable holding the client key's passphrase, if it is encrypted (overrides "
              "tls.key_password_env).")
@click.option("--server-name", help="https: SNI and the name the certificate must carry, when "
              "the target is an address (overrides tls.server_name).")
@click.option("--insecure", is_flag=True, help="https: do not verify the server's certificate "
              "(said in the summary).")
@click.option("--quiet", "-q", is_flag=True, help="No live progress, no summary table.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False),
              help="Write the SLO verdicts as JUnit XML (one test case per objective).")
@click.option("--repeat", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Run it this many times, each labelled repeat=1..N: one group for "
              "`compare --group-by` (five gives a noise estimate).")
@click.option("--slo", "slos", multiple=True, metavar="OBJECTIVE=LIMIT",
              help="Whole-run objective, e.g. p99=250ms or error_rate=1% (repeatable; "
              "replaces the profile's objective of the same name). A miss exits 1.")
@click.option("--shards", type=click.IntRange(1, limits.MAX_WORKERS), help="Split the run over "
              "this many shard processes (each with --workers workers), one merged result.")
@click.option("--launcher", type=click.Choice(["local", "kubernetes", "external"]),
              default="local", show_default=True, help="Who starts the shards: local runs them "
              "as processes of this machine; kubernetes as the pods of an Indexed Job; "
              "external waits for N `loadforge shard` started by anyone.")
@click.option("--max-clock-offset", default="50ms", show_default=True,
              help="With --shards: a shard whose clock is further off than this fails the start.")
@click.option("--shard-start-timeout", help="With --launcher kubernetes or external: how long "
              "every shard has to dial in and be ready (pods scheduled, images pulled) "
              "[default: 300s].")
@click.option("--coordinator-address", metavar="HOST[:PORT]", help="With --shards: where the "
              "coordinator listens (local: 127.0.0.1, a free port; external: required), and "
              "with --launcher kubernetes what the pods dial [default: this host's name "
              "resolved, port 7070].")
@click.option("--shard-token-file", type=click.Path(dir_okay=False), help="With --launcher "
              "external: write the run's shard token to this file (mode 0600) for the shards' "
              "--token-file [default: the token in $LOADFORGE_SHARD_TOKEN].")
@click.option("--namespace", default="default", show_default=True,
              help="With --launcher kubernetes: the namespace of the Job and Service.")
@click.option("--image", help="With --launcher kubernetes: the shards' container image "
              f"[default: loadforge:{__version__}].")
@click.option("--shard-cpu", default="1", show_default=True,
              help="With --launcher kubernetes: each pod's CPU request and limit.")
@click.option("--shard-memory", default="512Mi", show_default=True,
              help="With --launcher kubernetes: each pod's memory request and limit.")
@click.option("--keep", is_flag=True, help="With --launcher kubernetes: leave the Job, "
              "Service and Secret in place after the run.")
@click.option("--node-selector", "node_selectors", multiple=True, metavar="KEY=VALUE",
              help="With --launcher kubernetes: the pods' nodeSelector (repeatable).")
@click.option("--toleration", "tolerations", multiple=True, metavar="KEY[=VALUE][:EFFECT]",
              help="With --launcher kubernetes: a toleration of the pods (repeatable).")
@click.option("--service-account", help="With --launcher kubernetes: the pods' service account "
              "(its API token is not mounted).")
@click.option("--image-pull-secret", "image_pull_secrets", multiple=True, metavar="NAME",
              help="With --launcher kubernetes: a Secret to pull the image with (repeatable).")
@click.option("--coordinator-in-cluster", is_flag=True, help="With --launcher kubernetes and "
              "a PROFILE: print what runs the coordinator itself as a pod (its Job, the "
              "profile as a ConfigMap, its Role) for `kubectl apply -f -`, and exit, "
              "contacting no API.")
@click.option("--results-claim", metavar="PVC", help="With --coordinator-in-cluster: the "
              "PersistentVolumeClaim the coordinator writes its results to [default: an "
              "emptyDir, gone with the pod].")
@click.option("--dry-run", is_flag=True, help="With --launcher kubernetes: print the Secret, "
              "Service and Job, and the coordinator's Role and RoleBinding (JSON), and exit, "
              "contacting no API.")
@click.option("--metrics", "metrics_at", metavar="[HOST:]PORT", help="Serve Prometheus metrics "
              "of the run at http://HOST:PORT/metrics while it runs [host: 127.0.0.1].")
@click.option("--dashboard", "dashboard_at", metavar="[HOST:]PORT", help="Serve a live page of "
              "the run at http://HOST:PORT/ (updated each interval) [host: 127.0.0.1].")
@click.option("--stream", "stream_to", metavar="FILE|-", help="Write one JSON line per interval "
              "as the run goes (and the summary as the last line); - for stdout.")
@click.option("--linger", help="With --dashboard or --metrics: keep serving this long after "
              "the run (e.g. 30s; Ctrl-C ends it sooner).")
def run(profile: str | None, target: str | None, rate: float | None, concurrency: int | None,
        duration: str | None, connections: int | None, timeout: str | None,
        timer_resolution: str | None, requests_per_connection: int | None,
        http_version: str | None, streams: int | None, workers: int | None,
        out_dir: str, labels: tuple[str, ...], summary_json: str | None,
        backend_header: str | None, no_preflight: bool, ca_cert: str | None,
        client_cert: str | None, client_key: str | None, client_key_password_env: str | None,
        server_name: str | None, insecure: bool, quiet: bool, junit_path: str | None, repeat: int,
        slos: tuple[str, ...], shards: int | None = None,
        launcher: str = "local", max_clock_offset: str = "50ms",
        shard_start_timeout: str | None = None, coordinator_address: str | None = None,
        namespace: str = "default", image: str | None = None, shard_cpu: str = "1",
        shard_memory: str = "512Mi", keep: bool = False, dry_run: bool = False,
        shard_token_file: str | None = None, node_selectors: tuple[str, ...] = (),
        tolerations: tuple[str, ...] = (), service_account: str | None = None,
        image_pull_secrets: tuple[str, ...] = (), coordinator_in_cluster: bool = False,
        results_claim: str | None = None,
        metrics_at: str | None = None, dashboard_at: str | None = None,
        stream_to: str | None = None, linger: str | None = None,
        retry: str | None = None) -> None:
    """Run a load test: `loadforge run PROFILE` or `loadforge run --target URL --rate R
    --duration D`."""
    from dataclasses import replace

    from loadforge import runner
    from loadforge.config.objectives import parse_slo_flags, with_slo_flags
    from loadforge.config.redact import hide_in_messages, profile_secrets

    stdout_taken = one_stdout_output(("--summary-json", summary_json), ("--junit", junit_path),
                                      ("--stream", stream_to))
    _check_flags(target, rate, concurrency, connections, workers, bool(profile))
    linger_s = _linger(linger, metrics_at, dashboard_at)
    objectives = parse_slo_flags(slos)
    if profile:
        if rate is not None or concurrency is not None or duration is not None:
            raise InputError("run: --rate, --concurrency and --duration apply only without a "
                             "profile; the profile's stages set the load")
        # (here only: a run from flags does without the profile's reader, feeders.py with it)
        from loadforge.config.profile import load_profile

        plan = load_profile(profile)
        if connections is not None:
            plan = replace(plan, connections=connections)
        if timeout is not None:
            plan = replace(plan, timeout_s=parse_timeout(timeout))
    else:
        plan = _flag_plan(target, rate, concurrency, duration, connections, timeout,
                          http_version, streams)
    plan = _with_http(plan, http_version, streams)
    plan = replace(plan, slo=with_slo_flags(plan.slo, objectives))
    if plan.tls is not None or ca_cert or client_cert or client_key or server_name \
            or insecure or client_key_password_env:
        # (an http:// run without TLS settings does without config/tls.py)
        from loadforge.config.tls import with_tls_flags

        plan = replace(plan, tls=with_tls_flags(
            plan.tls, ca_cert=ca_cert, client_cert=client_cert, client_key=client_key,
            server_name=server_name, insecure=insecure,
            client_key_password_env=client_key_password_env))
    # From here on, every message this process prints hides the profile's secrets (values
    # from the environment, credential headers): error lines land in CI logs.
    hide_in_messages(profile_secrets(plan.source, plan.secrets))
    if plan.tls is not None and plan.tls.key_password():
        hide_in_messages([plan.tls.key_password() or ""])
    if requests_per_connection is not None:
        if requests_per_connection < 0:
            raise InputError("--requests-per-connection must be >= 0, got "
                             f"{requests_per_connection}")
        plan = replace(plan, requests_per_connection=requests_per_connection)
    if retry is not None:
        plan = replace(plan, retry=retry)
    if timer_resolution is not None:
        plan = replace(plan, timer_resolution_s=parse_duration(
            timer_resolution, "--timer-resolution", allow_zero=True,
            maximum=limits.MAX_TIMER_RESOLUTION_S))
    kube_flags = {"--node-selector": node_selectors, "--toleration": tolerations,
                  "--service-account": service_account,
                  "--image-pull-secret": image_pull_secrets,
                  "--coordinator-in-cluster": coordinator_in_cluster,
                  "--results-claim": results_claim}
    if results_claim is not None and not coordinator_in_cluster:
        raise InputError("--results-claim applies only with --coordinator-in-cluster")
    kube_opts = _kube_options(shards, launcher, shard_start_timeout, coordinator_address,
                              namespace, image, shard_cpu, shard_memory, keep, dry_run,
                              kube_flags, plan.duration_s + plan.timeout_s)
    if coordinator_in_cluster:
        click.echo(_in_cluster_text(plan, profile, shards or 1, kube_opts, results_claim))
        return
    shard_opts = _shard_options(shards, launcher, coordinator_address, shard_start_timeout,
                                shard_token_file)
    if dry_run:
        from loadforge.run.kube import dry_run_text

        click.echo(dry_run_text(runner.new_run_id(plan), shards or 1, kube_opts))
        return
    run_labels = parse_labels(labels)
    if repeat > 1 and "repeat" in run_labels:
        raise InputError("--label repeat=...: --repeat sets the repeat label of each run itself")
    console = cast("Console", LazyConsole(stderr=True))
    # Before the run begins (and while its results are written), SIGTERM and SIGHUP end the
    # command as Ctrl-C does: 128 + N, nothing half-written left behind.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_interrupted)
    # The start-up is over: what it made is frozen out of the collector's way (cli/__init__.py)
    # before the fork server forks, so that neither process's collector touches those pages.
    start_up_over()
    if not shards:
        # Workers fork from a server started here, before the first thread (forkserver.py).
        from loadforge.run.workers import use_fork_server

        use_fork_server()
    # The live outputs' servers are daemon threads and the stream is flushed line by line:
    # however the command ends, nothing of theirs is left to close.
    live = _live_outputs(metrics_at, dashboard_at, stream_to, quiet, console)
    # With an output on stdout ("-"), stdout holds that alone: the tables go to stderr.
    tables = console if stdout_taken else cast("Console", LazyConsole())
    outcomes = []
    for i in range(1, repeat + 1):
        if repeat > 1:
            run_labels["repeat"] = str(i)
            if not quiet:
                console.print(f"run {i} of {repeat}", highlight=False)
        opts = runner.RunOptions(target=target, workers=workers, out_dir=out_dir,
                                 labels=dict(run_labels), quiet=quiet,
                                 preflight=not no_preflight, backend_header=backend_header,
                                 slo_flags=objectives)
        if shards:
            opts = replace(opts, shards=shards, launcher=launcher,
                           max_clock_offset_s=parse_duration(max_clock_offset,
                                                             "--max-clock-offset"),
                           kube=kube_opts, **shard_opts)
        outcome = runner.execute(plan, opts, console, live)
        outcomes.append(outcome)
        try:
            if not quiet:
                from loadforge.present import summary  # rich's tables: loaded when drawn

                summary.render_summary(outcome.summary, tables,
                                       {s.name for s in plan.stages if not s.open_model})
            if outcome.summary.get("aborted"):
                from loadforge.present.text import print_error

                print_error(str(outcome.summary["aborted"]), "aborted", console)
            _print_how_it_ended(outcome, plan.duration_s, console)
        except OSError:
            # The terminal is gone (SIGHUP: a closed SSH session): the files below still are
            # what the run is for.
            pass
        if outcome.failure or outcome.signum:
            break        # a crash, a full disk or a signal ends the series too
    if summary_json:
        from loadforge.present import summary

        summary.write_summary_json(
            outcomes[0].summary if repeat == 1 else
            {"ok": all(o.ok for o in outcomes), "repeat": repeat, "ran": len(outcomes),
             "runs": [o.summary for o in outcomes]}, summary_json)
    if junit_path:
        from loadforge.present import junit

        cases = []
        for i, o in enumerate(outcomes, 1):
            name = plan.name if repeat == 1 else f"{plan.name} repeat={i}"
            cases += junit.slo_cases(o.summary.get("slo", []), name)
        junit.write_junit(junit_path, f"loadforge run {plan.name}", cases)
    if live is not None and linger_s > 0:
        # Said even with --quiet: a command that does not return needs a reason on screen.
        console.print(f"serving the final figures for {linger_s:g} s (Ctrl-C to stop)",
                      highlight=False)
        live.linger(linger_s)
        live.close()
    # The most serious ending decides: could not run (3), interrupted (128+N), an SLO (1).
    codes = [o.exit_code for o in outcomes]
    end(next((c for c in codes if c not in (0, 1)), max(codes)))


def _shard_options(shards: int | None, launcher: str, address: str | None,
                   start_timeout: str | None, token_file: str | None) -> dict[str, Any]:
    """RunOptions' fields for the local and external launchers: where the coordinator listens,
    how long the shards have, where the token goes (shards.py)."""
    if address is not None and not shards:
        raise InputError("--coordinator-address applies only with --shards N")
    if token_file is not None and launcher != "external":
        raise InputError("--shard-token-file applies only with --launcher external")
    if launcher == "kubernetes":
        return {}
    if launcher == "local":
        if start_timeout is not None:
            raise InputError("--shard-start-timeout applies only with --launcher kubernetes "
                             "or external")
        if address is None:
            return {}
    from loadforge.run.kube import DEFAULT_START_TIMEOUT_S, parse_coordinator_address
    from loadforge.run.shards import TOKEN_ENV

    if launcher == "external":
        if not shards:
            raise InputError("--launcher external needs --shards N")
        if address is None:
            raise InputError("--launcher external needs --coordinator-address HOST:PORT: where "
                             "the coordinator listens for the shards (0.0.0.0:7070 for every "
                             "interface)")
        if token_file is None and not os.environ.get(TOKEN_ENV, "").strip():
            raise InputError(f"--launcher external: the shards need the run's token: give "
                             f"--shard-token-file PATH (the shards' --token-file), or set "
                             f"{TOKEN_ENV} for the coordinator and the shards alike")
    host, port = parse_coordinator_address(address)
    out: dict[str, Any] = {"coordinator_address": (host, port), "shard_token_file": token_file}
    if launcher == "external":
        out["shard_start_timeout_s"] = (parse_duration(start_timeout, "--shard-start-timeout")
                                        if start_timeout else DEFAULT_START_TIMEOUT_S)
    return out


def _live_outputs(metrics_at: str | None, dashboard_at: str | None, stream_to: str | None,
                  quiet: bool, console: Console) -> Any:
    """--metrics, --dashboard and --stream (live/), listening before any load is sent."""
    if metrics_at is None and dashboard_at is None and stream_to is None:
        return None
    from loadforge.live import LiveOutputs

    live = LiveOutputs(metrics_at, dashboard_at, stream_to)
    if not quiet:
        for line in live.describe():
            console.print(line, highlight=False, soft_wrap=True)
    return live


def _linger(linger: str | None, metrics_at: str | None, dashboard_at: str | None) -> float:
    if linger is None:
        return 0.0
    if metrics_at is None and dashboard_at is None:
        raise InputError("--linger applies only with --dashboard or --metrics")
    return parse_duration(linger, "--linger", allow_zero=True, maximum=limits.MAX_RUN_S)


def _kube_options(shards: int | None, launcher: str, start_timeout: str | None,
                  address: str | None, namespace: str, image: str | None, cpu: str,
                  memory: str, keep: bool, dry_run: bool, more: dict[str, Any],
                  run_s: float) -> Any:
    """--launcher kubernetes and its flags, checked before anything runs (kube.py). None for
    the other launchers, whose flags these are not."""
    given = [flag for flag, on in (("--namespace", namespace != "default"),
                                   ("--image", image is not None), ("--shard-cpu", cpu != "1"),
                                   ("--shard-memory", memory != "512Mi"), ("--keep", keep),
                                   ("--dry-run", dry_run),
                                   *((flag, bool(v)) for flag, v in more.items())) if on]
    if launcher != "kubernetes":
        if given:
            raise InputError(f"{given[0]} applies only with --launcher kubernetes")
        return None
    from loadforge.run import kube

    if not shards:
        raise InputError("--launcher kubernetes needs --shards N")
    in_cluster = bool(more["--coordinator-in-cluster"])
    if in_cluster and address is not None:
        raise InputError("--coordinator-in-cluster: the shards dial the coordinator's pod IP; "
                         "drop --coordinator-address")
    host, port = kube.parse_coordinator_address(address or (kube.POD_IP if in_cluster
                                                            else None))
    trouble = "" if in_cluster else kube.loopback_trouble(host, address is not None)
    if trouble:
        raise InputError(trouble)
    opts = kube.KubeOptions(
        namespace=kube.check_namespace(namespace), image=image or kube.KubeOptions.image,
        cpu=kube.check_quantity(cpu, "--shard-cpu"),
        memory=kube.check_quantity(memory, "--shard-memory"), keep=keep,
        coordinator_host=host, coordinator_port=port,
        start_timeout_s=parse_duration(start_timeout, "--shard-start-timeout")
        if start_timeout else kube.DEFAULT_START_TIMEOUT_S,
        node_selector=kube.parse_node_selector(more["--node-selector"]),
        tolerations=[kube.parse_toleration(t) for t in more["--toleration"]],
        service_account=kube.check_name(more["--service-account"], "--service-account")
        if more["--service-account"] else "",
        image_pull_secrets=[kube.check_name(n, "--image-pull-secret")
                            for n in more["--image-pull-secret"]],
        run_s=run_s)
    if not dry_run and not in_cluster:
        kube.require_client()
        opts.configuration = kube.load_configuration()
    return opts


# What --coordinator-in-cluster does not pass on to the coordinator's pod: flags it sets
# itself, and what names files of this machine.
_NOT_IN_CLUSTER = {"profile", "shards", "launcher", "coordinator_address", "out_dir",
                   "summary_json", "junit_path", "dry_run", "coordinator_in_cluster",
                   "results_claim", "keep"}
_FILES = {"ca_cert": "--ca-cert", "client_cert": "--client-cert", "client_key": "--client-key"}


def _in_cluster_text(plan: Any, profile: str | None, shards: int, kube_opts: Any,
                     results_claim: str | None) -> str:
    """--coordinator-in-cluster: the manifests, with this command line's other flags."""
    from click.core import ParameterSource

    from loadforge.run import kube

    if not profile:
        raise InputError("--coordinator-in-cluster needs a PROFILE: it goes to the pod as a "
                         "ConfigMap")
    if plan.feeders or plan.flows or (plan.tls is not None and (plan.tls.ca or plan.tls.cert
                                                                or plan.tls.key)):
        raise InputError("--coordinator-in-cluster takes a self-contained profile: this one "
                         "names files (feeders, a flows module or TLS files) the pod would not "
                         "have; build them into the image and run the coordinator there")
    if results_claim is not None:
        kube.check_name(results_claim, "--results-claim")
    ctx = click.get_current_context()
    args: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        if (not isinstance(param, click.Option) or name in _NOT_IN_CLUSTER
                or ctx.get_parameter_source(name) not in (ParameterSource.COMMANDLINE,
                                                          ParameterSource.ENVIRONMENT)):
            continue
        if name in _FILES:
            raise InputError(f"--coordinator-in-cluster: {_FILES[name]} names a file of this "
                             "machine the pod would not have")
        flag = next(o for o in param.opts if o.startswith("--"))
        value = ctx.params[name]
        if param.is_flag:
            args += [flag] if value else []
        elif param.multiple:
            for v in value:
                args += [flag, str(v)]
        else:
            args += [flag, str(value)]
    try:
        with open(profile, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{profile}: cannot read it ({exc})") from None
    from loadforge import runner

    return kube.in_cluster_text(runner.new_run_id(plan), shards, kube_opts,
                                "profile.toml", text, args, results_claim)


def _print_how_it_ended(outcome: Any, planned_s: float, console: Console) -> None:
    """One line for a run that stopped early: after how long, and what became of it."""
    if not (outcome.failure or outcome.signum or outcome.summary.get("feeder_exhausted")):
        return
    from rich.markup import escape

    from loadforge.config.redact import redact_message

    ran = f"after {outcome.summary.get('ran_s', 0.0):.1f} s of {planned_s:g} s"
    if outcome.failure:
        kept = (f"what ran is in {outcome.path}, marked incomplete" if outcome.path
                else "no results could be saved")
        console.print(f"[bold red]error:[/] {escape(redact_message(outcome.failure))} ({ran}); "
                      f"{escape(kept)}",
                      highlight=False, soft_wrap=True)
    elif outcome.signum:
        console.print(f"[bold yellow]interrupted[/] by {signal.Signals(outcome.signum).name} "
                      f"{ran}; the results cover what ran", highlight=False, soft_wrap=True)
    elif outcome.summary.get("feeder_exhausted"):
        spent = outcome.summary["feeder_exhausted"]
        console.print(f"[bold]ended:[/] feeder {escape(repr(spent['feeder']))} (order unique) ran "
                      f"out of its {spent['rows']:,} rows, which ended the run ({ran})",
                      highlight=False, soft_wrap=True)



@main.command()
@click.option("--coordinator", required=True, metavar="HOST:PORT",
              help="Where the coordinator (`loadforge run --shards N`) listens.")
@click.option("--index", type=click.IntRange(0, None), help="This shard's index (default: "
              "$JOB_COMPLETION_INDEX, else the coordinator assigns the next free one).")
@click.option("--token-file", type=click.Path(dir_okay=False), help="A file holding the run's "
              "shard token (the coordinator's --shard-token-file) [default: the token in "
              "$LOADFORGE_SHARD_TOKEN].")
def shard(coordinator: str, index: int | None, token_file: str | None) -> None:
    """Run one shard of a sharded run: dial in, run a stripe of the schedule, stream results."""
    from loadforge.run.shards import shard_main

    shard_main(coordinator, index, token_file)


@main.command()
@click.option("--target", required=True, help="The URL to load (open model, GET).")
@click.option("--slo", "slos", multiple=True, required=True, metavar="OBJECTIVE=LIMIT",
              help="An objective every step must hold, e.g. p99=100ms or error_rate=0.1% "
              "(repeatable).")
@click.option("--start", "start_rps", type=float, default=100.0, show_default=True,
              help="The first rate tried (requests/s); doubled until a step fails.")
@click.option("--max", "max_rps", type=float, default=100_000.0, show_default=True,
              help="The highest rate tried.")
@click.option("--step", "step", default="10s", show_default=True,
              help="How long each step runs.")
@click.option("--precision", type=float, default=0.05, show_default=True,
              help="Stop bisecting when the bounds are this close (a fraction).")
@click.option("--connections", type=click.IntRange(1, limits.MAX_CONNECTIONS), default=256,
              show_default=True, help="Connections the generator may open.")
@click.option("--timeout", default="5s", show_default=True, help="Request timeout.")
@click.option("--workers", type=int, help="Worker processes (default: one per 1,000/s of each "
              "step's rate, at most one per core).")
@click.option("--out", "out_dir", default="results", show_default=True,
              help="Directory for the Parquet result (one stage per step).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Label stored with the result (repeatable).")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Write the summary here.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines, no curve.")
def capacity(target: str, slos: tuple[str, ...], start_rps: float, max_rps: float, step: str,
             precision: float, connections: int, timeout: str, workers: int | None,
             out_dir: str, labels: tuple[str, ...], summary_json: str | None,
             quiet: bool) -> None:
    """Find the highest open-model rate at which every SLO holds: step up, then bisect."""
    from rich.console import Console

    from loadforge.capacity import CapacityOptions, Search
    from loadforge.config.objectives import parse_slo_flags
    from loadforge.present import summary

    if target != "sandbox":
        from loadforge.run.target import parse_target

        parse_target(target)
    stdout_taken = one_stdout_output(("--summary-json", summary_json))
    step_s = parse_duration(step, "--step", maximum=limits.MAX_RUN_S)
    opts = CapacityOptions(target=target, slos=parse_slo_flags(slos), start_rps=start_rps,
                           max_rps=max_rps, step_s=step_s, precision=precision,
                           connections=connections, timeout_s=parse_timeout(timeout),
                           workers=workers, out_dir=out_dir, labels=parse_labels(labels))
    console = Console(stderr=True) if stdout_taken or quiet else Console()
    signal.signal(signal.SIGTERM, raise_interrupted)
    from loadforge.run.workers import use_fork_server

    use_fork_server()           # each step's workers fork from it (forkserver.py)
    if not quiet:
        console.print(f"capacity of {target}: steps of {step_s:g}s", highlight=False)
    result = Search(opts, console, quiet).run()
    if not quiet:
        from loadforge.present.capacity import render_capacity

        render_capacity(result, console)
    if summary_json:
        summary.write_summary_json(result, summary_json)
    end(EXIT_OK if result["ok"] else EXIT_FAILED)

