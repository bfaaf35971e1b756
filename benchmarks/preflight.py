#!/usr/bin/env python3
"""The preflight's cost: --rounds preflights (run/preflight.py, through the engine) against
nginx on 127.0.0.1, over HTTP/1.1 and h2c, in this process. Prints the median, p90 and
largest wall time and the mean CPU time of one preflight, in milliseconds.

  nice python3 benchmarks/preflight.py [--rounds 200] [--port 31090]

HTTP/1.1 listens on --port, h2c on --port + 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _nginx  # noqa: E402

SERVER = """
  access_log off;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "ok"; }}
  }}
  server {{
    listen 127.0.0.1:{h2port} http2;
    location / {{ return 200 "ok"; }}
  }}
"""


def main() -> None:
    from loadforge.config.plan import Request
    from loadforge.run import preflight
    from loadforge.run.target import parse_target

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--port", type=int, default=31090)
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="lf-bench-preflight-")
    nginx = _nginx.start(folder, SERVER.format(port=args.port, h2port=args.port + 1),
                         args.port, args.port + 1)
    try:
        for http, port in (("1.1", args.port), ("2", args.port + 1)):
            target = parse_target(f"http://127.0.0.1:{port}/")
            walls, cpus = [], []
            for _ in range(args.rounds):
                wall, cpu = time.perf_counter(), time.process_time()
                preflight.preflight(target, Request(name="home"), 5.0, http=http)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            walls.sort()
            print(f"HTTP/{http:3}  wall median {statistics.median(walls) * 1e3:.2f} ms, "
                  f"p90 {walls[int(len(walls) * 0.9)] * 1e3:.2f} ms, "
                  f"max {walls[-1] * 1e3:.2f} ms; CPU mean {statistics.mean(cpus) * 1e3:.2f} ms")
    finally:
        _nginx.stop(nginx)


if __name__ == "__main__":
    main()
