"""A stream lent to the lane (``Connection.lend``, ``dtp_flow_*``): the C calls and
their twins, the carrier I/O over real sockets, and that a connection lending its
streams at random moments delivers exactly the bytes the general path would."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.errors import LocalProtocolError
from dtp.native import core as _core
from dtp.native.core import MAX_STREAM_CHUNK
from dtp.native.types import (
    DUE,
    EOF,
    FRAME_MAX_DATA,
    FRAME_MAX_STREAM_DATA,
    FULL,
    NEED_MORE,
    OK,
    STOP,
    WAIT,
    WAKE,
)
from dtp.protocol._events import StreamDataReceived
from dtp.protocol.connection import Connection
from tests.support.backends import NATIVE, REFERENCE, require_native
from tests.support.pairs import connect

SID = 4
BIG = 1 << 40


def lent_pair(
    backend: SimpleNamespace,
    keys: tuple[bytes, bytes] | None = None,
    send_limit: int = BIG,
    conn_limit: int = BIG,
    credit: int = BIG,
) -> tuple[Any, Any]:
    """Two lanes whose flows talk to each other: ``a`` seals, ``b`` takes."""
    k1, k2 = keys or (os.urandom(32), os.urandom(32))
    a = backend.Lane(backend.Aead(k1), backend.Aead(k2))
    b = backend.Lane(backend.Aead(k2), backend.Aead(k1))
    for lane in (a, b):
        f = lane.flow
        f.stream_id = f.rx.stream_id = SID
        f.can_send = f.can_recv = f.take_credit = 1
        f.send_limit, f.conn_send_limit = send_limit, conn_limit
        f.rx.stream_limit = f.rx.conn_limit = BIG
        f.credit_offset, f.credit_conn = credit, BIG
    return a, b


def deliver(a: Any, b: Any, data: bytes, dst: bytearray) -> int:
    """Seal ``data`` on ``a`` and take it on ``b`` into ``dst``: the status."""
    records = bytes(a.flow_seal(data, 1.0))
    b.rview[: len(records)] = records
    status: int = b.flow_take(len(records), dst, 2.0)
    return status


# -- the calls -----------------------------------------------------------------------------


def test_seal_then_take_moves_the_bytes_and_counts(backend: SimpleNamespace) -> None:
    a, b = lent_pair(backend)
    dst = bytearray(1000)
    assert deliver(a, b, b"hello", dst) == OK
    assert bytes(dst[:5]) == b"hello"
    fa, fb = a.flow, b.flow
    assert (fa.taken, fa.send_offset, fa.conn_sent, fa.send_counter, fa.records_sent) == (
        5,
        5,
        5,
        1,
        1,
    )
    assert fa.wire_sent == fa.written == 12 + 4 + 5 + 16  # header, frame header, data, tag
    assert fa.last_sent == 1.0
    assert (fb.taken, fb.rx.offset, fb.rx.conn_received, fb.records_received) == (5, 5, 5, 1)
    assert fb.wire_received == fa.wire_sent and fb.last_received == 2.0
    assert deliver(a, b, b"world!", dst) == OK
    assert bytes(dst[:6]) == b"world!" and b.flow.rx.offset == 11


def test_seal_stays_within_both_send_limits(backend: SimpleNamespace) -> None:
    a, _ = lent_pair(backend)
    f = a.flow
    f.send_limit = 10
    f.conn_send_limit = 7
    a.flow_seal(b"x" * 100, 0.0)
    assert f.taken == 7 and f.send_offset == 7
    assert not a.flow_seal(b"x", 0.0) and f.taken == 0  # the connection's limit
    f.conn_send_limit = 100
    a.flow_seal(b"x" * 100, 0.0)
    assert f.taken == 3 and f.send_offset == 10  # the stream's
    f.send_limit = f.conn_send_limit = BIG
    f.can_send = 0
    assert not a.flow_seal(b"x", 0.0) and f.send_offset == 10
    f.can_send = 1
    assert not a.flow_seal(b"", 0.0)
    big = a.flow_seal(b"y" * (a.max_seal + 5000), 0.0)
    assert f.taken == a.max_seal and len(big) == f.written
    assert f.records_sent == 2 + a.max_seal // MAX_STREAM_CHUNK


def test_take_reports_credit_due(backend: SimpleNamespace) -> None:
    a, b = lent_pair(backend)
    b.flow.credit_offset = 8
    dst = bytearray(100)
    assert deliver(a, b, b"12345678", dst) == OK  # at the threshold, not past it
    assert deliver(a, b, b"9", dst) == DUE
    b.flow.credit_offset = BIG
    b.flow.credit_conn = 9
    assert deliver(a, b, b"0", dst) == DUE


def test_take_spills_and_stops(backend: SimpleNamespace) -> None:
    a, b = lent_pair(backend)
    small = bytearray(3)
    assert deliver(a, b, b"abcdef", small) == FULL
    assert bytes(small) == b"abc" and bytes(b.flow_spill()) == b"def"
    assert b.flow.taken == 3 and b.flow.rx.offset == 6
    b.flow.can_recv = 0
    assert deliver(a, b, b"gh", bytearray(10)) == STOP
    assert b.flow.rx.consumed == 0 and b.flow.rx.offset == 6
    b.flow.can_recv = 1
    records = bytes(a.flow_seal(b"ijkl", 0.0))
    b.rview[: len(records) - 1] = records[:-1]
    assert b.flow_take(len(records) - 1, bytearray(10), 0.0) == NEED_MORE
    assert b.flow.rx.consumed == 0


def _credit(a: Any, key: bytes, plain: bytes) -> bytes:
    """A record of ``a``'s sending side holding ``plain`` (its next counter)."""
    f = a.flow
    record = bytes(REFERENCE.Aead(key).seal(f.send_counter, [plain]))
    f.send_counter += 1
    return record


