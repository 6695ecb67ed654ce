"""The connect path's keys made ahead (dtp.transport.blocking._connect.NextConnectKeys,
Engine._make_ahead): they are a bet on a next connect, and nothing of this connection
-- its connect, reads or close -- may fail for them, nor wait on them for good."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

import dtp.socket
from dtp.identity import _ahead as keys_ahead
from dtp.identity._noise import prepare_handshake
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.blocking import _connect as blocking_connect
from dtp.transport.blocking import _engine as blocking_engine
from dtp.transport.carriers._tcp import wait_ready
from tests.support.pairs import SERVER_ID


def _fail(static_private: bytes, remote_static: bytes | None = None, *, initiator: bool) -> None:
    """prepare_handshake failing for a client (the server in this process uses it too)."""
    if initiator:
        raise RuntimeError("no noise state today")
    prepare_handshake(static_private, remote_static, initiator=initiator)


@pytest.fixture
def served() -> Iterator[tuple[dtp.socket.DTPServer, list[dtp.socket.DTPSocket]]]:
    """A server whose one accepted connection sends b"hi" and then waits for our end."""
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID)
    accepted: list[dtp.socket.DTPSocket] = []

    def serve() -> None:
        peer, _address = server.accept(timeout=10)
        accepted.append(peer)
        peer.sendall(b"hi")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server, accepted
    finally:
        thread.join(10)
        for peer in accepted:
            peer.close()
        server.close()


@pytest.mark.parametrize("read", [True, False])
def test_a_step_that_fails_after_connect_breaks_neither_the_read_nor_the_close(
    served: tuple[dtp.socket.DTPServer, list[dtp.socket.DTPSocket]],
    monkeypatch: pytest.MonkeyPatch,
    read: bool,
) -> None:
    # the step is reached by the read's wait, or (nothing read) by the close's wait for
    # the peer's end: it must not raise there, its carrier never released
    server, _accepted = served
    keys_ahead._forget_all()
    real = blocking_connect.has_input
    # the reply "is always here already": every step is left to the connection's waits
    monkeypatch.setattr(blocking_connect, "has_input", lambda engine: True)
    sock = dtp.socket.create_connection(
        server.address, timeout=10, server_key=server.noise_public_key
    )
    engine = sock._engine
    try:
        assert engine.ahead is not None
        monkeypatch.setattr(blocking_connect, "has_input", real)
        monkeypatch.setattr(blocking_connect, "prepare_handshake", _fail)
        if read:
            assert sock.recv(10) == b"hi"
    finally:
        sock.close()
    assert engine.closed and engine.ahead is None
    assert engine.sock.fileno() == -1


def test_a_step_that_fails_does_not_fail_the_connect_or_the_connection(
    served: tuple[dtp.socket.DTPServer, list[dtp.socket.DTPSocket]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # whichever wait reaches the failing step (the connect's, the read's, the close's)
    server, _accepted = served
    keys_ahead._forget_all()
    monkeypatch.setattr(blocking_connect, "prepare_handshake", _fail)
    with dtp.socket.create_connection(
        server.address, timeout=10, server_key=server.noise_public_key
    ) as sock:
        engine = sock._engine
        assert sock.recv(10) == b"hi"
    assert engine.closed and engine.sock.fileno() == -1


class _Draining:
    """What Engine._drain_carrier looks at (a carrier with nothing more to read)."""

    _drain_carrier = blocking_engine.Engine._drain_carrier
    _make_ahead = blocking_engine.Engine._make_ahead

    def __init__(self, sock: socket.socket, ahead: blocking_connect.NextConnectKeys) -> None:
        self.sock = sock
        self.carrier_closed = False
        self.out: list[bytes] = []
        self._rbuf = bytearray(64)
        self.ahead: blocking_connect.NextConnectKeys | None = ahead


def test_the_close_drain_ends_at_its_deadline_when_the_keys_never_get_their_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a carrier that looks readable to _has_input while recv finds nothing: the steps
    # are put off each time, and the drain went round for good (lock held)
    server, client = HostIdentity.generate(), HostIdentity.generate()
    cfg = ConnectionConfig(identity=client, is_client=True, server_static=server.noise_public)
    keys = blocking_connect.NextConnectKeys(cfg, anonymous=False)
    steps = len(keys._steps)
    mine, theirs = socket.socketpair()
    mine.setblocking(False)
    monkeypatch.setattr(blocking_connect, "has_input", lambda engine: True)
    draining = _Draining(mine, keys)
    done = threading.Event()

    def drain() -> None:
        draining._drain_carrier(0.05)  # type: ignore[misc]
        done.set()

    thread = threading.Thread(target=drain, daemon=True)
    with mine, theirs:
        thread.start()
        try:
            assert done.wait(3), "the drain did not end at its deadline"
        finally:
            monkeypatch.undo()  # (lets a loop that missed its deadline end too)
            thread.join(10)
    assert draining.ahead is keys and len(keys._steps) == steps  # (put off, not made)


def test_a_close_whose_peer_ended_first_still_leaves_the_next_connect_its_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the keys the connect's waits left are made at the connection's next wait; a close
    # with none (the peer's end already here) dropped them, and the next connect made
    # its own on its critical path
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID)

    def serve() -> None:
        peer, _address = server.accept(timeout=10)
        peer.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        keys_ahead._forget_all()
        real = blocking_connect.has_input
        monkeypatch.setattr(blocking_connect, "has_input", lambda engine: True)
        sock = dtp.socket.create_connection(
            server.address, timeout=10, server_key=server.noise_public_key
        )
        monkeypatch.setattr(blocking_connect, "has_input", real)
        with sock:
            assert sock._engine.ahead is not None and not keys_ahead._identities
            # the server's end is all here before we close (its close is over), and
            # no wait of the connection's own came before
            thread.join(10)
            assert not thread.is_alive()
            assert wait_ready([sock._engine.sock], [], 0)[0]
        assert len(keys_ahead._identities) == 1 and keys_ahead._ephemeral
    finally:
        thread.join(10)
        server.close()
