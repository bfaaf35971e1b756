#!/usr/bin/env python3
"""Resident memory of the coordinator and of its workers, for a short and a long run at the
same rate, sampled from /proc twice a second.

Interval data is handed from the workers to the coordinator and streamed to Parquet, so the
long run should need no more than a few MB beyond the short one.

  python3 benchmarks/memory_flat.py http://127.0.0.1:18080/ 10s 600s --rate 5000
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def worker_pids(pid: int) -> list[int]:
    out = []
    for child in children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"loadforge.run.workers" in f.read():
                    out.append(child)
        except OSError:
            pass
    return out


def measure(target: str, duration: str, rate: str) -> tuple[int, int, int]:
    with tempfile.TemporaryDirectory() as d:
        summary = os.path.join(d, "s.json")
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadforge.cli", "run", "--target", target, "--rate", rate,
             "--duration", duration, "--workers", "1", "--quiet", "--out", d,
             "--summary-json", summary], stderr=subprocess.PIPE, text=True)
        parent = worker = 0
        while proc.poll() is None:
            parent = max(parent, rss_kb(proc.pid))
            for w in worker_pids(proc.pid):
                worker = max(worker, rss_kb(w))
            time.sleep(0.5)
        if proc.returncode not in (0, 1):
            sys.exit(proc.stderr.read()[-2000:] if proc.stderr else "run failed")
        with open(summary) as f:
            return parent, worker, json.load(f)["requests"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("short")
    ap.add_argument("long")
    ap.add_argument("--rate", default="5000")
    a = ap.parse_args()
    for duration in (a.short, a.long):
        parent, worker, n = measure(a.target, duration, a.rate)
        print(f"{duration:>6}: {n:>9} requests  coordinator {parent / 1024:6.1f} MB  "
              f"worker {worker / 1024:6.1f} MB (peak resident)")


if __name__ == "__main__":
    main()
