"""PulseBMS's PPO RLModule for RLlib: a state-independent log-std with a chosen start value.

:class:`PulsePPOTorchRLModule` is RLlib's default PPO torch module with two changes:

* **Initial exploration noise.** With ``model_config["log_std_init"]`` set, the Gaussian's
  log standard deviation is a free parameter (RLlib's ``free_log_std``: one learned value
  per action dimension, not a function of the observation) that starts at that value:
  the policy SB3's PPO trains (``log_std_init``), so both backends start from the same
  exploration noise. Without it the module is RLlib's default (log-std from the network).
* **Exportable free log-std.** RLlib's free-log-std head repeats the log-std ``len(batch)``
  times, which fixes the batch size of an ONNX export; this module's head broadcasts it
  (same values, same parameters, same checkpoint layout).
* **One mode switch, not two per pass.** RLlib's torch module calls ``self.eval()`` before
  each inference or exploration pass and ``self.train()`` after it (each a walk over every
  sub-module; a fresh module is in training mode, so an EnvRunner paid both walks on every
  env step), and ``self.train()`` before each training pass (once per SGD minibatch in the
  Learner). This module's passes put it in the mode they need only when it is in the
  other one, and leave it there: an EnvRunner switches to eval mode once, a Learner stays
  in training mode. (The policy MLPs have no dropout or batch norm: the mode changes no
  output.)

* **The runners' exploration pass in numpy** (``model_config["runner_inference"] ==
  "numpy"``, :data:`RUNNER_INFERENCE`): given a numpy observation batch (what PulseBMS's
  batched env-to-module connector gives an exploring EnvRunner), the exploration pass runs
  the actor on numpy views of the parameters and samples the Gaussian there
  (:class:`~pulsebms.agents.rllib_numpy_actor.NumpyGaussianActor`, ~6× cheaper than
  torch's dispatch for a 4–16-row batch), returning actions and log-probabilities with the
  distribution inputs. The draws come from the module's own numpy ``Generator``
  (:meth:`PulsePPOTorchRLModule.seed_exploration`; PulseBMS's EnvRunner seeds it with the
  runner's seed). Torch batches, inference passes, training passes and modules of another
  shape run torch as before; ``"torch"`` (and a ``model_config`` without the key, as in
  older checkpoints) keeps torch everywhere.

Checkpoints name this class, so :class:`~pulsebms.agents.rllib_policy.RLlibPolicy` and the
exporter load it like the default module (the action-distribution inputs keep RLlib's
layout: means, then log-stds).

Example:
    >>> import gymnasium as gym
    >>> import numpy as np
    >>> module = PulsePPOTorchRLModule(
    ...     observation_space=gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
    ...     action_space=gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
    ...     model_config={"fcnet_hiddens": [8], **log_std_model_config(-1.0)},
    ... )
    >>> module.pi.log_std.tolist()
    [-1.0, -1.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.core.models.torch.heads import TorchFreeLogStdMLPHead
from ray.rllib.core.rl_module.rl_module import RLModule

from pulsebms.agents.rllib_config import check_runner_inference
from pulsebms.agents.rllib_numpy_actor import NumpyGaussianActor

__all__ = [
    "FREE_LOG_STD_HEADS",
    "LOG_STD_INIT",
    "RUNNER_INFERENCE",
    "PulsePPOTorchRLModule",
    "log_std_model_config",
    "runner_inference_model_config",
]

LOG_STD_INIT = "log_std_init"
"""``model_config`` key of the initial log standard deviation."""

RUNNER_INFERENCE = "runner_inference"
"""``model_config`` key: ``"numpy"`` or ``"torch"``, how EnvRunners run the exploration pass."""


def runner_inference_model_config(kind: str) -> dict[str, Any]:
    """The ``model_config`` entry for the runners' exploration pass (see the module docstring).

    Raises:
        ValueError: If ``kind`` is not one of
            :data:`~pulsebms.agents.rllib_config.RUNNER_INFERENCE_KINDS`.

    Example:
        >>> runner_inference_model_config("numpy")
        {'runner_inference': 'numpy'}
    """
    check_runner_inference("model_config", kind)
    return {RUNNER_INFERENCE: kind}


def log_std_model_config(log_std_init: float | None) -> dict[str, Any]:
    """``model_config`` entries for a free log-std starting at ``log_std_init`` (or none).

    Example:
        >>> log_std_model_config(-0.5), log_std_model_config(None)
        ({'free_log_std': True, 'log_std_init': -0.5}, {})
    """
    if log_std_init is None:
        return {}
    return {"free_log_std": True, LOG_STD_INIT: float(log_std_init)}


class _BroadcastFreeLogStdHead(TorchFreeLogStdMLPHead):  # type: ignore[no-untyped-call]  # RLlib is untyped
    """RLlib's free-log-std head with the log-std broadcast to the batch (export-safe)."""

    def _forward(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]  # RLlib's Model annotates dicts; heads take and return tensors
        mean = self.net(inputs)
        log_std = self.log_std
        if self.clip_log_std:
            bound = self.log_std_clip_param_const
            log_std = torch.clamp(log_std, -bound, bound)
        return torch.cat([mean, log_std.expand_as(mean)], dim=-1)


