"""SLO verdicts: synthetic result files with known figures, the live abort checker, JUnit, and
real runs against a server started here (one whose SLO cannot hold exits 1 with a JUnit
failure; abort_after stops a run early)."""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from servers import STEADY_PROFILE, http_server, loadforge

from loadforge.analysis import slo
from loadforge.config.plan import Plan, Request, Stage
from loadforge.config.profile import plan_from_dict
from loadforge.engine import histogram as hist
from loadforge.present import junit
from loadforge.results import store as results

REPO = Path(__file__).resolve().parent.parent


# -- synthetic results -------------------------------------------------------------------------

def _hist(value_us: int, n: int = 100) -> Any:
    h = hist.new_histogram()
    h.record_value(value_us, n)
    return h


def write_synthetic(path: Path, plan: Plan, intervals: list[dict[str, Any]]) -> str:
    """intervals: [{"stage", "latency_us", "ok", "errors", "scheduled"}], one per second."""
    rows: list[dict[str, Any]] = []
    for i, iv in enumerate(intervals):
        span = {"scope": "interval", "stage": iv["stage"], "start_ms": 1000 * i,
                "end_ms": 1000 * (i + 1)}
        lat_ok = _hist(iv["latency_us"], iv["ok"])
        rows.append({**span, "name": "home", "outcome": "2xx", "count": iv["ok"],
                     "latency": lat_ok, "service": lat_ok})
        both = hist.copy(lat_ok)
        if iv.get("errors"):
            lat_err = _hist(iv["latency_us"], iv["errors"])
            rows.append({**span, "name": "home", "outcome": "5xx", "count": iv["errors"],
                         "latency": lat_err, "service": lat_err})
            hist.merge(both, lat_err)
        rows.append({**span, "name": "*", "outcome": "*", "count": iv["ok"] + iv.get("errors", 0),
                     "latency": both, "service": both,
                     "scheduled": iv.get("scheduled", iv["ok"] + iv.get("errors", 0)),
                     "unsent": 0})
    with results.ResultWriter(str(path), "synthetic", {"profile": plan.source,
                                                       "interval_ms": "1000"}) as writer:
        writer.write(rows)
    return str(path)


def two_stage_plan(slo_table: dict[str, Any]) -> Plan:
    return plan_from_dict({
        "name": "synthetic", "target": "http://127.0.0.1:1",
        "stages": [{"name": "a", "rate": 100, "duration": "3s"},
                   {"name": "b", "rate": 100, "duration": "3s"}],
        "slo": slo_table,
    })


INTERVALS = [
    {"stage": "a", "latency_us": 1000, "ok": 100},
    {"stage": "a", "latency_us": 1000, "ok": 100},
    {"stage": "a", "latency_us": 1000, "ok": 90, "errors": 10},
    {"stage": "b", "latency_us": 50_000, "ok": 100},
    {"stage": "b", "latency_us": 2000, "ok": 100},
    {"stage": "b", "latency_us": 2000, "ok": 50, "scheduled": 100},
]


def by_name(verdicts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in verdicts}


def test_run_stage_and_window_objectives_from_merged_histograms(tmp_path: Path) -> None:
    plan = two_stage_plan({
        "p99": "100ms", "error_rate": "1%", "success_rate": "99%", "rate_shortfall": "5%",
        "stages": [{"stage": "b", "grace": "1s", "p99": "10ms"},
                   {"stage": "b", "p99": "10ms"}],
        "windows": [{"window": "1s", "max": "10ms"},
                    {"window": "2s", "error_rate": "4%"},
                    {"window": "2s", "stage": "b", "p50": "1ms"}],
    })
    path = write_synthetic(tmp_path / "r.parquet", plan, INTERVALS)
    v = by_name(slo.evaluate(plan, path))

    # 10 errors (5xx) of 550 responses; 550 responses of 600 scheduled.
    assert v["error_rate"]["observed"] == pytest.approx(10 / 550)
    assert not v["error_rate"]["ok"] and v["error_rate"]["unit"] == "ratio"
    assert v["success_rate"]["observed"] == pytest.approx(540 / 550)
    assert not v["success_rate"]["ok"]
    assert v["rate_shortfall"]["observed"] == pytest.approx(50 / 600)
    assert not v["rate_shortfall"]["ok"]
    # p99 of 550 values: 450 at 1-2 ms and 100 at 50 ms -> the 50 ms bucket.
    assert 50_000 <= v["p99"]["observed"] <= 50_100 and v["p99"]["ok"]
    assert v["p99"]["limit"] == 100_000 and v["p99"]["unit"] == "us"

    graced = v["stage b p99 (after 1s grace)"]
    assert graced["ok"] and 2000 <= graced["observed"] < 2010
    assert not v["stage b p99"]["ok"]

    worst = v["max over any 1s window"]
    assert not worst["ok"] and worst["window_start_s"] == 3.0
    errors = v["error_rate over any 2s window"]
    assert errors["observed"] == pytest.approx(10 / 200) and errors["window_start_s"] in (1.0, 2.0)
    assert not errors["ok"]
    # Within stage b only: the windows are (3, 4) and (4, 5); p50 of both is above 1 ms.
    staged = v["stage b p50 over any 2s window"]
    assert staged["window_start_s"] == 3.0 and not staged["ok"]


