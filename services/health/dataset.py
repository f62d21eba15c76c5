"""A fleet history as learning data: per-pack features and labels, and the pack split.

Every evaluation holds out whole **packs** (:func:`split_packs`): rows of one pack are
strongly correlated, so a row-wise split would grade the models on packs they have seen.

Example:
    >>> train, test = split_packs(["LFP", "NMC", "LFP", "NMC"], test_fraction=0.5, seed=0)
    >>> sorted([*train, *test]), len(test)
    ([0, 1, 2, 3], 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pulsebms.core.types import FloatArray, IntArray
from pulsebms.services.health.features import pack_features
from pulsebms.services.health.fleet import FleetHistory

__all__ = ["HealthDataset", "split_packs"]


def split_packs(
    chemistries: Sequence[str], *, test_fraction: float = 0.25, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split pack indices into train and test, stratified by chemistry, seeded.

    Each chemistry's packs are shuffled and its first ``round(test_fraction × count)`` (at
    least one when the chemistry has two or more packs) go to the test set.

    Args:
        chemistries: Chemistry per pack.
        test_fraction: Share of packs held out, in (0, 1).
        seed: Seed of the shuffle.

    Returns:
        Sorted train and test pack indices.

    Raises:
        ValueError: On a fraction outside (0, 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train: list[int] = []
    test: list[int] = []
    for chem in sorted(set(chemistries)):
        members = [k for k, c in enumerate(chemistries) if c == chem]
        order = [members[j] for j in rng.permutation(len(members))]
        n_test = round(test_fraction * len(members))
        n_test = max(n_test, 1) if len(members) >= 2 else 0
        test.extend(order[:n_test])
        train.extend(order[n_test:])
    return sorted(train), sorted(test)


@dataclass(frozen=True)
class HealthDataset:
    """Features and true SoH per pack and cycle.

    Attributes:
        pack_ids: Pack names.
        chemistries: Chemistry per pack.
        features: Feature matrix per pack, ``(n_cycles, n_features)``
            (:data:`~pulsebms.services.health.features.FEATURE_NAMES`).
        soh: True SoH per pack and cycle.
        window: Rolling window the features were computed with [cycles].
    """

    pack_ids: tuple[str, ...]
    chemistries: tuple[str, ...]
    features: tuple[FloatArray, ...]
    soh: tuple[FloatArray, ...]
    window: int = 5

    @classmethod
    def from_history(cls, history: FleetHistory, *, window: int = 5) -> HealthDataset:
        """Compute every pack's features from a simulated history."""
        feats = tuple(
            pack_features(
                table,
                nominal_capacity_ah=pack.nominal_capacity_ah,
                chemistry=pack.chemistry,
                window=window,
            )
            for table, pack in zip(history.cycles, history.packs, strict=True)
        )
        return cls(
            pack_ids=history.pack_ids,
            chemistries=tuple(p.chemistry for p in history.packs),
            features=feats,
            soh=history.soh,
            window=window,
        )

    def stack(self, packs: Sequence[int]) -> tuple[FloatArray, FloatArray, IntArray]:
        """Rows of the given packs: features ``X``, SoH ``y`` and the pack index per row."""
        if not packs:
            n_feat = self.features[0].shape[1] if self.features else 0
            return np.zeros((0, n_feat)), np.zeros(0), np.zeros(0, dtype=np.int64)
        x = np.concatenate([self.features[k] for k in packs])
        y = np.concatenate([self.soh[k] for k in packs])
        groups = np.concatenate([np.full(self.soh[k].size, k, dtype=np.int64) for k in packs])
        return x, y, groups
