"""Learn from a teacher (the forecast MPC), then improve by RL: demonstrations and cloning.

When pure RL from scratch stalls on a problem an optimiser solves well, the usual remedy is
to distil the optimiser into the policy network first and fine-tune it with RL afterwards
(demo-augmented policy gradient, DAPG — Rajeswaran et al., RSS 2018; neural-network
approximations of MPC — Hertneck et al., IEEE CSL 2018; Karg & Lucia, IEEE TCYB 2020).
This module holds the three pieces; the result is an ordinary SB3 MLP policy (no MPC inside
it), exported and run on the edge like any PPO policy:

* :func:`collect_demonstrations`: roll a teacher (any ``env -> Policy`` factory, e.g.
  :func:`pulsebms.agents.mpc.make_mpc`) on the agent's own env (the shielded env behind
  :class:`pulsebms.envs.decision.DecisionIntervalWrapper`, so the teacher decides every
  ``decision_s`` and its action is held like the agent's), recording (observation, action,
  reward, cost, episode start). With a ``student`` the student acts and the teacher only
  labels the states the student visits (DAgger — Ross et al., AISTATS 2011).
* :func:`clone_into`: behaviour cloning into an SB3 PPO ``ActorCriticPolicy``: the
  ``VecNormalize`` observation and return statistics set from the demonstrations (so
  fine-tuning sees the same normalisation), MSE of the actor mean to the teacher's actions,
  a low log-std for fine-tuning, and the critic fitted to the demonstrations' discounted
  (normalised, penalised) returns so the first PPO updates do not wreck the cloned actor.
* :class:`FreezeActor`: an SB3 callback that keeps the actor (mean and log-std) fixed for
  the first PPO updates, so the critic learns the cloned policy's values on its own states
  before the actor moves.
* :class:`Demonstrations`: the data, saved to and loaded from ``.npz``.

:func:`pulsebms.agents.sb3.train_agent` takes :func:`clone_into` as its ``warm_start``
(``train.imitation`` of the Hydra config; ``configs/experiment/suite_mpc_bc.yaml``).

Example:
    >>> import numpy as np
    >>> demos = Demonstrations(
    ...     observations=np.zeros((4, 2), np.float32), actions=np.ones((4, 1), np.float32),
    ...     rewards=np.array([-1.0, -1.0, -2.0, -2.0]), costs=np.zeros(4),
    ...     episode_starts=np.array([True, False, True, False]),
    ... )
    >>> len(demos), demos.n_episodes
    (4, 2)
    >>> [float(r) for r in demos.discounted_returns(gamma=0.5)]
    [-1.5, -1.0, -3.0, -2.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from numpy.typing import NDArray
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecNormalize

from pulsebms.agents.lagrangian import step_cost
from pulsebms.agents.type_aliases import Policy

__all__ = [
    "CloneReport",
    "Demonstrations",
    "FreezeActor",
    "ImitationConfig",
    "action_mse",
    "clone_into",
    "collect_demonstrations",
    "load_clone",
    "save_clone",
]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Demonstrations:
    """Teacher-labelled decisions, one row per decision, episodes back to back.

    Attributes:
        observations: Raw (unnormalised) observations, ``(n, obs_dim)``.
        actions: The teacher's action for each observation, ``(n, act_dim)``.
        rewards: Reward of the decision actually taken (EUR, summed over its plant steps).
        costs: Predicted pre-shield violation cost of that decision (``info`` cost keys).
        episode_starts: True at the first decision of each episode.
    """

    observations: NDArray[np.float32]
    actions: NDArray[np.float32]
    rewards: FloatArray
    costs: FloatArray
    episode_starts: NDArray[np.bool_]

    def __post_init__(self) -> None:
        n = len(self.observations)
        sizes = {len(self.actions), len(self.rewards), len(self.costs), len(self.episode_starts)}
        if sizes != {n}:
            raise ValueError(f"demonstration arrays differ in length: {n} and {sizes}")
        if n and not bool(self.episode_starts[0]):
            raise ValueError("the first demonstration row must start an episode")

    def __len__(self) -> int:
        return len(self.observations)

    @property
    def n_episodes(self) -> int:
        """Number of episodes."""
        return int(np.count_nonzero(self.episode_starts))

    def discounted_returns(self, gamma: float, rewards: FloatArray | None = None) -> FloatArray:
        """Per row, the discounted return to its episode's end (``rewards`` or :attr:`rewards`)."""
        r = self.rewards if rewards is None else np.asarray(rewards, dtype=np.float64)
        out = np.zeros(len(r), dtype=np.float64)
        running = 0.0
        for i in range(len(r) - 1, -1, -1):
            ends_here = i == len(r) - 1 or bool(self.episode_starts[i + 1])
            running = float(r[i]) + (0.0 if ends_here else gamma * running)
            out[i] = running
        return out

    def save(self, path: str | Path) -> Path:
        """Write the arrays to ``path`` (``.npz``, atomically); returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.tmp.npz")
        np.savez_compressed(
            tmp,
            observations=self.observations,
            actions=self.actions,
            rewards=self.rewards,
            costs=self.costs,
            episode_starts=self.episode_starts,
        )
        tmp.replace(target)
        return target

    @classmethod
    def load(cls, path: str | Path) -> Demonstrations:
        """Read what :meth:`save` wrote."""
        with np.load(Path(path)) as data:
            return cls(
                observations=data["observations"].astype(np.float32),
                actions=data["actions"].astype(np.float32),
                rewards=data["rewards"].astype(np.float64),
                costs=data["costs"].astype(np.float64),
                episode_starts=data["episode_starts"].astype(bool),
            )

    @classmethod
    def concat(cls, parts: Sequence[Demonstrations]) -> Demonstrations:
        """The rows of ``parts`` one after the other (episodes stay whole)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        return cls(
            observations=np.concatenate([p.observations for p in parts]),
            actions=np.concatenate([p.actions for p in parts]),
            rewards=np.concatenate([p.rewards for p in parts]),
            costs=np.concatenate([p.costs for p in parts]),
            episode_starts=np.concatenate([p.episode_starts for p in parts]),
        )


