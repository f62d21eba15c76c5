"""Build the environments agents train and are evaluated on (FleetEnv + the shield in the loop)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym

from pulsebms.core.types import FleetEnvLike, as_fleet_env

__all__ = ["EnvFactory", "fleet_env", "make_env", "make_env_factory", "route_limits"]

EnvFactory = Callable[[], gym.Env[Any, Any]]
"""A zero-argument callable returning a fresh environment (what SB3's VecEnvs take)."""


def make_env(
    env_id: str = "PulseBMS/FleetSmall-v0",
    *,
    shield: bool = True,
    shield_kwargs: Mapping[str, Any] | None = None,
    decision_s: float | None = None,
    hold_mode: str = "action",
    **env_kwargs: Any,
) -> gym.Env[Any, Any]:
    """Make a registered PulseBMS environment, with the constraint shield in front of it.

    Args:
        env_id: Registered id (``PulseBMS/FleetSmall-v0``, ``PulseBMS/Fleet-v0``, ...).
        shield: Wrap in :class:`pulsebms.safety.ShieldWrapper` (the default: agents never
            act on the plant unshielded).
        shield_kwargs: Keyword arguments of the wrapper (limits overrides, ...). A mapping
            ``limits`` (``shield.limits`` of the configs) is routed into the env's own
            ``limits`` (:func:`route_limits`), so the env's ``pack_limits`` — what the
            rules, the MPC, the shield and the env's violation count all read — are one
            set; it applies with ``shield=False`` too. A sequence of
            :class:`~pulsebms.safety.PackLimits` still goes to the wrapper only.
        decision_s: The agent's decision interval [s]: wrap the (shielded) env in
            :class:`pulsebms.envs.decision.DecisionIntervalWrapper`, so each action is held
            for ``decision_s / dt_s`` plant steps, the shield projecting it at every one
            (``agent → decision → shield → env``). ``None``: act every ``dt_s``.
        hold_mode: What is held between decisions (:mod:`pulsebms.envs.hold`): ``action``
            (default) the set-points, ``grid`` the decision's grid exchange, ``import_cap``
            the set-points raised to cover imports above the site's limit.
        **env_kwargs: Constructor arguments of the env in plain data (``fleet``,
            ``scenario``, ``dt_s``, ``horizon_steps``, ``fidelity``, ...).

    Returns:
        The environment.

    Raises:
        ValueError: If ``decision_s`` is not a whole multiple of the env's ``dt_s``, or on
            an unknown ``hold_mode``.

    Example:
        >>> env = make_env("PulseBMS/FleetSmall-v0", dt_s=300.0, decision_s=900.0)
        >>> env.substeps
        3
        >>> env.close()
    """
    import pulsebms.envs  # noqa: F401  (registers the ids)
    from pulsebms.envs.decision import with_decision_interval

    wrapper_kwargs, env_kwargs = route_limits(shield_kwargs, env_kwargs)
    env = gym.make(env_id, **env_kwargs)
    if shield:
        from pulsebms.safety import ShieldWrapper

        env = ShieldWrapper(env, **wrapper_kwargs)
    return with_decision_interval(env, decision_s, hold_mode)


def route_limits(
    shield_kwargs: Mapping[str, Any] | None, env_kwargs: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Move the wrapper's limit overrides into the env's ``limits`` (one set of limits).

    The wrapper applies a mapping of :class:`~pulsebms.safety.PackLimits` fields to every
    pack; the env's ``limits`` takes common keys and ``chemistry → dict`` entries (the
    latter win there). So the wrapper's keys are merged into the common part *and* into
    every per-chemistry entry: every pack ends with the same values as the wrapper alone
    gave before, and now the env (its violation check), the rules and the MPC see them.

    Args:
        shield_kwargs: The wrapper's keyword arguments (``limits`` among them, or not).
        env_kwargs: The env's constructor arguments.

    Returns:
        ``(wrapper_kwargs, env_kwargs)``, new dicts; the inputs are not changed.

    Example:
        >>> w, e = route_limits({"limits": {"soc_max": 0.9}}, {"limits": {"LFP": {"soc_max": 0.8}}})
        >>> w, e["limits"]
        ({}, {'LFP': {'soc_max': 0.9}, 'soc_max': 0.9})
    """
    wrapper = dict(shield_kwargs or {})
    env = dict(env_kwargs)
    overrides = wrapper.get("limits")
    if not isinstance(overrides, Mapping):
        return wrapper, env
    wrapper.pop("limits")
    if not overrides:
        return wrapper, env
    merged: dict[str, Any] = {}
    for key, value in dict(env.get("limits") or {}).items():
        merged[key] = {**value, **overrides} if isinstance(value, Mapping) else value
    merged.update(overrides)
    env["limits"] = merged
    return wrapper, env


def make_env_factory(
    env_id: str = "PulseBMS/FleetSmall-v0",
    *,
    shield: bool = True,
    shield_kwargs: Mapping[str, Any] | None = None,
    decision_s: float | None = None,
    hold_mode: str = "action",
    **env_kwargs: Any,
) -> EnvFactory:
    """A picklable-enough closure over :func:`make_env` (for SB3 vectorised envs).

    Args:
        env_id: See :func:`make_env`.
        shield: See :func:`make_env`.
        shield_kwargs: See :func:`make_env`.
        decision_s: See :func:`make_env`.
        hold_mode: See :func:`make_env`.
        **env_kwargs: See :func:`make_env`.

    Returns:
        A zero-argument factory.
    """

    def factory() -> gym.Env[Any, Any]:
        return make_env(
            env_id,
            shield=shield,
            shield_kwargs=shield_kwargs,
            decision_s=decision_s,
            hold_mode=hold_mode,
            **env_kwargs,
        )

    return factory


def fleet_env(env: gym.Env[Any, Any]) -> FleetEnvLike:
    """The fleet env below every wrapper (:func:`pulsebms.core.types.as_fleet_env`).

    Args:
        env: A FleetEnv, possibly wrapped (the shield wrapper, ``TimeLimit``, ...).

    Returns:
        ``env.unwrapped``, checked to satisfy :class:`pulsebms.core.types.FleetEnvLike`.

    Raises:
        TypeError: If the unwrapped env lacks ``ratings``, ``dt_s``, ``pack_limits``,
            ``observation_layout`` or ``fleet_state()``.

    Example:
        >>> env = make_env("PulseBMS/FleetSmall-v0", horizon_steps=4)
        >>> fleet_env(env).dt_s
        300.0
        >>> env.close()
    """
    return as_fleet_env(env)
