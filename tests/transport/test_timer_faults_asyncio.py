"""An asyncio connection whose timer callback raises is aborted, as the blocking
sockets' timer thread aborts one (tests/transport/test_timer_faults.py): the peer reads
INTERNAL_ERROR, the carrier is released, and the application's calls raise
ConnectionClosed with the fault as its cause (one too broken even to close ends as a
lost carrier: ConnectionLost). It never lives on half-alive, its timer cleared and
armed again only by the next write or input, where a silent peer would never time out
and ``wait_closed()`` or a read would wait for good. The loop's other connections go
on.

The fault is injected where it cannot be made to happen for real: the connection's
``handle_timer`` is replaced by one that raises. Real sockets on 127.0.0.1.

Kept apart from test_timer_faults.py: a fault in an event-loop callback (one that exits,
a connection collected unclosed) is a driver concern, not a rule the timer thread shares."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable, Callable

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionClosed, ConnectionLost
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import CloseCode, ConnectionConfig

SERVER_ID = HostIdentity.generate()
CLIENT_ID = HostIdentity.generate()
#: How long the broken connection may take to end (generous, for a loaded machine)
BOUND = 30.0
Pair = tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]


def _server_config() -> ConnectionConfig:
    # a silent peer: no keepalives of its own (its bytes would arm the client's timer
    # again) and an idle timeout the test never reaches
    return ConnectionConfig(
        identity=SERVER_ID, is_client=False, idle_timeout=3600.0, keepalive_interval=None
    )


def _client_config() -> ConnectionConfig:
    # a keepalive every second: the connection's timer fires soon after the fault is in;
    # an idle timeout of an hour: nothing else ends it within the test's bound
    return ConnectionConfig(
        identity=CLIENT_ID, is_client=True, idle_timeout=3600.0, keepalive_interval=1.0
    )


def _inject(writer: dtp.aio.DTPStreamWriter, fault: BaseException) -> list[BaseException]:
    """Make every timer pass on ``writer``'s connection raise ``fault``: the faults
    raised."""
    raised: list[BaseException] = []

    def fail(now: float) -> None:
        raised.append(fault)
        raise fault

    writer._proto.conn.handle_timer = fail  # type: ignore[method-assign]
    return raised


def _count_passes(writer: dtp.aio.DTPStreamWriter) -> list[float]:
    """The times of ``writer``'s connection's timer passes from now on (each still
    done)."""
    conn = writer._proto.conn
    handle = conn.handle_timer
    passes: list[float] = []

    def counted(now: float) -> None:
        passes.append(now)
        handle(now)

    conn.handle_timer = counted  # type: ignore[method-assign]
    return passes


async def _until(ready: Callable[[], bool], timeout: float = BOUND) -> None:
    async with asyncio.timeout(timeout):
        while not ready():
            await asyncio.sleep(0.05)


async def _with_server(
    test: Callable[[Callable[[], Awaitable[tuple[Pair, Pair]]]], Awaitable[None]],
) -> None:
    """Run ``test`` against a server whose connections stay open until it ends; it is
    given ``connect()``: a new client connection and the server's end of it."""
    peers: asyncio.Queue[Pair] = asyncio.Queue()
    done = asyncio.Event()

    async def serve(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        await peers.put((reader, writer))
        await done.wait()

    server = await dtp.aio.start_server(
        serve, "127.0.0.1", 0, identity=SERVER_ID, config=_server_config()
    )
    # (weakly: a test may drop a connection's reader and writer, to be closed unowned)
    opened: list[weakref.ref[dtp.aio.DTPStreamWriter]] = []

    async def connect() -> tuple[Pair, Pair]:
        pair = await dtp.aio.open_connection(
            *server.address,
            server_key=SERVER_ID.noise_public,
            config=_client_config(),
            timeout=30,
        )
        opened.append(weakref.ref(pair[1]))
        pair[1].write(b"hello")
        await pair[1].drain()
        peer = await asyncio.wait_for(peers.get(), BOUND)
        opened.append(weakref.ref(peer[1]))
        assert await asyncio.wait_for(peer[0].readexactly(5), BOUND) == b"hello"
        return pair, peer

    try:
        async with server:
            await test(connect)
    finally:
        done.set()
        writers = [writer for ref in opened if (writer := ref()) is not None]
        for writer in writers:
            writer.abort()
        async with asyncio.timeout(BOUND):
            for writer in writers:
                await writer.wait_closed()


async def _check_serving(healthy: Pair, healthy_peer: Pair) -> None:
    """``healthy``'s timer still runs, and its bytes go both ways."""
    passes = _count_passes(healthy[1])
    await _until(lambda: len(passes) >= 2)  # its keepalives: a second apart
    healthy[1].write(b"ping")
    await healthy[1].drain()
    assert await asyncio.wait_for(healthy_peer[0].readexactly(4), BOUND) == b"ping"
    healthy_peer[1].write(b"pong")
    await healthy_peer[1].drain()
    assert await asyncio.wait_for(healthy[0].readexactly(4), BOUND) == b"pong"


async def _peer_end(peer: Pair) -> ConnectionLost:
    """What the peer reads at the end (after what came before): the CLOSE, or the
    carrier's end (a timeout here, after 60 s, would be a connection it never heard
    of again)."""
    with pytest.raises(ConnectionLost) as lost:
        async with asyncio.timeout(60):
            while await peer[0].read(1 << 16):
                pass
    return lost.value


def test_a_connection_whose_timer_callback_raises_is_aborted() -> None:
    fault = RuntimeError("a fault in one connection")

    async def test(connect: Callable[[], Awaitable[tuple[Pair, Pair]]]) -> None:
        broken, broken_peer = await connect()
        healthy, healthy_peer = await connect()
        raised = _inject(broken[1], fault)
        # its next keepalive (within a second) raises; the application does nothing
        # with the connection meanwhile
        async with asyncio.timeout(BOUND):
            await broken[1].wait_closed()
        proto = broken[1]._proto
        assert proto.transport is not None and proto.transport.is_closing()
        with pytest.raises(ConnectionClosed) as closed:
            await broken[0].read(1)
        assert closed.value.code == CloseCode.INTERNAL_ERROR
        assert closed.value.__cause__ is fault
        with pytest.raises(ConnectionClosed):
            broken[1].write(b"more")
        with pytest.raises(ConnectionClosed):
            await broken[1].drain()
        assert "internal error" in str(await _peer_end(broken_peer))
        assert raised == [fault]  # aborted at the first fault: no timer armed again
        await _check_serving(healthy, healthy_peer)

    asyncio.run(_with_server(test))


def test_a_connection_too_broken_to_close_ends_as_a_lost_carrier() -> None:
    fault = RuntimeError("a fault in one connection")

    async def test(connect: Callable[[], Awaitable[tuple[Pair, Pair]]]) -> None:
        broken, broken_peer = await connect()
        healthy, healthy_peer = await connect()

        def fail(code: int = 0, reason: str = "") -> None:
            raise RuntimeError("and in its close")

        # its timer pass raises, and so does the CLOSE the abort would send
        broken[1]._proto.conn.close = fail  # type: ignore[method-assign]
        try:
            raised = _inject(broken[1], fault)
            async with asyncio.timeout(BOUND):
                await broken[1].wait_closed()
            # ended as a lost carrier ends it: a typed error, not a read that waits
            with pytest.raises(ConnectionLost) as lost:
                await broken[0].read(1)
            assert lost.value.__cause__ is fault
            with pytest.raises(ConnectionLost):
                await broken[1].drain()
            await _peer_end(broken_peer)
            assert raised == [fault]
        finally:
            del broken[1]._proto.conn.close  # (the clean-up's abort() closes it again)
        await _check_serving(healthy, healthy_peer)

    asyncio.run(_with_server(test))


def test_a_connection_whose_end_raises_is_closed_all_the_same() -> None:
    """``connection_lost`` that raised (ending the session) left the connection
    half-alive: its timers ran on, ``wait_closed()`` waited for good, and so did its
    reads, the session never ended."""
    fault = RuntimeError("a fault in one connection")

    async def test(connect: Callable[[], Awaitable[tuple[Pair, Pair]]]) -> None:
        broken, broken_peer = await connect()
        healthy, healthy_peer = await connect()
        raised: list[BaseException] = []

        def fail(reason: str = "") -> None:
            raised.append(fault)
            raise fault

        broken[1]._proto.conn.carrier_lost = fail  # type: ignore[method-assign]
        # the carrier vanishes under it, with no CLOSE: its end is a lost carrier
        transport = broken_peer[1]._proto.transport
        assert transport is not None
        transport.abort()
        async with asyncio.timeout(BOUND):
            await broken[1].wait_closed()
        with pytest.raises(ConnectionClosed) as closed:
            await broken[0].read(1)
        assert closed.value.code == CloseCode.INTERNAL_ERROR
        assert closed.value.__cause__ is fault
        with pytest.raises(ConnectionClosed):
            await broken[1].drain()
        timer = broken[1]._proto._timer
        assert timer is None or timer.cancelled()  # its timers stopped with it
        assert raised == [fault]
        await _check_serving(healthy, healthy_peer)

    asyncio.run(_with_server(test))


def test_an_abandoned_connection_whose_close_raises_is_closed_all_the_same() -> None:
    """A client connection whose reader and writer were garbage-collected is closed
    (``_close_abandoned``); when that close raised, it stayed open for good: nobody
    held it to close it, and its keepalives held off the peer's idle timeout."""
    fault = RuntimeError("a fault in one connection")

    async def test(connect: Callable[[], Awaitable[tuple[Pair, Pair]]]) -> None:
        broken, broken_peer = await connect()
        healthy, healthy_peer = await connect()
        proto = broken[1]._proto
        conn = proto.conn
        raised: list[BaseException] = []

        def fail(code: int = 0, reason: str = "") -> None:
            # once: the abort that follows closes it as a timer fault's abort does
            del conn.close
            raised.append(fault)
            raise fault

        conn.close = fail  # type: ignore[method-assign]
        del broken
        gc.collect()  # its reader and writer are gone: it is closed, unowned
        async with asyncio.timeout(BOUND):
            await asyncio.shield(proto.closed_future)
        assert proto.transport is not None and proto.transport.is_closing()
        assert isinstance(proto.session.error, ConnectionClosed)
        assert proto.session.error.code == CloseCode.INTERNAL_ERROR
        assert proto.session.error.__cause__ is fault
        assert "internal error" in str(await _peer_end(broken_peer))
        assert raised == [fault]
        await _check_serving(healthy, healthy_peer)

    asyncio.run(_with_server(test))


def test_a_timer_callback_that_exits_aborts_its_connection_first() -> None:
    """SystemExit (a push callback's sys.exit()) ends the loop, as anywhere in asyncio;
    the connection is aborted first: its peer reads INTERNAL_ERROR, not a carrier left
    open until the garbage collector closed it."""
    config = ConnectionConfig(
        identity=SERVER_ID, is_client=False, idle_timeout=3600.0, keepalive_interval=None
    )
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID, config=config) as srv:

        async def main() -> None:
            _, writer = await dtp.aio.open_connection(
                *srv.address,
                server_key=SERVER_ID.noise_public,
                config=_client_config(),
                timeout=30,
            )
            writer.write(b"hello")
            await writer.drain()
            _inject(writer, SystemExit(3))
            await asyncio.sleep(BOUND)  # its next keepalive (within a second) exits

        with pytest.raises(SystemExit):
            asyncio.run(main())
        peer, _ = srv.accept(timeout=10)
        with peer:
            peer.settimeout(60)
            assert peer.recv(5) == b"hello"
            with pytest.raises(ConnectionLost, match="internal error"):
                peer.recv(1)
