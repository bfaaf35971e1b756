"""HTTPS end to end: nginx (and HAProxy) with TLS on 127.0.0.1, certificates made here with
trustme. Counts reconcile with nginx's access log; certificate problems end the run before it
starts with exit 3 and one line naming the reason; mutual TLS, forced versions, resumption.

Each run is one or two seconds at a few hundred requests per second, or a handful of closed-
model connections.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import trustme
from servers import ROOT, Nginx, OneConnectionServer, free_port, loadforge, wait_listening

from loadforge import _core
from loadforge.engine import histogram
from loadforge.results.store import read_result

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None,
                                reason="nginx is not installed (apt-get install -y nginx)")

PROTOCOLS = "ssl_protocols TLSv1.2 TLSv1.3;"


class Certs:
    """A CA, a server certificate for 127.0.0.1 and localhost, an expired one, one from a
    CA nobody trusts, and a client certificate."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lf-tls-"))
        self.ca = trustme.CA()
        self.ca.cert_pem.write_to_path(str(self.dir / "ca.pem"))
        self.ca_pem = str(self.dir / "ca.pem")
        self.server = self._leaf("server", self.ca.issue_cert("127.0.0.1", "localhost"))
        past = datetime.datetime(2020, 1, 1)
        self.expired = self._leaf("expired", self.ca.issue_cert(
            "127.0.0.1", not_before=past, not_after=past + datetime.timedelta(days=30)))
        self.untrusted = self._leaf("untrusted", trustme.CA().issue_cert("127.0.0.1"))
        self.client_ca = trustme.CA()
        self.client_ca.cert_pem.write_to_path(str(self.dir / "client-ca.pem"))
        client = self.client_ca.issue_cert("loadforge-client")
        client.cert_chain_pems[0].write_to_path(str(self.dir / "client.pem"))
        client.private_key_pem.write_to_path(str(self.dir / "client.key"))
        self.client_cert = str(self.dir / "client.pem")
        self.client_key = str(self.dir / "client.key")

    def _leaf(self, name: str, cert: trustme.LeafCert) -> str:
        path = self.dir / f"{name}.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
        return str(path)

    def nginx(self, pem: str | None = None, extra: str = PROTOCOLS) -> Nginx:
        pem = pem or self.server
        return Nginx(tls=f"ssl_certificate {pem}; ssl_certificate_key {pem}; {extra}")


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    c = Certs()
    yield c
    shutil.rmtree(c.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def server(certs: Certs) -> Iterator[Nginx]:
    s = certs.nginx()
    yield s
    s.stop()


def run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    summary = tmp_path / "summary.json"
    out = loadforge("run", *args, "--quiet", "--workers", "1", "--out", str(tmp_path / "results"),
                    "--summary-json", str(summary))
    return out, (json.loads(summary.read_text()) if summary.exists() else {})


def ok_run(tmp_path: Path, *args: str) -> dict[str, Any]:
    out, s = run(tmp_path, *args)
    assert out.returncode == 0, out.stderr
    return s


def failed_run(tmp_path: Path, *args: str) -> str:
    """A run that could not start: exit 3 and one line, no traceback, no result."""
    out, s = run(tmp_path, *args)
    assert out.returncode == 3, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert not s and not (tmp_path / "results").exists()
    return lines[0]


def test_closed_model_counts_equal_nginx_log(server: Nginx, certs: Certs, tmp_path: Path) -> None:
    before = server.served()
    s = ok_run(tmp_path, "--target", server.url + "/", "--ca-cert", certs.ca_pem,
               "--concurrency", "4", "--duration", "1s")
    assert s["errors"] == 0 and s["requests"] > 100
    assert server.served() - before == s["requests"] + 1      # + the preflight
    tls = s["tls"]
    assert tls["protocol"] == "TLSv1.3" and tls["alpn"] == "http/1.1" and tls["cipher"]
    assert tls["verify"] is True
    c = s["connections"]
    assert c["tls_handshakes"]["full"] + c["tls_handshakes"]["resumed"] == c["opened"] == 4
    assert c["tls_handshake_us"]["count"] == 4
    result = read_result(s["result"])
    assert json.loads(result.metadata["tls"])["protocol"] == "TLSv1.3"
    rows = result.table.to_pylist()
    run_row = next(r for r in rows if r["scope"] == "run" and r["name"] == "*"
                   and r["outcome"] == "*")
    assert histogram.decode(run_row["tls_hdr"]).total_count == 4
    per_interval = sum(histogram.decode(r["tls_hdr"]).total_count for r in rows
                       if r["scope"] == "interval" and r["tls_hdr"] is not None)
    assert per_interval == 4


def test_open_model_counts_equal_nginx_log(server: Nginx, certs: Certs, tmp_path: Path) -> None:
    before = server.served()
    s = ok_run(tmp_path, "--target", server.url + "/", "--ca-cert", certs.ca_pem,
               "--rate", "300", "--duration", "2s", "--connections", "8")
    assert s["errors"] == 0 and s["requests"] == s["scheduled"] == 600
    assert server.served() - before == 601
    # An open-model run latency includes the handshake of the requests that waited for it:
    # the first requests went out on preconnected connections, so no latency is below the
    # service time.
    assert s["latency_us"]["max"] >= s["service_time_us"]["p50"]


def test_plain_http_has_no_tls_columns(nginx: Nginx, tmp_path: Path) -> None:
    s = ok_run(tmp_path, "--target", nginx.url + "/", "--concurrency", "2", "--duration", "1s")
    assert "tls" not in s and "tls_handshakes" not in s["connections"]
    rows = read_result(s["result"]).table.to_pylist()
    assert all(r["tls_hdr"] is None for r in rows)


def test_unknown_issuer_exit_3(server: Nginx, tmp_path: Path) -> None:
    # No --ca-cert: the system store does not know the test CA.
    line = failed_run(tmp_path, "--target", server.url + "/", "--rate", "10", "--duration", "1s")
    assert "unknown issuer" in line and "--ca-cert" in line


def test_untrusted_ca_exit_3(certs: Certs, tmp_path: Path) -> None:
    s = certs.nginx(certs.untrusted)
    try:
        line = failed_run(tmp_path, "--target", s.url + "/", "--ca-cert", certs.ca_pem,
                          "--rate", "10", "--duration", "1s")
    finally:
        s.stop()
    assert "unknown issuer" in line


def test_name_mismatch_exit_3(server: Nginx, certs: Certs, tmp_path: Path) -> None:
    line = failed_run(tmp_path, "--target", server.url + "/", "--ca-cert", certs.ca_pem,
                      "--server-name", "api.example.com", "--rate", "10", "--duration", "1s")
    assert "name mismatch" in line and "api.example.com" in line and "--server-name" in line


def test_server_name_by_hostname(server: Nginx, certs: Certs, tmp_path: Path) -> None:
    # The URL names localhost, the certificate carries it: verified by name, with SNI.
    s = ok_run(tmp_path, "--target", f"https://localhost:{server.port}/", "--ca-cert",
               certs.ca_pem, "--rate", "50", "--duration", "1s")
    assert s["errors"] == 0 and s["requests"] == 50


def test_expired_exit_3(certs: Certs, tmp_path: Path) -> None:
    s = certs.nginx(certs.expired)
    try:
        line = failed_run(tmp_path, "--target", s.url + "/", "--ca-cert", certs.ca_pem,
                          "--rate", "10", "--duration", "1s")
    finally:
        s.stop()
    assert "expired" in line and "renew" in line


def test_insecure_skips_verification_loudly(certs: Certs, tmp_path: Path) -> None:
    s = certs.nginx(certs.expired)
    try:
        out = loadforge("run", "--target", s.url + "/", "--insecure", "--rate", "50",
                        "--duration", "1s", "--workers", "1", "--out", str(tmp_path))
    finally:
        s.stop()
    assert out.returncode == 0, out.stderr
    assert "NOT verified" in out.stdout + out.stderr


def test_mutual_tls(certs: Certs, tmp_path: Path) -> None:
    s = certs.nginx(extra=f"{PROTOCOLS} ssl_client_certificate {certs.dir / 'client-ca.pem'}; "
                          "ssl_verify_client on;")
    try:
        line = failed_run(tmp_path / "without", "--target", s.url + "/", "--ca-cert",
                          certs.ca_pem, "--rate", "10", "--duration", "1s")
        before = s.served()
        summary = ok_run(tmp_path / "with", "--target", s.url + "/", "--ca-cert", certs.ca_pem,
                         "--client-cert", certs.client_cert, "--client-key", certs.client_key,
                         "--concurrency", "2", "--duration", "1s")
        served = s.served() - before
    finally:
        s.stop()
    assert "client certificate" in line and "--client-cert" in line
    assert summary["errors"] == 0 and summary["status"]["2xx"] == summary["requests"] > 50
    assert served == summary["requests"] + 1
    assert summary["tls"]["client_cert"] is True


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_forced_version_and_resumption(server: Nginx, certs: Certs, tmp_path: Path,
                                       version: str) -> None:
    # A new connection per request: after the first full handshake, the rest resume.
    profile = tmp_path / "churn.toml"
    profile.write_text(f"""
target = "{server.url}/"
[load]
connections = 2
requests_per_connection = 1
[tls]
ca = "{certs.ca_pem}"
versions = ["{version}"]
[[stages]]
concurrency = 2
duration = "1s"
""")
    before = server.served()
    s = ok_run(tmp_path, str(profile))
    assert s["tls"]["protocol"] == f"TLSv{version}"
    assert s["errors"] == 0 and server.served() - before == s["requests"] + 1
    c = s["connections"]
    hs = c["tls_handshakes"]
    assert c["opened"] == s["requests"] > 20
    assert hs["full"] + hs["resumed"] == c["opened"] and hs["failed"] == 0
    # the first connections cannot resume: no ticket had come yet
    assert hs["full"] >= 1 and hs["resumed"] >= 0.9 * c["opened"]
    # Each request waited for its connection's handshake, and its latency holds it.
    assert s["latency_us"]["p50"] >= c["tls_handshake_us"]["p50"]
    assert s["latency_us"]["p50"] >= s["service_time_us"]["p50"]


def test_resumption_off_makes_every_handshake_full(server: Nginx, certs: Certs,
                                                   tmp_path: Path) -> None:
    profile = tmp_path / "full.toml"
    profile.write_text(f"""
target = "{server.url}/"
[load]
connections = 1
requests_per_connection = 1
[tls]
ca = "{certs.ca_pem}"
resumption = false
[[stages]]
rate = 50
duration = "1s"
""")
    s = ok_run(tmp_path, str(profile))
    hs = s["connections"]["tls_handshakes"]
    assert hs["resumed"] == 0 and hs["full"] == s["connections"]["opened"] >= 50


def test_no_version_in_common_exit_3(certs: Certs, tmp_path: Path) -> None:
    s = certs.nginx(extra="ssl_protocols TLSv1.3;")
    profile = tmp_path / "v12.toml"
    profile.write_text(f"""
target = "{s.url}/"
[tls]
ca = "{certs.ca_pem}"
versions = ["1.2"]
[[stages]]
rate = 10
duration = "1s"
""")
    try:
        line = failed_run(tmp_path, str(profile))
    finally:
        s.stop()
    assert "no TLS version in common" in line


def test_https_without_server_tls_exit_3(nginx: Nginx, tmp_path: Path) -> None:
    line = failed_run(tmp_path, "--target", nginx.url.replace("http:", "https:") + "/",
                      "--insecure", "--rate", "10", "--duration", "1s")
    assert "does not speak TLS" in line


def test_engine_reads_big_bodies_whole(certs: Certs) -> None:
    # 3 MiB bodies: many TLS records per read, more than one read per wake-up.
    s = certs.nginx()
    try:
        files = os.path.join(s.dir, "files")
        os.makedirs(files, exist_ok=True)
        with open(os.path.join(files, "big"), "wb") as f:
            f.write(os.urandom(3 << 20))
        # nginx's workers run as nobody when the tests run as root
        for path in (s.dir, files):
            os.chmod(path, 0o755)
        os.chmod(os.path.join(files, "big"), 0o644)
        req = f"GET /files/big HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n\r\n".encode()
        tls = {"ca": certs.ca_pem, "verify_name": "127.0.0.1", "verify_ip": True, "sni": ""}
        engine = _core.Engine("127.0.0.1", s.port, [(req, False)], [0],
                              [(True, 10.0, 10.0, 1.0, 0, 0.0)], 2, tls=tls)
        payloads: list[bytes] = []
        engine.run(_core.now_ns() + 20_000_000, lambda p, o, f: payloads.append(p))
    finally:
        s.stop()
    from loadforge.run.workers import decode_interval, interval_message

    counts: dict[str, int] = {}
    for p in payloads:
        for cell in decode_interval(interval_message(p, 0, 0)).cells:
            counts[cell.outcome] = counts.get(cell.outcome, 0) + cell.n
    assert counts == {"2xx": 10}
    assert engine.tls_handshakes == (2, 0, 0)
    # The first handshake's terms, named as Python's ssl module (the preflight) names them.
    assert engine.tls_negotiated is not None
    assert engine.tls_negotiated["protocol"] == "TLSv1.3"
    assert engine.tls_negotiated["alpn"] == "http/1.1"
    assert engine.tls_negotiated["cipher"].startswith("TLS_")


def test_the_pool_s_handshakes_end_before_time_zero(certs: Certs) -> None:
    """Engine.warm (a worker's, before READY) opens the pool and finishes its handshakes:
    the run's first arrivals then wait for none. (Before, 128 handshakes a worker at time
    zero put 0.1 s on the first arrivals of an HTTPS run at 1,000/s.)"""
    s = certs.nginx()
    try:
        req = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n\r\n".encode()
        tls = {"ca": certs.ca_pem, "verify_name": "127.0.0.1", "verify_ip": True, "sni": ""}
        engine = _core.Engine("127.0.0.1", s.port, [(req, False)], [0],
                              [(True, 20.0, 20.0, 0.5, 0, 0.0)], 8, tls=tls)
        assert engine.warm(-1, 10.0) == 8
        full, resumed, failed = engine.tls_handshakes
        assert full + resumed == 8 and failed == 0      # all of them, before time zero
        payloads: list[bytes] = []
        engine.run(_core.now_ns() + 5_000_000, lambda p, o, f: payloads.append(p))
    finally:
        s.stop()
    from loadforge.run.workers import decode_interval, interval_message

    reports = [decode_interval(interval_message(p, 0, 0)) for p in payloads]
    assert sum(c.n for r in reports for c in r.cells if c.outcome == "2xx") == 10
    assert sum(r.connects for r in reports) == 8        # counted once, none opened after
    assert engine.tls_handshakes == (full, resumed, 0)


HAPROXY_CONF = """
global
  maxconn 4096
  nbthread 2
defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 10s
frontend fe
  bind 127.0.0.1:{port} ssl crt {pem}
  http-response set-header X-Served-By %s
  default_backend be
backend be
  balance roundrobin
{servers}
"""


@pytest.mark.skipif(shutil.which("haproxy") is None,
                    reason="haproxy is not installed (apt-get install -y haproxy)")
def test_haproxy_terminating_tls_shares(certs: Certs, tmp_path: Path) -> None:
    backends = [Nginx() for _ in range(3)]
    port = free_port()
    servers = "\n".join(f"  server s{i} 127.0.0.1:{b.port}" for i, b in enumerate(backends))
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(port=port, pem=certs.server, servers=servers))
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_listening(port)
        s = ok_run(tmp_path, "--target", f"https://127.0.0.1:{port}/", "--ca-cert",
                   certs.ca_pem, "--rate", "300", "--duration", "2s", "--connections", "8",
                   "--backend-header", "X-Served-By")
        served = [b.served() for b in backends]
    finally:
        proc.terminate()
        proc.wait(5)
        for b in backends:
            b.stop()
    assert s["errors"] == 0 and s["requests"] == 600
    assert sum(served) == 601          # the preflight went to one of them
    shares = s["backends"]
    assert set(shares) == {"s0", "s1", "s2"}
    for b in shares.values():
        assert b["share"] == pytest.approx(1 / 3, abs=0.03)


