"""Shielded SB3 agents: bit-repeatable per seed, save/load round trip, old import paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pulsebms.agents import lagrangian, sb3, sb3_logging
from pulsebms.agents.env_factory import make_env, make_env_factory
from pulsebms.agents.policy import SB3Policy
from pulsebms.agents.sb3 import PPOConfig, SACConfig, TrainResult, train_agent

ENV_KWARGS = {"horizon_steps": 16, "dt_s": 900.0}
CONFIGS = {
    "ppo": PPOConfig(n_steps=32, batch_size=16, n_epochs=2, net_arch=(16, 16)),
    "sac": SACConfig(
        buffer_size=256, batch_size=16, learning_starts=16, net_arch=(16, 16), gradient_steps=1
    ),
}


def _train(algo: str, seed: int, out: Path) -> TrainResult:
    return train_agent(
        CONFIGS[algo],
        make_env_factory("PulseBMS/FleetSmall-v0", **ENV_KWARGS),
        total_timesteps=48,
        seed=seed,
        out_dir=out,
    )


def _probe_observations() -> np.ndarray:
    env = make_env("PulseBMS/FleetSmall-v0", **ENV_KWARGS)
    obs, _ = env.reset(seed=3)
    rows = [obs]
    for _ in range(4):
        obs, *_ = env.step(env.action_space.sample() * 0.0)
        rows.append(obs)
    env.close()
    return np.asarray(rows)


@pytest.mark.parametrize("algo", sorted(CONFIGS))
def test_same_seed_gives_identical_actions_and_round_trips(algo: str, tmp_path: Path) -> None:
    probe = _probe_observations()
    first = _train(algo, 0, tmp_path / "a")
    second = _train(algo, 0, tmp_path / "b")
    other = _train(algo, 1, tmp_path / "c")
    acts_a = np.array([first.policy.act(o) for o in probe])
    acts_b = np.array([second.policy.act(o) for o in probe])
    acts_c = np.array([other.policy.act(o) for o in probe])
    assert np.array_equal(acts_a, acts_b)
    assert not np.array_equal(acts_a, acts_c)
    loaded = SB3Policy.load(first.model_path)
    assert loaded.vec_normalize is not None
    assert np.array_equal(np.array([loaded.act(o) for o in probe]), acts_a)
    assert np.all(np.abs(acts_a) <= 1.0)


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("LagrangianPenalty", lagrangian),
        ("LagrangianCallback", lagrangian),
        ("WandbWriter", sb3_logging),
        ("make_logger", sb3_logging),
    ],
)
def test_moved_names_keep_their_old_import_path(name: str, home: object) -> None:
    assert name in sb3.__all__
    assert getattr(sb3, name) is getattr(home, name)


def test_logger_writes_csv_and_forwards_scalars_to_wandb(tmp_path: Path) -> None:
    class Run:
        def __init__(self) -> None:
            self.logged: list[tuple[dict[str, float], int]] = []

        def log(self, values: dict[str, float], step: int) -> None:
            self.logged.append((values, step))

    run = Run()
    logger = sb3_logging.make_logger(tmp_path, ("csv",), wandb_run=run)
    logger.record("train/loss", 0.5)
    logger.record("train/name", "text")  # not a scalar: not forwarded
    logger.dump(step=7)
    logger.close()
    assert run.logged == [({"train/loss": 0.5}, 7)]
    assert "train/loss" in (tmp_path / "progress.csv").read_text()


def test_a_model_built_without_a_logger_leaves_no_folder_and_still_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lagrangian_fixtures import CountdownEnv
    from stable_baselines3.common.vec_env import DummyVecEnv

    default_dir = tmp_path / "sb3_default"  # where SB3's own default logger would go
    monkeypatch.setenv("SB3_LOGDIR", str(default_dir))
    config = PPOConfig(n_steps=16, batch_size=16, n_epochs=1, net_arch=(8,))
    model = sb3.build_model(config, DummyVecEnv([CountdownEnv]), seed=0)
    model.learn(total_timesteps=16)
    model.learn(total_timesteps=16, reset_num_timesteps=False)
    assert not default_dir.exists()  # nothing written per learn call
    assert model.logger.output_formats == []
    assert "train/loss" in model.logger.name_to_value  # values are still recorded
