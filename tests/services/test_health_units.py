"""Health analytics building blocks on small synthetic inputs (no twin, no training).

Cycle summaries, the sensor model, fault injection, features, the forecast baselines,
anomaly window features and the maintenance queue: each checked against values worked out
by hand or against the physical symptom it is meant to catch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pulsebms.services.health.anomaly import (
    WINDOW_FEATURES,
    AnomalyDetector,
    ThermalModel,
    window_features,
)
from pulsebms.services.health.cycles import CycleTable, concat_tables, summarise_cycles
from pulsebms.services.health.dataset import split_packs
from pulsebms.services.health.faults import (
    FAULT_KINDS,
    FaultInjector,
    InjectedFault,
    fault_code,
    random_fault_plan,
)
from pulsebms.services.health.features import FEATURE_NAMES, pack_features, rolling
from pulsebms.services.health.forecast import fade_law_forecast, linear_extrapolation
from pulsebms.services.health.priority import (
    PackHealth,
    QueueEntry,
    compare_with_oracle,
    maintenance_queue,
    priority_score,
    remaining_useful_life_days,
)
from pulsebms.services.health.score import HealthScoreModel, LinearHealthBaseline
from pulsebms.services.health.sensors import SensorModel


def _cycling(
    n_cycles: int, *, capacity_ah: float = 20.0, r_ohm: float = 0.05, dt_s: float = 60.0
) -> tuple[np.ndarray, ...]:
    """Ideal 0.5 C cycles from 90 % to 30 % SoC with rests: t, i, v, temperature, soc."""
    t, i, soc_list = [], [], []
    soc, now = 0.9, 0.0
    current = 0.5 * capacity_ah
    for _ in range(n_cycles):
        for phase, amps in (("rest", 0.0), ("dis", current), ("rest", 0.0), ("chg", -current)):
            steps = 10 if phase == "rest" else round(0.6 / 0.5 * 3600.0 / dt_s)
            for _ in range(steps):
                now += dt_s
                soc -= amps * dt_s / 3600.0 / capacity_ah
                t.append(now)
                i.append(amps)
                soc_list.append(soc)
    i_arr = np.array(i)
    soc_arr = np.array(soc_list)
    v = 3.0 + soc_arr - r_ohm * i_arr
    return np.array(t), i_arr, v, np.full(len(t), 25.0), soc_arr


# ---------------------------------------------------------------- cycles


def test_cycle_summaries_recover_capacity_resistance_and_energy() -> None:
    t, i, v, temp, soc = _cycling(3)
    table, tail = summarise_cycles(t, i, v, temp, soc)
    # The last cycle has no following discharge: it stays in the tail.
    assert len(table) == 2
    assert tail == int(np.flatnonzero(np.diff(np.r_[0, (i > 0).astype(int)]) == 1)[-1])
    np.testing.assert_allclose(table.discharge_ah, 0.6 * 20.0, rtol=1e-9)
    np.testing.assert_allclose(table.charge_ah, 0.6 * 20.0, rtol=1e-9)
    np.testing.assert_allclose(table.capacity_ah, 20.0, rtol=1e-9)
    # ΔV/ΔI over one 60-s sample: R plus the OCV drift of that minute (slope 1 V per SoC).
    drift = 1.0 * (10.0 * 60.0 / 3600.0 / 20.0) / 10.0
    np.testing.assert_allclose(table.resistance_ohm, 0.05 + drift, rtol=1e-9)
    assert np.all(table.discharge_wh < table.charge_wh)  # resistive loss
    full, tail_full = summarise_cycles(t, i, v, temp, soc, final=True)
    assert len(full) == 3
    assert tail_full == t.size


def test_cycle_summaries_handle_missing_soc_gaps_and_bad_input() -> None:
    t, i, v, temp, soc = _cycling(3)
    soc_missing = soc.copy()
    soc_missing[: t.size // 2] = np.nan
    table, _ = summarise_cycles(t, i, v, temp, soc_missing)
    assert math.isnan(table.capacity_ah[0])
    assert np.isfinite(table.discharge_ah[0])
    # A 2-hour hole with current flowing is not integrated, and is counted.
    t_gap = t.copy()
    dis = np.flatnonzero(i > 0)[5]
    t_gap[dis:] += 7200.0
    gapped, _ = summarise_cycles(t_gap, i, v, temp, soc)
    assert gapped.gaps[0] == 1.0
    assert gapped.discharge_ah[0] == pytest.approx(table.discharge_ah[0] - 10.0 * 60 / 3600)
    with pytest.raises(ValueError, match="increasing"):
        summarise_cycles(t[::-1].copy(), i, v, temp, soc)
    with pytest.raises(ValueError, match="finite"):
        summarise_cycles(t, np.where(i > 0, np.nan, i), v, temp, soc)
    empty, tail = summarise_cycles(t[:5], np.zeros(5), v[:5], temp[:5], soc[:5])
    assert len(empty) == 0
    assert tail == 0


def test_concat_tables_renumbers_and_selects() -> None:
    t, i, v, temp, soc = _cycling(4)
    table, _ = summarise_cycles(t, i, v, temp, soc, first_cycle=10)
    assert table.cycle.tolist() == [10, 11, 12]
    joined = concat_tables([table.select(slice(0, 1)), table.select(slice(1, 3))])
    assert joined.cycle.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(joined.discharge_ah, table.discharge_ah)
    assert len(concat_tables([])) == 0
    with pytest.raises(KeyError, match="no cycle column"):
        table.column("nope")


# ---------------------------------------------------------------- sensors and faults


def test_sensor_model_is_seeded_quantised_and_bounded() -> None:
    args = (np.array([10.0, -5.0]), np.array([3.3, 3.7]), np.array([25.0, 30.0]))
    kw = {"series": np.array([16, 14])}
    a = SensorModel(["LFP", "NMC"], seed=5).read(*args, np.array([0.5, 0.5]), np.ones(2), **kw)
    b = SensorModel(["LFP", "NMC"], seed=5).read(*args, np.array([0.5, 0.5]), np.ones(2), **kw)
    np.testing.assert_array_equal(a.voltage_v, b.voltage_v)
    np.testing.assert_array_equal(a.soc, b.soc)
    assert np.all(np.abs(a.soc - 0.5) <= np.array([0.02, 0.01]) + 1e-3)
    np.testing.assert_allclose(a.temperature_c * 2, np.round(a.temperature_c * 2))
    np.testing.assert_allclose(a.current_a * 10, np.round(a.current_a * 10), atol=1e-9)
    with pytest.raises(ValueError, match="no SoC error bound"):
        SensorModel(["NCA"])
    with pytest.raises(ValueError, match="voltage_noise_v"):
        SensorModel(["LFP"], voltage_noise_v=-1.0)


def test_fault_injector_acts_on_inputs_and_readings() -> None:
    plan = (
        InjectedFault(0, "internal_short", 10.0, severity=0.05),
        InjectedFault(1, "abnormal_heating", 10.0, end_s=20.0, severity=12.0),
        InjectedFault(2, "stuck_sensor", 10.0, signal="voltage_v"),
    )
    inj = FaultInjector(plan, nominal_capacity_ah=np.array([20.0, 20.0, 20.0]))
    np.testing.assert_array_equal(inj.leak_current_a(15.0), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(inj.ambient_offset_c(15.0), [0.0, 12.0, 0.0])
    np.testing.assert_array_equal(inj.ambient_offset_c(25.0), [0.0, 0.0, 0.0])
    assert inj.labels(5.0).tolist() == [0, 0, 0]
    assert inj.labels(15.0).tolist() == [2, 3, 1]
    sensors = SensorModel(["NMC"] * 3, seed=0)
    first = inj.apply_readings(
        15.0,
        sensors.read(
            np.zeros(3),
            np.full(3, 3.7),
            np.full(3, 25.0),
            np.full(3, 0.5),
            np.ones(3),
            series=np.full(3, 14),
        ),
    )
    later = inj.apply_readings(
        16.0,
        sensors.read(
            np.zeros(3),
            np.full(3, 3.9),
            np.full(3, 25.0),
            np.full(3, 0.5),
            np.ones(3),
            series=np.full(3, 14),
        ),
    )
    assert later.voltage_v[2] == first.voltage_v[2]  # frozen
    assert later.voltage_v[0] != first.voltage_v[0]  # live
    with pytest.raises(ValueError, match="out of range"):
        FaultInjector(plan, nominal_capacity_ah=np.array([1.0]))
    with pytest.raises(ValueError, match="fault kind"):
        InjectedFault(0, "fire", 0.0)
    with pytest.raises(ValueError, match="signal"):
        InjectedFault(0, "stuck_sensor", 0.0, signal="soc")
    assert [fault_code(k) for k in FAULT_KINDS] == [1, 2, 3]


def test_random_fault_plan_is_seeded_and_covers_every_kind() -> None:
    a = random_fault_plan(12, 100.0, 1000.0, fraction=0.5, seed=4)
    assert a == random_fault_plan(12, 100.0, 1000.0, fraction=0.5, seed=4)
    assert len(a) == 6
    assert {f.kind for f in a} == set(FAULT_KINDS)
    assert all(100.0 <= f.start_s < 100.0 + 600.0 + 1e-9 for f in a)
    assert random_fault_plan(12, 0.0, 1.0, fraction=0.0) == ()
    with pytest.raises(ValueError, match="fraction"):
        random_fault_plan(3, 0.0, 1.0, fraction=1.5)


# ---------------------------------------------------------------- features, split, score


def test_features_use_no_future_and_track_fade() -> None:
    t, i, v, temp, soc = _cycling(12)
    table, _ = summarise_cycles(t, i, v, temp, soc)
    # Fade the capacity estimates by hand: 1 % per cycle.
    faded = CycleTable(
        **{
            **{f: getattr(table, f) for f in table.__dataclass_fields__},
            "capacity_ah": table.capacity_ah * (1.0 - 0.01 * np.arange(len(table))),
        }
    )
    x = pack_features(faded, nominal_capacity_ah=20.0, chemistry="LFP", window=3)
    assert x.shape == (len(table), len(FEATURE_NAMES))
    cap = x[:, FEATURE_NAMES.index("capacity_ratio")]
    assert np.all(np.diff(cap) < 0)
    for k in (3, 7):
        np.testing.assert_array_equal(
            pack_features(
                faded.select(slice(0, k + 1)), nominal_capacity_ah=20.0, chemistry="LFP", window=3
            )[-1],
            x[k],
        )
    assert x[0, FEATURE_NAMES.index("chem_LFP")] == 1.0
    assert x[0, FEATURE_NAMES.index("resistance_ratio")] == pytest.approx(1.0)
    assert x[-1, FEATURE_NAMES.index("throughput_efc")] == pytest.approx(0.6 * len(table))
    np.testing.assert_array_equal(rolling(np.array([np.nan, np.nan]), 2), [np.nan, np.nan])
    with pytest.raises(ValueError, match="nominal_capacity_ah"):
        pack_features(table, nominal_capacity_ah=0.0, chemistry="LFP")


def test_split_is_by_pack_stratified_and_seeded() -> None:
    chems = ["LFP", "NMC", "LCO"] * 8
    train, test = split_packs(chems, test_fraction=0.25, seed=3)
    assert sorted(train + test) == list(range(24))
    assert not set(train) & set(test)
    assert sorted(chems[k] for k in test) == ["LCO", "LCO", "LFP", "LFP", "NMC", "NMC"]
    assert (train, test) == split_packs(chems, test_fraction=0.25, seed=3)
    assert (train, test) != split_packs(chems, test_fraction=0.25, seed=4)


def test_gradient_boosting_beats_linear_on_a_nonlinear_fade() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(600, 2))
    x[rng.uniform(size=x.shape) < 0.05] = np.nan  # missing estimates
    y = 1.0 - 0.3 * np.nan_to_num(x[:, 0], nan=0.5) ** 3 + 0.05 * np.sin(6 * np.nan_to_num(x[:, 1]))
    gbr = HealthScoreModel(max_iter=100, min_samples_leaf=20, linear_base=False)
    gbr.fit(x[:400], y[:400])
    lin = LinearHealthBaseline().fit(x[:400], y[:400])
    err_gbr = np.sqrt(np.mean((gbr.predict(x[400:]) - y[400:]) ** 2))
    err_lin = np.sqrt(np.mean((lin.predict(x[400:]) - y[400:]) ** 2))
    assert err_gbr < 0.5 * err_lin
    assert gbr.predict(np.zeros((0, 2))).shape == (0,)


# ---------------------------------------------------------------- forecast baselines


def test_fade_law_fit_recovers_a_power_law_and_linear_extrapolates() -> None:
    efc = np.linspace(0.0, 200.0, 80)
    for z in (0.5, 0.75):
        soh = 0.98 - 0.004 * efc**z
        assert fade_law_forecast(efc, soh, 400.0) == pytest.approx(
            0.98 - 0.004 * 400.0**z, abs=1e-3
        )
    assert math.isnan(fade_law_forecast(np.array([]), np.array([]), 1.0))
    assert fade_law_forecast(np.array([1.0, 2.0]), np.array([0.9, 0.8]), 5.0) == 0.8
    flat = fade_law_forecast(efc, np.full(efc.size, 0.9), 500.0)
    assert flat == pytest.approx(0.9)  # b >= 0: no fade means no fade
    assert linear_extrapolation(np.array([1.0, 0.98, 0.96]), 5) == pytest.approx(0.86)


# ---------------------------------------------------------------- anomaly windows


def test_window_features_see_each_symptom() -> None:
    t = np.arange(0.0, 4 * 3600.0, 60.0)
    rest = np.zeros(t.size)
    noise = np.random.default_rng(0).uniform(-0.002, 0.002, t.size)
    soc = 0.6 - 0.02 * (t - t[0]) / 3600.0  # a drain of 2 %/h with no current
    v = 50.0 + 2.0 * (soc - 0.6) + np.round(noise, 3)
    f = window_features(t, rest, v, np.full(t.size, 25.0), soc)
    assert f[WINDOW_FEATURES.index("rest_soc_slope_per_h")] == pytest.approx(-0.02)
    assert f[WINDOW_FEATURES.index("rest_voltage_slope_per_h")] < 0
    assert f[WINDOW_FEATURES.index("voltage_flat_fraction")] < 0.5
    frozen = window_features(t, rest, np.full(t.size, 50.0), np.full(t.size, 25.0), soc)
    assert frozen[WINDOW_FEATURES.index("voltage_flat_fraction")] == 1.0
    # Not enough settled rest samples: no slope (NaN), not a false zero.
    busy = window_features(t, np.full(t.size, 5.0), v, np.full(t.size, 25.0), soc)
    assert math.isnan(busy[WINDOW_FEATURES.index("rest_soc_slope_per_h")])
    assert np.all(np.isnan(window_features(t[:0], rest[:0], v[:0], v[:0], soc[:0])))


def test_thermal_model_sees_hidden_heat_and_a_frozen_sensor() -> None:
    # A pack cooling towards a daily ambient (τ = 30 min), 10 A pulses heating it.
    t = np.arange(0.0, 2 * 86400.0, 60.0)
    amb = 25.0 + 5.0 * np.sin(2 * np.pi * t / 86400.0)
    i = np.where((t // 3600) % 3 == 0, 10.0, 0.0)
    temp = np.empty(t.size)
    temp[0] = 25.0
    for k in range(1, t.size):
        rate = -(temp[k - 1] - amb[k - 1]) * 2.0 + 0.05 * i[k] ** 2  # K/h
        temp[k] = temp[k - 1] + rate * 60.0 / 3600.0
    model = ThermalModel.fit(t, i, temp)
    assert model.theta[1] == pytest.approx(-2.0, rel=0.05)
    day2 = t >= 86400.0
    assert abs(model.excess_k(t[day2], i[day2], temp[day2])) < 0.2
    assert model.excess_k(t[day2], i[day2], temp[day2] + 8.0) == pytest.approx(8.0, rel=0.05)
    window = slice(int(1.2 * 1440), int(1.2 * 1440) + 120)
    live = model.hidden_change_k(t[window], i[window], np.round(temp[window] * 2) / 2)
    stuck = model.hidden_change_k(t[window], i[window], np.full(120, temp[window][0]))
    assert stuck > 1.0 > live
    assert ThermalModel.fit(t[:5], i[:5], temp[:5]).theta == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_detector_refuses_unknown_settings_and_unfitted_packs() -> None:
    with pytest.raises(ValueError, match="method"):
        AnomalyDetector(method="magic")
    with pytest.raises(ValueError, match="window_s"):
        AnomalyDetector(window_s=0.0)
    det = AnomalyDetector()
    with pytest.raises(ValueError, match="no reference window"):
        det.fit(
            {
                "p0": {
                    k: np.zeros(0)
                    for k in ("t_s", "current_a", "voltage_v", "temperature_c", "soc")
                }
            }
        )
    with pytest.raises(KeyError):
        det.score("p9", {})


# ---------------------------------------------------------------- priority


def test_queue_puts_safety_first_then_end_of_life() -> None:
    packs = [
        PackHealth("old", health_score=0.83, soh_forecast=0.80, horizon_cycles=30),
        PackHealth("new", health_score=0.99, soh_forecast=0.985, horizon_cycles=30),
        PackHealth("stuck", health_score=0.95, soh_forecast=0.94, anomalies=("stuck_sensor",)),
        PackHealth("short", health_score=0.97, soh_forecast=0.96, anomalies=("internal_short",)),
        PackHealth("heavy", health_score=0.90, soh_forecast=0.86, cycles_per_day=3.0),
    ]
    queue = maintenance_queue(packs)
    assert [e.pack_id for e in queue] == ["short", "stuck", "old", "heavy", "new"]
    assert [e.rank for e in queue] == list(range(5))
    assert "end_of_life" in queue[2].reasons
    assert queue[0].reasons == ("internal_short",)
    assert remaining_useful_life_days(0.79, 0.7, 30, 1.0) == 0.0
    assert remaining_useful_life_days(0.9, None, 30, 1.0) > 1e4
    assert remaining_useful_life_days(0.9, 0.95, 30, 1.0) > 1e4  # no fade forecast
    assert priority_score(packs[0]) > priority_score(packs[1])


def test_oracle_comparison_scores_orderings() -> None:
    oracle = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.0}
    same = [QueueEntry(r, p, 4.0 - r, 0.0) for r, p in enumerate("abcd")]
    reverse = [QueueEntry(r, p, 4.0 - r, 0.0) for r, p in enumerate("dcba")]
    good = compare_with_oracle(same, oracle, k=2)
    bad = compare_with_oracle(reverse, oracle, k=2)
    assert (good.kendall_tau, good.ndcg_at_k, good.precision_at_k) == (1.0, 1.0, 1.0)
    assert bad.kendall_tau == pytest.approx(-1.0)
    assert bad.precision_at_k == 0.0
    assert bad.ndcg_at_k < 0.5
    with pytest.raises(ValueError, match="same packs"):
        compare_with_oracle(same[:3], oracle)
