"""Fixtures of the service tests: one real PostgreSQL server per test session.

The server is the Debian package's own binaries run by
:class:`pulsebms.services.store.pg_server.TemporaryPostgres` (as user ``postgres`` when the
tests run as root, as on CI). A server that does not start fails the tests that need it,
with the reason; it is never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pulsebms.services.store.pg_server import PostgresNotAvailable, TemporaryPostgres


@pytest.fixture(scope="session")
def health_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A health model folder trained once per test run at test sizes (300 s telemetry).

    The real :func:`~pulsebms.services.health.train.train_models` (twin fleet, boosted trees,
    LSTM, both ONNX exports with their parity gates), at sizes whose figures mean little.
    Under xdist the workers of one run share it (the run's base folder, under a file lock),
    so it is trained once, not once per worker.
    """
    import fcntl
    import os

    from pulsebms.services.health.train import TrainConfig, train_models

    base = tmp_path_factory.getbasetemp()
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = base.parent if worker else base  # under xdist, pytest-N: this run's workers
    out = root / "health_models"
    with (root / "health_models.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (out / "health_models.json").exists():
                train_models(TrainConfig.tiny(dt_s=300.0), out)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return out


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[TemporaryPostgres]:
    """A PostgreSQL server for the whole session (started on first use)."""
    server = TemporaryPostgres()
    try:
        server.start()
    except PostgresNotAvailable as exc:
        pytest.fail(f"could not start the test PostgreSQL server: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def postgres_conninfo(postgres_server: TemporaryPostgres) -> Iterator[str]:
    """A connection URI whose tables land in a fresh, empty schema (dropped afterwards).

    A schema per test (``search_path`` in the URI) rather than a database: milliseconds
    instead of a ``CREATE DATABASE`` copy per test.
    """
    import uuid

    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_server.conninfo, autocommit=True) as db:
        db.execute(f'CREATE SCHEMA "{name}"')
    yield f"{postgres_server.conninfo}?options=-csearch_path%3D{name}"
    with psycopg.connect(postgres_server.conninfo, autocommit=True) as db:
        db.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
