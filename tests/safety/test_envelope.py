"""The current envelope and the shield's use of it.

Safe by construction, tight to its own definition, and the shield's vectorised look-up
computes exactly the documented formulas (checked against a slow scalar re-derivation).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import safety_strategies as sst
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulsebms.benchmarks.shield import _fleet
from pulsebms.safety import Shield
from pulsebms.safety.checks import random_state
from pulsebms.safety.envelope import (
    OCV_CHARGE,
    OCV_DISCHARGE,
    R_DISCHARGE,
    R_MAX,
    X_CHARGE,
    X_DISCHARGE,
    CurrentEnvelope,
    EnvelopeGroup,
)

RANGE_C = (-20.0, 60.0)


def _envelope(chem: str, dt_s: float, cap_a: float) -> CurrentEnvelope:
    lim = {"LFP": (2.505, 3.645), "NMC": (2.505, 4.195), "LCO": (3.005, 4.195)}[chem]
    group = EnvelopeGroup(chem, sst.CELL_CAPACITY_AH[chem], lim[0], lim[1], cap_a)
    return CurrentEnvelope(
        sst.cell_model(),
        [group],
        dt_s=dt_s,
        duration_s=max(dt_s, 1000.0),
        temperature_range_c=RANGE_C,
    )


@settings(max_examples=80, deadline=None)
@given(
    chem=st.sampled_from(sst.CHEMISTRIES),
    dt_s=st.sampled_from(sst.DT_CHOICES_S),
    soc=st.floats(0.0, 1.0),
    temperature_c=st.floats(*RANGE_C),
)
def test_every_state_of_a_grid_cell_keeps_its_voltage_window(
    chem: str, dt_s: float, soc: float, temperature_c: float
) -> None:
    """At the tabulated current, the one-step model at the *actual* state stays inside."""
    env = _envelope(chem, dt_s, cap_a=3.0 * sst.CELL_CAPACITY_AH[chem])
    model, group = sst.cell_model(), env.groups[0]
    row = env.lookup(0, soc, temperature_c)
    k = dt_s / 3600.0 / group.cell_capacity_ah
    for x, direction in ((row[X_DISCHARGE], "discharge"), (-row[X_CHARGE], "charge")):
        r = float(model.resistance_ohm(chem, soc, temperature_c, env.duration_s, direction))
        soc_end = soc - k * x
        # zero current is the fallback, admissible whatever the rest voltage; the SoC
        # bound keeps a step inside [0, 1]
        if x == 0.0 or not 0.0 <= soc_end <= 1.0:
            continue
        v_end = float(model.ocv_v(chem, soc_end)) - r * x
        assert (
            group.voltage_min_v - 1e-12 <= v_end if x > 0 else v_end <= group.voltage_max_v + 1e-12
        )
    assert 0.0 <= row[X_DISCHARGE] <= group.current_cap_a
    assert 0.0 <= row[X_CHARGE] <= group.current_cap_a
    # the conversion voltages are lower bounds of the OCV the step sees
    assert row[OCV_CHARGE] <= model.ocv_v(chem, soc) + 1e-12
    assert row[OCV_DISCHARGE] <= model.ocv_v(chem, soc - k * row[X_DISCHARGE]) + 1e-12
    assert row[R_MAX] >= row[R_DISCHARGE] > 0.0


@pytest.mark.parametrize("chem", sst.CHEMISTRIES)
def test_the_tabulated_root_is_tight(chem: str) -> None:
    """Below the cap, a slightly larger current breaks the cell's own worst-corner bound."""
    env = _envelope(chem, 300.0, cap_a=3.0 * sst.CELL_CAPACITY_AH[chem])
    model, group = sst.cell_model(), env.groups[0]
    k = 300.0 / 3600.0 / group.cell_capacity_ah
    table = env.table.reshape(env.soc_cells, env.temperature_cells, -1)
    rng = np.random.default_rng(0)
    checked = 0
    for a, b in zip(
        rng.integers(0, env.soc_cells - 1, 300),
        rng.integers(0, env.temperature_cells, 300),
        strict=True,
    ):
        row = table[a, b]
        x = row[X_DISCHARGE]
        if 0.0 < x < group.current_cap_a:
            s_lo = a * env.soc_step
            over = x + 1e-9 * group.current_cap_a
            v = float(model.ocv_v(chem, s_lo - k * over)) - row[R_DISCHARGE] * over
            assert v < group.voltage_min_v
            checked += 1
    assert checked > 50


