"""A hostile or buggy peer speaking to a Connection, driven in memory: the peer holds
its keys, so it seals valid records around whatever frames it likes. Each must end in
the documented typed error, or be ignored, and never grow memory without bound."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

import msgpack
import pytest

from dtp.errors import HandshakeError, LocalProtocolError
from dtp.native import core as _core
from dtp.native.types import (
    FRAME_CONTROL,
    FRAME_DATAGRAM,
    FRAME_PING,
    FRAME_RESET_STREAM,
    FRAME_STREAM,
    FRAME_STREAM_FIN,
    REC_DATA,
    REC_HS_INIT,
    REC_HS_RESP,
    RawFrame,
)
from dtp.protocol import _recovery as _recovery
from dtp.protocol._events import (
    ControlReceived,
    DatagramReceived,
    PeerAuthenticated,
    ReceiptReceived,
    StreamDataReceived,
    StreamResetReceived,
)
from dtp.protocol._recovery import LossRecovery, SentRecord
from dtp.protocol._state import ControlKind
from dtp.protocol.connection import (
    MAX_PENDING_EARLY_RECORDS,
    CloseCode,
    Connection,
    ConnectionConfig,
    ConnectionTerminated,
    _parse_params,
)
from tests.protocol.hostile_frames import xx_authenticated_server
from tests.support.pairs import CLIENT_ID, Side, connect, make_pair, sealed_by


def send_frames(
    c: Side, s: Side, frames: list[RawFrame], now: float
) -> ConnectionTerminated | None:
    """The client (as the hostile peer) seals ``frames`` in one record to the server."""
    s.conn.receive_data(sealed_by(c.conn, _core.encode_frames(frames)), now)
    s.drain()
    return s.conn.termination


@pytest.mark.parametrize("first", [(50, 50), (0, 50)], ids=["gap-then-fin", "delivered-then-fin"])
def test_lossy_fin_below_data_already_received_is_a_protocol_violation(
    first: tuple[int, int],
) -> None:
    # A FIN ending the stream at 10 after bytes up to 100 (or 50) arrived: the bytes past
    # the end were silently dropped by the reassembly, or (all delivered already) the
    # stream sat in FIN_RECEIVED forever, neither finishing nor failing.
    c, s, link = connect(reliable_carrier=False)
    offset, length = first
    assert (
        send_frames(c, s, [RawFrame(FRAME_STREAM, 0, offset, 0, b"y" * length)], link.now) is None
    )
    term = send_frames(c, s, [RawFrame(FRAME_STREAM_FIN, 0, 0, 0, b"y" * 10)], link.now)
    assert term is not None and term.error_code == CloseCode.PROTOCOL_VIOLATION
    assert "final size" in term.reason


@pytest.mark.parametrize("reliable", [True, False], ids=["reliable", "lossy"])
def test_a_fin_at_the_data_received_so_far_still_ends_the_stream(reliable: bool) -> None:
    c, s, link = connect(reliable_carrier=reliable)
    assert send_frames(c, s, [RawFrame(FRAME_STREAM, 0, 0, 0, b"y" * 10)], link.now) is None
    assert send_frames(c, s, [RawFrame(FRAME_STREAM_FIN, 0, 10, 0, b"")], link.now) is None
    assert 0 in s.eof and bytes(s.data[0]) == b"y" * 10


@pytest.mark.parametrize("final", [29, 31, 1000])
def test_a_reset_may_not_move_a_final_size_the_fin_fixed(final: int) -> None:
    # lossy: bytes 20..30 and the FIN at 30 arrived, 0..20 not yet; a RESET_STREAM
    # claiming another final size was taken (and 1000 charged to the window)
    c, s, link = connect(reliable_carrier=False)
    assert send_frames(c, s, [RawFrame(FRAME_STREAM_FIN, 0, 20, 0, b"y" * 10)], link.now) is None
    term = send_frames(c, s, [RawFrame(FRAME_RESET_STREAM, 0, 7, final)], link.now)
    assert term is not None and term.error_code == CloseCode.PROTOCOL_VIOLATION


def test_a_reset_at_the_fins_final_size_is_taken() -> None:
    c, s, link = connect(reliable_carrier=False)
    assert send_frames(c, s, [RawFrame(FRAME_STREAM_FIN, 0, 20, 0, b"y" * 10)], link.now) is None
    assert send_frames(c, s, [RawFrame(FRAME_RESET_STREAM, 0, 7, 30)], link.now) is None
    assert not s.of(StreamDataReceived)


def test_records_in_flight_stay_bounded_when_the_peer_never_acknowledges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Datagrams are not flow-controlled: to a peer that keeps the connection alive with
    # PINGs but acknowledges nothing, every datagram record stayed in flight for good.
    monkeypatch.setattr(_recovery, "MAX_IN_FLIGHT", 64, raising=False)
    c, s, link = connect(reliable_carrier=False)
    server = s.conn
    now = link.now
    sid = server.open_stream()
    payload = bytes(range(256)) * 40
    server.send_stream_data(sid, payload, end_stream=True)
    for i in range(300):
        server.send_datagram(b"q" * 10)
        server.data_to_send(now)
        if i % 50 == 0:
            send_frames(c, s, [RawFrame(FRAME_PING)], now)
            server.handle_timer(now)
        now += 0.001
    assert server.termination is None
    assert server.records.recovery is not None and len(server.records.recovery.in_flight) <= 64
    # what was given up is sent again: the stream still reaches the peer whole
    client_side = Side(c.conn)
    for _ in range(200):
        for record in server.datagrams_to_send(now):
            c.conn.receive_datagram(record, now)
        for record in c.conn.datagrams_to_send(now):
            server.receive_datagram(record, now)
        client_side.drain()
        if sid in client_side.eof:
            break
        now += 0.05
        server.handle_timer(now)
        c.conn.handle_timer(now)
    assert bytes(client_side.data[sid]) == payload


def test_datagrams_alone_to_a_silent_peer_do_not_pile_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_recovery, "MAX_IN_FLIGHT", 32, raising=False)
    c, s, link = connect(reliable_carrier=False)
    for _ in range(100):
        s.conn.send_datagram(b"d")
        s.conn.data_to_send(link.now)
    assert s.conn.records.recovery is not None and len(s.conn.records.recovery.in_flight) <= 32
    # the datagrams given up are not sent again
    send_frames(c, s, [RawFrame(FRAME_DATAGRAM, 0, 0, 0, b"x")], link.now)
    assert all(
        f.type != FRAME_DATAGRAM for f in s.conn.records.ctrl
    )  # nothing requeued for resending


def test_a_probe_behind_lost_datagrams_still_recovers_the_stream() -> None:
    # Datagram records lost, then a stream's records lost: the probe timeout gave up
    # the two oldest records (datagrams: nothing to send again), sent nothing, and
    # doubled its wait; without keepalives the stream stalled for good.
    c, s, link = connect(reliable_carrier=False, keepalive_interval=None)
    server, client = s.conn, Side(c.conn)
    now = link.now
    for _ in range(20):
        server.send_datagram(b"d" * 100)
        server.datagrams_to_send(now)  # lost
    sid = server.open_stream()
    server.send_stream_data(sid, b"payload" * 100, end_stream=True)
    server.datagrams_to_send(now)  # lost too
    deadline = now + 20.0
    while sid not in client.eof and now < deadline:
        moved = True
        while moved:  # a perfect carrier now, until both sides are quiet
            out = server.datagrams_to_send(now)
            back = client.conn.datagrams_to_send(now)
            for record in out:
                client.conn.receive_datagram(record, now)
            for record in back:
                server.receive_datagram(record, now)
            moved = bool(out or back)
        client.drain()
        if sid in client.eof:
            break
        timer = min(t for t in (server.get_timer(), client.conn.get_timer()) if t is not None)
        now = max(now, timer)
        server.handle_timer(now)
        client.conn.handle_timer(now)
    assert bytes(client.data[sid]) == b"payload" * 100
    assert now < link.now + 20.0


def test_datagrams_held_before_accept_are_bounded() -> None:
    # the server holds a client's frames until accept(); datagrams are not flow-
    # controlled, and 2000 of 16000 bytes were all kept (32 MB)
    client, server = xx_authenticated_server()
    frame = _core.encode_frames([RawFrame(FRAME_DATAGRAM, 0, 0, 0, b"d" * 16000)])
    for _ in range(2000):
        server.receive_data(sealed_by(client, frame), 0.0)
    assert server.termination is None
    held = sum(len(e.data) for e in server._held_events or () if isinstance(e, DatagramReceived))
    assert 0 < held <= server.config.connection_window
    server.accept()
    events = list(iter(server.next_event, None))
    assert sum(isinstance(e, DatagramReceived) for e in events) == held // 16000


def test_control_frames_held_before_accept_are_bounded() -> None:
    client, server = xx_authenticated_server()
    frame = _core.encode_frames([RawFrame(FRAME_CONTROL, 16, 0, 0, b"c" * 16000)])
    for _ in range(2000):
        server.receive_data(sealed_by(client, frame), 0.0)
        if server.closed:
            break
    term = server.termination
    assert term is not None and term.error_code == CloseCode.PROTOCOL_VIOLATION
    assert not server._held_events


@pytest.mark.parametrize("key", ["v", "md", "msd", "ms", "it"])
def test_a_boolean_transport_parameter_fails_the_handshake(key: str) -> None:
    params = {"v": 1, "md": 1 << 20, "msd": 1 << 20, "ms": 8, "it": 60000}
    params[key] = True
    with pytest.raises(HandshakeError, match=key):
        _parse_params(msgpack.packb(params))


class _CountingTable(OrderedDict[int, SentRecord]):
    """An in-flight table that counts the entries its scans visit."""

    visited = 0

    def __iter__(self) -> Iterator[int]:
        for key in super().__iter__():
            _CountingTable.visited += 1
            yield key


def test_wide_ack_ranges_for_records_never_sent_do_not_scan_the_table() -> None:
    # 256 ranges per ACK frame, each wider than the table: every range scanned all the
    # records in flight (a peer burned 40 ms of our CPU per 16 KB record)
    recovery = LossRecovery()
    recovery.in_flight = _CountingTable()
    for counter in range(512):
        recovery.on_sent(SentRecord(counter, 0.0, [], True))
    ranges = []
    hi = 1 << 61
    for _ in range(256):
        ranges.append((hi - 1000, hi))
        hi -= 1002
    _CountingTable.visited = 0
    assert recovery.on_ack(tuple(ranges), 0, 1.0) == ([], [])
    assert _CountingTable.visited < 64
    assert len(recovery.in_flight) == 512
    # ranges that do cover records still acknowledge exactly those
    acked, _ = recovery.on_ack(((600, 1 << 40), (100, 597), (10, 20)), 0, 1.0)
    assert sorted(r.counter for r in acked) == list(range(10, 21)) + list(range(100, 512))


@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
def test_lossy_server_data_ahead_of_a_lost_accept_is_sent_again(ik: bool) -> None:
    # The record with the ACCEPT was lost and the server's first stream bytes (sent
    # right after accept()) arrived: the client closed with PROTOCOL_VIOLATION 'stream
    # data before authentication', a legitimate order on a lossy carrier.
    client, server = make_pair(ik=ik, reliable_carrier=False)
    c, s = Side(client), Side(server)
    now = 0.0
    sid = -1
    while sid < 0:
        for record in client.datagrams_to_send(now):
            server.receive_datagram(record, now)
        s.drain()
        if s.of(PeerAuthenticated):
            server.accept()
            sid = 0 if ik else server.open_stream()
            server.send_stream_data(sid, b"first words", end_stream=True)
            flight = server.datagrams_to_send(now)
            accept_record = next(i for i, r in enumerate(flight) if r[0] == REC_DATA)
            for i, record in enumerate(flight):
                if i != accept_record:
                    client.receive_datagram(record, now)
            c.drain()
            assert not client.closed
        else:
            for record in server.datagrams_to_send(now):
                client.receive_datagram(record, now)
    while sid not in c.eof and now < 30.0:
        moved = True
        while moved:
            out, back = server.datagrams_to_send(now), client.datagrams_to_send(now)
            for record in out:
                client.receive_datagram(record, now)
            for record in back:
                server.receive_datagram(record, now)
            c.drain()
            s.drain()
            moved = bool(out or back)
        now = min(t for t in (client.get_timer(), server.get_timer()) if t is not None)
        client.handle_timer(now)
        server.handle_timer(now)
    assert client.established and bytes(c.data[sid]) == b"first words"
    assert sum(1 for e in c.events if isinstance(e, StreamDataReceived) and e.data) == 1


def test_lossy_reset_gives_back_the_credit_of_bytes_held_behind_a_gap() -> None:
    # The first bytes of each stream were lost, the rest arrived and waited in the
    # reassembly, then the sender reset the stream: those waiting bytes were never
    # delivered nor credited back, so each such reset shrank the connection window for
    # good, until an honest sender stalled (here: a flow-control error on the 5th).
    window = 64 * 1024
    c, s, link = connect(reliable_carrier=False, stream_window=window, connection_window=window)
    for i in range(8):
        sid = 4 * i
        stream = [RawFrame(FRAME_STREAM, sid, 1, 0, b"x" * 16000)]
        assert send_frames(c, s, stream, link.now) is None
        assert send_frames(c, s, [RawFrame(FRAME_RESET_STREAM, sid, 0, 16001)], link.now) is None
        s.conn.data_to_send(link.now)  # the credit update goes out
    assert s.conn.streams.conn_consumed == s.conn.streams.conn_received == 8 * 16001
    assert not s.of(StreamDataReceived)


def test_lossy_forged_records_before_the_handshake_ends_do_not_end_it() -> None:
    # Anyone can write records of kind DATA before the keys exist: the 65th held while
    # the XX server waited for message 3 failed the handshake.
    client, server = make_pair(ik=False, reliable_carrier=False)
    c, s = Side(client), Side(server)
    for record in client.datagrams_to_send(0.0):
        server.receive_datagram(record, 0.0)
    forged = _core.write_record_header(REC_DATA, 0, 32, 0) + bytes(32)
    for _ in range(200):
        server.receive_datagram(forged, 0.0)
    assert not server.closed and len(server._early_records) <= MAX_PENDING_EARLY_RECORDS
    now = 0.0
    while not client.established and now < 5.0:
        for record in server.datagrams_to_send(now):
            client.receive_datagram(record, now)
        for record in client.datagrams_to_send(now):
            server.receive_datagram(record, now)
        s.drain()
        c.drain()
        if s.of(PeerAuthenticated) and not server.established:
            server.accept()
        now += 0.1
        server.handle_timer(now)
        client.handle_timer(now)
    assert client.established and server.established


def _ik_lossy_accepted_flight(act: Callable[[Connection], None]) -> tuple[Side, Side, list[bytes]]:
    """An IK pair over a lossy carrier whose server accepted and then did ``act``:
    returns the sides and the server's flight (message 2, then DATA records)."""
    client, server = make_pair(ik=True, reliable_carrier=False)
    c, s = Side(client), Side(server)
    for record in client.datagrams_to_send(0.0):
        server.receive_datagram(record, 0.0)
    s.drain()
    server.accept()
    server.datagrams_to_send(0.0)  # message 2 and the ACCEPT: lost
    act(server)
    return c, s, server.datagrams_to_send(0.0)


