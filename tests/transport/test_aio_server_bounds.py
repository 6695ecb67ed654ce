"""The asyncio server bounds its handshakes in progress as a whole (``max_handshakes``,
as the blocking server does), not only per client address: connections beyond the
bound wait, unread, in one line in arrival order (of at most ``backlog``), and every
way a handshake ends frees its slot. And the reader's read-all on a stream the peer's
clean close cut short keeps what it gathered, as its docstring now says.

The per-address cap is lifted (or left above the bound) where it would get in the way:
all these connections come from 127.0.0.1. A connection takes a slot once it has sent
its first handshake record (dtp.transport._admission); the slots are held here by
half-handshakes (that record, then nothing: they give way to a client that speaks) or,
where a line must form, by clients the accept hook keeps deciding on.

The asyncio server's bound on handshakes in progress
(``max_handshakes``, dtp.transport._admission.ServerSlots):

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
import functools
import inspect
import socket
from collections.abc import Callable

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionClosed, ConnectionRefused, DTPError
from dtp.hostid.ledger_carrier._bridge import ledger_config
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.transport._admission import AddressSlots
from tests.support.polling import async_wait_for
from tests.transport.half_handshakes import first_record

SERVER = HostIdentity.generate()
FIRST = HostIdentity.generate()
SECOND = HostIdentity.generate()
DENIED = HostIdentity.generate()
HELD = HostIdentity.generate()
BOUND = 5.0  # seconds any one step may take


#: the server's counters have no event to wait on: looked at every few ms, up to BOUND
until = functools.partial(async_wait_for, timeout=BOUND, interval=0.005)


async def echo(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
    writer.write(await reader.read(100))
    await writer.drain()
    writer.close()


async def echo_once(
    server: dtp.aio.DTPServer, data: bytes, identity: HostIdentity | None = None
) -> bytes:
    reader, writer = await dtp.aio.open_connection(
        *server.address,
        server_key=server.noise_public_key,
        identity=identity or HostIdentity.generate(),
        timeout=BOUND,
    )
    writer.write(data)
    await writer.drain()
    reply = await reader.read(100)
    writer.close()
    with contextlib.suppress(DTPError):
        await writer.wait_closed()
    return reply


async def half(
    server: dtp.aio.DTPServer, record: bytes | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A half-handshake: a raw TCP connection that sends a genuine first handshake
    record (XX; ``record``: another), then nothing."""
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(record or first_record())
    return reader, writer


