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
``rllib_ppo_lagrangian``. PPO hyperparameters are the quick preset's on both backends
(20 one-day episodes per update over 4 envs, minibatch 128, 10 epochs, lr 3e-4, γ 0.99,
initial log-std −1); SAC uses SB3's defaults with the preset's γ.

**Budgets.** As OmniSafe reports its benchmarks, on-policy and off-policy agents get
different env-step budgets (OmniSafe: 10M vs 1M steps): ``--timesteps`` for the PPO family,
``--off-policy-timesteps`` for SAC. **Learning curves.** Each run is evaluated at
``--curve-points`` evenly spaced budgets (checkpoints of the one run: with constant learning
rates, the policy at step *k* of a longer run is the policy a run of *k* steps ends with), so
``curve.md`` shows whether the agents had stopped improving at the budget.

**Resumable.** Every (agent, seed) run writes ``<out>/<agent>_seed<k>/result.json`` when it
is done; a later call with the same settings reuses it instead of training again, so an
interrupted run loses at most the run in progress, and several agents can be trained by
separate processes into one output folder (the last call writes the complete table).

Run::

    python -m pulsebms.experiments.results --quick          # minutes: a smoke-sized budget
    python -m pulsebms.experiments.results                  # the committed table (docs/results.md)
    python -m pulsebms.experiments.results --agents sac     # one agent (e.g. per process)

Output: ``<out>/results.md`` (the table, with budget and cost limit), ``curve.md``,
``results.json``, ``runs.csv`` (one row per agent and seed) and a last line
``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AGENTS",
    "OFF_POLICY",
    "RESULT_KPIS",
    "ResultsSpec",
    "curve_markdown",
    "main",
    "run_results",
    "summarise",
    "to_markdown",
]

AGENTS = ("ppo", "ppo_lagrangian", "ppo_penalty", "sac", "rllib_ppo", "rllib_ppo_lagrangian")
"""Agents the command knows."""
DEFAULT_AGENTS = ("ppo", "ppo_lagrangian", "sac", "rllib_ppo")
OFF_POLICY = frozenset({"sac"})
"""Agents trained for ``off_policy_timesteps`` instead of ``total_timesteps``."""
REFERENCES = ("no_battery", "rule_soc")
"""Untrained reference policies evaluated on the same days (one row each, no seeds)."""
RESULT_KPIS = (
    "total_cost",
    "constraint_cost",
    "pre_shield_violations",
    "violations",
    "shield_interventions",
)
"""KPIs reported (keys of :data:`pulsebms.agents.evaluation.KPIS`)."""
RESULTS_VERSION = 2
"""Bumped when what a run trains changes, so cached runs of other settings are not reused."""


@dataclass(frozen=True)
class ResultsSpec:
    """What one results run does.

    Attributes:
        agents: Names from :data:`AGENTS`.
        seeds: Training seeds (one trained policy per agent and seed).
        total_timesteps: Env steps per training run of the on-policy agents.
        off_policy_timesteps: Env steps per training run of the agents in :data:`OFF_POLICY`.
        eval_seeds: Reset seeds of the evaluation episodes of each trained policy.
        cost_limit: Per-episode pre-shield cost limit of the Lagrangian agents.
        curve_points: Evaluations per run at evenly spaced budgets (the last is the budget);
            not part of a run's cache key (a finished run is reused whatever its points).
        out_dir: Output folder.
    """

    agents: Sequence[str] = DEFAULT_AGENTS
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    total_timesteps: int = 48_000
    off_policy_timesteps: int = 24_000
    eval_seeds: Sequence[int] = (100, 101, 102)
    cost_limit: float = 1.0
    curve_points: int = 4
    out_dir: Path = Path("runs/results")

    def budget(self, agent: str) -> int:
        """Env steps of one training run of ``agent``."""
        return self.off_policy_timesteps if agent in OFF_POLICY else self.total_timesteps

    def run_key(self, agent: str, seed: int) -> dict[str, Any]:
        """What makes a cached run of ``agent`` and ``seed`` reusable (see ``result.json``)."""
        return {
            "version": RESULTS_VERSION,
            "agent": agent,
            "seed": int(seed),
            "timesteps": self.budget(agent),
            "eval_seeds": [int(s) for s in self.eval_seeds],
            "cost_limit": float(self.cost_limit),
        }


