"""The services daemon takes receipts only up to what the client's spending cap lets
its claims reach (what no later change of the cap's limit can take away, read at the
connection's start): it checked them against the deposit alone, served on them, and
its claim was refused (ESpendingCapExceeded) -- a client whose cap was opened at 0, or
shared and spent, then settled after the half-close timeout and took its whole deposit
back (found by a second reader)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.daemon.fees import ServerFees
from dtp.errors import InvalidReceipt
from dtp.escrow import ConnectionTerms, Receipt, fee
from dtp.keys import HostIdentity

SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=100)


def _world(
    tmp_path: Path, cap_max: int
) -> tuple[LocalLedger, HostIdentity, HostIdentity, str, str]:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    server, client = HostIdentity.generate(), HostIdentity.generate()
    host = ledger.create_host(server, server.noise_public)
    ledger.add_service(server, host, 7000, "svc", SLA)
    ledger.faucet(client.sui_address, 10**6)
    cap = ledger.create_spending_cap(client, cap_max)
    cid = ledger.open_connection(client, host, 7000, cap, 10_000).connection_id
    return ledger, server, client, host, cid


def _receipt(client: HostIdentity, cid: str, nbytes: int) -> bytes:
    return Receipt(cid, nbytes, 0, fee(SLA, nbytes, 0), 1).sign(client).encode()


def test_receipts_past_what_the_cap_lets_be_claimed_are_refused(tmp_path: Path) -> None:
    ledger, server, client, host, cid = _world(tmp_path, 0)  # a cap opened at 0
    terms = ConnectionTerms.from_ledger(ledger, cid)
    assert terms.claim_limit == 0 and terms.payable == 0
    fees = ServerFees(ledger, server, host, tmp_path / "receipts.sqlite")

    async def main() -> None:
        with pytest.raises(InvalidReceipt, match="spending cap"):
            fees.accept(terms, _receipt(client, cid, 10 * 1024), lambda _: None)

    try:
        asyncio.run(main())
    finally:
        fees.close()
        ledger.close()


def test_a_cap_that_covers_the_deposit_does_not_bind(tmp_path: Path) -> None:
    ledger, server, client, host, cid = _world(tmp_path, 10**6)
    terms = ConnectionTerms.from_ledger(ledger, cid)
    assert terms.payable == terms.deposited == 10_000
    fees = ServerFees(ledger, server, host, tmp_path / "receipts.sqlite")
    kept: list[Receipt] = []

    async def main() -> None:
        fees.accept(terms, _receipt(client, cid, 10 * 1024), kept.append)
        for _ in range(200):
            if kept:
                break
            await asyncio.sleep(0.01)

    try:
        asyncio.run(main())
        assert kept and kept[0].total_amount == 100
    finally:
        fees.close()
        ledger.close()
