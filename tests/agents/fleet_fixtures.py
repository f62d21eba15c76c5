"""A synthetic three-pack fleet description and observation builder (no simulator)."""

from __future__ import annotations

import numpy as np

from pulsebms.agents.envinfo import FleetInfo
from pulsebms.agents.observation import ObservationReader

N = 3
LAYOUT = {
    "soc": slice(0, 3),
    "soh": slice(3, 6),
    "temperature_c": slice(6, 9),
    "demand_w": slice(9, 10),
    "demand_forecast_w": slice(10, 14),
    "price_per_kwh": slice(14, 15),
    "price_forecast_per_kwh": slice(15, 19),
}


def make_info(dt_s: float = 900.0) -> FleetInfo:
    capacity_ah = np.array([18.4, 20.0, 13.6])
    return FleetInfo(
        reader=ObservationReader(LAYOUT),
        chemistry=("LFP", "NMC", "LCO"),
        rated_power_w=np.array([1000.0, 1000.0, 700.0]),
        capacity_ah=capacity_ah,
        energy_wh=capacity_ah * np.array([16 * 3.2, 14 * 3.63, 14 * 3.7]),
        dt_s=dt_s,
        soc_min=np.full(N, 0.05),
        soc_max=np.full(N, 0.95),
        current_max_a=np.full(N, 100.0),
        c_rate_max=np.full(N, 1.0),
        temperature_min_c=np.full(N, -20.0),
        temperature_max_c=np.full(N, 60.0),
    )


def make_obs(
    soc: list[float] | np.ndarray,
    demand_w: float,
    *,
    soh: list[float] | None = None,
    temperature_c: list[float] | None = None,
    price: float = 0.2,
    demand_forecast_w: list[float] | None = None,
    price_forecast: list[float] | None = None,
) -> np.ndarray:
    return np.concatenate(
        [
            np.asarray(soc, dtype=float),
            np.asarray(soh or [1.0] * N, dtype=float),
            np.asarray(temperature_c or [25.0] * N, dtype=float),
            [demand_w],
            np.asarray(demand_forecast_w or [demand_w] * 4, dtype=float),
            [price],
            np.asarray(price_forecast or [price] * 4, dtype=float),
        ]
    ).astype(np.float32)
