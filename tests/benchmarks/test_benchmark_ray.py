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
    assert bench.main(["--quick", "--envs", "2", "--batch", "64", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    result_lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert result_lines, out[-2000:]
    result = json.loads(result_lines[-1][len("RESULT ") :])
    for name in ("sb3_ppo", "rllib_local_runner", "rllib_1_runner", "rllib_2_runners"):
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
    # RLlib's eager update and foreach Adam unless --compile-learner / --fused-adam.
    assert result["compile_learner"] is False
    assert result["fused_adam"] is False
    assert "RLlib Learner: torch.compile off, Adam foreach" in out
    assert "Ray metrics collection: off" in out
    assert "RLlib PPO loss: as SB3's PPO" in out
    assert "1 runner = one remote EnvRunner process (num_env_runners=1)" in out
    for key in (
        "sample_wall_2_over_1_runner",
        "train_busy_1_runner_over_sb3",
        "train_busy_local_runner_over_sb3",
    ):
        assert math.isfinite(result[key]), key


def test_batch_must_split_over_two_runners() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--envs", "4", "--batch", "100"])
