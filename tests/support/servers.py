"""DTP servers the tests run in a separate OS process.

    python -m tests.support.servers MODE [--api blocking|asyncio] [--deny ADDRESS ...] [--host IP]

Prints one JSON line {"port", "key", "address"} once listening (on 127.0.0.1 unless
--host says where), then serves until killed. Modes:
  echo   echo every byte back on the same stream, on every stream, until EOF
  sink   count bytes until EOF, then reply with the count as ASCII and close
  slow   like echo, but never reads (to test flow control and timeouts)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import dtp.aio
import dtp.socket
from dtp.identity.keys import HostIdentity

#: A blocking server's handler: it gets each connection's socket.
Handler = Callable[[Any], None]


def _deny(deny: list[str]) -> dtp.socket.AcceptHook:
    def hook(address: str) -> str | None:
        return f"{address} is on the deny list" if address in deny else None

    return hook


def _announce(port: int, identity: HostIdentity) -> None:
    print(
        json.dumps(
            {"port": port, "key": identity.noise_public.hex(), "address": identity.sui_address}
        ),
        flush=True,
    )


def blocking_handler(mode: str, *, shut_wr: bool = True, linger: float = 0.2) -> Handler:
    """A blocking server's handler in ``mode`` (see the module docstring), for a
    ``DTPSocket`` or a paid one (tests/paid/servers.py): ``echo`` serves the streams the
    client opens besides the first in threads of their own, ends each echoed stream with
    SHUT_WR when ``shut_wr``, and keeps the connection ``linger`` seconds after the first
    stream ended (the others' echoes still going out); ``sink`` replies with the count
    of the first stream's bytes."""

    def echo_stream(sock: Any) -> None:
        while data := sock.recv(65536):
            sock.sendall(data)
        if shut_wr:
            sock.shutdown(dtp.socket.SHUT_WR)

    def handle(sock: Any) -> None:
        if mode == "slow":
            time.sleep(3600)
        if mode == "sink":
            total = 0
            while data := sock.recv(1 << 20):
                total += len(data)
            sock.sendall(str(total).encode())
            return

        def extra_streams() -> None:
            while True:
                try:
                    stream = sock.accept_stream()
                except Exception:
                    return
                threading.Thread(target=echo_stream, args=(stream,), daemon=True).start()

        threading.Thread(target=extra_streams, daemon=True).start()
        echo_stream(sock)
        if linger:
            time.sleep(linger)

    return handle


def serve_blocking(mode: str, identity: HostIdentity, deny: list[str], host: str) -> None:
    server = dtp.socket.create_server((host, 0), identity=identity, accept=_deny(deny))
    _announce(server.address[1], identity)
    server.serve_forever(blocking_handler(mode))


async def serve_asyncio(mode: str, identity: HostIdentity, deny: list[str], host: str) -> None:
    async def echo(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        if mode == "slow":
            await asyncio.sleep(3600)
        if mode == "sink":
            total = 0
            while data := await reader.read(1 << 20):
                total += len(data)
            writer.write(str(total).encode())
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            return

        tasks: set[asyncio.Future[None]] = set()

        async def extra() -> None:
            while True:
                try:
                    r, w = await writer.accept_stream()
                except Exception:
                    return
                tasks.add(asyncio.ensure_future(echo(r, w)))

        task = asyncio.ensure_future(extra())
        await echo(reader, writer)
        await asyncio.sleep(0.2)
        task.cancel()

    async def hook(address: str) -> str | None:
        return _deny(deny)(address)  # type: ignore[return-value]

    server = await dtp.aio.start_server(handle, host, 0, identity=identity, accept=hook)
    _announce(server.address[1], identity)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["echo", "sink", "slow"])
    parser.add_argument("--api", choices=["blocking", "asyncio"], default="blocking")
    parser.add_argument("--deny", nargs="*", default=[])
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    identity = HostIdentity.generate()
    if args.api == "blocking":
        serve_blocking(args.mode, identity, args.deny, args.host)
    else:
        asyncio.run(serve_asyncio(args.mode, identity, args.deny, args.host))


if __name__ == "__main__":
    sys.exit(main())
