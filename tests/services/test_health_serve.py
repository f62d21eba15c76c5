"""Saved health models (ONNX + manifest, no pickle) and the live service (``serve``).

The model folder is the session's ``health_model_dir`` (the real ``train_models`` at test
sizes); tampered copies of it must be refused with a clear error. ``pulsebms-health serve``
runs as a subprocess against the session's Mosquitto with a real SQLite store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mqtt_helpers import Inbox, pack, telemetry, wait_until

from pulsebms.core.messaging import telemetry_topic
from pulsebms.services.broker import Broker
from pulsebms.services.health.cli import main as health_main
from pulsebms.services.health.features import FEATURE_NAMES
from pulsebms.services.health.persist import (
    MANIFEST_NAME,
    HealthModelError,
    load_models,
    sha256_file,
)
from pulsebms.services.health.score_onnx import OnnxHealthScore
from pulsebms.services.health.service import HealthService
from pulsebms.services.store import SqliteTelemetryStore


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(folder: Path, **changes: Any) -> None:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_saved_models_load_with_onnxruntime_and_say_what_they_are(health_model_dir: Path) -> None:
    manifest = json.loads((health_model_dir / MANIFEST_NAME).read_text())
    assert manifest["format"] == "pulsebms.health-models"
    assert manifest["feature_names"] == list(FEATURE_NAMES)
    assert manifest["files"]["score"]["sha256"] == sha256_file(health_model_dir / "score.onnx")
    assert manifest["training"]["dt_s"] == 300.0
    assert {"scikit-learn", "torch", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["metrics"]["forecaster_onnx_max_abs_diff"] <= 1e-5
    models = load_models(health_model_dir)
    assert models.version == manifest["model_version"]
    assert models.version.startswith("pulsebms-health-")
    assert (models.forecaster.lookback, models.forecaster.horizon) == (3, 3)
    assert models.detector.method == "robust_z"
    assert models.detector.packs == ()  # baselines are a site's own: learnt online
    x = np.random.default_rng(0).uniform(size=(5, len(FEATURE_NAMES)))
    x[0, 2] = np.nan
    soh = models.score.predict(x)
    assert soh.shape == (5,)
    assert np.all((soh >= 0.0) & (soh <= 1.5))
    assert not any(p.suffix in (".pkl", ".pickle", ".joblib") for p in health_model_dir.iterdir())


def test_tampered_or_stale_model_folders_are_refused(
    health_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flipped = _copy(health_model_dir, tmp_path / "flipped")
    data = bytearray((flipped / "score.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (flipped / "score.onnx").write_bytes(bytes(data))
    with pytest.raises(HealthModelError, match=r"sha256 .* does not match .* refusing it"):
        load_models(flipped)
    escape = _copy(health_model_dir, tmp_path / "escape")
    files = json.loads((escape / MANIFEST_NAME).read_text())["files"]
    files["forecaster"]["path"] = "../escape/forecaster.onnx"
    _edit_manifest(escape, files=files)
    with pytest.raises(HealthModelError, match="leaves the folder"):
        load_models(escape)
    stale = _copy(health_model_dir, tmp_path / "stale")
    _edit_manifest(stale, feature_names=["capacity_ratio"])
    with pytest.raises(HealthModelError, match="retrain"):
        load_models(stale)
    newer = _copy(health_model_dir, tmp_path / "newer")
    _edit_manifest(newer, format_version=2)
    with pytest.raises(HealthModelError, match="format_version 2"):
        load_models(newer)
    with pytest.raises(HealthModelError, match="no such file"):
        load_models(tmp_path / "nothing")
    # An ONNX file that is not a health score is refused by its own loader too.
    with pytest.raises(ValueError, match="not a PulseBMS health score"):
        OnnxHealthScore(health_model_dir / "forecaster.onnx")
    # The CLI: exit 2 with the reason, before touching the broker.
    argv = ["serve", "--site", "s1", "--broker", "127.0.0.1:1", "--store", "sqlite://:memory:",
            "--model", str(flipped)]  # fmt: skip
    assert health_main(argv) == 2
    assert "sha256" in capsys.readouterr().err
    assert health_main(["train", "--out", str(tmp_path / "x"), "--packs", "2"]) == 2


def test_service_learns_its_packs_from_telemetry(health_model_dir: Path) -> None:
    from pulsebms.services.health.fleet import PackInfo

    store = SqliteTelemetryStore(":memory:")
    known = {"k1": PackInfo("k1", "", "NMC", 20.0, 14)}
    service = HealthService(store, [], load_models(health_model_dir), site="s1", known_packs=known)
    described = pack("p1", chemistry="LFP", capacity_ah=40.0, voltage_v=52.8,
                     cell_voltage_min_v=3.29, cell_voltage_max_v=3.31)  # fmt: skip
    service.handle_telemetry(
        "pulsebms/s1/e1/telemetry",
        telemetry("s1", "e1", 0, [described, pack("k1"), pack("anon")]),
    )
    assert service.counters["packs_added"] == 2
    assert service.counters["unknown_pack"] == 1  # states neither chemistry nor capacity
    infos = {pid: d.info for pid, d in service._packs.items()}
    assert infos["p1"] == PackInfo("p1", "e1", "LFP", 40.0, 16)
    assert infos["k1"].device == "e1"
    # A pack that moves to another device follows it; a malformed message is counted.
    service.handle_telemetry("pulsebms/s1/e2/telemetry", telemetry("s1", "e2", 0, [described]))
    assert service._packs["p1"].info.device == "e2"
    service.handle_telemetry("pulsebms/s1/e2/telemetry", {"device": "e2", "packs": [{}]})
    assert service.counters["handler_errors"] == 1
    with pytest.raises(ValueError, match="reference_s"):
        HealthService(store, [], load_models(health_model_dir), site="s1", reference_s=0.0)
    store.close()


def _store_with_cycles(path: Path, t0: float, pack_ids: list[str]) -> None:
    """A day and a half of daily-ish cycling every 300 s for each pack, in SQLite."""
    store = SqliteTelemetryStore(str(path))
    rows = []
    t = t0 + 300.0 * np.arange(int(1.5 * 86400 / 300))
    phase = np.mod(t - t0, 6 * 3600.0)
    current = np.where(phase < 7200.0, 20.0, np.where(phase < 14400.0, -20.0, 0.0))
    soc = np.interp(phase, [0.0, 7200.0, 14400.0, 21600.0], [0.9, 0.1, 0.9, 0.9])
    for k, pid in enumerate(pack_ids):
        volts = 51.0 + 3.0 * soc - 0.02 * current + 0.1 * k
        temp = 25.0 + 2.0 * np.sin(2 * np.pi * (t - t0) / 86400.0)
        rows += [(pid, float(a), float(b), 1.0, float(c), float(d), float(e))
                 for a, b, c, d, e in zip(t, soc, current, volts, temp, strict=True)]  # fmt: skip
    store.write_batch(rows)
    store.close()


def test_serve_publishes_health_over_mosquitto(
    health_model_dir: Path,
    mosquitto_broker: Broker,
    mqtt_site: str,
    broker_password: str,
    tmp_path: Path,
) -> None:
    site = mqtt_site
    db = tmp_path / "site.db"
    _store_with_cycles(db, 1_000_000.0, ["p0", "p1", "p2"])
    inbox = Inbox()
    nmc = {"chemistry": "NMC", "capacity_ah": 40.0, "voltage_v": 52.0,
           "cell_voltage_min_v": 3.7, "cell_voltage_max_v": 3.72}  # fmt: skip
    described = [pack(p, **nmc) for p in ("p0", "p1")]
    with (
        mosquitto_broker.link(f"monitor-{site}", f"{site}-monitor") as monitor,
        mosquitto_broker.link(f"edge-{site}", f"{site}-edge") as edge,
    ):
        monitor.subscribe(f"pulsebms/{site}/+/health", inbox)
        assert monitor.connect(10.0)
        assert edge.connect(10.0)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pulsebms.services.health.cli", "serve", "--site", site,
             "--broker", mosquitto_broker.address, "--store", f"sqlite:///{db}",
             "--model", str(health_model_dir), "--period-s", "0.5", "--duration-s", "60"],
            env={**os.environ, "PULSEBMS_MQTT_PASSWORD": broker_password},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            seq = 0
            while proc.poll() is None and len(inbox) == 0 and seq < 300:
                edge.publish("telemetry", telemetry_topic(site, "e1"),
                             telemetry(site, "e1", seq, described[:1]))  # fmt: skip
                edge.publish("telemetry", telemetry_topic(site, "e2"),
                             telemetry(site, "e2", seq, described[1:]))  # fmt: skip
                seq += 1
                wait_until(lambda: len(inbox) >= 2, 0.2)
            assert wait_until(lambda: {m["device"] for m in inbox.messages()} >= {"e1", "e2"}, 30)
            proc.terminate()  # SIGTERM: a clean stop prints the counters
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    by_device = {m["device"]: m for m in inbox.messages()}
    assert [p["pack_id"] for p in by_device["e1"]["packs"]] == ["p0"]
    assert [p["pack_id"] for p in by_device["e2"]["packs"]] == ["p1"]  # p2 never reported
    manifest = json.loads((health_model_dir / MANIFEST_NAME).read_text())
    assert by_device["e1"]["model"] == manifest["model_version"]
    result = json.loads(out.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["packs_added"] == 2
    assert result["published"] >= 2
