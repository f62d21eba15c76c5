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

**Batches** (:meth:`MessageLayout.decode_batch`, :meth:`MessageLayout.encode_batch`): the
frames of one message stacked into an ``(n, length)`` ``uint8`` array are decoded, or
encoded, with numpy: the payloads as 64-bit words (one per byte order), then per signal
one shift, mask, sign extension and conversion over the whole batch. Row ``i`` of the
result equals the scalar call on frame ``i`` (so cantools' result), as float64:
``decode_batch(p).values[k, i] == float(decode(p[i])[name_k])`` and
``encode_batch(v)[i] == encode({name: float(v[name][i])})``. Integer conversions whose
results may exceed 2**53 are computed exactly (int64 where it cannot overflow, Python
integers otherwise), so even 64-bit signals round as ``float(cantools value)`` does.
Messages longer than 8 bytes (CAN FD) go frame by frame through the scalar path.

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
    >>> import numpy as np
    >>> payloads = layout.encode_batch({"Soc": np.array([50.0, 12.5]), "Flag": np.array([1, 0])})
    >>> payloads.tolist()
    [[244, 129], [125, 0]]
    >>> layout.decode_batch(payloads).values.tolist()
    [[50.0, 12.5], [1.0, 0.0]]
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import cantools.database
import numpy as np
from cantools.database import DecodeError, EncodeError
from numpy.typing import ArrayLike, NDArray

from pulsebms.core.types import AnyArray, BoolArray, FloatArray, IntArray

__all__ = [
    "BatchDecoded",
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


class BatchDecoded(NamedTuple):
    """:meth:`MessageLayout.decode_batch` of ``n`` payloads.

    Attributes:
        values: ``(n_signals, n)`` float64, rows in :attr:`MessageLayout.signal_names`
            order: ``float`` of cantools' value; NaN where the signal is not present.
        present: ``(n_signals, n)``: whether the signal is in that frame (its branch
            selected; always for a message without multiplexing).
        error: ``(n,)``: frames the scalar decode refuses (a selector value without a
            branch); nothing is present in them.
    """

    values: FloatArray
    present: BoolArray
    error: BoolArray


_U64 = NDArray[np.uint64]
_WORD_BYTES = 8
_INT64_LIMIT = 1 << 63

# How a batch computes a signal's physical value from its raw bits (see _BatchSpec).
_FLOAT_SIGNAL, _INT_EXACT, _UINT_IDENTITY, _INT_THEN_FLOAT, _FLOAT_SCALE, _PYTHON = range(6)


@dataclass(frozen=True)
class _BatchSpec:
    """One signal compiled for batches: its bits in the 64-bit words and its arithmetic.

    ``shift`` is counted in the 8-byte word (a Motorola signal of a shorter message sits
    ``8 * (8 - length)`` bits higher than in the scalar big-endian integer). ``mode`` says
    how ``raw * scale + offset`` is done so that it equals Python's arithmetic on the
    scalar path: ``_INT_EXACT`` in int64 (it cannot overflow), ``_UINT_IDENTITY`` a 64-bit
    unsigned raw value as is, ``_INT_THEN_FLOAT`` an exact int64 product then a float
    offset, ``_FLOAT_SCALE`` float64 as Python's ``int * float``, ``_FLOAT_SIGNAL`` IEEE
    values, ``_PYTHON`` Python integers row by row (products beyond int64).
    """

    index: int
    big_endian: bool
    shift: int
    mask: int
    length_bits: int
    sign: int
    float_bits: int
    kind: int
    scale: float
    offset: float
    mode: int
    low: float
    high_exclusive: float

    def raw_int(self, bits: int) -> int:
        """The raw integer of one frame's bits (two's complement where signed)."""
        return ((bits ^ self.sign) - self.sign) if self.sign else bits

    def physical(self, bits: int) -> int | float:
        """One frame's physical value, with the scalar path's Python arithmetic."""
        raw = self.raw_int(bits)
        if self.kind == _IDENTITY:
            return raw
        return raw * self.scale + self.offset


def _batch_mode(
    kind: int, scale: float, offset: float, n: int, signed: bool, is_float: bool
) -> int:
    if is_float:
        return _FLOAT_SIGNAL
    raw_lo, raw_hi = (-(1 << (n - 1)), (1 << (n - 1)) - 1) if signed else (0, (1 << n) - 1)
    if kind == _LINEAR and not isinstance(scale, int):
        return _FLOAT_SCALE  # float(raw) * scale: Python converts the int the same way
    int_scale = 1 if kind == _IDENTITY else int(scale)
    int_offset = 0 if kind != _LINEAR_INT else int(offset)
    extremes = [raw_lo, raw_hi, raw_lo * int_scale, raw_hi * int_scale]
    extremes += [e + int_offset for e in extremes[2:]]
    if all(-_INT64_LIMIT <= e < _INT64_LIMIT for e in extremes):
        return _INT_THEN_FLOAT if kind == _LINEAR else _INT_EXACT
    if kind == _IDENTITY and not signed:
        return _UINT_IDENTITY
    return _PYTHON


def _batch_spec(field: _Field, index: int, length_bytes: int) -> _BatchSpec:
    name, is_big, shift, mask, sign, modulus, fmt, kind, scale, offset, lo, hi = field
    del name
    n = modulus.bit_length() - 1
    return _BatchSpec(
        index=index,
        big_endian=is_big,
        shift=shift + 8 * (_WORD_BYTES - length_bytes) if is_big else shift,
        mask=mask,
        length_bits=n,
        sign=sign,
        float_bits=0 if fmt is None else 8 * fmt.size,
        kind=kind,
        scale=scale,
        offset=offset,
        mode=_batch_mode(kind, scale, offset, n, bool(sign), fmt is not None),
        low=float(lo),
        high_exclusive=float(hi + 1),  # 2**k: exact, unlike hi itself for 64 bits
    )


def _bits(spec: _BatchSpec, little: _U64, big: _U64) -> _U64:
    word = big if spec.big_endian else little
    out: _U64 = (word >> np.uint64(spec.shift)) & np.uint64(spec.mask)
    return out


def _raw_int64(spec: _BatchSpec, bits: _U64) -> IntArray:
    """Raw values as int64 (callers ensure they fit: not for 64-bit unsigned)."""
    if not spec.sign:
        return bits.astype(np.int64)
    if spec.length_bits == 64:
        return bits.view(np.int64)
    sign = np.uint64(spec.sign)
    return (bits ^ sign).astype(np.int64) - np.int64(spec.sign)


def _decode_physical(spec: _BatchSpec, bits: _U64) -> FloatArray:
    """Physical values [float64] of one signal, equal to ``float`` of the scalar path's."""
    mode = spec.mode
    if mode == _FLOAT_SIGNAL:
        with np.errstate(all="ignore"):  # NaN payloads, overflow to ±inf: as Python's
            if spec.float_bits == 64:
                value = bits.view(np.float64)
            else:
                value = bits.astype(np.uint32).view(np.float32).astype(np.float64)
            if spec.kind == _IDENTITY:
                return value
            return np.asarray(value * spec.scale + spec.offset, dtype=np.float64)
    if mode == _UINT_IDENTITY:
        return bits.astype(np.float64)
    if mode == _FLOAT_SCALE:
        raw_f = bits.astype(np.float64) if not spec.sign else _raw_int64(spec, bits).astype(float)
        with np.errstate(all="ignore"):
            return np.asarray(raw_f * spec.scale + spec.offset, dtype=np.float64)
    if mode == _INT_EXACT:
        raw = _raw_int64(spec, bits)
        if spec.kind == _LINEAR_INT:
            raw = raw * np.int64(spec.scale) + np.int64(spec.offset)
        return raw.astype(np.float64)
    if mode == _INT_THEN_FLOAT:
        product = _raw_int64(spec, bits) * np.int64(spec.scale)
        return np.asarray(product.astype(np.float64) + spec.offset, dtype=np.float64)
    return np.fromiter(
        (float(spec.physical(b)) for b in bits.tolist()), dtype=np.float64, count=len(bits)
    )


def _selector(spec: _BatchSpec, bits: _U64) -> AnyArray:
    """``int(physical)`` per frame, as the scalar decode picks a branch (any dtype)."""
    if spec.mode == _INT_EXACT:
        raw = _raw_int64(spec, bits)
        if spec.kind == _LINEAR_INT:
            raw = raw * np.int64(spec.scale) + np.int64(spec.offset)
        return raw
    if spec.mode == _UINT_IDENTITY:
        return bits
    if spec.mode == _PYTHON:
        return np.array([int(spec.physical(b)) for b in bits.tolist()], dtype=object)
    with np.errstate(invalid="ignore"):  # NaN and ±inf match no branch (int() raises)
        return np.trunc(_decode_physical(spec, bits))


def _encode_bits(spec: _BatchSpec, value: FloatArray, bad: BoolArray) -> _U64:
    """Raw bits of ``value`` (float64) as the scalar encode makes them.

    Rows the scalar encode refuses (NaN, infinite, out of the signal's bits) are set in
    ``bad`` and give 0.
    """
    with np.errstate(all="ignore"):
        if spec.float_bits:
            raw = value if spec.kind == _IDENTITY else (value - spec.offset) / spec.scale
            raw = np.asarray(raw, dtype=np.float64)
            if spec.float_bits == 32:  # saturates to ±inf like bitstruct's C cast
                return raw.astype(np.float32).view(np.uint32).astype(np.uint64)
            return raw.view(np.uint64).copy()
        if spec.kind == _IDENTITY:
            r = np.rint(value)
        elif spec.kind == _LINEAR_INT:
            shifted = value - spec.offset
            quotient, remainder = np.divmod(shifted, spec.scale)
            r = np.rint(np.where(remainder == 0, quotient, shifted / spec.scale))
        else:
            r = np.rint((value - spec.offset) / spec.scale)
        ok = (r >= spec.low) & (r < spec.high_exclusive)  # NaN fails both
        bad |= ~ok
        r = np.where(ok, r, 0.0)
        if spec.sign:
            return r.astype(np.int64).view(np.uint64) & np.uint64(spec.mask)
        return r.astype(np.uint64)


_EXACT_FLOAT = float(2**53)


def _fuses_decode(spec: _BatchSpec) -> bool:
    """Whether float64 ``float(raw) * scale + offset`` is the scalar path's value exactly."""
    if spec.float_bits or spec.length_bits > 63:
        return False
    if spec.mode == _FLOAT_SCALE:  # Python: float(raw) * scale + offset, the same ops
        return True
    if spec.mode not in (_INT_EXACT, _INT_THEN_FLOAT):
        return False
    n, signed = spec.length_bits, bool(spec.sign)
    raw_lo, raw_hi = (-(1 << (n - 1)), (1 << (n - 1)) - 1) if signed else (0, (1 << n) - 1)
    scale = 1 if spec.kind == _IDENTITY else int(spec.scale)
    offset = int(spec.offset) if spec.mode == _INT_EXACT and spec.kind != _IDENTITY else 0
    extremes = [raw_lo, raw_hi, raw_lo * scale, raw_hi * scale]
    extremes += [raw_lo * scale + offset, raw_hi * scale + offset]
    return all(abs(e) <= 2**53 for e in extremes)  # every step exact in float64


class _Fused:
    """Signals of one byte order done together: one ``(k, n)`` numpy op per step.

    Decode: ``float(raw) * scale + offset`` (see :func:`_fuses_decode`). Encode:
    ``rint((value - offset) / scale)``, which is the scalar encode's raw value for every
    conversion kind (for integer ones: a divisible value divides exactly).
    """

    def __init__(self, specs: list[_BatchSpec]) -> None:
        self.specs = specs
        self.index = np.array([s.index for s in specs], dtype=np.intp)
        self.shifts = np.array([s.shift for s in specs], dtype=np.uint64)[:, None]
        self.masks = np.array([s.mask for s in specs], dtype=np.uint64)[:, None]
        self.signs = np.array([s.sign for s in specs], dtype=np.int64)[:, None]
        self.signed = any(s.sign for s in specs)
        kinds = [s.kind == _IDENTITY for s in specs]
        self.scales = np.array(
            [1.0 if i else float(s.scale) for s, i in zip(specs, kinds, strict=True)]
        )[:, None]
        self.offsets = np.array(
            [0.0 if i else float(s.offset) for s, i in zip(specs, kinds, strict=True)]
        )[:, None]
        self.lows = np.array([s.low for s in specs])[:, None]
        self.highs = np.array([s.high_exclusive for s in specs])[:, None]

    def decode(self, word: _U64) -> FloatArray:
        bits = (word[None, :] >> self.shifts) & self.masks
        raw = bits.astype(np.int64)
        if self.signed:
            raw = (raw ^ self.signs) - self.signs
        out: FloatArray = raw.astype(np.float64) * self.scales + self.offsets
        return out

    def encode(self, values: FloatArray, bad: BoolArray) -> _U64:
        """OR of the signals' bits per row; rows the scalar encode refuses go to ``bad``."""
        with np.errstate(all="ignore"):
            r = np.rint((values - self.offsets) / self.scales)
            ok = (r >= self.lows) & (r < self.highs)
            if not ok.all():
                bad |= ~ok.all(axis=0)
                r = np.where(ok, r, 0.0)
            bits = (r.astype(np.int64).view(np.uint64) & self.masks) << self.shifts
        out: _U64 = np.bitwise_or.reduce(bits, axis=0)
        return out


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
        index = {name: i for i, name in enumerate(self.signal_names)}
        self._batch: dict[str, _BatchSpec] = {}
        stack = [self._root]
        while stack:
            node = stack.pop()
            for f in node.fields:
                self._batch.setdefault(f[0], _batch_spec(f, index[f[0]], self.length))
            stack.extend(branch for _, branches in node.muxes for branch in branches.values())
        self.batch_native: bool = self.length <= _WORD_BYTES
        """Whether batches are done in 64-bit words (else frame by frame, same results)."""
        # the root's signals (in every frame), fused per byte order where exact
        root = [self._batch[f[0]] for f in self._root.fields] if self.batch_native else []
        self._fused_decode = tuple(
            (big, _Fused(group))
            for big in (False, True)
            if (group := [s for s in root if s.big_endian == big and _fuses_decode(s)])
        )
        fused = {id(s) for _, f in self._fused_decode for s in f.specs}
        self._single_decode = tuple(s for s in root if id(s) not in fused)
        flat = [] if self.is_multiplexed else root
        self._fused_encode = tuple(
            (big, _Fused(group))
            for big in (False, True)
            if (group := [s for s in flat if s.big_endian == big and not s.float_bits])
            and all(s.length_bits <= 63 for s in group)
        )

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

    # ------------------------------------------------------------------ batches
    def _words(self, payloads: NDArray[np.uint8]) -> tuple[_U64, _U64]:
        """The payloads as 64-bit words: little- and big-endian (zero-padded to 8 bytes)."""
        n = payloads.shape[0]
        if payloads.shape[1] == _WORD_BYTES and payloads.flags.c_contiguous:
            buf = payloads
        else:
            buf = np.zeros((n, _WORD_BYTES), dtype=np.uint8)
            buf[:, : self.length] = payloads[:, : self.length]
        empty = np.zeros(0, dtype=np.uint64)  # a byte order no signal uses is not read
        little: _U64 = buf.view("<u8").reshape(n).astype(np.uint64) if self._little else empty
        big: _U64 = buf.view(">u8").reshape(n).astype(np.uint64) if self._big else empty
        return little, big

    def _payloads(self, payloads: ArrayLike) -> NDArray[np.uint8]:
        data = np.asarray(payloads)
        if data.dtype != np.uint8 or data.ndim != 2:
            raise ValueError(
                f"{self.name}: payloads must be a 2-D uint8 array, got {data.dtype} {data.shape}"
            )
        if data.shape[1] < self.length:
            raise DecodeError(f"Wrong data size: {data.shape[1]} instead of {self.length} bytes")
        return data

    def decode_batch(self, payloads: ArrayLike) -> BatchDecoded:
        """Decode ``n`` frames at once (numpy): row ``i`` is :meth:`decode` of frame ``i``.

        Args:
            payloads: ``(n, m)`` uint8, ``m >= length`` (longer rows are cut, as cantools
                does).

        Returns:
            Values (float64, ``float`` of cantools' values), presence per signal, and the
            frames the scalar decode refuses (see :class:`BatchDecoded`).

        Raises:
            ValueError: If ``payloads`` is not a 2-D uint8 array.
            cantools.database.DecodeError: If its rows are shorter than :attr:`length`.
        """
        data = self._payloads(payloads)
        n = data.shape[0]
        values = np.full((len(self.signal_names), n), np.nan)
        present = np.zeros((len(self.signal_names), n), dtype=bool)
        error = np.zeros(n, dtype=bool)
        if not self.batch_native:  # CAN FD: frame by frame, the same results
            for i in range(n):
                try:
                    decoded = self.decode(data[i].tobytes())
                except (DecodeError, ValueError, OverflowError):
                    error[i] = True
                    continue
                for name, value in decoded.items():
                    k = self._batch[name].index
                    values[k, i], present[k, i] = float(value), True
            return BatchDecoded(values, present, error)
        little, big = self._words(data)
        if not self.is_multiplexed:
            for is_big, group in self._fused_decode:
                values[group.index] = group.decode(big if is_big else little)
            for spec in self._single_decode:
                values[spec.index] = _decode_physical(spec, _bits(spec, little, big))
            present[:] = True
            return BatchDecoded(values, present, error)
        self._decode_node_batch(self._root, np.arange(n), little, big, values, present, error)
        if error.any():
            values[:, error], present[:, error] = np.nan, False
        return BatchDecoded(values, present, error)

    def _decode_node_batch(
        self,
        node: _Node,
        rows: IntArray,
        little: _U64,
        big: _U64,
        values: FloatArray,
        present: BoolArray,
        error: BoolArray,
    ) -> None:
        whole = len(rows) == values.shape[1]
        for field in node.fields:
            spec = self._batch[field[0]]
            decoded = _decode_physical(spec, _bits(spec, little, big))
            if whole:
                values[spec.index], present[spec.index] = decoded, True
            else:
                values[spec.index, rows], present[spec.index, rows] = decoded, True
        for mux_name, branches in node.muxes:
            spec = self._batch[mux_name]
            selector = _selector(spec, _bits(spec, little, big))
            matched = np.zeros(len(rows), dtype=bool)
            for key, branch in branches.items():
                hit = np.asarray(selector == key, dtype=bool)
                if hit.any():
                    matched |= hit
                    sub_little = little[hit] if little.size else little
                    sub_big = big[hit] if big.size else big
                    self._decode_node_batch(
                        branch, rows[hit], sub_little, sub_big, values, present, error
                    )
            error[rows[~matched]] = True

    def encode_batch(
        self, values: Mapping[str, ArrayLike], n: int | None = None
    ) -> NDArray[np.uint8]:
        """Encode ``n`` frames at once (numpy): row ``i`` is :meth:`encode` of row ``i``.

        Row ``i`` equals ``encode({name: float(values[name][i]) for name in values})``; a
        row the scalar encode refuses raises its error (the first such row's).

        Args:
            values: Signal name → ``(n,)`` values or a scalar (broadcast), physical.
            n: Number of frames; by default the length of the longest array given.

        Returns:
            ``(n, length)`` uint8 payloads.

        Raises:
            SignalMissingError: If a row's active branch lacks a signal.
            SignalRangeError: If a row's raw value does not fit its bits.
            LayoutEncodeError: If a row's selector value has no branch.
            ValueError: If a row's integer signal is NaN.
            OverflowError: If a row's integer signal is infinite.
        """
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
        if n is None:
            n = max((a.shape[0] for a in arrays.values() if a.ndim == 1), default=1)
        for name, a in arrays.items():
            if a.ndim > 1 or (a.ndim == 1 and a.shape[0] != n):
                raise ValueError(f"{self.name}.{name}: {a.shape} values for {n} frames")
        out: NDArray[np.uint8] = np.zeros((n, self.length), dtype=np.uint8)
        bad = np.zeros(n, dtype=bool)
        columns: Mapping[str, FloatArray] = arrays
        if self.batch_native:
            little = np.zeros(n, dtype=np.uint64)
            big = np.zeros(n, dtype=np.uint64)
            names = self.signal_names
            if self._fused_encode and all(
                names[s.index] in arrays for _, g in self._fused_encode for s in g.specs
            ):
                self._encode_flat(arrays, n, little, big, bad)
            else:
                columns = {k: np.broadcast_to(a, (n,)) for k, a in arrays.items()}
                self._encode_node_batch(self._root, np.arange(n), columns, little, big, bad)
            if self._big:
                words = big.astype(">u8").view(np.uint8).reshape(n, _WORD_BYTES)
                if self._little:
                    words |= little.astype("<u8").view(np.uint8).reshape(n, _WORD_BYTES)
            else:
                words = little.astype("<u8").view(np.uint8).reshape(n, _WORD_BYTES)
            out = words if self.length == _WORD_BYTES else words[:, : self.length].copy()
        else:
            bad[:] = True
        if bad.any():
            for i in np.flatnonzero(bad).tolist():  # the scalar encode: its bytes or its error
                row = {k: float(c if c.ndim == 0 else c[i]) for k, c in columns.items()}
                out[i] = np.frombuffer(self.encode(row), dtype=np.uint8)
        return out

    def _encode_flat(
        self, arrays: Mapping[str, FloatArray], n: int, little: _U64, big: _U64, bad: BoolArray
    ) -> None:
        """A message without multiplexing: constant signals once, the others fused."""
        names = self.signal_names
        for is_big, group in self._fused_encode:
            word = big if is_big else little
            columns = [arrays[names[s.index]] for s in group.specs]
            if all(c.ndim == 1 for c in columns):
                word |= group.encode(np.stack(columns), bad)
                continue
            stacked = np.stack([np.broadcast_to(c, (n,)) for c in columns])
            word |= group.encode(stacked, bad)
        fused = {id(s) for _, g in self._fused_encode for s in g.specs}
        for field in self._root.fields:
            spec = self._batch[field[0]]
            if id(spec) in fused:
                continue
            column = arrays.get(field[0])
            if column is None:
                bad[:] = True
                continue
            row_bad = np.zeros(column.shape, dtype=bool)
            bits = _encode_bits(spec, column, row_bad) << np.uint64(spec.shift)
            if spec.big_endian:
                big |= bits
            else:
                little |= bits
            bad |= row_bad

    def _encode_node_batch(
        self,
        node: _Node,
        rows: IntArray,
        columns: Mapping[str, FloatArray],
        little: _U64,
        big: _U64,
        bad: BoolArray,
    ) -> None:
        whole = len(rows) == len(bad)
        for field in node.fields:
            spec = self._batch[field[0]]
            column = columns.get(field[0])
            if column is None:  # the scalar encode says which signal is missing
                bad[rows] = True
                continue
            row_bad = np.zeros(len(rows), dtype=bool)
            bits = _encode_bits(spec, column if whole else column[rows], row_bad)
            shifted = bits << np.uint64(spec.shift)
            word = big if spec.big_endian else little
            if whole:
                word |= shifted
                bad |= row_bad
            else:
                word[rows] |= shifted
                bad[rows[row_bad]] = True
        for mux_name, branches in node.muxes:
            column = columns.get(mux_name)
            if column is None:
                bad[rows] = True
                continue
            with np.errstate(invalid="ignore"):
                selector = np.trunc(column[rows])  # int(value): NaN, ±inf match no branch
            matched = np.zeros(len(rows), dtype=bool)
            for key, branch in branches.items():
                hit = selector == key
                if hit.any():
                    matched |= hit
                    self._encode_node_batch(branch, rows[hit], columns, little, big, bad)
            bad[rows[~matched]] = True


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