QUICK = ResultsSpec(
    total_timesteps=1_920,
    off_policy_timesteps=1_920,
    eval_seeds=(100,),
    curve_points=1,
    out_dir=Path("runs/results_quick"),
)
"""The ``--quick`` budget: 20 one-day episodes of training per agent and seed, one eval day."""

PolicyFactory = Callable[[Any], Any]
Checkpoints = list[tuple[int, Callable[[], PolicyFactory]]]


def _quick_cfg() -> Any:
    from hydra import compose, initialize_config_module

    from pulsebms.experiments.schemas import register_configs

    register_configs()
    with initialize_config_module("pulsebms.configs", version_base="1.3"):
        return compose("config", overrides=["experiment=quick", "logger=none"])


def _points(budget: int, points: int) -> list[int]:
    """``points`` evenly spaced budgets ending at ``budget``."""
    n = max(1, int(points))
    return sorted({max(1, round(budget * k / n)) for k in range(1, n + 1)})


def _sb3_checkpoint(zip_path: Path) -> Callable[[], PolicyFactory]:
    def load() -> PolicyFactory:
        from pulsebms.agents.policy import SB3Policy
        from pulsebms.agents.sb3 import load_agent

        stem = zip_path.name.removesuffix(".zip")  # model_<n>_steps
        steps = stem.removeprefix("model_")
        model, vec_normalize = load_agent(
            zip_path, zip_path.with_name(f"model_vecnormalize_{steps}.pkl")
        )
        policy = SB3Policy(model, vec_normalize)
        return lambda env: policy

    return load


