"""End to end: exported policy + runtime + the FleetSmall twin on a python-can bus."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from edge_helpers import constant_onnx

from pulsebms.hil import HilFaults, run_hil
from pulsebms.hil.cli import EXIT_PARITY_FAILED, EXIT_REFUSED
from pulsebms.hil.cli import main as hil_main


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
    # Latencies are measured and ordered; their size is a benchmark's business, not a test's.
    assert 0.0 < report.latency_p50_ms <= report.latency_p99_ms
    assert math.isfinite(report.latency_p99_ms)
    # Every tick compared, and the bus reproduces the env's observation up to CAN
    # quantisation (0.5 °C / 50 K ...).
    assert report.parity_ok, report.parity
    assert (report.obs_compared_ticks, report.obs_mismatch_ticks, report.obs_safe_ticks) == (
        40,
        0,
        0,
    )
    assert 0.0 < report.observation_max_abs_diff < report.obs_tolerance
    assert report.parity.startswith("ok: 40 ticks compared")
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
    assert report.stale_controlled_ticks == 0  # pack 2 safe from the tick it went silent
    assert report.twin_violations == 0  # the real packs never left their limits
    # Ticks with a pack in the safe state are counted apart, not compared, not hidden.
    assert report.obs_safe_ticks > 0
    assert report.obs_compared_ticks + report.obs_safe_ticks == 30
    assert report.parity_ok, report.parity
    assert "not comparable" in report.parity


def test_hil_silent_pack_is_safe_at_the_next_tick(exported: Path) -> None:
    """Telemetry comes once per tick: a pack that misses one is not driven on old readings.

    Regression: the watchdog was 2.5 ticks, so a silent pack ran two more ticks on the
    readings of its last report (in ``pulsebms-fleet`` that drove a twin past its SoC limit).
    """
    report = run_hil(
        exported, n_ticks=8, channel="hil-silent", faults=HilFaults(silent_packs={2: 5})
    )
    assert report.safe_pack_ticks == 3  # pack 2 at ticks 5, 6, 7; nothing else
    assert report.events.get("stale") == 1
    assert report.stale_controlled_ticks == 0
    assert report.frames_to_runtime == 8 * 4 - 3


def test_lockstep_watchdog_tells_this_tick_from_the_last() -> None:
    from pulsebms.hil import lockstep_watchdog

    step = 0.1  # sums of 0.1 are inexact: the timeout keeps clear of them
    options = lockstep_watchdog(step)
    ages = [10 * step - 9 * step, (10 * step + step) - 10 * step]  # last tick's, this tick's
    assert ages[0] > options["stale_after_s"] > ages[1] - step >= 0.0
    assert options["recovery_hold_s"] == 2 * step
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="step_s"):
            lockstep_watchdog(bad)


def _swap_fields(a: str, b: str) -> Callable[[dict[str, Any]], None]:
    def edit(manifest: dict[str, Any]) -> None:
        fields = {f["name"]: f for f in manifest["observation"]}
        fa, fb = fields[a], fields[b]
        assert fa["stop"] - fa["start"] == fb["stop"] - fb["start"]
        (fa["start"], fa["stop"]), (fb["start"], fb["stop"]) = (
            (fb["start"], fb["stop"]),
            (fa["start"], fa["stop"]),
        )

    return edit


@pytest.mark.parametrize(
    ("a", "b"),
    [("soc", "soh"), ("time_of_day_sin", "time_of_day_cos")],
    ids=["pack-fields", "site-fields"],
)
def test_hil_parity_fails_on_a_permuted_layout(
    variant: Callable[..., Path], a: str, b: str
) -> None:
    """A manifest whose layout is not the env's: same size, entries in other places."""
    report = run_hil(variant(_swap_fields(a, b)), n_ticks=12, channel=f"hil-perm-{a}")
    assert not report.parity_ok
    assert report.obs_compared_ticks == 12
    assert report.obs_mismatch_ticks > 0
    assert report.observation_max_abs_diff > report.obs_tolerance
    assert report.parity.startswith("FAIL")
    assert f"({a})" in report.parity or f"({b})" in report.parity


def test_hil_parity_fails_when_the_model_sees_another_observation_size(
    exported: Path, variant: Callable[..., Path]
) -> None:
    """One more observation entry than the env has: a shape mismatch is a mismatch."""
    size = json.loads(exported.read_text())["model"]["observation_size"]

    def widen(manifest: dict[str, Any]) -> None:
        manifest["model"]["observation_size"] = size + 1
        manifest["observation"].append(
            {
                "name": "soc_pack0",
                "start": size,
                "stop": size + 1,
                "source": "soc",
                "unit": "fraction",
                "scale": 1.0,
                "low": 0.0,
                "high": 1.0,
                "pack": 0,
            }
        )

    path = variant(widen, model=constant_onnx(size + 1, 3, 0.0))
    report = run_hil(path, n_ticks=6, channel="hil-wide")
    assert not report.parity_ok
    assert (report.obs_compared_ticks, report.obs_mismatch_ticks) == (6, 6)
    assert report.observation_max_abs_diff == 0.0  # nothing of equal shape to measure
    assert f"shape ({size + 1},), the twin's ({size},)" in report.parity


def test_hil_parity_fails_when_no_tick_is_comparable(exported: Path) -> None:
    faults = HilFaults(silent_packs={0: 0, 1: 0, 2: 0})
    report = run_hil(exported, n_ticks=5, channel="hil-none", faults=faults)
    assert (report.obs_compared_ticks, report.obs_safe_ticks) == (0, 5)
    assert not report.parity_ok
    assert report.parity.startswith("FAIL: no tick compared")


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


