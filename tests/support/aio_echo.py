"""A dtp.aio connection callback that echoes every stream of its connection: the
WebSocket carrier's tests and the JS client's server share it."""

from __future__ import annotations

import asyncio

import dtp.aio
from dtp.errors import DTPError


async def echo_every_stream(
    reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter
) -> None:
    """Echo every stream of the connection (the first and each the client opens) until
    its end, then close it."""

    async def one(r: dtp.aio.DTPStreamReader, w: dtp.aio.DTPStreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    streams = [asyncio.ensure_future(one(reader, writer))]
    try:
        while True:
            r, w = await writer.accept_stream()
            streams.append(asyncio.ensure_future(one(r, w)))
    except DTPError:
        pass
    await asyncio.gather(*streams, return_exceptions=True)
