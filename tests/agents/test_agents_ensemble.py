"""Ensembles of policies: averaging, member seeds, save/load, one exported ONNX graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pulsebms.agents.ensemble import (
    ENSEMBLE_FILE,
    EnsembleMember,
    EnsemblePolicy,
    load_ensemble_members,
    member_seeds,
    save_ensemble,
)
from pulsebms.agents.policy import ConstantPolicy, FunctionPolicy, SB3Policy
from pulsebms.export import load_source, parity_observations
from pulsebms.export.cli import main as export_main
from pulsebms.export.parity import onnx_actions
from pulsebms.export.testing import tiny_sb3_checkpoint

ENV_ID = "PulseBMS/FleetSmall-v0"
TWO_PACKS = {"fleet": [{"chemistry": "LFP"}, {"chemistry": "NMC"}]}


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny PPO members (seeds 0 and 1000), each behind its own VecNormalize."""
    root = tmp_path_factory.mktemp("ensemble")
    members = []
    for seed in member_seeds(0, 2):
        zip_path = tiny_sb3_checkpoint(
            root / f"run{seed}", env_kwargs=TWO_PACKS, total_timesteps=64, seed=seed
        )
        members.append(EnsembleMember(zip_path, zip_path.with_name("model_vecnormalize.pkl"), seed))
    save_ensemble(root / "ens", members, info={"label": "tiny"})
    return root / "ens"


def test_member_seeds_are_disjoint_between_training_seeds() -> None:
    assert member_seeds(0, 1) == [0]  # K = 1: the single agent
    assert member_seeds(1, 3) == [1, 1001, 2001]
    seen = [s for seed in range(3) for s in member_seeds(seed, 3)]
    assert len(set(seen)) == len(seen)
    with pytest.raises(ValueError, match="at least one"):
        member_seeds(0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        member_seeds(-1, 2)


def test_ensemble_acts_the_mean_of_its_members() -> None:
    obs = np.array([1.0, 2.0], dtype=np.float32)
    members = [
        FunctionPolicy(lambda o: np.array([o[0], -1.0])),
        FunctionPolicy(lambda o: np.array([o[1], 0.5])),
        ConstantPolicy([0.0, 0.2]),
    ]
    action = EnsemblePolicy(members).act(obs)
    assert action.dtype == np.float32
    np.testing.assert_allclose(action, [1.0, -0.1], atol=1e-7)
    assert len(EnsemblePolicy(members[2:])) == 1
    np.testing.assert_array_equal(EnsemblePolicy(members[2:]).act(obs), np.float32([0.0, 0.2]))
    with pytest.raises(ValueError, match="at least one"):
        EnsemblePolicy([])
    with pytest.raises(ValueError, match="different shapes"):
        EnsemblePolicy([ConstantPolicy([0.0]), ConstantPolicy([0.0, 1.0])]).act(obs)


def test_saved_ensemble_loads_and_averages_the_sb3_members(ensemble_dir: Path) -> None:
    members = load_ensemble_members(ensemble_dir)
    assert [m.seed for m in members] == [0, 1000]
    assert all(m.model.parent == ensemble_dir for m in members)  # self-contained copies
    doc = json.loads((ensemble_dir / ENSEMBLE_FILE).read_text())
    assert doc["label"] == "tiny"
    singles = [SB3Policy.load(m.model, m.vec_normalize) for m in members]
    ensemble = EnsemblePolicy.load(ensemble_dir / ENSEMBLE_FILE)
    rng = np.random.default_rng(0)
    obs = rng.normal(0.0, 1.0, size=(5, singles[0].model.observation_space.shape[0]))
    spread = 0.0
    for row in obs.astype(np.float32):
        acts = np.stack([p.act(row) for p in singles])
        np.testing.assert_allclose(ensemble.act(row), acts.mean(axis=0), atol=1e-6)
        spread = max(spread, float(np.ptp(acts, axis=0).max()))
    assert spread > 1e-3  # the members differ, so the mean is a real average


def test_broken_ensemble_files_are_clear_errors(tmp_path: Path, ensemble_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no ensemble"):
        load_ensemble_members(tmp_path)
    (tmp_path / ENSEMBLE_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="is not a pulsebms-ensemble"):
        load_ensemble_members(tmp_path)
    doc = json.loads((ensemble_dir / ENSEMBLE_FILE).read_text())
    doc["members"][1]["model"] = "gone.zip"
    (tmp_path / ENSEMBLE_FILE).write_text(json.dumps(doc))
    with pytest.raises(FileNotFoundError, match="missing"):
        load_ensemble_members(tmp_path)
    with pytest.raises(ValueError, match="at least one"):
        save_ensemble(tmp_path / "empty", [])


def test_export_gives_one_onnx_graph_of_the_averaged_actions(
    ensemble_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deploy"
    argv = [str(ensemble_dir), "--out", str(out), "--env-id", ENV_ID, "--n-parity", "50"]
    argv += ["--env-kwargs", json.dumps(TWO_PACKS)]
    assert export_main(argv) == 0  # the folder is detected as an ensemble
    assert json.loads(capsys.readouterr().out)["parity_max_abs_diff"] <= 1e-5
    source = json.loads((out / "manifest.json").read_text())["source"]
    assert (source["kind"], source["algorithm"]) == ("ensemble", "ensemble2xPPO")
    # onnxruntime on fresh observations == the mean of the members' own SB3 actions
    obs = parity_observations(load_source(ensemble_dir), 50, seed=7)
    got = onnx_actions((out / "policy.onnx").read_bytes(), obs)
    singles = [
        SB3Policy.load(m.model, m.vec_normalize) for m in load_ensemble_members(ensemble_dir)
    ]
    want = np.stack([[p.act(row) for row in obs] for p in singles]).mean(axis=0)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    one = np.stack([singles[0].act(row) for row in obs])
    assert float(np.abs(got - one).max()) > 1e-3  # not just member 0's graph
    pkl = str(ensemble_dir / "member0_vecnormalize.pkl")
    assert export_main([*argv, "--overwrite", "--vecnormalize", pkl]) == 2  # members' own
    assert "each member" in capsys.readouterr().err
