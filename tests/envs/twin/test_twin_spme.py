"""SPMe physics twin: golden accuracy against PyBaMM's adaptive solve, and few fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin import make_twin
from pulsebms.envs.twin.reference import ReferenceCell

pytestmark = pytest.mark.slow

CASES = [
    # (name, initial SoC, temperature degC, currents in C-rate units)
    ("pulses", 0.5, 25.0, [1.0, -1.0, 0.0, 1.0, 0.0, -1.0, 1.0, 1.0, -1.0, 0.0]),
    ("near_cut_off", 0.08, 25.0, [0.5, 0.5, 1.0, 0.0, 1.0, 0.5, 0.0, 1.0]),
    ("cold", 0.5, -10.0, [0.5, -0.5, 0.5, 0.0, -0.5, 0.5, 0.5, 0.0]),
    ("hot", 0.5, 45.0, [1.0, -1.0, 1.0, 0.0, -1.0, 1.0, -1.0, 0.0]),
]


@pytest.mark.parametrize(("name", "soc", "temperature_c", "c_rates"), CASES)
def test_spme_voltage_within_one_millivolt(
    name: str, soc: float, temperature_c: float, c_rates: list[float]
) -> None:
    """Regression: SPMe steps stay ≤ 1 mV from IDAKLU at 1e-8, on the stepper, not CVODES."""
    spec = PackSpec(
        "NMC", series=1, parallel=1, initial_soc=soc, initial_temperature_c=temperature_c
    )
    twin = make_twin([spec], model_name="SPMe", jit=False, ambient_c=temperature_c)
    ref = ReferenceCell("NMC", soc, temperature_c, model_name="SPMe", rtol=1e-8, atol=1e-8)
    capacity = float(twin.ratings.capacity_ah[0])
    worst = 0.0
    for c_rate in c_rates:
        current = c_rate * capacity
        r = ref.step(current, 10.0)
        s = twin.step_current(np.array([current]), 10.0, temperature_c)
        assert not s.faulted[0], name
        worst = max(worst, abs(r["voltage_v"] - float(s.cell_voltage_v[0])))
    assert worst * 1e3 <= 1.0, (name, worst)
    assert twin.fallback_steps <= 1, (name, twin.fallback_steps)
