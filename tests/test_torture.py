"""loadforge against a server that misbehaves in every ordinary way (tests/torture.py).

For every mode, what loadforge reports reconciles exactly with what the server read and
answered, every failure lands in its documented kind, and the latency of what it timed matches
the delay the server applied. Each run is short (1 s or less, at most a few hundred requests).
The matrix is documented in docs/reference/outcomes.md.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from servers import loadforge

KINDS = ("2xx", "3xx", "4xx", "5xx", "connect", "timeout", "reset", "protocol")

# Server-side delays are met within this (Python's threads on a shared 2-core machine).
TOLERANCE_US = 25_000


class Torture:
    def __init__(self) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        self.proc = subprocess.Popen([sys.executable, os.path.join(here, "torture.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ports = json.loads(self.proc.stdout.readline())
        self.port, self.reset_port, self.never_port = (
            ports["port"], ports["reset_port"], ports["never_port"])

    def stats(self, mode: str) -> dict[str, int]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/_stats")
            counts = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return counts.get(mode, {"accepted": 0, "requests": 0, "answered": 0, "dropped": 0})

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def torture() -> Iterator[Torture]:
    server = Torture()
    yield server
    server.stop()


def run(tmp_path, url: str, *args: str, timeout: str = "300ms") -> dict[str, Any]:
    summary = tmp_path / "summary.json"
    out = loadforge("run", "--target", url, *args, "--workers", "1", "--no-preflight",
                    "--timeout", timeout, "--quiet", "--out", str(tmp_path / "results"),
                    "--summary-json", str(summary), timeout=60)
    assert out.returncode == 0, out.stderr
    s = json.loads(summary.read_text())
    s["counts"] = {**s["status"], **s["errors_by_kind"]}
    return s


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


# mode: (path, what loadforge reports, open-model rate)
MODES = {
    "ok": ("/ok", "2xx", 100),
    "garbage": ("/garbage", "protocol", 100),
    "huge-header": ("/huge-header", "protocol", 100),
    "endless-header": ("/endless-header", "protocol", 100),
    "bad-length": ("/bad-length", "protocol", 100),
    "huge-length": ("/huge-length", "protocol", 100),
    "bad-chunk": ("/bad-chunk", "protocol", 100),
    "huge-chunk": ("/huge-chunk", "protocol", 100),
    "endless-chunk": ("/endless-chunk", "timeout", 50),
    "flood": ("/flood", "timeout", 10),
    "http10": ("/http10", "2xx", 100),
    "to-close": ("/to-close", "2xx", 100),
    "interim-storm": ("/interim-storm", "2xx", 100),
    "204-body": ("/204-body", "protocol", 100),
    "304-body": ("/304-body", "protocol", 100),
    "two-responses": ("/two-responses", "protocol", 100),
    "status-999": ("/status-999", "protocol", 100),
    "space-before-colon": ("/space-before-colon", "protocol", 100),
    "obs-fold": ("/obs-fold", "2xx", 100),
    "cl-list": ("/cl-list", "2xx", 100),
    "chunk-bare-cr": ("/chunk-bare-cr", "protocol", 100),
    "slow": ("/slow?ms=40", "2xx", 100),
    "silent": ("/silent", "timeout", 100),
    "reset": ("/reset", "reset", 100),
    "close-after": ("/close-after?n=5", "2xx", 100),
    "body-0": ("/body?size=0", "2xx", 100),
    "body-64k": ("/body?size=65535", "2xx", 100),
    "body-1m": ("/body?size=1048576", "2xx", 50),
    "body-8m": ("/body?size=8388608", "2xx", 10),
}


@pytest.mark.parametrize("name", list(MODES))
def test_open_model_reconciles_with_the_server(torture, tmp_path, name):
    path, kind, rate = MODES[name]
    mode = path.split("?")[0].strip("/")
    before = torture.stats(mode)
    s = run(tmp_path, f"http://127.0.0.1:{torture.port}{path}", "--rate", str(rate),
            "--duration", "1s", "--connections", "64")
    server = delta(torture.stats(mode), before)
    retried = s["connections"]["retried"]
    # Every arrival was sent, and each sent one has exactly one outcome, of the mode's kind.
    assert s["scheduled"] == rate and s["unsent"] == 0
    assert s["counts"][kind] == rate, s["counts"]
    assert sum(s["counts"][k] for k in KINDS) == rate
    # The server read each request once, plus once more for each retry on a new connection.
    assert server["requests"] == rate + retried, (server, retried)
    if name == "close-after":
        # After 5 answers the server drops a request unanswered; each is sent again.
        assert server["dropped"] == retried > 0 and server["answered"] == rate
    elif kind == "reset":
        assert server["dropped"] == server["requests"] and server["answered"] == 0
    elif kind == "timeout" and name == "silent":
        assert server["answered"] == 0
    else:
        assert retried == 0 and server["answered"] == rate
    if kind == "2xx":
        assert s["errors"] == 0 and s["requests"] == rate
    # Who ended the connections during the run.
    by_server, by_us = s["connections"]["closed_by_server"], s["connections"]["closed_by_us"]
    if kind == "2xx":
        ended = rate if name in ("http10", "to-close") else retried
        assert (by_server, by_us) == (ended, 0), s["connections"]
    elif kind == "reset":
        assert (by_server, by_us) == (rate + retried, 0), s["connections"]
    else:
        assert by_server + by_us == rate, s["connections"]
    if name == "slow":
        # 40 ms dribbled byte by byte: timed to the last byte.
        assert 40_000 <= s["service_time_us"]["p50"] <= 40_000 + TOLERANCE_US, s
    if kind == "timeout":
        (row,) = _run_rows(s, "timeout")
        assert 300_000 <= row["p50_us"] <= 300_000 + TOLERANCE_US, row


def _run_rows(s: dict[str, Any], outcome: str) -> list[dict[str, Any]]:
    from loadforge.results.store import read_result

    return read_result(s["result"]).rows("run", name=None, outcome=outcome)


@pytest.mark.parametrize("rate", [20, 400])
def test_latency_matches_the_server_delay_at_low_and_high_rates(torture, tmp_path, rate):
    s = run(tmp_path, f"http://127.0.0.1:{torture.port}/delay?ms=30", "--rate", str(rate),
            "--duration", "1s", "--connections", "64")
    assert s["counts"]["2xx"] == rate and s["errors"] == 0
    for figure in ("latency_us", "service_time_us"):
        assert 30_000 <= s[figure]["p50"] <= 30_000 + TOLERANCE_US, s[figure]


@pytest.mark.parametrize("name", ["ok", "garbage", "http10", "to-close", "close-after", "reset",
                                  "interim-storm", "two-responses", "slow", "body-1m"])
def test_closed_model_reconciles_with_the_server(torture, tmp_path, name):
    path, kind, _ = MODES[name]
    mode = path.split("?")[0].strip("/")
    before = torture.stats(mode)
    s = run(tmp_path, f"http://127.0.0.1:{torture.port}{path}", "--concurrency", "2",
            "--duration", "500ms")
    server = delta(torture.stats(mode), before)
    total = sum(s["counts"][k] for k in KINDS)
    assert total > 0 and s["counts"][kind] == total, s["counts"]
    assert server["requests"] == total + s["connections"]["retried"], server
    if kind != "reset":
        assert server["answered"] == total
    if name == "slow":
        assert 40_000 <= s["latency_us"]["p50"] <= 40_000 + TOLERANCE_US


def test_a_server_that_accepts_then_resets(torture, tmp_path):
    s = run(tmp_path, f"http://127.0.0.1:{torture.reset_port}/", "--rate", "100",
            "--duration", "1s", "--connections", "8")
    assert s["counts"]["reset"] == 100 == s["errors"] == s["scheduled"], (s["errors_by_kind"], s["unsent"])


def test_a_server_that_never_accepts(torture, tmp_path):
    """A full backlog: a connection or two complete in the kernel and are never answered
    (timeout), the others' SYNs are dropped (connect). Nothing else, and nothing lost."""
    s = run(tmp_path, f"http://127.0.0.1:{torture.never_port}/", "--rate", "50",
            "--duration", "1s", "--connections", "8")
    counts = s["counts"]
    assert counts["connect"] + counts["timeout"] + s["unsent"] == 50 == s["scheduled"], counts
    assert s["requests"] == 0 and counts["connect"] > 0


