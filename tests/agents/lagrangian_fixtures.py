"""A stub env with a known pre-shield cost (shared by the SB3 and RLlib PPO-Lagrangian tests)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

HORIZON = 4
PRE_SHIELD_COST = 0.5  # per step: 2.0 per episode
MEASURED_COST = 0.0  # behind the shield the measured cost is 0: it must not be the one used


class CountdownEnv(gym.Env[np.ndarray, np.ndarray]):
    """Episodes of 4 steps; obs = steps left / 4; reward 1; pre-shield cost 0.5 each step."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)

    def __init__(self) -> None:
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([(HORIZON - self.t) / HORIZON], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        info = {"cost_pre_shield": PRE_SHIELD_COST, "cost": MEASURED_COST}
        return self._obs(), 1.0, self.t >= HORIZON, False, info
