#!/usr/bin/env python3
"""False alarms and detections of `compare --group-by`'s gates on nginx, at 3 and 5 runs a side.

One nginx on 127.0.0.1 (port 23100 unless --port) serves `/` at once and `/slow` after 20 ms
(`echo_sleep`, libnginx-mod-http-echo). Each of COMPARISONS rounds runs RUNS short runs of
`/` (group A), RUNS more of `/` (A2) and RUNS of `/slow` (B), interleaved so that drift on the
machine hits every group alike, then per side size k in --sides (default 3 and 5: the first k
runs of each group):

- `compare A A2 --group-by cfg --fail-on GATE...`: a failed gate is a false alarm;
- `compare A B ...`: a failed gate is a detection.

  python3 benchmarks/nginx_gates.py [--comparisons 20] [--sides 3,5] [--gate p50=+10%]...

Needs nginx and its echo module (`/usr/lib/nginx/modules/ngx_http_echo_module.so`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"
CONF = """
load_module {module};
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "ok\\n"; }}
    location /slow {{ echo_sleep 0.02; echo ok; }}
  }}
}}
"""


def loadforge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadforge.cli", *args], capture_output=True,
                          text=True, timeout=120)


def start_nginx(directory: str, port: int) -> subprocess.Popen[bytes]:
    conf = os.path.join(directory, "nginx.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(module=ECHO_MODULE, dir=directory, port=port))
    proc = subprocess.Popen([shutil.which("nginx") or "nginx", "-c", conf, "-e",
                             os.path.join(directory, "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"nginx did not start: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"nginx did not listen on 127.0.0.1:{port}")


def one_run(out: str, url: str, label: str, rate: str, duration: str) -> str:
    summary = os.path.join(out, "last.json")
    r = loadforge("run", "--target", url, "--rate", rate, "--duration", duration,
                  "--workers", "1", "--quiet", "--out", out, "--label", f"cfg={label}",
                  "--summary-json", summary)
    if r.returncode not in (0, 1):
        sys.exit(f"run failed ({r.returncode}): {r.stderr.strip()}")
    with open(summary) as f:
        return str(json.load(f)["result"])


def gate_fails(files: list[str], gates: list[str]) -> tuple[bool, float]:
    """Whether any gate failed, and the largest p-value among the gates' checks."""
    args = ["compare", *files, "--group-by", "cfg", "--baseline", "cfg=A", "--format", "json"]
    for gate in gates:
        args += ["--fail-on", gate]
    r = loadforge(*args)
    if r.returncode not in (0, 1):
        sys.exit(f"compare failed ({r.returncode}): {r.stderr.strip()}")
    data = json.loads(r.stdout)
    return not data["ok"], max((c.get("p_value") or 1.0) for c in data["gates"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comparisons", type=int, default=20)
    ap.add_argument("--sides", default="3,5", help="runs a side to test, comma-separated")
    ap.add_argument("--gate", action="append", help="default: p50=+10%% and p99=+10%%")
    ap.add_argument("--rate", default="300")
    ap.add_argument("--duration", default="2s")
    ap.add_argument("--port", type=int, default=23100)
    a = ap.parse_args()
    gates = a.gate or ["p50=+10%", "p99=+10%"]
    sides = sorted(int(k) for k in a.sides.split(","))
    if not os.path.exists(ECHO_MODULE):
        sys.exit(f"needs nginx's echo module ({ECHO_MODULE}): apt-get install "
                 "libnginx-mod-http-echo")
    base = f"http://127.0.0.1:{a.port}"
    with tempfile.TemporaryDirectory(prefix="lf-gates-") as d:
        nginx = start_nginx(d, a.port)
        try:
            counts = {k: {"false": 0, "found": 0} for k in sides}
            for c in range(a.comparisons):
                out = os.path.join(d, f"c{c}")
                files: dict[str, list[str]] = {"A": [], "A2": [], "B": []}
                for _ in range(sides[-1]):
                    for label, path in (("A", "/"), ("A2", "/"), ("B", "/slow")):
                        files[label].append(one_run(out, base + path, label, a.rate,
                                                    a.duration))
                for k in sides:
                    alarm, _ = gate_fails(files["A"][:k] + files["A2"][:k], gates)
                    found, _ = gate_fails(files["A"][:k] + files["B"][:k], gates)
                    counts[k]["false"] += alarm
                    counts[k]["found"] += found
                print(f"comparison {c + 1}/{a.comparisons}: {counts}", flush=True)
        finally:
            nginx.terminate()
            nginx.wait(timeout=10)
    n = a.comparisons
    print(f"gates {' '.join(gates)}; runs of {a.duration} at {a.rate}/s; nginx / against / "
          f"(same) and against /slow (+20 ms); {n} comparisons per side size:")
    for k in sides:
        print(f"  {k} runs a side: detected {counts[k]['found']}/{n}, "
              f"false alarms {counts[k]['false']}/{n}")


if __name__ == "__main__":
    main()
