"""MPC: DPP, built once, respects the limits on random states (no simulator needed)."""

from __future__ import annotations

import numpy as np
import pytest
from fleet_fixtures import make_info, make_obs

from pulsebms.agents.envinfo import SiteInfo
from pulsebms.agents.mpc import MPCConfig, MPCPolicy


@pytest.fixture(scope="module")
def mpc() -> MPCPolicy:
    return MPCPolicy(
        make_info(),
        MPCConfig(horizon_steps=8),
        site_fn=lambda: SiteInfo(2000.0, 2000.0, 0.07),
    )


def test_problem_is_dpp_and_built_once(mpc: MPCPolicy) -> None:
    assert mpc.problem.is_dpp()
    problem = mpc.problem
    mpc.act(make_obs([0.5, 0.5, 0.5], 500.0))
    mpc.act(make_obs([0.3, 0.6, 0.9], -500.0))
    assert mpc.problem is problem


def test_mpc_respects_limits_on_random_states(mpc: MPCPolicy) -> None:
    """Guards the limit bounds and SoC window: any reachable state, any demand."""
    rng = np.random.default_rng(0)
    info = mpc.info
    for _ in range(25):
        soc = rng.uniform(0.0, 1.0, 3)
        obs = make_obs(
            soc,
            float(rng.uniform(-4000, 4000)),
            soh=list(rng.uniform(0.7, 1.0, 3)),
            temperature_c=list(rng.uniform(-25.0, 65.0, 3)),
            price=float(rng.uniform(0.05, 0.5)),
            price_forecast=list(rng.uniform(0.05, 0.5, 4)),
        )
        action = mpc.act(obs)
        fleet = info.reader.read(obs)
        assert mpc.last_status in ("optimal", "optimal_inaccurate")
        assert action.shape == (3,)
        assert np.all(np.abs(action) <= 1.0)
        # No discharge below the SoC floor or charge above the ceiling (one-step model).
        energy_wh = info.energy_wh * fleet.soh
        eta = mpc.config.efficiency
        gain = np.where(action > 0, 1.0 / eta, eta)
        next_soc = soc - gain * action * info.rated_power_w * info.dt_s / 3600.0 / energy_wh
        assert np.all((next_soc >= info.soc_min - 1e-6) | (action <= 1e-6))
        assert np.all((next_soc <= info.soc_max + 1e-6) | (action >= -1e-6))
        # Current and C-rate limits at nominal voltage; no power outside the thermal window.
        pack_v = info.energy_wh / info.capacity_ah
        current_a = np.abs(action) * info.rated_power_w / pack_v
        limit_a = np.minimum(info.current_max_a, info.c_rate_max * info.capacity_ah * fleet.soh)
        assert np.all(current_a <= limit_a * (1 + 1e-6) + 1e-6)
        outside = (fleet.temperature_c >= info.temperature_max_c) | (
            fleet.temperature_c <= info.temperature_min_c
        )
        assert np.all(np.abs(action[outside]) <= 1e-6)


def test_mpc_arbitrages_a_price_spread(mpc: MPCPolicy) -> None:
    cheap_then_dear = make_obs([0.5, 0.5, 0.5], 0.0, price=0.1, price_forecast=[0.1, 0.5, 0.5, 0.5])
    assert np.sum(mpc.act(cheap_then_dear)) < 0  # charges now
    dear_then_cheap = make_obs(
        [0.5, 0.5, 0.5], 1000.0, price=0.5, price_forecast=[0.1, 0.1, 0.1, 0.1]
    )
    assert np.sum(mpc.act(dear_then_cheap) * mpc.info.rated_power_w) > 500.0


def test_mpc_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="horizon_steps"):
        MPCConfig(horizon_steps=0)
    with pytest.raises(ValueError, match="efficiency"):
        MPCConfig(efficiency=1.5)


def test_mpc_actions_are_admissible_for_the_shield_on_random_env_states() -> None:
    """The MPC uses the shield's own limits: on random reachable states it needs no fix."""
    from pulsebms.agents.env_factory import make_env
    from pulsebms.agents.mpc import make_mpc, make_oracle_mpc

    env = make_env("PulseBMS/FleetSmall-v0", shield=False, dt_s=900.0, horizon_steps=8)
    rng = np.random.default_rng(1)
    policies = [make_mpc(env, horizon_steps=6), make_oracle_mpc(env, horizon_steps=6)]
    for policy in policies:
        assert policy.shield is not None
    for _ in range(8):
        obs, _ = env.reset(
            seed=int(rng.integers(1000)),
            options={
                "soc": rng.uniform(0.06, 0.94, 3),
                "temperature_c": rng.uniform(-10.0, 55.0, 3),
            },
        )
        state = env.unwrapped.fleet_state()
        for policy in policies:
            action = policy.act(obs).astype(np.float64)
            admissible = policy.shield.admissible(state)
            assert np.all(action >= admissible.lower - 1e-6)
            assert np.all(action <= admissible.upper + 1e-6)
    env.close()


