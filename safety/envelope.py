"""Current envelope: the cell voltage limit solved once per (SoC, temperature) cell (numpy only).

Over one control step of ``dt_s``, the one-step model of :mod:`pulsebms.safety.cell_model`
for a cell at state of health ``h`` (capacity ``h·Q``, resistance ``R/h``, as the twin
scales a faded cell) carrying the cell current ``i`` (+ = discharge) is::

    SoC_end = SoC − k·x,    V_end = OCV(SoC − k·x) − R(SoC, T)·x,
    x = i / h,              k = dt_s / (3600·Q)

so the voltage limit bounds ``x``, the **per-SoH cell current**, whatever ``h`` is.
:class:`CurrentEnvelope` tabulates, per pack group (chemistry, cell capacity, voltage
window, C-rate cap) and per cell of a uniform grid in SoC and temperature, the largest
``x`` on each side that keeps **every state of the grid cell** inside the window:

* discharge: ``OCV(s_lo − k·x) − R̄_d·x ≥ V_min``, with ``s_lo`` the grid cell's lowest
  SoC and ``R̄_d`` the largest discharge resistance on it;
* charge: ``OCV(s_hi + k·x) + R̄_c·x ≤ V_max``, with ``s_hi`` the highest SoC;

each capped by the C-rate (``x ≤ x_cap``). Both left sides are monotone in ``x`` (OCV
rises with SoC, ``R̄ > 0``), so bisection brackets the root; the admissible end of the
bracket is kept. The resistance is bilinear on each grid cell (the grid is aligned with
the tables'), so its largest value on a cell is at a corner. This is the exact root of
the voltage constraint up to the grid's resolution, always on the safe side, and it
replaces per-decision root finding by one table look-up (:class:`pulsebms.safety.Shield`
reads all packs' rows in one gather).

Each table row also holds what the shield needs to turn the currents into power
(columns, see :data:`COLUMNS`): the largest discharge resistance (for the voltage drop),
the largest of both directions (for a previous charge current), the lowest OCV of the
grid cell, and the lowest OCV a discharge step at ``x_discharge`` can reach.

The OCV is evaluated beyond ``[0, 1]`` with the model's clamp; the shield's SoC bound
keeps every step inside the pack's SoC window, where the clamp never acts.

Example:
    >>> from pulsebms.safety.cell_model import CellModel
    >>> env = CurrentEnvelope(CellModel.load(), [EnvelopeGroup("NMC", 5.15, 2.505, 4.195, 5.0)],
    ...                       dt_s=300.0, duration_s=1000.0, temperature_range_c=(-20.0, 60.0))
    >>> row = env.lookup(0, soc=0.5, temperature_c=25.0)
    >>> bool(0.0 < row[X_DISCHARGE] <= 5.0)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pulsebms.core.types import FloatArray
from pulsebms.safety.cell_model import CellModel

__all__ = [
    "COLUMNS",
    "OCV_CHARGE",
    "OCV_DISCHARGE",
    "R_DISCHARGE",
    "R_MAX",
    "R_NONE",
    "X_CHARGE",
    "X_DISCHARGE",
    "CurrentEnvelope",
    "EnvelopeGroup",
]


COLUMNS: tuple[str, ...] = (
    "x_charge",
    "x_discharge",
    "r_none",
    "r_discharge",
    "ocv_charge",
    "ocv_discharge",
    "r_max",
)
"""Columns of :attr:`CurrentEnvelope.table` (one constant per column below)."""
X_CHARGE, X_DISCHARGE, R_NONE, R_DISCHARGE, OCV_CHARGE, OCV_DISCHARGE, R_MAX = range(7)
# X_*: largest per-SoH cell current magnitude [A] on each side (voltage limit and C-rate).
# R_NONE: 0 (no drop on the charge side), R_DISCHARGE: largest discharge resistance [Ω],
# R_MAX: largest resistance of both directions [Ω] (one cell at SoH 1, over the grid cell).
# OCV_CHARGE: lowest OCV of the grid cell [V]; OCV_DISCHARGE: lowest OCV a discharge step
# at x_discharge reaches [V].

_BISECTIONS = 44
"""Halvings of the bracket ``[0, x_cap]``: ``x_cap·2⁻⁴⁴ ≈ 6e-14·x_cap``, far below any tolerance."""


@dataclass(frozen=True)
class EnvelopeGroup:
    """Packs that share one table: same cell and the same per-cell limits.

    Attributes:
        chemistry: Chemistry name (a key of the cell model).
        cell_capacity_ah: Nominal cell capacity at SoH 1 [A.h] (> 0).
        voltage_min_v: Lowest admissible end-of-step cell voltage [V] (margins included).
        voltage_max_v: Highest admissible end-of-step cell voltage [V].
        current_cap_a: Cap on the per-SoH cell current [A] (the C-rate limit:
            ``c_rate_max · cell_capacity_ah``, margins included; > 0).
    """

    chemistry: str
    cell_capacity_ah: float
    voltage_min_v: float
    voltage_max_v: float
    current_cap_a: float


def _aligned(points: FloatArray, origin: float, step: float) -> bool:
    """Whether every point lies on the grid ``origin + step·k``."""
    k = (points - origin) / step
    return bool(np.all(np.abs(k - np.round(k)) <= 1e-9 * np.maximum(1.0, np.abs(k))))


def _bisect(
    margin: Callable[[FloatArray], FloatArray], cap: float, shape: tuple[int, ...]
) -> FloatArray:
    """Largest ``x`` in ``[0, cap]`` with ``margin(x) >= 0``, for ``margin`` decreasing in ``x``.

    Returns:
        ``x`` per element (0 where even ``x = 0`` fails; the bracket's admissible end).
    """
    lo = np.zeros(shape)
    hi = np.full(shape, cap)
    at_cap = margin(hi) >= 0.0
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        ok = margin(mid) >= 0.0
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    return np.where(at_cap, cap, lo)


@lru_cache(maxsize=32)
def _group_table(
    model: CellModel,
    group: EnvelopeGroup,
    dt_s: float,
    duration_s: float,
    soc_cells: int,
    temperature_origin_c: float,
    temperature_step_c: float,
    temperature_cells: int,
) -> FloatArray:
    """One group's table, shape ``(soc_cells, temperature_cells, len(COLUMNS))``.

    Cached: shields of the same fleet (one per environment, per test) share the tables.
    """
    chem = group.chemistry
    corners_s = np.arange(soc_cells + 1) / (soc_cells - 1)  # a / cells_per_soc, rounded once
    soc_lo = corners_s[:-1, None]  # (n_s, 1): lower edges
    soc_hi = corners_s[1:, None]
    corners_t = temperature_origin_c + np.arange(temperature_cells + 1) * temperature_step_c
    grid_s, grid_t = np.meshgrid(corners_s, corners_t, indexing="ij")

    def cell_max(direction: str) -> FloatArray:
        r = model.resistance_ohm(chem, grid_s, grid_t, duration_s, direction)
        return np.asarray(
            np.maximum(np.maximum(r[:-1, :-1], r[1:, :-1]), np.maximum(r[:-1, 1:], r[1:, 1:])),
            dtype=np.float64,
        )

    r_dis = cell_max("discharge")
    r_chg = cell_max("charge")
    shape = r_dis.shape
    k = dt_s / 3600.0 / group.cell_capacity_ah  # SoC per (A of per-SoH cell current)
    cap = group.current_cap_a

    def discharge_margin(x: FloatArray) -> FloatArray:
        return model.ocv_v(chem, soc_lo - k * x) - r_dis * x - group.voltage_min_v

    def charge_margin(x: FloatArray) -> FloatArray:
        return group.voltage_max_v - model.ocv_v(chem, soc_hi + k * x) - r_chg * x

    x_dis = _bisect(discharge_margin, cap, shape)
    x_chg = _bisect(charge_margin, cap, shape)
    table = np.empty((*shape, len(COLUMNS)))
    table[..., X_CHARGE] = x_chg
    table[..., X_DISCHARGE] = x_dis
    table[..., R_NONE] = 0.0
    table[..., R_DISCHARGE] = r_dis
    table[..., OCV_CHARGE] = model.ocv_v(chem, np.broadcast_to(soc_lo, shape))
    table[..., OCV_DISCHARGE] = model.ocv_v(chem, soc_lo - k * x_dis)
    table[..., R_MAX] = np.maximum(r_dis, r_chg)
    table.setflags(write=False)
    return table


@lru_cache(maxsize=8)
def _fleet_table(
    model: CellModel,
    groups: tuple[EnvelopeGroup, ...],
    dt_s: float,
    duration_s: float,
    soc_cells: int,
    temperature_origin_c: float,
    temperature_step_c: float,
    temperature_cells: int,
) -> FloatArray:
    """All groups' tables in one read-only ``(rows, len(COLUMNS))`` array.

    Cached too, so that shields of the same fleet hold one copy, not one each.
    """
    grid = (soc_cells, temperature_origin_c, temperature_step_c, temperature_cells)
    blocks = [_group_table(model, g, dt_s, duration_s, *grid) for g in groups]
    table = np.concatenate(blocks).reshape(-1, len(COLUMNS))
    table.setflags(write=False)
    return table


class CurrentEnvelope:
    """Per-SoH cell current limits and conversion values on a (SoC, temperature) grid.

    Args:
        model: The cell model (OCV and resistance tables).
        groups: One entry per table (see :class:`EnvelopeGroup`).
        dt_s: Control interval [s] (> 0).
        duration_s: Pulse duration the resistances are taken at [s].
        temperature_range_c: ``(lowest, highest)`` temperature the look-ups must cover
            [°C]; the grid is widened to whole steps around it.
        soc_step: SoC step of the grid; ``1 / soc_step`` must be a whole number and the
            model's resistance SoC grid must lie on the grid.
        temperature_step_c: Temperature step [°C]; the model's temperature grid must lie
            on the grid.

    Raises:
        ValueError: On a non-positive ``dt_s`` or step, an empty temperature range, a
            group with non-positive capacity or cap or an empty voltage window, an
            unknown chemistry, or a step that does not divide the model's grids.
    """

    def __init__(
        self,
        model: CellModel,
        groups: Sequence[EnvelopeGroup],
        *,
        dt_s: float,
        duration_s: float,
        temperature_range_c: tuple[float, float],
        soc_step: float = 0.002,
        temperature_step_c: float = 1.0,
    ) -> None:
        if not (math.isfinite(dt_s) and dt_s > 0):
            raise ValueError(f"dt_s must be finite and > 0, got {dt_s}")
        cells_per_soc = 1.0 / soc_step if soc_step > 0 else math.inf
        if not (math.isfinite(cells_per_soc) and abs(cells_per_soc - round(cells_per_soc)) < 1e-9):
            raise ValueError(f"1 / soc_step must be a whole number, got soc_step={soc_step}")
        if not (math.isfinite(temperature_step_c) and temperature_step_c > 0):
            raise ValueError(f"temperature_step_c must be finite and > 0, got {temperature_step_c}")
        t_low, t_high = (float(t) for t in temperature_range_c)
        if not (math.isfinite(t_low) and math.isfinite(t_high) and t_low <= t_high):
            raise ValueError(
                f"temperature_range_c must be finite and ordered, got {temperature_range_c}"
            )
        soc_grid = model.soc_grid
        coarse_s = soc_grid.start + soc_grid.step * np.arange(soc_grid.size, dtype=np.float64)
        t_grid = model.temperature_grid
        coarse_t = t_grid.start + t_grid.step * np.arange(t_grid.size, dtype=np.float64)
        origin = math.floor(t_low / temperature_step_c) * temperature_step_c
        if not _aligned(coarse_s, 0.0, soc_step):
            raise ValueError(f"soc_step={soc_step} must divide the resistance SoC grid {coarse_s}")
        if not _aligned(coarse_t, origin, temperature_step_c):
            raise ValueError(
                f"temperature_step_c={temperature_step_c} must divide the resistance "
                f"temperature grid {coarse_t} (from {origin})"
            )
        for g in groups:
            model.capacity_ah(g.chemistry)  # raises on an unknown chemistry
            if not (g.cell_capacity_ah > 0 and g.current_cap_a > 0):
                raise ValueError(f"{g}: cell_capacity_ah and current_cap_a must be > 0")
            if not g.voltage_min_v < g.voltage_max_v:
                raise ValueError(f"{g}: empty voltage window")
        self.groups = tuple(groups)
        self.dt_s = float(dt_s)
        self.duration_s = float(duration_s)
        self.soc_step = float(soc_step)
        # one cell beyond SoC 1 and one beyond the highest temperature: a state exactly on
        # the upper edge falls in it (its lower edge is the state itself)
        self.soc_cells = round(cells_per_soc) + 1
        self.temperature_origin_c = float(origin)
        self.temperature_step_c = float(temperature_step_c)
        self.temperature_cells = math.floor((t_high - origin) / temperature_step_c) + 2
        table = _fleet_table(
            model,
            self.groups,
            self.dt_s,
            self.duration_s,
            self.soc_cells,
            self.temperature_origin_c,
            self.temperature_step_c,
            self.temperature_cells,
        )
        self.table: FloatArray = table
        """All groups' rows, shape ``(groups·soc_cells·temperature_cells, len(COLUMNS))``;
        the row of group ``g`` at grid cell ``(a, b)`` is
        ``(g·soc_cells + a)·temperature_cells + b``."""

    @property
    def soc_scale(self) -> float:
        """Grid coordinate per unit SoC: SoC cell ``a = floor(soc·soc_scale)``."""
        return float(self.soc_cells - 1)

    def group_offset(self, group: int) -> float:
        """Added to the SoC coordinate to select group ``group``'s block of rows."""
        return float(group * self.soc_cells)

    @property
    def temperature_scale(self) -> float:
        """Grid coordinate per °C: ``b = floor(T·temperature_scale + temperature_offset)``."""
        return 1.0 / self.temperature_step_c

    @property
    def temperature_offset(self) -> float:
        """See :attr:`temperature_scale`."""
        return -self.temperature_origin_c / self.temperature_step_c

    def row_index(self, group: int, soc: float, temperature_c: float) -> int:
        """Row of :attr:`table` for one state (clamped to the grid).

        Uses the same floating-point operations as the shield's vectorised look-up, so
        both pick the same row on cell edges too.

        Args:
            group: Index into :attr:`groups`.
            soc: State of charge, fraction.
            temperature_c: Temperature [°C].

        Returns:
            The row index.
        """
        offset = self.group_offset(group)
        a = math.floor(soc * self.soc_scale + offset) - int(offset)
        a = min(max(a, 0), self.soc_cells - 1)
        b = math.floor(temperature_c * self.temperature_scale + self.temperature_offset)
        b = min(max(b, 0), self.temperature_cells - 1)
        return (group * self.soc_cells + a) * self.temperature_cells + b

    def lookup(self, group: int, soc: float, temperature_c: float) -> FloatArray:
        """The table row of one state (see :data:`COLUMNS`).

        Args:
            group: Index into :attr:`groups`.
            soc: State of charge, fraction.
            temperature_c: Temperature [°C].

        Returns:
            The row, shape ``(len(COLUMNS),)``.
        """
        return np.asarray(self.table[self.row_index(group, soc, temperature_c)])
