"""The env factory routes the shield's limit overrides into the env: one set of limits."""

from __future__ import annotations

import numpy as np

from pulsebms.agents.env_factory import fleet_env, make_env, route_limits
from pulsebms.agents.envinfo import fleet_info
from pulsebms.agents.rules import make_rule_policy


def test_shield_limits_reach_env_rules_mpc_and_shield() -> None:
    env = make_env(
        "PulseBMS/FleetSmall-v0",
        # Both current directions: the other one would keep the env's C-rate-scaled default.
        shield_kwargs={"limits": {"soc_max": 0.8, "current_max_a": 40.0, "current_min_a": -40.0}},
        horizon_steps=4,
    )
    try:
        base = fleet_env(env)
        assert all(lim.soc_max == 0.8 and lim.current_max_a == 40.0 for lim in base.pack_limits)
        shield = env.shield  # type: ignore[attr-defined]
        assert tuple(shield.limits) == tuple(base.pack_limits)
        info = fleet_info(env)  # what the rules and the MPC read
        np.testing.assert_array_equal(info.soc_max, 0.8)
        np.testing.assert_array_equal(info.current_max_a, 40.0)
        np.testing.assert_array_equal(make_rule_policy(env, "soc").soc_max, 0.8)
    finally:
        env.close()
    bare = make_env(
        "PulseBMS/FleetSmall-v0", shield=False, shield_kwargs={"limits": {"soc_min": 0.2}}
    )
    try:  # the env's own violation check uses them without a shield too
        assert all(lim.soc_min == 0.2 for lim in fleet_env(bare).pack_limits)
    finally:
        bare.close()


def test_route_limits_keeps_per_chemistry_entries_and_inputs() -> None:
    shield = {"limits": {"soc_max": 0.9}, "soc_margin": 0.02}
    env = {"limits": {"LFP": {"soc_max": 0.8, "soc_min": 0.1}, "soc_min": 0.07}, "dt_s": 60.0}
    wrapper, routed = route_limits(shield, env)
    assert wrapper == {"soc_margin": 0.02}
    assert routed["limits"] == {
        "LFP": {"soc_max": 0.9, "soc_min": 0.1},
        "soc_min": 0.07,
        "soc_max": 0.9,
    }
    assert shield["limits"] == {"soc_max": 0.9}  # inputs untouched
    assert env["limits"]["LFP"]["soc_max"] == 0.8
    assert route_limits(None, {}) == ({}, {})
