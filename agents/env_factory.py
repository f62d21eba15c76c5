"""Build the environments agents train and are evaluated on (FleetEnv + the shield in the loop)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym

from pulsebms.core.types import FleetEnvLike, as_fleet_env

__all__ = ["EnvFactory", "fleet_env", "make_env", "make_env_factory"]

EnvFactory = Callable[[], gym.Env[Any, Any]]
"""A zero-argument callable returning a fresh environment (what SB3's VecEnvs take)."""


def make_env(
    env_id: str = "PulseBMS/FleetSmall-v0",
    *,
    shield: bool = True,
    shield_kwargs: Mapping[str, Any] | None = None,
    **env_kwargs: Any,
) -> gym.Env[Any, Any]:
    """Make a registered PulseBMS environment, with the constraint shield in front of it.

    Args:
        env_id: Registered id (``PulseBMS/FleetSmall-v0``, ``PulseBMS/Fleet-v0``, ...).
        shield: Wrap in :class:`pulsebms.safety.ShieldWrapper` (the default: agents never
            act on the plant unshielded).
        shield_kwargs: Keyword arguments of the wrapper (limits overrides, ...).
        **env_kwargs: Constructor arguments of the env in plain data (``fleet``,
            ``scenario``, ``dt_s``, ``horizon_steps``, ``fidelity``, ...).

    Returns:
        The environment.

    Example:
        >>> env = make_env("PulseBMS/FleetSmall-v0", fidelity="ecm")  # doctest: +SKIP
    """
    import pulsebms.envs  # noqa: F401  (registers the ids)

    env = gym.make(env_id, **env_kwargs)
    if shield:
        from pulsebms.safety import ShieldWrapper

        env = ShieldWrapper(env, **dict(shield_kwargs or {}))
    return env


def make_env_factory(
    env_id: str = "PulseBMS/FleetSmall-v0",
    *,
    shield: bool = True,
    shield_kwargs: Mapping[str, Any] | None = None,
    **env_kwargs: Any,
) -> EnvFactory:
    """A picklable-enough closure over :func:`make_env` (for SB3 vectorised envs).

    Args:
        env_id: See :func:`make_env`.
        shield: See :func:`make_env`.
        shield_kwargs: See :func:`make_env`.
        **env_kwargs: See :func:`make_env`.

    Returns:
        A zero-argument factory.
    """

    def factory() -> gym.Env[Any, Any]:
        return make_env(env_id, shield=shield, shield_kwargs=shield_kwargs, **env_kwargs)

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
