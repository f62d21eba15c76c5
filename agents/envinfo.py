"""What controllers need to know about a FleetEnv, read once from the (unwrapped) env.

Rules and the MPC take plain arrays; this module is the single place that reads them from a
:class:`pulsebms.envs.FleetEnv` (ratings, control interval, limits and the named
observation layout), so controllers never depend on the env's attribute names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from pulsebms.agents.observation import FleetObservation, ObservationReader
from pulsebms.core.types import FleetEnvLike, FloatArray, as_fleet_env
from pulsebms.safety.limits import PackLimits, fleet_limits, stack_limits
from pulsebms.safety.state import FleetState, PackRatings

if TYPE_CHECKING:
    from pulsebms.envs.scenarios import ScenarioSeries

__all__ = [
    "FleetInfo",
    "SiteInfo",
    "fleet_env",
    "fleet_info",
    "fleet_state",
    "observation_reader",
    "site_info",
    "unwrap",
]


@dataclass(frozen=True)
class FleetInfo:
    """Static description of a fleet as controllers use it (arrays of shape ``(n_packs,)``).

    Attributes:
        reader: Reads the env's flat observation by its named layout.
        chemistry: Chemistry name per pack.
        rated_power_w: Rated power per pack [W].
        capacity_ah: Nominal pack capacity at SoH 1 [A.h].
        energy_wh: Nominal pack energy at SoH 1 [Wh].
        dt_s: Control interval [s].
        soc_min: Lower SoC limit per pack.
        soc_max: Upper SoC limit per pack.
        current_max_a: Pack current limit, the smaller of the two directions [A].
        c_rate_max: |C-rate| limit per pack [1/h].
        temperature_min_c: Lower temperature limit [°C].
        temperature_max_c: Upper temperature limit [°C].
        ratings: The env's ratings (what the shield is built from).
        limits: The env's per-pack :class:`pulsebms.safety.PackLimits`.
    """

    reader: ObservationReader
    chemistry: tuple[str, ...]
    rated_power_w: FloatArray
    capacity_ah: FloatArray
    energy_wh: FloatArray
    dt_s: float
    soc_min: FloatArray
    soc_max: FloatArray
    current_max_a: FloatArray
    c_rate_max: FloatArray
    temperature_min_c: FloatArray
    temperature_max_c: FloatArray
    ratings: PackRatings | None = None
    limits: tuple[PackLimits, ...] = ()

    @property
    def n_packs(self) -> int:
        """Number of packs."""
        return len(self.chemistry)


@runtime_checkable
class _Wrapped(Protocol):
    """A Gymnasium wrapper (or env): ``unwrapped`` is the innermost env."""

    @property
    def unwrapped(self) -> object:
        """The innermost environment."""
        ...


@runtime_checkable
class _FleetEnvWithEnergy(FleetEnvLike, Protocol):
    """A fleet env that also states its packs' nominal energy."""

    pack_energy_kwh: FloatArray


@runtime_checkable
class _SiteEnv(Protocol):
    """An env with a scenario series (after its first reset)."""

    @property
    def series(self) -> ScenarioSeries:
        """The present episode's scenario series."""
        ...


def unwrap(env: object) -> Any:
    """The innermost env below every Gymnasium wrapper (``env.unwrapped`` when present).

    Untyped on purpose (callers read env-specific attributes); prefer :func:`fleet_env`,
    which checks and types what library code reads.
    """
    return env.unwrapped if isinstance(env, _Wrapped) else env


def fleet_env(env: object) -> FleetEnvLike:
    """The innermost env, checked to be a :class:`~pulsebms.core.types.FleetEnvLike`.

    Same as :func:`pulsebms.core.types.as_fleet_env`.

    Raises:
        TypeError: If it lacks ratings, dt_s, pack_limits, observation_layout or
            fleet_state().
    """
    return as_fleet_env(env)


def observation_reader(env: object) -> ObservationReader:
    """An :class:`ObservationReader` for the env's ``observation_layout``.

    The layout gives every field's slice and the scale from stored to physical value.

    Raises:
        TypeError: If the env is not a fleet environment (no named layout).
    """
    return ObservationReader(fleet_env(env).observation_layout)


