"""An asyncio DTP server on 127.0.0.1 with one connection to it, whose server side the
test drives, for the dtp.aio stream contract tests."""

from __future__ import annotations

import asyncio

import dtp.aio
from dtp.identity.keys import HostIdentity

Pair = tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]


async def served_connection() -> tuple[dtp.aio.DTPServer, Pair, Pair]:
    """A server and one connection to it: the client's pair and the server's."""
    served: asyncio.Queue[Pair] = asyncio.Queue()
    hold = asyncio.Event()

    async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        served.put_nowait((reader, writer))
        await hold.wait()  # (the test drives the server's side)

    identity = HostIdentity.generate()
    server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
    client = await dtp.aio.open_connection(
        "127.0.0.1", server.address[1], server_key=identity.noise_public, timeout=5
    )
    return server, client, await served.get()
