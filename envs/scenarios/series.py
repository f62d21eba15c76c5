"""Turn a :class:`Scenario` into the seeded time series of one episode, and make forecasts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from pulsebms.core.types import FloatArray
from pulsebms.envs.scenarios.csv_loader import CsvProfile, load_csv_profile
from pulsebms.envs.scenarios.forecast_errors import ForecastErrors
from pulsebms.envs.scenarios.profiles import (
    bdew_load_profile,
    tmy3_ambient_profile,
    tmy3_pv_profile,
)
from pulsebms.envs.scenarios.scenario import Scenario
from pulsebms.envs.scenarios.synthetic import (
    ar1,
    synthetic_ambient_c,
    synthetic_load_pu,
    synthetic_pv_pu,
    tou_price,
)

__all__ = ["ScenarioSeries", "build_series"]

_DAY_S = 86400.0
_COLDEST_DAY = 19.0  # 20 January (0-based day of year): the seasonal minimum of ambient


@dataclass(frozen=True)
class ScenarioSeries:
    """The exogenous signals of one episode, one value per control interval.

    Sample ``k`` holds for the interval ``[k·dt_s, (k+1)·dt_s)`` after the episode start.
    Arrays are longer than the horizon by the forecast length, so a forecast never runs
    off the end.

    Attributes:
        dt_s: Control interval [s].
        start_day: Day of year (0-based) of the episode start.
        start_hour: Local hour of the episode start.
        load_w: Site load [W], ≥ 0.
        pv_w: PV generation [W], ≥ 0.
        net_load_w: ``load_w − pv_w`` [W]; negative when PV exceeds the load.
        price_eur_per_kwh: Grid import price [EUR/kWh].
        feed_in_price_eur_per_kwh: Price paid for export [EUR/kWh].
        ambient_c: Ambient temperature [°C].
        hour_of_day: Local hour at the start of each interval, in [0, 24).
        site_peak_load_w: The load scale of the site [W].
        grid_import_limit_w: Grid import limit [W].
        grid_export_limit_w: Grid export limit [W].
        forecast: ``"perfect"`` or ``"noisy"``.
        forecast_noise_1h: Relative std of a noisy forecast one hour ahead (it grows with
            the square root of the lead time).
        day_draws: The randomised day's draws (``Scenario.randomize_day``) as
            ``(name, value)`` pairs: ``load_level``, ``pv_level``, ``price_level``,
            ``ambient_offset_c`` (the season and weather shift at the episode start);
            empty otherwise.
        forecast_errors: The episode's noisy-forecast errors
            (:class:`~pulsebms.envs.scenarios.ForecastErrors`), set by
            :meth:`with_forecast_errors`; ``None`` for perfect forecasts and until drawn.
    """

    dt_s: float
    start_day: int
    start_hour: float
    load_w: FloatArray
    pv_w: FloatArray
    net_load_w: FloatArray
    price_eur_per_kwh: FloatArray
    feed_in_price_eur_per_kwh: float
    ambient_c: FloatArray
    hour_of_day: FloatArray
    site_peak_load_w: float
    grid_import_limit_w: float
    grid_export_limit_w: float
    forecast: str
    forecast_noise_1h: float
    day_draws: tuple[tuple[str, float], ...] = ()
    forecast_errors: ForecastErrors | None = None

    @property
    def n_samples(self) -> int:
        """Number of samples (horizon plus forecast length)."""
        return int(self.load_w.shape[0])

    def with_forecast_errors(self, max_lead: int, rng: np.random.Generator) -> ScenarioSeries:
        """The series with its episode's noisy-forecast errors drawn (once per episode).

        Perfect forecasts draw nothing and return the series itself. Noisy ones draw one
        integer from ``rng`` (the seed of a child generator), then from that child the
        innovations of net load and of price (:meth:`ForecastErrors.draw`), so ``rng``
        advances by one draw whatever the forecast's length.

        Args:
            max_lead: Longest lead the episode's forecasts will ask for (the forecast length).
            rng: The caller's seeded generator (the env's ``np_random``).

        Returns:
            The series with :attr:`forecast_errors` set (noisy), or ``self`` (perfect).

        Example:
            >>> import numpy as np
            >>> from pulsebms.envs.scenarios import make_scenario
            >>> s = build_series(make_scenario("stochastic"), n_samples=8, dt_s=900.0,
            ...                  fleet_rated_power_w=1e4, rng=np.random.default_rng(0))
            >>> s.with_forecast_errors(3, np.random.default_rng(1)).forecast_errors.max_lead
            3
        """
        if self.forecast != "noisy":
            return self
        child = np.random.default_rng(int(rng.integers(0, 2**63 - 1)))
        errors = ForecastErrors.draw(n_samples=self.n_samples, max_lead=max_lead, rng=child)
        return dataclasses.replace(self, forecast_errors=errors)

    def forecast_at(self, k: int, n_ahead: int) -> tuple[FloatArray, FloatArray]:
        """Forecast net load [W] and import price [EUR/kWh] for samples ``k+1 … k+n_ahead``.

        Perfect forecasts are the true future values. Noisy ones are the truth plus the
        episode's errors (:mod:`pulsebms.envs.scenarios.forecast_errors`: the martingale
        model of forecast evolution): at a lead of ``j`` samples (``j·dt_s`` seconds) an
        error of std ``forecast_noise_1h·√(j·dt_s / 3600)`` times the site peak load (net
        load, additive) or times the true price (price, multiplicative); the forecasts of
        one target issued at consecutive samples differ by one independent innovation.
        Reading a forecast draws nothing.

        Args:
            k: Index of the current sample.
            n_ahead: Forecast length (0 gives empty arrays).

        Returns:
            ``(net_load_w, price_eur_per_kwh)``, each of shape ``(n_ahead,)``.

        Raises:
            RuntimeError: Noisy forecasts whose errors were not drawn
                (:meth:`with_forecast_errors`).
            ValueError: If ``n_ahead`` exceeds the drawn errors' ``max_lead``.
        """
        idx = np.minimum(np.arange(k + 1, k + 1 + n_ahead), self.n_samples - 1)
        net = self.net_load_w[idx].copy()
        price = self.price_eur_per_kwh[idx].copy()
        if self.forecast == "noisy" and n_ahead:
            if self.forecast_errors is None:
                raise RuntimeError(
                    "noisy forecasts need the episode's errors: call with_forecast_errors() first"
                )
            z_net, z_price = self.forecast_errors.at(k, n_ahead)
            sigma_per_sample = self.forecast_noise_1h * np.sqrt(self.dt_s / 3600.0)
            net += sigma_per_sample * self.site_peak_load_w * z_net
            price *= 1.0 + sigma_per_sample * z_price
        return net, price


def build_series(
    scenario: Scenario,
    *,
    n_samples: int,
    dt_s: float,
    fleet_rated_power_w: float,
    rng: np.random.Generator,
) -> ScenarioSeries:
    """Generate one episode's signals from a scenario with a seeded generator.

    Draws happen in a fixed order (start day, load, PV, price, ambient, then the
    randomised day's factors when ``scenario.randomize_day``, then the price event when
    ``scenario.price_event_start_h`` is set) whatever the sources, so
    changing one source does not reshuffle the others' randomness, and a randomised day
    is the same base day as the plain scenario's for the same generator state.

    Args:
        scenario: What to generate.
        n_samples: Number of control intervals (horizon + forecast length + 1).
        dt_s: Control interval [s].
        fleet_rated_power_w: Σ rated pack power [W], used for sizing (see
            :mod:`pulsebms.envs.scenarios.scenario`).
        rng: Seeded generator (the env's ``np_random``).

    Returns:
        The episode's series.

    Raises:
        ValueError: On non-positive ``n_samples``, ``dt_s`` or ``fleet_rated_power_w``.
        pulsebms.envs.scenarios.CsvProfileError: On a bad user CSV.

    Example:
        >>> import numpy as np
        >>> from pulsebms.envs.scenarios import make_scenario
        >>> s = build_series(make_scenario("tou"), n_samples=4, dt_s=900.0,
        ...                  fleet_rated_power_w=1e4, rng=np.random.default_rng(0))
        >>> s.net_load_w.shape
        (4,)
    """
    if n_samples < 1 or not dt_s > 0 or not fleet_rated_power_w > 0:
        raise ValueError(
            "build_series needs n_samples >= 1, dt_s > 0 and fleet_rated_power_w > 0, got "
            f"{n_samples}, {dt_s}, {fleet_rated_power_w}"
        )
    csv: CsvProfile | None = None
    if scenario.csv_path and "csv" in (
        scenario.load,
        scenario.pv,
        scenario.price,
        scenario.ambient,
    ):
        csv = load_csv_profile(scenario.csv_path)

    # Start time: the CSV's own start when it has timestamps, else the scenario's.
    drawn_day = int(rng.integers(0, 365))
    start_day = scenario.start_day if scenario.start_day is not None else drawn_day
    start_hour = scenario.start_hour
    if csv is not None and csv.start_day is not None and csv.start_hour is not None:
        start_day, start_hour = csv.start_day, csv.start_hour
    elapsed_s = np.arange(n_samples, dtype=np.float64) * dt_s
    time_s = start_day * _DAY_S + start_hour * 3600.0 + elapsed_s
    # Interval means are taken at the interval's middle.
    mid_s: FloatArray = np.asarray(time_s + 0.5 * dt_s, dtype=np.float64)
    hour_of_day = np.mod(time_s / 3600.0, 24.0)
    mid_hour: FloatArray = mid_s / 3600.0
    mid_day: FloatArray = np.mod(mid_s / _DAY_S, 365.0)

    # Sizing.
    absolute = csv is not None and scenario.csv_scale == "absolute"
    if scenario.site_peak_load_w is not None:
        peak_w = scenario.site_peak_load_w
    elif csv is not None and absolute and scenario.load == "csv":
        peak_w = float(np.max(csv.sample("load_w", csv.time_s)))  # names a missing column
        if not peak_w > 0:
            raise ValueError(
                f"{scenario.csv_path}: csv_scale='absolute' needs a positive peak load to size "
                "the site; give site_peak_load_w"
            )
    else:
        peak_w = scenario.peak_load_ratio * fleet_rated_power_w

    # Load [p.u. of peak; W of the file for an absolute CSV].
    load_unit_w = peak_w
    # One child generator per signal, seeded from ``rng`` (its state alone decides them).
    load_rng, pv_rng, price_rng, ambient_rng = (
        np.random.default_rng(int(seed)) for seed in rng.integers(0, 2**63 - 1, size=4)
    )
    day = _draw_day(scenario, rng) if scenario.randomize_day else None
    if scenario.load == "synthetic":
        load_pu = synthetic_load_pu(mid_hour, mid_day, load_rng, scenario.load_noise, dt_s)
    elif scenario.load == "bdew":
        load_pu = bdew_load_profile(scenario.bdew_profile).sample(mid_s)
        if scenario.load_noise > 0:
            fluct = ar1(load_rng, n_samples, dt_s, 1800.0)
            load_pu = np.clip(load_pu * (1.0 + scenario.load_noise * fluct), 0.0, None)
    elif scenario.load == "constant":
        load_pu = np.full(n_samples, 0.5)
    else:
        if csv is None:  # pragma: no cover - guarded by Scenario validation
            raise ValueError("Scenario.csv_path is required for load='csv'")
        load_csv = np.clip(csv.sample("load_w", elapsed_s + 0.5 * dt_s), 0.0, None)
        csv_peak = float(np.max(csv.signals["load_w"])) or 1.0
        if absolute:  # the file's watts, exactly (its peak sizes the site unless given)
            load_pu, load_unit_w = load_csv, 1.0
        else:
            load_pu = load_csv / csv_peak
        if scenario.load_noise > 0:
            fluct = ar1(load_rng, n_samples, dt_s, 1800.0)
            load_pu = np.clip(load_pu * (1.0 + scenario.load_noise * fluct), 0.0, None)
    load_w = np.clip(load_pu, 0.0, None) * load_unit_w

    # PV [W].
    pv_peak_w = scenario.pv_peak_ratio * peak_w
    if scenario.pv == "none":
        pv_w = np.zeros(n_samples)
    elif scenario.pv == "synthetic":
        pv_w = synthetic_pv_pu(mid_hour, mid_day, pv_rng, dt_s) * pv_peak_w
    elif scenario.pv == "pvlib":
        profile = tmy3_pv_profile(scenario.tmy3_file, scenario.pv_tilt_deg, scenario.pv_azimuth_deg)
        pv_w = profile.sample(mid_s) * pv_peak_w
    else:
        if csv is None:  # pragma: no cover - guarded by Scenario validation
            raise ValueError("Scenario.csv_path is required for pv='csv'")
        raw = csv.sample("pv_w", elapsed_s + 0.5 * dt_s)
        if absolute:
            pv_w = raw
        elif scenario.load == "csv":  # keep the file's PV/load ratio
            pv_w = raw / (float(np.max(csv.signals["load_w"])) or 1.0) * peak_w
        else:
            pv_w = raw / (float(np.max(csv.signals["pv_w"])) or 1.0) * pv_peak_w
    pv_w = np.clip(pv_w, 0.0, None)

    # Price [EUR/kWh].
    if scenario.price == "flat":
        price = np.full(n_samples, scenario.flat_price_eur_per_kwh)
    elif scenario.price == "tou":
        price = tou_price(hour_of_day, scenario.tou_schedule)
    elif scenario.price == "stochastic":
        sigma = scenario.price_volatility
        dev = np.exp(sigma * ar1(price_rng, n_samples, dt_s, 3.0 * 3600.0) - 0.5 * sigma**2)
        p_spike = 1.0 - (1.0 - scenario.price_spike_probability) ** (dt_s / 3600.0)
        starts = price_rng.random(n_samples) < p_spike
        factors = price_rng.uniform(2.0, 4.0, n_samples)
        spike = np.ones(n_samples)
        span = max(1, round(3600.0 / dt_s))  # a spike lasts one hour
        for i in np.flatnonzero(starts):
            spike[i : i + span] = np.maximum(spike[i : i + span], factors[i])
        price = tou_price(hour_of_day, scenario.tou_schedule) * dev * spike
    else:
        if csv is None:  # pragma: no cover - guarded by Scenario validation
            raise ValueError("Scenario.csv_path is required for price='csv'")
        price = csv.sample("price_eur_per_kwh", elapsed_s)

    # Ambient [°C].
    if scenario.ambient == "constant":
        ambient = np.full(n_samples, scenario.ambient_c)
    elif scenario.ambient == "synthetic":
        ambient = synthetic_ambient_c(
            mid_hour, scenario.ambient_c, scenario.ambient_amplitude_c, ambient_rng, dt_s
        )
    elif scenario.ambient == "tmy3":
        ambient = tmy3_ambient_profile(scenario.tmy3_file).sample(mid_s)
    else:
        if csv is None:  # pragma: no cover - guarded by Scenario validation
            raise ValueError("Scenario.csv_path is required for ambient='csv'")
        ambient = csv.sample("ambient_c", elapsed_s + 0.5 * dt_s)

    day_draws: tuple[tuple[str, float], ...] = ()
    if day is not None:
        load_w = load_w * day.load_level
        pv_w = pv_w * day.pv_level
        price = np.asarray(price, dtype=np.float64) * day.price_level
        shift = np.zeros(n_samples)
        if scenario.ambient in ("constant", "synthetic"):
            season = -np.cos(2.0 * np.pi * (mid_day - _COLDEST_DAY) / 365.0)
            shift = scenario.day_ambient_season_c * season + day.weather_c
            ambient = np.asarray(ambient, dtype=np.float64) + shift
        day_draws = (
            ("load_level", day.load_level),
            ("pv_level", day.pv_level),
            ("price_level", day.price_level),
            ("ambient_offset_c", float(shift[0])),
        )

    if scenario.price_event_start_h is not None:
        event = _draw_price_event(scenario, scenario.price_event_start_h, rng)
        price = _apply_price_event(np.asarray(price, dtype=np.float64), hour_of_day, event)
        day_draws = (
            *day_draws,
            ("price_event_start_h", event[0]),
            ("price_event_duration_h", event[1]),
            ("price_event_price_eur_per_kwh", event[2]),
        )

    arrays = {
        "load_w": load_w,
        "pv_w": pv_w,
        "net_load_w": load_w - pv_w,
        "price_eur_per_kwh": np.asarray(price, dtype=np.float64),
        "ambient_c": np.asarray(ambient, dtype=np.float64),
        "hour_of_day": hour_of_day,
    }
    for arr in arrays.values():
        arr.setflags(write=False)
    return ScenarioSeries(
        dt_s=float(dt_s),
        start_day=int(start_day),
        start_hour=float(start_hour),
        feed_in_price_eur_per_kwh=scenario.feed_in_price_eur_per_kwh,
        site_peak_load_w=float(peak_w),
        grid_import_limit_w=float(scenario.grid_import_ratio * peak_w),
        grid_export_limit_w=float(scenario.grid_export_ratio * peak_w),
        forecast=scenario.forecast,
        forecast_noise_1h=scenario.forecast_noise_1h,
        day_draws=day_draws,
        load_w=arrays["load_w"],
        pv_w=arrays["pv_w"],
        net_load_w=arrays["net_load_w"],
        price_eur_per_kwh=arrays["price_eur_per_kwh"],
        ambient_c=arrays["ambient_c"],
        hour_of_day=arrays["hour_of_day"],
    )


@dataclass(frozen=True)
class _Day:
    """The factors of one randomised day (see :mod:`pulsebms.envs.scenarios.scenario`)."""

    load_level: float
    pv_level: float
    price_level: float
    weather_c: float


def _draw_day(scenario: Scenario, rng: np.random.Generator) -> _Day:
    """Draw a randomised day's factors from one child generator of ``rng`` (fixed order)."""
    day_rng = np.random.default_rng(int(rng.integers(0, 2**63 - 1)))
    return _Day(
        load_level=float(day_rng.uniform(*scenario.day_load_level_range)),
        pv_level=float(day_rng.uniform(*scenario.day_pv_level_range)),
        price_level=float(day_rng.uniform(*scenario.day_price_level_range)),
        weather_c=float(scenario.day_ambient_weather_c * day_rng.standard_normal()),
    )


def _draw_price_event(
    scenario: Scenario, start_h: tuple[float, float], rng: np.random.Generator
) -> tuple[float, float, float]:
    """Draw a price event's ``(start_h, duration_h, price)`` from one child generator."""
    event_rng = np.random.default_rng(int(rng.integers(0, 2**63 - 1)))
    return (
        float(event_rng.uniform(*start_h)),
        float(event_rng.uniform(*scenario.price_event_duration_h)),
        float(event_rng.uniform(*scenario.price_event_price_eur_per_kwh)),
    )


def _apply_price_event(
    price: FloatArray, hour_of_day: FloatArray, event: tuple[float, float, float]
) -> FloatArray:
    """The price with the event's floor on every sample whose start lies in the event.

    Example:
        >>> hours = np.arange(0.0, 24.0, 6.0)
        >>> _apply_price_event(np.full(4, 0.3), hours, (11.0, 2.0, 1.2)).tolist()
        [0.3, 0.3, 1.2, 0.3]
    """
    start, duration, level = event
    inside = np.mod(hour_of_day - start, 24.0) < duration
    return np.where(inside, np.maximum(price, level), price)
