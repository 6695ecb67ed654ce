"""``Aead.open_lone_frame`` (``dtp_aead_open_lone_frame``): a buffer that is exactly one
DATA record of exactly one frame, not an ACK, is opened as ``open_frames(...,
datagram_runs=True)`` opens it (a DATAGRAM's payload as a run of one); anything else is
left unopened (None), the replay window as it was, for ``open_frames`` to open and
judge. Held against ``open_frames`` on each backend, and the C core against its twin."""

from __future__ import annotations

import os
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.errors import DecryptionError
from dtp.native.reference._frames import encode_frames
from dtp.native.types import (
    FRAME_ACK,
    FRAME_CLOSE,
    FRAME_DATAGRAM,
    FRAME_MAX_DATA,
    FRAME_PING,
    FRAME_STREAM,
    FRAME_STREAM_FIN,
    OK,
    REC_DATA,
    REC_HS_INIT,
    STOP,
    OpenedFrames,
    RawFrame,
)
from tests.support.backends import BACKENDS, NATIVE, REFERENCE, require_native

HEADER = struct.Struct("<BBHQ")
KEY = os.urandom(32)
RESERVED = 2**64 - 1

REQUEST = encode_frames([RawFrame(FRAME_STREAM_FIN, 4, 0, 0, b'{"m":"ping"}')])
#: one frame each, every one the lone path takes
LONE = [
    REQUEST,
    encode_frames([RawFrame(FRAME_STREAM_FIN, 6, 0, 0, b"")]),
    encode_frames([RawFrame(FRAME_STREAM, 3, 9, 0, b"hello")]),
    encode_frames([RawFrame(FRAME_STREAM_FIN, 2**40, 2**30, 0, b"x" * 16000)]),
    encode_frames([RawFrame(FRAME_PING)]),
    encode_frames([RawFrame(FRAME_MAX_DATA, 1 << 20)]),
    encode_frames([RawFrame(FRAME_CLOSE, 0, 0, 0, b"bye")]),
    encode_frames([RawFrame(FRAME_DATAGRAM, 0, 0, 0, b"dgram")]),
    encode_frames([RawFrame(FRAME_DATAGRAM, 0, 0, 0, b"")]),
    encode_frames([RawFrame(FRAME_DATAGRAM, 0, 0, 0, b"d" * 16000)]),
]
#: plaintexts the lone path leaves to open_frames
NOT_LONE = [
    b"",  # (no frame)
    encode_frames([RawFrame(FRAME_ACK, c=1, ranges=((20, 30), (5, 9)))]),
    encode_frames([RawFrame(FRAME_DATAGRAM, 0, 0, 0, b"dg")] * 2),  # (a run of two)
    REQUEST + encode_frames([RawFrame(FRAME_PING)]),
    REQUEST + b"\x00\x00",  # (padding after it: a second frame)
    b"\x00" + REQUEST,
    b"\x3f",  # (an unknown frame type)
    REQUEST[:-1],  # (truncated inside the record)
]


def _summary(record: OpenedFrames | None) -> Any:
    if record is None:
        return None
    return (
        record.counter,
        record.replayed,
        [(*f[:4], bytes(f.data), f.ranges) for f in record.frames],
        record.datagrams,
    )


def _general(result: Any) -> Any:
    error = None if result.error is None else (type(result.error).__name__, result.error.code)
    return ([_summary(r) for r in result.records], result.consumed, result.status, error)


def _lone_shape(result: Any, size: int) -> bool:
    """Whether open_frames' ``result`` of ``size`` bytes is what open_lone_frame takes."""
    if result.error is not None or len(result.records) != 1 or result.consumed != size:
        return False
    record = result.records[0]
    if record.datagrams is not None:  # (a DATAGRAM frame's record, as a run)
        return not record.replayed and len(record.datagrams) == 1
    return not record.replayed and len(record.frames) == 1 and record.frames[0].type != FRAME_ACK


