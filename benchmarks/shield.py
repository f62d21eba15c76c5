"""Shield decision latency: fast numpy shield vs the cvxpy reference, 1/10/100 packs.

One decision is ``Shield.project(state, action)``: the admissible box from the state
(cell-model look-ups, current/C-rate/SoC/voltage bounds, derating) plus the projection
onto box ∩ fleet-total hyperplane. The cvxpy decision is the same box (numpy) plus the
projection solved by the DPP-compiled cvxpy problem (Clarabel). States and actions are
random (seeded) inside the operating envelope, so every decision reads cold table rows;
every call is timed alone with ``perf_counter_ns`` (garbage collector on, as in use).
The agreement of the two shields on the timed cases is reported too.

**Calibration.** A plain numpy **bisection** on the multiplier (box + sum only, 60
halvings: about 300 small numpy calls) is timed *interleaved* with the fast shield (one
bisection per ten decisions), so both see the same machine. The issue that set the
target measured this baseline at 140 µs p50 at 100 packs on its machine
(:data:`REFERENCE_BISECTION_P50_US`); ``scaled`` figures are ``measured × 140 / bisection
p50 here``, i.e. the fast shield's latency on a machine as fast as that one. The target
(p99 ≤ 50 µs at 100 packs) is judged on the scaled p99, and the raw one is printed next
to it.

Reproduce::

    pulsebms-bench shield            # full settings
    python -m pulsebms.benchmarks.shield --quick

The last line is ``RESULT {json}``. The header and ``RESULT`` carry the load average: on
a shared machine the p99 is set by the other processes (compare runs at similar load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray
from pulsebms.safety import FleetState, PackRatings, Shield
from pulsebms.safety.checks import random_action, random_state
from pulsebms.safety.reference import ReferenceShield

__all__ = ["main"]

SIZES = (1, 10, 100)
TARGET_P99_US = 50.0
"""Target: fast-shield p99 at 100 packs."""
REFERENCE_BISECTION_P50_US = 140.0
"""The calibration baseline's p50 at 100 packs where the target was set."""
CALIBRATION_EVERY = 10
"""One bisection call per this many fast-shield calls."""
_Cases = tuple[list[FleetState], list[FloatArray]]
_Box = tuple[FloatArray, FloatArray, BoolArray]
_CAPACITY_AH = {"LFP": 2.30345, "NMC": 5.1532, "LCO": 0.87284}
_SHAPE = {"LFP": (16, 8), "NMC": (14, 4), "LCO": (14, 20)}


def _fleet(n: int, rng: np.random.Generator) -> PackRatings:
    chem = tuple(("LFP", "NMC", "LCO")[i % 3] for i in range(n))
    series = np.array([_SHAPE[c][0] for c in chem])
    parallel = np.array([_SHAPE[c][1] for c in chem])
    cap = np.array([_CAPACITY_AH[c] for c in chem])
    rated = cap * series * parallel * 3.6 * rng.uniform(0.8, 1.2, n)
    return PackRatings(chem, series, parallel, cap, rated)


def _time_us(fn: Callable[[int], object], n_calls: int, n_warmup: int) -> np.ndarray:
    for k in range(n_warmup):
        fn(k)
    out = np.empty(n_calls)
    clock = time.perf_counter_ns
    for k in range(n_calls):
        start = clock()
        fn(k)
        out[k] = clock() - start
    return out / 1000.0