FREE_LOG_STD_HEADS: tuple[type, ...] = (TorchFreeLogStdMLPHead, _BroadcastFreeLogStdHead)
"""The free-log-std policy heads whose forward is ``[net(x), clip(log_std)]``."""


def _model_config_entry(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


class PulsePPOTorchRLModule(DefaultPPOTorchRLModule):
    """RLlib's default PPO torch module: ``log_std_init``, a cheaper mode switch, numpy runners."""

    def setup(self) -> None:
        """Build RLlib's PPO module, set the free log-std to ``log_std_init``, read the pass.

        Raises:
            ValueError: If ``runner_inference`` is given and not one of
                :data:`~pulsebms.agents.rllib_config.RUNNER_INFERENCE_KINDS`, or
                ``log_std_init`` without a free log-std.
        """
        super().setup()  # type: ignore[no-untyped-call]  # RLlib is untyped
        config = self.model_config
        init = _model_config_entry(config, LOG_STD_INIT)
        kind = _model_config_entry(config, RUNNER_INFERENCE)
        if kind is not None:
            runner_inference_model_config(str(kind))  # validates
        self._numpy_runner = kind == "numpy"
        self._numpy_actor: NumpyGaussianActor | None = None
        self._exploration_rng = np.random.default_rng()
        if type(self.pi) is TorchFreeLogStdMLPHead:
            # Same attributes and parameters, only the forward differs (see the class).
            self.pi.__class__ = _BroadcastFreeLogStdHead
        if init is None:
            return
        log_std = getattr(self.pi, "log_std", None)
        if not isinstance(log_std, torch.nn.Parameter):
            raise ValueError(
                "log_std_init needs a free log-std (model_config free_log_std=True) and a "
                "diagonal-Gaussian policy"
            )
        with torch.no_grad():
            log_std.fill_(float(init))

    def forward_inference(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """RLlib's inference pass in eval mode; switches mode only if in training mode."""
        if self.training:
            self.eval()
        return self._forward_inference(batch, **kwargs)

    @property
    def numpy_exploration(self) -> bool:
        """Whether a numpy observation batch gets the numpy exploration pass."""
        return self._numpy_exploration_actor() is not None

    def _numpy_exploration_actor(self) -> NumpyGaussianActor | None:
        """The numpy actor, read once per weight state (``None``: torch's pass)."""
        if self._numpy_runner and self._numpy_actor is None:
            self._numpy_actor = NumpyGaussianActor.from_module(self, FREE_LOG_STD_HEADS)
            if self._numpy_actor is None:
                self._numpy_runner = False  # another shape: torch from now on
            elif self.training:
                self.eval()  # as the torch pass leaves a runner's module
        return self._numpy_actor

    def seed_exploration(self, seed: int | None) -> None:
        """Reseed the numpy exploration pass's ``Generator`` (``None``: fresh entropy)."""
        self._exploration_rng = np.random.default_rng(seed)

    def set_state(self, state: Any) -> None:
        """RLlib's ``set_state``; the numpy actor re-reads the parameters afterwards."""
        super().set_state(state)
        self._numpy_actor = None

    def forward_exploration(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """RLlib's exploration pass in eval mode; in numpy for a numpy observation batch.

        A numpy ``obs`` batch (with ``runner_inference="numpy"`` and a readable actor) gets
        the actions, their log-probabilities and the distribution inputs, as float32 numpy
        arrays (RLlib's ``GetActions`` then keeps them); any other batch, RLlib's pass.
        """
        obs = batch.get(Columns.OBS)
        if isinstance(obs, np.ndarray):
            actor = self._numpy_exploration_actor()
            if actor is not None:
                actions, logp, dist_inputs = actor.explore(obs, self._exploration_rng)
                return {
                    Columns.ACTION_DIST_INPUTS: dist_inputs,
                    Columns.ACTIONS: actions,
                    Columns.ACTION_LOGP: logp,
                }
            batch = {**batch, Columns.OBS: torch.from_numpy(obs)}
        if self.training:
            self.eval()
        return self._forward_exploration(batch, **kwargs)

    def forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """RLlib's training pass in training mode; switches mode only if in eval mode."""
        if not self.training:
            self.train()
        # RLModule's forward_train: the inference-only check, then _forward_train.
        return RLModule.forward_train(self, batch, **kwargs)
