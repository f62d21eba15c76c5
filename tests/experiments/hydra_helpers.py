"""Compose the packaged experiment config inside the ``hydra_ctx`` fixture (conftest.py)."""

from __future__ import annotations

from hydra import compose
from omegaconf import DictConfig, open_dict


def compose_config(*overrides: str) -> DictConfig:
    """The composed config with ``agent_name`` pinned and the ``hydra`` node removed.

    ``${hydra:...}`` resolves only inside a running app; the label is pinned instead.
    """
    cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.agent_name = cfg.hydra.runtime.choices.agent
        del cfg["hydra"]
    return cfg
