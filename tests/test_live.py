"""Live outputs (loadforge/live/): `--stream` lines add up to the summary, `--metrics` is
scraped by a real Prometheus (Debian's), `--dashboard` is read by a real headless Chromium
(selenium with Debian's chromedriver), and bad flags are one line and exit 2.

Every run targets 127.0.0.1 (nginx from conftest, or the embedded sandbox) and is bounded in
time; waits poll for a condition, never sleep a fixed time.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from servers import ROOT, free_port, loadforge, wait_listening

from loadforge.engine import histogram
from loadforge.live import metrics, parse_address
from loadforge.live.state import LATENCY_BUCKETS_S, bucket_counts

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
STATUS = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Run:
    """`loadforge run ...` in the background, its stderr collected by a thread."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "loadforge.cli", "run", *args],
                                     cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def lingering(self) -> bool:
        return any("serving the final figures" in line for line in self.stderr)

    def stop(self) -> int:
        """Ends the linger (Ctrl-C) and waits: the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(30)
        self.reader.join(10)
        return code


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()


def poll(condition: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stream_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_stream_adds_up(lines: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """The stream's per-interval counts add up to the summary's totals."""
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "summary"
    assert lines[-1]["requests"] == summary["requests"]
    intervals = [x for x in lines if x["type"] == "interval"]
    assert intervals and [x["index"] for x in intervals] == sorted({x["index"] for x in intervals})
    for key in ("requests", "errors", "scheduled", "unsent"):
        assert sum(x[key] for x in intervals) == summary[key], key
    status: dict[str, int] = {}
    by_name: dict[str, int] = {}
    for x in intervals:
        for c in x["cells"]:
            if c["outcome"] in STATUS:
                status[c["outcome"]] = status.get(c["outcome"], 0) + c["count"]
                by_name[c["name"]] = by_name.get(c["name"], 0) + c["count"]
        assert x["requests"] == sum(c["count"] for c in x["cells"] if c["outcome"] in STATUS)
    assert {k: v for k, v in summary["status"].items() if v} == status
    assert {k: v["requests"] for k, v in summary["requests_by_name"].items()
            if v["requests"]} == by_name


# -- units -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("9464", ("127.0.0.1", 9464)), ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::1]:9464", ("::1", 9464)), ("localhost:0", ("localhost", 0))])
def test_address_forms(value: str, expected: tuple[str, int]) -> None:
    assert parse_address(value, "--metrics") == expected


def test_latency_buckets_count_each_value_once_and_below_its_bound() -> None:
    h = histogram.new_histogram()
    for us in (100, 500, 501, 999, 7000, 60_000_000):
        h.record_value(us)
    counts = bucket_counts(h)
    assert len(counts) == len(LATENCY_BUCKETS_S) + 1 and sum(counts) == 6
    assert counts[0] == 2            # 100 µs, 500 µs: le 0.0005
    assert counts[1] == 2            # 501 µs, 999 µs: le 0.001
    assert counts[LATENCY_BUCKETS_S.index(0.01)] == 1
    assert counts[-1] == 1           # a minute: +Inf


def test_openmetrics_when_asked_text_otherwise() -> None:
    assert metrics.content_type("application/openmetrics-text;version=1.0.0") == \
        metrics.OPENMETRICS
    assert metrics.content_type("*/*") == metrics.TEXT
    assert metrics.render(None, True) == "# EOF\n"


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize(("flags", "message"), [
    (("--metrics", "host:port"), "--metrics host:port: expected [HOST:]PORT"),
    (("--dashboard", "70000"), "--dashboard 70000: expected [HOST:]PORT"),
    (("--linger", "5s"), "--linger applies only with --dashboard or --metrics"),
    (("--stream", "-", "--summary-json", "-"), "only one output can be '-'"),
    (("--metrics", "1", "--linger", "5"), "--linger"),
    (("--stream", "/nonexistent-dir/s.jsonl"), "--stream /nonexistent-dir/s.jsonl: cannot "
                                               "write"),
])
def test_bad_live_flags_are_one_line_and_exit_2(tmp_path: Path, flags: tuple[str, ...],
                                                message: str) -> None:
    out = loadforge("run", "--target", "http://127.0.0.1:9/", "--rate", "10", "--duration",
                    "1s", "--out", str(tmp_path), *flags)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_taken_port_is_exit_2_before_any_load(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = loadforge("run", "--target", "http://127.0.0.1:9/", "--rate", "10",
                        "--duration", "1s", "--out", str(tmp_path), "--dashboard", str(port))
    assert out.returncode == 2, out.stderr
    assert f"--dashboard 127.0.0.1:{port}: cannot listen there" in out.stderr
    assert not list(tmp_path.glob("*.parquet"))


# -- --stream --------------------------------------------------------------------------------

def test_stream_counts_add_up_to_the_summary(nginx, tmp_path: Path) -> None:
    stream, summary = tmp_path / "live.jsonl", tmp_path / "summary.json"
    out = loadforge("run", "--target", nginx.url + "/", "--rate", "300", "--duration", "3s",
                    "--out", str(tmp_path), "--quiet", "--stream", str(stream),
                    "--summary-json", str(summary), "--slo", "p99=2s", "--slo",
                    "error_rate=1%")
    assert out.returncode == 0, out.stderr
    s = json.loads(summary.read_text())
    lines = stream_lines(stream)
    check_stream_adds_up(lines, s)
    assert s["requests"] == 900
    intervals = [x for x in lines if x["type"] == "interval"]
    assert len(intervals) >= 3
    for x in intervals:
        assert (x["latency_us"]["p50"] > 0) == (x["requests"] > 0), x
    last = intervals[-1]
    # The live verdicts, on everything merged, are the verdicts the file gives at the end.
    live = {v["name"]: v for v in last["slo"]}
    for verdict in s["slo"]:
        assert live[verdict["name"]]["observed"] == verdict["observed"]
        assert live[verdict["name"]]["ok"] == verdict["ok"]


def test_stream_to_stdout_holds_only_the_json_lines(nginx, tmp_path: Path) -> None:
    out = loadforge("run", "--target", nginx.url + "/", "--rate", "100", "--duration", "2s",
                    "--out", str(tmp_path), "--stream", "-")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [x["type"] for x in (lines[0], lines[-1])] == ["start", "summary"]
    assert lines[-1]["requests"] == 200
    assert "p99" in out.stderr          # the summary table went to stderr


# -- --metrics with a real Prometheus ----------------------------------------------------------

@contextmanager
def prometheus(target: str) -> Iterator[str]:
    """Debian's Prometheus on 127.0.0.1, scraping `target` (host:port) every second."""
    assert PROMETHEUS
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "prometheus.yml")
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
                          "scrape_configs:\n  - job_name: loadforge\n"
                          f"    static_configs:\n      - targets: ['{target}']\n")
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            poll(lambda: _ready(url), 30, "prometheus to be ready")
            # Its discovery hands targets to the scrapers in batches (every 5 s): until the
            # first scrape has been tried, a short run would go unseen.
            poll(lambda: _scraped(url), 30, "prometheus' first scrape attempt")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _ready(url: str) -> bool:
    try:
        return get(url + "/-/ready")[0] == 200
    except OSError:
        return False