def _vi(value: int) -> bytes:
    """``value`` as a QUIC varint of 1, 2, 4 or 8 bytes (the smallest that holds it)."""
    for size, tag in ((1, 0), (2, 1), (4, 2), (8, 3)):
        if value < 1 << (8 * size - 2):
            raw = bytearray(value.to_bytes(size, "big"))
            raw[0] |= tag << 6
            return bytes(raw)
    raise ValueError(value)


def max_stream_data(sid: int, limit: int) -> bytes:
    return bytes([FRAME_MAX_STREAM_DATA]) + _vi(sid) + _vi(limit)


def max_data(limit: int) -> bytes:
    return bytes([FRAME_MAX_DATA]) + _vi(limit)


def test_take_takes_the_peers_credit_records(backend: SimpleNamespace) -> None:
    keys = os.urandom(32), os.urandom(32)
    a, b = lent_pair(backend, keys)
    fb = b.flow
    fb.send_limit, fb.conn_send_limit = 100, 200
    wire = bytes(a.flow_seal(b"abc", 1.0))
    wire += _credit(a, keys[0], max_stream_data(SID, 5000) + max_data(9000))
    wire += _credit(a, keys[0], max_stream_data(SID, 4000))  # (lower: changes nothing)
    wire += bytes(a.flow_seal(b"def", 1.0))
    b.rview[: len(wire)] = wire
    dst = bytearray(100)
    assert b.flow_take(len(wire), dst, 3.0) == OK
    assert bytes(dst[:6]) == b"abcdef" and fb.taken == fb.rx.taken == 6
    assert (fb.send_limit, fb.conn_send_limit) == (5000, 9000)
    assert (fb.rx.consumed, fb.rx.records, fb.rx.offset) == (len(wire), 4, 6)
    assert (fb.records_received, fb.wire_received, fb.last_received) == (4, len(wire), 3.0)
    # a credit record alone: taken, nothing for the reader
    wire = _credit(a, keys[0], max_data(1 << 40))
    b.rview[: len(wire)] = wire
    assert b.flow_take(len(wire), dst, 4.0) == OK
    assert fb.taken == 0 and fb.conn_send_limit == 1 << 40 and fb.rx.records == 1
    # ... and before a record the lane leaves, the take stops there
    other = _credit(a, keys[0], bytes([1]))  # a PING
    wire = _credit(a, keys[0], max_stream_data(SID, 6000)) + other
    b.rview[: len(wire)] = wire
    assert b.flow_take(len(wire), dst, 5.0) == STOP
    assert fb.send_limit == 6000 and fb.rx.consumed == len(wire) - len(other)
    # not where the connection has data waiting for credit: the general path takes it
    fb.take_credit = 0
    wire = _credit(a, keys[0], max_stream_data(SID, 7000))
    b.rview[: len(wire)] = wire
    assert b.flow_take(len(wire), dst, 6.0) == STOP
    assert fb.send_limit == 6000 and fb.rx.consumed == 0


@pytest.mark.parametrize(
    "plain",
    [
        max_stream_data(SID + 4, 5000),  # another stream's
        bytes([1]),  # a PING
        max_stream_data(SID, 5000) + bytes([1]),  # credit and more
        max_data(5000) + bytes([FRAME_MAX_DATA]),  # a frame cut short
        max_stream_data(SID, 5000)[:-1],
        max_data(5000) + bytes(4),  # padding
        max_data(5000) * 22,  # larger than a credit record is
    ],
    ids=["other-stream", "ping", "and-ping", "cut", "cut-stream", "padding", "large"],
)
def test_take_leaves_other_small_records(backend: SimpleNamespace, plain: bytes) -> None:
    keys = os.urandom(32), os.urandom(32)
    a, b = lent_pair(backend, keys)
    fb = b.flow
    fb.send_limit = fb.conn_send_limit = 100
    wire = _credit(a, keys[0], plain)
    b.rview[: len(wire)] = wire
    for _ in range(2):  # (the replay window did not advance: the same again)
        assert b.flow_take(len(wire), bytearray(10), 1.0) == STOP
        assert (fb.rx.consumed, fb.rx.records, fb.records_received) == (0, 0, 0)
        assert (fb.send_limit, fb.conn_send_limit) == (100, 100)


