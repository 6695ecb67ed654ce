"""dtp.aio's server against asyncio.Server: get_loop(), is_serving(), start_serving()
and start_server(start_serving=False), serve_forever() cancelled closing the whole
server. Real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import dtp.aio
from dtp.connection import ConnectionConfig
from dtp.keys import HostIdentity
from tests.half_handshakes import first_record


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
