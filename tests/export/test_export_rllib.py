"""Export of RLlib checkpoints: parity with RLlibPolicy.predict, graph content, manifest, CLI."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from pulsebms.edge_runtime.manifest import load_manifest
from pulsebms.export import (
    ParityError,
    export_checkpoint,
    export_policy,
    fleet_spec_from_env,
    load_source,
    parity_observations,
)
from pulsebms.export.cli import main as export_main
from pulsebms.export.parity import onnx_actions
from pulsebms.export.source import checkpoint_sha256, detect_kind

pytestmark = [
    # RLlib's SingleAgentEnvRunner re-registers its gymnasium wrapper id on every env
    # creation; with another RLlib test module in the same process gymnasium warns.
    pytest.mark.filterwarnings(
        "ignore:.*Overriding environment rllib-single-agent-env-v0 already in registry:UserWarning"
    ),
]

ENV_ID = "PulseBMS/FleetSmall-v0"
ENV_KWARGS = {"horizon_steps": 32}
ATOL = 1e-5


def _files_sha256(root: Path) -> str:
    """The documented directory hash, written independently of the exporter's code."""
    lines = b""
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix().encode()):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(root).as_posix()
            lines += f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {rel}\n".encode()
    return hashlib.sha256(lines).hexdigest()


@pytest.fixture(scope="module")
def rllib_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PPO checkpoint: 1 iteration of 64 steps, trained behind MeanStdFilter."""
    from pulsebms.agents.rllib import build_rllib_algorithm, ray_session, train_rllib

    out = tmp_path_factory.mktemp("rllib_ckpt")
    with ray_session(num_cpus=2, temp_dir=tmp_path_factory.mktemp("ray")):
        algo = build_rllib_algorithm(
            ENV_ID,
            env_kwargs=ENV_KWARGS,
            seed=0,
            train_batch_size=64,
            minibatch_size=32,
            num_epochs=1,
            hidden_sizes=(16, 16),
        )
        try:
            run = train_rllib(algo, iterations=1, checkpoint_dir=out / "ckpt")
        finally:
            algo.stop()
    return run.checkpoint_path


@pytest.fixture(scope="module")
def reference(rllib_checkpoint: Path):  # type: ignore[no-untyped-def]
    from pulsebms.agents.rllib import RLlibPolicy

    return RLlibPolicy.from_checkpoint(rllib_checkpoint)


# ---------------------------------------------------------------- fast: no training


def test_rllib_directory_is_detected(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(ValueError, match="RLlib algorithm checkpoint directory"):
        detect_kind(ckpt)
    (ckpt / "rllib_checkpoint.json").write_text("{}")
    assert detect_kind(ckpt) == "rllib"


def test_incomplete_rllib_directory_names_what_is_missing(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "rllib_checkpoint.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not an RLlib"):
        load_source(ckpt)
    assert export_main([str(ckpt), "--out", str(tmp_path / "o"), "--env-id", ENV_ID]) == 2
    assert not (tmp_path / "o").exists()


def test_vecnormalize_is_refused_for_rllib(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "rllib_checkpoint.json").write_text("{}")
    with pytest.raises(ValueError, match="only for SB3"):
        load_source(ckpt, tmp_path / "vecnormalize.pkl")


def test_directory_sha256_is_the_documented_listing_hash(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.json").write_text("{}")
    (root / "sub" / "state.pkl").write_bytes(b"\x00\x01")
    (root / "sub" / "deeper" / "w.pt").write_bytes(b"weights")
    (root / "link").symlink_to(root / "a.json")
    listing = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {rel}\n"
        for rel, data in [
            ("a.json", b"{}"),
            ("sub/deeper/w.pt", b"weights"),
            ("sub/state.pkl", b"\x00\x01"),
        ]
    )
    digest = checkpoint_sha256(root)
    assert digest == hashlib.sha256(listing.encode()).hexdigest()
    assert digest == _files_sha256(root)
    (root / "empty" / "more").mkdir()  # directories alone do not count
    assert checkpoint_sha256(root) == digest
    (root / "sub" / "state.pkl").write_bytes(b"\x00\x02")  # content counts
    assert checkpoint_sha256(root) != digest
    (root / "sub" / "state.pkl").write_bytes(b"\x00\x01")
    (root / "sub" / "state.pkl").rename(root / "sub" / "state2.pkl")  # names count
    assert checkpoint_sha256(root) != digest
    assert checkpoint_sha256(root / "a.json") == hashlib.sha256(b"{}").hexdigest()


def test_export_package_does_not_import_ray() -> None:
    code = (
        "import sys, pulsebms.export, pulsebms.export.cli, pulsebms.export.exporter; "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------- slow: real training


@pytest.mark.slow
def test_onnx_matches_rllib_predict(rllib_checkpoint: Path, reference, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import ray

    result = export_checkpoint(rllib_checkpoint, tmp_path, env_id=ENV_ID, env_kwargs=ENV_KWARGS)
    assert result.parity.passed
    assert result.parity.max_abs_diff <= ATOL
    assert result.parity.n_observations > 1000  # sampled + recorded from the env
    assert not ray.is_initialized()  # loading and exporting need no Ray runtime
    # Independently, through the file on disk, against RLlibPolicy.predict itself.
    source = load_source(rllib_checkpoint)
    assert source.kind == "rllib"
    obs = parity_observations(source, 500, seed=123)
    got = onnx_actions(result.model_path.read_bytes(), obs)
    np.testing.assert_allclose(got, reference.predict(obs), atol=ATOL, rtol=0)
    one = obs[:1]
    np.testing.assert_allclose(got[:1], reference.act(one[0])[None], atol=ATOL, rtol=0)


@pytest.mark.slow
def test_graph_holds_filter_deterministic_action_and_clipping(
    rllib_checkpoint: Path, reference, tmp_path: Path
) -> None:
    result = export_checkpoint(
        rllib_checkpoint, tmp_path, env_id=ENV_ID, env_kwargs=ENV_KWARGS, n_parity=50
    )
    model = result.model_path.read_bytes()
    graph = onnx.load_from_string(model).graph
    ops = {n.op_type for n in graph.node}
    assert {"Sub", "Div"} <= ops  # MeanStdFilter in the graph
    assert ops & {"Clip", "Max", "Min"}  # observation and action clipping in the graph
    assert not ops & {"RandomNormal", "RandomNormalLike"}  # the mean, no sampling
    stats = reference.observation_stats()
    assert stats is not None  # trained behind MeanStdFilter
    consts = [numpy_helper.to_array(t) for t in graph.initializer]
    assert any(c.shape == stats[0].shape and np.array_equal(c, stats[0]) for c in consts)
    # Far outside the training distribution: the filter's clip and the action clip act.
    extreme = np.full((4, stats[0].size), 1e4, dtype=np.float32)
    extreme[1] *= -1
    extreme[2, ::2] *= -1
    got = onnx_actions(model, extreme)
    assert np.all(np.abs(got) <= 1.0)
    np.testing.assert_allclose(got, reference.predict(extreme), atol=ATOL, rtol=0)
    # Same checkpoint, same bytes.
    again = export_checkpoint(
        rllib_checkpoint, tmp_path / "again", env_id=ENV_ID, env_kwargs=ENV_KWARGS, n_parity=10
    )
    assert again.model_path.read_bytes() == model


@pytest.mark.slow
def test_graph_normalises_as_the_runners_vector_step_filter(
    rllib_checkpoint: Path, reference, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The default filter's checkpoint normalises in ONNX as the runner's own filter does.

    ONNX on raw observations against the module on the observations the checkpoint's
    runner filter (frozen) normalised.
    """
    from ray.rllib.connectors.connector_v2 import ConnectorV2
    from ray.rllib.core import COMPONENT_ENV_RUNNER, COMPONENT_ENV_TO_MODULE_CONNECTOR
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    from pulsebms.agents.rllib import RLlibPolicy
    from pulsebms.agents.rllib_vector_filter import VectorStepMeanStdFilter

    pipeline = ConnectorV2.from_checkpoint(
        (rllib_checkpoint / COMPONENT_ENV_RUNNER / COMPONENT_ENV_TO_MODULE_CONNECTOR).as_posix()
    )
    (trained,) = [p for p in pipeline.connectors if isinstance(p, VectorStepMeanStdFilter)]
    frozen = VectorStepMeanStdFilter(update_stats=False)
    frozen.input_observation_space = trained.input_observation_space
    frozen.input_action_space = trained.input_action_space
    frozen.set_state(trained.get_state())
    obs = parity_observations(load_source(rllib_checkpoint), 64, seed=5)
    episodes = []
    for row in obs:
        episode = SingleAgentEpisode(observation_space=frozen.input_observation_space)
        episode.add_env_reset(observation=row)
        episodes.append(episode)
    frozen(rl_module=None, batch={}, episodes=episodes)
    normalised = np.stack([e.get_observations(-1) for e in episodes])
    assert not np.allclose(normalised, obs)  # the statistics do something
    module_only = RLlibPolicy(
        reference.module,
        action_space=reference.action_space,
        observation_space=reference.observation_space,
        observation_filter=None,
        normalize_actions=reference.normalize_actions,
        clip_actions=reference.clip_actions,
    )
    result = export_checkpoint(
        rllib_checkpoint, tmp_path, env_id=ENV_ID, env_kwargs=ENV_KWARGS, n_parity=20
    )
    got = onnx_actions(result.model_path.read_bytes(), obs)
    np.testing.assert_allclose(got, module_only.predict(normalised), atol=ATOL, rtol=0)


