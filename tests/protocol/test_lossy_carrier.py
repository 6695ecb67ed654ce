"""Lossy carriers (``reliable_carrier=False``) under a hypothesis-chosen carrier:
records dropped, duplicated, held back and delivered late, in both directions. Both
sides must end with exactly the stream bytes written, and what the sender tracks for
retransmission must stay bounded by what flow control lets it have outstanding.

On a lossy carrier, a datagram whose record header does not parse (unknown kind,
reserved flags, a length out of range) is dropped like any damaged datagram: anyone
can send one, and nothing in it is authenticated. It used to close an established
connection. On a reliable carrier the same bytes still end the connection."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.native.types import FRAME_STREAM, FRAME_STREAM_FIN
from dtp.protocol.connection import Connection, ConnState
from dtp.protocol.connection._stream_table import NO_RANGES
from tests.support.pairs import Side, carries_both_ways, connect, run

# what happens to each record: 0 deliver, 1 drop, 2 duplicate, 3 hold back (delivered
# after the next ones)
_FATES = st.lists(st.integers(0, 3), min_size=1, max_size=64)


def _in_flight(conn: Connection) -> int:
    assert conn.records.recovery is not None
    return len(conn.records.recovery.in_flight)


@settings(max_examples=25, deadline=None)
@given(
    fates_c=_FATES,
    fates_s=_FATES,
    sizes=st.lists(st.integers(0, 40_000), min_size=1, max_size=3),
    datagrams=st.integers(0, 20),
)
def test_lossy_both_ways_delivers_exactly(
    fates_c: list[int], fates_s: list[int], sizes: list[int], datagrams: int
) -> None:
    window = 32 * 1024
    c, s, link = connect(reliable_carrier=False, stream_window=window, connection_window=window)
    now = link.now
    written: dict[tuple[str, int], bytes] = {}
    for n in sizes:
        sid = c.conn.open_stream()
        written[("c", sid)] = os.urandom(n)
        c.conn.send_stream_data(sid, written[("c", sid)], end_stream=True)
        sid = s.conn.open_stream()
        written[("s", sid)] = os.urandom(n // 2)
        s.conn.send_stream_data(sid, written[("s", sid)], end_stream=True)
    for _ in range(datagrams):
        c.conn.send_datagram(b"x" * 100)
        s.conn.send_datagram(b"y" * 100)
    held: dict[str, list[bytes]] = {"c": [], "s": []}
    step = {"c": 0, "s": 0}
    fates = {"c": fates_c, "s": fates_s}
    sides = {"c": c, "s": s}
    peak = 0

    def done() -> bool:
        return all(sid in sides["s" if who == "c" else "c"].eof for who, sid in written)

    deadline = now + 300.0
    while not done() and now < deadline:
        for who, peer in (("c", "s"), ("s", "c")):
            src, dst = sides[who].conn, sides[peer].conn
            out = src.datagrams_to_send(now)
            # the carrier misbehaves only for the first records of each side
            for record in out:
                fate = fates[who][step[who]] if step[who] < len(fates[who]) else 0
                step[who] += 1
                if fate == 1:
                    continue
                if fate == 3:
                    held[who].append(record)
                    continue
                dst.receive_datagram(record, now)
                if fate == 2:
                    dst.receive_datagram(record, now)
            if out and held[who]:
                for record in held[who]:
                    dst.receive_datagram(record, now)
                held[who].clear()
            sides[peer].drain()
            peak = max(peak, _in_flight(src))
        assert not c.conn.closed and not s.conn.closed
        timers = [t for t in (c.conn.get_timer(), s.conn.get_timer()) if t is not None]
        now = max(now + 0.001, min(timers))
        c.conn.handle_timer(now)
        s.conn.handle_timer(now)
    for (who, sid), data in written.items():
        reader = sides["s" if who == "c" else "c"]
        assert bytes(reader.data.get(sid, b"")) == data, (who, sid)
    # a window's worth of full records, the datagram and control records, and slack
    assert peak <= window // 1000 + 2 * datagrams + 16
    for side in (c, s):
        for stream in side.conn.streams.by_id.values():
            assert len(stream.retransmit.ranges) <= window // 1000
    # the empty sets every stream starts with are shared: acks and losses gave the
    # streams sets of their own
    assert not NO_RANGES.ranges


def test_a_reliable_carriers_streams_share_the_empty_range_sets() -> None:
    c, s, link = connect()
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"x" * 5000, end_stream=False)
    run(link, c, s)
    assert bytes(s.data[sid]) == b"x" * 5000
    for side in (c, s):
        stream = side.conn.streams.by_id[sid]
        assert stream.retransmit is NO_RANGES and stream.acked is NO_RANGES
        assert not hasattr(stream, "__dict__")


JUNK = {
    "unknown kind": bytes([9, 0]) + struct.pack("<H", 10) + bytes(8) + b"x" * 10,
    "flags": bytes([16, 0xFF]) + struct.pack("<H", 20) + bytes(8) + b"x" * 20,
    "zero length": bytes([16, 0]) + struct.pack("<H", 0) + bytes(8),
    "short data": bytes([16, 0]) + struct.pack("<H", 5) + bytes(8) + b"x" * 5,
    "long handshake": bytes([1, 0]) + struct.pack("<H", 5000) + bytes(8) + b"\x01" * 5000,
}


@pytest.mark.parametrize("junk", list(JUNK), ids=list(JUNK))
def test_a_datagram_with_a_bad_header_is_dropped_on_a_lossy_carrier(junk: str) -> None:
    c, s, link = connect(reliable_carrier=False)
    assert c.conn.established and s.conn.established
    s.conn.receive_datagram(JUNK[junk], link.now)
    c.conn.receive_datagram(JUNK[junk], link.now)
    assert s.conn.state is ConnState.ESTABLISHED
    assert c.conn.state is ConnState.ESTABLISHED
    # and the connection goes on carrying data both ways
    carries_both_ways(link, c, s, b"after the junk", b"and back")


def test_a_bad_header_still_ends_a_reliable_connection() -> None:
    _c, s, link = connect()
    s.conn.receive_data(JUNK["unknown kind"], link.now)
    assert s.conn.closed


def test_the_record_layer_seals_and_resends_on_its_own() -> None:
    # driven without a connection: frames queued, built into sealed records, a loss
    # requeues what the lost record carried, an ACK of a record never sent is refused
    import pytest

    from dtp.errors import LocalProtocolError, RemoteProtocolError
    from dtp.native import core as native
    from dtp.protocol.connection._config import ConnectionConfig
    from dtp.protocol.connection._records import RecordLayer
    from dtp.protocol.connection._stream_table import StreamTable
    from tests.support.pairs import CLIENT_ID

    config = ConnectionConfig(identity=CLIENT_ID, is_client=True, reliable_carrier=False)
    table = StreamTable(is_client=True, max_streams=4, stream_window=1000, connection_window=4000)
    layer = RecordLayer(config, table, now=0.0)
    layer.build(0.0, streams_may_go=True)
    assert layer.out == []  # no keys yet: nothing is sealed
    layer.send_aead = native.Aead(bytes(32))
    with pytest.raises(LocalProtocolError):
        layer.queue_control(3, b"")  # a kind reserved for DTP
    layer.queue_control(20, b"hello")
    assert layer.waiting()
    layer.build(0.0, streams_may_go=True)
    assert not layer.waiting() and layer.send_counter == 1 and len(layer.out) == 1
    assert layer.recovery is not None and list(layer.recovery.in_flight) == [0]
    assert layer.awaiting_acks()
    with pytest.raises(RemoteProtocolError):
        layer.on_ack(((5, 5),), 0, 0.1)  # never sent
    # lost (by the probe timeout): the control frame is queued again, and a PING
    assert layer.on_timer(10.0, config.idle_timeout)
    assert [f.a for f in layer.ctrl] == [20] and layer.ping_pending
    layer.build(10.0, streams_may_go=True)
    assert layer.send_counter == 2
    assert not layer.on_ack(((1, 1),), 0, 10.1)
    assert not layer.awaiting_acks()


def _resent_stream_frames(c: Side, now: float) -> list[tuple[int, int, int, bytes]]:
    """The stream frames ``c`` sends again when its probe timeout fires, nothing it
    sent since ``now`` having been delivered: (type, stream, offset, data) each. (Its
    own sealing key opens them: an Aead seals and opens alike.)"""
    recovery = c.conn.records.recovery
    assert recovery is not None
    deadline = recovery.pto_deadline()
    assert deadline is not None and deadline > now
    c.conn.handle_timer(deadline)
    opener = c.conn.records.send_aead
    frames = []
    for datagram in c.conn.datagrams_to_send(deadline):
        for record in opener.open_frames(datagram).records:
            frames += [
                (f.type, f.a, f.b, bytes(f.data))
                for f in record.frames
                if f.type in (FRAME_STREAM, FRAME_STREAM_FIN)
            ]
    return frames


def test_a_lost_fin_goes_again_with_the_bytes_that_end_the_stream() -> None:
    """Section 9 of docs/protocol.md: the frames of a lost record go again. A lost
    STREAM_FIN with data goes again as that one STREAM_FIN -- not the data and then an
    empty STREAM_FIN of its own (one frame, and a record, more every time)."""
    c, _s, link = connect(reliable_carrier=False)
    now = link.now
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"b", end_stream=True)
    assert len(c.conn.datagrams_to_send(now)) == 1  # lost
    assert _resent_stream_frames(c, now) == [(FRAME_STREAM_FIN, sid, 0, b"b")]


def test_a_lost_fin_sent_alone_goes_again_alone() -> None:
    """A STREAM_FIN that went with no data (its bytes went, and were acknowledged,
    before) goes again as an empty STREAM_FIN at the stream's end."""
    c, s, link = connect(reliable_carrier=False)
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"x" * 3000, end_stream=False)
    assert run(link, c, s, lambda: len(s.data.get(sid, b"")) == 3000)
    assert run(link, c, s, lambda: not c.conn.records.awaiting_acks())  # (acknowledged)
    now = link.now
    c.conn.send_stream_data(sid, b"", end_stream=True)
    assert len(c.conn.datagrams_to_send(now)) == 1  # lost
    assert _resent_stream_frames(c, now) == [(FRAME_STREAM_FIN, sid, 3000, b"")]
