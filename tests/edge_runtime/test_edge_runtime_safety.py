"""EdgeRuntime safety off the tick: the safety timer, both window ends, integrity tolerance.

Each test names the defect of the former runtime (baa677b) it guards, and why it failed
there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import can
import numpy as np
import pytest
from edge_helpers import GOOD, N_PACKS, ConstantPolicy, FakeClock, make_manifest

from pulsebms.edge_runtime.codec import CanCodec, SetpointFrame, TelemetryFrame
from pulsebms.edge_runtime.runtime import EdgeRuntime, SafeReason
from pulsebms.edge_runtime.site import FixedSite

Sender = Callable[..., list[can.Message]]
Buses = tuple[can.BusABC, can.BusABC]


@dataclass(frozen=True)
class V2Frame(TelemetryFrame):
    """A telemetry frame as the codec's quantity contract has it (per-cell, checksum)."""

    cell_voltages_v: dict[int, float] = field(default_factory=dict)
    invalid_cells: tuple[int, ...] = ()
    bms_state: int | None = None
    checksum_ok: bool | None = None
    integrity_errors: int = 0


def _runtime(bus: can.BusABC, clock: FakeClock, **kwargs: object) -> EdgeRuntime:
    options: dict[str, object] = {
        "tick_s": 1.0,
        "stale_after_s": 2.0,
        "recovery_hold_s": 3.0,
        "clock": clock,
        "site_source": FixedSite(600.0),
        **kwargs,
    }
    return EdgeRuntime(make_manifest(), ConstantPolicy([0.2] * N_PACKS), bus, **options)  # type: ignore[arg-type]


def _commands(bus: can.BusABC, codec: CanCodec, timeout_s: float = 0.0) -> list[SetpointFrame]:
    out = []
    while (msg := bus.recv(timeout=timeout_s)) is not None:
        frame = codec.decode(msg)
        if isinstance(frame, SetpointFrame):
            out.append(frame)
    return out


def _feed_all(rt: EdgeRuntime, telemetry: Sender, **values: float) -> None:
    for pack in range(N_PACKS):
        for msg in telemetry(pack, **values):
            rt.handle_message(msg)


# ---------------------------------------------------------------- safety timer


def test_safety_check_commands_a_stale_pack_without_a_tick(
    buses: Buses,
    clock: FakeClock,
    telemetry_sender: Sender,
    codec: CanCodec,
) -> None:
    # Former code: staleness was only found by tick(); with a 60 s tick a silent pack kept
    # its enabled set-point for up to a minute (and check_safety did not exist).
    rt = _runtime(buses[0], clock)
    _feed_all(rt, telemetry_sender)
    assert not rt.tick().safe.any()
    _commands(buses[1], codec)
    clock.now_s += 1.5
    for pack in (1, 2):  # pack 0 falls silent
        for msg in telemetry_sender(pack):
            rt.handle_message(msg)
    assert rt.check_safety() == 0
    clock.now_s += 0.55  # pack 0's last frame is 2.05 s old: past stale_after_s
    assert rt.check_safety() == 1
    sent = _commands(buses[1], codec)
    assert [(s.pack, s.enable, s.power_w) for s in sent] == [(0, False, 0.0)]
    assert sent[0].reason is not None
    assert sent[0].reason & SafeReason.STALE
    assert rt.metrics.stale_events == 1
    assert rt.metrics.timer_safe_entries == 1
    assert rt.check_safety() == 0  # once, not on every check
    assert _commands(buses[1], codec) == []


def test_safety_check_holds_every_pack_when_the_site_goes_stale(
    buses: Buses,
    clock: FakeClock,
    telemetry_sender: Sender,
    codec: CanCodec,
) -> None:
    rt = _runtime(buses[0], clock, site_source=None, site_stale_after_s=1.0)
    _feed_all(rt, telemetry_sender)
    rt.handle_message(codec.encode_site(600.0))
    assert not rt.tick().safe.any()
    _commands(buses[1], codec)
    clock.now_s += 1.01
    _feed_all(rt, telemetry_sender)
    assert rt.check_safety() == N_PACKS
    sent = _commands(buses[1], codec)
    assert sorted(s.pack for s in sent) == [0, 1, 2]
    assert all(
        not s.enable and s.reason is not None and s.reason & SafeReason.SITE_STALE for s in sent
    )