async def held(server: dtp.aio.DTPServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection whose IK first record authenticates a client (HELD) that the
    accept hook then keeps deciding on: it holds its slot, and never gives way."""
    return await half(server, first_record(server.noise_public_key, HELD))


class Holding:
    """An accept hook's hold on HELD's connections: each waits until :meth:`release`
    lets one go, refused."""

    def __init__(self) -> None:
        self._turns = asyncio.Semaphore(0)

    async def decide(self) -> bool:
        await self._turns.acquire()
        return False

    def release(self) -> None:
        self._turns.release()


async def closed_by_peer(reader: asyncio.StreamReader, within: float = BOUND) -> bool:
    """Whether the server closes the connection within ``within`` seconds (what it
    sends before, its handshake reply, is read and dropped)."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(4096):
                pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def hold_forever(address: str) -> bool:
    """An accept hook that decides on nobody (their slots stay taken, until the loop
    ends)."""
    await asyncio.Event().wait()
    return True


def settled(server: dtp.aio.DTPServer) -> Callable[[], bool]:
    def check() -> bool:
        slots = server._address_slots
        return (
            server.handshakes_in_progress == 0
            and server.handshakes_waiting == 0
            and (slots is None or len(slots) == 0)
        )

    return check


def test_the_default_and_bad_values_mirror_the_blocking_server() -> None:
    from dtp.transport._admission import DEFAULT_MAX_HANDSHAKES

    blocking = inspect.signature(dtp.socket.create_server).parameters["max_handshakes"].default
    ours = inspect.signature(dtp.aio.start_server).parameters["max_handshakes"].default
    assert ours == blocking == DEFAULT_MAX_HANDSHAKES == 32

    async def main() -> None:
        for bad in (0, -1, True, 1.5, None, "4"):
            with pytest.raises(ValueError) as blocking_error:
                dtp.socket.DTPServer(("127.0.0.1", 0), SERVER, max_handshakes=bad)  # type: ignore[arg-type]
            with pytest.raises(ValueError) as aio_error:
                await dtp.aio.start_server(
                    echo, "127.0.0.1", 0, identity=SERVER, max_handshakes=bad
                )  # type: ignore[arg-type]
            assert str(aio_error.value) == str(blocking_error.value)

    asyncio.run(main())


def test_by_default_many_addresses_together_run_at_most_32_handshakes() -> None:
    """Five client addresses, each within its per-address cap of 8, open 40
    half-handshakes: only 32 handshakes (tasks) run, and the 8 beyond make the oldest
    8 give way (unbounded before: 40 tasks, one per connection, until the handshake
    timeout)."""

    async def main() -> None:
        server = await dtp.aio.start_server(echo, "127.0.0.1", 0, identity=SERVER)
        opened = []
        peak = 0
        async with server:
            try:
                for host in range(2, 7):  # (all of 127.0.0.0/8 is loopback on Linux)
                    for _ in range(8):
                        opened.append(
                            await asyncio.open_connection(
                                *server.address, local_addr=(f"127.0.0.{host}", 0)
                            )
                        )
                        opened[-1][1].write(first_record())
                        await asyncio.sleep(0.005)
                        # handshakes running, not tasks: an evicted one's task may not have
                        # run its cancellation yet (33 tasks were seen on a loaded machine)
                        peak = max(peak, server.handshakes_in_progress)
                assert await until(lambda: server.half_handshakes_evicted == 8)
                assert await until(lambda: len(server._tasks) == 32)
                assert peak <= 32
                assert server.handshakes_in_progress == 32
                assert server.busy_refused == 0
            finally:
                for _, writer in opened:
                    writer.close()
            assert await until(settled(server))
            assert server.busy_refused == 0

    asyncio.run(main())


def test_beyond_the_bound_connections_wait_in_arrival_order_and_start_as_slots_free() -> None:
    """Two silent connections hold both slots: two clients wait, unread, with no task;
    as slots free they start in the order they came, and the count returns to zero."""
    order: list[str] = []
    gates: dict[str, asyncio.Event] = {}
    entered: dict[str, asyncio.Event] = {}

    holding: list[Holding] = []

    async def hook(address: str) -> bool:
        if address == HELD.sui_address:
            return await holding[0].decide()
        order.append(address)
        entered[address].set()
        await gates[address].wait()
        return True

    async def main() -> None:
        holding.append(Holding())
        for who in (FIRST, SECOND):
            gates[who.sui_address] = asyncio.Event()
            entered[who.sui_address] = asyncio.Event()
        server = await dtp.aio.start_server(
            echo,
            "127.0.0.1",
            0,
            identity=SERVER,
            accept=hook,
            max_handshakes=2,
            max_handshakes_per_address=None,
        )
        async with server:
            holders = [await held(server), await held(server)]
            assert await until(lambda: server.handshakes_in_progress == 2)
            tasks_before = len(server._tasks)
            first = asyncio.create_task(echo_once(server, b"first", FIRST))
            assert await until(lambda: server.handshakes_waiting == 1)
            second = asyncio.create_task(echo_once(server, b"second", SECOND))
            assert await until(lambda: server.handshakes_waiting == 2)
            assert server.handshakes_in_progress == 2
            assert len(server._tasks) == tasks_before  # the waiting hold no task
            assert server.busy_refused == 0

            holding[0].release()  # one is refused: the first in line takes its slot
            await asyncio.wait_for(entered[FIRST.sui_address].wait(), BOUND)
            assert order == [FIRST.sui_address]
            assert server.handshakes_waiting == 1 and server.handshakes_in_progress == 2
            gates[FIRST.sui_address].set()  # accepted: its slot goes to the second
            assert await asyncio.wait_for(first, BOUND) == b"first"
            await asyncio.wait_for(entered[SECOND.sui_address].wait(), BOUND)
            assert order == [FIRST.sui_address, SECOND.sui_address]
            gates[SECOND.sui_address].set()
            assert await asyncio.wait_for(second, BOUND) == b"second"

            holding[0].release()
            assert await until(settled(server))
            assert server.busy_refused == 0
            assert server.refused == 2  # the two held
            for _, writer in holders:
                writer.close()

    asyncio.run(main())


def test_a_full_line_closes_the_newcomer_and_the_waiting_one_gets_the_next_slot() -> None:
    holding: list[Holding] = []

    async def hook(address: str) -> bool:
        if address == HELD.sui_address:
            return await holding[0].decide()
        return True

    async def main() -> None:
        holding.append(Holding())
        server = await dtp.aio.start_server(
            echo,
            "127.0.0.1",
            0,
            identity=SERVER,
            max_handshakes=1,
            backlog=1,
            max_handshakes_per_address=None,
            accept=hook,
        )
        async with server:
            holder = await held(server)  # (decided on: it never gives way)
            assert await until(lambda: server.handshakes_in_progress == 1)
            waiter = await half(server)
            assert await until(lambda: server.handshakes_waiting == 1)
            late_reader, late_writer = await half(server)
            assert await closed_by_peer(late_reader)  # the line (backlog=1) is full
            late_writer.close()
            assert server.busy_refused == 1
            assert not await closed_by_peer(waiter[0], within=0.2)  # still waiting

            holding[0].release()  # refused: the waiting one takes the slot
            holder[1].close()
            assert await until(lambda: server.handshakes_waiting == 0)
            assert server.handshakes_in_progress == 1  # the waiting one's handshake
            waiter[1].close()
            assert await until(settled(server))
            assert await echo_once(server, b"after") == b"after"
            assert await until(settled(server))

    asyncio.run(main())


def test_the_count_returns_to_zero_however_a_handshake_ends() -> None:
    """Accepted, refused, failed (garbage), timed out, a wait past the timeout, and the
    server's close with connections in its line."""

    async def main() -> None:
        config = ConnectionConfig(identity=SERVER, is_client=False, handshake_timeout=0.5)
        decided = asyncio.Event()

        async def hook(address: str) -> bool:
            if address == HELD.sui_address:
                await decided.wait()
            return address != DENIED.sui_address

        server = await dtp.aio.start_server(
            echo,
            "127.0.0.1",
            0,
            identity=SERVER,
            config=config,
            accept=hook,
            max_handshakes=1,
            max_handshakes_per_address=None,
        )
        try:
            assert await echo_once(server, b"ok") == b"ok"
            assert await until(settled(server))

            with pytest.raises(ConnectionRefused):
                await dtp.aio.open_connection(
                    *server.address, server_key=server.noise_public_key, identity=DENIED
                )
            assert await until(lambda: server.refused == 1)
            assert await until(settled(server))

            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 20)
            await writer.drain()
            assert await closed_by_peer(reader)
            writer.close()
            assert await until(lambda: server.handshakes_failed == 1)
            assert await until(settled(server))

            # a half-handshake; the one behind it makes it give way, and then times out
            # itself: both end, and their slot is free again
            timed_out = await half(server)
            assert await until(lambda: server.handshakes_in_progress == 1)
            behind = await half(server)
            try:
                assert await until(lambda: server.half_handshakes_evicted == 1)
                assert await closed_by_peer(timed_out[0])
                assert await closed_by_peer(behind[0])
                assert await until(lambda: server.busy_refused + server.handshakes_failed == 3)
            finally:
                for _, w in (timed_out, behind):
                    w.close()
            assert await until(settled(server))

            # closing the server closes those in its line; the handshake under way ends
            in_progress = await held(server)
            assert await until(lambda: server.handshakes_in_progress == 1)
            waiting = await half(server)
            assert await until(lambda: server.handshakes_waiting == 1)
            server.close()
            assert server.handshakes_waiting == 0
            assert await closed_by_peer(waiting[0])
            in_progress[1].close()
            waiting[1].close()
            decided.set()
            assert await until(settled(server))
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_the_loop_ending_frees_the_slots_and_closes_those_waiting() -> None:
    """asyncio.run ending with the server open cancels the handshake in progress: the
    connection waiting behind it is closed (a task started then would never end), and
    nothing stays counted."""
    servers: list[dtp.aio.DTPServer] = []
    raw: list[socket.socket] = []

    async def main() -> None:
        server = await dtp.aio.start_server(
            echo,
            "127.0.0.1",
            0,
            identity=SERVER,
            max_handshakes=1,
            max_handshakes_per_address=2,
            accept=hold_forever,
        )
        servers.append(server)
        for _ in range(3):  # one in progress, one in the server's line, one in the address's
            raw.append(socket.create_connection(server.address, timeout=BOUND))
            raw[-1].sendall(first_record(server.noise_public_key))
            await asyncio.sleep(0.05)
        slots = server._address_slots
        assert slots is not None
        assert await until(lambda: slots.waiting("127.0.0.1") == 1)
        assert server.handshakes_in_progress == 1 and server.handshakes_waiting == 1
        assert server._server is not None
        server._server.close()  # the listener only: the server itself stays open

    try:
        asyncio.run(main())
        server = servers[0]
        assert settled(server)()
        for sock in raw:
            sock.settimeout(BOUND)
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(4096):  # (its handshake reply, then the end)
                    pass
    finally:
        for sock in raw:
            sock.close()


