"""HTTP/2 in the engine (engine/http2.pxi), end to end through the command line: against nginx
(h2c by prior knowledge), against the `h2`-based test server of tests/h2server.py doing what
nginx never does (CONTINUATION, dynamic-table updates, tiny windows, PING, RST_STREAM, GOAWAY,
SETTINGS lowered mid-run), and against the sandbox's balancer. Every count is reconciled with
what the server saw; no timing is asserted."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from h2.errors import ErrorCodes
from h2server import H2Server
from servers import Nginx, loadforge

from loadforge import _core

pytestmark = pytest.mark.skipif(bool(_core.http2_library()),
                                reason="libnghttp2.so.14 is not installed")

REFUSED, INTERNAL = int(ErrorCodes.REFUSED_STREAM), int(ErrorCodes.INTERNAL_ERROR)


@pytest.fixture(scope="module")
def nginx_h2() -> Iterator[Nginx]:
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    server = Nginx(http2=True)
    yield server
    server.stop()


def run_json(tmp_path: Path, *args: str, expect: int = 0, workers: int = 1) -> dict[str, Any]:
    summary = tmp_path / "summary.json"
    out = loadforge("run", *args, "--quiet", "--workers", str(workers), "--out",
                    str(tmp_path / "results"), "--summary-json", str(summary), timeout=120)
    assert out.returncode == expect, out.stderr
    return json.loads(summary.read_text())


def profile(tmp_path: Path, target: str, stage: str, load: str = "",
            request: str = "") -> str:
    path = tmp_path / "h2.toml"
    path.write_text(f'name = "h2"\ntarget = "{target}"\n[load]\nhttp = "2"\n{load}\n'
                    f'[[stages]]\nname = "s"\n{stage}\n'
                    + (f"[[requests]]\nname = \"r\"\n{request}\n" if request else ""))
    return str(path)


# -- nginx ---------------------------------------------------------------------------------------

def test_closed_model_counts_match_nginx(nginx_h2: Nginx, tmp_path: Path) -> None:
    before = nginx_h2.served()
    s = run_json(tmp_path, "--target", nginx_h2.url + "/", "--http", "2", "--concurrency", "50",
                 "--connections", "2", "--duration", "1s")
    assert s["requests"] > 0 and s["errors"] == 0
    assert s["connections"]["opened"] == 2
    # the preflight is the one request nginx saw that the run did not count
    assert nginx_h2.served() - before == s["requests"] + 1
    assert set(s["errors_by_kind"]) >= {"stream_reset", "goaway", "flow_control"}


def test_open_model_counts_match_nginx(nginx_h2: Nginx, tmp_path: Path) -> None:
    before = nginx_h2.served()
    s = run_json(tmp_path, "--target", nginx_h2.url + "/", "--http", "2", "--rate", "400",
                 "--connections", "2", "--streams", "10", "--duration", "1500ms")
    assert s["scheduled"] == 600
    assert s["requests"] == 600 and s["errors"] == 0 and s["unsent"] == 0
    assert nginx_h2.served() - before == 601


def test_nginx_goaway_after_keepalive_requests(tmp_path: Path) -> None:
    """nginx ends an HTTP/2 connection after keepalive_requests streams with GOAWAY and refuses
    the streams in flight past it: those are sent again on a new connection (a stream refused
    twice is counted as goaway); nginx's log and the counts agree."""
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    nginx = Nginx(http2=True, keepalive_requests=50)
    try:
        s = run_json(tmp_path, "--target", nginx.url + "/", "--http", "2", "--concurrency", "20",
                     "--connections", "2", "--duration", "1s")
        served = nginx.served()
    finally:
        nginx.stop()
    kinds = s["errors_by_kind"]
    assert s["requests"] > 100 and s["errors"] == kinds["goaway"]
    assert s["connections"]["retried"] > 0 and s["connections"]["closed_by_server"] > 2
    assert served == s["requests"] + 1


