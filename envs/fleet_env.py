"""``FleetEnv``: a battery fleet behind a site's grid connection, as a Gymnasium environment.

Site model
==========

Every control interval of ``dt_s`` seconds (index ``k``) the scenario gives the site's load
and PV, so the **net load** ``L = load − PV`` [W] (negative when PV exceeds the load), the
grid import price ``c_imp`` and the feed-in price ``c_exp`` [EUR/kWh] and the ambient
temperature. The agent sets each pack's power ``p_i = a_i · P_rated,i`` (``a_i ∈ [−1, 1]``,
``+`` = discharge into the site); the twin reports the power the pack really delivered,
``P_fleet = Σ p_i``. The grid balances the rest::

    g         = L − P_fleet                     grid exchange [W], + = import
    import    = min(max(g, 0), G_imp)           G_imp: grid import limit [W]
    unserved  = max(g − G_imp, 0)               load the grid connection cannot carry
    export    = min(max(−g, 0), G_exp)          G_exp: grid export limit [W]
    curtailed = max(−g − G_exp, 0)              surplus that cannot be exported (lost)

Reward (EUR, per step; ``Δt_h = dt_s / 3600``)::

    energy_cost_eur      = c_imp · import/1000 · Δt_h − c_exp · export/1000 · Δt_h
    degradation_cost_eur = Σ_i (ΔSoH_i / degradation_acceleration) / (1 − SoH_EoL)
                               · E_nom,i [kWh] · replacement_cost_eur_per_kwh
    unserved_penalty_eur = value_of_lost_load_eur_per_kwh · unserved/1000 · Δt_h
    fault_penalty_eur    = value_of_lost_load_eur_per_kwh · site_peak_kW · max(T_left_h, 1)
                               (only on the step a pack faults; the episode terminates)
    stored_energy_cost_eur = c_T · (E_before − E_after)   (only with stored_energy_value)
    reward = −(energy_cost_eur + degradation_cost_eur + unserved_penalty_eur
               + fault_penalty_eur + stored_energy_cost_eur)

So the **fleet total** matters (buy cheap, sell or self-consume dear: arbitrage; keep the
import under ``G_imp``: peak shaving) and so does the **split** (losses, heating and fade
differ by chemistry, SoH and temperature). The fault penalty prices a faulted fleet as a
site without power for the rest of the episode (at least one hour), so ending an episode
early never pays. Degradation is priced on the *real* fade: the accelerated fade of
research runs is divided by the acceleration factor. With ``stored_energy_value`` (opt-in;
off for every registered id) the energy in storage ``E = Σ SoC·SoH·E_nom`` is worth ``c_T``
per kWh (the episode's lowest or mean import price, or a given price): the episode's terms
sum to ``c_T · (E_start − E_end)``, so ending the day with the fleet emptied earns nothing
and a controller is paid for the energy it leaves for tomorrow
(:mod:`pulsebms.envs.costs`).

The cost weights (:class:`~pulsebms.envs.costs.CostModel`) and these formulas live in
:mod:`pulsebms.envs.costs`; the observation is built by
:func:`pulsebms.core.observation.build_observation` from the layout
:func:`~pulsebms.core.observation.fleet_observation_layout`.

Constraint cost (CMDP): ``info["cost"] = violation_cost(violations) + fault_cost · n_faulted``
where the violations are the twin's state after the step checked against
:attr:`FleetEnv.pack_limits` by :func:`pulsebms.safety.check_violations`.

The fleet's power request given to the shield (``FleetState.demand_w``,
:meth:`FleetEnv.fleet_state`) is, with ``fleet_request="net_load"`` (default), the net
load ``L``: the discharge that makes grid exchange zero (self-consumption). With
``fleet_request="peak_shaving"`` it is ``max(L − G_imp, 0)``: the least discharge that
leaves no load unserved.

Step ``info`` keys (units in the names; scalars unless said):

* site: ``load_w``, ``pv_w``, ``net_load_w``, ``price_eur_per_kwh``,
  ``feed_in_price_eur_per_kwh``, ``ambient_c``, ``hour_of_day`` (of the interval just
  simulated), ``demand_w`` (the fleet request for the *next* interval);
* fleet and grid: ``fleet_setpoint_w``, ``fleet_power_w``, ``pack_power_w`` and
  ``pack_current_a`` (arrays ``(n_packs,)``), ``grid_import_w``, ``grid_export_w``,
  ``unserved_w``, ``curtailed_w``, ``grid_import_limit_w``;
* reward terms: ``energy_cost_eur``, ``degradation_cost_eur``, ``unserved_penalty_eur``,
  ``fault_penalty_eur``, ``stored_energy_cost_eur`` (0 unless ``stored_energy_value``),
  ``total_cost_eur`` (= −reward), ``soh_loss`` (Σ ΔSoH as the twin reports it,
  accelerated), ``stored_energy_kwh`` (after the step);
* constraints: ``cost`` (CMDP cost), ``violations`` (tuple of
  :class:`pulsebms.safety.Violation`: pack index, limit name, value, bound),
  ``n_violations``;
* faults: ``fault`` (bool), ``fault_reason`` (``"<pack>: <reason>; ..."`` or ``""``);
* action handling: ``action_nan_count``, ``action_clipped_count``;
* time: ``step`` (steps taken), ``time_s`` (since the episode start).

``reset`` returns ``step``, ``time_s``, ``start_day``, ``start_hour``,
``site_peak_load_w``, ``grid_import_limit_w``, ``grid_export_limit_w``, ``demand_w``,
``stored_energy_kwh`` and ``stored_energy_price_eur_per_kwh`` (``None`` when not valued).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from pulsebms.core.observation import (
    ObservationInputs,
    ObservationLayout,
    ObsField,
    build_observation,
    fleet_observation_layout,
)
from pulsebms.core.types import ActArray, FloatArray, ObsArray
from pulsebms.envs.chemistry import get_chemistry
from pulsebms.envs.costs import (
    CostModel,
    check_stored_energy_value,
    constraint_cost,
    energy_cost_eur,
    grid_exchange,
    make_costs,
    stored_energy_kwh,
    stored_energy_price,
)
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.scenarios import Scenario, ScenarioSeries, build_series, make_scenario
from pulsebms.envs.twin.base import PackStates
from pulsebms.safety.state import FleetState, PackRatings

__all__ = [
    "DEFAULT_FLEET",
    "FIDELITIES",
    "CostModel",
    "FleetEnv",
    "ObsField",
    "ObservationLayout",
    "make_pack_specs",
]

TwinFactory = Callable[..., Any]

FIDELITIES = ("physics", "ecm")
"""Twin fidelities: ``"physics"`` (PyBaMM SPM + lumped thermal + SEI by default; SPMe with
``twin_options={"model_name": "SPMe"}``) and ``"ecm"`` (equivalent-circuit model built
from PyBaMM). Every registered id uses ``"physics"`` with SPM unless its kwargs say
otherwise."""

DEFAULT_FLEET: tuple[PackSpec, ...] = (
    PackSpec("LFP", series=16, parallel=8, initial_soc=0.6, initial_soh=0.97, name="lfp-0"),
    PackSpec("NMC", series=14, parallel=4, initial_soc=0.5, initial_soh=0.95, name="nmc-1"),
    PackSpec("LCO", series=14, parallel=20, initial_soc=0.5, initial_soh=0.96, name="lco-2"),
)
"""The default mixed fleet (LFP, NMC, LCO), each pack about 1 kWh."""

_PACK_FIELDS = frozenset(f.name for f in dataclasses.fields(PackSpec))


def make_pack_specs(fleet: Sequence[PackSpec | Mapping[str, Any]]) -> tuple[PackSpec, ...]:
    """Validate a fleet given in plain data and return :class:`PackSpec` objects.

    Packs without a name are called ``"<chemistry>-<index>"`` (lower case).

    Args:
        fleet: Pack specs or mappings of :class:`PackSpec` fields.

    Returns:
        The specs, chemistry names upper-cased.

    Raises:
        ValueError: On an empty fleet, an unknown field or chemistry, or a bad value; the
            message names the pack and the field (``fleet[2].chemistry``).
        TypeError: If an entry is neither a PackSpec nor a mapping.

    Example:
        >>> make_pack_specs([{"chemistry": "lfp"}])[0].name
        'lfp-0'
    """
    if isinstance(fleet, str | bytes) or len(fleet) == 0:
        raise ValueError("fleet must be a non-empty sequence of PackSpec or dicts")
    specs: list[PackSpec] = []
    for i, entry in enumerate(fleet):
        if isinstance(entry, PackSpec):
            spec = entry
        elif isinstance(entry, Mapping):
            unknown = sorted(set(entry) - _PACK_FIELDS)
            if unknown:
                raise ValueError(
                    f"fleet[{i}]: unknown PackSpec field(s) {unknown}; "
                    f"known: {sorted(_PACK_FIELDS)}"
                )
            if "chemistry" not in entry:
                raise ValueError(f"fleet[{i}].chemistry is required")
            try:
                spec = PackSpec(**dict(entry))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"fleet[{i}]: {exc}") from exc
        else:
            raise TypeError(
                f"fleet[{i}] must be a PackSpec or a mapping, got {type(entry).__name__}"
            )
        try:
            chem = get_chemistry(str(spec.chemistry)).name
        except ValueError as exc:
            raise ValueError(f"fleet[{i}].chemistry: {exc}") from exc
        name = spec.name or f"{chem.lower()}-{i}"
        specs.append(dataclasses.replace(spec, chemistry=chem, name=name))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"fleet pack names must be unique, got {names}")
    return tuple(specs)


class FleetEnv(gym.Env[ObsArray, ActArray]):
    """A battery fleet serving a site's net load behind a limited grid connection.

    Observation (flat ``Box``, float32; :attr:`observation_layout` names every block, its
    unit and the scale that turns the stored value into the physical one; per-pack blocks
    follow the fleet's order):

    ========================  ====  =======  ===============================================
    field                     size  scale    stored value
    ========================  ====  =======  ===============================================
    ``soc``                   n     1        state of charge [0, 1]
    ``soh``                   n     1        state of health [0, 1]
    ``temperature_c``         n     50       pack temperature / 50 °C
    ``cell_voltage_v``        n     4        cell voltage / 4 V
    ``current_c_rate``        n     1        last current / nominal capacity [1/h], + = dis.
    ``demand_w``              1     ΣP_r     net load (load − PV) / Σ rated power
    ``demand_forecast_w``     m     ΣP_r     forecast net load, next ``m`` steps
    ``price_per_kwh``         1     1        import price [EUR/kWh]
    ``price_forecast_per_kwh`` m    1        forecast import price, next ``m`` steps
    ``ambient_c``             1     50       ambient temperature / 50 °C
    ``time_of_day_sin/cos``   1+1   1        sin, cos of 2π·hour/24
    ========================  ====  =======  ===============================================

    Action (flat ``Box`` in [−1, 1]ⁿ, float32): pack power set-point / rated pack power,
    ``+`` = discharge. Non-finite or out-of-range actions never raise: NaN → 0, then every
    element is clipped to [−1, 1] (±inf → ±1); ``info["action_nan_count"]`` and
    ``info["action_clipped_count"]`` report it. A wrongly shaped action raises ``ValueError``.

    Reward, constraint cost and the site model: see :mod:`pulsebms.envs.fleet_env`.
    A pack fault (a set-point the twin cannot follow) terminates the episode with a fault
    penalty and ``info["fault_reason"]``; it never raises. The episode truncates after
    ``horizon_steps`` steps.

    Args:
        fleet: The packs, as :class:`PackSpec` or dicts of its fields; default
            :data:`DEFAULT_FLEET`.
        scenario: Preset name (:data:`pulsebms.envs.scenarios.SCENARIOS`), dict of
            :class:`~pulsebms.envs.scenarios.Scenario` fields (``"base"`` names a preset)
            or a Scenario.
        dt_s: Control interval [s].
        horizon_steps: Steps per episode before truncation.
        fidelity: Twin fidelity, ``"physics"`` or ``"ecm"`` (see :data:`FIDELITIES`).
        forecast_steps: Length ``m`` of the net-load and price forecasts in the observation.
        forecast_h: The forecasts' length in hours; when given it replaces
            ``forecast_steps`` by ``ceil(3600 forecast_h / dt_s)`` (the observation's
            length follows ``m``; ``None`` keeps ``forecast_steps``).
        site_observation: Append the grid import/export limits and the feed-in price to the
            observation (the ``PulseBMS/FleetSite-v0``layout: what the MPC reads); ``False``
            keeps the v0 layout.
        limits: Overrides of the safety limits: a dict of
            :func:`pulsebms.safety.default_limits` keywords for every pack, or a dict
            chemistry → such a dict. Given values always win over the defaults below.
        current_limit_c_rate: The default pack current limits scale with the pack:
            ``current_max_a = −current_min_a = r · parallel · cell capacity`` (nominal pack
            capacity [A.h] at SoH 1) with ``r = max(current_limit_c_rate, c_rate_max)``, so
            the C-rate limit ``c_rate_max`` (1 C of the present capacity by default) stays
            the binding one and a 100 kWh pack is not held to the fixed ±100 A of
            :class:`pulsebms.safety.PackLimits`. ``None``: that fixed default.
        costs: :class:`CostModel` or a dict of its fields (cost weights).
        degradation_acceleration: Factor ≥ 1 on the twin's fade (research runs); the
            degradation cost divides it out again.
        stored_energy_value: Value the energy in storage (opt-in; see the module
            docstring): ``None`` (off: stored energy is worth nothing when the episode
            ends), ``"min_price"`` / ``"mean_price"`` (the episode's lowest / mean import
            price) or a price [EUR/kWh]. Adds ``stored_energy_cost_eur`` to the reward.
        fleet_request: ``"net_load"`` or ``"peak_shaving"``: what
            :meth:`fleet_state` reports as ``demand_w`` (see the module docstring).
        randomize_initial_state: On reset, draw each pack's SoC uniformly in
            ``initial_soc_range`` and its temperature as ambient ± ``temperature_jitter_c``
            from the env's seeded generator (domain randomisation). ``None`` (default):
            on when the scenario randomises its days (``Scenario.randomize_day``, e.g.
            the ``"randomized"`` preset), so a randomised day also starts the fleet in a
            random state.
        initial_soc_range: SoC range of the randomisation.
        temperature_jitter_c: Temperature half-range of the randomisation [K].
        render_mode: ``None`` or ``"ansi"``.
        twin_options: Extra keyword arguments of :func:`pulsebms.envs.twin.make_twin`
            (e.g. ``{"model_name": "SPMe", "degradation": "sei+empirical"}``).
        twin_factory: Advanced: a callable ``(packs, *, fidelity, degradation_acceleration)
            -> FleetTwin`` replacing :func:`pulsebms.envs.twin.make_twin` (a stub in tests,
            a hardware-in-the-loop twin).

    Raises:
        ValueError: On a bad fleet, scenario, fidelity, limit or cost (the message names the
            field).

    Example:
        >>> from pulsebms.envs import FleetEnv
        >>> env = FleetEnv(fleet=[{"chemistry": "LFP"}, {"chemistry": "NMC"}],
        ...                scenario="tou", dt_s=300.0, horizon_steps=12, fidelity="ecm")
        >>> obs, info = env.reset(seed=0)
        >>> obs.shape == env.observation_space.shape
        True
        >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        >>> sorted(k for k in info if k.endswith("_eur"))[:2]
        ['degradation_cost_eur', 'energy_cost_eur']
    """

    # Gymnasium declares ``metadata`` as a plain (not ClassVar) attribute; keep its type.
    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012

    def __init__(
        self,
        fleet: Sequence[PackSpec | Mapping[str, Any]] | None = None,
        scenario: str | Mapping[str, Any] | Scenario = "default",
        *,
        dt_s: float = 300.0,
        horizon_steps: int = 288,
        fidelity: str = "physics",
        forecast_steps: int = 4,
        forecast_h: float | None = None,
        site_observation: bool = False,
        limits: Mapping[str, Any] | None = None,
        current_limit_c_rate: float | None = 2.0,
        costs: CostModel | Mapping[str, float] | None = None,
        degradation_acceleration: float = 1.0,
        stored_energy_value: str | float | None = None,
        fleet_request: str = "net_load",
        randomize_initial_state: bool | None = None,
        initial_soc_range: tuple[float, float] = (0.2, 0.9),
        temperature_jitter_c: float = 3.0,
        render_mode: str | None = None,
        twin_options: Mapping[str, Any] | None = None,
        twin_factory: TwinFactory | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(dt_s, int | float) and np.isfinite(dt_s) and dt_s > 0):
            raise ValueError(f"dt_s must be a finite number > 0, got {dt_s!r}")
        if int(horizon_steps) != horizon_steps or horizon_steps < 1:
            raise ValueError(f"horizon_steps must be an integer >= 1, got {horizon_steps!r}")
        if forecast_h is not None:  # hours → steps at this dt_s
            if not (isinstance(forecast_h, int | float) and np.isfinite(forecast_h)) or (
                forecast_h < 0
            ):
                raise ValueError(f"forecast_h must be a finite number >= 0, got {forecast_h!r}")
            forecast_steps = math.ceil(float(forecast_h) * 3600.0 / float(dt_s) - 1e-9)
        if int(forecast_steps) != forecast_steps or forecast_steps < 0:
            raise ValueError(f"forecast_steps must be an integer >= 0, got {forecast_steps!r}")
        if fidelity not in FIDELITIES:
            raise ValueError(f"fidelity must be one of {list(FIDELITIES)}, got {fidelity!r}")
        if not degradation_acceleration >= 1.0:
            raise ValueError(
                f"degradation_acceleration must be >= 1, got {degradation_acceleration!r}"
            )
        if fleet_request not in ("net_load", "peak_shaving"):
            raise ValueError(
                f"fleet_request must be 'net_load' or 'peak_shaving', got {fleet_request!r}"
            )
        lo, hi = (float(v) for v in initial_soc_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(
                f"initial_soc_range must satisfy 0 <= lo <= hi <= 1, got {initial_soc_range!r}"
            )
        if not temperature_jitter_c >= 0.0:
            raise ValueError(f"temperature_jitter_c must be >= 0, got {temperature_jitter_c!r}")
        if current_limit_c_rate is not None and not (
            isinstance(current_limit_c_rate, int | float)
            and np.isfinite(current_limit_c_rate)
            and current_limit_c_rate > 0
        ):
            raise ValueError(
                f"current_limit_c_rate must be None or a finite number > 0, "
                f"got {current_limit_c_rate!r}"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )

        self.packs: tuple[PackSpec, ...] = make_pack_specs(
            DEFAULT_FLEET if fleet is None else fleet
        )
        self.scenario: Scenario = make_scenario(scenario)
        self.dt_s: float = float(dt_s)
        self.horizon_steps: int = int(horizon_steps)
        self.fidelity: str = fidelity
        self.forecast_steps: int = int(forecast_steps)
        self.costs: CostModel = make_costs(costs)
        self.degradation_acceleration: float = float(degradation_acceleration)
        self.stored_energy_value: str | float | None = check_stored_energy_value(
            stored_energy_value
        )
        self._stored_price: float | None = None
        self.fleet_request: str = fleet_request
        self.randomize_initial_state: bool = bool(
            self.scenario.randomize_day
            if randomize_initial_state is None
            else randomize_initial_state
        )
        self.initial_soc_range: tuple[float, float] = (lo, hi)
        self.temperature_jitter_c: float = float(temperature_jitter_c)
        self.render_mode = render_mode

        if twin_factory is None:
            from pulsebms.envs.twin import make_twin  # lazy: PyBaMM is heavy

            twin_factory = make_twin
        self.twin = twin_factory(
            self.packs,
            fidelity=fidelity,
            degradation_acceleration=self.degradation_acceleration,
            **dict(twin_options or {}),
        )
        self.ratings: PackRatings = self.twin.ratings
        """Static pack ratings, in fleet order (read by the shield)."""
        self.current_limit_c_rate: float | None = (
            None if current_limit_c_rate is None else float(current_limit_c_rate)
        )
        self.pack_limits: tuple[Any, ...] = _build_limits(
            self.ratings, limits, self.current_limit_c_rate
        )
        """Safety limits per pack (:class:`pulsebms.safety.PackLimits`), in fleet order."""

        n = self.ratings.n_packs
        self.n_packs: int = n
        self._rated_w = np.asarray(self.ratings.rated_power_w, dtype=np.float64)
        self.fleet_rated_power_w: float = float(self._rated_w.sum())
        self._capacity_ah = np.asarray(self.ratings.capacity_ah, dtype=np.float64)
        volts = np.asarray(self.twin.nominal_cell_voltage_v, dtype=np.float64)
        self.pack_energy_kwh: FloatArray = (
            self._capacity_ah * np.asarray(self.ratings.series, dtype=np.float64) * volts / 1000.0
        )
        self.pack_names: tuple[str, ...] = tuple(p.name for p in self.packs)
        self.observation_layout: ObservationLayout = fleet_observation_layout(
            self.pack_names,
            self.forecast_steps,
            self.fleet_rated_power_w,
            site_extras=bool(site_observation),
        )
        """The named layout of the flat observation (:mod:`pulsebms.core.observation`)."""
        self.observation_names: tuple[str, ...] = self.observation_layout.names
        low, high = self.observation_layout.low, self.observation_layout.high
        self.observation_space = spaces.Box(
            low.astype(np.float32), high.astype(np.float32), dtype=np.float32
        )
        self.action_space = spaces.Box(-1.0, 1.0, shape=(n,), dtype=np.float32)

        self._series: ScenarioSeries | None = None
        self._k = 0
        self._states: Any = None
        self._request_w = 0.0
        self._terminated = False
        self._last_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ public API
    def fleet_state(self) -> FleetState:
        """The fleet's present state as the shield sees it.

        ``demand_w`` is the fleet's power request (``fleet_request``: net load, or the
        discharge needed for peak shaving); ``valid`` is False for faulted packs.

        Raises:
            RuntimeError: Before the first :meth:`reset`.
        """
        s = self._require_states()
        return FleetState(
            soc=np.asarray(s.soc, dtype=np.float64).copy(),
            soh=np.asarray(s.soh, dtype=np.float64).copy(),
            temperature_c=np.asarray(s.temperature_c, dtype=np.float64).copy(),
            cell_voltage_v=np.asarray(s.cell_voltage_v, dtype=np.float64).copy(),
            current_a=np.asarray(s.current_a, dtype=np.float64).copy(),
            demand_w=float(self._request_w),
            valid=~np.asarray(s.faulted, dtype=bool),
        )

    @property
    def series(self) -> ScenarioSeries:
        """The present episode's scenario series (after :meth:`reset`)."""
        if self._series is None:
            raise RuntimeError("call reset() first")
        return self._series

    @property
    def step_index(self) -> int:
        """Steps taken in the present episode."""
        return self._k

    @property
    def stored_energy_price_eur_per_kwh(self) -> float | None:
        """The present episode's stored-energy price ``c_T`` [EUR/kWh] (``None``: not valued).

        Known at reset (accounting data, like the feed-in price), from ``stored_energy_value``.
        """
        return self._stored_price

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsArray, dict[str, Any]]:
        """Start an episode: new scenario series, packs back to their specs' state.

        Args:
            seed: Seeds the env's generator (``self.np_random``); all randomness of the
                episode comes from it, drawn in this order: the scenario series
                (:func:`~pulsebms.envs.scenarios.build_series`), the randomised initial
                state, then a noisy forecast's errors (one draw: the seed of their child
                generator, :meth:`~pulsebms.envs.scenarios.ScenarioSeries.with_forecast_errors`).
                Nothing is drawn during the episode.
            options: Optional digital-twin synchronisation: ``"soc"``, ``"soh"``,
                ``"temperature_c"`` (one value or one per pack) override the initial state
                after randomisation; ``"randomize_initial_state"`` (bool) overrides the
                constructor's choice for this episode.

        Returns:
            The first observation and an info dict (scenario start, site sizing).

        Raises:
            ValueError: On an unknown option or a wrongly sized value.
        """
        super().reset(seed=seed)
        opts = dict(options or {})
        unknown = sorted(set(opts) - {"soc", "soh", "temperature_c", "randomize_initial_state"})
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}")
        rng = self.np_random
        n_samples = self.horizon_steps + self.forecast_steps + 1
        self._series = build_series(
            self.scenario,
            n_samples=n_samples,
            dt_s=self.dt_s,
            fleet_rated_power_w=self.fleet_rated_power_w,
            rng=rng,
        )
        self._k = 0
        self._terminated = False
        self.twin.reset()
        ambient0 = float(self._series.ambient_c[0])
        temperature = np.array(
            [
                ambient0 if p.initial_temperature_c is None else p.initial_temperature_c
                for p in self.packs
            ]
        )
        soc: FloatArray | None = None
        randomize = bool(opts.get("randomize_initial_state", self.randomize_initial_state))
        if randomize:
            soc = rng.uniform(*self.initial_soc_range, size=self.n_packs)
            jitter = self.temperature_jitter_c
            temperature = ambient0 + rng.uniform(-jitter, jitter, size=self.n_packs)
        if "soc" in opts:
            soc = self._per_pack(opts["soc"], "soc")
        if "temperature_c" in opts:
            temperature = self._per_pack(opts["temperature_c"], "temperature_c")
        soh = self._per_pack(opts["soh"], "soh") if "soh" in opts else None
        self._states = self.twin.set_state(soc=soc, soh=soh, temperature_c=temperature)
        # Last draw of the reset: a seed's day and fleet state are the same whatever the
        # forecast (perfect forecasts draw nothing).
        self._series = self._series.with_forecast_errors(self.forecast_steps, rng)
        self._request_w = self._fleet_request_w(0)
        series = self._series
        self._stored_price = stored_energy_price(
            self.stored_energy_value, series.price_eur_per_kwh[: self.horizon_steps]
        )
        info: dict[str, Any] = {
            "step": 0,
            "time_s": 0.0,
            "start_day": series.start_day,
            "start_hour": series.start_hour,
            "site_peak_load_w": series.site_peak_load_w,
            "grid_import_limit_w": series.grid_import_limit_w,
            "grid_export_limit_w": series.grid_export_limit_w,
            "demand_w": self._request_w,
            "stored_energy_kwh": self._stored_kwh(self._states),
            "stored_energy_price_eur_per_kwh": self._stored_price,
        }
        self._last_info = info
        return self._observation(), info

    def step(self, action: ActArray) -> tuple[ObsArray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Apply per-pack power set-points for one control interval.

        Args:
            action: Set-points / rated power, shape ``(n_packs,)``, + = discharge.

        Returns:
            ``(observation, reward, terminated, truncated, info)``; see the class docstring
            and the module docstring for the reward and the ``info`` keys.

        Raises:
            RuntimeError: If called before :meth:`reset` or after the episode ended.
            ValueError: If the action has the wrong number of elements.
        """
        series = self.series
        if self._terminated or self._k >= self.horizon_steps:
            raise RuntimeError("the episode has ended; call reset()")
        a, nan_count, clipped_count = self._sanitize(action)
        k = self._k
        before = self._require_states()
        setpoint_w = a * self._rated_w
        states = self._twin_step(before, setpoint_w, float(series.ambient_c[k]))
        self._states = states

        faulted = np.asarray(states.faulted, dtype=bool)
        power_w = np.where(faulted, 0.0, np.asarray(states.power_w, dtype=np.float64))
        fleet_w = float(power_w.sum())
        net_w = float(series.net_load_w[k])
        g_imp, g_exp = series.grid_import_limit_w, series.grid_export_limit_w
        grid = grid_exchange(net_w, fleet_w, g_imp, g_exp)
        dt_h = self.dt_s / 3600.0
        price = float(series.price_eur_per_kwh[k])
        feed_in = float(series.feed_in_price_eur_per_kwh)
        energy_cost = energy_cost_eur(price, feed_in, grid.import_w, grid.export_w, dt_h)
        unserved_penalty = self.costs.unserved_penalty_eur(grid.unserved_w, dt_h)
        degradation_cost, soh_loss = self.costs.degradation_cost_eur(
            np.asarray(before.soh, dtype=np.float64),
            np.asarray(states.soh, dtype=np.float64),
            self.pack_energy_kwh,
            self.degradation_acceleration,
        )
        n_faulted = int(faulted.sum())
        self._k = k + 1
        fault_penalty = 0.0
        fault_reason = ""
        if n_faulted:
            self._terminated = True
            remaining_h = max((self.horizon_steps - self._k) * dt_h, 1.0)
            fault_penalty = self.costs.fault_penalty_eur(series.site_peak_load_w, remaining_h)
            fault_reason = "; ".join(
                f"{self.pack_names[i]}: {states.fault_reason[i] or 'fault'}"
                for i in np.flatnonzero(faulted)
            )
        stored_before = self._stored_kwh(before)
        stored_after = self._stored_kwh(states, before)
        stored_cost = (
            0.0
            if self._stored_price is None
            else self._stored_price * (stored_before - stored_after)
        )
        total = energy_cost + degradation_cost + unserved_penalty + fault_penalty + stored_cost
        reward = -total

        self._request_w = self._fleet_request_w(min(self._k, series.n_samples - 1))
        violations = self._violations()
        cost = constraint_cost(violations, n_faulted, self.costs)
        terminated = bool(n_faulted)
        truncated = (not terminated) and self._k >= self.horizon_steps

        info: dict[str, Any] = {
            "step": self._k,
            "time_s": self._k * self.dt_s,
            "hour_of_day": float(series.hour_of_day[k]),
            "load_w": float(series.load_w[k]),
            "pv_w": float(series.pv_w[k]),
            "net_load_w": net_w,
            "price_eur_per_kwh": price,
            "feed_in_price_eur_per_kwh": feed_in,
            "ambient_c": float(series.ambient_c[k]),
            "fleet_setpoint_w": float(setpoint_w.sum()),
            "fleet_power_w": fleet_w,
            "pack_power_w": power_w,
            "pack_current_a": np.asarray(states.current_a, dtype=np.float64).copy(),
            "grid_import_w": grid.import_w,
            "grid_export_w": grid.export_w,
            "unserved_w": grid.unserved_w,
            "curtailed_w": grid.curtailed_w,
            "grid_import_limit_w": g_imp,
            "demand_w": self._request_w,
            "energy_cost_eur": energy_cost,
            "degradation_cost_eur": degradation_cost,
            "unserved_penalty_eur": unserved_penalty,
            "fault_penalty_eur": fault_penalty,
            "stored_energy_cost_eur": stored_cost,
            "stored_energy_kwh": stored_after,
            "total_cost_eur": total,
            "soh_loss": float(soh_loss.sum()),
            "cost": float(cost),
            "violations": tuple(violations),
            "n_violations": len(violations),
            "fault": bool(n_faulted),
            "fault_reason": fault_reason,
            "action_nan_count": nan_count,
            "action_clipped_count": clipped_count,
        }
        self._last_info = info
        return self._observation(), float(reward), terminated, truncated, info

    def render(self) -> str | None:  # type: ignore[override]
        """Text table of the packs and the site (``render_mode="ansi"``), else ``None``."""
        if self.render_mode != "ansi" or self._states is None:
            return None
        s = self._states
        series = self.series
        k = min(self._k, series.n_samples - 1)
        lines = [
            f"step {self._k}/{self.horizon_steps}  t={self._k * self.dt_s / 3600.0:6.2f} h  "
            f"hour {series.hour_of_day[k]:5.2f}  net load {series.net_load_w[k]:9.1f} W  "
            f"price {series.price_eur_per_kwh[k]:.3f} EUR/kWh  "
            f"ambient {series.ambient_c[k]:5.1f} °C",
            f"{'pack':>10} {'chem':>4} {'SoC':>6} {'SoH':>6} {'T[°C]':>6} {'V[V]':>6} "
            f"{'I[A]':>8} {'P[W]':>9} fault",
        ]
        for i, name in enumerate(self.pack_names):
            lines.append(
                f"{name:>10} {self.ratings.chemistry[i]:>4} {s.soc[i]:6.3f} {s.soh[i]:6.4f} "
                f"{s.temperature_c[i]:6.1f} {s.cell_voltage_v[i]:6.3f} {s.current_a[i]:8.2f} "
                f"{s.power_w[i]:9.1f} {s.fault_reason[i] if s.faulted[i] else ''}"
            )
        if "total_cost_eur" in self._last_info:
            info = self._last_info
            lines.append(
                f"grid import {info['grid_import_w']:.1f} W  export {info['grid_export_w']:.1f} W  "
                f"unserved {info['unserved_w']:.1f} W  cost {info['total_cost_eur']:.4f} EUR  "
                f"violations {info['n_violations']}"
            )
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        """Release the twin (safe to call twice)."""
        close = getattr(getattr(self, "twin", None), "close", None)
        if callable(close):
            close()

    # ------------------------------------------------------------------ internals
    def _require_states(self) -> Any:
        if self._states is None:
            raise RuntimeError("call reset() first")
        return self._states

    def _stored_kwh(self, states: Any, fallback: Any = None) -> float:
        """Energy in storage of ``states`` [kWh].

        A pack with a non-finite SoC or SoH counts as in ``fallback`` (the state before the
        step), or as empty without one.
        """
        soc = np.asarray(states.soc, dtype=np.float64)
        soh = np.asarray(states.soh, dtype=np.float64)
        bad = ~(np.isfinite(soc) & np.isfinite(soh))
        if bad.any():
            soc_ok = np.asarray(fallback.soc if fallback is not None else np.zeros_like(soc))
            soh_ok = np.asarray(fallback.soh if fallback is not None else np.zeros_like(soh))
            soc = np.where(bad, np.nan_to_num(soc_ok), soc)
            soh = np.where(bad, np.nan_to_num(soh_ok), soh)
        return stored_energy_kwh(soc, soh, self.pack_energy_kwh)

    def _per_pack(self, value: Any, name: str) -> FloatArray:
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 0:
            return np.full(self.n_packs, float(arr))
        if arr.shape != (self.n_packs,):
            raise ValueError(
                f"reset option {name!r} needs one value or {self.n_packs}, got shape {arr.shape}"
            )
        return arr.copy()

    def _sanitize(self, action: Any) -> tuple[FloatArray, int, int]:
        a = np.array(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.n_packs,):
            raise ValueError(
                f"action must have {self.n_packs} elements (one per pack), "
                f"got shape {np.shape(action)}"
            )
        nan = np.isnan(a)
        a[nan] = 0.0
        outside = (a < -1.0) | (a > 1.0)
        return np.clip(a, -1.0, 1.0), int(nan.sum()), int(outside.sum())

    def _twin_step(self, before: Any, setpoint_w: FloatArray, ambient_c: float) -> Any:
        """Step the twin; an exception or a non-finite state becomes a fault, never a raise."""
        try:
            states = self.twin.step(setpoint_w, self.dt_s, ambient_c)
        except Exception as exc:  # a twin bug or solver crash must not crash training
            reason = f"twin error: {type(exc).__name__}: {exc}"
            n = self.n_packs
            return PackStates(
                soc=np.asarray(before.soc, dtype=np.float64).copy(),
                soh=np.asarray(before.soh, dtype=np.float64).copy(),
                cell_voltage_v=np.asarray(before.cell_voltage_v, dtype=np.float64).copy(),
                pack_voltage_v=np.asarray(before.pack_voltage_v, dtype=np.float64).copy(),
                current_a=np.zeros(n),
                power_w=np.zeros(n),
                temperature_c=np.asarray(before.temperature_c, dtype=np.float64).copy(),
                faulted=np.ones(n, dtype=bool),
                fault_reason=(reason,) * n,
            )
        fields = (states.soc, states.soh, states.cell_voltage_v, states.temperature_c)
        finite = np.logical_and.reduce(
            [np.isfinite(np.asarray(f, dtype=np.float64)) for f in fields]
        )
        if finite.all():
            return states
        faulted = np.asarray(states.faulted, dtype=bool) | ~finite
        reasons = tuple(
            r or ("non-finite state" if not finite[i] else "")
            for i, r in enumerate(states.fault_reason)
        )
        return dataclasses.replace(states, faulted=faulted, fault_reason=reasons)

    def _fleet_request_w(self, k: int) -> float:
        series = self.series
        net = float(series.net_load_w[k])
        if self.fleet_request == "peak_shaving":
            return max(net - float(series.grid_import_limit_w), 0.0)
        return net

    def _violations(self) -> list[Any]:
        if not self.pack_limits:
            return []
        from pulsebms.safety import check_violations

        return list(check_violations(self.fleet_state(), self.ratings, self.pack_limits))

    def _observation(self) -> ObsArray:
        s = self._require_states()
        series = self.series
        k = min(self._k, series.n_samples - 1)
        fc_net, fc_price = series.forecast_at(k, self.forecast_steps)
        inputs = ObservationInputs.from_readings(
            s,
            capacity_ah=self._capacity_ah,
            demand_w=float(series.net_load_w[k]),
            price_per_kwh=float(series.price_eur_per_kwh[k]),
            ambient_c=float(series.ambient_c[k]),
            hour_of_day=float(series.hour_of_day[k]),
            demand_forecast_w=fc_net,
            price_forecast_per_kwh=fc_price,
        )
        inputs = dataclasses.replace(
            inputs,
            grid_import_limit_w=float(series.grid_import_limit_w),
            grid_export_limit_w=float(series.grid_export_limit_w),
            feed_in_price_per_kwh=float(series.feed_in_price_eur_per_kwh),
        )
        return build_observation(self.observation_layout, inputs)


def _build_limits(
    ratings: PackRatings, limits: Mapping[str, Any] | None, current_limit_c_rate: float | None
) -> tuple[Any, ...]:
    """Per-pack safety limits: defaults, pack-scaled current limits, then the overrides.

    The defaults are :func:`pulsebms.safety.default_limits`; the current limits scale with
    the pack's capacity (``current_limit_c_rate``, see :class:`FleetEnv`) unless given.
    """
    from pulsebms.safety import default_limits

    overrides = dict(limits or {})
    per_chem: dict[str, Mapping[str, Any]] = {}
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            try:
                per_chem[get_chemistry(key).name] = value
            except ValueError as exc:
                raise ValueError(f"limits[{key!r}]: {exc}") from exc
    common = {k: v for k, v in overrides.items() if not isinstance(v, Mapping)}
    capacity_ah = np.asarray(ratings.capacity_ah, dtype=np.float64)  # pack, at SoH 1
    out = []
    for i, chem in enumerate(ratings.chemistry):
        kwargs = {**common, **dict(per_chem.get(chem.upper(), {}))}
        try:
            lim = default_limits(chem, **kwargs)
            if current_limit_c_rate is not None:
                rate = max(current_limit_c_rate, lim.c_rate_max)
                scaled = {
                    "current_max_a": rate * float(capacity_ah[i]),
                    "current_min_a": -rate * float(capacity_ah[i]),
                }
                scaled = {k: v for k, v in scaled.items() if k not in kwargs}
                if scaled:
                    lim = default_limits(chem, **{**kwargs, **scaled})
            out.append(lim)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"limits ({chem}): {exc}") from exc
    return tuple(out)
