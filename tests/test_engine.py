"""The engine against real servers on 127.0.0.1: counts, rates, latency semantics, errors.

Each run is bounded (a few seconds, a few thousand requests) and stops by itself.
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


def run_json(tmp_path, *args: str, expect: int = 0, timeout: float = 60) -> dict:
    summary = tmp_path / "summary.json"
    out = loadforge("run", *args, "--quiet", "--out", str(tmp_path / "results"),
                    "--summary-json", str(summary), timeout=timeout)
    assert out.returncode == expect, out.stderr
    return json.loads(summary.read_text())


def test_open_model_counts_match_nginx(nginx, tmp_path):
    before = nginx.served()
    s = run_json(tmp_path, "--target", nginx.url + "/", "--rate", "2000", "--duration", "3s",
                 "--connections", "16", "--workers", "2")
    served = nginx.served() - before - 1          # minus the preflight request
    assert s["scheduled"] == 6000
    assert s["requests"] == served == 6000
    assert s["errors"] == 0 and s["unsent"] == 0
    assert s["status"]["2xx"] == 6000
    assert abs(s["achieved_rps"] - 2000) / 2000 < 0.01
    assert s["target_rps"] == 2000
    lat, svc = s["latency_us"], s["service_time_us"]
    assert 0 < svc["p50"] <= lat["p50"] and lat["max"] >= svc["max"] > 0


def test_ramp_profile_schedules_the_integral(nginx, tmp_path):
    profile = tmp_path / "ramp.toml"
    profile.write_text(f"""
