"""Shielded PPO on Ray RLlib (new API stack: RLModule, Learner, EnvRunner, ConnectorV2).

The RLlib side of PulseBMS, for users who outgrow one machine. It mirrors
:mod:`pulsebms.agents.sb3`: the training environment is the FleetEnv behind
:class:`pulsebms.safety.ShieldWrapper` (made by :func:`pulsebms.agents.env_factory.make_env`
inside every EnvRunner), observations are normalised by RLlib's ``MeanStdFilter``
env-to-module connector (the counterpart of SB3's ``VecNormalize``), and a trained
checkpoint acts through the one :class:`~pulsebms.agents.type_aliases.Policy` protocol.

Pieces:

* :func:`ray_session`: a context manager that starts a local, offline, quiet Ray and always
  shuts it down.
* :func:`build_rllib_algorithm`: a PPO ``Algorithm`` from typed hyperparameters.
* :func:`train_rllib`: a fixed number of ``Algorithm.train()`` iterations, then a checkpoint;
  returns an :class:`RllibRun` with per-iteration :class:`RllibIterationMetrics`.
* :class:`~pulsebms.agents.rllib_policy.RLlibPolicy` (in :mod:`pulsebms.agents.rllib_policy`,
  re-exported here): a checkpoint as a deterministic policy (mean of the action
  distribution, clipped to the action space), loaded without a Ray runtime.
* :func:`~pulsebms.agents.rllib_policy.rllib_torch_policy` (likewise): the same function as
  one ``torch.nn.Module`` (observation filter → RLModule → mean action → clip), the seam
  :mod:`pulsebms.export` turns into ONNX.

**Episode cost.** :class:`EpisodeCostCallback` sums ``info["cost"]`` (the measured
constraint-violation cost) and the shield's interventions over each episode and reports
their means per iteration (``episode_cost_mean``, ``shield_interventions_mean``). No
Lagrangian penalty is applied on this side yet (see :mod:`pulsebms.agents.lagrangian`).

**Repeatability.** ``seed`` goes to ``config.debugging(seed=...)``: RLlib seeds Python, numpy
and torch in the driver, in each Learner and in each EnvRunner (``seed + worker_index``),
and resets each EnvRunner's envs with that seed once. With ``num_env_runners=0`` (sampling
in the driver process, the default) and CPU torch, two runs with the same seed produce the
same weights and the same actions (tested). With remote EnvRunners, sampling is still
seeded per runner, but the order in which runners' samples reach the learner is not fixed,
so runs are not bit-repeatable.

Example:
    >>> from pulsebms.agents.rllib import (  # doctest: +SKIP
    ...     RLlibPolicy, build_rllib_algorithm, ray_session, train_rllib,
    ... )
    >>> with ray_session(num_cpus=2):  # doctest: +SKIP
    ...     algo = build_rllib_algorithm("PulseBMS/FleetSmall-v0", seed=0)
    ...     run = train_rllib(algo, iterations=10, checkpoint_dir="runs/rllib/ckpt")
    >>> policy = RLlibPolicy.from_checkpoint(run.checkpoint_path)  # doctest: +SKIP
    >>> action = policy.act(observation)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import ray
from ray.rllib.algorithms import Algorithm
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.env_to_module import MeanStdFilter
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.env.env_context import EnvContext
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_LEN_MEAN,
    EPISODE_RETURN_MEAN,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_EPISODES_LIFETIME,
)
from ray.tune.registry import register_env

from pulsebms.agents.rllib_policy import DeployedRLlibPolicy, RLlibPolicy, rllib_torch_policy

# RLlibPolicy, DeployedRLlibPolicy and rllib_torch_policy (loading a checkpoint for
# evaluation and export) live in pulsebms.agents.rllib_policy; re-exported here.
__all__ = [
    "ALGORITHMS",
    "RLLIB_ENV_NAME",
    "DeployedRLlibPolicy",
    "EpisodeCostCallback",
    "RLlibPolicy",
    "RllibIterationMetrics",
    "RllibRun",
    "build_rllib_algorithm",
    "make_rllib_env",
    "ray_session",
    "rllib_torch_policy",
    "train_rllib",
]

ALGORITHMS: dict[str, type[PPOConfig]] = {"PPO": PPOConfig}
"""RLlib algorithms :func:`build_rllib_algorithm` knows (on-policy, continuous ``Box`` actions)."""

RLLIB_ENV_NAME = "pulsebms-fleet"
"""Name under which :func:`make_rllib_env` is registered with ``ray.tune.registry``."""

_ENV_PACKAGE_PREFIX = "pulsebms.envs:"


def make_rllib_env(config: EnvContext | Mapping[str, Any]) -> gym.Env[Any, Any]:
    """Env creator registered as :data:`RLLIB_ENV_NAME` (runs inside every EnvRunner).

    Builds the env with :func:`pulsebms.agents.env_factory.make_env`, which imports
    :mod:`pulsebms.envs` (so the ids are registered in any worker process) and wraps it in
    :class:`pulsebms.safety.ShieldWrapper` when asked.

    Args:
        config: RLlib's ``env_config`` (an ``EnvContext`` in EnvRunners): ``env_id`` (a
            registered id, optionally as ``"pulsebms.envs:<id>"``), ``shield`` (bool),
            ``shield_kwargs`` and ``env_kwargs`` (mappings of plain data).

    Returns:
        The (shielded) environment.

    Raises:
        KeyError: If ``config`` has no ``env_id``.
    """
    from pulsebms.agents.env_factory import make_env

    env_id = str(config["env_id"]).removeprefix(_ENV_PACKAGE_PREFIX)
    return make_env(
        env_id,
        shield=bool(config.get("shield", True)),
        shield_kwargs=dict(config.get("shield_kwargs") or {}),
        **dict(config.get("env_kwargs") or {}),
    )


# Registered at import, so that ``Algorithm.from_checkpoint`` (whose pickled config names the
# env and imports this module for the callback class) finds the creator in a fresh process.
register_env(RLLIB_ENV_NAME, make_rllib_env)


def _mean_std_filter(env: Any = None, spaces: Any = None, device: Any = None) -> ConnectorV2:
    """Env-to-module connector factory (module level, so remote EnvRunners can unpickle it)."""
    return MeanStdFilter()


@contextlib.contextmanager
def ray_session(
    *,
    num_cpus: int = 2,
    temp_dir: str | Path | None = None,
    object_store_memory: int | None = None,
) -> Iterator[None]:
    """Run a block inside a local, offline, quiet Ray runtime and always shut it down.

    Sets ``RAY_USAGE_STATS_ENABLED=0`` (no usage reports: the build machines have no
    network) and ``RAY_AUTH_MODE=disabled`` (a local cluster needs no token) in
    ``os.environ`` before starting Ray, starts no dashboard, forwards no worker logs to the
    driver and leaves Python's logging configuration alone. If Ray is already running in
    this process (started by the caller), it is reused and left running.

    Args:
        num_cpus: CPUs Ray may schedule on (EnvRunners and Learners each take one by default;
            with ``num_env_runners=0`` everything runs in the driver).
        temp_dir: Ray's session directory (logs, sockets, spilled objects); ``None`` uses
            Ray's default under ``/tmp/ray``. Tests pass a ``tmp_path``; keep the path short
            (Unix socket paths are limited to ~107 characters).
        object_store_memory: Bytes for the object store; ``None`` lets Ray choose.

    Yields:
        Nothing; Ray is initialised inside the block.

    Example:
        >>> with ray_session(num_cpus=2):  # doctest: +SKIP
        ...     algo = build_rllib_algorithm("PulseBMS/FleetSmall-v0")
    """
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    owned = not ray.is_initialized()
    if owned:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
            configure_logging=False,
            object_store_memory=object_store_memory,
            _temp_dir=None if temp_dir is None else str(Path(temp_dir).resolve()),
        )
    try:
        yield
    finally:
        if owned:
            ray.shutdown()


class EpisodeCostCallback(RLlibCallback):
    """Reports per-episode constraint cost and shield interventions to RLlib's metrics.

    Sums ``info["cost"]`` and ``info["shield"]["intervened"]`` over each episode (across
    episode chunks, in the episode's ``custom_data``) and logs their episode means under
    ``env_runners/episode_cost_mean`` and ``env_runners/shield_interventions_mean``.
    """

    def on_episode_step(
        self,
        *,
        episode: Any,
        **kwargs: Any,
    ) -> None:
        """Add the last step's cost and interventions to the episode's running sums."""
        info = episode.get_infos(-1)
        shield = info.get("shield") or {}
        data = episode.custom_data
        data["cost"] = data.get("cost", 0.0) + float(info.get("cost", 0.0))
        data["interventions"] = data.get("interventions", 0) + int(shield.get("intervened", 0))

    def on_episode_end(
        self,
        *,
        episode: Any,
        metrics_logger: Any = None,
        **kwargs: Any,
    ) -> None:
        """Log the finished episode's sums (windowed means over recent episodes)."""
        if metrics_logger is None:
            return
        data = episode.custom_data
        metrics_logger.log_value("episode_cost_mean", float(data.get("cost", 0.0)), reduce="mean")
        metrics_logger.log_value(
            "shield_interventions_mean", float(data.get("interventions", 0)), reduce="mean"
        )


def build_rllib_algorithm(
    env_id: str,
    *,
    env_kwargs: Mapping[str, Any] | None = None,
    shield: bool = True,
    shield_kwargs: Mapping[str, Any] | None = None,
    algorithm: str = "PPO",
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
    """Build an RLlib algorithm (new API stack) training on a shielded PulseBMS env.

    Call inside :func:`ray_session` (or with Ray already initialised). The env creator
    :func:`make_rllib_env` is registered as :data:`RLLIB_ENV_NAME`; ``env_id``, ``shield``,
    ``shield_kwargs`` and ``env_kwargs`` travel to every EnvRunner in ``env_config``, so
    they must be picklable plain data.

    Args:
        env_id: Registered id (``PulseBMS/FleetSmall-v0``, ...; the
            ``"pulsebms.envs:PulseBMS/FleetSmall-v0"`` form is accepted too).
        env_kwargs: FleetEnv constructor arguments (``fleet``, ``scenario``, ``dt_s``,
            ``horizon_steps``, ``fidelity``, ...).
        shield: Put :class:`pulsebms.safety.ShieldWrapper` in front of the env (the default:
            the agent never acts on the plant unshielded).
        shield_kwargs: Keyword arguments of the wrapper (limits overrides, ...).
        algorithm: A key of :data:`ALGORITHMS` (``"PPO"``).
        num_env_runners: Remote sampling actors; 0 samples in the driver process (the only
            bit-repeatable setting, and the fastest on 2 cores). Each remote runner takes
            one Ray CPU: keep it below the ``num_cpus`` of :func:`ray_session`.
        num_envs_per_env_runner: Envs stepped in one vector per runner (gymnasium sync
            vectorisation).
        seed: Seeds the driver, the Learner and every EnvRunner (``seed + worker_index``)
            and the envs' first reset.
        train_batch_size: Env steps per training iteration (per Learner). The default is 8
            days of 288 five-minute steps, so every update sees whole days; a batch smaller
            than an episode trains on episode fragments and reports no episode return until
            an episode ends.
        minibatch_size: SGD minibatch size; must not exceed ``train_batch_size``.
        num_epochs: Passes over each train batch.
        lr: Adam step size.
        gamma: Discount factor per control interval.
        lambda_: GAE λ.
        clip_param: PPO ratio clip.
        vf_clip_param: Clip of the value-function loss; it is in reward units, so raise it
            if you rescale rewards.
        entropy_coeff: Entropy bonus; 0 for continuous actions unless exploration stalls.
        hidden_sizes: Hidden layer widths of the actor and critic MLPs (tanh).
        normalize_observations: Add RLlib's ``MeanStdFilter`` env-to-module connector
            (running mean/std, clipped to ±10). Its statistics are saved in the checkpoint
            and applied, frozen, by :class:`RLlibPolicy` and :func:`rllib_torch_policy`.

    Returns:
        The built algorithm (call :func:`train_rllib`, then ``stop()`` it).

    Raises:
        ValueError: If ``algorithm`` is unknown, or a size is not positive, or
            ``minibatch_size`` exceeds ``train_batch_size``.

    Example:
        >>> with ray_session():  # doctest: +SKIP
        ...     algo = build_rllib_algorithm("PulseBMS/FleetSmall-v0", train_batch_size=576)
        ...     result = algo.train()
        ...     algo.stop()
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown RLlib algorithm {algorithm!r}; known: {sorted(ALGORITHMS)}")
    for name, value in (
        ("train_batch_size", train_batch_size),
        ("minibatch_size", minibatch_size),
        ("num_epochs", num_epochs),
        ("num_envs_per_env_runner", num_envs_per_env_runner),
    ):
        if value < 1:
            raise ValueError(f"{name} must be ≥ 1, got {value}")
    if num_env_runners < 0:
        raise ValueError(f"num_env_runners must be ≥ 0, got {num_env_runners}")
    if minibatch_size > train_batch_size:
        raise ValueError(
            f"minibatch_size ({minibatch_size}) must not exceed train_batch_size "
            f"({train_batch_size})"
        )
    register_env(RLLIB_ENV_NAME, make_rllib_env)  # idempotent; also done at import
    env_config = {
        "env_id": env_id,
        "shield": shield,
        "shield_kwargs": dict(shield_kwargs or {}),
        "env_kwargs": dict(env_kwargs or {}),
    }
    config = (
        ALGORITHMS[algorithm]()
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .framework("torch")
        .environment(RLLIB_ENV_NAME, env_config=env_config)
        .env_runners(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=num_envs_per_env_runner,
            env_to_module_connector=_mean_std_filter if normalize_observations else None,
        )
        .learners(num_learners=0)
        .training(
            train_batch_size_per_learner=train_batch_size,
            minibatch_size=minibatch_size,
            num_epochs=num_epochs,
            lr=lr,
            gamma=gamma,
            lambda_=lambda_,
            clip_param=clip_param,
            vf_clip_param=vf_clip_param,
            entropy_coeff=entropy_coeff,
        )
        .rl_module(
            model_config={
                "fcnet_hiddens": [int(h) for h in hidden_sizes],
                "fcnet_activation": "tanh",
                "vf_share_layers": False,
            }
        )
        .callbacks(EpisodeCostCallback)
        .debugging(seed=seed, log_level="ERROR")
    )
    return config.build_algo()


@dataclass(frozen=True)
class RllibIterationMetrics:
    """What one ``Algorithm.train()`` iteration reported (NaN where nothing was reported).

    Attributes:
        iteration: Training iteration, from 1.
        env_steps_lifetime: Env steps sampled since the start.
        episodes_lifetime: Episodes finished since the start.
        episode_return_mean: Mean return of recently finished episodes (NaN before the
            first episode ends).
        episode_len_mean: Mean length of recently finished episodes [steps].
        episode_cost_mean: Mean summed ``info["cost"]`` of recently finished episodes.
        shield_interventions_mean: Mean number of shielded pack-steps per episode.
        policy_loss: PPO surrogate loss of the last minibatch.
        vf_loss: Value-function loss.
        entropy: Entropy of the action distribution.
        time_this_iter_s: Wall time of the iteration [s].
    """

    iteration: int
    env_steps_lifetime: int
    episodes_lifetime: int
    episode_return_mean: float
    episode_len_mean: float
    episode_cost_mean: float
    shield_interventions_mean: float
    policy_loss: float
    vf_loss: float
    entropy: float
    time_this_iter_s: float

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> RllibIterationMetrics:
        """Pick the metrics out of an ``Algorithm.train()`` result dict.

        Args:
            result: The nested result.

        Returns:
            The metrics.
        """
        runners: Mapping[str, Any] = result.get(ENV_RUNNER_RESULTS, {})
        learner: Mapping[str, Any] = result.get(LEARNER_RESULTS, {}).get(DEFAULT_MODULE_ID, {})

        def num(mapping: Mapping[str, Any], key: str) -> float:
            value = mapping.get(key)
            return math.nan if value is None else float(value)

        return cls(
            iteration=int(result.get("training_iteration", 0)),
            env_steps_lifetime=int(
                result.get(NUM_ENV_STEPS_SAMPLED_LIFETIME)
                or runners.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0)
            ),
            episodes_lifetime=int(runners.get(NUM_EPISODES_LIFETIME, 0)),
            episode_return_mean=num(runners, EPISODE_RETURN_MEAN),
            episode_len_mean=num(runners, EPISODE_LEN_MEAN),
            episode_cost_mean=num(runners, "episode_cost_mean"),
            shield_interventions_mean=num(runners, "shield_interventions_mean"),
            policy_loss=num(learner, "policy_loss"),
            vf_loss=num(learner, "vf_loss"),
            entropy=num(learner, "entropy"),
            time_this_iter_s=num(result, "time_this_iter_s"),
        )


@dataclass(frozen=True)
class RllibRun:
    """Outcome of :func:`train_rllib`.

    Attributes:
        checkpoint_path: The algorithm checkpoint (a directory; load it with
            :meth:`RLlibPolicy.from_checkpoint` or ``Algorithm.from_checkpoint``).
        metrics: One entry per iteration, in order.
    """

    checkpoint_path: Path
    metrics: tuple[RllibIterationMetrics, ...]

    def policy(self) -> RLlibPolicy:
        """The trained checkpoint as a deterministic :class:`RLlibPolicy`."""
        return RLlibPolicy.from_checkpoint(self.checkpoint_path)


def train_rllib(
    algo: Algorithm,
    *,
    iterations: int,
    checkpoint_dir: str | Path,
) -> RllibRun:
    """Run ``iterations`` training iterations, then save a checkpoint to ``checkpoint_dir``.

    The algorithm is left running (the caller ``stop()``s it, or trains on).

    Args:
        algo: From :func:`build_rllib_algorithm` (inside a :func:`ray_session`).
        iterations: Number of ``algo.train()`` calls (each samples ``train_batch_size`` env
            steps and updates the policy).
        checkpoint_dir: Directory the checkpoint is written into (created; existing
            checkpoint files in it are overwritten).

    Returns:
        The checkpoint path and per-iteration metrics.

    Raises:
        ValueError: If ``iterations`` < 1.

    Example:
        >>> with ray_session():  # doctest: +SKIP
        ...     algo = build_rllib_algorithm("PulseBMS/FleetSmall-v0", seed=0)
        ...     run = train_rllib(algo, iterations=20, checkpoint_dir="runs/rllib")
        ...     algo.stop()
        >>> [m.episode_return_mean for m in run.metrics]  # doctest: +SKIP
    """
    if iterations < 1:
        raise ValueError(f"iterations must be ≥ 1, got {iterations}")
    results = [algo.train() for _ in range(iterations)]  # type: ignore[no-untyped-call]  # RLlib API is untyped
    metrics = tuple(RllibIterationMetrics.from_result(result) for result in results)
    path = Path(checkpoint_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    saved = algo.save_to_path(path.as_posix())
    return RllibRun(checkpoint_path=Path(saved), metrics=metrics)
