"""The Kubernetes HPA as a pure policy: the documentation's worked behaviours, step by step.

Each test drives `HPA.step` with pods whose metrics are given, applies its decision to the
replica count, and checks what the Kubernetes documentation ("Horizontal Pod Autoscaling":
algorithm details, configurable scaling behavior) says the controller does.
"""

from __future__ import annotations

from typing import Any

import pytest

from loadforge.config.hpa import HPASpec, load_hpa, parse_hpa, parse_quantity
from loadforge.errors import ProfileError
from loadforge.sandbox.hpa import HPA, PodSample


def manifest(target: int = 50, min_r: int = 1, max_r: int = 10,
             behavior: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": min_r, "maxReplicas": max_r,
        "metrics": [{"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}}}],
    }
    if behavior is not None:
        spec["behavior"] = behavior
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"}, "spec": spec}


def pods(n: int, utilization: float) -> list[PodSample]:
    return [PodSample(True, utilization=utilization)] * n


def drive(hpa: HPA, replicas: int, load: list[float], period: float = 15.0) -> list[int]:
    """`load` is the demand in replicas' worth of CPU at each sync; pods are ready at once and
    share it evenly (no CPU limit: utilization may pass 100 %). Returns the replica count after
    each sync."""
    out = []
    for i, demand in enumerate(load):
        util = demand / replicas
        replicas = hpa.step(i * period, replicas, pods(replicas, util)).desired
        out.append(replicas)
    return out


def test_defaults_when_behavior_is_absent():
    spec = parse_hpa(manifest())
    assert spec.tolerance == 0.1 and spec.sync_period_s == 15
    assert spec.scale_up.stabilization_s == 0 and spec.scale_up.select == "Max"
    assert {(p.type, p.value, p.period_s) for p in spec.scale_up.policies} == {
        ("Percent", 100, 15), ("Pods", 4, 15)}
    assert spec.scale_down.stabilization_s == 300
    assert [(p.type, p.value, p.period_s) for p in spec.scale_down.policies] == [
        ("Percent", 100, 15)]
    assert HPASpec.from_dict(spec.to_dict()) == spec


def test_the_docs_ratio_example_doubles_and_halves():
    # "if the current metric value is 200m, and the desired value is 100m, the number of
    # replicas will be doubled"; 50m halves it (past the scale-down window).
    doc = manifest(max_r=20)
    doc["spec"]["metrics"][0]["resource"]["target"] = {"type": "AverageValue",
                                                      "averageValue": "100m"}
    hpa = HPA(parse_hpa(doc))
    assert hpa.step(0, 4, pods(4, 0.2)).desired == 8
    doc["spec"]["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": 0}}
    hpa = HPA(parse_hpa(doc))
    assert hpa.step(0, 4, pods(4, 0.05)).desired == 2


@pytest.mark.parametrize("utilization, expected", [
    (0.54, 4), (0.46, 4), (0.5, 4),          # within 10 % of the 50 % target: no change
    (0.56, 5), (0.6, 5), (0.75, 6)])         # outside: ceil(ratio x 4)
def test_tolerance_band(utilization, expected):
    hpa = HPA(parse_hpa(manifest()))
    assert hpa.step(0, 4, pods(4, utilization)).desired == expected


def test_a_direction_may_have_its_own_tolerance():
    # Kubernetes 1.33's behavior.scaleUp.tolerance: 5 % up, the default 10 % down.
    hpa = HPA(parse_hpa(manifest(max_r=20, behavior={"scaleUp": {"tolerance": "0.05"},
                                           "scaleDown": {"stabilizationWindowSeconds": 0}})))
    assert hpa.step(0, 10, pods(10, 0.53)).desired == 11        # 1.06 > 1.05: up
    assert hpa.step(15, 10, pods(10, 0.47)).desired == 10       # 0.94 within 10 % down
    with pytest.raises(ProfileError, match="tolerance must be below 1"):
        parse_hpa(manifest(behavior={"scaleUp": {"tolerance": 2}}))


def test_tolerance_then_scale_down_outside_it():
    hpa = HPA(parse_hpa(manifest(behavior={"scaleDown": {"stabilizationWindowSeconds": 0}})))
    assert hpa.step(0, 10, pods(10, 0.46)).desired == 10
    assert hpa.step(15, 10, pods(10, 0.40)).desired == 8     # ceil(0.8 x 10)


def test_scale_up_is_limited_by_the_default_policies():
    # Demand for 40 replicas from 1: the larger of +100 % and +4 pods per 15 s.
    hpa = HPA(parse_hpa(manifest(target=100, max_r=100)))
    assert drive(hpa, 1, [40.0] * 6) == [5, 10, 20, 40, 40, 40]


def test_scale_up_policies_count_changes_within_their_period():
    # Only 2 pods per 60 s: the second sync within the minute may add nothing more.
    behavior = {"scaleUp": {"policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]}}
    hpa = HPA(parse_hpa(manifest(target=100, max_r=50, behavior=behavior)))
    assert drive(hpa, 2, [20.0] * 9) == [4, 4, 4, 4, 6, 6, 6, 6, 8]


def test_scale_down_window_holds_replicas_for_300_s():
    hpa = HPA(parse_hpa(manifest(target=50, max_r=10)))
    r = 8
    for i in range(4):
        r = hpa.step(i * 15.0, r, pods(r, 0.5)).desired       # at target: 8 recommended
    assert r == 8
    held = []
    for i in range(4, 40):
        r = hpa.step(i * 15.0, r, pods(r, 1.0 / r)).desired  # 2 replicas' worth at 50 %
        held.append((i * 15.0, r))
    # The last recommendation of 8 was at t = 45 s: it leaves the window at t = 345 s, and the
    # default policy (100 % per 15 s) then goes straight to the recommendation.
    assert {r for t, r in held if t < 345} == {8}
    assert {r for t, r in held if t >= 345} == {2}


def test_select_policy_min_takes_the_smaller_change():
    # The docs' example: scale down by 4 pods or 10 % per minute; with 80 replicas 10 % is 8
    # pods, so Max removes 8 and Min removes 4.
    policies = [{"type": "Pods", "value": 4, "periodSeconds": 60},
                {"type": "Percent", "value": 10, "periodSeconds": 60}]
    for select, expected in (("Max", 72), ("Min", 76)):
        behavior = {"scaleDown": {"stabilizationWindowSeconds": 0, "selectPolicy": select,
                                  "policies": policies}}
        hpa = HPA(parse_hpa(manifest(target=50, max_r=100, behavior=behavior)))
        assert hpa.step(0, 80, pods(80, 0.1)).desired == expected


def test_a_disabled_direction_never_moves():
    behavior = {"scaleDown": {"selectPolicy": "Disabled"}}
    hpa = HPA(parse_hpa(manifest(target=50, behavior=behavior)))
    assert [hpa.step(i * 15.0, 6, pods(6, 0.05)).desired for i in range(40)] == [6] * 40
    assert hpa.step(600, 6, pods(6, 1.0)).desired == 10          # up still works
    behavior = {"scaleUp": {"selectPolicy": "Disabled"}}
    hpa = HPA(parse_hpa(manifest(target=50, behavior=behavior)))
    assert hpa.step(0, 3, pods(3, 1.0)).desired == 3


def test_min_and_max_clamp():
    hpa = HPA(parse_hpa(manifest(min_r=2, max_r=5)))
    assert hpa.step(0, 4, pods(4, 1.0)).desired == 5
    assert hpa.step(15, 1, pods(1, 0.5)).desired == 2             # below min: raised
    assert hpa.step(30, 9, pods(9, 0.5)).desired == 5             # above max: lowered


def test_not_ready_pods_count_as_idle_on_a_scale_up():
    # 2 ready pods at 100 % of a 50 % target would ask for 4; 2 starting pods counted at 0 %
    # give (1 + 1 + 0 + 0) / 4 / 0.5 = 1.0: no change.
    hpa = HPA(parse_hpa(manifest()))
    starting = [PodSample(False)] * 2
    assert hpa.step(0, 4, pods(2, 1.0) + starting).desired == 4
    # Ready pods at 100 % with one starting: (1 + 1 + 1 + 0) / 4 / 0.5 = 1.5 -> 6.
    assert hpa.step(15, 4, pods(3, 1.0) + starting[:1]).desired == 6


def test_missing_metrics_damp_both_directions():
    hpa = HPA(parse_hpa(manifest(behavior={"scaleDown": {"stabilizationWindowSeconds": 0}})))
    missing = [PodSample(True)]
    # Scale-down: the missing pod is taken at the target (100 % of it): 3 x 0.1 + 0.5 over 4 is
    # 0.2 -> ratio 0.4 -> ceil(1.6) = 2 instead of ceil(0.2 x 3) = 1 (min 1).
    assert hpa.step(0, 4, pods(3, 0.1) + missing).desired == 2
    # Scale-up: the missing pod is taken at 0 %: (0.6 x 3 + 0) / 4 = 0.45: within tolerance.
    assert hpa.step(15, 4, pods(3, 0.6) + missing).desired == 4


def test_no_metric_at_all_holds():
    hpa = HPA(parse_hpa(manifest()))
    d = hpa.step(0, 3, [PodSample(True)] * 3)
    assert d.desired == 3 and "no metrics" in d.reason


def test_pods_and_object_metrics_map_to_the_model():
    doc = manifest(max_r=20)
    doc["spec"]["metrics"] = [
        {"type": "Pods", "pods": {"metric": {"name": "http_requests_per_second"},
                                  "target": {"type": "AverageValue", "averageValue": "100"}}},
        {"type": "Object", "object": {
            "describedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                                "name": "main"},
            "metric": {"name": "inflight_requests"},
            "target": {"type": "Value", "value": "40"}}},
    ]
    spec = parse_hpa(doc)
    assert [m.source for m in spec.metrics] == ["rps", "inflight"]
    hpa = HPA(spec)
    samples = [PodSample(True, utilization=0.5, inflight=5.0, rps=150.0)] * 4
    # Pods: 150 / 100 x 4 = 6; Object: 20 in flight in all / 40 = 0.5 -> 2; the largest wins.
    assert hpa.step(0, 4, samples).desired == 6


def test_quantities():
    assert parse_quantity("500m", "x") == 0.5
    assert parse_quantity("1Mi", "x") == 1 << 20
    assert parse_quantity(3, "x") == 3.0
    with pytest.raises(ProfileError, match="quantity"):
        parse_quantity("fast", "x")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(apiVersion="autoscaling/v1"), "apiVersion must be autoscaling/v2"),
    (lambda d: d["spec"].update(minReplicas=5, maxReplicas=3), "minReplicas must be <="),
    (lambda d: d["spec"]["metrics"][0].update(type="External"), "External is not modelled"),
    (lambda d: d["spec"].update(behavior={"scaleUp": {"selectPolicy": "Most"}}),
     "selectPolicy must be Max, Min or Disabled"),
    (lambda d: d["spec"].update(behavior={"scaleDown": {"policies": [
        {"type": "Percent", "value": 10}]}}), "periodSeconds must be an integer"),
    (lambda d: d["spec"]["metrics"][0]["resource"].update(name="gpu"), "cpu or memory"),
])
def test_bad_manifests_name_the_field(edit, message):
    doc = manifest()
    edit(doc)
    with pytest.raises(ProfileError, match=message):
        parse_hpa(doc)


