"""The daemon settles, at its next start, a connection whose claim reached the ledger
but whose "claimed" mark did not reach the receipt store.

The daemon claims, then closes and settles, in separate transactions, and the mark
waits for the writer's next write: killed in between, its restart claimed the receipt
again, was refused (the escrow had that nonce), and stopped there -- the connection left
Open (the client's deposit held until its own timeout) and the receipt "unclaimed" for
every later start to fail on again. Found by a second reader (a SIGKILL right after the
claim); here the claim is made on the ledger directly, as the killed run left it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from dtp.chain.local import LocalLedger
from dtp.chain.objects import ConnectionState, Sla
from dtp.daemon.fees import ServerFees
from dtp.escrow import ConnectionTerms, Receipt, fee
from dtp.receipt_store import ReceiptStore
from tests.paid_twins import ident

SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=1000)
DEPOSIT = 1_000_000
SERVER, CLIENT = ident(0x11), ident(0x22)


def test_a_claim_whose_mark_was_lost_is_settled_at_the_next_start(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        host_id = ledger.create_host(SERVER, SERVER.noise_public)
        ledger.add_service(SERVER, host_id, 80, "raw", SLA)
        ledger.faucet(CLIENT.sui_address, 10 * DEPOSIT)
        cap = ledger.create_spending_cap(CLIENT, 10 * DEPOSIT)
        opened = ledger.open_connection(CLIENT, host_id, 80, cap, DEPOSIT)
        cid = opened.connection_id
        receipt = Receipt(cid, 40960, 0, fee(SLA, 40960, 0), 1).sign(CLIENT)

        # the first run: the receipt stored, then claimed on the ledger -- and killed
        fees = ServerFees(ledger, SERVER, host_id, tmp_path / "receipts.db")
        terms = ConnectionTerms.from_ledger(ledger, cid)

        async def accept() -> None:
            fees.accept(terms, receipt.encode(), lambda _: None)
            await asyncio.to_thread(fees.writer.flush)

        asyncio.run(accept())
        fees.close()
        assert ledger.claim(SERVER, opened.escrow_id, receipt) == receipt.total_amount

        # the next start
        fees = ServerFees(ledger, SERVER, host_id, tmp_path / "receipts.db")
        try:
            done = asyncio.run(fees.claim_leftovers())
        finally:
            fees.close()
        assert [cid for cid, _ in done] == [cid]
        tc = ledger.get_connection(cid)
        assert tc.settled and tc.state == ConnectionState.CLOSED
        escrow = ledger.get_escrow(opened.escrow_id)
        assert escrow.claimed == receipt.total_amount
        assert escrow.refunded == DEPOSIT - receipt.total_amount
        with ReceiptStore(tmp_path / "receipts.db") as store:
            assert list(store.unclaimed()) == []  # the start after finds nothing to do
    finally:
        ledger.close()
