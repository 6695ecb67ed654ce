"""Both core backends take any C-contiguous buffer as its bytes: an ``array('I')`` or a
memoryview of another format is read (and written) as the bytes it holds, exactly as
the same bytes in a ``bytes`` object -- not as ``len()`` items -- and bytes-like keys
and seeds are accepted wherever ``bytes`` are."""

from __future__ import annotations

import array
import socket
from types import SimpleNamespace
from typing import Any

import pytest

from dtp.errors import DTPError, ErrorCode, LocalProtocolError
from dtp.native.reference._ham import encode_ham_batch
from dtp.native.types import FRAME_DATAGRAM, FRAME_PING, HamUpdate, RawFrame
from tests.support.backends import BACKENDS

KEY = bytes(range(32))
SID = 4
BIG = 1 << 40
each_backend = pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)


def words(data: bytes) -> array.array[int]:
    """``data`` (a multiple of 4 bytes) in an array of 4-byte items."""
    assert len(data) % 4 == 0
    out = array.array("I")
    out.frombytes(data)
    return out


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def opened(result: Any) -> Any:
    records, consumed, status, _ = result
    return [(r.counter, bytes(r.plaintext), r.replayed) for r in records], consumed, status


@each_backend
def test_open_reads_every_byte(b: SimpleNamespace) -> None:
    sealed = padded(b.Aead(KEY).seal(0, [b"hello", b"world!", b"x" * 30]))
    want = opened(b.Aead(KEY).open(sealed))
    assert len(want[0]) == 3
    assert opened(b.Aead(KEY).open(words(sealed))) == want
    assert opened(b.Aead(KEY).open(memoryview(sealed).cast("I"))) == want


@each_backend
def test_open_frames_reads_every_byte(b: SimpleNamespace) -> None:
    sealed = padded(b.Aead(KEY).seal_stream(0, SID, 0, b"abcdefgh" * 9, max_chunk=20)[0])

    def frames(buf: Any) -> Any:
        records, consumed, status, _ = b.Aead(KEY).open_frames(buf)
        return [[(f.type, f.a, f.b, bytes(f.data)) for f in r.frames] for r in records], (
            consumed,
            status,
        )

    want = frames(sealed)
    assert len(want[0]) == 4
    assert frames(words(sealed)) == want


@each_backend
def test_parse_records_reads_every_byte(b: SimpleNamespace) -> None:
    sealed = padded(b.Aead(KEY).seal(0, [b"a", b"bc", b"def"]))
    assert b.parse_records(words(sealed)) == b.parse_records(sealed)
    assert len(b.parse_records(sealed).records) == 3


@each_backend
def test_lane_take_reads_and_fills_every_byte(b: SimpleNamespace) -> None:
    sealed = padded(b.Aead(KEY).seal_stream(0, SID, 0, b"0123456789" * 4, max_chunk=10)[0])

    def take(buf: Any, dst: Any) -> tuple[Any, bytes]:
        lane = b.Lane(b.Aead(bytes(32)), b.Aead(KEY))
        r = lane.take(buf, SID, 0, BIG, 0, BIG, dst)
        return (r.status, r.consumed, r.records, r.taken, bytes(r.spill)), bytes(dst)

    want = take(sealed, bytearray(24))
    assert want[0][3] == 24  # taken: the destination is full
    got = take(words(sealed), array.array("I", bytes(24)))
    assert got == want


@each_backend
def test_reassembler_holds_every_byte(b: SimpleNamespace) -> None:
    data = bytes(range(1, 17))
    r = b.Reassembler(0, 64, 4)
    r.push_many([(8, words(data[8:])), (0, memoryview(data[:8]).cast("I"))])
    assert (r.readable, r.buffered) == (16, 16)
    assert r.pop() == data
    assert r.next_seq == 16


@each_backend
def test_reassembler_window_counts_bytes(b: SimpleNamespace) -> None:
    r = b.Reassembler(0, 6, 4)
    with pytest.raises(Exception) as info:
        r.push(0, words(bytes(8)))  # 8 bytes do not fit a 6-byte window
    assert getattr(info.value, "code", None) == ErrorCode.REASM_WINDOW
    assert (r.buffered, r.next_seq) == (0, 0)


