"""Edge state estimation: the EKF on a synthetic circuit, SoH recovery, bad input, the twin."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pulsebms.edge_runtime.ecm import EcmCell, default_table_path
from pulsebms.edge_runtime.estimation import EstimatorSettings, FleetEstimator
from pulsebms.hil.noise import SensorNoise
from pulsebms.safety.state import PackRatings

DT_S = 10.0


def _ratings(chemistry: str, capacity_ah: float, n: int = 1) -> PackRatings:
    return PackRatings(
        chemistry=(chemistry,) * n,
        series=np.full(n, 14, dtype=np.int64),
        parallel=np.full(n, 4, dtype=np.int64),
        cell_capacity_ah=np.full(n, capacity_ah),
        rated_power_w=np.full(n, 5000.0),
    )


def _synthetic_cycles(
    cell: EcmCell,
    *,
    soh: float,
    resistance_factor: float,
    soc0: float,
    hours: float,
    seed: int,
    voltage_noise_v: float = 0.005,
) -> tuple[list[tuple[float, float, float, float]], np.ndarray]:
    """Samples (t, pack current, cell voltage, temperature) of a 1-RC cell and its true SoC.

    The truth is the estimator's own circuit (per-cell, parallel 4), cycled 10–90 % SoC at
    random 0.2–1 C discharge / up to C/2 charge levels that change every minute.
    """
    rng = np.random.default_rng(seed)
    q_ah = cell.capacity_ah * soh
    soc, v_rc, direction, level = soc0, 0.0, 1.0, 0.0
    samples = [(0.0, 0.0, float(cell.ocv_v(soc)), 25.0)]
    truth = [soc]
    for k in range(int(hours * 3600 / DT_S)):
        if k % 6 == 0:
            level = rng.uniform(0.2, 1.0) * (rng.uniform() > 0.1)
        if direction > 0 and soc < 0.1:
            direction = -1.0
        elif direction < 0 and soc > 0.9:
            direction = 1.0
        i = direction * level * (1.0 if direction > 0 else 0.5) * cell.capacity_ah
        _r0, r1, tau = cell.circuit(soc, 25.0)
        a = math.exp(-DT_S / tau)
        soc -= i * DT_S / 3600.0 / q_ah
        v_rc = a * v_rc + resistance_factor * r1 * (1 - a) * i
        r0_end, _, _ = cell.circuit(soc, 25.0)
        v = float(cell.ocv_v(soc)) - v_rc - resistance_factor * r0_end * i
        v += rng.uniform(-voltage_noise_v, voltage_noise_v)
        samples.append(((k + 1) * DT_S, 4.0 * i, v, 25.0))
        truth.append(soc)
    return samples, np.asarray(truth)


@pytest.mark.parametrize("chemistry", ["NMC", "LCO", "LFP"])
def test_ekf_converges_from_a_wrong_soc_on_a_synthetic_circuit(chemistry: str) -> None:
    cell = EcmCell.load(chemistry)
    samples, truth = _synthetic_cycles(
        cell, soh=1.0, resistance_factor=1.0, soc0=0.6, hours=5.0, seed=3
    )
    est = FleetEstimator(_ratings(chemistry, cell.capacity_ah), initial_soc=np.array([0.95]))
    errors = []
    for (t, i, v, temp), soc in zip(samples, truth, strict=True):
        est.update(0, t, i, v, temp)
        errors.append(est.soc[0] - soc)
    err = np.abs(np.asarray(errors))
    assert err[0] > 0.3  # it did start wrong
    late = err[len(err) // 2 :]
    assert float(np.sqrt(np.mean(late**2))) < 0.01, chemistry
    assert float(np.max(late)) < 0.03
    assert est.rejected[0] == 0


def test_soh_and_resistance_estimators_recover_a_known_capacity_and_resistance() -> None:
    cell = EcmCell.load("NMC")
    samples, _ = _synthetic_cycles(
        cell, soh=0.85, resistance_factor=1.3, soc0=0.5, hours=10.0, seed=5
    )
    est = FleetEstimator(_ratings("NMC", cell.capacity_ah), initial_soc=np.array([0.3]))
    for t, i, v, temp in samples:
        est.update(0, t, i, v, temp)
    assert abs(est.soh[0] - 0.85) < 0.015
    assert est.soh_std[0] < 0.02
    r_true = 1.3 * cell.circuit(0.5, 25.0)[0] * 14 / 4
    assert abs(est.resistance_ohm[0] / r_true - 1.0) < 0.05
    # A capacity the estimator had no reason to change stays at its prior.
    assert abs(FleetEstimator(_ratings("NMC", cell.capacity_ah)).soh[0] - 1.0) < 1e-12


def test_soc_from_the_first_voltage_when_no_initial_soc_is_given() -> None:
    cell = EcmCell.load("NMC")
    est = FleetEstimator(_ratings("NMC", cell.capacity_ah))
    assert np.isnan(est.soc[0])
    est.update(0, 0.0, 0.0, float(cell.ocv_v(0.7)), 25.0)
    assert abs(est.soc[0] - 0.7) < 1e-6
    assert est.soc_std[0] > 0.1


def test_bad_input_never_raises_and_is_counted() -> None:
    cell = EcmCell.load("LFP")
    est = FleetEstimator(_ratings("LFP", cell.capacity_ah, n=2), initial_soc=np.array([0.5, 0.5]))
    est.update(0, 0.0, 1.0, 3.25, 25.0)
    est.update(0, 10.0, 1.0, 3.25, 25.0)
    before = est.soc.copy()
    bad = [
        (float("nan"), 3.25, 25.0, 20.0),  # current
        (1e6, 3.25, 25.0, 30.0),  # implausible current
        (1.0, 3.25, 25.0, 5.0),  # time going back
        (1.0, 3.25, 25.0, float("inf")),  # time
    ]
    for i, v, temp, t in bad:
        est.update(0, t, i, v, temp)
    assert np.array_equal(est.soc, before, equal_nan=True)
    assert est.rejected[0] == 4
    # A bad voltage keeps charge counting going (over the whole gap since the last
    # accepted sample); a bad temperature falls back to the last good one.
    est.update(0, 20.0, 2.0, float("nan"), 25.0)
    expected = before[0] - (2.0 / 4) * 10.0 / 3600.0 / cell.capacity_ah
    assert est.soc[0] == pytest.approx(expected, rel=1e-9)
    est.update(0, 30.0, 2.0, 3.25, float("nan"))
    est.update(0, 40.0, 2.0, -7.0, 400.0)
    assert est.rejected[0] == 7
    assert est.updates[0] == 5
    assert np.all(np.isfinite(est.soc))
    assert np.all(np.isfinite(est.soh))
    assert est.soc[1] == 0.5
    assert est.updates[1] == 0
    with pytest.raises(IndexError):
        est.update(2, 50.0, 0.0, 3.25, 25.0)


def test_constructor_rejects_unknown_chemistry_and_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="no circuit table"):
        FleetEstimator(_ratings("NaIon", 1.0))
    with pytest.raises(ValueError, match="initial_soc"):
        FleetEstimator(_ratings("NMC", 5.0, n=2), initial_soc=np.array([0.5]))


def test_disagreement_flags_implausible_reported_values() -> None:
    cell = EcmCell.load("NMC")
    settings = EstimatorSettings(unknown_soc_std=0.02)
    est = FleetEstimator(_ratings("NMC", cell.capacity_ah, n=3), settings=settings)
    est.update(0, 0.0, 0.0, float(cell.ocv_v(0.3)), 25.0)
    est.update(1, 0.0, 0.0, float(cell.ocv_v(0.3)), 25.0)
    reported_soc = np.array([0.9, 0.3, 0.9])  # pack 2 has no estimate yet
    flags = est.disagreement(reported_soc, np.array([1.0, 1.0, 1.0]))
    assert flags.tolist() == [True, False, False]
    assert est.disagreement(np.array([0.3, 0.3, 0.3]), np.array([1.0, 0.5, 1.0])).tolist() == [
        False,
        True,
        False,
    ]
    assert est.disagreement(np.array([np.nan, 0.3, 0.3]), np.ones(3)).tolist() == [
        True,
        False,
        False,
    ]


def test_sensor_noise_is_bounded_and_seeded() -> None:
    noise = SensorNoise(3, seed=7)
    again = SensorNoise(3, seed=7)
    other = SensorNoise(3, seed=8)
    values = {"cell_voltage_v": 3.7, "current_a": 50.0, "temperature_c": 25.0, "soc": 0.4}
    a = [noise.apply(k % 3, values) for k in range(200)]
    b = [again.apply(k % 3, values) for k in range(200)]
    assert a == b
    assert a != [other.apply(k % 3, values) for k in range(200)]
    volts = np.array([r["cell_voltage_v"] for r in a])
    assert np.all(np.abs(volts - 3.7) <= 0.010 + 1e-12)
    assert np.std(volts) > 0.003
    amps = np.array([r["current_a"] for r in a])
    assert np.all(np.abs(amps - 50.0) <= 50.0 * 0.005 + 0.1 + 0.1 + 1e-9)
    assert np.all(np.abs(noise.current_gain - 1.0) <= 0.005)
    assert all(r["soc"] == 0.4 for r in a)
    with pytest.raises(ValueError, match="voltage_noise_v"):
        SensorNoise(1, voltage_noise_v=-1.0)


def test_shipped_tables_are_consistent() -> None:
    for chem in ("LFP", "NMC", "LCO"):
        raw = json.loads(default_table_path(chem).read_text(encoding="utf-8"))
        cell = EcmCell.load(chem)
        assert raw["chemistry"] == chem
        assert cell.ocv_v(0.0) == pytest.approx(raw["ocv_v"][0])
        assert np.all(np.diff(cell.ocv_table_v) >= -1e-9)
        assert cell.voltage_min_v < float(cell.ocv_v(0.5)) < cell.voltage_max_v


def test_model_error_table_is_interpolated_and_validated() -> None:
    lfp = EcmCell.load("LFP")
    # Large where the circuit misses the SPM's diffusion (low SoC), small above 50 %.
    assert lfp.model_error_ohm_at(0.0) == pytest.approx(0.6)
    assert lfp.model_error_ohm_at(0.125) == pytest.approx(0.5)
    assert lfp.model_error_ohm_at(0.9) == pytest.approx(0.01)
    assert EcmCell.load("NMC").model_error_ohm_at(0.1) == 0.0
    with pytest.raises(ValueError, match="model error"):
        EcmCell(
            **{
                **{k: getattr(lfp, k) for k in ("chemistry", "capacity_ah", "voltage_min_v")},
                **{k: getattr(lfp, k) for k in ("voltage_max_v", "soc_grid", "ocv_table_v")},
                **{k: getattr(lfp, k) for k in ("circuit_soc", "circuit_temperature_c")},
                **{k: getattr(lfp, k) for k in ("r0_ohm", "r1_ohm", "tau_s")},
                "model_error_soc": np.array([0.5, 0.2]),
                "model_error_ohm": np.array([0.1, 0.1]),
            }
        )


def test_rate_factor_and_asymmetry_tables_are_interpolated_and_validated() -> None:
    nmc, lco = EcmCell.load("NMC"), EcmCell.load("LCO")
    # Butler-Volmer: R0 per ampere falls with the current; 1 at the fit's C/2.
    assert nmc.rate_factor(0.5, 25.0) == pytest.approx(1.0, abs=0.02)
    assert nmc.rate_factor(0.1, 20.0) > 1.05 > 0.95 > nmc.rate_factor(1.0, 20.0)
    assert nmc.rate_factor(5.0, 20.0) == nmc.rate_factor(1.0, 20.0)  # clamped
    low = nmc.rate_factor(0.3, 20.0)
    high = nmc.rate_factor(0.3, 30.0)
    assert min(low, high) <= nmc.rate_factor(0.3, 25.0) <= max(low, high)
    # LFP and NMC carry the charge/discharge asymmetry, LCO none (it made LCO worse).
    assert lco.asymmetry_ohm.size == 0
    assert lco.circuit_and_asymmetry(0.5, 25.0)[3] == 0.0
    lfp = EcmCell.load("LFP")
    assert lfp.circuit_and_asymmetry(0.1, 25.0)[3] < -0.05  # diffusion at low SoC
    assert lfp.circuit_and_asymmetry(0.5, 25.0)[:3] == lfp.circuit(0.5, 25.0)
    base = {k: getattr(nmc, k) for k in ("chemistry", "capacity_ah", "voltage_min_v")}
    base |= {k: getattr(nmc, k) for k in ("voltage_max_v", "soc_grid", "ocv_table_v")}
    base |= {k: getattr(nmc, k) for k in ("circuit_soc", "circuit_temperature_c")}
    base |= {k: getattr(nmc, k) for k in ("r0_ohm", "r1_ohm", "tau_s")}
    plain = EcmCell(**base)
    assert plain.rate_factor(0.1, 0.0) == 1.0
    with pytest.raises(ValueError, match="r0_rate_factor"):
        EcmCell(**base, rate_c=nmc.rate_c, r0_rate_factor=-nmc.r0_rate_factor)
    with pytest.raises(ValueError, match="asymmetry_ohm"):
        EcmCell(**base, asymmetry_ohm=np.zeros((2, 2)))


@pytest.mark.slow
def test_generator_reproduces_the_shipped_table() -> None:
    pytest.importorskip("pybamm")
    from pulsebms.envs.estimation_tables import model_error_dict, table_dict

    fresh = table_dict("NMC")
    shipped = json.loads(default_table_path("NMC").read_text(encoding="utf-8"))
    keys = ("ocv_v", "r0_ohm", "r1_ohm", "tau_s", "capacity_ah", "asymmetry_ohm", "rate_c")
    for key in (*keys, "r0_rate_factor"):
        np.testing.assert_allclose(fresh[key], shipped[key], rtol=1e-6, atol=1e-9)
    for chem in ("LFP", "NMC", "LCO"):
        raw = json.loads(default_table_path(chem).read_text(encoding="utf-8"))
        for key, value in model_error_dict(chem).items():
            assert raw[key] == value


@pytest.mark.slow
def test_accuracy_against_the_physics_twin_with_a_wrong_initial_soc() -> None:
    """Two cycles on the PyBaMM twin (about 10–20 s here): NMC and LCO meet the targets.

    Seeds 0–2 over two cycles, with the R0 rate factor: SoC RMSE 0.31–0.32 % (NMC), 0.18–0.30 %
    (LCO); SoH error ≤ 1.0 (NMC), 1.2–2.0 points (LCO; seed 0 here: 1.2). LFP meets the SoH
    target on seed 0 but not the SoC one (SoC RMSE 1.8–2.9 % over two cycles, 1.3–2.0 % over
    four): its flat OCV leaves only the ends of the window to correct the SoC, and at the low
    end the SPM's solid diffusion is what a one-RC circuit cannot follow (the table's model
    error makes the filter discount it). Before that table: ~6 %, SoH 5.7 %.
    """
    pytest.importorskip("pybamm")
    from pulsebms.benchmarks.estimation import evaluate

    rows = {r.chemistry: r for r in evaluate(fidelity="physics", cycles=2, seed=0)}
    for chem in ("NMC", "LCO"):
        row = rows[chem]
        assert row.cycles == 2, row
        assert not row.faulted, row
        assert row.soc_rmse_pct <= 0.6, row
        assert row.soh_error_pct <= 2.0, row
        assert abs(row.resistance_error_pct) <= 10.0, row
    lfp = rows["LFP"]
    assert lfp.cycles == 2
    assert not lfp.faulted
    assert lfp.soc_rmse_pct <= 3.5, lfp
    assert lfp.soh_error_pct <= 2.0, lfp


@pytest.mark.slow
def test_hil_simulator_noise_hook_changes_only_the_sensor_readings() -> None:
    """``HilSimulator(noise=...)``: telemetry on the bus carries the noisy readings.

    About 20 s: the twin's circuit tables are derived from PyBaMM at first use.
    """
    can = pytest.importorskip("can")
    gym = pytest.importorskip("gymnasium")
    from pulsebms.edge_runtime.codec import CanCodec, TelemetryFrame
    from pulsebms.hil.simulator import HilSimulator

    def frames(noise: SensorNoise | None) -> dict[int, dict[str, float]]:
        env = gym.make("PulseBMS/FleetSmall-v0")
        with (
            can.Bus(interface="virtual", channel="est-noise") as tx,
            can.Bus(interface="virtual", channel="est-noise") as rx,
        ):
            sim = HilSimulator(env, tx, CanCodec(3), noise=noise)
            sim.reset(seed=0)
            sim.send_telemetry(0)
            out: dict[int, dict[str, float]] = {}
            codec = CanCodec(3)
            while (msg := rx.recv(timeout=0.05)) is not None:
                frame = codec.decode(msg)
                if isinstance(frame, TelemetryFrame):
                    out.setdefault(frame.pack, {}).update(frame.values)
        env.close()
        return out

    exact = frames(None)
    noisy = frames(SensorNoise(3, seed=0, voltage_offset_v=0.02))
    assert set(exact) == set(noisy) == {0, 1, 2}
    for pack in range(3):
        dv = noisy[pack]["cell_voltage_v"] - exact[pack]["cell_voltage_v"]
        assert 0.0 < abs(dv) <= 0.031
        assert noisy[pack]["soc"] == exact[pack]["soc"]
