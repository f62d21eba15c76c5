"""Telemetry store conformance, run against every backend (SQLite file, real PostgreSQL).

Round trip, range queries, fleet queries, latest, pack list, duplicates (first write wins),
millisecond time, schema version check and the migration of version 1 databases (made
with the version 1 DDL below), malformed batches.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulsebms.services.store import (
    COLUMNS,
    MAX_ABS_T_S,
    SCHEMA_VERSION,
    PostgresTelemetryStore,
    SqliteTelemetryStore,
    StoreError,
    TelemetryStore,
)
from pulsebms.services.store.base import ms_bound, to_ms

Opener = Callable[[], TelemetryStore]


def _rows(
    n: int, packs: int, t0: float = 0.0
) -> list[tuple[str, float, float, float, float, float, float]]:
    rng = np.random.default_rng(0)
    return [
        (f"p{k}", t0 + float(t), 0.5, 1.0, float(rng.normal()), 3.6 + 0.001 * t, 25.0)
        for t in range(n)
        for k in range(packs)
    ]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Opener, str]]:
    """``(name, open a store on one database, location)`` per backend."""
    if request.param == "sqlite":
        path = str(tmp_path / "t.db")
        yield "sqlite", lambda: SqliteTelemetryStore(path), path
    else:
        conninfo: str = request.getfixturevalue("postgres_conninfo")
        yield "postgres", lambda: PostgresTelemetryStore(conninfo), conninfo


def test_round_trip_and_range(backend: tuple[str, Opener, str]) -> None:
    _, open_store, _ = backend
    store = open_store()
    rows = _rows(100, 3)
    assert store.write_batch(rows) == 300
    got = store.query("p1", 10.0, 20.0)
    assert set(got) == set(COLUMNS)
    np.testing.assert_array_equal(got["t_s"], np.arange(10.0, 20.0))
    expected = [r[4] for r in rows if r[0] == "p1" and 10 <= r[1] < 20]
    np.testing.assert_array_equal(got["current_a"], expected)  # exact: float64 end to end
    assert all(v.dtype == np.float64 and v.flags.c_contiguous for v in got.values())
    assert store.query("nobody", 0.0, 1e9)["t_s"].shape == (0,)
    assert store.query("p1", 50.0, 50.0)["t_s"].shape == (0,)  # half-open range
    latest = store.latest("p2")
    assert latest is not None
    assert latest["t_s"] == 99.0
    assert latest["voltage_v"] == pytest.approx(3.6 + 0.099)
    assert store.latest("nobody") is None
    assert store.pack_ids() == ["p0", "p1", "p2"]
    assert store.write_batch([]) == 0
    store.close()


def test_rows_out_of_order_come_back_in_time_order(backend: tuple[str, Opener, str]) -> None:
    _, open_store, _ = backend
    store = open_store()
    store.write_batch(_rows(10, 1, t0=100.0))
    store.write_batch(_rows(10, 1, t0=0.0))  # a late batch of older rows
    got = store.query("p0", 0.0, 1e9)
    np.testing.assert_array_equal(got["t_s"], np.r_[np.arange(10.0), np.arange(100.0, 110.0)])
    latest = store.latest("p0")
    assert latest is not None
    assert latest["t_s"] == 109.0
    store.close()


def test_reopen_keeps_data_and_checks_version(backend: tuple[str, Opener, str]) -> None:
    name, open_store, where = backend
    store = open_store()
    store.write_batch(_rows(5, 1))
    store.close()
    store = open_store()
    assert store.schema_version() == SCHEMA_VERSION
    assert store.query("p0", 0.0, 10.0)["t_s"].size == 5
    store.close()
    if name == "sqlite":
        with sqlite3.connect(where) as db:
            db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    else:
        with psycopg.connect(where, autocommit=True) as db:
            db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="schema version"):
        open_store()


@pytest.mark.parametrize(
    "bad",
    [
        ("p0", 5.0, 0.5, 1.0, 0.0, float("nan"), 25.0),
        ("p0", 5.0, 0.5, 1.0, float("inf"), 3.7, 25.0),
        ("p0", 5.0, float("inf"), 1.0, 0.0, 3.7, 25.0),
        ("p0", float("inf"), 0.5, 1.0, 0.0, 3.7, 25.0),
        ("p0", 5.0, 0.5, 1.0, 0.0, 3.7),
        ("p0", 1e13, 0.5, 1.0, 0.0, 3.7, 25.0),  # beyond MAX_ABS_T_S
        ("", 5.0, 0.5, 1.0, 0.0, 3.7, 25.0),
        (7, 5.0, 0.5, 1.0, 0.0, 3.7, 25.0),
        ("p0", 5.0, "0.5", 1.0, 0.0, 3.7, 25.0),
    ],
)
def test_malformed_batch_writes_nothing(backend: tuple[str, Opener, str], bad: tuple) -> None:  # type: ignore[type-arg]
    _, open_store, _ = backend
    store = open_store()
    with pytest.raises(StoreError, match="malformed"):
        store.write_batch([*_rows(3, 1), bad])  # type: ignore[list-item]
    assert store.query("p0", 0.0, 10.0)["t_s"].size == 0
    store.close()


def test_postgres_unreachable_is_a_store_error() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreError, match="cannot connect"):
        PostgresTelemetryStore(f"postgresql://postgres@127.0.0.1:{port}/x", connect_timeout_s=2)


def test_postgres_queries_use_the_primary_key(postgres_conninfo: str) -> None:
    store = PostgresTelemetryStore(postgres_conninfo)
    store.write_batch(_rows(2000, 5))
    with psycopg.connect(postgres_conninfo, autocommit=True) as db:
        db.execute("ANALYZE telemetry")
        for where in ("pack_key = 2", "pack_key = ANY('{1,3}'::int[])"):
            plan = "\n".join(
                r[0]
                for r in db.execute(
                    f"EXPLAIN SELECT t_ms FROM telemetry WHERE {where}"
                    " AND t_ms >= 10000 AND t_ms < 20000 ORDER BY pack_key, t_ms"
                ).fetchall()
            )
            assert "telemetry_pkey" in plan, plan
            assert "Seq Scan" not in plan, plan
    store.close()


def test_postgres_keeps_a_packs_batch_on_one_page(postgres_conninfo: str) -> None:
    """Batches are written sorted by pack, so a pack's batch shares a heap page.

    One pack's 10 minutes read ≈ 20 pages, not the ≈ 130 that rows in arrival order (20
    packs a second, ≈ 100 rows a page) take.
    """
    store = PostgresTelemetryStore(postgres_conninfo)
    for minute in range(10):  # the twin service's batches: a minute of the whole fleet
        store.write_batch(_rows(60, 20, t0=60.0 * minute))
    with psycopg.connect(postgres_conninfo, autocommit=True) as db:
        db.execute("ANALYZE telemetry")
        (key,) = db.execute("SELECT pack_key FROM packs WHERE pack_id = 'p7'").fetchone()
        db.execute("SET enable_seqscan = off")  # the window is all of the pack's rows:
        db.execute("SET enable_bitmapscan = off")  # count the pages of the index scan
        plan = "\n".join(
            r[0]
            for r in db.execute(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM telemetry"
                f" WHERE pack_key = {int(key)} AND t_ms >= 0 AND t_ms < 600000 ORDER BY t_ms"
            ).fetchall()
        )
    assert "Index Scan using telemetry_pkey" in plan, plan
    assert "rows=600" in plan, plan
    buffers = [line for line in plan.splitlines() if "Buffers:" in line]
    pages = sum(int(n) for n in re.findall(r"(?:hit|read)=(\d+)", buffers[0]))
    assert pages <= 40, plan  # ≈ 15 heap pages + ≈ 5 of the index (one-second batches: 131)
    store.close()


def test_sqlite_rows_live_in_the_primary_key(tmp_path: Path) -> None:
    """WITHOUT ROWID: a pack's range is a search of the table's own B-tree (no lookups)."""
    store = SqliteTelemetryStore(tmp_path / "t.db")
    store.write_batch(_rows(200, 5))
    with sqlite3.connect(tmp_path / "t.db") as db:
        for where in ("pack_key = 2", "pack_key IN (1, 3)"):
            plan = " ".join(
                str(r[-1])
                for r in db.execute(
                    f"EXPLAIN QUERY PLAN SELECT * FROM telemetry WHERE {where}"
                    " AND t_ms >= 10000 AND t_ms < 20000 ORDER BY pack_key, t_ms"
                )
            )
            assert "USING PRIMARY KEY (pack_key=? AND t_ms>? AND t_ms<?)" in plan, plan
            assert "TEMP B-TREE" not in plan, plan
    store.close()


def test_forecasts_round_trip(backend: tuple[str, Opener, str]) -> None:
    _, open_store, _ = backend
    store = open_store()
    assert store.latest_forecast("s1") is None  # type: ignore[attr-defined]
    store.write_forecast(10.0, "s1", '{"seq": 0}')  # type: ignore[attr-defined]
    store.write_forecast(20.0, "s1", '{"seq": 1}')  # type: ignore[attr-defined]
    store.write_forecast(30.0, "s2", '{"seq": 9}')  # type: ignore[attr-defined]
    t_s, payload = store.latest_forecast("s1")  # type: ignore[attr-defined]
    assert t_s == 20.0
    assert json.loads(payload) == {"seq": 1}
    store.close()


def test_unknown_soc_and_soh_round_trip_as_nan(backend: tuple[str, Opener, str]) -> None:
    _, open_store, _ = backend
    store = open_store()
    store.write_batch([("p0", 1.0, float("nan"), float("nan"), 2.0, 3.7, 25.0)])
    got = store.query("p0", 0.0, 2.0)
    assert np.isnan(got["soc"][0])
    assert np.isnan(got["soh"][0])
    assert got["voltage_v"][0] == 3.7
    store.close()


def test_postgres_reconnects_after_a_lost_connection(postgres_conninfo: str) -> None:
    store = PostgresTelemetryStore(postgres_conninfo)
    store.write_batch(_rows(3, 1))
    with psycopg.connect(postgres_conninfo, autocommit=True) as admin:  # kill its session
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    assert store.write_batch(_rows(3, 1, t0=10.0)) == 3  # reconnected once, then written
    assert store.query("p0", 0.0, 100.0)["t_s"].size == 6
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.query("p0", 0.0, 1.0)


def test_sqlite_errors_are_store_errors(tmp_path: Path) -> None:
    store = SqliteTelemetryStore(tmp_path / "t.db")
    store.close()
    with pytest.raises(StoreError, match="SQLite"):
        store.write_batch(_rows(1, 1))
    with pytest.raises(StoreError, match="SQLite"):
        store.query("p0", 0.0, 1.0)


def test_postgres_server_failures_are_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No binaries, or an initdb that fails: PostgresNotAvailable saying why (never a skip)."""
    from pulsebms.services.store import pg_server

    monkeypatch.setattr(pg_server, "_BIN_ROOT", tmp_path / "none")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("PULSEBMS_PG_BINDIR", raising=False)
    with pytest.raises(pg_server.PostgresNotAvailable, match="install the Debian package"):
        pg_server.find_postgres_bindir()
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("initdb", "postgres"):
        (fake / name).write_text("#!/bin/sh\necho boom >&2\nexit 3\n")
        (fake / name).chmod(0o755)
    fake.chmod(0o755)
    tmp_path.chmod(0o755)
    monkeypatch.setenv("PULSEBMS_PG_BINDIR", str(fake))
    with pytest.raises(pg_server.PostgresNotAvailable, match="initdb"):
        pg_server.TemporaryPostgres().start()


