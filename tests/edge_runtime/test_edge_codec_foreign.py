"""Signal map v2: the AX-BMS example DBC wired by configuration only, and what v2 adds."""

from __future__ import annotations

import dataclasses
import json
import math
import runpy
from pathlib import Path

import can
import numpy as np
import pytest

from pulsebms.edge_runtime.codec import (
    FOREIGN_DBC,
    FOREIGN_SIGNAL_MAP,
    CanCodec,
    IgnoredFrame,
    MalformedFrame,
    SetpointFrame,
    SignalMap,
    TelemetryFrame,
    default_dbc_path,
    signal_map_template,
)
from pulsebms.edge_runtime.signal_map import CommandMap, checksum, data_path

DBC = data_path(FOREIGN_DBC)
VALUES = {
    "soc": 0.555,
    "soh": 0.981,
    "current_a": 12.3,  # + = discharge for us; AX-BMS sends -12.3 (+ = charge)
    "cell_voltage_v": 3.301,
    "temperature_c": 25.3,
}


def foreign_map() -> SignalMap:
    return SignalMap.load(data_path(FOREIGN_SIGNAL_MAP))


def codec(n_packs: int = 3, smap: SignalMap | None = None, backend: str = "compiled") -> CanCodec:
    return CanCodec(n_packs, dbc_path=DBC, signal_map=smap or foreign_map(), backend=backend)


def by_message(frames: list[can.Message], c: CanCodec) -> dict[str, list[TelemetryFrame]]:
    out: dict[str, list[TelemetryFrame]] = {}
    for msg in frames:
        frame = c.decode(msg)
        assert isinstance(frame, TelemetryFrame), frame
        out.setdefault(frame.message, []).append(frame)
    return out


def test_committed_dbc_is_the_generator_output() -> None:
    script = Path(str(DBC)).with_name("make_foreign_dbc.py")
    render = runpy.run_path(str(script))["render"]
    assert DBC.read_text(encoding="utf-8") == render()


def test_foreign_telemetry_decodes_to_our_quantities() -> None:
    c = codec()
    frames = c.encode_telemetry(2, VALUES, counter=5)
    assert len(frames) == 3 + 52  # status, voltages, temperatures, 52 cell blocks
    # explicit per-pack ids from the map (not DBC id + stride), on pack 2's bus
    assert {m.arbitration_id for m in frames[:3]} == {0x328, 0x329, 0x32A}
    assert c.bus_of(2) == "bms_b"
    assert c.bus_names == ("bms_a", "bms_b")
    status = frames[0]
    # Motorola byte order, 0.1 % steps: SOC 555 = 0x022B in bytes 0-1, SOH 981 = 0x03D5
    assert status.data[:4] == bytes([0x02, 0x2B, 0x03, 0xD5])
    assert int.from_bytes(status.data[4:6], "big", signed=True) == -123  # + = charge
    assert status.data[7] == checksum("crc8_sae_j1850", bytes(status.data[:7]))
    decoded = by_message(frames, c)
    (st,) = decoded["BMS_Status"]
    assert st.values == pytest.approx({"soc": 0.555, "soh": 0.981, "current_a": 12.3})
    assert (st.bms_state, st.counter, st.checksum_ok, st.status, st.bus) == (
        1,
        5,
        True,
        None,
        "bms_b",
    )
    (volts,) = decoded["BMS_Voltages"]
    (temps,) = decoded["BMS_Temperatures"]
    merged = {**volts.values, **temps.values}
    assert merged == pytest.approx(
        {
            "cell_voltage_v": 3.301,
            "cell_voltage_min_v": 3.301,
            "cell_voltage_max_v": 3.301,
            "temperature_c": 25.3,
            "temperature_min_c": 25.3,
            "temperature_max_c": 25.3,
        }
    )


def test_multiplexed_cell_voltages_with_invalid_flags() -> None:
    c = codec()
    cells = {k: 3.0 + k / 1000.0 for k in range(208)}
    del cells[77]  # not measured: sent invalid
    frames = c.encode_telemetry(0, VALUES, cell_voltages_v=cells, invalid_cells=(5, 130))
    blocks = by_message(frames, c)["BMS_CellVoltages"]
    assert len(blocks) == 52
    assert all(b.values == {} for b in blocks)
    got: dict[int, float] = {}
    invalid: list[int] = []
    for b in blocks:
        assert len(b.cell_voltages_v) + len(b.invalid_cells) == 4
        got.update(b.cell_voltages_v)
        invalid += b.invalid_cells
    assert sorted(invalid) == [5, 77, 130]
    expected = {k: v for k, v in cells.items() if k not in (5, 130)}
    assert got == pytest.approx(expected, abs=1e-9)
    # block 19 carries cells 76..79: the frame says so by its mux value
    (b19,) = [b for b in blocks if 76 in b.cell_voltages_v]
    assert sorted([*b19.cell_voltages_v, *b19.invalid_cells]) == [76, 77, 78, 79]


