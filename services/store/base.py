"""The telemetry store interface and its row layout, shared by every backend.

Rows come in as :data:`Row` tuples (``pack_id``, then the numeric :data:`COLUMNS`, time in
seconds) and go out as numpy columns. What is stored (schema version 2, both backends):

* ``packs (pack_key, pack_id)``: one small integer key per pack name;
* ``telemetry (pack_key, t_ms, soc, soh, current_a, voltage_v, temperature_c)``: time as
  integer milliseconds, the five measurements as float64, primary key ``(pack_key, t_ms)``.
  SQLite keeps the table *clustered* on that key (``WITHOUT ROWID``: one pack's time range
  is a few neighbouring pages); PostgreSQL keeps rows in arrival order and each batch is
  written sorted by pack and time, so one pack's rows of one batch share a heap page;
* ``forecasts (t_s, site, payload)``: the twin service's published forecasts
  (:class:`ForecastStore`);
* ``schema_version (version)``: one row. An older database is migrated in place when a
  store opens it; a newer one is refused (:class:`StoreError`).

Contract of every backend (the conformance tests in ``tests/services/test_store.py``):

* **Time** is kept at 1 ms resolution: ``t_s`` is stored as ``round(t_s * 1000)`` (half to
  even) and read back as ``t_ms / 1000``; range bounds are compared against the read-back
  times, so ``query(p, t, ...)`` with a ``t`` read from the store includes that row.
* **Duplicates**: at most one row per ``(pack_id, t_ms)``; the *first* written is kept and
  later ones are ignored, within a batch and across batches (a QoS-1 redelivery or a
  replayed batch changes nothing). :meth:`TelemetryStore.write_batch` returns the number of
  rows newly stored.
* **Values** round-trip exactly as float64; ``soc``/``soh`` may be NaN (unknown).
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
    "MAX_ABS_T_S",
    "OPTIONAL_COLUMNS",
    "PACKS_TABLE",
    "SCHEMA_VERSION",
    "TABLE",
    "ForecastStore",
    "KeyedRow",
    "Row",
    "StoreError",
    "TelemetryStore",
    "columns_from_rows",
    "empty_columns",
    "ms_bound",
    "ms_range",
    "prepare_rows",
    "schema_needs_migration",
    "split_by_pack",
    "to_ms",
    "validate_rows",
]

SCHEMA_VERSION = 2
"""Version of the stored layout: 1 = ``pack_id`` text and ``t_s`` float per row, a secondary
``(pack_id, t_s)`` index, duplicates kept; 2 = integer pack keys, ``t_ms``, primary key
``(pack_key, t_ms)`` (first write wins). Older databases are migrated when opened."""

TABLE = "telemetry"
"""Name of the telemetry table."""

PACKS_TABLE = "packs"
"""Name of the table of pack names and their integer keys."""

FORECAST_TABLE = "forecasts"
"""Name of the table of published forecasts (``t_s``, ``site``, ``payload`` JSON text)."""

COLUMNS: tuple[str, ...] = (
    "t_s",
    "soc",
    "soh",
    "current_a",
    "voltage_v",
    "temperature_c",
)
"""Numeric columns of one telemetry row, after ``pack_id`` (time in seconds since epoch)."""

VALUE_COLUMNS: tuple[str, ...] = COLUMNS[1:]
"""The measured columns (everything but time), stored as float64."""

OPTIONAL_COLUMNS: tuple[str, ...] = ("soc", "soh")
"""Columns that may be NaN: the BMS's own estimates, which some packs do not report (stored
as NULL by SQLite, as NaN by PostgreSQL; read back as NaN)."""

Row = tuple[str, float, float, float, float, float, float]
"""``(pack_id, t_s, soc, soh, current_a, voltage_v, temperature_c)``."""

KeyedRow = tuple[str, int, float, float, float, float, float]
"""A :data:`Row` ready to store: ``(pack_id, t_ms, soc, soh, current_a, voltage_v,
temperature_c)``."""

MAX_PACK_ID_LENGTH = 130
"""Longest ``pack_id`` accepted (a device and a pack name of 64 characters and a separator)."""

MAX_ABS_T_S = 2.0**53 / 1000.0
"""Largest ``|t_s|`` accepted (≈ 9.0e12 s, year ≈ 287 000): beyond it a float64 ``t_s``
cannot hold every millisecond."""

_MAX_MS = 2**53
_OPTIONAL = tuple(c in OPTIONAL_COLUMNS for c in COLUMNS)


class StoreError(RuntimeError):
    """A store that cannot be opened (newer schema, failed migration) or a malformed row."""


def schema_needs_migration(version: int) -> bool:
    """Whether a database at schema ``version`` must be migrated before use.

    Args:
        version: The version the database records.

    Returns:
        ``False`` for :data:`SCHEMA_VERSION`, ``True`` for version 1 (migrated in place).

    Raises:
        StoreError: A newer or unknown version (nothing is touched).

    Example:
        >>> schema_needs_migration(SCHEMA_VERSION), schema_needs_migration(1)
        (False, True)
    """
    if version == SCHEMA_VERSION:
        return False
    if version == 1:
        return True
    raise StoreError(
        f"database schema version {version} is "
        + ("newer than" if version > SCHEMA_VERSION else "unknown to")
        + f" this store (it reads {SCHEMA_VERSION} and migrates 1); "
        + "use the pulsebms release that wrote it"
    )


def validate_rows(rows: Sequence[Row]) -> None:
    """Check every row before a write (the whole batch is refused on one bad row).

    Args:
        rows: Rows ``(pack_id, t_s, soc, soh, current_a, voltage_v, temperature_c)``.

    Raises:
        StoreError: A row of the wrong length, a ``pack_id`` that is not a non-empty string
            of at most :data:`MAX_PACK_ID_LENGTH` characters, a value that is not a number,
            a non-finite value outside :data:`OPTIONAL_COLUMNS` (which may be NaN), or a
            time beyond :data:`MAX_ABS_T_S`.

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
            and abs(row[1]) <= MAX_ABS_T_S
        )
        if not ok:
            raise StoreError(f"malformed telemetry row {row!r}")


