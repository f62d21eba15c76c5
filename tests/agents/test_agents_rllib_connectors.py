"""The batched EnvRunner connectors compute what RLlib's per-env pieces compute, bit for bit.

References are RLlib's own classes on the same inputs: ``RunningStat.push`` per row, the
``MeanStdFilter`` connector over the same episodes, ``unsquash_action`` / ``clip_action``
per action, and, end to end, a local RLlib ``SingleAgentEnvRunner`` with RLlib's filter
sampling the same seeded env and module as :class:`PulseEnvRunner` with the batched ones.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.connectors.env_to_module import MeanStdFilter as RLlibMeanStdFilter
from ray.rllib.connectors.module_to_env.normalize_and_clip_actions import (
    NormalizeAndClipActions,
)
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.filter import RunningStat
from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

from pulsebms.agents.rllib_connectors import (
    BatchedMeanStdFilter,
    BatchedNormalizeAndClipActions,
    BatchObservationsForModule,
    FlatTensorToNumpy,
    GaussianGetActions,
    ListifyBatchForVectorEnv,
    batch_module_to_env,
    push_rows,
    running_stds,
)

OBS = gym.spaces.Box(-50.0, 50.0, (6,), np.float32)
ACT = gym.spaces.Box(np.array([-2.0, 0.0, -1.0], np.float32), np.array([2.0, 5.0, 1.0], np.float32))


def _state_arrays(stats: RunningStat) -> list[Any]:
    return [
        stats.num_pushes,
        stats.num_pushes_delta,
        stats.mean_array.tobytes(),
        stats.mean_delta_array.tobytes(),
        stats.sum_sq_diff_array.tobytes(),
        stats.sum_sq_diff_delta_array.tobytes(),
    ]


def test_push_rows_is_rllibs_push_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    reference, batched, plain = RunningStat((6,)), RunningStat((6,)), RunningStat((6,))
    for k in (1, 4, 3, 7):  # several vector steps, from an empty and a filled state
        rows = (rng.normal(size=(k, 6)) * rng.uniform(0.1, 100.0, size=6)).astype(np.float32)
        expected_std = []
        for row in rows:
            reference.push(row)
            expected_std.append(reference.std)
        means, sums_sq, counts = push_rows(batched, rows)
        assert push_rows(plain, rows, snapshots=False)[0].size == 0
        assert _state_arrays(batched) == _state_arrays(reference) == _state_arrays(plain)
        assert counts[-1] == reference.num_pushes
        np.testing.assert_array_equal(means[-1], reference.mean)
        np.testing.assert_array_equal(running_stds(sums_sq, counts), np.stack(expected_std))
    with pytest.raises(ValueError, match="shape"):
        push_rows(batched, np.zeros((2, 5)))


def _module() -> Any:
    from pulsebms.agents.rllib_module import PulsePPOTorchRLModule, log_std_model_config

    return PulsePPOTorchRLModule(
        observation_space=OBS,
        action_space=ACT,
        model_config={"fcnet_hiddens": [8], **log_std_model_config(-0.7)},
    )


def _filter(cls: type, **kwargs: Any) -> Any:
    """A filter connector as RLlib builds one: spaces set after construction."""
    piece = cls(**kwargs)
    piece.input_action_space = ACT
    piece.input_observation_space = OBS
    return piece


def _episodes(rows: np.ndarray) -> list[SingleAgentEpisode]:
    episodes = []
    for row in rows:
        episode = SingleAgentEpisode(observation_space=OBS, action_space=ACT)
        episode.add_env_reset(observation=row)
        episodes.append(episode)
    return episodes


def _step(episodes: list[SingleAgentEpisode], rows: np.ndarray) -> None:
    for episode, row in zip(episodes, rows, strict=True):
        episode.add_env_step(observation=row, action=ACT.sample(), reward=0.0)


@pytest.mark.parametrize("update_stats", [True, False])
def test_batched_filter_normalises_and_keeps_state_like_rllibs(update_stats: bool) -> None:
    rng = np.random.default_rng(1)
    steps = [
        (rng.normal(size=(4, 6)) * [1, 10, 100, 0.1, 5, 50] + 3).astype(np.float32)
        for _ in range(6)
    ]
    steps[2][1, 0] = 1e4  # an outlier, clipped at 10 σ
    filters = [
        _filter(cls, update_stats=update_stats)
        for cls in (RLlibMeanStdFilter, BatchedMeanStdFilter)
    ]
    if not update_stats:  # frozen statistics from some earlier data
        warm = _filter(RLlibMeanStdFilter)
        warm_eps = _episodes(steps[0])
        warm(rl_module=None, batch={}, episodes=warm_eps)
        for f in filters:
            f.set_state(warm.get_state())
    runs = []
    for piece in filters:
        episodes = _episodes(steps[0])
        piece(rl_module=None, batch={}, episodes=episodes)
        for rows in steps[1:]:
            _step(episodes, rows)
            assert piece(rl_module=None, batch={}, episodes=episodes) == {}
        runs.append([np.stack(e.get_observations()) for e in episodes])
        assert all(e.observation_space == piece.observation_space for e in episodes)
    for reference, batched in zip(*runs, strict=True):
        assert reference.dtype == batched.dtype == np.float32
        np.testing.assert_array_equal(batched, reference)
    if not update_stats:  # against frozen statistics the outlier is clipped at 10 σ
        assert abs(runs[1][1][2, 0]) == 10.0
    reference_state, batched_state = (f.get_state() for f in filters)
    assert reference_state == batched_state  # counts, means, sums of squares and deltas


def test_batched_filter_keeps_rllibs_name_and_state_both_ways() -> None:
    """Old checkpoints (RLlib's filter) restore into it and its state into RLlib's."""
    from ray.rllib.connectors.env_to_module import EnvToModulePipeline

    rows = np.arange(24, dtype=np.float32).reshape(4, 6)
    ours = _filter(BatchedMeanStdFilter)
    ours(rl_module=None, batch={}, episodes=_episodes(rows))
    assert type(ours).__name__ == RLlibMeanStdFilter.__name__  # the pipeline's state key
    rllib_pipeline = EnvToModulePipeline(
        input_observation_space=OBS,
        input_action_space=ACT,
        connectors=[_filter(RLlibMeanStdFilter)],
    )
    ours_pipeline = EnvToModulePipeline(
        input_observation_space=OBS, input_action_space=ACT, connectors=[ours]
    )
    rllib_pipeline.set_state(ours_pipeline.get_state())
    assert rllib_pipeline.get_state() == ours_pipeline.get_state() != {}


def test_batched_actions_are_rllibs_unsquash_or_clip_per_action() -> None:
    rng = np.random.default_rng(2)
    actions = rng.normal(scale=1.5, size=(5, 3)).astype(np.float32)
    for normalize, clip in ((True, True), (True, False), (False, True), (False, False)):
        piece = BatchedNormalizeAndClipActions(
            input_observation_space=OBS,
            input_action_space=ACT,
            normalize_actions=normalize,
            clip_actions=clip,
        )
        assert isinstance(piece, NormalizeAndClipActions)
        batch = piece(rl_module=None, batch={Columns.ACTIONS: actions.copy()}, episodes=[])
        np.testing.assert_array_equal(batch[Columns.ACTIONS], actions)  # left as sampled
        if normalize:
            expected = np.stack([unsquash_action(a, ACT) for a in actions])
        elif clip:
            expected = np.stack([clip_action(a, ACT) for a in actions])
        else:
            assert Columns.ACTIONS_FOR_ENV not in batch
            continue
        np.testing.assert_array_equal(batch[Columns.ACTIONS_FOR_ENV], expected)


@pytest.mark.parametrize("explore", [True, False])
def test_gaussian_get_actions_draws_what_rllibs_get_actions_draws(explore: bool) -> None:
    from ray.rllib.connectors.module_to_env.get_actions import GetActions

    module = _module()
    obs = torch.from_numpy(np.random.default_rng(3).normal(size=(5, 6)).astype(np.float32))
    outputs = []
    for piece in (GetActions(), GaussianGetActions()):
        torch.manual_seed(11)
        batch = dict(module.forward_exploration({Columns.OBS: obs}))
        out = piece(rl_module=module, batch=batch, episodes=[None], explore=explore)
        outputs.append((out[Columns.ACTIONS], out[Columns.ACTION_LOGP], torch.rand(1)))
    for ours, theirs in zip(outputs[1], outputs[0], strict=True):
        assert torch.equal(ours, theirs)  # same values, same random draws consumed


def test_flat_tensor_to_numpy_converts_as_rllibs_piece() -> None:
    from ray.rllib.connectors.common.tensor_to_numpy import TensorToNumpy

    generator = torch.Generator().manual_seed(0)
    flat = {
        "actions": torch.randn(4, 2, generator=generator),
        "action_logp": torch.randn(4, generator=generator, dtype=torch.float64),
        "steps": torch.arange(4),
        "done": torch.tensor([True, False, True, False]),
    }
    nested = {"outer": {"x": torch.ones(2)}, "scalar": torch.tensor(1.0)}
    for batch in (flat, nested):
        ours = FlatTensorToNumpy()(rl_module=None, batch=dict(batch), episodes=[])
        rllibs = TensorToNumpy()(rl_module=None, batch=dict(batch), episodes=[])
        assert ours.keys() == rllibs.keys()
        for key in ours:
            if isinstance(ours[key], dict):
                np.testing.assert_array_equal(ours[key]["x"], rllibs[key]["x"])
                continue
            assert type(ours[key]) is type(rllibs[key])
            if isinstance(ours[key], np.ndarray):
                assert ours[key].dtype == rllibs[key].dtype, key
            np.testing.assert_array_equal(ours[key], rllibs[key], err_msg=key)


def test_listify_gives_per_env_rows_and_batched_actions() -> None:
    actions = np.arange(6.0).reshape(2, 3)
    batch = {
        Columns.ACTIONS: actions,
        Columns.ACTIONS_FOR_ENV: actions + 1,
        Columns.ACTION_LOGP: np.array([-1.0, -2.0], np.float32),
    }
    out = ListifyBatchForVectorEnv()(rl_module=None, batch=batch, episodes=[])
    assert out[Columns.ACTIONS] is actions
    assert [float(x) for x in out[Columns.ACTION_LOGP]] == [-1.0, -2.0]


def test_observations_batch_like_rllibs_default_pieces() -> None:
    from ray.rllib.algorithms.ppo import PPOConfig

    from pulsebms.agents.rllib_connectors import batch_env_to_module

    config = PPOConfig().environment(observation_space=OBS, action_space=ACT)
    pipelines = [
        config.build_env_to_module_connector(spaces={"__env__": (OBS, ACT)}) for _ in range(2)
    ]
    assert batch_env_to_module(pipelines[1], stateful=True, multi_agent=False) is False
    assert batch_env_to_module(pipelines[1], stateful=False, multi_agent=False) is True
    (fused,) = pipelines[1].connectors
    assert isinstance(fused, BatchObservationsForModule)
    rows = np.random.default_rng(4).normal(size=(3, 6)).astype(np.float32)
    module = _module()
    outputs, shared = [], []
    for pipeline in pipelines:
        shared.append({})
        outputs.append(
            pipeline(
                rl_module=module,
                batch={},
                episodes=_episodes(rows),
                explore=True,
                shared_data=shared[-1],
            )
        )
    assert list(outputs[1]) == [Columns.OBS]
    assert torch.equal(outputs[1][Columns.OBS], outputs[0][Columns.OBS])
    assert outputs[1][Columns.OBS].dtype == torch.float32
    assert len(shared[1]["memorized_map_structure"]) == 3


def test_only_rllibs_default_stateless_pipeline_is_rewritten() -> None:
    from ray.rllib.connectors.module_to_env import ModuleToEnvPipeline
    from ray.rllib.connectors.module_to_env.get_actions import GetActions

    def default() -> Any:
        from ray.rllib.algorithms.ppo import PPOConfig

        config = PPOConfig().environment(observation_space=OBS, action_space=ACT)
        return config.build_module_to_env_connector(spaces={"__env__": (OBS, ACT)})

    pipeline = default()
    assert batch_module_to_env(pipeline, stateful=True, multi_agent=False) is False
    assert batch_module_to_env(pipeline, stateful=False, multi_agent=True) is False
    assert batch_module_to_env(pipeline, stateful=False, multi_agent=False) is True
    kinds = [type(p) for p in pipeline.connectors]
    assert kinds[0] is GaussianGetActions
    assert kinds[1] is FlatTensorToNumpy
    assert kinds[2:] == [
        BatchedNormalizeAndClipActions,
        ListifyBatchForVectorEnv,
    ]
    custom = ModuleToEnvPipeline(connectors=[GetActions()])
    assert batch_module_to_env(custom, stateful=False, multi_agent=False) is False


# ------------------------------------------------ end to end: RLlib's runner as reference


def _sample(runner_cls: type | None, filter_cls: type, seed: int) -> tuple[Any, Any]:
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from pulsebms.agents.rllib import build_rllib_algorithm

    def hook(config: Any) -> Any:
        def connector(env: Any = None, spaces: Any = None, device: Any = None) -> Any:
            return filter_cls()

        config = config.env_runners(env_to_module_connector=connector)
        if runner_cls is not None:
            config = config.env_runners(env_runner_cls=runner_cls)
        return config

    algo = build_rllib_algorithm(
        "pulsebms.envs:PulseBMS/FleetSmall-v0",
        env_kwargs={"horizon_steps": 12, "dt_s": 900.0, "fidelity": "ecm"},
        train_batch_size=48,
        minibatch_size=24,
        num_epochs=1,
        hidden_sizes=(8, 8),
        log_std_init=-0.5,
        runner_inference="torch",  # RLlib's pass and draws: the bit-for-bit reference
        num_envs_per_env_runner=3,
        seed=seed,
        config_hook=hook,
    )
    try:
        runner = algo.env_runner
        if runner_cls is not SingleAgentEnvRunner:  # the batched pieces are the ones running
            assert [type(p) for p in runner._env_to_module.connectors] == [
                BatchedMeanStdFilter,
                BatchObservationsForModule,
            ]
            assert [type(p) for p in runner._module_to_env.connectors][::2] == [
                GaussianGetActions,
                BatchedNormalizeAndClipActions,
            ]
        torch.manual_seed(seed)
        episodes = runner.sample(num_timesteps=60, explore=True)
        done = [e for e in episodes if e.is_done]
        infos = [list(e.get_infos()) for e in episodes]
        return [
            (
                np.asarray(e.get_observations()),
                np.asarray(e.get_actions()),
                np.asarray(e.get_rewards()),
                np.asarray(e.get_extra_model_outputs(Columns.ACTION_LOGP)),
            )
            for e in episodes
        ], (len(done), runner._env_to_module.get_state(), infos)
    finally:
        algo.stop()


@pytest.mark.filterwarnings(
    "ignore:.*Overriding environment rllib-single-agent-env-v0 already in registry:UserWarning"
)
def test_pulse_runner_samples_what_rllibs_runner_samples(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from pulsebms.agents.rllib import ray_session
    from pulsebms.agents.rllib_env_runner import PulseEnvRunner

    with ray_session(num_cpus=1, temp_dir=tmp_path_factory.mktemp("ray")):
        reference, (ref_done, ref_state, ref_infos) = _sample(
            SingleAgentEnvRunner, RLlibMeanStdFilter, 3
        )
        batched, (done, state, infos) = _sample(PulseEnvRunner, BatchedMeanStdFilter, 3)
    assert done == ref_done > 0  # whole episodes (auto-resets) are in the comparison
    assert len(batched) == len(reference)
    for ours, theirs in zip(batched, reference, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a, b)
    assert state == ref_state  # the filter's statistics, identical
    # The same infos (episode totals at the ends included), as Python scalars.
    assert infos == ref_infos
    assert any("episode_totals" in info for episode in infos for info in episode)
    assert {type(v) for e in ref_infos for info in e for v in info.values()} >= {np.float64}
    assert _leaf_types(infos) <= {float, int}


def _leaf_types(infos: list[list[dict[str, Any]]]) -> set[type]:
    types: set[type] = set()
    stack: list[Any] = [info for episode in infos for info in episode]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        else:
            types.add(type(item))
    return types


def test_scalar_info_split_is_gymnasiums_with_python_scalars() -> None:
    from gymnasium.wrappers.vector import DictInfoToList

    from pulsebms.agents.rllib_env_runner import ScalarDictInfoToList

    on, off = np.array([True, False, True]), np.array([False, True, False])
    vector_infos: dict[str, Any] = {
        "cost": np.array([0.25, 0.0, 1.5]),
        "_cost": on,
        "low": np.array([0.1, 0.2, 0.3], np.float32),
        "_low": np.ones(3, bool),
        "count": np.array([3, 0, 7], np.int64),
        "_count": on,
        "flag": np.array([True, False, True]),
        "_flag": off,
        "pack_soc": np.arange(6.0).reshape(3, 2),  # per-env arrays stay arrays
        "_pack_soc": on,
        "reason": np.array(["a", None, "c"], dtype=object),
        "_reason": on,
        "episode_totals": {"cost": np.array([0.0, 2.0, 0.0]), "_cost": off},
        "_episode_totals": off,
        "no_mask": np.array([1.0, 2.0, 3.0]),
    }
    envs = gym.make_vec("CartPole-v1", num_envs=3)
    try:
        reference = DictInfoToList(envs)._convert_info_to_list(vector_infos)
        split = ScalarDictInfoToList(envs)
        ours = split.vector_infos_to_list(vector_infos)
        with pytest.raises(ValueError, match="does not have 3 envs"):
            split.vector_infos_to_list({"cost": np.zeros(2)})
    finally:
        envs.close()
    assert [list(info) for info in ours] == [list(info) for info in reference]
    for mine, theirs in zip(ours, reference, strict=True):
        for key, value in theirs.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(mine[key], value)
                assert isinstance(mine[key], np.ndarray)
            elif isinstance(value, np.generic):
                assert mine[key] == value
                assert type(mine[key]) is type(value.item())
            else:
                assert mine[key] == value
    assert ours[1] == {
        "low": np.float32(0.2).item(),
        "flag": False,
        "episode_totals": {"cost": 2.0},
        "no_mask": 2.0,
    }


def test_pieces_rebuild_from_their_checkpoints(tmp_path: Any) -> None:
    from ray.rllib.connectors.connector_v2 import ConnectorV2
    from ray.rllib.connectors.env_to_module import EnvToModulePipeline

    actions = BatchedNormalizeAndClipActions(
        input_observation_space=OBS,
        input_action_space=ACT,
        normalize_actions=False,
        clip_actions=True,
    )
    obs_filter = _filter(BatchedMeanStdFilter, clip_by_value=5.0)
    obs_filter(rl_module=None, batch={}, episodes=_episodes(np.ones((2, 6), np.float32)))
    # As in an EnvRunner checkpoint: the filter inside its pipeline (which has the spaces).
    pipeline = EnvToModulePipeline(
        input_observation_space=OBS, input_action_space=ACT, connectors=[obs_filter]
    )
    for piece in (actions, pipeline):
        piece.save_to_path(tmp_path / type(piece).__name__)
        restored = ConnectorV2.from_checkpoint(tmp_path / type(piece).__name__)
        assert type(restored) is type(piece)
        assert restored.get_state() == piece.get_state() != {} or piece is actions
    (restored_filter,) = restored.connectors
    assert type(restored_filter) is BatchedMeanStdFilter
    assert restored_filter.clip_by_value == 5.0
    restored_actions = ConnectorV2.from_checkpoint(tmp_path / type(actions).__name__)
    assert (restored_actions.normalize_actions, restored_actions.clip_actions) == (False, True)


class _StepCounter:
    calls = 0


def _count_steps_callback() -> type:
    from pulsebms.agents.rllib import EpisodeCostCallback

    class CountSteps(EpisodeCostCallback):
        def on_episode_step(self, **kwargs: Any) -> None:
            _StepCounter.calls += 1

    return CountSteps


@pytest.mark.filterwarnings(
    "ignore:.*Overriding environment rllib-single-agent-env-v0 already in registry:UserWarning"
)
def test_step_callbacks_are_skipped_only_when_nothing_handles_them(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from pulsebms.agents.rllib import build_rllib_algorithm, ray_session

    with ray_session(num_cpus=1, temp_dir=tmp_path_factory.mktemp("ray")):
        for callbacks, handled in ((None, False), (_count_steps_callback(), True)):
            kwargs = {} if callbacks is None else {"callbacks": callbacks}
            algo = build_rllib_algorithm(
                "pulsebms.envs:PulseBMS/FleetSmall-v0",
                env_kwargs={"horizon_steps": 8, "dt_s": 900.0, "fidelity": "ecm"},
                train_batch_size=16,
                minibatch_size=16,
                num_epochs=1,
                hidden_sizes=(8,),
                num_envs_per_env_runner=2,
                **kwargs,
            )
            try:
                runner = algo.env_runner
                assert runner._step_callbacks_are_noops is not handled
                _StepCounter.calls = 0
                runner.sample(num_timesteps=16, explore=True)
                # one call per env step (the two resets call on_episode_start instead)
                assert _StepCounter.calls == (16 if handled else 0)
            finally:
                algo.stop()
