"""Session 35's second review of dtp.aio's reader (s35 sockaio2), over real DTP
connections on 127.0.0.1.

A read that gathered bytes and then failed while it waited -- cancelled, typically by a
shutdown handler that cancels the reading task and closes the stream's writer in one
go -- put them back in front of the stream even when the stream had been closed here
meanwhile: the reader, which gives b"" once its writer is closed, gave those bytes
again after the close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import dtp.aio
from dtp.keys import HostIdentity

Pair = tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]


async def _second_stream() -> tuple[dtp.aio.DTPServer, dtp.aio.DTPStreamWriter, Pair, Pair]:
    """A server, the client's first writer, and a second stream: the client's pair and
    the server's (a second stream, so that its close does not end the connection)."""
    served: asyncio.Queue[Pair] = asyncio.Queue()
    hold = asyncio.Event()

    async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        served.put_nowait((reader, writer))
        await hold.wait()  # (the test drives the server's side)

    identity = HostIdentity.generate()
    server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
    _, first = await dtp.aio.open_connection(
        "127.0.0.1", server.address[1], server_key=identity.noise_public, timeout=5
    )
    first.write(b"?")
    server_reader, server_writer = await served.get()
    assert await server_reader.readexactly(1) == b"?"
    reader, writer = await first.open_stream()
    writer.write(b"!")
    peer_reader, peer_writer = await server_writer.accept_stream()
    assert await peer_reader.readexactly(1) == b"!"
    return server, first, (reader, writer), (peer_reader, peer_writer)


Read = Callable[[dtp.aio.DTPStreamReader], Coroutine[Any, Any, bytes]]


@pytest.mark.parametrize(
    "read",
    [lambda r: r.readexactly(10), lambda r: r.read(-1)],
    ids=["readexactly", "read_all"],
)
def test_a_read_cancelled_as_its_stream_closes_gives_nothing_back(read: Read) -> None:
    """The read took b"abc" and waits for more; it is cancelled and the stream's writer
    closed before it runs: reads of the closed stream give b"" (they gave b"abc")."""

    async def main() -> None:
        server, first, (reader, writer), (_, peer_writer) = await _second_stream()
        # a watcher whose waiter comes before the read's: once it wakes on b"abc", the
        # read's wake-up (scheduled by the same arrival) has run -- it took the bytes
        watch = asyncio.ensure_future(reader._proto.wait_for(lambda: len(reader._buffer()) >= 3))
        await asyncio.sleep(0)
        task = asyncio.ensure_future(read(reader))
        await asyncio.sleep(0)
        peer_writer.write(b"abc")
        await peer_writer.drain()
        await asyncio.wait_for(watch, 5)
        assert not reader._buffer() and reader._waiting is not None  # (taken; waits on)
        task.cancel()
        writer.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.wait_for(reader.read(10), 5) == b""
        assert await asyncio.wait_for(reader.read(), 5) == b""
        first.close()
        await first.wait_closed()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 20))
