"""Accuracy of the edge estimator (EKF SoC, SoH, resistance) against the fleet twin's truth.

One pack per chemistry (LFP, NMC, LCO) is cycled by the twin (PyBaMM SPM physics twin by
default, ``--model SPMe`` for the SPM with electrolyte, ``--fidelity ecm`` for the twin's
equivalent circuit) between 10 % and 90 % SoC (or 15 %
of the voltage window from a cut-off) at random current levels (discharge 0 … 1 C, charge
0 … C/2, a new level every minute, ``dt_s`` = 10 s). The readings pass through
:class:`pulsebms.hil.noise.SensorNoise` (±10 mV voltage, ±0.5 % current gain, ±0.1 A
current offset, temperature offset) into
:class:`pulsebms.edge_runtime.estimation.FleetEstimator`, started with a **wrong SoC**
(truth + ``--soc-error``, clamped) and SoH 1 while the packs start at SoH 0.92 (LFP),
0.90 (NMC), 0.94 (LCO): the capacity the estimator must find.

**Accelerated fade**: the twin's empirical ageing (``degradation="empirical"``) with
``degradation_acceleration`` = ``--fade-acceleration`` (30), and every 30 steps (5 min) the
reported SoH is written back with ``twin.set_state(soh=...)``: the twin's electrical model
keeps the capacity of its last reset/``set_state`` (``soh_ref``), so without the re-sync the
reported SoH would fade while the cells' capacity and resistance did not.

Truth: SoC and SoH as the twin reports them; the resistance is a circuit's R0 at 50 %
SoC and 25 °C of the (capacity-scaled) cell, R0 / SoH × series / parallel: for the physics
twin, R0 of the estimator's circuit fitted to the SPM (not a quantity of the SPM itself);
for the ECM twin, R0 of the twin's own circuit (fitted on shorter pulses, so its split of
R0 and R1 differs from the estimator's).

**After convergence** means from the end of the first full cycle: the pack starts at 50 %,
discharges to the 10 % end, charges to the 90 % end, and the step it turns there ends the
first cycle (``converged_after_h``, about 3 h). The SoC RMSE and max error are taken over
every later step up to the end of the last cycle, so they include two knees at 10 % and
three at 90 % SoC; the SoH and resistance errors are the values at the end.

Printed per chemistry: SoC RMSE and max error after convergence, SoH error at the end,
resistance error at the end. ``--ambient-c`` (alias ``--temperature-c``) sets the ambient
and initial cell temperature (the cells warm a few kelvin under current). The last line is
``RESULT {json}``.

Example:
    $ pulsebms-bench estimation --quick
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from pulsebms.edge_runtime.ecm import EcmCell
from pulsebms.edge_runtime.estimation import FleetEstimator
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin import make_twin
from pulsebms.hil.noise import SensorNoise

__all__ = ["EstimationRow", "evaluate", "main"]

_SOC_LOW = 0.1
_SOC_HIGH = 0.9
_VOLTAGE_MARGIN = 0.15


@dataclass(frozen=True)
class EstimationRow:
    """Accuracy figures of one pack.

    Attributes:
        chemistry: Chemistry.
        cycles: Full cycles completed.
        converged_after_h: Time of the end of the first full cycle [h] (RMSE from there).
        soc_rmse_pct: SoC RMSE after convergence [% SoC].
        soc_max_error_pct: Largest |SoC error| after convergence [% SoC].
        soh_true: Twin SoH at the end.
        soh_estimate: Estimated SoH at the end.
        soh_error_pct: |SoH error| at the end [% points].
        resistance_true_mohm: Truth pack resistance at the end [mΩ].
        resistance_estimate_mohm: Estimated pack resistance at the end [mΩ].
        resistance_error_pct: Relative resistance error at the end [%].
        faulted: Whether the twin faulted the pack (its figures stop there).
    """

    chemistry: str
    cycles: int
    converged_after_h: float
    soc_rmse_pct: float
    soc_max_error_pct: float
    soh_true: float
    soh_estimate: float
    soh_error_pct: float
    resistance_true_mohm: float
    resistance_estimate_mohm: float
    resistance_error_pct: float
    faulted: bool


def evaluate(
    *,
    fidelity: str = "physics",
    cycles: int = 4,
    dt_s: float = 10.0,
    soc_error: float = 0.25,
    initial_soh: tuple[float, float, float] = (0.92, 0.90, 0.94),
    fade_acceleration: float = 30.0,
    resync_steps: int = 30,
    seed: int = 0,
    noise: bool = True,
    ambient_c: float = 25.0,
    max_steps: int = 20_000,
    model_name: str = "SPM",
) -> list[EstimationRow]:
    """Cycle one LFP, NMC and LCO pack on the twin and score the estimator.

    Args:
        fidelity: Twin fidelity (``"physics"`` or ``"ecm"``).
        cycles: Full 10 → 90 → 10 % cycles per pack.
        dt_s: Step and telemetry period [s].
        soc_error: Added to the true initial SoC for the estimator's start (clamped).
        initial_soh: True SoH at the start, per pack (the estimator starts at 1).
        fade_acceleration: ``degradation_acceleration`` of the twin.
        resync_steps: Steps between write-backs of the faded SoH into the twin's cells.
        seed: Seed of the current profile and the sensor noise.
        noise: Apply the sensor-noise model.
        ambient_c: Ambient temperature [°C].
        max_steps: Safety bound on the number of steps.
        model_name: PyBaMM model of the physics twin (``"SPM"`` or ``"SPMe"``).

    Returns:
        One row per pack (LFP, NMC, LCO).
    """
    packs = [
        PackSpec("LFP", series=14, parallel=4, initial_soc=0.5, initial_soh=initial_soh[0]),
        PackSpec("NMC", series=14, parallel=4, initial_soc=0.5, initial_soh=initial_soh[1]),
        PackSpec("LCO", series=14, parallel=20, initial_soc=0.5, initial_soh=initial_soh[2]),
    ]
    n = len(packs)
    twin = make_twin(
        packs,
        fidelity,
        degradation="empirical",
        degradation_acceleration=fade_acceleration,
        ambient_c=ambient_c,
        model_name=model_name,
    )
    state = twin.reset()
    ratings = twin.ratings
    rng = np.random.default_rng(seed)
    sensor = SensorNoise(n, seed=seed + 1) if noise else None
    estimator = FleetEstimator(ratings, initial_soc=np.clip(state.soc + soc_error, 0.0, 1.0))
    if fidelity == "ecm":
        from pulsebms.envs.twin.ecm import ecm_tables

        # The ECM twin's own circuit (fitted on 60 s pulses) is its truth.
        tables = [ecm_tables(c) for c in ratings.chemistry]
        r0_ref = np.array([float(np.interp(0.5, t.fit_soc, t.r0_ohm)) for t in tables])
    else:
        r0_ref = np.array([EcmCell.load(c).circuit(0.5, 25.0)[0] for c in ratings.chemistry])
    one_c_a = ratings.capacity_ah
    span_v = twin.voltage_max_v - twin.voltage_min_v
    v_low = twin.voltage_min_v + _VOLTAGE_MARGIN * span_v
    v_high = twin.voltage_max_v - 0.5 * _VOLTAGE_MARGIN * span_v
    direction = np.ones(n)  # +1 discharge, -1 charge
    level = np.zeros(n)
    cycles_done = np.zeros(n, dtype=np.int64)
    converged_step = np.full(n, -1, dtype=np.int64)
    errors: list[list[float]] = [[] for _ in range(n)]
    now_s = 0.0

    def observe(st_soc: np.ndarray, st_v: np.ndarray, st_i: np.ndarray, st_t: np.ndarray) -> None:
        for k in range(n):
            values = {
                "current_a": float(st_i[k]),
                "cell_voltage_v": float(st_v[k]),
                "temperature_c": float(st_t[k]),
            }
            read = sensor.apply(k, values) if sensor is not None else values
            estimator.update(
                k, now_s, read["current_a"], read["cell_voltage_v"], read["temperature_c"]
            )

    observe(state.soc, state.cell_voltage_v, state.current_a, state.temperature_c)
    step = 0
    while step < max_steps and np.any((cycles_done < cycles) & ~state.faulted):
        if step % 6 == 0:
            level = rng.uniform(0.2, 1.0, n) * (rng.uniform(size=n) > 0.1)
        # End a half-cycle at the SoC bound or, as a cycler does, near a voltage cut-off.
        v = state.cell_voltage_v
        flip_to_charge = (direction > 0) & ((state.soc < _SOC_LOW) | (v < v_low))
        flip_to_discharge = (direction < 0) & ((state.soc > _SOC_HIGH) | (v > v_high))
        direction = np.where(flip_to_charge, -1.0, np.where(flip_to_discharge, 1.0, direction))
        cycles_done += flip_to_discharge
        converged_step = np.where((converged_step < 0) & (cycles_done >= 1), step, converged_step)
        # Charge at up to C/2 (no constant-voltage phase: 1 C would reach the upper cut-off).
        c_rate = np.where(direction > 0, level, 0.5 * level)
        current = np.where(cycles_done < cycles, direction * c_rate * one_c_a, 0.0)
        state = twin.step_current(current, dt_s, ambient_c)
        now_s += dt_s
        step += 1
        if resync_steps > 0 and step % resync_steps == 0:
            state = twin.set_state(soh=state.soh)
        observe(state.soc, state.cell_voltage_v, state.current_a, state.temperature_c)
        for k in range(n):
            if converged_step[k] >= 0 and not state.faulted[k] and cycles_done[k] < cycles:
                errors[k].append(float(estimator.soc[k] - state.soc[k]))
    rows = []
    for k in range(n):
        err = np.asarray(errors[k])
        r_true = float(r0_ref[k] / state.soh[k] * ratings.series[k] / ratings.parallel[k])
        r_est = float(estimator.resistance_ohm[k])
        rows.append(
            EstimationRow(
                chemistry=ratings.chemistry[k],
                cycles=int(cycles_done[k]),
                converged_after_h=float(converged_step[k] * dt_s / 3600.0),
                soc_rmse_pct=float(100 * np.sqrt(np.mean(err**2))) if err.size else math.nan,
                soc_max_error_pct=float(100 * np.max(np.abs(err))) if err.size else math.nan,
                soh_true=float(state.soh[k]),
                soh_estimate=float(estimator.soh[k]),
                soh_error_pct=float(100 * abs(estimator.soh[k] - state.soh[k])),
                resistance_true_mohm=1e3 * r_true,
                resistance_estimate_mohm=1e3 * r_est,
                resistance_error_pct=100 * (r_est - r_true) / r_true,
                faulted=bool(state.faulted[k]),
            )
        )
    return rows


def format_table(rows: list[EstimationRow]) -> str:
    """The rows as a fixed-width text table."""
    head = (
        f"{'chem':<5}{'cycles':>7}{'conv h':>8}{'SoC RMSE %':>12}{'SoC max %':>11}"
        f"{'SoH true':>10}{'SoH est':>9}{'SoH err %':>11}{'R true mΩ':>11}{'R est mΩ':>10}"
        f"{'R err %':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.chemistry:<5}{r.cycles:>7d}{r.converged_after_h:>8.2f}{r.soc_rmse_pct:>12.2f}"
            f"{r.soc_max_error_pct:>11.2f}{r.soh_true:>10.4f}{r.soh_estimate:>9.4f}"
            f"{r.soh_error_pct:>11.2f}{r.resistance_true_mohm:>11.1f}"
            f"{r.resistance_estimate_mohm:>10.1f}{r.resistance_error_pct:>9.1f}"
            + ("  FAULTED" if r.faulted else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the estimation benchmark; the last line is ``RESULT {json}``.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``); ``--help`` lists them.

    Returns:
        0 when every chemistry meets the targets (SoC RMSE ≤ 1 %, SoH error ≤ 2 %), else 1.
    """
    parser = argparse.ArgumentParser(
        prog="pulsebms-bench estimation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="two cycles instead of four")
    parser.add_argument("--fidelity", default="physics", choices=("physics", "ecm"))
    parser.add_argument("--cycles", type=int, default=None, help="full cycles (default 4)")
    parser.add_argument("--soc-error", type=float, default=0.25, help="initial SoC error")
    parser.add_argument("--fade-acceleration", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-noise", action="store_true", help="exact readings")
    parser.add_argument(
        "--ambient-c",
        "--temperature-c",
        dest="ambient_c",
        type=float,
        default=25.0,
        help="ambient and initial cell temperature [°C] (default 25)",
    )
    parser.add_argument(
        "--model", default="SPM", choices=("SPM", "SPMe"), help="physics twin's PyBaMM model"
    )
    args = parser.parse_args(argv)
    cycles = args.cycles if args.cycles is not None else (2 if args.quick else 4)
    start = time.perf_counter()
    rows = evaluate(
        fidelity=args.fidelity,
        cycles=cycles,
        soc_error=args.soc_error,
        fade_acceleration=args.fade_acceleration,
        seed=args.seed,
        noise=not args.no_noise,
        ambient_c=args.ambient_c,
        model_name=args.model,
    )
    wall = time.perf_counter() - start
    twin_name = f"physics {args.model}" if args.fidelity == "physics" else args.fidelity
    print(
        f"twin {twin_name}, {cycles} cycles 10-90 % SoC at 0-1 C, dt 10 s, ambient "
        f"{args.ambient_c:g} °C, initial SoC error {args.soc_error:+.2f}, fade "
        f"x{args.fade_acceleration:g} (empirical, re-synced every 30 steps), noise "
        f"{'off' if args.no_noise else 'on'}, seed {args.seed}"
    )
    print("SoC RMSE/max after convergence: from the end of the first full cycle ('conv h')")
    print(format_table(rows))
    ok = all(r.soc_rmse_pct <= 1.0 and r.soh_error_pct <= 2.0 for r in rows)
    print(f"targets (SoC RMSE <= 1 %, SoH error <= 2 %): {'met' if ok else 'NOT met'}")
    result = {
        "fidelity": args.fidelity,
        "model": args.model if args.fidelity == "physics" else None,
        "ambient_c": args.ambient_c,
        "seed": args.seed,
        "cycles": cycles,
        "wall_s": round(wall, 2),
        "targets_met": ok,
        "rows": [asdict(r) for r in rows],
    }
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
