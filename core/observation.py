"""The observation contract: a named layout and the one function that fills it (numpy only).

Training (:class:`pulsebms.envs.FleetEnv`), the exporter (:mod:`pulsebms.export`, which
writes the layout into the deployment manifest) and the edge runtime
(:class:`pulsebms.edge_runtime.observation.ObservationBuilder`) all build the flat
observation through :func:`build_observation`, from an :class:`ObservationLayout` and an
:class:`ObservationInputs`, so the vector a policy sees on the device is the vector it was
trained on.

Each :class:`ObsField` reads one physical quantity (its ``source``, a key of
:data:`PACK_SOURCES` or :data:`SITE_SOURCES`), divides it by the field's ``scale`` (stored
value × ``scale`` = physical value), reads NaN as 0 (a pack that never reported) and clips
the result to ``[low, high]`` (the observation space).

Example:
    >>> import numpy as np
    >>> layout = fleet_observation_layout(("a", "b"), forecast_steps=1, fleet_rated_power_w=2000.0)
    >>> inputs = ObservationInputs(
    ...     soc=np.array([0.5, np.nan]), soh=np.ones(2), temperature_c=np.full(2, 25.0),
    ...     cell_voltage_v=np.full(2, 3.6), current_a=np.array([2.0, -2.0]),
    ...     capacity_ah=np.full(2, 20.0), demand_w=1000.0, price_per_kwh=0.3,
    ...     ambient_c=20.0, hour_of_day=6.0)
    >>> obs = build_observation(layout, inputs)
    >>> obs[layout.slices["soc"]].tolist(), obs[layout.slices["demand_forecast_w"]].tolist()
    ([0.5, 0.0], [0.5])
    >>> layout.names[:3]
    ('soc[a]', 'soc[b]', 'soh[a]')
    >>> ObservationLayout.from_dict(layout.to_dict()) == layout
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from pulsebms.core.types import AnyArray, FloatArray, ObsArray, PackReadings

__all__ = [
    "PACK_SOURCES",
    "SITE_SOURCES",
    "TEMPERATURE_SCALE_C",
    "VOLTAGE_SCALE_V",
    "ObsField",
    "ObservationInputs",
    "ObservationLayout",
    "build_observation",
    "fleet_observation_layout",
    "source_of",
]

PACK_SOURCES: dict[str, str] = {
    "soc": "1",
    "soh": "1",
    "temperature_c": "degC",
    "cell_voltage_v": "V",
    "current_a": "A",
    "current_c_rate": "1/h",
    "last_action": "1",
}
"""Per-pack physical quantities an observation field can read, with their units.

``current_c_rate`` is the pack current over the nominal pack capacity (+ = discharge);
``last_action`` the normalised set-point commanded on the previous step.
"""

SITE_SOURCES: dict[str, str] = {
    "demand_w": "W",
    "demand_forecast_w": "W",
    "price_per_kwh": "currency/kWh",
    "price_forecast_per_kwh": "currency/kWh",
    "ambient_c": "degC",
    "time_of_day": "1",
    "time_of_day_sin": "1",
    "time_of_day_cos": "1",
    "grid_import_limit_w": "W",
    "grid_export_limit_w": "W",
    "feed_in_price_per_kwh": "currency/kWh",
}
"""Site-level quantities an observation field can read, with their units.

