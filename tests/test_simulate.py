"""`loadforge simulate`: the issue's HPA scenario, the queueing model's known values, and the
result read back by the tools that read runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadforge.results.store import read_result
from loadforge.simulate import erlang_c

HPA = """\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 2
  maxReplicas: 10
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
"""

STEP = """\
name = "step"
[[stages]]
name = "before"
duration = "60s"
rate = 100
[[stages]]
name = "step"
duration = "300s"
rate = 400
[[stages]]
name = "after"
duration = "420s"
rate = 100
"""


def simulate(tmp_path: Path, profile: str, *args: str) -> tuple[int, dict[str, Any], str]:
    (tmp_path / "p.toml").write_text(profile)
    out = tmp_path / "summary.json"
    done = subprocess.run([sys.executable, "-m", "loadforge.cli", "simulate",
                           str(tmp_path / "p.toml"), "--out", str(tmp_path / "results"),
                           "--summary-json", str(out), "-q", *args],
                          capture_output=True, text=True, timeout=120)
    summary = json.loads(out.read_text()) if out.exists() else {}
    return done.returncode, summary, done.stderr


def replicas_at(timeline: list[dict[str, Any]], t: float) -> int:
    return [p["replicas"] for p in timeline if p["t_s"] <= t][-1]


def test_the_issue_scenario(tmp_path):
    (tmp_path / "hpa.yaml").write_text(HPA)
    code, s, err = simulate(tmp_path, STEP, "--policy", str(tmp_path / "hpa.yaml"),
                            "--replica-rps", "100", "--startup", "0s")
    assert code in (0, 1), err
    timeline = s["replicas"]
    assert timeline[0] == {"t_s": 0.0, "replicas": 2}
    assert all(replicas_at(timeline, t) == 2 for t in range(60))
    reached = min(p["t_s"] for p in timeline if p["replicas"] >= 8)
    assert 60 < reached <= 60 + 75
    assert replicas_at(timeline, 360 + 280) == 8         # the 300 s scale-down window holds
    assert replicas_at(timeline, 360 + 400) == 2
    # The cost: replica-seconds are the area under the timeline.
    area = sum((b["t_s"] - a["t_s"]) * a["replicas"]
               for a, b in zip(timeline, timeline[1:], strict=False))
    area += (780 - timeline[-1]["t_s"]) * timeline[-1]["replicas"]
    assert s["replica_seconds"] == pytest.approx(area)
    assert s["simulated"] is True and s["scheduled"] == 100 * 60 + 400 * 300 + 100 * 420
    # Scaling verdicts come from the metric rows, as for a rehearsal in the sandbox.
    step = next(st for st in s["stages"] if st["name"] == "step")
    assert step["scale_out"]["backends_source"] == "metric backends_ready"
    assert step["scale_out"]["backends_start"] == 2
    result = read_result(s["result"])
    assert result.metadata["simulated"] == "true"


def test_erlang_c_known_values():
    assert erlang_c(1, 0.5) == pytest.approx(0.5)          # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(4, 2.0) == pytest.approx(0.17391, abs=1e-5)


def test_below_capacity_latency_is_erlang_c(tmp_path):
    # 4 replicas of 100/s, 2 slots each (mu = 50/s a slot), at 200/s: each replica is an
    # M/M/2 queue at 50/s, W = C(2, a) / (c mu - lambda) + 1 / mu with a = 1.
    profile = 'name = "flat"\n[[stages]]\nduration = "30s"\nrate = 200\n'
    code, s, err = simulate(tmp_path, profile, "--replicas", "4", "--replica-rps", "100",
                            "--slots", "2")
    assert code == 0, err
    expected_us = (erlang_c(2, 1.0) / (100 - 50) + 0.02) * 1e6
    assert s["latency_us"]["mean"] == pytest.approx(expected_us, rel=0.1)
    assert s["errors"] == 0 and s["requests"] == 6000
    assert s["replicas"] == [{"t_s": 0.0, "replicas": 4}]


def test_overload_queues_then_times_out(tmp_path):
    profile = ('name = "over"\n[load]\ntimeout = "2s"\n'
               '[[stages]]\nduration = "20s"\nrate = 300\n[slo]\np99 = "1s"\n')
    code, s, err = simulate(tmp_path, profile, "--replicas", "2", "--replica-rps", "100",
                            "--slo", "error_rate=1%")
    assert code == 1, err                                 # the p99 objective fails
    assert s["errors_by_kind"]["timeout"] > 0
    assert {v["objective"]: v["ok"] for v in s["slo"]} == {"p99": False, "error_rate": False}
    # `ls` judges the file again, --slo objectives included.
    done = subprocess.run([sys.executable, "-m", "loadforge.cli", "ls", s["result"], "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout.splitlines()[0])
    assert listed["verdict"] == "FAIL 2/2" and set(listed["failed"]) == {"p99", "error_rate"}


def test_compare_reads_two_simulations(tmp_path):
    (tmp_path / "hpa.yaml").write_text(HPA)
    profile = 'name = "short"\n[[stages]]\nduration = "60s"\nrate = 300\n'
    a = simulate(tmp_path, profile, "--policy", str(tmp_path / "hpa.yaml"),
                 "--replica-rps", "100")[1]["result"]
    b = simulate(tmp_path, profile, "--policy", str(tmp_path / "hpa.yaml"),
                 "--replica-rps", "100", "--startup", "30s")[1]["result"]
    done = subprocess.run([sys.executable, "-m", "loadforge.cli", "compare", a, b],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("profile, args, message", [
    ('[[stages]]\nduration = "5s"\nconcurrency = 2\n', ["--replicas", "2", "--replica-rps", "10"],
     "every stage must be open-model"),
    ('[[stages]]\nduration = "5s"\nrate = 2\n', ["--replicas", "2"], "give --replica-rps"),
    ('[[stages]]\nduration = "5s"\nrate = 2\n', ["--replica-rps", "10"], "give --policy"),
    ('[[stages]]\nduration = "5s"\nrate = 2\n', ["--replica-rps", "0", "--replicas", "1"],
     "--replica-rps must be > 0"),
    ('[[stages]]\nduration = "5s"\nrate = 2\n', ["--policy", "/nonexistent/hpa.yaml",
                                                 "--replica-rps", "10"], "cannot read"),
])
def test_bad_input_is_exit_2(tmp_path, profile, args, message):
    code, _, err = simulate(tmp_path, profile, *args)
    assert code == 2, err
    assert message in err and "Traceback" not in err


SHORT_STEP = """\
name = "short-step"
[[stages]]
name = "before"
duration = "30s"
rate = 100
[[stages]]
name = "step"
duration = "120s"
rate = 400
[slo]
p99 = "500ms"
"""


def test_compare_gates_on_scaling_verdicts(tmp_path):
    (tmp_path / "hpa.yaml").write_text(HPA)
    common = ["--policy", str(tmp_path / "hpa.yaml"), "--replica-rps", "100"]
    fast = simulate(tmp_path, SHORT_STEP, *common, "--startup", "0s",
                    "--label", "startup=0s")[1]
    slow = simulate(tmp_path, SHORT_STEP, *common, "--startup", "40s",
                    "--label", "startup=40s")[1]
    # Not recovered by the stage's end (None) counts as the stage's length in compare.
    slow_s = slow["stages"][1]["time_to_recover_s"] or 120.0
    assert slow_s > fast["stages"][1]["time_to_recover_s"] + 20

    def compare(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "loadforge.cli", "compare", *args],
                              capture_output=True, text=True, timeout=120,
                              env={**__import__("os").environ, "COLUMNS": "200"})

    worse = compare(fast["result"], slow["result"], "--fail-on", "time_to_recover=+20s")
    assert worse.returncode == 1, worse.stderr
    assert "time_to_recover" in worse.stderr and "gate time_to_recover=+20s" in worse.stderr
    assert "time to recover" in worse.stdout and "replica-seconds" in worse.stdout
    better = compare(slow["result"], fast["result"], "--fail-on", "time_to_recover=+20s",
                     "--fail-on", "peak_replicas=+1", "--format", "json")
    assert better.returncode == 0, better.stderr
    data = json.loads(better.stdout)
    assert {c["metric"] for c in data["gates"]} == {"time_to_recover", "peak_replicas"}
    assert data["scaling"]["runs"][1]["stages"]["step"]["peak_replicas"] >= 8
    bad = compare(fast["result"], slow["result"], "--fail-on", "peak_replicas=+5s")
    assert bad.returncode == 2 and "a time applies to" in bad.stderr


def test_report_plots_replicas_beside_latency(tmp_path):
    import re

    from test_report import CHROMIUM, chromium

    (tmp_path / "hpa.yaml").write_text(HPA)
    s = simulate(tmp_path, SHORT_STEP, "--policy", str(tmp_path / "hpa.yaml"),
                 "--replica-rps", "100")[1]
    out = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "loadforge.cli", "report", s["result"],
                           "--html", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', text, re.S).group(1))
    replicas = {m["metric"]: m["points"] for m in data["runs"][0]["replicas"]}
    assert set(replicas) == {"backends_ready", "replicas"}
    assert max(v for _, v in replicas["replicas"]) >= 8
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: the page's data is checked, not its drawing")
    dom = chromium("--dump-dom", out.resolve().as_uri())
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', re.search(r"<body([^>]*)>", dom.stdout)
                            .group(1)))
    assert "data-errors" not in attrs, attrs.get("data-errors")
    # rate, latency, replicas, errors, one spectrum per stage (2)
    assert attrs.get("data-charts") == attrs.get("data-ready") == "6"
    assert "Replicas over time" in dom.stdout


def test_service_times_from_a_measured_run(tmp_path):
    profile = 'name = "flat"\n[[stages]]\nduration = "10s"\nrate = 50\n'
    first = simulate(tmp_path, profile, "--replicas", "4", "--replica-rps", "100")[1]
    code, s, err = simulate(tmp_path, profile, "--replicas", "4", "--service-from",
                            first["result"])
    assert code == 0, err
    sim = json.loads(read_result(s["result"]).metadata["simulation"])
    assert sim["distribution"] == "measured"
    # No --replica-rps: a replica's one slot serves at the measured mean service time.
    mean_s = first["service_time_us"]["mean"] / 1e6
    assert sim["replica_rps"] == pytest.approx(1 / mean_s, rel=0.05)
    code, _, err = simulate(tmp_path, profile, "--replicas", "4", "--service-from",
                            str(tmp_path / "none.parquet"))
    assert code == 2 and "Traceback" not in err
