"""A hostile peer against the connection's bounds: streams it opens and ends before the
application accepts them, reassembly rings left behind, ACK frames that made each
acknowledgement copy the whole in-flight table, stream data it never acknowledges, and
a CLOSE a lossy carrier lost. Driven in memory with virtual clocks; the peer holds its
keys, so it seals whatever frames it likes (sealed_by)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import pytest

from dtp.native import core as _core
from dtp.native.types import (
    FRAME_ACK,
    FRAME_MAX_DATA,
    FRAME_MAX_STREAM_DATA,
    FRAME_MAX_STREAMS,
    FRAME_PING,
    FRAME_STOP_SENDING,
    FRAME_STREAM,
    FRAME_STREAM_FIN,
    RawFrame,
)
from dtp.protocol._events import SendWindowOpened
from dtp.protocol._recovery import SentRecord
from dtp.protocol.connection import CloseCode, Connection, ConnectionConfig
from dtp.transport._session import Session
from tests.support.pairs import CLIENT_ID, SERVER_ID, connect, sealed_by


def _session_pair(max_streams: int) -> tuple[Connection, Session]:
    """A client connection and an accepted server Session (as the adapters run it),
    the application holding the client's first stream."""
    client = Connection(
        ConnectionConfig(identity=CLIENT_ID, is_client=True, server_static=SERVER_ID.noise_public),
        ephemeral_key=os.urandom(32),
        now=0.0,
    )
    session = Session(
        ConnectionConfig(identity=SERVER_ID, is_client=False, max_streams=max_streams), now=0.0
    )
    server = session.conn
    for _ in range(10):
        if data := client.data_to_send(0.0):
            server.receive_data(data, 0.0)
        session.process_events()
        if session.authenticated_address and not server.established:
            server.accept()
        if data := server.data_to_send(0.0):
            client.receive_data(data, 0.0)
        while client.next_event() is not None:
            pass
    assert client.established and server.established
    assert session.incoming_streams.popleft() == 0
    return client, session


def _frames_of(conn: Connection, sealed: bytes) -> list[RawFrame]:
    """The frames of records ``conn``'s peer sealed (``conn`` opens them)."""
    result = conn._recv_aead.open_frames(bytearray(sealed))
    return [frame for record in result.records for frame in record.frames]


def test_streams_ended_before_the_application_took_them_count_against_max_streams() -> None:
    # A peer cycling STREAM_FIN(sid, 0, b"") + STOP_SENDING(sid): the connection forgot
    # each stream at once and gave its place back, while the Session kept a buffer and
    # an incoming_streams entry for it -- 80001 streams opened with max_streams=8
    client, session = _session_pair(max_streams=4)
    server = session.conn
    sid = 2
    while sid < 2 + 2 * 50 and not server.closed:
        frames = [RawFrame(FRAME_STREAM_FIN, sid, 0, 0, b""), RawFrame(FRAME_STOP_SENDING, sid, 0)]
        server.receive_data(sealed_by(client, _core.encode_frames(frames)), 0.0)
        session.process_events()
        server.data_to_send(0.0)
        sid += 2
    # stream 0 and three ended ones fill the limit: the next is one too many
    assert server.closed
    term = server.termination
    assert term is not None and term.error_code == CloseCode.PROTOCOL_VIOLATION
    assert len(session.streams) <= 4 and len(session.incoming_streams) <= 3

    # once the application takes an ended stream, its place goes back to the peer
    client, session = _session_pair(max_streams=4)
    server = session.conn
    for sid in (2, 4, 6):
        frames = [RawFrame(FRAME_STREAM_FIN, sid, 0, 0, b""), RawFrame(FRAME_STOP_SENDING, sid, 0)]
        server.receive_data(sealed_by(client, _core.encode_frames(frames)), 0.0)
    session.process_events()
    sent = _frames_of(client, server.data_to_send(0.0))
    assert not [f for f in sent if f.type == FRAME_MAX_STREAMS]
    assert session.incoming_streams.popleft() == 2
    sent = _frames_of(client, server.data_to_send(0.0))
    assert [f.a for f in sent if f.type == FRAME_MAX_STREAMS] == [5]
    session.incoming_streams.clear()  # (taking all of them: the adapters' way or any)
    sent = _frames_of(client, server.data_to_send(0.0))
    assert [f.a for f in sent if f.type == FRAME_MAX_STREAMS] == [7]
    frames = [RawFrame(FRAME_STREAM, 12, 0, 0, b"fits")]  # the 7th stream: within
    server.receive_data(sealed_by(client, _core.encode_frames(frames)), 0.0)
    session.process_events()
    assert not server.closed and bytes(session.streams[12].data) == b"fits"