def test_horizon_in_hours_is_converted_with_dt_and_blocked() -> None:
    assert MPCConfig(horizon_h=2.0).steps(60.0) == 120
    assert MPCConfig(horizon_h=2.0).steps(900.0) == 8
    day = MPCConfig(horizon_h=24.0)
    durations = day.durations(60.0)
    assert durations.sum() == 1440
    assert durations[0] == 1  # the applied action is one control step
    assert len(durations) <= day.max_plan_intervals + 1
    assert MPCConfig(horizon_steps=24).durations(60.0).tolist() == [1] * 24  # no blocking
    with pytest.raises(ValueError, match="horizon_h"):
        MPCConfig(horizon_h=0.0)
    with pytest.raises(ValueError, match="max_plan_intervals"):
        MPCConfig(max_plan_intervals=1)


class _EveningSpike:
    """Cheap price now, a spike 10 h ahead (60 s steps), a steady 1.5 kW site load."""

    def __call__(self, fleet: object, horizon_steps: int) -> tuple[np.ndarray, np.ndarray]:
        price = np.full(horizon_steps, 0.1)
        price[600:720] = 0.8
        return np.full(horizon_steps, 1500.0), price


def test_a_full_day_blocked_horizon_sees_what_24_steps_miss() -> None:
    """At 60 s steps a 24-step MPC plans 24 min: it cannot see a spike 10 h ahead."""
    info = make_info(dt_s=60.0)
    site = lambda: SiteInfo(2000.0, 2000.0, 0.0)  # noqa: E731
    obs = make_obs([0.5, 0.5, 0.5], 1500.0)
    short = MPCPolicy(info, MPCConfig(horizon_steps=24), forecast=_EveningSpike(), site_fn=site)
    day = MPCPolicy(
        info,
        MPCConfig(horizon_h=24.0, plan_step_s=900.0),
        forecast=_EveningSpike(),
        site_fn=site,
    )
    assert day.horizon_steps == 1440
    plan = day.plan(obs)
    assert day.last_status in ("optimal", "optimal_inaccurate")
    assert plan.shape == (3, 1440)
    # Blocks hold one action: within the second block (steps 1..15) the plan is constant.
    np.testing.assert_array_equal(plan[:, 1:16], np.repeat(plan[:, 1:2], 15, axis=1))
    assert np.sum(plan[:, :600]) < -1.0  # charges before the spike
    assert np.sum(plan[:, 600:720]) > 1.0  # discharges into it
    assert abs(float(np.sum(short.act(obs)))) < 1e-3  # flat price over its 24 min: idle


def test_oracle_plans_a_full_day_by_default_at_60_s_steps() -> None:
    from pulsebms.agents.env_factory import make_env
    from pulsebms.agents.mpc import make_mpc, make_oracle_mpc

    env = make_env("PulseBMS/FleetSmall-v0", dt_s=60.0, horizon_steps=30)
    assert make_mpc(env).horizon_steps == 24
    oracle = make_oracle_mpc(env)
    assert oracle.horizon_steps == 1440
    assert oracle.name == "mpc_oracle"
    assert make_oracle_mpc(env, horizon_steps=6).horizon_steps == 6  # explicit wins
    assert make_mpc(env, horizon_h=1.0).horizon_steps == 60
    obs, _ = env.reset(seed=0)
    assert oracle.act(obs).shape == (3,)
    assert oracle.last_status in ("optimal", "optimal_inaccurate")
    env.close()


