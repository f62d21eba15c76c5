"""The shield's settings in one place: :class:`ShieldSettings` (numpy only).

Everything that tunes a :class:`~pulsebms.safety.shield.Shield` besides the fleet's
ratings, its limits and the control interval ``dt_s``: the margins kept inside each limit
for the mismatch between the shield's one-step cell model and the plant, the temperature
derating band, the pulse duration of the effective resistance, and whether the callers of
the shield (:class:`~pulsebms.safety.ShieldWrapper`, the edge runtime) aim at the fleet
demand. The shield, the wrapper, the edge manifest and the Hydra schema all read the
defaults from here.

Example:
    >>> settings = ShieldSettings.from_mapping({"soc_margin": 0.01})
    >>> settings.soc_margin, settings.voltage_margin_v
    (0.01, 0.005)
    >>> ShieldSettings.from_mapping(settings.to_dict()) == settings
    True
    >>> ShieldSettings.from_mapping({"soc_marign": 0.01})
    Traceback (most recent call last):
    ...
    ValueError: unknown shield setting(s) ['soc_marign']; known: allocation, \
current_margin, derating_band_c, resistance_duration_s, soc_margin, track_demand, \
voltage_margin_v
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np

__all__ = ["ALLOCATIONS", "ShieldSettings", "ShieldSettingsOverrides", "merge_settings"]

ALLOCATIONS: tuple[str, ...] = ("redistribute", "respect_split")
"""The values of :attr:`ShieldSettings.allocation`."""


class ShieldSettingsOverrides(TypedDict, total=False):
    """Keyword overrides of :class:`ShieldSettings` fields (for ``**kwargs`` typing)."""

    derating_band_c: float
    resistance_duration_s: float | None
    voltage_margin_v: float
    soc_margin: float
    current_margin: float
    track_demand: bool
    allocation: str


@dataclass(frozen=True)
class ShieldSettings:
    """Settings of the constraint shield (all but ratings, limits and ``dt_s``).

    Each margin is kept inside its limit for the mismatch between the shield's one-step
    model (tabulated OCV and effective resistance, constant current over the step) and
    the plant, which turns a power set-point into a current with its own model.

    Attributes:
        derating_band_c: Width of the band inside each temperature limit over which the
            admissible power falls linearly to zero [°C] (finite, > 0). Default 5 °C: a
            pack approaching a temperature limit is throttled over the last 5 °C instead
            of being cut off at the limit (the hot and cold scenarios of
            ``tests/safety/test_shield_e2e.py`` run with zero violations with it).
        resistance_duration_s: Pulse duration at which the effective resistance is read
            [s] (finite, > 0), or None for ``max(dt_s, 1000)``. Default None: a pack may
            already carry the polarisation of earlier steps at the same current, so the
            longest tabulated pulse (1000 s) is the safe reading; ``dt_s`` alone
            under-predicts the drop of a sustained current.
        voltage_margin_v: Margin kept inside the cell voltage window [V] (finite, ≥ 0; it
            must leave every pack's window non-empty). Default 5 mV: the model error of
            the voltage prediction (interpolated OCV and resistance tables against the
            twins), chosen with the first shield and kept since; every registered env
            runs the adversarial policies of ``tests/safety/test_shield_e2e.py`` without
            a measured voltage violation with it.
        soc_margin: Margin kept inside the SoC window (fraction, finite, ≥ 0; it must
            leave every pack's window non-empty). Default 0.005: the plant can draw a few
            per cent more current than the shield planned (see ``current_margin``); 3 %
            more at 1 C over a 300 s step (the registered envs' ``dt_s``) moves the SoC
            0.25 % past an exactly active bound, and the default keeps twice that.
        current_margin: Relative margin on the current and C-rate limits (finite, in
            ``[0, 1)``). Default 0.03: measured, the PulseBMS physics twin's power model,
            which ignores temperature, draws up to 2 % more current than the shield
            planned at 40 °C; 3 % keeps one point of headroom above that.
        track_demand: Aim at the fleet request ``FleetState.demand_w`` instead of the
            policy's own total (demand tracking). Read by the callers of
            :meth:`Shield.project <pulsebms.safety.shield.Shield.project>` (the wrapper
            and the edge runtime pass the target); the shield itself takes the target per
            call. Default False: the policy's total is kept, clipped power is
            redistributed. Needs ``allocation="redistribute"``.
        allocation: What the shield does with the power it clips off a pack:
            ``"redistribute"`` (default, the behaviour since the first shield): move it
            to packs with headroom so that the fleet total (the policy's, or the target)
            is kept (closest point of box ∩ {total = target}); ``"respect_split"``: clip
            each pack into its admissible interval and leave the others alone (the
            policy's split is kept; the lost fleet power is reported as the shortfall,
            ``ShieldResult.shortfall_w`` / ``info["shield_shortfall_w"]``). Default
            ``"redistribute"``: seeded runs and manifests without the key keep their
            behaviour.

    Raises:
        ValueError: On a value of the wrong type or out of its range (the message names
            the field).
    """

    derating_band_c: float = 5.0
    resistance_duration_s: float | None = None
    voltage_margin_v: float = 0.005
    soc_margin: float = 5e-3
    current_margin: float = 0.03
    track_demand: bool = False
    allocation: str = "redistribute"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "allocation":
                if not (isinstance(value, str) and value in ALLOCATIONS):
                    raise ValueError(
                        f"ShieldSettings.allocation must be one of {list(ALLOCATIONS)}, "
                        f"got {value!r}"
                    )
                object.__setattr__(self, f.name, str(value))
                continue
            if f.name == "track_demand":
                if not isinstance(value, bool | np.bool_):
                    raise ValueError(f"ShieldSettings.track_demand must be a bool, got {value!r}")
                object.__setattr__(self, f.name, bool(value))
                continue
            if value is None and f.name == "resistance_duration_s":
                continue
            if isinstance(value, bool | np.bool_) or not isinstance(
                value, int | float | np.integer | np.floating
            ):
                raise ValueError(f"ShieldSettings.{f.name} must be a real number, got {value!r}")
            object.__setattr__(self, f.name, float(value))
        if not (math.isfinite(self.derating_band_c) and self.derating_band_c > 0):
            raise ValueError(f"derating_band_c must be finite and > 0, got {self.derating_band_c}")
        duration = self.resistance_duration_s
        if duration is not None and not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"resistance_duration_s must be finite and > 0, got {duration}")
        if not (math.isfinite(self.voltage_margin_v) and self.voltage_margin_v >= 0):
            raise ValueError(
                f"voltage_margin_v must be finite and >= 0, got {self.voltage_margin_v}"
            )
        if not (math.isfinite(self.soc_margin) and self.soc_margin >= 0):
            raise ValueError(f"soc_margin must be finite and >= 0, got {self.soc_margin}")
        if not (math.isfinite(self.current_margin) and 0 <= self.current_margin < 1):
            raise ValueError(f"current_margin must be in [0, 1), got {self.current_margin}")
        if self.track_demand and self.allocation != "redistribute":
            raise ValueError(
                "track_demand=True needs allocation='redistribute' (respect_split never "
                "moves power between packs, so it cannot aim at a fleet target)"
            )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The setting names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (floats, None, bool), e.g. for a manifest.

        Returns:
            Setting name → value, every field.
        """
        return {name: getattr(self, name) for name in self.field_names()}

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ShieldSettings:
        """Settings from plain data (a manifest, a config); missing keys take the defaults.

        Args:
            mapping: Setting name → value.

        Returns:
            The validated settings.

        Raises:
            ValueError: On a key that is not a setting (the message lists the known
                ones), or a value out of range.
        """
        known = cls.field_names()
        unknown = sorted(str(k) for k in mapping if k not in known)
        if unknown:
            raise ValueError(
                f"unknown shield setting(s) {unknown}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(mapping))

    def replace(self, **overrides: Any) -> ShieldSettings:
        """A copy with some fields changed (validated as :meth:`from_mapping`).

        Args:
            **overrides: Setting name → new value.

        Returns:
            The new settings.

        Raises:
            ValueError: As :meth:`from_mapping`.
        """
        if not overrides:
            return self
        return self.from_mapping({**self.to_dict(), **overrides})


def merge_settings(
    settings: ShieldSettings | Mapping[str, Any] | None,
    overrides: Mapping[str, Any],
    *,
    caller: str = "Shield",
) -> ShieldSettings:
    """The settings a constructor resolves: a base with keyword overrides on top.

    A mapping ``settings`` goes through :meth:`ShieldSettings.from_mapping`; None means the
    defaults. The legacy keyword arguments of :class:`~pulsebms.safety.shield.Shield` and
    :class:`~pulsebms.safety.ShieldWrapper` (``soc_margin=0.01``, …) go through here.

    Args:
        settings: The base settings.
        overrides: Setting name → value, e.g. a constructor's ``**kwargs``.
        caller: Name of the constructor, for the error message.

    Returns:
        The merged, validated settings.

    Raises:
        TypeError: On an override that is not a setting (as for an unexpected keyword).
        ValueError: On an unknown key in a ``settings`` mapping or an invalid value.

    Example:
        >>> merge_settings(ShieldSettings(soc_margin=0.01), {"current_margin": 0.05})
        ShieldSettings(derating_band_c=5.0, resistance_duration_s=None, \
voltage_margin_v=0.005, soc_margin=0.01, current_margin=0.05, track_demand=False, \
allocation='redistribute')
    """
    known = ShieldSettings.field_names()
    for name in overrides:
        if name not in known:
            raise TypeError(
                f"{caller}() got an unexpected keyword argument {name!r} "
                f"(settings: {', '.join(sorted(known))})"
            )
    if settings is None:
        base = ShieldSettings()
    elif isinstance(settings, ShieldSettings):
        base = settings
    else:
        base = ShieldSettings.from_mapping(settings)
    return base.replace(**overrides)