@pytest.mark.parametrize("load", [("--concurrency", "60"), ("--rate", "600")])
def test_two_workers_split_connections_and_arrivals(nginx_h2: Nginx, load: tuple[str, str],
                                                    tmp_path: Path) -> None:
    before = nginx_h2.served()
    s = run_json(tmp_path, "--target", nginx_h2.url + "/", "--http", "2", *load,
                 "--connections", "4", "--streams", "20", "--duration", "1s", workers=2)
    assert s["workers"] == 2 and s["errors"] == 0 and s["connections"]["opened"] == 4
    if load[0] == "--rate":
        assert s["requests"] == s["scheduled"] == 600
    assert nginx_h2.served() - before == s["requests"] + 1


def test_status_classes_and_bodies_over_nginx(nginx_h2: Nginx, tmp_path: Path) -> None:
    before = nginx_h2.served()
    path = profile(tmp_path, nginx_h2.url, 'duration = "500ms"\nconcurrency = 4',
                   load="connections = 1",
                   request='method = "POST"\npath = "/fail"\nbody = "' + "x" * 3000 + '"')
    s = run_json(tmp_path, path, "--no-preflight", expect=0)
    assert s["status"]["5xx"] == s["requests"] == s["errors"] > 0
    assert nginx_h2.served() - before == s["requests"]


def test_an_http1_preflight_would_fail_where_h2c_answers(nginx_h2: Nginx, tmp_path: Path) -> None:
    out = loadforge("run", "--target", nginx_h2.url + "/", "--concurrency", "1", "--duration",
                    "1s", "--quiet", "--out", str(tmp_path))
    assert out.returncode == 3, out.stderr


# -- the h2 test server --------------------------------------------------------------------------

def _closed(tmp_path: Path, server: H2Server, *extra: str, concurrency: int = 8,
            connections: int = 2, duration: str = "1s", expect: int = 0) -> dict[str, Any]:
    return run_json(tmp_path, "--target", server.url + "/", "--http", "2", "--concurrency",
                    str(concurrency), "--connections", str(connections), "--duration", duration,
                    "--no-preflight", *extra, expect=expect)


@pytest.mark.parametrize("mode", ["normal", "continuation", "hpack", "ping", "delay"])
def test_frames_nginx_never_sends(mode: str, tmp_path: Path) -> None:
    with H2Server(mode) as server:
        s = _closed(tmp_path, server)
        counts = server.counts()
    assert s["errors"] == 0 and s["requests"] > 0
    assert s["requests"] == counts["answered"] == counts["opened"]
    assert counts["protocol_errors"] == 0 and counts["reset"] == {}
    if mode == "continuation":
        assert counts["frames_sent"]["CONTINUATION"] > 0
    if mode == "ping":
        assert counts["pings_sent"] > 0 and counts["ping_acks"] == counts["pings_sent"]


def test_tiny_windows_for_request_bodies(tmp_path: Path) -> None:
    """The server opens 256 bytes of window at a time, 10 ms apart: bodies go out as the
    WINDOW_UPDATEs allow, every byte of them arrives."""
    with H2Server("window", body_size=100_000) as server:
        path = profile(tmp_path, server.url, 'duration = "1s"\nconcurrency = 4',
                       load="connections = 1",
                       request='method = "POST"\npath = "/"\nbody = "' + "b" * 2000 + '"')
        s = run_json(tmp_path, path, "--no-preflight")
        counts = server.counts()
    assert s["errors"] == 0 and s["requests"] > 0
    assert s["requests"] == counts["answered"] == counts["opened"]
    assert counts["request_bytes"] == 2000 * s["requests"]
    assert counts["frames_sent"]["WINDOW_UPDATE"] > 0


