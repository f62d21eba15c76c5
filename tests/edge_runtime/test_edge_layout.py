"""Compiled message layouts against cantools, the reference they must equal bit for bit.

Property tests (unknown bug shapes): hypothesis builds random messages (Intel and
Motorola signals mixed, signed/unsigned, 1..64 bits, integer and float scaling, IEEE
floats, a multiplexer selector with overlapping branches and values without a branch) and
random payloads/values, and compares :class:`MessageLayout` with cantools' own decode and
encode: same keys in the same order, same value types, same bits, or the same kind of
error. Regression tests (known shapes): the project DBC, a Motorola multiplexed DBC
written as text, nested multiplexing, error types and messages, and the helpers.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cantools
import cantools.database
import numpy as np
import pytest
from cantools.database import DecodeError, EncodeError
from cantools.database.can import Message, Signal
from cantools.database.conversion import BaseConversion
from hypothesis import given, settings
from hypothesis import strategies as st

from pulsebms.edge_runtime.codec import default_dbc_path
from pulsebms.edge_runtime.layout import (
    LayoutEncodeError,
    MessageLayout,
    SignalMissingError,
    SignalRangeError,
    compile_message,
)

_SCALES = (1, 2, 3.0, -1, 0.1, 0.5, 0.25, 0.001, 1e-5, 1.5)
_OFFSETS = (0, 0.0, -40, 2.0, 0.5, 100, -1000.25)


# ---------------------------------------------------------------------------- strategies
def _bit_ids(big_endian: bool, position: int, length: int) -> set[int]:
    """Absolute bit ids (8 * byte + bit) of a signal at ``position`` in its numbering."""
    if not big_endian:
        return set(range(position, position + length))
    return {8 * (q // 8) + 7 - q % 8 for q in range(position, position + length)}


def _place(
    draw: st.DrawFn, used: set[int], length_bytes: int, big_endian: bool, length: int
) -> int | None:
    """A free start bit (DBC convention) for the signal, or None if none is free."""
    slots = 8 * length_bytes - length + 1
    if slots <= 0:
        return None
    first = draw(st.integers(0, slots - 1))
    for k in range(slots):
        position = (first + k) % slots
        bits = _bit_ids(big_endian, position, length)
        if not bits & used:
            used |= bits
            # Motorola: the start bit is the MSB's sawtooth id = the first network bit's id
            return min(bits) if not big_endian else 8 * (position // 8) + 7 - position % 8
    return None


def _draw_signal(
    draw: st.DrawFn, name: str, used: set[int], length_bytes: int, **mux: Any
) -> Signal | None:
    big_endian = draw(st.booleans())
    is_float = draw(st.integers(0, 5)) == 0
    length = draw(st.sampled_from((32, 64))) if is_float else draw(st.integers(1, 64))
    start = _place(draw, used, length_bytes, big_endian, length)
    if start is None:
        return None
    scale = draw(st.sampled_from(_SCALES))
    offset = draw(st.sampled_from(_OFFSETS))
    choices = {0: "zero", 1: "one"} if draw(st.integers(0, 7)) == 0 else None
    return Signal(
        name=name,
        start=start,
        length=length,
        byte_order="big_endian" if big_endian else "little_endian",
        is_signed=False if is_float else draw(st.booleans()),
        conversion=BaseConversion.factory(scale, offset, choices, is_float),
        minimum=None,
        maximum=None,
        **mux,
    )


@st.composite
def messages(draw: st.DrawFn) -> Message:
    """A random valid cantools message, multiplexed or not."""
    length_bytes = draw(st.sampled_from((1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 12, 16)))
    used: set[int] = set()
    signals: list[Signal] = []
    if draw(st.booleans()):  # a multiplexed message: the selector first
        sel_bits = draw(st.integers(1, min(4, 8 * length_bytes)))
        big_endian = draw(st.booleans())
        start = _place(draw, used, length_bytes, big_endian, sel_bits)
        if start is not None:
            choices = {(1 << sel_bits) - 1: "named"} if draw(st.booleans()) else None
            signals.append(
                Signal(
                    "Mux",
                    start,
                    sel_bits,
                    "big_endian" if big_endian else "little_endian",
                    conversion=BaseConversion.factory(1, 0, choices, False),
                    is_multiplexer=True,
                )
            )
    for i in range(draw(st.integers(0, 4))):
        signal = _draw_signal(draw, f"S{i}", used, length_bytes)
        if signal is not None:
            signals.append(signal)
    if signals and signals[0].is_multiplexer:
        n_ids = 1 << signals[0].length
        ids = draw(st.lists(st.integers(0, n_ids - 1), min_size=1, max_size=4, unique=True))
        # branches may overlap each other, never the root; a signal in two branches
        # must be free in both
        branch_used = {mux_id: set(used) for mux_id in ids}
        for mux_id in ids:
            for j in range(draw(st.integers(1, 3))):
                shared = {mux_id, draw(st.sampled_from(ids))}
                blocked = set().union(*(branch_used[k] for k in shared))
                signal = _draw_signal(
                    draw,
                    f"M{mux_id}_{j}",
                    blocked,
                    length_bytes,
                    multiplexer_ids=sorted(shared),
                    multiplexer_signal="Mux",
                )
                if signal is not None:
                    signals.append(signal)
                    for k in shared:
                        branch_used[k] |= blocked
    return Message(0x123, "Fuzz", length_bytes, signals, strict=True)


# ---------------------------------------------------------------------------- comparison
def _same_value(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack(">d", a) == struct.pack(">d", b)  # NaN payloads and -0.0 too
    return a == b


def assert_same_decoded(ours: Mapping[str, object], theirs: Mapping[str, object]) -> None:
    assert list(ours) == list(theirs)
    bad = {k: (ours[k], theirs[k]) for k in ours if not _same_value(ours[k], theirs[k])}
    assert not bad


def _outcome(fn: Callable[[], object]) -> tuple[str, object]:
    try:
        return "ok", fn()
    except Exception as exc:
        return "error", exc


def assert_same_outcome(ours: tuple[str, object], theirs: tuple[str, object]) -> None:
    """Equal results, or both failed with an error of cantools' kind (ours may subclass)."""
    if theirs[0] == "error":
        assert ours[0] == "error", f"cantools raised {theirs[1]!r}, we returned {ours[1]!r}"
        expected = type(theirs[1])
        if expected.__module__.startswith("bitstruct"):  # pure-Python bitstruct build
            expected = OverflowError
        assert isinstance(ours[1], expected), f"{ours[1]!r} is not a {expected.__name__}"
    else:
        assert ours[0] == "ok", f"cantools returned {theirs[1]!r}, we raised {ours[1]!r}"
        if isinstance(theirs[1], dict):
            assert isinstance(ours[1], dict)
            assert_same_decoded(ours[1], theirs[1])
        else:
            assert ours[1] == theirs[1]


