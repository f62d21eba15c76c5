"""``pulsebms-bench store`` at smoke size: both backends write and query what they should."""

from __future__ import annotations

import json

import pytest

from pulsebms.benchmarks import store


def test_store_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert store.main(["--packs", "3", "--hours", "0.25", "--queries", "5"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    result = json.loads(last[len("RESULT ") :])
    for backend in ("sqlite", "postgres"):
        res = result[backend]
        assert res["rows"] == 3 * 900
        assert res["write_rows_per_s"] > 0
        assert 40 < res["bytes_per_row"] < 2000  # six float64 + a pack name + index
        assert res["query_minute_ms_median"] > 0


def test_batches_cover_every_second_of_every_pack() -> None:
    rows = [r for batch in store.batches(packs=2, seconds=130, batch_s=60) for r in batch]
    assert len(rows) == 260
    assert {(r[0], r[1]) for r in rows} == {
        (f"pack-{k:03d}", float(t)) for k in range(2) for t in range(130)
    }
