"""One run that reproduces every health-analytics figure (the ``pulsebms-health metrics`` table).

:func:`run_metrics` simulates a seeded fleet (:mod:`.fleet`, with ``future_cycles`` kept
for the oracle and faults injected into the last ``telemetry_cycles`` days), splits its
packs into train and test (stratified by chemistry), and measures:

* **health score** — held-out RMSE of SoH: gradient boosting, the linear baseline, and the
  raw capacity estimate;
* **forecast** — held-out RMSE of SoH ``horizon`` cycles ahead: LSTM, LSTM on the fade-law
  prior, linear extrapolation, the semi-empirical fade-law fit, persistence; the ONNX
  export's largest deviation from torch on the test windows;
* **anomalies** — per fault kind, window precision and recall of both decision rules, the
  first telemetry day serving as each pack's healthy reference;
* **prioritisation** — the test packs' maintenance queue at the end of the history (an
  anomaly counts when flagged in at least two windows of the last day) against the
  oracle (true faults now, true RUL from the future SoH): Kendall τ, NDCG@k,
  precision@k; the same for a queue by health score alone and a random queue.

Everything is seeded: the same :class:`MetricsConfig` gives the same table (the wall time
aside).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from pulsebms.core.types import FloatArray
from pulsebms.services.health.anomaly import (
    AnomalyDetector,
    evaluate_detector,
    persistent_anomalies,
)
from pulsebms.services.health.dataset import HealthDataset, split_packs
from pulsebms.services.health.faults import FAULT_KINDS
from pulsebms.services.health.fleet import FleetConfig, FleetHistory, generate_fleet
from pulsebms.services.health.forecast import TrainSettings, evaluate_forecaster, make_windows
from pulsebms.services.health.forecast_onnx import (
    OnnxForecaster,
    check_parity,
    export_forecaster,
)
from pulsebms.services.health.priority import (
    PackHealth,
    PriorityWeights,
    QueueEntry,
    compare_with_oracle,
    maintenance_queue,
    priority_score,
)
from pulsebms.services.health.score import evaluate_health_score

__all__ = ["MetricsConfig", "format_table", "oracle_priorities", "run_metrics"]

_SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class MetricsConfig:
    """Sizes and settings of a metrics run.

    Attributes:
        n_packs: Packs in the fleet.
        n_cycles: Days of history.
        future_cycles: Days simulated after the history (oracle only).
        telemetry_cycles: Last days kept sample by sample, with faults.
        fault_fraction: Share of packs given a fault.
        seed: Seed of everything.
        fidelity: Twin fidelity.
        test_fraction: Share of packs held out.
        horizon: Forecast horizon [cycles].
        lookback: Forecast input window [cycles].
        epochs: LSTM training epochs.
        members: LSTM ensemble members (:attr:`~pulsebms.services.health.forecast.
            TrainSettings.members`).
        top_k: Queue head compared by NDCG and precision.
    """

    n_packs: int = 48
    n_cycles: int = 120
    future_cycles: int = 60
    telemetry_cycles: int = 3
    fault_fraction: float = 0.3
    seed: int = 0
    fidelity: str = "ecm"
    test_fraction: float = 0.25
    horizon: int = 30
    lookback: int = 16
    epochs: int = 20
    members: int = 5
    top_k: int = 5

    @classmethod
    def quick(cls, seed: int = 0) -> MetricsConfig:
        """Smoke sizes (seconds; figures are noisy)."""
        return cls(
            n_packs=9,
            n_cycles=40,
            future_cycles=10,
            horizon=10,
            lookback=6,
            epochs=5,
            top_k=3,
            seed=seed,
        )

    @classmethod
    def full(cls, seed: int = 0) -> MetricsConfig:
        """Larger fleet and longer histories (minutes)."""
        return cls(n_packs=128, n_cycles=200, future_cycles=100, epochs=30, top_k=10, seed=seed)


def oracle_priorities(
    history: FleetHistory,
    packs: list[int],
    weights: PriorityWeights,
    horizon: int,
) -> dict[str, float]:
    """Priorities the truth gives: faults active at the end, true SoH now and ahead.

    The true "forecast" is the true SoH ``horizon`` days after the history (from
    :attr:`FleetHistory.future_soh`; the last future day when the future is shorter).
    """
    out: dict[str, float] = {}
    tel = history.telemetry
    for k in packs:
        kinds: tuple[str, ...] = ()
        if tel is not None:
            code = int(tel.labels[k][-1])
            kinds = (FAULT_KINDS[code - 1],) if code else ()
        future = history.future_soh[k]
        ahead = float(future[min(horizon, future.size) - 1]) if future.size else float("nan")
        steps = min(horizon, future.size) if future.size else horizon
        truth = PackHealth(
            pack_id=history.pack_ids[k],
            health_score=float(history.soh[k][-1]),
            soh_forecast=ahead,
            horizon_cycles=float(steps),
            anomalies=kinds,
            cycles_per_day=1.0,
        )
        out[truth.pack_id] = priority_score(truth, weights)
    return out


def _telemetry_columns(history: FleetHistory, k: int, mask: FloatArray) -> dict[str, FloatArray]:
    tel = history.telemetry
    if tel is None:  # pragma: no cover - the metrics config always keeps telemetry
        raise ValueError("the history has no telemetry")
    return {
        "t_s": tel.t_s[mask],
        "current_a": tel.current_a[k][mask],
        "voltage_v": tel.voltage_v[k][mask],
        "temperature_c": tel.temperature_c[k][mask],
        "soc": tel.soc[k][mask],
    }


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    return value


def run_metrics(config: MetricsConfig = MetricsConfig()) -> dict[str, Any]:
    """Run every measurement (see the module docstring) and return the figures.

    Returns:
        A JSON-ready dict: ``config``, ``score``, ``forecast``, ``anomaly`` (per method),
        ``priority`` (per queue), ``timing_s``.
    """
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    history = generate_fleet(
        FleetConfig(
            n_packs=config.n_packs,
            n_cycles=config.n_cycles,
            seed=config.seed,
            fidelity=config.fidelity,
            telemetry_cycles=config.telemetry_cycles,
            future_cycles=config.future_cycles,
            fault_fraction=config.fault_fraction,
        )
    )
    timing["fleet"] = time.perf_counter() - t0
    data = HealthDataset.from_history(history)
    train, test = split_packs(
        data.chemistries, test_fraction=config.test_fraction, seed=config.seed
    )

    t0 = time.perf_counter()
    score = evaluate_health_score(data, train, test, seed=config.seed)
    timing["score"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    settings = TrainSettings(
        lookback=config.lookback,
        horizon=config.horizon,
        epochs=config.epochs,
        seed=config.seed,
        members=config.members,
    )
    lstm = evaluate_forecaster(data, train, test, settings)
    hybrid = evaluate_forecaster(data, train, test, replace(settings, prior="fade_law"))
    timing["forecast"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    onnx_model = OnnxForecaster(export_forecaster(lstm.model, fill=lstm.fill))
    windows = make_windows(
        data, test, lookback=config.lookback, horizon=config.horizon, fill=lstm.fill
    )
    parity = check_parity(lstm.model, onnx_model, windows.x)
    timing["onnx"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tel = history.telemetry
    if tel is None:  # pragma: no cover - telemetry_cycles >= 2 is required below
        raise ValueError("metrics need telemetry_cycles >= 2")
    reference = tel.t_s < tel.t_s[0] + _SECONDS_PER_DAY
    ids = history.pack_ids
    ref_cols = {ids[k]: _telemetry_columns(history, k, reference) for k in range(len(ids))}
    eval_cols = {ids[k]: _telemetry_columns(history, k, ~reference) for k in range(len(ids))}
    labels = {ids[k]: tel.labels[k][~reference] for k in range(len(ids))}
    anomaly: dict[str, Any] = {}
    detectors: dict[str, AnomalyDetector] = {}
    for method in ("robust_z", "isolation_forest"):
        det = AnomalyDetector(method=method, seed=config.seed).fit(ref_cols)
        detectors[method] = det
        report = evaluate_detector(det, eval_cols, labels, FAULT_KINDS)
        anomaly[method] = {
            "precision": dict(report.precision),
            "recall": dict(report.recall),
            "detection_precision": report.detection_precision,
            "detection_recall": report.detection_recall,
            "n_windows": report.n_windows,
            "n_positive": dict(report.n_positive),
        }
    timing["anomaly"] = time.perf_counter() - t0

    # Queue of the test packs at the end of the history.
    t0 = time.perf_counter()
    weights = PriorityWeights()
    last_day = tel.t_s >= tel.t_s[-1] - _SECONDS_PER_DAY
    inputs = make_windows(data, test, lookback=config.lookback, horizon=0, fill=lstm.fill)
    assessed: list[PackHealth] = []
    for k in test:
        x_last = data.features[k][-1:]
        health = float(score.model.predict(x_last)[0])
        sel = inputs.pack == k
        window = inputs.x[sel][-1:]
        fade = max(float(onnx_model.predict_fade(window)[0]), 0.0) if window.size else None
        forecast = None if fade is None else health - fade
        verdicts = detectors["robust_z"].score(ids[k], _telemetry_columns(history, k, last_day))
        names = persistent_anomalies(verdicts, min_windows=2)
        assessed.append(
            PackHealth(
                pack_id=ids[k],
                health_score=health,
                soh_forecast=forecast,
                horizon_cycles=float(config.horizon),
                anomalies=names,
                anomaly_score=max((w.score for w in verdicts), default=0.0),
                cycles_per_day=1.0,
            )
        )
    oracle = oracle_priorities(history, test, weights, config.horizon)
    queue = maintenance_queue(assessed, weights)
    by_health = [
        QueueEntry(rank=r, pack_id=p.pack_id, priority=1.0 - p.health_score, rul_days=0.0)
        for r, p in enumerate(sorted(assessed, key=lambda p: (p.health_score, p.pack_id)))
    ]
    rng = np.random.default_rng(config.seed)
    shuffled = [assessed[j] for j in rng.permutation(len(assessed))]
    random_queue = [
        QueueEntry(rank=r, pack_id=p.pack_id, priority=float(len(shuffled) - r), rul_days=0.0)
        for r, p in enumerate(shuffled)
    ]
    priority: dict[str, Any] = {}
    for name, q in (("queue", queue), ("health_only", by_health), ("random", random_queue)):
        rep = compare_with_oracle(q, oracle, k=config.top_k)
        priority[name] = {
            "kendall_tau": rep.kendall_tau,
            "ndcg_at_k": rep.ndcg_at_k,
            "precision_at_k": rep.precision_at_k,
            "k": rep.k,
            "n_packs": rep.n_packs,
        }
    priority["queue_order"] = [e.pack_id for e in queue]
    priority["oracle_order"] = sorted(oracle, key=lambda p: (-oracle[p], p))
    timing["priority"] = time.perf_counter() - t0

    result = {
        "config": asdict(config),
        "score": {
            "rmse_gbr": score.rmse_gbr,
            "rmse_linear": score.rmse_linear,
            "rmse_capacity": score.rmse_capacity,
            "n_train_packs": score.n_train_packs,
            "n_test_packs": score.n_test_packs,
            "n_test_rows": score.n_test_rows,
        },
        "forecast": {
            "rmse_lstm": lstm.rmse_lstm,
            "rmse_lstm_fade_law_prior": hybrid.rmse_lstm,
            "rmse_linear": lstm.rmse_linear,
            "rmse_fade_law": lstm.rmse_fade_law,
            "rmse_persistence": lstm.rmse_persistence,
            "horizon": lstm.horizon,
            "lookback": lstm.lookback,
            "n_windows": lstm.n_windows,
            "onnx_max_abs_diff": parity,
        },
        "anomaly": anomaly,
        "priority": priority,
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
    }
    return dict(_nan_to_none(result))


def _f(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    """The figures of :func:`run_metrics` as Markdown tables."""
    s, f, a, p = result["score"], result["forecast"], result["anomaly"], result["priority"]
    lines = [
        f"Health score — SoH RMSE on {s['n_test_packs']} held-out packs "
        f"({s['n_test_rows']} cycles; trained on {s['n_train_packs']} packs)",
        "",
        "| model | RMSE |",
        "| --- | --- |",
        f"| gradient boosting (HistGradientBoostingRegressor) | {_f(s['rmse_gbr'])} |",
        f"| linear regression (same features) | {_f(s['rmse_linear'])} |",
        f"| capacity estimate read as SoH | {_f(s['rmse_capacity'])} |",
        "",
        f"Forecast — SoH {f['horizon']} cycles ahead, RMSE over {f['n_windows']} held-out "
        f"windows (lookback {f['lookback']})",
        "",
        "| model | RMSE |",
        "| --- | --- |",
        f"| LSTM | {_f(f['rmse_lstm'])} |",
        f"| LSTM on the fade-law prior | {_f(f['rmse_lstm_fade_law_prior'])} |",
        f"| semi-empirical fade-law fit | {_f(f['rmse_fade_law'])} |",
        f"| linear extrapolation | {_f(f['rmse_linear'])} |",
        f"| persistence (no change) | {_f(f['rmse_persistence'])} |",
        "",
        f"ONNX export: largest |onnxruntime − torch| = {f['onnx_max_abs_diff']:.2e}",
        "",
        "Anomaly detection — window precision / recall per injected fault",
        "",
        "| fault | windows | robust z: P | R | isolation forest: P | R |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rz, iso = a["robust_z"], a["isolation_forest"]
    for kind in FAULT_KINDS:
        lines.append(
            f"| {kind} | {rz['n_positive'][kind]} | {_f(rz['precision'][kind], 2)} | "
            f"{_f(rz['recall'][kind], 2)} | {_f(iso['precision'][kind], 2)} | "
            f"{_f(iso['recall'][kind], 2)} |"
        )
    lines.append(
        f"| any fault (detection) | {rz['n_windows']} windows | "
        f"{_f(rz['detection_precision'], 2)} | {_f(rz['detection_recall'], 2)} | "
        f"{_f(iso['detection_precision'], 2)} | {_f(iso['detection_recall'], 2)} |"
    )
    q = p["queue"]
    lines += [
        "",
        f"Prioritisation — {q['n_packs']} held-out packs against the oracle ordering",
        "",
        f"| queue | Kendall τ | NDCG@{q['k']} | precision@{q['k']} |",
        "| --- | --- | --- | --- |",
    ]
    for name, label in (
        ("queue", "priority score (health + forecast + anomalies + usage)"),
        ("health_only", "health score only"),
        ("random", "random order"),
    ):
        r = p[name]
        lines.append(
            f"| {label} | {_f(r['kendall_tau'], 2)} | {_f(r['ndcg_at_k'], 2)} | "
            f"{_f(r['precision_at_k'], 2)} |"
        )
    return "\n".join(lines)
