"""``dtp.socket`` against what a user of the :mod:`socket` module expects: a stream has
no file descriptor, and says so when asked (``fileno()`` raises an OSError naming the
alternatives, rather than AttributeError, and ``selectors`` refuses it); a server takes
a timeout as a listening socket does (``settimeout`` / ``setblocking``: accept() waits
that long, or raises BlockingIOError at once when non-blocking).

The blocking DTPSocket.open_stream() waits at the peer's stream limit, within the
socket's timeout, as dtp.aio's does, and opens as soon as a slot is free: never a
LocalProtocolError ("wait for one to finish") with no way to wait.

The blocking socket API (``dtp.socket``) held to what :mod:`socket` promises:

* ``copy.copy(sock)`` made a second DTPSocket on the same engine that believed itself
  open: when the copy was garbage-collected its finalizer closed the carrier, and the
  original's connection was lost (a socket refuses: TypeError "cannot pickle");
  ``copy.copy(server)`` likewise shared the listener and threads;
* ``sendall(b"")`` on a closed socket, or one shut for writing, returned quietly where
  ``send(b"")`` raised, and a socket's ``sendall(b"")`` raises EBADF / EPIPE.

Real servers and clients on 127.0.0.1 with real handshakes."""

from __future__ import annotations

import asyncio
import copy
import errno
import gc
import hashlib
import io
import os
import pickle
import select
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import dtp.socket
from dtp.errors import (
    CarrierRefused,
    ConnectionLost,
    DTPTimeoutError,
    LocalProtocolError,
    SendAfterShutdown,
    SocketClosed,
    StreamReset,
)
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from tests.support.paid_twins import loop_in_thread
from tests.support.polling import raised_within
from tests.support.ports import free_port

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
    # (in a thread, so that an accept() ignoring the mode fails the test, not hangs it)
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


def _read_with_nbytes(total: int, bufsize: int, sizes: list[int]) -> tuple[int, int]:
    """Read ``total`` bytes from a DTP server with recv_into(buf, n) into a buffer of
    ``bufsize``, n cycling through ``sizes``, checking that each read stays within its
    n and that the data arrives whole and in order; returns (the reads, how many went
    through the general path's lane read)."""
    server_id = HostIdentity.generate()
    payload = os.urandom(total)
    with dtp.socket.create_server(("127.0.0.1", 0), identity=server_id) as server:

        def serve() -> None:
            sock, _ = server.accept(timeout=30)
            with sock:
                for i in range(0, len(payload), 65536):
                    sock.sendall(payload[i : i + 65536])
                sock.recv(1)

        thread = threading.Thread(target=serve)
        thread.start()
        with dtp.socket.create_connection(
            server.address, timeout=30, server_key=server.noise_public_key
        ) as sock:
            engine = sock._engine
            general = 0
            recv_lent = engine.recv_lent

            def counting_recv_lent(*args: Any) -> int:
                nonlocal general
                general += 1
                return recv_lent(*args)

            engine.recv_lent = counting_recv_lent  # type: ignore[method-assign]
            buf = bytearray(bufsize)
            received = hashlib.sha256()
            got = calls = 0
            while got < len(payload):
                want = min(sizes[calls % len(sizes)], len(payload) - got)
                buf[want:] = b"\xee" * (len(buf) - want)
                n = sock.recv_into(buf, want)
                assert 0 < n <= want
                assert buf[want:] == b"\xee" * (len(buf) - want)  # past nbytes: untouched
                received.update(memoryview(buf)[:n])
                got += n
                calls += 1
            sock.sendall(b"x")
            assert received.digest() == hashlib.sha256(payload).digest()
        thread.join(30)
        assert not thread.is_alive()
    return calls, general


def test_recv_into_with_nbytes_reads_through_the_lane() -> None:
    calls, general = _read_with_nbytes(32 << 20, 1 << 20, [1 << 20, (1 << 20) - 1])
    # the one-call lane read, as for recv_into(buf): the general path only when the
    # lane handed the stream back (about a read in four here; before, every read)
    assert general * 2 <= calls, (general, calls)


