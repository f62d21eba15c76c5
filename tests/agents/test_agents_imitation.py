"""Imitation of the forecast MPC: deterministic demonstrations, cloning that tracks the teacher."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pulsebms.agents.env_factory import make_env_factory
from pulsebms.agents.imitation import (
    Demonstrations,
    ImitationConfig,
    action_mse,
    clone_into,
    collect_demonstrations,
)
from pulsebms.agents.mpc import make_mpc
from pulsebms.agents.policy import SB3Policy
from pulsebms.agents.sb3 import PPOConfig, build_model, make_vec_env, policy_from_run, train_agent

# The suite's 3-pack benchmark env, shortened to 8 h: ECM twin, 5-min plant and shield,
# 15-min decisions, randomised days (32 decisions an episode).
FLEET = [
    {"chemistry": "LFP", "series": 16, "parallel": 8, "initial_soc": 0.6, "name": "lfp-0"},
    {"chemistry": "NMC", "series": 14, "parallel": 4, "initial_soc": 0.5, "name": "nmc-1"},
    {"chemistry": "LCO", "series": 14, "parallel": 20, "initial_soc": 0.4, "name": "lco-2"},
]
FACTORY = make_env_factory(
    "PulseBMS/FleetSite-v0",
    fleet=FLEET,
    fidelity="ecm",
    dt_s=300.0,
    horizon_steps=96,
    decision_s=900.0,
    scenario="randomized",
)
TEACHER = partial(make_mpc, horizon_steps=24)
CONFIG = PPOConfig(n_steps=32, batch_size=32, n_epochs=1, net_arch=(64, 64), cost_penalty=1.0)
CLONE = ImitationConfig(epochs=60, batch_size=64, critic_epochs=20)


@pytest.fixture(scope="module")
def demos() -> Demonstrations:
    return collect_demonstrations(FACTORY, TEACHER, [7, 8, 9])


def _model(seed: int = 0) -> Any:
    venv = make_vec_env(FACTORY, seed=seed, gamma=CONFIG.gamma, cost_penalty=1.0)
    return build_model(CONFIG, venv, seed=seed)


def test_demonstrations_are_whole_episodes_deterministic_and_round_trip(
    demos: Demonstrations, tmp_path: Path
) -> None:
    assert len(demos) == 3 * 32
    assert demos.n_episodes == 3
    assert demos.actions.shape == (96, 3)
    assert np.all(np.abs(demos.actions) <= 1.0)
    assert np.any(np.abs(demos.actions) > 0.05)  # the MPC does use the fleet
    again = collect_demonstrations(FACTORY, TEACHER, [8])
    np.testing.assert_array_equal(again.observations, demos.observations[32:64])
    np.testing.assert_array_equal(again.actions, demos.actions[32:64])
    loaded = Demonstrations.load(demos.save(tmp_path / "d.npz"))
    for name in ("observations", "actions", "rewards", "costs", "episode_starts"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(demos, name))
    both = Demonstrations.concat([demos, again])
    assert both.n_episodes == 4
    assert len(both) == 128


def test_discounted_returns_stop_at_episode_ends() -> None:
    d = Demonstrations(
        observations=np.zeros((3, 1), np.float32),
        actions=np.zeros((3, 1), np.float32),
        rewards=np.array([1.0, 2.0, 4.0]),
        costs=np.zeros(3),
        episode_starts=np.array([True, False, True]),
    )
    np.testing.assert_allclose(d.discounted_returns(0.5), [2.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="start an episode"):
        Demonstrations(d.observations, d.actions, d.rewards, d.costs, ~d.episode_starts)
    with pytest.raises(ValueError, match="differ in length"):
        Demonstrations(d.observations, d.actions[:2], d.rewards, d.costs, d.episode_starts)


def test_student_acts_and_the_teacher_labels(demos: Demonstrations) -> None:
    class Idle:
        def act(self, observation: Any) -> np.ndarray:
            return np.zeros(3, dtype=np.float32)

    visited = collect_demonstrations(FACTORY, TEACHER, [7], student=Idle())
    # Same reset, different actions: the idle fleet's states differ from the MPC's ...
    np.testing.assert_array_equal(visited.observations[0], demos.observations[0])
    assert not np.allclose(visited.observations[1:], demos.observations[1:32])
    # ... and each is labelled with what the MPC would do there.
    teacher = TEACHER(FACTORY())
    teacher.reset()
    for i in (0, 10, 20):
        np.testing.assert_allclose(
            teacher.act(visited.observations[i]), visited.actions[i], atol=1e-4
        )


def test_cloning_tracks_the_mpc_and_warms_the_critic(demos: Demonstrations) -> None:
    model = _model()
    report = clone_into(model, demos, CLONE, cost_penalty=1.0, seed=0)
    venv = model.get_env()
    np.testing.assert_allclose(venv.obs_rms.mean, demos.observations.mean(axis=0), rtol=1e-5)
    assert report.rows == len(demos)
    assert report.mse_after < 0.2 * report.mse_before
    np.testing.assert_allclose(model.policy.log_std.detach().numpy(), CLONE.log_std)
    # The deterministic policy as evaluated (raw observations in) acts like the MPC.
    policy = SB3Policy(model, venv)
    acted = np.stack([policy.act(o) for o in demos.observations])
    teacher_rms = float(np.sqrt(np.mean(demos.actions**2)))
    assert float(np.sqrt(np.mean((acted - demos.actions) ** 2))) < 0.4 * teacher_rms
    # The critic explains most of the variance of the normalised demonstration returns.
    penalised = demos.rewards - demos.costs
    targets = demos.discounted_returns(venv.gamma, venv.normalize_reward(penalised))
    assert report.critic_mse < 0.5 * float(np.var(targets))


def test_clone_into_refuses_demonstrations_of_another_fleet(demos: Demonstrations) -> None:
    other = Demonstrations(
        demos.observations[:, :10],
        demos.actions,
        demos.rewards,
        demos.costs,
        demos.episode_starts,
    )
    with pytest.raises(ValueError, match="sizes"):
        clone_into(_model(), other, CLONE)
    with pytest.raises(ValueError, match="epochs"):
        ImitationConfig(epochs=0)


def test_warm_started_run_without_rl_saves_the_clone(demos: Demonstrations, tmp_path: Path) -> None:
    reports = []

    def warm(model: Any) -> None:
        quick = ImitationConfig(epochs=5, critic_rounds=0)
        reports.append(clone_into(model, demos, quick, cost_penalty=1.0, seed=0))

    result = train_agent(
        CONFIG, FACTORY, total_timesteps=0, seed=0, out_dir=tmp_path, warm_start=warm
    )
    assert result.timesteps == 0
    assert len(reports) == 1
    loaded = policy_from_run(tmp_path)
    obs = demos.observations[:16]
    np.testing.assert_allclose(
        np.stack([loaded.act(o) for o in obs]), np.stack([result.policy.act(o) for o in obs])
    )
    normalised = loaded.vec_normalize.normalize_obs(demos.observations)  # type: ignore[union-attr]
    assert action_mse(loaded.model.policy, normalised, demos.actions) == pytest.approx(
        reports[0].mse_after, rel=1e-5
    )
    with pytest.raises(ValueError, match="total_timesteps"):
        train_agent(CONFIG, FACTORY, total_timesteps=0, out_dir=tmp_path / "x")


@pytest.mark.parametrize("frozen_steps", [10**6, 32])
def test_freeze_actor_trains_only_the_critic_until_released(frozen_steps: int) -> None:
    from pulsebms.agents.imitation import FreezeActor

    model = _model()
    policy = model.policy
    actor0 = [p.detach().clone() for p in policy.action_net.parameters()]
    critic0 = [p.detach().clone() for p in policy.value_net.parameters()]
    model.learn(total_timesteps=96, callback=FreezeActor(frozen_steps))
    actor_moved = any(
        not torch.equal(a, p) for a, p in zip(actor0, policy.action_net.parameters(), strict=True)
    )
    critic_moved = any(
        not torch.equal(a, p) for a, p in zip(critic0, policy.value_net.parameters(), strict=True)
    )
    assert critic_moved
    assert actor_moved == (frozen_steps < 96)
    assert all(p.requires_grad for p in policy.parameters()) == (frozen_steps < 96)


def test_a_saved_clone_loads_into_a_fresh_model(demos: Demonstrations, tmp_path: Path) -> None:
    from pulsebms.agents.imitation import load_clone, save_clone

    cloned = _model(seed=0)
    clone_into(cloned, demos, ImitationConfig(epochs=5, critic_rounds=0), seed=0)
    fresh = _model(seed=1)
    obs = demos.observations[:8]
    before = [SB3Policy(fresh, fresh.get_env()).act(o) for o in obs]
    load_clone(fresh, save_clone(cloned, tmp_path / "clone.pt"))
    expected = [SB3Policy(cloned, cloned.get_env()).act(o) for o in obs]
    np.testing.assert_array_equal(
        np.stack([SB3Policy(fresh, fresh.get_env()).act(o) for o in obs]), np.stack(expected)
    )
    assert not np.allclose(np.stack(before), np.stack(expected))
