"""Vector envs (gymnasium sync/async, SB3 Dummy/Subproc) and flat memory on the real twin."""

from __future__ import annotations

import gc
import os

import gymnasium as gym
import numpy as np
import pytest

import pulsebms.envs  # noqa: F401  (registers the ids)

SMALL_FLEET = [{"chemistry": "LFP"}, {"chemistry": "NMC"}]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_gymnasium_vector_envs(mode: str) -> None:
    envs = gym.make_vec(
        "PulseBMS/FleetSmall-v0",
        num_envs=2,
        vectorization_mode=mode,
        fleet=SMALL_FLEET,
        horizon_steps=6,
    )
    try:
        obs, info = envs.reset(seed=[0, 1])
        assert obs.shape == (2, *envs.single_observation_space.shape)
        assert not np.array_equal(obs[0], obs[1])
        truncations = 0
        for t in range(8):  # crosses the horizon: autoreset on the step after truncation
            obs, reward, _terminated, truncated, info = envs.step(
                np.zeros((2, 2), dtype=np.float32)
            )
            assert reward.shape == (2,)
            assert np.all(np.isfinite(reward))
            if t < 6:
                assert info["cost"].shape == (2,)
                assert "energy_cost_eur" in info
            truncations += int(truncated.sum())
        assert truncations == 2
    finally:
        envs.close()


def test_sb3_vec_env_and_checker() -> None:
    import stable_baselines3 as sb3
    from stable_baselines3.common.env_checker import check_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    check_env(gym.make("PulseBMS/FleetSmall-v0", horizon_steps=8).unwrapped, warn=True)
    venv = DummyVecEnv(
        [lambda: gym.make("PulseBMS/FleetSmall-v0", horizon_steps=5) for _ in range(2)]
    )
    venv.seed(0)
    obs = venv.reset()
    assert obs.shape == (2, *venv.observation_space.shape)
    dones = 0
    for _ in range(6):
        obs, _reward, done, infos = venv.step(np.zeros((2, 3), dtype=np.float32))
        dones += int(done.sum())
        assert all("cost" in i for i in infos)
    assert dones == 2
    venv.close()
    assert sb3.__version__


def test_sb3_subproc_vec_env() -> None:
    import stable_baselines3  # noqa: F401
    from stable_baselines3.common.vec_env import SubprocVecEnv

    venv = SubprocVecEnv(
        # "module:id" makes gymnasium import pulsebms.envs (and register) in the worker.
        [
            lambda: gym.make("pulsebms.envs:PulseBMS/FleetSmall-v0", horizon_steps=5)
            for _ in range(2)
        ],
        start_method="forkserver" if os.name == "posix" else "spawn",
    )
    try:
        venv.reset()
        _, reward, _, infos = venv.step(np.zeros((2, 3), dtype=np.float32))
        assert reward.shape == (2,)
        assert "cost" in infos[0]
    finally:
        venv.close()


def test_real_twin_memory_flat() -> None:
    import psutil

    env = gym.make("PulseBMS/FleetSmall-v0", horizon_steps=100_000)
    env.reset(seed=0)
    small = np.array([0.05, -0.05, 0.0], dtype=np.float32)
    for t in range(1000):
        env.step(small if t % 2 else -small)
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    for t in range(10_000):
        _, _, terminated, _, _ = env.step(small if t % 2 else -small)
        assert not terminated
    gc.collect()
    growth = psutil.Process().memory_info().rss - rss0
    assert growth < 8 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB over 10k steps"


@pytest.mark.slow
def test_physics_memory_flat_long_run() -> None:
    import psutil

    env = gym.make("PulseBMS/FleetSmall-v0", fidelity="physics", horizon_steps=100_000, dt_s=60.0)
    env.reset(seed=0)
    small = np.array([0.05, -0.05, 0.0], dtype=np.float32)
    for t in range(500):
        env.step(small if t % 2 else -small)
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    for t in range(10_000):
        env.step(small if t % 2 else -small)
    gc.collect()
    growth = psutil.Process().memory_info().rss - rss0
    assert growth < 16 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB over 10k physics steps"