def _scraped(url: str) -> bool:
    targets = json.loads(get(url + "/api/v1/targets")[2])["data"]["activeTargets"]
    return bool(targets) and not targets[0]["lastScrape"].startswith("0001")


def query(prom: str, promql: str) -> list[dict[str, Any]]:
    status, _, body = get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    data = json.loads(body)
    assert status == 200 and data["status"] == "success", body
    return list(data["data"]["result"])


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed "
                    "(apt-get install prometheus)")
def test_five_seconds_with_metrics_dashboard_and_stream(nginx, tmp_path: Path) -> None:
    """The issue's check: Prometheus sees loadforge_requests_total grow between scrapes and a
    histogram with buckets, the page answers 200 with live figures, and the stream's counts
    add up to the summary's."""
    mport, dport = free_port(), free_port()
    stream, summary = tmp_path / "live.jsonl", tmp_path / "summary.json"
    with prometheus(f"127.0.0.1:{mport}") as prom:
        run = Run("--target", nginx.url + "/", "--rate", "200", "--duration", "5s",
                  "--out", str(tmp_path), "--quiet", "--metrics", f"127.0.0.1:{mport}",
                  "--dashboard", f"127.0.0.1:{dport}", "--stream", str(stream),
                  "--summary-json", str(summary), "--slo", "p99=2s", "--linger", "60s")
        try:
            wait_listening(dport)
            status, kind, page = get(f"http://127.0.0.1:{dport}/")
            assert status == 200 and kind.startswith("text/html")
            assert 'id="requests"' in page and "src=" not in page
            live = poll(lambda: [e for e in json.loads(get(
                f"http://127.0.0.1:{dport}/state")[2]) if e["type"] == "interval"],
                what="an interval on the page's /state")
            assert live[0]["requests"] > 0 and not summary.exists()
            status, kind, text = get(f"http://127.0.0.1:{mport}/metrics",
                                     {"Accept": "application/openmetrics-text"})
            assert kind.startswith("application/openmetrics-text") and text.endswith("# EOF\n")
            poll(run.lingering, 60, "the run to end")
            assert summary.exists()
            # Prometheus scrapes what the run ended with while it lingers.
            poll(lambda: query(prom, "loadforge_run_finished == 1"), 30,
                 "a scrape of the finished run")
            # Asked while it lingers: once the target is gone, its series go stale.
            s = json.loads(summary.read_text())
            samples = query(prom, 'loadforge_requests_total{outcome="2xx"}[1m]')
            assert len(samples) == 1, samples          # one stage, one request name
            values = [float(v) for _, v in samples[0]["values"]]
            assert len(values) >= 3 and values[-1] == s["requests"]
            assert any(b > a for a, b in zip(values, values[1:], strict=False)), values
            buckets = query(prom, "loadforge_latency_seconds_bucket")
            assert len({b["metric"]["le"] for b in buckets}) == len(LATENCY_BUCKETS_S) + 1
            top = [b for b in buckets if b["metric"]["le"] == "+Inf"]
            assert sum(float(b["value"][1]) for b in top) == s["requests"]
            assert float(query(prom, "histogram_quantile(0.5, sum by (le) "
                                     "(loadforge_latency_seconds_bucket))")[0]["value"][1]) > 0
            assert query(prom, "max_over_time(loadforge_target_rps[1m])")[0]["value"][1] == "200"
            # Every query of the Grafana dashboard in the repository is valid PromQL over these
            # metrics, and the panels that have something to show here show it.
            dashboard = json.loads(Path(ROOT, "deploy", "grafana", "loadforge.json").read_text())
            empty_here = {"Errors by kind", "Responses by backend"}      # nginx: none of either
            for panel in dashboard["panels"]:
                for t in panel["targets"]:
                    expr = (t["expr"].replace("$__rate_interval", "5s").replace("$job", ".*")
                            .replace("$stage", ".*"))
                    found = query(prom, expr)
                    assert found or panel["title"] in empty_here, (panel["title"], expr)
        finally:
            code = run.stop()
        assert code == 0, run.stderr
    check_stream_adds_up(stream_lines(stream), s)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (package prometheus)")
