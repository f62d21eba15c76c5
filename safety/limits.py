"""Safe operating limits per pack and violation accounting (numpy only).

The cell voltage window of each chemistry is taken from its PyBaMM parameter set
(``"Lower voltage cut-off [V]"`` / ``"Upper voltage cut-off [V]"``) and stored here as
data, so that the edge runtime knows it without importing PyBaMM; a test that imports
PyBaMM checks that the two agree. The other defaults are pack-level and chemistry
independent (see ``DESIGN.md``, "Limits").

Sign convention: positive current means **discharge**, negative means charge.

Violation cost (the ``info["cost"]`` of the CMDP methods) is the sum, over every
violated limit of every pack, of the excess beyond the bound divided by the width of
that limit's operating window (:func:`violation_cost`). A non-finite measurement counts
as one unit of cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from pulsebms.core.types import FloatArray
from pulsebms.safety.state import FleetState, PackRatings

__all__ = [
    "CELL_VOLTAGE_WINDOWS_V",
    "LimitArrays",
    "PackLimits",
    "Violation",
    "check_violations",
    "default_limits",
    "fleet_limits",
    "stack_limits",
    "violation_cost",
]


CELL_VOLTAGE_WINDOWS_V: dict[str, tuple[float, float]] = {
    # chemistry: (lower, upper) voltage cut-off [V] of its PyBaMM parameter set
    "LFP": (2.0, 3.6),  # Prada2013
    "NMC": (2.5, 4.2),  # Chen2020
    "LCO": (3.105, 4.1),  # Marquis2019
}
"""Cell voltage window per chemistry, from the PyBaMM parameter set's voltage cut-offs."""


@dataclass(frozen=True)
class PackLimits:
    """Safe operating limits of one pack.

    Attributes:
        cell_voltage_min_v: Lowest admissible terminal voltage of one cell [V].
        cell_voltage_max_v: Highest admissible terminal voltage of one cell [V].
        current_min_a: Most negative pack current, i.e. the largest charge current [A]
            (must be ≤ 0: zero current is the safe fallback and must be admissible).
        current_max_a: Largest pack discharge current [A] (must be ≥ 0).
        temperature_min_c: Lowest admissible pack temperature [°C].
        temperature_max_c: Highest admissible pack temperature [°C].
        soc_min: Lowest admissible state of charge, fraction.
        soc_max: Highest admissible state of charge, fraction.
        c_rate_max: Largest |current| / present capacity [1/h] (present capacity is the
            nominal pack capacity times SoH).

    Raises:
        ValueError: From construction, naming the field, when a value is not finite or a
            window is empty or out of range.

    Example:
        >>> PackLimits(cell_voltage_min_v=2.0, cell_voltage_max_v=3.6).current_max_a
        100.0
    """

    cell_voltage_min_v: float = 2.5
    cell_voltage_max_v: float = 4.2
    current_min_a: float = -100.0
    current_max_a: float = 100.0
    temperature_min_c: float = -20.0
    temperature_max_c: float = 60.0
    soc_min: float = 0.05
    soc_max: float = 0.95
    c_rate_max: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"PackLimits.{f.name} must be a real number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"PackLimits.{f.name} must be finite, got {value!r}")
            object.__setattr__(self, f.name, float(value))
        pairs = (
            ("cell_voltage_min_v", "cell_voltage_max_v"),
            ("current_min_a", "current_max_a"),
            ("temperature_min_c", "temperature_max_c"),
            ("soc_min", "soc_max"),
        )
        for low, high in pairs:
            if not getattr(self, low) < getattr(self, high):
                raise ValueError(
                    f"PackLimits.{low} must be < {high}, got {getattr(self, low)} >= "
                    f"{getattr(self, high)}"
                )
        if not self.cell_voltage_min_v > 0.0:
            raise ValueError(
                f"PackLimits.cell_voltage_min_v must be > 0, got {self.cell_voltage_min_v}"
            )
        if self.current_min_a > 0.0:
            raise ValueError(
                f"PackLimits.current_min_a must be <= 0 (zero current must stay admissible), "
                f"got {self.current_min_a}"
            )
        if self.current_max_a < 0.0:
            raise ValueError(
                f"PackLimits.current_max_a must be >= 0 (zero current must stay admissible), "
                f"got {self.current_max_a}"
            )
        if not self.soc_min >= 0.0:
            raise ValueError(f"PackLimits.soc_min must be >= 0, got {self.soc_min}")
        if not self.soc_max <= 1.0:
            raise ValueError(f"PackLimits.soc_max must be <= 1, got {self.soc_max}")
        if not self.c_rate_max > 0.0:
            raise ValueError(f"PackLimits.c_rate_max must be > 0, got {self.c_rate_max}")