def test_stale_pack_is_safe_within_stale_after_plus_one_safety_period_whatever_the_tick(
    channel: str, telemetry_sender: Sender, codec: CanCodec
) -> None:
    # Former code: run() found a stale pack only at the next tick (here 20 s away).
    stale_after_s, period_s = 0.3, 0.05
    rt_bus = can.Bus(interface="virtual", channel=channel)
    pack_bus = can.Bus(interface="virtual", channel=channel)
    rt = EdgeRuntime(
        make_manifest(),
        ConstantPolicy([0.2] * N_PACKS),
        rt_bus,
        tick_s=20.0,
        telemetry_period_s=0.1,
        stale_after_s=stale_after_s,
        safety_period_s=period_s,
        site_source=FixedSite(600.0),
    )
    stop = threading.Event()
    try:
        _feed_all(rt, telemetry_sender)  # fresh telemetry, then silence
        last_frame_s = time.monotonic()
        worker = threading.Thread(target=rt.run, kwargs={"stop": stop}, daemon=True)
        worker.start()
        first = [(s.pack, s.enable) for s in _commands(pack_bus, codec, timeout_s=0.1)]
        assert first == [(0, True), (1, True), (2, True)]  # the first tick ran them
        safe_at: dict[int, float] = {}
        deadline = last_frame_s + 2.0
        while len(safe_at) < N_PACKS and time.monotonic() < deadline:
            msg = pack_bus.recv(timeout=0.01)
            frame = None if msg is None else codec.decode(msg)
            if isinstance(frame, SetpointFrame) and not frame.enable:
                safe_at.setdefault(frame.pack, time.monotonic() - last_frame_s)
        assert sorted(safe_at) == [0, 1, 2], "no safe command before the next tick"
        slack_s = 0.05  # scheduling on a loaded CI machine
        assert max(safe_at.values()) <= stale_after_s + period_s + slack_s, safe_at
        assert min(safe_at.values()) > stale_after_s
    finally:
        stop.set()
        worker.join(timeout=2.0)
        rt_bus.shutdown()
        pack_bus.shutdown()
    assert not worker.is_alive()


def test_a_slow_policy_does_not_delay_the_safety_timer(
    channel: str, telemetry_sender: Sender, codec: CanCodec
) -> None:
    # Former code: the policy ran under the runtime's lock and staleness was judged at the
    # tick's snapshot: a pack that fell silent while the policy ran got an enabled command.
    class _Slow:
        def act(self, observation: np.ndarray) -> np.ndarray:
            time.sleep(0.6)
            return np.full(N_PACKS, 0.2, dtype=np.float32)

    rt_bus = can.Bus(interface="virtual", channel=channel)
    pack_bus = can.Bus(interface="virtual", channel=channel)
    rt = EdgeRuntime(
        make_manifest(),
        _Slow(),
        rt_bus,
        tick_s=20.0,
        stale_after_s=0.2,
        site_source=FixedSite(600.0),
    )
    stop = threading.Event()
    try:
        _feed_all(rt, telemetry_sender)
        start = time.monotonic()
        worker = threading.Thread(target=rt.run, kwargs={"stop": stop}, daemon=True)
        worker.start()
        seen: list[tuple[float, int, bool]] = []
        while time.monotonic() - start < 1.2:
            msg = pack_bus.recv(timeout=0.01)
            frame = None if msg is None else codec.decode(msg)
            if isinstance(frame, SetpointFrame):
                seen.append((time.monotonic() - start, frame.pack, bool(frame.enable)))
    finally:
        stop.set()
        worker.join(timeout=2.0)
        rt_bus.shutdown()
        pack_bus.shutdown()
    assert seen, "nothing sent"
    assert not any(enabled for _, _, enabled in seen)  # the tick's commands came out safe
    first = {pack: t for t, pack, _ in reversed(seen)}
    assert sorted(first) == [0, 1, 2]
    assert max(first.values()) < 0.5  # from the timer, before the policy returned (0.6 s)


