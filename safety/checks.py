"""Property checks of a shield, as library code users can run in their own CI (numpy only).

:func:`check_shield` draws random fleet states and actions and checks, for each case:

* ``range``: the output is finite and inside the action space ``[-1, 1]``;
* ``box``: the output is inside the admissible box the shield reported;
* ``constraints``: the output satisfies every limit **re-derived independently** from
  the cell model (pack current from the power with ``P_cell = I·(OCV − R·I)``; current,
  C-rate, predicted SoC and cell voltage after one step; zero power at a temperature
  limit);
* ``identity``: an admissible action that keeps its own total comes back unchanged;
* ``idempotent``: projecting a projected action changes nothing (both target modes);
* ``optimal``: no admissible action is closer (the KKT conditions of the projection hold,
  checked with their multiplier); and, when a ``reference`` is given, the cvxpy reference
  agrees to ``rtol``;
* ``fallback``: states outside the limits or invalid never raise, give the fallback pack
  zero power and the ``FALLBACK`` status.

Example:
    >>> import numpy as np
    >>> from pulsebms.safety import PackRatings
    >>> from pulsebms.safety.shield import Shield
    >>> ratings = PackRatings(("NMC", "LFP", "LCO"), np.array([14, 16, 12]),
    ...                       np.array([4, 10, 20]), np.array([5.15, 2.3, 0.87]),
    ...                       np.array([1000.0, 1200.0, 800.0]))
    >>> check_shield(Shield(ratings, dt_s=60.0), n_cases=20, seed=0).passed
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pulsebms.core.types import FloatArray
from pulsebms.safety.shield import Shield, ShieldStatus
from pulsebms.safety.state import FleetState

__all__ = [
    "ShieldCheckError",
    "ShieldCheckReport",
    "check_shield",
    "constraint_failures",
    "kkt_residual",
    "random_action",
    "random_state",
]


_TOL = 1e-9


@dataclass
class ShieldCheckReport:
    """Outcome of :func:`check_shield`.

    Attributes:
        n_cases: Cases drawn.
        seed: Seed of the draws.
        checks: Property name → number of cases it was checked on.
        failures: One line per failed check (property, case, detail).
    """

    n_cases: int
    seed: int
    checks: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return not self.failures

    def __str__(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.checks.items()))
        head = f"check_shield: {self.n_cases} cases (seed {self.seed}); checked {counts}"
        if self.passed:
            return head + "; all passed"
        shown = "\n  ".join(self.failures[:20])
        more = f"\n  … {len(self.failures) - 20} more" if len(self.failures) > 20 else ""
        return f"{head}; {len(self.failures)} FAILED:\n  {shown}{more}"


class ShieldCheckError(AssertionError):
    """Raised by :func:`check_shield` when a property fails; carries the report.

    Args:
        report: The failed report.
    """

    def __init__(self, report: ShieldCheckReport) -> None:
        super().__init__(str(report))
        self.report = report


def random_state(shield: Shield, rng: np.random.Generator, *, inside: bool = True) -> FleetState:
    """A random fleet state for ``shield``'s fleet.

    Args:
        shield: The shield (its limits and cell model shape the draw).
        rng: Random generator.
        inside: Draw inside every limit (True), or with some packs outside a limit, non-
            finite or invalid (False).

    Returns:
        The state; inside ones include packs exactly at the SoC and temperature limits.
    """
    n = shield.n_packs
    lim = [shield.limits[i] for i in range(n)]
    soc_lo = np.array([x.soc_min for x in lim])
    soc_hi = np.array([x.soc_max for x in lim])
    t_lo = np.array([x.temperature_min_c for x in lim])
    t_hi = np.array([x.temperature_max_c for x in lim])
    soc = rng.uniform(soc_lo, soc_hi)
    temp = rng.uniform(t_lo, t_hi)
    edge = rng.random(n)
    soc = np.where(edge < 0.1, soc_lo, np.where(edge > 0.9, soc_hi, soc))
    edge = rng.random(n)
    temp = np.where(edge < 0.05, t_lo, np.where(edge > 0.9, t_hi - rng.uniform(0, 6, n), temp))
    v_lo = np.array([x.cell_voltage_min_v for x in lim])
    v_hi = np.array([x.cell_voltage_max_v for x in lim])
    ocv = np.array(
        [shield.cell_model.ocv_v(c, s) for c, s in zip(shield.ratings.chemistry, soc, strict=True)]
    )
    volt = np.clip(ocv + rng.normal(0.0, 0.02, n), v_lo, v_hi)
    soh = rng.uniform(0.6, 1.0, n)
    current = rng.uniform(-50.0, 50.0, n)
    valid = np.ones(n, dtype=bool)
    if not inside:
        for i in np.flatnonzero(rng.random(n) < 0.5):
            kind = int(rng.integers(6))
            if kind == 0:
                soc[i] = soc_hi[i] + rng.uniform(1e-6, 0.05)
            elif kind == 1:
                temp[i] = t_hi[i] + rng.uniform(1e-6, 20.0)
            elif kind == 2:
                volt[i] = v_lo[i] - rng.uniform(1e-6, 0.5)
            elif kind == 3:
                valid[i] = False
            elif kind == 4:
                soc[i] = math.nan
            else:
                temp[i] = -math.inf
    return FleetState(
        soc=soc,
        soh=soh,
        temperature_c=temp,
        cell_voltage_v=volt,
        current_a=current,
        demand_w=0.0,
        valid=valid,
    )


def random_action(n: int, rng: np.random.Generator, *, invalid: bool = False) -> FloatArray:
    """A random normalised action (with NaN, ±inf and out-of-range entries if asked).

    Args:
        n: Number of packs.
        rng: Random generator.
        invalid: Include invalid entries.

    Returns:
        The action.
    """
    kind = int(rng.integers(4))
    if kind == 0:
        action = rng.uniform(-1.0, 1.0, n)
    elif kind == 1:
        action = rng.choice(np.array([-1.0, 1.0]), n)
    elif kind == 2:
        action = np.full(n, float(rng.choice(np.array([-1.0, 1.0]))))
    else:
        action = rng.normal(0.0, 0.3, n).clip(-1.0, 1.0)
    if invalid:
        bad = rng.random(n) < 0.3
        junk = rng.choice(np.array([math.nan, math.inf, -math.inf, 1.5, -7.0]), n)
        action = np.where(bad, junk, action)
    return np.asarray(action, dtype=np.float64)


def kkt_residual(
    request: FloatArray,
    out: FloatArray,
    lower: FloatArray,
    upper: FloatArray,
    weight: FloatArray,
) -> float:
    """How far ``out`` is from satisfying the projection's KKT conditions (0 if it does).

    With multiplier λ: free coordinates have ``out − request = λ·w``; coordinates at their
    upper bound need ``request + λ·w ≥ upper``, at their lower bound ``≤ lower``. For a
    strictly convex problem these conditions mean no admissible point on the same
    hyperplane is closer.

    Args:
        request: The (sanitised) request.
        out: The candidate projection.
        lower: Lower bounds.
        upper: Upper bounds.
        weight: Weights of the total.

    Returns:
        The largest violation for the best λ (normalised units).
    """
    tol = 1e-12
    at_up = out >= upper - tol
    at_lo = out <= lower + tol
    free = ~(at_up | at_lo)
    lam_needed = (out - request) / weight
    if free.any():
        lam = float(np.median(lam_needed[free]))
        spread = float(np.max(np.abs(lam_needed[free] - lam) * weight[free]))
    else:
        # Any λ in [max over at_up of (upper − r)/w, min over at_lo of (lower − r)/w] works.
        lo_lam = np.max(((upper - request) / weight)[at_up & ~at_lo], initial=-np.inf)
        hi_lam = np.min(((lower - request) / weight)[at_lo & ~at_up], initial=np.inf)
        if lo_lam <= hi_lam + tol:
            return 0.0
        return float(lo_lam - hi_lam)
    up_short = np.max((upper - request - lam * weight)[at_up & ~at_lo], initial=0.0)
    lo_short = np.max((request + lam * weight - lower)[at_lo & ~at_up], initial=0.0)
    return max(spread, float(up_short), float(lo_short))


def _cell_current_a(power_cell_w: FloatArray, ocv_v: FloatArray, r_ohm: FloatArray) -> FloatArray:
    """Cell current delivering ``power_cell_w`` from a source ``ocv_v`` behind ``r_ohm``."""
    disc = np.maximum(ocv_v * ocv_v - 4.0 * r_ohm * power_cell_w, 0.0)
    return np.asarray(2.0 * power_cell_w / (ocv_v + np.sqrt(disc)), dtype=np.float64)


def constraint_failures(shield: Shield, state: FleetState, action: FloatArray) -> list[str]:
    """Limits an action breaks according to the cell model (independent of the box).

    Args:
        shield: The shield (its ratings, limits, ``dt_s`` and cell model).
        state: The state the action is applied in (invalid or non-finite packs skipped).
        action: Normalised set-points.

    Returns:
        One line per broken limit; empty when the action is safe.
    """
    ratings = shield.ratings
    out: list[str] = []
    model = shield.cell_model
    for i in range(shield.n_packs):
        lim = shield.limits[i]
        if not bool(state.valid[i]):
            continue
        chem = ratings.chemistry[i]
        soc, soh = float(state.soc[i]), float(state.soh[i])
        temp = float(state.temperature_c[i])
        if not (math.isfinite(soc) and math.isfinite(soh) and math.isfinite(temp)):
            continue
        power_w = float(action[i] * ratings.rated_power_w[i])
        n_cells = float(ratings.series[i] * ratings.parallel[i])
        ocv = model.ocv_v(chem, soc)
        direction = "discharge" if action[i] >= 0 else "charge"
        r = model.resistance_ohm(chem, soc, temp, shield.resistance_duration_s, direction) / soh
        i_cell = float(_cell_current_a(np.asarray(power_w / n_cells), ocv, r))
        current = i_cell * float(ratings.parallel[i])
        q_ah = float(ratings.capacity_ah[i]) * soh
        soc_end = soc - current * shield.dt_s / 3600.0 / q_ah
        v_end = float(model.ocv_v(chem, soc_end)) - float(r) * i_cell
        tol = 1e-9
        checks = (
            ("current_max_a", current <= lim.current_max_a + tol),
            ("current_min_a", current >= lim.current_min_a - tol),
            ("c_rate_max", abs(current) <= lim.c_rate_max * q_ah + tol),
            ("soc_min", soc_end >= lim.soc_min - tol),
            ("soc_max", soc_end <= lim.soc_max + tol),
            ("cell_voltage_min_v", v_end >= lim.cell_voltage_min_v - tol or current <= 0),
            ("cell_voltage_max_v", v_end <= lim.cell_voltage_max_v + tol or current >= 0),
            (
                "temperature",
                power_w == 0.0 or lim.temperature_min_c < temp < lim.temperature_max_c,
            ),
        )
        out.extend(
            f"pack {i}: {name} (a={action[i]:.6g}, I={current:.6g} A, SoC_end={soc_end:.6g}, "
            f"V_end={v_end:.6g} V)"
            for name, ok in checks
            if not ok
        )
    return out


def check_shield(
    shield: Shield,
    *,
    n_cases: int = 200,
    seed: int = 0,
    reference: Callable[[FleetState, FloatArray, float | None], FloatArray] | None = None,
    rtol: float = 1e-6,
    raise_on_failure: bool = False,
) -> ShieldCheckReport:
    """Check the shield's properties on random cases (see the module docstring).

    Args:
        shield: The shield under test.
        n_cases: Random cases (each runs every property).
        seed: Seed of the random draws.
        reference: Optional ``(state, action, target_power_w) -> action`` to compare with
            (e.g. ``ReferenceShield(shield).project``).
        rtol: Agreement asked of the reference (max abs difference / max(1, |a|∞)).
        raise_on_failure: Raise :class:`ShieldCheckError` instead of returning a failed
            report.

    Returns:
        The report (``report.passed``; ``str(report)`` for a summary).

    Raises:
        ShieldCheckError: If a property fails and ``raise_on_failure`` is set.
    """
    rng = np.random.default_rng(seed)
    report = ShieldCheckReport(n_cases=n_cases, seed=seed)
    rated = np.asarray(shield.ratings.rated_power_w, dtype=np.float64)
    weight = rated / float(rated.mean())

    def fail(prop: str, case: int, detail: str) -> None:
        report.failures.append(f"[{prop}] case {case}: {detail}")

    def count(prop: str) -> None:
        report.checks[prop] = report.checks.get(prop, 0) + 1

    for case in range(n_cases):
        state = random_state(shield, rng, inside=True)
        action = random_action(shield.n_packs, rng, invalid=case % 5 == 4)
        demand = bool(rng.random() < 0.5)
        target = float(rng.uniform(-1.2, 1.2) * rated.sum()) if demand else None
        try:
            result = shield.project(state, action, target)
        except Exception as exc:  # a check must report, not stop
            fail("fallback", case, f"project raised {type(exc).__name__}: {exc}")
            continue
        out = result.action
        count("range")
        if not (np.all(np.isfinite(out)) and np.all(np.abs(out) <= 1.0)):
            fail("range", case, f"action outside [-1, 1]: {out}")
        count("box")
        if np.any(out < result.lower - _TOL) or np.any(out > result.upper + _TOL):
            fail("box", case, "action outside the reported admissible box")
        count("constraints")
        for line in constraint_failures(shield, state, out):
            fail("constraints", case, line)
        count("idempotent")
        again = shield.project(state, out, target)
        if not np.array_equal(again.action, out) or again.intervened.any():
            fail("idempotent", case, f"max change {np.max(np.abs(again.action - out)):.3g}")
        request = np.clip(np.nan_to_num(action, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
        count("optimal")
        kkt = kkt_residual(request, out, result.lower, result.upper, weight)
        if kkt > 1e-9:
            fail("optimal", case, f"KKT violated by {kkt:.3g}")
        if reference is not None:
            count("reference")
            ref = np.asarray(reference(state, action, target), dtype=np.float64)
            err = float(np.max(np.abs(ref - out))) / max(1.0, float(np.max(np.abs(ref))))
            if err > rtol:
                fail("reference", case, f"differs from the reference by {err:.3g}")
        count("identity")
        safe = rng.uniform(result.lower, result.upper)
        ident = shield.project(state, safe)
        if not np.array_equal(ident.action, safe) or ident.status != ShieldStatus.OK:
            fail("identity", case, f"safe action changed ({ident.status.name})")
        count("fallback")
        bad_state = random_state(shield, rng, inside=False)
        try:
            bad = shield.project(bad_state, action, target)
        except Exception as exc:  # a check must report, not stop
            fail("fallback", case, f"project raised {type(exc).__name__}: {exc}")
            continue
        if bad.fallback.any():
            if not (ShieldStatus.FALLBACK in bad.status and np.all(bad.action[bad.fallback] == 0)):
                fail("fallback", case, f"fallback packs not at zero ({bad.status.name})")
        elif ShieldStatus.FALLBACK in bad.status:
            fail("fallback", case, "FALLBACK status without a fallback pack")
    if raise_on_failure and not report.passed:
        raise ShieldCheckError(report)
    return report
