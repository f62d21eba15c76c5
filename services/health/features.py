"""Engineered health features per pack and cycle, from cycle summaries only (no look-ahead).

Row ``k`` of a pack's feature matrix uses cycles ``0…k`` of its
:class:`~pulsebms.services.health.cycles.CycleTable` and its nominal capacity. The
columns (:data:`FEATURE_NAMES`):

* **capacity fade** — ``capacity_ratio``: rolling median (``window`` cycles, NaN-skipping)
  of the capacity estimates over the nominal capacity; ``capacity_ratio_long``: the same
  over ``4 × window`` cycles; ``capacity_trend``: a least-squares line through the last
  ``4 × window`` estimates, read at the present cycle (less noise than a median, no lag on
  a steady fade); ``discharge_ratio``: rolling median of the discharged A·h over the
  nominal capacity (falls with fade at a fixed SoC window);
* **resistance growth** — ``resistance_ratio``: rolling median of the ``ΔV/ΔI`` estimates
  over the pack's own median of its first ``window`` cycles (1 = as commissioned);
  ``efficiency``: rolling median of discharged / charged energy;
* **temperature exposure** — ``temperature_c``: rolling mean cycle temperature;
  ``heat_exposure_kh``: cumulative kelvin-hours above 25 °C / 1000; ``arrhenius_days``:
  cumulative days weighted by ``exp(−Eₐ/R (1/T − 1/298.15))`` with ``Eₐ`` = 50 kJ/mol (a
  calendar-ageing clock);
* **throughput and use** — ``throughput_efc``: cumulative full equivalent cycles (charge
  plus discharge over twice the nominal capacity); ``age_days``; ``dod``: rolling mean SoC
  swing; ``c_rate``: rolling mean peak discharge current over the nominal capacity;
* **chemistry** — one indicator column per chemistry of :data:`CHEMISTRY_COLUMNS`.

Missing estimates (a shallow cycle gives no capacity, a cycle without a step from rest no
resistance) stay NaN in rolling statistics only if the whole window lacks them; the
gradient-boosting model takes NaN as is, the linear baseline imputes medians.

Example:
    >>> import numpy as np
    >>> from pulsebms.services.health.cycles import summarise_cycles
    >>> t = np.arange(0.0, 9 * 600.0, 600.0)
    >>> i = np.array([0.0, 10, 10, 0, -10, -10, 0, 10, 10])
    >>> soc = np.array([0.9, 0.8, 0.7, 0.7, 0.8, 0.9, 0.9, 0.8, 0.7])
    >>> table, _ = summarise_cycles(t, i, 50 - 0.05 * i, np.full(9, 25.0), soc)
    >>> x = pack_features(table, nominal_capacity_ah=20.0, chemistry="NMC")
    >>> x.shape == (1, len(FEATURE_NAMES)), round(float(x[0, 0]), 3)
    (True, 0.833)
"""

from __future__ import annotations

import warnings

import numpy as np

from pulsebms.core.types import FloatArray
from pulsebms.services.health.cycles import CycleTable

__all__ = ["CHEMISTRY_COLUMNS", "FEATURE_NAMES", "pack_features", "rolling"]

CHEMISTRY_COLUMNS = ("LFP", "NMC", "LCO")
"""Chemistries with an indicator column (others get zeros in all three)."""

FEATURE_NAMES = (
    "capacity_ratio",
    "capacity_ratio_long",
    "capacity_trend",
    "discharge_ratio",
    "resistance_ratio",
    "efficiency",
    "temperature_c",
    "heat_exposure_kh",
    "arrhenius_days",
    "throughput_efc",
    "age_days",
    "dod",
    "c_rate",
    *(f"chem_{c}" for c in CHEMISTRY_COLUMNS),
)
"""Columns of :func:`pack_features`, in order."""

_EA_J_MOL = 50_000.0
_R_J_MOL_K = 8.314462618


