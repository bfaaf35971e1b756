#!/usr/bin/env python3
"""A worker's memory for its histograms, with latencies spread over several decades.

Runs `_core.Engine` in this process (no coordinator) against the scripted server of
`tests/torture.py`, whose `/spread` mode answers after 0, 1, 3, 10, 30, 100, 300 ms in turn:
NAMES request names x STAGES open-model stages, so NAMES x STAGES cells, each of whose two
histograms spans five decades. Prints the peak resident memory the run added to the process
(ru_maxrss after the run minus before it), and the requests and cells it recorded.

Each cell used to hold two dense HdrHistogram count arrays (2 x 92 KiB); pages that a wide
spread touches are committed, so memory grew with cells x spread. Counts now come in 1 KiB
chunks from one arena, taken when an interval first needs them and given back when it is
flushed. To compare two builds in one sitting, run it with each on PYTHONPATH:

  python3 benchmarks/cells_memory.py [--names 30] [--stages 4] [--rate 400] [--stage-s 2]
  PYTHONPATH=/path/to/other/checkout python3 benchmarks/cells_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

from loadforge import _core

HERE = os.path.dirname(os.path.abspath(__file__))
DELAYS = "0,1,3,10,30,100,300"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--names", type=int, default=30)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--rate", type=float, default=400.0)
    ap.add_argument("--stage-s", type=float, default=2.0)
    args = ap.parse_args()
    server = subprocess.Popen([sys.executable, os.path.join(HERE, "..", "tests", "torture.py")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdin is not None
    port = json.loads(server.stdout.readline())["port"]
    try:
        requests = [(f"GET /spread?ms={DELAYS}&name={i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                     .encode(), False) for i in range(args.names)]
        stages = [(True, args.rate, args.rate, args.stage_s, 0, 0.0)] * args.stages
        engine = _core.Engine("127.0.0.1", port, requests, list(range(args.names)), stages,
                              256, timeout_s=5.0)
        payload_bytes = [0]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        engine.run(_core.now_ns() + 100_000_000,
                   lambda p, o, f: payload_bytes.__setitem__(0, payload_bytes[0] + len(p)))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    finally:
        server.stdin.close()
        server.wait()
    total = int(args.rate * args.stage_s * args.stages)
    print(f"engine from {os.path.dirname(_core.__file__)}")
    print(f"{total} requests over {args.names} names x {args.stages} stages "
          f"(delays {DELAYS} ms): peak RSS grew {(after - before) / 1024:.1f} MB; "
          f"interval payloads {payload_bytes[0] / 1e6:.1f} MB in all")


if __name__ == "__main__":
    main()
