"""Signal map v2: which DBC signal carries which PulseBMS quantity, as configuration.

A :class:`SignalMap` wires a DBC to PulseBMS without code: per telemetry message the
quantities it carries (several messages, several signals per quantity such as min/max
pairs), multiplexed per-cell voltages with invalid flags, explicit per-pack frame ids or
``DBC id + pack * id_stride``, named buses (one per pack or group), a command side that is
either a power set-point or a state request (standby / charge / discharge) with current
or power limits, optional rolling-counter and checksum checks, and an optional site frame.
The file format (JSON, or YAML when PyYAML is installed) is documented in
``docs/signal_map.md``; the v1 form (``telemetry``/``setpoint``/``site`` dictionaries of
:class:`SignalRef`) keeps loading.

Every scaled entry says ``ours = dbc_physical * scale + offset``.

Example:
    >>> smap = SignalMap.default()
    >>> smap.version, smap.command.kind, smap.telemetry[0].signals["soc"].scale
    (2, 'setpoint', 0.01)
    >>> SignalMap.from_dict(smap.to_dict()) == smap
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "COMMAND_KINDS",
    "COMMAND_QUANTITIES",
    "SITE_QUANTITIES",
    "TELEMETRY_QUANTITIES",
    "CellBlock",
    "CommandMap",
    "IntegrityCheck",
    "MessageMap",
    "ScaledSignal",
    "SignalMap",
    "SignalRef",
    "checksum",
    "data_path",
    "signal_map_template",
]

TELEMETRY_QUANTITIES = (
    "soc",
    "soh",
    "current_a",
    "cell_voltage_v",
    "cell_voltage_min_v",
    "cell_voltage_max_v",
    "temperature_c",
    "temperature_min_c",
    "temperature_max_c",
    "status",
    "bms_state",
)
"""Keys a telemetry message may map (SoC/SoH fractions, current + = discharge)."""

COMMAND_KINDS = ("setpoint", "state_request")
"""Command forms: a power set-point, or a state request with limits."""

COMMAND_QUANTITIES: dict[str, tuple[str, ...]] = {
    "setpoint": ("power_w", "mode", "enable", "reason"),
    "state_request": (
        "state",
        "charge_current_limit_a",
        "discharge_current_limit_a",
        "charge_power_limit_w",
        "discharge_power_limit_w",
        "reason",
    ),
}
"""Keys a command message may map, per command kind (limits are magnitudes, >= 0)."""

SITE_QUANTITIES = ("demand_w", "price_per_kwh", "time_of_day_s", "ambient_c")
"""Keys the site message may map."""

CHECKSUM_ALGORITHMS = ("crc8_sae_j1850", "sum8", "xor8")
"""Checksums over the payload bytes except the (8-bit, byte-aligned) checksum byte."""

_STATES = ("standby", "charge", "discharge")


def data_path(name: str) -> Path:
    """Path of a file shipped in ``pulsebms.edge_runtime/data`` (DBCs, example maps)."""
    return Path(str(resources.files("pulsebms.edge_runtime").joinpath("data", name)))


def _crc8_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1D) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_CRC8_J1850 = _crc8_table()


def _crc8_sae_j1850(data: bytes) -> int:
    crc = 0xFF
    for byte in data:
        crc = _CRC8_J1850[crc ^ byte]
    return crc ^ 0xFF


def checksum(algorithm: str, data: bytes) -> int:
    r"""The 8-bit checksum of ``data`` (the payload without its checksum byte).

    Args:
        algorithm: One of :data:`CHECKSUM_ALGORITHMS`: ``crc8_sae_j1850`` (poly 0x1D,
            init and final XOR 0xFF, as AUTOSAR E2E profile 1), ``sum8`` (byte sum mod
            256), ``xor8`` (XOR of the bytes).
        data: The bytes covered.

    Returns:
        The checksum byte.

    Raises:
        ValueError: If the algorithm is unknown.

    Example:
        >>> checksum("crc8_sae_j1850", b"123456789"), checksum("sum8", bytes([1, 255]))
        (75, 0)
    """
    if algorithm == "crc8_sae_j1850":
        return _crc8_sae_j1850(data)
    if algorithm == "sum8":
        return sum(data) & 0xFF
    if algorithm == "xor8":
        out = 0
        for byte in data:
            out ^= byte
        return out
    raise ValueError(f"unknown checksum algorithm {algorithm!r}; known {CHECKSUM_ALGORITHMS}")


@dataclass(frozen=True)
class SignalRef:
    """v1 form: where one quantity lives in the DBC (kept for v1 maps and code).

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


