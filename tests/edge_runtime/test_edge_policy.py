"""The one OnnxPolicy: the edge's and evaluation's, its constructor forms and checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import constant_onnx

from pulsebms.edge_runtime.manifest import ModelIntegrityError, load_manifest
from pulsebms.edge_runtime.policy import OnnxPolicy, session_options


def test_evaluation_and_the_edge_share_one_class() -> None:
    from pulsebms.agents import OnnxPolicy as AgentsPackagePolicy
    from pulsebms.agents.policy import OnnxPolicy as AgentsPolicy
    from pulsebms.agents.type_aliases import Policy
    from pulsebms.edge_runtime import OnnxPolicy as EdgePackagePolicy

    assert AgentsPolicy is OnnxPolicy
    assert AgentsPackagePolicy is OnnxPolicy
    assert EdgePackagePolicy is OnnxPolicy
    assert isinstance(OnnxPolicy(constant_onnx(4, 2, 0.5)), Policy)


def test_session_options_are_stated() -> None:
    import onnxruntime as ort

    opts = session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(ValueError, match="intra_op_threads"):
        session_options(0)


def test_constructor_forms_agree(exported: Path) -> None:
    manifest = load_manifest(exported)
    model_path = exported.parent / manifest.model.file
    info = manifest.model
    policies = [
        OnnxPolicy(model_path),  # evaluation: a path, sizes and names from the graph
        OnnxPolicy(
            model_path.read_bytes(),
            info.observation_size,
            info.action_size,
            info.input_name,
            info.output_name,
        ),  # the edge: verified bytes and the manifest's sizes
        OnnxPolicy.from_manifest(exported),
        OnnxPolicy.from_manifest(manifest, model_path, warmup=False),
    ]
    obs = np.random.default_rng(0).uniform(-1, 1, (20, info.observation_size))
    first = np.stack([policies[0].act(o) for o in obs])
    assert first.shape == (20, info.action_size)
    assert first.dtype == np.float32
    for policy in policies[1:]:
        assert np.array_equal(np.stack([policy.act(o) for o in obs]), first)
    assert policies[0].observation_size == info.observation_size
    assert policies[0].action_size == info.action_size


def test_from_manifest_refuses_a_tampered_model(exported: Path, tmp_path: Path) -> None:
    manifest = json.loads(exported.read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "policy.onnx").write_bytes(
        constant_onnx(manifest["model"]["observation_size"], 3, 1.0)
    )
    with pytest.raises(ModelIntegrityError):
        OnnxPolicy.from_manifest(tmp_path / "manifest.json")


def test_sizes_and_names_are_checked() -> None:
    model = constant_onnx(4, 2, 0.5)
    with pytest.raises(ValueError, match="has 4 features, expected 5"):
        OnnxPolicy(model, 5, 2)
    with pytest.raises(ValueError, match="inputs"):
        OnnxPolicy(model, 4, 2, "obs", "action")
    with pytest.raises(ValueError, match="has 2 entries, expected 3"):
        OnnxPolicy(model, 4, 3)
    with pytest.raises(ValueError, match="observation has 3 entries"):
        OnnxPolicy(model).act(np.zeros(3))
    np.testing.assert_array_equal(OnnxPolicy(model).act(np.ones(4)), [0.5, 0.5])
