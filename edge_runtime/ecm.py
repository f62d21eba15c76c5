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
  its measurement noise;
* optionally **solid diffusion** (``electrode_soc``, ``negative_ocp_v``, ``positive_ocp_v``,
  ``negative_diffusion_s``, ``positive_diffusion_s``): each electrode's open-circuit
  potential on the cell's SoC axis and its particles' diffusion time ``τ_d = R²/D`` per
  temperature of the circuit grid. The voltage then takes each electrode's potential at its
  particles' *surface* SoC, ``SoC − δ``, where the surface-minus-average offset ``δ`` of a
  sphere under a flux is the modal sum (Crank, *The Mathematics of Diffusion*, 2nd ed.,
  §6.3; the eigenvalues ``λ_m`` are the roots of ``tan λ = λ``)::

      δ = Σ_m δ_m + w_∞·(τ_d/15)·r,      δ_m' = (w_m·(τ_d/15)·r − δ_m)·λ_m²/τ_d,
      w_m = 10/λ_m²,  w_∞ = 1 − Σ_m w_m,  r = I/(3600·Q)  (SoC per second, + = discharge)

  with :data:`DIFFUSION_EIGENVALUES` (5 modes; the faster rest is taken as instantaneous)
  and each mode stepped exactly for a current held over the step. Under a steady current
  the offset settles at ``(τ_d/15)·r``: on the LFP set's graphite (``τ_d`` ≈ 8300 s) 15 % SoC
  at 1 C, which is what bends its voltage down long before the average SoC reaches the
  end of the window. Without these fields (or where a one-RC circuit is enough) the
  voltage takes ``OCV(SoC)``.

The cell (+ = discharge, current ``I`` held over a step of ``dt``)::

    SoC'  = SoC − I·dt / (3600·Q)
    v_rc' = v_rc·exp(−dt/τ) + R1·(1 − exp(−dt/τ))·I
    V     = OCV(SoC) − v_rc − R0·f(|I|/Q)·I + A·|I|              (no diffusion tables)
    V     = U_p(SoC − δ_p) − U_n(SoC − δ_n) − v_rc − R0·f·I + A·|I|   (with them)

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

from pulsebms.core.types import FloatArray, IntArray

__all__ = [
    "CHEMISTRIES_WITH_TABLES",
    "DIFFUSION_EIGENVALUES",
    "DiffusionStep",
    "EcmCell",
    "default_table_path",
    "diffusion_step",
]

CHEMISTRIES_WITH_TABLES = ("LFP", "NMC", "LCO")
"""Chemistries whose circuit tables ship with the package."""

_FORMAT_VERSION = 1

DIFFUSION_EIGENVALUES: tuple[float, ...] = (
    20.190729,
    59.679515,
    118.899869,
    197.857786,
    296.554412,
)
"""``λ_m²`` of the slowest diffusion modes of a sphere (``λ_m`` roots of ``tan λ = λ``)."""

_MODE_WEIGHTS = tuple(10.0 / lam2 for lam2 in DIFFUSION_EIGENVALUES)
_INSTANT_WEIGHT = 1.0 - sum(_MODE_WEIGHTS)


@dataclass(frozen=True)
class DiffusionStep:
    """One electrode's diffusion modes over one step (see the module docstring).

    ``δ_m ← decay_m·δ_m + gain_m·r`` per mode, then ``δ = Σ δ_m + instant·r``, with ``r``
    the SoC rate [1/s] (+ = discharge) held over the step.

    Attributes:
        decay: ``exp(−λ_m²·dt/τ_d)`` per mode.
        gain: ``(1 − decay_m)·w_m·τ_d/15`` per mode [s].
        instant: ``w_∞·τ_d/15`` [s].
    """

    decay: tuple[float, ...]
    gain: tuple[float, ...]
    instant: float


