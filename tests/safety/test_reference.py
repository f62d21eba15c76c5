"""The cvxpy reference: built once (DPP), and the fast shield agrees with it to 1e-6."""

from __future__ import annotations

import numpy as np
import safety_strategies as sst
from hypothesis import HealthCheck, given, settings

from pulsebms.safety.reference import ReferenceProjection, ReferenceShield


def test_problem_is_dpp_and_reused() -> None:
    ref = ReferenceProjection(3)
    assert ref.problem.is_dpp()
    problem = ref.problem
    for target in (0.0, 0.5, 5.0):
        ref.solve(np.zeros(3), -np.ones(3), np.ones(3), np.ones(3), target)
    assert ref.problem is problem


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sst.cases(invalid_actions=True, max_packs=12))
def test_fast_shield_agrees_with_cvxpy(case: sst.Case) -> None:
    fast = case.shield.project(case.state, case.action, case.target_power_w).action
    ref = ReferenceShield(case.shield).project(case.state, case.action, case.target_power_w)
    err = np.max(np.abs(fast - ref)) / max(1.0, float(np.max(np.abs(ref))))
    assert err <= 1e-6
