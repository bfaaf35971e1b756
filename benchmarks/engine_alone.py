#!/usr/bin/env python3
"""CPU per request of the engine alone, in this process: no coordinator, no start-up.

Runs `_core.Engine` against a server on 127.0.0.1 (nginx from ../shared/bench on port 18080
by default), once in the closed model and once per timer resolution in the open model, and
prints CPU per request (user + system of this process), loop wake-ups per request and p50
latency and service time. Interval reports are kept and decoded after the run, so Python
costs nothing while the engine runs.

  python3 benchmarks/engine_alone.py [--url http://127.0.0.1:18080/] [--rate 40000]
      [--connections 50] [--duration 5] [--resolutions 0,100,200,1000]
"""

from __future__ import annotations

import argparse
import resource
import sys
from urllib.parse import urlsplit

from loadforge import _core
from loadforge.engine import histogram
from loadforge.run.workers import decode_interval, interval_message


def run(url: str, stage: tuple, connections: int, resolution_us: float) -> str:
    parts = urlsplit(url)
    request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    engine = _core.Engine(parts.hostname, parts.port or 80, [(request, False)], [0], [stage],
                          connections, timer_resolution_s=resolution_us / 1e6)
    payloads: list[tuple[bytes, int, int]] = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    engine.run(_core.now_ns() + 50_000_000, lambda p, o, i: payloads.append((p, o, i)))
    after = resource.getrusage(resource.RUSAGE_SELF)
    latency, service = histogram.new_histogram(), histogram.new_histogram()
    for payload, open_conns, in_flight in payloads:
        report = decode_interval(interval_message(payload, open_conns, in_flight))
        for cell in report.cells:
            for h, s in ((latency, cell.latency), (service, cell.service)):
                histogram.add_slice(h, s.lo, s.counts, s.total, s.min_us, s.max_us)
    n = latency.total_count
    if not n:
        return "no responses"
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return (f"{cpu / n * 1e6:6.2f} us CPU/request, {engine.wakeups / n:5.2f} waits/request, "
            f"p50 latency {histogram.stats(latency)['p50']} us, "
            f"p50 service {histogram.stats(service)['p50']} us, {n} requests")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:18080/")
    ap.add_argument("--rate", type=float, default=40000)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--resolutions", default="0,100,200,1000", help="timer resolutions, µs")
    args = ap.parse_args()
    print(f"closed model, {args.connections} connections:",
          run(args.url, (False, 0.0, 0.0, args.duration, args.connections, 0.0),
              args.connections, 100))
    for res in args.resolutions.split(","):
        print(f"open model, {args.rate:.0f}/s, timer resolution {res:>4} us:",
              run(args.url, (True, args.rate, args.rate, args.duration, 0, 0.0),
                  args.connections, float(res)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
