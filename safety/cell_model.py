"""One-step cell model per chemistry, from tables (numpy only).

The tables (``safety/data/cell_tables.json``) are written by
``python -m pulsebms.envs.cell_tables`` from the PyBaMM parameter sets; see that module
for how they are made. In short, per chemistry:

* ``OCV(SoC)``: open-circuit voltage of one cell, ``U_p(y(SoC)) − U_n(x(SoC))`` over the
  parameter set's stoichiometry window, on a uniform SoC grid (piecewise linear here);
* ``R(t, SoC, T)``, one table per direction (discharge, charge): effective resistance
  **fitted from constant-current pulses on the SPMe** of duration ``t`` from rest, i.e.
  the ohmic, kinetic and diffusion overpotential a step of length ``t`` builds up,
  divided by the current. It is interpolated linearly in ``log t`` (clamped to the
  duration grid), then bilinearly in SoC and temperature (clamped to the grid: outside
  it the edge value is used).

The model of one step of length ``dt_s`` at constant cell current ``I`` (+ = discharge) is::

    SoC_end = SoC − I·dt_s / (3600·Q)        (Q: present cell capacity [A.h])
    V_end   = OCV(SoC_end) − R(dt_s, SoC, T)·I     (R of the current's direction)

Example:
    >>> model = CellModel.load()
    >>> round(float(model.ocv_v("NMC", 1.0)), 3)
    4.2
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DIRECTIONS",
    "CellModel",
    "FleetCellModel",
    "ResistanceRows",
    "UniformGrid",
    "default_tables_path",
]

FloatArray = NDArray[np.float64]

_OCV_PAD = 2
"""Cells appended to each signed OCV block (see :meth:`FleetCellModel.signed_ocv_bound`)."""

DIRECTIONS: tuple[str, str] = ("discharge", "charge")
"""Current directions with their own resistance table."""


def default_tables_path() -> Path:
    """The shipped tables: ``cell_tables.json`` next to this module in ``data/``."""
    return Path(__file__).resolve().parent / "data" / "cell_tables.json"


@dataclass(frozen=True)
class UniformGrid:
    """A uniform 1-D grid ``start + step·k``, ``k = 0 … size − 1``.

    Attributes:
        start: First point.
        step: Spacing (> 0).
        size: Number of points (≥ 2).
    """

    start: float
    step: float
    size: int

    @classmethod
    def from_points(cls, points: Sequence[float], name: str) -> UniformGrid:
        """Check that ``points`` are uniform and return the grid.

        Args:
            points: Grid points, increasing.
            name: Name used in the error message.

        Returns:
            The grid.

        Raises:
            ValueError: If the points are fewer than 2 or not uniformly spaced.
        """
        arr = np.asarray(points, dtype=np.float64)
        if arr.ndim != 1 or arr.size < 2:
            raise ValueError(f"{name} needs at least 2 points, got {arr.size}")
        step = float((arr[-1] - arr[0]) / (arr.size - 1))
        if not step > 0 or not np.allclose(np.diff(arr), step, rtol=1e-6, atol=1e-9):
            raise ValueError(f"{name} must be uniformly spaced and increasing, got {arr}")
        return cls(float(arr[0]), step, int(arr.size))

    def locate(self, x: FloatArray) -> tuple[NDArray[np.intp], FloatArray]:
        """Cell index and fraction of each ``x`` (clamped to the grid).

        Args:
            x: Points (finite).

        Returns:
            ``(k, f)`` with ``x ≈ start + step·(k + f)``, ``0 ≤ k ≤ size − 2``,
            ``0 ≤ f ≤ 1``.
        """
        # np.minimum/np.maximum: several times faster than np.clip on small arrays.
        u = np.minimum(np.maximum((x - self.start) * (1.0 / self.step), 0.0), self.size - 1.0)
        k = np.minimum(u.astype(np.intp), self.size - 2)
        return k, u - k


def _log_duration_weights(duration_grid_s: FloatArray, dt_s: float) -> tuple[int, float]:
    """Index and weight to interpolate linearly in log duration (clamped)."""
    logs = np.log(duration_grid_s)
    x = math.log(dt_s)
    if x <= logs[0]:
        return 0, 0.0
    if x >= logs[-1]:
        return int(logs.size - 2), 1.0
    k = int(np.searchsorted(logs, x, side="right") - 1)
    return k, float((x - logs[k]) / (logs[k + 1] - logs[k]))


class CellModel:
    """OCV and resistance tables of every chemistry, with one-step predictions.

    Args:
        tables: The parsed JSON document (see :mod:`pulsebms.envs.cell_tables`).

    Raises:
        ValueError: If the document is malformed (missing keys, bad shapes, non-uniform
            grids, non-finite or non-positive values, OCV not increasing).
    """

    def __init__(self, tables: Mapping[str, Any]) -> None:
        try:
            self.ocv_grid = UniformGrid.from_points(tables["ocv_soc_grid"], "ocv_soc_grid")
            self.soc_grid = UniformGrid.from_points(
                tables["resistance_soc_grid"], "resistance_soc_grid"
            )
            self.temperature_grid = UniformGrid.from_points(
                tables["temperature_grid_c"], "temperature_grid_c"
            )
            self.duration_grid_s = np.asarray(tables["duration_grid_s"], dtype=np.float64)
            chems = tables["chemistries"]
            self._ocv: dict[str, FloatArray] = {}
            self._resistance: dict[tuple[str, str], FloatArray] = {}
            self._capacity_ah: dict[str, float] = {}
            for name, entry in chems.items():
                key = str(name).upper()
                self._ocv[key] = np.asarray(entry["ocv_v"], dtype=np.float64)
                for direction in DIRECTIONS:
                    self._resistance[key, direction] = np.asarray(
                        entry[f"resistance_{direction}_ohm"], dtype=np.float64
                    )
                self._capacity_ah[key] = float(entry["capacity_ah"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed cell tables: missing or bad entry {exc}") from None
        if self.duration_grid_s.ndim != 1 or self.duration_grid_s.size < 2:
            raise ValueError("duration_grid_s needs at least 2 points")
        if not (np.all(self.duration_grid_s > 0) and np.all(np.diff(self.duration_grid_s) > 0)):
            raise ValueError("duration_grid_s must be positive and increasing")
        shape = (self.duration_grid_s.size, self.soc_grid.size, self.temperature_grid.size)
        for name in self._ocv:
            ocv = self._ocv[name]
            if ocv.shape != (self.ocv_grid.size,) or not np.all(np.isfinite(ocv)):
                raise ValueError(f"{name}: ocv_v must be {self.ocv_grid.size} finite values")
            if not np.all(np.diff(ocv) > 0):
                raise ValueError(f"{name}: ocv_v must increase with SoC")
            for direction in DIRECTIONS:
                res = self._resistance[name, direction]
                if res.shape != shape or not np.all(np.isfinite(res)) or not np.all(res > 0):
                    raise ValueError(
                        f"{name}: resistance_{direction}_ohm must be {shape} positive finite values"
                    )
            if not self._capacity_ah[name] > 0:
                raise ValueError(f"{name}: capacity_ah must be > 0")

    @classmethod
    def load(cls, path: str | Path | None = None) -> CellModel:
        """Load the tables from a JSON file.

        Args:
            path: The file; the shipped ``safety/data/cell_tables.json`` when None.

        Returns:
            The model.
        """
        file = Path(path) if path is not None else default_tables_path()
        return cls(json.loads(file.read_text(encoding="utf-8")))

    @property
    def chemistries(self) -> tuple[str, ...]:
        """Chemistries in the tables."""
        return tuple(sorted(self._ocv))

    def _key(self, chemistry: str) -> str:
        key = chemistry.strip().upper()
        if key not in self._ocv:
            raise ValueError(
                f"no cell tables for chemistry {chemistry!r}; known: {', '.join(self.chemistries)}"
            )
        return key

    def capacity_ah(self, chemistry: str) -> float:
        """Cell capacity between the 0 % and 100 % OCV points [A.h] (the SoC reference)."""
        return self._capacity_ah[self._key(chemistry)]

    def ocv_v(self, chemistry: str, soc: ArrayLike) -> FloatArray:
        """Open-circuit voltage of one cell [V] (SoC clamped to [0, 1]).

        Args:
            chemistry: Chemistry name.
            soc: State of charge, fraction.

        Returns:
            OCV, same shape as ``soc``.
        """
        table = self._ocv[self._key(chemistry)]
        k, f = self.ocv_grid.locate(np.asarray(soc, dtype=np.float64))
        return np.asarray(table[k] * (1.0 - f) + table[k + 1] * f, dtype=np.float64)

    def resistance_table_ohm(
        self, chemistry: str, duration_s: float, direction: str = "discharge"
    ) -> FloatArray:
        """The resistance table at one step length, shape ``(n_soc, n_temperature)`` [Ω].

        Args:
            chemistry: Chemistry name.
            duration_s: Step length [s] (> 0); interpolated in log duration, clamped.
            direction: ``"discharge"`` or ``"charge"``.

        Returns:
            The table on :attr:`soc_grid` × :attr:`temperature_grid`.

        Raises:
            ValueError: If ``duration_s`` is not finite and positive, or on an unknown
                direction.
        """
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"duration_s must be finite and > 0, got {duration_s}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        res = self._resistance[self._key(chemistry), direction]
        k, w = _log_duration_weights(self.duration_grid_s, duration_s)
        return np.asarray(res[k] * (1.0 - w) + res[k + 1] * w, dtype=np.float64)

    def resistance_ohm(
        self,
        chemistry: str,
        soc: ArrayLike,
        temperature_c: ArrayLike,
        duration_s: float = 10.0,
        direction: str = "discharge",
    ) -> FloatArray:
        """Effective resistance of one cell over a step of ``duration_s`` [Ω].

        Args:
            chemistry: Chemistry name.
            soc: State of charge at the start of the step, fraction.
            temperature_c: Cell temperature [°C].
            duration_s: Step length [s].
            direction: ``"discharge"`` or ``"charge"``.

        Returns:
            Resistance, broadcast shape of ``soc`` and ``temperature_c``.
        """
        table = self.resistance_table_ohm(chemistry, duration_s, direction)
        s, t = np.broadcast_arrays(
            np.asarray(soc, dtype=np.float64), np.asarray(temperature_c, dtype=np.float64)
        )
        return _bilinear(table, self.soc_grid, self.temperature_grid, s, t)

    def terminal_voltage_v(
        self,
        chemistry: str,
        soc: ArrayLike,
        temperature_c: ArrayLike,
        cell_current_a: ArrayLike,
        duration_s: float = 10.0,
        capacity_ah: float | None = None,
    ) -> FloatArray:
        """Predicted cell terminal voltage at the end of a constant-current step [V].

        Args:
            chemistry: Chemistry name.
            soc: State of charge at the start, fraction.
            temperature_c: Cell temperature [°C].
            cell_current_a: Cell current [A], + = discharge.
            duration_s: Step length [s].
            capacity_ah: Present cell capacity [A.h]; the table's when None.

        Returns:
            ``OCV(SoC_end) − R·I``.
        """
        q = self.capacity_ah(chemistry) if capacity_ah is None else capacity_ah
        i = np.asarray(cell_current_a, dtype=np.float64)
        soc0 = np.asarray(soc, dtype=np.float64)
        soc_end = soc0 - i * duration_s / 3600.0 / q
        r_dis = self.resistance_ohm(chemistry, soc0, temperature_c, duration_s, "discharge")
        r_chg = self.resistance_ohm(chemistry, soc0, temperature_c, duration_s, "charge")
        r = np.where(i >= 0, r_dis, r_chg)
        return np.asarray(self.ocv_v(chemistry, soc_end) - r * i, dtype=np.float64)

    def current_for_voltage_a(
        self,
        chemistry: str,
        soc: ArrayLike,
        temperature_c: ArrayLike,
        voltage_v: ArrayLike,
        duration_s: float = 10.0,
    ) -> FloatArray:
        """Cell current whose resistive drop reaches ``voltage_v`` (closed form) [A].

        Uses the OCV at the *start* of the step: ``I = (OCV(SoC) − V) / R``. The shield
        accounts for the SoC moving during the step separately (see
        :class:`pulsebms.safety.shield.Shield`).

        Args:
            chemistry: Chemistry name.
            soc: State of charge, fraction.
            temperature_c: Cell temperature [°C].
            voltage_v: Target terminal voltage [V].
            duration_s: Step length [s].

        Returns:
            Current [A], + = discharge (a voltage above OCV gives a charge current).
        """
        ocv = self.ocv_v(chemistry, soc)
        gap = ocv - np.asarray(voltage_v, dtype=np.float64)
        r_dis = self.resistance_ohm(chemistry, soc, temperature_c, duration_s, "discharge")
        r_chg = self.resistance_ohm(chemistry, soc, temperature_c, duration_s, "charge")
        return np.asarray(gap / np.where(gap >= 0, r_dis, r_chg), dtype=np.float64)

    def for_fleet(
        self,
        chemistry: Sequence[str],
        duration_s: float,
        *,
        ocv_step: float = 1e-3,
        resistance_soc_step: float = 0.01,
        resistance_temperature_step_c: float = 1.0,
    ) -> FleetCellModel:
        """Conservative per-pack look-ups for a fleet (see :class:`FleetCellModel`).

        Args:
            chemistry: Chemistry per pack.
            duration_s: Step length [s] the resistances are taken at.
            ocv_step: SoC step of the OCV bound tables.
            resistance_soc_step: SoC step of the resistance bound table; it must divide
                the table's SoC step.
            resistance_temperature_step_c: Temperature step of the resistance bound
                table [°C]; it must divide the table's temperature step.

        Returns:
            The fleet model.
        """
        return FleetCellModel(
            self,
            chemistry,
            duration_s,
            ocv_step=ocv_step,
            resistance_soc_step=resistance_soc_step,
            resistance_temperature_step_c=resistance_temperature_step_c,
        )


def _bilinear(
    table: FloatArray, sg: UniformGrid, tg: UniformGrid, s: FloatArray, t: FloatArray
) -> FloatArray:
    i, f = sg.locate(s)
    j, g = tg.locate(t)
    r00 = table[i, j]
    r01 = table[i, j + 1]
    r10 = table[i + 1, j]
    r11 = table[i + 1, j + 1]
    return np.asarray(
        (r00 * (1.0 - g) + r01 * g) * (1.0 - f) + (r10 * (1.0 - g) + r11 * g) * f,
        dtype=np.float64,
    )


class FleetCellModel:
    """Bounds of OCV and resistance for every pack of a fleet, in a few numpy operations.

    For speed on the shield's decision path, the tables are resampled once onto fine
    uniform grids as **conservative cell-wise bounds**, so that a look-up is one gather
    (no interpolation):

    * OCV: on each SoC cell ``[s_k, s_k+1]`` of step ``ocv_step`` the lower bound is
      ``OCV(s_k)`` and the upper bound ``OCV(s_k+1)`` (the OCV increases with SoC); the
      error is at most the OCV rise over one step, always on the safe side;
    * resistance: on each (SoC, temperature) cell the maximum of the bilinear
      interpolant, i.e. of its four corners (the fine grid is aligned with the tables'
      grid, so the bilinear interpolant is bilinear on each fine cell).

    The shield's decision path uses two variants that give the same numbers in fewer
    numpy calls: :meth:`signed_ocv_bound` (both sides signed in one padded table, no
    clamp) and :meth:`resistance_bounds_at` (several tables per pack in one gather).

    Args:
        model: The tables.
        chemistry: Chemistry per pack.
        duration_s: Step length [s] the resistances are taken at.
        ocv_step: SoC step of the OCV bound tables.
        resistance_soc_step: SoC step of the resistance bound table.
        resistance_temperature_step_c: Temperature step of the resistance bound table.

    Raises:
        ValueError: If a fine step does not divide the tables' step.
    """

    def __init__(
        self,
        model: CellModel,
        chemistry: Sequence[str],
        duration_s: float,
        *,
        ocv_step: float = 1e-3,
        resistance_soc_step: float = 0.01,
        resistance_temperature_step_c: float = 1.0,
    ) -> None:
        chems = sorted({c.strip().upper() for c in chemistry})
        index = {c: i for i, c in enumerate(chems)}
        pack_chem = np.array([index[c.strip().upper()] for c in chemistry], dtype=np.intp)
        # OCV bounds: rows of [lower bounds (n_cells), upper bounds (n_cells)] per chemistry.
        n_ocv = round(1.0 / ocv_step)
        s = np.linspace(0.0, 1.0, n_ocv + 1)
        ocv_rows = []
        for c in chems:
            v = model.ocv_v(c, s)
            ocv_rows.append(np.concatenate((v[:-1], v[1:])))
        self._ocv = np.concatenate(ocv_rows)
        self._ocv_cells = n_ocv
        self._ocv_inv_step = float(n_ocv)
        self._ocv_base = pack_chem * (2 * n_ocv)
        # The same bounds signed per side and padded for index arithmetic without clamps
        # (see signed_ocv_bound): per chemistry, [+lower bounds, −upper bounds], each block
        # extended by _OCV_PAD copies of its last cell (the value a clamp to it would give).
        signed_rows = []
        for c in chems:
            v = model.ocv_v(c, s)
            pad = np.ones(_OCV_PAD)
            signed_rows.append(np.concatenate((v[:-1], v[-2] * pad, -v[1:], -v[-1] * pad)))
        self._signed_ocv = np.concatenate(signed_rows)
        block = n_ocv + _OCV_PAD
        self._signed_ocv_base = pack_chem * (2 * block)
        self._signed_ocv_block = block
        # Resistance bounds on a fine grid aligned with the table's.
        sg, tg = model.soc_grid, model.temperature_grid
        ns = _subdivisions(sg.step, resistance_soc_step, "resistance_soc_step")
        nt = _subdivisions(tg.step, resistance_temperature_step_c, "resistance_temperature_step_c")
        soc_f = sg.start + sg.step * np.arange((sg.size - 1) * ns + 1) / ns
        temp_f = tg.start + tg.step * np.arange((tg.size - 1) * nt + 1) / nt
        grid_s, grid_t = np.meshgrid(soc_f, temp_f, indexing="ij")
        res_rows = []
        for direction in DIRECTIONS:  # all discharge rows, then all charge rows
            for c in chems:
                r = model.resistance_ohm(c, grid_s, grid_t, duration_s, direction)
                cell_max = np.maximum(
                    np.maximum(r[:-1, :-1], r[1:, :-1]), np.maximum(r[:-1, 1:], r[1:, 1:])
                )
                res_rows.append(cell_max.ravel())
        # then the larger of the two directions, cell by cell ("max", see resistance_rows)
        res_rows.extend(
            np.maximum(d, c)
            for d, c in zip(res_rows[: len(chems)], res_rows[len(chems) :], strict=True)
        )
        self._res = np.concatenate(res_rows)
        self._res_ns = soc_f.size - 1
        self._res_nt = temp_f.size - 1
        self._res_s0 = float(soc_f[0])
        self._res_s_inv = 1.0 / (sg.step / ns)
        self._res_t0 = float(temp_f[0])
        self._res_t_inv = 1.0 / (tg.step / nt)
        self._res_base = pack_chem * (self._res_ns * self._res_nt)
        self._res_charge_offset = len(chems) * self._res_ns * self._res_nt
        # resistance_bounds_at: constants in the full (2, n_packs) shape of its arrays
        n = len(chemistry)
        self._res_inv_step = np.repeat([[self._res_s_inv], [self._res_t_inv]], n, axis=1)
        self._res_top = np.repeat([[self._res_ns - 0.5], [self._res_nt - 0.5]], n, axis=1)
        self._res_zero = np.zeros((2, n))
        self.n_packs = len(chemistry)

    def ocv_bound_v(self, soc: FloatArray, upper: NDArray[np.intp] | int = 0) -> FloatArray:
        """Lower (``upper=0``) or upper (``upper=1``) bound of each pack's OCV [V].

        Args:
            soc: SoC, shape ``(n_packs,)`` or ``(k, n_packs)`` (clamped to [0, 1]).
            upper: 0 for the lower bound, 1 for the upper bound; an integer array
                broadcastable to ``soc`` picks per element.

        Returns:
            The bound, shape of ``soc``.
        """
        cells = self._ocv_cells
        u = np.minimum(np.maximum(soc * self._ocv_inv_step, 0.0), cells - 1.0)
        idx = u.astype(np.intp)
        idx += self._ocv_base
        if not isinstance(upper, int) or upper:
            idx += upper * cells
        return np.asarray(self._ocv[idx], dtype=np.float64)

    def signed_ocv_offsets(self) -> NDArray[np.intp]:
        """Table offsets of :meth:`signed_ocv_bound`, shape ``(2, n_packs)``.

        Returns:
            Row 0 selects the **negated upper** bound (the charge side), row 1 the lower
            bound (the discharge side).
        """
        base = self._signed_ocv_base
        return np.stack((base + self._signed_ocv_block, base))

    @property
    def ocv_cells_per_soc(self) -> float:
        """OCV bound cells per unit SoC (``1 / ocv_step``): SoC to cell position."""
        return self._ocv_inv_step

    def signed_ocv_bound(self, position: FloatArray, offsets: NDArray[np.intp]) -> FloatArray:
        """OCV bounds signed per side, in one gather: ``−upper`` or ``+lower`` [V].

        :meth:`ocv_bound_v` without its clamp (the shield's fast path). ``position`` is
        ``soc · ocv_cells_per_soc``, computed by the caller with its other operations.
        The blocks are padded beyond SoC 1 with the clamped value, and a truncation toward
        zero maps a position in ``(−1, 0)`` to cell 0 as the clamp does, so the result is
        the same for every SoC in ``(−ocv_step, 1 + 2·ocv_step)``. Outside that range it is
        wrong: the caller guarantees it (a shield's SoC stays within ``[0, 1]``).

        Args:
            position: ``soc · ocv_cells_per_soc``, any shape.
            offsets: From :meth:`signed_ocv_offsets`, broadcast to ``position``'s shape.

        Returns:
            The signed bounds, shape of ``position``.
        """
        idx = position.astype(np.intp)  # truncation toward zero
        idx += offsets
        out: FloatArray = self._signed_ocv[idx]
        return out

    def resistance_bound_ohm(
        self, soc: FloatArray, temperature_c: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """Upper bounds of each pack's effective cell resistance [Ω] (clamped to the grid).

        Args:
            soc: SoC per pack.
            temperature_c: Temperature per pack [°C].

        Returns:
            ``(discharge, charge)`` bounds per pack.
        """
        i = np.minimum(
            np.maximum((soc - self._res_s0) * self._res_s_inv, 0.0), self._res_ns - 0.5
        ).astype(np.intp)
        j = np.minimum(
            np.maximum((temperature_c - self._res_t0) * self._res_t_inv, 0.0),
            self._res_nt - 0.5,
        ).astype(np.intp)
        i *= self._res_nt
        i += j
        i += self._res_base
        return self._res[i], self._res[i + self._res_charge_offset]

    @property
    def resistance_origin(self) -> tuple[float, float]:
        """``(SoC, temperature)`` of the resistance bound grid's first cell corner."""
        return self._res_s0, self._res_t0

    def resistance_rows(self, tables: Sequence[str]) -> ResistanceRows:
        """Which bound tables :meth:`resistance_bounds_at` reads, in which order.

        Args:
            tables: Per output row ``"discharge"``, ``"charge"`` or ``"max"`` (the larger
                of the two, cell by cell).

        Returns:
            The precomputed table offsets.

        Raises:
            ValueError: On an unknown table name.
        """
        known = {"discharge": 0, "charge": 1, "max": 2}
        if unknown := set(tables) - set(known):
            raise ValueError(f"unknown resistance tables {sorted(unknown)}; known: {sorted(known)}")
        offsets = np.stack([self._res_base + known[t] * self._res_charge_offset for t in tables])
        strides = np.tile(np.array([self._res_nt, 1.0]), (len(tables), 1))
        return ResistanceRows(offsets.astype(np.float64), strides)

    def resistance_bounds_at(self, offset: FloatArray, rows: ResistanceRows) -> FloatArray:
        """:meth:`resistance_bound_ohm` from the distances to :attr:`resistance_origin`.

        Args:
            offset: Shape ``(2, n_packs)``: row 0 ``soc − origin_soc``, row 1
                ``temperature_c − origin_temperature`` (the caller computes them with other
                differences in one operation).
            rows: From :meth:`resistance_rows`: the tables to read.

        Returns:
            Shape ``(len(rows), n_packs)``: the bounds of each table [Ω].
        """
        u = offset * self._res_inv_step
        np.maximum(u, self._res_zero, out=u)
        np.minimum(u, self._res_top, out=u)  # clamped to the grid, as resistance_bound_ohm
        np.trunc(u, out=u)  # cell indices (u >= 0), as floats
        # Every row: soc index · n_t + temperature index + the table's offset. Integers
        # far below 2**53: exact in floating point, and a float matmul is the fastest.
        cell = rows.strides @ u
        cell += rows.offsets
        out: FloatArray = self._res[cell.astype(np.intp)]
        return out


class ResistanceRows(NamedTuple):
    """Table offsets for :meth:`FleetCellModel.resistance_bounds_at`."""

    offsets: FloatArray
    """``(k, n_packs)``: start of each pack's table per output row (whole numbers)."""
    strides: FloatArray
    """``(k, 2)``: index steps per SoC and temperature cell (whole numbers)."""


def _subdivisions(coarse: float, fine: float, name: str) -> int:
    """Number of fine steps per coarse step (must be a whole number)."""
    ratio = coarse / fine
    count = round(ratio)
    if count < 1 or abs(ratio - count) > 1e-9 * max(ratio, 1.0):
        raise ValueError(f"{name}={fine} must divide the table step {coarse}")
    return int(count)
