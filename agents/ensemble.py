"""Ensembles of policies: one policy that averages its members' deterministic actions.

Behaviour cloning's error differs from seed to seed (initialisation, minibatch order, the
DAgger days a clone visits); averaging the actions of K independently trained clones is
the standard way to cut that variance. The ensemble acts on the *raw* observation, like a
single policy: each member normalises it with its own frozen statistics (each clone's
``VecNormalize`` was set from its own demonstrations and DAgger days), and the ensemble's
action is the mean of the members' actions (each already clipped to the action space).

On disk an ensemble is a folder holding :data:`ENSEMBLE_FILE` and its members' files
(:func:`save_ensemble`); ``pulsebms-export`` turns the folder into *one* ONNX graph that
computes the same average (:class:`pulsebms.export.ensemble.EnsembleSource`).

**Member seeds** (:func:`member_seeds`): the member ``k`` of the ensemble for training seed
``s`` is the single agent of the same recipe trained with seed ``s + 1000 k``, so member 0
is the single agent of seed ``s`` itself and the members of different training seeds
never share a seed (for fewer than 1000 training seeds).

Example:
    >>> import numpy as np
    >>> from pulsebms.agents.policy import ConstantPolicy
    >>> ensemble = EnsemblePolicy([ConstantPolicy([0.2, -1.0]), ConstantPolicy([0.6, 0.0])])
    >>> ensemble.act(np.zeros(4))
    array([ 0.4, -0.5], dtype=float32)
    >>> member_seeds(2, 3)
    [2, 1002, 2002]
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pulsebms.agents.policy import SB3Policy, reset_policy
from pulsebms.agents.type_aliases import ActArray, ObsArray, Policy

__all__ = [
    "ENSEMBLE_FILE",
    "ENSEMBLE_FORMAT",
    "MEMBER_SEED_STRIDE",
    "EnsembleMember",
    "EnsemblePolicy",
    "load_ensemble_members",
    "member_seeds",
    "save_ensemble",
]

ENSEMBLE_FILE = "ensemble.json"
"""The file naming an ensemble's members inside its folder."""

ENSEMBLE_FORMAT = "pulsebms-ensemble-v1"
"""The ``format`` entry of :data:`ENSEMBLE_FILE`."""

MEMBER_SEED_STRIDE = 1000
"""Member ``k`` of training seed ``s`` is trained with seed ``s + MEMBER_SEED_STRIDE * k``."""


def member_seeds(seed: int, size: int) -> list[int]:
    """The training seeds of the ``size`` members of the ensemble for training seed ``seed``.

    Args:
        seed: The ensemble's training seed (>= 0).
        size: Number of members (>= 1).

    Returns:
        ``[seed, seed + 1000, ..., seed + 1000 (size - 1)]``.

    Raises:
        ValueError: If ``size`` < 1 or ``seed`` < 0.

    Example:
        >>> member_seeds(0, 1)
        [0]
    """
    if size < 1:
        raise ValueError(f"an ensemble needs at least one member, got size {size}")
    if seed < 0:
        raise ValueError(f"training seeds are >= 0, got {seed}")
    return [seed + MEMBER_SEED_STRIDE * k for k in range(size)]


