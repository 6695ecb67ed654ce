"""The connect path's two shortcuts: an IK server answers (message 2) before its hooks
decide, and a paid client's close reads the connection's state alone.

The first is checked on the sans-I/O connection (what the client may and may not do
between message 2 and the verdict) and through both servers over real TCP, with a raw
client that reads message 2 while the accept hook is still deciding. The second against
LocalLedger files: ``connection_state`` agrees with the whole object through a
connection's life, and refuses what is not a TransportControl or is damaged.

Adversarial probes of the early IK answer: a server sends message 2 before its hooks
decide, so between message 2 and the verdict the client holds the keys of the session and
may send anything while the server is still deciding.

What must still hold, and is checked here: the server's application sees nothing from
the client before it accepts; what the server holds meanwhile stays bounded (each held
event weighs something against the connection window); a refusal reaches the client
with its reason and nothing more; a replayed message 1 gets no message 2 at all; lossy
carriers recover a lost message 2 (the client repeats message 1) and a lost ACCEPT; and
both servers, blocking and asyncio, free the handshake and the ledger stays untouched
when the ledger admission refuses. Sans-I/O pairs and real TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionLost, ConnectionRefused, LocalProtocolError, ObjectNotFound
from dtp.hostid.ledger_carrier._bridge import LedgerCarrierOptions
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState, EventFilter, Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.local.rules import DamagedData
from dtp.protocol._events import (
    ConnectionAccepted,
    ConnectionTerminated,
    ControlReceived,
    DatagramReceived,
    Event,
    HandshakeCompleted,
    ReceiptReceived,
    StopSendingReceived,
    StreamDataReceived,
    StreamOpened,
    StreamResetReceived,
)
from dtp.protocol.connection import CloseCode, Connection, ConnectionConfig, error_for_termination
from dtp.transport.blocking import _connect as blocking_connect
from dtp.transport.carriers._memory import MemoryLink
from tests.support.ledger_faults import impair
from tests.support.pairs import (
    CLIENT_ID,
    SERVER_ID,
    Side,
    answered_pair,
    assert_refused,
    make_pair,
)
from tests.support.polling import wait_for
from tests.transport.server_drivers import Serve, ServerDriver

# -- sans-I/O -----------------------------------------------------------------------------


def test_answer_completes_the_clients_handshake_before_the_verdict() -> None:
    c, s, link = answered_pair()
    client, server = c.conn, s.conn
    assert client.handshake_hash == server.handshake_hash
    assert not client.established and not server.established
    # the client may write early (it does not wait for the verdict to queue its request):
    # the server's application sees none of it until it accepts
    sid = client.open_stream()
    client.send_stream_data(sid, b"early request", end_stream=True)
    assert link.run(None, on_round=lambda: (c.drain(), s.drain()))  # (until quiet)
    assert not s.of(StreamDataReceived) and not s.of(StreamOpened)
    server.accept()
    assert link.run(
        lambda: client.established and sid in s.eof, on_round=lambda: (c.drain(), s.drain())
    )
    c.drain()
    s.drain()
    assert bytes(s.data[sid]) == b"early request"
    server.send_stream_data(sid, b"answer", end_stream=True)
    assert link.run(lambda: sid in c.eof, on_round=lambda: (c.drain(), s.drain()))
    c.drain()
    assert bytes(c.data[sid]) == b"answer"


def test_answer_then_refuse_gives_the_reason_and_the_application_nothing() -> None:
    c, s, link = answered_pair()
    client, server = c.conn, s.conn
    sid = client.open_stream()
    client.send_stream_data(sid, b"secret request")
    assert link.run(None, on_round=lambda: (c.drain(), s.drain()))  # (until quiet)
    server.refuse("address is on the deny list")
    link.run(lambda: client.closed, on_round=lambda: (c.drain(), s.drain()))
    assert_refused(c, s, "address is on the deny list")


def test_answer_does_nothing_outside_an_ik_servers_decision() -> None:
    client, _server = make_pair()
    client.answer()  # a client: nothing
    assert client.handshake_hash is None and client.data_to_send(0.0)
    xx_client, xx_server = make_pair(ik=False)
    link = MemoryLink(xx_client, xx_server)
    assert link.run(lambda: xx_server.handshake_hash is not None)
    xx_server.answer()  # XX answered as the messages came: nothing more to send
    assert xx_server.data_to_send(0.0) == b""
    # after the verdict, again nothing: the client is let in as usual
    c, s, link = answered_pair()
    s.conn.accept()
    s.conn.answer()
    assert link.run(lambda: c.conn.established, on_round=lambda: (c.drain(), s.drain()))


# -- connection_state ---------------------------------------------------------------------


def _ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


CLIENT, SERVER = _ident(0x71), _ident(0x72)


@pytest.fixture
def opened(tmp_path: Path) -> tuple[LocalLedger, str, str]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, 7000, "echo", Sla(1, 1, 100))
    ledger.faucet(CLIENT.sui_address, 10**9)
    cap = ledger.create_spending_cap(CLIENT, 10**9)
    cid = ledger.open_connection(CLIENT, host, 7000, cap, 1000).connection_id
    yield ledger, host, cid
    ledger.close()


def test_connection_state_follows_the_connection(opened: tuple[LocalLedger, str, str]) -> None:
    ledger, _, cid = opened
    seen = []
    for step in (
        lambda: None,
        lambda: ledger.close_connection(CLIENT, cid),
        lambda: ledger.close_connection(SERVER, cid),
    ):
        step()
        state = ledger.connection_state(cid)
        assert state is ledger.get_connection(cid).state
        seen.append(state)
    assert seen == [ConnectionState.OPEN, ConnectionState.HALF_CLOSED, ConnectionState.CLOSED]
    # the ID in any of its spellings, as the other reads take it
    assert ledger.connection_state(cid.upper().replace("0X", "0x")) is ConnectionState.CLOSED


def test_connection_state_refuses_other_objects(opened: tuple[LocalLedger, str, str]) -> None:
    ledger, host, _cid = opened
    with pytest.raises(ObjectNotFound, match="is a Host, not a TransportControl"):
        ledger.connection_state(host)
    with pytest.raises(ObjectNotFound, match="No TransportControl"):
        ledger.connection_state("0x" + "ab" * 32)


@pytest.mark.parametrize("stored", ['{"kind": "Opening"}', '{"kind": 0}', "null", "{}"])
def test_connection_state_names_damaged_data(
    opened: tuple[LocalLedger, str, str], stored: str
) -> None:
    ledger, _host, cid = opened
    with sqlite3.connect(ledger.path) as db:
        db.execute(
            "UPDATE objects SET data = json_set(data, '$.state', json(?)) WHERE id = ?",
            (stored, cid),
        )
    with pytest.raises(DamagedData, match=cid):
        ledger.connection_state(cid)


# -- a server without hooks answers in one flight; the client's keys ahead -----------------


def test_a_server_without_hooks_sends_message_two_and_the_verdict_together() -> None:
    # nothing to decide, so nothing to overlap: one write, and the client's first read
    # finds it let in (two writes woke the client twice for nothing)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID)
    accepted: list[tuple[dtp.socket.DTPSocket, str]] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept(timeout=60)))
    thread.start()
    cfg = ConnectionConfig(
        identity=CLIENT_ID, is_client=True, server_static=server.noise_public_key
    )
    conn = Connection(cfg, ephemeral_key=os.urandom(32), now=time.monotonic())
    try:
        with socket.create_connection(server.address, timeout=60) as sock:
            sock.sendall(conn.data_to_send(time.monotonic()))
            conn.receive_data(sock.recv(65536), time.monotonic())
            assert conn.handshake_hash is not None and conn.established
            thread.join(60)
            assert accepted
    finally:
        thread.join(60)
        for peer, _address in accepted:
            peer.close()
        server.close()


def test_next_connect_keys_stop_when_the_reply_is_here_and_finish_later() -> None:
    from dtp.identity import _ahead as keys_ahead

    server = HostIdentity.generate()
    client = HostIdentity.generate()
    cfg = ConnectionConfig(identity=client, is_client=True, server_static=server.noise_public)
    keys = blocking_connect.NextConnectKeys(cfg, anonymous=False)
    steps = len(keys._steps)
    mine, theirs = socket.socketpair()
    with mine, theirs:
        theirs.sendall(b"reply")
        keys.make(mine)
        assert len(keys._steps) == steps  # the reply first: nothing made
        assert mine.recv(16) == b"reply"
        keys.make(mine)
        assert not keys._steps
    # our static key's DH with the server's was made ahead: nothing kept it yet
    ours = X25519PrivateKey.from_private_bytes(client.noise_private_bytes())
    assert (ours.private_bytes_raw(), server.noise_public) in keys_ahead._shared


def test_next_connect_keys_skip_the_static_dh_dtp_crypto_keeps() -> None:
    from dtp.identity import _ahead as keys_ahead
    from dtp.identity import _noise as crypto
    from dtp.identity._noise import Handshake, static_secret_kept

    # (the registry starts over once 16 static keys are in it: with 15 from earlier
    # tests, the server's key below would start it over and drop the client's result)
    with crypto._static_lock:
        crypto._STATIC_KEYS.clear()
    server, client = HostIdentity.generate(), HostIdentity.generate()
    initiator = Handshake.initiator(
        client.noise_private_bytes(), os.urandom(32), server.noise_public
    )
    responder = Handshake.responder(server.noise_private_bytes(), os.urandom(32))
    responder.read_message(initiator.write_message(b""))
    initiator.read_message(responder.write_message(b""))
    assert static_secret_kept(client, server.noise_public)
    assert not static_secret_kept(client, HostIdentity.generate().noise_public)
    cfg = ConnectionConfig(identity=client, is_client=True, server_static=server.noise_public)
    keys = blocking_connect.NextConnectKeys(cfg, anonymous=False)
    keys.make()
    ours = X25519PrivateKey.from_private_bytes(client.noise_private_bytes())
    assert (ours.private_bytes_raw(), server.noise_public) not in keys_ahead._shared


def test_a_connect_whose_verdict_comes_with_the_reply_still_leaves_the_next_keys() -> None:
    # a server without hooks answers and accepts in one flight: the steps the wait for
    # the reply did not reach are left to the connection's next wait (here its close's,
    # for the server's end), not dropped
    from dtp.identity import _ahead as keys_ahead

    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID)
    accepted: list[tuple[dtp.socket.DTPSocket, str]] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept(timeout=60)))
    thread.start()
    real = blocking_connect.has_input
    try:
        keys_ahead._forget_all()
        # the reply "is always here already": no step is made while waiting
        blocking_connect.has_input = lambda engine: True  # type: ignore[assignment]
        with dtp.socket.create_connection(
            server.address, timeout=60, server_key=server.noise_public_key
        ) as sock:
            blocking_connect.has_input = real  # type: ignore[assignment]
            assert sock._engine.ahead is not None and not keys_ahead._identities
        assert len(keys_ahead._identities) == 1 and keys_ahead._ephemeral
    finally:
        blocking_connect.has_input = real  # type: ignore[assignment]
        thread.join(60)
        for peer, _address in accepted:
            peer.close()
        server.close()


#: What a server's application must not see before it accepts.
APP_EVENTS = (
    StreamOpened,
    StreamDataReceived,
    DatagramReceived,
    ControlReceived,
    ReceiptReceived,
    StreamResetReceived,
    StopSendingReceived,
)

SMALL_WINDOW = 64 << 10


def _app_events(side: Side) -> list[Event]:
    return [e for e in side.events if isinstance(e, APP_EVENTS)]


def _drains(c: Side, s: Side) -> Callable[[], None]:
    """A link round's work: both sides collect their events."""

    def both() -> None:
        c.drain()
        s.drain()

    return both


