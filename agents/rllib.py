"""Shielded PPO and SAC on Ray RLlib (new API stack: RLModule, Learner, EnvRunner, ConnectorV2).

The RLlib side of PulseBMS, for users who outgrow one machine. It mirrors
:mod:`pulsebms.agents.sb3`: the training environment is the FleetEnv behind
:class:`pulsebms.safety.ShieldWrapper` (made by :func:`pulsebms.agents.env_factory.make_env`
inside every EnvRunner), observations are normalised by a ``MeanStdFilter``
env-to-module connector (the counterpart of SB3's ``VecNormalize``; by default
:class:`~pulsebms.agents.rllib_vector_filter.VectorStepMeanStdFilter`, statistics updated
once per vector step as ``VecNormalize`` does, ``observation_filter="per_row"``: RLlib's
arithmetic), and a trained
checkpoint acts through the one :class:`~pulsebms.agents.type_aliases.Policy` protocol.

Pieces:

* :func:`ray_session`: a context manager that starts a local, offline, quiet Ray (or joins
  a cluster: ``address="auto"`` / ``"host:port"``) and always shuts it down (disconnects).
* :func:`build_rllib_algorithm`: an RLlib ``Algorithm`` from typed hyperparameters
  (:class:`~pulsebms.agents.rllib_config.RllibPPOConfig` or
  :class:`~pulsebms.agents.rllib_config.RllibSACConfig`, the latter with prioritized
  replay), with two seams for variants such as PPO-Lagrangian: ``learner_class`` and
  ``config_hook`` (see there).
* :func:`train_rllib`: ``Algorithm.train()`` iterations up to an iteration count or an env-step
  budget, then a checkpoint; returns an :class:`RllibRun` with per-iteration
  :class:`RllibIterationMetrics`.
* :class:`~pulsebms.agents.rllib_policy.RLlibPolicy` (in :mod:`pulsebms.agents.rllib_policy`,
  re-exported here): a checkpoint as a deterministic policy, loaded without a Ray runtime.
* :func:`~pulsebms.agents.rllib_policy.rllib_torch_policy` (likewise): the same function as
  one ``torch.nn.Module``, the seam :mod:`pulsebms.export` turns into ONNX.

**Batched inference.** ``num_envs_per_env_runner`` > 1 makes each EnvRunner step a gymnasium
vector of envs and run the RLModule once per step on the stacked observations of all of
them; ``pulsebms-bench ray`` measures what that and more runners give.

**Episode cost.** The EnvRunners' env (:func:`~pulsebms.agents.rllib_env.make_rllib_env`)
keeps a compact ``info`` (the costs and interventions training reads; ``info_keys``) and
adds the episode's sums at its last step; :class:`EpisodeCostCallback` reports their means
per iteration (``episode_cost_mean`` of the measured ``info["cost"]``,
``episode_cost_pre_shield_mean``, ``shield_interventions_mean``). No Lagrangian penalty is
applied here (that is a ``learner_class`` / ``config_hook`` variant).

**Sampling cost.** Per env step an EnvRunner pays its connector pipelines, one RLModule
forward pass and the episode bookkeeping *per vector step*, so stepping several envs per
runner (``num_envs_per_env_runner``) divides that cost among them; the compact ``info``
keeps gymnasium's vector-info merging and the episodes sent to the Learner small; the
module (:class:`~pulsebms.agents.rllib_module.PulsePPOTorchRLModule`) skips RLlib's
per-step ``eval()``/``train()`` walks; the EnvRunners
(:class:`~pulsebms.agents.rllib_env_runner.PulseEnvRunner`) time each connector pipeline as
a whole instead of every piece; PPO's Learner
(:class:`~pulsebms.agents.rllib_learner.PulsePPOTorchLearner`) takes minibatches by index
and checks gradients once per step (updates bit-identical to RLlib's).
``pulsebms-bench ray`` measures the result against SB3.

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
    ...     algo = build_rllib_algorithm("PulseBMS/FleetSmall-v0", RllibSACConfig(), seed=0)
    ...     run = train_rllib(algo, total_env_steps=20_000, checkpoint_dir="runs/rllib/ckpt")
    ...     algo.stop()
    >>> policy = RLlibPolicy.from_checkpoint(run.checkpoint_path)  # doctest: +SKIP
    >>> action = policy.act(observation)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import ray
from ray.rllib.algorithms import Algorithm, AlgorithmConfig
from ray.rllib.algorithms.algorithm_config import TorchCompileWhatToCompile
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.learner import Learner
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_LEN_MEAN,
    EPISODE_RETURN_MEAN,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_EPISODES_LIFETIME,
)
from ray.tune.registry import register_env

from pulsebms.agents.rllib_config import (
    RaySettings,
    RllibAgentConfig,
    RllibPPOConfig,
    RllibSACConfig,
)
from pulsebms.agents.rllib_connectors import BatchedMeanStdFilter
from pulsebms.agents.rllib_env import (
    DEFAULT_INFO_KEYS,
    EPISODE_TOTALS,
    RLLIB_ENV_NAME,
    CompactInfo,
    make_rllib_env,
)
from pulsebms.agents.rllib_env_runner import PulseEnvRunner
from pulsebms.agents.rllib_learner import FUSED_ADAM_KEY, PulsePPOTorchLearner
from pulsebms.agents.rllib_module import (
    PulsePPOTorchRLModule,
    log_std_model_config,
    runner_inference_model_config,
)
from pulsebms.agents.rllib_policy import DeployedRLlibPolicy, RLlibPolicy, rllib_torch_policy
from pulsebms.agents.rllib_vector_filter import VectorStepMeanStdFilter

# RLlibPolicy, DeployedRLlibPolicy and rllib_torch_policy (loading a checkpoint for
# evaluation and export) live in pulsebms.agents.rllib_policy; re-exported here.
_LOG = logging.getLogger(__name__)

__all__ = [
    "ALGORITHMS",
    "DEFAULT_INFO_KEYS",
    "RLLIB_ENV_NAME",
    "CompactInfo",
    "ConfigHook",
    "DeployedRLlibPolicy",
    "EpisodeCostCallback",
    "RLlibPolicy",
    "RaySettings",
    "RllibIterationMetrics",
    "RllibPPOConfig",
    "RllibRun",
    "RllibSACConfig",
    "build_rllib_algorithm",
    "cpp_compiler_available",
    "local_system_config",
    "make_rllib_env",
    "observation_filter_caveat",
    "ray_session",
    "rllib_torch_policy",
    "train_rllib",
]

ALGORITHMS: dict[str, type[AlgorithmConfig]] = {"PPO": PPOConfig, "SAC": SACConfig}
"""RLlib algorithms :func:`build_rllib_algorithm` knows (continuous ``Box`` actions)."""

ConfigHook = Callable[[AlgorithmConfig], AlgorithmConfig]
"""Last edit of the RLlib config before the build (see :func:`build_rllib_algorithm`)."""

_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage reports: the build machines have no network
    "RAY_AUTH_MODE": "disabled",  # a local cluster needs no token
    "RAY_DEDUP_LOGS": "1",
}
"""Environment Ray reads at start; set (if unset) by :func:`ray_session`."""


# Registered at import, so that ``Algorithm.from_checkpoint`` (whose pickled config names the
# env and imports this module for the callback class) finds the creator in a fresh process.
register_env(RLLIB_ENV_NAME, make_rllib_env)


def _mean_std_filter(env: Any = None, spaces: Any = None, device: Any = None) -> ConnectorV2:
    """Env-to-module connector factory (module level, so remote EnvRunners can unpickle it).

    RLlib's ``MeanStdFilter``, updated and applied over the whole env vector at once
    (:class:`~pulsebms.agents.rllib_connectors.BatchedMeanStdFilter`: same statistics,
    same state and checkpoints).
    """
    return BatchedMeanStdFilter()


def _vector_step_mean_std_filter(
    env: Any = None, spaces: Any = None, device: Any = None
) -> ConnectorV2:
    """Env-to-module connector factory of the default observation filter (module level).

    :class:`~pulsebms.agents.rllib_vector_filter.VectorStepMeanStdFilter`: RLlib's
    ``MeanStdFilter`` state and checkpoints, statistics updated once per vector step.
    """
    return VectorStepMeanStdFilter()


def _observation_filter(params: RllibAgentConfig) -> Callable[..., ConnectorV2] | None:
    """The env-to-module connector factory ``params`` ask for (``None``: no filter)."""
    if not params.normalize_observations:
        return None
    if params.observation_filter == "per_row":
        return _mean_std_filter
    return _vector_step_mean_std_filter


def observation_filter_caveat(params: RllibAgentConfig, num_env_runners: int) -> str | None:
    """Why ``params``' observation filter is a poor choice with remote runners, if it is.

    RLlib's per-row ``MeanStdFilter`` (``observation_filter="per_row"``) keeps the rows
    since the last synchronisation as increments of the running mean, which RLlib's merge
    reads as their mean: from the second synchronisation on, the driver's merged statistics
    (and the ones it sends back to every remote EnvRunner) are wrong (docs/ray.md, "Tenth
    round"). :func:`build_rllib_algorithm` logs this warning; the local runner
    (``num_env_runners=0``) never merges and is not affected.

    Args:
        params: The agent's hyperparameters.
        num_env_runners: Remote EnvRunners.

    Returns:
        The warning, or ``None`` when there is nothing to warn about.

    Example:
        >>> observation_filter_caveat(RllibPPOConfig(), num_env_runners=2) is None
        True
        >>> per_row = RllibPPOConfig(observation_filter="per_row")
        >>> observation_filter_caveat(per_row, num_env_runners=0) is None
        True
        >>> observation_filter_caveat(per_row, num_env_runners=1)[:40]
        "observation_filter='per_row' with 1 remo"
    """
    if num_env_runners < 1 or not params.normalize_observations:
        return None
    if params.observation_filter != "per_row":
        return None
    return (
        f"observation_filter='per_row' with {num_env_runners} remote EnvRunner(s): RLlib's "
        "per-row MeanStdFilter merges wrong statistics from the second synchronisation on "
        "(docs/ray.md, 'Tenth round'); use 'vector_step' unless you compare with RLlib's "
        "arithmetic on purpose"
    )


def _quiet_ray_loggers(level: int) -> None:
    for name in ("ray", "ray.rllib", "ray.tune", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(level)


LOCAL_START_ATTEMPTS = 3
"""Starts of a local Ray tried before giving up (see :func:`_start_local_ray`)."""


def _start_local_ray(**kwargs: Any) -> None:
    """``ray.init(**kwargs)`` for a local Ray, retried when its node start timed out.

    Ray waits a fixed 30 s for the new node's raylet to register; on a heavily loaded
    machine (many processes on few cores, or a niced job) that wait can run out although
    nothing is wrong. The processes that attempt started (children of this process that
    were not there before it) are killed and the start is tried again, up to
    :data:`LOCAL_START_ATTEMPTS` times; any other error is raised at once.
    """
    import psutil

    me = psutil.Process()
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        before = {child.pid for child in me.children(recursive=True)}
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # Ray raises a bare Exception for this timeout
            if "timed out during startup" not in str(exc) or attempt == LOCAL_START_ATTEMPTS:
                raise
            ray.shutdown()
            for child in me.children(recursive=True):
                if child.pid not in before:
                    with contextlib.suppress(psutil.Error):
                        child.kill()


def local_system_config(
    *, worker_niceness: int = 0, metrics: bool = False, task_events: bool = False
) -> dict[str, Any]:
    """Ray's ``_system_config`` for a local Ray that :func:`ray_session` starts.

    * ``worker_niceness``: Ray starts worker processes (the EnvRunners) 15 nice levels
      below the driver; on a busy machine they then starve, and sampling is the job.
    * ``enable_metrics_collection: False`` unless ``metrics``: every process's Ray
      metrics (``ray.util.metrics`` counters and timers; RLlib records some per env
      step and per minibatch) return without recording, and the metrics agent exports
      nothing. With ``metrics`` the key is left out, so Ray's default applies (on, or
      ``RAY_enable_metrics_collection`` from the environment).
    * ``task_events_report_interval_ms: 0`` unless ``task_events``: no process records
      task state events (submitted, running, finished, per remote call and actor task)
      or sends them to the GCS every second; they feed only the dashboard's task views
      and the state API (``ray list tasks``, ``ray timeline``), which a session without
      a dashboard does not serve. With ``task_events`` the key is left out (Ray's
      default: on).

    Example:
        >>> local_system_config()
        {'worker_niceness': 0, 'enable_metrics_collection': False, \
'task_events_report_interval_ms': 0}
        >>> local_system_config(worker_niceness=5, metrics=True, task_events=True)
        {'worker_niceness': 5}
    """
    config: dict[str, Any] = {"worker_niceness": int(worker_niceness)}
    if not metrics:
        config["enable_metrics_collection"] = False
    if not task_events:
        config["task_events_report_interval_ms"] = 0
    return config


@contextlib.contextmanager
def ray_session(
    *,
    address: str | None = None,
    num_cpus: int | None = 2,
    temp_dir: str | Path | None = None,
    object_store_memory: int | None = None,
    include_dashboard: bool = False,
    log_level: str = "ERROR",
    worker_niceness: int = 0,
    metrics: bool = False,
    task_events: bool = False,
) -> Iterator[None]:
    """Run a block inside a quiet Ray runtime (local or a cluster) and always shut it down.

    Sets ``RAY_USAGE_STATS_ENABLED=0`` (no usage reports: the build machines have no
    network) and ``RAY_AUTH_MODE=disabled`` (a local cluster needs no token) in
    ``os.environ`` unless already set, starts no dashboard and (unless ``metrics`` /
    ``task_events``) no metrics collection and no task events in a local Ray, forwards no
    worker logs to the driver, sets the ``ray`` loggers to ``log_level`` and ignores Ray's
    own deprecation warnings inside the block. Python's root logging configuration is left
    alone. ``ray.shutdown()`` runs on the way out, also when the block raises; for a joined
    cluster it only disconnects this driver (the cluster keeps running). If Ray is already
    initialised in this process (by the caller), it is reused and left running.

    Args:
        address: ``None`` or ``"local"``: a private local Ray. ``"auto"``: the cluster
            started on this machine by ``ray start --head``. ``"host:port"``: that head's
            GCS address. Workers on a cluster run the cluster's Python: install PulseBMS
            (same version) on every node.
        num_cpus: CPUs a local Ray may schedule on (EnvRunners and Learners each take one by
            default; with ``num_env_runners=0`` everything runs in the driver). Ignored
            when joining a cluster.
        temp_dir: A local Ray's session directory (logs, sockets, spilled objects); ``None``
            uses Ray's default under ``/tmp/ray``. Keep the path short (Unix socket paths are
            limited to ~107 characters). Ignored when joining a cluster.
        object_store_memory: Bytes for a local object store; ``None`` lets Ray choose.
        include_dashboard: Start the dashboard (local Ray only).
        log_level: Level name of the ``ray`` loggers in this process (``"ERROR"``,
            ``"WARNING"``, ``"INFO"``, ...).
        worker_niceness: Nice increment of a local Ray's worker processes (EnvRunners)
            over the driver's. Ray's own default is 15, which on a machine shared with
            other jobs starves the runners (they are the training's main work); 0 runs them
            at the driver's priority. Ignored when joining a cluster (set by ``ray start``).
        metrics: Ray's metrics collection in a local Ray. ``False`` (the default) starts
            it with Ray's ``enable_metrics_collection`` system setting off: the counters
            and timers Ray and RLlib record (``ray.util.metrics``) return without
            recording in every process of the session, and the node's metrics agent
            exports nothing (no Prometheus endpoint). Nothing reads them without a
            dashboard or a Prometheus scraping the node. ``True`` leaves Ray's default
            (on, or what ``RAY_enable_metrics_collection`` in the environment says).
            Ignored when joining a cluster: its processes keep the setting the cluster
            was started with.
        task_events: Ray's task events in a local Ray. ``False`` (the default) starts it
            with ``task_events_report_interval_ms`` 0: no process records a state event
            per task or actor call, nor reports them to the GCS each second (they feed
            the dashboard's task views and ``ray list tasks``/``ray timeline``, which need
            a dashboard). ``True`` keeps Ray's default (on). Ignored when joining a
            cluster (``RAY_task_events_report_interval_ms=0`` in the environment of
            ``ray start`` turns them off there).

    Yields:
        Nothing; Ray is initialised inside the block.

    Raises:
        ValueError: If ``log_level`` is not a logging level name.
        ConnectionError: If the cluster at ``address`` cannot be reached.

    Example:
        >>> with ray_session(num_cpus=2):  # doctest: +SKIP
        ...     algo = build_rllib_algorithm("PulseBMS/FleetSmall-v0")
        >>> with ray_session(address="10.0.0.5:6379"):  # doctest: +SKIP
        ...     algo = build_rllib_algorithm("PulseBMS/FleetSmall-v0", num_env_runners=8)
    """
    level = logging.getLevelName(str(log_level).upper())
    if not isinstance(level, int):
        raise ValueError(f"log_level must be a logging level name, got {log_level!r}")
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    joins = RaySettings(address=address).joins_cluster
    owned = not ray.is_initialized()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
        if owned:
            _quiet_ray_loggers(level)
            if joins:
                ray.init(
                    address=str(address),
                    log_to_driver=False,
                    configure_logging=False,
                    logging_level=level,
                )
            else:
                _start_local_ray(
                    num_cpus=num_cpus,
                    include_dashboard=include_dashboard,
                    _system_config=local_system_config(
                        worker_niceness=worker_niceness, metrics=metrics, task_events=task_events
                    ),
                    log_to_driver=False,
                    ignore_reinit_error=True,
                    configure_logging=False,
                    logging_level=level,
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

    Reads the episode's sums that :class:`~pulsebms.agents.rllib_env.CompactInfo` puts in
    the last step's ``info["episode_totals"]`` (exact also for episodes that span several
    ``sample()`` calls; no per-step work) and logs their means over recent episodes under
    ``env_runners/episode_cost_mean`` (measured ``info["cost"]``),
    ``env_runners/episode_cost_pre_shield_mean`` and
    ``env_runners/shield_interventions_mean``. Episodes of an env without that wrapper are
    not reported.
    """

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
        totals = episode.get_infos(-1).get(EPISODE_TOTALS)
        if not totals:
            return
        for key, name in (
            ("cost", "episode_cost_mean"),
            ("cost_pre_shield", "episode_cost_pre_shield_mean"),
            ("shield_interventions", "shield_interventions_mean"),
        ):
            metrics_logger.log_value(name, float(totals.get(key, 0.0)), reduce="mean")


def _agent_from_legacy(
    agent: RllibAgentConfig | None, algorithm: str | None, overrides: Mapping[str, Any]
) -> RllibAgentConfig:
    """The hyperparameters: ``agent`` (or the algorithm's defaults) with ``overrides``."""
    if agent is None:
        name = "PPO" if algorithm is None else str(algorithm).upper()
        if name not in ALGORITHMS:
            raise ValueError(f"unknown RLlib algorithm {algorithm!r}; known: {sorted(ALGORITHMS)}")
        base: RllibAgentConfig = RllibPPOConfig() if name == "PPO" else RllibSACConfig()
    else:
        base = agent
        if algorithm is not None and str(algorithm).upper() != base.algorithm:
            raise ValueError(
                f"algorithm={algorithm!r} contradicts the {type(base).__name__} given "
                f"({base.algorithm})"
            )
    if not overrides:
        return base
    known = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"{type(base).__name__} has no field(s) {unknown}")
    return dataclasses.replace(base, **overrides)


