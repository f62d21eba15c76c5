"""Faults injected into the twin loop: a stuck sensor, an internal short, abnormal heating.

A :class:`FaultInjector` sits between a fleet twin and what the BMS reports, the way the
hardware-in-the-loop rehearsal puts the twin between set-points and telemetry. It acts at
the level where each fault lives:

* ``internal_short`` — a soft internal short drains the cells through a path the current
  sensor does not see: the twin is stepped with the set-point **plus** a leak current
  (``severity`` × the pack's nominal capacity, i.e. a C-rate), the reported current is
  the set-point's. The pack self-discharges: SoC and voltage fall at rest with no
  measured current. (The short's own heat, ``V²/R_short`` at the short, is not added.)
* ``abnormal_heating`` — an extra heat source on the pack equivalent to ``h·A·ΔT`` (a
  failed fan, a hot spot, a heater stuck on): modelled as the pack's own ambient raised by
  ``severity`` kelvin, so the pack settles ``ΔT`` above what its current explains.
* ``stuck_sensor`` — a reading freezes: from ``start_s`` the reported ``signal``
  (``"temperature_c"`` or ``"voltage_v"``) repeats the value it had, whatever the pack does.

:func:`random_fault_plan` draws a seeded plan (which packs, which fault, when, how strong);
:meth:`FaultInjector.labels` gives the ground truth per pack and time for evaluation.

Example:
    >>> import numpy as np
    >>> plan = (InjectedFault(pack=1, kind="internal_short", start_s=100.0, severity=0.05),)
    >>> inj = FaultInjector(plan, nominal_capacity_ah=np.array([10.0, 20.0]))
    >>> inj.leak_current_a(50.0).tolist(), inj.leak_current_a(150.0).tolist()
    ([0.0, 0.0], [0.0, 1.0])
    >>> inj.labels(150.0).tolist()
    [0, 2]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from pulsebms.core.types import FloatArray, IntArray
from pulsebms.services.health.sensors import Readings

__all__ = [
    "FAULT_KINDS",
    "STUCK_SIGNALS",
    "FaultInjector",
    "InjectedFault",
    "fault_code",
    "random_fault_plan",
]

FAULT_KINDS = ("stuck_sensor", "internal_short", "abnormal_heating")
"""Fault kinds, in the order of their label codes 1, 2, 3 (0 = healthy)."""

STUCK_SIGNALS = ("temperature_c", "voltage_v")
"""Readings a ``stuck_sensor`` fault can freeze."""


def fault_code(kind: str) -> int:
    """Label code of a fault kind (1-based; 0 means no fault).

    Raises:
        ValueError: On an unknown kind.
    """
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {kind!r}")
    return FAULT_KINDS.index(kind) + 1


@dataclass(frozen=True)
class InjectedFault:
    """One fault on one pack over a time interval.

    Attributes:
        pack: Pack index.
        kind: One of :data:`FAULT_KINDS`.
        start_s: Time it begins [s].
        end_s: Time it ends [s] (``inf``: never).
        severity: ``internal_short``: leak current as a C-rate of the nominal capacity
            [1/h]; ``abnormal_heating``: equivalent ambient rise [K]; ``stuck_sensor``: unused.
        signal: ``stuck_sensor`` only: the frozen reading, one of :data:`STUCK_SIGNALS`.
    """

    pack: int
    kind: str
    start_s: float
    end_s: float = math.inf
    severity: float = 0.0
    signal: str = "temperature_c"

    def __post_init__(self) -> None:
        fault_code(self.kind)
        if not self.end_s > self.start_s:
            raise ValueError(f"end_s must be after start_s, got {self.start_s}…{self.end_s}")
        if not (math.isfinite(self.severity) and self.severity >= 0.0):
            raise ValueError(f"severity must be finite and >= 0, got {self.severity}")
        if self.kind == "stuck_sensor" and self.signal not in STUCK_SIGNALS:
            raise ValueError(f"signal must be one of {STUCK_SIGNALS}, got {self.signal!r}")

    def active(self, t_s: float) -> bool:
        """Whether the fault acts at time ``t_s``."""
        return self.start_s <= t_s < self.end_s


class FaultInjector:
    """Applies a fault plan to the twin's inputs and to the BMS readings.

    Args:
        faults: The plan.
        nominal_capacity_ah: Nominal pack capacity per pack [A.h] (scales leak currents).

    Raises:
        ValueError: A fault names a pack out of range.
    """

    def __init__(self, faults: Sequence[InjectedFault], nominal_capacity_ah: FloatArray) -> None:
        self.capacity_ah = np.asarray(nominal_capacity_ah, dtype=np.float64)
        n = self.capacity_ah.size
        bad = [f for f in faults if not 0 <= f.pack < n]
        if bad:
            raise ValueError(f"faults name packs out of range 0…{n - 1}: {bad}")
        self.faults = tuple(faults)
        self._frozen: dict[int, float] = {}

    def _per_pack(self, t_s: float, kind: str) -> FloatArray:
        out = np.zeros(self.capacity_ah.size)
        for f in self.faults:
            if f.kind == kind and f.active(t_s):
                out[f.pack] += f.severity
        return out

    def leak_current_a(self, t_s: float) -> FloatArray:
        """Internal-short leak current per pack at ``t_s`` [A] (+ = discharge)."""
        return self._per_pack(t_s, "internal_short") * self.capacity_ah

    def ambient_offset_c(self, t_s: float) -> FloatArray:
        """Ambient rise per pack standing for abnormal heating at ``t_s`` [K]."""
        return self._per_pack(t_s, "abnormal_heating")

    def apply_readings(self, t_s: float, readings: Readings) -> Readings:
        """Freeze the readings of stuck sensors (the first call in a fault keeps its value).

        Args:
            t_s: Time of the readings [s].
            readings: What the BMS would report without the faults.

        Returns:
            The readings as reported.
        """
        stuck = [f for f in self.faults if f.kind == "stuck_sensor" and f.active(t_s)]
        if not stuck:
            return readings
        values = {s: getattr(readings, s).copy() for s in STUCK_SIGNALS}
        for f in stuck:
            key = id(f)
            if key not in self._frozen:
                self._frozen[key] = float(values[f.signal][f.pack])
            values[f.signal][f.pack] = self._frozen[key]
        return replace(readings, **values)

    def labels(self, t_s: float) -> IntArray:
        """Fault code per pack at ``t_s`` (:func:`fault_code`; 0: healthy; the first wins)."""
        out = np.zeros(self.capacity_ah.size, dtype=np.int64)
        for f in self.faults:
            if f.active(t_s) and out[f.pack] == 0:
                out[f.pack] = fault_code(f.kind)
        return out


def random_fault_plan(
    n_packs: int,
    start_s: float,
    end_s: float,
    *,
    fraction: float = 0.3,
    seed: int = 0,
    short_c_rate: tuple[float, float] = (0.01, 0.05),
    heating_k: tuple[float, float] = (6.0, 20.0),
) -> tuple[InjectedFault, ...]:
    """A seeded plan: ``fraction`` of the packs get one fault each, kinds in turn.

    Each faulty pack's fault starts at a uniform time in the first two thirds of
    ``[start_s, end_s)`` and lasts to the end; severities are uniform in the given ranges
    (a stuck sensor freezes temperature or voltage, alternately).

    Args:
        n_packs: Packs in the fleet.
        start_s: Earliest fault start [s].
        end_s: End of the period [s].
        fraction: Share of packs with a fault (rounded, at least one when > 0).
        seed: Seed of every draw.
        short_c_rate: Range of the internal-short leak [C-rate].
        heating_k: Range of the abnormal-heating rise [K].

    Returns:
        The faults, ordered by pack.

    Raises:
        ValueError: On ``fraction`` outside [0, 1] or an empty period.

    Example:
        >>> plan = random_fault_plan(9, 0.0, 3600.0, fraction=1 / 3, seed=1)
        >>> sorted(f.kind for f in plan)
        ['abnormal_heating', 'internal_short', 'stuck_sensor']
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if not end_s > start_s:
        raise ValueError(f"end_s must be after start_s, got {start_s}…{end_s}")
    rng = np.random.default_rng(seed)
    n_faulty = 0 if fraction == 0 else max(1, round(fraction * n_packs))
    packs = np.sort(rng.choice(n_packs, size=n_faulty, replace=False))
    order = rng.permutation(n_faulty)
    plan = []
    for rank, pack in zip(order, packs, strict=True):
        kind = FAULT_KINDS[int(rank) % len(FAULT_KINDS)]
        t0 = float(start_s + rng.uniform(0.0, 2.0 / 3.0) * (end_s - start_s))
        if kind == "internal_short":
            severity = float(rng.uniform(*short_c_rate))
            plan.append(InjectedFault(int(pack), kind, t0, severity=severity))
        elif kind == "abnormal_heating":
            severity = float(rng.uniform(*heating_k))
            plan.append(InjectedFault(int(pack), kind, t0, severity=severity))
        else:
            signal = STUCK_SIGNALS[(int(rank) // len(FAULT_KINDS)) % len(STUCK_SIGNALS)]
            plan.append(InjectedFault(int(pack), kind, t0, signal=signal))
    return tuple(plan)
