"""Benchmark suite: every ``configs/benchmark/`` scenario, rules + MPC + MPC-oracle (+ an agent).

Command line::

    python -m pulsebms.experiments.suite --quick                # 3 seeds, rules + MPCs
    python -m pulsebms.experiments.suite --seeds 100 101 102 103 104
    python -m pulsebms.experiments.suite --checkpoint runs/.../model.zip   # + that agent
    python -m pulsebms.experiments.suite --train-steps 150000 --train-seeds 0 1 2  # + PPO
    python -m pulsebms.experiments.suite --quick --variant noisy05 \
        --bench-override +scenario.params.forecast=noisy \
        --bench-override +scenario.params.forecast_noise_1h=0.05   # a variant of every benchmark

Each benchmark is a Hydra config (``+benchmark=<name>`` on top of the primary config), so
``pulsebms-train +benchmark=hot_spike`` trains on exactly the env the suite evaluates.
Per scenario and policy it prints mean ± std over the seeds (for a trained agent, over
training seeds × evaluation seeds) of: total cost × no-battery (the same day with the fleet
idle), × the best rule (the rule with the lowest mean total cost on that scenario),
× the MPC-oracle (full-day horizon, true future), violations (after the shield, per
episode) and pre-shield violations (share of steps whose request the shield predicted to
violate a limit), with shield interventions (pack-steps) beside them. Every policy is
behind the same shield accounting (:func:`pulsebms.agents.evaluation.behind_shield`).
Ratios are per (scenario, seed) episode; NaN where the reference is near zero.
A variant (``--variant NAME --bench-override ...``: Hydra overrides of every benchmark's
config) is reported as ``<benchmark>@<NAME>``, never under the benchmark's own name.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from pulsebms.agents.evaluation import NO_BATTERY, KPITable, PolicyFactory, evaluate_policies
from pulsebms.envs.hold import HOLD_MODES

__all__ = [
    "BENCHMARKS",
    "DAGGER_POLICIES",
    "AgentExecution",
    "SuiteRow",
    "agent_execution",
    "benchmark_config",
    "dagger_policy",
    "ensemble_size",
    "fleet_groups",
    "format_table",
    "imitation_warm_start",
    "main",
    "run_suite",
    "spike_config",
    "suite_demonstrations",
    "suite_rows",
    "train_config",
    "train_suite_agent",
]

log = logging.getLogger(__name__)

BENCHMARKS: tuple[str, ...] = ("mild", "hot_spike", "cold", "pv_rich", "fleet20")
"""The benchmark scenarios, in table order (files of ``configs/benchmark/``)."""

RULES: tuple[str, ...] = ("rule_equal", "rule_soc", "rule_health")
"""The rule baselines; the best of them on a scenario is the ``× best rule`` reference."""

ORACLE = "mpc_oracle"

DAGGER_POLICIES: tuple[str, ...] = ("member", "ensemble")
"""Who acts in an ensemble's DAgger rounds (``train.imitation.dagger_policy``)."""


def benchmark_config(name: str, overrides: Sequence[str] = ()) -> Any:
    """The composed Hydra config of one benchmark (``+benchmark=<name>``, no logger).

    Args:
        name: One of :data:`BENCHMARKS` (any file of ``configs/benchmark/``).
        overrides: More Hydra overrides.

    Returns:
        The ``DictConfig``.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from pulsebms.configs import CONFIG_NAME
    from pulsebms.experiments.schemas import register_configs

    register_configs()
    if GlobalHydra.instance().is_initialized():
        return compose(CONFIG_NAME, overrides=[f"+benchmark={name}", "logger=none", *overrides])
    with initialize_config_module("pulsebms.configs", version_base="1.3"):
        return compose(CONFIG_NAME, overrides=[f"+benchmark={name}", "logger=none", *overrides])


@dataclass(frozen=True)
class SuiteRow:
    """One policy on one scenario: every field a ``(mean, std)`` over its episodes.

    Attributes:
        scenario: Benchmark name.
        policy: Policy name.
        episodes: Number of episodes behind the statistics.
        x_no_battery: Total cost / the no-battery total cost.
        x_best_rule: Total cost / the best rule's total cost.
        x_oracle: Total cost / the MPC-oracle's total cost.
        violations: Violations after the shield per episode.
        pre_shield_violations: Pre-shield violations per step.
        interventions: Shield interventions (pack-steps) per episode.
        best_rule: Name of the best rule on the scenario.
    """

    scenario: str
    policy: str
    episodes: int
    x_no_battery: tuple[float, float]
    x_best_rule: tuple[float, float]
    x_oracle: tuple[float, float]
    violations: tuple[float, float]
    pre_shield_violations: tuple[float, float]
    interventions: tuple[float, float]
    best_rule: str


def _stats(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite or len(finite) < len(values):
        return (math.nan, math.nan)
    return (float(np.mean(finite)), float(np.std(finite)))


def suite_rows(table: KPITable, scenario: str) -> list[SuiteRow]:
    """The suite's statistics of every policy of one scenario of a KPI table.

    Args:
        table: Rows of one or more scenarios, with :data:`NO_BATTERY` rows and ideally the
            rules and the MPC-oracle.
        scenario: The scenario label.

    Returns:
        One row per policy (the no-battery reference first).
    """
    rules = [r for r in RULES if r in table.policies]
    best = min(rules, key=lambda r: table.mean(r, "total_cost", scenario)) if rules else ""
    out = []
    for policy in table.policies:
        episodes = [r for r in table.rows if r["policy"] == policy and r["scenario"] == scenario]
        if not episodes:
            continue

        def ratio(reference: str, policy: str = policy) -> tuple[float, float]:
            if reference not in table.policies:
                return (math.nan, math.nan)
            return _stats(table.ratios(policy, "total_cost", reference, scenario))

        def kpi(name: str, episodes: list[dict[str, Any]] = episodes) -> tuple[float, float]:
            return _stats([float(r[name]) for r in episodes])

        out.append(
            SuiteRow(
                scenario=scenario,
                policy=policy,
                episodes=len(episodes),
                x_no_battery=ratio(NO_BATTERY),
                x_best_rule=ratio(best) if best else (math.nan, math.nan),
                x_oracle=ratio(ORACLE),
                violations=kpi("violations"),
                pre_shield_violations=kpi("pre_shield_violations"),
                interventions=kpi("shield_interventions"),
                best_rule=best,
            )
        )
    out.sort(key=lambda r: r.policy != NO_BATTERY)
    return out


def _pm(value: tuple[float, float], digits: int = 3) -> str:
    mean, std = value
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(rows: Sequence[SuiteRow]) -> str:
    """The suite's rows as one Markdown table (mean ± std)."""
    lines = [
        "| scenario | policy | n | cost × no-battery | cost × best rule | cost × MPC-oracle "
        "| violations | pre-shield viol. [1/step] | interventions |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.policy} | {r.episodes} | {_pm(r.x_no_battery)} "
            f"| {_pm(r.x_best_rule)} | {_pm(r.x_oracle)} | {_pm(r.violations, 1)} "
            f"| {_pm(r.pre_shield_violations)} | {_pm(r.interventions, 1)} |"
        )
    best = {r.scenario: r.best_rule for r in rows}
    notes = ", ".join(f"{s}: {b}" for s, b in best.items())
    return "\n".join(lines) + f"\n\nBest rule per scenario: {notes}. n/a: reference ≈ 0.\n"


