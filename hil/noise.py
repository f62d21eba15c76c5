"""Seeded sensor-noise model of a pack's measurements (what a real BMS reports).

:class:`SensorNoise` turns the twin's exact values into readings with the errors of typical
BMS sensors. Per pack it draws, once from its seed:

* a **current gain error** uniform in ``±current_gain_error`` (0.5 %) and a **current offset**
  uniform in ``±current_offset_a``;
* a **voltage offset** uniform in ``±voltage_offset_v``;
* a **temperature offset** uniform in ``±temperature_offset_c``;

and adds, on every reading, **white noise** uniform in ``±voltage_noise_v`` (10 mV),
``±current_noise_a`` and ``±temperature_noise_c``. Uniform (bounded) errors match how sensor
accuracy is specified (``±x``). The same seed gives the same readings, bit for bit.
SoC and SoH are passed through: they are the BMS's own estimates, not sensor readings.

Example:
    >>> noise = SensorNoise(n_packs=2, seed=1)
    >>> a = noise.apply(0, {"cell_voltage_v": 3.7, "current_a": 10.0, "soc": 0.5})
    >>> abs(a["cell_voltage_v"] - 3.7) <= 0.0101, a["soc"]
    (True, 0.5)
    >>> b = SensorNoise(n_packs=2, seed=1).apply(0, {"cell_voltage_v": 3.7, "current_a": 10.0})
    >>> a["cell_voltage_v"] == b["cell_voltage_v"]
    True
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["SensorNoise"]

_VOLTAGE_KEYS = ("cell_voltage_v", "cell_voltage_min_v", "cell_voltage_max_v")
_TEMPERATURE_KEYS = ("temperature_c", "temperature_min_c", "temperature_max_c")


class SensorNoise:
    """Per-pack sensor errors: fixed gain/offsets plus bounded white noise (seeded).

    Args:
        n_packs: Number of packs.
        seed: Seed of every draw (offsets at construction, then the white noise).
        voltage_noise_v: Bound of the white noise on cell voltages [V].
        voltage_offset_v: Bound of the fixed per-pack voltage offset [V].
        current_gain_error: Bound of the fixed per-pack relative current gain error.
        current_offset_a: Bound of the fixed per-pack current offset [A].
        current_noise_a: Bound of the white noise on the current [A].
        temperature_offset_c: Bound of the fixed per-pack temperature offset [K].
        temperature_noise_c: Bound of the white noise on temperatures [K].

    Raises:
        ValueError: On a negative bound or ``n_packs < 1``.
    """

    def __init__(
        self,
        n_packs: int,
        *,
        seed: int = 0,
        voltage_noise_v: float = 0.010,
        voltage_offset_v: float = 0.0,
        current_gain_error: float = 0.005,
        current_offset_a: float = 0.1,
        current_noise_a: float = 0.1,
        temperature_offset_c: float = 0.5,
        temperature_noise_c: float = 0.2,
    ) -> None:
        bounds = {
            "voltage_noise_v": voltage_noise_v,
            "voltage_offset_v": voltage_offset_v,
            "current_gain_error": current_gain_error,
            "current_offset_a": current_offset_a,
            "current_noise_a": current_noise_a,
            "temperature_offset_c": temperature_offset_c,
            "temperature_noise_c": temperature_noise_c,
        }
        for name, value in bounds.items():
            if not (np.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if n_packs < 1:
            raise ValueError(f"n_packs must be >= 1, got {n_packs}")
        self.n_packs = int(n_packs)
        self.voltage_noise_v = float(voltage_noise_v)
        self.current_noise_a = float(current_noise_a)
        self.temperature_noise_c = float(temperature_noise_c)
        self._rng = np.random.default_rng(seed)
        self.current_gain = 1.0 + self._rng.uniform(-1.0, 1.0, n_packs) * current_gain_error
        """Fixed current gain per pack (reading = gain × true + offset + noise)."""
        self.current_offset_a = self._rng.uniform(-1.0, 1.0, n_packs) * current_offset_a
        """Fixed current offset per pack [A]."""
        self.voltage_offset_v = self._rng.uniform(-1.0, 1.0, n_packs) * voltage_offset_v
        """Fixed voltage offset per pack [V]."""
        self.temperature_offset_c = self._rng.uniform(-1.0, 1.0, n_packs) * temperature_offset_c
        """Fixed temperature offset per pack [K]."""

    def _white(self, bound: float) -> float:
        return float(self._rng.uniform(-bound, bound)) if bound > 0.0 else 0.0

    def apply(self, pack: int, values: Mapping[str, float]) -> dict[str, float]:
        """Readings of one pack: ``values`` with its sensor errors added.

        Keys it knows (cell voltages, ``current_a``, temperatures) get their errors; other
        keys (``soc``, ``soh``, …) are copied. Non-finite values stay as they are.

        Args:
            pack: Pack index.
            values: Exact values by quantity name.

        Returns:
            A new dict of readings.

        Raises:
            IndexError: If ``pack`` is out of range.
        """
        if not 0 <= pack < self.n_packs:
            raise IndexError(f"pack {pack} out of range for {self.n_packs} packs")
        out = dict(values)
        for key in _VOLTAGE_KEYS:
            if key in out:
                out[key] = (
                    float(out[key])
                    + float(self.voltage_offset_v[pack])
                    + self._white(self.voltage_noise_v)
                )
        if "current_a" in out:
            out["current_a"] = (
                float(self.current_gain[pack]) * float(out["current_a"])
                + float(self.current_offset_a[pack])
                + self._white(self.current_noise_a)
            )
        for key in _TEMPERATURE_KEYS:
            if key in out:
                out[key] = (
                    float(out[key])
                    + float(self.temperature_offset_c[pack])
                    + self._white(self.temperature_noise_c)
                )
        return out
