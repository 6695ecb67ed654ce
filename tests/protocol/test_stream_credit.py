"""Edge cases of the connection core: credit a paused stream sink held when its
stream ended, frames an XX server took before the client's AUTH, advertised limits past
the varint range, the reassembly's range limit against an honest sender on a lossy
carrier, and ACK-only records sent when nothing new arrived. Driven in memory with
virtual clocks; a peer that holds its keys seals whatever frames it likes
(sealed_by)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from dtp.errors import LocalProtocolError
from dtp.identity._noise import make_auth_proof
from dtp.native import core as _core
from dtp.native.types import (
    FRAME_ACK,
    FRAME_CLOSE,
    FRAME_CONTROL,
    FRAME_DATAGRAM,
    FRAME_MAX_DATA,
    FRAME_MAX_STREAMS,
    FRAME_PING,
    FRAME_RECEIPT,
    FRAME_RESET_STREAM,
    FRAME_STOP_SENDING,
    FRAME_STREAM,
    FRAME_STREAM_FIN,
    RawFrame,
)
from dtp.protocol._events import ConnectionTerminated, ControlReceived, StopSendingReceived
from dtp.protocol._state import ControlKind
from dtp.protocol.connection import CloseCode, Connection, ConnectionConfig, _split_records
from dtp.transport._session import Session, StreamSink
from dtp.transport.carriers._memory import MemoryLink
from tests.protocol.hostile_frames import frames_sent_by_client
from tests.support.pairs import (
    CLIENT_ID,
    SERVER_ID,
    Side,
    connect,
    make_pair,
    run,
    sealed_by,
)

# -- 1. a paused sink's credit when its stream ends -------------------------------------

WINDOW = 64 * 1024


def _session_link() -> tuple[Session, Session, MemoryLink, Callable[[], None]]:
    """Two Sessions (as the adapters and the daemon's tunnel run them) wired in memory,
    established; returns them, the link and the step to run it with."""
    client = Session(
        ConnectionConfig(
            identity=CLIENT_ID,
            is_client=True,
            server_static=SERVER_ID.noise_public,
            stream_window=WINDOW,
            connection_window=2 * WINDOW,
        ),
        now=0.0,
    )
    server = Session(
        ConnectionConfig(
            identity=SERVER_ID,
            is_client=False,
            stream_window=WINDOW,
            connection_window=2 * WINDOW,
        ),
        now=0.0,
    )
    link = MemoryLink(client.conn, server.conn)

    def step() -> None:
        client.process_events()
        server.process_events()
        if server.authenticated_address and not server.conn.established:
            server.conn.accept()

    assert link.run(lambda: client.conn.established, on_round=step)
    link.run(None, on_round=step)
    return client, server, link, step


def _pausing_sink(ended: list[BaseException | None]) -> StreamSink:
    """A sink that pauses on every chunk, as the tunnel's does while TCP is backed up."""

    def on_data(data: bytes) -> None:
        sink.paused = True

    sink = StreamSink(on_data, ended.append)
    return sink


def test_a_paused_sink_returns_its_credit_when_its_stream_finishes() -> None:
    # Each stream's sink paused and held 40000 bytes of credit; the FIN ended it and
    # dropped them, and resume_sink found no sink: after three such streams the
    # connection's window (128 KiB) was used up and the fourth stalled for good.
    client, server, link, step = _session_link()
    for _ in range(5):
        sid = client.conn.open_stream()
        link.run(None, on_round=step)
        ended: list[BaseException | None] = []
        sink = _pausing_sink(ended)
        server.attach_sink(sid, sink)
        client.conn.send_stream_data(sid, b"x" * 40000, end_stream=True)
        link.run(lambda ended=ended: bool(ended), on_round=step, max_time=5)
        assert ended == [None], f"stream {sid} stalled"
        server.resume_sink(sid)  # (what the tunnel does once TCP drains: nothing now)
        assert sink.held == 0
        assert server.conn.streams.conn_consumed == server.conn.streams.conn_received


def test_a_paused_sink_returns_its_credit_when_its_stream_is_reset() -> None:
    client, server, link, step = _session_link()
    sid = client.conn.open_stream()
    link.run(None, on_round=step)
    ended: list[BaseException | None] = []
    server.attach_sink(sid, _pausing_sink(ended))
    client.conn.send_stream_data(sid, b"x" * 30000)
    link.run(None, on_round=step, max_time=5)
    assert server.conn.streams.conn_consumed == 0
    reset = _core.encode_frames([RawFrame(FRAME_RESET_STREAM, sid, 7, 30000)])
    server.conn.receive_data(sealed_by(client.conn, reset), 0.0)
    server.process_events()
    assert len(ended) == 1 and ended[0] is not None
    assert server.conn.streams.conn_consumed == 30000


# -- 2. frames an XX server takes before the client's AUTH ------------------------------


def _xx_awaiting_auth(*, lossy: bool) -> tuple[Connection, Connection, list[bytes]]:
    """An XX pair whose server has message 3 but not the client's AUTH record; returns
    them and the client's records after message 3 (its AUTH first), withheld."""
    client, server = make_pair(ik=False, reliable_carrier=not lossy)
    if lossy:
        for record in client.datagrams_to_send(0.0):
            server.receive_datagram(record, 0.0)
        for record in server.datagrams_to_send(0.0):
            client.receive_datagram(record, 0.0)
        records = client.datagrams_to_send(0.0)
        server.receive_datagram(records[0], 0.0)  # message 3 alone
    else:
        server.receive_data(client.data_to_send(0.0), 0.0)
        client.receive_data(server.data_to_send(0.0), 0.0)
        records = _split_records(client.data_to_send(0.0))
        server.receive_data(records[0], 0.0)
    assert server.handshake_hash is not None and server.peer_address is None
    return client, server, records[1:]


BEFORE_AUTH = {
    "RESET_STREAM": RawFrame(FRAME_RESET_STREAM, 0, 5, 0),
    "STOP_SENDING": RawFrame(FRAME_STOP_SENDING, 0, 9),
    "CONTROL": RawFrame(FRAME_CONTROL, 20, 0, 0, b"pre-auth"),
    "DATAGRAM": RawFrame(FRAME_DATAGRAM, 0, 0, 0, b"dg"),
    "RECEIPT": RawFrame(FRAME_RECEIPT, 0, 0, 0, b"r"),
    "MAX_DATA": RawFrame(FRAME_MAX_DATA, 1 << 30),
}


@pytest.mark.parametrize("name", list(BEFORE_AUTH))
def test_an_xx_server_refuses_frames_before_the_clients_auth(name: str) -> None:
    # Taken, a RESET_STREAM opened stream 0, a STOP_SENDING had the server send a reset
    # to a peer not yet authenticated, and all of them reached the application after
    # accept() as if the authenticated client had sent them.
    client, server, _ = _xx_awaiting_auth(lossy=False)
    client.records.send_counter = 0  # (the withheld AUTH record had counter 0)
    frames = [RawFrame(FRAME_PING), BEFORE_AUTH[name]]
    server.receive_data(sealed_by(client, _core.encode_frames(frames)), 0.0)
    term = server.termination
    assert term is not None and term.error_code == CloseCode.PROTOCOL_VIOLATION
    sent = client._recv_aead.open_frames(bytearray(server.data_to_send(0.0)))
    assert [f.type for r in sent.records for f in r.frames] == [FRAME_CLOSE]


def test_an_xx_server_takes_frames_behind_the_auth_in_its_record() -> None:
    # (a client may send right behind its AUTH, which opens its first DATA record)
    client, server, _ = _xx_awaiting_auth(lossy=False)
    client.records.send_counter = 0
    proof = make_auth_proof(CLIENT_ID, client.handshake_hash)  # type: ignore[arg-type]
    frames = [
        RawFrame(FRAME_PING),
        RawFrame(FRAME_CONTROL, int(ControlKind.AUTH), 0, 0, proof),
        BEFORE_AUTH["CONTROL"],
    ]
    server.receive_data(sealed_by(client, _core.encode_frames(frames)), 0.0)
    assert server.termination is None and server.peer_address is not None
    # a record before the AUTH's that is refused still ends the connection
    client2, server2, _ = _xx_awaiting_auth(lossy=False)
    client2.records.send_counter = 0
    server2.receive_data(sealed_by(client2, _core.encode_frames([BEFORE_AUTH["CONTROL"]])), 0.0)
    assert server2.closed


def test_a_lossy_xx_server_drops_a_record_ahead_of_the_auth_unacknowledged() -> None:
    # Over a lossy carrier the AUTH's record may come late: what overtook it is dropped,
    # not acknowledged, and reaches the application only as sent again after the AUTH.
    client, server, withheld = _xx_awaiting_auth(lossy=True)
    client.send_control(20, b"early")
    early = client.datagrams_to_send(0.001)
    for record in early:
        server.receive_datagram(record, 0.001)
    assert not server.closed
    assert server.records.acks is not None and not server.records.acks.received
    for record in withheld:
        server.receive_datagram(record, 0.002)
    s = Side(server)
    s.drain()
    assert server.peer_address is not None
    server.accept()
    s.drain()
    assert not s.of(ControlReceived)  # (the dropped copy went nowhere)
    c = Side(client)
    link = MemoryLink(client, server, now=0.002)
    assert run(link, c, s, lambda: bool(s.of(ControlReceived)))
    run(link, c, s)
    assert [(e.kind, e.data) for e in s.of(ControlReceived)] == [(20, b"early")]
    assert client.established and not server.closed


def test_a_lossy_xx_client_sends_a_lost_auth_ahead_of_what_was_queued_since() -> None:
    # The server drops a record with frames before the AUTH: resent behind a control
    # queued since, the AUTH went with it each time, and neither ever arrived.
    client, server, _ = _xx_awaiting_auth(lossy=True)  # its AUTH's record is lost
    client.send_control(20, b"queued")
    now = 0.0
    for _ in range(10):
        if any(frame.a == ControlKind.AUTH for frame in client.records.ctrl):
            break
        now = client.get_timer()  # type: ignore[assignment]
        client.handle_timer(now)  # the probe timeout: the AUTH is sent again
    assert [frame.a for frame in client.records.ctrl] == [ControlKind.AUTH, 20]
    s, c = Side(server), Side(client)
    link = MemoryLink(client, server, now=now)

    def step() -> None:
        c.drain()
        s.drain()
        if server.peer_address is not None and not server.established:
            server.accept()

    assert link.run(lambda: bool(s.of(ControlReceived)), on_round=step)
    assert client.established and [e.data for e in s.of(ControlReceived)] == [b"queued"]


# -- 3. advertised limits past the varint range -----------------------------------------

VARINT_MAX = (1 << 62) - 1


def _sent_frames(sender: Connection, receiver: Connection) -> list[RawFrame]:
    """The frames of what ``sender`` sends now, opened as ``receiver`` would."""
    sealed = sender.data_to_send(0.0)
    opened = receiver._recv_aead.open_frames(bytearray(sealed))
    return [frame for record in opened.records for frame in record.frames]


def test_a_connection_limit_stops_at_the_varint_maximum() -> None:
    # A reset charged 2**61 to a window of 2**62 - 1: the new limit (consumed + window)
    # was past the varint range, and data_to_send raised after it had let go of what was
    # queued -- the application's CONTROL queued alongside was lost.
    c, s, _ = connect(stream_window=VARINT_MAX, connection_window=VARINT_MAX)
    s.conn.send_control(20, b"important")
    frames = [RawFrame(FRAME_RESET_STREAM, 0, 7, 1 << 61)]
    s.conn.receive_data(sealed_by(c.conn, _core.encode_frames(frames)), 0.0)
    assert s.conn.termination is None
    sent = _sent_frames(s.conn, c.conn)
    assert [(f.type, f.a, f.data) for f in sent if f.type == FRAME_CONTROL] == [
        (FRAME_CONTROL, 20, b"important")
    ]
    assert s.conn.streams.conn_recv_limit <= VARINT_MAX
    assert all(f.a <= VARINT_MAX for f in sent if f.type == FRAME_MAX_DATA)


def test_a_stream_limit_stops_at_the_varint_maximum() -> None:
    # max_streams = 2**62 - 1 and one of the peer's streams done: MAX_STREAMS 2**62
    c, s, _ = connect(max_streams=VARINT_MAX)
    s.conn.send_control(20, b"important")
    frames = [RawFrame(FRAME_STREAM_FIN, 2, 0, 0, b"hi")]
    s.conn.receive_data(sealed_by(c.conn, _core.encode_frames(frames)), 0.0)
    s.drain()
    s.conn.send_stream_data(2, b"", end_stream=True)
    sent = _sent_frames(s.conn, c.conn)  # (the FIN; the stream is done once it went)
    sent += _sent_frames(s.conn, c.conn)
    assert [f.a for f in sent if f.type == FRAME_MAX_STREAMS] == [VARINT_MAX]
    assert [f.data for f in sent if f.type == FRAME_CONTROL] == [b"important"]


def _records_sent(sender: Connection, receiver: Connection) -> list[list[RawFrame]]:
    """The frames of each record ``sender`` sends now, opened as ``receiver`` would (its
    receiving state moves on: the records are not fed to it again)."""
    sealed = sender.data_to_send(0.0)
    opened = receiver._recv_aead.open_frames(bytearray(sealed))
    return [list(record.frames) for record in opened.records]


@pytest.mark.parametrize("answer", [b"", b'{"jsonrpc":"2.0","id":1,"result":42}'])
def test_the_fin_that_ends_a_peers_stream_carries_its_max_streams(answer: bytes) -> None:
    """A reply on a stream of its own (a JSON-RPC call): the FIN -- with the last bytes,
    or alone -- and the MAX_STREAMS that returns the stream's place go in one record, not
    two (a browser's client pays per record: bench/web_rows.py)."""
    c, s, _ = connect()
    sid = c.conn.open_stream()
    if sid == 0:  # (IK: the ACCEPT opened stream 0; a call goes on a stream of its own)
        sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"request", end_stream=True)
    s.conn.receive_data(c.conn.data_to_send(0.0), 0.0)
    s.drain()
    assert bytes(s.data[sid]) == b"request" and sid in s.eof
    limit = c.conn.streams.peer_max
    before = s.conn.records_sent
    s.conn.send_stream_data(sid, answer, end_stream=True)
    sealed = s.conn.data_to_send(0.0)
    assert len(_split_records(sealed)) == 1 and s.conn.records_sent == before + 1
    # the client reads the answer and its end, and may open one more stream
    c.conn.receive_data(sealed, 0.0)
    c.drain()
    assert bytes(c.data.get(sid, b"")) == answer and sid in c.eof
    assert c.conn.streams.peer_max == limit + 1
    assert c.conn.termination is None


