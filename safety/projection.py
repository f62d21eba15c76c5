"""Closed-form Euclidean projection onto a box intersected with a hyperplane (numpy only).

The shield's stage 2 (:meth:`pulsebms.safety.shield.Shield.project`): the point of
``{l ≤ a ≤ u, w·a = t}`` closest to a request ``r``, with positive weights ``w``. The KKT
conditions give ``a_i(λ) = clip(r_i + λ·w_i, l_i, u_i)`` for one multiplier ``λ``; the
total ``S(λ) = w·a(λ)`` is piecewise linear and non-decreasing in ``λ``, with ``2n``
breakpoints ``(l_i − r_i)/w_i`` (coordinate ``i`` leaves its lower bound, the slope grows
by ``w_i²``) and ``(u_i − r_i)/w_i`` (it reaches its upper bound, the slope falls by
``w_i²``). Sorting the breakpoints and two cumulative sums give ``S`` at each of them, and
``λ`` is interpolated inside the segment where ``S`` crosses ``t``: exact, no iteration,
O(n log n) and vectorised. A target outside ``[w·l, w·u]`` is clamped to it: the nearest
feasible allocation is every coordinate at its bound on that side.

Example:
    >>> import numpy as np
    >>> a, reached = project_box_hyperplane(np.array([0.9, 0.1]), np.array([-1.0, -1.0]),
    ...                                     np.array([0.5, 1.0]), np.ones(2), 1.0)
    >>> a.round(12).tolist(), reached
    ([0.5, 0.5], 1.0)
"""

from __future__ import annotations

import numpy as np

from pulsebms.core.types import FloatArray

__all__ = ["breakpoint_multiplier", "project_box_hyperplane"]


def breakpoint_multiplier(breakpoints: FloatArray, slope_steps: FloatArray, excess: float) -> float:
    """The multiplier ``λ`` at which the piecewise-linear fleet total reaches its target.

    ``S(λ) − S(−∞)`` is 0 up to the first breakpoint and its slope changes by
    ``slope_steps[i]`` at ``breakpoints[i]`` (``+w²`` where a coordinate leaves its lower
    bound, ``−w²`` where it reaches its upper one). Sorting the breakpoints and two
    cumulative sums give ``S`` at every breakpoint; ``λ`` is interpolated inside the
    segment where ``S`` crosses ``excess`` (exact, no iteration).

    Args:
        breakpoints: ``2n`` breakpoints, any order.
        slope_steps: The slope change at each breakpoint.
        excess: Target minus ``S(−∞)``, in ``(0, S(∞) − S(−∞))``.

    Returns:
        ``λ``.
    """
    order = breakpoints.argsort()
    bp_sorted = breakpoints[order]
    cumsum = np.add.accumulate  # the ufunc method: less overhead than ndarray.cumsum
    slope = cumsum(slope_steps[order])  # dS/dλ after each breakpoint
    # S(bp_k) - S(-inf) for k >= 1 (it is 0 at the first breakpoint)
    totals = cumsum(slope[:-1] * (bp_sorted[1:] - bp_sorted[:-1]))
    k = int(totals.searchsorted(excess, side="right"))
    base = float(totals[k - 1]) if k > 0 else 0.0
    s = float(slope[k])
    return float(bp_sorted[k]) + ((excess - base) / s if s > 0.0 else 0.0)


def project_box_hyperplane(
    request: FloatArray,
    lower: FloatArray,
    upper: FloatArray,
    weight: FloatArray,
    target: float,
    pre: tuple[FloatArray, FloatArray] | None = None,
) -> tuple[FloatArray, float]:
    """Closest point to ``request`` in ``{lower ≤ a ≤ upper, weight·a = target}``.

    Breakpoint search on the multiplier (:func:`breakpoint_multiplier`). The target is first
    clamped to ``[weight·lower, weight·upper]``; the clamped target is returned, so the
    caller can tell the shortfall.

    Args:
        request: The point to project, finite, shape ``(n,)``.
        lower: Lower bounds, finite, ``lower ≤ upper``.
        upper: Upper bounds, finite.
        weight: Positive weights of the total.
        target: Desired ``weight·a``.
        pre: ``(concat(1/w, 1/w), concat(w², -w²))`` precomputed for fixed weights.

    Returns:
        ``(a, reached)``: the projection and the total it aims at (the clamped target).

    Example:
        >>> import numpy as np
        >>> a, t = project_box_hyperplane(np.array([1.0, 0.0]), np.zeros(2), np.full(2, 0.6),
        ...                               np.ones(2), 1.0)
        >>> a.tolist(), t
        ([0.6, 0.4], 1.0)
    """
    t_min = float(weight @ lower)
    t_max = float(weight @ upper)
    if target <= t_min:
        return lower.copy(), t_min
    if target >= t_max:
        return upper.copy(), t_max
    if pre is None:
        inv = 1.0 / weight
        pre = (np.concatenate((inv, inv)), np.concatenate((weight * weight, -weight * weight)))
    inv2, w2pm = pre
    # Breakpoints where each coordinate leaves its lower / reaches its upper bound.
    bp = (np.concatenate((lower, upper)) - np.concatenate((request, request))) * inv2
    lam = breakpoint_multiplier(bp, w2pm, target - t_min)
    return np.minimum(np.maximum(request + lam * weight, lower), upper), target
