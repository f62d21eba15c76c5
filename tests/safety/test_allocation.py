"""``ShieldSettings.allocation``: "respect_split" clips per pack and reports the shortfall.

Also the one way interventions are counted (:func:`intervention_mask`), the wrapper's
``shield_shortfall_w`` / ``shield_interventions`` / ``cost_pre_shield_eur`` info keys, and
that settings without ``allocation`` (manifests written before it) keep the default.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pytest
import safety_strategies as sst
from hypothesis import HealthCheck, given, settings
from test_wrapper import RecordingFleetEnv

from pulsebms.safety import (
    INTERVENTION_TOLERANCE,
    Shield,
    ShieldSettings,
    ShieldStatus,
    ShieldWrapper,
    count_interventions,
    intervention_mask,
)
from pulsebms.safety.checks import constraint_failures

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _respecting(shield: Shield) -> Shield:
    return Shield(
        shield.ratings,
        shield.limits,
        shield.dt_s,
        settings=shield.settings.replace(allocation="respect_split"),
        cell_model=shield.cell_model,
    )


@PROPERTY
@given(sst.cases(invalid_actions=True))
def test_respect_split_is_the_per_pack_clip_of_the_same_box(case: sst.Case) -> None:
    shield = _respecting(case.shield)
    result = shield.project(case.state, case.action, case.target_power_w)
    default = case.shield.project(case.state, case.action, case.target_power_w)
    request = np.clip(np.nan_to_num(case.action, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    assert np.array_equal(result.lower, default.lower)
    assert np.array_equal(result.upper, default.upper)
    assert np.array_equal(result.action, np.clip(request, result.lower, result.upper))
    assert constraint_failures(shield, case.state, result.action) == []
    rated = shield.ratings.rated_power_w
    scale = max(1.0, float(np.sum(rated)))
    reached = float(result.action @ rated)
    expected = result.target_power_w - reached
    assert abs(result.shortfall_w - (expected if abs(expected) > 1e-9 * scale else 0.0)) <= (
        1e-9 * scale
    )
    assert (ShieldStatus.SHORTFALL in result.status) == (result.shortfall_w != 0.0)
    assert all("redistributed" not in r for r in result.reasons)
    # Idempotent, and the identity on its own output.
    again = shield.project(case.state, result.action)
    assert np.array_equal(again.action, result.action)
    assert not again.intervened.any()


def test_respect_split_keeps_the_other_packs_and_reports_the_lost_power() -> None:
    for allocation, applied_1, shortfall_w in (
        ("redistribute", None, 0.0),
        ("respect_split", 0.0, -1250.0),
    ):
        env = RecordingFleetEnv()
        wrapped = ShieldWrapper(env, allocation=allocation)
        wrapped.reset(seed=0)
        env.state.soc[0] = 0.95  # full: cannot charge
        env.state.cell_voltage_v[0] = 4.1
        _, _, _, _, info = wrapped.step(np.array([-0.5, 0.0], dtype=np.float32))
        applied = env.received[0]
        assert applied[0] == 0.0
        if applied_1 is None:  # redistribute: pack 1 charges instead
            assert applied[1] < 0.0
            assert info["shield_interventions"] == 2
            assert info["shield"]["status"] == "PROJECTED"
        else:
            assert applied[1] == applied_1
            assert info["shield_interventions"] == 1
            assert info["shield"]["reasons"] == (("soc_max",), ())
            assert info["shield"]["status"] == "PROJECTED|SHORTFALL"
        assert info["shield_shortfall_w"] == pytest.approx(shortfall_w, abs=1e-6)
        assert info["shield"]["shortfall_w"] == info["shield_shortfall_w"]
        assert info["shield"]["intervened"] == info["shield_interventions"]


def test_default_allocation_is_redistribute_and_track_demand_needs_it() -> None:
    assert ShieldSettings().allocation == "redistribute"
    with pytest.raises(ValueError, match="track_demand"):
        ShieldSettings(track_demand=True, allocation="respect_split")
    with pytest.raises(ValueError, match="allocation"):
        ShieldSettings.from_mapping({"allocation": "respect-split"})


def test_settings_written_before_allocation_keep_the_default() -> None:
    # A manifest's "shield" section as exported before the field existed.
    old = {
        "derating_band_c": 5.0,
        "resistance_duration_s": None,
        "voltage_margin_v": 0.005,
        "soc_margin": 0.005,
        "current_margin": 0.03,
        "track_demand": True,
    }
    assert ShieldSettings.from_mapping(old) == ShieldSettings(track_demand=True)
    new = ShieldSettings(allocation="respect_split").to_dict()
    assert new["allocation"] == "respect_split"
    assert ShieldSettings.from_mapping(new).allocation == "respect_split"


def test_interventions_are_counted_with_the_tolerance() -> None:
    request = np.array([0.5, 0.5, np.nan, 0.2, -1.5])
    applied = np.array([0.5, 0.5 + INTERVENTION_TOLERANCE / 2, 0.0, 0.2 + 1e-3, -1.0])
    assert intervention_mask(request, applied).tolist() == [False, False, True, True, True]
    assert count_interventions(request, applied) == 3
    assert count_interventions(request, applied, tolerance=1e-2) == 2


def test_round_off_moves_are_not_interventions() -> None:
    env = RecordingFleetEnv()
    wrapped = ShieldWrapper(env)
    wrapped.reset(seed=0)
    _, _, _, _, info = wrapped.step(np.array([1 / 3, -0.1], dtype=np.float32))
    assert info["shield_interventions"] == 0
    assert info["shield_shortfall_w"] == 0.0


def _violating_step(wrapped: ShieldWrapper, env: RecordingFleetEnv) -> dict[str, Any]:
    env.state.soc[:] = 0.9
    env.state.cell_voltage_v[:] = (4.0, 3.34)
    _, _, _, _, info = wrapped.step(np.array([-1.0, -1.0], dtype=np.float32))
    return info


def test_pre_shield_cost_priced_in_eur() -> None:
    env = RecordingFleetEnv()
    unpriced = ShieldWrapper(env)
    info = _violating_step(unpriced, env)
    assert info["cost_pre_shield"] > 0.0
    assert "cost_pre_shield_eur" not in info  # no price known for this env
    priced = ShieldWrapper(env, cost_price_eur=200.0)
    info = _violating_step(priced, env)
    assert info["cost_pre_shield_eur"] == pytest.approx(200.0 * info["cost_pre_shield"])
    # The default price: each pack's replacement value, read from the env.
    env.pack_energy_kwh = np.array([10.0, 20.0])  # type: ignore[attr-defined]
    env.costs = types.SimpleNamespace(replacement_cost_eur_per_kwh=150.0)  # type: ignore[attr-defined]
    replaced = ShieldWrapper(env)
    info = _violating_step(replaced, env)
    predicted = replaced.shield.predict(env.state, np.array([-1.0, -1.0]))
    from pulsebms.safety import check_violations

    violations = check_violations(predicted, env.ratings, replaced.shield.limits)
    assert {v.pack for v in violations} == {0, 1}
    expected = sum(v.magnitude * (1500.0, 3000.0)[v.pack] for v in violations)
    assert info["cost_pre_shield_eur"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="cost_price_eur"):
        ShieldWrapper(env, cost_price_eur=-1.0)
