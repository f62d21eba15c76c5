"""Export of SB3 checkpoints: parity, graph content, determinism, refusal, manifest."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pulsebms.edge_runtime.manifest import (
    MANIFEST_HASH_KEY,
    SCHEMA_VERSION,
    ManifestIntegrityError,
    load_manifest,
    manifest_sha256,
)
from pulsebms.export import (
    ExportError,
    ParityError,
    export_checkpoint,
    export_policy,
    fleet_spec_from_env,
    load_source,
    parity_observations,
)
from pulsebms.export.cli import main as export_main
from pulsebms.export.parity import onnx_actions
from pulsebms.export.sb3 import SB3Source
from pulsebms.safety.settings import ShieldSettings

ENV_ID = "PulseBMS/FleetSmall-v0"


@pytest.fixture(scope="module")
def fleet_spec():  # type: ignore[no-untyped-def]
    import gymnasium as gym

    import pulsebms.envs  # noqa: F401

    env = gym.make(ENV_ID)
    try:
        return fleet_spec_from_env(env)
    finally:
        env.close()


def test_parity_of_onnx_against_sb3(checkpoint: Path, tmp_path: Path) -> None:
    result = export_checkpoint(checkpoint, tmp_path, env_id=ENV_ID, n_parity=500)
    assert result.parity.passed
    assert result.parity.max_abs_diff <= 1e-5
    # Independent check on fresh observations, through the files on disk.
    source = load_source(checkpoint)
    obs = parity_observations(source, 200, seed=123)
    got = onnx_actions(result.model_path.read_bytes(), obs)
    want = source.predict(obs)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_graph_holds_normalisation_and_clipping(ppo_checkpoint: Path, tmp_path: Path) -> None:
    source = load_source(ppo_checkpoint)
    assert isinstance(source, SB3Source)
    assert source.vec_normalize is not None  # picked up beside the zip
    result = export_checkpoint(ppo_checkpoint, tmp_path, env_id=ENV_ID, n_parity=50)
    model = result.model_path.read_bytes()
    # Far outside the training distribution: VecNormalize's clip and the action clip act.
    extreme = np.full((4, source.observation_low.size), 1e4, dtype=np.float32)
    extreme[1] *= -1
    got = onnx_actions(model, extreme)
    assert np.all(got >= -1.0)
    assert np.all(got <= 1.0)
    np.testing.assert_allclose(got, source.predict(extreme), atol=1e-5, rtol=0)
    ops = {n.op_type for n in onnx.load_from_string(model).graph.node}
    assert {"Sub", "Div"} <= ops  # normalisation in the graph
    assert ops & {"Clip", "Max", "Min"}  # clipping in the graph


def test_export_is_deterministic(ppo_checkpoint: Path, tmp_path: Path) -> None:
    digests, manifests = [], []
    for name in ("a", "b"):
        result = export_checkpoint(
            ppo_checkpoint,
            tmp_path / name,
            env_id=ENV_ID,
            n_parity=20,
            created_utc="2026-12-02T00:00:00+00:00",
        )
        digests.append(hashlib.sha256(result.model_path.read_bytes()).hexdigest())
        manifests.append(json.loads(result.manifest_path.read_text())[MANIFEST_HASH_KEY])
    assert digests[0] == digests[1]
    assert manifests[0] == manifests[1]  # same inputs, same manifest content hash


class _TamperedSource:
    """Delegates to a real source but exports perturbed weights (an exporter bug)."""

    def __init__(self, inner: SB3Source) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def torch_policy(self) -> torch.nn.Module:
        module = copy.deepcopy(self._inner.torch_policy())
        with torch.no_grad():
            for param in module.parameters():
                param.add_(1e-2)
        return module


def test_parity_failure_refuses_and_writes_nothing(
    ppo_checkpoint: Path, tmp_path: Path, fleet_spec
) -> None:
    source = load_source(ppo_checkpoint)
    assert isinstance(source, SB3Source)
    out = tmp_path / "deploy"
    with pytest.raises(ParityError, match="parity check failed") as info:
        export_policy(_TamperedSource(source), fleet_spec, out, n_parity=100)  # type: ignore[arg-type]
    assert info.value.max_abs_diff > 1e-5
    assert not out.exists() or list(out.iterdir()) == []


def test_tight_tolerance_refuses(ppo_checkpoint: Path, tmp_path: Path) -> None:
    # float32 torch and onnxruntime differ in the last bits (≈6e-9 here): exactness refuses
    with pytest.raises(ParityError):
        export_checkpoint(ppo_checkpoint, tmp_path, env_id=ENV_ID, n_parity=50, tolerance=0.0)
    assert list(tmp_path.iterdir()) == []


def test_manifest_fields(ppo_checkpoint: Path, tmp_path: Path) -> None:
    result = export_checkpoint(
        ppo_checkpoint,
        tmp_path,
        env_id=ENV_ID,
        n_parity=20,
        shield={"derating_band_c": 4.0},
    )
    data = json.loads(result.manifest_path.read_text())
    assert data["model"]["sha256"] == hashlib.sha256(result.model_path.read_bytes()).hexdigest()
    assert data["source"]["kind"] == "sb3"
    assert data["source"]["algorithm"] == "PPO"
    assert data["source"]["sha256"] == hashlib.sha256(ppo_checkpoint.read_bytes()).hexdigest()
    assert data["source"]["normalization_sha256"]
    assert data["dt_s"] == 300.0
    # Every shield setting is recorded, the override and the defaults alike.
    assert data["shield"] == {
        "dt_s": 300.0,
        **ShieldSettings(derating_band_c=4.0).to_dict(),
    }
    assert {"pulsebms", "torch", "onnx", "opset"} <= set(data["versions"])
    assert data["created_utc"].endswith("+00:00")
    assert data["parity"]["max_abs_diff"] <= 1e-5
    names = [f["name"] for f in data["observation"]]
    assert names[:3] == ["soc", "soh", "temperature_c"]
    temp = next(f for f in data["observation"] if f["name"] == "temperature_c")
    assert temp["unit"] == "degC"
    assert temp["scale"] == 50.0
    assert temp["stop"] - temp["start"] == 3
    assert data["action"][0]["stop"] == 3
    assert data["action"][0]["unit"] == "1"
    assert data["ratings"]["chemistry"] == ["LFP", "NMC", "LCO"]
    assert len(data["limits"]) == 3
    assert data["limits"][0]["cell_voltage_max_v"] == 3.6  # LFP window, not NMC's
    manifest = load_manifest(result.manifest_path)  # the runtime reads what we wrote
    assert manifest.read_verified_model() == result.model_path.read_bytes()
    # the whole content is covered by the recorded hash, and the runtime checks it
    assert data["schema_version"] == SCHEMA_VERSION
    assert data[MANIFEST_HASH_KEY] == manifest_sha256(data) == manifest.content_sha256()
    assert result.manifest.content_sha256() == data[MANIFEST_HASH_KEY]
    data["limits"][0]["temperature_max_c"] = 600
    result.manifest_path.write_text(json.dumps(data, indent=2, sort_keys=True))
    with pytest.raises(ManifestIntegrityError, match="modified after export"):
        load_manifest(result.manifest_path)


def test_parity_on_no_observation_is_refused(
    ppo_checkpoint: Path, tmp_path: Path, fleet_spec
) -> None:
    """With a fleet spec nothing is recorded from an env: n_parity=0 would compare nothing."""
    with pytest.raises(ExportError, match="at least one observation"):
        export_checkpoint(ppo_checkpoint, tmp_path, fleet=fleet_spec, n_parity=0)
    with pytest.raises(ValueError, match="tolerance"):
        export_checkpoint(ppo_checkpoint, tmp_path, fleet=fleet_spec, tolerance=float("inf"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "bad",
    [["--n-parity", "-1"], ["--n-parity", "x"], ["--tolerance", "nan"], ["--tolerance", "-1"]],
)
def test_cli_bad_numbers_are_usage_errors(
    bad: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        export_main(["model.zip", "--out", str(tmp_path), "--env-id", ENV_ID, *bad])
    assert exc.value.code == 2
    assert f"argument {bad[0]}:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_export_is_not_overwritten(ppo_checkpoint: Path, tmp_path: Path) -> None:
    export_checkpoint(ppo_checkpoint, tmp_path, env_id=ENV_ID, n_parity=10)
    with pytest.raises(ExportError, match="already holds"):
        export_checkpoint(ppo_checkpoint, tmp_path, env_id=ENV_ID, n_parity=10)
    export_checkpoint(ppo_checkpoint, tmp_path, env_id=ENV_ID, n_parity=10, overwrite=True)


def test_layout_mismatch_is_refused(ppo_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="observes"):
        export_checkpoint(
            ppo_checkpoint,
            tmp_path,
            env_id=ENV_ID,
            env_kwargs={"forecast_steps": 2},
            n_parity=10,
        )
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_and_reports_errors(
    ppo_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fleet_spec
) -> None:
    fleet_json = tmp_path / "fleet.json"
    fleet_json.write_text(json.dumps(fleet_spec.to_dict()))
    out = tmp_path / "deploy"
    argv = [str(ppo_checkpoint), "--out", str(out), "--fleet", str(fleet_json), "--n-parity", "20"]
    assert export_main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["parity_max_abs_diff"] <= 1e-5
    written = json.loads((out / "manifest.json").read_text())
    assert printed["manifest_sha256"] == written[MANIFEST_HASH_KEY] == manifest_sha256(written)
    assert (out / "policy.onnx").is_file()
    assert (out / "manifest.json").is_file()
    assert export_main(argv) == 1  # exists: refused
    assert "already holds" in capsys.readouterr().err
    missing = [str(tmp_path / "nope.zip"), "--out", str(out), "--env-id", ENV_ID]
    assert export_main(missing) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        export_main([str(ppo_checkpoint), "--out", str(out)])  # no fleet given
    assert exc.value.code == 2


def test_layout_the_edge_cannot_fill_is_refused(ppo_checkpoint: Path, tmp_path: Path) -> None:
    import gymnasium as gym

    import pulsebms.envs  # noqa: F401

    env = gym.make("PulseBMS/FleetSite-v0")
    try:
        site_spec = fleet_spec_from_env(env)
    finally:
        env.close()
    out = tmp_path / "deploy"
    with pytest.raises(ExportError, match="grid_export_limit_w"):
        export_policy(load_source(ppo_checkpoint), site_spec, out)
    assert not out.exists() or list(out.iterdir()) == []
