#!/usr/bin/env python3
"""The coordinator of a sharded run at scale: what merging the interval reports of many
shards costs it, per interval, in CPU time, and its peak resident memory.

First one real worker (the Cython engine) runs briefly against the target, so the payloads
are what a shard's worker sends (workers.interval_message: gauges, header, stage counters,
one cell per request name and outcome, two histogram slices each). Then those bytes are
replayed as if from SHARDS shards (their worker and interval numbers rewritten), every
interval, through what the coordinator does with them: decode, count per shard, merge exactly
(run/merge.Aggregator), write the Parquet rows. No network between coordinator and shards: this
measures the coordinator's own work, the part that does not scale out.

  python3 benchmarks/coordinator_scale.py http://127.0.0.1:18080/ --shards 100 --intervals 60

Targets on loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import struct
import sys
import tempfile
import time
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadforge.config.plan import STATUS_OUTCOMES, Plan, Request, Stage  # noqa: E402
from loadforge.results.store import ResultWriter  # noqa: E402
from loadforge.run import wire, workers  # noqa: E402
from loadforge.run.merge import Aggregator  # noqa: E402
from loadforge.run.session import start, worker_specs  # noqa: E402
from loadforge.run.target import parse_target  # noqa: E402

REQUESTS = (Request("home", path="/", weight=6), Request("item", path="/item", weight=3),
            Request("missing", path="/missing", weight=1))
_AT = 1 + wire.GAUGES.size              # the header, after the tag and the gauges
# run/wire.HEADER: magic I, version H, final H, worker I, stages I, interval index q, ...
_FINAL = struct.Struct("<H")
_WORKER = struct.Struct("<I")
_INDEX = struct.Struct("<q")


def capture(url: str, rate: float, seconds: int) -> list[bytes]:
    """One worker's INTERVAL messages for a short real run."""
    plan = Plan("capture", url, (Stage("s", float(seconds), rate, rate),), REQUESTS,
                connections=16)
    specs = worker_specs(plan, parse_target(url), 1, 1.0, None)
    pool = workers.WorkerPool(specs)
    messages: list[bytes] = []
    try:
        start(pool)
        while True:
            msg = pool.channels[0].recv_bytes()
            if msg[:1] == workers.INTERVAL:
                messages.append(msg)
            elif msg[:1] in (workers.DONE, workers.FAILED):
                break
        pool.join()
    finally:
        pool.terminate()
    return messages


def as_from(template: bytes, worker: int, index: int, final: bool) -> bytes:
    msg = bytearray(template)
    _FINAL.pack_into(msg, _AT + 6, 1 if final else 0)
    _WORKER.pack_into(msg, _AT + 8, worker)
    _INDEX.pack_into(msg, _AT + 16, index)
    return bytes(msg)


def replay(template: bytes, shards: int, intervals: int, out_dir: str) -> dict[str, object]:
    plan = Plan("scale", "http://127.0.0.1:9/", (Stage("s", float(intervals), 1.0, 1.0),),
                REQUESTS)
    writer = ResultWriter(os.path.join(out_dir, "scale.parquet"), "scale", {})
    cpu_ms: list[float] = []
    rss_mb: dict[int, float] = {}         # after interval N: resident memory now
    counts = [[0, 0, 0, 0] for _ in range(shards)]
    agg = Aggregator(plan, shards, 1.0)
    agg.shard_of = lambda k: k % shards
    for i in range(intervals):
        # The shards' messages of this interval, built before its clock starts (as they
        # would sit in the sockets' buffers), and dropped after it.
        batch = [as_from(template, s, i, i == intervals - 1) for s in range(shards)]
        started = time.process_time()
        for s, msg in enumerate(batch):           # as ShardPool._worker_message does
            report = workers.decode_interval(msg)
            c = counts[s]
            c[0] += sum(cell.n for cell in report.cells
                        if cell.outcome in STATUS_OUTCOMES)
            c[1] += sum(report.sent)
            c[2] += sum(report.unsent)
            c[3] += sum(report.scheduled)
            agg.add(report)
            for merged in agg.take():             # as the runner's IntervalFeed does
                writer.write(merged.rows)
                writer.write(merged.shard_rows)
        cpu_ms.append((time.process_time() - started) * 1000)
        del batch
        if (i + 1) % 10 == 0:
            rss_mb[i + 1] = round(_rss_kb() / 1024, 1)
    started = time.process_time()
    for merged in agg.drain():
        writer.write(merged.rows)
        writer.write(merged.shard_rows)
    rows, _ = agg.finish(float(intervals))
    writer.write(rows, last=True)
    writer.close({})
    finish_ms = (time.process_time() - started) * 1000
    steady = sorted(cpu_ms[:-1]) or cpu_ms
    return {"cpu_ms_per_interval": {"median": round(statistics.median(steady), 2),
                                    "p90": round(steady[int(0.9 * (len(steady) - 1))], 2),
                                    "max": round(max(steady), 2)},
            "cpu_ms_last_interval_and_finish": round(cpu_ms[-1] + finish_ms, 2),
            "rss_mb_after_interval": rss_mb,
            "result_mb": round(os.path.getsize(os.path.join(out_dir, "scale.parquet")) / 1e6,
                               2)}


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", help="a loopback URL, e.g. http://127.0.0.1:18080/")
    ap.add_argument("--shards", type=int, default=100)
    ap.add_argument("--intervals", type=int, default=60)
    ap.add_argument("--rate", type=float, default=2000.0, help="of the capture run")
    args = ap.parse_args()
    host = urlsplit(args.target).hostname
    if host not in ("127.0.0.1", "::1", "localhost"):
        sys.exit(f"error: {args.target}: loopback targets only")
    messages = capture(args.target, args.rate, 4)
    full = [m for m in messages if not workers.decode_interval(m).final]
    template = max(full or messages, key=len)
    report = workers.decode_interval(template)
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as d:
        figures = replay(template, args.shards, args.intervals, d)
    print(json.dumps({
        "shards": args.shards, "intervals": args.intervals,
        "report_bytes": len(template), "cells_per_report": len(report.cells),
        "requests_per_report": sum(c.n for c in report.cells),
        **figures,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_mb_before_replay": round(rss_before_kb / 1024, 1)}, indent=2))


if __name__ == "__main__":
    main()
