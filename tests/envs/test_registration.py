"""Registered ids: the checker over every id, seeded determinism, vector envs, SB3."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import pulsebms.envs
from pulsebms.envs import ENV_IDS, check_fleet_env
from pulsebms.envs.checker import infos_equal

SMALL_FLEET = [{"chemistry": "LFP"}, {"chemistry": "NMC"}]


def test_ids_are_registered_and_versioned() -> None:
    assert set(ENV_IDS) == {
        "PulseBMS/FleetSmall-v0",
        "PulseBMS/Fleet-v0",
        "PulseBMS/Fleet100-v0",
        "PulseBMS/FleetSite-v0",
    }
    for env_id in ENV_IDS:
        assert env_id in gym.registry
        assert env_id.endswith("-v0")
    pulsebms.envs.register_envs()  # idempotent


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pulsebms.envs; "
        "heavy = [m for m in ('pybamm', 'casadi', 'pandas', 'pvlib', 'demandlib', 'torch') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_checker_passes_on_every_registered_id(env_id: str) -> None:
    env = gym.make(env_id)
    check_fleet_env(env, n_steps=10, seed=0)
    env.close()


def test_make_accepts_plain_data_kwargs() -> None:
    env = gym.make(
        "PulseBMS/FleetSmall-v0",
        fleet=SMALL_FLEET,
        scenario={"base": "bdew_pv", "start_day": 180},
        dt_s=900.0,
        fidelity="ecm",
        horizon_steps=4,
        forecast_steps=2,
    )
    obs, _ = env.reset(seed=0)
    assert env.action_space.shape == (2,)
    assert obs.shape == env.observation_space.shape
    assert env.unwrapped.dt_s == 900.0
    for _ in range(4):
        *_, truncated, _ = env.step(env.action_space.sample() * 0.1)
    assert truncated


def test_small_id_takes_a_20_pack_fleet_stated_by_energy() -> None:
    # The 4-pack cap is lifted: the env=small Hydra default runs the 20-pack benchmark fleet.
    fleet = pulsebms.envs.mixed_fleet(20, energy_kwh=(60.0, 100.0))
    env = gym.make("PulseBMS/FleetSmall-v0", fleet=fleet, horizon_steps=3)
    obs, _ = env.reset(seed=0)
    assert env.action_space.shape == (20,)
    assert obs.shape == env.observation_space.shape
    energy = env.unwrapped.pack_energy_kwh
    np.testing.assert_allclose(energy, [p["energy_kwh"] for p in fleet], rtol=0.02)
    env.step(np.zeros(20, dtype=np.float32))
    env.close()


def _rollout(env: gym.Env, seed: int, n: int) -> list:
    rng = np.random.default_rng(123)
    out = [env.reset(seed=seed)]
    for _ in range(n):
        step = env.step(rng.uniform(-0.4, 0.4, env.action_space.shape).astype(np.float32))
        out.append(step)
        if step[2] or step[3]:
            break
    return out


@pytest.mark.parametrize(
    ("fidelity", "scenario"),
    [("ecm", "default"), ("ecm", "stochastic"), ("ecm", "bdew_pv"), ("physics", "default")],
)
def test_two_envs_same_seed_are_identical_for_50_steps(fidelity: str, scenario: str) -> None:
    kwargs = {"fidelity": fidelity, "scenario": scenario, "randomize_initial_state": True}
    a = gym.make("PulseBMS/FleetSmall-v0", **kwargs)
    b = gym.make("PulseBMS/FleetSmall-v0", **kwargs)
    ra, rb = _rollout(a, 7, 50), _rollout(b, 7, 50)
    assert len(ra) == 51
    for t, (x, y) in enumerate(zip(ra, rb, strict=True)):
        assert infos_equal(x, y), f"differ at step {t}"
    assert not infos_equal(ra[1:], _rollout(a, 8, 50)[1:])
