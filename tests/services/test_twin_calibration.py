"""Twin service calibration: recovers aged packs' SoH and resistance, and electrode fractions.

Truth: the equivalent-circuit twin with packs aged to SoH values the calibrator does not
know (it starts from SoH 1, resistance factor 1), recorded with ±2 mV uniform cell-voltage
noise (the HIL sensor model); for the physics fidelity, PyBaMM's own IDAKLU solve of the SPM
with active-material fractions away from the parameter set's.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import least_squares

from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin import make_twin
from pulsebms.hil.noise import SensorNoise
from pulsebms.services.store import SqliteTelemetryStore
from pulsebms.services.twin.calibration import EcmCalibrator
from pulsebms.services.twin.duty import Duty
from pulsebms.services.twin.electrode import ElectrodeCalibrator, reference_voltage
from pulsebms.services.twin.recording import record_telemetry
from pulsebms.services.twin.solver import batched_least_squares, finite_difference_jacobian
from pulsebms.services.twin.window import PackWindow

TRUE_SOH = np.array([0.91, 0.86, 0.95])
CHEMS = ("NMC", "LFP", "LCO")
DUTY = Duty(cycles_per_day=4.0, depth_of_discharge=0.6, c_rate=0.5, pulse_c_rate=0.2)


def _noise(n: int, seed: int = 1) -> SensorNoise:
    return SensorNoise(
        n, seed=seed, voltage_noise_v=0.002, current_gain_error=0.0, current_offset_a=0.0,
        current_noise_a=0.0, temperature_offset_c=0.0, temperature_noise_c=0.0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def ecm_windows() -> list[PackWindow]:
    """4 h of HIL-style telemetry (10 s) of three aged packs, through a SQLite store."""
    truth = [
        PackSpec(c, initial_soc=0.8, initial_soh=float(s))
        for c, s in zip(CHEMS, TRUE_SOH, strict=True)
    ]
    twin = make_twin(truth, "ecm", degradation="none")
    capacity = np.asarray(twin.ratings.cell_capacity_ah * twin.ratings.parallel) * TRUE_SOH
    current = DUTY.current_profile(capacity, 10.0, 4 * 3600.0, seed=0)
    ids = ["a", "b", "c"]
    rec = record_telemetry(twin, current, 10.0, ids, noise=_noise(3))
    assert rec.faulted.size == 0
    store = SqliteTelemetryStore(":memory:")
    store.write_batch(rec.rows)
    windows = [PackWindow.from_columns(store.query(i, 0.0, 1e9)) for i in ids]
    store.close()
    return windows


def test_ecm_calibration_recovers_capacity_and_resistance(ecm_windows: list[PackWindow]) -> None:
    calibrator = EcmCalibrator([PackSpec(c) for c in CHEMS])  # the service's start: nominal
    result = calibrator.calibrate(ecm_windows)
    assert result.converged.all()
    np.testing.assert_allclose(result.soh, TRUE_SOH, rtol=0.01)  # capacity within 1 %
    # The twin's aged cell has resistance R / SoH (capacity-scaled cell).
    np.testing.assert_allclose(result.resistance_factor, 1.0 / TRUE_SOH, rtol=0.02)
    # The uncertainty is honest: errors within 4 σ, σ well below the 1 % target.
    assert np.all(np.abs(result.soh - TRUE_SOH) <= 4.0 * result.soh_std + 1e-4)
    assert np.all(result.soh_std < 0.005)
    # Residual ≈ the noise: uniform ±2 mV has an RMS of 2/√3 = 1.15 mV per cell.
    series = np.array([p.series for p in calibrator.packs])
    np.testing.assert_allclose(result.voltage_rmse_v / series, 2e-3 / np.sqrt(3), rtol=0.15)
    capacity = TRUE_SOH * calibrator.cell_capacity_ah * calibrator.parallel
    np.testing.assert_allclose(result.capacity_ah, capacity, rtol=0.01)


def test_ecm_calibration_refuses_short_windows(ecm_windows: list[PackWindow]) -> None:
    w = ecm_windows[0]
    short = PackWindow(w.t_s[:5], w.current_a[:5], w.voltage_v[:5], w.temperature_c[:5], w.soc[:5])
    with pytest.raises(ValueError, match="10 samples"):
        EcmCalibrator([PackSpec("NMC")]).calibrate([short])


def test_batched_solver_agrees_with_scipy(ecm_windows: list[PackWindow]) -> None:
    """The lock-step Levenberg–Marquardt reaches scipy's optimum on the same problem."""
    calibrator = EcmCalibrator([PackSpec(c) for c in CHEMS])
    window = ecm_windows[1]  # LFP: the flattest OCV, the hardest capacity
    rows = np.array([1])
    t = window.t_s[:600]
    dt = np.r_[0.0, np.diff(t)][None]
    cell_i = (window.current_a[:600] / calibrator.parallel[1])[None]
    temp = window.temperature_c[:600][None]
    cell_v = (window.voltage_v[:600] / calibrator.series[1])[None]

    def res(x: np.ndarray) -> np.ndarray:
        return calibrator.simulate_cell_voltage(rows, x, dt, cell_i, temp)[:, 1:] - cell_v[:, 1:]

    x0 = np.array([[1.0, 1.0, window.soc[0], 0.0]])
    steps = np.array([1e-6, 1e-6, 1e-7, 1e-6])
    ours = batched_least_squares(
        res, lambda x: finite_difference_jacobian(res, x, steps), x0, max_iterations=60
    )
    ref = least_squares(lambda x: res(x[None])[0], x0[0], x_scale="jac", xtol=1e-12, ftol=1e-12)
    np.testing.assert_allclose(ours.x[0, :3], ref.x[:3], rtol=2e-4, atol=2e-5)
    assert ours.rmse[0] == pytest.approx(np.sqrt(2.0 * ref.cost / res(x0).size), rel=1e-4)


