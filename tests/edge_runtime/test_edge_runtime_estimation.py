"""EdgeRuntime with its state estimator: SoC/SoH where the BMS has none, cross-check otherwise.

Real codecs on a python-can ``virtual`` bus, the real :class:`FleetEstimator`.
"""

from __future__ import annotations

import json
from pathlib import Path

import can
import numpy as np
import pytest
from edge_helpers import GOOD, N_PACKS, ConstantPolicy, FakeClock, make_manifest

from pulsebms.edge_runtime.cli import build_parser
from pulsebms.edge_runtime.codec import (
    FOREIGN_DBC,
    FOREIGN_SIGNAL_MAP,
    CanCodec,
    SetpointFrame,
    SignalMap,
)
from pulsebms.edge_runtime.estimation import FleetEstimator
from pulsebms.edge_runtime.runtime import EdgeRuntime, SafeReason
from pulsebms.edge_runtime.signal_map import data_path
from pulsebms.edge_runtime.site import FixedSite

Buses = tuple[can.BusABC, can.BusABC]


def _foreign(*, without: tuple[str, ...] = ()) -> CanCodec:
    """The foreign AX-BMS codec, optionally with quantities removed from its map."""
    data = json.loads(Path(data_path(FOREIGN_SIGNAL_MAP)).read_text())
    for message in data["telemetry"]:
        for quantity in without:
            message.get("signals", {}).pop(quantity, None)
    smap = SignalMap.from_dict(data)
    return CanCodec(N_PACKS, dbc_path=data_path(FOREIGN_DBC), signal_map=smap)


def _runtime(bus: can.BusABC, clock: FakeClock, **kwargs: object) -> EdgeRuntime:
    options: dict[str, object] = {
        "tick_s": 60.0,
        "stale_after_s": 150.0,
        "recovery_hold_s": 0.0,
        "clock": clock,
        "site_source": FixedSite(600.0),
        **kwargs,
    }
    return EdgeRuntime(make_manifest(), ConstantPolicy([0.2] * N_PACKS), bus, **options)  # type: ignore[arg-type]


def _feed(rt: EdgeRuntime, codec: CanCodec, cycle: int, **values: float) -> None:
    state = values.pop("bms_state", None)
    for pack in range(N_PACKS):
        frames = codec.encode_telemetry(
            pack,
            {**GOOD, **values},
            counter=cycle,
            bms_state=None if state is None else int(state),
        )
        for msg in frames:
            rt.handle_message(msg)


def _setpoints(bus: can.BusABC, codec: CanCodec) -> list[SetpointFrame]:
    out = []
    while (msg := bus.recv(timeout=0.0)) is not None:
        for name in codec.bus_names:
            frame = codec.decode(msg, bus=name)
            if isinstance(frame, SetpointFrame):
                out.append(frame)
                break
    return out


def test_a_bms_without_soc_and_soh_runs_on_the_estimate(buses: Buses, clock: FakeClock) -> None:
    # Former code: a map without SoC/SoH was refused, and a pack missing them stayed
    # "incomplete" (stale, safe) forever.
    codec = _foreign(without=("soc", "soh"))
    rt = _runtime(buses[0], clock, codec=codec)
    assert rt.estimated_quantities == ("soc", "soh")
    for k in range(3):
        _feed(rt, codec, k)
        report = rt.tick()
        clock.now_s += 60.0
    assert not report.safe.any(), report.reasons
    assert rt.estimator is not None
    assert rt.metrics.estimate_updates == 3 * N_PACKS  # once per cycle, not per mux frame
    stored = rt.store.values["soc"]
    np.testing.assert_array_equal(stored, rt.estimator.soc)
    assert np.all((stored > 0.3) & (stored < 0.6))  # 3.7 V on NMC: about half charged
    np.testing.assert_allclose(report.observation[:N_PACKS], stored, atol=1e-6)


def test_without_the_estimator_such_packs_stay_safe(buses: Buses, clock: FakeClock) -> None:
    codec = _foreign(without=("soc", "soh"))
    rt = _runtime(buses[0], clock, codec=codec, estimator=None)
    assert rt.estimator is None
    _feed(rt, codec, 0)
    report = rt.tick()
    assert report.safe.all()
    assert np.all(report.reasons & SafeReason.STALE)


