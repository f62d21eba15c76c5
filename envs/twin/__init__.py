"""Batched fleet simulators (PyBaMM physics and equivalent-circuit fidelities).

Build one with :func:`make_twin`; every twin satisfies :class:`FleetTwin` and reports
:class:`PackStates`. Positive current and power mean discharge.
"""

from pulsebms.envs.twin.base import FleetTwin, PackStates
from pulsebms.envs.twin.common import DEGRADATION_MODELS, BatchedTwin
from pulsebms.envs.twin.factory import FIDELITIES, make_twin

__all__ = [
    "DEGRADATION_MODELS",
    "FIDELITIES",
    "BatchedTwin",
    "FleetTwin",
    "PackStates",
    "make_twin",
]
