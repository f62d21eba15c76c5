"""The embedded telemetry store: SQLite from the standard library, no server.

Layout (schema version 2, :mod:`pulsebms.services.store.base`): ``telemetry`` is a
``WITHOUT ROWID`` table whose primary key is ``(pack_key, t_ms)``, so the rows themselves sit
in the key's B-tree: one pack's hour is ≈ 60 neighbouring pages, read in one range scan
however many packs and weeks the file holds (a rowid table with a secondary index, the
version 1 layout, spreads the same hour over ≈ 3 600 pages). A version 1 file is migrated in
place when opened (:meth:`SqliteTelemetryStore._migrate_v1`).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pulsebms.services.store.base import (
    COLUMNS,
    FORECAST_TABLE,
    MAX_ABS_T_S,
    OPTIONAL_COLUMNS,
    PACKS_TABLE,
    SCHEMA_VERSION,
    TABLE,
    VALUE_COLUMNS,
    Row,
    StoreError,
    columns_from_rows,
    empty_columns,
    ms_range,
    prepare_rows,
    schema_needs_migration,
    split_by_pack,
    to_ms,
)

__all__ = ["SqliteTelemetryStore"]

_log = logging.getLogger(__name__)

_VALUES = ", ".join(VALUE_COLUMNS)
_SELECT = f"t_ms, {_VALUES}"
_V1_VALUES = ", ".join(f"t.{c}" for c in VALUE_COLUMNS)

_DDL = (
    f"CREATE TABLE {PACKS_TABLE} (pack_key INTEGER PRIMARY KEY, pack_id TEXT NOT NULL UNIQUE)",
    f"CREATE TABLE {TABLE}_v2 (pack_key INTEGER NOT NULL, t_ms INTEGER NOT NULL, "
    + ", ".join(f"{c} REAL" + ("" if c in OPTIONAL_COLUMNS else " NOT NULL") for c in VALUE_COLUMNS)
    + ", PRIMARY KEY (pack_key, t_ms)) WITHOUT ROWID",
)
"""Version 2 tables (the telemetry table is created as ``telemetry_v2`` and renamed, so
that creating and migrating share one path)."""

_DDL_AFTER = (
    f"ALTER TABLE {TABLE}_v2 RENAME TO {TABLE}",
    f"CREATE VIEW {TABLE}_rows AS SELECT p.pack_id, t.t_ms / 1000.0 AS t_s, {_VALUES}"
    f" FROM {TABLE} AS t JOIN {PACKS_TABLE} AS p USING (pack_key)",
    f"CREATE TABLE IF NOT EXISTS {FORECAST_TABLE}"
    " (t_s REAL NOT NULL, site TEXT NOT NULL, payload TEXT NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {FORECAST_TABLE}_site_time ON {FORECAST_TABLE} (site, t_s)",
)
"""Version 2 statements after the telemetry table is filled (``telemetry_rows``: a view of
rows as written, pack names and seconds, for people at the ``sqlite3`` prompt)."""


def _to_ms_or_null(t_s: float | None) -> int | None:
    """``to_ms`` for the migration (SQL function); NULL for a time beyond the range."""
    if t_s is None or not abs(t_s) <= MAX_ABS_T_S:
        return None
    return to_ms(t_s)


class SqliteTelemetryStore:
    """A :class:`~pulsebms.services.store.base.TelemetryStore` in one SQLite file.

    Writes run in one transaction per batch, rows sorted by pack and time; the journal is
    WAL, so readers do not block the writer. One store may be used from several threads.
    A database error (disk full, closed store) is raised as
    :class:`~pulsebms.services.store.base.StoreError`.

    Args:
        path: Database file, or ``":memory:"``.
        busy_timeout_s: How long to wait for another connection's write lock (another
            process writing, or migrating the file) before failing.
        cache_mib: SQLite's page cache of this connection [MiB] (enough for the last page
            of every pack's B-tree range while writing a fleet).

    Raises:
        StoreError: The database holds a newer schema version, is not a database, or a
            version 1 database could not be migrated (it is then left as it was).

    Example:
        >>> store = SqliteTelemetryStore(":memory:")
        >>> store.write_batch([("p0", 0.0, 0.5, 1.0, 10.0, 3.7, 25.0)])
        1
        >>> store.write_batch([("p0", 0.0, 0.5, 1.0, 10.0, 3.7, 25.0)])  # a redelivery
        0
        >>> float(store.query("p0", 0.0, 1.0)["voltage_v"][0])
        3.7
        >>> store.close()
    """

    def __init__(
        self, path: str | Path, *, busy_timeout_s: float = 30.0, cache_mib: int = 32
    ) -> None:
        self.path = str(path)
        # Shared by the threads of a service (network handler, loop); sqlite3 serialises
        # calls on one connection, and the lock keeps each transaction whole. Autocommit
        # mode: transactions are the explicit BEGIN IMMEDIATE of _transaction().
        try:
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, timeout=busy_timeout_s, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        self._lock = threading.RLock()
        self._keys: dict[str, int] = {}
        self._names: dict[int, str] = {}
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA cache_size={-1024 * int(cache_mib)}")
            self._open_schema()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    # ------------------------------------------------------------------ schema
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: the write lock up front)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back already
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _open_schema(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            found = db.execute("SELECT version FROM schema_version").fetchone()
            if found is None:
                for statement in (*_DDL, *_DDL_AFTER):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                return
            if schema_needs_migration(int(found[0])):
                self._migrate_v1(db)

    def _migrate_v1(self, db: sqlite3.Connection) -> None:
        """Version 1 → 2 in place, inside the opening transaction (all or nothing).

        Rows are copied in write order (rowid), so of rows that share a pack and a
        millisecond the one written first is kept; rows whose time is beyond
        :data:`~pulsebms.services.store.base.MAX_ABS_T_S` are left out (logged). The file
        needs room for both copies until the old table is dropped (SQLite reuses its pages).
        """
        (n_v1,) = db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        _log.warning("SQLite store %s: migrating %d rows to schema version 2", self.path, n_v1)
        db.create_function("pulsebms_to_ms", 1, _to_ms_or_null, deterministic=True)
        for statement in _DDL:
            db.execute(statement)
        db.execute(
            f"INSERT INTO {PACKS_TABLE} (pack_id) SELECT DISTINCT pack_id FROM {TABLE}"
            " ORDER BY pack_id"
        )
        cur = db.execute(
            f"INSERT INTO {TABLE}_v2 (pack_key, {_SELECT})"
            f" SELECT p.pack_key, pulsebms_to_ms(t.t_s), {_V1_VALUES}"
            f" FROM {TABLE} AS t CROSS JOIN {PACKS_TABLE} AS p ON p.pack_id = t.pack_id"
            f" WHERE pulsebms_to_ms(t.t_s) IS NOT NULL ORDER BY t.rowid"
            " ON CONFLICT DO NOTHING"
        )
        kept = cur.rowcount
        db.execute(f"DROP TABLE {TABLE}")  # and its (pack_id, t_s) index
        for statement in _DDL_AFTER:
            db.execute(statement)
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        _log.warning(
            "SQLite store %s: migrated to schema version 2, %d rows kept, %d duplicates or"
            " out-of-range times left out",
            self.path,
            kept,
            n_v1 - kept,
        )

    def schema_version(self) -> int:
        """The schema version of the open database."""
        with self._lock:
            return int(self._db.execute("SELECT version FROM schema_version").fetchone()[0])

    # ------------------------------------------------------------------ pack keys
    def _key(self, pack_id: str) -> int | None:
        """The stored key of ``pack_id`` (``None``: no rows); caller holds the lock."""
        key = self._keys.get(pack_id)
        if key is None:
            found = self._db.execute(
                f"SELECT pack_key FROM {PACKS_TABLE} WHERE pack_id = ?", (pack_id,)
            ).fetchone()
            if found is not None:
                key = self._remember(pack_id, int(found[0]))
        return key

    def _remember(self, pack_id: str, key: int) -> int:
        self._keys[pack_id] = key
        self._names[key] = pack_id
        return key

    def _all_keys(self) -> dict[int, str]:
        """Every stored pack, key → name (re-read: another connection may have added some)."""
        for key, pack_id in self._db.execute(f"SELECT pack_key, pack_id FROM {PACKS_TABLE}"):
            self._remember(str(pack_id), int(key))
        return dict(self._names)

    # ------------------------------------------------------------------ telemetry
    def write_batch(self, rows: Sequence[Row]) -> int:
        """Write rows in one transaction; returns the number of rows newly stored.

        Rows whose ``(pack_id, t_ms)`` is stored already, or comes earlier in the batch,
        are ignored (first write wins).

        Raises:
            StoreError: A malformed row (:func:`~pulsebms.services.store.base.validate_rows`)
                or a database error; nothing is written.
        """
        prepared = prepare_rows(rows)
        if not prepared:
            return 0
        new_keys: dict[str, int] = {}
        try:
            with self._transaction() as db:
                keys: dict[str, int] = {}
                for pack_id in dict.fromkeys(r[0] for r in prepared):
                    key = self._keys.get(pack_id)
                    if key is None:
                        db.execute(
                            f"INSERT INTO {PACKS_TABLE} (pack_id) VALUES (?)"
                            " ON CONFLICT DO NOTHING",
                            (pack_id,),
                        )
                        key = int(
                            db.execute(
                                f"SELECT pack_key FROM {PACKS_TABLE} WHERE pack_id = ?",
                                (pack_id,),
                            ).fetchone()[0]
                        )
                        new_keys[pack_id] = key
                    keys[pack_id] = key
                cur = db.executemany(
                    f"INSERT INTO {TABLE} (pack_key, {_SELECT}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    ((keys[r[0]], *r[1:]) for r in prepared),
                )
                written = cur.rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc
        with self._lock:  # committed: the new keys are real
            for pack_id, key in new_keys.items():
                self._remember(pack_id, key)
        return int(written)

    def query(self, pack_id: str, t0_s: float, t1_s: float) -> dict[str, npt.NDArray[np.float64]]:
        """Rows of ``pack_id`` with ``t0_s <= t_s < t1_s``, by column, in time order."""
        bounds = ms_range(t0_s, t1_s)
        try:
            with self._lock:
                key = self._key(pack_id)
                if key is None or bounds is None:
                    return empty_columns()
                cur = self._db.execute(
                    f"SELECT {_SELECT} FROM {TABLE}"
                    " WHERE pack_key = ? AND t_ms >= ? AND t_ms < ? ORDER BY t_ms",
                    (key, *bounds),
                )
                return columns_from_rows(cur.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite query failed: {exc}") from exc

    def query_fleet(
        self, t0_s: float, t1_s: float, pack_ids: Sequence[str] | None = None
    ) -> dict[str, dict[str, npt.NDArray[np.float64]]]:
        """Rows with ``t0_s <= t_s < t1_s`` of many packs, by pack, then by column.

        One range scan of the primary key per pack (``pack_key IN (…)``).

        Args:
            t0_s: Start of the window (included).
            t1_s: End of the window (excluded).
            pack_ids: The packs to read (all keys of the result); ``None``: every pack with
                rows in the window.
        """
        bounds = ms_range(t0_s, t1_s)
        try:
            with self._lock:
                if pack_ids is None:
                    names = self._all_keys()
                else:
                    found = {p: self._key(p) for p in pack_ids}
                    names = {k: p for p, k in found.items() if k is not None}
                rows: list[tuple[int, ...]] = []
                if names and bounds is not None:
                    keys = sorted(names)
                    for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                        chunk = keys[i : i + 500]
                        rows += self._db.execute(
                            f"SELECT pack_key, {_SELECT} FROM {TABLE}"
                            f" WHERE pack_key IN ({', '.join('?' * len(chunk))})"
                            " AND t_ms >= ? AND t_ms < ? ORDER BY pack_key, t_ms",
                            (*chunk, *bounds),
                        ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite query failed: {exc}") from exc
        data = np.asarray(rows, dtype=np.float64).reshape(-1, 1 + len(COLUMNS))
        out = split_by_pack(data[:, 0].astype(np.int64), columns_from_rows(data[:, 1:]), names)
        if pack_ids is not None:
            return {p: out.get(p) or empty_columns() for p in pack_ids}
        return out

    def latest(self, pack_id: str) -> dict[str, float] | None:
        """The newest row of ``pack_id``, or ``None`` when it has none."""
        try:
            with self._lock:
                key = self._key(pack_id)
                if key is None:
                    return None
                row = self._db.execute(
                    f"SELECT {_SELECT} FROM {TABLE} WHERE pack_key = ? ORDER BY t_ms DESC LIMIT 1",
                    (key,),
                ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite query failed: {exc}") from exc
        if row is None:
            return None
        return {c: float(v[0]) for c, v in columns_from_rows([row]).items()}

    def pack_ids(self) -> list[str]:
        """Every pack with at least one row, sorted."""
        try:
            with self._lock:
                return sorted(self._all_keys().values())
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite query failed: {exc}") from exc

    # ------------------------------------------------------------------ forecasts
    def write_forecast(self, t_s: float, site: str, payload: str) -> None:
        """Store one forecast message (its JSON text) published at ``t_s``."""
        try:
            with self._transaction() as db:
                db.execute(
                    f"INSERT INTO {FORECAST_TABLE} VALUES (?, ?, ?)", (float(t_s), site, payload)
                )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    def latest_forecast(self, site: str) -> tuple[float, str] | None:
        """``(t_s, payload)`` of the newest forecast of ``site``, or ``None``."""
        try:
            with self._lock:
                row = self._db.execute(
                    f"SELECT t_s, payload FROM {FORECAST_TABLE} WHERE site = ?"
                    " ORDER BY t_s DESC LIMIT 1",
                    (site,),
                ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite query failed: {exc}") from exc
        return None if row is None else (float(row[0]), str(row[1]))

    # ------------------------------------------------------------------ housekeeping
    def size_bytes(self) -> int:
        """Bytes on disk of the database (pages in use, WAL checkpointed; 0 in memory)."""
        if self.path == ":memory:":
            return 0
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
            free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
            size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        return (pages - free) * size

    def close(self) -> None:
        """Close the database."""
        self._db.close()
