"""FleetEnv: spaces and layout, site and reward model, faults, action handling, bad input."""

from __future__ import annotations

import gc
import json
import tracemalloc

import numpy as np
import pytest
from env_stubs import StubTwin, stub_factory

from pulsebms.envs import DEFAULT_FLEET, FleetEnv, PackSpec
from pulsebms.envs.checker import infos_equal
from pulsebms.safety import FleetState, PackLimits, Violation

SMALL = [{"chemistry": "LFP"}, {"chemistry": "NMC"}, {"chemistry": "LCO"}]


def _stub_env(**kwargs) -> FleetEnv:
    kwargs.setdefault("fleet", SMALL)
    kwargs.setdefault("twin_factory", stub_factory())
    kwargs.setdefault("horizon_steps", 48)
    return FleetEnv(**kwargs)


def test_spaces_layout_and_shield_facing_attributes() -> None:
    env = _stub_env(forecast_steps=3)
    n = 3
    assert env.action_space.shape == (n,)
    assert env.action_space.dtype == np.float32
    layout = env.observation_layout
    assert env.observation_space.shape == (5 * n + 1 + 3 + 1 + 3 + 1 + 2,)
    assert layout.size == env.observation_space.shape[0]
    assert list(layout.slices) == [
        "soc", "soh", "temperature_c", "cell_voltage_v", "current_c_rate", "demand_w",
        "demand_forecast_w", "price_per_kwh", "price_forecast_per_kwh", "ambient_c",
        "time_of_day_sin", "time_of_day_cos",
    ]  # fmt: skip
    assert layout.units["temperature_c"] == "degC"
    assert layout.scales["demand_w"] == env.fleet_rated_power_w
    assert env.observation_names[:3] == ("soc[lfp-0]", "soc[nmc-1]", "soc[lco-2]")
    assert "demand_forecast_w[+3]" in env.observation_names
    described = json.loads(json.dumps(layout.to_dict()))
    assert described["size"] == layout.size
    assert described["fields"][2]["unit"] == "degC"
    assert env.dt_s == 300.0
    assert len(env.pack_limits) == n
    assert all(isinstance(lim, PackLimits) for lim in env.pack_limits)
    assert env.pack_limits[0].cell_voltage_max_v == 3.6  # LFP window, not NMC's
    assert env.ratings.n_packs == n
    with pytest.raises(RuntimeError, match="reset"):
        env.fleet_state()
    obs, info = env.reset(seed=1)
    state = env.fleet_state()
    assert isinstance(state, FleetState)
    phys = layout.unpack(obs)
    np.testing.assert_allclose(phys["soc"], state.soc, atol=1e-6)
    np.testing.assert_allclose(phys["temperature_c"], state.temperature_c, atol=1e-4)
    assert phys["demand_w"][0] == pytest.approx(env.series.net_load_w[0], rel=1e-5)
    assert state.demand_w == pytest.approx(env.series.net_load_w[0])
    assert info["site_peak_load_w"] == pytest.approx(env.fleet_rated_power_w)


def test_agents_observation_reader_reads_the_layout() -> None:
    import pulsebms.agents.observation as reader_mod

    env = _stub_env()
    obs, _ = env.reset(seed=0)
    reader = reader_mod.ObservationReader(
        env.observation_layout.slices, scales=env.observation_layout.scales
    )
    read = reader.read(obs)
    np.testing.assert_allclose(read.soc, env.fleet_state().soc, atol=1e-6)
    assert read.demand_w == pytest.approx(env.series.net_load_w[0], rel=1e-5)
    typed = reader_mod.ObservationReader(env.observation_layout).read(obs)  # the core type
    for name, value in vars(read).items():
        np.testing.assert_array_equal(getattr(typed, name), value)


