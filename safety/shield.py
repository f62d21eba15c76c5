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
  OCV moves during the step, so the largest admissible current is a root. In per-SoH
  cell current ``x = I/(p·SoH)`` the constraint does not depend on SoH, so the root is
  solved once, when the shield is built, for every cell of a (SoC, temperature) grid
  (0.002 × 1 °C), at the grid cell's worst corner (lowest SoC and largest resistance
  when discharging, highest SoC when charging), capped by the C-rate
  (:class:`~pulsebms.safety.envelope.CurrentEnvelope`). A decision reads each pack's
  row in one gather. The bound is the exact root up to the grid's resolution and always
  on the safe side. A pack inside its limits always admits ``I = 0``.

Each limit is applied with a small margin for the mismatch between this one-step model
and the plant (``voltage_margin_v``, ``soc_margin``, ``current_margin``).

The interval is then scaled by the **temperature derating**
``clip(min(T_max − T, T − T_min) / derating_band_c, 0, 1)`` (``"temperature_max_c"`` /
``"temperature_min_c"``), turned into power with a conservative voltage, and normalised,
and intersected with the action space ``[-1, 1]`` (``"action_space"``). The conversion
voltage is the lower of the model's (the lowest OCV of the step less the resistive drop
when discharging; the lowest OCV of the grid cell when charging) and the measurement's:
the plant turns a power set-point into a current with its own source voltage, which is
at least the measured cell voltage (less the drop of a previous charge current), and a
polarised pack draws more current for the same power than its OCV suggests.

A pack whose state is invalid (``state.valid`` False, a non-finite quantity, a SoH outside
``(0, 1.5]``) or already outside its voltage, temperature or SoC window gets the **fallback**
interval ``[0, 0]``: zero current, i.e. a controlled shutdown (status ``FALLBACK``,
reason ``"fallback:<why>"``).

**2. Projection** onto ``box ∩ {Σ rated_w·a = target}``, Euclidean in normalised units,
in closed form (:mod:`pulsebms.safety.projection`: the KKT conditions give
``a_i(λ) = clip(r_i + λ·w_i, l_i, u_i)`` and a sort of the ``2n`` breakpoints of the
piecewise-linear fleet total locates ``λ`` exactly). The default target is the
requested action's own total: clipped power is redistributed to packs with headroom. A
target outside ``[Σ w·l, Σ w·u]`` gives the nearest feasible allocation (every pack at
the bound on that side) and the shortfall (status ``SHORTFALL``). That is
``ShieldSettings.allocation = "redistribute"`` (the default); ``"respect_split"`` keeps
the policy's split instead: each pack is clipped into its interval, no power moves to
other packs, and the fleet power lost is the shortfall (status ``SHORTFALL``, its
``shortfall_w`` = target − clipped total).

Invalid requests never raise: a NaN entry is taken as 0 for its pack, ±inf and finite
entries outside ``[-1, 1]`` as ±1 (status ``INVALID_ACTION``, reason
``"action_not_finite"`` / ``"action_out_of_range"``); a non-finite ``target_power_w`` is
ignored in favour of the default target (status ``INVALID_ACTION``). An action of the
wrong shape is a programming error and raises ``ValueError``.

The result types (:class:`ShieldStatus`, :class:`AdmissibleSet`, :class:`ShieldResult`)
live in :mod:`pulsebms.safety.results`, the settings in :mod:`pulsebms.safety.settings`;
this module re-exports the former and :func:`project_box_hyperplane`.

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

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple, Unpack

import numpy as np
from numpy.typing import ArrayLike

