"""The Lagrangian method alone, on a stub env that records what it receives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from pulsebms.agents.lagrangian import LagrangianCallback, LagrangianPenalty
from pulsebms.agents.sb3 import make_vec_env


class _CostStub(gym.Env[np.ndarray, np.ndarray]):
    """Records what it receives; reward 1 and cost 0.5 per step, episodes of 4 steps."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)

    def __init__(self) -> None:
        self.t = 0
        self.actions: list[np.ndarray] = []

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.actions.append(np.asarray(action))
        self.t += 1
        return np.zeros(2, dtype=np.float32), 1.0, False, self.t >= 4, {"cost": 0.5}


def test_lagrangian_penalty_subtracts_multiplier_times_cost() -> None:
    env = LagrangianPenalty(_CostStub(), multiplier=2.0)
    env.reset(seed=0)
    _, reward, *_, info = env.step(np.zeros(1, dtype=np.float32))
    assert reward == pytest.approx(1.0 - 2.0 * 0.5)
    assert info["reward_unpenalised"] == 1.0
    with pytest.raises(ValueError, match="multiplier"):
        LagrangianPenalty(_CostStub(), multiplier=-1.0)


def test_lagrangian_callback_raises_multiplier_when_cost_exceeds_limit(tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    venv = make_vec_env(_CostStub, seed=0, cost_penalty=0.0)
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(32, callback=LagrangianCallback(lr=0.1, cost_limit=1.0))
    (lam,) = venv.get_attr("multiplier")
    # Episode cost 4 × 0.5 = 2 > limit 1: λ grows by 0.1 × (2 − 1) per rollout.
    assert lam == pytest.approx(0.2)


def test_lagrangian_penalty_reports_episode_cost_at_the_end() -> None:
    env = LagrangianPenalty(_CostStub(), multiplier=0.0, cost_keys=("missing", "cost"))
    env.reset(seed=0)
    infos = [env.step(np.zeros(1, dtype=np.float32))[-1] for _ in range(4)]
    assert "episode_cost" not in infos[2]
    assert infos[3]["episode_cost"] == pytest.approx(4 * 0.5)
    env.reset(seed=1)
    *_, info = env.step(np.zeros(1, dtype=np.float32))
    assert "episode_cost" not in info  # the sum restarts with the episode