def test_reward_is_minus_the_sum_of_documented_terms() -> None:
    env = _stub_env(scenario={"base": "tou", "load_noise": 0.0, "start_day": 30})
    env.reset(seed=0)
    series = env.series
    _, reward, terminated, truncated, info = env.step(np.zeros(3, dtype=np.float32))
    dt_h = env.dt_s / 3600.0
    net = series.net_load_w[0]
    assert info["fleet_power_w"] == 0.0
    assert info["grid_import_w"] == pytest.approx(min(net, series.grid_import_limit_w))
    assert info["unserved_w"] == pytest.approx(max(net - series.grid_import_limit_w, 0.0))
    expected_energy = series.price_eur_per_kwh[0] * info["grid_import_w"] / 1000.0 * dt_h
    assert info["energy_cost_eur"] == pytest.approx(expected_energy)
    total = sum(
        info[k]
        for k in (
            "energy_cost_eur",
            "degradation_cost_eur",
            "unserved_penalty_eur",
            "fault_penalty_eur",
        )
    )
    assert reward == pytest.approx(-total)
    assert info["total_cost_eur"] == pytest.approx(total)
    assert not terminated
    assert not truncated


def test_discharging_into_the_site_reduces_energy_cost_and_export_earns() -> None:
    env = _stub_env(scenario={"base": "tou", "load_noise": 0.0, "start_day": 30})
    env.reset(seed=0)
    _, _, _, _, idle = env.step(np.zeros(3, dtype=np.float32))
    env.reset(seed=0)
    _, _, _, _, dis = env.step(np.full(3, 0.5, dtype=np.float32))
    assert dis["fleet_power_w"] > 0
    assert dis["grid_import_w"] < idle["grid_import_w"]
    assert dis["energy_cost_eur"] < idle["energy_cost_eur"]
    env.reset(seed=0)
    _, _, _, _, full = env.step(np.ones(3, dtype=np.float32))  # fleet 1 p.u. > net load
    assert full["grid_export_w"] > 0
    assert full["grid_import_w"] == 0.0
    assert full["energy_cost_eur"] < 0  # feed-in revenue


def test_unserved_load_is_penalised_at_value_of_lost_load() -> None:
    env = _stub_env(
        scenario={"base": "tou", "grid_import_ratio": 0.1},
        costs={"value_of_lost_load_eur_per_kwh": 7.0},
    )
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(3, dtype=np.float32))
    assert info["unserved_w"] > 0
    assert info["unserved_penalty_eur"] == pytest.approx(
        7.0 * info["unserved_w"] / 1000.0 * env.dt_s / 3600.0
    )


def test_peak_shaving_request() -> None:
    env = _stub_env(
        scenario={"base": "tou", "grid_import_ratio": 0.2}, fleet_request="peak_shaving"
    )
    env.reset(seed=0)
    want = max(env.series.net_load_w[0] - env.series.grid_import_limit_w, 0.0)
    assert env.fleet_state().demand_w == pytest.approx(want)


def test_degradation_cost_divides_out_the_acceleration() -> None:
    costs = []
    for acc in (1.0, 100.0):
        env = _stub_env(degradation_acceleration=acc, scenario="flat")
        env.reset(seed=0)
        _, _, _, _, info = env.step(np.full(3, 0.8, dtype=np.float32))
        costs.append((info["degradation_cost_eur"], info["soh_loss"]))
    assert costs[1][1] == pytest.approx(100 * costs[0][1], rel=1e-6)
    assert costs[1][0] == pytest.approx(costs[0][0], rel=1e-6)
    assert costs[0][0] > 0


def test_nan_inf_and_out_of_range_actions_are_clipped_and_reported() -> None:
    env = _stub_env()
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.array([np.nan, np.inf, -7.0], dtype=np.float32))
    assert np.isfinite(reward)
    assert info["action_nan_count"] == 1
    assert info["action_clipped_count"] == 2
    assert info["pack_power_w"][0] == 0.0
    assert info["fleet_setpoint_w"] == pytest.approx(
        env.ratings.rated_power_w[1] - env.ratings.rated_power_w[2]
    )
    with pytest.raises(ValueError, match="3 elements"):
        env.step(np.zeros(2, dtype=np.float32))


