"""``pulsebms-bench ray`` at smoke settings: it runs all three samplers and prints figures.

Speed figures and ratios are printed, never asserted (a busy machine is not a bug).
"""

from __future__ import annotations

import json
import math

import pytest

from pulsebms.benchmarks import ray as bench


@pytest.mark.slow
@pytest.mark.filterwarnings(
    "ignore:.*Overriding environment rllib-single-agent-env-v0 already in registry:UserWarning"
)
def test_ray_benchmark_prints_finite_throughput_for_each_sampler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--quick", "--envs", "2", "--batch", "64", "--rounds", "1", "--ab-filter"]
    argv += ["--ab-inference", "--ab-adam"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    result_lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert result_lines, out[-2000:]
    result = json.loads(result_lines[-1][len("RESULT ") :])
    names = ("sb3_ppo", "rllib_local_runner", "rllib_1_runner", "rllib_2_runners")
    for name in (*names, bench.AB_FILTER_ROW, bench.AB_INFERENCE_ROW, bench.AB_ADAM_ROW):
        row = result[name]
        for phase in ("sample", "train"):
            for kind in ("wall", "busy"):
                value = row[f"{phase}_{kind}_steps_per_s"]
                assert math.isfinite(value), (name, phase, kind)
                assert value > 0, (name, phase, kind)
        # The env clock ran in every sampler (in the runner processes for RLlib), and the
        # env is only part of each step's CPU time.
        assert row["sample_env_ms_per_step"] > 0, name
        assert row["sample_overhead_ms_per_step"] > 0, name
        assert row["learn_ms_per_step"] > 0, name
    assert result["envs_per_sampler"] == 2
    assert result["rllib_loss"] == "sb3"  # RLlib's PPO configured with SB3's loss
    assert result["ray_metrics"] is False  # as pulsebms-train's default ray.metrics=false
    assert result["ray_task_events"] is False  # as its default ray.task_events=false
    # RLlib's eager update and torch's fused Adam unless --compile-learner / --adam foreach.
    assert result["compile_learner"] is False
    assert result["fused_adam"] is True
    assert "RLlib Learner: torch.compile off, Adam fused" in out
    # --ab-adam: the foreach Adam step as a seventh sampler, with its verdict line.
    assert f"A/B row {bench.AB_ADAM_ROW}: foreach" in out
    ab = result["verdict"]["train_fused_over_foreach_adam_busy_env_equalised"]
    assert ab["target"] is None
    assert ab["low"] <= ab["median"] <= ab["high"]
    assert "Ray metrics collection: off" in out
    assert "Ray task events: off" in out
    assert "RLlib PPO loss: as SB3's PPO" in out
    assert "1 runner = one remote EnvRunner process (num_env_runners=1)" in out
    assert result["learner_loop"] == "own"
    assert result["repeat"] == 1
    verdict = result["verdict"]["train_1_runner_over_sb3_busy"]
    assert verdict["low"] <= verdict["median"] <= verdict["high"]
    assert verdict["verdict"] == "too few rounds"  # one round: an interval, no claim
    assert "verdict: training ratios" in out
    # --ab-filter: the per-row filter as a fifth sampler; the default is the vector-step one.
    assert result["observation_filter"] == "vector_step"
    assert f"A/B row {bench.AB_FILTER_ROW}: per_row" in out
    ab = result["verdict"]["train_vector_over_per_row_filter_busy"]
    assert ab["target"] is None
    assert ab["low"] <= ab["median"] <= ab["high"]
    # --ab-inference: the runners' torch exploration pass as a sixth; numpy is the default.
    assert result["runner_inference"] == "numpy"
    assert f"A/B row {bench.AB_INFERENCE_ROW}: torch" in out
    ab = result["verdict"]["train_numpy_over_torch_inference_busy_env_equalised"]
    assert ab["target"] is None
    assert ab["low"] <= ab["median"] <= ab["high"]
    # The second verdict block: env-equalised, labelled, after the headline lines.
    equalised = result["verdict"]["train_1_runner_over_sb3_busy_env_equalised"]
    assert equalised["low"] <= equalised["median"] <= equalised["high"]
    # The training blocks travel in the RESULT line: the verdicts can be pooled from them.
    assert bench._verdicts(bench.runs_from_blocks(result["train_blocks"])) == result["verdict"]
    lines = out.splitlines()
    title = lines.index(bench.ENV_EQUALISED_TITLE)
    assert title > lines.index(next(x for x in lines if "train_1_runner_over_sb3_busy:" in x))
    for key in (
        "sample_wall_2_over_1_runner",
        "train_busy_1_runner_over_sb3",
        "train_busy_local_runner_over_sb3",
    ):
        assert math.isfinite(result[key]), key


def _run(train_rates: dict[str, list[float]]) -> dict[str, bench._Row]:
    """One run's rows: training blocks of 1000 steps at the given busy (= wall) rates."""
    rows = {name: bench._Row() for name in train_rates}
    for name, rates in train_rates.items():
        rows[name].train = [bench.Block(1000, 1000 / r, 1000 / r, 0.0) for r in rates]
    return rows


def test_verdict_is_the_median_ratio_with_an_interval_against_the_target() -> None:
    sb3 = [1000.0, 1010.0, 990.0, 1000.0, 1005.0]
    faster = [1100.0, 1090.0, 1120.0, 1105.0, 1095.0]  # ~1.1x in every round of every run
    runs = [
        _run({"sb3_ppo": sb3, "rllib_1_runner": faster, "rllib_2_runners": [1650.0] * 5})
        for _ in range(3)
    ]
    verdicts = bench._verdicts(runs)
    one = verdicts["train_1_runner_over_sb3_busy"]
    assert one["verdict"] == "met"
    assert one["low"] <= one["median"] <= one["high"]
    assert one["low"] > 1.0
    assert one["rounds"] == 15
    assert verdicts["train_2_over_1_runner_busy"]["verdict"] == "not met"  # ~1.5x < 1.6
    assert "train_own_loop_over_rllib_loop_busy" not in verdicts  # no --ab-learner row
    # Runs on either side of parity: the interval contains 1, nothing is claimed.
    mixed = [
        _run({"sb3_ppo": sb3, "rllib_1_runner": [r * f for r in sb3], "rllib_2_runners": sb3})
        for f in (0.92, 1.08, 0.97, 1.03)
    ]
    assert bench._verdicts(mixed)["train_1_runner_over_sb3_busy"]["verdict"] == "not shown"
    # Seeded: the same values give the same interval.
    assert bench._verdicts(mixed) == bench._verdicts(mixed)
    lines = bench._verdict_lines(verdicts, repeats=3, rounds=5)
    assert any("train_1_runner_over_sb3_busy" in line and "met (" in line for line in lines)
    with pytest.raises(ValueError, match="at least one run"):
        bench.bootstrap_median_interval([[1.0], []])


def test_env_equalised_verdict_takes_the_envs_cost_out_of_the_ratio() -> None:
    """RLlib's machinery 5 % cheaper, the env's cost spread: only the equalised ratio sees it."""

    def blocks(env_ms: list[float], machinery_ms: float) -> list[bench.Block]:
        return [
            bench.Block(1000, (e + machinery_ms) * 1e-3 * 1000, (e + machinery_ms), e)
            for e in env_ms
        ]

    env_sb3 = [0.50, 0.62, 0.55, 0.70, 0.58]
    env_rllib = [0.66, 0.51, 0.75, 0.53, 0.60]  # other actions, other shield work
    runs = []
    for shift in (0.0, 0.05, -0.04):
        rows = {name: bench._Row() for name in ("sb3_ppo", "rllib_1_runner", "rllib_2_runners")}
        rows["sb3_ppo"].train = blocks([e + shift for e in env_sb3], 0.40)
        rows["rllib_1_runner"].train = blocks([e - shift for e in env_rllib], 0.38)
        rows["rllib_2_runners"].train = blocks(env_sb3, 0.10)
        runs.append(rows)
    raw = bench.round_ratios(runs[0]["rllib_1_runner"].train, runs[0]["sb3_ppo"].train, "busy")
    assert max(raw) > 1.05  # the env's spread in the raw ratio
    assert min(raw) < 0.95
    equalised = bench.env_equalised_round_ratios(
        runs[0]["rllib_1_runner"].train, runs[0]["sb3_ppo"].train
    )
    pooled = [(a + b) / 2 for a, b in zip(env_rllib, env_sb3, strict=True)]
    assert equalised == pytest.approx([(p + 0.40) / (p + 0.38) for p in pooled], rel=1e-12)
    verdicts = bench._verdicts(runs)
    assert verdicts["train_1_runner_over_sb3_busy"]["verdict"] == "not shown"
    eq = verdicts["train_1_runner_over_sb3_busy_env_equalised"]
    assert 1.0 < eq["low"] <= eq["median"] <= eq["high"] < 1.05
    assert eq["verdict"] == "met"
    # Two runners' env CPU is the busiest runner's (half the steps): not equalised.
    assert "train_2_over_1_runner_busy_env_equalised" not in verdicts
    lines = bench._verdict_lines(verdicts, repeats=3, rounds=5)
    title = lines.index(bench.ENV_EQUALISED_TITLE)
    assert all("env_equalised" not in line for line in lines[:title])
    assert all("env_equalised" in line for line in lines[title + 1 :])


def test_batch_must_split_over_two_runners() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--envs", "4", "--batch", "100"])


def test_account_items_add_up_to_the_processes_cpu() -> None:
    from pulsebms.benchmarks.ray_account import account_table

    sb3 = {"_process": 1.0, "_thread": 0.96, "_env": 0.6, "vec_env_step": 0.66, "rollout": 0.02}
    sb3 |= {"policy_forward": 0.05, "buffer_add": 0.01, "gae": 0.002, "train": 0.1}
    driver = {"_process": 0.13, "_thread": 0.125, "minibatch_update": 0.1}
    driver |= {"learner_connector": 0.003, "sync_weights": 0.001, "take_rows": 0.004}
    runner = {"_process": 0.8, "_thread": 0.79, "_env": 0.6, "env_vector_step": 0.62}
    runner |= {"module_forward": 0.03, "env_to_module": 0.03, "sample": 0.02}
    rows = account_table(sb3, driver, runner)
    assert sum(r[2] for r in rows) == pytest.approx(sb3["_process"])
    assert sum(r[3] for r in rows) == pytest.approx(driver["_process"] + runner["_process"])
    by_name = {r[0]: r for r in rows}
    env = by_name["env (shielded FleetEnv, same wrapper)"]
    assert env[2:] == (0.6, 0.6)
    vector = next(r for name, r in by_name.items() if name.startswith("vector env"))
    assert vector[2:] == pytest.approx((0.06, 0.02))


@pytest.mark.slow
@pytest.mark.filterwarnings(
    "ignore:.*Overriding environment rllib-single-agent-env-v0 already in registry:UserWarning"
)
def test_ray_benchmark_accounts_an_iteration_on_both_sides(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--quick", "--envs", "2", "--batch", "64", "--account", "--iterations", "1"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(out.splitlines()[-1][len("RESULT ") :])
    assert result["runner_inference"] == "numpy"  # the agent config's default
    items = {what: (sb3, rllib) for what, _, sb3, rllib in result["items"]}
    # The same env in both, timed in SB3's process and in the remote runner.
    assert all(v > 0 for v in items["env (shielded FleetEnv, same wrapper)"])
    steps = next(v for k, v in items.items() if k.startswith("minibatch steps"))
    assert all(v > 0 for v in steps)
    # RLlib-only items were timed in the runner actor and in the driver.
    assert items["runner: set_state (weights, filter state, counters)"][1] > 0
    assert items["driver: weight sync to the runner"][1] > 0
    assert items["runner: set_state (weights, filter state, counters)"][0] == 0
    # Exclusive items: they add up to the processes' CPU (one iteration: no medians).
    assert sum(v[0] for v in items.values()) == pytest.approx(result["sb3_ms_per_step"], abs=1e-3)
    assert sum(v[1] for v in items.values()) == pytest.approx(result["rllib_ms_per_step"], abs=1e-3)


@pytest.mark.slow  # inductor compiles the update: ~10-25 s of one core
@pytest.mark.filterwarnings(
    "ignore:.*Overriding environment rllib-single-agent-env-v0 already in registry:UserWarning"
)
# torch's dynamo, imported by the first torch.compile of the process, and its note on the
# profiler scopes it skips.
@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*record_function.*:UserWarning")
def test_ray_benchmark_long_run_trains_eager_and_compiled_to_the_budget(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--quick", "--envs", "2", "--batch", "64", "--long", "192"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(out.splitlines()[-1][len("RESULT ") :])
    for name in ("eager", "compiled"):
        run = result[name]
        assert run["steps"] >= 192
        assert run["iterations"] == 3  # 64 env steps per iteration
        assert run["total_s"] == pytest.approx(run["build_s"] + run["train_s"], abs=0.02)
    assert result["speedup"] > 0


def test_account_spans_are_exclusive_and_patches_come_off() -> None:
    import types

    from pulsebms.benchmarks.ray_account import Spans

    module = types.SimpleNamespace(inner=lambda: sum(range(20_000)))

    class Owner:
        def outer(self) -> int:
            return int(module.inner()) + 1

    owner, spans = Owner(), Spans()
    spans.patch(module, "inner", "inner")
    spans.patch(owner, "outer", "outer")
    for _ in range(20):
        owner.outer()
    assert spans.calls == {"inner": 20, "outer": 20}
    # The outer span excludes the inner one: each is its own, neither is counted twice.
    assert 0 <= spans.cpu_s["outer"] < spans.cpu_s["inner"]
    spans.restore()
    assert "outer" not in vars(owner)  # the class's method again
    assert owner.outer() == sum(range(20_000)) + 1
    assert spans.calls == {"inner": 20, "outer": 20}  # no longer timed
