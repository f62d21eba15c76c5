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

Example:
    >>> from ray.rllib.connectors.env_to_module import EnvToModulePipeline
    >>> pipeline = EnvToModulePipeline(connectors=[])
    >>> untime_pipeline(pipeline) is pipeline, type(pipeline).__name__
    (True, 'PieceUntimedEnvToModulePipeline')
"""

from __future__ import annotations

from typing import Any

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
