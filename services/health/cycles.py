"""Cycle summaries from raw pack telemetry: one row per charge–discharge cycle.

Everything the health models learn from is computed here, from the telemetry columns the
store keeps (:data:`pulsebms.services.store.COLUMNS`: ``t_s``, ``soc``, ``soh``,
``current_a``, ``voltage_v``, ``temperature_c``), so that the training data (the twin's
fleet histories, :mod:`pulsebms.services.health.fleet`) and the service (reading a
:class:`~pulsebms.services.store.TelemetryStore`) go through the same code.

Segmentation. A sample is *discharge* when ``current_a > threshold``, *charge* when
``current_a < −threshold``, else *rest* (+ = discharge, as everywhere in PulseBMS). A
cycle starts at the first discharge sample after a charge (or at the first discharge of
the series) and ends just before the next one; only cycles followed by a next discharge
are complete (:func:`summarise_cycles` returns the incomplete tail's start so a caller can
feed it again with more data).

Integration. Each sample's current is taken as held over the interval that ends at it
(the twin reports the mean current of its last step); an interval longer than
``max_gap_s`` with current flowing is not integrated and is counted in ``gaps``.

Per cycle:

* charge and energy moved in each direction (``discharge_ah``, ``charge_ah``, ``…_wh``);
* the **capacity estimate** ``capacity_ah`` = discharged A·h / SoC swing of the
  discharge, when the swing is at least ``min_soc_swing`` (NaN otherwise): it uses the
  BMS's SoC, so its error is the SoC estimator's error divided by the swing;
* the **resistance estimate** ``resistance_ohm``: the voltage step over the current step
  at each transition out of rest (discharge or charge start), ``ΔV/ΔI``, averaged; it is the
  resistance "seen over one sample interval" (R0 plus the part of the RC pair and of the
  OCV drift that the interval reaches), so it depends on the sampling period, SoC and
  temperature — features compare it within a pack;
* temperature mean, min and max, duration, peak discharge current.

Example:
    >>> import numpy as np
    >>> t = np.arange(0.0, 8 * 600.0, 600.0)
    >>> i = np.array([0.0, 10, 10, 0, -10, -10, 0, 10])
    >>> v = 50.0 - 0.05 * i
    >>> soc = np.array([0.9, 0.8, 0.7, 0.7, 0.8, 0.9, 0.9, 0.8])
    >>> table, tail = summarise_cycles(t, i, v, np.full(8, 25.0), soc)
    >>> len(table), tail
    (1, 7)
    >>> float(table.discharge_ah[0]), round(float(table.resistance_ohm[0]), 3)
    (3.3333333333333335, 0.05)
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from pulsebms.core.types import FloatArray, IntArray

__all__ = [
    "CYCLE_COLUMNS",
    "CycleTable",
    "concat_tables",
    "rest_threshold_a",
    "summarise_cycles",
]

CYCLE_COLUMNS = (
    "t_start_s",
    "t_end_s",
    "duration_s",
    "discharge_ah",
    "charge_ah",
    "discharge_wh",
    "charge_wh",
    "soc_start",
    "soc_end",
    "capacity_ah",
    "resistance_ohm",
    "temperature_mean_c",
    "temperature_min_c",
    "temperature_max_c",
    "current_max_a",
    "gaps",
)
"""Float columns of a :class:`CycleTable`, after ``cycle``."""


@dataclass(frozen=True)
class CycleTable:
    """Per-cycle summaries of one pack (every array has one entry per cycle).

    Attributes:
        cycle: Cycle index (0-based, in time order).
        t_start_s: Time of the cycle's first discharge sample [s].
        t_end_s: Time of its last sample [s].
        duration_s: ``t_end_s − t_start_s`` plus the first sample's interval [s].
        discharge_ah: Charge discharged [A.h].
        charge_ah: Charge charged [A.h] (positive).
        discharge_wh: Energy discharged [W.h].
        charge_wh: Energy charged [W.h] (positive).
        soc_start: BMS SoC just before the discharge began.
        soc_end: BMS SoC at the end of the discharge.
        capacity_ah: Capacity estimate [A.h]: discharge A.h / SoC swing (NaN: swing too small).
        resistance_ohm: Mean ``ΔV/ΔI`` at the transitions out of rest [Ω] (NaN: none).
        temperature_mean_c: Time-weighted mean temperature [°C].
        temperature_min_c: Lowest temperature [°C].
        temperature_max_c: Highest temperature [°C].
        current_max_a: Largest discharge current [A].
        gaps: Intervals longer than ``max_gap_s`` with current flowing (not integrated).
    """

    cycle: IntArray
    t_start_s: FloatArray
    t_end_s: FloatArray
    duration_s: FloatArray
    discharge_ah: FloatArray
    charge_ah: FloatArray
    discharge_wh: FloatArray
    charge_wh: FloatArray
    soc_start: FloatArray
    soc_end: FloatArray
    capacity_ah: FloatArray
    resistance_ohm: FloatArray
    temperature_mean_c: FloatArray
    temperature_min_c: FloatArray
    temperature_max_c: FloatArray
    current_max_a: FloatArray
    gaps: FloatArray

    def __len__(self) -> int:
        return int(self.cycle.size)

    @classmethod
    def empty(cls) -> CycleTable:
        """A table with no cycles."""
        return cls(
            cycle=np.zeros(0, dtype=np.int64),
            **{name: np.zeros(0) for name in CYCLE_COLUMNS},
        )

    def column(self, name: str) -> FloatArray:
        """A column by name (``cycle`` as float)."""
        if name == "cycle":
            return self.cycle.astype(np.float64)
        if name not in CYCLE_COLUMNS:
            raise KeyError(f"no cycle column {name!r}; columns: {('cycle', *CYCLE_COLUMNS)}")
        value: FloatArray = getattr(self, name)
        return value

    def select(self, index: slice | IntArray) -> CycleTable:
        """The rows at ``index`` (a slice or integer indices)."""
        return CycleTable(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def rest_threshold_a(nominal_capacity_ah: float) -> float:
    """The current below which a pack counts as at rest: C/50, at least 0.15 A [A].

    C/50 keeps slow charges (C/4 and up) out of "rest"; the floor stays above what a BMS
    current sensor reads at zero current (offset plus noise, 0.1 A once quantised).

    Example:
        >>> rest_threshold_a(9.2), rest_threshold_a(100.0)
        (0.184, 2.0)
    """
    return max(0.02 * float(nominal_capacity_ah), 0.15)


def concat_tables(tables: list[CycleTable]) -> CycleTable:
    """Join tables of one pack in time order, renumbering ``cycle`` from 0."""
    if not tables:
        return CycleTable.empty()
    joined = {
        f.name: np.concatenate([getattr(t, f.name) for t in tables]) for f in fields(CycleTable)
    }
    joined["cycle"] = np.arange(joined["cycle"].size, dtype=np.int64)
    return CycleTable(**joined)


def summarise_cycles(
    t_s: FloatArray,
    current_a: FloatArray,
    voltage_v: FloatArray,
    temperature_c: FloatArray,
    soc: FloatArray,
    *,
    current_threshold_a: float = 0.5,
    min_soc_swing: float = 0.2,
    max_gap_s: float = 900.0,
    first_cycle: int = 0,
    final: bool = False,
) -> tuple[CycleTable, int]:
    """Cut one pack's telemetry into cycles and summarise each (see the module docstring).

    Args:
        t_s: Sample times [s], strictly increasing.
        current_a: Pack current [A], + = discharge.
        voltage_v: Pack voltage [V].
        temperature_c: Pack temperature [°C].
        soc: BMS state of charge, fraction (NaN where the BMS did not report it: the
            cycles it touches get no capacity estimate).
        current_threshold_a: Currents at or below this magnitude count as rest [A].
        min_soc_swing: Smallest discharge SoC swing that yields a capacity estimate.
        max_gap_s: Longer intervals with current flowing are not integrated [s].
        first_cycle: Index given to the first cycle found.
        final: Also summarise the last cycle even though no next discharge closes it.

    Returns:
        The complete cycles, and the index of the first sample not summarised (the start
        of the incomplete last cycle; ``len(t_s)`` when everything was used).

    Raises:
        ValueError: On arrays of different lengths, non-finite times, currents, voltages or
            temperatures, or times that do not increase.
    """
    cols = [np.asarray(a, dtype=np.float64) for a in (t_s, current_a, voltage_v, temperature_c)]
    soc_arr = np.asarray(soc, dtype=np.float64)
    n = cols[0].size
    if any(c.shape != (n,) for c in (*cols, soc_arr)):
        raise ValueError("telemetry columns must be 1-D arrays of one length")
    if not all(np.all(np.isfinite(c)) for c in cols):
        raise ValueError("t_s, current_a, voltage_v and temperature_c must be finite")
    t, i, v, temp = cols
    if n > 1 and not np.all(np.diff(t) > 0):
        raise ValueError("t_s must be strictly increasing")
    if n == 0:
        return CycleTable.empty(), 0
    state = np.where(i > current_threshold_a, 1, np.where(i < -current_threshold_a, -1, 0))
    # A cycle starts at a discharge sample whose previous non-rest sample was a charge
    # (or that is the first non-rest sample of the series).
    active = np.flatnonzero(state != 0)
    starts_list: list[int] = []
    prev = 0
    for k in active:
        if state[k] == 1 and prev != 1:
            starts_list.append(int(k))
        prev = int(state[k])
    starts = np.asarray(starts_list, dtype=np.int64)
    if starts.size == 0:
        return CycleTable.empty(), 0
    bounds = [*starts.tolist(), n]
    n_complete = starts.size if final else starts.size - 1
    dt = np.diff(t, prepend=t[0] - (t[1] - t[0] if n > 1 else 0.0))
    gap = (dt > max_gap_s) & (state != 0)
    dt_int = np.where(gap, 0.0, dt)
    rows: dict[str, list[float]] = {name: [] for name in CYCLE_COLUMNS}
    for c in range(n_complete):
        a, b = bounds[c], bounds[c + 1]
        s = slice(a, b)
        ii, vv, dd, st = i[s], v[s], dt_int[s], state[s]
        dis = st == 1
        chg = st == -1
        rows["t_start_s"].append(float(t[a]))
        rows["t_end_s"].append(float(t[b - 1]))
        rows["duration_s"].append(float(t[b - 1] - t[a] + dt[a]))
        rows["discharge_ah"].append(float(np.sum(ii[dis] * dd[dis]) / 3600.0))
        rows["charge_ah"].append(float(-np.sum(ii[chg] * dd[chg]) / 3600.0))
        rows["discharge_wh"].append(float(np.sum(ii[dis] * vv[dis] * dd[dis]) / 3600.0))
        rows["charge_wh"].append(float(-np.sum(ii[chg] * vv[chg] * dd[chg]) / 3600.0))
        # Discharge segment: from a to the last discharge sample before the first charge.
        first_chg = np.flatnonzero(chg)
        seg_end = a + (int(first_chg[0]) if first_chg.size else b - a)
        seg = slice(a, seg_end)
        seg_dis = state[seg] == 1
        soc_before = soc_arr[a - 1] if a > 0 and state[a - 1] == 0 else soc_arr[a]
        last_dis = a + int(np.flatnonzero(seg_dis)[-1])
        soc_after = soc_arr[last_dis]
        swing = float(soc_before - soc_after)
        seg_ah = float(np.sum(i[seg][seg_dis] * dt_int[seg][seg_dis]) / 3600.0)
        rows["soc_start"].append(float(soc_before))
        rows["soc_end"].append(float(soc_after))
        rows["capacity_ah"].append(seg_ah / swing if swing >= min_soc_swing else np.nan)
        # (a NaN SoC makes the swing NaN, and the comparison False: no estimate)
        # ΔV/ΔI at each step out of rest inside the cycle (and at its own start).
        lo = max(a, 1)
        idx = np.arange(lo, b)
        steps = idx[(state[idx] != 0) & (state[idx - 1] == 0) & ~gap[idx]]
        d_i = i[steps] - i[steps - 1]
        d_v = v[steps - 1] - v[steps]
        rows["resistance_ohm"].append(float(np.mean(d_v / d_i)) if steps.size else np.nan)
        span = float(np.sum(dt[s]))
        rows["temperature_mean_c"].append(
            float(np.sum(temp[s] * dt[s]) / span) if span > 0 else float(np.mean(temp[s]))
        )
        rows["temperature_min_c"].append(float(np.min(temp[s])))
        rows["temperature_max_c"].append(float(np.max(temp[s])))
        rows["current_max_a"].append(float(np.max(ii)))
        rows["gaps"].append(float(np.sum(gap[s])))
    table = CycleTable(
        cycle=np.arange(first_cycle, first_cycle + n_complete, dtype=np.int64),
        **{name: np.asarray(rows[name], dtype=np.float64) for name in CYCLE_COLUMNS},
    )
    tail = n if final else bounds[n_complete]
    return table, tail
