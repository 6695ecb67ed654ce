"""Processes of the tunnel benchmark rows (bench/tunnel_rows.py):

    python bench/tunnelpeers.py sink|http                      the TCP backends
    python bench/tunnelpeers.py relay-back TARGET_PORT         TLS in, plain TCP out
    python bench/tunnelpeers.py relay-front TARGET_PORT CERT   plain TCP in, TLS out

Each prints one JSON line {"port"} once listening. ``sink`` reads an 8-byte length and
that many bytes, then answers the count; ``http`` answers every HTTP/1.1 request with a
small keep-alive response. The relay pair is the peer of the DTP tunnel: a client-side
relay that wraps each TCP connection in TLS 1.3 and a server-side relay that terminates
it in front of the backend, both asyncio streams, as one would write them in Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.netpeers import client_tls_context, make_tls_context

CHUNK = 256 * 1024
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 28\r\n\r\n"
    b'{"jsonrpc":"2.0","result":1}'
)


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _listen(handler: object, ssl_ctx: ssl.SSLContext | None = None) -> None:
    server = await asyncio.start_server(
        handler,  # type: ignore[arg-type]
        "127.0.0.1",
        0,
        ssl=ssl_ctx,
        limit=1 << 20,
        backlog=512,
    )
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await server.serve_forever()


async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        expected = int.from_bytes(await reader.readexactly(8), "big")
        total = 0
        while total < expected:
            data = await reader.read(min(CHUNK * 4, expected - total))
            if not data:
                break
            total += len(data)
        writer.write(str(total).encode())
        await writer.drain()
        await reader.read()
    writer.close()


async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    _nodelay(writer)
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            writer.write(_RESPONSE)
            await writer.drain()
    writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    port: int,
    tls: ssl.SSLContext | None,
) -> None:
    _nodelay(writer)
    try:
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=tls,
            server_hostname="localhost" if tls else None,
            limit=1 << 20,
        )
    except OSError:
        writer.close()
        return
    _nodelay(up_writer)
    await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
    for w in (writer, up_writer):
        w.close()


def main() -> None:
    kind = sys.argv[1]
    if kind == "sink":
        asyncio.run(_listen(sink))
    elif kind == "http":
        asyncio.run(_listen(http))
    elif kind == "relay-back":
        server_ctx, cert = make_tls_context()
        port = int(sys.argv[2])

        async def back(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await _relay(r, w, port, None)

        print(json.dumps({"cert": cert}), flush=True)
        asyncio.run(_listen(back, server_ctx))
    elif kind == "relay-front":
        port, cert = int(sys.argv[2]), sys.argv[3]
        client_ctx = client_tls_context(cert)

        async def front(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await _relay(r, w, port, client_ctx)

        asyncio.run(_listen(front))
    else:
        raise SystemExit(f"unknown kind {kind}")


if __name__ == "__main__":
    main()
