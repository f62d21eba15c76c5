"""``pulsebms-bench calibration`` at smoke size: it calibrates and forecasts correctly."""

from __future__ import annotations

from pulsebms.benchmarks import calibration


def test_ecm_part_recovers_soh() -> None:
    r = calibration.bench_ecm(2, hours=1.0, repeats=1)
    assert r["converged"] == 1.0
    assert r["within_1pct"] == 1.0
    assert r["resistance_error_max_pct"] < 2.0
    assert r["batched_s"] > 0
    assert r["one_by_one_s"] > 0