def test_no_objectives_no_read(tmp_path: Path) -> None:
    plan = Plan(name="x", target="http://127.0.0.1:1", stages=(Stage("s", 1.0, 1.0, 1.0),),
                requests=(Request("r"),))
    assert slo.evaluate(plan, str(tmp_path / "does-not-exist.parquet")) == []


def test_no_data_fails(tmp_path: Path) -> None:
    plan = two_stage_plan({"stages": [{"stage": "b", "p99": "1s"}]})
    path = write_synthetic(tmp_path / "r.parquet", plan, INTERVALS[:3])
    (verdict,) = slo.evaluate(plan, path)
    assert verdict["observed"] is None and not verdict["ok"] and verdict["note"]


def _live_rows(index: int, stage: str, latency_us: int) -> list[dict[str, Any]]:
    lat = _hist(latency_us)
    span = {"scope": "interval", "stage": stage, "start_ms": index * 1000,
            "end_ms": (index + 1) * 1000, "latency": lat, "service": lat}
    return [{**span, "name": "home", "outcome": "2xx", "count": 100},
            {**span, "name": "*", "outcome": "*", "count": 100, "scheduled": 100}]


def test_live_abort_after_a_sustained_breach() -> None:
    plan = two_stage_plan({"windows": [{"window": "2s", "p99": "10ms", "abort_after": "1s"}]})
    live = slo.LiveSLO(plan)
    latencies = [1000, 1000, 50_000, 1000, 1000, 50_000]
    reasons = [live.interval(i, _live_rows(i, "a" if i < 3 else "b", us))
               for i, us in enumerate(latencies)]
    # Windows (1,2) and (2,3) fail: failing for 1 s at the end of interval 3.
    assert reasons[:3] == [None, None, None]
    assert reasons[3] is not None
    assert "p99 over any 2s window" in reasons[3] and "abort_after 1s" in reasons[3]


def test_live_without_abort_objectives_is_inert() -> None:
    plan = two_stage_plan({"windows": [{"window": "1s", "p99": "1us"}]})
    assert slo.LiveSLO(plan).interval(0, _live_rows(0, "a", 5000)) is None


def test_junit_xml_has_a_case_per_objective() -> None:
    verdicts = [
        {"name": "p99", "ok": False, "observed": 1500.0, "limit": 1000.0, "unit": "us",
         "objective": "p99"},
        {"name": "error_rate", "ok": True, "observed": 0.0, "limit": 0.01, "unit": "ratio",
         "objective": "error_rate"},
    ]
    root = ET.fromstring(junit.junit_xml("suite", junit.slo_cases(verdicts)))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
    failure = root.find(".//testcase[@name='p99']/failure")
    assert failure is not None
    assert "observed 1.5ms" in failure.get("message", "")
    assert "limit <= 1ms" in failure.get("message", "")
    assert root.find(".//testcase[@name='error_rate']/failure") is None


# -- real runs ---------------------------------------------------------------------------------



def test_a_profile_whose_slo_cannot_hold_exits_1_with_a_junit_failure(tmp_path: Path) -> None:
    with http_server(delay_s=0.002) as url:
        profile = tmp_path / "tight.toml"
        profile.write_text(STEADY_PROFILE.format(name="tight", target=url, duration="2s",
                                          slo='p99 = "1ms"\nerror_rate = "1%"'))
        junit = tmp_path / "slo.xml"
        summary = tmp_path / "s.json"
        proc = loadforge("run", str(profile), "--out", str(tmp_path / "results"), "--quiet",
                         "--junit", str(junit), "--summary-json", str(summary))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(summary.read_text())
    assert data["ok"] is False
    verdicts = by_name(data["slo"])
    assert not verdicts["p99"]["ok"] and verdicts["p99"]["observed"] > 2000
    assert verdicts["error_rate"]["ok"]
    root = ET.parse(junit).getroot()
    failure = root.find(".//testcase[@name='p99']/failure")
    assert failure is not None and "observed" in failure.get("message", "")
    assert root.find(".//testcase[@name='error_rate']/failure") is None


