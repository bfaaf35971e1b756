#!/usr/bin/env python3
"""CPU per request over HTTP/2 (h2c), loadforge against h2load, in one run.

Starts its own nginx (Debian package `nginx`) on a free loopback port with `listen ... http2`
(h2c by prior knowledge), then alternates, ROUNDS times:

  h2load -c 4 -m 100 -t 1 -D SECONDS URL                     (nghttp2-client, h2load's default
                                                              closed loop: 4 x 100 streams)
  loadforge run --target URL --http 2 --concurrency 400 --connections 4 --streams 100
      --duration SECONDS --workers 1 --summary-json ...      (the same load, closed model)

and prints the user + system CPU microseconds per request of each whole command (loadforge's
start-up and coordinator included), with requests counted by nginx's access log, and the ratio.
It also runs the engine alone in this process (no coordinator, no start-up) for the cost of the
loop itself. Lower is better.

  python3 benchmarks/h2_cpu.py [--duration 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import _nginx

from loadforge import _core
from loadforge.run.workers import decode_interval, interval_message

# Inside nginx's http block (_nginx.py adds the rest).
NGINX_CONF = """
  access_log {dir}/access.log;
  server {{
    listen 127.0.0.1:{port} http2;
    http2_max_concurrent_streams 128;
    location / {{ add_header X-Served-By nginx-a; return 200 "ok\\n"; }}
  }}
"""


class Nginx:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="lf-h2bench-")
        self.port = _nginx.free_port()
        self.proc = _nginx.start(self.dir, NGINX_CONF.format(dir=self.dir, port=self.port),
                                 self.port)
        self.url = f"http://127.0.0.1:{self.port}/"

    def served(self) -> int:
        time.sleep(0.3)
        with open(os.path.join(self.dir, "access.log"), "rb") as f:
            return sum(1 for _ in f)

    def stop(self) -> None:
        _nginx.stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def cpu_of(cmd: list[str]) -> float:
    """CPU seconds (user + system) of cmd and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in (0, 1):
        sys.exit(f"command failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def engine_alone(nginx: Nginx, seconds: float) -> float:
    """CPU per request of the engine in this process, 4 connections x 100 streams."""
    headers = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
               (b":authority", f"127.0.0.1:{nginx.port}".encode()), (b"user-agent", b"bench")]
    engine = _core.Engine("127.0.0.1", nginx.port, [(b"", False)], [0],
                          [(False, 0.0, 0.0, seconds, 400, 0.0)], 4, http2=[(headers, b"")],
                          streams=100)
    payloads: list[tuple[bytes, int, int]] = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    engine.run(_core.now_ns() + 50_000_000, lambda p, o, i: payloads.append((p, o, i)))
    after = resource.getrusage(resource.RUSAGE_SELF)
    n = sum(c.n for p in payloads for c in decode_interval(interval_message(*p)).cells)
    return ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("h2load"):
        sys.exit("h2load is not installed: apt-get install -y nghttp2-client")
    if _core.http2_library():
        sys.exit(f"loadforge's HTTP/2 needs libnghttp2.so.14: {_core.http2_library()}")
    nginx = Nginx()
    h2load_us: list[float] = []
    lf_us: list[float] = []
    alone_us: list[float] = []
    try:
        for _ in range(args.rounds):
            before = nginx.served()
            cpu = cpu_of(["h2load", "-c", "4", "-m", "100", "-t", "1", "-D", str(args.duration),
                          nginx.url])
            h2load_us.append(cpu / (nginx.served() - before) * 1e6)
            with tempfile.TemporaryDirectory() as d:
                before = nginx.served()
                summary = os.path.join(d, "summary.json")
                cpu = cpu_of([sys.executable, "-m", "loadforge.cli", "run", "--target", nginx.url,
                              "--http", "2", "--concurrency", "400", "--connections", "4",
                              "--streams", "100", "--duration", f"{args.duration}s",
                              "--workers", "1", "--quiet", "--out", d, "--summary-json",
                              summary])
                served = nginx.served() - before
                counted = json.load(open(summary))["requests"]
                if served != counted + 1:     # + the preflight
                    print(f"warning: nginx served {served}, loadforge counted {counted} + 1")
                lf_us.append(cpu / counted * 1e6)
            alone_us.append(engine_alone(nginx, args.duration))
    finally:
        nginx.stop()
    h, lf, alone = (statistics.median(x) for x in (h2load_us, lf_us, alone_us))

    def runs(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in xs)

    print(f"h2load -c4 -m100      {h:7.2f} us CPU/request  (runs: {runs(h2load_us)})")
    print(f"loadforge --http 2    {lf:7.2f} us CPU/request  (runs: {runs(lf_us)})")
    print(f"engine alone          {alone:7.2f} us CPU/request  (runs: {runs(alone_us)})")
    print(f"ratio loadforge/h2load = {lf / h:.2f} (engine alone: {alone / h:.2f})")


if __name__ == "__main__":
    main()
