"""Back-test of the forecast against a truth twin over an accelerated month.

The truth is the equivalent-circuit twin of the fleet with the semi-empirical fade on
(``degradation="empirical"``, accelerated so that a month shows the fade of about a year),
packs aged to SoH values the service does not know, driven through a duty with resistance
pulses and recorded with sensor noise (:func:`~pulsebms.services.twin.recording.
record_telemetry`). The service side sees only the recorded rows: it calibrates SoH and
resistance on the first ``calibration_h`` hours (:class:`~pulsebms.services.twin.calibration.
EcmCalibrator`, start values SoH 1 and resistance factor 1), forecasts from the end of that
window under the same duty with the same acceleration (:func:`~pulsebms.services.twin.
forecast.forecast_soh`) at each pack's mean measured temperature, and the forecast is
compared with the truth's SoH day by day.

What the error measures: calibration error, and the forecast's idealised duty (fixed
voltages per SoC slice, duty temperature, current fixed at the calibrated capacity) against
the truth's step-by-step integration of the same laws. It does **not** measure how wrong the
ageing laws themselves are (both sides share them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pulsebms.core.types import FloatArray
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin import make_twin
from pulsebms.hil.noise import SensorNoise
from pulsebms.services.store.sqlite import SqliteTelemetryStore
from pulsebms.services.twin.calibration import EcmCalibration, EcmCalibrator
from pulsebms.services.twin.duty import Duty
from pulsebms.services.twin.forecast import SohForecast, forecast_soh
from pulsebms.services.twin.recording import record_telemetry
from pulsebms.services.twin.window import PackWindow

__all__ = ["BACKTEST_DUTY", "BacktestResult", "backtest"]

BACKTEST_DUTY = Duty(
    cycles_per_day=2.0, depth_of_discharge=0.6, c_rate=0.5, mean_soc=0.5, pulse_c_rate=0.2,
    pulse_period_s=120.0,
)  # fmt: skip
"""The back-test's duty: two cycles a day of depth 0.6 at C/2 with ±C/5 pulse pairs."""


@dataclass(frozen=True)
class BacktestResult:
    """Forecast against truth.

    Attributes:
        t_days: Days from the forecast's start, ``(k,)``.
        truth_soh: Truth SoH per pack, ``(n, k)``.
        forecast: The forecast (on the same days).
        calibration: The calibration it started from.
        true_initial_soh: Truth SoH at the end of the calibration window.
        soh_rmse: RMSE of forecast − truth SoH per pack over the month.
        soh_max_abs_error: Largest |forecast − truth| per pack.
        fade_error: (forecast fade − true fade) / true fade at the end, per pack.
    """

    t_days: FloatArray
    truth_soh: FloatArray
    forecast: SohForecast
    calibration: EcmCalibration
    true_initial_soh: FloatArray
    soh_rmse: FloatArray
    soh_max_abs_error: FloatArray
    fade_error: FloatArray


def backtest(
    packs: Sequence[PackSpec],
    *,
    days: float = 30.0,
    acceleration: float = 12.0,
    duty: Duty = BACKTEST_DUTY,
    dt_s: float = 60.0,
    calibration_h: float = 12.0,
    voltage_noise_v: float = 0.002,
    seed: int = 0,
) -> BacktestResult:
    """Run the back-test (see the module docstring).

    Args:
        packs: Truth packs (their ``initial_soh`` is the truth the service must find; the
            service is given the same packs at SoH 1).
        days: Length of the truth run [days].
        acceleration: ``degradation_acceleration`` of the truth twin and the forecast.
        duty: Duty of the truth run and of the forecast.
        dt_s: Truth step and telemetry period [s].
        calibration_h: Calibration window from the start [h].
        voltage_noise_v: Bound of the uniform cell-voltage noise [V].
        seed: Seed of pulses and noise.

    Returns:
        The :class:`BacktestResult`.
    """
    n = len(packs)
    ids = [f"pack-{k}" for k in range(n)]
    truth = make_twin(packs, "ecm", degradation="empirical", degradation_acceleration=acceleration)
    soh_true0 = np.array([p.initial_soh for p in packs])
    capacity = np.asarray(truth.ratings.cell_capacity_ah * truth.ratings.parallel) * soh_true0
    current = duty.current_profile(capacity, dt_s, days * 86400.0, seed=seed)
    noise = SensorNoise(
        n, seed=seed + 1, voltage_noise_v=voltage_noise_v, current_gain_error=0.0,
        current_offset_a=0.0, current_noise_a=0.0, temperature_offset_c=0.0,
        temperature_noise_c=0.0,
    )  # fmt: skip
    rec = record_telemetry(truth, current, dt_s, ids, noise=noise)
    store = SqliteTelemetryStore(":memory:")
    store.write_batch(rec.rows)
    t_cal = calibration_h * 3600.0
    windows = [PackWindow.from_columns(store.query(i, 0.0, t_cal + 0.5 * dt_s)) for i in ids]
    store.close()
    service_packs = [
        PackSpec(p.chemistry, series=p.series, parallel=p.parallel, name=p.name) for p in packs
    ]
    calibration = EcmCalibrator(service_packs).calibrate(windows)
    remaining = days - calibration_h / 24.0
    forecast = forecast_soh(
        [p.chemistry for p in packs],
        calibration.soh,
        soh_std=calibration.soh_std,
        resistance_factor=calibration.resistance_factor,
        duty=duty,
        horizon_days=remaining,
        step_days=1.0,
        degradation_acceleration=acceleration,
        temperature_c=np.array([float(np.mean(w.temperature_c)) for w in windows]),
    )
    t_truth_days = (rec.t_s - t_cal) / 86400.0
    truth_soh = np.stack(
        [np.interp(forecast.t_days, t_truth_days, rec.soh[:, k]) for k in range(n)]
    )
    err = forecast.soh - truth_soh
    true_fade = truth_soh[:, 0] - truth_soh[:, -1]
    fc_fade = forecast.soh[:, 0] - forecast.soh[:, -1]
    return BacktestResult(
        t_days=forecast.t_days,
        truth_soh=truth_soh,
        forecast=forecast,
        calibration=calibration,
        true_initial_soh=truth_soh[:, 0],
        soh_rmse=np.sqrt(np.mean(err**2, axis=1)),
        soh_max_abs_error=np.max(np.abs(err), axis=1),
        fade_error=(fc_fade - true_fade) / np.where(true_fade > 0, true_fade, np.nan),
    )