def _slow_box(shield: Shield, state) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Stage 1 re-derived pack by pack from the module docstring and the envelope rows."""
    env, lim, r = shield.envelope, shield.limits, shield.ratings
    keep = 1.0 - shield.current_margin
    lower, upper = np.zeros(shield.n_packs), np.zeros(shield.n_packs)
    for i in range(shield.n_packs):
        li = lim[i]
        cap = float(r.cell_capacity_ah[i])
        key = EnvelopeGroup(
            r.chemistry[i].upper(),
            cap,
            li.cell_voltage_min_v + shield.voltage_margin_v,
            li.cell_voltage_max_v - shield.voltage_margin_v,
            li.c_rate_max * keep * cap,
        )
        s, t, v = float(state.soc[i]), float(state.temperature_c[i]), float(state.cell_voltage_v[i])
        h, cur = float(state.soh[i]), float(state.current_a[i])
        row = env.lookup(env.groups.index(key), s, t)
        k = shield.dt_s / 3600.0 / cap
        p, n_series = float(r.parallel[i]), float(r.series[i])
        x_soc = ((li.soc_max - shield.soc_margin - s) / k, (s - li.soc_min - shield.soc_margin) / k)
        x_cur = (-li.current_min_a * keep / p / h, li.current_max_a * keep / p / h)
        derate = min(
            (t - li.temperature_min_c) / shield.derating_band_c,
            (li.temperature_max_c - t) / shield.derating_band_c,
            1.0,
        )
        e_low = v + row[R_MAX] * min(cur / p, 0.0) / h
        scale = p * n_series / float(r.rated_power_w[i])
        xc = max(min(row[X_CHARGE], x_soc[0], x_cur[0]), 0.0) * derate
        xd = max(min(row[X_DISCHARGE], x_soc[1], x_cur[1]), 0.0) * derate
        vc = min(row[OCV_CHARGE], e_low)
        vd = min(row[OCV_DISCHARGE], e_low) - row[R_DISCHARGE] * xd
        lower[i] = min(max(-xc * h * vc * scale, -1.0), 0.0)
        upper[i] = min(max(xd * h * vd * scale, 0.0), 1.0)
    return lower, upper


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shield=sst.shields(max_packs=6), seed=st.integers(0, 2**32 - 1))
def test_vectorised_box_equals_the_scalar_derivation(shield: Shield, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(5):
        state = random_state(shield, rng)
        lower, upper, fallback = shield.bounds(state)
        assert not fallback.any()
        slow_lower, slow_upper = _slow_box(shield, state)
        np.testing.assert_allclose(lower, slow_lower, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(upper, slow_upper, rtol=1e-12, atol=1e-13)


def test_shields_of_one_fleet_share_their_tables() -> None:
    fleet = _fleet(6, np.random.default_rng(0))
    a, b = Shield(fleet, dt_s=300.0), Shield(fleet, dt_s=300.0)
    assert np.array_equal(a.envelope.table, b.envelope.table)
    assert len(a.envelope.groups) == 3  # one per chemistry
    assert a.envelope.table.nbytes < 8e6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dt_s": 0.0}, "dt_s"),
        ({"dt_s": math.nan}, "dt_s"),
        ({"soc_step": 0.003}, "whole number"),
        ({"soc_step": 0.004}, "must divide the resistance SoC grid"),
        ({"temperature_step_c": 3.0}, "must divide the resistance temperature grid"),
        ({"temperature_range_c": (10.0, 0.0)}, "ordered"),
    ],
)
def test_bad_grids_raise(kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    args = {"dt_s": 300.0, "duration_s": 1000.0, "temperature_range_c": RANGE_C} | kwargs
    group = EnvelopeGroup("NMC", 5.15, 2.5, 4.2, 5.0)
    with pytest.raises(ValueError, match=match):
        CurrentEnvelope(sst.cell_model(), [group], **args)


@pytest.mark.parametrize(
    ("group", "match"),
    [
        (EnvelopeGroup("NaS", 5.0, 2.5, 4.2, 5.0), "no cell tables"),
        (EnvelopeGroup("NMC", 0.0, 2.5, 4.2, 5.0), "must be > 0"),
        (EnvelopeGroup("NMC", 5.0, 4.2, 2.5, 5.0), "empty voltage window"),
    ],
)
def test_bad_groups_raise(group: EnvelopeGroup, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CurrentEnvelope(
            sst.cell_model(), [group], dt_s=300.0, duration_s=1000.0, temperature_range_c=RANGE_C
        )