# ---------------------------------------------------------------------- schema version 2


def test_duplicates_first_write_wins(backend: tuple[str, Opener, str]) -> None:
    """QoS-1 redeliveries and replayed batches: one row per (pack, millisecond), the first."""
    _, open_store, _ = backend
    store = open_store()
    first = ("p0", 5.0, 0.5, 0.9, 1.0, 3.7, 25.0)
    again = ("p0", 5.0, 0.6, 0.9, 9.0, 3.9, 26.0)  # same pack and time, other values
    same_ms = ("p0", 5.0004, 0.7, 0.9, 7.0, 3.8, 27.0)  # rounds to the same millisecond
    assert store.write_batch([first, ("p1", 5.0, 0.5, 0.9, 1.0, 3.7, 25.0), again]) == 2
    assert store.write_batch([again, same_ms]) == 0
    assert store.write_batch([again, ("p0", 6.0, 0.5, 0.9, 1.0, 3.7, 25.0)]) == 1
    got = store.query("p0", 0.0, 10.0)
    np.testing.assert_array_equal(got["t_s"], [5.0, 6.0])
    assert got["current_a"][0] == 1.0  # the first write's values
    assert got["voltage_v"][0] == 3.7
    store.close()
    reopened = open_store()  # another connection sees the same (the rule is in the schema)
    assert reopened.write_batch([again]) == 0
    assert reopened.query("p0", 0.0, 10.0)["current_a"].tolist() == [1.0, 1.0]
    reopened.close()