def test_the_fins_record_past_one_byte_varints_reads_the_same() -> None:
    """The same record once the stream's ID, the answer's length and the stream count
    take two bytes each (a page's 40th call, an answer of 100 bytes)."""
    c, s, _ = connect()
    answer = bytes(range(100))
    for _ in range(40):
        sid = c.conn.open_stream()
        c.conn.send_stream_data(sid, b"request", end_stream=True)
        s.conn.receive_data(c.conn.data_to_send(0.0), 0.0)
        s.drain()
        s.conn.send_stream_data(sid, answer, end_stream=True)
        (record,) = _records_sent(s.conn, c.conn)
        c.drain()
    assert sid >= 64
    limit = s.conn.streams.max_streams_limit()
    assert limit >= 64
    assert [(f.type, f.a, f.b, bytes(f.data)) for f in record] == [
        (FRAME_STREAM_FIN, sid, 0, answer),
        (FRAME_MAX_STREAMS, limit, 0, b""),
    ]


def test_a_fin_on_a_stream_still_receiving_goes_alone() -> None:
    """The stream's receiving half is open: its end frees nothing yet, and the FIN goes
    as before (no MAX_STREAMS)."""
    c, s, _ = connect()
    frames = [RawFrame(FRAME_STREAM, 2, 0, 0, b"part")]
    s.conn.receive_data(sealed_by(c.conn, _core.encode_frames(frames)), 0.0)
    s.drain()
    s.conn.send_stream_data(2, b"answer", end_stream=True)
    records = _records_sent(s.conn, c.conn)
    assert [[f.type for f in r] for r in records] == [[FRAME_STREAM_FIN]]


