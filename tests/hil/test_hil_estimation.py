"""HIL with the runtime's state estimator: a BMS without SoC/SoH, sensor noise, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pulsebms.edge_runtime.codec import FOREIGN_DBC, FOREIGN_SIGNAL_MAP
from pulsebms.edge_runtime.signal_map import data_path
from pulsebms.hil.cli import main as hil_main
from pulsebms.hil.run import run_hil


@pytest.fixture
def no_soc_map(tmp_path: Path) -> Path:
    """The foreign AX-BMS map with SoC and SoH removed (a BMS that does not estimate)."""
    data = json.loads(Path(data_path(FOREIGN_SIGNAL_MAP)).read_text())
    for message in data["telemetry"]:
        message.get("signals", {}).pop("soc", None)
        message.get("signals", {}).pop("soh", None)
    path = tmp_path / "no_soc.json"
    path.write_text(json.dumps(data))
    return path


def test_hil_runs_on_the_estimated_soc_of_a_bms_without_soc(
    exported: Path, no_soc_map: Path
) -> None:
    n_ticks = 120  # 10 h of the twin at 5 min; about 5 s here
    report = run_hil(
        exported,
        n_ticks=n_ticks,
        channel="hil-no-soc",
        dbc_path=data_path(FOREIGN_DBC),
        signal_map=no_soc_map,
        noise=3,
    )
    assert report.ticks == n_ticks
    assert report.safe_pack_ticks == 0  # the packs operate: complete on the estimate
    assert report.twin_violations == 0
    assert report.runtime["estimate_updates"] == n_ticks * 3  # one per pack and cycle
    est = report.estimation
    assert est is not None
    assert est.estimated == ("soc", "soh")
    assert est.soc_max_rmse_settled <= 0.02, est
    assert all(abs(e) <= 0.02 for e in est.soc_final_error), est
    # SoC is not compared (the runtime's is the estimate); the rest still is
    assert report.parity_ok, report.parity
    # the same map with the estimator off: nothing ever runs
    off = run_hil(
        exported,
        n_ticks=3,
        channel="hil-no-soc-off",
        dbc_path=data_path(FOREIGN_DBC),
        signal_map=no_soc_map,
        runtime_kwargs={"estimator": None},
    )
    assert off.safe_pack_ticks == 3 * 3
    assert off.estimation is None


def test_hil_cross_checks_a_bms_that_reports_soc(exported: Path) -> None:
    report = run_hil(exported, n_ticks=24, channel="hil-crosscheck")
    est = report.estimation
    assert est is not None
    assert est.estimated == ()
    assert est.disagreements == 0  # the twin's SoC is the truth: plausible
    assert report.events.get("estimate_disagreement", 0) == 0
    assert report.parity_ok, report.parity


def test_hil_cli_noise_is_seeded_and_reports_the_estimate(
    exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--manifest", str(exported), "--n-ticks", "12", "--noise", "7"]
    runs = []
    for k in range(2):
        assert hil_main([*argv, "--channel", f"hil-noise-{k}"]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert runs[0]["estimation"] == runs[1]["estimation"]  # same seed, same readings
    assert runs[0]["total_reward"] == runs[1]["total_reward"]
    exact = ["--manifest", str(exported), "--n-ticks", "12", "--channel", "hil-exact"]
    assert hil_main(exact) == 0
    quiet = json.loads(capsys.readouterr().out)
    assert quiet["estimation"]["soc_final_error"] != runs[0]["estimation"]["soc_final_error"]
    assert hil_main([*exact, "--no-estimator"]) == 0
    assert json.loads(capsys.readouterr().out)["estimation"] is None
