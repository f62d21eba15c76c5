"""Hardware-in-the-loop: the fleet twin plays the packs on a CAN bus for the edge runtime.

**Not on the runtime path**: this package imports Gymnasium and the PyBaMM-backed
environments; :mod:`pulsebms.edge_runtime` never imports it.

* :mod:`pulsebms.hil.simulator`: :class:`SimClock`, :class:`HilFaults`,
  :class:`HilSimulator` (the twin on the bus).
* :mod:`pulsebms.hil.parity`: :class:`ObservationParity` (the runtime's observation
  against the twin's, counted per tick).
* :mod:`pulsebms.hil.run`: :func:`run_hil` and its :class:`HilReport`;
  :func:`lockstep_watchdog` (the runtime's watchdog when telemetry comes once per tick).
* :mod:`pulsebms.hil.cli`: ``pulsebms-hil`` / ``python -m pulsebms.hil``.

Example:
    >>> from pulsebms.hil import run_hil
    >>> report = run_hil("deploy/manifest.json", n_ticks=50)  # doctest: +SKIP
    >>> report.parity_ok  # doctest: +SKIP
    True
"""

from __future__ import annotations

from pulsebms.hil.parity import DEFAULT_OBS_TOLERANCE, ObservationParity
from pulsebms.hil.run import HilReport, lockstep_watchdog, run_hil
from pulsebms.hil.simulator import HilFaults, HilSimulator, SimClock

__all__ = [
    "DEFAULT_OBS_TOLERANCE",
    "HilFaults",
    "HilReport",
    "HilSimulator",
    "ObservationParity",
    "SimClock",
    "lockstep_watchdog",
    "run_hil",
]
