"""Second reading of the asyncio server's bound on handshakes in progress
(``max_handshakes``, dtp.handshake_slots.ServerSlots):

* a newcomer that finds a line full first clears it of the connections nobody can serve
  any more (waited past their deadline, or closed by their own handshake timer): they
  held their places until their turn, and live newcomers were turned away meanwhile;
* a ledger connection waits in the server's line for its own handshake timeout (the
  ledger's, 30 s at least), not the TCP one, which turned it away with time left;
* an accept hook's own CancelledError (it awaited a task cancelled elsewhere) is a hook
  failure, not the loop's end: every connection waiting was closed with it;
* a ledger connection handed over as the server closes is closed, not served after.

All the TCP connections come from 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import types

import dtp.aio
from dtp.carriers.ledger_bridge import ledger_config
from dtp.connection import ConnectionConfig
from dtp.errors import DTPError
from dtp.handshake_slots import AddressSlots
from dtp.keys import HostIdentity
from tests.test_s33_aiobound_review import (
    BOUND,
    closed_by_peer,
    echo,
    echo_once,
    half,
    settled,
    until,
)

SERVER = HostIdentity.generate()
FIRST = HostIdentity.generate()
DENIED = HostIdentity.generate()


async def ledger_connection(server: dtp.aio.DTPServer) -> socket.socket:
    """A connection as the ledger carrier hands one over (its local socket pair, the
    ledger's config): the far end is returned, silent."""
    ours, theirs = socket.socketpair()
    config = ledger_config(server._config)
    await asyncio.get_running_loop().connect_accepted_socket(
        lambda: server._protocol_factory(config, by_address=False), sock=ours
    )
    return theirs


def test_purge_takes_out_the_expired_and_the_gone_only() -> None:
    slots: AddressSlots[str] = AddressSlots(1, 4)
    assert slots.try_take("a")
    for item, deadline in (("old", 1.0), ("gone", 9.0), ("live", 9.0), ("later", 9.5)):
        slots.take_or_wait("a", item, deadline)
    expired, left = slots.purge("a", 2.0, lambda item: item == "gone")
    assert (expired, left) == (["old"], ["gone"])
    assert slots.waiting("a") == 2 and slots.in_progress("a") == 1
    assert slots.purge("b", 2.0) == ([], [])
    assert slots.purge("a", 10.0) == (["live", "later"], [])
    assert slots.waiting("a") == 0 and not slots._waiting  # (no empty line kept)


def test_a_dead_connection_in_the_full_server_line_does_not_turn_a_newcomer_away() -> None:
    """max_handshakes=1, backlog=1: a long handshake (a ledger connection's 30 s) holds
    the slot; the connection waiting behind it passes its handshake timeout and is closed
    by its own timer, yet kept its place: every newcomer until the long handshake ended
    found the line full and was closed unserved."""

    async def main() -> None:
        config = ConnectionConfig(identity=SERVER, is_client=False, handshake_timeout=0.5)
        server = await dtp.aio.start_server(
            echo,
            "127.0.0.1",
            0,
            identity=SERVER,
            config=config,
            max_handshakes=1,
            backlog=1,
            max_handshakes_per_address=None,
        )
        holder = await ledger_connection(server)
        try:
            assert server.handshakes_in_progress == 1
            dead = await half(server)
            assert await until(lambda: server.handshakes_waiting == 1)
            assert await closed_by_peer(dead[0])  # its handshake timeout passed, unread
            dead[1].close()

            newcomer = await half(server)
            assert not await closed_by_peer(newcomer[0], within=0.3)  # it waits
            assert server.handshakes_waiting == 1
            assert server.busy_refused <= 1  # (the dead one, when it had expired by then)

            holder.close()  # the long handshake fails: the newcomer's turn
            assert await until(lambda: server.handshakes_waiting == 0)
            assert server.handshakes_in_progress == 1
            newcomer[1].close()
            assert await until(settled(server))
        finally:
            holder.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_a_dead_connection_in_an_address_full_line_does_not_turn_a_newcomer_away() -> None:
    """The same in an address's own line (cap 1, line of 1): its handshake in progress
    waits on the accept hook meanwhile."""
    gate = asyncio.Event()

    async def hook(address: str) -> bool:
        if address == FIRST.sui_address:
            await gate.wait()
        return True

    async def main() -> None:
        config = ConnectionConfig(identity=SERVER, is_client=False, handshake_timeout=0.5)
        server = await dtp.aio.start_server(
            echo,
            "127.0.0.1",
            0,
            identity=SERVER,
            config=config,
            accept=hook,
            max_handshakes_per_address=1,
            max_waiting_per_address=1,
        )
        slots = server._address_slots
        assert slots is not None
        holder = asyncio.create_task(echo_once(server, b"held", FIRST))
        try:
            assert await until(lambda: slots.in_progress("127.0.0.1") == 1)
            dead = await half(server)
            assert await until(lambda: slots.waiting("127.0.0.1") == 1)
            assert await closed_by_peer(dead[0])
            dead[1].close()

            newcomer = await half(server)
            assert not await closed_by_peer(newcomer[0], within=0.3)
            assert slots.waiting("127.0.0.1") == 1

            gate.set()  # the holder's handshake ends (its own timer failed it meanwhile)
            assert await until(lambda: slots.waiting("127.0.0.1") == 0)
            assert server.handshakes_in_progress == 1  # the newcomer's
            newcomer[1].close()
            assert await until(settled(server))
        finally:
            gate.set()
            with contextlib.suppress(DTPError, OSError):
                await holder
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_a_ledger_connection_waits_for_its_own_handshake_timeout() -> None:
    """The server's handshake timeout is 0.3 s, a ledger connection's 30 s (its session's
    timer keeps it open that long): still within it when its turn comes, it starts; it
    was closed unserved, counted busy, by the TCP timeout."""
    gate = asyncio.Event()

    async def hook(address: str) -> bool:
        await gate.wait()
        return True

    async def main() -> None:
        config = ConnectionConfig(identity=SERVER, is_client=False, handshake_timeout=0.3)
        server = await dtp.aio.start_server(
            echo, "127.0.0.1", 0, identity=SERVER, config=config, accept=hook, max_handshakes=1
        )
        holder = asyncio.create_task(echo_once(server, b"held", FIRST))
        waiter: socket.socket | None = None
        try:
            assert await until(lambda: server.handshakes_in_progress == 1)
            waiter = await ledger_connection(server)
            assert server.handshakes_waiting == 1
            # (a deadline to pass, not an event: the TCP timeout from its accept)
            await asyncio.sleep(0.45)
            gate.set()  # the holder's handshake ends: the ledger connection's turn
            assert await until(lambda: server.handshakes_waiting == 0)
            assert server.busy_refused == 0
            assert server.handshakes_in_progress == 1
            waiter.close()
            assert await until(settled(server))
        finally:
            gate.set()
            with contextlib.suppress(DTPError, OSError):
                await holder
            if waiter is not None:
                waiter.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_a_hook_s_own_cancelled_error_does_not_close_those_waiting() -> None:
    """The hook awaits a lookup that is cancelled elsewhere: that client is refused (a
    hook failure), and the one waiting for the slot is served. The server read it as
    the loop ending and closed every connection waiting."""
    gate = asyncio.Event()

    async def hook(address: str) -> bool:
        if address == DENIED.sui_address:
            await gate.wait()
            lookup: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            lookup.cancel()  # (its owner gave up on it)
            return await lookup
        return True

    async def main() -> None:
        server = await dtp.aio.start_server(
            echo,
            "127.0.0.1",
            0,
            identity=SERVER,
            accept=hook,
            max_handshakes=1,
            max_handshakes_per_address=None,
        )
        denied = asyncio.create_task(echo_once(server, b"denied", DENIED))
        first: asyncio.Task[bytes] | None = None
        try:
            assert await until(lambda: server.handshakes_in_progress == 1)
            first = asyncio.create_task(echo_once(server, b"first", FIRST))
            assert await until(lambda: server.handshakes_waiting == 1)
            gate.set()
            assert await asyncio.wait_for(first, BOUND) == b"first"
            assert server.busy_refused == 0
            assert await until(lambda: server.refused == 1)
            assert await until(settled(server))
        finally:
            gate.set()
            for task in (denied, first):
                if task is not None:
                    with contextlib.suppress(DTPError, OSError):
                        await task
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_a_ledger_connection_handed_over_as_the_server_closes_is_closed() -> None:
    """The ledger listener handed a connection to the loop just before close(): it is
    closed unserved, as the blocking server's handoff closes it once closed; it took a
    handshake slot and was served after the server's end."""

    async def main() -> None:
        server = await dtp.aio.start_server(echo, "127.0.0.1", 0, identity=SERVER)
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        try:
            server.close()
            bridge = types.SimpleNamespace(socket=ours, peername=("ledger", "0xabc"))
            server._accept_ledger(bridge, ledger_config(server._config))  # type: ignore[arg-type]
            assert await asyncio.wait_for(loop.sock_recv(theirs, 1), BOUND) == b""
            assert server.handshakes_in_progress == 0
            await server.wait_closed()
        finally:
            ours.close()
            theirs.close()

    asyncio.run(main())
