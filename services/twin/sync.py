"""The fleet twin kept in step with measurements; its voltage prediction error tracked.

:class:`FleetMirror` holds one fleet twin (:func:`pulsebms.envs.twin.make_twin`, fidelity of
choice, fade off: SoH comes from outside) for the packs of a site. Between synchronisations
it runs **open loop on the measured currents** (each pack's latest current held until the
next report); every report's pack voltage is compared with the twin's prediction at that
time, and the error is tracked per pack (last error, and an exponentially weighted RMSE over
``error_window_s``). Every ``resync_period_s`` (and after a gap longer than ``max_gap_s``, or
a twin fault) the whole fleet is synchronised to the latest measurements through the twin's
hook :meth:`~pulsebms.envs.twin.base.FleetTwin.set_state`: SoC and temperature as measured,
SoH from the calibration where there is one, else as the BMS reports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray
from pulsebms.envs.pack import PackSpec
from pulsebms.envs.twin import make_twin

__all__ = ["FleetMirror"]


class FleetMirror:
    """A fleet twin synchronised to telemetry (see the module docstring).

    Args:
        packs: Pack id → spec, in the order of every array.
        fidelity: Twin fidelity (``"ecm"`` default, or ``"physics"``).
        resync_period_s: Time between synchronisations of the whole fleet [s].
        max_gap_s: A longer silence is not bridged by holding the current: resync instead.
        error_window_s: Time constant of the RMSE's exponential weighting [s].
        twin_kwargs: More arguments of :func:`~pulsebms.envs.twin.make_twin`.

    Example:
        >>> import numpy as np
        >>> from pulsebms.envs.pack import PackSpec
        >>> mirror = FleetMirror({"a": PackSpec("NMC")})
        >>> mirror.observe(0.0, ["a"], soc=[0.5], soh=[1.0], current_a=[0.0],
        ...                voltage_v=[51.0], temperature_c=[25.0])
        >>> mirror.observe(10.0, ["a"], soc=[0.5], soh=[1.0], current_a=[10.0],
        ...                voltage_v=[50.5], temperature_c=[25.0])
        >>> bool(np.isfinite(mirror.last_error_v[0])), mirror.synchronisations
        (True, 1)
    """

    def __init__(
        self,
        packs: Mapping[str, PackSpec],
        *,
        fidelity: str = "ecm",
        resync_period_s: float = 300.0,
        max_gap_s: float = 120.0,
        error_window_s: float = 3600.0,
        twin_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not packs:
            raise ValueError("a mirror needs at least one pack")
        self.pack_ids = tuple(packs)
        self.index = {pid: k for k, pid in enumerate(self.pack_ids)}
        self.twin = make_twin(
            list(packs.values()), fidelity, degradation="none", **dict(twin_kwargs or {})
        )
        self.series = np.asarray(self.twin.ratings.series, dtype=np.float64)
        n = len(self.pack_ids)
        self.resync_period_s = float(resync_period_s)
        self.max_gap_s = float(max_gap_s)
        self.error_window_s = float(error_window_s)
        self.t_s: float | None = None
        self.last_sync_s: float | None = None
        self.synchronisations = 0
        self.current_a = np.zeros(n)
        """Latest measured pack current per pack [A] (held between reports)."""
        self.measured_soc = np.full(n, np.nan)
        self.measured_soh = np.full(n, np.nan)
        self.measured_temperature_c = np.full(n, np.nan)
        self.calibrated_soh = np.full(n, np.nan)
        """SoH from the latest calibration (NaN: none yet); used at synchronisation."""
        self.last_error_v = np.full(n, np.nan)
        """Measured − predicted pack voltage at the latest report [V]."""
        self._mse = np.full(n, np.nan)
        self.errors = np.zeros(n, dtype=np.int64)
        """Predictions compared per pack."""
        self._last_seen_s = np.full(n, np.nan)

    @property
    def voltage_rmse_v(self) -> FloatArray:
        """Exponentially weighted RMSE of the pack voltage prediction [V] (NaN: none yet)."""
        return np.asarray(np.sqrt(self._mse), dtype=np.float64)

    def predicted_voltage_v(self) -> FloatArray:
        """The twin's pack voltage now [V]."""
        return np.asarray(self.twin.state().pack_voltage_v, dtype=np.float64)

    def observe(
        self,
        t_s: float,
        pack_ids: Sequence[str],
        *,
        soc: Sequence[float] | FloatArray,
        soh: Sequence[float] | FloatArray,
        current_a: Sequence[float] | FloatArray,
        voltage_v: Sequence[float] | FloatArray,
        temperature_c: Sequence[float] | FloatArray,
    ) -> None:
        """Take one report of some packs at ``t_s`` (non-finite values: not measured).

        Unknown pack ids are ignored. A report a little older than the twin's time (another
        device's clock) is compared with the twin as it is; one older than ``max_gap_s``
        only updates the stored measurements.
        """
        rows = [self.index.get(p, -1) for p in pack_ids]
        known = np.array([r >= 0 for r in rows], dtype=bool)
        if not np.any(known):
            return
        idx = np.array([r for r in rows if r >= 0], dtype=np.int64)

        def pick(values: Sequence[float] | FloatArray) -> FloatArray:
            return np.asarray(np.asarray(values, dtype=np.float64)[known], dtype=np.float64)

        soc_m, soh_m, cur_m = pick(soc), pick(soh), pick(current_a)
        volt_m, temp_m = pick(voltage_v), pick(temperature_c)
        for target, values in (
            (self.measured_soc, soc_m),
            (self.measured_soh, soh_m),
            (self.measured_temperature_c, temp_m),
        ):
            ok = np.isfinite(values)
            target[idx[ok]] = values[ok]
        if self.t_s is not None and self.t_s - t_s > self.max_gap_s:
            return  # too old to compare with the twin
        cur_ok = np.isfinite(cur_m)
        state = None
        gap = np.inf if self.t_s is None else t_s - self.t_s
        if gap > 0.0 and gap <= self.max_gap_s:
            held = self.current_a.copy()
            held[idx[cur_ok]] = cur_m[cur_ok]
            state = self.twin.step_current(held, gap, self._ambient())
        elif gap <= 0.0:
            # Another device's report, a little behind the twin's time (devices publish on
            # their own clocks): compared with the twin as it is now.
            state = self.twin.state()
        if state is not None:
            predicted = state.pack_voltage_v[idx]
            measured_ok = np.isfinite(volt_m) & ~state.faulted[idx]
            k = idx[measured_ok]
            e = (volt_m - predicted)[measured_ok]
            self.last_error_v[k] = e
            since = np.where(np.isfinite(self._last_seen_s[k]), t_s - self._last_seen_s[k], 0.0)
            weight = 1.0 - np.exp(-np.maximum(since, 0.0) / self.error_window_s)
            old = self._mse[k]
            self._mse[k] = np.where(np.isnan(old), e * e, old + weight * (e * e - old))
            self.errors[k] += 1
        self.current_a[idx[cur_ok]] = cur_m[cur_ok]
        self._last_seen_s[idx] = np.fmax(self._last_seen_s[idx], t_s)
        if self.t_s is None or t_s > self.t_s:
            self.t_s = float(t_s)
        due = (
            self.last_sync_s is None
            or self.t_s - self.last_sync_s >= self.resync_period_s
            or gap > self.max_gap_s
            or bool(np.any(self.twin.state().faulted))
        )
        if due:
            self.synchronise()

    def _ambient(self) -> FloatArray:
        temp = self.measured_temperature_c
        return np.where(np.isfinite(temp), temp, 25.0)

    def synchronise(self) -> BoolArray:
        """Set every pack's twin to its latest measurements; returns the packs set.

        Packs never measured keep their twin state. A faulted twin is reset first (its
        faults cleared), so a pack the twin could not follow is followed again.
        """
        state = self.twin.state()
        if np.any(state.faulted):
            state = self.twin.reset()
        measured = np.isfinite(self.measured_soc)
        soc = np.where(measured, np.clip(self.measured_soc, 0.0, 1.0), state.soc)
        temp = np.where(np.isfinite(self.measured_temperature_c), self.measured_temperature_c,
                        state.temperature_c)  # fmt: skip
        soh = np.where(
            np.isfinite(self.calibrated_soh),
            self.calibrated_soh,
            np.where(np.isfinite(self.measured_soh), self.measured_soh, state.soh),
        )
        soh = np.clip(soh, 1e-3, 1.0)
        self.twin.set_state(soc=soc, soh=soh, temperature_c=temp)
        self.last_sync_s = self.t_s
        self.synchronisations += 1
        return np.asarray(measured, dtype=bool)
