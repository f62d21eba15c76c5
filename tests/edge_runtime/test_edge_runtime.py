"""EdgeRuntime: safe state on violation / stale / malformed / NaN, recovery, never crashing."""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
from collections.abc import Callable

import can
import numpy as np
import pytest
from edge_helpers import GOOD, N_PACKS, ConstantPolicy, FakeClock, make_manifest

from pulsebms.edge_runtime.codec import CanCodec, SetpointFrame
from pulsebms.edge_runtime.manifest import ManifestError
from pulsebms.edge_runtime.runtime import EdgeRuntime, SafeReason

Sender = Callable[..., list[can.Message]]


def _runtime(
    buses: tuple[can.BusABC, can.BusABC],
    clock: FakeClock,
    action: list[float] | None = None,
    policy: object | None = None,
) -> EdgeRuntime:
    return EdgeRuntime(
        make_manifest(),
        policy or ConstantPolicy(action or [0.2, 0.2, 0.2]),  # type: ignore[arg-type]
        buses[0],
        tick_s=1.0,
        stale_after_s=2.0,
        recovery_hold_s=3.0,
        clock=clock,
    )


def _feed(
    rt: EdgeRuntime, telemetry: Sender, codec: CanCodec, **per_pack: dict[str, float]
) -> None:
    for pack in range(N_PACKS):
        for msg in telemetry(pack, **per_pack.get(f"p{pack}", {})):
            rt.handle_message(msg)
    rt.handle_message(codec.encode_site(600.0, price_per_kwh=0.2, time_of_day_s=43200.0))


def _setpoints(bus: can.BusABC, codec: CanCodec) -> list[SetpointFrame]:
    out = []
    while (msg := bus.recv(timeout=0.0)) is not None:
        frame = codec.decode(msg)
        if isinstance(frame, SetpointFrame):
            out.append(frame)
    return out


def test_nominal_tick_sends_policy_setpoints(buses, clock, telemetry_sender, codec) -> None:  # type: ignore[no-untyped-def]
    rt = _runtime(buses, clock)
    _feed(rt, telemetry_sender, codec)
    report = rt.tick()
    assert not report.safe.any()
    np.testing.assert_allclose(report.action, 0.2)
    sps = _setpoints(buses[1], codec)
    assert [s.pack for s in sps] == [0, 1, 2]
    assert all(s.power_w == pytest.approx(200.0) and s.enable for s in sps)
    # Observation from the manifest layout: SoC, temperature / 50, demand / 1000, sin(noon).
    obs = rt.policy.seen[-1]  # type: ignore[attr-defined]
    np.testing.assert_allclose(obs, [0.5] * 3 + [0.5] * 3 + [0.6, 0.0], atol=1e-6)
    assert rt.metrics.ticks == 1
    assert len(rt.metrics.tick_latency_s) == 1


def test_nothing_runs_before_telemetry(buses, clock, codec) -> None:  # type: ignore[no-untyped-def]
    rt = _runtime(buses, clock)
    report = rt.tick()
    assert report.safe.all()
    assert np.all(report.setpoint_w == 0.0)
    assert np.all(report.reasons & SafeReason.STALE)
    assert all(not s.enable for s in _setpoints(buses[1], codec))


def test_out_of_limit_telemetry_puts_that_pack_safe_at_once(
    buses, clock, telemetry_sender, codec
) -> None:
    rt = _runtime(buses, clock)
    _feed(rt, telemetry_sender, codec)
    rt.tick()
    _setpoints(buses[1], codec)
    for msg in telemetry_sender(1, temperature_c=70.0):  # above 60 °C
        rt.handle_message(msg)
    immediate = _setpoints(buses[1], codec)  # sent before any tick
    assert [(s.pack, s.enable, s.power_w) for s in immediate] == [(1, False, 0.0)]
    assert immediate[0].reason is not None
    assert immediate[0].reason & SafeReason.VIOLATION
    report = rt.tick()
    assert report.safe.tolist() == [False, True, False]
    assert report.setpoint_w[1] == 0.0
    assert report.setpoint_w[0] > 0.0
    assert rt.metrics.violations == 1
    assert any(e.kind == "violation" and e.pack == 1 for e in rt.events)


