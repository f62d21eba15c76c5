"""Read a flat FleetEnv observation by its named layout.

Rule baselines and the MPC never index the observation vector with magic numbers: they ask
an :class:`ObservationReader`, built from the environment's named layout, for the fields they
need (per-pack SoC, SoH, temperature; site demand now and forecast; price).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pulsebms.agents.type_aliases import FloatArray, ObsArray

__all__ = ["FleetObservation", "ObservationReader"]


@dataclass(frozen=True)
class FleetObservation:
    """The fields of one observation that controllers use, in physical units.

    Attributes:
        soc: State of charge per pack, fraction.
        soh: State of health per pack, fraction.
        temperature_c: Pack temperature per pack [°C].
        demand_w: Site power demand now [W], + = the fleet should discharge.
        demand_forecast_w: Forecast site demand for the next steps [W] (may be empty).
        price_per_kwh: Energy price now [currency/kWh].
        price_forecast_per_kwh: Forecast price for the next steps (may be empty).
        cell_voltage_v: Cell terminal voltage per pack [V] (empty when not observed).
        current_c_rate: Last pack current / nominal capacity per pack [1/h], + = discharge
            (empty when not observed).
    """

    soc: FloatArray
    soh: FloatArray
    temperature_c: FloatArray
    demand_w: float
    demand_forecast_w: FloatArray
    price_per_kwh: float
    price_forecast_per_kwh: FloatArray
    cell_voltage_v: FloatArray
    current_c_rate: FloatArray


def _slice_of(entry: Any) -> slice:
    if isinstance(entry, slice):
        return entry
    if isinstance(entry, tuple | list) and len(entry) == 2:
        return slice(int(entry[0]), int(entry[1]))
    raise TypeError(f"layout entry must be a slice or a (start, stop) pair, got {entry!r}")


class ObservationReader:
    """Extract named fields from a flat observation.

    Args:
        layout: Field name → slice (or ``(start, stop)``) of the flat observation. Per-pack
            fields have one entry per pack.
        scales: Field name → factor that turns the stored value into the physical unit of
            :class:`FleetObservation` (``1.0`` when absent). Use it where the env stores a
            normalised quantity (e.g. demand divided by the fleet's rated power).
        fields: Canonical field (``soc``, ``soh``, ``temperature_c``, ``demand_w``,
            ``demand_forecast_w``, ``price_per_kwh``, ``price_forecast_per_kwh``) → layout
            name, where the env names a field differently. Missing optional fields
            (forecasts, price) read as empty / zero.

    Raises:
        KeyError: If a required per-pack field (``soc``) or ``demand_w`` is not in the layout.

    Example:
        >>> reader = ObservationReader({"soc": slice(0, 2), "demand_w": slice(2, 3)})
        >>> reader.read(np.array([0.5, 0.7, 1000.0])).demand_w
        1000.0
    """

    REQUIRED = ("soc", "demand_w")

    def __init__(
        self,
        layout: Mapping[str, Any],
        *,
        scales: Mapping[str, float] | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        names = dict(fields or {})
        self._slices: dict[str, slice] = {}
        self._scales: dict[str, float] = {}
        for canonical in (
            "soc",
            "soh",
            "temperature_c",
            "demand_w",
            "demand_forecast_w",
            "price_per_kwh",
            "price_forecast_per_kwh",
            "cell_voltage_v",
            "current_c_rate",
        ):
            name = names.get(canonical, canonical)
            if name in layout:
                self._slices[canonical] = _slice_of(layout[name])
                self._scales[canonical] = float((scales or {}).get(name, 1.0))
        missing = [f for f in self.REQUIRED if f not in self._slices]
        if missing:
            raise KeyError(
                f"observation layout lacks required field(s) {missing}; layout has {sorted(layout)}"
            )

    def has(self, field: str) -> bool:
        """Whether the layout provides ``field`` (canonical name)."""
        return field in self._slices

    def _get(self, obs: ObsArray, field: str) -> FloatArray:
        sl = self._slices.get(field)
        if sl is None:
            return np.zeros(0)
        return np.asarray(obs[sl], dtype=np.float64) * self._scales[field]

    def read(self, observation: ObsArray) -> FleetObservation:
        """Read one flat observation.

        Args:
            observation: The flat observation (1-D).

        Returns:
            The named fields in physical units.
        """
        obs = np.asarray(observation, dtype=np.float64).reshape(-1)
        soc = self._get(obs, "soc")
        n = soc.shape[0]
        soh = self._get(obs, "soh") if self.has("soh") else np.ones(n)
        temp = self._get(obs, "temperature_c") if self.has("temperature_c") else np.full(n, 25.0)
        price = self._get(obs, "price_per_kwh")
        return FleetObservation(
            soc=soc,
            soh=soh,
            temperature_c=temp,
            demand_w=float(self._get(obs, "demand_w")[0]),
            demand_forecast_w=self._get(obs, "demand_forecast_w"),
            price_per_kwh=float(price[0]) if price.size else 0.0,
            price_forecast_per_kwh=self._get(obs, "price_forecast_per_kwh"),
            cell_voltage_v=self._get(obs, "cell_voltage_v"),
            current_c_rate=self._get(obs, "current_c_rate"),
        )
