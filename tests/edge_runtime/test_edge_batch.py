"""Batches against the per-frame path they must equal (codec and runtime).

Property tests (unknown bug shapes): hypothesis draws drains of frames — clean telemetry,
limit violations, BMS faults, stuck and skipped counters, corrupted checksums, short
frames, random payloads (values outside the DBC ranges), two frames of one pack, site
frames, command echoes, unknown ids, error and remote frames, in any order — and hands
each drain to a runtime whose codec batches (:meth:`EdgeRuntime.handle_messages`) and to
one that does not (:meth:`EdgeRuntime.handle_message` frame by frame). Both must end in
the same state after every drain and every tick: store, safe states, reasons, counters,
metrics, each pack's events and sent frames in order, estimator state. The codec's own
batch (:meth:`CanCodec.decode_batch`, :meth:`CanCodec.encode_commands`) is compared with
its per-frame calls the same way, the foreign DBC (Motorola, CRC-8, two buses) included.
Regression tests (known shapes): a violation in a drain puts its pack safe at once, the
batch threshold, subclasses that change the per-frame path, the vectorised limit
pre-check and store writes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import can
import numpy as np
import pytest
from edge_helpers import GOOD, ConstantPolicy, FakeClock, make_manifest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulsebms.edge_runtime.codec import (
    FOREIGN_DBC,
    FOREIGN_SIGNAL_MAP,
    CanCodec,
    SignalMap,
    TelemetryFrame,
)
from pulsebms.edge_runtime.runtime import EdgeRuntime, SafeReason
from pulsebms.edge_runtime.signal_map import (
    CommandMap,
    IntegrityCheck,
    MessageMap,
    ScaledSignal,
    data_path,
)
from pulsebms.edge_runtime.telemetry import TelemetryStore

# A project-like DBC with a CRC-8 and a checked counter on telemetry, and a sum-8 on
# commands: the integrity checks of the batch paths, on the runtime's own path.
CHECKED_DBC = """VERSION ""

BU_: EDGE PACK SITE

BO_ 128 SiteStatus: 8 SITE
 SG_ Demand : 0|24@1- (1,0) [-8388608|8388607] "W" EDGE
 SG_ Price : 24|16@1- (0.0001,0) [-3.2768|3.2767] "currency/kWh" EDGE
 SG_ TimeOfDay : 40|11@1+ (1,0) [0|1439] "min" EDGE
 SG_ AmbientTemperature : 51|8@1+ (0.5,-40) [-40|87.5] "degC" EDGE
 SG_ Counter : 60|4@1+ (1,0) [0|15] "" EDGE

BO_ 256 PackTelemetry: 8 PACK
 SG_ SoC : 0|10@1+ (0.1,0) [0|100] "%" EDGE
 SG_ SoH : 10|10@1+ (0.1,0) [0|100] "%" EDGE
 SG_ Temperature : 20|8@1+ (0.5,-40) [-40|87.5] "degC" EDGE
 SG_ CellVoltage : 28|13@1+ (0.001,0) [0|8.191] "V" EDGE
 SG_ Current : 41|11@1- (0.5,0) [-512|511.5] "A" EDGE
 SG_ Counter : 52|4@1+ (1,0) [0|15] "" EDGE
 SG_ Checksum : 56|8@1+ (1,0) [0|255] "" EDGE

BO_ 768 PackSetpoint: 8 EDGE
 SG_ PowerSetpoint : 0|24@1- (1,0) [-8388608|8388607] "W" PACK
 SG_ Mode : 24|2@1+ (1,0) [0|3] "" PACK
 SG_ Enable : 26|1@1+ (1,0) [0|1] "" PACK
 SG_ Reason : 32|8@1+ (1,0) [0|255] "" PACK
 SG_ Counter : 44|4@1+ (1,0) [0|15] "" PACK
 SG_ Checksum : 56|8@1+ (1,0) [0|255] "" PACK
