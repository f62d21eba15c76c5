"""PulsePPOTorchLearner and PulsePPOTorchRLModule change RLlib's cost, never its results.

The Learner is built without a Ray runtime (``AlgorithmConfig.build_learner``) and updated
on a hand-made PPO train batch; RLlib's own ``PPOTorchLearner`` on the same batch, seeds and
initial weights is the reference, bit for bit.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.algorithms.algorithm_config import TorchCompileWhatToCompile
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core import ALL_MODULES
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.minibatch_utils import MiniBatchCyclicIterator

from pulsebms.agents.rllib_learner import (
    FUSED_ADAM_KEY,
    IndexedCyclicIterator,
    PulsePPOTorchLearner,
    RLlibLoopPPOTorchLearner,
    all_finite,
    without_masked_rows,
)
from pulsebms.agents.rllib_module import PulsePPOTorchRLModule, log_std_model_config

OBS_SPACE = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
ACT_SPACE = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
MODULE = "default_policy"


def _columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(size=(n, *shape)).astype(np.float32)

    return {
        Columns.OBS: normal(5),
        Columns.ACTIONS: normal(2),
        Columns.ACTION_LOGP: normal(),
        Columns.ACTION_DIST_INPUTS: normal(4),
        Postprocessing.ADVANTAGES: normal(),
        Postprocessing.VALUE_TARGETS: normal(),
        Columns.VF_PREDS: normal(),
        Columns.LOSS_MASK: rng.random(n) > 0.1,
    }


def _minibatches(iterator: Any) -> list[dict[str, np.ndarray]]:
    out = []
    for minibatch in iterator:
        batch = minibatch.policy_batches[MODULE]
        out.append({k: np.asarray(v).copy() for k, v in batch.items()})
    return out


@pytest.mark.parametrize(
    ("rows", "minibatch_size", "num_epochs", "shuffle", "total"),
    [
        (100, 32, 3, True, 0),  # minibatches run across pass ends, reshuffled there
        (128, 32, 2, True, 0),  # a batch of whole minibatches
        (7, 16, 2, True, 0),  # a minibatch larger than the batch
        (100, 32, 2, False, 0),
        (50, 16, 1, True, 9),  # a fixed number of minibatches
    ],
)
def test_indexed_iterator_yields_rllibs_minibatches(
    rows: int, minibatch_size: int, num_epochs: int, shuffle: bool, total: int
) -> None:
    columns = _columns(rows)
    columns["weights_seq_no"] = np.arange(rows)  # an integer column too
    runs = []
    for cls, columns_only in (
        (MiniBatchCyclicIterator, False),
        (IndexedCyclicIterator, False),
        (IndexedCyclicIterator, True),  # the Learner's loop: gathered per pass, plain dicts
    ):
        batch = MultiAgentBatch({MODULE: SampleBatch(dict(columns))}, env_steps=rows)
        np.random.seed(7)  # noqa: NPY002  # all shuffle with the global numpy state, as RLlib does
        iterator = cls(
            batch,
            num_epochs=num_epochs,
            minibatch_size=minibatch_size,
            shuffle_batch_per_epoch=shuffle,
            num_total_minibatches=total,
        )
        if columns_only:
            runs.append(
                [
                    {k: np.asarray(v).copy() for k, v in mb[MODULE].items()}
                    for mb in iterator.column_minibatches()
                ]
            )
        else:
            runs.append(_minibatches(iterator))
        runs[-1].append({"next_draw": np.random.random(1)})  # noqa: NPY002  # same RNG use after
    rllib = runs[0]
    assert len(rllib) > 1
    for other in runs[1:]:
        assert len(other) == len(rllib)
        for a, b in zip(rllib, other, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_indexed_iterator_gathers_torch_columns_and_rejects_what_it_does_not_cover() -> None:
    torch_batch = SampleBatch({k: torch.from_numpy(v) for k, v in _columns(10).items()})
    multi = MultiAgentBatch({MODULE: torch_batch}, env_steps=10)
    assert IndexedCyclicIterator.supports(multi)
    first = next(iter(IndexedCyclicIterator(multi, minibatch_size=4, num_epochs=1)))
    obs = first.policy_batches[MODULE][Columns.OBS]
    assert isinstance(obs, torch.Tensor)
    assert obs.shape == (4, 5)

    # The Learner's path: tensor minibatches, contiguous, across pass ends too.
    np.random.seed(3)  # noqa: NPY002
    gathered = list(
        IndexedCyclicIterator(multi, minibatch_size=4, num_epochs=2).column_minibatches()
    )
    np.random.seed(3)  # noqa: NPY002
    indexed = list(IndexedCyclicIterator(multi, minibatch_size=4, num_epochs=2))
    assert len(gathered) == len(indexed) == 5  # 20 rows: the third runs across a pass end
    for plain, batch in zip(gathered, indexed, strict=True):
        for key, value in plain[MODULE].items():
            assert isinstance(value, torch.Tensor)
            assert value.is_contiguous()
            assert torch.equal(value, batch.policy_batches[MODULE][key])

    with_lists = SampleBatch({Columns.OBS: np.zeros((3, 5)), Columns.INFOS: [{}, {}, {}]})
    assert not IndexedCyclicIterator.supports(MultiAgentBatch({MODULE: with_lists}, 3))
    with pytest.raises(ValueError, match="empty"):
        IndexedCyclicIterator(
            MultiAgentBatch({MODULE: SampleBatch({Columns.OBS: np.zeros((0, 5))})}, 0),
            minibatch_size=4,
        )


def test_all_finite() -> None:
    assert all_finite([torch.ones(3), None, torch.zeros(2, 2)])
    assert all_finite([])
    assert not all_finite([torch.ones(3), torch.tensor([1.0, float("inf")])])
    assert not all_finite([torch.tensor([[float("nan")]])])


# SB3's PPO loss, as `pulsebms-bench ray` configures RLlib: no KL, global-norm clip, no vf clip.
SB3_LOSS = {"use_kl_loss": False, "grad_clip": 0.5, "vf_clip_param": float("inf")}
# The foreach Adam step: RLlib's arithmetic, which the bit-for-bit comparisons here need. The
# Learner's default, torch's fused kernel, rounds differently (tested on its own below).
FOREACH_ADAM = {FUSED_ADAM_KEY: False}


def _learner(
    cls: type[PPOTorchLearner],
    *,
    learner_config: dict[str, Any] | None = None,
    compile_update: bool = False,
    **training: Any,
) -> Any:
    config = (
        PPOConfig()
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .environment(observation_space=OBS_SPACE, action_space=ACT_SPACE)
        .training(minibatch_size=32, num_epochs=3, train_batch_size_per_learner=100, **training)
        .rl_module(
            rl_module_spec=RLModuleSpec(module_class=PulsePPOTorchRLModule),
            model_config={"fcnet_hiddens": [8], **log_std_model_config(-0.5)},
        )
        .learners(
            learner_class=cls,
            learner_config_dict=dict(FOREACH_ADAM if learner_config is None else learner_config),
        )
    )
    if compile_update:  # as build_rllib_algorithm(torch_compile_learner=True) sets it
        config = config.framework(
            torch_compile_learner=True,
            torch_compile_learner_what_to_compile=TorchCompileWhatToCompile.COMPLETE_UPDATE,
            torch_compile_learner_dynamo_backend="inductor",
        )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return config.build_learner(env=None)


class _RLlibMinibatchesLearner(PulsePPOTorchLearner):
    drop_masked_rows = False


def _update(
    cls: type[PPOTorchLearner],
    columns: dict[str, np.ndarray],
    *,
    learner_config: dict[str, Any] | None = None,
    compile_update: bool = False,
    **training: Any,
) -> tuple[Any, Any]:
    learner = _learner(
        cls, learner_config=learner_config, compile_update=compile_update, **training
    )
    np.random.seed(1)  # noqa: NPY002  # RLlib shuffles minibatches with the global state
    batch = MultiAgentBatch({MODULE: SampleBatch(dict(columns))}, env_steps=100)
    result = learner.update(  # 9 minibatches: several Adam steps from one state
        batch=batch,
        timesteps={"num_env_steps_sampled_lifetime": 100},
        minibatch_size=32,
        num_epochs=3,
        shuffle_batch_per_epoch=True,
    )
    assert learner.module[MODULE].training
    metrics = {k: float(np.asarray(v.peek())) for k, v in result[MODULE].items()}
    for key, stats in result[ALL_MODULES].items():  # the steps-trained counters
        if "steps_trained" in key:
            metrics[f"all/{key}"] = float(np.asarray(stats.peek()))
    return metrics, [p.detach().clone() for p in learner.module[MODULE].parameters()]


LOSSES = (
    "policy_loss",
    "vf_loss",
    "vf_loss_unclipped",
    "entropy",
    "mean_kl_loss",
    "total_loss",
    "curr_kl_coeff",
)


def _assert_same(a: tuple[Any, Any], b: tuple[Any, Any], keys: Sequence[str] = ()) -> None:
    assert sorted(a[0]) == sorted(b[0])  # the same metric names
    keys = [k for k in keys if k in a[0]] or sorted(a[0])
    assert {k: a[0][k] for k in keys} == pytest.approx(
        {k: b[0][k] for k in keys}, abs=0, rel=0, nan_ok=True
    )
    for x, y in zip(a[1], b[1], strict=True):
        assert torch.equal(x, y)
    assert all(bool(torch.isfinite(p).all()) for p in b[1])


@pytest.mark.parametrize(
    ("nan_obs", "loss"),
    [(False, {}), (False, SB3_LOSS), (True, SB3_LOSS)],
    ids=["finite-rllib-loss", "finite-sb3-loss", "nan-gradients-sb3-loss"],
)
def test_pulse_learner_updates_bit_for_bit_as_rllibs(nan_obs: bool, loss: dict[str, Any]) -> None:
    columns = _columns(100, seed=3)
    if nan_obs:  # NaN gradients: both take RLlib's path (NaNs zeroed, warning, step)
        columns[Columns.OBS][5, 0] = np.nan
    # With RLlib's minibatches (masked rows kept), the update is RLlib's, bit for bit.
    _assert_same(
        _update(PPOTorchLearner, columns, **loss),
        _update(_RLlibMinibatchesLearner, columns, **loss),
    )
    # By default the masked rows go first: RLlib's update of the batch without them.
    keep = columns[Columns.LOSS_MASK]
    assert 0 < keep.sum() < 100
    valid = {k: v[keep] for k, v in columns.items() if k != Columns.LOSS_MASK}
    # Without a loss mask, the loss metrics are reduced once per update (see above):
    # every metric RLlib reports, bit for bit.
    _assert_same(
        _update(PPOTorchLearner, valid, **loss), _update(PulsePPOTorchLearner, valid, **loss)
    )
    # Same weights and losses; the reported row counts (and vf_explained_var) are not
    # compared: RLlib's step counters still count the masked rows of the batch.
    # The loss metrics, logged once per update from the last minibatch's terms, and the
    # global gradient norm (logged once too) are RLlib's values.
    keys = [*LOSSES, "vf_explained_var", "gradients_default_optimizer_global_norm"]
    _assert_same(
        _update(PPOTorchLearner, valid, **loss),
        _update(PulsePPOTorchLearner, columns, **loss),
        keys,
    )


class _OwnClipLearner(PulsePPOTorchLearner):
    """Overrides a gradient hook: the own loop must call RLlib's ``_update`` and its hooks."""

    calls = 0

    def postprocess_gradients_for_module(self, **kwargs: Any) -> dict[Any, Any]:
        type(self).calls += 1
        return super().postprocess_gradients_for_module(**kwargs)


