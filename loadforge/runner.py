"""A run from its plan to its summary: the `run` command's orchestration.

Above run/ (the coordinator: workers, exact merge, rows), it wires what a run needs around the
merge: the embedded target (sandbox/), metric pollers and timed actions (observe/), the
Parquet writer (results/), `abort_after` (analysis/slo.LiveSLO), and at the end the summary
folded from the rows (analysis/figures.summary_figures) with the verdicts judged from the
rows the writer took, folded as it took them (analysis/figures.RunFold, judged by
analysis/slo and analysis/scaling): what `ls` and `report` judge of the file later, without
reading it back.

What a run does not use it neither imports nor calls (a plain run starts sooner): observe/
only with metric sources, actions or the sandbox; analysis/slo only with objectives;
analysis/scaling and analysis/backends only with something to analyse (`_analysed`); the
progress display only without --quiet.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from loadforge import _core
from loadforge.config.plan import Plan, Request
from loadforge.engine.requests import request_path
from loadforge.errors import InputError, RunError
from loadforge.results.partial import claim
from loadforge.results.schema import check_label_key
from loadforge.run import preflight, session
from loadforge.run.session import RunOptions, RunOutcome, Stop, new_run_id
from loadforge.run.target import Target, parse_target, with_tls
from loadforge.run.workers import WorkerPool

# What a run needs only once its workers run (the merge, the result file's writer and the
# fold, with the histograms and the metadata's redaction) loads after time zero, while they
# do: `_after_time_zero`.
if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

    from loadforge.analysis import figures
    from loadforge.engine.tables import Compiled
    from loadforge.live import LiveOutputs
    from loadforge.observe.pollers import Watchers
    from loadforge.results.store import ResultWriter
    from loadforge.run.merge import Aggregator, MergedInterval
    from loadforge.run.progress import LiveProgress
    from loadforge.run.shards import ShardPool

__all__ = ["RunOptions", "RunOutcome", "execute", "new_run_id", "request_path"]


def execute(plan: Plan, opts: RunOptions, console: Console,
            live: LiveOutputs | None = None) -> RunOutcome:
    """One run from its plan to its summary, verdicts and exit code; `live` (--metrics,
    --dashboard, --stream) sees each merged interval and the summary."""
    target_url = opts.target or plan.target
    sandbox = None
    if target_url == "sandbox":
        from loadforge.sandbox import start_sandbox

        sandbox = start_sandbox(plan.sandbox)
        target_url = sandbox.url
    try:
        return _execute(plan, opts, console, target_url, sandbox, live)
    finally:
        if sandbox is not None:
            sandbox.stop()


def _execute(plan: Plan, opts: RunOptions, console: Console, target_url: str,
             sandbox: Any = None, live: LiveOutputs | None = None) -> RunOutcome:
    target = parse_target(target_url)
    plan = with_tls(plan, target)
    if plan.http == "2" and (missing := _core.http2_library()):
        raise RunError(f"--http 2 needs libnghttp2.so.14 (Debian package libnghttp2-14), "
                       f"which did not load: {missing}")
    if plan.flows is not None:
        if plan.http == "2":
            raise InputError("[flows]: scripted flows speak HTTP/1.1 only (for now); drop "
                             "--http 2 ([load] http)")
        # Checked here, once, before any worker starts: a bad module is exit 2 in one line.
        from loadforge.flows import loader

        module = loader.load_checked(plan.flows)
        plan = dataclasses.replace(plan, requests=tuple(Request(name=n) for n in module.names))
    workers = opts.workers or plan.workers or session.auto_workers(plan)
    workers = max(1, min(workers, plan.connections))
    per_shard = 0
    if opts.shards:
        from loadforge.run.shards import shard_workers

        requested = opts.workers or plan.workers
        if opts.kube is not None and not requested:
            from loadforge.run.kube import default_workers

            requested = default_workers(opts.kube.cpu)
        per_shard = shard_workers(requested, opts.shards, plan.connections)
        workers = opts.shards * per_shard
    compiled = session.compile_feeders(plan, target, inline=bool(opts.shards))
    try:
        return _execute_compiled(plan, opts, console, target, workers, per_shard, compiled,
                                 sandbox, live)
    finally:
        if compiled is not None:
            compiled.cleanup()


def _execute_compiled(plan: Plan, opts: RunOptions, console: Console, target: Target,
                      workers: int, per_shard: int, compiled: Compiled | None,
                      sandbox: Any, live: LiveOutputs | None = None) -> RunOutcome:
    observing = sandbox is not None or bool(plan.observe.sources or plan.actions)
    backend_header = opts.backend_header or plan.observe.backend_header
    if observing:
        from loadforge.observe import pollers

        backend_header = pollers.backend_header(plan, opts.backend_header, sandbox)
    specs = session.worker_specs(plan, target, workers, opts.interval_s, backend_header,
                                 compiled)
    session.check_fd_limit(specs, plan)
    session.check_template_buffers(specs, compiled)
    # Metric pollers and timed actions, started at time zero (observe/).
    watchers: Watchers | None = None
    if observing:
        watchers = pollers.Watchers(plan, opts.interval_s, sandbox)
    pool: WorkerPool | ShardPool | None = None
    if not opts.shards:
        # The local workers start (fork, build their engines) while the preflight runs; a
        # preflight that fails ends them before time zero, when none has sent anything.
        pool = WorkerPool(specs)
    try:
        negotiated: dict[str, Any] = {}
        if opts.preflight:
            first, judged = preflight.preflight_request(plan.requests, plan.templates)
            if plan.flows is not None:
                # A flow's first step may need what an earlier one returned: reach the target,
                # judge nothing but that it answers.
                first, judged = Request(name="preflight"), False
            negotiated = preflight.preflight(target, first, plan.timeout_s, judge_status=judged,
                                             tls=plan.tls, http=plan.http,
                                             fail_status=plan.fail_status)
            warning = negotiated.pop("preflight_warning", None)
            if warning:
                from rich.text import Text

                console.print(Text.assemble(("warning:", "bold yellow"), " ", warning),
                              soft_wrap=True)
        tls_info = None if plan.tls is None else {**plan.tls.describe(), "protocol": None,
                                                  "cipher": None, "alpn": None, **negotiated}
        run_id = new_run_id(plan)
        path = os.path.join(opts.out_dir, f"{run_id}.parquet")
        for key in opts.labels:
            check_label_key(key)
        # Before any request: an output that cannot be written is one line, and no load sent.
        claimed = claim(path)
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    analysed = _analysed(plan, backend_header, observing)
    started = time.time()
    writer: ResultWriter | None = None
    stop = Stop()
    failure: str | None = None
    try:
        with _progress(plan.duration_s, console, opts.quiet) as progress:
            if live is not None:
                from loadforge.config.redact import redact_url

                live.start(plan, run_id, redact_url(target.url), opts.interval_s)
            if opts.shards:
                from loadforge.run.shards import ShardPool

                pool = ShardPool(specs, opts.shards, per_shard, opts.max_clock_offset_s,
                                 opts.launcher, **_remote_shards(opts, run_id))
                t0 = pool.start()
            else:
                assert isinstance(pool, WorkerPool)
                t0 = session.start(pool)
            if watchers is not None:
                watchers.start(t0)
            # The workers run: the merge, the writer and the fold load and start now (their
            # first interval is due an interval from now), off the way to time zero; hdrh too,
            # which the merge's first histogram would load at the first interval's end (a 1 s
            # run's last, where 4-5 ms more of wall would stand between the last arrival and
            # the summary).
            import hdrh.histogram  # noqa: F401

            from loadforge.analysis import figures
            from loadforge.results.store import ResultWriter
            from loadforge.run.merge import Aggregator

            writer = ResultWriter(path, run_id, _metadata(plan, opts, target, workers,
                                                          tls_info, negotiated),
                                  opts.labels, claimed)
            # What the verdicts judge, folded from the rows as the writer takes them.
            judge = None
            latency = False
            if plan.slo:
                from loadforge.analysis import scaling, slo

                latency = slo.needs_latency(plan) or scaling.needs_latency(plan)
                if any(w.abort_after_s is not None for w in plan.slo.windows):
                    judge = slo.LiveSLO(plan, opts.interval_s).interval
            fold = figures.RunFold(figures.RowSource.live(plan.fail_status),
                                   int(opts.interval_s * 1000), latency=latency)
            agg = Aggregator(plan, workers, opts.interval_s)
            if opts.shards:
                agg.shard_of = lambda k: k % opts.shards
            feed = IntervalFeed(writer, fold, judge, progress, live)
            agg.t0_ns = t0
            try:
                with contextlib.closing(session.collect(pool, agg, plan, t0, stop)) as merged:
                    for interval in merged:
                        feed.interval(interval, stop)
            except RunError as exc:
                # A worker crashed or the disk filled: keep what was merged, marked incomplete.
                failure = str(exc)
                stop.at_ns = stop.at_ns or _core.now_ns()
                pool.kill()
            finally:
                watched = watchers.stop() if watchers is not None else []
            elapsed = (_core.now_ns() - t0) / 1e9
            for interval in agg.drain():
                feed.interval(interval, stop)
        pool.join()
        ran_s = stop.ran_s(t0, elapsed, plan.duration_s)
        rows, inputs = agg.finish(elapsed, ran_s if stop.at_ns else None)
        feed.write(rows + watched, last=True)
        end_meta = _end_metadata(stop, ran_s, failure or writer.failure)
        if plan.flows is not None:
            fold.flows = agg.flow_figures()
            end_meta["flows"] = json.dumps(fold.flows, sort_keys=True)
        if pool is not None and not isinstance(pool, WorkerPool):
            end_meta["shards"] = json.dumps(pool.metadata(), sort_keys=True)
        if tls_info is not None and not negotiated:
            # No preflight: what the engine's own first handshake negotiated, known now.
            tls_info.update(agg.negotiated or {})
            end_meta["tls"] = json.dumps(tls_info)
        writer.close(end_meta)
        failure = failure or writer.failure
        # The summary's figures: the one fold of the rows just written (figures.py).
        summary = figures.summary_figures(rows, plan.fail_status,
                                          [r.name for r in plan.requests], inputs)
    except BaseException:
        if pool is not None:
            pool.terminate()
        if writer is not None:
            writer.abort()
        else:
            claimed.discard()
        raise
    from loadforge.config.redact import redact_message, redact_url

    state = {"interrupted": bool(stop.signum), "ran_s": round(ran_s, 3),
             "complete": failure is None,
             "error": None if failure is None else redact_message(failure)}
    saved = path if writer.published else None
    verdicts: list[dict[str, Any]] = []
    if saved:
        # Judged from the rows the file holds, folded as they were written: the verdicts any
        # later reader of the file gets (readback.run_fold; tests/test_figures.py).
        if plan.slo:
            from loadforge.analysis import slo

            verdicts = slo.evaluate(plan, fold)
        if analysed:
            from loadforge.analysis import scaling

            verdicts += scaling.annotate(summary, plan, fold)
        else:
            nothing_to_analyse(summary)
    ok = all(v["ok"] for v in verdicts) and feed.abort_reason is None and failure is None
    result = {"run_id": run_id, "result": saved, "ok": ok, "target": redact_url(target.url),
              "profile": plan.name, "workers": workers, "connections": plan.connections,
              "timer_resolution_us": round(plan.timer_resolution_s * 1e6, 3),
              "started": started, **summary, "slo": verdicts, "aborted": feed.abort_reason,
              # The target saw these too: servers' counts reconcile with requests + these.
              "preflight": {"requests": 1 if opts.preflight else 0}, **state,
              "feeder_exhausted": _exhausted(agg, compiled)}
    if tls_info is not None:
        result["tls"] = tls_info
    if plan.flows is not None:
        result["flows"] = agg.flow_figures()
    if pool is not None and not isinstance(pool, WorkerPool):
        result["shards"] = pool.figures(ran_s)
    if live is not None:
        live.finish(result)
    return RunOutcome(result, saved, ok, stop.signum, failure)


class IntervalFeed:
    """What the runner does with each interval the collect loop yields (session.collect), in
    interval order: its rows to the result file and, as the file takes them, into the fold the
    verdicts judge (so the verdicts judge exactly the rows the file holds); the objectives
    with abort_after judged (analysis/slo.LiveSLO); the progress line and the live outputs
    (--metrics, --dashboard, --stream) shown. It asks the loop to stop (Stop.ask) when an
    objective is breached or the file can no longer be written."""

    def __init__(self, writer: ResultWriter, fold: figures.RunFold,
                 judge: Callable[[int, list[dict[str, Any]]], str | None] | None = None,
                 progress: LiveProgress | None = None, live: LiveOutputs | None = None):
        self.writer = writer
        self.fold = fold
        self.judge = judge
        self.progress = progress
        self.live = live
        self.abort_reason: str | None = None   # the first objective that stopped the run

    def write(self, rows: list[dict[str, Any]], last: bool = False) -> None:
        if self.writer.write(rows, last):
            self.fold.add(rows)

    def interval(self, merged: MergedInterval, stop: Stop) -> None:
        self.write(merged.rows)
        if merged.shard_rows:
            self.write(merged.shard_rows)
        if self.writer.failure:
            # A full disk or a removed folder stops the run as an abort does: workers stop
            # scheduling and report what is in flight, so the counts kept are whole.
            stop.ask()
        reason = self.judge(merged.index, merged.rows) if self.judge is not None else None
        if reason and self.abort_reason is None:
            self.abort_reason = reason
            stop.ask()
        if self.progress is not None:
            self.progress.show(merged)
        if self.live is not None:
            self.live.interval(merged)


def _metadata(plan: Plan, opts: RunOptions, target: Target, workers: int,
              tls_info: dict[str, Any] | None, negotiated: dict[str, Any]) -> dict[str, Any]:
    """The result file's metadata known at the start (_end_metadata adds how it ended)."""
    from loadforge.config.redact import redact_profile, redact_url

    metadata: dict[str, Any] = {
        # Result files are shared (CI artifacts): no credentials in them (redact.py).
        "profile": redact_profile(plan.source, plan.secrets), "profile_name": plan.name,
        "profile_path": plan.path, "target": redact_url(target.url), "engine": "cython-epoll",
        "workers": str(workers),
        "connections": str(plan.connections),
        "http": plan.http,
        # What counted as an error, so that a later default never re-judges this run.
        "fail_status": list(plan.fail_status),
        # ... and per request name its expect_status, where it has one: the engine recorded
        # its responses as "unexpected" / "expected" by it (config/outcomes.py)
        **({"expect_status": {r.name: list(r.expect_status) for r in plan.requests
                              if r.expect_status}}
           if any(r.expect_status for r in plan.requests) else {}),
        **({"streams": str(plan.streams)} if plan.http == "2" else {}),
        "stages": [{"name": s.name, "duration_s": s.duration_s, "rate_from": s.rate_from,
                    "rate_to": s.rate_to, "concurrency": s.concurrency, "think_s": s.think_s}
                   for s in plan.stages],
        "interval_ms": str(int(opts.interval_s * 1000)),
        # Open-model sends may be up to this late (counted in latency): runs measured at
        # different resolutions differ by up to it in their latency (compare notes it).
        "timer_resolution_us": f"{plan.timer_resolution_s * 1e6:g}",
    }
    if opts.slo_flags:
        metadata["slo_flags"] = opts.slo_flags
    if tls_info is not None and negotiated:
        metadata["tls"] = tls_info
    if opts.shards:
        metadata["shard_count"] = str(opts.shards)
    return metadata


