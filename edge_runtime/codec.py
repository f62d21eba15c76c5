"""CAN frames ↔ PulseBMS quantities, through a DBC file and a configurable signal map.

The project's own protocol is ``data/pulsebms.dbc`` (see its comments). **Pack addressing is
by message-id offset**: the DBC defines the frame of pack 0, and pack ``i`` uses id
``frame_id + i * id_stride`` (telemetry ``0x100 + i``, set-points ``0x300 + i``). The site
frame (demand, price, time of day) has a single id.

Which DBC signal carries which quantity is configuration, a :class:`SignalMap` (JSON-able),
so a BMS speaking another DBC is wired by writing a map, not code. Each entry says
``ours = dbc_physical * scale + offset``: our DBC sends SoC in %, the map's ``scale=0.01``
turns it into a fraction.

:meth:`CanCodec.decode` never raises: a frame it cannot trust comes back as
:class:`MalformedFrame` with a reason (wrong length, out-of-range value, decode error, error
frame), an id it does not know as :class:`IgnoredFrame`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

import can
import cantools
import cantools.database

__all__ = [
    "DEFAULT_DBC",
    "PACK_TELEMETRY_FIELDS",
    "CanCodec",
    "DecodedFrame",
    "IgnoredFrame",
    "MalformedFrame",
    "SetpointFrame",
    "SignalMap",
    "SignalRef",
    "SiteFrame",
    "TelemetryFrame",
    "default_dbc_path",
]

DEFAULT_DBC = "pulsebms.dbc"
"""File name of the project DBC inside ``pulsebms.edge_runtime/data``."""

PACK_TELEMETRY_FIELDS = ("soc", "soh", "temperature_c", "cell_voltage_v", "current_a")
"""Telemetry quantities every pack must report (units in the names; SoC/SoH fractions)."""

_TELEMETRY_KEYS = (*PACK_TELEMETRY_FIELDS, "status", "counter")
_SETPOINT_KEYS = ("power_w", "mode", "enable", "reason", "counter")
_SITE_KEYS = ("demand_w", "price_per_kwh", "time_of_day_s", "ambient_c", "counter")


def default_dbc_path() -> Path:
    """Path of the project DBC shipped as package data."""
    return Path(str(resources.files("pulsebms.edge_runtime").joinpath("data", DEFAULT_DBC)))


@dataclass(frozen=True)
class SignalRef:
    """Where one quantity lives in the DBC.

    Attributes:
        message: DBC message name.
        signal: DBC signal name in that message.
        scale: ``ours = dbc_physical * scale + offset``.
        offset: See ``scale``.
    """

    message: str
    signal: str
    scale: float = 1.0
    offset: float = 0.0

    def to_ours(self, dbc_value: float) -> float:
        """DBC physical value → PulseBMS unit."""
        return dbc_value * self.scale + self.offset

    def to_dbc(self, value: float) -> float:
        """PulseBMS unit → DBC physical value."""
        return (value - self.offset) / self.scale


@dataclass(frozen=True)
class SignalMap:
    """Which DBC signal carries which PulseBMS quantity.

    Attributes:
        telemetry: Per-pack telemetry: every key of :data:`PACK_TELEMETRY_FIELDS`
            (required), plus optional ``status`` and ``counter``. May span several messages.
        setpoint: Per-pack command: ``power_w`` (required), optional ``mode``, ``enable``,
            ``reason``, ``counter``; all in one message.
        site: Site frame: ``demand_w`` (required), optional ``price_per_kwh``,
            ``time_of_day_s``, ``ambient_c``, ``counter``; all in one message.
        id_stride: Pack ``i`` uses ``frame_id + i * id_stride`` for every per-pack message.
        status_fault_values: Values of the telemetry ``status`` signal meaning "pack faulted".
        mode_safe: Value of ``mode`` that commands the safe state (zero power).
        mode_run: Value of ``mode`` that commands normal operation.

    Example:
        >>> SignalMap.default().telemetry["soc"].scale
        0.01
    """

    telemetry: dict[str, SignalRef]
    setpoint: dict[str, SignalRef]
    site: dict[str, SignalRef]
    id_stride: int = 1
    status_fault_values: tuple[int, ...] = (2, 3)
    mode_safe: int = 0
    mode_run: int = 1

    def __post_init__(self) -> None:
        for group, keys, required in (
            ("telemetry", _TELEMETRY_KEYS, PACK_TELEMETRY_FIELDS),
            ("setpoint", _SETPOINT_KEYS, ("power_w",)),
            ("site", _SITE_KEYS, ("demand_w",)),
        ):
            refs: dict[str, SignalRef] = getattr(self, group)
            missing = [k for k in required if k not in refs]
            unknown = [k for k in refs if k not in keys]
            if missing or unknown:
                raise ValueError(
                    f"signal map '{group}': missing {missing}, unknown {unknown}; "
                    f"allowed keys {list(keys)}"
                )
            if any(r.scale == 0 or not math.isfinite(r.scale) for r in refs.values()):
                raise ValueError(f"signal map '{group}': every scale must be finite and non-zero")
        for group in ("setpoint", "site"):
            refs = getattr(self, group)
            if len({r.message for r in refs.values()}) != 1:
                raise ValueError(f"signal map '{group}' must use exactly one message")
        if self.id_stride < 1:
            raise ValueError(f"signal map id_stride must be >= 1, got {self.id_stride}")

    @classmethod
    def default(cls) -> SignalMap:
        """The map for the project DBC (``data/pulsebms.dbc``)."""
        tel, sp, site = "PackTelemetry", "PackSetpoint", "SiteStatus"
        return cls(
            telemetry={
                "soc": SignalRef(tel, "SoC", 0.01),
                "soh": SignalRef(tel, "SoH", 0.01),
                "temperature_c": SignalRef(tel, "Temperature"),
                "cell_voltage_v": SignalRef(tel, "CellVoltage"),
                "current_a": SignalRef(tel, "Current"),
                "status": SignalRef(tel, "Status"),
                "counter": SignalRef(tel, "Counter"),
            },
            setpoint={
                "power_w": SignalRef(sp, "PowerSetpoint"),
                "mode": SignalRef(sp, "Mode"),
                "enable": SignalRef(sp, "Enable"),
                "reason": SignalRef(sp, "Reason"),
                "counter": SignalRef(sp, "Counter"),
            },
            site={
                "demand_w": SignalRef(site, "Demand"),
                "price_per_kwh": SignalRef(site, "Price"),
                "time_of_day_s": SignalRef(site, "TimeOfDay", 60.0),
                "ambient_c": SignalRef(site, "AmbientTemperature"),
                "counter": SignalRef(site, "Counter"),
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "telemetry": {k: vars(v) for k, v in self.telemetry.items()},
            "setpoint": {k: vars(v) for k, v in self.setpoint.items()},
            "site": {k: vars(v) for k, v in self.site.items()},
            "id_stride": self.id_stride,
            "status_fault_values": list(self.status_fault_values),
            "mode_safe": self.mode_safe,
            "mode_run": self.mode_run,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignalMap:
        """Build a map from :meth:`to_dict`'s form.

        Raises:
            ValueError: If a group or key is missing or unknown.
        """
        try:
            return cls(
                telemetry={k: SignalRef(**v) for k, v in data["telemetry"].items()},
                setpoint={k: SignalRef(**v) for k, v in data["setpoint"].items()},
                site={k: SignalRef(**v) for k, v in data["site"].items()},
                id_stride=int(data.get("id_stride", 1)),
                status_fault_values=tuple(int(v) for v in data.get("status_fault_values", ())),
                mode_safe=int(data.get("mode_safe", 0)),
                mode_run=int(data.get("mode_run", 1)),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"signal map is malformed: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> SignalMap:
        """Read a JSON signal map (see :meth:`to_dict`)."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass(frozen=True)
