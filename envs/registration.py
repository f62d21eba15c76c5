"""Gymnasium registration of the PulseBMS environments (versioned ids).

``import pulsebms.envs`` registers:

=========================  ===========================================  ========  ======  =====
id                         fleet                                        fidelity  dt_s    steps
=========================  ===========================================  ========  ======  =====
``PulseBMS/FleetSmall-v0`` 3 packs: LFP, NMC, LCO (:data:`DEFAULT_FLEET`)  ecm     300     288
``PulseBMS/Fleet-v0``      6 packs: 2 × LFP, 2 × NMC, 2 × LCO             physics   300     288
``PulseBMS/Fleet100-v0``   100 packs: 34 LFP, 33 NMC, 33 LCO               physics   300     288
``PulseBMS/FleetSite-v0``  as Fleet-v0 + grid limits, feed-in price     physics   300     288
                           24 h net-load and price forecasts
=========================  ===========================================  ========  ======  =====

All use the ``"default"`` scenario and accept every :class:`~pulsebms.envs.FleetEnv`
keyword through ``gymnasium.make(id, fleet=[...], scenario=..., dt_s=..., fidelity=...)``.
The ids differ only in their defaults (fleet, fidelity): any of them takes a fleet of any
size. (``FleetSmall`` once refused more than 4 packs; nothing in the env needs that cap —
the twins are batched over packs — and it stopped the ``env=small`` Hydra default from
running a benchmark fleet such as ``fleet=mixed20``, so it is lifted; the id's dynamics,
reward and spaces for a given fleet are unchanged.)
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

ENV_IDS: tuple[str, ...] = (
    "PulseBMS/FleetSmall-v0",
    "PulseBMS/Fleet-v0",
    "PulseBMS/Fleet100-v0",
    "PulseBMS/FleetSite-v0",
)
"""Every registered id."""

_CHEMISTRIES = ("LFP", "NMC", "LCO")
_SHAPES = {"LFP": (16, 8), "NMC": (14, 4), "LCO": (14, 20)}  # ≈1 kWh per pack


def mixed_fleet(
    n_packs: int, *, energy_kwh: float | tuple[float, float] | None = None
) -> list[dict[str, Any]]:
    """A fleet of ``n_packs`` packs cycling LFP, NMC, LCO, with spread initial SoC and SoH.

    The spread is a fixed pattern (no randomness), so the fleet is the same everywhere.

    Args:
        n_packs: Number of packs (≥ 1).
        energy_kwh: ``None``: the ≈ 1 kWh shapes of the registered ids (16s8p LFP, 14s4p
            NMC, 14s20p LCO). A number: every pack stated by that energy [kWh]. A pair
            ``(low, high)``: pack ``i`` gets ``low + (high − low)·((3·i) mod 10)/9`` rounded
            to 0.1 kWh (the pack sizes spread over the range, mixed over chemistries).
            Packs stated by energy resolve their cell counts through
            :class:`~pulsebms.envs.pack.PackSpec`.

    Returns:
        Pack specs as plain dicts.

    Raises:
        ValueError: If ``n_packs`` < 1 or the energy range is empty or not positive.

    Example:
        >>> [p["chemistry"] for p in mixed_fleet(4)]
        ['LFP', 'NMC', 'LCO', 'LFP']
        >>> [p["energy_kwh"] for p in mixed_fleet(3, energy_kwh=(60.0, 100.0))]
        [60.0, 73.3, 86.7]
    """
    if int(n_packs) != n_packs or n_packs < 1:
        raise ValueError(f"n_packs must be an integer >= 1, got {n_packs!r}")
    low = high = 0.0
    if energy_kwh is not None:
        low, high = (
            (float(energy_kwh), float(energy_kwh))
            if isinstance(energy_kwh, int | float)
            else (float(energy_kwh[0]), float(energy_kwh[1]))
        )
        if not 0.0 < low <= high:
            raise ValueError(f"energy_kwh must be > 0 (a range low <= high), got {energy_kwh!r}")
    packs = []
    for i in range(n_packs):
        chem = _CHEMISTRIES[i % 3]
        pack: dict[str, Any] = {"chemistry": chem}
        if energy_kwh is None:
            pack["series"], pack["parallel"] = _SHAPES[chem]
        else:
            pack["energy_kwh"] = round(low + (high - low) * ((3 * i) % 10) / 9.0, 1)
        pack["initial_soc"] = round(0.35 + 0.3 * ((i * 7) % 11) / 10.0, 3)
        pack["initial_soh"] = round(0.98 - 0.06 * ((i * 5) % 7) / 6.0, 4)
        pack["name"] = f"{chem.lower()}-{i}"
        packs.append(pack)
    return packs


def fleet100() -> list[dict[str, Any]]:
    """The 100-pack fleet of ``PulseBMS/Fleet100-v0``."""
    return mixed_fleet(100)


def small_fleet_env(
    fleet: Sequence[PackSpec | Mapping[str, Any]] | None = None, **kwargs: Any
) -> Any:
    """Entry point of ``PulseBMS/FleetSmall-v0``: a FleetEnv, by default the 3-pack fleet.

    Args:
        fleet: The packs (any number); default the 3-pack :data:`~pulsebms.envs.DEFAULT_FLEET`.
        **kwargs: Any other :class:`~pulsebms.envs.FleetEnv` argument.

    Returns:
        The env.
    """
    from pulsebms.envs.fleet_env import FleetEnv  # lazy: keep `import pulsebms.envs` light

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
        # FleetSite: the observation adds what the MPC reads (grid limits, feed-in price) and a
        # 24 h day-ahead net-load and price forecast (forecast_h, converted to steps).
        "PulseBMS/FleetSite-v0": (
            "pulsebms.envs.fleet_env:FleetEnv",
            {
                **common,
                "fleet": mixed_fleet(6),
                "fidelity": "physics",
                "forecast_h": 24.0,
                "site_observation": True,
            },
        ),
    }
    for env_id, (entry_point, kwargs) in specs.items():
        if env_id not in registry:
            gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs)
