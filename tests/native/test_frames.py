"""Frames (protocol.md, section 3): round trips, exact error codes, both backends agree."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from dtp.native import core as _core
from dtp.native.reference._limits import (
    MAX_ACK_RANGES,
    MAX_CLOSE_REASON,
    MAX_FRAME_DATA,
    MAX_RECEIPT,
    VARINT_MAX,
)
from dtp.native.types import (
    FRAME_ACK,
    FRAME_CLOSE,
    FRAME_CONTROL,
    FRAME_DATAGRAM,
    FRAME_MAX_DATA,
    FRAME_MAX_STREAM_DATA,
    FRAME_MAX_STREAMS,
    FRAME_PADDING,
    FRAME_PING,
    FRAME_RECEIPT,
    FRAME_RESET_STREAM,
    FRAME_STOP_SENDING,
    FRAME_STREAM,
    FRAME_STREAM_FIN,
    FULL,
    NEED_MORE,
    OK,
    RawFrame,
)
from tests.support.backends import NATIVE, REFERENCE, require_native
from tests.support.vectors import load_vectors

F = RawFrame
EDGES = (0, 63, 64, 16383, 16384, 2**30 - 1, 2**30, VARINT_MAX)
DATA_CAP = {
    FRAME_STREAM: MAX_FRAME_DATA,
    FRAME_STREAM_FIN: MAX_FRAME_DATA,
    FRAME_CLOSE: MAX_CLOSE_REASON,
    FRAME_RECEIPT: MAX_RECEIPT,
    FRAME_CONTROL: MAX_FRAME_DATA,
    FRAME_DATAGRAM: MAX_FRAME_DATA,
}
# varint fields per type, in wire order (the rest must be 0)
FIELDS = {
    FRAME_PING: 0,
    FRAME_MAX_DATA: 1,
    FRAME_MAX_STREAM_DATA: 2,
    FRAME_RESET_STREAM: 3,
    FRAME_STOP_SENDING: 2,
    FRAME_MAX_STREAMS: 1,
    FRAME_STREAM: 2,
    FRAME_STREAM_FIN: 2,
    FRAME_CLOSE: 1,
    FRAME_RECEIPT: 0,
    FRAME_CONTROL: 1,
    FRAME_DATAGRAM: 0,
}

Outcome = tuple[Any, ...]


def decode_outcome(
    decode: Callable[..., Any],
    buf: bytes,
    complete: bool = True,
    max_frames: int = 4096,
    max_ranges: int = 4096,
) -> Outcome:
    """Everything observable about one decode call, comparable across backends."""
    try:
        batch = decode(buf, complete, max_frames, max_ranges)
    except (LocalProtocolError, RemoteProtocolError) as exc:
        return (type(exc).__name__, exc.code)
    return ("ok", list(batch), batch.status, batch.consumed)


def encode_outcome(encode: Callable[..., bytes], frames: Sequence[RawFrame]) -> Outcome:
    try:
        return ("ok", encode(frames))
    except (LocalProtocolError, RemoteProtocolError) as exc:
        return (type(exc).__name__, exc.code)


def merge_padding(frames: Sequence[RawFrame]) -> list[RawFrame]:
    """What decoding an encoding gives back: adjacent PADDING frames are one run."""
    out: list[RawFrame] = []
    for fr in frames:
        if fr.type == FRAME_PADDING and out and out[-1].type == FRAME_PADDING:
            out[-1] = F(FRAME_PADDING, out[-1].a + fr.a)
        else:
            out.append(fr)
    return out


# --------------------------------------------------------------------------------------
# strategies

varints = st.one_of(st.sampled_from(EDGES), st.integers(0, VARINT_MAX))


def payloads(cap: int) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=48), st.sampled_from([b"", bytes(cap), b"\xa5" * cap, b"\x00"])
    )


@st.composite
def ack_frames(draw: st.DrawFn, max_count: int = 12) -> RawFrame:
    count = draw(st.integers(1, max_count))
    hi = draw(varints)
    ranges: list[tuple[int, int]] = []
    while len(ranges) < count:
        lo = hi - draw(st.one_of(st.integers(0, min(hi, 3)), st.integers(0, hi)))
        ranges.append((lo, hi))
        if lo < 2:
            break
        hi = lo - 2 - draw(st.one_of(st.integers(0, min(lo - 2, 5)), st.integers(0, lo - 2)))
    return F(FRAME_ACK, c=draw(varints), ranges=tuple(ranges))


@st.composite
def field_frames(draw: st.DrawFn) -> RawFrame:
    ftype = draw(st.sampled_from(sorted(FIELDS)))
    values = [draw(varints) for _ in range(FIELDS[ftype])] + [0] * (3 - FIELDS[ftype])
    data = draw(payloads(DATA_CAP[ftype])) if ftype in DATA_CAP else b""
    if ftype in (FRAME_STREAM, FRAME_STREAM_FIN):
        values[1] = min(values[1], VARINT_MAX - len(data))
    return F(ftype, *values, data=data)


valid_frames = st.one_of(
    st.sampled_from([1, 2, 7, MAX_FRAME_DATA]).map(lambda n: F(FRAME_PADDING, n)),
    ack_frames(),
    field_frames(),
)
frame_lists = st.lists(valid_frames, max_size=12)


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    """A valid encoding, then truncated, with bytes flipped, inserted or deleted."""
    buf = bytearray(REFERENCE.encode_frames(draw(frame_lists)))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, len(buf)))
        if op == "flip" and pos < len(buf):
            buf[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            buf.insert(pos, draw(st.integers(0, 255)))
        elif op == "delete" and pos < len(buf):
            del buf[pos]
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf)


# --------------------------------------------------------------------------------------
# round trips


def roundtrip_cases() -> list[RawFrame]:
    cases = [F(FRAME_PADDING, 1), F(FRAME_PADDING, MAX_FRAME_DATA)]
    for ftype, nfields in FIELDS.items():
        for edge in EDGES:
            values = [edge] * nfields + [0] * (3 - nfields)
            if ftype in DATA_CAP:
                cap = DATA_CAP[ftype]
                for data in (b"", b"x", bytes(range(256)) * (cap // 256)):
                    fixed = list(values)
                    if ftype in (FRAME_STREAM, FRAME_STREAM_FIN):
                        fixed[1] = min(fixed[1], VARINT_MAX - len(data))
                    cases.append(F(ftype, *fixed, data=data))
            else:
                cases.append(F(ftype, *values))
    for edge in EDGES:
        cases.append(F(FRAME_ACK, c=edge, ranges=((edge, edge),)))
        cases.append(F(FRAME_ACK, c=0, ranges=((0, edge),)))
    many = tuple((VARINT_MAX - 3 * i, VARINT_MAX - 3 * i) for i in range(MAX_ACK_RANGES))
    cases.append(F(FRAME_ACK, c=1, ranges=many))
    cases.append(F(FRAME_ACK, c=1, ranges=((100, 200), (60, 98), (0, 0))))
    return cases


@pytest.mark.parametrize("frame", roundtrip_cases(), ids=lambda f: f"type{f.type}")
def test_roundtrip_each_type(backend: SimpleNamespace, frame: RawFrame) -> None:
    encoded = backend.encode_frames([frame])
    batch = backend.decode_frames(encoded)
    assert list(batch) == [frame]
    assert (batch.status, batch.consumed) == (OK, len(encoded))
    # and the other backend reads it the same way
    assert list(REFERENCE.decode_frames(encoded)) == [frame]


def test_minimal_varints_and_layout(backend: SimpleNamespace) -> None:
    enc = backend.encode_frames
    assert enc([F(FRAME_MAX_DATA, 63)]) == bytes.fromhex("033f")
    assert enc([F(FRAME_MAX_DATA, 64)]) == bytes.fromhex("034040")
    assert enc([F(FRAME_MAX_DATA, 2**30)]) == bytes.fromhex("03c000000040000000")
    assert enc([F(FRAME_MAX_DATA, VARINT_MAX)]) == bytes.fromhex("03ffffffffffffffff")
    assert enc([F(FRAME_STREAM_FIN, 4, 1000, data=b"hi")]) == bytes.fromhex("090443e8026869")
    # ACK: largest 100, delay 7, 3 ranges: [90,100], gap 1 -> [80,87], gap 0 -> [78,78]
    ack = F(FRAME_ACK, c=7, ranges=((90, 100), (80, 87), (78, 78)))
    assert enc([ack]) == bytes.fromhex("02406407030a010700 00".replace(" ", ""))
    assert enc([]) == b""


def test_decoder_accepts_non_minimal_varints(backend: SimpleNamespace) -> None:
    batch = backend.decode_frames(bytes.fromhex("03c0000000000000050d400141"))
    assert list(batch) == [F(FRAME_MAX_DATA, 5), F(FRAME_DATAGRAM, data=b"A")]


def test_padding_runs_collapse(backend: SimpleNamespace) -> None:
    encoded = backend.encode_frames([F(FRAME_PADDING, 3), F(FRAME_PADDING, 2), F(FRAME_PING)])
    assert encoded == bytes(5) + b"\x01"
    assert list(backend.decode_frames(encoded)) == [F(FRAME_PADDING, 5), F(FRAME_PING)]
    tail = backend.decode_frames(b"\x01\x00\x00\x00")
    assert list(tail) == [F(FRAME_PING), F(FRAME_PADDING, 3)]
    # an incomplete input may go on with more zeros: the run is not reported yet
    partial = backend.decode_frames(b"\x01\x00\x00\x00", complete=False)
    assert (list(partial), partial.status, partial.consumed) == ([F(FRAME_PING)], NEED_MORE, 1)
    closed = backend.decode_frames(b"\x00\x00\x01", complete=False)
    assert list(closed) == [F(FRAME_PADDING, 2), F(FRAME_PING)] and closed.status == OK


def test_multiple_frames(backend: SimpleNamespace) -> None:
    frames = [
        F(FRAME_STREAM, 1, 0, data=b"hello"),
        F(FRAME_ACK, c=25, ranges=((10, 12), (0, 3))),
        F(FRAME_PADDING, 4),
        F(FRAME_MAX_STREAM_DATA, 1, 65536),
        F(FRAME_RESET_STREAM, 3, 9, 1234),
        F(FRAME_ACK, c=0, ranges=((7, 7),)),
        F(FRAME_CLOSE, 0x10, data=b"bye"),
        F(FRAME_STREAM_FIN, 1, 5, data=b""),
    ]
    encoded = backend.encode_frames(frames)
    batch = backend.decode_frames(encoded)
    assert list(batch) == frames
    assert (batch.status, batch.consumed, len(batch)) == (OK, len(encoded), len(frames))
    assert batch[-1] == frames[-1] and list(batch[1:3]) == frames[1:3]
    with pytest.raises(IndexError):
        batch[len(frames)]


def test_buffer_types(backend: SimpleNamespace) -> None:
    encoded = backend.encode_frames([F(FRAME_DATAGRAM, data=b"abc"), F(FRAME_PING)])
    for buf in (bytearray(encoded), memoryview(encoded)):
        assert list(backend.decode_frames(buf)) == list(backend.decode_frames(encoded))
    assert backend.encode_frames([F(FRAME_DATAGRAM, data=memoryview(b"abc"))]) == encoded[:5]


def test_encode_worst_case_sizes(backend: SimpleNamespace) -> None:
    """The largest encoding of each type (8-byte varints everywhere, data at its cap):
    the C wrapper's output budget must hold it, so BUFFER never reaches the caller."""
    big = 2**30  # the smallest value that needs an 8-byte varint
    ranges = tuple((VARINT_MAX - i * 3 * big - big, VARINT_MAX - i * 3 * big) for i in range(256))
    frames = [F(FRAME_ACK, c=VARINT_MAX, ranges=ranges), F(FRAME_PADDING, MAX_FRAME_DATA)]
    for ftype, nfields in FIELDS.items():
        values = [VARINT_MAX - DATA_CAP.get(ftype, 0)] * nfields + [0] * (3 - nfields)
        frames.append(F(ftype, *values, data=bytes(DATA_CAP.get(ftype, 0))))
    encoded = backend.encode_frames(frames)
    assert list(backend.decode_frames(encoded)) == frames
    assert len(backend.encode_frames(frames[:1])) == 1 + 8 + 8 + 2 + 8 + 255 * 16


