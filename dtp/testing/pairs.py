"""Connected DTP client/server pairs for tests, on both APIs: the client's first stream
and the server's end of it, over a real connection (127.0.0.1, or a host of a simulated
network on its loop).

    with blocking_pair() as (client, server):          # two DTPSockets
        client.sendall(b"ping"); assert server.recv(4) == b"ping"

    async with aio_pair() as ((c_reader, c_writer), (s_reader, s_writer)):
        c_writer.write(b"ping"); assert await s_reader.readexactly(4) == b"ping"
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import dtp.aio
import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.testing.identities import identity as numbered
from dtp.transport.blocking._socket import DTPSocket

__all__ = ["AioEnds", "aio_pair", "blocking_pair"]

#: Seconds a pair waits for its connection (and the server's accept) at most.
TIMEOUT = 30.0

AioEnds = tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]


@contextmanager
def blocking_pair(
    *,
    server_identity: HostIdentity | None = None,
    client_identity: HostIdentity | None = None,
    server_config: ConnectionConfig | None = None,
    client_config: ConnectionConfig | None = None,
    timeout: float = TIMEOUT,
) -> Iterator[tuple[DTPSocket, DTPSocket]]:
    """A blocking pair: ``(client, server)`` sockets of one DTP connection over TCP on
    127.0.0.1 (the server's identity ``identity(1)`` and the client's ``identity(2)``
    unless given: :mod:`dtp.testing.identities`). Both are closed, and the server too,
    when the block ends."""
    server_id = server_identity or numbered(1)
    with dtp.socket.create_server(
        ("127.0.0.1", 0), identity=server_id, config=server_config
    ) as srv:
        srv.settimeout(timeout)
        accepted: list[DTPSocket] = []
        failed: list[BaseException] = []

        def accept() -> None:
            try:
                accepted.append(srv.accept()[0])
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=accept, name="dtp-testing-pair-accept", daemon=True)
        thread.start()
        client = dtp.socket.create_connection(
            srv.address,
            timeout,
            server_key=server_id.noise_public,
            identity=client_identity or (None if client_config else numbered(2)),
            config=client_config,
        )
        thread.join(timeout)
        if failed or not accepted:
            client.close()
            raise failed[0] if failed else TimeoutError("the server accepted nothing")
        server = accepted[0]
        try:
            yield client, server
        finally:
            client.close()
            server.close()


@asynccontextmanager
async def aio_pair(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    server_identity: HostIdentity | None = None,
    client_identity: HostIdentity | None = None,
    server_config: ConnectionConfig | None = None,
    client_config: ConnectionConfig | None = None,
    timeout: float = TIMEOUT,
) -> AsyncIterator[tuple[AioEnds, AioEnds]]:
    """An asyncio pair: ``((client reader, client writer), (server reader, server
    writer))`` of one DTP connection, the server listening on ``host``:``port`` (on a
    simulated network's loop, a host of it: connect from another with ``with
    net.host(...)`` around the block). Closed when the block ends."""
    server_id = server_identity or numbered(1)
    served: asyncio.Future[AioEnds] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        if not served.done():
            served.set_result((reader, writer))
        await done.wait()  # (the server's end lives as long as the block)

    server = await dtp.aio.start_server(
        handle, host, port, identity=server_id, config=server_config
    )
    where = server.sockets[0].getsockname()
    try:
        client = await dtp.aio.open_connection(
            where[0],
            where[1],
            server_key=server_id.noise_public,
            identity=client_identity or (None if client_config else numbered(2)),
            config=client_config,
            timeout=timeout,
        )
        try:
            async with asyncio.timeout(timeout):
                server_end = await served
            yield client, server_end
        finally:
            done.set()
            for writer in (client[1], served.result()[1] if served.done() else None):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