def _quiet(link: MemoryLink, c: Side, s: Side) -> None:
    """Run the link until nothing moves."""
    assert link.run(None, on_round=_drains(c, s))
    c.drain()
    s.drain()


def _send_everything_early(client: Connection) -> int:
    """A client in the window sends one of each kind of frame; returns its stream."""
    sid = client.open_stream()
    client.send_stream_data(sid, b"early bytes")
    client.send_datagram(b"early datagram")
    client.send_control(16, b"early control")
    client.send_receipt(b"early receipt")
    other = client.open_stream()
    client.send_stream_data(other, b"x")
    client.reset_stream(other, 7)
    return sid


# -- sans-I/O, reliable carrier --------------------------------------------------------------


def test_every_kind_of_early_frame_waits_for_accept_and_arrives_in_order() -> None:
    c, s, link = answered_pair()
    sid = _send_everything_early(c.conn)
    _quiet(link, c, s)
    assert _app_events(s) == []
    s.conn.accept()
    _quiet(link, c, s)
    assert c.conn.established
    kinds = [type(e) for e in s.events if isinstance(e, (ConnectionAccepted, *APP_EVENTS))]
    # the verdict first, then what the client sent, in the order it sent it
    assert kinds[0] is ConnectionAccepted
    assert bytes(s.data[sid]) == b"early bytes"
    assert [e.data for e in s.of(DatagramReceived)] == [b"early datagram"]  # type: ignore[attr-defined]
    assert [(e.kind, e.data) for e in s.of(ControlReceived)] == [(16, b"early control")]  # type: ignore[attr-defined]
    assert [e.data for e in s.of(ReceiptReceived)] == [b"early receipt"]  # type: ignore[attr-defined]
    assert [e.error_code for e in s.of(StreamResetReceived)] == [7]  # type: ignore[attr-defined]


