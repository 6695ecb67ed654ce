"""dtp.hostid.udp._asyncio's forwarder under asyncio cancellation: a close() cancelled midway
(asyncio.wait_for) leaves no socket open, and a later close() ends what is left. Real
UDP sockets and DTP connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import dtp.aio
from dtp.hostid.udp._asyncio import AsyncUdpForwarder, relay_udp_async
from dtp.identity.keys import HostIdentity
from tests.support.scopes import scope_of


def _udp_socket() -> socket.socket:
    """A UDP socket bound to a free port on 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_a_cancelled_close_still_closes_the_local_socket() -> None:
    async def main() -> None:
        identity = HostIdentity.generate()
        loop = asyncio.get_running_loop()
        backend = _udp_socket()
        backend.setblocking(False)

        def echo() -> None:
            with_data = True
            while with_data:
                try:
                    data, source = backend.recvfrom(65536)
                except BlockingIOError:
                    with_data = False
                else:
                    backend.sendto(data, source)

        loop.add_reader(backend.fileno(), echo)

        async def relay(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await relay_udp_async(reader, writer, backend.getsockname(), idle_timeout=10)

        server = await dtp.aio.start_server(relay, "127.0.0.1", 0, identity=identity)

        async def connect() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
            return await dtp.aio.open_connection(*server.address, server_key=identity.noise_public)

        forwarder = await AsyncUdpForwarder.start(("127.0.0.1", 0), connect)
        local = forwarder._sock
        assert local is not None
        client = _udp_socket()
        try:
            client.sendto(b"ping", forwarder.address)
            client.settimeout(5)
            assert await asyncio.to_thread(client.recv, 100) == b"ping"  # a live flow
            # a flow that takes its time to end (as one settling its final receipt,
            # for up to final_timeout)
            settled = asyncio.Event()
            end = forwarder._end

            async def slow_end(flow: Any) -> None:
                await settled.wait()
                await end(flow)

            forwarder._end = slow_end  # type: ignore[method-assign]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(forwarder.close(), 0.1)
            settled.set()
            assert local.fileno() == -1  # closed, though the close was cut short
            await asyncio.wait_for(forwarder.close(), 10)  # ends the flows left
            assert forwarder.sessions == 0
        finally:
            client.close()
            loop.remove_reader(backend.fileno())
            backend.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_a_close_cancelled_while_a_flow_awaits_its_final_receipt_closes_the_flow() -> None:
    """A metered flow's end waits for the relay's final totals (up to final_timeout);
    a close() cancelled then still closes the flow's connection. The flow was gone
    from the table, its connection open and its reply task waiting for good."""
    from dtp.ledger._objects import Sla
    from dtp.payments.receipts import Meter

    async def main() -> None:
        identity = HostIdentity.generate()
        client = HostIdentity.generate()
        backend = _udp_socket()
        ended = asyncio.Event()

        async def relay(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            # unbilled: it never answers the forwarder's request for final totals
            try:
                await relay_udp_async(reader, writer, backend.getsockname(), idle_timeout=30)
            finally:
                ended.set()

        server = await dtp.aio.start_server(relay, "127.0.0.1", 0, identity=identity)
        writers: list[dtp.aio.DTPStreamWriter] = []

        async def connect() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            writers.append(writer)
            return reader, writer

        def meter_for(writer: dtp.aio.DTPStreamWriter) -> Meter:
            return Meter(client, scope_of("0x" + "cd" * 32), Sla(1, 1, 0), 10**9)

        forwarder = await AsyncUdpForwarder.start(
            ("127.0.0.1", 0), connect, meter_for=meter_for, final_timeout=30
        )
        source = _udp_socket()
        try:
            source.sendto(b"ping", forwarder.address)
            backend.settimeout(5)
            assert await asyncio.to_thread(backend.recv, 100) == b"ping"  # a live flow
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(forwarder.close(), 0.2)
            assert writers[0].is_closing()
            await asyncio.wait_for(ended.wait(), 5)  # the relay saw its connection end
            await asyncio.wait_for(writers[0].wait_closed(), 5)
            await forwarder.close()
        finally:
            source.close()
            backend.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
