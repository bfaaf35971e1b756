"""`loadforge capacity` against a target whose capacity is known: the sandbox with one backend
of 20 slots answering in 20 ms, that is at most 1,000 requests/s."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadforge.results.store import read_result
from loadforge.sandbox import start_sandbox

KNOWN = {"backends": 1, "health": {"enabled": False},
         "backend": {"service_time": "20ms", "concurrency": 20, "queue": 100_000}}


def capacity(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadforge.cli", "capacity", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_finds_the_known_capacity_within_10_percent(tmp_path):
    with start_sandbox(KNOWN) as sb:
        done = capacity("--target", sb.url + "/", "--slo", "p99=100ms",
                        "--slo", "error_rate=0.1%", "--start", "300", "--step", "2s",
                        "--precision", "0.1", "--workers", "1", "--out", str(tmp_path),
                        "--summary-json", str(tmp_path / "cap.json"))
    assert done.returncode == 0, done.stderr + done.stdout
    s = json.loads((tmp_path / "cap.json").read_text())
    assert 900 <= s["capacity_rps"] <= 1100, s["steps"]
    assert s["limited_by"] and "p99" in s["limited_by"]
    rates = [st["rate_rps"] for st in s["steps"]]
    # Doubling from --start (a step may be tried again: the machine is noisy).
    assert list(dict.fromkeys(rates))[:2] == [300, 600]
    # One result, one stage per step, as report and compare read runs.
    result = read_result(s["result"])
    stages = json.loads(result.metadata["stages"])
    assert [st["rate_from"] for st in stages] == rates
    assert json.loads(result.metadata["capacity"])["capacity_rps"] == s["capacity_rps"]
    assert "rate-latency curve" in done.stdout and "knee" in done.stdout
    # The objectives belong to the search, not to the file (which holds the failing steps).
    assert "slo_flags" not in result.metadata
    # A capacity result gives simulate its --replica-rps.
    (tmp_path / "p.toml").write_text('[[stages]]\nduration = "5s"\nrate = 100\n')
    for source in (s["result"], str(tmp_path / "cap.json")):
        sim = subprocess.run([sys.executable, "-m", "loadforge.cli", "simulate",
                              str(tmp_path / "p.toml"), "--replica-rps", source,
                              "--replicas", "1", "-q", "--out", str(tmp_path / "sim"),
                              "--summary-json", str(tmp_path / "sim.json")],
                             capture_output=True, text=True, timeout=120)
        assert sim.returncode == 0, sim.stderr
        simulated = read_result(json.loads((tmp_path / "sim.json").read_text())["result"])
        assert json.loads(simulated.metadata["simulation"])["replica_rps"] == s["capacity_rps"]


@pytest.mark.parametrize("args, message", [
    (["--target", "http://127.0.0.1:1/"], "Missing option '--slo'"),
    (["--target", "ftp://x/", "--slo", "p99=1s"], "expected an http:// or https:// URL"),
    (["--target", "http://127.0.0.1:1/", "--slo", "p99=fast"], "p99"),
    (["--target", "http://127.0.0.1:1/", "--slo", "p99=1s", "--start", "0"], "--start"),
])
def test_bad_input_is_exit_2(args, message):
    done = capacity(*args, timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_an_unreachable_target_is_exit_3(tmp_path):
    from servers import free_port

    done = capacity("--target", f"http://127.0.0.1:{free_port()}/", "--slo", "p99=1s",
                    "--step", "1s", "--out", str(tmp_path), timeout=60)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr


def test_interrupted_keeps_the_steps_that_ran(tmp_path):
    import signal

    with start_sandbox(KNOWN) as sb:
        proc = subprocess.Popen([sys.executable, "-m", "loadforge.cli", "capacity",
                                 "--target", sb.url + "/", "--slo", "p99=100ms",
                                 "--start", "100", "--step", "2s", "--workers", "1",
                                 "--out", str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:            # the first step's verdict: one step has run
                if "/s  p99" in line:
                    break
            proc.send_signal(signal.SIGINT)
            rest = proc.stdout.read()
            assert proc.wait(60) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "interrupted: the" in rest
    files = list(tmp_path.glob("*.parquet"))
    assert len(files) == 1
    assert json.loads(read_result(str(files[0])).metadata["stages"])
