"""Every config group option and experiment preset composes, validates and instantiates."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from pulsebms.agents.sb3 import PPOConfig, SACConfig
from pulsebms.configs import config_dir
from pulsebms.experiments.common import ConfigError, env_kwargs, make_cfg_env, validate
from pulsebms.experiments.schemas import register_configs

register_configs()

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
AGENTS = sorted(p.stem for p in (config_dir() / "agent").glob("*.yaml"))


@pytest.fixture
def hydra_ctx() -> Iterator[None]:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pulsebms.configs", version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def _compose(*overrides: str) -> DictConfig:
    cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    # `${hydra:...}` resolves only inside a running app; pin the label instead.
    with open_dict(cfg):
        cfg.agent_name = cfg.hydra.runtime.choices.agent
        del cfg["hydra"]
    return cfg


def _shrink(cfg: DictConfig) -> DictConfig:
    cfg.env.horizon_steps = 4
    cfg.train.total_timesteps = 8
    return cfg


def test_presets_exist() -> None:
    assert "quick" in EXPERIMENTS


@pytest.mark.usefixtures("hydra_ctx")
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_preset_composes_and_instantiates(experiment: str) -> None:
    cfg = _shrink(_compose(f"experiment={experiment}"))
    assert cfg.experiment_name == experiment
    validate(cfg)
    agent = instantiate(cfg.agent, _convert_="object")
    env = make_cfg_env(cfg)
    try:
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        if not isinstance(agent, PPOConfig | SACConfig):
            policy = agent(env)
            assert policy.act(obs).shape == env.action_space.shape
    finally:
        env.close()


@pytest.mark.usefixtures("hydra_ctx")
@pytest.mark.parametrize("agent", AGENTS)
def test_every_agent_option_instantiates(agent: str) -> None:
    cfg = _shrink(_compose(f"agent={agent}"))
    obj = instantiate(cfg.agent, _convert_="object")
    if isinstance(obj, PPOConfig | SACConfig):
        assert isinstance(obj.net_arch, list)
        return
    env = make_cfg_env(cfg)
    try:
        obs, _ = env.reset(seed=0)
        assert obj(env).act(obs).shape == env.action_space.shape
    finally:
        env.close()


@pytest.mark.usefixtures("hydra_ctx")
@pytest.mark.parametrize(
    ("group", "path"),
    [("fleet", "fleet"), ("scenario", "scenario"), ("env", "env"), ("shield", "shield"),
     ("logger", "logger")],
)  # fmt: skip
def test_every_group_option_composes(group: str, path: str) -> None:
    for option in sorted(p.stem for p in (config_dir() / group).glob("*.yaml")):
        cfg = _compose(f"{group}={option}")
        assert cfg[path] is not None
        if group in ("fleet", "scenario", "shield"):
            validate(cfg)
            env_kwargs(cfg)


@pytest.mark.usefixtures("hydra_ctx")
def test_unknown_option_is_rejected_naming_it() -> None:
    with pytest.raises(MissingConfigException, match="nope"):
        _compose("agent=nope")


@pytest.mark.usefixtures("hydra_ctx")
def test_unknown_chemistry_names_the_field() -> None:
    cfg = _compose("fleet.packs.1.chemistry=NaS")
    with pytest.raises(ConfigError, match=r"fleet\.packs\[1\]\.chemistry.*NaS"):
        validate(cfg)


@pytest.mark.usefixtures("hydra_ctx")
def test_impossible_limit_names_the_field() -> None:
    cfg = _compose("+shield.limits.soc_min=0.9", "+shield.limits.soc_max=0.2")
    with pytest.raises(ConfigError, match=r"shield\.limits.*soc_min"):
        validate(cfg)


@pytest.mark.usefixtures("hydra_ctx")
def test_bad_pack_value_and_scenario_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"fleet\.packs\[0\].*initial_soc"):
        validate(_compose("fleet.packs.0.initial_soc=1.5"))
    with pytest.raises(ConfigError, match=r"scenario.*atlantis"):
        validate(_compose("scenario.name=atlantis"))


@pytest.mark.usefixtures("hydra_ctx")
def test_wrong_type_is_rejected_by_the_schema() -> None:
    with pytest.raises(ConfigCompositionException, match=r"train\.total_timesteps"):
        _compose("train.total_timesteps=lots")


def test_help_lists_the_groups(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pulsebms.experiments.train", "--help"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "WANDB_MODE": "disabled"},
        timeout=120,
    ).stdout
    for group in ("agent:", "env:", "experiment:", "fleet:", "logger:", "scenario:", "shield:"):
        assert group in out
    assert "quick" in out
    assert "mpc_oracle" in out


@pytest.mark.usefixtures("hydra_ctx")
def test_eval_finds_the_newest_training_run(tmp_path: Path) -> None:
    from pulsebms.experiments.evaluate import latest_checkpoint

    cfg = _compose("experiment=quick")
    assert latest_checkpoint(cfg, tmp_path) is None
    for stamp in ("2026-01-01_10-00-00", "2026-01-02_09-00-00"):
        run = tmp_path / "small" / "quick" / f"ppo_seed0_{stamp}"
        run.mkdir(parents=True)
        (run / "model.zip").write_bytes(b"")
    found = latest_checkpoint(cfg, tmp_path)
    assert found is not None
    assert found.parent.name.endswith("2026-01-02_09-00-00")
