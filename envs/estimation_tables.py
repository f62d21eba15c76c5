"""Generate the edge estimator's equivalent-circuit tables from the PyBaMM parameter sets.

Run ``python -m pulsebms.envs.estimation_tables`` to (re)write
``edge_runtime/data/ecm_<chemistry>.json``, which :mod:`pulsebms.edge_runtime.ecm` reads
with numpy only. Each file holds a one-RC circuit derived from the chemistry's PyBaMM
parameter set:

* ``OCV(SoC)`` at 25 °C on a uniform 101-point SoC grid: the twin's (and shield's) table,
  ``U_p − U_n`` over the set's stoichiometry window, on the twin's SoC reference
  (:func:`pulsebms.envs.twin.ecm.ecm_tables`);
* for :data:`DIFFUSION_CHEMISTRIES` (all three) the **solid diffusion** part
  (:func:`electrode_diffusion`): each electrode's potential ``U_n``, ``U_p`` at 25 °C on the
  cell's SoC axis (:data:`ELECTRODE_SOC_GRID`, −15 … 115 %), and its particles' diffusion
  time ``τ_d = R²/D`` per temperature from the set's radius and (Arrhenius) diffusivity.
  The estimator then evaluates each potential at its particles' surface SoC, moved from
  the average by a 5-mode spherical-diffusion model (:mod:`pulsebms.edge_runtime.ecm`).
  This is what a one-RC circuit cannot do: the LFP set's graphite has ``τ_d`` ≈ 8300 s,
  so at 0.6 C its surface runs ~9 % SoC ahead of the average and the voltage collapses
  near 15 % SoC while the average is far from empty. Open-loop against the SPM under
  the estimator benchmark's cycling (true SoC and current, seed 0, 25 °C), the RMS
  voltage residual per SoC band went from (one RC fitted on 600 s pulses, with the
  asymmetry below) 120 / 35 / 3–12 mV (LFP at 10–20 / 20–30 / 30–90 %) to
  59 / 10 / 1–2 mV, and from 4–14 mV to 1–3 mV on NMC; LCO stays at 1–3 mV;
* ``R0``, ``R1``, ``τ`` on (temperature −10 … 60 °C) × (SoC 10 … 90 %), **fitted here** to the
  physics twin's cell (SPM + lumped thermal, :func:`pulsebms.envs.twin.compile.compiled_cell`)
  under ±C/2 pulses of ``PULSE_S`` = 600 s centred on each SoC (discharge from SoC + ΔSoC/2,
  charge from SoC − ΔSoC/2), sampled every 5 s: least squares of
  ``(OCV_s(t) − V(t))/I = R0 + R1 (1 − exp(−t/τ))`` over a τ grid of 2 … 600 s,
  discharge and charge averaged, where ``OCV_s`` is the particle-surface OCV of the
  diffusion model (``OCV(SoC(t))`` for a chemistry without it): the circuit takes what
  the diffusion model leaves (kinetics; R1 comes out small). The twin's own ECM fidelity
  fits 60 s pulses to ``OCV(SoC)``: too short for the diffusion overpotential that minutes
  of steady current build up;
* an R0 **rate factor** on (temperature, C-rate 0.1 … 1 C) (:func:`fit_rate_factor`): the
  same pulse fit at each rate, R0 over R0 at C/2 (charge-transfer kinetics are not linear:
  at 20 °C R0 is 1.1–1.2× at C/10 and 0.76–0.82× at 1 C). With it (before the diffusion
  model), under the estimator benchmark's 0 … 1 C profile the SoC RMSE fell from 0.9 to
  0.3 % (LCO) and 0.55 to 0.3 % (NMC);
* for :data:`ASYMMETRY_CHEMISTRIES` an **asymmetry** on (temperature, SoC): half the charge
  minus the discharge pulse resistance, averaged over the pulse, a voltage ``A·|I|``. With
  the diffusion model it is small (≤ 7 mΩ on LFP, was 0.12 Ω at 10 % SoC without);
  LCO has none (it made LCO worse before the diffusion model);
* optionally a **model error** per ampere of cell current, piecewise linear in SoC
  (:data:`MODEL_ERROR_OHM`, hand-set from benchmark residuals). Empty since the diffusion
  model: LFP had one (0.6 Ω at 10 % SoC down to 0.01 Ω at 80 %) standing in for the
  diffusion the one-RC circuit missed;
* the cell capacity (the SoC reference) and the voltage window of the set.

The generator is deterministic (a test compares one chemistry with the shipped file).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pulsebms.core.types import FloatArray
from pulsebms.edge_runtime.ecm import DIFFUSION_EIGENVALUES

__all__ = [
    "ASYMMETRY_CHEMISTRIES",
    "DIFFUSION_CHEMISTRIES",
    "ELECTRODE_SOC_GRID",
    "FORMAT_VERSION",
    "MODEL_ERROR_OHM",
    "PULSE_S",
    "RATE_GRID_C",
    "Diffusion",
    "default_output_dir",
    "diffusion_dict",
    "electrode_diffusion",
    "fit_circuit",
    "fit_rate_factor",
    "generate",
    "main",
    "model_error_dict",
    "table_dict",
]

FORMAT_VERSION = 1
"""Version of the JSON layout (read by :mod:`pulsebms.edge_runtime.ecm`)."""

PULSE_S = 600.0
"""Length of the fitting pulses [s]."""

MODEL_ERROR_OHM: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
"""Per chemistry: (SoC points, model error per ampere of cell current [Ω])."""

ASYMMETRY_CHEMISTRIES = ("LFP", "NMC")
"""Chemistries whose table carries the charge/discharge asymmetry (see the module docstring)."""

DIFFUSION_CHEMISTRIES: tuple[str, ...] = ("LFP", "NMC", "LCO")
"""Chemistries whose table carries the electrode potentials and diffusion times."""

ELECTRODE_SOC_GRID = np.round(np.linspace(-0.15, 1.15, 521), 10)
"""Cell-SoC grid of the electrode potentials (uniform, step 0.0025; beyond 0 … 1 for the
particle surfaces under current)."""

_STOICHIOMETRY_CLAMP = 1e-4
_SAMPLE_S = 5.0
_C_RATE = 0.5
RATE_GRID_C = np.round(np.arange(0.1, 1.01, 0.1), 10)
"""C-rates of the R0 rate-factor table (uniform)."""
_RATE_FIT_SOC = np.linspace(0.3, 0.7, 5)
_FIT_SOC = np.linspace(0.1, 0.9, 9)
_FIT_TEMPERATURE_C = np.arange(-10.0, 61.0, 10.0)
_TAU_GRID_S = np.geomspace(2.0, 600.0, 80)


def _fit_one_rc(times_s: FloatArray, resistance_ohm: FloatArray) -> tuple[float, float, float]:
    best = (math.inf, 0.0, 0.0, 1.0)
    for tau in _TAU_GRID_S:
        basis = np.column_stack([np.ones_like(times_s), 1.0 - np.exp(-times_s / tau)])
        coef, *_ = np.linalg.lstsq(basis, resistance_ohm, rcond=None)
        coef = np.maximum(coef, 0.0)
        err = float(np.sum((basis @ coef - resistance_ohm) ** 2))
        if err < best[0]:
            best = (err, float(coef[0]), float(coef[1]), float(tau))
    return best[1], best[2], best[3]


@dataclass(frozen=True)
class Diffusion:
    """The solid-diffusion part of a chemistry's table (see :mod:`pulsebms.edge_runtime.ecm`).

    Attributes:
        electrode_soc: Cell-SoC grid of the potentials (:data:`ELECTRODE_SOC_GRID`).
        negative_ocp_v: Negative electrode potential at 25 °C on ``electrode_soc`` [V].
        positive_ocp_v: Positive electrode potential at 25 °C on ``electrode_soc`` [V].
        negative_diffusion_s: Negative ``τ_d = R²/D`` per fit temperature [s].
        positive_diffusion_s: Positive ``τ_d`` per fit temperature [s].
    """

    electrode_soc: FloatArray
    negative_ocp_v: FloatArray
    positive_ocp_v: FloatArray
    negative_diffusion_s: FloatArray
    positive_diffusion_s: FloatArray

    def surface_ocv(
        self,
        soc: FloatArray,
        rate_per_s: FloatArray,
        temperature_c: FloatArray,
        times_s: FloatArray,
    ) -> FloatArray:
        """``U_p − U_n`` at the particle surfaces under constant currents from rest.

        Args:
            soc: Average SoC, shape ``(n_pulses, n_times)``.
            rate_per_s: SoC rate of each pulse [1/s] (+ = discharge), shape ``(n_pulses,)``.
            temperature_c: Temperature of each pulse [°C] (a fit temperature).
            times_s: Uniform sample times from the pulse start [s], shape ``(n_times,)``.

        Returns:
            The surface OCV [V], shape ``(n_pulses, n_times)``, of the estimator's modal model.
        """
        rows = np.array([int(np.argmin(np.abs(_FIT_TEMPERATURE_C - t))) for t in temperature_c])
        lam2 = np.asarray(DIFFUSION_EIGENVALUES)
        weights = 10.0 / lam2
        offsets = []
        for tau_table in (self.negative_diffusion_s, self.positive_diffusion_s):
            tau = np.asarray(tau_table)[rows][:, None, None]  # (pulse, 1, 1)
            # The modes stepped from rest at a constant rate, in closed form (the estimator's
            # exact zero-order-hold steps give the same).
            decayed = np.exp(-lam2[None, None, :] * times_s[None, :, None] / tau)
            response = np.sum(weights * (1.0 - decayed), axis=2) + (1.0 - weights.sum())
            offsets.append(tau[:, :, 0] / 15.0 * rate_per_s[:, None] * response)
        grid = self.electrode_soc
        return np.asarray(
            np.interp(soc - offsets[1], grid, self.positive_ocp_v)
            - np.interp(soc - offsets[0], grid, self.negative_ocp_v),
            dtype=np.float64,
        )


def electrode_diffusion(chemistry: str) -> Diffusion:
    """Electrode potentials and particle diffusion times from a chemistry's parameter set.

    The potentials are PyBaMM's ``U_n(x)`` and ``U_p(y)`` at 25 °C along the set's
    stoichiometry window, extended linearly in SoC beyond it (stoichiometry clamped to
    ``1e-4 … 1 − 1e-4``); ``τ_d = R²/D`` at each fit temperature, with ``D`` at the
    electrode's stoichiometry at 50 % SoC (the sets' diffusivities are constant or
    Arrhenius-only).

    Args:
        chemistry: Chemistry name.

    Returns:
        The :class:`Diffusion` part of the table.
    """
    import pybamm

    from pulsebms.envs.twin.parameters import cell_facts, parameter_values

    values = parameter_values(chemistry)
    facts = cell_facts(chemistry)
    x, y = facts.stoichiometries(ELECTRODE_SOC_GRID)
    x = np.clip(x, _STOICHIOMETRY_CLAMP, 1.0 - _STOICHIOMETRY_CLAMP)
    y = np.clip(y, _STOICHIOMETRY_CLAMP, 1.0 - _STOICHIOMETRY_CLAMP)
    param = pybamm.LithiumIonParameters()
    t_ref = pybamm.Scalar(298.15)
    u_n = np.asarray(values.evaluate(param.n.prim.U(pybamm.Vector(x), t_ref))).ravel()
    u_p = np.asarray(values.evaluate(param.p.prim.U(pybamm.Vector(y), t_ref))).ravel()
    x_mid, y_mid = facts.stoichiometries(0.5)
    times = []
    for name, sto in (("Negative", x_mid), ("Positive", y_mid)):
        radius = float(values[f"{name} particle radius [m]"])
        diffusivity = values[f"{name} particle diffusivity [m2.s-1]"]
        row = []
        for temp in _FIT_TEMPERATURE_C:
            d = (
                float(
                    values.evaluate(diffusivity(pybamm.Scalar(sto), pybamm.Scalar(temp + 273.15)))
                )
                if callable(diffusivity)
                else float(diffusivity)
            )
            row.append(radius * radius / d)
        times.append(np.asarray(row))
    return Diffusion(
        electrode_soc=ELECTRODE_SOC_GRID.copy(),
        negative_ocp_v=np.asarray(u_n, dtype=np.float64),
        positive_ocp_v=np.asarray(u_p, dtype=np.float64),
        negative_diffusion_s=times[0],
        positive_diffusion_s=times[1],
    )


def diffusion_dict(chemistry: str) -> dict[str, list[float]]:
    """The diffusion fields of a chemistry's table (none outside :data:`DIFFUSION_CHEMISTRIES`).

    Args:
        chemistry: Chemistry name.

    Returns:
        ``electrode_soc``, ``negative_ocp_v``, ``positive_ocp_v``,
        ``negative_diffusion_s``, ``positive_diffusion_s`` as lists, or ``{}``.
    """
    if chemistry.upper() not in DIFFUSION_CHEMISTRIES:
        return {}
    diff = electrode_diffusion(chemistry)
    return {
        key: [float(v) for v in getattr(diff, key)]
        for key in (
            "electrode_soc",
            "negative_ocp_v",
            "positive_ocp_v",
            "negative_diffusion_s",
            "positive_diffusion_s",
        )
    }


def fit_circuit(
    chemistry: str,
    soc_grid: FloatArray,
    ocv_v: FloatArray,
    *,
    c_rate: float = 0.5,
    fit_soc: FloatArray | None = None,
    diffusion: Diffusion | None = None,
) -> FloatArray:
    """Fit R0, R1, τ on (temperature, SoC) to the physics cell (see the module docstring).

    Args:
        chemistry: Chemistry name.
        soc_grid: SoC grid of the OCV table.
        ocv_v: OCV on ``soc_grid`` [V].
        c_rate: Pulse current [C].
        fit_soc: Pulse-centre SoC points (default: the tables' 10 … 90 % grid).
        diffusion: Fit the circuit to what the diffusion model leaves: the voltage drop
            from the particle-surface OCV instead of ``OCV(SoC)``.

    Returns:
        R0 [Ω], R1 [Ω], τ [s] and the asymmetry [Ω], shape ``(4, n_temperatures, n_soc)``.

    Raises:
        RuntimeError: If a pulse gives no finite voltage at some point of the grid.
    """
    from pulsebms.envs.twin.compile import (
        INPUT_NAMES,
        compiled_cell,
        quiet_native_output,
        static_inputs,
    )
    from pulsebms.envs.twin.parameters import cell_facts

    facts = cell_facts(chemistry)
    cell = compiled_cell(facts.chemistry, "SPM")
    soc_points = _FIT_SOC if fit_soc is None else np.asarray(fit_soc, dtype=np.float64)
    n_soc, n_temp = soc_points.size, _FIT_TEMPERATURE_C.size
    delta_soc = c_rate * PULSE_S / 3600.0
    centre = np.tile(np.concatenate([soc_points, soc_points]), n_temp)
    sign = np.tile(np.concatenate([np.ones(n_soc), -np.ones(n_soc)]), n_temp)
    start = centre + sign * delta_soc / 2.0
    temperature = np.repeat(_FIT_TEMPERATURE_C, 2 * n_soc)
    current = sign * c_rate * facts.capacity_ah
    p = np.zeros((len(INPUT_NAMES), start.size))
    p[0] = current
    p[1] = temperature + 273.15
    p[2] = 10.0
    p[3:6] = static_inputs(facts.chemistry, start, temperature)
    y = cell.mapped("initial_state", start.size, 1)(p).full()
    step = cell.mapped("integrator", start.size, 1)
    out = cell.mapped("outputs", start.size, 1)
    params = np.vstack([p, np.full((1, start.size), _SAMPLE_S)])
    times = np.arange(_SAMPLE_S, PULSE_S + 1e-9, _SAMPLE_S)
    voltage = np.zeros((times.size, start.size))
    with quiet_native_output():
        for k in range(times.size):
            y = step(x0=y, p=params)["xf"].full()
            voltage[k] = out(y, p).full()[0]
    soc_t = start[:, None] - current[:, None] * times[None, :] / 3600.0 / facts.capacity_ah
    if diffusion is None:
        reference = np.interp(soc_t, soc_grid, ocv_v)
    else:
        rate = current / 3600.0 / facts.capacity_ah
        reference = diffusion.surface_ocv(soc_t, rate, temperature, times)
    drop = (reference - voltage.T) / current[:, None]
    circuit = np.zeros((4, n_temp, n_soc))
    for t in range(n_temp):
        block = drop[2 * n_soc * t : 2 * n_soc * (t + 1)]
        resistance = 0.5 * (block[:n_soc] + block[n_soc:])
        # Half the charge-minus-discharge difference: V = ... + asymmetry·|I|.
        circuit[3, t] = np.mean(0.5 * (block[n_soc:] - block[:n_soc]), axis=1)
        for j in range(n_soc):
            if not np.all(np.isfinite(resistance[j])):
                raise RuntimeError(
                    f"{chemistry}: non-finite pulse at SoC {soc_points[j]}, "
                    f"{_FIT_TEMPERATURE_C[t]} °C"
                )
            circuit[:3, t, j] = _fit_one_rc(times, resistance[j])
    return circuit


def fit_rate_factor(
    chemistry: str,
    soc_grid: FloatArray,
    ocv_v: FloatArray,
    diffusion: Diffusion | None = None,
    rates: FloatArray | None = None,
) -> FloatArray:
    """R0 at each C-rate of ``rates`` over R0 at ±C/2, per temperature.

    The charge-transfer overpotential is not linear in the current (Butler–Volmer): the
    R0 fitted at C/2 is too large at 1 C and too small at C/10. The same pulse fit is run
    at each rate (SoC 30 … 70 %, where the pulses stay inside the window) and the median
    ratio over SoC is kept.

    Args:
        chemistry: Chemistry name.
        soc_grid: SoC grid of the OCV table.
        ocv_v: OCV on ``soc_grid`` [V].
        diffusion: As in :func:`fit_circuit`.
        rates: C-rates (default :data:`RATE_GRID_C`, the table's).

    Returns:
        The factor, shape ``(n_temperatures, n_rates)``.
    """
    rate_grid = RATE_GRID_C if rates is None else np.asarray(rates, dtype=np.float64)

    def fit(c_rate: float) -> FloatArray:
        return fit_circuit(
            chemistry, soc_grid, ocv_v, c_rate=c_rate, fit_soc=_RATE_FIT_SOC, diffusion=diffusion
        )

    reference = fit(_C_RATE)
    factor = np.ones((_FIT_TEMPERATURE_C.size, rate_grid.size))
    for r, rate in enumerate(rate_grid):
        fitted = reference if rate == _C_RATE else fit(float(rate))
        factor[:, r] = np.median(fitted[0] / np.maximum(reference[0], 1e-9), axis=1)
    return factor


def default_output_dir() -> Path:
    """Where the shipped tables live: ``edge_runtime/data`` of this checkout."""
    return Path(__file__).resolve().parents[1] / "edge_runtime" / "data"


def table_dict(chemistry: str) -> dict[str, Any]:
    """The JSON content of one chemistry's table (see the module docstring).

    Args:
        chemistry: Chemistry name (``"LFP"``, ``"NMC"``, ``"LCO"``).

    Returns:
        A JSON-serialisable dict.
    """
    import pybamm

    from pulsebms.envs.twin.ecm import ecm_tables
    from pulsebms.envs.twin.parameters import cell_facts

    facts = cell_facts(chemistry)
    tab = ecm_tables(facts.chemistry)
    diffusion = (
        electrode_diffusion(facts.chemistry) if facts.chemistry in DIFFUSION_CHEMISTRIES else None
    )
    circuit = fit_circuit(facts.chemistry, tab.soc_grid, tab.ocv_v, diffusion=diffusion)
    rate_factor = fit_rate_factor(facts.chemistry, tab.soc_grid, tab.ocv_v, diffusion)
    return {
        "format_version": FORMAT_VERSION,
        "chemistry": facts.chemistry,
        "source": (
            f"PyBaMM {pybamm.__version__} parameter set {facts.parameter_set}; "
            "generated by python -m pulsebms.envs.estimation_tables"
        ),
        "capacity_ah": facts.capacity_ah,
        "voltage_min_v": facts.voltage_min_v,
        "voltage_max_v": facts.voltage_max_v,
        "soc_grid": [float(x) for x in tab.soc_grid],
        "ocv_v": [float(x) for x in tab.ocv_v],
        "circuit_soc": [float(x) for x in _FIT_SOC],
        "circuit_temperature_c": [float(x) for x in _FIT_TEMPERATURE_C],
        "circuit_fit": (
            f"1 RC{' after solid diffusion' if diffusion is not None else ''}, "
            f"±{_C_RATE:g} C pulses of {PULSE_S:g} s on the SPM"
        ),
        "r0_ohm": [[float(x) for x in row] for row in circuit[0]],
        "r1_ohm": [[float(x) for x in row] for row in circuit[1]],
        "tau_s": [[float(x) for x in row] for row in circuit[2]],
        **(
            {"asymmetry_ohm": [[float(x) for x in row] for row in circuit[3]]}
            if facts.chemistry in ASYMMETRY_CHEMISTRIES
            else {}
        ),
        "rate_c": [float(x) for x in RATE_GRID_C],
        "r0_rate_factor": [[float(x) for x in row] for row in rate_factor],
        **model_error_dict(facts.chemistry),
        **diffusion_dict(facts.chemistry),
    }


def model_error_dict(chemistry: str) -> dict[str, list[float]]:
    """The model-error fields of a chemistry's table (empty lists: none).

    Args:
        chemistry: Chemistry name.

    Returns:
        ``{"model_error_soc": [...], "model_error_ohm": [...]}``.
    """
    points, values = MODEL_ERROR_OHM.get(chemistry.upper(), ((), ()))
    return {"model_error_soc": list(points), "model_error_ohm": list(values)}


def generate(chemistries: Sequence[str], output_dir: Path) -> list[Path]:
    """Write ``ecm_<chemistry>.json`` for each chemistry into ``output_dir``.

    Args:
        chemistries: Chemistry names.
        output_dir: Target folder (created if missing).

    Returns:
        The files written.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for chem in chemistries:
        content = table_dict(chem)
        path = output_dir / f"ecm_{content['chemistry'].lower()}.json"
        path.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the tables (default: every chemistry, into the package data).

    Args:
        argv: Arguments (``sys.argv[1:]`` when None).

    Returns:
        Exit code 0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chemistry", nargs="*", default=["LFP", "NMC", "LCO"])
    parser.add_argument("--output-dir", type=Path, default=default_output_dir())
    args = parser.parse_args(argv)
    for path in generate(args.chemistry, args.output_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
