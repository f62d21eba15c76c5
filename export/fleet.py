"""What the manifest says about the fleet: layout, ratings, limits, shield settings, dt.

A checkpoint knows its network, not the fleet it was trained on. :class:`FleetSpec` carries
the rest as plain data, from a live environment (:func:`fleet_spec_from_env`) or from a
JSON file (:func:`load_fleet_spec`), so the exporter never depends on how an env stores it.

The observation layout is the core's :class:`~pulsebms.core.observation.ObservationLayout`:
an environment's ``observation_layout`` goes into the manifest as it is. For layouts written
by hand, :func:`observation_layout` also accepts plain data: a mapping of field name →
``slice`` / ``(start, stop)`` / dict with ``start``, ``stop`` and optional ``unit``,
``scale``, ``low``, ``high``, ``description``, ``source``, ``pack``, or a list of such dicts
with ``name``; a plain name that is not itself a source is resolved by
:data:`SOURCE_ALIASES`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pulsebms.core.observation import PACK_SOURCES, SITE_SOURCES, ObservationLayout, ObsField
from pulsebms.core.types import as_fleet_env
from pulsebms.edge_runtime.manifest import ActionField, ratings_from_dict, ratings_to_dict
from pulsebms.safety.limits import PackLimits, fleet_limits
from pulsebms.safety.settings import ShieldSettings
from pulsebms.safety.state import PackRatings

__all__ = [
    "SOURCE_ALIASES",
    "FleetSpec",
    "action_fields",
    "fleet_spec_from_dict",
    "fleet_spec_from_env",
    "load_fleet_spec",
    "observation_fields",
    "observation_layout",
]

SOURCE_ALIASES: dict[str, str] = {
    "temperature": "temperature_c",
    "temp_c": "temperature_c",
    "voltage_v": "cell_voltage_v",
    "cell_voltage": "cell_voltage_v",
    "current": "current_a",
    "last_current_a": "current_a",
    "c_rate": "current_c_rate",
    "demand": "demand_w",
    "net_load_w": "demand_w",
    "demand_forecast": "demand_forecast_w",
    "price": "price_per_kwh",
    "price_eur_per_kwh": "price_per_kwh",
    "price_forecast": "price_forecast_per_kwh",
    "ambient_temperature_c": "ambient_c",
    "hour_sin": "time_of_day_sin",
    "hour_cos": "time_of_day_cos",
}
"""Plain-layout names that are not themselves a runtime source, → the source they read."""


@dataclass(frozen=True)
class FleetSpec:
    """The fleet side of a manifest, as plain data.

    Attributes:
        observation: Observation layout (covering every entry, ordered); a sequence of
            fields is accepted and turned into a layout.
        ratings: Pack ratings.
        limits: One :class:`~pulsebms.safety.limits.PackLimits` per pack.
        dt_s: Control interval the policy was trained with [s].
        shield: Shield keyword arguments besides ratings and limits (``dt_s`` is added from
            ``dt_s`` when absent).
        action: Action layout; one ``power_setpoint`` field over every pack by default.
    """

    observation: ObservationLayout
    ratings: PackRatings
    limits: tuple[PackLimits, ...]
    dt_s: float
    shield: dict[str, Any] = field(default_factory=dict)
    action: tuple[ActionField, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.observation, ObservationLayout):  # a sequence of fields
            object.__setattr__(self, "observation", ObservationLayout(tuple(self.observation)))
        if not self.action:
            object.__setattr__(self, "action", action_fields(self.ratings.n_packs))
        if len(self.limits) != self.ratings.n_packs:
            raise ValueError(
                f"FleetSpec has {len(self.limits)} PackLimits for {self.ratings.n_packs} packs"
            )
        if not (math.isfinite(self.dt_s) and self.dt_s > 0):
            raise ValueError(f"FleetSpec.dt_s must be > 0, got {self.dt_s}")

    @property
    def observation_size(self) -> int:
        """Length of the flat observation."""
        return self.observation.size

    def shield_settings(self) -> dict[str, Any]:
        """Every shield setting, defaults filled in, plus ``dt_s`` (the manifest's form).

        The manifest records the complete :class:`~pulsebms.safety.settings.ShieldSettings`
        (not only the overrides), so a deployed shield never depends on the defaults of the
        library version on the device.

        Raises:
            ValueError: On an unknown or invalid shield setting.
        """
        extra = {k: v for k, v in self.shield.items() if k != "dt_s"}
        return {"dt_s": self.dt_s, **ShieldSettings.from_mapping(extra).to_dict()}

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (read back by :func:`load_fleet_spec`)."""
        return {
            "observation": [f.to_dict() for f in self.observation.fields],
            "pack_names": list(self.observation.pack_names),
            "action": [dataclasses.asdict(a) for a in self.action],
            "ratings": ratings_to_dict(self.ratings),
            "limits": [dataclasses.asdict(lim) for lim in self.limits],
            "dt_s": self.dt_s,
            "shield": dict(self.shield),
        }


def _check_source(name: str, source: str) -> None:
    if source not in PACK_SOURCES and source not in SITE_SOURCES:
        known = sorted(PACK_SOURCES) + sorted(SITE_SOURCES)
        raise ValueError(
            f"observation field {name!r} has no runtime source; give it a 'source' among {known}"
        )


def _resolve_source(name: str, explicit: str | None) -> str:
    source = explicit or SOURCE_ALIASES.get(name, name)
    _check_source(name, source)
    return source


def _entry(name: str, value: object) -> dict[str, Any]:
    if isinstance(value, ObsField):
        return value.to_dict()
    if isinstance(value, slice):
        return {"start": value.start, "stop": value.stop}
    if isinstance(value, tuple | list) and len(value) == 2:
        return {"start": value[0], "stop": value[1]}
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"observation layout entry {name!r} is not a slice, pair or mapping: {value!r}")