def _time_interleaved_us(
    fn: Callable[[int], object], calibration: Callable[[int], object], n_calls: int, n_warmup: int
) -> tuple[np.ndarray, np.ndarray]:
    """Time ``fn``, with one (timed) ``calibration`` call every :data:`CALIBRATION_EVERY`.

    Both then see the same machine state (load, frequency, caches).
    """
    for k in range(n_warmup):
        fn(k)
        calibration(k)
    out = np.empty(n_calls)
    cal = np.empty(max(n_calls // CALIBRATION_EVERY, 1))
    clock = time.perf_counter_ns
    j = 0
    for k in range(n_calls):
        start = clock()
        fn(k)
        out[k] = clock() - start
        if k % CALIBRATION_EVERY == 0 and j < cal.size:
            start = clock()
            calibration(k)
            cal[j] = clock() - start
            j += 1
    return out / 1000.0, cal[:j] / 1000.0


def _bisection(
    request: np.ndarray, lower: np.ndarray, upper: np.ndarray, w: np.ndarray, target: float
) -> np.ndarray:
    lo, hi = -1e3, 1e3
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(w @ np.minimum(np.maximum(request + mid * w, lower), upper)) < target:
            lo = mid
        else:
            hi = mid
    return np.asarray(np.minimum(np.maximum(request + 0.5 * (lo + hi) * w, lower), upper))


def _stats(us: np.ndarray) -> dict[str, float]:
    return {
        "p50_us": round(float(np.percentile(us, 50)), 2),
        "p90_us": round(float(np.percentile(us, 90)), 2),
        "p99_us": round(float(np.percentile(us, 99)), 2),
        "mean_us": round(float(us.mean()), 2),
        # calls the OS scheduler visibly interrupted (a time slice is ~4 ms)
        "share_over_1ms": round(float(np.mean(us > 1000.0)), 4),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table and ``RESULT {json}``.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        0 (1 if the fast shield disagrees with cvxpy beyond 1e-6).
    """
    parser = argparse.ArgumentParser(prog="python -m pulsebms.benchmarks.shield")
    parser.add_argument("--quick", action="store_true", help="fewer calls (< 1 min)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dt-s", type=float, default=300.0, help="control interval [s]")
    parser.add_argument("--calls", type=int, default=None, help="fast-shield calls per size")
    args = parser.parse_args(argv)
    # ---- seeding: one generator for the whole run
    rng = np.random.default_rng(args.seed)
    n_fast, n_ref, n_cases = (3000, 150, 100) if args.quick else (30000, 1500, 500)
    if args.calls is not None:
        n_fast, n_ref = args.calls, max(args.calls // 20, 5)
    rows: dict[str, dict[str, object]] = {}
    worst = 0.0
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"shield decision latency, dt_s={args.dt_s}, {n_fast} fast / {n_ref} cvxpy calls "
        f"per size, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"{'packs':>5} {'fast p50':>9} {'fast p90':>9} {'fast p99':>9} {'bisect p50':>11} "
        f"{'scaled p50':>11} {'scaled p99':>11} {'cvxpy p50':>10} {'cvxpy p99':>10} "
        f"{'ratio p50':>9} {'max rel err':>11}  [µs]"
    )
    for n in SIZES:
        ratings = _fleet(n, rng)
        shield = Shield(ratings, dt_s=args.dt_s)
        reference = ReferenceShield(shield)
        states = [random_state(shield, rng) for _ in range(n_cases)]
        actions = [random_action(n, rng) for _ in range(n_cases)]
        boxes = [shield.bounds(s) for s in states]
        w = np.asarray(ratings.rated_power_w) / float(np.mean(ratings.rated_power_w))

        def fast(k: int, shield: Shield = shield, cases: _Cases = (states, actions)) -> object:
            return shield.project(cases[0][k % n_cases], cases[1][k % n_cases])

        def ref(
            k: int, ref: ReferenceShield = reference, cases: _Cases = (states, actions)
        ) -> object:
            return ref.project(cases[0][k % n_cases], cases[1][k % n_cases])

        def bis(
            k: int,
            boxes: list[_Box] = boxes,
            cases: _Cases = (states, actions),
            w: FloatArray = w,
        ) -> object:
            lo, up, _ = boxes[k % n_cases]
            a = cases[1][k % n_cases]
            return _bisection(a, lo, up, w, float(w @ a))

        fast_us, bis_us = _time_interleaved_us(fast, bis, n_fast, n_warmup=200)
        ref_us = _time_us(ref, n_ref, n_warmup=5)
        err = 0.0
        for k in range(min(n_cases, n_ref)):
            a_fast = shield.project(states[k], actions[k]).action
            a_ref = reference.project(states[k], actions[k])
            err = max(
                err, float(np.max(np.abs(a_fast - a_ref))) / max(1.0, float(np.max(np.abs(a_ref))))
            )
        worst = max(worst, err)
        f, r, b = _stats(fast_us), _stats(ref_us), _stats(bis_us)
        ratio = round(r["p50_us"] / f["p50_us"], 1)
        scale = REFERENCE_BISECTION_P50_US / b["p50_us"]
        scaled = {"p50_us": round(f["p50_us"] * scale, 2), "p99_us": round(f["p99_us"] * scale, 2)}
        rows[str(n)] = {
            "fast": f,
            "fast_scaled": scaled,
            "cvxpy": r,
            "bisection": b,
            "ratio_p50": ratio,
            "max_rel_err": err,
        }
        print(
            f"{n:>5} {f['p50_us']:>9.1f} {f['p90_us']:>9.1f} {f['p99_us']:>9.1f} "
            f"{b['p50_us']:>11.1f} {scaled['p50_us']:>11.1f} {scaled['p99_us']:>11.1f} "
            f"{r['p50_us']:>10.1f} {r['p99_us']:>10.1f} {ratio:>9.1f} {err:>11.2e}"
        )
    big = rows["100"]
    raw_p99 = float(big["fast"]["p99_us"])  # type: ignore[index]
    scaled_p99 = float(big["fast_scaled"]["p99_us"])  # type: ignore[index]
    target_ok = scaled_p99 <= TARGET_P99_US
    over = float(big["fast"]["share_over_1ms"])  # type: ignore[index]
    print(
        f"target p99 <= {TARGET_P99_US:g} µs at 100 packs on the reference machine (bisection "
        f"p50 {REFERENCE_BISECTION_P50_US:g} µs): {'met' if target_ok else 'NOT met'}, "
        f"scaled p99 {scaled_p99:.1f} µs (raw here {raw_p99:.1f} µs; "
        f"{100 * over:.2f} % of calls > 1 ms: preempted by the OS scheduler)"
    )
    result = {
        "dt_s": args.dt_s,
        "quick": bool(args.quick),
        "sizes": rows,
        "fast_p99_us_100": raw_p99,
        "fast_p99_us_100_scaled": scaled_p99,
        "reference_bisection_p50_us": REFERENCE_BISECTION_P50_US,
        "target_p99_us_100": TARGET_P99_US,
        "target_met": target_ok,
        "max_rel_err": worst,
        "load_average_1m": round(load[0], 2),
    }
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