def collect_demonstrations(
    env_factory: Callable[[], gym.Env[Any, Any]],
    teacher_factory: Callable[[gym.Env[Any, Any]], Policy],
    seeds: Sequence[int],
    *,
    student: Policy | None = None,
) -> Demonstrations:
    """Roll the teacher (or a student, teacher-labelled) for one episode per seed.

    Args:
        env_factory: Builds the agent's env (shielded, behind the decision-interval wrapper:
            each step is one decision).
        teacher_factory: ``env -> Policy`` (built once on the env; ``reset()`` per episode).
        seeds: ``env.reset`` seeds, one episode each (keep them apart from evaluation seeds).
        student: When given, it acts and the teacher only labels (DAgger); the rewards and
            costs are then the student's.

    Returns:
        The demonstrations (deterministic for given seeds, teacher and student).

    Raises:
        ValueError: If ``seeds`` is empty or the teacher returns a non-finite action.
    """
    if not seeds:
        raise ValueError("give at least one seed")
    env = env_factory()
    teacher = teacher_factory(env)
    obs_rows: list[NDArray[np.float32]] = []
    act_rows: list[NDArray[np.float32]] = []
    rewards: list[float] = []
    costs: list[float] = []
    starts: list[bool] = []
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=int(seed))
            for policy in (teacher, student):
                reset = getattr(policy, "reset", None)
                if callable(reset):
                    reset()
            done, first = False, True
            while not done:
                label = np.asarray(teacher.act(obs), dtype=np.float32).reshape(-1)
                if not np.all(np.isfinite(label)):
                    raise ValueError(f"teacher action not finite at seed {seed}: {label}")
                action = label if student is None else student.act(obs)
                obs_rows.append(np.asarray(obs, dtype=np.float32).reshape(-1))
                act_rows.append(label)
                obs, reward, terminated, truncated, info = env.step(action)
                rewards.append(float(reward))
                costs.append(step_cost(info))
                starts.append(first)
                first = False
                done = bool(terminated or truncated)
    finally:
        env.close()  # type: ignore[no-untyped-call]  # gymnasium leaves Env.close unannotated
    return Demonstrations(
        observations=np.stack(obs_rows),
        actions=np.stack(act_rows),
        rewards=np.asarray(rewards, dtype=np.float64),
        costs=np.asarray(costs, dtype=np.float64),
        episode_starts=np.asarray(starts, dtype=bool),
    )


