"""Site demand forecasts for the coordinator: persistence, a learned daily profile, a file.

A forecast source is any ``forecast(now_s, steps) -> demand [W]`` for the ``steps`` control
intervals after ``now_s`` (one every ``dt_s``; :data:`~pulsebms.services.coordinator.
coordinator.DemandForecast`). The coordinator puts its first values in the observation's
``demand_forecast_w`` and hands the whole horizon to the ``mpc`` policy. Sources with an
``observe(t_s, demand_w)`` method also learn from the demand the edges report in their
telemetry (``site_values.demand_w``).

* :class:`DailyProfileForecast` — the mean demand of each time-of-day bin (``bin_s``, 15 min
  by default), learned online from the telemetry and/or from the site's history in the
  telemetry store (:meth:`~DailyProfileForecast.learn_from_store`: the fleet's delivered
  power, Σ voltage × current over the packs, which is the demand the fleet served). Bins
  with no data forecast the latest demand seen (persistence); with ``halflife_days`` older
  days weigh less.
* :class:`FileForecast` — a scenario file: CSV with a header, either ``t_s,demand_w``
  (UNIX seconds, interpolated linearly, the first/last value held outside) or
  ``hour,demand_w`` (hour of day 0–24, a daily profile repeated, interpolated cyclically).
* Persistence — no source (``None``): the coordinator fills the forecast with the present
  demand, and the MPC holds it over its horizon.

:func:`make_demand_forecast` builds one from a spec string (``persistence``, ``profile``,
``csv:PATH``), as the CLIs take it.

Example:
    >>> f = DailyProfileForecast(dt_s=3600.0, bin_s=3600.0)
    >>> for day in range(2):
    ...     for h in range(24):
    ...         f.observe(day * 86400.0 + h * 3600.0, 1000.0 if 8 <= h < 18 else -500.0)
    >>> f(2 * 86400.0 + 6 * 3600.0, 4).round(6).tolist()  # 07:00 .. 10:00
    [-500.0, 1000.0, 1000.0, 1000.0]
"""

from __future__ import annotations

import csv
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pulsebms.core.types import FloatArray

__all__ = [
    "DEMAND_FORECASTS",
    "DailyProfileForecast",
    "FileForecast",
    "LearningForecast",
    "make_demand_forecast",
]

_DAY_S = 86400.0

DEMAND_FORECASTS = ("persistence", "profile", "csv:PATH")
"""Spec strings :func:`make_demand_forecast` takes."""


class LearningForecast(Protocol):
    """A demand forecast that also learns from observed demand."""

    def __call__(self, now_s: float, steps: int) -> FloatArray:
        """Demand [W] for the ``steps`` intervals after ``now_s``."""
        ...

    def observe(self, t_s: float, demand_w: float) -> None:
        """Learn one observed demand [W] at ``t_s``."""
        ...


class _StoreLike(Protocol):
    def query(self, pack_id: str, t0_s: float, t1_s: float) -> Any:
        """Rows of one pack by column."""
        ...


