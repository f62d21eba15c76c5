"""The constraint shield: closest admissible power set-points, in closed form (numpy only).

An action is the per-pack power set-point normalised by the pack's rated power
(``ratings.rated_power_w``), + = discharge, in ``[-1, 1]``. :meth:`Shield.project` works in
two stages.

**1. Admissible interval per pack** (:meth:`Shield.admissible`). With ``Q`` the present
pack capacity (nominal × SoH) [A.h], ``k = dt_s / (3600·Q)`` the SoC change per ampere
over one step, ``p``/``s`` the parallel/series counts, and ``R`` the cell model's
effective resistance at the pack's SoC and temperature over a step (the discharge table
when discharging, the charge table when charging; divided by SoH, as the twin scales a
faded cell), the pack current ``I`` must satisfy

* ``current_min_a ≤ I ≤ current_max_a`` (``"current_min_a"``/``"current_max_a"``);
* ``|I| ≤ c_rate_max·Q`` (``"c_rate_max"``);
* ``soc_min ≤ SoC − k·I ≤ soc_max`` (``"soc_min"``/``"soc_max"``);
* ``V_min ≤ OCV(SoC − k·I) − R·I/p ≤ V_max`` (``"cell_voltage_min_v"``/``…max_v``). The
  OCV moves during the step, so this is solved in closed form on nested ranges: for each
  fraction ``φ`` of :data:`VOLTAGE_FRACTIONS`, within ``0 ≤ I ≤ φ·I₀`` (``I₀``: the bound
  from the constraints above) the OCV is at least ``OCV(SoC − k·φ·I₀)`` (OCV increases
  with SoC), which gives a linear bound; the largest of these valid bounds is kept.
  Likewise on the charge side. A pack inside its limits always admits ``I = 0``.

Each limit is applied with a small margin for the mismatch between this one-step model
and the plant (``voltage_margin_v``, ``soc_margin``, ``current_margin``).

The interval is then scaled by the **temperature derating**
``clip(min(T_max − T, T − T_min) / derating_band_c, 0, 1)`` (``"temperature_max_c"`` /
``"temperature_min_c"``), turned into power with a conservative voltage, and normalised,
and intersected with the action space ``[-1, 1]`` (``"action_space"``). The conversion
voltage is the lower of the model's (end-of-step voltage at the discharge bound; OCV at
the start when charging) and the measurement's: the plant turns a power set-point into
a current with its own source voltage, which is at least the measured cell voltage
(less the drop of a previous charge current), and a polarised pack draws more current
for the same power than its OCV suggests.

A pack whose state is invalid (``state.valid`` False, a non-finite or non-positive
quantity) or already outside its voltage, temperature or SoC window gets the **fallback**
interval ``[0, 0]``: zero current, i.e. a controlled shutdown (status ``FALLBACK``,
reason ``"fallback:<why>"``).

**2. Projection** onto ``box ∩ {Σ rated_w·a = target}``, Euclidean in normalised units.
The KKT conditions give ``a_i(λ) = clip(r_i + λ·w_i, l_i, u_i)``; the fleet total
``S(λ)`` is piecewise linear and non-decreasing, so sorting its ``2n`` breakpoints and a
cumulative sum locate ``λ`` exactly (O(n log n), vectorised). The default target is the
requested action's own total: clipped power is redistributed to packs with headroom. A
target outside ``[Σ w·l, Σ w·u]`` gives the nearest feasible allocation (every pack at
the bound on that side) and the shortfall (status ``SHORTFALL``).

Invalid requests never raise: a NaN entry is taken as 0 for its pack, ±inf and finite
entries outside ``[-1, 1]`` as ±1 (status ``INVALID_ACTION``, reason
``"action_not_finite"`` / ``"action_out_of_range"``); a non-finite ``target_power_w`` is
ignored in favour of the default target (status ``INVALID_ACTION``). An action of the
wrong shape is a programming error and raises ``ValueError``.

Example:
    >>> import numpy as np
    >>> from pulsebms.safety import FleetState, PackRatings
    >>> ratings = PackRatings(("NMC", "LFP"), np.array([14, 16]), np.array([4, 10]),
    ...                       np.array([5.15, 2.3]), np.array([1000.0, 1200.0]))
    >>> state = FleetState(soc=np.array([0.5, 0.06]), soh=np.ones(2),
    ...                    temperature_c=np.array([25.0, 25.0]),
    ...                    cell_voltage_v=np.array([3.7, 3.2]), current_a=np.zeros(2))
    >>> result = Shield(ratings, dt_s=60.0).project(state, np.array([0.5, 0.5]))
    >>> result.status.name, result.intervened.tolist()
    ('PROJECTED', [True, True])
    >>> bool(np.isclose(result.action @ ratings.rated_power_w, 0.5 * 2200.0))
    True
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pulsebms.safety.cell_model import CellModel, FleetCellModel
from pulsebms.safety.limits import PackLimits, fleet_limits, stack_limits
from pulsebms.safety.state import FleetState, PackRatings

__all__ = [
    "VOLTAGE_FRACTIONS",
    "AdmissibleSet",
    "Shield",
    "ShieldResult",
    "ShieldStatus",
    "project_box_hyperplane",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

VOLTAGE_FRACTIONS: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125, 0.0625)
"""Nested current ranges (fractions of the non-voltage bound) of the voltage constraint."""

_UPPER_NAMES = ("current_max_a", "c_rate_max", "soc_min", "cell_voltage_min_v")
_LOWER_NAMES = ("current_min_a", "c_rate_max", "soc_max", "cell_voltage_max_v")


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


# The decision path builds the status as an int (enum arithmetic costs microseconds).
_PROJECTED, _SHORTFALL, _FALLBACK, _INVALID_ACTION = (
    int(f)
    for f in (
        ShieldStatus.PROJECTED,
        ShieldStatus.SHORTFALL,
        ShieldStatus.FALLBACK,
        ShieldStatus.INVALID_ACTION,
    )
)
_STATUSES = tuple(ShieldStatus(i) for i in range(16))

# Rows of the state matrix x of Shield._stage1 (one entry per row, named by the state
# quantity it holds; "i" is min(current, 0)), and the row groups each step reads.
_X_ROWS = (
    *("soc", "temp", "temp", "volt", "volt", "soh", "valid", "i", "i"),  # fallback windows
    *("soc", "soc"),  # SoC headroom per side (hi - x)
    *("soc", "temp"),  # position on the resistance grid (x - lo)
)
_WINDOWS = slice(0, 9)
_TEMP2 = slice(1, 3)  # temperature per side (derating)
_VOLT2 = slice(3, 5)  # cell voltage per side (e_low)
_SOH = 5
_CURRENT2 = slice(7, 9)  # min(I, 0) per side (e_low)
_SOC_HEADROOM = slice(9, 11)
_RES_OFFSET = slice(11, 13)


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


@dataclass(frozen=True)
class ShieldResult:
    """Outcome of :meth:`Shield.project`.

    Attributes:
        action: The admissible action, shape ``(n_packs,)``, in ``[lower, upper]``.
        intervened: Per pack, True where ``action`` differs from the request (a NaN
            request always counts as changed).
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
    explain: Callable[[], tuple[tuple[str, ...], ...]] = field(repr=False, compare=False)
    """Builds :attr:`reasons` (called once, on first access)."""

    @cached_property
    def reasons(self) -> tuple[tuple[str, ...], ...]:
        """Per pack, the names of the limits (or request problems) behind the change.

        ``()`` for packs left alone. Limit names are :class:`PackLimits` field names
        (``"soc_min"``, ``"cell_voltage_max_v"``, …; ``"temperature_max_c"`` for derating),
        ``"action_space"`` for the ``[-1, 1]`` bound, ``"redistributed"`` for a pack moved
        only to keep the fleet total, ``"action_not_finite"``/``"action_out_of_range"`` for
        bad requests, and ``"fallback:<why>"``. Computed on first access, off the decision
        path.
        """
        return self.explain()