@dataclass(frozen=True)
class ScaledSignal:
    """One DBC signal of a message and its conversion to PulseBMS units.

    Attributes:
        signal: DBC signal name.
        scale: ``ours = dbc_physical * scale + offset`` (finite, non-zero).
        offset: See ``scale``.
    """

    signal: str
    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        if self.scale == 0 or not (math.isfinite(self.scale) and math.isfinite(self.offset)):
            raise ValueError(f"signal {self.signal!r}: scale must be finite and non-zero")

    def to_ours(self, dbc_value: float) -> float:
        """DBC physical value → PulseBMS unit."""
        return dbc_value * self.scale + self.offset

    def to_dbc(self, value: float) -> float:
        """PulseBMS unit → DBC physical value."""
        return (value - self.offset) / self.scale


@dataclass(frozen=True)
class CellBlock:
    """Per-cell voltages of a (usually multiplexed) message.

    Cell ``k`` is carried by the signal named ``voltage.format(cell=k)`` (its invalid flag
    by ``invalid.format(cell=k)``); in a multiplexed message the signal's multiplexer value
    says which frame carries it, so 50 mux values × 4 cells are 200 signal names.

    Attributes:
        count: Cells per pack (``0 .. count-1``).
        voltage: Voltage signal name pattern with ``{cell}``.
        invalid: Invalid-flag signal name pattern, or ``None``.
        invalid_value: Flag value meaning "invalid".
        scale: ``volts = dbc_physical * scale + offset``.
        offset: See ``scale``.
    """

    count: int
    voltage: str
    invalid: str | None = None
    invalid_value: int = 1
    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        if self.count < 1 or "{cell" not in self.voltage:
            raise ValueError("cells: count must be >= 1 and voltage a pattern with '{cell}'")
        if self.invalid is not None and "{cell" not in self.invalid:
            raise ValueError("cells: invalid must be a pattern with '{cell}'")
        if self.scale == 0 or not math.isfinite(self.scale):
            raise ValueError("cells: scale must be finite and non-zero")


@dataclass(frozen=True)
class IntegrityCheck:
    """A rolling counter or checksum signal, and how many errors in a row are tolerated.

    Attributes:
        signal: DBC signal name.
        max_errors: Consecutive wrong frames tolerated; the next one is reported as
            malformed (the runtime puts the pack in the safe state). ``None``: not checked
            by the codec (a counter is still reported and encoded).
        algorithm: Checksum algorithm (:data:`CHECKSUM_ALGORITHMS`); empty for counters.
    """

    signal: str
    max_errors: int | None = None
    algorithm: str = ""

    def __post_init__(self) -> None:
        if self.max_errors is not None and self.max_errors < 0:
            raise ValueError(f"{self.signal}: max_errors must be >= 0")
        if self.algorithm and self.algorithm not in CHECKSUM_ALGORITHMS:
            raise ValueError(
                f"{self.signal}: unknown checksum algorithm {self.algorithm!r}; "
                f"known {CHECKSUM_ALGORITHMS}"
            )


