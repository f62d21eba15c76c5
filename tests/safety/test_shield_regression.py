"""Stored shield decisions: the fast path must keep reproducing them (to 1e-12).

``data/shield_cases.npz`` holds fleets, states (inside the envelope, on its edges, outside
it, invalid), requests (valid, NaN/inf/out of range, with and without a fleet target, and
already-admissible ones) and the :class:`~pulsebms.safety.ShieldResult` the shield gave
for each. It pins the numbers through performance work on :meth:`Shield.project`: any
change of the arithmetic shows up here, including the binding-limit names.

Regenerate (only when a change of results is intended and reviewed)::

    python tests/safety/test_shield_regression.py
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pulsebms.safety import FleetState, PackRatings, Shield, fleet_limits
from pulsebms.safety.checks import random_action, random_state

DATA = Path(__file__).resolve().parent / "data" / "shield_cases.npz"
TOL = 1e-12

# (packs, dt_s, limit overrides, cases)
FLEETS: tuple[tuple[int, float, dict[str, float], int], ...] = (
    (1, 10.0, {}, 40),
    (3, 300.0, {"soc_max": 1.0}, 40),
    (8, 60.0, {"current_max_a": 20.0, "current_min_a": -20.0}, 30),
    (8, 1.0, {"soc_max": 0.9}, 30),
    (30, 300.0, {"current_max_a": 400.0, "current_min_a": -400.0}, 12),
    (100, 300.0, {}, 6),
    (100, 10.0, {"soc_max": 0.9}, 4),
)
_CHEM = ("LFP", "NMC", "LCO")
_CAPACITY_AH = {"LFP": 2.30345, "NMC": 5.1532, "LCO": 0.87284}
_PACK_FIELDS = ("soc", "soh", "temperature_c", "cell_voltage_v", "current_a", "valid", "request")
_RESULT_FIELDS = ("action", "lower", "upper", "intervened", "fallback")


def _ratings(n: int, rng: np.random.Generator) -> PackRatings:
    chem = tuple(_CHEM[int(k)] for k in rng.integers(3, size=n))
    series = rng.integers(1, 25, n)
    parallel = rng.integers(1, 41, n)
    cap = np.array([_CAPACITY_AH[c] for c in chem])
    rated = rng.uniform(0.2, 3.0, n) * cap * parallel * series * 3.5
    return PackRatings(chem, series, parallel, cap, rated)


def _request(shield: Shield, state: FleetState, k: int, rng: np.random.Generator) -> Any:
    """A request and a target (None, finite, non-finite) of kind ``k % 6``."""
    n = shield.n_packs
    total = float(np.sum(shield.ratings.rated_power_w))
    kind = k % 6
    if kind == 0:
        return random_action(n, rng), None
    if kind == 1:
        return random_action(n, rng, invalid=True), None
    if kind == 2:
        return random_action(n, rng), float(rng.uniform(-1.2, 1.2)) * total
    if kind == 3:  # already admissible: the identity path
        lower, upper, _ = shield.bounds(state)
        return lower + rng.random(n) * (upper - lower), None
    if kind == 4:  # an earlier decision fed back (idempotence), or a box corner
        lower, upper, _ = shield.bounds(state)
        if k % 12 == 4:
            return shield.project(state, random_action(n, rng)).action, None
        return np.where(rng.random(n) < 0.5, lower, upper), None
    return random_action(n, rng), (math.nan, math.inf, 0.0)[k % 3]


def _generate() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261123)
    fleet_rows: dict[str, list[Any]] = {
        k: [] for k in ("n", "dt_s", "soc_max", "current_a", "first_pack")
    }
    fleet_packs: dict[str, list[Any]] = {
        k: [] for k in ("chemistry", "series", "parallel", "cell_capacity_ah", "rated_power_w")
    }
    case_rows: dict[str, list[Any]] = {
        k: []
        for k in ("fleet", "first", "target", "status", "shortfall_w", "target_power_w", "reasons")
    }
    packs: dict[str, list[Any]] = {k: [] for k in (*_PACK_FIELDS, *_RESULT_FIELDS)}
    offset = 0
    first_pack = 0
    for f, (n, dt_s, overrides, n_cases) in enumerate(FLEETS):
        ratings = _ratings(n, rng)
        shield = Shield(ratings, fleet_limits(ratings, **overrides), dt_s=dt_s)
        fleet_rows["n"].append(n)
        fleet_rows["dt_s"].append(dt_s)
        fleet_rows["soc_max"].append(overrides.get("soc_max", math.nan))
        fleet_rows["current_a"].append(overrides.get("current_max_a", math.nan))
        fleet_rows["first_pack"].append(first_pack)
        first_pack += n
        fleet_packs["chemistry"].extend(ratings.chemistry)
        fleet_packs["series"].extend(ratings.series.tolist())
        fleet_packs["parallel"].extend(ratings.parallel.tolist())
        fleet_packs["cell_capacity_ah"].extend(ratings.cell_capacity_ah.tolist())
        fleet_packs["rated_power_w"].extend(ratings.rated_power_w.tolist())
        for k in range(n_cases):
            state = random_state(shield, rng, inside=k % 3 != 2)
            request, target = _request(shield, state, k, rng)
            result = shield.project(state, request, target)
            case_rows["fleet"].append(f)
            case_rows["first"].append(offset)
            case_rows["target"].append(math.nan if target is None else target)
            case_rows["status"].append(int(result.status))
            case_rows["shortfall_w"].append(result.shortfall_w)
            case_rows["target_power_w"].append(result.target_power_w)
            case_rows["reasons"].append("|".join(",".join(r) for r in result.reasons))
            for name in _PACK_FIELDS[:-1]:
                packs[name].extend(np.asarray(getattr(state, name)).tolist())
            packs["request"].extend(np.asarray(request).tolist())
            for name in _RESULT_FIELDS:
                packs[name].extend(np.asarray(getattr(result, name)).tolist())
            offset += n
    # a target of None is stored as NaN and told apart by this flag
    has_target = [_request_has_target(k) for f in FLEETS for k in range(f[3])]
    out = {f"fleet_{k}": np.asarray(v) for k, v in fleet_rows.items()}
    out.update({f"fleet_{k}": np.asarray(v) for k, v in fleet_packs.items()})
    out.update({f"case_{k}": np.asarray(v) for k, v in case_rows.items()})
    out["case_has_target"] = np.asarray(has_target)
    out.update({f"pack_{k}": np.asarray(v) for k, v in packs.items()})
    return out


def _request_has_target(k: int) -> bool:
    return k % 6 in (2, 5)


def _load() -> dict[str, np.ndarray]:
    with np.load(DATA, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _shields(data: dict[str, np.ndarray]) -> list[Shield]:
    shields = []
    for f in range(data["fleet_n"].size):
        n, first = int(data["fleet_n"][f]), int(data["fleet_first_pack"][f])
        sl = slice(first, first + n)
        ratings = PackRatings(
            tuple(str(c) for c in data["fleet_chemistry"][sl]),
            data["fleet_series"][sl],
            data["fleet_parallel"][sl],
            data["fleet_cell_capacity_ah"][sl],
            data["fleet_rated_power_w"][sl],
        )
        overrides: dict[str, float] = {}
        if not math.isnan(float(data["fleet_soc_max"][f])):
            overrides["soc_max"] = float(data["fleet_soc_max"][f])
        if not math.isnan(float(data["fleet_current_a"][f])):
            current = float(data["fleet_current_a"][f])
            overrides.update(current_max_a=current, current_min_a=-current)
        limits = fleet_limits(ratings, **overrides)
        shields.append(Shield(ratings, limits, dt_s=float(data["fleet_dt_s"][f])))
    return shields


@pytest.fixture(scope="module")
def stored() -> tuple[dict[str, np.ndarray], list[Shield]]:
    data = _load()
    return data, _shields(data)


def test_stored_cases_cover_every_path(stored: tuple[dict[str, np.ndarray], list[Shield]]) -> None:
    data, _ = stored
    status = data["case_status"]
    for flag in (0, 1, 2, 4, 8):
        assert np.any(status == flag) if flag == 0 else np.any(status & flag)


def test_shield_reproduces_stored_decisions(
    stored: tuple[dict[str, np.ndarray], list[Shield]],
) -> None:
    data, shields = stored
    for c in range(data["case_fleet"].size):
        shield = shields[int(data["case_fleet"][c])]
        n = shield.n_packs
        sl = slice(int(data["case_first"][c]), int(data["case_first"][c]) + n)
        state = FleetState(
            soc=data["pack_soc"][sl],
            soh=data["pack_soh"][sl],
            temperature_c=data["pack_temperature_c"][sl],
            cell_voltage_v=data["pack_cell_voltage_v"][sl],
            current_a=data["pack_current_a"][sl],
            valid=data["pack_valid"][sl],
        )
        target = float(data["case_target"][c]) if data["case_has_target"][c] else None
        result = shield.project(state, data["pack_request"][sl], target)
        scale = max(1.0, float(np.sum(shield.ratings.rated_power_w)))
        where = f"case {c} (fleet {int(data['case_fleet'][c])})"
        for name in ("action", "lower", "upper"):
            expected = data[f"pack_{name}"][sl]
            assert np.max(np.abs(getattr(result, name) - expected)) <= TOL, f"{name}, {where}"
        for name in ("intervened", "fallback"):
            assert np.array_equal(getattr(result, name), data[f"pack_{name}"][sl]), where
        assert int(result.status) == int(data["case_status"][c]), where
        for name in ("shortfall_w", "target_power_w"):
            assert abs(getattr(result, name) - float(data[f"case_{name}"][c])) <= TOL * scale
        reasons = "|".join(",".join(r) for r in result.reasons)
        assert reasons == str(data["case_reasons"][c]), where


if __name__ == "__main__":
    DATA.parent.mkdir(exist_ok=True)
    np.savez_compressed(DATA, **_generate())
    print(f"wrote {DATA} ({DATA.stat().st_size} bytes)")