class EnsemblePolicy:
    """Average of the deterministic actions of ``members`` (a :class:`Policy`).

    Args:
        members: The member policies (at least one), each acting on the raw observation and
            returning actions of the same shape.

    Raises:
        ValueError: If ``members`` is empty.
    """

    def __init__(self, members: Sequence[Policy]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members: tuple[Policy, ...] = tuple(members)

    def __len__(self) -> int:
        return len(self.members)

    def act(self, observation: ObsArray) -> ActArray:
        """The mean of the members' actions (float32).

        Raises:
            ValueError: If the members' actions differ in shape.
        """
        actions = [np.asarray(m.act(observation), dtype=np.float32) for m in self.members]
        shapes = {a.shape for a in actions}
        if len(shapes) != 1:
            raise ValueError(f"ensemble members return actions of different shapes {shapes}")
        mean = np.mean(np.stack(actions), axis=0, dtype=np.float64)
        return np.asarray(mean, dtype=np.float32)

    def reset(self) -> None:
        """Reset every member that has state."""
        for member in self.members:
            reset_policy(member)

    @classmethod
    def load(cls, path: str | Path) -> EnsemblePolicy:
        """Load an ensemble written by :func:`save_ensemble` (SB3 members).

        Args:
            path: The ensemble's folder, or its :data:`ENSEMBLE_FILE`.

        Returns:
            The deterministic ensemble policy.
        """
        members = load_ensemble_members(path)
        return cls([SB3Policy.load(m.model, m.vec_normalize) for m in members])


@dataclass(frozen=True)
class EnsembleMember:
    """One member of a saved ensemble.

    Attributes:
        model: Its SB3 ``.zip``.
        vec_normalize: Its ``VecNormalize`` pickle, or ``None`` (raw observations).
        seed: The seed it was trained with (``None``: not recorded).
    """

    model: Path
    vec_normalize: Path | None
    seed: int | None = None


def save_ensemble(
    out_dir: str | Path,
    members: Sequence[EnsembleMember],
    *,
    info: dict[str, Any] | None = None,
) -> Path:
    """Copy the members' files into ``out_dir`` and write :data:`ENSEMBLE_FILE`.

    The folder is self-contained (``member<k>.zip``, ``member<k>_vecnormalize.pkl``), so it
    can be moved, hashed and exported as one checkpoint.

    Args:
        out_dir: The ensemble's folder (created).
        members: The members, in order.
        info: More entries to record (e.g. the recipe's label); JSON-serialisable.

    Returns:
        The path of :data:`ENSEMBLE_FILE`.

    Raises:
        ValueError: If ``members`` is empty.
        FileNotFoundError: If a member's file is missing.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for k, member in enumerate(members):
        if not member.model.is_file():
            raise FileNotFoundError(f"ensemble member {k}: no model at {member.model}")
        model_name = f"member{k}.zip"
        shutil.copyfile(member.model, out / model_name)
        norm_name: str | None = None
        if member.vec_normalize is not None:
            if not member.vec_normalize.is_file():
                raise FileNotFoundError(
                    f"ensemble member {k}: no VecNormalize pickle at {member.vec_normalize}"
                )
            norm_name = f"member{k}_vecnormalize.pkl"
            shutil.copyfile(member.vec_normalize, out / norm_name)
        entries.append({"model": model_name, "vecnormalize": norm_name, "seed": member.seed})
    path = out / ENSEMBLE_FILE
    doc = {"format": ENSEMBLE_FORMAT, "members": entries, **(info or {})}
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path


def load_ensemble_members(path: str | Path) -> list[EnsembleMember]:
    """The members listed in an ensemble's :data:`ENSEMBLE_FILE` (paths resolved).

    Args:
        path: The ensemble's folder, or its :data:`ENSEMBLE_FILE`.

    Returns:
        The members, in order.

    Raises:
        FileNotFoundError: If the file or a member's file is missing.
        ValueError: If the file is not an ensemble of this format or lists no member.
    """
    file = Path(path)
    if file.is_dir():
        file = file / ENSEMBLE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no ensemble at {file}")
    try:
        doc = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file} is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != ENSEMBLE_FORMAT:
        raise ValueError(f"{file} is not a {ENSEMBLE_FORMAT} file")
    entries = doc.get("members")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{file} lists no ensemble member")
    out: list[EnsembleMember] = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise ValueError(f"{file}: member {k} must be a map with a 'model' file name")
        model = file.parent / entry["model"]
        norm = entry.get("vecnormalize")
        norm_path = None if norm is None else file.parent / str(norm)
        for needed in (model, norm_path):
            if needed is not None and not needed.is_file():
                raise FileNotFoundError(f"{file}: member {k}'s file {needed} is missing")
        seed = entry.get("seed")
        out.append(EnsembleMember(model, norm_path, None if seed is None else int(seed)))
    return out