def test_frames_queued_stay_queued_when_encoding_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # (whatever the cause: nothing is let go before it is encoded)
    c, s, _ = connect()
    s.conn.send_control(20, b"important")
    s.conn.ping()
    s.conn.records.pending_max_data = True

    def failing(frames: list[RawFrame]) -> bytes:
        raise LocalProtocolError("no")

    real = _core.encode_frames
    monkeypatch.setattr(_core, "encode_frames", failing)
    with pytest.raises(LocalProtocolError):
        s.conn.data_to_send(0.0)
    monkeypatch.setattr(_core, "encode_frames", real)
    sent = _sent_frames(s.conn, c.conn)
    assert {FRAME_CONTROL, FRAME_PING, FRAME_MAX_DATA} <= {f.type for f in sent}


# -- 4. the reassembly's range limit on a lossy carrier ---------------------------------


def test_an_honest_sender_past_the_range_limit_is_not_cut_off() -> None:
    # 2100 one-byte writes, each its own record, every other one lost: the receiver
    # held 1024 disjoint ranges and closed the connection (PROTOCOL_VIOLATION, "too
    # many disjoint ranges buffered"). Such records are dropped unacknowledged now, and
    # sent again.
    c, s, link = connect(reliable_carrier=False)
    sid = c.conn.open_stream()
    sent = bytearray()
    records: list[bytes] = []
    for i in range(2100):
        byte = b"%c" % (65 + i % 26)
        sent += byte
        c.conn.send_stream_data(sid, byte)
        records.append(c.conn.datagrams_to_send(link.now)[-1])  # (its stream record)
    for record in records[1::2]:
        s.conn.receive_datagram(record, link.now)
    assert s.conn.termination is None
    assert s.conn.records_dropped_fragmented > 0
    assert run(link, c, s, lambda: len(s.data.get(sid, b"")) == len(sent))
    assert bytes(s.data[sid]) == bytes(sent)
    assert s.conn.termination is None and c.conn.termination is None