def test_stop_request_sends_no_enabled_command_afterwards(
    buses: Buses,
    clock: FakeClock,
    telemetry_sender: Sender,
    codec: CanCodec,
) -> None:
    rt = _runtime(buses[0], clock)
    _feed_all(rt, telemetry_sender)
    rt.tick()
    _commands(buses[1], codec)
    rt.request_stop()  # what the signal handler does: no lock, nothing sent yet
    rt.check_safety()  # the safety timer's next (immediate) run
    sent = _commands(buses[1], codec)
    assert sorted(s.pack for s in sent) == [0, 1, 2]
    assert not any(s.enable for s in sent)
    report = rt.tick()  # a tick already under way when the signal came
    assert report.safe.all()
    assert np.all(report.setpoint_w == 0.0)
    assert not any(s.enable for s in _commands(buses[1], codec))


def test_pack_put_safe_while_the_policy_runs_stays_safe_in_that_tick(
    buses: Buses,
    clock: FakeClock,
    telemetry_sender: Sender,
    codec: CanCodec,
) -> None:
    class _MidTickViolation:
        """The BMS reports 70 °C on pack 1 while the policy is computing."""

        def act(self, observation: np.ndarray) -> np.ndarray:
            for msg in telemetry_sender(1, temperature_c=70.0):
                rt.handle_message(msg)
            return np.full(N_PACKS, 0.2, dtype=np.float32)

    rt = EdgeRuntime(
        make_manifest(),
        _MidTickViolation(),
        buses[0],
        tick_s=1.0,
        clock=clock,
        site_source=FixedSite(600.0),
    )
    _feed_all(rt, telemetry_sender)
    report = rt.tick()
    assert report.safe.tolist() == [False, True, False]
    assert report.reasons[1] & SafeReason.VIOLATION
    tick_commands = [s for s in _commands(buses[1], codec) if s.pack == 1]
    assert not any(s.enable for s in tick_commands)


# ---------------------------------------------------------------- both ends of windows


def _v2(pack: int, counter: int | None = None, **values: object) -> V2Frame:
    cells = values.pop("cells", {})
    bms_state = values.pop("bms_state", None)
    invalid = values.pop("invalid", ())
    checksum_ok = values.pop("checksum_ok", None)
    errors = values.pop("integrity_errors", 0)
    base = {"soc": 0.5, "soh": 0.98, "current_a": 1.0, **values}
    return V2Frame(
        pack=pack,
        values=base,  # type: ignore[arg-type]
        counter=counter,
        message="BmsStatus",
        bms_state=bms_state,  # type: ignore[arg-type]
        cell_voltages_v=dict(cells),  # type: ignore[call-overload]
        invalid_cells=tuple(invalid),  # type: ignore[call-overload]
        checksum_ok=checksum_ok,  # type: ignore[arg-type]
        integrity_errors=errors,  # type: ignore[arg-type]
    )


WINDOW = {
    "cell_voltage_min_v": 3.6,
    "cell_voltage_max_v": 3.8,
    "temperature_min_c": 20.0,
    "temperature_max_c": 30.0,
}


@pytest.mark.parametrize(
    ("override", "limit"),
    [
        ({"cell_voltage_min_v": 2.4}, "cell_voltage_min_v"),
        ({"cell_voltage_max_v": 4.3}, "cell_voltage_max_v"),
        ({"temperature_min_c": -21.0}, "temperature_min_c"),
        ({"temperature_max_c": 61.0}, "temperature_max_c"),
    ],
)
def test_each_end_of_each_window_is_checked(
    buses: Buses, clock: FakeClock, override: dict[str, float], limit: str
) -> None:
    # Former code: the store kept only cell_voltage_v / temperature_c; min/max keys were
    # dropped, so a low min cell or a cold min temperature was never seen.
    rt = _runtime(buses[0], clock)
    for pack in range(N_PACKS):
        rt.handle_telemetry(_v2(pack, **WINDOW))
    assert rt.limit_violations(0) == []
    assert not rt.tick().safe.any()
    rt.handle_telemetry(_v2(0, **{**WINDOW, **override}))
    assert [v[0] for v in rt.limit_violations(0)] == [limit]
    report = rt.tick()
    assert report.safe.tolist() == [True, False, False]
    assert report.reasons[0] & SafeReason.VIOLATION