@pytest.mark.slow
def test_electrode_fractions_within_pybop_accuracy() -> None:
    """Both active-material fractions of SPM (NMC, Chen2020) within PyBOP's 0.015.

    PyBaMM's IDAKLU solve is the truth (fractions drawn around 0.08 below the set's, as
    PyBOP draws its truths around 0.55), ±2 mV uniform noise; the calibrator starts from
    the parameter set's fractions. ~20 s: SPM build, two truth solves, the fit.
    """
    rng = np.random.default_rng(7)
    nominal = np.array([0.75, 0.665])
    truth = np.clip(nominal - 0.08 + rng.normal(0.0, 0.03, (2, 2)), 0.45, 0.9)
    duty = Duty(cycles_per_day=6.0, depth_of_discharge=0.6, c_rate=1.0, pulse_c_rate=0.3)
    dt = 10.0
    current = duty.current_profile(np.full(2, 5.0), dt, 1.5 * 3600.0, seed=2)
    windows = []
    for k in range(2):
        v = reference_voltage("NMC", (truth[k, 0], truth[k, 1]), 0.8, current[:, k], dt)
        v = v + rng.uniform(-0.002, 0.002, v.size)
        soc = np.full(v.size, np.nan)
        soc[0] = 0.8
        windows.append(
            PackWindow(
                np.arange(v.size) * dt, np.r_[0.0, current[:, k]], v, np.full(v.size, 25.0), soc
            )
        )
    calibrator = ElectrodeCalibrator([PackSpec("NMC", series=1, parallel=1)] * 2)
    result = calibrator.calibrate(windows)
    assert result.converged.all()
    assert np.max(np.abs(result.x - truth)) < 0.015
    assert np.all(result.std < 0.005)
    assert np.all(result.voltage_rmse_v < 1.5e-3)  # ≈ the noise (1.15 mV RMS)
