"""The established-stream fast path (``dtp_rx_take`` / ``Lane``): what it takes, where it
stops, C-vs-twin agreement, and that a connection using it delivers exactly what the
general path would."""

from __future__ import annotations

import gc
import os
import random
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.errors import DecryptionError, LocalProtocolError
from dtp.native import core as _core
from dtp.native.core import MAX_STREAM_CHUNK
from dtp.native.types import (
    FRAME_MAX_DATA,
    FRAME_STREAM,
    FULL,
    NEED_MORE,
    OK,
    STOP,
    RawFrame,
)
from dtp.protocol._events import StreamDataReceived
from dtp.protocol.connection import Connection, _fast_paths
from tests.native.lanes import BIG, SID, take
from tests.support.backends import NATIVE, REFERENCE, require_native
from tests.support.pairs import connect


def lane_pair(backend: SimpleNamespace, key: bytes) -> tuple[Any, Any]:
    """A sending Aead (to make records) and a lane whose receive side opens them."""
    sender = backend.Aead(key)
    lane = backend.Lane(backend.Aead(os.urandom(32)), backend.Aead(key))
    return sender, lane


def control_record(sender: Any, counter: int) -> bytes:
    plain = _core.encode_frames([RawFrame(FRAME_MAX_DATA, 1 << 20)])
    sealed: bytes = sender.seal(counter, [plain])
    return sealed


def test_takes_a_run_of_stream_records(backend: SimpleNamespace) -> None:
    sender, lane = lane_pair(backend, os.urandom(32))
    data = os.urandom(50_000)
    sealed, n = sender.seal_stream(0, SID, 0, data)
    dst = bytearray(60_000)
    result = take(lane, sealed, dst)
    assert (result.status, result.consumed, result.records, result.taken) == (
        OK,
        len(sealed),
        n,
        len(data),
    )
    assert bytes(dst[: len(data)]) == data and result.spill == b""


def _varint(value: int, size: int) -> bytes:
    """``value`` as a QUIC varint of exactly ``size`` bytes (1, 2, 4 or 8): longer than
    needed is valid, only not what our sender writes."""
    prefix = {1: 0, 2: 1, 4: 2, 8: 3}[size]
    return (value | prefix << (8 * size - 2)).to_bytes(size, "big")


@pytest.mark.parametrize(
    ("sizes", "sid", "taken"),
    [
        ((1, 2, 2), SID, True),  # the fuzzer's case: an offset written in two bytes
        ((2, 4, 2), SID, True),
        ((8, 8, 8), SID, True),  # a stream ID longer than the header predicted
        ((8, 1, 2), SID + 4, False),  # another stream's, however written: not taken
        ((2, 2, 2), SID + 4, False),
    ],
)
@pytest.mark.parametrize("length", [700, 3000])
def test_stream_records_with_longer_varints(
    backend: SimpleNamespace, sizes: tuple[int, int, int], sid: int, taken: bool, length: int
) -> None:
    """A STREAM frame whose varints are longer than needed is taken as any other (the
    C core's predicted-header path falls back to a full parse, as its twin parses), in
    records on either side of the C core's limit for opening a record whole (aead.c,
    SMALL_MAX)."""
    sender, lane = lane_pair(backend, os.urandom(32))
    first, first_n = sender.seal_stream(0, SID, 0, b"12345")
    data = os.urandom(length)
    plain = (
        bytes([FRAME_STREAM])
        + _varint(sid, sizes[0])
        + _varint(5, sizes[1])
        + _varint(len(data), sizes[2])
        + data
    )
    blob = first + sender.seal(first_n, [plain])
    dst = bytearray(4096)
    result = take(lane, blob, dst)
    if taken:
        assert (result.status, result.consumed, result.records) == (OK, len(blob), 2)
        assert bytes(dst[: result.taken]) == b"12345" + data
    else:
        assert (result.status, result.consumed, result.records) == (STOP, len(first), 1)
        assert bytes(dst[: result.taken]) == b"12345"


