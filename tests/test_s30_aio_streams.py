"""An asyncio connection carrying many short streams keeps no buffer per stream once
they are closed (the blocking API's Session.forget; the asyncio writer's close() only
discarded what was buffered, and each stream's buffer stayed for the connection's life:
the daemon's tunnels, a stream each, on connections that live for days). Real
connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
from typing import Any

import dtp.aio
from dtp.keys import HostIdentity

SERVER = HostIdentity.generate()
STREAMS = 200


def test_closed_streams_leave_no_buffers_behind() -> None:
    sessions: list[Any] = []

    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        sessions.append(writer._session)
        for _ in range(STREAMS):
            r, w = await writer.accept_stream()
            w.write(await r.read())
            await w.drain()
            w.close()
        await reader.read()
        writer.close()

    async def main() -> tuple[int, int]:
        server = await dtp.aio.start_server(handler, "127.0.0.1", 0, identity=SERVER)
        try:
            host, port = server.sockets[0].getsockname()[:2]
            _reader, writer = await dtp.aio.open_connection(
                host, port, server_key=SERVER.noise_public
            )
            for _ in range(STREAMS):
                r, w = await writer.open_stream()
                w.write(b"x" * 100)
                w.write_eof()
                assert await r.read() == b"x" * 100
                w.close()
            await asyncio.sleep(0.2)  # (the server's last closes)
            client = len(writer._session.streams)
            writer.close()
            await writer.wait_closed()
            return client, len(sessions[0].streams)
        finally:
            server.close()
            await server.wait_closed()

    client, served = asyncio.run(asyncio.wait_for(main(), 60))
    # (the first stream, and the few the connection is not done with yet)
    assert client <= 4, client
    assert served <= 4, served