def test_non_contiguous_input(backend: SimpleNamespace) -> None:
    encoded = backend.encode_frames([F(FRAME_MAX_DATA, 5), F(FRAME_PING)])
    spread = bytes(b for byte in encoded for b in (byte, 0xEE))
    assert list(backend.decode_frames(memoryview(spread)[::2])) == [
        F(FRAME_MAX_DATA, 5),
        F(FRAME_PING),
    ]


# --------------------------------------------------------------------------------------
# exact decode statuses and error codes


def test_full_statuses(backend: SimpleNamespace) -> None:
    dec = backend.decode_frames
    two_pings = dec(b"\x01\x01", True, 1)
    assert (list(two_pings), two_pings.status, two_pings.consumed) == ([F(FRAME_PING)], FULL, 1)
    # a full frame array with nothing left is not FULL
    assert dec(b"\x01", True, 1).status == OK
    assert dec(b"", True, 0).status == OK
    assert dec(b"\x01", True, 0).status == FULL
    # FULL wins over whatever follows (even garbage)
    assert dec(b"\x01\xff", True, 1).status == FULL
    ack2 = backend.encode_frames([F(FRAME_ACK, ranges=((10, 12), (0, 3)))])
    stopped = dec(b"\x01" + ack2, True, 10, 1)
    assert (list(stopped), stopped.status, stopped.consumed) == ([F(FRAME_PING)], FULL, 1)
    assert dec(ack2 + ack2, True, 10, 3).consumed == len(ack2)
    assert dec(ack2 + ack2, True, 10, 4).status == OK
    assert dec(ack2, True, 10, 0).status == FULL
    # an ACK that does not fit is still checked to its end before FULL
    bad = bytes.fromhex("020a000200 0009".replace(" ", ""))
    with pytest.raises(RemoteProtocolError) as info:
        dec(bad, True, 10, 1)
    assert info.value.code == ErrorCode.FRAME_VALUE


