"""dtp.aio's server against asyncio.Server: get_loop(), is_serving(), start_serving()
and start_server(start_serving=False), serve_forever() cancelled closing the whole
server. Real sockets on 127.0.0.1.

dtp.aio: a drain() waiting when its writer is closed raises at once, over real DTP
connections on 127.0.0.1.

* A client callback whose drain() waited (the client reading slowly) while another task
  closed its writer -- a watchdog, a server's shutdown -- now raised ConnectionClosed at
  once; out of the callback, the server took it for the callback's failure on a live
  connection and aborted it: the close lingering to send what was queued was cut short,
  and the client read an error instead of the data and a clean end (the drain waited for
  the close before, and the data went out).

dtp.aio against asyncio's StreamWriter and Server contracts, over real
DTP connections on 127.0.0.1.

* A ``drain()`` waiting (the peer not reading) when its own writer is closed raises
  ConnectionClosed at once, as a drain() after close() does, on every stream: a
  writing task whose stream another task closes does not hang.
* A client callback that misuses a live stream (a write after ``write_eof()``) has its
  LocalProtocolError reported to the loop's exception handler, as asyncio.start_server
  reports it and dtp.aio any other exception of the callback (not only an abort the
  client reads).
* ``serve_forever()`` on a closed server raises RuntimeError, as asyncio's does, on the
  ledger carrier alone too."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import dtp.aio
from dtp.errors import ConnectionClosed, LocalProtocolError
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from tests.support.ledger_carrier_world import (
    PORT,
    SERVER,
    Host,
    host,  # noqa: F401 (a fixture)
)
from tests.transport.aio_connections import served_connection
from tests.transport.half_handshakes import first_record


async def _until(ready: Callable[[], bool]) -> None:
    """Wait (at most 5 s) until ``ready()``."""
    async with asyncio.timeout(5):
        while not ready():
            await asyncio.sleep(0.005)


async def _echo(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
    writer.write(await reader.read())
    writer.close()


def test_server_loop_is_serving_and_start_serving() -> None:
    async def main() -> None:
        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(
            _echo, "127.0.0.1", 0, identity=identity, start_serving=False
        )
        async with server:
            assert server.get_loop() is asyncio.get_running_loop()
            assert not server.is_serving()
            with pytest.raises(ConnectionRefusedError):  # not listening yet, as asyncio's
                await asyncio.open_connection(*server.address)
            await server.start_serving()
            await server.start_serving()  # (again: nothing to do)
            assert server.is_serving()
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=5
            )
            writer.write(b"ping")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"ping"
            writer.close()
            await writer.wait_closed()
        assert not server.is_serving()

    asyncio.run(main())


def test_a_cancelled_serve_forever_closes_the_server() -> None:
    """As asyncio's: cancelling serve_forever() closes the server, not only its TCP
    listener: a connection waiting in its address's line for a handshake slot is
    closed too (it waited on, to be served after the server was gone)."""

    async def main() -> None:
        identity = HostIdentity.generate()
        config = ConnectionConfig(identity=identity, is_client=False, handshake_timeout=30)
        server = await dtp.aio.start_server(
            _echo,
            "127.0.0.1",
            0,
            identity=identity,
            config=config,
            max_handshakes_per_address=1,
        )
        task = asyncio.ensure_future(server.serve_forever())
        # the first holds the address's one handshake slot, a half-handshake (its first
        # record, then nothing); the second waits in line behind it
        _r1, w1 = await asyncio.open_connection(*server.address)
        w1.write(first_record())
        await _until(lambda: server._tasks != set())
        r2, w2 = await asyncio.open_connection(*server.address)
        w2.write(first_record())
        slots = server._address_slots
        assert slots is not None
        await _until(lambda: slots.waiting("127.0.0.1") == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.wait_for(r2.read(), 3) == b""  # closed, not left waiting
        assert not server.is_serving()
        for writer in (w1, w2):
            writer.close()
            await writer.wait_closed()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["coroutine", "plain"])
def test_a_failing_callback_goes_to_the_loops_exception_handler(kind: str) -> None:
    """As asyncio.start_server: the exception a client callback raises is reported to
    the loop's exception handler (a program's own handler saw nothing); the client
    reads an error, what was written before it included."""
    from dtp.errors import ConnectionClosed

    async def main() -> None:
        seen: list[dict[str, object]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: seen.append(ctx))

        async def failing(_r: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            writer.write(b"partial")
            raise KeyError("boom")

        def plain(r: dtp.aio.DTPStreamReader, w: dtp.aio.DTPStreamWriter) -> None:
            w.write(b"partial")
            raise KeyError("boom")

        identity = HostIdentity.generate()
        callback = failing if kind == "coroutine" else plain
        server = await dtp.aio.start_server(callback, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=5
            )
            assert await asyncio.wait_for(reader.readexactly(7), 5) == b"partial"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await writer.wait_closed()
        assert len(seen) == 1
        assert seen[0]["message"] == "Unhandled exception in client_connected_cb"
        assert isinstance(seen[0]["exception"], KeyError)
        # the client's (open_connection made it an identity of its own)
        assert seen[0]["peer_address"] == writer._conn.config.identity.sui_address

    asyncio.run(main())


CHUNK = b"z" * (256 * 1024)


def test_a_callbacks_writer_closed_by_another_task_while_it_drains_still_flushes() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        written = 0
        closed = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            nonlocal written
            # the client reads nothing yet: flow control holds the rest back
            for _ in range(64):
                if writer.get_write_buffer_size() >= dtp.aio.SEND_HIGH_WATER:
                    break
                writer.write(CHUNK)
                written += len(CHUNK)
            else:
                raise AssertionError("flow control held nothing back")

            # another party closes the stream once this drain() waits (call_soon runs
            # after the task suspended in it)
            def close() -> None:
                writer.close()
                closed.set()

            loop.call_soon(close)
            # (raised out of the callback, as by one that does not catch it: the
            # connection's end, not a failure to abort on)
            await writer.drain()

        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", server.address[1], server_key=identity.noise_public, timeout=5
        )
        try:
            await asyncio.wait_for(closed.wait(), 5)  # (read from the close on)
            # all that was written comes, then a clean end (it was cut by an abort)
            data = await asyncio.wait_for(reader.read(), 5)
            assert len(data) == written
            assert await reader.read() == b""
            assert reported == []  # (the connection's own end: not the callback's bug)
        finally:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 20))


def _fill(writer: dtp.aio.DTPStreamWriter) -> None:
    """Write until drain() must wait: the peer reads nothing, so flow control holds
    what is past its window."""
    chunk = b"y" * (256 * 1024)
    for _ in range(64):
        if writer.get_write_buffer_size() >= dtp.aio.SEND_HIGH_WATER:
            return
        writer.write(chunk)
    raise AssertionError("flow control held nothing back")


@pytest.mark.parametrize("first_stream", [True, False])
def test_a_drain_waiting_when_its_writer_closes_raises_at_once(first_stream: bool) -> None:
    async def main() -> None:
        server, (_reader, writer), (_, server_writer) = await served_connection()
        if first_stream:
            stream_writer = writer
        else:
            _, stream_writer = await writer.open_stream()
        _fill(stream_writer)
        waiting = asyncio.ensure_future(stream_writer.drain())
        for _ in range(3):
            await asyncio.sleep(0)  # (it runs to its wait)
        assert not waiting.done()
        stream_writer.close()
        # (it waited for good on another stream, CLOSE_LINGER on the first)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(waiting, 2)
        server_writer.abort()  # (the server never reads: no linger in the cleanup)
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_callbacks_misuse_of_a_live_stream_goes_to_the_exception_handler() -> None:
    """A write after write_eof() in the callback is reported as asyncio reports a
    callback's exception, and the server goes on. A write after the callback's own
    abort() (the connection ended) is not: it is the connection's end, at INFO."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        seen = asyncio.Event()

        def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            reported.append(context)
            seen.set()

        loop.set_exception_handler(handler)
        calls = 0
        returned = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            nonlocal calls
            calls += 1
            try:
                if calls == 1:
                    writer.write(b"half")
                    writer.write_eof()
                    writer.write(b"oops")  # LocalProtocolError: the callback's bug
                elif calls == 2:
                    writer.abort("bye")
                    writer.write(b"late")  # (the connection ended: not reported)
                else:
                    writer.write(b"fine")
                    writer.close()
            finally:
                returned.set()

        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=5
            )
            await asyncio.wait_for(seen.wait(), 2)  # (reported to the loop's handler)
            assert len(reported) == 1
            assert reported[0]["message"] == "Unhandled exception in client_connected_cb"
            assert isinstance(reported[0]["exception"], LocalProtocolError)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)

            returned.clear()
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=5
            )
            await asyncio.wait_for(returned.wait(), 5)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)

            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=5
            )
            assert await asyncio.wait_for(reader.read(), 5) == b"fine"  # (it goes on)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)
        assert len(reported) == 1, reported

    asyncio.run(asyncio.wait_for(main(), 20))


def test_serve_forever_on_a_closed_server_raises(
    host: Host,  # noqa: F811 (the fixture)
) -> None:
    """As asyncio.Server.serve_forever: RuntimeError, on the ledger carrier alone too
    (it returned at once), and on TCP."""
    book, host_id = host.ledger, host.host_id

    async def main() -> None:
        on_ledger = await dtp.aio.start_server(
            lambda r, w: None,
            None,
            None,
            identity=SERVER,
            ledger=book,
            host_id=host_id,
            dtp_port=PORT,
        )
        on_ledger.close()
        await asyncio.wait_for(on_ledger.wait_closed(), 10)
        with pytest.raises(RuntimeError, match="is closed"):
            await asyncio.wait_for(on_ledger.serve_forever(), 2)

        on_tcp = await dtp.aio.start_server(
            lambda r, w: None, "127.0.0.1", 0, identity=HostIdentity.generate()
        )
        on_tcp.close()
        await on_tcp.wait_closed()
        with pytest.raises(RuntimeError, match="is closed"):
            await asyncio.wait_for(on_tcp.serve_forever(), 2)

    asyncio.run(asyncio.wait_for(main(), 20))
