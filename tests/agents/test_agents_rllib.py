"""Shielded PPO on RLlib: bounded real training, checkpoint → policy, seeding, the export seam."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from pulsebms.agents.env_factory import make_env
from pulsebms.agents.rllib import (
    RLlibPolicy,
    RllibRun,
    build_rllib_algorithm,
    make_rllib_env,
    ray_session,
    rllib_torch_policy,
    train_rllib,
)
from pulsebms.agents.rllib_module import PulsePPOTorchRLModule
from pulsebms.agents.type_aliases import Policy
from pulsebms.safety import ShieldWrapper

pytestmark = [
    # RLlib's SingleAgentEnvRunner re-registers its gymnasium wrapper id on every env
    # creation, so a second algorithm in one process (same-seed test) makes gymnasium warn.
    pytest.mark.filterwarnings(
        "ignore:.*Overriding environment rllib-single-agent-env-v0 already in registry:UserWarning"
    ),
]

ENV_ID = "pulsebms.envs:PulseBMS/FleetSmall-v0"  # the worker-safe id form
ENV_KWARGS = {"horizon_steps": 32, "dt_s": 900.0}
ITERATIONS = 2
BATCH = 64  # two short episodes per iteration
HYPER = {
    "train_batch_size": BATCH,
    "minibatch_size": 32,
    "num_epochs": 2,
    "hidden_sizes": (16, 16),
    "log_std_init": -0.5,  # a free log-std, as SB3's PPO
}


@dataclass(frozen=True)
class Runs:
    first: RllibRun
    same_seed: RllibRun
    other_seed: RllibRun


def _train(seed: int, out: Path) -> RllibRun:
    algo = build_rllib_algorithm(ENV_ID, env_kwargs=ENV_KWARGS, shield=True, seed=seed, **HYPER)
    try:
        return train_rllib(algo, iterations=ITERATIONS, checkpoint_dir=out)
    finally:
        algo.stop()


@pytest.fixture(scope="module")
def ray_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ray")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, ray_tmp: Path) -> Runs:
    out = tmp_path_factory.mktemp("rllib")
    with ray_session(num_cpus=2, temp_dir=ray_tmp):
        return Runs(
            first=_train(0, out / "a"),
            same_seed=_train(0, out / "b"),
            other_seed=_train(1, out / "c"),
        )


def _probe_observations(n_random: int = 32) -> np.ndarray:
    """Observations from a short shielded rollout plus seeded samples of the space."""
    env = make_env("PulseBMS/FleetSmall-v0", **ENV_KWARGS)
    obs, _ = env.reset(seed=3)
    rows = [obs]
    for _ in range(8):
        obs, *_ = env.step(np.full(env.action_space.shape, 0.3, dtype=np.float32))
        rows.append(obs)
    space = env.observation_space
    env.close()
    rng = np.random.default_rng(7)
    random_rows = rng.uniform(space.low, space.high, size=(n_random, *space.shape))
    return np.concatenate([np.asarray(rows), random_rows]).astype(np.float32)


# ---------------------------------------------------------------- fast: no Ray runtime


def _wrappers(env: gym.Env) -> list[type]:
    kinds = []
    while isinstance(env, gym.Wrapper):
        kinds.append(type(env))
        env = env.env
    return kinds


def test_env_creator_shields_and_accepts_the_worker_id_form() -> None:
    env = make_rllib_env({"env_id": ENV_ID, "shield": True, "env_kwargs": ENV_KWARGS})
    bare = make_rllib_env({"env_id": "PulseBMS/FleetSmall-v0", "shield": False})
    try:
        assert ShieldWrapper in _wrappers(env)
        assert ShieldWrapper not in _wrappers(bare)
        obs, _ = env.reset(seed=0)
        _, _, _, _, info = env.step(env.action_space.sample())
        assert obs in env.observation_space
        assert set(info) == {"cost", "cost_pre_shield", "shield_interventions"}
    finally:
        env.close()
        bare.close()


def test_compact_info_sums_the_full_infos_of_the_episode() -> None:
    # The runners keep a few info entries per step; the episode's sums at its last step
    # are those of the full infos (the same env without the wrapper, same seed/actions).
    config = {"env_id": ENV_ID, "env_kwargs": {"horizon_steps": 6, "dt_s": 900.0}}
    compact = make_rllib_env(config)
    full = make_rllib_env({**config, "info_keys": None})
    sums = {"cost": 0.0, "cost_pre_shield": 0.0, "shield_interventions": 0.0}
    try:
        compact.reset(seed=4)
        full.reset(seed=4)
        rng = np.random.default_rng(0)
        done = False
        while not done:
            action = rng.uniform(-1.0, 1.0, 3).astype(np.float32)
            *_, term, trunc, info = compact.step(action)
            *_, _, _, full_info = full.step(action)
            assert "shield" in full_info
            assert "shield" not in info
            for key in sums:
                sums[key] += float(full_info[key])
            done = term or trunc
    finally:
        compact.close()
        full.close()
    assert sums["shield_interventions"] > 0  # random actions: the shield had work to do
    assert info["episode_totals"] == pytest.approx(sums)
    assert full_info["episode_totals"] == pytest.approx(sums)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"algorithm": "DQN"}, "unknown RLlib algorithm"),
        ({"train_batch_size": 32, "minibatch_size": 64}, "must not exceed"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"num_env_runners": -1}, "num_env_runners"),
    ],
)
def test_bad_hyperparameters_fail_before_ray_starts(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_rllib_algorithm(ENV_ID, **kwargs)  # type: ignore[arg-type]


def test_loading_a_non_checkpoint_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not an RLlib"):
        RLlibPolicy.from_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["RLlibPolicy", "DeployedRLlibPolicy", "rllib_torch_policy"])
def test_policy_loading_keeps_its_old_import_path(name: str) -> None:
    from pulsebms.agents import rllib, rllib_policy

    assert name in rllib.__all__
    assert getattr(rllib, name) is getattr(rllib_policy, name)


def test_train_rejects_zero_iterations(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="iterations"):
        train_rllib(None, iterations=0, checkpoint_dir=tmp_path)  # type: ignore[arg-type]


# ---------------------------------------------------------------- slow: real training


@pytest.mark.slow
def test_training_reports_each_iteration_and_checkpoints(runs: Runs) -> None:
    run = runs.first
    assert [m.iteration for m in run.metrics] == list(range(1, ITERATIONS + 1))
    assert [m.env_steps_lifetime for m in run.metrics] == [
        BATCH * (i + 1) for i in range(ITERATIONS)
    ]
    last = run.metrics[-1]
    assert last.episodes_lifetime >= 2
    assert np.isfinite(last.episode_return_mean)
    assert last.episode_len_mean == ENV_KWARGS["horizon_steps"]
    assert last.episode_cost_mean == 0.0  # the shield keeps every measured limit
    assert last.shield_interventions_mean >= 0.0
    assert np.isfinite([last.policy_loss, last.vf_loss, last.entropy]).all()
    assert all(m.time_this_iter_s > 0 for m in run.metrics)
    assert (run.checkpoint_path / "rllib_checkpoint.json").is_file()
    # The episode sums come from the env's last info (CompactInfo), not per-step callbacks.
    assert last.episode_cost_pre_shield_mean >= 0.0


@pytest.mark.slow
def test_log_std_starts_at_log_std_init_and_is_learned(runs: Runs) -> None:
    module = runs.first.policy().module
    assert isinstance(module, PulsePPOTorchRLModule)
    log_std = module.pi.log_std
    assert isinstance(log_std, torch.nn.Parameter)
    assert log_std.shape == (3,)
    # Two small updates moved it off -0.5, but not far.
    values = log_std.detach().numpy()
    assert np.all(np.abs(values + 0.5) < 0.05)
    assert np.any(values != -0.5)


@pytest.mark.slow
def test_policy_acts_deterministically_within_the_action_space(runs: Runs) -> None:
    policy = runs.first.policy()
    assert isinstance(policy, Policy)
    assert policy.observation_stats() is not None  # trained behind MeanStdFilter
    env = make_env("PulseBMS/FleetSmall-v0", **ENV_KWARGS)
    space = env.action_space
    assert isinstance(space, gym.spaces.Box)
    obs, _ = env.reset(seed=5)
    for _ in range(ENV_KWARGS["horizon_steps"]):
        action = policy.act(obs)
        assert action.dtype == np.float32
        assert action.shape == space.shape
        assert action in space
        np.testing.assert_array_equal(policy.act(obs), action)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    env.close()
    # Far outside the observation space the mean action still comes back clipped.
    extreme = np.full(policy.observation_space.shape, 1e6, dtype=np.float32)
    assert policy.act(extreme) in space
    assert policy.act(-extreme) in space


@pytest.mark.slow
def test_same_seed_gives_identical_training_and_actions(runs: Runs) -> None:
    probe = _probe_observations()
    first = runs.first.policy().predict(probe)
    again = runs.same_seed.policy().predict(probe)
    other = runs.other_seed.policy().predict(probe)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # Everything but wall time repeats: returns, costs, losses, step counts.
    untimed = [
        [replace(m, time_this_iter_s=0.0) for m in run.metrics]
        for run in (runs.first, runs.same_seed)
    ]
    assert untimed[0] == untimed[1]


@pytest.mark.slow
def test_torch_seam_matches_the_policy(runs: Runs) -> None:
    policy = runs.first.policy()
    module = rllib_torch_policy(runs.first.checkpoint_path)
    assert isinstance(module, torch.nn.Module)
    probe = _probe_observations()
    with torch.no_grad():
        seam = module(torch.from_numpy(probe)).numpy()
    acts = np.stack([policy.act(o) for o in probe])
    np.testing.assert_allclose(seam, acts, rtol=0.0, atol=1e-6)
    assert seam.dtype == np.float32
    assert (np.abs(seam) <= 1.0).all()


@pytest.mark.slow
def test_torch_seam_exports_to_onnx_with_parity(runs: Runs) -> None:
    import onnx  # noqa: F401
    import onnxruntime as ort

    from pulsebms.export.graph import to_onnx

    policy = runs.first.policy()
    probe = _probe_observations()
    model = to_onnx(rllib_torch_policy(runs.first.checkpoint_path), probe.shape[1])
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (onnx_actions,) = session.run(None, {session.get_inputs()[0].name: probe})
    np.testing.assert_allclose(onnx_actions, policy.predict(probe), rtol=0.0, atol=1e-5)