def test_latencies_over_several_decades_in_one_interval(torture, tmp_path):
    """One request name whose answers take 0, 10, 100 or 500 ms in turn: one histogram spans
    chunks of counters far apart (recorded sparsely, flushed with the gaps as zeros), and each
    quarter of it lands on its delay."""
    s = run(tmp_path, f"http://127.0.0.1:{torture.port}/spread?ms=0,10,100,500", "--rate", "40",
            "--duration", "1s", "--connections", "64", timeout="2s")
    assert s["counts"]["2xx"] == 40 and s["errors"] == 0
    from loadforge.results.store import read_result

    result = read_result(s["result"])
    (row,) = result.rows("run", name="*", outcome="*")
    hist = result.histogram(row)
    assert hist.get_total_count() == 40
    for percentile, delay_ms in ((12.5, 0), (37.5, 10), (62.5, 100), (87.5, 500)):
        value = hist.get_value_at_percentile(percentile)
        assert delay_ms * 1000 <= value <= delay_ms * 1000 + TOLERANCE_US, (percentile, value)



def run_profile(tmp_path, port: int, path: str, stage: str, method: str, body: bytes = b"",
                extra: str = "", *args: str, timeout: str = "300ms") -> dict[str, Any]:
    """One request of `method` to path (with `body` and `extra` TOML lines) over 2
    connections, in one stage of `stage` (TOML keys), against the torture server's port."""
    profile = tmp_path / "profile.toml"
    body_line = ""
    if body:
        (tmp_path / "body.bin").write_bytes(body)
        body_line = 'body_file = "body.bin"\n'
    profile.write_text(f'target = "http://127.0.0.1:{port}"\n'
                       f'[load]\nconnections = 2\n\n[[stages]]\nname = "s"\n{stage}\n\n'
                       f'[[requests]]\nname = "r"\nmethod = "{method}"\npath = "{path}"\n'
                       f'{extra}{body_line}')
    summary = tmp_path / "summary.json"
    out = loadforge("run", str(profile), *args, "--workers", "1", "--no-preflight",
                    "--timeout", timeout, "--quiet", "--out", str(tmp_path / "results"),
                    "--summary-json", str(summary), timeout=60)
    assert out.returncode == 0, out.stderr
    s = json.loads(summary.read_text())
    s["counts"] = {**s["status"], **s["errors_by_kind"]}
    return s


