"""Read a flat FleetEnv observation by its named layout.

Rule baselines and the MPC never index the observation vector with magic numbers: they ask
an :class:`ObservationReader`, built from the environment's named layout (the core
:class:`~pulsebms.core.observation.ObservationLayout`), for the fields they need (per-pack
SoC, SoH, temperature; site demand now and forecast; price). The reader turns stored values
into physical ones with :meth:`ObservationLayout.unpack
<pulsebms.core.observation.ObservationLayout.unpack>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pulsebms.core.observation import ObservationLayout, ObsField
from pulsebms.core.types import AnyArray, FloatArray

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


_CANONICAL = (
    "soc",
    "soh",
    "temperature_c",
    "demand_w",
    "demand_forecast_w",
    "price_per_kwh",
    "price_forecast_per_kwh",
    "cell_voltage_v",
    "current_c_rate",
)


def _slice_of(entry: slice | tuple[int, int] | list[int]) -> slice:
    if isinstance(entry, slice):
        if isinstance(entry.stop, int) and entry.step in (None, 1):
            return slice(int(entry.start or 0), entry.stop)
        raise TypeError(f"layout slice must have an integer stop and step 1, got {entry!r}")
    if isinstance(entry, tuple | list) and len(entry) == 2:
        return slice(int(entry[0]), int(entry[1]))
    raise TypeError(f"layout entry must be a slice or a (start, stop) pair, got {entry!r}")


class ObservationReader:
    """Extract named fields from a flat observation.

    Args:
        layout: The env's :class:`~pulsebms.core.observation.ObservationLayout` (slices and
            scales come from it), or field name → slice (or ``(start, stop)``) of the flat
            observation. Per-pack fields have one entry per pack.
        scales: Field name → factor that turns the stored value into the physical unit of
            :class:`FleetObservation` (default: the layout's scales, ``1.0`` for a plain
            mapping). Use it where the env stores a normalised quantity (e.g. demand divided
            by the fleet's rated power).
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
        layout: ObservationLayout | Mapping[str, slice | tuple[int, int] | list[int]],
        *,
        scales: Mapping[str, float] | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        names = dict(fields or {})
        if isinstance(layout, ObservationLayout):
            slices = layout.slices
            factors = dict(layout.scales if scales is None else scales)
        else:
            slices = {name: _slice_of(entry) for name, entry in layout.items()}
            factors = dict(scales or {})
        picked: list[ObsField] = []
        for canonical in _CANONICAL:
            name = names.get(canonical, canonical)
            if name in slices:
                sl = slices[name]
                scale = float(factors.get(name, 1.0))
                picked.append(ObsField(canonical, sl.start, sl.stop, scale=scale))
        self.layout = ObservationLayout(tuple(picked))
        """The canonical fields this reader reads (named as :class:`FleetObservation`'s)."""
        missing = [f for f in self.REQUIRED if f not in self.layout.slices]
        if missing:
            raise KeyError(
                f"observation layout lacks required field(s) {missing}; layout has {sorted(slices)}"
            )

    def has(self, field: str) -> bool:
        """Whether the layout provides ``field`` (canonical name)."""
        return field in self.layout.slices

    def read(self, observation: AnyArray) -> FleetObservation:
        """Read one flat observation.

        Args:
            observation: The flat observation (1-D).

        Returns:
            The named fields in physical units.
        """
        values = self.layout.unpack(observation)
        empty = np.zeros(0)
        soc = values["soc"]
        n = soc.shape[0]
        price = values.get("price_per_kwh", empty)
        return FleetObservation(
            soc=soc,
            soh=values["soh"] if "soh" in values else np.ones(n),
            temperature_c=values["temperature_c"]
            if "temperature_c" in values
            else np.full(n, 25.0),
            demand_w=float(values["demand_w"][0]),
            demand_forecast_w=values.get("demand_forecast_w", empty),
            price_per_kwh=float(price[0]) if price.size else 0.0,
            price_forecast_per_kwh=values.get("price_forecast_per_kwh", empty),
            cell_voltage_v=values.get("cell_voltage_v", empty),
            current_c_rate=values.get("current_c_rate", empty),
        )
