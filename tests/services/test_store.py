"""Telemetry store conformance, run against every backend (SQLite file, real PostgreSQL).

Round trip, range queries, latest, pack list, schema version check, malformed batches.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from pulsebms.services.store import (
    COLUMNS,
    SCHEMA_VERSION,
    PostgresTelemetryStore,
    SqliteTelemetryStore,
    StoreError,
    TelemetryStore,
)

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


def test_postgres_uses_the_pack_time_index(postgres_conninfo: str) -> None:
    store = PostgresTelemetryStore(postgres_conninfo)
    store.write_batch(_rows(2000, 5))
    with psycopg.connect(postgres_conninfo, autocommit=True) as db:
        db.execute("ANALYZE telemetry")
        plan = "\n".join(
            r[0]
            for r in db.execute(
                "EXPLAIN SELECT t_s FROM telemetry WHERE pack_id = 'p1' AND t_s >= 10 AND t_s < 20"
                " ORDER BY t_s"
            ).fetchall()
        )
    assert "telemetry_pack_time" in plan, plan
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
