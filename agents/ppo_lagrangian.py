"""PPO-Lagrangian with a cost critic on stable-baselines3 (OmniSafe PPO-Lag / PID-Lagrangian).

The constrained MDP ``max E[Σ r] s.t. E[Σ c] ≤ d`` (``d`` per episode) solved as in OmniSafe's
PPO-Lag and Stooke et al. 2020 (PID-Lagrangian):

* ``c`` is the step's pre-shield cost ``info["cost_pre_shield"]`` (what the unshielded
  action would have cost, predicted by the shield wrapper), ``info["cost"]`` when no shield
  reports it (:func:`pulsebms.agents.lagrangian.step_cost`);
* a **cost critic** ``V_c(s)`` (its own MLP and Adam optimiser) is regressed on the cost
  returns; :class:`CostRolloutBuffer` stores costs and cost values beside SB3's rollout and
  computes **cost GAE** advantages ``A_c`` (truncated episodes bootstrapped with
  ``γ V_c(s_T)`` like the reward);
* the actor maximises the clipped surrogate of ``(Â_r − λ (A_c − mean A_c)) / (1 + λ)``
  (reward advantages standardised, cost advantages only centred, as OmniSafe);
* λ is a :class:`pulsebms.agents.lagrangian.LagrangeMultiplier` (PID toward the per-episode
  limit, in ``[0, λ_max]``), updated before each policy update from the mean pre-shield
  cost of the episodes finished in the rollout just collected.

The reward the agent learns from is never penalised (unlike ``agent=ppo_penalty``, the
:class:`~pulsebms.agents.lagrangian.LagrangianPenalty` wrapper). The saved zip holds the cost
critic too; :func:`pulsebms.agents.sb3.load_agent` reads it and the deterministic policy is
an ordinary SB3 actor (export unchanged).

Example:
    >>> from pulsebms.agents.sb3 import PPOLagrangianConfig, train_agent
    >>> result = train_agent(  # doctest: +SKIP
    ...     PPOLagrangianConfig(cost_limit=2.0), env_factory, total_timesteps=20_000
    ... )
    >>> result.extras["lagrange_multiplier"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.preprocessing import get_flattened_obs_dim, preprocess_obs
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from torch import nn
from torch.nn import functional as F

from pulsebms.agents.lagrangian import COST_KEYS, LagrangeMultiplier, step_cost

__all__ = ["CostRolloutBuffer", "CostRolloutBufferSamples", "PPOLagrangian"]

_COST_ARRAYS = ("costs", "cost_values", "cost_returns", "cost_advantages")


class CostRolloutBufferSamples(NamedTuple):
    """SB3's rollout minibatch plus the cost critic's targets (all flat tensors)."""

    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    cost_advantages: th.Tensor
    cost_returns: th.Tensor


class CostRolloutBuffer(RolloutBuffer):
    """A :class:`~stable_baselines3.common.buffers.RolloutBuffer` with a cost channel.

    Adds ``costs``, ``cost_values``, ``cost_returns`` and ``cost_advantages`` (shape
    ``(n_steps, n_envs)``), filled by :class:`PPOLagrangian` during the rollout, and yields
    :class:`CostRolloutBufferSamples`.
    """

    costs: np.ndarray
    cost_values: np.ndarray
    cost_returns: np.ndarray
    cost_advantages: np.ndarray

    def reset(self) -> None:
        """Zero the reward and cost channels."""
        for name in _COST_ARRAYS:
            setattr(self, name, np.zeros((self.buffer_size, self.n_envs), dtype=np.float32))
        super().reset()

    def compute_cost_returns_and_advantage(
        self, last_cost_values: np.ndarray, dones: np.ndarray
    ) -> None:
        """Cost GAE(γ, λ_GAE) over the rollout (the buffer's ``gamma`` and ``gae_lambda``).

        Args:
            last_cost_values: ``V_c`` of the observation after the last step, per env.
            dones: Whether the last step ended each env's episode.
        """
        advantage = np.zeros(self.n_envs, dtype=np.float32)
        for step in range(self.buffer_size - 1, -1, -1):
            if step == self.buffer_size - 1:
                live = 1.0 - np.asarray(dones, dtype=np.float32)
                next_values = np.asarray(last_cost_values, dtype=np.float32)
            else:
                live = 1.0 - self.episode_starts[step + 1]
                next_values = self.cost_values[step + 1]
            delta = self.costs[step] + self.gamma * live * next_values - self.cost_values[step]
            advantage = delta + self.gamma * self.gae_lambda * live * advantage
            self.cost_advantages[step] = advantage
        self.cost_returns = self.cost_advantages + self.cost_values

    def get(  # type: ignore[override]  # yields the subclass of samples
        self, batch_size: int | None = None
    ) -> Generator[CostRolloutBufferSamples, None, None]:
        """Minibatches in a random order (the cost channel flattened like the rest)."""
        if not self.generator_ready:
            for name in _COST_ARRAYS:
                setattr(self, name, self.swap_and_flatten(getattr(self, name)))
        # _get_samples below makes SB3's samples cost samples.
        yield from super().get(batch_size)  # type: ignore[misc]

    def _get_samples(  # type: ignore[override]  # returns the subclass of samples
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> CostRolloutBufferSamples:
        base = super()._get_samples(batch_inds, env)
        return CostRolloutBufferSamples(
            *base,
            cost_advantages=self.to_torch(self.cost_advantages[batch_inds].flatten()),
            cost_returns=self.to_torch(self.cost_returns[batch_inds].flatten()),
        )


class _CostRecorder(BaseCallback):
    """Forwards SB3's rollout callbacks to ``inner`` and records each step's cost on the way.

    At every step (before SB3 adds the transition to the buffer) it writes the step's cost
    (truncations bootstrapped with ``γ V_c``) and ``V_c`` of the step's observation at the
    buffer's present position, and sums each env's episode cost (finished sums are kept for
    the dual update).
    """

    def __init__(self, algo: PPOLagrangian) -> None:
        super().__init__(verbose=0)
        self.algo = algo
        self.inner: BaseCallback | None = None
        self.finished_costs: list[float] = []
        self.finished_measured_costs: list[float] = []
        self._running = np.zeros(algo.n_envs)
        self._running_measured = np.zeros(algo.n_envs)

    def update_child_locals(self, locals_: dict[str, Any]) -> None:
        if self.inner is not None:
            self.inner.update_locals(locals_)

    def _on_rollout_start(self) -> None:
        if self.inner is not None:
            self.inner.on_rollout_start()

    def _on_rollout_end(self) -> None:
        if self.inner is not None:
            self.inner.on_rollout_end()

    def _on_step(self) -> bool:
        algo = self.algo
        infos: Sequence[dict[str, Any]] = self.locals["infos"]
        dones = np.asarray(self.locals["dones"], dtype=bool)
        buffer = algo.rollout_buffer
        costs = np.array([step_cost(info, algo.cost_keys) for info in infos], dtype=np.float64)
        measured = np.array([float(info.get("cost", 0.0)) for info in infos])
        self._running += costs
        self._running_measured += measured
        bootstrap = np.zeros_like(costs)
        for idx in np.flatnonzero(dones):
            self.finished_costs.append(float(self._running[idx]))
            self.finished_measured_costs.append(float(self._running_measured[idx]))
            self._running[idx] = self._running_measured[idx] = 0.0
            info = infos[int(idx)]
            terminal = info.get("terminal_observation")
            if terminal is not None and info.get("TimeLimit.truncated", False):
                obs = algo.policy.obs_to_tensor(terminal)[0]
                bootstrap[idx] = algo.gamma * float(algo.predict_cost_values(obs)[0])
        pos = buffer.pos
        buffer.costs[pos] = costs + bootstrap
        last_obs = obs_as_tensor(algo._last_obs, algo.device)  # type: ignore[arg-type]  # a Box obs
        buffer.cost_values[pos] = algo.predict_cost_values(last_obs)
        return True if self.inner is None else self.inner.on_step()


class PPOLagrangian(PPO):
    """PPO with a cost critic, cost GAE and a PID Lagrange multiplier (see the module doc).

    Args:
        policy: SB3 policy (``"MlpPolicy"``).
        env: The training VecEnv (behind the shield wrapper: its infos carry
            ``cost_pre_shield``).
        cost_limit: Allowed mean cost per episode d.
        lagrangian_ki: Integral gain of λ (the dual-ascent step size).
        lagrangian_kp: Proportional gain of λ.
        lagrangian_kd: Derivative gain of λ.
        lagrangian_init: λ before the first update.
        lagrangian_max: Cap on λ.
        cost_keys: ``info`` keys tried in order for the step cost.
        cost_net_arch: Hidden widths of the cost critic (``None``: ``policy_kwargs["net_arch"]``
            when it is a list, else ``(64, 64)``).
        **kwargs: :class:`stable_baselines3.PPO` arguments.
    """

    rollout_buffer: CostRolloutBuffer

    def __init__(
        self,
        policy: Any,
        env: VecEnv | Any,
        *,
        cost_limit: float = 0.0,
        lagrangian_ki: float = 0.05,
        lagrangian_kp: float = 0.0,
        lagrangian_kd: float = 0.0,
        lagrangian_init: float = 0.0,
        lagrangian_max: float = 10.0,
        cost_keys: Sequence[str] = COST_KEYS,
        cost_net_arch: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        self.multiplier = LagrangeMultiplier(
            cost_limit,
            ki=lagrangian_ki,
            kp=lagrangian_kp,
            kd=lagrangian_kd,
            initial=lagrangian_init,
            max_value=lagrangian_max,
        )
        self.cost_keys = tuple(cost_keys)
        arch = (kwargs.get("policy_kwargs") or {}).get("net_arch")
        default_arch = tuple(arch) if isinstance(arch, list | tuple) else (64, 64)
        self.cost_net_arch = tuple(cost_net_arch) if cost_net_arch is not None else default_arch
        kwargs.setdefault("rollout_buffer_class", CostRolloutBuffer)
        super().__init__(policy, env, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        layers: list[nn.Module] = []
        width = get_flattened_obs_dim(self.observation_space)
        for hidden in self.cost_net_arch:
            layers += [nn.Linear(width, int(hidden)), nn.Tanh()]
            width = int(hidden)
        layers.append(nn.Linear(width, 1))
        self.cost_net = nn.Sequential(*layers).to(self.device)
        self.cost_optimizer = th.optim.Adam(self.cost_net.parameters(), lr=self.lr_schedule(1))
        self._cost_recorder: _CostRecorder | None = None

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_cost_recorder", "cost_net", "cost_optimizer"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        names, variables = super()._get_torch_save_params()
        return [*names, "cost_net", "cost_optimizer"], variables

    def cost_values(self, obs: th.Tensor | dict[str, th.Tensor]) -> th.Tensor:
        """``V_c`` of a batch of (normalised) observations, shape ``(batch,)``.

        Raises:
            TypeError: On dict observations (the fleet's are a flat ``Box``).
        """
        features = preprocess_obs(obs, self.observation_space)
        if not isinstance(features, th.Tensor):
            raise TypeError("the cost critic needs Box observations, not a dict")
        flat = th.flatten(features.float(), start_dim=1)
        return self.cost_net(flat).flatten()  # type: ignore[no-any-return]

    def predict_cost_values(self, obs: th.Tensor | dict[str, th.Tensor]) -> np.ndarray:
        """:meth:`cost_values` without gradients, as numpy."""
        with th.no_grad():
            return self.cost_values(obs).cpu().numpy()

    @property
    def lagrange_multiplier(self) -> float:
        """The present λ."""
        return self.multiplier.value

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """SB3's rollout with the cost channel recorded, then the cost GAE."""
        if self._cost_recorder is None:
            self._cost_recorder = _CostRecorder(self)
            self._cost_recorder.init_callback(self)
        recorder = self._cost_recorder
        recorder.inner = callback
        if not super().collect_rollouts(env, recorder, rollout_buffer, n_rollout_steps):
            return False
        if not isinstance(rollout_buffer, CostRolloutBuffer):
            raise TypeError(f"PPOLagrangian needs a CostRolloutBuffer, got {type(rollout_buffer)}")
        last = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]  # a Box obs
        rollout_buffer.compute_cost_returns_and_advantage(
            self.predict_cost_values(last),
            np.asarray(self._last_episode_starts, dtype=np.float32),
        )
        return True

    def _update_multiplier(self) -> float:
        recorder = self._cost_recorder
        if recorder is not None and recorder.finished_costs:
            mean_cost = float(np.mean(recorder.finished_costs))
            self.multiplier.update(mean_cost)
            self.logger.record("safe/episode_cost", mean_cost)
            self.logger.record(
                "safe/episode_cost_measured", np.mean(recorder.finished_measured_costs)
            )
            recorder.finished_costs.clear()
            recorder.finished_measured_costs.clear()
        self.logger.record("safe/lagrange_multiplier", self.multiplier.value)
        return self.multiplier.value

    def train(self) -> None:
        """One PPO-Lagrangian update: λ step, then epochs of actor, critic and cost critic."""
        self.policy.set_training_mode(True)
        self._update_learning_rate([self.policy.optimizer, self.cost_optimizer])
        clip = float(self.clip_range(self._current_progress_remaining))  # type: ignore[operator]
        lam = self._update_multiplier()
        cost_adv_mean = float(np.mean(self.rollout_buffer.cost_advantages))
        pg_losses, value_losses, cost_losses, entropies, kls, clip_fractions = (
            [] for _ in range(6)
        )
        keep_going = True
        for _ in range(self.n_epochs):
            for data in self.rollout_buffer.get(self.batch_size):
                actions = data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    actions = actions.long().flatten()
                values, log_prob, entropy = self.policy.evaluate_actions(data.observations, actions)
                advantages = data.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                combined = (advantages - lam * (data.cost_advantages - cost_adv_mean)) / (1.0 + lam)
                log_ratio = log_prob - data.old_log_prob
                ratio = th.exp(log_ratio)
                surrogate = th.min(combined * ratio, combined * th.clamp(ratio, 1 - clip, 1 + clip))
                pg_loss = -surrogate.mean()
                value_loss = F.mse_loss(data.returns, values.flatten())
                entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
                loss = pg_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                with th.no_grad():
                    approx_kl = float(th.mean((ratio - 1) - log_ratio).cpu())
                if self.target_kl is not None and approx_kl > 1.5 * self.target_kl:
                    keep_going = False
                    break
                self.policy.optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
                cost_loss = F.mse_loss(data.cost_returns, self.cost_values(data.observations))
                self.cost_optimizer.zero_grad()
                cost_loss.backward()  # type: ignore[no-untyped-call]
                th.nn.utils.clip_grad_norm_(self.cost_net.parameters(), self.max_grad_norm)
                self.cost_optimizer.step()
                pg_losses.append(pg_loss.item())
                value_losses.append(value_loss.item())
                cost_losses.append(cost_loss.item())
                entropies.append(entropy_loss.item())
                kls.append(approx_kl)
                clip_fractions.append(float(th.mean((th.abs(ratio - 1) > clip).float())))
            self._n_updates += 1
            if not keep_going:
                break
        for key, values_ in (
            ("train/policy_gradient_loss", pg_losses),
            ("train/value_loss", value_losses),
            ("train/cost_value_loss", cost_losses),
            ("train/entropy_loss", entropies),
            ("train/approx_kl", kls),
            ("train/clip_fraction", clip_fractions),
        ):
            if values_:
                self.logger.record(key, float(np.mean(values_)))
        self.last_cost_value_loss = float(np.mean(cost_losses)) if cost_losses else float("nan")
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip)