def _multiplier(breakpoints: FloatArray, slope_steps: FloatArray, excess: float) -> float:
    """The multiplier ``λ`` at which the piecewise-linear fleet total reaches its target.

    ``S(λ) − S(−∞)`` is 0 up to the first breakpoint and its slope changes by
    ``slope_steps[i]`` at ``breakpoints[i]`` (``+w²`` where a coordinate leaves its lower
    bound, ``−w²`` where it reaches its upper one). Sorting the breakpoints and two
    cumulative sums give ``S`` at every breakpoint; ``λ`` is interpolated inside the
    segment where ``S`` crosses ``excess`` (exact, no iteration).

    Args:
        breakpoints: ``2n`` breakpoints, any order.
        slope_steps: The slope change at each breakpoint.
        excess: Target minus ``S(−∞)``, in ``(0, S(∞) − S(−∞))``.

    Returns:
        ``λ``.
    """
    order = breakpoints.argsort()
    bp_sorted = breakpoints[order]
    cumsum = np.add.accumulate  # the ufunc method: less overhead than ndarray.cumsum
    slope = cumsum(slope_steps[order])  # dS/dλ after each breakpoint
    # S(bp_k) - S(-inf) for k >= 1 (it is 0 at the first breakpoint)
    totals = cumsum(slope[:-1] * (bp_sorted[1:] - bp_sorted[:-1]))
    k = int(totals.searchsorted(excess, side="right"))
    base = float(totals[k - 1]) if k > 0 else 0.0
    s = float(slope[k])
    return float(bp_sorted[k]) + ((excess - base) / s if s > 0.0 else 0.0)


