r"""Where a benchmark day's cost goes: each policy's cost terms and unserved energy by hour.

The suite (:mod:`pulsebms.experiments.suite`) ranks policies by total cost; this splits
it, per policy and benchmark (mean over the evaluation seeds): energy bought, unserved-load
penalty, degradation, stored-energy term, unserved energy [kWh] in total and in given
windows of the hour of day (e.g. the evening ramp, 17–19 h), and violations after the
shield. Every episode is the suite's: the benchmark's env and shield, the policy acting at
the plant step (a held baseline or a trained agent deciding every ``env.decision_s`` in a
hold mode, :mod:`pulsebms.envs.hold`).

Command (the cold diagnosis of docs/benchmarks.md)::

    python -m pulsebms.experiments.cost_split --benchmarks cold --baselines mpc_oracle \\
        --held-baselines mpc_day --hold-mode import_cap \\
        --agents runs/suite/agents/small_spread/mpcday_bc_hotdr_ens3_seed2

Example:
    >>> split_windows(["17-19", "19-21"])
    ((17.0, 19.0), (19.0, 21.0))
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pulsebms.agents.evaluation import PolicyFactory

__all__ = [
    "TERMS",
    "agent_factory_from",
    "cost_split",
    "episode_split",
    "format_split",
    "main",
    "split_windows",
]

TERMS = (
    ("total_eur", "total_cost_eur"),
    ("energy_eur", "energy_cost_eur"),
    ("unserved_eur", "unserved_penalty_eur"),
    ("degradation_eur", "degradation_cost_eur"),
    ("stored_energy_eur", "stored_energy_cost_eur"),
    ("fault_eur", "fault_penalty_eur"),
)
"""(column, the env's step ``info`` key) of every cost term summed over an episode."""


def split_windows(texts: Sequence[str]) -> tuple[tuple[float, float], ...]:
    """Hour-of-day windows from ``"start-end"`` texts (hours, start < end ≤ 24).

    Raises:
        ValueError: On a malformed window.
    """
    out: list[tuple[float, float]] = []
    for text in texts:
        try:
            start, end = (float(x) for x in str(text).split("-"))
        except ValueError:
            raise ValueError(f"a window is 'start-end' in hours, got {text!r}") from None
        if not (0.0 <= start < end <= 24.0):
            raise ValueError(f"a window needs 0 <= start < end <= 24, got {text!r}")
        out.append((start, end))
    return tuple(out)


def _window_key(window: tuple[float, float]) -> str:
    return f"unserved_kwh_{window[0]:g}_{window[1]:g}h"


def episode_split(
    env: Any,
    policy: Any,
    seed: int,
    windows_h: Sequence[tuple[float, float]] = (),
    max_steps: int | None = None,
) -> dict[str, float]:
    """One episode's cost terms [EUR], unserved energy [kWh] (total and per window).

    Args:
        env: The (shielded) benchmark env, stepped at its plant step.
        policy: ``act(observation)``; reset before the episode.
        seed: ``env.reset`` seed.
        windows_h: Hour-of-day windows ``[start, end)`` of the unserved energy (the hour of
            the interval simulated, ``info["hour_of_day"]``).
        max_steps: Cut the episode (``None``: to its end).

    Returns:
        Columns of :data:`TERMS`, ``unserved_kwh``, one ``unserved_kwh_<a>_<b>h`` per
        window, ``violations`` and ``steps``.
    """
    from pulsebms.agents.evaluation import behind_shield
    from pulsebms.agents.policy import reset_policy

    acting = behind_shield(policy)
    obs, _ = env.reset(seed=int(seed))
    reset_policy(acting)
    out = {name: 0.0 for name, _ in TERMS}
    out.update({"unserved_kwh": 0.0, "violations": 0.0, "steps": 0.0})
    out.update({_window_key(w): 0.0 for w in windows_h})
    dt_h = float(env.unwrapped.dt_s) / 3600.0
    while True:
        obs, _r, terminated, truncated, info = env.step(np.asarray(acting.act(obs), np.float32))
        for name, key in TERMS:
            out[name] += float(info.get(key, 0.0))
        kwh = float(info["unserved_w"]) * dt_h / 1000.0
        out["unserved_kwh"] += kwh
        hour = float(info["hour_of_day"])
        for window in windows_h:
            if window[0] <= hour < window[1]:
                out[_window_key(window)] += kwh
        out["violations"] += float(info.get("n_violations", 0))
        out["steps"] += 1.0
        if terminated or truncated or (max_steps is not None and out["steps"] >= max_steps):
            return out


def cost_split(
    benchmark: str,
    policies: Mapping[str, PolicyFactory],
    *,
    seeds: Sequence[int] = (100, 101, 102),
    windows_h: Sequence[tuple[float, float]] = (),
    max_steps: int | None = None,
) -> dict[str, dict[str, float]]:
    """Per policy, the mean over ``seeds`` of :func:`episode_split` on ``benchmark``.

    Each episode runs in a fresh env of the benchmark's config (its env, scenario, fleet
    and shield, like the suite's).
    """
    from pulsebms.agents.env_factory import make_env
    from pulsebms.experiments.common import env_kwargs, shield_kwargs
    from pulsebms.experiments.suite import benchmark_config

    cfg = benchmark_config(benchmark)
    table: dict[str, dict[str, float]] = {}
    for name, factory in policies.items():
        rows = []
        for seed in seeds:
            env = make_env(
                str(cfg.env.id),
                shield=bool(cfg.shield.enabled),
                shield_kwargs=shield_kwargs(cfg),
                **env_kwargs(cfg),
            )
            try:
                rows.append(episode_split(env, factory(env), int(seed), windows_h, max_steps))
            finally:
                env.close()  # type: ignore[no-untyped-call]  # gymnasium leaves it unannotated
        table[name] = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    return table


def agent_factory_from(path: str | Path) -> PolicyFactory:
    """A trained agent as a factory: whatever ``pulsebms-eval`` loads.

    :func:`pulsebms.experiments.evaluate.load_checkpoint_policy`: an ensemble or SB3 run
    folder, an SB3 ``.zip``, an RLlib checkpoint folder.

    Raises:
        ConfigError: If nothing loadable is at ``path``.
    """
    from pulsebms.experiments.evaluate import load_checkpoint_policy

    policy = load_checkpoint_policy(path)

    def make(env: Any) -> Any:
        return policy

    return make


def format_split(table: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """A markdown table: one row per (benchmark, policy), one column per split column."""
    columns: list[str] = []
    for per_policy in table.values():
        for row in per_policy.values():
            columns += [c for c in row if c not in columns and c != "steps"]
    lines = [
        "| benchmark | policy | " + " | ".join(columns) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for bench, per_policy in table.items():
        for name, row in per_policy.items():
            cells = " | ".join(f"{row.get(c, float('nan')):.3f}" for c in columns)
            lines.append(f"| {bench} | {name} | {cells} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pulsebms.experiments.cost_split``: print the cost split table."""
    from pulsebms.agents.workflow import baseline_factories
    from pulsebms.envs.hold import HOLD_MODES
    from pulsebms.experiments.common import decision_s
    from pulsebms.experiments.suite import benchmark_config
    from pulsebms.experiments.train import held_factory

    parser = argparse.ArgumentParser(prog="python -m pulsebms.experiments.cost_split")
    parser.add_argument("--benchmarks", nargs="+", default=["cold"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102])
    parser.add_argument("--baselines", nargs="*", default=[], help="at every plant step")
    parser.add_argument(
        "--held-baselines", nargs="*", default=[], help="deciding every env.decision_s"
    )
    parser.add_argument(
        "--agents", nargs="*", default=[], help="ensemble folders or SB3 runs, held"
    )
    parser.add_argument(
        "--hold-mode",
        nargs="+",
        default=["action"],
        choices=list(HOLD_MODES),
        help="hold modes of the held baselines and agents (one row each)",
    )
    parser.add_argument("--windows", nargs="*", default=["17-19", "19-21"])
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args(argv)
    windows = split_windows(args.windows)
    table: dict[str, dict[str, dict[str, float]]] = {}
    agents = {Path(p).name: agent_factory_from(p) for p in args.agents}
    for bench in args.benchmarks:
        every_s = decision_s(benchmark_config(bench))
        policies: dict[str, PolicyFactory] = dict(baseline_factories(list(args.baselines)))
        for mode in args.hold_mode:
            for name in args.held_baselines:
                teacher = baseline_factories([name])[name]
                policies[f"{name}_held[{mode}]"] = held_factory(teacher, every_s, mode)
            for name, factory in agents.items():
                policies[f"{name}[{mode}]"] = held_factory(factory, every_s, mode)
        table[bench] = cost_split(
            bench, policies, seeds=args.seeds, windows_h=windows, max_steps=args.max_steps
        )
    print(format_split(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