DECODE_ERRORS = [
    # (hex, expected code when complete, expected when not complete)
    ("0e", ErrorCode.FRAME_TYPE, ErrorCode.FRAME_TYPE),
    ("ff0000", ErrorCode.FRAME_TYPE, ErrorCode.FRAME_TYPE),
    ("01400e", ErrorCode.FRAME_TYPE, ErrorCode.FRAME_TYPE),
    ("03", ErrorCode.FRAME_TRUNCATED, NEED_MORE),
    ("0340", ErrorCode.FRAME_TRUNCATED, NEED_MORE),
    ("050102c0", ErrorCode.FRAME_TRUNCATED, NEED_MORE),
    ("0801024568", ErrorCode.FRAME_TRUNCATED, NEED_MORE),
    ("0a0004616263", ErrorCode.FRAME_TRUNCATED, NEED_MORE),
    ("0205000300", ErrorCode.FRAME_TRUNCATED, NEED_MORE),
    # oversize lengths are FRAME_SIZE as soon as read, though the data is missing
    ("08000080004001", ErrorCode.FRAME_SIZE, ErrorCode.FRAME_SIZE),
    ("09000080004001", ErrorCode.FRAME_SIZE, ErrorCode.FRAME_SIZE),
    ("0a004401", ErrorCode.FRAME_SIZE, ErrorCode.FRAME_SIZE),
    ("0b4401", ErrorCode.FRAME_SIZE, ErrorCode.FRAME_SIZE),
    ("0c0080004001", ErrorCode.FRAME_SIZE, ErrorCode.FRAME_SIZE),
    ("0d80004001", ErrorCode.FRAME_SIZE, ErrorCode.FRAME_SIZE),
    ("0d c000000000004001".replace(" ", ""), ErrorCode.FRAME_SIZE, ErrorCode.FRAME_SIZE),
    # STREAM offset + length beyond 2^62 - 1 (checked before the data)
    ("0800ffffffffffffffff01", ErrorCode.FRAME_VALUE, ErrorCode.FRAME_VALUE),
    ("0900fffffffffffffffe02", ErrorCode.FRAME_VALUE, ErrorCode.FRAME_VALUE),
    # ACK: no ranges, too many, first range below 0, gap and length underflow
    ("02050000", ErrorCode.FRAME_VALUE, ErrorCode.FRAME_VALUE),
    ("0205004101", ErrorCode.FRAME_SIZE, ErrorCode.FRAME_SIZE),
    ("0205007fff", ErrorCode.FRAME_SIZE, ErrorCode.FRAME_SIZE),
    ("0205000106", ErrorCode.FRAME_VALUE, ErrorCode.FRAME_VALUE),
    ("020500020400", ErrorCode.FRAME_VALUE, ErrorCode.FRAME_VALUE),
    ("020500020304", ErrorCode.FRAME_VALUE, ErrorCode.FRAME_VALUE),
    ("02050002020002", ErrorCode.FRAME_VALUE, ErrorCode.FRAME_VALUE),
    ("020a0002000009", ErrorCode.FRAME_VALUE, ErrorCode.FRAME_VALUE),
]


