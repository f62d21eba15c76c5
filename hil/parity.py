"""Observation parity: does the runtime see, through the bus, what the twin's policy sees?

Each HIL tick the runtime builds its observation from decoded CAN telemetry and the twin
has its own. :class:`ObservationParity` compares the two and keeps the counts a verdict
needs. A tick is

* **compared** when no pack is held in the safe state; on such a tick a shape difference,
  a non-finite difference or an entry beyond the tolerance makes it a **mismatch** (a
  shape difference is never skipped: it means the manifest's layout is not the env's);
* **not comparable** when some pack is in the safe state (the runtime then feeds the
  policy held or placeholder values on purpose); these ticks are counted apart.

Parity holds when at least one tick was compared and none mismatched.

Forecast entries are left out of the difference: the bus carries no forecast, the runtime
fills them by persistence (see :mod:`pulsebms.edge_runtime.observation`). So are the
sources given as ``not_compared`` (e.g. ``soc`` when the BMS does not report it and the
runtime runs on its estimate: the HIL report rates the estimate separately).

Example:
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> soc = SimpleNamespace(name="soc", start=0, stop=2, source="soc")  # a layout field
    >>> parity = ObservationParity([soc], tolerance=0.01)
    >>> safe = np.zeros(2, dtype=bool)
    >>> parity.update(0, np.array([0.5, 0.6], np.float32), np.array([0.5, 0.6]), safe)
    >>> parity.ok
    True
    >>> parity.update(1, np.array([0.6, 0.5], np.float32), np.array([0.5, 0.6]), safe)
    >>> parity.ok, parity.compared_ticks, parity.mismatch_ticks
    (False, 2, 1)
    >>> parity.detail
    'tick 1: |runtime - twin| = 0.1 > 0.01 at entry 0 (soc)'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from pulsebms.core.types import AnyArray, BoolArray, FloatArray

__all__ = ["DEFAULT_OBS_TOLERANCE", "NOT_COMPARED_SOURCES", "ObservationParity"]

DEFAULT_OBS_TOLERANCE = 0.02
"""Largest |runtime − twin| per observation entry that still counts as equal.

The bus quantises telemetry (DBC steps: SoC 0.1 %, temperature 0.5 °C, cell voltage 1 mV,
current 0.1 A, demand 1 W, time of day 1 min); on the scaled FleetSmall observation that
measures ≈0.005. 0.02 leaves room for other fleets' scales while any layout error (a
swapped or shifted field) is far larger."""

NOT_COMPARED_SOURCES: tuple[str, ...] = ("demand_forecast_w", "price_forecast_per_kwh")
"""Observation sources the runtime cannot know from the bus (filled by persistence)."""


class _Field(Protocol):
    """What parity reads of an observation field (the runtime builder's ``fields``)."""

    @property
    def name(self) -> str: ...
    @property
    def start(self) -> int: ...
    @property
    def stop(self) -> int: ...
    @property
    def source(self) -> str: ...


class ObservationParity:
    """Running comparison of the runtime's observations with the twin's.

    Args:
        fields: The runtime's observation fields (``EdgeRuntime.builder.fields``): their
            slices say which entries are compared and name the entry that differs.
        tolerance: Largest absolute difference per entry still counted as equal.
        not_compared: Further observation sources left out (beside the forecasts).

    Attributes:
        compared_ticks: Ticks compared (no pack in the safe state).
        mismatch_ticks: Compared ticks that differed (shape, non-finite or beyond
            ``tolerance``).
        safe_ticks: Ticks not comparable because some pack was in the safe state.
        max_abs_diff: Largest finite difference over the compared ticks of equal shape.
        detail: What the first mismatch was (``None`` before any).
    """

    def __init__(
        self,
        fields: Sequence[_Field],
        *,
        tolerance: float = DEFAULT_OBS_TOLERANCE,
        not_compared: Sequence[str] = (),
    ):
        if not tolerance >= 0.0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.tolerance = float(tolerance)
        self._fields = tuple(sorted(fields, key=lambda f: f.start))
        size = max((f.stop for f in self._fields), default=0)
        mask = np.ones(size, dtype=bool)
        for f in self._fields:
            if f.source in NOT_COMPARED_SOURCES or f.source in not_compared:
                mask[f.start : f.stop] = False
        self._mask: BoolArray = mask
        self.compared_ticks = 0
        self.mismatch_ticks = 0
        self.safe_ticks = 0
        self.max_abs_diff = 0.0
        self.detail: str | None = None

    def _field_name(self, index: int) -> str:
        for f in self._fields:
            if f.start <= index < f.stop:
                return f.name
        return "?"

    def _mismatch(self, text: str) -> None:
        self.mismatch_ticks += 1
        if self.detail is None:
            self.detail = text

    def update(
        self, tick: int, runtime_obs: AnyArray, twin_obs: FloatArray, safe: BoolArray
    ) -> None:
        """Compare one tick.

        Args:
            tick: Control tick (from 0), named in :attr:`detail`.
            runtime_obs: The observation the runtime gave its policy.
            twin_obs: The twin's observation of the same state.
            safe: Per pack, whether the runtime holds it in the safe state.
        """
        if bool(np.any(safe)):
            self.safe_ticks += 1
            return
        self.compared_ticks += 1
        if runtime_obs.shape != twin_obs.shape or runtime_obs.shape != self._mask.shape:
            self._mismatch(
                f"tick {tick}: the runtime's observation has shape {runtime_obs.shape}, "
                f"the twin's {twin_obs.shape} (manifest layout {self._mask.shape})"
            )
            return
        diff = np.abs(runtime_obs.astype(np.float64) - twin_obs)[self._mask]
        d = float(diff.max()) if diff.size else 0.0
        if np.isfinite(d):
            self.max_abs_diff = max(self.max_abs_diff, d)
        if not bool(np.all(diff <= self.tolerance)):
            full = np.zeros(self._mask.shape)
            full[self._mask] = np.where(np.isnan(diff), np.inf, diff)
            worst = int(np.argmax(full))
            self._mismatch(
                f"tick {tick}: |runtime - twin| = {full[worst]:.3g} > {self.tolerance:g} "
                f"at entry {worst} ({self._field_name(worst)})"
            )

    @property
    def ok(self) -> bool:
        """Whether parity holds: some tick compared, none mismatched."""
        return self.compared_ticks > 0 and self.mismatch_ticks == 0

    def verdict(self) -> str:
        """One sentence for the report.

        Returns:
            Why parity holds or fails, with the counts.
        """
        counts = (
            f"{self.compared_ticks} ticks compared, {self.mismatch_ticks} mismatched, "
            f"{self.safe_ticks} not comparable (a pack in the safe state)"
        )
        if self.compared_ticks == 0:
            return f"FAIL: no tick compared ({counts})"
        if self.mismatch_ticks:
            return f"FAIL: {counts}; first: {self.detail}"
        return f"ok: {counts}; max |diff| {self.max_abs_diff:.3g} <= {self.tolerance:g}"