def test_lossy_reset_of_stream_0_ahead_of_the_accept_is_not_lost() -> None:
    c, s, flight = _ik_lossy_accepted_flight(lambda server: server.reset_stream(0, 9))
    client = c.conn
    now = 0.0
    while not c.of(StreamResetReceived) and now < 30.0:
        for record in flight:
            client.receive_datagram(record, now)
        c.drain()
        for record in client.datagrams_to_send(now):
            s.conn.receive_datagram(record, now)
        now += 0.25
        client.handle_timer(now)
        s.conn.handle_timer(now)
        flight = s.conn.datagrams_to_send(now)
    assert client.established
    assert [e.error_code for e in c.of(StreamResetReceived)] == [9]


def test_a_record_with_the_accept_before_stream_data_is_taken_whole() -> None:
    # a peer may put the ACCEPT and the first stream bytes in one record
    client, server = make_pair(ik=True, reliable_carrier=False)
    c = Side(client)
    for record in client.datagrams_to_send(0.0):
        server.receive_datagram(record, 0.0)
    while server.next_event() is not None:
        pass
    server.accept()
    flight = server.datagrams_to_send(0.0)
    client.receive_datagram(flight[0], 0.0)  # message 2 only
    frames = [
        RawFrame(FRAME_CONTROL, int(ControlKind.ACCEPT)),
        RawFrame(FRAME_STREAM, 0, 0, 0, b"hi"),
    ]
    client.receive_datagram(sealed_by(server, _core.encode_frames(frames)), 0.0)
    c.drain()
    assert client.established and bytes(c.data[0]) == b"hi"