@pytest.mark.parametrize(("hexbuf", "when_complete", "when_partial"), DECODE_ERRORS)
def test_decode_errors(
    backend: SimpleNamespace, hexbuf: str, when_complete: int, when_partial: int
) -> None:
    buf = bytes.fromhex(hexbuf)
    for complete, expected in ((True, when_complete), (False, when_partial)):
        if expected == NEED_MORE:
            batch = backend.decode_frames(buf, complete)
            assert (batch.status, batch.consumed, len(batch)) == (NEED_MORE, 0, 0)
            continue
        with pytest.raises(RemoteProtocolError) as info:
            backend.decode_frames(buf, complete)
        assert info.value.code == expected, (hexbuf, complete)


def test_error_after_good_frames_and_counts(backend: SimpleNamespace) -> None:
    # the last valid ACK range before an underflow: lo = 2, gap 0 -> hi 0, len 0
    batch = backend.decode_frames(bytes.fromhex("02050002030000"))
    assert list(batch) == [F(FRAME_ACK, ranges=((2, 5), (0, 0)))]
    good = backend.encode_frames([F(FRAME_PING), F(FRAME_MAX_DATA, 9)])
    partial = backend.decode_frames(good + b"\x08\x01", complete=False)
    assert (partial.status, partial.consumed, len(partial)) == (NEED_MORE, len(good), 2)


