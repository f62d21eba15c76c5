"""Plain-Python workflows for notebooks and the demo: train a shielded agent, compare it.

No YAML and no Hydra: every argument is plain data.

Example:
    >>> from pulsebms.agents.workflow import compare_with_baselines, train_shielded_agent
    >>> result = train_shielded_agent(  # doctest: +SKIP
    ...     "ppo", env_kwargs={"fidelity": "ecm"}, total_timesteps=30_000, seed=0,
    ...     out_dir="runs/demo",
    ... )
    >>> table = compare_with_baselines(  # doctest: +SKIP
    ...     {"ppo": result.policy}, env_kwargs={"fidelity": "ecm"}, seeds=[100, 101]
    ... )
    >>> print(table.to_markdown())  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pulsebms.agents.env_factory import make_env_factory
from pulsebms.agents.evaluation import KPITable, PolicyFactory, evaluate_policies
from pulsebms.agents.type_aliases import Policy

if TYPE_CHECKING:  # annotations only: importing SB3 is slow
    import gymnasium as gym

    from pulsebms.agents.sb3 import TrainResult

__all__ = [
    "BASELINES",
    "EXTRA_BASELINES",
    "baseline_factories",
    "compare_with_baselines",
    "full_day_steps",
    "train_shielded_agent",
]

BASELINES = ("rule_equal", "rule_soc", "rule_health", "mpc", "mpc_oracle")
"""The default baselines of :func:`baseline_factories` and :func:`compare_with_baselines`."""

EXTRA_BASELINES = ("mpc_day",)
"""Baselines :func:`baseline_factories` also knows, evaluated only when named: ``mpc_day``,
the MPC on the observation's own forecast with a full-day horizon (24 h, planned on a 900 s
grid after the first step: the MPC-oracle's grid). On an env whose forecast is perfect
(every benchmark of ``configs/benchmark/``) it plans exactly what the oracle plans; with a
noisy forecast it is the causal full-day controller."""


def baseline_factories(
    names: Sequence[str] = BASELINES,
    *,
    mpc_horizon_steps: int = 24,
    oracle_horizon_steps: int | None = None,
) -> dict[str, PolicyFactory]:
    """Factories ``env -> Policy`` of the named baselines with their default settings.

    Args:
        names: Any of :data:`BASELINES` and :data:`EXTRA_BASELINES`.
        mpc_horizon_steps: Horizon of the (forecast) MPC ``mpc`` in control steps (24:
            2 h at the benchmarks' 5-min steps; ``mpc_day`` plans 24 h).
        oracle_horizon_steps: Horizon of the MPC-oracle; ``None``: one full day
            (:func:`pulsebms.agents.mpc.make_oracle_mpc`: 24 h, planned on a 900 s grid after
            the first step), so the oracle is the full-day reference and not the forecast
            MPC with a perfect forecast.

    Returns:
        Name → factory, in the order given.

    Raises:
        ValueError: On an unknown name.
    """
    from pulsebms.agents.mpc import make_mpc
    from pulsebms.agents.rules import make_rule_policy

    known: dict[str, PolicyFactory] = {
        "rule_equal": partial(make_rule_policy, kind="equal"),
        "rule_soc": partial(make_rule_policy, kind="soc"),
        "rule_health": partial(make_rule_policy, kind="health"),
        "mpc": partial(make_mpc, horizon_steps=mpc_horizon_steps),
        "mpc_day": partial(_full_day_mpc, name="mpc_day"),
        "mpc_oracle": partial(_oracle, horizon_steps=oracle_horizon_steps),
    }
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {sorted(known)}")
    return {n: known[n] for n in names}


def train_shielded_agent(
    algo: str = "ppo",
    *,
    env_id: str = "PulseBMS/FleetSmall-v0",
    env_kwargs: Mapping[str, Any] | None = None,
    total_timesteps: int = 50_000,
    seed: int = 0,
    out_dir: str | Path = "runs/agent",
    eval_freq: int = 0,
    checkpoint_freq: int = 0,
    progress_bar: bool = False,
    **hyperparameters: Any,
) -> TrainResult:
    """Train PPO or SAC with the shield in the loop (see :func:`pulsebms.agents.sb3.train_agent`).

    Args:
        algo: ``"ppo"`` or ``"sac"``.
        env_id: Registered env id.
        env_kwargs: Env constructor arguments (``fleet``, ``scenario``, ``fidelity``, ...).
        total_timesteps: Env steps to train.
        seed: The run's seed (the same seed gives the same policy).
        out_dir: Output folder (``model.zip``, ``model_vecnormalize.pkl``, logs).
        eval_freq: Evaluation-callback period in steps (0: none).
        checkpoint_freq: Checkpoint period in steps (0: none).
        progress_bar: Show a progress bar.
        **hyperparameters: Fields of :class:`~pulsebms.agents.sb3.PPOConfig` /
            :class:`~pulsebms.agents.sb3.SACConfig`.

    Returns:
        A :class:`pulsebms.agents.sb3.TrainResult` (``.policy`` acts deterministically).

    Raises:
        ValueError: On an unknown algorithm.
    """
    from pulsebms.agents.sb3 import PPOConfig, SACConfig, train_agent

    configs = {"ppo": PPOConfig, "sac": SACConfig}
    if algo not in configs:
        raise ValueError(f"unknown algorithm {algo!r}; known: {sorted(configs)}")
    config = configs[algo](**hyperparameters)
    return train_agent(
        config,
        make_env_factory(env_id, **dict(env_kwargs or {})),
        total_timesteps=total_timesteps,
        seed=seed,
        out_dir=out_dir,
        eval_freq=eval_freq,
        checkpoint_freq=checkpoint_freq,
        progress_bar=progress_bar,
    )


def compare_with_baselines(
    agents: Mapping[str, Policy | PolicyFactory],
    *,
    env_id: str = "PulseBMS/FleetSmall-v0",
    env_kwargs: Mapping[str, Any] | None = None,
    baselines: Sequence[str] = BASELINES,
    scenarios: Sequence[Any] = (None,),
    seeds: Sequence[int] = (100, 101),
    baseline: str = "rule_soc",
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> KPITable:
    """One KPI table for the given agents and the named baselines (shield in the loop).

    Args:
        agents: Name → a policy (used as is in every env) or a factory ``env -> Policy``.
        env_id: Registered env id.
        env_kwargs: Env constructor arguments.
        baselines: Names from :data:`BASELINES`.
        scenarios: Scenario names/dicts (``None``: the one in ``env_kwargs`` or the default).
        seeds: Reset seeds.
        baseline: The policy KPIs are normalised by.
        out_dir: Write ``kpis.{csv,md}`` and ``plots/`` here when given.
        progress: Show a progress bar.

    Returns:
        The KPI table.
    """
    policies: dict[str, PolicyFactory] = {}
    for name, agent in agents.items():
        if isinstance(agent, Policy):
            policies[name] = partial(_fixed, agent)
        else:
            policies[name] = agent
    policies.update(baseline_factories([b for b in baselines if b not in policies]))
    table = evaluate_policies(
        policies,
        env_id=env_id,
        scenarios=scenarios,
        seeds=seeds,
        baseline=baseline,
        env_kwargs=env_kwargs,
        plot_dir=Path(out_dir) / "plots" if out_dir is not None else None,
        progress=progress,
    )
    if out_dir is not None:
        table.save(out_dir)
    return table


def _fixed(policy: Policy, env: gym.Env[Any, Any]) -> Policy:
    return policy


def full_day_steps(env: gym.Env[Any, Any]) -> int:
    """Control steps in 24 h at the env's ``dt_s`` (at least 1)."""
    from pulsebms.agents.env_factory import fleet_env

    return max(1, round(86_400.0 / float(fleet_env(env).dt_s)))


def _full_day_mpc(env: gym.Env[Any, Any], *, name: str) -> Policy:
    """The MPC on the observation's forecast, planning a full day like the oracle."""
    from pulsebms.agents.mpc import ORACLE_HORIZON_H, ORACLE_PLAN_STEP_S, make_mpc

    return make_mpc(env, horizon_h=ORACLE_HORIZON_H, plan_step_s=ORACLE_PLAN_STEP_S, name=name)


def _oracle(env: gym.Env[Any, Any], *, horizon_steps: int | None) -> Policy:
    """The MPC-oracle: a full day ahead by default, else ``horizon_steps``.

    The full-day oracle plans on a coarser grid after the first step, so its solve stays
    bounded at short ``dt_s``.
    """
    from pulsebms.agents.mpc import make_mpc, make_oracle_mpc

    if horizon_steps is None:
        return make_oracle_mpc(env)
    return make_mpc(env, horizon_steps=horizon_steps, oracle=True)