def test_take_leaves_a_forged_or_replayed_credit_record(backend: SimpleNamespace) -> None:
    keys = os.urandom(32), os.urandom(32)
    a, b = lent_pair(backend, keys)
    fb = b.flow
    fb.send_limit = 100
    record = _credit(a, keys[0], max_stream_data(SID, 5000))
    forged = record[:-1] + bytes([record[-1] ^ 1])
    b.rview[: len(forged)] = forged
    assert b.flow_take(len(forged), bytearray(10), 1.0) == STOP and fb.send_limit == 100
    b.rview[: len(record)] = record
    assert b.flow_take(len(record), bytearray(10), 1.0) == OK and fb.send_limit == 5000
    fb.send_limit = 100
    assert b.flow_take(len(record), bytearray(10), 1.0) == STOP and fb.send_limit == 100


def test_native_and_reference_take_credit_alike() -> None:
    require_native()
    keys = os.urandom(32), os.urandom(32)
    rng = random.Random(5)
    plains = [
        max_stream_data(SID, 7000) + max_data(8000),
        max_stream_data(SID, rng.randrange(1 << 30)),
        max_data(rng.randrange(1 << 62)),
        max_stream_data(SID + 4, 1),
        bytes([1]),
        max_data(3) * 30,
    ]
    outcomes = []
    for backend in (NATIVE, REFERENCE):
        a, b = lent_pair(backend, keys)
        b.flow.send_limit = b.flow.conn_send_limit = 10
        seen = []
        for plain in plains:
            wire = bytes(a.flow_seal(b"x" * 50, 1.0)) + _credit(a, keys[0], plain)
            wire += bytes(a.flow_seal(b"y" * 20, 1.0))
            b.rview[: len(wire)] = wire
            status = b.flow_take(len(wire), bytearray(100), 2.0)
            fb = b.flow
            seen.append((status, fb.send_limit, fb.conn_send_limit, fb.rx.consumed, fb.rx.records))
            # what the lane left is the general path's: the next record starts afresh
            b.flow.rx.offset = a.flow.send_offset
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1]


def test_take_rejects_misuse(backend: SimpleNamespace) -> None:
    _, b = lent_pair(backend)
    with pytest.raises(LocalProtocolError):
        b.flow_take(len(b.rview) + 1, bytearray(10), 0.0)
    with pytest.raises(LocalProtocolError):
        b.flow_take(0, b"read-only", 0.0)  # type: ignore[arg-type]
    b.flow.rx.stream_id = SID + 1
    with pytest.raises(LocalProtocolError):
        b.flow_take(0, bytearray(10), 0.0)


@given(
    sizes=st.lists(st.integers(0, 40_000), min_size=1, max_size=6),
    dst_sizes=st.lists(st.integers(0, 50_000), min_size=6, max_size=6),
    send_limit=st.integers(0, 120_000),
    conn_limit=st.integers(0, 120_000),
    credit=st.integers(0, 120_000),
    cut=st.integers(0, 40),
)
@settings(max_examples=100, deadline=None)
def test_native_and_reference_flows_agree(
    sizes: list[int],
    dst_sizes: list[int],
    send_limit: int,
    conn_limit: int,
    credit: int,
    cut: int,
) -> None:
    require_native()
    keys = os.urandom(32), os.urandom(32)
    outcomes = []
    for backend in (NATIVE, REFERENCE):
        a, b = lent_pair(backend, keys, send_limit, conn_limit, credit)
        seen = []
        for size, dst_size in zip(sizes, dst_sizes, strict=False):
            records = bytes(a.flow_seal(bytes([size % 251]) * size, 1.0))
            records = records[: max(0, len(records) - cut)]
            b.rview[: len(records)] = records
            dst = bytearray(dst_size)
            status = b.flow_take(len(records), dst, 2.0)
            fa, fb = a.flow, b.flow
            seen.append(
                (
                    records,
                    status,
                    bytes(dst[: fb.taken]),
                    bytes(b.flow_spill()) if status == FULL else b"",
                    [getattr(fa, k) for k in ("taken", "written", "send_offset", "send_counter")],
                    [getattr(fb.rx, k) for k in ("offset", "consumed", "records", "taken")],
                    (fb.records_received, fb.wire_received),
                )
            )
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1]


