"""Scaling verdicts: exact figures from synthetic result files, then whole runs against the
sandbox (spike against a slow and a fast autoscaler, shares per algorithm, a killed backend).

Every sandbox run is a few seconds of load and stops by itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

from loadforge.analysis import scaling
from loadforge.config.plan import Plan
from loadforge.config.profile import plan_from_dict
from loadforge.engine import histogram
from loadforge.results.store import ResultWriter, read_result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- synthetic results -----------------------------------------------------------------------

def _hist(latency_us: int, count: int) -> HdrHistogram:
    h = histogram.new_histogram()
    if count:
        h.record_value(latency_us, count)
    return h


def _plan(slo: dict[str, Any] | None = None, stages: tuple[tuple[str, int], ...] =
          (("base", 3), ("spike", 6)), **extra: Any) -> Plan:
    data: dict[str, Any] = {"target": "http://127.0.0.1:1",
                            "stages": [{"name": n, "rate": 100, "duration": f"{d}s"}
                                       for n, d in stages]}
    if slo:
        data["slo"] = slo
    data.update(extra)
    return plan_from_dict(data)


def _write(tmp_path: Path, intervals: list[dict[str, Any]],
           extra_rows: Sequence[dict[str, Any]] = ()) -> str:
    """intervals: {"i", "stage", "latency_us", "ok", "errors", "served": {backend: n}}."""
    path = str(tmp_path / "synthetic.parquet")
    with ResultWriter(path, "r", {"interval_ms": "1000"}) as writer:
        rows = []
        for iv in intervals:
            base = {"scope": "interval", "stage": iv["stage"], "start_ms": iv["i"] * 1000,
                    "end_ms": iv["i"] * 1000 + 1000}
            ok, errors = iv.get("ok", 100), iv.get("errors", 0)
            served = iv.get("served") or {"*": ok}
            for backend, n in served.items():
                rows.append({**base, "name": "r", "outcome": "2xx", "backend": backend,
                             "count": n, "latency": _hist(iv["latency_us"], n),
                             "service": _hist(100, n)})
            if errors:
                rows.append({**base, "name": "r", "outcome": "5xx", "backend": "*",
                             "count": errors, "latency": _hist(1000, errors),
                             "service": _hist(100, errors)})
            rows.append({**base, "name": "*", "outcome": "*", "backend": "*",
                         "count": ok + errors, "scheduled": ok + errors,
                         "latency": _hist(iv["latency_us"], ok + errors),
                         "service": _hist(100, ok + errors)})
        writer.write(rows + list(extra_rows))
    return path


def _series(stage_of: list[str], latency: list[int], **per: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, (stage, lat) in enumerate(zip(stage_of, latency, strict=True)):
        iv: dict[str, Any] = {"i": i, "stage": stage, "latency_us": lat}
        for key, values in per.items():
            iv[key] = values[i]
        out.append(iv)
    return out


STAGES = ["base"] * 3 + ["spike"] * 6
SLO = {"stages": [{"stage": "spike", "p99": "100ms", "time_to_recover": "4s"}]}


def test_recovery_violation_and_verdicts(tmp_path: Path) -> None:
    # p99 over 100 ms for the spike's first 3 intervals, back under it for the last 3.
    path = _write(tmp_path, _series(STAGES, [2000] * 3 + [900_000] * 3 + [5000] * 3))
    analysis = scaling.analyze(_plan(SLO), read_result(path))
    spike = analysis["stages"]["spike"]
    assert spike["violation_s"] == 3.0
    assert spike["time_to_recover_s"] == 3.0
    assert spike["recovered"] is True and spike["first_violation_s"] == 0.0
    (verdict,) = analysis["slo"]
    assert verdict["ok"] and verdict["observed"] == 3_000_000 and verdict["limit"] == 4_000_000
    # No objective for "base" and none for the run: nothing to recover to.
    assert analysis["stages"]["base"]["recovered"] is None


def test_relapse_counts_and_never_recovered_fails(tmp_path: Path) -> None:
    lat = [2000] * 3 + [900_000, 5000, 5000, 900_000, 5000, 900_000]
    path = _write(tmp_path, _series(STAGES, lat))
    spike = scaling.analyze(_plan(SLO), read_result(path))["stages"]["spike"]
    assert spike["violation_s"] == 3.0
    assert spike["recovered"] is False and spike["time_to_recover_s"] is None
    verdict = scaling.analyze(_plan(SLO), read_result(path))["slo"][0]
    assert not verdict["ok"] and verdict["observed"] == 6_000_000
    assert verdict["note"] == "not recovered by the stage's end"


def test_windowed_recovery_uses_trailing_windows(tmp_path: Path) -> None:
    path = _write(tmp_path, _series(STAGES, [2000] * 3 + [900_000] * 2 + [5000] * 4))
    plan = _plan(SLO, observe={"window": "2s"})
    spike = scaling.analyze(plan, read_result(path))["stages"]["spike"]
    # Windows ending at spike+2s still hold the slow interval at spike+1s.
    assert spike["time_to_recover_s"] == 3.0 and spike["violation_s"] == 3.0


def test_run_objectives_apply_when_the_stage_has_none(tmp_path: Path) -> None:
    errors = [0] * 3 + [10, 10, 0, 0, 0, 0]
    path = _write(tmp_path, _series(STAGES, [2000] * 9, errors=errors))
    plan = _plan({"error_rate": "1%", "time_to_recover": "1s"})
    analysis = scaling.analyze(plan, read_result(path))
    spike = analysis["stages"]["spike"]
    assert spike["time_to_recover_s"] == 2.0 and spike["violation_s"] == 2.0
    # 20 errors out of 620 ended arrivals, with 1 % allowed.
    assert spike["error_budget_burn"] == pytest.approx(20 / (0.01 * 620), rel=1e-3)
    (verdict,) = analysis["slo"]
    assert verdict["scope"] == "run" and not verdict["ok"] and "spike" in verdict["name"]


def test_scale_out_timeline_from_attribution_and_metric(tmp_path: Path) -> None:
    served = [{"b1": 50, "b2": 50}] * 3 + [{"b1": 50, "b2": 50}] * 2 + \
        [{"b1": 34, "b2": 33, "b3": 33}] * 4
    metric_rows = [{"scope": "metric", "stage": "spike", "name": "backends_ready",
                    "outcome": "*", "backend": "*", "start_ms": t, "end_ms": t, "count": 1,
                    "value": v}
                   for t, v in ((2500, 2.0), (3500, 2.0), (4500, 3.0), (5500, 3.0),
                                (6500, 4.0), (7500, 4.0))]
    path = _write(tmp_path, _series(STAGES, [2000] * 9, served=served), metric_rows)
    analysis = scaling.analyze(_plan(), read_result(path))
    so = analysis["stages"]["spike"]["scale_out"]
    assert so["first_new_backend_s"] == 2.0 and so["new_backends"] == ["b3"]
    assert so["settle_s"] == 3.5
    assert (so["backends_start"], so["backends_end"], so["backends_max"]) == (2.0, 4.0, 4.0)
    assert analysis["metrics"]["backends_ready"]["samples"] == 6
    assert analysis["stages"]["base"]["scale_out"]["new_backends"] == []


def test_failover_figures_and_objective(tmp_path: Path) -> None:
    served = [{"b1": 50, "b2": 50}] * 4 + [{"b1": 50, "b2": 10}] + [{"b1": 90}] * 4
    errors = [0] * 4 + [30, 20, 0, 0, 0]
    action = {"scope": "action", "stage": "spike", "name": "sandbox kill b2", "outcome": "ok",
              "backend": "b2", "start_ms": 4200, "end_ms": 4210, "count": 1, "value": None}
    path = _write(tmp_path, _series(STAGES, [2000] * 9, served=served, errors=errors,
                                    ok=[100] * 4 + [60] + [90] * 4), [action])
    plan = _plan({"failover": "2s", "stages": [{"stage": "spike", "failover": "1s"}]})
    analysis = scaling.analyze(plan, read_result(path))
    (a,) = analysis["actions"]
    f = a["failover"]
    assert f["errors"] == 50
    assert (f["first_error_s"], f["last_error_s"], f["failover_s"]) == (4.2, 6.0, 1.8)
    assert f["backend_out_s"] == pytest.approx(0.8) and f["backend_requests_after"] == 10
    run_v, stage_v = analysis["slo"]
    assert run_v["ok"] and run_v["observed"] == pytest.approx(1_800_000)
    assert not stage_v["ok"] and stage_v["stage"] == "spike"


def test_failover_objective_without_actions_fails(tmp_path: Path) -> None:
    path = _write(tmp_path, _series(STAGES, [2000] * 9))
    (v,) = scaling.analyze(_plan({"failover": "30s"}), read_result(path))["slo"]
    assert not v["ok"] and v["observed"] is None and v["note"] == "no action to fail over from"


# -- the sandbox -----------------------------------------------------------------------------

def loadforge(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadforge.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def run_profile(tmp_path: Path, text: str, expect: int) -> dict[str, Any]:
    profile = tmp_path / "p.toml"
    profile.write_text(text)
    summary = tmp_path / "s.json"
    out = loadforge("run", str(profile), "--quiet", "--workers", "1", "--out",
                    str(tmp_path / "results"), "--summary-json", str(summary))
    assert out.returncode == expect, out.stdout + out.stderr
    data: dict[str, Any] = json.loads(summary.read_text())
    return data


SPIKE = """
target = "sandbox"
[load]
connections = 128
timeout = "3s"
[sandbox]
backends = 1
backend = {{ service_time = "10ms", concurrency = 4, queue = 4000 }}
[sandbox.autoscale]
threshold = 0.7
for = "1s"
step = 2
cooldown = "5s"
min = 1
max = 3
startup_delay = "{startup}"
scale_in = {{ enabled = false }}
[[stages]]
name = "base"
rate = 150
duration = "2s"
[[stages]]
name = "spike"
rate = 600
duration = "10s"
[[slo.stages]]
stage = "spike"
grace = "8s"
p99 = "100ms"
time_to_recover = "8s"
"""


@pytest.mark.parametrize(("startup", "expect"), [("30s", 1), ("500ms", 0)])
def test_spike_recovers_only_with_a_fast_autoscaler(tmp_path: Path, startup: str,
                                                    expect: int) -> None:
    s = run_profile(tmp_path, SPIKE.format(startup=startup), expect)
    spike = s["stages"][1]
    verdict = next(v for v in s["slo"] if v["objective"] == "time_to_recover")
    assert spike["violation_s"] > 0          # the spike breaches either way
    if expect:
        assert spike["recovered"] is False and not verdict["ok"]
        assert spike["scale_out"]["new_backends"] == []
    else:
        assert spike["recovered"] is True and verdict["ok"]
        assert 0 < spike["time_to_recover_s"] <= 8
        so = spike["scale_out"]
        assert so["new_backends"] == ["backend-2", "backend-3"]
        assert so["first_new_backend_s"] is not None and so["backends_end"] == 3
        assert so["backends_source"] == "metric backends_ready"


SHARES = """
target = "sandbox"
[sandbox]
algorithm = "{algorithm}"
backends = 3
{weights}
[[stages]]
rate = 600
duration = "3s"
"""


@pytest.mark.parametrize(("algorithm", "weights", "expected"), [
    ("round_robin", "", {"backend-1": 1 / 3, "backend-2": 1 / 3, "backend-3": 1 / 3}),
    ("weighted_round_robin", "weights = [1, 2, 3]",
     {"backend-1": 1 / 6, "backend-2": 2 / 6, "backend-3": 3 / 6}),
])
def test_shares_follow_the_algorithm(tmp_path: Path, algorithm: str, weights: str,
                                     expected: dict[str, float]) -> None:
    s = run_profile(tmp_path, SHARES.format(algorithm=algorithm, weights=weights), 0)
    shares = {name: b["share"] for name, b in s["backends"].items()}
    assert shares == pytest.approx(expected, abs=0.02)
    assert s["stages"][0]["backends"].keys() == expected.keys()
    jain = s["fairness"]["jain"]
    assert jain == pytest.approx(1.0, abs=0.01) if algorithm == "round_robin" else jain < 0.9
    # The sandbox's metrics were observed without any [observe] table.
    assert s["metrics"]["backends"]["last"] == 3 and s["metrics"]["backends"]["missing"] == 0
    result = read_result(s["result"])
    rows = result.rows("metric", name="backends_ready", outcome=None)
    assert len(rows) >= 2 and all(r["value"] == 3 for r in rows)


KILL = """
target = "sandbox"
[load]
timeout = "2s"
[sandbox]
backends = 3
backend = {{ service_time = "1ms" }}
health = {{ interval = "500ms", timeout = "250ms", unhealthy_threshold = 2 }}
[[stages]]
name = "before"
rate = 300
duration = "3s"
[[stages]]
name = "after"
rate = 300
duration = "4s"
[[actions]]
at = "2.5s"
sandbox = "kill"
backend = "backend-2"
[slo]
failover = "{failover}"
"""


def test_killed_backend_detected_and_timed(tmp_path: Path) -> None:
    s = run_profile(tmp_path, KILL.format(failover="10s"), 0)
    (action,) = s["actions"]
    assert action["ok"] and action["name"] == "sandbox kill backend-2"
    assert action["started_s"] == pytest.approx(2.5, abs=0.2)
    f = action["failover"]
    # 502s from the kill until two failed health checks take it out: about a second.
    assert f["errors"] > 0 and 0 < f["failover_s"] <= 3
    assert 2.4 <= f["first_error_s"] <= f["last_error_s"] <= 6
    assert f["backend_out_s"] is not None and f["backend_out_s"] <= 1.0
    after = s["stages"][1]["backends"]
    assert "backend-2" not in after and set(after) == {"backend-1", "backend-3"}
    verdict = next(v for v in s["slo"] if v["objective"] == "failover")
    assert verdict["ok"] and verdict["observed"] == pytest.approx(f["failover_s"] * 1e6)
    result = read_result(s["result"])
    (row,) = result.rows("action", name=None, outcome=None)
    assert row["outcome"] == "ok" and row["backend"] == "backend-2"


def test_failover_objective_fails_the_run(tmp_path: Path) -> None:
    s = run_profile(tmp_path, KILL.format(failover="0s"), 1)
    assert not next(v for v in s["slo"] if v["objective"] == "failover")["ok"]


@pytest.mark.parametrize(("snippet", "message"), [
    ('[sandbox.autoscale]\nmetric = "latency"', "sandbox.autoscale.metric must be one of"),
    ("[sandbox.autoscale]\nmin = 5\nmax = 3", "sandbox.autoscale.min must be <= max"),
    ('[sandbox.autoscale]\ncooldown = "-5s"', "sandbox.autoscale.cooldown must not be negative"),
    ('[[actions]]\nat = "1s"\nsandbox = "explode"\nbackend = "backend-1"',
     "actions[0].sandbox must be one of kill, revive, add"),
    ('[[actions]]\nat = "-1s"\nrun = "true"', "actions[0].at must not be negative"),
    ('[[actions]]\nat = "1s"\nreboot = "backend-1"', "actions[0] has unknown key 'reboot'"),
    ('[[actions]]\nat = "1s"\nsandbox = "kill"', 'sandbox = "kill" needs backend'),
    ('[observe]\nmetrics = [{ url = "nowhere", metric = "up" }]',
     "observe.metrics[0].url must be an http"),
])
def test_bad_policy_or_action_exits_2_naming_it(tmp_path: Path, snippet: str,
                                               message: str) -> None:
    profile = tmp_path / "bad.toml"
    profile.write_text('target = "sandbox"\n[[stages]]\nrate = 10\nduration = "2s"\n'
                       + snippet + "\n")
    out = loadforge("run", str(profile), "--quiet", "--out", str(tmp_path))
    assert out.returncode == 2, out.stderr
    assert message in " ".join(out.stderr.split()), out.stderr
    assert "bad.toml" in out.stderr


def test_sandbox_action_needs_the_sandbox(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('target = "http://127.0.0.1:9"\n[[stages]]\nrate = 10\nduration = "2s"\n'
                       '[[actions]]\nat = "1s"\nsandbox = "kill"\nbackend = "backend-1"\n')
    out = loadforge("run", str(profile), "--quiet", "--no-preflight", "--out", str(tmp_path))
    assert out.returncode == 2 and "sandbox action needs target" in out.stderr
