"""``pulsebms-bench twin`` at smoke settings: it runs, prints figures, and its accuracy holds.

Speed figures are printed, never asserted (a busy machine is not a bug).
"""

from __future__ import annotations

import json
import math

import pytest

from pulsebms.benchmarks import twin as bench


@pytest.mark.slow
def test_twin_benchmark_prints_finite_figures_and_accuracy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench.main(["--quick", "--packs", "1"]) == 0
    out = capsys.readouterr().out
    result_lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert result_lines, out[-2000:]
    result = json.loads(result_lines[-1][len("RESULT ") :])
    for chemistry, row in result["accuracy"].items():
        assert not row["faulted"], chemistry
        # The twin against PyBaMM's adaptive solve: the issue's ≤ 1 mV accuracy target.
        assert row["max_dv_mv"] <= 1.0, (chemistry, row)
    (speed,) = result["speed"]
    assert speed["packs"] == 1
    assert math.isfinite(speed["twin_pack_steps_per_s"])
    assert speed["twin_pack_steps_per_s"] > 0
    assert speed["model"] == "SPM"
    assert 0.0 <= speed["twin_fallback_pct"] <= 100.0
    assert speed["twin_build_s"] > 0
    # The bare naive step reads no variable, so it is at least as fast as step + reads.
    assert speed["naive_pack_steps_per_s"] > 0
    assert speed["naive_reads_pack_steps_per_s"] > 0
    assert speed["speedup_vs_reads"] >= 0.5 * speed["speedup"]