@pytest.mark.parametrize("loss", [{}, SB3_LOSS], ids=["rllib-loss", "sb3-loss"])
def test_own_update_loop_is_rllibs_loop_bit_for_bit(loss: dict[str, Any]) -> None:
    columns = _columns(100, seed=5)  # with masked rows; 9 minibatches over 3 passes
    reference = _update(RLlibLoopPPOTorchLearner, columns, **loss)
    _assert_same(reference, _update(PulsePPOTorchLearner, columns, **loss))
    _OwnClipLearner.calls = 0
    _assert_same(reference, _update(_OwnClipLearner, columns, **loss))
    assert _OwnClipLearner.calls == 9  # one per minibatch, through RLlib's _update
    # The default Learner takes the lean gradient step for these losses.
    batch = MultiAgentBatch({MODULE: SampleBatch(dict(columns))}, env_steps=100)
    assert _learner(PulsePPOTorchLearner, **loss)._gradient_step_plan(batch) is not None
    assert _learner(_OwnClipLearner, **loss)._gradient_step_plan(batch) is None


def test_own_update_loop_with_every_parameter_frozen_is_rllibs_loop() -> None:
    columns = _columns(40, seed=2)
    runs = []
    for cls in (RLlibLoopPPOTorchLearner, PulsePPOTorchLearner):
        learner = _learner(cls, **SB3_LOSS)
        for param in learner.module[MODULE].parameters():
            param.requires_grad_(False)  # the loss has no graph: no gradients, a bare step
        np.random.seed(1)  # noqa: NPY002
        result = learner.update(
            batch=MultiAgentBatch({MODULE: SampleBatch(dict(columns))}, env_steps=40),
            timesteps={"num_env_steps_sampled_lifetime": 40},
            minibatch_size=16,
            num_epochs=2,
            shuffle_batch_per_epoch=True,
        )
        metrics = {k: float(np.asarray(v.peek())) for k, v in result[MODULE].items()}
        runs.append((metrics, [p.clone() for p in learner.module[MODULE].parameters()]))
    _assert_same(*runs)


