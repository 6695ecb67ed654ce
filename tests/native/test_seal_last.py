"""``Aead.seal_last`` (``dtp_stream_seal_last``): a served stream's last record -- its
STREAM_FIN frame and, when asked, the MAX_STREAMS its end returns -- built and sealed in
one call. Its bytes are those of the frames encoded by ``encode_frames`` and sealed by
``seal_one``, on each backend; the C core gives its twin's bytes and its twin's error
codes, checked in the same order."""

from __future__ import annotations

import array
import os
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.errors import ErrorCode, LocalProtocolError
from dtp.native.reference._frames import encode_frames
from dtp.native.types import FRAME_MAX_STREAMS, FRAME_STREAM_FIN, RawFrame
from tests.support.backends import BACKENDS, NATIVE, REFERENCE, require_native

KEY = os.urandom(32)
VARINT_MAX = 2**62 - 1
RESERVED = 2**64 - 1
ANSWER = b'{"jsonrpc":"2.0","id":1,"result":42}'


def _general(
    backend: SimpleNamespace, counter: int, sid: int, offset: int, data: bytes, limit: int
) -> bytes:
    """The same record the general way: the frames encoded, then sealed as one record."""
    frames = [RawFrame(FRAME_STREAM_FIN, sid, offset, 0, data)]
    if limit:
        frames.append(RawFrame(FRAME_MAX_STREAMS, limit))
    return backend.Aead(KEY).seal_one(counter, encode_frames(frames))  # type: ignore[no-any-return]


def _outcome(aead: Any, *args: Any) -> Any:
    try:
        return aead.seal_last(*args)
    except LocalProtocolError as e:
        return (type(e).__name__, e.code)


# every varint's one-, two-, four- and eight-byte forms and their edges
_VARINTS = st.one_of(
    st.sampled_from([0, 1, 63, 64, 16383, 16384, 2**30 - 1, 2**30, VARINT_MAX]),
    st.integers(0, VARINT_MAX),
)


@pytest.mark.parametrize(
    ("sid", "offset", "data", "limit"),
    [
        (2, 0, ANSWER, 129),  # (a call's answer and its credit)
        (6, 0, b"", 130),  # (the FIN alone)
        (2, 0, ANSWER, 0),  # (no credit due)
        (200, 70, bytes(range(100)), 300),  # (two-byte stream ID, length and count)
        (20000, 2**31, b"x" * 16000, 2**40),  # (four- and eight-byte varints)
        (VARINT_MAX, VARINT_MAX - 3, b"end", VARINT_MAX),
    ],
)
def test_the_record_is_the_frames_sealed_the_general_way(
    backend: SimpleNamespace, sid: int, offset: int, data: bytes, limit: int
) -> None:
    got = backend.Aead(KEY).seal_last(5, sid, offset, data, limit)
    assert got == _general(backend, 5, sid, offset, data, limit)
    opened = backend.Aead(KEY).open_frames(got)
    (record,) = opened.records
    frames = [(f.type, f.a, f.b, bytes(f.data)) for f in record.frames]
    want = [(FRAME_STREAM_FIN, sid, offset, data)]
    if limit:
        want.append((FRAME_MAX_STREAMS, limit, 0, b""))
    assert (record.counter, frames) == (5, want)


def test_data_of_any_buffer_kind_is_its_bytes(backend: SimpleNamespace) -> None:
    wide = array.array("H", [0x4142, 0x4344])  # (items of two bytes: four bytes go)
    want = backend.Aead(KEY).seal_last(1, 2, 0, wide.tobytes(), 9)
    for data in (bytearray(wide.tobytes()), memoryview(wide), memoryview(wide.tobytes())):
        assert backend.Aead(KEY).seal_last(1, 2, 0, data, 9) == want


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ((0, 2**62, 0, b"", 0), ErrorCode.VARINT),
        ((0, -1, 0, b"", 0), ErrorCode.VARINT),
        ((0, 2, 2**64, b"", 0), ErrorCode.VARINT),
        ((0, 2, 0, b"", 2**62), ErrorCode.VARINT),
        ((0, 2, 0, b"", -1), ErrorCode.VARINT),
        ((0, 2, VARINT_MAX - 2, b"abc", 0), ErrorCode.FRAME_VALUE),
        ((0, 2, 0, b"x" * 16380, 0), ErrorCode.RECORD_SIZE),
        ((0, 2, 0, b"x" * 16379, 5), ErrorCode.RECORD_SIZE),  # (the credit tips it over)
        ((RESERVED, 2, 0, b"", 0), ErrorCode.COUNTER),
        ((2**64, 2, 0, b"", 0), ErrorCode.COUNTER),
        ((-1, 2, 0, b"", 0), ErrorCode.COUNTER),
        # checks in order: the varint before the stream's end, the size before the counter
        ((RESERVED, 2**62, VARINT_MAX, b"x" * 20000, 0), ErrorCode.VARINT),
        ((RESERVED, 2, VARINT_MAX, b"x" * 20000, 0), ErrorCode.FRAME_VALUE),
        ((RESERVED, 2, 0, b"x" * 20000, 0), ErrorCode.RECORD_SIZE),
    ],
)
def test_bad_arguments_get_their_code(
    backend: SimpleNamespace, args: tuple[Any, ...], code: ErrorCode
) -> None:
    assert _outcome(backend.Aead(KEY), *args) == ("LocalProtocolError", code)