def test_a_record_past_the_range_limit_is_dropped_whole() -> None:
    # Its frames after the STREAM frame are not taken (they come again with it), the
    # STREAM frame counts nothing, and the reassembly holds no more than its limit.
    c, s, link = connect(reliable_carrier=False)
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"x")
    run(link, c, s)
    server = s.conn
    for i in range(1024):
        frames = [RawFrame(FRAME_STREAM, sid, 3 + 2 * i, 0, b"y")]
        server.receive_datagram(sealed_by(c.conn, _core.encode_frames(frames)), link.now)
    stream = server.streams.by_id[sid]
    assert stream.reasm is not None and stream.reasm.buffered == 1024
    received, highest = server.streams.conn_received, stream.recv_highest
    assert server.records.acks is not None
    counter = c.conn.records.send_counter
    frames = [
        RawFrame(FRAME_STREAM, sid, 5000, 0, b"z"),
        RawFrame(FRAME_CONTROL, 20, 0, 0, b"after"),
    ]
    server.receive_datagram(sealed_by(c.conn, _core.encode_frames(frames)), link.now)
    s.drain()
    assert server.termination is None
    assert not s.of(ControlReceived)
    assert stream.reasm.buffered == 1024
    assert (server.streams.conn_received, stream.recv_highest) == (received, highest)
    assert counter not in server.records.acks.received


