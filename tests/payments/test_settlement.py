"""A stored receipt whose connection was settled without it (the client settled after
the close timeout while the server was away) is done with (dtp.payments._settlement,
dtp.payments.receipt_store; docs/escrow.md §6.1, §7). It was marked with the escrow's claims
only, so it stayed "unclaimed" in the store for good: every start of the server read the
ledger for it and warned again, and the store reported MIST to claim that no claim could
ever get. Real LocalLedger and store files.

A money edge of the paid server's ledger use: a settlement whose newest stored receipt
pays nothing more settles plainly rather than claim 0 (a claim is a transaction's worth
of checks for nothing), and leaves nothing unclaimed in the store to try again."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._settlement import claim_and_settle, collect_refund, recover_unclaimed
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt, ReceiptScope, fee
from tests.support.paid_twins import ident

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
SERVER, CLIENT = ident(0x81), ident(0x82)
DEPOSIT = 100_000


def test_a_receipt_of_a_settled_connection_is_tried_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db", clock_ms=1_000_000)
    try:
        ledger.faucet(CLIENT.sui_address, 10_000_000)
        host = ledger.create_host(SERVER, SERVER.noise_public)
        ledger.add_service(SERVER, host, 7, "x", SLA)
        cap = ledger.create_spending_cap(CLIENT, 10**9)
        cid = ledger.open_connection(CLIENT, host, 7, cap, DEPOSIT).connection_id
        receipt = Receipt(ledger.receipt_scope(cid), 10240, 1, fee(SLA, 10240, 1), 1).sign(CLIENT)
        with ReceiptStore(tmp_path / "r.db") as store:
            assert store.keep(receipt)
        # the server is away past the timeout: the client takes its deposit back
        ledger.close_connection(CLIENT, cid)
        ledger.advance_clock(600_001)
        assert collect_refund(ledger, CLIENT, cid) == DEPOSIT
        with caplog.at_level(logging.WARNING, logger="dtp.payments._settlement"):
            for _ in range(3):  # three starts of the server
                with ReceiptStore(tmp_path / "r.db") as store:
                    assert recover_unclaimed(ledger, SERVER, store) == []
        warned = [r for r in caplog.records if cid in r.getMessage()]
        assert len(warned) == 1  # before: "settled before..." at every start
        with ReceiptStore(tmp_path / "r.db") as store:
            assert list(store.unclaimed()) == []
            kept = store.latest(cid)
            assert kept is not None and kept.receipt == receipt and kept.unclaimed == 0
        escrow = ledger.get_escrow(ledger.get_connection(cid).escrow)
        assert (escrow.claimed, escrow.refunded) == (0, DEPOSIT)
        audit = ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
    finally:
        ledger.close()


def _world(sla: Sla, cap_max: int) -> tuple[LocalLedger, HostIdentity, HostIdentity, str, str]:
    ledger = LocalLedger(":memory:", clock_ms=1_000_000)
    server, client = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(server.sui_address, 10**9)
    ledger.faucet(client.sui_address, 10**9)
    host = ledger.create_host(server, server.noise_public, [])
    ledger.add_service(server, host, 7, "svc", sla)
    cap = ledger.create_spending_cap(client, cap_max)
    return ledger, server, client, host, cap


def _receipt(
    client: HostIdentity, scope: ReceiptScope, nbytes: int, requests: int, sla: Sla, nonce: int
) -> Receipt:
    return Receipt(scope, nbytes, requests, fee(sla, nbytes, requests), nonce).sign(client)


def test_a_receipt_paying_nothing_more_settles_without_a_claim() -> None:
    sla = Sla(price_per_kib=10, price_per_request=5, min_deposit=100)
    ledger, server, client, host, cap = _world(sla, 400)
    second = ledger.open_connection(client, host, 7, cap, 200)
    # the client then lowers its cap below what the epoch reserved: nothing of the
    # settlement depends on it
    ledger.set_max_per_epoch(client, cap, 50)
    store = ReceiptStore(":memory:")
    store.keep(
        _receipt(client, ledger.receipt_scope(second.connection_id), 0, 0, sla, 1)
    )  # nothing used: 0 MIST
    cursor = ledger.head_cursor()
    settlement = claim_and_settle(ledger, server, second.connection_id, store)
    assert settlement is not None and settlement.claimed == 0 and settlement.refunded == 200
    assert ledger.get_connection(second.connection_id).settled
    names = [e.name for e in ledger.events(cursor)[0]]
    assert "ReceiptClaimed" not in names and "ConnectionSettled" in names
    assert list(store.unclaimed()) == []
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
