"""The Lagrange multiplier of safe RL, and the reward-penalty variant on SB3 (``ppo_penalty``).

:class:`LagrangeMultiplier` is the one dual update of every Lagrangian agent (numpy only):
PID-Lagrangian (Stooke et al. 2020) toward a **per-episode** cost limit, λ kept in
``[0, max_value]`` and its integral clamped likewise (anti-windup), so λ cannot run away
whatever the cost limit. With only the integral gain it is projected dual ascent
``λ ← clip(λ + η (mean episode cost − d), 0, λ_max)``. The PPO-Lagrangian agents with a cost
critic (:mod:`pulsebms.agents.ppo_lagrangian` on SB3,
:mod:`pulsebms.agents.rllib_lagrangian` on RLlib) and the penalty variant below use it.

**Penalty variant** (``agent=ppo_penalty``; no cost critic):

A Lagrangian relaxation of the CMDP ``max E[Σ r] s.t. E[Σ c] ≤ d``, where ``c`` is
``info["cost_pre_shield"]``: the violation cost the shield wrapper predicts the
*unshielded* action would have caused (the env's measured ``info["cost"]`` when no wrapper
reports it; behind the shield that one is ~0). :class:`LagrangianPenalty` makes the learner
see ``r − λ c``; after each rollout :class:`LagrangianCallback` takes a
:class:`LagrangeMultiplier` step on the mean episode cost. With ``lagrangian_lr = 0``
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

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from pulsebms.agents.rllib_config import RllibPPOConfig

__all__ = [
    "COST_KEYS",
    "LagrangeMultiplier",
    "LagrangianCallback",
    "LagrangianPenalty",
    "LagrangianSettings",
    "RllibPPOLagrangianConfig",
    "step_cost",
]

COST_KEYS: tuple[str, ...] = ("cost_pre_shield", "cost")
"""``info`` keys tried in order for a step's constraint cost (pre-shield cost first)."""


def step_cost(info: Mapping[str, Any], cost_keys: Sequence[str] = COST_KEYS) -> float:
    """The step's constraint cost: the first of ``cost_keys`` present in ``info`` (else 0).

    Example:
        >>> step_cost({"cost": 0.5, "cost_pre_shield": 2.0}), step_cost({"cost": 0.5})
        (2.0, 0.5)
    """
    return next((float(info[k]) for k in cost_keys if k in info), 0.0)


