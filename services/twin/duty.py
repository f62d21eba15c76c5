"""Duty cycles: what a pack is assumed to do (forecasts) or made to do (recorded truth).

A :class:`Duty` is a daily pattern: ``cycles_per_day`` charge/discharge cycles of depth
``depth_of_discharge`` at ``c_rate``, centred on ``mean_soc``, at ``temperature_c``, rest in
between. :meth:`Duty.current_profile` turns it into a pack current series (optionally with
seeded square pulses on top, so that a calibration window excites the resistance);
:meth:`Duty.describe` is the one-line text a forecast message carries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pulsebms.core.types import FloatArray

__all__ = ["DEFAULT_DUTY", "Duty"]


@dataclass(frozen=True)
class Duty:
    """A daily cycling pattern.

    Attributes:
        cycles_per_day: Full charge/discharge cycles per day (≥ 0).
        depth_of_discharge: SoC swing of each half-cycle, in (0, 1].
        c_rate: Current of both half-cycles, in C (of the pack's present capacity).
        mean_soc: SoC at the centre of the swing; also the rest SoC.
        temperature_c: Pack temperature assumed [°C].
        pulse_c_rate: Amplitude of seeded square pulses added to the profile, in C (0: none);
            they come in pairs of opposite sign (no net charge).
        pulse_period_s: Length of each pulse [s].

    Example:
        >>> DEFAULT_DUTY.describe()
        '1 cycle/day, DoD 0.8 at 0.5C around SoC 0.5, 25 °C'
    """

    cycles_per_day: float = 1.0
    depth_of_discharge: float = 0.8
    c_rate: float = 0.5
    mean_soc: float = 0.5
    temperature_c: float = 25.0
    pulse_c_rate: float = 0.0
    pulse_period_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.cycles_per_day >= 0.0:
            raise ValueError(f"cycles_per_day must be >= 0, got {self.cycles_per_day}")
        if not 0.0 < self.depth_of_discharge <= 1.0:
            raise ValueError(f"depth_of_discharge must be in (0, 1], got {self.depth_of_discharge}")
        if not self.c_rate > 0.0:
            raise ValueError(f"c_rate must be > 0, got {self.c_rate}")
        half = self.depth_of_discharge / 2.0
        if not (half <= self.mean_soc <= 1.0 - half):
            raise ValueError(
                f"mean_soc {self.mean_soc} ± DoD/2 {half} leaves [0, 1]; lower the depth"
            )
        busy_h = 2.0 * self.depth_of_discharge / self.c_rate * self.cycles_per_day
        if busy_h > 24.0:
            raise ValueError(f"the duty needs {busy_h:.1f} h of cycling per day (> 24 h)")

    def describe(self) -> str:
        """One line for the forecast message's ``duty`` field."""
        cycles = f"{self.cycles_per_day:g} cycle{'s' if self.cycles_per_day != 1 else ''}/day"
        text = (
            f"{cycles}, DoD {self.depth_of_discharge:g} at {self.c_rate:g}C "
            f"around SoC {self.mean_soc:g}, {self.temperature_c:g} °C"
        )
        return text if self.pulse_c_rate == 0 else text + f", ±{self.pulse_c_rate:g}C pulses"

    def half_cycle_s(self) -> float:
        """Duration of one half-cycle [s]."""
        return self.depth_of_discharge / self.c_rate * 3600.0

    def current_profile(
        self, capacity_ah: FloatArray, dt_s: float, duration_s: float, *, seed: int = 0
    ) -> FloatArray:
        """Pack current per step, ``(steps, n_packs)`` [A], + = discharge.

        The first cycle starts at t = 0 from ``mean_soc + DoD/2`` (discharge first); cycles
        are spread evenly over the day. A step's current is the duty's mean over the step.

        Args:
            capacity_ah: Present pack capacity per pack [A.h].
            dt_s: Step length [s].
            duration_s: Length of the profile [s].
            seed: Seed of the pulses.
        """
        cap = np.atleast_1d(np.asarray(capacity_ah, dtype=np.float64))
        steps = int(np.ceil(duration_s / dt_s - 1e-9))
        sub = 10  # sub-samples per step: the mean current over a step
        t = (np.arange(steps * sub) + 0.5) * (dt_s / sub)
        shape = np.zeros(t.size)
        if self.cycles_per_day > 0:
            slot = 86400.0 / self.cycles_per_day
            phase = np.mod(t, slot)
            half = self.half_cycle_s()
            shape = np.where(phase < half, 1.0, np.where(phase < 2.0 * half, -1.0, 0.0))
        shape = shape.reshape(steps, sub).mean(axis=1) * self.c_rate
        if self.pulse_c_rate > 0:
            rng = np.random.default_rng(seed)
            n_pulses = int(np.ceil(steps * dt_s / self.pulse_period_s)) + 1
            # Pulses in pairs of opposite sign: they excite the resistance, move no net charge.
            first = rng.choice([-1.0, 1.0], size=((n_pulses + 1) // 2, cap.size))
            levels = np.repeat(first, 2, axis=0)[:n_pulses] * self.pulse_c_rate
            levels[1::2] *= -1.0
            which = (np.arange(steps) * dt_s // self.pulse_period_s).astype(np.int64)
            return np.asarray(shape[:, None] * cap[None, :] + levels[which] * cap[None, :])
        return np.asarray(shape[:, None] * cap[None, :])


DEFAULT_DUTY = Duty()
"""The duty a forecast assumes when the coordinator states none: one full-depth-0.8 cycle a
day at C/2 around 50 % SoC, 25 °C (a daily solar-shifting stationary battery)."""