def test_the_lane_keeps_its_aeads_alive(backend: SimpleNamespace) -> None:
    """The C lane (dtp_lane) holds raw pointers to the AEADs' contexts: the lane object
    keeps their owners alive, so a lane whose AEADs nobody else references still seals
    and opens after collections (a freed context would be a use-after-free, which the
    sanitizer run of this file reports)."""
    send_key, recv_key = os.urandom(32), os.urandom(32)
    lane = backend.Lane(backend.Aead(send_key), backend.Aead(recv_key))
    gc.collect()
    churn = [backend.Aead(os.urandom(32)) for _ in range(64)]  # reuses freed memory, if any
    del churn
    gc.collect()
    data = os.urandom(3000)
    sealed, n = lane.seal(7, SID, 0, data)
    assert (bytes(sealed), n) == backend.Aead(send_key).seal_stream(7, SID, 0, data)
    incoming = backend.Aead(recv_key).seal_stream(0, SID, 0, data)[0]
    dst = bytearray(4000)
    result = take(lane, incoming, dst)
    assert (result.status, result.taken) == (OK, len(data))
    assert bytes(dst[: len(data)]) == data


def test_small_buffer_spills_the_rest_of_a_record(backend: SimpleNamespace) -> None:
    sender, lane = lane_pair(backend, os.urandom(32))
    data = os.urandom(1000)
    sealed = sender.seal_stream(0, SID, 0, data)[0] + sender.seal_stream(1, SID, 1000, data)[0]
    dst = bytearray(300)
    result = take(lane, sealed, dst)
    assert (result.status, result.records, result.taken) == (FULL, 1, 300)
    assert bytes(dst) == data[:300] and bytes(result.spill) == data[300:]
    # the second record is untouched: the next call takes it at the advanced offset
    second = take(lane, sealed[result.consumed :], bytearray(2000), offset=1000)
    assert (second.status, second.taken) == (OK, 1000)


def test_a_kept_destination_takes_each_read_and_others_are_not_held(
    backend: SimpleNamespace,
) -> None:
    """``keep``: the caller's long-lived buffer (a connection's spare read buffer) is
    written through the pointer kept from the first take into it, read after read;
    a buffer given without ``keep`` is held by no take once it returns (the caller may
    resize it)."""
    sender, lane = lane_pair(backend, os.urandom(32))
    spare = memoryview(bytearray(4000))
    offset = 0
    for counter in range(3):
        data = os.urandom(500 + counter)
        sealed = sender.seal_stream(counter, SID, offset, data)[0]
        if counter == 1:  # another buffer between two reads into the kept one
            other = bytearray(4000)
            before = bytes(spare)
            sealed2 = sender.seal_stream(counter + 10, SID + 4, 0, b"x")[0]
            assert lane.take(sealed2, SID + 4, 0, BIG, 0, BIG, other).taken == 1
            other.extend(b"more")  # (no export of it left: resizable)
            assert bytes(spare) == before
        result = lane.take(sealed, SID, offset, BIG, offset, BIG, spare, True)
        assert (result.status, result.taken) == (OK, len(data))
        assert bytes(spare[: len(data)]) == data
        offset += len(data)


def test_a_read_buffer_given_with_its_size_takes_only_that_read(
    backend: SimpleNamespace,
) -> None:
    """``size``: the records are ``buf[:size]``, ``buf`` the caller's long-lived read
    buffer (an asyncio connection's, shared by its thread), stale bytes after them; the
    native lane keeps its pointer for the next read into it. A size past its end is
    refused, on either backend."""
    sender, lane = lane_pair(backend, os.urandom(32))
    rbuf = memoryview(bytearray(os.urandom(20_000)))
    offset = 0
    for counter in range(3):
        data = os.urandom(500 + 3000 * counter)
        sealed = sender.seal_stream(counter, SID, offset, data)[0]
        if counter == 1:  # a take from another buffer between two from the kept one
            other = bytearray(sender.seal_stream(counter + 10, SID + 4, 0, b"x")[0])
            assert lane.take(other, SID + 4, 0, BIG, 0, BIG, bytearray(10)).taken == 1
            other.extend(b"more")  # (no export of it left: resizable)
        # (what follows the read: a record's start, so one read too far would not stop)
        rbuf[: len(sealed) + 12] = sealed + sealed[:12]
        dst = bytearray(10_000)
        result = lane.take(rbuf, SID, offset, BIG, offset, BIG, dst, False, len(sealed))
        assert (result.status, result.consumed, result.taken) == (OK, len(sealed), len(data))
        assert bytes(dst[: len(data)]) == data
        if backend is NATIVE:
            assert _core._kept_src[0][0] is rbuf
        offset += len(data)
    empty = lane.take(rbuf, SID, offset, BIG, offset, BIG, bytearray(10), False, 0)
    assert (empty.status, empty.consumed, empty.records) == (OK, 0, 0)
    for size in (-1, len(rbuf) + 1):
        with pytest.raises(LocalProtocolError):
            lane.take(rbuf, SID, offset, BIG, offset, BIG, bytearray(10), False, size)