def to_ms(t_s: float) -> int:
    """A row's time as stored: integer milliseconds, rounded half to even.

    Example:
        >>> to_ms(1700000000.1234), to_ms(0.0015), to_ms(-2.0)
        (1700000000123, 2, -2000)
    """
    return round(t_s * 1000.0)


def ms_bound(t_s: float) -> int:
    """The smallest stored time ``m`` [ms] whose read-back time ``m / 1000`` is ``>= t_s``.

    Range queries keep ``ms_bound(t0_s) <= t_ms < ms_bound(t1_s)``, which is exactly
    ``t0_s <= t_ms / 1000 < t1_s`` on the times a query returns. Bounds beyond
    :data:`MAX_ABS_T_S` (infinities included) are clamped; NaN raises ``ValueError``.

    Example:
        >>> ms_bound(1.0), ms_bound(1.0001), ms_bound(-0.0004), ms_bound(float("inf"))
        (1000, 1001, 0, 9007199254740992)
    """
    if math.isnan(t_s):
        raise ValueError("a time bound may not be NaN")
    if t_s > MAX_ABS_T_S:
        return _MAX_MS
    if t_s < -MAX_ABS_T_S:
        return -_MAX_MS
    m = math.ceil(t_s * 1000.0)
    while (m - 1) / 1000.0 >= t_s:  # t_s * 1000 rounded up: one step back at most
        m -= 1
    while m / 1000.0 < t_s:  # … or down
        m += 1
    return m


def ms_range(t0_s: float, t1_s: float) -> tuple[int, int] | None:
    """``(ms_bound(t0_s), ms_bound(t1_s))``, or ``None`` when no row can match.

    No row matches an empty range, or a NaN bound (it compares false with every time).

    Example:
        >>> ms_range(0.0, 1.5), ms_range(2.0, 2.0), ms_range(float("nan"), 1.0)
        ((0, 1500), None, None)
    """
    if math.isnan(t0_s) or math.isnan(t1_s):
        return None
    lo, hi = ms_bound(t0_s), ms_bound(t1_s)
    return (lo, hi) if lo < hi else None


def empty_columns() -> dict[str, npt.NDArray[np.float64]]:
    """Columns of no rows."""
    return {c: np.zeros(0, dtype=np.float64) for c in COLUMNS}


