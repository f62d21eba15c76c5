"""The :class:`~pulsebms.agents.type_aliases.Policy` protocol and adapters onto it.

Adapters:

* :class:`SB3Policy`: a stable-baselines3 model (+ its ``VecNormalize`` statistics), acting
  deterministically.
* :class:`OnnxPolicy`: an exported ``policy.onnx`` run by onnxruntime. The exporter puts
  observation normalisation and action clipping inside the graph, so it only feeds the raw
  observation and reads the action. It is :class:`pulsebms.edge_runtime.policy.OnnxPolicy`
  itself (re-exported), so evaluation runs the session the edge runs.
* :class:`ConstantPolicy`: a fixed action (idle fleet, adversarial max charge / discharge).

:func:`reset_policy` calls ``reset()`` where a policy has one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pulsebms.agents.type_aliases import ActArray, ObsArray, Policy, ResettablePolicy
from pulsebms.edge_runtime.policy import OnnxPolicy

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecNormalize

__all__ = [
    "ConstantPolicy",
    "FunctionPolicy",
    "OnnxPolicy",
    "Policy",
    "ResettablePolicy",
    "SB3Policy",
    "reset_policy",
]


def reset_policy(policy: Policy) -> None:
    """Call ``policy.reset()`` if the policy defines one (the protocol makes it optional).

    Args:
        policy: Any policy.
    """
    reset = getattr(policy, "reset", None)
    if callable(reset):
        reset()


def _as_action(action: Any, n_actions: int | None = None) -> ActArray:
    out = np.asarray(action, dtype=np.float32).reshape(-1)
    if n_actions is not None and out.shape != (n_actions,):
        raise ValueError(f"policy returned an action of shape {out.shape}, expected ({n_actions},)")
    return out


class ConstantPolicy:
    """Always return the same action.

    Args:
        action: The normalised per-pack action (``0`` idles the fleet, ``1`` is max discharge).

    Example:
        >>> ConstantPolicy([0.5, -0.5]).act(np.zeros(3))
        array([ 0.5, -0.5], dtype=float32)
    """

    def __init__(self, action: ActArray | list[float]) -> None:
        self._action = _as_action(action)

    def act(self, observation: ObsArray) -> ActArray:
        """Return the constant action (a copy)."""
        return self._action.copy()


class FunctionPolicy:
    """Wrap a plain function ``observation -> action`` as a :class:`Policy`.

    Args:
        fn: The function.
        name: Label used in KPI tables.
    """

    def __init__(self, fn: Callable[[ObsArray], Any], name: str = "function") -> None:
        self._fn = fn
        self.name = name

    def act(self, observation: ObsArray) -> ActArray:
        """Apply the wrapped function."""
        return _as_action(self._fn(observation))


class SB3Policy:
    """A stable-baselines3 model as a deterministic :class:`Policy`.

    Args:
        model: A trained SB3 algorithm (PPO, SAC, ...).
        vec_normalize: The ``VecNormalize`` the model was trained behind; its frozen
            observation statistics normalise the observation before ``predict``. ``None``
            when the model was trained on raw observations.
        deterministic: Use the mean action (True, the default for evaluation and export).

    Example:
        >>> policy = SB3Policy(model, vec_normalize)  # doctest: +SKIP
        >>> action = policy.act(obs)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: BaseAlgorithm,
        vec_normalize: VecNormalize | None = None,
        *,
        deterministic: bool = True,
    ) -> None:
        self.model = model
        self.vec_normalize = vec_normalize
        self.deterministic = deterministic

    def act(self, observation: ObsArray) -> ActArray:
        """Normalise the observation (if trained so) and return the model's action."""
        obs = np.asarray(observation, dtype=np.float32)
        if self.vec_normalize is not None:
            obs = np.asarray(self.vec_normalize.normalize_obs(obs), dtype=np.float32)
        action, _ = self.model.predict(obs, deterministic=self.deterministic)
        return _as_action(action)

    @classmethod
    def load(
        cls, model_path: str | Path, vec_normalize_path: str | Path | None = None
    ) -> SB3Policy:
        """Load a policy saved by :func:`pulsebms.agents.sb3.save_agent`.

        Args:
            model_path: ``model.zip`` of the SB3 model.
            vec_normalize_path: ``vecnormalize.pkl`` next to it, if the model was trained
                behind ``VecNormalize``.

        Returns:
            The deterministic policy.
        """
        from pulsebms.agents.sb3 import load_agent

        model, vec_normalize = load_agent(model_path, vec_normalize_path)
        return cls(model, vec_normalize)