def _model_config(agent: RllibAgentConfig) -> dict[str, Any]:
    hidden = [int(h) for h in agent.hidden_sizes]
    if isinstance(agent, RllibSACConfig):
        return {"fcnet_hiddens": hidden, "fcnet_activation": "relu"}
    return {
        "fcnet_hiddens": hidden,
        "fcnet_activation": "tanh",
        "vf_share_layers": False,
        **log_std_model_config(agent.log_std_init),
        **runner_inference_model_config(agent.runner_inference),
    }


def _algorithm_config(agent: RllibAgentConfig) -> AlgorithmConfig:
    """The algorithm's config class with the agent's training settings."""
    if isinstance(agent, RllibSACConfig):
        replay: dict[str, Any] = {"capacity": int(agent.buffer_capacity)}
        if agent.prioritized_replay:
            replay.update(
                type="PrioritizedEpisodeReplayBuffer",
                alpha=float(agent.prioritized_replay_alpha),
                beta=float(agent.prioritized_replay_beta),
            )
        else:
            replay["type"] = "EpisodeReplayBuffer"
        return SACConfig().training(  # type: ignore[no-untyped-call]  # RLlib API is untyped
            train_batch_size_per_learner=int(agent.train_batch_size),
            actor_lr=agent.actor_lr,
            critic_lr=agent.critic_lr,
            alpha_lr=agent.alpha_lr,
            gamma=agent.gamma,
            tau=agent.tau,
            initial_alpha=agent.initial_alpha,
            n_step=int(agent.n_step),
            replay_buffer_config=replay,
            num_steps_sampled_before_learning_starts=int(agent.learning_starts),
            training_intensity=agent.training_intensity,
        )
    return PPOConfig().training(  # type: ignore[no-untyped-call]  # RLlib API is untyped
        train_batch_size_per_learner=int(agent.train_batch_size),
        minibatch_size=int(agent.minibatch_size),
        num_epochs=int(agent.num_epochs),
        lr=agent.lr,
        gamma=agent.gamma,
        lambda_=agent.lambda_,
        clip_param=agent.clip_param,
        vf_clip_param=agent.vf_clip_param,
        use_kl_loss=bool(agent.use_kl_loss),
        kl_coeff=agent.kl_coeff,
        grad_clip=agent.grad_clip,
        entropy_coeff=agent.entropy_coeff,
    )


