"""The :class:`Scenario` dataclass: what a site looks like, in plain data.

A scenario names the *sources* of four exogenous signals (site load, PV generation, energy
price, ambient temperature), how the site is sized relative to the fleet, and how forecasts
are made. It holds no arrays: :func:`pulsebms.envs.scenarios.build_series` turns it into the
seeded time series of one episode.

Sizing. Load and PV are generated **per unit** (load: 1.0 = the profile's peak) and scaled to
the fleet, so one scenario fits a 3-pack test fleet and a 100-pack fleet alike::

    site_peak_load_w = site_peak_load_w            if given, else
                       peak_load_ratio  × Σ rated pack power
    pv_peak_w        = pv_peak_ratio    × site_peak_load_w
    grid_import_limit_w = grid_import_ratio × site_peak_load_w
    grid_export_limit_w = grid_export_ratio × site_peak_load_w

A user's CSV (``"csv"`` sources) is scaled the same way by default (``csv_scale="fleet"``:
the file's shape, its peak load → ``site_peak_load_w``). With ``csv_scale="absolute"`` the
file's watts are kept as they are: ``site_peak_load_w`` defaults to the file's peak load
(the grid limits follow from it) and load and PV are not rescaled.

Randomised days (``randomize_day=True``, the ``"randomized"`` preset) make every reset a
different day for training, all from the env's seeded generator: the season (a random
start day when ``start_day`` is ``None``), the weather (a seasonal shift of the synthetic
or constant ambient of ±``day_ambient_season_c``, coldest on 20 January, plus a day offset
of std ``day_ambient_weather_c``), the levels of load, PV and import price (each a factor
drawn uniformly in its ``day_*_level_range``), and, in :class:`~pulsebms.envs.FleetEnv`,
the fleet's initial state (``randomize_initial_state`` defaults to on). A scenario
without ``randomize_day`` draws nothing more, so its seeded series are unchanged.

Price events (``price_event_start_h``, off by default) add an announced demand-response
event to any price source: every day of the episode, for a duration drawn in
``price_event_duration_h`` from a start hour drawn in ``price_event_start_h``, the import
price is at least a level drawn in ``price_event_price_eur_per_kwh`` (after the randomised
day's price level). The event is drawn once per episode from its own child generator, after
every other draw, so a scenario without it keeps its seeded series, and the forecasts see
it like any other price.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AMBIENT_SOURCES",
    "BDEW_PROFILES",
    "CSV_SCALES",
    "LOAD_SOURCES",
    "PRICE_SOURCES",
    "PV_SOURCES",
    "SCENARIOS",
    "TMY3_FILES",
    "Scenario",
    "make_scenario",
]

LOAD_SOURCES = ("synthetic", "bdew", "constant", "csv")
"""Site load sources: seeded synthetic day shape, a BDEW standard load profile, a constant,
or a user's CSV."""
PV_SOURCES = ("none", "synthetic", "pvlib", "csv")
"""PV sources: none, a seeded synthetic clear-sky bell with clouds, pvlib on a TMY3 year,
or a user's CSV."""
PRICE_SOURCES = ("flat", "tou", "stochastic", "csv")
"""Import price sources: flat, time-of-use schedule, time-of-use with seeded stochastic
deviations and spikes, or a user's CSV."""
CSV_SCALES = ("fleet", "absolute")
"""How a CSV's load and PV are sized: scaled to the fleet, or kept in the file's watts."""
AMBIENT_SOURCES = ("constant", "synthetic", "tmy3", "csv")
"""Ambient temperature sources: constant, a seeded daily sinusoid, a TMY3 year, or a CSV."""
BDEW_PROFILES = ("H25", "G25", "L25", "P25", "S25")
"""BDEW 2025 standard load profiles shipped with demandlib: household (H25), commerce (G25),
farm (L25), household with PV (P25), household with PV and battery (S25)."""
TMY3_FILES = ("723170TYA.CSV", "703165TY.csv")
"""TMY3 files bundled with pvlib: Greensboro NC (USAF 723170) and Sand Point AK (703165)."""

