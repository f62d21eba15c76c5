"""Physics fidelity: PyBaMM SPM (or SPMe) + lumped thermal + SEI growth, batched with CasADi.

Per chemistry the PyBaMM model is built and discretised **once** (:func:`compiled_cell`,
cached per process); its right-hand side is converted to CasADi and expanded to scalar
expressions (``SX``). Two steppers are made from it, both with the step length and the
per-pack inputs (cell current, ambient temperature, heat-transfer coefficient) as
parameters, and both mapped over the packs of a chemistry group so that **one call
advances every pack of the group**:

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
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pulsebms.envs.chemistry import get_chemistry
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin.base import PackStates
from pulsebms.envs.twin.common import BatchedTwin, BoolArray, FloatArray, Proposal
from pulsebms.envs.twin.parameters import cell_facts, parameter_values
from pulsebms.envs.twin.stepper import extrapolated_lie_step

__all__ = ["PHYSICS_MODELS", "SOLVERS", "CompiledCell", "PhysicsTwin", "compiled_cell"]

PHYSICS_MODELS = ("SPM", "SPMe")
"""PyBaMM lithium-ion models the physics twin can run."""

MODEL_OPTIONS: dict[str, str] = {"thermal": "lumped", "SEI": "reaction limited"}
"""PyBaMM model options of the physics fidelity."""

INPUT_NAMES: tuple[str, ...] = (
    "Current function [A]",
    "Ambient temperature [K]",
    "Total heat transfer coefficient [W.m-2.K-1]",
    "Initial concentration in negative electrode [mol.m-3]",
    "Initial concentration in positive electrode [mol.m-3]",
    "Initial temperature [K]",
)
"""PyBaMM parameters turned into per-pack inputs, in this order."""

OUTPUT_NAMES: tuple[str, ...] = (
    "Voltage [V]",
    "Volume-averaged cell temperature [K]",
    "Loss of capacity to negative SEI [A.h]",
)
"""PyBaMM variables read after every step, in this order."""


SOLVERS = ("extrapolation", "cvodes")
"""Time steppers of the physics twin: the fixed-cost extrapolated linearly-implicit Euler
(:mod:`pulsebms.envs.twin.stepper`, default, with CVODES as fallback) or CVODES alone."""

STEPPER_TOLERANCE = 1e-4
"""Tolerance of the extrapolation stepper's error estimate (relative and absolute).

The estimate bounds the error of the tableau's order-2 entry; the order-3 result is far
more accurate (measured ≤ 0.06 mV against CVODES at 1e-10 over random ±1 C steps of 10 s).
A pack whose estimate exceeds 1 is redone by CVODES at the twin's ``rtol``/``atol``."""

MAX_SUBSTEP_S = 10.0
"""Longest step the extrapolation stepper takes; longer ``dt_s`` are split evenly."""


@dataclass
class CompiledCell:
    """One chemistry's discretised model as CasADi functions (built once, shared).

    Attributes:
        chemistry: Chemistry name.
        model_name: PyBaMM model (``"SPM"`` or ``"SPMe"``).
        n_states: Number of differential states.
        initial_state: ``y0(p)`` with ``p`` the :data:`INPUT_NAMES` inputs.
        integrator: CVODES integrator ``(x0, p) -> xf`` over one step; ``p`` is the inputs
            followed by the step length [s].
        stepper: Fixed-cost step ``(x, p) -> (x_next, outputs(x_next), error)`` by
            extrapolated linearly-implicit Euler (:mod:`pulsebms.envs.twin.stepper`);
            ``error`` ≤ 1 means within :data:`STEPPER_TOLERANCE`.
        jit: Whether ``stepper`` is compiled to machine code.
        outputs: ``(y, p) -> [V, T_K, SEI loss A.h]`` (:data:`OUTPUT_NAMES`).
        concentration_mask: States set by the initial particle concentrations.
        temperature_mask: States set by the initial temperature.
    """

    chemistry: str
    model_name: str
    n_states: int
    initial_state: Any
    integrator: Any
    stepper: Any
    jit: bool
    outputs: Any
    concentration_mask: BoolArray
    temperature_mask: BoolArray
    _maps: dict[tuple[str, int, int], Any] = field(default_factory=dict, repr=False)

    def mapped(self, what: str, n: int, n_threads: int) -> Any:
        """The integrator, outputs or initial state mapped over ``n`` packs (cached)."""
        key = (what, n, n_threads)
        if key not in self._maps:
            base = {
                "integrator": self.integrator,
                "stepper": self.stepper,
                "outputs": self.outputs,
                "initial_state": self.initial_state,
            }[what]
            threads = max(1, min(n_threads, n))
            self._maps[key] = base.map(n, "thread", threads) if threads > 1 else base.map(n)
        return self._maps[key]


