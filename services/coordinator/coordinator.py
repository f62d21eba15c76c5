"""The site coordinator: fleet state from MQTT, a policy, the shield, allocations sent down.

:class:`Coordinator` subscribes to its site's telemetry and status
(:meth:`Coordinator.attach`), keeps the :class:`~pulsebms.services.coordinator.state.FleetState`
and publishes an allocation (schema ``allocation``, retained, QoS 1, on
``pulsebms/{site}/coordinator/allocation``):

* **initial**: a short debounce after the first usable pack reports;
* **periodic**: every ``period_s`` after that (600 s by default);
* **rebalance**: when the set of usable packs changes (a device's last will or "offline"
  status, a pack the edge puts in its safe state, a device silent for ``stale_after_s``,
  or one coming back), after ``rebalance_debounce_s`` — seconds, not the next period.
  A burst of changes (ten packs of a device faulting one after another) is one re-plan;
  the debounce is never pushed back by later changes.

Each plan is one pass through the project's contracts: the latest readings, in the fleet's
pack order → :meth:`ObservationInputs.from_readings
<pulsebms.core.observation.ObservationInputs.from_readings>` → :func:`build_observation
<pulsebms.core.observation.build_observation>` with the policy's layout → ``policy.act`` →
the shield (:class:`pulsebms.safety.shield.Shield`, excluded packs invalid, the site demand
as target when ``track_demand``), so the power of the excluded packs moves to the others
within their limits. Excluded packs with a known device get an explicit 0 W set-point.

Never crashes on input: malformed messages are dropped and counted by the link and the
state; a policy that raises or returns a wrong action is counted (``policy_errors``) and
replaced by the zero action, which the shield turns into a demand split over the usable
packs; an observation that cannot be built likewise.

Every time is read from an injected :data:`~pulsebms.services.coordinator.clock.Clock`,
so an accelerated demo re-plans on simulated time.

Example:
    >>> import numpy as np
    >>> from pulsebms.core.observation import fleet_observation_layout
    >>> from pulsebms.safety.state import PackRatings
    >>> from pulsebms.services.coordinator import SiteFleet, make_policy
    >>> ratings = PackRatings(("LFP", "LFP"), np.array([16, 16]), np.array([8, 8]),
    ...                       np.array([2.5, 2.5]), np.array([1000.0, 1000.0]))
    >>> fleet = SiteFleet(fleet_observation_layout(("a", "b"), 2, 2000.0), ratings)
    >>> now = [1000.0]
    >>> coord = Coordinator("s1", fleet, *make_policy("equal", fleet), clock=lambda: now[0])
    >>> pack = {"soc": 0.5, "soh": 1.0, "current_a": 0.0, "voltage_v": 52.0,
    ...         "cell_voltage_min_v": 3.3, "cell_voltage_max_v": 3.3, "temperature_min_c": 25.0,
    ...         "temperature_max_c": 25.0, "setpoint_w": 0.0, "safe": False, "reasons": 0,
    ...         "fresh": True}
    >>> coord.on_message("pulsebms/s1/e1/telemetry", {"site": "s1", "device": "e1",
    ...     "session": "x", "seq": 0, "timestamp_s": 1000.0, "period_s": 1.0,
    ...     "site_values": {"demand_w": 600.0},
    ...     "packs": [dict(pack, pack_id="a"), dict(pack, pack_id="b")]})
    >>> now[0] += 5.0
    >>> alloc = coord.step()
    >>> alloc["reason"], [s["power_w"] for s in alloc["setpoints"]]
    ('initial', [300.0, 300.0])
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pulsebms.agents.type_aliases import Policy
from pulsebms.core.messaging import allocation_topic, forecast_topic, site_filter
from pulsebms.core.observation import ObservationInputs, build_observation
from pulsebms.core.types import FloatArray
from pulsebms.edge_runtime.mqtt_link import MqttLink
from pulsebms.safety.results import ShieldResult
from pulsebms.safety.shield import Shield
from pulsebms.safety.state import FleetState as ShieldState
from pulsebms.services.coordinator.clock import Clock, wall_clock
from pulsebms.services.coordinator.fleet import SiteFleet
from pulsebms.services.coordinator.site_health import HealthRules, SiteHealth, rul_cost_factor
from pulsebms.services.coordinator.state import FleetState, SiteReadings

__all__ = ["Coordinator", "CoordinatorSettings", "DemandForecast"]

_log = logging.getLogger(__name__)

DemandForecast = Callable[[float, int], Any]
"""``forecast(now_s, steps) -> demand [W]`` at ``now_s + k·dt_s`` for ``k = 1..steps`` (the
fleet's control interval; :mod:`pulsebms.services.coordinator.demand` has the usual ones). A
source with ``observe(t_s, demand_w)`` is also fed the demand the edges report."""


@dataclass(frozen=True)
class CoordinatorSettings:
    """When and how the coordinator re-plans (all times on the coordinator's clock).

    Attributes:
        period_s: Re-planning period [s].
        rebalance_debounce_s: Delay from the first change of the usable packs to the
            re-plan [s]; collects a burst of changes into one allocation.
        valid_for_s: How long after receipt an edge may apply an allocation [s]; an
            edge falls back (local policy or hold) after it. ``None``: 1.5 × ``period_s``.
        stale_after_s: A device silent this long is excluded (its packs get nothing) [s].
        default_demand_w: Site demand when no telemetry carries ``site_values`` [W].
        default_price_per_kwh: Price when none is reported.
        default_ambient_c: Ambient temperature when none is reported [°C].
        utc_offset_h: Site local time minus UTC [h] (the observation's time of day).
        tick_s: Wall seconds between timer checks of :meth:`Coordinator.start`'s thread.
        history: Allocations kept in :attr:`Coordinator.history`.

    Raises:
        ValueError: On a non-positive period, tick or staleness, or a negative debounce.
    """

    period_s: float = 600.0
    rebalance_debounce_s: float = 2.0
    valid_for_s: float | None = None
    stale_after_s: float = 30.0
    default_demand_w: float = 0.0
    default_price_per_kwh: float = 0.25
    default_ambient_c: float = 25.0
    utc_offset_h: float = 0.0
    tick_s: float = 0.05
    history: int = 1000

    def __post_init__(self) -> None:
        for name in ("period_s", "stale_after_s", "tick_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.rebalance_debounce_s >= 0:
            raise ValueError(f"rebalance_debounce_s must be >= 0, got {self.rebalance_debounce_s}")

    @property
    def valid_for(self) -> float:
        """``valid_for_s`` resolved."""
        return 1.5 * self.period_s if self.valid_for_s is None else float(self.valid_for_s)


def _finite(value: Any, default: float) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else default


class Coordinator:
    """Plans the power of a site's packs and publishes it (see the module).

    Args:
        site: Site name.
        fleet: The fleet (layout, ratings, limits, shield settings).
        policy: Any ``act(observation) -> action`` policy for ``fleet.layout``.
        policy_name: Name in the allocations' ``policy`` field.
        link: MQTT link to publish on (and to :meth:`attach` to); ``None``: plan only
            (allocations are returned and kept in :attr:`history`).
        settings: Timing and defaults.
        clock: Time source [UNIX s]; the wall clock by default.
        forecast: Demand forecast for the observation's ``demand_forecast_w`` and, for an
            ``mpc`` policy, its whole horizon; persistence (the present demand) when
            ``None``.
        session: Sender run id of the allocations (random by default).
        health_rules: What the plan makes of the twin's forecasts and the health
            service's verdicts (:class:`~pulsebms.services.coordinator.site_health.
            HealthRules`: exclusion, derating, forecast SoH, remaining useful life).
    """

    def __init__(
        self,
        site: str,
        fleet: SiteFleet,
        policy: Policy,
        policy_name: str = "policy",
        *,
        link: MqttLink | None = None,
        settings: CoordinatorSettings | None = None,
        clock: Clock = wall_clock,
        forecast: DemandForecast | None = None,
        session: str | None = None,
        health_rules: HealthRules | None = None,
    ) -> None:
        self.site = site
        self.fleet = fleet
        self.policy = policy
        self.policy_name = policy_name
        self.link = link
        self.settings = settings or CoordinatorSettings()
        self.clock = clock
        self.forecast = forecast
        self.session = session or uuid.uuid4().hex[:12]
        self.state = FleetState(site)
        self.state.stale_hint_s = self.settings.stale_after_s
        self.health = SiteHealth(site, health_rules)
        """The twin's forecasts and the health service's verdicts (see :meth:`attach`)."""
        self.shield = fleet.shield_obj
        self.track_demand = fleet.shield_settings().track_demand
        self.topic = allocation_topic(site)
        self.history: deque[dict[str, Any]] = deque(maxlen=self.settings.history)
        self.counts: Counter[str] = Counter()
        self.on_receipt: Callable[[str, Mapping[str, Any], float], None] | None = None
        """Optional hook ``(kind, message, received_s)`` after each applied message."""
        self._lock = threading.Lock()  # state, timers, counters
        self._plan_lock = threading.Lock()  # one plan at a time
        self._seq = 0
        self._rebalance_at: float | None = None
        self._next_periodic: float | None = None
        self._stale: frozenset[str] = frozenset()
        self._last_action = np.zeros(fleet.n_packs)
        self._forecast_width = (
            fleet.layout.field("demand_forecast_w").width
            if "demand_forecast_w" in fleet.layout.slices
            else 0
        )
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._plan_now = math.nan
        self._horizon_forecast = forecast is not None and _is_mpc(policy)
        if self._horizon_forecast:  # the MPC plans its whole horizon on our forecast source
            policy.forecast = _HorizonForecast(self)  # type: ignore[attr-defined]

    # ---------------------------------------------------------------- input
    def attach(self, link: MqttLink | None = None) -> None:
        """Subscribe to the site's telemetry, status, health and forecast on ``link``.

        ``link`` (or :attr:`link`): telemetry and status feed the fleet state; the health
        service's ``+/health`` and the twin's ``twin/forecast`` feed :attr:`health`.

        Raises:
            ValueError: If there is no link.
        """
        link = link or self.link
        if link is None:
            raise ValueError("no MQTT link to attach to")
        self.link = link
        link.subscribe(site_filter(self.site, "telemetry"), self.on_message)
        link.subscribe(site_filter(self.site, "status"), self.on_message)
        link.subscribe(site_filter(self.site, "health"), self.on_message)
        link.subscribe(forecast_topic(self.site), self.on_message)

    def on_message(self, topic: str, message: Mapping[str, Any]) -> None:
        """Apply one validated message (an :class:`MqttLink` handler).

        Telemetry and status update the fleet state; ``health`` and ``forecast`` update
        :attr:`health`. A change of the usable, health-excluded or derated packs requests
        a rebalance.
        """
        kind = topic.rsplit("/", 1)[-1]
        now = self.clock()
        with self._lock:
            if kind in ("health", "forecast"):
                changed = self.health.apply(kind, message, received_s=now)
            else:
                changed = self.state.apply(kind, message, received_s=now)
            self.counts[f"{kind}_received"] += 1
            if changed:
                self._request_rebalance(now)
        if kind == "telemetry":
            self._observe_demand(message)
        hook = self.on_receipt
        if hook is not None:
            hook(kind, message, now)

    def _observe_demand(self, message: Mapping[str, Any]) -> None:
        """Feed a learning forecast source the demand a telemetry message reports."""
        observe = getattr(self.forecast, "observe", None)
        values = message.get("site_values")
        if observe is None or not values:
            return
        demand = values.get("demand_w")
        timestamp = message.get("timestamp_s")
        if isinstance(demand, int | float) and isinstance(timestamp, int | float):
            try:
                observe(float(timestamp), float(demand))
            except Exception:  # a forecast source must not break message handling
                self._count("forecast_errors")
                _log.exception("demand forecast source failed to observe")

    def _request_rebalance(self, now: float) -> None:
        if self._rebalance_at is None:
            self._rebalance_at = now + self.settings.rebalance_debounce_s
            self.counts["changes"] += 1

    # ---------------------------------------------------------------- timers
    def due(self, now: float | None = None) -> str | None:
        """The reason a plan is due now (``initial``, ``rebalance``, ``periodic``) or ``None``."""
        now = self.clock() if now is None else now
        with self._lock:
            stale = self.state.stale_devices(now, self.settings.stale_after_s)
            if stale != self._stale:
                self._stale = stale
                self._request_rebalance(now)
            if self._next_periodic is None:  # nothing sent yet
                if self._rebalance_at is not None and now >= self._rebalance_at:
                    return "initial"
                return None
            if self._rebalance_at is not None and now >= self._rebalance_at:
                return "rebalance"
            if now >= self._next_periodic:
                return "periodic"
        return None

    def step(self, now: float | None = None) -> dict[str, Any] | None:
        """Plan and publish if a plan is due; return the allocation (or ``None``)."""
        now = self.clock() if now is None else now
        reason = self.due(now)
        if reason is None:
            return None
        return self.plan(reason, now)

    # ---------------------------------------------------------------- planning
    def plan(self, reason: str = "manual", now: float | None = None) -> dict[str, Any]:
        """Compute, publish and return an allocation now.

        Args:
            reason: ``initial``, ``periodic``, ``rebalance`` or ``manual``.
            now: Clock time [s]; read from the clock when ``None``.

        Returns:
            The allocation message (as published).
        """
        with self._plan_lock:
            now = self.clock() if now is None else now
            with self._lock:
                readings = self.state.readings(
                    self.fleet.pack_ids, now, self.settings.stale_after_s
                )
                site_values = dict(self.state.site_values)
                ids = self.fleet.pack_ids
                health_excluded = self.health.excluded(ids)
                derate = self.health.derate(ids)
                forecast_soh = self.health.soh(ids, now)
                rul_days = self.health.rul_days(ids, now)
                self._rebalance_at = None
                if reason in ("initial", "periodic") or self._next_periodic is None:
                    self._next_periodic = now + self.settings.period_s
            message = self._compute(
                reason,
                now,
                readings,
                site_values,
                _PackHealth(health_excluded, derate, forecast_soh, rul_days),
            )
            with self._lock:
                self.counts["allocations"] += 1
                self.counts[reason] += 1
                self.history.append(message)
        if self.link is not None and not self.link.publish("allocation", self.topic, message):
            self._count("publish_failures")
        return message

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def _compute(
        self,
        reason: str,
        now: float,
        r: SiteReadings,
        site_values: dict[str, Any],
        health: _PackHealth,
    ) -> dict[str, Any]:
        fleet = self.fleet
        cfg = self.settings
        complete = np.isfinite(r.soc) & np.isfinite(r.soh) & np.isfinite(r.temperature_c)
        complete &= np.isfinite(r.cell_voltage_v) & np.isfinite(r.current_a)
        healthy = np.array([pid not in health.excluded for pid in fleet.pack_ids], dtype=bool)
        usable = r.usable & complete & healthy
        demand_w = _finite(site_values.get("demand_w"), cfg.default_demand_w)
        observed = r
        use_forecast = self.health.rules.use_forecast_soh & np.isfinite(health.soh)
        if use_forecast.any():  # the policy plans on the twin's calibrated SoH
            observed = replace(r, soh=np.where(use_forecast, health.soh, r.soh))
        action = self._act(now, observed, demand_w, site_values, health.rul_days)
        state = ShieldState(
            soc=r.soc,
            soh=r.soh,
            temperature_c=r.temperature_c,
            cell_voltage_v=r.cell_voltage_v,
            current_a=r.current_a,
            demand_w=demand_w,
            valid=usable,
        )
        target = demand_w if self.track_demand else None
        planned, result = _project_derated(self.shield, state, action, target, health.derate)
        power_w: FloatArray = np.where(usable, planned * fleet.rated_power_w, 0.0)
        self._last_action = np.where(usable, planned, 0.0)
        setpoints = [
            {"device": device, "pack_id": pack_id, "power_w": round(float(p), 3)}
            for pack_id, device, p in zip(fleet.pack_ids, r.devices, power_w, strict=True)
            if device is not None
        ]
        excluded = [
            pack_id if device is None else f"{device}/{pack_id}"
            for pack_id, device, ok in zip(fleet.pack_ids, r.devices, usable, strict=True)
            if not ok
        ]
        if bool(result.intervened.any()):
            self._count("shield_interventions")
        derated = [
            f"{device}/{pack_id}"
            for pack_id, device, d in zip(fleet.pack_ids, r.devices, health.derate, strict=True)
            if d < 1.0 and device is not None
        ]
        message = {
            "site": self.site,
            "session": self.session,
            "seq": self._seq,
            "timestamp_s": float(now),
            "reason": reason,
            "policy": self.policy_name,
            "period_s": cfg.period_s,
            "valid_for_s": cfg.valid_for,
            "demand_w": demand_w,
            "setpoints": setpoints,
            "excluded": excluded,
            # additive fields (accepted by schema v1 receivers, which ignore them)
            "planned_w": round(float(power_w.sum()), 3),
            "shortfall_w": round(float(result.shortfall_w), 3),
            "shield_status": result.status.name or "OK",
            "health_excluded": sorted(
                pid if d is None else f"{d}/{pid}"
                for pid, d in zip(fleet.pack_ids, r.devices, strict=True)
                if pid in health.excluded
            ),
            "derated": derated,
            "forecast_soh_packs": int(np.count_nonzero(use_forecast)),
        }
        self._seq += 1
        return message

    def demand_ahead(self, now: float, steps: int) -> FloatArray | None:
        """The forecast source's demand for the ``steps`` intervals after ``now`` [W].

        ``None`` when there is no source or no step; also when the source raises or returns
        anything but ``steps`` finite values (counted, ``forecast_errors``): the plan then
        holds the present demand (persistence).
        """
        if self.forecast is None or steps < 1:
            return None
        try:
            ahead = np.asarray(self.forecast(now, steps), dtype=np.float64).reshape(-1)
            if ahead.shape != (steps,) or not np.all(np.isfinite(ahead)):
                raise ValueError(f"{ahead.size} values (want {steps}, finite)")
        except Exception as exc:
            self._count("forecast_errors")
            _log.warning("demand forecast failed (%s); planning on persistence", exc)
            return None
        return ahead

    def _act(
        self,
        now: float,
        r: SiteReadings,
        demand_w: float,
        site_values: Mapping[str, Any],
        rul_days: FloatArray | None = None,
    ) -> FloatArray:
        """The policy's action, or zeros (counted) when it cannot be had."""
        cfg, fleet = self.settings, self.fleet
        n = fleet.n_packs
        self._plan_now = now
        rul = np.full(n, np.nan) if rul_days is None else rul_days
        if _is_mpc(self.policy):  # cycling a pack near its end of life costs more
            self.policy.degradation_weight = rul_cost_factor(rul)  # type: ignore[attr-defined]
        set_life = getattr(self.policy, "set_remaining_life", None)
        if set_life is not None:
            set_life(rul)
        try:
            forecast = self.demand_ahead(now, self._forecast_width)
            inputs = ObservationInputs.from_readings(
                r,
                capacity_ah=fleet.capacity_ah,
                demand_w=demand_w,
                price_per_kwh=_finite(site_values.get("price_per_kwh"), cfg.default_price_per_kwh),
                ambient_c=_finite(site_values.get("ambient_c"), cfg.default_ambient_c),
                hour_of_day=((now + cfg.utc_offset_h * 3600.0) % 86400.0) / 3600.0,
                demand_forecast_w=forecast,
                last_action=self._last_action,
            )
            observation = build_observation(fleet.layout, inputs)
        except (ValueError, TypeError, ArithmeticError) as exc:
            self._count("observation_errors")
            _log.warning("cannot build the observation (%s); planning with the shield alone", exc)
            return np.zeros(n)
        try:
            action = np.asarray(self.policy.act(observation), dtype=np.float64).reshape(-1)
        except Exception:
            self._count("policy_errors")
            _log.exception("policy %s failed; planning with the shield alone", self.policy_name)
            return np.zeros(n)
        if action.shape != (n,):
            self._count("policy_errors")
            _log.warning("policy returned shape %s for %d packs", action.shape, n)
            return np.zeros(n)
        return action

    # ---------------------------------------------------------------- loop
    def start(self) -> None:
        """Run :meth:`step` every ``tick_s`` wall seconds in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"coordinator-{self.site}")
        self._thread.daemon = True
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # the loop never dies: count, log, go on
                self._count("loop_errors")
                _log.exception("coordinator step failed")
            self._stop.wait(self.settings.tick_s)

    def stop(self) -> None:
        """Stop the thread started by :meth:`start` (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None

    def summary(self) -> dict[str, Any]:
        """Counters: allocations by reason, messages, drops, errors, fleet events."""
        with self._lock:
            out: dict[str, Any] = dict(self.counts)
            out.update({f"state_{k}": v for k, v in self.state.counts().items()})
            out["offline_events"] = self.state.offline_events
            out["fault_events"] = self.state.fault_events
            out["telemetry_sequence"] = self.state.sequence_counts("telemetry")
            out.update(self.health.counts())
            out["health_excluded"] = sorted(self.health.excluded(self.fleet.pack_ids))
        if self.link is not None:
            out["link"] = self.link.stats()
        return out


@dataclass(frozen=True)
class _PackHealth:
    """The site-health inputs of one plan, in the fleet's pack order."""

    excluded: dict[str, str]
    derate: FloatArray
    soh: FloatArray
    rul_days: FloatArray


def _project_derated(
    shield: Shield,
    state: ShieldState,
    action: FloatArray,
    target_w: float | None,
    derate: FloatArray,
) -> tuple[FloatArray, ShieldResult]:
    """The shield's projection, with derated packs held within ``±derate`` of their rating.

    A first projection plans every usable pack; a derated pack it gives more than its limit
    is fixed at the limit (within its admissible interval), and a second projection meets
    the rest of the target with the other packs. Returns the planned action and the result
    whose status and shortfall describe the plan.
    """
    result = shield.project(state, action, target_w)
    planned = np.asarray(result.action, dtype=np.float64)
    over = (np.abs(planned) > derate + 1e-12) & np.asarray(state.valid, dtype=bool)
    if not over.any():
        return planned, result
    lower = np.maximum(np.asarray(result.lower), -derate)
    upper = np.minimum(np.asarray(result.upper), derate)
    fixed = np.where(lower <= upper, np.clip(planned, lower, upper), planned)
    rated = np.asarray(shield.ratings.rated_power_w, dtype=np.float64)
    rest_state = replace(state, valid=np.asarray(state.valid, dtype=bool) & ~over)
    rest_target = None if target_w is None else target_w - float(np.sum((fixed * rated)[over]))
    second = shield.project(rest_state, np.where(over, 0.0, planned), rest_target)
    return np.where(over, fixed, np.asarray(second.action, dtype=np.float64)), second


def _is_mpc(policy: Any) -> bool:
    """Whether ``policy`` is an :class:`~pulsebms.agents.mpc.MPCPolicy` (cvxpy not imported)."""
    mpc = sys.modules.get("pulsebms.agents.mpc")
    return mpc is not None and isinstance(policy, mpc.MPCPolicy)


class _HorizonForecast:
    """The MPC's forecast provider: the coordinator's demand forecast over the whole horizon.

    Demand: now (the observation's) then the source's values for the next steps; price:
    the observation's (its forecast, then persistence), as :class:`~pulsebms.agents.mpc.
    ObservationForecast` gives it. A source that fails is replaced by persistence for that
    plan (:meth:`Coordinator.demand_ahead`).
    """

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def __call__(self, fleet: Any, horizon_steps: int) -> tuple[FloatArray, FloatArray]:
        from pulsebms.agents.mpc import ObservationForecast

        demand, price = ObservationForecast()(fleet, horizon_steps)
        coordinator = self.coordinator
        ahead = coordinator.demand_ahead(coordinator._plan_now, horizon_steps - 1)
        if ahead is None:
            return demand, price
        return np.concatenate([demand[:1], ahead]), price
