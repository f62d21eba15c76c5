"""Session-wide test settings: quiet, offline, deterministic, headless."""

from __future__ import annotations

import os

# Set before any test module imports the libraries that read them.
os.environ["WANDB_MODE"] = "disabled"  # tests never log to wandb, not even offline
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")
# Subprocesses started by tests hash strings the same way on every run.
os.environ.setdefault("PYTHONHASHSEED", "0")
