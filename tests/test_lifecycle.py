"""Runs that end early say so: Ctrl-C and SIGTERM (exit 128 + N, results of what ran kept,
rates over the time that ran), a crashed worker or a full disk (exit 3, what was merged
kept and marked incomplete), and shell commands of observers and actions ending with the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from servers import OK, ROOT, CannedServer, loadforge, wait_for

from loadforge.results.store import read_result


def _default_sigint() -> None:
    # A suite started in the background by a shell without job control inherits SIGINT
    # ignored, and Python keeps it ignored: give the CLI the default a terminal gives it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "loadforge.cli", "run", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def workers_of(proc: subprocess.Popen[str], count: int) -> list[int]:
    """The worker processes of a running CLI: the children of its fork server (its child
    running the CLI's own command line, loadforge/run/forkserver.py), or its children running
    loadforge.run.workers where it started them as fresh interpreters."""
    found: list[int] = []
    limit = time.monotonic() + 30
    while len(found) < count and time.monotonic() < limit and proc.poll() is None:
        time.sleep(0.2)
        found = []
        for pid in children_of(proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except FileNotFoundError:
                continue
            if b"loadforge.run.workers" in cmdline:
                found.append(pid)
            elif b"loadforge.cli" in cmdline:
                found.extend(children_of(pid))
    assert len(found) >= count, "the workers did not start"
    return found


def sockets_of(pid: int) -> int:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    count = 0
    for fd in fds:
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def wait_for_intervals(proc: subprocess.Popen[str]) -> None:
    """Until the run is under way: a worker holds connections to the target (it connects as
    the run starts; a loaded machine may take seconds to get there), then 2.5 s more."""
    (worker, *_) = workers_of(proc, 1)
    limit = time.monotonic() + 30
    # Its channel to the coordinator, and at least two connections.
    while sockets_of(worker) < 3 and time.monotonic() < limit and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(2.5)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_keeps_its_results_and_says_so(nginx, tmp_path, signum, code):
    summary = tmp_path / "s.json"
    proc = start("--target", nginx.url + "/", "--rate", "400", "--duration", "60s",
                 "--workers", "2", "--out", str(tmp_path), "--summary-json", str(summary))
    wait_for_intervals(proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    assert f"interrupted by {name} after" in err
    s = json.loads(summary.read_text())
    assert s["interrupted"] is True and s["complete"] is True
    assert 2.0 < s["ran_s"] < 50
    assert s["requests"] + s["errors"] == s["sent"] == s["scheduled"] - s["unsent"]
    # Rates over the time the run (and its one stage) ran, not over the 60 s planned.
    for block in (s, s["stages"][0]):
        assert block["requests"] > 0
        assert block["achieved_rps"] == pytest.approx(block["requests"] / s["ran_s"], rel=0.01)
        assert block["achieved_rps"] > 300
    assert s["unsent"] == 0
    result = read_result(s["result"])
    assert result.metadata["interrupted"] == "true"
    assert result.metadata["interrupted_by"] == name
    assert float(result.metadata["ran_s"]) == pytest.approx(s["ran_s"], abs=0.01)
    assert result.metadata["complete"] == "true"
    (stage_row,) = result.rows("stage")
    assert abs(stage_row["end_ms"] - s["ran_s"] * 1000) <= 1
    assert "steady" in out                              # the summary still printed
    # compare reads the same rates back from the file.
    cmp = loadforge("compare", s["result"], s["result"], "--format", "json")
    assert cmp.returncode == 0, cmp.stderr
    (stage,) = json.loads(cmp.stdout)["stages"]
    assert stage["values"][0]["achieved_rps"] == pytest.approx(
        s["stages"][0]["achieved_rps"], rel=0.01)


def test_a_finished_run_says_it_was_not_interrupted(nginx, tmp_path):
    summary = tmp_path / "s.json"
    proc = start("--target", nginx.url + "/", "--rate", "50", "--duration", "1s", "--quiet",
                 "--out", str(tmp_path), "--summary-json", str(summary))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    s = json.loads(summary.read_text())
    assert s["interrupted"] is False and s["ran_s"] == 1.0 and s["complete"] is True
    meta = read_result(s["result"]).metadata
    assert (meta["interrupted"], meta["complete"], meta["ran_s"]) == ("false", "true", "1.000")


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    # The server never answers: after the first Ctrl-C the run would wait out the requests'
    # 120 s timeout; the second one stops it then and there, results kept.
    server = CannedServer(OK, mode="silent")
    try:
        summary = tmp_path / "s.json"
        proc = start("--target", server.url + "/", "--rate", "20", "--duration", "60s",
                     "--timeout", "120s", "--no-preflight", "--quiet", "--out", str(tmp_path),
                     "--summary-json", str(summary))
        wait_for_intervals(proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None          # awaiting what is in flight
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        server.shutdown()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    s = json.loads(summary.read_text())
    assert s["interrupted"] is True and s["requests"] == 0
    assert read_result(s["result"]).metadata["interrupted"] == "true"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_before_the_run_starts_exits_128_plus_n(tmp_path, signum, code):
    server = CannedServer(OK, mode="silent")       # the preflight waits for an answer
    try:
        proc = start("--target", server.url + "/", "--rate", "20", "--duration", "5s",
                     "--quiet", "--out", str(tmp_path))
        limit = time.monotonic() + 30
        while server.requests == 0 and time.monotonic() < limit:
            time.sleep(0.1)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        server.shutdown()
    assert proc.returncode == code, err
    assert f"interrupted by {signal.Signals(signum).name}" in err
    assert "Traceback" not in err and "Aborted" not in err
    assert not [f for f in os.listdir(tmp_path) if f.endswith((".parquet", ".partial"))]


def test_a_crashed_worker_keeps_what_was_merged_and_exits_3(nginx, tmp_path):
    summary = tmp_path / "s.json"
    before = nginx.served()
    proc = start("--target", nginx.url + "/", "--rate", "200", "--duration", "30s",
                 "--workers", "2", "--quiet", "--out", str(tmp_path), "--summary-json",
                 str(summary))
    victims = workers_of(proc, 2)
    # 2.5 s of the run answered: intervals merged before the crash.
    wait_for(lambda: nginx.logged() >= before + 500 or proc.poll() is not None, 60,
             "2.5 s of load")
    os.kill(victims[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "exited unexpectedly" in lines[0], err
    assert "marked incomplete" in lines[0]
    s = json.loads(summary.read_text())
    assert s["complete"] is False and s["ok"] is False and s["interrupted"] is False
    assert "exited unexpectedly" in s["error"] and s["requests"] > 0
    result = read_result(s["result"])
    assert result.metadata["complete"] == "false"
    assert "exited unexpectedly" in result.metadata["incomplete_reason"]
    (run_row,) = result.rows("run")
    assert run_row["count"] == s["sent"] > 0


def many_names_profile(tmp_path, url: str) -> str:
    # 100 request names (the most a profile may have): some 200 interval rows a second, so
    # row groups are written during the run (every 1024 rows) and the disk fills mid-run
    # rather than at the end.
    names = "".join(f'[[requests]]\nname = "r{i}"\npath = "/"\n' for i in range(100))
    path = tmp_path / "many.toml"
    path.write_text(f'name = "many"\ntarget = "{url}"\n[load]\nconnections = 8\n'
                    f'[[stages]]\nname = "steady"\nrate = 900\nduration = "20s"\n{names}')
    return str(path)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_keeps_what_was_written_and_exits_3(nginx, tmp_path, small_disk):
    summary = tmp_path / "s.json"
    proc = start(many_names_profile(tmp_path, nginx.url), "--quiet", "--out", str(small_disk),
                 "--summary-json", str(summary))
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 3, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "disk full" in lines[0], err
    s = json.loads(summary.read_text())
    assert s["complete"] is False and s["ok"] is False and "disk full" in s["error"]
    assert s["ran_s"] < 20
    result = read_result(s["result"])
    assert result.metadata["complete"] == "false"
    assert "disk full" in result.metadata["incomplete_reason"]
    assert result.rows("interval", stage=None, name=None, outcome=None)
    (run_row,) = result.rows("run")         # the run's own rows fit in the space set aside
    assert run_row["count"] == s["requests"]
    assert sorted(os.listdir(small_disk)) == [os.path.basename(s["result"])]


def test_shell_commands_end_with_the_run(nginx, tmp_path):
    marker = f"{os.getpid() % 1000 + 300}.25"        # a sleep no other test runs
    profile = tmp_path / "shell.toml"
    profile.write_text(f"""
name = "shell"
target = "{nginx.url}"
[[stages]]
name = "steady"
rate = 20
duration = "2s"
[[requests]]
name = "home"
path = "/"
[observe]
command = [{{ name = "slow", run = "sleep {marker}; echo 1", timeout = "300s" }}]
[[actions]]
at = "0s"
run = "sleep {marker} | cat"
timeout = "300s"
""")
    summary = tmp_path / "s.json"
    proc = start(str(profile), "--quiet", "--out", str(tmp_path), "--summary-json",
                 str(summary))
    # Without ending them the run would wait out 300 s timeouts: this bound is the check.
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    left = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f"sleep\0{marker}".encode() in f.read():
                        left.append(pid)
            except OSError:
                pass
    assert left == []
    (action,) = json.loads(summary.read_text())["actions"]
    assert action["ok"] is False and action["value"] == -9


def test_a_full_disk_before_the_run_exits_3(nginx, tmp_path, small_disk):
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096) == 4096:
                pass
        except OSError:
            pass
    out = subprocess.run([sys.executable, "-m", "loadforge.cli", "run", "--target",
                          nginx.url + "/", "--rate", "20", "--duration", "1s", "--quiet",
                          "--out", str(small_disk)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 3, out.stderr
    assert "disk full" in out.stderr and "Traceback" not in out.stderr
    assert sorted(os.listdir(small_disk)) == ["filler"]


def test_ctrl_c_at_a_terminal_keeps_the_sandbox_up_for_what_is_in_flight(tmp_path):
    # A terminal sends SIGINT to the whole foreground process group: the embedded target
    # must not die with it while the run awaits its in-flight requests.
    summary = tmp_path / "s.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadforge.cli", "run",
         os.path.join(ROOT, "profiles", "quickstart.toml"), "--quiet", "--out", str(tmp_path),
         "--summary-json", str(summary)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    wait_for_intervals(proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    s = json.loads(summary.read_text())
    assert s["interrupted"] is True and s["requests"] > 0
    assert s["errors"] == 0, s["errors_by_kind"]
