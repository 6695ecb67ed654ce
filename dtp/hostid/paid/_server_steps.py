"""The ledger reads both paid servers make, written once with what a failed one logs:
the blocking server (:mod:`dtp.hostid.paid._blocking_server`) calls them inline, the
asyncio one (:mod:`dtp.hostid.paid._asyncio_server`) in a worker thread. Each logs with
the logger the server passes, its own module's (``dtp.hostid.paid._blocking_server``,
``dtp.hostid.paid._asyncio_server``), where an operator filters for a server's lines.
What the servers then do with the answers is decided by
:class:`~dtp.hostid.paid._server_core.PaidServerCore`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dtp.errors import ChainError, move_error
from dtp.payments._gate import ended_on_ledger, subscriptions_over
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


class _Checked(Protocol):
    """What a state check reads of a served connection."""

    connection_id: str
    ledger_check_due: float  # (monotonic)


_C = TypeVar("_C", bound=_Checked)


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
    """Of ``clients`` (those served now), the ones the firewall of ``host`` (just read)
    refuses: its lists looked up on the ledger, for each client only where they can
    decide. None refused (a warning logged on ``log``) when the lists cannot be read
    now: the next refresh looks again."""
    if not clients:
        return frozenset()
    try:
        return ledger.refused(host, clients)
    except ChainError as exc:
        log.warning("cannot read the firewall lists of host %s: %s", host.id, exc)
        return frozenset()


def ended_connections(ledger: Ledger, due: Sequence[_C], log: logging.Logger) -> list[_C]:
    """Those of the connections ``due`` for a read of their state
    (:attr:`PolicyRefresh.ledger_checks <dtp.hostid.paid._server_core.PolicyRefresh>`)
    no longer Open on the ledger, to be closed; none (a warning logged on ``log``) when
    the ledger cannot be read now: they are due again at the next check."""
    if not due:
        return []
    try:
        return ended_on_ledger(ledger, due)
    except ChainError as exc:
        log.warning("cannot read the state of open connections: %s", exc)
        return []


class _Subscribed(Protocol):
    """What a subscription check reads of a served connection."""

    connection_id: str

    @property
    def subscription(self) -> str | None: ...


_S = TypeVar("_S", bound=_Subscribed)


def ended_subscriptions(
    ledger: Ledger, due: Sequence[_S], log: logging.Logger
) -> list[tuple[_S, str]]:
    """Those of the connections ``due`` for a read on the ledger that were opened with a
    subscription now over (expired, or its offer withdrawn), each with why, to be
    closed (:meth:`~dtp.hostid.paid._engine.PaidConnectionEngine.subscription_ended`);
    none (a warning logged on ``log``) when the ledger cannot be read now: they are due
    again at the next check. Metered connections are not read."""
    if not any(conn.subscription is not None for conn in due):
        return []
    try:
        return subscriptions_over(ledger, due)
    except ChainError as exc:
        log.warning("cannot read the subscriptions of open connections: %s", exc)
        return []


def refresh_failed(host_id: str, interval: float, log: logging.Logger) -> None:
    """Log on ``log`` a refresh of the policy that raised something other than a ChainError (a
    bug, a value a ledger should not return), with its traceback. The servers' policy
    loops go on after it: ended, the firewall and the limits of open connections would
    go unenforced for the life of the server, silently. One refresh, so one log, per
    interval."""
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
    first (it claims from the store; waited for ``recovery_wait`` seconds at most, None:
    until it does), then the receipt writer writes what it holds and stops, and only
    then is the store left (:meth:`ReceiptStore.detach_server`, once, if the server
    attached: until then the run's lock file says its rows are a live server's) and
    closed when the server opened it (``own_store``): :func:`release_receipts`."""
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
    """After the release: whether the receipt writer no longer uses the store -- it
    stopped within ``wait`` seconds (0: only look), or gave its receipts up (its close()
    says False, but it has stopped). The release waits for the writer only so long
    (:func:`release_receipts`); one still writing then (a stalled disk) uses the store
    yet: a store passed in, closed under it, loses the receipts it holds."""
    return writer.close(wait) or writer.stopped
