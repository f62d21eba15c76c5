"""``pulsebms-edge``: virtual-bus runs, one-line exit-2 errors, signal-map subcommand, signals."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import can
import pytest

from pulsebms.edge_runtime.cli import main as edge_main
from pulsebms.edge_runtime.codec import CanCodec, SetpointFrame, SignalMap, default_dbc_path
from pulsebms.edge_runtime.manifest import load_manifest


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


# ---------------------------------------------------------------- bad values: one line, exit 2


def _exit_code(argv: list[str]) -> int:
    """``main``'s status, whether returned or raised by argparse as SystemExit."""
    try:
        return edge_main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tick-s", "0"], "--tick-s: must be > 0"),
        (["--stale-after-s", "-1"], "--stale-after-s: must be > 0"),
        (["--safety-period-s", "nan"], "--safety-period-s: must be > 0"),
        (["--n-ticks", "-3"], "--n-ticks: must be >= 0"),
        (["--site", "fixed:lots"], "not a finite number"),
        (["--bus", "rack1"], "NAME=INTERFACE:CHANNEL"),
        (["--telemetry-period-s", "1", "--stale-after-s", "0.5"], "must exceed the telemetry"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(
    exported: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    # Former code: argparse printed a usage block (tick 0, negative stale time were not even
    # rejected: EdgeRuntime raised a ValueError traceback), and exit status 1 or a crash.
    argv = ["--manifest", str(exported), "--interface", "virtual", "--n-ticks", "1", *extra]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err


def test_model_that_does_not_fit_its_manifest_is_exit_2(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Former code: OnnxPolicy's ValueError escaped main() as a traceback.
    manifest = load_manifest(exported)
    wrong = dataclasses.replace(
        manifest, model=dataclasses.replace(manifest.model, input_name="not_the_input")
    )
    shutil.copy(exported.parent / manifest.model.file, tmp_path / manifest.model.file)
    wrong.save(tmp_path / "manifest.json")
    argv = ["--manifest", str(tmp_path / "manifest.json"), "--interface", "virtual"]
    assert edge_main([*argv, "--n-ticks", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "not_the_input" in err


def test_signal_map_template_loads_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Former code: no subcommand ("--manifest is required").
    assert edge_main(["signal-map", "--template"]) == 0
    text = capsys.readouterr().out
    try:
        json.loads(text)
        path = tmp_path / "map.json"
    except json.JSONDecodeError:  # the codec's template may be YAML
        path = tmp_path / "map.yaml"
    path.write_text(text)
    assert SignalMap.load(path) == SignalMap.default()
    with pytest.raises(SystemExit) as exc:
        edge_main(["signal-map"])
    assert exc.value.code == 2


def test_fixed_site_runs_without_site_frames(
    exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--manifest", str(exported), "--interface", "virtual", "--channel", f"site-{os.getpid()}",
        "--tick-s", "0.01", "--n-ticks", "3", "--site", "fixed:500",
    ]  # fmt: skip
    assert edge_main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["site_frames"] == 0.0
    assert printed["ticks"] == 3.0


# ---------------------------------------------------------------- SIGTERM / SIGINT, real process


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_at_once_safe_and_prints_the_summary(
    exported: Path, signum: signal.Signals
) -> None:
    # Former code: after the signal the loop waited for the next tick (here up to 1 s),
    # sent that tick with enabled set-points, and only then the safe state.
    from can.interfaces.udp_multicast import UdpMulticastBus

    manifest = load_manifest(exported)
    n = manifest.n_packs
    limits = manifest.pack_limits()
    codec = CanCodec(n)
    port = _free_udp_port()
    group = UdpMulticastBus.DEFAULT_GROUP_IPv4
    try:
        bus = can.Bus(interface="udp_multicast", channel=group, port=port)
    except OSError as exc:  # no multicast route in this sandbox
        pytest.skip(f"udp_multicast unavailable: {exc}")
    cmd = [
        sys.executable, "-m", "pulsebms.edge_runtime", "--manifest", str(exported),
        "--interface", "udp_multicast", "--channel", group, "--bus-option", f"port={port}",
        "--tick-s", "1.0", "--telemetry-period-s", "0.1", "--stale-after-s", "1.0",
        "--site", "fixed:0", "--log-level", "ERROR",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    counter = 0
    next_send = 0.0

    def pump(until_s: float) -> list[tuple[float, SetpointFrame]]:
        """Send telemetry every 0.1 s, collect commands until ``until_s``."""
        nonlocal counter, next_send
        got = []
        while (now := time.monotonic()) < until_s:
            if now >= next_send:
                for i in range(n):
                    lim = limits[i]
                    values = {
                        "soc": 0.5, "soh": 0.98, "current_a": 0.0, "temperature_c": 25.0,
                        "cell_voltage_v": 0.5 * (lim.cell_voltage_min_v + lim.cell_voltage_max_v),
                    }  # fmt: skip
                    for msg in codec.encode_telemetry(i, values, counter=counter):
                        bus.send(msg)
                counter += 1
                next_send = now + 0.1
            msg = bus.recv(timeout=0.005)
            frame = None if msg is None else codec.decode(msg)
            if isinstance(frame, SetpointFrame):
                got.append((time.monotonic(), frame))
            if proc.poll() is not None:
                break
        return got

    try:
        start = time.monotonic()
        enabled_at = None
        while enabled_at is None and time.monotonic() - start < 60.0 and proc.poll() is None:
            frames = pump(time.monotonic() + 0.05)
            on = [t for t, f in frames if f.enable]
            if len({f.pack for t, f in frames if f.enable}) == n:
                enabled_at = max(on)
        assert enabled_at is not None, f"the runtime never enabled the packs: {proc.poll()}"
        pump(enabled_at + 0.2)  # mid-interval: the next tick is ~0.8 s away
        t_signal = time.monotonic()
        proc.send_signal(signum)
        after = pump(t_signal + 3.0)
        exit_s = time.monotonic() - t_signal
        out, err = proc.communicate(timeout=5.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        bus.shutdown()
    assert proc.returncode == 0, err
    assert exit_s < 1.0
    assert not [f for t, f in after if f.enable], "an enabled command after the signal"
    first_safe = {}
    for t, f in after:
        first_safe.setdefault(f.pack, t - t_signal)
    assert sorted(first_safe) == list(range(n))
    assert max(first_safe.values()) <= 0.05, first_safe
    summary = json.loads(out)
    assert summary["ticks"] >= 2
    assert signal.Signals(signum).name in err


def test_map_without_a_site_frame_needs_a_site_source(
    exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from importlib import resources

    data = resources.files("pulsebms.edge_runtime").joinpath("data")
    dbc, smap = data.joinpath("foreign_bms.dbc"), data.joinpath("foreign_bms.json")
    if not (hasattr(CanCodec, "has_site") and dbc.is_file() and smap.is_file()):
        pytest.skip("needs the signal map v2 codec and its example map without a site frame")
    base = ["--manifest", str(exported), "--interface", "virtual", "--n-ticks", "1"]
    argv = [*base, "--dbc", str(dbc), "--signal-map", str(smap)]
    assert edge_main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("give --site fixed:DEMAND_W or --site csv:PATH")
    assert "Traceback" not in err
