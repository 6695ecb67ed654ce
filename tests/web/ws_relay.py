"""A WebSocket relay for a DTP server that cannot listen (a page, or node standing in for
one: web/dtp-client/src/relay.js): the server keeps a WebSocket open to
``/listen/<name>``; a client connecting to ``/<name>`` is paired with the oldest such one
and every binary message is copied, unchanged, to the other side until either closes
(its close code is passed on). Both sides agree to the ``dtp.v1`` subprotocol, so each
end runs the WebSocket carrier of docs/protocol.md §13 as against a DTP server; the
records are end to end, the relay sees only what a TCP middlebox would.

A client that finds no server listening waits up to ``wait`` seconds, then is closed
with 1013 (try again later). This is the tests' relay (tests/web/test_js_server.py);
docs/web-frontend.md says what a deployed one adds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

SUBPROTOCOL = Subprotocol("dtp.v1")
MAX_MESSAGE = 16412  # docs/protocol.md §13


class Relay:
    def __init__(self, wait: float = 5.0) -> None:
        self.wait = wait
        self.listening: dict[str, collections.deque[ServerConnection]] = collections.defaultdict(
            collections.deque
        )
        self.arrived: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)
        self.paired = 0
        self.server: Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve; returns the relay's base URL (``ws://host:port``)."""
        self.server = await serve(
            self._handle,
            host,
            port,
            subprotocols=[SUBPROTOCOL],
            max_size=MAX_MESSAGE,
            compression=None,
        )
        sock_host, sock_port = self.server.sockets[0].getsockname()[:2]
        return f"ws://{sock_host}:{sock_port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        if path.startswith("/listen/"):
            name = path[len("/listen/") :]
            self.listening[name].append(ws)
            self.arrived[name].set()
            # held open until a client is paired with it (the pairing task then owns it)
            await ws.wait_closed()
            with contextlib.suppress(ValueError):
                self.listening[name].remove(ws)
            return
        name = path.lstrip("/")
        server = await self._wait_for_listener(name)
        if server is None:
            await ws.close(1013, "no server is listening")
            return
        self.paired += 1
        await asyncio.gather(_pipe(ws, server), _pipe(server, ws))

    async def _wait_for_listener(self, name: str) -> ServerConnection | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while True:
            queue = self.listening[name]
            while queue:
                server = queue.popleft()
                if server.state.name == "OPEN":
                    return server
            event = self.arrived[name]
            event.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)


async def _pipe(source: ServerConnection, sink: ServerConnection) -> None:
    """Copies ``source``'s messages to ``sink``; on ``source``'s close, closes ``sink``
    with the same code."""
    try:
        async for message in source:
            await sink.send(message)
    except ConnectionClosed:
        pass
    code = source.close_code if source.close_code is not None else 1000
    if code in (1005, 1006):
        code = 1000
    with contextlib.suppress(ConnectionClosed):
        await sink.close(code, source.close_reason or "")
