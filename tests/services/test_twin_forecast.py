"""Twin service forecast, mirror and back-test."""

from __future__ import annotations

import numpy as np
import pytest

from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin import make_twin
from pulsebms.services.twin.backtest import backtest
from pulsebms.services.twin.duty import DEFAULT_DUTY, Duty
from pulsebms.services.twin.forecast import forecast_soh, remaining_useful_life_days
from pulsebms.services.twin.recording import record_telemetry
from pulsebms.services.twin.sync import FleetMirror


def test_forecast_is_monotone_and_its_rul_reads_the_trajectory() -> None:
    fc = forecast_soh(["NMC", "LFP", "LCO"], np.array([0.95, 0.9, 0.85]), horizon_days=1500.0,
                      step_days=30.0)  # fmt: skip
    assert fc.soh.shape == (3, fc.t_days.size)
    np.testing.assert_array_equal(fc.soh[:, 0], [0.95, 0.9, 0.85])
    assert np.all(np.diff(fc.soh, axis=1) <= 0.0)
    for k in range(3):
        if np.isfinite(fc.rul_days[k]):
            assert np.interp(fc.rul_days[k], fc.t_days, fc.soh[k]) == pytest.approx(0.8, abs=1e-9)
        else:
            assert fc.soh[k, -1] > 0.8
    assert fc.duty == DEFAULT_DUTY


def test_forecast_responds_to_stress_and_uncertainty() -> None:
    base = forecast_soh(["NMC"], np.array([0.95]), horizon_days=730.0, step_days=7.0)
    hot = forecast_soh(["NMC"], np.array([0.95]), horizon_days=730.0, step_days=7.0,
                       temperature_c=np.array([40.0]))  # fmt: skip
    busy = forecast_soh(["NMC"], np.array([0.95]), horizon_days=730.0, step_days=7.0,
                        duty=Duty(cycles_per_day=3.0))  # fmt: skip
    idle = forecast_soh(["NMC"], np.array([0.95]), horizon_days=730.0, step_days=7.0,
                        duty=Duty(cycles_per_day=0.0))  # fmt: skip
    fade = {k: 0.95 - f.soh[0, -1] for k, f in
            {"base": base, "hot": hot, "busy": busy, "idle": idle}.items()}  # fmt: skip
    assert fade["idle"] < fade["base"] < fade["busy"]
    assert fade["base"] < fade["hot"]
    uncertain = forecast_soh(["NMC"], np.array([0.95]), soh_std=np.array([0.01]),
                             horizon_days=730.0, step_days=7.0)  # fmt: skip
    assert np.all(uncertain.soh_std >= 0.01 - 1e-12)
    np.testing.assert_allclose(uncertain.soh, base.soh)
    # Daily blocks and weekly blocks agree (the laws advance by equivalent time).
    daily = forecast_soh(["NMC"], np.array([0.95]), horizon_days=728.0, step_days=1.0)
    assert daily.soh[0, -1] == pytest.approx(base.soh[0, 104], abs=2e-4)


def test_rul_edge_cases() -> None:
    t = np.array([0.0, 1.0])
    got = remaining_useful_life_days(t, np.array([[0.7, 0.6], [0.9, 0.9]]), 0.8)
    assert got[0] == 0.0
    assert np.isnan(got[1])


def test_duty_validation_and_profile() -> None:
    with pytest.raises(ValueError, match="mean_soc"):
        Duty(depth_of_discharge=0.9, mean_soc=0.3)
    with pytest.raises(ValueError, match="24 h"):
        Duty(cycles_per_day=20.0, c_rate=0.5)
    duty = Duty(cycles_per_day=2.0, depth_of_discharge=0.5, c_rate=0.5, pulse_c_rate=0.1)
    current = duty.current_profile(np.array([10.0, 20.0]), 60.0, 86400.0, seed=0)
    assert current.shape == (1440, 2)
    # Net charge over a day: zero (cycles return to the top, pulses come in ± pairs).
    np.testing.assert_allclose(current.sum(axis=0) * 60.0, 0.0, atol=1e-6)
    # Without pulses, each day's discharge moves cycles × DoD × capacity.
    plain = Duty(cycles_per_day=2.0, depth_of_discharge=0.5, c_rate=0.5)
    current = plain.current_profile(np.array([10.0, 20.0]), 60.0, 86400.0)
    discharged_ah = np.clip(current, 0.0, None).sum(axis=0) * 60.0 / 3600.0
    np.testing.assert_allclose(discharged_ah, [10.0, 20.0])