def test_a_number_outside_uint64_raises_and_holds_no_buffer() -> None:
    """The C lane passes the stream's numbers to ``dtp_rx_take_counts`` as arguments:
    one outside uint64_t raises OverflowError, and the caller's buffers are released
    before it propagates (its traceback keeps the frame: an export held there would
    stop the caller resizing them while it handles the error)."""
    require_native()
    sender, lane = lane_pair(NATIVE, os.urandom(32))
    buf = bytearray(sender.seal_stream(0, SID, 0, b"x" * 10)[0])
    dst = bytearray(100)
    for limits in ({"stream_limit": 1 << 64}, {"conn_received": -1}):
        with pytest.raises(OverflowError) as info:
            take(lane, buf, dst, **limits)
        assert info.tb is not None
        buf.extend(b"!")  # (no export of either left: resizable)
        dst.extend(b"!")
        del buf[-1:], dst[-1:]
    result = take(lane, buf, dst)
    assert (result.status, result.taken) == (OK, 10) and dst[:10] == b"x" * 10


def test_full_buffer_stops_between_records(backend: SimpleNamespace) -> None:
    sender, lane = lane_pair(backend, os.urandom(32))
    sealed = sender.seal_stream(0, SID, 0, b"a" * 10)[0] + sender.seal_stream(1, SID, 10, b"b")[0]
    result = take(lane, sealed, bytearray(10))
    assert (result.status, result.records, result.taken, result.spill) == (FULL, 1, 10, b"")


def test_partial_record_needs_more(backend: SimpleNamespace) -> None:
    sender, lane = lane_pair(backend, os.urandom(32))
    first = sender.seal_stream(0, SID, 0, b"x" * 100)[0]
    second = sender.seal_stream(1, SID, 100, b"y" * 100)[0]
    result = take(lane, first + second[:50], bytearray(1000))
    assert (result.status, result.consumed, result.taken) == (NEED_MORE, len(first), 100)
    assert take(lane, second[:5], bytearray(10), offset=100).status == NEED_MORE


def _stops(backend: SimpleNamespace, record: bytes, **kw: int) -> None:
    """``record`` after one good record: the lane takes the good one and stops before
    ``record`` without advancing the replay window for it."""
    sender, lane = lane_pair(backend, KEY)
    good = sender.seal_stream(0, SID, 0, b"g" * 10)[0]
    result = take(lane, good + record, bytearray(100), **kw)
    summary = (result.status, result.consumed, result.records, result.taken)
    assert summary == (STOP, len(good), 1, 10)


KEY = os.urandom(32)


@pytest.mark.parametrize(
    "case",
    ["other_stream", "wrong_offset", "fin", "empty", "control", "handshake", "bad_header"],
)
def test_stops_before_records_for_the_general_path(backend: SimpleNamespace, case: str) -> None:
    sender = backend.Aead(KEY)
    sender.seal_stream(0, SID, 0, b"g" * 10)  # the counter the helper's good record uses
    record = {
        "other_stream": lambda: sender.seal_stream(1, SID + 4, 0, b"o")[0],
        "wrong_offset": lambda: sender.seal_stream(1, SID, 11, b"o")[0],
        "fin": lambda: sender.seal_stream(1, SID, 10, b"o", fin=True)[0],
        "empty": lambda: sender.seal_stream(1, SID, 10, b"")[0],
        "control": lambda: control_record(sender, 1),
        "handshake": lambda: _core.write_record_header(1, 0, 3, 0) + b"abc",
        "bad_header": lambda: b"\x10\x01" + bytes(30),
    }[case]()
    _stops(backend, record)