def test_a_refusal_after_early_frames_gives_the_reason_and_the_application_nothing() -> None:
    c, s, link = answered_pair()
    _send_everything_early(c.conn)
    _quiet(link, c, s)
    s.conn.refuse("not after what you sent")
    _quiet(link, c, s)
    assert c.conn.closed and s.conn.closed
    term = c.conn.termination
    assert term is not None and term.by_peer and term.error_code == CloseCode.REFUSED
    error = error_for_termination(term)
    assert isinstance(error, ConnectionRefused) and error.reason == "not after what you sent"
    assert _app_events(s) == [] and not c.of(ConnectionAccepted)
    assert not s.conn._held_events  # let go with the refusal, not kept with the object


def test_the_client_cannot_send_past_the_window_and_all_of_it_arrives_after_accept() -> None:
    c, s, link = answered_pair(connection_window=SMALL_WINDOW, stream_window=SMALL_WINDOW)
    sid = c.conn.open_stream()
    payload = os.urandom(3 * SMALL_WINDOW)
    c.conn.send_stream_data(sid, payload, end_stream=True)
    _quiet(link, c, s)
    # held: at most the window (flow control), none of it delivered
    assert _app_events(s) == [] and not s.conn.closed
    held = sum(len(e.data) for e in s.conn._held_events or () if isinstance(e, StreamDataReceived))
    assert 0 < held <= SMALL_WINDOW
    s.conn.accept()
    assert link.run(lambda: sid in s.eof, on_round=_drains(c, s))
    s.drain()
    assert bytes(s.data[sid]) == payload