from pulsebms.core.types import BoolArray, FloatArray
from pulsebms.safety.cell_model import CellModel
from pulsebms.safety.envelope import (
    COLUMNS,
    OCV_CHARGE,
    OCV_DISCHARGE,
    R_DISCHARGE,
    R_MAX,
    R_NONE,
    X_CHARGE,
    CurrentEnvelope,
    EnvelopeGroup,
)
from pulsebms.safety.limits import PackLimits, fleet_limits, stack_limits
from pulsebms.safety.projection import breakpoint_multiplier, project_box_hyperplane
from pulsebms.safety.results import AdmissibleSet, ShieldResult, ShieldStatus
from pulsebms.safety.settings import ShieldSettings, ShieldSettingsOverrides, merge_settings
from pulsebms.safety.state import FleetState, PackRatings

__all__ = [
    "AdmissibleSet",
    "Shield",
    "ShieldResult",
    "ShieldStatus",
    "project_box_hyperplane",
]

_UPPER_NAMES = ("current_max_a", "c_rate_max", "soc_min", "cell_voltage_min_v")
_LOWER_NAMES = ("current_min_a", "c_rate_max", "soc_max", "cell_voltage_max_v")

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

_SOH_MIN, _SOH_MAX = 1e-9, 1.5
"""Window of a plausible SoH measurement (outside it: the fallback)."""

# The state matrix x of Shield._stage1 has one row per measured quantity (valid as 0/1):
_X_ROWS = ("soc", "temp", "volt", "soh", "valid", "current")
_X_VOLT, _X_SOH = _X_ROWS.index("volt"), _X_ROWS.index("soh")
# and y = x[select]·scale + offset one row per derived quantity, in one pass: (name, source).
# The window rows are >= 0 exactly when the pack is inside that window (NaN when unknown);
# the temperature ones are scaled by 1/derating_band_c, so they are also the derating.
_Y_ROWS = (
    ("soc_above_min", "soc"),
    ("soc_below_max", "soc"),
    ("temp_above_min", "temp"),
    ("temp_below_max", "temp"),
    ("volt_above_min", "volt"),
    ("volt_below_max", "volt"),
    ("soh_above_min", "soh"),
    ("soh_below_max", "soh"),
    ("valid", "valid"),  # valid - 1
    ("current_finite", "current"),  # 0·I: 0, or NaN when I is not finite
    ("x_soc_charge", "soc"),  # SoC headroom as per-SoH cell current [A], charge side
    ("x_soc_discharge", "soc"),  # and discharge side
    ("soc_cell", "soc"),  # SoC grid coordinate of the envelope (group offset included)
    ("temp_cell", "temp"),  # temperature grid coordinate
    ("cell_current", "current"),  # cell current [A] (I / parallel)
    ("one", "soc"),  # 1 (finite SoC): the envelope columns' offsets enter with it
)
_WINDOWS = slice(0, 10)
_DERATE_LO, _DERATE_HI = 2, 3
_HEADROOM = slice(10, 12)
_GRID = slice(12, 16)  # the grid coordinates, the cell current (coefficient 0) and 1
_CELL_CURRENT = 14


class _Stage1(NamedTuple):
    """Stage-1 output: the box and what :meth:`Shield._limit_names` needs to name it.

    Per-side arrays have row 0 for the charge side (the lower bound), row 1 for the
    discharge side (the upper bound); currents are per-SoH cell current magnitudes.
    """

    box: FloatArray
    """``(2, n)``: row 0 ``lower``, row 1 ``upper`` (normalised set-points)."""
    fallback: BoolArray
    why: list[str] | None
    """Fallback reason per pack (``""`` for the others); None when no pack falls back."""
    y: FloatArray
    envelope: FloatArray
    """``(len(COLUMNS), n)``: each pack's envelope row."""
    inv_soh: FloatArray
    derate: FloatArray


