"""``pulsebms-edge`` on a python-can virtual bus (moved from the former HIL test file)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pulsebms.edge_runtime.cli import main as edge_main
from pulsebms.edge_runtime.codec import SignalMap, default_dbc_path


def test_edge_cli_runs_on_virtual_bus(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "metrics.json"
    smap = tmp_path / "map.json"
    smap.write_text(json.dumps(SignalMap.default().to_dict()))
    argv = [
        "--manifest", str(exported), "--interface", "virtual", "--channel", f"cli-{os.getpid()}",
        "--tick-s", "0.005", "--n-ticks", "10", "--metrics-json", str(out),
        "--dbc", str(default_dbc_path()), "--signal-map", str(smap),
    ]  # fmt: skip
    assert edge_main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ticks"] == 10.0
    assert printed == json.loads(out.read_text())
    assert printed["safe_pack_ticks"] == 30.0  # nobody sent telemetry: everything held safe


def test_edge_cli_reports_bad_inputs(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_map = tmp_path / "map.json"
    bad_map.write_text(json.dumps({"telemetry": {}}))
    base = ["--manifest", str(exported), "--interface", "virtual", "--n-ticks", "1"]
    assert edge_main([*base, "--signal-map", str(bad_map)]) == 1
    assert "refusing to start" in capsys.readouterr().err
    assert edge_main([*base[:1], str(tmp_path / "missing.json"), *base[2:]]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert edge_main([*base[:2], "--interface", "no-such-interface", "--n-ticks", "1"]) == 1
    assert "cannot open the bus" in capsys.readouterr().err
