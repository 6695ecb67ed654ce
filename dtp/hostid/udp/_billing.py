"""The relay's billing read from the ledger (driver-side: the engine,
:class:`dtp.hostid.udp._engine.UdpBilling`, reads no ledger; docs/udp.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dtp.hostid.udp._engine import UdpBilling
from dtp.payments.receipts import ConnectionTerms

if TYPE_CHECKING:
    from dtp.ledger.interface import Ledger


def billing_from_ledger(ledger: Ledger, connection_id: str, **kw: Any) -> UdpBilling:
    """The relay's check of a ledger connection's payments: its SLA, client key and
    deposit read from ``ledger``; ``kw`` as :class:`UdpBilling` takes them."""
    terms = ConnectionTerms.from_ledger(ledger, connection_id)
    return UdpBilling(terms.scope, terms.sla, terms.client_public_key, terms.deposited, **kw)
