"""check_fleet_env: passes a good env, and fails broken ones with a clear message."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from env_stubs import StubTwin

from pulsebms.envs import FleetEnv, FleetEnvCheckError, check_fleet_env
from pulsebms.envs.checker import infos_equal
from pulsebms.envs.twin.base import PackStates

FLEET = [{"chemistry": "LFP"}, {"chemistry": "NMC"}]


class _NoisyTwin(StubTwin):
    """Draws from an unseeded generator: not reproducible."""

    def step(self, power_w: Any, dt_s: float, ambient_c: Any) -> PackStates:
        jitter = np.random.default_rng().normal(0, 1e-3, len(self.packs))
        return super().step(np.asarray(power_w) * (1 + jitter), dt_s, ambient_c)


class _OverchargedTwin(StubTwin):
    """Reports a SoC above 1."""

    def step(self, power_w: Any, dt_s: float, ambient_c: Any) -> PackStates:
        super().step(power_w, dt_s, ambient_c)
        self._soc = np.full(len(self.packs), 1.2)
        return self._report()


class _ColdTwin(StubTwin):
    """Reports an implausible temperature (kelvin mistaken for celsius the other way)."""

    def _report(self) -> PackStates:
        states = super()._report()
        return PackStates(**{**states.__dict__, "temperature_c": states.temperature_c - 273.15})


def _env(twin: type[StubTwin], **kwargs: Any) -> FleetEnv:
    return FleetEnv(
        fleet=FLEET, horizon_steps=16, twin_factory=lambda packs, **kw: twin(packs, **kw), **kwargs
    )


def test_checker_passes_a_good_env() -> None:
    check_fleet_env(_env(StubTwin), n_steps=10)


def test_checker_catches_nondeterminism() -> None:
    with pytest.raises(FleetEnvCheckError, match=r"(?i)differ|determinis"):
        check_fleet_env(_env(_NoisyTwin), n_steps=5)
    with pytest.raises(FleetEnvCheckError, match="two rollouts from seed 0 differ at step 1"):
        check_fleet_env(_env(_NoisyTwin), n_steps=5, check_gymnasium=False)


def test_checker_catches_soc_out_of_range() -> None:
    with pytest.raises(FleetEnvCheckError, match=r"SoC outside \[0, 1\] after step 1"):
        check_fleet_env(_env(_OverchargedTwin), n_steps=5, check_gymnasium=False)


def test_checker_catches_implausible_temperature() -> None:
    with pytest.raises(FleetEnvCheckError, match="temperature outside the plausible"):
        check_fleet_env(_env(_ColdTwin), n_steps=5, check_gymnasium=False)


def test_checker_catches_layout_drift() -> None:
    env = _env(StubTwin)
    fields = list(env.observation_layout.fields)
    fields[0] = type(fields[0])(**{**fields[0].__dict__, "unit": ""})
    env.observation_layout = type(env.observation_layout)(tuple(fields), env.pack_names)
    with pytest.raises(FleetEnvCheckError, match="has no unit"):
        check_fleet_env(env, n_steps=2, check_gymnasium=False)


def test_infos_equal_is_exact() -> None:
    a = {"x": np.array([1.0, np.nan]), "y": (1, "a"), "z": float("nan")}
    assert infos_equal(a, {"x": np.array([1.0, np.nan]), "y": (1, "a"), "z": float("nan")})
    assert not infos_equal(a, {"x": np.array([1.0, 2.0]), "y": (1, "a"), "z": float("nan")})
    assert not infos_equal(
        a, {"x": np.array([1.0, np.nan], dtype=np.float32), "y": (1, "a"), "z": 0.0}
    )
    assert not infos_equal((1, 2), [1, 2])
