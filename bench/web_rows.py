"""The web frontend's rows of bench/compare.py (docs/web-frontend.md):

- ``ws_rpc_roundtrip``: JSON-RPC calls per second from a headless browser (Debian's
  ``chromium``, driven over DevTools) through DTP over WebSocket, against the same calls
  over a plain ``wss://`` JSON-RPC endpoint, in the same run (bar 0.9: what a frontend
  gives up for end-to-end encryption to the service and its wallet's identity). The
  page (``web/dtp-client/bench/rpc.html``) makes the calls one after another with the
  package's client: through DTP, one stream a call as the dApp page makes them (open,
  request, FIN, the whole answer) on a ``dtp.aio`` server's WebSocket carrier (``ws://``:
  the records are encrypted end to end already); plain, one text message a call on a
  ``websockets`` server with TLS (a throwaway self-signed certificate, which this
  browser alone is told to accept: ``--ignore-certificate-errors``). Both send the same
  request bytes and both servers answer with the same backend, on one event loop in a
  thread of this process.
- ``ws_rpc_paid_roundtrip``: the same, each DTP call paid at 25 MIST (bar 0.6): a paid
  ``dtp.aio.serve`` server on a LocalLedger file, the page's ``Payment`` signing its
  receipts as docs/web-frontend.md advises (one every 20 calls here), the provider's
  claim at the end exactly the calls' price.

``python bench/web_rows.py [--row NAME] [--calls N] [--rounds N] [--every-amount MIST]``
prints both rates and where each side's CPU goes per call: this process (the servers)
and the browser's processes.
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
from dtp.ledger._objects import Sla

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


def _group_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the processes in ``pid``'s process group, by
    Chromium's kind of process (``renderer``, ``network``, ``gpu-process``, ``browser``
    for the one without a ``--type``: its command line says which)."""
    tick = os.sysconf("SC_CLK_TCK")
    total: collections.Counter[str] = collections.Counter()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pid:  # (fields[2] is pgrp: the 5th field of stat)
                continue
            # (Chromium's children rewrite their command line as one string: split on both)
            args = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").split()
        except OSError:
            continue
        total[_kind(args)] += (int(fields[11]) + int(fields[12])) / tick
    return dict(total)


def _kind(args: list[bytes]) -> str:
    kind = "browser"
    for arg in args:
        if arg.startswith(b"--type="):
            kind = arg[7:].decode()
        elif arg.startswith(b"--utility-sub-type=network."):
            return "network"
    return kind


class _Bench:
    """What both rows start: the servers' event loop, the package over HTTP, the plain
    ``wss://`` echo on the loop and, once :meth:`browse` runs, a headless Chromium with
    the bench page; :meth:`close` stops them all (and ``stop``, the row's own servers,
    first)."""

    def __init__(self) -> None:
        why = missing()
        if why is not None:
            raise RuntimeError(why)
        self.runner = _Loop()
        self.httpd = _PackageServer()
        self._http_thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._http_thread.start()
        self.base = self.httpd.base
        self.browser: Chromium | None = None
        self.plain: Any = None
        #: the row's DTP server (:meth:`open`), closed by :meth:`close`
        self.server: Any = None
        #: what else the row stops, after the server
        self.stop: Callable[[], Awaitable[None]] | None = None

    def open(
        self,
        start: Callable[[], Awaitable[Any]],
        connect: Callable[[Any], str],
        close: Callable[[], None],
    ) -> tuple[Page, Any]:
        """Start the row's DTP server (``start()`` on the loop), the plain echo and the
        page, then have the page connect (``connect(server)``: the JavaScript it runs)
        and open the plain WebSocket: (the page, the server). Anything that fails part
        way runs ``close`` (which stops what started) first."""
        try:
            self.server = self.runner.run(start())
            self.start_plain()
            page = self.browse()
            page.evaluate(connect(self.server))
            self.open_plain(page)
        except BaseException:
            close()
            raise
        return page, self.server

    def start_plain(self) -> None:
        from websockets.asyncio.server import serve as ws_serve

        from bench.netpeers import make_tls_context

        async def start() -> Any:
            tls, _ = make_tls_context()
            return await ws_serve(_ws_service, "127.0.0.1", 0, ssl=tls, compression=None)

        self.plain = self.runner.run(start())

    def browse(self) -> Page:
        from dtp.cli._chromium import Chromium

        self.browser = Chromium(flags=BROWSER_FLAGS)
        return open_page(self.browser, self.httpd)

    def open_plain(self, page: Page) -> None:
        wss_port = self.plain.sockets[0].getsockname()[1]
        page.evaluate(f"rpcBench.openPlain('wss://127.0.0.1:{wss_port}/')")

    def close(self) -> None:
        async def stop() -> None:
            if self.plain is not None:
                self.plain.close()
                await self.plain.wait_closed()
            if self.server is not None:
                self.server.close()
                await self.server.wait_closed()
            if self.stop is not None:
                await self.stop()

        try:
            if self.browser is not None:
                self.browser.close()
            self.runner.run(stop())
        finally:
            self.runner.stop()
            self.httpd.shutdown()
            self.httpd.server_close()
            self._http_thread.join(10)


