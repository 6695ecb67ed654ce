"""The ledger reads both paid servers make (the asyncio one in a worker thread), with
what a failed one logs on the server's own logger; what follows is
:class:`~dtp.hostid.paid._server_core.PaidServerCore`'s to decide.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dtp.errors import ChainError, move_error
from dtp.payments._gate import CheckedT, SubscribedT, ended_on_ledger, subscriptions_over
from dtp.payments._serving import release_receipts

if TYPE_CHECKING:
    from dtp.hostid.paid._server_core import PaidServerCore
    from dtp.ledger._objects import Host
    from dtp.ledger.interface import Ledger
    from dtp.payments._receipt_writer import ReceiptWriter
    from dtp.payments._serving import Recovery
    from dtp.payments.receipt_store import ReceiptStore

#: Where the release's settlement of the ends waiting for a batch logs: with the rest of
#: that batch's lines (dtp.payments._serving.DeferredEnds)
_serving_logger = logging.getLogger("dtp.payments._serving")

__all__ = [
    "ended_connections",
    "ended_subscriptions",
    "host_to_refresh",
    "refresh_failed",
    "refused_clients",
    "release_store",
    "served_host",
    "writer_done",
]


def served_host(ledger: Ledger, host_id: str, port: int) -> Host:
    """The Host ``host_id`` as a server of its ``port`` reads it at the start;
    ServiceNotFound (``host::EServiceNotFound``) when it publishes no service on that
    port: nobody could be admitted to it."""
    host = ledger.get_host(host_id)
    if port not in host.services:
        raise move_error("host", "EServiceNotFound", f"port {port} of host {host_id}")
    return host


def host_to_refresh(ledger: Ledger, host_id: str, log: logging.Logger) -> Host | None:
    """The Host read for a refresh of the policy, or None (a warning logged on ``log``)
    when the ledger cannot be read now: the open connections keep the policy they have
    until the next refresh reads it."""
    try:
        return ledger.get_host(host_id)
    except ChainError as exc:
        log.warning("cannot read host %s: %s", host_id, exc)
        return None


def refused_clients(
    ledger: Ledger, host: Host, clients: frozenset[str], log: logging.Logger
) -> frozenset[str]:
    """Of ``clients``, those the firewall of ``host`` refuses; none (a warning logged)
    when the lists cannot be read now: the next refresh looks again."""
    if not clients:
        return frozenset()
    try:
        return ledger.refused(host, clients)
    except ChainError as exc:
        log.warning("cannot read the firewall lists of host %s: %s", host.id, exc)
        return frozenset()


def ended_connections(
    ledger: Ledger, due: Sequence[CheckedT], log: logging.Logger
) -> list[CheckedT]:
    """Those of the connections ``due`` no longer Open on the ledger, to be closed; none
    (a warning logged) when it cannot be read: due again at the next check."""
    if not due:
        return []
    try:
        return ended_on_ledger(ledger, due)
    except ChainError as exc:
        log.warning("cannot read the state of open connections: %s", exc)
        return []


def ended_subscriptions(
    ledger: Ledger, due: Sequence[SubscribedT], log: logging.Logger, host: Host | None = None
) -> list[tuple[SubscribedT, str]]:
    """Those of the connections ``due`` opened with a subscription now over, each with
    why, to be closed; none (a warning logged) when the ledger cannot be read."""
    if not any(conn.subscription is not None for conn in due):
        return []
    try:
        return subscriptions_over(ledger, due, host)
    except ChainError as exc:
        log.warning("cannot read the subscriptions of open connections: %s", exc)
        return []


def refresh_failed(host_id: str, interval: float, log: logging.Logger) -> None:
    """Log a policy refresh that raised other than a ChainError, with its traceback: the
    policy loop goes on, or the firewall would go unenforced, silently."""
    log.exception(
        "refreshing the policy of host %s failed; trying again in %g s", host_id, interval
    )


def release_store(
    core: PaidServerCore[Any],
    writer: ReceiptWriter,
    store: ReceiptStore,
    own_store: bool,
    recovery: Recovery | None,
    recovery_wait: float | None = None,
) -> None:
    """The release of a closed server with no work left: a recovery under way ends
    first (``recovery_wait`` at most), then :func:`release_receipts` stops the writer,
    detaches and closes the store if ``own_store``."""
    if recovery is not None:
        recovery.join(recovery_wait)
        if recovery.deferred is not None:
            # every connection has ended: the ends still waiting for a batch are settled
            # now if the batch pays, else left to their clients
            try:
                recovery.deferred.flush(final=True)
            except Exception:
                _serving_logger.exception("settling the ends waiting for a batch failed")
    release_receipts(writer, store, own_store, functools.partial(_detach, core, store))


def _detach(core: PaidServerCore[Any], store: ReceiptStore) -> None:
    if core.detach_due():
        store.detach_server()


def writer_done(writer: ReceiptWriter, wait: float) -> bool:
    """After the release: whether the receipt writer stopped within ``wait`` seconds
    (0: only look); one still writing uses the store yet."""
    return writer.close(wait) or writer.stopped