_DEFAULT_TOU: tuple[tuple[float, float], ...] = (
    (0.0, 0.15),
    (7.0, 0.28),
    (17.0, 0.42),
    (21.0, 0.28),
)


@dataclass(frozen=True)
class Scenario:
    """The exogenous signals of a site and how they are generated (plain, hashable data).

    Attributes:
        name: Label (a preset's name, or ``"custom"``).
        load: Site load source, one of :data:`LOAD_SOURCES`.
        bdew_profile: BDEW profile for ``load="bdew"``, one of :data:`BDEW_PROFILES`.
        load_noise: Relative std of the seeded AR(1) noise multiplying the load (0 = none).
        pv: PV source, one of :data:`PV_SOURCES`.
        tmy3_file: TMY3 weather year for ``pv="pvlib"`` and ``ambient="tmy3"``, one of
            :data:`TMY3_FILES` (bundled with pvlib; no network).
        pv_tilt_deg: PV array tilt from horizontal [deg].
        pv_azimuth_deg: PV array azimuth [deg], 180 = south.
        price: Import price source, one of :data:`PRICE_SOURCES`.
        flat_price_eur_per_kwh: Import price for ``price="flat"`` [EUR/kWh].
        tou_schedule: Time-of-use schedule as ``((start_hour, price_eur_per_kwh), ...)``,
            sorted by start hour, the first starting at 0.
        price_volatility: Relative std of the stochastic price's AR(1) log-deviation.
        price_spike_probability: Chance per hour of a price spike (stochastic price).
        feed_in_price_eur_per_kwh: Price paid for exported energy [EUR/kWh].
        ambient: Ambient temperature source, one of :data:`AMBIENT_SOURCES`.
        ambient_c: Constant ambient, or the mean of the synthetic one [°C].
        ambient_amplitude_c: Half the daily swing of the synthetic ambient [°C].
        peak_load_ratio: Site peak load / Σ rated pack power (sizing, see module doc).
        site_peak_load_w: Absolute site peak load [W]; overrides ``peak_load_ratio``.
        pv_peak_ratio: PV peak power / site peak load.
        grid_import_ratio: Grid import limit / site peak load; load above it must come from
            the fleet or is unserved.
        grid_export_ratio: Grid export limit / site peak load; export above it is curtailed.
        start_day: Day of year (0-based) the episode starts on; ``None`` draws it from the
            env's seeded generator at every reset.
        start_hour: Local hour of day the episode starts at.
        forecast: ``"perfect"`` or ``"noisy"`` forecasts of net load and price. Noisy
            forecasts follow the martingale model of forecast evolution
            (:mod:`pulsebms.envs.scenarios.forecast_errors`): each target sample's error is
            drawn once per episode, one innovation revealed per step as the lead shrinks.
        forecast_noise_1h: Relative std of a noisy forecast one **hour** ahead (× the site
            peak load for net load, × the true price for price); at a lead of ``h`` hours it
            is ``forecast_noise_1h·√h``, whatever the control interval (0.05: 5 % one hour
            ahead, ≈ 24 % a day ahead). Finite and ≥ 0. (Replaces ``forecast_noise``, which
            was stated per control interval.)
        csv_path: Path of a user's CSV for any ``"csv"`` source (see
            :func:`pulsebms.envs.scenarios.load_csv_profile`).
        csv_scale: ``"fleet"`` (scale the CSV's load and PV to the fleet like every other
            source) or ``"absolute"`` (keep the file's watts; see the module docstring).
            ``load_noise`` applies to a CSV load as to the other sources (set it to 0 to
            replay the file exactly).
        randomize_day: Draw a new day at every reset (see the module docstring).
        day_load_level_range: Range of the day's load factor (``randomize_day``).
        day_pv_level_range: Range of the day's PV factor, cloudy to clear (``randomize_day``).
        day_price_level_range: Range of the day's import price factor (``randomize_day``).
        day_ambient_season_c: Half the seasonal swing of the ambient mean [K]
            (``randomize_day``; synthetic and constant ambient only).
        day_ambient_weather_c: Std of the day's ambient offset [K] (``randomize_day``;
            synthetic and constant ambient only).
        price_event_start_h: Range ``(low, high)`` of the local hour a daily price event
            starts at (see the module docstring); ``None``: no event.
        price_event_duration_h: Range of the event's duration [h], ``0 < low <= high <= 24``.
        price_event_price_eur_per_kwh: Range of the event's import price floor [EUR/kWh].

    Example:
        >>> Scenario.from_any("tou").price
        'tou'
        >>> Scenario.from_any({"base": "bdew_pv", "price": "stochastic"}).load
        'bdew'
    """

    name: str = "custom"
    load: str = "synthetic"
    bdew_profile: str = "H25"
    load_noise: float = 0.05
    pv: str = "synthetic"
    tmy3_file: str = "723170TYA.CSV"
    pv_tilt_deg: float = 30.0
    pv_azimuth_deg: float = 180.0
    price: str = "tou"
    flat_price_eur_per_kwh: float = 0.28
    tou_schedule: tuple[tuple[float, float], ...] = field(default=_DEFAULT_TOU)
    price_volatility: float = 0.15
    price_spike_probability: float = 0.02
    feed_in_price_eur_per_kwh: float = 0.07
    ambient: str = "synthetic"
    ambient_c: float = 25.0
    ambient_amplitude_c: float = 5.0
    peak_load_ratio: float = 1.0
    site_peak_load_w: float | None = None
    pv_peak_ratio: float = 0.5
    grid_import_ratio: float = 0.8
    grid_export_ratio: float = 0.8
    start_day: int | None = None
    start_hour: float = 0.0
    forecast: str = "perfect"
    forecast_noise_1h: float = 0.05
    csv_path: str | None = None
    csv_scale: str = "fleet"
    randomize_day: bool = False
    day_load_level_range: tuple[float, float] = (0.85, 1.15)
    day_pv_level_range: tuple[float, float] = (0.3, 1.6)
    day_price_level_range: tuple[float, float] = (0.7, 1.5)
    day_ambient_season_c: float = 10.0
    day_ambient_weather_c: float = 3.0
    price_event_start_h: tuple[float, float] | None = None
    price_event_duration_h: tuple[float, float] = (1.5, 3.0)
    price_event_price_eur_per_kwh: tuple[float, float] = (0.8, 1.6)

    def __post_init__(self) -> None:
        _check_choice("load", self.load, LOAD_SOURCES)
        _check_choice("pv", self.pv, PV_SOURCES)
        _check_choice("price", self.price, PRICE_SOURCES)
        _check_choice("ambient", self.ambient, AMBIENT_SOURCES)
        _check_choice("bdew_profile", self.bdew_profile, BDEW_PROFILES)
        _check_choice("tmy3_file", self.tmy3_file, TMY3_FILES)
        _check_choice("forecast", self.forecast, ("perfect", "noisy"))
        _check_choice("csv_scale", self.csv_scale, CSV_SCALES)
        if not isinstance(self.randomize_day, bool):
            raise ValueError(f"Scenario.randomize_day must be a bool, got {self.randomize_day!r}")
        for name in ("day_load_level_range", "day_pv_level_range", "day_price_level_range"):
            object.__setattr__(self, name, _level_range(name, getattr(self, name)))
        if self.price_event_start_h is not None:
            start = _level_range("price_event_start_h", self.price_event_start_h)
            if not start[1] < 24.0:
                raise ValueError(f"Scenario.price_event_start_h must lie in [0, 24), got {start!r}")
            object.__setattr__(self, "price_event_start_h", start)
        duration = _level_range("price_event_duration_h", self.price_event_duration_h)
        if not (duration[0] > 0.0 and duration[1] <= 24.0):
            raise ValueError(
                f"Scenario.price_event_duration_h must satisfy 0 < low <= high <= 24, "
                f"got {duration!r}"
            )
        object.__setattr__(self, "price_event_duration_h", duration)
        name = "price_event_price_eur_per_kwh"
        object.__setattr__(self, name, _level_range(name, getattr(self, name)))
        for name in ("day_ambient_season_c", "day_ambient_weather_c"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0.0):
                value = getattr(self, name)
                raise ValueError(f"Scenario.{name} must be finite and >= 0, got {value}")
        for name in ("load_noise", "price_volatility", "forecast_noise_1h", "pv_peak_ratio"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"Scenario.{name} must be >= 0, got {getattr(self, name)}")
        if not math.isfinite(self.forecast_noise_1h):
            raise ValueError(
                f"Scenario.forecast_noise_1h must be finite, got {self.forecast_noise_1h}"
            )
        for name in ("peak_load_ratio", "grid_import_ratio", "grid_export_ratio"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"Scenario.{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.price_spike_probability <= 1.0:
            raise ValueError(
                "Scenario.price_spike_probability must be in [0, 1], got "
                f"{self.price_spike_probability}"
            )
        if self.site_peak_load_w is not None and not self.site_peak_load_w > 0:
            raise ValueError(f"Scenario.site_peak_load_w must be > 0, got {self.site_peak_load_w}")
        if self.start_day is not None and not 0 <= self.start_day < 365:
            raise ValueError(f"Scenario.start_day must be in [0, 364], got {self.start_day}")
        if not 0.0 <= self.start_hour < 24.0:
            raise ValueError(f"Scenario.start_hour must be in [0, 24), got {self.start_hour}")
        hours = [h for h, _ in self.tou_schedule]
        if not hours or hours[0] != 0.0 or sorted(hours) != hours or hours[-1] >= 24.0:
            raise ValueError(
                "Scenario.tou_schedule must be ((start_hour, price), ...) sorted by hour, "
                f"starting at 0 and below 24, got {self.tou_schedule!r}"
            )
        uses_csv = "csv" in (self.load, self.pv, self.price, self.ambient)
        if uses_csv and not self.csv_path:
            raise ValueError("Scenario.csv_path is required when a source is 'csv'")

    @classmethod
    def from_any(cls, spec: str | Mapping[str, Any] | Scenario) -> Scenario:
        """Build a scenario from a preset name, a dict, or return a scenario unchanged.

        A dict may name a preset under ``"base"`` (or ``"name"`` when it is a preset) and
        override any field; a nested ``tou_schedule`` list is turned into tuples.

        Args:
            spec: Preset name (see :data:`SCENARIOS`), mapping of fields, or a Scenario.

        Returns:
            The scenario.

        Raises:
            ValueError: On an unknown preset or field, naming it.
        """
        return make_scenario(spec)

    def replace(self, **changes: Any) -> Scenario:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _level_range(field_name: str, value: Any) -> tuple[float, float]:
    """A ``(low, high)`` factor range as a tuple of floats, ``0 <= low <= high``, finite."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"Scenario.{field_name} must be a pair (low, high), got {value!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
        raise ValueError(
            f"Scenario.{field_name} must satisfy 0 <= low <= high (finite), got {value!r}"
        )
    return (low, high)


def _check_choice(field_name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Scenario.{field_name} must be one of {list(choices)}, got {value!r}")


SCENARIOS: dict[str, Scenario] = {
    "default": Scenario(name="default"),
    "tou": Scenario(name="tou", pv="none", ambient="constant"),
    "flat": Scenario(name="flat", pv="none", price="flat", ambient="constant", load_noise=0.0),
    "stochastic": Scenario(name="stochastic", price="stochastic", forecast="noisy"),
    "bdew": Scenario(name="bdew", load="bdew", pv="none", ambient="tmy3"),
    "bdew_pv": Scenario(name="bdew_pv", load="bdew", pv="pvlib", ambient="tmy3", pv_peak_ratio=0.8),
    "commercial_pv": Scenario(
        name="commercial_pv",
        load="bdew",
        bdew_profile="G25",
        pv="pvlib",
        ambient="tmy3",
        price="stochastic",
        pv_peak_ratio=0.6,
    ),
    "hot": Scenario(name="hot", ambient="synthetic", ambient_c=38.0, ambient_amplitude_c=6.0),
    "cold": Scenario(name="cold", ambient="synthetic", ambient_c=-5.0, ambient_amplitude_c=4.0),
    "randomized": Scenario(
        name="randomized", price="stochastic", ambient_c=15.0, randomize_day=True
    ),
}
"""Named presets. ``default``: synthetic load and PV, time-of-use price, synthetic ambient.
``tou``: load only, TOU price, 25 °C. ``flat``: deterministic load, flat price (a sanity
case where only degradation and losses matter). ``stochastic``: stochastic price, noisy
forecasts. ``bdew``: BDEW H25 household load, TMY3 ambient. ``bdew_pv``: BDEW H25 load −
pvlib PV on the Greensboro TMY3 year. ``commercial_pv``: BDEW G25 load, pvlib PV,
stochastic price. ``hot`` / ``cold``: synthetic site at 38 °C / −5 °C mean ambient.
``randomized``: for training on varied days: every reset a random season, weather
(15 °C ± 10 K seasonal mean, ±3 K day offset, 5 K daily swing), load, PV and price level,
stochastic price with spikes, and a random initial fleet state in the env."""


def make_scenario(spec: str | Mapping[str, Any] | Scenario) -> Scenario:
    """Build a :class:`Scenario` from a preset name, a dict of fields, or a Scenario.

    Args:
        spec: A name in :data:`SCENARIOS`; a mapping of :class:`Scenario` fields, optionally
            with ``"base"`` naming the preset it starts from; or a Scenario (returned as is).

    Returns:
        The validated scenario.

    Raises:
        ValueError: If the preset or a field is unknown (the message names it), or a value
            is invalid.
        TypeError: If ``spec`` is of another type.

    Example:
        >>> make_scenario({"base": "tou", "feed_in_price_eur_per_kwh": 0.0}).name
        'tou'
    """
    if isinstance(spec, Scenario):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key not in SCENARIOS:
            raise ValueError(f"unknown scenario {spec!r}; known scenarios: {sorted(SCENARIOS)}")
        return SCENARIOS[key]
    if isinstance(spec, Mapping):
        fields = dict(spec)
        base_name = fields.pop("base", None)
        if base_name is None and str(fields.get("name", "")).lower() in SCENARIOS:
            base_name = fields["name"]
        base = make_scenario(str(base_name)) if base_name is not None else Scenario()
        known = {f.name for f in dataclasses.fields(Scenario)}
        unknown = sorted(set(fields) - known)
        if "forecast_noise" in unknown:
            raise ValueError(
                "Scenario field 'forecast_noise' (per control interval) was replaced by "
                "'forecast_noise_1h': the relative forecast error std one hour ahead, growing "
                "with √(lead in hours); at dt_s seconds per step, forecast_noise_1h = "
                "forecast_noise · √(3600 / dt_s) keeps the old spread"
            )
        if unknown:
            raise ValueError(f"unknown Scenario field(s) {unknown}; known fields: {sorted(known)}")
        if "tou_schedule" in fields:
            fields["tou_schedule"] = tuple((float(h), float(p)) for h, p in fields["tou_schedule"])
        return dataclasses.replace(base, **fields)
    raise TypeError(f"scenario must be a name, a mapping or a Scenario, got {type(spec).__name__}")
