"""The batched GAE computes what RLlib's GAE computes, bit for bit.

References are RLlib's own pieces: ``compute_value_targets`` on the same rows, and a PPO
Learner's default learner pipeline (RLlib's ``GeneralAdvantageEstimation``) on the same
episodes with the same module weights.
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.learner.general_advantage_estimation import (
    GeneralAdvantageEstimation,
)
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.postprocessing.value_predictions import compute_value_targets

from pulsebms.agents.rllib_gae import (
    BatchedGeneralAdvantageEstimation,
    batch_learner_connector,
    gae_value_targets,
)
from pulsebms.agents.rllib_learner import PulsePPOTorchLearner
from pulsebms.agents.rllib_module import PulsePPOTorchRLModule, log_std_model_config

OBS_SPACE = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
ACT_SPACE = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
MODULE = "default_policy"


def _rows(n: int, seed: int) -> dict[str, np.ndarray]:
    """Rows as RLlib's learner pipeline hands them to GAE: chunks + bootstrap rows."""
    rng = np.random.default_rng(seed)
    terminateds = rng.random(n) < 0.05
    truncateds = ~terminateds & (rng.random(n) < 0.1)
    return {
        "values": rng.normal(size=n).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminateds": terminateds,
        "truncateds": truncateds,
    }


@pytest.mark.parametrize("case", ["float32", "float64-rewards", "non-finite", "float32-flags"])
def test_value_targets_are_rllibs_bit_for_bit(case: str) -> None:
    rows = _rows(700, seed=4)
    if case == "float64-rewards":
        rows["rewards"] = rows["rewards"].astype(np.float64) * 1e3
    if case == "non-finite":
        rows["values"][[3, 50]] = [np.nan, np.inf]
        rows["rewards"][99] = -np.inf
    if case == "float32-flags":  # float32 residuals: RLlib's own recursion runs
        rows["terminateds"] = rows["terminateds"].astype(np.float32)
        rows["truncateds"] = rows["truncateds"].astype(np.float32)
    for gamma, lambda_ in ((0.99, 0.95), (0.9, 1.0), (1.0, 0.0)):
        with np.errstate(invalid="ignore"):  # inf · 0 (RLlib's numpy scalars warn)
            ours = gae_value_targets(**rows, gamma=gamma, lambda_=lambda_)
            theirs = compute_value_targets(**rows, gamma=gamma, lambda_=lambda_)
        assert ours.dtype == theirs.dtype == np.float32
        if case != "non-finite":
            assert ours.tobytes() == theirs.tobytes()
        else:  # NaN where RLlib has NaN (a NaN's sign bit is the CPU's choice), else bitwise
            nan = np.isnan(theirs)
            assert nan.any()
            np.testing.assert_array_equal(np.isnan(ours), nan)
            assert ours[~nan].tobytes() == theirs[~nan].tobytes()


