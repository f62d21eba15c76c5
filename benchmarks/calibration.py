"""``pulsebms-bench calibration``: the twin service's calibration and forecast figures.

1. **ECM calibration of 100 packs** (SoH and resistance): truth = the equivalent-circuit twin
   with packs aged to random SoH in [0.80, 0.98] (LFP, NMC, LCO in turn), a 4 h duty with
   ±C/5 pulse pairs, telemetry every 10 s with ±2 mV uniform cell-voltage noise; the
   calibrator starts from SoH 1, resistance factor 1. Time of the batched calibration and,
   as the baseline, of the packs calibrated one at a time (same code, batches of one; timed
   on 10 packs and scaled to all), interleaved; errors of SoH and of the resistance factor
   (truth 1/SoH).
2. **Electrode fractions** (physics fidelity, SPM NMC): truth = PyBaMM's IDAKLU solve with
   both active-material fractions drawn around 0.08 below Chen2020's, 1.5 h of telemetry
   with ±2 mV; time of the batched fit and the largest error (PyBOP's tolerance: 0.015).
3. **Back-test**: forecast vs truth SoH over an accelerated month (3 packs).

Prints each figure with the load average and a last line ``RESULT {json}``::

    pulsebms-bench calibration            # 100 ECM packs, 10 electrode packs, the month
    pulsebms-bench calibration --quick    # 10 ECM packs, 2 electrode packs, a week
    pulsebms-bench calibration --full     # 100 electrode packs too
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin import make_twin
from pulsebms.hil.noise import SensorNoise
from pulsebms.services.twin.backtest import backtest
from pulsebms.services.twin.calibration import EcmCalibrator
from pulsebms.services.twin.duty import Duty
from pulsebms.services.twin.electrode import ElectrodeCalibrator, reference_voltage
from pulsebms.services.twin.recording import record_telemetry
from pulsebms.services.twin.window import PackWindow

__all__ = ["bench_backtest", "bench_ecm", "bench_electrode", "main"]

_CHEMS = ("LFP", "NMC", "LCO")


def _noise(n: int, seed: int) -> SensorNoise:
    return SensorNoise(
        n, seed=seed, voltage_noise_v=0.002, current_gain_error=0.0, current_offset_a=0.0,
        current_noise_a=0.0, temperature_offset_c=0.0, temperature_noise_c=0.0,
    )  # fmt: skip


def _windows(rows: list[Any], ids: list[str]) -> list[PackWindow]:
    by_pack: dict[str, list[Any]] = {i: [] for i in ids}
    for r in rows:
        by_pack[r[0]].append(r)
    out = []
    for i in ids:
        arr = np.array([r[1:] for r in by_pack[i]], dtype=np.float64)
        cols = dict(zip(("t_s", "soc", "soh", "current_a", "voltage_v", "temperature_c"),
                        arr.T, strict=True))  # fmt: skip
        out.append(PackWindow.from_columns(cols))
    return out


def bench_ecm(
    n_packs: int, seed: int = 0, *, hours: float = 4.0, repeats: int = 2
) -> dict[str, float]:
    """Calibrate ``n_packs`` aged packs batched and one by one; errors and times."""
    rng = np.random.default_rng(seed)
    soh = rng.uniform(0.80, 0.98, n_packs)
    chems = [_CHEMS[k % 3] for k in range(n_packs)]
    truth = [
        PackSpec(c, initial_soc=0.8, initial_soh=float(s)) for c, s in zip(chems, soh, strict=True)
    ]
    twin = make_twin(truth, "ecm", degradation="none")
    capacity = np.asarray(twin.ratings.cell_capacity_ah * twin.ratings.parallel) * soh
    duty = Duty(cycles_per_day=4.0, depth_of_discharge=0.6, c_rate=0.5, pulse_c_rate=0.2)
    current = duty.current_profile(capacity, 10.0, hours * 3600.0, seed=seed)
    ids = [f"p{k:03d}" for k in range(n_packs)]
    rec = record_telemetry(twin, current, 10.0, ids, noise=_noise(n_packs, seed + 1))
    windows = _windows(rec.rows, ids)
    calibrator = EcmCalibrator([PackSpec(c) for c in chems])
    # Interleaved: batched, then the baseline (the same packs one at a time; on at most
    # 10 packs, scaled to all: per-pack cost does not depend on the others), twice.
    n_single = min(n_packs, 10)
    batched_s, single_s = [], []
    result = calibrator.calibrate(windows)  # also the first batched timing's warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        result = calibrator.calibrate(windows)
        batched_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        for k in range(n_single):
            calibrator.calibrate(windows[k : k + 1], [k])
        single_s.append((time.perf_counter() - start) * n_packs / n_single)
    soh_err = np.abs(result.soh / soh - 1.0)
    r_err = np.abs(result.resistance_factor * soh - 1.0)
    return {
        "packs": float(n_packs),
        "samples_per_pack": float(windows[0].n_samples),
        "batched_s": min(batched_s),
        "one_by_one_s": min(single_s),
        "speedup": min(single_s) / min(batched_s),
        "soh_error_max_pct": 100.0 * float(soh_err.max()),
        "soh_error_mean_pct": 100.0 * float(soh_err.mean()),
        "resistance_error_max_pct": 100.0 * float(r_err.max()),
        "converged": float(result.converged.mean()),
        "within_1pct": float(np.mean(soh_err < 0.01)),
    }


def bench_electrode(n_packs: int, seed: int = 0) -> dict[str, float]:
    """Fit both active-material fractions of ``n_packs`` NMC packs; error and time."""
    rng = np.random.default_rng(seed)
    nominal = np.array([0.75, 0.665])
    truth = np.clip(nominal - 0.08 + rng.normal(0.0, 0.03, (n_packs, 2)), 0.45, 0.9)
    duty = Duty(cycles_per_day=6.0, depth_of_discharge=0.6, c_rate=1.0, pulse_c_rate=0.3)
    dt = 10.0
    current = duty.current_profile(np.full(n_packs, 5.0), dt, 1.5 * 3600.0, seed=seed)
    windows = []
    start = time.perf_counter()
    for k in range(n_packs):
        v = reference_voltage("NMC", (truth[k, 0], truth[k, 1]), 0.8, current[:, k], dt)
        v = v + rng.uniform(-0.002, 0.002, v.size)
        soc = np.full(v.size, np.nan)
        soc[0] = 0.8
        t_s = np.arange(v.size, dtype=np.float64) * dt
        windows.append(PackWindow(t_s, np.r_[0.0, current[:, k]], v, np.full(v.size, 25.0), soc))
    truth_s = time.perf_counter() - start
    calibrator = ElectrodeCalibrator([PackSpec("NMC", series=1, parallel=1)] * n_packs)
    calibrator.calibrate(windows[:1], [0], max_iterations=1)  # build the model (once)
    start = time.perf_counter()
    result = calibrator.calibrate(windows)
    fit_s = time.perf_counter() - start
    err = np.abs(result.x - truth)
    return {
        "packs": float(n_packs),
        "samples_per_pack": float(windows[0].n_samples),
        "truth_solve_s": truth_s,
        "fit_s": fit_s,
        "error_max": float(err.max()),
        "error_mean": float(err.mean()),
        "std_mean": float(np.nanmean(result.std)),
        "within_0015": float(np.mean(np.all(err < 0.015, axis=1))),
        "converged": float(result.converged.mean()),
    }


def bench_backtest(days: float) -> dict[str, Any]:
    """The forecast back-test (see :mod:`pulsebms.services.twin.backtest`)."""
    packs = [PackSpec("NMC", initial_soc=0.8, initial_soh=0.93),
             PackSpec("LFP", initial_soc=0.8, initial_soh=0.88),
             PackSpec("LCO", initial_soc=0.8, initial_soh=0.96)]  # fmt: skip
    start = time.perf_counter()
    res = backtest(packs, days=days, acceleration=6.0)
    return {
        "days": days,
        "acceleration": 6.0,
        "wall_s": time.perf_counter() - start,
        "soh_rmse": res.soh_rmse.tolist(),
        "soh_max_abs_error": res.soh_max_abs_error.tolist(),
        "fade_error": res.fade_error.tolist(),
        "true_fade": (res.truth_soh[:, 0] - res.truth_soh[:, -1]).tolist(),
        "calibration_soh_error": (res.calibration.soh - res.true_initial_soh).tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the calibration benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="10 + 2 packs, a week")
    size.add_argument("--full", action="store_true", help="100 electrode packs too")
    parser.add_argument("--parts", nargs="+", default=["ecm", "electrode", "backtest"])
    args = parser.parse_args(argv)
    n_ecm, n_el, days = (10, 2, 7.0) if args.quick else (100, 100 if args.full else 10, 30.0)
    result: dict[str, Any] = {"load_1m_start": os.getloadavg()[0]}
    if "ecm" in args.parts:
        r = bench_ecm(n_ecm)
        result["ecm"] = r
        print(
            f"ECM calibration, {n_ecm} packs × {r['samples_per_pack']:.0f} samples: batched "
            f"{r['batched_s']:.2f} s, one by one {r['one_by_one_s']:.2f} s ({r['speedup']:.1f}×); "
            f"SoH error max {r['soh_error_max_pct']:.3f} % (mean {r['soh_error_mean_pct']:.3f} %), "
            f"resistance error max {r['resistance_error_max_pct']:.3f} %; load "
            f"{os.getloadavg()[0]:.2f}",
            flush=True,
        )
    if "electrode" in args.parts:
        r = bench_electrode(n_el)
        result["electrode"] = r
        print(
            f"electrode fractions (SPM NMC), {n_el} packs × {r['samples_per_pack']:.0f} samples: "
            f"fit {r['fit_s']:.2f} s (truth solves {r['truth_solve_s']:.1f} s); error max "
            f"{r['error_max']:.4f} (mean {r['error_mean']:.4f}, σ mean {r['std_mean']:.4f}); "
            f"within 0.015: {100 * r['within_0015']:.0f} %; load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    if "backtest" in args.parts:
        bt = bench_backtest(days)
        result["backtest"] = bt
        print(
            f"back-test, {days:g} days ×{bt['acceleration']:g}: SoH RMSE "
            + ", ".join(f"{x:.4f}" for x in bt["soh_rmse"])
            + "; fade error "
            + ", ".join(f"{100 * x:+.1f} %" for x in bt["fade_error"])
            + " (true fade "
            + ", ".join(f"{x:.3f}" for x in bt["true_fade"])
            + ")"
            + f"; load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
