"""Batched EnvRunner connector pieces: one operation over the whole env vector, not one per env.

An RLlib EnvRunner stepping ``n`` envs as one gymnasium vector runs its connector pipelines
once per vector step, but several of RLlib's default pieces then loop over the ``n``
episodes in Python: the ``MeanStdFilter`` pushes and normalises one observation at a time
(two ``RunningStat`` pushes and a normalisation per env), ``NormalizeAndClipActions``
deep-copies the actions and unsquashes/clips them env by env, and
``UnBatchToIndividualItems`` → ``RemoveSingleTsTimeRankFromBatch`` → ``ListifyDataForVectorEnv``
split every column into per-episode items only to stack the actions back into one array.
On the quick fleet with 4 envs per runner these loops, and the action distribution objects
built per step, were most of the runner's own overhead per env step (``pulsebms-bench
ray``). The pieces here compute the same results with one vectorised operation per vector
step:

* :class:`BatchedMeanStdFilter` (env → module): RLlib's ``MeanStdFilter`` connector (same
  class hierarchy, same state, same checkpoints) whose update and normalisation run over
  the stacked observations of all envs. The running statistics are **bit-identical** to
  RLlib's per-observation pushes (the same Welford arithmetic, in the same order, on whole
  feature vectors), and so is every normalised observation: each env's observation is
  normalised with the statistics after its own push, as RLlib's loop does, but in one
  array operation.
* :class:`GaussianGetActions` (module → env): RLlib's ``GetActions`` that, for a
  diagonal-Gaussian exploration policy, samples the actions and takes their
  log-probabilities with the torch operations ``torch.distributions.Normal`` runs, without
  building the distribution objects on every step (the same values, the same random
  draws).
* :class:`BatchedNormalizeAndClipActions` (module → env): RLlib's ``NormalizeAndClipActions``
  applied once to the ``[n, act]`` action batch (RLlib's own ``unsquash_action`` /
  ``clip_action``, which broadcast), before unbatching; same settings and class hierarchy,
  so :class:`~pulsebms.agents.rllib_policy.RLlibPolicy` reads it from checkpoints as before.
* :class:`ListifyBatchForVectorEnv` (module → env): the per-env lists the EnvRunner reads
  (``actions`` / ``actions_for_env`` as ``[n, act]`` arrays, every other column as a list of
  per-env rows) taken straight from the batch, in place of the unbatch → re-listify round
  trip. Only for single-agent, stateless modules (no time rank to remove).

:func:`batch_module_to_env` rewrites a module-to-env pipeline to use the last three when it
is exactly RLlib's default single-agent pipeline (no user pieces); any other pipeline is
left as it is. :class:`~pulsebms.agents.rllib_env_runner.PulseEnvRunner` calls it, and
:func:`pulsebms.agents.rllib.build_rllib_algorithm` uses :class:`BatchedMeanStdFilter` for
``normalize_observations`` with ``observation_filter="per_row"`` (the default is
:class:`~pulsebms.agents.rllib_vector_filter.VectorStepMeanStdFilter`, one statistics update
per vector step).

Example:
    >>> piece = BatchedMeanStdFilter()  # the EnvRunner sets its spaces
    >>> isinstance(piece, rllib_mean_std_filter.MeanStdFilter), type(piece).__name__
    (True, 'MeanStdFilter')
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from ray.rllib.connectors.common.add_observations_from_episodes_to_batch import (
    AddObservationsFromEpisodesToBatch,
)
from ray.rllib.connectors.common.add_states_from_episodes_to_batch import (
    AddStatesFromEpisodesToBatch,
)
from ray.rllib.connectors.common.add_time_dim_to_batch_and_zero_pad import (
    AddTimeDimToBatchAndZeroPad,
)
from ray.rllib.connectors.common.batch_individual_items import BatchIndividualItems
from ray.rllib.connectors.common.numpy_to_tensor import NumpyToTensor
from ray.rllib.connectors.common.tensor_to_numpy import TensorToNumpy
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.env_to_module import EnvToModulePipeline
from ray.rllib.connectors.env_to_module import mean_std_filter as rllib_mean_std_filter
from ray.rllib.connectors.module_to_env.get_actions import GetActions
from ray.rllib.connectors.module_to_env.listify_data_for_vector_env import (
    ListifyDataForVectorEnv,
)
from ray.rllib.connectors.module_to_env.module_to_env_pipeline import ModuleToEnvPipeline
from ray.rllib.connectors.module_to_env.normalize_and_clip_actions import (
    NormalizeAndClipActions,
)
from ray.rllib.connectors.module_to_env.remove_single_ts_time_rank_from_batch import (
    RemoveSingleTsTimeRankFromBatch,
)
from ray.rllib.connectors.module_to_env.unbatch_to_individual_items import (
    UnBatchToIndividualItems,
)
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode
from ray.rllib.utils.filter import RunningStat
from ray.rllib.utils.numpy import SMALL_NUMBER
from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

__all__ = [
    "BatchObservationsForModule",
    "BatchedMeanStdFilter",
    "BatchedNormalizeAndClipActions",
    "FlatTensorToNumpy",
    "GaussianGetActions",
    "ListifyBatchForVectorEnv",
    "MeanStdFilter",
    "batch_env_to_module",
    "batch_module_to_env",
    "push_rows",
    "running_stds",
]


def push_rows(
    stats: RunningStat, rows: np.ndarray, *, snapshots: bool = True
) -> tuple[np.ndarray, ...]:
    """Push ``rows`` into ``stats`` one after another, as ``RunningStat.push`` does each.

    The arithmetic is RLlib's Welford update, operation for operation (so the state is
    bit-identical to ``for row in rows: stats.push(row)``), without the per-push argument
    checks. The statistics after each row are returned, so that each row can be
    normalised, as RLlib's filter does, right after its own push.

    Args:
        stats: The running statistics (updated in place: counts, means, sums of squares
            and their deltas since the last sync).
        rows: ``[k, *stats.shape]`` values.
        snapshots: Record the statistics after each push (``False``: only update them,
            and return empty arrays).

    Returns:
        ``(means, sums_sq, counts)`` after each push: ``[k, *shape]`` float64 means,
        ``[k, *shape]`` float64 sums of squared differences, ``[k]`` float64 counts.

    Raises:
        ValueError: If the rows' shape does not match the statistics'.

    Example:
        >>> a, b = RunningStat((2,)), RunningStat((2,))
        >>> rows = np.array([[1.0, 2.0], [3.0, 5.0], [4.0, 4.0]])
        >>> for row in rows:
        ...     a.push(row)
        >>> means, sums_sq, counts = push_rows(b, rows)
        >>> bool((a.mean == b.mean).all() and (a.std == b.std).all()), counts.tolist()
        (True, [1.0, 2.0, 3.0])
    """
    mean = stats.mean_array
    if rows.shape[1:] != mean.shape:
        raise ValueError(f"Unexpected input shape {rows.shape[1:]}, expected {mean.shape}")
    mean_delta = stats.mean_delta_array
    sum_sq = stats.sum_sq_diff_array
    sum_sq_delta = stats.sum_sq_diff_delta_array
    k = rows.shape[0] if snapshots else 0
    means = np.empty((k, *mean.shape), dtype=np.float64)
    sums_sq = np.empty_like(means)
    counts = np.empty(k, dtype=np.float64)
    for i, x in enumerate(rows):
        stats.num_pushes += 1
        stats.num_pushes_delta += 1
        n = stats.num_pushes
        if n == 1:
            mean[...] = x
            mean_delta[...] = x
        else:
            delta = x - mean
            step = delta / n
            mean[...] += step
            mean_delta[...] += step
            spread = delta * (x - mean)
            sum_sq[...] += spread
            sum_sq_delta[...] += spread
        if snapshots:
            means[i] = mean
            sums_sq[i] = sum_sq
            counts[i] = n
    return means, sums_sq, counts


def running_stds(sums_sq: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """RLlib's ``RunningStat.std`` (float32, unbiased, 0 below two pushes) per snapshot row.

    Example:
        >>> stats = RunningStat((1,))
        >>> for x in (1.0, 2.0, 4.0):
        ...     stats.push(np.array([x]))
        >>> bool(running_stds(stats.sum_sq_diff_array[None], np.array([3.0]))[0] == stats.std)
        True
    """
    var = np.zeros(sums_sq.shape, dtype=np.float32)
    more = counts > 1
    if more.any():
        shape = (-1,) + (1,) * (sums_sq.ndim - 1)
        var[more] = (sums_sq[more] / (counts[more].reshape(shape) - 1.0)).astype(np.float32)
    stds: np.ndarray = np.sqrt(np.maximum(0, var))
    return stds


class MeanStdFilter(rllib_mean_std_filter.MeanStdFilter):
    """RLlib's ``MeanStdFilter`` connector, updated and applied over all envs at once.

    Same constructor, state (``get_state`` / ``set_state`` / ``merge_states``) and
    checkpoints as RLlib's class; see the module docstring for what is batched. Falls back
    to RLlib's per-episode loop for multi-agent filters and for observation spaces that
    are not one flat ``Box`` (dicts, tuples, discrete).

    The class keeps RLlib's name on purpose: a connector pipeline keys its pieces' states
    and checkpoint folders by class name, so with the same name the filter statistics move
    both ways, from checkpoints written with RLlib's filter into this one (resuming an
    older run) and from this one's checkpoints into RLlib's. :data:`BatchedMeanStdFilter`
    is the unambiguous alias.
    """

    def __call__(
        self,
        *,
        rl_module: Any,
        batch: dict[str, Any],
        episodes: list[Any],
        explore: bool | None = None,
        persistent_data: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Update the statistics with every env's newest observation and normalise them."""
        if self._filters is None:
            self._init_new_filters()  # type: ignore[no-untyped-call]  # RLlib is untyped
        filters = self._filters or {}
        obs_filter = None if self._multi_agent else filters.get(None)
        if (
            obs_filter is None
            or obs_filter.no_preprocessor
            or not episodes
            or isinstance(episodes[0], MultiAgentEpisode)
        ):
            return super().__call__(
                rl_module=rl_module,
                batch=batch,
                episodes=episodes,
                explore=explore,
                persistent_data=persistent_data,
                **kwargs,
            )
        rows = np.stack([np.asarray(e.get_observations(indices=-1)) for e in episodes])
        means, stds = self._row_statistics(obs_filter, rows)
        normalized = rows
        if obs_filter.demean:
            normalized = normalized - means
        if obs_filter.destd:
            normalized = normalized / (stds + SMALL_NUMBER)
        if obs_filter.clip:
            normalized = np.clip(normalized, -obs_filter.clip, obs_filter.clip)
        normalized = normalized.astype(rows.dtype)
        space = self.observation_space
        for episode, row in zip(episodes, normalized, strict=True):
            episode.set_observations(at_indices=-1, new_data=row)
            episode.observation_space = space
        return batch

    def _row_statistics(self, obs_filter: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Update the statistics with ``rows`` (unless frozen); the mean and std per row.

        RLlib's arithmetic: every row pushed in turn (statistics and sync buffer), and each
        normalised with the statistics after its own push. Subclasses change how the rows
        enter the statistics
        (:class:`~pulsebms.agents.rllib_vector_filter.VectorStepMeanStdFilter`).

        Args:
            obs_filter: RLlib's numpy ``MeanStdFilter`` of the flat observation.
            rows: ``[n_envs, *shape]`` newest observations.

        Returns:
            Means and stds that broadcast against ``rows``.
        """
        stats: RunningStat = obs_filter.running_stats
        if self._update_stats:
            buffer = obs_filter.buffer
            if not isinstance(buffer, RunningStat):  # pragma: no cover - a flat Box filter's
                raise TypeError(f"expected a RunningStat buffer, got {type(buffer).__name__}")
            push_rows(buffer, rows, snapshots=False)
            means, sums_sq, counts = push_rows(stats, rows)
        else:
            means = stats.mean_array[None]
            sums_sq = stats.sum_sq_diff_array[None]
            counts = np.array([float(stats.num_pushes)])
        return means, running_stds(sums_sq, counts)

    def get_ctor_args_and_kwargs(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """RLlib's filter's constructor arguments (checkpoints rebuild it from them)."""
        return (), {
            "multi_agent": self._multi_agent,
            "de_mean_to_zero": self.de_mean_to_zero,
            "de_std_to_one": self.de_std_to_one,
            "clip_by_value": self.clip_by_value,
            "update_stats": self._update_stats,
        }


BatchedMeanStdFilter = MeanStdFilter
"""This module's batched :class:`MeanStdFilter` (the name to import it by)."""


class BatchedNormalizeAndClipActions(NormalizeAndClipActions):
    """RLlib's ``NormalizeAndClipActions`` over the ``[n, act]`` action batch at once.

    Placed before the batch is split per episode (single agent). ``actions`` stays as the
    module sampled it; ``actions_for_env`` is RLlib's ``unsquash_action`` (with
    ``normalize_actions``) or ``clip_action`` (with ``clip_actions``) of the whole batch,
    the same values RLlib's per-item loop gives. On a batch already split per episode
    (a dict column) or a multi-agent batch it runs RLlib's loop.
    """

    def __call__(
        self,
        *,
        rl_module: Any,
        batch: dict[str, Any] | None,
        episodes: list[Any],
        explore: bool | None = None,
        shared_data: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Add ``actions_for_env``: the unsquashed or clipped actions of every env."""
        actions = None if batch is None else batch.get(Columns.ACTIONS)
        if (
            batch is None
            or not isinstance(actions, np.ndarray)
            or (episodes and isinstance(episodes[0], MultiAgentEpisode))
        ):
            return super().__call__(
                rl_module=rl_module,
                batch=batch,
                episodes=episodes,
                explore=explore,
                shared_data=shared_data,
                **kwargs,
            )
        if self.normalize_actions:
            batch[Columns.ACTIONS_FOR_ENV] = unsquash_action(  # type: ignore[no-untyped-call]  # RLlib is untyped
                actions, self._action_space_struct
            )
        elif self.clip_actions:
            batch[Columns.ACTIONS_FOR_ENV] = clip_action(  # type: ignore[no-untyped-call]  # RLlib is untyped
                actions, self._action_space_struct
            )
        return batch

    def get_ctor_args_and_kwargs(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The constructor arguments (checkpoints rebuild the piece from them)."""
        return (), {
            "input_observation_space": self.input_observation_space,
            "input_action_space": self.input_action_space,
            "normalize_actions": self.normalize_actions,
            "clip_actions": self.clip_actions,
        }


_HALF_LOG_2PI = math.log(math.sqrt(2 * math.pi))


class GaussianGetActions(GetActions):
    """RLlib's ``GetActions`` with a direct path for diagonal-Gaussian exploration.

    RLlib builds a ``TorchDiagGaussian`` (a ``torch.distributions.Normal`` inside, with its
    argument broadcasting) from the module's outputs on every vector step, samples it and
    takes the sample's log-probability through it. For a module whose exploration
    distribution is exactly ``TorchDiagGaussian`` this piece computes the same two
    tensors with the same torch operations, in the same order, without the objects:
    ``actions = torch.normal(loc, exp(log_std))`` (the same random draw) and
    ``logp = Σ −(a − loc)² / (2σ²) − log σ − log √(2π)`` (``Normal.log_prob``). Anything
    else (inference, other distributions, actions already present, multi-agent) is
    RLlib's own code.
    """

    def _get_actions(self, batch: dict[str, Any], sa_rl_module: Any, explore: Any) -> None:
        if (
            not explore
            or Columns.ACTIONS in batch
            or Columns.ACTION_LOGP in batch
            or Columns.ACTION_DIST_INPUTS not in batch
            or sa_rl_module.get_exploration_action_dist_cls() is not TorchDiagGaussian
        ):
            super()._get_actions(batch, sa_rl_module, explore)  # type: ignore[no-untyped-call]  # RLlib is untyped
            return
        loc, log_std = batch[Columns.ACTION_DIST_INPUTS].chunk(2, dim=-1)
        scale = log_std.exp()  # TorchDiagGaussian.from_logits
        with torch.no_grad():  # Normal.sample
            actions = torch.normal(loc, scale)
        batch[Columns.ACTIONS] = actions
        logp = -((actions - loc) ** 2) / (2 * scale**2) - scale.log() - _HALF_LOG_2PI
        batch[Columns.ACTION_LOGP] = logp.sum(-1)


class FlatTensorToNumpy(TensorToNumpy):
    """RLlib's ``TensorToNumpy`` with a direct path for a flat batch of CPU tensors.

    RLlib converts the module's outputs with ``convert_to_numpy``: a dm-tree
    ``map_structure`` over the batch, calling a Python mapping per leaf. After the batched
    ``GaussianGetActions`` the batch is a flat dict of CPU tensors (action-distribution
    inputs, actions, log-probs); for such a batch this piece does what that mapping does per
    leaf (``detach().cpu().numpy()``, then float64 → float32 and int64 → int32, RLlib's
    ``reduce_type``) in one dict comprehension: the same arrays, the same dtypes. A flat
    batch of numpy arrays (a numpy exploration pass's output) only gets that reduction,
    without copying float32 arrays. Any other batch (nested, 0-d tensors, mixed, other
    devices) is RLlib's.

    Example:
        >>> import torch
        >>> out = FlatTensorToNumpy()(rl_module=None, batch={"a": torch.ones(2, 1,
        ...     dtype=torch.float64)}, episodes=[])
        >>> out["a"].dtype, out["a"].shape
        (dtype('float32'), (2, 1))
    """

    def __call__(
        self,
        *,
        rl_module: Any,
        batch: dict[str, Any],
        episodes: list[Any],
        explore: bool | None = None,
        shared_data: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Convert every column, one tensor → array each (see the class docstring)."""
        if all(type(value) is np.ndarray and value.ndim > 0 for value in batch.values()):
            # A numpy exploration pass's output: only RLlib's float64/int64 reduction.
            return {key: _reduced_array(value, copy=False) for key, value in batch.items()}
        cpu = _CPU
        if not all(
            type(value) is torch.Tensor and value.ndim > 0 and value.device == cpu
            for value in batch.values()
        ):
            return super().__call__(
                rl_module=rl_module,
                batch=batch,
                episodes=episodes,
                explore=explore,
                shared_data=shared_data,
                **kwargs,
            )
        return {key: _reduced_array(value.detach().numpy()) for key, value in batch.items()}


_CPU = torch.device("cpu")


def _reduced_array(array: np.ndarray, *, copy: bool = True) -> np.ndarray:
    """RLlib's ``convert_to_numpy(reduce_type=True)`` per array: 64-bit floats/ints to 32."""
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=copy)
    if np.issubdtype(array.dtype, int):
        return array.astype(np.int32, copy=copy)
    return array


class ListifyBatchForVectorEnv(ConnectorV2):
    """The module's batched output as the per-env data a single-agent vector EnvRunner reads.

    What RLlib's ``UnBatchToIndividualItems`` → ``RemoveSingleTsTimeRankFromBatch`` →
    ``ListifyDataForVectorEnv`` give for a single-agent, stateless module, without the
    round trip: ``actions`` and ``actions_for_env`` as ``[n, act]`` arrays, every other
    column as the list of its ``n`` rows, in the episodes' (= the batch's) order.
    """

    def __call__(
        self,
        *,
        rl_module: Any,
        batch: dict[str, Any],
        episodes: list[Any],
        explore: bool | None = None,
        shared_data: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Split every column but the two action columns into per-env rows."""
        for column, data in list(batch.items()):
            if column in (Columns.ACTIONS, Columns.ACTIONS_FOR_ENV):
                continue
            batch[column] = list(data)
        return batch


class BatchObservationsForModule(ConnectorV2):
    """Every env's newest observation as one ``[n, obs]`` tensor: the module's input batch.

    What RLlib's ``AddObservationsFromEpisodesToBatch`` → ``AddTimeDimToBatchAndZeroPad`` →
    ``AddStatesFromEpisodesToBatch`` → ``BatchIndividualItems`` → ``NumpyToTensor`` give a
    single-agent, stateless module on the CPU (``{"obs": tensor}``, one row per episode in
    the episodes' order, float64 cast to float32; the episode order is memorised in
    ``shared_data`` as ``BatchIndividualItems`` does), with one stack and one tensor
    conversion instead of per-episode batch items. A batch that already holds data is
    passed through RLlib's pieces, given as ``fallback``.

    Args:
        fallback: RLlib's pieces this one stands for (run, in order, for other batches).
    """

    def __init__(
        self,
        input_observation_space: Any = None,
        input_action_space: Any = None,
        *,
        fallback: list[ConnectorV2] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self._fallback = list(fallback or [])

    def __call__(
        self,
        *,
        rl_module: Any,
        batch: dict[str, Any],
        episodes: list[Any],
        explore: bool | None = None,
        shared_data: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``{"obs": [n, obs] tensor}`` from the episodes' last observations.

        For an exploring module that runs its exploration pass in numpy
        (``rl_module.numpy_exploration``:
        :class:`~pulsebms.agents.rllib_module.PulsePPOTorchRLModule`) the batch holds the
        same rows as a float32 numpy array instead.
        """
        if batch or not episodes or isinstance(episodes[0], MultiAgentEpisode):
            for piece in self._fallback:
                batch = piece(
                    rl_module=rl_module,
                    batch=batch,
                    episodes=episodes,
                    explore=explore,
                    shared_data=shared_data,
                    **kwargs,
                )
            return batch
        rows = np.stack([e.get_observations(-1) for e in episodes])
        if shared_data is not None:
            shared_data["memorized_map_structure"] = [e.id_ for e in episodes]
        if explore and getattr(rl_module, "numpy_exploration", False):
            if rows.dtype.kind == "f" and rows.dtype != np.float16:
                rows = rows.astype(np.float32, copy=False)  # NumpyToTensor's cast
            return {Columns.OBS: rows}
        obs = torch.from_numpy(rows)
        if obs.is_floating_point() and obs.dtype != torch.float16:
            obs = obs.float()  # NumpyToTensor's cast (a no-op for float32)
        return {Columns.OBS: obs}

    def get_ctor_args_and_kwargs(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The constructor arguments (checkpoints rebuild the piece from them)."""
        return (self.input_observation_space, self.input_action_space), {
            "fallback": list(self._fallback)
        }


_ENV_TO_MODULE_TAIL = (
    AddObservationsFromEpisodesToBatch,
    AddTimeDimToBatchAndZeroPad,
    AddStatesFromEpisodesToBatch,
    BatchIndividualItems,
    NumpyToTensor,
)


def batch_env_to_module(pipeline: Any, *, stateful: bool, multi_agent: bool) -> bool:
    """Rewrite the default tail of an env-to-module pipeline to its batched form (in place).

    The pieces RLlib appends after the user's (``AddObservationsFromEpisodesToBatch,
    AddTimeDimToBatchAndZeroPad, AddStatesFromEpisodesToBatch, BatchIndividualItems,
    NumpyToTensor``) become one :class:`BatchObservationsForModule`; the user's pieces
    before them (the observation filter) stay. Pipelines of stateful modules, multi-agent
    envs, with tensors for a device other than the CPU or pinned memory, or without
    exactly that tail are left unchanged.

    Args:
        pipeline: The EnvRunner's env-to-module pipeline.
        stateful: Whether the RLModule is stateful (recurrent).
        multi_agent: Whether the env is multi-agent.

    Returns:
        Whether the pipeline was rewritten.
    """
    if stateful or multi_agent or not isinstance(pipeline, EnvToModulePipeline):
        return False
    pieces = list(pipeline.connectors)
    tail = pieces[-len(_ENV_TO_MODULE_TAIL) :]
    if tuple(type(piece) for piece in tail) != _ENV_TO_MODULE_TAIL:
        return False
    to_tensor = tail[-1]
    device = getattr(to_tensor, "_device", None)
    if getattr(to_tensor, "_pin_memory", False) or (
        device is not None and torch.device(device).type != "cpu"
    ):
        return False
    fused = BatchObservationsForModule(
        input_observation_space=tail[0].input_observation_space,
        input_action_space=tail[0].input_action_space,
        fallback=tail,
    )
    pipeline.connectors = [*pieces[: -len(_ENV_TO_MODULE_TAIL)], fused]
    return True


_DEFAULT_TAIL = (
    UnBatchToIndividualItems,
    RemoveSingleTsTimeRankFromBatch,
    NormalizeAndClipActions,
    ListifyDataForVectorEnv,
)


def batch_module_to_env(pipeline: Any, *, stateful: bool, multi_agent: bool) -> bool:
    """Rewrite RLlib's default module-to-env pipeline to its batched equivalent (in place).

    ``GetActions, TensorToNumpy, UnBatchToIndividualItems, RemoveSingleTsTimeRankFromBatch,
    NormalizeAndClipActions, ListifyDataForVectorEnv`` becomes ``GaussianGetActions,
    FlatTensorToNumpy, BatchedNormalizeAndClipActions, ListifyBatchForVectorEnv``, with the
    same action settings. Pipelines with other pieces, of stateful modules or multi-agent envs are
    left unchanged.

    Args:
        pipeline: The EnvRunner's module-to-env pipeline.
        stateful: Whether the RLModule is stateful (recurrent: keeps the time rank).
        multi_agent: Whether the env is multi-agent.

    Returns:
        Whether the pipeline was rewritten.
    """
    if stateful or multi_agent or not isinstance(pipeline, ModuleToEnvPipeline):
        return False
    pieces = list(pipeline.connectors)
    kinds = tuple(type(piece) for piece in pieces)
    if kinds != (GetActions, TensorToNumpy, *_DEFAULT_TAIL):
        return False
    actions = pieces[4]
    if not isinstance(actions, NormalizeAndClipActions):  # pragma: no cover - kinds checked
        return False
    batched = BatchedNormalizeAndClipActions(
        input_observation_space=actions.input_observation_space,
        input_action_space=actions.input_action_space,
        normalize_actions=actions.normalize_actions,
        clip_actions=actions.clip_actions,
    )
    listify = ListifyBatchForVectorEnv(
        input_observation_space=batched.observation_space,
        input_action_space=batched.action_space,
    )
    get_actions = GaussianGetActions(
        input_observation_space=pieces[0].input_observation_space,
        input_action_space=pieces[0].input_action_space,
    )
    to_numpy = FlatTensorToNumpy(
        input_observation_space=pieces[1].input_observation_space,
        input_action_space=pieces[1].input_action_space,
    )
    pipeline.connectors = [get_actions, to_numpy, batched, listify]
    return True
