"""The sans-I/O connection, two of them wired in memory (dtp.transport.carriers._memory)."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dtp.errors import (
    ConnectionClosed,
    ConnectionRefused,
    DecryptionError,
    DTPError,
    HandshakeError,
    LocalProtocolError,
    PaymentError,
    PaymentRequired,
    RemoteProtocolError,
)
from dtp.identity.keys import HostIdentity
from dtp.native import core as _core
from dtp.native.types import FRAME_RESET_STREAM, FRAME_STREAM, RawFrame
from dtp.payments.metering import CLOSE_PAYMENT_REQUIRED
from dtp.protocol._events import (
    ConnectionAccepted,
    ConnectionTerminated,
    ControlReceived,
    DatagramReceived,
    HandshakeCompleted,
    PeerAuthenticated,
    ReceiptReceived,
    StreamDataReceived,
    StreamOpened,
    StreamResetReceived,
)
from dtp.protocol.connection import CloseCode, Connection, error_for_termination
from dtp.transport.carriers._memory import MemoryLink
from tests.support.pairs import (
    CLIENT_ID,
    SERVER_ID,
    Side,
    assert_refused,
    connect,
    make_pair,
    run,
    sealed_by,
)


@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
@pytest.mark.parametrize("split", ["whole", "bytes", "random"])
def test_handshake_and_echo(ik: bool, split: str) -> None:
    c, s, link = connect(split=split, ik=ik)
    assert c.conn.established and s.conn.established
    hs_c, hs_s = c.of(HandshakeCompleted)[0], s.of(HandshakeCompleted)[0]
    assert hs_c.pattern == hs_s.pattern == ("IK" if ik else "XX")
    assert hs_c.handshake_hash == hs_s.handshake_hash
    assert hs_c.peer_static == SERVER_ID.noise_public
    assert hs_s.peer_static == CLIENT_ID.noise_public
    auth = s.of(PeerAuthenticated)
    assert [a.address for a in auth] == [CLIENT_ID.sui_address]  # type: ignore[attr-defined]
    assert s.conn.peer_address == CLIENT_ID.sui_address
    assert c.of(ConnectionAccepted) and s.of(ConnectionAccepted)

    sid = c.conn.open_stream()
    payload = os.urandom(100_000)
    c.conn.send_stream_data(sid, payload, end_stream=True)
    assert run(link, c, s, lambda: sid in s.eof)
    assert bytes(s.data[sid]) == payload
    s.conn.send_stream_data(sid, payload[::-1], end_stream=True)
    assert run(link, c, s, lambda: sid in c.eof)
    assert bytes(c.data[sid]) == payload[::-1]
    assert [e.stream_id for e in s.of(StreamOpened)] == [sid]  # type: ignore[attr-defined]


@pytest.mark.parametrize("split", ["whole", "bytes", "random"])
def test_stream_data_handler_gets_the_same_bytes(split: str) -> None:
    """With a stream data handler (what the I/O adapters use) stream bytes skip the
    event queue, through the fast paths for sending and receiving, under any split;
    they arrive whole and in order, and flow-control credit keeps flowing."""
    c, s, link = connect(split=split, stream_window=64 * 1024)
    got: dict[int, bytearray] = {}
    ends: list[int] = []

    def handler(stream_id: int, data: bytes | memoryview, end: bool) -> None:
        got.setdefault(stream_id, bytearray()).extend(data)
        s.conn.acknowledge_read(stream_id, len(data))
        if end:
            ends.append(stream_id)

    s.conn.stream_data_handler = handler
    sid = c.conn.open_stream()
    payload = os.urandom(300_000)
    for i in range(0, len(payload), 7_000):
        c.conn.send_stream_data(sid, memoryview(payload)[i : i + 7_000])
    c.conn.send_stream_data(sid, b"", end_stream=True)
    assert run(link, c, s, lambda: sid in ends)
    assert bytes(got[sid]) == payload
    assert not s.of(StreamDataReceived)
    assert [e.stream_id for e in s.of(StreamOpened)] == [sid]  # type: ignore[attr-defined]


def test_server_can_write_first_on_the_clients_stream() -> None:
    c, s, link = connect()
    sid = c.conn.open_stream()
    assert run(link, c, s, lambda: bool(s.of(StreamOpened)))
    s.conn.send_stream_data(sid, b"220 welcome\r\n")
    assert run(link, c, s, lambda: bytes(c.data.get(sid, b"")) == b"220 welcome\r\n")


def test_many_streams_interleaved() -> None:
    c, s, link = connect()
    rng = random.Random(5)
    expected: dict[int, bytes] = {}
    for _ in range(20):
        sid = c.conn.open_stream()
        expected[sid] = rng.randbytes(rng.randrange(0, 50_000))
    for sid, data in expected.items():
        c.conn.send_stream_data(sid, data[: len(data) // 2])
    for sid, data in expected.items():
        c.conn.send_stream_data(sid, data[len(data) // 2 :], end_stream=True)
    assert run(link, c, s, lambda: set(expected) <= s.eof)
    assert {k: bytes(v) for k, v in s.data.items() if k in expected} == {
        k: v for k, v in expected.items() if v
    } | {k: b"" for k, v in expected.items() if not v and k in s.data}


def test_refused_client_sees_reason_and_server_app_sees_no_data() -> None:
    client, server = make_pair()
    c, s = Side(client), Side(server)
    link = MemoryLink(client, server)

    def step() -> None:
        c.drain()
        s.drain()
        if s.of(PeerAuthenticated) and not server.closed:
            server.refuse("address is on the deny list")

    # the client optimistically sends data right after its proof
    def client_sends() -> None:
        step()
        if client.handshake_hash and not client.closed and not client.streams.by_id:
            sid = client.open_stream()
            client.send_stream_data(sid, b"secret request")

    link.run(lambda: client.closed, on_round=client_sends)
    assert_refused(c, s, "address is on the deny list")


def test_wrong_server_key_fails_handshake() -> None:
    impostor = HostIdentity.generate()
    client, server = make_pair(server_id=impostor)  # client expects the impostor's key
    link = MemoryLink(client, server)
    link.run(lambda: server.closed and client.closed)
    s_term, c_term = server.termination, client.termination
    assert s_term is not None and s_term.error_code == CloseCode.HANDSHAKE_FAILED
    assert c_term is not None and c_term.error_code == CloseCode.HANDSHAKE_FAILED
    assert isinstance(error_for_termination(c_term), HandshakeError)


def test_xx_pinned_key_mismatch() -> None:
    client, server = make_pair(
        ik=False, expected_server_static=HostIdentity.generate().noise_public
    )
    link = MemoryLink(client, server)
    link.run(lambda: client.closed)
    term = client.termination
    assert term is not None and term.error_code == CloseCode.HANDSHAKE_FAILED
    assert "expected" in term.reason


@pytest.mark.parametrize("position", [0, 5, 12, 20, -1])
def test_tampered_record_closes_with_decrypt_error(position: int) -> None:
    c, s, link = connect()
    record = bytearray(
        sealed_by(c.conn, _core.encode_frames([RawFrame(FRAME_STREAM, 0, 0, 0, b"x")]))
    )
    record[position] ^= 0x01
    s.conn.receive_data(bytes(record), link.now)
    s.drain()
    term = s.conn.termination
    assert term is not None and not term.by_peer
    # a flipped header byte may break the header itself (a framing error), its counter
    # (not the next one: over TCP records come in order) or its authentication; each
    # ends the connection with a protocol code
    codes = [CloseCode.DECRYPT_ERROR, CloseCode.FRAME_ENCODING_ERROR]
    if position in range(4, 12):  # the counter's bytes
        codes.append(CloseCode.REPLAY_DETECTED)
    assert term.error_code in codes
    error = error_for_termination(term)
    assert isinstance(error, RemoteProtocolError)
    if term.error_code == CloseCode.DECRYPT_ERROR:
        assert isinstance(error, DecryptionError)
    # the peer is told why
    run(link, c, s, lambda: c.conn.closed)
    assert c.conn.termination is not None and c.conn.termination.by_peer
    assert c.conn.termination.error_code == term.error_code


def test_replayed_record_closes_over_reliable_carrier() -> None:
    c, s, link = connect()
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"hello")
    wire = c.conn.data_to_send(link.now)
    s.conn.receive_data(wire, link.now)
    s.conn.receive_data(wire, link.now)
    s.drain()
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.REPLAY_DETECTED
    assert bytes(s.data[sid]) == b"hello"  # delivered once


def test_malformed_frames_inside_a_good_record() -> None:
    c, s, link = connect()
    s.conn.receive_data(sealed_by(c.conn, b"\xff\x00"), link.now)  # unknown frame type
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.FRAME_ENCODING_ERROR


def test_oversized_stream_frame_is_a_protocol_error() -> None:
    c, s, link = connect()
    # a STREAM frame whose length field claims more than a frame may carry
    bad = bytes([FRAME_STREAM, 0, 0]) + b"\x80\x00\x50\x00" + b"x" * 10
    s.conn.receive_data(sealed_by(c.conn, bad), link.now)
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.FRAME_ENCODING_ERROR


def test_data_on_a_stream_we_never_opened() -> None:
    c, s, link = connect()
    frame = _core.encode_frames([RawFrame(FRAME_STREAM, 9, 0, 0, b"x")])  # odd = server's
    s.conn.receive_data(sealed_by(c.conn, frame), link.now)
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.PROTOCOL_VIOLATION


def test_flow_control_bounds_what_a_slow_reader_buffers() -> None:
    window = 64 * 1024
    c, s, link = connect(stream_window=window, connection_window=4 * window)
    s.auto_read = False  # the server application does not read
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, os.urandom(1_000_000))
    run(link, c, s)
    assert len(s.data[sid]) == window  # exactly one window crossed
    assert c.conn.send_buffered(sid) == 1_000_000 - window
    # reading returns credit and the rest flows
    s.conn.acknowledge_read(sid, window)
    s.auto_read = True
    assert run(link, c, s, lambda: len(s.data[sid]) == 1_000_000)


def test_sending_past_connection_window_is_rejected() -> None:
    c, s, link = connect(stream_window=1 << 20, connection_window=32 * 1024)
    frame = _core.encode_frames([RawFrame(FRAME_STREAM, 0, 0, 0, b"x" * 16000)])
    for i in range(3):
        frame_i = _core.encode_frames([RawFrame(FRAME_STREAM, 0, i * 16000, 0, b"x" * 16000)])
        s.conn.receive_data(sealed_by(c.conn, frame_i if i else frame), link.now)
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.FLOW_CONTROL_ERROR


def test_reset_and_stop_sending() -> None:
    c, s, link = connect()
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"partial")
    run(link, c, s)
    c.conn.reset_stream(sid, 42)
    run(link, c, s)
    resets = s.of(StreamResetReceived)
    assert [(e.stream_id, e.error_code) for e in resets] == [(sid, 42)]  # type: ignore[attr-defined]
    sid2 = c.conn.open_stream()
    c.conn.send_stream_data(sid2, b"more")
    run(link, c, s)
    s.conn.stop_sending(sid2, 7)
    run(link, c, s)
    with pytest.raises(LocalProtocolError):
        c.conn.send_stream_data(sid2, b"again")


def _reset_frame(stream_id: int, final_size: int) -> bytes:
    return _core.encode_frames([RawFrame(FRAME_RESET_STREAM, stream_id, 1, final_size)])


def test_a_reset_claiming_more_than_the_stream_window_is_a_flow_control_error() -> None:
    c, s, link = connect(stream_window=32 * 1024, connection_window=1 << 20)
    s.conn.receive_data(sealed_by(c.conn, _reset_frame(0, 1 << 60)), link.now)
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.FLOW_CONTROL_ERROR


def test_a_reset_past_the_connection_credit_left_is_a_flow_control_error() -> None:
    """Two streams hold 60 KiB the application has not read; a reset claiming 30 KiB
    more on a third, within its stream's window, passes the connection's 64 KiB: refused
    at the reset (before, it went through and the next valid data failed instead)."""
    c, s, link = connect(stream_window=32 * 1024, connection_window=64 * 1024)
    s.auto_read = False
    for _ in range(2):
        c.conn.send_stream_data(c.conn.open_stream(), os.urandom(30 * 1024))
    run(link, c, s)
    assert s.conn.termination is None
    s.conn.receive_data(sealed_by(c.conn, _reset_frame(4, 30 * 1024)), link.now)
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.FLOW_CONTROL_ERROR
    assert "connection exceeded" in term.reason


def test_reset_streams_give_their_never_sent_bytes_back_to_the_connection() -> None:
    """Bytes below a reset's final size that never came will never be read: their
    connection credit comes back at once, so resets over time do not use the window up
    for good (before, valid data after them failed with a flow-control error)."""
    c, s, link = connect(stream_window=32 * 1024, connection_window=64 * 1024)
    for sid in range(0, 40, 2):  # 20 resets of 30 KiB: 600 KiB, ten windows
        s.conn.receive_data(sealed_by(c.conn, _reset_frame(sid, 30 * 1024)), link.now)
        assert s.conn.termination is None
    data = _core.encode_frames([RawFrame(FRAME_STREAM, 40, 0, 0, b"still flowing")])
    s.conn.receive_data(sealed_by(c.conn, data), link.now)
    s.drain()
    assert s.conn.termination is None
    assert bytes(s.data[40]) == b"still flowing"


def test_control_receipt_datagram_ping() -> None:
    c, s, link = connect()
    c.conn.send_control(20, b"ctl")
    c.conn.send_receipt(b"receipt-bytes")
    c.conn.send_datagram(b"dgram")
    c.conn.ping()
    run(link, c, s)
    assert [(e.kind, e.data) for e in s.of(ControlReceived)] == [(20, b"ctl")]  # type: ignore[attr-defined]
    assert [e.data for e in s.of(ReceiptReceived)] == [b"receipt-bytes"]  # type: ignore[attr-defined]
    assert [e.data for e in s.of(DatagramReceived)] == [b"dgram"]  # type: ignore[attr-defined]
    with pytest.raises(LocalProtocolError):
        c.conn.send_control(2, b"reserved")
    with pytest.raises(LocalProtocolError):
        c.conn.send_datagram(b"x" * 20000)


def test_a_paid_server_closing_for_payment_raises_payment_required_at_the_client() -> None:
    c, s, link = connect()
    reason = "payment required: no receipt in 10 s"
    s.conn.close(CLOSE_PAYMENT_REQUIRED, reason)
    run(link, c, s)
    theirs, ours = c.conn.termination, s.conn.termination
    assert theirs is not None and ours is not None
    error = error_for_termination(theirs)
    # still a ConnectionClosed (code and reason), and a PaymentError as an RPC refusal is
    assert isinstance(error, PaymentRequired)
    assert isinstance(error, ConnectionClosed) and isinstance(error, PaymentError)
    assert (error.code, error.reason) == (CLOSE_PAYMENT_REQUIRED, reason)
    # the server that closed sees its own close, not a payment error
    assert type(error_for_termination(ours)) is ConnectionClosed


def test_graceful_close_with_code_and_reason() -> None:
    c, s, link = connect()
    c.conn.close(CloseCode.APPLICATION + 5, "bye now")
    run(link, c, s)
    term = s.conn.termination
    assert term is not None and term.by_peer
    assert (term.error_code, term.reason) == (CloseCode.APPLICATION + 5, "bye now")
    error = error_for_termination(term)
    assert type(error) is ConnectionClosed
    assert c.of(ConnectionTerminated)[-1] == c.conn.termination
    with pytest.raises(ConnectionClosed):
        c.conn.send_stream_data(0, b"x")
    assert c.conn.get_timer() is None


def test_idle_timeout_and_keepalive() -> None:
    c, s, link = connect(idle_timeout=30.0, keepalive_interval=10.0)
    run(link, c, s, lambda: link.now > 100)  # keepalives keep it alive
    assert c.conn.established and s.conn.established
    # now the server stops hearing the client: it times out
    dead = MemoryLink(s.conn, Connection(c.conn.config, ephemeral_key=os.urandom(32), now=0))
    dead.now = link.now
    s.conn.handle_timer(link.now + 31)
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.IDLE_TIMEOUT


def test_handshake_timeout() -> None:
    client, _ = make_pair(handshake_timeout=5.0)
    client.handle_timer(5.5)
    assert client.termination is not None
    assert client.termination.error_code == CloseCode.HANDSHAKE_FAILED


def test_garbage_before_handshake_closes_without_crash() -> None:
    _, server = make_pair()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert server.termination is not None
    assert server.termination.error_code in (
        CloseCode.FRAME_ENCODING_ERROR,
        CloseCode.HANDSHAKE_FAILED,
    )


@given(st.binary(max_size=600), st.booleans())
@settings(max_examples=100, deadline=None)
def test_fuzz_server_input_only_closes(data: bytes, after_handshake: bool) -> None:
    if after_handshake:
        _c, s, _ = connect()
        server = s.conn
    else:
        _, server = make_pair()
    server.receive_data(data, 1.0)
    # either still waiting for more, or closed with a protocol code; never an exception
    if server.closed:
        assert server.termination is not None


@given(st.binary(max_size=600), st.booleans(), st.booleans())
@settings(max_examples=100, deadline=None)
def test_fuzz_client_handshake_input_gives_a_handshake_error(
    data: bytes, ik: bool, http_prefix: bool
) -> None:
    """Whatever a server answers a client's first message with -- a real HTTP reply's
    start, or any bytes -- the client keeps waiting or closes, and what its adapter
    raises then is a HandshakeError or another DTPError, never anything else."""
    client, _ = make_pair(ik=ik)
    client.data_to_send(0.0)
    if http_prefix:
        data = b"HTTP/1.1 400 Bad Request\r\n" + data
    client.receive_data(data, 1.0)
    if not client.closed:
        assert not http_prefix  # an HTTP reply is never mistaken for a record's start
        return
    term = client.termination
    assert term is not None and not client.established
    error = HandshakeError.for_client(error_for_termination(term))
    assert isinstance(error, DTPError)
    if http_prefix:
        assert isinstance(error, HandshakeError) and "not DTP" in str(error)


# -- lossy carriers ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
def test_lossy_carrier_delivers_exactly(seed: int, ik: bool) -> None:
    client, server = make_pair(reliable_carrier=False, ik=ik, stream_window=256 * 1024)
    c, s = Side(client), Side(server)
    link = MemoryLink(client, server, seed=seed, loss=0.15, duplicate=0.1, reorder=0.3)

    def step() -> None:
        c.drain()
        s.drain()
        if s.of(PeerAuthenticated) and not server.established and not server.closed:
            server.accept()

    assert link.run(lambda: client.established, on_round=step)
    payloads = {}
    for _ in range(3):
        sid = client.open_stream()
        payloads[sid] = os.urandom(random.Random(seed + sid).randrange(20_000, 120_000))
        client.send_stream_data(sid, payloads[sid], end_stream=True)
    assert link.run(lambda: set(payloads) <= s.eof, on_round=step, max_time=600)
    for sid, data in payloads.items():
        assert bytes(s.data[sid]) == data
    # and back again
    for sid, data in payloads.items():
        server.send_stream_data(sid, data[::-1], end_stream=True)
    assert link.run(lambda: set(payloads) <= c.eof, on_round=step, max_time=600)
    for sid, data in payloads.items():
        assert bytes(c.data[sid]) == data[::-1]
    assert link.dropped_records > 0  # the loss was real


# -- stateful: any interleaving delivers exactly the bytes written -------------------------


class StreamsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.s, self.link = connect(split="random", stream_window=32 * 1024)
        self.sides = {"client": self.c, "server": self.s}
        self.written: dict[tuple[str, int], bytearray] = {}
        self.finished: set[tuple[str, int]] = set()

    def _peer(self, who: str) -> Side:
        return self.s if who == "client" else self.c

    @rule(who=st.sampled_from(["client", "server"]))
    def open_stream(self, who: str) -> None:
        conn = self.sides[who].conn
        if conn.streams.opened_by_us < conn.streams.peer_max:
            sid = conn.open_stream()
            self.written[(who, sid)] = bytearray()

    @precondition(lambda self: bool(self.written))
    @rule(data=st.data(), size=st.integers(0, 40_000))
    def write(self, data: st.DataObject, size: int) -> None:
        keys = [k for k in self.written if k not in self.finished]
        if not keys:
            return
        who, sid = data.draw(st.sampled_from(sorted(keys)))
        chunk = os.urandom(size)
        self.sides[who].conn.send_stream_data(sid, chunk)
        self.written[(who, sid)] += chunk

    @precondition(lambda self: bool(self.written))
    @rule(data=st.data())
    def half_close(self, data: st.DataObject) -> None:
        keys = [k for k in self.written if k not in self.finished]
        if not keys:
            return
        who, sid = data.draw(st.sampled_from(sorted(keys)))
        self.sides[who].conn.send_stream_data(sid, b"", end_stream=True)
        self.finished.add((who, sid))

    @rule(rounds=st.integers(1, 5))
    def deliver(self, rounds: int) -> None:
        for _ in range(rounds):
            self.link.pump()
            self.c.drain()
            self.s.drain()

    @invariant()
    def received_is_prefix_of_written(self) -> None:
        for (who, sid), written in self.written.items():
            got = self._peer(who).data.get(sid, bytearray())
            assert written[: len(got)] == got
            # flow control: nothing beyond one window waits unread (auto_read=True)
            assert self.sides[who].conn.send_buffered(sid) <= len(written)

    def teardown(self) -> None:
        run(self.link, self.c, self.s)
        for (who, sid), written in self.written.items():
            peer = self._peer(who)
            assert bytes(peer.data.get(sid, b"")) == bytes(written)
            if (who, sid) in self.finished:
                assert sid in peer.eof


TestStreamsMachine = StreamsMachine.TestCase
TestStreamsMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


# -- IK: the identity proof in message 1, the verdict with message 2 -------------------------


def _first_message(client: Connection) -> bytes:
    return client.data_to_send(0.0)


def test_ik_server_decides_before_it_answers_and_client_is_in_after_one_flight() -> None:
    client, server = make_pair()
    c, s = Side(client), Side(server)
    server.receive_data(_first_message(client), 0.0)
    s.drain()
    assert [type(e) for e in s.events] == [PeerAuthenticated]
    assert server.peer_address == CLIENT_ID.sui_address
    assert server.peer_static == CLIENT_ID.noise_public  # for the accept hook
    assert server.data_to_send(0.0) == b""  # nothing before the verdict
    server.accept()
    s.drain()
    assert s.of(HandshakeCompleted) and s.of(ConnectionAccepted)
    assert [e.stream_id for e in s.of(StreamOpened)] == [0]  # type: ignore[attr-defined]
    client.receive_data(server.data_to_send(0.0), 0.0)
    c.drain()
    assert client.established and c.of(ConnectionAccepted)
    assert client.data_to_send(0.0) == b""  # no AUTH frame follows: it was in message 1


def test_ik_refusal_reaches_the_client_with_message_2() -> None:
    client, server = make_pair()
    server.receive_data(_first_message(client), 0.0)
    server.refuse("not on the list")
    client.receive_data(server.data_to_send(0.0), 0.0)
    assert client.closed
    term = [e for e in iter(client.next_event, None) if isinstance(e, ConnectionTerminated)]
    error = error_for_termination(term[0])
    assert isinstance(error, ConnectionRefused) and "not on the list" in str(error)


def _tampered_hello(change_params: object) -> bytes:
    """An IK message 1 from CLIENT_ID whose transport parameters were changed by
    ``change_params(params)`` before the client sealed them (as a forger would)."""
    import msgpack

    client, _ = make_pair()
    hs = client._hs
    params = msgpack.unpackb(client._transport_params())
    change_params(params)  # type: ignore[operator]
    # the same handshake state, a second message 1 with the forged payload
    fresh, _ = make_pair()
    fresh._hs = hs.__class__.initiator(
        CLIENT_ID.noise_private_bytes(), os.urandom(32), remote_static=SERVER_ID.noise_public
    )
    body = fresh._hs.write_message(msgpack.packb(params))
    return _core.write_record_header(1, 0, len(body), 0) + body


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda p: p.pop("auth"), id="no-proof"),
        pytest.param(lambda p: p.__setitem__("auth", b"\x00" * 97), id="garbage-proof"),
        pytest.param(lambda p: p.__setitem__("auth", p["auth"][:-1]), id="short-proof"),
        # a proof made for another handshake (another ephemeral key): a replayed proof
        pytest.param(lambda p: None, id="proof-of-another-handshake"),
    ],
)
def test_ik_server_rejects_a_missing_forged_or_replayed_proof(change: object) -> None:
    _, server = make_pair()
    server.receive_data(_tampered_hello(change), 0.0)
    assert server.closed and server.peer_address is None
    term = server.termination
    assert term is not None and term.error_code == CloseCode.HANDSHAKE_FAILED
    assert not [e for e in iter(server.next_event, None) if isinstance(e, PeerAuthenticated)]
    assert server.data_to_send(0.0) == b""  # no message 2 for a forger


def test_xx_first_message_with_a_proof_is_refused() -> None:
    import msgpack

    client, server = make_pair(ik=False)
    params = msgpack.unpackb(client._transport_params())
    params["auth"] = make_proof = CLIENT_ID.sign_personal_message(b"x" * 32)
    assert len(make_proof) == 97
    hs = client._hs.__class__.initiator(CLIENT_ID.noise_private_bytes(), os.urandom(32))
    body = hs.write_message(msgpack.packb(params))
    server.receive_data(_core.write_record_header(1, 0, len(body), 0) + body, 0.0)
    term = server.termination
    assert term is not None and term.error_code == CloseCode.HANDSHAKE_FAILED
    assert server.peer_address is None


def test_ik_accept_and_refuse_only_while_deciding() -> None:
    client, server = make_pair()
    with pytest.raises(LocalProtocolError):
        server.accept()  # nothing to decide on yet
    server.receive_data(_first_message(client), 0.0)
    with pytest.raises(LocalProtocolError):
        client.accept()
    server.accept()
    with pytest.raises(LocalProtocolError):
        server.accept()  # decided already


def test_ik_deciding_server_times_out_like_any_handshake() -> None:
    client, server = make_pair(handshake_timeout=2.0)
    server.receive_data(_first_message(client), 0.0)
    timer = server.get_timer()
    assert timer is not None and timer <= 2.0
    server.handle_timer(2.0)
    assert server.closed