@pytest.mark.parametrize("case", ["unknown-issuer", "name-mismatch"])
def test_engine_verifies_without_the_preflight(server: Nginx, certs: Certs, tmp_path: Path,
                                               case: str) -> None:
    # --no-preflight: the engine's own verification fails every handshake; nothing reaches
    # nginx's access log.
    flags = ["--server-name", "api.example.com", "--ca-cert", certs.ca_pem] \
        if case == "name-mismatch" else []
    before = server.served()
    s = ok_run(tmp_path, "--target", server.url + "/", *flags, "--no-preflight",
               "--rate", "20", "--duration", "1s", "--connections", "2")
    assert s["requests"] == 0 and s["errors"] == s["errors_by_kind"]["connect"] == 20
    hs = s["connections"]["tls_handshakes"]
    assert hs["failed"] > 0 and hs["full"] == hs["resumed"] == 0
    assert s["tls"]["protocol"] is None          # nothing negotiated before the run
    assert server.served() == before


def test_sharded_run_over_tls(server: Nginx, certs: Certs, tmp_path: Path) -> None:
    before = server.served()
    out, s = run(tmp_path, "--target", server.url + "/", "--ca-cert", certs.ca_pem,
                 "--rate", "100", "--duration", "1s", "--shards", "2")
    assert out.returncode == 0, out.stderr
    assert s["requests"] == 100 and server.served() - before == 101
    # Without the preflight, the shards relay their workers' DONE with what they negotiated.
    out, s = run(tmp_path, "--target", server.url + "/", "--ca-cert", certs.ca_pem,
                 "--rate", "100", "--duration", "1s", "--shards", "2", "--no-preflight")
    assert out.returncode == 0, out.stderr
    assert s["requests"] == 100 and s["tls"]["protocol"] == "TLSv1.3"
    assert s["tls"]["alpn"] == "http/1.1"