@dataclass(frozen=True)
class ImitationConfig:
    """Behaviour cloning and critic warm-up settings (:func:`clone_into`).

    Attributes:
        epochs: Passes of actor cloning over the demonstrations.
        batch_size: Minibatch size (rows).
        learning_rate: Adam step size of cloning and of the critic fit.
        log_std: Log standard deviation of the cloned Gaussian policy (low: fine-tuning
            explores near the teacher; −2.3 ≈ σ 0.1 in the normalised action).
        critic_epochs: Passes of the critic fit per round.
        critic_rounds: Rounds of the critic fit; truncated episode ends are bootstrapped
            with the previous round's value (round 1: none).
    """

    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    log_std: float = -2.3
    critic_epochs: int = 10
    critic_rounds: int = 3

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.critic_epochs < 0:
            raise ValueError("epochs and batch_size must be >= 1, critic_epochs >= 0")
        if self.critic_rounds < 0 or not self.learning_rate > 0:
            raise ValueError("critic_rounds must be >= 0 and learning_rate > 0")


@dataclass(frozen=True)
class CloneReport:
    """What :func:`clone_into` reached.

    Attributes:
        mse_before: Mean squared actor-mean error to the teacher's actions before cloning.
        mse_after: The same after cloning (on the same, training, rows).
        critic_mse: Final critic loss on the normalised returns (NaN without a critic fit).
        rows: Demonstration rows used.
    """

    mse_before: float
    mse_after: float
    critic_mse: float
    rows: int


def _actor_mean(policy: ActorCriticPolicy, obs: torch.Tensor) -> torch.Tensor:
    features = policy.extract_features(obs, policy.pi_features_extractor)
    if not isinstance(features, torch.Tensor):  # shared extractor: a tensor, not a pair
        raise TypeError("clone_into needs an MLP policy with one features extractor")
    mean: torch.Tensor = policy.action_net(policy.mlp_extractor.forward_actor(features))
    return mean


def _value(policy: ActorCriticPolicy, obs: torch.Tensor) -> torch.Tensor:
    features = policy.extract_features(obs, policy.vf_features_extractor)
    if not isinstance(features, torch.Tensor):
        raise TypeError("clone_into needs an MLP policy with one features extractor")
    value: torch.Tensor = policy.value_net(policy.mlp_extractor.forward_critic(features))
    return value.squeeze(-1)


def action_mse(
    policy: ActorCriticPolicy, observations: NDArray[Any], actions: NDArray[Any]
) -> float:
    """Mean squared error of the actor mean (clipped to [−1, 1]) to ``actions``.

    Args:
        policy: An SB3 actor-critic policy.
        observations: Observations as the policy sees them (normalised when it was trained
            behind ``VecNormalize``).
        actions: Target actions.
    """
    with torch.no_grad():
        obs = torch.as_tensor(np.asarray(observations, dtype=np.float32), device=policy.device)
        mean = _actor_mean(policy, obs).clamp(-1.0, 1.0).cpu().numpy()
    return float(np.mean((mean - np.asarray(actions, dtype=np.float32)) ** 2))


def _set_normalizer(venv: VecNormalize, demos: Demonstrations, rewards: FloatArray) -> None:
    """Observation and return statistics of ``venv`` as if it had stepped the demonstrations."""
    obs = demos.observations.astype(np.float64)
    if isinstance(venv.obs_rms, dict):
        raise TypeError("clone_into needs a flat (Box) observation space")
    venv.obs_rms.mean = obs.mean(axis=0)
    venv.obs_rms.var = obs.var(axis=0)
    venv.obs_rms.count = float(len(obs))
    # VecNormalize scales rewards by the std of its running discounted return.
    returns = np.zeros(len(rewards))
    running = 0.0
    for i, (r, start) in enumerate(zip(rewards, demos.episode_starts, strict=True)):
        running = float(r) + (0.0 if start else venv.gamma * running)
        returns[i] = running
    venv.ret_rms.mean = np.asarray(returns.mean())
    venv.ret_rms.var = np.asarray(returns.var())
    venv.ret_rms.count = float(len(returns))