def project_box_hyperplane(
    request: FloatArray,
    lower: FloatArray,
    upper: FloatArray,
    weight: FloatArray,
    target: float,
    pre: tuple[FloatArray, FloatArray] | None = None,
) -> tuple[FloatArray, float]:
    """Closest point to ``request`` in ``{lower ≤ a ≤ upper, weight·a = target}``.

    Breakpoint search on the multiplier (see the module docstring). The target is first
    clamped to ``[weight·lower, weight·upper]``; the clamped target is returned, so the
    caller can tell the shortfall.

    Args:
        request: The point to project, finite, shape ``(n,)``.
        lower: Lower bounds, finite, ``lower ≤ upper``.
        upper: Upper bounds, finite.
        weight: Positive weights of the total.
        target: Desired ``weight·a``.
        pre: ``(concat(1/w, 1/w), concat(w², -w²))`` precomputed for fixed weights.

    Returns:
        ``(a, reached)``: the projection and the total it aims at (the clamped target).

    Example:
        >>> import numpy as np
        >>> a, t = project_box_hyperplane(np.array([1.0, 0.0]), np.zeros(2), np.full(2, 0.6),
        ...                               np.ones(2), 1.0)
        >>> a.tolist(), t
        ([0.6, 0.4], 1.0)
    """
    t_min = float(weight @ lower)
    t_max = float(weight @ upper)
    if target <= t_min:
        return lower.copy(), t_min
    if target >= t_max:
        return upper.copy(), t_max
    if pre is None:
        inv = 1.0 / weight
        pre = (np.concatenate((inv, inv)), np.concatenate((weight * weight, -weight * weight)))
    inv2, w2pm = pre
    # Breakpoints where each coordinate leaves its lower / reaches its upper bound.
    bp = (np.concatenate((lower, upper)) - np.concatenate((request, request))) * inv2
    lam = _multiplier(bp, w2pm, target - t_min)
    return np.minimum(np.maximum(request + lam * weight, lower), upper), target


class _Stage1(NamedTuple):
    """Stage-1 output: the box and what :meth:`Shield._limit_names` needs to name it.

    Per-side arrays have row 0 for the charge side (the lower bound), row 1 for the
    discharge side (the upper bound); candidates are current magnitudes ``J ≥ 0``.
    """

    box: FloatArray
    """``(2, n)``: row 0 ``lower``, row 1 ``upper`` (normalised set-points)."""
    fallback: BoolArray
    why: list[str] | None
    """Fallback reason per pack (``""`` for the others); None when no pack falls back."""
    j_rate: FloatArray
    j_soc: FloatArray
    j_v: FloatArray
    derate: FloatArray
    temp: FloatArray


