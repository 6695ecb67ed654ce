"""dtp.aio's server closed while asyncio's selector loop holds a TCP connection it
accepted but has made no transport for yet (its accept task's first step still to run):
the connection is closed as those that arrive after close() are, and wait_closed()
returns once its carrier is closed, so that an event loop closed right after finds none
open. Before, asyncio's ``Server._attach`` asserted on the closed listener in that first
step, the error went unseen, and the half-made transport held the socket open until the
garbage collector found it: a ResourceWarning in whatever ran next (a test of another
file). Real sockets on 127.0.0.1, on asyncio's selector loop, where the accept task is."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings

import pytest

import dtp.aio
from dtp.identity.keys import HostIdentity
from dtp.transport.asyncio._listeners import accepts_waiting
from tests.transport.half_handshakes import closed_by_peer


def accept_pending() -> bool:
    """Whether the running loop holds an accept task whose first step is still to run."""
    return accepts_waiting(asyncio.get_running_loop())


def test_a_connection_accepted_as_the_server_closes_is_closed_by_wait_closed() -> None:
    clients: list[socket.socket] = []

    async def main() -> None:
        server = await dtp.aio.start_server(
            lambda r, w: None, "127.0.0.1", 0, identity=HostIdentity.generate()
        )
        clients.append(socket.create_connection(server.address, timeout=5))
        async with asyncio.timeout(10):
            while not accept_pending():
                await asyncio.sleep(0)
        server.close()
        await server.wait_closed()
        # (returning now: the loop is closed with no pass after this one)

    # asyncio's selector loop whatever DTP_TEST_LOOP says: uvloop has no accept task
    loop = asyncio.SelectorEventLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert leaks == []
        assert closed_by_peer(clients[0], within=5)
    finally:
        for sock in clients:
            sock.close()


def test_a_server_closed_with_no_accept_waiting_stops_listening_at_once() -> None:
    """With no accept task waiting, close() closes the listener in its own call, as
    asyncio's does: a loop stopped right after it runs no later pass to do so."""
    loop = asyncio.SelectorEventLoop()
    try:
        server = loop.run_until_complete(
            dtp.aio.start_server(
                lambda r, w: None, "127.0.0.1", 0, identity=HostIdentity.generate()
            )
        )
        address = server.address

        def close_and_stop() -> None:
            server.close()
            loop.stop()

        loop.call_soon(close_and_stop)
        loop.run_forever()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=5).close()
        loop.run_until_complete(server.wait_closed())
    finally:
        loop.close()
