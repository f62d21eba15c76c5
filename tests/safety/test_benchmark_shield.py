"""The shield benchmark runs and ends with a parseable ``RESULT`` line (tiny settings)."""

from __future__ import annotations

import json

import pytest

from pulsebms.benchmarks import shield as bench


def test_benchmark_prints_result(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--calls", "40"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    result = json.loads(last.removeprefix("RESULT "))
    assert set(result["sizes"]) == {"1", "10", "100"}
    assert result["max_rel_err"] <= 1e-6
    for row in result["sizes"].values():
        assert row["fast"]["p50_us"] > 0
        assert row["cvxpy"]["p99_us"] >= row["cvxpy"]["p50_us"]
