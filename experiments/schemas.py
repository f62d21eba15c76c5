"""Typed structured-config schemas of the Hydra experiments, registered in the ConfigStore.

YAML files under :mod:`pulsebms.configs` only set values; these dataclasses give every
field its type and default, so Hydra rejects a misspelt key or a wrongly typed value when
the config is composed, before any work starts.

Each YAML option of a group starts its defaults list with the matching ``base_*`` schema
(``defaults: [base_ppo, _self_]``). The agent group's nodes carry ``_target_``:
SB3 agents instantiate to :class:`pulsebms.agents.sb3.PPOConfig` / ``SACConfig``; the MPC and
rules instantiate (``_partial_``) to a factory ``env -> Policy``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from pulsebms.agents.sb3 import PPOConfig, SACConfig

__all__ = [
    "EnvConf",
    "EvalConf",
    "ExperimentConf",
    "FleetConf",
    "LoggerConf",
    "MPCAgentConf",
    "PPOAgentConf",
    "PackConf",
    "RuleAgentConf",
    "SACAgentConf",
    "ScenarioConf",
    "ShieldConf",
    "TrainLoopConf",
    "register_configs",
]


@dataclass
class PackConf:
    """One pack (mirrors :class:`pulsebms.envs.pack.PackSpec`; validated against it)."""

    chemistry: str = MISSING
    series: int = 14
    parallel: int = 4
    initial_soc: float = 0.5
    initial_soh: float = 1.0
    rated_power_w: float | None = None
    initial_temperature_c: float | None = None
    heat_transfer_coefficient_w_m2k: float = 10.0
    name: str = ""


@dataclass
class FleetConf:
    """A fleet: a label and its packs (``None``: the env id's default fleet)."""

    name: str = "default"
    packs: list[PackConf] | None = None


@dataclass
class ScenarioConf:
    """A scenario: a registered name and optional parameters, passed to the env."""

    name: str = "default"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class EnvConf:
    """The environment: registered id and constructor arguments (``None``: env default)."""

    name: str = "small"
    id: str = "PulseBMS/FleetSmall-v0"
    dt_s: float | None = None
    horizon_steps: int | None = None
    fidelity: str | None = "ecm"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ShieldConf:
    """The constraint shield in the loop and limit overrides (``pulsebms.safety`` names)."""

    enabled: bool = True
    limits: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)


def _agent_schema(name: str, config_cls: type, target: str) -> type:
    """Derive the schema of an SB3 hyperparameter dataclass: its fields plus ``_target_``.

    The library dataclass stays the one place that names, types and defaults each
    hyperparameter; this only maps its annotations onto what OmegaConf can type
    (sequences become lists, unions become ``Any``).
    """
    hints = typing.get_type_hints(config_cls)
    specs: list[tuple[str, Any, Any]] = [("_target_", str, field(default=target))]
    for f in dataclasses.fields(config_cls):
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        if origin is Sequence:
            default: tuple[int, ...] = tuple(typing.cast("Sequence[int]", f.default))
            specs.append((f.name, list[int], field(default_factory=partial(list, default))))
        elif origin in (types.UnionType, typing.Union):
            specs.append((f.name, Any, field(default=f.default)))
        else:
            specs.append((f.name, hint, field(default=f.default)))
    schema = dataclasses.make_dataclass(name, specs)
    schema.__doc__ = f"Schema of :class:`{target}` (see it for each field)."
    return schema


PPOAgentConf = _agent_schema("PPOAgentConf", PPOConfig, "pulsebms.agents.sb3.PPOConfig")
SACAgentConf = _agent_schema("SACAgentConf", SACConfig, "pulsebms.agents.sb3.SACConfig")


@dataclass
class MPCAgentConf:
    """Schema of :func:`pulsebms.agents.mpc.make_mpc` (a factory ``env -> MPCPolicy``)."""

    _target_: str = "pulsebms.agents.mpc.make_mpc"
    _partial_: bool = True
    horizon_steps: int = 24
    efficiency: float = 0.97
    degradation_cost_per_kwh: float = 0.3
    unserved_penalty_per_kwh: float = 5.0
    smoothing: float = 1e-4
    terminal_value_per_kwh: float | None = None
    solver: str = "CLARABEL"
    oracle: bool = False
    use_shield: bool = True


@dataclass
class RuleAgentConf:
    """Schema of :func:`pulsebms.agents.rules.make_rule_policy` (a factory ``env -> rule``)."""

    _target_: str = "pulsebms.agents.rules.make_rule_policy"
    _partial_: bool = True
    kind: str = "soc"


@dataclass
class LoggerConf:
    """Tracking: SB3 logger formats and wandb.

    Attributes:
        formats: SB3 formats written in the run dir (``csv``, ``tensorboard``, ``stdout``).
        wandb: Also log to wandb.
        wandb_mode: ``offline`` (default: no network here), ``online`` or ``disabled``;
            the ``WANDB_MODE`` environment variable wins (tests set ``disabled``).
        project: wandb project.
    """

    formats: list[str] = field(default_factory=lambda: ["csv"])
    wandb: bool = False
    wandb_mode: str = "offline"
    project: str = "pulsebms"


@dataclass
class TrainLoopConf:
    """Training budget, callbacks and threads."""

    total_timesteps: int = 50_000
    n_envs: int = 1
    eval_freq: int = 0
    n_eval_episodes: int = 1
    checkpoint_freq: int = 0
    progress_bar: bool = True
    torch_threads: int = 1


@dataclass
class EvalConf:
    """The evaluation after training (and of ``pulsebms-eval``).

    Attributes:
        scenarios: Scenario names evaluated (the run's own scenario when empty).
        seeds: Reset seeds per scenario.
        baselines: Agent-group options compared against (rules, MPC, ...).
        baseline: The policy every KPI is normalised by.
        max_steps: Cut episodes (``None``: the env's horizon).
        plots: Write trace and KPI-bar plots.
        checkpoint: ``pulsebms-eval`` only: a trained ``model.zip`` evaluated as ``agent``.
    """

    scenarios: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [100, 101])
    baselines: list[str] = field(
        default_factory=lambda: ["rule_equal", "rule_soc", "rule_health", "mpc", "mpc_oracle"]
    )
    baseline: str = "rule_soc"
    max_steps: int | None = None
    plots: bool = True
    checkpoint: str | None = None


@dataclass
class ExperimentConf:
    """The whole run (primary config of ``pulsebms-train`` and ``pulsebms-eval``)."""

    seed: int = 0
    experiment_name: str = "default"
    agent_name: str = "agent"
    fleet: FleetConf = MISSING
    scenario: ScenarioConf = MISSING
    env: EnvConf = MISSING
    shield: ShieldConf = MISSING
    agent: Any = MISSING
    logger: LoggerConf = MISSING
    train: TrainLoopConf = field(default_factory=TrainLoopConf)
    evaluation: EvalConf = field(default_factory=EvalConf)


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="base_experiment", node=ExperimentConf)
    cs.store(group="fleet", name="base_fleet", node=FleetConf)
    cs.store(group="scenario", name="base_scenario", node=ScenarioConf)
    cs.store(group="env", name="base_env", node=EnvConf)
    cs.store(group="shield", name="base_shield", node=ShieldConf)
    cs.store(group="logger", name="base_logger", node=LoggerConf)
    cs.store(group="agent", name="base_ppo", node=PPOAgentConf)
    cs.store(group="agent", name="base_sac", node=SACAgentConf)
    cs.store(group="agent", name="base_mpc", node=MPCAgentConf)
    cs.store(group="agent", name="base_rule", node=RuleAgentConf)
