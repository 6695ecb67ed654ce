"""The DTP control plane: the :class:`Ledger` interface, its objects, and its
implementations (:class:`LocalLedger`, embedded in SQLite; ``SuiLedger``, real Sui).

:func:`open_ledger` opens either from a ledger spec (``local``, ``./ledger.sqlite``,
``testnet``, ``localnet@http://127.0.0.1:9000``...; :func:`parse_ledger_spec` checks one
without opening anything; docs/sui.md, "Ledger specs").

``LocalLedger`` is imported lazily, so that reading the objects or the interface does not
open SQLite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dtp.ledger._economics import (
    RetainedRecord,
    RetentionTerms,
    SponsorLane,
    SponsorPledge,
    SponsorPool,
    Subscription,
    SubscriptionOffer,
    TicketSale,
)
from dtp.ledger._objects import (
    Broadcast,
    BroadcastStake,
    ChainObject,
    ConnectionState,
    Escrow,
    Event,
    EventFilter,
    EventRead,
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
from dtp.ledger._open import open_ledger
from dtp.ledger._spec import LedgerSpec, parse_ledger_spec
from dtp.ledger.interface import Ledger

if TYPE_CHECKING:
    from dtp.ledger.local import LocalLedger

__all__ = [
    "Broadcast",
    "BroadcastStake",
    "ChainObject",
    "ConnectionState",
    "Escrow",
    "Event",
    "EventFilter",
    "EventRead",
    "Firewall",
    "FirewallMode",
    "Host",
    "InnerPipe",
    "Ledger",
    "LedgerSpec",
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
    "SponsorLane",
    "SponsorPledge",
    "SponsorPool",
    "Subscription",
    "SubscriptionOffer",
    "TicketSale",
    "TransportControl",
    "open_ledger",
    "parse_ledger_spec",
]


def __getattr__(name: str) -> Any:
    if name == "LocalLedger":
        from dtp.ledger.local import LocalLedger

        return LocalLedger
    raise AttributeError(f"module 'dtp.ledger' has no attribute {name!r}")