@pytest.mark.parametrize("kind", ["stream bytes", "controls", "receipts"])
def test_many_small_early_frames_end_the_connection_not_the_servers_memory(kind: str) -> None:
    c, s, link = answered_pair(connection_window=SMALL_WINDOW)
    client = c.conn
    sid = client.open_stream()
    for i in range(SMALL_WINDOW // 64 + 64):
        if client.closed or s.conn.closed:
            break
        if kind == "stream bytes":
            client.send_stream_data(sid, b"x")
        elif kind == "controls":
            client.send_control(16)
        else:
            client.send_receipt(b"r")
        if i % 16 == 0:  # many records, not one
            _quiet(link, c, s)
    _quiet(link, c, s)
    assert s.conn.closed and s.conn.termination is not None
    assert s.conn.termination.error_code == CloseCode.PROTOCOL_VIOLATION
    assert "before the server accepted" in s.conn.termination.reason
    assert _app_events(s) == [] and not s.conn._held_events
    assert c.conn.closed  # told why


def test_early_datagrams_past_the_bound_are_dropped_and_the_connection_lives() -> None:
    c, s, link = answered_pair(connection_window=SMALL_WINDOW)
    body = b"d" * 1000
    sent = 0
    while sent * (len(body) + 64) < 3 * SMALL_WINDOW:
        c.conn.send_datagram(body)
        sent += 1
        if sent % 8 == 0:
            _quiet(link, c, s)
    _quiet(link, c, s)
    assert not s.conn.closed and _app_events(s) == []
    held = [e for e in s.conn._held_events or () if isinstance(e, DatagramReceived)]
    assert sum(len(e.data) + 64 for e in held) <= SMALL_WINDOW
    s.conn.accept()
    _quiet(link, c, s)
    got = len(s.of(DatagramReceived))
    assert 0 < got < sent and c.conn.established


def test_streams_opened_reset_and_stopped_in_the_window_are_bounded() -> None:
    """A stream the client opens (RESET_STREAM) and has the server
    stop sending on (STOP_SENDING) is forgotten, and the server hands out a new stream
    in MAX_STREAMS even before it accepts. Three events per stream were held and weighed
    nothing: thousands of streams past max_streams, without bound, while the hook ran."""
    c, s, link = answered_pair(connection_window=SMALL_WINDOW)
    client = c.conn
    cycles = 0
    while not s.conn.closed and cycles < 5000:
        sid = client.open_stream()
        client.reset_stream(sid)
        client.stop_sending(sid)
        _quiet(link, c, s)
        cycles += 1
    assert s.conn.closed, f"{len(s.conn._held_events or ())} events held after {cycles} streams"
    assert cycles <= SMALL_WINDOW // 64
    assert s.conn.termination is not None
    assert s.conn.termination.error_code == CloseCode.PROTOCOL_VIOLATION
    assert _app_events(s) == [] and not s.conn._held_events


def test_every_stream_the_client_may_open_fits_in_the_window_with_its_data() -> None:
    """The weight each held event carries leaves room for an honest client: all of its
    streams opened, written and finished before the verdict."""
    c, s, link = answered_pair(connection_window=SMALL_WINDOW)
    streams = [c.conn.open_stream() for _ in range(c.conn.config.max_streams)]
    for sid in streams:
        c.conn.send_stream_data(sid, b"%d" % sid, end_stream=True)
        _quiet(link, c, s)
    assert not s.conn.closed and _app_events(s) == []
    s.conn.accept()
    _quiet(link, c, s)
    assert {sid: bytes(s.data[sid]) for sid in streams} == {sid: b"%d" % sid for sid in streams}


def test_a_client_that_closes_in_the_window_leaves_nothing_to_accept() -> None:
    c, s, link = answered_pair()
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"and then I left")
    c.conn.close(CloseCode.NO_ERROR, "changed my mind")
    _quiet(link, c, s)
    term = s.conn.termination
    assert term is not None and term.by_peer and term.reason == "changed my mind"
    assert _app_events(s) == [] and not s.conn._held_events
    # the hooks' verdict comes too late: accept is a typed error, refuse does nothing
    with pytest.raises(LocalProtocolError):
        s.conn.accept()
    s.conn.refuse("too late")
    assert s.conn.data_to_send(0.0) == b""


def test_a_client_that_vanishes_in_the_window_times_the_handshake_out() -> None:
    _c, s, _link = answered_pair()
    server = s.conn
    timer = server.get_timer()
    assert timer is not None and timer <= server.config.handshake_timeout
    server.handle_timer(server.config.handshake_timeout)
    s.drain()
    assert server.closed and server.termination is not None
    assert server.termination.error_code == CloseCode.HANDSHAKE_FAILED
    assert _app_events(s) == []


# -- sans-I/O, lossy carrier ---------------------------------------------------------------


def _lossy() -> tuple[Connection, Connection, bytes]:
    """An IK pair over a datagram carrier: the server has message 1 and decides."""
    client, server = make_pair(reliable_carrier=False)
    (hello,) = client.datagrams_to_send(0.0)
    server.receive_datagram(hello, 0.0)
    assert server.peer_address == CLIENT_ID.sui_address
    return client, server, hello


def test_lossy_a_repeated_message_1_gets_message_2_again_only_onceanswered_pair() -> None:
    client, server, hello = _lossy()
    # before the answer: a repeat must not fail the handshake nor send anything
    server.receive_datagram(hello, 0.1)
    assert not server.closed and server.datagrams_to_send(0.1) == []
    server.answer()
    (reply,) = server.datagrams_to_send(0.1)
    for now in (0.2, 0.3):
        server.receive_datagram(hello, now)
        assert not server.closed
        assert server.datagrams_to_send(now) == [reply]  # the same message 2 again
    client.receive_datagram(reply, 0.4)
    assert client.handshake_hash == server.handshake_hash and not client.established


