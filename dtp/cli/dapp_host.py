"""The dApp demo's host (docs/web-frontend.md): a page whose wallet calls a JSON-RPC
backend through a paid DTP service over WebSocket, each call billed per request from an
escrow the page opened on the ledger, its receipts signed by a session key the wallet
authorised in the open (docs/escrow.md §6.2). ``dtp demo`` runs it as a step
(:mod:`dtp.cli._demo_dapp`) and ``python examples/dapp_demo.py`` on its own.

What runs here, on 127.0.0.1:

- a LocalLedger file with the provider's Host: port 8 serves ``jsonrpc`` at 25 MIST a
  request (bytes free), its firewall allow-listed, the demo wallet on the allow list;
- the provider's paid ``dtp.aio`` server on the WebSocket carrier, admitting the page's
  origin, whose streams carry one JSON-RPC request each to the backend (:func:`backend`);
- one HTTP server for the page and the ledger bridge (:mod:`dtp.ledger.local.bridge`):
  the package folder ``web/dtp-client`` of the source tree (the page is
  ``demo/dapp.html``; it loads the package's npm dependencies from its
  ``node_modules``), and ``/ledger/*``, which builds LocalLedger transactions for the
  page, runs the ones its wallet signed, and reads escrows back. The bridge stands in
  for a Sui full node: it holds no key, and every transaction it runs carries the
  wallet's own signature (LocalLedger checks it); its faucet gives the demo's wallets
  their test SUI.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from pathlib import Path
from typing import Any

import dtp.aio
from dtp.errors import DTPError
from dtp.hostid.paid import ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.local.bridge import LocalLedgerBridge, LocalLedgerBridgeServer, serve_bridge

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "web" / "dtp-client"
PORT = 8
SLA = Sla(price_per_kib=0, price_per_request=25, min_deposit=100)
#: The demo wallets: Ed25519 seeds standing in for a browser wallet's account.
WALLET_SEED = bytes(range(32))
DENIED_SEED = bytes([7] * 32)
FAUCET_MIST = 1_000_000
MAX_BODY = 64 * 1024

__all__ = [
    "DENIED_SEED",
    "PACKAGE",
    "SLA",
    "WALLET_SEED",
    "DappDemo",
    "address_of",
    "backend",
    "missing_client",
    "wallet_public_key",
]


def missing_client() -> str | None:
    """Why the page cannot run here, or None: it is the source tree's ``web/dtp-client``
    folder, and it loads the package's npm dependencies (the @noble packages and
    libsodium-wrappers, whose AEAD seals the page's records) from its ``node_modules``,
    which ``web/dtp-client/scripts/install.sh`` fetches."""
    if not (PACKAGE / "demo" / "dapp.html").is_file():
        return (
            f"the browser client's folder is not here ({PACKAGE}): run from a clone of the source"
        )
    modules = PACKAGE / "node_modules"
    # (an install made before libsodium-wrappers was a dependency lacks it: the page's
    # import map names it, so such an install is one to run again)
    absent = [
        name for name in ("@noble/curves", "libsodium-wrappers") if not (modules / name).is_dir()
    ]
    if absent:
        return (
            f"the browser client's npm packages are not installed ({', '.join(absent)} missing;"
            " sh web/dtp-client/scripts/install.sh fetches them; it needs npm)"
        )
    return None


def backend(request: dict[str, Any], caller: str) -> dict[str, Any]:
    """The JSON-RPC 2.0 backend the DTP service fronts: ``whoami`` (the wallet address DTP
    proved), ``add`` (two integers) and ``echo``."""
    ident = request.get("id")
    method, params = request.get("method"), request.get("params", [])
    if method == "whoami":
        result: Any = caller
    elif method == "add" and isinstance(params, list) and len(params) == 2:
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in params):
            return _rpc_error(ident, -32602, "add takes two integers")
        result = params[0] + params[1]
    elif method == "echo":
        result = params
    else:
        return _rpc_error(ident, -32601, f"no method {method!r}")
    return {"jsonrpc": "2.0", "id": ident, "result": result}


def _rpc_error(ident: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "error": {"code": code, "message": message}}


async def serve_jsonrpc(reader: PaidReader, writer: PaidWriter) -> None:
    """The paid service's callback: every stream the client opens after the first is one
    JSON-RPC call, answered on the same stream. The first stream (stream 0, which the
    handshake opens) carries no call: its end is the connection's end, as for every
    ``dtp.aio`` service, so the client ends it when it is done."""
    caller = writer.get_extra_info("peer_address")

    async def one(r: PaidReader, w: PaidWriter) -> None:
        body = await r.read(MAX_BODY + 1)
        while len(body) <= MAX_BODY and (more := await r.read(MAX_BODY + 1 - len(body))):
            body += more
        try:
            request = json.loads(body)
            answer = (
                backend(request, caller)
                if isinstance(request, dict) and len(body) <= MAX_BODY
                else _rpc_error(None, -32600, "one JSON-RPC request object per stream")
            )
        except ValueError:
            answer = _rpc_error(None, -32700, "parse error")
        # the answer and the stream's end in one record: the page gets one message
        w.write_eof(json.dumps(answer).encode())
        await w.drain()
        w.close()

    async def first(r: PaidReader, w: PaidWriter) -> None:
        while await r.read(MAX_BODY):
            pass
        w.close()

    calls = [asyncio.ensure_future(first(reader, writer))]
    try:
        while True:
            r, w = await writer.accept_stream()
            calls.append(asyncio.ensure_future(one(r, w)))
    except DTPError:
        pass
    await asyncio.gather(*calls, return_exceptions=True)


def address_of(seed: bytes) -> str:
    """The Sui address of the demo wallet whose Ed25519 seed is ``seed``."""
    return HostIdentity.from_private_bytes(seed, bytes(32)).sui_address


def wallet_public_key() -> bytes:
    """The demo wallet's Ed25519 public key."""
    return HostIdentity.from_private_bytes(WALLET_SEED, bytes(32)).ed25519_public