def test_diag_gaussian_terms_are_torch_diag_gaussians_bit_for_bit() -> None:
    from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian

    from pulsebms.agents.rllib_learner import DiagGaussianTerms

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 6, generator=generator)
    prev = torch.randn(64, 6, generator=generator)
    actions = torch.randn(64, 3, generator=generator)
    outs = []
    for make in (TorchDiagGaussian.from_logits, DiagGaussianTerms):
        x = logits.clone().requires_grad_(True)
        dist, old = make(x), make(prev)
        terms = (dist.logp(actions), dist.entropy(), old.kl(dist))
        total = sum(t.square().sum() for t in terms)
        assert isinstance(total, torch.Tensor)
        total.backward()
        outs.append((*(t.detach() for t in terms), x.grad))
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


def test_without_masked_rows_keeps_the_rest_and_all_masked_modules() -> None:
    columns = _columns(10)
    columns[Columns.LOSS_MASK][:] = True
    columns[Columns.LOSS_MASK][[2, 7]] = False
    torch_columns = {k: torch.from_numpy(v) for k, v in columns.items()}
    all_masked = {Columns.OBS: np.zeros((3, 5)), Columns.LOSS_MASK: np.zeros(3, bool)}
    batch = MultiAgentBatch(
        {MODULE: SampleBatch(torch_columns), "other": SampleBatch(all_masked)}, env_steps=13
    )
    out = without_masked_rows(batch)
    assert out.env_steps() == 13
    kept = out.policy_batches[MODULE]
    assert Columns.LOSS_MASK not in kept
    assert len(kept) == 8
    np.testing.assert_array_equal(
        kept[Columns.OBS].numpy(), np.delete(columns[Columns.OBS], [2, 7], axis=0)
    )
    assert len(out.policy_batches["other"]) == 3  # nothing valid: left as RLlib has it


