"""The web frontend's row of bench/compare.py (docs/web-frontend.md):

- ``ws_rpc_roundtrip``: sequential JSON-RPC calls over DTP on the WebSocket carrier
  (``dtp.aio`` client, one stream a call, as the dApp demo's page makes them: open,
  request, end, whole answer) against the same calls as plain JSON-RPC text messages on
  a ``websockets`` connection; both servers answer with the same backend, both sides
  run on one event loop in a thread of this process, on 127.0.0.1 (bar 0.8, the issue's:
  what a frontend gives up for end-to-end encryption, its wallet's identity and
  billing).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dtp.aio
from bench.workload import Workload
from dtp.errors import DTPError
from dtp.identity.keys import HostIdentity

REQUEST = {"jsonrpc": "2.0", "method": "echo", "params": ["x" * 64]}


def _answer(body: bytes | str) -> bytes:
    request = json.loads(body)
    return json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": request["params"]}).encode()


async def _dtp_service(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
    """One JSON-RPC call a stream; the first stream lives as long as the connection."""

    async def call(r: dtp.aio.DTPStreamReader, w: dtp.aio.DTPStreamWriter) -> None:
        w.write(_answer(await r.read()))
        await w.drain()
        w.close()

    async def first(r: dtp.aio.DTPStreamReader, w: dtp.aio.DTPStreamWriter) -> None:
        while await r.read(4096):
            pass
        w.close()

    tasks = [asyncio.ensure_future(first(reader, writer))]
    try:
        while True:
            tasks.append(asyncio.ensure_future(call(*await writer.accept_stream())))
    except DTPError:
        pass
    await asyncio.gather(*tasks, return_exceptions=True)


async def _ws_service(websocket: Any) -> None:
    async for message in websocket:
        await websocket.send(_answer(message).decode())


class _Loop:
    """An event loop in a thread; ``run(coro)`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def ws_rpc_roundtrip(calls: int = 200) -> Workload:
    from websockets.asyncio.client import connect as ws_connect
    from websockets.asyncio.server import serve as ws_serve

    runner = _Loop()
    server_identity, client_identity = HostIdentity.generate(), HostIdentity.generate()
    state: dict[str, Any] = {}

    async def start() -> None:
        server = await dtp.aio.start_server(
            _dtp_service, None, None, identity=server_identity, websocket=("127.0.0.1", 0)
        )
        host, port = server.websocket_addresses[0]
        _, writer = await dtp.aio.open_connection(
            f"ws://{host}:{port}/dtp",
            server_key=server_identity.noise_public,
            identity=client_identity,
            timeout=30,
        )
        plain = await ws_serve(_ws_service, "127.0.0.1", 0)
        ws_port = plain.sockets[0].getsockname()[1]
        state.update(
            server=server,
            writer=writer,
            plain=plain,
            ws=await ws_connect(f"ws://127.0.0.1:{ws_port}", compression=None),
            next_id=0,
        )

    runner.run(start())

    def request() -> bytes:
        state["next_id"] += 1
        return json.dumps({**REQUEST, "id": state["next_id"]}).encode()

    async def ours_calls() -> None:
        writer: dtp.aio.DTPStreamWriter = state["writer"]
        for _ in range(calls):
            r, w = await writer.open_stream()
            w.write(request())
            w.write_eof()
            answer = json.loads(await r.read())
            assert answer["result"] == REQUEST["params"], answer
            w.close()

    async def peer_calls() -> None:
        ws = state["ws"]
        for _ in range(calls):
            await ws.send(request().decode())
            answer = json.loads(await ws.recv())
            assert answer["result"] == REQUEST["params"], answer

    def side(calls_of: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        return lambda: runner.run(calls_of())

    def close() -> None:
        async def stop() -> None:
            writer: dtp.aio.DTPStreamWriter = state["writer"]
            writer.close()
            await state["ws"].close()
            state["plain"].close()
            await state["plain"].wait_closed()
            state["server"].close()
            await state["server"].wait_closed()

        try:
            runner.run(stop())
        finally:
            runner.stop()

    return Workload(
        name="ws_rpc_roundtrip",
        unit="calls/s",
        units=calls,
        ours=side(ours_calls),
        peer=side(peer_calls),
        bar=0.8,
        note="DTP over WebSocket (stream a call) vs plain JSON-RPC over websockets",
        close=close,
    )


WEB_ROWS: dict[str, Callable[..., Workload]] = {"ws_rpc_roundtrip": ws_rpc_roundtrip}