def test_a_closed_window_is_a_flow_control_error(tmp_path: Path) -> None:
    """A window that never reopens holds the request body: at the timeout the stream counts
    as flow_control, not as a plain timeout."""
    with H2Server("window", window_delay=60.0) as server:
        path = profile(tmp_path, server.url, 'duration = "300ms"\nconcurrency = 2',
                       load='connections = 1\ntimeout = "500ms"',
                       request='method = "POST"\npath = "/"\nbody = "' + "b" * 2000 + '"')
        s = run_json(tmp_path, path, "--no-preflight")
        counts = server.counts()
    assert s["requests"] == 0 and counts["answered"] == 0
    assert s["errors_by_kind"]["flow_control"] == s["errors"] == counts["opened"] > 0


def test_goaway_sends_unprocessed_streams_again_on_a_new_connection(tmp_path: Path) -> None:
    with H2Server("goaway") as server:
        s = _closed(tmp_path, server, concurrency=8, connections=1)
        counts = server.counts()
    assert counts["goaways_sent"] == 1 and counts["refused_goaway"] > 0
    assert s["errors"] == 0
    assert s["connections"]["retried"] == counts["refused_goaway"]
    assert s["connections"]["opened"] >= 2
    assert s["requests"] == counts["answered"]
    assert counts["opened"] == s["requests"] + counts["refused_goaway"]


def test_goaway_on_every_connection_counts_what_stays_unprocessed(tmp_path: Path) -> None:
    """Every connection refuses streams: an arrival refused twice is counted as goaway."""
    with H2Server("goaway", goaway_connections=1000) as server:
        s = _closed(tmp_path, server, concurrency=8, connections=1, duration="500ms")
        counts = server.counts()
    assert s["errors_by_kind"]["goaway"] > 0
    assert s["requests"] == counts["answered"]
    assert counts["refused_goaway"] == s["connections"]["retried"] + s["errors_by_kind"]["goaway"]


def test_lowered_max_concurrent_streams_is_respected(tmp_path: Path) -> None:
    with H2Server("settings", settings_after=2, lowered_streams=1) as server:
        s = _closed(tmp_path, server, concurrency=8, connections=1)
        counts = server.counts()
    assert counts["settings_sent"] >= 1
    assert counts["over_limit"] == 0
    assert s["errors"] == 0 and s["requests"] == counts["answered"] > 2


def test_rst_stream_is_a_stream_reset(tmp_path: Path) -> None:
    with H2Server("reset") as server:
        s = _closed(tmp_path, server, concurrency=6, connections=1)
        counts = server.counts()
    kinds = s["errors_by_kind"]
    assert kinds["stream_reset"] >= counts["reset"].get(INTERNAL, 0) > 0
    assert kinds["reset"] == kinds["protocol"] == kinds["timeout"] == 0
    assert s["requests"] == counts["answered"]
    # REFUSED_STREAM (not processed) is sent once more: the server saw those arrivals twice
    assert counts["opened"] == s["requests"] + kinds["stream_reset"] + s["connections"]["retried"]
    assert s["connections"]["retried"] <= counts["reset"].get(REFUSED, 0)


def test_open_model_waits_for_a_free_stream(tmp_path: Path) -> None:
    """One connection, one stream, 200 ms per answer: arrivals every 20 ms wait for the stream
    and are late by their wait; none is sent on a second stream."""
    with H2Server("normal", delay=0.2) as server:
        s = run_json(tmp_path, "--target", server.url + "/", "--http", "2", "--rate", "50",
                     "--connections", "1", "--streams", "1", "--duration", "1s",
                     "--timeout", "10s", "--no-preflight")
        counts = server.counts()
    assert counts["connections"] == 1
    assert s["requests"] == counts["answered"] == counts["opened"]
    assert s["requests"] + s["unsent"] == s["scheduled"] == 50
    # the fifth answered arrival waited 4 x 200 ms - 4 x 20 ms for the stream at least
    assert s["latency_us"]["max"] >= 700_000


