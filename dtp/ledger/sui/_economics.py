"""BCS layouts of the payment-model objects and events (move/dtp/sources/subscription.move,
sponsor.move, tickets.move, retention.move, payment.move), in the format of
:mod:`dtp.ledger.sui._codec`, and their decoding into the typed views of
:mod:`dtp.ledger._economics`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from dtp.ledger._economics import EconomicsObject, economics_object_from_fields
from dtp.ledger.sui._codec import BcsDecodeError, Layout, decode

__all__ = [
    "ECONOMICS_EVENT_LAYOUTS",
    "ECONOMICS_OBJECT_LAYOUTS",
    "decode_economics_object",
    "economics_table_id",
]


def _struct(*fields: tuple[str, Layout]) -> Layout:
    return ("struct", tuple(fields))


#: Object contents, field order = BCS order (``Balance`` is a u64, ``Table`` its header).
ECONOMICS_OBJECT_LAYOUTS: Final[dict[str, Layout]] = {
    "SubscriptionOffer": _struct(
        ("id", "id"),
        ("host", "id"),
        ("port", "u16"),
        ("provider", "address"),
        ("price_per_epoch", "u64"),
        ("period_epochs", "u64"),
        ("withdrawn", "bool"),
        ("withdrawn_epoch", "u64"),
    ),
    "Subscription": _struct(
        ("id", "id"),
        ("offer", "id"),
        ("holder", "address"),
        ("price_per_epoch", "u64"),
        ("start_epoch", "u64"),
        ("expires_epoch", "u64"),
        ("claimed_epochs", "u64"),
        ("funds", "u64"),
        ("refunded", "bool"),
    ),
    "SponsorPool": _struct(
        ("id", "id"),
        ("host", "id"),
        ("port", "u16"),
        ("provider", "address"),
        ("share_bps", "u64"),
        ("max_pledge", "u64"),
        ("funds", "u64"),
        ("reserved", "u64"),
        ("pledges", "table"),
    ),
    "TicketSale": _struct(
        ("id", "id"),
        ("organizer", "address"),
        ("title", "string"),
        ("ticket_price", "u64"),
        ("min_tickets", "u64"),
        ("max_tickets", "u64"),
        ("deadline_ms", "u64"),
        ("sold", "u64"),
        ("holders", "table"),
        ("funds", "u64"),
        ("on_air", "bool"),
        ("cancelled", "bool"),
    ),
    "RetentionTerms": _struct(
        ("id", "id"),
        ("host", "id"),
        ("port", "u16"),
        ("retention_ms", "u64"),
        ("storage_price_per_byte", "u64"),
        ("retired", "bool"),
    ),
    "RetainedRecord": _struct(
        ("id", "id"),
        ("connection", "id"),
        ("pipe", "id"),
        ("inner", "u64"),
        ("seq", "u64"),
        ("sender", "address"),
        ("receiver", "address"),
        ("data", "bytes"),
        ("stored_at_ms", "u64"),
        ("retention_ms", "u64"),
        ("deposit", "u64"),
        ("consumed", "bool"),
    ),
}

#: Event payloads, keyed by (module, struct name).
ECONOMICS_EVENT_LAYOUTS: Final[dict[tuple[str, str], Layout]] = {
    ("subscription", "SubscriptionOfferCreated"): _struct(
        ("offer", "id"),
        ("host", "id"),
        ("port", "u16"),
        ("provider", "address"),
        ("price_per_epoch", "u64"),
        ("period_epochs", "u64"),
    ),
    ("subscription", "Subscribed"): _struct(
        ("subscription", "id"),
        ("offer", "id"),
        ("holder", "address"),
        ("start_epoch", "u64"),
        ("expires_epoch", "u64"),
        ("paid", "u64"),
    ),
    ("subscription", "SubscriptionRenewed"): _struct(
        ("subscription", "id"),
        ("start_epoch", "u64"),
        ("expires_epoch", "u64"),
        ("paid", "u64"),
    ),
    ("subscription", "SubscriptionClaimed"): _struct(
        ("subscription", "id"), ("provider", "address"), ("epochs", "u64"), ("amount", "u64")
    ),
    ("subscription", "SubscriptionOfferWithdrawn"): _struct(("offer", "id"), ("epoch", "u64")),
    ("subscription", "SubscriptionRefunded"): _struct(
        ("subscription", "id"), ("holder", "address"), ("epochs", "u64"), ("amount", "u64")
    ),
    ("subscription", "SubscribedConnectionOpened"): _struct(
        ("subscription", "id"), ("connection", "id")
    ),
    ("subscription", "SubscribedConnectionEnded"): _struct(
        ("subscription", "id"), ("connection", "id"), ("by", "address"), ("refunded", "u64")
    ),
    ("sponsor", "SponsorPoolCreated"): _struct(
        ("pool", "id"),
        ("host", "id"),
        ("port", "u16"),
        ("provider", "address"),
        ("share_bps", "u64"),
        ("max_pledge", "u64"),
    ),
    ("sponsor", "SponsorPledgeLimitChanged"): _struct(("pool", "id"), ("max_pledge", "u64")),
    ("sponsor", "SponsorPoolFunded"): _struct(("pool", "id"), ("amount", "u64"), ("funds", "u64")),
    ("sponsor", "SponsorPoolWithdrawn"): _struct(
        ("pool", "id"), ("amount", "u64"), ("funds", "u64")
    ),
    ("sponsor", "SponsoredConnectionOpened"): _struct(
        ("pool", "id"), ("connection", "id"), ("pledge", "u64"), ("share_bps", "u64")
    ),
    ("sponsor", "SponsorReimbursed"): _struct(
        ("pool", "id"),
        ("connection", "id"),
        ("client", "address"),
        ("claimed", "u64"),
        ("amount", "u64"),
    ),
    ("tickets", "TicketSaleCreated"): _struct(
        ("sale", "id"),
        ("organizer", "address"),
        ("title", "string"),
        ("ticket_price", "u64"),
        ("min_tickets", "u64"),
        ("max_tickets", "u64"),
        ("deadline_ms", "u64"),
    ),
    ("tickets", "TicketsBought"): _struct(
        ("sale", "id"), ("buyer", "address"), ("count", "u64"), ("sold", "u64")
    ),
    ("tickets", "TicketedEventOnAir"): _struct(("sale", "id"), ("sold", "u64"), ("revenue", "u64")),
    ("tickets", "TicketSaleCancelled"): _struct(("sale", "id"), ("sold", "u64")),
    ("tickets", "TicketsRefunded"): _struct(
        ("sale", "id"), ("buyer", "address"), ("count", "u64"), ("amount", "u64")
    ),
    ("retention", "RetentionTermsCreated"): _struct(
        ("terms", "id"),
        ("host", "id"),
        ("port", "u16"),
        ("retention_ms", "u64"),
        ("storage_price_per_byte", "u64"),
    ),
    ("retention", "RecordRetained"): _struct(
        ("record", "id"),
        ("connection", "id"),
        ("pipe", "id"),
        ("inner", "u64"),
        ("seq", "u64"),
        ("sender", "address"),
        ("receiver", "address"),
        ("deposit", "u64"),
        ("delete_after_ms", "u64"),
        ("reclaim_after_ms", "u64"),
    ),
    ("retention", "RetentionTermsRetired"): _struct(
        ("terms", "id"), ("host", "id"), ("port", "u16")
    ),
    ("retention", "RecordConsumed"): _struct(("record", "id"), ("receiver", "address")),
    ("retention", "RecordDeleted"): _struct(
        ("record", "id"), ("sender", "address"), ("refunded", "u64")
    ),
    ("payment", "PaymentSent"): _struct(
        ("from", "address"), ("to", "address"), ("amount", "u64"), ("memo", "bytes")
    ),
}


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
    return economics_object_from_fields(struct, d["id"], version, d)


def economics_table_id(struct: str, data: bytes) -> str | None:
    """The ID of a TicketSale's holders table (None for other structs)."""
    if struct != "TicketSale":
        return None
    return str(decode(ECONOMICS_OBJECT_LAYOUTS[struct], data)["holders"]["id"])
