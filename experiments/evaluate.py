"""``pulsebms-eval``: one KPI table for a trained agent, the MPC, the MPC-oracle and the rules.

Command line (Hydra; same config groups as ``pulsebms-train``)::

    pulsebms-eval experiment=quick     # the newest `pulsebms-train experiment=quick` model
    pulsebms-eval experiment=quick evaluation.checkpoint=runs/.../model.zip
    pulsebms-eval agent=rllib_ppo evaluation.checkpoint=runs/.../rllib_checkpoint
    pulsebms-eval evaluation.baselines=[rule_equal,rule_soc,mpc] evaluation.seeds=[0,1,2]
    pulsebms-eval agent=mpc            # a non-learning agent is evaluated as itself

Writes ``kpis.{csv,md}``, ``kpis_episodes.csv``, ``plots/`` and the resolved config into the
Hydra run dir.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pulsebms.agents.type_aliases import Policy
from pulsebms.configs import CONFIG_NAME, CONFIG_PATH
from pulsebms.experiments.common import ConfigError, run_dir, seed_everything, validate
from pulsebms.experiments.schemas import register_configs
from pulsebms.experiments.train import RLLIB_CHECKPOINT_DIR, evaluate_run

__all__ = ["latest_checkpoint", "load_checkpoint_policy", "main", "run_evaluation"]

register_configs()

log = logging.getLogger(__name__)


def load_checkpoint_policy(path: str | Path) -> Policy:
    """A trained checkpoint as a policy: an SB3 ``.zip`` or run folder, an ensemble or RLlib folder.

    The SB3 file loads as :class:`pulsebms.agents.policy.SB3Policy` (its ``VecNormalize``
    statistics from beside the zip), an SB3 run folder (its ``model.zip``) through
    :func:`pulsebms.agents.sb3.policy_from_run`, an ensemble folder (its
    ``ensemble.json``, :func:`pulsebms.agents.ensemble.save_ensemble`) as
    :class:`pulsebms.agents.ensemble.EnsemblePolicy`; any other folder
    (``Algorithm.save_to_path``, the ``rllib_checkpoint/`` of a ``pulsebms-train
    agent=rllib_*`` run) as :class:`pulsebms.agents.rllib_policy.RLlibPolicy`, without a Ray
    runtime. All act deterministically and go through the same KPI harness.

    Args:
        path: The checkpoint.

    Returns:
        The policy.

    Raises:
        ConfigError: If ``path`` is missing, or is neither kind.
    """
    checkpoint = Path(path)
    if checkpoint.is_dir():
        from pulsebms.agents.ensemble import ENSEMBLE_FILE, EnsemblePolicy

        if (checkpoint / ENSEMBLE_FILE).is_file():
            return EnsemblePolicy.load(checkpoint)
        if (checkpoint / "model.zip").is_file():
            from pulsebms.agents.sb3 import policy_from_run

            return policy_from_run(checkpoint)
        from pulsebms.agents.rllib_policy import RLlibPolicy

        try:
            return RLlibPolicy.from_checkpoint(checkpoint)
        except FileNotFoundError as exc:
            raise ConfigError(f"evaluation.checkpoint: {exc}") from None
    if checkpoint.is_file():
        if checkpoint.suffix != ".zip":
            raise ConfigError(
                f"evaluation.checkpoint: {checkpoint} is neither an SB3 .zip nor an RLlib "
                "checkpoint folder"
            )
        from pulsebms.agents.policy import SB3Policy

        return SB3Policy.load(checkpoint)
    raise ConfigError(f"evaluation.checkpoint: nothing at {checkpoint}")


def run_evaluation(cfg: DictConfig, out_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Validate, seed and evaluate one composed config.

    The evaluated agent is ``evaluation.checkpoint`` (an SB3 ``model.zip`` or an RLlib
    checkpoint folder) when given; else the ``agent`` group's option if it is a non-learning
    policy (rule, MPC); else the newest checkpoint ``pulsebms-train`` wrote for the same
    env, experiment, agent and seed (:func:`latest_checkpoint`); else only the baselines.

    Args:
        cfg: A config composed from ``pulsebms.configs``.
        out_dir: Output folder; the Hydra run dir when ``None``.

    Returns:
        The KPI summary rows.

    Raises:
        ConfigError: If the checkpoint does not exist or is of no known kind.
    """
    validate(cfg)
    out = Path(out_dir) if out_dir is not None else run_dir()
    out.mkdir(parents=True, exist_ok=True)
    # --- the one seeding block of this entry point -------------------------------------
    seed_everything(int(cfg.seed), torch_threads=int(cfg.train.torch_threads))
    # -------------------------------------------------------------------------------------
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    factory: Any | None = None
    agent = instantiate(cfg.agent, _convert_="object")
    checkpoint = cfg.evaluation.checkpoint or (None if callable(agent) else latest_checkpoint(cfg))
    if checkpoint:
        path = Path(str(checkpoint))
        policy = load_checkpoint_policy(path)
        log.info("evaluating checkpoint %s as %r", path, str(cfg.agent_name))
        factory = lambda env: policy  # noqa: E731 - the loaded policy fits every env
    elif callable(agent):
        factory = agent
    else:
        log.warning("no checkpoint of %r found: evaluating the baselines only", cfg.agent_name)
    summary: list[dict[str, Any]] = evaluate_run(cfg, factory, out)
    (out / "metrics.json").write_text(json.dumps({"kpis": summary}, indent=2, default=float))
    return summary


def latest_checkpoint(cfg: DictConfig, root: str | Path = "runs") -> Path | None:
    """The newest checkpoint ``pulsebms-train`` wrote for this env, experiment, agent, seed.

    Looks in ``<root>/<env>/<experiment>/<agent>_seed<seed>_<time>/`` (the train run dir)
    for a ``model.zip`` (SB3) or an ``rllib_checkpoint/`` folder (RLlib); the newest run dir
    by its time stamp wins.
    """
    folder = Path(root) / str(cfg.env.name) / str(cfg.experiment_name)
    pattern = f"{cfg.agent_name}_seed{cfg.seed}_*"
    found = [
        *folder.glob(f"{pattern}/model.zip"),
        *(p.parent for p in folder.glob(f"{pattern}/{RLLIB_CHECKPOINT_DIR}/rllib_checkpoint.json")),
    ]
    return max(found, key=lambda p: (p.parent.name, p.name)) if found else None


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> None:
    run_evaluation(cfg)


def main() -> None:
    """Console script ``pulsebms-eval`` (Hydra command line)."""
    _hydra_main()


if __name__ == "__main__":
    main()
