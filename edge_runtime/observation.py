"""The policy's observation, built from telemetry by the manifest's named layout.

Each field reads its ``source`` quantity, divides it by the field's ``scale`` (the layout
stores physical / scale) and is clipped to ``[low, high]``; NaN (a pack that never reported)
reads as 0, as the environment does. Forecasts are not on the bus: they are filled by
persistence (the present value repeated).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from pulsebms.edge_runtime.manifest import Manifest, ObservationField
from pulsebms.edge_runtime.telemetry import SiteSnapshot
from pulsebms.safety.state import FleetState

__all__ = ["ObservationBuilder"]

FloatArray = NDArray[np.float64]


class ObservationBuilder:
    """Build the flat observation the exported policy expects.

    Args:
        manifest: The deployment manifest (layout, ratings).

    Example:
        >>> builder = ObservationBuilder(manifest)  # doctest: +SKIP
        >>> obs = builder.build(state, site, last_action, time_of_day_s=43200.0)  # doctest: +SKIP
    """

    def __init__(self, manifest: Manifest) -> None:
        self.fields: tuple[ObservationField, ...] = tuple(
            sorted(manifest.observation, key=lambda f: f.start)
        )
        self.size = manifest.model.observation_size
        self.n_packs = manifest.n_packs
        self._capacity_ah = np.asarray(manifest.pack_ratings().capacity_ah, dtype=np.float64)
        self._low = np.concatenate([np.full(f.width, f.low) for f in self.fields])
        self._high = np.concatenate([np.full(f.width, f.high) for f in self.fields])

    def _pack_quantity(self, source: str, state: FleetState, last_action: FloatArray) -> FloatArray:
        if source == "current_c_rate":
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.asarray(state.current_a / self._capacity_ah, dtype=np.float64)
        if source == "last_action":
            return np.asarray(last_action, dtype=np.float64)
        return np.asarray(getattr(state, source), dtype=np.float64)

    @staticmethod
    def _site_quantity(source: str, site: SiteSnapshot, time_of_day_s: float) -> float:
        fraction = (time_of_day_s % 86400.0) / 86400.0
        values = {
            "demand_w": site.demand_w,
            "demand_forecast_w": site.demand_w,
            "price_per_kwh": site.price_per_kwh,
            "price_forecast_per_kwh": site.price_per_kwh,
            "ambient_c": site.ambient_c,
            "time_of_day": fraction,
            "time_of_day_sin": math.sin(2.0 * math.pi * fraction),
            "time_of_day_cos": math.cos(2.0 * math.pi * fraction),
        }
        return float(values[source])

    def build(
        self,
        state: FleetState,
        site: SiteSnapshot,
        last_action: FloatArray,
        *,
        time_of_day_s: float,
    ) -> NDArray[np.float32]:
        """Assemble one observation.

        Args:
            state: Latest fleet state (NaN where a pack never reported).
            site: Latest site values.
            last_action: Normalised set-points commanded on the previous tick.
            time_of_day_s: Seconds since local midnight.

        Returns:
            The float32 observation of length ``observation_size``.
        """
        out = np.zeros(self.size, dtype=np.float64)
        for f in self.fields:
            if f.per_pack:
                values = self._pack_quantity(f.source, state, last_action)
                out[f.start : f.stop] = values if f.pack is None else values[f.pack]
            else:
                out[f.start : f.stop] = self._site_quantity(f.source, site, time_of_day_s)
            out[f.start : f.stop] /= f.scale
        out = np.nan_to_num(out, nan=0.0, posinf=np.inf, neginf=-np.inf)
        obs: NDArray[np.float32] = np.clip(out, self._low, self._high).astype(np.float32)
        return obs