def test_load_hpa_reads_yaml(tmp_path):
    path = tmp_path / "hpa.yaml"
    path.write_text("""\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: api}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: api}
  minReplicas: 2
  maxReplicas: 10
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
""")
    spec = load_hpa(str(path))
    assert (spec.name, spec.min_replicas, spec.max_replicas) == ("api", 2, 10)
    path.write_text("apiVersion: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_hpa(str(path))
    with pytest.raises(ProfileError, match="cannot read"):
        load_hpa(str(tmp_path / "none.yaml"))


# -- the sandbox with `[sandbox.autoscale] hpa = "hpa.yaml"` ---------------------------------

HPA_YAML = """\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 1}
"""


def test_sandbox_config_reads_the_hpa_beside_the_profile(tmp_path):
    from loadforge.config.profile import load_profile
    from loadforge.config.sandbox import validate_sandbox_config

    (tmp_path / "hpa.yaml").write_text(HPA_YAML)
    profile = tmp_path / "p.toml"
    profile.write_text('[[stages]]\nduration = "1s"\nrate = 1\n'
                       '[sandbox.autoscale]\nhpa = "hpa.yaml"\nstartup_delay = "0s"\n')
    plan = load_profile(str(profile))
    assert plan.sandbox is not None and plan.sandbox.autoscale is not None
    a = plan.sandbox.autoscale
    assert (a.min, a.max, a.evaluation_interval_s, a.hpa_path) == (1, 3, 15.0, "hpa.yaml")
    assert a.hpa is not None and HPASpec.from_dict(a.hpa).max_replicas == 3
    assert plan.sandbox.backends == 3           # the default 4, clamped to maxReplicas
    # Through JSON to the subprocess and back, unchanged.
    from loadforge.config.sandbox import SandboxConfig
    back = SandboxConfig.from_json(plan.sandbox.to_json()).autoscale
    assert back is not None and back.hpa is not None
    assert HPASpec.from_dict(back.hpa) == HPASpec.from_dict(a.hpa)
    with pytest.raises(ProfileError, match="hpa and sandbox.autoscale.threshold cannot both"):
        validate_sandbox_config({"autoscale": {"hpa": "hpa.yaml", "threshold": 0.5}},
                                base_dir=str(tmp_path))
    with pytest.raises(ProfileError, match="sandbox.autoscale.hpa: cannot read"):
        validate_sandbox_config({"autoscale": {"hpa": "nope.yaml"}}, base_dir=str(tmp_path))
    with pytest.raises(ProfileError, match="sync_period is only used with hpa"):
        validate_sandbox_config({"autoscale": {"sync_period": "5s"}})


def test_bad_hpa_in_a_profile_is_exit_2(tmp_path):
    import subprocess
    import sys

    (tmp_path / "hpa.yaml").write_text(HPA_YAML.replace("maxReplicas: 3", "maxReplicas: 0"))
    profile = tmp_path / "p.toml"
    profile.write_text('[[stages]]\nduration = "1s"\nrate = 1\n'
                       '[sandbox.autoscale]\nhpa = "hpa.yaml"\n')
    done = subprocess.run([sys.executable, "-m", "loadforge.cli", "run", str(profile)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "maxReplicas must be an integer >= 1" in done.stderr
    assert "Traceback" not in done.stderr


def test_sandbox_scales_with_the_hpa(tmp_path):
    import threading

    import httpx
    from test_sandbox import _load, metric, wait_for

    from loadforge.sandbox import start_sandbox, validate_sandbox_config

    (tmp_path / "hpa.yaml").write_text(HPA_YAML)
    cfg = validate_sandbox_config({
        "backends": 1,
        "backend": {"service_time": "20ms", "concurrency": 2, "queue": 64},
        "health": {"interval": "500ms", "timeout": "500ms"},
        "autoscale": {"hpa": "hpa.yaml", "sync_period": "300ms", "startup_delay": "100ms"},
    }, base_dir=str(tmp_path))
    with start_sandbox(cfg) as sb, httpx.Client(trust_env=False, timeout=5) as client:
        stop = threading.Event()
        threads = _load(sb.url + "/", stop, clients=6)     # 6 clients, 2 slots a backend
        try:
            wait_for(lambda: metric(client.get(sb.metrics_url).text,
                                    "sandbox_backends_ready") == 3, 10.0, "3 backends ready")
            assert metric(client.get(sb.metrics_url).text, "sandbox_backends") == 3  # max
        finally:
            stop.set()
            for t in threads:
                t.join(5)
        # Idle: after the 1 s scale-down window, back to minReplicas.
        wait_for(lambda: metric(client.get(sb.metrics_url).text, "sandbox_backends") == 1,
                 10.0, "scale in to minReplicas")
        events = [e["event"] for e in sb.state()["events"]]
        assert any(e.startswith("scale out: HPA Resource cpu") for e in events), events
        assert any(e.startswith("scale in: HPA") for e in events), events


def test_sandbox_command_names_the_hpa(tmp_path):
    import subprocess
    import sys

    from servers import free_port

    (tmp_path / "hpa.yaml").write_text(HPA_YAML)
    (tmp_path / "sb.toml").write_text('[sandbox.autoscale]\nhpa = "hpa.yaml"\n')
    proc = subprocess.Popen([sys.executable, "-m", "loadforge.cli", "sandbox", "--config",
                             str(tmp_path / "sb.toml"), "--port", str(free_port()),
                             "--admin-port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(10)
    assert "HPA web: 1..3 replicas, Resource cpu Utilization 50%, sync every 15s" in lines[1]
