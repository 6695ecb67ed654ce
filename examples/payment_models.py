"""The four payment models of DTP beyond per-byte escrow, each run end to end
(docs/escrow.md §13-16):

- a pre-paid subscription: unmetered connections for N epochs, renewal, and refunds of
  unused epochs when the provider withdraws;
- cost shifting: the service pays a share of its clients' transport cost;
- tickets: an event goes on air only if enough tickets sell, else everyone is refunded;
- data retention: ledger-carried data kept for a while, its storage deposit returned.

Run it:  python examples/payment_models.py
Every function runs on a fresh :class:`Embedded` ledger (an in-memory LocalLedger) unless
given another :class:`Place`: the calls on ``place.ledger`` are the ``Ledger``
interface's, the same on SuiLedger; funding, moving the clock and the MIST audit are the
place's (on Sui: the network's faucet, its own clock, the gas paid counted). Every
function checks MIST conservation before returning.
"""

from __future__ import annotations

from typing import Protocol

from dtp.identity.keys import HostIdentity
from dtp.ledger import Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import Receipt

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1_000)


class Place(Protocol):
    """A ledger and what only its network can do."""

    @property
    def ledger(self) -> Ledger:
        """The ledger the models run on."""

    def fund(self, address: str, mist: int) -> None:
        """Give ``address`` test SUI."""

    def advance_epoch(self) -> None:
        """Start the next epoch."""

    def set_clock(self, ms: int) -> None:
        """Set the ledger clock."""

    def advance_clock(self, ms: int) -> None:
        """Move the ledger clock forward."""

    def conserved(self) -> bool:
        """Every MIST ever minted is still somewhere (or was paid as gas)."""


class Embedded:
    """The embedded ledger in memory, its clock frozen at 0 and moved by hand."""

    def __init__(self) -> None:
        self.ledger = LocalLedger(":memory:", clock_ms=0)

    def fund(self, address: str, mist: int) -> None:
        self.ledger.faucet(address, mist)

    def advance_epoch(self) -> None:
        self.ledger.advance_epoch()

    def set_clock(self, ms: int) -> None:
        self.ledger.set_clock(ms)

    def advance_clock(self, ms: int) -> None:
        self.ledger.advance_clock(ms)

    def conserved(self) -> bool:
        """Every MIST ever minted is in a balance, an escrow or a broadcast/ticket pool."""
        a = self.ledger.audit()
        return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"]


def world(place: Place | None = None) -> tuple[Place, HostIdentity, HostIdentity, str, str]:
    """``place`` (a new :class:`Embedded` when None) with a provider's host serving port 7
    under ``SLA``, and a funded client with a spending cap."""
    where: Place = place if place is not None else Embedded()
    provider, client = HostIdentity.generate(), HostIdentity.generate()
    where.fund(provider.sui_address, 100_000)
    where.fund(client.sui_address, 100_000)
    host = where.ledger.create_host(provider, provider.noise_public)
    where.ledger.add_service(provider, host, 7, "echo", SLA)
    cap = where.ledger.create_spending_cap(client, 1_000_000)
    return where, provider, client, host, cap


def subscription(place: Place | None = None) -> dict[str, int]:
    """Buy 3 epochs at 100 MIST, use an unmetered connection, renew, get refunds."""
    place, provider, client, host, cap = world(place)
    ledger = place.ledger
    offer = ledger.create_subscription_offer(provider, host, 7, price_per_epoch=100)
    sub = ledger.subscribe(client, offer, epochs=3)  # 300 MIST, epochs 0..2
    conn = ledger.open_subscribed_connection(client, sub, cap)  # no deposit needed
    free = Receipt(ledger.receipt_scope(conn.connection_id), 10 << 20, 500, 0, 1).sign(client)
    assert ledger.claim(provider, conn.escrow_id, free) == 0  # 10 MiB for nothing
    place.advance_epoch()
    earned = ledger.claim_subscription(provider, sub)  # epochs 0 and 1 have begun
    expires = ledger.renew_subscription(client, sub, epochs=2)  # now until epoch 5
    ledger.withdraw_subscription_offer(provider, offer)  # in epoch 1
    refunded = ledger.refund_subscription(client, sub)  # epochs 2, 3 and 4 never began
    assert place.conserved()
    return {"earned": earned, "expires": expires, "refunded": refunded}


def sponsored(place: Place | None = None) -> dict[str, int]:
    """The provider pays half of the transport cost."""
    place, provider, client, host, cap = world(place)
    ledger = place.ledger
    pool = ledger.create_sponsor_pool(provider, host, 7, share_bps=5_000, max_pledge=2_000)
    ledger.fund_sponsor_pool(provider, pool, 10_000)
    client_part, provider_part = ledger.get_sponsor_pool(pool).quote(120)  # shown up front
    conn = ledger.open_sponsored_connection(client, pool, cap, deposit=1_000)
    # a receipt names the package, the escrow and the connection it pays for
    scope = ledger.receipt_scope(conn.connection_id)
    receipt = Receipt(scope, 10_240, 4, 120, 1).sign(client)  # fee 120
    ledger.close_connection(client, conn.connection_id)
    ledger.settle_with_receipt(provider, conn.connection_id, receipt)
    back = ledger.reimburse(client, pool, conn.connection_id)
    assert back == provider_part and 120 - back == client_part
    assert place.conserved()
    return {"client_pays": client_part, "provider_pays": back}


def tickets(place: Place | None = None) -> dict[str, int]:
    """One show reaches its threshold and airs; another does not, and refunds."""
    place, organizer, fan, _, _ = world(place)
    ledger = place.ledger
    show = ledger.create_ticket_sale(organizer, "launch", 50, 2, 0, deadline_ms=10_000)
    ledger.buy_tickets(fan, show, 2)
    revenue = ledger.go_on_air(organizer, show)  # 2 sold >= 2 needed
    flop = ledger.create_ticket_sale(organizer, "encore", 50, 10, 0, deadline_ms=10_000)
    ledger.buy_tickets(fan, flop, 3)
    place.set_clock(10_001)  # the deadline passes with 3 of 10 sold
    refund = ledger.refund_tickets(fan, flop)
    assert place.conserved()
    return {"revenue": revenue, "refund": refund}


def retention(place: Place | None = None) -> dict[str, int]:
    """Data through the ledger carrier, kept 60 s at 2 MIST per byte of deposit."""
    place, provider, client, host, cap = world(place)
    ledger = place.ledger
    terms = ledger.create_retention_terms(provider, host, 7, 60_000, 2)
    conn = ledger.open_connection(client, host, 7, cap, deposit=1_000)
    pipe = ledger.create_pipe(client, conn.connection_id, 1)
    record = ledger.send_retained(client, pipe, terms, 0, b"hello world")  # 22 MIST
    deposit = ledger.get_retained_record(record).deposit
    ledger.confirm_consumed(provider, record)  # the receiver has read it
    place.advance_clock(60_000)
    returned = ledger.delete_retained(client, record)
    assert place.conserved()
    return {"deposit": deposit, "returned": returned}


def main() -> None:
    """Run the four models and print what moved."""
    for name, run in (
        ("subscription", subscription),
        ("sponsored", sponsored),
        ("tickets", tickets),
        ("retention", retention),
    ):
        print(f"{name:<13}", " ".join(f"{k}={v}" for k, v in run().items()))
    print("MIST conserved in every run")


if __name__ == "__main__":
    main()
