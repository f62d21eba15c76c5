"""Fixtures of the export tests: tiny SB3 checkpoints trained on FleetSmall."""

from __future__ import annotations

from pathlib import Path

import pytest

from pulsebms.export.testing import tiny_sb3_checkpoint

ENV_ID = "PulseBMS/FleetSmall-v0"


@pytest.fixture(scope="module", params=["PPO", "SAC"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint (+ VecNormalize pickle) per algorithm."""
    out = tmp_path_factory.mktemp(f"ckpt_{request.param}")
    return tiny_sb3_checkpoint(out, algorithm=request.param, env_id=ENV_ID)


@pytest.fixture(scope="module")
def ppo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PPO checkpoint (+ VecNormalize pickle)."""
    return tiny_sb3_checkpoint(tmp_path_factory.mktemp("ckpt_ppo"), env_id=ENV_ID)
