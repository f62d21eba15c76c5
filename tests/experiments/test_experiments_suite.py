"""Benchmark suite: the configs compose into their envs; the table's ratios are per episode."""

from __future__ import annotations

import math

import pytest

from pulsebms.agents.evaluation import KPIS, NO_BATTERY, KPITable
from pulsebms.experiments.suite import (
    BENCHMARKS,
    benchmark_config,
    format_table,
    run_suite,
    suite_rows,
)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_composes_validates_and_builds_its_env(name: str) -> None:
    from pulsebms.agents.env_factory import fleet_env
    from pulsebms.experiments.common import env_kwargs, make_cfg_env, validate

    cfg = benchmark_config(name)
    validate(cfg)
    env = make_cfg_env(cfg)
    try:
        base = fleet_env(env)
        assert base.dt_s == 900.0
        if name == "fleet20":
            energy = base.pack_energy_kwh  # type: ignore[attr-defined]
            assert len(energy) == 20
            assert min(energy) >= 60.0
            assert max(energy) <= 100.0
            assert all(lim.current_max_a == 1000.0 for lim in base.pack_limits)
        else:
            assert env_kwargs(cfg)["scenario"]["base"] in ("default", "hot")
    finally:
        env.close()


def _row(policy: str, seed: int, cost: float) -> dict[str, float | str | int]:
    return {"policy": policy, "scenario": "s", "seed": seed, **dict.fromkeys(KPIS, 0.0),
            "total_cost": cost}  # fmt: skip


def test_suite_rows_divide_per_episode_by_no_battery_best_rule_and_oracle() -> None:
    rows = [
        _row(NO_BATTERY, 0, 10.0), _row(NO_BATTERY, 1, 20.0),
        _row("rule_equal", 0, 8.0), _row("rule_equal", 1, 16.0),
        _row("rule_soc", 0, 9.0), _row("rule_soc", 1, 18.0),
        _row("mpc_oracle", 0, 4.0), _row("mpc_oracle", 1, 8.0),
        _row("agent", 0, 6.0), _row("agent", 1, 8.0),
    ]  # fmt: skip
    out = {r.policy: r for r in suite_rows(KPITable(rows, baseline="rule_soc"), "s")}
    assert next(iter(out)) == NO_BATTERY
    agent = out["agent"]
    assert agent.best_rule == "rule_equal"
    assert agent.x_no_battery == pytest.approx((0.5, 0.1))  # mean ± std of 0.6 and 0.4
    assert agent.x_best_rule == pytest.approx((0.625, 0.125))
    assert agent.x_oracle == pytest.approx((1.25, 0.25))
    assert agent.violations == (0.0, 0.0)
    table = format_table(list(out.values()))
    assert "| s | agent | 2 | 0.500 ± 0.100 | 0.625 ± 0.125 | 1.250 ± 0.250 |" in table


def test_quick_suite_prints_every_column_for_one_benchmark(tmp_path: object) -> None:
    rows = run_suite(
        ["mild"],
        seeds=[100, 101, 102],
        baselines=["rule_soc", "mpc_oracle"],
        max_steps=3,
        out_dir=str(tmp_path),
    )
    policies = [r.policy for r in rows]
    assert policies == [NO_BATTERY, "rule_soc", "mpc_oracle"]
    for r in rows:
        assert r.episodes == 3
        assert r.violations == (0.0, 0.0)  # the shield is in the loop for every policy
        assert not math.isnan(r.x_no_battery[0])
    assert rows[1].x_best_rule == (1.0, 0.0)
    assert rows[2].x_oracle == (1.0, 0.0)
