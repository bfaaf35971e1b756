"""gRPC unary calls (config/grpc.py, engine/http2.pxi's grpc-status), end to end through the
command line: against a real grpcio server (tests/grpc_server.py, its stubs generated from
tests/data/greeter.proto in the test's temp dir), whose own counts by status must equal the
run's in both models; against tests/h2server.py for the answers a gRPC server never sends
(no trailers, a body that is not length-prefixed messages, RST_STREAM); and the profile errors
(exit 2, one line). No timing is asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from h2server import H2Server
from servers import free_port, loadforge, wait_listening

from loadforge import _core

grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_tools")

pytestmark = pytest.mark.skipif(bool(_core.http2_library()),
                                reason="libnghttp2.so.14 is not installed")

HERE = Path(__file__).parent
PROTO = HERE / "data" / "greeter.proto"


class GrpcServer:
    """tests/grpc_server.py in its own process on a free port."""

    def __init__(self, stubs: Path, backend: str = "", tls: tuple[Path, Path, Path] | None = None,
                 ) -> None:
        """tls: (CA, certificate chain, key) PEM files: the server speaks TLS."""
        self.port = free_port()
        self.stubs = stubs
        self.tls = tls
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "grpc_server.py"), str(stubs), str(self.port), backend,
             *(str(p) for p in (tls[1:] if tls else ()))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(self.port)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def calls(self) -> dict[str, int]:
        """The server's calls by status code name, through its Stats method."""
        sys.path.insert(0, str(self.stubs))
        try:
            import greeter_pb2
            import greeter_pb2_grpc
        finally:
            sys.path.remove(str(self.stubs))
        address = f"127.0.0.1:{self.port}"
        channel = grpc.insecure_channel(address) if self.tls is None else grpc.secure_channel(
            address, grpc.ssl_channel_credentials(self.tls[0].read_bytes()))
        with channel:
            reply = greeter_pb2_grpc.GreeterStub(channel).Stats(greeter_pb2.StatsRequest(),
                                                                 timeout=10)
        return dict(reply.calls)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}",
                    f"--python_out={out}", f"--grpc_python_out={out}", str(PROTO)], check=True)
    return out


@pytest.fixture
def server(stubs: Path) -> Iterator[GrpcServer]:
    s = GrpcServer(stubs)
    yield s
    s.stop()


CALLS = '''
[[requests]]
name = "hello"
grpc = "loadtest.Greeter/SayHello"
message = { name = "ann", times = 2 }
weight = 3

[[requests]]
name = "missing"
grpc = "loadtest.Greeter/SayHello"
message = { name = "missing-1" }
metadata = { authorization = "Bearer x" }
'''


def profile(tmp_path: Path, target: str, stage: str, grpc_table: str = "",
            requests: str = CALLS, load: str = "", connections: int = 2) -> str:
    path = tmp_path / "grpc.toml"
    path.write_text(f'name = "grpc"\ntarget = "{target}"\n[load]\nconnections = {connections}\n'
                    f'{load}\n'
                    f'[grpc]\nproto = "{PROTO}"\n{grpc_table}\n'
                    f'[[stages]]\nname = "s"\n{stage}\n{requests}')
    return str(path)


def run_json(tmp_path: Path, path: str, *args: str, expect: int = 0) -> dict[str, Any]:
    summary = tmp_path / "summary.json"
    out = loadforge("run", path, *args, "--quiet", "--workers", "1", "--out",
                    str(tmp_path / "results"), "--summary-json", str(summary), timeout=120)
    assert out.returncode == expect, out.stderr
    return json.loads(summary.read_text())


