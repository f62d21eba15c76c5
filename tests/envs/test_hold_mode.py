"""Hold modes: what a decision holds between decisions (the fast plant loop of envs.hold)."""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from pulsebms.agents.env_factory import make_env
from pulsebms.envs.decision import DecisionIntervalPolicy, DecisionIntervalWrapper
from pulsebms.envs.hold import PlantLoop, check_hold_mode, plant_loop

DT_S = 60.0
SUBSTEPS = 5
HORIZON = 10


class _Record(gym.Wrapper[Any, Any, Any, Any]):
    """Between the decision wrapper and the shield: every plant step's set-points and info."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.sent: list[np.ndarray] = []
        self.infos: list[dict[str, Any]] = []

    def step(self, action: Any) -> Any:
        self.sent.append(np.asarray(action, dtype=np.float64).copy())
        out = self.env.step(action)
        self.infos.append(out[4])
        return out


def _env() -> Any:
    return make_env(
        "PulseBMS/FleetSmall-v0",
        dt_s=DT_S,
        horizon_steps=HORIZON,
        fidelity="ecm",
        site_observation=True,
    )


def _step_net_load(env: Any, base_w: float, jumps_w: dict[int, float]) -> None:
    """Construct the net load after reset: ``base_w`` from step 1, a step change from ``k`` on."""
    fleet = env.unwrapped
    net = fleet.series.net_load_w.copy()
    for k in range(1, len(net)):
        net[k] = base_w + sum(v for start, v in jumps_w.items() if k >= start)
    fleet._series = dataclasses.replace(fleet.series, net_load_w=net)


def _run(mode: str, action: np.ndarray, jumps_w: dict[int, float]) -> _Record:
    inner = _env()
    record = _Record(inner)
    env = DecisionIntervalWrapper(record, DT_S * SUBSTEPS, hold_mode=mode)
    env.reset(seed=1)
    base_w = float(inner.unwrapped.series.net_load_w[0])
    _step_net_load(inner, base_w, jumps_w)
    env.step(action)
    env.close()
    return record


def test_grid_mode_holds_the_grid_exchange_across_a_net_load_step() -> None:
    action = np.array([0.2, 0.3, 0.1], dtype=np.float32)  # discharge, one sign
    jumps = {2: 400.0, 4: -700.0}  # net load +400 W from step 2, then −300 W from step 4
    grid = _run("grid", action, jumps)
    held = _run("action", action, jumps)
    exchange = [i["net_load_w"] - i["fleet_power_w"] for i in grid.infos]
    assert len(exchange) == SUBSTEPS
    assert max(exchange) - min(exchange) < 0.05  # W: float32 set-points, not the 400 W step
    assert all(i["shield"]["intervened"] == 0 for i in grid.infos)  # nothing saturated
    # The fleet followed the step, shared in proportion to the decided pack powers.
    rated = _env().unwrapped.ratings.rated_power_w
    power = [s * rated for s in grid.sent]
    expected_w = 400.0 * action * rated / (action @ rated)
    np.testing.assert_allclose(power[2] - power[1], expected_w, atol=0.05)
    np.testing.assert_array_equal(grid.sent[0], action)  # the decision step: as decided
    # Holding the set-points instead, the grid exchange moves with the net load.
    held_exchange = [i["net_load_w"] - i["fleet_power_w"] for i in held.infos]
    assert held_exchange[2] - held_exchange[1] == pytest.approx(400.0, abs=0.05)
    for sent in held.sent:
        np.testing.assert_array_equal(sent, action)


def test_grid_mode_saturates_and_shares_an_idle_decision_by_rated_power() -> None:
    loop = PlantLoop("grid", rated_w=[1000.0, 3000.0], demand_index=0, demand_scale_w=4000.0)
    at_decision = np.array([0.25])  # 1000 W net load
    idle = np.zeros(2, dtype=np.float32)
    out = loop.action(idle, at_decision, np.array([0.35]), first=False)  # +400 W
    np.testing.assert_allclose(out, [0.1, 0.1], rtol=1e-6)  # by rated power: 100 W + 300 W
    mixed = np.array([0.5, -0.5], dtype=np.float32)
    out = loop.action(mixed, at_decision, np.array([0.35]), first=False)
    np.testing.assert_allclose(out, [0.6, -0.4], rtol=1e-6)
    big = loop.action(np.array([0.9, 0.9], np.float32), at_decision, np.array([1.5]), first=False)
    np.testing.assert_array_equal(big, [1.0, 1.0])  # saturated: clipped, not handed over
    nan = loop.action(np.array([np.nan, 0.5], np.float32), at_decision, at_decision, first=False)
    assert np.all(np.isfinite(nan))


def test_import_cap_covers_the_excess_over_the_import_limit() -> None:
    action = np.array([0.0, -0.2, 0.1], dtype=np.float32)  # one pack charging
    record = _Record(_env())
    env = DecisionIntervalWrapper(record, DT_S * SUBSTEPS, hold_mode="import_cap")
    env.reset(seed=1)
    limit_w = float(record.unwrapped.series.grid_import_limit_w)
    assert record.unwrapped.series.net_load_w[0] < limit_w
    _step_net_load(record, limit_w + 600.0, {})  # from step 1: 600 W over the limit
    env.step(action)
    np.testing.assert_array_equal(record.sent[0], action)  # step 0: under the limit
    for sent, info in zip(record.sent[1:], record.infos[1:], strict=True):
        assert np.all(sent >= action - 1e-7)  # only ever more discharge
        assert info["unserved_w"] == pytest.approx(0.0, abs=0.05)  # W, of 600 W over
        assert info["grid_import_w"] == pytest.approx(limit_w, abs=0.05)
    env.close()
    with pytest.raises(ValueError, match="grid_import_limit_w"):
        plant_loop(make_env("PulseBMS/FleetSmall-v0", horizon_steps=4), "import_cap")


def test_policy_twin_holds_like_the_wrapper_in_every_mode() -> None:
    """DecisionIntervalPolicy with the env's plant loop sends what the wrapper sends."""
    actions = np.random.default_rng(3).uniform(-0.6, 0.6, (HORIZON, 3)).astype(np.float32)
    for mode in ("grid", "import_cap"):

        class Fixed:
            def __init__(self) -> None:
                self.k = 0

            def act(self, observation: Any) -> np.ndarray:
                self.k += 1
                return actions[self.k - 1]

        record = _Record(_env())
        wrapped = DecisionIntervalWrapper(record, DT_S * SUBSTEPS, hold_mode=mode)
        behind = Fixed()
        obs, _ = wrapped.reset(seed=4)
        done = False
        while not done:
            obs, _r, term, trunc, info = wrapped.step(behind.act(obs))
            done = term or trunc
        assert info["decision"]["hold_mode"] == mode
        env = _env()
        policy = DecisionIntervalPolicy(Fixed(), SUBSTEPS, loop=plant_loop(env, mode))
        assert policy.hold_mode == mode
        obs, _ = env.reset(seed=4)
        for sent in record.sent:
            out = policy.act(obs)
            np.testing.assert_array_equal(np.asarray(out, np.float64), sent)
            obs, *_ = env.step(out)
        if mode == "grid":  # the loop moved the set-points within the first hold
            assert any(not np.array_equal(s, actions[0]) for s in record.sent[1:SUBSTEPS])
        env.close()
        wrapped.close()


def test_default_mode_sends_the_action_itself_and_bad_modes_are_refused() -> None:
    record = _Record(_env())
    env = DecisionIntervalWrapper(record, DT_S * SUBSTEPS)
    assert env.hold_mode == "action"
    env.reset(seed=2)
    action = np.array([0.3, -0.1, 0.2], dtype=np.float32)
    _obs, _r, _t, _tr, info = env.step(action)
    assert all(sent is not None for sent in record.sent)
    for sent in record.sent:
        np.testing.assert_array_equal(sent, action)
    assert "hold_mode" not in info["decision"]  # the info as before the field
    assert DecisionIntervalPolicy(object(), 3).hold_mode == "action"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hold_mode"):
        DecisionIntervalWrapper(_env(), 300.0, hold_mode="power")
    with pytest.raises(ValueError, match="hold_mode"):
        check_hold_mode("grid_exchange")
    with pytest.raises(ValueError, match="no plant loop"):
        PlantLoop("action", rated_w=[1.0], demand_index=0, demand_scale_w=1.0)
    env.close()