def test_lossy_message_2_lost_then_the_accept_lost_still_connects() -> None:
    client, server, hello = _lossy()
    server.answer()
    assert len(server.datagrams_to_send(0.0)) == 1  # message 2: lost
    # the client repeats message 1 on its timer while the server is still deciding
    now = client.get_timer()
    assert now is not None
    client.handle_timer(now)
    assert client.datagrams_to_send(now) == [hello]
    server.receive_datagram(hello, now)
    (reply,) = server.datagrams_to_send(now)
    client.receive_datagram(reply, now)
    assert client.handshake_hash is not None and not client.established
    # a datagram in the window: held by the server until it accepts
    client.send_datagram(b"early")
    for datagram in client.datagrams_to_send(now):
        server.receive_datagram(datagram, now)
    events = list(iter(server.next_event, None))
    assert not [e for e in events if isinstance(e, APP_EVENTS)]
    server.accept()
    assert server.datagrams_to_send(now)  # the ACCEPT: lost
    # the server's loss recovery sends it again; the client's acks end it
    for _ in range(20):
        timer = server.get_timer()
        assert timer is not None and timer < server.config.handshake_timeout
        now = max(now, timer)
        server.handle_timer(now)
        for datagram in server.datagrams_to_send(now):
            client.receive_datagram(datagram, now)
        for datagram in client.datagrams_to_send(now):
            server.receive_datagram(datagram, now)
        if client.established:
            break
    assert client.established and not server.closed
    events += list(iter(server.next_event, None))
    assert [e.data for e in events if isinstance(e, DatagramReceived)] == [b"early"]


def test_lossy_refusal_after_the_answer_gives_the_reason() -> None:
    client, server, hello = _lossy()
    server.answer()
    (reply,) = server.datagrams_to_send(0.0)
    client.receive_datagram(reply, 0.0)
    server.receive_datagram(hello, 0.1)  # a late repeat: answered, not a failure
    server.refuse("no room")
    for datagram in server.datagrams_to_send(0.1):
        client.receive_datagram(datagram, 0.1)
    term = client.termination
    assert term is not None and term.error_code == CloseCode.REFUSED and term.reason == "no room"


# -- real TCP: a sans-I/O client on a socket -------------------------------------------------


class _Raw:
    """A sans-I/O IK client over a real TCP socket to 127.0.0.1."""

    def __init__(
        self,
        address: tuple[str, int],
        server_key: bytes,
        identity: HostIdentity = CLIENT_ID,
        **overrides: Any,
    ) -> None:
        cfg = ConnectionConfig(
            identity=identity, is_client=True, server_static=server_key, **overrides
        )
        self.conn = Connection(cfg, ephemeral_key=os.urandom(32), now=time.monotonic())
        self.sock = socket.create_connection(address, timeout=60)
        self.events: list[Event] = []
        self.eof = False
        #: message 1 as it went on the wire (a replay sends these bytes again)
        self.hello = self.conn.data_to_send(time.monotonic())
        self.sock.sendall(self.hello)

    def flush(self) -> None:
        out = self.conn.data_to_send(time.monotonic())
        if out and not self.eof:
            # the server may be gone: what it sent last is still to read
            with contextlib.suppress(OSError):
                self.sock.sendall(out)

    def step(self, deadline: float) -> None:
        """One read (or the end of the carrier), then whatever the client answers."""
        left = deadline - time.monotonic()
        assert left > 0, "the server did not answer in 60 s"
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return
        self.conn.receive_data(data, time.monotonic())
        self.events.extend(iter(self.conn.next_event, None))
        self.flush()

    def run(self, until: Callable[[], object]) -> None:
        deadline = time.monotonic() + 60
        while not until() and not self.eof:
            self.step(deadline)

    def refusal(self) -> ConnectionRefused:
        """Run to the end: the connection must have been refused; returns the error."""
        self.run(lambda: self.conn.closed)
        term = self.conn.termination
        assert term is not None, "the server closed without a verdict"
        error = error_for_termination(term)
        assert isinstance(error, ConnectionRefused), term
        return error

    def close(self) -> None:
        self.sock.close()


def _slow_hook(reason: str | None) -> tuple[Callable[[Any], Any], threading.Event, threading.Event]:
    """A blocking accept hook whose first call waits for the test; later calls accept."""
    entered, verdict = threading.Event(), threading.Event()
    calls = [0]

    def hook(_who: Any) -> bool | str:
        calls[0] += 1
        if calls[0] > 1:
            return True
        entered.set()
        assert verdict.wait(60)
        return True if reason is None else reason

    return hook, entered, verdict


def _in_the_window(raw: _Raw, entered: threading.Event) -> None:
    """Until the client holds message 2 and the server's hook is deciding."""
    raw.run(lambda: raw.conn.handshake_hash is not None)
    assert raw.conn.handshake_hash is not None and not raw.conn.established
    assert entered.wait(60)


def _send_early(raw: _Raw) -> None:
    sid = raw.conn.open_stream()
    assert sid == 0  # the stream the server's accepted socket reads
    raw.conn.send_stream_data(sid, b"early request")
    raw.conn.send_datagram(b"early datagram")
    raw.conn.send_control(16, b"early control")
    raw.flush()


# -- real TCP: both servers, one story each -------------------------------------------------