def prepare_rows(rows: Sequence[Row]) -> list[KeyedRow]:
    """Validate a batch, key it by ``(pack_id, t_ms)``, keep the first of duplicates, sort.

    What both backends store (sorted by pack and time, so that a pack's rows of one batch
    are written together).

    Raises:
        StoreError: A malformed row (:func:`validate_rows`); nothing is returned.

    Example:
        >>> prepare_rows([("b", 1.0, 0.5, 1.0, 2.0, 3.7, 25.0),
        ...               ("a", 2.0, 0.5, 1.0, 2.0, 3.7, 25.0),
        ...               ("b", 1.0, 0.5, 1.0, 9.0, 3.7, 25.0)])  # a redelivered "b" at 1 s
        [('a', 2000, 0.5, 1.0, 2.0, 3.7, 25.0), ('b', 1000, 0.5, 1.0, 2.0, 3.7, 25.0)]
    """
    validate_rows(rows)
    first: dict[tuple[str, int], KeyedRow] = {}
    for pack_id, t_s, soc, soh, current_a, voltage_v, temperature_c in rows:
        key = (pack_id, to_ms(t_s))
        if key not in first:
            first[key] = (
                pack_id,
                key[1],
                float(soc),
                float(soh),
                float(current_a),
                float(voltage_v),
                float(temperature_c),
            )
    return [first[k] for k in sorted(first)]


def columns_from_rows(
    rows: Sequence[Sequence[float | None]] | npt.NDArray[np.float64],
) -> dict[str, npt.NDArray[np.float64]]:
    """Query result rows ``(t_ms, soc, soh, current_a, voltage_v, temperature_c)`` → columns.

    ``t_ms`` becomes ``t_s = t_ms / 1000``; ``None`` (SQL NULL) becomes NaN.

    Example:
        >>> cols = columns_from_rows([(1500, None, 1.0, 2.0, 3.7, 25.0)])
        >>> float(cols["t_s"][0]), bool(np.isnan(cols["soc"][0]))
        (1.5, True)
    """
    data = np.asarray(rows, dtype=np.float64).reshape(-1, len(COLUMNS))
    out = {c: np.ascontiguousarray(data[:, i]) for i, c in enumerate(COLUMNS)}
    out["t_s"] /= 1000.0
    return out


def split_by_pack(
    keys: npt.NDArray[np.int64], columns: dict[str, npt.NDArray[np.float64]], names: dict[int, str]
) -> dict[str, dict[str, npt.NDArray[np.float64]]]:
    """Columns of rows sorted by pack key → one dict of columns per pack name.

    Example:
        >>> cols = columns_from_rows([(0, 0.5, 1.0, 1.0, 3.7, 25.0), (0, 0.4, 1.0, 1.0, 3.6, 25.0)])
        >>> out = split_by_pack(np.array([1, 2]), cols, {1: "a", 2: "b"})
        >>> sorted(out), out["b"]["voltage_v"].tolist()
        (['a', 'b'], [3.6])
    """
    out: dict[str, dict[str, npt.NDArray[np.float64]]] = {}
    if keys.size == 0:
        return out
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], keys.size]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        out[names[int(keys[a])]] = {c: np.ascontiguousarray(v[a:b]) for c, v in columns.items()}
    return out


class TelemetryStore(Protocol):
    """Per-pack time series of telemetry rows (see the module text for the contract)."""

    def schema_version(self) -> int:
        """The schema version of the open database."""
        ...

    def write_batch(self, rows: Sequence[Row]) -> int:
        """Write rows in one transaction; returns the number of rows newly stored.

        A row whose ``(pack_id, t_ms)`` is already stored (or appears earlier in the
        batch) is ignored: the first write wins.
        """
        ...

    def query(self, pack_id: str, t0_s: float, t1_s: float) -> dict[str, npt.NDArray[np.float64]]:
        """Rows of ``pack_id`` with ``t0_s <= t_s < t1_s``, by column, in time order."""
        ...

    def query_fleet(
        self, t0_s: float, t1_s: float, pack_ids: Sequence[str] | None = None
    ) -> dict[str, dict[str, npt.NDArray[np.float64]]]:
        """Rows with ``t0_s <= t_s < t1_s`` of many packs at once, by pack, then by column.

        Args:
            t0_s: Start of the window (included).
            t1_s: End of the window (excluded).
            pack_ids: The packs to read; ``None``: every pack. Given packs are all keys of
                the result (empty columns where a pack has no rows in the window); with
                ``None`` only packs with rows in the window are.
        """
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
