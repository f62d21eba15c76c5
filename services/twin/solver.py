"""Batched Levenberg–Marquardt: many small, independent least-squares problems in lock-step.

Each pack's calibration is its own problem of a few parameters, but the model that gives its
residuals advances every pack in one vectorised call. :func:`batched_least_squares` keeps it
that way: residuals and Jacobians come for the whole batch at once (``(n, m)`` and
``(n, m, p)``), the damped normal equations are solved per problem (``(n, p, p)`` batched
``numpy.linalg.solve``), and each problem has its own damping and stopping state. Bounds are
kept by projection. The covariance of the estimate is the Gauss–Newton one,
``σ̂² (JᵀJ)⁻¹`` with ``σ̂² = RSS / (m − p)`` (m: the problem's unmasked residuals).

:func:`scipy.optimize.least_squares` solves the same problems one at a time; the tests check
that both reach the same optimum.

Example:
    >>> import numpy as np
    >>> t = np.linspace(0.0, 1.0, 50)
    >>> truth = np.array([[2.0, 0.5], [1.0, -1.0]])      # (a, b) of y = a·exp(b·t), 2 problems
    >>> y = truth[:, :1] * np.exp(truth[:, 1:] * t)
    >>> def residuals(x):
    ...     return x[:, :1] * np.exp(x[:, 1:] * t) - y
    >>> def jacobian(x):
    ...     e = np.exp(x[:, 1:] * t)
    ...     return np.stack([e, x[:, :1] * t * e], axis=-1)
    >>> fit = batched_least_squares(residuals, jacobian, np.ones((2, 2)))
    >>> np.round(fit.x, 6).tolist(), fit.converged.tolist()
    ([[2.0, 0.5], [1.0, -1.0]], [True, True])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray

__all__ = ["BatchedFit", "batched_least_squares", "finite_difference_jacobian"]


@dataclass(frozen=True)
class BatchedFit:
    """Result of :func:`batched_least_squares` (arrays over the ``n`` problems).

    Attributes:
        x: Estimates, ``(n, p)``.
        covariance: Gauss–Newton covariance of the estimates, ``(n, p, p)`` (NaN where
            ``JᵀJ`` is singular).
        std: Standard deviations, the square roots of the covariance diagonal, ``(n, p)``.
        rmse: Root-mean-square residual at the estimate, ``(n,)``.
        n_residuals: Unmasked residuals per problem, ``(n,)``.
        iterations: Iterations each problem took, ``(n,)``.
        converged: Whether the step or the cost change fell below tolerance, ``(n,)``.
    """

    x: FloatArray
    covariance: FloatArray
    std: FloatArray
    rmse: FloatArray
    n_residuals: FloatArray
    iterations: FloatArray
    converged: BoolArray


def finite_difference_jacobian(
    residuals: Callable[[FloatArray], FloatArray], x: FloatArray, steps: FloatArray
) -> FloatArray:
    """Forward-difference Jacobian of a batched residual function.

    Problems are independent, so perturbing parameter ``j`` of **every** problem at once gives
    column ``j`` of every problem's Jacobian: ``p + 1`` batched evaluations in all.

    Args:
        residuals: ``(n, p) -> (n, m)``.
        x: Point, ``(n, p)``.
        steps: Step per parameter, ``(p,)`` or ``(n, p)``.

    Returns:
        ``(n, m, p)``.
    """
    base = residuals(x)
    h = np.broadcast_to(np.asarray(steps, dtype=np.float64), x.shape)
    cols = []
    for j in range(x.shape[1]):
        xp = x.copy()
        xp[:, j] += h[:, j]
        cols.append((residuals(xp) - base) / h[:, j : j + 1])
    return np.stack(cols, axis=-1)


def _solve_each(a: FloatArray, b: FloatArray) -> FloatArray:
    """Solve ``a[k] x = b[k]`` for every k; least squares where a matrix is singular."""
    try:
        return np.asarray(np.linalg.solve(a, b[..., None])[..., 0], dtype=np.float64)
    except np.linalg.LinAlgError:
        return np.stack([np.linalg.lstsq(a[k], b[k], rcond=None)[0] for k in range(a.shape[0])])


def batched_least_squares(
    residuals: Callable[[FloatArray], FloatArray],
    jacobian: Callable[[FloatArray], FloatArray],
    x0: FloatArray,
    *,
    lower: FloatArray | None = None,
    upper: FloatArray | None = None,
    mask: BoolArray | None = None,
    max_iterations: int = 50,
    xtol: float = 1e-8,
    ftol: float = 1e-10,
    damping: float = 1e-3,
) -> BatchedFit:
    """Minimise ``Σ r²`` of ``n`` independent problems together (Levenberg–Marquardt).

    Args:
        residuals: ``(n, p) -> (n, m)`` residuals of every problem (masked entries ignored).
        jacobian: ``(n, p) -> (n, m, p)``, e.g. :func:`finite_difference_jacobian`.
        x0: Start, ``(n, p)``.
        lower: Lower bounds, ``(p,)`` or ``(n, p)``; default unbounded.
        upper: Upper bounds, ``(p,)`` or ``(n, p)``.
        mask: Which residuals count, ``(n, m)`` (problems of different lengths padded);
            default all.
        max_iterations: Iterations at most (each: one Jacobian, one residual evaluation).
        xtol: Stop a problem when its relative step is below this.
        ftol: Stop a problem when its relative cost decrease is below this.
        damping: Initial Marquardt damping (relative to ``diag(JᵀJ)``).

    Returns:
        The :class:`BatchedFit`.

    Raises:
        ValueError: On inconsistent shapes.
    """
    x = np.array(x0, dtype=np.float64, copy=True)
    if x.ndim != 2:
        raise ValueError(f"x0 must be (n, p), got shape {x.shape}")
    n, p = x.shape
    lo = np.broadcast_to(-np.inf if lower is None else np.asarray(lower, float), (n, p))
    hi = np.broadcast_to(np.inf if upper is None else np.asarray(upper, float), (n, p))
    x = np.clip(x, lo, hi)

    def masked(r: FloatArray) -> FloatArray:
        r = np.where(np.isfinite(r), r, 1e3)  # a diverged simulation is a huge residual
        return r if mask is None else np.where(mask, r, 0.0)

    r = masked(residuals(x))
    if r.ndim != 2 or r.shape[0] != n:
        raise ValueError(f"residuals must return (n, m) with n = {n}, got {r.shape}")
    m_used = np.full(n, r.shape[1], dtype=np.float64) if mask is None else mask.sum(axis=1)
    cost = np.sum(r * r, axis=1)
    lam = np.full(n, float(damping))
    active = np.ones(n, dtype=bool)
    converged = np.zeros(n, dtype=bool)
    iterations = np.zeros(n)
    jac = np.zeros((n, r.shape[1], p))
    for _ in range(max_iterations):
        if not np.any(active):
            break
        jac = jacobian(x)
        jac = np.where(np.isfinite(jac), jac, 0.0)
        if mask is not None:
            jac = np.where(mask[:, :, None], jac, 0.0)
        jtj = np.einsum("nmi,nmj->nij", jac, jac)
        jtr = np.einsum("nmi,nm->ni", jac, r)
        diag = np.maximum(np.einsum("nii->ni", jtj), 1e-300)
        # Up to a few damping increases per iteration, in lock-step.
        accepted = np.zeros(n, dtype=bool)
        x_new = x.copy()
        r_new = r.copy()
        cost_new = cost.copy()
        for _inner in range(8):
            trying = active & ~accepted
            if not np.any(trying):
                break
            a = jtj + (lam[:, None, None] * diag[:, :, None]) * np.eye(p)[None]
            step = -_solve_each(a, jtr)
            candidate = np.where(trying[:, None], np.clip(x + step, lo, hi), x)
            r_try = masked(residuals(candidate))
            cost_try = np.sum(r_try * r_try, axis=1)
            better = trying & (cost_try <= cost)
            x_new = np.where(better[:, None], candidate, x_new)
            r_new = np.where(better[:, None], r_try, r_new)
            cost_new = np.where(better, cost_try, cost_new)
            accepted |= better
            lam = np.where(better, np.maximum(lam / 3.0, 1e-12), np.where(trying, lam * 4.0, lam))
        dx = np.abs(x_new - x)
        rel_step = np.max(dx / (np.abs(x) + 1e-8), axis=1)
        rel_cost = (cost - cost_new) / np.maximum(cost, 1e-300)
        iterations += active
        done = active & (
            (accepted & ((rel_step < xtol) | (rel_cost < ftol))) | (~accepted & (lam > 1e8))
        )
        converged |= done & (accepted | (lam > 1e8))
        x, r, cost = x_new, r_new, cost_new
        active &= ~done
    jac = jacobian(x)
    jac = np.where(np.isfinite(jac), jac, 0.0)
    if mask is not None:
        jac = np.where(mask[:, :, None], jac, 0.0)
    jtj = np.einsum("nmi,nmj->nij", jac, jac)
    dof = np.maximum(m_used - p, 1.0)
    sigma2 = cost / dof
    cov = np.full((n, p, p), np.nan)
    for k in range(n):
        if np.linalg.matrix_rank(jtj[k]) == p:
            cov[k] = sigma2[k] * np.linalg.inv(jtj[k])
    std = np.sqrt(np.maximum(np.einsum("nii->ni", cov), 0.0))
    return BatchedFit(
        x=x,
        covariance=cov,
        std=std,
        rmse=np.sqrt(cost / np.maximum(m_used, 1.0)),
        n_residuals=m_used,
        iterations=iterations,
        converged=converged,
    )
