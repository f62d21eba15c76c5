"""A pack's telemetry over a time window, as the calibration reads it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pulsebms.core.types import BoolArray, FloatArray

__all__ = ["PackWindow", "pad_windows"]


@dataclass(frozen=True)
class PackWindow:
    """One pack's samples in time order (pack-level quantities, as telemetry reports them).

    A sample at ``t_s[k]`` reports the voltage at that time and the current held over
    ``(t_s[k-1], t_s[k]]`` (what a BMS averages between two reports, and what the twins
    report after a step).

    Attributes:
        t_s: Sample times [s], increasing.
        current_a: Pack current [A], + = discharge.
        voltage_v: Pack terminal voltage [V].
        temperature_c: Pack temperature [°C].
        soc: State of charge the BMS reports (NaN where unknown).
    """

    t_s: FloatArray
    current_a: FloatArray
    voltage_v: FloatArray
    temperature_c: FloatArray
    soc: FloatArray

    @classmethod
    def from_columns(cls, columns: Mapping[str, npt.NDArray[np.float64]]) -> PackWindow:
        """From a store query's columns (:meth:`TelemetryStore.query`).

        Rows with a non-finite time, current, voltage or temperature, and rows whose time
        does not increase, are dropped.

        Example:
            >>> w = PackWindow.from_columns({"t_s": np.array([0.0, 10.0, 10.0]),
            ...     "current_a": np.ones(3), "voltage_v": np.full(3, 50.0),
            ...     "temperature_c": np.full(3, 25.0), "soc": np.full(3, 0.5)})
            >>> w.t_s.tolist()
            [0.0, 10.0]
        """
        t = np.asarray(columns["t_s"], dtype=np.float64)
        cur = np.asarray(columns["current_a"], dtype=np.float64)
        volt = np.asarray(columns["voltage_v"], dtype=np.float64)
        temp = np.asarray(columns["temperature_c"], dtype=np.float64)
        soc = np.asarray(columns.get("soc", np.full(t.shape, np.nan)), dtype=np.float64)
        ok = np.isfinite(t) & np.isfinite(cur) & np.isfinite(volt) & np.isfinite(temp)
        t, cur, volt, temp, soc = t[ok], cur[ok], volt[ok], temp[ok], soc[ok]
        order = np.argsort(t, kind="stable")
        t, cur, volt, temp, soc = t[order], cur[order], volt[order], temp[order], soc[order]
        keep = np.ones(t.shape, dtype=bool)
        keep[1:] = np.diff(t) > 0
        return cls(t[keep], cur[keep], volt[keep], temp[keep], soc[keep])

    @property
    def n_samples(self) -> int:
        """Number of samples."""
        return int(self.t_s.size)

    def since_rest(
        self, min_rest_s: float, current_threshold_a: float, min_samples: int
    ) -> PackWindow | None:
        """The part of the window from the end of its latest long rest, or None.

        A rest is a run of samples with ``|current| <= current_threshold_a`` lasting at least
        ``min_rest_s``; the part starts at its last sample (the pack at rest, with the SoC
        the BMS reported there) and must hold ``min_samples`` samples. What a physics
        calibration needs (:mod:`pulsebms.services.twin.electrode`).

        Example:
            >>> t = np.arange(100.0) * 60.0
            >>> i = np.where(t < 1800.0, 0.0, 5.0)
            >>> w = PackWindow(t, i, np.full(100, 50.0), np.full(100, 25.0), np.full(100, 0.5))
            >>> w.since_rest(600.0, 0.1, 20).t_s[0]
            np.float64(1740.0)
        """
        if self.n_samples < 2:
            return None
        rest = np.abs(self.current_a) <= current_threshold_a
        best: int | None = None
        k = 0
        n = self.n_samples
        while k < n:
            if not rest[k]:
                k += 1
                continue
            j = k
            while j + 1 < n and rest[j + 1]:
                j += 1
            # Samples k..j are at rest; the current of sample k is held over (t[k-1], t[k]].
            start_t = self.t_s[k - 1] if k > 0 else self.t_s[k]
            long_enough = self.t_s[j] - start_t >= min_rest_s
            if long_enough and n - j >= min_samples and np.isfinite(self.soc[j]):
                best = j
            k = j + 1
        if best is None:
            return None
        sl = slice(best, None)
        return PackWindow(
            self.t_s[sl], self.current_a[sl], self.voltage_v[sl], self.temperature_c[sl],
            self.soc[sl],
        )  # fmt: skip

    def throughput_ah(self) -> float:
        """Charge moved over the window, |I|·dt summed [A.h]."""
        if self.n_samples < 2:
            return 0.0
        return float(np.sum(np.abs(self.current_a[1:]) * np.diff(self.t_s)) / 3600.0)


def pad_windows(
    windows: Sequence[PackWindow],
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, BoolArray]:
    """Stack windows of different lengths: ``dt, current, voltage, temperature, mask``.

    Each is ``(n_windows, longest)``; ``dt[:, 0] = 0`` and padded entries have ``dt = 0``,
    zero current and ``mask`` False (the first sample, the initial state, is masked too).
    """
    m = max((w.n_samples for w in windows), default=0)
    n = len(windows)
    dt = np.zeros((n, m))
    cur = np.zeros((n, m))
    volt = np.zeros((n, m))
    temp = np.full((n, m), 25.0)
    mask = np.zeros((n, m), dtype=bool)
    for k, w in enumerate(windows):
        s = w.n_samples
        if s == 0:
            continue
        dt[k, 1:s] = np.diff(w.t_s)
        cur[k, :s] = w.current_a
        volt[k, :s] = w.voltage_v
        temp[k, :s] = w.temperature_c
        temp[k, s:] = w.temperature_c[-1]
        mask[k, 1:s] = True
    return dt, cur, volt, temp, mask