def test_pack_recovers_after_clean_hold(buses, clock, telemetry_sender, codec) -> None:  # type: ignore[no-untyped-def]
    rt = _runtime(buses, clock)
    _feed(rt, telemetry_sender, codec, p2={"soc": 0.99})
    assert rt.tick().safe.tolist() == [False, False, True]
    for _ in range(4):
        clock.now_s += 1.0
        _feed(rt, telemetry_sender, codec)
        report = rt.tick()
    assert not report.safe.any()
    assert any(e.kind == "recovered" and e.pack == 2 for e in rt.events)


def test_stale_pack_goes_safe(buses, clock, telemetry_sender, codec) -> None:  # type: ignore[no-untyped-def]
    rt = _runtime(buses, clock)
    _feed(rt, telemetry_sender, codec)
    assert not rt.tick().safe.any()
    for _ in range(3):  # pack 0 falls silent
        clock.now_s += 1.0
        for pack in (1, 2):
            for msg in telemetry_sender(pack):
                rt.handle_message(msg)
        rt.handle_message(codec.encode_site(600.0))
        report = rt.tick()
    assert report.safe.tolist() == [True, False, False]
    assert report.reasons[0] & SafeReason.STALE
    assert rt.metrics.stale_events == 1
    # the shield redistributes pack 0's share to the others, within their limits
    assert report.setpoint_w[0] == 0.0
    assert report.setpoint_w[1:].sum() == pytest.approx(600.0, rel=1e-6)


def test_site_stale_holds_every_pack(buses, clock, telemetry_sender, codec) -> None:  # type: ignore[no-untyped-def]
    rt = _runtime(buses, clock)
    for pack in range(N_PACKS):
        for msg in telemetry_sender(pack):
            rt.handle_message(msg)
    report = rt.tick()
    assert report.safe.all()
    assert np.all(report.reasons & SafeReason.SITE_STALE)


@pytest.mark.parametrize(
    "msg",
    [
        can.Message(arbitration_id=0x101, is_extended_id=False, data=b"\x01\x02"),
        can.Message(arbitration_id=0x101, is_extended_id=False, data=b"\xff" * 8),
    ],
    ids=["wrong-dlc", "garbage"],
)
def test_malformed_frame_puts_that_pack_safe(buses, clock, telemetry_sender, codec, msg) -> None:  # type: ignore[no-untyped-def]
    rt = _runtime(buses, clock)
    _feed(rt, telemetry_sender, codec)
    rt.handle_message(msg)
    rt.handle_message(can.Message(arbitration_id=0x555, is_extended_id=False, data=b"\x00"))
    rt.handle_message(can.Message(arbitration_id=0, is_error_frame=True))
    report = rt.tick()
    assert report.safe.tolist() == [False, True, False]
    assert report.reasons[1] & SafeReason.MALFORMED
    assert rt.metrics.malformed_frames == 2
    assert rt.metrics.ignored_frames == 1


def test_stuck_counter_is_malformed(buses, clock, codec) -> None:  # type: ignore[no-untyped-def]
    rt = _runtime(buses, clock)
    for _ in range(2):  # every pack sends the same counter twice: a frozen sender
        for pack in range(N_PACKS):
            for msg in codec.encode_telemetry(pack, GOOD, counter=7):
                rt.handle_message(msg)
    rt.handle_message(codec.encode_site(0.0))
    report = rt.tick()
    assert report.safe.all()
    assert np.all(report.reasons & SafeReason.MALFORMED)


def test_bms_fault_status_puts_pack_safe(buses, clock, telemetry_sender, codec) -> None:  # type: ignore[no-untyped-def]
    rt = _runtime(buses, clock)
    _feed(rt, telemetry_sender, codec)
    for msg in telemetry_sender(0, status=2):
        rt.handle_message(msg)
    report = rt.tick()
    assert report.safe.tolist() == [True, False, False]
    assert report.reasons[0] & SafeReason.BMS_FAULT


