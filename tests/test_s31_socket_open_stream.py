"""The blocking DTPSocket.open_stream() waits at the peer's stream limit, within the
socket's timeout, as dtp.aio's does now: it raised LocalProtocolError ("wait for one to
finish") with no way to wait, and kept raising after a slot was free until some other
read happened to take in the peer's MAX_STREAMS (the old code failed each test here)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

import dtp.socket
from dtp.connection import ConnectionConfig
from dtp.errors import DTPTimeoutError
from dtp.keys import HostIdentity

SERVER = HostIdentity.generate()
BOUND = 20.0


@pytest.fixture
def pair() -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    """A connection whose server allows the client 2 streams (the first and one more)."""
    config = ConnectionConfig(identity=SERVER, is_client=False, max_streams=2)
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER, config=config) as srv:
        client = dtp.socket.create_connection(
            srv.address, timeout=BOUND, server_key=SERVER.noise_public
        )
        client.sendall(b"?")
        peer, _ = srv.accept(timeout=BOUND)
        peer.settimeout(BOUND)
        assert peer.recv(1) == b"?"
        try:
            yield client, peer
        finally:
            client.abort()
            peer.abort()


def test_open_stream_waits_for_a_slot(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
) -> None:
    client, peer = pair
    first = client.open_stream()
    first.sendall(b"x")
    accepted = peer.accept_stream()
    assert accepted.recv(1) == b"x"
    got: list[object] = []

    def opener() -> None:
        try:
            got.append(client.open_stream())
        except Exception as exc:
            got.append(exc)

    thread = threading.Thread(target=opener)
    thread.start()
    thread.join(0.3)
    assert thread.is_alive()  # waiting, not raising
    first.close()  # our end, and the peer's: the slot frees
    accepted.close()
    thread.join(BOUND)
    assert len(got) == 1 and isinstance(got[0], dtp.socket.DTPSocket), got


def test_open_stream_at_the_limit_keeps_the_socket_timeout(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
) -> None:
    client, _ = pair
    client.open_stream()
    client.settimeout(0.2)
    with pytest.raises(DTPTimeoutError):
        client.open_stream()
    client.settimeout(0)
    with pytest.raises(BlockingIOError):
        client.open_stream()
