"""Physics calibration: each pack's electrode active-material fractions from telemetry.

The physics fidelity's model (PyBaMM's SPM of the chemistry's parameter set) is built here
once per chemistry with **the two active-material volume fractions as inputs**
(``"Negative electrode active material volume fraction"``, ``"Positive electrode active
material volume fraction"``), besides the current, temperature and initial particle
concentrations. They set each electrode's capacity and surface area, so they shape how the
voltage follows the charge moved: the quantities PyBOP's SPM tests recover (ground truth
≈ 0.55 ± 0.05, 2 mV Gaussian noise, tolerance 0.015 on each fraction; PyBOP's
``tests/integration/test_spm_parameterisations.py``).

Isothermal SPM at the measured temperature (the twin's lumped thermal and SEI submodels do
not change the voltage of a calibration window). Steps: the same fixed-cost extrapolated
linearly-implicit Euler as the twin (:func:`pulsebms.envs.twin.stepper.extrapolated_lie_step`),
mapped over every pack and every finite-difference perturbation in one CasADi call per time
step; the packs' problems are solved together by
:func:`~pulsebms.services.twin.solver.batched_least_squares`.

A window must start with the pack at rest (its initial particle concentrations are set from
the SoC the BMS reports, through the parameter set's stoichiometry window, as the twin does).

Example:
    >>> model = electrode_model("NMC")
    >>> model.nominal.round(3).tolist()   # Chen2020's fractions (negative, positive)
    [0.75, 0.665]
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray, IntArray
from pulsebms.envs.chemistry import get_chemistry
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin.compile import static_inputs
from pulsebms.envs.twin.parameters import parameter_values
from pulsebms.envs.twin.stepper import extrapolated_lie_step
from pulsebms.services.twin.solver import batched_least_squares
from pulsebms.services.twin.window import PackWindow, pad_windows

__all__ = [
    "ELECTRODE_PARAMETERS",
    "ElectrodeCalibration",
    "ElectrodeCalibrator",
    "ElectrodeModel",
    "electrode_model",
    "reference_voltage",
]

ELECTRODE_PARAMETERS = (
    "Negative electrode active material volume fraction",
    "Positive electrode active material volume fraction",
)
"""The PyBaMM parameters fitted, in the order of :attr:`ElectrodeCalibration.x`."""

_INPUTS = (
    "Current function [A]",
    "Ambient temperature [K]",
    "Initial temperature [K]",
    "Initial concentration in negative electrode [mol.m-3]",
    "Initial concentration in positive electrode [mol.m-3]",
    *ELECTRODE_PARAMETERS,
)
_MAX_SUBSTEP_S = 10.0
_STEPPER_TOLERANCE = 1e-4
_FD_STEP = 1e-6
_LOWER = np.array([0.2, 0.2])
_UPPER = np.array([0.95, 0.95])


@dataclass(frozen=True)
class ElectrodeModel:
    """One chemistry's isothermal SPM with the active-material fractions as inputs.

    Attributes:
        chemistry: Chemistry name.
        n_states: Differential states.
        initial_state: CasADi ``y0(p)`` (``p``: the inputs).
        step: CasADi ``(x, [p, dt]) -> (x_next, V_next)``.
        nominal: The parameter set's fractions (negative, positive).
    """

    chemistry: str
    n_states: int
    initial_state: Any
    step: Any
    nominal: FloatArray
    _maps: dict[tuple[str, int], Any]

    def mapped(self, what: str, n: int) -> Any:
        """``initial_state`` or ``step`` mapped over ``n`` columns (cached)."""
        key = (what, n)
        if key not in self._maps:
            self._maps[key] = getattr(self, what).map(n)
        return self._maps[key]


@functools.cache
def electrode_model(chemistry: str) -> ElectrodeModel:
    """Build and compile a chemistry's :class:`ElectrodeModel` (once per process)."""
    import casadi
    import pybamm

    chem = get_chemistry(chemistry).name
    values = parameter_values(chem)
    nominal = np.array([float(values[name]) for name in ELECTRODE_PARAMETERS])
    values.update({name: "[input]" for name in _INPUTS}, check_already_exists=False)
    sim = pybamm.Simulation(pybamm.lithium_ion.SPM(), parameter_values=values)
    sim.build()
    built = sim.built_model
    n_states = int(built.concatenated_rhs.size)
    t = casadi.MX.sym("t")
    y = casadi.MX.sym("y", n_states)
    p = casadi.MX.sym("p", len(_INPUTS))
    inputs = {name: p[k] for k, name in enumerate(_INPUTS)}
    rhs = casadi.Function(
        "rhs", [y, p], [built.concatenated_rhs.to_casadi(t, y, inputs=inputs)]
    ).expand()
    y0 = casadi.Function(
        "y0", [p], [built.concatenated_initial_conditions.to_casadi(t, y, inputs=inputs)]
    ).expand()
    voltage = casadi.Function(
        "v", [y, p], [built.get_processed_variable("Voltage [V]").to_casadi(t, y, inputs=inputs)]
    ).expand()
    xs = casadi.SX.sym("x", n_states)
    ps = casadi.SX.sym("p", len(_INPUTS) + 1)
    x_next, _ = extrapolated_lie_step(
        lambda x: ps[-1] * rhs(x, ps[:-1]),
        xs,
        1.0,
        rtol=_STEPPER_TOLERANCE,
        atol=_STEPPER_TOLERANCE,
    )
    step = casadi.Function("electrode_step_" + chem, [xs, ps], [x_next, voltage(x_next, ps[:-1])])
    return ElectrodeModel(chem, n_states, y0, step, nominal, {})