class DailyProfileForecast:
    """Mean demand per time-of-day bin, learned online (see the module).

    Thread-safe: the coordinator's link thread observes while its planner forecasts.

    Args:
        dt_s: Control interval the forecast steps by [s].
        bin_s: Width of a time-of-day bin [s] (must divide a day).
        utc_offset_h: Site local time minus UTC [h] (bins are local time of day).
        halflife_days: Older observations weigh ``2^(−age/halflife)`` (``None``: all equal).

    Raises:
        ValueError: On a non-positive interval or bin, or a bin that does not divide a day.
    """

    def __init__(
        self,
        dt_s: float,
        *,
        bin_s: float = 900.0,
        utc_offset_h: float = 0.0,
        halflife_days: float | None = 14.0,
    ) -> None:
        if not (math.isfinite(dt_s) and dt_s > 0):
            raise ValueError(f"dt_s must be > 0, got {dt_s}")
        if (
            not (math.isfinite(bin_s) and bin_s > 0)
            or abs(_DAY_S / bin_s - round(_DAY_S / bin_s)) > 1e-9
        ):
            raise ValueError(f"bin_s must be > 0 and divide a day, got {bin_s}")
        if halflife_days is not None and not halflife_days > 0:
            raise ValueError(f"halflife_days must be > 0, got {halflife_days}")
        self.dt_s = float(dt_s)
        self.bin_s = float(bin_s)
        self.offset_s = float(utc_offset_h) * 3600.0
        self.halflife_s = None if halflife_days is None else float(halflife_days) * _DAY_S
        n = round(_DAY_S / self.bin_s)
        self._sum = np.zeros(n)
        self._weight = np.zeros(n)
        self._t_ref = math.nan  # weights are relative to this time (rescaled as time passes)
        self._last: tuple[float, float] | None = None
        self._lock = threading.Lock()
        self.observations = 0

    def _bin(self, t_s: FloatArray) -> np.ndarray[Any, np.dtype[np.int64]]:
        return (np.floor(np.mod(t_s + self.offset_s, _DAY_S) / self.bin_s)).astype(
            np.int64
        ) % self._sum.size

    def observe(self, t_s: float, demand_w: float) -> None:
        """Learn one demand [W] at ``t_s`` (non-finite values are ignored)."""
        if not (math.isfinite(t_s) and math.isfinite(demand_w)):
            return
        with self._lock:
            weight = 1.0
            if self.halflife_s is not None:
                if not math.isfinite(self._t_ref) or t_s > self._t_ref:
                    if math.isfinite(self._t_ref):  # move the reference: decay the past
                        decay = 0.5 ** ((t_s - self._t_ref) / self.halflife_s)
                        self._sum *= decay
                        self._weight *= decay
                    self._t_ref = t_s
                weight = 0.5 ** ((self._t_ref - t_s) / self.halflife_s)
            k = int(self._bin(np.array([t_s]))[0])
            self._sum[k] += weight * demand_w
            self._weight[k] += weight
            if self._last is None or t_s >= self._last[0]:
                self._last = (t_s, demand_w)
            self.observations += 1

    def profile(self) -> FloatArray:
        """Mean demand per bin [W] (NaN: no data yet), bin 0 starting at local midnight."""
        with self._lock:
            out: FloatArray = np.divide(
                self._sum, self._weight, out=np.full(self._sum.size, np.nan), where=self._weight > 0
            )
        return out

    def __call__(self, now_s: float, steps: int) -> FloatArray:
        """Demand [W] at ``now_s + k·dt_s``, ``k = 1..steps`` (persistence in empty bins)."""
        profile = self.profile()
        with self._lock:
            last = 0.0 if self._last is None else self._last[1]
        t = now_s + self.dt_s * np.arange(1, steps + 1, dtype=np.float64)
        values = profile[self._bin(t)]
        out: FloatArray = np.where(np.isfinite(values), values, last)
        return out

    def learn_from_store(
        self, store: _StoreLike, pack_ids: Sequence[str], t0_s: float, t1_s: float
    ) -> int:
        """Learn the fleet's delivered power Σ V·I over ``[t0_s, t1_s)`` from the store.

        Each pack's power is averaged per bin-long slot of time, the packs' slot means are
        summed (a pack missing from a slot adds nothing) and each slot is observed once.

        Args:
            store: A :class:`~pulsebms.services.store.TelemetryStore`.
            pack_ids: The site's packs.
            t0_s: Start of the history [s].
            t1_s: End of the history [s].

        Returns:
            The slots learned.
        """
        totals: dict[int, float] = {}
        for pid in pack_ids:
            cols = store.query(pid, t0_s, t1_s)
            t = np.asarray(cols["t_s"], dtype=np.float64)
            power = np.asarray(cols["voltage_v"], np.float64) * np.asarray(
                cols["current_a"], np.float64
            )
            ok = np.isfinite(t) & np.isfinite(power)
            if not ok.any():
                continue
            slots = np.floor(t[ok] / self.bin_s).astype(np.int64)
            unique, inverse = np.unique(slots, return_inverse=True)
            sums = np.bincount(inverse, weights=power[ok])
            counts = np.bincount(inverse)
            for slot, mean in zip(unique.tolist(), (sums / counts).tolist(), strict=True):
                totals[slot] = totals.get(slot, 0.0) + mean
        for slot in sorted(totals):
            self.observe((slot + 0.5) * self.bin_s, totals[slot])
        return len(totals)


