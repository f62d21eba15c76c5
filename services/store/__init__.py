"""Telemetry store: one interface, an embedded SQLite default and a PostgreSQL server option.

* :mod:`pulsebms.services.store.base`: the :class:`TelemetryStore` protocol, the shared
  row layout (:data:`COLUMNS`, :func:`validate_rows`) and the schema version;
* :mod:`pulsebms.services.store.sqlite`: :class:`SqliteTelemetryStore` (standard library,
  no server);
* :mod:`pulsebms.services.store.postgres`: :class:`PostgresTelemetryStore` (psycopg 3,
  ``COPY`` writes);
* :mod:`pulsebms.services.store.pg_server`: a throwaway PostgreSQL server for tests and
  benchmarks;
* :func:`open_store`: a store from a URL (``sqlite:///path``, ``postgresql://…``).
"""

from pulsebms.services.store.base import (
    COLUMNS,
    MAX_ABS_T_S,
    SCHEMA_VERSION,
    ForecastStore,
    Row,
    StoreError,
    TelemetryStore,
    validate_rows,
)
from pulsebms.services.store.postgres import PostgresTelemetryStore
from pulsebms.services.store.sqlite import SqliteTelemetryStore
from pulsebms.services.store.url import open_store

__all__ = [
    "COLUMNS",
    "MAX_ABS_T_S",
    "SCHEMA_VERSION",
    "ForecastStore",
    "PostgresTelemetryStore",
    "Row",
    "SqliteTelemetryStore",
    "StoreError",
    "TelemetryStore",
    "open_store",
    "validate_rows",
]
