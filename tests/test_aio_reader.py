"""DTPStreamReader against asyncio.StreamReader's contract, where the stream's flow
control or the line limit used to make them differ. The peer is the echo server of
tests/servers.py in its own process, over 127.0.0.1."""

from __future__ import annotations

import asyncio
import os

import pytest

import dtp.aio
from tests.procs import ServerProc, server_process

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