def _cantools_decode(message: Message, data: bytes) -> dict[str, Any]:
    return dict(message.decode(data, decode_choices=False, scaling=True))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- properties
@settings(max_examples=300)
@given(message=messages(), data=st.data())
def test_decode_equals_cantools(message: Message, data: st.DataObject) -> None:
    layout = compile_message(message)
    payload = data.draw(st.binary(min_size=message.length, max_size=message.length + 2))
    assert_same_outcome(
        _outcome(lambda: layout.decode(payload)),
        _outcome(lambda: _cantools_decode(message, payload)),
    )


@settings(max_examples=300)
@given(message=messages(), data=st.data())
def test_encode_of_decoded_equals_cantools(message: Message, data: st.DataObject) -> None:
    """Decoded values (always representable) encode to cantools' bytes."""
    layout = compile_message(message)
    payload = data.draw(st.binary(min_size=message.length, max_size=message.length))
    try:
        values = _cantools_decode(message, payload)
    except DecodeError:  # selector value without a branch: nothing to encode
        return
    theirs = _outcome(lambda: message.encode(values, scaling=True, strict=False))
    assert_same_outcome(_outcome(lambda: layout.encode(values)), theirs)
    if theirs[0] == "ok":  # and the bytes decode back alike in both (not always to
        # ``values``: a raw value past 2**52 times a float scale may not round-trip)
        encoded = theirs[1]
        assert isinstance(encoded, bytes)
        assert_same_decoded(
            layout.decode(layout.encode(values)), _cantools_decode(message, encoded)
        )


