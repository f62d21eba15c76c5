"""``pulsebms-bench store``: telemetry store write rate and pack/time-range query latency.

Both backends side by side on the same rows: the embedded SQLite store (a file in a
temporary folder) and PostgreSQL (a throwaway server, :class:`TemporaryPostgres`, with
PostgreSQL's durability settings on). Rows are a fleet at 1 Hz written in batches of one
minute of the whole fleet (the twin service's batching); then random queries of one pack
over one hour and over one minute. Prints per backend: rows, write rate [rows/s], size on
disk [B/row], query latency median and p95 [ms]; and a last line ``RESULT {json}``::

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
from pathlib import Path
from typing import Any

import numpy as np

from pulsebms.services.store import PostgresTelemetryStore, Row, SqliteTelemetryStore
from pulsebms.services.store.pg_server import TemporaryPostgres

__all__ = ["batches", "bench_backend", "main"]


def batches(packs: int, seconds: int, batch_s: int = 60) -> Iterator[list[Row]]:
    """Synthetic 1 Hz telemetry of ``packs`` packs, one list of rows per ``batch_s``."""
    names = [f"pack-{k:03d}" for k in range(packs)]
    rng = np.random.default_rng(0)
    for start in range(0, seconds, batch_s):
        t = np.arange(start, min(start + batch_s, seconds), dtype=np.float64)
        n = t.size * packs
        tt = np.repeat(t, packs)
        soc = 0.5 + 0.3 * np.sin(tt / 3600.0)
        current = rng.normal(0.0, 20.0, n)
        voltage = 48.0 + 4.0 * soc - 0.01 * current
        cols = zip(
            names * t.size,
            tt.tolist(),
            soc.tolist(),
            [1.0] * n,
            current.tolist(),
            voltage.tolist(),
            (25.0 + rng.normal(0.0, 0.1, n)).tolist(),
            strict=True,
        )
        yield list(cols)


def bench_backend(
    store: Any, packs: int, seconds: int, n_queries: int, size: Callable[[], int]
) -> dict[str, float]:
    """Write the rows, then time random one-hour and one-minute pack queries."""
    written = 0
    write_s = 0.0
    for rows in batches(packs, seconds):
        start = time.perf_counter()
        written += store.write_batch(rows)
        write_s += time.perf_counter() - start
    rng = np.random.default_rng(1)
    out: dict[str, float] = {
        "rows": float(written),
        "write_rows_per_s": written / write_s,
        "bytes_per_row": size() / written,
        "size_mb": size() / 1e6,
    }
    for label, span in (("hour", 3600), ("minute", 60)):
        span = min(span, seconds)
        latencies = []
        for _ in range(n_queries):
            pack = f"pack-{int(rng.integers(packs)):03d}"
            t0 = float(rng.integers(0, max(1, seconds - span + 1)))
            start = time.perf_counter()
            got = store.query(pack, t0, t0 + span)
            latencies.append(time.perf_counter() - start)
            if got["t_s"].size != span:
                raise RuntimeError(f"query returned {got['t_s'].size} rows, expected {span}")
        lat = np.array(latencies) * 1e3
        out[f"query_{label}_ms_median"] = float(np.median(lat))
        out[f"query_{label}_ms_p95"] = float(np.percentile(lat, 95))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the store benchmark on both backends."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="5 packs × 1 h (CI smoke)")
    size.add_argument("--full", action="store_true", help="a week of 100 packs at 1 Hz")
    parser.add_argument("--packs", type=int, default=None, help="override the fleet size")
    parser.add_argument("--hours", type=float, default=None, help="override the duration")
    parser.add_argument("--queries", type=int, default=200, help="queries per range")
    parser.add_argument(
        "--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"]
    )
    args = parser.parse_args(argv)
    packs, hours = (5, 1.0) if args.quick else (100, 168.0) if args.full else (20, 6.0)
    packs = args.packs or packs
    hours = args.hours or hours
    seconds = int(hours * 3600)
    load = os.getloadavg()
    print(
        f"store: {packs} packs × {hours:g} h at 1 Hz = {packs * seconds:,} rows, batches of 60 s; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    result: dict[str, Any] = {"packs": packs, "hours": hours, "load_1m": load[0]}
    with tempfile.TemporaryDirectory(prefix="pulsebms-bench-store-") as folder:
        for backend in args.backends:
            if backend == "sqlite":
                sqlite = SqliteTelemetryStore(Path(folder) / "t.db")
                res = bench_backend(sqlite, packs, seconds, args.queries, sqlite.size_bytes)
                sqlite.close()
            else:
                with TemporaryPostgres(durable=True) as pg:
                    postgres = PostgresTelemetryStore(pg.conninfo)
                    res = bench_backend(postgres, packs, seconds, args.queries, postgres.size_bytes)
                    postgres.close()
            result[backend] = res
            print(
                f"{backend:<9} write {res['write_rows_per_s']:>10,.0f} rows/s  "
                f"{res['bytes_per_row']:>6.1f} B/row ({res['size_mb']:,.1f} MB)  "
                f"query 1 h {res['query_hour_ms_median']:.2f} ms"
                f" (p95 {res['query_hour_ms_p95']:.2f})"
                f"  1 min {res['query_minute_ms_median']:.3f} ms"
                f" (p95 {res['query_minute_ms_p95']:.3f})",
                flush=True,
            )
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