@dataclass(frozen=True)
class SiteInfo:
    """Grid-connection data of the site in the present episode (contract data, not forecast).

    Attributes:
        grid_import_limit_w: Grid import limit [W].
        grid_export_limit_w: Grid export limit [W].
        feed_in_price_per_kwh: Price paid for exported energy [currency/kWh].
        stored_energy_price_per_kwh: What the env pays for energy left in storage
            [currency/kWh] (:mod:`pulsebms.envs.costs`); ``None``: not valued.
        steps_left: Control steps left in the present episode (``None``: unknown).
    """

    grid_import_limit_w: float = float("inf")
    grid_export_limit_w: float = float("inf")
    feed_in_price_per_kwh: float = 0.0
    stored_energy_price_per_kwh: float | None = None
    steps_left: int | None = None


def site_info(env: object) -> SiteInfo:
    """The present episode's :class:`SiteInfo` (defaults before the first reset)."""
    base = unwrap(env)
    try:
        if not isinstance(base, _SiteEnv):
            return SiteInfo()
        series = base.series
    except RuntimeError:  # no series before the first reset
        return SiteInfo()
    price = getattr(base, "stored_energy_price_eur_per_kwh", None)
    horizon, step = getattr(base, "horizon_steps", None), getattr(base, "step_index", None)
    return SiteInfo(
        grid_import_limit_w=float(series.grid_import_limit_w),
        grid_export_limit_w=float(series.grid_export_limit_w),
        feed_in_price_per_kwh=float(series.feed_in_price_eur_per_kwh),
        stored_energy_price_per_kwh=None if price is None else float(price),
        steps_left=None if horizon is None or step is None else max(int(horizon) - int(step), 0),
    )


def fleet_info(env: object) -> FleetInfo:
    """Read ratings, limits, control interval and observation layout from a FleetEnv.

    Args:
        env: A FleetEnv, possibly wrapped (the shield wrapper, ``TimeLimit``, ...); once
            unwrapped a :class:`~pulsebms.core.types.FleetEnvLike` with ``pack_energy_kwh``.

    Returns:
        The fleet description.

    Raises:
        TypeError: If the env is not a fleet environment or states no pack energy.
    """
    base = fleet_env(env)
    if not isinstance(base, _FleetEnvWithEnergy):
        raise TypeError(f"{type(base).__name__} exposes no pack_energy_kwh")
    ratings = base.ratings
    n = ratings.n_packs
    chemistry = tuple(str(c).upper() for c in ratings.chemistry)
    capacity_ah = np.asarray(ratings.capacity_ah, dtype=np.float64)
    energy_wh = np.asarray(base.pack_energy_kwh, dtype=np.float64) * 1000.0
    pack_limits = tuple(base.pack_limits) or fleet_limits(ratings)
    limits = stack_limits(pack_limits, n)
    return FleetInfo(
        reader=ObservationReader(base.observation_layout),
        chemistry=chemistry,
        rated_power_w=np.asarray(ratings.rated_power_w, dtype=np.float64),
        capacity_ah=capacity_ah,
        energy_wh=energy_wh,
        dt_s=float(base.dt_s),
        soc_min=limits.soc_min,
        soc_max=limits.soc_max,
        current_max_a=np.minimum(limits.current_max_a, -limits.current_min_a),
        c_rate_max=limits.c_rate_max,
        temperature_min_c=limits.temperature_min_c,
        temperature_max_c=limits.temperature_max_c,
        ratings=ratings,
        limits=tuple(pack_limits),
    )


def fleet_state(info: FleetInfo, fleet: FleetObservation) -> FleetState:
    """The shield's :class:`~pulsebms.safety.state.FleetState` rebuilt from an observation.

    Args:
        info: The fleet description.
        fleet: The observation's fields (voltage and current must be observed).

    Returns:
        The state (``demand_w`` = the observed site demand).

    Raises:
        ValueError: If the observation carries no cell voltage or current.
    """
    if fleet.cell_voltage_v.size != info.n_packs or fleet.current_c_rate.size != info.n_packs:
        raise ValueError("the observation has no cell_voltage_v / current_c_rate per pack")
    return FleetState(
        soc=fleet.soc.copy(),
        soh=fleet.soh.copy(),
        temperature_c=fleet.temperature_c.copy(),
        cell_voltage_v=fleet.cell_voltage_v.copy(),
        current_a=fleet.current_c_rate * info.capacity_ah,
        demand_w=float(fleet.demand_w),
    )