def test_stops_at_each_flow_control_limit(backend: SimpleNamespace) -> None:
    sender = backend.Aead(KEY)
    sender.seal_stream(0, SID, 0, b"g" * 10)
    record = sender.seal_stream(1, SID, 10, b"z" * 10)[0]
    _stops(backend, record, stream_limit=19)
    _stops(backend, record, conn_received=100, conn_limit=119)
    # exactly at both limits is allowed
    lane = backend.Lane(backend.Aead(os.urandom(32)), backend.Aead(KEY))
    result = take(lane, record, bytearray(10), offset=10, stream_limit=20, conn_limit=10)
    assert (result.status, result.taken) == (OK, 10)


def test_tampered_record_is_left_for_the_general_path(backend: SimpleNamespace) -> None:
    sender, lane = lane_pair(backend, KEY)
    good = sender.seal_stream(0, SID, 0, b"g" * 10)[0]
    bad = bytearray(sender.seal_stream(1, SID, 10, b"h" * 10)[0])
    bad[-1] ^= 1
    result = take(lane, good + bytes(bad), bytearray(100))
    assert (result.status, result.consumed, result.taken) == (STOP, len(good), 10)
    opened = lane._recv.open_frames(bytes(bad))
    assert isinstance(opened.error, DecryptionError)


@pytest.mark.parametrize("size", [505, 600, 1015, 1100, 16000, MAX_STREAM_CHUNK])
def test_long_records_are_taken_and_refused_whole(backend: SimpleNamespace, size: int) -> None:
    """A record decrypted whole through a stack buffer (up to aead.c's SMALL_MAX) or as
    a head there (with the frame header) and the rest straight to the destination
    (aead.c, first_len): taken whole, and refused whole when a bit of its head or of its
    rest is flipped -- nothing of it left in the destination."""
    data = os.urandom(size)
    for flip in (None, 12 + 3, 12 + 100, -20):
        sender, lane = lane_pair(backend, KEY)
        record = bytearray(sender.seal_stream(0, SID, 0, data)[0])
        if flip is not None:
            record[flip] ^= 4
        dst = bytearray(b"\xee" * (size + 10))
        result = take(lane, bytes(record), dst)
        if flip is None:
            assert (result.status, result.taken) == (OK, size)
            assert dst[:size] == data
        else:
            assert (result.status, result.taken, result.consumed) == (STOP, 0, 0)
            assert data[:64] not in dst and data[-64:] not in dst


def test_replayed_record_is_left_for_the_general_path(backend: SimpleNamespace) -> None:
    sender, lane = lane_pair(backend, KEY)
    good = sender.seal_stream(0, SID, 0, b"g" * 10)[0]
    assert take(lane, good, bytearray(100)).taken == 10
    again = take(lane, good, bytearray(100), offset=10)
    assert (again.status, again.consumed, again.records) == (STOP, 0, 0)
    assert lane._recv.open_frames(good).records[0].replayed


def test_a_record_stopped_for_its_frames_opens_on_the_general_path(
    backend: SimpleNamespace,
) -> None:
    sender, lane = lane_pair(backend, KEY)
    records = sender.seal_stream(0, SID, 0, b"a")[0] + control_record(sender, 1)
    result = take(lane, records, bytearray(10))
    assert result.status == STOP
    opened = lane._recv.open_frames(records[result.consumed :])
    assert opened.error is None
    assert [f.type for f in opened.records[0].frames] == [FRAME_MAX_DATA]