def test_a_drained_reassembly_ring_is_let_go() -> None:
    # Each stream's ring grew to the widest gap it bridged (up to the stream window) and
    # stayed for the stream's life: a peer sending each stream's last byte first held
    # max_streams stream windows (512 MiB by default), far above the connection window
    window = 64 * 1024
    c, s, link = connect(reliable_carrier=False, stream_window=window, connection_window=window)
    client, server = c.conn, s.conn
    now = link.now
    payload = os.urandom(window)
    for sid in (2, 4):
        pieces = [(window - 1, payload[-1:])]
        pieces += [
            (off, payload[off : min(off + 8000, window - 1)]) for off in range(0, window - 1, 8000)
        ]
        for offset, data in pieces:
            frames = [RawFrame(FRAME_STREAM, sid, offset, 0, data)]
            server.receive_datagram(sealed_by(client, _core.encode_frames(frames)), now)
            s.drain()  # (reads all: credit goes back)
            server.datagrams_to_send(now)
        assert bytes(s.data[sid]) == payload
        assert server.streams.by_id[sid].reasm is None
    # a stream whose bytes come in order never needs one
    frames = [RawFrame(FRAME_STREAM, 6, 0, 0, b"in order")]
    server.receive_datagram(sealed_by(client, _core.encode_frames(frames)), now)
    s.drain()
    assert bytes(s.data[6]) == b"in order" and server.streams.by_id[6].reasm is None
    # a gap still waits in one, and what fills it comes out in order
    for offset, data in ((14, b"end"), (17, b"!")):
        frames = [RawFrame(FRAME_STREAM, 6, offset, 0, data)]
        server.receive_datagram(sealed_by(client, _core.encode_frames(frames)), now)
    assert server.streams.by_id[6].reasm is not None
    s.drain()
    assert bytes(s.data[6]) == b"in order"
    frames = [RawFrame(FRAME_STREAM, 6, 8, 0, b", the ")]
    server.receive_datagram(sealed_by(client, _core.encode_frames(frames)), now)
    s.drain()
    assert bytes(s.data[6]) == b"in order, the end!" and server.streams.by_id[6].reasm is None


class _CountingTable(OrderedDict[int, SentRecord]):
    """An in-flight table that counts the entries its scans visit."""

    visited = 0

    def __iter__(self) -> Iterator[int]:
        for key in super().__iter__():
            _CountingTable.visited += 1
            yield key

    def items(self) -> Any:
        for item in super().items():
            _CountingTable.visited += 1
            yield item


def test_each_ack_frame_costs_what_it_acknowledges_not_the_table() -> None:
    # Every ACK frame that acknowledged anything copied the whole in-flight table to
    # look for losses: a record of 2700 tiny ACK frames cost 380 ms of CPU
    c, s, link = connect(reliable_carrier=False, max_record_plaintext=64)
    client, server = c.conn, s.conn
    now = link.now
    credit = [RawFrame(FRAME_MAX_DATA, 1 << 40), RawFrame(FRAME_MAX_STREAM_DATA, 0, 1 << 40)]
    server.receive_datagram(sealed_by(client, _core.encode_frames(credit)), now)
    server.send_stream_data(0, os.urandom(3000 * 40))
    server.datagrams_to_send(now)
    recovery = server.records.recovery
    assert recovery is not None
    table = _CountingTable(recovery.in_flight)
    recovery.in_flight = table
    in_flight = len(table)
    assert in_flight > 2500
    acks = [RawFrame(FRAME_ACK, c=0, ranges=((n, n),)) for n in list(table)[:2000]]
    _CountingTable.visited = 0
    server.receive_datagram(sealed_by(client, _core.encode_frames(acks)), now)
    assert not server.closed
    assert len(table) == in_flight - 2000
    assert _CountingTable.visited < 10 * len(acks)  # was a table's worth per frame


def _hostile_sender(idle_timeout: float, window: int) -> tuple[Connection, Connection, float]:
    """A lossy pair whose client grants the server all the credit it likes and never
    acknowledges a thing; the server's application writes on stream 0 as the adapters
    let it (while send_buffered() is under a high-water mark)."""
    c, s, link = connect(
        reliable_carrier=False,
        idle_timeout=idle_timeout,
        connection_window=window,
        stream_window=window,
    )
    client, server = c.conn, s.conn
    credit = [RawFrame(FRAME_MAX_DATA, 1 << 60), RawFrame(FRAME_MAX_STREAM_DATA, 0, 1 << 60)]
    server.receive_datagram(sealed_by(client, _core.encode_frames(credit)), link.now)
    return client, server, link.now


def _write_and_send(server: Connection, now: float, high_water: int, chunk: bytes) -> list[bytes]:
    while not server.closed and server.send_buffered(0) < high_water:
        server.send_stream_data(0, chunk)
    return server.datagrams_to_send(now)