def test_large_request_bodies(server: Nginx, certs: Certs, tmp_path: Path) -> None:
    # 1 MiB POST bodies: the ciphertext outgrows the socket buffer, so writes are partial and
    # finish on EPOLLOUT; every request is answered and logged.
    profile = tmp_path / "post.toml"
    profile.write_text(f"""
target = "{server.url}/"
[load]
connections = 2
[tls]
ca = "{certs.ca_pem}"
[[stages]]
concurrency = 2
duration = "1s"
[[requests]]
name = "get"
path = "/"
[[requests]]
name = "upload"
method = "POST"
path = "/"
body = "{'x' * (1 << 20)}"
""")
    before = server.served()
    s = ok_run(tmp_path, str(profile))
    assert s["errors"] == 0 and s["requests"] > 10
    assert s["requests_by_name"]["upload"]["requests"] > 2
    assert s["status"]["2xx"] == s["requests"]
    assert server.served() - before == s["requests"] + 1


def test_no_preflight_records_what_the_engine_negotiated(server: Nginx, certs: Certs,
                                                         tmp_path: Path) -> None:
    # --no-preflight: the protocol, cipher and ALPN come from the engine's own first
    # handshake (each worker's, carried in its DONE message), in the summary and the Parquet
    # metadata alike.
    profile = tmp_path / "tls12.toml"
    profile.write_text(f"""
target = "{server.url}/"
[load]
connections = 2
[tls]
ca = "{certs.ca_pem}"
versions = ["1.2"]
[[stages]]
rate = 50
duration = "1s"
""")
    for args, protocol in (([], "TLSv1.3"), ([str(profile)], "TLSv1.2")):
        target = [] if args else ["--target", server.url + "/", "--ca-cert", certs.ca_pem,
                                  "--rate", "50", "--duration", "1s", "--connections", "2"]
        s = ok_run(tmp_path, *args, *target, "--no-preflight")
        tls = s["tls"]
        assert s["errors"] == 0 and s["requests"] == 50
        assert tls["protocol"] == protocol and tls["alpn"] == "http/1.1"
        assert tls["cipher"] and tls["verify"] is True
        meta = json.loads(read_result(s["result"]).metadata["tls"])
        assert {k: meta[k] for k in ("protocol", "cipher", "alpn")} == \
            {k: tls[k] for k in ("protocol", "cipher", "alpn")}


