"""The PPO actor's exploration pass in numpy, for the EnvRunners' one-vector-step batches.

An EnvRunner asks its policy for one action per env on every vector step: a batch of 4–16
rows through a 64-64 MLP. At that size torch's per-operator dispatch is the cost, not the
arithmetic: RLlib's exploration pass (module call, encoder, head, then the Gaussian's
sample and log-probability as tensor ops) takes ~130 µs per vector step of 4 envs on the
build machine, the same arithmetic in numpy ~20 µs (``pulsebms-bench ray --account``
gives the runner's figures in place).

:class:`NumpyGaussianActor` reads an RLlib PPO torch module's actor (the MLP encoder, the
mean head, the free or network log-std) as numpy *views* of the module's parameters, so a
weight sync that copies into the parameters (``load_state_dict``, RLlib's ``set_state``)
is seen without a copy, and runs the exploration pass: action-distribution inputs (means,
then log-stds: RLlib's layout), a diagonal-Gaussian sample from a numpy ``Generator`` and
its log-probability (``Normal.log_prob``'s formula, float32). Modules of another shape
(other layers or activations, a recurrent or shared-encoder module, non-float32
parameters) are not read (:meth:`NumpyGaussianActor.from_module` returns ``None``) and
keep torch.

The outputs match torch's pass on the same weights to float32 rounding (~1e-7), not bit
for bit (numpy's BLAS sums in another order); the draws are numpy's, so a numpy-run
runner samples other actions than a torch-run one with the same seed, and repeats its
own bit for bit under a seed.

Example:
    >>> import gymnasium as gym
    >>> import numpy as np
    >>> from pulsebms.agents.rllib_module import PulsePPOTorchRLModule, log_std_model_config
    >>> module = PulsePPOTorchRLModule(
    ...     observation_space=gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
    ...     action_space=gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
    ...     model_config={"fcnet_hiddens": [8], "vf_share_layers": False,
    ...                   **log_std_model_config(-1.0)},
    ...     inference_only=True,
    ... )
    >>> actor = NumpyGaussianActor.from_module(module)
    >>> actions, logp, dist_inputs = actor.explore(
    ...     np.zeros((3, 4), np.float32), np.random.default_rng(0))
    >>> actions.shape, logp.shape, dist_inputs.shape, dist_inputs[0, 2:].tolist()
    ((3, 2), (3,), (3, 4), [-1.0, -1.0])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
from ray.rllib.core.models.torch.encoder import TorchMLPEncoder
from ray.rllib.core.models.torch.heads import TorchMLPHead
from ray.rllib.core.models.torch.primitives import TorchMLP
from torch import nn

__all__ = ["NumpyGaussianActor"]

_HALF_LOG_2PI = np.float32(math.log(math.sqrt(2 * math.pi)))

_ACTIVATIONS: dict[type[nn.Module], Callable[[np.ndarray], np.ndarray] | None] = {
    nn.Tanh: np.tanh,
    nn.ReLU: lambda x: np.maximum(x, np.float32(0.0)),
    nn.Identity: None,
}
"""The activation modules read, as numpy functions (``None``: the identity)."""


@dataclass(frozen=True)
class _Layer:
    """One linear layer, ``activation(x @ weight.T + bias)``, on views of torch parameters."""

    weight_t: np.ndarray  # [in, out], a transposed view of the [out, in] parameter
    bias: np.ndarray | None
    activation: Callable[[np.ndarray], np.ndarray] | None


def _layers(model: Any) -> list[_Layer] | None:
    """The layers of RLlib's torch MLP inside an encoder or head (``None``: not readable)."""
    net = getattr(model, "net", None)
    sequential = getattr(net, "mlp", None)
    if type(net) is not TorchMLP or not isinstance(sequential, nn.Sequential):
        return None
    layers: list[_Layer] = []
    for piece in sequential:
        if type(piece) is nn.Linear:
            weight = piece.weight.detach()
            if weight.dtype != torch.float32 or weight.device.type != "cpu":
                return None
            bias = None if piece.bias is None else piece.bias.detach().numpy()
            layers.append(_Layer(weight.numpy().T, bias, None))
        elif type(piece) in _ACTIVATIONS and layers and layers[-1].activation is None:
            function = _ACTIVATIONS[type(piece)]
            if function is not None:
                last = layers[-1]
                layers[-1] = _Layer(last.weight_t, last.bias, function)
        else:
            return None
    return layers


