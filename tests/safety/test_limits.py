"""Limits per chemistry, their validation, and violation accounting (regression tests)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest

from pulsebms.safety import (
    CELL_VOLTAGE_WINDOWS_V,
    FleetState,
    PackLimits,
    PackRatings,
    Violation,
    check_violations,
    default_limits,
    fleet_limits,
    violation_cost,
)


def _ratings(chemistry: tuple[str, ...] = ("LFP", "NMC", "LCO"), parallel: int = 40) -> PackRatings:
    n = len(chemistry)
    return PackRatings(
        chemistry=chemistry,
        series=np.full(n, 14, dtype=np.int64),
        parallel=np.full(n, parallel, dtype=np.int64),
        cell_capacity_ah=np.full(n, 5.0),
        rated_power_w=np.full(n, 5000.0),
    )


def _state(n: int = 3, **values: float) -> FleetState:
    base = {
        "soc": 0.5,
        "soh": 1.0,
        "temperature_c": 25.0,
        "cell_voltage_v": 3.3,
        "current_a": 0.0,
    }
    base.update(values)
    return FleetState(**{k: np.full(n, v) for k, v in base.items()})  # type: ignore[arg-type]


def test_defaults_match_design() -> None:
    lim = PackLimits()
    assert (lim.current_min_a, lim.current_max_a) == (-100.0, 100.0)
    assert (lim.temperature_min_c, lim.temperature_max_c) == (-20.0, 60.0)
    assert (lim.soc_min, lim.soc_max, lim.c_rate_max) == (0.05, 0.95, 1.0)


@pytest.mark.parametrize(
    ("chemistry", "window"),
    [("LFP", (2.0, 3.6)), ("nmc", (2.5, 4.2)), ("LCO", (3.105, 4.1))],
)
def test_default_voltage_window_per_chemistry(chemistry: str, window: tuple[float, float]) -> None:
    lim = default_limits(chemistry)
    assert (lim.cell_voltage_min_v, lim.cell_voltage_max_v) == window


def test_overrides_apply_and_are_validated() -> None:
    assert default_limits("NMC", soc_max=0.9, current_max_a=50).soc_max == 0.9
    with pytest.raises(ValueError, match="bogus"):
        default_limits("NMC", bogus=1.0)
    with pytest.raises(ValueError, match="soc_min"):
        default_limits("NMC", soc_min=0.96)


def test_unknown_chemistry_lists_known() -> None:
    with pytest.raises(ValueError, match="LCO, LFP, NMC"):
        default_limits("NaIon")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cell_voltage_min_v", 4.3),
        ("cell_voltage_max_v", math.nan),
        ("current_min_a", 1.0),
        ("current_max_a", -1.0),
        ("temperature_max_c", -30.0),
        ("soc_min", -0.1),
        ("soc_max", 1.1),
        ("c_rate_max", 0.0),
        ("temperature_min_c", math.inf),
    ],
)
def test_impossible_limit_raises_naming_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        PackLimits(**{field: value})


def test_fleet_limits_follow_chemistry() -> None:
    lims = fleet_limits(_ratings(), soc_max=0.9)
    assert [lim.cell_voltage_max_v for lim in lims] == [3.6, 4.2, 4.1]
    assert all(lim.soc_max == 0.9 for lim in lims)


def test_no_violation_inside_and_on_bounds() -> None:
    ratings = _ratings(("NMC",))
    lim = default_limits("NMC")
    assert check_violations(_state(1, cell_voltage_v=3.7), ratings, [lim]) == []
    on_bounds = _state(1, soc=0.95, cell_voltage_v=4.2, temperature_c=60.0, current_a=100.0)
    assert check_violations(on_bounds, ratings, [lim]) == []
    assert violation_cost([]) == 0.0


def test_each_limit_is_named_with_value_and_bound() -> None:
    ratings = _ratings(("NMC",))
    lim = default_limits("NMC")
    cases = {
        "cell_voltage_max_v": {"cell_voltage_v": 4.3},
        "cell_voltage_min_v": {"cell_voltage_v": 2.4},
        "current_max_a": {"current_a": 101.0},
        "current_min_a": {"current_a": -101.0},
        "temperature_max_c": {"temperature_c": 61.0},
        "temperature_min_c": {"temperature_c": -21.0},
        "soc_max": {"soc": 0.96},
        "soc_min": {"soc": 0.04},
    }
    for name, values in cases.items():
        (v,) = check_violations(_state(1, **{"cell_voltage_v": 3.7, **values}), ratings, [lim])
        assert v.limit == name
        assert v.bound == getattr(lim, name)
        assert v.value == next(iter(values.values()))


def test_c_rate_uses_faded_capacity() -> None:
    ratings = _ratings(("NMC",), parallel=20)  # 100 A.h pack
    lim = default_limits("NMC")
    assert check_violations(_state(1, cell_voltage_v=3.7, current_a=90.0), ratings, lim) == []
    (v,) = check_violations(_state(1, cell_voltage_v=3.7, current_a=90.0, soh=0.8), ratings, lim)
    assert v.limit == "c_rate_max"
    assert v.value == pytest.approx(90.0 / 80.0)


def test_cost_is_normalised_by_window() -> None:
    ratings = _ratings(("NMC",))
    lim = default_limits("NMC")
    vs = check_violations(_state(1, cell_voltage_v=4.37, soc=0.995), ratings, lim)
    assert violation_cost(vs) == pytest.approx(0.17 / 1.7 + 0.045 / 0.9)


def test_non_finite_measurement_is_a_unit_violation() -> None:
    ratings = _ratings(("NMC",))
    vs = check_violations(
        _state(1, cell_voltage_v=3.7, temperature_c=math.nan), ratings, [default_limits("NMC")]
    )
    assert [v.limit for v in vs] == ["temperature_c_finite"]
    assert violation_cost(vs) == 1.0


def test_violations_per_pack_ordered() -> None:
    state = _state(3, cell_voltage_v=3.5)
    state.soc[2] = 0.99
    state.cell_voltage_v[0] = 3.7  # above LFP's 3.6
    vs = check_violations(state, _ratings(), fleet_limits(_ratings()))
    assert [(v.pack, v.limit) for v in vs] == [(0, "cell_voltage_max_v"), (2, "soc_max")]
    assert isinstance(vs[0], Violation)


def test_wrong_number_of_limits_raises() -> None:
    with pytest.raises(ValueError, match="PackLimits"):
        check_violations(_state(3), _ratings(), [PackLimits(), PackLimits()])


def test_voltage_windows_equal_pybamm_parameter_sets() -> None:
    import pybamm

    from pulsebms.envs.chemistry import CHEMISTRIES

    assert set(CELL_VOLTAGE_WINDOWS_V) == set(CHEMISTRIES)
    for name, chem in CHEMISTRIES.items():
        params = pybamm.ParameterValues(chem.parameter_set)
        assert CELL_VOLTAGE_WINDOWS_V[name] == (
            params["Lower voltage cut-off [V]"],
            params["Upper voltage cut-off [V]"],
        )


def test_core_imports_numpy_only() -> None:
    code = (
        "import sys, pulsebms.safety, pulsebms.safety.limits;"
        "heavy = [m for m in ('gymnasium', 'cvxpy', 'pybamm', 'casadi', 'torch', 'scipy')"
        " if m in sys.modules];"
        "print(heavy); raise SystemExit(bool(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_limits_fields_are_contract() -> None:
    assert [f.name for f in fields(PackLimits)] == [
        "cell_voltage_min_v",
        "cell_voltage_max_v",
        "current_min_a",
        "current_max_a",
        "temperature_min_c",
        "temperature_max_c",
        "soc_min",
        "soc_max",
        "c_rate_max",
    ]
