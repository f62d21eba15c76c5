"""EdgeRuntime I/O: several buses, site demand from a fixed value, a CSV series or a plugin."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import can
import numpy as np
import pytest
from edge_helpers import GOOD, N_PACKS, ConstantPolicy, FakeClock, make_manifest

from pulsebms.edge_runtime.codec import CanCodec, IgnoredFrame, SetpointFrame
from pulsebms.edge_runtime.runtime import EdgeRuntime, SafeReason
from pulsebms.edge_runtime.site import CsvSite, FixedSite, SiteSource, parse_site_spec


class TwoBusCodec(CanCodec):
    """The project DBC with packs 0-1 on bus ``rack_a`` and pack 2 on ``rack_b``.

    Speaks the codec's multi-bus contract (``bus_names``, ``bus_of``, ``decode(msg, bus)``,
    ``encode_command``) over the single-bus codec, whichever version of it is installed.
    """

    bus_names = ("rack_a", "rack_b")

    def bus_of(self, pack: int) -> str:
        return "rack_a" if pack < 2 else "rack_b"

    def decode(self, msg: can.Message, bus: str = "rack_a") -> object:  # type: ignore[override]
        frame = super().decode(msg)
        pack = getattr(frame, "pack", None)
        if pack is not None and self.bus_of(pack) != bus:
            return IgnoredFrame(msg.arbitration_id, f"pack {pack} is not on {bus}")
        return frame

    def encode_command(  # type: ignore[override]
        self, pack: int, power_w: float, *, safe: bool, reason: int, counter: int,
        pack_voltage_v: float,
    ) -> list[tuple[str, can.Message]]:  # fmt: skip
        msg = self.encode_setpoint(pack, power_w, safe=safe, reason=reason, counter=counter)
        return [(self.bus_of(pack), msg)]


def _commands(bus: can.BusABC, codec: CanCodec) -> list[SetpointFrame]:
    out = []
    while (msg := bus.recv(timeout=0.0)) is not None:
        frame = CanCodec.decode(codec, msg)
        if isinstance(frame, SetpointFrame):
            out.append(frame)
    return out


def test_packs_on_two_buses(channel: str) -> None:
    # Former code: one bus only (a mapping of buses was stored as ``self.bus`` and crashed
    # on the first send), no bus names.
    codec = TwoBusCodec(N_PACKS)
    buses = {name: can.Bus(interface="virtual", channel=f"{channel}-{name}") for name in "ab"}
    sides = {name: can.Bus(interface="virtual", channel=f"{channel}-{name}") for name in "ab"}
    try:
        rt = EdgeRuntime(
            make_manifest(),
            ConstantPolicy([0.2] * N_PACKS),
            {"rack_a": buses["a"], "rack_b": buses["b"]},
            codec=codec,
            tick_s=1.0,
            site_source=FixedSite(600.0),
        )
        for pack in range(N_PACKS):
            for msg in codec.encode_telemetry(pack, GOOD, counter=1):
                sides["a" if pack < 2 else "b"].send(msg)
        for msg in codec.encode_telemetry(2, {**GOOD, "temperature_c": 99.0}, counter=2):
            sides["a"].send(msg)  # pack 2's id on the wrong bus: not pack 2's telemetry
        assert rt.poll(0.05) == N_PACKS + 1
        assert rt.metrics.telemetry_frames == N_PACKS
        assert rt.metrics.ignored_frames == 1
        report = rt.tick()
        assert not report.safe.any()
        on_a, on_b = _commands(sides["a"], codec), _commands(sides["b"], codec)
        assert [s.pack for s in on_a] == [0, 1]
        assert [s.pack for s in on_b] == [2]
        assert all(s.enable for s in on_a + on_b)
    finally:
        for bus in (*buses.values(), *sides.values()):
            bus.shutdown()


def test_missing_bus_is_a_value_error(channel: str) -> None:
    bus = can.Bus(interface="virtual", channel=channel)
    try:
        with pytest.raises(ValueError, match="rack_b"):
            EdgeRuntime(
                make_manifest(), ConstantPolicy([0.0] * 3), {"rack_a": bus}, codec=TwoBusCodec(3)
            )
    finally:
        bus.shutdown()


def _runtime(bus: can.BusABC, clock: FakeClock, site: SiteSource, **kw: float) -> EdgeRuntime:
    return EdgeRuntime(
        make_manifest(),
        ConstantPolicy([0.2] * N_PACKS),
        bus,
        tick_s=1.0,
        stale_after_s=5.0,
        clock=clock,
        site_source=site,
        **kw,  # type: ignore[arg-type]
    )


def _telemetry(rt: EdgeRuntime, codec: CanCodec, counter: int) -> None:
    for pack in range(N_PACKS):
        for msg in codec.encode_telemetry(pack, GOOD, counter=counter):
            rt.handle_message(msg)


def test_fixed_site_needs_no_site_frame_and_ignores_can_site_frames(
    buses: tuple[can.BusABC, can.BusABC], clock: FakeClock, codec: CanCodec
) -> None:
    # Former code: the demand came only from the CAN site frame; without one every pack
    # was held safe (SITE_STALE).
    rt = _runtime(buses[0], clock, FixedSite(600.0))
    _telemetry(rt, codec, 0)
    rt.handle_message(codec.encode_site(9999.0))
    report = rt.tick()
    assert not report.safe.any()
    assert rt.store.site(clock()).demand_w == 600.0
    assert rt.metrics.site_frames == 1  # counted, not used


def test_csv_site_series_then_stale_at_the_end(
    buses: tuple[can.BusABC, can.BusABC], clock: FakeClock, codec: CanCodec, tmp_path: Path
) -> None:
    path = tmp_path / "site.csv"
    path.write_text("time_s,demand_w,price_per_kwh\n0,100,0.1\n1,300,0.2\n2,-200,0.3\n")
    rt = _runtime(buses[0], clock, CsvSite(path), site_stale_after_s=1.5)
    seen = []
    for step in range(4):
        _telemetry(rt, codec, step)
        report = rt.tick()
        seen.append((rt.store.site(clock()).demand_w, bool(report.safe.any())))
        clock.now_s += 1.0
    # the series, then (t = 3 s, past the end) no new values; the last one still fresh
    assert seen == [(100.0, False), (300.0, False), (-200.0, False), (-200.0, False)]
    clock.now_s += 0.6  # 1.6 s since the last row was read: stale, packs held
    _telemetry(rt, codec, 9)
    report = rt.tick()
    assert report.safe.all()
    assert np.all(report.reasons & SafeReason.SITE_STALE)


def test_csv_site_loops_and_rejects_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "site.csv"
    path.write_text("time_s,demand_w\n0,100\n10,200\n")
    site = CsvSite(path, loop=True)
    assert [site.poll(t)["demand_w"] for t in (0.0, 9.0, 10.0, 19.9, 20.0)] == [  # type: ignore[index]
        100.0, 100.0, 200.0, 200.0, 100.0,
    ]  # fmt: skip
    for text, match in [
        ("time,demand_w\n0,1\n", "time_s and demand_w"),
        ("time_s,demand_w\n0,abc\n", "not a number"),
        ("time_s,demand_w\n0,1\n0,2\n", "increase"),
        ("time_s,demand_w\n", "no rows"),
        ("time_s,demand_w\n0,nan\n", "non-finite"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            CsvSite(path)


def test_a_pluggable_site_source(
    buses: tuple[can.BusABC, can.BusABC], clock: FakeClock, codec: CanCodec
) -> None:
    class Coordinator:
        """What an MQTT client would do: keep the latest values, hand them over once."""

        def __init__(self) -> None:
            self.latest: Mapping[str, float] | None = {"demand_w": 450.0, "time_of_day_s": 0.0}

        def poll(self, now_s: float) -> Mapping[str, float] | None:
            latest, self.latest = self.latest, None
            return latest

    source = Coordinator()
    assert isinstance(source, SiteSource)
    rt = _runtime(buses[0], clock, source, site_stale_after_s=2.0)
    _telemetry(rt, codec, 0)
    assert not rt.tick().safe.any()
    clock.now_s += 2.5  # the coordinator went quiet
    _telemetry(rt, codec, 1)
    assert rt.tick().safe.all()


def test_parse_site_spec() -> None:
    assert parse_site_spec("fixed:-250").poll(0.0) == {"demand_w": -250.0, "price_per_kwh": 0.0}
    assert parse_site_spec("can").poll(0.0) is None
    for bad in ("fixed:", "fixed:inf", "mqtt:broker", "csv:"):
        with pytest.raises(ValueError, match="site"):
            parse_site_spec(bad)
