"""A fixed-cost stiff step as one CasADi expression: extrapolated linearly-implicit Euler.

The physics twin's state is mostly linear particle diffusion: stiff (the finest mesh mode
relaxes in well under a second) but smooth over a 10 s step at constant current. An
adaptive BDF solver (CVODES) restarts after every set-point change and spends most of its
time in step-size control. This module instead builds, symbolically and once per chemistry:

1. the Jacobian ``J`` of the right-hand side at the start of the step (it is very sparse:
   ~130 non-zeros for SPM's 44 states);
2. a sparse LU factorisation of ``I − h J`` with a minimum-degree elimination order and
   no pivoting (the matrix is an M-matrix-like diffusion operator plus small couplings),
   written out entry by entry so that CasADi evaluates only the structural non-zeros;
3. linearly-implicit Euler with ``n_j`` sub-steps for ``n_j`` in ``SEQUENCE`` (Jacobian
   frozen), combined by Aitken–Neville polynomial extrapolation in the step size — the
   method behind Deuflhard's LIMEX and Hairer & Wanner's SEULEX (Hairer, E. and Wanner, G.,
   *Solving Ordinary Differential Equations II*, §IV.9). Order = ``len(SEQUENCE)``;
4. an error estimate: the difference between the two highest-order tableau entries,
   scaled by ``atol + rtol·|y|`` (``atol`` per state), so that a caller can redo the few
   steps it does not trust with an adaptive solver.

The result is one straight-line ``SX`` function (~8 k instructions for SPM) that CasADi maps
over packs with threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["SEQUENCE", "extrapolated_lie_step", "minimum_degree_order"]

SEQUENCE: tuple[int, ...] = (1, 2, 3)
"""Sub-step counts of the extrapolation tableau (order 3)."""


def minimum_degree_order(n: int, pattern: Sequence[tuple[int, int]]) -> list[int]:
    """Greedy minimum-degree elimination order of a sparsity pattern (symmetrised).

    Args:
        n: Matrix size.
        pattern: ``(row, column)`` structural non-zeros.

    Returns:
        The order in which to eliminate the unknowns (ties broken by index).

    Example:
        >>> minimum_degree_order(3, [(0, 1), (1, 2)])
        [0, 1, 2]
    """
    adjacency: list[set[int]] = [set() for _ in range(n)]
    for i, j in pattern:
        if i != j:
            adjacency[i].add(j)
            adjacency[j].add(i)
    alive = set(range(n))
    order: list[int] = []
    while alive:
        k = min(alive, key=lambda v: (len(adjacency[v]), v))
        neighbours = adjacency[k]
        for a in neighbours:
            adjacency[a] |= neighbours - {a}
            adjacency[a].discard(k)
        alive.remove(k)
        order.append(k)
    return order


class _SparseLU:
    """Symbolic LU of ``I − c·J`` without pivoting, in a given elimination order."""

    def __init__(self, n: int, jac_entries: dict[tuple[int, int], Any], c: Any, order: list[int]):
        rows: list[dict[int, Any]] = [{} for _ in range(n)]
        for (i, j), e in jac_entries.items():
            rows[i][j] = -c * e
        for i in range(n):
            rows[i][i] = rows[i].get(i, 0.0) + 1.0
        done: set[int] = set()
        lower: list[tuple[int, int, Any]] = []
        for k in order:
            done.add(k)
            pivot = rows[k][k]
            pivot_row = [(j, a) for j, a in rows[k].items() if j not in done]
            for i in range(n):
                if i in done or k not in rows[i]:
                    continue
                factor = rows[i].pop(k) / pivot
                lower.append((i, k, factor))
                for j, a in pivot_row:
                    rows[i][j] = rows[i].get(j, 0.0) - factor * a
        self._n = n
        self._rows = rows
        self._lower = lower
        self._order = order
        self._position = {k: r for r, k in enumerate(order)}

    def solve(self, b: list[Any]) -> list[Any]:
        rhs = list(b)
        for i, k, factor in self._lower:
            rhs[i] = rhs[i] - factor * rhs[k]
        x: list[Any] = [0.0] * self._n
        for k in reversed(self._order):
            acc = rhs[k]
            pos = self._position[k]
            for j, a in self._rows[k].items():
                if j != k and self._position[j] > pos:
                    acc = acc - a * x[j]
            x[k] = acc / self._rows[k][k]
        return x


def extrapolated_lie_step(
    rhs: Callable[[Any], Any],
    x: Any,
    h: Any,
    *,
    rtol: float,
    atol: float | Sequence[float],
    sequence: Sequence[int] = SEQUENCE,
) -> tuple[Any, Any]:
    """One step of extrapolated linearly-implicit Euler, as CasADi ``SX`` expressions.

    Args:
        rhs: ``x -> dx/dt`` (an SX expression builder; autonomous over the step).
        x: The state at the start of the step (an ``SX`` column symbol).
        h: The step length (an ``SX`` scalar).
        rtol: Relative tolerance of the error estimate.
        atol: Absolute tolerance of the error estimate: one value, or one per state (a
            per-block scale, e.g. a looser one for states the outputs are insensitive to).
        sequence: Sub-step counts (increasing).

    Returns:
        The state after ``h`` and the scaled error estimate (≤ 1 means within tolerance).
    """
    import casadi

    n = int(x.shape[0])
    f0 = rhs(x)
    jac = casadi.jacobian(f0, x)
    rows, cols = jac.sparsity().get_triplet()
    entries = {(int(i), int(j)): jac.nz[k] for k, (i, j) in enumerate(zip(rows, cols, strict=True))}
    order = minimum_degree_order(n, list(entries))
    column = [x[i] for i in range(n)]
    tableau: list[list[Any]] = []
    for n_sub in sequence:
        step = h / n_sub
        lu = _SparseLU(n, entries, step, order)
        state = column
        for sub in range(n_sub):
            f = f0 if sub == 0 else rhs(casadi.vertcat(*state))
            delta = lu.solve([step * f[i] for i in range(n)])
            state = [state[i] + delta[i] for i in range(n)]
        tableau.append(state)
    previous = tableau
    for level in range(1, len(sequence)):
        current = []
        for j in range(level, len(sequence)):
            ratio = sequence[j] / sequence[j - level]
            hi, lo = previous[j - level + 1], previous[j - level]
            current.append([hi[i] + (hi[i] - lo[i]) / (ratio - 1.0) for i in range(n)])
        last_previous = previous[-1]
        previous = current
    best = casadi.vertcat(*previous[-1])
    second = casadi.vertcat(*last_previous)
    scale = casadi.DM(list(atol)) if isinstance(atol, Sequence) else atol
    error = casadi.mmax(casadi.fabs(best - second) / (scale + rtol * casadi.fabs(best)))
    return best, error
