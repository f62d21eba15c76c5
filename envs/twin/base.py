"""The fleet-twin interface every fidelity implements (physics or equivalent circuit).

A twin advances every pack of a fleet by ``dt_s`` in one call. Positive current and power
mean discharge. A set-point the solver cannot follow never raises: the pack is marked
``faulted`` with a reason, its state is frozen, and the caller (``FleetEnv``) decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pulsebms.core.types import BoolArray, FloatArray
from pulsebms.envs.pack import PackSpec
from pulsebms.safety.state import PackRatings

__all__ = ["FleetTwin", "PackStates"]


@dataclass(frozen=True)
class PackStates:
    """State of every pack after a step (arrays of shape ``(n_packs,)``).

    Attributes:
        soc: State of charge, fraction of the present (faded) capacity.
        soh: State of health, remaining / nominal capacity.
        cell_voltage_v: Terminal voltage of one cell [V].
        pack_voltage_v: Terminal voltage of the pack (series × cell) [V].
        current_a: Pack current over the last step [A], + = discharge.
        power_w: Pack power over the last step [W], + = discharge.
        temperature_c: Lumped cell temperature [°C].
        faulted: True where the pack could not follow its set-point.
        fault_reason: Per pack, ``""`` when healthy, else a short reason
            (``"voltage cut-off"``, ``"solver failure: ..."``, ``"non-finite state"``).
    """

    soc: FloatArray
    soh: FloatArray
    cell_voltage_v: FloatArray
    pack_voltage_v: FloatArray
    current_a: FloatArray
    power_w: FloatArray
    temperature_c: FloatArray
    faulted: BoolArray
    fault_reason: tuple[str, ...]


@runtime_checkable
class FleetTwin(Protocol):
    """A batched simulator of a fleet of packs."""

    packs: tuple[PackSpec, ...]
    """The packs, in the order of every array."""
    ratings: PackRatings
    """Static ratings (chemistry, counts, cell capacity, rated power) in the same order."""
    nominal_cell_voltage_v: FloatArray
    """Nominal cell voltage per pack [V] (mean open-circuit voltage over SoC 0…1)."""

    def reset(self) -> PackStates:
        """Return every pack to its spec's initial state and report it."""
        ...

    def set_state(
        self,
        *,
        soc: Sequence[float] | FloatArray | None = None,
        soh: Sequence[float] | FloatArray | None = None,
        temperature_c: Sequence[float] | FloatArray | None = None,
    ) -> PackStates:
        """Synchronise pack states from measurements (digital-twin hook); None keeps a field."""
        ...

    def state(self) -> PackStates:
        """The current state of every pack (no simulation)."""
        ...

    def step(self, power_w: FloatArray, dt_s: float, ambient_c: float | FloatArray) -> PackStates:
        """Advance every pack by ``dt_s`` holding pack power ``power_w`` (+ = discharge)."""
        ...

    def step_current(
        self, current_a: FloatArray, dt_s: float, ambient_c: float | FloatArray
    ) -> PackStates:
        """Advance every pack by ``dt_s`` holding pack current ``current_a`` (+ = discharge)."""
        ...
