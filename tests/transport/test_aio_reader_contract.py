"""DTPStreamReader against asyncio.StreamReader's contract, where the stream's flow
control or the line limit used to make them differ. The peer is the echo server of
tests/support/servers.py in its own process, over 127.0.0.1."""

from __future__ import annotations

import asyncio
import os

import pytest

import dtp.aio
from tests.support.procs import ServerProc, server_process

WINDOW = 4 << 20  # ConnectionConfig.stream_window's default


@pytest.fixture(scope="module")
def echo_server():  # type: ignore[no-untyped-def]
    with server_process("echo", api="asyncio") as srv:
        yield srv


async def _connect(
    srv: ServerProc,
) -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
    return await dtp.aio.open_connection("127.0.0.1", srv.port, server_key=srv.key, timeout=10)


def test_readexactly_beyond_the_stream_window(echo_server: ServerProc) -> None:
    """More than the peer may send ahead of what was read: the read takes what
    arrives as it waits, so credit flows and the rest comes (it waited forever)."""

    async def main() -> None:
        reader, writer = await _connect(echo_server)
        data = os.urandom(2 * WINDOW + 1)
        writer.write(data)
        assert await asyncio.wait_for(reader.readexactly(len(data)), 60) == data
        # and what follows is intact
        writer.write(b"after")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"after"
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())


def test_readexactly_beyond_the_window_at_eof_gives_all_it_read(
    echo_server: ServerProc,
) -> None:
    async def main() -> None:
        reader, writer = await _connect(echo_server)
        data = os.urandom(WINDOW + WINDOW // 4)
        writer.write(data)
        writer.write_eof()
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await asyncio.wait_for(reader.readexactly(2 * WINDOW), 60)
        assert info.value.partial == data
        assert info.value.expected == 2 * WINDOW
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())


def test_a_cancelled_readexactly_consumes_nothing(echo_server: ServerProc) -> None:
    """As asyncio's: a readexactly cancelled (here by wait_for) leaves every byte it
    had gathered for the next read."""

    async def main() -> None:
        reader, writer = await _connect(echo_server)
        data = os.urandom(WINDOW + WINDOW // 4)
        writer.write(data)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.readexactly(len(data) + 1), 2)
        assert await asyncio.wait_for(reader.readexactly(len(data)), 60) == data
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())


async def _buffered(reader: dtp.aio.DTPStreamReader, n: int) -> None:
    async with asyncio.timeout(30):
        while len(reader._buffer()) < n:
            await asyncio.sleep(0.01)


async def _lines_as_asyncio_reads(data: bytes, count: int) -> list[object]:
    """What asyncio.StreamReader's readline() returns (or the type it raises) for
    ``count`` calls on ``data``."""
    stdlib = asyncio.StreamReader()
    stdlib.feed_data(data)
    stdlib.feed_eof()
    out: list[object] = []
    for _ in range(count):
        try:
            out.append(await stdlib.readline())
        except Exception as exc:
            out.append(type(exc))
    return out


def test_readline_over_the_limit_raises_valueerror_and_skips_the_line(
    echo_server: ServerProc,
) -> None:
    """As asyncio's: ValueError, the line discarded, the next readline() goes on after
    it (it raised LimitOverrunError and kept the line, so every call raised again)."""

    async def main() -> None:
        reader, writer = await _connect(echo_server)
        data = (
            b"short\n"
            + b"a" * 70000
            + b"\nnext\n"
            + b"b" * 65536  # the limit is on the line without its newline
            + b"\n"
            + b"c" * 65537
            + b"\nend"
        )
        expected = await _lines_as_asyncio_reads(data, 6)
        assert expected == [
            b"short\n",
            ValueError,
            b"next\n",
            b"b" * 65536 + b"\n",
            ValueError,
            b"end",
        ]
        writer.write(data)
        writer.write_eof()
        await _buffered(reader, len(data))  # all of it, as in the stdlib's case
        got: list[object] = []
        for _ in range(6):
            try:
                got.append(await asyncio.wait_for(reader.readline(), 10))
            except Exception as exc:
                got.append(type(exc))
        assert got == expected
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())


def test_async_for_gets_past_an_over_long_line(echo_server: ServerProc) -> None:
    async def main() -> None:
        reader, writer = await _connect(echo_server)
        data = b"c" * 100000 + b"\nafter\n"
        writer.write(data)
        writer.write_eof()
        # (all of it: a line over the limit whose end has not arrived yet is discarded
        # only as far as it has, and its rest read as a line, as with asyncio's)
        await _buffered(reader, len(data))
        lines: list[bytes] = []
        with pytest.raises(ValueError):
            async for line in reader:
                lines.append(line)
        async for line in reader:
            lines.append(line)
        assert lines == [b"after\n"]
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())
