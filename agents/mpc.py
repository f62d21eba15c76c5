"""Model-predictive control of the fleet in cvxpy (DPP: built once, re-solved with Parameters).

The MPC plans normalised per-pack power over a horizon stated in control intervals
(``horizon_steps``) or in hours (``horizon_h``, converted with the env's ``dt_s``) with a
linear energy-balance model of every pack, and applies the first step. Long horizons are
planned on a coarser grid beyond the first step (move blocking, ``plan_step_s``), so the
solve stays bounded (≤ ``max_plan_intervals`` intervals by default).

Model (pack ``i``, step ``t``, ``u = u_dis − u_ch`` normalised by rated power ``P_i``)::

    soc[i, t+1] = soc[i, t] − k_i (u_dis[i, t] / η − η u_ch[i, t])
    k_i         = P_i dt / (3600 E_i soh_i)
    grid[t]     = demand[t] − Σ_i P_i u[i, t]                           (+ = import)

Objective (all terms in currency)::

    Σ_t dt_h (price[t] import[t] − feed_in · export[t]) / 1000   (import ≤ G_imp, export ≤ G_exp)
    + Σ_i deg_i Σ_t (u_dis + u_ch)[i, t]           (degradation-aware: throughput cost
                                                   ∝ 1 / (cycle-life factor · SoH))
    + unserved_penalty Σ_t shortfall[t]            (load above the grid import limit)
    + smoothing Σ u²                               (spreads load, keeps the QP strictly convex)
    + soc_slack_penalty Σ slack − Σ_i v_i soc[i, H] (soft SoC window, terminal value)

**Episode end and stored energy.** When the env values the energy left in storage
(``FleetEnv(stored_energy_value=...)``: the reward pays ``c_T`` per kWh stored, see
:mod:`pulsebms.envs.costs`), the MPC and the oracle plan exactly what the env scores:
planning intervals from the episode's end on are switched off (no power, no demand, no
price; the interval that holds the end is kept whole), and the energy stored at the end of
the plan is valued at ``c_T`` (``terminal_value_per_kwh = None``). A full-day oracle then
optimises the episode's own cost with the true future, so it is the lower-bound reference
(up to its linear model) instead of paying for energy it keeps past the episode. Without
a stored-energy price the plan runs its full horizon past the end, as before.

Constraints come from the same :class:`pulsebms.safety` limits the shield enforces (SoC
window, pack current and C-rate turned into power bounds at the present voltage); the first
action is then passed through the :class:`pulsebms.safety.Shield` itself when one is given,
so the MPC never proposes what the shield would change for a limit reason.

:class:`MPCPolicy` uses the observation's forecast (persistence beyond it);
:func:`make_oracle_mpc` gives it the true future of the scenario (the oracle reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

import cvxpy as cp
import numpy as np
from cvxpy.atoms.affine.binary_operators import multiply
from cvxpy.atoms.affine.sum import sum as cp_sum
from cvxpy.atoms.sum_squares import sum_squares

from pulsebms.agents.envinfo import (
    FleetInfo,
    SiteInfo,
    fleet_info,
    fleet_state,
    site_info,
)
from pulsebms.agents.observation import FleetObservation
from pulsebms.agents.rules import CYCLE_LIFE_FACTOR
from pulsebms.core.types import ActArray, FloatArray, IntArray, ObsArray
from pulsebms.safety.shield import Shield
from pulsebms.safety.state import FleetState

if TYPE_CHECKING:  # annotations only
    import gymnasium as gym

    from pulsebms.envs.scenarios import ScenarioSeries

__all__ = [
    "ORACLE_HORIZON_H",
    "ORACLE_PLAN_STEP_S",
    "ForecastProvider",
    "MPCConfig",
    "MPCPolicy",
    "ObservationForecast",
    "OracleForecast",
    "make_mpc",
    "make_oracle_mpc",
]


class ForecastProvider(Protocol):
    """Returns the demand [W] and price [currency/kWh] for the next ``horizon_steps``."""

    def __call__(
        self, fleet: FleetObservation, horizon_steps: int
    ) -> tuple[FloatArray, FloatArray]:
        """Forecast ``(demand_w, price_per_kwh)``, each of shape ``(horizon_steps,)``."""
        ...


def _extend(now: float, forecast: FloatArray, horizon_steps: int) -> FloatArray:
    values = np.concatenate([[now], np.asarray(forecast, dtype=np.float64).reshape(-1)])
    if values.shape[0] >= horizon_steps:
        return values[:horizon_steps]
    return np.concatenate([values, np.full(horizon_steps - values.shape[0], values[-1])])


class _ScenarioEnv(Protocol):
    """What :class:`OracleForecast` reads from the unwrapped FleetEnv: its episode's future."""

    @property
    def series(self) -> ScenarioSeries:
        """The present episode's scenario series (net load, price, ...)."""
        ...

    @property
    def step_index(self) -> int:
        """Control steps taken in the present episode."""
        ...


