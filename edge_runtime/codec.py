"""CAN frames ↔ PulseBMS quantities, through DBC files and a configurable signal map.

The project's own protocol is ``data/pulsebms.dbc`` (see its comments): pack ``i`` sends
telemetry on ``0x100 + i`` and receives set-points on ``0x300 + i``; the site frame has one
id. Another BMS is wired by configuration only: a
:class:`~pulsebms.edge_runtime.signal_map.SignalMap` (v2, see ``docs/signal_map.md``)
says which signal of which message carries which quantity, each pack's frame ids, which bus
each pack is on, the command form (power set-point or state request with limits), and which
counters and checksums to check. ``data/foreign_bms.dbc``
with ``data/foreign_bms.json`` is a worked example.

**Quantity contract** (what :meth:`CanCodec.decode` gives the runtime):
:attr:`TelemetryFrame.values` keys are among ``soc, soh, current_a, cell_voltage_v,
cell_voltage_min_v, cell_voltage_max_v, temperature_c, temperature_min_c,
temperature_max_c`` (SoC/SoH fractions, current + = discharge), plus per-cell voltages
(valid cells only), the invalid cells, ``status``, ``bms_state``, ``counter`` and
``checksum_ok``.

:meth:`CanCodec.decode` never raises: a frame it cannot trust comes back as
:class:`MalformedFrame` with a reason (wrong length, out-of-range value, decode error, error
frame, too many counter or checksum errors in a row), an id it does not know as
:class:`IgnoredFrame`. Message layouts come from :mod:`pulsebms.edge_runtime.layout`
(``backend="compiled"``) or cantools itself (``backend="cantools"``); both give the same
bits.

**Batches** (``batch=True``, the default with compiled layouts): :meth:`CanCodec.decode_batch`
decodes the frames drained from a bus together, message by message, with the layouts'
numpy batch decode, and :meth:`CanCodec.encode_commands` encodes every pack's command in
one numpy pass. Both give exactly what the per-frame calls give (the tests compare them),
and the per-frame path stays for everything a batch does not cover (see
:meth:`CanCodec.decode_batch`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, cast

import can
import cantools
import cantools.database
import numpy as np

from pulsebms.core.types import BoolArray, FloatArray, IntArray
from pulsebms.edge_runtime.signal_map import (
    CHECKSUM_ALGORITHMS,
    CellBlock,
    IntegrityCheck,
    MessageMap,
    ScaledSignal,
    SignalMap,
    SignalRef,
    checksum,
    data_path,
    signal_map_template,
)

__all__ = [
    "BACKENDS",
    "BATCH_MIN_FRAMES",
    "DEFAULT_DBC",
    "FOREIGN_DBC",
    "FOREIGN_SIGNAL_MAP",
    "PACK_TELEMETRY_FIELDS",
    "CanCodec",
    "DecodedBatch",
    "DecodedFrame",
    "IgnoredFrame",
    "MalformedFrame",
    "MessageLayoutLike",
    "SetpointFrame",
    "SignalMap",
    "SignalRef",
    "SiteFrame",
    "TelemetryBatch",
    "TelemetryFrame",
    "default_dbc_path",
    "signal_map_template",
]

logger = logging.getLogger(__name__)

DEFAULT_DBC = "pulsebms.dbc"
"""File name of the project DBC inside ``pulsebms.edge_runtime/data``."""
FOREIGN_DBC = "foreign_bms.dbc"
"""File name of the example third-party DBC inside ``pulsebms.edge_runtime/data``."""
FOREIGN_SIGNAL_MAP = "foreign_bms.json"
"""File name of the signal map wiring :data:`FOREIGN_DBC`."""

PACK_TELEMETRY_FIELDS = ("soc", "soh", "temperature_c", "cell_voltage_v", "current_a")
"""Telemetry quantities every pack must report today (units in the names; SoC/SoH fractions)."""

BACKENDS = ("compiled", "cantools")
"""Message layout backends of :class:`CanCodec`."""

BATCH_MIN_FRAMES = 16
"""Default :attr:`CanCodec.batch_min_frames`: where batches start to pay (measured with
``pulsebms-bench edge``: a drain of ~16 frames costs the same either way)."""


def default_dbc_path() -> Path:
    """Path of the project DBC shipped as package data."""
    return data_path(DEFAULT_DBC)


class MessageLayoutLike(Protocol):
    """What the codec needs of a compiled message layout."""

    def decode(self, data: bytes) -> dict[str, float]:
        """Physical values of the signals active in ``data``."""

    def encode(self, values: Mapping[str, float]) -> bytes:
        """Payload of ``values`` (physical)."""


class _BatchLayout(Protocol):
    """What a batch needs of a layout (:class:`~pulsebms.edge_runtime.layout.MessageLayout`)."""

    signal_names: tuple[str, ...]
    batch_native: bool
    is_multiplexed: bool

    def decode_batch(self, payloads: np.ndarray[Any, Any]) -> Any:
        """``values`` (n_signals, n) of the payloads, ``present``, ``error``."""

    def encode_batch(
        self, values: Mapping[str, Any], n: int | None = None
    ) -> np.ndarray[Any, np.dtype[np.uint8]]:
        """``(n, length)`` payloads."""


class _CantoolsLayout:
    """cantools behind the layout interface (the reference the compiled layout matches)."""

    def __init__(self, message: cantools.database.Message) -> None:
        self.message = message

    def decode(self, data: bytes) -> dict[str, float]:
        raw = self.message.decode(data, decode_choices=False, scaling=True)
        return cast(dict[str, float], raw)

    def encode(self, values: Mapping[str, float]) -> bytes:
        return bytes(self.message.encode(dict(values), scaling=True, strict=False))


def _layout(message: cantools.database.Message, backend: str) -> MessageLayoutLike:
    if backend == "compiled":
        try:
            module = importlib.import_module("pulsebms.edge_runtime.layout")
        except ImportError:
            logger.debug("pulsebms.edge_runtime.layout not available: cantools layouts")
        else:
            return cast(MessageLayoutLike, module.compile_message(message))
    return _CantoolsLayout(message)


@dataclass(frozen=True)
class TelemetryFrame:
    """Decoded per-pack telemetry (only the quantities this message carries).

    Attributes:
        pack: Pack index.
        values: Quantity → value in PulseBMS units (see the module's quantity contract).
            Empty when the frame failed its checksum (within tolerance): keep old values.
        status: BMS status code, if the message carries it.
        counter: Rolling counter, if the message carries it.
        message: DBC message name.
        cell_voltages_v: Cell index → voltage [V], valid cells only.
        invalid_cells: Cells of this frame flagged invalid.
        bms_state: BMS state enum value, if the message carries it.
        checksum_ok: Whether the checksum matched (``None``: no checksum).
        integrity_errors: Consecutive counter/checksum errors of this message and pack,
            this frame included (0: this frame was clean).
        bus: Bus name the frame was routed on.
    """

    pack: int
    values: dict[str, float]
    status: int | None = None
    counter: int | None = None
    message: str = ""
    cell_voltages_v: dict[int, float] = field(default_factory=dict)
    invalid_cells: tuple[int, ...] = ()
    bms_state: int | None = None
    checksum_ok: bool | None = None
    integrity_errors: int = 0
    bus: str = "default"


_FAST_TELEMETRY_FRAME = (
    tuple(f.name for f in fields(TelemetryFrame))
    == (
        "pack",
        "values",
        "status",
        "counter",
        "message",
        "cell_voltages_v",
        "invalid_cells",
        "bms_state",
        "checksum_ok",
        "integrity_errors",
        "bus",
    )
    and not hasattr(TelemetryFrame, "__slots__")
    and not hasattr(TelemetryFrame, "__post_init__")
)
"""Whether the codec may fill a :class:`TelemetryFrame`'s ``__dict__`` directly (the
fields are the ones it sets; a changed class falls back to the constructor)."""


def _telemetry_frame(fields_: dict[str, Any]) -> TelemetryFrame:
    if _FAST_TELEMETRY_FRAME:  # the frozen dataclass's __init__ without its setattr calls
        frame: TelemetryFrame = object.__new__(TelemetryFrame)
        frame.__dict__.update(fields_)
        return frame
    return TelemetryFrame(**fields_)


@dataclass(frozen=True)
class TelemetryBatch:
    """Telemetry frames of one message decoded together, each of another pack.

    Every frame passed the codec's checks (length, DBC ranges, checksum, counter): row
    ``j`` is what :meth:`CanCodec.decode` returns for it, :meth:`frame` builds that
    :class:`TelemetryFrame`.

    Attributes:
        message: DBC message name.
        rows: Position of each frame in the list given to :meth:`CanCodec.decode_batch`.
        packs: Pack of each frame (distinct).
        values: Quantity → per-frame value in PulseBMS units (``status`` and ``bms_state``
            are their own attributes), as :attr:`TelemetryFrame.values`.
        status: BMS status per frame, if the message carries it.
        bms_state: BMS state per frame, if the message carries it.
        counter: Rolling counter per frame, if the message carries it.
        checksum_ok: ``True`` (every checksum matched) or ``None`` (no checksum).
        bus_of: Bus name of every pack (index by pack): where its telemetry is routed.
    """

    message: str
    rows: IntArray
    packs: IntArray
    values: dict[str, FloatArray]
    status: IntArray | None
    bms_state: IntArray | None
    counter: IntArray | None
    checksum_ok: bool | None
    bus_of: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def frame(self, j: int) -> TelemetryFrame:
        """Row ``j`` as the :class:`TelemetryFrame` :meth:`CanCodec.decode` gives."""
        return _telemetry_frame(
            {
                "pack": int(self.packs[j]),
                "values": {k: float(v[j]) for k, v in self.values.items()},
                "status": None if self.status is None else int(self.status[j]),
                "counter": None if self.counter is None else int(self.counter[j]),
                "message": self.message,
                "cell_voltages_v": {},
                "invalid_cells": (),
                "bms_state": None if self.bms_state is None else int(self.bms_state[j]),
                "checksum_ok": self.checksum_ok,
                "integrity_errors": 0,
                "bus": self.bus_of[int(self.packs[j])],
            }
        )


@dataclass(frozen=True)
class DecodedBatch:
    """What :meth:`CanCodec.decode_batch` made of a list of frames.

    Attributes:
        telemetry: Telemetry decoded together, per message.
        rest: Positions of the frames to decode one by one with :meth:`CanCodec.decode`, in
            the order received.
    """

    telemetry: tuple[TelemetryBatch, ...]
    rest: tuple[int, ...]


_CRC8_TABLE = np.array(
    [checksum("crc8_sae_j1850", bytes([x ^ 0xFF])) ^ 0xFF for x in range(256)], dtype=np.uint8
)
"""The CRC-8 (SAE J1850) table, from :func:`checksum` itself."""


def _checksum_batch(algorithm: str, data: np.ndarray[Any, np.dtype[np.uint8]]) -> IntArray:
    """:func:`checksum` of every row of ``data`` (``(n, m)`` bytes) at once."""
    if algorithm == "crc8_sae_j1850":
        crc = np.full(data.shape[0], 0xFF, dtype=np.uint8)
        for column in data.T:
            crc = _CRC8_TABLE[crc ^ column]
        return (crc ^ 0xFF).astype(np.int64)
    if algorithm == "sum8":
        total: IntArray = data.sum(axis=1, dtype=np.int64)
        return total & 0xFF
    if algorithm == "xor8":
        folded: IntArray = np.bitwise_xor.reduce(data, axis=1).astype(np.int64)
        return folded
    raise ValueError(f"unknown checksum algorithm {algorithm!r}; known {CHECKSUM_ALGORITHMS}")


_Slots = tuple[dict[tuple[int, bool], int], IntArray, dict[tuple[int, bool, int, int], int]]
"""Id lookups of a batch (see ``CanCodec._slots``)."""

_ROUND_LIMIT = float(2**62)
"""Batched status, state and counter values beyond this go frame by frame (exact ints)."""


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
    """Decoded command (what the runtime sent; the HIL simulator reads these).

    Attributes:
        pack: Pack index.
        power_w: Power [W], + = discharge: the set-point, or for a state request with power
            limits the limit in the requested direction (0 in standby); NaN for current
            limits (see :meth:`power_w_at`).
        mode: Mode code (``mode_safe``/``mode_run`` of the map), if mapped.
        enable: Enable flag, if mapped.
        reason: Reason bit field, if mapped.
        counter: Rolling counter, if mapped.
        state: State request (``standby``/``charge``/``discharge``), if a state request.
        charge_limit: Charge limit magnitude (A or W, as the map), if a state request.
        discharge_limit: Discharge limit magnitude (A or W), if a state request.
        limits_in_a: Whether the limits are currents.
        checksum_ok: Whether the checksum matched (``None``: no checksum).
    """

    pack: int
    power_w: float
    mode: int | None = None
    enable: bool | None = None
    reason: int | None = None
    counter: int | None = None
    state: str | None = None
    charge_limit: float | None = None
    discharge_limit: float | None = None
    limits_in_a: bool = False
    checksum_ok: bool | None = None

    @property
    def enabled(self) -> bool:
        """Whether the command lets the pack run (not safe, not disabled, not standby)."""
        if self.state is not None:
            return self.state != "standby"
        return self.enable is not False

    def power_w_at(self, pack_voltage_v: float) -> float:
        """Commanded power [W], + = discharge, at ``pack_voltage_v`` for current limits."""
        if self.state is None or not self.limits_in_a:
            return self.power_w
        if self.state == "discharge":
            return float(self.discharge_limit or 0.0) * pack_voltage_v
        if self.state == "charge":
            return -float(self.charge_limit or 0.0) * pack_voltage_v
        return 0.0


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
class _Sig:
    key: str
    signal: str
    conv: ScaledSignal
    lo: float
    hi: float
    tol: float


@dataclass
class _Plan:
    """Everything precomputed for one mapped message (shared by its packs)."""

    kind: str  # "telemetry" | "command" | "site"
    entry: MessageMap
    message: cantools.database.Message
    layout: MessageLayoutLike
    sigs: list[_Sig]
    defaults: dict[str, float]
    cell_signals: dict[str, tuple[int, bool]]  # signal → (cell, is_invalid_flag)
    cell_frames: list[tuple[dict[str, float], list[tuple[int, str, str | None]]]]
    cell_range: dict[str, tuple[float, float, float]]
    counter_mod: int
    checksum_byte: int | None
    # Per-frame fast path, derived from the above in __post_init__: the message's name,
    # length and extended flag, and per signal (key, signal, low bound − tolerance,
    # high bound + tolerance, scale, offset) for decode and (key, signal, offset, scale,
    # low, high) for encode.
    name: str = ""
    length: int = 0
    is_extended: bool = False
    decode_sigs: tuple[tuple[str, str, float, float, float, float], ...] = ()
    encode_sigs: tuple[tuple[str, str, float, float, float, float], ...] = ()
    # Batches: whether frames of this plan may be decoded together (telemetry, no cells, a
    # compiled layout of at most 8 bytes without multiplexing), and decode_sigs with each
    # signal's row in the layout's batch result instead of its name.
    batchable: bool = False
    batch_sigs: tuple[tuple[str, int, float, float, float, float], ...] = ()
    counter_row: int = -1
    batch_table: tuple[Any, ...] = ()  # (keys, rows, lows, highs, scales, offsets) as arrays
    small: frozenset[str] = frozenset()  # quantities whose checked values fit int64 widely
    counter_exact: bool = False  # the counter signal's values are small integers

    def __post_init__(self) -> None:
        self.name = str(self.message.name)
        self.length = int(self.message.length)
        self.is_extended = bool(self.message.is_extended_frame)
        self.decode_sigs = tuple(
            (s.key, s.signal, s.lo - s.tol, s.hi + s.tol, s.conv.scale, s.conv.offset)
            for s in self.sigs
        )
        self.encode_sigs = tuple(
            (s.key, s.signal, s.conv.offset, s.conv.scale, s.lo, s.hi) for s in self.sigs
        )
        names = getattr(self.layout, "signal_names", None)
        checksum_ = self.entry.checksum
        self.batchable = bool(
            self.kind == "telemetry"
            and self.entry.cells is None
            and names is not None
            and getattr(self.layout, "batch_native", False)
            and not getattr(self.layout, "is_multiplexed", True)
            and (checksum_ is None or checksum_.algorithm in CHECKSUM_ALGORITHMS)
        )
        if self.batchable and names is not None:
            row = {name: i for i, name in enumerate(names)}
            self.batch_sigs = tuple(
                (key, row[signal], low, high, scale, offset)
                for key, signal, low, high, scale, offset in self.decode_sigs
            )
            if self.entry.counter is not None:
                self.counter_row = row[self.entry.counter.signal]
            self.small = frozenset(
                key
                for key, _, low, high, scale, offset in self.batch_sigs
                if max(abs(low * scale + offset), abs(high * scale + offset)) < _ROUND_LIMIT
            )
            if self.entry.counter is not None:
                counter = self.message.get_signal_by_name(self.entry.counter.signal)
                self.counter_exact = bool(
                    not counter.is_float
                    and counter.length <= 52
                    and max(abs(float(counter.scale)), abs(float(counter.offset))) < 2**10
                )
            columns = list(zip(*self.batch_sigs, strict=True)) or [()] * 6
            keys, rows, lows, highs, scales, offsets = columns
            self.batch_table = (
                tuple(keys),
                np.asarray(rows, dtype=np.intp),
                *(np.asarray(c, dtype=np.float64).reshape(-1, 1) for c in (lows, highs)),
                *(np.asarray(c, dtype=np.float64).reshape(-1, 1) for c in (scales, offsets)),
            )


@dataclass(frozen=True)
class _Route:
    plan: _Plan
    pack: int | None
    bus: str
    frame_id: int


def _range(signal: cantools.database.Signal) -> tuple[float, float, float]:
    lo = -math.inf if signal.minimum is None else float(signal.minimum)
    hi = math.inf if signal.maximum is None else float(signal.maximum)
    return lo, hi, 1e-9 + abs(float(signal.scale)) * 1e-6


def _checksum_byte(message: cantools.database.Message, signal_name: str) -> int:
    s = message.get_signal_by_name(signal_name)
    aligned = s.start % 8 == (0 if s.byte_order == "little_endian" else 7)
    if s.length != 8 or not aligned or s.is_signed:
        raise ValueError(
            f"{message.name}.{signal_name}: a checksum must be an unsigned, byte-aligned "
            "8-bit signal"
        )
    return int(s.start // 8)


class CanCodec:
    """Encode and decode PulseBMS frames with DBC files and a signal map.

    Args:
        n_packs: Number of packs; ids for packs ``0 .. n_packs-1`` are routed.
        dbc_path: The DBC file, or several; the project DBC by default. Every message of
            every file takes part in the collision check.
        signal_map: The signal map; :meth:`SignalMap.default` by default.
        backend: ``compiled`` (precomputed layouts of :mod:`pulsebms.edge_runtime.layout`;
            cantools when that module is absent) or ``cantools``.
        batch: Offer :meth:`decode_batch` and :meth:`encode_commands` as numpy batches
            (compiled layouts only; the runtime then handles each drain of the bus and
            each tick's commands in one pass). ``False`` keeps every frame on the
            per-frame path (the reference the batches are tested against).

    Raises:
        ValueError: If the map names a message or signal the DBCs lack, a pack has no id or
            no bus, or two frames (mapped, or any other message of a loaded DBC) share an
            id on one bus.

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
        dbc_path: str | Path | Sequence[str | Path] | None = None,
        signal_map: SignalMap | None = None,
        backend: str = "compiled",
        batch: bool = True,
    ) -> None:
        if n_packs < 1:
            raise ValueError(f"n_packs must be >= 1, got {n_packs}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.n_packs = n_packs
        self.backend = backend
        if dbc_path is None:
            paths = [default_dbc_path()]
        elif isinstance(dbc_path, (str, Path)):
            paths = [Path(dbc_path)]
        else:
            paths = [Path(p) for p in dbc_path]
        if not paths:
            raise ValueError("give at least one DBC file")
        self.dbc_paths: tuple[Path, ...] = tuple(paths)
        self.dbc_path = paths[0]
        self.signal_map = sm = signal_map if signal_map is not None else SignalMap.default()
        self.dbs: list[cantools.database.Database] = []
        for p in paths:
            db = cantools.database.load_file(str(p))
            if not isinstance(db, cantools.database.Database):
                raise ValueError(f"{p} is not a CAN DBC database")
            self.dbs.append(db)
        self.db = self.dbs[0]
        # buses
        self._bus_of: list[str] = []
        if sm.buses is None:
            self._bus_of = ["default"] * n_packs
        else:
            where = {p: name for name, packs in sm.buses.items() for p in packs}
            missing = [p for p in range(n_packs) if p not in where]
            if missing:
                raise ValueError(f"packs {missing} are on no bus of the signal map")
            self._bus_of = [where[p] for p in range(n_packs)]
        self._bus_names: tuple[str, ...] = sm.bus_names
        self.site_bus: str = sm.site_bus or self._bus_names[0]
        # plans and routes
        self._routes: dict[str, dict[tuple[int, bool], _Route]] = {b: {} for b in self._bus_names}
        self._tel_plans = [self._plan("telemetry", m) for m in sm.telemetry]
        self._cmd_plan = self._plan("command", sm.command.message)
        self._site_plan = None if sm.site is None else self._plan("site", sm.site)
        self._cmd_ids: list[int] = []  # per pack, the command frame's id (filled below)
        for plan in (*self._tel_plans, self._cmd_plan):
            for pack in range(n_packs):
                self._add_route(plan, pack, self._bus_of[pack], self._id(plan, pack))
        self._cmd_ids = [self._compute_id(self._cmd_plan, p) for p in range(n_packs)]
        # a power set-point map: its signals by position in (power, mode, enable, reason),
        # so a command is filled without a per-call quantity dict (same values as _fill)
        order = ("power_w", "mode", "enable", "reason")
        self._setpoint_sigs = tuple(
            (order.index(key), signal, offset, scale, lo, hi)
            for key, signal, offset, scale, lo, hi in self._cmd_plan.encode_sigs
            if key in order
        )
        columns = list(zip(*self._setpoint_sigs, strict=True)) or [()] * 6
        self._setpoint_table: tuple[Any, ...] = (
            tuple(columns[1]),
            np.asarray(columns[0], dtype=np.intp),
            *(np.asarray(c, dtype=np.float64).reshape(-1, 1) for c in columns[2:]),
            np.asarray(
                [self._cmd_plan.defaults[name] for name in columns[1]], dtype=np.float64
            ).reshape(-1, 1),
        )
        if self._site_plan is not None:
            self._add_route(self._site_plan, None, self.site_bus, self._id(self._site_plan, None))
        self._check_unmapped()
        self._any_bus: dict[tuple[int, bool], _Route | None] = {}
        for routes in self._routes.values():
            for key, route in routes.items():
                self._any_bus[key] = None if key in self._any_bus else route
        self._errors: dict[tuple[str, int | None], int] = {}
        self._last_counter: dict[tuple[str, int | None], int] = {}
        command = sm.command
        nominal = command.nominal_pack_voltage_v
        self.pack_voltage_v: FloatArray = np.full(
            n_packs, math.nan if nominal is None else float(nominal)
        )
        """Pack voltage [V] per pack used by current-limit commands when the caller gives
        none (the nominal voltage of the map, or NaN); whoever knows better may set it."""
        self._setup_batches(batch)

    def _setup_batches(self, batch: bool) -> None:
        """What the batches need: per plan and pack the integrity key, the command ids."""
        # A subclass that changes the per-frame path is not what the batches mirror.
        own = all(
            getattr(type(self), name) is getattr(CanCodec, name)
            for name in ("decode", "_decode", "_telemetry", "encode_command", "_command_frames")
        )
        self.batch: bool = bool(batch and own and self.backend == "compiled")
        """Whether :meth:`decode_batch` and :meth:`encode_commands` batch (else they go
        frame by frame)."""
        self.batch_min_frames: int = BATCH_MIN_FRAMES
        """Fewer frames than this (in a drain, or packs in :meth:`encode_commands`) go frame
        by frame: below it numpy's fixed cost per call outweighs the per-frame path."""
        self._idents = {
            plan.name: [(plan.name, p) for p in range(self.n_packs)] for plan in self._tel_plans
        }
        cmd = self._cmd_plan
        self._batch_commands = bool(
            self.batch
            and self.signal_map.command.kind == "setpoint"
            and cmd.entry.cells is None
            and getattr(cmd.layout, "batch_native", False)
            and (cmd.entry.checksum is None or cmd.entry.checksum.algorithm in CHECKSUM_ALGORITHMS)
        )
        self._cmd_bus_of = tuple(self._bus_of)
        self._bus_of_packs = tuple(self._bus_of)
        self._slot_cache: dict[tuple[str, ...], _Slots] = {}

    # ------------------------------------------------------------------ setup
    def _message(self, name: str) -> tuple[cantools.database.Message, Path]:
        found = []
        for db, path in zip(self.dbs, self.dbc_paths, strict=True):
            with contextlib.suppress(KeyError):
                found.append((db.get_message_by_name(name), path))
        if not found:
            files = ", ".join(str(p) for p in self.dbc_paths)
            raise ValueError(f"DBC {files} has no message {name!r}")
        if len(found) > 1:
            raise ValueError(f"message {name!r} is in several DBCs: {[str(p) for _, p in found]}")
        return found[0]

    def _plan(self, kind: str, entry: MessageMap) -> _Plan:
        message, _ = self._message(entry.message)
        by_name = {s.name: s for s in message.signals}

        def signal(name: str) -> cantools.database.Signal:
            if name not in by_name:
                raise ValueError(f"DBC message {entry.message!r} has no signal {name!r}")
            return by_name[name]

        sigs = []
        for key, conv in entry.signals.items():
            lo, hi, tol = _range(signal(conv.signal))
            sigs.append(_Sig(key, conv.signal, conv, lo, hi, tol))
        checks: list[IntegrityCheck] = [c for c in (entry.counter, entry.checksum) if c]
        for check in checks:
            signal(check.signal)
        defaults = {
            s.name: float(0 if s.minimum is None else max(float(s.minimum), 0.0))
            for s in message.signals
        }
        cell_signals: dict[str, tuple[int, bool]] = {}
        cell_frames: list[tuple[dict[str, float], list[tuple[int, str, str | None]]]] = []
        cell_range: dict[str, tuple[float, float, float]] = {}
        if entry.cells is not None:
            cell_frames = self._cell_frames(entry.cells, message, signal)
            for _, cells in cell_frames:
                for cell, vname, iname in cells:
                    cell_signals[vname] = (cell, False)
                    cell_range[vname] = _range(by_name[vname])
                    if iname is not None:
                        cell_signals[iname] = (cell, True)
        modulus = 1
        if entry.counter is not None:
            modulus = 2 ** int(signal(entry.counter.signal).length)
        byte = None
        if entry.checksum is not None:
            byte = _checksum_byte(message, entry.checksum.signal)
        return _Plan(
            kind,
            entry,
            message,
            _layout(message, self.backend),
            sigs,
            defaults,
            cell_signals,
            cell_frames,
            cell_range,
            modulus,
            byte,
        )

    @staticmethod
    def _cell_frames(
        cells: CellBlock, message: cantools.database.Message, signal: Any
    ) -> list[tuple[dict[str, float], list[tuple[int, str, str | None]]]]:
        """Per frame to send: its multiplexer values, and its cells (index, V, flag)."""
        frames: dict[tuple[tuple[str, float], ...], list[tuple[int, str, str | None]]] = {}
        for cell in range(cells.count):
            vname = cells.voltage.format(cell=cell)
            vsig = signal(vname)
            iname = None if cells.invalid is None else cells.invalid.format(cell=cell)
            if iname is not None:
                signal(iname)
            mux: tuple[tuple[str, float], ...] = ()
            if vsig.multiplexer_signal is not None:
                ids = vsig.multiplexer_ids or [0]
                mux = ((str(vsig.multiplexer_signal), float(ids[0])),)
            frames.setdefault(mux, []).append((cell, vname, iname))
        del message
        return [(dict(mux), cs) for mux, cs in frames.items()]

    def _id(self, plan: _Plan, pack: int | None) -> int:
        if plan is self._cmd_plan and pack is not None and 0 <= pack < len(self._cmd_ids):
            return self._cmd_ids[pack]
        return self._compute_id(plan, pack)

    def _compute_id(self, plan: _Plan, pack: int | None) -> int:
        entry = plan.entry
        p = pack or 0
        if entry.frame_ids is not None:
            if p >= len(entry.frame_ids):
                raise ValueError(
                    f"{entry.message}: frame_ids gives {len(entry.frame_ids)} ids, pack {p} "
                    "has none"
                )
            return entry.frame_ids[p]
        stride = self.signal_map.id_stride if entry.id_stride is None else entry.id_stride
        return int(plan.message.frame_id + p * stride)

    def _add_route(self, plan: _Plan, pack: int | None, bus: str, frame_id: int) -> None:
        key = (frame_id, bool(plan.message.is_extended_frame))
        routes = self._routes[bus]
        if key in routes:
            other = routes[key]
            raise ValueError(
                f"frame id 0x{frame_id:X} of {plan.message.name} (pack {pack}) collides on bus "
                f"{bus!r} with {other.plan.message.name} (pack {other.pack}); lower n_packs, "
                "change the ids in the signal map, or put the packs on separate buses"
            )
        routes[key] = _Route(plan, pack, bus, frame_id)

    def _check_unmapped(self) -> None:
        """Every other message of every loaded DBC may be on any bus: no mapped id may hit it."""
        mapped = {p.message.name for p in (*self._tel_plans, self._cmd_plan, self._site_plan) if p}
        for db, path in zip(self.dbs, self.dbc_paths, strict=True):
            for message in db.messages:
                if message.name in mapped:
                    continue
                key = (int(message.frame_id), bool(message.is_extended_frame))
                for bus, routes in self._routes.items():
                    if key in routes:
                        r = routes[key]
                        raise ValueError(
                            f"frame id 0x{key[0]:X} of {r.plan.message.name} (pack {r.pack}, bus "
                            f"{bus!r}) collides with message {message.name} of {path.name}"
                        )

    # ------------------------------------------------------------------ addressing
    @property
    def bus_names(self) -> tuple[str, ...]:
        """Names of the buses of the signal map (``("default",)`` without ``buses``)."""
        return self._bus_names

    def bus_of(self, pack: int) -> str:
        """Name of the bus ``pack`` is on."""
        return self._bus_of[pack]

    def packs_on(self, bus: str) -> tuple[int, ...]:
        """Packs on ``bus``."""
        return tuple(p for p, b in enumerate(self._bus_of) if b == bus)

    def frame_id(self, kind: str, pack: int | None = None) -> int:
        """CAN id of the ``kind`` frame of ``pack``.

        Args:
            kind: ``telemetry`` (its first message), ``setpoint``/``command``, or ``site``.
            pack: Pack index (ignored for ``site``).

        Raises:
            ValueError: If the kind is unknown or the map has no site frame.
        """
        if kind == "telemetry":
            return self._id(self._tel_plans[0], pack)
        if kind in ("setpoint", "command"):
            return self._id(self._cmd_plan, pack)
        if kind == "site" and self._site_plan is not None:
            return self._id(self._site_plan, None)
        raise ValueError(f"no {kind!r} frame in this signal map")

    def counter_modulus(self, kind: str) -> int:
        """Rolling-counter modulus (``2**bits``) of ``kind``'s (first) counter; 1 if none."""
        plans = {
            "telemetry": self._tel_plans,
            "setpoint": [self._cmd_plan],
            "command": [self._cmd_plan],
            "site": [self._site_plan] if self._site_plan else [],
        }[kind]
        return next((p.counter_mod for p in plans if p.entry.counter is not None), 1)

    @property
    def has_site(self) -> bool:
        """Whether the map has a site frame on CAN."""
        return self._site_plan is not None

    @property
    def layout_backend(self) -> str:
        """The layout class really used (``_CantoolsLayout`` until the compiled one lands)."""
        return type(self._cmd_plan.layout).__name__

    def reset_integrity(self) -> None:
        """Forget the counter/checksum history (e.g. after a bus restart)."""
        self._errors.clear()
        self._last_counter.clear()

    # ------------------------------------------------------------------ decode
    def decode(self, msg: can.Message, bus: str = "default") -> DecodedFrame:
        """Decode one received frame; never raises.

        Args:
            msg: The frame.
            bus: Name of the bus it came from. ``default`` on a map without a bus of that
                name looks the id up on every bus (ids present on several buses are then
                ignored as ambiguous).

        Returns:
            A telemetry, site or set-point frame; :class:`MalformedFrame` if the id is ours but
            the content cannot be trusted; :class:`IgnoredFrame` if the id is not ours.
        """
        try:
            return self._decode(msg, bus)
        except Exception as exc:  # a decoder bug must not stop the control loop
            return MalformedFrame(
                int(getattr(msg, "arbitration_id", -1)), f"decode error: {exc!r}", None
            )

    def decode_batch(
        self, msgs: Sequence[can.Message], buses: Sequence[str] = ("default",)
    ) -> DecodedBatch:
        """Decode frames received together: telemetry message by message in numpy.

        The telemetry frames of a batchable message (no cell block, no multiplexing, at
        most 8 bytes) are decoded at once, one frame per pack; row by row the result is
        what :meth:`decode` gives (same values, same counter and checksum bookkeeping).
        Everything else is left to :meth:`decode` frame by frame (``rest``): site frames,
        command echoes, unknown ids, error and remote frames, and **every frame of a pack**
        of which one telemetry frame is not clean (wrong length, checksum, counter, a value
        outside its DBC range, two frames of one message, a message that is not
        batchable), so that each pack's frames are judged in the order received. Nothing
        of the rest is touched here: decode each with :meth:`decode` afterwards.

        Never raises: an unexpected error leaves every frame to the per-frame path.

        Args:
            msgs: The frames, in the order received.
            buses: Names of the bus they came from, tried in order like :meth:`decode`'s
                ``bus`` (one bus object may serve several names).

        Returns:
            The telemetry batches and the positions of the rest.
        """
        if not self.batch or len(msgs) < max(self.batch_min_frames, 1):
            return DecodedBatch((), tuple(range(len(msgs))))
        try:
            return self._decode_batch(msgs, tuple(buses))
        except Exception:  # a bug here must not lose frames: the per-frame path has them
            logger.exception("batch decode failed: frames decoded one by one")
            return DecodedBatch((), tuple(range(len(msgs))))

    def _lookup(self, key: tuple[int, bool], bus: str) -> _Route | None:
        """The route of ``key`` on ``bus`` as :meth:`decode` looks it up (None: not ours)."""
        routes = self._routes.get(bus)
        if routes is not None:
            return routes.get(key)
        if bus == "default":
            return self._any_bus.get(key)
        return None

    def _slots(self, buses: tuple[str, ...]) -> _Slots:
        """Id lookups of a batch, per tuple of bus names (cached).

        Id → slot; per slot (plan, pack, length) as ``(3, k)``; and (id, extended, dlc,
        payload size) → slot for the frames that batch as they are. The plan is its index
        in the telemetry plans where it batches, ``-1`` for telemetry that does not (its
        pack goes frame by frame), ``-2`` for other frames (site, command echoes). Ids are
        looked up bus by bus in order, as :meth:`decode` tries each bus name.
        """
        cached = self._slot_cache.get(buses)
        if cached is not None:
            return cached
        table: dict[tuple[int, bool], int] = {}
        columns: list[tuple[int, int, int]] = []
        plans = {plan.name: k for k, plan in enumerate(self._tel_plans)}
        for bus in buses:
            routes = self._routes.get(bus)
            if routes is None:
                any_bus = self._any_bus if bus == "default" else {}
                routes = {key: r for key, r in any_bus.items() if r is not None}
            for key, route in routes.items():
                if key in table:
                    continue
                plan = route.plan
                if plan.kind != "telemetry" or route.pack is None:
                    code = -2
                else:
                    code = plans[plan.name] if plan.batchable else -1
                table[key] = len(columns)
                columns.append((code, -1 if route.pack is None else route.pack, plan.length))
        columns.append((-3, -1, -1))  # slot -1: not ours
        slots = np.asarray(columns, dtype=np.int64).T.copy()
        # frames that batch as they are: id, extended flag, dlc and payload size in one key
        sized: dict[tuple[int, bool, int, int], int] = {
            (*key, length, length): slot
            for key, slot in table.items()
            if slots[0, slot] >= 0 and (length := int(slots[2, slot])) >= 0
        }
        self._slot_cache[buses] = table, slots, sized
        return table, slots, sized

    def _decode_batch(self, msgs: Sequence[can.Message], buses: tuple[str, ...]) -> DecodedBatch:
        n = len(msgs)
        table, slots, sized = self._slots(buses)
        get = sized.get
        datas = [m.data for m in msgs]
        codes = np.fromiter(
            [
                -1
                if m.is_error_frame or m.is_remote_frame
                else get((m.arbitration_id, m.is_extended_id, m.dlc, len(d)), -1)
                for m, d in zip(msgs, datas, strict=True)
            ],
            dtype=np.int64,
            count=n,
        )
        plan_of, pack_of = slots[:2, codes]
        batched = codes >= 0
        poisoned: set[int] = set()  # packs whose frames all go the per-frame way
        if not batched.all():  # telemetry that does not batch as is: its pack one by one
            for i in np.flatnonzero(~batched).tolist():
                m = msgs[i]
                if m.is_error_frame or m.is_remote_frame:
                    continue
                slot = table.get((m.arbitration_id, m.is_extended_id))
                if slot is not None and slots[0, slot] >= -1:
                    poisoned.add(int(slots[1, slot]))
        checked = []
        for k in sorted(set(plan_of[batched].tolist())):
            plan = self._tel_plans[k]
            rows = np.flatnonzero(batched & (plan_of == k)) if len(plan_of) else plan_of
            packs = pack_of[rows]
            counts = np.bincount(packs, minlength=self.n_packs)
            if counts.max(initial=0) > 1:  # two frames of one message: in order, one by one
                poisoned.update(np.flatnonzero(counts > 1).tolist())
            group = datas if len(rows) == n else [datas[i] for i in rows.tolist()]
            found = self._check_batch(plan, packs, group)
            if found[0].any():
                poisoned.update(packs[found[0]].tolist())
            checked.append((plan, rows, packs, found))
        batches = []
        handled = np.zeros(n, dtype=bool)
        excluded = np.fromiter(poisoned, dtype=np.int64, count=len(poisoned))
        for plan, rows, packs, (bad, values, status, state, counter) in checked:
            keep = ~bad
            if poisoned:
                keep &= ~np.isin(packs, excluded)
            if not keep.any():
                continue
            everything = bool(keep.all())
            if not everything:
                rows, packs = rows[keep], packs[keep]
                values = {q: v[keep] for q, v in values.items()}
                status = None if status is None else status[keep]
                state = None if state is None else state[keep]
                counter = None if counter is None else counter[keep]
            handled[rows] = True
            self._commit_batch(plan, packs, counter)
            batches.append(
                TelemetryBatch(
                    message=plan.name,
                    rows=rows,
                    packs=packs,
                    values=values,
                    status=status,
                    bms_state=state,
                    counter=counter,
                    checksum_ok=True if plan.entry.checksum is not None else None,
                    bus_of=self._bus_of_packs,
                )
            )
        rest = tuple(np.flatnonzero(~handled).tolist())
        return DecodedBatch(tuple(batches), rest)

    def _commit_batch(self, plan: _Plan, packs: IntArray, counter: IntArray | None) -> None:
        """What :meth:`_decode` keeps of clean frames: counters (where checked), no errors."""
        idents = self._idents[plan.name]
        entry = plan.entry
        # the last counter is only read where the map checks it (max_errors)
        if (
            counter is not None
            and entry.counter is not None
            and entry.counter.max_errors is not None
        ):
            last = self._last_counter
            for pack, value in zip(packs.tolist(), counter.tolist(), strict=True):
                last[idents[pack]] = value
        if self._errors:
            for pack in packs.tolist():
                self._errors.pop(idents[pack], None)

    def _check_batch(
        self, plan: _Plan, packs: IntArray, datas: Sequence[bytes | bytearray]
    ) -> tuple[BoolArray, dict[str, FloatArray], IntArray | None, IntArray | None, IntArray | None]:
        """:meth:`_decode`'s checks of one message's frames, vectorised; nothing is stored.

        Returns:
            Per frame whether it is not clean (the per-frame path judges it), the
            quantities (PulseBMS units, without ``status``/``bms_state``), status, BMS
            state and counter per frame.
        """
        layout = cast(_BatchLayout, plan.layout)
        payloads = np.frombuffer(b"".join(datas), dtype=np.uint8).reshape(len(datas), -1)
        decoded = layout.decode_batch(payloads)
        raw: FloatArray = decoded.values
        bad: BoolArray = np.array(decoded.error, dtype=bool)
        entry = plan.entry
        if entry.checksum is not None and plan.checksum_byte is not None:
            b = plan.checksum_byte
            others = np.delete(payloads, b, axis=1)
            bad |= payloads[:, b] != _checksum_batch(entry.checksum.algorithm, others)
        keys, rows, lows, highs, scales, offsets = plan.batch_table
        with np.errstate(invalid="ignore", over="ignore"):
            v = raw[rows]  # (signals, frames): one numpy step per check, as _decode's
            ok = (lows <= v) & (v <= highs) & np.isfinite(v)
            if not ok.all():
                bad |= ~ok.all(axis=0)
            scaled = v * scales + offsets
        values = dict(zip(keys, scaled, strict=True))
        counter: IntArray | None = None
        if entry.counter is not None and plan.counter_row >= 0:
            counter, wide = self._round_batch(raw[plan.counter_row], plan.counter_exact)
            if wide is not None:
                bad |= wide
            if entry.counter.max_errors is not None:
                idents = self._idents[plan.name]
                last = np.fromiter(
                    (self._last_counter.get(idents[p], -1) for p in packs.tolist()),
                    dtype=np.int64,
                    count=len(packs),
                )
                bad |= (last >= 0) & (counter != (last + 1) % plan.counter_mod)
        rounded: dict[str, IntArray] = {}
        for key in ("status", "bms_state"):
            if key in values:
                rounded[key], wide = self._round_batch(values.pop(key), key in plan.small)
                if wide is not None:
                    bad |= wide
        return bad, values, rounded.get("status"), rounded.get("bms_state"), counter

    @staticmethod
    def _round_batch(value: FloatArray, small: bool) -> tuple[IntArray, BoolArray | None]:
        """``round(value)`` as int64, and where that is not exact (NaN, inf, huge).

        ``small``: every value that passes the range checks is well inside int64, so only
        rows that fail them (garbage here, judged frame by frame) can be off.
        """
        with np.errstate(invalid="ignore"):
            if small:
                return np.rint(value).astype(np.int64), None
            wide = ~(np.abs(value) < _ROUND_LIMIT)
            if wide.any():
                value = np.where(wide, 0.0, value)
            return np.rint(value).astype(np.int64), wide

    def _decode(self, msg: can.Message, bus: str) -> DecodedFrame:
        if msg.is_error_frame:
            return MalformedFrame(msg.arbitration_id, "CAN error frame")
        key = (msg.arbitration_id, bool(msg.is_extended_id))
        routes = self._routes.get(bus)
        if routes is not None:
            route = routes.get(key)
        elif bus == "default":
            route = self._any_bus.get(key)
            if route is None and key in self._any_bus:
                return IgnoredFrame(msg.arbitration_id, "id on several buses: say which bus")
        else:
            return IgnoredFrame(msg.arbitration_id, f"unknown bus {bus!r}")
        if route is None:
            return IgnoredFrame(msg.arbitration_id, "unknown id")
        if msg.is_remote_frame:
            return IgnoredFrame(msg.arbitration_id, "remote frame")
        plan = route.plan
        name = plan.name
        data = bytes(msg.data)
        if msg.dlc != plan.length or len(data) != plan.length:
            return MalformedFrame(
                msg.arbitration_id,
                f"{name}: length {len(data)} (dlc {msg.dlc}), DBC says {plan.length}",
                route.pack,
            )
        try:
            raw = plan.layout.decode(data)
        except Exception as exc:
            return MalformedFrame(msg.arbitration_id, f"{name}: cannot decode: {exc}", route.pack)
        # integrity first: a frame with a wrong checksum carries nothing to range-check
        ident = (name, route.pack)
        entry = plan.entry
        checksum_ok: bool | None = None
        errors_now = 0
        if entry.checksum is not None and plan.checksum_byte is not None:
            b = plan.checksum_byte
            expected = checksum(entry.checksum.algorithm, data[:b] + data[b + 1 :])
            checksum_ok = data[b] == expected
            if not checksum_ok:
                self._last_counter.pop(ident, None)  # resynchronise on the next good frame
                if entry.checksum.max_errors is not None:
                    errors_now += 1
        values: dict[str, float] = {}
        counter: int | None = None
        if checksum_ok is not False:
            get, isfinite = raw.get, math.isfinite
            for quantity, signal, low, high, scale, offset in plan.decode_sigs:
                got = get(signal)
                if got is None:
                    continue  # a multiplexed signal not in this frame
                value = float(got)
                if not (low <= value <= high and isfinite(value)):
                    bad = self._range_error(plan, signal, value)
                    return MalformedFrame(msg.arbitration_id, bad, route.pack)
                values[quantity] = value * scale + offset
            if entry.counter is not None and entry.counter.signal in raw:
                counter = round(float(raw[entry.counter.signal]))
                last = self._last_counter.get(ident)
                self._last_counter[ident] = counter
                if (
                    entry.counter.max_errors is not None
                    and last is not None
                    and counter != (last + 1) % plan.counter_mod
                ):
                    errors_now += 1
        if errors_now:
            run = self._errors.get(ident, 0) + 1
            self._errors[ident] = run
            limit = min(
                c.max_errors
                for c in (entry.checksum, entry.counter)
                if c is not None and c.max_errors is not None
            )
            if run > limit:
                return MalformedFrame(
                    msg.arbitration_id,
                    f"{name}: {run} counter/checksum errors in a row (tolerance {limit})",
                    route.pack,
                )
        else:
            run = 0
            self._errors.pop(ident, None)
        trusted = checksum_ok is not False
        if plan.kind == "telemetry":
            return self._telemetry(msg, route, raw, values, counter, checksum_ok, run, trusted)
        if not trusted:
            return MalformedFrame(msg.arbitration_id, f"{name}: checksum wrong", route.pack)
        if plan.kind == "site":
            return SiteFrame(values=values, counter=counter)
        return self._command_frame(msg, route, values, counter, checksum_ok)

    def _range_error(self, plan: _Plan, signal: str, value: float) -> str:
        sig = next(s for s in plan.sigs if s.signal == signal)
        return self._out_of_range(plan.name, signal, value, sig.lo, sig.hi, sig.tol)

    @staticmethod
    def _out_of_range(
        message: str, signal: str, value: float, lo: float, hi: float, tol: float
    ) -> str:
        if not math.isfinite(value):
            return f"{message}.{signal} is not finite"
        if value < lo - tol or value > hi + tol:
            return f"{message}.{signal}={value:g} outside DBC range [{lo}, {hi}]"
        return ""

    def _telemetry(
        self,
        msg: can.Message,
        route: _Route,
        raw: Mapping[str, float],
        values: dict[str, float],
        counter: int | None,
        checksum_ok: bool | None,
        run: int,
        trusted: bool,
    ) -> DecodedFrame:
        plan = route.plan
        cells: dict[int, float] = {}
        invalid: list[int] = []
        block = plan.entry.cells
        if block is not None and trusted:
            flagged: set[int] = set()
            voltages: dict[int, tuple[str, float]] = {}
            for name, value in raw.items():
                hit = plan.cell_signals.get(name)
                if hit is None:
                    continue
                cell, is_flag = hit
                if is_flag:
                    if round(float(value)) == block.invalid_value:
                        flagged.add(cell)
                else:
                    voltages[cell] = (name, float(value))
            for cell, (name, value) in sorted(voltages.items()):
                if cell in flagged:
                    invalid.append(cell)
                    continue
                lo, hi, tol = plan.cell_range[name]
                bad = self._out_of_range(plan.name, name, value, lo, hi, tol)
                if bad:
                    return MalformedFrame(msg.arbitration_id, bad, route.pack)
                cells[cell] = value * block.scale + block.offset
        status = values.pop("status", None)
        state = values.pop("bms_state", None)
        fields_ = {
            "pack": int(route.pack or 0),
            "values": values if trusted else {},
            "status": None if status is None or not trusted else round(status),
            "counter": counter,
            "message": plan.name,
            "cell_voltages_v": cells,
            "invalid_cells": tuple(invalid),
            "bms_state": None if state is None or not trusted else round(state),
            "checksum_ok": checksum_ok,
            "integrity_errors": run,
            "bus": route.bus,
        }
        return _telemetry_frame(fields_)

    def _command_frame(
        self,
        msg: can.Message,
        route: _Route,
        values: dict[str, float],
        counter: int | None,
        checksum_ok: bool | None,
    ) -> DecodedFrame:
        command = self.signal_map.command
        reason = values.get("reason")
        pack = int(route.pack or 0)
        if command.kind == "setpoint":
            mode = values.get("mode")
            enable = values.get("enable")
            return SetpointFrame(
                pack=pack,
                power_w=values["power_w"],
                mode=None if mode is None else round(mode),
                enable=None if enable is None else bool(round(enable)),
                reason=None if reason is None else round(reason),
                counter=counter,
                checksum_ok=checksum_ok,
            )
        code = round(values["state"])
        names = {v: k for k, v in command.states.items()}
        if code not in names:
            return MalformedFrame(msg.arbitration_id, f"state request {code} unknown", pack)
        state = names[code]
        in_a = command.uses_current_limits
        chg = values["charge_current_limit_a" if in_a else "charge_power_limit_w"]
        dis = values["discharge_current_limit_a" if in_a else "discharge_power_limit_w"]
        power = {"standby": 0.0, "charge": -chg, "discharge": dis}[state]
        return SetpointFrame(
            pack=pack,
            power_w=math.nan if in_a and state != "standby" else power,
            reason=None if reason is None else round(reason),
            counter=counter,
            state=state,
            charge_limit=chg,
            discharge_limit=dis,
            limits_in_a=in_a,
            checksum_ok=checksum_ok,
        )

    # ------------------------------------------------------------------ encode
    def _frame(self, plan: _Plan, signals: dict[str, float], frame_id: int) -> can.Message:
        data = plan.layout.encode(signals)
        entry = plan.entry
        if entry.checksum is not None and plan.checksum_byte is not None:
            buf = bytearray(data)
            b = plan.checksum_byte
            buf[b] = 0
            buf[b] = checksum(entry.checksum.algorithm, bytes(buf[:b] + buf[b + 1 :]))
            data = bytes(buf)
        return can.Message(
            arbitration_id=frame_id,
            is_extended_id=plan.is_extended,
            data=data,
            dlc=plan.length,
        )

    @staticmethod
    def _fill(plan: _Plan, values: Mapping[str, float], counter: int) -> dict[str, float]:
        signals = dict(plan.defaults)
        isfinite = math.isfinite
        for key, signal, offset, scale, lo, hi in plan.encode_sigs:
            if key in values:
                value = (float(values[key]) - offset) / scale  # ScaledSignal.to_dbc
                if isfinite(value):
                    signals[signal] = min(max(value, lo), hi)
        if plan.entry.counter is not None:
            signals[plan.entry.counter.signal] = float(counter % plan.counter_mod)
        return signals

    def _encode_plan(
        self,
        plan: _Plan,
        values: Mapping[str, float],
        pack: int | None,
        counter: int,
        cells: Mapping[int, float] | None = None,
        invalid: frozenset[int] = frozenset(),
        uniform_v: float = math.nan,
    ) -> list[can.Message]:
        frame_id = self._id(plan, pack)
        signals = self._fill(plan, values, counter)
        block = plan.entry.cells
        if block is None:
            return [self._frame(plan, signals, frame_id)]
        frames = []
        for mux, members in plan.cell_frames:
            sig = {**signals, **mux}
            for cell, vname, iname in members:
                volts = uniform_v if cells is None else float(cells.get(cell, math.nan))
                lo, hi, _ = plan.cell_range[vname]
                bad = cell in invalid or not math.isfinite(volts)
                raw = (volts - block.offset) / block.scale
                sig[vname] = max(lo, 0.0) if bad else min(max(raw, lo), hi)
                if iname is not None:
                    sig[iname] = float(block.invalid_value if bad else 1 - block.invalid_value)
            frames.append(self._frame(plan, sig, frame_id))
        return frames

    def encode_command(
        self,
        pack: int,
        power_w: float,
        *,
        safe: bool = False,
        reason: int = 0,
        counter: int = 0,
        pack_voltage_v: float | None = None,
    ) -> list[tuple[str, can.Message]]:
        """Encode the command of one pack, for the bus it is on.

        For a power set-point map: the set-point frame (``safe``: mode safe, enable 0, zero
        power). For a state-request map: ``standby`` with zero limits when ``safe``, power
        non-finite or ``|power_w| < standby_below_w``; else ``discharge`` (power > 0) or
        ``charge`` with the limit in that direction ``|power_w|`` (power limits) or
        ``|power_w| / pack_voltage_v`` (current limits) and 0 in the other. A current-limit
        command without a usable voltage (given, :attr:`pack_voltage_v`, or the map's
        nominal one) is standby.

        Args:
            pack: Pack index.
            power_w: Power [W], + = discharge; limits clipped to the DBC ranges.
            safe: Command the safe state.
            reason: Reason bit field (where mapped).
            counter: Rolling counter (wrapped to the signal width).
            pack_voltage_v: Pack voltage [V] for current limits.

        Returns:
            ``[(bus name, frame)]``.
        """
        frames = self._command_frames(pack, power_w, safe, reason, counter, pack_voltage_v)
        return [(self._bus_of[pack], m) for m in frames]

    def encode_commands(
        self,
        power_w: FloatArray,
        *,
        safe: BoolArray,
        reasons: IntArray,
        counters: IntArray,
        pack_voltage_v: FloatArray | None = None,
    ) -> list[tuple[str, can.Message]]:
        """Every pack's command at once: :meth:`encode_command` of each pack, in pack order.

        With batches on and a power set-point map (no cell block, at most 8 bytes) the
        payloads are built in one numpy pass; otherwise pack by pack. Either way the frames
        equal ``encode_command(i, power_w[i], safe=safe[i], reason=reasons[i],
        counter=counters[i], pack_voltage_v=pack_voltage_v[i])`` for every pack ``i``.

        Args:
            power_w: Per pack power [W], + = discharge.
            safe: Per pack, command the safe state.
            reasons: Per pack reason bit field.
            counters: Per pack rolling counter.
            pack_voltage_v: Per pack voltage [V] for current limits (state requests).

        Returns:
            ``[(bus name, frame)]`` for packs ``0 .. n_packs - 1``.
        """
        if self._batch_commands and self.n_packs >= self.batch_min_frames:
            try:
                return self._setpoints_batch(power_w, safe, reasons, counters)
            except Exception:  # the per-pack path says what is wrong (or encodes it)
                logger.debug("batch encode failed: commands encoded pack by pack", exc_info=True)
        volts = [None] * self.n_packs if pack_voltage_v is None else pack_voltage_v.tolist()
        out: list[tuple[str, can.Message]] = []
        for i, (p, off, reason, counter) in enumerate(
            zip(power_w.tolist(), safe.tolist(), reasons.tolist(), counters.tolist(), strict=True)
        ):
            out += self.encode_command(
                i, p, safe=off, reason=reason, counter=counter, pack_voltage_v=volts[i]
            )
        return out

    def _setpoints_batch(
        self, power_w: FloatArray, safe: BoolArray, reasons: IntArray, counters: IntArray
    ) -> list[tuple[str, can.Message]]:
        """:meth:`_command_frames` of a set-point map for every pack, in numpy."""
        command = self.signal_map.command
        plan = self._cmd_plan
        n = self.n_packs
        p = np.asarray(power_w, dtype=np.float64).reshape(n)
        off_safe = np.asarray(safe, dtype=bool).reshape(n)
        quantities = np.empty((4, n))  # power, mode, enable, reason
        quantities[0] = p
        quantities[0, off_safe | ~np.isfinite(p)] = 0.0
        quantities[1] = np.where(off_safe, float(command.mode_safe), float(command.mode_run))
        quantities[2] = ~off_safe
        quantities[3] = np.asarray(reasons, dtype=np.int64) & 0xFF
        signals, rows, offsets, scales, lows, highs, defaults = self._setpoint_table
        with np.errstate(invalid="ignore", over="ignore"):
            value = (quantities[rows] - offsets) / scales  # as _fill: ScaledSignal.to_dbc
            clipped = np.where(value < lows, lows, value)  # min(max(value, lo), hi)
            clipped = np.where(highs < clipped, highs, clipped)
            clipped = np.where(np.isfinite(value), clipped, defaults)
        columns: dict[str, Any] = dict(plan.defaults)
        columns.update(zip(signals, clipped, strict=True))
        if plan.entry.counter is not None:
            counter = np.asarray(counters, dtype=np.int64) % plan.counter_mod
            columns[plan.entry.counter.signal] = counter.astype(np.float64)
        layout = cast(_BatchLayout, plan.layout)
        payloads = layout.encode_batch(columns, n)
        entry = plan.entry
        if entry.checksum is not None and plan.checksum_byte is not None:
            b = plan.checksum_byte
            payloads[:, b] = 0
            others = np.delete(payloads, b, axis=1)
            payloads[:, b] = _checksum_batch(entry.checksum.algorithm, others)
        data = payloads.tobytes()
        size, extended, ids, bus_of = plan.length, plan.is_extended, self._cmd_ids, self._cmd_bus_of
        message = can.Message  # positional: (timestamp, id, extended, remote, error, channel,
        # dlc, data), python-can's documented order; keywords cost half as much again
        return [
            (
                bus_of[i],
                message(0.0, ids[i], extended, False, False, None, size, data[j : j + size]),
            )
            for i, j in enumerate(range(0, n * size, size))
        ]

    def _command_frames(
        self,
        pack: int,
        power_w: float,
        safe: bool,
        reason: int,
        counter: int,
        pack_voltage_v: float | None,
    ) -> list[can.Message]:
        command = self.signal_map.command
        plan = self._cmd_plan
        p = float(power_w)
        off = safe or not math.isfinite(p)
        if command.kind == "setpoint":
            quantities = (
                0.0 if off else p,
                float(command.mode_safe if safe else command.mode_run),
                0.0 if safe else 1.0,
                float(reason & 0xFF),
            )
            signals = dict(plan.defaults)
            isfinite = math.isfinite
            for k, signal, offset, scale, lo, hi in self._setpoint_sigs:
                value = (quantities[k] - offset) / scale  # as _fill: ScaledSignal.to_dbc
                if isfinite(value):
                    signals[signal] = min(max(value, lo), hi)
            if plan.entry.counter is not None:
                signals[plan.entry.counter.signal] = float(counter % plan.counter_mod)
            if plan.entry.cells is None:
                return [self._frame(plan, signals, self._id(plan, pack))]
            values = dict(zip(("power_w", "mode", "enable", "reason"), quantities, strict=True))
        else:
            volts = math.nan if pack_voltage_v is None else float(pack_voltage_v)
            if not (math.isfinite(volts) and volts > 0):
                volts = float(self.pack_voltage_v[pack])
            if not (math.isfinite(volts) and volts > 0):
                volts = float(command.nominal_pack_voltage_v or math.nan)
            in_a = command.uses_current_limits
            standby = off or abs(p) < command.standby_below_w
            if in_a and not (math.isfinite(volts) and volts > 0):
                standby = True
            limit = 0.0 if standby else abs(p) / volts if in_a else abs(p)
            state = "standby" if standby else "discharge" if p > 0 else "charge"
            suffix = "current_limit_a" if in_a else "power_limit_w"
            values = {
                "state": float(command.states[state]),
                f"charge_{suffix}": limit if state == "charge" else 0.0,
                f"discharge_{suffix}": limit if state == "discharge" else 0.0,
                "reason": float(reason & 0xFF),
            }
        return self._encode_plan(plan, values, pack, counter)

    def encode_setpoint(
        self,
        pack: int,
        power_w: float,
        *,
        safe: bool = False,
        reason: int = 0,
        counter: int = 0,
        pack_voltage_v: float | None = None,
    ) -> can.Message:
        """The frame of :meth:`encode_command` (one per pack), without its bus name."""
        return self._command_frames(pack, power_w, safe, reason, counter, pack_voltage_v)[0]

    def encode_telemetry(
        self,
        pack: int,
        values: Mapping[str, float],
        *,
        status: int = 0,
        counter: int = 0,
        bms_state: int | None = None,
        cell_voltages_v: Mapping[int, float] | None = None,
        invalid_cells: Sequence[int] = (),
    ) -> list[can.Message]:
        """Encode one pack's telemetry (the HIL simulator and tests use this).

        A single ``cell_voltage_v``/``temperature_c`` stands for the min and max the map
        may carry, and for every cell when ``cell_voltages_v`` is not given.

        Args:
            pack: Pack index.
            values: Quantities of the contract, PulseBMS units.
            status: Status code (our convention: 0 ok, 2 fault).
            counter: Rolling counter.
            bms_state: BMS state code; by default the map's ``bms_state_ok_value``, or its
                first fault value when ``status`` is a fault.
            cell_voltages_v: Cell index → voltage [V]; missing cells are sent invalid.
            invalid_cells: Cells to flag invalid.

        Returns:
            Every frame of every telemetry message of the map (all mux values of cells).
        """
        sm = self.signal_map
        full = dict(values)
        for single, lo, hi in (
            ("cell_voltage_v", "cell_voltage_min_v", "cell_voltage_max_v"),
            ("temperature_c", "temperature_min_c", "temperature_max_c"),
        ):
            if single in full:
                full.setdefault(lo, full[single])
                full.setdefault(hi, full[single])
        full["status"] = float(status)
        if bms_state is None:
            faulted = status in sm.status_fault_values and sm.bms_state_fault_values
            bms_state = sm.bms_state_fault_values[0] if faulted else sm.bms_state_ok_value
        full["bms_state"] = float(bms_state)
        uniform = float(values.get("cell_voltage_v", math.nan))
        frames: list[can.Message] = []
        bad = frozenset(int(c) for c in invalid_cells)
        for plan in self._tel_plans:
            frames += self._encode_plan(plan, full, pack, counter, cell_voltages_v, bad, uniform)
        return frames

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

        Raises:
            ValueError: If the map has no site frame.
        """
        if self._site_plan is None:
            raise ValueError("this signal map has no site frame on CAN")
        values = {
            "demand_w": demand_w,
            "price_per_kwh": price_per_kwh,
            "time_of_day_s": time_of_day_s % 86400.0,
            "ambient_c": ambient_c,
        }
        return self._encode_plan(self._site_plan, values, None, counter)[0]
