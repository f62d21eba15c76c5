"""stable-baselines3 checkpoints as a :class:`~pulsebms.export.source.PolicySource`.

SB3's own ONNX guide exports only the network: ``predict`` also normalises observations
(``VecNormalize``, a separate pickle), unscales squashed actions (SAC, TD3) and clips the
rest to the action space. :class:`DeployedPolicy` puts all of it in one torch module, so the
ONNX graph computes exactly what ``model.predict(vec_normalize.normalize_obs(obs),
deterministic=True)`` returns, clipped to [-1, 1]; :meth:`SB3Source.predict` is that
reference, used by the parity check.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from numpy.typing import NDArray
from stable_baselines3 import A2C, DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm

from pulsebms.export.source import PolicySource

__all__ = ["ALGORITHMS", "DeployedPolicy", "SB3Source", "detect_algorithm"]

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {
    "PPO": PPO,
    "A2C": A2C,
    "SAC": SAC,
    "TD3": TD3,
    "DDPG": DDPG,
}
"""SB3 algorithms the exporter knows (continuous ``Box`` actions)."""


def detect_algorithm(checkpoint: Path) -> str:
    """Name the SB3 algorithm that saved ``checkpoint`` from the zip's ``data`` entry.

    Args:
        checkpoint: The SB3 ``.zip``.

    Returns:
        A key of :data:`ALGORITHMS`.

    Raises:
        ValueError: If the file is not an SB3 zip.
    """
    try:
        with zipfile.ZipFile(checkpoint) as zf:
            data = json.loads(zf.read("data"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{checkpoint} is not a stable-baselines3 checkpoint: {exc}") from exc
    module = str(data.get("policy_class", {}).get("__module__", ""))
    if "policy_delay" in data:
        return "TD3"
    if "target_entropy" in data or module.startswith("stable_baselines3.sac"):
        return "SAC"
    if "clip_range" in data:
        return "PPO"
    return "A2C"


class DeployedPolicy(torch.nn.Module):
    """Raw observation → normalised → deterministic action → unscaled → clipped.

    Normalisation runs in float64, as ``VecNormalize`` does in numpy, and is cast to float32
    before the network, as SB3 does.

    Args:
        actor: Module mapping a normalised float32 observation to the policy's raw action
            (the mean action; ``tanh``-squashed where the policy squashes).
        obs_mean: ``VecNormalize`` running mean, or ``None`` for no normalisation.
        obs_std: ``sqrt(var + epsilon)`` of the same statistics.
        clip_obs: ``VecNormalize.clip_obs``.
        squash: Whether the actor's output is in [-1, 1] and must be unscaled.
        space_low: Action-space lower bounds (for unscaling).
        space_high: Action-space upper bounds.
        clip_low: Lower bounds of the deployed action.
        clip_high: Upper bounds of the deployed action.
    """

    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    space_low: torch.Tensor
    space_high: torch.Tensor
    clip_low: torch.Tensor
    clip_high: torch.Tensor

    def __init__(
        self,
        actor: torch.nn.Module,
        obs_mean: NDArray[np.float64] | None,
        obs_std: NDArray[np.float64] | None,
        clip_obs: float,
        squash: bool,
        space_low: NDArray[np.float32],
        space_high: NDArray[np.float32],
        clip_low: NDArray[np.float32],
        clip_high: NDArray[np.float32],
    ) -> None:
        super().__init__()
        self.actor = actor
        self.normalize = obs_mean is not None and obs_std is not None
        self.squash = squash
        self.clip_obs = float(clip_obs)
        if obs_mean is not None and obs_std is not None:
            self.register_buffer("obs_mean", torch.as_tensor(obs_mean, dtype=torch.float64))
            self.register_buffer("obs_std", torch.as_tensor(obs_std, dtype=torch.float64))
        self.register_buffer("space_low", torch.as_tensor(space_low, dtype=torch.float32))
        self.register_buffer("space_high", torch.as_tensor(space_high, dtype=torch.float32))
        self.register_buffer("clip_low", torch.as_tensor(clip_low, dtype=torch.float32))
        self.register_buffer("clip_high", torch.as_tensor(clip_high, dtype=torch.float32))

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        """Deployed action for a ``[batch, obs]`` float32 observation."""
        obs = observation
        if self.normalize:
            obs64 = (observation.to(torch.float64) - self.obs_mean) / self.obs_std
            obs = torch.clamp(obs64, -self.clip_obs, self.clip_obs).to(torch.float32)
        action = self.actor(obs)
        if self.squash:
            action = self.space_low + 0.5 * (action + 1.0) * (self.space_high - self.space_low)
        return torch.minimum(torch.maximum(action, self.clip_low), self.clip_high)


class _ActorCriticActor(torch.nn.Module):
    """PPO / A2C: features → actor latent → mean action (``tanh`` if the policy squashes)."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = self.policy.extract_features(obs)
        if isinstance(features, tuple):  # separate actor and critic extractors
            features = features[0]
        latent = self.policy.mlp_extractor.forward_actor(features)
        mean: torch.Tensor = self.policy.action_net(latent)
        return torch.tanh(mean) if self.policy.squash_output else mean


class _SACActor(torch.nn.Module):
    """SAC: the squashed Gaussian's mode, ``tanh(mean)``."""

    def __init__(self, actor: Any) -> None:
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        mean, _log_std, _kwargs = self.actor.get_action_dist_params(obs)
        return torch.tanh(mean)


class _TD3Actor(torch.nn.Module):
    """TD3 / DDPG: the deterministic actor (``tanh`` inside)."""

    def __init__(self, actor: Any) -> None:
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.actor(obs)
        return out


