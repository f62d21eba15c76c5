"""Shared type aliases, containers and protocols of :mod:`pulsebms.agents`.

Everything that acts on a fleet (an SB3 model, an ONNX session, the MPC, a rule) satisfies
:class:`Policy`; the evaluation harness only ever sees that protocol.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ActArray",
    "FloatArray",
    "ObsArray",
    "Policy",
    "ResettablePolicy",
]

ObsArray = NDArray[np.floating[Any]]
"""A flat observation of :class:`pulsebms.envs.FleetEnv` (one row, not batched)."""
ActArray = NDArray[np.float32]
"""A flat action: per-pack power set-point normalised by rated power, + = discharge."""
FloatArray = NDArray[np.float64]
"""A float64 array (physical quantities, units in the variable name)."""


@runtime_checkable
class Policy(Protocol):
    """Anything that maps one observation to one action.

    The action is the env's action: per-pack power set-point normalised by the pack's rated
    power, in ``[-1, 1]``, positive = discharge. Policies never see the shield; the
    environment wrapper (:class:`pulsebms.safety.ShieldWrapper`) projects what they return.

    Example:
        >>> import numpy as np
        >>> class Idle:
        ...     def act(self, observation):
        ...         return np.zeros(2, dtype=np.float32)
        >>> isinstance(Idle(), Policy)
        True
    """

    def act(self, observation: ObsArray) -> ActArray:
        """Return the action for one (unbatched) observation."""
        ...


@runtime_checkable
class ResettablePolicy(Policy, Protocol):
    """A :class:`Policy` with internal state (a warm start, a filter) cleared per episode."""

    def reset(self) -> None:
        """Forget any state carried between steps; called at the start of every episode."""
        ...
