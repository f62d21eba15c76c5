"""Observation builder: layout sources, scales, clipping, forecasts by persistence."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from edge_helpers import make_manifest

from pulsebms.edge_runtime.manifest import ModelInfo, ObsField
from pulsebms.edge_runtime.observation import ObservationBuilder
from pulsebms.edge_runtime.telemetry import SiteSnapshot
from pulsebms.safety.state import FleetState


def test_every_source_and_pack_indexed_fields() -> None:
    fields = (
        ObsField("soc[1]", 0, 1, pack=1),
        ObsField("current_c_rate", 1, 4),
        ObsField("demand_forecast_w", 4, 6, scale=1000.0),
        ObsField("price_forecast", 6, 7, source="price_forecast_per_kwh"),
        ObsField("ambient_c", 7, 8, scale=50.0),
        ObsField("time_of_day", 8, 9),
        ObsField("time_of_day_cos", 9, 10),
        ObsField("last_action", 10, 13),
        ObsField("cell_voltage_v", 13, 16, scale=4.0, low=0, high=1),
    )
    base = make_manifest()
    manifest = dataclasses.replace(
        base,
        observation=fields,
        model=ModelInfo("policy.onnx", "0" * 64, "observation", "action", 16, 3, 18),
    )
    builder = ObservationBuilder(manifest)
    state = FleetState(
        soc=np.array([0.1, 0.2, np.nan]),
        soh=np.ones(3),
        temperature_c=np.full(3, 25.0),
        cell_voltage_v=np.array([3.6, 4.0, 8.0]),
        current_a=np.array([20.0, -10.0, 0.0]),
    )
    site = SiteSnapshot(1500.0, 0.3, math.nan, 10.0, True, 0.0)
    obs = builder.build(state, site, np.array([0.1, -0.2, 0.3]), time_of_day_s=6 * 3600.0)
    capacity_ah = 5.0 * 4
    expected = [0.2, 20 / capacity_ah, -10 / capacity_ah, 0.0, 1.5, 1.5, 0.3, 0.2, 0.25]
    expected += [0.0, 0.1, -0.2, 0.3, 0.9, 1.0, 1.0]  # the last voltage clipped to high
    np.testing.assert_allclose(obs, expected, atol=1e-6)
    assert obs.dtype == np.float32
