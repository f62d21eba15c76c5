"""``pulsebms-bench store``: telemetry store write rate, size and query latency, cold and warm.

Both backends side by side on the same rows: the embedded SQLite store (a file in a
temporary folder) and PostgreSQL (a throwaway server, :class:`TemporaryPostgres`, with
PostgreSQL's durability settings on). Rows are a fleet at 1 Hz with epoch times and
non-round values (nothing that a store could keep in fewer bytes than real telemetry),
written in batches of one minute of the whole fleet (the twin service's batching); then
one batch is written again (a redelivery: it must add no row).

Queries, each kind on ``--queries`` distinct targets (pack and time window, never
overlapping, so that no target warms another's pages):

* ``pack_1min``, ``pack_1h``, ``pack_1day``: one pack over one window;
* ``latest``: the newest row of one pack;
* ``fleet_1min``: every pack over one minute (:meth:`TelemetryStore.query_fleet`).

**Cold** is the first run of a kind's targets after the store's caches are emptied: the
SQLite store is closed (its page cache goes), the PostgreSQL server restarted (its shared
buffers go), and the database files' pages evicted from the OS page cache with
``posix_fadvise(DONTNEED)`` (no root needed); with ``--drop-caches`` (root only) the whole
OS page cache is dropped instead (``/proc/sys/vm/drop_caches``: it slows every other
process on the machine for a while). Only the first query of a kind finds the B-tree's
inner pages cold; later ones find them cached, as a running service would. **Warm** is the
same targets again right after. Per kind and temperature: p50, p95, p99 [ms].

Prints per backend the write rate [rows/s], size on disk [B/row] and the query table, the
machine's load average at start and end, and a last line ``RESULT {json}``::

    pulsebms-bench store            # 20 packs × 6 h at 1 Hz (432 k rows)
    pulsebms-bench store --quick    # 5 packs × 1 h (18 k rows): CI smoke
    pulsebms-bench store --full     # a week of 100 packs at 1 Hz (60.5 M rows, long)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pulsebms.services.store import PostgresTelemetryStore, Row, SqliteTelemetryStore
from pulsebms.services.store.pg_server import TemporaryPostgres

__all__ = [
    "KINDS",
    "T0_S",
    "Backend",
    "batches",
    "bench_backend",
    "evict_page_cache",
    "main",
    "query_targets",
]

T0_S = 1_700_000_000.0
"""Time of the first row [s since epoch] (2023-11-14): epoch times, as real telemetry has."""

KINDS: dict[str, int] = {
    "pack_1min": 60,
    "pack_1h": 3600,
    "pack_1day": 86400,
    "latest": 0,
    "fleet_1min": 60,
}
"""Query kinds and their window [s] (clamped to the data's duration)."""


def pack_name(k: int) -> str:
    """Name of pack ``k`` in the synthetic fleet."""
    return f"pack-{k:03d}"


def batches(packs: int, seconds: int, batch_s: int = 60, t0_s: float = T0_S) -> Iterator[list[Row]]:
    """Synthetic 1 Hz telemetry of ``packs`` packs, one list of rows per ``batch_s``.

    Rows of one second of the fleet come together (as from the MQTT telemetry). Every value
    has a fractional part (a store that keeps integral floats in fewer bytes, as SQLite
    does, is not flattered).
    """
    names = [pack_name(k) for k in range(packs)]
    rng = np.random.default_rng(0)
    phase = np.tile(np.arange(packs, dtype=np.float64), batch_s)
    soh0 = np.tile(0.97 - 0.05 * np.arange(packs) / max(1, packs), batch_s)
    for start in range(0, seconds, batch_s):
        t = np.arange(start, min(start + batch_s, seconds), dtype=np.float64)
        n = t.size * packs
        tt = np.repeat(t, packs)
        soc = 0.5 + 0.3 * np.sin(tt / 3600.0 + phase[:n])
        soh = soh0[:n] - 1e-9 * tt
        current = rng.normal(0.0, 20.0, n)
        voltage = 48.0 + 4.0 * soc - 0.01 * current
        temperature = 25.0 + 0.001 * phase[:n] + rng.normal(0.0, 0.1, n)
        cols = zip(
            names * t.size,
            (t0_s + tt).tolist(),
            soc.tolist(),
            soh.tolist(),
            current.tolist(),
            voltage.tolist(),
            temperature.tolist(),
            strict=True,
        )
        yield list(cols)


@dataclass
class Backend:
    """A store under test and how to make its caches cold.

    Attributes:
        name: Label in the output.
        open: Opens a store on the benchmark's database.
        files: The database's files on disk (what the OS page cache is emptied of).
        restart: Empties the backend's own cache outside the store object (a server
            restart); ``None`` when closing the store is enough.
        size: Bytes on disk of the telemetry, for an open store.
    """

    name: str
    open: Callable[[], Any]
    files: Callable[[], list[Path]]
    restart: Callable[[], None] | None
    size: Callable[[Any], int]


def evict_page_cache(files: list[Path], *, drop_caches: bool = False) -> int:
    """Empty the OS page cache of ``files`` (or, with ``drop_caches``, of the whole machine).

    Each file is ``fsync``-ed (dirty pages cannot be evicted) and its pages are dropped with
    ``posix_fadvise(POSIX_FADV_DONTNEED)``. Returns the number of files evicted.

    Raises:
        PermissionError: ``drop_caches`` without root.
    """
    count = 0
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # gone meanwhile (a WAL segment recycled)
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            count += 1
        finally:
            os.close(fd)
    if drop_caches:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:  # root only
            f.write("1\n")
    return count


def query_targets(
    kind: str, packs: int, seconds: int, n: int, rng: np.random.Generator
) -> list[tuple[str, float, float]]:
    """Up to ``n`` distinct, non-overlapping ``(pack, t0_s, t1_s)`` targets of one kind.

    Windows start on multiples of their span, so two targets of one pack never share a row;
    ``latest`` targets are distinct packs; ``fleet_1min`` targets distinct minutes
    (``pack`` is empty).
    """
    if kind == "latest":
        chosen = rng.permutation(packs)[:n]
        return [(pack_name(int(k)), 0.0, 0.0) for k in chosen]
    span = min(KINDS[kind], seconds)
    slots = seconds // span
    if kind.startswith("fleet"):
        picks = rng.permutation(slots)[:n]
        return [("", T0_S + s * span, T0_S + (s + 1) * span) for s in picks.tolist()]
    picks = rng.permutation(packs * slots)[:n]
    return [
        (pack_name(int(p) % packs), T0_S + (int(p) // packs) * span, T0_S + (p // packs + 1) * span)
        for p in picks.tolist()
    ]


def _run(store: Any, kind: str, target: tuple[str, float, float]) -> int:
    """Run one query; returns the rows it read."""
    pack, t0, t1 = target
    if kind == "latest":
        return 0 if store.latest(pack) is None else 1
    if kind.startswith("fleet"):
        fleet = getattr(store, "query_fleet", None)
        if fleet is None:  # a store without it (an older version): one query per pack
            return sum(store.query(p, t0, t1)["t_s"].size for p in store.pack_ids())
        return sum(v["t_s"].size for v in fleet(t0, t1).values())
    return int(store.query(pack, t0, t1)["t_s"].size)


def _expected(kind: str, packs: int, seconds: int) -> int:
    if kind == "latest":
        return 1
    span = min(KINDS[kind], seconds)
    return span * (packs if kind.startswith("fleet") else 1)


def _percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "n": float(ms.size),
    }


def bench_backend(
    backend: Backend,
    packs: int,
    seconds: int,
    n_queries: int,
    *,
    drop_caches: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the rows, then time each query kind cold and warm (see the module text).

    Raises:
        RuntimeError: Rows lost, or a query returned another number of rows than the data
            holds.
    """
    store = backend.open()
    written = 0
    write_s = 0.0
    last: list[Row] = []
    for rows in batches(packs, seconds):
        start = time.perf_counter()
        written += store.write_batch(rows)
        write_s += time.perf_counter() - start
        last = rows
    start = time.perf_counter()
    again = store.write_batch(last)
    again_s = time.perf_counter() - start
    if written != packs * seconds:
        raise RuntimeError(f"{written} rows stored of {packs * seconds}")
    size = backend.size(store)
    out: dict[str, Any] = {
        "rows": float(written),
        "write_rows_per_s": written / write_s,
        "repeat_batch_rows_per_s": len(last) / again_s,
        "repeat_batch_added": float(again),
        "bytes_per_row": size / written,
        "size_mb": size / 1e6,
        "queries": {},
    }
    log(
        f"{backend.name:<9} write {out['write_rows_per_s']:>9,.0f} rows/s"
        f" (a repeated batch {out['repeat_batch_rows_per_s']:,.0f} rows/s, {again} added)"
        f"  {out['bytes_per_row']:.1f} B/row ({out['size_mb']:,.1f} MB)"
    )
    cold, warm = "cold p50 / p95 / p99 [ms]", "warm p50 / p95 / p99"
    log(f"  {'query':<11} {'rows':>6}  {cold:>30}  {warm:>28}")
    rng = np.random.default_rng(1)
    for kind in KINDS:
        targets = query_targets(kind, packs, seconds, n_queries, rng)
        expected = _expected(kind, packs, seconds)
        store.close()
        if backend.restart is not None:
            backend.restart()
        evict_page_cache(backend.files(), drop_caches=drop_caches)
        store = backend.open()
        figures: dict[str, Any] = {"span_s": float(min(KINDS[kind], seconds)), "rows": expected}
        for temperature in ("cold", "warm"):
            latencies = []
            for target in targets:
                start = time.perf_counter()
                got = _run(store, kind, target)
                latencies.append(time.perf_counter() - start)
                if got != expected:
                    raise RuntimeError(f"{kind} {target} read {got} rows, expected {expected}")
            figures[temperature] = _percentiles(latencies)
        out["queries"][kind] = figures
        c, w = figures["cold"], figures["warm"]
        log(
            f"  {kind:<11} {expected:>6}  "
            f"{c['p50_ms']:>9.2f} {c['p95_ms']:>9.2f} {c['p99_ms']:>9.2f}  "
            f"{w['p50_ms']:>8.2f} {w['p95_ms']:>8.2f} {w['p99_ms']:>8.2f}   (n={int(c['n'])})"
        )
    store.close()
    return out


def _sqlite_backend(folder: Path) -> Backend:
    path = folder / "telemetry.db"
    return Backend(
        name="sqlite",
        open=lambda: SqliteTelemetryStore(path),
        files=lambda: [p for p in folder.iterdir() if p.name.startswith(path.name)],
        restart=None,
        size=lambda store: int(store.size_bytes()),
    )


def _postgres_backend(pg: TemporaryPostgres) -> Backend:
    def files() -> list[Path]:
        """Every file of the store's tables and indexes (segments and forks too).

        ``1234``, ``1234.1``, ``1234_fsm``…; the catalogs stay cached.
        """
        import psycopg

        if pg.folder is None:
            return []
        with psycopg.connect(pg.conninfo, autocommit=True) as db:
            rows = db.execute(
                "SELECT pg_relation_filepath(oid) FROM pg_class"
                " WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'i')"
            ).fetchall()
        data = pg.folder / "data"
        out: list[Path] = []
        for (rel,) in rows:
            if rel:
                first = data / rel
                out += [p for p in first.parent.glob(first.name + "*") if p.is_file()]
        return out

    return Backend(
        name="postgres",
        open=lambda: PostgresTelemetryStore(pg.conninfo),
        files=files,
        restart=pg.restart,
        size=lambda store: int(store.size_bytes()),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the store benchmark on both backends."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="5 packs × 1 h (CI smoke)")
    size.add_argument("--full", action="store_true", help="a week of 100 packs at 1 Hz")
    parser.add_argument("--packs", type=int, default=None, help="override the fleet size")
    parser.add_argument("--hours", type=float, default=None, help="override the duration")
    parser.add_argument("--queries", type=int, default=100, help="targets per query kind")
    parser.add_argument(
        "--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"]
    )
    parser.add_argument(
        "--drop-caches",
        action="store_true",
        help="cold = drop the whole OS page cache (root only; default: evict the database's files)",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="folder for the databases (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    if args.drop_caches and os.geteuid() != 0:
        parser.error("--drop-caches needs root (writes /proc/sys/vm/drop_caches)")
    packs, hours = (5, 1.0) if args.quick else (100, 168.0) if args.full else (20, 6.0)
    packs = args.packs or packs
    hours = args.hours or hours
    seconds = int(hours * 3600)
    if packs < 1 or seconds < 60:
        parser.error("at least one pack and one minute")
    load = os.getloadavg()
    cold = "whole OS page cache dropped" if args.drop_caches else "database files evicted"
    print(
        f"store: {packs} packs × {hours:g} h at 1 Hz = {packs * seconds:,} rows, batches of 60 s;"
        f" {args.queries} targets per query kind; cold: {cold}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    result: dict[str, Any] = {
        "packs": packs,
        "hours": hours,
        "load_1m": load[0],
        "cold": "drop_caches" if args.drop_caches else "fadvise",
    }
    with tempfile.TemporaryDirectory(prefix="pulsebms-bench-store-", dir=args.dir) as tmp:
        folder = Path(tmp)
        for name in args.backends:
            log = lambda line: print(line, flush=True)  # noqa: E731 - one-line logger
            if name == "sqlite":
                (folder / "sqlite").mkdir()
                backend = _sqlite_backend(folder / "sqlite")
                result[name] = bench_backend(
                    backend, packs, seconds, args.queries, drop_caches=args.drop_caches, log=log
                )
            else:
                with TemporaryPostgres(durable=True, parent=args.dir) as pg:
                    result[name] = bench_backend(
                        _postgres_backend(pg),
                        packs,
                        seconds,
                        args.queries,
                        drop_caches=args.drop_caches,
                        log=log,
                    )
    load = os.getloadavg()
    result["load_1m_end"] = load[0]
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
