"""Backend attribution and failover figures against a real load balancer: HAProxy from
Debian's package in front of three small servers that each answer with `X-Served-By`.

HAProxy's runtime API (`stats socket ... level admin`) puts a server into maintenance in the
middle of a run, from a profile's `[[actions]]` command, as an operator would with socat.
Each run is a few seconds at a few hundred requests per second.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from servers import free_port, wait_listening

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None,
                                reason="haproxy is not installed (apt-get install -y haproxy)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVERS = ("s1", "s2", "s3")

HAPROXY_CONF = """
global
  stats socket {dir}/admin.sock mode 600 level admin
  maxconn 4096
  nbthread 2
defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 10s
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  balance roundrobin
{servers}
"""


class _Backend(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive, as HAProxy reuses server connections
    server: _Backend

    def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
        self.send_response(200)
        self.send_header("X-Served-By", self.server.name)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class HAProxy:
    url: str
    socket_path: str

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.socket_path)
            s.sendall(line.encode() + b"\n")
            return s.recv(65536).decode()


@pytest.fixture
def haproxy() -> Iterator[HAProxy]:
    backends = [_Backend(name) for name in SERVERS]
    for b in backends:
        threading.Thread(target=b.serve_forever, daemon=True).start()
    workdir = tempfile.mkdtemp(prefix="loadforge-haproxy-")
    port = free_port()
    servers = "\n".join(f"  server {b.name} 127.0.0.1:{b.server_address[1]}" for b in backends)
    conf = Path(workdir) / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(dir=workdir, port=port, servers=servers))
    check = subprocess.run(["haproxy", "-c", "-f", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_listening(port)
        yield HAProxy(f"http://127.0.0.1:{port}/", os.path.join(workdir, "admin.sock"))
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        for b in backends:
            b.shutdown()
            b.server_close()
        shutil.rmtree(workdir, ignore_errors=True)


def loadforge(tmp_path: Path, *args: str) -> dict[str, Any]:
    summary = tmp_path / "summary.json"
    out = subprocess.run([sys.executable, "-m", "loadforge.cli", "run", *args, "--quiet",
                          "--workers", "1", "--out", str(tmp_path / "results"),
                          "--summary-json", str(summary)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    data: dict[str, Any] = json.loads(summary.read_text())
    return data


def test_round_robin_shares_equal(haproxy: HAProxy, tmp_path: Path) -> None:
    s = loadforge(tmp_path, "--target", haproxy.url, "--rate", "600", "--duration", "3s",
                  "--backend-header", "X-Served-By")
    assert s["errors"] == 0 and s["requests"] == 1800
    backends = s["backends"]
    assert set(backends) == set(SERVERS)
    for b in backends.values():
        assert b["share"] == pytest.approx(1 / 3, abs=0.03)
        assert b["p99_us"] > 0
    assert s["fairness"]["jain"] > 0.99 and s["fairness"]["max_min_ratio"] < 1.1
    assert s["unattributed"] == 0


def test_maintenance_mid_run_takes_the_share_to_zero(haproxy: HAProxy, tmp_path: Path) -> None:
    # The runtime API from a plain Python one-liner, so that no socat is needed.
    maint = (f"{sys.executable} -c \"import socket; s = socket.socket(socket.AF_UNIX); "
             f"s.connect('{haproxy.socket_path}'); s.sendall(b'set server be/s2 state maint\\n'); "
             "print(s.recv(4096).decode())\"")
    profile = tmp_path / "maint.toml"
    profile.write_text(f"""