@functools.cache
def compiled_cell(
    chemistry: str,
    model_name: str = "SPM",
    rtol: float = 1e-6,
    atol: float = 1e-6,
    jit: bool = False,
) -> CompiledCell:
    """Build, discretise and compile a chemistry's physics model once (cached per process).

    Args:
        chemistry: Chemistry name.
        model_name: ``"SPM"`` or ``"SPMe"`` (PyBaMM's default mesh).
        rtol: CVODES relative tolerance.
        atol: CVODES absolute tolerance.
        jit: Compile the fixed-cost stepper to machine code with the system C compiler
            (~2.5× faster steps; about 1 s per chemistry the first time on a machine, then
            loaded from :func:`jit_cache_dir`). Without a usable compiler the stepper stays
            in CasADi's virtual machine and ``CompiledCell.jit`` is False.

    Returns:
        The :class:`CompiledCell`.

    Raises:
        ValueError: If ``model_name`` is unknown.
    """
    import casadi
    import pybamm

    if model_name not in PHYSICS_MODELS:
        raise ValueError(f"model_name must be one of {PHYSICS_MODELS}, got {model_name!r}")
    facts = cell_facts(chemistry)
    model = getattr(pybamm.lithium_ion, model_name)(dict(MODEL_OPTIONS))
    values = parameter_values(chemistry)
    values.update({name: "[input]" for name in INPUT_NAMES}, check_already_exists=False)
    sim = pybamm.Simulation(model, parameter_values=values)
    sim.build()
    built = sim.built_model
    n_states = int(built.concatenated_rhs.size)
    if built.concatenated_algebraic.size:
        raise ValueError(f"{model_name} with {MODEL_OPTIONS} is a DAE; the twin needs an ODE")
    t = casadi.MX.sym("t")
    y = casadi.MX.sym("y", n_states)
    p = casadi.MX.sym("p", len(INPUT_NAMES))
    inputs = {name: p[k] for k, name in enumerate(INPUT_NAMES)}
    rhs = built.concatenated_rhs.to_casadi(t, y, inputs=inputs)
    y0 = built.concatenated_initial_conditions.to_casadi(t, y, inputs=inputs)
    outs = [
        built.get_processed_variable(name).to_casadi(t, y, inputs=inputs) for name in OUTPUT_NAMES
    ]
    f_rhs = casadi.Function("rhs", [t, y, p], [rhs]).expand()
    f_y0 = casadi.Function("y0", [p], [y0]).expand()
    f_out = casadi.Function("out", [y, p], [casadi.vertcat(*outs)]).expand()
    # Scaled time: integrate dy/ds = dt·f over s in [0, 1], so one integrator serves every dt.
    xs = casadi.SX.sym("x", n_states)
    ps = casadi.SX.sym("p", len(INPUT_NAMES) + 1)
    ode = ps[-1] * f_rhs(0.0, xs, ps[:-1])
    integrator = casadi.integrator(
        "twin_" + facts.chemistry,
        "cvodes",
        {"x": xs, "p": ps, "ode": ode},
        0.0,
        1.0,
        {"abstol": atol, "reltol": rtol, "max_num_steps": 10_000, "show_eval_warnings": False},
    )
    x_next, error = extrapolated_lie_step(
        lambda x: ps[-1] * f_rhs(0.0, x, ps[:-1]),
        xs,
        1.0,
        rtol=STEPPER_TOLERANCE,
        atol=STEPPER_TOLERANCE,
    )
    stepper = casadi.Function(
        "step_" + facts.chemistry, [xs, ps], [x_next, f_out(x_next, ps[:-1]), error]
    )
    jit_active = False
    if jit:
        compiled = _jit_compile(stepper)
        if compiled is not None:
            stepper, jit_active = compiled, True
    jac = casadi.Function("j", [p], [casadi.jacobian(y0, p)]).expand()
    pattern = np.array(casadi.DM(jac.sparsity_out(0), 1.0)) != 0.0
    conc_mask = np.asarray(pattern[:, 3] | pattern[:, 4], dtype=bool)
    temp_mask = np.asarray(pattern[:, 5], dtype=bool)
    return CompiledCell(
        chemistry=facts.chemistry,
        model_name=model_name,
        n_states=n_states,
        initial_state=f_y0,
        integrator=integrator,
        stepper=stepper,
        jit=jit_active,
        outputs=f_out,
        concentration_mask=conc_mask,
        temperature_mask=temp_mask,
    )


