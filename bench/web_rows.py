"""The web frontend's row of bench/compare.py (docs/web-frontend.md):

- ``ws_rpc_roundtrip``: JSON-RPC calls per second from a headless browser (Debian's
  ``chromium``, driven over DevTools) through DTP over WebSocket, against the same calls
  over a plain ``wss://`` JSON-RPC endpoint, in the same run (bar 0.8, the issue's: what a
  frontend gives up for end-to-end encryption to the service, its wallet's identity and
  per-request billing). The page (``web/dtp-client/bench/rpc.html``) makes the calls one
  after another with the package's client: through DTP, one stream a call as the dApp
  page makes them (open, request, FIN, the whole answer) on a ``dtp.aio`` server's
  WebSocket carrier (``ws://``: the records are encrypted end to end already); plain, one
  text message a call on a ``websockets`` server with TLS (a throwaway self-signed
  certificate, which this browser alone is told to accept:
  ``--ignore-certificate-errors``). Both send the same request bytes and both servers
  answer with the same backend, on one event loop in a thread of this process.

``python bench/web_rows.py [--calls N] [--rounds N]`` prints both rates and where each
side's CPU goes per call: this process (the servers) and the browser's processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dtp.aio
from bench.workload import Workload
from dtp.errors import DTPError
from dtp.identity.keys import HostIdentity

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "web" / "dtp-client"
PAGE = "/bench/rpc.html"
#: The browser's test wallet (an Ed25519 seed): the DTP client's identity.
SEED = bytes(range(32))
#: Only this bench's browser: the plain endpoint's certificate is a throwaway one.
BROWSER_FLAGS = ["--ignore-certificate-errors"]


def _answer(body: bytes | str) -> bytes:
    request = json.loads(body)
    return json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": request["params"]}).encode()


async def _dtp_service(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
    """One JSON-RPC call a stream, each in a task of its own (serve_streams); the first
    stream lives as long as the connection."""

    async def call(r: dtp.aio.DTPStreamReader, w: dtp.aio.DTPStreamWriter) -> None:
        # the answer and the stream's end in one frame (one record, one message)
        w.write_eof(_answer(await r.read()))
        await w.drain()
        w.close()

    async def first(r: dtp.aio.DTPStreamReader, w: dtp.aio.DTPStreamWriter) -> None:
        with contextlib.suppress(DTPError):
            while await r.read(4096):
                pass
        w.close()

    await asyncio.gather(first(reader, writer), writer.serve_streams(call))


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


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def missing() -> str | None:
    """Why the row cannot run here (chromium, or the client's npm packages), or None."""
    from dtp.cli._chromium import chromium_path

    if chromium_path() is None:
        return "ws_rpc_roundtrip needs chromium (apt-get install -y chromium)"
    modules = PACKAGE / "node_modules"
    # (libsodium-wrappers too: without it the page seals records with @noble/ciphers)
    if not ((modules / "@noble" / "curves").is_dir() and (modules / "libsodium-wrappers").is_dir()):
        try:
            subprocess.run(
                ["sh", str(PACKAGE / "scripts" / "install.sh")],
                check=True,
                timeout=600,
                stdout=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"ws_rpc_roundtrip needs web/dtp-client's npm packages, not installed: {exc}"
    return None


def _group_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the processes in ``pid``'s process group so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pid:  # (fields[2] is pgrp: the 5th field of stat)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def ws_rpc_roundtrip(calls: int = 200) -> Workload:
    why = missing()
    if why is not None:
        raise RuntimeError(why)
    from websockets.asyncio.server import serve as ws_serve

    from bench.netpeers import make_tls_context
    from dtp.cli._chromium import Chromium

    runner = _Loop()
    server_identity = HostIdentity.generate()
    state: dict[str, Any] = {}
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(PACKAGE))
    )
    http_thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    http_thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    browser: Chromium | None = None

    async def start() -> None:
        server = await dtp.aio.start_server(
            _dtp_service,
            None,
            None,
            identity=server_identity,
            websocket=("127.0.0.1", 0),
            origins=[base],
        )
        tls, _ = make_tls_context()
        plain = await ws_serve(_ws_service, "127.0.0.1", 0, ssl=tls, compression=None)
        state.update(server=server, plain=plain)

    def close() -> None:
        async def stop() -> None:
            if "plain" in state:
                state["plain"].close()
                await state["plain"].wait_closed()
            if "server" in state:
                state["server"].close()
                await state["server"].wait_closed()

        try:
            if browser is not None:
                browser.close()
            runner.run(stop())
        finally:
            runner.stop()
            httpd.shutdown()
            httpd.server_close()
            http_thread.join(10)

    try:
        runner.run(start())
        browser = Chromium(flags=BROWSER_FLAGS)
        page = browser.new_page()
        page.goto(base + PAGE)
        page.wait_for("document.body.dataset.ready")
        host, port = state["server"].websocket_addresses[0]
        address = page.evaluate(
            f"rpcBench.openDtp('ws://{host}:{port}/dtp', "
            f"'{server_identity.noise_public.hex()}', '{SEED.hex()}')"
        )
        wss_port = state["plain"].sockets[0].getsockname()[1]
        # (libsodium, or @noble/ciphers where the page could not load it: web/dtp-client)
        aead = page.evaluate("import('/src/record.js').then((m) => m.RECORD_AEAD.name)")
        page.evaluate(f"rpcBench.openPlain('wss://127.0.0.1:{wss_port}/')")
    except BaseException:
        close()
        raise
    state["address"] = address

    def side(method: str) -> Callable[[], None]:
        # (the page's own figure is in milliseconds: a failed check raises in the page,
        # and Page.evaluate raises it here)
        return lambda: page.evaluate(f"rpcBench.{method}({calls})")

    workload = Workload(
        name="ws_rpc_roundtrip",
        unit="calls/s",
        units=calls,
        ours=side("dtpCalls"),
        peer=side("plainCalls"),
        bar=0.8,
        note=(
            "headless Chromium: DTP over WebSocket (stream a call) vs JSON-RPC over wss://"
            f" (the page's records: {aead})"
        ),
        close=close,
    )
    workload.browser_pid = browser.process.pid  # type: ignore[attr-defined]
    return workload


WEB_ROWS: dict[str, Callable[..., Workload]] = {"ws_rpc_roundtrip": ws_rpc_roundtrip}


@contextmanager
def _cpu(into: dict[str, float], browser_pid: int) -> Iterator[None]:
    wall, ours, theirs = time.perf_counter(), time.process_time(), _group_cpu(browser_pid)
    yield
    into["wall"] = time.perf_counter() - wall
    into["python"] = time.process_time() - ours
    into["browser"] = _group_cpu(browser_pid) - theirs


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="ws_rpc_roundtrip, with CPU per call")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    w = ws_rpc_roundtrip(args.calls)
    pid: int = w.browser_pid  # type: ignore[attr-defined]
    try:
        assert w.peer is not None
        w.ours()
        w.peer()  # (warm up)
        for _ in range(args.rounds):
            for name, op in (("dtp", w.ours), ("wss", w.peer)):
                got: dict[str, float] = {}
                with _cpu(got, pid):
                    op()
                per = {k: v / args.calls * 1e6 for k, v in got.items()}
                print(
                    f"{name}: {args.calls / got['wall']:8.0f} calls/s  per call: "
                    f"wall {per['wall']:6.1f} µs, python (servers) {per['python']:6.1f} µs, "
                    f"browser {per['browser']:6.1f} µs",
                    flush=True,
                )
    finally:
        if w.close is not None:
            w.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
