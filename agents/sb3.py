"""Safe actor-critic with stable-baselines3: PPO and SAC with the shield in the loop.

The training environment is the FleetEnv behind :class:`pulsebms.safety.ShieldWrapper`
(the agent only ever executes shielded actions), vectorised in one process
(``DummyVecEnv``: deterministic, and cheap enough for the twin's batched step), behind
``VecNormalize`` (running observation and reward statistics, frozen for evaluation).

**PPO-Lagrangian** (:class:`PPOLagrangianConfig`, ``agent=ppo_lagrangian``): a cost critic,
cost GAE and a PID Lagrange multiplier toward a per-episode cost limit
(:class:`pulsebms.agents.ppo_lagrangian.PPOLagrangian`); the reward is not penalised.

**Penalty variant** (``cost_penalty``, ``lagrangian_lr``, ``cost_limit`` of
:class:`PPOConfig` / :class:`SACConfig`; ``agent=ppo_penalty``): reward shaping by the
Lagrangian penalty of :mod:`pulsebms.agents.lagrangian`; each env is wrapped in
:class:`~pulsebms.agents.lagrangian.LagrangianPenalty` (the learner sees ``r − λ c``, ``c``
the shield's predicted pre-shield violation cost) and
:class:`~pulsebms.agents.lagrangian.LagrangianCallback` updates λ by dual ascent. With
``lagrangian_lr = 0`` the penalty is a fixed ``λ`` (on the quick preset a fixed λ = 1 cuts
shield interventions from ~90 to ~10 per 96-step episode).

Logging goes through :func:`pulsebms.agents.sb3_logging.make_logger` (SB3 writers + wandb).
**Repeatability**: one ``seed`` seeds Python, numpy, torch, the action space and the env
resets, and training runs single-process; so two runs with the same seed give identical
weights and actions on CPU (tested).

Example:
    >>> from pulsebms.agents.sb3 import PPOConfig, train_agent
    >>> from pulsebms.agents.env_factory import make_env_factory
    >>> result = train_agent(  # doctest: +SKIP
    ...     PPOConfig(), make_env_factory("PulseBMS/FleetSmall-v0", fidelity="ecm"),
    ...     total_timesteps=20_000, seed=0, out_dir="runs/ppo",
    ... )
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
)
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from pulsebms.agents.discount import resolve_gamma
from pulsebms.agents.env_factory import EnvFactory
from pulsebms.agents.lagrangian import LagrangianCallback, LagrangianPenalty
from pulsebms.agents.policy import SB3Policy
from pulsebms.agents.ppo_lagrangian import PPOLagrangian
from pulsebms.agents.sb3_logging import WandbWriter, make_logger
from pulsebms.envs.decision import agent_step_s

# LagrangianCallback, LagrangianPenalty, WandbWriter and make_logger live in
# pulsebms.agents.lagrangian / pulsebms.agents.sb3_logging; re-exported here (old paths).
__all__ = [
    "ALGORITHMS",
    "AlgoConfig",
    "LagrangianCallback",
    "LagrangianPenalty",
    "PPOConfig",
    "PPOLagrangianConfig",
    "SACConfig",
    "TrainResult",
    "WandbWriter",
    "build_model",
    "load_agent",
    "make_logger",
    "make_vec_env",
    "policy_from_run",
    "save_agent",
    "train_agent",
    "vec_normalize_file",
]


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters (SB3 names; defaults tuned for the small fleet).

    Attributes:
        learning_rate: Adam step size.
        n_steps: Steps collected per env per update; with one env, the rollout length. Use a
            multiple of the episode length so updates see whole days.
        batch_size: Minibatch size; must divide ``n_steps × n_envs``.
        n_epochs: Passes over each rollout.
        gamma: Discount factor (per control interval).
        gae_lambda: GAE λ.
        clip_range: PPO ratio clip.
        ent_coef: Entropy bonus; keep 0 for continuous actions unless exploration stalls.
        log_std_init: Initial log standard deviation of the Gaussian policy (−0.5 ≈ σ 0.6).
        net_arch: Hidden layer widths of both actor and critic.
        cost_penalty: Initial Lagrange multiplier λ on ``info["cost"]`` (0 disables the
            safe variant unless ``lagrangian_lr`` > 0).
        lagrangian_lr: Dual-ascent step size η on λ (0 keeps λ fixed).
        cost_limit: Allowed mean episode cost d.
        gamma_horizon_h: Effective horizon in hours; when given, :func:`train_agent`
            replaces ``gamma`` by ``1 − step_h / gamma_horizon_h`` at the agent's step
            (the env's ``dt_s``, or its decision interval;
            :func:`pulsebms.agents.discount.gamma_from_horizon`).
    """

    learning_rate: float = 3e-4
    n_steps: int = 1024
    batch_size: int = 128
    n_epochs: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    log_std_init: float = -0.5
    net_arch: Sequence[int] = (64, 64)
    cost_penalty: float = 0.0
    lagrangian_lr: float = 0.0
    cost_limit: float = 0.0
    gamma_horizon_h: float | None = None