@given(
    sizes=st.lists(st.integers(1, 40_000), min_size=1, max_size=6),
    cuts=st.lists(st.integers(1, 50_000), min_size=1, max_size=12),
    dst_size=st.sampled_from([10, 5000, 1 << 17]),
    credit=st.sampled_from([BIG, 30_000]),
)
@settings(max_examples=100, deadline=None)
def test_native_and_reference_feeds_agree(
    sizes: list[int], cuts: list[int], dst_size: int, credit: int
) -> None:
    """The carrier's bytes in arbitrary pieces: each backend keeps the same record
    pending and takes the same bytes."""
    require_native()
    keys = os.urandom(32), os.urandom(32)
    outcomes = []
    for backend in (NATIVE, REFERENCE):
        a, b = lent_pair(backend, keys, credit=credit)
        wire = b"".join(bytes(a.flow_seal(bytes([n % 251]) * n, 1.0)) for n in sizes)
        seen = []
        pos = 0
        for cut in cuts:
            start = b.pending
            n = min(cut, len(wire) - pos, len(b.rview) - start)
            b.rview[start : start + n] = wire[pos : pos + n]
            pos += n
            dst = bytearray(dst_size)
            got = b.feed(n, dst)
            status = b.status
            rx = b.flow.rx
            seen.append((got, status, b.pending, b.io.end, bytes(dst[: rx.taken]), rx.consumed))
            assert bytes(b.rview[: b.pending]) == wire[pos - b.pending : pos]
            if status not in (OK, NEED_MORE):
                break  # the general path's turn
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1]


def test_credit_due_keeps_the_pending_record(backend: SimpleNamespace) -> None:
    a, b = lent_pair(backend, credit=100)
    first = bytes(a.flow_seal(b"x" * 150, 1.0))
    wire = first + bytes(a.flow_seal(b"y" * 50, 1.0))
    upto = len(first) + 7
    b.rview[:upto] = wire[:upto]
    dst = bytearray(1000)
    assert b.feed(upto, dst) == 0 and b.status == DUE  # taken, but credit is owed
    assert b.flow.rx.taken == 150 and bytes(dst[:150]) == b"x" * 150
    assert b.pending == 7 and bytes(b.rview[:7]) == wire[len(first) : upto]


def test_a_record_in_pieces_stays_pending_until_whole(backend: SimpleNamespace) -> None:
    a, b = lent_pair(backend)
    first = bytes(a.flow_seal(b"x" * 100, 1.0))
    wire = first + bytes(a.flow_seal(b"y" * 50, 1.0))
    dst = bytearray(1000)
    b.rview[:5] = wire[:5]
    assert b.feed(5, dst) == 0 and b.status == NEED_MORE and b.pending == 5
    upto = len(first) + 7  # the first record and the start of the second
    b.rview[5:upto] = wire[5:upto]
    assert b.feed(upto - 5, dst) == 100 and b.status == NEED_MORE and b.pending == 7
    assert bytes(b.rview[:7]) == wire[len(first) : upto] and bytes(dst[:100]) == b"x" * 100
    rest = wire[upto:]
    b.rview[7 : 7 + len(rest)] = rest
    assert b.feed(len(rest), dst) == 50 and b.status == OK and b.pending == 0
    assert bytes(dst[:50]) == b"y" * 50


# -- carrier I/O over a real socket pair -----------------------------------------------------


@pytest.fixture
def socks() -> Any:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_send_and_read_over_a_socket(backend: SimpleNamespace, socks: Any) -> None:
    sa, sb = socks
    a, b = lent_pair(backend)
    queue: list[memoryview] = []
    before = time.monotonic()
    assert a.send(sa.fileno(), b"ping" * 10, queue) == 0  # nothing left
    assert a.io.sent == a.flow.written and not queue
    assert before <= a.flow.last_sent <= time.monotonic()  # the monotonic clock
    lock = threading.Lock()
    dst = bytearray(100)
    with lock:
        assert b.wait_read(lock, sb.fileno(), -1, 1000, dst, SID) == 40 and b.status == OK
        assert lock.locked()
    assert b.io.got == a.flow.written and bytes(dst[:40]) == b"ping" * 10
    assert before <= b.flow.last_received <= time.monotonic()
    assert b.recv(sb.fileno(), dst) == 0 and b.status == WAIT  # nothing more
    assert a.send(sa.fileno(), memoryview(b"pong" * 10)[5:]) == 0
    assert b.recv(sb.fileno(), 35) == 35 and bytes(b.own[:35]) == (b"pong" * 10)[5:]
    with pytest.raises(LocalProtocolError):
        b.recv(sb.fileno(), b.own_cap + 1)
    sa.shutdown(socket.SHUT_WR)
    assert b.recv(sb.fileno(), dst) == 0 and b.status == EOF