def test_unfollowable_setpoint_terminates_with_cost_not_exception() -> None:
    env = _stub_env(twin_factory=stub_factory(fault_below_soc=0.02))
    env.reset(seed=0, options={"soc": 0.03})
    terminated, steps = False, 0
    while not terminated and steps < 20:
        _, reward, terminated, truncated, info = env.step(np.ones(3, dtype=np.float32))
        steps += 1
    assert terminated
    assert not truncated
    assert info["fault"]
    assert "voltage cut-off" in info["fault_reason"]
    assert info["cost"] >= 1.0
    assert info["fault_penalty_eur"] > 0
    assert reward < -1.0
    assert not env.fleet_state().valid.all()
    with pytest.raises(RuntimeError, match="episode has ended"):
        env.step(np.zeros(3, dtype=np.float32))
    env.reset(seed=0)  # a reset recovers
    assert env.fleet_state().valid.all()


def test_real_twin_fault_ends_episode_with_cost() -> None:
    env = FleetEnv(fleet=SMALL, fidelity="ecm", horizon_steps=48, scenario="tou")
    env.reset(seed=0, options={"soc": 0.06})
    terminated, steps = False, 0
    while not terminated and steps < 48:
        _, reward, terminated, _truncated, info = env.step(np.ones(3, dtype=np.float32))
        steps += 1
    assert terminated
    assert info["fault"]
    assert info["fault_reason"]
    assert info["cost"] > 0
    assert info["fault_penalty_eur"] > 0
    assert np.isfinite(reward)


def test_violations_are_measured_after_the_step() -> None:
    env = FleetEnv(fleet=SMALL, fidelity="ecm", horizon_steps=8, scenario="tou")
    env.reset(seed=0, options={"soc": 0.97})
    _, _, _, _, info = env.step(np.zeros(3, dtype=np.float32))
    assert info["n_violations"] >= 3
    assert all(isinstance(v, Violation) for v in info["violations"])
    assert {v.limit for v in info["violations"]} >= {"soc_max"}
    assert info["cost"] > 0


def test_truncates_at_horizon() -> None:
    env = _stub_env(horizon_steps=5)
    env.reset(seed=0)
    flags = [env.step(np.zeros(3, dtype=np.float32))[2:4] for _ in range(5)]
    assert flags[-1] == (False, True)
    assert all(f == (False, False) for f in flags[:-1])


def test_reset_options_and_randomisation() -> None:
    env = _stub_env(randomize_initial_state=True, initial_soc_range=(0.3, 0.4))
    env.reset(seed=5)
    soc_a = env.fleet_state().soc.copy()
    assert np.all((soc_a >= 0.3) & (soc_a <= 0.4))
    env.reset(seed=5)
    np.testing.assert_array_equal(env.fleet_state().soc, soc_a)
    env.reset(seed=5, options={"soc": [0.1, 0.2, 0.3], "temperature_c": 30.0, "soh": 0.9})
    state = env.fleet_state()
    np.testing.assert_allclose(state.soc, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(state.temperature_c, 30.0)
    env.reset(seed=5, options={"randomize_initial_state": False})
    np.testing.assert_allclose(env.fleet_state().soc, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"bogus": 1})
    with pytest.raises(ValueError, match="needs one value or 3"):
        env.reset(options={"soc": [0.1, 0.2]})


def test_packs_start_at_ambient_unless_specified() -> None:
    fleet = [{"chemistry": "LFP"}, {"chemistry": "NMC", "initial_temperature_c": 40.0}]
    env = _stub_env(fleet=fleet, scenario="hot")
    env.reset(seed=0)
    temp = env.fleet_state().temperature_c
    assert temp[0] == pytest.approx(env.series.ambient_c[0])
    assert temp[1] == 40.0


