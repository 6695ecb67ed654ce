"""A closed connection leaves no reference cycle behind, on either side: its objects go
as soon as the last reference does, not at the cyclic collector's next full collection
(which, with many connections open, walks every object of every one of them: see
docs/benchmarks.md, "connections_10k"). Blocking and asyncio, client and server in this
process, with the collector off while they run."""

from __future__ import annotations

import asyncio
import threading

import dtp.aio
import dtp.socket
from dtp.identity.keys import HostIdentity
from tests.support.cycles import cyclic_garbage, describe
from tests.support.polling import wait_for

SERVER_ID = HostIdentity.generate()
CONNECTIONS = 20


def _echo(sock: dtp.socket.DTPSocket) -> None:
    with sock:
        while data := sock.recv(65536):
            sock.sendall(data)


def _connect_blocking(address: tuple[str, int]) -> None:
    with dtp.socket.create_connection(
        address, timeout=30, server_key=SERVER_ID.noise_public
    ) as client:
        client.sendall(b"x" * 100)
        got = b""
        while len(got) < 100:
            got += client.recv(100 - len(got))
        assert got == b"x" * 100


def test_closed_blocking_connections_leave_no_cycle() -> None:
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_ID)
    serving = threading.Thread(target=server.serve_forever, args=(_echo,), daemon=True)
    serving.start()
    try:
        for _ in range(5):  # warm up: the timer thread, lazy imports, the first keys
            _connect_blocking(server.address)
        threads = threading.active_count()
        assert wait_for(lambda: threading.active_count() <= threads, timeout=30)

        with cyclic_garbage() as garbage:
            for _ in range(CONNECTIONS):
                _connect_blocking(server.address)
            # each server side is done once its connection thread has ended
            assert wait_for(lambda: threading.active_count() <= threads, timeout=30)
        assert garbage == [], describe(garbage)
    finally:
        server.close()
        serving.join(30)


async def _settled(baseline: int) -> None:
    """Until only ``baseline`` tasks are left, and the callbacks they scheduled ran."""
    for _ in range(3000):
        if len(asyncio.all_tasks()) <= baseline:
            break
        await asyncio.sleep(0.01)
    for _ in range(5):
        await asyncio.sleep(0.01)


def test_closed_asyncio_connections_leave_no_cycle_of_ours() -> None:
    async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def one(port: int) -> None:
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", port, server_key=SERVER_ID.noise_public, timeout=30
        )
        writer.write(b"x" * 100)
        await writer.drain()
        assert await reader.readexactly(100) == b"x" * 100
        writer.close()
        await writer.wait_closed()

    async def main() -> list[object]:
        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=SERVER_ID)
        try:
            port = server.address[1]
            for _ in range(5):
                await one(port)
            baseline = len(asyncio.all_tasks())
            await _settled(baseline)
            with cyclic_garbage(asyncio_transports=True) as garbage:
                for _ in range(CONNECTIONS):
                    await one(port)
                await _settled(baseline)
            return garbage
        finally:
            server.close()
            await server.wait_closed()

    garbage = asyncio.run(main())
    assert garbage == [], describe(garbage)
