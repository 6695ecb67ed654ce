"""Two money edges of the paid server's ledger use, found by a second reader.

- A connection opened under a spending cap whose limit was 0 extends no credit and
  secures no receipt: the limit at open is what no raise can give back. Read as "not
  recorded" (an old escrow), it followed the limit now, so a client could raise the
  limit, be served on it, and lower it again before the server's claim, which the ledger
  then refused -- served for nothing.
- A settlement whose newest stored receipt pays nothing more settles plainly rather than
  claim 0: a claim of 0 still charges the cap, refused when this epoch spent more than
  the limit the connection opened under, and the settlement failed with nothing left
  unclaimed to try again (the deposit and the host's connection slot held until the
  client's timeout).
"""

from __future__ import annotations

from dtp.chain.local import LocalLedger
from dtp.chain.objects import Escrow, Sla, SpendingCap
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


def test_a_connection_opened_under_a_zero_limit_is_not_served_on_a_raise() -> None:
    sla = Sla(price_per_kib=1000, price_per_request=0, min_deposit=10_000)
    ledger, _server, client, host, cap = _world(sla, 0)
    opened = ledger.open_connection(client, host, 7, cap, 10_000)
    escrow = ledger.get_escrow(opened.escrow_id)
    assert escrow.cap_max_per_epoch == 0  # (recorded: opened under 0)
    ledger.set_max_per_epoch(client, cap, 10_000)  # a raise the client can take back
    now = ledger.get_cap(cap)
    epoch = ledger.epoch()
    assert now.serving_room(epoch, escrow.cap_max_per_epoch) == 0
    assert now.secured(epoch, escrow.cap_max_per_epoch) == 0
    # an escrow from before the limit was recorded follows the limit now, as its claims do
    assert now.serving_room(epoch, None) == 10_000
    assert now.secured(epoch, None) == 10_000


def test_an_escrow_without_the_recorded_limit_reads_as_not_recorded() -> None:
    escrow = Escrow(
        "0x1", 1, "0x2", "0x3", b"k" * 32, "0x4", "0x5", Sla(1, 0, 0), 0, 0, 0, 0, 0, False
    )
    assert escrow.cap_max_per_epoch is None
    cap = SpendingCap("0x5", 1, "0x3", 500, 0, 0)
    assert cap.serving_room(0, escrow.cap_max_per_epoch) == 500
    assert cap.remaining(0, escrow.cap_max_per_epoch) == 500


def test_a_receipt_paying_nothing_more_settles_without_a_claim() -> None:
    sla = Sla(price_per_kib=10, price_per_request=5, min_deposit=100)
    ledger, server, client, host, cap = _world(sla, 100)
    first = ledger.open_connection(client, host, 7, cap, 200)
    # the cap's whole limit spent this epoch, then lowered below what was spent
    ledger.claim(server, first.escrow_id, _receipt(client, first.connection_id, 0, 20, sla, 1))
    ledger.set_max_per_epoch(client, cap, 50)
    second = ledger.open_connection(client, host, 7, cap, 200)  # opened under 50
    store = ReceiptStore(":memory:")
    store.keep(_receipt(client, second.connection_id, 0, 0, sla, 1))  # nothing used: 0 MIST
    settlement = claim_and_settle(ledger, server, second.connection_id, store)
    assert settlement is not None and settlement.claimed == 0 and settlement.refunded == 200
    assert ledger.get_connection(second.connection_id).settled
    assert list(store.unclaimed()) == []
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