@pytest.mark.slow
def test_manifest_records_the_rllib_checkpoint(rllib_checkpoint: Path, tmp_path: Path) -> None:
    result = export_checkpoint(
        rllib_checkpoint, tmp_path, env_id=ENV_ID, env_kwargs=ENV_KWARGS, n_parity=20
    )
    data = json.loads(result.manifest_path.read_text())
    assert data["source"]["kind"] == "rllib"
    assert data["source"]["algorithm"] == "PPO"
    assert data["source"]["path"] == str(rllib_checkpoint.resolve())
    assert data["source"]["sha256"] == _files_sha256(rllib_checkpoint)
    assert data["source"]["normalization_path"] is None
    assert data["source"]["normalization_sha256"] is None
    assert data["versions"]["ray"] not in ("", "not installed")
    assert data["model"]["observation_size"] == 28
    assert data["model"]["action_size"] == 3
    assert data["parity"]["max_abs_diff"] <= ATOL
    manifest = load_manifest(result.manifest_path)  # the runtime reads what we wrote
    assert manifest.read_verified_model() == result.model_path.read_bytes()


class _TamperedSource:
    """Delegates to a real source but exports perturbed weights (an exporter bug)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def torch_policy(self) -> torch.nn.Module:
        module = copy.deepcopy(self._inner.torch_policy())  # type: ignore[attr-defined]
        with torch.no_grad():
            for param in module.parameters():
                param.add_(1e-2)
        return module


@pytest.mark.slow
def test_parity_failure_refuses_and_writes_nothing(rllib_checkpoint: Path, tmp_path: Path) -> None:
    import gymnasium as gym

    import pulsebms.envs  # noqa: F401

    env = gym.make(ENV_ID, **ENV_KWARGS)
    try:
        fleet = fleet_spec_from_env(env)
    finally:
        env.close()
    out = tmp_path / "deploy"
    source = load_source(rllib_checkpoint)
    with pytest.raises(ParityError, match="rllib PPO") as info:
        export_policy(_TamperedSource(source), fleet, out, n_parity=100)  # type: ignore[arg-type]
    assert info.value.max_abs_diff > ATOL
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.slow
def test_cli_exports_a_checkpoint_directory(
    rllib_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deploy"
    argv = [
        str(rllib_checkpoint),
        "--out",
        str(out),
        "--env-id",
        ENV_ID,
        "--env-kwargs",
        json.dumps(ENV_KWARGS),
        "--n-parity",
        "50",
    ]
    assert export_main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["parity_max_abs_diff"] <= ATOL
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "rllib"
    assert printed["sha256"] == manifest["model"]["sha256"]
    vecnorm = tmp_path / "vecnormalize.pkl"
    vecnorm.write_bytes(b"")
    with_vecnormalize = [
        str(rllib_checkpoint),
        *("--out", str(tmp_path / "x"), "--env-id", ENV_ID, "--vecnormalize", str(vecnorm)),
    ]
    assert export_main(with_vecnormalize) == 2
    assert "only for SB3" in capsys.readouterr().err