target = "{nginx.url}"
[load]
connections = 8
workers = 2
[[stages]]
name = "up"
ramp = {{ from = 0, to = 1000 }}
duration = "2s"
[[stages]]
name = "flat"
rate = 500
duration = "1s"
""")
    s = run_json(tmp_path, str(profile))
    up, flat = s["stages"]
    assert up["scheduled"] == 1000 and flat["scheduled"] == 500
    assert up["requests"] == 1000 and flat["requests"] == 500
    assert s["requests"] == 1500 and s["errors"] == 0


def test_closed_model_counts_match_nginx(nginx, tmp_path):
    before = nginx.served()
    s = run_json(tmp_path, "--target", nginx.url + "/", "--concurrency", "8", "--duration",
                 "2s", "--workers", "1")
    assert s["requests"] == nginx.served() - before - 1
    assert s["requests"] > 1000 and s["errors"] == 0
    stage = s["stages"][0]
    assert stage["model"] == "closed"
    # Closed model: each request is sent when its connection frees up, so latency is service.
    assert s["latency_us"]["p50"] == s["service_time_us"]["p50"]


def test_freeze_shows_in_latency_without_coordinated_omission(tmp_path):
    """A server that stalls for 1 s of a 4 s constant-rate run: the arrivals due during the
    stall wait for its end, so a quarter of all requests get latencies spread evenly over
    0..1 s. p90 is then ~0.6 s and p99 ~0.96 s; a tool that times from the actual send
    (coordinated omission) would report a p99 of a few ms."""
    server = CannedServer(OK, freeze=(1.0, 1.0))
    try:
        s = run_json(tmp_path, "--target", server.url + "/", "--rate", "200", "--duration",
                     "4s", "--connections", "16", "--workers", "1", "--no-preflight")
    finally:
        server.stop()
    lat, svc = s["latency_us"], s["service_time_us"]
    assert s["requests"] == 800 and s["errors"] == 0
    assert 450_000 <= lat["p90"] <= 700_000, lat
    assert 880_000 <= lat["p99"] <= 1_080_000, lat
    assert 900_000 <= lat["max"] <= 1_150_000, lat
    assert lat["p50"] < 100_000, lat
    # Only the 16 requests in flight when the server froze waited on the server itself.
    assert svc["p90"] < 100_000, svc


@pytest.mark.parametrize(("response", "kind"), [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "2xx"),
    ([b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 5\r\n\r\nab", b"cde"], "2xx"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Here\r\nContent-Length: 0\r\n\r\n", "4xx"),
    (b"HTTP/1.1 503 Busy\r\nContent-Length: 2\r\n\r\nno", "5xx"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "protocol"),
])
def test_response_framing_and_outcomes(tmp_path, response, kind):
    server = CannedServer(response)
    try:
        s = run_json(tmp_path, "--target", server.url + "/", "--rate", "200", "--duration",
                     "1s", "--connections", "4", "--workers", "1", "--no-preflight")
        seen = server.requests
    finally:
        server.stop()
    counts = {**s["status"], **s["errors_by_kind"]}
    assert counts[kind] == 200 == s["scheduled"], counts
    assert sum(counts.values()) == 200
    if kind != "protocol":
        assert seen == 200
    if kind in ("5xx", "protocol"):
        assert s["errors"] == 200


def test_connection_close_and_body_until_close(tmp_path):
    server = CannedServer(b"HTTP/1.1 200 OK\r\n\r\nbody runs to the close", mode="close")
    try:
        s = run_json(tmp_path, "--target", server.url + "/", "--rate", "100", "--duration",
                     "1s", "--connections", "4", "--workers", "1", "--no-preflight")
    finally:
        server.stop()
    assert s["status"]["2xx"] == 100 and s["errors"] == 0


@pytest.mark.parametrize(("mode", "kind"), [("reset", "reset"), ("close-early", "reset"),
                                            ("silent", "timeout")])
def test_transport_failures_are_counted_by_kind(tmp_path, mode, kind):
    server = CannedServer(OK, mode=mode)
    try:
        s = run_json(tmp_path, "--target", server.url + "/", "--rate", "50", "--duration", "1s",
                     "--connections", "64", "--workers", "1", "--no-preflight", "--timeout",
                     "500ms")
    finally:
        server.stop()
    assert s["errors_by_kind"][kind] == 50 == s["errors"] == s["scheduled"], s["errors_by_kind"]
    assert s["requests"] == 0


def test_connect_errors_when_nothing_listens(tmp_path):
    from servers import free_port

    url = f"http://127.0.0.1:{free_port()}/"
    s = run_json(tmp_path, "--target", url, "--rate", "100", "--duration", "1s",
                 "--connections", "4", "--workers", "1", "--no-preflight")
    assert s["errors_by_kind"]["connect"] == 100 == s["scheduled"]


def test_unreachable_target_exits_3_naming_it(tmp_path):
    from servers import free_port

    url = f"http://127.0.0.1:{free_port()}/"
    started = time.monotonic()
    out = loadforge("run", "--target", url, "--rate", "10", "--duration", "5s", "--quiet",
                    "--out", str(tmp_path))
    assert out.returncode == 3
    assert url.rstrip("/") in out.stderr and "unreachable" in out.stderr
    assert time.monotonic() - started < 15
    assert "Traceback" not in out.stderr


def test_wrong_path_exits_3(nginx, tmp_path):
    out = loadforge("run", "--target", nginx.url + "/missing", "--rate", "10", "--duration",
                    "1s", "--quiet", "--out", str(tmp_path))
    assert out.returncode == 3 and "404" in out.stderr


def test_preflight_goes_where_the_engine_goes_not_through_a_proxy(nginx, tmp_path):
    """A proxy in the environment (here a dead one) would have answered the preflight for a
    target the engine then reaches directly; the preflight ignores it, as the engine does."""
    env = dict(os.environ, HTTP_PROXY="http://127.0.0.1:1", http_proxy="http://127.0.0.1:1",
               ALL_PROXY="http://127.0.0.1:1")
    out = subprocess.run([sys.executable, "-m", "loadforge.cli", "run", "--target",
                          nginx.url + "/", "--rate", "20", "--duration", "1s", "--quiet",
                          "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_results_parquet_holds_every_request(nginx, tmp_path):
    s = run_json(tmp_path, "--target", nginx.url + "/", "--rate", "1000", "--duration", "2s",
                 "--connections", "8", "--workers", "2", "--label", "lb=nginx")
    result = read_result(s["result"])
    assert result.labels == {"lb": "nginx"}
    intervals = result.rows("interval", name="*", outcome="*")
    assert sum(r["scheduled"] for r in intervals) == 2000
    # Every arrival sent is in the file. One CI run had a server stall at the very end leave
    # 16 arrivals (the whole pool's worth) unsent: counted as such, never lost.
    unsent = sum(r["unsent"] for r in intervals)
    assert unsent == s["unsent"] <= 16
    sent = 2000 - unsent
    assert sum(r["count"] for r in intervals) == sent == s["requests"]
    # Outcome rows per name; the "ok" rows merge the successful ones again (the headline).
    detail = [r for r in result.rows("interval", name=None, outcome=None)
              if r["name"] != "*" and r["outcome"] != "ok"]
    assert sum(r["count"] for r in detail) == sent
    (run_row,) = result.rows("run")
    (ok_row,) = result.rows("run", outcome="ok")
    assert run_row["count"] == sent and ok_row["p99_us"] == s["latency_us"]["p99"]
    hist = result.histogram(run_row)
    assert hist.get_total_count() == sent


def test_sigint_stops_the_run_and_keeps_the_results(nginx, tmp_path):
    summary = tmp_path / "s.json"
    before = nginx.served()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadforge.cli", "run", "--target", nginx.url + "/", "--rate",
         "500", "--duration", "30s", "--quiet", "--out", str(tmp_path), "--summary-json",
         str(summary)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The preflight and over a second of the run answered.
    wait_for(lambda: nginx.logged() > before + 600 or proc.poll() is not None, 60,
             "a second of load")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err          # 128 + SIGINT, results kept
    s = json.loads(summary.read_text())
    assert 500 <= s["requests"] < 15000
    assert s["requests"] + s["errors"] == s["sent"] == s["scheduled"] - s["unsent"]


def test_crashed_worker_exits_3(nginx, tmp_path):
    before = nginx.served()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadforge.cli", "run", "--target", nginx.url + "/", "--rate",
         "200", "--duration", "30s", "--workers", "2", "--quiet", "--out", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from test_lifecycle import workers_of

    children = workers_of(proc, 2)
    # The run under way: the preflight and a second of requests answered.
    wait_for(lambda: nginx.logged() > before + 200 or proc.poll() is not None, 60,
             "a second of load")
    os.kill(children[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert "worker" in err and "Traceback" not in err


def test_quickstart_profile_runs_against_the_sandbox(tmp_path):
    s = run_json(tmp_path, os.path.join(ROOT, "profiles", "quickstart.toml"), timeout=90)
    assert s["ok"] is True
    assert s["requests"] == s["scheduled"] > 1000
    assert [st["name"] for st in s["stages"]] == ["ramp", "steady", "spike"]
    assert os.path.exists(s["result"])


@pytest.mark.parametrize("args", [
    ("--target", "http://127.0.0.1:1/", "--rate", "-5", "--duration", "1s"),
    ("--target", "http://127.0.0.1:1/", "--rate", "5", "--concurrency", "4", "--duration", "1s"),
    ("--target", "http://127.0.0.1:1/", "--rate", "5"),
    ("--target", "https://127.0.0.1:1/", "--rate", "5", "--duration", "1s", "--ca-cert",
     "no-such-ca.pem"),
    ("--target", "http://127.0.0.1:1/", "--rate", "5", "--duration", "1s", "--insecure"),
    ("--target", "http://127.0.0.1:1/", "--rate", "5", "--duration", "5"),
    ("no-such-profile.toml",),
])
def test_bad_input_exits_2_without_traceback(tmp_path, args):
    out = loadforge("run", *args, "--out", str(tmp_path))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.strip()


def test_workers_import_the_coordinators_package_from_any_directory(nginx, tmp_path):
    # A directory with a `loadforge/` of its own, as a source checkout without its compiled
    # engine is: the workers must not pick it up from the working directory.
    decoy = tmp_path / "loadforge"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy package was imported')\n")
    summary = tmp_path / "summary.json"
    out = subprocess.run(
        [sys.executable, "-P", "-m", "loadforge.cli", "run", "--target", nginx.url + "/",
         "--rate", "100", "--duration", "1s", "--workers", "2", "--quiet",
         "--out", str(tmp_path / "results"), "--summary-json", str(summary)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(summary.read_text())["requests"] == 100
