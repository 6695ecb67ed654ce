"""An asyncio server that writes more than the client has read and then closes: its
carrier was closed as soon as it had written everything, the client's flow-control
credit (sent as it read) then hit a closed socket, and the reset threw away what the
client had not read yet -- the end of the data and the CLOSE (ConnectionLost after
about 1.8 of 3 MB, every time). The carrier is now half-closed and read until the
client closes its side. Real connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib

import dtp.aio
from dtp.errors import DTPError
from dtp.identity.keys import HostIdentity

SERVER = HostIdentity.generate()
SIZE = 3_000_000


def test_a_large_write_then_close_reaches_the_client_whole() -> None:
    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        writer.write(b"y" * SIZE)
        writer.close()
        with contextlib.suppress(DTPError):
            await writer.wait_closed()

    async def main() -> list[int]:
        got: list[int] = []
        server = await dtp.aio.start_server(handler, "127.0.0.1", 0, identity=SERVER)
        async with server:
            for _ in range(3):
                reader, writer = await dtp.aio.open_connection(
                    *server.address, server_key=SERVER.noise_public, timeout=10
                )
                n = 0
                while data := await reader.read(65536):
                    n += len(data)
                got.append(n)
                writer.close()
                with contextlib.suppress(DTPError):
                    await writer.wait_closed()
        return got

    assert asyncio.run(asyncio.wait_for(main(), 60)) == [SIZE] * 3
