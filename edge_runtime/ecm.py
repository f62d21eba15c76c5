"""One-RC equivalent-circuit model of a cell per chemistry, from shipped tables (numpy only).

The tables (``edge_runtime/data/ecm_<chemistry>.json``) are written by
``python -m pulsebms.envs.estimation_tables`` from the project's PyBaMM parameter sets: the
same circuit as the fleet twin's ECM fidelity. Per chemistry:

* ``OCV(SoC)`` at 25 °C, piecewise linear on a uniform SoC grid (the open-circuit voltage's
  small entropic temperature dependence is not modelled);
* ``R0``, ``R1``, ``τ`` bilinear in (temperature, SoC), clamped to the grid's edges
  (−10 … 60 °C, SoC 10 … 90 %);
* optionally an **asymmetry** ``A`` on (temperature, SoC) [Ω] (``asymmetry_ohm``; zero where
  absent): half the difference between the charge and the discharge pulse resistances of
  the fit, a voltage ``A·|I|`` the same for both directions (an SPM's surface
  concentration sits on a curved OCV: its overpotential is not odd in the current);
* optionally an R0 **rate factor** on (temperature, C-rate) (``rate_c``, a uniform C-rate
  grid, and ``r0_rate_factor``; 1 where absent): R0 fitted at each C-rate over R0 at C/2
  (the charge-transfer overpotential is not linear in the current);
* optionally a **model error** per ampere of cell current, piecewise linear in SoC
  (``model_error_soc``, ``model_error_ohm``; zero where absent): how far the circuit's
  voltage may be from the cell's under current, where the circuit is known to be poor
  (an LFP cell's solid diffusion at low SoC and on its plateau). The estimator adds it to
  its measurement noise.

The cell (+ = discharge, current ``I`` held over a step of ``dt``)::

    SoC'  = SoC − I·dt / (3600·Q)
    v_rc' = v_rc·exp(−dt/τ) + R1·(1 − exp(−dt/τ))·I
    V     = OCV(SoC) − v_rc − R0·f(|I|/Q)·I + A·|I|

Example:
    >>> cell = EcmCell.load("NMC")
    >>> round(float(cell.ocv_v(1.0)), 3)
    4.2
    >>> r0, r1, tau = cell.circuit(0.5, 25.0)
    >>> 0.01 < r0 < 0.05
    True
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from pulsebms.core.types import FloatArray

__all__ = ["CHEMISTRIES_WITH_TABLES", "EcmCell", "default_table_path"]

CHEMISTRIES_WITH_TABLES = ("LFP", "NMC", "LCO")
"""Chemistries whose circuit tables ship with the package."""

_FORMAT_VERSION = 1


def default_table_path(chemistry: str) -> Path:
    """The shipped table of ``chemistry``: ``data/ecm_<chemistry>.json`` next to this module."""
    return Path(__file__).resolve().parent / "data" / f"ecm_{chemistry.lower()}.json"


def _uniform(points: FloatArray, name: str) -> tuple[float, float, int]:
    steps = np.diff(points)
    if points.size < 2 or np.any(steps <= 0) or not np.allclose(steps, steps[0], rtol=1e-9):
        raise ValueError(f"{name} must be a uniform increasing grid")
    return float(points[0]), float(steps[0]), int(points.size)


@dataclass(frozen=True)
class EcmCell:
    """The one-RC circuit of one chemistry's cell (see the module docstring).

    Attributes:
        chemistry: Chemistry name.
        capacity_ah: Cell capacity the SoC refers to [A.h].
        voltage_min_v: Lower cell voltage cut-off [V].
        voltage_max_v: Upper cell voltage cut-off [V].
        soc_grid: Uniform SoC grid of the OCV table.
        ocv_table_v: OCV on ``soc_grid`` [V].
        circuit_soc: Uniform SoC grid of the circuit tables.
        circuit_temperature_c: Uniform temperature grid of the circuit tables [°C].
        r0_ohm: R0 on (temperature, SoC) [Ω].
        r1_ohm: R1 on (temperature, SoC) [Ω].
        tau_s: τ on (temperature, SoC) [s].
        asymmetry_ohm: Asymmetry ``A`` on (temperature, SoC) [Ω] (empty: none).
        rate_c: Uniform C-rate grid of the rate factor (empty: none).
        r0_rate_factor: R0 factor ``f`` on (temperature, ``rate_c``) (empty: none).
        model_error_soc: Increasing SoC points of the model-error table (empty: none).
        model_error_ohm: Model error per ampere of cell current on ``model_error_soc`` [Ω].
    """

    chemistry: str
    capacity_ah: float
    voltage_min_v: float
    voltage_max_v: float
    soc_grid: FloatArray
    ocv_table_v: FloatArray
    circuit_soc: FloatArray
    circuit_temperature_c: FloatArray
    r0_ohm: FloatArray
    r1_ohm: FloatArray
    tau_s: FloatArray
    asymmetry_ohm: FloatArray = field(default_factory=lambda: np.zeros(0))
    rate_c: FloatArray = field(default_factory=lambda: np.zeros(0))
    r0_rate_factor: FloatArray = field(default_factory=lambda: np.zeros(0))
    model_error_soc: FloatArray = field(default_factory=lambda: np.zeros(0))
    model_error_ohm: FloatArray = field(default_factory=lambda: np.zeros(0))
    _ocv_list: list[float] = field(init=False, repr=False, compare=False)
    _slope_list: list[float] = field(init=False, repr=False, compare=False)
    _soc_axis: tuple[float, float, int] = field(init=False, repr=False, compare=False)
    _c_axis: tuple[float, float, int] = field(init=False, repr=False, compare=False)
    _t_axis: tuple[float, float, int] = field(init=False, repr=False, compare=False)
    _circuit_lists: tuple[list[list[float]], ...] = field(init=False, repr=False, compare=False)
    _error_lists: tuple[list[float], list[float]] = field(init=False, repr=False, compare=False)
    _rate_axis: tuple[float, float, int] = field(init=False, repr=False, compare=False)
    _rate_lists: list[list[float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        soc0, dsoc, n_soc = _uniform(self.soc_grid, "soc_grid")
        c0, dc, n_c = _uniform(self.circuit_soc, "circuit_soc")
        t0, dt, n_t = _uniform(self.circuit_temperature_c, "circuit_temperature_c")
        if self.ocv_table_v.shape != (n_soc,):
            raise ValueError("ocv_v must match soc_grid")
        for name in ("r0_ohm", "r1_ohm", "tau_s"):
            arr = getattr(self, name)
            if arr.shape != (n_t, n_c) or not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must be finite with shape ({n_t}, {n_c})")
        if self.asymmetry_ohm.size and (
            self.asymmetry_ohm.shape != (n_t, n_c) or not np.all(np.isfinite(self.asymmetry_ohm))
        ):
            raise ValueError(f"asymmetry_ohm must be finite with shape ({n_t}, {n_c})")
        if self.rate_c.size or self.r0_rate_factor.size:
            rate_axis = _uniform(self.rate_c, "rate_c")
            if self.r0_rate_factor.shape != (n_t, rate_axis[2]) or not np.all(
                np.isfinite(self.r0_rate_factor) & (self.r0_rate_factor > 0)
            ):
                raise ValueError(f"r0_rate_factor must be finite, > 0, shape ({n_t}, n_rates)")
            rate_lists = [[float(v) for v in row] for row in self.r0_rate_factor]
        else:
            rate_axis, rate_lists = (0.0, 1.0, 2), [[1.0, 1.0] for _ in range(n_t)]
        object.__setattr__(self, "_rate_axis", rate_axis)
        object.__setattr__(self, "_rate_lists", rate_lists)
        if np.any(self.tau_s <= 0) or np.any(self.r0_ohm < 0) or np.any(self.r1_ohm < 0):
            raise ValueError("circuit tables must have R0, R1 >= 0 and tau > 0")
        if self.model_error_soc.shape != self.model_error_ohm.shape or (
            self.model_error_soc.ndim != 1
            or np.any(np.diff(self.model_error_soc) <= 0)
            or not np.all(np.isfinite(self.model_error_ohm))
            or np.any(self.model_error_ohm < 0)
        ):
            raise ValueError("model error must be >= 0 on an increasing SoC grid of its size")
        slope = np.gradient(self.ocv_table_v, self.soc_grid)
        object.__setattr__(
            self,
            "_error_lists",
            ([float(v) for v in self.model_error_soc], [float(v) for v in self.model_error_ohm]),
        )
        # Plain Python lists/floats for the scalar hot path (numpy scalars are slower).
        object.__setattr__(self, "_ocv_list", [float(v) for v in self.ocv_table_v])
        object.__setattr__(self, "_slope_list", [float(v) for v in slope])
        object.__setattr__(self, "_soc_axis", (soc0, dsoc, n_soc))
        object.__setattr__(self, "_c_axis", (c0, dc, n_c))
        object.__setattr__(self, "_t_axis", (t0, dt, n_t))
        asymmetry = self.asymmetry_ohm if self.asymmetry_ohm.size else np.zeros((n_t, n_c))
        tables = (self.r0_ohm, self.r1_ohm, self.tau_s, asymmetry)
        lists = tuple([[float(v) for v in row] for row in a] for a in tables)
        object.__setattr__(self, "_circuit_lists", lists)

    @classmethod
    def load(cls, chemistry: str, path: Path | None = None) -> EcmCell:
        """Read a chemistry's table (the shipped one unless ``path`` is given).

        Args:
            chemistry: Chemistry name (case-insensitive).
            path: A JSON table written by ``python -m pulsebms.envs.estimation_tables``.

        Returns:
            The cell model.

        Raises:
            ValueError: If there is no table for the chemistry or it is malformed.
        """
        if path is None:
            return _shipped(chemistry.upper())
        return _read(path, chemistry.upper())

    # ------------------------------------------------------------------ scalar hot path
    @staticmethod
    def _locate(x: float, axis: tuple[float, float, int]) -> tuple[int, float]:
        start, step, size = axis
        u = (x - start) / step
        u = min(max(u, 0.0), size - 1.0)
        j = min(int(u), size - 2)
        return j, u - j

    def ocv_and_slope(self, soc: float) -> tuple[float, float]:
        """OCV [V] and dOCV/dSoC [V] at ``soc`` (clamped to the grid), as floats."""
        j, w = self._locate(soc, self._soc_axis)
        ocv = self._ocv_list
        slope = self._slope_list
        return (
            ocv[j] + (ocv[j + 1] - ocv[j]) * w,
            slope[j] + (slope[j + 1] - slope[j]) * w,
        )

    def circuit(self, soc: float, temperature_c: float) -> tuple[float, float, float]:
        """R0 [Ω], R1 [Ω], τ [s] at (``soc``, ``temperature_c``), bilinear and clamped."""
        r0, r1, tau, _ = self.circuit_and_asymmetry(soc, temperature_c)
        return r0, r1, tau

    def circuit_and_asymmetry(
        self, soc: float, temperature_c: float
    ) -> tuple[float, float, float, float]:
        """R0 [Ω], R1 [Ω], τ [s] and the asymmetry A [Ω], bilinear and clamped."""
        js, ws = self._locate(soc, self._c_axis)
        jt, wt = self._locate(temperature_c, self._t_axis)
        out = []
        for table in self._circuit_lists:
            lo, hi = table[jt], table[jt + 1]
            a = lo[js] + (lo[js + 1] - lo[js]) * ws
            b = hi[js] + (hi[js + 1] - hi[js]) * ws
            out.append(a + (b - a) * wt)
        return out[0], out[1], out[2], out[3]

    def rate_factor(self, c_rate: float, temperature_c: float) -> float:
        """R0 factor ``f`` at ``c_rate`` (absolute) and ``temperature_c`` (1 without a table)."""
        jr, wr = self._locate(c_rate, self._rate_axis)
        jt, wt = self._locate(temperature_c, self._t_axis)
        lo, hi = self._rate_lists[jt], self._rate_lists[jt + 1]
        a = lo[jr] + (lo[jr + 1] - lo[jr]) * wr
        b = hi[jr] + (hi[jr + 1] - hi[jr]) * wr
        return a + (b - a) * wt

    def model_error_ohm_at(self, soc: float) -> float:
        """Model error per ampere of cell current at ``soc`` [Ω] (0 without a table)."""
        points, values = self._error_lists
        if not points:
            return 0.0
        if soc <= points[0]:
            return values[0]
        if soc >= points[-1]:
            return values[-1]
        j = 0
        while points[j + 1] < soc:
            j += 1
        w = (soc - points[j]) / (points[j + 1] - points[j])
        return values[j] + (values[j + 1] - values[j]) * w

    # ------------------------------------------------------------------ arrays
    def ocv_v(self, soc: FloatArray | float) -> FloatArray:
        """Open-circuit voltage at ``soc`` [V] (vectorised, clamped to the grid)."""
        return np.asarray(np.interp(soc, self.soc_grid, self.ocv_table_v), dtype=np.float64)

    def soc_from_ocv(self, voltage_v: float) -> float:
        """The lowest SoC whose OCV reaches ``voltage_v`` (OCV is non-decreasing; clamped)."""
        ocv = self.ocv_table_v
        if not math.isfinite(voltage_v):
            raise ValueError(f"voltage_v must be finite, got {voltage_v}")
        monotone = np.maximum.accumulate(ocv)
        return float(np.clip(np.interp(voltage_v, monotone, self.soc_grid), 0.0, 1.0))


def _read(path: Path, chemistry: str) -> EcmCell:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the circuit table {path}: {exc}") from exc
    if raw.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {raw.get('format_version')!r}, expected {_FORMAT_VERSION}"
        )
    if str(raw.get("chemistry", "")).upper() != chemistry:
        raise ValueError(f"{path} holds chemistry {raw.get('chemistry')!r}, not {chemistry!r}")
    try:
        return EcmCell(
            chemistry=chemistry,
            capacity_ah=float(raw["capacity_ah"]),
            voltage_min_v=float(raw["voltage_min_v"]),
            voltage_max_v=float(raw["voltage_max_v"]),
            soc_grid=np.asarray(raw["soc_grid"], dtype=np.float64),
            ocv_table_v=np.asarray(raw["ocv_v"], dtype=np.float64),
            circuit_soc=np.asarray(raw["circuit_soc"], dtype=np.float64),
            circuit_temperature_c=np.asarray(raw["circuit_temperature_c"], dtype=np.float64),
            r0_ohm=np.asarray(raw["r0_ohm"], dtype=np.float64),
            r1_ohm=np.asarray(raw["r1_ohm"], dtype=np.float64),
            tau_s=np.asarray(raw["tau_s"], dtype=np.float64),
            asymmetry_ohm=np.asarray(raw.get("asymmetry_ohm", []), dtype=np.float64),
            rate_c=np.asarray(raw.get("rate_c", []), dtype=np.float64),
            r0_rate_factor=np.asarray(raw.get("r0_rate_factor", []), dtype=np.float64),
            model_error_soc=np.asarray(raw.get("model_error_soc", []), dtype=np.float64),
            model_error_ohm=np.asarray(raw.get("model_error_ohm", []), dtype=np.float64),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed circuit table: {exc}") from exc


@cache
def _shipped(chemistry: str) -> EcmCell:
    path = default_table_path(chemistry)
    if not path.is_file():
        raise ValueError(
            f"no circuit table for chemistry {chemistry!r} (shipped: {CHEMISTRIES_WITH_TABLES})"
        )
    return _read(path, chemistry)
