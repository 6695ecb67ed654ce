"""A page's paid calls on the embedded ledger, end to end from node, with the pieces
docs/web-frontend.md gives a page: the ledger bridge (``dtp.ledger.local.bridge``, its
faucet on), transactions the page's test wallet signs itself (``localTransactionSigner``
of web/dtp-client), ``connect()`` given the connection ID as the ledger names it
("0x..."), the paid server's bound WebSocket port (``websocket_addresses``), and a
``Payment`` whose receipts each cover several calls (a quarter of the SLA's minimum
deposit, the server's credit, by default). Hundreds of calls later the provider's claim
is exactly the calls' price, to the MIST, the rest of the deposit back to the wallet,
every MIST accounted for on the ledger; and the receipts were far fewer than the calls."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
from dtp.errors import DTPError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.local.bridge import LocalLedgerBridge, serve_bridge
from tests.support.settlements import is_settled
from tests.web.browser_client import need_client, node_command

SLA = Sla(price_per_kib=0, price_per_request=25, min_deposit=1000)
PORT = 8
WALLET_SEED = bytes([0x42] * 32)
FAUCET = 10**9


async def _echo_calls(reader: Any, writer: Any) -> None:
    """One JSON-RPC call a stream (PaidWriter.serve_streams), answered with its params."""

    async def call(r: Any, w: Any) -> None:
        request = json.loads(await r.read())
        w.write_eof(
            json.dumps(
                {"jsonrpc": "2.0", "id": request["id"], "result": request["params"]}
            ).encode()
        )
        await w.drain()

    async def first(r: Any, w: Any) -> None:
        with contextlib.suppress(DTPError):
            while await r.read(4096):
                pass
        w.close()

    await asyncio.gather(first(reader, writer), writer.serve_streams(call))


class PaidPageService:
    """A LocalLedger file with the provider's Host, its paid dtp.aio server on the
    WebSocket carrier, and the ledger bridge the page uses: ``with PaidPageService(path)
    as service``, ``service.base`` the bridge's URL."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "ledger.db"
        self.provider = HostIdentity.generate()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.ledgers: list[LocalLedger] = []
        self.server: Any = None
        self.bridge_server: Any = None

    def _ledger(self) -> LocalLedger:
        ledger = LocalLedger(self.path)
        self.ledgers.append(ledger)
        return ledger

    def __enter__(self) -> PaidPageService:
        setup = self._ledger()
        self.ledger = setup
        setup.faucet(self.provider.sui_address, FAUCET)
        self.host_id = setup.create_host(self.provider, self.provider.noise_public)
        setup.add_service(self.provider, self.host_id, PORT, "jsonrpc", SLA)
        self.thread.start()
        server_ledger = self._ledger()
        self.server = asyncio.run_coroutine_threadsafe(
            dtp.aio.serve(
                self.host_id,
                PORT,
                _echo_calls,
                ledger=server_ledger,
                identity=self.provider,
                receipts=self.folder / "receipts.db",
                address=("127.0.0.1", 0),
                websocket=("127.0.0.1", 0),
            ),
            self.loop,
        ).result(30)
        host, port = self.server.websocket_addresses[0]
        info = {
            "host": self.host_id,
            "port": PORT,
            "sla": {
                "pricePerKib": SLA.price_per_kib,
                "pricePerRequest": SLA.price_per_request,
                "minDeposit": SLA.min_deposit,
            },
            "url": f"ws://{host}:{port}/dtp",
            "serverKey": self.provider.noise_public.hex(),
        }
        self.bridge_server = serve_bridge(LocalLedgerBridge(self._ledger(), info, faucet=FAUCET))
        self.base = self.bridge_server.url
        return self

    def settled(self, connection_id: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not is_settled(self.ledger, connection_id):
            assert time.monotonic() < deadline, "the provider did not settle the connection"
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.bridge_server is not None:
            self.bridge_server.close()

        async def stop() -> None:
            if self.server is not None:
                self.server.close()
                await self.server.wait_closed()

        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()
        for ledger in self.ledgers:
            ledger.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[PaidPageService]:
    need_client()
    with PaidPageService(tmp_path) as running:
        yield running


def _run(job: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        node_command("scripts/paid-calls.mjs"),
        input=json.dumps(job).encode(),
        capture_output=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def _conserved(ledger: LocalLedger) -> None:
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"], audit


def test_hundreds_of_batched_calls_are_claimed_to_the_mist(service: PaidPageService) -> None:
    calls, deposit = 403, 1_000_000
    # (the time bound out of the way: on a loaded machine a second passes between calls)
    job = {"calls": calls, "deposit": deposit, "every": {"ms": 600_000}}
    report = _run({"base": service.base, "seed": WALLET_SEED.hex(), **job})
    assert report["closed"] == 0
    # a receipt once 10 calls are unsigned (a quarter of the 1000 MIST credit: the
    # default amount), or sooner where the server asked (its copy of the last receipt
    # still on its way to the disk when the credit ran out), cumulative; the close's
    # receipt for the rest
    assert report["everyAmount"] == "250"
    receipts = report["receipts"]
    assert [r["nonce"] for r in receipts] == list(range(1, len(receipts) + 1))
    counts = [r["requests"] for r in receipts]
    # (the close's receipt may repeat the last count: it pays the last answer's bytes too,
    # free here)
    assert (
        counts[-1] == calls
        and counts == sorted(counts)
        and len(set(counts[:-1])) == len(counts) - 1
    )
    assert all(b - a <= 10 for a, b in zip([0, *counts], counts, strict=False)), counts
    assert len(receipts) < calls // 5
    assert all(r["amount"] == r["requests"] * SLA.price_per_request for r in receipts)
    assert report["receiptKey"] == report["sessionKey"]  # the escrow's key: the session key's
    service.settled(report["connection"])
    escrow = service.ledger.get_escrow(report["escrow"])
    price = calls * SLA.price_per_request
    assert (escrow.claimed, escrow.refunded) == (price, deposit - price)
    connection = service.ledger.get_connection(report["connection"])
    assert connection.client == HostIdentity.from_private_bytes(WALLET_SEED, bytes(32)).sui_address
    _conserved(service.ledger)


def test_a_receipt_with_every_call_is_claimed_alike(service: PaidPageService) -> None:
    calls, deposit = 40, 5_000
    report = _run(
        {
            "base": service.base,
            "seed": WALLET_SEED.hex(),
            "calls": calls,
            "deposit": deposit,
            "every": {"amount": 0},
        }
    )
    # one with each call, and the close's for the last answer's bytes (free: the same
    # amount)
    assert [r["requests"] for r in report["receipts"]] == [*range(1, calls + 1), calls]
    service.settled(report["connection"])
    escrow = service.ledger.get_escrow(report["escrow"])
    assert (escrow.claimed, escrow.refunded) == (calls * 25, deposit - calls * 25)
    _conserved(service.ledger)


def test_a_bound_above_the_credit_pauses_and_is_asked_for_receipts(
    service: PaidPageService,
) -> None:
    # the page would leave 2000 MIST unsigned; the server's credit is 1000: at 40 calls
    # unsigned it pauses the connection and asks, the page signs at once, and the calls
    # go on -- never more than the credit served beyond what was signed
    calls, deposit = 130, 100_000
    report = _run(
        {
            "base": service.base,
            "seed": WALLET_SEED.hex(),
            "calls": calls,
            "deposit": deposit,
            "every": {"amount": 2000, "ms": 60000},
        }
    )
    receipts = report["receipts"]
    counts = [0] + [r["requests"] for r in receipts]
    steps = [b - a for a, b in itertools.pairwise(counts)]
    assert all(step <= SLA.min_deposit // SLA.price_per_request + 1 for step in steps), steps
    assert receipts[-1]["requests"] == calls
    service.settled(report["connection"])
    assert service.ledger.get_escrow(report["escrow"]).claimed == calls * 25
    _conserved(service.ledger)