def test_time_is_kept_in_milliseconds(backend: tuple[str, Opener, str]) -> None:
    _, open_store, _ = backend
    store = open_store()
    t_in = [1_700_000_000.1234, 1_700_000_000.9996, 1_700_000_002.0005]
    store.write_batch([("p0", t, 0.5, 1.0, 1.0, 3.7, 25.0) for t in t_in])
    got = store.query("p0", 1.6e9, 1.8e9)["t_s"]
    # stored as round(t * 1000) (half to even), read back as t_ms / 1000
    np.testing.assert_array_equal(got, [1_700_000_000.123, 1_700_000_001.0, 1_700_000_002.0])
    assert np.all(np.abs(got - t_in) <= 0.0005)
    # bounds compare with the times as read back: a read time is included, just after it not
    assert store.query("p0", float(got[1]), float(got[2]))["t_s"].tolist() == [got[1]]
    assert store.query("p0", float(got[1]) + 1e-6, 1.8e9)["t_s"].tolist() == [got[2]]
    latest = store.latest("p0")
    assert latest is not None
    assert latest["t_s"] == got[2]
    for t0, t1 in ((float("nan"), 1e10), (0.0, float("nan")), (1e10, 0.0)):
        assert store.query("p0", t0, t1)["t_s"].size == 0
    assert store.query("p0", -math.inf, math.inf)["t_s"].size == 3
    store.close()


