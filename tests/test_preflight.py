"""The preflight goes through the engine (issue 20): what it accepts is what the run accepts.

The old preflight was a second HTTP client (http.client) with rules of its own: it refused
answers the engine reads (10,000 headers in 50 KB, a 100 KB chunked trailer) and called the
target unreachable. Each test here shows http.client's verdict next to the preflight's, against
a scripted server on 127.0.0.1, and runs the load where the preflight passes, reconciling
with the server's count (the preflight is one request of it, outside the results)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest
from servers import CannedServer, Nginx, free_port, loadforge

from loadforge.config.plan import Request
from loadforge.errors import TargetUnreachable
from loadforge.run import preflight
from loadforge.run.target import parse_target

MANY_HEADERS = b"HTTP/1.1 200 OK\r\n" + b"a:1\r\n" * 10_000 + b"Content-Length: 2\r\n\r\nok"
BIG_TRAILER = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
               b"X-Trailer: " + b"a" * 100_000 + b"\r\n\r\n")
BAD_CHUNK = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n"


def http_client_verdict(port: int) -> str:
    """What the old preflight's client made of the answer: "ok" or the exception's name."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return "ok"
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        conn.close()


def run(tmp_path: Path, url: str) -> tuple[Any, dict[str, Any]]:
    summary = tmp_path / "summary.json"
    out = loadforge("run", "--target", url + "/", "--rate", "20", "--duration", "1s",
                    "--workers", "1", "--quiet", "--out", str(tmp_path / "results"),
                    "--summary-json", str(summary), timeout=60)
    return out, (json.loads(summary.read_text()) if summary.exists() else {})


@pytest.mark.parametrize("response", [MANY_HEADERS, BIG_TRAILER], ids=["10k-headers", "trailer"])
def test_what_the_engine_reads_passes_the_preflight_and_the_run_completes(
        tmp_path: Path, response: bytes) -> None:
    server = CannedServer(response)
    try:
        old = http_client_verdict(server.port)
        before = server.requests
        out, s = run(tmp_path, server.url)
        served = server.requests - before
    finally:
        server.stop()
    assert old != "ok"                      # http.client refused it: the old exit 3
    assert out.returncode == 0, out.stderr
    assert s["requests"] == 20 and s["errors"] == 0 and s["status"]["2xx"] == 20
    assert s["preflight"] == {"requests": 1}
    assert served == s["requests"] + 1      # the preflight reached it, outside the counts


def test_what_the_engine_refuses_fails_the_preflight_with_a_protocol_line(
        tmp_path: Path) -> None:
    server = CannedServer(BAD_CHUNK)
    try:
        out, s = run(tmp_path, server.url)
        served = server.requests
    finally:
        server.stop()
    assert out.returncode == 3, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "`protocol`" in lines[0] and f"127.0.0.1:{server.port}" in lines[0], lines[0]
    assert served == 1 and not (tmp_path / "results").exists()


def test_the_preflight_reports_the_exact_status_and_judges_it_by_one_rule() -> None:
    # 404 stops the run; another failing status warns with its code; a passing one is quiet.
    for code, reason in ((404, b"Not Found"), (401, b"Unauthorized"), (204, b"No Content")):
        server = CannedServer(b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n" % (code, reason))
        try:
            target = parse_target(server.url + "/")
            if code == 404:
                with pytest.raises(TargetUnreachable, match="returned 404 Not Found"):
                    preflight.preflight(target, Request(name="home"), 2.0)
                continue
            negotiated = preflight.preflight(target, Request(name="home"), 2.0)
        finally:
            server.stop()
        warning = negotiated.get("preflight_warning", "")
        assert (f"returned {code}" in warning) == (code == 401), warning


def test_a_refused_connect_is_named_from_the_engines_errno() -> None:
    port = free_port()                              # nothing listens there
    with pytest.raises(TargetUnreachable) as caught:
        preflight.preflight(parse_target(f"http://127.0.0.1:{port}/"), Request(name="x"), 2.0)
    assert f"nothing listens on 127.0.0.1:{port} (connection refused)" in str(caught.value)


@pytest.mark.parametrize("http", ["1.1", "2"])
def test_the_status_is_exact_over_both_protocols(http: str) -> None:
    # The engine records classes; engine_probe gives the preflight the code itself (HTTP/2:
    # the stream's :status), so a 404 stops the run and a 503 warns with its number.
    server = Nginx(http2=http == "2")
    try:
        target = parse_target(server.url + "/")
        with pytest.raises(TargetUnreachable, match="returned 404 Not Found"):
            preflight.preflight(target, Request(name="m", path="/missing"), 2.0, http=http)
        negotiated = preflight.preflight(target, Request(name="f", path="/fail"), 2.0, http=http)
        assert preflight.preflight(target, Request(name="ok"), 2.0, http=http) == {}
    finally:
        server.stop()
    assert "returned 503" in negotiated["preflight_warning"]


def test_an_http1_answer_to_the_http2_preface_is_a_protocol_error_not_a_wait() -> None:
    # The server answers the preface ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": two requests to it)
    # with two HTTP/1.1 responses, often in one read. nghttp2 took "HTTP/1.1 200" for the
    # header of a frame of megabytes and waited: the preflight (and the run's streams) ended
    # as `timeout` after the whole timeout. The engine now tells the first bytes apart.
    server = CannedServer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    try:
        target = parse_target(server.url + "/")
        outcomes = [preflight.exchange(target, Request(name="x"), 5.0, None, "2").outcome
                    for _ in range(5)]
    finally:
        server.stop()
    assert outcomes == ["protocol"] * 5