def test_module_switches_mode_once_and_keeps_rllibs_outputs() -> None:
    torch.manual_seed(0)
    module = PulsePPOTorchRLModule(
        observation_space=OBS_SPACE,
        action_space=ACT_SPACE,
        model_config={"fcnet_hiddens": [8], **log_std_model_config(-0.5)},
    )
    obs = {Columns.OBS: torch.from_numpy(_columns(6)[Columns.OBS])}
    assert module.training  # a fresh module, as on an EnvRunner
    switches = []
    module.pi.register_forward_pre_hook(lambda m, _: switches.append(m.training))
    with torch.no_grad():
        first = module.forward_exploration(obs)
        again = module.forward_inference(obs)
    assert not module.training
    assert switches == [False, False]
    trained = module.forward_train(obs)
    assert module.training
    assert switches[-1] is True
    torch.testing.assert_close(first[Columns.ACTION_DIST_INPUTS], again[Columns.ACTION_DIST_INPUTS])
    torch.testing.assert_close(
        first[Columns.ACTION_DIST_INPUTS], trained[Columns.ACTION_DIST_INPUTS].detach()
    )


def test_untimed_pipeline_keeps_the_result_and_only_the_total_timer() -> None:
    from ray.rllib.connectors.connector_v2 import ConnectorV2
    from ray.rllib.connectors.env_to_module import EnvToModulePipeline
    from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

    from pulsebms.agents.rllib_env_runner import PieceUntimedEnvToModulePipeline, untime_pipeline

    class AddOne(ConnectorV2):
        def __call__(self, *, batch: dict[str, Any], **kwargs: Any) -> Any:
            batch["n"] = batch.get("n", 0) + 1
            return batch

    outputs, logged = [], []
    for untimed in (False, True):
        pipeline = EnvToModulePipeline(connectors=[AddOne(), AddOne()])
        if untimed:
            assert untime_pipeline(pipeline) is pipeline
            assert type(pipeline) is PieceUntimedEnvToModulePipeline
        metrics = MetricsLogger()
        outputs.append(
            pipeline(
                rl_module=None,
                batch={},
                episodes=[],
                explore=True,
                metrics=metrics,
                metrics_prefix_key=("e2m",),
            )
        )
        logged.append(metrics.peek(("e2m",)) if metrics.peek(("e2m",), default=None) else {})
    assert outputs[0] == outputs[1] == {"n": 2}
    assert "connector_pipeline_timer" in logged[0]
    assert "connector_pipeline_timer" in logged[1]
    assert "timers" in logged[0]  # RLlib's per-piece timers ...
    assert "timers" not in logged[1]  # ... are what the untimed pipeline drops