target = "{haproxy.url}"
[load]
connections = 32
[observe]
backend_header = "X-Served-By"
[[stages]]
name = "before"
rate = 300
duration = "3s"
[[stages]]
name = "after"
rate = 300
duration = "3s"
[[actions]]
at = "2.5s"
run = '''{maint}'''
backend = "s2"
name = "s2 to maintenance"
[slo]
failover = "5s"
""")
    s = loadforge(tmp_path, str(profile))
    before, after = (stage["backends"] for stage in s["stages"])
    assert set(before) == set(SERVERS)
    assert "s2" not in after and set(after) == {"s1", "s3"}
    assert after["s1"]["share"] == pytest.approx(0.5, abs=0.03)
    (action,) = s["actions"]
    assert action["ok"] and action["name"] == "s2 to maintenance"
    f = action["failover"]
    # Maintenance drains: no request fails, and s2 stops serving within the interval.
    assert f["errors"] == 0 and f["failover_s"] == 0.0
    assert f["backend_out_s"] is not None and f["backend_out_s"] <= 1.0
    assert f["backend_requests_after"] < 150
    verdict = next(v for v in s["slo"] if v["objective"] == "failover")
    assert verdict["ok"] and verdict["observed"] == 0.0
    s2 = next(line for line in haproxy.command("show stat").splitlines()
              if line.startswith("be,s2,"))
    assert ",MAINT," in s2


def _compare(*args: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "loadforge.cli", "compare", *args,
                          "--format", "json"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, json.loads(out.stdout)


def test_share_gates_pass_round_robin_and_fail_a_weight_change(haproxy: HAProxy,
                                                                tmp_path: Path) -> None:
    """Two round-robin runs pass `share[*]=+5pp`; with s3 at weight 3 (20/20/60) it fails,
    and s3's share is in `compare --format json`, as are fairness and per-backend figures."""
    files = []
    for i in range(3):
        if i == 2:
            assert haproxy.command("set weight be/s3 3").strip() == ""
        run = tmp_path / f"run{i}"
        s = loadforge(run, "--target", haproxy.url, "--rate", "600", "--duration", "2s",
                      "--backend-header", "X-Served-By")
        files.append(s["result"])
    gates = ("--fail-on", "share[*]=+5pp", "--fail-on", "fairness=-0.05")
    code, same = _compare(files[0], files[1], *gates)
    assert code == 0, [c["message"] for c in same["gates"]]
    assert {c["figure"] for c in same["gates"]} == {"share[s1]", "share[s2]", "share[s3]",
                                                    "fairness"}
    code, weighted = _compare(files[0], files[2], *gates, "--fail-on", "share[s3]=+5pp")
    assert code == 1
    failed = {c["figure"] for c in weighted["gates"] if not c["ok"]}
    assert failed >= {"share[s3]", "fairness"}
    scoped = weighted["stages"][0]["scoped"]
    assert scoped[0]["backends"]["s3"]["share"] == pytest.approx(1 / 3, abs=0.03)
    assert scoped[1]["backends"]["s3"]["share"] == pytest.approx(0.6, abs=0.03)
    assert scoped[1]["backends"]["s3"]["p99"] > 0 and scoped[1]["backends"]["s3"]["p50"] > 0
    assert scoped[1]["backends"]["s3"]["error_rate"] == 0
    assert scoped[1]["fairness"] < scoped[0]["fairness"]
    table = subprocess.run([sys.executable, "-m", "loadforge.cli", "compare", files[0],
                            files[2]], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "backend s3 share" in table.stdout and "fairness (Jain)" in table.stdout
    missing = subprocess.run([sys.executable, "-m", "loadforge.cli", "compare", files[0],
                              files[2], "--fail-on", "share[b9]=+5pp"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert missing.returncode == 2 and "b9" in missing.stderr and "s3" in missing.stderr
    html = tmp_path / "r.html"
    report = subprocess.run([sys.executable, "-m", "loadforge.cli", "report", files[0],
                             files[2], "--html", str(html)], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert report.returncode == 0, report.stderr
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', html.read_text(),
                                re.S)[1])
    assert data["runs"][1]["backends"]["all"]["backends"]["s3"]["share"] == pytest.approx(
        0.6, abs=0.03)
    assert data["comparison"]["stages"][0]["scoped"][1]["fairness"] < 0.95
