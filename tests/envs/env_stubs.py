"""A tiny numpy stand-in twin for the FleetEnv tests (imported as ``env_stubs``).

``StubTwin`` is a **test-only** stand-in for :class:`pulsebms.envs.twin.base.FleetTwin`:
a linear open-circuit voltage, a series resistance, a lumped thermal mass and a fade
proportional to charge throughput. It is not a battery model. Env tests use it where they
check the env's own logic (faults injected on demand, memory, vectorisation speed); the
registered ids and the checker tests use the real twin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin.base import PackStates
from pulsebms.safety.state import PackRatings

_WINDOW_V = {
    "LFP": (2.0, 3.6, 3.0, 3.4),
    "NMC": (2.5, 4.2, 3.3, 4.1),
    "LCO": (3.105, 4.1, 3.5, 4.05),
}
_CELL_AH = {"LFP": 2.3, "NMC": 5.0, "LCO": 0.68}


class StubTwin:
    """Test-only deterministic twin (see the module docstring)."""

    def __init__(
        self,
        packs: Sequence[PackSpec],
        *,
        fidelity: str = "ecm",
        degradation_acceleration: float = 1.0,
        fault_below_soc: float = -1.0,
    ) -> None:
        self.packs = tuple(packs)
        self.fidelity = fidelity
        self.acc = degradation_acceleration
        self.fault_below_soc = fault_below_soc
        chem = tuple(p.chemistry for p in self.packs)
        cell_ah = np.array([_CELL_AH[c] for c in chem])
        series = np.array([p.series for p in self.packs], dtype=np.int64)
        parallel = np.array([p.parallel for p in self.packs], dtype=np.int64)
        v_nom = np.array([(_WINDOW_V[c][2] + _WINDOW_V[c][3]) / 2 for c in chem])
        rated = np.array(
            [
                p.rated_power_w
                if p.rated_power_w is not None
                else cell_ah[i] * parallel[i] * series[i] * v_nom[i]
                for i, p in enumerate(self.packs)
            ]
        )
        self.ratings = PackRatings(chem, series, parallel, cell_ah, rated)
        self.nominal_cell_voltage_v = v_nom
        self._ocv = np.array([[_WINDOW_V[c][2], _WINDOW_V[c][3]] for c in chem])
        self._vmin = np.array([_WINDOW_V[c][0] for c in chem])
        self._vmax = np.array([_WINDOW_V[c][1] for c in chem])
        self._r_cell = 0.02
        self.reset()

    def _report(self) -> PackStates:
        return PackStates(
            soc=self._soc.copy(),
            soh=self._soh.copy(),
            cell_voltage_v=self._v.copy(),
            pack_voltage_v=self._v * self.ratings.series,
            current_a=self._i.copy(),
            power_w=self._p.copy(),
            temperature_c=self._t.copy(),
            faulted=self._faulted.copy(),
            fault_reason=tuple(self._reason),
        )

    def reset(self) -> PackStates:
        n = len(self.packs)
        self._soc = np.array([p.initial_soc for p in self.packs], dtype=np.float64)
        self._soh = np.array([p.initial_soh for p in self.packs], dtype=np.float64)
        self._t = np.array(
            [
                25.0 if p.initial_temperature_c is None else p.initial_temperature_c
                for p in self.packs
            ]
        )
        self._i = np.zeros(n)
        self._p = np.zeros(n)
        self._faulted = np.zeros(n, dtype=bool)
        self._reason = [""] * n
        self._v = self._ocv_of(self._soc)
        return self._report()

    def _ocv_of(self, soc: Any) -> Any:
        return self._ocv[:, 0] + soc * (self._ocv[:, 1] - self._ocv[:, 0])

    def set_state(
        self, *, soc: Any = None, soh: Any = None, temperature_c: Any = None
    ) -> PackStates:
        if soc is not None:
            self._soc = np.broadcast_to(np.asarray(soc, dtype=np.float64), self._soc.shape).copy()
        if soh is not None:
            self._soh = np.broadcast_to(np.asarray(soh, dtype=np.float64), self._soh.shape).copy()
        if temperature_c is not None:
            self._t = np.broadcast_to(
                np.asarray(temperature_c, dtype=np.float64), self._t.shape
            ).copy()
        self._v = self._ocv_of(self._soc) - self._i / self.ratings.parallel * self._r_cell
        return self._report()

    def state(self) -> PackStates:
        return self._report()

    def step(self, power_w: Any, dt_s: float, ambient_c: Any) -> PackStates:
        ocv = self._ocv_of(self._soc)
        current = np.asarray(power_w, dtype=np.float64) / (ocv * self.ratings.series)
        return self.step_current(current, dt_s, ambient_c)

    def step_current(self, current_a: Any, dt_s: float, ambient_c: Any) -> PackStates:
        current = np.where(self._faulted, 0.0, np.asarray(current_a, dtype=np.float64))
        cap_ah = self.ratings.capacity_ah * self._soh
        soc = self._soc - current * dt_s / 3600.0 / cap_ah
        cell_i = current / self.ratings.parallel
        v = self._ocv_of(np.clip(soc, 0.0, 1.0)) - cell_i * self._r_cell
        bad = ~self._faulted & (
            (soc < self.fault_below_soc)
            | (soc < 0.0)
            | (soc > 1.0)
            | (v < self._vmin)
            | (v > self._vmax)
        )
        for i in np.flatnonzero(bad):
            self._reason[i] = "voltage cut-off"
        self._faulted |= bad
        ok = ~self._faulted
        self._soc = np.where(ok, soc, self._soc)
        self._v = np.where(ok, v, self._v)
        self._i = np.where(ok, current, 0.0)
        self._p = self._i * self._v * self.ratings.series
        heat = cell_i**2 * self._r_cell * 4.0
        self._t = self._t + dt_s * (heat - 0.05 * (self._t - np.asarray(ambient_c))) / 200.0
        self._soh = self._soh - self.acc * 1e-6 * np.abs(cell_i) * dt_s / 3600.0
        return self._report()


def stub_factory(**extra: Any) -> Any:
    """A ``twin_factory`` building :class:`StubTwin` with extra keyword arguments."""

    def factory(packs: Sequence[PackSpec], **kwargs: Any) -> StubTwin:
        return StubTwin(packs, **kwargs, **extra)

    return factory
