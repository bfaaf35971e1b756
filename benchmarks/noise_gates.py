#!/usr/bin/env python3
"""How often a noise-aware gate finds a small real difference, and how often it cries wolf.

Two sandbox targets on 127.0.0.1 answer after a constant service time of 1.0 ms (A) and
1.1 ms (B). Each of COMPARISONS rounds runs RUNS short runs against A, RUNS more against A,
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
import subprocess
import sys
import tempfile
import time

PORTS = {"A": 25001, "B": 25002}
SERVICE = {"A": "1ms", "B": "1100us"}
CONFIG = """
[sandbox]
backends = 2
[sandbox.backend]
service_time = "{service}"
concurrency = 64
[sandbox.health]
enabled = false
"""


def loadforge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadforge.cli", *args], capture_output=True,
                          text=True, timeout=120)


def start_sandboxes(directory: str) -> list[subprocess.Popen]:
    procs = []
    for cfg, port in PORTS.items():
        path = os.path.join(directory, f"{cfg}.toml")
        with open(path, "w") as f:
            f.write(CONFIG.format(service=SERVICE[cfg]))
        procs.append(subprocess.Popen([sys.executable, "-m", "loadforge.cli", "sandbox",
                                       "--port", str(port), "--config", path],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(2.0)
    return procs


def one_run(out: str, cfg: str, label: str, rate: str, duration: str) -> str:
    before = set(os.listdir(out)) if os.path.isdir(out) else set()
    r = loadforge("run", "--target", f"http://127.0.0.1:{PORTS[cfg]}/", "--rate", rate,
                  "--duration", duration, "--workers", "1", "--quiet", "--out", out,
                  "--label", f"cfg={label}")
    if r.returncode not in (0, 1):
        sys.exit(f"run failed ({r.returncode}): {r.stderr.strip()}")
    (new,) = set(os.listdir(out)) - before
    return os.path.join(out, new)


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
        procs = start_sandboxes(d)
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
            for p in procs:
                p.terminate()
    n = a.comparisons
    print(f"gate {a.gate}, {a.runs} runs a side, {n} comparisons, "
          f"runs of {a.duration} at {a.rate}/s against 1.0 ms vs 1.1 ms:")
    print(f"  groups (U test + bootstrap): detected {counts['found']}/{n}, "
          f"false alarms {counts['false']}/{n}")
    print(f"  one run a side:              detected {counts['found1']}/{n}, "
          f"false alarms {counts['false1']}/{n}")


if __name__ == "__main__":
    main()