@pytest.mark.parametrize("value", [1.0, -1.0], ids=["max-discharge", "max-charge"])
def test_hil_shield_keeps_an_aggressive_policy_inside_the_limits(
    exported: Path, variant: Callable[..., Path], value: float
) -> None:
    manifest = json.loads(exported.read_text())
    model = constant_onnx(
        manifest["model"]["observation_size"], manifest["model"]["action_size"], value
    )
    report = run_hil(variant(lambda m: None, model=model), n_ticks=120, channel=f"aggr-{value}")
    assert report.interventions == 120  # the shield acts on every tick ...
    assert report.twin_violations == 0  # ... and the twin never leaves its limits
    assert report.telemetry_violations == 0
    assert report.parity_ok, report.parity


def test_hil_cli_exit_status_follows_the_parity(
    exported: Path, variant: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--n-ticks", "4", "--channel", "hil-cli"]
    assert hil_main(["--manifest", str(exported), *base]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["parity_ok"] is True
    assert printed["obs_compared_ticks"] == 4

    swapped = variant(_swap_fields("soc", "soh"))
    assert hil_main(["--manifest", str(swapped), *base]) == EXIT_PARITY_FAILED
    captured = capsys.readouterr()
    assert json.loads(captured.out)["parity_ok"] is False  # the KPIs are still printed
    assert "observation parity failed" in captured.err


def test_hil_cli_refuses_a_missing_manifest_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hil_main(["--manifest", str(tmp_path / "missing.json"), "--n-ticks", "1"]) == (
        EXIT_REFUSED
    )
    assert "refusing to start" in capsys.readouterr().err


def test_python_dash_m_pulsebms_hil(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pulsebms.hil", "--manifest", str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == EXIT_REFUSED, out.stderr
    assert "pulsebms-hil: refusing to start" in out.stderr


def test_hil_speaks_the_foreign_dbc_by_configuration_only(
    exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """AX-BMS (Motorola, 0.1 % SoC, state requests with current limits, no site frame)."""
    from pulsebms.edge_runtime.codec import FOREIGN_DBC, FOREIGN_SIGNAL_MAP
    from pulsebms.edge_runtime.signal_map import data_path

    dbc, smap = data_path(FOREIGN_DBC), data_path(FOREIGN_SIGNAL_MAP)
    report = run_hil(exported, n_ticks=30, channel="hil-foreign", dbc_path=dbc, signal_map=smap)
    assert report.ticks == 30
    # 3 packs × (status, voltages, temperatures, 52 cell blocks); no site frame on CAN
    assert report.frames_to_runtime == 30 * 3 * 55
    assert report.frames_from_runtime == 30 * 3
    assert report.runtime["malformed_frames"] == 0
    assert report.safe_pack_ticks == 0
    assert report.twin_violations == 0
    assert report.parity_ok, report.parity
    assert report.obs_compared_ticks == 30
    # the same run from the command line
    argv = ["--manifest", str(exported), "--n-ticks", "5", "--channel", "hil-foreign-cli"]
    assert hil_main([*argv, "--dbc", str(dbc), "--signal-map", str(smap)]) == 0
    assert json.loads(capsys.readouterr().out)["parity_ok"] is True


def test_hil_cli_refuses_a_bad_signal_map(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "map.json"
    bad.write_text('{"version": 2, "telemetry": [], "command": {}}')
    argv = ["--manifest", str(exported), "--n-ticks", "1", "--signal-map", str(bad)]
    assert hil_main(argv) == EXIT_REFUSED
    assert "signal map" in capsys.readouterr().err


def test_hil_foreign_checksum_errors_are_tolerated_then_safe(exported: Path) -> None:
    """Bit errors on pack 1's status frame: two tolerated (held values), then the safe state."""
    from pulsebms.edge_runtime.codec import FOREIGN_DBC, FOREIGN_SIGNAL_MAP
    from pulsebms.edge_runtime.signal_map import data_path

    report = run_hil(
        exported,
        n_ticks=12,
        channel="hil-foreign-crc",
        dbc_path=data_path(FOREIGN_DBC),
        signal_map=data_path(FOREIGN_SIGNAL_MAP),
        faults=HilFaults(corrupt_packs={1: 4}),
    )
    assert report.ticks == 12
    assert report.runtime["checksum_errors"] == 2  # tolerated (dropped), then malformed
    assert report.runtime["malformed_frames"] >= 1  # the third bad frame in a row, and on
    assert report.events.get("malformed", 0) >= 1
    assert report.safe_pack_ticks > 0
    assert report.twin_violations == 0
    # Ticks 0..3 compared. The two tolerated bad frames (ticks 4, 5) are dropped without
    # latching; pack 1's readings of those ticks are then missing, so the lockstep
    # watchdog holds it safe on them (not on a tick-old status); the third latches.
    assert report.obs_compared_ticks == 4
    assert report.events.get("stale", 0) >= 1


def test_hil_foreign_on_one_channel_per_bus(exported: Path) -> None:
    """bms_a (packs 0, 1) and bms_b (pack 2) on separate channels, as the map names them."""
    from pulsebms.edge_runtime.codec import FOREIGN_DBC, FOREIGN_SIGNAL_MAP
    from pulsebms.edge_runtime.signal_map import data_path

    report = run_hil(
        exported,
        n_ticks=6,
        channel="hil-foreign-buses",
        dbc_path=data_path(FOREIGN_DBC),
        signal_map=data_path(FOREIGN_SIGNAL_MAP),
        separate_buses=True,
    )
    assert (report.frames_from_runtime, report.safe_pack_ticks) == (6 * 3, 0)
    assert report.parity_ok, report.parity
