"""Codec: round trips, configurable signal maps, malformed frames never raise."""

from __future__ import annotations

from pathlib import Path

import can
import numpy as np
import pytest

from pulsebms.edge_runtime.codec import (
    CanCodec,
    IgnoredFrame,
    MalformedFrame,
    SetpointFrame,
    SignalMap,
    SignalRef,
    SiteFrame,
    TelemetryFrame,
    default_dbc_path,
)

VALUES = {
    "soc": 0.555,
    "soh": 0.981,
    "temperature_c": 25.5,
    "cell_voltage_v": 3.651,
    "current_a": -12.3,
}


def test_telemetry_round_trip_with_scaling() -> None:
    codec = CanCodec(4)
    (msg,) = codec.encode_telemetry(3, VALUES, status=1, counter=17)
    assert msg.arbitration_id == 0x103
    assert not msg.is_extended_id
    assert msg.dlc == 8
    frame = codec.decode(msg)
    assert isinstance(frame, TelemetryFrame)
    assert frame.pack == 3
    assert frame.status == 1
    assert frame.counter == 17 % 16
    for key, value in VALUES.items():
        assert frame.values[key] == pytest.approx(value, abs=1e-9)


def test_setpoint_and_site_round_trip() -> None:
    codec = CanCodec(4)
    sp = codec.decode(codec.encode_setpoint(2, -750.4, reason=5, counter=9))
    assert isinstance(sp, SetpointFrame)
    assert (sp.pack, sp.power_w, sp.mode, sp.enable, sp.reason, sp.counter) == (
        2, -750.0, 1, True, 5, 9,
    )  # fmt: skip
    safe = codec.decode(codec.encode_setpoint(1, 900.0, safe=True))
    assert isinstance(safe, SetpointFrame)
    assert safe.power_w == 0.0
    assert safe.enable is False
    site = codec.decode(
        codec.encode_site(-1234.0, price_per_kwh=0.31, time_of_day_s=7200.0, ambient_c=12.5)
    )
    assert isinstance(site, SiteFrame)
    assert site.values == pytest.approx(
        {"demand_w": -1234.0, "price_per_kwh": 0.31, "time_of_day_s": 7200.0, "ambient_c": 12.5}
    )


def test_out_of_range_setpoint_is_clipped_not_raised() -> None:
    codec = CanCodec(1)
    frame = codec.decode(codec.encode_setpoint(0, 1e12))
    assert isinstance(frame, SetpointFrame)
    assert frame.power_w == 8388607.0
    frame = codec.decode(codec.encode_setpoint(0, float("nan")))
    assert isinstance(frame, SetpointFrame)
    assert frame.power_w == 0.0


def _std(arbitration_id: int, data: bytes = b"", **kwargs: object) -> can.Message:
    return can.Message(arbitration_id=arbitration_id, is_extended_id=False, data=data, **kwargs)


@pytest.mark.parametrize(
    ("msg", "kind", "pack"),
    [
        (_std(0x101, b"\x00" * 3), MalformedFrame, 1),
        (_std(0x102, b"\xff" * 8), MalformedFrame, 2),
        (_std(0x7F0, b"\x00" * 8), IgnoredFrame, None),
        (can.Message(arbitration_id=0x101, data=b"\x00" * 8), IgnoredFrame, None),  # extended
        (_std(0x101, is_remote_frame=True, dlc=8), IgnoredFrame, None),
        (can.Message(arbitration_id=0, is_error_frame=True), MalformedFrame, None),
        (_std(0x080), MalformedFrame, None),
    ],
    ids=["short", "out-of-dbc-range", "unknown-id", "extended-id", "remote", "error", "empty-site"],
)  # fmt: skip
def test_bad_frames_are_reported(msg: can.Message, kind: type, pack: int | None) -> None:
    frame = CanCodec(3).decode(msg)
    assert isinstance(frame, kind)
    if isinstance(frame, MalformedFrame):
        assert frame.pack == pack
        assert frame.reason


def test_decode_never_raises_on_garbage() -> None:
    codec = CanCodec(3)
    rng = np.random.default_rng(0)
    ids = [0x080, 0x100, 0x101, 0x102, 0x300, 0x7FF, 0x1FFFFFFF]
    for _ in range(3000):
        length = int(rng.integers(0, 9))
        msg = can.Message(
            arbitration_id=int(rng.choice(ids)) & 0x7FF,
            is_extended_id=bool(rng.integers(0, 2)),
            data=rng.integers(0, 256, length, dtype=np.uint8).tobytes(),
        )
        codec.decode(msg)  # returns a frame of some kind, never raises


def test_signal_map_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    import json

    path.write_text(json.dumps(SignalMap.default().to_dict()))
    assert SignalMap.load(path) == SignalMap.default()


