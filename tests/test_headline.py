"""Numbers that mean what a user thinks (issue 8, part 5), from the user's side: headline
latency over successful responses, failures' own latency, per-request-name figures, the cause
of unsent arrivals, the preflight, closed-model stages without a target, and the HTML report's
verdicts and tables. Every run is a CLI subprocess against a server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from servers import OK, ROOT, CannedServer, free_port, http_server, loadforge

# Successes take at least 20 ms (the server's delay); /fastfail answers 500 at once. Three in
from loadforge.present import summary
from loadforge.results import store as results

# four arrivals fail fast: a p50 over every arrival would be a fast failure's.
MIXED = """
name = "mixed"
target = "{target}"
[load]
connections = 16
workers = 1
[[stages]]
name = "steady"
rate = 40
duration = "2s"
[[requests]]
name = "page"
path = "/"
weight = 1
[[requests]]
name = "broken"
path = "/fastfail"
weight = 3
[slo]
p50 = "10ms"
"""
DELAY_US = 20_000


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("mixed")
    profile = out / "mixed.toml"
    with http_server(DELAY_US / 1e6) as url:
        profile.write_text(MIXED.format(target=url))
        proc = loadforge("run", str(profile), "--out", str(out), "--summary-json",
                         str(out / "s.json"))
    s = json.loads((out / "s.json").read_text())
    return {"proc": proc, "summary": s, "path": s["result"], "dir": out}


def test_fast_failures_do_not_pull_the_headline_latency_down(mixed: dict[str, Any]) -> None:
    s, proc = mixed["summary"], mixed["proc"]
    by_name = s["requests_by_name"]
    assert by_name["page"]["requests"] > 0 and by_name["page"]["errors"] == 0
    assert by_name["broken"]["errors"] == by_name["broken"]["requests"] > by_name["page"]["requests"]
    # Headline and the successful request's own figures: the 20 ms responses only.
    assert s["latency_us"]["p50"] >= DELAY_US
    assert by_name["page"]["latency_us"]["p50"] >= DELAY_US
    assert by_name["broken"]["latency_us"] == {"p50": 0, "p90": 0, "p99": 0}
    # Failures have their own figures, faster than any success.
    err = s["error_latency_us"]
    assert 0 < err["p50"] < DELAY_US and err["max"] >= err["p99"] >= err["p50"]
    assert s["stages"][0]["latency_us"] == s["latency_us"]
    # The p50 objective fails: errors being fast does not make it hold.
    (verdict,) = s["slo"]
    assert not verdict["ok"] and verdict["observed"] == s["latency_us"]["p50"]
    assert proc.returncode == 1, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "latency of successful responses" in text
    assert re.search(r"requests by name", text) and re.search(r"\bbroken\b", text)
    assert f"errors: {s['errors']:,}, their own latency p50" in text


def test_summary_compare_ls_and_report_agree_to_the_microsecond(mixed: dict[str, Any]) -> None:
    s, path = mixed["summary"], mixed["path"]
    proc = loadforge("compare", path, path, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    stages = {st["stage"]: st["values"][0] for st in json.loads(proc.stdout)["stages"]}
    # One stage: compare shows it (and no "all" row, which would repeat it).
    steady = s["stages"][0]
    for key in ("p50", "p90", "p99", "p999", "max"):
        assert stages["steady"][key] == steady["latency_us"][key] == s["latency_us"][key], key

    proc = loadforge("ls", str(mixed["dir"]), "--json")
    assert proc.returncode == 0, proc.stderr
    (entry,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert entry["p50_us"] == s["latency_us"]["p50"] and entry["p99_us"] == s["latency_us"]["p99"]
    assert entry["verdict"] == "FAIL 1/1"

    html = mixed["dir"] / "report.html"
    proc = loadforge("report", path, "--html", str(html))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', html.read_text(),
                                re.S).group(1))["runs"][0]  # type: ignore[union-attr]
    assert data["summary"]["all"]["p50"] == s["latency_us"]["p50"]
    assert data["requests_by_name"] == s["requests_by_name"]
    assert data["outcomes"]["5xx"] == s["status"]["5xx"] and data["outcomes"]["2xx"] > 0
    (verdict,) = data["slo"]
    assert not verdict["ok"] and verdict["observed"] == s["latency_us"]["p50"]


def test_parquet_ok_rows_at_every_scope(mixed: dict[str, Any]) -> None:
    s = mixed["summary"]
    result = results.read_result(mixed["path"])
    for scope in ("interval", "stage", "run"):
        rows = result.rows(scope, stage=None, name=None, outcome="ok")
        assert {r["name"] for r in rows} == {"*", "page", "broken"}, scope
        assert sum(r["count"] for r in rows if r["name"] == "*") == s["status"]["2xx"], scope
        assert all(r["count"] == 0 for r in rows if r["name"] == "broken"), scope
    (run_ok,) = result.rows("run", outcome="ok")
    assert run_ok["p50_us"] == s["latency_us"]["p50"] and run_ok["p99_us"] == s["latency_us"]["p99"]
    (page,) = result.rows("run", name="page", outcome="ok")
    assert page["p50_us"] == s["requests_by_name"]["page"]["latency_us"]["p50"]


def test_refused_connections_fail_a_latency_objective(tmp_path: Path) -> None:
    """Nothing listens: every arrival is a fast connect failure. A p99 objective has no
    successful response to hold by, so it fails instead of passing on fast errors."""
    profile = tmp_path / "dead.toml"
    profile.write_text(MIXED.replace('p50 = "10ms"', 'p99 = "1s"').format(
        target=f"http://127.0.0.1:{free_port()}").replace("rate = 40", "rate = 20")
        .replace('duration = "2s"', 'duration = "1s"'))
    proc = loadforge("run", str(profile), "--no-preflight", "--quiet", "--out", str(tmp_path),
                     "--summary-json", str(tmp_path / "s.json"))
    assert proc.returncode == 1, proc.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["errors_by_kind"]["connect"] == s["errors"] == s["sent"] > 0
    assert s["latency_us"]["p50"] == 0 and s["error_latency_us"]["max"] > 0
    (verdict,) = s["slo"]
    assert not verdict["ok"] and verdict["observed"] is None
    assert s["preflight"] == {"requests": 0}


def test_a_target_refusing_part_of_the_time_leaves_the_headline_to_successes(
        tmp_path: Path) -> None:
    """The target dies a second into the run: from then on every connection is refused, in
    microseconds. The headline is exactly the successful responses' figures."""
    server = CannedServer(OK, mode="close")     # a new connection per request
    summary_path = tmp_path / "s.json"
    try:
        run = subprocess.Popen(
            [sys.executable, "-m", "loadforge.cli", "run", "--target", server.url, "--rate",
             "100", "--duration", "2s", "--connections", "8", "--workers", "1", "--quiet",
             "--out", str(tmp_path), "--summary-json", str(summary_path)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        limit = time.monotonic() + 10
        while server.requests < 60 and time.monotonic() < limit and run.poll() is None:
            time.sleep(0.05)
    finally:
        server.stop()
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    s = json.loads(summary_path.read_text())
    assert s["errors_by_kind"]["connect"] > 0 and s["status"]["2xx"] > 0
    result = results.read_result(s["result"])
    (ok_2xx,) = result.rows("run", name="default", outcome="2xx")
    assert s["latency_us"]["p50"] == ok_2xx["p50_us"] and s["latency_us"]["p99"] == ok_2xx["p99_us"]
    # Failures: the refusals, and any connection the dying server reset.
    from loadforge.engine import histogram as hist

    failed = hist.new_histogram()
    for row in result.rows("run", name="default", outcome=None):
        if row["outcome"] in ("connect", "reset", "timeout", "protocol", "5xx"):
            hist.merge(failed, result.histogram(row))
    stats = hist.stats(failed)
    assert {k: stats[k] for k in ("p50", "p90", "p99", "max")} == s["error_latency_us"]
    assert s["requests_by_name"]["default"]["latency_us"]["p50"] == ok_2xx["p50_us"]


def test_unsent_arrivals_name_busy_connections(tmp_path: Path) -> None:
    """Two connections to a 100 ms server carry 20 requests/s of the 100 asked for: the
    rest wait for a connection and go unsent, and the summary says why."""
    with http_server(0.1) as url:
        proc = loadforge("run", "--target", url, "--rate", "100", "--duration", "2s",
                         "--connections", "2", "--workers", "1", "--out", str(tmp_path),
                         "--summary-json", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["unsent"] > 0 and s["unsent_cause"] == "connections"
    assert s["stages"][0]["unsent_cause"] == "connections"
    assert s["delayed_sends"]["connections"] > 0
    assert 0 <= s["worker_cpu"] < summary.BUSY_CPU
    assert "every connection was busy waiting on the target" in " ".join(proc.stdout.split())


def test_unsent_cause_rule_and_its_words() -> None:
    assert summary.unsent_cause(0, 1000, 500, 1.0) is None
    assert summary.unsent_cause(10, 1000, 0, 0.1) == "connections"
    assert summary.unsent_cause(10, 1000, 5, None) == "connections"     # 0.5% late
    assert summary.unsent_cause(10, 1000, 20, 0.1) == "cpu"             # 2% late, free conns
    assert summary.unsent_cause(10, 1000, 0, 0.95) == "cpu"             # cores used up
    out = io.StringIO()
    summary.render_summary({"run_id": "r", "unsent": 7, "unsent_cause": "cpu",
                            "stages": [{"name": "s", "unsent": 7}]},
                           Console(file=out, width=80, color_system=None))
    assert "load generator was short of CPU" in " ".join(out.getvalue().split())


NGINX_PREFLIGHT = """
name = "orders"
target = "{target}"
[load]
connections = 4
workers = 1
[[stages]]
name = "steady"
rate = 20
duration = "1s"
{requests}
"""
POST = """
[[requests]]
name = "order"
method = "POST"
path = "/api/orders"
headers = { "Content-Type" = "application/json" }
body = '{"sku": 1}'
"""


def _log_lines(nginx: Any) -> list[str]:
    nginx.served()   # waits for nginx to have logged
    with open(os.path.join(nginx.dir, "access.log")) as f:
        return f.read().splitlines()


@pytest.mark.parametrize(("requests", "expected"), [
    (POST, '"GET /api/orders HTTP/1.1"'),
    (POST + '\n[[requests]]\nname = "health"\npath = "/health"\n', '"GET /health HTTP/1.1"'),
])
def test_preflight_is_counted_and_sends_no_body(nginx: Any, tmp_path: Path, requests: str,
                                                expected: str) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(NGINX_PREFLIGHT.format(target=nginx.url, requests=requests))
    before = len(_log_lines(nginx))
    proc = loadforge("run", str(profile), "--quiet", "--out", str(tmp_path),
                     "--summary-json", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    lines = _log_lines(nginx)[before:]
    # The server saw the run's requests and the preflight, which is first and has no body:
    # a GET, never the POST (and its body) the run sends.
    assert s["preflight"] == {"requests": 1}
    assert len(lines) == s["requests"] + s["preflight"]["requests"]
    assert expected in lines[0] and "loadforge/" in lines[0]

    before = len(lines) + before
    proc = loadforge("run", str(profile), "--quiet", "--no-preflight", "--out", str(tmp_path),
                     "--summary-json", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["preflight"] == {"requests": 0}
    assert len(_log_lines(nginx)) - before == s["requests"]


OPEN_THEN_CLOSED = """
name = "mixed-models"
target = "{target}"
[load]
connections = 4
workers = 1
[[stages]]
name = "paced"
rate = 50
duration = "1s"
[[stages]]
name = "flat-out"
concurrency = 2
duration = "1s"
"""


def test_closed_model_stage_has_no_target_rate(nginx: Any, tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(OPEN_THEN_CLOSED.format(target=nginx.url))
    proc = loadforge("run", str(profile), "--out", str(tmp_path),
                     "--summary-json", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    paced, flat = s["stages"]
    assert paced["target_rps"] == 50.0 and flat["target_rps"] is None
    # The run's target is the open-model stage's, not diluted by the closed one's second.
    assert s["target_rps"] == 50.0
    row = next(line for line in proc.stdout.splitlines() if line.strip().startswith("flat-out *"))
    assert row.split()[5] == "-", row

    proc = loadforge("compare", s["result"], s["result"], "--format", "json")
    assert proc.returncode == 0, proc.stderr
    values = {st["stage"]: st["values"][0] for st in json.loads(proc.stdout)["stages"]}
    assert values["flat-out"]["target_rps"] is None and values["paced"]["target_rps"] == 50.0
    assert values["all"]["target_rps"] == 50.0
    proc = loadforge("ls", s["result"], "--json")
    assert json.loads(proc.stdout)["target_rps"] == 50.0


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_shows_verdicts_tables_and_step_rates(mixed: dict[str, Any]) -> None:
    html = mixed["dir"] / "chromium.html"
    assert loadforge("report", mixed["path"], "--html", str(html)).returncode == 0
    assert CHROMIUM
    with tempfile.TemporaryDirectory() as user_dir:
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={user_dir}", "--dump-dom", html.resolve().as_uri()],
            capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr
    page = dom.stdout
    body = re.search(r"<body([^>]*)>", page)
    assert body and "data-errors" not in body.group(1), body
    assert 'class="runs slo"' in page and ">FAIL<" in page and ">p50<" in page
    names = re.search(r'<table class="runs names">(.*?)</table>', page, re.S)
    assert names and ">page<" in names.group(1) and ">broken<" in names.group(1)
    outcomes = re.search(r'<table class="runs outcomes">(.*?)</table>', page, re.S)
    assert outcomes and ">5xx<" in outcomes.group(1)
    # Target, achieved and errors per second are drawn as steps (counts over an interval).
    steps = [int(n) for n in re.findall(r'<canvas[^>]*data-steps="(\d+)"', page)]
    assert steps[:3] == [2, 0, 1], steps


def test_files_without_ok_rows_read_the_same_headline(tmp_path: Path) -> None:
    """A file written before the "ok" rows: every reader merges its successful outcome rows
    instead, so fast 5xx stay out of its headline there too."""
    from loadforge.analysis import compare
    from loadforge.engine import histogram as hist

    def recorded(value_us: int, n: int) -> Any:
        h = hist.new_histogram()
        h.record_value(value_us, n)
        return h

    rows: list[dict[str, Any]] = []
    for scope, stage in (("interval", "steady"), ("stage", "steady"), ("run", "*")):
        span = {"scope": scope, "stage": stage, "start_ms": 0, "end_ms": 1000}
        ok, failed = recorded(30_000, 10), recorded(500, 30)
        both = hist.copy(ok)
        hist.merge(both, failed)
        rows += [{**span, "name": "page", "outcome": "2xx", "count": 10, "latency": ok,
                  "service": ok},
                 {**span, "name": "page", "outcome": "5xx", "count": 30, "latency": failed,
                  "service": failed},
                 {**span, "name": "*", "outcome": "*", "count": 40, "latency": both,
                  "service": both, "scheduled": 40, "unsent": 0}]
    path = str(tmp_path / "old.parquet")
    with results.ResultWriter(path, "old", {"interval_ms": "1000"}) as writer:
        writer.write(rows)
    result = results.read_result(path)
    assert not result.has_ok_rows
    figures = compare.run_figures(result)
    assert figures.run.values()["p50"] == figures.stages[0].values()["p50"] >= 30_000