class _NaNPolicy:
    def act(self, observation: np.ndarray) -> np.ndarray:
        return np.array([np.nan, 0.3, np.inf], dtype=np.float32)


class _RaisingPolicy:
    def act(self, observation: np.ndarray) -> np.ndarray:
        raise RuntimeError("onnxruntime blew up")


def test_nan_policy_output_falls_back_through_shield(buses, clock, telemetry_sender, codec) -> None:  # type: ignore[no-untyped-def]
    rt = _runtime(buses, clock, policy=_NaNPolicy())
    _feed(rt, telemetry_sender, codec)
    report = rt.tick()
    assert np.all(np.isfinite(report.setpoint_w))
    assert report.setpoint_w[0] == 0.0
    assert report.setpoint_w[2] == 0.0
    assert report.setpoint_w[1] == pytest.approx(300.0)
    assert rt.metrics.policy_fallbacks == 1
    assert report.reasons[0] & SafeReason.POLICY_FALLBACK


def test_policy_exception_never_stops_the_loop(buses, clock, telemetry_sender, codec) -> None:  # type: ignore[no-untyped-def]
    rt = _runtime(buses, clock, policy=_RaisingPolicy())
    _feed(rt, telemetry_sender, codec)
    for _ in range(3):
        report = rt.tick()
    assert np.all(report.setpoint_w == 0.0)
    assert rt.metrics.ticks == 3
    assert rt.metrics.policy_fallbacks == 3


def test_shield_limits_an_aggressive_policy(buses, clock, telemetry_sender, codec) -> None:  # type: ignore[no-untyped-def]
    rt = _runtime(buses, clock, action=[1.0, 1.0, 1.0])
    _feed(rt, telemetry_sender, codec, p0={"soc": 0.06})  # nearly empty: little discharge left
    report = rt.tick()
    assert report.intervened[0]
    assert report.action[0] < 1.0
    assert rt.metrics.interventions == 1
    assert report.reasons[0] & SafeReason.INTERVENED
    assert not report.safe[0]


def test_run_loop_on_a_virtual_bus(buses, telemetry_sender, codec) -> None:  # type: ignore[no-untyped-def]
    rt_bus, pack_bus = buses
    rt = EdgeRuntime(make_manifest(), ConstantPolicy([0.1, 0.1, 0.1]), rt_bus, tick_s=0.01)
    for pack in range(N_PACKS):
        for msg in telemetry_sender(pack):
            pack_bus.send(msg)
    pack_bus.send(codec.encode_site(300.0))
    pack_bus.send(can.Message(arbitration_id=0x3FF, is_extended_id=False, data=b"junk"))
    metrics = rt.run(n_ticks=5)
    assert metrics.ticks == 5
    assert metrics.telemetry_frames == 3
    assert metrics.ignored_frames == 1
    assert metrics.frames_sent >= 15
    sps = [f for f in _setpoints(pack_bus, codec) if f.enable]
    assert sps
    assert all(f.power_w == pytest.approx(100.0) for f in sps)
    assert metrics.to_dict()["latency_p99_ms"] > 0


def test_track_demand_aims_the_fleet_at_the_site_demand(
    buses, clock, telemetry_sender, codec
) -> None:
    manifest = dataclasses.replace(make_manifest(), shield={"dt_s": 60.0, "track_demand": True})
    rt = EdgeRuntime(manifest, ConstantPolicy([0.0, 0.0, 0.0]), buses[0], tick_s=1.0, clock=clock)
    _feed(rt, telemetry_sender, codec)  # site demand 600 W
    report = rt.tick()
    assert report.setpoint_w.sum() == pytest.approx(600.0, rel=1e-6)
    assert report.intervened.all()


def test_invalid_shield_settings_are_a_manifest_error(buses, clock) -> None:  # type: ignore[no-untyped-def]
    manifest = dataclasses.replace(make_manifest(), shield={"dt_s": 60.0, "bogus": 1})
    with pytest.raises(ManifestError, match="cannot build the shield"):
        EdgeRuntime(manifest, ConstantPolicy([0.0] * 3), buses[0], clock=clock)


