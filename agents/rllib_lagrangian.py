"""PPO-Lagrangian with a cost critic on RLlib's new API stack (RLModule, Learner, ConnectorV2).

The RLlib counterpart of :mod:`pulsebms.agents.ppo_lagrangian` (same CMDP, same
:class:`~pulsebms.agents.lagrangian.LagrangeMultiplier`):

* :class:`CostCriticPPOTorchRLModule`: RLlib's default PPO module plus a cost value head
  ``V_c(s)`` (its own MLP on the observation; training-only, not on the EnvRunners and not
  in the exported policy);
* :class:`CostGeneralAdvantageEstimation`: a learner connector run after RLlib's GAE. Once
  per training iteration it steps λ on the mean pre-shield cost of the episodes that ended
  in the batch, computes cost GAE advantages and cost value targets from the steps'
  ``info["cost_pre_shield"]`` (``info["cost"]`` without a shield) and turns the batch's
  (standardised) reward advantages into ``(Â_r − λ (A_c − mean A_c)) / (1 + λ)``, so PPO's
  clipped surrogate is the PPO-Lag surrogate;
* :class:`PPOLagrangianTorchLearner`: PPO's torch learner plus the cost critic's loss, λ in
  its (checkpointed) state and ``lagrange_multiplier`` / ``episode_cost`` / ``cost_vf_loss``
  in the learner metrics;
* :func:`configure_ppo_lagrangian`: an ``AlgorithmConfig -> AlgorithmConfig`` hook that puts
  these in a ``PPOConfig`` (module spec, learner class, ``learner_config_dict``, an env
  creator that reports each episode's cost in its last ``info``);
* :class:`~pulsebms.agents.lagrangian.LagrangianSettings` (ray-free, re-exported here): the
  cost limit and λ's gains; its ``rllib_config_hook`` applies the hook above;
* :func:`build_rllib_lagrangian_algorithm`: the shielded PulseBMS env with the same
  settings as :func:`pulsebms.agents.rllib.build_rllib_algorithm`, plus the hook.

**Seam.** :func:`configure_ppo_lagrangian` is the only coupling to the rest of the RLlib
side: any builder that lets a caller pass a config hook (or learner class) before
``build_algo()`` can produce PPO-Lag; :func:`build_rllib_lagrangian_algorithm` builds the
config itself until :func:`pulsebms.agents.rllib.build_rllib_algorithm` takes one.

Limitations: single-agent, non-recurrent modules; with several Learners each steps λ on the
episodes of its own batch shard (keep ``num_learners=0`` or 1 for one λ).

Example:
    >>> from pulsebms.agents.rllib import ray_session, train_rllib
    >>> with ray_session(num_cpus=2):  # doctest: +SKIP
    ...     algo = build_rllib_lagrangian_algorithm(
    ...         "PulseBMS/FleetSmall-v0", LagrangianSettings(cost_limit=1.0), seed=0
    ...     )
    ...     run = train_rllib(algo, iterations=10, checkpoint_dir="runs/rllib_lag")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms import Algorithm, AlgorithmConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.env_context import EnvContext
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.postprocessing.value_predictions import compute_value_targets
from ray.tune.registry import register_env
from torch import nn

from pulsebms.agents.lagrangian import (
    COST_KEYS,
    LagrangeMultiplier,
    LagrangianPenalty,
    LagrangianSettings,
    RllibPPOLagrangianConfig,
    step_cost,
)
from pulsebms.agents.rllib import build_rllib_algorithm
from pulsebms.agents.rllib_env import DEFAULT_INFO_KEYS, compact_info, make_fleet_env
from pulsebms.agents.rllib_learner import PulsePPOTorchLearner
from pulsebms.agents.rllib_module import PulsePPOTorchRLModule

__all__ = [
    "COST_ADVANTAGES",
    "COST_VALUE_TARGETS",
    "LAGRANGIAN_ENV_NAME",
    "CostCriticPPOTorchRLModule",
    "CostGeneralAdvantageEstimation",
    "LagrangianSettings",
    "PPOLagrangianTorchLearner",
    "build_rllib_lagrangian_algorithm",
    "configure_ppo_lagrangian",
    "make_lagrangian_env",
]

COST_ADVANTAGES = "cost_advantages"
"""Batch column: cost GAE advantages (raw, not centred)."""
COST_VALUE_TARGETS = "cost_value_targets"
"""Batch column: the cost critic's regression targets."""
LAGRANGIAN_ENV_NAME = "pulsebms-fleet-episode-cost"
"""Env creator name of :func:`make_lagrangian_env`."""
_SETTINGS_KEY = "pulsebms_lagrangian"