def _fixed(policy: Any, env: Any) -> Any:
    return policy


def train_config(
    name: str, agent: str = "ppo", overrides: Sequence[str] = (), *, experiment: str = "suite"
) -> Any:
    """The training config of benchmark ``name``'s fleet: ``experiment=suite`` + the benchmark.

    The benchmark sets the env (plant step, decision interval, observation, fleet, limits);
    :file:`configs/experiment/suite.yaml` the agent's hyperparameters, the budget and the
    training scenario (``train.scenario``: randomised days, never a benchmark's day).

    Args:
        name: A benchmark whose fleet the agent is for.
        agent: Agent-group option (an SB3 agent: ``ppo``, ``sac``, ``ppo_lagrangian``, ...).
        overrides: More Hydra overrides (``agent.learning_rate=1e-4``, ...).
        experiment: The training recipe (a file of ``configs/experiment/``: ``suite``, or
            ``suite_mpc_bc`` to clone the forecast MPC first and fine-tune it).

    Returns:
        The composed ``DictConfig``.
    """
    return benchmark_config(name, [f"experiment={experiment}", f"agent={agent}", *overrides])


def fleet_groups(benchmarks: Sequence[str]) -> dict[str, list[str]]:
    """Benchmarks grouped by fleet (``fleet.name``): one trained agent serves each group.

    Example:
        >>> fleet_groups(["mild", "fleet20", "cold"])  # doctest: +SKIP
        {'small_spread': ['mild', 'cold'], 'mixed20': ['fleet20']}
    """
    groups: dict[str, list[str]] = {}
    for name in benchmarks:
        groups.setdefault(str(benchmark_config(name).fleet.name), []).append(name)
    return groups


def _fingerprint(*parts: Any) -> str:
    from omegaconf import OmegaConf

    text = json.dumps(
        [OmegaConf.to_container(p, resolve=True) if OmegaConf.is_config(p) else p for p in parts],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _env_key(env: Any) -> Any:
    """``cfg.env`` as fingerprinted: without ``hold_mode`` when it is the default ``action``.

    So every agent, clone, demonstration and episode cached before the field existed is
    still found (:mod:`pulsebms.envs.hold`).
    """
    plain = OmegaConf.to_container(env, resolve=True) if OmegaConf.is_config(env) else env
    if isinstance(plain, dict) and plain.get("hold_mode", "action") == "action":
        plain = {k: v for k, v in plain.items() if k != "hold_mode"}
    return plain


def _train_cfg_key(cfg: Any) -> str:
    """What a trained agent depends on: env, fleet, shield, agent, training loop, seed.

    A training loop without ``imitation`` fingerprints as before that field existed (so
    agents trained then are still found).
    """
    train = OmegaConf.to_container(cfg.train, resolve=True)
    if isinstance(train, dict) and train.get("imitation") is None:
        train.pop("imitation", None)
    elif isinstance(train, dict):
        train["imitation"] = _imitation_key(cfg.train.imitation)
    return _fingerprint(_env_key(cfg.env), cfg.fleet, cfg.shield, cfg.agent, train, int(cfg.seed))


_SPIKE_FIELDS = ("spike_days", "spike_seed", "spike_dagger_share", "spike_params")
_SET_FIELDS = ("days", "seed", "dagger_share", "params")


def _spiky(im: Any) -> bool:
    return int(im.get("spike_days", 0)) > 0 or float(im.get("spike_dagger_share", 0.0)) > 0


def spike_sets(im: Any) -> list[dict[str, Any]]:
    """Every set of extra teacher days of ``train.imitation`` (:class:`ImitationConf`).

    The ``spike_*`` fields' set first (when it has days or a DAgger share), then
    ``spike_sets`` in order; each a dict with ``days``, ``seed``, ``dagger_share`` and
    ``params``.

    Raises:
        ValueError: If a set is malformed, a share is outside [0, 1] or the shares sum
            to more than 1.
    """
    sets: list[dict[str, Any]] = []
    if _spiky(im):
        sets.append(
            {
                "days": im.spike_days,
                "seed": im.spike_seed,
                "dagger_share": im.spike_dagger_share,
                "params": im.spike_params,
            }
        )
    extra = im.get("spike_sets") or []
    if OmegaConf.is_config(extra):
        extra = OmegaConf.to_container(extra, resolve=True)
    if not isinstance(extra, list):
        raise ValueError("train.imitation.spike_sets must be a list of maps")
    for i, entry in enumerate(extra):
        if not isinstance(entry, dict) or sorted(entry) != sorted(_SET_FIELDS):
            raise ValueError(
                f"train.imitation.spike_sets[{i}] must be a map with keys {_SET_FIELDS}"
            )
        sets.append(dict(entry))
    out: list[dict[str, Any]] = []
    for entry in sets:
        params = entry["params"]
        if OmegaConf.is_config(params):
            params = OmegaConf.to_container(params, resolve=True)
        if not isinstance(params, dict):
            raise ValueError("train.imitation spike params must be maps")
        share = float(entry["dagger_share"])
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"train.imitation DAgger shares must be in [0, 1], got {share}")
        days = int(entry["days"])
        if days < 0:
            raise ValueError(f"train.imitation spike days must be >= 0, got {days}")
        out.append(
            {"days": days, "seed": int(entry["seed"]), "dagger_share": share, "params": params}
        )
    if sum(e["dagger_share"] for e in out) > 1.0 + 1e-9:
        raise ValueError("train.imitation DAgger shares of the spike sets sum to more than 1")
    return out


def _imitation_key(im: Any) -> Any:
    """``train.imitation`` as fingerprinted: without spike days, as before they existed.

    So clones and agents trained before the spike fields (or ``ensemble_size``,
    ``dagger_policy``) were added are still found.
    """
    plain = OmegaConf.to_container(im, resolve=True)
    if isinstance(plain, dict) and plain.get("dagger_policy", "member") == "member":
        plain.pop("dagger_policy", None)  # each member its own DAgger, as before the field
    if isinstance(plain, dict) and not plain.get("spike_sets"):
        plain.pop("spike_sets", None)  # so clones from before the field are still found
    if isinstance(plain, dict) and int(plain.get("ensemble_size", 1)) == 1:
        plain.pop("ensemble_size", None)  # a single agent, as before the field existed
    if isinstance(plain, dict) and not _spiky(im):
        for name in _SPIKE_FIELDS:
            plain.pop(name, None)
    return plain