_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e6, 1e6),
    st.integers(-(2**70), 2**70),
    st.integers(-300, 300),
)


@settings(max_examples=300)
@given(message=messages(), data=st.data())
def test_encode_of_any_values_equals_cantools(message: Message, data: st.DataObject) -> None:
    """Arbitrary values (out of range, NaN, missing signals): same bytes or same error kind."""
    layout = compile_message(message)
    names = [s.name for s in message.signals]
    present = data.draw(st.lists(st.sampled_from(names), unique=True) if names else st.just([]))
    values: dict[str, float] = {name: data.draw(_numbers) for name in present}
    if "Mux" in values and data.draw(st.booleans()):
        values["Mux"] = data.draw(st.integers(0, 15))  # usually a real branch
    assert_same_outcome(
        _outcome(lambda: layout.encode(values)),
        _outcome(lambda: message.encode(values, scaling=True, strict=False)),
    )


@settings(max_examples=100)
@given(message=messages(), data=st.data())
def test_short_payload_is_a_decode_error(message: Message, data: st.DataObject) -> None:
    layout = compile_message(message)
    payload = data.draw(st.binary(max_size=message.length - 1))
    with pytest.raises(DecodeError, match="Wrong data size"):
        layout.decode(payload)
    with pytest.raises(DecodeError):
        message.decode(payload)


# ---------------------------------------------------------------------------- regressions
_MOTOROLA_MUX_DBC = """VERSION ""

BU_: BMS EDGE

BO_ 2566914560 CellVoltages: 8 BMS
 SG_ Index M : 7|6@0+ (1,0) [0|63] "" EDGE
 SG_ Cell0 m0 : 15|13@0+ (0.001,0) [0|8.191] "V" EDGE
 SG_ Cell1 m0 : 18|13@0+ (0.001,0) [0|8.191] "V" EDGE
 SG_ Invalid0 m0 : 1|1@0+ (1,0) [0|1] "" EDGE
 SG_ Temp m1 : 15|16@0- (0.01,-10) [-300|300] "degC" EDGE
 SG_ Soc m1 : 31|10@0+ (0.1,0) [0|100] "%" EDGE
 SG_ Counter : 63|4@0+ (1,0) [0|15] "" EDGE

BO_ 1280 FloatFrame: 8 BMS
 SG_ VoltageF : 7|32@0- (1,0) [0|0] "V" EDGE
 SG_ CurrentF : 32|32@1- (0.5,1) [0|0] "A" EDGE

SIG_VALTYPE_ 1280 VoltageF : 1;
SIG_VALTYPE_ 1280 CurrentF : 1;
VAL_ 2566914560 Index 0 "cells" 1 "pack" ;
"""


@pytest.fixture(scope="module")
def foreign_db() -> cantools.database.Database:
    db = cantools.database.load_string(_MOTOROLA_MUX_DBC, database_format="dbc")
    assert isinstance(db, cantools.database.Database)
    return db


def test_project_dbc_messages_round_trip_like_cantools() -> None:
    db = cantools.database.load_file(str(default_dbc_path()))
    assert isinstance(db, cantools.database.Database)
    payload = bytes(range(0x11, 0x99, 0x11))
    for message in db.messages:
        layout = compile_message(message)
        values = _cantools_decode(message, payload)
        assert_same_decoded(layout.decode(payload), values)
        assert layout.encode(values) == message.encode(values, strict=False)
        assert (layout.frame_id, layout.length, layout.is_extended) == (
            message.frame_id,
            8,
            False,
        )


