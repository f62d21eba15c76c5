"""Manifest: load, validation errors, sha256 verification of the model."""

from __future__ import annotations

import json
from pathlib import Path

import can
import pytest
from edge_helpers import make_manifest

from pulsebms.edge_runtime import EdgeRuntime, ManifestError, ModelIntegrityError, load_manifest
from pulsebms.edge_runtime.cli import main as edge_main
from pulsebms.edge_runtime.manifest import sha256_bytes


def _write(tmp_path: Path, model: bytes = b"onnx bytes") -> Path:
    manifest = make_manifest(sha256=sha256_bytes(model))
    (tmp_path / "policy.onnx").write_bytes(model)
    return manifest.save(tmp_path / "manifest.json")


def test_round_trip_and_verified_model(tmp_path: Path) -> None:
    path = _write(tmp_path)
    manifest = load_manifest(path)
    assert manifest == make_manifest(sha256=manifest.model.sha256)
    assert manifest.read_verified_model() == b"onnx bytes"
    assert len(manifest.pack_limits()) == 3
    assert manifest.pack_ratings().n_packs == 3


def test_manifest_written_before_the_core_layout_reads(tmp_path: Path) -> None:
    path = _write(tmp_path)
    data = json.loads(path.read_text())
    data.pop("pack_names")
    for f in data["observation"]:
        f.pop("description")  # the former ObservationField had none
    path.write_text(json.dumps(data))
    manifest = load_manifest(path)
    assert manifest.observation.fields == make_manifest().observation.fields
    assert manifest.observation.pack_names == ()


def test_tampered_model_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path)
    (tmp_path / "policy.onnx").write_bytes(b"onnx bytez")
    with pytest.raises(ModelIntegrityError, match="refusing to run"):
        load_manifest(path).read_verified_model()


def test_exported_tampered_model_refused_by_runtime_and_cli(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = bytearray((exported.parent / "policy.onnx").read_bytes())
    model[-1] ^= 0x01
    tampered = tmp_path / "policy.onnx"
    tampered.write_bytes(bytes(model))
    bus = can.Bus(interface="virtual", channel="tamper")
    try:
        with pytest.raises(ModelIntegrityError):
            EdgeRuntime.from_files(exported, tampered, bus=bus)
    finally:
        bus.shutdown()
    argv = ["--manifest", str(exported), "--model", str(tampered), "--interface", "virtual"]
    assert edge_main([*argv, "--channel", "tamper-cli", "--n-ticks", "1"]) == 1
    assert "sha256" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.pop("model"), "malformed"),
        (lambda d: d.update(schema_version=99), "schema_version"),
        (lambda d: d["limits"].pop(), "limit entries"),
        (lambda d: d["observation"][0].update(source="nonsense"), "unknown source"),
        (lambda d: d["observation"][1].update(start=4), "expected it to start"),
        (lambda d: d["limits"][0].update(soc_min=0.99), "soc_min"),
        (lambda d: d["model"].update(action_size=2), "action layout"),
    ],
)
def test_invalid_manifest_is_refused(tmp_path: Path, edit, match: str) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=match):
        load_manifest(path)


def test_missing_or_garbage_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not readable JSON"):
        load_manifest(tmp_path / "bad.json")