class ObservationForecast:
    """Forecast from the observation itself: now + the env's forecast, then persistence."""

    def __call__(
        self, fleet: FleetObservation, horizon_steps: int
    ) -> tuple[FloatArray, FloatArray]:
        """See :class:`ForecastProvider`."""
        demand = _extend(fleet.demand_w, fleet.demand_forecast_w, horizon_steps)
        price = _extend(fleet.price_per_kwh, fleet.price_forecast_per_kwh, horizon_steps)
        return demand, price


class OracleForecast:
    """The true future of the env's scenario (an oracle: not available to a real controller).

    Args:
        env: The FleetEnv (wrapped or not) the policy acts in; its present episode's
            ``series`` (net load, price) and ``step_index`` are read at every call.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        base = env.unwrapped
        cls = type(base)
        # Checked on the class: the properties raise before the first reset.
        if not hasattr(cls, "series") or not hasattr(cls, "step_index"):
            raise TypeError(f"{type(base).__name__} exposes no scenario series; no oracle")
        self._base = cast(_ScenarioEnv, base)

    def __call__(
        self, fleet: FleetObservation, horizon_steps: int
    ) -> tuple[FloatArray, FloatArray]:
        """See :class:`ForecastProvider`."""
        series = self._base.series
        k = min(int(self._base.step_index), series.n_samples - 1)
        demand = np.asarray(series.net_load_w[k : k + horizon_steps], dtype=np.float64)
        price = np.asarray(series.price_eur_per_kwh[k : k + horizon_steps], dtype=np.float64)
        return (
            _extend(float(demand[0]), demand[1:], horizon_steps),
            _extend(float(price[0]), price[1:], horizon_steps),
        )


@dataclass(frozen=True)
class MPCConfig:
    """Hyperparameters of :class:`MPCPolicy`.

    Attributes:
        horizon_steps: Planning horizon in control intervals (≥ 1). Cost grows roughly
            linearly; 12–48 is typical.
        efficiency: One-way charge/discharge efficiency η in (0, 1].
        degradation_cost_per_kwh: Throughput cost of an NMC pack at SoH 1 [currency/kWh];
            divided by the chemistry's cycle-life factor and by SoH per pack.
        unserved_penalty_per_kwh: Penalty for demand neither fleet nor grid covers
            [currency/kWh]; binds when the site's grid import limit is reached.
        smoothing: Weight of Σ u² (dimensionless, currency per unit² step).
        soc_slack_penalty: Penalty per unit of SoC outside the window (soft constraint, so a
            state already outside it keeps the problem feasible).
        terminal_value_per_kwh: Value of energy left in the packs at the plan's end
            [currency/kWh], times η. ``None``: the env's stored-energy price when the env values
            stored energy (``FleetEnv(stored_energy_value=...)``; then the plan also ends
            at the episode's end, see :class:`MPCPolicy`), else η × the mean forecast
            price over the horizon (stops end-of-horizon dumping).
        solver: cvxpy solver name (``"CLARABEL"``, ``"OSQP"``, ...).
        horizon_h: Planning horizon in hours; when given it replaces ``horizon_steps``
            (``ceil(3600 horizon_h / dt_s)`` control intervals at the env's ``dt_s``), so
            the look-ahead is the same time at any step length.
        plan_step_s: Planning grid of the horizon beyond its first step [s] (move
            blocking): the first interval is one control step (the applied action), the
            rest are blocks of ``round(plan_step_s / dt_s)`` steps holding one action
            each (forecasts averaged over the block). ``None``: one step per interval,
            unless the horizon exceeds ``max_plan_intervals``.
        max_plan_intervals: Bound on the planning intervals when ``plan_step_s`` is
            ``None``: longer horizons are blocked evenly to at most this many (keeps the
            solve time bounded; 24 h at 60 s steps → 97 intervals).
    """

    horizon_steps: int = 24
    efficiency: float = 0.97
    degradation_cost_per_kwh: float = 0.3
    unserved_penalty_per_kwh: float = 5.0
    smoothing: float = 1e-4
    soc_slack_penalty: float = 1e3
    terminal_value_per_kwh: float | None = None
    solver: str = "CLARABEL"
    horizon_h: float | None = None
    plan_step_s: float | None = None
    max_plan_intervals: int = 96

    def __post_init__(self) -> None:
        if self.horizon_steps < 1:
            raise ValueError(f"MPCConfig.horizon_steps must be >= 1, got {self.horizon_steps}")
        for name in ("horizon_h", "plan_step_s"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(f"MPCConfig.{name} must be > 0 (or None), got {value}")
        if self.max_plan_intervals < 2:
            raise ValueError(
                f"MPCConfig.max_plan_intervals must be >= 2, got {self.max_plan_intervals}"
            )
        if not 0.0 < self.efficiency <= 1.0:
            raise ValueError(f"MPCConfig.efficiency must be in (0, 1], got {self.efficiency}")
        for name in ("degradation_cost_per_kwh", "unserved_penalty_per_kwh", "smoothing"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"MPCConfig.{name} must be >= 0, got {getattr(self, name)}")

    def steps(self, dt_s: float) -> int:
        """Horizon in control intervals of ``dt_s`` seconds.

        Example:
            >>> MPCConfig(horizon_h=24.0).steps(60.0), MPCConfig().steps(60.0)
            (1440, 24)
        """
        if self.horizon_h is None:
            return self.horizon_steps
        return max(1, math.ceil(self.horizon_h * 3600.0 / dt_s - 1e-9))

    def durations(self, dt_s: float) -> IntArray:
        """Control steps per planning interval (sum = :meth:`steps`; first interval 1 step).

        Example:
            >>> MPCConfig(horizon_h=1.0, plan_step_s=900.0).durations(60.0).tolist()
            [1, 15, 15, 15, 14]
            >>> MPCConfig(horizon_steps=3).durations(60.0).tolist()
            [1, 1, 1]
        """
        h = self.steps(dt_s)
        if self.plan_step_s is not None:
            block = max(1, round(self.plan_step_s / dt_s))
        elif h > self.max_plan_intervals:
            block = math.ceil((h - 1) / (self.max_plan_intervals - 1))
        else:
            block = 1
        if block == 1 or h == 1:
            return np.ones(h, dtype=np.int64)
        rest = h - 1
        tail = [block] * (rest // block) + ([rest % block] if rest % block else [])
        return np.asarray([1, *tail], dtype=np.int64)


_DEFAULTS = MPCConfig()
"""The defaults of :func:`make_mpc`'s hyperparameters (one source: :class:`MPCConfig`)."""


class MPCPolicy:
    """Receding-horizon MPC as a :class:`~pulsebms.agents.type_aliases.Policy`.

    The cvxpy problem is built once in the constructor (``is_dpp()`` holds) and only its
    Parameters change between calls.

    Args:
        info: The fleet description (:func:`pulsebms.agents.envinfo.fleet_info`).
        config: Hyperparameters.
        forecast: Demand/price forecast; :class:`ObservationForecast` when ``None``.
        shield: A :class:`pulsebms.safety.shield.Shield` of the same fleet: its admissible
            interval bounds the first planned step, and the first action is projected by it
            (keeping the planned fleet power). ``None``: bounds from current and C-rate
            limits only, no projection.
        site_fn: Returns the grid-connection limits and feed-in price of the present
            episode; unlimited connection and no feed-in when ``None``.
        name: Label in KPI tables.
    """

    def __init__(
        self,
        info: FleetInfo,
        config: MPCConfig | None = None,
        *,
        forecast: ForecastProvider | None = None,
        shield: Shield | None = None,
        site_fn: Callable[[], SiteInfo] | None = None,
        name: str = "mpc",
    ) -> None:
        self.info = info
        self.config = config or MPCConfig()
        self.forecast: ForecastProvider = forecast or ObservationForecast()
        self.shield = shield
        self.site_fn = site_fn
        self.name = name
        self._state: FleetState | None = None
        self.last_status = ""
        self.degradation_weight: FloatArray | None = None
        """Optional factor per pack on the degradation cost (e.g. from a forecast of the
        packs' remaining useful life; ``None``: 1 for every pack)."""
        self._build()

    @property
    def horizon_steps(self) -> int:
        """Planning horizon in control intervals of the env's ``dt_s``."""
        return int(self._durations.sum())

    def _build(self) -> None:
        cfg, n = self.config, self.info.n_packs
        self._durations = cfg.durations(self.info.dt_s)
        durations = self._durations
        blocked = bool(np.any(durations != 1))
        h = int(durations.shape[0])  # planning intervals
        dt_h = self.info.dt_s / 3600.0
        rated = self.info.rated_power_w
        self.p_soc0 = cp.Parameter(n, name="soc0")
        self.p_k = cp.Parameter(n, nonneg=True, name="soc_per_unit_step")
        self.p_demand = cp.Parameter(h, name="demand_kw")
        self.p_price = cp.Parameter(h, nonneg=True, name="price_per_kwh")
        self.p_deg = cp.Parameter(n, nonneg=True, name="degradation_per_unit_step")
        self.p_terminal = cp.Parameter(n, nonneg=True, name="terminal_value_per_soc")
        # Per interval (× block length when blocked); 0 past the episode's end.
        self.p_feed_in = cp.Parameter(h, nonneg=True, name="feed_in_price_per_kwh")
        # Per pack and interval: the power bounds (the first interval's within the shield's
        # admissible set), 0 past the episode's end.
        self.p_u_dis_cap = cp.Parameter((n, h), nonneg=True, name="u_dis_max_per_interval")
        self.p_u_ch_cap = cp.Parameter((n, h), nonneg=True, name="u_ch_max_per_interval")
        self.p_import_max = cp.Parameter(nonneg=True, name="grid_import_limit_kw")
        self.p_export_max = cp.Parameter(nonneg=True, name="grid_export_limit_kw")
        self.u_dis = cp.Variable((n, h), nonneg=True, name="u_dis")
        self.u_ch = cp.Variable((n, h), nonneg=True, name="u_ch")
        soc = cp.Variable((n, h + 1), name="soc")
        slack = cp.Variable((n, h + 1), nonneg=True, name="soc_slack")
        grid_import = cp.Variable(h, nonneg=True, name="grid_import_kw")
        grid_export = cp.Variable(h, nonneg=True, name="grid_export_kw")
        shortfall = cp.Variable(h, nonneg=True, name="shortfall_kw")
        curtailed = cp.Variable(h, nonneg=True, name="curtailed_kw")
        eta = cfg.efficiency
        fleet_kw = (rated / 1000.0) @ (self.u_dis - self.u_ch)
        cons = [
            soc[:, 0] == self.p_soc0,
            grid_import - grid_export + shortfall - curtailed == self.p_demand - fleet_kw,
            grid_import <= self.p_import_max,
            grid_export <= self.p_export_max,
            soc >= self.info.soc_min[:, None] - slack,
            soc <= self.info.soc_max[:, None] + slack,
            self.u_dis <= self.p_u_dis_cap,
            self.u_ch <= self.p_u_ch_cap,
        ]
        for t in range(h):
            step = self.u_dis[:, t] / eta - eta * self.u_ch[:, t]
            if blocked:
                step = float(durations[t]) * step
            cons += [soc[:, t + 1] == soc[:, t] - multiply(self.p_k, step)]
        if blocked:
            # p_price holds price × block length; every per-interval term is weighted by it.
            d = durations.astype(np.float64)
            root = np.sqrt(d)[None, :]
            energy_cost = dt_h * (self.p_price @ grid_import - self.p_feed_in @ grid_export)
            throughput = (self.u_dis + self.u_ch) @ d
            unserved = d @ shortfall
            smooth = sum_squares(multiply(root, self.u_dis)) + sum_squares(
                multiply(root, self.u_ch)
            )
        else:
            energy_cost = dt_h * (self.p_price @ grid_import - self.p_feed_in @ grid_export)
            throughput = cp_sum(self.u_dis + self.u_ch, axis=1)
            unserved = cp_sum(shortfall)
            smooth = sum_squares(self.u_dis) + sum_squares(self.u_ch)
        objective = (
            energy_cost
            + self.p_deg @ throughput
            + cfg.unserved_penalty_per_kwh * dt_h * unserved
            + cfg.smoothing * smooth
            + cfg.soc_slack_penalty * cp_sum(slack)
            - self.p_terminal @ soc[:, h]
        )
        self.problem = cp.Problem(cp.Minimize(objective), cons)
        if not self.problem.is_dpp():  # pragma: no cover - guarded by a test
            raise RuntimeError("MPC problem is not DPP; it would be recompiled at every solve")
        self._soc = soc

    def reset(self) -> None:
        """Stateless between episodes (the problem is kept)."""
        self.last_status = ""

    def _power_bounds(self, fleet: FleetObservation) -> tuple[FloatArray, FloatArray]:
        info = self.info
        soh = np.clip(fleet.soh, 1e-3, 1.0)
        current_a = np.minimum(info.current_max_a, info.c_rate_max * info.capacity_ah * soh)
        # Power available at the present capacity-weighted nominal voltage, as a fraction of
        # rated power (the shield refines this with its one-step voltage prediction).
        pack_v = info.energy_wh / np.maximum(info.capacity_ah, 1e-9)
        u_max = np.clip(current_a * pack_v / info.rated_power_w, 0.0, 1.0)
        hot = fleet.temperature_c >= info.temperature_max_c
        cold = fleet.temperature_c <= info.temperature_min_c
        u_max = np.where(hot | cold, 0.0, u_max)
        return u_max, u_max.copy()

    def plan(self, observation: ObsArray) -> FloatArray:
        """Solve the MPC for one observation and return the planned actions ``(n, H)``.

        ``H`` is :attr:`horizon_steps` (control steps); with move blocking each block's
        action is repeated over its steps.
        """
        info, cfg = self.info, self.config
        fleet = info.reader.read(observation)
        durations = self._durations
        blocked = bool(np.any(durations != 1))
        demand_w, price = self.forecast(fleet, self.horizon_steps)
        site = self.site_fn() if self.site_fn is not None else SiteInfo()
        stored_price = site.stored_energy_price_per_kwh
        starts = np.concatenate([[0], np.cumsum(durations)[:-1]])
        active = np.ones(durations.shape[0], dtype=bool)
        if stored_price is not None and site.steps_left is not None:  # plan to the episode end
            active = starts < max(int(site.steps_left), 1)
        if blocked:  # block means of the per-step forecast; price is weighted by block length
            demand_w = np.add.reduceat(np.asarray(demand_w, dtype=np.float64), starts) / durations
            price = np.add.reduceat(np.asarray(price, dtype=np.float64), starts) / durations
        soh = np.clip(fleet.soh, 1e-3, 1.0)
        energy_wh = info.energy_wh * soh
        dt_h = info.dt_s / 3600.0
        life = np.array([CYCLE_LIFE_FACTOR.get(c, 1.0) for c in info.chemistry])
        u_dis_max, u_ch_max = self._power_bounds(fleet)
        self.p_soc0.value = np.clip(fleet.soc, -1.0, 2.0)
        self.p_k.value = info.rated_power_w * dt_h / np.maximum(energy_wh, 1e-9)
        dis_cap = np.outer(u_dis_max, active)
        ch_cap = np.outer(u_ch_max, active)
        self._state = None
        if self.shield is not None:
            self._state = fleet_state(info, fleet)
            admissible = self.shield.admissible(self._state)
            dis_cap[:, 0] = np.minimum(dis_cap[:, 0], np.clip(admissible.upper, 0.0, 1.0))
            ch_cap[:, 0] = np.minimum(ch_cap[:, 0], np.clip(-admissible.lower, 0.0, 1.0))
        self.p_u_dis_cap.value = dis_cap
        self.p_u_ch_cap.value = ch_cap
        demand_w = np.where(active, np.asarray(demand_w, dtype=np.float64), 0.0)
        self.p_demand.value = demand_w / 1000.0
        price = np.clip(np.asarray(price, dtype=np.float64), 0.0, None)
        weight = np.where(active, durations if blocked else 1.0, 0.0)
        self.p_price.value = price * weight
        wear = 1.0 if self.degradation_weight is None else self.degradation_weight
        self.p_deg.value = (
            cfg.degradation_cost_per_kwh * info.rated_power_w * dt_h / 1000.0 / (life * soh)
        ) * np.clip(np.nan_to_num(wear, nan=1.0), 0.0, None)
        if cfg.terminal_value_per_kwh is not None:
            value = cfg.efficiency * cfg.terminal_value_per_kwh
        elif stored_price is not None:  # what the env pays for stored energy, exactly
            value = stored_price
        else:
            mean_price = (
                float(np.average(price, weights=durations)) if blocked else float(np.mean(price))
            )
            value = cfg.efficiency * mean_price
        self.p_terminal.value = max(float(value), 0.0) * energy_wh / 1000.0
        big_kw = 10.0 * (float(np.sum(info.rated_power_w)) + float(np.max(np.abs(demand_w)))) / 1e3
        self.p_feed_in.value = max(site.feed_in_price_per_kwh, 0.0) * weight
        self.p_import_max.value = min(site.grid_import_limit_w / 1000.0, big_kw)
        self.p_export_max.value = min(site.grid_export_limit_w / 1000.0, big_kw)
        try:
            self.problem.solve(solver=cfg.solver, warm_start=True)  # type: ignore[no-untyped-call]
        except cp.error.SolverError as exc:
            self.last_status = f"solver error: {exc}"
            return np.zeros((info.n_packs, self.horizon_steps))
        self.last_status = str(self.problem.status)
        if self.u_dis.value is None or self.u_ch.value is None:
            return np.zeros((info.n_packs, self.horizon_steps))
        planned = np.asarray(self.u_dis.value - self.u_ch.value, dtype=np.float64)
        return np.repeat(planned, durations, axis=1) if blocked else planned

    def act(self, observation: ObsArray) -> ActArray:
        """First planned action, passed through the shield when one is configured."""
        action = np.clip(self.plan(observation)[:, 0], -1.0, 1.0)
        if self.shield is not None and self._state is not None:
            action = np.asarray(self.shield.project(self._state, action).action)
        return action.astype(np.float32)


def make_mpc(
    env: gym.Env[Any, Any],
    *,
    horizon_steps: int = _DEFAULTS.horizon_steps,
    efficiency: float = _DEFAULTS.efficiency,
    degradation_cost_per_kwh: float = _DEFAULTS.degradation_cost_per_kwh,
    unserved_penalty_per_kwh: float = _DEFAULTS.unserved_penalty_per_kwh,
    smoothing: float = _DEFAULTS.smoothing,
    soc_slack_penalty: float = _DEFAULTS.soc_slack_penalty,
    terminal_value_per_kwh: float | None = _DEFAULTS.terminal_value_per_kwh,
    solver: str = _DEFAULTS.solver,
    horizon_h: float | None = _DEFAULTS.horizon_h,
    plan_step_s: float | None = _DEFAULTS.plan_step_s,
    max_plan_intervals: int = _DEFAULTS.max_plan_intervals,
    oracle: bool = False,
    use_shield: bool = True,
    name: str | None = None,
) -> MPCPolicy:
    """Build an MPC for an environment (see :class:`MPCConfig` for each hyperparameter).

    The hyperparameters' defaults are :class:`MPCConfig`'s (the Hydra schema
    ``MPCAgentConf`` is derived from both).

    Args:
        env: The FleetEnv (wrapped or not).
        horizon_steps: See :class:`MPCConfig`.
        efficiency: See :class:`MPCConfig`.
        degradation_cost_per_kwh: See :class:`MPCConfig`.
        unserved_penalty_per_kwh: See :class:`MPCConfig`.
        smoothing: See :class:`MPCConfig`.
        soc_slack_penalty: See :class:`MPCConfig`.
        terminal_value_per_kwh: See :class:`MPCConfig`.
        solver: See :class:`MPCConfig`.
        horizon_h: See :class:`MPCConfig` (replaces ``horizon_steps`` when given).
        plan_step_s: See :class:`MPCConfig`.
        max_plan_intervals: See :class:`MPCConfig`.
        oracle: Plan with the scenario's true future (:class:`OracleForecast`).
        use_shield: Bound the first step by the shield's admissible set and project the
            action with a :class:`pulsebms.safety.shield.Shield` built from the env's
            ratings, limits and ``dt_s`` (the same limits the shield wrapper enforces).
        name: Label in KPI tables (``"mpc"`` / ``"mpc_oracle"`` by default).

    Returns:
        The MPC policy.
    """
    config = MPCConfig(
        horizon_steps=horizon_steps,
        efficiency=efficiency,
        degradation_cost_per_kwh=degradation_cost_per_kwh,
        unserved_penalty_per_kwh=unserved_penalty_per_kwh,
        smoothing=smoothing,
        soc_slack_penalty=soc_slack_penalty,
        terminal_value_per_kwh=terminal_value_per_kwh,
        solver=solver,
        horizon_h=horizon_h,
        plan_step_s=plan_step_s,
        max_plan_intervals=max_plan_intervals,
    )
    forecast: ForecastProvider = OracleForecast(env) if oracle else ObservationForecast()
    info = fleet_info(env)
    shield = None
    if use_shield and info.ratings is not None:
        shield = Shield(info.ratings, info.limits or None, info.dt_s)
    return MPCPolicy(
        info,
        config,
        forecast=forecast,
        shield=shield,
        site_fn=partial(site_info, env),
        name=name or ("mpc_oracle" if oracle else "mpc"),
    )


ORACLE_HORIZON_H = 24.0
"""Default horizon of :func:`make_oracle_mpc` [h]: a full day (the oracle reference)."""

ORACLE_PLAN_STEP_S = 900.0
"""Default planning grid of :func:`make_oracle_mpc` beyond its first step [s]."""


def make_oracle_mpc(env: gym.Env[Any, Any], **kwargs: Any) -> MPCPolicy:
    """:func:`make_mpc` with ``oracle=True``: the MPC given the scenario's true future.

    Unless ``horizon_steps`` or ``horizon_h`` is given, it plans a full day
    (:data:`ORACLE_HORIZON_H`) on a :data:`ORACLE_PLAN_STEP_S` grid beyond its first
    step, so at any ``dt_s`` it is a full-day-horizon reference (not the 24-step MPC).
    """
    if "horizon_steps" not in kwargs and kwargs.get("horizon_h") is None:
        kwargs["horizon_h"] = ORACLE_HORIZON_H
        kwargs.setdefault("plan_step_s", ORACLE_PLAN_STEP_S)
    return make_mpc(env, oracle=True, **kwargs)
