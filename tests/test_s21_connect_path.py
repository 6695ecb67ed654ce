"""The connect path's two shortcuts: an IK server answers (message 2) before its hooks
decide, and a paid client's close reads the connection's state alone.

The first is checked on the sans-I/O connection (what the client may and may not do
between message 2 and the verdict) and through both servers over real TCP, with a raw
client that reads message 2 while the accept hook is still deciding. The second against
LocalLedger files: ``connection_state`` agrees with the whole object through a
connection's life, and refuses what is not a TransportControl or is damaged.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import dtp.aio
import dtp.socket
from dtp.carriers.memory import MemoryLink
from dtp.chain.local import LocalLedger
from dtp.chain.local_rules import DamagedData
from dtp.chain.objects import ConnectionState, Sla
from dtp.connection import Connection, ConnectionConfig
from dtp.errors import ObjectNotFound
from dtp.events import StreamDataReceived, StreamOpened
from dtp.keys import HostIdentity
from tests.protocol.test_connection import (
    CLIENT_ID,
    SERVER_ID,
    answered_pair,
    assert_refused,
    make_pair,
)

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


# -- over TCP, both servers ---------------------------------------------------------------


def _raw_client(address: tuple[str, int], server_key: bytes, until: object) -> Connection:
    """A sans-I/O IK client over a real TCP socket, run until ``until(conn)``."""
    cfg = ConnectionConfig(identity=CLIENT_ID, is_client=True, server_static=server_key)
    conn = Connection(cfg, ephemeral_key=os.urandom(32), now=time.monotonic())
    sock = socket.create_connection(address, timeout=60)
    conn._raw_sock = sock  # type: ignore[attr-defined]
    try:
        sock.sendall(conn.data_to_send(time.monotonic()))
        _run_raw(conn, until)
    except BaseException:
        sock.close()
        raise
    return conn


def _run_raw(conn: Connection, until: object) -> None:
    sock: socket.socket = conn._raw_sock  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while not until(conn):  # type: ignore[operator]
        assert time.monotonic() < deadline, "the server did not answer in 60 s"
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        conn.receive_data(data, time.monotonic())
        while conn.next_event() is not None:
            pass
        out = conn.data_to_send(time.monotonic())
        if out:
            sock.sendall(out)


def test_blocking_server_answers_while_its_hook_decides() -> None:
    entered, verdict = threading.Event(), threading.Event()

    def hook(address: str) -> bool:
        entered.set()
        assert verdict.wait(60)
        return True

    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID, accept=hook)
    accepted: list[tuple[dtp.socket.DTPSocket, str]] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept(timeout=60)))
    thread.start()
    conn = None
    try:
        conn = _raw_client(server.address, server.noise_public_key, lambda c: c.handshake_hash)
        # message 2 came, and the hook has not decided (it waits for the test)
        assert entered.wait(60) and not verdict.is_set()
        assert not conn.established
        verdict.set()
        _run_raw(conn, lambda c: c.established)
        thread.join(60)
        assert accepted and accepted[0][1] == CLIENT_ID.sui_address
    finally:
        if conn is not None:
            conn._raw_sock.close()  # type: ignore[attr-defined]
        verdict.set()
        thread.join(60)
        for sock, _address in accepted:
            sock.close()
        server.close()


def test_asyncio_server_answers_while_its_hook_decides() -> None:
    async def main() -> None:
        entered, verdict = asyncio.Event(), asyncio.Event()
        served = asyncio.Event()

        async def hook(address: str) -> bool:
            entered.set()
            await asyncio.wait_for(verdict.wait(), 60)
            return True

        async def handler(reader: dtp.aio.DTPReader, writer: dtp.aio.DTPWriter) -> None:
            served.set()
            # open until the client goes: closed at once, our CLOSE could come in the
            # read that brings the ACCEPT, and the raw client would never see it let in
            await reader.read()
            writer.close()

        server = await dtp.aio.start_server(
            handler, "127.0.0.1", 0, identity=SERVER_ID, accept=hook
        )
        conn: Connection | None = None
        try:
            address = server.sockets[0].getsockname()[:2]
            conn = await asyncio.to_thread(
                _raw_client, address, server.noise_public_key, lambda c: c.handshake_hash
            )
            await asyncio.wait_for(entered.wait(), 60)
            assert not verdict.is_set() and not served.is_set()
            assert not conn.established
            verdict.set()
            await asyncio.to_thread(_run_raw, conn, lambda c: c.established)
            await asyncio.wait_for(served.wait(), 60)
        finally:
            if conn is not None:
                conn._raw_sock.close()  # type: ignore[attr-defined]
            server.close()
            await server.wait_closed()

    asyncio.run(main())


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


class _FakeEngine:
    """What _NextConnectKeys looks at: the carrier socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


def test_next_connect_keys_stop_when_the_reply_is_here_and_finish_later() -> None:
    from dtp import keys_ahead

    server = HostIdentity.generate()
    client = HostIdentity.generate()
    cfg = ConnectionConfig(identity=client, is_client=True, server_static=server.noise_public)
    keys = dtp.socket._NextConnectKeys(cfg, anonymous=False)
    mine, theirs = socket.socketpair()
    with mine, theirs:
        theirs.sendall(b"reply")
        keys.make(_FakeEngine(mine))  # type: ignore[arg-type]
        assert len(keys._steps) == 4  # the reply first: nothing made
        assert mine.recv(16) == b"reply"
        keys.make(_FakeEngine(mine))  # type: ignore[arg-type]
        assert not keys._steps
    # our static key's DH with the server's was made ahead: nothing kept it yet
    ours = X25519PrivateKey.from_private_bytes(client.noise_private_bytes())
    assert (ours.private_bytes_raw(), server.noise_public) in keys_ahead._shared


def test_next_connect_keys_skip_the_static_dh_dtp_crypto_keeps() -> None:
    from dtp import crypto, keys_ahead
    from dtp.crypto import Handshake, static_secret_kept

    # (the registry starts over once 16 static keys are in it: with 15 from earlier
    # tests, the server's key below would start it over and drop the client's result)
    with crypto._static_lock:
        crypto._STATIC_KEYS.clear()
        crypto._STATIC_SECRETS.clear()
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
    keys = dtp.socket._NextConnectKeys(cfg, anonymous=False)
    keys.make()
    ours = X25519PrivateKey.from_private_bytes(client.noise_private_bytes())
    assert (ours.private_bytes_raw(), server.noise_public) not in keys_ahead._shared


def test_a_connect_whose_verdict_comes_with_the_reply_still_leaves_the_next_keys() -> None:
    # a server without hooks answers and accepts in one flight: the steps the wait for
    # the reply did not reach are left to the connection's next wait (here its close's,
    # for the server's end), not dropped
    from dtp import keys_ahead

    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID)
    accepted: list[tuple[dtp.socket.DTPSocket, str]] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept(timeout=60)))
    thread.start()
    real = dtp.socket._has_input
    try:
        keys_ahead._forget_all()
        # the reply "is always here already": no step is made while waiting
        dtp.socket._has_input = lambda engine: True  # type: ignore[assignment]
        with dtp.socket.create_connection(
            server.address, timeout=60, server_key=server.noise_public_key
        ) as sock:
            dtp.socket._has_input = real  # type: ignore[assignment]
            assert sock._engine.ahead is not None and not keys_ahead._identities
        assert len(keys_ahead._identities) == 1 and keys_ahead._ephemeral
    finally:
        dtp.socket._has_input = real  # type: ignore[assignment]
        thread.join(60)
        for peer, _address in accepted:
            peer.close()
        server.close()
