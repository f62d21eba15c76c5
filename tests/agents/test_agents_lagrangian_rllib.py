"""PPO-Lagrangian on RLlib (new API stack): λ follows the cost limit, the cost critic learns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lagrangian_fixtures import HORIZON, PRE_SHIELD_COST, CountdownEnv
from ray.rllib.algorithms.ppo import PPOConfig
from ray.tune.registry import register_env

from pulsebms.agents.env_factory import make_env
from pulsebms.agents.lagrangian import LagrangianPenalty, LagrangianSettings
from pulsebms.agents.rllib import RLlibPolicy, ray_session, train_rllib
from pulsebms.agents.rllib_lagrangian import (
    CostCriticPPOTorchRLModule,
    PPOLagrangianTorchLearner,
    build_rllib_lagrangian_algorithm,
)

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:.*Overriding environment rllib-single-agent-env-v0 already in registry:UserWarning"
    ),
]

GAMMA = 0.9


def _countdown(config: Any) -> LagrangianPenalty:
    return LagrangianPenalty(CountdownEnv())


@pytest.fixture(scope="module")
def ray_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ray")  # short: Ray's socket paths are limited


def _learner_metric(result: dict[str, Any], key: str) -> float:
    return float(result["learners"]["default_policy"][key])


def test_rllib_lambda_follows_the_limit_and_the_cost_critic_learns(ray_tmp: Path) -> None:
    register_env("pulsebms-test-countdown", _countdown)
    with ray_session(num_cpus=2, temp_dir=ray_tmp):
        config = (
            PPOConfig()
            .environment("pulsebms-test-countdown")
            .env_runners(num_env_runners=0)
            .training(
                train_batch_size_per_learner=64,  # 16 whole episodes per iteration
                minibatch_size=32,
                num_epochs=10,  # 20 SGD steps per iteration: few (costly) RLlib iterations
                lr=3e-3,
                gamma=GAMMA,
                lambda_=0.95,
            )
            .rl_module(model_config={"fcnet_hiddens": [16, 16]})
            .debugging(seed=0, log_level="ERROR")
        )
        settings = LagrangianSettings(cost_limit=1.0, lagrangian_lr=0.1, lagrangian_max=5.0)
        algo = settings.rllib_config_hook(config).build_algo()  # the hyperparameter seam
        try:
            learner = algo.learner_group._learner
            assert isinstance(learner, PPOLagrangianTorchLearner)
            # Episode pre-shield cost 2.0 > limit 1.0: λ rises by 0.1 × (2 − 1) per iteration.
            results = [algo.train() for _ in range(3)]
            lams = [_learner_metric(r, "lagrange_multiplier") for r in results]
            assert lams == pytest.approx([0.1, 0.2, 0.3])
            assert _learner_metric(results[-1], "episode_cost") == pytest.approx(2.0)
            # Limit 3.0 > cost 2.0: λ falls back, projected at 0.
            learner.multiplier.cost_limit = 3.0
            lams = [_learner_metric(algo.train(), "lagrange_multiplier") for _ in range(4)]
            assert lams == pytest.approx([0.2, 0.1, 0.0, 0.0])
            assert learner.get_state()["pulsebms_lagrangian"]["value"] == 0.0
            first_loss = _learner_metric(results[0], "cost_vf_loss")
            # The reported cost critic loss is the last minibatch's (logged once per update).
            per_minibatch: list[float] = []
            compute_loss = learner.compute_loss_for_module

            def recording(**kwargs: Any) -> Any:
                loss = compute_loss(**kwargs)
                per_minibatch.append(learner._pending_cost_vf_loss[kwargs["module_id"]].item())
                return loss

            learner.compute_loss_for_module = recording
            result = algo.train()
            del learner.compute_loss_for_module
            assert len(per_minibatch) == 20  # 10 epochs of 2 minibatches
            assert _learner_metric(result, "cost_vf_loss") == per_minibatch[-1]
            for _ in range(11):
                last = algo.train()
            assert _learner_metric(last, "cost_vf_loss") < 0.2 * first_loss
            module = learner.module["default_policy"]
            assert isinstance(module, CostCriticPPOTorchRLModule)
            steps_left = np.arange(1, HORIZON + 1)
            truth = PRE_SHIELD_COST * (1 - GAMMA**steps_left) / (1 - GAMMA)
            obs = torch.as_tensor((steps_left / HORIZON)[:, None], dtype=torch.float32)
            with torch.no_grad():
                predicted = module.compute_cost_values({"obs": obs}).numpy()
            np.testing.assert_allclose(predicted, truth, rtol=0.15, atol=0.1)
        finally:
            algo.stop()


def test_rllib_ppo_lagrangian_trains_on_the_fleet_and_acts_from_its_checkpoint(
    tmp_path: Path, ray_tmp: Path
) -> None:
    env_kwargs = {"horizon_steps": 16, "dt_s": 900.0}
    with ray_session(num_cpus=2, temp_dir=ray_tmp):
        algo = build_rllib_lagrangian_algorithm(
            "pulsebms.envs:PulseBMS/FleetSmall-v0",
            LagrangianSettings(cost_limit=0.0, lagrangian_lr=1.0, lagrangian_max=2.0),
            env_kwargs=env_kwargs,
            seed=0,
            train_batch_size=32,
            minibatch_size=16,
            num_epochs=1,
            hidden_sizes=(8,),
        )
        try:
            run = train_rllib(algo, iterations=2, checkpoint_dir=tmp_path / "ckpt")
            lam = algo.learner_group._learner.multiplier.value
        finally:
            algo.stop()
    assert 0.0 <= lam <= 2.0  # bounded even with the unreachable limit 0
    policy = RLlibPolicy.from_checkpoint(run.checkpoint_path)
    env = make_env("PulseBMS/FleetSmall-v0", **env_kwargs)
    obs, _ = env.reset(seed=0)
    action = policy.act(obs)
    assert action.shape == env.action_space.shape
    assert np.all(np.abs(action) <= 1.0)