def _learner(cls: type[PPOTorchLearner], **model: Any) -> Any:
    config = (
        PPOConfig()
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .environment(observation_space=OBS_SPACE, action_space=ACT_SPACE)
        .training(gamma=0.97, lambda_=0.9, train_batch_size_per_learner=64)
        .rl_module(
            rl_module_spec=RLModuleSpec(module_class=PulsePPOTorchRLModule),
            model_config={"fcnet_hiddens": [8], **log_std_model_config(-0.5), **model},
        )
        .learners(learner_class=cls)
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return config.build_learner(env=None)


def _episode(
    rng: np.random.Generator,
    length: int,
    *,
    terminated: bool = False,
    truncated: bool = False,
    lookback: int = 0,
) -> SingleAgentEpisode:
    steps = lookback + length
    episode = SingleAgentEpisode(
        observations=list(rng.uniform(-1, 1, (steps + 1, 5)).astype(np.float32)),
        infos=[{} for _ in range(steps + 1)],
        actions=list(rng.uniform(-1, 1, (steps, 2)).astype(np.float32)),
        rewards=[float(r) for r in rng.normal(size=steps)],
        extra_model_outputs={
            Columns.ACTION_LOGP: list(rng.normal(size=steps).astype(np.float32)),
            Columns.ACTION_DIST_INPUTS: list(rng.normal(size=(steps, 4)).astype(np.float32)),
        },
        terminated=terminated,
        truncated=truncated,
        t_started=lookback,
        len_lookback_buffer=lookback,
        observation_space=OBS_SPACE,
        action_space=ACT_SPACE,
    )
    return episode.to_numpy()


def _episodes(seed: int) -> list[SingleAgentEpisode]:
    """Episode chunks of every kind GAE meets.

    Terminated, env-truncated, cut by the runner, a single step, and later chunks of
    episodes that began in earlier iterations (lookback, ``t_started > 0``).
    """
    rng = np.random.default_rng(seed)
    return [
        _episode(rng, 7, terminated=True),
        _episode(rng, 5, truncated=True),
        _episode(rng, 9),  # cut at the iteration's end: AddOneTs truncates it
        _episode(rng, 1, terminated=True),
        _episode(rng, 6, terminated=True, lookback=4),  # spans two iterations
        _episode(rng, 3, lookback=2),  # spans three
    ]


def _train_batch(learner: Any, seed: int) -> dict[str, Any]:
    batch = learner._learner_connector(
        rl_module=learner.module,
        batch={},
        episodes=_episodes(seed),
        shared_data={},
        metrics=None,
    )
    return dict(batch[MODULE])


def test_pulse_learner_gae_is_rllibs_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    from pulsebms.agents import rllib_gae

    def fallback(**kwargs: Any) -> Any:
        raise AssertionError("the float64 recursion should run, not RLlib's")

    monkeypatch.setattr(rllib_gae, "compute_value_targets", fallback)
    rllib, pulse = _learner(PPOTorchLearner), _learner(PulsePPOTorchLearner)
    assert [type(p) for p in rllib._learner_connector.connectors].count(
        GeneralAdvantageEstimation
    ) == 1
    (ours,) = [
        p for p in pulse._learner_connector.connectors if isinstance(p, GeneralAdvantageEstimation)
    ]
    assert type(ours) is BatchedGeneralAdvantageEstimation
    assert (ours.gamma, ours.lambda_) == (0.97, 0.9)
    for a, b in zip(
        rllib.module[MODULE].parameters(), pulse.module[MODULE].parameters(), strict=True
    ):
        assert torch.equal(a, b)  # the same weights: the same value predictions
    for seed in (0, 1):  # the connector keeps its tensor converter between calls
        theirs, mine = _train_batch(rllib, seed), _train_batch(pulse, seed)
        assert sorted(mine) == sorted(theirs)
        for key, value in theirs.items():
            if isinstance(value, torch.Tensor):
                assert mine[key].dtype == value.dtype, key
                assert torch.equal(mine[key], value), key
            else:
                assert mine[key] == value, key
        advantages = mine[Postprocessing.ADVANTAGES]
        assert advantages.shape == (31 + 6,)  # the steps and one bootstrap row per chunk
        assert not advantages.requires_grad
        assert mine[Postprocessing.VALUE_TARGETS].dtype == torch.float32


def test_only_rllibs_gae_of_stateless_modules_is_replaced() -> None:
    class OwnGAE(GeneralAdvantageEstimation):
        pass

    from ray.rllib.connectors.learner import LearnerConnectorPipeline

    pipeline = LearnerConnectorPipeline(connectors=[OwnGAE(gamma=0.9, lambda_=0.9)])
    assert batch_learner_connector(pipeline, stateful=False) is False
    pipeline = LearnerConnectorPipeline(
        connectors=[GeneralAdvantageEstimation(gamma=0.9, lambda_=0.8)]
    )
    assert batch_learner_connector(pipeline, stateful=True) is False
    assert type(pipeline.connectors[0]) is GeneralAdvantageEstimation
    assert batch_learner_connector(pipeline, stateful=False) is True
    assert type(pipeline.connectors[0]) is BatchedGeneralAdvantageEstimation
    assert batch_learner_connector(None, stateful=False) is False
