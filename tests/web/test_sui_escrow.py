"""The escrow opened on Sui from JavaScript (web/dtp-client/src/sui.js): Mysten's
TypeScript SDK (@mysten/sui) builds ``spending_cap::create`` and
``transport_control::open_with_session_key``, a test key standing in for the wallet --
Ed25519, Secp256k1, Secp256r1 or a passkey: any Sui account authorises its session key
alike -- signs and executes them on the Sui node stand-in (over its gRPC-web front, as a
page reaches a full node), and the same JS client connects over the WebSocket carrier to
a paid JSON-RPC service whose Host is on that node, paying per request with receipts its
session key signs; a wallet off the host's allow list is refused by the ledger, losing
only gas. Checked here on the Python side, through SuiLedger on the same node:
the escrow holds the deposit under the session key, and the provider's claim at close
takes exactly the fee and refunds the rest."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
from dtp.cli._chromium import BrowserError
from dtp.cli.dapp_host import serve_jsonrpc
from dtp.hostid.paid import ServicePolicy
from dtp.identity.keys import HostIdentity
from dtp.identity.wallets import Secp256k1Wallet, Secp256r1Wallet, SoftwarePasskey
from dtp.ledger._objects import Sla
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.sui_node import SuiNodeStandIn
from tests.support.browser import Chromium, need_chromium
from tests.support.paths import ROOT
from tests.support.polling import wait_for
from tests.web.browser_client import PACKAGE, need_client, node_command, served_package

PORT = 8
#: On Sui the provider claims only a fee above the gas its claim costs (about 3.3 M MIST
#: on the stand-in; docs/escrow.md §7.1): so the price here is 2 M MIST a request.
SLA = Sla(price_per_kib=0, price_per_request=2_000_000, min_deposit=1_000_000)
DEPOSIT = 20_000_000
WALLET_SEED = bytes(range(1, 33))
DENIED_SEED = bytes([9] * 32)
GAS = 10**10
SHOTS = ROOT / "build" / "screenshots"


def need_sdk() -> None:
    need_client()
    if not (PACKAGE / "node_modules" / "@mysten" / "sui").is_dir():
        pytest.fail("@mysten/sui (a dev dependency of web/dtp-client) is not installed")


class Provider:
    """The provider's Host on the node (port 8: ``jsonrpc`` at :data:`SLA`, the wallet
    allow-listed) and its paid dtp.aio server on the WebSocket carrier, in a loop thread."""

    def __init__(self, node: SuiNodeStandIn, folder: Path, wallet: str, origins: list[str]) -> None:
        self.identity = HostIdentity.generate()
        node.faucet(self.identity.sui_address, GAS)
        self.ledger = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        self.host_id = self.ledger.create_host(self.identity, self.identity.noise_public)
        self.ledger.add_service(self.identity, self.host_id, PORT, "jsonrpc", SLA)
        self.ledger.set_firewall_mode(self.identity, self.host_id, 1)
        self.ledger.allow(self.identity, self.host_id, wallet)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: Any = asyncio.run_coroutine_threadsafe(
            dtp.aio.serve(
                self.host_id,
                PORT,
                serve_jsonrpc,
                ledger=self.ledger,
                identity=self.identity,
                receipts=folder / "receipts.db",
                policy=ServicePolicy(),
                address=("127.0.0.1", 0),
                websocket=("127.0.0.1", 0),
                origins=origins,
            ),
            self.loop,
        ).result(60)
        host, port = self.server.server.websocket_addresses[0]
        self.url = f"ws://{host}:{port}/dtp"

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()
            self.ledger.close()


@dataclass
class World:
    node: SuiNodeStandIn
    provider: Provider
    wallet: str
    base: str  # the package folder over HTTP (the page's origin)
    scheme: str = "ed25519"  # the wallet's Sui signature scheme

    def job(self, gas: str = "sdk") -> dict[str, Any]:
        """What the JS flow (demo/sui-escrow.js) takes; ``gas``: who picks each
        transaction's gas, the SDK through the node's SimulateTransaction or the wallet."""
        return {
            "gas": gas,
            "node": self.node.grpc_web_url,
            "package": self.node.package_id,
            "host": self.provider.host_id,
            "port": PORT,
            "url": self.provider.url,
            "serverKey": self.provider.identity.noise_public.hex(),
            "sla": {
                "pricePerKib": SLA.price_per_kib,
                "pricePerRequest": SLA.price_per_request,
                "minDeposit": SLA.min_deposit,
            },
            "seed": WALLET_SEED.hex(),
            "scheme": self.scheme,
            "deniedSeed": DENIED_SEED.hex(),
            "deposit": DEPOSIT,
        }


#: The test wallet's address of each scheme, from the same secret (dtp.identity.wallets).
WALLETS = {
    "ed25519": lambda: HostIdentity.from_private_bytes(WALLET_SEED, bytes(32)).sui_address,
    "secp256k1": lambda: Secp256k1Wallet(WALLET_SEED).sui_address,
    "secp256r1": lambda: Secp256r1Wallet(WALLET_SEED).sui_address,
    "passkey": lambda: SoftwarePasskey(WALLET_SEED).sui_address,
}


@pytest.fixture
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """The node, the provider and the page's folder; the wallet of the scheme the test
    names (``indirect`` parametrization), Ed25519 by default."""
    need_sdk()
    scheme = getattr(request, "param", "ed25519")
    wallet = WALLETS[scheme]()
    with (
        served_package() as base,
        SuiNodeStandIn(tmp_path / "node", grpc_web_port=0) as node,
    ):
        node.faucet(wallet, GAS)
        node.faucet(HostIdentity.from_private_bytes(DENIED_SEED, bytes(32)).sui_address, GAS)
        provider = Provider(node, tmp_path, wallet, origins=[base])
        try:
            yield World(node, provider, wallet, base, scheme)
        finally:
            provider.close()


def check(report: dict[str, Any], world: World, gas: str = "sdk") -> None:
    """What the JS flow reported, and what the ledger says of it."""
    assert "error" not in report, report
    node, provider, wallet = world.node, world.provider, world.wallet
    # the SDK's address of the seed is the one DTP proved and the backend saw
    assert report["wallet"] == report["address"] == report["whoami"] == wallet
    assert report["add"] == 42 and report["closed"] == 0
    # the two calls: two requests (stream 0, held open and ended empty, carries none)
    fee = 2 * SLA.price_per_request
    assert report["receipts"][-1] == {"requests": 2, "amount": fee, "nonce": 3}

    ledger = provider.ledger
    opened = report["escrow"]
    connection = ledger.get_connection(opened["connection"])
    assert connection.client == wallet and connection.host == provider.host_id
    assert connection.escrow == opened["escrow"] and connection.port == PORT

    assert wait_for(lambda: ledger.get_escrow(opened["escrow"]).settled, timeout=60), (
        "the provider's claim did not settle the escrow"
    )
    escrow = ledger.get_escrow(opened["escrow"])
    assert escrow.client == wallet and escrow.server == provider.identity.sui_address
    # the receipts' key is the session key the open named, not the wallet's
    assert escrow.client_public_key.hex() == report["sessionKey"]
    assert escrow.spending_cap == opened["cap"]
    assert escrow.deposited == DEPOSIT == opened["deposit"]
    assert escrow.claimed == fee
    assert escrow.refunded == DEPOSIT - fee and escrow.balance == 0

    # the second open reused the wallet's cap: its escrow holds the deposit, unclaimed
    second = ledger.get_escrow(report["second"]["escrow"])
    assert report["second"]["cap"] == second.spending_cap == opened["cap"]
    assert second.deposited == second.balance == DEPOSIT and second.claimed == 0
    # a wallet off the allow list: the ledger refused its open (host's EFirewallDenied,
    # docs/escrow.md §10), and it lost nothing but the gas of its transactions
    denied = HostIdentity.from_private_bytes(DENIED_SEED, bytes(32)).sui_address
    assert report["denied"]["name"] == "SuiLedgerError", report["denied"]
    assert report["denied"]["abort"] == {"module": "host", "code": 8, "name": "EFirewallDenied"}
    assert ledger.balance(denied) + node.gas_paid(denied) == GAS
    if gas == "sdk":
        # the SDK picked each transaction's gas through the node's simulation (the cap,
        # two opens, the denied wallet's cap and open), and the denied open was refused
        # there, before it was signed (its wallet paid the gas of its cap alone)
        assert node.calls["SimulateTransaction"] >= 5
        assert "Transaction resolution failed" in report["denied"]["message"]
    else:
        assert node.calls["SimulateTransaction"] == 0
    # the JS calls reached the node through the SDK's gRPC-web client
    assert node.calls["BatchGetObjects"] >= 2 and node.calls["ExecuteTransaction"] >= 3
    audit = node.audit()
    assert (
        audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"] + audit["gas"]
    )


@pytest.mark.parametrize("world", ["ed25519", "secp256k1", "passkey"], indirect=True)
def test_a_wallet_opens_its_escrow_on_sui_from_node_and_pays_per_request(world: World) -> None:
    out = subprocess.run(
        node_command("scripts/sui-escrow-client.mjs"),
        input=json.dumps(world.job("sdk")).encode(),
        capture_output=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    check(json.loads(out.stdout), world, "sdk")


@pytest.mark.parametrize("world", ["ed25519", "secp256r1"], indirect=True)
def test_the_page_opens_its_escrow_on_sui_in_chromium(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    need_chromium()
    # (the test wallet picks the gas here: the node's run above has the SDK pick it)
    fragment = urllib.parse.quote(json.dumps(world.job("wallet")))
    with Chromium() as browser:
        page = browser.new_page()
        page.goto(f"{world.base}/demo/sui.html#{fragment}")
        try:
            page.wait_for("document.body.dataset.done", timeout=120)
        except BrowserError as exc:
            text = page.evaluate("document.body.innerText")
            # what the page fetched, for a flow that never began (a module not loaded)
            fetched = page.evaluate(
                "performance.getEntriesByType('resource')"
                ".map(e => `${e.responseStatus ?? '?'} ${e.name}`).join('\\n')"
            )
            raise AssertionError(
                f"{exc}; the page shows:\n{str(text)[:3000]}\nit fetched:\n{fetched}"
            ) from exc
        report = page.evaluate("window.report")
        SHOTS.mkdir(parents=True, exist_ok=True)
        shot = page.screenshot(SHOTS / "dtp-sui-escrow.png")
        with capsys.disabled():
            print(f"\n[screenshot] {shot}")
    check(report, world, "wallet")
    assert shot.read_bytes().startswith(b"\x89PNG")
