"""Benchmark suite: every ``configs/benchmark/`` scenario, rules + MPC + MPC-oracle (+ an agent).

Command line::

    python -m pulsebms.experiments.suite --quick                # 3 seeds, rules + MPCs
    python -m pulsebms.experiments.suite --seeds 100 101 102 103 104
    python -m pulsebms.experiments.suite --checkpoint runs/.../model.zip   # + that agent
    python -m pulsebms.experiments.suite --train-steps 150000 --train-seeds 0 1 2  # + PPO

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
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pulsebms.agents.evaluation import NO_BATTERY, KPITable, PolicyFactory, evaluate_policies

__all__ = [
    "BENCHMARKS",
    "SuiteRow",
    "benchmark_config",
    "format_table",
    "main",
    "run_suite",
    "suite_rows",
]

BENCHMARKS: tuple[str, ...] = ("mild", "hot_spike", "cold", "pv_rich", "fleet20")
"""The benchmark scenarios, in table order (files of ``configs/benchmark/``)."""

RULES: tuple[str, ...] = ("rule_equal", "rule_soc", "rule_health")
"""The rule baselines; the best of them on a scenario is the ``× best rule`` reference."""

ORACLE = "mpc_oracle"


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


def _agent_factories(
    cfg: Any,
    name: str,
    *,
    checkpoint: str | None,
    train_steps: int,
    train_seeds: Sequence[int],
    out_dir: Path,
) -> dict[str, PolicyFactory]:
    from pulsebms.experiments.common import env_kwargs, shield_kwargs

    if checkpoint:
        from pulsebms.experiments.evaluate import load_checkpoint_policy

        policy = load_checkpoint_policy(checkpoint)

        return {"agent": partial(_fixed, policy)}
    if train_steps <= 0:
        return {}
    from pulsebms.agents.env_factory import make_env_factory
    from pulsebms.agents.sb3 import PPOConfig, train_agent

    factories: dict[str, PolicyFactory] = {}
    for seed in train_seeds:
        result = train_agent(
            PPOConfig(),
            make_env_factory(
                str(cfg.env.id),
                shield=bool(cfg.shield.enabled),
                shield_kwargs=shield_kwargs(cfg),
                **env_kwargs(cfg),
            ),
            total_timesteps=train_steps,
            seed=int(seed),
            out_dir=out_dir / name / f"ppo_seed{seed}",
        )
        factories[f"ppo_seed{seed}"] = partial(_fixed, result.policy)
    return factories


def run_suite(
    benchmarks: Sequence[str] = BENCHMARKS,
    *,
    seeds: Sequence[int] = (100, 101, 102),
    baselines: Sequence[str] = (*RULES, "mpc", ORACLE),
    max_steps: int | None = None,
    checkpoint: str | None = None,
    train_steps: int = 0,
    train_seeds: Sequence[int] = (0, 1, 2),
    out_dir: str | Path = "runs/suite",
    progress: bool = False,
) -> list[SuiteRow]:
    """Evaluate the baselines (and an agent) on every benchmark; the suite's rows.

    Args:
        benchmarks: Benchmark names.
        seeds: Evaluation seeds (``env.reset``), never the training seeds.
        baselines: Baseline names (:data:`pulsebms.agents.workflow.BASELINES`).
        max_steps: Cut episodes (``None``: the benchmark's full day).
        checkpoint: A trained agent (SB3 zip or RLlib folder) to evaluate as ``agent``; it
            must fit each benchmark's observation (the fleet's size).
        train_steps: Train PPO for this many steps per training seed on each benchmark
            (0: no training); rows ``ppo_seed<s>`` and their pooled ``ppo`` row.
        train_seeds: Training seeds (≥ 3 for a seed-stable claim).
        out_dir: Where the KPI tables (and models) go.
        progress: Progress bars.

    Returns:
        The rows of every benchmark.
    """
    from pulsebms.agents.workflow import baseline_factories
    from pulsebms.experiments.common import env_kwargs, seed_everything, shield_kwargs

    out = Path(out_dir)
    rows: list[SuiteRow] = []
    for name in benchmarks:
        cfg = benchmark_config(name)
        seed_everything(int(cfg.seed), torch_threads=int(cfg.train.torch_threads))
        policies: dict[str, PolicyFactory] = dict(baseline_factories(list(baselines)))
        agents = _agent_factories(
            cfg,
            name,
            checkpoint=checkpoint,
            train_steps=train_steps,
            train_seeds=train_seeds,
            out_dir=out,
        )
        policies.update(agents)
        table = evaluate_policies(
            policies,
            env_id=str(cfg.env.id),
            seeds=list(seeds),
            baseline=next((b for b in baselines if b.startswith("rule")), None),
            env_kwargs=env_kwargs(cfg),
            shield=bool(cfg.shield.enabled),
            shield_kwargs=shield_kwargs(cfg),
            max_steps=max_steps,
            progress=progress,
        )
        for row in table.rows:
            row["scenario"] = name
            if str(row["policy"]).startswith("ppo_seed"):  # pool the training seeds
                table.rows.append({**row, "policy": "ppo"})
        table.save(out / name)
        rows.extend(suite_rows(table, name))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pulsebms.experiments.suite``: print the benchmark table."""
    parser = argparse.ArgumentParser(prog="python -m pulsebms.experiments.suite")
    parser.add_argument("--quick", action="store_true", help="3 seeds (100, 101, 102)")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102, 103, 104])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--train-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--out-dir", default="runs/suite")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.benchmarks) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    seeds = args.seeds[:3] if args.quick else args.seeds
    if len(seeds) < 3:
        parser.error("give at least 3 seeds")
    rows = run_suite(
        args.benchmarks,
        seeds=seeds,
        max_steps=args.max_steps,
        checkpoint=args.checkpoint,
        train_steps=args.train_steps,
        train_seeds=args.train_seeds,
        out_dir=args.out_dir,
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