def test_unacknowledged_stream_data_is_capped_at_our_connection_window() -> None:
    # The sender kept every byte the application ever wrote for a peer that granted
    # credit and acknowledged nothing (send_buffered() counted only unsent bytes, so
    # the adapters' backpressure never engaged): 400 MiB held, 4.7 GB resent in 20 s
    window, high_water = 256 * 1024, 64 * 1024
    client, server, now = _hostile_sender(idle_timeout=30.0, window=window)
    chunk = os.urandom(16 * 1024)
    wire = 0
    for step in range(200):
        wire += sum(map(len, _write_and_send(server, now, high_water, chunk)))
        now += 0.05
        if step % 10 == 0:
            server.receive_datagram(
                sealed_by(client, _core.encode_frames([RawFrame(FRAME_PING)])), now
            )
        server.handle_timer(now)
        wire += sum(map(len, server.datagrams_to_send(now)))
        stream = server.streams.by_id[0]
        assert len(stream.send_buf) <= window + high_water + len(chunk)
    assert not server.closed
    assert wire < 2 * window  # sent once, and a few probes
    # acknowledged, the bytes make room: the sender says so and sends more
    stream = server.streams.by_id[0]
    acked_up_to = stream.next_offset
    recovery = server.records.recovery
    assert recovery is not None
    counters = list(recovery.in_flight)
    while server.next_event() is not None:
        pass
    ack = RawFrame(FRAME_ACK, c=0, ranges=((counters[0], counters[-1]),))
    server.receive_datagram(sealed_by(client, _core.encode_frames([ack])), now)
    events = []
    while (event := server.next_event()) is not None:
        events.append(event)
    assert SendWindowOpened(None) in events
    assert stream.base_offset == acked_up_to
    assert server.datagrams_to_send(now) and stream.next_offset > acked_up_to


def test_a_peer_that_acknowledges_nothing_is_given_up() -> None:
    # PINGs kept the idle timer alive while the peer acknowledged nothing: the sender
    # held its data, and probed with it, for as long as the peer cared to
    window = 128 * 1024
    client, server, now = _hostile_sender(idle_timeout=12.0, window=window)
    chunk = os.urandom(16 * 1024)
    start = now
    wire = 0
    last: list[bytes] = []
    while not server.closed and now < start + 5000.0:
        _write_and_send(server, now, 32 * 1024, chunk)
        now += 1.0
        if round(now - start) % 5 == 0:
            ping = sealed_by(client, _core.encode_frames([RawFrame(FRAME_PING)]))
            server.receive_datagram(ping, now)
        timer = server.get_timer()
        if timer is not None and timer <= now:
            server.handle_timer(now)
        last = server.datagrams_to_send(now)
        wire += sum(map(len, last))
    assert server.closed
    term = server.termination
    assert term is not None and term.error_code == CloseCode.IDLE_TIMEOUT and not term.by_peer
    assert "probe timeouts" in term.reason
    assert wire < 2 * window  # what was sent once, and two records per probe
    # the peer is told
    for record in last:
        client.receive_datagram(record, now)
    term = client.termination
    assert term is not None and term.by_peer and term.error_code == CloseCode.IDLE_TIMEOUT


def test_a_lost_close_is_sent_again_while_the_peer_goes_on() -> None:
    # The one datagram with our CLOSE was lost: the closed side ignored what the peer
    # sent afterwards, and the peer ended at its idle timeout (IDLE_TIMEOUT, no reason)
    c, s, link = connect(reliable_carrier=False, idle_timeout=60.0)
    client, server = c.conn, s.conn
    now = link.now
    client.close(16, "bye: application done")
    assert client.datagrams_to_send(now)  # lost
    server.send_stream_data(0, b"hello")
    replies = 0
    while not server.closed and now < link.now + 5.0:
        now += 0.25
        for record in server.datagrams_to_send(now):
            client.receive_datagram(record, now)
        for record in client.datagrams_to_send(now):
            replies += 1
            server.receive_datagram(record, now)
        timer = server.get_timer()
        if timer is not None and timer <= now:
            server.handle_timer(now)
    term = server.termination
    assert term is not None
    assert (term.error_code, term.reason, term.by_peer) == (16, "bye: application done", True)
    assert replies == 1

    # rate-limited (1st, 2nd, 4th, 8th... input) and only for the closing period
    c, s, link = connect(reliable_carrier=False, idle_timeout=60.0)
    client, server = c.conn, s.conn
    now = link.now
    client.close(16, "bye")
    client.datagrams_to_send(now)
    junk = b"\x00" * 40  # (what arrives is not even opened)
    sent = []
    for _ in range(64):
        client.receive_datagram(junk, now)
        sent.append(len(client.datagrams_to_send(now)))
    assert sent.count(1) == 7 and set(sent) == {0, 1}
    assert client.records.recovery is not None
    later = now + client.config.close_copies * client.records.recovery.pto_interval()
    for _ in range(64):
        client.receive_datagram(junk, later)
        assert not client.datagrams_to_send(later)