def test_open_model_counts_by_status_equal_the_servers(server: GrpcServer,
                                                       tmp_path: Path) -> None:
    s = run_json(tmp_path, profile(tmp_path, server.url, 'rate = 200\nduration = "1500ms"'))
    assert s["scheduled"] == 300 and s["unsent"] == 0
    calls = server.calls()
    assert s["grpc_status"] == {"OK": calls["OK"], "NOT_FOUND": calls["NOT_FOUND"]}
    assert calls["OK"] + calls["NOT_FOUND"] == 300
    # NOT_FOUND is a failure by default, and the only one
    assert s["requests"] == 300 and s["errors"] == calls["NOT_FOUND"]
    assert s["requests_by_name"]["missing"]["errors"] == calls["NOT_FOUND"]
    assert s["requests_by_name"]["hello"]["errors"] == 0
    assert not any(s["errors_by_kind"].values())


def test_closed_model_counts_by_status_equal_the_servers(server: GrpcServer,
                                                         tmp_path: Path) -> None:
    s = run_json(tmp_path, profile(tmp_path, server.url, 'concurrency = 8\nduration = "1s"',
                                   grpc_table='expect_status = ["OK", "NOT_FOUND"]'))
    calls = server.calls()
    assert s["requests"] > 0
    assert s["grpc_status"] == {"OK": calls["OK"], "NOT_FOUND": calls["NOT_FOUND"]}
    # expect_status: NOT_FOUND counts as a success
    assert s["errors"] == 0


