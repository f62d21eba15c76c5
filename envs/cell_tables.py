"""Generate the shield's one-step cell tables from the PyBaMM parameter sets.

Run ``python -m pulsebms.envs.cell_tables`` to (re)write ``safety/data/cell_tables.json``,
which :mod:`pulsebms.safety.cell_model` reads with numpy only. Per chemistry it holds:

* **Open-circuit voltage** ``OCV(SoC) = U_p(y(SoC)) − U_n(x(SoC))`` on a uniform SoC grid,
  from the parameter set's open-circuit potentials at 25 °C, with the stoichiometries
  linear in SoC between the 0 % and 100 % points of
  ``pybamm.lithium_ion.get_min_max_stoichiometries`` (the twin's SoC reference, see
  :mod:`pulsebms.envs.twin.parameters`).
* **Effective resistance** ``R(t, SoC, T)`` per direction (discharge, charge), *fitted
  from current pulses* on PyBaMM's isothermal SPMe: from rest at SoC and temperature T,
  a constant-current pulse of each of ``PULSE_C_RATES`` is applied and
  ``R(t) = (OCV(SoC(t)) − V(t)) / I`` is read after each duration ``t`` of
  ``DURATION_GRID_S``. It lumps the ohmic, kinetic and diffusion overpotentials a step of
  that length builds up. The largest value over the pulse currents is kept: the
  overpotential is concave in current at small currents (a small pulse over-predicts the
  kinetic drop of larger ones) but diffusion limitation makes it convex at large ones
  (LFP's surface depletes at 1 C), so both ends are sampled. A pulse that reaches a
  voltage cut-off at ``t_c`` before ``t`` is extrapolated: ``R(t) = R(t_c)·t/t_c``
  (linear growth in time, faster than the √t of diffusion, a deliberately pessimistic
  heuristic), which keeps the shield's currents well below the one that cut off. A pulse
  whose SoC would leave the default window ``SOC_WINDOW`` by ``t`` is not used at ``t``
  (the shield's SoC bound forbids that current anyway). The table is made non-decreasing
  in duration; points no pulse covers take the largest value at that duration and
  temperature.

The generator is deterministic; a test re-generates a subset and compares.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pulsebms.core.types import FloatArray

__all__ = [
    "DURATION_GRID_S",
    "OCV_SOC_GRID",
    "PULSE_C_RATES",
    "RESISTANCE_SOC_GRID",
    "SOC_WINDOW",
    "TEMPERATURE_GRID_C",
    "default_output_path",
    "generate",
    "main",
    "ocv_table",
    "resistance_table",
]


OCV_SOC_GRID: FloatArray = np.linspace(0.0, 1.0, 101)
"""SoC grid of the OCV table (uniform, step 0.01)."""
RESISTANCE_SOC_GRID: FloatArray = np.round(np.linspace(0.05, 0.95, 10), 10)
"""SoC grid of the resistance table (uniform, step 0.1)."""
TEMPERATURE_GRID_C: FloatArray = np.linspace(-20.0, 60.0, 9)
"""Temperature grid of the resistance table [°C] (uniform, step 10)."""
DURATION_GRID_S: FloatArray = np.array([1.0, 10.0, 30.0, 100.0, 300.0, 1000.0])
"""Pulse durations at which the resistance is read [s]."""
SOC_WINDOW: tuple[float, float] = (0.05, 0.95)
"""Default SoC limits: pulse durations that would leave them are not used."""
PULSE_C_RATES: tuple[float, ...] = (0.2, 1.0)
"""Pulse currents as multiples of the cell capacity per hour (1 C is the default limit)."""

_CHEMISTRIES = ("LFP", "NMC", "LCO")


def default_output_path() -> Path:
    """Where the tables live: ``safety/data/cell_tables.json`` of this checkout/install."""
    import pulsebms.safety

    return Path(pulsebms.safety.__file__).resolve().parent / "data" / "cell_tables.json"


def ocv_table(chemistry: str, soc: FloatArray = OCV_SOC_GRID) -> FloatArray:
    """Open-circuit voltage of one cell at each SoC (25 °C) [V].

    Args:
        chemistry: Chemistry name.
        soc: State-of-charge points, fractions in [0, 1].

    Returns:
        ``U_p(y(soc)) − U_n(x(soc))`` per point.
    """
    import pybamm

    from pulsebms.envs.twin.parameters import cell_facts, parameter_values

    values = parameter_values(chemistry)
    facts = cell_facts(chemistry)
    x, y = facts.stoichiometries(np.asarray(soc, dtype=np.float64))
    param = pybamm.LithiumIonParameters()
    t_ref = pybamm.Scalar(298.15)
    u_n = values.evaluate(param.n.prim.U(pybamm.Vector(x), t_ref))
    u_p = values.evaluate(param.p.prim.U(pybamm.Vector(y), t_ref))
    return np.asarray(u_p - u_n, dtype=np.float64).ravel()


def resistance_table(
    chemistry: str,
    direction: str,
    soc: Sequence[float] | FloatArray = RESISTANCE_SOC_GRID,
    temperature_c: Sequence[float] | FloatArray = TEMPERATURE_GRID_C,
    duration_s: Sequence[float] | FloatArray = DURATION_GRID_S,
) -> FloatArray:
    """Effective cell resistance from SPMe current pulses (see the module docstring) [Ω].

    Args:
        chemistry: Chemistry name.
        direction: ``"discharge"`` or ``"charge"``.
        soc: Initial SoC points.
        temperature_c: Temperature points [°C].
        duration_s: Pulse durations [s], increasing.

    Returns:
        Array of shape ``(len(duration_s), len(soc), len(temperature_c))``.

    Raises:
        ValueError: On an unknown direction.
    """
    from pulsebms.envs.twin.parameters import cell_facts

    if direction not in ("discharge", "charge"):
        raise ValueError(f"direction must be 'discharge' or 'charge', got {direction!r}")
    sign = 1.0 if direction == "discharge" else -1.0
    facts = cell_facts(chemistry)
    soc_arr = np.asarray(soc, dtype=np.float64)
    temp_arr = np.asarray(temperature_c, dtype=np.float64)
    dur = np.asarray(duration_s, dtype=np.float64)
    sim = _pulse_model(chemistry)
    table = np.full((dur.size, soc_arr.size, temp_arr.size), np.nan)
    for i, s in enumerate(soc_arr):
        x, y = facts.stoichiometries(float(s))
        for j, t_c in enumerate(temp_arr):
            for c_rate in PULSE_C_RATES:
                inputs = {
                    "Current function [A]": sign * c_rate * facts.capacity_ah,
                    "Ambient temperature [K]": t_c + 273.15,
                    "Initial temperature [K]": t_c + 273.15,
                    "Initial concentration in negative electrode [mol.m-3]": x
                    * facts.c_n_max_mol_m3,
                    "Initial concentration in positive electrode [mol.m-3]": y
                    * facts.c_p_max_mol_m3,
                }
                r = _pulse_resistance(
                    sim, chemistry, float(s), sign * c_rate * facts.capacity_ah, dur, inputs
                )
                table[:, i, j] = np.fmax(table[:, i, j], r)
    table = np.fmax.accumulate(table, axis=0)
    # Points where no pulse stays in the SoC window are never used at that duration by a
    # shield with the default SoC limits; they take the largest value at (t, T).
    fill = np.nanmax(table, axis=1, keepdims=True)
    table = np.where(np.isnan(table), np.broadcast_to(fill, table.shape), table)
    return np.asarray(table, dtype=np.float64)


def _pulse_model(chemistry: str) -> Any:
    """Build the isothermal SPMe once with SoC, temperature and current as inputs."""
    import pybamm

    from pulsebms.envs.twin.parameters import parameter_values

    values = parameter_values(chemistry)
    for name in (
        "Current function [A]",
        "Ambient temperature [K]",
        "Initial temperature [K]",
        "Initial concentration in negative electrode [mol.m-3]",
        "Initial concentration in positive electrode [mol.m-3]",
    ):
        values[name] = "[input]"
    model = pybamm.lithium_ion.SPMe()
    solver = pybamm.IDAKLUSolver(rtol=1e-8, atol=1e-8)
    sim = pybamm.Simulation(model, parameter_values=values, solver=solver)
    sim.build()
    return sim


def _pulse_resistance(
    sim: Any,
    chemistry: str,
    soc0: float,
    current_a: float,
    duration_s: FloatArray,
    inputs: dict[str, float],
) -> FloatArray:
    """``(OCV(SoC(t)) − V(t)) / I`` at each duration; the collapse value after a cut-off."""
    import pybamm

    from pulsebms.envs.twin.parameters import cell_facts

    facts = cell_facts(chemistry)
    ocv_table_v = _cached_ocv(chemistry)
    # After a cut-off (or past SoC 0/1) the pulse counts as collapsed: the terminal
    # voltage fell to 0 V (discharge) or rose by V_max above the OCV (charge).
    soc_d = soc0 - current_a * duration_s / 3600.0 / facts.capacity_ah
    relevant = (soc_d >= SOC_WINDOW[0]) & (soc_d <= SOC_WINDOW[1])
    out = np.full(duration_s.size, np.nan)
    try:
        solution = sim.solve(
            t_eval=[0.0, float(duration_s[-1])],
            t_interp=np.concatenate([[0.0], duration_s]),
            inputs=inputs,
        )
    except pybamm.SolverError:
        return out
    t = np.asarray(solution["Time [s]"].entries, dtype=np.float64)
    v = np.asarray(solution["Voltage [V]"].entries, dtype=np.float64)
    inside = (v >= facts.voltage_min_v - 1e-6) & (v <= facts.voltage_max_v + 1e-6)
    # The pulse ends at the solver's last time or the first sample past a cut-off.
    last = int(np.argmin(inside)) if not inside.all() else t.size - 1
    t_cut = float(t[last])
    soc_cut = soc0 - current_a * t_cut / 3600.0 / facts.capacity_ah
    ocv_cut = float(np.interp(soc_cut, OCV_SOC_GRID, ocv_table_v))
    r_cut = (ocv_cut - float(v[last])) / current_a if t_cut > 0 else np.nan
    for k, d in enumerate(duration_s):
        if not relevant[k]:
            continue
        if d <= t_cut + 1e-9 and inside[: last + 1].all():
            ocv_d = float(np.interp(soc_d[k], OCV_SOC_GRID, ocv_table_v))
            out[k] = (ocv_d - float(np.interp(d, t, v))) / current_a
        else:
            # Cut off before d: the overpotential grew to the limit in t_cut; extrapolate it
            # linearly in time (a diffusion-limited collapse is faster than √t).
            out[k] = r_cut * d / t_cut
    return out


_OCV_CACHE: dict[str, FloatArray] = {}


def _cached_ocv(chemistry: str) -> FloatArray:
    if chemistry not in _OCV_CACHE:
        _OCV_CACHE[chemistry] = ocv_table(chemistry)
    return _OCV_CACHE[chemistry]


def generate(
    chemistries: Sequence[str] = _CHEMISTRIES,
    *,
    soc: Sequence[float] | FloatArray = RESISTANCE_SOC_GRID,
    temperature_c: Sequence[float] | FloatArray = TEMPERATURE_GRID_C,
    duration_s: Sequence[float] | FloatArray = DURATION_GRID_S,
) -> dict[str, Any]:
    """Compute the tables as plain JSON data.

    Args:
        chemistries: Chemistry names to include.
        soc: Resistance SoC grid (uniform for the shipped file).
        temperature_c: Resistance temperature grid [°C] (uniform for the shipped file).
        duration_s: Resistance duration grid [s].

    Returns:
        The document written by :func:`main`.
    """
    import pybamm

    from pulsebms.envs.chemistry import get_chemistry
    from pulsebms.envs.twin.parameters import cell_facts

    doc: dict[str, Any] = {
        "generator": "python -m pulsebms.envs.cell_tables",
        "pybamm_version": pybamm.__version__,
        "model": "SPMe (isothermal), constant-current pulses from rest",
        "pulse_c_rates": list(PULSE_C_RATES),
        "ocv_soc_grid": [float(v) for v in OCV_SOC_GRID],
        "resistance_soc_grid": [float(v) for v in np.asarray(soc)],
        "temperature_grid_c": [float(v) for v in np.asarray(temperature_c)],
        "duration_grid_s": [float(v) for v in np.asarray(duration_s)],
        "chemistries": {},
    }
    for name in chemistries:
        chem = get_chemistry(name)
        facts = cell_facts(chem.name)
        ocv = _cached_ocv(chem.name)
        res_dis = resistance_table(chem.name, "discharge", soc, temperature_c, duration_s)
        res_chg = resistance_table(chem.name, "charge", soc, temperature_c, duration_s)
        doc["chemistries"][chem.name] = {
            "parameter_set": chem.parameter_set,
            "capacity_ah": facts.capacity_ah,
            "voltage_window_v": [facts.voltage_min_v, facts.voltage_max_v],
            "ocv_v": [round(float(v), 9) for v in ocv],
            "resistance_discharge_ohm": np.round(res_dis, 9).tolist(),
            "resistance_charge_ohm": np.round(res_chg, 9).tolist(),
        }
    return doc


def main(argv: list[str] | None = None) -> int:
    """Write the cell tables (``--output`` to choose the file).

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        Exit code 0.
    """
    parser = argparse.ArgumentParser(prog="python -m pulsebms.envs.cell_tables")
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    out: Path = args.output or default_output_path()
    doc = generate()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