def _side(page: Page, method: str, calls: int) -> Callable[[], None]:
    # (the page's own figure is in milliseconds: a failed check raises in the page, and
    # Page.evaluate raises it here)
    return lambda: page.evaluate(f"rpcBench.{method}({calls})")


def ws_rpc_roundtrip(calls: int = 200) -> Workload:
    bench = _Bench()
    server_identity = HostIdentity.generate()

    async def start() -> Any:
        return await dtp.aio.start_server(
            _dtp_service,
            None,
            None,
            identity=server_identity,
            websocket=("127.0.0.1", 0),
            origins=[bench.base],
        )

    def connect(server: Any) -> str:
        host, port = server.websocket_addresses[0]
        return (
            f"rpcBench.openDtp('ws://{host}:{port}/dtp', "
            f"'{server_identity.noise_public.hex()}', '{SEED.hex()}')"
        )

    page, _ = bench.open(start, connect, bench.close)
    # (libsodium, or @noble/ciphers where the page could not load it: web/dtp-client)
    try:
        aead = page.evaluate("import('/src/record.js').then((m) => m.RECORD_AEAD.name)")
    except BaseException:
        bench.close()
        raise

    workload = Workload(
        name="ws_rpc_roundtrip",
        unit="calls/s",
        units=calls,
        ours=_side(page, "dtpCalls", calls),
        peer=_side(page, "plainCalls", calls),
        bar=0.9,
        note=(
            "headless Chromium: DTP over WebSocket (stream a call) vs JSON-RPC over wss://"
            f" (the page's records: {aead})"
        ),
        close=bench.close,
    )
    workload.browser_pid = bench.browser.process.pid  # type: ignore[attr-defined,union-attr]
    # (for bench/web_counts.py: the page, and the servers' loop)
    workload.page = page  # type: ignore[attr-defined]
    workload.loop = bench.runner.loop  # type: ignore[attr-defined]
    return workload


#: The paid row's service: 25 MIST a request, bytes free (the guide's), and a minimum
#: deposit -- the server's credit by default -- of 80 requests, so that the page signs a
#: receipt every 20 calls (Payment's default: a quarter of the credit), as
#: docs/web-frontend.md advises a service paid per call from a page.
PAID_SLA = Sla(price_per_kib=0, price_per_request=25, min_deposit=2000)
#: The page's escrow: enough for every call a compare.py run makes (about 10^5)
PAID_DEPOSIT = 10**12
#: The escrow's receipt key (the page's session key, docs/escrow.md §6.2), as a seed
SESSION_SEED = bytes([0x5E] * 32)
PAID_PORT = 8


async def _paid_service(reader: Any, writer: Any) -> None:
    """The paid service: one JSON-RPC call a stream, as :func:`_dtp_service`, through the
    paid stream pair (PaidReader, PaidWriter: each read and write behind the receipt
    gate)."""

    async def call(r: Any, w: Any) -> None:
        w.write_eof(_answer(await r.read()))
        await w.drain()
        w.close()

    async def first(r: Any, w: Any) -> None:
        with contextlib.suppress(DTPError):
            while await r.read(4096):
                pass
        w.close()

    await asyncio.gather(first(reader, writer), writer.serve_streams(call))