def default_limits(chemistry: str, **overrides: float) -> PackLimits:
    """Return the default limits of a chemistry, with optional overrides.

    Args:
        chemistry: Chemistry name (``"LFP"``, ``"NMC"``, ``"LCO"``; case-insensitive).
        **overrides: Any :class:`PackLimits` field, e.g. ``soc_max=0.9``.

    Returns:
        The limits: the chemistry's cell voltage window, the pack-level defaults
        elsewhere, then the overrides.

    Raises:
        ValueError: If the chemistry is unknown (the message lists the known ones), an
            override names no field, or the result is not a valid :class:`PackLimits`.

    Example:
        >>> default_limits("lfp").cell_voltage_max_v
        3.6
        >>> default_limits("NMC", soc_max=0.9).soc_max
        0.9
    """
    key = chemistry.strip().upper()
    if key not in CELL_VOLTAGE_WINDOWS_V:
        known = ", ".join(sorted(CELL_VOLTAGE_WINDOWS_V))
        raise ValueError(f"unknown chemistry {chemistry!r}; known chemistries: {known}")
    names = {f.name for f in fields(PackLimits)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown PackLimits field(s) {unknown}; fields: {sorted(names)}")
    v_min, v_max = CELL_VOLTAGE_WINDOWS_V[key]
    base = PackLimits(cell_voltage_min_v=v_min, cell_voltage_max_v=v_max)
    return replace(base, **overrides) if overrides else base


def fleet_limits(ratings: PackRatings, **overrides: float) -> tuple[PackLimits, ...]:
    """Default limits for every pack of a fleet, by chemistry, with common overrides.

    Args:
        ratings: The fleet's ratings (their ``chemistry`` picks the voltage window).
        **overrides: :class:`PackLimits` fields applied to every pack.

    Returns:
        One :class:`PackLimits` per pack, in the fleet's order.

    Example:
        >>> import numpy as np
        >>> r = PackRatings(("LFP", "NMC"), np.array([1, 1]), np.array([1, 1]),
        ...                 np.array([2.3, 5.0]), np.array([10.0, 20.0]))
        >>> [lim.cell_voltage_max_v for lim in fleet_limits(r)]
        [3.6, 4.2]
    """
    return tuple(default_limits(chem, **overrides) for chem in ratings.chemistry)


@dataclass(frozen=True)
class LimitArrays:
    """Limits of a fleet as arrays of shape ``(n_packs,)``, one per :class:`PackLimits` field.

    Built by :func:`stack_limits`; the shield and :func:`check_violations` work on these.
    """

    cell_voltage_min_v: FloatArray
    cell_voltage_max_v: FloatArray
    current_min_a: FloatArray
    current_max_a: FloatArray
    temperature_min_c: FloatArray
    temperature_max_c: FloatArray
    soc_min: FloatArray
    soc_max: FloatArray
    c_rate_max: FloatArray


def stack_limits(limits: Sequence[PackLimits] | PackLimits, n_packs: int) -> LimitArrays:
    """Stack per-pack limits into arrays.

    Args:
        limits: One :class:`PackLimits` per pack, or a single one (or a sequence of one)
            applied to every pack.
        n_packs: Number of packs.

    Returns:
        The limits as :class:`LimitArrays`.

    Raises:
        ValueError: If the number of limits is neither 1 nor ``n_packs``.
    """
    seq: Sequence[PackLimits] = (limits,) if isinstance(limits, PackLimits) else limits
    if len(seq) == 1:
        seq = tuple(seq) * n_packs
    if len(seq) != n_packs:
        raise ValueError(f"expected 1 or {n_packs} PackLimits, got {len(seq)}")
    return LimitArrays(
        **{
            f.name: np.array([getattr(lim, f.name) for lim in seq], dtype=np.float64)
            for f in fields(PackLimits)
        }
    )


@dataclass(frozen=True)
class Violation:
    """One limit of one pack exceeded.

    Attributes:
        pack: Index of the pack in the fleet.
        limit: Name of the :class:`PackLimits` field exceeded (``"cell_voltage_max_v"``,
            ``"soc_min"``, ``"c_rate_max"``, …), or ``"<quantity>_finite"`` when the
            measurement itself is NaN or infinite.
        value: The measured value (C-rate for ``"c_rate_max"``).
        bound: The limit it crossed.
        scale: Width of the limit's operating window, the unit of :attr:`magnitude`.
    """

    pack: int
    limit: str
    value: float
    bound: float
    scale: float = 1.0

    @property
    def magnitude(self) -> float:
        """Excess beyond the bound in units of the window width (1.0 if not finite)."""
        excess = abs(self.value - self.bound) / self.scale
        return excess if math.isfinite(excess) else 1.0


_QUANTITIES: tuple[tuple[str, str, str], ...] = (
    # (FleetState field, lower limit, upper limit)
    ("cell_voltage_v", "cell_voltage_min_v", "cell_voltage_max_v"),
    ("current_a", "current_min_a", "current_max_a"),
    ("temperature_c", "temperature_min_c", "temperature_max_c"),
    ("soc", "soc_min", "soc_max"),
)


def check_violations(
    state: FleetState,
    ratings: PackRatings,
    limits: Sequence[PackLimits] | PackLimits,
) -> list[Violation]:
    """List every limit the measured state exceeds.

    Checked per pack: cell voltage, current, temperature and SoC against their windows,
    and |current| / (pack capacity × SoH) against ``c_rate_max``. A value exactly on its
    bound is not a violation. A non-finite measurement is reported as a violation of
    ``"<quantity>_finite"`` (``value`` NaN or inf, ``bound`` 0). Packs flagged invalid
    (``state.valid`` False) are checked like the others: their telemetry is all there is.

    Args:
        state: The fleet state (from the twin or from telemetry).
        ratings: The fleet ratings (capacity for the C-rate).
        limits: One :class:`PackLimits` per pack, or one for all.

    Returns:
        The violations, ordered by pack then by limit.

    Example:
        >>> import numpy as np
        >>> r = PackRatings(("NMC",), np.array([1]), np.array([1]), np.array([5.0]),
        ...                 np.array([20.0]))
        >>> s = FleetState(soc=np.array([0.99]), soh=np.array([1.0]),
        ...                temperature_c=np.array([25.0]), cell_voltage_v=np.array([4.1]),
        ...                current_a=np.array([0.0]))
        >>> [v.limit for v in check_violations(s, r, default_limits("NMC"))]
        ['soc_max']
    """
    n = state.n_packs
    lim = stack_limits(limits, n)
    capacity_ah = np.asarray(ratings.capacity_ah, dtype=np.float64) * np.asarray(
        state.soh, dtype=np.float64
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        c_rate = np.abs(np.asarray(state.current_a, dtype=np.float64)) / capacity_ah
    out: list[Violation] = []
    for i in range(n):
        for quantity, low, high in _QUANTITIES:
            value = float(getattr(state, quantity)[i])
            lo = float(getattr(lim, low)[i])
            hi = float(getattr(lim, high)[i])
            if not math.isfinite(value):
                out.append(Violation(i, f"{quantity}_finite", value, 0.0, 1.0))
            elif value < lo:
                out.append(Violation(i, low, value, lo, hi - lo))
            elif value > hi:
                out.append(Violation(i, high, value, hi, hi - lo))
        soh = float(state.soh[i])
        if not math.isfinite(soh):
            out.append(Violation(i, "soh_finite", soh, 0.0, 1.0))
            continue
        rate = float(c_rate[i])
        bound = float(lim.c_rate_max[i])
        if math.isfinite(float(state.current_a[i])) and rate > bound:
            out.append(Violation(i, "c_rate_max", rate, bound, bound))
    return out


def violation_cost(violations: Sequence[Violation]) -> float:
    """Total normalised magnitude of a list of violations.

    Each violation contributes ``|value - bound| / scale``, where ``scale`` is the width
    of that limit's operating window (``max - min``; ``c_rate_max`` itself for the
    C-rate), so 0.1 means "10 % of the window beyond the bound"; a non-finite measurement
    contributes 1. The cost is 0 exactly when there is no violation.

    Args:
        violations: From :func:`check_violations`.

    Returns:
        The cost, ≥ 0 and finite.

    Example:
        >>> round(violation_cost([Violation(0, "soc_max", 0.99, 0.95, 0.9)]), 4)
        0.0444
    """
    return float(sum(v.magnitude for v in violations))