def test_bad_limits(backend: SimpleNamespace) -> None:
    for kwargs in ({"max_frames": -1}, {"max_ranges": -1}):
        with pytest.raises(LocalProtocolError) as info:
            backend.decode_frames(b"\x01", **kwargs)
        assert info.value.code == ErrorCode.ARG


# --------------------------------------------------------------------------------------
# exact encode error codes

RANGES_257 = tuple((3 * i, 3 * i) for i in range(MAX_ACK_RANGES + 1))[::-1]
ENCODE_ERRORS: list[tuple[list[RawFrame], ErrorCode]] = [
    ([F(14)], ErrorCode.FRAME_TYPE),
    ([F(255)], ErrorCode.FRAME_TYPE),
    ([F(256)], ErrorCode.FRAME_TYPE),
    ([F(-1)], ErrorCode.FRAME_TYPE),
    ([F(FRAME_PADDING, 0)], ErrorCode.FRAME_VALUE),
    ([F(FRAME_PADDING, MAX_FRAME_DATA + 1)], ErrorCode.FRAME_VALUE),
    ([F(FRAME_PADDING, 2**64)], ErrorCode.FRAME_VALUE),
    ([F(FRAME_PADDING, 1, 1)], ErrorCode.FRAME_VALUE),
    ([F(FRAME_PADDING, 1, data=b"x")], ErrorCode.FRAME_VALUE),
    ([F(FRAME_PING, 1)], ErrorCode.FRAME_VALUE),
    ([F(FRAME_PING, 0, 0, -1)], ErrorCode.FRAME_VALUE),
    ([F(FRAME_PING, data=b"x")], ErrorCode.FRAME_VALUE),
    ([F(FRAME_PING, ranges=((1, 1),))], ErrorCode.FRAME_VALUE),
    ([F(FRAME_MAX_DATA, VARINT_MAX + 1)], ErrorCode.VARINT),
    ([F(FRAME_MAX_DATA, -1)], ErrorCode.VARINT),
    ([F(FRAME_MAX_DATA, 2**64)], ErrorCode.VARINT),
    ([F(FRAME_MAX_DATA, 2**62, 1)], ErrorCode.FRAME_VALUE),  # unused field first
    ([F(FRAME_RESET_STREAM, 1, 2, VARINT_MAX + 1)], ErrorCode.VARINT),
    ([F(FRAME_RESET_STREAM, 1, 2, 3, data=b"x")], ErrorCode.FRAME_VALUE),
    ([F(FRAME_STOP_SENDING, 1, 2, 3)], ErrorCode.FRAME_VALUE),
    ([F(FRAME_STREAM, 0, 0, 1)], ErrorCode.FRAME_VALUE),
    ([F(FRAME_STREAM, data=bytes(MAX_FRAME_DATA + 1))], ErrorCode.FRAME_SIZE),
    ([F(FRAME_STREAM, 2**62, data=bytes(MAX_FRAME_DATA + 1))], ErrorCode.VARINT),
    ([F(FRAME_STREAM, 0, VARINT_MAX, data=b"x")], ErrorCode.FRAME_VALUE),
    ([F(FRAME_STREAM_FIN, 0, VARINT_MAX - 1, data=b"xy")], ErrorCode.FRAME_VALUE),
    ([F(FRAME_CLOSE, data=bytes(MAX_CLOSE_REASON + 1))], ErrorCode.FRAME_SIZE),
    ([F(FRAME_RECEIPT, data=bytes(MAX_RECEIPT + 1))], ErrorCode.FRAME_SIZE),
    ([F(FRAME_RECEIPT, 1)], ErrorCode.FRAME_VALUE),
    ([F(FRAME_CONTROL, data=bytes(MAX_FRAME_DATA + 1))], ErrorCode.FRAME_SIZE),
    ([F(FRAME_DATAGRAM, data=bytes(MAX_FRAME_DATA + 1))], ErrorCode.FRAME_SIZE),
    ([F(FRAME_ACK)], ErrorCode.FRAME_VALUE),
    ([F(FRAME_ACK, ranges=RANGES_257)], ErrorCode.FRAME_SIZE),
    ([F(FRAME_ACK, 1, ranges=((1, 1),))], ErrorCode.FRAME_VALUE),
    ([F(FRAME_ACK, 0, 1, ranges=((1, 1),))], ErrorCode.FRAME_VALUE),
    ([F(FRAME_ACK, data=b"x", ranges=((1, 1),))], ErrorCode.FRAME_VALUE),
    ([F(FRAME_ACK, 1, c=2**62, ranges=((1, 1),))], ErrorCode.FRAME_VALUE),
    ([F(FRAME_ACK, c=2**62, ranges=((1, 1),))], ErrorCode.VARINT),
    ([F(FRAME_ACK, c=2**62)], ErrorCode.VARINT),
    ([F(FRAME_ACK, ranges=((2, 1),))], ErrorCode.FRAME_VALUE),
    ([F(FRAME_ACK, ranges=((-1, 1),))], ErrorCode.FRAME_VALUE),
    ([F(FRAME_ACK, ranges=((0, VARINT_MAX + 1),))], ErrorCode.FRAME_VALUE),
    ([F(FRAME_ACK, ranges=((0, 2**64),))], ErrorCode.FRAME_VALUE),
    ([F(FRAME_ACK, ranges=((5, 9), (2, 4)))], ErrorCode.FRAME_VALUE),
    ([F(FRAME_ACK, ranges=((5, 9), (6, 7)))], ErrorCode.FRAME_VALUE),
    ([F(FRAME_ACK, ranges=((1, 9), (0, 0)))], ErrorCode.FRAME_VALUE),
    ([F(FRAME_ACK, ranges=((0, 257), *RANGES_257[:-1]))], ErrorCode.FRAME_SIZE),
    # frames are checked in order: the first bad one decides
    ([F(FRAME_PING), F(FRAME_PING, 1), F(99)], ErrorCode.FRAME_VALUE),
    ([F(FRAME_MAX_DATA, 2**62), F(99)], ErrorCode.VARINT),
    ([F(FRAME_ACK, ranges=((2, 1),)), F(FRAME_PING, ranges=((1, 1),))], ErrorCode.FRAME_VALUE),
]