def test_query_fleet(backend: tuple[str, Opener, str]) -> None:
    _, open_store, _ = backend
    store = open_store()
    store.write_batch(_rows(30, 4))  # p0..p3 at t = 0..29
    store.write_batch([("late", 100.0, float("nan"), 1.0, 2.0, 3.7, 25.0)])
    got = store.query_fleet(10.0, 15.0)
    assert sorted(got) == ["p0", "p1", "p2", "p3"]  # "late" has no rows in the window
    for pack in got:
        single = store.query(pack, 10.0, 15.0)
        assert set(got[pack]) == set(COLUMNS)
        for c in COLUMNS:
            np.testing.assert_array_equal(got[pack][c], single[c])
    some = store.query_fleet(0.0, 200.0, ["late", "nobody", "p2"])
    assert list(some) == ["late", "nobody", "p2"]
    assert some["nobody"]["t_s"].size == 0
    assert some["late"]["t_s"].tolist() == [100.0]
    assert np.isnan(some["late"]["soc"][0])
    assert some["p2"]["t_s"].size == 30
    assert store.query_fleet(50.0, 60.0) == {}
    assert store.query_fleet(float("nan"), 60.0, ["p0"])["p0"]["t_s"].size == 0
    store.close()


def test_two_stores_share_pack_keys(backend: tuple[str, Opener, str]) -> None:
    """Pack keys are cached per store; a pack another store added is found, never doubled."""
    _, open_store, _ = backend
    a, b = open_store(), open_store()
    assert b.query("new", 0.0, 10.0)["t_s"].size == 0  # b looks it up before it exists
    a.write_batch(_rows(3, 1))  # p0 from a …
    assert b.write_batch(_rows(3, 1, t0=3.0)) == 3  # … and from b, whose cache lacks it
    assert b.write_batch([("new", 1.0, 0.5, 1.0, 1.0, 3.7, 25.0)]) == 1
    assert a.query("new", 0.0, 10.0)["t_s"].tolist() == [1.0]
    assert a.pack_ids() == b.pack_ids() == ["new", "p0"]
    assert a.query("p0", 0.0, 10.0)["t_s"].size == 6
    a.close()
    b.close()


