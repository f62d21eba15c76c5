"""Where the site demand comes from: CAN (the default), a fixed value, a CSV series, or yours.

The runtime asks its :class:`SiteSource` for new values on every control tick and safety
check. A source that has nothing new returns ``None``; the runtime's site watchdog
(``site_stale_after_s``) then ages the last values, and a stale site holds every pack in
the safe state (the demand is unknown). :class:`CanSite` is the marker for "site frames
arrive on the bus" (the runtime stores those itself); any object with a ``poll`` method
of the same signature can feed the runtime from elsewhere (an MQTT coordinator, say: its
client thread keeps the latest values, ``poll`` hands them over).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["SITE_KEYS", "CanSite", "CsvSite", "FixedSite", "SiteSource", "parse_site_spec"]

SITE_KEYS = ("demand_w", "price_per_kwh", "time_of_day_s", "ambient_c")
"""Site quantities (``demand_w`` required; + = the fleet should discharge)."""


@runtime_checkable
class SiteSource(Protocol):
    """A source of site values (demand, price, time of day, ambient temperature)."""

    def poll(self, now_s: float) -> Mapping[str, float] | None:
        """New site values at ``now_s`` (runtime clock), or ``None`` if nothing new.

        Keys among :data:`SITE_KEYS`. Must not block and must not raise on bad data (return
        ``None``: the site watchdog then decides).
        """
        ...


class CanSite:
    """Site frames arrive on the CAN bus (the runtime decodes and stores them).

    Example:
        >>> CanSite().poll(0.0) is None
        True
    """

    def poll(self, now_s: float) -> Mapping[str, float] | None:
        """Nothing: CAN site frames go to the store as they arrive."""
        return None


class FixedSite:
    """A constant demand (and optionally price and ambient), always fresh.

    Args:
        demand_w: Site demand [W], + = discharge.
        price_per_kwh: Energy price.
        ambient_c: Ambient temperature [°C]; NaN = unknown.

    Raises:
        ValueError: If a value is not finite (NaN ambient excepted).

    Example:
        >>> FixedSite(500.0).poll(3.0)["demand_w"]
        500.0
    """

    def __init__(
        self, demand_w: float, *, price_per_kwh: float = 0.0, ambient_c: float = math.nan
    ) -> None:
        if not (math.isfinite(demand_w) and math.isfinite(price_per_kwh)):
            raise ValueError(f"fixed site values must be finite, got {demand_w}, {price_per_kwh}")
        self._values = {"demand_w": float(demand_w), "price_per_kwh": float(price_per_kwh)}
        if math.isfinite(ambient_c):
            self._values["ambient_c"] = float(ambient_c)

    def poll(self, now_s: float) -> Mapping[str, float] | None:
        """The fixed values."""
        return self._values


class CsvSite:
    """A time series from a CSV file, held between rows, relative to the first poll.

    The file has a header with ``time_s`` (seconds from the start, increasing) and
    ``demand_w``, optionally ``price_per_kwh``, ``time_of_day_s``, ``ambient_c``. At runtime
    time ``t`` after the first poll the row with the largest ``time_s <= t`` applies. After
    the last row: with ``loop`` the series starts over (period = last ``time_s`` + the last
    step), without it ``poll`` returns ``None`` and the site goes stale (packs safe).

    Args:
        path: The CSV file.
        loop: Repeat the series.

    Raises:
        ValueError: If the file lacks the columns, is empty, has non-numeric or
            non-finite cells, or times that do not increase.

    Example:
        >>> site = CsvSite("demand.csv")  # doctest: +SKIP
        >>> site.poll(100.0)  # doctest: +SKIP
        {'demand_w': 1500.0}
    """

    def __init__(self, path: str | Path, *, loop: bool = False) -> None:
        self.path = Path(path)
        with self.path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            if "time_s" not in columns or "demand_w" not in columns:
                raise ValueError(f"{self.path}: needs columns time_s and demand_w, has {columns}")
            keys = [k for k in SITE_KEYS if k in columns]
            times: list[float] = []
            rows: list[dict[str, float]] = []
            for line, raw in enumerate(reader, start=2):
                clean = {k.strip(): v for k, v in raw.items() if k is not None}
                try:
                    t = float(clean["time_s"])
                    row = {k: float(clean[k]) for k in keys}
                except (TypeError, ValueError):
                    raise ValueError(f"{self.path}:{line}: not a number in {raw}") from None
                if not (math.isfinite(t) and all(math.isfinite(v) for v in row.values())):
                    raise ValueError(f"{self.path}:{line}: non-finite value in {raw}")
                if times and t <= times[-1]:
                    raise ValueError(f"{self.path}:{line}: time_s must increase ({t})")
                times.append(t)
                rows.append(row)
        if not rows:
            raise ValueError(f"{self.path}: no rows")
        self._times = np.asarray(times)
        self._rows = rows
        step = float(times[-1] - times[-2]) if len(times) > 1 else 1.0
        self.period_s = float(times[-1]) + step
        self.loop = loop
        self._start_s: float | None = None

    def poll(self, now_s: float) -> Mapping[str, float] | None:
        """The row in force at ``now_s`` (``None`` before ``time_s[0]`` or after the end)."""
        if self._start_s is None:
            self._start_s = now_s
        t = now_s - self._start_s
        if self.loop:
            t %= self.period_s
        elif t >= self.period_s:
            return None
        i = int(np.searchsorted(self._times, t, side="right")) - 1
        return self._rows[i] if i >= 0 else None


def parse_site_spec(spec: str) -> SiteSource:
    """Build a source from ``can``, ``fixed:DEMAND_W`` or ``csv:PATH`` (``csv-loop:PATH``).

    Raises:
        ValueError: If the spec is not one of these or the value is bad.

    Example:
        >>> parse_site_spec("fixed:1200").poll(0.0)["demand_w"]
        1200.0
    """
    kind, _, arg = spec.partition(":")
    if kind == "can" and not arg:
        return CanSite()
    if kind == "fixed" and arg:
        try:
            return FixedSite(float(arg))
        except ValueError:
            raise ValueError(f"site 'fixed:{arg}': not a finite number") from None
    if kind in ("csv", "csv-loop") and arg:
        return CsvSite(arg, loop=kind == "csv-loop")
    raise ValueError(
        f"site source {spec!r}: expected can, fixed:DEMAND_W, csv:PATH or csv-loop:PATH"
    )