@pytest.mark.parametrize(("frames", "code"), ENCODE_ERRORS)
def test_encode_errors(backend: SimpleNamespace, frames: list[RawFrame], code: ErrorCode) -> None:
    with pytest.raises(LocalProtocolError) as info:
        backend.encode_frames(frames)
    assert info.value.code == code


def test_encode_accepts_edge_ack_ranges(backend: SimpleNamespace) -> None:
    # hi == previous lo - 2 is the closest two ranges can be (gap 0)
    frame = F(FRAME_ACK, ranges=((5, 9), (0, 3)))
    assert list(backend.decode_frames(backend.encode_frames([frame]))) == [frame]


def test_native_encode_buffer_and_arg_errors() -> None:
    """Errors only C can produce, through the raw C API."""
    require_native()
    ffi, lib = _core.ffi, _core.lib
    frames = ffi.new("dtp_frame[]", 2)
    frames[0].type = FRAME_DATAGRAM
    frames[0].data_len = 3
    frames[1].type = FRAME_PING
    data = b"abc"
    ranges = ffi.new("dtp_ack_range[]", 1)
    out = ffi.new("uint8_t[]", 16)
    written = ffi.new("size_t *", 99)
    assert lib.dtp_frames_encode(frames, 2, data, 3, ranges, 0, out, 16, written) == 0
    assert bytes(ffi.buffer(out, written[0])) == b"\x0d\x03abc\x01"
    # one byte short: BUFFER, nothing written
    assert lib.dtp_frames_encode(frames, 2, data, 3, ranges, 0, out, 5, written) == -1
    assert written[0] == 0
    # a validation error wins over a small buffer
    frames[1].a = 1
    assert lib.dtp_frames_encode(frames, 2, data, 3, ranges, 0, out, 0, written) == -14
    frames[1].a = 0
    # data slice outside the data buffer, ACK ranges outside the ranges array
    assert lib.dtp_frames_encode(frames, 2, data, 2, ranges, 0, out, 16, written) == -2
    frames[0].type = FRAME_ACK
    frames[0].data_len = 0
    frames[0].b = 1
    assert lib.dtp_frames_encode(frames, 2, data, 3, ranges, 0, out, 16, written) == -2
    frames[0].reserved1 = 1
    assert lib.dtp_frames_encode(frames, 2, data, 3, ranges, 1, out, 16, written) == -14
    assert lib.dtp_frames_encode(ffi.NULL, 1, data, 3, ranges, 1, out, 16, written) == -2
    counts = ffi.new("size_t[3]")
    assert lib.dtp_frames_decode(b"\x01", 1, 1, ffi.NULL, 1, ffi.NULL, 0, counts, counts + 1,
                                 counts + 2) == -2  # fmt: skip