@pytest.mark.parametrize("kind", ["forged", "replayed"])
def test_lossy_records_that_do_not_authenticate_do_not_hold_off_the_idle_timeout(
    kind: str,
) -> None:
    # anyone can send datagrams: forged records (dropped as damage) and replayed copies
    # (dropped as duplicates) kept the connection alive past its idle timeout forever
    c, s, link = connect(reliable_carrier=False, idle_timeout=5.0, keepalive_interval=None)
    now = link.now
    if kind == "forged":
        record = _core.write_record_header(REC_DATA, 0, 32, 0) + bytes(32)
    else:
        record = sealed_by(c.conn, _core.encode_frames([RawFrame(FRAME_PING)]))
        s.conn.receive_datagram(record, now)
    for _ in range(30):
        now += 1.0
        s.conn.receive_datagram(record, now)
        s.conn.handle_timer(now)
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.IDLE_TIMEOUT


def test_lossy_authentic_records_still_keep_the_connection_alive() -> None:
    c, s, link = connect(reliable_carrier=False, idle_timeout=5.0, keepalive_interval=None)
    now = link.now
    for _ in range(30):
        now += 1.0
        s.conn.receive_datagram(sealed_by(c.conn, _core.encode_frames([RawFrame(FRAME_PING)])), now)
        s.conn.handle_timer(now)
    assert s.conn.termination is None