Forecasts not given in the inputs are read by persistence (the present value repeated);
``time_of_day`` is ``hour_of_day / 24`` in [0, 1) and ``time_of_day_sin``/``_cos`` are
``sin``/``cos`` of ``2π · hour_of_day / 24``. The grid limits and the feed-in price
(read by the ``site_extras`` layout of ``PulseBMS/FleetSite-v0``) have no fallback: an
observation that needs them and is built without them raises ``ValueError``.
"""

TEMPERATURE_SCALE_C = 50.0
"""Scale of the temperature fields of the FleetEnv layout [°C]."""
VOLTAGE_SCALE_V = 4.0
"""Scale of the cell-voltage field of the FleetEnv layout [V]."""

_FIELD_KEYS = ("name", "start", "stop", "unit", "scale", "low", "high", "description")


def source_of(name: str) -> str:
    """The quantity a field name reads by default: the name without an index suffix.

    Example:
        >>> source_of("soc[1]"), source_of("demand_w")
        ('soc', 'demand_w')
    """
    return name.split("[", 1)[0]


@dataclass(frozen=True)
class ObsField:
    """One named block of the flat observation.

    Attributes:
        name: Field name; the physical quantity's unit is in it (``temperature_c``).
        start: First index in the flat observation.
        stop: One past the last index.
        unit: Unit of the physical quantity.
        scale: Stored value × ``scale`` = physical value (normalisation is a pure scale).
        low: Lower bound of the stored value (the observation space).
        high: Upper bound of the stored value.
        description: What the field is.
        source: Physical quantity it reads (a key of :data:`PACK_SOURCES` or
            :data:`SITE_SOURCES`); defaults to the name's quantity (:func:`source_of`).
        pack: For a per-pack source, the single pack this field reads (width 1); ``None``
            means one entry per pack, in pack order.
    """

    name: str
    start: int
    stop: int
    unit: str = ""
    scale: float = 1.0
    low: float = -math.inf
    high: float = math.inf
    description: str = ""
    source: str = ""
    pack: int | None = None

    def __post_init__(self) -> None:
        if not self.source:
            object.__setattr__(self, "source", source_of(self.name))

    @property
    def slice(self) -> slice:
        """The field's slice of the flat observation."""
        return slice(self.start, self.stop)

    @property
    def width(self) -> int:
        """Number of observation entries in this field."""
        return self.stop - self.start

    @property
    def per_pack(self) -> bool:
        """Whether the field reads a per-pack quantity."""
        return self.source in PACK_SOURCES

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; an open (infinite) bound is ``None``."""
        data = dataclasses.asdict(self)
        for key in ("low", "high"):
            if not math.isfinite(data[key]):
                data[key] = None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ObsField:
        """Rebuild a field from :meth:`to_dict` (``None`` bounds are open).

        Keys other than ``name``, ``start`` and ``stop`` are optional, so the field lists of
        manifests written before the layout had a ``description`` read unchanged.

        Raises:
            ValueError: On an unknown or missing key.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"observation field: unknown key(s) {unknown}; known: {sorted(known)}")
        missing = [k for k in ("name", "start", "stop") if k not in data]
        if missing:
            raise ValueError(f"observation field lacks key(s) {missing}")
        low, high, pack = data.get("low"), data.get("high"), data.get("pack")
        return cls(
            name=str(data["name"]),
            start=int(data["start"]),
            stop=int(data["stop"]),
            unit=str(data.get("unit", "")),
            scale=float(data.get("scale", 1.0)),
            low=-math.inf if low is None else float(low),
            high=math.inf if high is None else float(high),
            description=str(data.get("description", "")),
            source=str(data.get("source") or ""),
            pack=None if pack is None else int(pack),
        )


