"""The telemetry store interface and its row layout."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["COLUMNS", "SCHEMA_VERSION", "StoreError", "TelemetryStore"]

SCHEMA_VERSION = 1
"""Version of the stored table layout; a store refuses a database of another version."""

COLUMNS: tuple[str, ...] = (
    "t_s",
    "soc",
    "soh",
    "current_a",
    "voltage_v",
    "temperature_c",
)
"""Numeric columns of one telemetry row, after ``pack_id`` (time in seconds since epoch)."""

Row = tuple[str, float, float, float, float, float, float]
"""``(pack_id, t_s, soc, soh, current_a, voltage_v, temperature_c)``."""


class StoreError(RuntimeError):
    """A store that cannot be opened (schema version mismatch) or a malformed row."""


class TelemetryStore(Protocol):
    """Per-pack time series of telemetry rows."""

    def schema_version(self) -> int:
        """The schema version of the open database."""
        ...

    def write_batch(self, rows: Sequence[Row]) -> int:
        """Write rows in one transaction; returns the number written."""
        ...

    def query(self, pack_id: str, t0_s: float, t1_s: float) -> dict[str, npt.NDArray[np.float64]]:
        """Rows of ``pack_id`` with ``t0_s <= t_s < t1_s``, by column, in time order."""
        ...

    def latest(self, pack_id: str) -> dict[str, float] | None:
        """The newest row of ``pack_id``, or ``None`` when it has none."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