def _progress(total_s: float, console: Console, quiet: bool
              ) -> contextlib.AbstractContextManager[LiveProgress | None]:
    """The progress display, built only where it shows (not with --quiet)."""
    if quiet:
        return contextlib.nullcontext()
    from loadforge.run.progress import LiveProgress

    return LiveProgress(total_s, console)


def _analysed(plan: Plan, backend_header: str | None, observing: bool) -> bool:
    """Whether analysis/scaling has anything to analyse: objectives (recovery is judged by
    the run's latency and error objectives), responses attributed to backends, metric rows
    or actions (observing: sources, actions, the sandbox's metrics)."""
    return bool(plan.slo or backend_header or observing)


# What analysis/scaling.annotate adds to a run with nothing to analyse (`_analysed` false):
# the summary keeps its shape without the module (tests/test_merge.py checks the two agree).
NO_BACKENDS: dict[str, Any] = {
    "backends": {}, "fairness": None, "unattributed": 0, "metrics": {}, "actions": []}
NO_RECOVERY: dict[str, Any] = {
    "time_to_recover_s": None, "violation_s": None, "recovered": None,
    "first_violation_s": None, "recovery_note": "no latency or error objective to judge by",
    "error_budget_burn": None}
NO_SCALE_OUT: dict[str, Any] = {
    "first_new_backend_s": None, "new_backends": [], "backends_source": "backends serving",
    "backends_start": None, "backends_end": None, "backends_max": None, "settle_s": None}


