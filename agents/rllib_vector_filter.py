"""The observation filter PulseBMS's RLlib agents use by default: statistics once per vector step.

:class:`VectorStepMeanStdFilter` is an env-to-module connector with the state, constructor
and checkpoints of RLlib's ``MeanStdFilter`` (a running mean and variance per observation
feature, normalising ``(x − mean) / (std + 1e-6)`` clipped at ±10) whose statistics are
updated **once per vector step**, from the stacked newest observations of all ``n`` envs,
with Chan et al.'s parallel combination of counts, means and sums of squared deviations
(the formula of Stable-Baselines3's ``RunningMeanStd`` behind ``VecNormalize``, and of
RLlib's own ``RunningStat.update``); every env's observation of that step is then
normalised with the updated statistics. RLlib's filter (and
:class:`~pulsebms.agents.rllib_connectors.BatchedMeanStdFilter`, its bit-identical batched
form) pushes the rows one by one through Welford's update and normalises each row with
the statistics after its own push: the same statistics up to rounding, but every env's
normalised observation but the last one's differs slightly. PulseBMS owns this default;
``observation_filter="per_row"`` in the agent config selects RLlib's arithmetic (the A/B
baseline of ``pulsebms-bench ray --ab-filter``).

**Runner synchronisation.** Each remote EnvRunner's ``RunningStat`` keeps, beside the
totals, the count, mean and sum of squared deviations of the rows it pushed since its last
synchronisation (``num_pushes_delta``, ``mean_delta_array``, ``sum_sq_diff_delta_array``);
RLlib's ``merge_states`` combines those into the driver's totals with the same parallel
formula, so merging two runners' states gives the statistics of the union of their rows.
(RLlib's per-row push adds each row's mean *increment* to ``mean_delta_array`` instead of
keeping the new rows' mean, which agrees only for the first synchronisation, from empty
statistics; see docs/ray.md, "Tenth round".) The filter's second ``RunningStat``, the
``buffer``, is neither in the connector's state nor read by its merge on RLlib's new API
stack, and is not updated here.

The class reports RLlib's name (``type(f).__name__ == "MeanStdFilter"``), as
:class:`~pulsebms.agents.rllib_connectors.MeanStdFilter` does: a connector pipeline keys
its pieces' states and checkpoint folders by class name, so statistics move between this
filter and the per-row ones in both directions (resuming an older run, evaluating or
exporting either kind of checkpoint).

Example:
    >>> import gymnasium as gym
    >>> from ray.rllib.env.single_agent_episode import SingleAgentEpisode
    >>> space = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)
    >>> f = VectorStepMeanStdFilter()
    >>> f.input_action_space = f.input_observation_space = space  # as the EnvRunner does
    >>> rows = np.array([[1.0, 2.0], [3.0, 6.0]], np.float32)
    >>> episodes = [SingleAgentEpisode(observations=[r], observation_space=space) for r in rows]
    >>> _ = f(rl_module=None, batch={}, episodes=episodes)
    >>> stats = f._filters[None].running_stats
    >>> stats.num_pushes, stats.mean.tolist(), stats.var.tolist()
    (2, [2.0, 4.0], [2.0, 8.0])
    >>> [[round(float(v), 4) for v in e.get_observations(-1)] for e in episodes]
    [[-0.7071, -0.7071], [0.7071, 0.7071]]
    >>> type(f).__name__
    'MeanStdFilter'
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.utils.filter import RunningStat

from pulsebms.agents.rllib_connectors import MeanStdFilter

__all__ = ["VectorStepMeanStdFilter", "combine_rows"]


def combine_rows(stats: RunningStat, rows: np.ndarray) -> None:
    """Add ``rows`` to ``stats`` at once (Chan et al.'s parallel mean/variance combination).

    Updates the totals (``num_pushes``, ``mean_array``, ``sum_sq_diff_array``) and the
    statistics of the rows since the last synchronisation (``num_pushes_delta``,
    ``mean_delta_array``, ``sum_sq_diff_delta_array``: their count, mean and sum of squared
    deviations, what ``RunningStat.update`` merges), in float64.

    Args:
        stats: RLlib's running statistics, updated in place.
        rows: ``[k, *stats.shape]`` values (k ≥ 1).

    Raises:
        ValueError: If the rows' shape does not match the statistics' or there are none.

    Example:
        >>> stats = RunningStat((1,))
        >>> combine_rows(stats, np.array([[1.0], [2.0]]))
        >>> combine_rows(stats, np.array([[4.0]]))
        >>> total_sq = round(float(stats.sum_sq_diff_array[0]), 6)
        >>> stats.num_pushes, stats.mean.round(6).tolist(), total_sq
        (3, [2.333333], 4.666667)
    """
    mean = stats.mean_array
    if rows.shape[1:] != mean.shape or rows.shape[0] < 1:
        raise ValueError(f"Unexpected input shape {rows.shape}, expected (k ≥ 1, *{mean.shape})")
    k = rows.shape[0]
    x = rows.astype(np.float64, copy=False)
    batch_mean = x.mean(axis=0)
    centred = x - batch_mean
    batch_sq = (centred * centred).sum(axis=0)
    stats.num_pushes, mean[...], stats.sum_sq_diff_array[...] = _combined(
        stats.num_pushes, mean, stats.sum_sq_diff_array, k, batch_mean, batch_sq
    )
    (
        stats.num_pushes_delta,
        stats.mean_delta_array[...],
        stats.sum_sq_diff_delta_array[...],
    ) = _combined(
        stats.num_pushes_delta,
        stats.mean_delta_array,
        stats.sum_sq_diff_delta_array,
        k,
        batch_mean,
        batch_sq,
    )


def _combined(
    n_a: int, mean_a: np.ndarray, sq_a: np.ndarray, n_b: int, mean_b: np.ndarray, sq_b: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray]:
    if n_a == 0:  # nothing yet (or nothing since the last sync): whatever the arrays hold
        return n_b, mean_b, sq_b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), sq_a + sq_b + delta * delta * (n_a * n_b / n)


def _running_std(stats: RunningStat) -> np.ndarray:
    """``RunningStat.std`` (float32 unbiased variance, 0 below two pushes, its square root)."""
    n = stats.num_pushes
    if n <= 1:
        return np.zeros(stats.mean_array.shape, dtype=np.float32)
    var = (stats.sum_sq_diff_array / (float(n) - 1.0)).astype(np.float32)
    std: np.ndarray = np.sqrt(np.maximum(var, np.float32(0.0)))
    return std


class VectorStepMeanStdFilter(MeanStdFilter):
    """RLlib's ``MeanStdFilter`` with its statistics updated once per vector step.

    See the module docstring. Multi-agent filters and observation spaces other than one flat
    ``Box`` fall back to RLlib's per-episode loop.
    """

    def _row_statistics(self, obs_filter: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add all ``rows`` to the statistics at once (unless frozen); the updated mean and std.

        Args:
            obs_filter: RLlib's numpy ``MeanStdFilter`` of the flat observation.
            rows: ``[n_envs, *shape]`` newest observations.

        Returns:
            The mean and std every row is normalised with.
        """
        stats: RunningStat = obs_filter.running_stats
        if self._update_stats:
            combine_rows(stats, rows)
        return stats.mean_array, _running_std(stats)


# The pipeline's state key and checkpoint folder (see the module docstring); pickling finds
# the class by its ``__qualname__``, which stays ``VectorStepMeanStdFilter``.
VectorStepMeanStdFilter.__name__ = "MeanStdFilter"
