"""Gymnasium registration of the PulseBMS environments (versioned ids).

``import pulsebms.envs`` registers:

=========================  ===========================================  ========  ======  =====
id                         fleet                                        fidelity  dt_s    steps
=========================  ===========================================  ========  ======  =====
``PulseBMS/FleetSmall-v0`` 3 packs: LFP, NMC, LCO (:data:`DEFAULT_FLEET`)  ecm     300     288
``PulseBMS/Fleet-v0``      6 packs: 2 × LFP, 2 × NMC, 2 × LCO             physics   300     288
``PulseBMS/Fleet100-v0``   100 packs: 34 LFP, 33 NMC, 33 LCO               physics   300     288
=========================  ===========================================  ========  ======  =====

All use the ``"default"`` scenario and accept every :class:`~pulsebms.envs.FleetEnv`
keyword through ``gymnasium.make(id, fleet=[...], scenario=..., dt_s=..., fidelity=...)``.
``FleetSmall`` refuses a fleet of more than 4 packs (it is the fast test id).
No ``max_episode_steps`` is registered: the env truncates itself at ``horizon_steps``.
In a worker process started by ``spawn`` or ``forkserver`` (SB3's ``SubprocVecEnv``, Ray),
write the id as ``"pulsebms.envs:PulseBMS/Fleet-v0"`` so that gymnasium imports this
package (and registers the ids) in the worker first.
A change of dynamics, reward or spaces is a new version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym

from pulsebms.envs.pack import PackSpec

__all__ = ["ENV_IDS", "fleet100", "mixed_fleet", "register_envs", "small_fleet_env"]

ENV_IDS: tuple[str, ...] = ("PulseBMS/FleetSmall-v0", "PulseBMS/Fleet-v0", "PulseBMS/Fleet100-v0")
"""Every registered id."""

_CHEMISTRIES = ("LFP", "NMC", "LCO")
_SHAPES = {"LFP": (16, 8), "NMC": (14, 4), "LCO": (14, 20)}  # ≈1 kWh per pack


def mixed_fleet(n_packs: int) -> list[dict[str, Any]]:
    """A fleet of ``n_packs`` packs cycling LFP, NMC, LCO, with spread initial SoC and SoH.

    The spread is a fixed pattern (no randomness), so the fleet is the same everywhere.

    Args:
        n_packs: Number of packs (≥ 1).

    Returns:
        Pack specs as plain dicts.

    Example:
        >>> [p["chemistry"] for p in mixed_fleet(4)]
        ['LFP', 'NMC', 'LCO', 'LFP']
    """
    packs = []
    for i in range(n_packs):
        chem = _CHEMISTRIES[i % 3]
        series, parallel = _SHAPES[chem]
        packs.append(
            {
                "chemistry": chem,
                "series": series,
                "parallel": parallel,
                "initial_soc": round(0.35 + 0.3 * ((i * 7) % 11) / 10.0, 3),
                "initial_soh": round(0.98 - 0.06 * ((i * 5) % 7) / 6.0, 4),
                "name": f"{chem.lower()}-{i}",
            }
        )
    return packs


def fleet100() -> list[dict[str, Any]]:
    """The 100-pack fleet of ``PulseBMS/Fleet100-v0``."""
    return mixed_fleet(100)


def small_fleet_env(
    fleet: Sequence[PackSpec | Mapping[str, Any]] | None = None, **kwargs: Any
) -> Any:
    """Entry point of ``PulseBMS/FleetSmall-v0``: a FleetEnv of at most 4 packs.

    Args:
        fleet: At most 4 packs; default the 3-pack :data:`~pulsebms.envs.DEFAULT_FLEET`.
        **kwargs: Any other :class:`~pulsebms.envs.FleetEnv` argument.

    Returns:
        The env.

    Raises:
        ValueError: If the fleet has more than 4 packs.
    """
    from pulsebms.envs.fleet_env import FleetEnv  # lazy: keep `import pulsebms.envs` light

    if fleet is not None and len(fleet) > 4:
        raise ValueError(
            f"PulseBMS/FleetSmall-v0 takes at most 4 packs, got {len(fleet)}; "
            "use PulseBMS/Fleet-v0 for larger fleets"
        )
    return FleetEnv(fleet=fleet, **kwargs)


def register_envs() -> None:
    """Register every id in :data:`ENV_IDS` (idempotent)."""
    registry = gym.envs.registration.registry
    common = {"scenario": "default", "dt_s": 300.0, "horizon_steps": 288}
    specs = {
        "PulseBMS/FleetSmall-v0": (
            "pulsebms.envs.registration:small_fleet_env",
            {**common, "fidelity": "ecm"},
        ),
        "PulseBMS/Fleet-v0": (
            "pulsebms.envs.fleet_env:FleetEnv",
            {**common, "fleet": mixed_fleet(6), "fidelity": "physics"},
        ),
        "PulseBMS/Fleet100-v0": (
            "pulsebms.envs.fleet_env:FleetEnv",
            {**common, "fleet": fleet100(), "fidelity": "physics"},
        ),
    }
    for env_id, (entry_point, kwargs) in specs.items():
        if env_id not in registry:
            gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs)