class DappDemo:
    """The demo's ledger, paid service and HTTP server, in threads:
    ``with DappDemo() as demo: print(demo.page_url)``. ``host``: the interface to listen
    on (127.0.0.1)."""

    def __init__(self, host: str = "127.0.0.1", folder: Path | None = None) -> None:
        self.host = host
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dtp-dapp-")
            folder = Path(self._tmp.name)
        self.folder = Path(folder)
        self.provider = HostIdentity.generate()
        self.wallet_address = address_of(WALLET_SEED)
        self.denied_address = address_of(DENIED_SEED)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Any = None
        self.httpd: LocalLedgerBridgeServer | None = None
        self.ledgers: list[LocalLedger] = []

    def __enter__(self) -> DappDemo:
        # (a failure part-way, an interrupt included, stops what had started)
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        path = self.folder / "ledger.db"
        setup = LocalLedger(path)
        self.ledgers.append(setup)
        setup.faucet(self.provider.sui_address, FAUCET_MIST)
        self.host_id = setup.create_host(self.provider, self.provider.noise_public)
        setup.add_service(self.provider, self.host_id, PORT, "jsonrpc", SLA)
        setup.set_firewall_mode(self.provider, self.host_id, 1)
        setup.allow(self.provider, self.host_id, self.wallet_address)

        self.thread.start()
        server_ledger = LocalLedger(path)
        self.ledgers.append(server_ledger)
        bridge_ledger = LocalLedger(path)
        self.ledgers.append(bridge_ledger)
        # (the bridge's info names the service once it listens: the page's origin is
        # the bridge's, which the service must know first)
        bridge = LocalLedgerBridge(bridge_ledger, faucet=FAUCET_MIST)
        self.httpd = serve_bridge(bridge, (self.host, 0), static=PACKAGE)
        base = self.httpd.url
        self.server = asyncio.run_coroutine_threadsafe(
            dtp.aio.serve(
                self.host_id,
                PORT,
                serve_jsonrpc,
                ledger=server_ledger,
                identity=self.provider,
                receipts=self.folder / "receipts.db",
                policy=ServicePolicy(),
                address=(self.host, 0),
                websocket=(self.host, 0),
                origins=[base],
            ),
            self.loop,
        ).result(30)
        ws_host, ws_port = self.server.websocket_addresses[0]
        self.websocket_port: int = ws_port
        bridge.info.update(
            host=self.host_id,
            port=PORT,
            sla={
                "pricePerKib": SLA.price_per_kib,
                "pricePerRequest": SLA.price_per_request,
                "minDeposit": SLA.min_deposit,
            },
            url=f"ws://{ws_host}:{ws_port}/dtp",
            serverKey=self.provider.noise_public.hex(),
        )
        self.info: dict[str, Any] = bridge.info
        self.base = base

    @property
    def page_url(self) -> str:
        return f"{self.base}/demo/dapp.html"

    def claimed(self, escrow_id: str) -> int:
        """What the provider has claimed from ``escrow_id`` so far."""
        return self.ledgers[0].get_escrow(escrow_id).claimed

    def __exit__(self, *exc: object) -> None:
        if self.httpd is not None:
            self.httpd.close()
            self.httpd = None

        async def stop() -> None:
            if self.server is not None:
                self.server.close()
                await self.server.wait_closed()

        if self.thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)
        if not self.loop.is_closed() and not self.loop.is_running():
            self.loop.close()
        for ledger in self.ledgers:
            ledger.close()
        self.ledgers = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
