"""The safe-RL results command: aggregation over seeds and the stated cost limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pulsebms.experiments.results import (
    RESULT_KPIS,
    ResultsSpec,
    _claim,
    _run_one,
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
    md = to_markdown(summary, ResultsSpec(seeds=(0, 1), cost_limit=2.5), seeds={"sac": 1})
    assert "cost limit of the Lagrangian agents: 2.5 pre-shield cost per episode" in md
    assert "| ppo | 2 | 12 ± 2.8 |" in md
    assert "| sac | 1 | 2 ± 0 |" in md  # finished seeds are stated per agent


def test_unknown_agent_is_refused_before_any_training() -> None:
    with pytest.raises(ValueError, match="unknown agents"):
        run_results(ResultsSpec(agents=("ppo", "dqn")))


def test_a_finished_run_is_read_back_not_trained_again(tmp_path: Path) -> None:
    spec = ResultsSpec(agents=("sac",), seeds=(3,), off_policy_timesteps=500, out_dir=tmp_path)
    record = {"key": spec.run_key("sac", 3), "row": {"agent": "sac", "seed": 3}, "curve": []}
    path = tmp_path / "sac_seed3" / "result.json"
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    # cfg=None: training would fail at once; the cached record is returned instead.
    assert _run_one("sac", 3, None, spec) == record
    # Other settings (a longer budget) make the same folder's record stale.
    longer = ResultsSpec(off_policy_timesteps=1000, out_dir=tmp_path)
    assert longer.run_key("sac", 3) != record["key"]


def test_a_run_locked_by_a_live_process_is_skipped_and_a_stale_lock_taken(tmp_path: Path) -> None:
    lock = tmp_path / "run" / "result.lock"
    lock.parent.mkdir()
    lock.write_text(str(os.getppid()))  # a live process that is not this one
    assert not _claim(lock)
    spec = ResultsSpec(agents=("ppo",), seeds=(0,), out_dir=tmp_path)
    (tmp_path / "ppo_seed0").mkdir()
    (tmp_path / "ppo_seed0" / "result.lock").write_text(str(os.getppid()))
    assert _run_one("ppo", 0, None, spec) is None  # skipped, not trained
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    lock.write_text(done.stdout.strip())  # that process has exited: a stale lock
    assert _claim(lock)
    assert lock.read_text() == str(os.getpid())