def test_a_lost_close_is_sent_again_at_each_probe_timeout_of_the_closing_period() -> None:
    # A peer with nothing to send gives no input to answer: the CLOSE goes again on the
    # closing side's own timer, every probe timeout until the period (8 PTO) ends
    # (docs/protocol.md 3.1)
    c, s, link = connect(reliable_carrier=False, idle_timeout=60.0)
    client, server = c.conn, s.conn
    start = link.now
    client.close(16, "bye")
    assert client.datagrams_to_send(start)  # lost
    assert client.records.recovery is not None
    pto = client.records.recovery.pto_interval()
    assert client.closing
    resends = []
    now = start
    while (timer := client.get_timer()) is not None:
        assert timer > now  # (each call moves it on: no spinning)
        now = timer
        client.handle_timer(now)
        copies = client.datagrams_to_send(now)
        if copies:
            resends.append((round(now - start, 9), len(copies)))
            last = copies
    assert client.config.close_copies == 8  # (the default: the first and seven more)
    assert resends == [(round(k * pto, 9), 1) for k in range(1, client.config.close_copies)]
    assert not client.closing and now == pytest.approx(start + client.config.close_copies * pto)
    client.handle_timer(now + 10 * pto)
    assert not client.datagrams_to_send(now + 10 * pto)
    # each copy is a whole CLOSE the peer takes
    for record in last:
        server.receive_datagram(record, now)
    term = server.termination
    assert term is not None and (term.error_code, term.reason, term.by_peer) == (16, "bye", True)
    assert not server.closing and server.get_timer() is None  # (it closed nothing itself)

    # over a reliable carrier none of this runs: the closed connection has no timer
    c, s, link = connect()
    c.conn.close()
    assert c.conn.data_to_send(link.now)
    assert not c.conn.closing and c.conn.get_timer() is None


def test_a_short_outage_both_ways_does_not_give_up_an_idle_connection() -> None:
    """The dead-peer rule counts the idle timeout from when the probing began, not
    only from the last acknowledgement: a server that had sent nothing to acknowledge
    for two minutes (the client's PINGs kept the connection alive) replied into a 5 s
    outage both ways and closed ~9 s later, its reply lost, where a link down both ways
    is given the idle timeout (docs/protocol.md section 9)."""
    import heapq

    from dtp.protocol._events import PeerAuthenticated
    from dtp.transport.carriers._memory import MemoryLink
    from tests.support.pairs import Side

    client = Connection(
        ConnectionConfig(
            identity=CLIENT_ID,
            is_client=True,
            server_static=SERVER_ID.noise_public,
            reliable_carrier=False,
            idle_timeout=60.0,
        ),
        ephemeral_key=os.urandom(32),
        now=0.0,
    )
    server = Connection(
        ConnectionConfig(
            identity=SERVER_ID, is_client=False, reliable_carrier=False, idle_timeout=20.0
        ),
        ephemeral_key=os.urandom(32),
        now=0.0,
    )
    c, s = Side(client), Side(server)
    link = MemoryLink(client, server)

    def accept() -> None:
        c.drain()
        s.drain()
        if s.of(PeerAuthenticated) and not server.established and not server.closed:
            server.accept()

    assert link.run(lambda: client.established, on_round=accept)
    accept()
    # a one-way delay of 20 ms, and a window in which everything is lost
    now, queue, seq, down = link.now, [], 0, (0.0, 0.0)

    def run_until(until: float) -> None:
        nonlocal now, seq
        while now < until and not server.closed:
            if not queue:  # (idle: straight to the next timer)
                timers = [t for t in (client.get_timer(), server.get_timer()) if t is not None]
                nxt = min([until, *timers, *[d for d in down if d > now]])
                now = max(now, nxt - 0.005)
            now += 0.005
            while queue and queue[0][0] <= now:
                _, _, dst, record = heapq.heappop(queue)
                dst.receive_datagram(record, now)
            for conn in (client, server):
                timer = conn.get_timer()
                if timer is not None and timer <= now:
                    conn.handle_timer(now)
            c.drain()
            s.drain()
            for src, dst in ((client, server), (server, client)):
                for record in src.datagrams_to_send(now):
                    if not down[0] <= now < down[1]:
                        seq += 1
                        heapq.heappush(queue, (now + 0.02, seq, dst, record))

    client.send_stream_data(0, b"request")
    run_until(now + 1)
    server.send_stream_data(0, b"reply")
    run_until(now + 1)
    run_until(now + 120)  # idle, kept alive by the client's PINGs
    assert not server.closed
    server.send_stream_data(0, b" late reply")
    down = (now, now + 5.0)
    run_until(now + 30)
    assert not server.closed, server.termination
    assert bytes(c.data.get(0, b"")) == b"reply late reply"
