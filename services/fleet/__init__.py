"""``pulsebms-fleet``: the site loop in one command (broker, HIL fleet, edges, coordinator).

:func:`~pulsebms.services.fleet.run.run_fleet` is the library entry point (notebooks call
it); :mod:`~pulsebms.services.fleet.cli` the command line; :mod:`.netcut` the network-cut
fault injector it uses.
"""

from pulsebms.services.fleet.run import (
    DEFAULT_SITE,
    FleetEvent,
    FleetReport,
    FleetTraces,
    TelemetryAudit,
    default_events,
    ensure_policy,
    run_fleet,
)

__all__ = [
    "DEFAULT_SITE",
    "FleetEvent",
    "FleetReport",
    "FleetTraces",
    "TelemetryAudit",
    "default_events",
    "ensure_policy",
    "run_fleet",
]
