"""The embedded telemetry store: SQLite from the standard library, no server."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pulsebms.services.store.base import (
    COLUMNS,
    FORECAST_TABLE,
    INDEX_NAME,
    OPTIONAL_COLUMNS,
    SCHEMA_VERSION,
    TABLE,
    Row,
    StoreError,
    columns_from_rows,
    validate_rows,
)

__all__ = ["SqliteTelemetryStore"]

_COLS = ", ".join(COLUMNS)


class SqliteTelemetryStore:
    """A :class:`~pulsebms.services.store.base.TelemetryStore` in one SQLite file.

    Writes run in one transaction per batch (``executemany``); the journal is WAL, so
    readers do not block the writer. One store may be used from several threads. A database
    error (disk full, closed store) is raised as
    :class:`~pulsebms.services.store.base.StoreError`.

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
        self.path = str(path)
        # Shared by the threads of a service (network handler, loop); sqlite3 serialises
        # calls on one connection, and the lock keeps each transaction whole.
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._lock = threading.RLock()
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
            cols = ", ".join(
                f"{c} REAL" + ("" if c in OPTIONAL_COLUMNS else " NOT NULL") for c in COLUMNS
            )
            self._db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (pack_id TEXT NOT NULL, {cols})")
            self._db.execute(f"CREATE INDEX IF NOT EXISTS {INDEX_NAME} ON {TABLE} (pack_id, t_s)")
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {FORECAST_TABLE}"
                " (t_s REAL NOT NULL, site TEXT NOT NULL, payload TEXT NOT NULL)"
            )
            self._db.execute(
                f"CREATE INDEX IF NOT EXISTS {FORECAST_TABLE}_site_time"
                f" ON {FORECAST_TABLE} (site, t_s)"
            )

    def schema_version(self) -> int:
        """The schema version of the open database."""
        return int(self._db.execute("SELECT version FROM schema_version").fetchone()[0])

    def write_batch(self, rows: Sequence[Row]) -> int:
        """Write rows in one transaction (``executemany``).

        Raises:
            StoreError: A malformed row (:func:`~pulsebms.services.store.base.validate_rows`);
                nothing is written.
        """
        validate_rows(rows)
        marks = ", ".join("?" * (1 + len(COLUMNS)))
        try:
            with self._lock, self._db:
                self._db.executemany(
                    f"INSERT INTO {TABLE} (pack_id, {_COLS}) VALUES ({marks})", rows
                )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc
        return len(rows)

    def query(self, pack_id: str, t0_s: float, t1_s: float) -> dict[str, npt.NDArray[np.float64]]:
        """Rows of ``pack_id`` with ``t0_s <= t_s < t1_s``, by column, in time order."""
        try:
            with self._lock:
                cur = self._db.execute(
                    f"SELECT {_COLS} FROM {TABLE}"
                    " WHERE pack_id = ? AND t_s >= ? AND t_s < ? ORDER BY t_s",
                    (pack_id, t0_s, t1_s),
                )
                return columns_from_rows(cur.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite query failed: {exc}") from exc

    def latest(self, pack_id: str) -> dict[str, float] | None:
        """The newest row of ``pack_id``, or ``None`` when it has none."""
        try:
            row = self._db.execute(
                f"SELECT {_COLS} FROM {TABLE} WHERE pack_id = ? ORDER BY t_s DESC LIMIT 1",
                (pack_id,),
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite query failed: {exc}") from exc
        return None if row is None else dict(zip(COLUMNS, map(float, row), strict=True))

    def pack_ids(self) -> list[str]:
        """Every pack with at least one row, sorted."""
        rows = self._db.execute(f"SELECT DISTINCT pack_id FROM {TABLE} ORDER BY pack_id")
        return [str(r[0]) for r in rows]

    def write_forecast(self, t_s: float, site: str, payload: str) -> None:
        """Store one forecast message (its JSON text) published at ``t_s``."""
        try:
            with self._lock, self._db:
                self._db.execute(
                    f"INSERT INTO {FORECAST_TABLE} VALUES (?, ?, ?)", (float(t_s), site, payload)
                )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    def latest_forecast(self, site: str) -> tuple[float, str] | None:
        """``(t_s, payload)`` of the newest forecast of ``site``, or ``None``."""
        row = self._db.execute(
            f"SELECT t_s, payload FROM {FORECAST_TABLE} WHERE site = ? ORDER BY t_s DESC LIMIT 1",
            (site,),
        ).fetchone()
        return None if row is None else (float(row[0]), str(row[1]))

    def size_bytes(self) -> int:
        """Bytes on disk of the database (pages in use; 0 for ``":memory:"``)."""
        if self.path == ":memory:":
            return 0
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        return pages * size

    def close(self) -> None:
        """Close the database."""
        self._db.close()
