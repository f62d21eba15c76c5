"""Shared machinery of the Hydra entry points: validation, seeding, env and policy building.

This is the only layer that turns a composed ``DictConfig`` into library objects
(``hydra.utils.instantiate`` with ``_convert_="object"``); everything below it takes plain
typed arguments.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from pulsebms.agents.env_factory import EnvFactory, make_env, make_env_factory
from pulsebms.agents.evaluation import PolicyFactory

__all__ = [
    "ConfigError",
    "agent_factory",
    "compose_agent",
    "decision_s",
    "env_kwargs",
    "hold_mode",
    "init_wandb",
    "run_dir",
    "seed_everything",
    "shield_kwargs",
    "train_env_kwargs",
    "validate",
]


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field (``fleet.packs[1]...``)."""


def plain(node: Any) -> Any:
    """A resolved plain-Python copy (dicts, lists, scalars) of a config node."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def plain_dict(node: Any) -> dict[str, Any]:
    """:func:`plain` for a mapping node (``None`` → ``{}``)."""
    value = plain(node)
    return {str(k): v for k, v in dict(value or {}).items()}


def seed_everything(seed: int, *, torch_threads: int = 1) -> None:
    """The single seeding block of an entry point: Python, numpy's legacy state, torch.

    Library code never touches global RNGs; SB3 seeds the same generators again from the
    model's ``seed``, so this makes anything before the model repeatable too.

    Args:
        seed: The run's seed.
        torch_threads: Intra-op threads of torch (1 keeps CPU runs bit-repeatable and fast
            for small MLPs).
    """
    import torch
    from stable_baselines3.common.utils import set_random_seed

    random.seed(seed)
    set_random_seed(seed)
    torch.set_num_threads(max(1, int(torch_threads)))


def run_dir() -> Path:
    """The Hydra run (or multirun job) directory of the current job."""
    return Path(HydraConfig.get().runtime.output_dir)


def env_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Constructor arguments of the env from the ``fleet``, ``scenario`` and ``env`` groups.

    ``None`` values are left out so the env id's defaults apply.
    """
    kwargs = plain_dict(cfg.env.kwargs)
    for name in ("dt_s", "horizon_steps", "fidelity"):
        value = cfg.env.get(name)
        if value is not None:
            kwargs[name] = value
    if cfg.fleet.packs is not None:
        kwargs["fleet"] = [
            {k: v for k, v in pack.items() if v is not None and v != ""}
            for pack in plain(cfg.fleet.packs)
        ]
    kwargs["scenario"] = scenario_spec(cfg.scenario)
    return kwargs


def scenario_spec(scenario: DictConfig) -> str | dict[str, Any]:
    """The env's ``scenario`` argument: the preset name, or ``{"base": name, **params}``."""
    params = plain_dict(scenario.params)
    if not params:
        return str(scenario.name)
    return {"base": str(scenario.name), **params}