def clone_into(
    model: BaseAlgorithm,
    demos: Demonstrations,
    config: ImitationConfig | None = None,
    *,
    cost_penalty: float = 0.0,
    seed: int = 0,
) -> CloneReport:
    """Behaviour-clone ``demos`` into an SB3 PPO model; set its normaliser; warm its critic.

    Args:
        model: An SB3 on-policy model (PPO) whose env is a :class:`VecNormalize`; its policy
            is trained in place.
        demos: Teacher demonstrations from the model's own env.
        config: Settings (defaults of :class:`ImitationConfig` when ``None``).
        cost_penalty: λ of the training reward ``r − λ c`` (the fine-tune's fixed penalty),
            so the critic's targets are the returns fine-tuning will see.
        seed: Seeds the minibatch order.

    Returns:
        The errors before and after cloning and the critic's final loss.

    Raises:
        TypeError: If the model's policy is not an ``ActorCriticPolicy`` or its env is not
            behind ``VecNormalize``.
        ValueError: If ``demos`` is empty or does not fit the policy's spaces.
    """
    cfg = config or ImitationConfig()
    policy = model.policy
    venv = model.get_env()
    if not isinstance(policy, ActorCriticPolicy):
        raise TypeError(f"clone_into needs an actor-critic policy, got {type(policy).__name__}")
    if not isinstance(venv, VecNormalize):
        raise TypeError("clone_into needs the model's env behind VecNormalize")
    if len(demos) == 0:
        raise ValueError("no demonstrations")
    obs_dim = int(np.prod(venv.observation_space.shape or ()))
    act_dim = int(np.prod(venv.action_space.shape or ()))
    if demos.observations.shape[1] != obs_dim or demos.actions.shape[1] != act_dim:
        raise ValueError(
            f"demonstrations have obs/action sizes {demos.observations.shape[1]}/"
            f"{demos.actions.shape[1]}, the model {obs_dim}/{act_dim}"
        )
    penalised = demos.rewards - cost_penalty * demos.costs
    _set_normalizer(venv, demos, penalised)
    obs_n = np.asarray(venv.normalize_obs(demos.observations), dtype=np.float32)
    rew_n = np.asarray(venv.normalize_reward(penalised), dtype=np.float64)
    mse_before = action_mse(policy, obs_n, demos.actions)
    generator = torch.Generator().manual_seed(int(seed))
    obs_t = torch.as_tensor(obs_n, device=policy.device)
    act_t = torch.as_tensor(demos.actions, device=policy.device)
    n = len(demos)

    def batches() -> list[torch.Tensor]:
        order = torch.randperm(n, generator=generator)
        return list(torch.split(order, cfg.batch_size))

    policy.set_training_mode(True)
    actor_params = _actor_parameters(policy)[:-1]  # the mean; log-std is set below
    optimizer = torch.optim.Adam(actor_params, lr=cfg.learning_rate)
    _fit_mse(optimizer, partial(_actor_mean, policy), obs_t, act_t, batches, epochs=cfg.epochs)
    with torch.no_grad():
        policy.log_std.fill_(cfg.log_std)
    critic_mse = math.nan
    if cfg.critic_rounds > 0 and cfg.critic_epochs > 0:
        critic_mse = _fit_critic(policy, demos, obs_t, rew_n, venv.gamma, cfg, batches)
    policy.set_training_mode(False)
    return CloneReport(
        mse_before=mse_before,
        mse_after=action_mse(policy, obs_n, demos.actions),
        critic_mse=critic_mse,
        rows=n,
    )