@pytest.mark.filterwarnings(
    "ignore:.*Overriding environment rllib-single-agent-env-v0 already in registry:UserWarning"
)
def test_build_uses_the_pulse_runner_learner_and_module(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from pulsebms.agents.rllib import build_rllib_algorithm, ray_session
    from pulsebms.agents.rllib_env_runner import (
        PieceUntimedEnvToModulePipeline,
        PieceUntimedModuleToEnvPipeline,
        PulseEnvRunner,
    )

    def build(learner_class: type | None = None) -> Any:
        return build_rllib_algorithm(
            "pulsebms.envs:PulseBMS/FleetSmall-v0",
            env_kwargs={"horizon_steps": 16, "dt_s": 900.0},
            train_batch_size=32,
            minibatch_size=20,  # minibatches across pass ends
            num_epochs=2,
            num_envs_per_env_runner=2,
            log_std_init=-0.5,
            seed=0,
            learner_class=learner_class,
        )

    def trained(algo: Any) -> tuple[list[torch.Tensor], str]:
        learner = algo.learner_group._learner
        weights = [p.detach().clone() for p in learner.module[MODULE].parameters()]
        return weights, repr(algo.env_runner.get_state(components="env_to_module_connector"))

    ray_tmp = tmp_path_factory.mktemp("ray")  # short: Ray's socket paths are limited
    with ray_session(num_cpus=1, temp_dir=ray_tmp):
        algo = build()
        try:
            runner = algo.env_runner
            assert isinstance(runner, PulseEnvRunner)
            assert type(runner._env_to_module) is PieceUntimedEnvToModulePipeline
            assert type(runner._module_to_env) is PieceUntimedModuleToEnvPipeline
            learner = algo.learner_group._learner
            assert isinstance(learner, PulsePPOTorchLearner)
            (optimizer,) = learner._named_optimizers.values()  # the default Adam kernel
            assert optimizer.param_groups[0]["fused"] is True
            result = algo.train()
            assert result["env_runners"]["num_env_steps_sampled"] == 32
            assert np.isfinite(result["learners"][MODULE]["policy_loss"])
            assert not runner.module.training  # the runner's module stays in eval mode
            assert learner.module[MODULE].training
            algo.train()
            own = trained(algo)
        finally:
            algo.stop()
        # Seeded training with RLlib's Learner.update loop: the same weights and filter.
        reference = build(RLlibLoopPPOTorchLearner)
        try:
            assert type(reference.learner_group._learner) is RLlibLoopPPOTorchLearner
            for _ in range(2):
                reference.train()
            rllibs = trained(reference)
        finally:
            reference.stop()
    for a, b in zip(own[0], rllibs[0], strict=True):
        assert torch.equal(a, b)
    assert own[1] == rllibs[1]


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, float("inf"), float("nan")])
def test_clip_by_global_norm_is_rllibs_global_norm_clip(scale: float) -> None:
    from ray.rllib.utils.torch_utils import clip_gradients

    from pulsebms.agents.rllib_learner import clip_by_global_norm

    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(shape, generator=gen) for shape in [(8, 5), (8,), (4, 8), (4,)]]
    grads[1][0] = scale
    ours = [g.clone() for g in grads]
    theirs = {i: g.clone() for i, g in enumerate(grads)}
    norm, finite = clip_by_global_norm(ours, 0.5)
    assert bool(finite) == math.isfinite(scale)
    their_norm = clip_gradients(theirs, grad_clip=0.5, grad_clip_by="global_norm")
    assert torch.equal(norm, their_norm)
    for a, b in zip(ours, theirs.values(), strict=True):
        assert torch.equal(a, b) or (a.isnan() == b.isnan()).all()


