"""The default RLlib observation filter: statistics once per vector step, merged across runners.

References are numpy's mean and variance over all rows pushed (float64; the filter's
parallel combination rounds differently from a two-pass mean, so ``rtol=1e-12``), the
normalisation written out with numpy, RLlib's own ``merge_states`` / ``set_state`` as
the EnvRunnerGroup calls them, and, for seeded sampling, a second identical run.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from ray.rllib.connectors.env_to_module import EnvToModulePipeline
from ray.rllib.connectors.env_to_module import MeanStdFilter as RLlibMeanStdFilter
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.filter import RunningStat

from pulsebms.agents.rllib_config import RllibPPOConfig, RllibSACConfig
from pulsebms.agents.rllib_connectors import BatchedMeanStdFilter
from pulsebms.agents.rllib_vector_filter import VectorStepMeanStdFilter, combine_rows

OBS = gym.spaces.Box(-1e5, 1e5, (5,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
SCALE = np.array([1.0, 10.0, 100.0, 0.1, 5.0])
RTOL = 1e-12  # the parallel formula against numpy's two-pass mean / variance (float64)


def _filter(cls: type = VectorStepMeanStdFilter, **kwargs: Any) -> Any:
    """A filter connector as RLlib builds one: spaces set after construction."""
    piece = cls(**kwargs)
    piece.input_action_space = ACT
    piece.input_observation_space = OBS
    return piece


def _rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.normal(size=(n, 5)) * SCALE + 3.0).astype(np.float32)


def _push(piece: Any, rows: np.ndarray) -> np.ndarray:
    """One vector step of ``len(rows)`` envs through ``piece``; the normalised rows."""
    episodes = []
    for row in rows:
        episode = SingleAgentEpisode(observation_space=OBS, action_space=ACT)
        episode.add_env_reset(observation=row)
        episodes.append(episode)
    assert piece(rl_module=None, batch={}, episodes=episodes) == {}
    return np.stack([e.get_observations(-1) for e in episodes])


def _stats(piece: Any) -> RunningStat:
    stats: RunningStat = piece._filters[None].running_stats
    return stats


def _assert_stats_of(stats: RunningStat, rows: np.ndarray) -> None:
    x = rows.astype(np.float64)
    assert stats.num_pushes == len(x)
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=RTOL)
    np.testing.assert_allclose(stats.sum_sq_diff_array / (len(x) - 1), x.var(0, ddof=1), rtol=1e-11)
    np.testing.assert_array_equal(stats.std, np.sqrt(stats.var))  # RLlib's float32 std


def test_statistics_are_numpys_over_all_rows_and_each_step_normalised_with_them() -> None:
    rng = np.random.default_rng(0)
    piece = _filter()
    pushed: list[np.ndarray] = []
    for n_envs in (1, 4, 3, 4, 1, 4):  # a first step of one env: no variance yet
        rows = _rows(rng, n_envs)
        if len(pushed) == 3:
            rows[1, 0] = 1e4  # an outlier: the clip at 10 σ acts
        normalised = _push(piece, rows)
        pushed.append(rows)
        everything = np.concatenate(pushed)
        stats = _stats(piece)
        if len(everything) > 1:
            _assert_stats_of(stats, everything)
        # Every env of the step normalised with the statistics after the whole step.
        std = stats.std if len(everything) > 1 else np.zeros(5, np.float32)
        expected = np.clip((rows - stats.mean) / (std + 1e-6), -10.0, 10.0).astype(np.float32)
        assert normalised.dtype == np.float32
        np.testing.assert_array_equal(normalised, expected)
    assert np.abs(normalised).max() <= 10.0


def test_frozen_statistics_normalise_without_updating() -> None:
    rng = np.random.default_rng(1)
    warm = _filter()
    _push(warm, _rows(rng, 6))
    frozen = _filter(update_stats=False)
    frozen.set_state(warm.get_state())
    rows = _rows(rng, 3)
    got = _push(frozen, rows)
    assert frozen.get_state() == warm.get_state()
    stats = _stats(warm)
    np.testing.assert_array_equal(
        got, np.clip((rows - stats.mean) / (stats.std + 1e-6), -10, 10).astype(np.float32)
    )


def test_combine_rows_rejects_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        combine_rows(RunningStat((5,)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="shape"):
        combine_rows(RunningStat((5,)), np.zeros((0, 5)))


def test_merging_two_runners_gives_the_statistics_of_the_union_every_sync() -> None:
    """RLlib's EnvRunnerGroup loop: runners sample, the driver merges, runners get the merge."""
    rng = np.random.default_rng(2)
    driver = _filter()  # the local runner's filter: merges, never samples
    runners = [_filter(), _filter()]
    pushed: list[np.ndarray] = []
    for sync in range(4):
        for runner, n_envs, steps in zip(runners, (4, 2), (3, 5), strict=True):
            for _ in range(steps + sync):
                rows = _rows(rng, n_envs) + sync  # the distribution drifts
                _push(runner, rows)
                pushed.append(rows)
        merged = driver.merge_states([r.get_state() for r in runners])
        _assert_stats_of(_stats(driver), np.concatenate(pushed))
        for runner in runners:
            runner.set_state(merged)
        assert all(r.get_state() == merged for r in runners)


