"""An ensemble of SB3 policies as one :class:`~pulsebms.export.source.PolicySource`.

The ensemble folder (:func:`pulsebms.agents.ensemble.save_ensemble`: ``ensemble.json`` and
each member's ``.zip`` and ``VecNormalize`` pickle) becomes *one* ONNX graph: every
member's deployed function (its own normalisation, deterministic action, clipping; the
:class:`~pulsebms.export.sb3.DeployedPolicy` of a single SB3 export) runs on the same raw
observation and the graph outputs their mean, which is what
:class:`pulsebms.agents.ensemble.EnsemblePolicy` acts. The reference for the parity check
(:meth:`EnsembleSource.predict`) is the mean of the members' own SB3 ``predict``. A
deployer runs one model; the manifest's ``source.sha256`` covers every file of the folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from pulsebms.agents.ensemble import load_ensemble_members
from pulsebms.export.sb3 import SB3Source
from pulsebms.export.source import PolicySource

__all__ = ["AveragedPolicy", "EnsembleSource"]


class AveragedPolicy(torch.nn.Module):
    """The mean of several deployed policies' actions on the same observation.

    Args:
        members: Modules mapping ``[batch, obs]`` raw observations to ``[batch, act]``.
    """

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = torch.nn.ModuleList(members)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        """Mean action of the members for a ``[batch, obs]`` float32 observation."""
        actions = [member(observation) for member in self.members]
        return torch.stack(actions).mean(dim=0)


class EnsembleSource:
    """An ensemble folder of SB3 members, ready for export (build with :meth:`load`).

    Args:
        members: The members' sources (same observation and action spaces).
        checkpoint_path: The ensemble's folder.

    Raises:
        ValueError: If there is no member or the members' spaces differ.
    """

    kind = "ensemble"

    def __init__(self, members: list[SB3Source], checkpoint_path: Path) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        for k, member in enumerate(members[1:], start=1):
            for name in ("observation_low", "observation_high", "action_low", "action_high"):
                if not np.array_equal(getattr(member, name), getattr(first, name)):
                    raise ValueError(f"ensemble member {k}'s {name} differs from member 0's")
        self.members = members
        algorithms = sorted({m.algorithm for m in members})
        self.algorithm = f"ensemble{len(members)}x{'+'.join(algorithms)}"
        self.checkpoint_path = checkpoint_path
        self.normalization_path: Path | None = None  # each member's is inside the folder
        self.observation_low = first.observation_low
        self.observation_high = first.observation_high
        self.action_low = first.action_low
        self.action_high = first.action_high

    @classmethod
    def load(cls, checkpoint: str | Path) -> EnsembleSource:
        """Load the ensemble folder (or its ``ensemble.json``) and every member.

        Raises:
            FileNotFoundError: If the file or a member's file is missing.
            ValueError: If the file is not an ensemble or a member is no SB3 model.
        """
        path = Path(checkpoint)
        sources = [SB3Source.load(m.model, m.vec_normalize) for m in load_ensemble_members(path)]
        return cls(sources, path if path.is_dir() else path.parent)

    def torch_policy(self) -> torch.nn.Module:
        """The members' deployed functions, averaged, as one module (eval mode, CPU)."""
        return AveragedPolicy([m.torch_policy() for m in self.members]).eval()

    def predict(self, observations: NDArray[np.float32]) -> NDArray[np.float32]:
        """Reference: the mean of the members' ``predict`` (SB3's own API), float32.

        Args:
            observations: ``[batch, obs]`` raw observations.

        Returns:
            ``[batch, act]`` actions.
        """
        actions = np.stack([m.predict(observations) for m in self.members])
        return np.asarray(actions.mean(axis=0, dtype=np.float64), dtype=np.float32)

    def observation_stats(self) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        """Member 0's ``(mean, std)`` (parity samples around it; members' differ little)."""
        return self.members[0].observation_stats()


def _check_protocol(source: EnsembleSource) -> PolicySource:
    return source  # mypy checks that EnsembleSource satisfies PolicySource