def test_motorola_multiplexed_frame_decodes_only_the_active_branch(
    foreign_db: cantools.database.Database,
) -> None:
    message = foreign_db.get_message_by_name("CellVoltages")
    layout = compile_message(message)
    assert layout.is_multiplexed
    assert layout.is_extended
    assert layout.frame_id == message.frame_id == 0x1900_0200
    cells = layout.encode({"Index": 0, "Cell0": 3.301, "Cell1": 4.2, "Invalid0": 1, "Counter": 7})
    assert cells == message.encode(
        {"Index": 0, "Cell0": 3.301, "Cell1": 4.2, "Invalid0": 1, "Counter": 7}, strict=False
    )
    decoded = layout.decode(cells)
    assert set(decoded) == {"Index", "Counter", "Invalid0", "Cell0", "Cell1"}
    assert_same_decoded(decoded, _cantools_decode(message, cells))
    assert decoded["Cell0"] == pytest.approx(3.301)
    assert decoded["Invalid0"] == 1
    pack = layout.encode({"Index": 1, "Temp": -12.5, "Soc": 87.5, "Counter": 3, "Cell0": 9.9})
    decoded = layout.decode(pack)
    assert set(decoded) == {"Index", "Temp", "Soc", "Counter"}  # Cell0 is another branch
    assert decoded["Temp"] == pytest.approx(-12.5)
    assert_same_decoded(decoded, _cantools_decode(message, pack))


def test_selector_value_without_branch_is_an_error_like_cantools(
    foreign_db: cantools.database.Database,
) -> None:
    message = foreign_db.get_message_by_name("CellVoltages")
    layout = compile_message(message)
    payload = bytes([5 << 2, 0, 0, 0, 0, 0, 0, 0])  # Index 5: no branch
    with pytest.raises(DecodeError, match="multiplexer id 0 or 1, but got 5"):
        layout.decode(payload)
    with pytest.raises(DecodeError):
        message.decode(payload)
    with pytest.raises(LayoutEncodeError, match="but got 5"):
        layout.encode({"Index": 5, "Counter": 0})
    with pytest.raises(EncodeError):
        message.encode({"Index": 5, "Counter": 0}, strict=False)


def test_ieee_float_signals_match_cantools(foreign_db: cantools.database.Database) -> None:
    message = foreign_db.get_message_by_name("FloatFrame")
    layout = compile_message(message)
    assert layout.signal("VoltageF").is_float
    for values in (
        {"VoltageF": 3.25, "CurrentF": -7.5},
        {"VoltageF": 1e40, "CurrentF": -1e40},  # saturates to ±inf like bitstruct's C cast
        {"VoltageF": math.nan, "CurrentF": 0.1},
    ):
        data = layout.encode(values)
        assert data == message.encode(values, strict=False)
        assert_same_decoded(layout.decode(data), _cantools_decode(message, data))
    assert layout.decode(layout.encode({"VoltageF": 1e40, "CurrentF": 0}))["VoltageF"] == math.inf


def test_nested_multiplexing_matches_cantools() -> None:
    def sig(name: str, start: int, length: int, **kw: Any) -> Signal:
        return Signal(name, start, length, conversion=BaseConversion.factory(1, 0), **kw)

    message = Message(
        0x42,
        "Nested",
        4,
        [
            sig("A", 0, 2, is_multiplexer=True),
            sig("B", 2, 2, is_multiplexer=True, multiplexer_signal="A", multiplexer_ids=[1]),
            sig("X", 8, 8, multiplexer_signal="A", multiplexer_ids=[0]),
            sig("Y", 8, 8, multiplexer_signal="B", multiplexer_ids=[0]),
            sig("Z", 16, 8, multiplexer_signal="B", multiplexer_ids=[2]),
        ],
    )
    layout = compile_message(message)
    for payload in (b"\x00\x05\x06\x07", b"\x01\x05\x06\x07", b"\x09\x05\x06\x07"):
        assert_same_decoded(layout.decode(payload), _cantools_decode(message, payload))
    assert layout.decode(b"\x09\x05\x06\x07") == {"A": 1, "B": 2, "Z": 6}
    for values in ({"A": 1, "B": 0, "Y": 3}, {"A": 0, "X": 200}, {"A": 1, "B": 2, "Z": 9}):
        assert layout.encode(values) == message.encode(values, strict=False)
    with pytest.raises(DecodeError):
        layout.decode(b"\x05\x00\x00\x00")  # A=1, B=1: no branch


