"""SAC with prioritized replay on RLlib, the Ray session's lifecycle, and the variant seams."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from pulsebms.agents.rllib import (
    RaySettings,
    RllibPPOConfig,
    RllibRun,
    RllibSACConfig,
    build_rllib_algorithm,
    ray_session,
    rllib_torch_policy,
    train_rllib,
)

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:.*Overriding environment rllib-single-agent-env-v0 already in registry:UserWarning"
    ),
]

ENV_ID = "pulsebms.envs:PulseBMS/FleetSmall-v0"
ENV_KWARGS = {"horizon_steps": 16, "dt_s": 900.0}
SAC = RllibSACConfig(
    train_batch_size=32,
    learning_starts=32,
    buffer_capacity=1000,
    hidden_sizes=(16, 16),
    rollout_fragment_length=16,  # 32 steps (2 envs) and one update per iteration
)


# ---------------------------------------------------------------- fast: no Ray runtime


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prioritized_replay_alpha": 1.5}, "prioritized_replay_alpha"),
        ({"prioritized_replay_beta": -0.1}, "prioritized_replay_beta"),
        ({"buffer_capacity": 0}, "buffer_capacity"),
        ({"learning_starts": -1}, "learning_starts"),
        ({"rollout_fragment_length": 0}, "rollout_fragment_length"),
    ],
)
def test_sac_config_rejects_impossible_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RllibSACConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_env_runners": -1}, "num_env_runners"),
        ({"num_envs_per_env_runner": 0}, "num_envs_per_env_runner"),
        ({"num_cpus": 0}, "num_cpus"),
        ({"address": " "}, "address"),
    ],
)
def test_ray_settings_reject_impossible_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RaySettings(**kwargs)


@pytest.mark.parametrize(
    ("address", "joins"),
    [(None, False), ("local", False), ("LOCAL", False), ("auto", True), ("1.2.3.4:6379", True)],
)
def test_ray_settings_tell_a_cluster_from_a_local_ray(address: str | None, joins: bool) -> None:
    assert RaySettings(address=address).joins_cluster is joins


def test_build_rejects_contradictions_and_unknown_fields() -> None:
    with pytest.raises(ValueError, match="contradicts"):
        build_rllib_algorithm(ENV_ID, RllibPPOConfig(), algorithm="SAC")
    with pytest.raises(TypeError, match="no field"):
        build_rllib_algorithm(ENV_ID, SAC, minibatch_size=8)
    with pytest.raises(ValueError, match="num_envs_per_env_runner"):
        build_rllib_algorithm(ENV_ID, SAC, num_envs_per_env_runner=0)


def test_train_needs_exactly_one_budget(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        train_rllib(None, checkpoint_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one"):
        train_rllib(None, iterations=1, total_env_steps=1, checkpoint_dir=tmp_path)  # type: ignore[arg-type]


def test_bad_log_level_fails_before_ray_starts() -> None:
    import ray

    with pytest.raises(ValueError, match="log_level"), ray_session(log_level="LOUD"):
        pass  # pragma: no cover - never entered
    assert not ray.is_initialized()


# ---------------------------------------------------------------- slow: real Ray


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short session folder (Ray's socket paths are limited to ~107 characters)."""
    path = Path(tempfile.mkdtemp(prefix="pb-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_session_shuts_ray_down_when_the_block_raises(ray_tmp: Path) -> None:
    import ray
    from ray._private.state import state as ray_state  # the GCS's system config

    seen: dict[str, float | None] = {}

    @ray.remote
    def niceness() -> int:
        return os.nice(0)

    def fail_inside() -> None:
        with ray_session(num_cpus=2, temp_dir=ray_tmp):
            seen["cpus"] = ray.cluster_resources()["CPU"]
            # Workers (EnvRunners) run at the driver's priority, not Ray's +15.
            seen["worker_niceness"] = ray.get(niceness.remote()) - os.nice(0)
            # The system config every Ray process of the session reads (from the GCS):
            # Ray's metrics collection off (metrics=False, the default).
            system = ray_state.get_system_config()
            seen["enable_metrics_collection"] = system.get("enable_metrics_collection")
            # No task events (task_events=False, the default): the buffer is off.
            seen["task_events_report_interval_ms"] = system.get("task_events_report_interval_ms")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert seen == {
        "cpus": 2.0,
        "worker_niceness": 0,
        "enable_metrics_collection": False,
        "task_events_report_interval_ms": 0,
    }
    assert not ray.is_initialized()
    # Each process that read it skipped its metrics: the raylet logs that it did.
    raylet_logs = list(ray_tmp.glob("session_*/logs/raylet.out"))
    assert raylet_logs
    assert all("Disabled stats" in log.read_text() for log in raylet_logs)
    # The driver and the workers kept no task events: their core workers say so.
    core_logs = list(ray_tmp.glob("session_*/logs/python-core-*.log"))
    assert any("core-driver" in log.name for log in core_logs)
    assert any("core-worker" in log.name for log in core_logs)
    assert all("Task Event Buffer is disabled" in log.read_text() for log in core_logs)


@dataclass(frozen=True)
class SacRun:
    run: RllibRun
    buffer_type: str
    priorities: np.ndarray
    hook_calls: list[str]


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory: pytest.TempPathFactory) -> SacRun:
    calls: list[str] = []

    def hook(config: Any) -> Any:
        calls.append(type(config).__name__)
        return config

    out = tmp_path_factory.mktemp("sac")
    with ray_session(num_cpus=2, temp_dir=tmp_path_factory.mktemp("ray")):
        algo = build_rllib_algorithm(
            ENV_ID, SAC, env_kwargs=ENV_KWARGS, seed=0, num_envs_per_env_runner=2, config_hook=hook
        )
        try:
            run = train_rllib(algo, total_env_steps=200, checkpoint_dir=out)
            buffer = algo.local_replay_buffer
            tree = buffer._sum_segment  # the priorities' sum tree
            priorities = np.array([tree[i] for i in range(buffer.get_num_timesteps())])
        finally:
            algo.stop()
    return SacRun(run, type(buffer).__name__, priorities, calls)


@pytest.mark.slow
def test_sac_trains_on_prioritized_replay(sac_run: SacRun) -> None:
    metrics = sac_run.run.metrics
    assert metrics[-1].env_steps_lifetime >= 200
    assert np.isfinite([metrics[-1].qf_loss, metrics[-1].policy_loss, metrics[-1].alpha]).all()
    assert sac_run.buffer_type == "PrioritizedEpisodeReplayBuffer"
    # Priorities start equal (the max priority, 1.0) and are rewritten from TD errors:
    # after the updates they differ, so replay is not uniform.
    p = sac_run.priorities
    assert p.size >= 200
    assert (p > 0).all()
    assert np.unique(np.round(p, 9)).size > 10
    assert p.min() < 1.0


@pytest.mark.slow
def test_sac_policy_and_torch_seam_agree_on_the_squashed_mean(sac_run: SacRun) -> None:
    policy = sac_run.run.policy()
    space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    rng = np.random.default_rng(0)
    obs_space = policy.observation_space
    probe = rng.uniform(obs_space.low, obs_space.high, (64, *obs_space.shape)).astype(np.float32)
    acts = policy.predict(probe)
    assert all(a in space for a in acts)
    # The deterministic action is tanh of the Gaussian's mean (not RLlib's clipped loc).
    obs = np.asarray(policy.observation_filter(probe, update=False), dtype=np.float32)
    with torch.no_grad():
        out = policy.module.forward_inference({"obs": torch.from_numpy(obs)})
    loc = out["action_dist_inputs"][:, :3].numpy()
    np.testing.assert_allclose(acts, np.tanh(loc), atol=1e-6)
    with torch.no_grad():
        seam = rllib_torch_policy(sac_run.run.checkpoint_path)(torch.from_numpy(probe)).numpy()
    np.testing.assert_allclose(seam, acts, rtol=0.0, atol=1e-6)


@pytest.mark.slow
def test_config_hook_runs_once_before_the_build(sac_run: SacRun) -> None:
    assert sac_run.hook_calls == ["SACConfig"]


@pytest.mark.slow
def test_variant_config_supplies_learner_class_and_hook(tmp_path: Path, ray_tmp: Path) -> None:
    from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner

    class MarkedLearner(PPOTorchLearner):
        pass

    seen: list[float] = []

    class Variant(RllibPPOConfig):  # brings its own seams, as PPO-Lagrangian's config may
        def rllib_learner_class(self) -> type:
            return MarkedLearner

        def rllib_config_hook(self, config: Any) -> Any:
            seen.append(config.lr)
            return config.training(lr=1e-3)

    agent = Variant(train_batch_size=32, minibatch_size=16, num_epochs=1, hidden_sizes=(8, 8))
    with ray_session(num_cpus=2, temp_dir=ray_tmp):
        algo = build_rllib_algorithm(ENV_ID, agent, env_kwargs=ENV_KWARGS)
        try:
            run = train_rllib(algo, iterations=1, checkpoint_dir=tmp_path / "ckpt")
            learner = algo.learner_group._learner
            assert type(learner) is MarkedLearner
            assert algo.config.lr == 1e-3
        finally:
            algo.stop()
    assert seen == [agent.lr]
    assert run.metrics[-1].env_steps_lifetime == 32


@pytest.mark.slow
def test_sac_checkpoint_exports_to_onnx_with_parity(sac_run: SacRun) -> None:
    import onnxruntime as ort

    from pulsebms.export.graph import to_onnx

    policy = sac_run.run.policy()
    rng = np.random.default_rng(1)
    space = policy.observation_space
    probe = rng.uniform(space.low, space.high, (32, *space.shape)).astype(np.float32)
    model = to_onnx(rllib_torch_policy(sac_run.run.checkpoint_path), probe.shape[1])
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (onnx_actions,) = session.run(None, {session.get_inputs()[0].name: probe})
    np.testing.assert_allclose(onnx_actions, policy.predict(probe), rtol=0.0, atol=1e-5)
