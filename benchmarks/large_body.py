#!/usr/bin/env python3
"""Latency of a large response, loadforge side by side with wrk and curl, in one run.

Starts nginx (Debian package `nginx`) on a free port of 127.0.0.1 serving one file of SIZE
bytes (2 MiB by default), then times the same URL with
  - curl: sequential requests on one connection, `%{time_total}` each (what one client sees);
  - wrk: one connection, closed loop, its latency distribution (`--latency`);
  - loadforge: a low open-model rate (10/s), so that the loop sleeps between arrivals and
    any dependence of a response's timing on the loop's pace shows up in full.
and prints p50 / p99 / max in milliseconds for each. A body larger than the socket buffers can
only leave the server as fast as the client reads it: a client that reads it at its own pace
reports its own pace (before issue 10's fix: p50 ~270 ms for 2 MiB, where wrk measures ~2 ms).

  python3 benchmarks/large_body.py [--size 2097152] [--rate 10] [--duration 5]
      [--loadforge "loadforge"]

--loadforge is the command that runs loadforge (e.g. "python -m loadforge.cli" from another
checkout, to compare two builds in the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile

import _nginx

# Inside nginx's http block (_nginx.py adds the rest).
NGINX_CONF = """
  access_log off;
  server {{
    listen 127.0.0.1:{port};
    location / {{ root {dir}/files; }}
  }}
"""


def start_nginx(size: int) -> tuple[subprocess.Popen[bytes], str, str]:
    tmp = tempfile.mkdtemp(prefix="lf-bench-")
    os.makedirs(os.path.join(tmp, "files"))
    with open(os.path.join(tmp, "files", "body.bin"), "wb") as f:
        f.write(b"x" * size)
    # nginx's workers run as an unprivileged user.
    for path in (tmp, os.path.join(tmp, "files")):
        os.chmod(path, 0o755)
    os.chmod(os.path.join(tmp, "files", "body.bin"), 0o644)
    port = _nginx.free_port()
    proc = _nginx.start(tmp, NGINX_CONF.format(dir=tmp, port=port), port)
    return proc, f"http://127.0.0.1:{port}/body.bin", tmp


def quantiles_ms(values_s: list[float]) -> tuple[float, float, float]:
    values = sorted(values_s)
    p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
    return statistics.median(values) * 1e3, p99 * 1e3, values[-1] * 1e3


def curl(url: str, n: int) -> tuple[float, float, float]:
    # One -o per URL: curl applies each to the next URL only.
    out = subprocess.run(["curl", "-s", "-w", "%{time_total}\n",
                          *([url, "-o", "/dev/null"] * n)],
                         capture_output=True, text=True, check=True)
    return quantiles_ms([float(x) for x in out.stdout.split()])


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, duration: int) -> tuple[float, float, float]:
    out = subprocess.run(["wrk", "-t1", "-c1", f"-d{duration}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout

    def ms(pattern: str) -> float:
        m = re.search(pattern + r"\s+([\d.]+)(us|ms|s)\b", out)
        return float(m.group(1)) * _WRK_UNITS[m.group(2)] if m else float("nan")

    max_m = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    top = float(max_m.group(1)) * _WRK_UNITS[max_m.group(2)] if max_m else float("nan")
    return ms("50%"), ms("99%"), top


def loadforge(cmd: str, url: str, rate: float, duration: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        summary = os.path.join(tmp, "s.json")
        subprocess.run([*shlex.split(cmd), "run", "--target", url, "--rate", str(rate),
                        "--duration", f"{duration}s", "--connections", "4", "--workers", "1",
                        "--quiet", "--out", tmp, "--summary-json", summary], check=True)
        with open(summary) as f:
            lat = json.load(f)["latency_us"]
    return lat["p50"] / 1e3, lat["p99"] / 1e3, lat["max"] / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2 << 20)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--loadforge", default="loadforge")
    args = ap.parse_args()
    if not shutil.which("nginx"):
        sys.exit("nginx is not installed: apt-get install -y nginx wrk curl")
    proc, url, tmp = start_nginx(args.size)
    try:
        rows = [("curl (sequential)", curl(url, 50))]
        if shutil.which("wrk"):
            rows.append(("wrk -c1", wrk(url, args.duration)))
        rows.append((f"loadforge {args.rate:g}/s", loadforge(args.loadforge, url, args.rate,
                                                             args.duration)))
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.size} B body, latency in ms")
    print(f"{'tool':<24}{'p50':>9}{'p99':>9}{'max':>9}")
    for name, (p50, p99, top) in rows:
        print(f"{name:<24}{p50:>9.2f}{p99:>9.2f}{top:>9.2f}")


if __name__ == "__main__":
    main()