def test_foreach_adam_stays_foreach_after_restoring_an_older_checkpoint() -> None:
    learner = _learner(PulsePPOTorchLearner)  # ray.fused_adam=false
    (optimizer,) = learner._named_optimizers.values()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["foreach"] is True
    state = learner._get_optimizer_state()
    for saved in state.values():  # as written by RLlib's learner: torch's default
        for group in saved["state"]["param_groups"]:
            group["foreach"] = None
    learner._set_optimizer_state(state)
    assert all(group["foreach"] is True for group in optimizer.param_groups)


def _assert_repeats_and_close_to_eager(
    option: dict[str, Any], *, rtol: float, atol: float
) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """Nine Adam steps with a Learner ``option``: bit for bit run to run, close to eager.

    Eager: the uncompiled Learner with the foreach Adam step (RLlib's arithmetic).

    Returns:
        ``(with the option, eager)``: each ``(metrics, weights)`` of :func:`_update`.
    """
    columns = _columns(100, seed=3)
    first = _update(PulsePPOTorchLearner, columns, **option, **SB3_LOSS)
    _assert_same(first, _update(PulsePPOTorchLearner, columns, **option, **SB3_LOSS))
    eager = _update(PulsePPOTorchLearner, columns, **SB3_LOSS)
    for x, y in zip(first[1], eager[1], strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)
    return first, eager


