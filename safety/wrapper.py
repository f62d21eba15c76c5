"""``ShieldWrapper``: the constraint shield in front of a fleet environment (Gymnasium).

Shaped like Gymnasium's ``ClipAction`` (an ``ActionWrapper`` recording its constructor
arguments): every action passes through :meth:`pulsebms.safety.shield.Shield.project`
before the environment steps. It reads from ``env.unwrapped``:

* ``ratings`` (:class:`~pulsebms.safety.state.PackRatings`), ``dt_s`` (float) and
  ``pack_limits`` (tuple of :class:`~pulsebms.safety.limits.PackLimits`) once, at
  construction;
* ``fleet_state()`` (:class:`~pulsebms.safety.state.FleetState`) before every step.

After every step it adds to ``info``:

* ``info["shield"]``: ``intervened`` (number of packs changed), ``magnitude`` (L1 norm of
  the change, normalised units, against the request with NaN read as 0), ``reasons``
  (per pack, the limits behind the change), ``status`` (``ShieldStatus`` name, e.g.
  ``"PROJECTED|SHORTFALL"``), ``shortfall_w``, ``fallback`` (packs in controlled
  shutdown), ``requested`` and ``applied`` (the actions);
* ``info["cost_pre_shield"]``: the violation cost (:func:`~pulsebms.safety.violation_cost`)
  the **unshielded** action would have caused according to the shield's one-step cell
  model (:meth:`~pulsebms.safety.shield.Shield.predict`), for constrained (CMDP) methods;
  ``info["cost"]`` stays the environment's measured cost.

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
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from pulsebms.safety.cell_model import CellModel
from pulsebms.safety.limits import PackLimits, check_violations, violation_cost
from pulsebms.safety.shield import Shield, ShieldResult
from pulsebms.safety.state import FleetState, PackRatings

__all__ = ["ShieldWrapper", "cast_toward_zero"]

FloatArray = NDArray[np.float64]


def cast_toward_zero(values: FloatArray, dtype: np.dtype[Any]) -> NDArray[Any]:
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


class ShieldWrapper(
    gym.ActionWrapper[Any, NDArray[Any], NDArray[Any]], gym.utils.RecordConstructorArgs
):
    """Projects every action onto the safe set before the environment steps.

    Args:
        env: A fleet environment whose ``unwrapped`` provides ``ratings``, ``dt_s``,
            ``pack_limits`` and ``fleet_state()``.
        limits: ``None``: the env's ``pack_limits``; a mapping: overrides of
            :class:`PackLimits` fields applied to every pack's env limits (e.g.
            ``{"soc_max": 0.9}``); a sequence: one :class:`PackLimits` per pack.
        track_demand: Aim at the fleet request ``fleet_state().demand_w`` instead of the
            policy's own total (demand-tracking mode).
        derating_band_c: See :class:`~pulsebms.safety.shield.Shield`.
        resistance_duration_s: See :class:`~pulsebms.safety.shield.Shield`.
        voltage_margin_v: See :class:`~pulsebms.safety.shield.Shield`.
        soc_margin: See :class:`~pulsebms.safety.shield.Shield`.
        current_margin: See :class:`~pulsebms.safety.shield.Shield`.
        cell_model: See :class:`~pulsebms.safety.shield.Shield`.

    Raises:
        AttributeError: If ``env.unwrapped`` lacks one of the attributes above.
        ValueError: If the action space is not a 1-D ``Box`` with one entry per pack.
    """

    def __init__(
        self,
        env: gym.Env[Any, NDArray[Any]],
        *,
        limits: Mapping[str, float] | Sequence[PackLimits] | None = None,
        track_demand: bool = False,
        derating_band_c: float = 5.0,
        resistance_duration_s: float | None = None,
        voltage_margin_v: float = 0.005,
        soc_margin: float = 5e-3,
        current_margin: float = 0.03,
        cell_model: CellModel | None = None,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self,
            limits=limits,
            track_demand=track_demand,
            derating_band_c=derating_band_c,
            resistance_duration_s=resistance_duration_s,
            voltage_margin_v=voltage_margin_v,
            soc_margin=soc_margin,
            current_margin=current_margin,
        )
        gym.ActionWrapper.__init__(self, env)
        base = env.unwrapped
        ratings: PackRatings = base.ratings  # type: ignore[attr-defined]  # FleetEnv contract
        dt_s = float(base.dt_s)  # type: ignore[attr-defined]  # FleetEnv contract
        env_limits: tuple[PackLimits, ...] = tuple(base.pack_limits)  # type: ignore[attr-defined]  # FleetEnv contract
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
        self.shield = Shield(
            ratings,
            pack_limits,
            dt_s,
            cell_model=cell_model,
            derating_band_c=derating_band_c,
            resistance_duration_s=resistance_duration_s,
            voltage_margin_v=voltage_margin_v,
            soc_margin=soc_margin,
            current_margin=current_margin,
        )
        self.track_demand = bool(track_demand)
        self.last_result: ShieldResult | None = None
        """The shield's result for the last action (None before the first step)."""
        self._last_state: FleetState | None = None
        self._last_request: FloatArray | None = None

    def action(self, action: NDArray[Any]) -> NDArray[Any]:
        """Project ``action`` for the environment's present state.

        Args:
            action: The policy's normalised set-points.

        Returns:
            The admissible action, in the action space's dtype.
        """
        state: FleetState = self.env.unwrapped.fleet_state()  # type: ignore[attr-defined]  # FleetEnv contract
        request = np.asarray(action, dtype=np.float64).reshape(-1)
        target = float(state.demand_w) if self.track_demand else None
        result = self.shield.project(state, request, target)
        self.last_result = result
        self._last_state = state
        self._last_request = request
        return cast_toward_zero(result.action, self._dtype)

    def step(self, action: NDArray[Any]) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
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

    def _report(self, applied: NDArray[Any]) -> dict[str, Any]:
        result, state, request = self.last_result, self._last_state, self._last_request
        if result is None or state is None or request is None:  # pragma: no cover - set by action()
            return {}
        sanitised = np.nan_to_num(request, nan=0.0, posinf=1.0, neginf=-1.0)
        magnitude = float(np.sum(np.abs(sanitised - result.action)))
        predicted = self.shield.predict(state, request)
        pre = violation_cost(check_violations(predicted, self.shield.ratings, self.shield.limits))
        return {
            "shield": {
                "intervened": int(np.count_nonzero(result.intervened)),
                "magnitude": magnitude,
                "reasons": result.reasons,
                "status": result.status.name or "OK",
                "shortfall_w": result.shortfall_w,
                "fallback": int(np.count_nonzero(result.fallback)),
                "requested": request.copy(),
                "applied": np.asarray(applied, dtype=np.float64),
            },
            "cost_pre_shield": pre,
        }