def test_server_answers_while_its_hook_decides(server_driver: Serve, api: str) -> None:
    hook, entered, verdict = _slow_hook(None)
    server = server_driver(accept=hook)
    raw = _Raw(server.address, server.noise_public_key)
    try:
        raw.run(lambda: raw.conn.handshake_hash is not None)
        # message 2 came, and the hook has not decided (it waits for the test)
        assert entered.wait(60) and not verdict.is_set()
        assert not raw.conn.established
        if api == "asyncio":
            assert server.handed == 0
        verdict.set()
        raw.run(lambda: raw.conn.established)
        raw.conn.send_stream_data(raw.conn.open_stream(), b"in", end_stream=True)
        raw.flush()
        assert server.served() == (CLIENT_ID.sui_address, b"in")
    finally:
        verdict.set()
        raw.close()


def test_server_refusal_in_the_window_gives_the_reason_and_frees_its_only_handshake_slot(
    server_driver: Serve, api: str
) -> None:
    hook, entered, verdict = _slow_hook("closed for the night")
    server = server_driver(accept=hook, max_handshakes=1)
    raw = _Raw(server.address, server.noise_public_key)
    try:
        _in_the_window(raw, entered)
        _send_early(raw)
        verdict.set()
        error = raw.refusal()
        assert error.reason == "closed for the night"
        # message 2 and the refusal: nothing else reached the client
        assert [type(e) for e in raw.events] == [HandshakeCompleted, ConnectionTerminated]
        if api == "asyncio":
            assert server.server.refused == 1 and server.handed == 0
        # the one handshake slot is free again: the next client gets in
        with dtp.socket.create_connection(
            server.address, timeout=60, server_key=server.noise_public_key, identity=CLIENT_ID
        ) as sock:
            sock.sendall(b"second")
            sock.shutdown(socket.SHUT_WR)
            assert server.served() == (CLIENT_ID.sui_address, b"second")
        assert server.server.refused == 1
    finally:
        verdict.set()
        raw.close()


def test_server_accept_in_the_window_delivers_the_early_bytes(
    server_driver: Serve, api: str
) -> None:
    hook, entered, verdict = _slow_hook(None)
    server = server_driver(accept=hook)
    raw = _Raw(server.address, server.noise_public_key)
    try:
        _in_the_window(raw, entered)
        _send_early(raw)
        raw.conn.send_stream_data(0, b" and more", end_stream=True)
        raw.flush()
        verdict.set()
        # (an application that closes once it has read: ACCEPT and CLOSE may come in one read)
        raw.run(lambda: raw.conn.established or raw.conn.closed)
        assert any(isinstance(e, ConnectionAccepted) for e in raw.events)
        assert server.served() == (CLIENT_ID.sui_address, b"early request and more")
        if api == "asyncio":
            assert server.handed == 1
    finally:
        verdict.set()
        raw.close()


def test_server_a_replayed_message_1_gets_no_message_2(server_driver: Serve) -> None:
    server = server_driver()
    first = _Raw(server.address, server.noise_public_key)
    hello = first.hello
    replay = socket.create_connection(server.address, timeout=60)
    try:
        first.run(lambda: first.conn.established)
        first.conn.send_stream_data(first.conn.open_stream(), b"", end_stream=True)
        first.flush()
        assert server.served() == (CLIENT_ID.sui_address, b"")
        replay.sendall(hello)
        assert _read_to_end(replay) == b""
        assert server.server.replays_refused == 1
    finally:
        first.close()
        replay.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("how", ["reset", "close frame"])
def test_blocking_server_a_client_gone_in_the_window_leaks_nothing(how: str) -> None:
    """The blocking server reads nothing while its hook runs, so a client that left in
    the window is found out only after the verdict: accept() hands out a connection
    that ends at its first read (typed), and every descriptor goes with the server."""
    before = _open_fds()
    hook, entered, verdict = _slow_hook(None)
    server = dtp.socket.create_server(
        ("127.0.0.1", 0), identity=SERVER_ID, accept=hook, max_handshakes=1
    )
    raw = _Raw(server.address, server.noise_public_key)
    try:
        _in_the_window(raw, entered)
        if how == "reset":
            raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            raw.conn.close(CloseCode.NO_ERROR, "bye")
            raw.flush()
        raw.close()
        verdict.set()
        accepted, _address = server.accept(timeout=60)
        with accepted:
            if how == "reset":
                with pytest.raises(ConnectionLost):
                    accepted.recv(10)
            else:
                assert accepted.recv(10) == b""
    finally:
        verdict.set()
        raw.close()
        server.close()
    deadline = time.monotonic() + 30
    while _open_fds() > before:
        assert time.monotonic() < deadline, f"{_open_fds() - before} descriptors left open"
        time.sleep(0.05)


def _read_to_end(sock: socket.socket) -> bytes:
    """All a server sends before it closes the carrier (60 s at most)."""
    got = b""
    sock.settimeout(60)
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return got
        if not data:
            return got
        got += data


# -- real TCP: the asyncio server ------------------------------------------------------------


async def _until(check: Callable[[], bool]) -> None:
    """Wait (60 s at most) until ``check()``: something the server's task does next."""
    deadline = time.monotonic() + 60
    while not check():
        assert time.monotonic() < deadline, "not within 60 s"
        await asyncio.sleep(0.01)


