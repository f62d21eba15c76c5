"""``ShieldWrapper``: the constraint shield in front of a fleet environment (Gymnasium).

Shaped like Gymnasium's ``ClipAction`` (an ``ActionWrapper`` recording its constructor
arguments): every action passes through :meth:`pulsebms.safety.shield.Shield.project`
before the environment steps. It reads from ``env.unwrapped``:

* ``ratings`` (:class:`~pulsebms.safety.state.PackRatings`), ``dt_s`` (float) and
  ``pack_limits`` (tuple of :class:`~pulsebms.safety.limits.PackLimits`) once, at
  construction;
* ``fleet_state()`` (:class:`~pulsebms.safety.state.FleetState`) before every step.

After every step it adds to ``info``:

* ``info["shield"]``: ``intervened`` (number of packs changed by more than the
  tolerance), ``magnitude`` (L1 norm of
  the change, normalised units, against the request with NaN read as 0), ``reasons``
  (per pack, the limits behind the change), ``status`` (``ShieldStatus`` name, e.g.
  ``"PROJECTED|SHORTFALL"``), ``shortfall_w``, ``fallback`` (packs in controlled
  shutdown), ``requested`` and ``applied`` (the actions);
* ``info["cost_pre_shield"]``: the violation cost (:func:`~pulsebms.safety.violation_cost`)
  the **unshielded** action would have caused according to the shield's one-step cell
  model (:meth:`~pulsebms.safety.shield.Shield.predict`), for constrained (CMDP) methods;
  ``info["cost"]`` stays the environment's measured cost. Normalised: each violation
  counts its excess in widths of the limit's window (0.1 = 10 % of the SoC window past
  ``soc_max`` for one step), summed over packs; a per-episode cost limit is a bound on
  the sum of this key over the episode.
* ``info["cost_pre_shield_eur"]``: the same cost priced in the reward's units (EUR):
  each violation's magnitude times its pack's price (``cost_price_eur``; by default the
  pack's replacement value, ``pack_energy_kwh × costs.replacement_cost_eur_per_kwh`` of
  the env, i.e. one window-width of excess for one step is priced as the whole pack).
  A per-episode limit in EUR bounds the episode's sum of this key. Absent when no price
  is known (no ``cost_price_eur`` and an env without those attributes).
* ``info["shield_shortfall_w"]``: target minus applied fleet power [W] (the
  ``shortfall_w`` below; with ``allocation="respect_split"`` the power clipped off).
* ``info["shield_interventions"]``: the pack-steps changed by more than
  :data:`~pulsebms.safety.results.INTERVENTION_TOLERANCE`
  (:func:`~pulsebms.safety.results.count_interventions`: the one way interventions are
  counted); ``info["shield"]["intervened"]`` is the same number.

The action space is left as the environment's (``[-1, 1]`` per pack); requests outside
it are still handled by the shield (clipped, NaN → 0, reported). The applied action is
cast to the action space's dtype rounding **toward zero**, so the cast never leaves the
admissible interval.

This module imports Gymnasium; ``pulsebms.safety`` exposes :class:`ShieldWrapper`
lazily so that the numpy-only core does not.

Example:
    >>> import gymnasium as gym
    >>> import pulsebms.envs  # registers the ids  # doctest: +SKIP
    >>> env = ShieldWrapper(gym.make("PulseBMS/FleetSmall-v0"))  # doctest: +SKIP
    >>> _, info = env.reset(seed=0)  # doctest: +SKIP
    >>> _, _, _, _, info = env.step(env.action_space.sample())  # doctest: +SKIP
    >>> sorted(info["shield"])  # doctest: +SKIP
    ['applied', 'fallback', 'intervened', 'magnitude', 'reasons', 'requested', ...]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, SupportsFloat, Unpack

import gymnasium as gym
import numpy as np

from pulsebms.core.types import AnyArray, FleetEnvLike, FloatArray
from pulsebms.safety.cell_model import CellModel
from pulsebms.safety.limits import PackLimits, check_violations, violation_cost
from pulsebms.safety.results import count_interventions
from pulsebms.safety.settings import ShieldSettings, ShieldSettingsOverrides, merge_settings
from pulsebms.safety.shield import Shield, ShieldResult
from pulsebms.safety.state import FleetState, PackRatings

__all__ = ["ShieldWrapper", "cast_toward_zero"]


def cast_toward_zero(values: FloatArray, dtype: np.dtype[Any]) -> AnyArray:
    """Cast to ``dtype`` rounding toward zero (the magnitude never grows).

    Args:
        values: Float64 values.
        dtype: Target floating dtype (e.g. float32).

    Returns:
        The cast array; each entry has magnitude ≤ the input's.
    """
    cast = values.astype(dtype)
    grew = np.abs(cast.astype(np.float64)) > np.abs(values)
    if grew.any():
        cast[grew] = np.nextafter(cast[grew], np.zeros(1, dtype=dtype))
    return cast


class ShieldWrapper(gym.ActionWrapper[Any, AnyArray, AnyArray], gym.utils.RecordConstructorArgs):
    """Projects every action onto the safe set before the environment steps.

    Args:
        env: A fleet environment whose ``unwrapped`` is a
            :class:`~pulsebms.core.types.FleetEnvLike` (``ratings``, ``dt_s``,
            ``pack_limits``, ``fleet_state()``).
        limits: ``None``: the env's ``pack_limits``; a mapping: overrides of
            :class:`PackLimits` fields applied to every pack's env limits (e.g.
            ``{"soc_max": 0.9}``); a sequence: one :class:`PackLimits` per pack.
        settings: The shield's :class:`~pulsebms.safety.settings.ShieldSettings`, or a
            mapping of them (plain data from a config: unknown keys raise ValueError);
            the defaults when None. ``settings.track_demand`` makes the wrapper aim at
            the fleet request ``fleet_state().demand_w`` instead of the policy's own
            total (demand-tracking mode).
        cell_model: See :class:`~pulsebms.safety.shield.Shield`.
        cost_price_eur: Price of one unit of ``info["cost_pre_shield"]`` [EUR] for
            ``info["cost_pre_shield_eur"]``: one number for every pack, or None for each
            pack's replacement value read from the env (``pack_energy_kwh`` [kWh] ×
            ``costs.replacement_cost_eur_per_kwh``; no EUR key if the env has neither).
        **overrides: :class:`~pulsebms.safety.settings.ShieldSettings` fields as keywords
            (``track_demand``, ``derating_band_c``, ``resistance_duration_s``,
            ``voltage_margin_v``, ``soc_margin``, ``current_margin``); they override
            the matching fields of ``settings``.

    Raises:
        TypeError: If ``env.unwrapped`` is not a :class:`~pulsebms.core.types.FleetEnvLike`,
            or on a keyword that is not a setting.
        ValueError: If the action space is not a 1-D ``Box`` with one entry per pack, on
            invalid settings, or on a negative or non-finite ``cost_price_eur``.
    """

    def __init__(
        self,
        env: gym.Env[Any, AnyArray],
        *,
        limits: Mapping[str, float] | Sequence[PackLimits] | None = None,
        settings: ShieldSettings | Mapping[str, Any] | None = None,
        cell_model: CellModel | None = None,
        cost_price_eur: float | None = None,
        **overrides: Unpack[ShieldSettingsOverrides],
    ) -> None:
        resolved = merge_settings(settings, overrides, caller="ShieldWrapper")
        gym.utils.RecordConstructorArgs.__init__(
            self, limits=limits, settings=resolved.to_dict(), cost_price_eur=cost_price_eur
        )
        gym.ActionWrapper.__init__(self, env)
        base = env.unwrapped
        if not isinstance(base, FleetEnvLike):
            raise TypeError(
                f"ShieldWrapper needs an env whose unwrapped is a FleetEnvLike (ratings, dt_s, "
                f"pack_limits, observation_layout, fleet_state()), got {type(base).__name__}"
            )
        self._fleet: FleetEnvLike = base
        ratings: PackRatings = base.ratings
        dt_s = float(base.dt_s)
        env_limits: tuple[PackLimits, ...] = tuple(base.pack_limits)
        if limits is None:
            pack_limits = env_limits
        elif isinstance(limits, Mapping):
            pack_limits = tuple(dataclasses.replace(lim, **limits) for lim in env_limits)
        else:
            pack_limits = tuple(limits)
        space = env.action_space
        if not (isinstance(space, gym.spaces.Box) and space.shape == (ratings.n_packs,)):
            raise ValueError(
                f"ShieldWrapper needs a Box action space of shape ({ratings.n_packs},), got {space}"
            )
        self._dtype: np.dtype[Any] = np.dtype(space.dtype)
        self.shield = Shield(ratings, pack_limits, dt_s, settings=resolved, cell_model=cell_model)
        self.settings = resolved
        """The shield's settings (``track_demand`` included)."""
        self.track_demand = resolved.track_demand
        self.last_result: ShieldResult | None = None
        """The shield's result for the last action (None before the first step)."""
        self.cost_price_eur: FloatArray | None = _cost_prices(base, ratings.n_packs, cost_price_eur)
        """Per pack, EUR per unit of pre-shield cost (None: no ``cost_pre_shield_eur``)."""
        self._last_state: FleetState | None = None
        self._last_request: FloatArray | None = None

    def action(self, action: AnyArray) -> AnyArray:
        """Project ``action`` for the environment's present state.

        Args:
            action: The policy's normalised set-points.

        Returns:
            The admissible action, in the action space's dtype.
        """
        state = self._fleet.fleet_state()
        request = np.asarray(action, dtype=np.float64).reshape(-1)
        target = float(state.demand_w) if self.track_demand else None
        result = self.shield.project(state, request, target)
        self.last_result = result
        self._last_state = state
        self._last_request = request
        return cast_toward_zero(result.action, self._dtype)

    def step(self, action: AnyArray) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Shield the action, step the environment and report the intervention in ``info``.

        Args:
            action: The policy's normalised set-points.

        Returns:
            The environment's ``(obs, reward, terminated, truncated, info)``, with
            ``info["shield"]`` and ``info["cost_pre_shield"]`` added.
        """
        applied = self.action(action)
        obs, reward, terminated, truncated, info = self.env.step(applied)
        info = dict(info)
        info.update(self._report(applied))
        return obs, reward, terminated, truncated, info

    def _report(self, applied: AnyArray) -> dict[str, Any]:
        result, state, request = self.last_result, self._last_state, self._last_request
        if result is None or state is None or request is None:  # pragma: no cover - set by action()
            return {}
        sanitised = np.nan_to_num(request, nan=0.0, posinf=1.0, neginf=-1.0)
        magnitude = float(np.sum(np.abs(sanitised - result.action)))
        predicted = self.shield.predict(state, request)
        violations = check_violations(predicted, self.shield.ratings, self.shield.limits)
        pre = violation_cost(violations)
        interventions = count_interventions(request, result.action)
        extra: dict[str, Any] = {}
        prices = self.cost_price_eur
        if prices is not None:
            extra["cost_pre_shield_eur"] = float(
                sum(v.magnitude * float(prices[v.pack]) for v in violations)
            )
        return {
            "shield": {
                "intervened": interventions,
                "magnitude": magnitude,
                "reasons": result.reasons,
                "status": result.status.name or "OK",
                "shortfall_w": result.shortfall_w,
                "fallback": int(np.count_nonzero(result.fallback)),
                "requested": request.copy(),
                "applied": np.asarray(applied, dtype=np.float64),
            },
            "cost_pre_shield": pre,
            **extra,
            "shield_shortfall_w": result.shortfall_w,
            "shield_interventions": interventions,
        }


def _cost_prices(base: object, n_packs: int, price_eur: float | None) -> FloatArray | None:
    """Per-pack EUR per unit of pre-shield cost (see :class:`ShieldWrapper`)."""
    if price_eur is not None:
        value = float(price_eur)
        if not (np.isfinite(value) and value >= 0.0):
            raise ValueError(f"cost_price_eur must be finite and >= 0, got {price_eur!r}")
        return np.full(n_packs, value)
    energy = getattr(base, "pack_energy_kwh", None)
    per_kwh = getattr(getattr(base, "costs", None), "replacement_cost_eur_per_kwh", None)
    if energy is None or per_kwh is None:
        return None
    prices = np.asarray(energy, dtype=np.float64).reshape(-1) * float(per_kwh)
    if prices.shape != (n_packs,) or not np.all(np.isfinite(prices) & (prices >= 0.0)):
        return None
    return prices
