"""What the coordinator knows of its site's fleet before any telemetry: the static description.

:class:`SiteFleet` holds the pack order (the observation layout's ``pack_names``, which are
the telemetry's ``pack_id``: unique within a site), the ratings, the safe operating limits,
the shield settings and the control interval. It comes from the same place the edge reads
it: a deployment manifest (``manifest.json`` of an export folder,
:meth:`SiteFleet.from_manifest`) or a fleet spec JSON (``pulsebms.export.fleet`` format,
:meth:`SiteFleet.from_file`), so the coordinator's observation is the policy's training
observation (:mod:`pulsebms.core.observation`).

Which device controls which pack is learnt from telemetry (a pack may move).

Example:
    >>> import numpy as np
    >>> from pulsebms.core.observation import fleet_observation_layout
    >>> from pulsebms.safety.state import PackRatings
    >>> ratings = PackRatings(("LFP", "NMC"), np.array([16, 14]), np.array([8, 4]),
    ...                       np.array([2.5, 5.0]), np.array([3000.0, 2000.0]))
    >>> fleet = SiteFleet(fleet_observation_layout(("a", "b"), 4, 5000.0), ratings)
    >>> fleet.pack_ids, fleet.n_packs, fleet.shield_settings().track_demand
    (('a', 'b'), 2, True)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pulsebms.core.observation import ObservationLayout
from pulsebms.core.types import FloatArray
from pulsebms.safety.limits import PackLimits, fleet_limits
from pulsebms.safety.settings import ShieldSettings
from pulsebms.safety.shield import Shield
from pulsebms.safety.state import PackRatings

__all__ = ["SiteFleet"]


@dataclass(frozen=True)
class SiteFleet:
    """The site's packs as the coordinator plans them.

    Attributes:
        layout: The observation layout the policy expects (``pack_names`` = pack ids).
        ratings: Pack ratings, in layout order.
        limits: One :class:`~pulsebms.safety.limits.PackLimits` per pack; the chemistries'
            defaults when empty.
        dt_s: Control interval of the policy and shield [s] (the shield predicts one
            interval ahead).
        shield: Shield settings (:class:`~pulsebms.safety.settings.ShieldSettings` fields).
            ``track_demand`` defaults to ``True`` here: the coordinator serves the site
            demand with the packs it can use, which is the rebalance.

    Raises:
        ValueError: If the layout names no packs, or the ratings/limits have another count.
    """

    layout: ObservationLayout
    ratings: PackRatings
    limits: tuple[PackLimits, ...] = ()
    dt_s: float = 60.0
    shield: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.layout.pack_names)
        if n == 0:
            raise ValueError("the observation layout names no packs (pack_names is empty)")
        if len(set(self.layout.pack_names)) != n:
            raise ValueError("pack names must be unique within a site")
        if self.ratings.n_packs != n:
            raise ValueError(f"{self.ratings.n_packs} pack ratings for {n} packs in the layout")
        if not self.limits:
            object.__setattr__(self, "limits", fleet_limits(self.ratings))
        if len(self.limits) != n:
            raise ValueError(f"{len(self.limits)} PackLimits for {n} packs")
        object.__setattr__(self, "shield", dict(self.shield))

    @property
    def pack_ids(self) -> tuple[str, ...]:
        """Pack names in layout order."""
        return self.layout.pack_names

    @property
    def n_packs(self) -> int:
        """Number of packs."""
        return len(self.layout.pack_names)

    @property
    def rated_power_w(self) -> FloatArray:
        """Rated power per pack [W]."""
        return np.asarray(self.ratings.rated_power_w, dtype=np.float64)

    @property
    def capacity_ah(self) -> FloatArray:
        """Nominal pack capacity per pack [A.h]."""
        return np.asarray(self.ratings.capacity_ah, dtype=np.float64)

    def shield_settings(self) -> ShieldSettings:
        """The shield settings, with ``track_demand`` on unless stated."""
        settings = {k: v for k, v in self.shield.items() if k != "dt_s"}
        settings.setdefault("track_demand", True)
        return ShieldSettings.from_mapping(settings)

    @cached_property
    def shield_obj(self) -> Shield:
        """The shield (built once; ~0.2 s per group of identical packs)."""
        dt_s = float(self.shield.get("dt_s", self.dt_s))
        return Shield(self.ratings, self.limits, dt_s, settings=self.shield_settings())

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_manifest(cls, manifest: Any) -> SiteFleet:
        """From a deployment manifest (a loaded ``Manifest`` or the path of its JSON).

        Raises:
            ManifestError: If the manifest is invalid.
            ValueError: If it names no packs.
        """
        from pulsebms.edge_runtime.manifest import Manifest, load_manifest

        m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        return cls(m.observation, m.pack_ratings(), m.pack_limits(), m.dt_s, dict(m.shield))

    @classmethod
    def from_file(cls, path: str | Path) -> SiteFleet:
        """From ``manifest.json``, an export folder holding one, or a fleet spec JSON.

        Raises:
            FileNotFoundError: If the file (or the folder's manifest) does not exist.
            ValueError: If it is neither a manifest nor a fleet spec.
        """
        p = Path(path)
        if p.is_dir():
            p = p / "manifest.json"
        data = json.loads(p.read_text(encoding="utf-8"))
        if "model" in data:
            return cls.from_manifest(p)
        return cls.from_spec(data)

    @classmethod
    def from_spec(cls, data: Mapping[str, Any]) -> SiteFleet:
        """From a fleet spec mapping (``pulsebms.export.fleet.FleetSpec.to_dict`` form).

        Raises:
            ValueError: If a key is missing or a value is invalid.
        """
        from pulsebms.edge_runtime.manifest import ratings_from_dict

        try:
            ratings = ratings_from_dict(data["ratings"])
            layout = ObservationLayout.from_dict(
                {"fields": data["observation"], "pack_names": data.get("pack_names", ())}
            )
            raw = data.get("limits")
            limits: tuple[PackLimits, ...]
            if raw is None:
                limits = ()
            elif isinstance(raw, Mapping):
                limits = fleet_limits(ratings, **raw)
            else:
                limits = tuple(PackLimits(**lim) for lim in raw)
            return cls(layout, ratings, limits, float(data["dt_s"]), dict(data.get("shield", {})))
        except KeyError as exc:
            raise ValueError(f"fleet spec lacks key {exc}") from exc
        except TypeError as exc:
            raise ValueError(f"fleet spec is malformed: {exc}") from exc

    def nominal_energy_wh(self) -> FloatArray:
        """Nominal pack energy [Wh]: capacity × cells in series × the tables' OCV at 50 % SoC."""
        model = self.shield_obj.cell_model
        ocv = np.array([float(model.ocv_v(c, 0.5)) for c in self.ratings.chemistry])
        energy: FloatArray = self.capacity_ah * np.asarray(self.ratings.series, np.float64) * ocv
        return energy
