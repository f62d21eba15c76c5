"""``ShieldWrapper`` alone, on a tiny stub env that records what it received."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from pulsebms.safety import FleetState, PackRatings, ShieldWrapper, fleet_limits
from pulsebms.safety.wrapper import cast_toward_zero


class RecordingFleetEnv(gym.Env[np.ndarray, np.ndarray]):
    """Two NMC packs; the state is whatever the test sets; steps record the action."""

    def __init__(self) -> None:
        self.ratings = PackRatings(
            ("NMC", "LFP"),
            np.array([14, 16]),
            np.array([10, 20]),
            np.array([5.1532, 2.30345]),
            np.array([2500.0, 2600.0]),
        )
        self.dt_s = 60.0
        self.pack_limits = fleet_limits(self.ratings)
        self.observation_layout: Any = None  # FleetEnvLike (the wrapper does not read it)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self.received: list[np.ndarray] = []
        self.state = FleetState(
            soc=np.array([0.5, 0.5]),
            soh=np.ones(2),
            temperature_c=np.full(2, 25.0),
            cell_voltage_v=np.array([3.7, 3.3]),
            current_a=np.zeros(2),
            demand_w=1000.0,
        )

    def fleet_state(self) -> FleetState:
        return self.state

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.received.append(np.array(action, copy=True))
        return np.zeros(1, dtype=np.float32), 0.0, False, False, {"cost": 0.25}


def _wrapped(**kwargs: Any) -> tuple[ShieldWrapper, RecordingFleetEnv]:
    env = RecordingFleetEnv()
    wrapped = ShieldWrapper(env, **kwargs)
    wrapped.reset(seed=0)
    return wrapped, env


def test_safe_action_passes_unchanged() -> None:
    wrapped, env = _wrapped()
    action = np.array([0.25, -0.125], dtype=np.float32)
    _, _, _, _, info = wrapped.step(action)
    assert np.array_equal(env.received[0], action)
    assert env.received[0].dtype == np.float32
    assert info["shield"]["intervened"] == 0
    assert info["shield"]["magnitude"] == 0.0
    assert info["shield"]["status"] == "OK"
    assert info["cost_pre_shield"] == 0.0
    assert info["cost"] == 0.25  # the env's own info is kept


def test_unsafe_action_is_projected_and_reported() -> None:
    wrapped, env = _wrapped()
    env.state.soc[0] = 0.95  # full: cannot charge
    env.state.cell_voltage_v[0] = 4.1
    action = np.array([-0.5, 0.0], dtype=np.float32)
    _, _, _, _, info = wrapped.step(action)
    applied = env.received[0]
    result = wrapped.last_result
    assert result is not None
    assert applied[0] == 0.0
    assert applied[1] <= result.upper[1]
    # The policy's total is kept: pack 1 charges instead.
    assert float(applied.astype(np.float64) @ env.ratings.rated_power_w) == pytest.approx(
        -1250.0, rel=1e-5
    )
    shield_info = info["shield"]
    assert shield_info["intervened"] == 2
    assert shield_info["magnitude"] == pytest.approx(float(np.sum(np.abs(applied - action))))
    assert shield_info["reasons"][0] == ("soc_max",)
    assert shield_info["reasons"][1] == ("redistributed",)
    assert shield_info["status"] == "PROJECTED"
    assert info["cost_pre_shield"] > 0.0


def test_nan_action_and_demand_tracking() -> None:
    wrapped, env = _wrapped(track_demand=True)
    _, _, _, _, info = wrapped.step(np.array([math.nan, 0.0], dtype=np.float32))
    applied = env.received[0].astype(np.float64)
    assert np.all(np.isfinite(applied))
    assert applied @ env.ratings.rated_power_w == pytest.approx(1000.0, rel=1e-5)
    assert "INVALID_ACTION" in info["shield"]["status"]
    assert info["shield"]["reasons"][0][0] == "action_not_finite"


def test_limit_overrides_apply_on_env_limits() -> None:
    wrapped, env = _wrapped(limits={"soc_max": 0.5})
    assert all(lim.soc_max == 0.5 for lim in wrapped.shield.limits)
    assert wrapped.shield.limits[1].cell_voltage_max_v == 3.6  # LFP window kept
    wrapped.step(np.array([-0.5, -0.5], dtype=np.float32))
    assert np.all(env.received[0] == 0.0)


def test_rejects_a_non_box_action_space() -> None:
    env = RecordingFleetEnv()
    env.action_space = gym.spaces.Discrete(3)
    with pytest.raises(ValueError, match="Box"):
        ShieldWrapper(env)


def test_cast_toward_zero_never_grows() -> None:
    values = np.array([0.1, -0.1, 1 / 3, -2 / 3, 0.0, 1.0])
    cast = cast_toward_zero(values, np.dtype(np.float32))
    assert cast.dtype == np.float32
    assert np.all(np.abs(cast.astype(np.float64)) <= np.abs(values))
    assert np.allclose(cast, values, atol=1e-7)


def test_settings_reach_the_shield() -> None:
    from pulsebms.safety import ShieldSettings

    wrapped, _ = _wrapped(settings={"soc_margin": 0.01, "track_demand": True})
    assert wrapped.shield.settings == ShieldSettings(soc_margin=0.01, track_demand=True)
    assert wrapped.track_demand
    legacy, _ = _wrapped(soc_margin=0.01, track_demand=True)
    assert legacy.settings == wrapped.settings
    with pytest.raises(ValueError, match="known"):
        _wrapped(settings={"soc_marign": 0.01})


def test_rejects_an_env_that_is_not_fleet_like() -> None:
    env = RecordingFleetEnv()
    del env.pack_limits
    with pytest.raises(TypeError, match="FleetEnvLike"):
        ShieldWrapper(env)