def test_seal_is_dtp_stream_seal_and_bounded(backend: SimpleNamespace) -> None:
    key = os.urandom(32)
    lane = backend.Lane(backend.Aead(key), backend.Aead(os.urandom(32)))
    data = os.urandom(70_000)
    sealed, n = lane.seal(7, SID, 123, data)
    assert (bytes(sealed), n) == backend.Aead(key).seal_stream(7, SID, 123, data)
    with pytest.raises(LocalProtocolError):
        lane.seal(0, SID, 0, bytes(lane.max_seal + 1))
    with pytest.raises(LocalProtocolError):
        backend.Lane(backend.Aead(key), backend.Aead(key), seal_cap=100)


def test_seal_with_a_head_is_the_seal_of_head_and_data_joined(backend: SimpleNamespace) -> None:
    key = os.urandom(32)
    lane = backend.Lane(backend.Aead(key), backend.Aead(os.urandom(32)))
    for size in (0, 100, 70_000):
        data = os.urandom(size)
        head = size.to_bytes(4, "big")
        sealed, n = lane.seal(7, SID, 123, data, head)
        assert (bytes(sealed), n) == backend.Aead(key).seal_stream(7, SID, 123, head + data)
    # the head counts toward what one seal takes
    with pytest.raises(LocalProtocolError):
        lane.seal(0, SID, 0, bytes(lane.max_seal - 3), b"\0\0\0\0")
    # a head in any bytes-like form seals as its bytes, on either backend
    for kind in (bytearray, memoryview):
        sealed, n = lane.seal(9, SID, 0, b"data", kind(b"head"))
        assert (bytes(sealed), n) == backend.Aead(key).seal_stream(9, SID, 0, b"headdata")


# -- the C core and its twin agree ----------------------------------------------------------

PIECES = ["good", "other", "offset", "fin", "control", "tamper", "replay", "empty"]


@given(
    pieces=st.lists(st.sampled_from(PIECES), max_size=8),
    sizes=st.lists(st.integers(1, 20_000), min_size=8, max_size=8),
    cut=st.integers(0, 200),
    dst_size=st.integers(0, 40_000),
    stream_slack=st.integers(0, 60_000),
    conn_slack=st.integers(0, 60_000),
    stale=st.one_of(st.none(), st.integers(0, 100)),
)
@settings(max_examples=150, deadline=None)
def test_native_and_reference_take_agree(
    pieces: list[str],
    sizes: list[int],
    cut: int,
    dst_size: int,
    stream_slack: int,
    conn_slack: int,
    stale: int | None,
) -> None:
    require_native()
    key = os.urandom(32)
    sender = _core.NativeAead(key)
    blob = bytearray()
    counter = offset = 0
    last = b""
    for piece, size in zip(pieces, sizes, strict=False):
        data = bytes([counter % 251]) * size
        if piece == "replay" and last:
            blob += last
            continue
        if piece == "control":
            record = control_record(sender, counter)
        else:
            sid = SID + 4 if piece == "other" else SID
            at = offset + 1 if piece == "offset" else offset
            body = b"" if piece == "empty" else data[: min(size, 16_000)]
            record = sender.seal_stream(counter, sid, at, body, fin=piece == "fin")[0]
            if piece == "good":
                offset += len(body)
        if piece == "tamper":
            record = record[:-1] + bytes([record[-1] ^ 0x80])
        blob += record
        last = record
        counter += 1
    blob = blob[: max(0, len(blob) - cut)]
    outcomes = []
    for backend in (NATIVE, REFERENCE):
        lane = backend.Lane(backend.Aead(os.urandom(32)), backend.Aead(key))
        dst = bytearray(dst_size)
        if stale is None:
            result = lane.take(bytes(blob), SID, 0, stream_slack, 0, conn_slack, dst)
        else:  # (the blob read into a long-lived buffer, ``stale`` bytes after it)
            rbuf = memoryview(blob + bytes(blob[:stale]) + b"\xff" * stale)
            result = lane.take(rbuf, SID, 0, stream_slack, 0, conn_slack, dst, False, len(blob))
        rest = lane._recv.open_frames(bytes(blob[result.consumed :]))
        outcomes.append(
            (
                result.status,
                result.consumed,
                result.records,
                result.taken,
                bytes(result.spill),
                bytes(dst[: result.taken]),
                rest.consumed,
                rest.status,
                type(rest.error),
                [(r.counter, r.replayed, len(r.frames)) for r in rest.records],
                lane._recv.replay_top,
            )
        )
    assert outcomes[0] == outcomes[1]


