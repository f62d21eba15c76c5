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
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pulsebms.core.types import FloatArray

__all__ = [
    "DIRECTIONS",
    "CellModel",
    "UniformGrid",
    "default_tables_path",
]


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

    @classmethod
    def shipped(cls) -> CellModel:
        """The shipped tables, loaded once per process and shared (do not modify).

        Sharing one instance lets shields reuse the envelope tables cached per model.

        Returns:
            The model.
        """
        return _shipped_model()

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


@cache
def _shipped_model() -> CellModel:
    return CellModel.load()


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