def _check_against_open_frames(
    backend: SimpleNamespace, key: bytes, seen: list[bytes], buf: bytes
) -> Any:
    """``buf`` through open_lone_frame, and open_frames on a twin AEAD that saw the same
    ``seen`` records: the same record, or None exactly when open_frames' result is of
    another shape, and then nothing changed. Returns the lone path's summary."""
    lone, general = backend.Aead(key), backend.Aead(key)
    for piece in seen:
        lone.open_frames(piece)
        general.open_frames(piece)
    got = lone.open_lone_frame(buf)
    want = general.open_frames(buf, datagram_runs=True)
    if got is None:
        assert not _lone_shape(want, len(buf))
        # (refused: the record is still there to open, the window as it was)
        assert _general(lone.open_frames(buf, datagram_runs=True)) == _general(want)
    else:
        assert _lone_shape(want, len(buf))
        assert want.status == OK
        assert _summary(got) == _summary(want.records[0])
        assert all(type(d) is bytes for d in [f.data for f in got.frames] + (got.datagrams or []))
    assert lone.replay_top == general.replay_top
    # and what comes next is judged alike (a second open of buf: a replay)
    assert _general(lone.open_frames(buf, datagram_runs=True)) == _general(
        general.open_frames(buf, datagram_runs=True)
    )
    return _summary(got)


def _record(counter: int, body: bytes, kind: int = REC_DATA) -> bytes:
    return HEADER.pack(kind, 0, len(body), counter) + body


@pytest.mark.parametrize("plain", LONE, ids=range(len(LONE)))
def test_one_record_of_one_frame_is_opened_as_open_frames_opens_it(
    backend: SimpleNamespace, plain: bytes
) -> None:
    buf = backend.Aead(KEY).seal(7, [plain])
    got = _check_against_open_frames(backend, KEY, [], buf)
    assert got is not None and got[0] == 7


@pytest.mark.parametrize("plain", NOT_LONE, ids=range(len(NOT_LONE)))
def test_other_plaintexts_are_left_to_open_frames(backend: SimpleNamespace, plain: bytes) -> None:
    buf = backend.Aead(KEY).seal(7, [plain])
    assert _check_against_open_frames(backend, KEY, [], buf) is None


def _reads(sealer: Any) -> dict[str, tuple[list[bytes], bytes]]:
    """Buffers of one record of one frame gone wrong: (records seen first, buffer)."""
    one = sealer.seal(5, [REQUEST])
    flipped = bytearray(one)
    flipped[-1] ^= 1
    return {
        "two records": ([], one + sealer.seal(6, [REQUEST])),
        "a record and a partial one": ([], one + sealer.seal(6, [REQUEST])[:20]),
        "a partial record": ([], one[:-1]),
        "a header alone": ([], one[:12]),
        "nothing": ([], b""),
        "a byte past the record": ([], one + b"\x00"),
        "forged": ([], bytes(flipped)),
        "replayed": ([one], one),
        "older than the window": ([sealer.seal(5000, [REQUEST])], one),
        "the reserved counter": ([], _record(RESERVED, one[12:])),
        "a handshake record": ([], _record(0, b"\x01", REC_HS_INIT)),
        "a malformed header": ([], bytes([REC_DATA, 1]) + one[2:]),
        "a body shorter than a tag": ([], _record(5, b"\x00" * 15)),
    }


@pytest.mark.parametrize("case", list(_reads(REFERENCE.Aead(KEY))))
def test_buffers_other_than_one_good_record_are_left_to_open_frames(
    backend: SimpleNamespace, case: str
) -> None:
    seen, buf = _reads(backend.Aead(KEY))[case]
    assert _check_against_open_frames(backend, KEY, seen, buf) is None


def test_a_forged_record_is_refused_and_open_frames_reports_it(backend: SimpleNamespace) -> None:
    buf = bytearray(backend.Aead(KEY).seal(5, [REQUEST]))
    buf[20] ^= 0x40
    rx = backend.Aead(KEY)
    assert rx.open_lone_frame(buf) is None and rx.replay_top is None
    assert isinstance(rx.open_frames(buf).error, DecryptionError)


def test_the_window_advances_for_an_opened_record(backend: SimpleNamespace) -> None:
    sealer, rx = backend.Aead(KEY), backend.Aead(KEY)
    records = [sealer.seal(c, [REQUEST]) for c in (3, 1, 2)]
    assert [rx.open_lone_frame(r).counter for r in records] == [3, 1, 2]  # type: ignore[union-attr]
    assert rx.replay_top == 3
    assert all(rx.open_lone_frame(r) is None for r in records)
    assert [r.replayed for r in rx.open_frames(b"".join(records)).records] == [True] * 3


def test_a_datagram_is_opened_as_a_run_of_one(backend: SimpleNamespace) -> None:
    plain = encode_frames([RawFrame(FRAME_DATAGRAM, 0, 0, 0, b"payload")])
    got = backend.Aead(KEY).open_lone_frame(backend.Aead(KEY).seal(9, [plain]))
    assert got == OpenedFrames(9, False, [], [b"payload"])
    assert type(got.datagrams[0]) is bytes  # type: ignore[union-attr,index]