@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
def test_lossy_server_answers_only_a_copy_of_the_first_message_again(ik: bool) -> None:
    # any HS_INIT record (13 forged bytes will do) had the server send message 2 again,
    # to its client, on demand
    client, server = make_pair(ik=ik, reliable_carrier=False)
    first = client.datagrams_to_send(0.0)
    for record in first:
        server.receive_datagram(record, 0.0)
    if ik:
        while server.next_event() is not None:
            pass
        server.accept()
    assert server.datagrams_to_send(0.0)
    for forged in (
        _core.write_record_header(REC_HS_INIT, 0, 1, 0) + b"\x01",
        _core.write_record_header(REC_HS_INIT, 0, 32, 0) + bytes(32),
    ):
        server.receive_datagram(forged, 0.1)
        assert not server.closed
        assert server.datagrams_to_send(0.1) == []
    for record in first:  # the client's own repeat is answered
        server.receive_datagram(record, 0.2)
    # message 2 again, and in IK the verdict's record: the client repeats message 1
    # until the verdict arrives (docs/protocol.md 8.6)
    answer = [REC_HS_RESP, REC_DATA] if ik else [REC_HS_RESP]
    assert [r[0] for r in server.datagrams_to_send(0.2)] == answer


@pytest.mark.parametrize("window", [0, 1 << 32])
def test_a_lossy_stream_window_the_reassembly_cannot_hold_is_refused_up_front(
    window: int,
) -> None:
    # it made the first stream frame raise LocalProtocolError out of receive_data
    # (refused by the config itself: a ValueError, as for its other values)
    with pytest.raises(ValueError, match="stream_window"):
        make_pair(reliable_carrier=False, stream_window=window)
    make_pair(reliable_carrier=False, stream_window=(1 << 32) - 1)


