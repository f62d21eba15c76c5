"""RLlib hyperparameters and Ray runtime settings as plain typed dataclasses (no Ray import).

These are what the Hydra ``agent=rllib_ppo`` / ``agent=rllib_sac`` options and the ``ray``
config group instantiate to, and what :func:`pulsebms.agents.rllib.build_rllib_algorithm`
and :func:`pulsebms.agents.rllib.ray_session` take. They import nothing from Ray, so the
experiment schemas (:mod:`pulsebms.experiments.schemas`) can derive their fields without
pulling Ray into every ``pulsebms-train`` start.

* :class:`RllibPPOConfig`: PPO (on-policy) hyperparameters, RLlib names.
* :class:`RllibSACConfig`: SAC with prioritized experience replay (Schaul et al. 2016).
* :class:`RaySettings`: where Ray runs (local, ``auto``, ``host:port``), its CPUs, the
  EnvRunners and how many envs each steps in one batch.

Example:
    >>> RllibPPOConfig().algorithm, RllibSACConfig().algorithm
    ('PPO', 'SAC')
    >>> RllibSACConfig().prioritized_replay
    True
    >>> RaySettings(address="auto").joins_cluster, RaySettings().joins_cluster
    (True, False)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "OBSERVATION_FILTERS",
    "RUNNER_INFERENCE_KINDS",
    "RaySettings",
    "RllibAgentConfig",
    "RllibPPOConfig",
    "RllibSACConfig",
    "check_runner_inference",
]


def _positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{owner}.{name} must be > 0, got {value}")


OBSERVATION_FILTERS = ("vector_step", "per_row")
"""Values of ``observation_filter`` (see :class:`RllibPPOConfig`)."""


def _filter_name(owner: str, name: str) -> None:
    if name not in OBSERVATION_FILTERS:
        raise ValueError(
            f"{owner}.observation_filter must be one of {OBSERVATION_FILTERS}, got {name!r}"
        )


RUNNER_INFERENCE_KINDS = ("numpy", "torch")
"""Values of ``runner_inference`` (see :class:`RllibPPOConfig`)."""


def check_runner_inference(owner: str, kind: str) -> None:
    """Refuse a ``runner_inference`` that is not one of :data:`RUNNER_INFERENCE_KINDS`.

    Raises:
        ValueError: Naming ``owner`` and the values allowed.
    """
    if kind not in RUNNER_INFERENCE_KINDS:
        raise ValueError(
            f"{owner}.runner_inference must be one of {RUNNER_INFERENCE_KINDS}, got {kind!r}"
        )


@dataclass(frozen=True)
class RllibPPOConfig:
    """PPO hyperparameters on RLlib's new API stack (RLlib names, PulseBMS defaults).

    Attributes:
        train_batch_size: Env steps per training iteration (per Learner). The default is 8
            days of 288 five-minute steps, so every update sees whole days.
        minibatch_size: SGD minibatch size; must not exceed ``train_batch_size``.
        num_epochs: Passes over each train batch.
        lr: Adam step size.
        gamma: Discount factor per control interval.
        lambda_: GAE λ.
        clip_param: PPO ratio clip.
        vf_clip_param: Clip of the value-function loss, in reward units (``inf``: no clip,
            as SB3's PPO with ``clip_range_vf=None``).
        use_kl_loss: Add RLlib's adaptive KL penalty to the PPO loss (SB3's PPO has none).
        kl_coeff: Initial coefficient of the KL penalty (with ``use_kl_loss``).
        grad_clip: Clip of the gradients' global norm per SGD step (``None``: none, RLlib's
            default; SB3's PPO clips at ``max_grad_norm=0.5``).
        entropy_coeff: Entropy bonus; 0 for continuous actions unless exploration stalls.
        hidden_sizes: Hidden layer widths of the actor and critic MLPs (tanh).
        normalize_observations: RLlib's ``MeanStdFilter`` env-to-module connector (its
            statistics are saved in the checkpoint and applied, frozen, at evaluation).
        observation_filter: How that filter updates its statistics: ``"vector_step"``
            (default) once per vector step from all envs' observations, with the parallel
            mean/variance formula, as SB3's ``VecNormalize``
            (:class:`~pulsebms.agents.rllib_vector_filter.VectorStepMeanStdFilter`);
            ``"per_row"``: RLlib's ``MeanStdFilter`` arithmetic, one Welford push per env,
            bit for bit (:class:`~pulsebms.agents.rllib_connectors.BatchedMeanStdFilter`).
            Both keep the same state and checkpoints.
        gamma_horizon_h: Effective horizon in hours; when given it replaces ``gamma`` by
            ``1 − step_h / gamma_horizon_h`` at the agent's step
            (:func:`pulsebms.agents.discount.resolve_gamma`).
        log_std_init: Initial log standard deviation of the Gaussian policy, then a free
            (state-independent) learned parameter, as SB3's PPO ``log_std_init``; ``None``:
            RLlib's default (the network outputs the log-std, starting near 0, σ ≈ 1).
        runner_inference: How the EnvRunners run the policy's exploration pass:
            ``"numpy"`` (default): the actor MLP and the Gaussian's sample on numpy views of
            the weights, ~6× cheaper per vector step than torch's dispatch for a batch of a
            few envs (:mod:`pulsebms.agents.rllib_numpy_actor`; float32, equal to torch's
            pass to rounding; draws from a numpy ``Generator`` seeded per runner);
            ``"torch"``: RLlib's torch pass. The Learner, evaluation and export always
            run torch.

    Raises:
        ValueError: If a size, rate or clip is not positive, ``kl_coeff`` is negative,
            ``minibatch_size`` exceeds ``train_batch_size``, ``observation_filter`` is
            not one of :data:`OBSERVATION_FILTERS` or ``runner_inference`` not one of
            :data:`RUNNER_INFERENCE_KINDS`.
    """

    algorithm: ClassVar[str] = "PPO"

    train_batch_size: int = 2304
    minibatch_size: int = 256
    num_epochs: int = 10
    lr: float = 3e-4
    gamma: float = 0.99
    lambda_: float = 0.95
    clip_param: float = 0.2
    vf_clip_param: float = 10.0
    use_kl_loss: bool = True
    kl_coeff: float = 0.2
    grad_clip: float | None = None
    entropy_coeff: float = 0.0
    hidden_sizes: Sequence[int] = (64, 64)
    normalize_observations: bool = True
    observation_filter: str = "vector_step"
    gamma_horizon_h: float | None = None
    log_std_init: float | None = None
    runner_inference: str = "numpy"

    def __post_init__(self) -> None:
        _filter_name("RllibPPOConfig", self.observation_filter)
        check_runner_inference("RllibPPOConfig", self.runner_inference)
        if self.log_std_init is not None and not math.isfinite(self.log_std_init):
            raise ValueError(f"RllibPPOConfig.log_std_init must be finite, got {self.log_std_init}")
        if self.grad_clip is not None:
            _positive("RllibPPOConfig", grad_clip=self.grad_clip)
        if self.kl_coeff < 0:
            raise ValueError(f"RllibPPOConfig.kl_coeff must be ≥ 0, got {self.kl_coeff}")
        _positive("RllibPPOConfig", vf_clip_param=self.vf_clip_param)
        _positive(
            "RllibPPOConfig",
            train_batch_size=self.train_batch_size,
            minibatch_size=self.minibatch_size,
            num_epochs=self.num_epochs,
            lr=self.lr,
        )
        if self.minibatch_size > self.train_batch_size:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) must not exceed train_batch_size "
                f"({self.train_batch_size})"
            )


@dataclass(frozen=True)
class RllibSACConfig:
    """SAC hyperparameters with prioritized experience replay (RLlib names).

    Replay is RLlib's ``PrioritizedEpisodeReplayBuffer``: transitions are drawn with
    probability ∝ ``|TD error|^α`` and importance-weighted by ``(N·P)^-β``; the Learner
    writes each sampled transition's new TD error back as its priority.

    Attributes:
        train_batch_size: Transitions per gradient step (sampled from the buffer).
        actor_lr: Adam step size of the policy.
        critic_lr: Adam step size of the twin Q networks.
        alpha_lr: Adam step size of the entropy temperature.
        gamma: Discount factor per control interval.
        tau: Polyak coefficient of the target Q networks.
        initial_alpha: Initial entropy temperature.
        n_step: n-step returns.
        buffer_capacity: Replay capacity [env steps].
        prioritized_replay: Prioritized replay (``False``: uniform ``EpisodeReplayBuffer``).
        prioritized_replay_alpha: Priority exponent α (0 is uniform).
        prioritized_replay_beta: Importance-sampling exponent β.
        learning_starts: Env steps sampled (random-ish policy) before the first update.
        training_intensity: Replayed / sampled step ratio; ``None`` lets RLlib use
            ``train_batch_size / rollout fragment`` (one update per sampled fragment).
        rollout_fragment_length: Env steps each env of each EnvRunner samples per training
            iteration; ``None``: RLlib's default (1: one iteration, with its fixed
            overhead, per vector step). Larger fragments cut that overhead; with
            ``training_intensity=None`` there is still one update per iteration, so set
            ``training_intensity`` to keep updates per sampled step.
        hidden_sizes: Hidden layer widths of the policy and Q MLPs (relu).
        normalize_observations: RLlib's ``MeanStdFilter`` (see :class:`RllibPPOConfig`).
        observation_filter: See :class:`RllibPPOConfig`.
        gamma_horizon_h: See :class:`RllibPPOConfig`.

    Raises:
        ValueError: If a size or rate is not positive, α/β is outside [0, 1] or
            ``observation_filter`` is not one of :data:`OBSERVATION_FILTERS`.
    """

    algorithm: ClassVar[str] = "SAC"

    train_batch_size: int = 256
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    initial_alpha: float = 1.0
    n_step: int = 1
    buffer_capacity: int = 100_000
    prioritized_replay: bool = True
    prioritized_replay_alpha: float = 0.6
    prioritized_replay_beta: float = 0.4
    learning_starts: int = 1_000
    training_intensity: float | None = None
    hidden_sizes: Sequence[int] = (64, 64)
    normalize_observations: bool = True
    observation_filter: str = "vector_step"
    gamma_horizon_h: float | None = None
    rollout_fragment_length: int | None = None

    def __post_init__(self) -> None:
        _filter_name("RllibSACConfig", self.observation_filter)
        if self.rollout_fragment_length is not None and self.rollout_fragment_length < 1:
            raise ValueError(
                "RllibSACConfig.rollout_fragment_length must be >= 1 or None, got "
                f"{self.rollout_fragment_length}"
            )
        _positive(
            "RllibSACConfig",
            train_batch_size=self.train_batch_size,
            actor_lr=self.actor_lr,
            critic_lr=self.critic_lr,
            alpha_lr=self.alpha_lr,
            tau=self.tau,
            n_step=self.n_step,
            buffer_capacity=self.buffer_capacity,
        )
        for name in ("prioritized_replay_alpha", "prioritized_replay_beta"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"RllibSACConfig.{name} must be in [0, 1], got {value}")
        if self.learning_starts < 0:
            raise ValueError(
                f"RllibSACConfig.learning_starts must be ≥ 0, got {self.learning_starts}"
            )


RllibAgentConfig = RllibPPOConfig | RllibSACConfig
"""Any RLlib hyperparameter set :func:`pulsebms.agents.rllib.build_rllib_algorithm` takes."""


@dataclass(frozen=True)
class RaySettings:
    """Where and how Ray runs a training job (the ``ray`` config group).

    Attributes:
        address: ``None`` or ``"local"``: start a private local Ray in this process (and
            shut it down after). ``"auto"``: join the cluster started on this machine with
            ``ray start --head``; ``"host:port"``: join that cluster's head (GCS address).
            A joined cluster is only disconnected from at the end, never stopped.
        num_cpus: CPUs of a local Ray (ignored when joining: the cluster has its own).
        num_env_runners: Remote sampling actors (one CPU each); 0 samples in the driver
            (the only bit-repeatable setting).
        num_envs_per_env_runner: Envs each runner steps as one vector, so one batched
            forward pass of the policy serves all of them.
        num_cpus_per_env_runner: CPUs reserved per remote runner.
        include_dashboard: Start Ray's dashboard (off: no web server, no extra processes).
        log_level: Level of the ``ray`` loggers in the driver (``"ERROR"`` keeps the console
            to real problems; RLlib's deprecation chatter is silenced below ``ERROR`` too).
        temp_dir: Session folder of a local Ray (``None``: Ray's default ``/tmp/ray``);
            keep it short (Unix socket paths are limited to ~107 characters).
        metrics: Ray's own metrics collection (Prometheus counters and timers that Ray and
            RLlib record in every process, exported through each node's metrics agent).
            Off (the default) for a local Ray: nothing reads them when no dashboard or
            Prometheus runs, and recording them costs a little CPU in every process.
            ``True`` keeps Ray's default (on). Applies to a local Ray only: a joined cluster
            keeps the setting it was started with (``RAY_enable_metrics_collection=0`` in
            the environment of ``ray start`` turns it off there). See docs/ray.md.
        task_events: Ray's task events (a state event per task and actor call, reported
            to the GCS each second, for the dashboard's task views and ``ray list
            tasks``). Off (the default) for a local Ray: nothing reads them without a
            dashboard, and recording them costs CPU in the driver and every runner on
            every remote call. ``True`` keeps Ray's default (on). Local Ray only, as
            ``metrics``.
        torch_compile_learner: Compile the PPO Learner's per-minibatch update with
            ``torch.compile`` (inductor; a C++ compiler must be installed). Off: RLlib's
            eager update. On: seconds of compiling in the first iterations, then a
            cheaper update; seeded runs repeat bit for bit, but not the eager run's
            weights. PPO agents only (``rllib_ppo``, ``rllib_ppo_lagrangian``).
        fused_adam: Adam with torch's fused kernel in the PPO Learner (on, the default:
            one kernel per step, repeatable run to run, rounded differently from RLlib's
            Adam in the last bits; off: the ``foreach`` multi-tensor step, RLlib's
            arithmetic bit for bit). PPO agents only; SAC keeps RLlib's Adam.

    Raises:
        ValueError: If a count is negative or ``address`` is empty.
    """

    address: str | None = None
    num_cpus: int | None = 2
    num_env_runners: int = 0
    num_envs_per_env_runner: int = 1
    num_cpus_per_env_runner: float = 1.0
    include_dashboard: bool = False
    log_level: str = "ERROR"
    temp_dir: str | None = None
    metrics: bool = False
    task_events: bool = False
    torch_compile_learner: bool = False
    fused_adam: bool = True

    def __post_init__(self) -> None:
        if self.address is not None and not str(self.address).strip():
            raise ValueError("RaySettings.address must be null, 'local', 'auto' or 'host:port'")
        if self.num_env_runners < 0:
            raise ValueError(f"num_env_runners must be ≥ 0, got {self.num_env_runners}")
        if self.num_envs_per_env_runner < 1:
            raise ValueError(
                f"num_envs_per_env_runner must be ≥ 1, got {self.num_envs_per_env_runner}"
            )
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be ≥ 1, got {self.num_cpus}")
        if self.num_cpus_per_env_runner < 0:
            raise ValueError(
                f"num_cpus_per_env_runner must be ≥ 0, got {self.num_cpus_per_env_runner}"
            )

    @property
    def joins_cluster(self) -> bool:
        """Whether ``address`` names an existing cluster (``auto`` or ``host:port``)."""
        return self.address is not None and self.address.strip().lower() != "local"