@dataclass(frozen=True)
class ElectrodeCalibration:
    """Fitted active-material fractions per pack (arrays over the packs calibrated).

    Attributes:
        pack_index: Index of each calibrated pack in the calibrator's packs.
        x: Fractions (negative, positive), ``(n, 2)``.
        std: Their Gauss–Newton standard deviations, ``(n, 2)``.
        voltage_rmse_v: Cell voltage RMSE of the fit [V].
        converged: Whether each fit converged.
    """

    pack_index: IntArray
    x: FloatArray
    std: FloatArray
    voltage_rmse_v: FloatArray
    converged: BoolArray


def _inputs(
    chemistry: str,
    x: FloatArray,
    soc0: FloatArray,
    temperature_c: FloatArray,
    current_a: FloatArray,
    dt_s: float,
) -> FloatArray:
    """Input matrix ``(len(_INPUTS) + 1, rows)`` of one step."""
    rows = x.shape[0]
    p = np.zeros((len(_INPUTS) + 1, rows))
    statics = static_inputs(chemistry, soc0, temperature_c)
    p[0] = current_a
    p[1] = temperature_c + 273.15
    p[2] = temperature_c + 273.15
    p[3:5] = statics[:2]
    p[5:7] = x.T
    p[7] = dt_s
    return p


