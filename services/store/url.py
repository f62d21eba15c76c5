"""Open a telemetry store from one URL string (what a CLI flag or a config holds)."""

from __future__ import annotations

from pulsebms.services.store.base import TelemetryStore

__all__ = ["open_store"]


def open_store(url: str) -> TelemetryStore:
    """The store a URL names.

    Args:
        url: ``sqlite:///relative/or/absolute/path.db`` or ``sqlite://:memory:`` (embedded),
            ``postgresql://user@host:port/db`` or ``postgres://…`` (server), or a bare file
            path (SQLite).

    Returns:
        An open store.

    Raises:
        ValueError: On an unknown scheme.
        StoreError: When the database cannot be opened.

    Example:
        >>> store = open_store("sqlite://:memory:")
        >>> store.schema_version()
        2
        >>> store.close()
    """
    if url.startswith(("postgresql://", "postgres://")):
        from pulsebms.services.store.postgres import PostgresTelemetryStore

        return PostgresTelemetryStore(url)
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if path.startswith("/"):  # sqlite:///rel.db → rel.db, sqlite:////abs.db → /abs.db
            path = path[1:]
        from pulsebms.services.store.sqlite import SqliteTelemetryStore

        return SqliteTelemetryStore(path or ":memory:")
    if "://" in url:
        raise ValueError(f"unknown store URL scheme in {url!r} (sqlite:// or postgresql://)")
    from pulsebms.services.store.sqlite import SqliteTelemetryStore

    return SqliteTelemetryStore(url)