def test_encode_errors_are_cantools_kinds_with_clear_messages() -> None:
    db = cantools.database.load_file(str(default_dbc_path()))
    assert isinstance(db, cantools.database.Database)
    message = db.get_message_by_name("PackSetpoint")
    layout = compile_message(message)
    good = {"PowerSetpoint": 1000.0, "Mode": 1, "Enable": 1, "Reason": 0, "Counter": 3}
    missing = {k: v for k, v in good.items() if k != "Reason"}
    with pytest.raises(SignalMissingError, match="no value for signal 'Reason'") as info:
        layout.encode(missing)
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, EncodeError)
    with pytest.raises(KeyError):
        message.encode(missing, strict=False)
    too_big = {**good, "Counter": 16}
    with pytest.raises(SignalRangeError, match=r"'Counter' raw value 16 outside 0\.\.15") as err:
        layout.encode(too_big)
    assert isinstance(err.value, OverflowError)
    with pytest.raises(OverflowError):
        message.encode(too_big, strict=False)
    with pytest.raises(ValueError, match="NaN"):
        layout.encode({**good, "PowerSetpoint": math.nan})
    # extra and unknown names are ignored, as cantools does without strict
    assert layout.encode({**good, "Nope": 1.0}) == message.encode(good)


def test_helpers_and_signal_names() -> None:
    db = cantools.database.load_file(str(default_dbc_path()))
    assert isinstance(db, cantools.database.Database)
    message = db.get_message_by_name("PackTelemetry")
    layout = compile_message(message)
    assert layout.signal_names == tuple(s.name for s in message.signals)
    assert (layout.minimum("SoC"), layout.maximum("SoC")) == (0.0, 100.0)
    assert (layout.scale("Temperature"), layout.offset("Temperature")) == (0.5, -40)
    assert layout.length_bits("Current") == 15
    assert layout.signal("Current").is_signed
    assert not layout.is_multiplexed
    assert "PackTelemetry" in repr(layout)
    with pytest.raises(KeyError, match="no signal 'Nope'"):
        layout.minimum("Nope")


def test_container_message_is_refused() -> None:
    inner = Message(0x11, "Inner", 2, [], header_id=5)
    container = Message(0x10, "C", 64, [], contained_messages=[inner])
    assert container.is_container
    with pytest.raises(ValueError, match="container"):
        MessageLayout(container)


def test_no_cantools_call_per_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """After compiling, decode and encode never go back to cantools (nor bitstruct)."""
    db = cantools.database.load_file(str(default_dbc_path()))
    assert isinstance(db, cantools.database.Database)
    message = db.get_message_by_name("PackTelemetry")
    payload = bytes(range(8))
    expected = _cantools_decode(message, payload)
    layout = compile_message(message)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("cantools called per frame")

    monkeypatch.setattr(message, "decode", boom)
    monkeypatch.setattr(message, "encode", boom)
    monkeypatch.setattr(cantools.database.utils, "decode_data", boom)
    monkeypatch.setattr(cantools.database.utils, "encode_data", boom)
    assert_same_decoded(layout.decode(payload), expected)
    assert layout.decode(layout.encode(expected)) == layout.decode(payload)


def test_signal_names_are_data_not_code() -> None:
    """Names reach the generated functions as values: odd ones cannot break or inject."""
    odd = "x'] ; __import__('os').system('false') ; ['\n\"{}"
    message = Message(
        0x7,
        "Odd'\nName",
        2,
        [
            Signal(odd, 0, 8, conversion=BaseConversion.factory(0.5, -1)),
            Signal("plain", 15, 8, "big_endian", is_signed=True),
        ],
    )
    layout = compile_message(message)
    values = {odd: 20.5, "plain": -3}
    data = layout.encode(values)
    assert data == message.encode(values, strict=False)
    assert_same_decoded(layout.decode(data), _cantools_decode(message, data))


def _shipped_dbcs() -> list[Path]:
    return sorted(default_dbc_path().parent.glob("*.dbc"))