def test_the_wait_releases_the_lock_wakes_and_times_out(
    backend: SimpleNamespace, socks: Any
) -> None:
    sa, sb = socks
    a, b = lent_pair(backend)
    lock = threading.Lock()
    dst = bytearray(100)
    wake_r, wake_w = socket.socketpair()
    with wake_r, wake_w, lock:
        assert b.wait_read(lock, sb.fileno(), wake_r.fileno(), 0, dst, SID) == 0
        assert b.status == WAIT

        def sender() -> None:
            with lock:  # only possible while the reader waits
                a.send(sa.fileno(), b"late")

        t = threading.Thread(target=sender)
        t.start()
        assert b.wait_read(lock, sb.fileno(), wake_r.fileno(), 5000, dst, SID) == 4
        t.join()
        assert bytes(dst[:4]) == b"late"
        wake_w.send(b"!")
        a.send(sa.fileno(), b"more")
        assert b.wait_read(lock, sb.fileno(), wake_r.fileno(), 1000, dst, SID) == 0
        assert b.status == WAKE
        assert b.wait_read(lock, sb.fileno(), -1, 1000, dst, SID) == 4  # unread meanwhile
        assert bytes(dst[:4]) == b"more"
    bad = os.open(os.devnull, os.O_RDONLY)
    os.close(bad)  # a descriptor number nothing holds
    with pytest.raises(OSError):
        b.recv(bad, bytearray(10))


def test_an_exchange_sends_then_waits_for_the_answer(backend: SimpleNamespace, socks: Any) -> None:
    """exchange: the send, the caller's writer lock let go, then the wait (lock
    released meanwhile) and the read into the lane's own buffer; -1 - what is left
    when flow control held some back (no wait then)."""
    sa, sb = socks
    a, b = lent_pair(backend)
    lock, writers, peer_lock = threading.Lock(), threading.Lock(), threading.Lock()
    queue: list[memoryview] = []

    def answer() -> None:
        dst = bytearray(100)
        with peer_lock:
            n = b.wait_read(peer_lock, sb.fileno(), -1, 5000, dst, SID)
        b.send(sb.fileno(), bytes(dst[:n]).upper())

    peer = threading.Thread(target=answer)
    peer.start()
    writers.acquire()
    with lock:
        n = a.exchange(lock, sa.fileno(), -1, b"ping", queue, writers, 5000, 100, SID)
        assert lock.locked()
    peer.join()
    assert n == 4 and bytes(a.own[:4]) == b"PING" and a.status == OK
    assert not writers.locked() and not queue
    # no answer: the wait times out (WAIT), and the writer lock was let go all the same
    writers.acquire()
    with lock:
        assert a.exchange(lock, sa.fileno(), -1, b"quiet", queue, writers, 0, 100, SID) == 0
    assert a.status == WAIT and not writers.locked()
    # more than the lane's own buffer: refused before anything is sent, lock let go
    writers.acquire()
    with lock, pytest.raises(LocalProtocolError):
        a.exchange(lock, sa.fileno(), -1, b"x", queue, writers, 0, a.own_cap + 1, SID)
    assert not writers.locked()
    # flow control lets 10 bytes out: the other 15 come back to the caller, unwaited
    c, _ = lent_pair(backend, send_limit=10)
    with lock:
        assert c.exchange(lock, sa.fileno(), -1, b"y" * 25, queue, None, 5000, 100, SID) == -16
    assert c.flow.taken == 10 and not queue


def test_a_full_carrier_leaves_the_rest_to_queue(backend: SimpleNamespace, socks: Any) -> None:
    sa, sb = socks
    a, b = lent_pair(backend)
    sent = bytearray()
    data = os.urandom(a.max_seal)
    queue: list[memoryview] = []
    while not queue:
        assert a.send(sa.fileno(), data, queue) == 0
        sent += data
    assert len(queue) == 1  # only the call the carrier could not take whole
    queued = bytes(queue[0])
    assert a.io.sent + len(queued) == a.flow.written
    # the reader gets everything that went out, then the queued rest
    wire = bytearray()
    while True:
        try:
            chunk = sb.recv(1 << 20)
        except BlockingIOError:
            break
        wire += chunk
    wire += queued
    got = bytearray()
    dst = bytearray(len(sent))
    pos = 0
    while pos < len(wire):
        n = min(len(b.rview), len(wire) - pos)
        b.rview[:n] = wire[pos : pos + n]
        status = b.flow_take(n, memoryview(dst)[len(got) :], 0.0)
        got += dst[len(got) : len(got) + b.flow.taken]
        pos += b.flow.rx.consumed
        assert status in (OK, NEED_MORE)
    assert got == sent


