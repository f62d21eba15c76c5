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

import torch
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core.models.torch.heads import TorchFreeLogStdMLPHead
from ray.rllib.core.rl_module.rl_module import RLModule

__all__ = ["LOG_STD_INIT", "PulsePPOTorchRLModule", "log_std_model_config"]

LOG_STD_INIT = "log_std_init"
"""``model_config`` key of the initial log standard deviation."""


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


class PulsePPOTorchRLModule(DefaultPPOTorchRLModule):
    """RLlib's default PPO torch module, with ``log_std_init`` and a cheaper mode switch."""

    def setup(self) -> None:
        """Build RLlib's PPO module, then set the free log-std to ``log_std_init``."""
        super().setup()  # type: ignore[no-untyped-call]  # RLlib is untyped
        config = self.model_config
        init = (
            config.get(LOG_STD_INIT)
            if isinstance(config, dict)
            else getattr(config, LOG_STD_INIT, None)
        )
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

    def forward_exploration(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """RLlib's exploration pass in eval mode; switches mode only if in training mode."""
        if self.training:
            self.eval()
        return self._forward_exploration(batch, **kwargs)

    def forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """RLlib's training pass in training mode; switches mode only if in eval mode."""
        if not self.training:
            self.train()
        # RLModule's forward_train: the inference-only check, then _forward_train.
        return RLModule.forward_train(self, batch, **kwargs)
