"""Plain numpy containers exchanged between the fleet twin, the shield and the edge runtime.

These are the contract between ``pulsebms.envs`` (which fills them from the PyBaMM twin),
``pulsebms.safety`` (which reads them to derive admissible set-points) and
``pulsebms.edge_runtime`` (which fills them from CAN telemetry). Numpy only.

Sign convention everywhere: positive current and power mean **discharge**
(PyBaMM's convention), negative mean charge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray, IntArray

__all__ = ["FleetState", "PackRatings"]


@dataclass(frozen=True)
class PackRatings:
    """Static description of every pack in a fleet (one entry per pack).

    A pack is one cell scaled by its series and parallel counts.

    Attributes:
        chemistry: Chemistry name per pack (``"LFP"``, ``"NMC"``, ``"LCO"``).
        series: Cells in series per pack.
        parallel: Cells in parallel per pack.
        cell_capacity_ah: Nominal capacity of one cell at SoH 1 [A.h].
        rated_power_w: Rated pack power [W]; the action is normalised by it.
    """

    chemistry: tuple[str, ...]
    series: IntArray
    parallel: IntArray
    cell_capacity_ah: FloatArray
    rated_power_w: FloatArray

    def __post_init__(self) -> None:
        n = len(self.chemistry)
        for name in ("series", "parallel", "cell_capacity_ah", "rated_power_w"):
            value = getattr(self, name)
            if np.shape(value) != (n,):
                raise ValueError(
                    f"PackRatings.{name} must have shape ({n},), got {np.shape(value)}"
                )

    @property
    def n_packs(self) -> int:
        """Number of packs."""
        return len(self.chemistry)

    @property
    def capacity_ah(self) -> FloatArray:
        """Nominal pack capacity at SoH 1 [A.h] (cell capacity times parallel count)."""
        return self.cell_capacity_ah * self.parallel


@dataclass
class FleetState:
    """Measured (or simulated) state of every pack at one instant.

    Attributes:
        soc: State of charge per pack, fraction in [0, 1].
        soh: State of health per pack (remaining / nominal capacity), fraction.
        temperature_c: Pack (lumped cell) temperature per pack [°C].
        cell_voltage_v: Terminal voltage of one cell per pack [V].
        current_a: Last pack current per pack [A], positive = discharge.
        demand_w: Site power demand the fleet should meet now [W], positive = discharge.
        valid: Per-pack flag; False where telemetry is stale, malformed or the pack faulted.
    """

    soc: FloatArray
    soh: FloatArray
    temperature_c: FloatArray
    cell_voltage_v: FloatArray
    current_a: FloatArray
    demand_w: float = 0.0
    valid: BoolArray = field(default_factory=lambda: np.ones(0, dtype=bool))

    def __post_init__(self) -> None:
        n = np.shape(self.soc)[0] if np.ndim(self.soc) == 1 else -1
        if n < 0:
            raise ValueError(f"FleetState.soc must be 1-D, got shape {np.shape(self.soc)}")
        if self.valid.size == 0:
            self.valid = np.ones(n, dtype=bool)
        for name in ("soh", "temperature_c", "cell_voltage_v", "current_a", "valid"):
            if np.shape(getattr(self, name)) != (n,):
                raise ValueError(
                    f"FleetState.{name} must have shape ({n},), got {np.shape(getattr(self, name))}"
                )

    @property
    def n_packs(self) -> int:
        """Number of packs."""
        return int(self.soc.shape[0])