def _train_sb3(
    name: str, cfg: Any, spec: ResultsSpec, seed: int, out: Path
) -> tuple[Checkpoints, dict[str, Any]]:
    from hydra.utils import instantiate

    from pulsebms.agents.sb3 import PPOConfig, PPOLagrangianConfig, SACConfig, train_agent
    from pulsebms.experiments.common import make_cfg_env_factory

    budget = spec.budget(name)
    quick = instantiate(cfg.agent, _convert_="object")
    n_envs = int(cfg.train.n_envs)
    small = budget < quick.n_steps * n_envs
    fields = {k: v for k, v in vars(quick).items() if k in PPOConfig.__dataclass_fields__}
    if small:  # a short budget still gets a few updates
        fields.update(n_steps=max(96, budget // (4 * n_envs)), batch_size=96)
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
        config = SACConfig(learning_starts=min(960, budget // 2), gamma=quick.gamma)
        n_envs = 1
    points = _points(budget, spec.curve_points)
    every = points[0] if len(points) > 1 else 0
    trained = train_agent(
        config,
        make_cfg_env_factory(cfg),
        total_timesteps=budget,
        seed=seed,
        out_dir=out,
        n_envs=n_envs,
        checkpoint_freq=every,
        log_formats=("csv",),
    )
    checkpoints: Checkpoints = []
    saved = {
        int(path.name.removeprefix("model_").removesuffix("_steps.zip")): path
        for path in (out / "checkpoints").glob("model_*_steps.zip")
    }
    for steps in sorted(saved):  # numerically: model_6000 before model_12000
        if steps < trained.timesteps:
            checkpoints.append((steps, _sb3_checkpoint(saved[steps])))
    final = trained.policy
    checkpoints.append((trained.timesteps, lambda: lambda env: final))
    return checkpoints, dict(trained.extras)


def _train_rllib(
    name: str, cfg: Any, spec: ResultsSpec, seed: int, out: Path
) -> tuple[Checkpoints, dict[str, Any]]:
    from hydra.utils import instantiate

    from pulsebms.agents.rllib import RLlibPolicy, build_rllib_algorithm, ray_session, train_rllib
    from pulsebms.experiments.common import env_kwargs, shield_kwargs

    budget = spec.budget(name)
    quick = instantiate(cfg.agent, _convert_="object")  # the SB3 preset: same PPO settings
    n_envs = int(cfg.train.n_envs)
    horizon = int(cfg.env.horizon_steps)
    batch = int(quick.n_steps) * n_envs
    if budget < batch:  # a short budget still gets a few updates (whole days)
        batch = max(horizon, budget // 4 // horizon * horizon)
    hyper: dict[str, Any] = {
        "train_batch_size": batch,
        "minibatch_size": min(int(quick.batch_size), batch),
        "num_epochs": int(quick.n_epochs),
        "lr": float(quick.learning_rate),
        "gamma": float(quick.gamma),
        "lambda_": float(quick.gae_lambda),
        "clip_param": float(quick.clip_range),
        "log_std_init": float(quick.log_std_init),
        "hidden_sizes": tuple(quick.net_arch),
    }
    if name == "rllib_ppo_lagrangian":
        from pulsebms.agents.lagrangian import RllibPPOLagrangianConfig

        agent: Any = RllibPPOLagrangianConfig(
            **hyper, cost_limit=spec.cost_limit, lagrangian_lr=0.05
        )
    else:
        from pulsebms.agents.rllib_config import RllibPPOConfig

        agent = RllibPPOConfig(**hyper)
    saved: list[tuple[int, Path]] = []
    progress: list[dict[str, Any]] = []
    with ray_session(num_cpus=2, temp_dir=Path("/tmp") / f"pb-results-{name}-{seed}"):
        algo = build_rllib_algorithm(
            str(cfg.env.id),
            agent,
            env_kwargs=env_kwargs(cfg),
            shield_kwargs=shield_kwargs(cfg),
            num_envs_per_env_runner=n_envs,
            seed=seed,
        )
        try:
            for point in _points(budget, spec.curve_points):
                run = train_rllib(
                    algo, total_env_steps=point, checkpoint_dir=out / f"checkpoint_{point}"
                )
                progress += [asdict(m) for m in run.metrics]
                saved.append((run.metrics[-1].env_steps_lifetime, run.checkpoint_path))
        finally:
            algo.stop()  # type: ignore[no-untyped-call]  # RLlib is untyped
    if progress:
        with (out / "progress.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(progress[0]))
            writer.writeheader()
            writer.writerows(progress)

    def loader(path: Path) -> Callable[[], PolicyFactory]:
        def load() -> PolicyFactory:
            policy = RLlibPolicy.from_checkpoint(path)
            return lambda env: policy

        return load

    last = progress[-1] if progress else {}
    extras = {"lagrange_multiplier": last.get("lagrange_multiplier", math.nan)}
    return [(steps, loader(path)) for steps, path in saved], extras


def _evaluate(
    policies: Mapping[str, PolicyFactory], cfg: Any, spec: ResultsSpec, *, no_battery: bool
) -> Any:
    from pulsebms.agents.evaluation import evaluate_policies
    from pulsebms.experiments.common import env_kwargs, shield_kwargs

    return evaluate_policies(
        dict(policies),
        env_id=str(cfg.env.id),
        scenarios=[None],
        seeds=list(spec.eval_seeds),
        env_kwargs=env_kwargs(cfg),
        shield=True,
        shield_kwargs=shield_kwargs(cfg),
        progress=False,
        no_battery=no_battery,
    )


def _cached(record_path: Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record at ``record_path`` if its key has ``key``'s values (more fields are fine)."""
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        stored = record.get("key") or {}
        if all(stored.get(k) == v for k, v in key.items()):
            return dict(record)
    return None


def _claim(lock: Path) -> bool:
    """Take ``lock`` for this process (False: a live process holds it; a dead one's is taken)."""
    import os

    import psutil

    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and psutil.pid_exists(holder):
                return False
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def _run_one(name: str, seed: int, cfg: Any, spec: ResultsSpec) -> dict[str, Any] | None:
    """Train and evaluate one (agent, seed), or read it back from its ``result.json``.

    Returns ``None`` when another live process is training this run (its lock file).
    """
    from pulsebms.experiments.common import seed_everything

    out = Path(spec.out_dir) / f"{name}_seed{seed}"
    record_path = out / "result.json"
    key = spec.run_key(name, seed)
    cached = _cached(record_path, key)
    if cached is not None:
        return cached
    lock = out / "result.lock"
    if not _claim(lock):
        return None
    try:
        cached = _cached(record_path, key)  # finished by another process meanwhile
        if cached is not None:
            return cached
        seed_everything(int(seed), torch_threads=1)
        start = time.perf_counter()
        train = _train_rllib if name.startswith("rllib") else _train_sb3
        checkpoints, extras = train(name, cfg, spec, int(seed), out)
        train_s = time.perf_counter() - start
        curve = []
        for steps, load in checkpoints:
            table = _evaluate({name: load()}, cfg, spec, no_battery=False)
            curve.append({"steps": int(steps), **{k: table.mean(name, k) for k in RESULT_KPIS}})
        row = {"agent": name, "seed": int(seed), "steps": curve[-1]["steps"], "train_s": train_s}
        row.update({k: curve[-1][k] for k in RESULT_KPIS})
        row.update({k: float(v) for k, v in extras.items()})
        record = {"key": key, "row": row, "curve": curve}
        tmp = record_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=float))
        tmp.replace(record_path)  # atomic: a killed run leaves no half-written record
        return record
    finally:
        lock.unlink(missing_ok=True)


def _references(cfg: Any, spec: ResultsSpec) -> list[dict[str, Any]]:
    """The untrained references (:data:`REFERENCES`) on the evaluation days, cached."""
    from pulsebms.agents.workflow import baseline_factories

    path = Path(spec.out_dir) / "references.json"
    key = {"version": RESULTS_VERSION, "eval_seeds": [int(s) for s in spec.eval_seeds]}
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return list(cached["rows"])
    table = _evaluate(baseline_factories(["rule_soc"]), cfg, spec, no_battery=True)
    rows = [{"agent": r, **{k: table.mean(r, k) for k in RESULT_KPIS}} for r in REFERENCES]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "rows": rows}, indent=2, default=float))
    return rows


def run_results(spec: ResultsSpec, *, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train and evaluate every (agent, seed) not cached yet; return one record per run.

    A record is ``{"key": ..., "row": {agent, seed, steps, train_s, KPIs...}, "curve":
    [{steps, KPIs...}, ...]}``, also written to ``<out>/<agent>_seed<k>/result.json``. A run
    that another live process is training (``result.lock``) is skipped and missing from
    the returned list.

    Raises:
        ValueError: On an unknown agent name or a budget < 1.
    """
    unknown = sorted(set(spec.agents) - set(AGENTS))
    if unknown:
        raise ValueError(f"unknown agents {unknown}; known: {list(AGENTS)}")
    if min(spec.total_timesteps, spec.off_policy_timesteps) < 1 or spec.curve_points < 1:
        raise ValueError("budgets and curve_points must be >= 1")
    cfg = _quick_cfg()
    records = []
    for name in spec.agents:
        for seed in spec.seeds:
            record = _run_one(name, int(seed), cfg, spec)
            if record is None:
                log(f"{name} seed {seed}: being trained by another process, skipped")
                continue
            records.append(record)
            log(json.dumps(record["row"], default=float))
    return records


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per agent and KPI: (mean, sample std over seeds; 0 for a single seed).

    Example:
        >>> rows = [{"agent": "ppo", **dict.fromkeys(RESULT_KPIS, c)} for c in (1.0, 3.0)]
        >>> summarise(rows)["ppo"]["total_cost"]
        (2.0, 1.4142135623730951)
    """
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for agent in dict.fromkeys(str(r["agent"]) for r in rows):
        mine = [r for r in rows if r["agent"] == agent]
        out[agent] = {}
        for kpi in RESULT_KPIS:
            values = np.asarray([float(r[kpi]) for r in mine])
            std = float(values.std(ddof=1)) if values.size > 1 else 0.0
            out[agent][kpi] = (float(values.mean()), std)
    return out


def _budget_text(spec: ResultsSpec) -> str:
    on = [a for a in spec.agents if a not in OFF_POLICY]
    off = [a for a in spec.agents if a in OFF_POLICY]
    parts = []
    if on:
        parts.append(f"{spec.total_timesteps} env steps ({', '.join(on)})")
    if off:
        parts.append(f"{spec.off_policy_timesteps} env steps ({', '.join(off)})")
    return " and ".join(parts)


def to_markdown(
    summary: Mapping[str, Mapping[str, tuple[float, float]]],
    spec: ResultsSpec,
    references: Sequence[Mapping[str, Any]] = (),
    seeds: Mapping[str, int] | None = None,
) -> str:
    """The summary as a Markdown table, with the budget, the cost limit and seeds stated.

    ``seeds`` gives the number of finished seeds per agent (default: all of the spec's).
    """
    seeds = dict(seeds or {})
    lines = [
        f"Quick fleet, {len(spec.seeds)} training seeds, {_budget_text(spec)} per run, "
        f"evaluated on reset seeds {list(spec.eval_seeds)} with the shield in the loop; "
        f"cost limit of the Lagrangian agents: {spec.cost_limit:g} pre-shield cost per "
        "episode (one day). Mean ± std over training seeds.",
        "",
        "| agent | seeds | episode cost [EUR] | constraint cost [/episode] | pre-shield "
        "violations [/step] | violations | shield interventions |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for agent, kpis in summary.items():
        cells = [f"{m:.4g} ± {s:.2g}" for m, s in (kpis[k] for k in RESULT_KPIS)]
        n = int(seeds.get(agent, len(spec.seeds)))
        lines.append(f"| {agent} | {n} | " + " | ".join(cells) + " |")
    for ref in references:
        cells = [f"{float(ref[k]):.4g}" for k in RESULT_KPIS]
        lines.append(f"| *{ref['agent']}* (reference) | – | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curve_markdown(records: Sequence[Mapping[str, Any]], spec: ResultsSpec) -> str:
    """Learning curves: episode and constraint cost (mean ± std over seeds) per budget.

    Points are grouped by their env-step count; a row states how many seeds have it.
    """
    lines = [
        "Learning curves (each run evaluated at evenly spaced budgets; mean ± std over "
        f"the seeds evaluated at that step; cost limit {spec.cost_limit:g}).",
        "",
        "| agent | env steps | seeds | episode cost [EUR] | constraint cost [/episode] |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for agent in dict.fromkeys(str(r["row"]["agent"]) for r in records):
        by_steps: dict[int, list[Mapping[str, Any]]] = {}
        for record in records:
            if record["row"]["agent"] == agent:
                for point in record["curve"]:
                    by_steps.setdefault(int(point["steps"]), []).append(point)
        for steps in sorted(by_steps):
            points = by_steps[steps]
            cells = []
            for kpi in ("total_cost", "constraint_cost"):
                values = np.asarray([float(p[kpi]) for p in points])
                std = float(values.std(ddof=1)) if values.size > 1 else 0.0
                cells.append(f"{values.mean():.4g} ± {std:.2g}")
            lines.append(f"| {agent} | {steps} | {len(points)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m pulsebms.experiments.results [--quick] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m pulsebms.experiments.results", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke-sized budget (minutes)")
    parser.add_argument("--agents", nargs="+", choices=AGENTS, default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--timesteps", type=int, default=None, help="on-policy env steps/run")
    parser.add_argument(
        "--off-policy-timesteps", type=int, default=None, help="SAC env steps per run"
    )
    parser.add_argument("--curve-points", type=int, default=None, help="evaluations per run")
    parser.add_argument("--cost-limit", type=float, default=None, help="per episode")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    spec = QUICK if args.quick else ResultsSpec()
    changes: dict[str, Any] = {
        "agents": tuple(args.agents) if args.agents else None,
        "seeds": tuple(args.seeds) if args.seeds else None,
        "total_timesteps": args.timesteps,
        "off_policy_timesteps": args.off_policy_timesteps,
        "curve_points": args.curve_points,
        "cost_limit": args.cost_limit,
        "out_dir": args.out,
    }
    spec = replace(spec, **{k: v for k, v in changes.items() if v is not None})
    budgets = (spec.total_timesteps, spec.off_policy_timesteps, spec.curve_points)
    if min(budgets) < 1 or not math.isfinite(spec.cost_limit) or spec.cost_limit < 0:
        parser.error("budgets and --curve-points must be >= 1, --cost-limit finite and >= 0")
    records = run_results(spec)
    if not records:
        print("no finished runs yet (all being trained by other processes)")
        return 0
    rows = [r["row"] for r in records]
    summary = summarise(rows)
    references = _references(_quick_cfg(), spec)
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    finished = {a: sum(1 for r in rows if r["agent"] == a) for a in summary}
    markdown = to_markdown(summary, spec, references, finished)
    curves = curve_markdown(records, spec)
    (out / "results.md").write_text(markdown)
    (out / "curve.md").write_text(curves)
    payload = {
        "cost_limit": spec.cost_limit,
        "total_timesteps": spec.total_timesteps,
        "off_policy_timesteps": spec.off_policy_timesteps,
        "seeds": list(spec.seeds),
        "eval_seeds": list(spec.eval_seeds),
        "summary": {
            a: {k: {"mean": m, "std": s} for k, (m, s) in v.items()} for a, v in summary.items()
        },
        "references": references,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=float))
    with (out / "runs.csv").open("w", newline="") as fh:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(markdown)
    print(curves)
    print("RESULT " + json.dumps(payload, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