class Shield:
    """Keeps per-pack power set-points inside the safe operating area.

    Args:
        ratings: The fleet's ratings (chemistry, counts, capacity, rated power).
        limits: One :class:`PackLimits` per pack (or one for all); the chemistries'
            defaults (:func:`pulsebms.safety.fleet_limits`) when None.
        dt_s: Control interval [s]: how far ahead SoC and voltage are predicted.
        cell_model: OCV/resistance tables; the shipped ones when None.
        derating_band_c: Width of the band inside each temperature limit over which the
            admissible power falls linearly to zero [°C] (> 0).
        resistance_duration_s: Pulse duration the effective resistance is taken at [s];
            None means ``max(dt_s, 1000)``: a pack may already carry the polarisation of
            earlier steps at the same current, so the longest tabulated pulse is the safe
            default (pitfall: ``dt_s`` alone under-predicts the drop of a sustained
            current).
        voltage_margin_v: Margin kept inside the cell voltage window [V] (≥ 0), for model
            error; it must leave the window non-empty.
        soc_margin: Margin kept inside the SoC window (fraction, ≥ 0). The plant turns
            the power set-point into a current with its own model, which can draw a few
            per cent more current than planned; over a long step that moves the SoC past
            an exactly active bound. The default covers 3 % at 1 C over 300 s.
        current_margin: Relative margin on the current and C-rate limits (≥ 0, < 1), for
            the same reason (measured: the PulseBMS physics twin's power model, which
            ignores temperature, draws up to 2 % more current than planned at 40 °C).

    Raises:
        ValueError: On a non-positive ``dt_s`` or band, a negative margin, limits of the
            wrong count, ratings with non-positive capacity/rated power/counts, or a
            chemistry the cell model does not know.
    """

    def __init__(
        self,
        ratings: PackRatings,
        limits: Sequence[PackLimits] | PackLimits | None = None,
        dt_s: float = 10.0,
        *,
        cell_model: CellModel | None = None,
        derating_band_c: float = 5.0,
        resistance_duration_s: float | None = None,
        voltage_margin_v: float = 0.005,
        soc_margin: float = 5e-3,
        current_margin: float = 0.03,
    ) -> None:
        if not (math.isfinite(dt_s) and dt_s > 0):
            raise ValueError(f"dt_s must be finite and > 0, got {dt_s}")
        if not (math.isfinite(derating_band_c) and derating_band_c > 0):
            raise ValueError(f"derating_band_c must be finite and > 0, got {derating_band_c}")
        if not (math.isfinite(voltage_margin_v) and voltage_margin_v >= 0):
            raise ValueError(f"voltage_margin_v must be finite and >= 0, got {voltage_margin_v}")
        if not (math.isfinite(soc_margin) and soc_margin >= 0):
            raise ValueError(f"soc_margin must be finite and >= 0, got {soc_margin}")
        if not (math.isfinite(current_margin) and 0 <= current_margin < 1):
            raise ValueError(f"current_margin must be in [0, 1), got {current_margin}")
        n = ratings.n_packs
        if n < 1:
            raise ValueError("a shield needs at least one pack")
        rated = np.asarray(ratings.rated_power_w, dtype=np.float64)
        capacity = np.asarray(ratings.capacity_ah, dtype=np.float64)
        series = np.asarray(ratings.series, dtype=np.float64)
        parallel = np.asarray(ratings.parallel, dtype=np.float64)
        for name, arr in (
            ("rated_power_w", rated),
            ("capacity_ah", capacity),
            ("series", series),
            ("parallel", parallel),
        ):
            if not np.all(np.isfinite(arr) & (arr > 0)):
                raise ValueError(f"ratings.{name} must be finite and > 0, got {arr}")
        self.ratings = ratings
        self.dt_s = float(dt_s)
        self.limits: tuple[PackLimits, ...] = (
            fleet_limits(ratings)
            if limits is None
            else ((limits,) * n if isinstance(limits, PackLimits) else tuple(limits))
        )
        lim = stack_limits(self.limits, n)
        self.derating_band_c = float(derating_band_c)
        self.voltage_margin_v = float(voltage_margin_v)
        self.soc_margin = float(soc_margin)
        self.current_margin = float(current_margin)
        self.resistance_duration_s = float(
            max(self.dt_s, 1000.0) if resistance_duration_s is None else resistance_duration_s
        )
        self.cell_model = cell_model if cell_model is not None else CellModel.load()
        self._fleet: FleetCellModel = self.cell_model.for_fleet(
            ratings.chemistry, self.resistance_duration_s
        )
        v_min = lim.cell_voltage_min_v + self.voltage_margin_v
        v_max = lim.cell_voltage_max_v - self.voltage_margin_v
        if np.any(v_min >= v_max):
            raise ValueError("voltage_margin_v leaves an empty cell voltage window")
        if np.any(lim.soc_min + self.soc_margin >= lim.soc_max - self.soc_margin):
            raise ValueError("soc_margin leaves an empty SoC window")
        keep = 1.0 - self.current_margin
        self.n_packs = n
        self._lim = lim
        fleet = self._fleet
        k_soc = self.dt_s / 3600.0 / capacity  # SoC per pack ampere at SoH 1
        res_soc0, res_temp0 = fleet.resistance_origin
        m = len(VOLTAGE_FRACTIONS) + 1  # nested ranges plus one of length 0

        def rows(*values: FloatArray | float) -> FloatArray:
            """Per-pack rows, shape ``(len(values), n)`` (scalars are broadcast)."""
            return np.stack(
                [np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in values]
            )

        def full(values: FloatArray) -> FloatArray:
            """Per side ``(2, n)`` values repeated over the voltage ranges, ``(m, 2, n)``."""
            return np.broadcast_to(values, (m, 2, n)).copy()

        nan, inf = np.nan, np.inf
        # ---- the state matrix of _stage1 (layout in _X_ROWS) and the bounds it is
        # differenced with, one operation each: x - lo and hi - x. The first rows are the
        # fallback windows; other rows reuse the same two operations for the SoC headroom
        # (hi - x) and the position on the resistance grid (x - lo). NaN marks a
        # difference that is not used (NaN arithmetic raises no floating-point warning).
        self._x_lo = rows(
            lim.soc_min,
            lim.temperature_min_c,
            lim.temperature_min_c,
            lim.cell_voltage_min_v,
            lim.cell_voltage_min_v,
            1e-9,  # SoH
            1.0,  # valid
            nan,  # min(I, 0): no lower bound (only NaN fails, see _differences)
            nan,
            nan,
            nan,
            res_soc0,
            res_temp0,
        )
        self._x_hi = rows(
            lim.soc_max,
            lim.temperature_max_c,
            lim.temperature_max_c,
            lim.cell_voltage_max_v,
            lim.cell_voltage_max_v,
            1.5,
            1.0,
            inf,
            inf,
            lim.soc_max - self.soc_margin,  # hi - soc: charge headroom
            lim.soc_min + self.soc_margin,  # lo - soc: minus the discharge headroom
        )
        # A fallback pack's column is replaced by a harmless state (its box is zeroed).
        harmless = {"soc": 0.5, "temp": 25.0, "volt": 3.0, "soh": 1.0, "valid": 1.0, "i": 0.0}
        self._x_fallback = np.array([[harmless[name]] for name in _X_ROWS])
        # ---- per side, as magnitudes J >= 0 of the current: row 0 charge (J = -I, the
        # lower bound), row 1 discharge (J = I, the upper bound). Constants are stored in
        # the shape of the arrays they meet: at these sizes numpy is markedly slower on
        # broadcasts and Python scalars than on equal shapes.
        # Divided by SoH in one operation: the signed SoC change per ampere of J
        # (soc_end = soc - k·J), the divisors of the SoC headroom rows, and the scale of
        # the resistance rows read per pack: (charge, discharge) for the voltage bound,
        # (0, discharge) for the drop in the conversion (a zero scale), the larger of the
        # two per side for e_low.
        inv_p = 1.0 / parallel
        self._per_soh = rows(-k_soc, k_soc, k_soc, -k_soc, inv_p, inv_p, 0.0, inv_p, inv_p, inv_p)
        self._res_rows = fleet.resistance_rows(
            ("charge", "discharge", "discharge", "discharge", "max", "max")
        )
        self._j_lim = rows(-lim.current_min_a * keep, lim.current_max_a * keep)
        self._c_max_ah = rows(*(lim.c_rate_max * keep * capacity,) * 2)  # |I| per SoH [A]
        # Nested ranges, shape (m, 2, n) (the last of length 0: the OCV at the start)
        self._frac = full(np.array((*VOLTAGE_FRACTIONS, 0.0))[:, None, None])
        self._ocv_cells_per_soc = full(np.array(fleet.ocv_cells_per_soc))
        # OCV bound per side, signed: -upper bound when charging, lower when discharging.
        self._ocv_offsets = np.broadcast_to(fleet.signed_ocv_offsets(), (m, 2, n)).copy()
        # The voltage limit, signed likewise; NaN in the range of length 0, whose
        # candidate (min(0, ·) <= 0) never raises the maximum: fmin then gives 0.
        self._v_lim = full(rows(-v_max, v_min))
        self._v_lim[-1] = np.nan
        self._inv_band = rows(*(1.0 / self.derating_band_c,) * 2)
        self._t_max = lim.temperature_max_c
        self._t_min = lim.temperature_min_c
        self._zero = np.zeros((2, n))
        self._one = np.ones((2, n))
        # ---- to power (see _stage1): the conversion voltage's floor, signed power scale
        # and the box limits per side.
        self._v_floor = rows(-np.inf, v_min)
        power_scale = series / rated  # normalised action per (A·V of one cell)
        self._power_scale = rows(-power_scale, power_scale)
        self._box_lo = rows(-1.0, 0.0)
        self._box_hi = rows(0.0, 1.0)
        # ---- projection, Euclidean in normalised units, weights rated/mean(rated)
        self._rated = rated
        self._w_scale = float(rated.mean())
        self._weight = rated / self._w_scale
        self._inv_weight = rows(*(1.0 / self._weight,) * 2)
        # slope change of the fleet total at each breakpoint: [lower ones, upper ones]
        self._slope_steps = np.concatenate((self._weight**2, -(self._weight**2)))
        self._in_box_sign = rows(1.0, -1.0)  # (lower - a, a - upper) <= 0
        self._tol_w = 1e-9 * max(float(rated.sum()), 1.0)
        self._k_soc_num = k_soc  # used by predict
        self._no_reasons: tuple[tuple[str, ...], ...] = ((),) * n

    # ------------------------------------------------------------------ stage 1
    def admissible(self, state: FleetState) -> AdmissibleSet:
        """Admissible normalised set-point interval of every pack for ``state``.

        Args:
            state: The measured fleet state.

        Returns:
            The intervals, the fallback packs and the binding limit of each bound.

        Raises:
            ValueError: If the state has the wrong number of packs.
        """
        stage = self._stage1(state)
        lows, ups = self._limit_names(stage)
        return AdmissibleSet(stage.box[0], stage.box[1], stage.fallback, lows, ups)

    def bounds(self, state: FleetState) -> tuple[FloatArray, FloatArray, BoolArray]:
        """The admissible box only (no limit names): the fast part of :meth:`admissible`.

        Args:
            state: The measured fleet state.

        Returns:
            ``(lower, upper, fallback)`` per pack.
        """
        stage = self._stage1(state)
        return stage.box[0], stage.box[1], stage.fallback

    def _stage1(self, state: FleetState) -> _Stage1:
        """The admissible box of every pack (the module docstring's stage 1).

        Written for few numpy calls (at these sizes their fixed cost dominates): one
        state matrix ``x`` with the rows the steps need (:data:`_X_ROWS`), both sides of
        every pack as one ``(2, n)`` array (row 0 charge, row 1 discharge) and all voltage
        ranges as one ``(m, 2, n)`` array. Every quantity is computed with the same
        floating-point operations as the plain formulas, so the box does not depend on
        this layout.
        """
        n = self.n_packs
        if state.n_packs != n:
            raise ValueError(f"state has {state.n_packs} packs, the shield {n}")
        soc, temp, volt, current = (
            state.soc,
            state.temperature_c,
            state.cell_voltage_v,
            state.current_a,
        )
        rows = (soc, temp, temp, volt, volt, state.soh, state.valid, current, current)
        x = np.concatenate((*rows, soc, soc, soc, temp), dtype=np.float64).reshape(-1, n)
        # Only a charge current's drop is used (e_low below): keep min(I, 0) (NaN stays).
        charge_i = x[_CURRENT2]
        np.minimum(charge_i, self._zero, out=charge_i)
        below, above, slack = self._differences(x)
        # ---- fallback: invalid or outside a window (slack < 0, or NaN)
        why: list[str] | None = None
        if slack.min() >= 0.0:
            fallback = np.zeros(n, dtype=bool)
        else:
            fallback = ~(slack.min(axis=0) >= 0.0)
            why = [self._fallback_reason(state, i) if fallback[i] else "" for i in range(n)]
            x[:, fallback] = self._x_fallback
            below, above, slack = self._differences(x)
        soc, temp, soh = x[0], x[1], x[_SOH]
        fleet = self._fleet
        per_soh = self._per_soh / soh
        k_signed = per_soh[0:2]  # SoC change per ampere of J over the step, signed
        # ---- current, C-rate and SoC bounds (SoC kept inside the margin band; never < 0)
        j_soc = np.maximum(above[_SOC_HEADROOM] / per_soh[2:4], self._zero)
        j_rate = self._c_max_ah * soh
        j0 = np.minimum(np.minimum(self._j_lim, j_rate), j_soc)
        # ---- voltage: nested ranges, OCV bound at the far end of each (one look-up)
        ends = self._frac * j0  # (m, 2, n), last range of length 0
        position = ends * k_signed
        np.subtract(soc, position, out=position)  # SoC at the end of each range
        position *= self._ocv_cells_per_soc
        ocv = fleet.signed_ocv_bound(position, self._ocv_offsets)
        # cell voltage rise (charge) / drop (discharge) per pack ampere [V/A]; rows in
        # __init__ (_per_soh)
        res = fleet.resistance_bounds_at(below[_RES_OFFSET], self._res_rows)
        res *= per_soh[4:10]
        r2 = res[0:2]
        # Largest valid bound over the ranges (>= 0: the empty range gives 0, see _v_lim);
        # it never exceeds j0, as each candidate is at most its range's end.
        cand = ocv - self._v_lim
        cand /= r2
        j_v = np.fmin(cand, ends, out=cand).max(axis=0)
        # ---- temperature derating (slack = min(T - T_min, T_max - T) >= 0 here; a
        # fallback pack's negative value is harmless: its box is zeroed below)
        derate = slack[_TEMP2] * self._inv_band
        j = j_v * np.minimum(derate, self._one)
        # ---- to power, with voltages the step never goes below: when discharging, the
        # lowest OCV of the range minus the drop; when charging, the OCV at the start.
        # The plant turns power into current with its own source voltage; it is at least
        # the measured voltage, less the drop of a previous charge current (e_low). So the
        # conversion voltage is the lower of the model's and the measurement's. Per side,
        # v = min(max(ocv - drop, floor), e_low - drop), with drop = 0 and floor = -inf
        # when charging, i.e. min(ocv_start, e_low).
        e_low = res[4:6] * charge_i
        e_low += x[_VOLT2]
        drop = res[2:4] * j
        v = ocv[-1::-5, 1] - drop  # discharge-side OCV bound at the start / the far end
        np.maximum(v, self._v_floor, out=v)
        np.minimum(v, e_low - drop, out=v)
        box = j * v
        box *= self._power_scale
        np.maximum(box, self._box_lo, out=box)
        np.minimum(box, self._box_hi, out=box)
        if why is not None:
            box[:, fallback] = 0.0
        return _Stage1(box, fallback, why, j_rate[0], j_soc, j_v, derate[0], temp)

    def _differences(self, x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """``x − lo``, ``hi − x`` and the slack inside the fallback windows (NaN if unknown).

        ``fmin`` ignores one NaN: the current row has no lower bound (NaN) and an infinite
        upper one, so only a NaN current gives NaN slack.
        """
        lo, hi = self._x_lo, self._x_hi
        below = x[: lo.shape[0]] - lo
        above = hi - x[: hi.shape[0]]
        return below, above, np.fmin(below[_WINDOWS], above[_WINDOWS])

    def _limit_names(self, stage: _Stage1) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Binding limit name of each pack's lower and upper bound."""
        j_rate, j_soc, j_v, temp = stage.j_rate, stage.j_soc, stage.j_v, stage.temp
        lower, upper = stage.box
        # argmin over (current, C-rate, SoC, voltage) per side: 0 charge, 1 discharge
        rows = [
            np.stack((self._j_lim[side], j_rate, j_soc[side], j_v[side])).argmin(axis=0)
            for side in (0, 1)
        ]
        derated = stage.derate < 1.0
        hot = (self._t_max - temp) <= (temp - self._t_min)
        lows: list[str] = []
        ups: list[str] = []
        for i in range(self.n_packs):
            if stage.fallback[i]:
                reason = f"fallback:{stage.why[i] if stage.why else ''}"
                lows.append(reason)
                ups.append(reason)
                continue
            temp_name = "temperature_max_c" if hot[i] else "temperature_min_c"
            lo = _LOWER_NAMES[int(rows[0][i])]
            up = _UPPER_NAMES[int(rows[1][i])]
            if derated[i]:
                up = lo = temp_name
            ups.append("action_space" if upper[i] >= 1.0 else up)
            lows.append("action_space" if lower[i] <= -1.0 else lo)
        return tuple(lows), tuple(ups)

    def _fallback_reason(self, state: FleetState, i: int) -> str:
        """Why pack ``i`` is in the fallback (first failing check)."""
        lim = self.limits[i]
        if not bool(state.valid[i]):
            return "invalid_state"
        checks = (
            ("soc", float(state.soc[i]), lim.soc_min, lim.soc_max),
            (
                "temperature",
                float(state.temperature_c[i]),
                lim.temperature_min_c,
                lim.temperature_max_c,
            ),
            (
                "cell_voltage",
                float(state.cell_voltage_v[i]),
                lim.cell_voltage_min_v,
                lim.cell_voltage_max_v,
            ),
            ("soh", float(state.soh[i]), 1e-9, 1.5),
        )
        for quantity, value, lo, hi in checks:
            if not math.isfinite(value):
                return f"{quantity}_not_finite"
            if value < lo:
                return f"{quantity}_below_min"
            if value > hi:
                return f"{quantity}_above_max"
        return "unknown"

    # ------------------------------------------------------------------ prediction
    def predict(self, state: FleetState, action: ArrayLike) -> FleetState:
        """The cell model's prediction of the state after one step at ``action``.

        The action is sanitised as in :meth:`project` (NaN → 0, clipped to ``[-1, 1]``);
        the current is the one that delivers the power from a source ``OCV(SoC)`` behind
        the effective resistance (``P_cell = I·(OCV − R·I)``; a power beyond the source's
        maximum takes the current of the maximum), then SoC and cell voltage follow the
        one-step model. Temperature is carried over. Used to report the violation cost
        an unshielded action would have caused (``info["cost_pre_shield"]``).

        Args:
            state: The present state.
            action: Normalised set-points.

        Returns:
            The predicted state (``current_a`` is the predicted pack current).
        """
        raw = np.asarray(action, dtype=np.float64)
        if raw.shape != (self.n_packs,):
            raise ValueError(f"action must have shape ({self.n_packs},), got {raw.shape}")
        request = np.clip(np.nan_to_num(raw, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
        chem = self.ratings.chemistry
        soc = np.asarray(state.soc, dtype=np.float64)
        soh = np.asarray(state.soh, dtype=np.float64)
        temp = np.asarray(state.temperature_c, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            ocv = np.array(
                [self.cell_model.ocv_v(c, s) for c, s in zip(chem, np.nan_to_num(soc), strict=True)]
            )
            r_cell = (
                np.array(
                    [
                        self.cell_model.resistance_ohm(
                            c, s, t, self.resistance_duration_s, "discharge" if a >= 0 else "charge"
                        )
                        for c, s, t, a in zip(
                            chem, np.nan_to_num(soc), np.nan_to_num(temp), request, strict=True
                        )
                    ]
                )
                / soh
            )
            n_cells = np.asarray(self.ratings.series * self.ratings.parallel, dtype=np.float64)
            p_cell = request * self._rated / n_cells
            disc = np.maximum(ocv * ocv - 4.0 * r_cell * p_cell, 0.0)
            i_cell = 2.0 * p_cell / (ocv + np.sqrt(disc))
            current = i_cell * np.asarray(self.ratings.parallel, dtype=np.float64)
            soc_end = soc - current * self._k_soc_num / soh
            ocv_end = np.array(
                [
                    self.cell_model.ocv_v(c, s)
                    for c, s in zip(chem, np.nan_to_num(soc_end), strict=True)
                ]
            )
            v_end = ocv_end - r_cell * i_cell
        return FleetState(
            soc=soc_end,
            soh=soh.copy(),
            temperature_c=temp.copy(),
            cell_voltage_v=v_end,
            current_a=current,
            demand_w=float(state.demand_w),
            valid=np.asarray(state.valid, dtype=bool).copy(),
        )

    # ------------------------------------------------------------------ stage 2
    def project(
        self,
        state: FleetState,
        action: ArrayLike,
        target_power_w: float | None = None,
    ) -> ShieldResult:
        """The closest admissible action to ``action`` that keeps the fleet target.

        Args:
            state: The measured fleet state.
            action: Requested normalised set-points, shape ``(n_packs,)``.
            target_power_w: Fleet power to deliver [W] (demand tracking); by default the
                requested action's own total.

        Returns:
            The :class:`ShieldResult`.

        Raises:
            ValueError: If ``action`` or ``state`` has the wrong number of packs.
        """
        raw = np.asarray(action, dtype=np.float64)
        n = self.n_packs
        if raw.shape != (n,):
            raise ValueError(f"action must have shape ({n},), got {np.shape(action)}")
        stage = self._stage1(state)
        box = stage.box
        flags = 0 if stage.why is None else _FALLBACK
        # gap = (lower - a, upper - a); a is in the box iff max(lower - a, a - upper) <= 0
        # (False on NaN), which also proves it finite and inside [-1, 1].
        gap = box - raw
        in_box = (gap * self._in_box_sign).max() <= 0.0
        request = raw
        if not in_box and not np.abs(raw).max() <= 1.0:  # also True on NaN
            flags |= _INVALID_ACTION
            request = np.clip(np.nan_to_num(raw, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
            gap = box - request
            in_box = (gap * self._in_box_sign).max() <= 0.0
        own = float(self._weight @ request)
        if target_power_w is None:
            target = own
        elif math.isfinite(target_power_w):
            target = float(target_power_w) / self._w_scale
        else:
            flags |= _INVALID_ACTION
            target = own
        if in_box and abs(own - target) * self._w_scale <= self._tol_w:
            # Already admissible with the asked total: the identity (no projection).
            if request is raw:
                out = raw.copy()
                intervened = np.zeros(n, dtype=bool)
            else:
                out = request
                intervened = out != raw
            reached = target
        else:
            out, reached = self._project_box(request, box, gap, target)
            intervened = out != raw
        # A request outside the box or sanitised always changes; else look.
        if request is not raw or not in_box or intervened.any():
            flags |= _PROJECTED
        shortfall_w = (target - reached) * self._w_scale
        if abs(shortfall_w) > self._tol_w:
            flags |= _SHORTFALL
        else:
            shortfall_w = 0.0
        explain: Callable[[], tuple[tuple[str, ...], ...]]
        if flags & _PROJECTED:

            def explain() -> tuple[tuple[str, ...], ...]:
                return self._reasons(raw, request, out, intervened, stage)

        else:
            no_reasons = self._no_reasons

            def explain() -> tuple[tuple[str, ...], ...]:
                return no_reasons

        return ShieldResult(
            action=out,
            intervened=intervened,
            status=_STATUSES[flags],
            shortfall_w=float(shortfall_w),
            lower=box[0],
            upper=box[1],
            target_power_w=target * self._w_scale,
            fallback=stage.fallback,
            explain=explain,
        )

    def _project_box(
        self, request: FloatArray, box: FloatArray, gap: FloatArray, target: float
    ) -> tuple[FloatArray, float]:
        """:func:`project_box_hyperplane` on the shield's box, with ``gap = box − request``."""
        weight = self._weight
        lower, upper = box[0], box[1]
        t_min = float(weight @ lower)
        t_max = float(weight @ upper)
        if target <= t_min:
            return lower.copy(), t_min
        if target >= t_max:
            return upper.copy(), t_max
        # Breakpoints where each coordinate leaves its lower / reaches its upper bound.
        breakpoints = (gap * self._inv_weight).ravel()
        lam = _multiplier(breakpoints, self._slope_steps, target - t_min)
        out = lam * weight
        out += request
        np.maximum(out, lower, out=out)
        np.minimum(out, upper, out=out)
        return out, target

    def _reasons(
        self,
        raw: FloatArray,
        request: FloatArray,
        out: FloatArray,
        intervened: BoolArray,
        stage: _Stage1,
    ) -> tuple[tuple[str, ...], ...]:
        """Per-pack reason names for the packs that were changed."""
        lows, ups = self._limit_names(stage)
        lower, upper = stage.box
        result: list[tuple[str, ...]] = []
        for i in range(self.n_packs):
            if not intervened[i]:
                result.append(())
                continue
            names: list[str] = []
            value = float(raw[i])
            if not math.isfinite(value):
                names.append("action_not_finite")
            elif not -1.0 <= value <= 1.0:
                names.append("action_out_of_range")
            if stage.fallback[i] or (out[i] >= upper[i] and request[i] > upper[i]):
                names.append(ups[i])
            elif out[i] <= lower[i] and request[i] < lower[i]:
                names.append(lows[i])
            elif out[i] != request[i]:
                names.append("redistributed")
            result.append(tuple(names))
        return tuple(result)