@dataclass(frozen=True)
class MessageMap:
    """One DBC message: its quantities, its per-pack ids and its integrity checks.

    Attributes:
        message: DBC message name.
        signals: Quantity → signal.
        frame_ids: Explicit id per pack (pack ``i`` uses ``frame_ids[i]``); ``None``:
            ``DBC id + pack * id_stride``.
        id_stride: Stride for this message; the map's ``id_stride`` when ``None``.
        cells: Per-cell voltages carried by this message.
        counter: Rolling counter.
        checksum: Checksum (an 8-bit, byte-aligned signal).
    """

    message: str
    signals: dict[str, ScaledSignal] = field(default_factory=dict)
    frame_ids: tuple[int, ...] | None = None
    id_stride: int | None = None
    cells: CellBlock | None = None
    counter: IntegrityCheck | None = None
    checksum: IntegrityCheck | None = None

    def __post_init__(self) -> None:
        if self.id_stride is not None and self.id_stride < 1:
            raise ValueError(f"{self.message}: id_stride must be >= 1")
        if self.frame_ids is not None and (
            not self.frame_ids or any(not 0 <= i < 2**29 for i in self.frame_ids)
        ):
            raise ValueError(f"{self.message}: frame_ids must be non-empty CAN ids")
        if self.checksum is not None and not self.checksum.algorithm:
            raise ValueError(f"{self.message}: checksum needs an algorithm")


@dataclass(frozen=True)
class CommandMap:
    """The per-pack command: a power set-point, or a state request with limits.

    Attributes:
        kind: ``setpoint`` (maps ``power_w``; optional ``mode``, ``enable``, ``reason``) or
            ``state_request`` (maps ``state`` and a charge/discharge limit pair, current or
            power; optional ``reason``).
        message: The message (one).
        states: ``state_request``: code of ``standby``, ``charge`` and ``discharge``.
        standby_below_w: ``state_request``: |power| below this is standby.
        nominal_pack_voltage_v: ``state_request`` with current limits: the voltage used
            when none is known for the pack (``None``: standby then).
        mode_safe: ``setpoint``: value of ``mode`` commanding the safe state.
        mode_run: ``setpoint``: value of ``mode`` commanding operation.
    """

    kind: str
    message: MessageMap
    states: dict[str, int] = field(default_factory=dict)
    standby_below_w: float = 1.0
    nominal_pack_voltage_v: float | None = None
    mode_safe: int = 0
    mode_run: int = 1

    def __post_init__(self) -> None:
        if self.kind not in COMMAND_KINDS:
            raise ValueError(f"command kind {self.kind!r} unknown; known {COMMAND_KINDS}")
        keys = set(self.message.signals)
        unknown = keys - set(COMMAND_QUANTITIES[self.kind])
        if unknown:
            raise ValueError(
                f"command ({self.kind}): unknown keys {sorted(unknown)}; allowed "
                f"{list(COMMAND_QUANTITIES[self.kind])}"
            )
        if self.kind == "setpoint" and "power_w" not in keys:
            raise ValueError("command (setpoint): 'power_w' must be mapped")
        if self.kind == "state_request":
            currents = {"charge_current_limit_a", "discharge_current_limit_a"} <= keys
            powers = {"charge_power_limit_w", "discharge_power_limit_w"} <= keys
            if "state" not in keys or currents == powers:
                raise ValueError(
                    "command (state_request): map 'state' and one limit pair: "
                    "charge/discharge_current_limit_a or charge/discharge_power_limit_w"
                )
            if sorted(self.states) != sorted(_STATES) or len(set(self.states.values())) != 3:
                raise ValueError(f"command states must give distinct codes for {_STATES}")
            if not (math.isfinite(self.standby_below_w) and self.standby_below_w >= 0):
                raise ValueError("command standby_below_w must be finite and >= 0")
        if self.message.cells is not None:
            raise ValueError("command message cannot carry cells")

    @property
    def uses_current_limits(self) -> bool:
        """Whether the limits are currents (they then need the pack voltage)."""
        return "charge_current_limit_a" in self.message.signals


def _coverage_errors(telemetry: Sequence[MessageMap]) -> list[str]:
    keys = {k for m in telemetry for k in m.signals}
    cells = any(m.cells is not None for m in telemetry)
    # soc / soh are optional: without them the runtime runs on its own estimate
    errors = [] if "current_a" in keys else ["'current_a'"]
    if not (
        "cell_voltage_v" in keys or {"cell_voltage_min_v", "cell_voltage_max_v"} <= keys or cells
    ):
        errors.append("'cell_voltage_v' or 'cell_voltage_min_v'+'cell_voltage_max_v' or cells")
    if not ("temperature_c" in keys or {"temperature_min_c", "temperature_max_c"} <= keys):
        errors.append("'temperature_c' or 'temperature_min_c'+'temperature_max_c'")
    return errors


