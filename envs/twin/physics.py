"""Physics fidelity: PyBaMM SPM (or SPMe) + lumped thermal + SEI growth, batched with CasADi.

The model is built, discretised and compiled once per chemistry in
:mod:`pulsebms.envs.twin.compile` (:func:`compiled_cell`; names re-exported here). This
module steps it over a fleet: both steppers take the step length and the per-pack inputs
(cell current, ambient temperature, heat-transfer coefficient) as parameters and are
mapped over the packs of a chemistry group so that **one call advances every pack of the
group**:

* ``"extrapolation"`` (default): a fixed-cost, order-3 extrapolated linearly-implicit Euler
  step with a sparse symbolic LU (:mod:`pulsebms.envs.twin.stepper`), one straight-line
  function compiled to machine code by the system C compiler when one is found (cached on
  disk per machine, bit-identical to CasADi's virtual machine) and evaluated in place on
  numpy buffers. Its error estimate sends the rare pack it does not trust (a violent
  transient, a cell driven past its limits) to CVODES. Steps longer than
  :data:`MAX_SUBSTEP_S` are split evenly.
* ``"cvodes"``: an adaptive CVODES integrator per pack, mapped over packs (the liionpack
  approach: Tranter et al. 2022, JOSS 7(70), 4051), re-implemented here.

A bare integrator has no cut-off events (one returned −9·10⁵ V here for a cell driven past
its limit, without error), so :class:`~pulsebms.envs.twin.common.BatchedTwin` checks the
voltage window, SoC and finiteness after every step and faults the packs that leave them;
a solver exception on the batched call is retried pack by pack so that one bad pack does
not stop the rest. CVODES's native error dumps are silenced (the reason goes to
``fault_reason``).

Measured here (SPM, Chen2020, dt 10 s, random ±1 C, one thread; ``pulsebms-bench twin``):
``Simulation.step`` ~3 ms per pack-step, CVODES map ~0.2 ms, the default stepper ~9 µs,
within 0.06 mV of PyBaMM's adaptive solve at rtol = atol = 1e-8.

PyBaMM's ``Simulation.step`` is not used by the twin (it keeps history and stalls silently
after a cut-off event; :mod:`pulsebms.envs.twin.reference` uses it and detects stalls).

Example:
    >>> import numpy as np
    >>> from pulsebms.envs.pack import PackSpec
    >>> twin = PhysicsTwin([PackSpec("LFP"), PackSpec("LFP")])
    >>> states = twin.step(np.array([300.0, -300.0]), dt_s=10.0, ambient_c=25.0)
    >>> bool(states.soc[0] < states.soc[1]), states.fault_reason
    (True, ('', ''))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray, IntArray
from pulsebms.envs.chemistry import get_chemistry
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin.base import PackStates
from pulsebms.envs.twin.common import BatchedTwin, Proposal

# Re-exported: these lived here before the compile step had its own module.
from pulsebms.envs.twin.compile import (
    INPUT_NAMES,
    MODEL_OPTIONS,
    OUTPUT_NAMES,
    PHYSICS_MODELS,
    STEPPER_TOLERANCE,
    CompiledCell,
    c_compiler,
    compiled_cell,
    jit_cache_dir,
    quiet_native_output,
    static_inputs,
)

__all__ = [
    "INPUT_NAMES",
    "MAX_SUBSTEP_S",
    "MODEL_OPTIONS",
    "OUTPUT_NAMES",
    "PHYSICS_MODELS",
    "SOLVERS",
    "STEPPER_TOLERANCE",
    "CompiledCell",
    "PhysicsTwin",
    "c_compiler",
    "compiled_cell",
    "jit_cache_dir",
    "quiet_native_output",
    "static_inputs",
]

SOLVERS = ("extrapolation", "cvodes")
"""Time steppers of the physics twin: the fixed-cost extrapolated linearly-implicit Euler
(:mod:`pulsebms.envs.twin.stepper`, default, with CVODES as fallback) or CVODES alone."""

MAX_SUBSTEP_S = 10.0
"""Longest step the extrapolation stepper takes; longer ``dt_s`` are split evenly."""


@dataclass
class _Group:
    chemistry: str
    index: IntArray
    cell: CompiledCell
    states: FloatArray  # (n_states, n)
    inputs: FloatArray  # (len(INPUT_NAMES), n)
    sei_baseline_ah: FloatArray  # (n,)
    sei_ah: FloatArray  # (n,)
    call: _BufferedCall | None = None


class _BufferedCall:
    """A CasADi function evaluated in place on numpy arrays (no ``DM`` conversions).

    CasADi's ``Function.buffer`` binds inputs and outputs to memory once; a call then costs
    a few microseconds instead of the ~70 µs of converting arrays to and from ``DM``. A
    mapped function's ``(rows, n)`` matrices are column-major, i.e. the C-ordered ``(n, rows)``
    arrays in :attr:`args` and :attr:`results`.
    """

    def __init__(
        self, function: Any, n: int, *, args: Sequence[int], results: Sequence[int]
    ) -> None:
        self._buffer, self._evaluate = function.buffer()
        self.args = [np.zeros((n, rows)) for rows in args]
        self.results = [np.zeros((n, rows)) for rows in results]
        for k, array in enumerate(self.args):
            self._buffer.set_arg(k, array.data)
        for k, array in enumerate(self.results):
            self._buffer.set_res(k, array.data)

    def __call__(self) -> None:
        self._evaluate()


def _cvodes_flag(message: str) -> str:
    """The CVODES return flag in a CasADi error message (``"CV_TOO_MUCH_WORK"``), if any."""
    start = message.find('"CV_')
    if start >= 0:
        end = message.find('"', start + 1)
        return message[start + 1 : end]
    return "integrator error"


class PhysicsTwin(BatchedTwin):
    """Fleet twin on PyBaMM's SPM/SPMe + lumped thermal + SEI, one compiled call per chemistry.

    Use :func:`pulsebms.envs.twin.make_twin` rather than this constructor.

    Args:
        packs: The packs.
        model_name: ``"SPM"`` (default, fast) or ``"SPMe"`` (adds electrolyte, ~10× slower).
        solver: ``"extrapolation"`` (default: fixed-cost stepper, CVODES fallback where its
            error estimate is too large) or ``"cvodes"`` (adaptive CVODES for every step).
        rtol: CVODES relative tolerance.
        atol: CVODES absolute tolerance.
        n_threads: Threads of the batched call (CasADi's threaded map). Default 1: on the
            shared 2-core machine this was measured on, threads slowed the call down, and
            vectorised environments already run one twin per process.
        jit: Compile the stepper to machine code (see :func:`compiled_cell`); default: when
            a C compiler is found. Results are bit-identical either way.
        **kwargs: Passed to :class:`~pulsebms.envs.twin.common.BatchedTwin`.
    """

    def __init__(
        self,
        packs: Sequence[PackSpec],
        *,
        model_name: str = "SPM",
        solver: str = "extrapolation",
        rtol: float = 1e-6,
        atol: float = 1e-6,
        n_threads: int = 1,
        jit: bool | None = None,
        **kwargs: Any,
    ) -> None:
        from pulsebms.envs.twin.ecm import ecm_tables

        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")

        chems = sorted({get_chemistry(p.chemistry).name for p in packs})
        tables = {c: ecm_tables(c) for c in chems}
        super().__init__(
            packs, nominal_voltage_v={c: t.nominal_voltage_v for c, t in tables.items()}, **kwargs
        )
        self.model_name = model_name
        self.solver = solver
        self.fallback_steps = 0
        """Pack-steps redone by CVODES since construction (diagnostic)."""
        self._tables = tables
        first = tables[chems[0]] if chems else None
        if first is not None:
            self._shadow_table = np.stack(
                [tables[c].circuit_by_temperature for c in self._chemistry], axis=1
            )
            self._shadow_temperature_grid = first.fit_temperature_c
            self._shadow_soc_grid = first.fit_soc
        if n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        self._n_threads = int(n_threads)
        use_jit = c_compiler() is not None if jit is None else bool(jit)
        self._groups: list[_Group] = []
        h = np.array([p.heat_transfer_coefficient_w_m2k for p in self.packs])
        for chem in chems:
            idx = np.array([k for k, c in enumerate(self._chemistry) if c == chem], dtype=np.int64)
            cell = compiled_cell(chem, model_name, rtol, atol, use_jit)
            inputs = np.zeros((len(INPUT_NAMES), idx.size))
            inputs[2] = h[idx]
            self._groups.append(
                _Group(
                    chemistry=chem,
                    index=idx,
                    cell=cell,
                    states=np.zeros((cell.n_states, idx.size)),
                    inputs=inputs,
                    sei_baseline_ah=np.zeros(idx.size),
                    sei_ah=np.zeros(idx.size),
                )
            )
        self.jit = all(g.cell.jit for g in self._groups)
        """Whether every group's stepper runs as compiled machine code."""
        self._full_reinit = True
        self._last_model_current_a = np.zeros(len(self.packs))
        self._shadow_v_rc = np.zeros(len(self.packs))
        self._proposed_shadow_v_rc = np.zeros(len(self.packs))
        self.reset()

    # ------------------------------------------------------------------ hooks
    def reset(self) -> PackStates:
        """Return every pack to its spec's initial state (SEI too), clear faults, report it."""
        self._full_reinit = True
        try:
            return super().reset()
        finally:
            self._full_reinit = False

    def _reinitialise(
        self, mask: BoolArray, soc: FloatArray, temperature_c: FloatArray
    ) -> FloatArray:
        voltage = self._voltage_v.copy()
        for g in self._groups:
            sel = mask[g.index]
            if not np.any(sel):
                continue
            statics = static_inputs(g.chemistry, soc[g.index], temperature_c[g.index])
            g.inputs[3:6, sel] = statics[:, sel]
            g.inputs[0, sel] = 0.0
            g.inputs[1, sel] = temperature_c[g.index][sel] + 273.15
            y0 = np.array(
                g.cell.mapped("initial_state", g.index.size, 1)(g.inputs), dtype=np.float64
            )
            if self._full_reinit:
                g.states[:, sel] = y0[:, sel]
            else:
                rows = g.cell.concentration_mask | g.cell.temperature_mask
                g.states[np.ix_(rows, sel)] = y0[np.ix_(rows, sel)]
            out = np.array(
                g.cell.mapped("outputs", g.index.size, 1)(g.states, g.inputs), dtype=np.float64
            )
            if self._full_reinit:
                g.sei_baseline_ah[sel] = out[2, sel]
            g.sei_ah[sel] = out[2, sel]
            voltage[g.index[sel]] = out[0, sel]
        self._last_model_current_a[mask] = 0.0
        self._shadow_v_rc[mask] = 0.0
        return voltage

    def _reinitialise_soh(self) -> None:
        for g in self._groups:
            g.sei_baseline_ah = g.sei_ah.copy()

    def _shadow_circuit(
        self, soc: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
        """OCV, dOCV/dSoC, R0, R1, τ of the circuit fitted to this model, per pack."""
        from pulsebms.envs.twin.ecm import circuit_at

        ocv, slope = np.zeros(self.n_packs), np.zeros(self.n_packs)
        for g in self._groups:
            tab, sel = self._tables[g.chemistry], soc[g.index]
            ocv[g.index] = tab.ocv(sel)
            slope[g.index] = tab.ocv_slope(sel)
        r0, r1, tau = circuit_at(
            self._shadow_table,
            self._shadow_temperature_grid,
            self._shadow_soc_grid,
            soc,
            self._temperature_c,
        )
        return ocv, slope, r0, r1, tau

    def _power_model(self, dt_s: float) -> tuple[FloatArray, FloatArray]:
        # A shadow of the circuit fitted to this model (ecm_tables), driven by the same
        # currents, predicts the mean voltage over the step; its present offset from the
        # physics voltage is carried over as a bias.
        ocv, slope, r0, r1, tau = self._shadow_circuit(self._soc)
        frac = tau / dt_s * (1.0 - np.exp(-dt_s / tau))
        bias = self._voltage_v - (ocv - self._shadow_v_rc - r0 * self._last_model_current_a)
        e = ocv - self._shadow_v_rc * frac + bias
        r = r0 + r1 * (1.0 - frac) + 0.5 * slope * dt_s / 3600.0 / self._capacity_ah
        return e, r

    def _sei_loss_fraction(self) -> FloatArray:
        loss = np.zeros(self.n_packs)
        for g in self._groups:
            loss[g.index] = (g.sei_ah - g.sei_baseline_ah) / self._capacity_ah[g.index]
        return loss

    def _propose(self, model_current_a: FloatArray, dt_s: float, ambient_c: FloatArray) -> Proposal:
        n = self.n_packs
        voltage = np.full(n, np.nan)
        temperature = np.full(n, np.nan)
        ok = np.ones(n, dtype=bool)
        reasons = [""] * n
        payload: list[tuple[FloatArray, FloatArray, FloatArray]] = []
        for g in self._groups:
            inputs = g.inputs.copy()
            inputs[0] = model_current_a[g.index]
            inputs[1] = ambient_c[g.index] + 273.15
            if self.solver == "extrapolation":
                states, out, redo = self._extrapolate(g, inputs, dt_s)
            else:
                states = np.full_like(g.states, np.nan)
                out = np.full((len(OUTPUT_NAMES), g.index.size), np.nan)
                redo = np.ones(g.index.size, dtype=bool)
            failed: dict[int, str] = {}
            if np.any(redo):
                self.fallback_steps += int(np.count_nonzero(redo))
                failed = self._integrate(g, inputs, dt_s, redo, states, out)
            voltage[g.index] = out[0]
            temperature[g.index] = out[1] - 273.15
            for j, message in failed.items():
                ok[g.index[j]] = False
                reasons[g.index[j]] = message
            payload.append((states, inputs, out[2]))
        # Mean voltage over the step: the end voltage plus the shadow circuit's mean − end.
        ocv, _, _, r1, tau = self._shadow_circuit(self._soc)
        i = model_current_a
        decay = np.exp(-dt_s / tau)
        frac = tau / dt_s * (1.0 - decay)
        v_rc_end = self._shadow_v_rc * decay + i * r1 * (1.0 - decay)
        v_rc_mean = i * r1 + (self._shadow_v_rc - i * r1) * frac
        soc_end = self._soc - i * dt_s / 3600.0 / self._capacity_ah
        ocv_end = np.zeros(n)
        for g in self._groups:
            ocv_end[g.index] = self._tables[g.chemistry].ocv(soc_end[g.index])
        mean_voltage = voltage + (0.5 * (ocv - ocv_end) + v_rc_end - v_rc_mean)
        self._proposed_shadow_v_rc = v_rc_end
        return Proposal(voltage, temperature, ok, reasons, payload, mean_voltage)

    def _extrapolate(
        self, g: _Group, inputs: FloatArray, dt_s: float
    ) -> tuple[FloatArray, FloatArray, BoolArray]:
        """Fixed-cost steps of at most :data:`MAX_SUBSTEP_S`; flag packs to redo with CVODES."""
        n_sub = max(1, int(np.ceil(dt_s / MAX_SUBSTEP_S - 1e-9)))
        if g.call is None:
            g.call = _BufferedCall(
                g.cell.mapped("stepper", g.index.size, self._n_threads),
                g.index.size,
                args=(g.cell.n_states, len(INPUT_NAMES) + 1),
                results=(g.cell.n_states, len(OUTPUT_NAMES), 1),
            )
        x, p = g.call.args
        y, o, e = g.call.results
        x[:] = g.states.T
        p[:, :-1] = inputs.T
        p[:, -1] = dt_s / n_sub
        g.call()
        worst = e[:, 0].copy()
        for _ in range(n_sub - 1):
            x[:] = y
            g.call()
            worst = np.fmax(worst, e[:, 0])
        states = y.T.copy()
        redo = ~(worst <= 1.0) | ~np.all(np.isfinite(y), axis=1)
        return states, o.T.copy(), redo

    def _integrate(
        self,
        g: _Group,
        inputs: FloatArray,
        dt_s: float,
        redo: BoolArray,
        states: FloatArray,
        out: FloatArray,
    ) -> dict[int, str]:
        """CVODES over the packs in ``redo`` (in place); return the packs it failed on.

        All packs at once when all are redone, else pack by pack; a batch failure is retried
        pack by pack so that one bad pack does not stop the rest.
        """
        n = g.index.size
        params = np.vstack([inputs, np.full((1, n), dt_s)])
        failed: dict[int, str] = {}
        with quiet_native_output():
            if np.all(redo):
                try:
                    res = g.cell.mapped("integrator", n, self._n_threads)(x0=g.states, p=params)
                    states[:] = res["xf"].full()
                    out[:] = g.cell.mapped("outputs", n, self._n_threads)(states, inputs).full()
                    return failed
                except RuntimeError:
                    pass
            for j in np.flatnonzero(redo):
                try:
                    res = g.cell.integrator(x0=g.states[:, j], p=params[:, j])
                    states[:, j] = res["xf"].full().ravel()
                    out[:, j] = g.cell.outputs(states[:, j], inputs[:, j]).full().ravel()
                except RuntimeError as exc:
                    failed[int(j)] = "solver failure: " + _cvodes_flag(str(exc))
                    states[:, j] = np.nan
                    out[:, j] = np.nan
        return failed

    def _commit(self, accept: BoolArray, payload: Any) -> None:
        for g, (states, inputs, sei_ah) in zip(self._groups, payload, strict=True):
            sel = accept[g.index]
            g.states[:, sel] = states[:, sel]
            g.inputs[1, sel] = inputs[1, sel]
            g.sei_ah[sel] = sei_ah[sel]
            self._last_model_current_a[g.index[sel]] = inputs[0, sel]
            self._last_model_current_a[g.index[~sel]] = 0.0
        self._shadow_v_rc = np.where(accept, self._proposed_shadow_v_rc, 0.0)
