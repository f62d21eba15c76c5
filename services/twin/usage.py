"""Observed duty: what a pack has really been doing, read from its recent telemetry.

A degradation forecast is only as good as the duty it assumes. :func:`observed_duty` turns
a pack's telemetry window (the store's columns) into a :class:`~pulsebms.services.twin.duty.
Duty`, so that each pack is forecast under its own use rather than one stated duty:

* **throughput**: charge moved, integrated as :mod:`pulsebms.services.health.cycles` does
  (each sample's current held over the interval that ends at it; intervals longer than
  ``max_gap_factor`` × the median interval are not integrated) → equivalent full cycles per
  day, ``(discharged + charged) / 2 / capacity / days``;
* **depth of discharge**: the charge of each half-cycle (a run of discharge, or of charge,
  between two reversals of the current; rest inside a run does not end it) over the
  capacity, averaged weighted by charge (the first and last runs, cut by the window, left
  out when there are more), at least ``min_depth``, at most 1. It needs no SoC: a pack
  whose current flips every few minutes shows shallow cycles, as its cells see them;
* **cycles per day** = equivalent full cycles per day / depth (a duty cycles ``depth`` of
  its capacity each half-cycle);
* **C-rate**: the time-weighted mean ``|current|`` while the pack moves charge
  (``|I| > rest_c_rate`` × capacity), over the present capacity; the stated duty's C-rate
  when it never moved (then 0 cycles per day);
* **mean SoC**: the time-weighted mean SoC while moving charge (the centre of the swing),
  kept where the swing fits in [0, 1]; **temperature**: the time-weighted mean; the stated
  duty's when not reported.

A window shorter than ``min_span_s`` or with fewer than ``min_samples`` rows is too little
history: the stated duty is returned and marked so (:attr:`ObservedDuty.source`
``"stated"``). Cycles per day are capped so that the duty fits in 24 hours (the
:class:`~pulsebms.services.twin.duty.Duty` invariant).

Example:
    >>> import numpy as np
    >>> t = np.arange(0.0, 2 * 86400.0, 600.0)
    >>> day = np.mod(t, 86400.0)
    >>> current = np.where(day < 3 * 3600, 10.0, np.where(day < 6 * 3600, -10.0, 0.0))
    >>> soc = np.interp(day, [0, 3 * 3600, 6 * 3600, 86400], [0.8, 0.2, 0.8, 0.8])
    >>> cols = {"t_s": t, "current_a": current, "soc": soc,
    ...         "temperature_c": np.full(t.size, 30.0)}
    >>> obs = observed_duty(cols, capacity_ah=50.0)
    >>> obs.source, round(obs.duty.c_rate, 2), round(obs.duty.cycles_per_day, 1)
    ('observed', 0.2, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from pulsebms.core.types import FloatArray
from pulsebms.services.twin.duty import DEFAULT_DUTY, Duty

__all__ = ["ObservedDuty", "UsageSettings", "observed_duty"]

_DAY_S = 86400.0


@dataclass(frozen=True)
class UsageSettings:
    """How a duty is read from telemetry (see the module docstring).

    Attributes:
        window_s: Telemetry read back from now [s].
        min_span_s: Least history for an observed duty [s]; less gives the stated duty.
        min_samples: Least rows for an observed duty.
        rest_c_rate: ``|current|`` below this × capacity is rest [C].
        min_depth: Smallest depth of discharge an observed duty gets.
        max_gap_factor: Intervals longer than this × the median interval are gaps.

    Raises:
        ValueError: On a non-positive window, span, rest threshold, depth or gap factor.
    """

    window_s: float = 7 * _DAY_S
    min_span_s: float = _DAY_S
    min_samples: int = 24
    rest_c_rate: float = 0.01
    min_depth: float = 0.02
    max_gap_factor: float = 5.0

    def __post_init__(self) -> None:
        for name in ("window_s", "min_span_s", "rest_c_rate", "min_depth", "max_gap_factor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")


@dataclass(frozen=True)
class ObservedDuty:
    """A pack's duty and where it came from.

    Attributes:
        duty: The duty to forecast under.
        source: ``"observed"`` (from the telemetry) or ``"stated"`` (too little history).
        span_s: Time the telemetry covered [s].
        efc_per_day: Equivalent full cycles per day observed (NaN: not observed).
    """

    duty: Duty
    source: str
    span_s: float
    efc_per_day: float


def _weighted_mean(values: FloatArray, weights: FloatArray) -> float:
    ok = np.isfinite(values) & (weights > 0)
    if not ok.any():
        return math.nan
    return float(np.sum(values[ok] * weights[ok]) / np.sum(weights[ok]))


def _half_cycle_depth(
    current_a: FloatArray, held_s: FloatArray, capacity_ah: float, min_depth: float
) -> float:
    """Charge-weighted mean charge of a half-cycle over the capacity (see the module)."""
    charge_ah = np.abs(current_a) * held_s / 3600.0
    sign = np.sign(current_a)
    starts = np.flatnonzero(np.concatenate([[True], sign[1:] != sign[:-1]]))
    runs = np.add.reduceat(charge_ah, starts)
    if runs.size > 2:
        runs = runs[1:-1]  # cut by the window
    total = float(np.sum(runs))
    depth = float(np.sum(runs**2) / total / capacity_ah) if total > 0 else 1.0
    return min(max(depth, min_depth), 1.0)


def observed_duty(
    columns: Mapping[str, FloatArray],
    capacity_ah: float,
    *,
    stated: Duty = DEFAULT_DUTY,
    settings: UsageSettings = UsageSettings(),
) -> ObservedDuty:
    """The duty a pack's telemetry shows (see the module docstring).

    Args:
        columns: The pack's telemetry (``t_s``, ``current_a``; ``soc``, ``temperature_c``
            when known), in time order, as :meth:`TelemetryStore.query` returns it.
        capacity_ah: The pack's present capacity [A.h] (nominal × SoH).
        stated: The duty to fall back on (and to take unobservable parts from).
        settings: How to read it.

    Returns:
        The :class:`ObservedDuty`.

    Raises:
        ValueError: If ``capacity_ah`` is not a positive number.
    """
    if not (math.isfinite(capacity_ah) and capacity_ah > 0):
        raise ValueError(f"capacity_ah must be > 0, got {capacity_ah}")
    t = np.asarray(columns.get("t_s", ()), dtype=np.float64)
    current = np.asarray(columns.get("current_a", np.full(t.size, np.nan)), dtype=np.float64)
    ok = np.isfinite(t) & np.isfinite(current)
    t, current = t[ok], current[ok]
    soc = np.asarray(columns.get("soc", np.full(ok.size, np.nan)), dtype=np.float64)[ok]
    temp = np.asarray(columns.get("temperature_c", np.full(ok.size, np.nan)), np.float64)[ok]
    if t.size < 2:
        return ObservedDuty(stated, "stated", 0.0, math.nan)
    dt = np.diff(t)
    positive = dt[dt > 0]
    median_dt = float(np.median(positive)) if positive.size else 0.0
    span_s = float(t[-1] - t[0]) + median_dt
    if t.size < settings.min_samples or span_s < settings.min_span_s or median_dt <= 0:
        return ObservedDuty(stated, "stated", span_s, math.nan)
    # Each sample's current is held over the interval that ends at it (as in cycles.py).
    held = np.where((dt > 0) & (dt <= settings.max_gap_factor * median_dt), dt, 0.0)
    i_end = current[1:]
    moved_ah = np.sum(np.abs(i_end) * held) / 3600.0
    days = span_s / _DAY_S
    efc_per_day = float(moved_ah / 2.0 / capacity_ah / days)
    moving = np.abs(i_end) > settings.rest_c_rate * capacity_ah
    moving_s = float(np.sum(held[moving]))
    if moving_s > 0:
        c_rate = float(np.sum(np.abs(i_end[moving]) * held[moving]) / moving_s / capacity_ah)
        depth = _half_cycle_depth(i_end[moving], held[moving], capacity_ah, settings.min_depth)
        cycles = efc_per_day / depth
        # 2·depth/c_rate hours per cycle: the day holds at most 12·c_rate/depth cycles.
        cycles = min(cycles, 12.0 * c_rate / depth * (1.0 - 1e-9))
    else:
        c_rate, cycles, depth = stated.c_rate, 0.0, stated.depth_of_discharge
    mean_soc = _weighted_mean(soc[1:], np.where(moving, held, 0.0))
    if not math.isfinite(mean_soc):
        mean_soc = _weighted_mean(soc[1:], held)
    if not math.isfinite(mean_soc):
        mean_soc = stated.mean_soc
    mean_soc = min(max(mean_soc, depth / 2.0), 1.0 - depth / 2.0)
    temperature = _weighted_mean(temp[1:], held)
    duty = replace(
        stated,
        cycles_per_day=float(cycles),
        depth_of_discharge=depth,
        c_rate=c_rate,
        mean_soc=float(mean_soc),
        temperature_c=temperature if math.isfinite(temperature) else stated.temperature_c,
        pulse_c_rate=0.0,
    )
    return ObservedDuty(duty, "observed", span_s, efc_per_day)
