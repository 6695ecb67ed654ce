"""The asyncio driver's pass after a read (Protocol._after_io) flushes only when there is
something to send or its timer may be late: a read on an established connection that
leaves nothing to send moves the connection's deadline (idle timeout, keepalive) only
later, so a request its handler answers is one flush, the answer's, and the timer armed
before still fires in time. Real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import dtp.aio
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.asyncio._protocol import Protocol
from tests.transport.aio_connections import served_connection

Reader = dtp.aio.DTPStreamReader
Writer = dtp.aio.DTPStreamWriter


async def _upper(reader: Reader, writer: Writer) -> None:
    writer.write_eof((await reader.read()).upper())
    await writer.drain()


def _count_flushes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each Protocol.flush from now on, as whether its connection is a client's."""
    flushes: list[bool] = []
    real = Protocol.flush

    def flush(self: Protocol) -> None:
        flushes.append(self.conn.is_client)
        real(self)

    monkeypatch.setattr(Protocol, "flush", flush)
    return flushes


def test_a_request_its_handler_answers_is_one_flush_on_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        server, (_, client), (_, server_writer) = await served_connection()
        serving = asyncio.ensure_future(server_writer.serve_streams(_upper))
        r, w = await client.open_stream()
        w.write_eof(b"warm")
        assert await asyncio.wait_for(r.read(), 5) == b"WARM"
        flushes = _count_flushes(monkeypatch)
        for i in range(5):
            r, w = await client.open_stream()
            w.write_eof(b"call %d" % i)
            assert await asyncio.wait_for(r.read(), 5) == b"CALL %d" % i
        # (the answer's flush, in the handler's first step; none before it)
        assert flushes.count(False) == 5, flushes
        client.close()
        await client.wait_closed()
        await asyncio.wait_for(serving, 10)
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 30))


async def _until(condition: Callable[[], bool], bound: float = 20.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.02)


def test_the_keepalive_goes_out_in_time_while_reads_send_nothing() -> None:
    """The server reads a record every 0.1 s that it answers nothing to (a stream's
    bytes, no credit due yet): its keepalive, every second, still reaches the client."""
    identity = HostIdentity.generate()
    held: list[Any] = []

    async def hold(reader: Reader, writer: Writer) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    async def main() -> None:
        server = await dtp.aio.start_server(
            hold,
            "127.0.0.1",
            0,
            identity=identity,
            config=ConnectionConfig(
                identity=identity, is_client=False, idle_timeout=3600.0, keepalive_interval=1.0
            ),
        )
        _, writer = await dtp.aio.open_connection(
            "127.0.0.1",
            server.address[1],
            server_key=identity.noise_public,
            timeout=5,
            config=ConnectionConfig(
                identity=HostIdentity.generate(),
                is_client=True,
                idle_timeout=3600.0,
                keepalive_interval=None,
            ),
        )
        writer.write(b"x")
        await writer.drain()
        await _until(lambda: bool(held))
        conn = writer._proto.conn  # (the client's: what the server sent it, counted)
        received = conn.records_received
        start = time.monotonic()
        while time.monotonic() - start < 3.2:
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.1)
        # a keepalive a second (at least two in 3.2 s, on a loaded machine too), the
        # records the client sent never holding it off
        assert conn.records_received - received >= 2
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 30))