class _MuteTLSServer:
    """Accepts TCP on 127.0.0.1 and never answers the ClientHello ("silent"), or reads it
    and closes the connection ("close": the handshake fails part way)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.mode == "close":
                conn.recv(4096)
                conn.close()
            else:
                self.held.append(conn)

    def stop(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.mark.parametrize("mode", ["silent", "close"])
def test_failed_handshakes_are_counted(certs: Certs, tmp_path: Path, mode: str) -> None:
    # Every handshake that did not finish is a failed one: one that timed out (the server
    # never answers the ClientHello), which is also a failed connect whose waiting request
    # is a `connect` error (arrivals that found no connection ready are unsent); and one the
    # server ended part way, whose request is a `reset`, as for any accepted-then-closed
    # connection.
    server = _MuteTLSServer(mode)
    try:
        s = ok_run(tmp_path, "--target", f"https://127.0.0.1:{server.port}/",
                   "--ca-cert", certs.ca_pem, "--no-preflight", "--timeout", "200ms",
                   "--rate", "10", "--duration", "1s", "--connections", "2")
    finally:
        server.stop()
    kind = "connect" if mode == "silent" else "reset"
    assert s["requests"] == 0 and s["errors"] == s["errors_by_kind"][kind]
    assert s["errors"] + s["unsent"] == s["scheduled"] == 10
    c = s["connections"]
    hs = c["tls_handshakes"]
    assert hs["full"] == hs["resumed"] == 0
    assert 0 < hs["failed"] == c["opened"] <= server.accepted
    if mode == "silent":
        assert c["failed"] == c["opened"]
    assert s["tls"]["protocol"] is None


# -- HTTP/2 over TLS: h2 negotiated by ALPN ------------------------------------------------------

@pytest.fixture(scope="module")
def h2_server(certs: Certs) -> Iterator[Nginx]:
    pem = certs.server
    s = Nginx(tls=f"ssl_certificate {pem}; ssl_certificate_key {pem}; {PROTOCOLS}", http2=True)
    yield s
    s.stop()


@pytest.mark.parametrize("model", [("--concurrency", "40"), ("--rate", "300")])
def test_http2_over_tls_counts_equal_nginx_log(h2_server: Nginx, certs: Certs, tmp_path: Path,
                                               model: tuple[str, str]) -> None:
    before = h2_server.served()
    s = ok_run(tmp_path, "--target", h2_server.url + "/", "--ca-cert", certs.ca_pem,
               "--http", "2", "--connections", "2", "--streams", "20", *model,
               "--duration", "1s")
    assert s["errors"] == 0 and s["requests"] > 100
    assert h2_server.served() - before == s["requests"] + 1      # + the preflight
    assert s["tls"]["alpn"] == "h2" and s["tls"]["alpn_offered"] == ["h2"]
    c = s["connections"]
    assert c["opened"] == 2 and c["tls_handshakes"]["full"] + c["tls_handshakes"]["resumed"] == 2
    assert read_result(s["result"]).metadata["http"] == "2"


def test_http2_over_tls_to_a_server_without_h2_exit_3(server: Nginx, certs: Certs,
                                                      tmp_path: Path) -> None:
    line = failed_run(tmp_path, "--target", server.url + "/", "--ca-cert", certs.ca_pem,
                      "--http", "2", "--concurrency", "4", "--duration", "1s")
    # nginx ends the handshake (no_application_protocol); a lenient server would pick
    # http/1.1 and hear the same from the preflight
    assert "will not speak HTTP/2 over TLS" in line and "drop --http 2" in line


def test_http2_over_tls_without_the_preflight_records_h2(h2_server: Nginx, certs: Certs,
                                                         tmp_path: Path) -> None:
    # The engine's own record of its first handshake names the protocol ALPN chose.
    s = ok_run(tmp_path, "--target", h2_server.url + "/", "--ca-cert", certs.ca_pem,
               "--http", "2", "--connections", "2", "--streams", "10", "--rate", "100",
               "--duration", "1s", "--no-preflight")
    assert s["errors"] == 0 and s["requests"] == 100
    assert s["tls"]["alpn"] == "h2" and s["tls"]["protocol"] == "TLSv1.3"


# -- the TLS write side: close_notify, a certificate refused after the handshake (issue 19) ------

class _PyTLSServer:
    """HTTP/1.1 over Python's ssl, a thread per connection: answers every request `200 ok`
    and notes how each connection ended: with the client's close_notify (`clean`) or without
    (`truncated`). require_cert: TLS 1.3 only, a client certificate required; a client without
    one completes its side of the handshake and hears the refusal on its first read."""

    def __init__(self, certs: Certs, require_cert: bool = False) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certs.server)
        if require_cert:
            self.context.minimum_version = ssl.TLSVersion.TLSv1_3
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(str(certs.dir / "client-ca.pem"))
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.counts = {"accepted": 0, "handshakes": 0, "refused": 0, "answered": 0,
                       "clean": 0, "truncated": 0}
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._count("accepted")
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            tls = self.context.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)
        except (ssl.SSLError, OSError):
            self._count("refused")
            conn.close()
            return
        self._count("handshakes")
        buf = b""
        try:
            while True:
                data = tls.recv(65536)
                if not data:
                    self._count("clean")         # close_notify
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, _, buf = buf.partition(b"\r\n\r\n")
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    self._count("answered")
        except ssl.SSLEOFError:
            self._count("truncated")
        except (ssl.SSLError, OSError):
            self._count("refused")
        finally:
            tls.close()

    def stop(self) -> dict[str, int]:
        self.sock.close()
        for t in self.threads:
            t.join(10)
        return dict(self.counts)


def test_connections_end_with_close_notify(certs: Certs, tmp_path: Path) -> None:
    server = _PyTLSServer(certs)
    try:
        s = ok_run(tmp_path, "--target", f"https://127.0.0.1:{server.port}/",
                   "--ca-cert", certs.ca_pem, "--no-preflight", "--concurrency", "3",
                   "--duration", "500ms")
    finally:
        counts = server.stop()
    assert s["errors"] == 0 and s["requests"] == counts["answered"] > 0
    assert counts["handshakes"] == s["connections"]["opened"] == 3
    assert counts["clean"] == 3 and counts["truncated"] == 0


@pytest.mark.parametrize("http", ["1.1", "2"])
@pytest.mark.parametrize("model", [("--concurrency", "2"), ("--rate", "20")])
def test_a_client_certificate_refused_after_the_handshake_is_a_failed_one(
        certs: Certs, tmp_path: Path, model: tuple[str, str], http: str) -> None:
    """TLS 1.3: the client finishes its side before the server checks its (missing)
    certificate; the refusal comes as an alert on the first read. Those handshakes failed:
    none counts as full, each is a failed connection and its request a `connect` error (as a
    TLS 1.2 server's refusal during the handshake counts, test_engine_verifies_without_the_
    preflight), not a `reset`, and never retried. With --http 2 the server (no ALPN) gets
    HTTP/1.1 on each connection; a closed-model user goes on after each failure."""
    server = _PyTLSServer(certs, require_cert=True)
    try:
        s = ok_run(tmp_path, "--target", f"https://127.0.0.1:{server.port}/",
                   "--ca-cert", certs.ca_pem, "--no-preflight", *model, "--duration", "1s",
                   "--connections", "2", "--timeout", "1s", "--http", http)
    finally:
        counts = server.stop()
    hs = s["connections"]["tls_handshakes"]
    assert counts["answered"] == 0 and counts["refused"] == counts["accepted"] > 0
    assert hs["full"] == hs["resumed"] == 0
    # (a warm-up connection refused before any arrival needed it is not counted, as a warm-up
    # connect that fails is not: the server accepted it, loadforge did not open it for a
    # request; HTTP/2 counts every connect as it starts, so there it is a failed one)
    assert 0 < hs["failed"] == s["connections"]["opened"] <= counts["accepted"]
    assert s["requests"] == 0 and s["errors"] + s["unsent"] == s["scheduled"] > 0
    assert s["errors"] == s["errors_by_kind"]["connect"] > 0
    assert s["connections"]["failed"] == s["connections"]["opened"]
    if http == "1.1":
        assert s["errors"] == s["connections"]["failed"]
    if model[0] == "--concurrency":
        assert s["errors"] > 4       # users go on after each failure (none lost in a backoff)


@pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("stdbuf") is None,
                    reason="the openssl CLI (s_server) is not installed")
def test_a_server_that_renegotiates_mid_request_is_answered(certs: Certs, tmp_path: Path) -> None:
    """What OpenSSL queues while reading (here the ClientHello answering a TLS 1.2
    HelloRequest) goes out at once. `openssl s_server -www` answers `GET /reneg` only after a
    renegotiation: it sends the HelloRequest once it has read the request line and waits for
    the ClientHello. An HTTP/1.1 client writes again only after the answer, so one that kept
    the ClientHello in its write BIO stalled every request until the timeout (0 requests, 1
    timeout a second before issue 19's flush in tls_read). s_server serves one connection at
    a time and closes each after its status page. (A TLS 1.3 KeyUpdate, even one requesting an
    update, does not make the server wait, so it cannot stall a request this way.)"""
    port = free_port()
    server = subprocess.Popen(
        ["stdbuf", "-oL", "openssl", "s_server", "-tls1_2", "-www", "-accept", f"127.0.0.1:{port}",
         "-cert", certs.server, "-key", certs.server],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        wait_listening(port)
        s = ok_run(tmp_path, "--target", f"https://127.0.0.1:{port}/reneg", "--ca-cert",
                   certs.ca_pem, "--no-preflight", "--concurrency", "1", "--duration", "1s",
                   "--timeout", "5s")
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=10)
    renegotiated = out.count("SSL_renegotiate -> 1")
    assert s["errors"] == s["errors_by_kind"]["timeout"] == 0
    assert s["tls"]["protocol"] == "TLSv1.2"
    assert 0 < s["requests"] <= renegotiated <= s["requests"] + 1    # + one cut by the end
    assert s["connections"]["opened"] >= s["requests"]


@pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("stdbuf") is None,
                    reason="the openssl CLI (s_server) is not installed")
def test_a_server_that_waits_for_the_key_update_it_requested_is_answered(
        certs: Certs, tmp_path: Path) -> None:
    """TLS 1.3: `openssl s_server` driven through its console sends, on each request, a
    KeyUpdate requesting ours (its `K` command) and answers only once ours has come back.
    OpenSSL keeps that answer for the client's next write, which an HTTP/1.1 client makes
    only after the response: tls_read sends it as soon as it reads the request. Counts from
    the server's side (its -msg trace): every response followed a KeyUpdate of ours."""
    port = free_port()
    server = subprocess.Popen(
        ["stdbuf", "-oL", "openssl", "s_server", "-tls1_3", "-msg", "-accept",
         f"127.0.0.1:{port}", "-cert", certs.server, "-key", certs.server],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        bufsize=1)
    assert server.stdin is not None and server.stdout is not None
    counts = {"requested": 0, "updated": 0, "answered": 0}

    def console() -> None:
        assert server.stdin is not None and server.stdout is not None
        waiting = False
        try:
            for line in server.stdout:
                if line.startswith("GET /"):
                    server.stdin.write("K\n")
                    server.stdin.flush()
                    counts["requested"] += 1
                    waiting = True
                elif line.startswith("<<<") and "KeyUpdate" in line:
                    counts["updated"] += 1
                    if waiting:
                        server.stdin.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        server.stdin.flush()
                        counts["answered"] += 1
                        waiting = False
        except (BrokenPipeError, ValueError):
            return

    reader = threading.Thread(target=console, daemon=True)
    reader.start()
    try:
        wait_listening(port)
        s = ok_run(tmp_path, "--target", f"https://127.0.0.1:{port}/", "--ca-cert",
                   certs.ca_pem, "--no-preflight", "--concurrency", "1", "--duration", "1s",
                   "--timeout", "5s")
    finally:
        server.terminate()
        reader.join(10)
        server.wait(10)
    assert s["errors"] == s["errors_by_kind"]["timeout"] == 0
    assert s["tls"]["protocol"] == "TLSv1.3"
    assert 0 < s["requests"] <= counts["answered"] <= counts["updated"] <= counts["requested"]


def test_an_encrypted_client_key_takes_its_passphrase_from_the_environment(
        certs: Certs, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(certs.client_key).read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass-2121-phrase")))
    s = certs.nginx(extra=f"{PROTOCOLS} ssl_client_certificate {certs.dir / 'client-ca.pem'}; "
                          "ssl_verify_client on;")
    args = ["run", "--target", s.url + "/", "--ca-cert", certs.ca_pem, "--client-cert",
            certs.client_cert, "--client-key", str(encrypted), "--concurrency", "2",
            "--duration", "1s", "--workers", "1", "--quiet", "--out", str(tmp_path / "results")]

    def cli(*more: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        # A session of its own: no terminal OpenSSL could prompt on; the timeout is the check
        # that nothing waits for a passphrase.
        return subprocess.run([sys.executable, "-m", "loadforge.cli", *args, *more], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                              start_new_session=True, env={**os.environ, **(env or {})})
    try:
        without = cli()
        wrong = cli("--client-key-password-env", "LF_KEY_PW", env={"LF_KEY_PW": "nope-nope"})
        before = s.served()
        summary = tmp_path / "s.json"
        ok = cli("--client-key-password-env", "LF_KEY_PW", "--summary-json", str(summary),
                 env={"LF_KEY_PW": "pass-2121-phrase"})
        served = s.served() - before
    finally:
        s.stop()
    for out, words in ((without, "is encrypted: set tls.key_password_env"),
                       (wrong, "does not decrypt with the passphrase in $LF_KEY_PW")):
        assert out.returncode == 2, out.stderr
        (line,) = out.stderr.strip().splitlines()
        assert words in line and "Traceback" not in out.stderr
    assert ok.returncode == 0, ok.stderr
    result = json.loads(summary.read_text())
    assert result["errors"] == 0 and served == result["requests"] + 1 > 1
    metadata = pq.read_metadata(result["result"]).metadata
    assert b"pass-2121" not in b"".join(metadata.values()) + summary.read_bytes()


def test_key_password_env_names_a_set_variable(certs: Certs, monkeypatch) -> None:
    from loadforge.config.tls import check_tls
    from loadforge.errors import ProfileError

    table = {"cert": certs.client_cert, "key": certs.client_key}
    monkeypatch.delenv("LF_T21_UNSET", raising=False)
    with pytest.raises(ProfileError, match="LF_T21_UNSET, which is not set"):
        check_tls({**table, "key_password_env": "LF_T21_UNSET"}, "profile p.toml")
    # The passphrase itself written in the profile is refused, and not repeated.
    with pytest.raises(ProfileError, match="must be the name of an environment variable") as e:
        check_tls({**table, "key_password_env": "hunter2 secret"}, "profile p.toml")
    assert "hunter2" not in str(e.value)
    monkeypatch.setenv("LF_T21_SET", "pw")
    tls = check_tls({**table, "key_password_env": "LF_T21_SET"}, "profile p.toml")
    assert tls.key_password() == "pw" and "pw" not in json.dumps(tls.describe())


class _SlowTLSServer(OneConnectionServer):
    """Serves one connection: waits `gap` seconds before the TLS handshake and as long again
    after the request before its answer."""

    def __init__(self, pem: str, gap: float) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pem)
        self.gap = gap
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        if self.stopped.wait(self.gap):
            return
        with self.ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(65536)
            if self.stopped.wait(self.gap):
                return
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            tls.recv(1)


@pytest.mark.parametrize("gap", [0.1, 0.7])
def test_the_preflight_has_one_deadline_for_the_handshake_and_the_answer(
        certs: Certs, gap: float) -> None:
    # A handshake and an answer each within --timeout 1s, but not both: the preflight's one
    # deadline covers them together (the run's requests each have their own).
    from loadforge.config.plan import Request
    from loadforge.config.tls import TLS
    from loadforge.errors import TargetUnreachable
    from loadforge.run import preflight
    from loadforge.run.target import parse_target

    server = _SlowTLSServer(certs.server, gap)
    try:
        target = parse_target(f"https://127.0.0.1:{server.port}/")
        tls = TLS(ca=certs.ca_pem)
        if gap < 0.5:
            preflight.preflight(target, Request(name="home"), 1.0, tls=tls)
        else:
            with pytest.raises(TargetUnreachable, match="within 1 s"):
                preflight.preflight(target, Request(name="home"), 1.0, tls=tls)
    finally:
        server.stop()