def _fit_critic(
    policy: ActorCriticPolicy,
    demos: Demonstrations,
    obs_t: torch.Tensor,
    rewards: FloatArray,
    gamma: float,
    cfg: ImitationConfig,
    batches: Callable[[], list[torch.Tensor]],
) -> float:
    """Fit the value net to discounted returns; episode ends bootstrapped (see config)."""
    critic_params = [
        *policy.mlp_extractor.value_net.parameters(),
        *policy.value_net.parameters(),
    ]
    optimizer = torch.optim.Adam(critic_params, lr=cfg.learning_rate)
    starts = demos.episode_starts
    last = np.flatnonzero(np.r_[starts[1:], True])  # last row of each episode
    first = np.flatnonzero(starts)
    steps_left = np.zeros(len(rewards))
    for f, lst in zip(first, last, strict=True):
        steps_left[f : lst + 1] = np.arange(lst - f + 1, 0, -1)
    mc = demos.discounted_returns(gamma, rewards)
    episode = np.cumsum(starts) - 1  # each row's episode
    loss_value = math.nan
    for round_ in range(cfg.critic_rounds):
        targets = mc.copy()
        if round_ > 0:  # the episode's last state's value stands for what follows the day
            with torch.no_grad():
                tail = _value(policy, obs_t[last]).cpu().numpy().astype(np.float64)
            targets = mc + gamma**steps_left * tail[episode]
        target_t = torch.as_tensor(targets, dtype=torch.float32, device=policy.device)
        loss_value = _fit_mse(
            optimizer, partial(_value, policy), obs_t, target_t, batches, epochs=cfg.critic_epochs
        )
    return loss_value


def _fit_mse(
    optimizer: torch.optim.Optimizer,
    predict: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    batches: Callable[[], list[torch.Tensor]],
    *,
    epochs: int,
) -> float:
    """Minimise the mean squared error of ``predict`` over minibatches; the last loss."""
    loss = None
    for _ in range(epochs):
        for idx in batches():
            loss = torch.mean((predict(inputs[idx]) - targets[idx]) ** 2)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            optimizer.step()
    return math.nan if loss is None else float(loss.detach())


def _actor_parameters(policy: ActorCriticPolicy) -> list[torch.nn.Parameter]:
    return [
        *policy.mlp_extractor.policy_net.parameters(),
        *policy.action_net.parameters(),
        policy.log_std,
    ]


class FreezeActor(BaseCallback):
    """Keep a PPO actor fixed (no gradient) for its first ``steps`` environment steps.

    Fine-tuning a cloned actor with a critic that has not seen the actor's own states moves
    the actor along noisy advantages; with the actor frozen the first updates fit only the
    critic (and its shared optimizer state), then the actor is released.

    Args:
        steps: Environment steps (decisions, over all envs) before the actor trains.
    """

    def __init__(self, steps: int) -> None:
        super().__init__()
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.steps = int(steps)
        self.frozen = False

    def _set(self, frozen: bool) -> None:
        policy = self.model.policy
        if not isinstance(policy, ActorCriticPolicy):
            raise TypeError("FreezeActor needs an actor-critic policy")
        for parameter in _actor_parameters(policy):
            parameter.requires_grad_(not frozen)
        self.frozen = frozen

    def _on_training_start(self) -> None:
        self._set(self.steps > 0)

    def _on_rollout_end(self) -> None:
        if self.frozen and self.model.num_timesteps >= self.steps:
            self._set(False)

    def _on_step(self) -> bool:
        return True


def save_clone(model: BaseAlgorithm, path: str | Path) -> Path:
    """Save a cloned model's policy weights and normaliser statistics (atomically).

    With :func:`load_clone` a fine-tune starts from exactly the clone that was evaluated,
    without cloning again.
    """
    venv = model.get_env()
    if not isinstance(venv, VecNormalize) or isinstance(venv.obs_rms, dict):
        raise TypeError("save_clone needs the model's env behind VecNormalize (Box observations)")
    state = {
        "policy": model.policy.state_dict(),
        "obs_rms": (venv.obs_rms.mean, venv.obs_rms.var, venv.obs_rms.count),
        "ret_rms": (venv.ret_rms.mean, venv.ret_rms.var, venv.ret_rms.count),
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(target)
    return target


def load_clone(model: BaseAlgorithm, path: str | Path) -> None:
    """Load what :func:`save_clone` wrote into ``model`` (same policy class and sizes)."""
    venv = model.get_env()
    if not isinstance(venv, VecNormalize) or isinstance(venv.obs_rms, dict):
        raise TypeError("load_clone needs the model's env behind VecNormalize (Box observations)")
    state = torch.load(Path(path), map_location=model.policy.device, weights_only=False)
    model.policy.load_state_dict(state["policy"])
    venv.obs_rms.mean, venv.obs_rms.var, venv.obs_rms.count = state["obs_rms"]
    venv.ret_rms.mean, venv.ret_rms.var, venv.ret_rms.count = state["ret_rms"]
