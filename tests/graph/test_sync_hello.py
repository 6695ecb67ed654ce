"""The asyncio graph sync (``sync_stream``) against silent peers and cancellation,
over real DTP on 127.0.0.1:

1. A peer that connected and never sent HELLO held its session -- task, change
   listener, connection -- for good (DTP keepalives keep it from the idle timeout):
   ``sync_stream`` had no ``hello_timeout``, unlike the blocking runner's server.
   It now has one (``HELLO_TIMEOUT``, 10 s, by default); on expiry the session ends,
   its listener is removed, the stream is aborted ("no HELLO") and GraphSyncError is
   raised. A HELLO that arrives at the deadline, not yet handled, is not merged.
2. The deadline ends with its session: a session cancelled before it leaves the
   caller's stream alone at the deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import dtp.aio
from dtp.errors import DTPError
from dtp.graph import Graph, GraphSyncError, sync_stream
from dtp.graph.sync import DATA, HELLO, HELLO_TIMEOUT, VERSION
from dtp.identity.keys import HostIdentity
from tests.graph.wire import frame

Outcome = asyncio.Future[Any]  # sync_stream's session, or the exception it raised


def _listeners(graph: Graph) -> int:
    """Change listeners the graph holds: one per session not yet ended (no public count)."""
    return len(graph._listeners)


async def _serve(
    graph: Graph, **kw: Any
) -> tuple[dtp.aio.DTPServer, bytes, asyncio.Queue[Outcome], asyncio.Event]:
    """An asyncio DTP server running ``sync_stream(graph, ..., **kw)`` per connection.

    Returns the server, its key, a queue of the outcome of each session, and an event set
    once a handler is inside ``sync_stream`` (its HELLO deadline armed)."""
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    started = asyncio.Event()

    async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        outcome: Outcome = asyncio.get_running_loop().create_future()
        outcomes.put_nowait(outcome)
        result: Any
        try:
            started.set()  # (sync_stream arms its deadline before it first waits)
            result = await sync_stream(graph, reader, writer, **kw)
        except Exception as exc:
            result = exc
        finally:
            writer.close()
        if not outcome.done():  # (a test's wait_for that timed out cancelled it)
            outcome.set_result(result)

    identity = HostIdentity.generate()
    server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
    return server, identity.noise_public, outcomes, started


async def _connect(
    server: dtp.aio.DTPServer, key: bytes
) -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
    return await dtp.aio.open_connection("127.0.0.1", server.address[1], server_key=key)


def _run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 60))


async def _peer_sees_no_hello(reader: dtp.aio.DTPStreamReader) -> None:
    """The silent peer's reads end with the server's reason (bounded: 30 s)."""
    with pytest.raises(DTPError, match="no HELLO"):
        async with asyncio.timeout(30):
            while await reader.read(65536):
                pass


# -- 1. the HELLO deadline -----------------------------------------------------------------------


def test_a_silent_peer_is_cut_off_after_hello_timeout() -> None:
    async def main() -> None:
        graph = Graph()
        graph.put("doc", {"title": "hello"})
        server, key, outcomes, _ = await _serve(graph, hello_timeout=0.5)
        reader, writer = await _connect(server, key)
        try:
            outcome = await asyncio.wait_for(outcomes.get(), 30)
            await _peer_sees_no_hello(reader)  # it says nothing, and is told why
            exc = await asyncio.wait_for(outcome, 30)
            assert isinstance(exc, GraphSyncError), exc
            assert "no HELLO within 0.5 s" in str(exc)
            assert _listeners(graph) == 0  # the session is gone, not just its stream
        finally:
            writer.abort()
            server.close()
            await server.wait_closed()
            graph.close()

    _run(main)


def test_a_silent_peer_is_cut_off_by_default() -> None:
    """No ``hello_timeout`` given: an asyncio server is as safe as GraphServer (10 s)."""

    async def main() -> None:
        graph = Graph()
        server, key, outcomes, _ = await _serve(graph)
        reader, writer = await _connect(server, key)
        try:
            outcome = await asyncio.wait_for(outcomes.get(), 30)
            exc = await asyncio.wait_for(outcome, HELLO_TIMEOUT + 30)
            assert isinstance(exc, GraphSyncError), exc
            assert f"no HELLO within {HELLO_TIMEOUT} s" in str(exc)
            await _peer_sees_no_hello(reader)
            assert _listeners(graph) == 0
        finally:
            writer.abort()
            server.close()
            await server.wait_closed()
            graph.close()

    assert HELLO_TIMEOUT == 10.0
    _run(main)


def test_a_peer_that_says_hello_in_time_is_served_and_stays_live() -> None:
    async def main() -> None:
        graph = Graph()
        graph.put("doc", {"title": "hello"})
        server, key, outcomes, _ = await _serve(graph, hello_timeout=0.5)
        reader, writer = await _connect(server, key)
        peer = Graph()
        try:
            session = await asyncio.wait_for(
                sync_stream(peer, reader, writer, until_synced=True, hello_timeout=0.5), 30
            )
            assert session.synced
            assert peer.get("doc") == {"title": "hello"}
            outcome = await asyncio.wait_for(outcomes.get(), 30)
            await asyncio.sleep(2.0)  # well past the deadline: a live subscriber is quiet
            assert not outcome.done()
            assert _listeners(graph) == 1
            graph.put("doc", {"title": "changed"})  # and it still hears of changes
            got = b""
            async with asyncio.timeout(30):
                while b"changed" not in got:
                    chunk = await reader.read(65536)
                    assert chunk
                    got += chunk
        finally:
            writer.abort()
            server.close()
            await server.wait_closed()
            graph.close()
            peer.close()

    _run(main)


def test_a_hello_arriving_at_the_deadline_leaves_no_half_session() -> None:
    """HELLO and a DATA reach the server while its loop is busy past the deadline: the
    deadline, run first, ends the session whole -- the DATA is not merged."""

    async def main() -> None:
        graph = Graph()
        server, key, outcomes, started = await _serve(graph, hello_timeout=0.5)
        _reader, writer = await _connect(server, key)
        other = Graph()
        other.put("late", {"v": 1})
        batch = list(other.export())
        try:
            await asyncio.wait_for(started.wait(), 30)
            outcome = await outcomes.get()
            writer.write(
                frame([HELLO, VERSION, b"L" * 16, 1, 0]) + b"".join(frame([DATA, b]) for b in batch)
            )
            time.sleep(1.5)  # the loop (the server's too) busy past the deadline
            exc = await asyncio.wait_for(outcome, 30)
            assert isinstance(exc, GraphSyncError), exc
            assert "no HELLO" in str(exc)
            assert graph.get("late") is None
            assert _listeners(graph) == 0
        finally:
            writer.abort()
            server.close()
            await server.wait_closed()
            graph.close()
            other.close()

    _run(main)


@pytest.mark.parametrize(
    ("bad", "exc"),
    [
        (0, ValueError),
        (-1.0, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (True, TypeError),
        ("10", TypeError),
    ],
)
def test_hello_timeout_is_checked(bad: object, exc: type[Exception]) -> None:
    async def main() -> None:
        with Graph() as graph, pytest.raises(exc, match="hello_timeout must be"):
            # (checked before the stream is touched: these are not streams)
            await sync_stream(graph, object(), object(), hello_timeout=bad)  # type: ignore[arg-type]

    asyncio.run(main())


# -- 2. the deadline ends with the session ---------------------------------------------------


def test_a_session_cancelled_before_the_deadline_leaves_the_stream_alone() -> None:
    """The HELLO deadline belongs to its session: cancelled (or ended) before it, the
    listener of the session goes, and the stream -- the caller's to close -- is not aborted
    at the deadline."""

    async def main() -> None:
        got = bytearray()
        pinged = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            try:  # no sync here: it only reads what the client sends
                while b"ping" not in got:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    got.extend(chunk)
                pinged.set()
            except DTPError:
                pass
            finally:
                writer.close()

        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        reader, writer = await _connect(server, identity.noise_public)
        mine = Graph()
        try:
            task = asyncio.create_task(sync_stream(mine, reader, writer, hello_timeout=0.5))
            async with asyncio.timeout(30):  # our HELLO went out: the session runs
                while not got:
                    await asyncio.sleep(0.01)
            task.cancel()
            await asyncio.wait({task}, timeout=30)
            assert task.cancelled()
            assert _listeners(mine) == 0
            await asyncio.sleep(1.5)  # past the deadline
            assert not writer.is_closing()
            writer.write(b"ping")
            await asyncio.wait_for(pinged.wait(), 30)
        finally:
            writer.abort()
            server.close()
            await server.wait_closed()
            mine.close()

    _run(main)


def test_a_peer_breaking_the_protocol_learns_why() -> None:
    """sync_stream, as sync_blocking does, aborts the stream of a peer that broke the
    protocol with the reason "graph sync protocol error": the peer learns why (not only
    from the caller's plain close), and a write side blocked on a peer that does not
    read ends."""

    async def main() -> None:
        graph = Graph()
        server, key, outcomes, _started = await _serve(graph, hello_timeout=None)
        try:
            reader, writer = await _connect(server, key)
            writer.write(frame([HELLO, VERSION, b"r" * 16, 0, 0]) + frame([77]))
            await writer.drain()
            with pytest.raises(DTPError, match="graph sync protocol error"):
                async with asyncio.timeout(30):
                    while await reader.read(65536):
                        pass
            outcome = await asyncio.wait_for(await outcomes.get(), 30)
            assert isinstance(outcome, GraphSyncError), outcome
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    _run(main)
