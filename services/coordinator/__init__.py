"""Site coordinator: fleet state from MQTT telemetry/status, allocation and rebalance.

* :mod:`.state`: :class:`FleetState`, what the site's packs reported (validated,
  sequence-checked), which are usable;
* :mod:`.fleet`: :class:`SiteFleet`, the static description (layout, ratings, limits,
  shield settings) from a manifest or fleet spec;
* :mod:`.policies`: :func:`make_policy`, rules, MPC, ONNX, SB3 and RLlib policies by name;
* :mod:`.clock`: the wall clock and :class:`AcceleratedClock`;
* :mod:`.demand`: site demand forecasts (daily profile from telemetry or the store, a file);
* :mod:`.site_health`: :class:`SiteHealth`, the twin's forecasts and the health service's
  verdicts, and what a plan makes of them (:class:`HealthRules`);
* :mod:`.coordinator`: :class:`Coordinator`, the periodic plan and the rebalance;
* :mod:`.cli`: ``pulsebms-coordinator``.
"""

from pulsebms.services.coordinator.clock import AcceleratedClock, Clock, wall_clock
from pulsebms.services.coordinator.coordinator import (
    Coordinator,
    CoordinatorSettings,
    DemandForecast,
)
from pulsebms.services.coordinator.demand import (
    DailyProfileForecast,
    FileForecast,
    make_demand_forecast,
)
from pulsebms.services.coordinator.fleet import SiteFleet
from pulsebms.services.coordinator.policies import SiteHealthPolicy, make_policy
from pulsebms.services.coordinator.site_health import HealthRules, SiteHealth
from pulsebms.services.coordinator.state import FleetState, PackState, SiteReadings

__all__ = [
    "AcceleratedClock",
    "Clock",
    "Coordinator",
    "CoordinatorSettings",
    "DailyProfileForecast",
    "DemandForecast",
    "FileForecast",
    "FleetState",
    "HealthRules",
    "PackState",
    "SiteFleet",
    "SiteHealth",
    "SiteHealthPolicy",
    "SiteReadings",
    "make_demand_forecast",
    "make_policy",
    "wall_clock",
]