class _BrokenBus(can.BusABC):
    """Every read fails (bus off); writes succeed."""

    def __init__(self) -> None:
        super().__init__(channel="broken")
        self.sent = 0

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        self.sent += 1

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        raise can.CanOperationError("bus off")


def test_failing_bus_reads_do_not_spin_or_crash() -> None:
    bus = _BrokenBus()
    rt = EdgeRuntime(make_manifest(), ConstantPolicy([0.1] * 3), bus, tick_s=0.02)
    rt.bus_error_backoff_s = 0.01
    metrics = rt.run(n_ticks=4)
    assert metrics.ticks == 4
    assert 1 <= metrics.bus_errors < 40  # backed off instead of spinning
    # every tick still commanded every pack (safe: no telemetry), and run() ends safe
    assert bus.sent == 4 * 3 + 3
    bus.shutdown()


class _FreezeProbe(ConstantPolicy):
    """Records, at each tick, how many objects the garbage collector leaves alone."""

    def __init__(self, action: list[float]) -> None:
        super().__init__(action)
        self.frozen: list[int] = []

    def act(self, observation: np.ndarray) -> np.ndarray:
        self.frozen.append(gc.get_freeze_count())
        return super().act(observation)


def test_run_keeps_the_startup_objects_out_of_the_collector(buses) -> None:  # type: ignore[no-untyped-def]
    assert gc.get_freeze_count() == 0  # nothing in the test process froze objects
    policy = _FreezeProbe([0.1] * 3)
    rt = EdgeRuntime(make_manifest(), policy, buses[0], tick_s=0.01)  # type: ignore[arg-type]
    rt.run(n_ticks=2)
    assert len(policy.frozen) == 2
    assert min(policy.frozen) > 1000  # the imports' objects, at least
    assert gc.get_freeze_count() == 0  # undone on return
    policy.frozen.clear()
    rt.run(n_ticks=2, freeze_gc=False)
    assert policy.frozen == [0, 0]


class _Watcher(logging.Handler):
    """At each runtime log line: safe frames sent so far, and whether the lock was free."""

    def __init__(self, rt: EdgeRuntime, bus: can.BusABC, codec: CanCodec) -> None:
        super().__init__(logging.WARNING)
        self.rt, self.bus, self.codec = rt, bus, codec
        self.seen: list[tuple[str, int, bool]] = []
        self.safe_sent = 0

    def emit(self, record: logging.LogRecord) -> None:
        while (msg := self.bus.recv(timeout=0.0)) is not None:
            frame = self.codec.decode(msg)
            self.safe_sent += isinstance(frame, SetpointFrame) and not frame.enable
        free: list[bool] = []

        def try_lock() -> None:  # as the safety timer's thread would
            free.append(self.rt._lock.acquire(timeout=0.5))
            if free[0]:
                self.rt._lock.release()

        other = threading.Thread(target=try_lock)
        other.start()
        other.join()
        self.seen.append((record.getMessage().split()[0], self.safe_sent, free[0]))


def test_log_lines_come_after_the_safe_frames_and_outside_the_lock(
    buses, clock, telemetry_sender, codec
) -> None:  # type: ignore[no-untyped-def]
    rt = _runtime(buses, clock)
    _feed(rt, telemetry_sender, codec)
    rt.tick()  # every pack in operation
    assert not rt.safe.any()
    _setpoints(buses[1], codec)
    watcher = _Watcher(rt, buses[1], codec)
    log = logging.getLogger("pulsebms.edge_runtime")
    log.addHandler(watcher)
    try:
        hot = [m for p in (0, 2) for m in telemetry_sender(p, temperature_c=75.0)]
        rt.handle_messages(hot, clock.now_s)  # one drain, two violations
    finally:
        log.removeHandler(watcher)
    # both safe frames were on the bus before the first log line; the safety timer's lock
    # was free while the lines were written
    assert watcher.seen == [("violation", 2, True), ("violation", 2, True)]
    assert [e.kind for e in rt.events][-2:] == ["violation", "violation"]
