"""ObservationParity alone: what counts as compared, mismatched and not comparable."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from pulsebms.hil.parity import ObservationParity


class Field(NamedTuple):
    """The part of a layout field that parity reads."""

    name: str
    start: int
    stop: int
    source: str


FIELDS = (Field("soc", 0, 2, "soc"), Field("demand_forecast_w", 2, 4, "demand_forecast_w"))
OK = np.zeros(2, dtype=bool)
TWIN = np.array([0.5, 0.6, 1.0, 2.0])


def test_equal_observations_pass_and_forecasts_are_not_compared() -> None:
    parity = ObservationParity(FIELDS, tolerance=0.01)
    runtime = np.array([0.505, 0.6, 9.0, 9.0], dtype=np.float32)  # forecasts differ: ignored
    parity.update(0, runtime, TWIN, OK)
    assert parity.ok
    assert parity.compared_ticks == 1
    assert parity.max_abs_diff == pytest.approx(0.005, abs=1e-6)
    assert parity.verdict().startswith("ok: 1 ticks compared")


def test_nothing_compared_fails() -> None:
    parity = ObservationParity(FIELDS)
    assert not parity.ok
    parity.update(0, np.full(4, np.nan, dtype=np.float32), TWIN, np.array([True, False]))
    assert (parity.compared_ticks, parity.safe_ticks, parity.ok) == (0, 1, False)
    assert parity.verdict().startswith("FAIL: no tick compared")


@pytest.mark.parametrize(
    "runtime",
    [
        np.array([0.5, 0.6, 1.0], dtype=np.float32),  # shape: never skipped
        np.array([0.5, 0.6, 1.0, 2.0, 0.0], dtype=np.float32),
        np.array([np.nan, 0.6, 1.0, 2.0], dtype=np.float32),  # non-finite: a mismatch
        np.array([0.6, 0.5, 1.0, 2.0], dtype=np.float32),  # permuted
    ],
    ids=["shorter", "longer", "nan", "permuted"],
)
def test_a_differing_tick_fails(runtime: np.ndarray) -> None:
    parity = ObservationParity(FIELDS, tolerance=0.01)
    parity.update(0, TWIN.astype(np.float32), TWIN, OK)
    parity.update(1, runtime, TWIN, OK)
    parity.update(2, TWIN.astype(np.float32), TWIN, OK)
    assert (parity.compared_ticks, parity.mismatch_ticks, parity.ok) == (3, 1, False)
    assert parity.detail is not None
    assert parity.detail.startswith("tick 1:")
    assert np.isfinite(parity.max_abs_diff)


def test_negative_tolerance_is_refused() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        ObservationParity(FIELDS, tolerance=-1.0)
