"""Hypothesis strategies of the safety tests, all in one place.

Fleets mix chemistries and pack shapes; states are drawn inside the operating envelope
(with packs exactly on the SoC and temperature limits, where the admissible set shrinks to
one side or to zero) or with packs outside it, invalid or non-finite; actions include
NaN, ±inf and out-of-range entries when asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from hypothesis import strategies as st

from pulsebms.safety import CellModel, FleetState, PackRatings, Shield, fleet_limits

CHEMISTRIES = ("LFP", "NMC", "LCO")
CELL_CAPACITY_AH = {"LFP": 2.30345, "NMC": 5.1532, "LCO": 0.87284}
DT_CHOICES_S = (1.0, 10.0, 60.0, 300.0)


@cache
def cell_model() -> CellModel:
    """The shipped tables, loaded once per test session."""
    return CellModel.load()


@dataclass(frozen=True)
class Case:
    """A shield, a state and a request."""

    shield: Shield
    state: FleetState
    action: np.ndarray
    target_power_w: float | None


@st.composite
def ratings(draw: st.DrawFn, min_packs: int = 1, max_packs: int = 8) -> PackRatings:
    n = draw(st.integers(min_packs, max_packs))
    chem = tuple(draw(st.lists(st.sampled_from(CHEMISTRIES), min_size=n, max_size=n)))
    series = np.array(draw(st.lists(st.integers(1, 24), min_size=n, max_size=n)), dtype=np.int64)
    parallel = np.array(draw(st.lists(st.integers(1, 40), min_size=n, max_size=n)), dtype=np.int64)
    capacity = np.array([CELL_CAPACITY_AH[c] for c in chem])
    # Rated power from 0.2 C to 3 C at 3.5 V per cell: some packs are power-limited by
    # the action space, others by the cells.
    c_rate = np.array(draw(st.lists(st.floats(0.2, 3.0), min_size=n, max_size=n)))
    rated = c_rate * capacity * parallel * series * 3.5
    return PackRatings(chem, series, parallel, capacity, rated)


@st.composite
def shields(draw: st.DrawFn, min_packs: int = 1, max_packs: int = 8) -> Shield:
    r = draw(ratings(min_packs, max_packs))
    soc_max = draw(st.sampled_from((0.95, 0.9, 1.0)))
    current = draw(st.sampled_from((100.0, 20.0, 400.0)))
    limits = fleet_limits(r, soc_max=soc_max, current_max_a=current, current_min_a=-current)
    dt_s = draw(st.sampled_from(DT_CHOICES_S))
    return Shield(r, limits, dt_s, cell_model=cell_model())


def _edge_or(draw: st.DrawFn, lo: float, hi: float) -> float:
    return draw(st.one_of(st.just(lo), st.just(hi), st.floats(lo, hi)))


@st.composite
def states(draw: st.DrawFn, shield: Shield, inside: bool = True) -> FleetState:
    n = shield.n_packs
    soc, temp, volt, soh = [], [], [], []
    valid = np.ones(n, dtype=bool)
    for i, lim in enumerate(shield.limits):
        s = _edge_or(draw, lim.soc_min, lim.soc_max)
        t = _edge_or(draw, lim.temperature_min_c, lim.temperature_max_c)
        ocv = float(shield.cell_model.ocv_v(shield.ratings.chemistry[i], s))
        v = min(
            max(ocv + draw(st.floats(-0.05, 0.05)), lim.cell_voltage_min_v), lim.cell_voltage_max_v
        )
        h = draw(st.floats(0.5, 1.0))
        if not inside and draw(st.booleans()):
            kind = draw(st.integers(0, 6))
            if kind == 0:
                s = lim.soc_max + draw(st.floats(1e-9, 0.05))
            elif kind == 1:
                s = lim.soc_min - draw(st.floats(1e-9, 0.05))
            elif kind == 2:
                t = lim.temperature_max_c + draw(st.floats(1e-9, 30.0))
            elif kind == 3:
                v = lim.cell_voltage_max_v + draw(st.floats(1e-9, 0.5))
            elif kind == 4:
                valid[i] = False
            elif kind == 5:
                s = math.nan
            else:
                t = draw(st.sampled_from((math.inf, -math.inf, math.nan)))
        soc.append(s)
        temp.append(t)
        volt.append(v)
        soh.append(h)
    return FleetState(
        soc=np.array(soc),
        soh=np.array(soh),
        temperature_c=np.array(temp),
        cell_voltage_v=np.array(volt),
        current_a=np.zeros(n),
        valid=valid,
    )


def actions(n: int, invalid: bool = False) -> st.SearchStrategy[np.ndarray]:
    value = st.floats(-1.0, 1.0) | st.sampled_from((-1.0, 0.0, 1.0))
    if invalid:
        value = value | st.sampled_from((math.nan, math.inf, -math.inf, 1.5, -3.0, 1e300))
    return st.lists(value, min_size=n, max_size=n).map(lambda xs: np.array(xs, dtype=np.float64))


@st.composite
def cases(
    draw: st.DrawFn,
    inside: bool = True,
    invalid_actions: bool = False,
    min_packs: int = 1,
    max_packs: int = 8,
) -> Case:
    shield = draw(shields(min_packs, max_packs))
    state = draw(states(shield, inside=inside))
    action = draw(actions(shield.n_packs, invalid=invalid_actions))
    total = float(np.sum(shield.ratings.rated_power_w))
    target = draw(st.none() | st.floats(-1.3, 1.3).map(lambda f: f * total))
    return Case(shield, state, action, target)
