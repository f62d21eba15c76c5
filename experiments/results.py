"""Safe-RL results: episode cost (EUR) and constraint cost, mean ± std over seeds, per agent.

Trains each agent once per seed on the quick fleet (``experiment=quick``: the small mixed
LFP + NMC + LCO fleet, equivalent-circuit twin, 15-min steps, one-day episodes, shield in the
loop), evaluates each trained policy on the preset's held-out reset seeds, and reports per
agent the mean ± std over training seeds of

* ``total_cost``: episode cost in EUR (energy + degradation + unserved load + faults);
* ``constraint_cost``: summed pre-shield violation cost per episode (the CMDP cost that
  PPO-Lagrangian constrains to ``--cost-limit``);
* ``pre_shield_violations`` (share of steps), ``violations`` and ``shield_interventions``.

Agents: ``ppo`` (shielded PPO, no penalty), ``ppo_lagrangian`` (SB3 PPO-Lag with a cost
critic), ``ppo_penalty`` (reward penalty, dual ascent), ``sac``, ``rllib_ppo`` and
``rllib_ppo_lagrangian``. Hyperparameters are the quick preset's.

Run::

    python -m pulsebms.experiments.results --quick          # minutes: a smoke-sized budget
    python -m pulsebms.experiments.results                  # full: 150k steps × 5 seeds × 4

The full run trains each of the four default agents for the quick preset's 150 000 steps on
each of 5 seeds (hours on 2 cores). Output: ``<out>/results.md``, ``results.json`` and
``runs.csv`` (one row per agent and seed), and a last line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AGENTS", "RESULT_KPIS", "ResultsSpec", "main", "run_results", "summarise"]

AGENTS = ("ppo", "ppo_lagrangian", "ppo_penalty", "sac", "rllib_ppo", "rllib_ppo_lagrangian")
"""Agents the command knows."""
DEFAULT_AGENTS = ("ppo", "ppo_lagrangian", "sac", "rllib_ppo")
RESULT_KPIS = (
    "total_cost",
    "constraint_cost",
    "pre_shield_violations",
    "violations",
    "shield_interventions",
)
"""KPIs reported (keys of :data:`pulsebms.agents.evaluation.KPIS`)."""


@dataclass(frozen=True)
class ResultsSpec:
    """What one results run does.

    Attributes:
        agents: Names from :data:`AGENTS`.
        seeds: Training seeds (one trained policy per agent and seed).
        total_timesteps: Env steps per training run.
        eval_seeds: Reset seeds of the evaluation episodes of each trained policy.
        cost_limit: Per-episode pre-shield cost limit of the Lagrangian agents.
        out_dir: Output folder.
    """

    agents: Sequence[str] = DEFAULT_AGENTS
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    total_timesteps: int = 150_000
    eval_seeds: Sequence[int] = (100, 101, 102)
    cost_limit: float = 1.0
    out_dir: Path = Path("runs/results")


QUICK = ResultsSpec(total_timesteps=1_920, eval_seeds=(100,), out_dir=Path("runs/results_quick"))
"""The ``--quick`` budget: 20 one-day episodes of training per agent and seed, one eval day."""


def _quick_cfg() -> Any:
    from hydra import compose, initialize_config_module

    from pulsebms.experiments.schemas import register_configs

    register_configs()
    with initialize_config_module("pulsebms.configs", version_base="1.3"):
        return compose("config", overrides=["experiment=quick", "logger=none"])


def _sb3_policy(
    name: str, cfg: Any, spec: ResultsSpec, seed: int, out: Path
) -> Callable[[Any], Any]:
    from hydra.utils import instantiate

    from pulsebms.agents.sb3 import PPOConfig, PPOLagrangianConfig, SACConfig, train_agent
    from pulsebms.experiments.common import make_cfg_env_factory

    quick = instantiate(cfg.agent, _convert_="object")
    n_envs = int(cfg.train.n_envs)
    small = spec.total_timesteps < quick.n_steps * n_envs
    fields = {k: v for k, v in vars(quick).items() if k in PPOConfig.__dataclass_fields__}
    if small:  # a short budget still gets a few updates
        fields.update(n_steps=max(96, spec.total_timesteps // (4 * n_envs)), batch_size=96)
    config: Any
    if name == "ppo":
        config = PPOConfig(**{**fields, "cost_penalty": 0.0, "lagrangian_lr": 0.0})
    elif name == "ppo_penalty":
        config = PPOConfig(
            **{**fields, "cost_penalty": 0.1, "lagrangian_lr": 0.05, "cost_limit": spec.cost_limit}
        )
    elif name == "ppo_lagrangian":
        config = PPOLagrangianConfig(
            **{**fields, "cost_penalty": 0.0, "lagrangian_lr": 0.05, "cost_limit": spec.cost_limit}
        )
    else:
        config = SACConfig(learning_starts=min(960, spec.total_timesteps // 2), gamma=quick.gamma)
        n_envs = 1
    trained = train_agent(
        config,
        make_cfg_env_factory(cfg),
        total_timesteps=spec.total_timesteps,
        seed=seed,
        out_dir=out,
        n_envs=n_envs,
        log_formats=("csv",),
    )
    policy = trained.policy
    return lambda env: policy


def _rllib_policy(
    name: str, cfg: Any, spec: ResultsSpec, seed: int, out: Path
) -> Callable[[Any], Any]:
    from pulsebms.agents.rllib import RLlibPolicy, build_rllib_algorithm, ray_session, train_rllib
    from pulsebms.experiments.common import env_kwargs, shield_kwargs

    horizon = int(cfg.env.horizon_steps)
    batch = max(horizon, min(10 * horizon, spec.total_timesteps // 4 // horizon * horizon))
    iterations = max(1, spec.total_timesteps // batch)
    hyper: dict[str, Any] = {
        "env_kwargs": env_kwargs(cfg),
        "shield_kwargs": shield_kwargs(cfg),
        "seed": seed,
        "train_batch_size": batch,
        "minibatch_size": min(128, batch),
        "num_epochs": 10,
        "lr": 3e-4,
        "gamma": float(cfg.agent.gamma),
    }
    with ray_session(num_cpus=2, temp_dir=Path("/tmp") / f"pulsebms-results-{seed}"):
        if name == "rllib_ppo_lagrangian":
            from pulsebms.agents.rllib_lagrangian import (
                LagrangianSettings,
                build_rllib_lagrangian_algorithm,
            )

            algo = build_rllib_lagrangian_algorithm(
                str(cfg.env.id), LagrangianSettings(cost_limit=spec.cost_limit), **hyper
            )
        else:
            algo = build_rllib_algorithm(str(cfg.env.id), **hyper)
        try:
            run = train_rllib(algo, iterations=iterations, checkpoint_dir=out / "checkpoint")
        finally:
            algo.stop()  # type: ignore[no-untyped-call]  # RLlib is untyped
    policy = RLlibPolicy.from_checkpoint(run.checkpoint_path)
    return lambda env: policy


def run_results(spec: ResultsSpec, *, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train and evaluate every (agent, seed); return one row per run (KPI means over eval seeds).

    Raises:
        ValueError: On an unknown agent name.
    """
    unknown = sorted(set(spec.agents) - set(AGENTS))
    if unknown:
        raise ValueError(f"unknown agents {unknown}; known: {list(AGENTS)}")
    from pulsebms.agents.evaluation import evaluate_policies
    from pulsebms.experiments.common import env_kwargs, seed_everything, shield_kwargs

    cfg = _quick_cfg()
    rows: list[dict[str, Any]] = []
    for name in spec.agents:
        for seed in spec.seeds:
            seed_everything(int(seed), torch_threads=1)
            out = Path(spec.out_dir) / f"{name}_seed{seed}"
            start = time.perf_counter()
            build = _rllib_policy if name.startswith("rllib") else _sb3_policy
            factory = build(name, cfg, spec, int(seed), out)
            train_s = time.perf_counter() - start
            table = evaluate_policies(
                {name: factory},
                env_id=str(cfg.env.id),
                scenarios=[None],
                seeds=list(spec.eval_seeds),
                env_kwargs=env_kwargs(cfg),
                shield=True,
                shield_kwargs=shield_kwargs(cfg),
                progress=False,
            )
            row = {"agent": name, "seed": int(seed), "train_s": train_s}
            row.update({k: table.mean(name, k) for k in RESULT_KPIS})
            rows.append(row)
            log(json.dumps(row, default=float))
    return rows


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per agent and KPI: (mean, sample std over seeds; 0 for a single seed)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for agent in dict.fromkeys(str(r["agent"]) for r in rows):
        mine = [r for r in rows if r["agent"] == agent]
        out[agent] = {}
        for kpi in RESULT_KPIS:
            values = np.asarray([float(r[kpi]) for r in mine])
            std = float(values.std(ddof=1)) if values.size > 1 else 0.0
            out[agent][kpi] = (float(values.mean()), std)
    return out


