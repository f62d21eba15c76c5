"""``pulsebms-bench store`` at smoke size: both backends write and query what they should."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from pulsebms.benchmarks import store


def test_store_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert store.main(["--packs", "3", "--hours", "0.25", "--queries", "4"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    result = json.loads(last[len("RESULT ") :])
    assert result["cold"] == "fadvise"
    for backend in ("sqlite", "postgres"):
        res = result[backend]
        assert res["rows"] == 3 * 900
        assert res["repeat_batch_added"] == 0  # a redelivered batch adds nothing
        assert res["write_rows_per_s"] > 0
        assert 40 < res["bytes_per_row"] < 2000  # five float64, a key, a time + index
        assert set(res["queries"]) == set(store.KINDS)
        for kind, q in res["queries"].items():
            # every query returned exactly the rows the data holds (else main raised)
            assert q["rows"] == {"latest": 1, "fleet_1min": 3 * 60}.get(kind, q["span_s"])
            for temperature in ("cold", "warm"):
                fig = q[temperature]
                assert fig["n"] >= 1
                assert 0 < fig["p50_ms"] <= fig["p95_ms"] <= fig["p99_ms"]


def test_batches_cover_every_second_of_every_pack() -> None:
    rows = [r for batch in store.batches(packs=2, seconds=130, batch_s=60) for r in batch]
    assert len(rows) == 260
    assert {(r[0], r[1]) for r in rows} == {
        (f"pack-{k:03d}", store.T0_S + t) for k in range(2) for t in range(130)
    }
    values = np.array([r[2:] for r in rows])
    assert np.all(values != np.round(values))  # no integral floats to flatter a store


def test_query_targets_never_overlap() -> None:
    rng = np.random.default_rng(0)
    for kind in ("pack_1min", "pack_1h", "fleet_1min"):
        targets = store.query_targets(kind, packs=3, seconds=7200, n=1000, rng=rng)
        span = min(store.KINDS[kind], 7200)
        assert len(targets) == (7200 // span) * (1 if kind == "fleet_1min" else 3)
        assert len(set(targets)) == len(targets)
        assert all(t1 - t0 == span and (t0 - store.T0_S) % span == 0 for _, t0, t1 in targets)
    latest = store.query_targets("latest", packs=3, seconds=60, n=10, rng=rng)
    assert sorted(p for p, _, _ in latest) == ["pack-000", "pack-001", "pack-002"]


def _resident_pages(path: Path) -> int:
    """Pages of ``path`` in the OS page cache (``mincore`` on a mapping that touches none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "rb") as f:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        try:
            vec = ctypes.create_string_buffer(pages)
            assert libc.mincore(addr, size, vec) == 0, ctypes.get_errno()
            return sum(b & 1 for b in vec.raw)
        finally:
            libc.munmap(addr, size)


def test_evict_page_cache_drops_a_files_pages(tmp_path: Path) -> None:
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    best = max((m for m in mounts if str(tmp_path).startswith(m[1])), key=lambda m: len(m[1]))
    if best[2] == "tmpfs":  # a tmpfs file's pages are the file: nothing can evict them
        pytest.skip(f"{tmp_path} is on tmpfs")
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(1 << 20))
    path.read_bytes()
    assert _resident_pages(path) > 0
    assert store.evict_page_cache([path, tmp_path / "gone"]) == 1
    assert _resident_pages(path) == 0
    assert len(path.read_bytes()) == 1 << 20  # only the cache went