# The version 1 layout, as PulseBMS 0.x wrote it (services/store at commit 13fdc71).
_V1_SQLITE = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "INSERT INTO schema_version VALUES (1)",
    "CREATE TABLE telemetry (pack_id TEXT NOT NULL, t_s REAL NOT NULL, soc REAL, soh REAL,"
    " current_a REAL NOT NULL, voltage_v REAL NOT NULL, temperature_c REAL NOT NULL)",
    "CREATE INDEX telemetry_pack_time ON telemetry (pack_id, t_s)",
    "CREATE TABLE forecasts (t_s REAL NOT NULL, site TEXT NOT NULL, payload TEXT NOT NULL)",
    "CREATE INDEX forecasts_site_time ON forecasts (site, t_s)",
)
_V1_POSTGRES = (
    "CREATE TABLE schema_version (version integer NOT NULL)",
    "INSERT INTO schema_version VALUES (1)",
    "CREATE TABLE telemetry (pack_id text NOT NULL, t_s double precision NOT NULL,"
    " soc double precision NOT NULL, soh double precision NOT NULL,"
    " current_a double precision NOT NULL, voltage_v double precision NOT NULL,"
    " temperature_c double precision NOT NULL)",
    "CREATE INDEX telemetry_pack_time ON telemetry (pack_id, t_s)",
    "CREATE TABLE forecasts (t_s double precision NOT NULL, site text NOT NULL,"
    " payload jsonb NOT NULL)",
    "CREATE INDEX forecasts_site_time ON forecasts (site, t_s)",
)

_V1_ROWS = [  # as a version 1 store held them: duplicates, sub-millisecond times, NaN SoC
    ("b", 2.0, 0.5, 0.9, 1.0, 3.70, 25.0),
    ("a", 1.0, 0.5, 0.9, 1.0, 3.60, 25.0),
    ("b", 1.0, 0.5, 0.9, 1.0, 3.65, 25.0),  # written late, older time
    ("b", 2.0, 0.5, 0.9, 9.0, 3.99, 25.0),  # a redelivery with other values: dropped
    ("a", 3.0004, float("nan"), 0.9, 1.0, 3.61, 25.0),
    ("a", 2.9996, 0.5, 0.9, 5.0, 3.62, 25.0),  # the same millisecond, written later: dropped
]


def _make_v1(name: str, where: str, statements: tuple[str, ...] = ()) -> None:
    """A version 1 database holding _V1_ROWS and one forecast."""
    if name == "sqlite":
        with sqlite3.connect(where) as db:
            for statement in statements or _V1_SQLITE:
                db.execute(statement)
            db.executemany("INSERT INTO telemetry VALUES (?, ?, ?, ?, ?, ?, ?)", _V1_ROWS)
            db.execute("INSERT INTO forecasts VALUES (5.0, 's1', '{\"seq\": 3}')")
        db.close()
    else:
        with psycopg.connect(where, autocommit=True) as db:
            for statement in statements or _V1_POSTGRES:
                db.execute(statement)
            with db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO telemetry VALUES (%s, %s, %s, %s, %s, %s, %s)", _V1_ROWS
                )
            db.execute("INSERT INTO forecasts VALUES (5.0, 's1', '{\"seq\": 3}')")


def _tables(name: str, where: str) -> set[str]:
    if name == "sqlite":
        with sqlite3.connect(where) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
            return {str(r[0]) for r in rows}
    with psycopg.connect(where, autocommit=True) as db:
        rows = db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        return {str(r[0]) for r in rows}


