"""``DecisionIntervalWrapper``: the agent decides every ``decision_s``, the plant steps at ``dt_s``.

The agent acts on a slow decision interval (e.g. 15 min) over the fast plant and shield
loop (the env's ``dt_s``, e.g. 60 s): one agent step holds the action for
``substeps = decision_s / dt_s`` env steps. Wrap it **outside** the
:class:`pulsebms.safety.ShieldWrapper`, so the shield projects the held action at every
plant step on the state of that step::

    agent → DecisionIntervalWrapper → ShieldWrapper → FleetEnv (dt_s)

Per agent step:

* reward: the sum of the sub-steps' rewards (EUR, so episode returns are unchanged);
* ``terminated`` / ``truncated``: as soon as a sub-step ends the episode, the remaining
  sub-steps are skipped and its flags returned (the last decision of an episode whose
  length is not a multiple of ``substeps`` is shorter);
* observation: the last sub-step's;
* ``info``: the last sub-step's, with flows summed over the sub-steps (every number
  whose key ends in ``_eur``, and ``cost``, ``cost_pre_shield``, ``n_violations``,
  ``soh_loss``, ``action_nan_count``, ``action_clipped_count``), ``violations``
  concatenated, ``fault`` any, ``info["shield"]["intervened"]`` / ``["magnitude"]``
  summed, and ``info["decision"]``: ``substeps`` (taken), ``dt_s``, ``decision_s``.
  Instantaneous quantities (powers, prices, times) are the last sub-step's.

The wrapper holds no randomness: a seeded reset gives the same episode as the inner env.

``hold_mode`` says what is held between decisions (:mod:`pulsebms.envs.hold`): ``action``
(the default) the per-pack set-points; ``grid`` the decision's grid exchange (a fast loop
moves the fleet power with the net load); ``import_cap`` the set-points, raised to cover
any import above the site's limit. The loop reads only the observation of the plant step
about to be taken (the net load now, the import limit), like a site meter.

For evaluation at the plant step (KPIs counted per plant step, every policy in the same
env), :class:`DecisionIntervalPolicy` does the same from the policy's side: it asks the
policy every ``substeps`` calls and holds the action in between, so a policy trained behind
the wrapper acts exactly as it did in training (same observations, same held actions).

Example:
    >>> from pulsebms.agents.env_factory import make_env  # doctest: +SKIP
    >>> env = DecisionIntervalWrapper(make_env(dt_s=60.0), decision_s=900.0)  # doctest: +SKIP
    >>> env.substeps  # doctest: +SKIP
    15
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, SupportsFloat

import gymnasium as gym
import numpy as np

from pulsebms.envs.hold import HOLD_MODES, PlantLoop, check_hold_mode, plant_loop

__all__ = [
    "HOLD_MODES",
    "SUMMED_INFO_KEYS",
    "DecisionIntervalPolicy",
    "DecisionIntervalWrapper",
    "agent_step_s",
    "decision_env_factory",
    "substeps_of",
    "with_decision_interval",
]

SUMMED_INFO_KEYS = frozenset(
    {
        "cost",
        "cost_pre_shield",
        "n_violations",
        "soh_loss",
        "action_nan_count",
        "action_clipped_count",
    }
)
"""Info keys summed over the sub-steps (besides every numeric key ending in ``_eur``)."""

_SHIELD_SUMMED = ("intervened", "magnitude")


def _summed(key: str, value: Any) -> bool:
    numeric = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool
    )
    return numeric and (key in SUMMED_INFO_KEYS or key.endswith("_eur"))


def _aggregate(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """One info for a decision: the last sub-step's with flows summed (see the module)."""
    out = dict(infos[-1])
    for key, value in infos[-1].items():
        if _summed(key, value):
            out[key] = sum(i.get(key, 0) for i in infos)
    if "violations" in out:
        out["violations"] = tuple(v for i in infos for v in i.get("violations", ()))
    if "fault" in out:
        out["fault"] = any(bool(i.get("fault", False)) for i in infos)
    shield = out.get("shield")
    if isinstance(shield, dict):
        shield = dict(shield)
        for key in _SHIELD_SUMMED:
            if key in shield:
                shield[key] = sum(i["shield"].get(key, 0) for i in infos if "shield" in i)
        out["shield"] = shield
    return out


