"""A push callback that raises (a datagram sink, a stream sink, a receipt handler) closes
its connection with an error the peer reads (CloseCode.APPLICATION), logged with the
connection's name, and our own calls raise ConnectionClosed with the callback's error as
``__cause__``. It went up through the carrier's read: asyncio took it for the transport
failing (a DTPError is an OSError) and aborted it, nothing logged and no CLOSE sent, and
the peer saw the carrier vanish. In-process servers and clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionClosed, DTPError
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import CloseCode

SERVER = HostIdentity.generate()
BOUND = 10.0  # how long the test waits for anything


class Boom(Exception):
    """The application's own bug, in a callback."""


@contextlib.asynccontextmanager
async def _pair() -> AsyncIterator[
    tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter, asyncio.Future[BaseException]]
]:
    """A client connection to an in-process server whose callback sends on demand a
    datagram (b"d"), a stream with b"first" (b"s"), b"then" on it (b"t"), and reports
    how its reading ended (the future)."""
    identity = HostIdentity.generate()
    ended: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        outs: list[dtp.aio.DTPStreamWriter] = []
        try:
            while what := await reader.read(1):
                if what == b"d":
                    writer.send_datagram(b"dgram")
                elif what == b"s":
                    _, out = await writer.open_stream()
                    outs.append(out)
                    out.write(b"first")
                    await out.drain()
                elif what == b"t":
                    outs[0].write(b"then")
                    await outs[0].drain()
        except DTPError as exc:
            ended.set_result(exc)
            return
        ended.set_result(ConnectionError("clean end"))

    server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
    async with server:
        reader, writer = await dtp.aio.open_connection(
            *server.address, server_key=identity.noise_public, timeout=5
        )
        try:
            yield reader, writer, ended
        finally:
            writer.close()
            with contextlib.suppress(DTPError):
                await asyncio.wait_for(writer.wait_closed(), 5)


def _check(caplog: pytest.LogCaptureFixture, ours: BaseException, theirs: BaseException) -> None:
    assert isinstance(ours, ConnectionClosed) and isinstance(ours.__cause__, Boom)
    assert "Boom" in str(ours)
    # the peer read an application close, not the carrier vanishing
    assert isinstance(theirs, ConnectionClosed), theirs
    assert theirs.code == CloseCode.APPLICATION
    logged = [r for r in caplog.records if r.name == "dtp.transport._session" and r.exc_info]
    assert len(logged) == 1 and isinstance(logged[0].exc_info[1], Boom)  # type: ignore[index]


def test_a_datagram_sink_that_raises_closes_with_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> tuple[BaseException, BaseException]:
        async with _pair() as (reader, writer, ended):

            def sink(data: bytes) -> None:
                raise Boom(f"cannot take {data!r}")

            writer.set_datagram_sink(sink)
            writer.write(b"d")
            with pytest.raises(ConnectionClosed) as ours:
                await asyncio.wait_for(reader.read(), 5)
            return ours.value, await asyncio.wait_for(ended, 5)

    with caplog.at_level(logging.ERROR, logger="dtp.transport._session"):
        ours, theirs = asyncio.run(main())
    _check(caplog, ours, theirs)


def test_a_stream_sink_that_raises_closes_with_an_error(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[BaseException, BaseException]:
        async with _pair() as (reader, writer, ended):
            ends: list[BaseException | None] = []

            pushed: list[bytes] = []

            def on_data(data: bytes) -> None:
                pushed.append(data)
                if data == b"then":
                    raise Boom(f"cannot take {data!r}")

            writer.write(b"s")
            stream, _ = await asyncio.wait_for(writer.accept_stream(), 5)
            stream.set_sink(on_data, ends.append)
            writer.write(b"t")
            with pytest.raises(ConnectionClosed) as ours:
                await asyncio.wait_for(reader.read(), 5)
            assert b"".join(pushed) == b"firstthen"
            assert len(ends) == 1 and ends[0] is ours.value  # the sink's end: the same
            return ours.value, await asyncio.wait_for(ended, 5)

    with caplog.at_level(logging.ERROR, logger="dtp.transport._session"):
        ours, theirs = asyncio.run(main())
    _check(caplog, ours, theirs)


def test_a_receipt_handler_that_raises_closes_with_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The blocking API: the receipt handler runs as the engine reads the carrier."""
    identity = HostIdentity.generate()
    theirs: list[BaseException] = []
    go = threading.Event()

    def handle(sock: dtp.socket.DTPSocket) -> None:
        assert sock.recv(1) == b"r"
        engine = sock._engine
        with engine.lock:
            engine.conn.send_receipt(b"please pay")
            engine.flush()
        try:
            sock.recv(1)
        except DTPError as exc:
            theirs.append(exc)
        go.set()

    with dtp.socket.create_server(("127.0.0.1", 0), identity=identity) as server:
        threading.Thread(target=server.serve_forever, args=(handle,), daemon=True).start()
        with (
            caplog.at_level(logging.ERROR, logger="dtp.transport._session"),
            dtp.socket.create_connection(
                server.address, server_key=identity.noise_public, timeout=5
            ) as sock,
        ):

            def on_receipt(data: bytes) -> None:
                raise Boom(f"cannot pay {data!r}")

            sock._engine.session.on_receipt = on_receipt
            sock.sendall(b"r")
            with pytest.raises(ConnectionClosed) as ours:
                sock.recv(1)
            assert go.wait(5)
    _check(caplog, ours.value, theirs[0])


def test_a_sink_attached_to_a_stream_closed_here_ends_at_once() -> None:
    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        for _ in range(2):
            r, w = await writer.accept_stream()
            assert await r.readexactly(3) == b"req"
            with contextlib.suppress(DTPError):  # (the client may have stopped reading)
                w.write(b"partial")  # never ended
                await w.drain()
        await reader.read()  # until the client closes

    async def client(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        for read_first in (False, True):
            r, w = await writer.open_stream()
            w.write(b"req")
            await w.drain()
            if read_first:
                assert await r.readexactly(7) == b"partial"
            w.close()  # both ways: its reads give b"" from now on
            assert await r.read() == b""
            ends: list[BaseException | None] = []
            r.set_sink(lambda data: None, ends.append)
            # (it never ended while the connection lasted)
            assert ends == [None]

    async def main() -> None:
        server = await dtp.aio.start_server(handler, "127.0.0.1", 0, identity=SERVER)
        try:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=SERVER.noise_public, timeout=BOUND
            )
            try:
                async with asyncio.timeout(BOUND):
                    await client(reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(DTPError):
                    await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