class Shield:
    """Keeps per-pack power set-points inside the safe operating area.

    Args:
        ratings: The fleet's ratings (chemistry, counts, capacity, rated power).
        limits: One :class:`PackLimits` per pack (or one for all); the chemistries'
            defaults (:func:`pulsebms.safety.fleet_limits`) when None.
        dt_s: Control interval [s]: how far ahead SoC and voltage are predicted.
        settings: Margins, derating band and resistance pulse duration
            (:class:`~pulsebms.safety.settings.ShieldSettings`, where each default and
            its reason is documented); the defaults when None.
        cell_model: OCV/resistance tables; the shipped ones when None
            (:meth:`CellModel.shipped`, shared).
        **overrides: :class:`~pulsebms.safety.settings.ShieldSettings` fields given as
            keywords (``derating_band_c``, ``resistance_duration_s``,
            ``voltage_margin_v``, ``soc_margin``, ``current_margin``, ``track_demand``);
            they override the matching fields of ``settings``.

    Attributes:
        settings: The resolved :class:`~pulsebms.safety.settings.ShieldSettings`.
        resistance_duration_s: The pulse duration the resistance is read at [s]
            (``settings.resistance_duration_s`` resolved: ``max(dt_s, 1000)`` for None).

    Building a shield solves the current envelope (:attr:`envelope`): one table per group
    of packs that share chemistry, cell capacity, voltage window and C-rate limit, about
    2.3 MB and 0.2 s each, cached per process (shields of the same fleet share them).
    A fleet whose packs all have different voltage windows pays this per pack.

    Raises:
        ValueError: On a non-positive ``dt_s``, invalid settings, margins that leave a
            window empty, limits of the wrong count, ratings with non-positive
            capacity/rated power/counts, or a chemistry the cell model does not know.
        TypeError: On a keyword that is not a setting.
    """

    def __init__(
        self,
        ratings: PackRatings,
        limits: Sequence[PackLimits] | PackLimits | None = None,
        dt_s: float = 10.0,
        *,
        settings: ShieldSettings | None = None,
        cell_model: CellModel | None = None,
        **overrides: Unpack[ShieldSettingsOverrides],
    ) -> None:
        if not (math.isfinite(dt_s) and dt_s > 0):
            raise ValueError(f"dt_s must be finite and > 0, got {dt_s}")
        self.settings = merge_settings(settings, overrides, caller="Shield")
        config = self.settings
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
        self.derating_band_c = config.derating_band_c
        self.voltage_margin_v = config.voltage_margin_v
        self.soc_margin = config.soc_margin
        self.current_margin = config.current_margin
        duration = config.resistance_duration_s
        self.resistance_duration_s = float(max(self.dt_s, 1000.0) if duration is None else duration)
        self.cell_model = cell_model if cell_model is not None else CellModel.shipped()
        v_min = lim.cell_voltage_min_v + self.voltage_margin_v
        v_max = lim.cell_voltage_max_v - self.voltage_margin_v
        if np.any(v_min >= v_max):
            raise ValueError("voltage_margin_v leaves an empty cell voltage window")
        if np.any(lim.soc_min + self.soc_margin >= lim.soc_max - self.soc_margin):
            raise ValueError("soc_margin leaves an empty SoC window")
        keep = 1.0 - self.current_margin
        self.n_packs = n
        # ---- the current envelope: one table per group of packs sharing cell and limits
        cell_cap = np.asarray(ratings.cell_capacity_ah, dtype=np.float64)
        keys = [
            EnvelopeGroup(
                ratings.chemistry[i].strip().upper(),
                float(cell_cap[i]),
                float(v_min[i]),
                float(v_max[i]),
                float(lim.c_rate_max[i] * keep * cell_cap[i]),
            )
            for i in range(n)
        ]
        groups = list(dict.fromkeys(keys))
        group_of = [groups.index(k) for k in keys]
        self.envelope = CurrentEnvelope(
            self.cell_model,
            groups,
            dt_s=self.dt_s,
            duration_s=self.resistance_duration_s,
            temperature_range_c=(
                float(lim.temperature_min_c.min()),
                float(lim.temperature_max_c.max()),
            ),
        )
        env = self.envelope
        self._current_cap = np.array([k.current_cap_a for k in keys])  # per SoH, per cell [A]
        # ---- the rows of y = x[_SELECT]·scale + offset (layout: _Y_ROWS)
        k_cell = self.dt_s / 3600.0 / cell_cap  # SoC per ampere of per-SoH cell current
        inv_band = 1.0 / self.derating_band_c
        soc_lo = lim.soc_min + self.soc_margin
        soc_hi = lim.soc_max - self.soc_margin
        scale_offset: dict[str, tuple[FloatArray | float, FloatArray | float]] = {
            "soc_above_min": (1.0, -lim.soc_min),
            "soc_below_max": (-1.0, lim.soc_max),
            "temp_above_min": (inv_band, -lim.temperature_min_c * inv_band),
            "temp_below_max": (-inv_band, lim.temperature_max_c * inv_band),
            "volt_above_min": (1.0, -lim.cell_voltage_min_v),
            "volt_below_max": (-1.0, lim.cell_voltage_max_v),
            "soh_above_min": (1.0, -_SOH_MIN),
            "soh_below_max": (-1.0, _SOH_MAX),
            "valid": (1.0, -1.0),
            "current_finite": (0.0, 0.0),
            "x_soc_charge": (-1.0 / k_cell, soc_hi / k_cell),
            "x_soc_discharge": (1.0 / k_cell, -soc_lo / k_cell),
            "soc_cell": (env.soc_scale, np.array([env.group_offset(g) for g in group_of])),
            "temp_cell": (env.temperature_scale, env.temperature_offset),
            "cell_current": (1.0 / parallel, 0.0),
            "one": (0.0, 1.0),
        }

        def rows(*values: FloatArray | float) -> FloatArray:
            """Per-pack rows, shape ``(len(values), n)`` (scalars are broadcast)."""
            return np.stack(
                [np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in values]
            )

        self._y_scale = rows(*(scale_offset[name][0] for name, _ in _Y_ROWS))
        self._y_offset = rows(*(scale_offset[name][1] for name, _ in _Y_ROWS))
        self._select = np.array([_X_ROWS.index(src) for _, src in _Y_ROWS], dtype=np.intp)
        # A fallback pack's column is replaced by a harmless state (its box is zeroed):
        # mid-window, so that its grid cell exists.
        self._x_harmless = rows(
            0.5 * (lim.soc_min + lim.soc_max),
            0.5 * (lim.temperature_min_c + lim.temperature_max_c),
            0.5 * (lim.cell_voltage_min_v + lim.cell_voltage_max_v),
            1.0,
            1.0,
            0.0,
        )
        # The envelope, flat, and the matrix that maps the grid coordinates (a includes
        # the group) and 1 to the index of every column of each pack's row:
        # (a·temperature_cells + b)·columns + column. One row is one or two cache lines,
        # and the gathered (columns, n) array is contiguous. Whole numbers far below
        # 2**53: exact in floating point, and a float matmul is the fastest.
        self._table = env.table.ravel()
        n_cols = float(len(COLUMNS))
        self._cell_index = np.array(
            [[env.temperature_cells * n_cols, n_cols, 0.0, float(c)] for c in range(len(COLUMNS))]
        )
        # ---- constants in the shape of the arrays they meet: at these sizes numpy is
        # markedly slower on broadcasts and Python scalars than on equal shapes.
        self._current_lim = rows(  # pack current limits per cell [A]: (charge, discharge)
            -lim.current_min_a * keep / parallel, lim.current_max_a * keep / parallel
        )
        self._zero2 = np.zeros((2, n))
        self._zero = np.zeros(n)
        self._one = np.ones(n)
        power_scale = series * parallel / rated  # normalised action per (A·V of one cell)
        self._power_scale = rows(-power_scale, power_scale)
        self._box_lo = rows(-1.0, 0.0)
        self._box_hi = rows(0.0, 1.0)
        self._no_fallback: BoolArray = np.zeros(n, dtype=bool)
        self._no_fallback.setflags(write=False)
        # ---- projection, Euclidean in normalised units, weights rated/mean(rated)
        self._rated = rated
        self._w_scale = float(rated.mean())
        self._weight = rated / self._w_scale
        self._inv_weight = rows(*(1.0 / self._weight,) * 2)
        # slope change of the fleet total at each breakpoint: [lower ones, upper ones]
        self._slope_steps = np.concatenate((self._weight**2, -(self._weight**2)))
        self._in_box_sign = rows(1.0, -1.0)  # (lower - a, a - upper) <= 0
        self._tol_w = 1e-9 * max(float(rated.sum()), 1.0)
        self._k_soc_num = self.dt_s / 3600.0 / capacity  # SoC per pack ampere (predict)
        self._no_reasons: tuple[tuple[str, ...], ...] = ((),) * n
        self._respect_split = config.allocation == "respect_split"

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

        Written for few numpy calls (at these sizes their fixed cost dominates): the
        measured quantities as one matrix ``x``, every derived row that is affine in them
        (window slacks, SoC headroom, grid coordinates) as one ``y``, both sides of every
        pack as one ``(2, n)`` array (row 0 charge, row 1 discharge) and the envelope rows
        of all packs in one gather.
        """
        n = self.n_packs
        if len(state.soc) != n:
            raise ValueError(f"state has {state.n_packs} packs, the shield {n}")
        x = np.concatenate(
            (
                state.soc,
                state.temperature_c,
                state.cell_voltage_v,
                state.soh,
                state.valid,
                state.current_a,
            ),
            dtype=np.float64,
        ).reshape(6, n)
        y = x.take(self._select, axis=0)
        y *= self._y_scale
        y += self._y_offset
        # ---- fallback: invalid or outside a window (a negative or NaN window row)
        why: list[str] | None = None
        fallback = self._no_fallback
        if not np.minimum.reduce(y[_WINDOWS], axis=None) >= 0.0:
            fallback = np.asarray(~(y[_WINDOWS] >= 0.0).all(axis=0))
            why = [self._fallback_reason(state, i) if fallback[i] else "" for i in range(n)]
            x[:, fallback] = self._x_harmless[:, fallback]
            y = x.take(self._select, axis=0)
            y *= self._y_scale
            y += self._y_offset
        # ---- envelope rows: one gather at each pack's (group, SoC, temperature) cell
        index = self._cell_index @ np.floor(y[_GRID])
        env = self._table.take(index.astype(np.intp))
        # ---- per-SoH cell current per side: voltage and C-rate (envelope), SoC headroom,
        # current limit (never < 0: a pack in the SoC margin band gets 0)
        soh = x[_X_SOH]
        inv_soh = self._one / soh
        cur = np.minimum(env[0:2], y[_HEADROOM])
        np.minimum(cur, self._current_lim * inv_soh, out=cur)
        np.maximum(cur, self._zero2, out=cur)
        # ---- temperature derating (both window rows are >= 0 here; a fallback pack's
        # value is harmless: its box is zeroed below)
        derate = np.minimum(y[_DERATE_LO], y[_DERATE_HI])
        np.minimum(derate, self._one, out=derate)
        cur *= derate
        # ---- to power, with a voltage the step never goes below: the lower of the
        # model's (lowest OCV of the step minus the drop; no drop when charging) and the
        # measurement's (the plant's source voltage is at least the measured one, less
        # the drop of a previous charge current: e_low).
        e_low = np.minimum(y[_CELL_CURRENT], self._zero)
        e_low *= env[R_MAX]
        e_low *= inv_soh
        e_low += x[_X_VOLT]
        drop = env[R_NONE : R_DISCHARGE + 1] * cur
        volt = np.minimum(env[OCV_CHARGE : OCV_DISCHARGE + 1], e_low)
        volt -= drop
        cur *= soh
        box = cur * volt
        box *= self._power_scale
        np.maximum(box, self._box_lo, out=box)
        np.minimum(box, self._box_hi, out=box)
        if why is not None:
            box[:, fallback] = 0.0
        return _Stage1(box, fallback, why, y, env, inv_soh, derate)

    def _limit_names(self, stage: _Stage1) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Binding limit name of each pack's lower and upper bound."""
        y, env = stage.y, stage.envelope
        lower, upper = stage.box
        # argmin over (current, C-rate, SoC, voltage) per side: 0 charge, 1 discharge. The
        # envelope value is the C-rate cap unless the voltage binds (a tie names C-rate).
        current = self._current_lim * stage.inv_soh
        rows = [
            np.stack(
                (current[side], self._current_cap, y[_HEADROOM][side], env[X_CHARGE + side])
            ).argmin(axis=0)
            for side in (0, 1)
        ]
        derated = stage.derate < 1.0
        hot = y[_DERATE_HI] <= y[_DERATE_LO]
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
            ("soh", float(state.soh[i]), _SOH_MIN, _SOH_MAX),
            ("current", float(state.current_a[i]), -math.inf, math.inf),
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

        With ``settings.allocation == "respect_split"`` each pack is clipped into its
        admissible interval instead (no power moves between packs) and ``shortfall_w``
        is the target minus the clipped total.

        Args:
            state: The measured fleet state.
            action: Requested normalised set-points, shape ``(n_packs,)``.
            target_power_w: Fleet power to deliver [W] (demand tracking); by default the
                requested action's own total. With ``"respect_split"`` it only sets the
                reported shortfall.

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
        in_box = np.maximum.reduce(gap * self._in_box_sign, axis=None) <= 0.0
        request = raw
        if not in_box and not np.abs(raw).max() <= 1.0:  # also True on NaN
            flags |= _INVALID_ACTION
            request = np.clip(np.nan_to_num(raw, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
            gap = box - request
            in_box = np.maximum.reduce(gap * self._in_box_sign, axis=None) <= 0.0
        own = float(self._weight @ request)
        if target_power_w is None:
            target = own
        elif math.isfinite(target_power_w):
            target = float(target_power_w) / self._w_scale
        else:
            flags |= _INVALID_ACTION
            target = own
        if in_box and (self._respect_split or abs(own - target) * self._w_scale <= self._tol_w):
            # Already admissible (with the asked total, unless the split is kept): the
            # identity (no projection).
            if request is raw:
                out = raw.copy()
                intervened = np.zeros(n, dtype=bool)
            else:
                out = request
                intervened = out != raw
            reached = own if self._respect_split else target
        elif self._respect_split:
            # Keep the split: clip each pack into its interval, move no power elsewhere.
            out = np.minimum(np.maximum(request, box[0]), box[1])
            reached = float(self._weight @ out)
            intervened = out != raw
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

        return ShieldResult(  # positional: the cheapest construction
            out,
            intervened,
            _STATUSES[flags],
            float(shortfall_w),
            box[0],
            box[1],
            target * self._w_scale,
            stage.fallback,
            explain,
        )

    def _project_box(
        self, request: FloatArray, box: FloatArray, gap: FloatArray, target: float
    ) -> tuple[FloatArray, float]:
        """:func:`project_box_hyperplane` on the shield's box, with ``gap = box − request``."""
        weight = self._weight
        lower, upper = box[0], box[1]
        t_min, t_max = (box @ weight).tolist()
        if target <= t_min:
            return lower.copy(), t_min
        if target >= t_max:
            return upper.copy(), t_max
        # Breakpoints where each coordinate leaves its lower / reaches its upper bound.
        breakpoints = (gap * self._inv_weight).ravel()
        lam = breakpoint_multiplier(breakpoints, self._slope_steps, target - t_min)
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