# -- 5. ACK records on a lossy carrier --------------------------------------------------


def _opened(receiver: Connection, records: list[bytes]) -> list[list[int]]:
    """The frame types of each of ``records``, opened as ``receiver`` would."""
    out = []
    for record in records:
        opened = receiver._recv_aead.open_frames(bytearray(record))
        out += [[frame.type for frame in r.frames] for r in opened.records]
    return out


def test_no_ack_goes_when_nothing_new_arrived() -> None:
    # Every call with something to send added an ACK of the same ranges, in a record of
    # its own: twice the records (and ledger writes) for small writes.
    c, s, link = connect(reliable_carrier=False)
    sid = c.conn.open_stream()
    run(link, c, s)
    c.conn.send_stream_data(sid, b"w")  # (with the ACK of the server's last records)
    assert _opened(s.conn, c.conn.datagrams_to_send(link.now)) == [[FRAME_ACK, FRAME_STREAM]]
    for i in range(20):
        link.now += 0.001
        c.conn.send_stream_data(sid, b"w")
        records = c.conn.datagrams_to_send(link.now)
        assert _opened(s.conn, records) == [[FRAME_STREAM]], i


def test_an_ack_due_rides_in_the_stream_record() -> None:
    c, s, link = connect(reliable_carrier=False)
    sid = c.conn.open_stream()
    run(link, c, s)
    s.conn.send_stream_data(sid, b"from the server")
    for record in s.conn.datagrams_to_send(link.now):
        c.conn.receive_datagram(record, link.now)
    c.conn.send_stream_data(sid, b"w" * 100)
    records = c.conn.datagrams_to_send(link.now)
    assert _opened(s.conn, records) == [[FRAME_ACK, FRAME_STREAM]]
    # where no stream record has room, the ACK goes on its own (nothing is held back)
    s.conn.send_stream_data(sid, b"more")
    for record in s.conn.datagrams_to_send(link.now):
        c.conn.receive_datagram(record, link.now)
    c.conn.send_stream_data(sid, b"w" * 20000)
    kinds = _opened(s.conn, c.conn.datagrams_to_send(link.now))
    assert sum(kind.count(FRAME_ACK) for kind in kinds) == 1
    assert all(kind in ([FRAME_STREAM], [FRAME_ACK], [FRAME_ACK, FRAME_STREAM]) for kind in kinds)


