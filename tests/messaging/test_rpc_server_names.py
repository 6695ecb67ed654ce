"""The RPC servers' old entry points (docs/messaging.md §2): ``RpcServer.serve(server)``
is ``serve_forever`` and ``AsyncRpcServer.serve(reader, writer)`` is ``serve_stream``,
each still serving as before with a DeprecationWarning until 0.3.0."""

from __future__ import annotations

import asyncio
import threading

import pytest

import dtp.aio
import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, RpcClient, RpcServer


def test_the_blocking_servers_serve_warns_and_accepts_connections() -> None:
    rpc = RpcServer()
    rpc.register("echo", lambda p: p)
    with dtp.socket.create_server(("127.0.0.1", 0), identity=HostIdentity.generate()) as srv:
        thread = threading.Thread(target=rpc.serve, args=(srv,), daemon=True)
        with pytest.warns(DeprecationWarning, match="serve_forever"):
            thread.start()
            with dtp.socket.create_connection(
                srv.address, 30, server_key=srv.noise_public_key
            ) as sock:
                client = RpcClient(sock, timeout=30)
                assert client.call("echo", "old name") == "old name"
                client.close()
        rpc.close()
        thread.join(5)
    assert not thread.is_alive()


def test_the_asyncio_servers_serve_warns_and_serves_a_stream() -> None:
    async def main() -> None:
        rpc = AsyncRpcServer()
        rpc.register("echo", lambda p: p)
        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(rpc.serve, "127.0.0.1", 0, identity=identity)
        try:
            host, port = server.address
            reader, writer = await dtp.aio.open_connection(
                host, port, server_key=identity.noise_public
            )
            async with AsyncRpcClient(reader, writer, timeout=30) as client:
                assert await client.call("echo", "old name") == "old name"
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    with pytest.warns(DeprecationWarning, match="serve_stream"):
        asyncio.run(main())
