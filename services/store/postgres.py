"""The server telemetry store: PostgreSQL through psycopg 3.

Same layout as the embedded store (:mod:`pulsebms.services.store.base`): a one-row
``schema_version`` table and a ``telemetry`` table of ``pack_id`` + :data:`COLUMNS`
(``double precision``), with a B-tree on ``(pack_id, t_s)``, so a pack's time range is one
index range scan however many packs and weeks the table holds. Writes go through ``COPY``
(binary rows, one transaction per batch), the fastest bulk path PostgreSQL offers. A lost
connection (server restart) is re-established once per operation; what still fails is a
:class:`~pulsebms.services.store.base.StoreError`. One store may be used from several
threads (operations are serialised).

The schema is created on first connection under a transaction-level advisory lock, so
several services may start against one empty database at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from pulsebms.services.store.base import (
    COLUMNS,
    FORECAST_TABLE,
    INDEX_NAME,
    SCHEMA_VERSION,
    TABLE,
    Row,
    StoreError,
    columns_from_rows,
    validate_rows,
)

__all__ = ["PostgresTelemetryStore"]

_COLS = ", ".join(COLUMNS)
_T = TypeVar("_T")
_SCHEMA_LOCK = 0x50554C5345  # advisory-lock key ("PULSE")


class PostgresTelemetryStore:
    """A :class:`~pulsebms.services.store.base.TelemetryStore` in a PostgreSQL database.

    Args:
        conninfo: libpq connection string or URI (``"postgresql://user@host:5432/db"``).
        connect_timeout_s: Seconds to wait for the server before giving up.

    Raises:
        StoreError: The server cannot be reached, or the database holds another schema
            version.
    """

    def __init__(self, conninfo: str, *, connect_timeout_s: float = 10.0) -> None:
        self._conninfo = conninfo
        self._timeout = max(1, int(connect_timeout_s))
        self._closed = False
        self._lock = threading.RLock()  # one transaction at a time across threads
        self._db: Any = self._connect()
        try:
            self._create_schema()
        except BaseException:
            self._db.close()
            raise

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self._conninfo, connect_timeout=self._timeout)
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}".strip()) from exc

    def _with_retry(self, operation: Callable[[], _T]) -> _T:
        """Run ``operation``; on a lost connection reconnect once and retry it.

        Raises:
            StoreError: The operation failed (or failed again after reconnecting).
        """
        with self._lock:
            return self._retry_locked(operation)

    def _retry_locked(self, operation: Callable[[], _T]) -> _T:
        import psycopg

        if self._closed:
            raise StoreError("the store is closed")
        for attempt in (0, 1):
            try:
                if self._db.closed or self._db.broken:
                    self._db = self._connect()
                return operation()
            except psycopg.OperationalError as exc:
                if attempt == 1:
                    raise StoreError(f"PostgreSQL failed: {exc}".strip()) from exc
                with contextlib.suppress(Exception):
                    self._db.close()
            except psycopg.Error as exc:
                raise StoreError(f"PostgreSQL failed: {exc}".strip()) from exc
        raise StoreError("unreachable")  # pragma: no cover

    def _create_schema(self) -> None:
        cols = ", ".join(f"{c} double precision NOT NULL" for c in COLUMNS)  # NaN is a value
        with self._db.transaction(), self._db.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            cur.execute("SELECT version FROM schema_version")
            found = cur.fetchone()
            if found is None:
                cur.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))
            elif int(found[0]) != SCHEMA_VERSION:
                version = int(found[0])
                raise StoreError(
                    f"database schema version {version}, this store reads {SCHEMA_VERSION}"
                )
            cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (pack_id text NOT NULL, {cols})")
            cur.execute(f"CREATE INDEX IF NOT EXISTS {INDEX_NAME} ON {TABLE} (pack_id, t_s)")
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {FORECAST_TABLE}"
                " (t_s double precision NOT NULL, site text NOT NULL, payload jsonb NOT NULL)"
            )
            cur.execute(
                f"CREATE INDEX IF NOT EXISTS {FORECAST_TABLE}_site_time"
                f" ON {FORECAST_TABLE} (site, t_s)"
            )

    def schema_version(self) -> int:
        """The schema version of the open database."""

        def run() -> int:
            with self._db.transaction(), self._db.cursor() as cur:
                cur.execute("SELECT version FROM schema_version")
                return int(cur.fetchone()[0])

        return self._with_retry(run)

    def write_batch(self, rows: Sequence[Row]) -> int:
        """Write rows in one transaction with ``COPY``.

        Raises:
            StoreError: A malformed row (:func:`~pulsebms.services.store.base.validate_rows`);
                nothing is written.
        """
        validate_rows(rows)
        if not rows:
            return 0
        statement = f"COPY {TABLE} (pack_id, {_COLS}) FROM STDIN (FORMAT BINARY)"

        def run() -> int:
            with self._db.transaction(), self._db.cursor() as cur, cur.copy(statement) as copy:
                copy.set_types(["text", *(["float8"] * len(COLUMNS))])
                for row in rows:
                    copy.write_row(row)
            return len(rows)

        return self._with_retry(run)

    def query(self, pack_id: str, t0_s: float, t1_s: float) -> dict[str, npt.NDArray[np.float64]]:
        """Rows of ``pack_id`` with ``t0_s <= t_s < t1_s``, by column, in time order."""

        def run() -> dict[str, npt.NDArray[np.float64]]:
            with self._db.transaction(), self._db.cursor() as cur:
                cur.execute(
                    f"SELECT {_COLS} FROM {TABLE}"
                    " WHERE pack_id = %s AND t_s >= %s AND t_s < %s ORDER BY t_s",
                    (pack_id, float(t0_s), float(t1_s)),
                )
                return columns_from_rows(cur.fetchall())

        return self._with_retry(run)

    def latest(self, pack_id: str) -> dict[str, float] | None:
        """The newest row of ``pack_id``, or ``None`` when it has none."""

        def run() -> Any:
            with self._db.transaction(), self._db.cursor() as cur:
                cur.execute(
                    f"SELECT {_COLS} FROM {TABLE} WHERE pack_id = %s ORDER BY t_s DESC LIMIT 1",
                    (pack_id,),
                )
                return cur.fetchone()

        row = self._with_retry(run)
        return None if row is None else dict(zip(COLUMNS, map(float, row), strict=True))

    def pack_ids(self) -> list[str]:
        """Every pack with at least one row, sorted.

        A loose index scan (one index probe per pack, a recursive query) rather than
        ``DISTINCT`` over every row.
        """

        def run() -> list[str]:
            with self._db.transaction(), self._db.cursor() as cur:
                cur.execute(
                    f"WITH RECURSIVE ids AS ("
                    f" (SELECT pack_id FROM {TABLE} ORDER BY pack_id LIMIT 1)"
                    f" UNION ALL"
                    f" SELECT (SELECT t.pack_id FROM {TABLE} t WHERE t.pack_id > ids.pack_id"
                    f"  ORDER BY t.pack_id LIMIT 1) FROM ids WHERE ids.pack_id IS NOT NULL)"
                    f" SELECT pack_id FROM ids WHERE pack_id IS NOT NULL"
                )
                return [str(r[0]) for r in cur.fetchall()]

        return self._with_retry(run)

    def write_forecast(self, t_s: float, site: str, payload: str) -> None:
        """Store one forecast message (its JSON text, kept as ``jsonb``) published at ``t_s``."""

        def run() -> None:
            with self._db.transaction(), self._db.cursor() as cur:
                cur.execute(
                    f"INSERT INTO {FORECAST_TABLE} VALUES (%s, %s, %s::jsonb)",
                    (float(t_s), site, payload),
                )

        self._with_retry(run)

    def latest_forecast(self, site: str) -> tuple[float, str] | None:
        """``(t_s, payload)`` of the newest forecast of ``site``, or ``None``."""

        def run() -> Any:
            with self._db.transaction(), self._db.cursor() as cur:
                cur.execute(
                    f"SELECT t_s, payload::text FROM {FORECAST_TABLE} WHERE site = %s"
                    " ORDER BY t_s DESC LIMIT 1",
                    (site,),
                )
                return cur.fetchone()

        row = self._with_retry(run)
        return None if row is None else (float(row[0]), str(row[1]))

    def size_bytes(self) -> int:
        """Bytes on disk of the telemetry table with its indexes."""

        def run() -> int:
            with self._db.transaction(), self._db.cursor() as cur:
                cur.execute("SELECT pg_total_relation_size(%s)", (TABLE,))
                return int(cur.fetchone()[0])

        return self._with_retry(run)

    def close(self) -> None:
        """Close the connection (later operations raise :class:`StoreError`)."""
        self._closed = True
        self._db.close()
