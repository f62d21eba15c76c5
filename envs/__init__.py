"""PulseBMS environments: chemistries, packs, the fleet twin, scenarios and FleetEnv.

``import pulsebms.envs`` registers the Gymnasium ids (see
:mod:`pulsebms.envs.registration`) and stays light: :class:`FleetEnv`, the checker and the
PyBaMM twin are imported on first use.

Example:
    >>> import gymnasium as gym
    >>> import pulsebms.envs
    >>> "PulseBMS/Fleet-v0" in gym.registry
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pulsebms.envs.chemistry import CHEMISTRIES, Chemistry, get_chemistry
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.registration import ENV_IDS, mixed_fleet, register_envs
from pulsebms.envs.scenarios import SCENARIOS, Scenario, build_series, make_scenario

if TYPE_CHECKING:
    from pulsebms.core.observation import ObservationLayout, ObsField
    from pulsebms.envs.checker import FleetEnvCheckError, check_fleet_env
    from pulsebms.envs.costs import CostModel
    from pulsebms.envs.fleet_env import DEFAULT_FLEET, FleetEnv

__all__ = [
    "CHEMISTRIES",
    "DEFAULT_FLEET",
    "ENV_IDS",
    "SCENARIOS",
    "Chemistry",
    "CostModel",
    "FleetEnv",
    "FleetEnvCheckError",
    "ObsField",
    "ObservationLayout",
    "PackSpec",
    "Scenario",
    "build_series",
    "check_fleet_env",
    "get_chemistry",
    "make_scenario",
    "mixed_fleet",
    "register_envs",
]

_LAZY = {
    "FleetEnv": "pulsebms.envs.fleet_env",
    "CostModel": "pulsebms.envs.costs",
    "DEFAULT_FLEET": "pulsebms.envs.fleet_env",
    "ObservationLayout": "pulsebms.core.observation",
    "ObsField": "pulsebms.core.observation",
    "check_fleet_env": "pulsebms.envs.checker",
    "FleetEnvCheckError": "pulsebms.envs.checker",
}

register_envs()


def __getattr__(name: str) -> Any:
    """Import the env, its helpers and the checker on first access."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
