"""Benchmark suite: the configs compose into their envs; the table's ratios are per episode."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pulsebms.agents.evaluation import KPIS, NO_BATTERY, KPITable
from pulsebms.experiments.suite import (
    BENCHMARKS,
    benchmark_config,
    fleet_groups,
    format_table,
    main,
    run_suite,
    suite_rows,
    train_config,
)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_composes_validates_and_builds_its_env(name: str) -> None:
    from pulsebms.agents.env_factory import fleet_env
    from pulsebms.experiments.common import env_kwargs, make_cfg_env, validate

    cfg = benchmark_config(name)
    validate(cfg)
    env = make_cfg_env(cfg)  # the training env: 15-min decisions over the 5-min plant
    try:
        base = fleet_env(env)
        assert (base.dt_s, base.horizon_steps, env.substeps) == (300.0, 288, 3)  # type: ignore[attr-defined]
        assert base.stored_energy_value == "min_price"  # type: ignore[attr-defined]
        assert "feed_in_price_per_kwh" in base.observation_layout.names  # FleetSite layout
        assert env_kwargs(cfg)["scenario"]["base"] in ("default", "hot")
        assert cfg.train.scenario is None  # a benchmark alone trains on its own day
        if name == "fleet20":
            energy = base.pack_energy_kwh  # type: ignore[attr-defined]
            assert len(energy) == 20
            assert min(energy) >= 59.5  # stated 60–100 kWh, whole cells
            assert max(energy) <= 100.5
            capacity = np.asarray(base.ratings.capacity_ah)
            limits = np.array([lim.current_max_a for lim in base.pack_limits])
            assert np.all(limits >= capacity)  # scaled with the pack: 1 C binds, not 100 A
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


def test_quick_suite_prints_every_column_for_one_benchmark(tmp_path: Path) -> None:
    rows = run_suite(
        ["mild"],
        seeds=[100, 101, 102],
        baselines=["rule_soc", "mpc_oracle"],
        max_steps=3,
        out_dir=str(tmp_path),
    )
    cached = sorted(p.name for p in (tmp_path / "episodes" / "mild").iterdir())
    assert len(cached) == 9  # (no battery, rule, oracle) × 3 seeds, one file per episode
    again = run_suite(
        ["mild"],
        seeds=[100, 101, 102],
        baselines=["rule_soc", "mpc_oracle"],
        max_steps=3,
        out_dir=str(tmp_path),
    )
    assert again == rows  # resumed from the cache: the same rows
    assert sorted(p.name for p in (tmp_path / "mild").iterdir()) == [
        "kpis.csv",
        "kpis.md",
        "kpis_episodes.csv",
    ]  # baselines only: the plain table
    policies = [r.policy for r in rows]
    assert policies == [NO_BATTERY, "rule_soc", "mpc_oracle"]
    for r in rows:
        assert r.episodes == 3
        assert r.violations == (0.0, 0.0)  # the shield is in the loop for every policy
        assert not math.isnan(r.x_no_battery[0])
    assert rows[1].x_best_rule == (1.0, 0.0)
    assert rows[2].x_oracle == (1.0, 0.0)


def test_training_config_is_the_benchmark_env_on_randomised_days() -> None:
    assert fleet_groups(["mild", "fleet20", "cold"]) == {
        "small_spread": ["mild", "cold"],
        "mixed20": ["fleet20"],
    }
    cfg = train_config("hot_spike")
    bench = benchmark_config("hot_spike")
    assert cfg.env == bench.env  # same plant, decisions, observation and limits
    assert cfg.fleet == bench.fleet
    assert cfg.train.scenario.name == "randomized"  # never a benchmark's day
    assert cfg.agent.gamma_horizon_h == 24.0


def test_suite_trains_once_per_fleet_and_evaluates_held_out_seeds(tmp_path: Path) -> None:
    tiny = ["agent.n_steps=16", "agent.batch_size=16", "agent.n_epochs=1", "train.n_envs=1"]
    kwargs = {
        "seeds": [100, 101, 102],
        "baselines": ["rule_soc"],
        "max_steps": 6,
        "train_steps": 16,
        "train_seeds": [0],
        "train_overrides": tiny,
        "out_dir": str(tmp_path),
    }
    rows = run_suite(["mild", "cold"], **kwargs)  # type: ignore[arg-type]
    runs = list((tmp_path / "agents").glob("*/*/model.zip"))
    assert [p.parent.name for p in runs] == ["ppo_seed0"]  # one agent for the fleet
    by = {(r.scenario, r.policy): r for r in rows}
    for scenario in ("mild", "cold"):
        assert by[(scenario, "ppo")].episodes == 3  # pooled: 1 training × 3 evaluation seeds
        assert by[(scenario, "ppo_seed0")].violations == (0.0, 0.0)
    stamp = runs[0].stat().st_mtime_ns
    for scenario in ("mild", "cold"):  # the agent's own table, not a baselines-only run's
        assert "| ppo |" in (tmp_path / scenario / "kpis_ppo.md").read_text()
        assert not (tmp_path / scenario / "kpis.md").exists()
    assert run_suite(["mild", "cold"], **kwargs) == rows  # type: ignore[arg-type]
    assert runs[0].stat().st_mtime_ns == stamp  # loaded, not trained again


def test_a_variant_of_the_benchmarks_is_named_apart_and_changes_only_what_it_overrides(
    tmp_path: Path,
) -> None:
    kwargs = {"seeds": [100], "baselines": ["rule_soc", "mpc"], "max_steps": 2}
    plain = run_suite(["mild"], out_dir=str(tmp_path), **kwargs)  # type: ignore[arg-type]
    noisy = run_suite(
        ["mild"],
        out_dir=str(tmp_path),
        bench_overrides=[
            "+scenario.params.forecast=noisy",
            "+scenario.params.forecast_noise_1h=0.2",
        ],
        variant="noisy",
        **kwargs,  # type: ignore[arg-type]
    )
    assert {r.scenario for r in noisy} == {"mild@noisy"}
    assert (tmp_path / "episodes" / "mild@noisy").is_dir()
    assert (tmp_path / "mild@noisy").is_dir()  # its own KPI table
    # Total cost / the same day's no-battery cost: the same day, so the rule (it reads no
    # forecast) costs the same, and the MPC, planning on the noisy forecast, does not.
    ratio = {(r.scenario, r.policy): r.x_no_battery[0] for r in plain + noisy}
    assert ratio[("mild", "rule_soc")] == ratio[("mild@noisy", "rule_soc")]
    assert ratio[("mild", "mpc")] != ratio[("mild@noisy", "mpc")]
    with pytest.raises(ValueError, match="name the variant"):
        run_suite(["mild"], bench_overrides=["+scenario.params.forecast=noisy"], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="plain word"):
        run_suite(["mild"], variant="a/b", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        main(["--bench-override", "+scenario.params.forecast=noisy"])


def test_main_refuses_training_seeds_among_the_evaluation_seeds() -> None:
    with pytest.raises(SystemExit):
        main(["--train", "--seeds", "0", "1", "2", "--train-seeds", "0"])


def test_mpc_bc_recipe_clones_the_forecast_mpc_and_caches_its_demonstrations(
    tmp_path: Path,
) -> None:
    import json

    from pulsebms.experiments.suite import suite_demonstrations

    cfg = train_config("mild", experiment="suite_mpc_bc")
    assert cfg.train.imitation.teacher == "mpc"  # the forecast MPC, never the oracle
    assert cfg.train.scenario.name == "randomized"  # demonstrations on training days
    oracle = train_config(
        "mild", overrides=["train.imitation.teacher=mpc_oracle"], experiment="suite_mpc_bc"
    )
    with pytest.raises(ValueError, match="true future"):
        suite_demonstrations(oracle, tmp_path)
    tiny = [
        "train.imitation.demo_days=1",
        "train.imitation.dagger_rounds=1",
        "train.imitation.dagger_days=1",
        "train.imitation.epochs=20",
        "train.imitation.critic_epochs=1",
        "train.total_timesteps=0",  # the cloned policy as it is
    ]
    rows = run_suite(
        ["mild"],
        seeds=[100, 101, 102],
        baselines=["rule_soc"],
        max_steps=6,
        train_steps=None,
        train_seeds=[0],
        train_overrides=tiny,
        out_dir=tmp_path,
        experiment="suite_mpc_bc",
        label="mpc_bc",
    )
    assert len(list((tmp_path / "demos" / "small_spread").glob("mpc_*.npz"))) == 1
    path = tmp_path / "agents/small_spread/mpc_bc_seed0/imitation.json"
    reports = json.loads(path.read_text())
    assert [r["rows"] for r in reports] == [96, 192]  # a day of 15-min decisions, + DAgger's
    assert all(r["mse_after"] < r["mse_before"] for r in reports)
    assert len(list((tmp_path / "clones" / "small_spread").glob("*_seed0.pt"))) == 1
    by = {r.policy: r for r in rows}
    assert by["mpc_bc"].episodes == 3
    assert by["mpc_bc"].violations == (0.0, 0.0)


def test_spike_aware_demonstrations_add_spiky_training_days_and_keep_old_caches(
    tmp_path: Path,
) -> None:
    from pulsebms.envs.scenarios import make_scenario
    from pulsebms.experiments.common import train_env_kwargs
    from pulsebms.experiments.suite import _imitation_key, spike_config, suite_demonstrations

    plain = train_config("mild", experiment="suite_mpc_bc")
    assert "spike_days" not in _imitation_key(plain.train.imitation)  # old clones still found
    cfg = train_config(
        "mild",
        overrides=[
            "train.imitation.demo_days=1",
            "train.imitation.spike_days=1",
            "env.horizon_steps=12",  # hour-long days: 4 decisions each
        ],
        experiment="suite_mpc_bc_spike",
    )
    assert _imitation_key(cfg.train.imitation)["spike_days"] == 1
    spiky = spike_config(cfg)
    scenario = make_scenario(train_env_kwargs(spiky)["scenario"])
    assert scenario.price_spike_probability == 0.1  # forced up from the preset's 0.02
    assert scenario.day_pv_level_range == (0.3, 3.2)  # the rest of train.scenario kept
    assert "price_spike_probability" not in cfg.train.scenario.params  # cfg left alone
    demos = suite_demonstrations(cfg, tmp_path)
    assert (len(demos), demos.n_episodes) == (8, 2)  # a plain day, then a spiky one
    assert len(list((tmp_path / "demos/small_spread").glob("mpc_spike_*.npz"))) == 1
    again = suite_demonstrations(cfg, tmp_path)  # from the cache, the same rows
    np.testing.assert_array_equal(again.actions, demos.actions)
    hot = make_scenario(
        train_env_kwargs(spike_config(train_config("mild", experiment="suite_mpc_bc_hot")))[
            "scenario"
        ]
    )
    assert (hot.ambient_c, hot.price_spike_probability) == (30.0, 0.02)  # any Scenario field
    no_days = train_config("mild", overrides=["train.scenario=null"], experiment="suite_mpc_bc")
    with pytest.raises(ValueError, match=r"train\.scenario"):
        spike_config(no_days)


def test_spike_sets_mix_kinds_of_days_and_keep_each_recipes_cache(tmp_path: Path) -> None:
    from pulsebms.envs.scenarios import make_scenario
    from pulsebms.experiments.common import train_env_kwargs
    from pulsebms.experiments.suite import (
        _imitation_key,
        spike_config,
        spike_sets,
        suite_demonstrations,
    )

    hot = train_config("mild", experiment="suite_mpc_bc_hot")
    assert "spike_sets" not in _imitation_key(hot.train.imitation)  # old hot clones found
    mixed = train_config("mild", experiment="suite_mpc_bc_hotdr")
    sets = spike_sets(mixed.train.imitation)
    assert [(s["days"], s["seed"], s["dagger_share"]) for s in sets] == [
        (100, 90000, 0.25),
        (100, 70000, 0.25),
    ]
    event = make_scenario(train_env_kwargs(spike_config(mixed, sets[1]["params"]))["scenario"])
    assert (event.ambient_c, event.price_event_start_h) == (30.0, (16.0, 21.0))
    assert (
        make_scenario(train_env_kwargs(spike_config(mixed))["scenario"]).price_event_start_h is None
    )
    tiny = [
        "train.imitation.demo_days=1",
        "train.imitation.spike_days=1",
        "train.imitation.spike_sets.0.days=1",
        "env.horizon_steps=12",  # hour-long days: 4 decisions each
    ]
    cfg = train_config("mild", overrides=tiny, experiment="suite_mpc_bc_hotdr")
    demos = suite_demonstrations(cfg, tmp_path)
    assert (len(demos), demos.n_episodes) == (12, 3)  # plain, hot, hot with an event
    assert len(list((tmp_path / "demos/small_spread").glob("mpc_spike_*.npz"))) == 2
    bad = train_config(
        "mild",
        overrides=["train.imitation.spike_sets.0.dagger_share=0.8"],
        experiment="suite_mpc_bc_hotdr",
    )
    with pytest.raises(ValueError, match="sum to more than 1"):
        spike_sets(bad.train.imitation)
    malformed = train_config(
        "mild", overrides=["train.imitation.spike_sets=[{days: 1}]"], experiment="suite_mpc_bc_hot"
    )
    with pytest.raises(ValueError, match=r"spike_sets\[0\]"):
        spike_sets(malformed.train.imitation)


def test_the_suite_evaluates_an_agent_at_the_interval_it_trained_at() -> None:
    from pulsebms.experiments.suite import agent_execution

    # the benchmark's 15-min decisions, the set-points held
    assert agent_execution("hot_spike", 0) == (900.0, "action")
    every_step = agent_execution("hot_spike", 1, overrides=["env.decision_s=300"])
    assert every_step.decision_s == 300.0


def test_hold_mode_travels_with_the_recipe_and_the_default_keeps_every_fingerprint() -> None:
    """The default hold mode fingerprints as before the field (pinned: cached agents stay)."""
    from pulsebms.experiments.common import ConfigError, validate
    from pulsebms.experiments.suite import (
        _clone_key,
        _env_key,
        _fingerprint,
        _train_cfg_key,
        agent_execution,
    )

    recipe = [
        "seed=2",
        "train.total_timesteps=0",
        "train.imitation.teacher=mpc_day",
        "train.imitation.ensemble_size=3",
    ]
    cfg = train_config("cold", overrides=recipe, experiment="suite_mpc_bc_hotdr")
    assert cfg.env.hold_mode == "action"
    # the keys of the hotdr K = 3 ensemble of training seed 2 and of cold, as cached before
    assert _train_cfg_key(cfg) == "79e0a6d654eeb4d6"
    assert _clone_key(cfg) == "accf8dee7ace0102"
    bench = benchmark_config("cold")
    assert _fingerprint(_env_key(bench.env), bench.fleet, bench.scenario, bench.shield, None) == (
        "d4239d8093f30876"
    )
    grid = train_config(
        "cold", overrides=[*recipe, "env.hold_mode=grid"], experiment="suite_mpc_bc_hotdr"
    )
    assert _train_cfg_key(grid) != _train_cfg_key(cfg)
    assert _clone_key(grid) != _clone_key(cfg)
    capped = agent_execution("cold", 2, overrides=["env.hold_mode=import_cap"])
    assert capped.hold_mode == "import_cap"
    bad = train_config("mild", overrides=["env.hold_mode=power"])
    with pytest.raises(ConfigError, match=r"env\.hold_mode"):
        validate(bad)


def test_ensemble_size_keeps_single_agents_fingerprints_and_names_the_ensemble() -> None:
    from pulsebms.experiments.suite import _train_cfg_key, ensemble_size

    base = ["seed=0", "train.total_timesteps=0"]
    single = train_config("mild", overrides=base, experiment="suite_mpc_bc_hotdr")
    one = train_config(
        "mild",
        overrides=[*base, "train.imitation.ensemble_size=1"],
        experiment="suite_mpc_bc_hotdr",
    )
    three = train_config(
        "mild",
        overrides=[*base, "train.imitation.ensemble_size=3"],
        experiment="suite_mpc_bc_hotdr",
    )
    assert (ensemble_size(single), ensemble_size(three)) == (1, 3)
    assert _train_cfg_key(one) == _train_cfg_key(single)  # K = 1: today's agents and clones
    assert _train_cfg_key(three) != _train_cfg_key(single)
    assert ensemble_size(train_config("mild")) == 1  # no imitation: a single agent
    zero = train_config(
        "mild", overrides=[*base, "train.imitation.ensemble_size=0"], experiment="suite_mpc_bc"
    )
    with pytest.raises(ValueError, match="ensemble_size"):
        ensemble_size(zero)


def test_suite_ensemble_averages_members_cloned_with_derived_seeds(tmp_path: Path) -> None:
    from pulsebms.agents.ensemble import EnsemblePolicy, load_ensemble_members
    from pulsebms.experiments.suite import train_suite_agent

    tiny = [
        "train.imitation.demo_days=1",
        "train.imitation.dagger_rounds=0",
        "train.imitation.epochs=5",
        "train.imitation.critic_epochs=1",
        "env.horizon_steps=12",  # hour-long days: 4 decisions each
        "train.total_timesteps=0",
    ]
    kwargs = {"out_dir": tmp_path, "experiment": "suite_mpc_bc", "label": "bc"}
    ensemble = train_suite_agent(
        "mild", 1, overrides=[*tiny, "train.imitation.ensemble_size=2"], **kwargs
    )
    assert isinstance(ensemble, EnsemblePolicy)
    assert len(ensemble) == 2
    runs = tmp_path / "agents/small_spread"
    members = load_ensemble_members(runs / "bc_seed1")
    assert [m.seed for m in members] == [1, 1001]
    clones = sorted(p.name.rsplit("_", 1)[1] for p in (tmp_path / "clones").rglob("*.pt"))
    assert clones == ["seed1.pt", "seed1001.pt"]  # each member its own clone
    single = train_suite_agent("mild", 1, overrides=tiny, **kwargs)  # K = 1: member 0 itself
    obs = np.linspace(-1.0, 1.0, ensemble.members[0].model.observation_space.shape[0])
    np.testing.assert_array_equal(single.act(obs), ensemble.members[0].act(obs))
    assert len(list((tmp_path / "clones").rglob("*.pt"))) == 2  # loaded, not cloned again
    acts = np.stack([m.act(obs) for m in ensemble.members])
    np.testing.assert_allclose(ensemble.act(obs), acts.mean(axis=0), atol=1e-6)
    again = train_suite_agent(
        "mild", 1, overrides=[*tiny, "train.imitation.ensemble_size=2"], **kwargs
    )
    np.testing.assert_array_equal(again.act(obs), ensemble.act(obs))  # loaded from its folder


def test_dagger_policy_member_keeps_fingerprints_and_ensemble_names_a_new_recipe() -> None:
    from pulsebms.experiments.suite import _train_cfg_key, dagger_policy

    base = ["seed=0", "train.total_timesteps=0"]

    def key(*extra: str) -> str:
        return _train_cfg_key(
            train_config("mild", overrides=[*base, *extra], experiment="suite_mpc_bc_hotdr")
        )

    # the fingerprints of the cached single hotdr agent and K = 3 ensemble (before the field)
    assert key() == key("train.imitation.dagger_policy=member") == "2762e70fa75f3019"
    ens3 = "train.imitation.ensemble_size=3"
    assert key(ens3) == key(ens3, "train.imitation.dagger_policy=member") == "1df670b8f4b7acc9"
    assert key(ens3, "train.imitation.dagger_policy=ensemble") != key(ens3)
    assert dagger_policy(train_config("mild")) == "member"  # no imitation
    bad = train_config(
        "mild", overrides=["train.imitation.dagger_policy=all"], experiment="suite_mpc_bc"
    )
    with pytest.raises(ValueError, match="dagger_policy"):
        dagger_policy(bad)


def test_ensemble_dagger_clones_every_member_on_the_ensembles_own_states(tmp_path: Path) -> None:
    import json

    from pulsebms.agents.ensemble import EnsemblePolicy
    from pulsebms.experiments.suite import train_suite_agent

    tiny = [
        "train.imitation.demo_days=1",
        "train.imitation.dagger_rounds=1",
        "train.imitation.dagger_days=1",
        "train.imitation.epochs=3",
        "train.imitation.critic_epochs=1",
        "env.horizon_steps=12",  # hour-long days: 4 decisions each
        "train.total_timesteps=0",
        "train.imitation.ensemble_size=2",
    ]
    by_ensemble = [*tiny, "train.imitation.dagger_policy=ensemble"]
    kwargs = {"out_dir": tmp_path, "experiment": "suite_mpc_bc"}

    def obs_means(ensemble: EnsemblePolicy) -> list[np.ndarray]:
        return [np.array(m.vec_normalize.obs_rms.mean) for m in ensemble.members]  # type: ignore[attr-defined]

    ensemble = train_suite_agent("mild", 1, overrides=by_ensemble, label="ens", **kwargs)
    assert isinstance(ensemble, EnsemblePolicy)
    assert len(ensemble) == 2
    clones = sorted(p.name.split("_", 1)[1] for p in (tmp_path / "clones").rglob("*.pt"))
    assert clones == ["ens1_member1.pt", "ens1_member1001.pt"]
    reports = [json.loads(p.read_text()) for p in sorted((tmp_path / "clones").rglob("*.json"))]
    assert [[r["rows"] for r in rep] for rep in reports] == [[4, 8], [4, 8]]  # clone, 1 round
    shared = obs_means(ensemble)  # one aggregate: the same normaliser statistics
    np.testing.assert_array_equal(shared[0], shared[1])
    acts = [m.act(shared[0]) for m in ensemble.members]
    assert not np.array_equal(acts[0], acts[1])  # yet each member its own network
    own = train_suite_agent("mild", 1, overrides=tiny, label="own", **kwargs)  # own DAgger
    assert not np.array_equal(*obs_means(own))  # each member its own days and states
    again = train_suite_agent("mild", 1, overrides=by_ensemble, label="ens", **kwargs)
    obs = np.linspace(-1.0, 1.0, shared[0].shape[0])
    np.testing.assert_array_equal(again.act(obs), ensemble.act(obs))  # loaded, not retrained
    assert len(list((tmp_path / "clones").rglob("*.pt"))) == 4