class ElectrodeCalibrator:
    """Fits both active-material fractions of many packs at once (one model per chemistry).

    Args:
        packs: The fleet's packs (chemistry and cell counts are read).
    """

    def __init__(self, packs: Sequence[PackSpec]) -> None:
        if len(packs) == 0:
            raise ValueError("a calibrator needs at least one pack")
        self.packs = tuple(packs)
        self.chemistry = tuple(get_chemistry(p.chemistry).name for p in self.packs)
        self.series = np.array([p.series for p in self.packs], dtype=np.float64)
        self.parallel = np.array([p.parallel for p in self.packs], dtype=np.float64)

    def nominal(self, pack_index: Sequence[int] | IntArray) -> FloatArray:
        """The parameter set's fractions of each pack, ``(n, 2)``: the start values."""
        return np.stack([electrode_model(self.chemistry[k]).nominal for k in pack_index])

    def simulate_cell_voltage(
        self,
        chemistry: str,
        x: FloatArray,
        soc0: FloatArray,
        dt_s: FloatArray,
        cell_current_a: FloatArray,
        temperature_c: FloatArray,
    ) -> FloatArray:
        """Cell voltage at each sample for fractions ``x`` (rows of one chemistry).

        Args:
            chemistry: The rows' chemistry.
            x: Fractions per row, ``(r, 2)``.
            soc0: SoC at rest at the first sample per row.
            dt_s: Interval before each sample, ``(r, m)``.
            cell_current_a: Cell current over each interval, ``(r, m)``.
            temperature_c: Temperature per sample, ``(r, m)``.

        Returns:
            ``(r, m)`` cell voltages (NaN where the model failed).
        """
        model = electrode_model(chemistry)
        rows, m = dt_s.shape
        p0 = _inputs(chemistry, x, soc0, temperature_c[:, 0], np.zeros(rows), 0.0)
        state = np.asarray(model.mapped("initial_state", rows)(p0[:-1]), dtype=np.float64)
        out = np.full((rows, m), np.nan)
        step = model.mapped("step", rows)
        statics = static_inputs(chemistry, soc0, temperature_c[:, 0])
        p = p0.copy()
        p[3:5] = statics[:2]
        # Voltage at the first sample: at rest (zero current, no time elapsed).
        p[7] = 1e-9
        _, v = step(state, p)
        out[:, 0] = np.asarray(v).ravel()
        for k in range(1, m):
            dt_max = float(dt_s[:, k].max())
            if dt_max <= 0.0:
                out[:, k] = out[:, k - 1]
                continue
            n_sub = max(1, int(np.ceil(dt_max / _MAX_SUBSTEP_S - 1e-9)))
            p[0] = cell_current_a[:, k]
            p[1] = p[2] = temperature_c[:, k - 1] + 273.15
            p[7] = dt_s[:, k] / n_sub
            for _ in range(n_sub):
                x_next, v = step(state, p)
                state = np.asarray(x_next, dtype=np.float64)
            out[:, k] = np.asarray(v).ravel()
        return out

    def calibrate(
        self,
        windows: Sequence[PackWindow],
        pack_index: Sequence[int] | None = None,
        *,
        start: FloatArray | None = None,
        max_iterations: int = 30,
    ) -> ElectrodeCalibration:
        """Fit the fractions of every window's pack; chemistries are fitted group by group.

        Args:
            windows: One window per pack, each starting at rest with a reported SoC.
            pack_index: Index of each window's pack in :attr:`packs` (default 0, 1, …).
            start: Start values ``(n, 2)`` (default: the parameter set's fractions).
            max_iterations: Levenberg–Marquardt iterations at most.

        Returns:
            The :class:`ElectrodeCalibration` (in the order of ``windows``).

        Raises:
            ValueError: On a window without a reported SoC at its first sample.
        """
        rows = np.arange(len(windows)) if pack_index is None else np.asarray(pack_index)
        n = len(windows)
        x0 = self.nominal(rows) if start is None else np.asarray(start, dtype=np.float64)
        x_out = np.zeros((n, 2))
        std_out = np.full((n, 2), np.nan)
        rmse = np.full(n, np.nan)
        converged = np.zeros(n, dtype=bool)
        for chem in sorted({self.chemistry[int(r)] for r in rows}):
            sel = np.array([k for k in range(n) if self.chemistry[int(rows[k])] == chem])
            group = [windows[k] for k in sel]
            soc0 = np.array([w.soc[0] if w.n_samples else np.nan for w in group])
            if not np.all(np.isfinite(soc0)):
                raise ValueError("every window needs the SoC the BMS reported at its start")
            dt, cur, volt, temp, mask = pad_windows(group)
            cell_i = cur / self.parallel[rows[sel], None]
            cell_v = volt / self.series[rows[sel], None]
            g = len(sel)

            def residuals(
                x: FloatArray,
                chem: str = chem,
                soc0: FloatArray = soc0,
                dt: FloatArray = dt,
                cell_i: FloatArray = cell_i,
                temp: FloatArray = temp,
                cell_v: FloatArray = cell_v,
            ) -> FloatArray:
                return self.simulate_cell_voltage(chem, x, soc0, dt, cell_i, temp) - cell_v

            def jacobian(
                x: FloatArray,
                chem: str = chem,
                soc0: FloatArray = soc0,
                dt: FloatArray = dt,
                cell_i: FloatArray = cell_i,
                temp: FloatArray = temp,
                g: int = g,
            ) -> FloatArray:
                step = np.eye(2) * _FD_STEP
                xs = np.concatenate([x, x + step[0], x + step[1]])
                v = self.simulate_cell_voltage(
                    chem, xs, np.tile(soc0, 3), np.tile(dt, (3, 1)), np.tile(cell_i, (3, 1)),
                    np.tile(temp, (3, 1)),
                ).reshape(3, g, -1)  # fmt: skip
                return np.stack([(v[1] - v[0]) / _FD_STEP, (v[2] - v[0]) / _FD_STEP], axis=-1)

            fit = batched_least_squares(
                residuals,
                jacobian,
                x0[sel],
                lower=_LOWER,
                upper=_UPPER,
                mask=mask,
                max_iterations=max_iterations,
            )
            x_out[sel] = fit.x
            std_out[sel] = fit.std
            rmse[sel] = fit.rmse
            converged[sel] = fit.converged
        return ElectrodeCalibration(rows, x_out, std_out, rmse, converged)


