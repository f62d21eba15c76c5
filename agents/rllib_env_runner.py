"""PulseBMS's EnvRunner for RLlib: batched connectors, no per-piece timers, no no-op callbacks.

On every vector step an RLlib EnvRunner runs two connector pipelines (env → module, ~7
pieces; module → env, ~7 pieces), and RLlib's pipeline opens a ``MetricsLogger`` timer
around each piece (an EMA-reduced stats object per piece and call) and logs the episodes'
summed lengths before and after the env → module pipeline. On the quick fleet with 4 envs
per runner that diagnostic bookkeeping cost ~0.05 ms per env step, a fifth of the runner's
own overhead (``pulsebms-bench ray``; the policy's forward pass costs ~0.04 ms).

:class:`PulseEnvRunner` is RLlib's ``SingleAgentEnvRunner`` whose two pipelines keep one
timer each, the pipeline's total (``.../connector_pipeline_timer``, as before), and run
their pieces without the metrics logger: the per-piece ``timers/connector_timers/*`` and
the ``env_to_module_sum_episodes_length_in/out`` entries are no longer reported. Sampling,
actions, episodes and the connectors' states (``MeanStdFilter``, in checkpoints) are
unchanged. No connector piece of RLlib's default pipelines logs metrics of its own.

It also runs RLlib's default connector pieces in their batched form
(:mod:`pulsebms.agents.rllib_connectors`: one operation over the env vector instead of one
per env; the same samples, bit for bit) when the module is stateless and the pipelines
are RLlib's defaults, and skips RLlib's per-env ``on_episode_step`` callback calls when no
callback handles them. :func:`pulsebms.agents.rllib.build_rllib_algorithm` uses it unless a
config hook sets another ``env_runner_cls``.

Its env vector's infos hold Python scalars (:class:`ScalarDictInfoToList`): gymnasium's
vector env gathers each ``info`` entry of its envs into an array, and gymnasium's
``DictInfoToList`` (RLlib's wrapper) splits the arrays again element by element, into numpy
scalars (``np.float64(0.0)``). The episodes keep those infos and a remote runner pickles
them to the Learner on every iteration; a numpy scalar pickles through its ``__reduce__``,
~40× slower than a Python float, and the infos were ~90 % of the time to pickle and
unpickle an iteration's episodes (``pulsebms-bench ray``: ~5 ms of 7 per 1536 env steps).
The values are the same (``tolist()`` of the same arrays: a float of a ``float32`` entry
is its exact value); only entries of 1-D numeric or boolean arrays change type (an env's
Python ``int``/``float``/``bool`` entry comes back as that type again, a numpy scalar
entry as the equal Python scalar); others (arrays, objects, nested dicts) are split as
gymnasium splits them.

Example:
    >>> from ray.rllib.connectors.env_to_module import EnvToModulePipeline
    >>> pipeline = EnvToModulePipeline(connectors=[])
    >>> untime_pipeline(pipeline) is pipeline, type(pipeline).__name__
    (True, 'PieceUntimedEnvToModulePipeline')
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.wrappers.vector import DictInfoToList
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.env_to_module import EnvToModulePipeline
from ray.rllib.connectors.module_to_env import ModuleToEnvPipeline
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.metrics import CONNECTOR_PIPELINE_TIMER

from pulsebms.agents.rllib_connectors import batch_env_to_module, batch_module_to_env

__all__ = [
    "PieceUntimedEnvToModulePipeline",
    "PieceUntimedModuleToEnvPipeline",
    "PulseEnvRunner",
    "ScalarDictInfoToList",
    "untime_pipeline",
]


def _call_timed_once(call: Any, metrics: Any, kwargs: dict[str, Any]) -> Any:
    """``call(**kwargs)`` without ``metrics``, inside one timer of the whole pipeline."""
    if not metrics:
        return call(metrics=None, **kwargs)
    key = (*tuple(kwargs.get("metrics_prefix_key", ())), CONNECTOR_PIPELINE_TIMER)
    with metrics.log_time(key):
        return call(metrics=None, **kwargs)


class PieceUntimedEnvToModulePipeline(EnvToModulePipeline):
    """RLlib's env → module pipeline, timed as a whole only (see the module docstring)."""

    def __call__(self, *, metrics: Any = None, **kwargs: Any) -> Any:
        """Run the pieces in order, with one timer around them all."""
        return _call_timed_once(super().__call__, metrics, kwargs)


class PieceUntimedModuleToEnvPipeline(ModuleToEnvPipeline):
    """RLlib's module → env pipeline, timed as a whole only (see the module docstring)."""

    def __call__(self, *, metrics: Any = None, **kwargs: Any) -> Any:
        """Run the pieces in order, with one timer around them all."""
        return _call_timed_once(super().__call__, metrics, kwargs)


_UNTIMED: dict[type, type] = {
    EnvToModulePipeline: PieceUntimedEnvToModulePipeline,
    ModuleToEnvPipeline: PieceUntimedModuleToEnvPipeline,
}


