"""Tracking for SB3 training: one SB3 ``Logger`` writing files and, optionally, wandb.

:func:`make_logger` builds the logger :func:`pulsebms.agents.sb3.train_agent` hands to the
model (SB3's own ``stdout``/``csv``/``tensorboard``/``log`` writers), and
:class:`WandbWriter` forwards its scalar records to a wandb run.

Example:
    >>> logger = make_logger(None, ("stdout",))
    >>> logger.record("train/loss", 0.5)
    >>> logger.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.logger import KVWriter, Logger, make_output_format

__all__ = ["WandbWriter", "make_logger"]


class WandbWriter(KVWriter):
    """Forward SB3 logger records to a wandb run (an SB3 ``KVWriter``).

    Args:
        run: An initialised ``wandb`` run (any mode: online, offline, disabled).
    """

    def __init__(self, run: Any) -> None:
        self.run = run

    def write(
        self,
        key_values: dict[str, Any],
        key_excluded: dict[str, tuple[str, ...]],
        step: int = 0,
    ) -> None:
        """Log the scalar values at ``step``."""
        scalars = {k: v for k, v in key_values.items() if isinstance(v, int | float | np.floating)}
        if scalars:
            self.run.log(scalars, step=step)

    def close(self) -> None:
        """Nothing to release (the caller finishes the run)."""


def make_logger(
    folder: str | Path | None,
    formats: Sequence[str] = ("csv",),
    *,
    wandb_run: Any | None = None,
) -> Logger:
    """An SB3 logger writing ``formats`` (``stdout``, ``csv``, ``tensorboard``, ``log``).

    Args:
        folder: Output folder of file formats.
        formats: SB3 format names.
        wandb_run: Also forward to this wandb run.

    Returns:
        The logger.
    """
    folder_s = str(folder) if folder is not None else None
    writers: list[KVWriter] = []
    for fmt in formats:
        if folder_s is None and fmt != "stdout":
            continue
        writers.append(make_output_format(fmt, folder_s or ".", ""))
    if wandb_run is not None:
        writers.append(WandbWriter(wandb_run))
    return Logger(folder_s, writers)
