"""The shield benchmark CLI runs and ends with a parseable ``RESULT`` line (tiny settings).

It checks that the figures are reported, never how fast they are: wall-clock numbers
depend on the machine and its load, so no test asserts on them.
"""

from __future__ import annotations

import json
import math

import pytest

from pulsebms.benchmarks import shield as bench


def _is_figure(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


def test_benchmark_prints_result(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--calls", "40"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    result = json.loads(last.removeprefix("RESULT "))
    assert set(result["sizes"]) == {"1", "10", "100"}
    assert result["max_rel_err"] <= 1e-6  # accuracy against cvxpy, not speed
    for row in result["sizes"].values():
        for solver in ("fast", "cvxpy"):
            assert _is_figure(row[solver]["p50_us"])
            assert _is_figure(row[solver]["p99_us"])
    assert _is_figure(result["fast_p99_us_100"])
