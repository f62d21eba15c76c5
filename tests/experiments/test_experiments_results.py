"""The safe-RL results command: aggregation over seeds and the stated cost limit."""

from __future__ import annotations

import pytest

from pulsebms.experiments.results import (
    RESULT_KPIS,
    ResultsSpec,
    run_results,
    summarise,
    to_markdown,
)


def test_summary_is_mean_and_sample_std_over_seeds_with_the_cost_limit_stated() -> None:
    rows = [
        {"agent": "ppo", "seed": s, **dict.fromkeys(RESULT_KPIS, 0.0), "total_cost": c}
        for s, c in ((0, 10.0), (1, 14.0))
    ] + [{"agent": "sac", "seed": 0, **dict.fromkeys(RESULT_KPIS, 2.0)}]
    summary = summarise(rows)
    assert summary["ppo"]["total_cost"] == pytest.approx((12.0, 2.8284271))
    assert summary["sac"]["constraint_cost"] == (2.0, 0.0)  # one seed: no spread
    md = to_markdown(summary, ResultsSpec(seeds=(0, 1), cost_limit=2.5))
    assert "cost limit of the Lagrangian agents: 2.5 pre-shield cost per episode" in md
    assert "| ppo | 12 ± 2.8 |" in md


def test_unknown_agent_is_refused_before_any_training() -> None:
    with pytest.raises(ValueError, match="unknown agents"):
        run_results(ResultsSpec(agents=("ppo", "dqn")))