def test_parquet_outcome_is_grpc_code(server: GrpcServer, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    run_json(tmp_path, profile(tmp_path, server.url, 'rate = 50\nduration = "1s"'))
    table = pq.read_table(next((tmp_path / "results").glob("*.parquet"))).to_pylist()
    outcomes = {(r["name"], r["outcome"]): r["count"] for r in table
                if r["scope"] == "run" and r["stage"] == "*"}
    calls = server.calls()
    assert outcomes[("hello", "grpc:OK")] == calls["OK"]
    assert outcomes[("missing", "grpc:NOT_FOUND")] == calls["NOT_FOUND"]
    # the HTML report lists the codes that happened beside the status classes
    html = tmp_path / "report.html"
    out = loadforge("report", str(tmp_path / "results"), "--html", str(html))
    assert out.returncode == 0, out.stderr
    assert f'"grpc:NOT_FOUND":{calls["NOT_FOUND"]}' in html.read_text()
    assert '"grpc:CANCELLED"' not in html.read_text()


def test_backend_from_a_trailer(stubs: Path, tmp_path: Path) -> None:
    """--backend-header reads a trailer too: grpc_server.py names itself in x-backend."""
    s = GrpcServer(stubs, backend="b7")
    try:
        out = run_json(tmp_path, profile(tmp_path, s.url, 'rate = 100\nduration = "1s"'),
                       "--backend-header", "x-backend")
    finally:
        s.stop()
    assert set(out["backends"]) == {"b7"} and out["backends"]["b7"]["share"] == 1.0
    assert out["unattributed"] == 0


def test_server_streaming_and_messages_over_several_frames(server: GrpcServer,
                                                          tmp_path: Path) -> None:
    """A server-streaming call ends with its trailers after many messages (NOT_FOUND after
    three too); a 36 kB reply spans DATA frames: the message framing is followed across them."""
    requests = ('[[requests]]\nname = "stream"\ngrpc = "loadtest.Greeter/Repeat"\n'
                'message = { name = "ann", times = 50 }\n'
                '[[requests]]\nname = "stream-missing"\ngrpc = "loadtest.Greeter/Repeat"\n'
                'message = { name = "missing", times = 3 }\n'
                '[[requests]]\nname = "big"\ngrpc = "loadtest.Greeter/SayHello"\n'
                'message = { name = "ann", times = 4000 }\n')
    s = run_json(tmp_path, profile(tmp_path, server.url, 'rate = 90\nduration = "1s"',
                                   requests=requests))
    calls = server.calls()
    assert s["grpc_status"] == {"OK": calls["OK"], "NOT_FOUND": calls["NOT_FOUND"]}
    assert calls["NOT_FOUND"] == s["requests_by_name"]["stream-missing"]["requests"] > 0
    assert s["requests"] == 90 and not any(s["errors_by_kind"].values())


@pytest.mark.parametrize("stage", ['rate = 90\nduration = "1s"', 'concurrency = 4\nduration = "1s"'])
def test_feeder_values_in_the_message(server: GrpcServer, tmp_path: Path, stage: str) -> None:
    """A feeder column in a message string: the message is encoded once per row (its length
    prefixes recomputed), and each row reaches the server as sent, in the feeder's order."""
    users = tmp_path / "users.csv"
    users.write_text("name\nann#1\nbobby#22\nmissing#3\n")
    requests = (f'[[feeders]]\nname = "users"\nfile = "{users}"\n'
                '[[requests]]\nname = "hello"\ngrpc = "loadtest.Greeter/SayHello"\n'
                'message = { name = "{users.name}", times = 1 }\n')
    s = run_json(tmp_path, profile(tmp_path, server.url, stage, requests=requests))
    calls = server.calls()
    names = {k: v for k, v in calls.items() if k.startswith("name:")}
    assert set(names) == {"name:ann#1", "name:bobby#22", "name:missing#3"}
    # sequential rows: the counts differ by at most one, in the file's order
    counts = [names["name:ann#1"], names["name:bobby#22"], names["name:missing#3"]]
    assert counts[0] >= counts[1] >= counts[2] >= counts[0] - 1
    assert s["grpc_status"] == {"OK": counts[0] + counts[1], "NOT_FOUND": counts[2]}
    assert s["requests"] == sum(counts) and not any(s["errors_by_kind"].values())
    if stage.startswith("rate"):
        assert counts == [30, 30, 30]


def test_feeder_values_in_metadata(server: GrpcServer, tmp_path: Path) -> None:
    """Feeder slots in metadata are templated per call as headers are; the message is intact."""
    users = tmp_path / "users.csv"
    users.write_text("name\nann\nbob\ncyd\n")
    requests = (f'[[feeders]]\nname = "users"\nfile = "{users}"\n'
                '[[requests]]\nname = "hello"\ngrpc = "loadtest.Greeter/SayHello"\n'
                'message = { name = "ann" }\nmetadata = { "x-user" = "{users.name}" }\n')
    s = run_json(tmp_path, profile(tmp_path, server.url, 'rate = 90\nduration = "1s"',
                                   requests=requests))
    assert s["grpc_status"] == {"OK": 90}
    calls = server.calls()
    assert {k: v for k, v in calls.items() if k.startswith("user:")} == \
        {"user:ann": 30, "user:bob": 30, "user:cyd": 30}


GRPC_NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream backends {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port} http2;
    location / {{ grpc_pass grpc://backends; }}
  }}
}}
"""


HAPROXY_CONF = """
global
  maxconn 1000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend grpc
  bind 127.0.0.1:{port} proto h2
  default_backend backends