class PaidLedger:
    """The paid row's ledger: a LocalLedger file holding the provider's Host (port 8 at
    :data:`PAID_SLA`) and the page wallet's connection, opened with the session key
    :data:`SESSION_SEED` as its receipt key; ``claimed()`` reads what the provider
    claimed from it."""

    def __init__(self, folder: Path) -> None:
        from dtp.ledger.local import LocalLedger

        self.path = folder / "ledger.db"
        self.receipts = folder / "receipts.db"
        ledger = LocalLedger(self.path)
        self.ledger = ledger
        self.provider = HostIdentity.generate()
        wallet = HostIdentity.from_private_bytes(SEED, bytes(32))
        session = HostIdentity.from_private_bytes(SESSION_SEED, bytes(32))
        ledger.faucet(self.provider.sui_address, 10**9)
        ledger.faucet(wallet.sui_address, PAID_DEPOSIT + 10**9)
        self.host_id = ledger.create_host(self.provider, self.provider.noise_public)
        ledger.add_service(self.provider, self.host_id, PAID_PORT, "jsonrpc", PAID_SLA)
        cap = ledger.create_spending_cap(wallet, PAID_DEPOSIT)
        self.opened = ledger.open_session_connection(
            wallet, self.host_id, PAID_PORT, cap, PAID_DEPOSIT, session.ed25519_public
        )

    def page_options(self, every: dict[str, int] | None = None) -> dict[str, Any]:
        """What the page's ``openDtpPaid`` takes besides the URL and keys."""
        return {
            "every": every,
            "port": PAID_PORT,
            "scope": {
                "package": self.ledger.package_id,
                "escrow": self.opened.escrow_id,
                "connection": self.opened.connection_id,
            },
            "sla": {
                "pricePerKib": PAID_SLA.price_per_kib,
                "pricePerRequest": PAID_SLA.price_per_request,
                "minDeposit": PAID_SLA.min_deposit,
            },
            "deposit": str(PAID_DEPOSIT),
            "sessionSeed": SESSION_SEED.hex(),
        }

    def claimed(self) -> int:
        return self.ledger.get_escrow(self.opened.escrow_id).claimed

    def close(self) -> None:
        self.ledger.close()


def ws_rpc_paid_roundtrip(calls: int = 200, every: dict[str, int] | None = None) -> Workload:
    """As :func:`ws_rpc_roundtrip`, each DTP call paid: the page's ``Payment`` on a ledger
    connection its wallet opened with a session key, against a paid ``dtp.aio.serve``
    server on a LocalLedger file (receipts kept in a store before they count, the
    latest claimed at the end). ``every``: the page's ``Payment`` bound (``{"amount":
    MIST, "ms": ms}``; None: its default, the docs' advice). The workload's
    ``finish()`` ends the connection and returns (requests the page made, receipts it
    signed, MIST the provider claimed)."""
    import tempfile

    from dtp.ledger.local import LocalLedger

    bench = _Bench()
    folder = tempfile.TemporaryDirectory(prefix="dtp-bench-paid-")
    state: dict[str, Any] = {}
    ledger = PaidLedger(Path(folder.name))

    async def start() -> Any:
        server_ledger = LocalLedger(ledger.path)
        state["server_ledger"] = server_ledger
        return await dtp.aio.serve(
            ledger.host_id,
            PAID_PORT,
            _paid_service,
            ledger=server_ledger,
            identity=ledger.provider,
            receipts=ledger.receipts,
            address=("127.0.0.1", 0),
            websocket=("127.0.0.1", 0),
            origins=[bench.base],
        )

    async def stop() -> None:
        if "server_ledger" in state:
            state["server_ledger"].close()

    def close() -> None:
        try:
            bench.close()
        finally:
            ledger.close()
            folder.cleanup()

    def connect(server: Any) -> str:
        host, port = server.websocket_addresses[0]
        return (
            f"rpcBench.openDtpPaid('ws://{host}:{port}/dtp', "
            f"'{ledger.provider.noise_public.hex()}', '{SEED.hex()}', "
            f"'{ledger.opened.connection_id}', {json.dumps(ledger.page_options(every))})"
        )

    bench.stop = stop
    page, server = bench.open(start, connect, close)

    def finish() -> tuple[int, int, int]:
        ended = page.evaluate("rpcBench.closePaid()")
        bench.runner.run(_settled(server))
        return int(ended["requests"]), int(ended["receipts"]), ledger.claimed()

    workload = Workload(
        name="ws_rpc_paid_roundtrip",
        unit="calls/s",
        units=calls,
        ours=_side(page, "dtpPaidCalls", calls),
        peer=_side(page, "plainCalls", calls),
        bar=0.6,
        note=(
            f"headless Chromium: DTP paid per call ({PAID_SLA.price_per_request} MIST, "
            "receipts batched) vs JSON-RPC over wss://"
        ),
        close=close,
    )
    workload.browser_pid = bench.browser.process.pid  # type: ignore[attr-defined,union-attr]
    workload.finish = finish  # type: ignore[attr-defined]
    workload.loop = bench.runner.loop  # type: ignore[attr-defined]
    workload.page = page  # type: ignore[attr-defined]
    return workload


