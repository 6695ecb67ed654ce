"""dtp.aio's reader and writer against asyncio.StreamReader / StreamWriter, where a user
porting asyncio-streams code relies on them: a cancelled read of all, drain() on a
stream the peer stopped reading. In-process server and client on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import dtp.aio
from dtp.errors import StreamReset
from dtp.keys import HostIdentity

Handler = Callable[[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def _connected(
    handle: Handler,
) -> AsyncIterator[tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]]:
    """A DTP server on 127.0.0.1 serving ``handle``, and a client connection to it,
    closed (then the server) at the end."""
    identity = HostIdentity.generate()
    server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
    async with server:
        reader, writer = await dtp.aio.open_connection(
            *server.address, server_key=identity.noise_public, timeout=5
        )
        try:
            yield reader, writer
        finally:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)


async def _until(ready: Callable[[], bool]) -> None:
    """Wait (at most 5 s) until ``ready()``."""
    async with asyncio.timeout(5):
        while not ready():
            await asyncio.sleep(0.005)


def test_a_cancelled_read_of_all_consumes_nothing() -> None:
    """``asyncio.wait_for(reader.read(), t)`` timing out after some bytes came: those
    bytes come with the next read (they were lost)."""

    async def main() -> None:
        go = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            writer.write(b"abc")
            await go.wait()
            writer.write(b"def")
            writer.write_eof()
            await reader.read()
            writer.close()

        async with _connected(handle) as (reader, _writer):
            await _until(lambda: len(reader._buffer()) == 3)
            task = asyncio.ensure_future(reader.read())
            await _until(lambda: not reader._buffer())  # the read took b"abc" and waits
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            go.set()
            assert await asyncio.wait_for(reader.read(), 5) == b"abcdef"
            assert reader.at_eof()

    asyncio.run(main())


def test_drain_raises_once_the_peer_stopped_reading_the_stream() -> None:
    """The peer closes a stream it read 10 bytes of (asking us to stop sending): the
    8 MiB drain() waits on are dropped, so drain() raises StreamReset, as the next
    write() does (it returned as if they had gone out)."""

    async def main() -> None:
        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            reader2, writer2 = await writer.accept_stream()
            await reader2.readexactly(10)
            writer2.close()  # both ways: STOP_SENDING to the client
            await reader.read()
            writer.close()

        async with _connected(handle) as (_reader, writer):
            _reader2, writer2 = await writer.open_stream()
            writer2.write(b"x" * (8 << 20))  # beyond the stream window: drain() waits
            with pytest.raises(StreamReset):
                await asyncio.wait_for(writer2.drain(), 5)
            with pytest.raises(StreamReset):
                await writer2.drain()
            with pytest.raises(StreamReset):
                writer2.write(b"y")
            writer2.close()
            await asyncio.wait_for(writer2.wait_closed(), 5)

    asyncio.run(main())


def test_limit_exception_and_start_tls_as_asyncio_streams() -> None:
    """``limit=`` of open_connection / start_server sets the readers' line limit, as
    asyncio's (it was refused with TypeError); ``reader.exception()`` says what reads
    will raise; ``start_tls()`` is refused with a typed error, not AttributeError."""
    from dtp.errors import LocalProtocolError

    async def main() -> None:
        lines: list[object] = []

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            for _ in range(2):
                try:
                    lines.append(await reader.readline())
                except ValueError as exc:
                    lines.append(exc)
            writer.write(b"0123456789ab\nok\n")
            await reader.read()
            writer.close()

        identity = HostIdentity.generate()
        with pytest.raises(ValueError, match="Limit"):
            await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity, limit=0)
        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity, limit=4)
        async with server:
            with pytest.raises(ValueError, match="Limit"):
                await dtp.aio.open_connection(
                    *server.address, server_key=identity.noise_public, limit=-1
                )
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=5, limit=10
            )
            writer.write(b"toolong\nfine\n")
            with pytest.raises(ValueError):  # 12 bytes before the newline, over 10
                await asyncio.wait_for(reader.readline(), 5)
            assert await asyncio.wait_for(reader.readline(), 5) == b"ok\n"
            assert reader.exception() is None
            with pytest.raises(LocalProtocolError, match="start_tls"):
                await writer.start_tls(None)
            writer.close()
            await writer.wait_closed()
        assert isinstance(lines[0], ValueError) and lines[1] == b"fine\n"

    asyncio.run(main())


def test_exception_names_the_streams_reset() -> None:
    async def main() -> None:
        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            _reader2, writer2 = await writer.accept_stream()
            writer2._conn.reset_stream(writer2.stream_id, 7)
            writer2._proto.flush()
            await reader.read()
            writer.close()

        async with _connected(handle) as (_reader, writer):
            reader2, writer2 = await writer.open_stream()
            writer2.write(b"hi")
            with pytest.raises(StreamReset):
                await asyncio.wait_for(reader2.read(), 5)
            error = reader2.exception()
            assert isinstance(error, StreamReset) and error.code == 7
            writer2.close()

    asyncio.run(main())


def test_a_client_connection_dropped_unclosed_is_closed() -> None:
    """As asyncio's StreamWriter, garbage-collected unclosed, closes its transport: a
    client connection whose reader and writer are all gone is closed (what was
    written first arrives, then a clean end). It stayed open for good, keepalives
    holding off the idle timeout; the server waited on it."""
    import gc

    async def main() -> None:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            got.set_result(await reader.read())
            writer.close()

        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:

            async def fire_and_forget() -> None:
                _reader, writer = await dtp.aio.open_connection(
                    *server.address, server_key=identity.noise_public, timeout=5
                )
                writer.write(b"hello")

            await fire_and_forget()
            gc.collect()
            assert await asyncio.wait_for(got, 5) == b"hello"

    asyncio.run(main())


def test_a_kept_reader_or_a_server_connection_stays_open() -> None:
    """The connection closes only once none of its readers and writers is left: a
    client keeping only its reader reads on; a server's connection stays open once
    its callback returned (as asyncio's server keeps its writer)."""
    import gc
    import weakref

    async def main() -> None:
        callback_done = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            async def later() -> None:  # (serves on once the callback returned)
                line = await reader.readline()
                writer.write(line.upper())
                await reader.read()
                writer.close()

            tasks.add(asyncio.ensure_future(later()))
            callback_done.set()

        async def handle_plain(
            reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter
        ) -> None:
            writer.write(b"hi\n")  # and returns, closing nothing

        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=5
            )
            await asyncio.wait_for(callback_done.wait(), 5)
            writer.write(b"ping\n")
            writer.write_eof()
            gone = weakref.ref(writer)
            del writer
            gc.collect()
            assert gone() is None
            assert await asyncio.wait_for(reader.read(), 5) == b"PING\n"
            await asyncio.gather(*tasks)

        server = await dtp.aio.start_server(handle_plain, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=5
            )
            assert await asyncio.wait_for(reader.readline(), 5) == b"hi\n"
            for _ in range(3):
                gc.collect()
                await asyncio.sleep(0)
            writer.write(b"still open")
            await asyncio.wait_for(writer.drain(), 5)
            assert not writer.is_closing()
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)

    asyncio.run(main())


