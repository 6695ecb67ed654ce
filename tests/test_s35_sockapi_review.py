"""Session 35's adversarial review of the blocking socket API (``dtp.socket``) against
what :mod:`socket` promises:

* ``copy.copy(sock)`` made a second DTPSocket on the same engine that believed itself
  open: when the copy was garbage-collected its finalizer closed the carrier, and the
  original's connection was lost (a socket refuses: TypeError "cannot pickle");
  ``copy.copy(server)`` likewise shared the listener and threads;
* ``sendall(b"")`` on a closed socket, or one shut for writing, returned quietly where
  ``send(b"")`` raised, and a socket's ``sendall(b"")`` raises EBADF / EPIPE.

Real servers and clients on 127.0.0.1 with real handshakes."""

from __future__ import annotations

import copy
import errno
import gc
import pickle
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import dtp.socket
from dtp.errors import SendAfterShutdown, SocketClosed
from dtp.keys import HostIdentity

SERVER_ID = HostIdentity.generate()
WAIT = 30.0  # seconds any call of these tests may take at most (a loaded machine)


@contextmanager
def serving() -> Iterator[dtp.socket.DTPServer]:
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as server:
        yield server


@contextmanager
def connected() -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    """(client, server side) of one connection, both with the WAIT timeout."""
    with serving() as server:
        client = dtp.socket.create_connection(
            server.address, server_key=server.noise_public_key, timeout=WAIT
        )
        try:
            with client:
                client.sendall(b"?")  # (the server's first stream comes with it)
                peer, _ = server.accept(timeout=WAIT)
                with peer:
                    peer.settimeout(WAIT)
                    assert peer.recv(1) == b"?"
                    yield client, peer
        finally:
            client.abort()


# -- 1. copying or pickling a socket ------------------------------------------------------


@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy, pickle.dumps])
def test_a_socket_is_not_copied_and_the_connection_lives_on(how: object) -> None:
    with connected() as (client, peer):
        with pytest.raises(TypeError, match="cannot pickle 'DTPSocket' object"):
            how(client)  # type: ignore[operator]
        gc.collect()  # (a copy's finalizer, had one been made)
        client.sendall(b"still here")
        assert peer.recv(100) == b"still here"
        peer.sendall(b"and back")
        assert client.recv(100) == b"and back"


def test_a_copy_of_a_lent_stream_is_refused_too() -> None:
    with connected() as (client, peer):
        peer.sendall(b"warm")  # (the stream is lent: the fast paths)
        assert client.recv(100) == b"warm"
        with pytest.raises(TypeError):
            copy.copy(peer)
        gc.collect()
        peer.sendall(b"x" * 1000)
        got = b""
        while len(got) < 1000:
            got += client.recv(1000)
        assert got == b"x" * 1000


def test_a_server_is_not_copied_and_serves_on() -> None:
    with serving() as server:
        with pytest.raises(TypeError, match="cannot pickle 'DTPServer' object"):
            copy.copy(server)
        with pytest.raises(TypeError, match="cannot pickle 'DTPServer' object"):
            pickle.dumps(server)
        with dtp.socket.create_connection(
            server.address, server_key=server.noise_public_key, timeout=WAIT
        ) as client:
            client.sendall(b"!")
            peer, _ = server.accept(timeout=WAIT)
            with peer:
                assert peer.recv(1) == b"!"


# -- 2. sendall of nothing on a socket that sends no more --------------------------------


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")])
def test_an_empty_sendall_on_a_closed_socket_raises_ebadf(empty: object) -> None:
    with connected() as (client, _peer):
        client.close()
        with pytest.raises(SocketClosed) as raised:
            client.sendall(empty)
        assert isinstance(raised.value, OSError)
        assert raised.value.errno == errno.EBADF
        with pytest.raises(SocketClosed):
            client.send(empty)  # (as it was)


@pytest.mark.parametrize("lent", [False, True])
def test_an_empty_sendall_after_shut_wr_raises_epipe(lent: bool) -> None:
    with connected() as (client, peer):
        if lent:
            client.sendall(b"warm")
            assert peer.recv(100) == b"warm"
        client.sendall(b"")  # (open: nothing to send, nothing raised)
        client.shutdown(socket.SHUT_WR)
        with pytest.raises(SendAfterShutdown) as raised:
            client.sendall(b"")
        assert isinstance(raised.value, BrokenPipeError)
        assert raised.value.errno == errno.EPIPE
        assert peer.recv(100) == b""  # the peer saw the end, and nothing else
        peer.sendall(b"reply")  # the other half is open
        assert client.recv(100) == b"reply"
