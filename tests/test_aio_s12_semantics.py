"""dtp.aio against the asyncio semantics its users rely on: cancelled waits, the loop
ending after ``close()``, a client callback that fails with a DTP error, and reads on a
connection whose peer was killed. Real sockets on 127.0.0.1; the killed peer is the
echo server of tests/servers.py in its own process."""

from __future__ import annotations

import asyncio

import pytest

import dtp.aio
from dtp.connection import ConnectionConfig
from dtp.errors import ConnectionClosed, ConnectionLost
from dtp.keys import HostIdentity
from tests.leaks import resource_warnings
from tests.procs import ServerProc, server_process


async def _buffered(reader: dtp.aio.DTPStreamReader, n: int) -> None:
    """Wait until ``n`` bytes are buffered on ``reader``'s stream."""
    async with asyncio.timeout(10):
        while len(reader._buffer()) < n:
            await asyncio.sleep(0.01)


def test_a_cancelled_wait_closed_leaves_the_close_going_on() -> None:
    """``asyncio.wait_for(writer.wait_closed(), short)`` timing out must not cancel the
    connection's closed future: a later ``wait_closed()`` raised CancelledError."""

    async def main() -> None:
        identity = HostIdentity.generate()
        go = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await go.wait()  # the client's bytes stay queued on its side until then
            await reader.read()

        config = ConnectionConfig(identity=identity, is_client=False, stream_window=64 * 1024)
        server = await dtp.aio.start_server(
            handle, "127.0.0.1", 0, identity=identity, config=config
        )
        async with server:
            _reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            writer.write(b"x" * (256 * 1024))  # beyond the server's window
            writer.close()  # waits for the queue to leave before it closes
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 0.2)
            go.set()
            await asyncio.wait_for(writer.wait_closed(), 5)
            assert writer.transport is not None and writer.transport.is_closing()

    asyncio.run(main())


def test_close_without_wait_closed_at_the_loop_end_leaves_nothing_open() -> None:
    """As asyncio's ``StreamWriter.close()``: a writer closed as ``asyncio.run`` ends
    (its graceful close cancelled with the rest) does not leave its transport open.
    The peer is in another process, so nothing of its end closes ours meanwhile."""

    async def main(srv: ServerProc) -> None:
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", srv.port, server_key=srv.key, timeout=10
        )
        writer.write(b"hi")
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"hi"
        writer.close()
        # returns: asyncio.run cancels the close under way

    with server_process("echo", api="asyncio") as srv:
        left = resource_warnings(lambda: asyncio.run(main(srv)))
    assert [m for m in left if "unclosed" in m] == []


def test_a_callback_failing_with_a_dtp_error_ends_the_connection() -> None:
    """A client callback that raises a DTPError of its own (here a write after
    write_eof()) while the connection goes on: the connection is aborted, as for any
    other exception, instead of left open with nobody serving it."""

    async def main() -> None:
        identity = HostIdentity.generate()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            writer.write_eof()
            writer.write(b"too late")  # LocalProtocolError

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            assert await asyncio.wait_for(reader.read(), 5) == b""
            with pytest.raises(ConnectionClosed, match="internal error"):
                await asyncio.wait_for(writer.recv_datagram(), 5)
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize("method", ["readexactly", "readuntil", "readline"])
def test_reads_on_a_killed_peer_raise_the_connection_error(method: str) -> None:
    """The peer process killed mid-stream: readexactly/readuntil/readline raise the
    connection's typed error (as read() does, and as asyncio's raise the connection's
    exception), not the IncompleteReadError / short line of a clean end; the bytes
    that came are left for read()."""

    async def main() -> None:
        with server_process("echo", api="asyncio") as srv:
            reader, writer = await dtp.aio.open_connection(
                "127.0.0.1", srv.port, server_key=srv.key, timeout=10
            )
            writer.write(b"partial")
            await _buffered(reader, 7)
            srv.kill()
            call = {
                "readexactly": lambda: reader.readexactly(100),
                "readuntil": lambda: reader.readuntil(b"\n"),
                "readline": lambda: reader.readline(),
            }[method]
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(call(), 10)
            assert await reader.read(100) == b"partial"
            with pytest.raises(ConnectionLost):
                await reader.read(100)
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_a_clean_close_still_ends_reads_with_incomplete_read() -> None:
    """The peer closing the connection cleanly (without write_eof) is an end, not an
    error: IncompleteReadError with what came, and readline() gives the short line."""

    async def main() -> None:
        identity = HostIdentity.generate()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            writer.write(b"part")
            writer.close()
            await writer.wait_closed()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await asyncio.wait_for(reader.readexactly(10), 5)
            assert info.value.partial == b"part"
            assert await reader.readline() == b""
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())