class DecisionIntervalWrapper(gym.Wrapper[Any, Any, Any, Any]):
    """Hold each action for ``decision_s`` seconds of ``dt_s`` plant steps (see the module).

    Args:
        env: The (shielded) fleet env; ``env.unwrapped.dt_s`` is its plant step.
        decision_s: The agent's decision interval [s]: a whole multiple of ``dt_s``
            (within 1e-6 relative).
        hold_mode: What is held between decisions (:data:`HOLD_MODES`; see
            :mod:`pulsebms.envs.hold`). ``action`` (default): the set-points.

    Raises:
        ValueError: If ``decision_s`` is not a finite positive whole multiple of ``dt_s``,
            or on an unknown ``hold_mode`` (or ``import_cap`` on an observation without
            the grid import limit).
    """

    def __init__(
        self, env: gym.Env[Any, Any], decision_s: float, hold_mode: str = "action"
    ) -> None:
        super().__init__(env)
        dt_s = float(env.unwrapped.dt_s)  # type: ignore[attr-defined]
        self.substeps: int = substeps_of(decision_s, dt_s)
        self.dt_s: float = dt_s
        self.decision_s: float = float(decision_s)
        self.hold_mode: str = check_hold_mode(hold_mode)
        self._loop: PlantLoop | None = plant_loop(env, hold_mode)
        self._obs: Any = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the inner env (the plant loop keeps its observation)."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the inner env up to :attr:`substeps` times, holding ``action`` (its mode)."""
        loop = self._loop
        if loop is not None and self._obs is None:
            raise RuntimeError("call reset() before step()")
        decided_obs = self._obs
        reward = 0.0
        infos: list[dict[str, Any]] = []
        terminated = truncated = False
        obs: Any = decided_obs
        for j in range(self.substeps):
            held = action if loop is None else loop.action(action, decided_obs, obs, first=j == 0)
            obs, r, terminated, truncated, info = self.env.step(held)
            reward += float(r)
            infos.append(info)
            if terminated or truncated:
                break
        self._obs = obs
        out = _aggregate(infos)
        out["decision"] = {
            "substeps": len(infos),
            "dt_s": self.dt_s,
            "decision_s": self.decision_s,
        }
        if loop is not None:  # absent in the default mode: info as before the field
            out["decision"]["hold_mode"] = self.hold_mode
        return obs, reward, terminated, truncated, out


def with_decision_interval(
    env: gym.Env[Any, Any], decision_s: float | None, hold_mode: str = "action"
) -> gym.Env[Any, Any]:
    """``env`` wrapped in :class:`DecisionIntervalWrapper` (unchanged for ``None``).

    A ``decision_s`` equal to the env's ``dt_s`` still wraps (one sub-step: same episode,
    with ``info["decision"]`` added). With ``decision_s=None`` and a ``hold_mode`` other
    than ``action`` it wraps at ``dt_s`` (``import_cap`` acts at every step; ``grid`` then
    changes nothing).
    """
    if decision_s is None and check_hold_mode(hold_mode) == "action":
        return env
    every_s = float(env.unwrapped.dt_s) if decision_s is None else decision_s  # type: ignore[attr-defined]
    return DecisionIntervalWrapper(env, every_s, hold_mode)


def decision_env_factory(
    factory: Callable[[], gym.Env[Any, Any]],
    decision_s: float | None,
    hold_mode: str = "action",
) -> Callable[[], gym.Env[Any, Any]]:
    """A zero-argument env factory whose envs act every ``decision_s`` (``None``: ``factory``).

    ``hold_mode``: see :class:`DecisionIntervalWrapper` (and :func:`with_decision_interval`).
    """
    if decision_s is None and check_hold_mode(hold_mode) == "action":
        return factory

    def make() -> gym.Env[Any, Any]:
        return with_decision_interval(factory(), decision_s, hold_mode)

    return make


