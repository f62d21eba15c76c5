"""Tiny-budget smoke runs of the Hydra entry points (train, eval, multirun) in a tmp dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = [
    "experiment=quick",
    "env.horizon_steps=8",
    "train.total_timesteps=64",
    "agent.n_steps=32",
    "agent.batch_size=32",
    "agent.n_epochs=1",
    "train.n_envs=1",
    "train.eval_freq=32",
    "train.checkpoint_freq=32",
    "train.progress_bar=false",
    "evaluation.seeds=[0]",
]


def _run(module: str, args: list[str], cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", f"pulsebms.experiments.{module}", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "error::DeprecationWarning"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    run = tmp / "run"
    _run(
        "train",
        [*TINY, "evaluation.baselines=[rule_soc,mpc]", "logger=csv", f"hydra.run.dir={run}"],
        tmp,
    )
    return run


def test_train_writes_config_checkpoints_metrics_plots(trained_run: Path) -> None:
    run = trained_run
    assert (run / ".hydra" / "config.yaml").is_file()
    assert "experiment_name: quick" in (run / "config_resolved.yaml").read_text()
    assert (run / "model.zip").is_file()
    assert (run / "model_vecnormalize.pkl").is_file()
    assert any((run / "checkpoints").glob("*.zip"))
    assert (run / "eval" / "evaluations.npz").is_file()
    assert (run / "progress.csv").is_file()
    for name in ("kpis.csv", "kpis.md", "kpis_episodes.csv", "plots/kpis.png"):
        assert (run / name).is_file(), name
    assert (run / "plots" / "trace_ppo.png").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert {r["policy"] for r in metrics["kpis"]} == {"ppo", "rule_soc", "mpc", "no_battery"}


def test_eval_compares_checkpoint_mpc_oracle_and_rules(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    _run(
        "evaluate",
        [
            *TINY,
            f"evaluation.checkpoint={trained_run / 'model.zip'}",
            "evaluation.baselines=[rule_equal,rule_soc,rule_health,mpc,mpc_oracle]",
            "logger=none",
            f"hydra.run.dir={out}",
        ],
        tmp_path,
    )
    table = (out / "kpis.md").read_text()
    for name in ("ppo", "rule_equal", "rule_soc", "rule_health", "mpc", "mpc_oracle"):
        assert f"| {name} |" in table


def test_multirun_sweeps_agents_and_seeds(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _run(
        "train",
        [
            "-m",
            "agent=rule_soc,mpc",
            "seed=0,1",
            "env.horizon_steps=4",
            "evaluation.seeds=[0]",
            "evaluation.baselines=[rule_equal]",
            "evaluation.baseline=rule_equal",
            "evaluation.plots=false",
            "train.progress_bar=false",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name != ".hydra")
    assert runs == ["mpc_seed0", "mpc_seed1", "rule_soc_seed0", "rule_soc_seed1"]
    for run in runs:
        assert (sweep / run / "kpis.csv").is_file()


def test_bad_input_fails_before_work_naming_the_field(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pulsebms.experiments.train",
            "fleet.packs.0.chemistry=NaS",
            f"hydra.run.dir={tmp_path / 'bad'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "WANDB_MODE": "disabled"},
        timeout=300,
    )
    assert proc.returncode != 0
    assert "fleet.packs[0].chemistry" in proc.stderr
    assert not (tmp_path / "bad" / "model.zip").exists()
