"""The collaborative-text row of bench/compare.py.

``collab_text_sync``: two peers, each in its own process, type 5,000 single-character
edits each into one shared text at once, as fast as they can; the figure is edits per
second, from the first edit (either peer's) to the moment both peers hold the same
10,000-character text. *Ours*: dtp's collaborative values (``graph.text``) on a graph
per process, the second syncing live with the first over DTP (``GraphServer`` /
``connect``). *Peer*: ``pycrdt`` documents synced by ``pycrdt-websocket`` over a plain
WebSocket (``websockets``), its server in the first process. Same machine, same run,
measured once a round (``measured``); bar 1.0.

Each side runs ``python -m bench.collab_rows <side> <role> ...``, which prints a ready
line, waits for ``go`` on stdin, types, and prints ``{"first": t, "done": t, "text":
sha256}`` (wall-clock seconds: the two processes share the machine's clock).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.workload import Workload

ROOT = Path(__file__).resolve().parent.parent
EDITS = 5000
"""Edits each peer makes."""
SOUL, FIELD = "bench/doc", "body"


def _letter(role: str, i: int) -> str:
    return ("ab" if role == "a" else "xy")[i % 2]


def _report(first: float, text: str) -> None:
    print(
        json.dumps(
            {"first": first, "done": time.time(), "text": hashlib.sha256(text.encode()).hexdigest()}
        ),
        flush=True,
    )


# -- ours: dtp ------------------------------------------------------------------------


def dtp_side(role: str, port: int | None, key: str | None, edits: int) -> None:
    import threading

    from dtp.graph import Graph, GraphServer, connect
    from dtp.identity.keys import HostIdentity

    graph = Graph(None)
    server = None
    if role == "a":
        server = GraphServer(graph, ("127.0.0.1", 0), HostIdentity.generate())
        print(
            json.dumps({"port": server.address[1], "key": server.noise_public_key.hex()}),
            flush=True,
        )
    else:
        assert port is not None and key is not None
        threading.Thread(
            target=connect,
            args=(graph, ("127.0.0.1", port)),
            kwargs={"server_key": bytes.fromhex(key), "until_synced": False},
            daemon=True,
        ).start()
        print(json.dumps({"ready": True}), flush=True)
    text = graph.text(SOUL, FIELD)
    sys.stdin.readline()  # go
    first = time.time()
    for i in range(edits):
        text.insert(len(text), _letter(role, i))
    while len(text) < 2 * edits:
        time.sleep(0.001)
    _report(first, text.value)
    sys.stdin.readline()  # the other side is done too
    if server is not None:
        server.close()
    graph.close()


# -- the peer: pycrdt-websocket -----------------------------------------------------


def ws_side(role: str, port: int | None, edits: int) -> None:
    import anyio
    from pycrdt import Channel, Doc, Provider, Text
    from pycrdt.websocket import WebsocketServer
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    class Socket(Channel):
        """A ``websockets`` connection as pycrdt's Channel."""

        def __init__(self, ws: Any, path: str) -> None:
            self._ws = ws
            self._path = path

        @property
        def path(self) -> str:
            return self._path

        async def __anext__(self) -> bytes:
            try:
                return await self.recv()
            except Exception:
                raise StopAsyncIteration() from None

        async def send(self, message: bytes) -> None:
            await self._ws.send(message)

        async def recv(self) -> bytes:
            return bytes(await self._ws.recv())

    async def main() -> None:
        nonlocal port
        async with anyio.create_task_group() as tg:
            if role == "s":
                rooms = WebsocketServer()
                await tg.start(rooms.start)

                async def handle(ws: Any) -> None:
                    await rooms.serve(Socket(ws, ws.request.path))

                listener = await serve(handle, "127.0.0.1", 0, max_size=None, compression=None)
                port = next(iter(listener.sockets)).getsockname()[1]
                print(json.dumps({"port": port}), flush=True)
                await anyio.to_thread.run_sync(sys.stdin.read)  # until stdin ends
                listener.close()
                tg.cancel_scope.cancel()
                return
            else:
                print(json.dumps({"ready": True}), flush=True)
            doc = Doc()
            text = doc.get("text", type=Text)
            async with (
                connect(f"ws://127.0.0.1:{port}/bench", max_size=None, compression=None) as ws,
                Provider(doc, Socket(ws, "/bench")) as provider,
            ):
                await provider.synced.wait()
                await anyio.to_thread.run_sync(sys.stdin.readline)  # go
                first = time.time()
                for i in range(edits):
                    text.insert(len(str(text)), _letter(role, i))
                    await anyio.sleep(0)  # a keystroke's turn: the provider sends it
                while len(str(text)) < 2 * edits:
                    await anyio.sleep(0.001)
                _report(first, str(text))
                await anyio.to_thread.run_sync(sys.stdin.readline)
            tg.cancel_scope.cancel()

    anyio.run(main)


# -- the row --------------------------------------------------------------------------


def _spawn(side: str, role: str, *args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "bench.collab_rows", side, role, *map(str, args)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _line(proc: subprocess.Popen[str], timeout: float = 120.0) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a collab_text_sync process ended early ({proc.args})")
    return json.loads(line)  # type: ignore[no-any-return]


def run_pair(side: str, edits: int = EDITS) -> dict[str, float]:
    """One run of a side: two processes typing ``edits`` each; the rate (edits/s, both
    peers' together), the seconds from the first edit to convergence."""
    server = _spawn(side, "s", 0, "-", edits) if side == "ws" else None
    a: subprocess.Popen[str] | None = None
    b: subprocess.Popen[str] | None = None
    try:
        if server is not None:  # pycrdt-websocket's server: a process of its own
            ready = _line(server)
            a = _spawn(side, "b", ready["port"], "-", edits)
            _line(a)
        else:  # dtp: the first editor serves the second
            a = _spawn(side, "a", 0, "-", edits)
            ready = _line(a)
        b = _spawn(side, "b", ready["port"], ready.get("key", "-"), edits)
        _line(b)
        time.sleep(0.5)  # (the second peer's session up)
        assert a is not None
        for proc in (a, b):
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        done = [_line(a), _line(b)]
        if done[0]["text"] != done[1]["text"]:
            raise RuntimeError(f"{side}: the two peers ended with different texts")
        for proc in (a, b):
            assert proc.stdin is not None
            proc.stdin.write("end\n")
            proc.stdin.close()
        for proc in (a, b):
            proc.wait(60)
        seconds = max(d["done"] for d in done) - min(d["first"] for d in done)
        return {"rate": 2 * edits / seconds, "seconds": seconds}
    finally:
        if server is not None and server.stdin is not None:
            server.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(30)
        for proc in (a, b, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()


def collab_text_sync(edits: int = EDITS) -> Workload:
    return Workload(
        "collab_text_sync",
        "edits/s",
        2 * edits,
        lambda: run_pair("dtp", edits)["rate"],
        peer=lambda: run_pair("ws", edits)["rate"],
        measured=True,
        bar=1.0,
        note="two processes type 5,000 characters each into one text at once, until both "
        "hold the same 10,000: dtp's collaborative text synced over DTP; peer = pycrdt "
        "documents synced by pycrdt-websocket over a plain WebSocket",
        rounds=3,
    )


def main(argv: list[str]) -> None:
    side, role, port, key, edits = argv
    if side == "dtp":
        dtp_side(role, int(port) or None, None if key == "-" else key, int(edits))
    elif side == "ws":
        ws_side(role, int(port) or None, int(edits))
    else:
        raise SystemExit(f"unknown side {side!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