@pytest.mark.parametrize("dbc", _shipped_dbcs(), ids=lambda p: p.name)
def test_every_shipped_dbc_matches_cantools(dbc: Path) -> None:
    """Every message of every DBC in the package, on seeded random payloads."""
    db = cantools.database.load_file(str(dbc))
    assert isinstance(db, cantools.database.Database)
    rng = random.Random(0)
    for message in db.messages:
        layout = compile_message(message)
        decoded = 0
        for _ in range(200):
            payload = rng.randbytes(message.length)
            theirs = _outcome(lambda: _cantools_decode(message, payload))  # noqa: B023
            assert_same_outcome(_outcome(lambda: layout.decode(payload)), theirs)  # noqa: B023
            if theirs[0] == "ok":
                values = theirs[1]
                assert isinstance(values, dict)
                assert layout.encode(values) == message.encode(values, strict=False)
                decoded += 1
        assert decoded > 0, f"{message.name}: no payload decoded (selector never valid)"


# ---------------------------------------------------------------------------- batches
# Property tests of the numpy batch path: every row of a batch equals cantools on that
# frame alone (values as float, presence per multiplexed branch, refused frames), and
# every encoded row equals cantools' bytes or the batch raises the first failing row's
# kind of error. Multiplexing (nested too), Motorola, IEEE floats, 64-bit signals and CAN
# FD lengths (frame by frame) come from the same strategies as the scalar tests.
def _same_float(a: float, b: float) -> bool:
    return struct.pack(">d", a) == struct.pack(">d", b)


def assert_batch_row_equals(layout: MessageLayout, batch: Any, i: int, theirs: object) -> None:
    names = layout.signal_names
    if not isinstance(theirs, dict):  # cantools refused this frame
        assert batch.error[i], f"row {i}: cantools raised {theirs!r}, the batch decoded it"
        assert not batch.present[:, i].any()
        return
    assert not batch.error[i]
    got = {names[k] for k in np.flatnonzero(batch.present[:, i])}
    assert got == set(theirs), f"row {i}: signals {sorted(got)} vs cantools {sorted(theirs)}"
    for name, value in theirs.items():
        ours = float(batch.values[names.index(name), i])
        assert _same_float(ours, float(value)), f"row {i} {name}: {ours!r} vs {value!r}"


@settings(max_examples=200)
@given(message=messages(), data=st.data())
def test_decode_batch_equals_cantools_row_by_row(message: Message, data: st.DataObject) -> None:
    layout = compile_message(message)
    n = data.draw(st.integers(1, 6))
    size = message.length
    rows = [data.draw(st.binary(min_size=size, max_size=size)) for _ in range(n)]
    batch = layout.decode_batch(np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(n, -1))
    assert batch.values.shape == batch.present.shape == (len(message.signals), n)
    for i, payload in enumerate(rows):
        theirs = _outcome(lambda: _cantools_decode(message, payload))  # noqa: B023
        assert_batch_row_equals(layout, batch, i, theirs[1])


def _row_outcomes(message: Message, columns: dict[str, list[float]], n: int) -> list[object]:
    out = []
    for i in range(n):
        row = {k: v[i] for k, v in columns.items()}
        out.append(_outcome(lambda: message.encode(row, scaling=True, strict=False)))  # noqa: B023
    return out