class SB3Source:
    """A stable-baselines3 model (+ its ``VecNormalize`` statistics) ready for export.

    Build with :meth:`load`.

    Args:
        model: The loaded model (any of :data:`ALGORITHMS`).
        checkpoint_path: Its ``.zip``.
        vec_normalize: The unpickled ``VecNormalize`` (or ``None``).
        normalization_path: Its pickle.

    Raises:
        ValueError: If the spaces are not flat ``Box`` spaces.
    """

    kind = "sb3"

    def __init__(
        self,
        model: BaseAlgorithm,
        checkpoint_path: Path,
        vec_normalize: Any | None = None,
        normalization_path: Path | None = None,
    ) -> None:
        obs_space, act_space = model.observation_space, model.action_space
        if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(f"only flat Box observations can be exported, got {obs_space}")
        if not isinstance(act_space, spaces.Box) or len(act_space.shape) != 1:
            raise ValueError(f"only flat Box actions can be exported, got {act_space}")
        if vec_normalize is not None and isinstance(getattr(vec_normalize, "obs_rms", None), dict):
            raise ValueError("VecNormalize over dict observations cannot be exported")
        self.model = model
        self.algorithm = type(model).__name__
        self.checkpoint_path = checkpoint_path
        self.vec_normalize = vec_normalize
        self.normalization_path = normalization_path
        self.observation_low = np.asarray(obs_space.low, dtype=np.float32)
        self.observation_high = np.asarray(obs_space.high, dtype=np.float32)
        self._space_low = np.asarray(act_space.low, dtype=np.float32)
        self._space_high = np.asarray(act_space.high, dtype=np.float32)
        self.action_low = np.maximum(self._space_low, np.float32(-1.0))
        self.action_high = np.minimum(self._space_high, np.float32(1.0))

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        normalization: str | Path | None = None,
        *,
        algorithm: str | None = None,
    ) -> SB3Source:
        """Load an SB3 checkpoint and its ``VecNormalize`` pickle (if any).

        Args:
            checkpoint: The ``.zip``.
            normalization: The ``VecNormalize`` pickle; looked up beside the zip
                (``<stem>_vecnormalize.pkl``, then ``vecnormalize.pkl``) when ``None``.
            algorithm: Key of :data:`ALGORITHMS`; detected from the zip when ``None``.

        Returns:
            The source.

        Raises:
            ValueError: On an unknown algorithm or unsupported spaces.
        """
        path = Path(checkpoint)
        name = (algorithm or detect_algorithm(path)).upper()
        if name not in ALGORITHMS:
            raise ValueError(f"unknown SB3 algorithm {algorithm!r}; known: {sorted(ALGORITHMS)}")
        model = ALGORITHMS[name].load(str(path), device="cpu")
        norm_path = Path(normalization) if normalization is not None else None
        if norm_path is None:
            for candidate in (
                path.with_name(f"{path.stem}_vecnormalize.pkl"),
                path.with_name("vecnormalize.pkl"),
            ):
                if candidate.is_file():
                    norm_path = candidate
                    break
        vec_normalize = None
        if norm_path is not None:
            with norm_path.open("rb") as fh:
                vec_normalize = pickle.load(fh)  # the user's own training artefact (trusted)
        return cls(model, path, vec_normalize, norm_path)

    def _norm(self) -> tuple[NDArray[np.float64] | None, NDArray[np.float64] | None, float]:
        vn = self.vec_normalize
        if vn is None or not getattr(vn, "norm_obs", False):
            return None, None, 0.0
        mean = np.asarray(vn.obs_rms.mean, dtype=np.float64)
        std = np.sqrt(np.asarray(vn.obs_rms.var, dtype=np.float64) + vn.epsilon)
        return mean, std, float(vn.clip_obs)

    def torch_policy(self) -> torch.nn.Module:
        """The deployed function as one torch module (eval mode, CPU)."""
        policy: Any = self.model.policy
        policy.set_training_mode(False)
        actor: torch.nn.Module
        if self.algorithm in ("SAC",):
            actor = _SACActor(policy.actor)
        elif self.algorithm in ("TD3", "DDPG"):
            actor = _TD3Actor(policy.actor)
        else:
            actor = _ActorCriticActor(policy)
        mean, std, clip_obs = self._norm()
        return DeployedPolicy(
            actor,
            mean,
            std,
            clip_obs,
            bool(policy.squash_output),
            self._space_low,
            self._space_high,
            self.action_low,
            self.action_high,
        ).eval()

    def predict(self, observations: NDArray[np.float32]) -> NDArray[np.float32]:
        """Reference: ``model.predict(normalize_obs(obs), deterministic=True)``, clipped.

        Args:
            observations: ``[batch, obs]`` raw observations.

        Returns:
            ``[batch, act]`` actions.
        """
        obs = np.asarray(observations, dtype=np.float32)
        if self.vec_normalize is not None:
            obs = self.vec_normalize.normalize_obs(obs)
        actions, _ = self.model.predict(obs, deterministic=True)
        clipped = np.clip(np.asarray(actions, dtype=np.float32), self.action_low, self.action_high)
        return np.asarray(clipped, dtype=np.float32)

    def observation_stats(self) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        """``(mean, std)`` from ``VecNormalize``, if the model was trained behind one."""
        mean, std, _ = self._norm()
        if mean is None or std is None:
            return None
        return mean, std


def _check_protocol(source: SB3Source) -> PolicySource:
    return source  # mypy checks that SB3Source satisfies PolicySource
