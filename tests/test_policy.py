"""The autoscaler's policy as a pure function: decisions from (time, metric, pool size) alone."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from loadforge.config.sandbox import validate_sandbox_config
from loadforge.sandbox.policy import AutoscalePolicy, Autoscaler


def policy(**autoscale: object) -> AutoscalePolicy:
    cfg = validate_sandbox_config({"autoscale": {"for": "3s", "cooldown": "5s", "min": 1,
                                                 "max": 4, "threshold": 0.8, **autoscale}})
    assert cfg.autoscale is not None
    return AutoscalePolicy.from_config(cfg.autoscale)


def run(scaler: Autoscaler, metrics: list[float], active: int) -> list[tuple[int, str, int]]:
    """Feed one metric a second; apply each decision to the pool; return (t, action, count)."""
    out = []
    for t, metric in enumerate(metrics):
        d = scaler.step(float(t), metric, active)
        if d.action != "hold":
            out.append((t, d.action, d.count))
            active += d.count if d.action == "out" else -d.count
    return out


def test_scales_out_after_the_metric_stays_above_for_its_duration():
    assert run(Autoscaler(policy()), [0.9] * 4, active=2) == [(3, "out", 1)]


def test_a_dip_restarts_the_for_window():
    assert run(Autoscaler(policy()), [0.9, 0.9, 0.5, 0.9, 0.9, 0.9, 0.9], active=2) == [
        (6, "out", 1)]


def test_cooldown_spaces_actions_and_max_caps_the_pool():
    # Above threshold throughout: out at 3, cooldown 5 s (and a new 3 s window) -> out at 8,
    # then max = 4 is reached and nothing more happens.
    assert run(Autoscaler(policy()), [0.95] * 20, active=2) == [(3, "out", 1), (8, "out", 1)]


def test_step_is_clamped_to_max():
    assert run(Autoscaler(policy(step=5)), [0.9] * 4, active=2) == [(3, "out", 2)]


def test_scale_in_below_its_threshold_down_to_min():
    p = policy(scale_in={"threshold": 0.2, "for": "2s", "step": 2})
    assert run(Autoscaler(p), [0.1] * 20, active=4) == [(2, "in", 2), (7, "in", 1)]


def test_scale_in_disabled_and_disabled_policy_hold():
    p = policy(scale_in={"enabled": False})
    assert run(Autoscaler(p), [0.0] * 20, active=4) == []
    assert run(Autoscaler(policy(enabled=False)), [1.0] * 20, active=1) == []


def test_between_thresholds_nothing_happens():
    assert run(Autoscaler(policy()), [0.6] * 60, active=2) == []


@given(st.lists(st.floats(min_value=0, max_value=1), max_size=80),
       st.integers(min_value=1, max_value=4))
def test_decisions_keep_the_pool_within_min_and_max(metrics, active):
    scaler = Autoscaler(policy(step=3, scale_in={"threshold": 0.3, "for": "1s", "step": 3}))
    for t, metric in enumerate(metrics):
        d = scaler.step(float(t), metric, active)
        active += d.count if d.action == "out" else -d.count if d.action == "in" else 0
        assert 1 <= active <= 4