@pytest.mark.parametrize(
    ("reliable", "size"), [(False, 10), (False, 21), (False, 16385), (True, 0), (True, 20000)]
)
def test_a_record_size_the_connection_cannot_pack_is_refused_up_front(
    reliable: bool, size: int
) -> None:
    # lossy, 21 bytes: no room for a stream byte, and sending looped forever; 10: a
    # negative length; above 16384: data_to_send failed to seal the records it packed
    # (refused by the config itself: a ValueError)
    with pytest.raises(ValueError, match="max_record_plaintext"):
        make_pair(reliable_carrier=reliable, max_record_plaintext=size)


def test_the_smallest_lossy_record_size_still_moves_stream_bytes() -> None:
    c, _s, link = connect(reliable_carrier=False, max_record_plaintext=22)
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"x" * 100, end_stream=True)
    assert len(c.conn.datagrams_to_send(link.now)) >= 100


@pytest.mark.parametrize("reliable", [True, False], ids=["reliable", "lossy"])
def test_frames_too_big_for_a_record_are_refused_when_queued(reliable: bool) -> None:
    # they were queued, then data_to_send raised 'frame length exceeds its limit' and
    # lost every frame queued with them
    c, s, link = connect(reliable_carrier=reliable, max_datagram_size=20000)
    conn = c.conn
    conn.send_control(16, b"kept")
    with pytest.raises(LocalProtocolError, match="control body"):
        conn.send_control(16, b"x" * 16381)
    with pytest.raises(LocalProtocolError, match="receipt"):
        conn.send_receipt(b"r" * 1025)
    with pytest.raises(LocalProtocolError, match="datagram"):
        conn.send_datagram(b"d" * 16382)
    with pytest.raises(LocalProtocolError):
        conn.send_control(1 << 62, b"")  # a kind past the varint range
    # the largest of each still go, and arrive
    conn.send_control(16, b"x" * 16380)
    conn.send_receipt(b"r" * 1024)
    conn.send_datagram(b"d" * 16381)
    for record in conn.datagrams_to_send(link.now):
        s.conn.receive_datagram(record, link.now)
    s.drain()
    assert [len(e.data) for e in s.of(ControlReceived)] == [4, 16380]
    assert [len(e.data) for e in s.of(ReceiptReceived)] == [1024]
    assert [len(e.data) for e in s.of(DatagramReceived)] == [16381]