class LagrangeMultiplier:
    """PID-Lagrangian multiplier λ ≥ 0 toward a per-episode cost limit, bounded by a cap.

    Each :meth:`update` takes the mean cost of the episodes finished since the last one,
    ``J``, and the error ``e = J − d``:

    * integral ``I ← clip(I + e, 0, λ_max / k_i)`` (projected, anti-windup);
    * derivative ``D = max(0, J − J_prev)`` (only rising cost pushes λ up);
    * ``λ = clip(k_p e + k_i I + k_d D, 0, λ_max)``.

    With ``kp = kd = 0`` this is projected dual ascent with step ``k_i``.

    Args:
        cost_limit: Allowed mean cost per episode d (≥ 0).
        ki: Integral gain (the dual-ascent step size η); ≥ 0.
        initial: λ before the first update (≥ 0, ≤ ``max_value``).
        max_value: Cap on λ (> 0).
        kp: Proportional gain (≥ 0).
        kd: Derivative gain (≥ 0).

    Raises:
        ValueError: On a negative gain or limit, or an initial value outside ``[0, max_value]``.

    Example:
        >>> lam = LagrangeMultiplier(cost_limit=1.0, ki=0.5, max_value=2.0)
        >>> [lam.update(c) for c in (3.0, 3.0, 3.0, 0.0)]
        [1.0, 2.0, 2.0, 1.5]
    """

    def __init__(
        self,
        cost_limit: float,
        *,
        ki: float,
        initial: float = 0.0,
        max_value: float = 10.0,
        kp: float = 0.0,
        kd: float = 0.0,
    ) -> None:
        for name, value in (("cost_limit", cost_limit), ("ki", ki), ("kp", kp), ("kd", kd)):
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"LagrangeMultiplier: {name} must be finite and >= 0, got {value}")
        if not (math.isfinite(max_value) and max_value > 0.0):
            raise ValueError(f"LagrangeMultiplier: max_value must be > 0, got {max_value}")
        if not 0.0 <= initial <= max_value:
            raise ValueError(
                f"LagrangeMultiplier: initial must be in [0, {max_value}], got {initial}"
            )
        self.cost_limit = float(cost_limit)
        self.ki, self.kp, self.kd = float(ki), float(kp), float(kd)
        self.max_value = float(max_value)
        self.value = float(initial)
        self._integral = self.value / self.ki if self.ki > 0 else 0.0
        self._initial = self.value
        self._previous_cost: float | None = None

    def update(self, mean_episode_cost: float) -> float:
        """One PID step on the mean cost of the episodes just finished; returns the new λ.

        A non-finite cost leaves λ unchanged (documented safe fallback).
        """
        cost = float(mean_episode_cost)
        if not math.isfinite(cost):
            return self.value
        error = cost - self.cost_limit
        integral_cap = self.max_value / self.ki if self.ki > 0 else 0.0
        self._integral = min(max(self._integral + error, 0.0), integral_cap)
        rise = 0.0 if self._previous_cost is None else max(0.0, cost - self._previous_cost)
        self._previous_cost = cost
        raw = self.kp * error + self.ki * self._integral + self.kd * rise
        if self.ki == 0.0:
            raw += self._initial
        self.value = min(max(raw, 0.0), self.max_value)
        return self.value

    def state_dict(self) -> dict[str, float | None]:
        """Plain-data state (for checkpoints)."""
        return {
            "value": self.value,
            "integral": self._integral,
            "previous_cost": self._previous_cost,
            "initial": self._initial,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.value = float(state["value"])
        self._integral = float(state["integral"])
        prev = state.get("previous_cost")
        self._previous_cost = None if prev is None else float(prev)
        self._initial = float(state.get("initial", self._initial))


@dataclass(frozen=True)
class LagrangianSettings:
    """The Lagrangian part of RLlib PPO-Lag (the PPO part is the usual PPO config).

    Ray-free plain data, so a hyperparameter dataclass can inherit it (e.g. with RLlib's
    PPO hyperparameters) and a Hydra schema can derive its fields.

    Attributes:
        cost_limit: Allowed mean pre-shield cost per episode d.
        lagrangian_lr: Integral gain k_i of λ (the dual-ascent step).
        lagrangian_kp: Proportional gain k_p.
        lagrangian_kd: Derivative gain k_d.
        initial_multiplier: λ before the first update.
        lagrangian_max: Cap on λ.
        cost_vf_coeff: Weight of the cost critic's loss in the learner's total loss.
        cost_keys: ``info`` keys tried in order for the step cost.
    """

    cost_limit: float = 1.0
    lagrangian_lr: float = 0.05
    lagrangian_kp: float = 0.0
    lagrangian_kd: float = 0.0
    initial_multiplier: float = 0.0
    lagrangian_max: float = 10.0
    cost_vf_coeff: float = 1.0
    cost_keys: Sequence[str] = COST_KEYS

    def rllib_config_hook(self, config: Any) -> Any:
        """Make an RLlib ``PPOConfig`` PPO-Lagrangian with these settings (imports Ray).

        The seam :func:`pulsebms.agents.rllib.build_rllib_algorithm` calls on hyperparameter
        dataclasses; see :func:`pulsebms.agents.rllib_lagrangian.configure_ppo_lagrangian`.
        """
        from pulsebms.agents.rllib_lagrangian import configure_ppo_lagrangian

        names = {f.name for f in dataclasses.fields(LagrangianSettings)}
        own = LagrangianSettings(**{n: getattr(self, n) for n in names})
        return configure_ppo_lagrangian(config, own)

    def multiplier(self) -> LagrangeMultiplier:
        """A fresh multiplier with these settings."""
        return LagrangeMultiplier(
            self.cost_limit,
            ki=self.lagrangian_lr,
            kp=self.lagrangian_kp,
            kd=self.lagrangian_kd,
            initial=self.initial_multiplier,
            max_value=self.lagrangian_max,
        )


@dataclass(frozen=True)
class RllibPPOLagrangianConfig(RllibPPOConfig, LagrangianSettings):
    """RLlib PPO-Lagrangian: RLlib's PPO hyperparameters plus the Lagrangian settings.

    What ``agent=rllib_ppo_lagrangian`` instantiates. Ray-free like its two bases;
    :func:`pulsebms.agents.rllib.build_rllib_algorithm` finds its ``rllib_config_hook``
    (inherited from :class:`LagrangianSettings`) and turns the PPO config into PPO-Lag
    (cost critic head, cost GAE, λ in the learner state).

    Example:
        >>> cfg = RllibPPOLagrangianConfig(cost_limit=2.0)
        >>> cfg.algorithm, cfg.cost_limit, cfg.train_batch_size
        ('PPO', 2.0, 2304)
    """


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
        cost_keys: Sequence[str] = COST_KEYS,
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
        cost = step_cost(info, self.cost_keys)
        self._episode_cost += cost
        info["reward_unpenalised"] = float(reward)
        if terminated or truncated:
            info["episode_cost"] = self._episode_cost
        return obs, float(reward) - self.multiplier * cost, terminated, truncated, info


class LagrangianCallback(BaseCallback):
    """Dual ascent (:class:`LagrangeMultiplier`) on λ of every :class:`LagrangianPenalty`.

    λ starts from the wrappers' ``multiplier`` at the first update and stays in
    ``[0, max_multiplier]``.

    Args:
        lr: Step size η (the integral gain).
        cost_limit: Allowed mean episode cost d.
        every_steps: For off-policy algorithms, update every this many calls to ``step``;
            ``None`` updates at the end of each rollout (on-policy).
        max_multiplier: Cap on λ.
    """

    def __init__(
        self,
        lr: float,
        cost_limit: float,
        every_steps: int | None = None,
        max_multiplier: float = 10.0,
    ) -> None:
        super().__init__(verbose=0)
        self.lr = lr
        self.cost_limit = cost_limit
        self.every_steps = every_steps
        self.max_multiplier = max_multiplier
        self.multiplier: LagrangeMultiplier | None = None
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
        if self.multiplier is None:
            (initial,) = env.get_attr("multiplier", indices=[0])
            self.multiplier = LagrangeMultiplier(
                self.cost_limit,
                ki=self.lr,
                initial=min(float(initial), self.max_multiplier),
                max_value=self.max_multiplier,
            )
        lam = self.multiplier.update(mean_cost)
        env.set_attr("multiplier", lam)
        self.logger.record("safe/lagrange_multiplier", lam)
        self.logger.record("safe/episode_cost", mean_cost)
