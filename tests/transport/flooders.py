"""Servers of both APIs that send each connection a flood, then read it to its end
(tests/transport/test_close_while_peer_sends.py, test_reset_under_sendall.py)."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

import dtp.aio
import dtp.socket
from dtp.errors import DTPError
from dtp.identity.keys import HostIdentity
from dtp.testing._loops import LoopThread

SERVER = HostIdentity.generate()
CHUNK = b"x" * 65536
#: what a server sends each connection at most: past the flow-control window, so that it
#: is still sending when its client closes
FLOOD = 12_000_000


def served(got: bytes | BaseException) -> str:
    return repr(got) if isinstance(got, BaseException) else f"{len(got)} bytes"


@contextlib.contextmanager
def blocking_flooder() -> Iterator[tuple[tuple[str, int], queue.Queue[bytes | BaseException]]]:
    """A blocking server whose application sends each connection FLOOD bytes (or until
    the connection ends), then reads it to its end; what it read goes on the queue."""
    results: queue.Queue[bytes | BaseException] = queue.Queue()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)

    def serve() -> None:
        while True:
            try:
                sock, _ = server.accept()
            except (DTPError, OSError):
                return
            with sock:
                with contextlib.suppress(DTPError):
                    for _ in range(FLOOD // len(CHUNK)):
                        sock.sendall(CHUNK)
                got = b""
                try:
                    while chunk := sock.recv(65536):
                        got += chunk
                except DTPError as exc:
                    results.put(exc)
                else:
                    results.put(got)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.address, results
    finally:
        server.close()
        thread.join(10)


@contextlib.contextmanager
def asyncio_flooder() -> Iterator[tuple[tuple[str, int], queue.Queue[bytes | BaseException]]]:
    """The asyncio twin of :func:`blocking_flooder`, on a loop of its own thread."""
    results: queue.Queue[bytes | BaseException] = queue.Queue()

    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        with contextlib.suppress(DTPError):
            for _ in range(FLOOD // len(CHUNK)):
                writer.write(CHUNK)
                await writer.drain()
        try:
            results.put(await reader.read())
        except DTPError as exc:
            results.put(exc)
        writer.close()
        with contextlib.suppress(DTPError):
            await writer.wait_closed()

    loop = LoopThread()
    try:
        server = loop.run(dtp.aio.start_server(handler, "127.0.0.1", 0, identity=SERVER))
        address = server.sockets[0].getsockname()[:2]
        yield address, results

        async def closed() -> None:
            server.close()
            await server.wait_closed()

        loop.run(closed())
    finally:
        loop.close(cancel=True, timeout=30)


FLOODERS = {"blocking": blocking_flooder, "asyncio": asyncio_flooder}