@pytest.mark.parametrize("fused", [{}, {FUSED_ADAM_KEY: True}], ids=["default", "explicit"])
def test_fused_adam_is_the_default_repeats_and_survives_restores(fused: dict[str, bool]) -> None:
    learner = _learner(PulsePPOTorchLearner, learner_config=fused)
    (optimizer,) = learner._named_optimizers.values()
    assert optimizer.param_groups[0]["fused"] is True
    assert not optimizer.param_groups[0]["foreach"]
    # A checkpoint of a foreach Learner (ray.fused_adam=false, or written before fused
    # Adam was the default) restores into a fused one and back: the moments as saved,
    # the kernel the restoring Learner's.
    foreach = _learner(PulsePPOTorchLearner, learner_config=FOREACH_ADAM)
    learner._set_optimizer_state(foreach._get_optimizer_state())
    assert optimizer.param_groups[0]["fused"] is True
    assert not optimizer.param_groups[0]["foreach"]
    foreach._set_optimizer_state(learner._get_optimizer_state())
    (foreach_optimizer,) = foreach._named_optimizers.values()
    assert foreach_optimizer.param_groups[0]["foreach"] is True
    assert not foreach_optimizer.param_groups[0]["fused"]
    # Nine Adam steps: the same weights run to run; next to the foreach step's at most
    # rounding apart (the kernels may order the same arithmetic differently).
    _assert_repeats_and_close_to_eager({"learner_config": fused}, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # inductor compiles the update's graphs: ~10-20 s of one core
@pytest.mark.filterwarnings("ignore:.*record_function.*:UserWarning")
def test_compiled_update_repeats_bit_for_bit_and_stays_close_to_eager() -> None:
    """``ray.torch_compile_learner``: RLlib's compiled complete update on the PPO Learner.

    One update of nine minibatches: the first runs eagerly (RLlib's rule), the next ones
    through the compiled graphs. Two compiled Learners agree bit for bit; against the
    eager Learner the weights are close, not equal (inductor's kernels round differently).
    """
    from pulsebms.agents.rllib import cpp_compiler_available

    if not cpp_compiler_available():  # inductor writes C++; build_rllib_algorithm refuses
        if os.environ.get("CI"):  # .ci/run installs g++: never green by skipping there
            pytest.fail("no C++ compiler for torch's inductor on CI (.ci/run installs g++)")
        pytest.skip("no C++ compiler for torch's inductor on this machine")
    compiled, eager = _assert_repeats_and_close_to_eager(
        {"compile_update": True}, rtol=1e-4, atol=1e-5
    )
    assert compiled[0]["policy_loss"] == pytest.approx(eager[0]["policy_loss"], rel=1e-4)


@pytest.mark.parametrize("option", ["torch_compile_learner", "fused_adam"])
def test_learner_speed_options_are_refused_where_not_measured(option: str) -> None:
    from pulsebms.agents.rllib import build_rllib_algorithm
    from pulsebms.agents.rllib_config import RllibSACConfig

    with pytest.raises(ValueError, match="PPO Learners"):  # before any Ray is needed
        build_rllib_algorithm(
            "pulsebms.envs:PulseBMS/FleetSmall-v0", RllibSACConfig(), **{option: True}
        )


def test_compiled_learner_without_a_cpp_compiler_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No C++ compiler: ``torch_compile_learner`` is refused before any Ray work starts.

    Not a silent fall back to the eager update: the two round differently, so the same
    config would train other weights on a machine without g++.
    """
    from pulsebms.agents.rllib import RllibPPOConfig, build_rllib_algorithm, cpp_compiler_available

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no g++, c++, clang++
    assert not cpp_compiler_available()
    with pytest.raises(RuntimeError, match=r"C\+\+ compiler.*torch_compile_learner=false"):
        build_rllib_algorithm(
            "pulsebms.envs:PulseBMS/FleetSmall-v0",
            RllibPPOConfig(train_batch_size=64, minibatch_size=32),
            torch_compile_learner=True,
        )