@each_backend
def test_ham_merge_reads_every_byte(b: SimpleNamespace) -> None:
    # a value long enough for the batch to be a whole number of 4-byte items
    size = len(encode_ham_batch([HamUpdate(b"soul", b"f", 1.0, b"")]))
    ups = [HamUpdate(b"soul", b"f", 1.0, b"v" * (-size % 4 + 4))]
    batch = encode_ham_batch(ups)
    g = b.HamGraph(seed=bytes(16))
    assert g.merge(words(batch), 5.0).statuses == b"\x00"
    assert g.get(b"soul", b"f") == (1.0, ups[0].value)


@each_backend
def test_ham_keys_and_seed_may_be_any_bytes_like(b: SimpleNamespace) -> None:
    g = b.HamGraph(seed=bytearray(16))
    g.merge(encode_ham_batch([HamUpdate(b"soul", b"field", 2.0, b"v")]), 5.0)
    want = (2.0, b"v")
    assert g.get(b"soul", b"field") == want
    assert g.get(bytearray(b"soul"), memoryview(b"xfield")[1:]) == want
    assert g.get(memoryview(b"soul"), bytearray(b"field")) == want
    assert b.HamGraph(seed=memoryview(bytes(16))).get(b"soul", b"field") is None


@each_backend
@pytest.mark.parametrize(
    ("counter", "stream_id", "offset", "code"),
    [
        (-1, SID, 0, ErrorCode.COUNTER),
        (2**64, SID, 0, ErrorCode.COUNTER),
        (0, -1, 0, ErrorCode.VARINT),
        (0, 2**64, 0, ErrorCode.VARINT),
        (0, SID, -1, ErrorCode.VARINT),
        (0, SID, 2**64, ErrorCode.VARINT),
    ],
)
def test_lane_seal_out_of_range_is_a_typed_error(
    b: SimpleNamespace, counter: int, stream_id: int, offset: int, code: ErrorCode
) -> None:
    lane = b.Lane(b.Aead(KEY), b.Aead(KEY))
    with pytest.raises(LocalProtocolError) as info:
        lane.seal(counter, stream_id, offset, b"data")
    assert info.value.code == code


