"""What the shield returns: :class:`ShieldStatus`, :class:`AdmissibleSet`, :class:`ShieldResult`.

Plain result types (numpy only), produced by :class:`pulsebms.safety.shield.Shield`.

Example:
    >>> status = ShieldStatus.PROJECTED | ShieldStatus.SHORTFALL
    >>> status.name, ShieldStatus.SHORTFALL in status, ShieldStatus(0).name
    ('PROJECTED|SHORTFALL', True, 'OK')
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from pulsebms.core.types import BoolArray, FloatArray

__all__ = [
    "INTERVENTION_TOLERANCE",
    "AdmissibleSet",
    "ShieldResult",
    "ShieldStatus",
    "count_interventions",
    "intervention_mask",
]

INTERVENTION_TOLERANCE = 1e-6
"""A pack-step is an intervention when its set-point changed by more than this
(normalised by the pack's rated power: 1e-6 of rated power). Above the float32 cast of
the applied action (≤ 6e-8) and the projection's round-off, far below any change that
matters to the plant."""


def intervention_mask(
    requested: ArrayLike, applied: ArrayLike, tolerance: float = INTERVENTION_TOLERANCE
) -> BoolArray:
    """Per pack, whether the shield intervened: ``|applied − requested| > tolerance``.

    The one definition of an intervention (the shield wrapper's ``info`` counts and the
    KPIs use it, whatever the policy): a pack-step whose normalised set-point changed by
    more than ``tolerance``. A non-finite request always counts.

    Args:
        requested: The policy's normalised set-points.
        applied: The set-points the plant got (same shape).
        tolerance: Normalised threshold (≥ 0).

    Returns:
        Boolean mask, the shape of the inputs.

    Example:
        >>> intervention_mask([0.5, 0.5, float("nan")], [0.5, 0.5 + 1e-9, 0.0]).tolist()
        [False, False, True]
    """
    diff = np.abs(np.asarray(applied, dtype=np.float64) - np.asarray(requested, dtype=np.float64))
    mask: BoolArray = ~(diff <= tolerance)
    return mask


def count_interventions(
    requested: ArrayLike, applied: ArrayLike, tolerance: float = INTERVENTION_TOLERANCE
) -> int:
    """Number of pack-steps that are interventions (:func:`intervention_mask`).

    Args:
        requested: The policy's normalised set-points.
        applied: The set-points the plant got.
        tolerance: Normalised threshold.

    Returns:
        The count.
    """
    return int(np.count_nonzero(intervention_mask(requested, applied, tolerance)))


class ShieldStatus(enum.IntFlag):
    """What the shield did, as flags (``OK`` is none of them).

    ``status.name`` reads e.g. ``"PROJECTED|SHORTFALL"``; test with ``in`` or ``&``.
    """

    OK = 0
    """The requested action was admissible and returned unchanged."""
    PROJECTED = 1
    """At least one pack's set-point was changed."""
    SHORTFALL = 2
    """The target fleet power is outside the admissible total (see ``shortfall_w``)."""
    FALLBACK = 4
    """At least one pack is in the controlled-shutdown fallback (zero current)."""
    INVALID_ACTION = 8
    """The request had NaN, infinite or out-of-range entries, or a non-finite target."""


@dataclass(frozen=True)
class AdmissibleSet:
    """Admissible normalised set-points per pack, derived from one state.

    Attributes:
        lower: Lowest admissible action per pack (≤ 0).
        upper: Highest admissible action per pack (≥ 0).
        fallback: Packs in the controlled-shutdown fallback (``lower = upper = 0``).
        lower_reason: Name of the limit that sets ``lower`` per pack.
        upper_reason: Name of the limit that sets ``upper`` per pack.
    """

    lower: FloatArray
    upper: FloatArray
    fallback: BoolArray
    lower_reason: tuple[str, ...]
    upper_reason: tuple[str, ...]


@dataclass(slots=True, eq=False)
class ShieldResult:
    """Outcome of :meth:`Shield.project` (read-only by convention).

    A slotted, non-frozen dataclass: a frozen one costs microseconds per decision to
    build. Treat it as read-only; the shield keeps no reference to it.

    Attributes:
        action: The admissible action, shape ``(n_packs,)``, in ``[lower, upper]``.
        intervened: Per pack, True where ``action`` differs from the request at all
            (a NaN request always counts as changed). Interventions are *counted* with
            a tolerance (:func:`intervention_mask`), which ignores round-off moves.
        status: :class:`ShieldStatus` flags.
        shortfall_w: Target minus planned fleet power [W] (0 when the target is met;
            positive: less discharge than asked).
        lower: Admissible lower bound per pack (normalised).
        upper: Admissible upper bound per pack (normalised).
        target_power_w: The fleet power the projection aimed at [W].
        fallback: Packs in the controlled-shutdown fallback.
    """

    action: FloatArray
    intervened: BoolArray
    status: ShieldStatus
    shortfall_w: float
    lower: FloatArray
    upper: FloatArray
    target_power_w: float
    fallback: BoolArray
    explain: Callable[[], tuple[tuple[str, ...], ...]] = field(repr=False)
    """Builds :attr:`reasons` (called once, on first access)."""
    _reasons: tuple[tuple[str, ...], ...] | None = field(default=None, init=False, repr=False)

    @property
    def reasons(self) -> tuple[tuple[str, ...], ...]:
        """Per pack, the names of the limits (or request problems) behind the change.

        ``()`` for packs left alone. Limit names are :class:`PackLimits` field names
        (``"soc_min"``, ``"cell_voltage_max_v"``, …; ``"temperature_max_c"`` for derating),
        ``"action_space"`` for the ``[-1, 1]`` bound, ``"redistributed"`` for a pack moved
        only to keep the fleet total, ``"action_not_finite"``/``"action_out_of_range"`` for
        bad requests, and ``"fallback:<why>"``. Computed on first access, off the decision
        path.
        """
        if self._reasons is None:
            self._reasons = self.explain()
        return self._reasons