def test_one_value_counts_as_both_ends(buses: Buses, clock: FakeClock) -> None:
    rt = _runtime(buses[0], clock)
    rt.handle_telemetry(_v2(0, cell_voltage_v=2.4, temperature_c=61.0))
    assert [v[0] for v in rt.limit_violations(0)] == ["cell_voltage_min_v", "temperature_max_c"]
    assert rt.store.window(0)["cell_voltage_v"] == (2.4, 2.4)


def test_per_cell_voltages_min_max_over_valid_cells(buses: Buses, clock: FakeClock) -> None:
    rt = _runtime(buses[0], clock)
    temps = {"temperature_c": 25.0}
    # two multiplexed frames of one pack: cells 0..3 then 4..7
    rt.handle_telemetry(_v2(0, cells={0: 3.70, 1: 3.71, 2: 3.69, 3: 3.72}, **temps))
    rt.handle_telemetry(_v2(0, cells={4: 3.65, 6: 3.80, 7: 3.75}, invalid=(5,), **temps))
    assert rt.store.window(0)["cell_voltage_v"] == (3.65, 3.80)
    assert rt.limit_violations(0) == []
    rt.handle_telemetry(_v2(0, cells={1: 4.25}, **temps))  # one cell over the top
    assert [v[0] for v in rt.limit_violations(0)] == ["cell_voltage_max_v"]
    rt.handle_telemetry(_v2(0, cells={}, invalid=(1,), **temps))  # that cell flagged invalid
    assert rt.store.window(0)["cell_voltage_v"] == (3.65, 3.80)


def test_observation_uses_the_window_midpoint_and_is_unchanged_for_single_values(
    buses: Buses, clock: FakeClock, telemetry_sender: Sender
) -> None:
    rt = _runtime(buses[0], clock)
    _feed_all(rt, telemetry_sender)  # our DBC: one voltage, one temperature per pack
    state = rt.store.fleet_state(clock())
    decoded = {k: float(rt.store.values["temperature_min_c"][0]) for k in ("t",)}
    assert state.temperature_c.tolist() == [decoded["t"]] * N_PACKS  # bit-identical
    assert state.cell_voltage_v[0] == rt.store.values["cell_voltage_max_v"][0]
    rng = np.random.default_rng(0)
    for x in rng.uniform(-40.0, 5.0, 1000):  # (x + x) / 2 == x exactly, for any finite x
        assert (x + x) * 0.5 == x
    rt.handle_telemetry(_v2(1, **WINDOW))
    state = rt.store.fleet_state(clock())
    assert state.temperature_c[1] == 25.0
    assert state.cell_voltage_v[1] == pytest.approx(3.7)


# ---------------------------------------------------------------- integrity tolerance


def test_stuck_counter_is_tolerated_n_times_then_latched(
    buses: Buses, clock: FakeClock, codec: CanCodec
) -> None:
    # Former code: no tolerance (the first repeat was malformed) and no counter_tolerance.
    rt = _runtime(buses[0], clock, counter_tolerance=2)
    for pack in range(N_PACKS):
        for msg in codec.encode_telemetry(pack, GOOD, counter=5):
            rt.handle_message(msg)
    for _ in range(2):  # two repeats: dropped, tolerated
        for msg in codec.encode_telemetry(0, {**GOOD, "temperature_c": 70.0}, counter=5):
            rt.handle_message(msg)
    assert rt.metrics.counter_errors == 2
    assert rt.metrics.violations == 0  # the repeated frames' values were not used
    assert not rt.tick().safe.any()
    for msg in codec.encode_telemetry(0, GOOD, counter=5):  # the third: latched
        rt.handle_message(msg)
    report = rt.tick()
    assert report.safe.tolist() == [True, False, False]
    assert report.reasons[0] & SafeReason.MALFORMED
    counter = 6
    for _ in range(2):  # clean frames again: still latched within the recovery hold
        clock.now_s += 1.0
        for pack in range(N_PACKS):
            for msg in codec.encode_telemetry(pack, GOOD, counter=counter):
                rt.handle_message(msg)
        counter += 1
        assert rt.tick().safe[0]
    clock.now_s += 1.5
    for pack in range(N_PACKS):
        for msg in codec.encode_telemetry(pack, GOOD, counter=counter):
            rt.handle_message(msg)
    assert not rt.tick().safe.any()


