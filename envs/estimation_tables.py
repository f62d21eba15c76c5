"""Generate the edge estimator's equivalent-circuit tables from the PyBaMM parameter sets.

Run ``python -m pulsebms.envs.estimation_tables`` to (re)write
``edge_runtime/data/ecm_<chemistry>.json``, which :mod:`pulsebms.edge_runtime.ecm` reads
with numpy only. Each file holds a one-RC circuit derived from the chemistry's PyBaMM
parameter set:

* ``OCV(SoC)`` at 25 °C on a uniform 101-point SoC grid: the twin's (and shield's) table,
  ``U_p − U_n`` over the set's stoichiometry window, on the twin's SoC reference
  (:func:`pulsebms.envs.twin.ecm.ecm_tables`);
* ``R0``, ``R1``, ``τ`` on (temperature −10 … 60 °C) × (SoC 10 … 90 %), **fitted here** to the
  physics twin's cell (SPM + lumped thermal, :func:`pulsebms.envs.twin.compile.compiled_cell`)
  under ±C/2 pulses of ``PULSE_S`` = 600 s centred on each SoC (discharge from SoC + ΔSoC/2,
  charge from SoC − ΔSoC/2), sampled every 5 s: least squares of
  ``(OCV(SoC(t)) − V(t))/I = R0 + R1 (1 − exp(−t/τ))`` over a τ grid of 2 … 600 s,
  discharge and charge averaged. The twin's own ECM fidelity fits 60 s pulses: too short
  for the diffusion overpotential that minutes of steady current build up (fitted on
  60 s, the circuit misses 15–30 mV on an NMC cell under the estimator benchmark's
  profile; on 600 s, 7 mV RMS);
* an R0 **rate factor** on (temperature, C-rate 0.1 … 1 C) (:func:`fit_rate_factor`): the
  same pulse fit at each rate, R0 over R0 at C/2 (charge-transfer kinetics are not linear:
  at 20 °C R0 is 1.1–1.2× at C/10 and 0.76–0.82× at 1 C). With it, under the estimator
  benchmark's 0 … 1 C profile the SoC RMSE fell from 0.9 to 0.3 % (LCO) and 0.55 to 0.3 %
  (NMC);
* for :data:`ASYMMETRY_CHEMISTRIES` an **asymmetry** on (temperature, SoC): half the charge
  minus the discharge pulse resistance, averaged over the pulse, a voltage ``A·|I|``. It
  helps LFP (where the SPM's diffusion makes the two directions differ by up to 0.2 Ω at
  10 % SoC) and NMC slightly; on LCO it made the benchmark worse (SoH 1.2–1.7 → 1.9–2.4
  points), so LCO has none;
* a **model error** per ampere of cell current, piecewise linear in SoC
  (:data:`MODEL_ERROR_OHM`): not fitted by the pulses but set from the residual of this
  circuit against the SPM under the estimator benchmark's cycling (``pulsebms-bench
  estimation``). On LFP the circuit misses the SPM's solid diffusion where the OCV is
  steep (mean residual under ~0.6 C: −340 mV at 12–15 % SoC, −160 mV at 15–20 %,
  −20 to −35 mV on the plateau at 20–50 %, < 5 mV above 50 %); the estimator takes that
  as measurement noise there instead of as information. NMC and LCO have none (< 10 mV);
* the cell capacity (the SoC reference) and the voltage window of the set.

The generator is deterministic (a test compares one chemistry with the shipped file).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pulsebms.core.types import FloatArray

__all__ = [
    "ASYMMETRY_CHEMISTRIES",
    "FORMAT_VERSION",
    "MODEL_ERROR_OHM",
    "PULSE_S",
    "RATE_GRID_C",
    "default_output_dir",
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

MODEL_ERROR_OHM: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "LFP": ((0.1, 0.15, 0.2, 0.3, 0.5, 0.8), (0.6, 0.4, 0.2, 0.08, 0.04, 0.01)),
}
"""Per chemistry: (SoC points, model error per ampere of cell current [Ω])."""

ASYMMETRY_CHEMISTRIES = ("LFP", "NMC")
"""Chemistries whose table carries the charge/discharge asymmetry (see the module docstring)."""

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


def fit_circuit(
    chemistry: str,
    soc_grid: FloatArray,
    ocv_v: FloatArray,
    *,
    c_rate: float = 0.5,
    fit_soc: FloatArray | None = None,
) -> FloatArray:
    """Fit R0, R1, τ on (temperature, SoC) to the physics cell (see the module docstring).

    Args:
        chemistry: Chemistry name.
        soc_grid: SoC grid of the OCV table.
        ocv_v: OCV on ``soc_grid`` [V].
        c_rate: Pulse current [C].
        fit_soc: Pulse-centre SoC points (default: the tables' 10 … 90 % grid).

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
    drop = (np.interp(soc_t, soc_grid, ocv_v) - voltage.T) / current[:, None]
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


def fit_rate_factor(chemistry: str, soc_grid: FloatArray, ocv_v: FloatArray) -> FloatArray:
    """R0 at each C-rate of :data:`RATE_GRID_C` over R0 at ±C/2, per temperature.

    The charge-transfer overpotential is not linear in the current (Butler–Volmer): the
    R0 fitted at C/2 is too large at 1 C and too small at C/10. The same pulse fit is run
    at each rate (SoC 30 … 70 %, where the pulses stay inside the window) and the median
    ratio over SoC is kept.

    Args:
        chemistry: Chemistry name.
        soc_grid: SoC grid of the OCV table.
        ocv_v: OCV on ``soc_grid`` [V].

    Returns:
        The factor, shape ``(n_temperatures, n_rates)``.
    """
    reference = fit_circuit(chemistry, soc_grid, ocv_v, c_rate=_C_RATE, fit_soc=_RATE_FIT_SOC)
    factor = np.ones((_FIT_TEMPERATURE_C.size, RATE_GRID_C.size))
    for r, rate in enumerate(RATE_GRID_C):
        fitted = fit_circuit(chemistry, soc_grid, ocv_v, c_rate=float(rate), fit_soc=_RATE_FIT_SOC)
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
    circuit = fit_circuit(facts.chemistry, tab.soc_grid, tab.ocv_v)
    rate_factor = fit_rate_factor(facts.chemistry, tab.soc_grid, tab.ocv_v)
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
        "circuit_fit": f"1 RC, ±{_C_RATE:g} C pulses of {PULSE_S:g} s on the SPM",
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