def test_state_moves_between_the_per_row_and_the_vector_filter() -> None:
    """A pipeline keys its pieces' states by class name: both report RLlib's."""
    rng = np.random.default_rng(3)
    vector = _filter()
    _push(vector, _rows(rng, 4))
    assert type(vector).__name__ == RLlibMeanStdFilter.__name__
    assert type(vector).__qualname__ == "VectorStepMeanStdFilter"  # what pickling finds

    def pipeline(piece: Any) -> EnvToModulePipeline:
        return EnvToModulePipeline(
            input_observation_space=OBS, input_action_space=ACT, connectors=[piece]
        )

    for other in (_filter(RLlibMeanStdFilter), _filter(BatchedMeanStdFilter)):
        theirs = pipeline(other)
        theirs.set_state(pipeline(vector).get_state())
        assert theirs.get_state() == pipeline(vector).get_state() != {}
        back = pipeline(_filter())
        back.set_state(theirs.get_state())
        assert back.get_state() == theirs.get_state()


def test_configs_default_to_the_vector_filter_and_name_the_switch() -> None:
    from pulsebms.agents.rllib import _observation_filter

    assert RllibPPOConfig().observation_filter == RllibSACConfig().observation_filter
    assert type(_observation_filter(RllibPPOConfig())()) is VectorStepMeanStdFilter  # type: ignore[misc]
    per_row = _observation_filter(RllibPPOConfig(observation_filter="per_row"))
    assert type(per_row()) is BatchedMeanStdFilter  # type: ignore[misc]
    assert _observation_filter(RllibSACConfig(normalize_observations=False)) is None
    for cls in (RllibPPOConfig, RllibSACConfig):
        with pytest.raises(ValueError, match="observation_filter"):
            cls(observation_filter="welford")


@pytest.mark.filterwarnings(
    "ignore:.*Overriding environment rllib-single-agent-env-v0 already in registry:UserWarning"
)
def test_seeded_sampling_behind_the_vector_filter_repeats(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import torch

    from pulsebms.agents.rllib import build_rllib_algorithm, ray_session

    def sample() -> tuple[list[np.ndarray], Any]:
        algo = build_rllib_algorithm(
            "pulsebms.envs:PulseBMS/FleetSmall-v0",
            env_kwargs={"horizon_steps": 12, "dt_s": 900.0, "fidelity": "ecm"},
            train_batch_size=48,
            minibatch_size=24,
            num_epochs=1,
            hidden_sizes=(8, 8),
            num_envs_per_env_runner=3,
            seed=5,
        )
        try:
            runner = algo.env_runner
            assert type(runner._env_to_module.connectors[0]) is VectorStepMeanStdFilter
            torch.manual_seed(5)
            episodes = runner.sample(num_timesteps=45, explore=True)
            rows = [np.asarray(e.get_observations()) for e in episodes]
            rows += [np.asarray(e.get_actions()) for e in episodes]
            return rows, runner._env_to_module.get_state()
        finally:
            algo.stop()

    with ray_session(num_cpus=1, temp_dir=tmp_path_factory.mktemp("ray")):
        first, first_state = sample()
        again, again_state = sample()
    assert len(first) == len(again) > 0
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert first_state == again_state
    (state,) = first_state["MeanStdFilter"].values()
    # Every observation of every episode (resets included) went through the filter once.
    observations = sum(len(rows) for rows in first[: len(first) // 2])
    assert RunningStat.from_state(state["running_stats"][0]).num_pushes == observations > 45
