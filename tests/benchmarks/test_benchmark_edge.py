"""``pulsebms-bench edge`` at smoke settings: it runs, measures what it says, reports figures.

Speed figures are printed, never asserted (a busy machine is not a bug). What is asserted:
every timed violating frame produced a safe set-point (else the benchmark fails), the
profile accounts for the tick, and the front end runs it by name.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pulsebms.benchmarks import cli
from pulsebms.benchmarks import edge as bench


def _is_figure(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


def _result(out: str) -> dict[str, object]:
    last = out.strip().splitlines()[-1]
    assert last.startswith("RESULT "), out[-2000:]
    parsed = json.loads(last.removeprefix("RESULT "))
    assert isinstance(parsed, dict)
    return parsed


def test_edge_benchmark_prints_result(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--quick", "--sizes", "3,8", "--ticks", "6", "--frames", "10"]
    assert bench.main(argv) == 0
    result = _result(capsys.readouterr().out)
    sizes = result["sizes"]
    assert isinstance(sizes, dict)
    assert set(sizes) == {"3", "8"}
    backends = result["backends"]
    assert isinstance(backends, list)
    assert "cantools" in backends
    for row in sizes.values():
        for backend in backends:
            for figure in (
                "full_tick",
                "full_tick_cpu",
                "full_tick_nobus",
                "full_tick_nobus_cpu",
                "tick",
                "rx",
                "safe_frame",
                "safe_frame_cpu",
                "safe_frame_sent",
                "safe_frame_bus",
            ):
                assert _is_figure(row[backend][figure]["p50_us"]), (backend, figure)
                assert _is_figure(row[backend][figure]["p99_us"]), (backend, figure)
    shares = result["profile_share"]
    assert isinstance(shares, dict)
    assert {"codec decode", "limit check", "shield"} <= set(shares)
    assert 0.9 <= sum(shares.values()) <= 1.05  # the groups account for the whole tick
    codec = result["codec"]
    assert isinstance(codec, dict)
    assert set(codec) == {"PackTelemetry.decode", "PackSetpoint.encode"}
    assert all(_is_figure(row["ratio_p50"]) for row in codec.values())


def test_benchmark_fails_when_a_violation_sends_no_safe_frame() -> None:
    """Guard of the measurement itself: a frame that violates nothing is caught."""
    harness = bench._Harness(3, "cantools", np.random.default_rng(0))
    try:
        harness.violating = harness.clean  # the "violating" frames are clean
        with pytest.raises(RuntimeError, match="no safe set-point"):
            bench._safe_frame(harness, 3, via_bus=False)
    finally:
        harness.close()


def test_front_end_runs_edge(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["edge", "--sizes", "3", "--ticks", "3", "--frames", "3", "--no-profile"]
    assert cli.main(argv) == 0
    result = _result(capsys.readouterr().out)
    edge = result["edge"]
    assert isinstance(edge, dict)
    assert edge["exit_code"] == 0
    assert "3" in edge["sizes"]
