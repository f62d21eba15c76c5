"""``make demo``'s pipeline at smoke scale.

Env check, shielded PPO, KPI table, ONNX export, and the edge runtime against the twin on a
python-can ``virtual`` bus with observation parity.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pulsebms.experiments.demo import run_demo


@pytest.mark.slow
def test_demo_runs_every_stage_and_the_edge_reproduces_the_env(tmp_path: Path) -> None:
    report = run_demo(tmp_path / "demo", total_timesteps=2048, eval_seeds=(100,), hil_ticks=24)
    assert list(report.stages_s) == ["env", "train", "evaluate", "export", "edge"]
    figures = report.figures
    assert figures["env"]["check_fleet_env"] == "passed"
    assert Path(figures["train"]["checkpoint"]).is_file()
    assert (tmp_path / "demo" / "evaluation").is_dir()
    assert figures["export"]["parity_max_abs_diff"] < 1e-4
    edge = figures["edge"]
    assert edge["ticks"] == 24
    assert edge["telemetry_violations"] == 0
    assert edge["twin_violations"] == 0
    assert edge["parity_ok"], edge["parity"]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["figures"]["edge"]["parity_ok"] is True
