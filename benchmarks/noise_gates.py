#!/usr/bin/env python3
"""How often a noise-aware gate finds a small real difference, and how often it cries wolf.

Two small servers on 127.0.0.1 (a thread per connection, `time.sleep` before each answer)
answer after 1.0 ms (A) and 1.1 ms (B). (The sandbox's timers are rounded to the millisecond,
too coarse for this.) Each of COMPARISONS rounds runs RUNS short runs against A, RUNS more against A,
and RUNS against B (interleaved, so drift on the machine hits every group alike), then
`loadforge compare --group-by cfg --fail-on GATE`:

- A vs A': a gate failure is a false alarm;
- A vs B: a gate failure is a detection.

  python3 benchmarks/noise_gates.py [--comparisons 20] [--runs 5] [--gate p50=+5%]

Prints both rates, and the same two rates for a plain one-run-a-side gate for contrast.
"""

import argparse
import json
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

DELAY_S = {"A": 0.001, "B": 0.0011}
PORTS: dict[str, int] = {}
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


def loadforge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadforge.cli", *args], capture_output=True,
                          text=True, timeout=120)


class _Delayed(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                try:
                    data = sock.recv(65536)
                except ConnectionError:     # the run ended and closed its connections
                    return
                if not data:
                    return
                buf += data
            _, _, buf = buf.partition(b"\r\n\r\n")
            time.sleep(self.server.delay_s)  # type: ignore[attr-defined]
            sock.sendall(RESPONSE)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def start_servers() -> list[_Server]:
    servers = []
    for cfg, delay in DELAY_S.items():
        server = _Server(("127.0.0.1", 0), _Delayed)
        server.delay_s = delay  # type: ignore[attr-defined]
        PORTS[cfg] = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    return servers


def one_run(out: str, cfg: str, label: str, rate: str, duration: str) -> str:
    summary = os.path.join(out, "last.json")
    r = loadforge("run", "--target", f"http://127.0.0.1:{PORTS[cfg]}/", "--rate", rate,
                  "--duration", duration, "--workers", "1", "--quiet", "--out", out,
                  "--label", f"cfg={label}", "--summary-json", summary)
    if r.returncode not in (0, 1):
        sys.exit(f"run failed ({r.returncode}): {r.stderr.strip()}")
    with open(summary) as f:
        return json.load(f)["result"]


def gate_fails(files: list[str], baseline: str, gate: str, groups: bool) -> bool:
    args = ["compare", *files, "--fail-on", gate, "--format", "json"]
    if groups:
        args += ["--group-by", "cfg", "--baseline", f"cfg={baseline}"]
    r = loadforge(*args)
    if r.returncode not in (0, 1):
        sys.exit(f"compare failed ({r.returncode}): {r.stderr.strip()}")
    return not json.loads(r.stdout)["ok"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comparisons", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gate", default="p50=+5%")
    ap.add_argument("--rate", default="300")
    ap.add_argument("--duration", default="2s")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        servers = start_servers()
        try:
            counts = {"false": 0, "found": 0, "false1": 0, "found1": 0}
            for c in range(a.comparisons):
                out = os.path.join(d, f"c{c}")
                files = {"A": [], "A2": [], "B": []}
                for _ in range(a.runs):
                    for label, cfg in (("A", "A"), ("A2", "A"), ("B", "B")):
                        files[label].append(one_run(out, cfg, label, a.rate, a.duration))
                counts["false"] += gate_fails(files["A"] + files["A2"], "A", a.gate, True)
                counts["found"] += gate_fails(files["A"] + files["B"], "A", a.gate, True)
                counts["false1"] += gate_fails([files["A"][0], files["A2"][0]], "A", a.gate,
                                               False)
                counts["found1"] += gate_fails([files["A"][0], files["B"][0]], "A", a.gate,
                                               False)
                print(f"comparison {c + 1}/{a.comparisons}: {counts}", flush=True)
        finally:
            for server in servers:
                server.shutdown()
    n = a.comparisons
    print(f"gate {a.gate}, {a.runs} runs a side, {n} comparisons, "
          f"runs of {a.duration} at {a.rate}/s against 1.0 ms vs 1.1 ms:")
    print(f"  groups (hierarchical bootstrap):detected {counts['found']}/{n}, "
          f"false alarms {counts['false']}/{n}")
    print(f"  one run a side:              detected {counts['found1']}/{n}, "
          f"false alarms {counts['false1']}/{n}")


if __name__ == "__main__":
    main()
