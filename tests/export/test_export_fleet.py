"""Fleet spec and layout conversion (plain data in), parity sampling (no torch model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pulsebms.export.fleet import (
    FleetSpec,
    fleet_spec_from_dict,
    load_fleet_spec,
    observation_fields,
)
from pulsebms.export.parity import parity_observations
from pulsebms.safety.settings import ShieldSettings

RATINGS = {
    "chemistry": ["LFP", "NMC"],
    "series": [16, 14],
    "parallel": [8, 4],
    "cell_capacity_ah": [2.3, 5.0],
    "rated_power_w": [900.0, 1000.0],
}


def test_layout_forms_and_aliases() -> None:
    as_mapping = observation_fields(
        {"soc": slice(0, 2), "temp_c": (2, 4), "demand": {"start": 4, "stop": 5, "scale": 2e3}},
        n_packs=2,
        observation_low=[0, 0, -2, -2, -20],
        observation_high=[1, 1, 2, 2, 20],
    )
    assert [f.source for f in as_mapping] == ["soc", "temperature_c", "demand_w"]
    assert as_mapping[2].scale == 2e3
    assert (as_mapping[1].low, as_mapping[1].high) == (-2.0, 2.0)
    price = {"name": "x", "start": 2, "stop": 3, "source": "price_per_kwh"}
    as_list = observation_fields([{"name": "soc", "start": 0, "stop": 2}, price], n_packs=2)
    assert as_list[1].source == "price_per_kwh"
    assert math.isinf(as_list[0].low)


def test_core_layout_passes_unchanged() -> None:
    from pulsebms.core.observation import fleet_observation_layout
    from pulsebms.export.fleet import observation_layout

    layout = fleet_observation_layout(("a", "b"), 2, 1900.0)
    assert observation_layout(layout, n_packs=2) is layout
    assert observation_fields(layout, n_packs=2) == layout.fields
    spec = fleet_spec_from_dict(
        {"observation": [f.to_dict() for f in layout.fields], "pack_names": ["a", "b"],
         "ratings": RATINGS, "dt_s": 60.0}
    )  # fmt: skip
    assert spec.observation == layout
    assert fleet_spec_from_dict(json.loads(json.dumps(spec.to_dict()))).observation == layout


def test_layout_errors_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="give it a 'source'"):
        observation_fields({"wind_speed": (0, 1)}, n_packs=1)
    with pytest.raises(ValueError, match="gap or overlap"):
        observation_fields({"soc": (0, 2), "demand_w": (3, 4)}, n_packs=2)


def test_fleet_spec_json_round_trip(tmp_path: Path) -> None:
    spec = fleet_spec_from_dict(
        {
            "observation": {"soc": [0, 2], "demand_w": [2, 3]},
            "ratings": RATINGS,
            "limits": {"soc_max": 0.9},  # one mapping: overrides for every pack
            "dt_s": 60.0,
            "shield": {"track_demand": True},
        }
    )
    assert [lim.soc_max for lim in spec.limits] == [0.9, 0.9]
    assert spec.limits[0].cell_voltage_max_v == 3.6  # LFP window kept
    # The manifest records every shield setting, the defaults filled in.
    assert spec.shield_settings() == {
        "dt_s": 60.0,
        **ShieldSettings(track_demand=True).to_dict(),
    }
    with pytest.raises(ValueError, match="unknown shield setting"):
        fleet_spec_from_dict({**spec.to_dict(), "shield": {"soc_margn": 0.01}}).shield_settings()
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(spec.to_dict()))
    again = load_fleet_spec(path)
    assert again.observation == spec.observation
    assert again.limits == spec.limits
    assert isinstance(again, FleetSpec)
    with pytest.raises(ValueError, match="lacks key"):
        fleet_spec_from_dict({"ratings": RATINGS})


class _Source:
    observation_low = np.array([0.0, -np.inf, -np.inf], dtype=np.float32)
    observation_high = np.array([1.0, np.inf, 5.0], dtype=np.float32)

    def observation_stats(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([0.5, 100.0, 4.0]), np.array([0.1, 2.0, 3.0])


def test_parity_sampling_inside_the_space() -> None:
    given = [[0.5, 1.0, 2.0]]
    obs = parity_observations(_Source(), 2000, seed=0, given=given)  # type: ignore[arg-type]
    assert obs.shape == (2001, 3)
    assert obs.dtype == np.float32
    np.testing.assert_array_equal(obs[0], given[0])
    assert obs[:, 0].min() >= 0.0
    assert obs[:, 0].max() <= 1.0
    assert abs(float(obs[1:, 1].mean()) - 100.0) < 0.5  # Gaussian around the statistics
    assert obs[:, 2].max() <= 5.0
    assert np.all(np.isfinite(obs))