OPEN = 'rate = 20\nduration = "2s"'
CLOSED = 'concurrency = 2\nduration = "1s"'


@pytest.mark.parametrize("stage", [OPEN, CLOSED], ids=["open", "closed"])
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_only_idempotent_requests_are_sent_again(torture, tmp_path, stage, method):
    """The server answers the first request of each connection, then reads the next and
    closes without a byte (a keep-alive timeout crossing the request): a GET goes out once more
    on a new connection, a POST never (RFC 9110 9.2.2: the server may have processed it); it
    ends as `reset`. The server read exactly what loadforge counts."""
    before = torture.stats("close-after")
    s = run_profile(tmp_path, torture.port, "/close-after?n=1", stage, method, b"order=1")
    server = delta(torture.stats("close-after"), before)
    counts, retried = s["counts"], s["connections"]["retried"]
    total = sum(counts[k] for k in KINDS)
    assert total > 0 and total == counts["2xx"] + counts["reset"], counts
    if stage == OPEN:
        # (two connections, each retry opening a new one: on a busy machine an arrival may
        # find both busy until the stage's end, and is counted unsent, never lost)
        assert s["scheduled"] == 40 == total + s["unsent"], s
    assert server["answered"] == counts["2xx"]
    if method == "POST":
        # Every dropped POST ends as reset: as many POSTs read as loadforge sent.
        assert retried == 0 and server["requests"] == total, (server, counts)
        assert server["dropped"] == counts["reset"] > 0
    else:
        assert counts["reset"] == 0 and retried > 0 and server["dropped"] == retried
        assert server["requests"] == total + retried


def test_retry_never_sends_nothing_twice(torture, tmp_path):
    before = torture.stats("close-after")
    s = run_profile(tmp_path, torture.port, "/close-after?n=1", OPEN, "GET", b"", "",
                    "--retry", "never")
    server = delta(torture.stats("close-after"), before)
    assert s["connections"]["retried"] == 0 and s["counts"]["reset"] == server["dropped"] > 0
    assert server["requests"] == s["scheduled"] - s["unsent"] == 40 - s["unsent"]


def test_a_post_with_an_idempotency_key_is_sent_again(torture, tmp_path):
    before = torture.stats("close-after")
    s = run_profile(tmp_path, torture.port, "/close-after?n=1", OPEN, "POST", b"order=1",
                    'headers = { "Idempotency-Key" = "a4f1" }\n')
    server = delta(torture.stats("close-after"), before)
    sent = 40 - s["unsent"]
    assert s["counts"]["reset"] == 0 and s["counts"]["2xx"] == sent
    assert server["requests"] == sent + s["connections"]["retried"] > sent


@pytest.mark.parametrize("stage", [OPEN, CLOSED], ids=["open", "closed"])
def test_an_early_final_answer_ends_the_request(torture, tmp_path, stage):
    """The server answers 413 after the head of a 1 MiB POST and keeps reading and
    discarding: each arrival gets its 413 at once, on a connection of its own (the one it went
    out on is dropped, as its body was cut short), nothing times out, nothing is left unsent."""
    before = torture.stats("early-413")
    s = run_profile(tmp_path, torture.port, "/early-413", stage, "POST", b"x" * (1 << 20),
                    timeout="2s")
    server = delta(torture.stats("early-413"), before)
    counts = s["counts"]
    total = sum(counts[k] for k in KINDS)
    assert counts["4xx"] == total > 0 and s["unsent"] == 0, (counts, s["unsent"], s["connections"], server)
    if stage == OPEN:
        assert total == s["scheduled"] == 40
    assert server["requests"] == server["answered"] == server["accepted"] == total, server
    assert s["connections"]["retried"] == 0
    # Timed to the answer, not to the end of a body nobody waits for.
    assert s["error_latency_us"]["p50"] < 1_000_000, s["error_latency_us"]


@pytest.mark.parametrize("stage", [OPEN, CLOSED], ids=["open", "closed"])
def test_an_interim_answer_during_the_body_is_not_final(torture, tmp_path, stage):
    """100 Continue after the head of a 1 MiB POST, then 200 once the body is read: the
    request ends at the 200 and its connection is reused."""
    before = torture.stats("continue")
    s = run_profile(tmp_path, torture.port, "/continue", stage, "POST", b"x" * (1 << 20),
                    timeout="2s")
    server = delta(torture.stats("continue"), before)
    total = sum(s["counts"][k] for k in KINDS)
    assert s["counts"]["2xx"] == total == server["answered"] == server["requests"] > 0
    assert s["unsent"] == 0 and server["accepted"] <= 2