@pytest.mark.parametrize(
    ("power_w", "safe", "state", "charge_a", "discharge_a"),
    [
        (5000.0, False, "discharge", 0.0, 100.0),
        (-2500.0, False, "charge", 50.0, 0.0),
        (5000.0, True, "standby", 0.0, 0.0),
        (0.5, False, "standby", 0.0, 0.0),  # below standby_below_w
        (math.nan, False, "standby", 0.0, 0.0),
        (1e9, False, "discharge", 0.0, 3000.0),  # clipped to the DBC range
    ],
)
def test_state_request_command(
    power_w: float, safe: bool, state: str, charge_a: float, discharge_a: float
) -> None:
    c = codec()
    ((bus, msg),) = c.encode_command(
        1, power_w, safe=safe, reason=6, counter=3, pack_voltage_v=50.0
    )
    assert (bus, msg.arbitration_id) == ("bms_a", 0x088)
    frame = c.decode(msg)
    assert isinstance(frame, SetpointFrame)
    assert (frame.state, frame.reason, frame.counter, frame.checksum_ok) == (state, 6, 3, True)
    assert frame.charge_limit == pytest.approx(charge_a)
    assert frame.discharge_limit == pytest.approx(discharge_a)
    assert frame.enabled == (state != "standby")
    if state != "standby" and abs(power_w) < 1e6:
        assert frame.power_w_at(50.0) == pytest.approx(power_w, abs=5.0)  # 0.1 A × 50 V


def test_state_request_voltage_fallbacks() -> None:
    c = codec()
    frame = c.decode(c.encode_setpoint(0, 5120.0))  # no voltage: the map's nominal 51.2 V
    assert isinstance(frame, SetpointFrame)
    assert frame.discharge_limit == pytest.approx(100.0)
    c.pack_voltage_v[0] = 40.0  # whoever knows better sets it
    frame = c.decode(c.encode_setpoint(0, 4000.0))
    assert isinstance(frame, SetpointFrame)
    assert frame.discharge_limit == pytest.approx(100.0)
    smap = foreign_map()
    no_nominal = dataclasses.replace(
        smap, command=dataclasses.replace(smap.command, nominal_pack_voltage_v=None)
    )
    c = codec(smap=no_nominal)
    frame = c.decode(c.encode_setpoint(0, 4000.0))
    assert isinstance(frame, SetpointFrame)
    assert frame.state == "standby"  # a current limit without a voltage: documented standby


def _corrupt(msg: can.Message) -> can.Message:
    data = bytearray(msg.data)
    data[7] ^= 0xFF
    return can.Message(arbitration_id=msg.arbitration_id, is_extended_id=False, data=bytes(data))


def test_checksum_errors_are_tolerated_then_malformed() -> None:
    c = codec()
    for k in range(3):  # a clean start
        c.decode(c.encode_telemetry(0, VALUES, counter=k)[0])
    bad = [_corrupt(c.encode_telemetry(0, VALUES, counter=3 + k)[0]) for k in range(3)]
    first, second, third = (c.decode(m) for m in bad)
    for n, frame in ((1, first), (2, second)):
        assert isinstance(frame, TelemetryFrame)
        assert (frame.checksum_ok, frame.integrity_errors, frame.values) == (False, n, {})
    assert isinstance(third, MalformedFrame)
    assert third.pack == 0
    assert "3 counter/checksum errors in a row (tolerance 2)" in third.reason
    # after the lost frames the counter resynchronises: the next good frame is clean
    good = c.decode(c.encode_telemetry(0, VALUES, counter=6)[0])
    assert isinstance(good, TelemetryFrame)
    assert (good.checksum_ok, good.integrity_errors) == (True, 0)
    assert good.values["soc"] == pytest.approx(0.555)


