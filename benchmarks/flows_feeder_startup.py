#!/usr/bin/env python3
"""Start-up time and memory of a scripted-flows worker that reads a large feeder.

Writes a CSV feeder of --rows rows (three columns), a one-flow module that reads user.row,
and prepares the run as `loadforge run` does (session.compile_feeders, the worker specs),
then starts --workers worker processes and times them from their start to READY (the engine
built, the rows ready to read). Prints the coordinator's compile time, each worker's time to
READY and its peak resident memory (VmHWM). No request is sent: the workers are killed at
READY, so no target is needed (the target address is never dialled).

  python3 benchmarks/flows_feeder_startup.py [--rows 1000000] [--workers 1]
      [--order sequential|random|unique]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time

from loadforge.config.plan import Request
from loadforge.config.profile import plan_from_dict
from loadforge.flows import loader
from loadforge.run import session
from loadforge.run import target as targets
from loadforge.run.workers import WorkerPool

FLOW = '''
from loadforge.flows import flow

@flow
async def login(user):
    await user.post("/login", json={"name": user.row["name"]}, name="login")
'''


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--order", default="sequential", choices=("sequential", "random", "unique"))
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="lf-flows-startup-")
    try:
        csv_path = os.path.join(folder, "users.csv")
        with open(csv_path, "w") as f:
            f.write("id,name,email\n")
            f.writelines(f"{100000 + i},user{i},user{i}@example.com\n"
                         for i in range(args.rows))
        module = os.path.join(folder, "flow.py")
        with open(module, "w") as f:
            f.write(FLOW)
        # The target is never dialled: the workers are killed once they are ready.
        plan = plan_from_dict({
            "target": "http://127.0.0.1:28999",
            "load": {"connections": args.workers},
            "feeders": [{"name": "users", "file": csv_path, "order": args.order}],
            "stages": [{"duration": "1s", "rate": 10}],
            "flows": {"module": module},
        }, path=os.path.join(folder, "bench.toml"))
        flows = loader.load(plan.flows)
        plan = dataclasses.replace(plan, requests=tuple(Request(name=n) for n in flows.names))
        target = targets.parse_target(plan.target)
        t = time.perf_counter()
        compiled = session.compile_feeders(plan, target)
        compile_s = time.perf_counter() - t
        try:
            specs = session.worker_specs(plan, target, args.workers, 1.0, None, compiled)
            t = time.perf_counter()
            pool = WorkerPool(specs)
            try:
                pool.wait_ready(600)
                ready_s = time.perf_counter() - t
                peaks = [peak_rss_kib(p.pid) for p in pool.processes]
            finally:
                pool.terminate()
        finally:
            compiled.cleanup()
        print(f"{args.rows:,} rows ({os.path.getsize(csv_path) / 2**20:.1f} MiB CSV), "
              f"{args.order}: compile {compile_s:.2f} s; {args.workers} worker(s) ready in "
              f"{ready_s:.2f} s; peak RSS per worker "
              + ", ".join(f"{k / 1024:.0f} MiB" for k in peaks))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
