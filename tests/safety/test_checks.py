"""``check_shield`` passes on the shield and can fail (it proves something)."""

from __future__ import annotations

import numpy as np
import pytest
from safety_strategies import cell_model

from pulsebms.safety import (
    PackRatings,
    Shield,
    ShieldCheckError,
    ShieldResult,
    check_shield,
)
from pulsebms.safety.reference import ReferenceShield


def _shield(dt_s: float = 60.0) -> Shield:
    ratings = PackRatings(
        ("LFP", "NMC", "LCO", "NMC"),
        np.array([16, 14, 14, 10]),
        np.array([8, 4, 20, 30]),
        np.array([2.30345, 5.1532, 0.87284, 5.1532]),
        np.array([800.0, 900.0, 850.0, 6000.0]),
    )
    return Shield(ratings, dt_s=dt_s, cell_model=cell_model())


@pytest.mark.parametrize("dt_s", [10.0, 300.0])
def test_check_shield_passes_with_reference(dt_s: float) -> None:
    shield = _shield(dt_s)
    report = check_shield(
        shield,
        n_cases=40,
        seed=1,
        reference=ReferenceShield(shield).project,
        raise_on_failure=True,
    )
    assert report.passed, str(report)
    assert report.checks["reference"] == 40
    assert "all passed" in str(report)


class _ClipOnly(Shield):
    """A broken shield: clips to the action space and ignores the cells."""

    def project(self, state, action, target_power_w=None):  # type: ignore[no-untyped-def]
        result = super().project(state, action, target_power_w)
        clipped = np.clip(np.nan_to_num(np.asarray(action, dtype=float)), -1.0, 1.0)
        return ShieldResult(
            action=clipped,
            intervened=result.intervened,
            status=result.status,
            shortfall_w=0.0,
            lower=result.lower,
            upper=result.upper,
            target_power_w=result.target_power_w,
            fallback=result.fallback,
            explain=result.explain,
        )


def test_check_shield_fails_on_a_broken_shield() -> None:
    shield = _shield()
    broken = _ClipOnly(shield.ratings, dt_s=60.0, cell_model=cell_model())
    report = check_shield(broken, n_cases=30, seed=2)
    assert not report.passed
    text = str(report)
    assert "[constraints]" in text
    assert "[box]" in text
    assert "FAILED" in text
    with pytest.raises(ShieldCheckError, match="FAILED"):
        check_shield(broken, n_cases=30, seed=2, raise_on_failure=True)