@each_backend
def test_sealing_reads_every_byte(b: SimpleNamespace) -> None:
    data = bytes(range(40))
    a = b.Aead(KEY)
    assert a.seal(3, [words(data), b"x"]) == a.seal(3, [data, b"x"])
    assert a.seal_chunks(3, words(data), 16) == a.seal_chunks(3, data, 16)
    assert a.seal_stream(3, SID, 0, words(data), max_chunk=16) == a.seal_stream(
        3, SID, 0, data, max_chunk=16
    )
    sealed = a.encrypt(3, words(data[:8]), words(data))
    assert sealed == a.encrypt(3, data[:8], data)
    assert a.decrypt(3, words(data[:8]), words(padded(sealed))[: len(sealed) // 4]) == data


@each_backend
def test_encode_frames_writes_every_byte(b: SimpleNamespace) -> None:
    data = bytes(range(65, 73))
    frames = [RawFrame(FRAME_DATAGRAM, data=words(data)), RawFrame(FRAME_PING)]
    want = b.encode_frames([RawFrame(FRAME_DATAGRAM, data=data), RawFrame(FRAME_PING)])
    assert b.encode_frames(frames) == want
    assert [bytes(f.data) for f in b.decode_frames(want)] == [data, b""]


@each_backend
def test_lane_take_into_a_read_only_buffer_is_a_typed_error(b: SimpleNamespace) -> None:
    sealed = b.Aead(KEY).seal_stream(0, SID, 0, b"abc")[0]
    lane = b.Lane(b.Aead(bytes(32)), b.Aead(KEY))
    for dst in (bytes(8), memoryview(bytes(8))):
        with pytest.raises(LocalProtocolError) as info:
            lane.take(sealed, SID, 0, BIG, 0, BIG, dst)
        assert info.value.code == ErrorCode.ARG
    assert lane.take(sealed, SID, 0, BIG, 0, BIG, bytearray(8)).taken == 3


def _fail_and_resize(call: Any, *buffers: bytearray) -> None:
    """``call()`` must raise a DTPError; in the except clause (its traceback alive) each
    of ``buffers`` must be resizable: no export of it outlives the failed call."""
    try:
        call()
    except DTPError:
        for buf in buffers:
            buf += b"x"
    else:
        raise AssertionError("the call did not fail")


@each_backend
def test_a_failed_call_leaves_no_export_of_the_callers_buffers(b: SimpleNamespace) -> None:
    data = bytearray(b"\xff" * 40)
    sealed = bytearray(b.Aead(KEY).seal_stream(0, SID, 0, b"abc")[0])
    _fail_and_resize(lambda: b.HamGraph(seed=bytes(16)).merge(data, 1.0), data)
    _fail_and_resize(lambda: b.parse_records(data), data)
    _fail_and_resize(lambda: b.Aead(KEY).decrypt(0, data, data), data)
    _fail_and_resize(lambda: b.Aead(KEY).seal_stream(0, 2**62, 0, data), data)
    _fail_and_resize(lambda: b.Aead(KEY).seal_chunks(2**64 - 1, data, 1), data)
    # seal_one: the reserved counter (C refuses it), one past the range, too many bytes
    _fail_and_resize(lambda: b.Aead(KEY).seal_one(2**64 - 1, data), data)
    _fail_and_resize(lambda: b.Aead(KEY).seal_one(2**64, data), data)
    big_plain = bytearray(16385)
    _fail_and_resize(lambda: b.Aead(KEY).seal_one(0, big_plain), big_plain)
    lane = b.Lane(b.Aead(KEY), b.Aead(KEY))
    _fail_and_resize(lambda: lane.seal(2**64 - 1, SID, 0, data), data)
    big = bytearray(lane.max_seal + 1)
    _fail_and_resize(lambda: lane.seal(0, SID, 0, big), big)
    _fail_and_resize(lambda: lane.take(sealed, SID, 0, BIG, 0, BIG, b"read-only"), sealed)
    # (a read buffer whose size is refused is kept by neither: only a good one is)
    _fail_and_resize(
        lambda: lane.take(sealed, SID, 0, BIG, 0, BIG, bytearray(9), False, len(sealed) + 1),
        sealed,
    )
    flow = lane.flow
    flow.stream_id, flow.can_send = SID, 1
    flow.send_offset = 2**62 - 2  # the data would pass 2**62 - 1: FRAME_VALUE
    flow.send_limit = flow.conn_send_limit = 2**63
    _fail_and_resize(lambda: lane.flow_seal(data, 0.0), data)


@each_backend
def test_flow_seal_seals_every_byte(b: SimpleNamespace) -> None:
    lane = b.Lane(b.Aead(KEY), b.Aead(KEY))
    flow = lane.flow
    flow.stream_id, flow.can_send = SID, 1
    flow.send_limit = flow.conn_send_limit = BIG
    sealed = bytes(lane.flow_seal(words(bytes(range(40))), 0.0))
    assert flow.taken == 40
    assert sealed == b.Aead(KEY).seal_stream(0, SID, 0, bytes(range(40)))[0]


@each_backend
def test_a_failed_lane_send_leaves_no_export_of_the_data(b: SimpleNamespace) -> None:
    ours, theirs = socket.socketpair()
    with ours:
        ours.setblocking(False)
        theirs.close()
        lane = b.Lane(b.Aead(KEY), b.Aead(KEY))
        flow = lane.flow
        flow.stream_id, flow.can_send = SID, 1
        flow.send_limit = flow.conn_send_limit = BIG
        data = bytearray(b"x" * 100)
        with pytest.raises(OSError):
            try:
                lane.send(ours.fileno(), data)
            except OSError:
                data += b"y"  # the traceback is alive here
                raise
        assert len(data) == 101