# -- a connection using the lane delivers what the general path would ----------------------


def _feed(
    receiver: Connection,
    data: bytes,
    use_lane: bool,
    dst_size: int,
    got: bytearray,
    other: dict[int, bytearray],
    rbuf: memoryview | None = None,
) -> int:
    """Feed carrier bytes to ``receiver`` by the lane or the general path, collecting
    stream 0's bytes in ``got`` (in stream order) and other streams' in ``other``.
    ``rbuf``: the general path's bytes are read into the start of this long-lived
    buffer (as the asyncio adapter's), the last read's bytes after them."""
    taken = 0
    if use_lane:
        dst = bytearray(dst_size)
        taken, _ = receiver.take_fast(data, 0, dst, 0.0)
        got += dst[:taken]
    elif rbuf is not None and len(data) <= len(rbuf):
        rbuf[: len(data)] = data
        receiver.receive_data(rbuf, 0.0, len(data))
    else:
        receiver.receive_data(data, 0.0)
    while (event := receiver.next_event()) is not None:
        if isinstance(event, StreamDataReceived):
            if event.stream_id == 0:
                got += event.data
            else:
                other.setdefault(event.stream_id, bytearray()).extend(event.data)
            receiver.acknowledge_read(event.stream_id, len(event.data))
    return taken


@pytest.mark.parametrize("read_buffer", [False, True], ids=["reads", "read-buffer"])
@pytest.mark.parametrize("handler", [False, True], ids=["events", "handler"])
@pytest.mark.parametrize("seed", range(6))
def test_connection_lane_and_general_paths_deliver_the_same(
    seed: int, handler: bool, read_buffer: bool
) -> None:
    rng = random.Random(seed)
    rbuf = memoryview(bytearray(1 << 20)) if read_buffer else None
    c, s, _ = connect(stream_window=64 * 1024, connection_window=128 * 1024)
    client, server = c.conn, s.conn
    sid = client.open_stream()
    side = client.open_stream()  # a second stream, written now and then
    assert sid == 0
    written = bytearray()
    side_written = bytearray()
    other: dict[int, bytearray] = {}
    got = bytearray()
    handled = bytearray()
    runs = []  # handler calls carrying more than one record's data: only the lane does

    if handler:
        # as the I/O adapters' Session does: bytes go to the handler, read at once

        def on_data(stream_id: int, data: bytes | memoryview, end: bool) -> None:
            # a Session buffers these: a reader sees them after what take_fast put in
            # its own buffer, so _feed adds them to got after that
            target = handled if stream_id == sid else other.setdefault(stream_id, bytearray())
            target.extend(data)
            server.acknowledge_read(stream_id, len(data))
            if len(data) > MAX_STREAM_CHUNK:
                runs.append(len(data))

        server.stream_data_handler = on_data
    pending = bytearray()  # carrier bytes sent but not yet fed to the server
    sealed_fast = taken_fast = 0
    for _ in range(120):
        size = rng.choice([1, 100, 5000, 40_000])
        data = os.urandom(size)
        if rng.random() < 0.5:
            sealed = client.seal_fast(sid, data, 0.0)
            if sealed is not None:
                records, n = sealed
                pending += records
                written += data[:n]
                sealed_fast += n
        else:
            if client.send_buffered(sid) < 256 * 1024:
                client.send_stream_data(sid, data)
                written += data
        if rng.random() < 0.1:
            client.ping()  # a control record between stream records
        if rng.random() < 0.1 and client.send_buffered(side) < 64 * 1024:
            extra = os.urandom(rng.choice([1, 3000]))
            client.send_stream_data(side, extra)
            side_written += extra
        pending += client.data_to_send(0.0)
        if pending and rng.random() < 0.7:
            cut = rng.randint(1, len(pending))
            chunk, pending = bytes(pending[:cut]), pending[cut:]
            dst_size = rng.choice([10, 1000, 70_000])
            taken_fast += _feed(server, chunk, rng.random() < 0.7, dst_size, got, other, rbuf)
            got += handled
            handled.clear()
            client.receive_data(server.data_to_send(0.0), 0.0)  # credit flows back
    while True:
        pending += client.data_to_send(0.0)
        if not pending:
            break
        _feed(server, bytes(pending), True, 1 << 20, got, other)
        got += handled
        handled.clear()
        pending = bytearray()
        client.receive_data(server.data_to_send(0.0), 0.0)
    assert not server.closed and not client.closed
    assert bytes(got) == bytes(written)
    assert bytes(other.get(side, b"")) == bytes(side_written)
    assert client.send_buffered(sid) == 0
    assert sealed_fast and taken_fast  # both lanes carried data
    assert runs or not handler