def test_mirror_follows_a_fleet_and_flags_a_wrong_model() -> None:
    """The mirror predicts within a few mV; told the wrong SoH it predicts worse.

    Synced to exact telemetry of the same circuit; the error is tracked per pack.
    """
    specs = [PackSpec("NMC", initial_soc=0.7, initial_soh=0.9), PackSpec("LFP", initial_soc=0.7)]
    truth = make_twin(specs, "ecm", degradation="none")
    duty = Duty(cycles_per_day=6.0, depth_of_discharge=0.5, c_rate=0.5, mean_soc=0.45)
    current = duty.current_profile(np.array([18.5, 9.2]), 10.0, 2 * 3600.0)
    rec = record_telemetry(truth, current, 10.0, ["a", "b"])
    mirror = FleetMirror({"a": PackSpec("NMC"), "b": PackSpec("LFP")}, resync_period_s=600.0)
    wrong = FleetMirror({"a": PackSpec("NMC"), "b": PackSpec("LFP")}, resync_period_s=600.0)
    wrong.calibrated_soh[:] = [1.0, 0.7]  # b is fresh; this mirror thinks it is worn
    for t in sorted({r[1] for r in rec.rows}):
        rows = [r for r in rec.rows if r[1] == t]
        for m in (mirror, wrong):
            m.observe(t, [r[0] for r in rows], soc=[r[2] for r in rows], soh=[r[3] for r in rows],
                      current_a=[r[4] for r in rows], voltage_v=[r[5] for r in rows],
                      temperature_c=[r[6] for r in rows])  # fmt: skip
    assert mirror.synchronisations == 13  # at 0, 600, …, 7200 s
    # Two devices on their own clocks: pack b's reports come 3 s "late", after pack a's.
    split = FleetMirror({"a": PackSpec("NMC"), "b": PackSpec("LFP")}, resync_period_s=600.0)
    for t in sorted({r[1] for r in rec.rows}):
        for r in (r for r in rec.rows if r[1] == t):
            stamp = t - 3.0 if r[0] == "b" and t > 0 else t
            split.observe(stamp, [r[0]], soc=[r[2]], soh=[r[3]], current_a=[r[4]],
                          voltage_v=[r[5]], temperature_c=[r[6]])  # fmt: skip
    assert np.all(split.errors > 600)  # b is compared too, not dropped as old
    assert np.all(split.voltage_rmse_v / split.series < 0.01)
    assert np.all(mirror.errors > 600)
    cell_rmse = mirror.voltage_rmse_v / mirror.series
    assert np.all(cell_rmse < 0.005)
    wrong_rmse = wrong.voltage_rmse_v / wrong.series
    assert wrong_rmse[1] > 2.0 * cell_rmse[1]
    # Unknown packs and stale reports do not disturb it.
    n = mirror.errors.copy()
    mirror.observe(0.0, ["zz"], soc=[0.5], soh=[1.0], current_a=[1.0], voltage_v=[50.0],
                   temperature_c=[25.0])  # fmt: skip
    mirror.observe(1.0, ["a"], soc=[0.5], soh=[1.0], current_a=[1.0], voltage_v=[50.0],
                   temperature_c=[25.0])  # fmt: skip
    np.testing.assert_array_equal(mirror.errors, n)


@pytest.mark.slow
def test_backtest_over_an_accelerated_fortnight() -> None:
    """Calibrated, forecast, compared with the truth twin day by day (~10 s)."""
    packs = [PackSpec("NMC", initial_soc=0.8, initial_soh=0.93),
             PackSpec("LFP", initial_soc=0.8, initial_soh=0.88)]  # fmt: skip
    result = backtest(packs, days=14.0, acceleration=6.0, dt_s=120.0, calibration_h=12.0)
    np.testing.assert_allclose(result.calibration.soh, result.true_initial_soh, atol=0.006)
    assert np.all(result.soh_rmse < 0.006)
    true_fade = result.truth_soh[:, 0] - result.truth_soh[:, -1]
    assert np.all(true_fade > 0.005)  # the fortnight shows fade
    assert np.all(np.abs(result.fade_error) < 0.1)