def test_a_malformed_response_is_a_protocol_error(tmp_path: Path) -> None:
    """A content-length over the body sent: the response is malformed (RFC 9113 8.1.1), the
    client resets the stream itself: protocol, not stream_reset (which is the server's)."""
    with H2Server("normal", length_lie=5) as server:
        s = _closed(tmp_path, server, concurrency=2, connections=1, duration="300ms")
        counts = server.counts()
    assert s["requests"] == 0
    assert s["errors_by_kind"]["protocol"] == s["errors"] == counts["opened"] > 0
    assert s["errors_by_kind"]["stream_reset"] == 0


def test_a_stream_past_its_timeout_is_cancelled(tmp_path: Path) -> None:
    """Answers after 2 s, timeout 300 ms: each stream times out, goes out as RST_STREAM(CANCEL),
    and the connection carries the next ones."""
    with H2Server("normal", delay=2.0) as server:
        s = _closed(tmp_path, server, "--timeout", "300ms", concurrency=2, connections=1,
                    duration="1s")
        counts = server.counts()
    assert s["requests"] == 0 and s["errors_by_kind"]["timeout"] == s["errors"] > 2
    assert counts["connections"] == 1
    assert counts["client_reset"] == counts["opened"] == s["errors"]


def test_think_time_between_a_users_requests(tmp_path: Path) -> None:
    with H2Server("normal") as server:
        path = profile(tmp_path, server.url, 'duration = "1s"\nconcurrency = 4\nthink = "100ms"',
                       load="connections = 1")
        s = run_json(tmp_path, path, "--no-preflight")
        counts = server.counts()
    # 4 users, one request every ~100 ms each: about 40, far from a closed loop's thousands
    assert 8 <= s["requests"] <= 60
    assert s["requests"] == counts["answered"] and s["errors"] == 0


def test_refused_connections_back_off_in_the_closed_model(tmp_path: Path) -> None:
    from servers import free_port

    s = run_json(tmp_path, "--target", f"http://127.0.0.1:{free_port()}/", "--http", "2",
                 "--concurrency", "4", "--duration", "1s", "--no-preflight")
    assert s["requests"] == 0 and s["errors_by_kind"]["connect"] == s["errors"] > 0
    # 1 ms doubling to 512 ms: about ten attempts in a second, not a spin
    assert s["connections"]["failed"] < 30