def c_compiler() -> str | None:
    """Path of the system C compiler CasADi's JIT would call (``cc``/``gcc``/``clang``)."""
    for name in ("gcc", "cc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def jit_cache_dir() -> Path:
    """Folder of the compiled steppers: ``$PULSEBMS_CACHE_DIR`` or ``~/.cache/pulsebms/jit``."""
    root = os.environ.get("PULSEBMS_CACHE_DIR")
    if root:
        return Path(root) / "jit"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pulsebms" / "jit"


def _jit_compile(function: Any) -> Any | None:
    """``function`` compiled to machine code, or None when no compiler is usable.

    The C code CasADi generates is compiled once per machine into a shared library named
    after the hash of the code (so any process, test worker or vector-env subprocess
    reuses it) and loaded with ``casadi.external``.
    """
    import casadi

    compiler = c_compiler()
    if compiler is None:
        return None
    generator = casadi.CodeGenerator(function.name() + ".c", {"with_header": False})
    generator.add(function)
    source = generator.dump()
    flags = ["-O1", "-fPIC", "-shared"]  # -O1: as fast as -O2 here; no fast-math (IEEE).
    digest = hashlib.sha256((source + " ".join(flags)).encode()).hexdigest()[:20]
    for folder in (jit_cache_dir(), Path(tempfile.gettempdir()) / "pulsebms-jit"):
        library = folder / f"{function.name()}_{digest}.so"
        try:
            if not library.exists():
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=folder) as work:
                    c_file = Path(work) / "step.c"
                    c_file.write_text(source, encoding="utf-8")
                    built = Path(work) / "step.so"
                    subprocess.run(
                        [compiler, *flags, "-o", str(built), str(c_file), "-lm"],
                        check=True,
                        capture_output=True,
                        timeout=300,
                    )
                    os.replace(built, library)  # atomic: concurrent builders are harmless
            return casadi.external(function.name(), str(library))
        except (OSError, subprocess.SubprocessError, RuntimeError):
            continue
    return None


def static_inputs(chemistry: str, soc: FloatArray, temperature_c: FloatArray) -> FloatArray:
    """Initial-condition inputs (c_n0, c_p0, T0) for packs at rest at ``soc`` [shape (3, n)]."""
    facts = cell_facts(chemistry)
    x, y = facts.stoichiometries(np.asarray(soc, dtype=np.float64))
    return np.vstack(
        [
            x * facts.c_n_max_mol_m3,
            y * facts.c_p_max_mol_m3,
            np.asarray(temperature_c, dtype=np.float64) + 273.15,
        ]
    )


@contextlib.contextmanager
def quiet_native_output() -> Iterator[None]:
    """Silence C-level stdout/stderr (CVODES and CasADi print failures there, not to Python).

    A failed pack is reported as data (``fault_reason``); the native dump would only flood
    logs and test output.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


@dataclass
class _Group:
    chemistry: str
    index: NDArray[np.int64]
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
