"""``dtp.socket`` against what a user of the :mod:`socket` module expects: a stream has
no file descriptor, and says so when asked (``fileno()`` raises an OSError naming the
alternatives, rather than AttributeError, and ``selectors`` refuses it); a server takes
a timeout as a listening socket does (``settimeout`` / ``setblocking``: accept() waits
that long, or raises BlockingIOError at once when non-blocking)."""

from __future__ import annotations

import errno
import io
import select
import selectors
import threading
import time
from collections.abc import Iterator

import pytest

import dtp.socket
from dtp.connection import ConnectionConfig
from dtp.errors import DTPTimeoutError, LocalProtocolError
from dtp.keys import HostIdentity

SERVER_ID = HostIdentity.generate()
WAIT = 30.0  # seconds any wait of these tests may take at most (a loaded machine)


@pytest.fixture
def server() -> Iterator[dtp.socket.DTPServer]:
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID) as srv:
        yield srv


def _connect(server: dtp.socket.DTPServer) -> dtp.socket.DTPSocket:
    return dtp.socket.create_connection(
        server.address, timeout=WAIT, server_key=SERVER_ID.noise_public
    )


def test_fileno_raises_a_clear_oserror_and_selectors_refuse_the_stream(
    server: dtp.socket.DTPServer,
) -> None:
    with _connect(server) as client:
        client.sendall(b"x")
        peer, _ = server.accept(timeout=WAIT)
        with peer:
            peer.settimeout(WAIT)
            assert peer.recv(1) == b"x"
            # buffered at the stream level: a select on the carrier could not see it
            for sock in (client, peer):
                with pytest.raises(io.UnsupportedOperation, match=r"dtp\.aio") as caught:
                    sock.fileno()
                assert isinstance(caught.value, OSError)
                with selectors.DefaultSelector() as sel, pytest.raises(ValueError):
                    sel.register(sock, selectors.EVENT_READ)
                with pytest.raises(io.UnsupportedOperation):
                    select.select([sock], [], [], 0)
            # the stream is unharmed by the attempts
            peer.sendall(b"still here")
            assert client.recv(100) == b"still here"


def test_server_settimeout_bounds_accept_and_gettimeout_reports_it(
    server: dtp.socket.DTPServer,
) -> None:
    assert server.gettimeout() is None
    assert server.getblocking()
    server.settimeout(0.2)
    assert server.gettimeout() == 0.2
    start = time.monotonic()
    with pytest.raises(DTPTimeoutError):
        server.accept()  # no client: the server's timeout, not forever
    assert time.monotonic() - start < WAIT
    with pytest.raises(ValueError):
        server.settimeout(-1)
    with pytest.raises(TypeError):
        server.settimeout("1")  # type: ignore[arg-type]
    # an explicit timeout still wins; a connection that is ready is taken at once
    server.settimeout(WAIT)
    with _connect(server) as client:
        client.sendall(b"x")
        peer, address = server.accept()
        with peer:
            assert address == peer.peer_address
            peer.settimeout(WAIT)
            assert peer.recv(1) == b"x"


def test_a_non_blocking_server_accept_raises_blockingioerror_at_once(
    server: dtp.socket.DTPServer,
) -> None:
    server.setblocking(False)
    assert server.gettimeout() == 0.0
    assert not server.getblocking()
    # on the old code accept() ignored the mode and waited forever: a thread bounds it
    result: list[BaseException | object] = []

    def accept() -> None:
        try:
            result.append(server.accept())
        except BaseException as exc:  # (reported below)
            result.append(exc)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    thread.join(WAIT)
    if thread.is_alive():
        server.close()  # ends the stuck accept()
        thread.join(WAIT)
        pytest.fail("a non-blocking accept() waited")
    assert len(result) == 1 and isinstance(result[0], BlockingIOError)
    # with a connection ready, it is returned (polled: the handshake takes a moment)
    with _connect(server) as client:
        client.sendall(b"x")
        deadline = time.monotonic() + WAIT
        while True:
            try:
                peer, _ = server.accept()
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the connection never became ready"
                time.sleep(0.01)
        with peer:
            peer.settimeout(WAIT)
            assert peer.recv(1) == b"x"
    server.setblocking(True)
    assert server.gettimeout() is None
    server.close()
    with pytest.raises(LocalProtocolError):
        server.accept()


def test_operations_on_a_closed_socket_or_server_are_oserrors(
    server: dtp.socket.DTPServer,
) -> None:
    """A closed socket.socket raises OSError(EBADF); these raised a LocalProtocolError
    only, which code written for sockets (``except OSError``) let through."""
    client = _connect(server)
    client.sendall(b"x")
    peer, _ = server.accept(timeout=WAIT)
    with peer:
        client.close()
        for call in (
            lambda: client.recv(1),
            lambda: client.recv_into(bytearray(1)),
            lambda: client.send(b"x"),
            lambda: client.sendall(b"x"),
        ):
            with pytest.raises(OSError) as caught:
                call()
            assert caught.value.errno == errno.EBADF
            assert isinstance(caught.value, LocalProtocolError)  # (as before, too)
    server.close()
    with pytest.raises(OSError) as caught:
        server.accept(timeout=WAIT)
    assert caught.value.errno == errno.EBADF


def test_recv_into_an_empty_buffer_returns_at_once_on_a_busy_stream() -> None:
    """Once a stream carried data it is lent to the fast lane, whose recv_into waited
    for data or a timer (here none for an hour: no keepalives) before returning 0 for
    an empty buffer; a socket returns 0 at once (``makefile("rb", buffering=0).read(0)``
    waited out the timeout)."""
    quiet = ConnectionConfig(
        identity=SERVER_ID, is_client=False, keepalive_interval=None, idle_timeout=3600
    )
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID, config=quiet) as srv:
        client = dtp.socket.create_connection(
            srv.address,
            timeout=WAIT,
            server_key=SERVER_ID.noise_public,
            config=ConnectionConfig(
                identity=HostIdentity.generate(),
                is_client=True,
                server_static=SERVER_ID.noise_public,
                keepalive_interval=None,
                idle_timeout=3600,
            ),
        )
        with client:
            client.sendall(b"warm")
            peer, _ = srv.accept(timeout=WAIT)
            with peer:
                peer.settimeout(600)
                assert peer.recv(4) == b"warm"
                done = threading.Event()
                result: list[int] = []

                def read_empty() -> None:
                    result.append(peer.recv_into(bytearray(0)))
                    done.set()

                threading.Thread(target=read_empty, daemon=True).start()
                assert done.wait(WAIT), "recv_into(empty) waited for data"
                assert result == [0]
                client.sendall(b"after")
                assert peer.recv(5) == b"after"  # nothing lost
