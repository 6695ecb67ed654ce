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
import collections
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
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dtp.aio
from bench.workload import Workload
from dtp.errors import DTPError
from dtp.identity.keys import HostIdentity

if TYPE_CHECKING:
    from dtp.cli._chromium import Chromium, Page

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


class _PackageHandler(http.server.SimpleHTTPRequestHandler):
    """Serves web/dtp-client, noting each answer in the server's log."""

    server: _PackageServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed:
            self.server.asked(self.path)
        return parsed

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.answered(self.path, f"{code} {self.path}")


class _PackageServer(http.server.ThreadingHTTPServer):
    """The package folder over HTTP, keeping what it answered and what went wrong (a
    page that does not start is reported with it)."""

    def __init__(self, handler: type[_PackageHandler] = _PackageHandler) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(handler, directory=str(PACKAGE)))
        #: each answer ("200 /src/record.js") and each error, in order
        self.log: list[str] = []
        #: the paths asked for and not answered yet
        self.pending: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def asked(self, path: str) -> None:
        with self._lock:
            self.pending[path] += 1

    def answered(self, path: str, line: str) -> None:
        with self._lock:
            self.pending[path] -= 1
            self.log.append(line)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # (kept for the report rather than printed: a browser closed mid-answer is no fault)
        with self._lock:
            self.log.append(f"error answering port {client_address[1]}: {sys.exc_info()[1]!r}")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


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


#: Seconds for the page to start: its libsodium may take up to 15 s before the page
#: goes on without it (web/dtp-client/src/record.js), so well past that.
PAGE_START = 60.0
#: Loads of the page before giving up. Chromium ends every request in flight
#: (net::ERR_NETWORK_CHANGED) when an interface or address of the host comes or goes, as
#: the suite's network-namespace tests make them beside the benchmark bodies: a module
#: of the page lost so fails it, and loading it again fetches it again.
PAGE_TRIES = 5


def open_page(browser: Chromium, server: _PackageServer, timeout: float = PAGE_START) -> Page:
    """A tab with the benchmark page loaded and its modules ready, loaded again where it
    failed (Page.goto); a BrowserError that says what happened where it did not start
    (the page's own error, its failed fetches, what the server answered)."""
    page = browser.new_page()
    since = len(server.log)

    def report() -> str:
        # (each failed load's own answers: the log from the end of the load before)
        nonlocal since
        text = _page_report(page, server, since)
        since = len(server.log)
        return text

    page.goto(
        server.base + PAGE,
        # (the document can still be parsing when the navigation returns: no body yet)
        ready="document.body?.dataset.ready",
        # the page says where a module failed to load or to run
        failed="document.body?.dataset.failed",
        timeout=timeout,
        tries=PAGE_TRIES,
        report=report,
    )
    return page


def _page_report(page: Page, server: _PackageServer, since: int) -> str:
    """What the page and the server saw: the page's address and state, its fetches that
    did not answer 200 and how many it made; every server answer but a 200 from
    ``server.log[since:]`` on, and the requests it has not answered; the end of
    Chromium's own output."""
    from dtp.cli._chromium import BrowserError

    try:
        seen = page.evaluate(
            "({href: location.href, state: document.readyState,"
            " fetched: performance.getEntriesByType('resource').length,"
            " failed: performance.getEntriesByType('resource')"
            ".filter((e) => e.responseStatus !== 200 && !e.name.endsWith('/favicon.ico'))"
            ".map((e) => `${e.responseStatus} ${e.name}`)})"  # (0: no answer it could read)
        )
    except BrowserError as exc:
        seen = {"error": str(exc)}
    # (no icon is served: the browser's request for one is no fault of the page)
    answers = [line for line in server.log[since:] if not line.endswith(" /favicon.ico")]
    others = [line for line in answers if not line.startswith("200 ")]
    waiting = sorted((+server.pending).elements())
    # (its D-Bus complaints, on every start here, left out)
    output = [line for line in page.browser.log_tail(20000).splitlines() if "dbus" not in line]
    return (
        f"the page: {json.dumps(seen)}\n"
        f"the server answered {len(answers) - len(others)} requests with 200; besides: "
        f"{others or 'nothing'}; asked and not answered yet: {waiting or 'nothing'}\n"
        f"chromium's output ends: {output[-10:]}"
    )


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
    httpd = _PackageServer()
    http_thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    http_thread.start()
    base = httpd.base
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
        page = open_page(browser, httpd)
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
