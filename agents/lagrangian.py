"""The Lagrangian method of safe RL on SB3: a cost-penalised reward and dual ascent on λ.

A Lagrangian relaxation of the CMDP ``max E[Σ r] s.t. E[Σ c] ≤ d``, where ``c`` is
``info["cost_pre_shield"]``: the violation cost the shield wrapper predicts the
*unshielded* action would have caused (the env's measured ``info["cost"]`` when no wrapper
reports it; behind the shield that one is ~0). :class:`LagrangianPenalty` makes the learner
see ``r − λ c``; after each rollout :class:`LagrangianCallback` takes a projected
dual-ascent step ``λ ← max(0, λ + η (mean episode cost − d))``. With ``lagrangian_lr = 0``
the penalty is a fixed ``λ`` (reward shaping). The shield still guarantees the physical
limits; the penalty teaches the actor to stop relying on it.

:func:`pulsebms.agents.sb3.train_agent` wires both in from ``cost_penalty``,
``lagrangian_lr`` and ``cost_limit`` of its config.

Example:
    >>> import gymnasium as gym
    >>> class Costly(gym.Env):
    ...     observation_space = gym.spaces.Box(-1.0, 1.0, (1,))
    ...     action_space = gym.spaces.Box(-1.0, 1.0, (1,))
    ...     def reset(self, *, seed=None, options=None):
    ...         return self.observation_space.sample(), {}
    ...     def step(self, action):
    ...         return self.observation_space.sample(), 1.0, True, False, {"cost": 2.0}
    >>> env = LagrangianPenalty(Costly(), multiplier=0.25)
    >>> _ = env.reset(seed=0)
    >>> _, reward, _, _, info = env.step(env.action_space.sample())
    >>> reward, info["reward_unpenalised"], info["episode_cost"]
    (0.5, 1.0, 2.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["LagrangianCallback", "LagrangianPenalty"]


class LagrangianPenalty(gym.Wrapper[Any, Any, Any, Any]):
    """Subtract ``λ · info["cost"]`` from the reward (λ set from outside by a callback).

    The unpenalised reward stays in ``info["reward_unpenalised"]`` and the episode's summed
    cost in ``info["episode_cost"]`` at its end.

    Args:
        env: The (shielded) environment.
        multiplier: Initial λ ≥ 0.
        cost_keys: ``info`` keys tried in order for the step's cost; the first present is
            used (the shield wrapper's pre-shield cost first, then the env's ``"cost"``).
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        multiplier: float = 0.0,
        cost_keys: Sequence[str] = ("cost_pre_shield", "cost"),
    ) -> None:
        super().__init__(env)
        if multiplier < 0:
            raise ValueError(f"Lagrange multiplier must be >= 0, got {multiplier}")
        self.multiplier = float(multiplier)
        self.cost_keys = tuple(cost_keys)
        self._episode_cost = 0.0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Reset the env and the episode's cost sum."""
        self._episode_cost = 0.0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Step and penalise the reward by the violation cost."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        cost = next((float(info[k]) for k in self.cost_keys if k in info), 0.0)
        self._episode_cost += cost
        info["reward_unpenalised"] = float(reward)
        if terminated or truncated:
            info["episode_cost"] = self._episode_cost
        return obs, float(reward) - self.multiplier * cost, terminated, truncated, info


class LagrangianCallback(BaseCallback):
    """Projected dual ascent on λ of every :class:`LagrangianPenalty` in the VecEnv.

    Args:
        lr: Step size η.
        cost_limit: Allowed mean episode cost d.
        every_steps: For off-policy algorithms, update every this many calls to ``step``;
            ``None`` updates at the end of each rollout (on-policy).
    """

    def __init__(self, lr: float, cost_limit: float, every_steps: int | None = None) -> None:
        super().__init__(verbose=0)
        self.lr = lr
        self.cost_limit = cost_limit
        self.every_steps = every_steps
        self._costs: list[float] = []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "episode_cost" in info:
                self._costs.append(float(info["episode_cost"]))
        if self.every_steps is not None and self.n_calls % self.every_steps == 0:
            self._update()
        return True

    def _on_rollout_end(self) -> None:
        if self.every_steps is None:
            self._update()

    def _update(self) -> None:
        if not self._costs:
            return
        mean_cost = float(np.mean(self._costs))
        self._costs.clear()
        env = self.training_env
        if env is None:
            return
        (lam,) = env.get_attr("multiplier", indices=[0])
        lam = max(0.0, float(lam) + self.lr * (mean_cost - self.cost_limit))
        env.set_attr("multiplier", lam)
        self.logger.record("safe/lagrange_multiplier", lam)
        self.logger.record("safe/episode_cost", mean_cost)
