"""Manifest: load, validation errors, sha256 of the model and of the manifest's content."""

from __future__ import annotations

import json
from pathlib import Path

import can
import pytest
from edge_helpers import make_manifest

from pulsebms.edge_runtime import (
    EdgeRuntime,
    ManifestError,
    ManifestIntegrityError,
    ModelIntegrityError,
    load_manifest,
)
from pulsebms.edge_runtime.cli import main as edge_main
from pulsebms.edge_runtime.manifest import (
    MANIFEST_HASH_KEY,
    Manifest,
    canonical_json,
    manifest_sha256,
    sha256_bytes,
)


def _write(tmp_path: Path, model: bytes = b"onnx bytes") -> Path:
    manifest = make_manifest(sha256=sha256_bytes(model))
    (tmp_path / "policy.onnx").write_bytes(model)
    return manifest.save(tmp_path / "manifest.json")


def _rewrite(path: Path, data: dict, *, reseal: bool) -> None:  # type: ignore[type-arg]
    """Write edited JSON back; ``reseal`` records the new content hash (a deliberate edit)."""
    if reseal:
        data[MANIFEST_HASH_KEY] = manifest_sha256(data)
    path.write_text(json.dumps(data))


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
    _rewrite(path, data, reseal=True)
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
    _rewrite(path, data, reseal=True)  # past the content hash: the validation itself
    with pytest.raises(ManifestError, match=match):
        load_manifest(path)


def test_missing_or_garbage_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not readable JSON"):
        load_manifest(tmp_path / "bad.json")


def test_save_records_the_content_hash(tmp_path: Path) -> None:
    path = _write(tmp_path)
    data = json.loads(path.read_text())
    manifest = load_manifest(path)
    assert data[MANIFEST_HASH_KEY] == manifest_sha256(data) == manifest.content_sha256()
    assert len(data[MANIFEST_HASH_KEY]) == 64
    assert manifest.to_dict()[MANIFEST_HASH_KEY] == data[MANIFEST_HASH_KEY]
    # the hash is over the content, not the layout of the text: reformatting keeps it valid
    path.write_text(json.dumps(dict(reversed(list(data.items()))), separators=(",", ":")))
    assert load_manifest(path) == manifest


def test_canonical_json_is_stated() -> None:
    text = canonical_json(
        {"z": {"b": 1e-05, "a": 60.0}, "y": [1, -0.0, "µ"], MANIFEST_HASH_KEY: "x"}
    )
    assert text == '{"y":[1,-0.0,"\\u00b5"],"z":{"a":60.0,"b":1e-05}}'
    with pytest.raises(ManifestError, match="plain JSON"):
        canonical_json({"a": float("nan")})


def test_edited_limit_is_refused(tmp_path: Path) -> None:
    """A hand-raised temperature limit: valid content, but not what was exported."""
    path = _write(tmp_path)
    data = json.loads(path.read_text())
    data["limits"][1]["temperature_max_c"] = 600
    path.write_text(json.dumps(data, indent=2))
    with pytest.raises(ManifestIntegrityError, match="modified after export") as info:
        load_manifest(path)
    assert isinstance(info.value, ManifestError)
    assert isinstance(info.value, ModelIntegrityError)
    assert data[MANIFEST_HASH_KEY] in str(info.value)
    # the hash, not the validation, refuses it: the same content passes when not verified
    edited = Manifest.from_dict(data, verify=False)
    assert edited.limits[1]["temperature_max_c"] == 600.0


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["limits"][0].update(soc_max=1.0),
        lambda d: d["limits"][2].update(cell_voltage_max_v=d["limits"][2]["cell_voltage_max_v"]),
        lambda d: d["shield"].update(dt_s=1.0),
        lambda d: d["shield"].update(soc_margin=0.0),
        lambda d: d["ratings"]["rated_power_w"].__setitem__(0, 5000.0),
        lambda d: d["observation"][1].update(scale=40.0),
        lambda d: d.update(dt_s=60),  # 60.0 written as 60: an edit too
        lambda d: d["model"].update(input_name="obs"),
        lambda d: d["source"].update(path="/elsewhere/model.zip"),
        lambda d: d["versions"].update(pulsebms="9.9"),
        lambda d: d.update(created_utc="2027-01-01T00:00:00+00:00"),
        lambda d: d.update(note="an extra key"),
        lambda d: d.update({MANIFEST_HASH_KEY: "0" * 64}),
    ],
)
def test_any_edit_is_refused(tmp_path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path)
    data = json.loads(path.read_text())
    before = canonical_json(data)
    edit(data)
    if canonical_json(data) == before and data[MANIFEST_HASH_KEY] != "0" * 64:
        data["limits"][2]["cell_voltage_max_v"] += 1e-12  # the no-op edit, made real
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestIntegrityError, match="modified after export"):
        load_manifest(path)


def test_manifest_without_hash_must_be_re_exported(tmp_path: Path) -> None:
    """A schema-1 manifest (written before the hash existed) is refused, saying what to do."""
    path = _write(tmp_path)
    data = json.loads(path.read_text())
    data.pop(MANIFEST_HASH_KEY)
    data["schema_version"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestIntegrityError, match="re-export the policy with pulsebms-export"):
        load_manifest(path)
    with pytest.raises(ManifestIntegrityError, match="no manifest_sha256"):
        Manifest.from_dict(data)


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path)
    text = path.read_text()
    path.write_text(text.replace('"dt_s": 60.0,', '"dt_s": 60.0, "dt_s": 1.0,', 1))
    with pytest.raises(ManifestError, match="'dt_s' appears twice"):
        load_manifest(path)


def test_edited_export_refused_by_runtime_and_cli(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads(exported.read_text())
    data["limits"][0]["temperature_max_c"] = 600.0
    edited = tmp_path / "manifest.json"
    edited.write_text(json.dumps(data, indent=2, sort_keys=True))
    model = exported.parent / data["model"]["file"]
    bus = can.Bus(interface="virtual", channel="edited")
    try:
        with pytest.raises(ManifestIntegrityError):
            EdgeRuntime.from_files(edited, model, bus=bus)
    finally:
        bus.shutdown()
    argv = ["--manifest", str(edited), "--model", str(model), "--interface", "virtual"]
    assert edge_main([*argv, "--channel", "edited-cli", "--n-ticks", "1"]) == 1
    err = capsys.readouterr().err
    assert "refusing to start" in err
    assert "modified after export" in err
