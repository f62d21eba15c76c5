"""The telemetry store interface and its row layout, shared by every backend.

One layout serves every backend (:data:`COLUMNS`, :data:`SCHEMA_VERSION`): a table
``schema_version`` with one row, and a table ``telemetry`` with ``pack_id`` followed by the
numeric :data:`COLUMNS`, indexed on ``(pack_id, t_s)`` so that a query of one pack over a
time range reads only that range. Backends differ in SQL types and how they batch
(:func:`validate_rows` is the one check both run before a write). A third table,
``forecasts``, keeps the twin service's published forecasts (:class:`ForecastStore`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "COLUMNS",
    "FORECAST_TABLE",
    "INDEX_NAME",
    "OPTIONAL_COLUMNS",
    "SCHEMA_VERSION",
    "TABLE",
    "ForecastStore",
    "Row",
    "StoreError",
    "TelemetryStore",
    "columns_from_rows",
    "validate_rows",
]

SCHEMA_VERSION = 1
"""Version of the stored table layout; a store refuses a database of another version."""

TABLE = "telemetry"
"""Name of the telemetry table."""

FORECAST_TABLE = "forecasts"
"""Name of the table of published forecasts (``t_s``, ``site``, ``payload`` JSON text)."""

INDEX_NAME = "telemetry_pack_time"
"""Name of the ``(pack_id, t_s)`` index."""

COLUMNS: tuple[str, ...] = (
    "t_s",
    "soc",
    "soh",
    "current_a",
    "voltage_v",
    "temperature_c",
)
"""Numeric columns of one telemetry row, after ``pack_id`` (time in seconds since epoch)."""

OPTIONAL_COLUMNS: tuple[str, ...] = ("soc", "soh")
"""Columns that may be NaN: the BMS's own estimates, which some packs do not report (stored
as NULL by SQLite, as NaN by PostgreSQL; read back as NaN)."""

Row = tuple[str, float, float, float, float, float, float]
"""``(pack_id, t_s, soc, soh, current_a, voltage_v, temperature_c)``."""

MAX_PACK_ID_LENGTH = 130
"""Longest ``pack_id`` accepted (a device and a pack name of 64 characters and a separator)."""


_OPTIONAL = tuple(c in OPTIONAL_COLUMNS for c in COLUMNS)


class StoreError(RuntimeError):
    """A store that cannot be opened (schema version mismatch) or a malformed row."""


def validate_rows(rows: Sequence[Row]) -> None:
    """Check every row before a write (the whole batch is refused on one bad row).

    Args:
        rows: Rows ``(pack_id, t_s, soc, soh, current_a, voltage_v, temperature_c)``.

    Raises:
        StoreError: A row of the wrong length, a ``pack_id`` that is not a non-empty string
            of at most :data:`MAX_PACK_ID_LENGTH` characters, a value that is not a number,
            or a non-finite value outside :data:`OPTIONAL_COLUMNS` (which may be NaN).

    Example:
        >>> validate_rows([("p0", 0.0, 0.5, 1.0, 1.0, 51.2, 25.0)])
        >>> validate_rows([("p0", 0.0, float("nan"), 1.0, 1.0, 51.2, 25.0)])  # SoC unknown
        >>> validate_rows([("p0", 0.0, 0.5, 1.0, 1.0, float("nan"), 25.0)])
        Traceback (most recent call last):
        ...
        pulsebms.services.store.base.StoreError: malformed telemetry row ('p0', 0.0, 0.5, 1.0, 1.0, nan, 25.0)
    """  # noqa: E501 - the doctest's expected line is what Python prints
    width = 1 + len(COLUMNS)
    for row in rows:
        ok = (
            len(row) == width
            and isinstance(row[0], str)
            and 0 < len(row[0]) <= MAX_PACK_ID_LENGTH
            and all(
                isinstance(v, int | float)
                and not isinstance(v, bool)
                and (math.isfinite(v) or (optional and math.isnan(v)))
                for v, optional in zip(row[1:], _OPTIONAL, strict=True)
            )
        )
        if not ok:
            raise StoreError(f"malformed telemetry row {row!r}")


def columns_from_rows(rows: Sequence[Sequence[float]]) -> dict[str, npt.NDArray[np.float64]]:
    """Query result rows (numeric columns only, in :data:`COLUMNS` order) → numpy columns."""
    data = np.asarray(rows, dtype=np.float64).reshape(-1, len(COLUMNS))
    return {c: np.ascontiguousarray(data[:, i]) for i, c in enumerate(COLUMNS)}


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

    def pack_ids(self) -> list[str]:
        """Every pack with at least one row, sorted."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class ForecastStore(Protocol):
    """The twin service's published forecasts, one JSON document per site and time."""

    def write_forecast(self, t_s: float, site: str, payload: str) -> None:
        """Store one forecast message (its JSON text) published at ``t_s``."""
        ...

    def latest_forecast(self, site: str) -> tuple[float, str] | None:
        """``(t_s, payload)`` of the newest forecast of ``site``, or ``None``."""
        ...
