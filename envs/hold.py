"""What a held decision does between decisions: the fast plant loop a slow decision sets.

An agent deciding every ``decision_s`` (e.g. 15 min) over a plant stepped every ``dt_s``
(e.g. 5 min) hands its decision to a fast local loop for the plant steps in between
(:class:`pulsebms.envs.decision.DecisionIntervalWrapper` in training,
:class:`pulsebms.envs.decision.DecisionIntervalPolicy` in evaluation). The **hold mode**
says what that loop keeps:

* ``action`` (the default; every earlier run): the per-pack power set-points, unchanged.
* ``grid``: the site's **grid exchange** the decision asked for at its first plant step,
  ``g = L₀ − Σᵢ aᵢ·Rᵢ`` (``L``: net load, load − PV; ``aᵢ``: the decided action;
  ``Rᵢ``: rated pack power). At each later plant step the fleet power moves by the change
  of net load since the decision, ``ΔL = L − L₀``, shared over the packs in proportion to
  the decided per-pack powers ``aᵢ·Rᵢ`` when they all have one sign and their sum is at
  least :data:`PROPORTIONAL_MIN` of the fleet's rated power; otherwise (an idle or mixed-sign
  decision, where proportions mean nothing) in proportion to rated power. Each set-point is
  then clipped to [−1, 1]: a pack that saturates does not hand its share to the others, so
  the grid exchange stays at ``g`` unless packs saturate. The decision step itself is the
  decided action, unchanged.
* ``import_cap``: the per-pack set-points held as in ``action``, but at every plant step
  (the decision step included) where the held request would import above the site's import
  limit ``G`` (``L − Σᵢ aᵢ·Rᵢ > G``), discharge is raised to cover the excess as far as the
  packs allow: every pack moves the same fraction ``f`` of its way to full discharge
  (``aᵢ += f·(1 − aᵢ)``, charging packs first stop charging), ``f = min(1, excess /
  Σᵢ (1 − aᵢ)·Rᵢ)`` — the classic peak-shaving inner loop. It never lowers discharge.

What the loop reads (a site meter's view, never a future value): the observation the env
returned at the plant step about to be taken — its ``demand_w`` field (the site's net load
*now*, the value the env settles that step with, stored / Σ rated power), and for
``import_cap`` its ``grid_import_limit_w`` field (the ``FleetSite`` layout); for ``grid``
also the ``demand_w`` of the decision step's observation. Nothing else: not the forecast
fields, not the shield's state, not what the packs delivered. The shield (inside the
decision wrapper) still projects every plant step's set-points on that step's state, so
the loop's requests are admissible or cut like any other. Non-finite decided set-points
read as the env reads them (NaN → 0, clipped to [−1, 1]) at the steps the loop changes.

Example:
    >>> import numpy as np
    >>> loop = PlantLoop("grid", rated_w=np.array([1000.0, 1000.0]), demand_index=0,
    ...                  demand_scale_w=2000.0)
    >>> decided = np.array([0.2, 0.2], dtype=np.float32)  # 400 W out, net load 1000 W
    >>> at_decision = np.array([0.5], dtype=np.float32)   # demand_w stored: 1000 / 2000
    >>> later = np.array([0.6], dtype=np.float32)         # net load now 1200 W
    >>> loop.action(decided, at_decision, later, first=False).tolist()
    [0.30000001192092896, 0.30000001192092896]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pulsebms.core.types import FloatArray

__all__ = ["HOLD_MODES", "PROPORTIONAL_MIN", "PlantLoop", "check_hold_mode", "plant_loop"]

HOLD_MODES = ("action", "grid", "import_cap")
"""The hold modes: ``action`` (default), ``grid``, ``import_cap`` (see the module)."""

PROPORTIONAL_MIN = 1e-3
"""``grid``: below this fraction of the fleet's rated power the decided fleet power counts
as idle, and a change of net load is shared in proportion to rated power."""


def check_hold_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`HOLD_MODES`.

    Raises:
        ValueError: Otherwise.

    Example:
        >>> check_hold_mode("grid")
        'grid'
    """
    if mode not in HOLD_MODES:
        raise ValueError(f"hold_mode must be one of {HOLD_MODES}, got {mode!r}")
    return mode


