"""Shards started by someone else (`--launcher external`): the coordinator listens on
--coordinator-address and waits for `loadforge shard --coordinator HOST:PORT --index I`, started
here as plain processes and, where the image is built (.ci/image), as containers from it
(podman, --network host). Only the run's shards join: a client without the run's token is
refused and changes nothing in the merged result, whose count equals nginx's.

Everything is on 127.0.0.1; each run is 1 s of load, bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from servers import ROOT, free_port
from servers import wait_for as wait_until

from loadforge.run import shards

IMAGE = os.environ.get("LOADFORGE_TEST_IMAGE", "localhost/loadforge:test")
PODMAN_ROOT = os.environ.get("PODMAN_ROOT", "/var/lib/containers/loadforge")


def write_profile(tmp_path: Path, url: str) -> str:
    path = tmp_path / "external.toml"
    path.write_text(f"""
name = "external"
target = "{url}"
[load]
connections = 4
[[stages]]
name = "flat"
rate = 200
duration = "1s"
""")
    return str(path)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "loadforge.cli", *args]


def coordinator(tmp_path: Path, prof: str, port: int, *more: str,
                env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli("run", prof, "--shards", "2", "--launcher", "external", "--coordinator-address",
            f"127.0.0.1:{port}", "--workers", "1", "--shard-start-timeout", "120s", "--quiet",
            "--out", str(tmp_path / "results"), "--summary-json", str(tmp_path / "s.json"),
            *more),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})})


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    limit = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < limit, f"{path} never appeared"
        time.sleep(0.05)


class Intruder:
    """A client that is not one of the run's shards: it dials the coordinator over and over
    while the run goes on (before the start, and after it), with a HELLO that has a wrong token,
    none, or is not the protocol at all, and notes what became of each try."""

    HELLOS = [
        shards.HELLO + json.dumps({"protocol": shards.PROTOCOL, "version": "0.1.0",
                                   "index": 0, "token": "guessed"}).encode(),
        shards.HELLO + json.dumps({"protocol": shards.PROTOCOL, "version": "0.1.0",
                                   "index": 1}).encode(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ]

    def __init__(self, port: int, proc: subprocess.Popen[str]):
        self.port, self.proc = port, proc
        self.outcomes: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        limit = time.monotonic() + 60
        i = 0
        while self.proc.poll() is None and time.monotonic() < limit and i < 2000:
            self.outcomes.append(self._try(self.HELLOS[i % len(self.HELLOS)]))
            i += 1
            time.sleep(0.02)

    def _try(self, hello: bytes) -> str:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except ConnectionRefusedError:
            return "connection refused"
        except OSError as exc:
            return f"error {exc}"
        with sock:
            try:
                if hello.startswith(b"GET"):
                    sock.sendall(hello)
                else:
                    sock.sendall(struct.pack("!i", len(hello)) + hello)
                head = sock.recv(5)
            except (ConnectionResetError, TimeoutError, BrokenPipeError):
                return "closed"
            if not head:
                return "closed"
            return {shards.REFUSE: "refused", shards.ACCEPT: "ACCEPTED"}.get(head[4:5], "?")

    def join(self) -> list[str]:
        self.thread.join(30)
        return self.outcomes


def check_result(tmp_path: Path, nginx: Any, before: int, coord: subprocess.Popen[str],
                 intruder: Intruder | None) -> str:
    out, err = coord.communicate(timeout=180)
    assert coord.returncode == 0, err
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["requests"] == result["scheduled"] == 200
    assert nginx.served() - before - 1 == 200          # minus the preflight request
    assert [s["index"] for s in result["shards"]] == [0, 1]
    assert [s["requests"] for s in result["shards"]] == [100, 100]
    if intruder is not None:
        outcomes = intruder.join()
        assert "ACCEPTED" not in outcomes and "?" not in outcomes, outcomes
        # Refused with a reason before the start; nothing listens once every shard is in.
        assert "refused" in outcomes and outcomes[-1] == "connection refused", outcomes
        said = [line for line in err.splitlines() if "refused a connection" in line]
        assert said and all(line.startswith("warning: the coordinator refused a connection "
                                            "from 127.0.0.1:") for line in said)
        assert any("has not this run's shard token" in line for line in said)
        assert any("presented no shard token" in line for line in said)
        assert any("did not speak the loadforge shard protocol" in line for line in said)
    return err


def test_external_shards_as_processes_with_a_token_file(nginx, tmp_path):
    prof = write_profile(tmp_path, nginx.url)
    port, token_file = free_port(), tmp_path / "token"
    before = nginx.served()
    coord = coordinator(tmp_path, prof, port, "--shard-token-file", str(token_file))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(token_file, coord)
        assert token_file.stat().st_mode & 0o777 == 0o600
        intruder = Intruder(port, coord)
        # Let it be refused a few times before the shards come.
        wait_until(lambda: len(intruder.outcomes) >= 3 or coord.poll() is not None, 30,
                   "the intruder's first attempts")
        # The token is not in the shards' environment: only in the file they are given.
        env = {k: v for k, v in os.environ.items() if k != shards.TOKEN_ENV}
        for index in (1, 0):
            procs.append(subprocess.Popen(
                cli("shard", "--coordinator", f"127.0.0.1:{port}", "--index", str(index),
                    "--token-file", str(token_file)),
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        err = check_result(tmp_path, nginx, before, coord, intruder)
        assert "waiting up to 120 s for 2 shard(s) on 127.0.0.1:" in err
        assert token_file.read_text().strip() not in err
        assert [p.wait(timeout=30) for p in procs] == [0, 0]
    finally:
        for p in (*procs, coord):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_shard_without_the_token_is_refused_and_the_run_goes_on(nginx, tmp_path):
    """A real `loadforge shard` with another token is refused (exit 3, saying why); the run
    takes the two shards with the token (from the environment, as the coordinator's own)."""
    prof = write_profile(tmp_path, nginx.url)
    port = free_port()
    token = shards.new_token()
    before = nginx.served()
    coord = coordinator(tmp_path, prof, port, env={shards.TOKEN_ENV: token})
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wrong = subprocess.run(
            cli("shard", "--coordinator", f"127.0.0.1:{port}", "--index", "0"), cwd=ROOT,
            env={**os.environ, shards.TOKEN_ENV: "not-" + token}, capture_output=True,
            text=True, timeout=60)
        assert wrong.returncode == 3, wrong.stderr
        assert "the coordinator refused it: refused: it has not this run's shard token" in (
            wrong.stderr)
        for index in (0, 1):
            procs.append(subprocess.Popen(
                cli("shard", "--coordinator", f"127.0.0.1:{port}", "--index", str(index)),
                cwd=ROOT, env={**os.environ, shards.TOKEN_ENV: token},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        err = check_result(tmp_path, nginx, before, coord, None)
        assert err.count("refused a connection") == 1
        assert [p.wait(timeout=30) for p in procs] == [0, 0]
    finally:
        for p in (*procs, coord):
            if p.poll() is None:
                p.kill()
                p.wait()


def podman(tmp_path: Path) -> list[str]:
    """podman as .ci/image runs it on this kind of machine."""
    conf = tmp_path / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\npids_limit = 0\n")
    return ["env", f"CONTAINERS_CONF={conf}", "podman", "--root", f"{PODMAN_ROOT}/storage",
            "--runroot", f"{PODMAN_ROOT}/run", "--runtime", "runc", "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs"]


def test_external_shards_as_containers_from_the_image(nginx, tmp_path):
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (CI installs it: .ci/image)")
    pm = podman(tmp_path)
    if subprocess.run([*pm, "image", "exists", IMAGE], capture_output=True,
                      timeout=60).returncode != 0:
        pytest.skip(f"the image {IMAGE} is not built here (CI builds it first: .ci/image)")
    prof = write_profile(tmp_path, nginx.url)
    port = free_port()
    token = shards.new_token()
    before = nginx.served()
    coord = coordinator(tmp_path, prof, port, env={shards.TOKEN_ENV: token})
    names = [f"loadforge-test-{port}-{index}" for index in (0, 1)]
    procs: list[subprocess.Popen[str]] = []
    try:
        intruder = Intruder(port, coord)
        for index, name in enumerate(names):
            # --env NAME without a value: podman passes its own, off its command line.
            procs.append(subprocess.Popen(
                [*pm, "run", "--rm", "--name", name, "--network", "host", "--env",
                 shards.TOKEN_ENV, IMAGE, "shard", "--coordinator", f"127.0.0.1:{port}",
                 "--index", str(index)],
                env={**os.environ, shards.TOKEN_ENV: token}, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True))
        check_result(tmp_path, nginx, before, coord, intruder)
        for p in procs:
            said, _ = p.communicate(timeout=120)
            assert p.returncode == 0, said
        # The image runs as a non-root user and can speak HTTP/2 (its libnghttp2 loads).
        probe = subprocess.run(
            [*pm, "run", "--rm", "--network", "host", "--entrypoint", "python3", IMAGE, "-c",
             "import os; from loadforge import _core; "
             "print(os.getuid(), repr(_core.http2_library()))"],
            capture_output=True, text=True, timeout=120)
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.split() == ["10001", "''"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for name in names:
            subprocess.run([*pm, "rm", "--force", "--ignore", name], capture_output=True,
                           timeout=120)
        if coord.poll() is None:
            coord.kill()
            coord.wait()


def test_local_shards_take_the_coordinator_address_too(nginx, tmp_path):
    prof = write_profile(tmp_path, nginx.url)
    # A port someone else holds: the coordinator says it cannot listen there (exit 3).
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        out = subprocess.run(
            cli("run", prof, "--shards", "2", "--coordinator-address", f"127.0.0.1:{busy}",
                "--quiet", "--out", str(tmp_path / "results")),
            cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert out.returncode == 3, out.stderr
    assert f"the coordinator cannot listen on 127.0.0.1:{busy}" in out.stderr
    before = nginx.served()
    out = subprocess.run(
        cli("run", prof, "--shards", "2", "--coordinator-address", f"127.0.0.1:{free_port()}",
            "--workers", "1", "--quiet", "--out", str(tmp_path / "results"),
            "--summary-json", str(tmp_path / "s.json")),
        cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "s.json").read_text())["requests"] == 200
    assert nginx.served() - before - 1 == 200