def _aio_world(
    reason: str | None, config: ConnectionConfig | None = None
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """An asyncio server test's parts: (main's body runner, shared state)."""
    state: dict[str, Any] = {"served": 0}

    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        state["served"] += 1
        state["read"] = await reader.read(100)
        writer.close()

    async def run(body: Callable[..., Any]) -> None:
        entered, verdict = asyncio.Event(), asyncio.Event()

        async def hook(_address: str) -> bool | str:
            entered.set()
            await asyncio.wait_for(verdict.wait(), 60)
            return True if reason is None else reason

        server = await dtp.aio.start_server(
            handler, "127.0.0.1", 0, identity=SERVER_ID, accept=hook, config=config
        )
        try:
            address = server.sockets[0].getsockname()[:2]
            await body(server, address, entered, verdict)
        finally:
            verdict.set()
            server.close()
            await server.wait_closed()

    return run, state


def test_asyncio_server_a_client_that_closes_in_the_window_is_not_served() -> None:
    run, state = _aio_world(None)

    async def body(
        server: Any, address: Any, entered: asyncio.Event, verdict: asyncio.Event
    ) -> None:
        raw = await asyncio.to_thread(_Raw, address, server.noise_public_key)
        try:
            await asyncio.to_thread(raw.run, lambda: raw.conn.handshake_hash is not None)
            await asyncio.wait_for(entered.wait(), 60)
            raw.conn.close(CloseCode.NO_ERROR, "bye")
            await asyncio.to_thread(raw.flush)
            await asyncio.to_thread(raw.run, lambda: False)  # until the server lets go
            verdict.set()
            await _until(lambda: server.handshakes_failed == 1)  # the hook has returned
            assert state["served"] == 0 and server.refused == 0
        finally:
            raw.close()

    asyncio.run(run(body))


def _churn(raw: _Raw, most: int, stall: float = 60.0) -> int:
    """Open, reset and stop streams until the server ends the connection, ``most``
    streams, or no MAX_STREAMS comes within ``stall`` seconds; returns how many were
    opened."""
    deadline = time.monotonic() + 60
    opened = 0
    while opened < most and not raw.conn.closed and not raw.eof:
        try:
            sid = raw.conn.open_stream()
        except LocalProtocolError:  # wait for the server's MAX_STREAMS
            raw.flush()
            waited = time.monotonic() + stall
            with contextlib.suppress(TimeoutError):
                raw.step(min(deadline, waited))
            if time.monotonic() >= waited:
                break  # held to the stream limit
            continue
        raw.conn.reset_stream(sid)
        raw.conn.stop_sending(sid)
        opened += 1
        if opened % 32 == 0:
            raw.flush()
    raw.flush()
    return opened


def test_asyncio_server_a_stream_churn_in_the_window_is_held_to_max_streams() -> None:
    """The TCP face of the unweighed held events: with the hook still deciding, the
    client's churn must not grow the server's memory. A stream ended before the
    application took it keeps its place in the stream limit (docs/protocol.md), so the
    churn stops at max_streams, waiting for credit (it went on until the held events
    ended the connection)."""
    config = ConnectionConfig(identity=SERVER_ID, is_client=False, connection_window=SMALL_WINDOW)
    run, state = _aio_world(None, config)

    async def body(
        server: Any, address: Any, entered: asyncio.Event, verdict: asyncio.Event
    ) -> None:
        raw = await asyncio.to_thread(_Raw, address, server.noise_public_key)
        try:
            await asyncio.to_thread(raw.run, lambda: raw.conn.handshake_hash is not None)
            await asyncio.wait_for(entered.wait(), 60)
            opened = await asyncio.to_thread(_churn, raw, 4 * SMALL_WINDOW // 64, 2.0)
            assert opened == config.max_streams
            assert not raw.conn.closed and not raw.eof
            verdict.set()
            await _until(lambda: state["served"] == 1)
        finally:
            raw.close()

    asyncio.run(run(body))


def test_asyncio_server_a_first_stream_the_client_ended_in_the_window_is_served() -> None:
    """The client opens stream 0 with frames of its own while the hook decides, and
    ends it (reset, stop sending: the connection forgets it). The acceptance opened it
    again, past the peer's next stream ID, and the server's task died on an
    AssertionError: the client was never served, nor told."""
    run, state = _aio_world(None)

    async def body(
        server: Any, address: Any, entered: asyncio.Event, verdict: asyncio.Event
    ) -> None:
        raw = await asyncio.to_thread(_Raw, address, server.noise_public_key)
        try:
            await asyncio.to_thread(raw.run, lambda: raw.conn.handshake_hash is not None)
            await asyncio.wait_for(entered.wait(), 60)
            assert await asyncio.to_thread(_churn, raw, 1) == 1
            verdict.set()
            await _until(lambda: state["served"] == 1)
        finally:
            raw.close()

    asyncio.run(run(body))


# -- the paid server: a refusal by the ledger admission --------------------------------------

PORT = 7100
SLA = Sla(1, 1, 1000)


PAID_SERVER, PAYER, MALLORY = _ident(0x5A), _ident(0x5B), _ident(0x5C)


@pytest.fixture
def paid(tmp_path: Path, server_driver: Serve) -> Iterator[tuple[LocalLedger, str, ServerDriver]]:
    """A paid server of the API under test on a LocalLedger file, and the payer's ledger
    handle."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    server_ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(PAID_SERVER, PAID_SERVER.noise_public)
    ledger.add_service(PAID_SERVER, host_id, PORT, "echo", SLA)
    ledger.faucet(PAYER.sui_address, 100_000)
    ledger.faucet(MALLORY.sui_address, 100_000)
    server = server_driver(
        identity=PAID_SERVER, ledger=server_ledger, host_id=host_id, service_port=PORT
    )
    try:
        yield ledger, host_id, server
    finally:
        server.close()
        ledger.close()
        server_ledger.close()


def test_paid_server_refused_client_learns_only_the_reason_and_no_money_moves(
    paid: tuple[LocalLedger, str, ServerDriver], api: str
) -> None:
    ledger, host_id, server = paid
    cap = ledger.create_spending_cap(PAYER, 10**6)
    opened = ledger.open_connection(PAYER, host_id, PORT, cap, 5000)
    cid = bytes.fromhex(opened.connection_id[2:])
    closed = ledger.open_connection(PAYER, host_id, PORT, cap, 5000)
    ledger.close_connection(PAYER, closed.connection_id)

    def balances() -> tuple[int, int, int]:
        escrow = ledger.get_escrow(ledger.get_connection(opened.connection_id).escrow)
        return (
            ledger.balance(PAYER.sui_address),
            ledger.balance(MALLORY.sui_address),
            escrow.balance,
        )

    before = balances()
    assert before[2] == 5000
    cases = [
        (MALLORY, cid, "another client"),
        (PAYER, bytes.fromhex(closed.connection_id[2:]), "not Open"),
        (PAYER, b"\xcd" * 32, "unknown connection"),
    ]
    for signer, connection_id, reason in cases:
        raw = _Raw(
            server.address,
            PAID_SERVER.noise_public,
            identity=signer,
            connection_id=connection_id,
            port=PORT,
        )
        try:
            raw.run(lambda r=raw: r.conn.handshake_hash is not None)  # type: ignore[misc]
            if not raw.conn.closed:  # (the refusal may come in the read of message 2)
                # the client writes at once, as a paid client's first request would
                sid = raw.conn.open_stream()
                raw.conn.send_stream_data(sid, b"GET /")
                raw.flush()
            error = raw.refusal()
            assert reason in error.reason
            # message 2 (it came with the refusal before, too) and the reason: no more
            assert [type(e) for e in raw.events] == [HandshakeCompleted, ConnectionTerminated]
        finally:
            raw.close()
    # (counted once the refusal is out: the client may read it first)
    assert wait_for(lambda: server.server.refused == len(cases), 30)
    if api == "asyncio":
        assert server.handed == 0
    assert balances() == before
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
    # the owner is still let in on its own connection afterwards
    raw = _Raw(
        server.address, PAID_SERVER.noise_public, identity=PAYER, connection_id=cid, port=PORT
    )
    try:
        raw.run(lambda: raw.conn.established)
        assert raw.conn.established
    finally:
        raw.close()


# -- a real lossy carrier: the ledger carrier ------------------------------------------------


def test_ledger_carrier_message_2_lost_while_the_hook_decides_still_connects(
    tmp_path: Path,
) -> None:
    """The client's carrier drops the first record it reads (message 2, sent at once);
    it repeats message 1 while the server's hook is still deciding, and the server,
    once it has accepted, answers the repeat with message 2 again: the client gets in."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    server_ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(PAID_SERVER, PAID_SERVER.noise_public)
    ledger.add_service(PAID_SERVER, host_id, PORT, "echo", SLA)
    ledger.faucet(PAYER.sui_address, 100_000)

    def repeated() -> bool:
        """Whether a record went on the ledger twice (the client's message 1: the
        blocking server reads nothing while its hook runs, so it repeats nothing)."""
        events, _ = ledger.events(filter=EventFilter(type="PipeDataSent"), limit=1000)
        payloads = [bytes(e["data"]) for e in events]
        return len(set(payloads)) < len(payloads)

    decided = threading.Event()

    def hook(_address: str) -> bool:
        deadline = time.monotonic() + 30
        while not repeated():
            assert time.monotonic() < deadline, "the client never repeated message 1"
            time.sleep(0.05)
        decided.set()
        return True

    def echo(sock: dtp.socket.DTPSocket) -> None:
        while data := sock.recv(1 << 16):
            sock.sendall(data)

    wrap, wrappers = impair(seed=3, drop_first=1)
    server = dtp.socket.create_server(
        None, identity=PAID_SERVER, ledger=server_ledger, host_id=host_id, port=PORT, accept=hook
    )
    thread = threading.Thread(target=server.serve_forever, args=(echo,), daemon=True)
    thread.start()
    try:
        with dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            timeout=60,
            ledger=ledger,
            identity=PAYER,
            deposit=5000,
            ledger_options=LedgerCarrierOptions(ledger_filter=wrap),
        ) as sock:
            assert decided.is_set() and [w.dropped for w in wrappers] == [1]
            sock.sendall(b"over the ledger")
            got = b""
            while len(got) < 15:
                got += sock.recv(100)
            assert got == b"over the ledger"
    finally:
        server.close()
        thread.join(30)
        ledger.close()
        server_ledger.close()