def untime_pipeline(pipeline: ConnectorV2 | None) -> ConnectorV2 | None:
    """Make one of RLlib's two EnvRunner pipelines time only its whole call (in place).

    Pipelines of another class (a subclass of a user's own) are returned unchanged.
    """
    untimed = _UNTIMED.get(type(pipeline))
    if untimed is not None:
        pipeline.__class__ = untimed  # same attributes and state, only __call__ differs
    return pipeline


_SCALAR_KINDS = frozenset("biuf")  # bool, signed, unsigned, float: tolist() gives Python scalars


class ScalarDictInfoToList(DictInfoToList):
    """gymnasium's ``DictInfoToList`` whose 1-D numeric/boolean entries become Python scalars.

    The same per-env dicts (the same keys, the same entries left out where an env's mask is
    off, nested dicts split the same way) with the values of 1-D arrays of kind bool, int,
    uint or float taken with one ``tolist()`` per entry instead of one numpy scalar per env:
    equal values, cheap to pickle (see the module docstring). Entries of other arrays
    (stacked per-env arrays, object arrays) are split as gymnasium splits them.

    Example:
        >>> import gymnasium as gym
        >>> envs = ScalarDictInfoToList(gym.make_vec("CartPole-v1", num_envs=2))
        >>> mask = np.array([True, False])
        >>> envs.vector_infos_to_list({"cost": np.array([0.5, 0.0]), "_cost": mask})
        [{'cost': 0.5}, {}]
        >>> envs.close()
    """

    def vector_infos_to_list(self, vector_infos: dict[str, Any]) -> list[dict[str, Any]]:
        """The per-env info dicts of a vector env's ``infos`` (see the class docstring)."""
        return self._convert_info_to_list(vector_infos)

    def _convert_info_to_list(self, vector_infos: dict[str, Any]) -> list[dict[str, Any]]:
        n = self.num_envs
        list_info: list[dict[str, Any]] = [{} for _ in range(n)]
        for key, value in vector_infos.items():
            if key.startswith("_"):
                continue
            values: Any
            if isinstance(value, dict):
                values = self._convert_info_to_list(value)
            elif isinstance(value, np.ndarray):
                scalar = value.ndim == 1 and value.dtype.kind in _SCALAR_KINDS
                values = value.tolist() if scalar else value
            else:
                raise TypeError(f"info entry {key!r} of the vector env is not an array or dict")
            mask = vector_infos.get(f"_{key}")
            if len(values) != n or (mask is not None and len(mask) != n):
                raise ValueError(f"info entry {key!r} of the vector env does not have {n} envs")
            if mask is None:
                for env_info, item in zip(list_info, values, strict=True):
                    env_info[key] = item
            else:
                flags = np.asarray(mask, dtype=bool).tolist()
                for env_info, item, has in zip(list_info, values, flags, strict=True):
                    if has:
                        env_info[key] = item
        return list_info


class PulseEnvRunner(SingleAgentEnvRunner):
    """RLlib's single-agent EnvRunner with batched, whole-pipeline-timed connectors.

    Its pipelines' default pieces, for a stateless module, run batched over the env vector
    (:func:`~pulsebms.agents.rllib_connectors.batch_env_to_module`,
    :func:`~pulsebms.agents.rllib_connectors.batch_module_to_env`).
    """

    def __init__(self, *, config: Any, **kwargs: Any) -> None:
        super().__init__(config=config, **kwargs)
        untime_pipeline(self._env_to_module)
        untime_pipeline(self._module_to_env)
        module = self.module
        stateful = module is None or bool(module.is_stateful())
        batch_env_to_module(self._env_to_module, stateful=stateful, multi_agent=False)
        batch_module_to_env(self._module_to_env, stateful=stateful, multi_agent=False)
        seed_exploration = getattr(module, "seed_exploration", None)
        if callable(seed_exploration):  # a numpy exploration pass draws from its own Generator
            seed_exploration(self._seed)
        self._step_callbacks_are_noops = not self.config.callbacks_on_episode_step and all(
            type(callback).on_episode_step is RLlibCallback.on_episode_step
            for callback in self._callbacks
        )

    def _make_on_episode_callback(self, which: str, idx: int, episodes: list[Any]) -> None:
        """RLlib's episode callbacks, skipping ``on_episode_step`` when nothing handles it.

        RLlib builds the callbacks' keyword arguments and calls every callback object for
        every env on every step; when no callback class overrides ``on_episode_step`` and
        no ``callbacks_on_episode_step`` function is configured, those calls do nothing.
        """
        if which == "on_episode_step" and self._step_callbacks_are_noops:
            return
        super()._make_on_episode_callback(which, idx, episodes)

    def make_env(self) -> None:
        """RLlib's env vector, its infos split into Python scalars (``ScalarDictInfoToList``)."""
        super().make_env()
        if type(self.env) is DictInfoToList:
            self.env.__class__ = ScalarDictInfoToList  # same wrapper state; only the split differs
