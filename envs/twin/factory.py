"""``make_twin``: the one constructor of fleet twins, whatever the fidelity."""

from __future__ import annotations

from collections.abc import Sequence

from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin.common import BatchedTwin

__all__ = ["FIDELITIES", "make_twin"]

FIDELITIES = ("physics", "ecm")
"""Accepted ``fidelity`` values of :func:`make_twin`."""


def make_twin(
    packs: Sequence[PackSpec],
    fidelity: str = "physics",
    *,
    degradation_acceleration: float = 1.0,
    degradation: str | None = None,
    ambient_c: float = 25.0,
    model_name: str = "SPM",
    solver: str = "extrapolation",
    n_threads: int = 1,
    jit: bool | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-6,
) -> BatchedTwin:
    """Build a fleet twin (a :class:`~pulsebms.envs.twin.base.FleetTwin`), already reset.

    Args:
        packs: The packs, in the order of every array the twin reports.
        fidelity: ``"physics"`` (PyBaMM SPM/SPMe + lumped thermal + SEI, CasADi-batched
            per chemistry) or ``"ecm"`` (one-RC equivalent circuit from PyBaMM, numpy).
        degradation_acceleration: Factor on the reported capacity fade; 1 is physical,
            larger values make fade visible within an episode (research runs only).
        degradation: Fade sources reaching SoH: ``"sei"`` (physics SEI submodel),
            ``"empirical"`` (calendar + cycle laws of
            :mod:`pulsebms.envs.twin.degradation`), ``"sei+empirical"`` or ``"none"``.
            Default: ``"sei"`` for physics, ``"empirical"`` for ecm.
        ambient_c: Ambient temperature at reset for packs without an initial temperature
            [°C]; each step takes its own ambient.
        model_name: Physics only: ``"SPM"`` (default) or ``"SPMe"`` (about 10× slower).
        solver: Physics only: ``"extrapolation"`` (default; fixed-cost extrapolated
            linearly-implicit Euler, CVODES where its error estimate is too large) or
            ``"cvodes"`` (adaptive CVODES on every step).
        n_threads: Physics only: threads of the batched call (default 1; see
            :class:`~pulsebms.envs.twin.physics.PhysicsTwin`).
        jit: Physics only: compile the stepper with the system C compiler (default: when a
            compiler is found). The first build on a machine compiles (~1 s per chemistry for
            SPM, ~25 s for SPMe), later ones load the cached library. Results are identical
            either way.
        rtol: Physics only: CVODES relative tolerance.
        atol: Physics only: CVODES absolute tolerance.

    Returns:
        The twin, reset to the packs' initial states.

    Raises:
        ValueError: On an unknown fidelity, chemistry, model or degradation setting.

    Example:
        >>> import numpy as np
        >>> from pulsebms.envs.pack import PackSpec
        >>> twin = make_twin([PackSpec("LFP"), PackSpec("NMC")], "ecm")
        >>> states = twin.step(np.array([500.0, -500.0]), dt_s=10.0, ambient_c=25.0)
        >>> states.soc.shape
        (2,)
    """
    if fidelity == "physics":
        from pulsebms.envs.twin.physics import PhysicsTwin

        return PhysicsTwin(
            packs,
            model_name=model_name,
            solver=solver,
            rtol=rtol,
            atol=atol,
            n_threads=n_threads,
            jit=jit,
            degradation_acceleration=degradation_acceleration,
            degradation=degradation or "sei",
            ambient_c=ambient_c,
        )
    if fidelity == "ecm":
        from pulsebms.envs.twin.ecm import EcmTwin

        return EcmTwin(
            packs,
            degradation_acceleration=degradation_acceleration,
            degradation=degradation or "empirical",
            ambient_c=ambient_c,
        )
    raise ValueError(f"fidelity must be one of {FIDELITIES}, got {fidelity!r}")