def make_lagrangian_env(config: EnvContext | Mapping[str, Any]) -> gym.Env[Any, Any]:
    """:func:`pulsebms.agents.rllib.make_rllib_env` reporting ``info["episode_cost"]`` at the end.

    The shielded env is wrapped in :class:`~pulsebms.agents.lagrangian.LagrangianPenalty`
    with λ = 0 (the reward is unchanged), so the learner reads whole-episode pre-shield
    costs even when an episode spans several sampled chunks, then in
    :class:`~pulsebms.agents.rllib_env.CompactInfo` like every EnvRunner env.
    """
    return compact_info(LagrangianPenalty(make_fleet_env(config), multiplier=0.0), config)


register_env(LAGRANGIAN_ENV_NAME, make_lagrangian_env)


class CostCriticPPOTorchRLModule(PulsePPOTorchRLModule):
    """PulseBMS's PPO torch module with a cost value head ``cost_vf`` (training only).

    The head is an MLP on the (filtered) observation with the module's ``fcnet_hiddens``
    (tanh); it is not built on inference-only copies (EnvRunners), so acting, checkpoint
    loading as a policy and export see the plain PPO module.
    """

    def setup(self) -> None:
        """Build the PPO encoder and heads, then the cost value head."""
        super().setup()
        if self.inference_only:
            return
        space = self.observation_space
        if not isinstance(space, gym.spaces.Box):
            raise TypeError(f"the cost critic needs a Box observation space, got {space}")
        width = int(np.prod(space.shape))
        layers: list[nn.Module] = []
        model_config = self.model_config
        hiddens = (
            model_config.get("fcnet_hiddens", [64, 64])
            if isinstance(model_config, dict)
            else getattr(model_config, "fcnet_hiddens", [64, 64])
        )
        for hidden in hiddens:
            layers += [nn.Linear(width, int(hidden)), nn.Tanh()]
            width = int(hidden)
        layers.append(nn.Linear(width, 1))
        self.cost_vf = nn.Sequential(*layers)

    def get_non_inference_attributes(self) -> list[str]:
        """PPO's training-only attributes plus the cost head."""
        return [*super().get_non_inference_attributes(), "cost_vf"]

    def compute_cost_values(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``V_c`` of the batch's observations, shape ``(batch,)``."""
        obs = torch.flatten(torch.as_tensor(batch[Columns.OBS]).float(), start_dim=1)
        return self.cost_vf(obs).squeeze(-1)  # type: ignore[no-any-return]


class CostGeneralAdvantageEstimation(ConnectorV2):
    """Learner connector (after RLlib's GAE): λ step, cost GAE, PPO-Lag advantages.

    Args:
        input_observation_space: ConnectorV2's.
        input_action_space: ConnectorV2's.
        gamma: Discount of the cost return (the reward's).
        lambda_: GAE λ of the cost advantages (the reward's).
        multiplier: The learner's λ, stepped here once per call (one call per update).
        cost_keys: ``info`` keys tried in order for the step cost.
    """

    def __init__(
        self,
        input_observation_space: Any = None,
        input_action_space: Any = None,
        *,
        gamma: float,
        lambda_: float,
        multiplier: LagrangeMultiplier,
        cost_keys: Sequence[str] = COST_KEYS,
    ) -> None:
        super().__init__(input_observation_space, input_action_space)
        self.gamma = float(gamma)
        self.lambda_ = float(lambda_)
        self.multiplier = multiplier
        self.cost_keys = tuple(cost_keys)
        self.last_episode_cost: float | None = None

    def _episode_costs(self, episode: Any) -> tuple[np.ndarray, float | None]:
        """Per-row costs of an elongated chunk (last, artificial row 0) and its episode cost."""
        rows = len(episode)  # real steps + the artificial bootstrap step
        infos = episode.get_infos()
        if len(infos) != rows + 1:
            raise ValueError(
                f"cost GAE expects {rows + 1} infos for an episode chunk of {rows} rows "
                f"(run after AddOneTsToEpisodesAndTruncate), got {len(infos)}"
            )
        costs = np.zeros(rows, dtype=np.float32)
        costs[:-1] = [step_cost(info, self.cost_keys) for info in infos[1:rows]]
        last = infos[rows - 1] if rows > 1 else {}
        finished: float | None = None
        if "episode_cost" in last:
            finished = float(last["episode_cost"])
        elif episode.is_terminated and episode.t_started == 0:
            finished = float(costs.sum())
        return costs, finished

    def __call__(
        self,
        *,
        rl_module: Any,
        episodes: list[Any],
        batch: dict[str, Any],
        metrics: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Add cost advantages and targets to the batch and combine the advantages."""
        sa_episodes = list(
            self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False)
        )
        finished: list[float] = []
        for module_id, module_batch in batch.items():
            module = rl_module[module_id]
            if not isinstance(module, CostCriticPPOTorchRLModule):
                continue
            if module.is_stateful():
                raise NotImplementedError("PPO-Lagrangian supports non-recurrent modules only")
            own = [e for e in sa_episodes if e.module_id in (None, module_id)]
            per_episode = [self._episode_costs(e) for e in own]
            finished += [cost for _, cost in per_episode if cost is not None]
            costs = np.concatenate([c for c, _ in per_episode])
            with torch.no_grad():
                values = module.compute_cost_values(module_batch).cpu().numpy()
            if values.shape != costs.shape:
                raise ValueError(
                    f"cost GAE: {values.shape[0]} batch rows but {costs.shape[0]} episode rows"
                )
            targets = compute_value_targets(
                values=values,
                rewards=costs,
                terminateds=np.asarray(module_batch[Columns.TERMINATEDS], dtype=np.float32),
                truncateds=np.asarray(module_batch[Columns.TRUNCATEDS], dtype=np.float32),
                gamma=self.gamma,
                lambda_=self.lambda_,
            )
            module_batch[COST_ADVANTAGES] = (targets - values).astype(np.float32)
            module_batch[COST_VALUE_TARGETS] = targets.astype(np.float32)
        if finished:
            self.last_episode_cost = float(np.mean(finished))
            self.multiplier.update(self.last_episode_cost)
        lam = self.multiplier.value
        for module_id, module_batch in batch.items():
            if COST_ADVANTAGES not in module_batch:
                continue
            device = module_batch[Postprocessing.ADVANTAGES].device
            mask = module_batch.get(Columns.LOSS_MASK)
            cost_adv = torch.as_tensor(module_batch[COST_ADVANTAGES], device=device)
            valid = cost_adv if mask is None else cost_adv[torch.as_tensor(mask, device=device)]
            centred = cost_adv - valid.mean()
            reward_adv = module_batch[Postprocessing.ADVANTAGES]
            module_batch[Postprocessing.ADVANTAGES] = (reward_adv - lam * centred) / (1.0 + lam)
            module_batch[COST_ADVANTAGES] = cost_adv
            module_batch[COST_VALUE_TARGETS] = torch.as_tensor(
                module_batch[COST_VALUE_TARGETS], device=device
            )
            if metrics is not None:
                metrics.log_value((module_id, "lagrange_multiplier"), lam, window=1)
                if self.last_episode_cost is not None:
                    metrics.log_value((module_id, "episode_cost"), self.last_episode_cost, window=1)
        return batch


class PPOLagrangianTorchLearner(PulsePPOTorchLearner):
    """PPO's torch learner with a cost critic loss and a Lagrange multiplier in its state.

    Reads :class:`LagrangianSettings` from ``config.learner_config_dict`` (set by
    :func:`configure_ppo_lagrangian`).
    """

    def build(self) -> None:
        """PPO's build, then λ and the cost GAE connector (after RLlib's GAE)."""
        super().build()
        config = cast(PPOConfig, self.config)
        settings = config.learner_config_dict.get(_SETTINGS_KEY)
        if not isinstance(settings, LagrangianSettings):
            settings = LagrangianSettings(**dict(settings or {}))
        self.lagrangian = settings
        self.multiplier = settings.multiplier()
        self._pending_cost_vf_loss: dict[Any, torch.Tensor] = {}
        if self._learner_connector is not None:
            self._learner_connector.append(
                CostGeneralAdvantageEstimation(
                    gamma=config.gamma,
                    lambda_=config.lambda_,
                    multiplier=self.multiplier,
                    cost_keys=settings.cost_keys,
                )
            )

    def compute_loss_for_module(
        self,
        *,
        module_id: Any,
        config: Any,
        batch: dict[str, Any],
        fwd_out: dict[str, Any],
    ) -> Any:
        """PPO's loss on the combined advantages plus the cost critic's squared error."""
        total = super().compute_loss_for_module(
            module_id=module_id, config=config, batch=batch, fwd_out=fwd_out
        )
        module = self.module[module_id].unwrapped()
        if not isinstance(module, CostCriticPPOTorchRLModule) or COST_VALUE_TARGETS not in batch:
            return total
        error = torch.pow(module.compute_cost_values(batch) - batch[COST_VALUE_TARGETS], 2.0)
        if Columns.LOSS_MASK in batch:
            mask = batch[Columns.LOSS_MASK]
            cost_vf_loss = torch.sum(error[mask]) / torch.sum(mask)
        else:
            cost_vf_loss = torch.mean(error)
        # Logged once per update (window one: the last minibatch's value), not per minibatch.
        self._pending_cost_vf_loss[module_id] = cost_vf_loss.detach()
        return total + self.lagrangian.cost_vf_coeff * cost_vf_loss

    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        """Log the update's last cost critic loss (one sync per update), then PPO's hooks."""
        for module_id, cost_vf_loss in self._pending_cost_vf_loss.items():
            self.metrics.log_value((module_id, "cost_vf_loss"), cost_vf_loss.item(), window=1)
        self._pending_cost_vf_loss.clear()
        super().after_gradient_based_update(timesteps=timesteps)

    def get_state(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The learner's state plus λ's."""
        state: dict[str, Any] = super().get_state(*args, **kwargs)
        state[_SETTINGS_KEY] = self.multiplier.state_dict()
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore the learner's state and λ's."""
        super().set_state(state)
        if _SETTINGS_KEY in state:
            self.multiplier.load_state_dict(state[_SETTINGS_KEY])


def configure_ppo_lagrangian(
    config: AlgorithmConfig, settings: LagrangianSettings | None = None
) -> AlgorithmConfig:
    """Turn a PPO config into PPO-Lagrangian (the hook for any RLlib config builder).

    Sets the RLModule spec to :class:`CostCriticPPOTorchRLModule` (the config's
    ``model_config`` is kept), the learner class to :class:`PPOLagrangianTorchLearner`,
    ``learner_config_dict`` to ``settings``, swaps the PulseBMS env creator
    (:data:`pulsebms.agents.rllib.RLLIB_ENV_NAME`) for :data:`LAGRANGIAN_ENV_NAME`, and adds
    ``settings.cost_keys`` to the ``info`` entries the EnvRunners keep.

    Args:
        config: A (not yet built) ``PPOConfig`` on the new API stack.
        settings: The Lagrangian settings (defaults when ``None``).

    Returns:
        The same config object, changed.

    Raises:
        TypeError: If ``config`` is not a ``PPOConfig``.
    """
    if not isinstance(config, PPOConfig):
        raise TypeError(f"PPO-Lagrangian needs a PPOConfig, got {type(config).__name__}")
    settings = settings or LagrangianSettings()
    from pulsebms.agents.rllib import RLLIB_ENV_NAME

    env_config = dict(config.env_config)
    keys = env_config.get("info_keys", DEFAULT_INFO_KEYS)
    if keys is not None:  # the cost critic reads settings.cost_keys from the steps' infos
        env_config["info_keys"] = list(dict.fromkeys([*keys, *settings.cost_keys]))
    config.environment(
        LAGRANGIAN_ENV_NAME if config.env == RLLIB_ENV_NAME else config.env,
        env_config=env_config,
    )
    config.rl_module(rl_module_spec=RLModuleSpec(module_class=CostCriticPPOTorchRLModule))
    register_env(LAGRANGIAN_ENV_NAME, make_lagrangian_env)  # idempotent; Ray may be new
    config.learners(
        learner_class=PPOLagrangianTorchLearner,
        learner_config_dict={_SETTINGS_KEY: settings},
    )
    return config


def build_rllib_lagrangian_algorithm(
    env_id: str,
    settings: LagrangianSettings | None = None,
    *,
    env_kwargs: Mapping[str, Any] | None = None,
    shield: bool = True,
    shield_kwargs: Mapping[str, Any] | None = None,
    num_env_runners: int = 0,
    num_envs_per_env_runner: int = 1,
    seed: int = 0,
    train_batch_size: int = 2304,
    minibatch_size: int = 256,
    num_epochs: int = 10,
    lr: float = 3e-4,
    gamma: float = 0.99,
    lambda_: float = 0.95,
    clip_param: float = 0.2,
    vf_clip_param: float = 10.0,
    entropy_coeff: float = 0.0,
    hidden_sizes: Sequence[int] = (64, 64),
    normalize_observations: bool = True,
) -> Algorithm:
    """Build RLlib PPO-Lagrangian training on a shielded PulseBMS env (inside ``ray_session``).

    The arguments other than ``settings`` mean what they mean for
    :func:`pulsebms.agents.rllib.build_rllib_algorithm` (same defaults).

    Args:
        env_id: Registered id.
        settings: Cost limit, multiplier gains and cap (:class:`LagrangianSettings`).
        env_kwargs: FleetEnv constructor arguments.
        shield: Put the shield wrapper in front of the env.
        shield_kwargs: Keyword arguments of the wrapper.
        num_env_runners: Remote sampling actors (0: sample in the driver, repeatable).
        num_envs_per_env_runner: Envs per runner.
        seed: Seeds driver, learner and runners.
        train_batch_size: Env steps per iteration.
        minibatch_size: SGD minibatch size.
        num_epochs: Passes over each batch.
        lr: Adam step size (actor, critic and cost critic).
        gamma: Discount (reward and cost).
        lambda_: GAE λ (reward and cost).
        clip_param: PPO ratio clip.
        vf_clip_param: Clip of the value loss.
        entropy_coeff: Entropy bonus.
        hidden_sizes: Hidden widths of actor, critic and cost critic (tanh).
        normalize_observations: RLlib's ``MeanStdFilter`` on observations.

    Returns:
        The built algorithm.

    Raises:
        ValueError: If ``minibatch_size`` exceeds ``train_batch_size`` or a size is < 1.
    """
    lagrangian = settings or LagrangianSettings()
    agent = RllibPPOLagrangianConfig(
        train_batch_size=train_batch_size,
        minibatch_size=minibatch_size,
        num_epochs=num_epochs,
        lr=lr,
        gamma=gamma,
        lambda_=lambda_,
        clip_param=clip_param,
        vf_clip_param=vf_clip_param,
        entropy_coeff=entropy_coeff,
        hidden_sizes=tuple(hidden_sizes),
        normalize_observations=normalize_observations,
        **{f.name: getattr(lagrangian, f.name) for f in dataclasses.fields(LagrangianSettings)},
    )
    if num_envs_per_env_runner < 1:
        raise ValueError(f"num_envs_per_env_runner must be >= 1, got {num_envs_per_env_runner}")
    # The one RLlib builder; the agent's rllib_config_hook makes it PPO-Lagrangian.
    return build_rllib_algorithm(
        env_id,
        agent,
        env_kwargs=env_kwargs,
        shield=shield,
        shield_kwargs=shield_kwargs,
        num_env_runners=num_env_runners,
        num_envs_per_env_runner=num_envs_per_env_runner,
        seed=seed,
    )