"""


def checked_map() -> SignalMap:
    default = SignalMap.default()
    telemetry = MessageMap(
        "PackTelemetry",
        {
            "soc": ScaledSignal("SoC", 0.01),
            "soh": ScaledSignal("SoH", 0.01),
            "temperature_c": ScaledSignal("Temperature"),
            "cell_voltage_v": ScaledSignal("CellVoltage"),
            "current_a": ScaledSignal("Current"),
        },
        counter=IntegrityCheck("Counter", max_errors=1),
        checksum=IntegrityCheck("Checksum", max_errors=1, algorithm="crc8_sae_j1850"),
    )
    command = MessageMap(
        "PackSetpoint",
        dict(default.command.message.signals),
        counter=IntegrityCheck("Counter"),
        checksum=IntegrityCheck("Checksum", algorithm="sum8"),
    )
    return SignalMap(
        telemetry=(telemetry,), command=CommandMap("setpoint", command), site=default.site
    )


@pytest.fixture(scope="module")
def checked_dbc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dbc") / "checked.dbc"
    path.write_text(CHECKED_DBC, encoding="utf-8")
    return path


CodecFactory = Callable[[int, bool], CanCodec]


@pytest.fixture(scope="module", params=["project", "checked", "two buses"])
def make_codec(request: pytest.FixtureRequest, checked_dbc: Path) -> CodecFactory:
    def factory(n: int, batch: bool) -> CanCodec:
        if request.param == "project":
            codec = CanCodec(n, batch=batch)
        elif request.param == "two buses":  # one bus object serving both names
            half = n // 2
            buses = {"rack_a": tuple(range(half)), "rack_b": tuple(range(half, n))}
            smap = dataclasses.replace(SignalMap.default(), buses=buses)
            codec = CanCodec(n, signal_map=smap, batch=batch)
        else:
            codec = CanCodec(n, dbc_path=checked_dbc, signal_map=checked_map(), batch=batch)
        codec.batch_min_frames = 2  # small fleets take the batch path too
        return codec

    return factory


class RecordingBus(can.BusABC):
    """Keeps what is sent (id, payload); receives nothing."""

    def __init__(self) -> None:
        super().__init__(channel="recording")
        self.sent: list[tuple[int, bytes]] = []

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        self.sent.append((msg.arbitration_id, bytes(msg.data)))

    def _recv_internal(self, timeout: float | None) -> tuple[None, bool]:
        return None, False


# ---------------------------------------------------------------------------- drains
_VALUES = st.fixed_dictionaries(
    {
        "soc": st.sampled_from([0.5, 0.5, 0.02, 0.97, 0.3]),
        "soh": st.sampled_from([0.98, 0.98, 0.5]),
        "temperature_c": st.sampled_from([25.0, 25.0, 75.0, -30.0, 59.5]),
        "cell_voltage_v": st.sampled_from([3.7, 3.7, 4.5, 2.0, 4.19]),
        "current_a": st.sampled_from([1.0, 1.0, -40.0, 300.0, 0.0]),
    }
)


@st.composite
def drains(draw: st.DrawFn, codec: CanCodec, counters: list[int]) -> list[can.Message]:
    """One drain: per pack 0..2 telemetry frames of any kind, extras, in any order."""
    n = codec.n_packs
    msgs: list[can.Message] = []
    for pack in range(n):
        for _ in range(draw(st.sampled_from([1, 1, 1, 1, 0, 2]))):
            values = {**GOOD, **draw(_VALUES)}
            status = draw(st.sampled_from([0, 0, 0, 0, 2, 1]))
            step = draw(st.sampled_from([1, 1, 1, 1, 0, 2, 7]))  # 0: stuck, >1: a gap
            counters[pack] = (counters[pack] + step) % 16
            frame = codec.encode_telemetry(pack, values, status=status, counter=counters[pack])[0]
            damage = draw(st.sampled_from(["none"] * 8 + ["short", "flip", "random", "remote"]))
            data = bytearray(frame.data)
            if damage == "short":
                frame = can.Message(arbitration_id=frame.arbitration_id, data=data[:7], dlc=7)
            elif damage == "flip":
                data[draw(st.integers(0, 7))] ^= 1 << draw(st.integers(0, 7))
                frame = can.Message(arbitration_id=frame.arbitration_id, data=data, dlc=8)
            elif damage == "random":
                data = bytearray(draw(st.binary(min_size=8, max_size=8)))
                frame = can.Message(arbitration_id=frame.arbitration_id, data=data, dlc=8)
            elif damage == "remote":
                frame = can.Message(
                    arbitration_id=frame.arbitration_id, is_remote_frame=True, dlc=8
                )
            frame.is_extended_id = False
            msgs.append(frame)
    extras = draw(st.lists(st.sampled_from(["site", "unknown", "error", "echo"]), max_size=3))
    for extra in extras:
        if extra == "site":
            msgs.append(codec.encode_site(draw(st.sampled_from([0.0, 500.0, -800.0]))))
        elif extra == "unknown":
            msgs.append(can.Message(arbitration_id=0x7F0, is_extended_id=False, data=bytes(8)))
        elif extra == "error":
            msgs.append(can.Message(arbitration_id=0, is_error_frame=True))
        else:
            msgs.append(codec.encode_setpoint(draw(st.integers(0, n - 1)), 100.0))
    order = draw(st.permutations(range(len(msgs))))
    return [msgs[i] for i in order]


def _runtime(codec: CanCodec, clock: FakeClock, estimator: str | None) -> EdgeRuntime:
    n = codec.n_packs
    return EdgeRuntime(
        make_manifest(n),
        ConstantPolicy([0.4 - 0.1 * i for i in range(n)]),  # type: ignore[arg-type]
        RecordingBus(),
        codec=codec,
        clock=clock,
        tick_s=60.0,
        stale_after_s=5.0,
        recovery_hold_s=1.0,
        counter_tolerance=1,
        estimator=estimator,
        time_of_day=lambda: 43200.0,
    )


def _by_pack(rt: EdgeRuntime) -> dict[int | None, list[tuple[float, str, str]]]:
    out: dict[int | None, list[tuple[float, str, str]]] = {}
    for e in rt.events:
        out.setdefault(e.pack, []).append((e.time_s, e.kind, e.detail))
    out[None] = sorted(out.get(None, []))  # events of no pack: any order within a drain
    return out


def _sent(rt: EdgeRuntime) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    bus = rt.bus
    assert isinstance(bus, RecordingBus)
    for frame_id, data in bus.sent:
        out.setdefault(frame_id, []).append(data)
    return out


def assert_same_runtime(batched: EdgeRuntime, single: EdgeRuntime) -> None:
    for name in ("_values", "_updated", "status"):
        np.testing.assert_array_equal(
            getattr(batched.store, name), getattr(single.store, name), err_msg=name
        )
    for name in (
        "_safe",
        "_forced",
        "_forced_reason",
        "_bad_reason",
        "_last_bad_s",
        "_counter_run",
        "_checksum_run",
        "_tx_counter",
        "_est_disagree",
    ):
        np.testing.assert_array_equal(getattr(batched, name), getattr(single, name), name)
    assert batched._last_counter == single._last_counter
    metrics = [rt.metrics.to_dict() for rt in (batched, single)]
    for m in metrics:
        for key in ("latency_p50_ms", "latency_p99_ms", "latency_max_ms"):
            m.pop(key)
    assert metrics[0] == metrics[1]
    assert _by_pack(batched) == _by_pack(single)
    assert _sent(batched) == _sent(single)
    if batched.estimator is not None and single.estimator is not None:
        np.testing.assert_array_equal(batched.estimator.soc, single.estimator.soc)
        np.testing.assert_array_equal(batched.estimator.soh, single.estimator.soh)


def _run_pair(
    make_codec: CodecFactory, n: int, estimator: str | None, data: st.DataObject
) -> tuple[EdgeRuntime, EdgeRuntime]:
    clock = FakeClock()
    batched = _runtime(make_codec(n, True), clock, estimator)
    single = _runtime(make_codec(n, False), clock, estimator)
    try:
        _drive_pair(batched, single, clock, data)
    finally:
        batched.bus.shutdown()
        single.bus.shutdown()
    return batched, single


def _drive_pair(
    batched: EdgeRuntime, single: EdgeRuntime, clock: FakeClock, data: st.DataObject
) -> None:
    assert batched.codec.batch
    assert not single.codec.batch
    counters = [0] * batched.n_packs
    for _ in range(data.draw(st.integers(1, 4))):
        clock.now_s += data.draw(st.sampled_from([0.5, 1.0, 1.0, 2.5, 7.0]))
        drain = data.draw(drains(batched.codec, counters))
        batched.handle_messages(drain, clock.now_s)
        for msg in drain:
            single.handle_message(msg, clock.now_s)
        assert_same_runtime(batched, single)
        if data.draw(st.booleans()):
            a, b = batched.tick(), single.tick()
            for field in ("observation", "policy_action", "action", "setpoint_w", "reasons"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field), field)
            assert (a.safe == b.safe).all()
            assert a.shield_status == b.shield_status
            assert_same_runtime(batched, single)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_drains_equal_frame_by_frame(make_codec: CodecFactory, data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 6))
    _run_pair(make_codec, n, None, data)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_drains_equal_frame_by_frame_with_estimator(
    make_codec: CodecFactory, data: st.DataObject
) -> None:
    n = data.draw(st.integers(2, 4))
    _run_pair(make_codec, n, "auto", data)


# ---------------------------------------------------------------------------- codec level
def _foreign(n: int, batch: bool) -> CanCodec:
    codec = CanCodec(
        n,
        dbc_path=data_path(FOREIGN_DBC),
        signal_map=SignalMap.load(data_path(FOREIGN_SIGNAL_MAP)),
        batch=batch,
    )
    codec.batch_min_frames = 2
    return codec


@pytest.fixture(scope="module")
def foreign_pair() -> tuple[CanCodec, CanCodec]:
    return _foreign(4, True), _foreign(4, False)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_foreign_codec_batches_equal_frame_by_frame(
    foreign_pair: tuple[CanCodec, CanCodec], data: st.DataObject
) -> None:
    """Motorola signals, CRC-8 and checked counters, two buses, multiplexed cell frames."""
    n = 4
    batched, single = foreign_pair
    for codec in foreign_pair:
        codec.reset_integrity()
    counters = [0] * n
    for _ in range(data.draw(st.integers(1, 3))):
        msgs: list[tuple[str, can.Message]] = []
        for pack in range(n):
            counters[pack] = (counters[pack] + data.draw(st.sampled_from([1, 1, 1, 0, 3]))) % 16
            values = {**GOOD, **data.draw(_VALUES)}
            frames = batched.encode_telemetry(pack, values, counter=counters[pack])[:5]
            keep = data.draw(st.sampled_from(["status", "no cells", "no cells", "all"]))
            for frame in frames:  # status, voltages, temperatures, two cell-block frames
                if keep == "status" and frame.arbitration_id % 16 != 0:
                    continue
                if keep == "no cells" and frame.arbitration_id % 16 == 3:
                    continue
                msgs.append((batched.bus_of(pack), frame))
            if data.draw(st.integers(0, 3)) == 0:  # a corrupted byte: CRC error (status)
                msgs[-1][1].data[0] ^= 0x10
        order = data.draw(st.permutations(range(len(msgs))))
        for bus in ("bms_a", "bms_b"):
            drain = [msgs[i][1] for i in order if msgs[i][0] == bus]
            result = batched.decode_batch(drain, (bus,))
            ours: dict[int, object] = {}
            for tb in result.telemetry:
                for j, row in enumerate(tb.rows.tolist()):
                    ours[row] = tb.frame(j)
            for row in result.rest:
                ours[row] = batched.decode(drain[row], bus)
            assert sorted(ours) == list(range(len(drain)))
            theirs = {i: single.decode(msg, bus) for i, msg in enumerate(drain)}
            assert ours == theirs
        assert batched._last_counter == {
            k: v for k, v in single._last_counter.items() if k in batched._last_counter
        }
        assert batched._errors == single._errors


_POWER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2e4, 2e4),
    st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.5, 8388607.0, 8388608.0, -8388609.0]),
)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_encode_commands_equals_encode_command(
    make_codec: CodecFactory, data: st.DataObject
) -> None:
    n = data.draw(st.integers(2, 8))
    codec = make_codec(n, True)
    power = np.array(data.draw(st.lists(_POWER, min_size=n, max_size=n)))
    safe = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    reasons = np.array(data.draw(st.lists(st.integers(0, 2**20), min_size=n, max_size=n)))
    counters = np.array(data.draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n)))
    ours = codec.encode_commands(power, safe=safe, reasons=reasons, counters=counters)
    theirs = [
        frame
        for i in range(n)
        for frame in codec.encode_command(
            i,
            float(power[i]),
            safe=bool(safe[i]),
            reason=int(reasons[i]),
            counter=int(counters[i]),
        )
    ]
    assert [(b, m.arbitration_id, m.is_extended_id, m.dlc, bytes(m.data)) for b, m in ours] == [
        (b, m.arbitration_id, m.is_extended_id, m.dlc, bytes(m.data)) for b, m in theirs
    ]


def test_state_request_commands_go_pack_by_pack() -> None:
    codec = _foreign(4, True)
    power = np.array([100.0, -2000.0, 0.5, math.nan])
    voltage = np.array([50.0, 51.0, math.nan, 48.0])
    safe, reasons, counters = np.zeros(4, bool), np.arange(4), np.arange(4) + 3
    ours = codec.encode_commands(
        power, safe=safe, reasons=reasons, counters=counters, pack_voltage_v=voltage
    )
    theirs = [
        f
        for i in range(4)
        for f in codec.encode_command(
            i, power[i], reason=i, counter=i + 3, pack_voltage_v=float(voltage[i])
        )
    ]
    assert [(b, bytes(m.data)) for b, m in ours] == [(b, bytes(m.data)) for b, m in theirs]


# ---------------------------------------------------------------------------- regressions
@pytest.fixture
def runtime20() -> Iterator[tuple[EdgeRuntime, can.BusABC, FakeClock]]:
    channel = "pulsebms-test-batch-20"
    rt_bus = can.Bus(interface="virtual", channel=channel)
    pack_bus = can.Bus(interface="virtual", channel=channel)
    clock = FakeClock()
    rt = EdgeRuntime(
        make_manifest(20),
        ConstantPolicy([0.1] * 20),  # type: ignore[arg-type]
        rt_bus,
        clock=clock,
        stale_after_s=5.0,
        estimator=None,
    )
    try:
        yield rt, pack_bus, clock
    finally:
        rt_bus.shutdown()
        pack_bus.shutdown()


def test_violation_in_a_polled_drain_puts_its_pack_safe(
    runtime20: tuple[EdgeRuntime, can.BusABC, FakeClock],
) -> None:
    rt, pack_bus, clock = runtime20
    codec = rt.codec
    assert codec.batch
    assert codec.n_packs >= codec.batch_min_frames
    for counter, hot in ((1, None), (2, 7)):
        for pack in range(20):
            values = {**GOOD, "temperature_c": 75.0} if pack == hot else GOOD
            for msg in codec.encode_telemetry(pack, values, counter=counter):
                pack_bus.send(msg)
        pack_bus.send(codec.encode_site(500.0))
        assert rt.poll(0.0) == 21  # one drain, one batch
        if hot is None:
            rt.tick()
            assert not rt.safe.any()
            while pack_bus.recv(0.0) is not None:
                pass
            clock.now_s += 1.0
    safe_frames = []
    while (msg := pack_bus.recv(0.0)) is not None:
        safe_frames.append(codec.decode(msg))
    assert len(safe_frames) == 1  # sent at once, before any tick
    (frame,) = safe_frames
    assert (frame.pack, frame.power_w, frame.enable) == (7, 0.0, False)  # type: ignore[union-attr]
    assert frame.reason & SafeReason.VIOLATION  # type: ignore[union-attr]
    assert rt.safe.tolist() == [p == 7 for p in range(20)]
    assert rt.metrics.telemetry_frames == 40
    assert [e.kind for e in rt.events if e.pack == 7] == ["recovered", "violation"]


def test_small_drains_and_subclasses_go_frame_by_frame() -> None:
    codec = CanCodec(20)
    frames = [codec.encode_telemetry(p, GOOD, counter=1)[0] for p in range(20)]
    assert len(codec.decode_batch(frames).telemetry) == 1
    assert codec.decode_batch(frames[: codec.batch_min_frames - 1]).telemetry == ()

    class Renamed(CanCodec):
        def decode(self, msg: can.Message, bus: str = "default") -> object:  # type: ignore[override]
            return super().decode(msg, bus)

    other = Renamed(20)
    assert not other.batch
    result = other.decode_batch(frames)
    assert result.telemetry == ()
    assert result.rest == tuple(range(20))
    assert not CanCodec(20, backend="cantools").batch
    assert not CanCodec(20, batch=False).batch


def test_decode_batch_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = CanCodec(20)
    frames = [codec.encode_telemetry(p, GOOD, counter=1)[0] for p in range(20)]

    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(codec, "_check_batch", broken)
    result = codec.decode_batch(frames)
    assert result.telemetry == ()
    assert result.rest == tuple(range(20))
    assert codec._last_counter == {}  # nothing taken


def test_batch_frames_are_the_per_frame_frames() -> None:
    codec = CanCodec(20)
    frames = [codec.encode_telemetry(p, GOOD, status=p % 2, counter=p % 16)[0] for p in range(20)]
    (tb,) = codec.decode_batch(frames).telemetry
    reference = CanCodec(20, batch=False)
    for j in range(len(tb)):
        ours = tb.frame(j)
        assert isinstance(ours, TelemetryFrame)
        assert ours == reference.decode(frames[int(tb.rows[j])])


_NEAR = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 2.5, 4.2, 4.2000001, 60.0, 60.0000001, 0.05, 0.95]),
    st.floats(-100.0, 100.0),
)


@pytest.fixture(scope="module")
def runtime6() -> Iterator[EdgeRuntime]:
    rt = _runtime(CanCodec(6), FakeClock(), None)
    try:
        yield rt
    finally:
        rt.bus.shutdown()


@settings(max_examples=200, deadline=None)
@given(table=st.lists(st.lists(_NEAR, min_size=7, max_size=7), min_size=6, max_size=6))
def test_vectorised_pre_check_is_the_scalar_one(
    runtime6: EdgeRuntime, table: list[list[float]]
) -> None:
    rt = runtime6
    rt.store._values[:, :] = np.asarray(table, dtype=np.float64).T
    packs = np.array([5, 0, 3, 1])
    expected = [rt._within_limits(int(p)) for p in packs]
    assert rt._within_limits_packs(packs).tolist() == expected


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries({}, optional={k: _NEAR for k in (*GOOD, "cell_voltage_max_v")}),
        min_size=1,
        max_size=5,
    ),
    now=st.sampled_from([10.0, math.inf, -1.0]),
)
def test_store_batch_writes_equal_single_writes(rows: list[dict[str, float]], now: float) -> None:
    keys = sorted(set().union(*rows))
    n = len(rows)
    one, many = TelemetryStore(n, stale_after_s=1.0), TelemetryStore(n, stale_after_s=1.0)
    for store in (one, many):
        store.update_pack(0, {k: 1.0 for k in GOOD}, now_s=5.0)
    for pack, row in enumerate(rows):
        one.update_pack(pack, {k: row.get(k, 0.5) for k in keys}, now_s=now, status=pack)
    columns = {k: np.array([row.get(k, 0.5) for row in rows]) for k in keys}
    many.update_packs(np.arange(n), columns, now_s=now, status=np.arange(n))
    np.testing.assert_array_equal(one._values, many._values)
    np.testing.assert_array_equal(one._updated, many._updated)
    np.testing.assert_array_equal(one.status, many.status)
    assert [one.has_all(p) for p in range(n)] == many.has_all_packs(np.arange(n)).tolist()
    with pytest.raises(IndexError):
        many.update_packs(np.array([n]), {"soc": np.array([0.5])}, now_s=1.0)


def test_poll_reads_a_flood_in_bounded_drains(
    runtime20: tuple[EdgeRuntime, can.BusABC, FakeClock],
) -> None:
    rt, pack_bus, _ = runtime20
    sizes: list[int] = []
    handle = rt._handle_batch

    def spy(msgs: list[can.Message], t: float, names: tuple[str, ...]) -> None:
        sizes.append(len(msgs))
        handle(msgs, t, names)

    rt._handle_batch = spy  # type: ignore[method-assign]
    for counter in range(1, 5):
        for pack in range(20):
            for msg in rt.codec.encode_telemetry(pack, GOOD, counter=counter):
                pack_bus.send(msg)
    assert rt.poll(0.0) == 80
    assert sizes == [64, 16]  # at most max(64, 2 * n_packs) frames read before handling
    assert rt.metrics.telemetry_frames == 80
    assert rt.metrics.counter_errors == 0


@pytest.mark.parametrize("algorithm", ["crc8_sae_j1850", "sum8", "xor8"])
def test_batch_checksums_are_the_per_frame_ones(algorithm: str) -> None:
    from pulsebms.edge_runtime.codec import _checksum_batch
    from pulsebms.edge_runtime.signal_map import checksum

    rows = np.random.default_rng(3).integers(0, 256, (300, 7), dtype=np.uint8)
    rows[0], rows[1] = 0, 255
    expected = [checksum(algorithm, row.tobytes()) for row in rows]
    assert _checksum_batch(algorithm, rows).tolist() == expected
    with pytest.raises(ValueError, match="unknown checksum"):
        _checksum_batch("md5", rows)
