"""BCS layouts of the payment-model objects and events (move/dtp/sources/subscription.move,
sponsor.move, tickets.move, retention.move, payment.move), declared as Move's and read
by :mod:`dtp.ledger.sui._codec`, and their decoding into the typed views of
:mod:`dtp.ledger._economics`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from dtp.ledger._economics import EconomicsObject, economics_object_from_fields
from dtp.ledger.sui._codec import BcsDecodeError, Layout, _declared, decode

__all__ = [
    "ECONOMICS_EVENT_LAYOUTS",
    "ECONOMICS_OBJECT_LAYOUTS",
    "decode_economics_object",
    "economics_table_id",
    "pledges_table_id",
]


#: Object contents, as Move declares them (field order = BCS order).
ECONOMICS_OBJECT_LAYOUTS: Final[dict[str, Layout]] = {
    name: layout
    for (_, name), layout in _declared(
        """
    subscription::SubscriptionOffer { id: UID, version: u64, host: ID, port: u16,
        provider: address, price_per_epoch: u64, period_epochs: u64, withdrawn: bool,
        withdrawn_epoch: u64 }
    subscription::Subscription { id: UID, version: u64, offer: ID, holder: address,
        price_per_epoch: u64, start_epoch: u64, expires_epoch: u64, claimed_epochs: u64,
        funds: Balance<SUI>, refunded: bool }
    sponsor::SponsorPool { id: UID, version: u64, host: ID, port: u16, provider: address,
        share_bps: u64, max_pledge: u64, lanes: vector<ID> }
    sponsor::SponsorLane { id: UID, version: u64, pool: ID, funds: Balance<SUI>, reserved: u64,
        pledges: Table<ID, u64> }
    tickets::TicketSale { id: UID, version: u64, organizer: address, title: String,
        ticket_price: u64, min_tickets: u64, max_tickets: u64, deadline_ms: u64, sold: u64,
        holders: Table<address, u64>, funds: Balance<SUI>, on_air: bool, cancelled: bool }
    retention::RetentionTerms { id: UID, version: u64, host: ID, port: u16, retention_ms: u64,
        storage_price_per_byte: u64, retired: bool }
    retention::RetainedRecord { id: UID, version: u64, connection: ID, pipe: ID, inner: u64,
        seq: u64, sender: address, receiver: address, data: vector<u8>, stored_at_ms: u64,
        retention_ms: u64, deposit: Balance<SUI>, consumed: bool }
"""
    ).items()
}

#: Event payloads, keyed by (module, struct name).
ECONOMICS_EVENT_LAYOUTS: Final[dict[tuple[str, str], Layout]] = _declared(
    """
    subscription::SubscriptionOfferCreated { offer: ID, host: ID, port: u16, provider: address,
        price_per_epoch: u64, period_epochs: u64 }
    subscription::Subscribed { subscription: ID, offer: ID, holder: address, start_epoch: u64,
        expires_epoch: u64, paid: u64 }
    subscription::SubscriptionRenewed { subscription: ID, start_epoch: u64, expires_epoch: u64,
        paid: u64 }
    subscription::SubscriptionClaimed { subscription: ID, provider: address, epochs: u64,
        amount: u64 }
    subscription::SubscriptionOfferWithdrawn { offer: ID, epoch: u64 }
    subscription::SubscriptionRefunded { subscription: ID, holder: address, epochs: u64,
        amount: u64 }
    subscription::SubscribedConnectionOpened { subscription: ID, connection: ID }
    subscription::SubscribedConnectionEnded { subscription: ID, connection: ID, by: address,
        refunded: u64 }
    sponsor::SponsorPoolCreated { pool: ID, host: ID, port: u16, provider: address, share_bps: u64,
        max_pledge: u64, lanes: vector<ID> }
    sponsor::SponsorPledgeLimitChanged { pool: ID, max_pledge: u64 }
    sponsor::SponsorPoolFunded { pool: ID, lane: ID, amount: u64, funds: u64 }
    sponsor::SponsorPoolWithdrawn { pool: ID, lane: ID, amount: u64, funds: u64 }
    sponsor::SponsoredConnectionOpened { pool: ID, lane: ID, connection: ID, pledge: u64,
        share_bps: u64 }
    sponsor::SponsorReimbursed { pool: ID, lane: ID, connection: ID, client: address, claimed: u64,
        amount: u64 }
    tickets::TicketSaleCreated { sale: ID, organizer: address, title: String, ticket_price: u64,
        min_tickets: u64, max_tickets: u64, deadline_ms: u64 }
    tickets::TicketsBought { sale: ID, buyer: address, count: u64, sold: u64 }
    tickets::TicketedEventOnAir { sale: ID, sold: u64, revenue: u64 }
    tickets::TicketSaleCancelled { sale: ID, sold: u64 }
    tickets::TicketsRefunded { sale: ID, buyer: address, count: u64, amount: u64 }
    tickets::TicketsGivenBack { sale: ID, buyer: address, count: u64 }
    tickets::TicketSaleDeleted { sale: ID, organizer: address }
    retention::RetentionTermsCreated { terms: ID, host: ID, port: u16, retention_ms: u64,
        storage_price_per_byte: u64 }
    retention::RecordRetained { record: ID, connection: ID, pipe: ID, inner: u64, seq: u64,
        sender: address, receiver: address, deposit: u64, delete_after_ms: u64,
        reclaim_after_ms: u64 }
    retention::RetentionTermsRetired { terms: ID, host: ID, port: u16 }
    retention::RecordConsumed { record: ID, receiver: address }
    retention::RecordDeleted { record: ID, sender: address, refunded: u64 }
    payment::PaymentSent { from: address, to: address, amount: u64, memo: vector<u8> }
"""
)


def decode_economics_object(
    struct: str, version: int, data: bytes, table_entries: Mapping[str, int] | None = None
) -> EconomicsObject:
    """The typed view of a payment-model object from its BCS contents; ``table_entries``
    are a TicketSale's holders (read from the table's dynamic fields by the caller)."""
    layout = ECONOMICS_OBJECT_LAYOUTS.get(struct)
    if layout is None:
        raise BcsDecodeError(f"Unknown payment-model object type {struct}.")
    d: dict[str, Any] = decode(layout, data)
    if struct == "TicketSale":
        d["holders"] = dict(table_entries or {})
    elif struct == "SponsorLane":
        d["pledges"] = d["pledges"]["size"]  # (its entries are looked up one by one)
    return economics_object_from_fields(struct, d["id"], version, d)


def economics_table_id(struct: str, data: bytes) -> str | None:
    """The ID of a TicketSale's holders table, whose entries a read of the sale includes
    (None for other structs)."""
    if struct != "TicketSale":
        return None
    return str(decode(ECONOMICS_OBJECT_LAYOUTS[struct], data)["holders"]["id"])


def pledges_table_id(data: bytes) -> str:
    """The ID of a SponsorLane's pledges table (the parent of its entries' dynamic
    fields; it never changes for the lane's life)."""
    return str(decode(ECONOMICS_OBJECT_LAYOUTS["SponsorLane"], data)["pledges"]["id"])