def test_the_largest_record_fits() -> None:
    # a plaintext of exactly 16,384 bytes: 1 + 1 + 1 + 2 header bytes, 16,376 of data,
    # 3 of credit
    for backend in BACKENDS:
        got = backend.Aead(KEY).seal_last(0, 2, 0, b"x" * 16376, 64)
        assert len(got) == 16384 + 28
        assert got == _general(backend, 0, 2, 0, b"x" * 16376, 64)


def test_oversized_data_is_refused_without_room_made_for_it() -> None:
    require_native()
    aead = NATIVE.Aead(KEY)
    with pytest.raises(LocalProtocolError) as caught:
        aead.seal_last(0, 2, 0, bytes(2 << 20), 0)
    assert caught.value.code == ErrorCode.RECORD_SIZE
    assert aead._scratch_len <= 16384 + 62  # (room for a record at most, not 2 MiB)


@given(
    counter=st.one_of(st.integers(0, 50), st.sampled_from([RESERVED - 1, RESERVED, 2**64])),
    sid=st.one_of(_VARINTS, st.sampled_from([-1, 2**62, 2**64])),
    offset=st.one_of(_VARINTS, st.sampled_from([-1, 2**62])),
    size=st.one_of(st.integers(0, 200), st.integers(16340, 16400)),
    limit=st.one_of(st.just(0), _VARINTS, st.sampled_from([-1, 2**62])),
)
def test_differential_seal_last(counter: int, sid: int, offset: int, size: int, limit: int) -> None:
    require_native()
    data = os.urandom(size)
    args = (counter, sid, offset, data, limit)
    native = _outcome(NATIVE.Aead(KEY), *args)
    assert native == _outcome(REFERENCE.Aead(KEY), *args)
    if isinstance(native, bytes):
        assert native == _general(NATIVE, counter, sid, offset, data, limit)


def test_the_c_entry_point_checks_its_pointers_and_room() -> None:
    require_native()
    from dtp.native import core as _core

    ffi, lib = _core.ffi, _core.lib
    aead = _core.NativeAead(KEY)
    data = ANSWER
    size = 28 + 1 + 1 + 1 + 1 + len(data) + 3  # (record, frame heads, credit of 200)
    out = ffi.new("uint8_t[]", size)
    written = ffi.new("size_t *")
    args = (2, 0, data, len(data), 200)
    assert lib.dtp_stream_seal_last(ffi.NULL, 0, *args, out, size, written) == ErrorCode.ARG
    assert lib.dtp_stream_seal_last(aead._ctx, 0, *args, out, size, ffi.NULL) == ErrorCode.ARG
    assert lib.dtp_stream_seal_last(aead._ctx, 0, *args, ffi.NULL, size, written) == ErrorCode.ARG
    no_data = (2, 0, ffi.NULL, 1, 200)
    assert lib.dtp_stream_seal_last(aead._ctx, 0, *no_data, out, size, written) == ErrorCode.ARG
    # one byte short of the record: refused, nothing written
    rc = lib.dtp_stream_seal_last(aead._ctx, 0, *args, out, size - 1, written)
    assert rc == ErrorCode.BUFFER and written[0] == 0
    assert bytes(ffi.buffer(out, size)) == bytes(size)
    assert lib.dtp_stream_seal_last(aead._ctx, 0, *args, out, size, written) == 0
    assert written[0] == size
    assert bytes(ffi.buffer(out, size)) == aead.seal_last(0, 2, 0, data, 200)
    # a MAX_STREAMS of 0: no credit frame (it would raise no limit)
    rc = lib.dtp_stream_seal_last(aead._ctx, 0, 2, 0, data, len(data), 0, out, size, written)
    assert rc == 0 and written[0] == size - 3
