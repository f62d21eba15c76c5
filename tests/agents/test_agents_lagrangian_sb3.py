"""PPO-Lagrangian on SB3: the PID multiplier, λ moves toward the limit, the cost critic learns."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch as th
from lagrangian_fixtures import HORIZON, PRE_SHIELD_COST, CountdownEnv
from stable_baselines3.common.vec_env import DummyVecEnv

from pulsebms.agents.lagrangian import LagrangeMultiplier
from pulsebms.agents.ppo_lagrangian import CostRolloutBuffer, PPOLagrangian
from pulsebms.agents.sb3 import PPOLagrangianConfig, build_model, load_agent, save_agent


def _model(
    cost_limit: float, *, initial: float = 0.0, gamma: float = 0.9, n_envs: int = 1
) -> PPOLagrangian:
    config = PPOLagrangianConfig(
        n_steps=32 // n_envs,
        batch_size=32,
        n_epochs=4,
        gamma=gamma,
        gae_lambda=0.95,
        net_arch=(16, 16),
        learning_rate=3e-3,
        cost_limit=cost_limit,
        cost_penalty=initial,
        lagrangian_lr=0.1,
        lagrangian_max=5.0,
    )
    model = build_model(config, DummyVecEnv([CountdownEnv] * n_envs), seed=0)
    assert isinstance(model, PPOLagrangian)
    return model


def test_multiplier_is_projected_ascent_bounded_and_pid() -> None:
    lam = LagrangeMultiplier(cost_limit=0.0, ki=1.0, max_value=3.0)
    values = [lam.update(2.0) for _ in range(50)]  # the limit 0 is never met
    assert values[:2] == [2.0, 3.0]
    assert max(values) == 3.0  # capped: λ cannot run away (it reached 4184 uncapped)
    assert lam.update(0.0) == 3.0  # cost 0 = limit: no error, λ stays
    lam.cost_limit = 1.0
    assert lam.update(0.0) == pytest.approx(2.0)  # anti-windup: falls at once, not after 50
    assert lam.update(math.nan) == pytest.approx(2.0)  # non-finite cost: unchanged
    pid = LagrangeMultiplier(cost_limit=1.0, ki=0.0, kp=0.5, kd=1.0, initial=0.0)
    assert pid.update(3.0) == pytest.approx(1.0)  # kp e = 0.5 × 2
    assert pid.update(4.0) == pytest.approx(2.5)  # kp e 1.5 + kd rise 1
    assert pid.update(0.0) == 0.0  # below the limit: projected to 0
    with pytest.raises(ValueError, match="ki"):
        LagrangeMultiplier(1.0, ki=-0.1)
    with pytest.raises(ValueError, match="initial"):
        LagrangeMultiplier(1.0, ki=0.1, initial=20.0, max_value=10.0)
    restored = LagrangeMultiplier(1.0, ki=1.0)
    restored.load_state_dict(lam.state_dict())
    assert restored.update(2.0) == lam.update(2.0)


def test_lambda_rises_above_the_cost_limit_and_falls_below() -> None:
    # Episode pre-shield cost is 2.0 whatever the policy does.
    above = _model(cost_limit=1.0)
    above.learn(96)  # 3 rollouts × 8 finished episodes
    assert above.lagrange_multiplier == pytest.approx(0.3)  # 3 × 0.1 × (2 − 1)
    below = _model(cost_limit=3.0, initial=1.0)
    below.learn(96)
    assert below.lagrange_multiplier == pytest.approx(0.7)  # 1 − 3 × 0.1 × (3 − 2)
    capped = _model(cost_limit=0.0)
    capped.multiplier.ki = 10.0
    capped.learn(96)
    assert capped.lagrange_multiplier == 5.0  # the cap


def test_cost_critic_learns_the_pre_shield_cost_to_go(tmp_path: Path) -> None:
    gamma = 0.9
    model = _model(cost_limit=10.0, gamma=gamma, n_envs=4)
    model.learn(32)
    first_loss = model.last_cost_value_loss
    model.learn(1600, reset_num_timesteps=False)
    assert model.last_cost_value_loss < 0.1 * first_loss
    steps_left = np.arange(1, HORIZON + 1)
    truth = PRE_SHIELD_COST * (1 - gamma**steps_left) / (1 - gamma)
    obs = th.as_tensor((steps_left / HORIZON)[:, None], dtype=th.float32)
    predicted = model.predict_cost_values(obs)
    np.testing.assert_allclose(predicted, truth, rtol=0.1, atol=0.05)
    assert isinstance(model.rollout_buffer, CostRolloutBuffer)
    # Recorded from info["cost_pre_shield"], not info["cost"].
    assert float(np.max(model.rollout_buffer.costs)) == pytest.approx(PRE_SHIELD_COST)
    # Saved and loaded with its cost critic and multiplier.
    path = save_agent(model, tmp_path)
    loaded, _ = load_agent(path)
    assert isinstance(loaded, PPOLagrangian)
    np.testing.assert_allclose(loaded.predict_cost_values(obs), predicted, rtol=1e-6)
    assert loaded.lagrange_multiplier == model.lagrange_multiplier
