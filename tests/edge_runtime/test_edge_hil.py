"""End to end: exported policy + runtime + the FleetSmall twin on a python-can bus."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
from edge_helpers import constant_onnx

from pulsebms.edge_runtime.cli import main as edge_main
from pulsebms.edge_runtime.codec import SignalMap, default_dbc_path
from pulsebms.edge_runtime.hil import HilFaults, run_hil
from pulsebms.edge_runtime.manifest import sha256_bytes


def test_hil_on_virtual_bus(exported: Path) -> None:
    report = run_hil(exported, n_ticks=40, channel="hil-nominal", seed=1)
    assert report.ticks == 40
    assert report.frames_to_runtime == 40 * 4  # 3 packs + site per tick
    assert report.frames_from_runtime == 40 * 3
    assert report.runtime["malformed_frames"] == 0
    assert report.runtime["send_errors"] == 0
    assert report.telemetry_violations == 0
    assert report.twin_violations == 0
    assert report.safe_pack_ticks == 0
    assert math.isfinite(report.latency_p50_ms)
    assert report.latency_p99_ms < 250.0
    # The bus reproduces the env's observation up to CAN quantisation (0.5 °C / 50 K ...).
    assert report.observation_max_abs_diff < 0.02
    json.dumps(report.to_dict())  # plain data


def test_hil_injected_faults_are_contained(exported: Path) -> None:
    faults = HilFaults(silent_packs={2: 10}, malformed_every=7, overheat_packs={1: 20})
    report = run_hil(exported, n_ticks=30, channel="hil-faults", faults=faults)
    assert report.ticks == 30  # the loop survived all of it
    assert report.events.get("stale", 0) >= 1
    assert report.events.get("malformed", 0) >= 1
    assert report.events.get("violation", 0) >= 1
    assert report.runtime["ignored_frames"] >= 4  # unknown-id frames
    assert report.safe_pack_ticks > 0
    assert report.twin_violations == 0  # the real packs never left their limits


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_hil_on_udp_multicast(exported: Path) -> None:
    from can.interfaces.udp_multicast import UdpMulticastBus

    port = _free_udp_port()
    try:
        report = run_hil(
            exported,
            n_ticks=8,
            interface="udp_multicast",
            channel=UdpMulticastBus.DEFAULT_GROUP_IPv4,
            bus_kwargs={"port": port},
            settle_s=0.05,
        )
    except OSError as exc:  # no multicast route in this sandbox
        pytest.skip(f"udp_multicast unavailable: {exc}")
    if report.runtime["frames_received"] == 0:
        pytest.skip("udp_multicast opened but loopback delivers nothing here")
    assert report.ticks == 8
    assert report.frames_from_runtime == 8 * 3
    assert report.runtime["telemetry_frames"] == 8 * 3
    assert report.runtime["echo_frames"] >= 1  # multicast loops our own frames back


def test_edge_cli_runs_on_virtual_bus(exported: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
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


def test_edge_cli_reports_bad_inputs(exported: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad_map = tmp_path / "map.json"
    bad_map.write_text(json.dumps({"telemetry": {}}))
    base = ["--manifest", str(exported), "--interface", "virtual", "--n-ticks", "1"]
    assert edge_main([*base, "--signal-map", str(bad_map)]) == 1
    assert "refusing to start" in capsys.readouterr().err
    assert edge_main([*base[:1], str(tmp_path / "missing.json"), *base[2:]]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert edge_main([*base[:2], "--interface", "no-such-interface", "--n-ticks", "1"]) == 1
    assert "cannot open the bus" in capsys.readouterr().err


@pytest.mark.parametrize("value", [1.0, -1.0], ids=["max-discharge", "max-charge"])
def test_hil_shield_keeps_an_aggressive_policy_inside_the_limits(
    exported: Path, tmp_path: Path, value: float
) -> None:
    manifest = json.loads(exported.read_text())
    model = constant_onnx(
        manifest["model"]["observation_size"], manifest["model"]["action_size"], value
    )
    manifest["model"]["sha256"] = sha256_bytes(model)
    (tmp_path / "policy.onnx").write_bytes(model)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    report = run_hil(tmp_path / "manifest.json", n_ticks=120, channel=f"hil-aggr-{value}")
    assert report.interventions == 120  # the shield acts on every tick ...
    assert report.twin_violations == 0  # ... and the twin never leaves its limits
    assert report.telemetry_violations == 0


def test_hil_cli_refuses_a_missing_manifest_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pulsebms.edge_runtime.hil import main as hil_main

    assert hil_main(["--manifest", str(tmp_path / "missing.json"), "--n-ticks", "1"]) == 1
    assert "refusing to start" in capsys.readouterr().err
