"""Train the health models a service runs, and save them as a model folder.

:func:`train_models` simulates a seeded fleet on the twin (:func:`~pulsebms.services.health.
fleet.generate_fleet`), splits its packs (stratified by chemistry), fits the health score
(:class:`~pulsebms.services.health.score.HealthScoreModel`) and the LSTM forecaster on the
training packs, exports both to ONNX with their parity gates (onnxruntime against
scikit-learn and torch, 1e-5), measures them on the held-out packs, and writes the folder
with :func:`~pulsebms.services.health.persist.save_models` (``pulsebms-health train``).

The features depend on the telemetry period (the resistance estimate is ``ΔV/ΔI`` over
one sample interval), so :attr:`TrainConfig.dt_s` should be the site's telemetry period.
Everything is seeded: the same configuration gives the same figures and weights.

Example:
    >>> config = TrainConfig.tiny()
    >>> config.n_packs, config.lookback
    (6, 3)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pulsebms.services.health.anomaly import AnomalyDetector
from pulsebms.services.health.dataset import HealthDataset, split_packs
from pulsebms.services.health.fleet import FleetConfig, generate_fleet
from pulsebms.services.health.forecast import TrainSettings, evaluate_forecaster, make_windows
from pulsebms.services.health.forecast_onnx import (
    OnnxForecaster,
    check_parity,
    export_forecaster,
)
from pulsebms.services.health.persist import save_models
from pulsebms.services.health.score import evaluate_health_score
from pulsebms.services.health.score_onnx import (
    OnnxHealthScore,
    check_score_parity,
    export_health_score,
)

__all__ = ["TrainConfig", "train_models"]


@dataclass(frozen=True)
class TrainConfig:
    """What :func:`train_models` simulates and fits.

    Attributes:
        n_packs: Packs of the simulated fleet.
        n_cycles: Days of history (a cycle a day).
        dt_s: Telemetry period while current flows [s] (the site's).
        seed: Seed of everything.
        test_fraction: Share of packs held out for the figures.
        lookback: Forecaster input window [cycles].
        horizon: Forecast horizon [cycles].
        hidden: LSTM units.
        epochs: LSTM training epochs.
        score_iterations: Boosting iterations of the health score.
        fade_acceleration: Mean factor on the fade of the simulated packs.
    """

    n_packs: int = 12
    n_cycles: int = 60
    dt_s: float = 60.0
    seed: int = 0
    test_fraction: float = 0.25
    lookback: int = 8
    horizon: int = 15
    hidden: int = 16
    epochs: int = 10
    score_iterations: int = 50
    fade_acceleration: float = 3.0

    @classmethod
    def tiny(cls, seed: int = 0, dt_s: float = 60.0) -> TrainConfig:
        """Test sizes (seconds; the figures mean little)."""
        return cls(
            n_packs=6,
            n_cycles=16,
            dt_s=dt_s,
            seed=seed,
            lookback=3,
            horizon=3,
            hidden=4,
            epochs=1,
            score_iterations=10,
        )


def train_models(config: TrainConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train, export, check and save the health models (see the module docstring).

    Args:
        config: What to simulate and fit.
        out_dir: The model folder to write.

    Returns:
        The figures: held-out RMSE of the score and its linear baseline, of the forecaster
        and linear extrapolation, the parity of both exports, the timings, and the path of
        the manifest (``manifest``).

    Raises:
        ParityError: If an export differs from its source model by more than 1e-5.
    """
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    history = generate_fleet(
        FleetConfig(
            n_packs=config.n_packs,
            n_cycles=config.n_cycles,
            seed=config.seed,
            dt_s=config.dt_s,
            fade_acceleration=config.fade_acceleration,
        )
    )
    data = HealthDataset.from_history(history)
    train, test = split_packs(
        data.chemistries, test_fraction=config.test_fraction, seed=config.seed
    )
    timing["fleet"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    score = evaluate_health_score(
        data, train, test, seed=config.seed, max_iter=config.score_iterations
    )
    x_train, _, _ = data.stack(train)
    x_test, _, _ = data.stack(test)
    score_onnx = export_health_score(score.model)
    score_parity = check_score_parity(
        score.model, OnnxHealthScore(score_onnx), np.concatenate([x_train, x_test])
    )
    timing["score"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    settings = TrainSettings(
        lookback=config.lookback,
        horizon=config.horizon,
        hidden=config.hidden,
        epochs=config.epochs,
        seed=config.seed,
    )
    forecast = evaluate_forecaster(data, train, test, settings)
    forecaster_onnx = export_forecaster(forecast.model, fill=forecast.fill)
    windows = make_windows(
        data, [*train, *test], lookback=config.lookback, horizon=config.horizon,
        fill=forecast.fill,
    )  # fmt: skip
    forecast_parity = check_parity(forecast.model, OnnxForecaster(forecaster_onnx), windows.x)
    timing["forecast"] = time.perf_counter() - t0

    metrics = {
        "score_rmse": score.rmse_gbr,
        "score_rmse_linear": score.rmse_linear,
        "forecast_rmse": forecast.rmse_lstm,
        "forecast_rmse_linear": forecast.rmse_linear,
        "score_onnx_max_abs_diff": score_parity,
        "forecaster_onnx_max_abs_diff": forecast_parity,
        "n_train_packs": len(train),
        "n_test_packs": len(test),
    }
    manifest = save_models(
        out_dir,
        score_onnx=score_onnx,
        forecaster_onnx=forecaster_onnx,
        detector=AnomalyDetector(method="robust_z", seed=config.seed),
        training=asdict(config),
        metrics={k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                 for k, v in metrics.items()},
    )  # fmt: skip
    return {**metrics, "timing_s": {k: round(v, 2) for k, v in timing.items()},
            "manifest": str(manifest)}  # fmt: skip
