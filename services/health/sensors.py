"""What a BMS reports of the twin's exact state: sensor errors, SoC error, quantisation.

:class:`SensorModel` is the vectorised measurement model of the fleet histories (all packs
in one call). Per pack it draws once, from its seed, a current gain error (uniform in
``±current_gain_error``), a current offset (``±current_offset_a``) and a temperature offset
(``±temperature_offset_c``); on every reading it adds bounded white noise to current, cell
voltage and temperature — the same error model as :class:`pulsebms.hil.noise.SensorNoise`
(which works per pack and per dict, for the CAN rehearsal). It adds what a health model
must live with on top:

* the **BMS SoC error**: uniform in ``±soc_error`` per reading, by chemistry (LFP's flat
  open-circuit voltage makes its SoC harder to estimate: 2 % against 1 % for NMC/LCO by
  default);
* the **BMS SoH** reading: the true SoH plus a fixed per-pack bias (``±soh_bias``): a BMS's
  own SoH is not the truth, and the health models do not use it;
* **quantisation** to the project DBC's resolutions (cell voltage 1 mV, current 0.1 A,
  temperature 0.5 °C, SoC and SoH 0.1 %: ``edge_runtime/data/pulsebms.dbc``).

Example:
    >>> import numpy as np
    >>> model = SensorModel(["LFP", "NMC"], seed=3)
    >>> r = model.read(np.array([10.0, -5.0]), np.array([3.3, 3.7]), np.array([25.0, 30.0]),
    ...                np.array([0.5, 0.5]), np.array([1.0, 0.9]), series=np.array([16, 14]))
    >>> r.temperature_c.tolist() == [round(x * 2) / 2 for x in r.temperature_c.tolist()]
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pulsebms.core.types import FloatArray, IntArray

__all__ = ["DEFAULT_SOC_ERROR", "Readings", "SensorModel"]

DEFAULT_SOC_ERROR = {"LFP": 0.02, "NMC": 0.01, "LCO": 0.01}
"""Bound of the BMS's SoC error per reading, by chemistry (fraction)."""

_RESOLUTION = {
    "cell_voltage_v": 0.001,
    "current_a": 0.1,
    "temperature_c": 0.5,
    "soc": 0.001,
    "soh": 0.001,
}


@dataclass(frozen=True)
class Readings:
    """One reading of every pack (arrays of shape ``(n_packs,)``).

    Attributes:
        current_a: Measured pack current [A], + = discharge.
        voltage_v: Measured pack voltage [V] (series × quantised cell reading).
        temperature_c: Measured temperature [°C].
        soc: BMS state of charge.
        soh: BMS state of health (biased; not used by the health models).
    """

    current_a: FloatArray
    voltage_v: FloatArray
    temperature_c: FloatArray
    soc: FloatArray
    soh: FloatArray


def _quantise(value: FloatArray, step: float) -> FloatArray:
    return np.round(value / step) * step


class SensorModel:
    """Seeded measurement model of a fleet's BMS readings (see the module docstring).

    Args:
        chemistries: Chemistry per pack (sets the SoC error bound).
        seed: Seed of the per-pack errors and the white noise.
        voltage_noise_v: White noise bound on the cell voltage [V].
        current_gain_error: Fixed relative current gain error bound.
        current_offset_a: Fixed current offset bound [A].
        current_noise_a: White noise bound on the current [A].
        temperature_offset_c: Fixed temperature offset bound [K].
        temperature_noise_c: White noise bound on the temperature [K].
        soc_error: SoC error bound by chemistry (default :data:`DEFAULT_SOC_ERROR`).
        soh_bias: Fixed BMS SoH bias bound.
        quantise: Round readings to the DBC resolutions.

    Raises:
        ValueError: On a negative bound or a chemistry without a SoC error bound.
    """

    def __init__(
        self,
        chemistries: Sequence[str],
        *,
        seed: int = 0,
        voltage_noise_v: float = 0.002,
        current_gain_error: float = 0.005,
        current_offset_a: float = 0.05,
        current_noise_a: float = 0.05,
        temperature_offset_c: float = 0.5,
        temperature_noise_c: float = 0.2,
        soc_error: dict[str, float] | None = None,
        soh_bias: float = 0.03,
        quantise: bool = True,
    ) -> None:
        bounds = {
            "voltage_noise_v": voltage_noise_v,
            "current_gain_error": current_gain_error,
            "current_offset_a": current_offset_a,
            "current_noise_a": current_noise_a,
            "temperature_offset_c": temperature_offset_c,
            "temperature_noise_c": temperature_noise_c,
            "soh_bias": soh_bias,
        }
        for name, value in bounds.items():
            if not (np.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        errors = DEFAULT_SOC_ERROR if soc_error is None else soc_error
        missing = sorted({c for c in chemistries if c not in errors})
        if missing:
            raise ValueError(f"no SoC error bound for {missing}; give soc_error")
        n = len(chemistries)
        self._rng = np.random.default_rng(seed)
        self.voltage_noise_v = float(voltage_noise_v)
        self.current_noise_a = float(current_noise_a)
        self.temperature_noise_c = float(temperature_noise_c)
        self.quantise = bool(quantise)
        self.soc_error = np.array([errors[c] for c in chemistries], dtype=np.float64)
        self.current_gain = 1.0 + self._rng.uniform(-1.0, 1.0, n) * current_gain_error
        """Fixed current gain per pack."""
        self.current_offset_a = self._rng.uniform(-1.0, 1.0, n) * current_offset_a
        """Fixed current offset per pack [A]."""
        self.temperature_offset_c = self._rng.uniform(-1.0, 1.0, n) * temperature_offset_c
        """Fixed temperature offset per pack [K]."""
        self.soh_bias = self._rng.uniform(-1.0, 1.0, n) * soh_bias
        """Fixed BMS SoH bias per pack."""

    def read(
        self,
        current_a: FloatArray,
        cell_voltage_v: FloatArray,
        temperature_c: FloatArray,
        soc: FloatArray,
        soh: FloatArray,
        *,
        series: IntArray,
    ) -> Readings:
        """The BMS readings of every pack for one sample of exact values.

        Args:
            current_a: Pack current through the sensor [A].
            cell_voltage_v: Cell terminal voltage [V].
            temperature_c: Cell temperature [°C].
            soc: True state of charge.
            soh: True state of health.
            series: Cells in series per pack (pack voltage = series × cell reading).

        Returns:
            The :class:`Readings`.
        """
        n = self.soc_error.size
        rng = self._rng
        i = (
            self.current_gain * current_a
            + self.current_offset_a
            + rng.uniform(-1.0, 1.0, n) * self.current_noise_a
        )
        v = cell_voltage_v + rng.uniform(-1.0, 1.0, n) * self.voltage_noise_v
        temp = (
            temperature_c
            + self.temperature_offset_c
            + rng.uniform(-1.0, 1.0, n) * self.temperature_noise_c
        )
        soc_read = np.clip(soc + rng.uniform(-1.0, 1.0, n) * self.soc_error, 0.0, 1.0)
        soh_read = np.clip(soh + self.soh_bias, 0.0, 1.5)
        if self.quantise:
            i = _quantise(i, _RESOLUTION["current_a"])
            v = _quantise(v, _RESOLUTION["cell_voltage_v"])
            temp = _quantise(temp, _RESOLUTION["temperature_c"])
            soc_read = _quantise(soc_read, _RESOLUTION["soc"])
            soh_read = _quantise(soh_read, _RESOLUTION["soh"])
        return Readings(
            current_a=i,
            voltage_v=v * series,
            temperature_c=temp,
            soc=soc_read,
            soh=soh_read,
        )
