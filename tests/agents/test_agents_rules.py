"""Rule baselines and the allocation they share (no simulator needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fleet_fixtures import make_info, make_obs

from pulsebms.agents.observation import ObservationReader
from pulsebms.agents.policy import ConstantPolicy, FunctionPolicy, reset_policy
from pulsebms.agents.rules import (
    EqualSplitPolicy,
    HealthAwarePolicy,
    SocProportionalPolicy,
    allocate_power,
)
from pulsebms.agents.type_aliases import Policy


def _rule(cls: type, **kwargs: object) -> object:
    info = make_info()
    return cls(
        info.reader,
        info.rated_power_w,
        capacity_ah=info.capacity_ah,
        chemistry=info.chemistry,
        **kwargs,
    )


@pytest.mark.parametrize("demand_w", [-2500.0, -300.0, 0.0, 450.0, 2000.0, 5000.0])
def test_allocation_meets_demand_within_caps(demand_w: float) -> None:
    caps = np.array([1000.0, 1000.0, 700.0])
    power = allocate_power(demand_w, np.array([1.0, 2.0, 3.0]), caps)
    assert np.all(np.abs(power) <= caps + 1e-9)
    assert np.all(np.sign(power) * np.sign(demand_w) >= 0)
    assert abs(power.sum()) == pytest.approx(min(abs(demand_w), caps.sum()), rel=1e-9)


def test_allocation_zero_weights_gives_nothing() -> None:
    assert np.all(allocate_power(500.0, np.zeros(3), np.ones(3) * 1e3) == 0.0)


@pytest.mark.parametrize("cls", [EqualSplitPolicy, SocProportionalPolicy, HealthAwarePolicy])
def test_rules_meet_demand_and_stay_in_action_space(cls: type) -> None:
    policy = _rule(cls)
    assert isinstance(policy, Policy)
    info = make_info()
    for demand_w in (-1500.0, 0.0, 800.0, 4000.0):
        action = policy.act(make_obs([0.5, 0.6, 0.7], demand_w))
        assert action.dtype == np.float32
        assert action.shape == (3,)
        assert np.all(np.abs(action) <= 1.0)
        delivered = float(np.sum(action * info.rated_power_w))
        assert delivered == pytest.approx(np.clip(demand_w, -2700.0, 2700.0), rel=1e-4)


def test_equal_split_is_equal_when_uncapped() -> None:
    action = _rule(EqualSplitPolicy).act(make_obs([0.5, 0.5, 0.5], 600.0))
    np.testing.assert_allclose(action * make_info().rated_power_w, [200.0, 200.0, 200.0], rtol=1e-5)


def test_soc_proportional_spares_empty_and_full_packs() -> None:
    policy = _rule(SocProportionalPolicy)
    discharge = policy.act(make_obs([0.05, 0.5, 0.9], 500.0))
    assert abs(discharge[0]) < 1e-6
    assert discharge[2] > discharge[1] * 0.7
    charge = policy.act(make_obs([0.95, 0.5, 0.1], -500.0))
    assert abs(charge[0]) < 1e-6
    assert charge[2] < 0.0


def test_health_aware_prefers_healthy_cool_long_life_packs() -> None:
    policy = _rule(HealthAwarePolicy)
    action = policy.act(make_obs([0.5, 0.5, 0.5], 900.0, soh=[1.0, 0.8, 1.0]))
    # LFP (cycle-life factor 3) takes more than worn NMC.
    assert action[0] > action[1]
    hot = policy.act(make_obs([0.5, 0.5, 0.5], 900.0, temperature_c=[25.0, 25.0, 60.0]))
    assert hot[2] == 0.0


def test_health_aware_rejects_bad_margin() -> None:
    with pytest.raises(ValueError, match="derate_margin_c"):
        _rule(HealthAwarePolicy, derate_margin_c=0.0)


def test_reader_requires_named_fields() -> None:
    with pytest.raises(KeyError, match="soc"):
        ObservationReader({"demand_w": slice(0, 1)})


def test_constant_and_function_policies() -> None:
    assert np.all(ConstantPolicy([1.0, -1.0]).act(np.zeros(4)) == [1.0, -1.0])
    fn = FunctionPolicy(lambda obs: obs[:2] * 0.5)
    np.testing.assert_allclose(fn.act(np.array([1.0, 2.0, 3.0])), [0.5, 1.0])
    reset_policy(fn)  # no reset(): a no-op


def test_onnx_policy_runs_an_exported_graph(tmp_path: Path) -> None:
    import onnx
    import onnxruntime  # noqa: F401
    from onnx import TensorProto, helper, numpy_helper

    from pulsebms.agents.policy import OnnxPolicy

    weight = np.array([[0.5, -1.0], [0.0, 2.0], [1.0, 0.0]], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "w"], ["z"]),
            helper.make_node("Tanh", ["z"], ["action"]),
        ],
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [1, 2])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path / "policy.onnx"
    onnx.save(model, str(path))
    obs = np.array([1.0, 0.5, -1.0], dtype=np.float32)
    action = OnnxPolicy(path).act(obs)
    np.testing.assert_allclose(action, np.tanh(obs @ weight), rtol=1e-6)
    assert isinstance(OnnxPolicy(path), Policy)


def test_rules_ask_for_nothing_the_shield_would_cut() -> None:
    """Regression (issue 12): rules stay within the shield's limits.

    Rules capped at rated power asked for what the shield cut on ~90 % of steps; now they
    stay inside the current/C-rate caps and the shield's admissible set, so the shield in
    the loop changes nothing and predicts no violation.
    """
    from pulsebms.agents.env_factory import make_env
    from pulsebms.agents.rules import make_rule_policy

    for kind in ("equal", "soc", "health"):
        env = make_env("PulseBMS/FleetSmall-v0", dt_s=900.0, horizon_steps=40, fidelity="ecm")
        rule = make_rule_policy(env, kind)
        uncapped = make_rule_policy(env, kind, use_shield=False, max_power_w=rule.rated_power_w)
        obs, _ = env.reset(seed=4)
        cut = pre = would_cut = 0
        for _ in range(40):
            would_cut += int(np.any(np.abs(uncapped.act(obs) - rule.act(obs)) > 1e-4))
            obs, _, terminated, truncated, info = env.step(rule.act(obs))
            cut += info["shield_interventions"]
            pre += int(info["cost_pre_shield"] > 0.0)
            if terminated or truncated:
                break
        env.close()
        assert (cut, pre) == (0, 0), kind
        assert would_cut > 0  # the caps bind on this day: the check is not vacuous
