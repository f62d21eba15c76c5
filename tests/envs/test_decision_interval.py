"""Decision-interval wrapper: the agent acts every decision_s over a dt_s plant + shield loop."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from pulsebms.agents.env_factory import make_env
from pulsebms.envs.decision import DecisionIntervalWrapper, agent_step_s, with_decision_interval

DT_S = 60.0
HORIZON = 32  # not a multiple of 5: the last decision is shorter


def _env() -> Any:
    return make_env("PulseBMS/FleetSmall-v0", dt_s=DT_S, horizon_steps=HORIZON, fidelity="ecm")


def _actions(n_packs: int, n: int) -> np.ndarray:
    # Large requests so the shield intervenes now and then.
    return np.random.default_rng(3).uniform(-1.0, 1.0, (n, n_packs)).astype(np.float32)


def _run_wrapped(decision_s: float, seed: int = 7) -> list[tuple[Any, ...]]:
    env = DecisionIntervalWrapper(_env(), decision_s)
    obs, _ = env.reset(seed=seed)
    actions = _actions(env.action_space.shape[0], HORIZON)
    out = []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((obs.copy(), r, term, trunc, info))
        if term or trunc:
            break
    env.close()
    return out


def test_held_action_rewards_and_costs_summed_against_the_plant_loop() -> None:
    wrapped = _run_wrapped(300.0)
    env = _env()
    env.reset(seed=7)
    actions = _actions(env.action_space.shape[0], HORIZON)
    k = 0
    for j, (obs_w, r_w, term_w, trunc_w, info_w) in enumerate(wrapped):
        reward = cost_eur = cost = pre = 0.0
        interventions = n_viol = n = 0
        term = trunc = False
        while n < 5 and not (term or trunc):
            obs, r, term, trunc, info = env.step(actions[j])
            reward += float(r)
            cost_eur += info["total_cost_eur"]
            cost += info["cost"]
            pre += info["cost_pre_shield"]
            interventions += info["shield"]["intervened"]
            n_viol += info["n_violations"]
            n += 1
            k += 1
        np.testing.assert_array_equal(obs_w, obs)
        assert r_w == pytest.approx(reward, rel=1e-12, abs=1e-12)
        assert info_w["total_cost_eur"] == pytest.approx(cost_eur, rel=1e-12, abs=1e-12)
        assert info_w["cost"] == pytest.approx(cost, abs=1e-12)
        assert info_w["cost_pre_shield"] == pytest.approx(pre, abs=1e-12)
        assert info_w["shield"]["intervened"] == interventions
        assert info_w["n_violations"] == n_viol
        assert info_w["step"] == k  # instantaneous keys: the last sub-step's
        assert info_w["decision"] == {"substeps": n, "dt_s": DT_S, "decision_s": 300.0}
        assert (term_w, trunc_w) == (term, trunc)
    # 32 plant steps = 6 decisions of 5 + one of 2, the last one truncating the episode.
    assert len(wrapped) == 7
    assert wrapped[-1][4]["decision"]["substeps"] == 2
    assert wrapped[-1][3] is True
    assert sum(w[4]["shield"]["intervened"] for w in wrapped) > 0  # the check is not vacuous
    env.close()


def test_seeded_runs_repeat_bit_for_bit() -> None:
    a, b = _run_wrapped(300.0, seed=11), _run_wrapped(300.0, seed=11)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1] == y[1]


def test_one_substep_is_the_inner_env() -> None:
    wrapped = _run_wrapped(DT_S)
    env = _env()
    env.reset(seed=7)
    actions = _actions(env.action_space.shape[0], HORIZON)
    for a, (obs_w, r_w, *_rest) in zip(actions, wrapped, strict=True):
        obs, r, *_ = env.step(a)
        np.testing.assert_array_equal(obs_w, obs)
        assert r_w == r
    env.close()


def test_bad_decision_interval_is_refused_and_step_is_reported() -> None:
    env = _env()
    for bad in (90.0, 0.0, -60.0, float("nan"), 30.0):
        with pytest.raises(ValueError, match="decision_s"):
            DecisionIntervalWrapper(env, bad)
    assert agent_step_s(env) == DT_S
    assert with_decision_interval(env, None) is env
    assert agent_step_s(with_decision_interval(env, 900.0)) == 900.0
    env.close()


def test_gamma_from_a_horizon_in_hours_at_the_agent_step() -> None:
    from pulsebms.agents.discount import gamma_from_horizon, resolve_gamma
    from pulsebms.agents.rllib_config import RllibPPOConfig, RllibSACConfig
    from pulsebms.agents.sb3 import PPOConfig, SACConfig

    env = with_decision_interval(_env(), 900.0)
    step_s = agent_step_s(env)
    for config in (PPOConfig(), SACConfig(), RllibPPOConfig(), RllibSACConfig()):
        assert resolve_gamma(config, step_s) is config  # no horizon given: untouched
        resolved = resolve_gamma(dataclasses.replace(config, gamma_horizon_h=24.0), step_s)
        assert 1.0 / (1.0 - resolved.gamma) == pytest.approx(96.0)  # 24 h of 15-min steps
    # The same 24 h at the plant's 60 s step: 1440 steps.
    assert 1.0 / (1.0 - gamma_from_horizon(24.0, DT_S)) == pytest.approx(1440.0)
    with pytest.raises(ValueError, match="longer than one agent step"):
        gamma_from_horizon(0.1, 900.0)
    env.close()


def test_train_agent_uses_gamma_from_hours_at_the_decision_interval(tmp_path: Any) -> None:
    """SB3 PPO trained through the wrapper: γ from 6 h at 15-min decisions (24 steps)."""
    from pulsebms.agents.env_factory import make_env_factory
    from pulsebms.agents.sb3 import PPOConfig, train_agent
    from pulsebms.envs.decision import decision_env_factory

    factory = decision_env_factory(
        make_env_factory("PulseBMS/FleetSmall-v0", dt_s=300.0, horizon_steps=48, fidelity="ecm"),
        900.0,
    )
    config = PPOConfig(n_steps=16, batch_size=8, n_epochs=1, net_arch=(8,), gamma_horizon_h=6.0)
    result = train_agent(config, factory, total_timesteps=16, seed=0, out_dir=tmp_path)
    assert result.model.gamma == pytest.approx(1.0 - 1.0 / 24.0)
    assert result.model.get_env().gamma == pytest.approx(1.0 - 1.0 / 24.0)  # VecNormalize


def test_make_env_takes_the_decision_interval() -> None:
    env = make_env("PulseBMS/FleetSmall-v0", dt_s=DT_S, horizon_steps=HORIZON, decision_s=300.0)
    assert isinstance(env, DecisionIntervalWrapper)
    assert env.substeps == 5
    assert agent_step_s(env) == 300.0
    env.close()
    with pytest.raises(ValueError, match="whole multiple"):
        make_env("PulseBMS/FleetSmall-v0", dt_s=DT_S, decision_s=90.0)


def test_held_policy_at_the_plant_step_acts_as_behind_the_wrapper() -> None:
    """DecisionIntervalPolicy (evaluation at dt_s) = the wrapper (training): same episode."""
    from pulsebms.envs.decision import DecisionIntervalPolicy, substeps_of

    class Recorder:
        def __init__(self) -> None:
            self.seen: list[np.ndarray] = []
            self.k = 0

        def act(self, observation: np.ndarray) -> np.ndarray:
            self.seen.append(np.asarray(observation).copy())
            self.k += 1
            return _actions(3, HORIZON)[self.k - 1]

    behind, held = Recorder(), Recorder()
    wrapped = DecisionIntervalWrapper(_env(), 300.0)
    obs, _ = wrapped.reset(seed=5)
    total_w = 0.0
    while True:
        obs, r, term, trunc, _ = wrapped.step(behind.act(obs))
        total_w += float(r)
        if term or trunc:
            break
    env = _env()
    policy = DecisionIntervalPolicy(held, substeps_of(300.0, DT_S))
    obs, _ = env.reset(seed=5)
    total_p = 0.0
    while True:
        obs, r, term, trunc, _ = env.step(policy.act(obs))
        total_p += float(r)
        if term or trunc:
            break
    assert len(held.seen) == len(behind.seen) == 7
    for a, b in zip(held.seen, behind.seen, strict=True):
        np.testing.assert_array_equal(a, b)
    assert total_p == pytest.approx(total_w, rel=1e-12)
    policy.reset()
    policy.act(obs)
    assert len(held.seen) == 8  # a new episode decides at once
    with pytest.raises(ValueError, match="substeps"):
        DecisionIntervalPolicy(held, 0)
    wrapped.close()
    env.close()