@dataclass(frozen=True)
class SACConfig:
    """SAC hyperparameters (SB3 names).

    Attributes:
        learning_rate: Adam step size of actor, critics and temperature.
        buffer_size: Replay buffer capacity [transitions].
        batch_size: Minibatch size.
        learning_starts: Random-action steps before the first update.
        tau: Target-network Polyak coefficient.
        gamma: Discount factor (per control interval).
        train_freq: Env steps between updates.
        gradient_steps: Gradient steps per update.
        ent_coef: Entropy temperature, ``"auto"`` to learn it.
        net_arch: Hidden layer widths of actor and critics.
        cost_penalty: See :class:`PPOConfig`.
        lagrangian_lr: See :class:`PPOConfig` (λ is updated every ``lagrangian_every`` steps).
        cost_limit: See :class:`PPOConfig`.
        lagrangian_every: Env steps between dual updates (SAC has no rollouts).
        gamma_horizon_h: See :class:`PPOConfig`.
    """

    learning_rate: float = 3e-4
    buffer_size: int = 100_000
    batch_size: int = 256
    learning_starts: int = 1_000
    tau: float = 0.005
    gamma: float = 0.99
    train_freq: int = 1
    gradient_steps: int = 1
    ent_coef: str | float = "auto"
    net_arch: Sequence[int] = (64, 64)
    cost_penalty: float = 0.0
    lagrangian_lr: float = 0.0
    cost_limit: float = 0.0
    lagrangian_every: int = 1_000
    gamma_horizon_h: float | None = None


@dataclass(frozen=True)
class PPOLagrangianConfig(PPOConfig):
    """PPO-Lagrangian with a cost critic (:class:`pulsebms.agents.ppo_lagrangian.PPOLagrangian`).

    The PPO fields as in :class:`PPOConfig`; the inherited safe fields mean:

    Attributes:
        cost_penalty: λ before the first update (≤ ``lagrangian_max``).
        lagrangian_lr: Integral gain k_i of the PID multiplier (the dual-ascent step).
        cost_limit: Allowed mean pre-shield cost **per episode** d.
        lagrangian_max: Cap on λ (so it cannot run away when the limit is unreachable).
        lagrangian_kp: Proportional gain k_p (0: plain projected dual ascent).
        lagrangian_kd: Derivative gain k_d on rising cost.
    """

    cost_penalty: float = 0.0
    lagrangian_lr: float = 0.05
    cost_limit: float = 1.0
    lagrangian_max: float = 10.0
    lagrangian_kp: float = 0.0
    lagrangian_kd: float = 0.0


AlgoConfig = PPOConfig | SACConfig
ALGORITHMS: dict[str, type[BaseAlgorithm]] = {
    "ppo": PPO,
    "ppo_lagrangian": PPOLagrangian,
    "sac": SAC,
}


def make_vec_env(
    env_factory: EnvFactory,
    *,
    n_envs: int = 1,
    seed: int = 0,
    normalize_obs: bool = True,
    normalize_reward: bool = True,
    gamma: float = 0.99,
    cost_penalty: float | None = None,
    training: bool = True,
) -> VecNormalize:
    """Vectorise, monitor and normalise environments built by ``env_factory``.

    Args:
        env_factory: Builds one (shielded) env.
        n_envs: Number of copies (in one process).
        seed: Base seed; copy ``i`` is reset with ``seed + i``.
        normalize_obs: Running mean/std observation normalisation.
        normalize_reward: Scale rewards by the running std of the discounted return
            (training only).
        gamma: Discount used by reward normalisation (match the algorithm's).
        cost_penalty: Wrap each env in :class:`LagrangianPenalty` with this λ
            (``None``: no wrapper).
        training: Update the statistics (False for evaluation envs).

    Returns:
        The normalised VecEnv.
    """

    def thunk() -> gym.Env[Any, Any]:
        env = env_factory()
        if cost_penalty is not None:
            env = LagrangianPenalty(env, cost_penalty)
        return Monitor(env, info_keywords=())

    venv = DummyVecEnv([thunk for _ in range(n_envs)])
    venv.seed(seed)
    return VecNormalize(
        venv,
        training=training,
        norm_obs=normalize_obs,
        norm_reward=normalize_reward and training,
        gamma=gamma,
    )


