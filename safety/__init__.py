"""Safety core (numpy only): limits, the constraint shield and violation accounting.

Importing this package imports numpy only, because the edge runtime uses it on a device
without the simulation stack. :class:`ShieldWrapper` (Gymnasium) is imported on first
access, and the cvxpy reference lives in :mod:`pulsebms.safety.reference`, which callers
import explicitly.

Example:
    >>> import numpy as np
    >>> from pulsebms.safety import FleetState, PackRatings, Shield
    >>> ratings = PackRatings(("NMC",), np.array([14]), np.array([4]), np.array([5.15]),
    ...                       np.array([1000.0]))
    >>> state = FleetState(soc=np.array([0.5]), soh=np.array([1.0]),
    ...                    temperature_c=np.array([25.0]), cell_voltage_v=np.array([3.7]),
    ...                    current_a=np.array([0.0]))
    >>> Shield(ratings).project(state, np.array([0.2])).status.name
    'OK'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pulsebms.safety.cell_model import CellModel
from pulsebms.safety.checks import ShieldCheckError, ShieldCheckReport, check_shield
from pulsebms.safety.limits import (
    CELL_VOLTAGE_WINDOWS_V,
    LimitArrays,
    PackLimits,
    Violation,
    check_violations,
    default_limits,
    fleet_limits,
    stack_limits,
    violation_cost,
)
from pulsebms.safety.results import (
    INTERVENTION_TOLERANCE,
    count_interventions,
    intervention_mask,
)
from pulsebms.safety.settings import ALLOCATIONS, ShieldSettings
from pulsebms.safety.shield import AdmissibleSet, Shield, ShieldResult, ShieldStatus
from pulsebms.safety.state import FleetState, PackRatings

if TYPE_CHECKING:
    from pulsebms.safety.wrapper import ShieldWrapper

__all__ = [
    "ALLOCATIONS",
    "CELL_VOLTAGE_WINDOWS_V",
    "INTERVENTION_TOLERANCE",
    "AdmissibleSet",
    "CellModel",
    "FleetState",
    "LimitArrays",
    "PackLimits",
    "PackRatings",
    "Shield",
    "ShieldCheckError",
    "ShieldCheckReport",
    "ShieldResult",
    "ShieldSettings",
    "ShieldStatus",
    "ShieldWrapper",
    "Violation",
    "check_shield",
    "check_violations",
    "count_interventions",
    "default_limits",
    "fleet_limits",
    "intervention_mask",
    "stack_limits",
    "violation_cost",
]


def __getattr__(name: str) -> Any:
    """Import :class:`ShieldWrapper` (and Gymnasium) on first access only."""
    if name == "ShieldWrapper":
        from pulsebms.safety.wrapper import ShieldWrapper

        return ShieldWrapper
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