def test_ledger_connections_count_against_the_bound_too() -> None:
    """A ledger bridge's local socket has no address to cap by, but its handshake costs
    as much: it waits for one of the server's slots as a TCP connection does."""

    async def main() -> None:
        server = await dtp.aio.start_server(echo, "127.0.0.1", 0, identity=SERVER, max_handshakes=1)
        loop = asyncio.get_running_loop()
        pairs = [socket.socketpair() for _ in range(2)]
        try:
            for ours, _ in pairs:
                # how handoff() attaches a ledger bridge's local socket
                await loop.connect_accepted_socket(
                    lambda: server._protocol_factory(server._config, by_address=False),
                    sock=ours,
                )
            assert server.handshakes_in_progress == 1
            assert server.handshakes_waiting == 1
            pairs[0][1].close()  # the first handshake fails: the second takes its slot
            assert await until(lambda: server.handshakes_waiting == 0)
            assert server.handshakes_in_progress == 1
            pairs[1][1].close()
            assert await until(settled(server))
        finally:
            for _, theirs in pairs:
                theirs.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_read_all_on_a_stream_cut_short_keeps_its_bytes_as_documented() -> None:
    """The peer's clean close before a stream ended: read() raises ConnectionClosed and
    consumes nothing; read(n) then gets the bytes, and the read after raises again. The
    docstrings of read, readexactly and readuntil say so."""
    for method in ("read", "readexactly", "readuntil"):
        doc = getattr(dtp.aio.DTPStreamReader, method).__doc__ or ""
        assert "ConnectionClosed" in doc, method
        assert "consume" in doc and "nothing" in doc, method
    read_doc = " ".join((dtp.aio.DTPStreamReader.read.__doc__ or "").split())
    assert "stay buffered for a later ``read(n)``" in read_doc

    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        r, w = await writer.accept_stream()
        assert await r.readexactly(3) == b"req"
        w.write(b"partial reply")  # and never ended
        await w.drain()
        writer.close()  # clean
        await writer.wait_closed()

    async def main() -> None:
        server = await dtp.aio.start_server(handler, "127.0.0.1", 0, identity=SERVER)
        try:
            _reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=SERVER.noise_public, timeout=BOUND
            )
            r, w = await writer.open_stream()
            w.write(b"req")
            await w.drain()
            async with asyncio.timeout(BOUND):
                with pytest.raises(ConnectionClosed):
                    await r.read()
                with pytest.raises(ConnectionClosed):
                    await r.read()  # (again: nothing was consumed)
                assert await r.read(100) == b"partial reply"
                with pytest.raises(ConnectionClosed):
                    await r.read(100)
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


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
    """The server's handshake timeout is 0.3 s, a ledger connection's 30 s (its
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
            server.handoff(ours, ("ledger", "0xabc"), ledger_config(server._config))
            assert await asyncio.wait_for(loop.sock_recv(theirs, 1), BOUND) == b""
            assert server.handshakes_in_progress == 0
            await server.wait_closed()
        finally:
            ours.close()
            theirs.close()

    asyncio.run(main())
