"""Battery Archive CSV: the shipped sample, malformed rows, round trips, regeneration."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pulsebms.services.health.cycles import summarise_cycles
from pulsebms.services.health.features import FEATURE_NAMES, pack_features
from pulsebms.services.health.public_format import (
    CYCLE_DATA_COLUMNS,
    archive_cycle_table,
    read_cycle_data,
    read_timeseries,
    sample_paths,
    write_cycle_data,
    write_timeseries,
    write_twin_sample,
)


def test_shipped_sample_reads_clean_and_scores_like_a_pack() -> None:
    cycle_path, ts_path = sample_paths()
    cycles, report = read_cycle_data(cycle_path)
    assert report.rows_skipped == 0
    assert report.rows_read == 30
    assert cycles.cycle_index.tolist() == list(range(1, 31))
    assert np.all(np.diff(cycles.test_time_s) > 0)
    # One LFP cell of 2.3 A.h fading: discharge capacity stays plausible and falls overall.
    assert np.all((cycles.discharge_capacity_ah > 0.5) & (cycles.discharge_capacity_ah < 2.4))
    assert cycles.discharge_capacity_ah[-5:].mean() < cycles.discharge_capacity_ah[:5].mean()
    series, ts_report = read_timeseries(ts_path)
    assert ts_report.rows_skipped == 0
    assert series.t_s.size > 100
    # Archive sign is + = charge; the reader gives + = discharge: a day starts discharging.
    first_move = series.current_a[np.abs(series.current_a) > 0][0]
    assert first_move > 0
    assert np.all(np.isnan(series.ambient_c))  # the sample leaves the ambient empty
    table = archive_cycle_table(cycles, series)
    assert len(table) == 30
    assert np.isfinite(table.temperature_mean_c[-1])  # the last day has samples
    assert np.isnan(table.temperature_mean_c[0])  # the first has none in the sample
    assert table.resistance_ohm[-1] > 0
    x = pack_features(table, nominal_capacity_ah=2.3, chemistry="LFP")
    assert x.shape == (30, len(FEATURE_NAMES))
    assert np.all(np.isfinite(x[:, FEATURE_NAMES.index("capacity_ratio")]))


def test_malformed_rows_are_skipped_and_reported(tmp_path: Path) -> None:
    cycle_path, ts_path = sample_paths()
    lines = cycle_path.read_text().splitlines()
    bad = [
        lines[0],
        lines[1],
        "2,2024-01-02,2024-01-03,abc,-2,0,,,1.2,1.3,4,4.2",  # not a number
        "3,2024-01-03,2024-01-04,1e5,-2,0,,,1.2,1.3,4",  # a field short
        "4.5,2024-01-03,2024-01-04,1e5,-2,0,,,1.2,1.3,4,4.2",  # cycle not an integer
        "5,2024-01-03,2024-01-04,1e5,-2,0,,,nan,1.3,4,4.2",  # not finite
        "",  # blank lines are not rows
        *lines[6:9],
    ]
    path = tmp_path / "bad_cycle_data.csv"
    path.write_text("\n".join(bad) + "\n")
    cycles, report = read_cycle_data(path)
    assert report.rows_read == 4
    assert report.rows_skipped == 4
    assert [p.split(":")[0] for p in report.problems] == ["line 3", "line 4", "line 5", "line 6"]
    assert "not a number" in report.problems[0]
    assert "fields" in report.problems[1]
    assert "not an integer" in report.problems[2]
    assert "not finite" in report.problems[3]
    assert cycles.cycle_index.tolist() == [1, 6, 7, 8]

    ts_lines = ts_path.read_text().splitlines()
    fields = ts_lines[4].split(",")
    fields[2] = "x"  # Cycle_Index
    ts_bad = [*ts_lines[:4], ts_lines[2], ",".join(fields), *ts_lines[5:8]]
    ts_file = tmp_path / "bad_timeseries.csv"
    ts_file.write_text("\n".join(ts_bad) + "\n")
    series, ts_report = read_timeseries(ts_file)
    assert ts_report.rows_read == 6
    assert ts_report.rows_skipped == 2
    assert "does not increase" in ts_report.problems[0]
    assert np.all(np.diff(series.t_s) > 0)


def test_missing_columns_and_empty_files_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty file"):
        read_cycle_data(empty)
    header = ",".join(c for c in CYCLE_DATA_COLUMNS if c != "Discharge_Capacity (Ah)")
    partial = tmp_path / "partial.csv"
    partial.write_text(header + "\n")
    with pytest.raises(ValueError, match=r"Discharge_Capacity \(Ah\)"):
        read_cycle_data(partial)
    # Header names are matched without case or surrounding spaces; extra columns pass.
    relaxed = tmp_path / "relaxed.csv"
    names = [f" {c.upper()} " for c in CYCLE_DATA_COLUMNS[3:]]
    relaxed.write_text("cycle_index," + ",".join(names) + ",Extra\n1,10,-1,1,2.5,3.6,1,1,3,3,7\n")
    cycles, report = read_cycle_data(relaxed)
    assert report.rows_read == 1
    assert cycles.discharge_capacity_ah.tolist() == [1.0]


def test_writer_and_reader_round_trip(tmp_path: Path) -> None:
    t = np.arange(0.0, 3 * 3600.0, 60.0)
    i = np.where((t % 3600) < 1800, 2.0, -2.0)
    i[::30] = 0.0
    v = 3.3 - 0.01 * i
    temp = 25.0 + 0.5 * np.sin(t / 3600.0)
    soc = 0.9 - np.cumsum(i) * 60.0 / 3600.0 / 2.3
    table, _ = summarise_cycles(t, i, v, temp, soc, final=True)
    write_cycle_data(tmp_path / "c_cycle_data.csv", table)
    back, report = read_cycle_data(tmp_path / "c_cycle_data.csv")
    assert report.rows_skipped == 0
    np.testing.assert_allclose(back.discharge_capacity_ah, table.discharge_ah, rtol=1e-9)
    np.testing.assert_allclose(back.charge_energy_wh, table.charge_wh, rtol=1e-9)
    np.testing.assert_allclose(back.min_current_a, -table.current_max_a)
    cycle_index = np.searchsorted(table.t_start_s, t, side="right")
    write_timeseries(tmp_path / "c_timeseries.csv", t, cycle_index, i, v, temp, temp - 1.0)
    series, ts_report = read_timeseries(tmp_path / "c_timeseries.csv")
    assert ts_report.rows_skipped == 0
    np.testing.assert_allclose(series.current_a, i)
    np.testing.assert_allclose(series.voltage_v, v, rtol=1e-9)
    np.testing.assert_allclose(series.ambient_c, temp - 1.0, rtol=1e-9)


def test_sample_regenerates_bit_for_bit(tmp_path: Path) -> None:
    written = write_twin_sample(tmp_path)
    for new, shipped in zip(written, sample_paths(), strict=True):
        assert new.name == shipped.name
        assert new.read_bytes() == shipped.read_bytes()
    shutil.rmtree(tmp_path)