def test_a_read_size_past_the_buffer_is_refused_and_feeds_nothing() -> None:
    """``receive_data``'s ``size`` is checked against the buffer before anything is
    counted or fed (a LocalProtocolError: the adapter's mistake, not the peer's)."""
    c, s, _ = connect()
    client, server = c.conn, s.conn
    sid = client.open_stream()
    client.send_stream_data(sid, b"hello")
    wire = client.data_to_send(0.0)
    rbuf = memoryview(bytearray(wire))
    before = server.bytes_received
    for size in (-1, len(wire) + 1):
        with pytest.raises(LocalProtocolError):
            server.receive_data(rbuf, 0.0, size)
    assert server.bytes_received == before and server.next_event() is None
    server.receive_data(rbuf, 0.0, len(wire))
    assert server.bytes_received == before + len(wire) and not server.closed


def test_a_connection_keeps_only_a_spare_sized_read_buffer() -> None:
    """A connection's lane reads go into a spare buffer whose C pointer the native lane
    keeps (NativeLane.take's ``keep``); a read too large for a spare's buffer is not
    kept, as it is not kept as a spare (else one huge read's buffer stayed held)."""
    if _core.Lane is not _core.NativeLane:
        pytest.skip("the pure-Python lane keeps no pointer")
    c, s, _ = connect(stream_window=4 << 20, connection_window=8 << 20)
    client, server = c.conn, s.conn
    server.stream_data_handler = lambda sid, data, end: server.acknowledge_read(sid, len(data))
    sid = client.open_stream()
    for size in (100, 100):  # the first makes its stream the lane's, the second goes there
        client.send_stream_data(sid, os.urandom(size))
        server.receive_data(client.data_to_send(0.0), 0.0)
    kept = _core._kept_out[0][0]
    assert kept is not None and kept is _fast_paths._spare_buffers[-1]
    client.send_stream_data(sid, os.urandom(_fast_paths._LANE_BUFFER_KEEP + 1000))
    server.receive_data(client.data_to_send(0.0), 0.0)
    assert not server.closed
    assert len(_core._kept_out[0][0]) <= _fast_paths._LANE_BUFFER_KEEP


def test_a_read_buffer_of_any_kind_given_with_its_size_is_kept_as_given() -> None:
    """``receive_data(buf, now, size)``: the lane keeps the pointer of ``buf`` itself, so
    the next read into it is a match; of a bytearray, not of a memoryview made for the
    one read, which no later read could match while it held the bytearray's export."""
    if _core.Lane is not _core.NativeLane:
        pytest.skip("the pure-Python lane keeps no pointer")
    c, s, _ = connect()
    client, server = c.conn, s.conn
    got: list[bytes] = []
    server.stream_data_handler = lambda sid, data, end: got.append(bytes(data))
    sid = client.open_stream()
    rbuf = bytearray(4096)
    pointers = []
    for i in range(3):  # (the first makes the stream the lane's, the others go there)
        client.send_stream_data(sid, b"read %d" % i)
        wire = client.data_to_send(0.0)
        rbuf[: len(wire)] = wire
        server.receive_data(rbuf, 0.0, len(wire))
        if i:
            assert _core._kept_src[0][0] is rbuf
            pointers.append(_core._kept_src[0][1])
    assert b"".join(got) == b"read 0read 1read 2"
    assert pointers[0] is pointers[1]  # (made once)