def reference_voltage(
    chemistry: str,
    fractions: tuple[float, float],
    soc0: float,
    cell_current_a: FloatArray,
    dt_s: float,
    temperature_c: float = 25.0,
) -> FloatArray:
    """PyBaMM's own solve (IDAKLU, adaptive) of the calibration model: the truth of tests.

    A cell with the given fractions, at rest at ``soc0``, driven by a piecewise-constant
    current; the voltage at the end of every step. Independent of the fixed-cost stepper the
    calibration uses.

    Args:
        chemistry: Chemistry name.
        fractions: Active-material fractions (negative, positive).
        soc0: Initial SoC (stoichiometries from the parameter set's window, as the twin).
        cell_current_a: Cell current per step [A], + = discharge.
        dt_s: Step length [s].
        temperature_c: Temperature [°C].

    Returns:
        Cell voltage at rest before the first step, then after each step ``(steps + 1,)``.
    """
    import pybamm

    chem = get_chemistry(chemistry).name
    values = parameter_values(chem)
    statics = static_inputs(chem, np.array([soc0]), np.array([temperature_c]))
    values.update(
        {
            ELECTRODE_PARAMETERS[0]: float(fractions[0]),
            ELECTRODE_PARAMETERS[1]: float(fractions[1]),
            "Current function [A]": "[input]",
            "Ambient temperature [K]": temperature_c + 273.15,
            "Initial temperature [K]": temperature_c + 273.15,
            "Initial concentration in negative electrode [mol.m-3]": float(statics[0, 0]),
            "Initial concentration in positive electrode [mol.m-3]": float(statics[1, 0]),
        },
        check_already_exists=False,
    )
    model = pybamm.lithium_ion.SPM()
    model.events = []  # the truth runs where the window goes; the service checks cut-offs
    sim = pybamm.Simulation(
        model, parameter_values=values, solver=pybamm.IDAKLUSolver(rtol=1e-8, atol=1e-8)
    )
    out = np.empty(len(cell_current_a) + 1)
    sol = sim.step(1e-6, inputs={"Current function [A]": 0.0}, save=False)
    out[0] = float(sol["Voltage [V]"].entries[-1])
    for k, current in enumerate(np.asarray(cell_current_a, dtype=np.float64)):
        sol = sim.step(dt_s, inputs={"Current function [A]": float(current)}, save=False)
        out[k + 1] = float(sol["Voltage [V]"].entries[-1])
    return out
