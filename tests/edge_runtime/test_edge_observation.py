"""Observation builder: layout sources, scales, clipping, forecasts by persistence."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from edge_helpers import make_manifest

from pulsebms.edge_runtime.manifest import ModelInfo, ObservationField
from pulsebms.edge_runtime.observation import ObservationBuilder
from pulsebms.edge_runtime.telemetry import SiteSnapshot
from pulsebms.safety.state import FleetState


def test_every_source_and_pack_indexed_fields() -> None:
    fields = (
        ObservationField("soc[1]", 0, 1, "soc", pack=1),
        ObservationField("current_c_rate", 1, 4, "current_c_rate"),
        ObservationField("demand_forecast_w", 4, 6, "demand_forecast_w", scale=1000.0),
        ObservationField("price_forecast", 6, 7, "price_forecast_per_kwh"),
        ObservationField("ambient_c", 7, 8, "ambient_c", scale=50.0),
        ObservationField("time_of_day", 8, 9, "time_of_day"),
        ObservationField("time_of_day_cos", 9, 10, "time_of_day_cos"),
        ObservationField("last_action", 10, 13, "last_action"),
        ObservationField("cell_voltage_v", 13, 16, "cell_voltage_v", scale=4.0, low=0, high=1),
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