@settings(max_examples=200)
@given(message=messages(), data=st.data())
def test_encode_batch_equals_cantools_row_by_row(message: Message, data: st.DataObject) -> None:
    """Rows of decoded values (valid) and of any numbers: same bytes or same error kind."""
    layout = compile_message(message)
    names = [s.name for s in message.signals]
    n = data.draw(st.integers(1, 5))
    columns: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(n):
        payload = data.draw(st.binary(min_size=message.length, max_size=message.length))
        try:
            row = {k: float(v) for k, v in _cantools_decode(message, payload).items()}
        except DecodeError:
            row = {}
        if data.draw(st.integers(0, 2)) == 0:  # now and then any number, or a missing signal
            name = data.draw(st.sampled_from(names)) if names else None
            if name is not None:
                row[name] = float(data.draw(_numbers))
        for name in names:
            columns[name].append(row.get(name, math.nan if data.draw(st.booleans()) else 0.0))
    if names and data.draw(st.integers(0, 5)) == 0:  # a signal absent from the whole batch
        del columns[data.draw(st.sampled_from(names))]
    outcomes = _row_outcomes(message, columns, n)
    ours = _outcome(lambda: layout.encode_batch({k: np.array(v) for k, v in columns.items()}, n))
    first_error = next((o for o in outcomes if o[0] == "error"), None)  # type: ignore[index]
    if first_error is not None:
        assert_same_outcome(ours, first_error)  # type: ignore[arg-type]
        return
    assert ours[0] == "ok", f"cantools encoded every row, the batch raised {ours[1]!r}"
    payloads = ours[1]
    assert isinstance(payloads, np.ndarray)
    assert payloads.shape == (n, message.length)
    for i, outcome in enumerate(outcomes):
        assert payloads[i].tobytes() == outcome[1], f"row {i}"  # type: ignore[index]


@pytest.mark.parametrize("dbc", _shipped_dbcs(), ids=lambda p: p.name)
def test_every_shipped_dbc_batches_like_cantools(dbc: Path) -> None:
    """Every message of every shipped DBC (the foreign one's multiplexed cell blocks too)."""
    db = cantools.database.load_file(str(dbc))
    assert isinstance(db, cantools.database.Database)
    rng = np.random.default_rng(0)
    for message in db.messages:
        layout = compile_message(message)
        payloads = rng.integers(0, 256, (64, message.length), dtype=np.uint8)
        if layout.is_multiplexed:  # most random selectors have no branch: make half valid
            valid = layout.encode(_cantools_decode_any(message, rng))
            payloads[::2] = np.frombuffer(valid, dtype=np.uint8)
            payloads[::4, 1:] = rng.integers(0, 256, (16, message.length - 1), dtype=np.uint8)
        batch = layout.decode_batch(payloads)
        decoded = []
        for i, row in enumerate(payloads):
            theirs = _outcome(lambda: _cantools_decode(message, row.tobytes()))  # noqa: B023
            assert_batch_row_equals(layout, batch, i, theirs[1])
            if theirs[0] == "ok":
                decoded.append(theirs[1])
        assert decoded, f"{message.name}: no payload decoded"
        for chunk in (decoded[:1], decoded):  # one frame and many
            columns = {
                name: np.array([float(d.get(name, 0.0)) for d in chunk])
                for name in layout.signal_names
            }
            expected = [message.encode(d, strict=False) for d in chunk]
            got = layout.encode_batch(columns)
            assert [r.tobytes() for r in got] == expected


def _cantools_decode_any(message: Message, rng: np.random.Generator) -> dict[str, Any]:
    """Decoded values of some payload cantools accepts (random tries)."""
    for _ in range(10_000):
        payload = rng.integers(0, 256, message.length, dtype=np.uint8).tobytes()
        try:
            return _cantools_decode(message, payload)
        except DecodeError:
            continue
    raise AssertionError(f"{message.name}: no random payload decodes")


def test_batch_input_errors_and_broadcast() -> None:
    db = cantools.database.load_file(str(default_dbc_path()))
    assert isinstance(db, cantools.database.Database)
    layout = compile_message(db.get_message_by_name("PackSetpoint"))
    with pytest.raises(ValueError, match="2-D uint8"):
        layout.decode_batch(np.zeros(8, dtype=np.uint8))
    with pytest.raises(ValueError, match="2-D uint8"):
        layout.decode_batch(np.zeros((2, 8), dtype=np.int64))
    with pytest.raises(DecodeError, match="Wrong data size"):
        layout.decode_batch(np.zeros((2, 7), dtype=np.uint8))
    good = {"PowerSetpoint": [100.0, -5.0], "Mode": 1, "Enable": 1, "Reason": 0, "Counter": 3}
    payloads = layout.encode_batch(good)  # scalars broadcast to the rows
    assert payloads.shape == (2, 8)
    for i, power in enumerate((100.0, -5.0)):
        row = {**good, "PowerSetpoint": power}
        assert payloads[i].tobytes() == layout.encode(row)
    with pytest.raises(SignalRangeError, match="Counter"):
        layout.encode_batch({**good, "Counter": [3, 16]})
    with pytest.raises(SignalMissingError, match="Reason"):
        layout.encode_batch({k: v for k, v in good.items() if k != "Reason"})
    empty = layout.encode_batch(dict.fromkeys(good, 0.0), n=0)
    assert empty.shape == (0, 8)
    assert layout.decode_batch(empty).values.shape == (5, 0)