def _peer_reason(c: Side, s: Side, link: Any) -> str:
    run(link, c, s, until=lambda: s.conn.closed)
    terms = s.of(ConnectionTerminated)
    assert len(terms) == 1
    return cast(ConnectionTerminated, terms[0]).reason


@pytest.mark.parametrize(
    "reason",
    ["a" * 1023 + "é", "ab" + "😀" * 300, "€" * 400],
    ids=["2-byte", "4-byte", "3-byte"],
)
def test_a_long_close_reason_is_cut_on_a_character_boundary(reason: str) -> None:
    # cut at byte 1024, a multi-byte character split there reached the peer as a
    # U+FFFD (it decodes with "replace")
    c, s, link = connect()
    c.conn.close(CloseCode.NO_ERROR, reason)
    got = _peer_reason(c, s, link)
    assert "\ufffd" not in got
    assert reason.startswith(got)
    assert 1024 - 3 <= len(got.encode("utf-8")) <= 1024


def test_a_failure_reason_is_cut_on_a_character_boundary() -> None:
    # the connection's own failures (_fail) cut their reason the same way
    c, s, link = connect()
    reason = "a" + "é" * 600
    c.conn._fail(CloseCode.PROTOCOL_VIOLATION, reason, link.now)
    got = _peer_reason(c, s, link)
    assert got == "a" + "é" * 511  # 1023 bytes: the 512th "é" did not fit whole