@dataclass(frozen=True)
class SignalMap:
    """Which DBC signal carries which PulseBMS quantity (version 2).

    Attributes:
        telemetry: The per-pack telemetry messages; together they must carry
            ``current_a``, a cell voltage (single, min+max, or cells) and a temperature
            (single or min+max); ``soc`` and ``soh`` are optional (without them the
            runtime uses its estimate, :mod:`pulsebms.edge_runtime.estimation`).
        command: The per-pack command.
        site: The site message, or ``None`` (no site frame on CAN: the runtime takes the
            site demand from another source).
        buses: Bus name → packs on it; ``None``: every pack on the bus ``default``.
        site_bus: Bus of the site frame (the first bus when ``None``).
        id_stride: Default stride: pack ``i`` uses ``DBC id + i * id_stride``.
        status_fault_values: Values of ``status`` meaning "pack faulted".
        bms_state_fault_values: Values of ``bms_state`` meaning "pack faulted".
        bms_state_ok_value: ``bms_state`` the HIL simulator sends for a healthy pack.
        version: Format version (2).
    """

    telemetry: tuple[MessageMap, ...]
    command: CommandMap
    site: MessageMap | None = None
    buses: dict[str, tuple[int, ...]] | None = None
    site_bus: str | None = None
    id_stride: int = 1
    status_fault_values: tuple[int, ...] = (2, 3)
    bms_state_fault_values: tuple[int, ...] = ()
    bms_state_ok_value: int = 0
    version: int = 2

    def __post_init__(self) -> None:
        if self.version != 2:
            raise ValueError(f"signal map version {self.version} unknown (2, or v1 by from_dict)")
        for m in self.telemetry:
            unknown = set(m.signals) - set(TELEMETRY_QUANTITIES)
            if unknown:
                raise ValueError(
                    f"telemetry {m.message}: unknown keys {sorted(unknown)}; allowed "
                    f"{list(TELEMETRY_QUANTITIES)}"
                )
        missing = _coverage_errors(self.telemetry)
        if missing:
            raise ValueError(f"signal map telemetry: missing {', '.join(missing)}")
        if self.site is not None:
            unknown = set(self.site.signals) - set(SITE_QUANTITIES)
            if unknown or "demand_w" not in self.site.signals:
                raise ValueError(
                    f"site: must map 'demand_w'; unknown keys {sorted(unknown)}; allowed "
                    f"{list(SITE_QUANTITIES)}"
                )
        if self.id_stride < 1:
            raise ValueError(f"signal map id_stride must be >= 1, got {self.id_stride}")
        if self.buses is not None:
            if not self.buses:
                raise ValueError("signal map buses: give at least one bus")
            seen: dict[int, str] = {}
            for name, packs in self.buses.items():
                for p in packs:
                    if p in seen:
                        raise ValueError(f"pack {p} is on buses {seen[p]!r} and {name!r}")
                    seen[p] = name
        if self.site_bus is not None and self.site_bus not in self.bus_names:
            raise ValueError(f"site_bus {self.site_bus!r} is not one of {self.bus_names}")

    @property
    def bus_names(self) -> tuple[str, ...]:
        """Names of the buses, in map order."""
        return ("default",) if self.buses is None else tuple(self.buses)

    @property
    def counter_tolerance(self) -> int:
        """Fewest ``counter.max_errors`` over the telemetry messages (0 if none sets one)."""
        found = [m.counter.max_errors for m in self.telemetry if m.counter is not None]
        return min((e for e in found if e is not None), default=0)

    @property
    def checksum_tolerance(self) -> int:
        """Fewest ``checksum.max_errors`` over the telemetry messages (0 if none sets one)."""
        found = [m.checksum.max_errors for m in self.telemetry if m.checksum is not None]
        return min((e for e in found if e is not None), default=0)

    @property
    def mode_safe(self) -> int:
        """``command.mode_safe`` (v1 name)."""
        return self.command.mode_safe

    @property
    def mode_run(self) -> int:
        """``command.mode_run`` (v1 name)."""
        return self.command.mode_run

    # ------------------------------------------------------------------ builders
    @classmethod
    def default(cls) -> SignalMap:
        """The map for the project DBC (``data/pulsebms.dbc``)."""
        tel = MessageMap(
            "PackTelemetry",
            {
                "soc": ScaledSignal("SoC", 0.01),
                "soh": ScaledSignal("SoH", 0.01),
                "temperature_c": ScaledSignal("Temperature"),
                "cell_voltage_v": ScaledSignal("CellVoltage"),
                "current_a": ScaledSignal("Current"),
                "status": ScaledSignal("Status"),
            },
            counter=IntegrityCheck("Counter"),
        )
        cmd = MessageMap(
            "PackSetpoint",
            {
                "power_w": ScaledSignal("PowerSetpoint"),
                "mode": ScaledSignal("Mode"),
                "enable": ScaledSignal("Enable"),
                "reason": ScaledSignal("Reason"),
            },
            counter=IntegrityCheck("Counter"),
        )
        site = MessageMap(
            "SiteStatus",
            {
                "demand_w": ScaledSignal("Demand"),
                "price_per_kwh": ScaledSignal("Price"),
                "time_of_day_s": ScaledSignal("TimeOfDay", 60.0),
                "ambient_c": ScaledSignal("AmbientTemperature"),
            },
            counter=IntegrityCheck("Counter"),
        )
        return cls(telemetry=(tel,), command=CommandMap("setpoint", cmd), site=site)

    @classmethod
    def from_v1(
        cls,
        telemetry: Mapping[str, SignalRef],
        setpoint: Mapping[str, SignalRef],
        site: Mapping[str, SignalRef],
        *,
        id_stride: int = 1,
        status_fault_values: Sequence[int] = (2, 3),
        mode_safe: int = 0,
        mode_run: int = 1,
    ) -> SignalMap:
        """Build a v2 map from the v1 form (quantity → :class:`SignalRef` per group).

        Raises:
            ValueError: If a required key is missing, a key unknown, or the set-point or
                site spans more than one message.
        """
        allowed = {
            "telemetry": (*TELEMETRY_QUANTITIES, "counter"),
            "setpoint": (*COMMAND_QUANTITIES["setpoint"], "counter"),
            "site": (*SITE_QUANTITIES, "counter"),
        }
        groups: dict[str, list[MessageMap]] = {}
        for group, refs in (("telemetry", telemetry), ("setpoint", setpoint), ("site", site)):
            unknown = [k for k in refs if k not in allowed[group]]
            if unknown:
                raise ValueError(
                    f"signal map '{group}': unknown {unknown}; allowed keys {list(allowed[group])}"
                )
            by_message: dict[str, dict[str, SignalRef]] = {}
            for key, ref in refs.items():
                by_message.setdefault(ref.message, {})[key] = ref
            if group != "telemetry" and len(by_message) != 1:
                raise ValueError(f"signal map '{group}' must use exactly one message")
            groups[group] = [
                MessageMap(
                    name,
                    {
                        k: ScaledSignal(r.signal, r.scale, r.offset)
                        for k, r in msg_refs.items()
                        if k != "counter"
                    },
                    counter=IntegrityCheck(msg_refs["counter"].signal)
                    if "counter" in msg_refs
                    else None,
                )
                for name, msg_refs in by_message.items()
            ]
        return cls(
            telemetry=tuple(groups["telemetry"]),
            command=CommandMap(
                "setpoint", groups["setpoint"][0], mode_safe=mode_safe, mode_run=mode_run
            ),
            site=groups["site"][0],
            id_stride=id_stride,
            status_fault_values=tuple(status_fault_values),
        )

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (version 2)."""
        out: dict[str, Any] = {
            "version": 2,
            "id_stride": self.id_stride,
            "telemetry": [_message_to_dict(m) for m in self.telemetry],
            "command": _command_to_dict(self.command),
            "site": None if self.site is None else _message_to_dict(self.site),
            "status_fault_values": list(self.status_fault_values),
            "bms_state_fault_values": list(self.bms_state_fault_values),
            "bms_state_ok_value": self.bms_state_ok_value,
        }
        if self.buses is not None:
            out["buses"] = {k: list(v) for k, v in self.buses.items()}
        if self.site_bus is not None:
            out["site_bus"] = self.site_bus
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignalMap:
        """Build a map from its JSON form: version 2, or the v1 form (no ``version``).

        Raises:
            ValueError: If the map is malformed (the message says where).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"signal map must be a mapping, got {type(data).__name__}")
        try:
            version = int(data.get("version", 1))
            if version == 1:
                return cls.from_v1(
                    {k: SignalRef(**v) for k, v in data["telemetry"].items()},
                    {k: SignalRef(**v) for k, v in data["setpoint"].items()},
                    {k: SignalRef(**v) for k, v in data["site"].items()},
                    id_stride=int(data.get("id_stride", 1)),
                    status_fault_values=tuple(int(v) for v in data.get("status_fault_values", ())),
                    mode_safe=int(data.get("mode_safe", 0)),
                    mode_run=int(data.get("mode_run", 1)),
                )
            _no_unknown(data, "signal map", _TOP_KEYS)
            buses = data.get("buses")
            site = data.get("site")
            return cls(
                version=version,
                telemetry=tuple(_message_from_dict(m) for m in data["telemetry"]),
                command=_command_from_dict(data["command"]),
                site=None if site is None else _message_from_dict(site),
                buses=None
                if buses is None
                else {str(k): tuple(int(p) for p in v) for k, v in buses.items()},
                site_bus=data.get("site_bus"),
                id_stride=int(data.get("id_stride", 1)),
                status_fault_values=tuple(int(v) for v in data.get("status_fault_values", ())),
                bms_state_fault_values=tuple(
                    int(v) for v in data.get("bms_state_fault_values", ())
                ),
                bms_state_ok_value=int(data.get("bms_state_ok_value", 0)),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"signal map is malformed: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> SignalMap:
        """Read a signal map file: JSON, or YAML (``.yaml``/``.yml``, needs PyYAML).

        Raises:
            ValueError: If the file cannot be parsed or the map is malformed.
            FileNotFoundError: If the file does not exist.
        """
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                try:
                    import yaml  # type: ignore[import-untyped,unused-ignore]
                except ImportError:
                    raise ValueError(
                        f"{p}: YAML signal maps need PyYAML (pip install pyyaml); "
                        "or write the map as JSON"
                    ) from None
                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{p}: cannot parse the signal map: {exc}") from exc
        return cls.from_dict(data)


_TOP_KEYS = (
    "version",
    "description",
    "id_stride",
    "telemetry",
    "command",
    "site",
    "buses",
    "site_bus",
    "status_fault_values",
    "bms_state_fault_values",
    "bms_state_ok_value",
)
_MESSAGE_KEYS = (
    "message",
    "description",
    "signals",
    "frame_ids",
    "id_stride",
    "cells",
    "counter",
    "checksum",
)
_COMMAND_KEYS = (
    *_MESSAGE_KEYS,
    "kind",
    "states",
    "standby_below_w",
    "nominal_pack_voltage_v",
    "mode_safe",
    "mode_run",
)


def _no_unknown(data: Mapping[str, Any], where: str, allowed: Sequence[str]) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed {list(allowed)}")


def _int_id(value: Any) -> int:
    return int(value, 0) if isinstance(value, str) else int(value)


def _scaled_from(value: Any) -> ScaledSignal:
    if isinstance(value, str):
        return ScaledSignal(value)
    return ScaledSignal(
        str(value["signal"]), float(value.get("scale", 1.0)), float(value.get("offset", 0.0))
    )


def _check_from(value: Any) -> IntegrityCheck | None:
    if value is None:
        return None
    if isinstance(value, str):
        return IntegrityCheck(value)
    errors = value.get("max_errors")
    return IntegrityCheck(
        str(value["signal"]),
        None if errors is None else int(errors),
        str(value.get("algorithm", "")),
    )


def _message_from_dict(
    data: Mapping[str, Any], allowed: Sequence[str] = _MESSAGE_KEYS
) -> MessageMap:
    name = str(data["message"])
    _no_unknown(data, f"message {name}", allowed)
    ids = data.get("frame_ids")
    stride = data.get("id_stride")
    cells = data.get("cells")
    return MessageMap(
        message=name,
        signals={str(k): _scaled_from(v) for k, v in dict(data.get("signals", {})).items()},
        frame_ids=None if ids is None else tuple(_int_id(i) for i in ids),
        id_stride=None if stride is None else int(stride),
        cells=None
        if cells is None
        else CellBlock(
            count=int(cells["count"]),
            voltage=str(cells["voltage"]),
            invalid=None if cells.get("invalid") is None else str(cells["invalid"]),
            invalid_value=int(cells.get("invalid_value", 1)),
            scale=float(cells.get("scale", 1.0)),
            offset=float(cells.get("offset", 0.0)),
        ),
        counter=_check_from(data.get("counter")),
        checksum=_check_from(data.get("checksum")),
    )


def _command_from_dict(data: Mapping[str, Any]) -> CommandMap:
    voltage = data.get("nominal_pack_voltage_v")
    return CommandMap(
        kind=str(data.get("kind", "setpoint")),
        message=_message_from_dict(data, _COMMAND_KEYS),
        states={str(k): int(v) for k, v in dict(data.get("states", {})).items()},
        standby_below_w=float(data.get("standby_below_w", 1.0)),
        nominal_pack_voltage_v=None if voltage is None else float(voltage),
        mode_safe=int(data.get("mode_safe", 0)),
        mode_run=int(data.get("mode_run", 1)),
    )


def _check_to_dict(check: IntegrityCheck) -> dict[str, Any]:
    out: dict[str, Any] = {"signal": check.signal}
    if check.max_errors is not None:
        out["max_errors"] = check.max_errors
    if check.algorithm:
        out["algorithm"] = check.algorithm
    return out


def _message_to_dict(m: MessageMap) -> dict[str, Any]:
    out: dict[str, Any] = {
        "message": m.message,
        "signals": {
            k: {"signal": s.signal, "scale": s.scale, "offset": s.offset}
            for k, s in m.signals.items()
        },
    }
    if m.frame_ids is not None:
        out["frame_ids"] = list(m.frame_ids)
    if m.id_stride is not None:
        out["id_stride"] = m.id_stride
    if m.cells is not None:
        out["cells"] = {
            "count": m.cells.count,
            "voltage": m.cells.voltage,
            "invalid": m.cells.invalid,
            "invalid_value": m.cells.invalid_value,
            "scale": m.cells.scale,
            "offset": m.cells.offset,
        }
    if m.counter is not None:
        out["counter"] = _check_to_dict(m.counter)
    if m.checksum is not None:
        out["checksum"] = _check_to_dict(m.checksum)
    return out


def _command_to_dict(c: CommandMap) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": c.kind, **_message_to_dict(c.message)}
    if c.kind == "state_request":
        out["states"] = dict(c.states)
        out["standby_below_w"] = c.standby_below_w
        if c.nominal_pack_voltage_v is not None:
            out["nominal_pack_voltage_v"] = c.nominal_pack_voltage_v
    else:
        out["mode_safe"] = c.mode_safe
        out["mode_run"] = c.mode_run
    return out


def signal_map_template() -> str:
    """The default signal map (project DBC) as JSON: a starting point for another DBC.

    ``pulsebms-edge signal-map --template`` prints it. See ``docs/signal_map.md``.

    Example:
        >>> json.loads(signal_map_template())["version"]
        2
    """
    return json.dumps(SignalMap.default().to_dict(), indent=2) + "\n"
