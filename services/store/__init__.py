"""Telemetry store: one interface, an embedded SQLite default.

* :mod:`pulsebms.services.store.base`: the :class:`TelemetryStore` protocol, the column
  layout (:data:`COLUMNS`) and the schema version;
* :mod:`pulsebms.services.store.sqlite`: :class:`SqliteTelemetryStore` (standard library,
  no server).
"""

from pulsebms.services.store.base import COLUMNS, SCHEMA_VERSION, StoreError, TelemetryStore
from pulsebms.services.store.sqlite import SqliteTelemetryStore

__all__ = ["COLUMNS", "SCHEMA_VERSION", "SqliteTelemetryStore", "StoreError", "TelemetryStore"]