def build_model(
    config: AlgoConfig,
    env: VecEnv,
    *,
    seed: int = 0,
    logger: Logger | None = None,
    device: str = "cpu",
) -> BaseAlgorithm:
    """Instantiate PPO, PPO-Lagrangian or SAC from a typed config.

    Args:
        config: :class:`PPOConfig`, :class:`PPOLagrangianConfig` or :class:`SACConfig`.
        env: The training VecEnv.
        seed: Seeds Python, numpy, torch and the env (SB3's ``set_random_seed``).
        logger: SB3 logger (stdout/CSV/TensorBoard/wandb writers); ``None``: a silent one
            that records values and writes nothing (SB3's default would leave an empty
            ``SB3-<time>`` folder in the temp dir per ``learn``).
        device: Torch device (CPU here; SB3 MLP policies are faster on CPU anyway).

    Returns:
        The untrained model.

    Raises:
        TypeError: If ``config`` is not a known algorithm config.
    """
    model: BaseAlgorithm
    if isinstance(config, PPOConfig):
        ppo_kwargs: dict[str, Any] = {
            "learning_rate": config.learning_rate,
            "n_steps": config.n_steps,
            "batch_size": config.batch_size,
            "n_epochs": config.n_epochs,
            "gamma": config.gamma,
            "gae_lambda": config.gae_lambda,
            "clip_range": config.clip_range,
            "ent_coef": config.ent_coef,
            "policy_kwargs": {
                "net_arch": list(config.net_arch),
                "log_std_init": config.log_std_init,
            },
            "seed": seed,
            "device": device,
            "verbose": 0,
        }
        if isinstance(config, PPOLagrangianConfig):
            model = PPOLagrangian(
                "MlpPolicy",
                env,
                cost_limit=config.cost_limit,
                lagrangian_ki=config.lagrangian_lr,
                lagrangian_kp=config.lagrangian_kp,
                lagrangian_kd=config.lagrangian_kd,
                lagrangian_init=config.cost_penalty,
                lagrangian_max=config.lagrangian_max,
                **ppo_kwargs,
            )
        else:
            model = PPO("MlpPolicy", env, **ppo_kwargs)
    elif isinstance(config, SACConfig):
        model = SAC(
            "MlpPolicy",
            env,
            learning_rate=config.learning_rate,
            buffer_size=config.buffer_size,
            batch_size=config.batch_size,
            learning_starts=config.learning_starts,
            tau=config.tau,
            gamma=config.gamma,
            train_freq=config.train_freq,
            gradient_steps=config.gradient_steps,
            ent_coef=config.ent_coef,
            policy_kwargs={"net_arch": list(config.net_arch)},
            seed=seed,
            device=device,
            verbose=0,
        )
    else:
        raise TypeError(f"unknown algorithm config {type(config).__name__}")
    # SB3's own default logger makes a folder under the temp dir on every ``learn`` call,
    # even when it writes nothing: a silent in-memory logger instead (values still recorded).
    model.set_logger(logger if logger is not None else Logger(folder=None, output_formats=[]))
    return model


def vec_normalize_file(model_path: str | Path) -> Path:
    """Where :func:`save_agent` writes a model's ``VecNormalize`` statistics: beside its zip.

    Example:
        >>> vec_normalize_file("runs/a/model.zip").as_posix()
        'runs/a/model_vecnormalize.pkl'
    """
    path = Path(model_path)
    return path.with_name(f"{path.stem}_vecnormalize.pkl")


