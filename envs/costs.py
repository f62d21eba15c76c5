"""The site's economics: cost weights, the grid balance, the reward terms, the CMDP cost.

:class:`pulsebms.envs.FleetEnv` steps the twin and hands the result to these functions; the
formulas are those of the :mod:`pulsebms.envs.fleet_env` module docstring (``Δt_h =
dt_s / 3600``)::

    g         = L − P_fleet                     grid exchange [W], + = import
    import    = min(max(g, 0), G_imp)
    unserved  = max(g − G_imp, 0)
    export    = min(max(−g, 0), G_exp)
    curtailed = max(−g − G_exp, 0)

    energy_cost_eur      = (c_imp · import − c_exp · export) / 1000 · Δt_h
    degradation_cost_eur = Σ_i (ΔSoH_i / acceleration) / (1 − SoH_EoL)
                               · E_nom,i [kWh] · replacement_cost_eur_per_kwh
    unserved_penalty_eur = VoLL · unserved / 1000 · Δt_h
    fault_penalty_eur    = VoLL · site_peak / 1000 · max(T_left_h, 1)
    stored_energy_cost_eur = c_T · (E_before − E_after)     (opt-in: ``stored_energy_value``)
    E = Σ_i SoC_i · SoH_i · E_nom,i [kWh]             (energy in storage)

**Stored-energy value** (opt-in, :data:`STORED_ENERGY_VALUES`). Without it an episode
ends with its stored energy worth nothing, so the cheapest way to end a day is to empty the
fleet, and a controller that plans past the episode's end (the full-day MPC-oracle) pays
for energy it never sells. With a price ``c_T`` [EUR/kWh], energy taken out of storage
costs ``c_T`` per kWh and energy put in is worth it, step by step: over an episode the
terms sum to ``c_T · (E_start − E_end)``, the value of the energy the episode used up
(the same total as one terminal reward, but dense). ``"min_price"``: ``c_T`` is the
episode's lowest import price, what the energy costs to buy back (the default of the
benchmarks: no gain from merely filling up before the end, no gain from emptying);
``"mean_price"``: its mean import price; a number: that price.

Example:
    >>> grid = grid_exchange(net_load_w=1500.0, fleet_power_w=500.0,
    ...                      import_limit_w=800.0, export_limit_w=800.0)
    >>> grid.import_w, grid.unserved_w
    (800.0, 200.0)
    >>> CostModel().unserved_penalty_eur(grid.unserved_w, dt_h=1.0)
    1.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pulsebms.core.types import FloatArray

if TYPE_CHECKING:
    from pulsebms.safety.limits import Violation

__all__ = [
    "STORED_ENERGY_VALUES",
    "CostModel",
    "GridExchange",
    "constraint_cost",
    "energy_cost_eur",
    "grid_exchange",
    "make_costs",
    "stored_energy_kwh",
    "stored_energy_price",
]

STORED_ENERGY_VALUES = ("min_price", "mean_price")
"""Named stored-energy prices (see the module docstring); a number is a price in EUR/kWh."""


@dataclass(frozen=True)
class CostModel:
    """Prices that turn the site's physics into the reward (EUR).

    Attributes:
        replacement_cost_eur_per_kwh: Cost of a new pack per kWh of nominal energy.
        soh_end_of_life: SoH at which a pack is replaced (its whole value is spent by then).
        value_of_lost_load_eur_per_kwh: Penalty per kWh of unserved load (VoLL); also prices
            a fault (see the module docstring).
        fault_cost: Constraint cost added to ``info["cost"]`` per faulted pack.
    """

    replacement_cost_eur_per_kwh: float = 150.0
    soh_end_of_life: float = 0.8
    value_of_lost_load_eur_per_kwh: float = 5.0
    fault_cost: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.soh_end_of_life < 1.0:
            raise ValueError(
                f"CostModel.soh_end_of_life must be in [0, 1), got {self.soh_end_of_life}"
            )
        for name in (
            "replacement_cost_eur_per_kwh",
            "value_of_lost_load_eur_per_kwh",
            "fault_cost",
        ):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"CostModel.{name} must be >= 0, got {getattr(self, name)}")

    def unserved_penalty_eur(self, unserved_w: float, dt_h: float) -> float:
        """VoLL × unserved energy of one step [EUR]."""
        return self.value_of_lost_load_eur_per_kwh * unserved_w / 1000.0 * dt_h

    def degradation_cost_eur(
        self,
        soh_before: FloatArray,
        soh_after: FloatArray,
        pack_energy_kwh: FloatArray,
        degradation_acceleration: float,
    ) -> tuple[float, FloatArray]:
        """Value of the pack lifetime spent in one step, on the *real* (unaccelerated) fade.

        Args:
            soh_before: SoH per pack before the step.
            soh_after: SoH per pack after the step.
            pack_energy_kwh: Nominal pack energy [kWh].
            degradation_acceleration: The twin's fade factor (divided out).

        Returns:
            ``(cost_eur, soh_loss)``: the cost and the SoH loss per pack as the twin reports
            it (accelerated, clipped at 0).
        """
        soh_loss = np.clip(
            np.asarray(soh_before, dtype=np.float64) - np.asarray(soh_after, dtype=np.float64),
            0.0,
            None,
        )
        real_loss = soh_loss / degradation_acceleration
        cost = float(
            np.sum(
                real_loss
                / (1.0 - self.soh_end_of_life)
                * pack_energy_kwh
                * self.replacement_cost_eur_per_kwh
            )
        )
        return cost, soh_loss

    def fault_penalty_eur(self, site_peak_load_w: float, remaining_h: float) -> float:
        """A faulted fleet priced as the site without power for ``remaining_h`` [EUR]."""
        return self.value_of_lost_load_eur_per_kwh * site_peak_load_w / 1000.0 * remaining_h


def make_costs(costs: CostModel | Mapping[str, float] | None) -> CostModel:
    """A :class:`CostModel` from itself, a dict of its fields, or ``None`` (defaults).

    Raises:
        ValueError: On an unknown field or a bad value.

    Example:
        >>> make_costs({"fault_cost": 2}).fault_cost
        2.0
    """
    if costs is None:
        return CostModel()
    if isinstance(costs, CostModel):
        return costs
    known = {f.name for f in dataclasses.fields(CostModel)}
    unknown = sorted(set(costs) - known)
    if unknown:
        raise ValueError(f"unknown cost weight(s) {unknown}; known: {sorted(known)}")
    return CostModel(**{k: float(v) for k, v in costs.items()})


@dataclass(frozen=True)
class GridExchange:
    """How the grid balances one step (all [W], ≥ 0).

    Attributes:
        import_w: Power imported (up to the import limit).
        unserved_w: Load the grid connection cannot carry.
        export_w: Power exported (up to the export limit).
        curtailed_w: Surplus that cannot be exported (lost).
    """

    import_w: float
    unserved_w: float
    export_w: float
    curtailed_w: float


def grid_exchange(
    net_load_w: float, fleet_power_w: float, import_limit_w: float, export_limit_w: float
) -> GridExchange:
    """Split ``g = net_load_w − fleet_power_w`` into import/unserved or export/curtailed."""
    grid_w = net_load_w - fleet_power_w
    return GridExchange(
        import_w=min(max(grid_w, 0.0), import_limit_w),
        unserved_w=max(grid_w - import_limit_w, 0.0),
        export_w=min(max(-grid_w, 0.0), export_limit_w),
        curtailed_w=max(-grid_w - export_limit_w, 0.0),
    )


def energy_cost_eur(
    price_per_kwh: float,
    feed_in_price_per_kwh: float,
    import_w: float,
    export_w: float,
    dt_h: float,
) -> float:
    """Energy bought minus energy sold in one step [EUR]."""
    return (price_per_kwh * import_w - feed_in_price_per_kwh * export_w) / 1000.0 * dt_h


def constraint_cost(violations: Sequence[Violation], n_faulted: int, costs: CostModel) -> float:
    """The CMDP cost of one step: ``violation_cost(violations) + fault_cost · n_faulted``."""
    from pulsebms.safety import violation_cost

    cost = float(violation_cost(list(violations))) if violations else 0.0
    return cost + costs.fault_cost * n_faulted


def stored_energy_kwh(soc: FloatArray, soh: FloatArray, pack_energy_kwh: FloatArray) -> float:
    """Energy in storage, ``Σ SoC · SoH · E_nom`` [kWh] (SoC of the present capacity).

    Example:
        >>> stored_energy_kwh(np.array([0.5, 1.0]), np.array([1.0, 0.9]), np.array([2.0, 1.0]))
        1.9
    """
    soc = np.asarray(soc, dtype=np.float64)
    soh = np.asarray(soh, dtype=np.float64)
    return float(np.sum(soc * soh * np.asarray(pack_energy_kwh, dtype=np.float64)))


def check_stored_energy_value(value: str | float | None) -> str | float | None:
    """Validate a ``stored_energy_value`` (``None``, a name or a price ≥ 0).

    Raises:
        ValueError: On an unknown name or a negative or non-finite price.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value not in STORED_ENERGY_VALUES:
            raise ValueError(
                f"stored_energy_value must be None, a price >= 0 or one of "
                f"{list(STORED_ENERGY_VALUES)}, got {value!r}"
            )
        return value
    price = float(value)
    if not (np.isfinite(price) and price >= 0.0):
        raise ValueError(f"stored_energy_value must be a finite price >= 0, got {value!r}")
    return price


def stored_energy_price(value: str | float | None, price_eur_per_kwh: FloatArray) -> float | None:
    """The episode's stored-energy price ``c_T`` [EUR/kWh] (``None``: not valued).

    Args:
        value: ``None``, ``"min_price"``, ``"mean_price"`` or a price.
        price_eur_per_kwh: The episode's import prices (its steps, not beyond).

    Example:
        >>> stored_energy_price("min_price", np.array([0.3, 0.2, 0.4]))
        0.2
    """
    value = check_stored_energy_value(value)
    if value is None:
        return None
    if value == "min_price":
        return float(np.min(price_eur_per_kwh))
    if value == "mean_price":
        return float(np.mean(price_eur_per_kwh))
    return float(value)