# --------------------------------------------------------------------------------------
# differential: C and the twin agree


@given(frame_lists)
def test_differential_encode(frames: list[RawFrame]) -> None:
    require_native()
    encoded = NATIVE.encode_frames(frames)
    assert encoded == REFERENCE.encode_frames(frames)
    assert list(NATIVE.decode_frames(encoded)) == merge_padding(frames)


@given(
    st.lists(
        st.builds(
            F,
            st.integers(-1, 15),
            st.sampled_from([-1, 0, 0, 1, 2**62 - 1, 2**62, 2**64]),
            st.sampled_from([-1, 0, 0, 5, 2**62 - 1, 2**62]),
            st.sampled_from([-1, 0, 0, 5, 2**62]),
            st.sampled_from([b"", b"x", bytes(MAX_CLOSE_REASON + 1)]),
            st.sampled_from([(), ((1, 1),), ((5, 9), (0, 3)), ((5, 9), (2, 3)), ((-1, 0),)]),
        ),
        max_size=4,
    )
)
def test_differential_encode_invalid(frames: list[RawFrame]) -> None:
    require_native()
    assert encode_outcome(NATIVE.encode_frames, frames) == encode_outcome(
        REFERENCE.encode_frames, frames
    )


limits = st.sampled_from([0, 1, 2, 3, 4096])


