"""AsyncRpcClient.notify keeps the client's timeout against a peer that does not read,
as the blocking client's notify does."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from dtp.messaging import errors as E
from dtp.messaging.rpc import AsyncRpcClient


def test_async_notify_keeps_the_clients_timeout() -> None:
    """It waited for the peer's reads for good (the writer's drain) whatever the
    client's timeout."""

    async def main() -> float:
        hold = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await hold.wait()  # never reads
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = AsyncRpcClient(reader, writer, timeout=0.3, max_message_size=64 << 20)
        try:
            started = time.monotonic()
            with pytest.raises(E.RpcTimeout):
                await asyncio.wait_for(client.notify("n", b"x" * (16 << 20)), 5)
            return time.monotonic() - started
        finally:
            hold.set()
            await client.close()
            writer.close()
            with contextlib.suppress(OSError):  # (reset: the server closed, not reading)
                await writer.wait_closed()
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) < 2.0