@pytest.mark.parametrize(
    ("bits", "signed", "scale", "offset"),
    [
        (64, False, 1, 0),  # unsigned 64-bit raw as is (beyond int64)
        (64, True, 1, 0),
        (64, False, 3, 0),  # integer products beyond int64: Python integers
        (64, True, 3, -7),
        (60, False, 3, -7),  # ... within int64: exact int64 products
        (64, False, 3, 0.5),  # an integer product, then a float offset
        (60, False, 3, 0.5),
        (60, True, 5, -0.25),
        (64, True, 1, 0.25),
        (64, False, 1e-3, 0),  # float scale: float(raw) * scale, as Python does
        (64, True, 0.5, 100),
    ],
)
def test_wide_signals_batch_exactly(bits: int, signed: bool, scale: float, offset: float) -> None:
    """Known shapes the fuzzing rarely draws: raw values past 2**53 and 2**63."""
    message = Message(
        0x10,
        "Wide",
        8,
        [
            Signal(
                "W",
                0,
                bits,
                is_signed=signed,
                conversion=BaseConversion.factory(scale, offset, None, False),
            )
        ],
        strict=True,
    )
    layout = compile_message(message)
    rng = np.random.default_rng(1)
    edges = [0, 1, 2**53 + 1, 2**59 - 1, 2**59, 2**60 - 1, 2**63 - 1, 2**63, 2**64 - 1]
    words = [*edges, *rng.integers(0, 2**64, 56, dtype=np.uint64).tolist()]
    payloads = np.array([list(w.to_bytes(8, "little")) for w in words], dtype=np.uint8)
    batch = layout.decode_batch(payloads)
    decoded = []
    for i, row in enumerate(payloads):
        theirs = _cantools_decode(message, row.tobytes())
        assert_batch_row_equals(layout, batch, i, theirs)
        decoded.append(theirs)
    columns = {"W": np.array([float(d["W"]) for d in decoded])}
    rows = _row_outcomes(message, {"W": columns["W"].tolist()}, len(decoded))
    if all(o[0] == "ok" for o in rows):  # type: ignore[index]
        assert [r.tobytes() for r in layout.encode_batch(columns)] == [o[1] for o in rows]  # type: ignore[index]
    else:  # float(value) of a 64-bit value may round past the signal's range
        first = next(o for o in rows if o[0] == "error")  # type: ignore[index]
        assert_same_outcome(_outcome(lambda: layout.encode_batch(columns)), first)  # type: ignore[arg-type]


def test_encode_batch_rounds_half_to_even_like_cantools() -> None:
    """Python's round() (ties to even) on every conversion kind, ties and near-ties."""
    conversions = [(1, 0), (3, 0), (2, 1), (0.5, 0), (0.1, -40), (1, 0.5)]
    message = Message(
        0x11,
        "Ties",
        8,
        [
            Signal(f"S{k}", 10 * k, 10, is_signed=True, conversion=BaseConversion.factory(s, o))
            for k, (s, o) in enumerate(conversions)
        ],
        strict=True,
    )
    layout = compile_message(message)
    ties = [k + 0.5 for k in range(-6, 6)] + [1.5 + 1e-12, 2.5 - 1e-12, 7.0, 4.5, -0.0]
    values = {f"S{k}": np.array(ties) * s + o for k, (s, o) in enumerate(conversions)}
    payloads = layout.encode_batch(values)
    for i in range(len(ties)):
        row = {name: float(column[i]) for name, column in values.items()}
        assert payloads[i].tobytes() == message.encode(row, strict=False), row