async def _settled(server: Any, timeout: float = 30.0) -> None:
    """Wait until ``server`` has settled every connection it served (its settlements)."""
    deadline = time.monotonic() + timeout
    while server.open_connections or not server.settlements:
        if time.monotonic() > deadline:
            raise TimeoutError("the paid server did not settle the page's connection")
        await asyncio.sleep(0.05)


WEB_ROWS: dict[str, Callable[..., Workload]] = {
    "ws_rpc_roundtrip": ws_rpc_roundtrip,
    "ws_rpc_paid_roundtrip": ws_rpc_paid_roundtrip,
}


@contextmanager
def _cpu(
    into: dict[str, float], browser_pid: int, loop: asyncio.AbstractEventLoop, page: Page
) -> Iterator[None]:
    """CPU seconds of what runs inside: this process, its servers' loop thread (read on
    the loop: ``time.thread_time``), the browser's processes by kind, and the page's
    main thread (DevTools' Performance metrics in thread ticks, once
    ``Performance.enable`` asked for them): its tasks, and the JavaScript in them."""

    def on_loop() -> float:
        return asyncio.run_coroutine_threadsafe(_thread_time(), loop).result(30)

    def main_thread() -> dict[str, float]:
        metrics = page.send("Performance.getMetrics")["metrics"]
        return {m["name"]: m["value"] for m in metrics}

    wall, ours, loop_cpu = time.perf_counter(), time.process_time(), on_loop()
    theirs, tasks = _group_cpu(browser_pid), main_thread()
    yield
    into["wall"] = time.perf_counter() - wall
    into["python"] = time.process_time() - ours
    into["loop"] = on_loop() - loop_cpu
    now, tasks_now = _group_cpu(browser_pid), main_thread()
    into["browser"] = sum(now.values()) - sum(theirs.values())
    for kind in ("renderer", "network"):
        into[kind] = now.get(kind, 0.0) - theirs.get(kind, 0.0)
    for name in ("TaskDuration", "ScriptDuration"):
        into[name] = tasks_now.get(name, 0.0) - tasks.get(name, 0.0)


async def _thread_time() -> float:
    return time.thread_time()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="the web rows, with CPU per call")
    parser.add_argument("--row", choices=sorted(WEB_ROWS), default="ws_rpc_roundtrip")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--every-amount",
        type=int,
        help="ws_rpc_paid_roundtrip: the page signs once this many MIST are unsigned "
        "(0: a receipt every call; default: Payment's, half the SLA's min_deposit)",
    )
    args = parser.parse_args(argv)
    if args.row == "ws_rpc_paid_roundtrip":
        every = None if args.every_amount is None else {"amount": args.every_amount}
        w = ws_rpc_paid_roundtrip(args.calls, every)
    else:
        w = ws_rpc_roundtrip(args.calls)
    pid: int = w.browser_pid  # type: ignore[attr-defined]
    loop: asyncio.AbstractEventLoop = w.loop  # type: ignore[attr-defined]
    page: Page = w.page  # type: ignore[attr-defined]
    try:
        assert w.peer is not None
        page.send("Performance.enable", {"timeDomain": "threadTicks"})
        w.ours()
        w.peer()  # (warm up)
        for _ in range(args.rounds):
            for name, op in (("dtp", w.ours), ("wss", w.peer)):
                got: dict[str, float] = {}
                with _cpu(got, pid, loop, page):
                    op()
                per = {k: v / args.calls * 1e6 for k, v in got.items()}
                print(
                    f"{name}: {args.calls / got['wall']:8.0f} calls/s  per call: "
                    f"wall {per['wall']:6.1f} µs, python (servers) {per['python']:6.1f} µs "
                    f"(the loop's thread {per['loop']:6.1f}), browser {per['browser']:6.1f} µs "
                    f"(renderers {per['renderer']:6.1f}, network {per['network']:6.1f}; the "
                    f"page's main thread {per['TaskDuration']:6.1f}, its JavaScript "
                    f"{per['ScriptDuration']:6.1f})",
                    flush=True,
                )
        finish = getattr(w, "finish", None)
        if finish is not None:
            requests, receipts, claimed = finish()
            print(f"paid: {requests} requests, {receipts} receipts, {claimed} MIST claimed")
    finally:
        if w.close is not None:
            w.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
