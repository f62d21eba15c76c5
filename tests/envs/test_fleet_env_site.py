"""PulseBMS/FleetSite-v0: the observation carries what the MPC reads (grid limits, feed-in)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import pulsebms.envs  # noqa: F401  (registers the ids)
from pulsebms.core.observation import ObservationInputs, build_observation, fleet_observation_layout


def test_site_observation_names_grid_limits_feed_in_and_day_ahead_forecast() -> None:
    env = gym.make("PulseBMS/FleetSite-v0", fleet=[{"chemistry": "LFP"}], fidelity="ecm")
    obs, _ = env.reset(seed=3)
    inner = env.unwrapped
    layout = inner.observation_layout
    series = inner.series
    assert layout.field("demand_forecast_w").width == 288  # 24 h at 300 s
    assert obs.shape == (layout.size,)
    got = layout.unpack(obs)
    np.testing.assert_allclose(got["grid_import_limit_w"][0], series.grid_import_limit_w, rtol=1e-5)
    np.testing.assert_allclose(got["grid_export_limit_w"][0], series.grid_export_limit_w, rtol=1e-5)
    np.testing.assert_allclose(
        got["feed_in_price_per_kwh"][0], series.feed_in_price_eur_per_kwh, rtol=1e-5
    )
    env.close()


def test_fleet_v0_layout_is_unchanged() -> None:
    env = gym.make("PulseBMS/Fleet-v0", fleet=[{"chemistry": "LFP"}], fidelity="ecm")
    names = [f.name for f in env.unwrapped.observation_layout.fields]
    assert "grid_import_limit_w" not in names
    assert env.unwrapped.forecast_steps == 4
    env.close()


def test_layout_reading_a_grid_limit_refuses_inputs_without_it() -> None:
    layout = fleet_observation_layout(("p",), 1, 1000.0, site_extras=True)
    one = np.array([1.0])
    inputs = ObservationInputs(
        soc=one, soh=one, temperature_c=one, cell_voltage_v=one, current_a=one,
        capacity_ah=one, demand_w=0.0, price_per_kwh=0.2, ambient_c=20.0, hour_of_day=1.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="grid_import_limit_w"):
        build_observation(layout, inputs)