def shield_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Keyword arguments of :class:`pulsebms.safety.ShieldWrapper` from the ``shield`` group.

    ``settings`` is the group's :class:`pulsebms.safety.settings.ShieldSettings` fields as
    plain data (the wrapper validates them); legacy setting keywords in ``kwargs`` win.
    """
    kwargs = plain_dict(cfg.shield.kwargs)
    settings = plain_dict(cfg.shield.get("settings"))
    if settings:
        kwargs.setdefault("settings", settings)
    limits = plain_dict(cfg.shield.limits)
    if limits:
        kwargs["limits"] = limits
    return kwargs


def _validate_fleet(cfg: DictConfig) -> None:
    from pulsebms.envs.chemistry import get_chemistry
    from pulsebms.envs.pack import PackSpec

    if cfg.fleet.packs is None:
        return
    for i, pack in enumerate(cfg.fleet.packs):
        field = f"fleet.packs[{i}]"
        try:
            get_chemistry(str(pack.chemistry))
        except ValueError as exc:
            raise ConfigError(f"{field}.chemistry: {exc}") from None
        values = {k: v for k, v in plain_dict(pack).items() if v is not None}
        values.setdefault("name", "")
        try:
            PackSpec(**values)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{field}: {exc}") from None


def _validate_shield_settings(cfg: DictConfig) -> None:
    from pulsebms.safety.settings import ShieldSettings

    try:
        ShieldSettings.from_mapping(plain_dict(cfg.shield.get("settings")))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"shield.settings: {exc}") from None


def _validate_limits(cfg: DictConfig) -> None:
    from pulsebms.safety.limits import CELL_VOLTAGE_WINDOWS_V, default_limits

    limits = plain_dict(cfg.shield.limits)
    if not limits:
        return
    if cfg.fleet.packs is not None:
        chemistries = sorted({str(p.chemistry).upper() for p in cfg.fleet.packs})
    else:
        chemistries = sorted(CELL_VOLTAGE_WINDOWS_V)
    for chemistry in chemistries:
        try:
            default_limits(chemistry, **limits)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"shield.limits ({chemistry}): {exc}") from None


def validate(cfg: DictConfig) -> None:
    """Check the composed config before any work starts.

    Raises:
        ConfigError: Naming the field: an unknown chemistry or impossible pack value, an
            unknown scenario preset or field, an impossible shield setting or limit, an
            unregistered env id,
            a non-positive budget.
    """
    _validate_fleet(cfg)
    try:
        from pulsebms.envs.scenarios.scenario import make_scenario

        make_scenario(scenario_spec(cfg.scenario))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"scenario: {exc}") from None
    if cfg.train.get("scenario") is not None:
        try:
            make_scenario(scenario_spec(cfg.train.scenario))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"train.scenario: {exc}") from None
    step = cfg.env.get("dt_s")
    if cfg.env.get("decision_s") is not None and step is not None:
        from pulsebms.envs.decision import substeps_of

        try:
            substeps_of(float(cfg.env.decision_s), float(step))
        except ValueError as exc:
            raise ConfigError(f"env.decision_s: {exc}") from None
    from pulsebms.envs.hold import check_hold_mode

    try:
        check_hold_mode(hold_mode(cfg))
    except ValueError as exc:
        raise ConfigError(f"env.hold_mode: {exc}") from None
    _validate_shield_settings(cfg)
    _validate_limits(cfg)
    import gymnasium as gym

    import pulsebms.envs  # noqa: F401  (registers the ids)

    if cfg.env.id not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("PulseBMS/"))
        raise ConfigError(f"env.id: {cfg.env.id!r} is not registered; known: {known}")
    if cfg.train.total_timesteps < 1:
        raise ConfigError(f"train.total_timesteps must be >= 1, got {cfg.train.total_timesteps}")
    if cfg.evaluation.baseline not in [*cfg.evaluation.baselines, "agent"]:
        raise ConfigError(
            f"evaluation.baseline {cfg.evaluation.baseline!r} must be one of "
            f"evaluation.baselines {list(cfg.evaluation.baselines)}"
        )


def decision_s(cfg: DictConfig) -> float | None:
    """The learning agent's decision interval ``env.decision_s`` [s] (``None``: ``dt_s``)."""
    value = cfg.env.get("decision_s")
    return None if value is None else float(value)


def hold_mode(cfg: DictConfig) -> str:
    """What the agent's decision holds between decisions, ``env.hold_mode`` (``action``)."""
    return str(cfg.env.get("hold_mode", "action") or "action")


def train_env_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """:func:`env_kwargs` of the training env: the scenario is ``train.scenario`` if given."""
    kwargs = env_kwargs(cfg)
    scenario = cfg.train.get("scenario")
    if scenario is not None:
        kwargs["scenario"] = scenario_spec(scenario)
    return kwargs


def make_cfg_env_factory(cfg: DictConfig) -> EnvFactory:
    """A factory of the run's (shielded) training env: ``train.scenario``, ``env.decision_s``."""
    return make_env_factory(
        cfg.env.id,
        shield=bool(cfg.shield.enabled),
        shield_kwargs=shield_kwargs(cfg),
        decision_s=decision_s(cfg),
        hold_mode=hold_mode(cfg),
        **train_env_kwargs(cfg),
    )


def make_cfg_env(cfg: DictConfig) -> Any:
    """One instance of the run's (shielded) training env (see :func:`make_cfg_env_factory`)."""
    return make_env(
        cfg.env.id,
        shield=bool(cfg.shield.enabled),
        shield_kwargs=shield_kwargs(cfg),
        decision_s=decision_s(cfg),
        hold_mode=hold_mode(cfg),
        **train_env_kwargs(cfg),
    )


def compose_agent(name: str) -> DictConfig:
    """The ``agent`` node of option ``name`` of the agent group (composed by Hydra)."""
    from hydra import compose

    node: DictConfig = compose(config_name="config", overrides=[f"agent={name}"]).agent
    return node


def agent_factory(node: DictConfig | Mapping[str, Any]) -> PolicyFactory:
    """Instantiate a non-learning agent node (MPC, rule) into a factory ``env -> Policy``."""
    factory = instantiate(node, _convert_="object")
    if not callable(factory):
        raise ConfigError(f"agent {node.get('_target_')!r} is not a policy factory")
    return cast(PolicyFactory, factory)


def init_wandb(cfg: DictConfig, directory: Path, run_name: str) -> Any | None:
    """Start a wandb run (offline unless ``WANDB_MODE`` says otherwise) or return ``None``."""
    if not cfg.logger.wandb:
        return None
    import wandb

    mode = os.environ.get("WANDB_MODE", cfg.logger.wandb_mode)
    return wandb.init(
        project=cfg.logger.project,
        name=run_name,
        dir=str(directory),
        mode=mode,
        config=plain_dict(cfg),
        reinit="finish_previous",
    )
