"""Clocks the site services run on: the wall clock, or an accelerated one for demos and tests.

A clock is any ``() -> float`` returning UNIX seconds (:data:`Clock`). Every period,
debounce and staleness of the coordinator is measured on it, so a fleet demo that runs 60×
faster than real time re-plans its "600 s" period every 10 wall seconds.

Example:
    >>> clock = AcceleratedClock(speed=60.0, start_s=1_000.0)
    >>> 1_000.0 <= clock() < 1_000.0 + 60.0 * 5.0
    True
    >>> clock.wall_seconds(600.0)
    10.0
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["AcceleratedClock", "Clock", "wall_clock"]

Clock = Callable[[], float]
"""A clock: returns the present time [UNIX s]."""


def wall_clock() -> float:
    """The real time [UNIX s] (``time.time``)."""
    return time.time()


class AcceleratedClock:
    """Simulated time that runs ``speed`` times faster than the wall clock.

    Args:
        speed: Simulated seconds per wall second (> 0; 1 = real time).
        start_s: Simulated time at construction [UNIX s]; now by default.

    Raises:
        ValueError: If ``speed`` is not positive.
    """

    def __init__(self, speed: float = 1.0, start_s: float | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = float(speed)
        self.start_s = time.time() if start_s is None else float(start_s)
        self._t0 = time.monotonic()

    def __call__(self) -> float:
        """The simulated time now [UNIX s]."""
        return self.start_s + (time.monotonic() - self._t0) * self.speed

    def wall_seconds(self, simulated_s: float) -> float:
        """How many wall seconds ``simulated_s`` simulated seconds take."""
        return simulated_s / self.speed
