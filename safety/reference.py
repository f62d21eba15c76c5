"""The shield's projection as a cvxpy problem: the reference the fast path is tested against.

The problem is built **once** per fleet size with Parameters (it is DPP, so cvxpy
compiles it once and later solves only substitute values)::

    minimise    ‖a − r‖²
    subject to  lower ≤ a ≤ upper,   w·a = t

with ``r`` the (sanitised) request, ``lower``/``upper`` the admissible box of
:meth:`pulsebms.safety.Shield.admissible`, ``w`` the rated powers (normalised by their
mean) and ``t`` the target clamped to ``[w·lower, w·upper]`` (the nearest reachable
total, as the fast shield does). It is solved by Clarabel (interior point) at tight
tolerances, which reaches the 1e-6 agreement the tests ask for.

This module imports cvxpy; it is not on the edge runtime's path.

Example:
    >>> import numpy as np
    >>> ref = ReferenceProjection(2)
    >>> ref.solve(np.array([1.0, 0.0]), np.zeros(2), np.full(2, 0.6), np.ones(2), 1.0).round(6)
    array([0.6, 0.4])
"""

from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
from cvxpy.atoms.sum_squares import sum_squares
from numpy.typing import ArrayLike

from pulsebms.core.types import FloatArray
from pulsebms.safety.shield import Shield
from pulsebms.safety.state import FleetState

__all__ = ["ReferenceProjection", "ReferenceShield"]


_SOLVER_OPTIONS: dict[str, float | int] = {
    "tol_gap_abs": 1e-12,
    "tol_gap_rel": 1e-12,
    "tol_feas": 1e-12,
    "tol_ktratio": 1e-10,
    "max_iter": 200,
}


class ReferenceProjection:
    """Projection onto box ∩ hyperplane with cvxpy, built once for ``n`` variables.

    Args:
        n: Number of packs.
        solver: cvxpy solver name (default Clarabel).
    """

    def __init__(self, n: int, solver: str = "CLARABEL") -> None:
        self.n = int(n)
        self.solver = solver
        self.request = cp.Parameter(n, name="request")
        self.lower = cp.Parameter(n, name="lower")
        self.upper = cp.Parameter(n, name="upper")
        self.weight = cp.Parameter(n, nonneg=True, name="weight")
        self.target = cp.Parameter(name="target")
        self.action = cp.Variable(n, name="action")
        self.problem = cp.Problem(
            cp.Minimize(sum_squares(self.action - self.request)),
            [
                self.action >= self.lower,
                self.action <= self.upper,
                self.weight @ self.action == self.target,
            ],
        )
        if not self.problem.is_dpp():  # pragma: no cover - guarded by construction
            raise RuntimeError("the reference projection must be DPP")

    def solve(
        self,
        request: FloatArray,
        lower: FloatArray,
        upper: FloatArray,
        weight: FloatArray,
        target: float,
    ) -> FloatArray:
        """Solve for one case (the target is clamped to the reachable totals first).

        Args:
            request: Point to project (finite).
            lower: Lower bounds.
            upper: Upper bounds.
            weight: Positive weights of the total.
            target: Desired total.

        Returns:
            The projection.

        Raises:
            RuntimeError: If the solver does not report an optimal solution.
        """
        t_min = float(weight @ lower)
        t_max = float(weight @ upper)
        self.request.value = request
        self.lower.value = lower
        self.upper.value = upper
        self.weight.value = weight
        self.target.value = min(max(target, t_min), t_max)
        options = _SOLVER_OPTIONS if self.solver == "CLARABEL" else {}
        self.problem.solve(solver=self.solver, **options)  # type: ignore[no-untyped-call]  # cvxpy's solve is untyped
        if self.problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            raise RuntimeError(f"reference projection: solver status {self.problem.status}")
        value = self.action.value
        if value is None:  # pragma: no cover - optimal implies a value
            raise RuntimeError("reference projection: no solution value")
        return np.asarray(value, dtype=np.float64)


class ReferenceShield:
    """The shield with its projection solved by cvxpy (same box, same target rules).

    Args:
        shield: The fast shield whose admissible box and conventions are reused.
        solver: cvxpy solver name.
    """

    def __init__(self, shield: Shield, solver: str = "CLARABEL") -> None:
        self.shield = shield
        rated = np.asarray(shield.ratings.rated_power_w, dtype=np.float64)
        self._w_scale = float(rated.mean())
        self._weight = rated / self._w_scale
        self.projection = ReferenceProjection(shield.n_packs, solver=solver)

    def project(
        self, state: FleetState, action: ArrayLike, target_power_w: float | None = None
    ) -> FloatArray:
        """The reference action for ``state`` and ``action`` (see :meth:`Shield.project`).

        Args:
            state: The measured fleet state.
            action: Requested normalised set-points.
            target_power_w: Fleet power target [W]; the request's own total when None.

        Returns:
            The projected action.
        """
        lower, upper, _ = self.shield.bounds(state)
        raw = np.asarray(action, dtype=np.float64)
        request = np.clip(np.nan_to_num(raw, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
        if target_power_w is None or not math.isfinite(target_power_w):
            target = float(self._weight @ request)
        else:
            target = float(target_power_w) / self._w_scale
        return self.projection.solve(request, lower, upper, self._weight, target)