def test_a_write_to_a_closed_carrier_raises(backend: SimpleNamespace, socks: Any) -> None:
    sa, sb = socks
    a, _ = lent_pair(backend)
    sb.close()
    with pytest.raises(OSError):
        for _ in range(10):  # the first write may still be accepted
            a.send(sa.fileno(), b"x" * 1000)
    assert a.io.err != 0


# -- a connection lending a stream ---------------------------------------------------------


class Receiver:
    """The receiving connection as dtp.socket drives it: the application's bytes of
    one stream in order, whichever path they take."""

    def __init__(self, conn: Connection, sid: int, handler: bool) -> None:
        self.conn = conn
        self.sid = sid
        self.app = bytearray()  # what the application read, in order
        self.buffered = bytearray()  # delivered by the general path, not yet read
        self.kept = 0  # reads that ended inside a record, kept by the lane
        self.resumed = 0  # loans that began inside a record the general path had begun
        if handler:
            conn.stream_data_handler = self._on_data

    def _on_data(self, stream_id: int, data: bytes | memoryview, end: bool) -> None:
        assert stream_id == self.sid
        self.buffered += data

    def drain_events(self) -> None:
        while (event := self.conn.next_event()) is not None:
            if isinstance(event, StreamDataReceived):
                assert event.stream_id == self.sid
                self.buffered += event.data

    def read_buffered(self, n: int) -> None:
        take = bytes(self.buffered[:n])
        del self.buffered[:n]
        self.app += take
        if take:
            self.conn.acknowledge_read(self.sid, len(take))

    def feed(self, chunk: bytes, dst_size: int, lend: bool, now: float) -> None:
        """Bytes from the carrier, as Engine.recv_lent (``lend``: read by read, each at
        most what the lane's buffer has room for) or the general path."""
        self.drain_events()
        lane = self.conn.lend(self.sid, now, not self.buffered) if lend else None
        if lane is None or not self.conn.lent_can_recv:
            self.conn.receive_data(chunk, now)
            self.drain_events()
            return
        view = memoryview(chunk)
        self.resumed += lane.pending > 0
        while view:
            start = lane.pending
            n = min(len(view), len(lane.rview) - start)
            lane.rview[start : start + n] = view[:n]
            view = view[n:]
            dst = bytearray(dst_size)
            got = lane.feed(n, dst)
            status = lane.status
            if status in (OK, NEED_MORE):
                self.app += dst[:got]
                self.kept += lane.pending > 0
                continue
            rx = lane.flow.rx
            self.app += dst[: rx.taken]
            if status == DUE:
                self.conn.take_back(now)  # the pending bytes go with the stream
            else:
                spill = lane.flow_spill() if status == FULL and rx.spill_len else b""
                self.conn.take_back(now, spill, lane.rview[rx.consumed : lane.io.end])
            self.conn.receive_data(view, now)
            break
        self.drain_events()


@pytest.mark.parametrize("handler", [False, True], ids=["events", "handler"])
@pytest.mark.parametrize("seed", range(8))
def test_lending_at_random_delivers_what_was_sent(seed: int, handler: bool) -> None:
    rng = random.Random(seed)
    c, s, _ = connect(stream_window=64 * 1024, connection_window=128 * 1024)
    sender, receiver = c.conn, s.conn
    sid = sender.open_stream()
    sender.send_stream_data(sid, b"open")
    wire_to_receiver = bytearray(sender.data_to_send(0.0))
    rx = Receiver(receiver, sid, handler)
    sent = bytearray(b"open")
    now = 1.0
    for _ in range(300):
        now += 0.001
        op = rng.random()
        if op < 0.45:
            data = os.urandom(rng.choice([1, 100, 5000, 20_000, 70_000]))
            lane = sender.lend(sid, now) if rng.random() < 0.7 else None
            taken = 0
            if lane is not None:
                wire_to_receiver += lane.flow_seal(data, now)
                taken = lane.flow.taken
            if taken < len(data) and rng.random() < 0.5:
                sender.send_stream_data(sid, data[taken:])
                taken = len(data)
            sent += data[:taken]
        elif op < 0.85 and wire_to_receiver:
            n = rng.randint(1, len(wire_to_receiver))
            chunk = bytes(wire_to_receiver[:n])
            del wire_to_receiver[:n]
            rx.feed(chunk, rng.choice([1, 50, 4096, 16_384, 1 << 17]), rng.random() < 0.8, now)
        else:
            rx.read_buffered(rng.choice([10, 1000, 1 << 20]))
        # the general path's output (credit updates, queued data) both ways
        wire_to_receiver += sender.data_to_send(now)
        back = receiver.data_to_send(now)
        if back:
            sender.receive_data(back, now)
    # everything still on the way arrives
    for _ in range(200):
        wire_to_receiver += sender.data_to_send(now)
        if wire_to_receiver:
            chunk = bytes(wire_to_receiver)
            wire_to_receiver.clear()
            rx.feed(chunk, 1 << 20, True, now)
        rx.read_buffered(1 << 30)
        back = receiver.data_to_send(now)
        if back:
            sender.receive_data(back, now)
        if len(rx.app) == len(sent) and not wire_to_receiver:
            break
    assert rx.app == sent
    assert rx.kept and rx.resumed, (rx.kept, rx.resumed)
    assert not sender.closed and not receiver.closed
    # the counters came back from the loans: everything sent was counted once
    receiver.take_back(now)
    sender.take_back(now)
    assert receiver.usage[0] == len(sent) + sender.usage[0] - len(sent)


