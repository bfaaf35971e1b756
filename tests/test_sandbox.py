"""The sandbox: config validation, and a real subprocess driven over HTTP on 127.0.0.1.

Times are kept short (health checks every 100 ms, autoscaling evaluated every 100 ms) so that
each scenario settles in a second or two; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from servers import free_port, wait_listening

from loadforge.config.sandbox import BackendModel, SandboxConfig, ScaleIn
from loadforge.errors import ProfileError, RunError
from loadforge.sandbox import Sandbox, start_sandbox, validate_sandbox_config
from loadforge.sandbox.runner import load_config_file

TIMEOUT = httpx.Timeout(5.0)
FAST_HEALTH = {"interval": "100ms", "timeout": "50ms",
               "unhealthy_threshold": 2, "healthy_threshold": 2}


# -- validation --------------------------------------------------------------------------------

def test_defaults() -> None:
    cfg = validate_sandbox_config({})
    assert cfg.algorithm == "round_robin"
    assert cfg.backends == 4
    assert cfg.weights == (1, 1, 1, 1)
    assert cfg.backend == BackendModel(service_time_s=0.0, distribution="constant", sigma=0.5,
                                       concurrency=64, queue=1024)
    assert cfg.health.enabled is True
    assert cfg.autoscale is None


def test_full_config_normalized() -> None:
    cfg = validate_sandbox_config({
        "algorithm": "weighted_round_robin",
        "backends": 3,
        "weights": [1, 1, 2],
        "backend": {"service_time": "2ms", "distribution": "exponential", "concurrency": 32,
                    "queue": 256},
        "health": {"interval": "1s", "timeout": "500ms", "unhealthy_threshold": 2,
                   "healthy_threshold": 2},
        "autoscale": {"metric": "utilization", "threshold": 0.8, "for": "5s", "step": 1,
                      "cooldown": "10s", "min": 2, "max": 8, "startup_delay": "5s",
                      "scale_in": {"threshold": 0.3, "for": "20s"}},
    })
    assert cfg.weights == (1, 1, 2)
    assert cfg.backend.service_time_s == pytest.approx(0.002)
    assert cfg.health.timeout_s == pytest.approx(0.5)
    scale = cfg.autoscale
    assert scale is not None
    assert (scale.for_s, scale.cooldown_s, scale.min, scale.max) == (5.0, 10.0, 2, 8)
    assert scale.scale_in == ScaleIn(enabled=True, threshold=0.3, for_s=20.0, step=1)
    assert scale.evaluation_interval_s == 1.0
    assert SandboxConfig.from_json(cfg.to_json()) == cfg


def test_backends_default_clamped_to_autoscale_range() -> None:
    assert validate_sandbox_config({"autoscale": {"min": 6, "max": 8}}).backends == 6
    assert validate_sandbox_config({"autoscale": {"min": 1, "max": 2}}).backends == 2


@pytest.mark.parametrize(("cfg", "message"), [
    ({"algoritm": "random"}, "sandbox.algoritm is not a known key"),
    ({"algorithm": "fastest"}, "sandbox.algorithm must be one of"),
    ({"backends": 0}, "sandbox.backends must be >= 1"),
    ({"backends": "3"}, "sandbox.backends must be an integer"),
    ({"backends": True}, "sandbox.backends must be an integer"),
    ({"weights": [1, 2]}, "sandbox.weights is only used with algorithm"),
    ({"algorithm": "weighted_round_robin", "backends": 3, "weights": [1, 2]},
     "sandbox.weights must have one weight per backend (got 2 weights for 3 backends)"),
    ({"algorithm": "weighted_round_robin", "backends": 2, "weights": [1, 0]},
     "sandbox.weights[1] must be >= 1"),
    ({"backend": {"service_time": "2"}}, "sandbox.backend.service_time must be a duration"),
    ({"backend": {"service_time": 5}}, "sandbox.backend.service_time must be a duration"),
    ({"backend": {"distribution": "normal"}}, "sandbox.backend.distribution must be one of"),
    ({"backend": {"sigma": 1.0}}, "sandbox.backend.sigma is only used with distribution"),
    ({"backend": {"concurrency": 0}}, "sandbox.backend.concurrency must be >= 1"),
    ({"backend": {"queue": -1}}, "sandbox.backend.queue must be >= 0"),
    ({"backend": "fast"}, "sandbox.backend must be a table"),
    ({"health": {"interval": "0s"}}, "sandbox.health.interval must be > 0"),
    ({"health": {"interval": "1s", "timeout": "2s"}}, "sandbox.health.timeout must be <= interval"),
    ({"health": {"unhealthy_threshold": 0}}, "sandbox.health.unhealthy_threshold must be >= 1"),
    ({"autoscale": {"min": 5, "max": 3}}, "sandbox.autoscale.min must be <= max (got 5 > 3)"),
    ({"autoscale": {"cooldown": "-5s"}}, "sandbox.autoscale.cooldown"),
    ({"autoscale": {"metric": "cpu"}}, "sandbox.autoscale.metric must be one of"),
    ({"autoscale": {"threshold": 1.5}}, "sandbox.autoscale.threshold must be in (0, 1]"),
    ({"autoscale": {"target": 0.5}}, "sandbox.autoscale.target is not a known key"),
    ({"autoscale": {"threshold": 0.5, "scale_in": {"threshold": 0.6}}},
     "sandbox.autoscale.scale_in.threshold must be >= 0 and < threshold"),
    ({"autoscale": {"scale_in": {"after": "1s"}}}, "sandbox.autoscale.scale_in.after"),
    ({"backends": 9, "autoscale": {"min": 1, "max": 4}},
     "sandbox.backends must be between autoscale.min and autoscale.max"),
])
def test_bad_config_names_the_field(cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError) as info:
        validate_sandbox_config(cfg)
    assert message in str(info.value)


def test_where_prefixes_messages() -> None:
    with pytest.raises(ProfileError, match=r"^profile x.toml: sandbox.backends must be >= 1"):
        validate_sandbox_config({"backends": 0}, "profile x.toml: sandbox")


# Up to 720: any duration is at most 30 days (limits.MAX_DURATION_S), 720h included.
@given(st.integers(0, 720), st.sampled_from(["ms", "s", "m", "h"]))
def test_durations_in_every_unit(amount: int, unit: str) -> None:
    autoscale = validate_sandbox_config({"autoscale": {"for": f"{amount}{unit}"}}).autoscale
    assert autoscale is not None
    seconds = autoscale.for_s
    assert seconds == pytest.approx(amount * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit])


@given(st.integers(1, 64), st.integers(1, 64))
def test_min_max_either_valid_or_named(low: int, high: int) -> None:
    cfg = {"autoscale": {"min": low, "max": high}}
    if low <= high:
        normalized = validate_sandbox_config(cfg)
        assert low <= normalized.backends <= high
    else:
        with pytest.raises(ProfileError, match=rf"min must be <= max \(got {low} > {high}\)"):
            validate_sandbox_config(cfg)


def test_config_file_profile_or_bare_table(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('target = "sandbox"\n[sandbox]\nbackends = 2\n')
    assert load_config_file(str(profile)) == {"backends": 2}
    bare = tmp_path / "s.toml"
    bare.write_text('algorithm = "random"\n')
    assert load_config_file(str(bare)) == {"algorithm": "random"}


# -- the subprocess ----------------------------------------------------------------------------

@pytest.fixture
def sandbox() -> Iterator[Callable[..., Sandbox]]:
    """Starts sandboxes; every one is stopped at the end, whatever the test did."""
    started: list[Sandbox] = []

    def start(cfg: dict[str, Any] | None = None, **kwargs: Any) -> Sandbox:
        sb = start_sandbox(cfg, **kwargs)
        started.append(sb)
        return sb

    yield start
    for sb in started:
        sb.stop()
        assert not sb.running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT, trust_env=False) as c:
        yield c


def served_by(client: httpx.Client, url: str, n: int) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        response = client.get(url)
        assert response.status_code == 200
        counts[response.headers["x-served-by"]] += 1
    return counts


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until predicate() holds; fails the test after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not in metrics"
    return float(match.group(1))


def backend_state(sb: Sandbox, name: str) -> dict[str, Any]:
    return next(b for b in sb.state()["backends"] if b["name"] == name)


def test_default_sandbox_answers_and_stops(sandbox: Callable[..., Sandbox],
                                           client: httpx.Client) -> None:
    sb = sandbox()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sb.url)
    response = client.get(sb.url + "/anything")
    assert (response.status_code, response.text) == (200, "ok\n")
    assert response.headers["x-served-by"].startswith("backend-")
    assert client.get(sb.url + "/healthz").status_code == 200
    assert sb.stop() == 0          # SIGTERM: a clean exit
    assert sb.stop() == 0          # and stopping twice is harmless


def test_round_robin_shares_equal(sandbox: Callable[..., Sandbox],
                                  client: httpx.Client) -> None:
    sb = sandbox({"backends": 4})
    assert served_by(client, sb.url + "/", 200) == {f"backend-{i}": 50 for i in range(1, 5)}
    text = client.get(sb.metrics_url).text
    assert metric(text, "sandbox_requests_total", '{backend="backend-3"}') == 50


def test_weighted_shares_in_proportion(sandbox: Callable[..., Sandbox],
                                       client: httpx.Client) -> None:
    sb = sandbox({"algorithm": "weighted_round_robin", "backends": 3, "weights": [1, 2, 3]})
    assert served_by(client, sb.url + "/", 120) == {"backend-1": 20, "backend-2": 40,
                                                    "backend-3": 60}
    assert [b["weight"] for b in sb.state()["backends"]] == [1, 2, 3]


def test_random_reaches_every_backend(sandbox: Callable[..., Sandbox],
                                      client: httpx.Client) -> None:
    sb = sandbox({"algorithm": "random", "backends": 3})
    counts = served_by(client, sb.url + "/", 150)
    assert set(counts) == {"backend-1", "backend-2", "backend-3"}


def test_ip_hash_sticks_per_connection(sandbox: Callable[..., Sandbox]) -> None:
    sb = sandbox({"algorithm": "ip_hash", "backends": 4})
    chosen = set()
    for _ in range(12):
        # A fresh client is a fresh source port: the hash input on 127.0.0.1.
        with httpx.Client(timeout=TIMEOUT, trust_env=False) as c:
            counts = served_by(c, sb.url + "/", 5)
        assert len(counts) == 1
        chosen |= set(counts)
    assert len(chosen) > 1


def test_least_connections_avoids_busy_backend(sandbox: Callable[..., Sandbox]) -> None:
    sb = sandbox({"algorithm": "least_connections", "backends": 2,
                  "backend": {"service_time": "5ms"}})

    async def scenario() -> list[str]:
        async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as c:
            slow = asyncio.ensure_future(c.get(sb.url + "/slow?ms=1500"))
            await asyncio.sleep(0.1)
            fast = [(await c.get(sb.url + "/")).headers["x-served-by"] for _ in range(10)]
            slow_by = (await slow).headers["x-served-by"]
            return [slow_by, *fast]

    slow_by, *fast = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert slow_by not in fast and len(set(fast)) == 1


def test_queue_full_gives_503_at_once(sandbox: Callable[..., Sandbox]) -> None:
    sb = sandbox({"backends": 1, "backend": {"service_time": "500ms", "concurrency": 1,
                                              "queue": 1}})

    async def scenario() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as c:
            async def one() -> tuple[int, float]:
                start = time.monotonic()
                response = await c.get(sb.url + "/")
                return response.status_code, time.monotonic() - start
            return await asyncio.gather(*(one() for _ in range(4)))

    results = asyncio.run(asyncio.wait_for(scenario(), 10))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 503, 503]           # one served, one queued, two rejected
    assert all(elapsed < 0.4 for status, elapsed in results if status == 503)
    text = httpx.get(sb.metrics_url, timeout=TIMEOUT, trust_env=False).text
    assert metric(text, "sandbox_rejected_total", '{backend="backend-1"}') == 2


def test_killed_backend_answers_502_until_detected(sandbox: Callable[..., Sandbox],
                                                   client: httpx.Client) -> None:
    sb = sandbox({"backends": 2, "health": {"enabled": False}})
    sb.kill_backend("backend-2")
    statuses = collections.Counter(client.get(sb.url + "/").status_code for _ in range(10))
    assert statuses == {200: 5, 502: 5}
    sb.revive_backend("backend-2")
    assert served_by(client, sb.url + "/", 4) == {"backend-1": 2, "backend-2": 2}


def test_health_checks_remove_and_restore(sandbox: Callable[..., Sandbox],
                                          client: httpx.Client) -> None:
    sb = sandbox({"backends": 3, "health": FAST_HEALTH})
    sb.kill_backend("backend-2")
    # 2 failed checks 100 ms apart: out within ~0.2 s; allow for a loaded CI machine.
    took = wait_for(lambda: not backend_state(sb, "backend-2")["in_rotation"], 2.0,
                    "backend-2 out of rotation")
    assert took < 1.0
    assert served_by(client, sb.url + "/", 30) == {"backend-1": 15, "backend-3": 15}
    text = client.get(sb.metrics_url).text
    assert metric(text, "sandbox_backends_ready") == 2
    assert metric(text, "sandbox_backend_up", '{backend="backend-2"}') == 0

    sb.revive_backend("backend-2")
    wait_for(lambda: backend_state(sb, "backend-2")["in_rotation"], 2.0, "backend-2 back")
    assert served_by(client, sb.url + "/", 30) == {f"backend-{i}": 10 for i in (1, 2, 3)}
    events = [e["event"] for e in sb.state()["events"]]
    assert any("backend-2 unhealthy" in e for e in events)
    assert any("backend-2 healthy" in e for e in events)


def test_failing_backend_taken_out(sandbox: Callable[..., Sandbox],
                                   client: httpx.Client) -> None:
    sb = sandbox({"backends": 2, "health": FAST_HEALTH})
    sb.admin("POST", "/admin/backends/backend-1/fail")
    wait_for(lambda: not backend_state(sb, "backend-1")["in_rotation"], 2.0, "backend-1 out")
    assert served_by(client, sb.url + "/", 4) == {"backend-2": 4}


def test_admin_adds_backend_and_rejects_unknown(sandbox: Callable[..., Sandbox],
                                                client: httpx.Client) -> None:
    sb = sandbox({"backends": 1})
    assert sb.add_backend() == "backend-2"
    assert served_by(client, sb.url + "/", 4) == {"backend-1": 2, "backend-2": 2}
    assert client.post(sb.admin_url + "/admin/backends/backend-9/kill").status_code == 404
    assert client.post(sb.admin_url + "/admin/backends/backend-1/explode").status_code == 404
    assert client.get(sb.admin_url + "/admin/backends/backend-1/kill").status_code == 405
    with pytest.raises(RunError, match="404"):
        sb.kill_backend("nobody")


def _load(url: str, stop: threading.Event, clients: int) -> list[threading.Thread]:
    def loop() -> None:
        with httpx.Client(timeout=TIMEOUT, trust_env=False) as c:
            while not stop.is_set():
                c.get(url)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    return threads


def test_autoscaler_scales_out_under_load_and_back_in(sandbox: Callable[..., Sandbox],
                                                      client: httpx.Client) -> None:
    sb = sandbox({
        "backends": 1,
        "backend": {"service_time": "20ms", "concurrency": 2, "queue": 64},
        "health": {"interval": "500ms", "timeout": "500ms"},
        "autoscale": {"metric": "utilization", "threshold": 0.5, "for": "200ms", "step": 1,
                      "cooldown": "300ms", "min": 1, "max": 2, "startup_delay": "200ms",
                      "evaluation_interval": "100ms",
                      "scale_in": {"threshold": 0.1, "for": "300ms"}},
    })
    stop = threading.Event()
    threads = _load(sb.url + "/", stop, clients=4)      # 4 clients, 2 slots: utilization 1.0
    try:
        wait_for(lambda: metric(client.get(sb.metrics_url).text, "sandbox_backends_ready") == 2,
                 5.0, "a second backend ready")
        text = client.get(sb.metrics_url).text
        assert metric(text, "sandbox_backends") == 2                  # max holds
        assert metric(text, "sandbox_utilization") > 0
        assert metric(text, "sandbox_scale_events_total", '{direction="out"}') == 1
        wait_for(lambda: backend_state(sb, "backend-2")["requests"] > 0, 2.0,
                 "traffic on backend-2")
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    wait_for(lambda: metric(client.get(sb.metrics_url).text, "sandbox_backends") == 1, 5.0,
             "scale in to 1 backend")
    # The newest backend is drained: gone once its last request is answered.
    wait_for(lambda: [b["name"] for b in sb.state()["backends"]] == ["backend-1"], 2.0,
             "backend-2 drained")


def test_http_details_on_a_raw_socket(sandbox: Callable[..., Sandbox]) -> None:
    sb = sandbox({"backends": 2})
    with socket.create_connection(("127.0.0.1", sb.port), timeout=5) as s:
        # Two pipelined requests, the first with a body: answered in order on one connection.
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                  b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.index(b"backend-1") < data.index(b"backend-2")
    assert data.endswith(b"Connection: close\r\n\r\nok\n") or b"Connection: close" in data

    with socket.create_connection(("127.0.0.1", sb.port), timeout=5) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 400 ")
        assert s.recv(65536) == b""                    # and the connection is closed

    with socket.create_connection(("127.0.0.1", sb.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")           # HTTP/1.0: close after the response
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"ok\n")


def test_normalized_config_accepted_too(sandbox: Callable[..., Sandbox],
                                        client: httpx.Client) -> None:
    normalized = validate_sandbox_config({"backends": 2, "backend": {"service_time": "1ms"}})
    assert validate_sandbox_config(normalized) is normalized
    sb = sandbox(normalized)
    assert served_by(client, sb.url + "/", 4) == {"backend-1": 2, "backend-2": 2}


def test_subprocess_exits_when_parent_closes_stdin(sandbox: Callable[..., Sandbox]) -> None:
    sb = sandbox()
    assert sb.process.stdin is not None
    sb.process.stdin.close()              # what a parent killed with SIGKILL leaves behind
    assert sb.process.wait(5) == 0


def test_bad_config_fails_before_starting() -> None:
    with pytest.raises(ProfileError, match="sandbox.backends"):
        start_sandbox({"backends": -1})


def test_port_in_use_is_a_run_error(sandbox: Callable[..., Sandbox]) -> None:
    first = sandbox()
    with pytest.raises(RunError, match="cannot listen"):
        start_sandbox(port=first.port)


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk not installed")
def test_wrk_run(sandbox: Callable[..., Sandbox]) -> None:
    sb = sandbox()
    out = subprocess.run(["wrk", "-t1", "-c16", "-d2s", sb.url + "/"], capture_output=True,
                         text=True, timeout=15).stdout
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    assert rate > 0


def test_foreground_prints_urls_and_stops_on_ctrl_c() -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    process = subprocess.Popen(
        [sys.executable, "-m", "loadforge.sandbox", "--port", "0", "--admin-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if not line or "Ctrl-C" in line:
                break
        target = next(line.split()[-1] for line in lines if "target" in line)
        assert httpx.get(target + "/", timeout=TIMEOUT, trust_env=False).status_code == 200
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=5)
        assert process.returncode == 0, err
        assert "sandbox stopped" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sandbox_command_takes_a_file_with_only_a_sandbox_table(tmp_path):
    config = tmp_path / "cluster.toml"
    config.write_text('[sandbox]\nbackends = 3\n[sandbox.backend]\nservice_time = "1ms"\n')
    port, admin = free_port(), free_port()     # both chosen: port + 1 may be taken
    proc = subprocess.Popen([sys.executable, "-m", "loadforge.cli", "sandbox", "--port",
                             str(port), "--admin-port", str(admin), "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port)
        reply = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert reply.status_code == 200 and reply.headers["x-served-by"].startswith("backend-")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = tmp_path / "bad.toml"
    bad.write_text("[sandbox]\nbackends = 0\n")
    out = subprocess.run([sys.executable, "-m", "loadforge.cli", "sandbox", "--config",
                          str(bad)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "backends" in out.stderr and "Traceback" not in out.stderr
