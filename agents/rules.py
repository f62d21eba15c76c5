"""Rule-based baselines: split the site demand among the packs by a fixed rule.

Every rule meets the demand shown in the observation as far as the packs' limits allow and
never arbitrages price: that is what learned agents and the MPC must beat. All rules read
the observation through an :class:`~pulsebms.agents.observation.ObservationReader` (the
env's named layout) and act in the env's action space (power / rated power, + = discharge).

**Limits.** A rule asks no pack for more than its limits allow, so the shield in the loop
has nothing to cut (≈0 pre-shield violations, where a rule capped only at rated power asked
for what the shield cut on ~90 % of steps): each pack's share is capped at the power of
its current and C-rate limits (at the pack's nominal voltage, like the MPC) and, with a
:class:`pulsebms.safety.shield.Shield` of the same fleet and limits (what
:func:`make_rule_policy` builds from the env: one set of limits), at the shield's
admissible interval for the observed state; what a capped pack cannot take goes to the
others (water-filling).

* :class:`EqualSplitPolicy`: the same power from every pack.
* :class:`SocProportionalPolicy`: discharge in proportion to usable energy above the SoC
  floor, charge in proportion to headroom below the SoC ceiling.
* :class:`HealthAwarePolicy`: SoC-proportional, weighted further by SoH, by the
  chemistry's cycle life, and derated near the temperature limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pulsebms.agents.observation import FleetObservation, ObservationReader
from pulsebms.core.types import ActArray, FloatArray, ObsArray
from pulsebms.safety.shield import Shield
from pulsebms.safety.state import FleetState

if TYPE_CHECKING:  # annotations only: the rules are numpy-only
    import gymnasium as gym

__all__ = [
    "CYCLE_LIFE_FACTOR",
    "EqualSplitPolicy",
    "HealthAwarePolicy",
    "RulePolicy",
    "SocProportionalPolicy",
    "allocate_power",
    "make_rule_policy",
]

CYCLE_LIFE_FACTOR: dict[str, float] = {"LFP": 3.0, "NMC": 1.0, "LCO": 0.5}
"""Relative cycle life per chemistry (NMC = 1), used by :class:`HealthAwarePolicy`.

