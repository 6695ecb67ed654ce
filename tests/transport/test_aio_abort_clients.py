"""dtp.aio's ``DTPServer.abort_clients()`` (as ``asyncio.Server.abort_clients``, Python
3.13): after ``close()`` it ends every connection of the server -- one waiting for its
first record, one in its handshake, one served -- and ``wait_closed()`` returns once
their carriers are closed, so an event loop closed right after finds none of them open.
(uvloop refuses to close a loop with an open handle, OSError EBUSY; asyncio's warns of
each such transport when it is collected.) Before it, a handshake in progress went on
past ``close()`` until its own timeout, ten seconds. Real sockets on 127.0.0.1; the
clients are blocking sockets, off the server's loop, so that the loop is closed the
moment ``wait_closed()`` returns."""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPError
from dtp.identity.keys import HostIdentity
from tests.transport.half_handshakes import closed_by_peer, first_record, silent

# (a carrier left open made uvloop's loop.close() hang in C, where no signal reaches it)
pytestmark = pytest.mark.timeout(60, method="thread")


def test_abort_clients_ends_every_connection_before_wait_closed_returns() -> None:
    identity = HostIdentity.generate()
    raw: list[socket.socket] = []
    clients: list[dtp.socket.DTPSocket] = []

    async def main() -> None:
        served = asyncio.Event()

        def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            served.set()  # (and returns: the connection stays open, held by the server)

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        address = server.address
        client = await asyncio.to_thread(
            dtp.socket.create_connection, address, server_key=identity.noise_public, timeout=10
        )
        clients.append(client)
        async with asyncio.timeout(10):
            await served.wait()
        raw.append(silent(address))  # waits for its first record
        half = silent(address)
        raw.append(half)
        half.sendall(first_record())  # then its handshake waits for its next message
        async with asyncio.timeout(10):
            while server.unproven != 1 or server.handshakes_in_progress != 1:
                await asyncio.sleep(0.01)
        server.close()
        server.abort_clients()
        async with asyncio.timeout(10):
            await server.wait_closed()
        # (returning now: the loop is closed with no pass after this one)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()  # (uvloop: OSError EBUSY were a server's carrier still open)
    try:
        gc.collect()  # (asyncio's loop: an unclosed transport's warning, in this test)
        # each client sees its connection end, at once rather than at its timeout
        for sock in raw:
            assert closed_by_peer(sock, within=5)
        with pytest.raises(DTPError):
            clients[0].settimeout(5)
            clients[0].recv(10)
    finally:
        for sock in raw:
            sock.close()
        for client in clients:
            client.close()


def test_close_alone_leaves_a_handshake_in_progress_to_its_timeout() -> None:
    # (what abort_clients is for: asyncio's close() ends no connection either)
    identity = HostIdentity.generate()

    async def main() -> bool:
        server = await dtp.aio.start_server(lambda r, w: None, "127.0.0.1", 0, identity=identity)
        with silent(server.address) as half:
            half.sendall(first_record())
            async with asyncio.timeout(10):
                while server.handshakes_in_progress != 1:
                    await asyncio.sleep(0.01)
            server.close()
            await server.wait_closed()
            ended = await asyncio.to_thread(closed_by_peer, half, 0.5)
            server.abort_clients()  # (the test leaves nothing open)
            await server.wait_closed()
            return ended

    assert asyncio.run(main()) is False
