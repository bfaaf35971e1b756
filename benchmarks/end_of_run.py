#!/usr/bin/env python3
"""The end of a run: the time and the coordinator's CPU from the end of the collect loop (the
last interval received) to the summary printed and the process exiting, and the total CPU
of the run, against nginx on 127.0.0.1, --rounds times each:

- "plain": `benchmarks/startup.py`'s run (1 s at 100/s, one request, no objectives);
- "judged": 3 stages (open, ramp, closed) over 5 s, four request names (a 404 and a 503
  among them), two backends named by a response header, run, stage and window objectives
  and a time_to_recover: the summary, the SLO and the scaling verdicts all have work to do;
- "judged 60 s" with --long: the same with 20 s stages (what the end of a run costs grows
  with the intervals the verdicts judge).

Each round is `python -m loadforge.cli run ...` with the collect loop's end marked from a
small driver (`run.session.collect` wrapped, an atexit hook at the end). Prints the median
and range of each figure.

  nice python3 benchmarks/end_of_run.py [--rounds 7] [--port 31090] [--long]
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _nginx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SERVER = """
  access_log off;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "ok"; }}
    location /a {{ add_header X-Served-By b1 always; return 200 "a"; }}
    location /b {{ add_header X-Served-By b2 always; return 200 "b"; }}
    location /missing {{ add_header X-Served-By b1 always; return 404; }}
    location /fail {{ add_header X-Served-By b2 always; return 503; }}
  }}
"""

JUDGED = """
name = "judged"
[load]
connections = 8
workers = 2
[observe]
backend_header = "X-Served-By"
window = "2s"
[[stages]]
name = "steady"
rate = 150
duration = "2s"
[[stages]]
name = "ramp"
ramp = { from = 150, to = 300 }
duration = "2s"
[[stages]]
name = "closed"
concurrency = 2
think = "20ms"
duration = "1s"
[[requests]]
name = "a"
path = "/a"
weight = 5
[[requests]]
name = "b"
path = "/b"
weight = 5
[[requests]]
name = "missing"
path = "/missing"
weight = 1
[[requests]]
name = "fail"
path = "/fail"
weight = 1
[slo]
p99 = "2s"
error_rate = "50%"
rate_shortfall = "50%"
[[slo.stages]]
stage = "ramp"
grace = "1s"
p90 = "2s"
error_rate = "30%"
time_to_recover = "2s"
[[slo.windows]]
window = "2s"
p50 = "1s"
"""

# Runs the CLI in this process, marking the collect loop's end; prints the marks last.
DRIVER = """
import atexit, json, sys, time
from loadforge.run import session
marks = {}
collect = session.collect
def marked(*args, **kwargs):
    try:
        yield from collect(*args, **kwargs)
    finally:
        marks["wall"], marks["cpu"] = time.perf_counter(), time.process_time()
session.collect = marked
def done():
    sys.stdout.flush()
    end = {"end_wall_s": time.perf_counter() - marks["wall"],
           "end_cpu_s": time.process_time() - marks["cpu"]}
    sys.stderr.write("MARKS " + json.dumps(end) + "\\n")
atexit.register(done)
from loadforge.cli import main
sys.argv = ["loadforge"] + sys.argv[1:]
main()
"""


def one(args: list[str]) -> tuple[float, float, float]:
    """(end-of-run wall s, end-of-run coordinator CPU s, the whole run's CPU s)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=ROOT, capture_output=True,
                          text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        sys.exit(f"loadforge exited {done.returncode}: {done.stderr.strip()[-400:]}")
    line = next(x for x in done.stderr.splitlines() if x.startswith("MARKS "))
    marks = json.loads(line.removeprefix("MARKS "))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return marks["end_wall_s"], marks["end_cpu_s"], cpu


def show(label: str, values: list[float], unit: str = "s") -> str:
    return (f"{label} {statistics.median(values):.3f} {unit} "
            f"({min(values):.3f}-{max(values):.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--port", type=int, default=31090)
    ap.add_argument("--long", action="store_true", help="also the judged profile over 60 s")
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="lf-end-")
    nginx = _nginx.start(folder, SERVER.format(port=args.port), args.port)
    try:
        url = f"http://127.0.0.1:{args.port}"
        profile = os.path.join(folder, "judged.toml")
        with open(profile, "w") as f:
            f.write(JUDGED)
        out = ["--quiet", "--out", os.path.join(folder, "results")]
        cases = {
            "plain": ["run", "--target", url + "/", "--rate", "100", "--duration", "1s", *out],
            "judged": ["run", profile, "--target", url, *out],
        }
        if args.long:
            long = os.path.join(folder, "long.toml")
            with open(long, "w") as f:
                f.write(JUDGED.replace('duration = "2s"', 'duration = "20s"')
                        .replace('duration = "1s"', 'duration = "20s"'))
            cases["judged 60 s"] = ["run", long, "--target", url, *out]
        print(f"nginx on {url}, {args.rounds} rounds each, median (range)")
        for name, cmd in cases.items():
            walls, cpus, totals = [], [], []
            for _ in range(args.rounds):
                wall, cpu, total = one(cmd)
                walls.append(wall)
                cpus.append(cpu)
                totals.append(total)
            print(f"{name:11s} {show('end of run: wall', walls)}   {show('coordinator cpu', cpus)}"
                  f"   {show('run cpu (all processes)', totals)}")
    finally:
        _nginx.stop(nginx)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
