"""Start-up stays cheap: the command line, profile loading and the coordinator up to its
first request import neither pyarrow nor httpx (together over 0.1 s of CPU). The CPU figures
themselves are measured, not asserted (docs/performance.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from servers import ROOT, wait_for
from test_lifecycle import children_of, workers_of

PROBE = """
import sys
from loadforge.cli import main
from loadforge.config.profile import load_profile
from loadforge.run import session
load_profile({profile!r})
print(" ".join(sorted(m for m in ("pyarrow", "httpx") if m in sys.modules)))
"""

def python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_help_and_profiles_do_not_import_pyarrow_or_httpx():
    profile = os.path.join(ROOT, "profiles", "failover.toml")     # observers and actions
    assert python(PROBE.format(profile=profile)) == ""


PLAIN_RUN = """
import json, sys
from loadforge.run import session
before = []
start = session.start
def recording_start(pool):
    before.extend(sys.modules)
    return start(pool)
session.start = recording_start
from loadforge.cli.app import main     # as the command loads it: the commands' modules lazily
try:
    main(["run", "--target", {url!r}, "--rate", "20", "--duration", "1s", "--quiet",
          "--out", {out!r}])
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"exit": code, "before": sorted(before), "after": sorted(sys.modules)}}))
"""


@pytest.fixture(scope="module")
def plain_run(nginx, tmp_path_factory) -> dict[str, Any]:
    """The modules a quiet run from flags (no profile, no objectives, no metric sources) had
    imported when it passed its workers' start barrier, and when it ended."""
    out = tmp_path_factory.mktemp("plain")
    result = json.loads(python(PLAIN_RUN.format(url=nginx.url + "/", out=str(out))))
    assert result["exit"] == 0
    return result


def test_a_run_writes_its_file_without_pyarrow_or_httpx(plain_run):
    # results/parquet.py writes the file: pyarrow (0.025-0.03 s of CPU to import) is for the
    # commands that read results.
    assert [m for m in plain_run["after"] if m.split(".")[0] in ("pyarrow", "httpx")] == []
    assert "loadforge.results.parquet" in plain_run["after"]


# What a plain run has no use for before its first request: TLS (Python's ssl, its settings),
# the optional profile tables' readers, the feeders' tables and CSV reader; a run from flags
# reads no profile (config/profile.py, feeders.py) and runs one command (no other's module).
OPTIONAL = ("ssl", "loadforge.config.tls", "loadforge.config.observe",
            "loadforge.config.sandbox", "loadforge.config.grpc", "loadforge.sandbox",
            "loadforge.flows", "loadforge.engine.tables", "csv", "loadforge.config.profile",
            "loadforge.config.feeders", "difflib", "loadforge.cli.model",
            "loadforge.cli.results")


def test_a_quiet_plain_run_imports_neither_rich_nor_what_it_does_not_use(plain_run):
    assert [m for m in OPTIONAL if m in plain_run["before"]] == []
    assert [m for m in plain_run["after"] if m.split(".")[0] == "rich"] == []


def test_a_plain_run_imports_none_of_the_features_it_does_not_use(plain_run):
    # No metric sources, actions, objectives or backend header, and --quiet: no observe/, no
    # slo/scaling/backends analysis, no progress display (runner.py imports them where used).
    assert [m for m in plain_run["after"] if m.startswith((
        "loadforge.observe", "loadforge.analysis.slo", "loadforge.analysis.scaling",
        "loadforge.analysis.backends", "loadforge.run.progress"))] == []


def test_a_plain_runs_calls_never_turn_back_up_the_layers():
    # benchmarks/call_path.py traces every call between loadforge modules in the coordinator
    # during a 1 s run against a local server: the runner drives, nothing below calls up.
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "call_path.py"),
                          "--plan", "--show"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    assert "call path: upward calls: 0 distinct" in out.stdout, out.stdout
    assert "plan path: upward calls: 0 distinct" in out.stdout, out.stdout
    assert "entered loadforge.observe" not in out.stdout, out.stdout


HELP = """
import sys
from loadforge.cli import main
try:
    main({args!r})
except SystemExit:
    pass
print(" ".join(sorted(m for m in sys.modules if m.startswith(("loadforge", "rich", "pyarrow",
                                                               "httpx", "hdrh", "h2")))))
"""


def test_the_command_line_and_its_help_import_click_alone():
    # Each command imports what it runs inside the command (cli/): `--help` costs click.
    cli = ["loadforge", "loadforge.cli", "loadforge.cli.app", "loadforge.cli.load",
           "loadforge.cli.model", "loadforge.cli.results", "loadforge.errors",
           "loadforge.limits", "loadforge.units"]
    for args in ([], ["--help"], ["run", "--help"], ["compare", "--help"]):
        assert python(HELP.format(args=args)).splitlines()[-1].split() == cli, args


def test_each_command_loads_from_the_module_that_defines_it():
    # app.COMMANDS names each command's module, which the group imports when the command is
    # asked for: a command added to a module but not to COMMANDS would be missing from
    # `loadforge --help` (and unknown) until another command of its module loaded it.
    from loadforge.cli import app, main

    assert sorted(main.commands) == sorted(app.COMMANDS)
    for name, command in main.commands.items():
        assert command.callback.__module__ == f"loadforge.cli.{app.COMMANDS[name]}", name


def test_a_worker_imports_its_module_and_the_engine_only():
    # Each worker is a fresh interpreter: the plan (feeders, TLS, observe, sandbox) costs it
    # about 60 ms of CPU at start, for one tuple of names (config/outcomes.py).
    code = ("import sys; import loadforge.run.workers, loadforge._core; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('loadforge'))))")
    assert python(code).split() == ["loadforge", "loadforge._core", "loadforge.config",
                                    "loadforge.config.outcomes", "loadforge.errors",
                                    "loadforge.run", "loadforge.run.wire",
                                    "loadforge.run.workers"]


FORK_SERVER = """
import socket, subprocess
from loadforge.run.forkserver import ForkServer
server = ForkServer.start()
ours, theirs = socket.socketpair()
failing = server.spawn(theirs.fileno())     # its coordinator hangs up before sending a spec
theirs.close()
ours.close()
ours, theirs = socket.socketpair()
waiting = server.spawn(theirs.fileno())     # waits for its spec until killed
theirs.close()
try:
    waiting.wait(0.2)
except subprocess.TimeoutExpired:
    print("running", waiting.poll())
waiting.kill()
print("exits", failing.wait(10), waiting.wait(10))
"""


def test_the_fork_server_reports_each_workers_exit_as_popen_does():
    # Workers forked by the command's fork server (run/forkserver.py) are its grandchildren:
    # their exit statuses reach the coordinator through the server, as Popen's would.
    assert python(FORK_SERVER).splitlines() == ["running None", f"exits 1 {-signal.SIGKILL}"]


def test_a_run_forks_its_workers_from_the_fork_server(nginx, tmp_path):
    summary = tmp_path / "s.json"
    proc = subprocess.Popen([sys.executable, "-m", "loadforge.cli", "run", "--target",
                             nginx.url + "/", "--rate", "50", "--duration", "3s", "--workers",
                             "2", "--quiet", "--out", str(tmp_path), "--summary-json",
                             str(summary)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    (server, *others) = wait_for(lambda: children_of(proc.pid), 30, "the fork server")
    assert others == [] and len(workers_of(proc, 2)) == 2
    assert set(workers_of(proc, 2)) == set(children_of(server))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    s = json.loads(summary.read_text())
    assert s["requests"] == s["scheduled"] == 150
