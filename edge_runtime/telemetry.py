"""Latest telemetry per pack and of the site, with timestamps and a watchdog.

Every quantity of every pack keeps its last value and the time it arrived. A pack is
*fresh* when each of its required quantities (``PACK_TELEMETRY_FIELDS`` of
:mod:`pulsebms.edge_runtime.codec`) arrived within ``stale_after_s``; otherwise the
watchdog declares it stale and the runtime puts it in the safe state. A pack that never
reported is stale. The site frame (demand, price, time of day) has its own timeout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray
from pulsebms.edge_runtime.codec import PACK_TELEMETRY_FIELDS
from pulsebms.safety.state import FleetState

__all__ = ["SiteSnapshot", "TelemetryStore"]


@dataclass(frozen=True)
class SiteSnapshot:
    """The site's latest values.

    Attributes:
        demand_w: Power demand on the fleet [W], + = discharge (0 if never received).
        price_per_kwh: Energy price (0 if never received).
        time_of_day_s: Seconds since midnight (NaN if never received).
        ambient_c: Ambient temperature [°C] (NaN if never received).
        fresh: Whether the site frame arrived within the site timeout.
        age_s: Seconds since the last site frame (inf if never).
    """

    demand_w: float
    price_per_kwh: float
    time_of_day_s: float
    ambient_c: float
    fresh: bool
    age_s: float


class TelemetryStore:
    """Latest value and arrival time of every telemetry quantity.

    Args:
        n_packs: Number of packs.
        stale_after_s: A pack whose required quantities are older than this is stale.
        site_stale_after_s: Site-frame timeout; ``stale_after_s`` when ``None``.

    Raises:
        ValueError: If a timeout is not > 0.

    Example:
        >>> store = TelemetryStore(2, stale_after_s=1.0)
        >>> store.update_pack(0, {"soc": 0.5}, now_s=10.0)
        >>> store.stale(now_s=10.5).tolist()  # pack 0 lacks SoH, ...; pack 1 never reported
        [True, True]
    """

    def __init__(
        self, n_packs: int, *, stale_after_s: float, site_stale_after_s: float | None = None
    ) -> None:
        site_timeout = stale_after_s if site_stale_after_s is None else site_stale_after_s
        if not (stale_after_s > 0 and site_timeout > 0):
            raise ValueError(
                f"telemetry timeouts must be > 0, got {stale_after_s}, {site_stale_after_s}"
            )
        self.n_packs = n_packs
        self.stale_after_s = float(stale_after_s)
        self.site_stale_after_s = float(site_timeout)
        self.values: dict[str, FloatArray] = {
            f: np.full(n_packs, np.nan) for f in PACK_TELEMETRY_FIELDS
        }
        self.updated_s: dict[str, FloatArray] = {
            f: np.full(n_packs, -math.inf) for f in PACK_TELEMETRY_FIELDS
        }
        self.status = np.zeros(n_packs, dtype=np.int64)
        self.counter = np.full(n_packs, -1, dtype=np.int64)
        self._site: dict[str, float] = {}
        self._site_updated_s = -math.inf
        self.site_counter = -1

    def update_pack(
        self,
        pack: int,
        values: Mapping[str, float],
        *,
        now_s: float,
        status: int | None = None,
    ) -> None:
        """Record quantities of one pack received at ``now_s``.

        Args:
            pack: Pack index.
            values: Quantity → value (keys of ``PACK_TELEMETRY_FIELDS``; others ignored).
            now_s: Arrival time [s] (the runtime's clock).
            status: BMS status code, if the frame carries one.
        """
        for key, value in values.items():
            if key in self.values:
                self.values[key][pack] = value
                self.updated_s[key][pack] = now_s
        if status is not None:
            self.status[pack] = status

    def update_site(self, values: Mapping[str, float], *, now_s: float) -> None:
        """Record the site frame received at ``now_s``."""
        self._site.update({k: float(v) for k, v in values.items()})
        self._site_updated_s = now_s

    def age_s(self, now_s: float) -> FloatArray:
        """Per pack, the age of its oldest required quantity [s] (inf if never received)."""
        oldest = np.min(np.stack(list(self.updated_s.values())), axis=0)
        return np.asarray(now_s - oldest, dtype=np.float64)

    def stale(self, now_s: float) -> BoolArray:
        """Per pack, whether the watchdog has expired."""
        return np.asarray(self.age_s(now_s) > self.stale_after_s)

    def site(self, now_s: float) -> SiteSnapshot:
        """The site's latest values and whether they are fresh."""
        age = now_s - self._site_updated_s
        return SiteSnapshot(
            demand_w=self._site.get("demand_w", 0.0),
            price_per_kwh=self._site.get("price_per_kwh", 0.0),
            time_of_day_s=self._site.get("time_of_day_s", math.nan),
            ambient_c=self._site.get("ambient_c", math.nan),
            fresh=bool(age <= self.site_stale_after_s),
            age_s=float(age),
        )

    def fleet_state(self, now_s: float) -> FleetState:
        """The fleet as the shield sees it; ``valid`` is False for stale or incomplete packs.

        Missing values of invalid packs read as NaN (the shield treats invalid packs as
        unavailable); the site demand is 0 when the site frame is stale.
        """
        fresh = ~self.stale(now_s)
        finite = np.all(np.isfinite(np.stack(list(self.values.values()))), axis=0)
        site = self.site(now_s)
        return FleetState(
            soc=self.values["soc"].copy(),
            soh=self.values["soh"].copy(),
            temperature_c=self.values["temperature_c"].copy(),
            cell_voltage_v=self.values["cell_voltage_v"].copy(),
            current_a=self.values["current_a"].copy(),
            demand_w=site.demand_w if site.fresh else 0.0,
            valid=np.asarray(fresh & finite, dtype=bool),
        )

    def pack_state(self, pack: int) -> FleetState:
        """One pack's latest values as a one-pack :class:`FleetState` (for limit checks)."""
        sl = slice(pack, pack + 1)
        return FleetState(
            soc=self.values["soc"][sl].copy(),
            soh=self.values["soh"][sl].copy(),
            temperature_c=self.values["temperature_c"][sl].copy(),
            cell_voltage_v=self.values["cell_voltage_v"][sl].copy(),
            current_a=self.values["current_a"][sl].copy(),
        )

    def has_all(self, pack: int) -> bool:
        """Whether every required quantity of ``pack`` has been received at least once."""
        return all(math.isfinite(float(self.updated_s[f][pack])) for f in PACK_TELEMETRY_FIELDS)
