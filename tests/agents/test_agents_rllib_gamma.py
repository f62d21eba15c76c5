"""RLlib agents take γ from a horizon in hours (``gamma_horizon_h``) at the env's step."""

from __future__ import annotations

from typing import Any

import pytest

from pulsebms.agents.discount import gamma_from_horizon
from pulsebms.agents.rllib import build_rllib_algorithm
from pulsebms.agents.rllib_config import RllibPPOConfig, RllibSACConfig


class _Captured(Exception):
    """Raised by the config hook to stop before an algorithm (and Ray) is built."""


@pytest.mark.parametrize("agent_cls", [RllibPPOConfig, RllibSACConfig])
@pytest.mark.parametrize(("gamma_horizon_h", "dt_s"), [(None, 300.0), (6.0, 300.0), (6.0, 60.0)])
def test_gamma_horizon_in_hours_sets_the_rllib_gamma(
    agent_cls: type[RllibPPOConfig] | type[RllibSACConfig],
    gamma_horizon_h: float | None,
    dt_s: float,
) -> None:
    seen: dict[str, float] = {}

    def hook(config: Any) -> Any:
        seen["gamma"] = float(config.gamma)
        raise _Captured

    agent = agent_cls(gamma_horizon_h=gamma_horizon_h)
    with pytest.raises(_Captured):
        build_rllib_algorithm(
            "PulseBMS/FleetSmall-v0",
            agent,
            env_kwargs={"fidelity": "ecm", "dt_s": dt_s, "horizon_steps": 4},
            config_hook=hook,
        )
    expected = agent.gamma if gamma_horizon_h is None else gamma_from_horizon(6.0, dt_s)
    assert seen["gamma"] == pytest.approx(expected, rel=0, abs=1e-12)
    if gamma_horizon_h is not None:
        assert seen["gamma"] == pytest.approx(1.0 - dt_s / 3600.0 / gamma_horizon_h)
