"""Noisy forecasts: the martingale model of forecast evolution (spread, consistency, no artefact).

Statistical tests are seeded (deterministic); each tolerance is stated against the
estimator's standard error, so a correct model passes by a wide margin and the model it
replaced (fresh independent errors at every step) fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from env_stubs import stub_factory

from pulsebms.envs import FleetEnv
from pulsebms.envs.scenarios import ForecastErrors, Scenario, build_series, make_scenario

SIGMA = 0.05  # relative std one hour ahead
DT_S = 900.0
SIGMA_SAMPLE = SIGMA * np.sqrt(DT_S / 3600.0)  # one control interval ahead
N_TARGETS = 4000  # targets per statistic: std of a sample std ≈ 1/√(2·4000) ≈ 1.1 %
MAX_LEAD = 12
SMALL = [{"chemistry": "LFP"}, {"chemistry": "NMC"}, {"chemistry": "LCO"}]


def _noisy_series(seed: int = 0, n: int = N_TARGETS + MAX_LEAD + 1, dt_s: float = DT_S):
    """A long noisy series with its errors drawn (constant load: the truth is easy to read)."""
    scenario = make_scenario(
        {"base": "tou", "load": "constant", "forecast": "noisy", "forecast_noise_1h": SIGMA}
    )
    series = build_series(
        scenario, n_samples=n, dt_s=dt_s, fleet_rated_power_w=1e4, rng=np.random.default_rng(seed)
    )
    return series.with_forecast_errors(MAX_LEAD, np.random.default_rng(seed + 1))


def _standardised_forecasts(
    series, sigma_sample: float = SIGMA_SAMPLE
) -> tuple[np.ndarray, np.ndarray]:
    """``F[k, j-1]``: the standardised error of the forecast issued at ``k``, lead ``j``.

    Read through :meth:`ScenarioSeries.forecast_at` (what the env observes): net load
    ``(forecast − truth) / (σ · peak)``, price ``(forecast / truth − 1) / σ``, with ``σ``
    the std one control interval ahead.
    """
    n_issue = series.n_samples - MAX_LEAD - 1
    net = np.empty((n_issue, MAX_LEAD))
    price = np.empty((n_issue, MAX_LEAD))
    for k in range(n_issue):
        f_net, f_price = series.forecast_at(k, MAX_LEAD)
        idx = np.arange(k + 1, k + 1 + MAX_LEAD)
        net[k] = (f_net - series.net_load_w[idx]) / (sigma_sample * series.site_peak_load_w)
        price[k] = (f_price / series.price_eur_per_kwh[idx] - 1.0) / sigma_sample
    return net, price


@pytest.fixture(scope="module")
def forecasts() -> tuple[np.ndarray, np.ndarray]:
    return _standardised_forecasts(_noisy_series())


def test_error_std_grows_with_the_square_root_of_the_lead(forecasts) -> None:
    # Per lead, N_TARGETS forecasts of different targets (independent): sample std within
    # 5 % of √j (≈ 4.5 standard errors), mean within 5 standard errors of 0 (√j/√4000).
    for z in forecasts:
        leads = np.arange(1, MAX_LEAD + 1)
        np.testing.assert_allclose(z.std(axis=0) / np.sqrt(leads), 1.0, atol=0.05)
        assert np.all(np.abs(z.mean(axis=0)) < 5.0 * np.sqrt(leads / len(z)))


@pytest.mark.parametrize("dt_s", [300.0, 1800.0])
def test_spread_is_stated_per_hour_whatever_the_control_interval(dt_s: float) -> None:
    # The forecast of the sample one hour ahead has relative std SIGMA at every dt_s (12
    # samples ahead at 5-min steps, 2 at 30-min steps): the spread counts hours, not steps.
    lead_1h = round(3600.0 / dt_s)
    series = _noisy_series(seed=3, dt_s=dt_s)
    z = _standardised_forecasts(series, sigma_sample=SIGMA)  # in units of the 1-h std
    for errors in z:
        np.testing.assert_allclose(errors[:, lead_1h - 1].std(), 1.0, atol=0.05)


def test_consecutive_forecasts_of_one_target_differ_by_one_innovation(forecasts) -> None:
    for z in forecasts:
        # Target t = k + j: issued at k (lead j) and at k + 1 (lead j − 1), j = 2 … MAX_LEAD.
        earlier, later = z[:-1, 1:], z[1:, :-1]
        update = later - earlier
        # One innovation: std 1 at every lead (fresh errors: √(2j − 1), 1.7 … 4.8).
        np.testing.assert_allclose(update.std(axis=0), 1.0, atol=0.05)
        # ... independent of the error that remains: a martingale. Correlation of the update
        # with the later forecast's error ≈ 0 (standard error 1/√4000 ≈ 0.016; fresh errors
        # give +√(j−1)/√(2j−1) ≥ 0.57).
        for lead in range(update.shape[1]):
            r = np.corrcoef(update[:, lead], later[:, lead])[0, 1]
            assert abs(r) < 0.06, (lead, r)


def test_no_combination_of_past_forecasts_beats_the_latest(forecasts) -> None:
    for z in forecasts:
        n = z.shape[0] - MAX_LEAD
        # For target t, its forecasts at leads 1 … MAX_LEAD (issued at t−1 … t−MAX_LEAD).
        t = np.arange(MAX_LEAD, MAX_LEAD + n)
        by_lead = np.stack([z[t - j, j - 1] for j in range(1, MAX_LEAD + 1)], axis=1)
        latest_rms = np.sqrt(np.mean(by_lead[:, 0] ** 2))
        mean_rms = np.sqrt(np.mean(by_lead.mean(axis=1) ** 2))
        # The artefact, absent: averaging the issues is worse than the latest (expected RMS
        # 1 against 2.1 here; fresh errors would give 1 against 0.74).
        assert mean_rms > 1.5 * latest_rms
        # Stronger: the best linear correction of the latest forecast by the earlier ones
        # explains nothing of its error (R² ≈ 11/4000 by chance; fresh errors: ≈ 0.7).
        x = by_lead[:, 1:] - by_lead[:, :1]
        y = -by_lead[:, 0]  # truth − latest, standardised
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        r2 = 1.0 - np.sum((y - x @ coef) ** 2) / np.sum(y**2)
        assert r2 < 0.01, r2


def test_errors_are_drawn_once_and_reading_draws_nothing() -> None:
    series = _noisy_series(n=60)
    a = series.forecast_at(7, MAX_LEAD)
    b = series.forecast_at(7, MAX_LEAD)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    # Same seeds, same errors; another seed, other errors.
    again = _noisy_series(n=60)
    np.testing.assert_array_equal(again.forecast_errors.net_load, series.forecast_errors.net_load)
    assert not np.array_equal(
        _noisy_series(seed=5, n=60).forecast_errors.net_load, series.forecast_errors.net_load
    )
    # A shorter forecast is a prefix of the longer one (one error per target and lead).
    np.testing.assert_array_equal(series.forecast_at(7, 4)[0], a[0][:4])
    assert series.forecast_at(7, 0)[0].shape == (0,)


def test_perfect_forecasts_draw_nothing_and_are_the_truth() -> None:
    series = build_series(
        make_scenario("default"), n_samples=40, dt_s=900.0, fleet_rated_power_w=1e4,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    rng = np.random.default_rng(3)
    before = rng.bit_generator.state
    assert series.with_forecast_errors(MAX_LEAD, rng) is series
    assert rng.bit_generator.state == before
    net, price = series.forecast_at(5, 4)
    np.testing.assert_array_equal(net, series.net_load_w[6:10])
    np.testing.assert_array_equal(price, series.price_eur_per_kwh[6:10])


def _env(forecast: str, **kwargs) -> FleetEnv:
    return FleetEnv(
        fleet=SMALL,
        twin_factory=stub_factory(),
        horizon_steps=24,
        forecast_steps=6,
        scenario={"base": "stochastic", "forecast": forecast, "forecast_noise_1h": 0.1},
        randomize_initial_state=True,
        **kwargs,
    )


def test_env_noise_is_seeded_drawn_last_at_reset_and_leaves_the_day_alone() -> None:
    noisy, noisy_again, perfect = _env("noisy"), _env("noisy"), _env("perfect")
    obs_n, _ = noisy.reset(seed=4)
    obs_a, _ = noisy_again.reset(seed=4)
    obs_p, _ = perfect.reset(seed=4)
    # Draw order: the perfect env's generator, advanced by one integer (the errors' child
    # seed), is the noisy env's: noisy forecasts draw exactly once, after everything else.
    perfect.np_random.integers(0, 2**63 - 1)
    assert perfect.np_random.bit_generator.state == noisy.np_random.bit_generator.state
    # The day and the fleet's initial state do not depend on the forecast.
    np.testing.assert_array_equal(noisy.series.net_load_w, perfect.series.net_load_w)
    forecast = np.zeros(obs_n.shape, dtype=bool)
    for name in ("demand_forecast_w", "price_forecast_per_kwh"):
        forecast[noisy.observation_layout.slices[name]] = True
    np.testing.assert_array_equal(obs_n[~forecast], obs_p[~forecast])
    assert not np.array_equal(obs_n[forecast], obs_p[forecast])
    # Seeded: two envs, one seed, the same observations all episode; nothing drawn on steps.
    state = noisy.np_random.bit_generator.state
    action = np.full(3, 0.2, dtype=np.float32)
    np.testing.assert_array_equal(obs_n, obs_a)
    for _ in range(10):
        np.testing.assert_array_equal(noisy.step(action)[0], noisy_again.step(action)[0])
    assert noisy.np_random.bit_generator.state == state
    # Another seed, other errors.
    noisy_again.reset(seed=5)
    noisy.reset(seed=4)
    assert not np.array_equal(noisy.series.forecast_errors.net_load,
                              noisy_again.series.forecast_errors.net_load)  # fmt: skip


def test_env_observes_the_evolving_forecast_of_one_target() -> None:
    env = _env("noisy")
    obs, _ = env.reset(seed=0)
    layout = env.observation_layout
    sl, scale = layout.slices["demand_forecast_w"], layout.scales["demand_forecast_w"]
    target = 6  # seen at leads 6 … 1 in the observations of steps 0 … 5
    seen = []
    for k in range(6):
        seen.append(float(obs[sl][target - k - 1]) * scale)
        obs = env.step(np.zeros(3, dtype=np.float32))[0]
    sigma_sample = 0.1 * np.sqrt(env.series.dt_s / 3600.0)  # forecast_noise_1h, per interval
    err = (np.array(seen) - env.series.net_load_w[target]) / (
        sigma_sample * env.series.site_peak_load_w
    )
    expected = env.series.forecast_errors.net_load[target, 5::-1]  # leads 6 … 1
    np.testing.assert_allclose(err, expected, atol=1e-4)  # the observation is float32


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"forecast": "fresh"}, "Scenario.forecast must be one of"),
        ({"forecast_noise_1h": -0.1}, "forecast_noise_1h must be >= 0"),
        ({"forecast_noise_1h": float("nan")}, "forecast_noise_1h must be >= 0"),
        ({"forecast_noise_1h": float("inf")}, "forecast_noise_1h must be finite"),
    ],
)
def test_bad_forecast_config_is_a_clear_error(fields, match) -> None:
    with pytest.raises(ValueError, match=match):
        Scenario(**fields)


def test_the_per_interval_field_name_says_what_replaced_it() -> None:
    with pytest.raises(ValueError, match=r"replaced by 'forecast_noise_1h'.*√\(3600 / dt_s\)"):
        make_scenario({"base": "stochastic", "forecast_noise": 0.05})


def test_misuse_of_the_errors_is_a_clear_error() -> None:
    undrawn = build_series(
        make_scenario({"base": "tou", "forecast": "noisy"}), n_samples=20, dt_s=900.0,
        fleet_rated_power_w=1e4, rng=np.random.default_rng(0),
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="with_forecast_errors"):
        undrawn.forecast_at(0, 3)
    drawn = undrawn.with_forecast_errors(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"leads 1\.\.3"):
        drawn.forecast_at(0, 4)
    rng = np.random.default_rng(0)
    for kwargs in ({"n_samples": 0, "max_lead": 3}, {"n_samples": 5, "max_lead": -1},
                   {"n_samples": 5.5, "max_lead": 2}):  # fmt: skip
        with pytest.raises(ValueError, match=r"ForecastErrors\.draw needs an integer"):
            ForecastErrors.draw(rng=rng, **kwargs)
    with pytest.raises(ValueError, match="one shape"):
        ForecastErrors(net_load=np.zeros((3, 2)), price=np.zeros((3, 3)))
