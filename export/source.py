"""The seam between training libraries and the exporter: a :class:`PolicySource`.

A source loads one checkpoint and offers two things: a torch module computing the whole
deployed function (raw observation → normalised → deterministic action → clipped) for the
ONNX graph, and a *reference* prediction through the training library's own API, which the
parity check compares the ONNX model against. Two loaders are registered in
:data:`LOADERS`: stable-baselines3 ``.zip`` files (:mod:`pulsebms.export.sb3`) and RLlib
new-API-stack algorithm checkpoint directories (:mod:`pulsebms.export.rllib`; Ray and RLlib
are imported only when such a checkpoint is loaded).

A checkpoint's identity in the manifest is :func:`checkpoint_sha256`: the sha256 of the
file, or for a directory a sha256 over every regular file in it (see there).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from numpy.typing import NDArray

from pulsebms.edge_runtime.manifest import sha256_file

__all__ = [
    "LOADERS",
    "RLLIB_MARKERS",
    "PolicySource",
    "checkpoint_sha256",
    "detect_kind",
    "load_source",
]


@runtime_checkable
class PolicySource(Protocol):
    """A loaded checkpoint the exporter can turn into ONNX."""

    kind: str
    """Training library (``"sb3"``, ``"rllib"``)."""
    algorithm: str
    """Algorithm class name (``"PPO"``)."""
    checkpoint_path: Path
    """The checkpoint (a file, or an RLlib checkpoint directory)."""
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


def _refuse_normalization(normalization: Path | None, carrier: str) -> None:
    """A clear error when a normalisation file is given for a checkpoint that carries its own."""
    if normalization is not None:
        raise ValueError(
            f"{carrier}; a separate normalisation file ({normalization}) is only for SB3 "
            "(a single model)"
        )


def _load_rllib(checkpoint: Path, normalization: Path | None) -> PolicySource:
    _refuse_normalization(
        normalization, "an RLlib checkpoint carries its own observation statistics (MeanStdFilter)"
    )
    from pulsebms.export.rllib import RLlibSource  # imports ray: only for RLlib checkpoints

    source: PolicySource = RLlibSource.load(checkpoint)
    return source


def _load_ensemble(checkpoint: Path, normalization: Path | None) -> PolicySource:
    _refuse_normalization(
        normalization, "an ensemble folder carries each member's observation statistics"
    )
    from pulsebms.export.ensemble import EnsembleSource

    source: PolicySource = EnsembleSource.load(checkpoint)
    return source


LOADERS: dict[str, Callable[[Path, Path | None], PolicySource]] = {
    "sb3": _load_sb3,
    "rllib": _load_rllib,
    "ensemble": _load_ensemble,
}
"""Checkpoint kind → loader ``(checkpoint, normalization_stats) -> PolicySource``."""


RLLIB_MARKERS = ("rllib_checkpoint.json", "algorithm_state.pkl")
"""Files of which at least one sits at the top of an RLlib algorithm checkpoint directory."""

ENSEMBLE_MARKER = "ensemble.json"
"""The file of an ensemble folder (:data:`pulsebms.agents.ensemble.ENSEMBLE_FILE`)."""


def detect_kind(checkpoint: Path) -> str:
    """Guess the checkpoint kind: an SB3 ``.zip``, an RLlib checkpoint or an ensemble.

    A directory holding any of :data:`RLLIB_MARKERS` is ``"rllib"``; a directory holding
    :data:`ENSEMBLE_MARKER`, or that file itself, is ``"ensemble"``
    (:mod:`pulsebms.export.ensemble`).

    Raises:
        ValueError: If the path is none of them.
    """
    if checkpoint.is_file() and checkpoint.suffix == ".zip":
        return "sb3"
    if (checkpoint.is_dir() and (checkpoint / ENSEMBLE_MARKER).is_file()) or (
        checkpoint.is_file() and checkpoint.name == ENSEMBLE_MARKER
    ):
        return "ensemble"
    if checkpoint.is_dir() and any((checkpoint / m).is_file() for m in RLLIB_MARKERS):
        return "rllib"
    raise ValueError(
        f"cannot tell the kind of checkpoint {checkpoint}: expected an SB3 .zip file, an "
        "RLlib algorithm checkpoint directory (holding rllib_checkpoint.json) or an ensemble "
        "folder (holding ensemble.json); pass kind= explicitly"
    )


def checkpoint_sha256(path: str | Path) -> str:
    r"""Hex sha256 identifying a checkpoint file or directory (recorded in the manifest).

    For a file: the sha256 of its bytes (``sha256sum FILE``). For a directory: the sha256 of
    a listing with one line per regular file below it (symlinks are not followed, empty
    directories do not count), sorted by path::

        <sha256 of the file, hex>  <path relative to the directory, '/'-separated>\n

    which is the output of ``cd DIR && find . -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 sha256sum | sha256sum`` (for paths without newlines or backslashes). The hash
    so covers every file's content and name, not timestamps or permissions.

    Args:
        path: The checkpoint.

    Returns:
        The hex digest.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    root = Path(path)
    if not root.is_dir():
        return sha256_file(root)
    files: list[tuple[bytes, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            if full.is_file() and not full.is_symlink():
                rel = full.relative_to(root).as_posix().encode("utf-8", "surrogateescape")
                files.append((rel, full))
    listing = hashlib.sha256()
    for rel, full in sorted(files):
        listing.update(sha256_file(full).encode("ascii") + b"  " + rel + b"\n")
    return listing.hexdigest()


def load_source(
    checkpoint: str | Path,
    normalization: str | Path | None = None,
    *,
    kind: str = "auto",
) -> PolicySource:
    """Load a checkpoint as a :class:`PolicySource`.

    Args:
        checkpoint: SB3 ``.zip``, or an RLlib algorithm checkpoint directory
            (``Algorithm.save_to_path``, e.g. from :func:`pulsebms.agents.rllib.train_rllib`),
            or an ensemble folder (:func:`pulsebms.agents.ensemble.save_ensemble`).
        normalization: Observation-normalisation statistics (SB3 ``VecNormalize`` pickle);
            for SB3, looked up beside the zip (``<stem>_vecnormalize.pkl``,
            ``vecnormalize.pkl``) when ``None``. Must be ``None`` for RLlib (the
            ``MeanStdFilter`` statistics are read from the checkpoint) and for an
            ensemble (each member's is in its folder).
        kind: ``"auto"``, ``"sb3"``, ``"rllib"`` or ``"ensemble"``.

    Returns:
        The loaded source.

    Raises:
        FileNotFoundError: If the checkpoint does not exist, or a directory given as RLlib
            is not an RLlib (new API stack) algorithm checkpoint.
        ValueError: If the kind is unknown or cannot be detected, the spaces are not flat
            ``Box`` spaces, or ``normalization`` is given for an RLlib checkpoint.
        NotImplementedError: For RLlib policies the deployed module cannot express (a
            non-Gaussian action distribution, a multi-agent observation filter).
    """
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    resolved = detect_kind(path) if kind == "auto" else kind
    if resolved not in LOADERS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known: {sorted(LOADERS)}")
    return LOADERS[resolved](path, None if normalization is None else Path(normalization))
