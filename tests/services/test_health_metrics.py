"""``pulsebms-health metrics``: the whole measurement at smoke size, through the CLI.

Slow (a fleet, two LSTM trainings, an ONNX export, two detectors: about 20 s of one core):
it checks that the one command produces every figure of the table, within sane ranges, and
ends with a parseable ``RESULT {json}`` line. The figures themselves are in docs/health.md.
"""

from __future__ import annotations

import json

import pytest

from pulsebms.services.health.cli import main
from pulsebms.services.health.faults import FAULT_KINDS


@pytest.mark.slow
def test_metrics_command_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["metrics", "--quick", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    result = json.loads(last[len("RESULT ") :])
    assert "| gradient boosting" in out
    assert "| LSTM |" in out
    score, forecast = result["score"], result["forecast"]
    for key in ("rmse_gbr", "rmse_linear", "rmse_capacity"):
        assert 0.0 < score[key] < 0.05, key
    for key in ("rmse_lstm", "rmse_lstm_fade_law_prior", "rmse_fade_law", "rmse_linear"):
        assert 0.0 < forecast[key] < 0.1, key
    assert forecast["onnx_max_abs_diff"] < 1e-5
    for method in ("robust_z", "isolation_forest"):
        anomaly = result["anomaly"][method]
        assert set(anomaly["recall"]) == set(FAULT_KINDS)
        assert anomaly["n_windows"] > 0
    assert result["anomaly"]["robust_z"]["detection_recall"] > 0.5
    queue = result["priority"]["queue"]
    assert -1.0 <= queue["kendall_tau"] <= 1.0
    assert sorted(result["priority"]["queue_order"]) == sorted(result["priority"]["oracle_order"])
