"""``pulsebms-eval``: one KPI table for a trained agent, the MPC, the MPC-oracle and the rules.

Command line (Hydra; same config groups as ``pulsebms-train``)::

    pulsebms-eval experiment=quick     # the newest `pulsebms-train experiment=quick` model
    pulsebms-eval experiment=quick evaluation.checkpoint=runs/.../model.zip
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

from pulsebms.configs import CONFIG_NAME, CONFIG_PATH
from pulsebms.experiments.common import ConfigError, run_dir, seed_everything, validate
from pulsebms.experiments.schemas import register_configs
from pulsebms.experiments.train import evaluate_run

__all__ = ["main", "run_evaluation"]

register_configs()

log = logging.getLogger(__name__)


def run_evaluation(cfg: DictConfig, out_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Validate, seed and evaluate one composed config.

    The evaluated agent is ``evaluation.checkpoint`` (an SB3 ``model.zip``) when given; else
    the ``agent`` group's option if it is a non-learning policy (rule, MPC); else the newest
    checkpoint ``pulsebms-train`` wrote for the same env, experiment, agent and seed
    (:func:`latest_checkpoint`); else only the baselines.

    Args:
        cfg: A config composed from ``pulsebms.configs``.
        out_dir: Output folder; the Hydra run dir when ``None``.

    Returns:
        The KPI summary rows.

    Raises:
        ConfigError: If the checkpoint does not exist.
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
        from pulsebms.agents.policy import SB3Policy

        path = Path(str(checkpoint))
        if not path.is_file():
            raise ConfigError(f"evaluation.checkpoint: no file at {path}")
        log.info("evaluating checkpoint %s as %r", path, str(cfg.agent_name))
        policy = SB3Policy.load(path)
        factory = lambda env: policy  # noqa: E731 - the loaded policy fits every env
    elif callable(agent):
        factory = agent
    else:
        log.warning("no checkpoint of %r found: evaluating the baselines only", cfg.agent_name)
    summary: list[dict[str, Any]] = evaluate_run(cfg, factory, out)
    (out / "metrics.json").write_text(json.dumps({"kpis": summary}, indent=2, default=float))
    return summary


def latest_checkpoint(cfg: DictConfig, root: str | Path = "runs") -> Path | None:
    """The newest ``model.zip`` ``pulsebms-train`` wrote for this env, experiment, agent, seed.

    Looks in ``<root>/<env>/<experiment>/<agent>_seed<seed>_<time>/`` (the train run dir).
    """
    folder = Path(root) / str(cfg.env.name) / str(cfg.experiment_name)
    found = sorted(folder.glob(f"{cfg.agent_name}_seed{cfg.seed}_*/model.zip"))
    return found[-1] if found else None


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> None:
    run_evaluation(cfg)


def main() -> None:
    """Console script ``pulsebms-eval`` (Hydra command line)."""
    _hydra_main()


if __name__ == "__main__":
    main()
