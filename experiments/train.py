"""``pulsebms-train``: train a shielded agent and compare it with the baselines.

Run from the command line (Hydra)::

    pulsebms-train experiment=quick
    pulsebms-train agent=sac env=small logger=tensorboard train.total_timesteps=20000
    pulsebms-train -m agent=ppo,sac seed=0,1,2
    pulsebms-train agent=rllib_ppo ray.num_env_runners=2 ray.num_envs_per_env_runner=4
    pulsebms-train agent=rllib_sac ray=cluster ray.address=10.0.0.5:6379   # join a cluster
    pulsebms-train --help          # lists every config group and option

Each run writes into its Hydra run dir (``runs/<env>/<experiment>/<agent>_seed<seed>_<time>``):
``.hydra/config.yaml`` (the resolved config), ``model.zip`` + ``model_vecnormalize.pkl``,
``checkpoints/``, ``eval/``, ``progress.csv``, ``kpis.{csv,md}``, ``plots/`` and
``metrics.json``. RLlib agents (``agent=rllib_ppo``, ``agent=rllib_sac``) write an algorithm
checkpoint folder ``rllib_checkpoint/`` and ``progress.csv`` (one row per iteration) instead
of the SB3 files; Ray runs as the ``ray`` group says and is shut down (or, for a joined
cluster, disconnected from) after training, also when training fails. Non-learning agents
(rules, MPC) skip training and are only evaluated.

From Python, :func:`run_training` takes the same composed config.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pulsebms.agents.rllib_config import (
    RaySettings,
    RllibAgentConfig,
    RllibPPOConfig,
    RllibSACConfig,
)
from pulsebms.configs import CONFIG_NAME, CONFIG_PATH
from pulsebms.experiments.common import (
    ConfigError,
    agent_factory,
    compose_agent,
    decision_s,
    env_kwargs,
    hold_mode,
    init_wandb,
    make_cfg_env_factory,
    run_dir,
    seed_everything,
    shield_kwargs,
    train_env_kwargs,
    validate,
)
from pulsebms.experiments.schemas import register_configs

__all__ = [
    "RLLIB_CHECKPOINT_DIR",
    "evaluate_run",
    "held_factory",
    "learner_speed_options",
    "main",
    "ray_settings",
    "run_training",
]

log = logging.getLogger(__name__)

register_configs()

RLLIB_CHECKPOINT_DIR = "rllib_checkpoint"
"""Folder of the RLlib algorithm checkpoint inside a ``pulsebms-train`` run dir."""


def ray_settings(cfg: DictConfig) -> RaySettings:
    """The ``ray`` group as :class:`~pulsebms.agents.rllib_config.RaySettings`.

    Raises:
        ConfigError: Naming ``ray``, if a value is impossible.
    """
    try:
        settings = instantiate(cfg.ray, _convert_="object")
    except Exception as exc:  # Hydra wraps the dataclass's ValueError in its own error
        raise ConfigError(f"ray: {exc.__cause__ or exc}") from None
    if not isinstance(settings, RaySettings):
        raise ConfigError(f"ray: expected RaySettings, got {type(settings).__name__}")
    return settings


def learner_speed_options(settings: RaySettings, agent: RllibAgentConfig) -> dict[str, bool]:
    """``ray.torch_compile_learner`` and ``ray.fused_adam`` as this agent's Learner takes them.

    Both were measured and are supported for the PPO Learners (``rllib_ppo``,
    ``rllib_ppo_lagrangian``); other agents (``rllib_sac``) train with RLlib's own eager
    Learner and its Adam whatever the ``ray`` group says, and the run's log names each option
    set away from :class:`RaySettings`' default (fused Adam is on by default). That lets a
    ``ray`` preset turn the compiled Learner on for the long PPO runs it is made for
    (``ray=cluster``) and still serve SAC. Given the config, the choice is fixed: it never
    depends on the machine (without a C++ compiler a compiled PPO Learner is an error, see
    :func:`pulsebms.agents.rllib.build_rllib_algorithm`).

    Example:
        >>> learner_speed_options(RaySettings(torch_compile_learner=True), RllibSACConfig())
        {'torch_compile_learner': False, 'fused_adam': False}
        >>> learner_speed_options(RaySettings(torch_compile_learner=True), RllibPPOConfig())
        {'torch_compile_learner': True, 'fused_adam': True}
    """
    wanted = {
        "torch_compile_learner": bool(settings.torch_compile_learner),
        "fused_adam": bool(settings.fused_adam),
    }
    if isinstance(agent, RllibPPOConfig):
        if wanted["torch_compile_learner"]:
            log.info(
                "ray.torch_compile_learner: the PPO Learner's update is compiled (inductor); "
                "the first iterations take seconds longer"
            )
        return wanted
    defaults = RaySettings()
    for name, on in wanted.items():
        if on and on != getattr(defaults, name):
            log.info(
                "ray.%s applies to the PPO Learners only: %s trains with RLlib's eager Learner",
                name,
                agent.algorithm,
            )
    return dict.fromkeys(wanted, False)


def _train_rllib(
    cfg: DictConfig, agent: RllibAgentConfig, out: Path, seed: int
) -> tuple[Path, Any, dict[str, Any]]:
    """Train an RLlib agent inside a Ray session that is always closed; checkpoint it."""
    from pulsebms.agents.rllib import build_rllib_algorithm, ray_session, train_rllib

    settings = ray_settings(cfg)
    log.info(
        "RLlib %s on Ray %s: %d runner(s) × %d env(s)",
        agent.algorithm,
        settings.address or "local",
        settings.num_env_runners,
        settings.num_envs_per_env_runner,
    )
    options = learner_speed_options(settings, agent)
    with ray_session(
        address=settings.address,
        num_cpus=settings.num_cpus,
        temp_dir=settings.temp_dir,
        include_dashboard=settings.include_dashboard,
        log_level=settings.log_level,
        metrics=settings.metrics,
        task_events=settings.task_events,
    ):
        algo = build_rllib_algorithm(
            f"pulsebms.envs:{cfg.env.id}",  # the worker-safe id form (imports the envs)
            agent,
            env_kwargs=train_env_kwargs(cfg),
            shield=bool(cfg.shield.enabled),
            shield_kwargs=shield_kwargs(cfg),
            num_env_runners=settings.num_env_runners,
            num_envs_per_env_runner=settings.num_envs_per_env_runner,
            num_cpus_per_env_runner=settings.num_cpus_per_env_runner,
            seed=seed,
            torch_compile_learner=options["torch_compile_learner"],
            fused_adam=options["fused_adam"],
        )
        try:
            run = train_rllib(
                algo,
                total_env_steps=int(cfg.train.total_timesteps),
                checkpoint_dir=out / RLLIB_CHECKPOINT_DIR,
            )
        finally:
            algo.stop()  # type: ignore[no-untyped-call]  # RLlib API is untyped
    rows = [dataclasses.asdict(m) for m in run.metrics]
    with (out / "progress.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    extras = {
        "rllib_iterations": len(rows),
        "rllib_env_steps": rows[-1]["env_steps_lifetime"],
        "rllib_algorithm": agent.algorithm,
    }
    return run.checkpoint_path, run.policy(), extras


def held_factory(factory: Any, decision_s: float | None, hold_mode: str = "action") -> Any:
    """``factory``'s policies acting every ``decision_s`` in an env stepped at its ``dt_s``.

    The learning agent trained behind :class:`pulsebms.envs.decision.DecisionIntervalWrapper`
    is evaluated at the plant step like every baseline, through
    :class:`pulsebms.envs.decision.DecisionIntervalPolicy` (the same held actions, and with
    a ``hold_mode`` other than ``action`` the same plant loop,
    :func:`pulsebms.envs.hold.plant_loop`); ``None`` with ``action``: ``factory`` unchanged
    (``None`` with another mode: the loop at every plant step).
    """
    from pulsebms.envs.hold import check_hold_mode

    if decision_s is None and check_hold_mode(hold_mode) == "action":
        return factory
    from pulsebms.agents.env_factory import fleet_env
    from pulsebms.envs.decision import DecisionIntervalPolicy, substeps_of
    from pulsebms.envs.hold import plant_loop

    def make(env: Any) -> Any:
        dt_s = fleet_env(env).dt_s
        every_s = dt_s if decision_s is None else decision_s
        return DecisionIntervalPolicy(
            factory(env), substeps_of(every_s, dt_s), loop=plant_loop(env, hold_mode)
        )

    return make


def evaluate_run(
    cfg: DictConfig, agent_policy_factory: Any | None, out_dir: Path, run: Any | None = None
) -> list[dict[str, Any]]:
    """Evaluate the run's agent (if any) and the configured baselines; save table and plots.

    Args:
        cfg: The composed config.
        agent_policy_factory: Factory ``env -> Policy`` of the trained agent, or ``None``.
        out_dir: Where ``kpis.*`` and ``plots/`` go.
        run: A wandb run to log the summary to.

    Returns:
        The summary rows (one per policy) as plain dicts.
    """
    from pulsebms.agents.evaluation import evaluate_policies

    policies: dict[str, Any] = {}
    if agent_policy_factory is not None:
        policies[str(cfg.agent_name)] = held_factory(
            agent_policy_factory, decision_s(cfg), hold_mode(cfg)
        )
    for name in cfg.evaluation.baselines:
        if name not in policies:
            policies[str(name)] = agent_factory(compose_agent(str(name)))
    scenarios = list(cfg.evaluation.scenarios) or [None]
    kwargs = env_kwargs(cfg)
    if scenarios != [None]:
        kwargs.pop("scenario", None)
    baseline = str(cfg.evaluation.baseline)
    if baseline == "agent":
        baseline = str(cfg.agent_name)
    table = evaluate_policies(
        policies,
        env_id=str(cfg.env.id),
        scenarios=scenarios,
        seeds=[int(s) for s in cfg.evaluation.seeds],
        baseline=baseline,
        env_kwargs=kwargs,
        shield=bool(cfg.shield.enabled),
        shield_kwargs=shield_kwargs(cfg),
        max_steps=cfg.evaluation.max_steps,
        plot_dir=out_dir / "plots" if cfg.evaluation.plots else None,
        progress=bool(cfg.train.progress_bar),
    )
    table.save(out_dir)
    log.info("KPI table (%s):\n%s", out_dir / "kpis.md", table.to_markdown())
    summary: list[dict[str, Any]] = table.summary()
    if run is not None:
        for row in summary:
            run.summary.update(
                {f"eval/{row['policy']}/{k}": v for k, v in row.items() if k != "policy"}
            )
    return summary


def run_training(cfg: DictConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Validate, seed, train (SB3 or RLlib agents) and evaluate one composed config.

    Args:
        cfg: A config composed from ``pulsebms.configs`` (``config.yaml``).
        out_dir: Output folder; the Hydra run dir when ``None`` (inside a Hydra app).

    Returns:
        ``{"out_dir", "model_path", "train_seconds", "kpis"}``.
    """
    validate(cfg)
    out = Path(out_dir) if out_dir is not None else run_dir()
    out.mkdir(parents=True, exist_ok=True)
    # --- the one seeding block of this entry point -------------------------------------
    seed = int(cfg.seed)
    seed_everything(seed, torch_threads=int(cfg.train.torch_threads))
    # -------------------------------------------------------------------------------------
    run_name = f"{cfg.env.name}__{cfg.experiment_name}__{cfg.agent_name}__seed{seed}"
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    run = init_wandb(cfg, out, run_name)
    result: dict[str, Any] = {"out_dir": str(out), "model_path": None, "train_seconds": 0.0}
    try:
        agent = instantiate(cfg.agent, _convert_="object")
        from pulsebms.agents.sb3 import PPOConfig, SACConfig, train_agent

        if isinstance(agent, RllibPPOConfig | RllibSACConfig):
            if decision_s(cfg) is not None:
                raise ConfigError(
                    "env.decision_s: RLlib agents act at every env step (no decision-interval "
                    "wrapper in the RLlib env builder yet); use an SB3 agent or env.decision_s=null"
                )
            if hold_mode(cfg) != "action":
                raise ConfigError(
                    "env.hold_mode: RLlib agents act at every env step (no plant loop in the "
                    "RLlib env builder yet); use an SB3 agent or env.hold_mode=action"
                )
            start = time.perf_counter()
            model_path, policy, extras = _train_rllib(cfg, agent, out, seed)
            result["train_seconds"] = time.perf_counter() - start
            result["model_path"] = str(model_path)
            result.update(extras)
            factory = lambda env: policy  # noqa: E731 - the trained policy fits every env
        elif isinstance(agent, PPOConfig | SACConfig):
            start = time.perf_counter()
            trained = train_agent(
                agent,
                make_cfg_env_factory(cfg),
                total_timesteps=int(cfg.train.total_timesteps),
                seed=seed,
                out_dir=out,
                n_envs=int(cfg.train.n_envs),
                eval_freq=int(cfg.train.eval_freq),
                n_eval_episodes=int(cfg.train.n_eval_episodes),
                checkpoint_freq=int(cfg.train.checkpoint_freq),
                log_formats=list(cfg.logger.formats),
                wandb_run=run,
                progress_bar=bool(cfg.train.progress_bar),
            )
            result["train_seconds"] = time.perf_counter() - start
            result["model_path"] = str(trained.model_path)
            result.update(trained.extras)
            policy = trained.policy
            factory = lambda env: policy  # noqa: E731 - the trained policy fits every env
        else:
            factory = agent
        result["kpis"] = evaluate_run(cfg, factory, out, run)
        (out / "metrics.json").write_text(json.dumps(result, indent=2, default=float))
    finally:
        if run is not None:
            run.finish()
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> float:
    result = run_training(cfg)
    agent = next((r for r in result["kpis"] if r["policy"] == str(cfg.agent_name)), None)
    return float(agent["energy_cost"]) if agent else float("nan")


def main() -> None:
    """Console script ``pulsebms-train`` (Hydra command line)."""
    _hydra_main()


if __name__ == "__main__":
    main()
