"""A receipt lower than the one stored never replaces it (dtp.payments.receipt_store,
dtp.payments._receipt_writer; docs/escrow.md §6: receipts are cumulative, "must not be lower than
the previous one"). The store compared nonces only: a client that, after a receipt for
all it used, signed one with a higher nonce for less (a valid receipt for a smaller
usage) had the store throw the first away -- and the daemon, which checks a receipt
against what was claimed rather than against the previous receipt, then claimed the
small one for service the big one paid. Real SQLite files and a real LocalLedger file."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from dtp.daemon._fees import ServerFees
from dtp.errors import InvalidReceipt
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import ConnectionTerms, Receipt, ReceiptScope, fee
from tests.support.paid_twins import ident
from tests.support.scopes import scope_of

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
SERVER, CLIENT = ident(0x77), ident(0x78)
CID = "0x" + "5e" * 32
BIG, SMALL = 50 << 20, 1024


def receipt(total_bytes: int, nonce: int, scope: ReceiptScope | None = None) -> Receipt:
    scope = scope_of(CID) if scope is None else scope
    return Receipt(scope, total_bytes, 1, fee(SLA, total_bytes, 1), nonce).sign(CLIENT)


def test_the_store_keeps_the_higher_receipt(tmp_path: Path) -> None:
    with ReceiptStore(tmp_path / "r.db") as store:
        assert store.keep(receipt(BIG, 1))
        assert not store.keep(receipt(SMALL, 2))  # newer, but lower
        stored = store.latest(CID)
        assert stored is not None and stored.receipt.total_bytes == BIG
        assert store.keep_many([receipt(SMALL, 3)]) == [False]
        assert store.keep(receipt(BIG, 4))  # the same amount again: cumulative
        assert store.keep(receipt(BIG + 1, 5))
        assert not store.keep(receipt(BIG + 2, 5))  # (a replayed nonce, as before)
        stored = store.latest(CID)
        assert stored is not None and stored.receipt.nonce == 5
    with ReceiptStore(tmp_path / "r.db") as again:  # on disk so
        stored = again.latest(CID)
        assert stored is not None and stored.receipt.total_bytes == BIG + 1


def test_the_writer_counts_only_what_it_stored(tmp_path: Path) -> None:
    with ReceiptStore(tmp_path / "r.db") as store:
        writer = ReceiptWriter(store)
        counted: list[int] = []
        lock = threading.Lock()

        def done(r: Receipt) -> None:
            with lock:
                counted.append(r.nonce)

        try:
            writer.submit(receipt(BIG, 1), done)
            assert writer.flush()
            writer.submit(receipt(SMALL, 2), done)
            assert writer.flush()
            writer.submit(receipt(BIG + 1024, 3), done)
            assert writer.flush()
        finally:
            assert writer.close()
        assert counted == [1, 3]


def test_the_daemon_claims_the_receipt_it_served_on(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        ledger.faucet(CLIENT.sui_address, 10_000_000)
        host = ledger.create_host(SERVER, SERVER.noise_public)
        ledger.add_service(SERVER, host, 7, "forward", SLA)
        cap = ledger.create_spending_cap(CLIENT, 10**9)
        deposit = 1_000_000
        cid = ledger.open_connection(CLIENT, host, 7, cap, deposit).connection_id
        scope = ledger.receipt_scope(cid)
        big, small = receipt(BIG, 1, scope), receipt(SMALL, 2, scope)

        async def main() -> tuple[list[int], int]:
            fees = ServerFees(ledger, SERVER, host, tmp_path / "r.db")
            try:
                terms = ConnectionTerms.from_ledger(ledger, cid)
                counted: list[int] = []
                fees.accept(terms, big.encode(), lambda r: counted.append(r.total_amount))
                await asyncio.to_thread(fees.writer.flush)
                # refused as it comes now (the daemon checks it against the newest
                # receipt); before, it was checked against the claimed amount only
                with pytest.raises(InvalidReceipt):
                    fees.accept(terms, small.encode(), lambda r: counted.append(r.total_amount))
                await asyncio.to_thread(fees.writer.flush)
                settled = await fees.settle(cid)
                await asyncio.sleep(0)  # (the writer's callbacks run on this loop)
                return counted, settled.claimed
            finally:
                fees.close()

        counted, claimed = asyncio.run(main())
        assert counted == [big.total_amount]
        assert claimed == big.total_amount  # before: the small one's, 15 MIST
        escrow = ledger.get_escrow(ledger.get_connection(cid).escrow)
        assert escrow.claimed + escrow.refunded == deposit
        audit = ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
    finally:
        ledger.close()
