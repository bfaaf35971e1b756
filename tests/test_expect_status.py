"""[[requests]] expect_status: a request's own successful statuses, whatever fail_status says.

Real servers on 127.0.0.1: nginx over HTTP/1.1 (a location that answers 404), and the h2c
test server (tests/h2server.py) answering 404 to every stream. Each run's counts are
reconciled with what the server answered.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from h2server import H2Server
from servers import LoggingNginx, loadforge

from loadforge.config.outcomes import (
    error_outcomes,
    expect_words,
    is_error,
    response_outcome,
    status_fix,
)

FAIL = ("4xx", "5xx")


def test_the_rule() -> None:
    """In the set: a success (its class, or "expected" where fail_status counts the class);
    outside it: "unexpected", always an error; no set: the class, judged by fail_status."""
    assert response_outcome(404, FAIL) == "4xx" and is_error("4xx", FAIL)
    assert response_outcome(404, FAIL, (404,)) == "expected" and not is_error("expected", FAIL)
    assert response_outcome(200, FAIL, (200, 404)) == "2xx"
    assert response_outcome(404, ("5xx",), (404,)) == "4xx"
    assert response_outcome(200, FAIL, (404,)) == "unexpected"
    assert is_error("unexpected", ()) and "unexpected" in error_outcomes(())
    assert "expected" not in error_outcomes(FAIL)
    words = expect_words((200, 404), FAIL)
    assert len(words) == 11 and words[200 >> 6] == 1 << (200 & 63)
    assert words[404 >> 6] == 1 << (404 & 63) and words[10] == 0b11000
    assert expect_words((), FAIL) == ()
    # the preflight's words: the fix for each case, None for a success
    assert status_fix(404, FAIL, (404,)) is None
    assert "expect_status = [200, 404]" in (status_fix(404, FAIL, (200,), "request 'x'") or "")
    fix = status_fix(401, FAIL) or ""
    assert "expect_status = [401]" in fix and 'load.fail_status = ["5xx"]' in fix


PROFILE = """
name = "expect"
target = "{url}"
[load]
connections = 4
workers = 1
{load}
[[stages]]
name = "steady"
rate = 100
duration = "1s"
[[requests]]
name = "missing"
path = "/missing"
{expect}
"""
HOME = """
[[requests]]
name = "home"
path = "/"
"""


def _run(tmp_path: Path, url: str, expect: str, *flags: str, load: str = "", home: bool = True
         ) -> tuple[int, dict[str, Any], str, str]:
    profile = tmp_path / "p.toml"
    profile.write_text(PROFILE.format(url=url, expect=expect, load=load) + (HOME if home else ""))
    summary = tmp_path / "s.json"
    summary.unlink(missing_ok=True)
    out = loadforge("run", str(profile), "--slo", "error_rate=1%", "--out",
                    str(tmp_path / "results"), "--summary-json", str(summary), *flags)
    data = json.loads(summary.read_text()) if summary.exists() else {}
    return out.returncode, data, out.stdout, out.stderr


def _by_status(server: LoggingNginx) -> dict[str, int]:
    counts: dict[str, int] = {}
    for (status,) in server.take():
        counts[status] = counts.get(status, 0) + 1
    return counts


def test_expect_status_over_http1(tmp_path: Path) -> None:
    server = LoggingNginx("$status", "    location /missing {{ return 404; }}")
    try:
        # expected: 0 errors, the SLO passes; every 404 the server sent is "expected"
        rc, s, stdout, stderr = _run(tmp_path, server.url, "expect_status = [404]")
        seen = _by_status(server)
        assert rc == 0, stderr
        # the preflight's GET /missing is the server's one more 404 (outside the counts)
        assert s["errors"] == 0 and s["status"]["expected"] == seen["404"] - 1 > 0
        assert s["status"]["2xx"] == seen["200"] > 0 and "unexpected" not in s["errors_by_kind"]
        assert s["requests_by_name"]["missing"]["errors"] == 0
        # a verdict is a response: its keep-alive connection is reused, never closed by us
        assert s["connections"]["closed_by_us"] == 0
        assert "expected" in stdout
        results = sorted((tmp_path / "results").glob("*.parquet"))
        # compare folds the file as the run did
        compare = loadforge("compare", str(results[0]), str(results[0]), "--format", "json")
        assert compare.returncode == 0, compare.stderr
        assert json.loads(compare.stdout)["stages"][0]["values"][0]["error_rate"] == 0.0

        # without expect_status the default fail_status counts the 404s: the preflight stops
        # the run and names both fixes; without the preflight every 404 is an error
        rc, s, _, stderr = _run(tmp_path, server.url, "")
        assert rc == 3 and "returned 404" in stderr and "expect_status = [404]" in stderr
        assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
        _by_status(server)
        rc, s, _, stderr = _run(tmp_path, server.url, "", "--no-preflight")
        seen = _by_status(server)
        assert rc == 1, stderr
        assert s["errors"] == s["status"]["4xx"] == seen["404"] > 0

        # expecting 200 of a path that answers 404: every response "unexpected", exit 1
        rc, s, _, stderr = _run(tmp_path, server.url, "expect_status = [200]")
        assert rc == 3 and "expect_status = [200, 404]" in stderr
        _by_status(server)
        rc, s, stdout, stderr = _run(tmp_path, server.url, "expect_status = [200]",
                                     "--no-preflight")
        seen = _by_status(server)
        assert rc == 1, stderr
        assert s["errors_by_kind"]["unexpected"] == s["errors"] == seen["404"] > 0
        assert s["status"]["4xx"] == 0 and s["status"]["2xx"] == seen["200"]
        assert s["requests_by_name"]["home"]["errors"] == 0
        assert s["connections"]["closed_by_us"] == 0
        assert "unexpected" in stdout
        # "unexpected" is a response: it has a latency
        assert s["error_latency_us"]["max"] > 0
        results = sorted((tmp_path / "results").glob("*.parquet"))
        compare = loadforge("compare", str(results[0]), str(results[-1]), "--format", "json")
        values = json.loads(compare.stdout)["stages"][0]["values"]
        assert values[0]["error_rate"] == 0.0 and values[1]["error_rate"] == pytest.approx(
            s["error_rate"])
        # ... and so does the report
        html = tmp_path / "r.html"
        report = loadforge("report", str(results[-1]), "--html", str(html))
        assert report.returncode == 0, report.stderr
        data = json.loads(re.search(r'id="report-data">(.*?)</script>', html.read_text(),
                                    re.S)[1])
        assert data["runs"][0]["outcomes"]["unexpected"] == s["errors"]
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        if browser:
            with tempfile.TemporaryDirectory() as profile_dir:
                dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                                      "--no-first-run", f"--user-data-dir={profile_dir}",
                                      "--dump-dom", "file://" + str(html)],
                                     capture_output=True, text=True, timeout=60).stdout
            table = re.search(r'<table class="runs outcomes">.*?</table>', dom, re.S)
            assert table is not None and "<th>unexpected</th>" in table[0], dom[-2000:]
    finally:
        server.stop()


@pytest.mark.parametrize("expect, fail_status, outcome", [
    ("expect_status = [404]", '["4xx", "5xx"]', "expected"),
    ("expect_status = [404]", '["5xx"]', "4xx"),        # a success anyway: keeps its class
    ("expect_status = [200]", '["4xx", "5xx"]', "unexpected")])
def test_expect_status_over_h2c(tmp_path: Path, expect: str, fail_status: str,
                                outcome: str) -> None:
    """HTTP/2 streams take the same per-request verdict (engine/http2.pxi)."""
    with H2Server(status=404) as server:
        rc, s, _, stderr = _run(tmp_path, server.url, expect, "--no-preflight", home=False,
                                load=f'http = "2"\nfail_status = {fail_status}')
        answered = server.counts()["answered"]
    assert answered > 0 and s["requests"] == answered
    if outcome == "unexpected":
        assert rc == 1, stderr
        assert s["errors_by_kind"]["unexpected"] == s["errors"] == answered
    else:
        assert rc == 0, stderr
        assert s["errors"] == 0 and s["status"][outcome] == answered