@dataclass(frozen=True)
class ObservationLayout:
    """The named layout of the flat observation.

    Attributes:
        fields: The blocks, in order, covering the observation without gaps.
        pack_names: Pack labels, the order of every per-pack block (may be empty when the
            labels are unknown, e.g. a manifest written before they were recorded).
    """

    fields: tuple[ObsField, ...]
    pack_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "pack_names", tuple(str(p) for p in self.pack_names))

    @property
    def size(self) -> int:
        """Length of the flat observation."""
        return max((f.stop for f in self.fields), default=0)

    @property
    def slices(self) -> dict[str, slice]:
        """Field name → slice."""
        return {f.name: f.slice for f in self.fields}

    @property
    def scales(self) -> dict[str, float]:
        """Field name → factor from stored to physical value."""
        return {f.name: f.scale for f in self.fields}

    @property
    def units(self) -> dict[str, str]:
        """Field name → physical unit."""
        return {f.name: f.unit for f in self.fields}

    @property
    def names(self) -> tuple[str, ...]:
        """One name per element: ``"soc[lfp-0]"``, ``"demand_forecast_w[+2]"``, ``"ambient_c"``.

        A per-pack block is labelled by the pack names (by pack index when they are not
        known), a one-element block by the field name, any other block by the step ahead.
        """
        out: list[str] = []
        for f in self.fields:
            n = f.width
            if f.per_pack and f.pack is None and n == len(self.pack_names):
                out.extend(f"{f.name}[{p}]" for p in self.pack_names)
            elif n == 1:
                out.append(f.name)
            elif f.per_pack and f.pack is None:
                out.extend(f"{f.name}[{i}]" for i in range(n))
            else:
                out.extend(f"{f.name}[+{j + 1}]" for j in range(n))
        return tuple(out)

    @property
    def low(self) -> FloatArray:
        """Lower bound of every stored element (float64, a copy)."""
        return self._bounds[0].copy()

    @property
    def high(self) -> FloatArray:
        """Upper bound of every stored element (float64, a copy)."""
        return self._bounds[1].copy()

    @cached_property
    def _build_plan(
        self,
    ) -> tuple[int, tuple[tuple[int, int, str, bool, int | None, int, float], ...]]:
        """Size and, per field, what :func:`build_observation` reads (resolved once)."""
        return self.size, tuple(
            (f.start, f.stop, f.source, f.per_pack, f.pack, f.width, f.scale) for f in self.fields
        )

    @cached_property
    def _bounds(self) -> tuple[FloatArray, FloatArray]:
        size = self.size
        low = np.full(size, -np.inf)
        high = np.full(size, np.inf)
        for f in self.fields:
            low[f.slice] = f.low
            high[f.slice] = f.high
        return low, high

    def field(self, name: str) -> ObsField:
        """The field called ``name``.

        Raises:
            KeyError: If there is no such field.
        """
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"no observation field {name!r}; fields: {[f.name for f in self.fields]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (fields with units, scales, sources; open bounds ``None``)."""
        return {
            "size": self.size,
            "pack_names": list(self.pack_names),
            "fields": [f.to_dict() for f in self.fields],
            "names": list(self.names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> ObservationLayout:
        """Rebuild a layout from :meth:`to_dict`, or from a bare list of field dicts.

        ``size`` and ``names`` are derived, so they are checked, not read.

        Raises:
            ValueError: On a malformed field or a ``size`` that disagrees with the fields.
        """
        if isinstance(data, Mapping):
            fields = tuple(ObsField.from_dict(f) for f in data["fields"])
            layout = cls(fields, tuple(data.get("pack_names", ())))
            if "size" in data and int(data["size"]) != layout.size:
                raise ValueError(
                    f"observation layout says size {data['size']}, its fields cover {layout.size}"
                )
            return layout
        return cls(tuple(ObsField.from_dict(f) for f in data))

    def unpack(self, observation: AnyArray) -> dict[str, FloatArray]:
        """Split a flat observation into physical values per field (stored × scale)."""
        obs = np.asarray(observation, dtype=np.float64).reshape(-1)
        return {f.name: obs[f.slice] * f.scale for f in self.fields}


def fleet_observation_layout(
    pack_names: Sequence[str],
    forecast_steps: int,
    fleet_rated_power_w: float,
    *,
    site_extras: bool = False,
) -> ObservationLayout:
    """The layout of :class:`pulsebms.envs.FleetEnv`'s observation.

    Args:
        pack_names: Pack labels, in fleet order.
        forecast_steps: Length of the net-load and price forecasts.
        fleet_rated_power_w: Σ rated pack power [W], the scale of the demand fields.
        site_extras: Append grid import/export limits (/ Σ rated pack power) and the
            feed-in price (the ``PulseBMS/FleetSite-v0``layout); ``False`` is the v0 layout.

    Returns:
        Per-pack SoC, SoH, temperature, cell voltage, C-rate; site demand now and forecast,
        price now and forecast, ambient temperature, sin/cos of the time of day.

    Example:
        >>> fleet_observation_layout(("p",), 2, 1000.0).size
        14
    """
    n = len(pack_names)
    m = int(forecast_steps)
    rated = fleet_rated_power_w
    spec: list[tuple[str, int, str, float, float, float, str]] = [
        ("soc", n, "fraction", 1.0, 0.0, 1.0, "state of charge per pack"),
        ("soh", n, "fraction", 1.0, 0.0, 1.0, "state of health per pack (capacity / nominal)"),
        ("temperature_c", n, "degC", TEMPERATURE_SCALE_C, -2.0, 2.0, "pack temperature / 50 °C"),
        ("cell_voltage_v", n, "V", VOLTAGE_SCALE_V, 0.0, 1.5, "cell terminal voltage / 4 V"),
        ("current_c_rate", n, "1/h", 1.0, -10.0, 10.0,
         "last pack current / nominal pack capacity (C-rate), + = discharge"),
        ("demand_w", 1, "W", rated, -20.0, 20.0,
         "site net load (load − PV) now / Σ rated pack power"),
        ("demand_forecast_w", m, "W", rated, -20.0, 20.0,
         "forecast net load for the next steps / Σ rated pack power"),
        ("price_per_kwh", 1, "EUR/kWh", 1.0, -10.0, 10.0, "grid import price now"),
        ("price_forecast_per_kwh", m, "EUR/kWh", 1.0, -10.0, 10.0,
         "forecast import price for the next steps"),
        ("ambient_c", 1, "degC", TEMPERATURE_SCALE_C, -2.0, 2.0, "ambient temperature / 50 °C"),
        ("time_of_day_sin", 1, "1", 1.0, -1.0, 1.0, "sin(2π · hour / 24)"),
        ("time_of_day_cos", 1, "1", 1.0, -1.0, 1.0, "cos(2π · hour / 24)"),
    ]  # fmt: skip
    if site_extras:
        spec += [
            ("grid_import_limit_w", 1, "W", rated, 0.0, 1.0e6,
             "grid import limit / Σ rated pack power"),
            ("grid_export_limit_w", 1, "W", rated, 0.0, 1.0e6,
             "grid export limit / Σ rated pack power"),
            ("feed_in_price_per_kwh", 1, "EUR/kWh", 1.0, -10.0, 10.0,
             "price paid for exported energy"),
        ]  # fmt: skip
    fields: list[ObsField] = []
    start = 0
    for name, size, unit, scale, low, high, text in spec:
        fields.append(ObsField(name, start, start + size, unit, scale, low, high, text))
        start += size
    return ObservationLayout(tuple(fields), tuple(pack_names))


@dataclass(frozen=True)
class ObservationInputs:
    """The physical quantities an observation is built from (units in the names).

    Per-pack arrays have shape ``(n_packs,)``, in the layout's pack order; NaN (a pack that
    never reported) reads as 0 in the observation.

    Attributes:
        soc: State of charge per pack, fraction.
        soh: State of health per pack, fraction.
        temperature_c: Pack temperature [°C].
        cell_voltage_v: Cell terminal voltage [V].
        current_a: Last pack current [A], + = discharge.
        capacity_ah: Nominal pack capacity [A.h] (``current_c_rate = current_a / capacity_ah``).
        demand_w: Site demand on the fleet now [W].
        price_per_kwh: Energy price now [currency/kWh].
        ambient_c: Ambient temperature [°C].
        hour_of_day: Local time of day [h], in [0, 24).
        demand_forecast_w: Demand for the next steps [W]; ``None``: persistence.
        price_forecast_per_kwh: Price for the next steps; ``None``: persistence.
        last_action: Normalised set-points of the previous step; ``None``: zeros.
        grid_import_limit_w: Grid import limit [W]; ``None``: unknown (a field reading it
            raises ``ValueError``).
        grid_export_limit_w: Grid export limit [W]; ``None``: unknown (as above).
        feed_in_price_per_kwh: Price paid for exported energy; ``None``: unknown (as above).
    """

    soc: FloatArray
    soh: FloatArray
    temperature_c: FloatArray
    cell_voltage_v: FloatArray
    current_a: FloatArray
    capacity_ah: FloatArray
    demand_w: float
    price_per_kwh: float
    ambient_c: float
    hour_of_day: float
    demand_forecast_w: FloatArray | None = None
    price_forecast_per_kwh: FloatArray | None = None
    last_action: FloatArray | None = None
    grid_import_limit_w: float | None = None
    grid_export_limit_w: float | None = None
    feed_in_price_per_kwh: float | None = None

    @classmethod
    def from_readings(
        cls,
        readings: PackReadings,
        *,
        capacity_ah: FloatArray,
        demand_w: float,
        price_per_kwh: float,
        ambient_c: float,
        hour_of_day: float,
        demand_forecast_w: FloatArray | None = None,
        price_forecast_per_kwh: FloatArray | None = None,
        last_action: FloatArray | None = None,
    ) -> ObservationInputs:
        """Inputs from per-pack readings (the twin's states or a telemetry ``FleetState``).

        The one place where the environment and the edge runtime turn what the packs report
        into observation inputs; the site values are given as they are known there.

        Args:
            readings: Per-pack SoC, SoH, temperature, cell voltage and current.
            capacity_ah: Nominal pack capacity per pack [A.h].
            demand_w: Site demand on the fleet now [W].
            price_per_kwh: Energy price now [currency/kWh].
            ambient_c: Ambient temperature [°C].
            hour_of_day: Local time of day [h].
            demand_forecast_w: Demand for the next steps [W]; ``None``: persistence.
            price_forecast_per_kwh: Price for the next steps; ``None``: persistence.
            last_action: Normalised set-points of the previous step; ``None``: zeros.

        Returns:
            The inputs (float64 copies-on-need of the readings).

        Example:
            >>> import numpy as np
            >>> from types import SimpleNamespace
            >>> packs = SimpleNamespace(soc=[0.5], soh=[1.0], temperature_c=[25.0],
            ...                         cell_voltage_v=[3.7], current_a=[2.0])
            >>> x = ObservationInputs.from_readings(packs, capacity_ah=np.array([4.0]),
            ...     demand_w=0.0, price_per_kwh=0.2, ambient_c=20.0, hour_of_day=12.0)
            >>> float(x.pack_quantity("current_c_rate")[0])
            0.5
        """
        return cls(
            soc=np.asarray(readings.soc, dtype=np.float64),
            soh=np.asarray(readings.soh, dtype=np.float64),
            temperature_c=np.asarray(readings.temperature_c, dtype=np.float64),
            cell_voltage_v=np.asarray(readings.cell_voltage_v, dtype=np.float64),
            current_a=np.asarray(readings.current_a, dtype=np.float64),
            capacity_ah=capacity_ah,
            demand_w=float(demand_w),
            price_per_kwh=float(price_per_kwh),
            ambient_c=float(ambient_c),
            hour_of_day=float(hour_of_day),
            demand_forecast_w=demand_forecast_w,
            price_forecast_per_kwh=price_forecast_per_kwh,
            last_action=last_action,
        )

    def pack_quantity(self, source: str) -> FloatArray:
        """The per-pack quantity ``source`` (a key of :data:`PACK_SOURCES`).

        Raises:
            ValueError: If ``source`` is not a per-pack source.
        """
        if source == "current_c_rate":
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.asarray(self.current_a / self.capacity_ah, dtype=np.float64)
        if source == "last_action":
            if self.last_action is None:
                return np.zeros(np.shape(self.soc))
            return np.asarray(self.last_action, dtype=np.float64)
        values = {
            "soc": self.soc,
            "soh": self.soh,
            "temperature_c": self.temperature_c,
            "cell_voltage_v": self.cell_voltage_v,
            "current_a": self.current_a,
        }
        if source not in values:
            raise ValueError(f"{source!r} is not a per-pack source; known: {sorted(PACK_SOURCES)}")
        return np.asarray(values[source], dtype=np.float64)

    def site_quantity(self, source: str, width: int) -> FloatArray | float:
        """The site quantity ``source`` (a key of :data:`SITE_SOURCES`) for ``width`` entries.

        Raises:
            ValueError: If ``source`` is not a site source, or a forecast's length differs
                from ``width``.
        """
        if source in ("demand_forecast_w", "price_forecast_per_kwh"):
            forecast = getattr(self, source)
            present = self.demand_w if source == "demand_forecast_w" else self.price_per_kwh
            if forecast is None:
                return present  # persistence
            values = np.asarray(forecast, dtype=np.float64).reshape(-1)
            if values.shape[0] != width:
                raise ValueError(
                    f"{source} has {values.shape[0]} steps, the layout field has {width}"
                )
            return values
        if source in ("grid_import_limit_w", "grid_export_limit_w", "feed_in_price_per_kwh"):
            given = getattr(self, source)
            if given is None:
                raise ValueError(f"the layout reads {source!r}, which the inputs do not give")
            return float(given)
        if source in ("time_of_day_sin", "time_of_day_cos"):
            angle = 2.0 * np.pi * self.hour_of_day / 24.0
            return float(np.sin(angle) if source == "time_of_day_sin" else np.cos(angle))
        scalars = {
            "demand_w": self.demand_w,
            "price_per_kwh": self.price_per_kwh,
            "ambient_c": self.ambient_c,
            "time_of_day": self.hour_of_day / 24.0,
        }
        if source not in scalars:
            raise ValueError(f"{source!r} is not a site source; known: {sorted(SITE_SOURCES)}")
        return scalars[source]


def build_observation(layout: ObservationLayout, inputs: ObservationInputs) -> ObsArray:
    """Fill the flat observation of ``layout`` from physical ``inputs``.

    Each field reads its source, is divided by its scale, NaN reads as 0 and every element
    is clipped to the field's ``[low, high]``.

    Args:
        layout: The named layout.
        inputs: The physical quantities.

    Returns:
        The float32 observation of length ``layout.size``.

    Raises:
        ValueError: If a field reads an unknown source or a forecast has the wrong length.
    """
    size, plan = layout._build_plan
    out = np.zeros(size, dtype=np.float64)
    pack_values: dict[str, FloatArray] = {}
    filled: list[tuple[int, int, FloatArray | float, float]] = []
    for start, stop, source, per_pack, pack, width, scale in plan:
        value: FloatArray | float
        if per_pack:
            per = pack_values.get(source)
            if per is None:  # each per-pack source read once
                per = pack_values[source] = inputs.pack_quantity(source)
            value = per if pack is None else per[pack : pack + 1]
        else:
            value = inputs.site_quantity(source, width)
        filled.append((start, stop, value, scale))
    with np.errstate(divide="ignore", invalid="ignore"):
        for start, stop, value, scale in filled:
            out[start:stop] = value / scale
    np.copyto(out, 0.0, where=np.isnan(out))  # NaN reads as 0; ±inf are clipped below
    low, high = layout._bounds
    obs: ObsArray = np.clip(out, low, high).astype(np.float32)
    return obs