backend backends
  balance roundrobin
{servers}
"""


@pytest.mark.parametrize("proxy", ["nginx", "haproxy", "haproxy-tcp"])
def test_proxy_balances_per_call(proxy: str, stubs: Path, tmp_path: Path) -> None:
    """nginx's grpc_pass and HAProxy (HTTP mode, h2 on both sides) round-robin the calls of
    one HTTP/2 connection over three grpcio backends: each backend's share (from its x-backend
    trailer) is a third within 3 points, and equals what that backend counted. HAProxy in TCP
    mode (an L4 balancer) pins the connection: one backend takes every call."""
    proxy, _, mode = proxy.partition("-")
    if not shutil.which(proxy):
        pytest.skip(f"{proxy} is not installed (apt-get install -y {proxy})")
    backends = {name: GrpcServer(stubs, backend=name) for name in ("b1", "b2", "b3")}
    conf_dir = tempfile.mkdtemp(prefix="lf-grpc-proxy-")
    port = free_port()
    conf = os.path.join(conf_dir, f"{proxy}.conf")
    if proxy == "nginx":
        Path(conf).write_text(GRPC_NGINX_CONF.format(
            dir=conf_dir, port=port,
            servers="\n".join(f"    server 127.0.0.1:{b.port};" for b in backends.values())))
        cmd = ["nginx", "-c", conf, "-e", os.path.join(conf_dir, "error.log")]
    else:
        text = HAPROXY_CONF.format(port=port, servers="\n".join(
            f"  server {name} 127.0.0.1:{b.port} proto h2" for name, b in backends.items()))
        if mode == "tcp":
            # L4: bytes passed through, so no HTTP/2 on either side of HAProxy
            text = text.replace("mode http", "mode tcp").replace(" proto h2", "")
        Path(conf).write_text(text)
        cmd = ["haproxy", "-db", "-f", conf]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        s = run_json(tmp_path, profile(tmp_path, f"http://127.0.0.1:{port}",
                                       'rate = 300\nduration = "2s"', connections=1),
                     "--backend-header", "x-backend")
        served = {name: b.calls() for name, b in backends.items()}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for b in backends.values():
            b.stop()
        shutil.rmtree(conf_dir, ignore_errors=True)
    assert s["connections"]["opened"] == 1 and s["requests"] == 600
    assert s["unattributed"] == 0
    if mode == "tcp":
        assert len(s["backends"]) == 1 and next(iter(s["backends"].values()))["share"] == 1.0
        return
    assert set(s["backends"]) == {"b1", "b2", "b3"}
    for name, backend in s["backends"].items():
        assert backend["share"] == pytest.approx(1 / 3, abs=0.03)
        assert backend["share"] == pytest.approx(sum(served[name].values()) / 600, abs=1e-9)
    # every call the run counted reached a backend, and the statuses agree
    assert sum(sum(c.values()) for c in served.values()) == 600
    assert s["grpc_status"]["NOT_FOUND"] == sum(c.get("NOT_FOUND", 0) for c in served.values())


def test_tls_alpn_h2(stubs: Path, tmp_path: Path) -> None:
    """An https:// target: h2 by ALPN, the certificate verified against [tls] ca."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    files = (tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    ca.cert_pem.write_to_path(str(files[0]))
    leaf.private_key_pem.write_to_path(str(files[2]))
    files[1].write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    server = GrpcServer(stubs, tls=files)
    try:
        path = profile(tmp_path, server.url, 'rate = 100\nduration = "1s"')
        Path(path).write_text(Path(path).read_text() + f'\n[tls]\nca = "{files[0]}"\n')
        s = run_json(tmp_path, path)
        calls = server.calls()
    finally:
        server.stop()
    assert s["grpc_status"] == {"OK": calls["OK"], "NOT_FOUND": calls["NOT_FOUND"]}
    assert s["requests"] == 100


# -- answers a gRPC server never sends -------------------------------------------------------

@pytest.mark.parametrize("options, outcome", [
    ({}, "protocol"),                                   # 200 without trailers
    ({"grpc_status": "0", "body_size": 7}, "protocol"),  # a body that is not gRPC framing
    ({"grpc_status": "x", "body_size": 0}, "protocol"),  # a grpc-status that is no number
])
def test_malformed_answers_are_protocol_errors(tmp_path: Path, options: dict[str, Any],
                                               outcome: str) -> None:
    with H2Server("normal", **options) as h2s:
        s = run_json(tmp_path, profile(tmp_path, h2s.url, 'rate = 100\nduration = "500ms"'),
                     expect=0)
        answered = h2s.counts()["answered"]
    assert s["errors_by_kind"][outcome] == 50 == answered - 1    # less the preflight
    assert "grpc_status" not in s


def test_trailers_status_is_counted(tmp_path: Path) -> None:
    with H2Server("normal", grpc_status="5", body_size=0) as h2s:
        s = run_json(tmp_path, profile(tmp_path, h2s.url, 'rate = 100\nduration = "500ms"'))
    assert s["grpc_status"] == {"OK": 0, "NOT_FOUND": 50}


