r"""The Battery Archive CSV format: a reader (with a report of bad rows) and a writer.

`Battery Archive <https://www.batteryarchive.org>`_ (Sandia National Laboratories)
republishes public cycling studies (CALCE, HNEI, Oxford, SNL, UL-Purdue, Michigan, …) in one
standard layout, two CSV files per cell, headers as its exporter (the open-source
``battery-archive-sw``) writes them:

* ``<cell>_cycle_data.csv`` — one row per cycle: ``Cycle_Index``, ``Start_Time``,
  ``End_Time`` (both absent in some files), ``Test_Time (s)``, ``Min_Current (A)``,
  ``Max_Current (A)``, ``Min_Voltage (V)``, ``Max_Voltage (V)``, ``Charge_Capacity (Ah)``,
  ``Discharge_Capacity (Ah)``, ``Charge_Energy (Wh)``, ``Discharge_Energy (Wh)``;
* ``<cell>_timeseries.csv`` — one row per sample: ``Date_Time``, ``Test_Time (s)``,
  ``Cycle_Index``, ``Current (A)``, ``Voltage (V)``, ``Charge_Capacity (Ah)``,
  ``Discharge_Capacity (Ah)``, ``Charge_Energy (Wh)``, ``Discharge_Energy (Wh)``,
  ``Environment_Temperature (C)``, ``Cell_Temperature (C)``.

Battery Archive currents follow the cycler convention, **positive = charge**; PulseBMS's is
positive = discharge, so the reader flips the sign (:attr:`TimeSeries.current_a`) and the
writer flips it back. Header names are matched after trimming spaces and ignoring case;
extra columns are ignored; a missing required column is an error. A row that cannot be
read (wrong field count, a number that does not parse or is not finite, a cycle index that
is not an integer, a time that does not increase) is **skipped and reported** in
:class:`LoadReport` with its line number — never silently dropped, never fatal. In a cycle
file only ``Test_Time (s)`` and the two capacities must be given; the other numbers may be
left empty (read as NaN).

:func:`archive_cycle_table` maps a cycle file onto the
:class:`~pulsebms.services.health.cycles.CycleTable` the health features read, so a public
cell can be scored and forecast like a twin pack. No file is downloaded here: the project
ships a small sample **it generated** from its own twin in this format
(``services/health/data/``, :func:`write_twin_sample`), not data copied from the archive.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "c_cycle_data.csv").write_text(
    ...     "Cycle_Index,Test_Time (s),Min_Current (A),Max_Current (A),Min_Voltage (V),"
    ...     "Max_Voltage (V),Charge_Capacity (Ah),Discharge_Capacity (Ah),"
    ...     "Charge_Energy (Wh),Discharge_Energy (Wh)\n"
    ...     "1,7200,-2.0,1.0,2.5,3.6,2.1,2.0,6.9,6.4\n"
    ...     "2,oops,-2.0,1.0,2.5,3.6,2.1,2.0,6.9,6.4\n")
    >>> cycles, report = read_cycle_data(d / "c_cycle_data.csv")
    >>> cycles.discharge_capacity_ah.tolist(), report.rows_skipped, report.problems[0]
    ([2.0], 1, "line 3: field 'Test_Time (s)': 'oops' is not a number")
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from pulsebms.core.types import FloatArray, IntArray
from pulsebms.services.health.cycles import CycleTable

__all__ = [
    "CYCLE_DATA_COLUMNS",
    "TIMESERIES_COLUMNS",
    "ArchiveCycles",
    "LoadReport",
    "TimeSeries",
    "archive_cycle_table",
    "read_cycle_data",
    "read_timeseries",
    "sample_paths",
    "write_cycle_data",
    "write_timeseries",
    "write_twin_sample",
]

CYCLE_DATA_COLUMNS = (
    "Cycle_Index",
    "Start_Time",
    "End_Time",
    "Test_Time (s)",
    "Min_Current (A)",
    "Max_Current (A)",
    "Min_Voltage (V)",
    "Max_Voltage (V)",
    "Charge_Capacity (Ah)",
    "Discharge_Capacity (Ah)",
    "Charge_Energy (Wh)",
    "Discharge_Energy (Wh)",
)
"""Columns of a Battery Archive cycle file, in the order the writer uses."""

TIMESERIES_COLUMNS = (
    "Date_Time",
    "Test_Time (s)",
    "Cycle_Index",
    "Current (A)",
    "Voltage (V)",
    "Charge_Capacity (Ah)",
    "Discharge_Capacity (Ah)",
    "Charge_Energy (Wh)",
    "Discharge_Energy (Wh)",
    "Environment_Temperature (C)",
    "Cell_Temperature (C)",
)
"""Columns of a Battery Archive time-series file, in the order the writer uses."""

_CYCLE_NUMERIC = CYCLE_DATA_COLUMNS[3:]
_CYCLE_OPTIONAL = ("Start_Time", "End_Time")
_CYCLE_NEEDED = ("Test_Time (s)", "Charge_Capacity (Ah)", "Discharge_Capacity (Ah)")
_TS_NUMERIC = (
    "Test_Time (s)",
    "Current (A)",
    "Voltage (V)",
    "Environment_Temperature (C)",
    "Cell_Temperature (C)",
)
_TS_OPTIONAL = (
    "Date_Time",
    "Charge_Capacity (Ah)",
    "Discharge_Capacity (Ah)",
    "Charge_Energy (Wh)",
    "Discharge_Energy (Wh)",
    "Environment_Temperature (C)",
)
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
_MAX_PROBLEMS = 50
_DATA_DIR = Path(__file__).with_name("data")


@dataclass(frozen=True)
class LoadReport:
    """What a read kept and what it skipped.

    Attributes:
        path: The file read.
        rows_read: Data rows kept.
        rows_skipped: Data rows skipped.
        problems: ``"line N: reason"`` for the first 50 skipped rows.
    """

    path: str
    rows_read: int
    rows_skipped: int
    problems: tuple[str, ...]


@dataclass(frozen=True)
class ArchiveCycles:
    """A Battery Archive cycle file (arrays, one entry per kept row, in file order).

    Attributes:
        cycle_index: ``Cycle_Index``.
        test_time_s: ``Test_Time (s)`` at the end of the cycle [s].
        min_current_a: ``Min_Current (A)`` (archive sign: negative = discharge).
        max_current_a: ``Max_Current (A)``.
        min_voltage_v: ``Min_Voltage (V)``.
        max_voltage_v: ``Max_Voltage (V)``.
        charge_capacity_ah: ``Charge_Capacity (Ah)``.
        discharge_capacity_ah: ``Discharge_Capacity (Ah)``.
        charge_energy_wh: ``Charge_Energy (Wh)``.
        discharge_energy_wh: ``Discharge_Energy (Wh)``.
    """

    cycle_index: IntArray
    test_time_s: FloatArray
    min_current_a: FloatArray
    max_current_a: FloatArray
    min_voltage_v: FloatArray
    max_voltage_v: FloatArray
    charge_capacity_ah: FloatArray
    discharge_capacity_ah: FloatArray
    charge_energy_wh: FloatArray
    discharge_energy_wh: FloatArray


@dataclass(frozen=True)
class TimeSeries:
    """A Battery Archive time-series file, PulseBMS sign (+ = discharge).

    Attributes:
        t_s: ``Test_Time (s)`` [s], strictly increasing.
        cycle_index: ``Cycle_Index``.
        current_a: Current [A], **+ = discharge** (the file's sign flipped).
        voltage_v: ``Voltage (V)``.
        temperature_c: ``Cell_Temperature (C)``.
        ambient_c: ``Environment_Temperature (C)`` (NaN where the file leaves it empty).
    """

    t_s: FloatArray
    cycle_index: IntArray
    current_a: FloatArray
    voltage_v: FloatArray
    temperature_c: FloatArray
    ambient_c: FloatArray


def _header_map(header: Sequence[str], required: Sequence[str], path: Path) -> dict[str, int]:
    found = {h.strip().lower(): j for j, h in enumerate(header)}
    missing = [c for c in required if c.lower() not in found]
    if missing:
        raise ValueError(f"{path}: missing Battery Archive column(s) {missing}")
    return {
        c: found[c.lower()]
        for c in (*required, *_CYCLE_OPTIONAL, *_TS_OPTIONAL)
        if c.lower() in found
    }


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"field {name!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"field {name!r}: {text!r} is not finite")
    return value


def _integer(text: str, name: str) -> int:
    value = _number(text, name)
    if value != int(value):
        raise ValueError(f"field {name!r}: {text!r} is not an integer")
    return int(value)


def _read_rows(
    path: Path, required: Sequence[str]
) -> tuple[dict[str, int], list[tuple[int, list[str]]], int]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: empty file (no header)") from None
        cols = _header_map(header, required, path)
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    return cols, rows, len(header)


def read_cycle_data(path: str | Path) -> tuple[ArchiveCycles, LoadReport]:
    """Read a ``*_cycle_data.csv`` file.

    Args:
        path: The file.

    Returns:
        The kept rows and the :class:`LoadReport`.

    Raises:
        ValueError: If the file is empty or lacks a required column.
        OSError: If it cannot be read.
    """
    p = Path(path)
    required = ("Cycle_Index", *_CYCLE_NUMERIC)
    cols, rows, width = _read_rows(p, required)
    values: dict[str, list[float]] = {c: [] for c in required}
    problems: list[str] = []
    skipped = 0
    for line, row in rows:
        try:
            if len(row) != width:
                raise ValueError(f"{len(row)} fields, the header has {width}")
            parsed = {"Cycle_Index": float(_integer(row[cols["Cycle_Index"]], "Cycle_Index"))}
            for c in _CYCLE_NUMERIC:
                text = row[cols[c]].strip()
                if not text and c not in _CYCLE_NEEDED:
                    parsed[c] = math.nan  # left empty: unknown, not an error
                else:
                    parsed[c] = _number(text, c)
        except ValueError as exc:
            skipped += 1
            if len(problems) < _MAX_PROBLEMS:
                problems.append(f"line {line}: {exc}")
            continue
        for c in required:
            values[c].append(parsed[c])
    arr = {c: np.asarray(v, dtype=np.float64) for c, v in values.items()}
    cycles = ArchiveCycles(
        cycle_index=arr["Cycle_Index"].astype(np.int64),
        test_time_s=arr["Test_Time (s)"],
        min_current_a=arr["Min_Current (A)"],
        max_current_a=arr["Max_Current (A)"],
        min_voltage_v=arr["Min_Voltage (V)"],
        max_voltage_v=arr["Max_Voltage (V)"],
        charge_capacity_ah=arr["Charge_Capacity (Ah)"],
        discharge_capacity_ah=arr["Discharge_Capacity (Ah)"],
        charge_energy_wh=arr["Charge_Energy (Wh)"],
        discharge_energy_wh=arr["Discharge_Energy (Wh)"],
    )
    return cycles, LoadReport(str(p), len(cycles.cycle_index), skipped, tuple(problems))


def read_timeseries(path: str | Path) -> tuple[TimeSeries, LoadReport]:
    """Read a ``*_timeseries.csv`` file (current sign flipped to + = discharge).

    Rows whose ``Test_Time (s)`` does not increase on the last kept row are skipped.
    ``Environment_Temperature (C)`` may be empty (NaN); every other number is required.

    Args:
        path: The file.

    Returns:
        The kept samples and the :class:`LoadReport`.

    Raises:
        ValueError: If the file is empty or lacks a required column.
        OSError: If it cannot be read.
    """
    p = Path(path)
    required = (
        "Test_Time (s)",
        "Cycle_Index",
        "Current (A)",
        "Voltage (V)",
        "Cell_Temperature (C)",
    )
    cols, rows, width = _read_rows(p, required)
    t: list[float] = []
    cyc: list[int] = []
    cur: list[float] = []
    volt: list[float] = []
    temp: list[float] = []
    amb: list[float] = []
    problems: list[str] = []
    skipped = 0
    for line, row in rows:
        try:
            if len(row) != width:
                raise ValueError(f"{len(row)} fields, the header has {width}")
            time_s = _number(row[cols["Test_Time (s)"]], "Test_Time (s)")
            if t and not time_s > t[-1]:
                raise ValueError(f"Test_Time (s) {time_s} does not increase (last {t[-1]})")
            sample = (
                _integer(row[cols["Cycle_Index"]], "Cycle_Index"),
                _number(row[cols["Current (A)"]], "Current (A)"),
                _number(row[cols["Voltage (V)"]], "Voltage (V)"),
                _number(row[cols["Cell_Temperature (C)"]], "Cell_Temperature (C)"),
            )
            env_col = cols.get("Environment_Temperature (C)")
            env_text = row[env_col].strip() if env_col is not None else ""
            env = _number(env_text, "Environment_Temperature (C)") if env_text else math.nan
        except ValueError as exc:
            skipped += 1
            if len(problems) < _MAX_PROBLEMS:
                problems.append(f"line {line}: {exc}")
            continue
        t.append(time_s)
        cyc.append(sample[0])
        cur.append(-sample[1])
        volt.append(sample[2])
        temp.append(sample[3])
        amb.append(env)
    series = TimeSeries(
        t_s=np.asarray(t, dtype=np.float64),
        cycle_index=np.asarray(cyc, dtype=np.int64),
        current_a=np.asarray(cur, dtype=np.float64),
        voltage_v=np.asarray(volt, dtype=np.float64),
        temperature_c=np.asarray(temp, dtype=np.float64),
        ambient_c=np.asarray(amb, dtype=np.float64),
    )
    return series, LoadReport(str(p), len(t), skipped, tuple(problems))


def archive_cycle_table(cycles: ArchiveCycles, series: TimeSeries | None = None) -> CycleTable:
    """A Battery Archive cycle file as a :class:`CycleTable` (one row per cycle).

    Capacities and energies are the file's; ``capacity_ah`` is the discharge capacity (a
    cycler runs full cycles between its voltage limits); ``current_max_a`` is the largest
    discharge current (``−Min_Current``). Temperatures, resistance (``ΔV/ΔI`` at the steps
    out of rest) and SoC swing come from the time series when given (NaN otherwise); the
    SoC swing is the cycle's discharge over its largest capacity.

    Args:
        cycles: The cycle file.
        series: Its time series (optional).

    Returns:
        The table, cycles in file order.
    """
    n = cycles.cycle_index.size
    t_end = cycles.test_time_s
    t_start = np.concatenate([[0.0], t_end[:-1]]) if n else t_end.copy()
    temp_mean = np.full(n, np.nan)
    temp_min = np.full(n, np.nan)
    temp_max = np.full(n, np.nan)
    resistance = np.full(n, np.nan)
    if series is not None and series.t_s.size:
        # Rest: below 2 % of the largest current (a cycler's zero reads a few mA).
        rest_a = max(0.02 * float(np.max(np.abs(series.current_a))), 1e-3)
        state = np.sign(np.where(np.abs(series.current_a) > rest_a, series.current_a, 0.0))
        for j, c in enumerate(cycles.cycle_index):
            sel = series.cycle_index == c
            if not sel.any():
                continue
            temp_mean[j] = float(np.mean(series.temperature_c[sel]))
            temp_min[j] = float(np.min(series.temperature_c[sel]))
            temp_max[j] = float(np.max(series.temperature_c[sel]))
            idx = np.flatnonzero(sel)
            idx = idx[idx > 0]
            steps = idx[(state[idx] != 0) & (state[idx - 1] == 0)]
            if steps.size:
                d_i = series.current_a[steps] - series.current_a[steps - 1]
                d_v = series.voltage_v[steps - 1] - series.voltage_v[steps]
                resistance[j] = float(np.mean(d_v / d_i))
    capacity = cycles.discharge_capacity_ah
    reference = float(np.max(capacity)) if n else 1.0
    return CycleTable(
        cycle=np.arange(n, dtype=np.int64),
        t_start_s=t_start,
        t_end_s=t_end,
        duration_s=t_end - t_start,
        discharge_ah=capacity.copy(),
        charge_ah=cycles.charge_capacity_ah.copy(),
        discharge_wh=cycles.discharge_energy_wh.copy(),
        charge_wh=cycles.charge_energy_wh.copy(),
        soc_start=np.ones(n),
        soc_end=1.0 - capacity / reference if reference > 0 else np.full(n, np.nan),
        capacity_ah=capacity.copy(),
        resistance_ohm=resistance,
        temperature_mean_c=temp_mean,
        temperature_min_c=temp_min,
        temperature_max_c=temp_max,
        current_max_a=-cycles.min_current_a,
        gaps=np.zeros(n),
    )


def _fmt(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.10g}"


def _timestamp(t_s: float) -> str:
    return (_EPOCH + timedelta(seconds=float(t_s))).strftime("%Y-%m-%d %H:%M:%S")


def write_cycle_data(path: str | Path, table: CycleTable) -> None:
    """Write a :class:`CycleTable` as a Battery Archive cycle file (one cell's cycles).

    ``Min_Current (A)`` is minus the peak discharge current, ``Max_Current (A)`` is left at
    0 (the table does not keep the peak charge current), voltages are left empty (NaN).
    """
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CYCLE_DATA_COLUMNS)
        for j in range(len(table)):
            w.writerow(
                [
                    int(table.cycle[j]) + 1,
                    _timestamp(table.t_start_s[j]),
                    _timestamp(table.t_end_s[j]),
                    _fmt(table.t_end_s[j]),
                    _fmt(-table.current_max_a[j]),
                    "0",
                    "",
                    "",
                    _fmt(table.charge_ah[j]),
                    _fmt(table.discharge_ah[j]),
                    _fmt(table.charge_wh[j]),
                    _fmt(table.discharge_wh[j]),
                ]
            )


def write_timeseries(
    path: str | Path,
    t_s: FloatArray,
    cycle_index: IntArray,
    current_a: FloatArray,
    voltage_v: FloatArray,
    temperature_c: FloatArray,
    ambient_c: FloatArray,
) -> None:
    """Write samples as a Battery Archive time-series file (current given + = discharge).

    The capacity and energy counters restart at each cycle, as the archive's do.
    """
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(TIMESERIES_COLUMNS)
        q_c = q_d = e_c = e_d = 0.0
        last_cycle = None
        for j in range(t_s.size):
            if cycle_index[j] != last_cycle:
                q_c = q_d = e_c = e_d = 0.0
                last_cycle = cycle_index[j]
            dt_h = (t_s[j] - t_s[j - 1]) / 3600.0 if j else 0.0
            i, v = float(current_a[j]), float(voltage_v[j])
            if i > 0:
                q_d += i * dt_h
                e_d += i * v * dt_h
            else:
                q_c -= i * dt_h
                e_c -= i * v * dt_h
            w.writerow(
                [
                    _timestamp(t_s[j]),
                    _fmt(t_s[j]),
                    int(cycle_index[j]),
                    _fmt(-i),
                    _fmt(v),
                    _fmt(q_c),
                    _fmt(q_d),
                    _fmt(e_c),
                    _fmt(e_d),
                    _fmt(ambient_c[j]),
                    _fmt(temperature_c[j]),
                ]
            )


def sample_paths() -> tuple[Path, Path]:
    """The shipped sample's cycle and time-series files (generated by :func:`write_twin_sample`)."""
    return (
        _DATA_DIR / "pulsebms_twin_lfp_cycle_data.csv",
        _DATA_DIR / "pulsebms_twin_lfp_timeseries.csv",
    )


def write_twin_sample(
    directory: str | Path, *, n_cycles: int = 30, seed: int = 7
) -> tuple[Path, Path]:
    """Generate the shipped sample: one LFP cell cycled by the twin, in this format.

    One single-cell pack (``series = parallel = 1``) cycled like on a cycler — constant
    current between 2 % and 98 % SoC (or the voltage cut-off), one cycle a day, the fleet
    generator's drawn C-rates, ambient and fade — for ``n_cycles`` days; every cycle goes to
    the cycle file, the last day's samples (current flowing and its neighbours, or every
    tenth at rest) to the time-series file. Deterministic for a seed:
    ``pulsebms-health sample`` regenerates the shipped files bit for bit.

    Args:
        directory: Where to write the two files.
        n_cycles: Days simulated.
        seed: Fleet seed.

    Returns:
        The cycle file and the time-series file.
    """
    from pulsebms.services.health.fleet import FleetConfig, generate_fleet

    history = generate_fleet(
        FleetConfig(
            n_packs=1,
            n_cycles=n_cycles,
            seed=seed,
            chemistries=("LFP",),
            telemetry_cycles=1,
            fault_fraction=0.0,
            cell_level=True,
            soc_window=(0.02, 0.98),
            duty_change_fraction=0.0,
        )
    )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cycle_path = out / sample_paths()[0].name
    ts_path = out / sample_paths()[1].name
    write_cycle_data(cycle_path, history.cycles[0])
    tel = history.telemetry
    if tel is None:  # pragma: no cover - telemetry_cycles=2 always keeps it
        raise RuntimeError("the sample needs telemetry")
    table = history.cycles[0]
    moving = np.abs(tel.current_a[0]) > 0.0
    near = moving | np.r_[moving[1:], False] | np.r_[False, moving[:-1]]
    keep = near | (np.arange(tel.t_s.size) % 10 == 0)
    t = tel.t_s[keep]
    # Cycle index of each sample: the cycle whose start it follows (1-based, as the archive).
    cycle_of = np.searchsorted(table.t_start_s, t, side="right")
    write_timeseries(
        ts_path,
        t,
        np.maximum(cycle_of, 1),
        tel.current_a[0][keep],
        tel.voltage_v[0][keep],
        tel.temperature_c[0][keep],
        np.full(t.size, np.nan),
    )
    return cycle_path, ts_path


if __name__ == "__main__":  # pragma: no cover - maintenance command
    for written in write_twin_sample(_DATA_DIR):
        print(written)