def test_checksum_errors_tolerated_then_latched(buses: Buses, clock: FakeClock) -> None:
    rt = _runtime(buses[0], clock, checksum_tolerance=1)
    for pack in range(N_PACKS):
        rt.handle_telemetry(_v2(pack, checksum_ok=True, **WINDOW))
    rt.handle_telemetry(_v2(0, checksum_ok=False, **{**WINDOW, "temperature_max_c": 99.0}))
    assert rt.metrics.checksum_errors == 1
    assert rt.metrics.violations == 0  # a frame with a bad checksum is not believed
    assert not rt.tick().safe.any()
    rt.handle_telemetry(_v2(0, checksum_ok=True, **WINDOW))  # a good one resets the run
    rt.handle_telemetry(_v2(0, checksum_ok=False, **WINDOW))
    assert not rt.tick().safe.any()
    rt.handle_telemetry(_v2(0, checksum_ok=False, **WINDOW))  # two in a row: latched
    report = rt.tick()
    assert report.safe.tolist() == [True, False, False]
    assert report.reasons[0] & SafeReason.MALFORMED
    assert any(e.kind == "malformed" and "checksum" in e.detail for e in rt.events)


def test_errors_the_codec_tolerates_are_counted_not_judged_again(
    buses: Buses, clock: FakeClock, codec: CanCodec
) -> None:
    rt = _runtime(buses[0], clock)  # runtime tolerances 0
    for pack in range(N_PACKS):
        rt.handle_telemetry(_v2(pack, counter=3, **WINDOW))
    rt.handle_telemetry(_v2(0, counter=3, integrity_errors=1, **WINDOW))  # codec: 1 of N
    rt.handle_telemetry(_v2(0, checksum_ok=False, integrity_errors=2))  # values dropped
    assert rt.metrics.counter_errors == 1
    assert rt.metrics.checksum_errors == 1
    assert not rt.tick().safe.any()
    # beyond its tolerance the codec sends a MalformedFrame for the pack: latched
    bad = can.Message(
        arbitration_id=codec.frame_id("telemetry", 0), is_extended_id=False, data=b"\x01"
    )
    rt.handle_message(bad)
    assert rt.tick().safe.tolist() == [True, False, False]


def test_bms_state_fault_puts_the_pack_safe(buses: Buses, clock: FakeClock) -> None:
    rt = _runtime(buses[0], clock)
    faults = tuple(getattr(rt.codec.signal_map, "bms_state_fault_values", ()))
    if not faults:  # the map has no BMS state enum (codec before signal map v2)
        rt._state_fault = frozenset({7})
        faults = (7,)
    for pack in range(N_PACKS):
        rt.handle_telemetry(_v2(pack, **WINDOW))
    rt.handle_telemetry(_v2(1, bms_state=faults[0], **WINDOW))
    report = rt.tick()
    assert report.safe.tolist() == [False, True, False]
    assert report.reasons[1] & SafeReason.BMS_FAULT


def test_multiplexed_frames_keep_their_own_counter(buses: Buses, clock: FakeClock) -> None:
    rt = _runtime(buses[0], clock)
    temps = {"temperature_c": 25.0}
    for counter in (1, 2):  # each cycle: two mux frames sharing the cycle's counter
        rt.handle_telemetry(_v2(0, counter, cells={0: 3.7, 1: 3.7}, **temps))
        rt.handle_telemetry(_v2(0, counter, cells={2: 3.7, 3: 3.7}, **temps))
    assert rt.metrics.counter_errors == 0


# ---------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tick_s": 0.0},
        {"stale_after_s": -1.0},
        {"telemetry_period_s": 1.0, "stale_after_s": 0.5},
        {"safety_period_s": 0.0},
        {"safety_period_s": 3.0},
        {"recovery_hold_s": float("nan")},
        {"counter_tolerance": -1},
    ],
)
def test_bad_settings_are_value_errors(
    buses: Buses, clock: FakeClock, kwargs: dict[str, float]
) -> None:
    with pytest.raises(ValueError, match="must"):
        _runtime(buses[0], clock, **kwargs)
