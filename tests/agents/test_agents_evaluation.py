"""Evaluation harness: scenarios × seeds → one KPI table, normalised, saved, plotted."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from pulsebms.agents.evaluation import KPIS, NO_BATTERY, KPITable, evaluate_policies
from pulsebms.agents.policy import ConstantPolicy
from pulsebms.agents.workflow import baseline_factories


def test_kpi_table_normalises_by_baseline() -> None:
    rows = [
        {"policy": "rule", "scenario": "s", "seed": 0, **dict.fromkeys(KPIS, 2.0)},
        {"policy": "agent", "scenario": "s", "seed": 0, **dict.fromkeys(KPIS, 1.0)},
    ]
    rows[0]["violations"] = rows[1]["violations"] = 0.0
    table = KPITable(rows, baseline="rule")
    assert table.normalised("agent", "energy_cost") == pytest.approx(0.5)
    assert table.normalised("rule", "energy_cost") == pytest.approx(1.0)
    assert math.isnan(table.normalised("agent", "violations"))  # 0 / 0: no ratio
    assert math.isnan(KPITable(rows, baseline="missing").normalised("agent", "energy_cost"))
    md = table.to_markdown()
    assert "| agent |" in md
    assert "(0.50×)" in md


def test_harness_builds_one_table_over_scenarios_and_seeds(tmp_path: Path) -> None:
    policies = {
        **baseline_factories(["rule_equal", "rule_soc"]),
        "idle": lambda env: ConstantPolicy(np.zeros(env.action_space.shape[0])),
    }
    table = evaluate_policies(
        policies,
        env_id="PulseBMS/FleetSmall-v0",
        scenarios=["default", "tou"],
        seeds=[0, 1],
        baseline="rule_soc",
        env_kwargs={"dt_s": 900.0, "horizon_steps": 12},
        plot_dir=tmp_path / "plots",
        progress=False,
    )
    assert len(table.rows) == 4 * 2 * 2  # + the no-battery reference
    assert table.policies == ["rule_equal", "rule_soc", "idle", NO_BATTERY]
    assert table.scenarios == ["default", "tou"]
    summary = {r["policy"]: r for r in table.summary()}
    assert summary["rule_soc"]["energy_cost_norm"] == pytest.approx(1.0)
    assert summary["idle"]["shield_interventions"] == 0.0  # idling is always admissible
    # No battery = the idle fleet's days without its (calendar) ageing.
    assert summary[NO_BATTERY]["degradation_cost"] == 0.0
    assert summary[NO_BATTERY]["energy_cost"] == pytest.approx(summary["idle"]["energy_cost"])
    assert summary["idle"]["total_cost_x_no_battery"] >= 1.0
    assert all(r["steps"] == 12 for r in table.rows)
    # The rules serve load the idle fleet leaves to the grid.
    assert summary["rule_soc"]["energy_cost"] < summary["idle"]["energy_cost"]
    paths = table.save(tmp_path)
    with paths["csv"].open() as fh:
        assert len(list(csv.DictReader(fh))) == 4
    assert paths["markdown"].read_text().startswith("| policy |")
    for name in ("kpis.png", "trace_rule_soc.png", "trace_idle.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_harness_rejects_unknown_baseline() -> None:
    with pytest.raises(ValueError, match="baseline"):
        evaluate_policies(baseline_factories(["rule_soc"]), baseline="nope", progress=False)
    with pytest.raises(ValueError, match="no policy"):
        evaluate_policies({}, progress=False)


def test_pre_shield_violations_rate_beside_violations_and_interventions() -> None:
    n = 3  # packs of the small fleet
    policies = {
        "idle": lambda env: ConstantPolicy(np.zeros(n)),
        "full_charge": lambda env: ConstantPolicy(-np.ones(n)),
    }
    kwargs = {"env_kwargs": {"dt_s": 900.0, "horizon_steps": 12}, "progress": False}
    shielded = {r["policy"]: r for r in evaluate_policies(policies, **kwargs).summary()}
    # Behind the shield nothing is violated, but every full-charge request would have been.
    assert shielded["full_charge"]["violations"] == 0.0
    # Counted per pack-step: at least one pack every step, at most all three.
    assert 12.0 <= shielded["full_charge"]["shield_interventions"] <= 36.0
    assert shielded["full_charge"]["pre_shield_violations"] == pytest.approx(1.0)  # per step
    assert shielded["full_charge"]["constraint_cost"] > 0.0
    assert shielded["idle"]["pre_shield_violations"] == 0.0
    assert shielded["idle"]["constraint_cost"] == 0.0
    # Without the shield, the pre-shield rate is the measured violations' rate.
    table = evaluate_policies(policies, shield=False, **kwargs)
    for row in table.rows:
        assert 0.0 <= row["pre_shield_violations"] <= 1.0
    bare = {r["policy"]: r for r in table.summary()}
    assert bare["full_charge"]["violations"] > 0.0
    assert bare["full_charge"]["pre_shield_violations"] > 0.0
    assert "pre_shield_violations" in table.to_markdown()


def test_near_zero_reference_gives_no_ratio() -> None:
    rows = [
        {"policy": "rule", "scenario": "s", "seed": 0, **dict.fromkeys(KPIS, 2.0)},
        {"policy": "agent", "scenario": "s", "seed": 0, **dict.fromkeys(KPIS, 1.0)},
    ]
    rows[0]["constraint_cost"] = 1e-9  # near zero: a ratio of 1e9 would mean nothing
    rows[0]["shield_interventions"] = 0.0
    table = KPITable(rows, baseline="rule")
    assert math.isnan(table.normalised("agent", "constraint_cost"))
    assert math.isnan(table.normalised("agent", "shield_interventions"))
    assert table.ratios("agent", "total_cost", "rule") == [pytest.approx(0.5)]
    assert table.ratios("agent", "total_cost", "rule", scenario="other") == []


def test_scenario_in_env_kwargs_is_not_replaced_by_default() -> None:
    policies = {"idle": lambda env: ConstantPolicy(np.zeros(3))}
    kwargs = {"seeds": [0], "progress": False, "no_battery": False}
    short = {"dt_s": 900.0, "horizon_steps": 8}
    flat = evaluate_policies(policies, env_kwargs={**short, "scenario": "flat"}, **kwargs)
    default = evaluate_policies(policies, env_kwargs=short, **kwargs)
    # The env's own scenario is used and labelled by its name (was: replaced by "default").
    assert [r["scenario"] for r in flat.rows] == ["flat"]
    assert [r["scenario"] for r in default.rows] == ["default"]
    assert flat.rows[0]["energy_cost"] != default.rows[0]["energy_cost"]
    named = evaluate_policies(policies, env_kwargs=short, scenarios=["flat"], **kwargs)
    assert named.rows[0]["energy_cost"] == flat.rows[0]["energy_cost"]
    with pytest.raises(ValueError, match="differ"):
        evaluate_policies(
            policies, env_kwargs={**short, "scenario": "flat"}, scenarios=["tou"], **kwargs
        )


def test_mpc_interventions_are_counted_by_the_wrapper_like_any_policy() -> None:
    from pulsebms.agents.env_factory import make_env
    from pulsebms.agents.evaluation import behind_shield
    from pulsebms.agents.mpc import make_mpc

    env = make_env("PulseBMS/FleetSmall-v0", dt_s=900.0, horizon_steps=4)
    try:
        mpc = make_mpc(env, horizon_steps=4)
        plain = behind_shield(mpc)
        assert plain is not mpc  # acts on its plan, the wrapper projects
        obs, _ = env.reset(seed=0)
        np.testing.assert_allclose(plain.act(obs), np.clip(mpc.plan(obs)[:, 0], -1, 1), atol=1e-6)
        rule = ConstantPolicy(np.zeros(3))
        assert behind_shield(rule) is rule
    finally:
        env.close()
