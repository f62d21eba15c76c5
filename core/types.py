"""Shared array aliases and protocols (numpy only).

Every module that names an array type imports it from here, so there is one meaning of
``FloatArray`` in the whole package (the habit of SB3's ``type_aliases.py``).
The :class:`FleetEnvLike` protocol is what library code reads from an environment (the
shield wrapper, the agents, the exporter): a :class:`pulsebms.envs.FleetEnv` satisfies it,
and so does any stand-in that exposes the same attributes.

Example:
    >>> import numpy as np
    >>> from pulsebms.core.types import FloatArray
    >>> x: FloatArray = np.zeros(3)
    >>> x.dtype
    dtype('float64')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:  # annotations only: pulsebms.core imports nothing of the package at run time
    from pulsebms.core.observation import ObservationLayout
    from pulsebms.safety.limits import PackLimits
    from pulsebms.safety.state import FleetState, PackRatings

__all__ = [
    "ActArray",
    "AnyArray",
    "BoolArray",
    "FleetEnvLike",
    "FloatArray",
    "IntArray",
    "ObsArray",
    "PackReadings",
    "as_fleet_env",
]

FloatArray = NDArray[np.float64]
"""A float64 array: physical quantities (units in the variable's name)."""
IntArray = NDArray[np.int64]
"""An int64 array: counts and indices."""
BoolArray = NDArray[np.bool_]
"""A boolean mask, one entry per pack unless said."""
ObsArray = NDArray[np.float32]
"""A flat observation, float32, in the layout of
:class:`~pulsebms.core.observation.ObservationLayout`."""
ActArray = NDArray[np.float32]
"""A flat action: per-pack power set-point / rated pack power, + = discharge."""
AnyArray = NDArray[Any]
"""An array of any dtype (inputs that are converted on entry)."""


class PackReadings(Protocol):
    """Per-pack measurements, one entry per pack in fleet order (arrays or sequences).

    The twin's ``PackStates`` and the shield's ``FleetState`` both satisfy it; it is what an
    observation reads of the packs.

    """

    @property
    def soc(self) -> AnyArray:
        """State of charge, fraction."""
        ...

    @property
    def soh(self) -> AnyArray:
        """State of health, fraction."""
        ...

    @property
    def temperature_c(self) -> AnyArray:
        """Pack temperature [°C]."""
        ...

    @property
    def cell_voltage_v(self) -> AnyArray:
        """Cell terminal voltage [V]."""
        ...

    @property
    def current_a(self) -> AnyArray:
        """Pack current [A], + = discharge."""
        ...


@runtime_checkable
class FleetEnvLike(Protocol):
    """What library code reads from a fleet environment (unwrapped).

    Attributes:
        ratings: Static pack ratings, in fleet order.
        dt_s: Control interval [s].
        pack_limits: Safety limits per pack, in fleet order.
        observation_layout: The named layout of the flat observation.
    """

    ratings: PackRatings
    dt_s: float
    pack_limits: Sequence[PackLimits]
    observation_layout: ObservationLayout

    def fleet_state(self) -> FleetState:
        """The fleet's present state as the shield sees it."""
        ...


@runtime_checkable
class _Wrapped(Protocol):
    """A Gymnasium wrapper (or env): ``unwrapped`` is the innermost env."""

    @property
    def unwrapped(self) -> object:
        """The innermost environment."""
        ...


def as_fleet_env(env: object) -> FleetEnvLike:
    """The env below every wrapper, checked to be a :class:`FleetEnvLike`.

    The one typed way library code reads an environment (no ``Any``/``getattr`` reads).

    Args:
        env: A fleet env, possibly wrapped (``env.unwrapped`` is used when present).

    Returns:
        The innermost env, typed as :class:`FleetEnvLike`.

    Raises:
        TypeError: If it lacks ``ratings``, ``dt_s``, ``pack_limits``,
            ``observation_layout`` or ``fleet_state()``.

    Example:
        >>> as_fleet_env(object())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: object is not a fleet environment: ...
    """
    base = env.unwrapped if isinstance(env, _Wrapped) else env
    if not isinstance(base, FleetEnvLike):
        raise TypeError(
            f"{type(base).__name__} is not a fleet environment: it needs ratings, dt_s, "
            "pack_limits, observation_layout and fleet_state() (pulsebms.core.types.FleetEnvLike)"
        )
    return base
