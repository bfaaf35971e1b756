"""Faults during a run (issue 21): a hang-up, the result folder removed, a disk filled by
others. Each run keeps what it measured, says why in one line, exits with DESIGN.md's code,
and its counts equal what nginx logged (its own nginx, so that the log is this test's)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from servers import Nginx
from test_lifecycle import start, workers_of

from loadforge.results.store import read_result


@pytest.fixture(scope="module")
def own_nginx() -> Iterator[Nginx]:
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    server = Nginx()
    yield server
    server.stop()


def served_during(server: Nginx, before: int) -> int:
    """What nginx logged since `before`, less the preflight's one request."""
    return server.served() - before - 1


def wait_for_load(proc: subprocess.Popen[str], server: Nginx, before: int) -> None:
    """Until nginx has served the run's requests for a while (not just its preflight)."""
    workers_of(proc, 1)
    limit = time.monotonic() + 60
    while server.logged() < before + 400 and time.monotonic() < limit and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1]


def one_line(err: str, *words: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_hang_up_stops_the_run_like_sigterm_and_exits_129(own_nginx, tmp_path):
    # A closed terminal or SSH session: the hang-up reaches the whole process group.
    before = own_nginx.served()
    summary = tmp_path / "s.json"
    proc = start("--target", own_nginx.url + "/", "--rate", "300", "--duration", "60s",
                 "--workers", "2", "--quiet", "--out", str(tmp_path), "--summary-json",
                 str(summary))
    wait_for_load(proc, own_nginx, before)
    for pid in [proc.pid, *workers_of(proc, 2)]:
        os.kill(pid, signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129, err
    one_line(err, "interrupted by SIGHUP after")
    s = json.loads(summary.read_text())
    assert s["interrupted"] is True and s["complete"] is True and s["requests"] > 0
    meta = read_result(s["result"]).metadata
    assert (meta["interrupted"], meta["interrupted_by"]) == ("true", "SIGHUP")
    assert s["requests"] == served_during(own_nginx, before)
    assert sorted(os.listdir(tmp_path)) == sorted(["s.json", os.path.basename(s["result"])])


def test_the_result_folder_removed_mid_run_keeps_what_was_measured(own_nginx, tmp_path):
    before = own_nginx.served()
    out = tmp_path / "out"
    summary = tmp_path / "s.json"
    proc = start("--target", own_nginx.url + "/", "--rate", "300", "--duration", "60s",
                 "--workers", "2", "--quiet", "--out", str(out), "--summary-json",
                 str(summary))
    wait_for_load(proc, own_nginx, before)
    shutil.rmtree(out)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    one_line(err, "folder was removed during the run", "marked incomplete")
    s = json.loads(summary.read_text())
    assert s["complete"] is False and "folder was removed" in s["error"]
    assert s["ran_s"] < 30 and s["requests"] > 0
    result = read_result(s["result"])           # made again, with what was measured
    assert os.path.dirname(s["result"]) == str(out)
    assert result.metadata["complete"] == "false"
    assert "folder was removed" in result.metadata["incomplete_reason"]
    (run_row,) = result.rows("run")
    assert run_row["count"] == s["requests"] == served_during(own_nginx, before)


@pytest.fixture
def small_disk(tmp_path) -> Iterator[str]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield str(mount)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_disk_filled_by_others_stops_the_run_and_the_file_says_incomplete(
        own_nginx, tmp_path, small_disk):
    # One request name: a few rows a second, none flushed before the end unless the run
    # notices the full disk itself.
    before = own_nginx.served()
    summary = tmp_path / "s.json"
    proc = start("--target", own_nginx.url + "/", "--rate", "200", "--duration", "60s",
                 "--quiet", "--out", small_disk, "--summary-json", str(summary))
    wait_for_load(proc, own_nginx, before)
    with open(os.path.join(small_disk, "filler"), "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096) == 4096:
                pass
        except OSError:
            pass
    limit = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < limit:
        time.sleep(0.2)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    one_line(err, "disk full", "marked incomplete")
    s = json.loads(summary.read_text())
    assert s["complete"] is False and "disk full" in s["error"]
    assert s["ran_s"] < 40                         # stopped, not run to its end
    result = read_result(s["result"])
    assert result.metadata["complete"] == "false"
    assert "disk full" in result.metadata["incomplete_reason"]
    (run_row,) = result.rows("run")
    assert run_row["count"] == s["requests"] == served_during(own_nginx, before)


EXITING_FLOW = '''
import os
from loadforge.flows import flow

done = 0

@flow
async def home(user):
    global done
    await user.get("/", name="home")
    done += 1
    if done == 500:
        os._exit(7)
'''


def test_a_flow_that_exits_the_worker_names_the_exit_code_and_keeps_its_reports(
        own_nginx, tmp_path):
    (tmp_path / "flows.py").write_text(EXITING_FLOW)
    profile = tmp_path / "exit.toml"
    profile.write_text(f'name = "exit"\ntarget = "{own_nginx.url}"\n[load]\nworkers = 1\n'
                       'connections = 8\n[[stages]]\nname = "s"\nrate = 200\n'
                       'duration = "30s"\n[flows]\nmodule = "flows.py"\n')
    before = own_nginx.served()
    summary = tmp_path / "s.json"
    proc = start(str(profile), "--quiet", "--out", str(tmp_path), "--summary-json",
                 str(summary))
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 3, err
    one_line(err, "worker 0 exited unexpectedly (exit code 7)", "marked incomplete")
    s = json.loads(summary.read_text())
    assert s["complete"] is False and "exit code 7" in s["error"]
    # What the worker reported before it died is kept (its last interval's requests, sent
    # but not yet reported, are what is lost).
    served = served_during(own_nginx, before)
    assert 0 < s["requests"] <= served == 500
    (run_row,) = read_result(s["result"]).rows("run")
    assert run_row["count"] >= s["requests"]