def nothing_to_analyse(summary: dict[str, Any]) -> None:
    """The scaling analysis of a run with nothing to analyse, as scaling.annotate gives it."""
    summary.update(copy.deepcopy(NO_BACKENDS))
    for block in summary.get("stages", []):
        block.update(NO_RECOVERY)
        block["scale_out"] = copy.deepcopy(NO_SCALE_OUT)


def _exhausted(agg: Aggregator,
               compiled: Compiled | None) -> dict[str, Any] | None:
    """The summary's `feeder_exhausted`: the `unique` feeder whose rows ran out, ending the
    run, and how many it had (each sent once); None when none did."""
    if agg.exhausted is None or compiled is None \
            or not 0 <= agg.exhausted[0] < len(compiled.tables):
        return None
    table = compiled.tables[agg.exhausted[0]]
    return {"feeder": table.feeder.name, "rows": table.rows,
            "at_s": round(max(0.0, (agg.exhausted[1] - agg.t0_ns) / 1e9), 3)}


def _remote_shards(opts: RunOptions, run_id: str) -> dict[str, Any]:
    """ShardPool's arguments beyond the local launcher's defaults: where it listens, who
    launches the shards (kube.py), how long they have, the run's token (shards.py)."""
    from loadforge.run.shards import TOKEN_ENV, new_token, write_token

    if opts.launcher == "kubernetes":
        from loadforge.run.kube import KubeLauncher, bind_address

        kube = opts.kube
        return {"bind": bind_address(kube.coordinator_host), "port": kube.coordinator_port,
                "remote": KubeLauncher(kube, run_id, opts.shards),
                "start_timeout_s": kube.start_timeout_s}
    out: dict[str, Any] = {}
    if opts.coordinator_address is not None:
        out["bind"], out["port"] = opts.coordinator_address
    if opts.launcher == "external":
        # Shards started by someone else: the token they were given, or a fresh one in the file
        # they read.
        token = os.environ.get(TOKEN_ENV, "").strip()
        if opts.shard_token_file:
            token = new_token()
            write_token(opts.shard_token_file, token)
        out["token"] = token
        out["start_timeout_s"] = opts.shard_start_timeout_s
    return out


def _end_metadata(stop: Stop, ran_s: float, failure: str | None) -> dict[str, str]:
    """What the Parquet metadata says of how the run ended (known only at its end)."""
    meta = {"interrupted": "true" if stop.signum else "false", "ran_s": f"{ran_s:.3f}",
            "complete": "false" if failure else "true"}
    if stop.signum:
        meta["interrupted_by"] = signal.Signals(stop.signum).name
    if failure:
        from loadforge.config.redact import redact_message

        meta["incomplete_reason"] = redact_message(failure)
    return meta