def test_lend_waits_for_what_must_go_first() -> None:
    c, _s, _ = connect()
    conn = c.conn
    sid = conn.open_stream()
    conn.send_stream_data(sid, b"queued")
    assert conn.lend(sid, 1.0) is None  # records waiting in the connection
    conn.data_to_send(1.0)
    lane = conn.lend(sid, 1.0)
    assert lane is not None and conn.lent_stream_id == sid
    assert conn.lend(sid, 1.0) is lane
    assert conn.lend(sid + 4, 1.0) is None and conn.lent_lane is None  # unknown stream
    conn.ping()
    assert conn.lend(sid, 1.0) is None


def _lent_beside_another_stream() -> tuple[Connection, int, int, Any]:
    """A client whose stream ``sid`` (a byte sent) is lent, with a second stream
    ``other`` open and nothing queued: (the connection, sid, other, the lane)."""
    c, _s, _ = connect(connection_window=64 * 1024)
    conn = c.conn
    sid, other = conn.open_stream(), conn.open_stream()
    conn.send_stream_data(sid, b"a")
    conn.data_to_send(1.0)
    return conn, sid, other, conn.lend(sid, 1.0)


def test_a_loan_takes_credit_only_while_no_stream_has_bytes_queued() -> None:
    """The lane may take the peer's credit records (``flow.take_credit``) only while no
    stream waits for that credit: it raises no event, so queued bytes would stall."""
    conn, sid, other, lane = _lent_beside_another_stream()
    assert lane is not None and conn.lent_can_recv
    assert lane.flow.can_send and lane.flow.take_credit == 1
    conn.send_stream_data(other, os.urandom(128 * 1024))  # past the connection's credit
    conn.data_to_send(2.0)
    assert conn.send_buffered(other) > 0  # queued, waiting for MAX_DATA
    lane = conn.lend(sid, 2.0)
    assert lane is not None and lane.flow.can_send and conn.lent_can_recv
    assert lane.flow.take_credit == 0


def test_nothing_is_queued_while_a_loan_that_takes_credit_lasts() -> None:
    """A loan that may take credit began with no stream's bytes queued, and queuing
    bytes on any stream ends it first: a paid client's per-send check on the lent
    stream counts nothing queued while ``flow.take_credit`` holds (DTPSocket.sendall)."""
    conn, _sid, other, lane = _lent_beside_another_stream()
    assert lane is not None and lane.flow.take_credit == 1
    assert conn.send_buffered() == 0
    conn.send_stream_data(other, os.urandom(128 * 1024))  # past the connection's credit
    assert conn.lent_lane is None and conn.lent_stream_id is None
    assert conn.send_buffered(other) > 0


def test_a_loan_ends_at_any_other_call_with_the_state_back() -> None:
    c, s, _ = connect()
    conn = c.conn
    sid = conn.open_stream()
    conn.send_stream_data(sid, b"a")
    first = conn.data_to_send(1.0)
    before = (conn.bytes_sent, conn.records_sent)
    lane = conn.lend(sid, 1.0)
    records = bytes(lane.flow_seal(b"b" * 10, 2.0))
    assert conn.usage[0] == 11  # read from the loan, which goes on
    assert conn.lent_lane is lane
    timer = conn.get_timer()
    assert timer is not None and timer <= 2.0 + conn.config.keepalive_interval
    assert conn.lent_lane is lane  # get_timer does not end it
    conn.acknowledge_read(sid, 0)  # any other call ends it
    assert conn.lent_lane is None
    assert conn.bytes_sent == before[0] + len(records)
    assert conn.records_sent == before[1] + 1
    conn.send_stream_data(sid, b"c")
    s.conn.receive_data(first + records + conn.data_to_send(3.0), 3.0)
    got = b"".join(
        e.data for e in iter(s.conn.next_event, None) if isinstance(e, StreamDataReceived)
    )
    assert got == b"a" + b"b" * 10 + b"c"