def diffusion_step(tau_d_s: float, dt_s: float) -> DiffusionStep:
    """The modal update of one electrode's surface offset over a step of ``dt_s``.

    Args:
        tau_d_s: Diffusion time ``R²/D`` of the electrode's particles [s] (> 0).
        dt_s: Step length [s] (≥ 0).

    Returns:
        The step's decays and gains.

    Example:
        >>> step = diffusion_step(1500.0, 1e9)  # a very long step: the steady offset
        >>> round(sum(step.gain) + step.instant, 6)  # τ_d/15 per unit SoC rate
        100.0
    """
    scale = tau_d_s / 15.0
    decay = tuple(math.exp(-lam2 * dt_s / tau_d_s) for lam2 in DIFFUSION_EIGENVALUES)
    gain = tuple((1.0 - a) * w * scale for a, w in zip(decay, _MODE_WEIGHTS, strict=True))
    return DiffusionStep(decay, gain, _INSTANT_WEIGHT * scale)


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
        electrode_soc: Uniform cell-SoC grid of the electrode potentials (empty: no
            diffusion); it reaches beyond 0 … 1, where a particle surface goes under current.
        negative_ocp_v: Negative electrode potential on ``electrode_soc`` [V].
        positive_ocp_v: Positive electrode potential on ``electrode_soc`` [V].
        negative_diffusion_s: Negative particles' ``τ_d`` on ``circuit_temperature_c`` [s].
        positive_diffusion_s: Positive particles' ``τ_d`` on ``circuit_temperature_c`` [s].
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
    electrode_soc: FloatArray = field(default_factory=lambda: np.zeros(0))
    negative_ocp_v: FloatArray = field(default_factory=lambda: np.zeros(0))
    positive_ocp_v: FloatArray = field(default_factory=lambda: np.zeros(0))
    negative_diffusion_s: FloatArray = field(default_factory=lambda: np.zeros(0))
    positive_diffusion_s: FloatArray = field(default_factory=lambda: np.zeros(0))
    has_diffusion: bool = field(init=False, compare=False)
    _electrode_axis: tuple[float, float, int] = field(init=False, repr=False, compare=False)
    _electrode_lists: tuple[list[float], ...] = field(init=False, repr=False, compare=False)
    _log_diffusion: tuple[list[float], list[float]] = field(init=False, repr=False, compare=False)
    _ocv_list: list[float] = field(init=False, repr=False, compare=False)
    _slope_list: list[float] = field(init=False, repr=False, compare=False)
    _soc_axis: tuple[float, float, int] = field(init=False, repr=False, compare=False)
    _c_axis: tuple[float, float, int] = field(init=False, repr=False, compare=False)
    _t_axis: tuple[float, float, int] = field(init=False, repr=False, compare=False)
    _circuit_lists: tuple[list[list[float]], ...] = field(init=False, repr=False, compare=False)
    _error_lists: tuple[list[float], list[float]] = field(init=False, repr=False, compare=False)
    _rate_axis: tuple[float, float, int] = field(init=False, repr=False, compare=False)
    _rate_lists: list[list[float]] = field(init=False, repr=False, compare=False)
    _circuit_stack: FloatArray = field(init=False, repr=False, compare=False)
    _rate_table: FloatArray = field(init=False, repr=False, compare=False)
    _ocv_stack: FloatArray = field(init=False, repr=False, compare=False)
    _electrode_stack: FloatArray = field(init=False, repr=False, compare=False)

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
        object.__setattr__(self, "_circuit_stack", np.stack(tables))
        object.__setattr__(self, "_rate_table", np.asarray(rate_lists, dtype=np.float64))
        object.__setattr__(self, "_ocv_stack", np.stack([self.ocv_table_v, slope]))
        self._init_diffusion(n_t)

    def _init_diffusion(self, n_t: int) -> None:
        fields = (
            self.electrode_soc,
            self.negative_ocp_v,
            self.positive_ocp_v,
            self.negative_diffusion_s,
            self.positive_diffusion_s,
        )
        has = any(a.size for a in fields)
        object.__setattr__(self, "has_diffusion", has)
        if not has:
            object.__setattr__(self, "_electrode_axis", (0.0, 1.0, 2))
            object.__setattr__(self, "_electrode_lists", ([0.0, 0.0],) * 4)
            object.__setattr__(self, "_log_diffusion", ([0.0] * n_t, [0.0] * n_t))
            object.__setattr__(self, "_electrode_stack", np.zeros((4, 2)))
            return
        axis = _uniform(self.electrode_soc, "electrode_soc")
        for name in ("negative_ocp_v", "positive_ocp_v"):
            arr = getattr(self, name)
            if arr.shape != (axis[2],) or not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must be finite with the shape of electrode_soc")
        for name in ("negative_diffusion_s", "positive_diffusion_s"):
            arr = getattr(self, name)
            if arr.shape != (n_t,) or not np.all(np.isfinite(arr) & (arr > 0)):
                raise ValueError(f"{name} must be finite, > 0, shape ({n_t},)")
        grid = self.electrode_soc
        lists = tuple(
            [float(v) for v in a]
            for a in (
                self.negative_ocp_v,
                np.gradient(self.negative_ocp_v, grid),
                self.positive_ocp_v,
                np.gradient(self.positive_ocp_v, grid),
            )
        )
        object.__setattr__(self, "_electrode_axis", axis)
        object.__setattr__(self, "_electrode_lists", lists)
        object.__setattr__(self, "_electrode_stack", np.asarray(lists, dtype=np.float64))
        logs = (
            [math.log(float(v)) for v in self.negative_diffusion_s],
            [math.log(float(v)) for v in self.positive_diffusion_s],
        )
        object.__setattr__(self, "_log_diffusion", logs)

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
        values = []
        for table in self._circuit_lists:
            lo, hi = table[jt], table[jt + 1]
            a = lo[js] + (lo[js + 1] - lo[js]) * ws
            values.append(a + (hi[js] + (hi[js + 1] - hi[js]) * ws - a) * wt)
        return values[0], values[1], values[2], values[3]

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

    def diffusion_times_s(self, temperature_c: float) -> tuple[float, float]:
        """Negative and positive ``τ_d`` at ``temperature_c`` [s] (log-linear, clamped).

        Raises:
            ValueError: If the cell has no diffusion tables.
        """
        if not self.has_diffusion:
            raise ValueError(f"the {self.chemistry} circuit has no diffusion tables")
        jt, wt = self._locate(temperature_c, self._t_axis)
        neg, pos = self._log_diffusion
        return (
            math.exp(neg[jt] + (neg[jt + 1] - neg[jt]) * wt),
            math.exp(pos[jt] + (pos[jt + 1] - pos[jt]) * wt),
        )

    def surface_ocv(self, soc_n: float, soc_p: float) -> tuple[float, float, float]:
        """Surface OCV ``U_p(soc_p) − U_n(soc_n)`` [V] and the two potentials' slopes [V].

        Returns the OCV, ``dU_p/dSoC`` at ``soc_p`` and ``dU_n/dSoC`` at ``soc_n``.
        ``soc_n`` and ``soc_p`` are the electrodes' surface SoCs on the cell's SoC axis
        (clamped to the grid). Without diffusion tables: 0 V everywhere.
        """
        un, dun, up, dup = self._electrode_lists
        jn, wn = self._locate(soc_n, self._electrode_axis)
        jp, wp = self._locate(soc_p, self._electrode_axis)
        u_n = un[jn] + (un[jn + 1] - un[jn]) * wn
        u_p = up[jp] + (up[jp + 1] - up[jp]) * wp
        return (
            u_p - u_n,
            dup[jp] + (dup[jp + 1] - dup[jp]) * wp,
            dun[jn] + (dun[jn + 1] - dun[jn]) * wn,
        )

    # ------------------------------------------------------------------ batch path
    # The scalar methods above over arrays of points, with the same arithmetic (the
    # estimator's batch update gives the results of its scalar one).
    @staticmethod
    def _locate_array(x: FloatArray, axis: tuple[float, float, int]) -> tuple[IntArray, FloatArray]:
        start, step, size = axis
        u = np.minimum(np.maximum((x - start) / step, 0.0), size - 1.0)
        j = np.minimum(u.astype(np.int64), size - 2)
        return j, u - j

    @staticmethod
    def _linear(table: FloatArray, j: IntArray, w: FloatArray) -> FloatArray:
        lo = table[..., j]
        return np.asarray(lo + (table[..., j + 1] - lo) * w, dtype=np.float64)

    def _bilinear(
        self, table: FloatArray, js: IntArray, ws: FloatArray, jt: IntArray, wt: FloatArray
    ) -> FloatArray:
        lo = table[..., jt, js] + (table[..., jt, js + 1] - table[..., jt, js]) * ws
        hi = table[..., jt + 1, js] + (table[..., jt + 1, js + 1] - table[..., jt + 1, js]) * ws
        return np.asarray(lo + (hi - lo) * wt, dtype=np.float64)

    def circuit_arrays(self, soc: FloatArray, temperature_c: FloatArray) -> FloatArray:
        """R0, R1, τ, asymmetry at each point, shape ``(4, n)`` (:meth:`circuit_and_asymmetry`)."""
        js, ws = self._locate_array(soc, self._c_axis)
        jt, wt = self._locate_array(temperature_c, self._t_axis)
        return self._bilinear(self._circuit_stack, js, ws, jt, wt)

    def rate_factor_array(self, c_rate: FloatArray, temperature_c: FloatArray) -> FloatArray:
        """R0 rate factor at each point (as :meth:`rate_factor`)."""
        jr, wr = self._locate_array(c_rate, self._rate_axis)
        jt, wt = self._locate_array(temperature_c, self._t_axis)
        return self._bilinear(self._rate_table, jr, wr, jt, wt)

    def ocv_and_slope_arrays(self, soc: FloatArray) -> FloatArray:
        """OCV and dOCV/dSoC at each point, shape ``(2, n)`` (as :meth:`ocv_and_slope`)."""
        j, w = self._locate_array(soc, self._soc_axis)
        return self._linear(self._ocv_stack, j, w)

    def surface_ocv_arrays(self, soc_n: FloatArray, soc_p: FloatArray) -> FloatArray:
        """Surface OCV and the two slopes at each point, shape ``(3, n)`` (:meth:`surface_ocv`)."""
        jn, wn = self._locate_array(soc_n, self._electrode_axis)
        jp, wp = self._locate_array(soc_p, self._electrode_axis)
        u_n, du_n = self._linear(self._electrode_stack[:2], jn, wn)
        u_p, du_p = self._linear(self._electrode_stack[2:], jp, wp)
        return np.stack([u_p - u_n, du_p, du_n])

    def diffusion_times_array(self, temperature_c: FloatArray) -> FloatArray:
        """Negative and positive ``τ_d`` at each temperature, shape ``(2, n)`` [s]."""
        if not self.has_diffusion:
            raise ValueError(f"the {self.chemistry} circuit has no diffusion tables")
        jt, wt = self._locate_array(temperature_c, self._t_axis)
        logs = np.asarray(self._log_diffusion, dtype=np.float64)
        return np.asarray(np.exp(self._linear(logs, jt, wt)), dtype=np.float64)

    def model_error_array(self, soc: FloatArray) -> FloatArray:
        """Model error per ampere at each point [Ω] (as :meth:`model_error_ohm_at`)."""
        if not self.model_error_soc.size:
            return np.zeros_like(soc)
        return np.asarray(np.interp(soc, self.model_error_soc, self.model_error_ohm))

    # ------------------------------------------------------------------ arrays
    def surface_ocv_v(self, soc_n: FloatArray, soc_p: FloatArray) -> FloatArray:
        """``U_p(soc_p) − U_n(soc_n)`` [V], vectorised (see :meth:`surface_ocv`)."""
        grid = self.electrode_soc
        return np.asarray(
            np.interp(soc_p, grid, self.positive_ocp_v)
            - np.interp(soc_n, grid, self.negative_ocp_v),
            dtype=np.float64,
        )

    def simulate(
        self,
        current_a: FloatArray,
        dt_s: float,
        *,
        initial_soc: float,
        temperature_c: float = 25.0,
        capacity_factor: float = 1.0,
        resistance_factor: float = 1.0,
    ) -> tuple[FloatArray, FloatArray]:
        """Open-loop SoC and voltage of this circuit under a current sequence, from rest.

        The reference the estimator's model is written against (tests, table checks).

        Args:
            current_a: Cell current held over each step [A], + = discharge.
            dt_s: Step length [s].
            initial_soc: SoC at the start.
            temperature_c: Cell temperature [°C].
            capacity_factor: Capacity over the table's (SoH).
            resistance_factor: Factor on R0 and R1.

        Returns:
            SoC and terminal voltage [V] at the end of each step.
        """
        current = np.asarray(current_a, dtype=np.float64)
        q_ah = self.capacity_ah * capacity_factor
        soc, v_rc = float(initial_soc), 0.0
        modes = [[0.0] * len(DIFFUSION_EIGENVALUES) for _ in range(2)]
        socs, volts = np.zeros(current.size), np.zeros(current.size)
        steps = (
            tuple(diffusion_step(t, dt_s) for t in self.diffusion_times_s(temperature_c))
            if self.has_diffusion
            else ()
        )
        for k, i in enumerate(current.tolist()):
            r0, r1, tau, asym = self.circuit_and_asymmetry(soc, temperature_c)
            a = math.exp(-dt_s / tau)
            v_rc = a * v_rc + resistance_factor * r1 * (1.0 - a) * i
            rate = i / (3600.0 * q_ah)
            soc -= rate * dt_s
            r0, _, _, asym = self.circuit_and_asymmetry(soc, temperature_c)
            r0 *= self.rate_factor(abs(i) / q_ah, temperature_c)
            if steps:
                offsets = []
                for step, m in zip(steps, modes, strict=True):
                    for j, (dec, gain) in enumerate(zip(step.decay, step.gain, strict=True)):
                        m[j] = dec * m[j] + gain * rate
                    offsets.append(sum(m) + step.instant * rate)
                ocv = self.surface_ocv(soc - offsets[0], soc - offsets[1])[0]
            else:
                ocv = self.ocv_and_slope(soc)[0]
            socs[k] = soc
            volts[k] = ocv - v_rc - resistance_factor * r0 * i + asym * abs(i)
        return socs, volts

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
            **{
                key: np.asarray(raw.get(key, []), dtype=np.float64)
                for key in (
                    "electrode_soc",
                    "negative_ocp_v",
                    "positive_ocp_v",
                    "negative_diffusion_s",
                    "positive_diffusion_s",
                )
            },
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
