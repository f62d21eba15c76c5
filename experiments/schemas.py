"""Typed structured-config schemas of the Hydra experiments, registered in the ConfigStore.

YAML files under :mod:`pulsebms.configs` only set values; these dataclasses give every
field its type and default, so Hydra rejects a misspelt key or a wrongly typed value when
the config is composed, before any work starts.

Each YAML option of a group starts its defaults list with the matching ``base_*`` schema
(``defaults: [base_ppo, _self_]``). The agent group's nodes carry ``_target_``:
SB3 agents instantiate to :class:`pulsebms.agents.sb3.PPOConfig` / ``SACConfig``; RLlib agents
to :class:`pulsebms.agents.rllib_config.RllibPPOConfig` / ``RllibSACConfig``; the MPC and
rules instantiate (``_partial_``) to a factory ``env -> Policy``. The ``ray`` group
instantiates to :class:`pulsebms.agents.rllib_config.RaySettings` (where Ray runs).

**Defaults once.** Where a library dataclass already names, types and defaults a setting,
the schema is derived from it (:func:`_dataclass_specs`), never written again by hand:
``PackConf`` from :class:`pulsebms.envs.pack.PackSpec`, ``ShieldConf.settings`` from
:class:`pulsebms.safety.settings.ShieldSettings`, ``PPOAgentConf`` / ``SACAgentConf``
from the SB3 configs, ``MPCAgentConf`` from :class:`pulsebms.agents.mpc.MPCConfig` plus the
further keyword arguments of :func:`pulsebms.agents.mpc.make_mpc`.

Example:
    >>> from pulsebms.envs.pack import PackSpec
    >>> PackConf().initial_soc == PackSpec("LFP").initial_soc
    True
    >>> MPCAgentConf().horizon_steps, MPCAgentConf()._target_
    (24, 'pulsebms.agents.mpc.make_mpc')
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from pulsebms.agents.lagrangian import RllibPPOLagrangianConfig
from pulsebms.agents.mpc import MPCConfig, make_mpc
from pulsebms.agents.rllib_config import RaySettings, RllibPPOConfig, RllibSACConfig
from pulsebms.agents.sb3 import PPOConfig, PPOLagrangianConfig, SACConfig
from pulsebms.envs.pack import PackSpec
from pulsebms.safety.settings import ShieldSettings

__all__ = [
    "EnvConf",
    "EvalConf",
    "ExperimentConf",
    "FleetConf",
    "ImitationConf",
    "LoggerConf",
    "MPCAgentConf",
    "PPOAgentConf",
    "PPOLagrangianAgentConf",
    "PackConf",
    "RayConf",
    "RllibPPOAgentConf",
    "RllibPPOLagrangianAgentConf",
    "RllibSACAgentConf",
    "RuleAgentConf",
    "SACAgentConf",
    "ScenarioConf",
    "ShieldConf",
    "ShieldSettingsConf",
    "TrainLoopConf",
    "register_configs",
]


_PRIMITIVES = (int, float, str, bool)
_Spec = tuple[str, Any, Any]


def _omegaconf_type(hint: Any) -> Any:
    """The annotation OmegaConf can type for a library annotation.

    Sequences become lists, ``X | None`` of a primitive ``X`` stays, other unions become
    ``Any`` (OmegaConf types no general unions; the library validates those values).
    """
    origin = typing.get_origin(hint)
    if origin is Sequence:
        return list[typing.get_args(hint)[0]]  # type: ignore[misc]  # a runtime-built alias
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2 and args[0] in _PRIMITIVES:
            return hint
        return Any
    return hint


def _spec(name: str, hint: Any, default: Any) -> _Spec:
    """One ``make_dataclass`` field: list defaults are copied per instance."""
    typed = _omegaconf_type(hint)
    if typing.get_origin(typed) is list:
        return (name, typed, field(default_factory=partial(list, default)))
    return (name, typed, field(default=default))


def _dataclass_specs(config_cls: type) -> list[_Spec]:
    """The fields of a library dataclass as schema fields, defaults and types kept.

    A field without a default becomes OmegaConf's ``MISSING`` (required in the YAML).
    """
    hints = typing.get_type_hints(config_cls)
    specs: list[_Spec] = []
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        specs.append(_spec(f.name, hints[f.name], default))
    return specs


def _keyword_specs(fn: Callable[..., Any], names: Sequence[str]) -> list[_Spec]:
    """Schema fields of keyword arguments ``names`` of ``fn`` (defaults from its signature)."""
    params = inspect.signature(fn).parameters
    specs: list[_Spec] = []
    for name in names:
        default = params[name].default
        if type(default) not in _PRIMITIVES:
            raise TypeError(f"{fn.__name__}({name}=...) has no plain default: {default!r}")
        specs.append(_spec(name, type(default), default))
    return specs


def _schema(name: str, specs: list[_Spec], *, target: str | None, doc: str) -> type:
    """A schema dataclass: ``_target_`` (and ``_partial_`` for factories) then ``specs``."""
    head: list[_Spec] = []
    if target is not None:
        head.append(("_target_", str, field(default=target)))
    schema = dataclasses.make_dataclass(name, [*head, *specs])
    schema.__module__ = __name__
    schema.__doc__ = doc
    return schema


def _agent_schema(name: str, config_cls: type, target: str) -> type:
    """Derive the schema of an SB3 hyperparameter dataclass: its fields plus ``_target_``.

    The library dataclass stays the one place that names, types and defaults each
    hyperparameter; this only maps its annotations onto what OmegaConf can type.
    """
    return _schema(
        name,
        _dataclass_specs(config_cls),
        target=target,
        doc=f"Schema of :class:`{target}` (see it for each field).",
    )


PPOAgentConf = _agent_schema("PPOAgentConf", PPOConfig, "pulsebms.agents.sb3.PPOConfig")
SACAgentConf = _agent_schema("SACAgentConf", SACConfig, "pulsebms.agents.sb3.SACConfig")
# PPO-Lagrangian with a cost critic (agent=ppo_lagrangian).
PPOLagrangianAgentConf = _agent_schema(
    "PPOLagrangianAgentConf", PPOLagrangianConfig, "pulsebms.agents.sb3.PPOLagrangianConfig"
)
RllibPPOAgentConf = _agent_schema(
    "RllibPPOAgentConf", RllibPPOConfig, "pulsebms.agents.rllib_config.RllibPPOConfig"
)
RllibPPOLagrangianAgentConf = _agent_schema(
    "RllibPPOLagrangianAgentConf",
    RllibPPOLagrangianConfig,
    "pulsebms.agents.lagrangian.RllibPPOLagrangianConfig",
)
RllibSACAgentConf = _agent_schema(
    "RllibSACAgentConf", RllibSACConfig, "pulsebms.agents.rllib_config.RllibSACConfig"
)
RayConf = _schema(
    "RayConf",
    _dataclass_specs(RaySettings),
    target="pulsebms.agents.rllib_config.RaySettings",
    doc="Where Ray runs RLlib agents (the fields of :class:`RaySettings`).",
)
MPCAgentConf = _schema(
    "MPCAgentConf",
    [
        ("_partial_", bool, field(default=True)),
        *_dataclass_specs(MPCConfig),
        *_keyword_specs(make_mpc, ("oracle", "use_shield")),
    ],
    target="pulsebms.agents.mpc.make_mpc",
    doc=(
        "Schema of :func:`pulsebms.agents.mpc.make_mpc` (a factory ``env -> MPCPolicy``): "
        "the fields of :class:`pulsebms.agents.mpc.MPCConfig`, ``oracle`` and ``use_shield``."
    ),
)

if TYPE_CHECKING:  # the static view: the schemas have exactly the library's fields
    PackConf = PackSpec
    ShieldSettingsConf = ShieldSettings
else:
    ShieldSettingsConf = _schema(
        "ShieldSettingsConf",
        _dataclass_specs(ShieldSettings),
        target=None,
        doc="The shield's settings: the fields of :class:`pulsebms.safety.ShieldSettings`.",
    )
    PackConf = _schema(
        "PackConf",
        _dataclass_specs(PackSpec),
        target=None,
        doc="One pack: the fields of :class:`pulsebms.envs.pack.PackSpec` (validated against it).",
    )


@dataclass
class ShieldConf:
    """The constraint shield in the loop, its settings and limit overrides.

    Attributes:
        enabled: Put :class:`pulsebms.safety.ShieldWrapper` in front of the env.
        settings: :class:`pulsebms.safety.settings.ShieldSettings` fields (margins, derating
            band, ...); the schema and its defaults are derived from that class.
        limits: Overrides of :func:`pulsebms.safety.limits.default_limits` per chemistry.
        kwargs: Further keyword arguments of the wrapper (legacy setting keywords win over
            ``settings``).
    """

    enabled: bool = True
    settings: ShieldSettingsConf = field(default_factory=ShieldSettingsConf)
    limits: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)


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
    """The environment: registered id and constructor arguments (``None``: env default).

    ``dt_s`` is the plant and shield step; ``decision_s`` (``None``: ``dt_s``) the learning
    agent's decision interval, a whole multiple of ``dt_s`` (each action held for
    ``decision_s / dt_s`` plant steps: :class:`pulsebms.envs.decision.DecisionIntervalWrapper`
    in training, :class:`pulsebms.envs.decision.DecisionIntervalPolicy` in evaluation).
    The evaluation's baselines act at every plant step; the run's agent every ``decision_s``.
    ``hold_mode`` (:data:`pulsebms.envs.hold.HOLD_MODES`) says what a decision holds between
    decisions, in training and evaluation alike: ``action`` (default) the set-points,
    ``grid`` the decision's grid exchange, ``import_cap`` the set-points raised to cover
    imports above the site's limit (:mod:`pulsebms.envs.hold`).
    """

    name: str = "small"
    id: str = "PulseBMS/FleetSmall-v0"
    dt_s: float | None = None
    horizon_steps: int | None = None
    fidelity: str | None = "ecm"
    decision_s: float | None = None
    hold_mode: str = "action"
    kwargs: dict[str, Any] = field(default_factory=dict)


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
class ImitationConf:
    """Learn from a teacher before RL (``train.imitation``; :mod:`pulsebms.agents.imitation`).

    The teacher (a baseline, the forecast ``mpc`` by default) is rolled on ``demo_days``
    training days (reset seeds ``demo_seed``, ``demo_seed + 1``, ...; keep them apart from
    evaluation seeds), deciding every ``env.decision_s`` like the agent; its actions are
    cloned into the agent's actor (the remaining fields: :class:`ImitationConfig`), then the
    agent trains ``train.total_timesteps`` decisions (0: the cloned policy as it is).
    ``dagger_rounds`` rounds of ``dagger_days`` days then add the states the cloned policy
    visits, labelled by the teacher, and clone again. ``actor_frozen_steps``: the first
    decisions of fine-tuning train only the critic (:class:`pulsebms.agents.imitation.FreezeActor`).

    Spike-aware demonstrations: randomised training days contain a price spike only
    sometimes, yet a spike makes the clone's errors costly. ``spike_days`` more teacher days
    (reset seeds ``spike_seed``, ...) and the first ``spike_dagger_share`` of each DAgger
    round's days are drawn from ``train.scenario`` with ``spike_params`` merged into its
    params (default: a price spike chance of 0.1 per hour, ≥ 1 spike on ~92 % of days instead
    of ~38 %). Deterministic per seed; 0 and 0.0 (the defaults): none.

    ``spike_sets``: more sets of such days beside the ``spike_*`` one, each a map with
    ``days``, ``seed``, ``dagger_share`` and ``params`` (same meaning), so one recipe can mix
    kinds of days (e.g. hot days and hot days with a demand-response event). Each DAgger
    round's first ``spike_dagger_share`` of days are the ``spike_*`` set's, the next
    ``dagger_share`` of each set's in order, the rest plain; the shares sum to at most 1.
    Empty (the default): none.

    ``ensemble_size``: the agent of training seed ``s`` is the average of the deterministic
    actions of ``ensemble_size`` agents of this recipe, trained (cloned, DAgger, fine-tune:
    each its own) with seeds ``s, s + 1000, ...``
    (:func:`pulsebms.agents.ensemble.member_seeds`,
    :class:`pulsebms.agents.ensemble.EnsemblePolicy`); exported as one ONNX graph. 1 (the
    default): the single agent, fingerprinted as before the field existed.

    ``dagger_policy``: who acts in an ensemble's DAgger rounds. ``member`` (the default):
    each member its own DAgger, as a single agent. ``ensemble``: the ensemble's averaged
    action acts, the teacher labels the states it visits, every member clones the one
    aggregate (:func:`pulsebms.experiments.suite.dagger_policy`).
    """

    teacher: str = "mpc"
    demo_days: int = 200
    demo_seed: int = 50_000
    dagger_rounds: int = 0
    dagger_days: int = 50
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    log_std: float = -2.3
    critic_epochs: int = 10
    critic_rounds: int = 3
    actor_frozen_steps: int = 0
    spike_days: int = 0
    spike_seed: int = 90_000
    spike_dagger_share: float = 0.0
    spike_params: dict[str, Any] = field(default_factory=lambda: {"price_spike_probability": 0.1})
    spike_sets: list[dict[str, Any]] = field(default_factory=list)
    ensemble_size: int = 1
    dagger_policy: str = "member"


@dataclass
class TrainLoopConf:
    """Training budget, callbacks, threads, and the scenario training runs on.

    ``scenario``: when given, the agent trains on it (e.g. ``randomized`` days) and is
    evaluated on the run's ``scenario`` (days it never saw); ``None``: it trains on the
    run's scenario. ``imitation``: clone a teacher into the agent first (``None``: RL only).
    """

    scenario: ScenarioConf | None = None
    imitation: ImitationConf | None = None
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
        checkpoint: ``pulsebms-eval`` only: a trained SB3 ``model.zip`` or RLlib checkpoint
            folder, evaluated as ``agent``.
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
    ray: Any = MISSING  # RayConf (the `ray` group; only RLlib agents use it)
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
    cs.store(group="agent", name="base_ppo_lagrangian", node=PPOLagrangianAgentConf)
    cs.store(group="agent", name="base_mpc", node=MPCAgentConf)
    cs.store(group="agent", name="base_rule", node=RuleAgentConf)
    cs.store(group="agent", name="base_rllib_ppo", node=RllibPPOAgentConf)
    cs.store(group="agent", name="base_rllib_ppo_lagrangian", node=RllibPPOLagrangianAgentConf)
    cs.store(group="agent", name="base_rllib_sac", node=RllibSACAgentConf)
    cs.store(group="ray", name="base_ray", node=RayConf)
