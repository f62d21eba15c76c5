"""The runtime's arrival fast path: the scalar limit pre-check never passes a violation.

``EdgeRuntime._within_limits`` skips the full check for a pack whose latest values are all
inside their windows. It may send a clean pack to the full check (no harm), but it must
never pass a pack that :meth:`EdgeRuntime.limit_violations` or
:func:`pulsebms.safety.limits.check_violations` would flag: NaN, ±inf, values on and just
past each bound, extreme magnitudes, zero and negative SoH.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import can
import numpy as np
import pytest
from edge_helpers import GOOD, N_PACKS, ConstantPolicy, FakeClock, make_manifest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulsebms.edge_runtime.codec import CanCodec
from pulsebms.edge_runtime.runtime import EdgeRuntime
from pulsebms.safety.limits import check_violations
from pulsebms.safety.state import FleetState

_LIM = make_manifest().limits[0]
_CODEC = CanCodec(N_PACKS)


def _near(clean: float, *bounds: float) -> st.SearchStrategy[float]:
    """A clean value, or any float biased to the bounds and their neighbours.

    Clean most of the time, so one bad quantity among clean ones is drawn often.
    """
    edges = [*bounds, *(math.nextafter(b, s) for b in bounds for s in (-1e9, 1e9))]
    odd = st.one_of(
        st.sampled_from([*edges, 0.0, math.nan, math.inf, -math.inf, 1e308, -1e308]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(min_value=min(bounds) - 1.0, max_value=max(bounds) + 1.0),
    )
    return st.one_of(st.just(clean), odd) | st.just(clean)


_VOLT = _near(3.7, _LIM["cell_voltage_min_v"], _LIM["cell_voltage_max_v"])
_TEMP = _near(25.0, _LIM["temperature_min_c"], _LIM["temperature_max_c"])
_SOC = _near(0.5, _LIM["soc_min"], _LIM["soc_max"])
_CUR = _near(1.0, _LIM["current_min_a"], _LIM["current_max_a"], 0.0)
_SOH = _near(0.98, 0.0, 1.0, 1e-300, -1e-300)


@pytest.fixture(scope="module")
def runtime() -> Iterator[EdgeRuntime]:
    bus = can.Bus(interface="virtual", channel="pulsebms-test-fastpath", receive_own_messages=False)
    rt = EdgeRuntime(
        make_manifest(),
        ConstantPolicy([0.0] * N_PACKS),  # type: ignore[arg-type]
        bus,
        clock=FakeClock(),
        estimator=None,
    )
    try:
        yield rt
    finally:
        bus.shutdown()


def _store(rt: EdgeRuntime, values: dict[str, float]) -> None:
    rt.store.update_pack(0, values, now_s=1000.0)


@settings(max_examples=400, deadline=None)
@given(soc=_SOC, soh=_SOH, cur=_CUR, vmin=_VOLT, vmax=_VOLT, tmin=_TEMP, tmax=_TEMP)
def test_pre_check_never_passes_a_runtime_violation(
    runtime: EdgeRuntime,
    soc: float,
    soh: float,
    cur: float,
    vmin: float,
    vmax: float,
    tmin: float,
    tmax: float,
) -> None:
    _store(
        runtime,
        {
            "soc": soc,
            "soh": soh,
            "current_a": cur,
            "cell_voltage_min_v": vmin,
            "cell_voltage_max_v": vmax,
            "temperature_min_c": tmin,
            "temperature_max_c": tmax,
        },
    )
    if runtime._within_limits(0):
        assert runtime.limit_violations(0) == []


@settings(max_examples=400, deadline=None)
@given(soc=_SOC, soh=_SOH, cur=_CUR, volt=_VOLT, temp=_TEMP)
def test_pre_check_never_passes_a_check_violations_violation(
    runtime: EdgeRuntime, soc: float, soh: float, cur: float, volt: float, temp: float
) -> None:
    """Against the fleet-level check (one voltage and temperature per pack there)."""
    _store(
        runtime,
        {"soc": soc, "soh": soh, "current_a": cur, "cell_voltage_v": volt, "temperature_c": temp},
    )

    def row(value: float, clean: float) -> np.ndarray:
        return np.array([value] + [clean] * (N_PACKS - 1))

    state = FleetState(
        soc=row(soc, 0.5),
        soh=row(soh, 0.98),
        temperature_c=row(temp, 25.0),
        cell_voltage_v=row(volt, 3.7),
        current_a=row(cur, 1.0),
    )
    with np.errstate(all="ignore"):
        found = [v for v in check_violations(state, runtime.ratings, runtime.limits) if v.pack == 0]
    if runtime._within_limits(0):
        assert found == []


def test_pre_check_passes_a_clean_pack_and_stops_each_violation(runtime: EdgeRuntime) -> None:
    """It is a real fast path (clean passes), and each single violation is sent on."""
    clean = {
        "soc": 0.5,
        "soh": 0.98,
        "current_a": 1.0,
        "cell_voltage_v": 3.7,
        "temperature_c": 25.0,
    }
    _store(runtime, clean)
    assert runtime._within_limits(0)
    for key, value in (
        ("soc", _LIM["soc_max"] + 1e-9),
        ("current_a", math.nan),
        ("cell_voltage_max_v", _LIM["cell_voltage_max_v"] + 1e-9),
        ("temperature_min_c", -math.inf),
        ("soh", 0.0),
    ):
        _store(runtime, clean)
        _store(runtime, {key: value})
        assert not runtime._within_limits(0), key
        assert runtime.limit_violations(0), key


def _cycles(
    rt: EdgeRuntime, clock: FakeClock, codec: CanCodec, ks: range, current_a: float
) -> None:
    for k in ks:
        clock.now_s += 1.0
        for pack in range(N_PACKS):
            values = {**GOOD, "current_a": current_a}
            for msg in codec.encode_telemetry(pack, values, counter=k % 16):
                rt.handle_message(msg, clock.now_s)


def test_estimator_interval_updates_less_often_and_counts_the_same_charge() -> None:
    """One update per interval; the averaged current keeps the coulomb count."""
    bus = can.Bus(interface="virtual", channel="pulsebms-test-fastpath-est")
    try:
        out = {}
        for interval_s in (0.0, 10.0):
            clock, codec = FakeClock(), CanCodec(N_PACKS)
            rt = EdgeRuntime(
                make_manifest(),
                ConstantPolicy([0.0] * N_PACKS),  # type: ignore[arg-type]
                bus,
                codec=codec,
                clock=clock,
                estimator_interval_s=interval_s,
            )
            assert rt.estimator is not None
            _cycles(rt, clock, codec, range(1), 1.0)  # starts each filter
            _cycles(rt, clock, codec, range(1, 61), 4.0)
            out[interval_s] = (rt.metrics.estimate_updates, rt.estimator.soc.copy())
        every, sparse = out[0.0][0], out[10.0][0]
        assert every == 61 * N_PACKS
        assert 6 * N_PACKS <= sparse <= 8 * N_PACKS
        # the filter folds in the time average of the held currents: the same charge
        rt._est_sample_s[0] = rt._est_update_s[0] = None
        assert rt._est_average_current(0, 100.0, 9.0) == 9.0  # first sample: at once
        got = [rt._est_average_current(0, 100.0 + dt, i) for dt, i in ((4, 1.0), (10, 4.0))]
        assert got[0] is None
        assert got[1] == pytest.approx((4 * 1.0 + 6 * 4.0) / 10)
    finally:
        bus.shutdown()


def test_estimator_interval_must_be_finite_and_not_negative() -> None:
    bus = can.Bus(interface="virtual", channel="pulsebms-test-fastpath-bad")
    try:
        for bad in (-1.0, math.nan, math.inf):
            with pytest.raises(ValueError, match="estimator_interval_s"):
                EdgeRuntime(
                    make_manifest(),
                    ConstantPolicy([0.0] * N_PACKS),  # type: ignore[arg-type]
                    bus,
                    estimator_interval_s=bad,
                )
    finally:
        bus.shutdown()


@settings(max_examples=300, deadline=None)
@given(
    pack=st.integers(0, N_PACKS - 1),
    power_w=st.floats(allow_nan=True, allow_infinity=True),
    safe=st.booleans(),
    reason=st.integers(0, 2**16),
    counter=st.integers(0, 2**20),
)
def test_setpoint_fast_fill_encodes_as_the_general_path(
    pack: int, power_w: float, safe: bool, reason: int, counter: int
) -> None:
    """The set-point command's direct fill gives the bytes of the quantity-dict path."""
    codec = _CODEC
    command = codec.signal_map.command
    off = safe or not math.isfinite(power_w)
    values = {
        "power_w": 0.0 if off else power_w,
        "mode": float(command.mode_safe if safe else command.mode_run),
        "enable": 0.0 if safe else 1.0,
        "reason": float(reason & 0xFF),
    }
    (want,) = codec._encode_plan(codec._cmd_plan, values, pack, counter)
    ((_, got),) = codec.encode_command(pack, power_w, safe=safe, reason=reason, counter=counter)
    assert (got.arbitration_id, got.is_extended_id, got.dlc) == (
        want.arbitration_id,
        want.is_extended_id,
        want.dlc,
    )
    assert bytes(got.data) == bytes(want.data)