class TelemetryFrame:
    """Decoded per-pack telemetry (only the quantities this message carries).

    Attributes:
        pack: Pack index.
        values: Quantity → value in PulseBMS units (keys of :data:`PACK_TELEMETRY_FIELDS`).
        status: BMS status code, if the message carries it.
        counter: Rolling counter, if the message carries it.
        message: DBC message name.
    """

    pack: int
    values: dict[str, float]
    status: int | None = None
    counter: int | None = None
    message: str = ""


@dataclass(frozen=True)
class SiteFrame:
    """Decoded site frame.

    Attributes:
        values: ``demand_w``, and where mapped ``price_per_kwh``, ``time_of_day_s``,
            ``ambient_c``.
        counter: Rolling counter, if mapped.
    """

    values: dict[str, float]
    counter: int | None = None


@dataclass(frozen=True)
class SetpointFrame:
    """Decoded set-point (what the runtime sent; the HIL simulator reads these).

    Attributes:
        pack: Pack index.
        power_w: Power set-point [W], + = discharge.
        mode: Mode code (``mode_safe``/``mode_run`` of the map), if mapped.
        enable: Enable flag, if mapped.
        reason: Reason bit field, if mapped.
        counter: Rolling counter, if mapped.
    """

    pack: int
    power_w: float
    mode: int | None = None
    enable: bool | None = None
    reason: int | None = None
    counter: int | None = None


