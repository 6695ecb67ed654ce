"""The DTP control plane: the :class:`Ledger` interface, its objects, and its
implementations (:class:`LocalLedger`, embedded in SQLite; ``SuiLedger``, real Sui).

``LocalLedger`` is imported lazily, so that reading the objects or the interface does not
open SQLite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dtp.chain.economics import (
    RetainedRecord,
    RetentionTerms,
    SponsorPool,
    Subscription,
    SubscriptionOffer,
    TicketSale,
)
from dtp.chain.ledger import Ledger
from dtp.chain.objects import (
    Broadcast,
    ChainObject,
    ConnectionState,
    Escrow,
    Event,
    EventFilter,
    Firewall,
    FirewallMode,
    Host,
    InnerPipe,
    ObjectRef,
    OpenedConnection,
    Pipe,
    Service,
    Settlement,
    Sla,
    SpendingCap,
    TransportControl,
)

if TYPE_CHECKING:
    from dtp.chain.local import LocalLedger

__all__ = [
    "Broadcast",
    "ChainObject",
    "ConnectionState",
    "Escrow",
    "Event",
    "EventFilter",
    "Firewall",
    "FirewallMode",
    "Host",
    "InnerPipe",
    "Ledger",
    "LocalLedger",
    "ObjectRef",
    "OpenedConnection",
    "Pipe",
    "RetainedRecord",
    "RetentionTerms",
    "Service",
    "Settlement",
    "Sla",
    "SpendingCap",
    "SponsorPool",
    "Subscription",
    "SubscriptionOffer",
    "TicketSale",
    "TransportControl",
]


def __getattr__(name: str) -> Any:
    if name == "LocalLedger":
        from dtp.chain.local import LocalLedger

        return LocalLedger
    raise AttributeError(f"module 'dtp.chain' has no attribute {name!r}")