def spike_config(cfg: Any, spike_params: Any = None) -> Any:
    """``cfg`` with ``spike_params`` merged into ``train.scenario.params``.

    The env of the spike-aware demonstration days (:class:`ImitationConf`).

    Args:
        cfg: A training config.
        spike_params: The Scenario fields to set (``None``: ``train.imitation.spike_params``).

    Raises:
        ValueError: If ``cfg`` has no ``train.scenario`` (spike days need randomised days).
    """
    if cfg.train.get("scenario") is None:
        raise ValueError("spike-aware demonstrations need train.scenario (randomised days)")
    spiky = copy.deepcopy(cfg)
    params = OmegaConf.to_container(spiky.train.scenario.get("params") or {}, resolve=True)
    if spike_params is None:
        spike_params = spiky.train.imitation.spike_params
    spike = (
        OmegaConf.to_container(spike_params, resolve=True)
        if OmegaConf.is_config(spike_params)
        else copy.deepcopy(spike_params)
    )
    if not isinstance(params, dict) or not isinstance(spike, dict):
        raise ValueError("train.scenario.params and train.imitation.spike_params must be maps")
    with open_dict(spiky):
        spiky.train.scenario.params = {**params, **spike}
    return spiky


def train_suite_agent(
    name: str,
    seed: int,
    *,
    agent: str = "ppo",
    train_steps: int | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | Path = "runs/suite",
    progress: bool = False,
    label: str | None = None,
    experiment: str = "suite",
    clone_file: str | Path | None = None,
) -> Any:
    """Train (or load, when the same run is on disk) the suite's agent for a benchmark's fleet.

    The run folder is ``<out_dir>/agents/<fleet>/<label>_seed<seed>``; its ``suite_key``
    file holds the fingerprint of the training config, so a finished run is loaded instead
    of trained again (the suite command resumes), and a changed config trains anew.

    Args:
        name: A benchmark whose fleet (and env) the agent is trained for.
        seed: Training seed (never an evaluation seed).
        agent: SB3 agent option.
        train_steps: Decisions to train (``None``: the preset's ``train.total_timesteps``).
        overrides: More Hydra overrides of the training config.
        out_dir: The suite's output folder.
        progress: SB3 progress bar.
        label: Name of the variant (``agent`` when ``None``): its run folder and rows.
        experiment: The training recipe (:func:`train_config`). With ``train.imitation``
            the teacher's demonstrations (cached under ``<out_dir>/demos``) are cloned into
            the agent before it trains (:func:`imitation_warm_start`).
        clone_file: The clone to start from, made elsewhere (an ensemble member's, cloned
            by the ensemble's DAgger: ``train.imitation.dagger_policy: ensemble``); part of
            the run's fingerprint. ``None``: the recipe's own clone.

    Returns:
        The trained deterministic policy (:class:`pulsebms.agents.policy.SB3Policy`), acting
        every agent step of the training env (wrap it in a decision-interval policy to act
        at the plant step).
    """
    from pulsebms.agents.sb3 import policy_from_run, train_agent
    from pulsebms.experiments.common import make_cfg_env_factory, seed_everything

    cfg = _agent_train_config(name, seed, agent, train_steps, overrides, experiment)
    run = _agent_run_dir(out_dir, str(cfg.fleet.name), label or agent, seed)
    key = _train_cfg_key(cfg)
    if clone_file is not None:
        key = _fingerprint(key, Path(clone_file).name)  # the name holds the clone's key
    marker = run / "suite_key"
    size = ensemble_size(cfg)
    if size > 1:
        return _train_suite_ensemble(
            name,
            seed,
            size,
            agent=agent,
            train_steps=train_steps,
            overrides=overrides,
            out_dir=out_dir,
            progress=progress,
            label=label or agent,
            experiment=experiment,
            run=run,
            key=key,
        )
    if marker.is_file() and marker.read_text().strip() == key and (run / "model.zip").is_file():
        log.info("suite: loading %s (trained before, same config)", run)
        return policy_from_run(run)
    seed_everything(seed, torch_threads=int(cfg.train.torch_threads))
    config = instantiate(cfg.agent, _convert_="object")
    warm_start = None
    callbacks: list[Any] = []
    if cfg.train.get("imitation") is not None:
        from pulsebms.agents.imitation import FreezeActor

        warm_start = imitation_warm_start(cfg, out_dir=out_dir, run_dir=run, clone_file=clone_file)
        if int(cfg.train.imitation.actor_frozen_steps) > 0:
            callbacks.append(FreezeActor(int(cfg.train.imitation.actor_frozen_steps)))
    log.info(
        "suite: training %s on %s for %d steps", agent, cfg.fleet.name, cfg.train.total_timesteps
    )
    result = train_agent(
        config,
        make_cfg_env_factory(cfg),
        total_timesteps=int(cfg.train.total_timesteps),
        seed=seed,
        out_dir=run,
        n_envs=int(cfg.train.n_envs),
        progress_bar=progress,
        warm_start=warm_start,
        callbacks=callbacks,
    )
    used = {k: cfg[k] for k in ("seed", "env", "fleet", "shield", "agent", "train")}
    (run / "config_resolved.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(used)))
    marker.write_text(key + "\n")
    return result.policy


def _agent_run_dir(out_dir: str | Path, fleet: str, label: str, seed: int) -> Path:
    """The run folder of the suite's agent ``label`` for training seed ``seed`` on ``fleet``."""
    return Path(out_dir) / "agents" / fleet / f"{label}_seed{seed}"


def ensemble_size(cfg: Any) -> int:
    """``train.imitation.ensemble_size`` of a training config (1 without imitation).

    Raises:
        ValueError: If it is < 1.

    Example:
        >>> ensemble_size(train_config("mild", "ppo", experiment="suite_mpc_bc"))
        1
    """
    im = cfg.train.get("imitation")
    size = 1 if im is None else int(im.get("ensemble_size", 1))
    if size < 1:
        raise ValueError(f"train.imitation.ensemble_size must be >= 1, got {size}")
    return size


def dagger_policy(cfg: Any) -> str:
    """``train.imitation.dagger_policy`` of a training config: who acts in the DAgger rounds.

    ``member`` (the default, and the only meaning for a single agent): every member of an
    ensemble runs its own DAgger on its own days, so it is exactly the single agent of its
    seed. ``ensemble``: the ensemble (the mean of its members' actions, what the deployer
    runs) acts in each round, the teacher labels the states *it* visits, and every member
    is cloned again on that one aggregate (each keeping its own seed, so its own
    initialisation and minibatch order, and its errors partly its own). DAgger's guarantee
    is about the learner's own state distribution; the learner deployed is the ensemble,
    whose states (an average of members that each drift their own way) no member visits.

    Raises:
        ValueError: If it is not one of :data:`DAGGER_POLICIES`.

    Example:
        >>> dagger_policy(train_config("mild", "ppo", experiment="suite_mpc_bc"))
        'member'
    """
    im = cfg.train.get("imitation")
    policy = "member" if im is None else str(im.get("dagger_policy", "member"))
    if policy not in DAGGER_POLICIES:
        raise ValueError(
            f"train.imitation.dagger_policy must be one of {DAGGER_POLICIES}, got {policy!r}"
        )
    return policy


def _train_suite_ensemble(
    name: str,
    seed: int,
    size: int,
    *,
    agent: str,
    train_steps: int | None,
    overrides: Sequence[str],
    out_dir: str | Path,
    progress: bool,
    label: str,
    experiment: str,
    run: Path,
    key: str,
) -> Any:
    """The ensemble agent of :func:`train_suite_agent` (``train.imitation.ensemble_size`` > 1).

    Member ``k`` is the single agent of the same recipe and overrides with
    ``ensemble_size=1`` and seed ``seed + 1000 k``
    (:func:`pulsebms.agents.ensemble.member_seeds`), trained (or loaded) in its own run
    folder ``<label>_member_seed<s_k>``; its clone is the single recipe's (the clone cache
    is shared, so member 0 is the clone of training seed ``seed`` itself). Each member runs
    its own DAgger rounds on its own days: the members' errors stay as independent as the
    single agents' (which is what averaging needs), and each member is exactly a single
    agent measured on its own. The ensemble folder ``run`` holds copies of the members'
    files and ``ensemble.json`` (:func:`pulsebms.agents.ensemble.save_ensemble`): one
    checkpoint for ``pulsebms-export``.

    With ``train.imitation.dagger_policy: ensemble`` the members' clones come from one
    DAgger of the ensemble itself (:func:`_ensemble_dagger_clones`); each member then
    starts from its clone (and fine-tunes on its own, if the recipe does).
    """
    from pulsebms.agents.ensemble import (
        ENSEMBLE_FILE,
        EnsembleMember,
        EnsemblePolicy,
        member_seeds,
        save_ensemble,
    )
    from pulsebms.agents.sb3 import vec_normalize_file

    marker = run / "suite_key"
    if marker.is_file() and marker.read_text().strip() == key and (run / ENSEMBLE_FILE).is_file():
        log.info("suite: loading the ensemble %s (trained before, same config)", run)
        return EnsemblePolicy.load(run)
    seeds = member_seeds(seed, size)
    member_overrides = [*overrides, "train.imitation.ensemble_size=1"]
    clone_files: list[Path | None] = [None] * size
    cfg = _agent_train_config(name, seed, agent, train_steps, overrides, experiment)
    if dagger_policy(cfg) == "ensemble":
        member_cfgs = [
            _agent_train_config(name, s, agent, train_steps, member_overrides, experiment)
            for s in seeds
        ]
        clone_files = list(_ensemble_dagger_clones(cfg, member_cfgs, out_dir))
    members: list[EnsembleMember] = []
    for member_seed, clone_file in zip(seeds, clone_files, strict=True):
        train_suite_agent(
            name,
            member_seed,
            agent=agent,
            train_steps=train_steps,
            overrides=member_overrides,
            out_dir=out_dir,
            progress=progress,
            label=f"{label}_member",
            experiment=experiment,
            clone_file=clone_file,
        )
        model = _agent_run_dir(out_dir, run.parent.name, f"{label}_member", member_seed)
        model /= "model.zip"
        norm = vec_normalize_file(model)
        members.append(EnsembleMember(model, norm if norm.is_file() else None, member_seed))
    save_ensemble(run, members, info={"label": label, "seed": seed, "size": size})
    marker.write_text(key + "\n")
    return EnsemblePolicy.load(run)


def _teacher_factory(cfg: Any) -> PolicyFactory:
    from pulsebms.agents.workflow import baseline_factories

    teacher = str(cfg.train.imitation.teacher)
    if teacher == ORACLE:
        raise ValueError("the teacher must not see the true future: use the forecast 'mpc'")
    return baseline_factories([teacher])[teacher]


def suite_demonstrations(cfg: Any, out_dir: str | Path = "runs/suite") -> Any:
    """The teacher's demonstrations on the training days of ``cfg`` (cached on disk).

    ``train.imitation.demo_days`` episodes of the training env (``train.scenario``: randomised
    days, the agent's decision interval and training shield), reset seeds ``demo_seed`` on;
    cached as ``<out_dir>/demos/<fleet>/<teacher>_<key>.npz`` (``key``: what they depend on),
    so every training seed and a resumed suite reuse them.

    Args:
        cfg: A training config with ``train.imitation`` (:func:`train_config`).
        out_dir: The suite's output folder.

    Returns:
        The :class:`pulsebms.agents.imitation.Demonstrations`.
    """
    from pulsebms.agents.imitation import Demonstrations

    im = cfg.train.imitation
    parts = [_cached_demonstrations(cfg, int(im.demo_seed), int(im.demo_days), out_dir, "")]
    for entry in spike_sets(im):
        if entry["days"] > 0:
            spiky = spike_config(cfg, entry["params"])
            parts.append(
                _cached_demonstrations(spiky, entry["seed"], entry["days"], out_dir, "spike_")
            )
    return parts[0] if len(parts) == 1 else Demonstrations.concat(parts)


def _cached_demonstrations(
    cfg: Any, first_seed: int, days: int, out_dir: str | Path, tag: str
) -> Any:
    """The teacher on ``days`` training days of ``cfg`` from reset seed ``first_seed``."""
    from pulsebms.agents.imitation import Demonstrations, collect_demonstrations
    from pulsebms.experiments.common import make_cfg_env_factory

    teacher = str(cfg.train.imitation.teacher)
    key = _fingerprint(
        _env_key(cfg.env),
        cfg.fleet,
        cfg.shield,
        cfg.train.get("scenario"),
        teacher,
        days,
        first_seed,
    )
    path = Path(out_dir) / "demos" / str(cfg.fleet.name) / f"{teacher}_{tag}{key}.npz"
    if path.is_file():
        try:
            return Demonstrations.load(path)
        except (OSError, ValueError, KeyError):  # unreadable: collect again
            log.warning("suite: demonstrations %s unreadable, collecting again", path)
    seeds = list(range(first_seed, first_seed + days))
    log.info("suite: %s demonstrations on %d training days -> %s", teacher, days, path)
    demos = collect_demonstrations(make_cfg_env_factory(cfg), _teacher_factory(cfg), seeds)
    demos.save(path)
    return demos


def _imitation_settings(cfg: Any) -> Any:
    """The :class:`pulsebms.agents.imitation.ImitationConfig` of ``train.imitation``."""
    from pulsebms.agents.imitation import ImitationConfig

    im = cfg.train.imitation
    return ImitationConfig(
        epochs=int(im.epochs),
        batch_size=int(im.batch_size),
        learning_rate=float(im.learning_rate),
        log_std=float(im.log_std),
        critic_epochs=int(im.critic_epochs),
        critic_rounds=int(im.critic_rounds),
    )


def _clone_key(cfg: Any) -> str:
    """The fingerprint of what a clone of ``cfg`` depends on.

    Env, fleet, shield, training days, ``train.imitation``, the agent's network and the
    seed (not PPO's update settings, nor the initial log-std: the clone sets its own).
    """
    from pulsebms.experiments.common import plain_dict

    update_only = {"learning_rate", "n_epochs", "clip_range", "batch_size", "n_steps"}
    update_only.add("log_std_init")
    agent_init = {k: v for k, v in plain_dict(cfg.agent).items() if k not in update_only}
    return _fingerprint(
        _env_key(cfg.env),
        cfg.fleet,
        cfg.shield,
        cfg.train.get("scenario"),
        _imitation_key(cfg.train.imitation),
        agent_init,
        int(cfg.seed),
    )


def _dagger_round(cfg: Any, round_: int, demos: Any, student: Any) -> Any:
    """``demos`` plus DAgger round ``round_`` of ``cfg``: ``student`` acts, the teacher labels.

    The round's ``dagger_days`` days are reset seeds ``demo_seed + demo_days + 10 000 seed
    + round_ · dagger_days`` on (``seed``: ``cfg.seed``); the first of them are each spike
    set's days (its ``dagger_share``), the rest plain training days.
    """
    from pulsebms.agents.imitation import Demonstrations, collect_demonstrations
    from pulsebms.experiments.common import make_cfg_env_factory

    im = cfg.train.imitation
    first = int(im.demo_seed) + int(im.demo_days) + int(cfg.seed) * 10_000
    start = first + round_ * int(im.dagger_days)
    seeds = list(range(start, start + int(im.dagger_days)))
    split: list[tuple[Any, list[int]]] = []
    taken = 0
    for entry in spike_sets(im):  # the round's first days: spiky
        if entry["dagger_share"] <= 0:
            continue
        n_spike = min(round(entry["dagger_share"] * len(seeds)), len(seeds) - taken)
        split.append((spike_config(cfg, entry["params"]), seeds[taken : taken + n_spike]))
        taken += n_spike
    split.append((cfg, seeds[taken:]))
    visited = [demos]
    for days_cfg, days in split:
        if days:
            visited.append(
                collect_demonstrations(
                    make_cfg_env_factory(days_cfg),
                    _teacher_factory(days_cfg),
                    days,
                    student=student,
                )
            )
    return Demonstrations.concat(visited)


def _write_reports(reports: Sequence[Any], *paths: Path | None) -> None:
    text = json.dumps([r.__dict__ for r in reports], indent=1, default=float) + "\n"
    for path in paths:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


def imitation_warm_start(
    cfg: Any,
    *,
    out_dir: str | Path = "runs/suite",
    run_dir: str | Path | None = None,
    clone_file: str | Path | None = None,
) -> Any:
    """The ``warm_start`` of :func:`pulsebms.agents.sb3.train_agent` for ``train.imitation``.

    Clones the teacher's demonstrations (:func:`suite_demonstrations`) into the model
    (:func:`pulsebms.agents.imitation.clone_into`, with the agent's fixed cost penalty),
    then runs ``dagger_rounds`` DAgger rounds (the cloned policy acts on ``dagger_days`` new
    training days per round, the teacher labels, the union is cloned again). The clone
    reports go to ``<run_dir>/imitation.json``. The clone (weights and normaliser) is cached
    under ``<out_dir>/clones/<fleet>/`` by what it depends on (env, fleet, shield, training
    days, ``train.imitation``, the agent's network and seed; not PPO's update settings), so
    a fine-tune starts from exactly the clone evaluated on its own.

    Args:
        cfg: A training config with ``train.imitation``.
        out_dir: The suite's output folder (the demonstration cache).
        run_dir: Where to write the reports (``None``: nowhere).
        clone_file: Start from this clone, made elsewhere (an ensemble member's, by the
            ensemble's own DAgger: :func:`train_suite_agent`), instead of cloning.

    Returns:
        ``model -> None``.

    Raises:
        FileNotFoundError: When the returned function runs and ``clone_file`` is missing.
    """
    from pulsebms.agents.imitation import clone_into, load_clone, save_clone
    from pulsebms.agents.policy import SB3Policy

    im = cfg.train.imitation
    settings = _imitation_settings(cfg)
    penalty = float(cfg.agent.get("cost_penalty", 0.0) or 0.0)
    seed = int(cfg.seed)
    if clone_file is not None:
        clone_path = Path(clone_file)
    else:
        clone_path = Path(out_dir) / "clones" / str(cfg.fleet.name)
        clone_path /= f"{_clone_key(cfg)}_seed{seed}.pt"

    def warm_start(model: Any) -> None:
        if clone_file is not None and not clone_path.is_file():
            raise FileNotFoundError(f"the clone {clone_path} to start from is missing")
        if clone_path.is_file():
            log.info("suite: loading the clone %s", clone_path)
            load_clone(model, clone_path)
            if run_dir is not None and clone_path.with_suffix(".json").is_file():
                Path(run_dir).mkdir(parents=True, exist_ok=True)
                text = clone_path.with_suffix(".json").read_text()
                (Path(run_dir) / "imitation.json").write_text(text)
            return
        demos = suite_demonstrations(cfg, out_dir)
        reports = [clone_into(model, demos, settings, cost_penalty=penalty, seed=seed)]
        log.info("suite: cloned %s: %s", im.teacher, reports[-1])
        for round_ in range(int(im.dagger_rounds)):
            demos = _dagger_round(cfg, round_, demos, SB3Policy(model, model.get_env()))
            reports.append(clone_into(model, demos, settings, cost_penalty=penalty, seed=seed))
            log.info("suite: DAgger round %d: %s", round_ + 1, reports[-1])
        save_clone(model, clone_path)
        run_report = None if run_dir is None else Path(run_dir) / "imitation.json"
        _write_reports(reports, clone_path.with_suffix(".json"), run_report)

    return warm_start


def _ensemble_dagger_clones(
    cfg: Any, member_cfgs: Sequence[Any], out_dir: str | Path
) -> list[Path]:
    """The members' clones of an ensemble whose DAgger rounds the *ensemble* acts in.

    ``train.imitation.dagger_policy: ensemble`` (:func:`dagger_policy`). Each member (its
    config in ``member_cfgs``: its own seed, so its own initialisation and minibatch order)
    is cloned on the demonstrations; then every DAgger round rolls out the ensemble (the
    mean of the members' actions, what the deployer runs) on the round's days of the
    ensemble's seed, the teacher labels the visited states, and every member is cloned
    again on the same aggregate. Cached as ``<out_dir>/clones/<fleet>/<key>_ens<seed>_member
    <seed_k>.pt`` (``key``: :func:`_clone_key` of the ensemble's config, which holds the
    ensemble size, the DAgger policy and the ensemble's seed); computed only when one is
    missing.

    Args:
        cfg: The ensemble's training config (``ensemble_size`` > 1, its training seed).
        member_cfgs: Each member's single-agent config, in member order.
        out_dir: The suite's output folder.

    Returns:
        The members' clone files, in member order.
    """
    import tempfile

    from pulsebms.agents.ensemble import EnsemblePolicy
    from pulsebms.agents.imitation import clone_into, save_clone
    from pulsebms.agents.policy import SB3Policy
    from pulsebms.agents.sb3 import train_agent
    from pulsebms.experiments.common import make_cfg_env_factory, seed_everything

    folder = Path(out_dir) / "clones" / str(cfg.fleet.name)
    group = f"{_clone_key(cfg)}_ens{int(cfg.seed)}"
    paths = [folder / f"{group}_member{int(m.seed)}.pt" for m in member_cfgs]
    if all(p.is_file() for p in paths):
        return paths
    im = cfg.train.imitation
    settings = _imitation_settings(cfg)
    penalty = float(cfg.agent.get("cost_penalty", 0.0) or 0.0)
    demos = suite_demonstrations(cfg, out_dir)
    models: list[Any] = []
    reports: list[list[Any]] = []
    for member in member_cfgs:
        seed = int(member.seed)
        seed_everything(seed, torch_threads=int(member.train.torch_threads))
        first: list[Any] = []

        def clone(model: Any, seed: int = seed, first: list[Any] = first) -> None:
            first.append(clone_into(model, demos, settings, cost_penalty=penalty, seed=seed))

        with tempfile.TemporaryDirectory() as scratch:  # the model as train_agent builds it
            result = train_agent(
                instantiate(member.agent, _convert_="object"),
                make_cfg_env_factory(member),
                total_timesteps=0,
                seed=seed,
                out_dir=scratch,
                n_envs=int(member.train.n_envs),
                warm_start=clone,
            )
        models.append(result.model)
        reports.append(first)
        log.info("suite: ensemble member %d cloned %s: %s", seed, im.teacher, first[-1])
    for round_ in range(int(im.dagger_rounds)):
        student = EnsemblePolicy([SB3Policy(m, m.get_env()) for m in models])
        demos = _dagger_round(cfg, round_, demos, student)
        for model, member, member_reports in zip(models, member_cfgs, reports, strict=True):
            member_reports.append(
                clone_into(model, demos, settings, cost_penalty=penalty, seed=int(member.seed))
            )
        log.info("suite: ensemble DAgger round %d: %s", round_ + 1, [r[-1] for r in reports])
    for model, path, member_reports in zip(models, paths, reports, strict=True):
        save_clone(model, path)
        _write_reports(member_reports, path.with_suffix(".json"))
    return paths


def _agent_factories(
    benchmarks: Sequence[str],
    *,
    checkpoint: str | None,
    agent: str,
    train_steps: int | None,
    train_seeds: Sequence[int],
    overrides: Sequence[str],
    out_dir: Path,
    progress: bool,
    label: str,
    experiment: str = "suite",
    eval_hold_mode: str | None = None,
    row_label: str | None = None,
) -> dict[str, dict[str, PolicyFactory]]:
    """Per benchmark, name → factory of the evaluated agents (trained once per fleet).

    Each agent decides every ``env.decision_s`` and holds in the ``env.hold_mode`` of its
    recipe (``eval_hold_mode``: another mode, rows ``row_label``).
    """
    from pulsebms.experiments.common import decision_s, hold_mode
    from pulsebms.experiments.train import held_factory

    out: dict[str, dict[str, PolicyFactory]] = {name: {} for name in benchmarks}
    if checkpoint:
        from pulsebms.experiments.evaluate import load_checkpoint_policy

        policy = load_checkpoint_policy(checkpoint)
        for name in benchmarks:
            cfg = benchmark_config(name)
            mode = eval_hold_mode or hold_mode(cfg)
            held = held_factory(partial(_fixed, policy), decision_s(cfg), mode)
            out[name]["agent"] = held
        return out
    if train_steps is not None and train_steps <= 0:
        return out
    for group in fleet_groups(benchmarks).values():
        for seed in train_seeds:
            policy = train_suite_agent(
                group[0],
                int(seed),
                agent=agent,
                train_steps=train_steps,
                overrides=overrides,
                out_dir=out_dir,
                progress=progress,
                label=label,
                experiment=experiment,
            )
            # the interval and hold mode it trained with (env.decision_s / env.hold_mode of
            # its recipe and overrides), which a recipe variant may set apart from the
            # benchmark's
            trained = agent_execution(
                group[0],
                int(seed),
                agent=agent,
                train_steps=train_steps,
                overrides=overrides,
                experiment=experiment,
            )
            every_s = trained.decision_s
            mode = eval_hold_mode or trained.hold_mode
            log.info(
                "suite: %s_seed%d decides every %s s, holds %s (trained holding %s)",
                row_label or label,
                seed,
                every_s,
                mode,
                trained.hold_mode,
            )
            for name in group:
                out[name][f"{row_label or label}_seed{seed}"] = held_factory(
                    partial(_fixed, policy), every_s, mode
                )
    return out


class AgentExecution(NamedTuple):
    """How the suite's agent acts: what its recipe trained with.

    Attributes:
        decision_s: Its decision interval [s] (``env.decision_s``; ``None``: every plant step).
        hold_mode: What it holds between decisions (``env.hold_mode``,
            :mod:`pulsebms.envs.hold`).
    """

    decision_s: float | None
    hold_mode: str


def agent_execution(
    name: str,
    seed: int,
    *,
    agent: str = "ppo",
    train_steps: int | None = None,
    overrides: Sequence[str] = (),
    experiment: str = "suite",
) -> AgentExecution:
    """The decision interval and hold mode the suite's agent for ``name``'s fleet trains with.

    The suite evaluates it the same way (through
    :class:`pulsebms.envs.decision.DecisionIntervalPolicy`), not at the benchmark's
    interval: a recipe variant with ``env.decision_s=300`` decides at every plant step, one
    with ``env.hold_mode=import_cap`` keeps its plant loop.

    Example:
        >>> agent_execution("mild", 0)
        AgentExecution(decision_s=900.0, hold_mode='action')
        >>> agent_execution("mild", 0, overrides=["env.decision_s=300", "env.hold_mode=grid"])
        AgentExecution(decision_s=300.0, hold_mode='grid')
    """
    from pulsebms.experiments.common import decision_s, hold_mode

    cfg = _agent_train_config(name, seed, agent, train_steps, overrides, experiment)
    return AgentExecution(decision_s(cfg), hold_mode(cfg))


def _agent_train_config(
    name: str,
    seed: int,
    agent: str,
    train_steps: int | None,
    overrides: Sequence[str],
    experiment: str,
) -> Any:
    """The training config of the suite's agent for ``name``'s fleet and ``seed``."""
    extra = [f"seed={seed}", *overrides]
    if train_steps is not None:
        extra.append(f"train.total_timesteps={train_steps}")
    return train_config(name, agent, extra, experiment=experiment)


def _episode_row(
    name: str,
    policy_name: str,
    factory: PolicyFactory | None,
    seed: int,
    *,
    cfg: Any,
    cache_key: str,
    out_dir: Path,
    max_steps: int | None,
) -> dict[str, Any]:
    """One episode's KPI row, from the cache when the same episode was evaluated before."""
    from pulsebms.agents.evaluation import _idle
    from pulsebms.experiments.common import env_kwargs, shield_kwargs

    path = out_dir / "episodes" / name / f"{policy_name}_seed{seed}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):  # unreadable: evaluate again
            cached = {}
        if cached.get("key") == cache_key:
            return dict(cached["row"])
    reference = policy_name == NO_BATTERY
    table = evaluate_policies(
        {"_idle" if reference else policy_name: _idle if reference or factory is None else factory},
        env_id=str(cfg.env.id),
        seeds=[seed],
        env_kwargs=env_kwargs(cfg),
        shield=bool(cfg.shield.enabled),
        shield_kwargs=shield_kwargs(cfg),
        max_steps=max_steps,
        progress=False,
        no_battery=reference,
    )
    row = next(r for r in table.rows if r["policy"] == policy_name)
    row = {**row, "scenario": name}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial_path.write_text(json.dumps({"key": cache_key, "row": row}, default=float))
    partial_path.replace(path)  # atomic: suites running side by side never read half a file
    return row


def run_suite(
    benchmarks: Sequence[str] = BENCHMARKS,
    *,
    seeds: Sequence[int] = (100, 101, 102),
    baselines: Sequence[str] = (*RULES, "mpc", ORACLE),
    max_steps: int | None = None,
    checkpoint: str | None = None,
    agent: str = "ppo",
    train_steps: int | None = 0,
    train_seeds: Sequence[int] = (0, 1, 2),
    train_overrides: Sequence[str] = (),
    out_dir: str | Path = "runs/suite",
    progress: bool = False,
    label: str | None = None,
    experiment: str = "suite",
    held_baselines: Sequence[str] = (),
    bench_overrides: Sequence[str] = (),
    variant: str | None = None,
    held_mode: str = "action",
    eval_hold_mode: str | None = None,
) -> list[SuiteRow]:
    """Evaluate the baselines (and trained agents) on every benchmark; the suite's rows.

    Agents are trained once per fleet (:func:`train_suite_agent`, on the training scenario
    of ``experiment=suite``: randomised days) and evaluated on every benchmark of that
    fleet at the plant step, deciding every ``env.decision_s`` like in training. Every
    (benchmark, policy, seed) episode is cached under ``<out_dir>/episodes`` (keyed by the
    benchmark's config, the policy and, for agents, the training config), and trained agents
    under ``<out_dir>/agents``: an interrupted suite resumes where it stopped.

    Args:
        benchmarks: Benchmark names.
        seeds: Evaluation seeds (``env.reset``), never the training seeds.
        baselines: Baseline names (:data:`pulsebms.agents.workflow.BASELINES`).
        max_steps: Cut episodes (``None``: the benchmark's full day).
        checkpoint: A trained agent (SB3 zip or RLlib folder) to evaluate as ``agent``; it
            must fit each benchmark's observation (the fleet's size).
        agent: The SB3 agent option trained (``ppo``, ``sac``, ``ppo_lagrangian``, ...).
        train_steps: Decisions to train per training seed and fleet (``None``: the suite
            preset's budget; 0: no training); rows ``<agent>_seed<s>`` and their pooled
            ``<agent>`` row (mean ± std over training seeds × evaluation seeds).
        train_seeds: Training seeds (≥ 3 for a seed-stable claim).
        train_overrides: More Hydra overrides of the training config.
        out_dir: Where the KPI tables (``<benchmark>/<stem>.{csv,md}``, :func:`table_stem`),
            the cache and the models go.
        progress: Progress bars.
        label: Name of the trained variant (``agent`` when ``None``; e.g. ``ppo_respect``
            for a run with ``shield.settings.allocation=respect_split``): rows
            ``<label>_seed<s>`` and ``<label>``, run folders ``<label>_seed<s>``.
        experiment: The training recipe (:func:`train_config`; ``suite_mpc_bc``: clone the
            forecast MPC, then fine-tune with shielded PPO).
        held_baselines: Baselines also evaluated deciding every ``env.decision_s`` like the
            agent (rows ``<name>_held``; e.g. ``mpc``: the teacher as the agent sees it).
        bench_overrides: Hydra overrides of every benchmark's config (e.g.
            ``+scenario.params.forecast=noisy``): a variant of the benchmarks.
        variant: The variant's name, required with ``bench_overrides``: its rows, tables
            and cached episodes are ``<benchmark>@<variant>``.
        held_mode: What the ``held_baselines`` hold between decisions
            (:mod:`pulsebms.envs.hold`): ``action`` (rows ``<name>_held``), ``grid`` or
            ``import_cap`` (rows ``<name>_held_<mode>``).
        eval_hold_mode: Evaluate the trained agents holding in this mode instead of the
            ``env.hold_mode`` they trained in (rows ``<label>_hold<mode>_seed<s>`` and
            ``<label>_hold<mode>``; ``None``: the mode they trained in, rows as before).

    Returns:
        The rows of every benchmark.

    Raises:
        ValueError: On ``bench_overrides`` without a ``variant``, a variant name that
            is not a plain word (letters, digits, ``_``, ``-``, ``.``), or an unknown hold
            mode.
    """
    from pulsebms.agents.workflow import baseline_factories
    from pulsebms.envs.hold import check_hold_mode
    from pulsebms.experiments.common import decision_s
    from pulsebms.experiments.train import held_factory

    if bench_overrides and not variant:
        raise ValueError("name the variant the bench_overrides make (variant=...)")
    if variant is not None and not all(c.isalnum() or c in "_-." for c in variant):
        raise ValueError(f"variant must be a plain word (letters, digits, _ - .), got {variant!r}")
    check_hold_mode(held_mode)
    if eval_hold_mode is not None:
        check_hold_mode(eval_hold_mode)
    out = Path(out_dir)
    label = label or agent
    train_label = label
    if eval_hold_mode is not None:
        label = f"{label}_hold{eval_hold_mode}"
    agents = _agent_factories(
        benchmarks,
        checkpoint=checkpoint,
        agent=agent,
        train_steps=train_steps,
        train_seeds=train_seeds,
        overrides=train_overrides,
        out_dir=out,
        progress=progress,
        label=train_label,
        experiment=experiment,
        eval_hold_mode=eval_hold_mode,
        row_label=label,
    )
    held_suffix = "_held" if held_mode == "action" else f"_held_{held_mode}"
    rows: list[SuiteRow] = []
    for bench in benchmarks:
        cfg = benchmark_config(bench, bench_overrides)
        name = f"{bench}@{variant}" if variant else bench
        bench_key = _fingerprint(_env_key(cfg.env), cfg.fleet, cfg.scenario, cfg.shield, max_steps)
        policies: dict[str, PolicyFactory | None] = {NO_BATTERY: None}
        policies.update(baseline_factories(list(baselines)))
        for held in held_baselines:
            teacher = baseline_factories([held])[held]
            policies[f"{held}{held_suffix}"] = held_factory(teacher, decision_s(cfg), held_mode)
        policies.update(agents[bench])
        episodes: list[dict[str, Any]] = []
        for policy_name, factory in policies.items():
            key = bench_key
            if policy_name in agents[bench]:
                if checkpoint:
                    key = _fingerprint(bench_key, str(Path(checkpoint).resolve()))
                else:
                    seed = int(policy_name.rsplit("_seed", 1)[1])
                    steps = [] if train_steps is None else [f"train.total_timesteps={train_steps}"]
                    tcfg = train_config(
                        bench,
                        agent,
                        [f"seed={seed}", *train_overrides, *steps],
                        experiment=experiment,
                    )
                    key = _fingerprint(bench_key, _train_cfg_key(tcfg))
                    if eval_hold_mode is not None:
                        key = _fingerprint(key, f"hold_mode={eval_hold_mode}")
            for seed in seeds:
                episodes.append(
                    _episode_row(
                        name,
                        policy_name,
                        factory,
                        int(seed),
                        cfg=cfg,
                        cache_key=key,
                        out_dir=out,
                        max_steps=max_steps,
                    )
                )
        pooled = [
            {**r, "policy": label}
            for r in episodes
            if str(r["policy"]).startswith(f"{label}_seed") and not checkpoint
        ]
        table = KPITable(rows=episodes + pooled, baseline=next(iter(baselines), NO_BATTERY))
        table.save(out / name, stem=table_stem(label if agents[bench] else None))
        rows.extend(suite_rows(table, name))
    return rows


def table_stem(label: str | None) -> str:
    """The file stem of a benchmark's KPI table under ``<out_dir>/<benchmark>/``.

    A run that evaluates agents writes ``kpis_<label>.{csv,md}`` (and
    ``kpis_<label>_episodes.csv``), so suite runs of different agent variants side by side
    keep their own tables; a run of baselines only writes ``kpis.*``.

    Args:
        label: The agents' row label (``None``: no agent evaluated).

    Returns:
        The stem.

    Example:
        >>> table_stem(None), table_stem("mpcday_bc_hotdr_cap_ens3")
        ('kpis', 'kpis_mpcday_bc_hotdr_cap_ens3')
    """
    return "kpis" if label is None else f"kpis_{label}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pulsebms.experiments.suite``: print the benchmark table."""
    parser = argparse.ArgumentParser(prog="python -m pulsebms.experiments.suite")
    parser.add_argument("--quick", action="store_true", help="3 seeds (100, 101, 102)")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102, 103, 104])
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=[*RULES, "mpc", ORACLE],
        help="baselines to evaluate (none: only the no-battery reference and the agents)",
    )
    parser.add_argument(
        "--held-baselines",
        nargs="*",
        default=[],
        help="baselines also evaluated deciding every env.decision_s like the agent (<name>_held)",
    )
    parser.add_argument(
        "--held-mode",
        default="action",
        choices=list(HOLD_MODES),
        help="what the --held-baselines hold between decisions (rows <name>_held_<mode> "
        "unless action)",
    )
    parser.add_argument(
        "--agent-hold-mode",
        default=None,
        choices=list(HOLD_MODES),
        help="evaluate the trained agents holding in this mode instead of the env.hold_mode "
        "they trained in (rows <label>_hold<mode>)",
    )
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument(
        "--train",
        action="store_true",
        help="train the agent per fleet and training seed (experiment=suite) and evaluate it",
    )
    parser.add_argument("--agent", default="ppo", help="SB3 agent option trained with --train")
    parser.add_argument("--label", default=None, help="name of the trained variant (--agent)")
    parser.add_argument(
        "--experiment",
        default="suite",
        help="training recipe (configs/experiment/): suite, or suite_mpc_bc (clone the MPC, "
        "then fine-tune)",
    )
    parser.add_argument(
        "--train-steps", type=int, default=None, help="decisions per training run (preset's)"
    )
    parser.add_argument("--train-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--train-override", action="append", default=[], help="Hydra override of training"
    )
    parser.add_argument(
        "--bench-override",
        action="append",
        default=[],
        help="Hydra override of every benchmark (a variant: needs --variant), e.g. "
        "+scenario.params.forecast=noisy",
    )
    parser.add_argument(
        "--variant", default=None, help="name of the benchmarks' variant: rows <benchmark>@<name>"
    )
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--out-dir", default="runs/suite")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.benchmarks) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    seeds = args.seeds[:3] if args.quick else args.seeds
    if len(seeds) < 3:
        parser.error("give at least 3 seeds")
    if set(seeds) & set(args.train_seeds) and args.train:
        parser.error("evaluation seeds must differ from the training seeds")
    if args.bench_override and not args.variant:
        parser.error("--bench-override makes a variant of the benchmarks: name it (--variant)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = run_suite(
        args.benchmarks,
        seeds=seeds,
        baselines=args.baselines,
        max_steps=args.max_steps,
        checkpoint=args.checkpoint,
        agent=args.agent,
        train_steps=(args.train_steps if args.train else 0),
        train_seeds=args.train_seeds,
        train_overrides=args.train_override,
        out_dir=args.out_dir,
        progress=args.progress,
        label=args.label,
        experiment=args.experiment,
        held_baselines=args.held_baselines,
        bench_overrides=args.bench_override,
        variant=args.variant,
        held_mode=args.held_mode,
        eval_hold_mode=args.agent_hold_mode,
    )
    if args.train and args.train_seeds and (args.train_steps is None or args.train_steps > 0):
        trained = agent_execution(
            args.benchmarks[0],
            int(args.train_seeds[0]),
            agent=args.agent,
            train_steps=args.train_steps,
            overrides=args.train_override,
            experiment=args.experiment,
        )
        print(
            f"agent {args.label or args.agent}: decides every {trained.decision_s} s, trained "
            f"holding {trained.hold_mode}, evaluated holding "
            f"{args.agent_hold_mode or trained.hold_mode}"
        )
    if args.held_baselines:
        print(f"held baselines {args.held_baselines}: holding {args.held_mode}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
