"""The env an RLlib EnvRunner steps: the shielded FleetEnv with a compact ``info``.

RLlib keeps every step's ``info`` in its episodes: gymnasium's vector env merges the infos
of its envs into arrays key by key (and RLlib splits them again), the EnvRunner stores them,
and remote runners pickle them to the driver with the rest of the episode. The FleetEnv's
``info`` has ~45 entries (per-pack arrays, the shield's report, prices, ...); on the
equivalent-circuit twin, handling them costs about as much as the policy's forward pass.
:class:`CompactInfo` keeps only the entries training reads and adds the episode's totals at
its last step, so no per-step callback is needed either:

* per step: :data:`DEFAULT_INFO_KEYS` (``cost``, ``cost_pre_shield``,
  ``shield_interventions``, ``episode_cost``) where present;
* at the last step (terminated or truncated): ``info["episode_totals"]``, the episode's sums of
  ``cost``, ``cost_pre_shield`` and ``shield_interventions`` computed from the *full* infos
  (what :class:`pulsebms.agents.rllib.EpisodeCostCallback` reports).

:func:`make_rllib_env` is the env creator registered with Ray as :data:`RLLIB_ENV_NAME`;
``env_config["info_keys"]`` chooses the entries (``None``: keep every entry, e.g. for a
callback of your own that reads them). Evaluation, SB3 and the edge never see this wrapper.

Example:
    >>> config = {"env_id": "PulseBMS/FleetSmall-v0", "env_kwargs": {"horizon_steps": 2}}
    >>> env = make_rllib_env(config)
    >>> _, info = env.reset(seed=0)
    >>> _, _, _, _, info = env.step(env.action_space.sample())
    >>> sorted(info)
    ['cost', 'cost_pre_shield', 'shield_interventions']
    >>> _, _, _, truncated, info = env.step(env.action_space.sample())
    >>> truncated, sorted(info["episode_totals"])
    (True, ['cost', 'cost_pre_shield', 'shield_interventions'])
    >>> env.close()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, SupportsFloat

import gymnasium as gym

__all__ = [
    "DEFAULT_INFO_KEYS",
    "EPISODE_TOTALS",
    "RLLIB_ENV_NAME",
    "CompactInfo",
    "compact_info",
    "make_fleet_env",
    "make_rllib_env",
]

RLLIB_ENV_NAME = "pulsebms-fleet"
"""Name under which :func:`make_rllib_env` is registered with ``ray.tune.registry``."""

DEFAULT_INFO_KEYS: tuple[str, ...] = (
    "cost",
    "cost_pre_shield",
    "shield_interventions",
    "episode_cost",
)
"""``info`` entries an EnvRunner keeps per step: the measured and the pre-shield cost
(PPO-Lagrangian's cost critic reads them), the shield's interventions, and
:class:`~pulsebms.agents.lagrangian.LagrangianPenalty`'s episode cost."""

EPISODE_TOTALS = "episode_totals"
"""``info`` key of the episode's sums, at its last step."""

_SUMMED = ("cost", "cost_pre_shield", "shield_interventions")
_ENV_PACKAGE_PREFIX = "pulsebms.envs:"


class CompactInfo(gym.Wrapper[Any, Any, Any, Any]):
    """Keep only some ``info`` entries, and add the episode's sums at its last step.

    Args:
        env: The (shielded) environment.
        keys: Entries kept per step (absent ones are skipped); ``None`` keeps them all.

    Example:
        >>> import pulsebms.envs  # registers the ids
        >>> env = CompactInfo(gym.make("PulseBMS/FleetSmall-v0", horizon_steps=1), keys=("cost",))
        >>> _ = env.reset(seed=0)
        >>> _, _, _, _, info = env.step(env.action_space.sample() * 0.0)
        >>> info["cost"], info["episode_totals"]["cost"], sorted(info)
        (0.0, 0.0, ['cost', 'episode_totals'])
    """

    def __init__(self, env: gym.Env[Any, Any], keys: Sequence[str] | None = DEFAULT_INFO_KEYS):
        super().__init__(env)
        self.keys = None if keys is None else tuple(keys)
        self._totals = dict.fromkeys(_SUMMED, 0.0)

    def _keep(self, info: Mapping[str, Any]) -> dict[str, Any]:
        if self.keys is None:
            return dict(info)
        return {k: info[k] for k in self.keys if k in info}

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Reset the env and the episode's sums."""
        obs, info = self.env.reset(**kwargs)
        self._totals = dict.fromkeys(_SUMMED, 0.0)
        return obs, self._keep(info)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step, add to the episode's sums, keep the chosen entries of ``info``."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        totals = self._totals
        for key in _SUMMED:
            value = info.get(key)
            if value is not None:
                totals[key] += float(value)
        out = self._keep(info)
        if terminated or truncated:
            out[EPISODE_TOTALS] = dict(totals)
        return obs, reward, terminated, truncated, out


def make_fleet_env(config: Mapping[str, Any]) -> gym.Env[Any, Any]:
    """The (shielded) PulseBMS env an ``env_config`` names, without :class:`CompactInfo`.

    Builds the env with :func:`pulsebms.agents.env_factory.make_env`, which imports
    :mod:`pulsebms.envs` (so the ids are registered in any worker process) and wraps it in
    :class:`pulsebms.safety.ShieldWrapper` when asked. For env creators that add wrappers
    of their own before :func:`compact_info` (PPO-Lagrangian's episode cost).

    Args:
        config: RLlib's ``env_config`` (see :func:`make_rllib_env`).

    Returns:
        The (shielded) environment.

    Raises:
        KeyError: If ``config`` has no ``env_id``.
    """
    from pulsebms.agents.env_factory import make_env

    env_id = str(config["env_id"]).removeprefix(_ENV_PACKAGE_PREFIX)
    return make_env(
        env_id,
        shield=bool(config.get("shield", True)),
        shield_kwargs=dict(config.get("shield_kwargs") or {}),
        **dict(config.get("env_kwargs") or {}),
    )


def compact_info(env: gym.Env[Any, Any], config: Mapping[str, Any]) -> CompactInfo:
    """``env`` in :class:`CompactInfo` with the ``info_keys`` of ``config`` (see there)."""
    keys = config.get("info_keys", DEFAULT_INFO_KEYS)
    return CompactInfo(env, keys=None if keys is None else tuple(keys))


def make_rllib_env(config: Mapping[str, Any]) -> gym.Env[Any, Any]:
    """Env creator registered as :data:`RLLIB_ENV_NAME` (runs inside every EnvRunner).

    :func:`make_fleet_env` (the shielded env), then :func:`compact_info`.

    Args:
        config: RLlib's ``env_config`` (an ``EnvContext`` in EnvRunners): ``env_id`` (a
            registered id, optionally as ``"pulsebms.envs:<id>"``), ``shield`` (bool),
            ``shield_kwargs`` and ``env_kwargs`` (mappings of plain data), ``info_keys``
            (a list of ``info`` entries to keep; absent: :data:`DEFAULT_INFO_KEYS`; ``None``:
            all).

    Returns:
        The environment.

    Raises:
        KeyError: If ``config`` has no ``env_id``.
    """
    return compact_info(make_fleet_env(config), config)
