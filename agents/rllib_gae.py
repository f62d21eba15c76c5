"""GAE for RLlib's PPO Learner with the backward recursion in Python floats.

RLlib's PPO Learner computes advantages and value targets in its learner connector
(``GeneralAdvantageEstimation``): one value forward over the train batch (every episode
chunk plus its artificial bootstrap step), then ``compute_value_targets`` over the
concatenated rows, whose backward GAE recursion loops over every row with numpy scalar
arithmetic (~0.6 µs per row: ~1 ms per 1536-step iteration on the build machine).

:func:`gae_value_targets` computes the same targets, bit for bit: the same numpy
expressions for the TD residuals and the propagation flags, and the recursion over the
same float64 values in Python floats (IEEE double arithmetic, the same rounding as numpy's
float64 scalars; the stored advantages are rounded to float32 as RLlib's are), ~5× cheaper.
Inputs whose residuals are not float64 (the recursion would then run in another precision)
take RLlib's own function.

:class:`BatchedGeneralAdvantageEstimation` is RLlib's learner connector piece with that
function, and its value forward without autograd (the same values; RLlib records a graph
it never uses). :func:`batch_learner_connector` puts it in place of RLlib's piece in a
Learner's default pipeline when every module is stateless;
:class:`~pulsebms.agents.rllib_learner.PulsePPOTorchLearner` does so when it is built.
PPO-Lagrangian's cost GAE (:mod:`pulsebms.agents.rllib_lagrangian`) keeps RLlib's function
(its flags arrive as float32: this recursion would round its targets differently).

Example:
    >>> values = np.array([1.0, 2.0, 0.5], np.float32)  # the last row: bootstrap step
    >>> rewards = np.array([1.0, 1.0, 0.0], np.float32)
    >>> truncateds = np.array([False, True, False])
    >>> targets = gae_value_targets(values, rewards, np.zeros(3, bool), truncateds, 0.9, 1.0)
    >>> [round(float(x), 4) for x in targets]  # row 1 ends the chunk: 1 + 0.9 * 0.5
    [2.305, 1.45, 0.0]
    >>> rllib = compute_value_targets(values, rewards, np.zeros(3, bool), truncateds, 0.9, 1.0)
    >>> targets.tobytes() == rllib.tobytes()
    True
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from ray.rllib.connectors.common.numpy_to_tensor import NumpyToTensor
from ray.rllib.connectors.learner.general_advantage_estimation import (
    GeneralAdvantageEstimation,
)
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.postprocessing.value_predictions import compute_value_targets

__all__ = [
    "BatchedGeneralAdvantageEstimation",
    "batch_learner_connector",
    "gae_value_targets",
]


def gae_value_targets(
    values: np.ndarray,
    rewards: np.ndarray,
    terminateds: np.ndarray,
    truncateds: np.ndarray,
    gamma: float,
    lambda_: float,
) -> np.ndarray:
    """GAE value targets (float32) of concatenated episode chunks: RLlib's, bit for bit.

    The rows are what RLlib's PPO learner connector builds: each chunk's steps followed by
    its artificial bootstrap step; ``terminateds[t]`` ends the transition at ``t`` (no
    bootstrap), ``truncateds[t]`` marks a chunk's last step (bootstrap from the next row,
    no propagation across it). The result equals
    ``ray.rllib.utils.postprocessing.value_predictions.compute_value_targets`` on the same
    arguments, bit for bit (the advantages are the targets minus ``values``); NaN where it
    has NaN (which of two NaN operands a CPU passes on, and so a NaN's sign bit, may
    differ).

    Args:
        values: Value predictions per row.
        rewards: Rewards per row (0 at the bootstrap rows).
        terminateds: Per row, whether the episode terminated at that step.
        truncateds: Per row, whether the chunk ends at that step.
        gamma: Discount.
        lambda_: GAE λ.

    Returns:
        The value targets, float32, one per row.
    """
    non_terminal = 1.0 - terminateds
    propagate = non_terminal * (1.0 - truncateds)
    next_values = np.append(values[1:], 0.0)
    residuals = rewards + gamma * non_terminal * next_values - values
    if (
        residuals.dtype != np.float64
        or propagate.dtype != np.float64
        or not isinstance(gamma, float | int)
        or not isinstance(lambda_, float | int)
    ):
        # Another precision: RLlib's recursion (numpy's promotion rules decide it).
        return compute_value_targets(  # type: ignore[no-any-return]  # RLlib is untyped
            values=values,
            rewards=rewards,
            terminateds=terminateds,
            truncateds=truncateds,
            gamma=gamma,
            lambda_=lambda_,
        )
    # RLlib's recursion, term for term: a_t = d_t + ((γ·λ)·p_t)·a_{t+1}, a after the end 0.
    decay = gamma * lambda_
    deltas = residuals.tolist()
    flags = propagate.tolist()
    advantages = [0.0] * len(deltas)
    running = 0.0
    for t in range(len(deltas) - 1, -1, -1):
        running = deltas[t] + decay * flags[t] * running
        advantages[t] = running
    out: np.ndarray = (np.asarray(advantages, dtype=np.float32) + values).astype(np.float32)
    return out


def _numpy(value: Any) -> np.ndarray:
    return cast(np.ndarray, convert_to_numpy(value))


class BatchedGeneralAdvantageEstimation(GeneralAdvantageEstimation):
    """RLlib's GAE learner connector piece for stateless modules, with :func:`gae_value_targets`.

    The same advantages (standardised over the batch as RLlib does) and value targets, bit
    for bit, as torch tensors on the values' device; the value forward runs without
    autograd. Stateful modules (zero-padded sequences) are handed to RLlib's piece.
    """

    def __call__(
        self,
        *,
        rl_module: Any,
        episodes: list[Any],
        batch: dict[str, Any],
        **kwargs: Any,
    ) -> Any:
        """Add advantages and value targets to each module's batch (see the class)."""
        if any(rl_module[mid].is_stateful() for mid in batch if mid in rl_module):
            return super().__call__(rl_module=rl_module, episodes=episodes, batch=batch, **kwargs)
        sa_episodes = list(
            self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False)
        )
        device = None
        results: dict[Any, dict[str, np.ndarray]] = {}
        for module_id in list(rl_module.keys()):
            module = rl_module[module_id]
            if module_id not in batch or not isinstance(module, ValueFunctionAPI):
                continue
            module_batch = batch[module_id]
            with torch.no_grad():
                predictions = module.compute_values(module_batch)
            device = predictions.device
            values = _numpy(predictions)
            rows = sum(len(e) for e in sa_episodes if e.module_id in (None, module_id))
            targets = gae_value_targets(
                values=values,
                rewards=_numpy(module_batch[Columns.REWARDS]),
                terminateds=_numpy(module_batch[Columns.TERMINATEDS]),
                truncateds=_numpy(module_batch[Columns.TRUNCATEDS]),
                gamma=self.gamma,
                lambda_=self.lambda_,
            )
            if targets.shape[0] != rows:
                raise ValueError(
                    f"GAE: {targets.shape[0]} batch rows for module {module_id!r}, but its "
                    f"episode chunks hold {rows}"
                )
            advantages = targets - values
            advantages = (advantages - advantages.mean()) / max(1e-4, advantages.std())
            results[module_id] = {
                Postprocessing.ADVANTAGES: advantages,
                Postprocessing.VALUE_TARGETS: targets,
            }
        # RLlib's conversion (the same tensors: dtype, device, pinning).
        if self._numpy_to_tensor_connector is None:
            self._numpy_to_tensor_connector = NumpyToTensor(
                as_learner_connector=True, device=device
            )
        tensors = self._numpy_to_tensor_connector(
            rl_module=rl_module, batch=results, episodes=episodes
        )
        for module_id, columns in tensors.items():
            batch[module_id].update(columns)
        return batch


def batch_learner_connector(pipeline: Any, *, stateful: bool) -> bool:
    """Swap RLlib's GAE piece of a Learner pipeline for the batched one (in place).

    Only RLlib's own ``GeneralAdvantageEstimation`` (not a subclass) is replaced, keeping
    its ``gamma`` and ``lambda_``, and only for stateless modules.

    Args:
        pipeline: A Learner's connector pipeline (``None``: nothing to do).
        stateful: Whether some module is stateful (then nothing is replaced).

    Returns:
        Whether the piece was replaced.
    """
    if pipeline is None or stateful:
        return False
    pieces = pipeline.connectors
    for i, piece in enumerate(pieces):
        if type(piece) is GeneralAdvantageEstimation:
            pieces[i] = BatchedGeneralAdvantageEstimation(  # type: ignore[no-untyped-call]
                piece.input_observation_space,
                piece.input_action_space,
                gamma=piece.gamma,
                lambda_=piece.lambda_,
            )
            return True
    return False