OTHER_DBC = """VERSION ""
NS_ :
BS_:
BU_: BMS CTRL
BO_ 1536 BmsStatus: 8 BMS
 SG_ StateOfCharge : 0|16@1+ (0.001,0) [0|1] "" CTRL
 SG_ Health : 16|8@1+ (0.5,0) [0|100] "%" CTRL
 SG_ TempK : 24|16@1+ (0.1,0) [0|500] "K" CTRL
BO_ 1600 BmsElectrical: 8 BMS
 SG_ CellMilliVolt : 0|16@1+ (1,0) [0|5000] "mV" CTRL
 SG_ Amps : 16|16@1- (0.01,0) [-300|300] "A" CTRL
BO_ 1792 PowerCommand: 4 CTRL
 SG_ KiloWatt : 0|16@1- (0.01,0) [-300|300] "kW" BMS
BO_ 64 Site: 4 CTRL
 SG_ SiteKiloWatt : 0|32@1- (0.001,0) [-1000000|1000000] "kW" BMS
"""


def test_another_dbc_is_wired_by_configuration_only(tmp_path: Path) -> None:
    dbc = tmp_path / "other.dbc"
    dbc.write_text(OTHER_DBC)
    smap = SignalMap.from_v1(
        telemetry={
            "soc": SignalRef("BmsStatus", "StateOfCharge"),
            "soh": SignalRef("BmsStatus", "Health", 0.01),
            "temperature_c": SignalRef("BmsStatus", "TempK", 1.0, -273.15),
            "cell_voltage_v": SignalRef("BmsElectrical", "CellMilliVolt", 0.001),
            "current_a": SignalRef("BmsElectrical", "Amps"),
        },
        setpoint={"power_w": SignalRef("PowerCommand", "KiloWatt", 1000.0)},
        site={"demand_w": SignalRef("Site", "SiteKiloWatt", 1000.0)},
        id_stride=2,
    )
    codec = CanCodec(2, dbc_path=dbc, signal_map=smap)
    frames = codec.encode_telemetry(1, VALUES)
    assert sorted(m.arbitration_id for m in frames) == [1536 + 2, 1600 + 2]
    decoded = [codec.decode(m) for m in frames]
    merged: dict[str, float] = {}
    for frame in decoded:
        assert isinstance(frame, TelemetryFrame)
        assert frame.pack == 1
        merged.update(frame.values)
    assert merged == pytest.approx(VALUES, abs=0.06)
    sp = codec.decode(codec.encode_setpoint(1, 1500.0))
    assert isinstance(sp, SetpointFrame)
    assert sp.power_w == pytest.approx(1500.0)
    assert sp.enable is None  # not mapped in this DBC


_V1_TELEMETRY = {
    "soc": SignalRef("PackTelemetry", "SoC", 0.01),
    "soh": SignalRef("PackTelemetry", "SoH", 0.01),
    "temperature_c": SignalRef("PackTelemetry", "Temperature"),
    "cell_voltage_v": SignalRef("PackTelemetry", "CellVoltage"),
    "current_a": SignalRef("PackTelemetry", "Current"),
    "status": SignalRef("PackTelemetry", "Status"),
    "counter": SignalRef("PackTelemetry", "Counter"),
}


def test_v1_map_of_the_project_dbc_equals_the_default() -> None:
    v1 = SignalMap.from_v1(
        _V1_TELEMETRY,
        {
            "power_w": SignalRef("PackSetpoint", "PowerSetpoint"),
            "mode": SignalRef("PackSetpoint", "Mode"),
            "enable": SignalRef("PackSetpoint", "Enable"),
            "reason": SignalRef("PackSetpoint", "Reason"),
            "counter": SignalRef("PackSetpoint", "Counter"),
        },
        {
            "demand_w": SignalRef("SiteStatus", "Demand"),
            "price_per_kwh": SignalRef("SiteStatus", "Price"),
            "time_of_day_s": SignalRef("SiteStatus", "TimeOfDay", 60.0),
            "ambient_c": SignalRef("SiteStatus", "AmbientTemperature"),
            "counter": SignalRef("SiteStatus", "Counter"),
        },
    )
    assert v1 == SignalMap.default()


def test_bad_signal_map_is_rejected(tmp_path: Path) -> None:
    sp = {"power_w": SignalRef("PackSetpoint", "PowerSetpoint")}
    site = {"demand_w": SignalRef("SiteStatus", "Demand")}
    with pytest.raises(ValueError, match="missing 'current_a'"):
        SignalMap.from_v1({}, sp, site)
    v1 = {  # the v1 JSON form still loads
        "telemetry": {k: vars(v) for k, v in _V1_TELEMETRY.items()},
        "setpoint": {"power_w": {"message": "PackSetpoint", "signal": "PowerSetpoint"}},
        "site": {"demand_w": {"message": "Nope", "signal": "X"}},
    }
    smap = SignalMap.from_dict(v1)
    with pytest.raises(ValueError, match="no message 'Nope'"):
        CanCodec(2, signal_map=smap)


def test_project_dbc_ships_and_addresses_up_to_512_packs() -> None:
    assert default_dbc_path().is_file()
    codec = CanCodec(512)
    assert codec.frame_id("telemetry", 511) == 0x2FF
    assert codec.frame_id("setpoint", 511) == 0x4FF
    with pytest.raises(ValueError, match="collides"):
        CanCodec(513)