def test_lane_is_not_used_before_the_connection_is_established() -> None:
    from tests.support.pairs import make_pair

    client, _ = make_pair()
    assert client.seal_fast(0, b"x", 0.0) is None


def test_connection_uses_the_selected_backends_lane() -> None:
    c, _, _ = connect()
    sid = c.conn.open_stream()
    assert c.conn.seal_fast(sid, b"hello", 0.0) is not None
    assert type(c.conn._lane) is _core.Lane


def test_the_carrier_read_buffers_are_made_on_first_use(backend: SimpleNamespace) -> None:
    # a lane that only seals and takes (the asyncio adapter's fast paths) never reads
    # its carrier: it holds no read buffers (an idle server connection would pay a page
    # of each at least); the first look at one makes both, at their sizes
    sender, lane = lane_pair(backend, os.urandom(32))
    data = os.urandom(1000)
    sealed, _ = sender.seal_stream(0, SID, 0, data)
    dst = bytearray(2000)
    assert take(lane, sealed, dst).taken == len(data)
    lane.seal(0, SID, 0, b"x" * 100)
    assert "rview" not in vars(lane) and "own" not in vars(lane)
    assert lane.pending == 0
    assert len(lane.rview) == 1 << 18 and len(lane.own) == lane.own_cap
    assert "rview" in vars(lane) and "own" in vars(lane)
    with pytest.raises(AttributeError):
        lane.no_such_member  # noqa: B018


def test_the_seal_output_grows_from_small_to_max_seal(backend: SimpleNamespace) -> None:
    # the output starts small (an idle connection keeps a page less) and grows as a
    # seal asks for more: a small seal, one of max_seal bytes, a small one again
    key = os.urandom(32)
    lane = backend.Lane(backend.Aead(key), backend.Aead(os.urandom(32)))
    receiver = backend.Lane(backend.Aead(os.urandom(32)), backend.Aead(key))
    offset = counter = 0
    for size in (100, lane.max_seal, 100):
        data = os.urandom(size)
        sealed, n = lane.seal(counter, SID, offset, data)
        sealed = bytes(sealed)
        dst = bytearray(size)
        result = take(receiver, sealed, dst, offset)
        assert result.taken == size and bytes(dst) == data
        offset += size
        counter += n


def test_seal_fast_with_a_head_sends_the_records_of_head_and_data_joined() -> None:
    c, s, _ = connect(stream_window=64 * 1024, connection_window=128 * 1024)
    client, server = c.conn, s.conn
    sid = client.open_stream()
    got, joined = bytearray(), bytearray()
    for size in (100, 5000, 40_000):
        body = os.urandom(size)
        head = size.to_bytes(4, "big")
        joined += head + body
        rl = client.records
        counter, offset = rl.send_counter, client._streams[sid].next_offset
        expected, records = rl.send_aead.seal_stream(counter, sid, offset, head + body)
        sealed = client.seal_fast(sid, body, 0.0, head)
        assert sealed is not None and (bytes(sealed[0]), sealed[1]) == (expected, size)
        assert rl.send_counter == counter + records
        assert client._streams[sid].next_offset == offset + 4 + size
        _feed(server, expected, False, 0, got, {})
        client.receive_data(server.data_to_send(0.0), 0.0)  # credit flows back
    assert got == joined
    # beyond the stream's credit: nothing sealed (the caller joins them), nothing moved
    rl = client.records
    counter, offset = rl.send_counter, client._streams[sid].next_offset
    credit = client._streams[sid].send_credit - offset
    assert client.seal_fast(sid, bytes(credit - 3), 0.0, b"\0\0\0\0") is None
    assert (rl.send_counter, client._streams[sid].next_offset) == (counter, offset)
    assert client.seal_fast(sid, bytes(credit - 4), 0.0, b"\0\0\0\0") is not None
