"""A stored receipt whose connection was settled without it (the client settled after
the close timeout while the server was away) is done with (dtp.settlement,
dtp.receipt_store; docs/escrow.md §6.1, §7). It was marked with the escrow's claims
only, so it stayed "unclaimed" in the store for good: every start of the server read the
ledger for it and warned again, and the store reported MIST to claim that no claim could
ever get. Real LocalLedger and store files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.escrow import Receipt, fee
from dtp.receipt_store import ReceiptStore
from dtp.settlement import collect_refund, recover_unclaimed
from tests.paid_twins import ident

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
        receipt = Receipt(cid, 10240, 1, fee(SLA, 10240, 1), 1).sign(CLIENT)
        with ReceiptStore(tmp_path / "r.db") as store:
            assert store.keep(receipt)
        # the server is away past the timeout: the client takes its deposit back
        ledger.close_connection(CLIENT, cid)
        ledger.advance_clock(600_001)
        assert collect_refund(ledger, CLIENT, cid) == DEPOSIT
        with caplog.at_level(logging.WARNING, logger="dtp.settlement"):
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