def _feed(c: Side, s: Side, frames: list[RawFrame], reliable: bool, now: float) -> None:
    """Frames from the server (sealed with its keys) into the client."""
    record = sealed_by(s.conn, _core.encode_frames(frames))
    if reliable:
        c.conn.receive_data(record, now)
    else:
        c.conn.receive_datagram(record, now)


def _resets(frames: list[RawFrame]) -> list[int]:
    return [f.a for f in frames if f.type == FRAME_RESET_STREAM]


@pytest.mark.parametrize("reliable", [True, False], ids=["reliable", "lossy"])
def test_stop_sending_after_our_fin_was_acknowledged_sends_no_reset(reliable: bool) -> None:
    c, s, link = connect(reliable_carrier=reliable)
    # a stream still sending: the STOP_SENDING resets it, as ever
    busy = c.conn.open_stream()
    c.conn.send_stream_data(busy, b"more to come")
    # a stream whose data and FIN the server has (acknowledged, on a lossy carrier);
    # its receiving half stays open, so the client keeps it
    done = c.conn.open_stream()
    c.conn.send_stream_data(done, b"hello", end_stream=True)

    def acknowledged() -> bool:
        stream = c.conn.streams.by_id[done]
        return done in s.eof and stream.fin_acked and stream.base_offset == stream.end_offset

    assert run(link, c, s, until=acknowledged)
    frames_sent_by_client(c, s, reliable, link.now)  # (whatever was due: ACKs on a lossy carrier)
    c.events.clear()
    frames = [RawFrame(FRAME_STOP_SENDING, busy, 7), RawFrame(FRAME_STOP_SENDING, done, 9)]
    _feed(c, s, frames, reliable, link.now)
    c.drain()
    assert _resets(frames_sent_by_client(c, s, reliable, link.now)) == [busy]
    # nothing of ours was stopped on ``done``: no event saying our sending was reset
    stops = [cast(StopSendingReceived, e).stream_id for e in c.of(StopSendingReceived)]
    assert stops == [busy]
    assert not c.conn.closed and not s.conn.closed
    if not reliable:
        # a FIN not yet acknowledged may be lost: that stream is reset still (RFC 9000
        # 3.5: only "Data Recvd" needs no RESET_STREAM)
        sid = c.conn.open_stream()
        c.conn.send_stream_data(sid, b"x", end_stream=True)
        assert any(
            f.type == FRAME_STREAM_FIN for f in frames_sent_by_client(c, s, False, link.now)
        )  # lost
        _feed(c, s, [RawFrame(FRAME_STOP_SENDING, sid, 9)], False, link.now)
        assert _resets(frames_sent_by_client(c, s, False, link.now)) == [sid]


def test_a_fin_sealed_with_the_data_is_sent_once() -> None:
    # send_stream_data's fast path sealed the FIN with the last byte, then queued it
    # again: a second, empty STREAM_FIN followed (and the stream was not "done" until)
    c, s, link = connect()
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"hello", end_stream=True)
    fins = [
        (f.a, f.b, f.data)
        for f in frames_sent_by_client(c, s, True, link.now)
        if f.type == FRAME_STREAM_FIN
    ]
    assert fins == [(sid, 0, b"hello")]
    assert c.conn.streams.by_id[sid].send_state.value == "fin-sent"


def test_a_connection_keeps_its_streams_in_its_stream_table() -> None:
    c, s, link = connect()
    stream_id = c.conn.open_stream()
    c.conn.send_stream_data(stream_id, b"hello", end_stream=True)
    run(link, c, s, until=lambda: s.eof)
    assert s.data[stream_id] == b"hello"
    assert s.conn._streams is s.conn.streams.by_id
    assert s.conn.streams.peer_opened == 1 and c.conn.streams.opened_by_us == 1
    assert c.conn.streams.ended(stream_id) is False  # the server has not ended its half
    assert s.conn.usage == (5, 1)