def test_map_tolerances_for_the_runtime() -> None:
    smap = foreign_map()
    assert (smap.counter_tolerance, smap.checksum_tolerance) == (2, 2)
    assert (SignalMap.default().counter_tolerance, SignalMap.default().checksum_tolerance) == (0, 0)


def test_a_bit_error_is_a_checksum_error_not_a_range_error() -> None:
    c = codec()
    msg = c.encode_telemetry(0, VALUES)[0]
    flipped = bytes([msg.data[0] ^ 0xFF, *msg.data[1:]])  # SOC would read 6527 %
    frame = c.decode(
        can.Message(arbitration_id=msg.arbitration_id, is_extended_id=False, data=flipped)
    )
    assert isinstance(frame, TelemetryFrame)
    assert (frame.checksum_ok, frame.values, frame.integrity_errors) == (False, {}, 1)


def test_counter_errors_are_tolerated_then_malformed_per_pack() -> None:
    c = codec()
    seq = [0, 1, 2, 2, 2, 2, 3]  # stuck three times: the third is one too many
    frames = [c.decode(c.encode_telemetry(1, VALUES, counter=k)[0]) for k in seq]
    errors = [f.integrity_errors if isinstance(f, TelemetryFrame) else -1 for f in frames]
    assert errors == [0, 0, 0, 1, 2, -1, 0]
    assert isinstance(frames[3], TelemetryFrame)
    assert frames[3].values  # a lost/repeated counter does not make the values untrusted
    # pack 0 has its own history
    ok = c.decode(c.encode_telemetry(0, VALUES, counter=9)[0])
    assert isinstance(ok, TelemetryFrame)
    assert ok.integrity_errors == 0
    c.reset_integrity()
    again = c.decode(c.encode_telemetry(1, VALUES, counter=2)[0])
    assert isinstance(again, TelemetryFrame)
    assert again.integrity_errors == 0


def test_ids_that_collide_with_ours_need_their_own_dbc() -> None:
    # foreign alone: fine, although 0x080/0x100/0x300 are our site/telemetry/set-point ids
    assert codec().frame_id("command", 0) == 0x080
    with pytest.raises(ValueError, match=r"0x80 of EMS_Request.*SiteStatus of pulsebms.dbc"):
        CanCodec(3, dbc_path=[DBC, default_dbc_path()], signal_map=foreign_map())
    with pytest.raises(ValueError, match=r"0x300 of PackSetpoint.*BMS_Status of foreign_bms.dbc"):
        CanCodec(3, dbc_path=[default_dbc_path(), DBC])


def test_unmapped_messages_and_buses_take_part_in_the_collision_check() -> None:
    smap = foreign_map()
    status = smap.telemetry[0]
    to_info = dataclasses.replace(status, frame_ids=(0x300, 0x100, 0x328))
    hit = dataclasses.replace(smap, telemetry=(to_info, *smap.telemetry[1:]))
    with pytest.raises(ValueError, match=r"0x100 of BMS_Status \(pack 1.*BMS_Info"):
        codec(smap=hit)
    # identical BMSs with identical ids on one bus are refused (see the next test for two)
    twice = dataclasses.replace(status, frame_ids=(0x300, 0x300, 0x328))
    with pytest.raises(ValueError, match="collides on bus 'bms_a'"):
        codec(smap=dataclasses.replace(smap, telemetry=(twice, *smap.telemetry[1:])))


def test_same_ids_on_separate_buses() -> None:
    smap = foreign_map()
    telemetry = tuple(
        dataclasses.replace(m, frame_ids=(m.frame_ids or (0,))[:1] * 2) for m in smap.telemetry
    )
    cmd = dataclasses.replace(smap.command.message, frame_ids=(0x080, 0x080))
    same = dataclasses.replace(
        smap,
        telemetry=telemetry,
        command=dataclasses.replace(smap.command, message=cmd),
        buses={"left": (0,), "right": (1,)},
    )
    c = codec(2, same)
    msg = c.encode_telemetry(1, VALUES)[0]
    assert msg.arbitration_id == 0x300
    frame = c.decode(msg, bus="right")
    assert isinstance(frame, TelemetryFrame)
    assert frame.pack == 1
    left = c.decode(c.encode_telemetry(0, VALUES)[0], bus="left")
    assert isinstance(left, TelemetryFrame)
    assert left.pack == 0
    ambiguous = c.decode(msg)  # which bus? the codec does not guess
    assert isinstance(ambiguous, IgnoredFrame)
    assert "several buses" in ambiguous.reason
    assert isinstance(c.decode(msg, bus="nowhere"), IgnoredFrame)
    with pytest.raises(ValueError, match=r"packs \[2\] are on no bus"):
        codec(3, same)