def test_render_ansi() -> None:
    env = _stub_env(render_mode="ansi")
    env.reset(seed=0)
    env.step(np.zeros(3, dtype=np.float32))
    text = env.render()
    assert isinstance(text, str)
    assert "lfp-0" in text
    assert "EUR" in text
    assert _stub_env().render() is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fleet": [{"chemistry": "NaIon"}]}, r"fleet\[0\]\.chemistry: unknown chemistry 'NaIon'"),
        (
            {"fleet": [{"chemistry": "LFP"}, {"chem": "NMC"}]},
            r"fleet\[1\]: unknown PackSpec field\(s\) \['chem'\]",
        ),
        ({"fleet": [{"series": 4}]}, r"fleet\[0\]\.chemistry is required"),
        (
            {"fleet": [{"chemistry": "LFP", "initial_soc": 1.5}]},
            r"fleet\[0\]: PackSpec.initial_soc",
        ),
        ({"fleet": []}, "non-empty"),
        (
            {"fleet": [{"chemistry": "LFP", "name": "a"}, {"chemistry": "NMC", "name": "a"}]},
            "unique",
        ),
        ({"fidelity": "exact"}, "fidelity must be one of"),
        ({"dt_s": 0}, "dt_s must be"),
        ({"horizon_steps": 0}, "horizon_steps"),
        ({"forecast_steps": -1}, "forecast_steps"),
        ({"scenario": "nope"}, "unknown scenario"),
        ({"limits": {"soc_maximum": 0.9}}, r"unknown PackLimits field\(s\) \['soc_maximum'\]"),
        ({"limits": {"NaIon": {"soc_max": 0.9}}}, r"limits\['NaIon'\]: unknown chemistry"),
        ({"costs": {"vol": 1.0}}, r"unknown cost weight\(s\) \['vol'\]"),
        ({"degradation_acceleration": 0.5}, "degradation_acceleration"),
        ({"fleet_request": "all"}, "fleet_request"),
        ({"render_mode": "human"}, "render_mode"),
    ],
)
def test_bad_input_errors_name_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _stub_env(**kwargs)


def test_limit_overrides_common_and_per_chemistry() -> None:
    env = _stub_env(limits={"soc_max": 0.9, "NMC": {"soc_max": 0.8}})
    assert [lim.soc_max for lim in env.pack_limits] == [0.9, 0.8, 0.9]


def test_pack_specs_and_default_fleet_accepted() -> None:
    env = _stub_env(fleet=[PackSpec("lfp", name="x"), {"chemistry": "nmc"}])
    assert env.pack_names == ("x", "nmc-1")
    assert env.ratings.chemistry == ("LFP", "NMC")
    assert FleetEnv(twin_factory=stub_factory()).packs == DEFAULT_FLEET


def test_step_before_reset_raises() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        _stub_env().step(np.zeros(3, dtype=np.float32))


def test_determinism_and_seed_sensitivity_with_stub() -> None:
    def roll(seed: int) -> list:
        env = _stub_env(scenario="stochastic", randomize_initial_state=True)
        out = [env.reset(seed=seed)]
        rng = np.random.default_rng(9)
        for _ in range(30):
            out.append(env.step(rng.uniform(-0.3, 0.3, 3).astype(np.float32)))
            if out[-1][2] or out[-1][3]:
                break
        return out

    assert infos_equal(roll(1), roll(1))
    assert not infos_equal(roll(1), roll(2))


def test_memory_stays_flat_over_a_long_run() -> None:
    env = _stub_env(horizon_steps=20_000, scenario="default")
    env.reset(seed=0)
    zero = np.zeros(3, dtype=np.float32)
    for _ in range(500):
        env.step(zero)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(2000):
        env.step(zero)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 64 * 1024, f"memory grew by {growth} bytes over 2000 steps"


def test_stub_twin_satisfies_the_protocol() -> None:
    from pulsebms.envs.twin.base import FleetTwin

    assert isinstance(StubTwin(DEFAULT_FLEET), FleetTwin)


class _CrashingTwin(StubTwin):
    def step(self, power_w, dt_s, ambient_c):  # type: ignore[no-untyped-def]
        raise RuntimeError("solver exploded")


class _NanTwin(StubTwin):
    def step(self, power_w, dt_s, ambient_c):  # type: ignore[no-untyped-def]
        super().step(power_w, dt_s, ambient_c)
        self._v = np.array([np.nan, *self._v[1:]])
        return self._report()


@pytest.mark.parametrize(
    ("twin", "reason"),
    [(_CrashingTwin, "twin error: RuntimeError: solver exploded"), (_NanTwin, "non-finite state")],
)
def test_twin_exceptions_and_nan_states_become_faults(twin: type, reason: str) -> None:
    env = _stub_env(twin_factory=lambda packs, **kw: twin(packs, **kw))
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.zeros(3, dtype=np.float32))
    assert terminated
    assert not truncated
    assert reason in info["fault_reason"]
    assert np.isfinite(reward)
    assert np.all(np.isfinite(obs))
    assert info["cost"] > 0