def test_recv_into_with_small_nbytes_keeps_the_rest() -> None:
    # reads that end inside a record: the rest of it waits for the next read
    _read_with_nbytes(8 << 20, 1 << 16, [1, 100, 4096, 65535, 1 << 16])


def test_a_closed_port_is_a_connection_refused_error_as_on_a_socket() -> None:
    port = free_port()
    key = HostIdentity.generate().noise_public
    with pytest.raises(ConnectionRefusedError) as info:
        dtp.socket.create_connection(("127.0.0.1", port), server_key=key, timeout=30)
    assert isinstance(info.value, CarrierRefused) and isinstance(info.value, ConnectionLost)
    assert info.value.errno == errno.ECONNREFUSED  # (as a socket's error carries it)
    assert f"127.0.0.1:{port}" in str(info.value)

    async def main() -> None:
        with pytest.raises(ConnectionRefusedError) as info:
            await dtp.aio.open_connection("127.0.0.1", port, server_key=key, timeout=30)
        assert isinstance(info.value, CarrierRefused)

    asyncio.run(main())


def test_a_send_after_shut_wr_is_a_broken_pipe_as_on_a_socket() -> None:
    server_id = HostIdentity.generate()
    with dtp.socket.create_server(("127.0.0.1", 0), identity=server_id) as server:
        accepted: list[dtp.socket.DTPSocket] = []
        thread = threading.Thread(target=lambda: accepted.append(server.accept(timeout=30)[0]))
        thread.start()
        with dtp.socket.create_connection(
            server.address, timeout=30, server_key=server.noise_public_key
        ) as sock:
            thread.join(30)
            sock.shutdown(socket.SHUT_WR)
            for send in (
                lambda: sock.sendall(b"late"),
                lambda: sock.send(b"late"),
                lambda: sock.send_recv(b"late", 10),  # (it returned None)
            ):
                with pytest.raises(BrokenPipeError) as info:
                    send()
                assert isinstance(info.value, LocalProtocolError)
                assert info.value.errno == errno.EPIPE
            held = threading.Lock()
            held.acquire()
            with pytest.raises(BrokenPipeError):
                sock.send_recv(b"late", 10, release=held)
            assert not held.locked()  # let go of, as when it raises for any reason
            assert accepted[0].recv(10) == b""  # the peer read the end, and nothing after
            accepted[0].close()
        with pytest.raises(SocketClosed):
            sock.send_recv(b"late", 10)  # (it returned None)


def test_an_asyncio_reset_gives_the_peers_sends_its_code() -> None:
    server_id = HostIdentity.generate()
    reset_done = threading.Event()

    async def on_client(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        stream_reader, stream_writer = await writer.accept_stream()
        assert await stream_reader.readexactly(2) == b"hi"
        stream_writer.reset(5)
        reset_done.set()
        await reader.read()  # until the client closes

    with loop_in_thread() as loop:
        server = asyncio.run_coroutine_threadsafe(
            dtp.aio.start_server(on_client, "127.0.0.1", 0, identity=server_id), loop
        ).result(30)
        try:
            port = server.sockets[0].getsockname()[1]
            with dtp.socket.create_connection(
                ("127.0.0.1", port), timeout=30, server_key=server_id.noise_public
            ) as sock:
                stream = sock.open_stream()
                stream.sendall(b"hi")
                assert reset_done.wait(30)

                def send_until_it_fails() -> None:
                    while True:
                        stream.sendall(b"x" * 65536)

                raised = raised_within(send_until_it_fails, 60, sock.abort)
                assert isinstance(raised, StreamReset) and raised.code == 5, raised
        finally:
            # (on the loop's thread: asyncio's Server is not thread-safe, and the loop
            # detaching the connection as this closes would wake its waiters twice)
            loop.call_soon_threadsafe(server.close)
            asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result(30)
