"""A money edge of the paid server's ledger use: a settlement whose newest stored receipt
pays nothing more settles plainly rather than claim 0 (a claim is a transaction's worth
of checks for nothing), and leaves nothing unclaimed in the store to try again.
"""

from __future__ import annotations

from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.escrow import Receipt, fee
from dtp.keys import HostIdentity
from dtp.receipt_store import ReceiptStore
from dtp.settlement import claim_and_settle


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
    client: HostIdentity, cid: str, nbytes: int, requests: int, sla: Sla, nonce: int
) -> Receipt:
    return Receipt(cid, nbytes, requests, fee(sla, nbytes, requests), nonce).sign(client)


def test_a_receipt_paying_nothing_more_settles_without_a_claim() -> None:
    sla = Sla(price_per_kib=10, price_per_request=5, min_deposit=100)
    ledger, server, client, host, cap = _world(sla, 400)
    second = ledger.open_connection(client, host, 7, cap, 200)
    # the client then lowers its cap below what the epoch reserved: nothing of the
    # settlement depends on it
    ledger.set_max_per_epoch(client, cap, 50)
    store = ReceiptStore(":memory:")
    store.keep(_receipt(client, second.connection_id, 0, 0, sla, 1))  # nothing used: 0 MIST
    cursor = ledger.head_cursor()
    settlement = claim_and_settle(ledger, server, second.connection_id, store)
    assert settlement is not None and settlement.claimed == 0 and settlement.refunded == 200
    assert ledger.get_connection(second.connection_id).settled
    names = [e.name for e in ledger.events(cursor)[0]]
    assert "ReceiptClaimed" not in names and "ConnectionSettled" in names
    assert list(store.unclaimed()) == []
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
