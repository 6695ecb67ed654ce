"""``dtp.socket`` against what a user of the :mod:`socket` module expects: a stream has
no file descriptor, and says so when asked (``fileno()`` raises an OSError naming the
alternatives, rather than AttributeError, and ``selectors`` refuses it); a server takes
a timeout as a listening socket does (``settimeout`` / ``setblocking``: accept() waits
that long, or raises BlockingIOError at once when non-blocking)."""

from __future__ import annotations

import io
import select
import selectors
import threading
import time
from collections.abc import Iterator

import pytest

import dtp.socket
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
