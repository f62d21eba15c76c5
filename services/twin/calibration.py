"""Calibration of each pack's capacity (SoH) and resistance from a telemetry window.

The model is the twin's equivalent circuit (:mod:`pulsebms.envs.twin.ecm`: OCV(SoC) from the
chemistry's PyBaMM parameter set, R0, R1, τ on (temperature, SoC) fitted to the physics
model), with four unknowns per pack:

* ``soh``: capacity / the cell's nominal capacity (SoC moves at ``I/(3600·C·soh)``);
* ``resistance_factor``: a factor on R0 and R1 (1 = the fresh cell of the parameter set;
  an aged pack of SoH ``s`` simulated by the twin has ``1/s``, see
  :mod:`pulsebms.envs.twin.common`);
* ``soc0`` and ``v_rc0``: the state at the first sample (nuisance parameters).

Cell voltage ``V_k = OCV(SoC_k) − v_rc,k − f·R0·I_k`` with ``v_rc`` an RC branch of
``f·R1`` and τ advanced exactly over each sample interval, the circuit read at the previous
sample's SoC and measured temperature (the twin's own update). All packs of a calibration
are simulated **in one vectorised pass** (the finite-difference perturbations stacked on the
pack axis too), and solved together by :func:`~pulsebms.services.twin.solver.
batched_least_squares`; uncertainties are the Gauss–Newton standard deviations.

Capacity is identifiable only when the window moves charge over a part of the OCV curve
with slope (a few tenths of SoC); ``min_throughput`` rejects windows that do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray, IntArray
from pulsebms.envs.chemistry import get_chemistry
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin.ecm import EcmTables, circuit_at, ecm_tables
from pulsebms.envs.twin.parameters import cell_facts
from pulsebms.services.twin.solver import BatchedFit, batched_least_squares
from pulsebms.services.twin.window import PackWindow, pad_windows

__all__ = ["PARAMETERS", "EcmCalibration", "EcmCalibrator"]

PARAMETERS = ("soh", "resistance_factor", "soc0", "v_rc0_v")
"""Fitted parameters per pack, in the order of :attr:`EcmCalibration.x`."""

_LOWER = np.array([0.3, 0.2, 0.0, -0.5])
_UPPER = np.array([1.3, 6.0, 1.0, 0.5])
_FD_STEP = np.array([1e-6, 1e-6, 1e-7, 1e-6])


@dataclass(frozen=True)
class EcmCalibration:
    """Calibrated parameters per pack (arrays over the packs calibrated).

    Attributes:
        pack_index: Index of each calibrated pack in the calibrator's packs.
        soh: Capacity / nominal cell capacity.
        soh_std: Its standard deviation.
        capacity_ah: Pack capacity [A.h] (``soh`` × cell capacity × parallel).
        resistance_factor: Factor on the parameter set's R0 and R1.
        resistance_factor_std: Its standard deviation.
        resistance_ohm: Pack DC resistance R0 at 50 % SoC and 25 °C [Ω] (× series / parallel).
        resistance_ohm_std: Its standard deviation [Ω].
        soc0: Fitted SoC at the window's first sample.
        voltage_rmse_v: Pack voltage RMSE of the fit [V].
        n_samples: Samples used per pack.
        converged: Whether the fit converged.
        x: All fitted parameters (:data:`PARAMETERS`), ``(n, 4)``.
        std: Their standard deviations, ``(n, 4)``.
    """

    pack_index: IntArray
    soh: FloatArray
    soh_std: FloatArray
    capacity_ah: FloatArray
    resistance_factor: FloatArray
    resistance_factor_std: FloatArray
    resistance_ohm: FloatArray
    resistance_ohm_std: FloatArray
    soc0: FloatArray
    voltage_rmse_v: FloatArray
    n_samples: FloatArray
    converged: BoolArray
    x: FloatArray
    std: FloatArray


def _uniform_lookup(grid: FloatArray, table: FloatArray, x: FloatArray) -> FloatArray:
    """Row-wise linear interpolation of ``table`` (rows, len(grid)) at ``x`` (rows,), clamped."""
    step = grid[1] - grid[0]
    u = np.minimum(np.maximum((x - grid[0]) / step, 0.0), grid.size - 1.0)
    j = np.minimum(u.astype(np.int64), grid.size - 2)
    w = u - j
    rows = np.arange(table.shape[0])
    return np.asarray(table[rows, j] * (1.0 - w) + table[rows, j + 1] * w, dtype=np.float64)


class EcmCalibrator:
    """Fits SoH and resistance of many packs at once from their telemetry windows.

    Args:
        packs: The fleet's packs (chemistry and cell counts are read).

    Example:
        >>> from pulsebms.envs.pack import PackSpec
        >>> cal = EcmCalibrator([PackSpec("NMC")])
        >>> cal.cell_capacity_ah.round(2).tolist()
        [5.15]
    """

    def __init__(self, packs: Sequence[PackSpec]) -> None:
        if len(packs) == 0:
            raise ValueError("a calibrator needs at least one pack")
        self.packs = tuple(packs)
        chems = [get_chemistry(p.chemistry).name for p in self.packs]
        tables: list[EcmTables] = [ecm_tables(c) for c in chems]
        grids = {t.soc_grid.size for t in tables}
        if len(grids) != 1:
            raise ValueError("chemistries with different OCV grids cannot be calibrated together")
        self._soc_grid = tables[0].soc_grid
        self._ocv = np.stack([t.ocv_v for t in tables])
        self._circuit = np.stack([t.circuit_by_temperature for t in tables], axis=1)
        self._temp_grid = tables[0].fit_temperature_c
        self._fit_soc = tables[0].fit_soc
        self.cell_capacity_ah = np.array([cell_facts(c).capacity_ah for c in chems])
        self.series = np.array([p.series for p in self.packs], dtype=np.float64)
        self.parallel = np.array([p.parallel for p in self.packs], dtype=np.float64)
        r0_mid, _, _ = circuit_at(
            self._circuit,
            self._temp_grid,
            self._fit_soc,
            np.full(len(self.packs), 0.5),
            np.full(len(self.packs), 25.0),
        )
        self.r0_reference_ohm = r0_mid
        """Cell R0 of the parameter set at 50 % SoC, 25 °C per pack [Ω]."""

    # ------------------------------------------------------------------ model
    def simulate_cell_voltage(
        self,
        rows: IntArray,
        x: FloatArray,
        dt_s: FloatArray,
        cell_current_a: FloatArray,
        temperature_c: FloatArray,
    ) -> FloatArray:
        """Cell voltage of the circuit for parameters ``x`` (rows of packs ``rows``).

        Args:
            rows: Pack index of each row, ``(r,)``.
            x: Parameters per row (:data:`PARAMETERS`), ``(r, 4)``.
            dt_s: Interval before each sample, ``(r, m)`` (0 at the first).
            cell_current_a: Cell current held over each interval, ``(r, m)``.
            temperature_c: Measured temperature at each sample, ``(r, m)``.

        Returns:
            Cell voltage at each sample, ``(r, m)``.
        """
        tables = self._temperature_tables(np.asarray(rows), temperature_c)
        same = np.arange(x.shape[0])
        return self._simulate(np.asarray(rows), same, x, dt_s, cell_current_a, tables)

    def _temperature_tables(self, rows: IntArray, temperature_c: FloatArray) -> FloatArray:
        """R0, R1, τ of each window's pack at each sample's temperature, on the SoC grid.

        The temperatures are measured, so this interpolation does not depend on the fitted
        parameters: it is done once per calibration. Shape ``(m, 3, n, n_soc)``.
        """
        grid = self._temp_grid
        u = np.clip((temperature_c - grid[0]) / (grid[1] - grid[0]), 0.0, grid.size - 1.0)
        j = np.minimum(u.astype(np.int64), grid.size - 2)  # (n, m)
        w = (u - j)[None, :, :, None]
        circuit = self._circuit[:, rows]  # (3, n, nT, nS)
        packs = np.arange(rows.size)[:, None]
        low = circuit[:, packs, j, :]  # (3, n, m, nS)
        high = circuit[:, packs, j + 1, :]
        return np.ascontiguousarray(np.moveaxis(low * (1.0 - w) + high * w, 2, 0))

    def _simulate(
        self,
        rows: IntArray,
        data: IntArray,
        x: FloatArray,
        dt_s: FloatArray,
        cell_current_a: FloatArray,
        tables: FloatArray,
    ) -> FloatArray:
        """The circuit for parameter rows ``x`` on the windows ``data`` (index per row).

        ``rows``, ``dt_s``, ``cell_current_a`` and ``tables`` are per window; several
        parameter rows may share a window (finite-difference perturbations).
        """
        soh, factor, soc, v_rc = (x[:, k].copy() for k in range(4))
        capacity = self.cell_capacity_ah[rows[data]] * soh
        ocv = self._ocv[rows[data]]
        dt = dt_s[data]
        cur = cell_current_a[data]
        fit = self._fit_soc
        step = fit[1] - fit[0]
        m = dt.shape[1]
        out = np.empty((x.shape[0], m))

        def circuit(k: int, soc: FloatArray) -> FloatArray:
            u = np.minimum(np.maximum((soc - fit[0]) / step, 0.0), fit.size - 1.0)
            j = np.minimum(u.astype(np.int64), fit.size - 2)
            w = u - j
            tab = tables[k]  # (3, n, nS)
            return np.asarray(tab[:, data, j] * (1.0 - w) + tab[:, data, j + 1] * w)

        r0 = circuit(0, soc)[0]
        out[:, 0] = _uniform_lookup(self._soc_grid, ocv, soc) - v_rc - factor * r0 * cur[:, 0]
        for k in range(1, m):
            i = cur[:, k]
            r0, r1, tau = circuit(k - 1, soc)
            decay = np.exp(-dt[:, k] / tau)
            v_rc = v_rc * decay + factor * i * r1 * (1.0 - decay)
            soc = soc - i * dt[:, k] / 3600.0 / capacity
            out[:, k] = _uniform_lookup(self._soc_grid, ocv, soc) - v_rc - factor * r0 * i
        return out

    # ------------------------------------------------------------------ fit
    def initial_soc(self, index: int, window: PackWindow) -> float:
        """SoC at the first sample: the BMS's value, else the OCV inverted at the voltage."""
        if window.n_samples and np.isfinite(window.soc[0]):
            return float(np.clip(window.soc[0], 0.0, 1.0))
        v_cell = window.voltage_v[0] / self.series[index]
        ocv = self._ocv[index]
        return float(np.interp(v_cell, ocv, self._soc_grid)) if np.all(np.diff(ocv) > 0) else 0.5

    def calibrate(
        self,
        windows: Sequence[PackWindow],
        pack_index: Sequence[int] | None = None,
        *,
        start_soh: FloatArray | None = None,
        start_resistance_factor: FloatArray | None = None,
        max_iterations: int = 40,
    ) -> EcmCalibration:
        """Fit every window's pack (one batched least-squares solve).

        Args:
            windows: One window per pack calibrated.
            pack_index: Index of each window's pack in :attr:`packs` (default 0, 1, …).
            start_soh: Start value per window (default 1: the nominal cell).
            start_resistance_factor: Start value per window (default 1).
            max_iterations: Levenberg–Marquardt iterations at most.

        Returns:
            The :class:`EcmCalibration`.

        Raises:
            ValueError: On a window with fewer than 10 samples, or mismatched lengths.
        """
        rows = np.arange(len(windows)) if pack_index is None else np.asarray(pack_index)
        if rows.shape != (len(windows),):
            raise ValueError("pack_index must give one pack per window")
        for w in windows:
            if w.n_samples < 10:
                raise ValueError(f"a calibration window needs >= 10 samples, got {w.n_samples}")
        n = len(windows)
        dt, cur, volt, temp, mask = pad_windows(windows)
        cell_i = cur / self.parallel[rows, None]
        cell_v = volt / self.series[rows, None]
        x0 = np.zeros((n, 4))
        x0[:, 0] = 1.0 if start_soh is None else start_soh
        x0[:, 1] = 1.0 if start_resistance_factor is None else start_resistance_factor
        x0[:, 2] = [self.initial_soc(int(r), w) for r, w in zip(rows, windows, strict=True)]

        tables = self._temperature_tables(rows, temp)
        own = np.arange(n)

        def residuals(x: FloatArray) -> FloatArray:
            return self._simulate(rows, own, x, dt, cell_i, tables) - cell_v

        def jacobian(x: FloatArray) -> FloatArray:
            # p + 1 variants of every pack in one simulation (rows stacked).
            p = x.shape[1]
            xs = np.concatenate([x] + [x + np.eye(p)[j] * _FD_STEP[j] for j in range(p)])
            v = self._simulate(rows, np.tile(own, p + 1), xs, dt, cell_i, tables)
            v = v.reshape(p + 1, n, -1)
            return np.stack([(v[j + 1] - v[0]) / _FD_STEP[j] for j in range(p)], axis=-1)

        fit: BatchedFit = batched_least_squares(
            residuals,
            jacobian,
            x0,
            lower=_LOWER,
            upper=_UPPER,
            mask=mask,
            max_iterations=max_iterations,
        )
        scale = self.r0_reference_ohm[rows] * self.series[rows] / self.parallel[rows]
        return EcmCalibration(
            pack_index=rows,
            soh=fit.x[:, 0],
            soh_std=fit.std[:, 0],
            capacity_ah=fit.x[:, 0] * self.cell_capacity_ah[rows] * self.parallel[rows],
            resistance_factor=fit.x[:, 1],
            resistance_factor_std=fit.std[:, 1],
            resistance_ohm=fit.x[:, 1] * scale,
            resistance_ohm_std=fit.std[:, 1] * scale,
            soc0=fit.x[:, 2],
            voltage_rmse_v=fit.rmse * self.series[rows],
            n_samples=fit.n_residuals,
            converged=fit.converged,
            x=fit.x,
            std=fit.std,
        )