def build_rllib_algorithm(
    env_id: str,
    agent: RllibAgentConfig | None = None,
    *,
    env_kwargs: Mapping[str, Any] | None = None,
    shield: bool = True,
    shield_kwargs: Mapping[str, Any] | None = None,
    algorithm: str | None = None,
    num_env_runners: int = 0,
    num_envs_per_env_runner: int = 1,
    num_cpus_per_env_runner: float = 1.0,
    seed: int = 0,
    learner_class: type[Learner] | None = None,
    config_hook: ConfigHook | None = None,
    callbacks: type[RLlibCallback] | None = EpisodeCostCallback,
    info_keys: Sequence[str] | None = DEFAULT_INFO_KEYS,
    torch_compile_learner: bool = False,
    fused_adam: bool | None = None,
    **hyperparameters: Any,
) -> Algorithm:
    """Build an RLlib algorithm (new API stack) training on a shielded PulseBMS env.

    Call inside :func:`ray_session` (or with Ray already initialised). The env creator
    :func:`make_rllib_env` is registered as :data:`RLLIB_ENV_NAME`; ``env_id``, ``shield``,
    ``shield_kwargs`` and ``env_kwargs`` travel to every EnvRunner in ``env_config``, so
    they must be picklable plain data.

    **Seams for variants** (PPO-Lagrangian with a cost critic lives outside this module):

    * ``learner_class``: the Learner used instead of the algorithm's default, e.g. a
      ``PPOTorchLearner`` subclass with a cost-advantage loss (``config.learners(
      learner_class=...)``).
    * ``config_hook``: ``AlgorithmConfig -> AlgorithmConfig``, applied last, just before
      ``build_algo()``: add learner connectors (cost GAE), an ``rl_module(rl_module_spec=...)``
      with a cost value head, more callbacks, or ``config.algo_class = ...``.
    * Without either argument, a hyperparameter dataclass that defines
      ``rllib_learner_class() -> type[Learner]`` and/or ``rllib_config_hook(config) ->
      config`` (e.g. a subclass of :class:`RllibPPOConfig`) supplies them itself, so
      ``pulsebms-train agent=<its option>`` needs no change to the entry point.

    Args:
        env_id: Registered id (``PulseBMS/FleetSmall-v0``, ...; the
            ``"pulsebms.envs:PulseBMS/FleetSmall-v0"`` form is accepted too).
        agent: Hyperparameters (:class:`RllibPPOConfig` or :class:`RllibSACConfig`, or a
            subclass); ``None``: the defaults of ``algorithm``.
        env_kwargs: FleetEnv constructor arguments (``fleet``, ``scenario``, ``dt_s``,
            ``horizon_steps``, ``fidelity``, ...).
        shield: Put :class:`pulsebms.safety.ShieldWrapper` in front of the env (the default:
            the agent never acts on the plant unshielded).
        shield_kwargs: Keyword arguments of the wrapper (limits overrides, ...).
        algorithm: A key of :data:`ALGORITHMS` (``"PPO"``, ``"SAC"``) when ``agent`` is
            ``None``; if both are given they must agree.
        num_env_runners: Remote sampling actors; 0 samples in the driver process (the only
            bit-repeatable setting). Each remote runner takes ``num_cpus_per_env_runner``
            Ray CPUs: keep the total within the ``num_cpus`` of :func:`ray_session`.
        num_envs_per_env_runner: Envs stepped in one vector per runner (gymnasium sync
            vectorisation; one batched RLModule forward pass per step for all of them).
        num_cpus_per_env_runner: Ray CPUs reserved per remote runner.
        seed: Seeds the driver, the Learner and every EnvRunner (``seed + worker_index``)
            and the envs' first reset.
        learner_class: See the seams above.
        config_hook: See the seams above.
        callbacks: RLlib callbacks class (default :class:`EpisodeCostCallback`; a hook may
            chain more).
        info_keys: ``info`` entries the EnvRunners keep per step
            (:class:`~pulsebms.agents.rllib_env.CompactInfo`); ``None`` keeps all of them
            (slower sampling; for callbacks of your own that read more).
        torch_compile_learner: Compile the PPO Learner's whole per-minibatch update
            (forward, loss, backward, optimizer step) with ``torch.compile`` (inductor):
            RLlib's ``torch_compile_learner`` with ``what_to_compile="complete_update"``.
            The first update runs eagerly, the next ones compile (seconds; once more
            when a guarded counter changes). Seeded runs stay bit-for-bit repeatable, but
            the weights differ from eager ones in the last bits from the first compiled
            update on. PPO Learners only. See docs/ray.md, "Seventh round".
        fused_adam: Adam's kernel in the PPO Learner. ``None`` (default): the Learner's
            default, torch's fused kernel for PulseBMS's PPO Learners (RLlib's own Adam
            for others, SAC). ``True``: fused (PPO Learners only). ``False``: the
            multi-tensor ``foreach`` step, RLlib's arithmetic bit for bit (a no-op for
            Learners that are not PulseBMS's PPO ones). Fused and foreach run the same
            update formula, rounded differently in the last bits; each repeats run to run.
        **hyperparameters: Field overrides of ``agent`` (``train_batch_size=64``, ...): the
            keyword form of earlier versions.

    Returns:
        The built algorithm (call :func:`train_rllib`, then ``stop()`` it).

    Raises:
        RuntimeError: If ``torch_compile_learner`` is set and no C++ compiler is found.
        ValueError: If ``algorithm`` is unknown or contradicts ``agent``, or a size is not
            positive, or ``minibatch_size`` exceeds ``train_batch_size``, or
            ``torch_compile_learner``/``fused_adam=True`` is asked of a Learner that is not a
            :class:`~pulsebms.agents.rllib_learner.PulsePPOTorchLearner`.
        TypeError: If a hyperparameter override names no field of ``agent``.

    Example:
        >>> with ray_session():  # doctest: +SKIP
        ...     algo = build_rllib_algorithm(
        ...         "PulseBMS/FleetSmall-v0", RllibPPOConfig(train_batch_size=576)
        ...     )
        ...     result = algo.train()
        ...     algo.stop()
    """
    if num_env_runners < 0:
        raise ValueError(f"num_env_runners must be ≥ 0, got {num_env_runners}")
    if num_envs_per_env_runner < 1:
        raise ValueError(f"num_envs_per_env_runner must be ≥ 1, got {num_envs_per_env_runner}")
    params = _agent_from_legacy(agent, algorithm, hyperparameters)
    caveat = observation_filter_caveat(params, num_env_runners)
    if caveat is not None:
        _LOG.warning(caveat)
    if learner_class is None:
        get_learner = getattr(params, "rllib_learner_class", None)
        learner_class = get_learner() if callable(get_learner) else None
    if config_hook is None:
        hook = getattr(params, "rllib_config_hook", None)
        config_hook = hook if callable(hook) else None
    register_env(RLLIB_ENV_NAME, make_rllib_env)  # idempotent; also done at import
    if params.gamma_horizon_h is not None:  # γ from hours at the agent's step (one probe env)
        from pulsebms.agents.discount import resolve_gamma
        from pulsebms.envs.decision import agent_step_s

        probe = gym.make(env_id, **dict(env_kwargs or {}))
        try:
            params = resolve_gamma(params, agent_step_s(probe))
        finally:
            probe.close()  # type: ignore[no-untyped-call]  # gymnasium leaves close unannotated
    env_config = {
        "env_id": env_id,
        "shield": shield,
        "shield_kwargs": dict(shield_kwargs or {}),
        "env_kwargs": dict(env_kwargs or {}),
        "info_keys": None if info_keys is None else list(info_keys),
    }
    config = (
        _algorithm_config(params)
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .framework("torch")
        .environment(RLLIB_ENV_NAME, env_config=env_config)
        .env_runners(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=num_envs_per_env_runner,
            # RLlib hints an int; Ray schedules fractional CPUs (0.5) just as well.
            num_cpus_per_env_runner=num_cpus_per_env_runner,  # type: ignore[arg-type]
            env_to_module_connector=_observation_filter(params),
            env_runner_cls=PulseEnvRunner,
        )
        .learners(num_learners=0)
        .rl_module(model_config=_model_config(params))
        .debugging(seed=seed, log_level="ERROR")
    )
    if isinstance(params, RllibPPOConfig):
        config = config.rl_module(rl_module_spec=RLModuleSpec(module_class=PulsePPOTorchRLModule))
        if learner_class is None:
            learner_class = PulsePPOTorchLearner
    elif params.rollout_fragment_length is not None:
        config = config.env_runners(rollout_fragment_length=int(params.rollout_fragment_length))
    if callbacks is not None:
        config = config.callbacks(callbacks)
    if learner_class is not None:
        config = config.learners(learner_class=learner_class)
    pulse_ppo_learner = learner_class is not None and issubclass(
        learner_class, PulsePPOTorchLearner
    )
    if (torch_compile_learner or fused_adam) and not pulse_ppo_learner:
        raise ValueError(
            "torch_compile_learner and fused_adam are measured and tested for PPO "
            f"Learners (PulsePPOTorchLearner) only, not {params.algorithm}"
        )
    if fused_adam is not None and pulse_ppo_learner:
        config = config.learners(learner_config_dict={FUSED_ADAM_KEY: bool(fused_adam)})
    if torch_compile_learner:
        if not cpp_compiler_available():
            raise RuntimeError(
                "torch_compile_learner needs a C++ compiler for torch's inductor "
                "backend (g++ or clang++ on PATH, or CXX); none was found. Install "
                "one, or train with the eager Learner: ray.torch_compile_learner=false "
                "(other rounding, so other weights than a compiled run's)"
            )
        config = config.framework(
            torch_compile_learner=True,
            torch_compile_learner_what_to_compile=TorchCompileWhatToCompile.COMPLETE_UPDATE,
            torch_compile_learner_dynamo_backend="inductor",
        )
    if config_hook is not None:
        config = config_hook(config)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
        return config.build_algo()