def test_requests_per_connection_opens_new_connections(nginx_h2: Nginx, tmp_path: Path) -> None:
    before = nginx_h2.served()
    s = run_json(tmp_path, "--target", nginx_h2.url + "/", "--http", "2", "--concurrency", "4",
                 "--connections", "1", "--requests-per-connection", "10", "--duration", "500ms")
    assert s["errors"] == 0 and s["requests"] > 20
    # every connection carried 10 streams, the last one up to 10
    assert s["connections"]["opened"] == -(-s["requests"] // 10)
    assert nginx_h2.served() - before == s["requests"] + 1


# -- HAProxy terminating HTTP/2 ---------------------------------------------------------------------

HAPROXY_H2 = """
defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 10s
frontend fe
  bind 127.0.0.1:{port} proto h2
  default_backend be
backend be
  balance roundrobin
{servers}
"""


@pytest.fixture(scope="module")
def haproxy_h2() -> Iterator[tuple[str, list[Nginx]]]:
    """HAProxy speaking h2c to the client (`bind ... proto h2`), HTTP/1.1 to three nginx."""
    if not shutil.which("haproxy") or not shutil.which("nginx"):
        pytest.skip("haproxy and nginx are needed (apt-get install -y haproxy nginx)")
    import subprocess
    import tempfile

    from servers import free_port, wait_listening

    backends = [Nginx() for _ in range(3)]
    port = free_port()
    conf = Path(tempfile.mkdtemp(prefix="lf-haproxy-h2-")) / "haproxy.cfg"
    conf.write_text(HAPROXY_H2.format(port=port, servers="\n".join(
        f"  server n{i} 127.0.0.1:{b.port}" for i, b in enumerate(backends))))
    proc = subprocess.Popen(["haproxy", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_listening(port)
        yield f"http://127.0.0.1:{port}/", backends
    finally:
        proc.terminate()
        proc.wait(10)
        for b in backends:
            b.stop()


@pytest.mark.parametrize("load", [("--concurrency", "30"), ("--rate", "300")])
def test_haproxy_balances_streams_of_one_connection(haproxy_h2: tuple[str, list[Nginx]],
                                                    load: tuple[str, str],
                                                    tmp_path: Path) -> None:
    url, backends = haproxy_h2
    before = [b.served() for b in backends]
    s = run_json(tmp_path, "--target", url, "--http", "2", *load, "--connections", "1",
                 "--duration", "1s")
    served = [b.served() - n for b, n in zip(backends, before, strict=True)]
    assert s["errors"] == 0 and s["connections"]["opened"] == 1
    assert sum(served) == s["requests"] + 1      # + the preflight
    # HAProxy ends HTTP/2 and balances each stream: one connection reaches all three
    assert min(served) > 0


@pytest.mark.parametrize("body_size", [16, 300_000])
def test_open_model_small_and_large_responses(body_size: int, tmp_path: Path) -> None:
    """Small responses let the loop sleep through them (read at the next wake-up, timed by the
    kernel); 300 kB ones (over a socket buffer at 10 streams) keep it watching: both arrive
    whole and counted."""
    with H2Server("normal", body_size=body_size) as server:
        s = run_json(tmp_path, "--target", server.url + "/", "--http", "2", "--rate", "100",
                     "--connections", "1", "--streams", "10", "--duration", "1s",
                     "--no-preflight")
        counts = server.counts()
    assert s["requests"] == s["scheduled"] == counts["answered"] == 100 and s["errors"] == 0


# -- the sandbox: balancing multiplexed connections ----------------------------------------------

@pytest.mark.parametrize(("balance", "most", "least"), [("connection", 2, 1), ("request", 4, 4)])
def test_backend_shares_show_pinning(balance: str, most: int, least: int,
                                     tmp_path: Path) -> None:
    path = profile(tmp_path, "sandbox", 'duration = "1s"\nconcurrency = 40',
                   load=f"connections = 2\nstreams = 50\n[sandbox]\nbackends = 4\n"
                        f'balance = "{balance}"\n[sandbox.backend]\nservice_time = "1ms"')
    s = run_json(tmp_path, path)
    assert s["errors"] == 0
    shares = s["backends"]
    assert least <= len(shares) <= most
    assert sum(b["requests"] for b in shares.values()) == s["requests"]


# -- input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (("--streams", "10"), "--streams applies to HTTP/2 only"),
    (("--http", "2", "--streams", "0"), "--streams must be between 1"),
    (("--http", "2", "--streams", "2", "--connections", "1", "--concurrency", "3"),
     "must be <= --connections x --streams"),
    (("--http", "2", "--streams", "10000", "--connections", "1000"),
     "must be at most 1,000,000"),
])
def test_bad_flags(args: tuple[str, ...], message: str) -> None:
    base = ("run", "--target", "http://127.0.0.1:9/", "--duration", "1s")
    if "--concurrency" not in args:
        base += ("--concurrency", "1")
    out = loadforge(*base, *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr


@pytest.mark.parametrize(("load", "message"), [
    ('http = "3"', 'load.http must be "1.1" or "2"'),
    ("http = 2", 'load.http must be "1.1" or "2"'),
    ('http = "1.1"\nstreams = 10', "load.streams applies to HTTP/2 only"),
    ('http = "2"\nstreams = 10000\nconnections = 1000', "must be at most 1,000,000"),
])
def test_bad_profile_keys(load: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f'name = "p"\ntarget = "http://127.0.0.1:9"\n[load]\n{load}\n'
                    '[[stages]]\nname = "s"\nduration = "1s"\nrate = 1\n')
    out = loadforge("run", str(path))
    assert out.returncode == 2 and message in out.stderr, out.stderr


# -- servers that never let a stream be answered (issue 19) ------------------------------------

def _both(tmp_path: Path, server: H2Server, model: str, *extra: str) -> dict[str, Any]:
    load = ("--concurrency", "1") if model == "closed" else ("--rate", "20")
    return run_json(tmp_path, "--target", server.url + "/", "--http", "2", *load,
                    "--connections", "1", "--duration", "1s", "--timeout", "2s",
                    "--no-preflight", *extra)


@pytest.mark.parametrize("model", ["closed", "open"])
def test_a_port_that_answers_http1_ends_in_time_with_protocol_errors(model: str,
                                                                     tmp_path: Path) -> None:
    """HTTP/1.1 answers to the preface, the connection kept open: nghttp2 ends the session;
    every stream sent is a protocol error, the connection closes, and (closed model) the next
    one waits for a backoff instead of spinning the worker until the watchdog."""
    with H2Server("http1") as server:
        s = _both(tmp_path, server, model)
        counts = server.counts()
    assert s["requests"] == 0 and s["scheduled"] == s["errors"] > 0
    assert s["errors_by_kind"]["protocol"] == s["errors"]
    assert counts["connections"] == s["connections"]["opened"]
    if model == "closed":
        # 1 ms doubling: about ten connections in a second, not one per round trip
        assert s["connections"]["opened"] < 30
    else:
        assert s["scheduled"] == 20 and s["unsent"] == 0


@pytest.mark.parametrize("keep", [0, 1])
@pytest.mark.parametrize("model", ["closed", "open"])
def test_goaway_last_stream_1_while_the_server_reads_on(keep: int, model: str,
                                                        tmp_path: Path) -> None:
    """GOAWAY(last_stream_id = 1 or 0) on every connection, which then stays open, read and
    never answered again: the connection closes once its kept stream is answered, what was
    above the GOAWAY is sent again once, and everything sent is counted."""
    with H2Server("goaway", goaway_after=1, goaway_keep=keep, goaway_linger=True,
                  goaway_connections=1000) as server:
        s = _both(tmp_path, server, model)
        counts = server.counts()
    assert s["requests"] == counts["answered"] >= keep
    assert s["scheduled"] == s["requests"] + s["errors"] + s["unsent"] > 0
    assert s["errors"] == s["errors_by_kind"]["goaway"]
    assert counts["refused_goaway"] == s["connections"]["retried"] + s["errors_by_kind"]["goaway"]
    assert counts["opened"] == counts["answered"] + counts["refused_goaway"]
    assert counts["connections"] == s["connections"]["opened"]


@pytest.mark.parametrize("model", ["closed", "open"])
def test_a_server_that_allows_no_stream_is_said(model: str, tmp_path: Path) -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS = 0: nothing can be sent; the summary says why."""
    with H2Server("normal", max_concurrent_streams=0) as server:
        s = _both(tmp_path, server, model)
        counts = server.counts()
        out = loadforge("run", "--target", server.url + "/", "--http", "2", "--concurrency",
                        "1", "--duration", "300ms", "--no-preflight", "--out", str(tmp_path / "r2"))
    assert s["connections"]["h2_zero_streams"] >= 1
    assert s["requests"] == counts["answered"] == 0
    assert s["scheduled"] == s["errors"] + s["unsent"]
    assert counts["opened"] <= s["errors"]
    assert "allowed no stream at all" in out.stdout, out.stdout


def test_a_status_past_599_is_a_protocol_error(tmp_path: Path) -> None:
    """As over HTTP/1.1: `:status 600` is no status class, the response is a protocol error."""
    with H2Server("normal", status=600) as server:
        s = _closed(tmp_path, server, concurrency=2, connections=1, duration="300ms")
        counts = server.counts()
    assert s["requests"] == 0 and s["status"]["5xx"] == 0
    assert s["errors_by_kind"]["protocol"] == s["errors"] == counts["answered"] > 0


@pytest.mark.parametrize("model", ["concurrency = 1", "rate = 5"])
def test_a_stream_timeout_on_a_connection_the_server_stopped_reading(model: str,
                                                                     tmp_path: Path) -> None:
    """The server stops reading after a request's headers; its 8 MB body fills the socket, so
    the RST_STREAM of the stream's timeout cannot go out either. The connection is dropped
    once its streams have timed out and the next request goes out on a fresh one."""
    body = tmp_path / "body.bin"
    body.write_bytes(b"x" * 8_000_000)
    with H2Server("normal", stop_reading_after=1, initial_window=2**30) as server:
        path = profile(tmp_path, server.url, f'duration = "2s"\n{model}',
                       load='connections = 1\ntimeout = "300ms"',
                       request=f'method = "POST"\nbody_file = "{body}"')
        s = run_json(tmp_path, path, "--no-preflight")
        counts = server.counts()
    kinds = s["errors_by_kind"]
    # (a stream whose body nghttp2 held back counts as flow_control)
    assert s["requests"] == 0 and s["errors"] == kinds["timeout"] + kinds["flow_control"] >= 2
    assert s["scheduled"] == s["errors"] + s["unsent"]
    assert counts["connections"] == s["connections"]["opened"] >= 2
    assert counts["opened"] <= s["errors"]


@pytest.fixture(scope="module")
def nginx_tls_h1() -> Iterator[Nginx]:
    """nginx over TLS without HTTP/2: ALPN chooses http/1.1 when offered h2."""
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    import tempfile

    import trustme

    pem = Path(tempfile.mkdtemp(prefix="lf-h1-tls-")) / "server.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    server = Nginx(tls=f"ssl_certificate {pem}; ssl_certificate_key {pem};")
    yield server
    server.stop()


def _mixed_profile(tmp_path: Path, target: str, load: tuple[str, str]) -> str:
    """--http 2 offering h2 and http/1.1 by ALPN (verification off: two test CAs)."""
    stage = f'duration = "1s"\n{load[0].lstrip("-")} = {load[1]}'
    return profile(tmp_path, target, stage, load='connections = 2\n[tls]\n'
                   'alpn = ["h2", "http/1.1"]\ninsecure = true')


@pytest.mark.parametrize("load", [("--concurrency", "3"), ("--rate", "50")])
def test_a_tls_connection_that_negotiates_http1_speaks_http1(nginx_tls_h1: Nginx,
                                                             load: tuple[str, str],
                                                             tmp_path: Path) -> None:
    """ALPN is read per connection, as h2load does: where the server chose http/1.1 the
    connection gets no HTTP/2 preface and carries HTTP/1.1 requests instead, one at a time;
    the streams queued on it before the handshake ended go out that way too. Counted under
    http/1.1 in connections.by_protocol; nginx's log agrees with the counts. The preflight,
    offered http/1.1 as well, asks in HTTP/1.1 too instead of refusing the run."""
    before = nginx_tls_h1.served()
    s = run_json(tmp_path, _mixed_profile(tmp_path, nginx_tls_h1.url, load))
    assert s["errors"] == 0 and s["requests"] + 1 == nginx_tls_h1.served() - before > 1
    assert s["tls"]["alpn"] == "http/1.1"
    assert s["scheduled"] == s["requests"] + s["unsent"]
    c = s["connections"]
    assert c["by_protocol"] == {"http/1.1": c["opened"], "h2": 0}
    assert c["retried"] == 0


def test_connections_are_counted_by_protocol(tmp_path: Path) -> None:
    with H2Server("normal", tls=True) as server:
        assert server.ca_file is not None
        s = run_json(tmp_path, "--target", server.url + "/", "--http", "2", "--rate", "20",
                     "--connections", "2", "--duration", "500ms", "--no-preflight",
                     "--ca-cert", server.ca_file)
        counts = server.counts()
    assert s["errors"] == 0 and s["requests"] == counts["answered"] == 10
    assert s["connections"]["by_protocol"] == {"http/1.1": 0, "h2": counts["connections"]}


@pytest.mark.parametrize("model", [("--concurrency", "2"), ("--rate", "6")])
def test_big_responses_over_tls_are_read_whole(model: tuple[str, str], tmp_path: Path) -> None:
    """3 MB answers over TLS: more than 32 reads of a turn, so decrypted bytes wait inside
    OpenSSL, where epoll cannot see them; they are read before the loop sleeps (the open
    model's quiet sleep included), never left until the timeout."""
    with H2Server("normal", tls=True, body_size=3_000_000) as server:
        assert server.ca_file is not None
        s = run_json(tmp_path, "--target", server.url + "/", "--http", "2", *model,
                     "--connections", "1", "--duration", "1s", "--timeout", "5s",
                     "--no-preflight", "--ca-cert", server.ca_file)
        counts = server.counts()
    assert s["errors"] == 0 and s["requests"] == counts["answered"] > 0


HAPROXY_TCP = """
global
  maxconn 200
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend f
  bind 127.0.0.1:{port}
  default_backend b
backend b
  balance roundrobin
{servers}
"""


@pytest.mark.parametrize("load", [("--concurrency", "4"), ("--rate", "40")])
def test_mixed_backends_behind_an_l4_balancer(nginx_tls_h1: Nginx, load: tuple[str, str],
                                              tmp_path: Path) -> None:
    """HAProxy in TCP mode, round robin over a TLS backend that chooses h2 (the h2 test
    server) and one that chooses http/1.1 (nginx without HTTP/2): each connection speaks what
    its own ALPN chose, and each backend's count is what loadforge counted on it."""
    if not shutil.which("haproxy"):
        pytest.skip("haproxy is not installed (apt-get install -y haproxy)")
    import subprocess
    import tempfile

    from servers import free_port, wait_listening

    before = nginx_tls_h1.served()
    with H2Server("normal", tls=True) as h2:
        port = free_port()
        conf = Path(tempfile.mkdtemp(prefix="lf-haproxy-tcp-")) / "haproxy.cfg"
        conf.write_text(HAPROXY_TCP.format(port=port, servers=(
            f"  server h2 127.0.0.1:{h2.port}\n  server h1 127.0.0.1:{nginx_tls_h1.port}")))
        proc = subprocess.Popen(["haproxy", "-f", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            wait_listening(port)
            s = run_json(tmp_path, _mixed_profile(tmp_path, f"https://127.0.0.1:{port}", load),
                         "--no-preflight")
        finally:
            proc.terminate()
            proc.wait(10)
        c2 = h2.counts()
    h1_served = nginx_tls_h1.served() - before
    c = s["connections"]
    assert s["errors"] == 0 and s["requests"] == c2["answered"] + h1_served
    assert c2["answered"] > 0 and h1_served > 0
    assert c["by_protocol"]["h2"] == c2["connections"] > 0
    assert c["by_protocol"]["http/1.1"] == c["opened"] - c2["connections"] > 0


@pytest.mark.parametrize("model", ["concurrency = 2", "rate = 4"])
def test_large_request_bodies_over_tls(model: str, tmp_path: Path) -> None:
    """4 MB POST bodies over HTTP/2 and TLS, with a window that lets them go out at once: the
    ciphertext outgrows the socket buffer, so the transport answers RETRY with ciphertext
    still to send, and what it holds goes out on EPOLLOUT before any new frame. Every byte
    arrives and every stream is answered."""
    body = tmp_path / "body.bin"
    body.write_bytes(b"x" * 4_000_000)
    with H2Server("normal", tls=True, initial_window=2**30) as server:
        assert server.ca_file is not None
        path = profile(tmp_path, server.url + "/", f'duration = "1s"\n{model}',
                       load=f'connections = 1\ntimeout = "10s"\n[tls]\nca = "{server.ca_file}"',
                       request=f'method = "POST"\nbody_file = "{body}"')
        s = run_json(tmp_path, path, "--no-preflight")
        counts = server.counts()
    assert s["errors"] == 0 and s["requests"] > 0
    assert s["requests"] == counts["answered"] == counts["opened"]
    assert counts["request_bytes"] == 4_000_000 * s["requests"]
