"""Seeded scenario generators: site load, PV, price and ambient temperature.

A :class:`Scenario` is plain data (build it from a preset name or a dict with
:func:`make_scenario`); :func:`build_series` turns it into one episode's seeded series.
Noisy forecasts of net load and price evolve like a real forecaster's
(:class:`ForecastErrors`: the martingale model of forecast evolution).
Real profiles come from libraries that ship their data: BDEW standard load profiles
(demandlib) and TMY3 weather years with a pvlib PV model (pvlib). A user's own
measurements load from CSV (:func:`load_csv_profile`).

Example:
    >>> import numpy as np
    >>> from pulsebms.envs.scenarios import build_series, make_scenario
    >>> series = build_series(make_scenario("default"), n_samples=96, dt_s=900.0,
    ...                       fleet_rated_power_w=5000.0, rng=np.random.default_rng(0))
    >>> bool((series.pv_w >= 0).all())
    True
"""

from pulsebms.envs.scenarios.csv_loader import (
    CSV_COLUMNS,
    CsvProfile,
    CsvProfileError,
    load_csv_profile,
)
from pulsebms.envs.scenarios.forecast_errors import ForecastErrors
from pulsebms.envs.scenarios.profiles import (
    AnnualProfile,
    bdew_load_profile,
    tmy3_ambient_profile,
    tmy3_pv_profile,
)
from pulsebms.envs.scenarios.scenario import (
    AMBIENT_SOURCES,
    BDEW_PROFILES,
    LOAD_SOURCES,
    PRICE_SOURCES,
    PV_SOURCES,
    SCENARIOS,
    TMY3_FILES,
    Scenario,
    make_scenario,
)
from pulsebms.envs.scenarios.series import ScenarioSeries, build_series

__all__ = [
    "AMBIENT_SOURCES",
    "BDEW_PROFILES",
    "CSV_COLUMNS",
    "LOAD_SOURCES",
    "PRICE_SOURCES",
    "PV_SOURCES",
    "SCENARIOS",
    "TMY3_FILES",
    "AnnualProfile",
    "CsvProfile",
    "CsvProfileError",
    "ForecastErrors",
    "Scenario",
    "ScenarioSeries",
    "bdew_load_profile",
    "build_series",
    "load_csv_profile",
    "make_scenario",
    "tmy3_ambient_profile",
    "tmy3_pv_profile",
]