def test_a_buffer_of_any_kind_is_read_through(backend: SimpleNamespace) -> None:
    buf = backend.Aead(KEY).seal(0, [REQUEST])
    for kind in (bytes, bytearray, memoryview):
        got = backend.Aead(KEY).open_lone_frame(kind(buf))
        assert _summary(got) == (0, False, [(FRAME_STREAM_FIN, 4, 0, 0, b'{"m":"ping"}', ())], None)


@st.composite
def lone_reads(draw: st.DrawFn) -> tuple[bytes, list[bytes], bytes]:
    """A key, records seen first, and a buffer: mostly one record of a few frames (of
    the kinds both lists above hold), some tampered, replayed, doubled or cut."""
    key = draw(st.binary(min_size=32, max_size=32))
    sealer = REFERENCE.Aead(key)
    body = b"".join(draw(st.lists(st.sampled_from(LONE + NOT_LONE), min_size=0, max_size=3)))
    body = body[:16384]  # (a record's most: the long frame beside another is cut short)
    counter = draw(st.integers(0, 20))
    buf = sealer.seal(counter, [body])
    seen = [sealer.seal(c, [b""]) for c in draw(st.lists(st.integers(0, 20), max_size=3))]
    action = draw(st.sampled_from(["keep"] * 5 + ["flip", "double", "cut", "extend"]))
    if action == "flip":
        flipped = bytearray(buf)
        flipped[draw(st.integers(0, len(buf) - 1))] ^= draw(st.integers(1, 255))
        buf = bytes(flipped)
    elif action == "double":
        buf += sealer.seal(counter + 1, [REQUEST])
    elif action == "cut":
        buf = buf[: draw(st.integers(0, len(buf) - 1))]
    elif action == "extend":
        buf += draw(st.binary(min_size=1, max_size=4))
    return key, seen, buf


@given(lone_reads())
def test_open_lone_frame_is_open_frames_or_nothing(read: tuple[bytes, list[bytes], bytes]) -> None:
    key, seen, buf = read
    for backend in BACKENDS:
        _check_against_open_frames(backend, key, seen, buf)


@given(lone_reads())
def test_differential_open_lone_frame(read: tuple[bytes, list[bytes], bytes]) -> None:
    require_native()
    key, seen, buf = read
    native, reference = NATIVE.Aead(key), REFERENCE.Aead(key)
    for piece in seen:
        native.open_frames(piece)
        reference.open_frames(piece)
    for _ in range(2):  # (the second: what the first left)
        assert _summary(native.open_lone_frame(buf)) == _summary(reference.open_lone_frame(buf))
        assert native.replay_top == reference.replay_top


def test_the_c_entry_point_checks_its_pointers_and_leaves_no_plaintext() -> None:
    require_native()
    from dtp.native import core as _core

    ffi, lib = _core.ffi, _core.lib
    rx = _core.NativeAead(KEY)
    out = ffi.new("dtp_lone_frame *")
    plain = ffi.new("uint8_t[]", 64)
    buf = REFERENCE.Aead(KEY).seal(1, [REQUEST])
    assert lib.dtp_aead_open_lone_frame(ffi.NULL, buf, len(buf), plain, 64, out) < 0
    assert lib.dtp_aead_open_lone_frame(rx._ctx, buf, len(buf), plain, 64, ffi.NULL) < 0
    assert lib.dtp_aead_open_lone_frame(rx._ctx, ffi.NULL, 1, plain, 64, out) < 0
    assert lib.dtp_aead_open_lone_frame(rx._ctx, buf, len(buf), ffi.NULL, 64, out) < 0
    # plain_out shorter than the plaintext: refused before anything is written
    assert (
        lib.dtp_aead_open_lone_frame(rx._ctx, buf, len(buf), plain, len(REQUEST) - 1, out) == STOP
    )
    assert bytes(ffi.buffer(plain, 64)) == bytes(64)
    # a record that authenticates but holds two frames: refused, its plaintext wiped
    two = REFERENCE.Aead(KEY).seal(2, [REQUEST + REQUEST])
    assert lib.dtp_aead_open_lone_frame(rx._ctx, two, len(two), plain, 64, out) == STOP
    assert bytes(ffi.buffer(plain, 64)) == bytes(64)
    assert rx.replay_top is None
    assert lib.dtp_aead_open_lone_frame(rx._ctx, buf, len(buf), plain, 64, out) == OK
    assert (out.counter, out.frame.type, out.frame.a, out.frame.data_len) == (
        1,
        FRAME_STREAM_FIN,
        4,
        len(b'{"m":"ping"}'),
    )
