"""An RLlib checkpoint as a policy: for evaluation (numpy) and for export (one torch module).

Loading needs no Ray runtime, only RLlib's checkpoint components:

* :class:`RLlibPolicy`: a checkpoint as a deterministic
  :class:`~pulsebms.agents.type_aliases.Policy` (mean of the action distribution, clipped
  to the action space), through RLlib's own filter, RLModule and distribution objects.
  PPO (diagonal Gaussian) and SAC (tanh-squashed Gaussian) checkpoints are supported.

**SAC's deterministic action.** For a squashed Gaussian the deterministic action here is
``tanh(loc)``, the squashed mean, which is the action SAC trained on (SB3's SAC
``deterministic=True`` is the same). RLlib's own EnvRunner with ``explore=False`` takes
``TorchSquashedGaussian.to_deterministic()``, which returns the *unsquashed* ``loc`` and
then clips it to the space: a different, saturating policy. We do not copy that.
* :class:`DeployedRLlibPolicy` / :func:`rllib_torch_policy`: the same function as one
  ``torch.nn.Module`` (observation filter → RLModule → mean action → clip), the seam
  :mod:`pulsebms.export` turns into ONNX.

Training lives in :mod:`pulsebms.agents.rllib` (which re-exports these names).

Example:
    >>> from pulsebms.agents.rllib_policy import RLlibPolicy, rllib_torch_policy
    >>> policy = RLlibPolicy.from_checkpoint("runs/rllib/ckpt")  # doctest: +SKIP
    >>> action = policy.act(observation)  # doctest: +SKIP
    >>> module = rllib_torch_policy("runs/rllib/ckpt")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.env_to_module import MeanStdFilter
from ray.rllib.connectors.module_to_env.normalize_and_clip_actions import (
    NormalizeAndClipActions,
)
from ray.rllib.core import (
    COMPONENT_ENV_RUNNER,
    COMPONENT_ENV_TO_MODULE_CONNECTOR,
    COMPONENT_LEARNER,
    COMPONENT_LEARNER_GROUP,
    COMPONENT_MODULE_TO_ENV_CONNECTOR,
    COMPONENT_RL_MODULE,
    DEFAULT_MODULE_ID,
    Columns,
)
from ray.rllib.core.distribution.torch.torch_distribution import (
    TorchDiagGaussian,
    TorchSquashedGaussian,
)
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.filter import MeanStdFilter as ObservationFilter
from ray.rllib.utils.filter import RunningStat
from ray.rllib.utils.numpy import SMALL_NUMBER
from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

from pulsebms.core.types import ActArray, AnyArray, FloatArray, ObsArray

__all__ = ["DeployedRLlibPolicy", "RLlibPolicy", "rllib_torch_policy"]


def _single_piece(pipeline: ConnectorV2, kind: type[ConnectorV2]) -> ConnectorV2 | None:
    """The one connector of type ``kind`` in a restored pipeline (None if absent)."""
    pieces = [
        piece for piece in getattr(pipeline, "connectors", [pipeline]) if isinstance(piece, kind)
    ]
    if len(pieces) > 1:
        raise NotImplementedError(
            f"{len(pieces)} {kind.__name__} connectors in one pipeline are not supported"
        )
    return pieces[0] if pieces else None


class RLlibPolicy:
    """An RLlib checkpoint as a deterministic :class:`~pulsebms.agents.type_aliases.Policy`.

    Acts like the checkpoint's EnvRunner with ``explore=False``, through RLlib's own
    objects: the ``MeanStdFilter`` statistics (frozen, no updates) normalise the raw
    observation, the RLModule's ``forward_inference`` gives the action-distribution inputs,
    the inference distribution's ``to_deterministic()`` gives its mean, and the
    module-to-env ``NormalizeAndClipActions`` settings unsquash and/or clip it to the
    action space. No Ray runtime is needed.

    Args:
        module: The trained torch RLModule (single agent).
        action_space: The env's action space (a ``Box``).
        observation_space: The env's raw observation space (before the filter).
        observation_filter: RLlib's numpy ``MeanStdFilter`` holding the frozen statistics,
            or ``None`` when the policy was trained on raw observations.
        normalize_actions: The algorithm's ``normalize_actions`` (unsquash from [-1, 1]).
        clip_actions: The algorithm's ``clip_actions``.
        checkpoint_path: Where it was loaded from (for manifests).

    Example:
        >>> policy = RLlibPolicy.from_checkpoint("runs/rllib/ckpt")  # doctest: +SKIP
        >>> policy.act(observation)  # doctest: +SKIP
    """

    def __init__(
        self,
        module: TorchRLModule,
        *,
        action_space: gym.spaces.Box,
        observation_space: gym.spaces.Box,
        observation_filter: ObservationFilter | None = None,
        normalize_actions: bool = True,
        clip_actions: bool = True,
        checkpoint_path: Path | None = None,
    ) -> None:
        if not isinstance(action_space, gym.spaces.Box):
            raise TypeError(f"RLlibPolicy needs a Box action space, got {action_space}")
        self.module = module
        self.module.eval()
        self.action_space = action_space
        self.observation_space = observation_space
        self.observation_filter = observation_filter
        self.normalize_actions = bool(normalize_actions)
        self.clip_actions = bool(clip_actions)
        self.checkpoint_path = checkpoint_path

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path) -> RLlibPolicy:
        """Load the policy from an algorithm checkpoint written by :func:`train_rllib`.

        Reads the Learner's RLModule (``learner_group/learner/rl_module/default_policy``),
        the EnvRunner's env-to-module connector (observation filter statistics) and its
        module-to-env connector (action normalisation and clipping settings).

        Args:
            checkpoint: The checkpoint directory (``Algorithm.save_to_path``).

        Returns:
            The policy.

        Raises:
            FileNotFoundError: If ``checkpoint`` is not an RLlib algorithm checkpoint.
        """
        from ray.rllib.core.rl_module.rl_module import RLModule

        root = Path(checkpoint).resolve()
        module_dir = (
            root / COMPONENT_LEARNER_GROUP / COMPONENT_LEARNER / COMPONENT_RL_MODULE
        ) / DEFAULT_MODULE_ID
        runner_dir = root / COMPONENT_ENV_RUNNER
        if not module_dir.is_dir() or not runner_dir.is_dir():
            raise FileNotFoundError(
                f"{root} is not an RLlib (new API stack) algorithm checkpoint: "
                f"missing {module_dir.relative_to(root)} or {runner_dir.relative_to(root)}"
            )
        module = RLModule.from_checkpoint(module_dir.as_posix())
        if not isinstance(module, TorchRLModule):
            raise TypeError(f"expected a torch RLModule, got {type(module).__name__}")
        env_to_module = ConnectorV2.from_checkpoint(
            (runner_dir / COMPONENT_ENV_TO_MODULE_CONNECTOR).as_posix()
        )
        module_to_env = ConnectorV2.from_checkpoint(
            (runner_dir / COMPONENT_MODULE_TO_ENV_CONNECTOR).as_posix()
        )
        mean_std = _single_piece(env_to_module, MeanStdFilter)
        observation_filter = None
        if mean_std is not None:
            states = list(mean_std.get_state().values())
            if len(states) != 1 or len(states[0]["running_stats"]) != 1:
                raise NotImplementedError(
                    "only a single-agent MeanStdFilter over a flat Box observation is supported"
                )
            (state,) = states
            observation_filter = ObservationFilter(  # type: ignore[no-untyped-call]  # RLlib API is untyped
                state["shape"],
                demean=state["de_mean_to_zero"],
                destd=state["de_std_to_one"],
                clip=state["clip_by_value"],
            )
            (stats,) = state["running_stats"]
            observation_filter.running_stats = RunningStat.from_state(stats)  # type: ignore[no-untyped-call]  # RLlib API is untyped
        actions = _single_piece(module_to_env, NormalizeAndClipActions)
        return cls(
            module,
            action_space=module_to_env.input_action_space,
            observation_space=env_to_module.input_observation_space,
            observation_filter=observation_filter,
            normalize_actions=bool(getattr(actions, "normalize_actions", False)),
            clip_actions=bool(getattr(actions, "clip_actions", False)),
            checkpoint_path=root,
        )

    def observation_stats(self) -> tuple[FloatArray, FloatArray] | None:
        """``(mean, std)`` of the frozen observation filter, or ``None`` without one."""
        if self.observation_filter is None:
            return None
        stats: RunningStat = self.observation_filter.running_stats
        return np.asarray(stats.mean, dtype=np.float64), np.asarray(stats.std, dtype=np.float64)

    def predict(self, observations: AnyArray) -> ActArray:
        """Deterministic actions for a batch of raw observations.

        Args:
            observations: ``[batch, obs]`` raw observations.

        Returns:
            ``[batch, act]`` float32 actions inside the action space.

        Raises:
            ValueError: If ``observations`` is not two-dimensional.
        """
        obs = np.asarray(observations, dtype=np.float32)
        if obs.ndim != 2:
            raise ValueError(f"expected observations of shape [batch, obs], got {obs.shape}")
        if self.observation_filter is not None:
            obs = np.asarray(self.observation_filter(obs, update=False), dtype=np.float32)
        with torch.no_grad():
            out = self.module.forward_inference({Columns.OBS: torch.from_numpy(obs)})
            dist_cls = self.module.get_inference_action_dist_cls()
            dist = dist_cls.from_logits(out[Columns.ACTION_DIST_INPUTS])
            if isinstance(dist, TorchSquashedGaussian):
                # The squashed mean (see the module docstring), in the distribution's bounds.
                squashed = dist._squash(dist.loc)  # RLlib's own squash
                mean: AnyArray = np.asarray(squashed, dtype=np.float32)
            else:
                mean = np.asarray(dist.to_deterministic().sample(), dtype=np.float32)
        if self.normalize_actions:
            mean = unsquash_action(mean, self.action_space)  # type: ignore[no-untyped-call]  # RLlib API is untyped
        elif self.clip_actions:
            mean = clip_action(mean, self.action_space)  # type: ignore[no-untyped-call]  # RLlib API is untyped
        actions: ActArray = np.asarray(mean, dtype=np.float32)
        return actions

    def act(self, observation: ObsArray) -> ActArray:
        """Deterministic action for one raw observation (mean action, within the space).

        Args:
            observation: The env's flat observation.

        Returns:
            The action, float32, shape ``action_space.shape``.
        """
        obs = np.asarray(observation, dtype=np.float32).reshape(1, -1)
        action: ActArray = self.predict(obs).reshape(-1)
        return action

    def torch_policy(self) -> DeployedRLlibPolicy:
        """This policy as one torch module (see :class:`DeployedRLlibPolicy`)."""
        stats = self.observation_stats()
        clip = None
        if self.observation_filter is not None and self.observation_filter.clip:
            clip = float(self.observation_filter.clip)
        return DeployedRLlibPolicy(
            self.module,
            obs_mean=None if stats is None else stats[0],
            obs_std=None if stats is None else stats[1],
            clip_obs=clip,
            action_low=np.asarray(self.action_space.low, dtype=np.float32),
            action_high=np.asarray(self.action_space.high, dtype=np.float32),
            unsquash=self.normalize_actions,
            clip_actions=self.normalize_actions or self.clip_actions,
        )


class DeployedRLlibPolicy(torch.nn.Module):
    """Raw observation → filter → RLModule → mean action → unsquash → clip, in torch.

    The function :class:`RLlibPolicy` computes, as one module for ONNX export. The filter
    runs in float64, as RLlib's numpy ``MeanStdFilter`` does, and is cast to float32
    before the network. Diagonal-Gaussian (PPO) and tanh-squashed Gaussian (SAC) policies
    are supported: the mean is the first half of the distribution inputs, squashed by
    ``tanh`` for the latter.

    Args:
        module: The torch RLModule.
        obs_mean: Filter mean, or ``None`` for no observation normalisation.
        obs_std: Filter standard deviation (RLlib adds ``SMALL_NUMBER`` before dividing).
        clip_obs: Clip of the normalised observation (RLlib's default 10), or ``None``.
        action_low: Action-space lower bounds.
        action_high: Action-space upper bounds.
        unsquash: Map the mean from [-1, 1] to ``[low, high]`` (``normalize_actions``).
        clip_actions: Clip to ``[low, high]``.

    Raises:
        NotImplementedError: If the module's inference distribution is neither a
            ``TorchDiagGaussian`` nor a ``TorchSquashedGaussian``.
    """

    obs_mean: torch.Tensor
    obs_scale: torch.Tensor
    action_low: torch.Tensor
    action_high: torch.Tensor

    def __init__(
        self,
        module: TorchRLModule,
        *,
        obs_mean: FloatArray | None,
        obs_std: FloatArray | None,
        clip_obs: float | None,
        action_low: ActArray,
        action_high: ActArray,
        unsquash: bool,
        clip_actions: bool,
    ) -> None:
        super().__init__()
        dist_cls = module.get_inference_action_dist_cls()
        supported = (TorchDiagGaussian, TorchSquashedGaussian)
        if not (isinstance(dist_cls, type) and issubclass(dist_cls, supported)):
            raise NotImplementedError(
                "only diagonal-Gaussian or squashed-Gaussian RLlib policies can be deployed, "
                f"got {dist_cls}"
            )
        self.squash = issubclass(dist_cls, TorchSquashedGaussian)
        self.module = module
        self.normalize = obs_mean is not None and obs_std is not None
        mean = np.zeros(1) if obs_mean is None else np.asarray(obs_mean, dtype=np.float64)
        std = np.ones(1) if obs_std is None else np.asarray(obs_std, dtype=np.float64)
        self.register_buffer("obs_mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("obs_scale", torch.as_tensor(std + SMALL_NUMBER, dtype=torch.float64))
        self.clip_obs = clip_obs
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32))
        self.unsquash = bool(unsquash)
        self.clip_actions = bool(clip_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Map ``[batch, obs]`` float32 raw observations to ``[batch, act]`` float32 actions."""
        x = obs
        if self.normalize:
            x64 = (obs.to(torch.float64) - self.obs_mean) / self.obs_scale
            if self.clip_obs is not None:
                x64 = torch.clamp(x64, -self.clip_obs, self.clip_obs)
            x = x64.to(torch.float32)
        out = self.module.forward_inference({Columns.OBS: x})
        loc, _log_std = torch.chunk(out[Columns.ACTION_DIST_INPUTS], 2, dim=-1)
        if self.squash:
            loc = torch.tanh(loc)  # TorchSquashedGaussian's squash into [-1, 1]
        if self.unsquash:
            loc = self.action_low + (loc + 1.0) * (self.action_high - self.action_low) / 2.0
        if self.clip_actions:
            loc = torch.maximum(torch.minimum(loc, self.action_high), self.action_low)
        return loc


def rllib_torch_policy(checkpoint: str | Path) -> DeployedRLlibPolicy:
    """The deployed function of an RLlib checkpoint as one torch module (the export seam).

    Args:
        checkpoint: An algorithm checkpoint written by :func:`train_rllib`.

    Returns:
        A module (in eval mode) mapping float32 ``[batch, obs]`` raw observations to the
        deterministic, clipped ``[batch, act]`` action; equal to :meth:`RLlibPolicy.act`.

    Example:
        >>> module = rllib_torch_policy("runs/rllib/ckpt")  # doctest: +SKIP
        >>> torch.onnx.export(module, (torch.zeros(1, 28),), "policy.onnx")  # doctest: +SKIP
    """
    return RLlibPolicy.from_checkpoint(checkpoint).torch_policy().eval()