@given(st.binary(max_size=300), st.booleans(), limits, limits)
def test_differential_garbage(data: bytes, complete: bool, mf: int, mr: int) -> None:
    require_native()
    assert decode_outcome(NATIVE.decode_frames, data, complete, mf, mr) == decode_outcome(
        REFERENCE.decode_frames, data, complete, mf, mr
    )


@given(mutated_encodings(), st.booleans(), limits, limits)
def test_differential_mutated(data: bytes, complete: bool, mf: int, mr: int) -> None:
    require_native()
    assert decode_outcome(NATIVE.decode_frames, data, complete, mf, mr) == decode_outcome(
        REFERENCE.decode_frames, data, complete, mf, mr
    )


@given(frame_lists, st.data())
def test_differential_truncations(frames: list[RawFrame], data: st.DataObject) -> None:
    require_native()
    encoded = REFERENCE.encode_frames(frames)
    cut = data.draw(st.integers(0, len(encoded)))
    for complete in (True, False):
        assert decode_outcome(NATIVE.decode_frames, encoded[:cut], complete) == decode_outcome(
            REFERENCE.decode_frames, encoded[:cut], complete
        )


# --------------------------------------------------------------------------------------
# incremental input


def feed(decode: Callable[..., Any], chunks: Sequence[bytes], max_frames: int = 4096) -> list:
    """Decode a record body that arrives in pieces (complete=False until the end)."""
    got: list[RawFrame] = []
    pending = b""
    for chunk in chunks:
        pending += chunk
        while True:
            batch = decode(pending, False, max_frames)
            assert batch.status in (OK, NEED_MORE, FULL)
            got.extend(batch)
            pending = pending[batch.consumed :]
            if batch.status != FULL:
                break
    while True:
        final = decode(pending, True, max_frames)
        got.extend(final)
        pending = pending[final.consumed :]
        if final.status == OK:
            break
        assert final.status == FULL
    assert pending == b""
    return got


def test_byte_by_byte(backend: SimpleNamespace) -> None:
    frames = [
        F(FRAME_STREAM, 1, 0, data=b"hello"),
        F(FRAME_PADDING, 3),
        F(FRAME_ACK, c=300, ranges=((1000, 1200), (3, 998))),
        F(FRAME_CLOSE, 2**40, data=b"done"),
        F(FRAME_PADDING, 2),
    ]
    encoded = backend.encode_frames(frames)
    chunks = [encoded[i : i + 1] for i in range(len(encoded))]
    assert feed(backend.decode_frames, chunks) == frames
    assert feed(backend.decode_frames, chunks, max_frames=1) == frames


@given(frame_lists, st.lists(st.integers(0, 2000), max_size=8), st.integers(1, 4))
def test_random_splits(frames: list[RawFrame], cuts: list[int], max_frames: int) -> None:
    for backend in (NATIVE, REFERENCE) if _core.HAVE_NATIVE else (REFERENCE,):
        encoded = backend.encode_frames(frames)
        points = sorted({min(c, len(encoded)) for c in cuts} | {0, len(encoded)})
        chunks = [encoded[a:b] for a, b in pairwise(points)]
        assert feed(backend.decode_frames, chunks, max_frames) == merge_padding(frames)


# --------------------------------------------------------------------------------------
# protocol.md vectors


def vector_frames(vector: dict[str, Any]) -> list[RawFrame]:
    return [
        F(
            f["type"],
            f["a"],
            f["b"],
            f["c"],
            bytes.fromhex(f["data"]),
            tuple((lo, hi) for lo, hi in f["ranges"]),
        )
        for f in vector["frames"]
    ]


def test_protocol_vectors(backend: SimpleNamespace) -> None:
    vectors = load_vectors("frame")
    covered = {f["type"] for v in vectors for f in v["frames"]}
    assert covered == set(range(14))
    for v in vectors:
        frames = vector_frames(v)
        encoded = bytes.fromhex(v["hex"])
        assert backend.encode_frames(frames) == encoded, v["name"]
        batch = backend.decode_frames(encoded)
        assert list(batch) == frames, v["name"]
        assert (batch.status, batch.consumed) == (OK, len(encoded))
