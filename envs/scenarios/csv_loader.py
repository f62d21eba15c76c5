"""Load a user's own site measurements from a CSV file.

Format: one header row, one row per sample, units in the column names.

* Time: ``time_s`` (seconds, increasing) **or** ``timestamp`` (ISO 8601, local time,
  increasing; UTC offsets may change inside the file, as at a daylight-saving switch: the
  elapsed time is then the true one and the episode starts at the first sample's local
  time). Samples need not be equally spaced; they are interpolated linearly, and the
  series repeats after its last sample.
* Any of the signals, each in one of its accepted units:

  ============  ==============================================
  signal        accepted columns
  ============  ==============================================
  site load     ``load_w``, ``load_kw``, ``load_mw``
  PV            ``pv_w``, ``pv_kw``, ``pv_mw``
  import price  ``price_eur_per_kwh``, ``price_eur_per_mwh``
  ambient       ``ambient_c``, ``ambient_k``
  ============  ==============================================

Other columns are ignored, except a column named like a signal with no or an unknown unit
(``load``, ``pv_hp``), which is an error. Missing values (NaN, empty) are an error naming the
column and the file line.

The values are read as they are, in canonical units; how they are sized into an episode
(scaled to the fleet, or kept absolute) and whether load noise is added is the scenario's
choice (``Scenario.csv_scale``, ``Scenario.load_noise``; see
:func:`pulsebms.envs.scenarios.build_series`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from pulsebms.core.types import FloatArray

__all__ = ["CSV_COLUMNS", "CsvProfile", "CsvProfileError", "load_csv_profile"]


CSV_COLUMNS: dict[str, dict[str, tuple[float, float]]] = {
    "load_w": {"load_w": (1.0, 0.0), "load_kw": (1e3, 0.0), "load_mw": (1e6, 0.0)},
    "pv_w": {"pv_w": (1.0, 0.0), "pv_kw": (1e3, 0.0), "pv_mw": (1e6, 0.0)},
    "price_eur_per_kwh": {"price_eur_per_kwh": (1.0, 0.0), "price_eur_per_mwh": (1e-3, 0.0)},
    "ambient_c": {"ambient_c": (1.0, 0.0), "ambient_k": (1.0, -273.15)},
}
"""Canonical signal → accepted column → (factor, offset) to the canonical unit."""

_PREFIXES = {"load": "load_w", "pv": "pv_w", "price": "price_eur_per_kwh", "ambient": "ambient_c"}


class CsvProfileError(ValueError):
    """A user's CSV profile cannot be used; the message names the column and line."""


@dataclass(frozen=True)
class CsvProfile:
    """Signals read from a CSV, in canonical units.

    Attributes:
        time_s: Seconds since the first sample, strictly increasing.
        signals: Canonical name (``load_w``, ``pv_w``, ``price_eur_per_kwh``,
            ``ambient_c``) → values at ``time_s``.
        start_day: Day of year (0-based) of the first sample when timestamps were given.
        start_hour: Local hour of the first sample when timestamps were given.
        path: The file read.
    """

    time_s: FloatArray
    signals: dict[str, FloatArray]
    start_day: int | None
    start_hour: float | None
    path: str

    def sample(self, signal: str, elapsed_s: FloatArray) -> FloatArray:
        """Interpolate ``signal`` at ``elapsed_s`` seconds after the first sample (repeating).

        Raises:
            CsvProfileError: If the file has no such signal.
        """
        if signal not in self.signals:
            raise CsvProfileError(
                f"{self.path}: the scenario needs {signal!r} but the CSV has only "
                f"{sorted(self.signals)}; accepted columns: {sorted(CSV_COLUMNS[signal])}"
            )
        step = float(self.time_s[-1] - self.time_s[-2]) if self.time_s.size > 1 else 1.0
        period = float(self.time_s[-1]) + step
        return np.interp(elapsed_s, self.time_s, self.signals[signal], period=period)


