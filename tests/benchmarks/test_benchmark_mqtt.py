"""``pulsebms-bench mqtt`` at smoke settings: it runs end to end and reports what it measured.

Speed is printed, never asserted. Asserted: every message the generator sent reached the
coordinator (counted by its sequence tracker), the figures are finite, and the front end
knows the benchmark by name.
"""

from __future__ import annotations

import json
import math

import pytest

from pulsebms.benchmarks import cli
from pulsebms.benchmarks import mqtt as bench


def test_mqtt_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--stages", "3x2@4", "--duration-s", "1", "--links", "2"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "load average" in out
    result = json.loads(out.strip().splitlines()[-1].removeprefix("RESULT "))
    stage = result["stages"]["3x2@4"]
    assert stage["sent"] == 3 * 4  # 3 devices × 4 Hz × 1 s
    assert stage["received"] == stage["sent"]
    assert stage["lost"] == 0
    assert stage["packs_per_s"] == 24
    for key in ("latency_p50_ms", "latency_p99_ms", "latency_max_ms", "coordinator_cpu_pct"):
        assert math.isfinite(stage[key])
        assert stage[key] >= 0
    assert stage["latency_p50_ms"] <= stage["latency_p99_ms"] <= stage["latency_max_ms"]
    assert stage["plans"] >= 1  # the coordinator planned the fleet (initial)
    assert result["target_1000_packs_1hz_met"] is False  # no 1,000-pack stage was run
    assert "mqtt" in cli.BENCHMARKS


def test_stage_parsing() -> None:
    assert bench.Stage.parse("100x10@2") == bench.Stage(100, 10, 2.0)
    assert bench.Stage.parse("1000x1@1").packs_per_s == 1000
    with pytest.raises(ValueError, match="bad stage"):
        bench.Stage.parse("0x1@1")