class FileForecast:
    """Demand from a scenario CSV file (see the module).

    Args:
        path: The CSV file.
        dt_s: Control interval the forecast steps by [s].

    Raises:
        ValueError: A file without ``demand_w`` and one of ``t_s`` / ``hour``, with a value
            that is not a finite number (its line is named), with unsorted times, or empty.
        OSError: If it cannot be read.
    """

    def __init__(self, path: str | Path, dt_s: float) -> None:
        if not (math.isfinite(dt_s) and dt_s > 0):
            raise ValueError(f"dt_s must be > 0, got {dt_s}")
        self.dt_s = float(dt_s)
        self.path = Path(path)
        with self.path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            time_col = "t_s" if "t_s" in fields else "hour" if "hour" in fields else None
            if time_col is None or "demand_w" not in fields:
                raise ValueError(
                    f"{self.path}: needs a header with demand_w and t_s (UNIX s) or hour "
                    f"(hour of day), got {fields}"
                )
            times: list[float] = []
            values: list[float] = []
            for line, row in enumerate(reader, start=2):
                try:
                    t, v = float(row[time_col]), float(row["demand_w"])
                except (TypeError, ValueError):
                    raise ValueError(f"{self.path}:{line}: not a number: {row}") from None
                if not (math.isfinite(t) and math.isfinite(v)):
                    raise ValueError(f"{self.path}:{line}: not a finite number: {row}")
                times.append(t)
                values.append(v)
        if not times:
            raise ValueError(f"{self.path}: no rows")
        self.t = np.asarray(times)
        self.demand_w = np.asarray(values)
        if np.any(np.diff(self.t) <= 0):
            raise ValueError(f"{self.path}: {time_col} must increase from row to row")
        self.daily = time_col == "hour"
        if self.daily and not (self.t[0] >= 0.0 and self.t[-1] <= 24.0):
            raise ValueError(f"{self.path}: hour must be within 0..24")

    def at(self, t_s: FloatArray) -> FloatArray:
        """Demand [W] at the times ``t_s``."""
        t = np.asarray(t_s, dtype=np.float64)
        if self.daily:
            hours = np.mod(t, _DAY_S) / 3600.0
            xp = np.concatenate([self.t - 24.0, self.t, self.t + 24.0])
            fp = np.tile(self.demand_w, 3)
            out: FloatArray = np.interp(hours, xp, fp)
            return out
        interpolated: FloatArray = np.interp(t, self.t, self.demand_w)
        return interpolated

    def __call__(self, now_s: float, steps: int) -> FloatArray:
        """Demand [W] at ``now_s + k·dt_s``, ``k = 1..steps``."""
        return self.at(now_s + self.dt_s * np.arange(1, steps + 1, dtype=np.float64))


def make_demand_forecast(
    spec: str,
    dt_s: float,
    *,
    store: _StoreLike | None = None,
    pack_ids: Sequence[str] = (),
    history_s: float = 28 * _DAY_S,
    now_s: float | None = None,
    utc_offset_h: float = 0.0,
) -> DailyProfileForecast | FileForecast | None:
    """A demand forecast from a spec string.

    Args:
        spec: ``persistence`` (``None`` is returned: the coordinator's default),
            ``profile`` (:class:`DailyProfileForecast`; learned from ``store`` over the last
            ``history_s`` when a store is given, and online), or ``csv:PATH``
            (:class:`FileForecast`).
        dt_s: The coordinator's control interval [s].
        store: The telemetry store to learn a profile from.
        pack_ids: The site's packs (for the store).
        history_s: How far back the store is read [s].
        now_s: End of that history [s] (the present when None).
        utc_offset_h: Site local time minus UTC [h].

    Returns:
        The forecast, or ``None`` for persistence.

    Raises:
        ValueError: On an unknown spec or a bad file.
        OSError: If the file cannot be read.
    """
    kind, _, arg = spec.partition(":")
    if kind == "persistence" and not arg:
        return None
    if kind == "profile" and not arg:
        forecast = DailyProfileForecast(dt_s, utc_offset_h=utc_offset_h)
        if store is not None and pack_ids:
            import time

            end = time.time() if now_s is None else now_s
            forecast.learn_from_store(store, pack_ids, end - history_s, end)
        return forecast
    if kind == "csv" and arg:
        return FileForecast(arg, dt_s)
    raise ValueError(f"unknown demand forecast {spec!r}; use one of {DEMAND_FORECASTS}")