def test_the_estimate_is_a_cross_check_only_where_the_bms_reports_soc(
    buses: Buses, clock: FakeClock
) -> None:
    codec = CanCodec(N_PACKS)
    rt = _runtime(buses[0], clock, codec=codec)
    assert rt.estimated_quantities == ()
    for k in range(4):  # 3.7 V, SoC 0.5 reported: plausible
        _feed(rt, codec, k)
        rt.tick()
        clock.now_s += 60.0
    assert rt.metrics.estimate_disagreements == 0
    assert not rt.estimate_disagreement.any()
    for k in range(4, 6):  # the BMS now claims 90 % at the same 3.7 V
        _feed(rt, codec, k, soc=0.9)
        report = rt.tick()
        clock.now_s += 60.0
    assert rt.estimate_disagreement.all()
    assert rt.metrics.estimate_disagreements == N_PACKS  # once per pack, not per frame
    kinds = [e.kind for e in rt.events if e.kind == "estimate_disagreement"]
    assert len(kinds) == N_PACKS
    assert not report.safe.any()  # reported, not a safe state
    np.testing.assert_allclose(rt.store.values["soc"], 0.9, atol=1e-3)  # BMS values kept


class _Recording(FleetEstimator):
    """The real estimator, noting whether the safe frame was already on the bus."""

    def __init__(self, bus: can.BusABC, codec: CanCodec) -> None:
        super().__init__(make_manifest().pack_ratings())
        self.bus = bus
        self.codec = codec
        self.safe_frame_before_update: list[bool] = []

    def update(self, pack: int, *args: float) -> None:
        sent = [s for s in _setpoints(self.bus, self.codec) if s.pack == pack and not s.enable]
        self.safe_frame_before_update.append(bool(sent))
        super().update(pack, *args)


def test_the_estimator_runs_after_the_safe_frame_is_sent(buses: Buses, clock: FakeClock) -> None:
    codec = CanCodec(N_PACKS)
    est = _Recording(buses[1], codec)
    rt = _runtime(buses[0], clock, codec=codec, estimator=est)
    _feed(rt, codec, 0)
    rt.tick()
    _setpoints(buses[1], codec)
    clock.now_s += 60.0
    est.safe_frame_before_update.clear()
    for msg in codec.encode_telemetry(1, {**GOOD, "temperature_c": 80.0}, counter=1):
        rt.handle_message(msg)
    assert est.safe_frame_before_update == [True]
    assert rt.safe.tolist() == [False, True, False]


def test_bms_state_fault_enum_without_status(buses: Buses, clock: FakeClock) -> None:
    # The foreign map has no ``status``: faults come from its BmsState enum alone.
    codec = _foreign()
    faults = codec.signal_map.bms_state_fault_values
    assert faults
    assert "status" not in {k for m in codec.signal_map.telemetry for k in m.signals}
    rt = _runtime(buses[0], clock, codec=codec, recovery_hold_s=120.0)
    _feed(rt, codec, 0, bms_state=codec.signal_map.bms_state_ok_value)
    assert not rt.tick().safe.any()
    clock.now_s += 60.0
    for msg in codec.encode_telemetry(2, GOOD, counter=1, bms_state=faults[0]):
        rt.handle_message(msg)
    assert rt.safe.tolist() == [False, False, True]
    assert [e.kind for e in rt.events][-1:] == ["bms_fault"]
    report = rt.tick()
    assert report.reasons[2] & SafeReason.BMS_FAULT


def test_bad_estimator_arguments_are_refused(buses: Buses, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="estimator must be"):
        _runtime(buses[0], clock, estimator="kalman")
    ratings = make_manifest(n_packs=2).pack_ratings()
    with pytest.raises(ValueError, match="estimator has 2 packs"):
        _runtime(buses[0], clock, estimator=FleetEstimator(ratings))


def test_cli_flag_turns_the_estimator_off() -> None:
    args = build_parser().parse_args(["--manifest", "m.json", "--no-estimator"])
    assert args.no_estimator is True
    assert build_parser().parse_args(["--manifest", "m.json"]).no_estimator is False
