"""DTPStreamWriter.serve_streams(): each stream the peer opens served by a handler in a
task of its own, started as the stream's opening is read (dtp.transport.asyncio)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import dtp.aio
from dtp.errors import StreamReset
from tests.transport.aio_connections import served_connection

Reader = dtp.aio.DTPStreamReader
Writer = dtp.aio.DTPStreamWriter


async def _upper(reader: Reader, writer: Writer) -> None:
    writer.write_eof((await reader.read()).upper())
    await writer.drain()


async def _call(writer: Writer, body: bytes) -> bytes:
    r, w = await writer.open_stream()
    w.write_eof(body)
    return await r.read()


def test_streams_waiting_go_first_then_each_as_it_comes() -> None:
    async def main() -> None:
        server, (_, client), (_, server_writer) = await served_connection()
        early = [await client.open_stream() for _ in range(3)]
        for i, (_, w) in enumerate(early):
            w.write_eof(b"early %d" % i)
        await asyncio.sleep(0.05)  # (their openings reach the server before it serves)
        serving = asyncio.ensure_future(server_writer.serve_streams(_upper))
        assert [await asyncio.wait_for(r.read(), 5) for r, _ in early] == [
            b"EARLY 0",
            b"EARLY 1",
            b"EARLY 2",
        ]
        got = await asyncio.wait_for(
            asyncio.gather(*(_call(client, b"call %d" % i) for i in range(20))), 10
        )
        assert got == [b"CALL %d" % i for i in range(20)]
        # one way to take the streams at a time
        with pytest.raises(RuntimeError):
            await server_writer.accept_stream()
        with pytest.raises(RuntimeError):
            await server_writer.serve_streams(_upper)
        assert not serving.done()
        client.close()
        await client.wait_closed()
        await asyncio.wait_for(serving, 10)  # (returns once the connection ended)
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_handler_runs_in_a_task_of_its_own_from_its_first_step() -> None:
    """The first step runs as the stream's opening is read, with the handler's task
    current: asyncio.timeout() works there, and a read that waits goes on in the same
    task."""
    seen: list[asyncio.Task[Any] | None] = []

    async def reverse(reader: Reader, writer: Writer) -> None:
        task = asyncio.current_task()
        seen.append(task)
        async with asyncio.timeout(5):
            body = await reader.read()
        assert asyncio.current_task() is task
        writer.write_eof(body[::-1])

    async def main() -> None:
        server, (_, client), (_, server_writer) = await served_connection()
        serving = asyncio.ensure_future(server_writer.serve_streams(reverse))
        assert await asyncio.wait_for(_call(client, b"whole"), 5) == b"elohw"
        r, w = await client.open_stream()
        w.write(b"in ")
        await w.drain()
        await asyncio.sleep(0.05)  # (the handler waits for the rest in its first step)
        w.write_eof(b"parts")
        assert await asyncio.wait_for(r.read(), 5) == b"strap ni"
        assert len(seen) == 2 and all(isinstance(t, asyncio.Task) for t in seen)
        assert seen[0] is not seen[1] and serving not in seen
        client.close()
        await client.wait_closed()
        await asyncio.wait_for(serving, 10)
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_failing_handler_resets_its_stream_and_is_reported() -> None:
    reported: list[dict[str, Any]] = []

    async def failing(reader: Reader, writer: Writer) -> None:
        if await reader.read() == b"fail":
            raise ValueError("no")
        writer.write_eof(b"fine")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        server, (_, client), (_, server_writer) = await served_connection()
        serving = asyncio.ensure_future(server_writer.serve_streams(failing))
        with pytest.raises(StreamReset):
            await asyncio.wait_for(_call(client, b"fail"), 5)
        assert await asyncio.wait_for(_call(client, b"other"), 5) == b"fine"
        assert [type(ctx["exception"]) for ctx in reported] == [ValueError]
        client.close()
        await client.wait_closed()
        await asyncio.wait_for(serving, 10)
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_the_end_waits_for_the_handlers_and_a_cancel_cancels_them() -> None:
    async def main() -> None:
        started = asyncio.Event()
        release = asyncio.Event()
        finished: list[str] = []

        async def slow(reader: Reader, writer: Writer) -> None:
            started.set()
            try:
                await release.wait()
            except asyncio.CancelledError:
                finished.append("cancelled")
                raise
            finished.append("done")

        # the connection ends while a handler runs: serve_streams() waits for it
        server, (_, client), (_, server_writer) = await served_connection()
        serving = asyncio.ensure_future(server_writer.serve_streams(slow))
        await client.open_stream()
        await asyncio.wait_for(started.wait(), 5)
        client.abort()
        await asyncio.sleep(0.1)
        assert not serving.done()
        release.set()
        await asyncio.wait_for(serving, 5)
        assert finished == ["done"]
        server.close()
        await server.wait_closed()

        # cancelled, it cancels the handlers, and the streams can be accepted again
        started.clear()
        release.clear()
        server, (_, client), (_, server_writer) = await served_connection()
        serving = asyncio.ensure_future(server_writer.serve_streams(slow))
        cancelled_reader, _cw = await client.open_stream()
        await asyncio.wait_for(started.wait(), 5)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        await asyncio.sleep(0)
        assert finished == ["done", "cancelled"]
        # the cancelled handler's stream was reset: the client's read ends, not waits
        with pytest.raises(StreamReset):
            async with asyncio.timeout(5):
                await cancelled_reader.read()
        _r, w = await client.open_stream()
        w.write_eof(b"x")
        sr, _sw = await asyncio.wait_for(server_writer.accept_stream(), 5)
        assert await sr.read() == b"x"
        client.close()
        await client.wait_closed()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_calls_answered_and_closed_leave_no_stream_state_behind() -> None:
    """A handler that answers with write_eof() and closes, in its first step: each
    stream's buffer goes with the close (none kept waiting for the connection), and its
    reads are over."""
    closed: list[Writer] = []

    async def answer(reader: Reader, writer: Writer) -> None:
        writer.write_eof((await reader.read()).upper())
        await writer.drain()
        writer.close()
        closed.append(writer)

    async def main() -> None:
        server, (_, client), (_, server_writer) = await served_connection()
        serving = asyncio.ensure_future(server_writer.serve_streams(answer))
        got = [await asyncio.wait_for(_call(client, b"call %d" % i), 5) for i in range(50)]
        assert got == [b"CALL %d" % i for i in range(50)]
        session = server_writer._session
        assert len(closed) == 50
        assert set(session.streams) <= {0}
        assert not session._closed_queue
        for writer in closed:
            sid = writer.stream_id
            assert sid not in session.conn.streams.by_id
            assert session.readable(sid) and session.take(sid, 10) == b""
        client.close()
        await client.wait_closed()
        await asyncio.wait_for(serving, 10)
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 30))