def test_metrics_pass_promtool(nginx, tmp_path: Path) -> None:
    port = free_port()
    run = Run("--target", nginx.url + "/", "--rate", "100", "--duration", "2s",
              "--out", str(tmp_path), "--quiet", "--metrics", str(port), "--slo", "p99=1s",
              "--dashboard", str(port), "--linger", "60s")
    try:
        poll(run.lingering, 60, "the run to end")
        text = get(f"http://127.0.0.1:{port}/metrics")[2]
        # --dashboard on the same address: one server, both routes
        assert get(f"http://127.0.0.1:{port}/")[0] == 200
    finally:
        code = run.stop()
    assert code == 0, run.stderr
    assert "loadforge_run_finished 1" in text
    check = subprocess.run([str(PROMTOOL), "check", "metrics"], input=text,
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert 'loadforge_slo_ok{objective="p99"} 1' in text
    assert 'loadforge_requests_total{stage="steady",name="default",outcome="2xx"} 200' in text


# -- --dashboard in a real browser -----------------------------------------------------------

@pytest.fixture()
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromedriver are not installed "
                    "(apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"):
        options.add_argument(arg)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def test_dashboard_updates_during_the_run_and_ends_on_the_summary(browser: Any,
                                                                  tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    profile = tmp_path / "live.toml"
    profile.write_text(
        'name = "live"\ntarget = "sandbox"\n[load]\nconnections = 8\nworkers = 1\n'
        '[[stages]]\nname = "steady"\nrate = 150\nduration = "4s"\n'
        '[[requests]]\nname = "home"\npath = "/"\nweight = 3\n'
        '[[requests]]\nname = "items"\npath = "/items"\nweight = 1\n'
        '[slo]\np99 = "2s"\nerror_rate = "1%"\np50 = "1us"\n')
    port = free_port()
    summary = tmp_path / "summary.json"
    run = Run(str(profile), "--out", str(tmp_path), "--quiet", "--dashboard", str(port),
              "--summary-json", str(summary), "--linger", "120s")
    try:
        wait_listening(port)
        browser.get(f"http://127.0.0.1:{port}/")
        body = browser.find_element(By.TAG_NAME, "body")

        def value(element_id: str) -> str:
            return str(browser.find_element(By.ID, element_id).get_attribute("data-value"))

        # Updated during the run: intervals arrive while the run has not ended.
        poll(lambda: int(body.get_attribute("data-intervals") or 0) >= 1, 30,
             "a first interval on the page")
        during = (body.get_attribute("data-state"), value("requests"), summary.exists())
        assert during[0] == "running" and int(during[1]) > 0 and not during[2], during

        def verdicts() -> dict[str, str]:
            return {td.get_attribute("data-key"): td.get_attribute("data-value")
                    for td in browser.find_elements(By.CSS_SELECTOR, "#slo td[data-key]")}

        # An objective turns red while the run goes on: p50 under 1 µs cannot hold.
        assert verdicts() == {"p99": "1", "error_rate": "1", "p50": "0"}
        assert body.get_attribute("data-state") == "running"
        assert int(browser.find_element(By.ID, "chart-rate").get_attribute("data-points")) > 0
        poll(lambda: body.get_attribute("data-state") == "finished", 60, "the final figures")
        poll(run.lingering, 30, "the summary JSON and the linger")
        s = json.loads(summary.read_text())
        assert int(body.get_attribute("data-intervals")) >= 4
        assert body.get_attribute("data-errors") is None
        assert int(value("requests")) == s["requests"] == 600
        assert int(value("errors")) == s["errors"]
        assert float(value("achieved-rps")) == s["achieved_rps"]
        assert float(value("target-rps")) == s["target_rps"]
        assert int(value("unsent")) == s["unsent"]
        for key in ("p50", "p90", "p99", "max"):
            assert int(value(f"latency-{key}")) == s["latency_us"][key], key
        assert verdicts() == {v["name"]: "1" if v["ok"] else "0" for v in s["slo"]}
        assert verdicts()["p50"] == "0" and not s["ok"]
        names = {td.get_attribute("data-key"): int(td.get_attribute("data-value"))
                 for td in browser.find_elements(By.CSS_SELECTOR, "#by-name td[data-key]")}
        assert names == {k: v["requests"] for k, v in s["requests_by_name"].items()}
        backends = {td.get_attribute("data-key"): int(td.get_attribute("data-value"))
                    for td in browser.find_elements(By.CSS_SELECTOR, "#by-backend td[data-key]")}
        assert backends == {k: v["requests"] for k, v in s["backends"].items()}
    finally:
        code = run.stop()
    assert code == 1, run.stderr          # the p50 objective failed the run


def test_dashboard_page_names_no_outside_asset() -> None:
    from loadforge.live import dashboard_page

    page = dashboard_page()
    assert "src=" not in page and "href=" not in page and "@import" not in page
    assert str(ROOT) not in page          # no file path of this machine leaks into the page


def test_stream_counts_failures_by_kind_as_the_summary(tmp_path: Path) -> None:
    # A port nobody listens on, on 127.0.0.1: every arrival is a connect failure.
    stream, summary = tmp_path / "live.jsonl", tmp_path / "summary.json"
    out = loadforge("run", "--target", f"http://127.0.0.1:{free_port()}/", "--rate", "50",
                    "--duration", "2s", "--no-preflight", "--timeout", "1s", "--out",
                    str(tmp_path), "--quiet", "--stream", str(stream), "--summary-json",
                    str(summary))
    assert out.returncode == 0, out.stderr
    s = json.loads(summary.read_text())
    lines = stream_lines(stream)
    check_stream_adds_up(lines, s)
    intervals = [x for x in lines if x["type"] == "interval"]
    kinds: dict[str, int] = {}
    for x in intervals:
        for kind, n in x["errors_by_kind"].items():
            kinds[kind] = kinds.get(kind, 0) + n
    assert kinds == {k: v for k, v in s["errors_by_kind"].items() if v}
    assert s["errors"] == 100 and s["requests"] == 0


def test_closed_model_has_no_target_rate(nginx, tmp_path: Path) -> None:
    stream = tmp_path / "live.jsonl"
    out = loadforge("run", "--target", nginx.url + "/", "--concurrency", "2", "--duration",
                    "2s", "--out", str(tmp_path), "--quiet", "--stream", str(stream))
    assert out.returncode == 0, out.stderr
    intervals = [x for x in stream_lines(stream) if x["type"] == "interval"]
    assert intervals and all(x["target_rps"] is None for x in intervals)
    assert sum(x["requests"] for x in intervals) == stream_lines(stream)[-1]["requests"] > 0


def test_live_verdicts_end_where_the_files_verdicts_are(nginx, tmp_path: Path) -> None:
    """analysis/slo.LiveVerdicts, fed the interval rows as the coordinator wrote them, ends
    on evaluate()'s verdicts from the file: run, stage (after a grace) and window objectives."""
    from loadforge.analysis.slo import LiveVerdicts, evaluate
    from loadforge.config.profile import load_profile
    from loadforge.results.store import read_result

    profile = tmp_path / "slo.toml"
    profile.write_text(
        f'name = "slo"\ntarget = "{nginx.url}/"\n[load]\nconnections = 4\nworkers = 1\n'
        '[[stages]]\nname = "a"\nrate = 100\nduration = "2s"\n'
        '[[stages]]\nname = "b"\nrate = 200\nduration = "2s"\n'
        '[[requests]]\nname = "home"\npath = "/"\n'
        '[slo]\np99 = "2s"\nerror_rate = "1%"\np50 = "1us"\n'
        '[[slo.stages]]\nstage = "b"\ngrace = "1s"\np90 = "2s"\n'
        '[[slo.windows]]\nwindow = "2s"\np99 = "2s"\nrate_shortfall = "50%"\n')
    summary = tmp_path / "summary.json"
    out = loadforge("run", str(profile), "--out", str(tmp_path), "--quiet", "--summary-json",
                    str(summary))
    assert out.returncode == 1, out.stderr         # p50 under 1 µs fails
    s = json.loads(summary.read_text())
    plan = load_profile(str(profile))
    result = read_result(s["result"])
    rows = result.rows("interval", stage=None, name=None, outcome=None)
    live = LiveVerdicts(plan)
    verdicts: list[dict[str, Any]] = []
    for index in sorted({int(r["start_ms"]) // 1000 for r in rows}):
        mine = [{**r, "latency": result.histogram(r)} for r in rows
                if int(r["start_ms"]) // 1000 == index]
        verdicts = live.interval(index, mine)
    final = evaluate(plan, result)
    assert len(final) == 6
    assert [(v["name"], v["ok"], v["observed"]) for v in verdicts] == \
        [(v["name"], v["ok"], v["observed"]) for v in final]