def test_the_plan_itself_stays_in_the_shields_admissible_set() -> None:
    """Regression: the plan's first step stays in the shield's admissible set.

    The first-step bounds were appended after the problem was built, so the plan's first
    step ignored the shield's admissible set (the oracle then asked for what
    the shield cut on a third of the hot day's steps).
    """
    from pulsebms.agents.env_factory import make_env
    from pulsebms.agents.mpc import make_oracle_mpc

    evening = {"base": "tou", "start_hour": 17.0}  # the peak price: the oracle discharges
    env = make_env(
        "PulseBMS/FleetSmall-v0", shield=False, scenario=evening, dt_s=900.0, horizon_steps=8
    )
    # One step, stored energy worth nothing: it discharges as far as it may.
    oracle = make_oracle_mpc(env, horizon_steps=1, terminal_value_per_kwh=0.0)
    rng = np.random.default_rng(2)
    binding = 0
    for _ in range(6):
        obs, _ = env.reset(
            seed=int(rng.integers(1000)),
            # Hot packs near their limit: the shield derates them below the C-rate bound.
            options={"soc": rng.uniform(0.5, 0.94, 3), "temperature_c": rng.uniform(48, 58, 3)},
        )
        admissible = oracle.shield.admissible(env.unwrapped.fleet_state())
        first = oracle.plan(obs)[:, 0]
        assert np.all(first >= admissible.lower - 1e-6)
        assert np.all(first <= admissible.upper + 1e-6)
        binding += int(np.any((admissible.upper < 0.9) & (np.abs(first - admissible.upper) < 1e-4)))
    assert binding > 0  # the bound is reached on some state: the check is not vacuous
    env.close()


def test_with_a_stored_energy_price_the_plan_ends_at_the_episode_end() -> None:
    """A spike after the episode's end is no reason to charge.

    The plan stops at the end (no power past it) and values what is stored there at the env's price.
    """
    info = make_info(dt_s=60.0)
    obs = make_obs([0.5, 0.5, 0.5], 1500.0)
    config = MPCConfig(horizon_h=24.0, plan_step_s=900.0)

    def plan(site: SiteInfo) -> np.ndarray:
        policy = MPCPolicy(info, config, forecast=_EveningSpike(), site_fn=lambda: site)
        out = policy.plan(obs)
        assert policy.last_status in ("optimal", "optimal_inaccurate")
        return out

    past_end = plan(SiteInfo(2000.0, 2000.0, 0.0))  # no stored-energy price: old behaviour
    assert np.sum(past_end[:, :600]) < -1.0  # charges for the spike 10 h ahead
    ends = plan(SiteInfo(2000.0, 2000.0, 0.0, stored_energy_price_per_kwh=0.1, steps_left=300))
    assert np.all(np.abs(ends[:, 316:]) < 1e-9)  # nothing past the block that holds the end
    assert abs(float(np.sum(ends))) < 1e-2  # flat 0.1 until the end, energy worth 0.1: idle
    valued = plan(SiteInfo(2000.0, 2000.0, 0.0, stored_energy_price_per_kwh=0.5, steps_left=300))
    assert np.sum(valued[:, :300]) < -1.0  # stored energy worth more than it costs: charge


def test_mpc_day_reads_the_observation_and_plans_what_the_oracle_plans() -> None:
    """``mpc_day``: the full-day MPC on the observation's forecast (issue 12's cold gap).

    With a perfect 24 h forecast in the observation it acts exactly like the MPC-oracle
    (the benchmarks' ``mpc`` differs from the oracle by its 24-step horizon, not by what it
    knows); with a noisy forecast it acts on the forecast, not on the true future.
    """
    from pulsebms.agents.env_factory import make_env
    from pulsebms.agents.workflow import BASELINES, EXTRA_BASELINES, baseline_factories

    assert "mpc_day" in EXTRA_BASELINES
    assert "mpc_day" not in BASELINES
    acted: dict[str, list[np.ndarray]] = {}
    for forecast in ("perfect", "noisy"):
        env = make_env(
            "PulseBMS/FleetSmall-v0",
            shield=False,
            scenario={
                "base": "tou",
                "forecast": forecast,
                "forecast_noise_1h": 0.2,
                "start_hour": 13.0,
            },
            dt_s=1800.0,
            horizon_steps=12,
            forecast_h=24.0,
            site_observation=True,
            stored_energy_value="min_price",
        )
        factories = baseline_factories(["mpc_day", "mpc_oracle"])
        day, oracle = factories["mpc_day"](env), factories["mpc_oracle"](env)
        assert getattr(day, "name", "") == "mpc_day"
        assert getattr(day, "horizon_steps", 0) == 48
        obs, _ = env.reset(seed=3)
        pairs = []
        for _ in range(4):
            a_day, a_oracle = day.act(obs), oracle.act(obs)
            pairs.append(np.stack([a_day, a_oracle]))
            obs, *_ = env.step(a_oracle)
        acted[forecast] = pairs
        env.close()
    for pair in acted["perfect"]:
        np.testing.assert_allclose(pair[0], pair[1], atol=1e-6)
    assert max(float(np.max(np.abs(p[0] - p[1]))) for p in acted["noisy"]) > 1e-3
