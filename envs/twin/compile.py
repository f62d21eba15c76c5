"""The physics model compiled once: PyBaMM → CasADi functions, and their on-disk JIT cache.

Per chemistry the PyBaMM model (SPM or SPMe + lumped thermal + SEI) is built and
discretised **once** (:func:`compiled_cell`, cached per process); its right-hand side is
converted to CasADi and expanded to scalar expressions (``SX``). Two steppers are made from
it, both with the step length and the per-pack inputs (:data:`INPUT_NAMES`) as parameters:
an adaptive CVODES integrator and a fixed-cost extrapolated linearly-implicit Euler step
(:mod:`pulsebms.envs.twin.stepper`). The fixed-cost step can be compiled to machine code by
the system C compiler (:func:`c_compiler`); the shared library is cached on disk per machine
(:func:`jit_cache_dir`) and is bit-identical to CasADi's virtual machine.

:class:`~pulsebms.envs.twin.physics.PhysicsTwin` steps these functions over a fleet;
:func:`~pulsebms.envs.twin.ecm.ecm_tables` fits its circuit to them.

Example:
    >>> import numpy as np
    >>> statics = static_inputs("LFP", np.array([0.5]), np.array([25.0]))
    >>> statics.shape  # c_n0, c_p0 [mol.m-3] and T0 [K] per pack
    (3, 1)
    >>> float(statics[2, 0])
    298.15
    >>> cell = compiled_cell("LFP")
    >>> cell.model_name, cell.n_states > 0
    ('SPM', True)
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray
from pulsebms.envs.twin.parameters import cell_facts, parameter_values
from pulsebms.envs.twin.stepper import extrapolated_lie_step

__all__ = [
    "ELECTROLYTE_TOLERANCE",
    "INPUT_NAMES",
    "MODEL_OPTIONS",
    "OUTPUT_NAMES",
    "PHYSICS_MODELS",
    "STEPPER_TOLERANCE",
    "CompiledCell",
    "c_compiler",
    "compiled_cell",
    "jit_cache_dir",
    "quiet_native_output",
    "static_inputs",
]

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


STEPPER_TOLERANCE = 1e-4
"""Tolerance of the extrapolation stepper's error estimate (relative and absolute).

The estimate bounds the error of the tableau's order-2 entry; the order-3 result is far
more accurate (measured ≤ 0.06 mV against CVODES at 1e-10 over random ±1 C steps of 10 s).
A pack whose estimate exceeds 1 is redone by CVODES at the twin's ``rtol``/``atol``."""

ELECTROLYTE_TOLERANCE = 1e-3
"""Absolute tolerance of the error estimate on SPMe's electrolyte states (PyBaMM's
normalised ``porosity × concentration``, ~0.3–0.5).

With :data:`STEPPER_TOLERANCE` on every state, SPMe failed the check on about half of the
10 s steps at ±1 C, always on the electrolyte block (estimate 1–4.4, particle blocks ≤ 0.33),
while the order-3 result's true electrolyte error was ≤ 3e-4 (normalised; CVODES at 1e-10),
a voltage error far below 1 mV (the electrolyte enters the voltage through
``ln c_e`` terms of ~26 mV per unit). The estimate bounds the order-2 entry, so it is
conservative by about one order; a ten times looser scale on this block alone removes the
spurious fallbacks and keeps the voltage within 1 mV of the reference (see
``pulsebms-bench twin`` and tests/envs/twin/test_twin_spme.py)."""


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
        atol=_state_tolerances(built, n_states),
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


def _state_tolerances(built: Any, n_states: int) -> float | list[float]:
    """Error-estimate ``atol`` per state: :data:`ELECTROLYTE_TOLERANCE` on electrolyte states.

    Returns the scalar :data:`STEPPER_TOLERANCE` when the model has no electrolyte states
    (SPM), so SPM's stepper (and its JIT cache key) is unchanged.
    """
    tolerances = [STEPPER_TOLERANCE] * n_states
    electrolyte = False
    for variable, slices in built.y_slices.items():
        if "porosity times concentration" in variable.name.lower():
            for part in slices:
                for k in range(part.start, part.stop):
                    tolerances[k] = ELECTROLYTE_TOLERANCE
                    electrolyte = True
    return tolerances if electrolyte else STEPPER_TOLERANCE


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