@pytest.mark.parametrize("second", ["read", "readexactly", "readline", "readuntil"])
def test_a_second_waiting_read_raises_runtime_error(second: str) -> None:
    """As asyncio's StreamReader: while one read waits for bytes, another read that
    would wait too raises RuntimeError (the two took interleaved shares of what came);
    the first gets its bytes and the stream goes on."""

    async def main() -> None:
        go = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await go.wait()
            writer.write(b"abcdef\nrest")
            writer.write_eof()
            await reader.read()
            writer.close()

        async with _connected(handle) as (reader, _writer):
            first = asyncio.ensure_future(reader.readexactly(3))
            await _until(lambda: bool(reader._proto._waiters))  # it waits for bytes
            calls = {
                "read": lambda: reader.read(10),
                "readexactly": lambda: reader.readexactly(3),
                "readline": reader.readline,
                "readuntil": lambda: reader.readuntil(b"\n"),
            }
            with pytest.raises(RuntimeError, match="another coroutine is already waiting"):
                await asyncio.wait_for(calls[second](), 2)  # (it waited on)
            go.set()
            assert await asyncio.wait_for(first, 5) == b"abc"
            assert await asyncio.wait_for(reader.readline(), 5) == b"def\n"
            assert await asyncio.wait_for(reader.read(), 5) == b"rest"

    asyncio.run(main())


def test_ended_connections_are_freed() -> None:
    """A connection's protocol (its session, its buffers) is freed once it ended and
    nothing holds its readers and writers, on both ends (what closes a connection
    dropped unclosed must not keep it: a server kept every one it served)."""
    import gc
    import weakref

    async def main() -> list[weakref.ref[Any]]:
        refs: list[weakref.ref[Any]] = []

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            refs.append(weakref.ref(writer._proto))
            writer.write(await reader.read())
            writer.close()
            await writer.wait_closed()

        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            for _ in range(3):
                reader, writer = await dtp.aio.open_connection(
                    *server.address, server_key=identity.noise_public, timeout=5
                )
                refs.append(weakref.ref(writer._proto))
                writer.write(b"x")
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(), 5) == b"x"
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 5)
                del reader, writer
            await _until(lambda: len(refs) == 6 and not server._tasks)
        return refs

    refs = asyncio.run(main())
    gc.collect()
    assert [ref() for ref in refs] == [None] * 6