@dataclass(frozen=True)
class MalformedFrame:
    """A frame with a known id (or an error frame) whose content cannot be trusted.

    Attributes:
        arbitration_id: The frame's id.
        reason: What is wrong, for the report.
        pack: The pack it belongs to, if the id says so.
    """

    arbitration_id: int
    reason: str
    pack: int | None = None


@dataclass(frozen=True)
class IgnoredFrame:
    """A frame that is not for us (unknown id, remote frame).

    Attributes:
        arbitration_id: The frame's id.
        reason: Why it was ignored.
    """

    arbitration_id: int
    reason: str


DecodedFrame = TelemetryFrame | SiteFrame | SetpointFrame | MalformedFrame | IgnoredFrame
"""Everything :meth:`CanCodec.decode` can return."""


@dataclass(frozen=True)
class _Route:
    kind: str  # "telemetry" | "setpoint" | "site"
    message: cantools.database.Message
    pack: int | None
    refs: dict[str, SignalRef] = field(default_factory=dict)


@dataclass(frozen=True)
class _EncodePlan:
    message: cantools.database.Message
    signals: list[tuple[str, SignalRef, float, float]]  # key, ref, DBC min, DBC max
    defaults: dict[str, float]


class CanCodec:
    """Encode and decode PulseBMS frames with a DBC and a :class:`SignalMap`.

    Args:
        n_packs: Number of packs; ids for packs ``0 .. n_packs-1`` are routed.
        dbc_path: The DBC file; the project DBC by default.
        signal_map: The signal map; :meth:`SignalMap.default` by default.

    Raises:
        ValueError: If the map names a message or signal the DBC lacks, or pack ids collide.

    Example:
        >>> codec = CanCodec(n_packs=2)
        >>> msg = codec.encode_setpoint(1, power_w=500.0, counter=3)
        >>> hex(msg.arbitration_id), codec.decode(msg).power_w
        ('0x301', 500.0)
    """

    def __init__(
        self,
        n_packs: int,
        *,
        dbc_path: str | Path | None = None,
        signal_map: SignalMap | None = None,
    ) -> None:
        if n_packs < 1:
            raise ValueError(f"n_packs must be >= 1, got {n_packs}")
        self.n_packs = n_packs
        self.dbc_path = Path(dbc_path) if dbc_path is not None else default_dbc_path()
        self.signal_map = signal_map if signal_map is not None else SignalMap.default()
        db = cantools.database.load_file(str(self.dbc_path))
        if not isinstance(db, cantools.database.Database):
            raise ValueError(f"{self.dbc_path} is not a CAN DBC database")
        self.db = db
        self._routes: dict[tuple[int, bool], _Route] = {}
        self._messages: dict[str, cantools.database.Message] = {}
        sm = self.signal_map
        for kind, refs, per_pack in (
            ("telemetry", sm.telemetry, True),
            ("setpoint", sm.setpoint, True),
            ("site", sm.site, False),
        ):
            by_message: dict[str, dict[str, SignalRef]] = {}
            for key, ref in refs.items():
                by_message.setdefault(ref.message, {})[key] = ref
            for name, msg_refs in by_message.items():
                message = self._message(name, msg_refs)
                packs: list[int | None] = list(range(n_packs)) if per_pack else [None]
                for pack in packs:
                    frame_id = message.frame_id + (pack or 0) * sm.id_stride
                    route_key = (frame_id, bool(message.is_extended_frame))
                    if route_key in self._routes:
                        raise ValueError(
                            f"frame id 0x{frame_id:X} of {name} (pack {pack}) collides with "
                            f"{self._routes[route_key].message.name}; lower n_packs or change "
                            "the DBC"
                        )
                    self._routes[route_key] = _Route(kind, message, pack, msg_refs)
        self._plans = {
            "telemetry": self._plan(sm.telemetry),
            "setpoint": self._plan(sm.setpoint),
            "site": self._plan(sm.site),
        }
        self._modulus: dict[str, int] = {}
        for kind in ("telemetry", "setpoint", "site"):
            ref = getattr(sm, kind).get("counter")
            bits = (
                0
                if ref is None
                else int(self._messages[ref.message].get_signal_by_name(ref.signal).length)
            )
            self._modulus[kind] = 2**bits

    def _message(self, name: str, refs: Mapping[str, SignalRef]) -> cantools.database.Message:
        try:
            message = self.db.get_message_by_name(name)
        except KeyError:
            raise ValueError(f"DBC {self.dbc_path} has no message {name!r}") from None
        names = {s.name for s in message.signals}
        for ref in refs.values():
            if ref.signal not in names:
                raise ValueError(f"DBC message {name!r} has no signal {ref.signal!r}")
        self._messages[name] = message
        return message

    def frame_id(self, kind: str, pack: int | None = None) -> int:
        """CAN id of the ``kind`` (``telemetry``/``setpoint``/``site``) frame of ``pack``."""
        refs = getattr(self.signal_map, kind)
        message = self._messages[next(iter(refs.values())).message]
        return int(message.frame_id + (pack or 0) * self.signal_map.id_stride)

    # ------------------------------------------------------------------ decode
    def decode(self, msg: can.Message) -> DecodedFrame:
        """Decode one received frame; never raises.

        Args:
            msg: The frame.

        Returns:
            A telemetry, site or set-point frame; :class:`MalformedFrame` if the id is ours but
            the content cannot be trusted; :class:`IgnoredFrame` if the id is not ours.
        """
        try:
            return self._decode(msg)
        except Exception as exc:  # a decoder bug must not stop the control loop
            return MalformedFrame(
                int(getattr(msg, "arbitration_id", -1)), f"decode error: {exc!r}", None
            )

    def _decode(self, msg: can.Message) -> DecodedFrame:
        if msg.is_error_frame:
            return MalformedFrame(msg.arbitration_id, "CAN error frame")
        route = self._routes.get((msg.arbitration_id, bool(msg.is_extended_id)))
        if route is None:
            return IgnoredFrame(msg.arbitration_id, "unknown id")
        if msg.is_remote_frame:
            return IgnoredFrame(msg.arbitration_id, "remote frame")
        message = route.message
        data = bytes(msg.data)
        if msg.dlc != message.length or len(data) != message.length:
            return MalformedFrame(
                msg.arbitration_id,
                f"{message.name}: length {len(data)} (dlc {msg.dlc}), DBC says {message.length}",
                route.pack,
            )
        try:
            raw = cast(Mapping[str, Any], message.decode(data, decode_choices=False, scaling=True))
        except Exception as exc:
            return MalformedFrame(
                msg.arbitration_id, f"{message.name}: cannot decode: {exc}", route.pack
            )
        values: dict[str, float] = {}
        for key, ref in route.refs.items():
            signal = message.get_signal_by_name(ref.signal)
            value = float(raw[ref.signal])
            if not math.isfinite(value):
                return MalformedFrame(
                    msg.arbitration_id, f"{message.name}.{ref.signal} is not finite", route.pack
                )
            lo, hi = signal.minimum, signal.maximum
            tol = 1e-9 + abs(float(signal.scale)) * 1e-6
            if (lo is not None and value < lo - tol) or (hi is not None and value > hi + tol):
                return MalformedFrame(
                    msg.arbitration_id,
                    f"{message.name}.{ref.signal}={value:g} outside DBC range [{lo}, {hi}]",
                    route.pack,
                )
            values[key] = ref.to_ours(value)
        counter = values.pop("counter", None)
        counter_int = None if counter is None else round(counter)
        if route.kind == "telemetry":
            status = values.pop("status", None)
            return TelemetryFrame(
                pack=int(route.pack or 0),
                values=values,
                status=None if status is None else round(status),
                counter=counter_int,
                message=message.name,
            )
        if route.kind == "site":
            return SiteFrame(values=values, counter=counter_int)
        mode = values.get("mode")
        enable = values.get("enable")
        reason = values.get("reason")
        return SetpointFrame(
            pack=int(route.pack or 0),
            power_w=values["power_w"],
            mode=None if mode is None else round(mode),
            enable=None if enable is None else bool(round(enable)),
            reason=None if reason is None else round(reason),
            counter=counter_int,
        )

    # ------------------------------------------------------------------ encode
    def counter_modulus(self, kind: str) -> int:
        """Rolling-counter modulus (``2**bits``) of ``kind``'s counter, 1 if it has none."""
        return self._modulus[kind]

    def _plan(self, refs: Mapping[str, SignalRef]) -> list[_EncodePlan]:
        """Per message: the mapped signals with their DBC ranges, and defaults for the rest."""
        plans: dict[str, _EncodePlan] = {}
        for key, ref in refs.items():
            message = self._messages[ref.message]
            if ref.message not in plans:
                defaults = {
                    s.name: float(0 if s.minimum is None else max(float(s.minimum), 0.0))
                    for s in message.signals
                }
                plans[ref.message] = _EncodePlan(message, [], defaults)
            signal = message.get_signal_by_name(ref.signal)
            lo = -math.inf if signal.minimum is None else float(signal.minimum)
            hi = math.inf if signal.maximum is None else float(signal.maximum)
            plans[ref.message].signals.append((key, ref, lo, hi))
        return list(plans.values())

    def _encode(
        self, plans: list[_EncodePlan], values: Mapping[str, float], pack: int | None
    ) -> list[can.Message]:
        frames = []
        offset = (pack or 0) * self.signal_map.id_stride
        for plan in plans:
            signals = dict(plan.defaults)
            for key, ref, lo, hi in plan.signals:
                if key in values:
                    value = (float(values[key]) - ref.offset) / ref.scale
                    signals[ref.signal] = min(max(value, lo), hi)
            message = plan.message
            data = message.encode(signals, scaling=True, strict=False)
            frames.append(
                can.Message(
                    arbitration_id=message.frame_id + offset,
                    is_extended_id=bool(message.is_extended_frame),
                    data=data,
                    dlc=message.length,
                )
            )
        return frames

    def encode_setpoint(
        self,
        pack: int,
        power_w: float,
        *,
        safe: bool = False,
        reason: int = 0,
        counter: int = 0,
    ) -> can.Message:
        """Encode the set-point frame of one pack.

        Args:
            pack: Pack index.
            power_w: Power set-point [W], + = discharge; clipped to the DBC range.
            safe: Command the safe state (mode safe, enable 0, zero power).
            reason: Reason bit field (see the DBC comment).
            counter: Rolling counter (wrapped to the signal width).

        Returns:
            The frame.
        """
        sm = self.signal_map
        values = {
            "power_w": 0.0 if safe or not math.isfinite(power_w) else power_w,
            "mode": float(sm.mode_safe if safe else sm.mode_run),
            "enable": 0.0 if safe else 1.0,
            "reason": float(reason & 0xFF),
            "counter": float(counter % self.counter_modulus("setpoint")),
        }
        return self._encode(self._plans["setpoint"], values, pack)[0]

    def encode_telemetry(
        self,
        pack: int,
        values: Mapping[str, float],
        *,
        status: int = 0,
        counter: int = 0,
    ) -> list[can.Message]:
        """Encode one pack's telemetry (the HIL simulator and tests use this).

        Args:
            pack: Pack index.
            values: Quantities keyed as :data:`PACK_TELEMETRY_FIELDS`, PulseBMS units.
            status: BMS status code.
            counter: Rolling counter.

        Returns:
            One frame per telemetry message of the map.
        """
        full = {**values, "status": float(status)}
        full["counter"] = float(counter % self.counter_modulus("telemetry"))
        return self._encode(self._plans["telemetry"], full, pack)

    def encode_site(
        self,
        demand_w: float,
        *,
        price_per_kwh: float = 0.0,
        time_of_day_s: float = 0.0,
        ambient_c: float = 25.0,
        counter: int = 0,
    ) -> can.Message:
        """Encode the site frame.

        Args:
            demand_w: Site power demand [W], + = the fleet should discharge.
            price_per_kwh: Energy price now.
            time_of_day_s: Seconds since midnight.
            ambient_c: Ambient temperature [°C].
            counter: Rolling counter.

        Returns:
            The frame.
        """
        values = {
            "demand_w": demand_w,
            "price_per_kwh": price_per_kwh,
            "time_of_day_s": time_of_day_s % 86400.0,
            "ambient_c": ambient_c,
            "counter": float(counter % self.counter_modulus("site")),
        }
        return self._encode(self._plans["site"], values, None)[0]