def rolling(values: FloatArray, window: int, how: str = "median") -> FloatArray:
    """Trailing rolling median or mean over ``window`` values, skipping NaN.

    Args:
        values: The series.
        window: Values per window (the first rows use what exists).
        how: ``"median"`` or ``"mean"``.

    Returns:
        The rolling statistic; NaN where the whole window is NaN.

    Example:
        >>> rolling(np.array([1.0, np.nan, 3.0, 5.0]), 2).tolist()
        [1.0, 1.0, 3.0, 4.0]
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n == 0:
        return x.copy()
    padded = np.concatenate([np.full(window - 1, np.nan), x])
    view = np.lib.stride_tricks.sliding_window_view(padded, window)
    func = np.nanmedian if how == "median" else np.nanmean
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN windows → NaN
        out: FloatArray = func(view, axis=1)
    return out


def _rolling_trend(values: FloatArray, window: int) -> FloatArray:
    """A least-squares line through the last ``window`` finite values, read at each row.

    Rows with fewer than three finite values in their window get their rolling median.
    """
    x = np.asarray(values, dtype=np.float64)
    out = rolling(x, window)
    for k in range(x.size):
        lo = max(0, k - window + 1)
        seg = x[lo : k + 1]
        ok = np.isfinite(seg)
        if np.count_nonzero(ok) >= 3:
            pos = np.arange(lo, k + 1, dtype=np.float64)[ok]
            slope, intercept = np.polyfit(pos, seg[ok], 1)
            out[k] = intercept + slope * k
    return out


def pack_features(
    table: CycleTable, *, nominal_capacity_ah: float, chemistry: str, window: int = 5
) -> FloatArray:
    """The feature matrix of one pack, one row per cycle (see the module docstring).

    Args:
        table: The pack's cycle summaries, in time order.
        nominal_capacity_ah: Nominal pack capacity [A.h].
        chemistry: Chemistry name.
        window: Cycles per rolling statistic.

    Returns:
        Array of shape ``(len(table), len(FEATURE_NAMES))``.

    Raises:
        ValueError: On a non-positive nominal capacity.
    """
    if not nominal_capacity_ah > 0:
        raise ValueError(f"nominal_capacity_ah must be > 0, got {nominal_capacity_ah}")
    n = len(table)
    cap = nominal_capacity_ah
    dis_ah = np.nan_to_num(table.discharge_ah)
    chg_ah = np.nan_to_num(table.charge_ah)
    with np.errstate(invalid="ignore", divide="ignore"):
        efficiency = table.discharge_wh / table.charge_wh
    efficiency = np.where(np.isfinite(efficiency), efficiency, np.nan)
    resistance = np.where(table.resistance_ohm > 0, table.resistance_ohm, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        baseline = float(np.nanmedian(resistance[:window])) if n else np.nan
    temp = table.temperature_mean_c
    period_s = np.diff(table.t_end_s, prepend=table.t_start_s[:1] if n else table.t_end_s[:0])
    period_s = np.where(np.isfinite(period_s) & (period_s > 0), period_s, table.duration_s)
    period_s = np.nan_to_num(period_s)
    temp_filled = np.where(np.isfinite(temp), temp, 25.0)
    arrhenius = np.exp(-_EA_J_MOL / _R_J_MOL_K * (1.0 / (temp_filled + 273.15) - 1.0 / 298.15))
    cap_ratio = table.capacity_ah / cap
    columns = [
        rolling(cap_ratio, window),
        rolling(cap_ratio, 4 * window),
        _rolling_trend(cap_ratio, 4 * window),
        rolling(table.discharge_ah / cap, window),
        rolling(resistance, window) / baseline if np.isfinite(baseline) else np.full(n, np.nan),
        rolling(efficiency, window),
        rolling(temp, window, "mean"),
        np.cumsum(np.maximum(temp_filled - 25.0, 0.0) * period_s / 3600.0) / 1000.0,
        np.cumsum(arrhenius * period_s / 86400.0),
        np.cumsum((dis_ah + chg_ah) / (2.0 * cap)),
        (table.t_end_s - (table.t_start_s[0] if n else 0.0)) / 86400.0,
        rolling(table.soc_start - table.soc_end, window, "mean"),
        rolling(table.current_max_a / cap, window, "mean"),
        *(np.full(n, float(chemistry.upper() == c)) for c in CHEMISTRY_COLUMNS),
    ]
    return np.column_stack(columns) if n else np.zeros((0, len(FEATURE_NAMES)))
