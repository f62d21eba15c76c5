"""End to end: the shield in front of every registered env, measured by the twin.

Random and adversarial policies (always maximum charge, always maximum discharge, bang-bang
with random signs), on the default, hot and cold scenarios with randomised initial SoC,
drive packs full, empty and hot. With the shield on, the twin measures **zero** physical
violations and no pack faults (voltage cut-off, SoC out of range); with the shield off,
the same adversarial policy does violate (so the test can fail). The small ECM id runs in
the fast suite; the physics ids are ``slow``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pybamm  # noqa: F401
import pytest

import pulsebms.envs as envs
from pulsebms.safety import ShieldWrapper

Policy = Callable[[int, int, np.random.Generator], np.ndarray]

POLICIES: dict[str, Policy] = {
    "max_charge": lambda k, n, rng: -np.ones(n),
    "max_discharge": lambda k, n, rng: np.ones(n),
    "random": lambda k, n, rng: rng.uniform(-1.0, 1.0, n),
    "bang_bang": lambda k, n, rng: (
        rng.choice(np.array([-1.0, 1.0]), n)
        if (k // 20) % 2
        else np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    ),
}
SCENARIOS = ("default", "hot", "cold")
FAST_IDS = ("PulseBMS/FleetSmall-v0",)


def _rollout(
    env: gym.Env[Any, Any], policy: Policy, seed: int, max_steps: int
) -> tuple[int, list[str], int]:
    """Run one episode; return (violations, fault reasons, steps)."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    n = int(np.prod(env.action_space.shape))
    violations = 0
    faults: list[str] = []
    steps = 0
    for k in range(max_steps):
        action = policy(k, n, rng).astype(np.float32)
        _, _, terminated, truncated, info = env.step(action)
        steps += 1
        violations += int(info["n_violations"])
        if info.get("fault_reason"):
            faults.append(str(info["fault_reason"]))
        if terminated or truncated:
            break
    return violations, faults, steps


def _ids(slow: bool) -> list[Any]:
    out = []
    for env_id in envs.ENV_IDS:
        marks = [] if env_id in FAST_IDS else [pytest.mark.slow]
        if (env_id in FAST_IDS) != slow:
            out.append(pytest.param(env_id, marks=marks, id=env_id))
    return out


def _check(env_id: str, scenario: str, steps: int, seeds: tuple[int, ...]) -> None:
    for name, policy in POLICIES.items():
        for seed in seeds:
            env = ShieldWrapper(gym.make(env_id, scenario=scenario, randomize_initial_state=True))
            violations, faults, _ = _rollout(env, policy, seed, steps)
            env.close()
            assert violations == 0, f"{env_id} {scenario} {name} seed {seed}: {violations}"
            assert faults == [], f"{env_id} {scenario} {name} seed {seed}: {faults}"


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("env_id", _ids(slow=False))
def test_zero_violations_with_shield_fast_ids(env_id: str, scenario: str) -> None:
    _check(env_id, scenario, steps=288, seeds=(1, 2))


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("env_id", _ids(slow=True))
def test_zero_violations_with_shield_physics_ids(env_id: str, scenario: str) -> None:
    # Bounded: a third of a day per episode still saturates packs both ways at 1 C.
    _check(env_id, scenario, steps=96, seeds=(1,))


@pytest.mark.parametrize("policy", ["max_charge", "max_discharge", "bang_bang"])
def test_without_shield_violations_do_occur(policy: str) -> None:
    env = gym.make("PulseBMS/FleetSmall-v0", scenario="hot", randomize_initial_state=True)
    violations, faults, _ = _rollout(env, POLICIES[policy], 1, 288)
    env.close()
    assert violations > 0 or faults, "the unshielded adversary should break a limit"


def test_wrapper_reports_interventions_on_a_real_env() -> None:
    env = ShieldWrapper(gym.make("PulseBMS/FleetSmall-v0", randomize_initial_state=True))
    env.reset(seed=3)
    seen = 0
    for _ in range(40):
        _, _, _, _, info = env.step(np.ones(env.action_space.shape, dtype=np.float32))
        seen += info["shield"]["intervened"]
        assert info["cost_pre_shield"] >= 0.0
        assert info["n_violations"] == 0
    assert seen > 0
    env.close()
