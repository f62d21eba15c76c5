"""Fixtures of the HIL tests: a tiny exported policy and manifests that lie about it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# The edge-runtime tests' helpers (``constant_onnx``) are shared, not copied.
_EDGE_TESTS = str(Path(__file__).resolve().parents[1] / "edge_runtime")
if _EDGE_TESTS not in sys.path:
    sys.path.insert(0, _EDGE_TESTS)

ENV_ID = "PulseBMS/FleetSmall-v0"


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PPO on FleetSmall, exported; returns the manifest path."""
    from pulsebms.export import export_checkpoint
    from pulsebms.export.testing import tiny_sb3_checkpoint

    ckpt = tiny_sb3_checkpoint(tmp_path_factory.mktemp("hil_ckpt"))
    out = tmp_path_factory.mktemp("hil_deploy")
    export_checkpoint(ckpt, out, env_id=ENV_ID, n_parity=50)
    return out / "manifest.json"


@pytest.fixture
def variant(exported: Path, tmp_path: Path) -> Callable[..., Path]:
    """Write a changed copy of the export: ``variant(edit, model=None) -> manifest path``.

    ``edit`` changes the manifest's JSON in place; ``model`` replaces the ONNX bytes (the
    manifest's sha256 follows, and :meth:`Manifest.save` records the new content hash, so
    the runtime accepts the pair).
    """
    from pulsebms.edge_runtime.manifest import Manifest, sha256_bytes

    def make(edit: Callable[[dict[str, Any]], None], model: bytes | None = None) -> Path:
        manifest = json.loads(exported.read_text())
        edit(manifest)
        data = model if model is not None else (exported.parent / "policy.onnx").read_bytes()
        manifest["model"]["sha256"] = sha256_bytes(data)
        (tmp_path / "policy.onnx").write_bytes(data)
        return Manifest.from_dict(manifest, verify=False).save(tmp_path / "manifest.json")

    return make