def _check_coverage(fields: Sequence[ObsField]) -> None:
    expected = 0
    for f in sorted(fields, key=lambda f: f.start):
        if f.start != expected:
            raise ValueError(
                f"observation layout has a gap or overlap at index {expected} (field {f.name!r} "
                f"starts at {f.start})"
            )
        expected = f.stop


def observation_fields(
    layout: ObservationLayout | Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    n_packs: int,
    observation_low: Sequence[float] | None = None,
    observation_high: Sequence[float] | None = None,
) -> tuple[ObsField, ...]:
    """The fields of an observation layout, given as the core type or as plain data.

    Args:
        layout: An :class:`~pulsebms.core.observation.ObservationLayout` (its fields are
            returned as they are, after checking their sources), a mapping name → entry, or
            a sequence of dicts with ``name`` (see the module docstring).
        n_packs: Number of packs (per-pack fields have this width; checked by the manifest).
        observation_low: Observation-space lower bounds, used where a plain entry gives none.
        observation_high: Observation-space upper bounds, likewise.

    Returns:
        The fields, ordered by ``start``.

    Raises:
        ValueError: If a field has no runtime source or the layout leaves gaps.
        TypeError: If an entry has an unsupported form.

    Example:
        >>> [f.source for f in observation_fields({"soc": (0, 2), "demand": (2, 3)}, n_packs=2)]
        ['soc', 'demand_w']
    """
    del n_packs  # widths are checked against the fleet by the manifest
    if isinstance(layout, ObservationLayout):
        for f in layout.fields:
            _check_source(f.name, f.source)
        out = sorted(layout.fields, key=lambda f: f.start)
        _check_coverage(out)
        return tuple(out)
    if isinstance(layout, Mapping):
        items = [(str(k), _entry(str(k), v)) for k, v in layout.items()]
    else:
        items = [(str(d["name"]), _entry(str(d["name"]), d)) for d in layout]
    fields = []
    for name, entry in items:
        start, stop = int(entry["start"]), int(entry["stop"])
        low = entry.get("low")
        high = entry.get("high")
        if low is None and observation_low is not None:
            low = float(np.min(np.asarray(observation_low)[start:stop]))
        if high is None and observation_high is not None:
            high = float(np.max(np.asarray(observation_high)[start:stop]))
        pack = entry.get("pack")
        fields.append(
            ObsField(
                name=name,
                start=start,
                stop=stop,
                unit=str(entry.get("unit", "")),
                scale=float(entry.get("scale", 1.0)),
                low=-math.inf if low is None else float(low),
                high=math.inf if high is None else float(high),
                description=str(entry.get("description", "")),
                source=_resolve_source(name, entry.get("source")),
                pack=None if pack is None else int(pack),
            )
        )
    fields.sort(key=lambda f: f.start)
    _check_coverage(fields)
    return tuple(fields)


