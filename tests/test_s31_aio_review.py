"""The asyncio stream API's flow-control credit, after a review: a cancelled read's
bytes, put back, had their credit returned a second time when the stream was then
closed (or reset), so the connection's receive window grew for good; readline() and
readuntil() held every byte's credit until the separator came, so a line longer than
the stream's window (the limit allowing it) was never reached. Real connections on
127.0.0.1; each wait is bounded, so a hang fails rather than stalls the run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import dtp.aio
from dtp.connection import ConnectionConfig
from dtp.errors import DTPError
from dtp.keys import HostIdentity

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()
WINDOW = 32768  # the client's per-stream receive window in the readline tests

Handler = Callable[[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter], Awaitable[None]]
Client = Callable[[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter], Awaitable[Any]]


def run(handler: Handler, client: Client, **kwargs: Any) -> Any:
    """Serve ``handler``, connect, and return what ``client`` returns (the whole run
    bounded: a read that hangs fails the test)."""

    async def main() -> Any:
        server = await dtp.aio.start_server(handler, "127.0.0.1", 0, identity=SERVER)
        try:
            host, port = server.sockets[0].getsockname()[:2]
            reader, writer = await dtp.aio.open_connection(
                host, port, server_key=SERVER.noise_public, timeout=10, **kwargs
            )
            try:
                return await client(reader, writer)
            finally:
                writer.abort()
        finally:
            server.close()

    return asyncio.run(asyncio.wait_for(main(), 60))


def credit_balance(writer: dtp.aio.DTPStreamWriter) -> int:
    """Credit returned beyond what arrived: > 0 means some byte's went back twice."""
    conn = writer._conn
    return int(conn._conn_consumed - conn._conn_received)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_cancelled_reads_bytes_are_credited_once_when_the_stream_closes(how: str) -> None:
    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        for _ in range(3):
            _r, w = await writer.accept_stream()
            w.write(b"a" * 100_000)
            await w.drain()
        await asyncio.sleep(30)

    async def client(_reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> Any:
        balances = []
        for _ in range(3):
            r, w = await writer.open_stream()
            w.write(b"hi")
            await w.drain()
            with pytest.raises(TimeoutError):
                # takes the 100 000 bytes (returning their credit), then is cancelled:
                # they go back in front of the stream
                await asyncio.wait_for(r.readexactly(200_000), 0.5)
            assert len(r._buffer()) == 100_000
            if how == "close":
                w.close()
            else:
                w.reset(7)
            await asyncio.sleep(0.05)
            balances.append(credit_balance(writer))
        return balances

    assert run(handler, client) == [0, 0, 0]


def small_window() -> ConnectionConfig:
    return ConnectionConfig(identity=CLIENT, is_client=True, stream_window=WINDOW)


def test_readline_longer_than_the_streams_window() -> None:
    line = b"a" * 40_000 + b"\n"  # within the default 64 KiB limit, past the window

    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        writer.write(line + b"next\n")
        await writer.drain()
        await asyncio.sleep(30)

    async def client(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> Any:
        got = await asyncio.wait_for(reader.readline(), 10)
        following = await asyncio.wait_for(reader.readuntil(b"\n"), 10)
        return got, following, credit_balance(writer)

    assert run(handler, client, config=small_window()) == (line, b"next\n", 0)


def test_readuntil_of_a_long_line_within_a_large_limit() -> None:
    line = b"b" * (5 << 20) + b"\r\n"  # past the 4 MiB stream window

    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        writer.write(line)
        await writer.drain()
        await asyncio.sleep(30)

    async def client(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> Any:
        got = await asyncio.wait_for(reader.readuntil(b"\r\n"), 20)
        return got == line, credit_balance(writer)

    assert run(handler, client, limit=16 << 20) == (True, 0)


def test_a_cancelled_readuntil_loses_nothing_and_goes_on_past_the_window() -> None:
    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        writer.write(b"c" * 20_000)
        await writer.drain()
        await reader.readexactly(2)  # "go": the client's first readuntil was cancelled
        writer.write(b"d" * 30_000 + b"\n")
        await writer.drain()
        await asyncio.sleep(30)

    async def client(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> Any:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readuntil(b"\n"), 0.5)
        kept = len(reader._buffer())
        writer.write(b"go")
        await writer.drain()
        got = await asyncio.wait_for(reader.readuntil(b"\n"), 10)
        return kept, got, credit_balance(writer)

    expected = (20_000, b"c" * 20_000 + b"d" * 30_000 + b"\n", 0)
    assert run(handler, client, config=small_window()) == expected


def test_limit_overrun_past_the_window_keeps_the_bytes_as_asyncio() -> None:
    data = b"e" * 60_000  # no separator: over the 50 000-byte limit, and the window

    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(30)

    async def client(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> Any:
        with pytest.raises(asyncio.LimitOverrunError) as info:
            await asyncio.wait_for(reader.readuntil(b"\n"), 10)
        # as asyncio's: consumed is what is buffered (+ 1 - len(separator)), and the
        # bytes stay for the next read
        consumed, buffered = info.value.consumed, len(reader._buffer())
        rest = await asyncio.wait_for(reader.readexactly(len(data)), 10)
        return consumed == buffered > 50_000, rest == data, credit_balance(writer)

    assert run(handler, client, config=small_window(), limit=50_000) == (True, True, 0)


def test_open_stream_waits_at_the_peers_stream_limit() -> None:
    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        async def echo(r: dtp.aio.DTPStreamReader, w: dtp.aio.DTPStreamWriter) -> None:
            with contextlib.suppress(DTPError):  # (the client aborts at the end)
                w.write(await r.read())
                w.write_eof()

        tasks = set()
        with contextlib.suppress(DTPError):  # (the client aborts at the end)
            while True:
                task = asyncio.create_task(echo(*await writer.accept_stream()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    async def client(_reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> Any:
        streams = []
        while True:
            opening = asyncio.ensure_future(writer.open_stream())
            done, _ = await asyncio.wait({opening}, timeout=0.5)
            if not done:
                break  # at the limit: it waits (it raised LocalProtocolError)
            streams.append(opening.result())
        assert len(streams) > 1
        # one of ours finishes: the peer allows another, and the waiting call opens it
        r, w = streams[0]
        w.write(b"x")
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 5) == b"x"
        _r, w2 = await asyncio.wait_for(opening, 5)
        # at the limit again: a waiting call raises the connection's error once it ends
        waiting = asyncio.ensure_future(writer.open_stream())
        await asyncio.sleep(0.2)
        assert not waiting.done()
        writer.abort()
        with pytest.raises(DTPError):
            await asyncio.wait_for(waiting, 5)
        return w2.stream_id not in {w.stream_id for _, w in streams}

    assert run(handler, client) is True