def agent_step_s(env: gym.Env[Any, Any]) -> float:
    """The agent's step [s]: the outermost decision interval, else the env's ``dt_s``.

    Use it to turn horizons in hours into steps of what the agent sees (γ, forecasts).
    """
    inner: Any = env
    while isinstance(inner, gym.Wrapper):
        if isinstance(inner, DecisionIntervalWrapper):
            return inner.decision_s
        inner = inner.env
    return float(env.unwrapped.dt_s)  # type: ignore[attr-defined]


class _Acting(Protocol):
    """What :class:`DecisionIntervalPolicy` wraps: ``act(observation) -> action``."""

    def act(self, observation: Any) -> Any:
        """The action for ``observation``."""
        ...


def substeps_of(decision_s: float, dt_s: float) -> int:
    """Plant steps per decision: ``decision_s / dt_s``, a whole number ≥ 1.

    Raises:
        ValueError: If ``decision_s`` is not a finite positive whole multiple of ``dt_s``.

    Example:
        >>> substeps_of(900.0, 300.0)
        3
    """
    if not (isinstance(decision_s, int | float) and np.isfinite(decision_s)) or decision_s <= 0:
        raise ValueError(f"decision_s must be a finite number > 0, got {decision_s!r}")
    ratio = float(decision_s) / float(dt_s)
    substeps = round(ratio)
    if substeps < 1 or abs(ratio - substeps) > 1e-6 * max(ratio, 1.0):
        raise ValueError(
            f"decision_s ({decision_s} s) must be a whole multiple of the env's dt_s ({dt_s} s)"
        )
    return int(substeps)


class DecisionIntervalPolicy:
    """A policy asked every ``substeps`` plant steps, its action held in between.

    The policy-side twin of :class:`DecisionIntervalWrapper`: rolled out at the plant step
    (``dt_s``), it sees the observations and holds the actions it would behind the wrapper
    (the first call of an episode decides; so does every ``substeps``-th after it).

    Args:
        policy: Any object with ``act(observation)`` (and optionally ``reset()``).
        substeps: Plant steps per decision (:func:`substeps_of`).
        name: Label in KPI tables (the policy's own ``name`` when ``None``).
        loop: The plant loop of a hold mode other than ``action``
            (:func:`pulsebms.envs.hold.plant_loop` of the env it acts in): what the wrapper
            with that ``hold_mode`` would send at each plant step. ``None``: the action held.

    Raises:
        ValueError: If ``substeps`` < 1.

    Example:
        >>> class Count:
        ...     calls = 0
        ...     def act(self, observation):
        ...         self.calls += 1
        ...         return np.full(1, float(self.calls))
        >>> held = DecisionIntervalPolicy(Count(), substeps=3)
        >>> [float(held.act(None)[0]) for _ in range(7)]
        [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0]
    """

    def __init__(
        self,
        policy: _Acting,
        substeps: int,
        *,
        name: str | None = None,
        loop: PlantLoop | None = None,
    ) -> None:
        if int(substeps) != substeps or substeps < 1:
            raise ValueError(f"substeps must be an integer >= 1, got {substeps!r}")
        self.policy = policy
        self.substeps = int(substeps)
        self.name = name or str(getattr(policy, "name", type(policy).__name__))
        self.loop = loop
        self._held: Any = None
        self._decided_obs: Any = None
        self._age = 0

    @property
    def hold_mode(self) -> str:
        """The hold mode (``action`` without a plant loop)."""
        return "action" if self.loop is None else self.loop.mode

    def reset(self) -> None:
        """Forget the held action (a new episode decides at its first step)."""
        self._held = None
        self._decided_obs = None
        self._age = 0
        reset = getattr(self.policy, "reset", None)
        if callable(reset):
            reset()

    def act(self, observation: Any) -> Any:
        """The policy's action at a decision step, else the held one (its plant loop's)."""
        if self._held is None or self._age >= self.substeps:
            self._held = self.policy.act(observation)
            self._decided_obs = observation
            self._age = 0
        first = self._age == 0
        self._age += 1
        if self.loop is None:
            return self._held
        return self.loop.action(self._held, self._decided_obs, observation, first=first)