def observation_layout(
    layout: ObservationLayout | Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    n_packs: int,
    pack_names: Sequence[str] = (),
    observation_low: Sequence[float] | None = None,
    observation_high: Sequence[float] | None = None,
) -> ObservationLayout:
    """An :class:`~pulsebms.core.observation.ObservationLayout` from the core type or plain data.

    Args:
        layout: See :func:`observation_fields`; a core layout is returned unchanged (after
            checking its sources and coverage).
        n_packs: Number of packs.
        pack_names: Pack labels of a plain layout.
        observation_low: See :func:`observation_fields`.
        observation_high: See :func:`observation_fields`.

    Returns:
        The layout.

    Raises:
        ValueError: If a field has no runtime source or the layout leaves gaps.
        TypeError: If an entry has an unsupported form.

    Example:
        >>> observation_layout({"soc": (0, 2), "demand": (2, 3)}, n_packs=2).names
        ('soc[0]', 'soc[1]', 'demand')
    """
    fields = observation_fields(
        layout,
        n_packs=n_packs,
        observation_low=observation_low,
        observation_high=observation_high,
    )
    if isinstance(layout, ObservationLayout):
        return layout
    return ObservationLayout(fields, tuple(pack_names))


def action_fields(n_packs: int) -> tuple[ActionField, ...]:
    """The FleetEnv action layout: one normalised power set-point per pack."""
    return (ActionField(name="power_setpoint", start=0, stop=n_packs),)


def fleet_spec_from_env(env: object, *, shield: Mapping[str, Any] | None = None) -> FleetSpec:
    """Read the fleet side of a manifest from a FleetEnv (possibly wrapped).

    The manifest's observation layout is the env's ``observation_layout`` itself.

    Args:
        env: The environment (:class:`~pulsebms.core.types.FleetEnvLike` once unwrapped);
            reads ``observation_layout``, ``ratings``, ``pack_limits`` (defaults by
            chemistry when empty) and ``dt_s``.
        shield: Shield settings to record (``dt_s`` is added).

    Returns:
        The spec.

    Raises:
        TypeError: If the (unwrapped) env is not a fleet environment.
        ValueError: If a field of its layout reads no runtime source.
    """
    base = as_fleet_env(env)
    ratings = base.ratings
    limits = tuple(base.pack_limits) or fleet_limits(ratings)
    layout = observation_layout(base.observation_layout, n_packs=ratings.n_packs)
    return FleetSpec(
        observation=layout,
        ratings=ratings,
        limits=limits,
        dt_s=float(base.dt_s),
        shield=dict(shield or {}),
    )


def fleet_spec_from_dict(data: Mapping[str, Any]) -> FleetSpec:
    """Build a :class:`FleetSpec` from :meth:`FleetSpec.to_dict`'s form.

    ``limits`` may be omitted (defaults by chemistry) or hold one mapping for every pack.

    Raises:
        ValueError: If a key is missing or a value is invalid.
    """
    try:
        ratings = ratings_from_dict(data["ratings"])
        raw_limits = data.get("limits")
        if raw_limits is None:
            limits = fleet_limits(ratings)
        elif isinstance(raw_limits, Mapping):
            limits = fleet_limits(ratings, **raw_limits)
        else:
            limits = tuple(PackLimits(**lim) for lim in raw_limits)
        layout = observation_layout(
            data["observation"],
            n_packs=ratings.n_packs,
            pack_names=tuple(str(p) for p in data.get("pack_names", ())),
        )
        action = tuple(ActionField(**a) for a in data.get("action", ()))
        return FleetSpec(
            observation=layout,
            ratings=ratings,
            limits=limits,
            dt_s=float(data["dt_s"]),
            shield=dict(data.get("shield", {})),
            action=action,
        )
    except KeyError as exc:
        raise ValueError(f"fleet spec lacks key {exc}") from exc
    except TypeError as exc:
        raise ValueError(f"fleet spec is malformed: {exc}") from exc


def load_fleet_spec(path: str | Path) -> FleetSpec:
    """Read a fleet spec from JSON (see :meth:`FleetSpec.to_dict`)."""
    return fleet_spec_from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