def test_a_profile_whose_slo_holds_exits_0(tmp_path: Path) -> None:
    with http_server() as url:
        profile = tmp_path / "loose.toml"
        profile.write_text(STEADY_PROFILE.format(
            name="loose", target=url, duration="2s",
            slo='p99 = "2s"\nerror_rate = "1%"\n[[slo.windows]]\nwindow = "1s"\nmax = "3s"'))
        junit = tmp_path / "slo.xml"
        proc = loadforge("run", str(profile), "--out", str(tmp_path / "results"), "--quiet",
                         "--junit", str(junit))
    assert proc.returncode == 0, proc.stderr
    root = ET.parse(junit).getroot()
    assert root.find("testsuite").get("tests") == "3"  # type: ignore[union-attr]
    assert root.find(".//failure") is None


def test_abort_after_stops_the_run_early(tmp_path: Path) -> None:
    with http_server(delay_s=0.002) as url:
        profile = tmp_path / "abort.toml"
        profile.write_text(STEADY_PROFILE.format(
            name="abort", target=url, duration="6s",
            slo='[[slo.windows]]\nwindow = "1s"\np99 = "1ms"\nabort_after = "0s"'))
        summary = tmp_path / "s.json"
        started = time.monotonic()
        proc = loadforge("run", str(profile), "--out", str(tmp_path / "results"), "--quiet",
                         "--summary-json", str(summary))
        took = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    data = json.loads(summary.read_text())
    assert data["aborted"] and "p99 over any 1s window" in data["aborted"]
    assert "aborted" in proc.stderr
    assert took < 5.5
    result = results.read_result(data["result"])
    assert max(r["end_ms"] for r in result.rows("interval", stage=None)) <= 4000
    assert os.path.exists(data["result"])


def test_compacted_interval_figures_judge_the_same() -> None:
    """An interval's buckets frozen into arrays read, add and subtract as the dict did, and a
    running sum that meets them thaws back into a dict."""
    from loadforge.analysis.slo import IntervalFigures, SparseBuckets

    h = hist.new_histogram()
    for v in (3, 3, 70, 1_500, 1_500, 1_500, 250_000):
        h.record_value(v)
    plain, frozen = IntervalFigures(sent=7), IntervalFigures(sent=7)
    plain.add_histogram(h)
    frozen.add_histogram(h)
    frozen.compact()
    assert isinstance(frozen.latency, SparseBuckets)
    assert dict(frozen.latency) == plain.latency and len(frozen.latency) == 4
    assert frozen.latency_stats() == plain.latency_stats() == hist.stats(h)
    total = IntervalFigures()
    total.add(frozen)
    total.add(plain)
    total.add(frozen, -1)
    assert total.latency == plain.latency and total.sent == 7
    frozen.add(plain)          # adding to a frozen figure thaws it
    assert isinstance(frozen.latency, dict)
    assert frozen.latency == {i: 2 * c for i, c in plain.latency.items()}


def test_4xx_fails_by_default_and_a_bare_rate_is_refused(tmp_path: Path) -> None:
    """k6's and Locust's default: a 401 is a failed request. 200 requests that all get 401
    breach error_rate=1% (exit 1), and the preflight says which setting would count them as
    successes; `error_rate=1` (100 %? 1 %?) is refused."""
    from servers import LoggingNginx

    server = LoggingNginx("$request", "    location /private {{ return 401; }}")
    try:
        summary_path = tmp_path / "s.json"
        out = loadforge("run", "--target", server.url + "/private", "--rate", "200",
                        "--duration", "1s", "--workers", "1", "--slo", "error_rate=1%",
                        "--out", str(tmp_path / "results"), "--summary-json",
                        str(summary_path))
        assert out.returncode == 1, out.stderr
        summary = json.loads(summary_path.read_text())
        assert summary["status"]["4xx"] == summary["errors"] == 200
        assert [v["ok"] for v in summary["slo"]] == [False]
        assert "returned 401" in out.stderr and 'load.fail_status = ["5xx"]' in out.stderr
        # The wait for late responses after the schedule is no progress frame of its own.
        assert "rps 0/0" not in out.stdout + out.stderr
        bare = loadforge("run", "--target", server.url + "/private", "--rate", "10",
                         "--duration", "1s", "--slo", "error_rate=1")
        assert bare.returncode == 2
        assert "write 1% or 0.01" in bare.stderr and "Traceback" not in bare.stderr
        assert len(bare.stderr.strip().splitlines()) == 1
    finally:
        server.stop()