def to_markdown(summary: Mapping[str, Mapping[str, tuple[float, float]]], spec: ResultsSpec) -> str:
    """The summary as a Markdown table, with the budget and the cost limit stated."""
    lines = [
        f"Quick fleet, {len(spec.seeds)} training seeds, {spec.total_timesteps} env steps each, "
        f"evaluated on reset seeds {list(spec.eval_seeds)}; cost limit of the Lagrangian "
        f"agents: {spec.cost_limit:g} pre-shield cost per episode (one day).",
        "",
        "| agent | episode cost [EUR] | constraint cost [/episode] | pre-shield violations "
        "[/step] | violations | shield interventions |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for agent, kpis in summary.items():
        cells = [f"{m:.4g} ± {s:.2g}" for m, s in (kpis[k] for k in RESULT_KPIS)]
        lines.append(f"| {agent} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m pulsebms.experiments.results [--quick] ...``."""
    parser = argparse.ArgumentParser(prog="python -m pulsebms.experiments.results")
    parser.add_argument("--quick", action="store_true", help="smoke-sized budget (minutes)")
    parser.add_argument("--agents", nargs="+", choices=AGENTS, default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--timesteps", type=int, default=None, help="env steps per run")
    parser.add_argument("--cost-limit", type=float, default=None, help="per episode")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    spec = QUICK if args.quick else ResultsSpec()
    changes: dict[str, Any] = {
        "agents": tuple(args.agents) if args.agents else None,
        "seeds": tuple(args.seeds) if args.seeds else None,
        "total_timesteps": args.timesteps,
        "cost_limit": args.cost_limit,
        "out_dir": args.out,
    }
    spec = replace(spec, **{k: v for k, v in changes.items() if v is not None})
    if spec.total_timesteps < 1 or not math.isfinite(spec.cost_limit) or spec.cost_limit < 0:
        parser.error("--timesteps must be >= 1 and --cost-limit finite and >= 0")
    rows = run_results(spec)
    summary = summarise(rows)
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(summary, spec)
    (out / "results.md").write_text(markdown)
    payload = {
        "cost_limit": spec.cost_limit,
        "total_timesteps": spec.total_timesteps,
        "seeds": list(spec.seeds),
        "eval_seeds": list(spec.eval_seeds),
        "summary": {
            a: {k: {"mean": m, "std": s} for k, (m, s) in v.items()} for a, v in summary.items()
        },
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    with (out / "runs.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(markdown)
    print("RESULT " + json.dumps(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
