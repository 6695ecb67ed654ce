"""What a paid server does with a subscription offer sold with its host
(docs/escrow.md §13): it earns nothing, so its connections are refused or closed, and
the server withdraws it (anyone may after a sale), so the holders take back the epochs
not begun and its connections can be ended (``subscription::end_connection``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dtp.errors import ChainError
from dtp.ledger._objects import Host, Settlement, normalize_id

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger._objects import Escrow, TransportControl
    from dtp.ledger.interface import Ledger

__all__ = ["end_sold_subscription", "not_its_server", "withdraw_sold_offer"]

logger = logging.getLogger(__name__)


def not_its_server(tc: TransportControl, identity: HostIdentity) -> bool:
    """Whether ``identity`` is not the server of the subscribed connection ``tc`` (its
    offer's provider, the host's authority when it opened): then only
    ``subscription::end_connection`` can end it, once its subscription is over on the
    ledger -- the server's own close and settlement are refused (``ENotParticipant``)."""
    return tc.subscription is not None and normalize_id(tc.server, "address") != normalize_id(
        identity.sui_address, "address"
    )


def withdraw_sold_offer(
    ledger: Ledger, identity: HostIdentity, subscription_id: str, host: Host | None = None
) -> bool:
    """Withdraw the offer of ``subscription_id`` if it was sold with its host
    (``subscription::withdraw_offer``); True when it is withdrawn now, by anyone."""
    offer = ledger.get_subscription_offer(ledger.get_subscription(subscription_id).offer)
    if offer.withdrawn:
        return False
    if host is None or normalize_id(host.id, "host ID") != normalize_id(offer.host, "host ID"):
        host = ledger.get_host(offer.host)
    if not offer.sold(host.authority):
        return False
    try:
        ledger.withdraw_subscription_offer(identity, offer.id, offer.host)
    except ChainError as exc:
        if getattr(exc, "name", None) != "EOfferWithdrawn":
            raise
        return True  # (another withdrew it between the read and the transaction)
    logger.info(
        "withdrew subscription offer %s of host %s: %s, its provider, no longer holds "
        "the host; its holders may take back the epochs not begun",
        offer.id,
        offer.host,
        offer.provider,
    )
    return True


def end_sold_subscription(
    ledger: Ledger, identity: HostIdentity, tc: TransportControl, escrow: Escrow
) -> Settlement:
    """End the subscribed connection ``tc`` that ``identity`` does not serve: its sold
    offer withdrawn first, then ``subscription::end_connection`` (``ESubscriptionLive``
    while the subscription still covers it)."""
    assert tc.subscription is not None
    withdraw_sold_offer(ledger, identity, tc.subscription)
    refunded = ledger.end_subscribed_connection(
        identity, tc.id, tc.subscription, tc.escrow, escrow.spending_cap
    )
    logger.info(
        "ended connection %s of subscription %s: %d MIST back to its client",
        tc.id,
        tc.subscription,
        refunded,
    )
    return Settlement(paid=0, claimed=escrow.claimed, refunded=refunded)
