"""The fast shield: properties (hypothesis) and regression cases.

Property tests guard against unknown bug shapes: on random fleets, states and requests the
output stays in the action space and the admissible box, satisfies every limit re-derived
from the cell model, is the closest such action (KKT), is idempotent and the identity on
safe actions, and never raises. Regression tests pin known shapes: a full pack cannot
charge, an empty one cannot discharge, a pack at a temperature limit gets zero, NaN is 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import safety_strategies as sst
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulsebms.safety import (
    FleetState,
    PackRatings,
    Shield,
    ShieldStatus,
    default_limits,
)
from pulsebms.safety.checks import constraint_failures, kkt_residual
from pulsebms.safety.shield import project_box_hyperplane

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sanitised(action: np.ndarray) -> np.ndarray:
    return np.clip(np.nan_to_num(action, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)


def _weight(shield: Shield) -> np.ndarray:
    rated = np.asarray(shield.ratings.rated_power_w, dtype=np.float64)
    return rated / rated.mean()


# ---------------------------------------------------------------- properties
@PROPERTY
@given(sst.cases(invalid_actions=True))
def test_output_in_action_space_and_box(case: sst.Case) -> None:
    result = case.shield.project(case.state, case.action, case.target_power_w)
    assert result.action.shape == (case.shield.n_packs,)
    assert np.all(np.isfinite(result.action))
    assert np.all(np.abs(result.action) <= 1.0)
    assert np.all(result.lower <= result.action)
    assert np.all(result.action <= result.upper)
    assert np.all(result.lower <= 0.0)
    assert np.all(result.upper >= 0.0)


@PROPERTY
@given(sst.cases(invalid_actions=True))
def test_output_satisfies_every_limit(case: sst.Case) -> None:
    result = case.shield.project(case.state, case.action, case.target_power_w)
    assert constraint_failures(case.shield, case.state, result.action) == []


@PROPERTY
@given(sst.cases(invalid_actions=True))
def test_no_admissible_action_is_closer(case: sst.Case) -> None:
    result = case.shield.project(case.state, case.action, case.target_power_w)
    request = _sanitised(case.action)
    w = _weight(case.shield)
    assert kkt_residual(request, result.action, result.lower, result.upper, w) <= 1e-9
    # And the fleet total is the target clamped to what the box can reach.
    total = float(result.action @ case.shield.ratings.rated_power_w)
    lo = float(result.lower @ case.shield.ratings.rated_power_w)
    hi = float(result.upper @ case.shield.ratings.rated_power_w)
    target = result.target_power_w
    scale = max(1.0, float(np.sum(case.shield.ratings.rated_power_w)))
    assert abs(total - min(max(target, lo), hi)) <= 1e-9 * scale
    assert abs(result.shortfall_w - (target - min(max(target, lo), hi))) <= 1e-6 * scale


@PROPERTY
@given(sst.cases(invalid_actions=True), st.data())
def test_identity_on_admissible_actions(case: sst.Case, data: st.DataObject) -> None:
    box = case.shield.project(case.state, case.action)
    frac = np.array(
        data.draw(st.lists(st.floats(0.0, 1.0), min_size=box.lower.size, max_size=box.lower.size))
    )
    safe = box.lower + frac * (box.upper - box.lower)
    safe = np.minimum(np.maximum(safe, box.lower), box.upper)
    result = case.shield.project(case.state, safe)
    assert np.array_equal(result.action, safe)
    assert not result.intervened.any()
    assert result.status in (ShieldStatus.OK, ShieldStatus.FALLBACK)
    assert all(r == () for r in result.reasons)


@PROPERTY
@given(sst.cases(invalid_actions=True))
def test_idempotent(case: sst.Case) -> None:
    first = case.shield.project(case.state, case.action, case.target_power_w)
    second = case.shield.project(case.state, first.action, case.target_power_w)
    assert np.array_equal(second.action, first.action)
    assert not second.intervened.any()
    third = case.shield.project(case.state, first.action)
    assert np.array_equal(third.action, first.action)


@PROPERTY
@given(sst.cases(inside=False, invalid_actions=True))
def test_outside_or_invalid_states_fall_back_never_raise(case: sst.Case) -> None:
    result = case.shield.project(case.state, case.action, case.target_power_w)
    assert np.all(np.isfinite(result.action))
    assert np.all(result.action[result.fallback] == 0.0)
    assert (ShieldStatus.FALLBACK in result.status) == bool(result.fallback.any())
    reasons = result.reasons
    for i in np.flatnonzero(result.fallback & result.intervened):
        assert any(r.startswith("fallback:") for r in reasons[i])
    # Packs that are inside keep their guarantees.
    ok = ~result.fallback
    assert np.all(result.lower[ok] <= result.action[ok])
    assert np.all(result.action[ok] <= result.upper[ok])


@PROPERTY
@given(sst.cases(invalid_actions=True))
def test_intervened_and_reasons_agree(case: sst.Case) -> None:
    result = case.shield.project(case.state, case.action, case.target_power_w)
    raw = case.action
    assert np.array_equal(result.intervened, ~(result.action == raw))
    for changed, reasons in zip(result.intervened, result.reasons, strict=True):
        assert bool(reasons) == bool(changed)
    assert (ShieldStatus.PROJECTED in result.status) == bool(result.intervened.any())
    bad = ~((raw >= -1.0) & (raw <= 1.0))
    assert (ShieldStatus.INVALID_ACTION in result.status) == bool(bad.any())


# ---------------------------------------------------------------- projection unit
@given(
    st.integers(1, 30).flatmap(
        lambda n: st.tuples(
            st.lists(st.floats(-2, 2), min_size=n, max_size=n),
            st.lists(st.floats(-1, 0), min_size=n, max_size=n),
            st.lists(st.floats(0, 1), min_size=n, max_size=n),
            st.lists(st.floats(0.01, 100), min_size=n, max_size=n),
            st.floats(-2, 2),
        )
    )
)
@settings(max_examples=200, deadline=None)
def test_projection_matches_bisection(
    args: tuple[list[float], list[float], list[float], list[float], float],
) -> None:
    r, lo, up, w = (np.array(a) for a in args[:4])
    frac = args[4]
    target = float(frac * np.sum(w))
    out, reached = project_box_hyperplane(r, lo, up, w, target)
    assert reached == pytest.approx(min(max(target, w @ lo), w @ up))
    assert np.all(lo <= out)
    assert np.all(out <= up)
    # Independent check: bisection on the multiplier.
    a, b = -1e6, 1e6
    for _ in range(200):
        mid = 0.5 * (a + b)
        if w @ np.clip(r + mid * w, lo, up) < reached:
            a = mid
        else:
            b = mid
    expected = np.clip(r + 0.5 * (a + b) * w, lo, up)
    assert np.allclose(out, expected, atol=1e-7)


# ---------------------------------------------------------------- regressions
def _one_pack(chemistry: str = "NMC", **state: float) -> tuple[Shield, FleetState]:
    ratings = PackRatings(
        (chemistry,),
        np.array([14]),
        np.array([10]),
        np.array([sst.CELL_CAPACITY_AH[chemistry]]),
        np.array([14 * 10 * sst.CELL_CAPACITY_AH[chemistry] * 3.6]),  # ≈ 1 C
    )
    values = {"soc": 0.5, "soh": 1.0, "temperature_c": 25.0, "cell_voltage_v": 3.7}
    values.update(state)
    fs = FleetState(
        soc=np.array([values["soc"]]),
        soh=np.array([values["soh"]]),
        temperature_c=np.array([values["temperature_c"]]),
        cell_voltage_v=np.array([values["cell_voltage_v"]]),
        current_a=np.zeros(1),
    )
    return Shield(ratings, dt_s=60.0, cell_model=sst.cell_model()), fs


def test_full_pack_cannot_charge_empty_cannot_discharge() -> None:
    shield, full = _one_pack(soc=0.95, cell_voltage_v=4.1)
    result = shield.project(full, np.array([-1.0]))
    assert result.action[0] == 0.0
    assert result.reasons[0] == ("soc_max",)
    assert shield.project(full, np.array([0.5])).status == ShieldStatus.OK
    shield, empty = _one_pack(soc=0.05, cell_voltage_v=3.2)
    result = shield.project(empty, np.array([1.0]))
    assert result.action[0] == 0.0
    assert result.reasons[0] == ("soc_min",)


def test_temperature_derating_is_linear_to_zero() -> None:
    uppers = []
    for temp in (50.0, 55.0, 57.5, 60.0):
        shield, state = _one_pack(temperature_c=temp)
        uppers.append(shield.admissible(state).upper[0])
    assert uppers[0] > 0.0
    assert uppers[1] > 0.0
    assert uppers[2] == pytest.approx(0.5 * uppers[1], rel=0.05)
    assert uppers[3] == 0.0
    shield, hot = _one_pack(temperature_c=57.5)
    assert shield.project(hot, np.array([1.0])).reasons[0] == ("temperature_max_c",)


def test_nan_action_is_zero_and_reported() -> None:
    shield, state = _one_pack()
    result = shield.project(state, np.array([math.nan]))
    assert result.action[0] == 0.0
    assert result.intervened[0]
    assert result.reasons[0] == ("action_not_finite",)
    assert result.status == ShieldStatus.PROJECTED | ShieldStatus.INVALID_ACTION
    result = shield.project(state, np.array([math.inf]))
    assert result.action[0] == result.upper[0]


def test_state_outside_limits_is_controlled_shutdown() -> None:
    shield, state = _one_pack(soc=0.97, cell_voltage_v=4.15)
    result = shield.project(state, np.array([0.3]))
    assert result.action[0] == 0.0
    assert ShieldStatus.FALLBACK in result.status
    assert result.reasons[0] == ("fallback:soc_above_max",)
    shield, state = _one_pack(temperature_c=math.nan)
    assert shield.project(state, np.array([0.3])).reasons[0] == ("fallback:temperature_not_finite",)


def test_clipped_power_is_redistributed_and_demand_mode_reports_shortfall() -> None:
    ratings = PackRatings(
        ("NMC", "NMC"),
        np.array([14, 14]),
        np.array([10, 10]),
        np.array([5.15, 5.15]),
        np.array([2000.0, 2000.0]),
    )
    shield = Shield(ratings, dt_s=60.0, cell_model=sst.cell_model())
    state = FleetState(
        soc=np.array([0.052, 0.6]),
        soh=np.ones(2),
        temperature_c=np.full(2, 25.0),
        cell_voltage_v=np.array([3.3, 3.8]),
        current_a=np.zeros(2),
    )
    result = shield.project(state, np.array([0.5, 0.1]))
    assert result.action @ ratings.rated_power_w == pytest.approx(1200.0)
    assert result.action[0] < 0.5
    assert result.action[1] > 0.1
    assert result.reasons[1] == ("redistributed",)
    big = shield.project(state, np.array([0.5, 0.1]), target_power_w=1e6)
    assert ShieldStatus.SHORTFALL in big.status
    assert np.array_equal(big.action, big.upper)
    assert big.shortfall_w == pytest.approx(1e6 - big.upper @ ratings.rated_power_w)
    bad_target = shield.project(state, np.array([0.0, 0.1]), target_power_w=math.nan)
    assert ShieldStatus.INVALID_ACTION in bad_target.status


def test_lfp_window_is_its_own() -> None:
    shield, _ = _one_pack("LFP", soc=0.5, cell_voltage_v=3.3)
    assert shield.limits[0] == default_limits("LFP")


def test_wrong_shapes_are_programming_errors() -> None:
    shield, state = _one_pack()
    with pytest.raises(ValueError, match="shape"):
        shield.project(state, np.zeros(2))
    with pytest.raises(ValueError, match="dt_s"):
        Shield(shield.ratings, dt_s=0.0)
    with pytest.raises(ValueError, match="voltage_margin_v"):
        Shield(shield.ratings, voltage_margin_v=5.0)
