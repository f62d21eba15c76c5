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
    assert backends == ["cantools", "compiled", "batched"]
    for row in sizes.values():
        for backend in backends:
            for figure in (
                "full_tick",
                "full_tick_cpu",
                "full_tick_nobus",
                "full_tick_nobus_cpu",
                "tick",
                "rx",
                "tick_nobus",
                "rx_nobus",
                "safe_frame",
                "safe_frame_cpu",
                "safe_frame_sent",
                "safe_frame_bus",
                "safe_frame_drain",
                "safe_frame_drain_bus",
                "send_all_floor",
            ):
                assert _is_figure(row[backend][figure]["p50_us"]), (backend, figure)
                assert _is_figure(row[backend][figure]["p99_us"]), (backend, figure)
        assert set(row["ratios_p50"]) == {
            "cantools/compiled",
            "cantools/batched",
            "compiled/batched",
        }
        assert all(_is_figure(v) for r in row["ratios_p50"].values() for v in r.values())
    assert result["target_tick_definition"] == "full_tick_nobus (no bus I/O)"
    shares = result["profile_share"]
    assert isinstance(shares, dict)
    assert {"codec decode", "limit check", "shield"} <= set(shares)
    assert 0.9 <= sum(shares.values()) <= 1.05  # the groups account for the whole tick
    codec = result["codec"]
    assert isinstance(codec, dict)
    assert set(codec) == {"PackTelemetry.decode", "PackSetpoint.encode"}
    assert all(_is_figure(row["ratio_p50"]) for row in codec.values())
    paths = result["codec_path"]
    assert isinstance(paths, dict)
    assert all(_is_figure(paths[d]["batched per frame_p50_us"]) for d in ("decode", "encode"))


def test_benchmark_fails_when_a_violation_sends_no_safe_frame() -> None:
    """Guard of the measurement itself: a frame that violates nothing is caught."""
    harness = bench._Harness(3, "cantools", np.random.default_rng(0))
    try:
        harness.violating = harness.clean  # the "violating" frames are clean
        with pytest.raises(RuntimeError, match="no safe set-point"):
            bench._safe_frame(harness, 3, via_bus=False)
    finally:
        harness.close()


def test_benchmark_fails_when_a_violation_in_a_drain_sends_no_safe_frame() -> None:
    harness = bench._Harness(3, "batched", np.random.default_rng(0))
    try:
        harness.violating = harness.clean
        with pytest.raises(RuntimeError, match="no safe set-point"):
            bench._safe_drain(harness, 3, via_bus=False)
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
