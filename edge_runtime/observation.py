"""The policy's observation on the device: telemetry → the training observation.

:class:`ObservationBuilder` is a thin adapter: it turns the latest telemetry (a
:class:`~pulsebms.safety.state.FleetState` and a
:class:`~pulsebms.edge_runtime.telemetry.SiteSnapshot`), the last commanded action and the
time of day into
:class:`~pulsebms.core.observation.ObservationInputs` and calls the same
:func:`~pulsebms.core.observation.build_observation` as the environment, with the manifest's
layout. Forecasts are not on the bus: they are filled by persistence (the present value
repeated). NaN (a pack that never reported) reads as 0, as in training.
"""

from __future__ import annotations

import numpy as np

from pulsebms.core.observation import ObservationInputs, ObsField, build_observation
from pulsebms.core.types import FloatArray, ObsArray
from pulsebms.edge_runtime.manifest import Manifest
from pulsebms.edge_runtime.telemetry import SiteSnapshot
from pulsebms.safety.state import FleetState

__all__ = ["ObservationBuilder"]

_DAY_S = 86400.0
_HOUR_S = 3600.0


class ObservationBuilder:
    """Build the flat observation the exported policy expects.

    Args:
        manifest: The deployment manifest (layout, ratings).

    Attributes:
        fields: The manifest's observation fields, ordered by ``start``.
        size: Length of the observation.
        n_packs: Number of packs.

    Example:
        >>> builder = ObservationBuilder(manifest)  # doctest: +SKIP
        >>> obs = builder.build(state, site, last_action, time_of_day_s=43200.0)  # doctest: +SKIP
    """

    def __init__(self, manifest: Manifest) -> None:
        self.layout = manifest.observation
        self.fields: tuple[ObsField, ...] = tuple(sorted(self.layout.fields, key=lambda f: f.start))
        self.size = manifest.model.observation_size
        self.n_packs = manifest.n_packs
        self._capacity_ah = np.asarray(manifest.pack_ratings().capacity_ah, dtype=np.float64)

    def inputs(
        self,
        state: FleetState,
        site: SiteSnapshot,
        last_action: FloatArray,
        *,
        time_of_day_s: float,
    ) -> ObservationInputs:
        """The core's inputs for one observation (forecasts left to persistence)."""
        return ObservationInputs.from_readings(
            state,
            capacity_ah=self._capacity_ah,
            demand_w=site.demand_w,
            price_per_kwh=site.price_per_kwh,
            ambient_c=site.ambient_c,
            hour_of_day=(float(time_of_day_s) % _DAY_S) / _HOUR_S,
            last_action=np.asarray(last_action, dtype=np.float64),
        )

    def build(
        self,
        state: FleetState,
        site: SiteSnapshot,
        last_action: FloatArray,
        *,
        time_of_day_s: float,
    ) -> ObsArray:
        """Assemble one observation.

        Args:
            state: Latest fleet state (NaN where a pack never reported).
            site: Latest site values.
            last_action: Normalised set-points commanded on the previous tick.
            time_of_day_s: Seconds since local midnight.

        Returns:
            The float32 observation of length ``observation_size``.
        """
        inputs = self.inputs(state, site, last_action, time_of_day_s=time_of_day_s)
        return build_observation(self.layout, inputs)
