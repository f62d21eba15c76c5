"""Fleet twin: accuracy against PyBaMM, faults as data, flat memory, determinism, hooks."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import numpy as np
import pybamm
import pytest

from pulsebms.envs.chemistry import get_chemistry
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin import FleetTwin, make_twin
from pulsebms.envs.twin.degradation import RUN_IN_LOSS, EmpiricalAgeing
from pulsebms.envs.twin.parameters import cell_facts
from pulsebms.envs.twin.reference import ReferenceCell, ReferenceStall

CHEMS = ("LFP", "NMC", "LCO")
FIDELITIES = ("physics", "ecm")


def _fleet() -> list[PackSpec]:
    return [
        PackSpec("LFP", series=16, parallel=3, initial_soc=0.6),
        PackSpec("NMC", series=14, parallel=4, initial_soc=0.5),
        PackSpec("LCO", series=12, parallel=10, initial_soc=0.4, initial_temperature_c=30.0),
        PackSpec("NMC", series=14, parallel=2, initial_soc=0.8, initial_soh=0.9),
    ]


def _profile(twin: FleetTwin, n_steps: int, seed: int, c_rate: float = 0.8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    capacity = twin.ratings.capacity_ah
    return rng.uniform(-c_rate, c_rate, size=(n_steps, capacity.size)) * capacity


@pytest.fixture(scope="module", params=FIDELITIES)
def twin(request: pytest.FixtureRequest) -> FleetTwin:
    return make_twin(_fleet(), request.param)


# ---------------------------------------------------------------- contracts and ratings
def test_twin_satisfies_protocol(twin: FleetTwin) -> None:
    assert isinstance(twin, FleetTwin)
    states = twin.reset()
    assert states.soc.shape == (4,)
    np.testing.assert_allclose(states.soc, [0.6, 0.5, 0.4, 0.8])
    np.testing.assert_allclose(states.soh, [1.0, 1.0, 1.0, 0.9])
    np.testing.assert_allclose(states.temperature_c, [25.0, 25.0, 30.0, 25.0])
    assert not states.faulted.any()
    assert states.fault_reason == ("", "", "", "")


@pytest.mark.parametrize("chem", CHEMS)
def test_voltage_window_and_capacity_read_from_parameter_set(chem: str) -> None:
    values = pybamm.ParameterValues(get_chemistry(chem).parameter_set)
    facts = cell_facts(chem)
    assert facts.voltage_min_v == values["Lower voltage cut-off [V]"]
    assert facts.voltage_max_v == values["Upper voltage cut-off [V]"]
    # The SoC reference is the electrode window's charge, within 30 % of the nominal.
    assert facts.capacity_ah == pytest.approx(values["Nominal cell capacity [A.h]"], rel=0.3)
    twin = make_twin([PackSpec(chem)], "ecm")
    assert twin.voltage_min_v[0] == facts.voltage_min_v
    assert twin.voltage_max_v[0] == facts.voltage_max_v
    rest = twin.reset().cell_voltage_v[0]
    assert facts.voltage_min_v < rest < facts.voltage_max_v


def test_ratings_default_to_one_c_at_nominal_voltage(twin: FleetTwin) -> None:
    r = twin.ratings
    assert r.chemistry == ("LFP", "NMC", "LCO", "NMC")
    np.testing.assert_array_equal(r.series, [16, 14, 12, 14])
    nominal_v = r.rated_power_w / (r.series * r.parallel * r.cell_capacity_ah)
    assert 3.1 < nominal_v[0] < 3.35  # LFP
    assert 3.5 < nominal_v[1] < 3.9  # NMC
    explicit = make_twin([PackSpec("NMC", rated_power_w=1234.0)], "ecm")
    assert explicit.ratings.rated_power_w[0] == 1234.0


# ---------------------------------------------------------------- accuracy
@pytest.mark.parametrize("chem", CHEMS)
def test_physics_matches_pybamm_adaptive_solve(chem: str) -> None:
    """Golden: 10 min of random ±1 C set-points, 10 s steps, vs IDAKLU at tight tolerance."""
    spec = PackSpec(chem, series=1, parallel=1, initial_soc=0.5)
    twin = make_twin([spec], "physics")
    ref = ReferenceCell(chem, 0.5, rtol=1e-8, atol=1e-8)
    currents = _profile(twin, 60, seed=7, c_rate=1.0)[:, 0]
    dv, dsoc, dt_c = [], [], []
    for current in currents:
        r = ref.step(current, 10.0)
        s = twin.step_current(np.array([current]), 10.0, 25.0)
        dv.append(abs(r["voltage_v"] - s.cell_voltage_v[0]))
        dsoc.append(abs(r["soc"] - s.soc[0]))
        dt_c.append(abs(r["temperature_c"] - s.temperature_c[0]))
    assert not s.faulted[0]
    assert max(dv) * 1e3 <= 1.0, f"max |ΔV| {max(dv) * 1e3:.3f} mV"
    assert max(dsoc) * 100 <= 0.1
    assert max(dt_c) <= 0.01


@pytest.mark.parametrize("chem", CHEMS)
def test_physics_long_steps_and_high_rates_match_pybamm(chem: str) -> None:
    """Steps of 60 s (sub-stepped) at ±1 C and of 10 s at ±3 C, against the adaptive solve."""
    for dt_s, c_rate in ((60.0, 1.0), (10.0, 3.0)):
        twin = make_twin([PackSpec(chem, series=1, parallel=1)], "physics")
        ref = ReferenceCell(chem, 0.5, rtol=1e-8, atol=1e-8)
        worst = 0.0
        for current in _profile(twin, 15, seed=2, c_rate=c_rate)[:, 0]:
            r = ref.step(current, dt_s)
            s = twin.step_current(np.array([current]), dt_s, 25.0)
            worst = max(worst, abs(r["voltage_v"] - s.cell_voltage_v[0]))
        assert not s.faulted[0]
        assert worst * 1e3 <= 1.0, (dt_s, c_rate, worst)


def test_physics_solvers_agree() -> None:
    fast = make_twin(_fleet(), "physics")
    adaptive = make_twin(_fleet(), "physics", solver="cvodes")
    for current in _profile(fast, 20, seed=9):
        a = fast.step_current(current, 10.0, 25.0)
        b = adaptive.step_current(current, 10.0, 25.0)
    np.testing.assert_allclose(a.cell_voltage_v, b.cell_voltage_v, atol=2e-4)
    np.testing.assert_allclose(a.temperature_c, b.temperature_c, atol=1e-3)
    assert fast.fallback_steps == 0


@pytest.mark.parametrize("chem", CHEMS)
def test_ecm_ocv_is_the_shields_and_the_physics_rest_voltage(chem: str) -> None:
    from pulsebms.safety.cell_model import CellModel

    soc = np.linspace(0.0, 1.0, 11)
    ecm = make_twin([PackSpec(chem)] * soc.size, "ecm")
    physics = make_twin([PackSpec(chem)] * soc.size, "physics")
    rest_ecm = ecm.set_state(soc=soc, temperature_c=25.0).cell_voltage_v
    rest_physics = physics.set_state(soc=soc, temperature_c=25.0).cell_voltage_v
    np.testing.assert_allclose(rest_ecm, CellModel.load().ocv_v(chem, soc), atol=1e-9)
    np.testing.assert_allclose(rest_physics, rest_ecm, atol=1e-6)


@pytest.mark.parametrize("chem", CHEMS)
@pytest.mark.parametrize("temperature_c", [0.0, 25.0])
def test_ecm_tracks_physics_loosely(chem: str, temperature_c: float) -> None:
    """The circuit fitted to the physics model follows it (15 min of random ±C/2)."""
    packs = [PackSpec(chem, initial_soc=0.5, initial_temperature_c=temperature_c)]
    physics, ecm = make_twin(packs, "physics"), make_twin(packs, "ecm")
    worst = 0.0
    for current in _profile(physics, 90, seed=3, c_rate=0.5):
        a = physics.step_current(current, 10.0, temperature_c)
        b = ecm.step_current(current, 10.0, temperature_c)
        worst = max(worst, abs(a.cell_voltage_v[0] - b.cell_voltage_v[0]))
    assert worst < 0.04, f"ECM vs physics {worst * 1e3:.1f} mV"
    np.testing.assert_allclose(a.soc, b.soc, atol=1e-12)
    np.testing.assert_allclose(a.temperature_c, b.temperature_c, atol=0.3)


def test_power_set_point_is_delivered(twin: FleetTwin) -> None:
    twin.reset()
    power = 0.5 * twin.ratings.rated_power_w * np.array([1.0, -1.0, 1.0, -1.0])
    before = twin.state()
    after = twin.step(power, 10.0, 25.0)
    delivered = after.current_a * 0.5 * (before.pack_voltage_v + after.pack_voltage_v)
    np.testing.assert_allclose(delivered, power, rtol=0.015)  # trapezoid of the voltages
    np.testing.assert_allclose(after.power_w, power, rtol=0.005)  # the fidelity's mean
    # Abrupt reversals at up to the rated power stay within 2 % of the set-point.
    rng = np.random.default_rng(0)
    for _ in range(20):
        power = rng.uniform(-1.0, 1.0, 4) * twin.ratings.rated_power_w
        states = twin.step(power, 10.0, 25.0)
        ok = ~states.faulted
        np.testing.assert_allclose(states.power_w[ok], power[ok], rtol=0.02)


# ---------------------------------------------------------------- faults
def test_unfollowable_set_point_faults_only_that_pack(twin: FleetTwin) -> None:
    twin.reset()
    clean = make_twin(_fleet(), "ecm" if twin.ratings is None else _fidelity(twin))
    current = np.array([5.0, 8.0, -6.0, 4.0])
    bad = current.copy()
    bad[1] = 5000.0  # 1250 A per NMC cell: far past the lower cut-off
    bad[2] = np.nan
    got = twin.step_current(bad, 10.0, 25.0)
    ref = clean.step_current(current, 10.0, 25.0)
    np.testing.assert_array_equal(got.faulted, [False, True, True, False])
    assert "cut-off" in got.fault_reason[1] or "solver failure" in got.fault_reason[1]
    assert got.fault_reason[2] == "non-finite set-point"
    for k in (0, 3):  # the rest of the batch is unaffected, bit for bit
        assert got.cell_voltage_v[k] == ref.cell_voltage_v[k]
        assert got.soc[k] == ref.soc[k]
    # Faulted packs are frozen at their last good state and carry no current.
    start = clean.reset()
    assert got.soc[1] == start.soc[1]
    assert got.current_a[1] == 0.0
    again = twin.step_current(current, 10.0, 25.0)
    assert again.soc[1] == got.soc[1]
    assert again.fault_reason[1] == got.fault_reason[1]
    assert not twin.reset().faulted.any()


def _fidelity(twin: FleetTwin) -> str:
    return "physics" if type(twin).__name__ == "PhysicsTwin" else "ecm"


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_overcharge_and_unreachable_power_are_faults(fidelity: str) -> None:
    twin = make_twin([PackSpec("LFP", initial_soc=0.99), PackSpec("NMC")], fidelity)
    s = twin.step_current(np.array([-40.0, 0.0]), 60.0, 25.0)
    assert s.faulted[0]
    assert "upper" in s.fault_reason[0] or "state of charge" in s.fault_reason[0]
    assert not s.faulted[1]
    twin.reset()
    s = twin.step(np.array([0.0, 1e9]), 10.0, 25.0)
    np.testing.assert_array_equal(s.faulted, [False, True])
    assert s.fault_reason[1] == "power not reachable"


def test_physics_solver_failure_is_data() -> None:
    twin = make_twin([PackSpec("NMC", initial_soc=0.05), PackSpec("NMC")], "physics")
    s = twin.step_current(np.array([1e5, 1.0]), 30.0, 25.0)
    np.testing.assert_array_equal(s.faulted, [True, False])
    assert s.fault_reason[0]
    assert np.isfinite(s.cell_voltage_v).all()
    assert twin.fallback_steps >= 1  # the stepper's estimate sent it to CVODES


def test_reference_detects_simulation_step_stall() -> None:
    ref = ReferenceCell("NMC", 0.03)

    def drain() -> None:
        for _ in range(20):
            ref.step(10.0, 10.0)

    with pytest.raises(ReferenceStall, match="stalled"):
        drain()


def test_bad_arguments_raise_value_error(twin: FleetTwin) -> None:
    with pytest.raises(ValueError, match="shape"):
        twin.step(np.zeros(3), 10.0, 25.0)
    with pytest.raises(ValueError, match="dt_s"):
        twin.step(np.zeros(4), 0.0, 25.0)
    with pytest.raises(ValueError, match="soc"):
        twin.set_state(soc=[0.5, 1.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="fidelity"):
        make_twin(_fleet(), "quantum")


# ---------------------------------------------------------------- hooks, determinism
def test_set_state_round_trip(twin: FleetTwin) -> None:
    twin.reset()
    twin.step_current(np.array([3.0, -4.0, 2.0, 1.0]), 10.0, 25.0)
    soc = np.array([0.2, 0.7, 0.55, 0.9])
    soh = np.array([0.95, 0.85, 1.0, 0.8])
    temp = np.array([10.0, 35.0, 25.0, 0.0])
    s = twin.set_state(soc=soc, soh=soh, temperature_c=temp)
    np.testing.assert_array_equal(s.soc, soc)
    np.testing.assert_array_equal(s.soh, soh)
    np.testing.assert_allclose(s.temperature_c, temp, atol=1e-9)
    np.testing.assert_array_equal(twin.state().soc, soc)
    # At rest the voltage is the OCV, whatever fidelity.
    ecm = make_twin(_fleet(), "ecm")
    np.testing.assert_allclose(
        s.cell_voltage_v, ecm.set_state(soc=soc, temperature_c=temp).cell_voltage_v, atol=3e-3
    )
    s2 = twin.set_state(soc=0.5)
    np.testing.assert_array_equal(s2.soc, np.full(4, 0.5))
    np.testing.assert_array_equal(s2.soh, soh)
    after = twin.step_current(np.zeros(4), 10.0, 25.0)
    assert not after.faulted.any()


def test_ecm_state_terms_cache_is_never_stale() -> None:
    """The ECM reuses R0/R1/τ and SoC weights within a state: the same bits as recomputing."""
    cached, fresh = make_twin(_fleet(), "ecm"), make_twin(_fleet(), "ecm")
    rng = np.random.default_rng(7)
    changes = {20: {"soc": np.array([0.3, 0.6, 0.5, 0.7])}, 30: {"temperature_c": 5.0}}
    for k in range(40):
        if k in changes:  # one state variable set from outside, the other one kept
            cached._state_terms()  # type: ignore[attr-defined]  # terms cached at this state
            for twin in (cached, fresh):
                twin.set_state(**changes[k])
        power = rng.uniform(-1.0, 1.0, 4) * cached.ratings.rated_power_w
        fresh._terms_cache = None  # type: ignore[attr-defined]  # recompute every step
        a = cached.step(power, 300.0, 20.0)
        b = fresh.step(power, 300.0, 20.0)
        for field in ("soc", "cell_voltage_v", "temperature_c", "power_w", "current_a"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_same_inputs_give_bit_identical_outputs(fidelity: str) -> None:
    runs = []
    for _ in range(2):
        twin = make_twin(_fleet(), fidelity, degradation_acceleration=100.0)
        power = 0.6 * twin.ratings.rated_power_w
        rng = np.random.default_rng(11)
        out = []
        for _ in range(30):
            s = twin.step(power * rng.uniform(-1, 1, 4), 10.0, rng.uniform(0, 40))
            out.append(np.concatenate([s.soc, s.soh, s.cell_voltage_v, s.temperature_c]))
        runs.append(np.array(out))
    np.testing.assert_array_equal(runs[0], runs[1])


# ---------------------------------------------------------------- degradation
@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_acceleration_makes_fade_visible(fidelity: str) -> None:
    packs = [PackSpec(c, initial_soc=0.5) for c in CHEMS]
    slow = make_twin(packs, fidelity)
    fast = make_twin(packs, fidelity, degradation_acceleration=1000.0)
    frozen = make_twin(packs, fidelity, degradation_acceleration=0.0)
    current = 0.5 * slow.ratings.capacity_ah
    for k in range(40):
        sign = 1.0 if k % 20 < 10 else -1.0
        a = slow.step_current(sign * current, 30.0, 35.0)
        b = fast.step_current(sign * current, 30.0, 35.0)
        c = frozen.step_current(sign * current, 30.0, 35.0)
    assert (a.soh < 1.0).all()
    assert (b.soh < a.soh).all()
    np.testing.assert_allclose(1.0 - b.soh, 1000.0 * (1.0 - a.soh), rtol=1e-6)
    np.testing.assert_array_equal(c.soh, np.ones(3))


def test_empirical_laws_match_their_papers_at_constant_stress() -> None:
    ageing = EmpiricalAgeing(["NMC", "LFP"], np.array([2.15, 2.2]))
    for _ in range(365):  # one year of storage at 25 °C, 3.7 V, in daily steps
        ageing.update(np.zeros(2), 86400.0, np.full(2, 25.0), np.full(2, 3.7), np.full(2, 0.5))
    alpha = (7.543 * 3.7 - 23.75) * 1e6 * np.exp(-6976.0 / 298.15)
    assert ageing.calendar_loss[0] == pytest.approx(alpha * 365**0.75, rel=1e-9)
    assert ageing.calendar_loss[1] == pytest.approx(1.5e-3 * 365**0.5, rel=1e-9)
    # Wang 2011 at C/2, 25 °C: loss[%] = 31630 exp(-(31700 - 185.15)/(R T)) Ah^0.55.
    wang = EmpiricalAgeing(["LFP"], np.array([2.2]))
    for _ in range(200):  # 200 h at C/2 = 220 A.h throughput
        wang.update(np.array([1.1]), 3600.0, np.array([25.0]), np.array([3.3]), np.array([0.5]))
    expected = 31630 * np.exp(-(31700 - 370.3 * 0.5) / (8.314462618 * 298.15)) * 220**0.55
    assert wang.cycle_loss[0] * 100 == pytest.approx(expected, rel=1e-9)


def test_reset_starts_fresh_packs_run_in_not_at_zero_age() -> None:
    """Bug guard: a fresh pack's fade laws start run in, not at zero age.

    A SoH-1 pack was put at zero age, where √t fades fastest (day one at
    38 °C cost as much as ~40 average days); it now starts run in, and a pack with more
    prior loss than the run-in starts where it did before.
    """
    hot = np.full(3, 38.0)
    ageing = EmpiricalAgeing(["LFP", "LFP", "LFP"], np.full(3, 2.2))
    ageing.reset(prior_loss=np.array([0.0, RUN_IN_LOSS, 0.05]))
    assert ageing.calendar_loss.tolist() == pytest.approx([0.01, 0.01, 0.025])
    ageing.update(np.zeros(3), 86400.0, hot, np.full(3, 3.3), np.full(3, 0.5))
    fresh, run_in, aged = ageing.loss_fraction
    assert fresh == run_in > aged > 0.0
    zero_age = EmpiricalAgeing(["LFP"], np.array([2.2]))  # the law from t = 0 (no reset)
    zero_age.update(np.zeros(1), 86400.0, hot[:1], np.full(1, 3.3), np.full(1, 0.5))
    assert fresh < 0.2 * zero_age.loss_fraction[0]  # 0.06 % against 0.35 %


# ---------------------------------------------------------------- memory
def _traced_growth_bytes(step: Callable[[int], object], warm: int, n: int) -> int:
    """Python-heap growth over ``n`` steps, measured after ``warm`` steps under tracing."""
    tracemalloc.start()
    try:
        for k in range(warm):
            step(k)
        gc.collect()
        base, _ = tracemalloc.get_traced_memory()
        for k in range(warm, warm + n):
            step(k)
        gc.collect()
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return grown - base


def test_ecm_memory_flat_over_many_steps() -> None:
    import psutil

    twin = make_twin([PackSpec(c) for c in CHEMS * 4], "ecm")
    power = 0.3 * twin.ratings.rated_power_w

    def step(k: int) -> object:
        return twin.step(power if k % 200 < 100 else -power, 5.0, 25.0)

    assert _traced_growth_bytes(step, warm=200, n=2000) < 16 * 1024
    for k in range(1000):
        step(k)
    rss_0 = psutil.Process().memory_info().rss
    for k in range(20_000):  # RSS over a long run (no tracing: fast)
        step(k)
    assert psutil.Process().memory_info().rss - rss_0 < 4 * 1024 * 1024
    assert not twin.state().faulted.any()


def test_physics_memory_flat_over_bounded_run() -> None:
    import psutil

    twin = make_twin([PackSpec(c) for c in CHEMS], "physics")
    current = 0.3 * twin.ratings.capacity_ah

    def step(k: int) -> object:
        return twin.step_current(current if k % 40 < 20 else -current, 10.0, 25.0)

    assert _traced_growth_bytes(step, warm=100, n=1000) < 16 * 1024
    rss_0 = psutil.Process().memory_info().rss
    for k in range(3000):
        step(k)
    assert psutil.Process().memory_info().rss - rss_0 < 4 * 1024 * 1024
    assert not twin.state().faulted.any()


@pytest.mark.slow
@pytest.mark.parametrize("chem", CHEMS)
def test_physics_one_hour_random_profile_and_spme(chem: str) -> None:
    """Golden, longer: one hour of random set-points for SPM, ten minutes for SPMe."""
    for model_name, n_steps in (("SPM", 360), ("SPMe", 60)):
        # jit=False keeps a cold CI run bounded (SPMe compiles in ~25 s; results are identical).
        twin = make_twin(
            [PackSpec(chem, series=1, parallel=1)], "physics", model_name=model_name, jit=False
        )
        ref = ReferenceCell(chem, 0.5, model_name=model_name, rtol=1e-8, atol=1e-8)
        currents = _profile(twin, n_steps, seed=5, c_rate=1.0)[:, 0]
        worst_v, worst_soc = 0.0, 0.0
        for current in currents:
            r = ref.step(current, 10.0)
            s = twin.step_current(np.array([current]), 10.0, 25.0)
            worst_v = max(worst_v, abs(r["voltage_v"] - s.cell_voltage_v[0]))
            worst_soc = max(worst_soc, abs(r["soc"] - s.soc[0]))
        assert worst_v * 1e3 <= 1.0, (model_name, worst_v)
        assert worst_soc * 100 <= 0.1


def test_compiled_and_interpreted_steppers_are_bit_identical() -> None:
    packs = [PackSpec("nmc", initial_soc=0.3), PackSpec(" NMC ", initial_soc=0.7)]
    compiled = make_twin(packs, "physics", jit=True)
    interpreted = make_twin(packs, "physics", jit=False)
    assert not interpreted.jit
    for current in _profile(compiled, 10, seed=4):
        a = compiled.step_current(current, 10.0, 25.0)
        b = interpreted.step_current(current, 10.0, 25.0)
    np.testing.assert_array_equal(a.cell_voltage_v, b.cell_voltage_v)
    np.testing.assert_array_equal(a.temperature_c, b.temperature_c)


def test_degradation_sources_are_selectable() -> None:
    packs = [PackSpec("NMC")]
    soh = {}
    for mode in ("none", "sei", "empirical", "sei+empirical"):
        twin = make_twin(packs, "physics", degradation=mode, degradation_acceleration=1e3)
        for k in range(20):
            s = twin.step_current(np.array([10.0 if k < 10 else -10.0]), 30.0, 40.0)
        soh[mode] = s.soh[0]
    assert soh["none"] == 1.0
    assert soh["sei"] < 1.0
    assert soh["empirical"] < 1.0
    assert soh["sei+empirical"] == pytest.approx(soh["sei"] + soh["empirical"] - 1.0, abs=1e-12)
    with pytest.raises(ValueError, match="degradation"):
        make_twin(packs, "ecm", degradation="magic")


def test_aged_pack_fades_slower_than_a_fresh_one() -> None:
    """The fade laws continue from the loss matching the initial SoH (equivalent-time rule).

    Guards a known bug shape: restarting every law at zero loss made an aged pack fade at a
    fresh cell's steep initial rate, pricing a cycle tens of times too high.
    """
    from pulsebms.envs.pack import PackSpec
    from pulsebms.envs.twin import make_twin

    packs = [
        PackSpec("NMC", series=1, parallel=1, initial_soc=0.5, initial_soh=1.0),
        PackSpec("NMC", series=1, parallel=1, initial_soc=0.5, initial_soh=0.9),
    ]
    twin = make_twin(packs, fidelity="ecm")
    twin.reset()
    capacity_ah = float(twin.ratings.cell_capacity_ah[0])
    for k in range(40):
        sign = 1.0 if (k // 10) % 2 == 0 else -1.0
        states = twin.step_current(np.full(2, sign * capacity_ah), 60.0, 25.0)
    loss_fresh = 1.0 - states.soh[0]
    loss_aged = 0.9 - states.soh[1]
    assert loss_fresh > 0
    assert loss_aged > 0
    assert loss_aged < 0.5 * loss_fresh