def save_agent(model: BaseAlgorithm, out_dir: str | Path, *, stem: str = "model") -> Path:
    """Save ``<stem>.zip`` and (if present) ``<stem>_vecnormalize.pkl`` into ``out_dir``.

    Args:
        model: The trained model; its VecNormalize (if any) is saved beside it.
        out_dir: Target folder.
        stem: File stem.

    Returns:
        Path of the model zip.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.zip"
    model.save(path)
    venv = model.get_vec_normalize_env()
    if venv is not None:
        venv.save(str(vec_normalize_file(path)))
    return path


def load_agent(
    model_path: str | Path, vec_normalize_path: str | Path | None = None
) -> tuple[BaseAlgorithm, VecNormalize | None]:
    """Load a model saved by :func:`save_agent` (and its frozen VecNormalize statistics).

    Args:
        model_path: The ``.zip``; PPO, PPO-Lagrangian or SAC is read from the file.
        vec_normalize_path: Its ``*_vecnormalize.pkl``; looked up beside the zip when ``None``.

    Returns:
        ``(model, vec_normalize)``; the latter with ``training=False`` or ``None``.

    Raises:
        FileNotFoundError: If the model file does not exist.
        ValueError: If the file holds none of them.
    """
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}")
    model: BaseAlgorithm | None = None
    errors = []
    for algo in (PPO, PPOLagrangian, SAC):
        try:
            model = algo.load(path, device="cpu")
            break
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            errors.append(f"{algo.__name__}: {exc}")
    if model is None:
        raise ValueError(f"{path} is not a PPO, PPO-Lagrangian or SAC model ({'; '.join(errors)})")
    vn_path = (
        Path(vec_normalize_path) if vec_normalize_path is not None else vec_normalize_file(path)
    )
    vec_normalize: VecNormalize | None = None
    if vn_path.is_file():
        with vn_path.open("rb") as fh:
            vec_normalize = pickle.load(fh)
        vec_normalize.training = False
        vec_normalize.norm_reward = False
    return model, vec_normalize


@dataclass
class TrainResult:
    """What :func:`train_agent` produced.

    Attributes:
        model: The trained model (last iterate).
        policy: Deterministic :class:`~pulsebms.agents.policy.SB3Policy` of it.
        model_path: Saved ``model.zip``.
        out_dir: Run folder (checkpoints, eval logs, metrics).
        timesteps: Environment steps trained.
        extras: Anything else (final Lagrange multiplier, ...).
    """

    model: BaseAlgorithm
    policy: SB3Policy
    model_path: Path
    out_dir: Path
    timesteps: int
    extras: dict[str, Any] = field(default_factory=dict)


def train_agent(
    config: AlgoConfig,
    env_factory: EnvFactory,
    *,
    total_timesteps: int,
    seed: int = 0,
    out_dir: str | Path = "runs/agent",
    n_envs: int = 1,
    eval_env_factory: EnvFactory | None = None,
    eval_freq: int = 0,
    n_eval_episodes: int = 1,
    checkpoint_freq: int = 0,
    log_formats: Sequence[str] = ("csv",),
    wandb_run: Any | None = None,
    progress_bar: bool = False,
    callbacks: Sequence[BaseCallback] = (),
    extra_callback: Callable[[BaseAlgorithm], None] | None = None,
    warm_start: Callable[[BaseAlgorithm], None] | None = None,
) -> TrainResult:
    """Train PPO or SAC behind the shield, VecNormalize and the optional Lagrangian penalty.

    Args:
        config: :class:`PPOConfig` or :class:`SACConfig`.
        env_factory: Builds one shielded training env.
        total_timesteps: Env steps to train.
        seed: The single seed of the run.
        out_dir: Output folder (``model.zip``, ``model_vecnormalize.pkl``,
            ``checkpoints/``, ``eval/``, ``progress.csv``).
        n_envs: Training env copies (one process).
        eval_env_factory: Env for the evaluation callback (``env_factory`` when ``None``).
        eval_freq: Evaluate every this many steps (0: never). The best model is saved to
            ``out_dir/eval/best_model.zip``.
        n_eval_episodes: Episodes per evaluation.
        checkpoint_freq: Save a checkpoint every this many steps (0: never).
        log_formats: SB3 logger formats (``stdout``, ``csv``, ``tensorboard``).
        wandb_run: A wandb run to forward metrics to.
        progress_bar: Show SB3's rich progress bar.
        callbacks: Further SB3 callbacks.
        extra_callback: Called with the model after training (e.g. to log to the caller).
        warm_start: Called with the built model (its env the training ``VecNormalize``)
            before learning, e.g. behaviour cloning
            (:func:`pulsebms.agents.imitation.clone_into`).

    Returns:
        The trained model, its deterministic policy and the paths written.

    Raises:
        ValueError: If ``total_timesteps`` < 1 (< 0 with ``warm_start``: 0 saves the
            warm-started model untrained).
    """
    if total_timesteps < (0 if warm_start is not None else 1):
        raise ValueError(f"total_timesteps must be >= 1, got {total_timesteps}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.gamma_horizon_h is not None:  # γ from hours at the agent's step
        probe = env_factory()
        config = resolve_gamma(config, agent_step_s(probe))
        probe.close()  # type: ignore[no-untyped-call]  # gymnasium leaves Env.close unannotated
    lagrangian = isinstance(config, PPOLagrangianConfig)  # cost critic, reward unpenalised
    safe = not lagrangian and (config.cost_penalty > 0 or config.lagrangian_lr > 0)
    venv = make_vec_env(
        env_factory,
        n_envs=n_envs,
        seed=seed,
        gamma=config.gamma,
        cost_penalty=config.cost_penalty if safe else None,
    )
    logger = make_logger(out, log_formats, wandb_run=wandb_run)
    model = build_model(config, venv, seed=seed, logger=logger)
    if warm_start is not None:
        warm_start(model)
    cbs: list[BaseCallback] = list(callbacks)
    if safe and config.lagrangian_lr > 0:
        every = config.lagrangian_every if isinstance(config, SACConfig) else None
        cbs.append(LagrangianCallback(config.lagrangian_lr, config.cost_limit, every))
    eval_venv: VecNormalize | None = None
    if eval_freq > 0:
        eval_venv = make_vec_env(
            eval_env_factory or env_factory,
            seed=seed + 10_000,
            gamma=config.gamma,
            training=False,
        )
        cbs.append(
            EvalCallback(
                eval_venv,
                n_eval_episodes=n_eval_episodes,
                eval_freq=max(eval_freq // n_envs, 1),
                log_path=str(out / "eval"),
                best_model_save_path=str(out / "eval"),
                deterministic=True,
                verbose=0,
                warn=False,
            )
        )
    if checkpoint_freq > 0:
        cbs.append(
            CheckpointCallback(
                save_freq=max(checkpoint_freq // n_envs, 1),
                save_path=str(out / "checkpoints"),
                name_prefix="model",
                save_vecnormalize=True,
            )
        )
    try:
        if total_timesteps > 0:
            model.learn(
                total_timesteps=total_timesteps,
                callback=CallbackList(cbs) if cbs else None,
                progress_bar=progress_bar,
            )
    finally:
        logger.close()
    model_path = save_agent(model, out)
    extras: dict[str, Any] = {}
    if isinstance(model, PPOLagrangian):
        extras["lagrange_multiplier"] = model.lagrange_multiplier
    if safe:
        (lam,) = venv.get_attr("multiplier", indices=[0])
        extras["lagrange_multiplier"] = float(lam)
    if extra_callback is not None:
        extra_callback(model)
    frozen = _frozen_copy(venv)
    venv.close()
    if eval_venv is not None:
        eval_venv.close()
    return TrainResult(
        model=model,
        policy=SB3Policy(model, frozen),
        model_path=model_path,
        out_dir=out,
        timesteps=int(model.num_timesteps),
        extras=extras,
    )


def _frozen_copy(venv: VecNormalize) -> VecNormalize:
    """Observation statistics of ``venv`` detached from its envs (for acting only)."""
    state = {k: v for k, v in venv.__getstate__().items() if k != "venv"}
    frozen = VecNormalize.__new__(VecNormalize)
    frozen.__setstate__(state)
    frozen.training = False
    frozen.norm_reward = False
    return frozen


def policy_from_run(out_dir: str | Path, *, best: bool = False) -> SB3Policy:
    """Load the deterministic policy a :func:`train_agent` run saved.

    Args:
        out_dir: The run's output folder.
        best: Use ``eval/best_model.zip`` (with the final VecNormalize statistics) instead of
            the last iterate.

    Returns:
        The policy.
    """
    out = Path(out_dir)
    model_path = out / "eval" / "best_model.zip" if best else out / "model.zip"
    model, vec_normalize = load_agent(model_path, vec_normalize_file(out / "model.zip"))
    return SB3Policy(model, vec_normalize)
