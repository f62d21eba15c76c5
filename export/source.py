"""The seam between training libraries and the exporter: a :class:`PolicySource`.

A source loads one checkpoint and offers two things: a torch module computing the whole
deployed function (raw observation → normalised → deterministic action → clipped) for the
ONNX graph, and a *reference* prediction through the training library's own API, which the
parity check compares the ONNX model against. stable-baselines3 is implemented
(:mod:`pulsebms.export.sb3`); RLlib plugs in here by adding a loader to :data:`LOADERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["LOADERS", "PolicySource", "detect_kind", "load_source"]


@runtime_checkable
class PolicySource(Protocol):
    """A loaded checkpoint the exporter can turn into ONNX."""

    kind: str
    """Training library (``"sb3"``)."""
    algorithm: str
    """Algorithm class name (``"PPO"``)."""
    checkpoint_path: Path
    """The checkpoint file."""
    normalization_path: Path | None
    """Observation-normalisation statistics file, if any."""
    observation_low: NDArray[np.float32]
    """Observation-space lower bounds."""
    observation_high: NDArray[np.float32]
    """Observation-space upper bounds."""
    action_low: NDArray[np.float32]
    """Lower bounds of the deployed action (within [-1, 1])."""
    action_high: NDArray[np.float32]
    """Upper bounds of the deployed action (within [-1, 1])."""

    def torch_policy(self) -> torch.nn.Module:
        """Module mapping float32 ``[batch, obs]`` raw observations to ``[batch, act]`` actions."""
        ...

    def predict(self, observations: NDArray[np.float32]) -> NDArray[np.float32]:
        """Reference actions for ``[batch, obs]`` raw observations, via the library's API."""
        ...

    def observation_stats(self) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        """``(mean, std)`` of the training observations, if known (for parity sampling)."""
        ...


def _load_sb3(checkpoint: Path, normalization: Path | None) -> PolicySource:
    from pulsebms.export.sb3 import SB3Source

    source: PolicySource = SB3Source.load(checkpoint, normalization)
    return source


def _load_rllib(checkpoint: Path, normalization: Path | None) -> PolicySource:
    raise NotImplementedError(
        "RLlib checkpoints are not exported yet: implement a PolicySource for an RLModule "
        "(torch_policy: the module's deterministic forward_inference plus its connectors' "
        "observation filter and action clipping; predict: Algorithm.compute_single_action "
        f"with explore=False) and register it in pulsebms.export.source.LOADERS ({checkpoint})"
    )


LOADERS: dict[str, Callable[[Path, Path | None], PolicySource]] = {
    "sb3": _load_sb3,
    "rllib": _load_rllib,
}
"""Checkpoint kind → loader ``(checkpoint, normalization_stats) -> PolicySource``."""


def detect_kind(checkpoint: Path) -> str:
    """Guess the checkpoint kind: an SB3 ``.zip``, or an RLlib checkpoint directory.

    Raises:
        ValueError: If the path is neither.
    """
    if checkpoint.is_file() and checkpoint.suffix == ".zip":
        return "sb3"
    markers = ("rllib_checkpoint.json", "algorithm_state.pkl")
    if checkpoint.is_dir() and any((checkpoint / m).exists() for m in markers):
        return "rllib"
    raise ValueError(
        f"cannot tell the kind of checkpoint {checkpoint}: expected an SB3 .zip file or an "
        "RLlib checkpoint directory (pass kind= explicitly)"
    )


def load_source(
    checkpoint: str | Path,
    normalization: str | Path | None = None,
    *,
    kind: str = "auto",
) -> PolicySource:
    """Load a checkpoint as a :class:`PolicySource`.

    Args:
        checkpoint: SB3 ``.zip`` (or, later, an RLlib checkpoint directory).
        normalization: Observation-normalisation statistics (SB3 ``VecNormalize`` pickle);
            for SB3, looked up beside the zip (``<stem>_vecnormalize.pkl``,
            ``vecnormalize.pkl``) when ``None``.
        kind: ``"auto"``, ``"sb3"`` or ``"rllib"``.

    Returns:
        The loaded source.

    Raises:
        FileNotFoundError: If the checkpoint does not exist.
        ValueError: If the kind is unknown or cannot be detected.
        NotImplementedError: For RLlib checkpoints (not yet supported).
    """
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    resolved = detect_kind(path) if kind == "auto" else kind
    if resolved not in LOADERS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known: {sorted(LOADERS)}")
    return LOADERS[resolved](path, None if normalization is None else Path(normalization))
