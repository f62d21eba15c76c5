"""RLlib (new API stack) checkpoints as a :class:`~pulsebms.export.source.PolicySource`.

Built on :mod:`pulsebms.agents.rllib`: :class:`~pulsebms.agents.rllib.RLlibPolicy` loads the
algorithm checkpoint directory without a Ray runtime and is the parity *reference*
(``MeanStdFilter`` statistics, frozen → RLModule ``forward_inference`` → mean of the
diagonal Gaussian → unsquash/clip to the action space, all through RLlib's own objects);
:func:`~pulsebms.agents.rllib.rllib_torch_policy` gives the same function as one torch
module, which is what goes into the ONNX graph. The observation statistics live inside the
checkpoint, so there is no separate normalisation file (``normalization_path`` is ``None``).

Importing this module imports Ray and RLlib; :mod:`pulsebms.export.source` imports it only
when an RLlib checkpoint is loaded.
"""

from __future__ import annotations

import pickletools
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from numpy.typing import NDArray

from pulsebms.agents.rllib import RLlibPolicy, rllib_torch_policy
from pulsebms.export.source import PolicySource

__all__ = ["ClippedPolicy", "RLlibSource", "detect_algorithm"]


class ClippedPolicy(torch.nn.Module):
    """``policy`` followed by a clip to ``[low, high]`` (the deployed action bounds).

    A no-op for the usual ``Box(-1, 1)`` action space (the RLlib module already clips to
    the space); it keeps the deployed action within [-1, 1] when the space is wider, as the
    SB3 exporter does.
    """

    low: torch.Tensor
    high: torch.Tensor

    def __init__(
        self, policy: torch.nn.Module, low: NDArray[np.float32], high: NDArray[np.float32]
    ) -> None:
        super().__init__()
        self.policy = policy
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        """Clipped action for a ``[batch, obs]`` float32 raw observation."""
        action: torch.Tensor = self.policy(observation)
        return torch.minimum(torch.maximum(action, self.low), self.high)


class RLlibSource:
    """An RLlib algorithm checkpoint directory ready for export.

    Build with :meth:`load`.

    Args:
        policy: The checkpoint loaded as :class:`~pulsebms.agents.rllib.RLlibPolicy`.
        checkpoint_path: The checkpoint directory.
        algorithm: Algorithm name recorded in the manifest (``"PPO"``).

    Raises:
        ValueError: If the spaces are not flat ``Box`` spaces.
    """

    kind = "rllib"

    def __init__(self, policy: RLlibPolicy, checkpoint_path: Path, algorithm: str = "PPO") -> None:
        obs_space, act_space = policy.observation_space, policy.action_space
        if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(f"only flat Box observations can be exported, got {obs_space}")
        if not isinstance(act_space, spaces.Box) or len(act_space.shape) != 1:
            raise ValueError(f"only flat Box actions can be exported, got {act_space}")
        self.policy = policy
        self.algorithm = algorithm
        self.checkpoint_path = checkpoint_path
        self.normalization_path: Path | None = None
        self.observation_low = np.asarray(obs_space.low, dtype=np.float32)
        self.observation_high = np.asarray(obs_space.high, dtype=np.float32)
        self.action_low = np.maximum(np.asarray(act_space.low, dtype=np.float32), np.float32(-1))
        self.action_high = np.minimum(np.asarray(act_space.high, dtype=np.float32), np.float32(1))

    @classmethod
    def load(cls, checkpoint: str | Path) -> RLlibSource:
        """Load an algorithm checkpoint directory (``Algorithm.save_to_path``).

        Args:
            checkpoint: The directory.

        Returns:
            The source.

        Raises:
            FileNotFoundError: If it is not an RLlib (new API stack) algorithm checkpoint.
            ValueError: On unsupported spaces.
        """
        path = Path(checkpoint)
        return cls(RLlibPolicy.from_checkpoint(path), path, algorithm=detect_algorithm(path))

    def torch_policy(self) -> torch.nn.Module:
        """The deployed function (:func:`~pulsebms.agents.rllib.rllib_torch_policy`), clipped."""
        module = rllib_torch_policy(self.checkpoint_path)
        return ClippedPolicy(module, self.action_low, self.action_high).eval()

    def predict(self, observations: NDArray[np.float32]) -> NDArray[np.float32]:
        """Reference: :meth:`RLlibPolicy.predict` (RLlib's objects), clipped alike.

        Args:
            observations: ``[batch, obs]`` raw observations.

        Returns:
            ``[batch, act]`` actions.
        """
        actions = self.policy.predict(np.asarray(observations, dtype=np.float32))
        clipped = np.clip(actions, self.action_low, self.action_high)
        return np.asarray(clipped, dtype=np.float32)

    def observation_stats(self) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        """``(mean, std)`` of the checkpoint's ``MeanStdFilter``, if it was trained behind one."""
        return self.policy.observation_stats()


def detect_algorithm(checkpoint: Path) -> str:
    """Name the algorithm class (``"PPO"``) that saved ``checkpoint``, without unpickling.

    Walks the opcodes of the checkpoint's ``class_and_ctor_args.pkl`` with
    :func:`pickletools.genops` (which executes nothing) and returns the name of the first
    global it references, the algorithm class (``ray.rllib.algorithms.ppo.ppo.PPO``).

    Args:
        checkpoint: The algorithm checkpoint directory.

    Returns:
        The class name, or ``"unknown"`` if the file is missing or names no RLlib class.
    """
    try:
        data = (checkpoint / "class_and_ctor_args.pkl").read_bytes()
        strings: list[str] = []
        for opcode, arg, _pos in pickletools.genops(data):
            if opcode.name == "GLOBAL" and isinstance(arg, str):
                strings.extend(arg.split(" ", 1))  # protocol < 4: "module name"
            elif opcode.name != "STACK_GLOBAL":  # protocol >= 4: module, name pushed first
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            found = len(strings) >= 2 and strings[-2].startswith("ray.rllib.")
            return strings[-1] if found else "unknown"
    except (OSError, ValueError, EOFError):  # unreadable or not a pickle
        pass
    return "unknown"


def _check_protocol(source: RLlibSource) -> PolicySource:
    return source  # mypy checks that RLlibSource satisfies PolicySource
