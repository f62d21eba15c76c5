"""``pulsebms-bench allocation`` at smoke settings."""

from __future__ import annotations

import json

import pytest

from pulsebms.benchmarks import allocation


def test_allocation_benchmark_reports_both_modes(capsys: pytest.CaptureFixture[str]) -> None:
    assert allocation.main(["--quick"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last.removeprefix("RESULT "))
    assert set(result) == {
        f"{p}/{a}" for p in ("rule_soc", "random") for a in ("redistribute", "respect_split")
    }
    # The shield keeps every measured window: no violation whichever the allocation mode.
    assert all(row["violations"] == 0 for row in result.values())
    # Random set-points need the shield; respecting the split leaves a shortfall it reports.
    assert result["random/redistribute"]["interventions"] > 0
    assert result["random/respect_split"]["shortfall_kwh"] >= 0.0
