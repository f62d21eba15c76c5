"""Scenarios: presets, seeded repeatability, real profiles (demandlib, pvlib), CSV loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pulsebms.envs.scenarios import (
    SCENARIOS,
    CsvProfileError,
    Scenario,
    bdew_load_profile,
    build_series,
    load_csv_profile,
    make_scenario,
    tmy3_ambient_profile,
    tmy3_pv_profile,
)


def _series(spec, seed=0, n=288, dt_s=300.0, rated=3000.0):
    return build_series(
        make_scenario(spec),
        n_samples=n,
        dt_s=dt_s,
        fleet_rated_power_w=rated,
        rng=np.random.default_rng(seed),
    )


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_preset_builds_sane_series(name: str) -> None:
    s = _series(name)
    assert s.n_samples == 288
    for arr in (s.load_w, s.pv_w, s.net_load_w, s.price_eur_per_kwh, s.ambient_c):
        assert arr.shape == (288,)
        assert np.all(np.isfinite(arr))
    assert np.all(s.load_w >= 0)
    assert np.all(s.pv_w >= 0)
    np.testing.assert_allclose(s.net_load_w, s.load_w - s.pv_w)
    assert np.all(s.price_eur_per_kwh > 0)
    assert -40 < s.ambient_c.min() <= s.ambient_c.max() < 60
    assert s.grid_import_limit_w < s.site_peak_load_w
    assert np.all((s.hour_of_day >= 0) & (s.hour_of_day < 24))


@pytest.mark.parametrize("name", ["default", "stochastic", "bdew_pv", "commercial_pv"])
def test_seeded_series_repeat_bit_for_bit(name: str) -> None:
    a, b, c = _series(name, seed=3), _series(name, seed=3), _series(name, seed=4)
    for field in ("load_w", "pv_w", "price_eur_per_kwh", "ambient_c"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.start_day == b.start_day
    assert not np.array_equal(a.net_load_w, c.net_load_w)


def test_series_arrays_are_read_only() -> None:
    s = _series("default")
    with pytest.raises(ValueError, match="read-only"):
        s.load_w[0] = 1.0


def test_scenario_from_name_dict_and_errors() -> None:
    assert make_scenario("TOU") is SCENARIOS["tou"]
    sc = make_scenario({"base": "bdew_pv", "price": "stochastic", "tou_schedule": [[0, 0.1]]})
    assert (sc.load, sc.pv, sc.price, sc.tou_schedule) == (
        "bdew",
        "pvlib",
        "stochastic",
        ((0.0, 0.1),),
    )
    assert Scenario.from_any(sc) is sc
    with pytest.raises(ValueError, match="unknown scenario 'nope'"):
        make_scenario("nope")
    with pytest.raises(ValueError, match=r"unknown Scenario field\(s\) \['pricing'\]"):
        make_scenario({"pricing": "tou"})
    with pytest.raises(ValueError, match=r"Scenario\.price must be one of"):
        make_scenario({"price": "free"})
    with pytest.raises(ValueError, match="csv_path is required"):
        make_scenario({"load": "csv"})
    with pytest.raises(ValueError, match="tou_schedule"):
        make_scenario({"tou_schedule": [[3, 0.1]]})


def test_tou_price_follows_schedule() -> None:
    s = _series({"base": "tou", "start_day": 10, "start_hour": 0.0}, n=288)
    by_hour = dict(zip(np.floor(s.hour_of_day).astype(int), s.price_eur_per_kwh, strict=True))
    assert by_hour[3] == 0.15
    assert by_hour[12] == 0.28
    assert by_hour[18] == 0.42
    assert by_hour[22] == 0.28


def test_stochastic_price_varies_around_tou() -> None:
    s = _series({"base": "stochastic", "start_day": 10}, n=288 * 7)
    ratio = (
        s.price_eur_per_kwh / _series({"base": "tou", "start_day": 10}, n=288 * 7).price_eur_per_kwh
    )
    assert 0.8 < np.median(ratio) < 1.2
    assert ratio.std() > 0.05


def test_noisy_forecast_is_seeded_and_perfect_is_exact() -> None:
    # The error model itself: tests/envs/test_forecast_errors.py.
    perfect = _series("default")
    net, price = perfect.forecast_at(5, 4)
    np.testing.assert_array_equal(net, perfect.net_load_w[6:10])
    np.testing.assert_array_equal(price, perfect.price_eur_per_kwh[6:10])
    noisy = _series("stochastic")
    f1 = noisy.with_forecast_errors(4, np.random.default_rng(1)).forecast_at(5, 4)
    f2 = noisy.with_forecast_errors(4, np.random.default_rng(1)).forecast_at(5, 4)
    np.testing.assert_array_equal(f1[0], f2[0])
    assert not np.array_equal(f1[0], noisy.net_load_w[6:10])


def test_bdew_profile_annual_energy_and_shape() -> None:
    prof = bdew_load_profile("H25")
    assert prof.values.shape == (365 * 96,)
    assert prof.values.max() == 1.0
    assert prof.values.min() > 0
    annual_kwh = prof.values.sum() * prof.native_scale * 0.25  # demandlib: 1 GWh per year
    assert annual_kwh == pytest.approx(1.0e6, rel=0.01)
    # Households: evening demand above night demand.
    day = prof.values[:96]
    assert day[19 * 4] > day[3 * 4]
    assert bdew_load_profile("H25") is prof  # cached


def test_pvlib_pv_is_zero_at_night_with_plausible_yield() -> None:
    pv = tmy3_pv_profile("723170TYA.CSV")
    assert pv.values.shape == (8760,)
    hours = np.arange(8760) % 24
    assert np.all(pv.values[(hours <= 3) | (hours >= 22)] == 0.0)
    assert 0.6 < pv.values.max() <= 1.05
    assert 1200 < pv.values.sum() < 1900  # kWh per kWp and year, North Carolina
    summer, winter = pv.values[24 * 172 : 24 * 173].sum(), pv.values[24 * 355 : 24 * 356].sum()
    assert summer > 0
    assert winter >= 0
    alaska = tmy3_pv_profile("703165TY.csv")
    assert alaska.values.sum() < pv.values.sum()


def test_tmy3_ambient_is_plausible() -> None:
    amb = tmy3_ambient_profile("723170TYA.CSV")
    assert -25 < amb.values.min() < 0 < 30 < amb.values.max() < 45
    january, july = amb.values[: 24 * 31].mean(), amb.values[24 * 181 : 24 * 212].mean()
    assert july > january + 10


def test_bdew_pv_net_load_goes_negative_at_noon_in_summer() -> None:
    s = _series({"base": "bdew_pv", "start_day": 172, "pv_peak_ratio": 1.5}, n=288)
    noon = (s.hour_of_day >= 11) & (s.hour_of_day <= 14)
    night = s.hour_of_day <= 3
    assert s.net_load_w[noon].min() < 0
    assert np.all(s.pv_w[night] == 0)


# ------------------------------------------------------------------ CSV loader
def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.csv"
    path.write_text(text)
    return path


def test_csv_loader_reads_units_and_feeds_an_episode(tmp_path: Path) -> None:
    rows = "\n".join(
        f"2024-06-01T{h:02d}:00:00,{1.0 + 0.5 * (h >= 18)},{max(0, 6 - abs(h - 12)) * 0.2},"
        f"{120 + 10 * h},{295.15}"
        for h in range(24)
    )
    path = _csv(tmp_path, "timestamp,load_kw,pv_kw,price_eur_per_mwh,ambient_k\n" + rows + "\n")
    prof = load_csv_profile(path)
    assert prof.start_day == 152
    assert prof.start_hour == 0.0
    assert prof.signals["load_w"][0] == 1000.0
    assert prof.signals["price_eur_per_kwh"][1] == pytest.approx(0.13)
    assert prof.signals["ambient_c"][0] == pytest.approx(22.0)
    s = _series(
        {
            "load": "csv",
            "pv": "csv",
            "price": "csv",
            "ambient": "csv",
            "csv_path": str(path),
            "site_peak_load_w": 1500.0,
            "load_noise": 0.0,
        },
        n=48,
        dt_s=1800.0,
    )
    assert s.start_day == 152
    assert s.load_w.max() == pytest.approx(1500.0, rel=0.05)
    assert s.ambient_c[0] == pytest.approx(22.0)
    assert np.all(s.pv_w[s.hour_of_day < 5] == 0)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("load_w\n1\n2\n", "no time column"),
        ("time_s,load\n0,1\n1,2\n", r"column 'load' has no or an unknown unit.*load_kw"),
        ("time_s,pv_hp\n0,1\n1,2\n", r"column 'pv_hp' has no or an unknown unit"),
        ("time_s,load_w\n0,1\n900,\n", r"column 'load_w' has a missing .* at line 3"),
        ("time_s,load_w\n0,1\n900,abc\n", r"column 'load_w' .* 'abc' at line 3"),
        ("time_s,load_w\n0,1\n0,2\n", "time must increase strictly.*line 3"),
        ("time_s,other\n0,1\n1,2\n", "no signal column"),
        ("time_s,ambient_c\n0,280\n1,281\n", None),
        ("time_s,ambient_c\n0,-250\n1,-251\n", "kelvin"),
        (
            "timestamp,load_w\n2024-01-01,1\nnot a date,2\n",
            "unreadable time 'not a date' at line 3",
        ),
        ("time_s,load_w\n0,1\n", "at least two samples"),
    ],
)
def test_csv_loader_errors_name_the_column(tmp_path: Path, text: str, match: str | None) -> None:
    path = _csv(tmp_path, text)
    if match is None:
        load_csv_profile(path)
        return
    with pytest.raises(CsvProfileError, match=match):
        load_csv_profile(path)


def test_csv_missing_file_and_missing_signal(tmp_path: Path) -> None:
    with pytest.raises(CsvProfileError, match="does not exist"):
        load_csv_profile(tmp_path / "nope.csv")
    path = _csv(tmp_path, "time_s,load_w\n0,1\n900,2\n")
    with pytest.raises(CsvProfileError, match="needs 'price_eur_per_kwh'"):
        _series({"price": "csv", "csv_path": str(path)})


def _hourly_csv(tmp_path: Path, name: str = "hourly.csv") -> Path:
    rows = "\n".join(
        f"{3600 * h},{2.0 + 1.5 * (h >= 18)},{max(0, 6 - abs(h - 12)) * 0.5}" for h in range(24)
    )
    path = tmp_path / name
    path.write_text("time_s,load_kw,pv_kw\n" + rows + "\n")
    return path


def test_csv_absolute_keeps_the_files_watts_and_sizes_the_site_from_them(tmp_path: Path) -> None:
    path = _hourly_csv(tmp_path)
    spec = {"load": "csv", "pv": "csv", "csv_path": str(path), "load_noise": 0.0}
    fleet = _series(spec, n=24, dt_s=3600.0, rated=123.0)  # scaled to the 123 W fleet
    absolute = _series({**spec, "csv_scale": "absolute"}, n=24, dt_s=3600.0, rated=123.0)
    prof = load_csv_profile(path)
    mid = np.arange(24) * 3600.0 + 1800.0
    np.testing.assert_array_equal(absolute.load_w, prof.sample("load_w", mid))
    np.testing.assert_array_equal(absolute.pv_w, prof.sample("pv_w", mid))
    assert absolute.load_w.max() == pytest.approx(3500.0)  # watts of the file, not 123 W
    assert absolute.site_peak_load_w == 3500.0
    assert absolute.grid_import_limit_w == pytest.approx(0.8 * 3500.0)
    assert fleet.site_peak_load_w == pytest.approx(123.0)
    assert fleet.load_w.max() <= 123.0 + 1e-9
    given = _series(
        {**spec, "csv_scale": "absolute", "site_peak_load_w": 5000.0}, n=24, dt_s=3600.0
    )
    np.testing.assert_array_equal(given.load_w, absolute.load_w)  # still the file's watts
    assert given.grid_import_limit_w == pytest.approx(4000.0)  # sized by the given peak
    with pytest.raises(ValueError, match="csv_scale"):
        make_scenario({**spec, "csv_scale": "kilowatts"})


def test_csv_load_honours_load_noise_seeded(tmp_path: Path) -> None:
    spec = {"load": "csv", "csv_path": str(_hourly_csv(tmp_path)), "csv_scale": "absolute"}
    exact = _series({**spec, "load_noise": 0.0}, n=96, dt_s=900.0)
    a = _series({**spec, "load_noise": 0.1}, seed=1, n=96, dt_s=900.0)
    b = _series({**spec, "load_noise": 0.1}, seed=1, n=96, dt_s=900.0)
    c = _series({**spec, "load_noise": 0.1}, seed=2, n=96, dt_s=900.0)
    np.testing.assert_array_equal(a.load_w, b.load_w)
    assert not np.array_equal(a.load_w, c.load_w)
    rel = a.load_w / exact.load_w - 1.0
    assert 0.03 < float(np.std(rel)) < 0.3  # noise of about the stated 10 %
    assert np.all(a.load_w >= 0)
    # Adding noise to the load leaves the other signals' draws alone.
    np.testing.assert_array_equal(a.price_eur_per_kwh, exact.price_eur_per_kwh)


def test_csv_timestamps_across_a_daylight_saving_switch(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "timestamp,load_kw\n2024-03-31T00:00:00+01:00,1\n2024-03-31T01:00:00+01:00,2\n"
        "2024-03-31T03:00:00+02:00,3\n2024-03-31T04:00:00+02:00,4\n",
    )
    prof = load_csv_profile(path)
    np.testing.assert_array_equal(prof.time_s, [0.0, 3600.0, 7200.0, 10800.0])
    assert (prof.start_day, prof.start_hour) == (90, 0.0)


def test_csv_leap_year_new_years_eve_stays_a_valid_day(tmp_path: Path) -> None:
    path = _csv(tmp_path, "timestamp,load_kw\n2024-12-31T22:00:00,1\n2024-12-31T23:00:00,2\n")
    assert load_csv_profile(path).start_day == 364


def test_csv_rewritten_file_is_read_again(tmp_path: Path) -> None:
    import os

    path = _csv(tmp_path, "time_s,load_w\n0,1\n900,2\n")
    first = load_csv_profile(path)
    stat = os.stat(path)
    path.write_text("time_s,load_w\n0,9\n900,8\n")  # same length, new values
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # 1 ns later
    assert os.path.getsize(path) == stat.st_size
    assert load_csv_profile(path).signals["load_w"].tolist() == [9.0, 8.0]
    assert first.signals["load_w"].tolist() == [1.0, 2.0]


# ------------------------------------------------------------------ randomised days
def test_randomized_days_are_seeded_varied_and_leave_other_presets_alone() -> None:
    draws = {}
    for seed in range(6):
        a, b = _series("randomized", seed=seed), _series("randomized", seed=seed)
        for name in ("load_w", "pv_w", "price_eur_per_kwh", "ambient_c"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.day_draws == b.day_draws
        draws[seed] = dict(a.day_draws)
        assert 0.85 <= draws[seed]["load_level"] <= 1.15
        assert 0.3 <= draws[seed]["pv_level"] <= 1.6
        assert 0.7 <= draws[seed]["price_level"] <= 1.5
    assert len({d["price_level"] for d in draws.values()}) == 6
    offsets = [d["ambient_offset_c"] for d in draws.values()]
    assert max(offsets) - min(offsets) > 5.0  # seasons and weather differ
    assert _series("default").day_draws == ()


def test_randomize_day_is_the_plain_day_times_the_drawn_factors() -> None:
    base = {"base": "stochastic", "ambient": "constant", "ambient_c": 20.0}
    plain = _series(base, seed=5)
    day = _series({**base, "randomize_day": True}, seed=5)
    d = dict(day.day_draws)
    assert day.start_day == plain.start_day  # same base day: draws come after the others
    np.testing.assert_allclose(day.load_w, plain.load_w * d["load_level"], rtol=1e-12)
    np.testing.assert_allclose(day.pv_w, plain.pv_w * d["pv_level"], rtol=1e-12)
    np.testing.assert_allclose(
        day.price_eur_per_kwh, plain.price_eur_per_kwh * d["price_level"], rtol=1e-12
    )
    assert day.ambient_c[0] == pytest.approx(20.0 + d["ambient_offset_c"])
    assert day.site_peak_load_w == plain.site_peak_load_w  # sizing is not drawn
    fixed = _series({**base, "randomize_day": True, "day_price_level_range": [1.2, 1.2]})
    assert dict(fixed.day_draws)["price_level"] == 1.2  # lists from Hydra become ranges
    with pytest.raises(ValueError, match="day_pv_level_range"):
        make_scenario({**base, "day_pv_level_range": [2.0, 1.0]})


def test_price_event_puts_an_announced_evening_spike_in_its_window() -> None:
    """A daily price event: drawn in its window, only the price changes, seeded."""
    base = {"base": "randomized", "ambient_c": 30.0}
    event = {**base, "price_event_start_h": [16.0, 21.0], "price_event_duration_h": [1.5, 3.0]}
    starts = []
    for seed in range(6):
        plain, spiky = _series(base, seed=seed, n=576), _series(event, seed=seed, n=576)
        for name in ("load_w", "pv_w", "ambient_c"):  # the event draws after everything else
            np.testing.assert_array_equal(getattr(plain, name), getattr(spiky, name))
        draws = dict(spiky.day_draws)
        start, hours, level = (
            draws["price_event_start_h"],
            draws["price_event_duration_h"],
            draws["price_event_price_eur_per_kwh"],
        )
        assert 16.0 <= start <= 21.0
        assert 1.5 <= hours <= 3.0
        assert 0.8 <= level <= 1.6
        inside = np.mod(spiky.hour_of_day - start, 24.0) < hours
        assert abs(int(inside.sum()) - 24.0 * hours) <= 2  # two days of 5-min samples
        np.testing.assert_array_equal(
            spiky.price_eur_per_kwh[~inside], plain.price_eur_per_kwh[~inside]
        )
        assert np.all(spiky.price_eur_per_kwh[inside] >= level - 1e-12)
        starts.append(start)
        np.testing.assert_array_equal(
            spiky.price_eur_per_kwh, _series(event, seed=seed, n=576).price_eur_per_kwh
        )
    assert len(set(starts)) == len(starts)  # a new event every episode
    assert make_scenario(base).price_event_start_h is None  # off by default
    for bad, match in (
        ({"price_event_start_h": [20.0, 25.0]}, "price_event_start_h"),
        ({"price_event_start_h": [18.0, 17.0]}, "price_event_start_h"),
        ({"price_event_duration_h": [0.0, 2.0]}, "price_event_duration_h"),
        ({"price_event_price_eur_per_kwh": [-1.0, 1.0]}, "price_event_price"),
    ):
        with pytest.raises(ValueError, match=match):
            make_scenario({**base, **bad})