class PlantLoop:
    """The fast loop of a hold mode other than ``action`` (see the module).

    Args:
        mode: ``grid`` or ``import_cap``.
        rated_w: Rated power per pack [W] (the action's scale), shape ``(n_packs,)``.
        demand_index: Index of the observation's ``demand_w`` (net load now).
        demand_scale_w: Its scale (stored value × scale = W).
        import_limit_index: Index of the observation's ``grid_import_limit_w`` (required
            for ``import_cap``).
        import_limit_scale_w: Its scale.

    Raises:
        ValueError: On an unknown mode, ``action`` (no loop), non-positive rated powers or
            scales, or ``import_cap`` without the import limit's index.
    """

    def __init__(
        self,
        mode: str,
        *,
        rated_w: Any,
        demand_index: int,
        demand_scale_w: float,
        import_limit_index: int | None = None,
        import_limit_scale_w: float = 1.0,
    ) -> None:
        self.mode = check_hold_mode(mode)
        if mode == "action":
            raise ValueError("hold_mode 'action' holds the set-points: it needs no plant loop")
        rated = np.asarray(rated_w, dtype=np.float64).reshape(-1)
        if rated.size == 0 or not np.all(np.isfinite(rated)) or np.any(rated <= 0):
            raise ValueError(f"rated_w must be finite and > 0 per pack, got {rated_w!r}")
        if not (np.isfinite(demand_scale_w) and demand_scale_w > 0):
            raise ValueError(f"demand_scale_w must be finite and > 0, got {demand_scale_w!r}")
        if mode == "import_cap" and import_limit_index is None:
            raise ValueError(
                "hold_mode 'import_cap' reads the grid import limit: the observation needs "
                "its grid_import_limit_w field (site_observation / FleetSite)"
            )
        if not (np.isfinite(import_limit_scale_w) and import_limit_scale_w > 0):
            raise ValueError(f"import_limit_scale_w must be > 0, got {import_limit_scale_w!r}")
        self.rated_w: FloatArray = rated
        self.demand_index = int(demand_index)
        self.demand_scale_w = float(demand_scale_w)
        self.import_limit_index = None if import_limit_index is None else int(import_limit_index)
        self.import_limit_scale_w = float(import_limit_scale_w)

    def net_load_w(self, observation: Any) -> float:
        """The site's net load now [W], as the observation's ``demand_w`` holds it."""
        value = float(np.asarray(observation, dtype=np.float64).reshape(-1)[self.demand_index])
        return value * self.demand_scale_w if np.isfinite(value) else 0.0

    def action(self, decided: Any, decided_obs: Any, obs: Any, *, first: bool) -> Any:
        """The set-points of this plant step.

        Args:
            decided: The decision's action (per pack, / rated power, + = discharge).
            decided_obs: The observation the decision was taken on.
            obs: The observation of the plant step about to be taken (``decided_obs`` at
                the decision step).
            first: Whether this is the decision step itself.

        Returns:
            ``decided`` itself where the loop leaves it (``grid`` at the decision step),
            else a new float32 array in [−1, 1].
        """
        if self.mode == "grid":
            if first:
                return decided
            return self._grid(decided, self.net_load_w(obs) - self.net_load_w(decided_obs))
        return self._import_cap(decided, obs)

    def _sanitized(self, decided: Any) -> FloatArray:
        a = np.asarray(decided, dtype=np.float64).reshape(-1)
        if a.shape != self.rated_w.shape:
            raise ValueError(f"action must have {self.rated_w.size} elements, got {a.size}")
        return np.clip(np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)

    def _grid(self, decided: Any, change_w: float) -> Any:
        a = self._sanitized(decided)
        power_w = a * self.rated_w
        total_w = float(power_w.sum())
        one_sign = bool(np.all(power_w >= 0.0) or np.all(power_w <= 0.0))
        if one_sign and abs(total_w) >= PROPORTIONAL_MIN * float(self.rated_w.sum()):
            share = power_w / total_w
        else:
            share = self.rated_w / float(self.rated_w.sum())
        out = a + change_w * share / self.rated_w
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def _import_cap(self, decided: Any, obs: Any) -> Any:
        a = self._sanitized(decided)
        index = self.import_limit_index
        if index is None:  # checked in __init__
            return decided
        flat = np.asarray(obs, dtype=np.float64).reshape(-1)
        limit_w = float(flat[index]) * self.import_limit_scale_w
        excess_w = self.net_load_w(obs) - float((a * self.rated_w).sum()) - limit_w
        if not (np.isfinite(excess_w) and excess_w > 0.0):
            return decided
        headroom_w = float(((1.0 - a) * self.rated_w).sum())
        if headroom_w <= 0.0:
            return decided
        f = min(1.0, excess_w / headroom_w)
        return np.clip(a + f * (1.0 - a), -1.0, 1.0).astype(np.float32)


def plant_loop(env: Any, mode: str) -> PlantLoop | None:
    """The plant loop of ``mode`` for a (wrapped) fleet env; ``None`` for ``action``.

    Reads the fleet env's rated pack powers and observation layout (``demand_w``, and
    ``grid_import_limit_w`` when the layout has it).

    Raises:
        ValueError: On an unknown mode, or ``import_cap`` on an observation without the
            grid import limit.

    Example:
        >>> from pulsebms.agents.env_factory import make_env
        >>> env = make_env("PulseBMS/FleetSmall-v0", horizon_steps=4)
        >>> plant_loop(env, "grid").mode, plant_loop(env, "action")
        ('grid', None)
        >>> env.close()
    """
    if check_hold_mode(mode) == "action":
        return None
    fleet = env.unwrapped
    layout = fleet.observation_layout
    demand = layout.field("demand_w")
    limit = layout.field("grid_import_limit_w") if "grid_import_limit_w" in layout.slices else None
    return PlantLoop(
        mode,
        rated_w=np.asarray(fleet.ratings.rated_power_w, dtype=np.float64),
        demand_index=demand.start,
        demand_scale_w=float(demand.scale),
        import_limit_index=None if limit is None else limit.start,
        import_limit_scale_w=1.0 if limit is None else float(limit.scale),
    )
