#!/usr/bin/env python3
"""Peak memory of a worker and of the coordinator for a short and a long run at the same rate.

Interval data is handed from the workers to the coordinator and streamed to Parquet, so the
long run should need no more than a few MB beyond the short one.

  python3 benchmarks/memory_flat.py http://127.0.0.1:18080/ 10s 600s --rate 5000
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile


def peak_kb(target: str, duration: str, rate: str) -> tuple[int, int, int]:
    with tempfile.TemporaryDirectory() as d:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        cmd = [sys.executable, "-c",
               "import resource, runpy, sys\n"
               "sys.argv = ['loadforge'] + sys.argv[1:]\n"
               "try:\n    runpy.run_module('loadforge.cli', run_name='__main__')\n"
               "finally:\n"
               "    print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
               " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n",
               "run", "--target", target, "--rate", rate, "--duration", duration,
               "--workers", "1", "--quiet", "--out", d, "--summary-json", os.path.join(d, "s.json")]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in out.stderr.splitlines() if x.startswith("PEAK")]
        if out.returncode not in (0, 1) or not line:
            sys.exit(out.stderr[-2000:])
        _, parent, worker = line[-1].split()
        n = json.load(open(os.path.join(d, "s.json")))["requests"]
        del before
        return int(parent), int(worker), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("short")
    ap.add_argument("long")
    ap.add_argument("--rate", default="5000")
    a = ap.parse_args()
    for duration in (a.short, a.long):
        parent, worker, n = peak_kb(a.target, duration, a.rate)
        print(f"{duration:>6}: {n:>9} requests  coordinator peak {parent / 1024:7.1f} MB  "
              f"worker peak {worker / 1024:7.1f} MB")


if __name__ == "__main__":
    main()
