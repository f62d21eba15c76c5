"""PyBaMM's own solve of one pack, for golden tests and the benchmark's naive loop.

:class:`ReferenceCell` steps the same PyBaMM model as the physics twin (same options,
parameters and initial state) with ``pybamm.Simulation.step`` and the adaptive IDAKLU
solver, one cell at a time: it is both the accuracy reference (tight tolerances) and the
"naive loop" the twin is benchmarked against (PyBaMM's default tolerances).

``Simulation.step`` silently makes no progress once a termination event (a voltage cut-off)
has fired; :meth:`ReferenceCell.step` checks that time advanced by ``dt_s`` and reports a
stall instead of returning a stale voltage.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pulsebms.envs.twin.compile import MODEL_OPTIONS, static_inputs
from pulsebms.envs.twin.parameters import cell_facts, parameter_values

__all__ = ["ReferenceCell", "ReferenceStall"]


class ReferenceStall(RuntimeError):
    """``Simulation.step`` made no (or partial) progress: an event fired or the solver failed."""


class ReferenceCell:
    """One cell stepped by ``pybamm.Simulation.step`` (IDAKLU, adaptive), history not kept.

    Args:
        chemistry: Chemistry name.
        soc: Initial state of charge.
        temperature_c: Initial and ambient temperature [°C].
        heat_transfer_coefficient_w_m2k: Cooling coefficient [W/(m².K)].
        model_name: ``"SPM"`` or ``"SPMe"``.
        rtol: IDAKLU relative tolerance (PyBaMM's default 1e-4; tight for references).
        atol: IDAKLU absolute tolerance.
    """

    def __init__(
        self,
        chemistry: str,
        soc: float,
        temperature_c: float = 25.0,
        heat_transfer_coefficient_w_m2k: float = 10.0,
        model_name: str = "SPM",
        rtol: float = 1e-4,
        atol: float = 1e-6,
    ) -> None:
        import pybamm

        self.facts = cell_facts(chemistry)
        statics = static_inputs(self.facts.chemistry, np.array([soc]), np.array([temperature_c]))
        values = parameter_values(chemistry)
        values.update(
            {
                "Current function [A]": "[input]",
                "Ambient temperature [K]": temperature_c + 273.15,
                "Total heat transfer coefficient [W.m-2.K-1]": heat_transfer_coefficient_w_m2k,
                "Initial concentration in negative electrode [mol.m-3]": float(statics[0, 0]),
                "Initial concentration in positive electrode [mol.m-3]": float(statics[1, 0]),
                "Initial temperature [K]": temperature_c + 273.15,
            },
            check_already_exists=False,
        )
        model = getattr(pybamm.lithium_ion, model_name)(dict(MODEL_OPTIONS))
        self._sim = pybamm.Simulation(
            model, parameter_values=values, solver=pybamm.IDAKLUSolver(rtol=rtol, atol=atol)
        )
        self.time_s = 0.0
        self._soc_0 = float(soc)

    def step(self, current_a: float, dt_s: float) -> dict[str, float]:
        """Advance by ``dt_s`` at constant cell current (+ = discharge).

        Args:
            current_a: Cell current [A].
            dt_s: Step length [s].

        Returns:
            ``voltage_v``, ``temperature_c``, ``soc`` (from PyBaMM's ``Discharge capacity
            [A.h]``) and ``sei_loss_ah`` at the end.

        Raises:
            ReferenceStall: If the solve did not reach ``time_s + dt_s``.
        """
        sol = self.step_bare(current_a, dt_s)
        discharged_ah = float(sol["Discharge capacity [A.h]"].entries[-1])
        return {
            "voltage_v": float(sol["Voltage [V]"].entries[-1]),
            "temperature_c": float(sol["Volume-averaged cell temperature [K]"].entries[-1])
            - 273.15,
            "soc": self._soc_0 - discharged_ah / self.facts.capacity_ah,
            "sei_loss_ah": float(sol["Loss of capacity to negative SEI [A.h]"].entries[-1]),
        }

    def step_bare(self, current_a: float, dt_s: float) -> Any:
        """Advance by ``dt_s`` without reading any variable (the bare ``Simulation.step``).

        Returns:
            PyBaMM's solution of the step (variables are computed only when read).

        Raises:
            ReferenceStall: If the solve did not reach ``time_s + dt_s``.
        """
        sol: Any = self._sim.step(
            dt_s, inputs={"Current function [A]": float(current_a)}, save=False
        )
        t_end = float(sol.t[-1])
        target = self.time_s + dt_s
        if not t_end >= target - 1e-6 * max(1.0, dt_s):
            raise ReferenceStall(
                f"Simulation.step stalled at t = {t_end:.6g} s (target {target:.6g} s): "
                f"{sol.termination}"
            )
        self.time_s = target
        return sol
