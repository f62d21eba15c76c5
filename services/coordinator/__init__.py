"""Site coordinator: fleet state from MQTT telemetry/status, allocation and rebalance.

Only the broker-free fleet state is in this release (:mod:`.state`); the MQTT loop,
policies and console script are still to come.
"""

from pulsebms.services.coordinator.state import FleetState, PackState

__all__ = ["FleetState", "PackState"]