@pytest.mark.parametrize("code", [-1, 1 << 62])
@pytest.mark.parametrize("call", ["reset_stream", "stop_sending", "close"])
def test_an_error_code_outside_the_varint_range_is_refused_when_given(call: str, code: int) -> None:
    # it was taken, then every data_to_send raised (a close's frame stayed queued, so
    # the connection could never send again)
    c, s, link = connect()
    conn = c.conn
    sid = conn.open_stream()
    conn.send_stream_data(sid, b"a")
    with pytest.raises(LocalProtocolError, match="error code"):
        if call == "close":
            conn.close(code, "x")
        else:
            getattr(conn, call)(sid, code)
    assert not conn.closed
    s.conn.receive_data(conn.data_to_send(link.now), link.now)
    s.drain()
    assert bytes(s.data[sid]) == b"a"


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 0.0, -1.0])
@pytest.mark.parametrize("client", [True, False], ids=["client", "server"])
def test_an_idle_timeout_the_peer_cannot_be_told_is_refused_up_front(
    timeout: float, client: bool
) -> None:
    # infinity: OverflowError at construction (client) or out of receive_data when the
    # server wrote its parameters; zero or less: the peer's handshake failed on 'it'.
    # Refused when the config is made (a ValueError, as for the other seconds)
    with pytest.raises(ValueError, match="idle_timeout"):
        ConnectionConfig(identity=CLIENT_ID, is_client=client, idle_timeout=timeout)


def test_a_huge_idle_timeout_is_sent_at_the_parameter_limit() -> None:
    c, s, _link = connect(idle_timeout=1e30)
    assert c.conn.established and s.conn.peer_params["it"] == 2**62 - 1


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"connection_window": 2**64}, ValueError),  # msgpack's OverflowError, at first
        ({"stream_window": 2**62}, ValueError),
        ({"max_streams": -1}, ValueError),
        ({"max_streams": True}, TypeError),
        ({"port": 70000}, ValueError),
        ({"connection_id": b"x" * 5}, ValueError),
    ],
)
def test_transport_parameters_the_peer_would_refuse_are_refused_up_front(
    change: dict[str, object], error: type[Exception]
) -> None:
    # the server's handshake failed on them, and the client saw only a timeout (refused
    # by the config itself, as its other values: TypeError or ValueError)
    with pytest.raises(error, match=next(iter(change))):
        make_pair(**change)
