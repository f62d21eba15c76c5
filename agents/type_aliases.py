"""Shared type aliases, containers and protocols of :mod:`pulsebms.agents`.

The array aliases are those of :mod:`pulsebms.core.types` (re-exported here, one meaning in
the whole package); the protocols are the agents' own.

Everything that acts on a fleet (an SB3 model, an ONNX session, the MPC, a rule) satisfies
:class:`Policy`; the evaluation harness only ever sees that protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pulsebms.core.types import ActArray, AnyArray, BoolArray, FloatArray, IntArray, ObsArray

__all__ = [
    "ActArray",
    "AnyArray",
    "BoolArray",
    "FloatArray",
    "IntArray",
    "ObsArray",
    "Policy",
    "ResettablePolicy",
]


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