def cpp_compiler_available() -> bool:
    """Whether a C++ compiler for torch's inductor backend is on this machine.

    ``torch.compile`` on CPU (``ray.torch_compile_learner``) writes and compiles C++;
    inductor takes ``$CXX`` if set, else a ``g++``/``c++``/``clang++`` on ``PATH``.

    Example:
        >>> isinstance(cpp_compiler_available(), bool)
        True
    """
    import shutil

    candidates = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    return any(name and shutil.which(name) for name in candidates)


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
        policy_loss: Policy loss of the last update (PPO surrogate; SAC actor loss).
        vf_loss: PPO value-function loss (NaN for SAC).
        entropy: Entropy of the action distribution (PPO; NaN for SAC).
        time_this_iter_s: Wall time of the iteration [s].
        qf_loss: SAC critic loss (NaN for PPO, and before SAC's first update).
        alpha: SAC entropy temperature (NaN for PPO).
        lagrange_multiplier: PPO-Lagrangian's λ after the update (NaN for other agents).
        cost_vf_loss: PPO-Lagrangian's cost-critic loss (NaN for other agents).
        episode_cost_pre_shield_mean: Mean summed ``info["cost_pre_shield"]`` of recently
            finished episodes (the CMDP cost PPO-Lagrangian constrains).
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
    qf_loss: float = math.nan
    alpha: float = math.nan
    lagrange_multiplier: float = math.nan
    cost_vf_loss: float = math.nan
    episode_cost_pre_shield_mean: float = math.nan

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
            qf_loss=num(learner, "qf_loss"),
            alpha=num(learner, "alpha_value"),
            lagrange_multiplier=num(learner, "lagrange_multiplier"),
            cost_vf_loss=num(learner, "cost_vf_loss"),
            episode_cost_pre_shield_mean=num(runners, "episode_cost_pre_shield_mean"),
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
    iterations: int | None = None,
    checkpoint_dir: str | Path,
    total_env_steps: int | None = None,
    max_iterations: int = 100_000,
) -> RllibRun:
    """Train for ``iterations`` iterations or ``total_env_steps`` env steps, then checkpoint.

    Give exactly one budget. With ``total_env_steps``, ``algo.train()`` is called until the
    sampled env steps reach it (PPO samples ``train_batch_size`` per iteration; SAC a
    rollout fragment per runner and env, so its iteration count follows from the budget).
    The algorithm is left running (the caller stops it, or trains on).

    Args:
        algo: From :func:`build_rllib_algorithm` (inside a :func:`ray_session`).
        iterations: Number of ``algo.train()`` calls.
        checkpoint_dir: Directory the checkpoint is written into (created; existing
            checkpoint files in it are overwritten).
        total_env_steps: Env-step budget (the ``train.total_timesteps`` of ``pulsebms-train``).
        max_iterations: Guard on the iterations a step budget may take.

    Returns:
        The checkpoint path and per-iteration metrics.

    Raises:
        ValueError: If neither or both budgets are given, or one is < 1.

    Example:
        >>> with ray_session():  # doctest: +SKIP
        ...     algo = build_rllib_algorithm("PulseBMS/FleetSmall-v0", seed=0)
        ...     run = train_rllib(algo, iterations=20, checkpoint_dir="runs/rllib")
        ...     algo.stop()
        >>> [m.episode_return_mean for m in run.metrics]  # doctest: +SKIP
    """
    if (iterations is None) == (total_env_steps is None):
        raise ValueError("give exactly one of iterations and total_env_steps")
    if iterations is not None and iterations < 1:
        raise ValueError(f"iterations must be ≥ 1, got {iterations}")
    if total_env_steps is not None and total_env_steps < 1:
        raise ValueError(f"total_env_steps must be ≥ 1, got {total_env_steps}")
    metrics: list[RllibIterationMetrics] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
        while True:
            result = algo.train()  # type: ignore[no-untyped-call]  # RLlib API is untyped
            metrics.append(RllibIterationMetrics.from_result(result))
            if iterations is not None:
                if len(metrics) >= iterations:
                    break
            elif (
                metrics[-1].env_steps_lifetime >= (total_env_steps or 0)
                or len(metrics) >= max_iterations
            ):
                break
        path = Path(checkpoint_dir).resolve()
        path.mkdir(parents=True, exist_ok=True)
        saved = algo.save_to_path(path.as_posix())
    return RllibRun(checkpoint_path=Path(saved), metrics=tuple(metrics))
