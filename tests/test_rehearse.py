"""The same profile and HPA simulated (loadforge simulate) and rehearsed in the sandbox
(loadforge run, [sandbox.autoscale] hpa): the model and the rehearsal agree on what the policy
does. Time is compressed (sync every 2 s, a 20 s scale-down window) so that the rehearsal
takes 80 s; one replica is one 10 ms slot, 100 requests/s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from loadforge.analysis import backends
from loadforge.results.store import read_result

SYNC_S = 2.0
HPA = """\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: rehearse}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 2
  maxReplicas: 10
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 60}}
  behavior:
    scaleUp:
      policies: [{type: Percent, value: 100, periodSeconds: 2},
                 {type: Pods, value: 4, periodSeconds: 2}]
    scaleDown:
      stabilizationWindowSeconds: 20
      policies: [{type: Percent, value: 100, periodSeconds: 2}]
"""
PROFILE = """\
name = "rehearse"
[load]
connections = 512
[[stages]]
name = "before"
duration = "10s"
rate = 100
[[stages]]
name = "spike"
duration = "30s"
rate = 400
[[stages]]
name = "after"
duration = "40s"
rate = 100
[slo]
p99 = "200ms"
[sandbox]
backends = 2
[sandbox.backend]
service_time = "10ms"
concurrency = 1
queue = 100000
[sandbox.health]
enabled = false
[sandbox.autoscale]
hpa = "hpa.yaml"
sync_period = "2s"
startup_delay = "0s"
"""


def loadforge(*args: str) -> dict[str, Any]:
    out = Path(args[args.index("--summary-json") + 1])
    done = subprocess.run([sys.executable, "-m", "loadforge.cli", *args], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    return dict(json.loads(out.read_text()))


def timeline(summary: dict[str, Any], metric: str) -> list[tuple[float, float]]:
    """(time, count) at each change of a replica metric of the result."""
    series = backends.metric_series(read_result(summary["result"]))[metric]
    out: list[tuple[float, float]] = []
    for t, v in series:
        if v is not None and (not out or out[-1][1] != v):
            out.append((t / 1000, v))
    return out


def at(points: list[tuple[float, float]], t: float) -> float:
    return [v for s, v in points if s <= t][-1]


def test_simulated_and_rehearsed_agree(tmp_path):
    (tmp_path / "hpa.yaml").write_text(HPA)
    (tmp_path / "p.toml").write_text(PROFILE)
    profile = str(tmp_path / "p.toml")
    sim = loadforge("simulate", profile, "--out", str(tmp_path / "sim"), "-q",
                    "--summary-json", str(tmp_path / "sim.json"))
    run = loadforge("run", profile, "--workers", "1", "--out", str(tmp_path / "run"), "-q",
                    "--summary-json", str(tmp_path / "run.json"))
    modelled = timeline(sim, "replicas")
    rehearsed = timeline(run, "backends")       # the sandbox's own count, polled each second
    assert at(modelled, 9) == at(rehearsed, 9) == 2
    # The first scale-out: within one sync period (and the 1 s poll) of each other.
    first_model = next(t for t, v in modelled if v > 2)
    first_sandbox = next(t for t, v in rehearsed if v > 2)
    assert abs(first_model - first_sandbox) <= SYNC_S + 1, (modelled, rehearsed)
    # The same peak, give or take a replica, and both back to minReplicas by the end.
    assert abs(max(v for _, v in modelled) - max(v for _, v in rehearsed)) <= 1
    assert modelled[-1][1] == rehearsed[-1][1] == 2
    # Times to recover from the spike within 20 %, or one sync period: scaling happens only
    # at syncs, and the sandbox's sync phase against the load step (it starts before the
    # run) is one the model cannot know.
    model_s = sim["stages"][1]["time_to_recover_s"]
    sandbox_s = run["stages"][1]["time_to_recover_s"]
    assert model_s is not None and sandbox_s is not None
    assert abs(model_s - sandbox_s) <= max(0.2 * sandbox_s, SYNC_S), (model_s, sandbox_s)