def load_csv_profile(path: str | os.PathLike[str]) -> CsvProfile:
    r"""Read a site-measurement CSV (cached per path and modification time).

    Args:
        path: The CSV file (format in the module docstring).

    Returns:
        The signals in canonical units.

    Raises:
        CsvProfileError: On a missing file, missing or bad time column, a signal column with
            an unknown unit, non-numeric or missing values, or non-increasing time. The
            message names the column (and line where it applies).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "site.csv"
        >>> _ = p.write_text("time_s,load_kw\n0,1.5\n900,2.0\n")
        >>> load_csv_profile(p).signals["load_w"].tolist()
        [1500.0, 2000.0]
    """
    fspath = os.fspath(path)
    if not os.path.isfile(fspath):
        raise CsvProfileError(f"scenario CSV {fspath!r} does not exist")
    stat = os.stat(fspath)
    # Nanosecond mtime and size: a file rewritten within the float mtime's resolution
    # (or on a coarse-mtime filesystem, with another length) is read again.
    return _load_cached(os.path.abspath(fspath), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _load_cached(path: str, _mtime_ns: int, _size: int) -> CsvProfile:
    import pandas as pd  # lazy: heavy

    try:
        frame = pd.read_csv(path, skipinitialspace=True)
    except Exception as exc:
        raise CsvProfileError(f"{path}: not a readable CSV ({exc})") from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]

    def line_of(row: int) -> int:
        return row + 2  # 1-based, after the header

    def numeric(column: str) -> FloatArray:
        values: FloatArray = np.asarray(
            pd.to_numeric(frame[column], errors="coerce"), dtype=np.float64
        )
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raw = frame[column].iloc[bad[0]]
            raise CsvProfileError(
                f"{path}: column {column!r} has a missing or non-numeric value {raw!r} at line "
                f"{line_of(int(bad[0]))} ({bad.size} bad value(s) in all)"
            )
        return values

    start_day: int | None = None
    start_hour: float | None = None
    if "time_s" in frame.columns:
        time_s = numeric("time_s")
    elif "timestamp" in frame.columns:
        raw_stamps = frame["timestamp"].astype(str).str.strip()
        try:
            stamps = pd.to_datetime(raw_stamps, errors="coerce")
        except ValueError:  # mixed UTC offsets (a daylight-saving switch): go through UTC
            stamps = pd.to_datetime(raw_stamps, errors="coerce", utc=True)
        bad = np.flatnonzero(stamps.isna().to_numpy())
        if bad.size:
            raise CsvProfileError(
                f"{path}: column 'timestamp' has an unreadable time "
                f"{frame['timestamp'].iloc[bad[0]]!r} at line {line_of(int(bad[0]))}"
            )
        try:
            first = pd.Timestamp(raw_stamps.iloc[0])  # the first sample's own local time
        except ValueError as exc:
            raise CsvProfileError(
                f"{path}: column 'timestamp' has an unreadable time "
                f"{frame['timestamp'].iloc[0]!r} at line {line_of(0)}"
            ) from exc
        # Day of year on a 365-day year (31 December of a leap year is day 364).
        start_day = min(int(first.day_of_year) - 1, 364)
        start_hour = first.hour + first.minute / 60.0 + first.second / 3600.0
        time_s = ((stamps - stamps.iloc[0]).dt.total_seconds()).to_numpy(dtype=np.float64)
    else:
        raise CsvProfileError(
            f"{path}: no time column; add 'time_s' (seconds) or 'timestamp' (ISO 8601); "
            f"columns are {list(frame.columns)}"
        )
    if time_s.size < 2:
        raise CsvProfileError(f"{path}: needs at least two samples, got {time_s.size}")
    steps = np.diff(time_s)
    if np.any(steps <= 0):
        row = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise CsvProfileError(
            f"{path}: time must increase strictly; it does not at line {line_of(row)}"
        )
    time_s = time_s - time_s[0]

    signals: dict[str, FloatArray] = {}
    for column in frame.columns:
        prefix = column.split("_", 1)[0]
        if prefix not in _PREFIXES or column in ("time_s", "timestamp"):
            continue
        canonical = _PREFIXES[prefix]
        accepted = CSV_COLUMNS[canonical]
        if column not in accepted:
            raise CsvProfileError(
                f"{path}: column {column!r} has no or an unknown unit; use one of "
                f"{sorted(accepted)}"
            )
        if canonical in signals:
            raise CsvProfileError(f"{path}: {canonical!r} is given by more than one column")
        factor, offset = accepted[column]
        signals[canonical] = numeric(column) * factor + offset
    if not signals:
        known = sorted(c for cols in CSV_COLUMNS.values() for c in cols)
        raise CsvProfileError(f"{path}: no signal column; accepted columns: {known}")
    if "ambient_c" in signals and np.any(signals["ambient_c"] < -90.0):
        raise CsvProfileError(
            f"{path}: ambient below -90 °C; is the column in kelvin? use 'ambient_k' then"
        )
    for arr in signals.values():
        arr.setflags(write=False)
    time_s.setflags(write=False)
    return CsvProfile(time_s, signals, start_day, start_hour, path)