def test_backends_give_identical_frames() -> None:
    compiled, reference = codec(backend="compiled"), codec(backend="cantools")
    assert reference.layout_backend == "_CantoolsLayout"
    rng = np.random.default_rng(1)
    for k in range(40):
        values = {
            "soc": float(rng.uniform(0, 1)),
            "soh": float(rng.uniform(0.5, 1)),
            "current_a": float(rng.uniform(-300, 300)),
            "cell_voltage_v": float(rng.uniform(2.5, 4.2)),
            "temperature_c": float(rng.uniform(-20, 60)),
        }
        a = compiled.encode_telemetry(k % 3, values, counter=k)
        b = reference.encode_telemetry(k % 3, values, counter=k)
        assert [bytes(m.data) for m in a] == [bytes(m.data) for m in b]
        assert [compiled.decode(m) for m in a] == [reference.decode(m) for m in b]
        p = float(rng.uniform(-5e3, 5e3))
        ca = compiled.encode_command(k % 3, p, counter=k, pack_voltage_v=48.0)
        cb = reference.encode_command(k % 3, p, counter=k, pack_voltage_v=48.0)
        assert [bytes(m.data) for _, m in ca] == [bytes(m.data) for _, m in cb]
    with pytest.raises(ValueError, match="backend"):
        codec(backend="fast")


def test_foreign_decode_never_raises_on_garbage() -> None:
    c = codec()
    rng = np.random.default_rng(0)
    ids = [0x080, 0x088, 0x100, 0x300, 0x303, 0x310, 0x328, 0x32B]
    kinds: set[str] = set()
    for _ in range(3000):
        msg = can.Message(
            arbitration_id=int(rng.choice(ids)),
            is_extended_id=False,
            data=rng.integers(0, 256, int(rng.integers(0, 9)), dtype=np.uint8).tobytes(),
        )
        kinds.add(type(c.decode(msg)).__name__)
    assert {"MalformedFrame", "IgnoredFrame", "TelemetryFrame"} <= kinds


def test_signal_map_files_round_trip(tmp_path: Path) -> None:
    smap = foreign_map()
    path = tmp_path / "map.json"
    path.write_text(json.dumps(smap.to_dict()))
    assert SignalMap.load(path) == smap
    yaml = pytest.importorskip("yaml")
    ypath = tmp_path / "map.yaml"
    ypath.write_text(yaml.safe_dump(smap.to_dict()))
    assert SignalMap.load(ypath) == smap
    assert SignalMap.from_dict(json.loads(signal_map_template())) == SignalMap.default()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(version=3), "version 3"),
        (lambda d: d["telemetry"][0].update(bogus=1), r"unknown keys \['bogus'\]"),
        (lambda d: d.update(telemetry=d["telemetry"][::2]), "cell_voltage_v"),
        (lambda d: d["command"]["signals"].pop("state"), "map 'state' and one limit pair"),
        (lambda d: d["command"]["states"].update(charge=0), "distinct codes"),
        (lambda d: d["telemetry"][0]["checksum"].update(algorithm="md5"), "unknown checksum"),
        (lambda d: d["telemetry"][0]["checksum"].update(signal="SOC"), "byte-aligned 8-bit"),
        (lambda d: d["buses"].update(bms_b=[1, 2]), "pack 1 is on buses"),
        (lambda d: d["telemetry"][0]["signals"].update(soc="SoC"), "no signal 'SoC'"),
        (lambda d: d["command"]["frame_ids"].pop(), "pack 2 has none"),
        (lambda d: d["telemetry"][3]["cells"].update(count=209), "no signal 'Cell208_Voltage'"),
    ],
)
def test_bad_v2_maps_are_refused_clearly(edit: object, match: str) -> None:
    data = foreign_map().to_dict()
    data["command"]["frame_ids"] = data["command"]["frame_ids"][:3]
    edit(data)  # type: ignore[operator]
    with pytest.raises(ValueError, match=match):
        codec(smap=SignalMap.from_dict(data))


def test_command_map_needs_power_or_limits() -> None:
    msg = foreign_map().command.message
    with pytest.raises(ValueError, match="'power_w' must be mapped"):
        CommandMap("setpoint", dataclasses.replace(msg, signals={}))
