"""The embedded telemetry store: SQLite from the standard library, no server."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pulsebms.services.store.base import COLUMNS, SCHEMA_VERSION, Row, StoreError

__all__ = ["SqliteTelemetryStore"]

_COLS = ", ".join(COLUMNS)


class SqliteTelemetryStore:
    """A :class:`~pulsebms.services.store.base.TelemetryStore` in one SQLite file.

    Args:
        path: Database file, or ``":memory:"``.

    Raises:
        StoreError: The database holds another schema version.

    Example:
        >>> store = SqliteTelemetryStore(":memory:")
        >>> store.write_batch([("p0", 0.0, 0.5, 1.0, 10.0, 3.7, 25.0)])
        1
        >>> float(store.query("p0", 0.0, 1.0)["voltage_v"][0])
        3.7
        >>> store.close()
    """

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path))
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = SCHEMA_VERSION
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            found = self._db.execute("SELECT version FROM schema_version").fetchone()
            if found is None:
                self._db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif int(found[0]) != SCHEMA_VERSION:
                version = int(found[0])
        if version != SCHEMA_VERSION:
            self._db.close()
            raise StoreError(
                f"database schema version {version}, this store reads {SCHEMA_VERSION}"
            )
        with self._db:
            cols = ", ".join(f"{c} REAL NOT NULL" for c in COLUMNS)
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS telemetry (pack_id TEXT NOT NULL, {cols})"
            )
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS telemetry_pack_time ON telemetry (pack_id, t_s)"
            )

    def schema_version(self) -> int:
        """The schema version of the open database."""
        return int(self._db.execute("SELECT version FROM schema_version").fetchone()[0])

    def write_batch(self, rows: Sequence[Row]) -> int:
        """Write rows in one transaction (``executemany``).

        Raises:
            StoreError: A row with the wrong length or a non-finite value; nothing is written.
        """
        for row in rows:
            if len(row) != 1 + len(COLUMNS) or not all(math.isfinite(v) for v in row[1:]):
                raise StoreError(f"malformed telemetry row {row!r}")
        marks = ", ".join("?" * (1 + len(COLUMNS)))
        with self._db:
            self._db.executemany(f"INSERT INTO telemetry (pack_id, {_COLS}) VALUES ({marks})", rows)
        return len(rows)

    def query(self, pack_id: str, t0_s: float, t1_s: float) -> dict[str, npt.NDArray[np.float64]]:
        """Rows of ``pack_id`` with ``t0_s <= t_s < t1_s``, by column, in time order."""
        cur = self._db.execute(
            f"SELECT {_COLS} FROM telemetry"
            " WHERE pack_id = ? AND t_s >= ? AND t_s < ? ORDER BY t_s",
            (pack_id, t0_s, t1_s),
        )
        data = np.asarray(cur.fetchall(), dtype=np.float64).reshape(-1, len(COLUMNS))
        return {c: data[:, i].copy() for i, c in enumerate(COLUMNS)}

    def latest(self, pack_id: str) -> dict[str, float] | None:
        """The newest row of ``pack_id``, or ``None`` when it has none."""
        row = self._db.execute(
            f"SELECT {_COLS} FROM telemetry WHERE pack_id = ? ORDER BY t_s DESC LIMIT 1",
            (pack_id,),
        ).fetchone()
        return None if row is None else dict(zip(COLUMNS, map(float, row), strict=True))

    def close(self) -> None:
        """Close the database."""
        self._db.close()