class NumpyGaussianActor:
    """A PPO module's actor as numpy views of its parameters (see the module docstring).

    Args:
        encoder: The actor encoder's layers (observation → features).
        head: The policy head's layers (features → means, or means and log-stds).
        log_std: The free log-std parameter's view (``None``: the head outputs log-stds).
        log_std_clip: Bound of the log-std's clip (``None``: no clip).
    """

    def __init__(
        self,
        encoder: list[_Layer],
        head: list[_Layer],
        log_std: np.ndarray | None,
        log_std_clip: float | None,
    ) -> None:
        self._layers = [*encoder, *head]
        self._log_std = log_std
        self._log_std_clip = None if log_std_clip is None else np.float32(log_std_clip)

    @classmethod
    def from_module(
        cls, module: Any, free_log_std_heads: tuple[type, ...] | None = None
    ) -> NumpyGaussianActor | None:
        """Read the actor of an RLlib PPO torch module, or ``None`` where it has another shape.

        Readable: a ``DefaultPPOTorchRLModule`` (or subclass) with a separate actor encoder
        (``vf_share_layers=False``) that is an MLP of ``Linear`` layers with tanh, ReLU or
        no activation, an MLP policy head, float32 CPU parameters, a diagonal-Gaussian
        exploration distribution, not stateful.

        Args:
            module: The RLModule (an EnvRunner's inference-only copy or a full one).
            free_log_std_heads: Head classes whose forward is ``[net(x), clip(log_std)]``,
                read as such; ``None``: RLlib's and PulseBMS's broadcasting one
                (:data:`pulsebms.agents.rllib_module.FREE_LOG_STD_HEADS`).
        """
        if free_log_std_heads is None:
            # rllib_module imports this module: its head list is read at call time.
            from pulsebms.agents.rllib_module import FREE_LOG_STD_HEADS

            free_log_std_heads = FREE_LOG_STD_HEADS
        try:
            if module.is_stateful() or module.get_exploration_action_dist_cls() is not (
                TorchDiagGaussian
            ):
                return None
        except (AttributeError, NotImplementedError):
            return None
        actor_encoder = getattr(getattr(module, "encoder", None), "actor_encoder", None)
        pi = getattr(module, "pi", None)
        if type(actor_encoder) is not TorchMLPEncoder or type(pi) not in (
            TorchMLPHead,
            *free_log_std_heads,
        ):
            return None
        encoder, head = _layers(actor_encoder), _layers(pi)
        if pi is None or not encoder or not head:
            return None
        clip = float(pi.log_std_clip_param_const) if pi.clip_log_std else None
        if type(pi) is TorchMLPHead:
            return cls(encoder, head, None, clip)
        log_std = getattr(pi, "log_std", None)
        if not isinstance(log_std, nn.Parameter) or log_std.dtype != torch.float32:
            return None
        return cls(encoder, head, log_std.detach().numpy(), clip)

    def dist_inputs(self, obs: np.ndarray) -> np.ndarray:
        """The action-distribution inputs ``[n, 2·act]`` (means, then log-stds) of ``obs``."""
        x = np.asarray(obs, dtype=np.float32)
        for layer in self._layers:
            x = x @ layer.weight_t
            if layer.bias is not None:
                x += layer.bias
            if layer.activation is not None:
                x = layer.activation(x)
        bound = self._log_std_clip
        if self._log_std is None:  # the head gives means and log-stds
            if bound is not None:
                mean, log_std = np.split(x, 2, axis=-1)
                x = np.concatenate([mean, np.clip(log_std, -bound, bound)], axis=-1)
            return x
        log_std = self._log_std if bound is None else np.clip(self._log_std, -bound, bound)
        return np.concatenate([x, np.broadcast_to(log_std, x.shape)], axis=-1)

    def explore(
        self, obs: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One exploration pass: ``(actions [n, act], logp [n], dist_inputs [n, 2·act])``.

        ``actions = mean + exp(log_std) · ε`` with ``ε`` standard normal from ``rng``
        (float32), ``logp = Σ −(a − mean)² / (2σ²) − log σ − log √(2π)``: what RLlib's
        ``TorchDiagGaussian`` samples and scores, in float32.
        """
        dist_inputs = self.dist_inputs(obs)
        loc, log_std = np.split(dist_inputs, 2, axis=-1)
        scale = np.exp(log_std)
        actions = loc + scale * rng.standard_normal(loc.shape, dtype=np.float32)
        logp = (
            -((actions - loc) ** 2) / (np.float32(2.0) * scale**2) - np.log(scale) - _HALF_LOG_2PI
        ).sum(axis=-1)
        return actions, logp, dist_inputs