def test_version_1_database_is_migrated_in_place(backend: tuple[str, Opener, str]) -> None:
    name, open_store, where = backend
    _make_v1(name, where)
    store = open_store()
    assert store.schema_version() == SCHEMA_VERSION == 2
    assert store.pack_ids() == ["a", "b"]
    b = store.query("b", 0.0, 10.0)
    assert b["t_s"].tolist() == [1.0, 2.0]
    assert b["voltage_v"].tolist() == [3.65, 3.70]  # the first write of (b, 2 s) kept
    a = store.query("a", 0.0, 10.0)
    assert a["t_s"].tolist() == [1.0, 3.0]
    assert np.isnan(a["soc"][1])  # the row written first at 3.000 s, SoC unknown
    assert a["voltage_v"].tolist() == [3.60, 3.61]
    assert store.latest_forecast("s1") == (5.0, '{"seq": 3}')  # type: ignore[attr-defined]
    # the migrated store works as a new one: first write wins, new packs get keys
    assert store.write_batch([("b", 2.0, 0.1, 0.1, 0.1, 0.1, 0.1), ("c", 1.0, *[0.5] * 5)]) == 1
    assert store.query_fleet(0.0, 10.0, ["c"])["c"]["t_s"].tolist() == [1.0]
    store.close()
    assert {"telemetry", "packs", "telemetry_rows", "forecasts", "schema_version"} <= _tables(
        name, where
    )
    again = open_store()  # already version 2: opened as is
    assert again.query("b", 0.0, 10.0)["t_s"].size == 2
    again.close()


def test_failed_migration_leaves_version_1_as_it_was(backend: tuple[str, Opener, str]) -> None:
    """A damaged version 1 database (a column missing): refused, and left untouched."""
    name, open_store, where = backend
    damaged = tuple(
        s.replace(" soh REAL,", "").replace(" soh double precision NOT NULL,", "")
        for s in (_V1_SQLITE if name == "sqlite" else _V1_POSTGRES)
    )
    if name == "sqlite":
        with sqlite3.connect(where) as db:
            for statement in damaged:
                db.execute(statement)
            db.execute("INSERT INTO telemetry VALUES ('a', 1.0, 0.5, 1.0, 3.6, 25.0)")
        db.close()
    else:
        with psycopg.connect(where, autocommit=True) as db:
            for statement in damaged:
                db.execute(statement)
            db.execute("INSERT INTO telemetry VALUES ('a', 1.0, 0.5, 1.0, 3.6, 25.0)")
    with pytest.raises(StoreError, match="soh"):
        open_store()
    assert "packs" not in _tables(name, where)
    if name == "sqlite":
        with sqlite3.connect(where) as db:
            assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
            assert db.execute("SELECT count(*) FROM telemetry").fetchone() == (1,)
        db.close()
    else:
        with psycopg.connect(where, autocommit=True) as db:
            assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
            assert db.execute("SELECT count(*) FROM telemetry").fetchone() == (1,)


@pytest.mark.parametrize("version", [0, SCHEMA_VERSION + 1])
def test_unknown_or_newer_version_is_refused(
    backend: tuple[str, Opener, str], version: int
) -> None:
    name, open_store, where = backend
    store = open_store()
    store.close()
    if name == "sqlite":
        with sqlite3.connect(where) as db:
            db.execute("UPDATE schema_version SET version = ?", (version,))
        db.close()
    else:
        with psycopg.connect(where, autocommit=True) as db:
            db.execute("UPDATE schema_version SET version = %s", (version,))
    word = "newer than" if version > SCHEMA_VERSION else "unknown to"
    with pytest.raises(StoreError, match=f"schema version {version} is {word} this store"):
        open_store()


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    path.write_bytes(b"not a database, just some bytes" * 100)
    with pytest.raises(StoreError, match="cannot open SQLite database"):
        SqliteTelemetryStore(path)


@settings(max_examples=300, deadline=None)
@given(
    t=st.floats(min_value=-MAX_ABS_T_S, max_value=MAX_ABS_T_S),
    m=st.integers(min_value=-(2**53), max_value=2**53),
)
def test_ms_bound_matches_the_read_back_times(t: float, m: int) -> None:
    """Property: ms_bound(t) is the first stored time at or after t, as a query compares.

    A time read back from the store is its own bound (included, never skipped).
    """
    bound = ms_bound(t)
    assert bound / 1000.0 >= t
    assert (bound - 1) / 1000.0 < t
    assert ms_bound(m / 1000.0) <= m  # the row at m is in [m / 1000, …)
    assert (ms_bound(m / 1000.0) - 1) / 1000.0 < m / 1000.0
    if abs(t) < 1e12:  # well inside: the rounding is within half a millisecond
        assert abs(to_ms(t) / 1000.0 - t) <= 0.0005 + 1e-9 * abs(t)
