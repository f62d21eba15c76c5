"""``ShieldSettings``: defaults, validation, plain-data round trip, legacy keywords."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from pulsebms.safety import PackRatings, Shield, ShieldSettings
from pulsebms.safety.settings import merge_settings

DEFAULTS = {
    "derating_band_c": 5.0,
    "resistance_duration_s": None,
    "voltage_margin_v": 0.005,
    "soc_margin": 0.005,
    "current_margin": 0.03,
    "track_demand": False,
    "allocation": "redistribute",
}


def _ratings() -> PackRatings:
    return PackRatings(
        ("NMC",), np.array([14]), np.array([4]), np.array([5.15]), np.array([1000.0])
    )


def test_defaults_are_the_documented_ones() -> None:
    assert ShieldSettings().to_dict() == DEFAULTS
    assert ShieldSettings.field_names() == tuple(DEFAULTS)


def test_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ShieldSettings().soc_margin = 0.1  # type: ignore[misc]  # the point of the test


def test_round_trip_and_coercion() -> None:
    settings = ShieldSettings.from_mapping({"derating_band_c": 3, "resistance_duration_s": 100})
    assert settings.derating_band_c == 3.0
    assert isinstance(settings.derating_band_c, float)
    assert isinstance(settings.resistance_duration_s, float)
    assert ShieldSettings.from_mapping(settings.to_dict()) == settings
    assert ShieldSettings.from_mapping({}) == ShieldSettings()


def test_unknown_key_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="soc_marign") as info:
        ShieldSettings.from_mapping({"soc_marign": 0.01})
    for name in DEFAULTS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("derating_band_c", 0.0),
        ("derating_band_c", math.inf),
        ("resistance_duration_s", -1.0),
        ("resistance_duration_s", math.nan),
        ("voltage_margin_v", -1e-3),
        ("voltage_margin_v", math.nan),
        ("soc_margin", -0.1),
        ("current_margin", 1.0),
        ("current_margin", -0.01),
        ("current_margin", math.nan),
        ("soc_margin", "0.01"),
        ("soc_margin", True),
        ("track_demand", 1),
        ("track_demand", "false"),
        ("allocation", "clip"),
        ("allocation", None),
    ],
)
def test_invalid_values_are_refused(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        ShieldSettings.from_mapping({name: value})


def test_legacy_keywords_build_the_same_shield() -> None:
    kw: dict[str, Any] = {"soc_margin": 0.01, "current_margin": 0.05, "derating_band_c": 3.0}
    legacy = Shield(_ratings(), dt_s=60.0, **kw)
    modern = Shield(_ratings(), dt_s=60.0, settings=ShieldSettings(**kw))
    assert legacy.settings == modern.settings
    assert (legacy.soc_margin, legacy.current_margin, legacy.derating_band_c) == (0.01, 0.05, 3.0)
    assert np.array_equal(legacy._y_scale, modern._y_scale)
    assert np.array_equal(legacy._y_offset, modern._y_offset)
    assert np.array_equal(legacy._current_lim, modern._current_lim)


def test_keywords_override_settings() -> None:
    base = ShieldSettings(soc_margin=0.01, current_margin=0.05)
    shield = Shield(_ratings(), dt_s=60.0, settings=base, current_margin=0.1)
    assert shield.settings == ShieldSettings(soc_margin=0.01, current_margin=0.1)
    assert shield.resistance_duration_s == 1000.0  # None resolved: max(dt_s, 1000)
    assert Shield(_ratings(), dt_s=2000.0).resistance_duration_s == 2000.0


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="soc_marign"):
        Shield(_ratings(), soc_marign=0.01)  # type: ignore[call-arg]  # the point of the test
    with pytest.raises(TypeError, match="ShieldWrapper"):
        merge_settings(None, {"nope": 1}, caller="ShieldWrapper")


def test_merge_accepts_a_mapping() -> None:
    assert merge_settings({"soc_margin": 0.02}, {}) == ShieldSettings(soc_margin=0.02)
    with pytest.raises(ValueError, match="known"):
        merge_settings({"nope": 1}, {})
