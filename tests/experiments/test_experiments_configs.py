"""Every config group option and experiment preset composes, validates and instantiates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
)
from hydra.utils import instantiate
from hydra_helpers import compose_config
from omegaconf import DictConfig

from pulsebms.agents.rllib_config import RllibPPOConfig, RllibSACConfig
from pulsebms.agents.sb3 import PPOConfig, SACConfig
from pulsebms.configs import config_dir
from pulsebms.experiments.common import ConfigError, env_kwargs, make_cfg_env, validate
from pulsebms.experiments.schemas import register_configs

register_configs()

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
AGENTS = sorted(p.stem for p in (config_dir() / "agent").glob("*.yaml"))


def _shrink(cfg: DictConfig) -> DictConfig:
    cfg.env.horizon_steps = 4
    cfg.train.total_timesteps = 8
    return cfg


def test_presets_exist() -> None:
    assert "quick" in EXPERIMENTS


@pytest.mark.usefixtures("hydra_ctx")
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_preset_composes_and_instantiates(experiment: str) -> None:
    cfg = _shrink(compose_config(f"experiment={experiment}"))
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
    cfg = _shrink(compose_config(f"agent={agent}"))
    obj = instantiate(cfg.agent, _convert_="object")
    if isinstance(obj, PPOConfig | SACConfig):
        assert isinstance(obj.net_arch, list)
        return
    if isinstance(obj, RllibPPOConfig | RllibSACConfig):
        assert isinstance(obj.hidden_sizes, list)
        return
    env = make_cfg_env(cfg)
    try:
        obs, _ = env.reset(seed=0)
        assert obj(env).act(obs).shape == env.action_space.shape
    finally:
        env.close()


RLLIB_SWITCHES = [
    (agent, "observation_filter", "vector_step", "per_row")
    for agent in ("rllib_ppo", "rllib_sac", "rllib_ppo_lagrangian")
] + [
    (agent, "runner_inference", "numpy", "torch") for agent in ("rllib_ppo", "rllib_ppo_lagrangian")
]


@pytest.mark.usefixtures("hydra_ctx")
@pytest.mark.parametrize(("agent", "field", "default", "other"), RLLIB_SWITCHES)
def test_rllib_agent_switches_compose_and_refuse_unknown_values(
    agent: str, field: str, default: str, other: str
) -> None:
    made = instantiate(compose_config(f"agent={agent}").agent, _convert_="object")
    assert getattr(made, field) == default
    cfg = compose_config(f"agent={agent}", f"agent.{field}={other}")
    assert getattr(instantiate(cfg.agent, _convert_="object"), field) == other
    bad = compose_config(f"agent={agent}", f"agent.{field}=welford")
    with pytest.raises(InstantiationException, match=f"{field} must be one of"):
        instantiate(bad.agent, _convert_="object")


@pytest.mark.usefixtures("hydra_ctx")
@pytest.mark.parametrize(
    ("group", "path"),
    [("fleet", "fleet"), ("scenario", "scenario"), ("env", "env"), ("shield", "shield"),
     ("logger", "logger")],
)  # fmt: skip
def test_every_group_option_composes(group: str, path: str) -> None:
    for option in sorted(p.stem for p in (config_dir() / group).glob("*.yaml")):
        cfg = compose_config(f"{group}={option}")
        assert cfg[path] is not None
        if group in ("fleet", "scenario", "shield"):
            validate(cfg)
            env_kwargs(cfg)


@pytest.mark.usefixtures("hydra_ctx")
def test_unknown_option_is_rejected_naming_it() -> None:
    with pytest.raises(MissingConfigException, match="nope"):
        compose_config("agent=nope")


@pytest.mark.usefixtures("hydra_ctx")
def test_unknown_chemistry_names_the_field() -> None:
    cfg = compose_config("fleet.packs.1.chemistry=NaS")
    with pytest.raises(ConfigError, match=r"fleet\.packs\[1\]\.chemistry.*NaS"):
        validate(cfg)


@pytest.mark.usefixtures("hydra_ctx")
def test_impossible_limit_names_the_field() -> None:
    cfg = compose_config("+shield.limits.soc_min=0.9", "+shield.limits.soc_max=0.2")
    with pytest.raises(ConfigError, match=r"shield\.limits.*soc_min"):
        validate(cfg)


@pytest.mark.usefixtures("hydra_ctx")
def test_bad_pack_value_and_scenario_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"fleet\.packs\[0\].*initial_soc"):
        validate(compose_config("fleet.packs.0.initial_soc=1.5"))
    with pytest.raises(ConfigError, match=r"scenario.*atlantis"):
        validate(compose_config("scenario.name=atlantis"))


@pytest.mark.usefixtures("hydra_ctx")
def test_wrong_type_is_rejected_by_the_schema() -> None:
    with pytest.raises(ConfigCompositionException, match=r"train\.total_timesteps"):
        compose_config("train.total_timesteps=lots")


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

    cfg = compose_config("experiment=quick")
    assert latest_checkpoint(cfg, tmp_path) is None
    for stamp in ("2026-01-01_10-00-00", "2026-01-02_09-00-00"):
        run = tmp_path / "small" / "quick" / f"ppo_seed0_{stamp}"
        run.mkdir(parents=True)
        (run / "model.zip").write_bytes(b"")
    found = latest_checkpoint(cfg, tmp_path)
    assert found is not None
    assert found.parent.name.endswith("2026-01-02_09-00-00")


@pytest.mark.usefixtures("hydra_ctx")
def test_fleet_default_is_the_registered_default_fleet() -> None:
    from pulsebms.envs import DEFAULT_FLEET

    cfg = _shrink(compose_config("fleet=default"))
    assert "fleet" not in env_kwargs(cfg)
    env = make_cfg_env(cfg)
    try:
        assert tuple(env.unwrapped.packs) == DEFAULT_FLEET
    finally:
        env.close()


@pytest.mark.usefixtures("hydra_ctx")
def test_small_spread_is_the_default_fleet_with_another_initial_state() -> None:
    from pulsebms.envs import DEFAULT_FLEET
    from pulsebms.envs.pack import PackSpec

    packs = [PackSpec(**p) for p in env_kwargs(compose_config("fleet=small_spread"))["fleet"]]
    geometry = ("chemistry", "series", "parallel", "name", "rated_power_w")
    for pack, default in zip(packs, DEFAULT_FLEET, strict=True):
        assert [getattr(pack, k) for k in geometry] == [getattr(default, k) for k in geometry]
    state = [(p.initial_soc, p.initial_soh) for p in packs]
    assert state != [(p.initial_soc, p.initial_soh) for p in DEFAULT_FLEET]


def test_schemas_take_their_defaults_from_the_library() -> None:
    import dataclasses
    import inspect

    from pulsebms.agents.mpc import MPCConfig, make_mpc
    from pulsebms.envs.pack import PackSpec
    from pulsebms.experiments.schemas import (
        MPCAgentConf,
        PackConf,
        PPOAgentConf,
        ShieldSettingsConf,
    )
    from pulsebms.safety.settings import ShieldSettings

    def defaults(cls: type) -> dict[str, object]:
        return {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }

    pack = defaults(PackConf)
    assert pack.pop("chemistry") == "???"  # required, like PackSpec's
    assert pack == {k: v for k, v in defaults(PackSpec).items()}
    mpc = defaults(MPCAgentConf)
    assert (mpc.pop("_target_"), mpc.pop("_partial_")) == ("pulsebms.agents.mpc.make_mpc", True)
    signature = inspect.signature(make_mpc).parameters
    assert mpc == {
        **dataclasses.asdict(MPCConfig()),
        "oracle": signature["oracle"].default,
        "use_shield": signature["use_shield"].default,
    }
    for name, value in dataclasses.asdict(MPCConfig()).items():
        assert signature[name].default == value  # make_mpc's defaults are MPCConfig's
    settings = defaults(ShieldSettingsConf)
    assert settings == ShieldSettings().to_dict()
    ppo = defaults(PPOAgentConf)
    assert ppo.pop("_target_") == "pulsebms.agents.sb3.PPOConfig"
    assert ppo == {k: list(v) if k == "net_arch" else v for k, v in defaults(PPOConfig).items()}


@pytest.mark.usefixtures("hydra_ctx")
def test_mpc_option_builds_the_library_default_mpc() -> None:
    from pulsebms.agents.mpc import MPCConfig

    cfg = _shrink(compose_config("agent=mpc"))
    env = make_cfg_env(cfg)
    try:
        policy = instantiate(cfg.agent, _convert_="object")(env)
        assert policy.config == MPCConfig()
        assert policy.shield is not None
    finally:
        env.close()


@pytest.mark.usefixtures("hydra_ctx")
def test_shield_settings_reach_the_wrapper_and_are_validated() -> None:
    cfg = _shrink(compose_config("shield.settings.soc_margin=0.01"))
    validate(cfg)
    env = make_cfg_env(cfg)
    try:
        assert env.settings.soc_margin == 0.01
        assert env.settings.current_margin == 0.03
    finally:
        env.close()
    with pytest.raises(ConfigError, match=r"shield\.settings.*soc_margin"):
        validate(compose_config("shield.settings.soc_margin=-1.0"))
    with pytest.raises(ConfigCompositionException, match="soc_marign"):
        compose_config("shield.settings.soc_marign=0.01")
