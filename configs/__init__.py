"""Hydra configs of PulseBMS, shipped as package data.

Groups: ``fleet/``, ``scenario/``, ``env/``, ``shield/``, ``agent/``, ``logger/`` and
``experiment/`` presets; ``config.yaml`` is the primary config. Entry points find the folder
through :func:`config_dir` (``importlib.resources``), or Hydra through
``pkg://pulsebms.configs``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["CONFIG_NAME", "CONFIG_PATH", "config_dir"]

CONFIG_PATH = "pkg://pulsebms.configs"
"""Hydra search-path URL of this package."""
CONFIG_NAME = "config"
"""The primary config's name."""


def config_dir() -> Path:
    """The folder holding the YAML configs (inside the installed package)."""
    return Path(str(files("pulsebms.configs")))
