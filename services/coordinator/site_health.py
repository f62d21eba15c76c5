"""What the site's twin and health services say about each pack, and what the plan makes of it.

The coordinator subscribes to the twin service's ``pulsebms/{site}/twin/forecast`` (schema
``forecast``: calibrated SoH, its uncertainty and the remaining useful life per pack) and to
the health service's ``pulsebms/{site}/+/health`` (schema ``health``: health score, SoH
forecast, anomalies per pack). :class:`SiteHealth` keeps the latest of each, validated and
sequence-checked (a duplicate or older message is dropped and counted), and turns them into
the plan's inputs under :class:`HealthRules`:

* **Exclusion** — a pack whose latest health message names a *safety* anomaly
  (``internal_short``, ``abnormal_heating``: the first tier of the maintenance queue,
  :data:`pulsebms.services.health.priority.SAFETY_ANOMALIES`) is excluded like a faulted
  pack: it gets an explicit 0 W set-point, its share moves to the others through the shield,
  and the change triggers a rebalance. A verdict holds until the next health message for
  that device (health messages are retained: a restarted coordinator sees it at once); a
  health service that stops publishing does not release a pack.
* **Derating** — a pack flagged with a *sensor* anomaly (``stuck_sensor``: its protection
  may be blind) is limited to ``derate_fraction`` of its rated power in either direction.
* **SoH** — where a forecast is fresh (received within ``forecast_max_age_s``, by default
  three of its periods), the policy's observation carries the twin's calibrated SoH instead
  of the BMS's (:meth:`SiteHealth.soh`); the shield keeps the BMS's, as the edge's does.
* **Remaining useful life** — :meth:`SiteHealth.rul_days` (``inf`` where the forecast sees
  no end of life within its horizon, NaN where unknown) goes to policies that take it
  (``set_remaining_life``): the ``health`` rule gives a pack due sooner than the fleet's
  median a smaller share (:func:`rul_share`), the ``mpc`` makes cycling it dearer
  (:func:`rul_cost_factor`).

Never raises on input: messages for another site, of an unknown kind, or out of sequence are
counted (:attr:`SiteHealth.dropped`) and ignored.

Example:
    >>> sh = SiteHealth("s1")
    >>> msg = {"site": "s1", "device": "e1", "session": "h", "seq": 0, "timestamp_s": 10.0,
    ...        "model": "m", "packs": [{"pack_id": "a", "health_score": 0.9,
    ...        "soh_forecast": 0.89, "anomaly_score": 12.0, "anomalies": ["abnormal_heating"],
    ...        "priority": 4.1}]}
    >>> sh.apply("health", msg, received_s=10.0)
    True
    >>> sh.excluded(["a", "b"])
    {'a': 'abnormal_heating'}
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pulsebms.core.messaging import SequenceTracker
from pulsebms.core.types import FloatArray

__all__ = [
    "SAFETY_ANOMALIES",
    "SENSOR_ANOMALIES",
    "HealthRules",
    "PackForecast",
    "SiteHealth",
    "rul_cost_factor",
    "rul_share",
]

SAFETY_ANOMALIES = ("internal_short", "abnormal_heating")
"""Anomalies that exclude a pack (the health service's safety tier)."""
SENSOR_ANOMALIES = ("stuck_sensor",)
"""Anomalies that derate a pack (the health service's sensor tier)."""


@dataclass(frozen=True)
class HealthRules:
    """What the coordinator does with forecasts and health verdicts (see the module).

    Attributes:
        exclude_anomalies: Anomaly names that exclude a pack.
        derate_anomalies: Anomaly names that derate a pack.
        derate_fraction: Power limit of a derated pack, as a fraction of its rating.
        forecast_max_age_s: A forecast older than this (receiver clock) is not used [s];
            ``None``: three of the forecast's own periods.
        use_forecast_soh: Give the policy the twin's calibrated SoH where fresh.

    Raises:
        ValueError: On a fraction outside (0, 1] or a non-positive age.
    """

    exclude_anomalies: tuple[str, ...] = SAFETY_ANOMALIES
    derate_anomalies: tuple[str, ...] = SENSOR_ANOMALIES
    derate_fraction: float = 0.5
    forecast_max_age_s: float | None = None
    use_forecast_soh: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.derate_fraction <= 1.0:
            raise ValueError(f"derate_fraction must be in (0, 1], got {self.derate_fraction}")
        if self.forecast_max_age_s is not None and not self.forecast_max_age_s > 0:
            raise ValueError(f"forecast_max_age_s must be > 0, got {self.forecast_max_age_s}")


@dataclass(frozen=True)
class PackForecast:
    """The twin's latest word on one pack.

    Attributes:
        soh: Calibrated SoH.
        soh_std: Its standard deviation (NaN: unknown).
        rul_days: Remaining useful life [days] (``inf``: beyond the forecast's horizon).
        received_s: Receiver clock at arrival [s].
        max_age_s: How long it counts as fresh [s].
    """

    soh: float
    soh_std: float
    rul_days: float
    received_s: float
    max_age_s: float


def _number(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else math.nan


def rul_share(rul_days: FloatArray, floor: float = 0.25) -> FloatArray:
    """Share factor per pack from its RUL: ``clip(RUL / median RUL, floor, 1)``.

    The median is over the packs with a known, finite RUL; a pack without one (unknown, or
    beyond the horizon) gets 1. So a pack due for its end of life sooner than the fleet's
    typical pack takes proportionally less of the load, never less than ``floor``.

    Example:
        >>> rul_share(np.array([100.0, 400.0, 400.0, np.inf, np.nan])).tolist()
        [0.25, 1.0, 1.0, 1.0, 1.0]
    """
    rul = np.asarray(rul_days, dtype=np.float64)
    finite = np.isfinite(rul)
    if not finite.any():
        return np.ones(rul.shape)
    median = float(np.median(rul[finite]))
    if median <= 0:
        return np.where(finite, floor, 1.0)
    out: FloatArray = np.where(finite, np.clip(rul / median, floor, 1.0), 1.0)
    return out


def rul_cost_factor(rul_days: FloatArray, cap: float = 4.0) -> FloatArray:
    """Degradation-cost factor per pack: ``clip(median RUL / RUL, 1, cap)`` (1 where unknown).

    Example:
        >>> rul_cost_factor(np.array([100.0, 400.0, 400.0, np.nan])).tolist()
        [4.0, 1.0, 1.0, 1.0]
    """
    share = rul_share(rul_days, 1.0 / cap)
    out: FloatArray = 1.0 / share
    return out


class SiteHealth:
    """Forecasts and health verdicts of one site's packs (see the module).

    Args:
        site: Site name; messages of other sites are dropped (``topic_mismatch``).
        rules: What to make of them.
    """

    def __init__(self, site: str, rules: HealthRules | None = None) -> None:
        self.site = site
        self.rules = rules or HealthRules()
        self.forecasts: dict[str, PackForecast] = {}
        """Pack id → the latest forecast."""
        self.anomalies: dict[str, tuple[str, ...]] = {}
        """Pack id → anomalies named by its device's latest health message."""
        self.health_devices: dict[str, set[str]] = {}
        """Device → packs its latest health message covered."""
        self.dropped: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self._seq = {"forecast": SequenceTracker(), "health": SequenceTracker()}

    def apply(self, kind: str, msg: Mapping[str, Any], *, received_s: float) -> bool:
        """Apply one validated ``forecast`` or ``health`` message.

        Returns:
            Whether the set of excluded or derated packs changed (a rebalance is due).
        """
        if kind not in self._seq:
            self.dropped["kind"] += 1
            return False
        if msg.get("site") != self.site:
            self.dropped["topic_mismatch"] += 1
            return False
        sender = "twin" if kind == "forecast" else str(msg.get("device"))
        if not self._seq[kind].accept(sender, str(msg["session"]), int(msg["seq"])):
            self.dropped[f"{kind}_sequence"] += 1
            return False
        self.received[kind] += 1
        if kind == "forecast":
            self._apply_forecast(msg, received_s)
            return False
        before = (self._set(self.rules.exclude_anomalies), self._set(self.rules.derate_anomalies))
        covered: set[str] = set()
        for entry in msg.get("packs") or ():
            pid = str(entry["pack_id"])
            covered.add(pid)
            self.anomalies[pid] = tuple(str(a) for a in entry.get("anomalies") or ())
        for pid in self.health_devices.get(sender, set()) - covered:
            self.anomalies.pop(pid, None)  # no longer reported: its verdict is gone
        self.health_devices[sender] = covered
        after = (self._set(self.rules.exclude_anomalies), self._set(self.rules.derate_anomalies))
        return before != after

    def _apply_forecast(self, msg: Mapping[str, Any], received_s: float) -> None:
        period = _number(msg.get("period_s"))
        max_age = self.rules.forecast_max_age_s
        if max_age is None:
            max_age = 3.0 * period if period > 0 else math.inf
        for entry in msg.get("packs") or ():
            rul = entry.get("rul_days")
            self.forecasts[str(entry["pack_id"])] = PackForecast(
                soh=_number(entry.get("soh")),
                soh_std=_number(entry.get("soh_std")),
                rul_days=math.inf if rul is None else _number(rul),
                received_s=received_s,
                max_age_s=max_age,
            )

    def _set(self, names: Sequence[str]) -> frozenset[str]:
        return frozenset(p for p, found in self.anomalies.items() if set(found) & set(names))

    # ---------------------------------------------------------------- plan inputs
    def excluded(self, pack_ids: Sequence[str]) -> dict[str, str]:
        """Pack id → the anomaly that excludes it, for the packs of ``pack_ids`` excluded."""
        names = self.rules.exclude_anomalies
        out: dict[str, str] = {}
        for pid in pack_ids:
            hit = [a for a in self.anomalies.get(pid, ()) if a in names]
            if hit:
                out[pid] = hit[0]
        return out

    def derate(self, pack_ids: Sequence[str]) -> FloatArray:
        """Power limit per pack as a fraction of its rating (1: not derated)."""
        names = set(self.rules.derate_anomalies)
        return np.array(
            [
                self.rules.derate_fraction if names & set(self.anomalies.get(p, ())) else 1.0
                for p in pack_ids
            ]
        )

    def _fresh(self, pack_ids: Sequence[str], now_s: float) -> list[PackForecast | None]:
        out: list[PackForecast | None] = []
        for pid in pack_ids:
            f = self.forecasts.get(pid)
            out.append(f if f is not None and now_s - f.received_s <= f.max_age_s else None)
        return out

    def soh(self, pack_ids: Sequence[str], now_s: float) -> FloatArray:
        """The twin's calibrated SoH per pack where a fresh forecast has it, else NaN."""
        return np.array(
            [math.nan if f is None else f.soh for f in self._fresh(pack_ids, now_s)],
            dtype=np.float64,
        )

    def rul_days(self, pack_ids: Sequence[str], now_s: float) -> FloatArray:
        """Remaining useful life per pack [days] (``inf``: beyond the horizon; NaN: unknown)."""
        return np.array(
            [math.nan if f is None else f.rul_days for f in self._fresh(pack_ids, now_s)],
            dtype=np.float64,
        )

    def counts(self) -> dict[str, int]:
        """Messages received and dropped, by kind and reason."""
        out = {f"{k}_received": v for k, v in self.received.items()}
        out.update({f"{k}_dropped": v for k, v in self.dropped.items()})
        return out