def test_native_io_calls_check_their_arguments() -> None:
    require_native()
    lane = _core.NativeLane(_core.NativeAead(os.urandom(32)), _core.NativeAead(os.urandom(32)))
    lock = threading.Lock()
    with lock, pytest.raises(LocalProtocolError):
        lane.wait_read(lock, -1, -1, 0, bytearray(1), 0)
    with pytest.raises(LocalProtocolError):
        lane.recv(-1, bytearray(10))
    with pytest.raises(LocalProtocolError):
        lane.send(-1, b"x")
    with pytest.raises(LocalProtocolError):
        lane.recv(0, b"read-only")
    with pytest.raises(LocalProtocolError):
        lane.feed(len(lane.rview) + 1, bytearray(10))
    with pytest.raises(LocalProtocolError):
        lane.pending = len(lane.rview)


def test_a_read_after_the_loan_ended_meanwhile_loses_nothing() -> None:
    """An adapter that waited without the lock may read with a loan that another
    thread ended: the lane takes nothing, and what was read goes the general way."""
    c, s, _ = connect()
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"first")
    s.conn.receive_data(c.conn.data_to_send(1.0), 1.0)
    s.drain()
    lane = s.conn.lend(sid, 1.0)
    assert lane is not None and s.conn.lent_can_recv
    s.conn.acknowledge_read(sid, 0)  # another thread ends the loan
    c.conn.send_stream_data(sid, b"second")
    wire = c.conn.data_to_send(2.0)
    lane.rview[: len(wire)] = wire
    assert lane.flow_take(len(wire), bytearray(100), 2.0) == STOP
    assert lane.flow.rx.consumed == 0
    s.conn.take_back(2.0, b"", lane.rview[: len(wire)])
    s.drain()
    assert bytes(s.data[sid]) == b"firstsecond"


def test_loans_move_between_threads_and_streams_without_loss() -> None:
    """Real sockets: one thread writes a stream while another reads its echo, and a
    third keeps opening other streams for ping-pongs, so the loan moves between
    streams and threads all the time. Every byte arrives, in order."""
    import hashlib

    import dtp.socket
    from dtp.identity.keys import HostIdentity

    identity = HostIdentity.generate()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)

    def echo(sock: dtp.socket.DTPSocket) -> None:
        buf = bytearray(1 << 16)
        while n := sock.recv_into(buf):
            sock.sendall(memoryview(buf)[:n])

    def handle(sock: dtp.socket.DTPSocket) -> None:
        def streams() -> None:
            while True:
                try:
                    extra = sock.accept_stream()
                except Exception:
                    return
                threading.Thread(target=echo, args=(extra,), daemon=True).start()

        threading.Thread(target=streams, daemon=True).start()
        echo(sock)

    threading.Thread(target=server.serve_forever, args=(handle,), daemon=True).start()
    rng = random.Random(7)
    payload = os.urandom(4 << 20)
    try:
        with dtp.socket.create_connection(
            server.address, server_key=identity.noise_public, timeout=30
        ) as sock:
            digest = hashlib.sha256()
            got = [0]

            def reader() -> None:
                while got[0] < len(payload):
                    data = sock.recv(rng.choice([7, 1000, 1 << 16, 1 << 20]))
                    if not data:
                        return
                    digest.update(data)
                    got[0] += len(data)

            t = threading.Thread(target=reader)
            t.start()
            pos = 0
            rounds = 0
            while pos < len(payload):
                size = rng.choice([1, 100, 5000, 70_000])
                sock.sendall(payload[pos : pos + size])
                pos += size
                if rng.random() < 0.05:
                    with sock.open_stream() as other:
                        for _ in range(3):
                            message = os.urandom(rng.randint(1, 3000))
                            other.sendall(message)
                            back = b""
                            while len(back) < len(message):
                                back += other.recv(len(message) - len(back))
                            assert back == message
                    rounds += 1
            t.join(60)
            assert not t.is_alive()
            assert got[0] == len(payload)
            assert digest.digest() == hashlib.sha256(payload).digest()
            assert rounds > 0
    finally:
        server.close()


def test_a_wait_does_not_read_for_a_stream_lent_meanwhile(
    backend: SimpleNamespace, socks: Any
) -> None:
    """While a reader waits without the lock, another thread may lend the flow to
    another stream: the reader must not take that stream's bytes."""
    sa, sb = socks
    a, b = lent_pair(backend)
    lock = threading.Lock()
    dst = bytearray(100)
    with lock:

        def other_stream() -> None:
            with lock:
                b.flow.stream_id = b.flow.rx.stream_id = SID + 4  # lent elsewhere
                a.send(sa.fileno(), b"not yours")

        t = threading.Thread(target=other_stream)
        t.start()
        assert b.wait_read(lock, sb.fileno(), -1, 5000, dst, SID) == 0
        assert b.status == WAKE
        t.join()
    assert b.io.got == 0 and dst == bytearray(100)
    assert sb.recv(100)  # still in the socket for the general path
