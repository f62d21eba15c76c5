"""Telemetry store: round trip, range queries, latest, schema version check, bad rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from pulsebms.services.store import COLUMNS, SCHEMA_VERSION, SqliteTelemetryStore, StoreError


def _rows(n: int, packs: int) -> list[tuple[str, float, float, float, float, float, float]]:
    rng = np.random.default_rng(0)
    return [
        (f"p{k}", float(t), 0.5, 1.0, float(rng.normal()), 3.6 + 0.001 * t, 25.0)
        for t in range(n)
        for k in range(packs)
    ]


def test_round_trip_and_range(tmp_path: Path) -> None:
    store = SqliteTelemetryStore(tmp_path / "t.db")
    rows = _rows(100, 3)
    assert store.write_batch(rows) == 300
    got = store.query("p1", 10.0, 20.0)
    assert set(got) == set(COLUMNS)
    np.testing.assert_array_equal(got["t_s"], np.arange(10.0, 20.0))
    expected = [r[4] for r in rows if r[0] == "p1" and 10 <= r[1] < 20]
    np.testing.assert_array_equal(got["current_a"], expected)
    assert store.query("nobody", 0.0, 1e9)["t_s"].shape == (0,)
    latest = store.latest("p2")
    assert latest is not None
    assert latest["t_s"] == 99.0
    assert store.latest("nobody") is None
    store.close()


def test_reopen_keeps_data_and_checks_version(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = SqliteTelemetryStore(path)
    store.write_batch(_rows(5, 1))
    store.close()
    store = SqliteTelemetryStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    assert store.query("p0", 0.0, 10.0)["t_s"].size == 5
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="schema version"):
        SqliteTelemetryStore(path)


def test_malformed_batch_writes_nothing(tmp_path: Path) -> None:
    store = SqliteTelemetryStore(tmp_path / "t.db")
    bad = [*_rows(3, 1), ("p0", 5.0, float("nan"), 1.0, 0.0, 3.7, 25.0)]
    with pytest.raises(StoreError, match="malformed"):
        store.write_batch(bad)
    assert store.query("p0", 0.0, 10.0)["t_s"].size == 0
    store.close()
