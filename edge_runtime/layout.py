"""Compiled CAN message layouts: cantools' decode/encode, precomputed once per message.

:func:`compile_message` reads a :class:`cantools.database.can.Message` once and turns every
signal into a shift, a mask and a conversion, so that decoding a frame is one
``int.from_bytes`` per byte order plus shifts, and encoding is the reverse: no cantools
(nor bitstruct) call per frame. The result is **bit-identical** to cantools (the tests fuzz
both with hypothesis):

* :meth:`MessageLayout.decode` ``==`` ``message.decode(data, decode_choices=False,
  scaling=True)``: same keys in the same order, same values and value types (``int`` for
  integer conversions, ``float`` otherwise), and for a multiplexed message only the
  signals active for the selector's value (nested multiplexing included).
* :meth:`MessageLayout.encode` ``==`` ``message.encode(values, scaling=True,
  strict=False)``: every signal of the active branch must be given, others are ignored,
  unused bits are 0.

Byte order: Intel (little endian) signals are read from ``int.from_bytes(data, "little")``
at their start bit; Motorola (big endian) ones from ``int.from_bytes(data, "big")``, their
DBC start bit being the most significant bit in the sawtooth numbering. Float signals
(``SIG_VALTYPE_``) are IEEE 754 bit patterns of 32 or 64 bits.

Errors are the ones cantools raises, so code written against either catches both:
:class:`cantools.database.DecodeError` for a short frame or a selector value without a
branch; for encoding, subclasses of :class:`cantools.database.EncodeError` that are also the
built-in exception cantools lets through (:class:`SignalMissingError` is a ``KeyError``,
:class:`SignalRangeError` an ``OverflowError``). Values may be numbers only: choice names
(strings) are not encoded, choices are never decoded. Container messages are refused.

Example:
    >>> import cantools
    >>> db = cantools.database.load_string('''VERSION ""
    ... BO_ 256 Demo: 2 Vector__XXX
    ...  SG_ Soc : 0|10@1+ (0.1,0) [0|100] "%" Vector__XXX
    ...  SG_ Flag : 15|1@0+ (1,0) [0|1] "" Vector__XXX
    ... ''')
    >>> layout = compile_message(db.get_message_by_name("Demo"))
    >>> layout.encode({"Soc": 50.0, "Flag": 1}).hex()
    'f481'
    >>> layout.decode(bytes.fromhex("f481"))
    {'Soc': 50.0, 'Flag': 1}
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cantools.database
from cantools.database import DecodeError, EncodeError

__all__ = [
    "LayoutEncodeError",
    "MessageLayout",
    "SignalLayout",
    "SignalMissingError",
    "SignalRangeError",
    "compile_message",
]

_IDENTITY, _LINEAR_INT, _LINEAR = 0, 1, 2
_FLOAT_FORMATS = {32: struct.Struct(">f"), 64: struct.Struct(">d")}


class LayoutEncodeError(EncodeError):
    """A value cannot be encoded (base of the layout's encode errors)."""


class SignalMissingError(LayoutEncodeError, KeyError):
    """A signal of the active branch has no value (cantools raises ``KeyError``)."""

    def __str__(self) -> str:  # KeyError's repr-quoting would hide the message
        return str(self.args[0]) if self.args else ""


class SignalRangeError(LayoutEncodeError, OverflowError):
    """A raw value does not fit the signal's bits (cantools: bitstruct's ``OverflowError``)."""


@dataclass(frozen=True)
class SignalLayout:
    """One signal as compiled: where its bits are and how raw ↔ physical converts.

    Attributes:
        name: Signal name.
        start: DBC start bit (Intel: least significant bit; Motorola: most significant bit,
            sawtooth numbering).
        length_bits: Width [bits], 1..64.
        big_endian: Motorola byte order.
        is_signed: Two's complement raw value.
        is_float: IEEE 754 raw value (32 or 64 bits).
        scale: ``physical = raw * scale + offset``.
        offset: See ``scale``.
        minimum: DBC minimum (physical), if any.
        maximum: DBC maximum (physical), if any.
        shift: Right shift of the raw value in the byte-order integer of the payload.
        mask: ``2**length_bits - 1``.
        is_multiplexer: The signal selects a multiplexed branch.
        multiplexer_signal: The selector this signal depends on, if multiplexed.
        multiplexer_ids: Selector values for which the signal is present, if multiplexed.
    """

    name: str
    start: int
    length_bits: int
    big_endian: bool
    is_signed: bool
    is_float: bool
    scale: float
    offset: float
    minimum: float | None
    maximum: float | None
    shift: int
    mask: int
    is_multiplexer: bool = False
    multiplexer_signal: str | None = None
    multiplexer_ids: tuple[int, ...] | None = None


# One compiled field, a flat tuple for the hot loop:
# (name, big_endian, shift, mask, sign_bit, modulus, float_struct, kind, scale, offset,
#  minimum raw, maximum raw)
_Field = tuple[str, bool, int, int, int, int, struct.Struct | None, int, float, float, int, int]


_DecodeFn = Callable[[int, int], dict[str, float]]
_EncodeFn = Callable[[Mapping[str, float], int, int], tuple[int, int]]


@dataclass(frozen=True)
class _Node:
    """A level of the multiplexing tree: its signals, then each selector's branches.

    ``decode_fn(little, big)`` and ``encode_fn(values, little, big)`` are the fields'
    straight-line code (see :func:`_compile_fields`); ``fields`` drives the reference
    encoder that reports errors.
    """

    fields: tuple[_Field, ...]
    muxes: tuple[tuple[str, dict[int, _Node]], ...]
    decode_fn: _DecodeFn
    encode_fn: _EncodeFn


def _linear_int_to_raw(value: float, offset: int, scale: int) -> int:
    """The inverse of cantools' integer conversion (exact when the quotient is whole)."""
    shifted = value - offset
    quotient, remainder = divmod(shifted, scale)
    return round(quotient if remainder == 0 else shifted / scale)


def _float_bits(fmt: struct.Struct) -> Callable[[float], int]:
    """IEEE bit pattern of a value, saturating to ±inf like bitstruct's C cast."""

    def bits(raw: float) -> int:
        try:
            packed = fmt.pack(raw)
        except OverflowError:
            packed = fmt.pack(math.copysign(math.inf, float(raw)))
        return int.from_bytes(packed, "big")

    return bits


def _compile_fields(fields: tuple[_Field, ...], label: str) -> tuple[_DecodeFn, _EncodeFn]:
    """Generate straight-line decode and encode functions for one node's fields.

    The generated source holds only generated identifiers and integer literals (shifts,
    masks, bounds); signal names, scales, offsets and helpers are bound through the
    function's namespace, so nothing from the DBC is ever parsed as code. The arithmetic is
    cantools' own: ``raw * scale + offset`` and its inverse, ``round`` for integers.
    """
    ns: dict[str, Any] = {"_linear_int": _linear_int_to_raw}
    items: list[str] = []
    lines: list[str] = []
    for i, field in enumerate(fields):
        name, is_big, shift, mask, sign, _, fmt, kind, scale, offset, lo, hi = field
        word = "big" if is_big else "little"
        ns[f"_n{i}"], ns[f"_s{i}"], ns[f"_o{i}"] = name, scale, offset
        bits = f"(({word} >> {shift}) & {mask})"
        if fmt is not None:
            ns[f"_unpack{i}"], ns[f"_pack{i}"] = fmt.unpack, _float_bits(fmt)
            raw = f"_unpack{i}({bits}.to_bytes({fmt.size}, 'big'))[0]"
        elif sign:
            raw = f"(({bits} ^ {sign}) - {sign})"
        else:
            raw = bits
        items.append(f"_n{i}: {raw}" if kind == _IDENTITY else f"_n{i}: {raw} * _s{i} + _o{i}")
        lines.append(f"    v = values[_n{i}]")
        if fmt is not None:
            physical = "v" if kind == _IDENTITY else f"(v - _o{i}) / _s{i}"
            lines.append(f"    {word} |= _pack{i}({physical}) << {shift}")
            continue
        if kind == _IDENTITY:
            lines.append("    r = round(v)")
        elif kind == _LINEAR_INT:
            lines.append(f"    r = _linear_int(v, _o{i}, _s{i})")
        else:
            lines.append(f"    r = round((v - _o{i}) / _s{i})")
        lines.append(f"    if r < {lo} or r > {hi}:\n        raise OverflowError")
        lines.append(
            f"    {word} |= (r & {mask}) << {shift}" if sign else f"    {word} |= r << {shift}"
        )
    source = (
        "def decode(little, big):\n    return {" + ", ".join(items) + "}\n\n"
        "def encode(values, little, big):\n" + "\n".join([*lines, "    return little, big"]) + "\n"
    )
    exec(compile(source, f"<layout {label}>", "exec"), ns)  # generated source: see the docstring
    return ns["decode"], ns["encode"]


def _is_integer(value: float) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _conversion(signal: cantools.database.can.Signal) -> tuple[int, float, float]:
    """(kind, scale, offset) with the numeric types cantools' conversion factory uses."""
    conv = signal.conversion
    scale, offset, is_float = conv.scale, conv.offset, bool(conv.is_float)
    if scale == 1 and offset == 0:
        return _IDENTITY, scale, offset
    if _is_integer(scale) and _is_integer(offset) and not is_float:
        return _LINEAR_INT, int(scale), int(offset)
    return _LINEAR, scale, offset


def _signal_layout(signal: cantools.database.can.Signal, length_bytes: int) -> SignalLayout:
    n = int(signal.length)
    big = signal.byte_order == "big_endian"
    is_float = bool(signal.conversion.is_float)
    if not 1 <= n <= 64:
        raise ValueError(f"signal {signal.name!r}: length {n} bits outside 1..64")
    if is_float and n not in _FLOAT_FORMATS:
        raise ValueError(f"float signal {signal.name!r}: {n} bits, expected 32 or 64")
    if big:  # sawtooth → network numbering of the most significant bit
        msb = 8 * (signal.start // 8) + (7 - signal.start % 8)
        shift = 8 * length_bytes - msb - n
    else:
        shift = int(signal.start)
    if shift < 0 or (not big and shift + n > 8 * length_bytes):
        raise ValueError(f"signal {signal.name!r} does not fit in {length_bytes} bytes")
    _, scale, offset = _conversion(signal)
    ids = signal.multiplexer_ids
    return SignalLayout(
        name=signal.name,
        start=int(signal.start),
        length_bits=n,
        big_endian=big,
        is_signed=bool(signal.is_signed),
        is_float=is_float,
        scale=scale,
        offset=offset,
        minimum=None if signal.minimum is None else float(signal.minimum),
        maximum=None if signal.maximum is None else float(signal.maximum),
        shift=shift,
        mask=(1 << n) - 1,
        is_multiplexer=bool(signal.is_multiplexer),
        multiplexer_signal=signal.multiplexer_signal,
        multiplexer_ids=None if ids is None else tuple(int(i) for i in ids),
    )


def _field(spec: SignalLayout, signal: cantools.database.can.Signal) -> _Field:
    kind, scale, offset = _conversion(signal)
    n = spec.length_bits
    signed = spec.is_signed and not spec.is_float
    sign = 1 << (n - 1) if signed else 0
    lo, hi = (-(1 << (n - 1)), (1 << (n - 1)) - 1) if signed else (0, (1 << n) - 1)
    fmt = _FLOAT_FORMATS[n] if spec.is_float else None
    return (
        spec.name, spec.big_endian, spec.shift, spec.mask, sign, 1 << n, fmt,
        kind, scale, offset, lo, hi,
    )  # fmt: skip


class MessageLayout:
    """A compiled message: decode and encode like cantools, without cantools per frame.

    Build it with :func:`compile_message`.

    Attributes:
        name: Message name.
        frame_id: CAN id of the DBC message.
        is_extended: 29-bit id.
        length: Payload length [bytes].
        signal_names: Every signal, in the message's signal order (all branches).
        is_multiplexed: The message has a multiplexer selector.
    """

    def __init__(self, message: cantools.database.can.Message) -> None:
        if message.is_container:
            raise ValueError(f"message {message.name!r} is a container: not supported")
        self.name: str = message.name
        self.frame_id: int = int(message.frame_id)
        self.is_extended: bool = bool(message.is_extended_frame)
        self.length: int = int(message.length)
        signals = list(message.signals)
        self.signal_names: tuple[str, ...] = tuple(s.name for s in signals)
        self._signals: dict[str, SignalLayout] = {
            s.name: _signal_layout(s, self.length) for s in signals
        }
        by_parent: dict[str | None, list[cantools.database.can.Signal]] = {}
        for s in signals:
            by_parent.setdefault(s.multiplexer_signal, []).append(s)
        self._root = self._node(by_parent, None, None)
        self._little = any(not spec.big_endian for spec in self._signals.values())
        self._big = any(spec.big_endian for spec in self._signals.values())
        self.is_multiplexed: bool = bool(self._root.muxes)

    # ------------------------------------------------------------------ compile
    def _node(
        self,
        by_parent: Mapping[str | None, list[cantools.database.can.Signal]],
        parent: str | None,
        mux_id: int | None,
    ) -> _Node:
        """The signals under ``parent`` for selector value ``mux_id`` (as cantools groups)."""
        fields: list[_Field] = []
        muxes: list[tuple[str, dict[int, _Node]]] = []
        for s in by_parent.get(parent, []):
            ids = s.multiplexer_ids
            if mux_id is not None and (ids is None or mux_id not in ids):
                continue
            if s.is_multiplexer:
                children: set[int] = set()
                for child in by_parent.get(s.name, []):
                    children.update(child.multiplexer_ids or ())
                if s.conversion.choices:  # a named selector value is a branch, even if empty
                    children.update(int(k) for k in s.conversion.choices)
                if children:  # a selector without any branch is a plain signal to cantools
                    muxes.append(
                        (s.name, {k: self._node(by_parent, s.name, k) for k in sorted(children)})
                    )
            fields.append(_field(self._signals[s.name], s))
        decode_fn, encode_fn = _compile_fields(tuple(fields), self.name)
        return _Node(tuple(fields), tuple(muxes), decode_fn, encode_fn)

    # ------------------------------------------------------------------ helpers
    def signal(self, name: str) -> SignalLayout:
        """The compiled layout of one signal.

        Raises:
            KeyError: If the message has no such signal.
        """
        try:
            return self._signals[name]
        except KeyError:
            raise KeyError(f"message {self.name!r} has no signal {name!r}") from None

    def minimum(self, name: str) -> float | None:
        """DBC minimum (physical) of ``name``, None if the DBC gives none."""
        return self.signal(name).minimum

    def maximum(self, name: str) -> float | None:
        """DBC maximum (physical) of ``name``, None if the DBC gives none."""
        return self.signal(name).maximum

    def scale(self, name: str) -> float:
        """Scale of ``name`` (``physical = raw * scale + offset``)."""
        return self.signal(name).scale

    def offset(self, name: str) -> float:
        """Offset of ``name`` (``physical = raw * scale + offset``)."""
        return self.signal(name).offset

    def length_bits(self, name: str) -> int:
        """Width of ``name`` [bits]."""
        return self.signal(name).length_bits

    def __repr__(self) -> str:
        return (
            f"MessageLayout({self.name!r}, frame_id=0x{self.frame_id:X}, length={self.length}, "
            f"{len(self.signal_names)} signals{', multiplexed' if self.is_multiplexed else ''})"
        )

    # ------------------------------------------------------------------ decode
    def decode(self, data: bytes | bytearray) -> dict[str, float]:
        """Physical values of the signals in ``data`` (choices not decoded).

        Equal to ``message.decode(data, decode_choices=False, scaling=True)``: a longer
        payload is cut to :attr:`length`, as cantools does.

        Args:
            data: The payload.

        Returns:
            Signal name → physical value (``int`` where the conversion is integer), only the
            signals active for the multiplexer selectors' values.

        Raises:
            cantools.database.DecodeError: If ``data`` is shorter than :attr:`length`, or a
                selector has a value without a branch.
        """
        n = self.length
        if len(data) != n:
            if len(data) < n:
                raise DecodeError(f"Wrong data size: {len(data)} instead of {n} bytes")
            data = data[:n]
        little = int.from_bytes(data, "little") if self._little else 0
        big = int.from_bytes(data, "big") if self._big else 0
        root = self._root
        out = root.decode_fn(little, big)
        if root.muxes:
            self._decode_branches(root, little, big, out)
        return out

    @staticmethod
    def _decode_branches(node: _Node, little: int, big: int, out: dict[str, float]) -> None:
        for mux_name, branches in node.muxes:
            selector = int(out[mux_name])
            branch = branches.get(selector)
            if branch is None:
                ids = " or ".join(str(k) for k in sorted(branches))
                raise DecodeError(f"expected multiplexer id {ids}, but got {selector}")
            out.update(branch.decode_fn(little, big))
            if branch.muxes:
                MessageLayout._decode_branches(branch, little, big, out)

    # ------------------------------------------------------------------ encode
    def encode(self, values: Mapping[str, float]) -> bytes:
        """The payload for physical ``values``.

        Equal to ``message.encode(values, scaling=True, strict=False)``: no range check
        against the DBC minimum/maximum (the caller clips), every signal of the active
        branch is required, values of inactive branches and unknown names are ignored,
        unused bits are 0.

        Args:
            values: Signal name → physical value (numbers; no choice names).

        Returns:
            :attr:`length` bytes.

        Raises:
            SignalMissingError: If a signal of the active branch has no value.
            SignalRangeError: If a raw value does not fit its bits.
            LayoutEncodeError: If a selector's value has no branch.
            ValueError: If an integer signal's value is NaN (as ``round`` raises).
            OverflowError: If an integer signal's value is infinite (as ``round`` raises).
        """
        root = self._root
        try:
            little, big = root.encode_fn(values, 0, 0)
            if root.muxes:
                little, big = self._encode_branches(root, values, little, big)
        except Exception:  # the reference encoder says what is wrong (or encodes it)
            acc = [0, 0]
            self._encode_node(root, values, acc)
            little, big = acc
        n = self.length
        if not little:
            return big.to_bytes(n, "big")
        if not big:
            return little.to_bytes(n, "little")
        return (big | int.from_bytes(little.to_bytes(n, "little"), "big")).to_bytes(n, "big")

    @staticmethod
    def _encode_branches(
        node: _Node, values: Mapping[str, float], little: int, big: int
    ) -> tuple[int, int]:
        for mux_name, branches in node.muxes:
            branch = branches[int(values[mux_name])]
            little, big = branch.encode_fn(values, little, big)
            if branch.muxes:
                little, big = MessageLayout._encode_branches(branch, values, little, big)
        return little, big

    def _encode_node(self, node: _Node, values: Mapping[str, float], acc: list[int]) -> None:
        little, big = acc
        error: SignalRangeError | None = None  # cantools converts every value before packing
        for name, is_big, shift, mask, _, _, fmt, kind, scale, offset, lo, hi in node.fields:
            try:
                value = values[name]
            except KeyError:
                raise SignalMissingError(
                    f"message {self.name!r}: no value for signal {name!r}"
                ) from None
            raw: float
            if kind == _IDENTITY:
                raw = value if fmt is not None else round(value)
            elif kind == _LINEAR_INT:
                raw = value - offset
                quotient, remainder = divmod(raw, scale)
                raw = quotient if remainder == 0 else raw / scale
                raw = round(raw)
            else:
                raw = (value - offset) / scale
                if fmt is None:
                    raw = round(raw)
            if fmt is not None:
                try:
                    packed = fmt.pack(raw)
                except OverflowError:  # bitstruct's C cast double → float saturates to ±inf
                    packed = fmt.pack(math.copysign(math.inf, float(raw)))
                bits = int.from_bytes(packed, "big")
            else:
                bits = int(raw)
                if not lo <= bits <= hi:
                    if error is None:
                        error = SignalRangeError(
                            f"message {self.name!r}: signal {name!r} raw value {bits} "
                            f"outside {lo}..{hi}"
                        )
                    continue
                bits &= mask
            if is_big:
                big |= bits << shift
            else:
                little |= bits << shift
        if error is not None:
            raise error
        acc[0], acc[1] = little, big
        for mux_name, branches in node.muxes:
            selector = int(values[mux_name])
            branch = branches.get(selector)
            if branch is None:
                ids = " or ".join(str(k) for k in branches)
                raise LayoutEncodeError(
                    f"Expected multiplexer id in {{{ids}}}, for multiplexer {mux_name!r} "
                    f"but got {selector}"
                )
            self._encode_node(branch, values, acc)


def compile_message(message: cantools.database.can.Message) -> MessageLayout:
    """Compile ``message`` into a :class:`MessageLayout` (shifts, masks, conversions, once).

    Args:
        message: A cantools message (from a loaded DBC, or built in code).

    Returns:
        The layout.

    Raises:
        ValueError: If the message is a container, or a signal is wider than 64 bits or
            does not fit the payload.
    """
    return MessageLayout(message)
