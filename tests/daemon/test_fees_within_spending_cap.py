"""The services daemon takes receipts up to the deposit: the open reserved it on the
client's spending cap, so no claim within it can be refused by the cap, however the
client spends or lowers it afterwards (docs/escrow.md §4)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dtp.daemon._fees import ServerFees
from dtp.errors import InvalidReceipt
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import ConnectionTerms, Receipt, ReceiptScope, fee
from tests.support.settlements import settled_escrow

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


def _receipt(client: HostIdentity, scope: ReceiptScope, nbytes: int) -> bytes:
    return Receipt(scope, nbytes, 0, fee(SLA, nbytes, 0), 1).sign(client).encode()


def test_receipts_up_to_the_deposit_are_taken_whatever_the_cap(tmp_path: Path) -> None:
    """The deposit was reserved on the cap at the open: a cap used up by it and lowered
    to nothing still lets every receipt up to the deposit be claimed."""
    ledger, server, client, host, cid = _world(tmp_path, 10_000)  # used up by the open
    cap = settled_escrow(ledger, cid).spending_cap
    ledger.set_max_per_epoch(client, cap, 0)
    terms = ConnectionTerms.from_ledger(ledger, cid)
    assert terms.deposited == 10_000
    fees = ServerFees(ledger, server, host, tmp_path / "receipts.sqlite")
    kept: list[Receipt] = []

    async def main() -> None:
        fees.accept(terms, _receipt(client, terms.scope, 1000 * 1024), kept.append)  # all of it
        for _ in range(200):
            if kept:
                break
            await asyncio.sleep(0.01)

    try:
        asyncio.run(main())
        assert kept and kept[0].total_amount == 10_000
        assert ledger.claim(server, terms.escrow_id, kept[0]) == 10_000
    finally:
        fees.close()
        ledger.close()


def test_a_receipt_past_the_deposit_is_refused(tmp_path: Path) -> None:
    ledger, server, client, host, cid = _world(tmp_path, 10**6)
    terms = ConnectionTerms.from_ledger(ledger, cid)
    fees = ServerFees(ledger, server, host, tmp_path / "receipts.sqlite")

    async def main() -> None:
        with pytest.raises(InvalidReceipt) as refused:
            fees.accept(terms, _receipt(client, terms.scope, 1001 * 1024), lambda _: None)
        assert refused.value.name == "EReceiptExceedsDeposit"

    try:
        asyncio.run(main())
    finally:
        fees.close()
        ledger.close()


def test_a_cap_that_covers_the_deposit_does_not_bind(tmp_path: Path) -> None:
    ledger, server, client, host, cid = _world(tmp_path, 10**6)
    terms = ConnectionTerms.from_ledger(ledger, cid)
    assert terms.deposited == 10_000
    fees = ServerFees(ledger, server, host, tmp_path / "receipts.sqlite")
    kept: list[Receipt] = []

    async def main() -> None:
        fees.accept(terms, _receipt(client, terms.scope, 10 * 1024), kept.append)
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
