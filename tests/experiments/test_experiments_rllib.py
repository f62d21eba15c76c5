"""RLlib agents from Hydra: config group ``ray``, train → eval → export round trip, multirun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra.utils import instantiate
from hydra_helpers import compose_config
from omegaconf import open_dict

from pulsebms.agents.rllib_config import RaySettings, RllibPPOConfig, RllibSACConfig
from pulsebms.experiments.common import ConfigError
from pulsebms.experiments.schemas import register_configs

register_configs()

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*Overriding environment rllib-single-agent-env-v0 already in registry:UserWarning"
)

# Two 8-step episodes per PPO iteration; evaluation on one rule baseline, no plots.
TINY = [
    "env.horizon_steps=8",
    "env.dt_s=900.0",
    "train.total_timesteps=32",
    "train.progress_bar=false",
    "evaluation.seeds=[0]",
    "evaluation.baselines=[rule_soc]",
    "evaluation.plots=false",
    "logger=none",
]
TINY_PPO = [
    "agent.train_batch_size=16",
    "agent.minibatch_size=16",
    "agent.num_epochs=1",
    "agent.hidden_sizes=[8,8]",
]
TINY_SAC = [
    "agent.train_batch_size=16",
    "agent.learning_starts=16",
    "agent.buffer_capacity=512",
    "agent.hidden_sizes=[8,8]",
]


# ---------------------------------------------------------------- fast: composition only


@pytest.mark.usefixtures("hydra_ctx")
def test_rllib_options_instantiate_to_the_library_configs() -> None:
    ppo = instantiate(compose_config("agent=rllib_ppo").agent, _convert_="object")
    sac = instantiate(compose_config("agent=rllib_sac").agent, _convert_="object")
    assert isinstance(ppo, RllibPPOConfig)
    assert ppo == RllibPPOConfig(hidden_sizes=[64, 64])
    assert isinstance(sac, RllibSACConfig)
    assert sac.prioritized_replay
    assert sac.algorithm == "SAC"


@pytest.mark.usefixtures("hydra_ctx")
@pytest.mark.parametrize(
    ("overrides", "address", "joins"),
    [
        ((), None, False),
        (("ray.address=local",), "local", False),
        (("ray.address=auto",), "auto", True),
        (("ray.address=10.0.0.5:6379",), "10.0.0.5:6379", True),
        (("ray=cluster",), "auto", True),
    ],
)
def test_ray_group_selects_where_ray_runs(
    overrides: tuple[str, ...], address: str | None, joins: bool
) -> None:
    from pulsebms.experiments.train import ray_settings

    settings = ray_settings(compose_config("agent=rllib_ppo", *overrides))
    assert isinstance(settings, RaySettings)
    assert settings.address == address
    assert settings.joins_cluster is joins
    assert settings.include_dashboard is False
    assert settings.metrics is False  # Ray's own metrics collection off by default
    assert settings.task_events is False  # and its task events
    # RLlib's eager update with torch's fused Adam unless asked otherwise (other rounding);
    # the cluster preset, made for long runs, compiles the PPO Learner's update.
    assert settings.torch_compile_learner is (overrides == ("ray=cluster",))
    assert settings.fused_adam is True


@pytest.mark.usefixtures("hydra_ctx")
def test_ray_metrics_can_be_turned_back_on() -> None:
    from pulsebms.experiments.train import ray_settings

    assert ray_settings(compose_config("agent=rllib_ppo", "ray.metrics=true")).metrics is True
    on = ray_settings(compose_config("agent=rllib_ppo", "ray.task_events=true"))
    assert on.task_events is True


@pytest.mark.usefixtures("hydra_ctx")
@pytest.mark.parametrize(
    ("overrides", "compiled"),
    [
        (("agent=rllib_ppo",), False),
        (("agent=rllib_ppo", "ray=cluster"), True),
        (("agent=rllib_ppo_lagrangian", "ray=cluster"), True),
        (("agent=rllib_ppo", "ray=cluster", "ray.torch_compile_learner=false"), False),
        # SAC's Learner is RLlib's own: the cluster preset serves it eagerly.
        (("agent=rllib_sac", "ray=cluster"), False),
        (("agent=rllib_sac", "ray.torch_compile_learner=true", "ray.fused_adam=true"), False),
        (("agent=rllib_ppo", "ray.fused_adam=false"), False),
    ],
)
def test_learner_speed_options_reach_the_ppo_learners_only(
    overrides: tuple[str, ...], compiled: bool
) -> None:
    from hydra.utils import instantiate

    from pulsebms.experiments.train import learner_speed_options, ray_settings

    cfg = compose_config(*overrides)
    agent = instantiate(cfg.agent, _convert_="object")  # as pulsebms-train does
    options = learner_speed_options(ray_settings(cfg), agent)
    assert options["torch_compile_learner"] is compiled
    # Fused Adam is the PPO Learners' default (ray.fused_adam=false: RLlib's foreach step);
    # SAC keeps RLlib's Adam whatever the group says.
    ppo = "agent=rllib_sac" not in overrides
    assert options["fused_adam"] is (ppo and "ray.fused_adam=false" not in overrides)


@pytest.mark.usefixtures("hydra_ctx")
def test_learner_speed_options_compose() -> None:
    from pulsebms.experiments.train import ray_settings

    settings = ray_settings(
        compose_config("agent=rllib_ppo", "ray.torch_compile_learner=true", "ray.fused_adam=false")
    )
    assert settings.torch_compile_learner is True
    assert settings.fused_adam is False


@pytest.mark.usefixtures("hydra_ctx")
def test_impossible_ray_setting_names_the_group() -> None:
    from pulsebms.experiments.train import ray_settings

    with pytest.raises(ConfigError, match=r"ray: .*num_envs_per_env_runner"):
        ray_settings(compose_config("ray.num_envs_per_env_runner=0"))


def test_eval_rejects_a_path_of_no_known_kind(tmp_path: Path) -> None:
    from pulsebms.experiments.evaluate import load_checkpoint_policy

    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"neither an SB3 \.zip nor an RLlib"):
        load_checkpoint_policy(tmp_path / "model.pt")
    with pytest.raises(ConfigError, match="nothing at"):
        load_checkpoint_policy(tmp_path / "missing.zip")
    with pytest.raises(ConfigError, match="not an RLlib"):
        load_checkpoint_policy(tmp_path)  # a folder, but no checkpoint


@pytest.mark.usefixtures("hydra_ctx")
def test_eval_finds_the_newest_rllib_run(tmp_path: Path) -> None:
    from pulsebms.experiments.evaluate import latest_checkpoint

    cfg = compose_config("agent=rllib_sac")
    for stamp, kind in (("2026-01-01_10-00-00", "rllib"), ("2026-01-02_09-00-00", "rllib")):
        ckpt = tmp_path / "small" / "default" / f"rllib_sac_seed0_{stamp}" / "rllib_checkpoint"
        ckpt.mkdir(parents=True)
        (ckpt / "rllib_checkpoint.json").write_text("{}")
        assert kind == "rllib"
    found = latest_checkpoint(cfg, tmp_path)
    assert found is not None
    assert found.name == "rllib_checkpoint"
    assert found.parent.name.endswith("2026-01-02_09-00-00")


# ---------------------------------------------------------------- slow: real Ray, real training


@pytest.mark.slow
@pytest.mark.usefixtures("hydra_ctx")
def test_train_eval_export_round_trip(tmp_path: Path) -> None:
    import ray

    from pulsebms.experiments.evaluate import run_evaluation
    from pulsebms.experiments.train import run_training
    from pulsebms.export import export_checkpoint

    temp = Path("/tmp") / f"pb-rt-{os.getpid()}"  # Ray's socket paths must stay short
    cfg = compose_config("agent=rllib_ppo", *TINY, *TINY_PPO, f"ray.temp_dir={temp}")
    try:
        result = run_training(cfg, tmp_path / "train")
        # ray.metrics (false by default) reached the local Ray the training ran on: its
        # raylet started with metrics collection off.
        raylet_logs = list(temp.glob("session_*/logs/raylet.out"))
        assert raylet_logs
        assert all("Disabled stats" in log.read_text() for log in raylet_logs)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert not ray.is_initialized()  # the session was shut down
    ckpt = Path(result["model_path"])
    assert ckpt == tmp_path / "train" / "rllib_checkpoint"
    assert (ckpt / "rllib_checkpoint.json").is_file()
    assert result["rllib_env_steps"] >= 32
    assert (tmp_path / "train" / "progress.csv").read_text().startswith("iteration,")
    train_rows = {r["policy"]: r for r in result["kpis"]}
    assert set(train_rows) == {"rllib_ppo", "rule_soc", "no_battery"}

    with open_dict(cfg):
        cfg.evaluation.checkpoint = str(ckpt)
    rows = {r["policy"]: r for r in run_evaluation(cfg, tmp_path / "eval")}
    # The same KPI table as for SB3 agents: every column of the rule's row, for the agent.
    assert set(rows) == {"rllib_ppo", "rule_soc", "no_battery"}
    assert set(rows["rllib_ppo"]) == set(rows["rule_soc"])
    # The checkpoint evaluated from disk is the policy trained in the run (deterministic).
    for key, value in train_rows["rllib_ppo"].items():
        if isinstance(value, float):
            np.testing.assert_allclose(rows["rllib_ppo"][key], value, rtol=1e-9, err_msg=key)
    assert "| rllib_ppo |" in (tmp_path / "eval" / "kpis.md").read_text()

    exported = export_checkpoint(
        ckpt,
        tmp_path / "deploy",
        env_id=str(cfg.env.id),
        env_kwargs={"horizon_steps": 8, "dt_s": 900.0},
        n_parity=64,
    )
    assert exported.parity.max_abs_diff <= 1e-5
    manifest = json.loads(exported.manifest_path.read_text())
    assert "PPO" in json.dumps(manifest)


def _run_train(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pulsebms.experiments.train", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={
            **os.environ,
            "WANDB_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
        },
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_multirun_trains_rllib_ppo_and_sac(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    temp = Path("/tmp") / f"pb-mr-{os.getpid()}"
    # Hydra checks sweep-wide overrides against the default agent, so agent fields stay at
    # their defaults: one PPO iteration of 2304 steps; SAC samples 128 steps, not yet learning.
    output = _run_train(
        [
            "-m",
            "agent=rllib_ppo,rllib_sac",
            *TINY,
            "train.total_timesteps=128",
            f"ray.temp_dir={temp}",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    shutil.rmtree(temp, ignore_errors=True)
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name != ".hydra")
    assert runs == ["rllib_ppo_seed0", "rllib_sac_seed0"]
    for run in runs:
        metrics: dict[str, Any] = json.loads((sweep / run / "metrics.json").read_text())
        assert metrics["rllib_algorithm"] == run.split("_")[1].upper()
        assert (sweep / run / "rllib_checkpoint" / "rllib_checkpoint.json").is_file()
    # Quiet logs: no RLlib deprecation chatter, no Ray start-up banner, no dashboard.
    assert "DeprecationWarning" not in output
    assert "deprecat" not in output.lower()
    assert "dashboard" not in output.lower()


@pytest.mark.usefixtures("hydra_ctx")
def test_rllib_ppo_lagrangian_trains_and_exports_from_hydra(tmp_path: Path) -> None:
    """agent=rllib_ppo_lagrangian: the config-hook seam turns RLlib PPO into PPO-Lag."""
    import ray

    from pulsebms.agents.lagrangian import RllibPPOLagrangianConfig
    from pulsebms.experiments.train import run_training
    from pulsebms.export import export_checkpoint

    cfg = compose_config("agent=rllib_ppo_lagrangian", "agent.cost_limit=0.0", *TINY, *TINY_PPO)
    agent = instantiate(cfg.agent, _convert_="object")
    assert isinstance(agent, RllibPPOLagrangianConfig)
    assert agent.cost_limit == 0.0
    temp = Path("/tmp") / f"pb-lag-{os.getpid()}"
    cfg = compose_config("agent=rllib_ppo_lagrangian", *TINY, *TINY_PPO, f"ray.temp_dir={temp}")
    try:
        result = run_training(cfg, tmp_path / "train")
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert not ray.is_initialized()
    progress = (tmp_path / "train" / "progress.csv").read_text()
    header, *rows = progress.splitlines()
    column = header.split(",").index("lagrange_multiplier")
    lambdas = [float(row.split(",")[column]) for row in rows]
    assert lambdas
    assert all(0.0 <= lam <= agent.lagrangian_max for lam in lambdas), lambdas
    ckpt = Path(result["model_path"])
    exported = export_checkpoint(
        ckpt,
        tmp_path / "deploy",
        env_id=str(cfg.env.id),
        env_kwargs={"horizon_steps": 8, "dt_s": 900.0},
        n_parity=16,
    )
    assert exported.parity.max_abs_diff <= 1e-5
