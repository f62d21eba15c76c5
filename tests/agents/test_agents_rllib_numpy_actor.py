"""The runners' exploration pass in numpy: the same policy as torch's pass, its own draws.

References are the module's own torch pass (``_forward_exploration``) and RLlib's
``TorchDiagGaussian`` on the same weights and inputs (float32 rounding apart: numpy's BLAS
sums in another order), the Gaussian's moments for the draws, and, for seeded sampling,
a second identical run.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
from ray.rllib.core.rl_module.rl_module import RLModule

from pulsebms.agents.rllib_config import RllibPPOConfig
from pulsebms.agents.rllib_module import PulsePPOTorchRLModule, log_std_model_config
from pulsebms.agents.rllib_numpy_actor import NumpyGaussianActor

OBS = gym.spaces.Box(-10.0, 10.0, (28,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
TOL = {"rtol": 1e-5, "atol": 1e-5}  # float32, another summation order

MODELS = {
    "free log-std, tanh": {"fcnet_activation": "tanh", **log_std_model_config(-0.5)},
    "network log-std, tanh": {"fcnet_activation": "tanh"},
    "free log-std, relu": {"fcnet_activation": "relu", **log_std_model_config(0.3)},
}


def _module(model: dict[str, Any], *, kind: str | None = "numpy", seed: int = 0) -> Any:
    """An EnvRunner's (inference-only) module with random, non-trivial weights."""
    config = {"fcnet_hiddens": [64, 64], "vf_share_layers": False, **model}
    if kind is not None:
        config["runner_inference"] = kind
    module = PulsePPOTorchRLModule(
        observation_space=OBS, action_space=ACT, model_config=config, inference_only=True
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return module


def _torch_dist_inputs(module: Any, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = module._forward_exploration({Columns.OBS: torch.from_numpy(obs)})
    return np.asarray(out[Columns.ACTION_DIST_INPUTS].numpy())


def _torch_logp(dist_inputs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    dist = TorchDiagGaussian.from_logits(torch.from_numpy(dist_inputs))
    return np.asarray(dist.logp(torch.from_numpy(actions)).numpy())


def _obs(n: int, seed: int = 1) -> np.ndarray:
    return (3.0 * np.random.default_rng(seed).standard_normal((n, 28))).astype(np.float32)


@pytest.mark.parametrize("model", list(MODELS.values()), ids=list(MODELS))
def test_the_numpy_pass_is_torchs_pass_on_the_same_weights(model: dict[str, Any]) -> None:
    module = _module(model)
    obs = _obs(16)
    assert module.numpy_exploration
    out = module.forward_exploration({Columns.OBS: obs})
    assert set(out) == {Columns.ACTION_DIST_INPUTS, Columns.ACTIONS, Columns.ACTION_LOGP}
    dist_inputs, actions, logp = (
        out[Columns.ACTION_DIST_INPUTS],
        out[Columns.ACTIONS],
        out[Columns.ACTION_LOGP],
    )
    assert [type(a) for a in (dist_inputs, actions, logp)] == [np.ndarray] * 3
    assert {a.dtype for a in (dist_inputs, actions, logp)} == {np.dtype(np.float32)}
    assert (dist_inputs.shape, actions.shape, logp.shape) == ((16, 6), (16, 3), (16,))
    np.testing.assert_allclose(dist_inputs, _torch_dist_inputs(module, obs), **TOL)
    # The log-probability the Learner recomputes for the stored action.
    np.testing.assert_allclose(logp, _torch_logp(dist_inputs, actions), **TOL)
    log_stds = dist_inputs[:, 3:]
    if "free_log_std" in model:  # the parameter, the same for every row
        np.testing.assert_array_equal(log_stds, np.broadcast_to(log_stds[0], log_stds.shape))
    else:  # the network's, one per observation
        assert np.ptp(log_stds, axis=0).min() > 0
    # A torch batch still gets RLlib's torch pass.
    torch_out = module.forward_exploration({Columns.OBS: torch.from_numpy(obs)})
    assert isinstance(torch_out[Columns.ACTION_DIST_INPUTS], torch.Tensor)


def test_the_reader_takes_pulsebms_and_rllibs_heads_by_default() -> None:
    module = _module(MODELS["free log-std, tanh"])  # PulseBMS's broadcasting head
    actor = NumpyGaussianActor.from_module(module)
    assert actor is not None
    np.testing.assert_allclose(
        actor.dist_inputs(_obs(4)), _torch_dist_inputs(module, _obs(4)), **TOL
    )
    assert NumpyGaussianActor.from_module(module, free_log_std_heads=()) is None


def test_the_log_std_clip_is_applied_as_torchs_head_applies_it() -> None:
    module = _module(MODELS["network log-std, tanh"])
    with torch.no_grad():
        module.pi.net.mlp[-1].bias[3:].fill_(50.0)  # log-stds far above RLlib's clip (20)
    obs = _obs(4)
    actor = NumpyGaussianActor.from_module(module)
    assert actor is not None
    expected = _torch_dist_inputs(module, obs)
    assert expected[:, 3:].max() == pytest.approx(float(module.pi.log_std_clip_param_const))
    np.testing.assert_allclose(actor.dist_inputs(obs), expected, **TOL)


def test_the_draws_follow_the_gaussian_and_repeat_under_a_seed() -> None:
    module = _module(MODELS["free log-std, tanh"])
    obs = np.repeat(_obs(1), 40_000, axis=0)
    module.seed_exploration(7)
    out = module.forward_exploration({Columns.OBS: obs})
    loc, log_std = np.split(out[Columns.ACTION_DIST_INPUTS][0], 2)
    scale = np.exp(log_std)
    actions = out[Columns.ACTIONS].astype(np.float64)
    # 40k draws: the mean within 5 standard errors, the std within 3 %.
    assert np.all(np.abs(actions.mean(axis=0) - loc) < 5 * scale / np.sqrt(len(actions)))
    np.testing.assert_allclose(actions.std(axis=0), scale, rtol=0.03)
    module.seed_exploration(7)
    first = module.forward_exploration({Columns.OBS: obs[:8]})[Columns.ACTIONS]
    module.seed_exploration(7)
    again = module.forward_exploration({Columns.OBS: obs[:8]})[Columns.ACTIONS]
    np.testing.assert_array_equal(again, first)
    module.seed_exploration(8)
    other = module.forward_exploration({Columns.OBS: obs[:8]})[Columns.ACTIONS]
    assert not np.array_equal(other, again)


def test_weights_written_into_the_module_are_seen() -> None:
    module = _module(MODELS["free log-std, tanh"], seed=0)
    source = _module(MODELS["free log-std, tanh"], seed=1)
    obs = _obs(4)
    before = module.forward_exploration({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
    module.set_state(source.get_state())  # an EnvRunner's weight sync
    after = module.forward_exploration({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, _torch_dist_inputs(source, obs), **TOL)
    with torch.no_grad():  # an in-place update between syncs (views of the parameters)
        module.pi.log_std.add_(0.25)
    moved = module.forward_exploration({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
    np.testing.assert_allclose(moved[:, 3:], after[:, 3:] + 0.25, **TOL)


def test_modules_of_another_shape_or_setting_keep_torch() -> None:
    obs = _obs(4)
    for module in (
        _module(MODELS["free log-std, tanh"], kind="torch"),
        _module(MODELS["free log-std, tanh"], kind=None),  # older checkpoints: no key
    ):
        assert not module.numpy_exploration
        out = module.forward_exploration({Columns.OBS: obs})  # numpy in, torch's pass
        assert isinstance(out[Columns.ACTION_DIST_INPUTS], torch.Tensor)
        assert Columns.ACTIONS not in out
    shared = PulsePPOTorchRLModule(
        observation_space=OBS,
        action_space=ACT,
        model_config={"fcnet_hiddens": [8], "vf_share_layers": True, "runner_inference": "numpy"},
        inference_only=True,
    )
    assert NumpyGaussianActor.from_module(shared) is None
    assert not shared.numpy_exploration
    with pytest.raises(ValueError, match="runner_inference must be one of"):
        _module(MODELS["free log-std, tanh"], kind="jax")
    with pytest.raises(ValueError, match="runner_inference must be one of"):
        RllibPPOConfig(runner_inference="jax")
    assert RllibPPOConfig().runner_inference == "numpy"


@pytest.mark.filterwarnings(
    "ignore:.*Overriding environment rllib-single-agent-env-v0 already in registry:UserWarning"
)
def test_an_env_runner_samples_with_the_numpy_pass_repeatably_and_after_syncs(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from pulsebms.agents.rllib import build_rllib_algorithm, ray_session

    def check(episodes: list[Any], module: RLModule) -> list[np.ndarray]:
        """Stored outputs are the torch pass's on the stored (filtered) observations."""
        arrays = []
        for episode in episodes:
            obs = np.asarray(episode.get_observations())[:-1].astype(np.float32)
            actions = np.asarray(episode.get_actions())
            dist_inputs = np.asarray(episode.get_extra_model_outputs(Columns.ACTION_DIST_INPUTS))
            logp = np.asarray(episode.get_extra_model_outputs(Columns.ACTION_LOGP))
            np.testing.assert_allclose(dist_inputs, _torch_dist_inputs(module, obs), **TOL)
            np.testing.assert_allclose(logp, _torch_logp(dist_inputs, actions), **TOL)
            arrays += [obs, actions, logp]
        return arrays

    def sample() -> list[np.ndarray]:
        algo = build_rllib_algorithm(
            "pulsebms.envs:PulseBMS/FleetSmall-v0",
            env_kwargs={"horizon_steps": 12, "dt_s": 900.0, "fidelity": "ecm"},
            train_batch_size=48,
            minibatch_size=24,
            num_epochs=2,
            hidden_sizes=(8, 8),
            log_std_init=-0.5,
            num_envs_per_env_runner=3,
            seed=5,
        )
        try:
            runner = algo.env_runner
            assert runner.module.numpy_exploration
            arrays = check(runner.sample(num_timesteps=36, explore=True), runner.module)
            result = algo.train()  # the Learner's torch loss on numpy-sampled episodes
            assert np.isfinite(result["learners"]["default_policy"]["policy_loss"])
            learner_state = algo.learner_group._learner.module["default_policy"].get_state(
                inference_only=True
            )
            for key, value in runner.module.get_state().items():  # synced after train()
                np.testing.assert_array_equal(value, learner_state[key])
            return arrays + check(runner.sample(num_timesteps=36, explore=True), runner.module)
        finally:
            algo.stop()

    with ray_session(num_cpus=1, temp_dir=tmp_path_factory.mktemp("ray")):
        first = sample()
        again = sample()
    assert len(first) == len(again) > 0
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
