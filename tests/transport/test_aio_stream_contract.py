"""dtp.aio's reader and writer against asyncio.StreamReader / StreamWriter, where a user
porting asyncio-streams code relies on them: a cancelled read of all, drain() on a
stream the peer stopped reading. In-process server and client on 127.0.0.1.

An asyncio connection carrying many short streams keeps no buffer per stream once
they are closed (the blocking API's Session.forget; the asyncio writer's close() only
discarded what was buffered, and each stream's buffer stayed for the connection's life:
the daemon's tunnels, a stream each, on connections that live for days). Real
connections on 127.0.0.1.

The asyncio stream API's flow-control credit: a cancelled read's
bytes, put back, had their credit returned a second time when the stream was then
closed (or reset), so the connection's receive window grew for good; readline() and
readuntil() held every byte's credit until the separator came, so a line longer than
the stream's window (the limit allowing it) was never reached. Real connections on
127.0.0.1; each wait is bounded, so a hang fails rather than stalls the run.

dtp.aio's reader, over real DTP connections on 127.0.0.1.

A read that gathered bytes and then failed while it waited -- cancelled, typically by a
shutdown handler that cancels the reading task and closes the stream's writer in one
go -- put them back in front of the stream even when the stream had been closed here
meanwhile: the reader, which gives b"" once its writer is closed, gave those bytes
again after the close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest

import dtp.aio
from dtp.errors import (
    CLOSE_SUBSCRIPTION_ENDED,
    DTPError,
    LocalProtocolError,
    StreamReset,
    SubscriptionEnded,
)
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import CloseCode, ConnectionConfig

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
            with pytest.raises(StreamReset):
                writer2.write_eof(b"last")  # (its last bytes are written as write()'s)
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
            # it waits for bytes (a read waits on its stream's changes)
            await _until(lambda: bool(reader._proto._keyed.get(reader.stream_id)))
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


SERVER = HostIdentity.generate()
STREAMS = 200


def test_closed_streams_leave_no_buffers_behind() -> None:
    sessions: list[Any] = []

    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        sessions.append(writer._session)
        for _ in range(STREAMS):
            r, w = await writer.accept_stream()
            w.write(await r.read())
            await w.drain()
            w.close()
        await reader.read()
        writer.close()

    async def main() -> tuple[int, int]:
        server = await dtp.aio.start_server(handler, "127.0.0.1", 0, identity=SERVER)
        try:
            host, port = server.sockets[0].getsockname()[:2]
            _reader, writer = await dtp.aio.open_connection(
                host, port, server_key=SERVER.noise_public
            )
            for _ in range(STREAMS):
                r, w = await writer.open_stream()
                w.write(b"x" * 100)
                w.write_eof()
                assert await r.read() == b"x" * 100
                w.close()
            await asyncio.sleep(0.2)  # (the server's last closes)
            client = len(writer._session.streams)
            writer.close()
            await writer.wait_closed()
            return client, len(sessions[0].streams)
        finally:
            server.close()
            await server.wait_closed()

    client, served = asyncio.run(asyncio.wait_for(main(), 60))
    # (the first stream, and the few the connection is not done with yet)
    assert client <= 4, client
    assert served <= 4, served


CLIENT = HostIdentity.generate()
WINDOW = 32768  # the client's per-stream receive window in the readline tests

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
    return int(conn.streams.conn_consumed - conn.streams.conn_received)


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


def test_write_eof_with_the_last_bytes_sends_them_and_the_end_in_one_record() -> None:
    """``write_eof(data)``: a reply on a stream of its own (a JSON-RPC call) is one record
    -- the bytes, the FIN and the MAX_STREAMS its end frees -- where ``write()`` then
    ``write_eof()`` sent the bytes and the FIN apart. The reader sees the same bytes and
    end; after it, writes raise as after ``write_eof()``."""

    async def main() -> None:
        server, first, (reader, writer), (peer_reader, peer_writer) = await _second_stream()
        try:
            writer.write_eof()  # the request's end: the server's stream is done reading
            assert await asyncio.wait_for(peer_reader.read(), 5) == b""
            conn = peer_writer._conn
            before = conn.records_sent
            peer_writer.write_eof(bytearray(b"the answer"))
            assert conn.records_sent == before + 1
            assert await asyncio.wait_for(reader.read(), 5) == b"the answer"
            assert reader.at_eof()
            with pytest.raises(LocalProtocolError):
                peer_writer.write_eof(b"more")
            with pytest.raises(LocalProtocolError):
                peer_writer.write(b"more")
            peer_writer.write_eof()  # (an end already sent: nothing, as asyncio's)
            with pytest.raises(TypeError):
                writer.write_eof("text")  # type: ignore[arg-type]
            peer_writer.close()
        finally:
            first.close()
            await asyncio.wait_for(first.wait_closed(), 5)
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_a_change_on_one_stream_wakes_only_what_waits_on_it() -> None:
    """A read waits on its own stream: calls made a stream each beside it (a JSON-RPC
    service's) neither wake it nor a waiting accept_stream() that has nothing to
    accept, and each still wakes for its own change -- the read when its bytes come, the
    accept when the peer opens a stream, both when the connection ends."""

    async def main() -> None:
        go = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            for _ in range(3):  # three calls, a stream each
                r, w = await writer.accept_stream()
                w.write_eof(await r.read())
                w.close()
            await go.wait()
            writer.write(b"first")  # the first stream's bytes, at last
            await reader.read()
            writer.close()

        async with _connected(handle) as (reader, writer):
            proto = reader._proto
            first = asyncio.ensure_future(reader.read(100))
            accept = asyncio.ensure_future(writer.accept_stream())  # (the server opens none)
            await _until(lambda: 0 in proto._keyed and -1 in proto._keyed)
            waiting = proto._keyed[0][0], proto._keyed[-1][0]
            for n in range(3):
                r, w = await writer.open_stream()
                w.write_eof(b"call %d" % n)
                assert await asyncio.wait_for(r.read(), 5) == b"call %d" % n
                w.close()
            assert (proto._keyed[0][0], proto._keyed[-1][0]) == waiting  # (never woken)
            assert not first.done() and not accept.done()
            go.set()
            assert await asyncio.wait_for(first, 5) == b"first"
            assert not accept.done()
            writer.close()
            with pytest.raises(DTPError):
                await asyncio.wait_for(accept, 5)  # (the connection's end wakes it)

    asyncio.run(main())


def test_a_streams_close_wakes_what_the_connections_end_concerns() -> None:
    """Closing a stream applies what the session holds (its buffer is forgotten): a
    connection's end applied then wakes the readers of the other streams, not only the
    closed stream's -- with no input coming (reading paused), nothing else would."""

    async def main() -> None:
        hold = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await hold.wait()

        async with _connected(handle) as (reader, writer):
            _, w1 = await writer.open_stream()
            r2, w2 = await writer.open_stream()
            w1.write(b"x")
            w2.write(b"y")
            await w2.drain()
            second = asyncio.ensure_future(r2.read(10))
            proto = reader._proto
            await _until(lambda: w2._stream_id in proto._keyed)
            assert proto.transport is not None
            proto.transport.pause_reading()  # (only what close() wakes)
            proto.conn.close(CloseCode.APPLICATION, "bye")  # (not applied yet)
            w1.close()
            try:
                with pytest.raises(DTPError):
                    await asyncio.wait_for(second, 5)
            finally:
                proto.transport.resume_reading()
                hold.set()

    asyncio.run(main())


def test_an_abort_carries_an_applications_close_code() -> None:
    """``abort(reason, code=...)``: the peer's error carries the code (a paid server's
    ``CLOSE_SUBSCRIPTION_ENDED`` is raised as SubscriptionEnded); a code below the
    application range, or not an int, is refused before anything is closed."""
    refused: list[str] = []

    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        await reader.read(2)
        for code in (CloseCode.IDLE_TIMEOUT, 1 << 62, True, "0x1405"):
            with pytest.raises(ValueError) as bad:
                writer.abort("no", code=code)  # type: ignore[arg-type]
            refused.append(str(bad.value))
        writer.write(b"ok")  # (still open)
        await writer.drain()
        writer.abort("the subscription is over: gone", code=CLOSE_SUBSCRIPTION_ENDED)

    async def client(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> Any:
        writer.write(b"hi")
        await writer.drain()
        assert await reader.readexactly(2) == b"ok"
        with pytest.raises(SubscriptionEnded) as ended:
            while await reader.read(100):
                pass
            await writer.drain()
        return ended.value

    ended = run(handler, client)
    assert ended.code == CLOSE_SUBSCRIPTION_ENDED and ended.reason.endswith("gone")
    assert len(refused) == 4
    assert all(r.startswith("an abort's code is an int from 0x1000") for r in refused)
