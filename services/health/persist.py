"""Saved health models: two ONNX files and a manifest, loaded without pickle.

A model folder holds

* ``score.onnx`` — the health score (:mod:`~pulsebms.services.health.score_onnx`: linear base
  and boosted trees in one graph);
* ``forecaster.onnx`` — the LSTM SoH forecaster (:mod:`~pulsebms.services.health.
  forecast_onnx`: normalisation, LSTM, head and anchor in one graph);
* ``health_models.json`` — the manifest: format and its version, the model version string
  the service publishes, the sha256 of each ONNX file, the feature names and rolling window
  the models were trained on, the forecaster's horizon / lookback / prior, the anomaly
  detector's settings and the priority weights, the package versions that trained them,
  the training configuration and its held-out figures.

:func:`save_models` writes it; :func:`load_models` reads it back into
:class:`~pulsebms.services.health.service.HealthModels` for onnxruntime alone (no
scikit-learn, no torch, no pickle: nothing in the folder is executed as Python). It refuses,
with a :class:`HealthModelError` that says why, a manifest of another format or version, a
file name that leaves the folder, a file whose sha256 differs from the manifest's (modified
or corrupt), and models made for other features than this version computes.

The anomaly detector's per-pack baselines are not in the folder: they belong to a site's
own packs, and the service learns them from each pack's first day of telemetry
(:class:`~pulsebms.services.health.service.HealthService`, ``reference_s``).

Example:
    >>> load_models("/nonexistent")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    pulsebms.services.health.persist.HealthModelError: /nonexistent/health_models.json: ...
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pulsebms.services.health.anomaly import AnomalyDetector
from pulsebms.services.health.features import FEATURE_NAMES
from pulsebms.services.health.forecast_onnx import OnnxForecaster
from pulsebms.services.health.priority import PriorityWeights
from pulsebms.services.health.score_onnx import OnnxHealthScore
from pulsebms.services.health.service import HealthModels

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "HealthModelError",
    "load_models",
    "save_models",
    "sha256_file",
]

FORMAT = "pulsebms.health-models"
"""The manifest's ``format``."""
FORMAT_VERSION = 1
"""The manifest's ``format_version`` this code reads and writes."""
MANIFEST_NAME = "health_models.json"
"""File name of the manifest in a model folder."""
_FILES = {"score": "score.onnx", "forecaster": "forecaster.onnx"}
_DETECTOR_KEYS = (
    "method",
    "window_s",
    "z_threshold",
    "contamination",
    "current_threshold_a",
    "settle_s",
    "seed",
)


class HealthModelError(RuntimeError):
    """A model folder that cannot be used (missing, malformed, modified, or stale)."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for name in ("pulsebms", "scikit-learn", "torch", "onnx", "onnxruntime", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def save_models(
    out_dir: str | Path,
    *,
    score_onnx: bytes,
    forecaster_onnx: bytes,
    detector: AnomalyDetector,
    weights: PriorityWeights | None = None,
    feature_window: int = 5,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model folder (see the module docstring); returns the manifest's path.

    The model version is ``pulsebms-health-`` and the first 12 hex digits of the sha256 of
    both ONNX files together: the same models, the same version.

    Args:
        out_dir: Folder to write (created; existing files of the same names are replaced).
        score_onnx: The exported health score.
        forecaster_onnx: The exported forecaster.
        detector: The anomaly detector whose settings a service uses (its baselines are not
            saved).
        weights: Priority weights (the defaults when None).
        feature_window: Rolling window of the features the models were trained with.
        training: The training configuration (JSON-ready).
        metrics: Held-out figures (JSON-ready).

    Raises:
        ValueError: If either model does not load in onnxruntime as what it should be.
    """
    forecaster = OnnxForecaster(forecaster_onnx)  # refuses what is not a forecaster
    OnnxHealthScore(score_onnx)  # refuses what is not a health score for these features
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, str]] = {}
    digest = hashlib.sha256()
    for key, data in (("score", score_onnx), ("forecaster", forecaster_onnx)):
        path = out / _FILES[key]
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        files[key] = {"path": _FILES[key], "sha256": hashlib.sha256(data).hexdigest()}
        digest.update(data)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_version": f"pulsebms-health-{digest.hexdigest()[:12]}",
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "feature_names": list(FEATURE_NAMES),
        "feature_window": int(feature_window),
        "files": files,
        "forecaster": {
            "horizon_cycles": forecaster.horizon,
            "lookback_cycles": forecaster.lookback,
            "prior": forecaster.prior,
        },
        "detector": {k: getattr(detector, k) for k in _DETECTOR_KEYS},
        "priority_weights": asdict(weights or PriorityWeights()),
        "training": dict(training or {}),
        "metrics": dict(metrics or {}),
    }
    path = out / MANIFEST_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HealthModelError(f"{path}: no such file (train one: pulsebms-health train)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HealthModelError(f"{path}: not a readable manifest: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HealthModelError(f"{path}: not a {FORMAT} manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise HealthModelError(
            f"{path}: format_version {data.get('format_version')!r}, this version reads "
            f"{FORMAT_VERSION}: retrain (pulsebms-health train)"
        )
    return data


def _verified_file(folder: Path, manifest: Mapping[str, Any], key: str) -> bytes:
    entry = (manifest.get("files") or {}).get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise HealthModelError(f"{folder / MANIFEST_NAME}: no {key!r} file entry")
    name = str(entry["path"])
    if Path(name).name != name or name in ("", ".", ".."):
        raise HealthModelError(f"{folder / MANIFEST_NAME}: {key} file {name!r} leaves the folder")
    path = folder / name
    try:
        data: bytes = path.read_bytes()
    except OSError as exc:
        raise HealthModelError(f"{path}: cannot read: {exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry.get("sha256"):
        raise HealthModelError(
            f"{path}: sha256 {actual} does not match the manifest's {entry.get('sha256')}: "
            "the file was modified or is corrupt; refusing it"
        )
    return data


def load_models(folder: str | Path) -> HealthModels:
    """Load a model folder for a service (onnxruntime only; see the module docstring).

    Returns:
        The models, with a fresh anomaly detector of the saved settings (no baselines yet).

    Raises:
        HealthModelError: A missing or malformed manifest, another format version, a file
            that leaves the folder or fails its sha256, or models for other features.
    """
    root = Path(folder)
    manifest = _manifest(root)
    names = tuple(manifest.get("feature_names") or ())
    if names != FEATURE_NAMES:
        raise HealthModelError(
            f"{root}: models trained on features {names}, this version computes "
            f"{FEATURE_NAMES}: retrain (pulsebms-health train)"
        )
    try:
        score = OnnxHealthScore(_verified_file(root, manifest, "score"))
        forecaster = OnnxForecaster(_verified_file(root, manifest, "forecaster"))
        settings = {
            k: v for k, v in (manifest.get("detector") or {}).items() if k in _DETECTOR_KEYS
        }
        detector = AnomalyDetector(**settings)
        weights = PriorityWeights(**(manifest.get("priority_weights") or {}))
        window = int(manifest.get("feature_window", 5))
    except HealthModelError:
        raise
    except Exception as exc:  # onnxruntime, bad settings: one clear error
        raise HealthModelError(f"{root}: cannot load the models: {exc}") from exc
    return HealthModels(
        score=score,
        forecaster=forecaster,
        detector=detector,
        weights=weights,
        version=str(manifest.get("model_version", "pulsebms-health")),
        feature_window=window,
    )
