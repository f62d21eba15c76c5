"""The runtime seams the MQTT bridge drives: an operator's safe hold, the last tick's report."""

from __future__ import annotations

from collections.abc import Callable

import can
import numpy as np
import pytest
from edge_helpers import N_PACKS, ConstantPolicy, FakeClock, make_manifest

from pulsebms.edge_runtime.codec import CanCodec, SetpointFrame
from pulsebms.edge_runtime.runtime import EdgeRuntime, SafeReason
from pulsebms.edge_runtime.site import FixedSite

Sender = Callable[..., list[can.Message]]


def _runtime(bus: can.BusABC, clock: FakeClock) -> EdgeRuntime:
    return EdgeRuntime(
        make_manifest(),
        ConstantPolicy([0.2] * N_PACKS),
        bus,
        tick_s=1.0,
        stale_after_s=2.0,
        recovery_hold_s=0.0,
        clock=clock,
        site_source=FixedSite(600.0),
    )


def _feed(rt: EdgeRuntime, telemetry: Sender) -> None:
    for pack in range(N_PACKS):
        for msg in telemetry(pack):
            rt.handle_message(msg)


def _commands(bus: can.BusABC, codec: CanCodec) -> list[SetpointFrame]:
    out = []
    while (msg := bus.recv(timeout=0.0)) is not None:
        frame = codec.decode(msg)
        if isinstance(frame, SetpointFrame):
            out.append(frame)
    return out


def test_hold_safe_commands_safe_at_once_holds_across_ticks_and_releases(
    buses: tuple[can.BusABC, can.BusABC],
    clock: FakeClock,
    telemetry_sender: Sender,
    codec: CanCodec,
) -> None:
    rt = _runtime(buses[0], clock)
    assert rt.last_report is None
    _feed(rt, telemetry_sender)
    first = rt.tick()
    assert rt.last_report is first
    assert not first.safe.any()
    _commands(buses[1], codec)

    rt.hold_safe([1])
    now = _commands(buses[1], codec)  # the safe frame goes out without waiting for a tick
    assert [(f.pack, f.enable, f.reason) for f in now] == [(1, False, int(SafeReason.OPERATOR))]
    assert rt.held.tolist() == [False, True, False]
    for _ in range(3):  # clean telemetry does not release a held pack
        clock.now_s += 1.0
        _feed(rt, telemetry_sender)
        report = rt.tick()
        assert report.safe.tolist() == [False, True, False]
        assert report.reasons[1] == int(SafeReason.OPERATOR)
        assert report.setpoint_w[1] == 0.0
        assert report.setpoint_w[0] > 0.0
    rt.hold_safe([1], hold=False)
    clock.now_s += 1.0
    _feed(rt, telemetry_sender)
    assert not rt.tick().safe.any()
    assert rt.last_report is not None
    assert rt.last_report.setpoint_w[1] > 0.0


def test_hold_safe_every_pack_and_bad_index(
    buses: tuple[can.BusABC, can.BusABC], clock: FakeClock, telemetry_sender: Sender
) -> None:
    rt = _runtime(buses[0], clock)
    _feed(rt, telemetry_sender)
    rt.hold_safe()
    assert rt.tick().safe.all()
    assert np.all(rt.held)
    with pytest.raises(ValueError, match="out of range"):
        rt.hold_safe([N_PACKS])