def test_rst_stream_is_a_stream_reset(tmp_path: Path) -> None:
    from h2.errors import ErrorCodes

    with H2Server("reset", grpc_status="0", body_size=0,
                  reset_codes=(None, ErrorCodes.INTERNAL_ERROR)) as h2s:
        s = run_json(tmp_path, profile(tmp_path, h2s.url, 'rate = 100\nduration = "500ms"'))
        resets = h2s.counts()["reset"]
    assert s["errors_by_kind"]["stream_reset"] == sum(resets.values())
    assert s["grpc_status"]["OK"] + s["errors_by_kind"]["stream_reset"] == 50


# -- profile errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("grpc_table, requests, message", [
    ("", CALLS.replace("SayHello", "SayBye"), "has no method SayBye (it has: Repeat, SayHello, Stats)"),
    ("", CALLS.replace("loadtest.Greeter", "loadtest.Nope"), "the proto has no service"),
    ("", CALLS.replace("times = 2", "age = 2"), "does not fit loadtest.HelloRequest"),
    ("", CALLS.replace("times = 2", 'times = "many"'), "does not fit loadtest.HelloRequest"),
    ("", CALLS.replace("SayHello", "Say/Hello"), 'must be "package.Service/Method"'),
    ('expect_status = ["FINE"]', CALLS, "expect_status[0] must be a gRPC code name"),
    ("", CALLS.replace('authorization = "Bearer x"', 'te = "x"'), "metadata.te"),
    ("reflection = true", CALLS, "reflection is not supported yet"),
    ("", CALLS.replace('name = "ann"', 'name = "{users.name}-{users.id}"'),
     "a gRPC message may take one feeder column"),
    ("", CALLS.replace('times = 2', 'times = "{users.name}"'),
     "does not fit loadtest.HelloRequest"),
])
def test_bad_profiles_exit_2_with_one_line(tmp_path: Path, grpc_table: str, requests: str,
                                           message: str) -> None:
    users = tmp_path / "users.csv"
    users.write_text("name,id\nann,1\n")
    path = profile(tmp_path, "http://127.0.0.1:1", 'rate = 1\nduration = "1s"', grpc_table,
                   f'[[feeders]]\nname = "users"\nfile = "{users}"\n' + requests)
    out = loadforge("run", path, "--quiet")
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_proto_that_does_not_compile_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.proto"
    bad.write_text('syntax = "proto3";\nmessage M { strin g name = 1; }\n')
    path = profile(tmp_path, "http://127.0.0.1:1", 'rate = 1\nduration = "1s"')
    Path(path).write_text(Path(path).read_text().replace(str(PROTO), str(bad)))
    out = loadforge("run", path, "--quiet")
    assert out.returncode == 2, out.stderr
    assert "does not compile: " in out.stderr and "bad.proto:2:" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_grpc_needs_http2(tmp_path: Path) -> None:
    path = profile(tmp_path, "http://127.0.0.1:1", 'rate = 1\nduration = "1s"',
                   load='http = "1.1"')
    out = loadforge("run", path, "--quiet")
    assert out.returncode == 2 and "needs HTTP/2" in out.stderr, out.stderr


def test_descriptor_set_instead_of_proto(server: GrpcServer, tmp_path: Path) -> None:
    pb = tmp_path / "greeter.pb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}",
                    f"--descriptor_set_out={pb}", "--include_imports", str(PROTO)], check=True)
    path = profile(tmp_path, server.url, 'rate = 50\nduration = "1s"')
    Path(path).write_text(Path(path).read_text().replace(f'proto = "{PROTO}"',
                                                         f'descriptor_set = "{pb}"'))
    s = run_json(tmp_path, path)
    assert sum(s["grpc_status"].values()) == 50 == sum(server.calls().values())
