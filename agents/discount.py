"""Discount factors from horizons stated in hours (the same look-ahead at any step length).

An agent with discount γ looks about ``1 / (1 − γ)`` of its steps ahead. Stating that
horizon in hours and converting with the agent's step (the env's ``dt_s`` or the decision
interval, :func:`pulsebms.envs.decision.agent_step_s`) keeps it the same time at 60 s and
at 900 s steps::

    γ = 1 − step_h / horizon_h          (effective horizon 1/(1−γ) = horizon_h / step_h steps)

Example:
    >>> gamma_from_horizon(24.0, 900.0)   # 96 steps of 15 min
    0.9895833333333334
    >>> round(1.0 / (1.0 - gamma_from_horizon(24.0, 60.0)))   # 1440 steps of 1 min
    1440
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol, TypeVar

__all__ = ["HasGammaHorizon", "gamma_from_horizon", "resolve_gamma"]


def gamma_from_horizon(horizon_h: float, step_s: float) -> float:
    """Discount whose effective horizon ``1/(1−γ)`` is ``horizon_h`` hours of ``step_s`` steps.

    Args:
        horizon_h: Effective horizon [h]; longer than one step.
        step_s: The agent's step [s].

    Returns:
        γ in (0, 1).

    Raises:
        ValueError: If either is not finite and positive, or the horizon is not longer
            than one step.
    """
    for name, value in (("horizon_h", horizon_h), ("step_s", step_s)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    steps = horizon_h * 3600.0 / step_s
    if steps <= 1.0:
        raise ValueError(
            f"gamma horizon {horizon_h} h must be longer than one agent step ({step_s} s)"
        )
    return 1.0 - 1.0 / steps


class HasGammaHorizon(Protocol):
    """A frozen hyperparameter dataclass with ``gamma`` and ``gamma_horizon_h``."""

    @property
    def gamma(self) -> float:
        """Discount per agent step."""
        ...

    @property
    def gamma_horizon_h(self) -> float | None:
        """Effective horizon [h]; when given it replaces ``gamma``."""
        ...


C = TypeVar("C", bound=HasGammaHorizon)


def resolve_gamma(config: C, step_s: float) -> C:
    """``config`` with ``gamma`` from ``gamma_horizon_h`` at ``step_s`` (unchanged if ``None``).

    The returned config keeps ``gamma_horizon_h``; resolving it again gives the same γ.
    """
    if config.gamma_horizon_h is None:
        return config
    gamma = gamma_from_horizon(float(config.gamma_horizon_h), step_s)
    return dataclasses.replace(config, gamma=gamma)  # type: ignore[type-var]