Order-of-magnitude figures from manufacturer datasheets and reviews (LFP ≈ 3000+ cycles to
80 % SoH, NMC ≈ 1000–2000, LCO ≈ 500–1000): a pack that ages slowly per cycle takes more
of the throughput. Unknown chemistries count as 1.
"""


def allocate_power(
    demand_w: float, weights: FloatArray, max_w: FloatArray, *, iterations: int = 60
) -> FloatArray:
    """Split ``demand_w`` in proportion to ``weights`` with per-pack caps (water-filling).

    Finds ``λ`` such that ``sum(clip(λ·w, 0, max_w)) = |demand_w|`` by bisection; packs at
    their cap pass the remainder on to the others. If the caps cannot meet the demand,
    every pack with positive weight runs at its cap.

    Args:
        demand_w: Power to deliver [W]; the sign is carried to the result (+ = discharge).
        weights: Non-negative weight per pack; all zero → nothing is allocated.
        max_w: Non-negative cap per pack [W].
        iterations: Bisection iterations (60 reaches float64 resolution).

    Returns:
        Power per pack [W] with the sign of ``demand_w``.

    Example:
        >>> allocate_power(300.0, np.array([1.0, 1.0]), np.array([100.0, 1000.0]))
        array([100., 200.])
    """
    w = np.clip(np.nan_to_num(np.asarray(weights, dtype=np.float64)), 0.0, None)
    cap = np.where(w > 0, np.clip(np.asarray(max_w, dtype=np.float64), 0.0, None), 0.0)
    target = abs(float(demand_w))
    if target == 0.0 or not np.any(w > 0):
        return np.zeros_like(w)
    sign = 1.0 if demand_w > 0 else -1.0
    if cap.sum() <= target:
        return sign * cap
    lo, hi = 0.0, float(np.max(np.divide(cap, w, out=np.zeros_like(w), where=w > 0)))
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if np.minimum(mid * w, cap).sum() < target:
            lo = mid
        else:
            hi = mid
    out: FloatArray = sign * np.minimum(hi * w, cap)
    return out


class RulePolicy:
    """Base of the rule baselines: read the observation, weight the packs, allocate.

    Subclasses override :meth:`weights`.

    Args:
        reader: Reads the env's flat observation by its named layout.
        rated_power_w: Rated power per pack [W] (the action is normalised by it).
        capacity_ah: Nominal pack capacity at SoH 1 per pack [A.h].
        chemistry: Chemistry name per pack.
        soc_min: SoC floor below which a pack is not discharged (the shield's limit).
        soc_max: SoC ceiling above which a pack is not charged (the shield's limit).
        temperature_max_c: Upper temperature limit [°C].
        temperature_min_c: Lower temperature limit [°C].
        max_power_w: Power cap per pack [W] from its current and C-rate limits at SoH 1
            (scaled by the observed SoH); ``None``: the rated power.
        shield: A shield of the same fleet and limits: every pack's share is also kept
            inside its admissible interval for the observed state (needs cell voltage and
            current in the observation). ``None``: no such cap.
    """

    name = "rule"

    def __init__(
        self,
        reader: ObservationReader,
        rated_power_w: FloatArray,
        *,
        capacity_ah: FloatArray | None = None,
        chemistry: tuple[str, ...] | None = None,
        soc_min: float | FloatArray = 0.05,
        soc_max: float | FloatArray = 0.95,
        temperature_max_c: float | FloatArray = 60.0,
        temperature_min_c: float | FloatArray = -20.0,
        max_power_w: FloatArray | None = None,
        shield: Shield | None = None,
    ) -> None:
        self.reader = reader
        self.rated_power_w = np.asarray(rated_power_w, dtype=np.float64)
        n = self.rated_power_w.shape[0]
        if np.any(self.rated_power_w <= 0):
            raise ValueError("rated_power_w must be > 0 for every pack")
        self.capacity_ah = (
            np.ones(n) if capacity_ah is None else np.asarray(capacity_ah, dtype=np.float64)
        )
        self.chemistry = tuple(chemistry) if chemistry is not None else ("NMC",) * n
        self.soc_min = np.broadcast_to(np.asarray(soc_min, dtype=np.float64), (n,))
        self.soc_max = np.broadcast_to(np.asarray(soc_max, dtype=np.float64), (n,))
        self.temperature_max_c = np.broadcast_to(np.asarray(temperature_max_c, float), (n,))
        self.temperature_min_c = np.broadcast_to(np.asarray(temperature_min_c, float), (n,))
        cap = self.rated_power_w if max_power_w is None else np.asarray(max_power_w, float)
        self.max_power_w = np.minimum(np.broadcast_to(cap, (n,)), self.rated_power_w)
        self.shield = shield

    @property
    def n_packs(self) -> int:
        """Number of packs."""
        return int(self.rated_power_w.shape[0])

    def weights(self, fleet: FleetObservation, discharge: bool) -> FloatArray:
        """Non-negative share of each pack in the demand (subclasses override)."""
        return np.ones(self.n_packs)

    def caps_w(self, fleet: FleetObservation, discharge: bool) -> FloatArray:
        """Most power each pack may take in the demand's direction [W] (module docstring)."""
        cap = self.max_power_w * np.clip(fleet.soh, 0.0, 1.0)
        if self.shield is not None and fleet.cell_voltage_v.size == self.n_packs:
            state = FleetState(
                soc=fleet.soc.copy(),
                soh=fleet.soh.copy(),
                temperature_c=fleet.temperature_c.copy(),
                cell_voltage_v=fleet.cell_voltage_v.copy(),
                current_a=fleet.current_c_rate * self.capacity_ah,
                demand_w=float(fleet.demand_w),
            )
            lower, upper, _ = self.shield.bounds(state)
            bound = upper if discharge else -lower
            cap = np.minimum(cap, self.rated_power_w * np.clip(bound, 0.0, 1.0))
        return np.asarray(cap, dtype=np.float64)

    def act(self, observation: ObsArray) -> ActArray:
        """Allocate the demand in the observation among the packs, within their limits."""
        fleet = self.reader.read(observation)
        discharge = fleet.demand_w >= 0.0
        w = self.weights(fleet, discharge)
        power_w = allocate_power(fleet.demand_w, w, self.caps_w(fleet, discharge))
        return np.clip(power_w / self.rated_power_w, -1.0, 1.0).astype(np.float32)


class EqualSplitPolicy(RulePolicy):
    """Every pack delivers the same power (capped at its rating; the rest is reallocated)."""

    name = "rule_equal"


class SocProportionalPolicy(RulePolicy):
    """Share ∝ usable charge: above the SoC floor when discharging, below the ceiling charging."""

    name = "rule_soc"

    def _headroom(self, fleet: FleetObservation, discharge: bool) -> FloatArray:
        room = fleet.soc - self.soc_min if discharge else self.soc_max - fleet.soc
        return np.clip(room, 0.0, None) * self.capacity_ah * np.clip(fleet.soh, 0.0, None)

    def weights(self, fleet: FleetObservation, discharge: bool) -> FloatArray:
        """Usable charge per pack [A.h] in the direction of the demand."""
        return self._headroom(fleet, discharge)


class HealthAwarePolicy(SocProportionalPolicy):
    """SoC-proportional, weighted by SoH, chemistry cycle life and thermal derating.

    Args:
        reader: See :class:`RulePolicy`.
        rated_power_w: See :class:`RulePolicy`.
        soh_exponent: Weight ∝ ``soh ** soh_exponent``: the larger, the more worn packs
            are spared (``0`` ignores SoH).
        derate_margin_c: Width of the band below the upper (and above the lower)
            temperature limit over which a pack's share falls linearly to zero [°C].
        cycle_life_factor: Relative cycle life per chemistry; defaults to
            :data:`CYCLE_LIFE_FACTOR`.
        **kwargs: Remaining :class:`RulePolicy` arguments.
    """

    name = "rule_health"

    def __init__(
        self,
        reader: ObservationReader,
        rated_power_w: FloatArray,
        *,
        soh_exponent: float = 4.0,
        derate_margin_c: float = 15.0,
        cycle_life_factor: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(reader, rated_power_w, **kwargs)
        if derate_margin_c <= 0:
            raise ValueError(f"derate_margin_c must be > 0, got {derate_margin_c}")
        self.soh_exponent = soh_exponent
        self.derate_margin_c = derate_margin_c
        factors = dict(CYCLE_LIFE_FACTOR if cycle_life_factor is None else cycle_life_factor)
        self.chemistry_factor = np.array([factors.get(c.upper(), 1.0) for c in self.chemistry])

    def weights(self, fleet: FleetObservation, discharge: bool) -> FloatArray:
        """Usable charge × SoH^k × cycle-life factor × thermal derating."""
        hot = np.clip((self.temperature_max_c - fleet.temperature_c) / self.derate_margin_c, 0, 1)
        cold = np.clip((fleet.temperature_c - self.temperature_min_c) / self.derate_margin_c, 0, 1)
        soh = np.power(np.clip(fleet.soh, 0.0, 1.0), self.soh_exponent)
        weight = self._headroom(fleet, discharge) * soh * self.chemistry_factor * hot * cold
        return np.asarray(weight, dtype=np.float64)


_RULES: dict[str, type[RulePolicy]] = {
    "equal": EqualSplitPolicy,
    "soc": SocProportionalPolicy,
    "health": HealthAwarePolicy,
}


def make_rule_policy(
    env: gym.Env[Any, Any], kind: str = "soc", *, use_shield: bool = True, **kwargs: Any
) -> RulePolicy:
    """Build a rule baseline for an environment.

    Args:
        env: A FleetEnv (wrapped or not); its layout, ratings and limits are read.
        kind: ``"equal"``, ``"soc"`` or ``"health"``.
        use_shield: Cap each pack's share at the admissible interval of a
            :class:`~pulsebms.safety.shield.Shield` built from the env's ratings, limits and
            ``dt_s`` (the limits the shield wrapper enforces), besides the current and
            C-rate caps (when the observation carries cell voltage and current).
        **kwargs: Extra keyword arguments of the rule's constructor.

    Returns:
        The rule policy.

    Raises:
        ValueError: If ``kind`` is unknown.
    """
    from pulsebms.agents.envinfo import fleet_info

    if kind not in _RULES:
        raise ValueError(f"unknown rule {kind!r}; known rules: {sorted(_RULES)}")
    info = fleet_info(env)
    pack_v = info.energy_wh / np.maximum(info.capacity_ah, 1e-9)  # nominal pack voltage
    current_a = np.minimum(info.current_max_a, info.c_rate_max * info.capacity_ah)
    kwargs.setdefault("max_power_w", current_a * pack_v)
    if use_shield and info.ratings is not None and "shield" not in kwargs:
        kwargs["shield"] = Shield(info.ratings, info.limits or None, info.dt_s)
    return _RULES[kind](
        info.reader,
        info.rated_power_w,
        capacity_ah=info.capacity_ah,
        chemistry=info.chemistry,
        soc_min=info.soc_min,
        soc_max=info.soc_max,
        temperature_max_c=info.temperature_max_c,
        temperature_min_c=info.temperature_min_c,
        **kwargs,
    )
