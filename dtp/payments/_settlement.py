"""The ledger ends of a paid connection (docs/escrow.md §6.1, §7), shared by the blocking
and asyncio adapters.

Client: :class:`ClientPayment` meters the connection, sends the final receipt before
CLOSE, then half-closes on the ledger unless the server closed it there;
:func:`collect_refund` settles when the server never did. Server:
:func:`publish_endpoint`, :func:`claim_and_settle` (claim the latest receipt, refund
the rest, close if still Open), :func:`recover_unclaimed` (crash recovery).

A connection closed in-band costs two transactions, its open and the server's
settlement, made before the server closes its end of the carrier (docs/escrow.md §6.1).
These functions block: run them in a thread from asyncio.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from dtp.errors import (
    ChainError,
    ConnectionStateError,
    DTPError,
    InvalidArgument,
    ObjectNotFound,
    ReceiptStoreError,
    ReplayedReceipt,
    SpendingCapExceeded,
)
from dtp.ledger._connections import claimable_with, half_close_timeout_ms
from dtp.ledger._objects import (
    ConnectionState,
    Escrow,
    EventFilter,
    OpenedConnection,
    Settlement,
    TransportControl,
    normalize_id,
)
from dtp.ledger.interface import SettleItem
from dtp.ledger.receipt import U64_MAX, ReceiptScope, fee
from dtp.payments._ends import (
    BatchPlan,
    Deferred,
    EndBatch,
    EndChoice,
    EndDeferred,
    EndLeft,
    EndRule,
    _ByConnection,
)
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments._refund_engine import RefundAction, RefundStep, refund_cost, worth_gas
from dtp.payments._refunds import collect_refund, connection_ended
from dtp.payments._sold_offers import end_sold_subscription, not_its_server
from dtp.payments.metering import ClientMeter, MeteringConfig
from dtp.payments.receipt_store import StoredReceipt

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.ledger.receipt import Receipt
    from dtp.payments.receipt_store import ReceiptStore

__all__ = [
    "ClaimBackoff",
    "ClientPayment",
    "MeteredConnection",
    "claim_and_settle",
    "collect_refund",
    "deleted_once_settled",
    "end_connection",
    "leave",
    "publish_endpoint",
    "recover_unclaimed",
    "settle_deferred",
]

logger = logging.getLogger(__name__)


class MeteredConnection(Protocol):
    """What :class:`ClientPayment` needs of its connection: the usage to sign for and a
    way to send a receipt. :class:`dtp.protocol.connection.Connection` is one; payments
    never import the protocol, which sits beside them (docs/architecture.md, "Layout")."""

    @property
    def usage(self) -> tuple[int, int]:
        """Application bytes sent plus received, and requests (docs/escrow.md §6.1)."""
        ...

    @property
    def requests_pending(self) -> int:
        """Requests the usage may still gain with no stream opened (1 while the first
        stream carries none yet, else 0)."""
        ...

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (no receipt can be sent any more)."""
        ...

    def send_receipt(self, receipt: bytes) -> None:
        """Send a RECEIPT frame carrying ``receipt`` (an encoded receipt)."""
        ...


class ClientPayment:
    """The client side of one paid connection: meter, in-band receipts, ledger close.

    The adapter calls :meth:`tick` as it collects output, :meth:`on_server_receipt` for
    the server's RECEIPT frames, :meth:`closing` before its close and :meth:`finish`
    after (blocking); :meth:`refuse_write` before a write past :attr:`payable_bytes`.
    """

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        host_id: str,
        connection_id: str,
        conn: MeteredConnection,
        config: MeteringConfig | None = None,
        *,
        now: float = 0.0,
        opened: OpenedConnection | None = None,
    ) -> None:
        """``opened`` (our ``open_connection``'s result) spares reading the connection
        and its escrow back: nothing can have been claimed yet. The spending cap is not
        read: the open reserved the deposit on it (docs/escrow.md §4)."""
        if (
            opened is not None
            and opened.sla is not None
            and opened.deposit is not None
            and opened.connection_id == connection_id
        ):
            sla, deposited = opened.sla, opened.deposit
            escrow_id = opened.escrow_id
        else:
            tc = ledger.get_connection(connection_id)
            escrow = ledger.get_escrow(tc.escrow)
            escrow_id = escrow.id
            sla, deposited = tc.sla, escrow.deposited
        self.ledger = ledger
        self.identity = identity
        self.host_id = host_id
        self.connection_id = connection_id
        self.escrow_id = escrow_id
        self.conn = conn
        # never sign for more than the server can claim: the deposit (a top-up raises it)
        scope = ReceiptScope(ledger.package_id, escrow_id, connection_id)
        self.meter = ClientMeter(identity, scope, sla, deposited, config, now_ms=int(now * 1000))
        self.receipts_sent = 0
        self._now_ms = int(now * 1000)
        self._finished = False
        #: Below this usage (bytes) and before this time (monotonic s), :meth:`tick`
        #: has nothing to do: an adapter's hot path may skip it.
        self.quiet_bytes = 0
        self.quiet_until = 0.0
        # top-ups under way (top_up_on_ledger until topped_up): while there is one, no
        # write is refused -- it waits, as the server pauses, for the deposit to grow
        self._top_ups = 0
        self._top_up_lock = threading.Lock()
        #: The usage (bytes, with the requests counted so far) up to which the deposit
        #: pays: a write that would take the usage, what is queued included, past it
        #: asks :meth:`refuse_write` first (U64_MAX while a top-up is under way)
        self.payable_bytes = self._payable_bytes()

    def tick(self, now: float) -> None:
        """Sign and queue a receipt if the cadence says so."""
        conn = self.conn
        if conn.closed:
            return
        total_bytes, total_requests = conn.usage
        self._now_ms = now_ms = int(now * 1000)
        if (
            total_bytes < self.quiet_bytes
            and now < self.quiet_until
            and total_requests == self.meter.seen_requests
        ):
            return  # what the meter's own hot path would find, without asking it
        receipt = self.meter.update(now_ms, total_bytes, total_requests)
        if receipt is not None:
            conn.send_receipt(receipt.encode())
            self.receipts_sent += 1
        self.payable_bytes = self._payable_bytes()  # (the requests may have grown)
        quiet_bytes, due_ms = self.meter.quiet_until()
        self.quiet_bytes = quiet_bytes
        self.quiet_until = math.inf if due_ms is None else due_ms / 1000

    def _payable_bytes(self) -> int:
        """:attr:`payable_bytes` as the deposit and the requests counted stand now."""
        if self._top_ups:
            return U64_MAX
        meter = self.meter.meter
        sla = meter.sla
        if sla.price_per_kib == 0:
            return U64_MAX  # bytes are free: requests alone can outrun the deposit
        # (the connection's count of requests: the meter's may not have seen the latest;
        # and the first stream's, while it carries none yet: its first bytes make one)
        conn = self.conn
        budget = meter.deposit - (conn.usage[1] + conn.requests_pending) * sla.price_per_request
        # the largest usage b with ceil(b * price / 1024) <= budget (Meter.affordable_bytes)
        return max(0, budget) * 1024 // sla.price_per_kib

    def refuse_write(self, nbytes: int, requests: int = 0) -> str | None:
        """Why the connection may not send ``nbytes`` more bytes and open ``requests``
        more streams (None: it may): a write the deposit cannot pay ends it at once
        (CLOSE_PAYMENT_REQUIRED, PaymentRequired) rather than after the server's pause
        timeout. Nothing is refused while a top-up is under way."""
        if self._top_ups or self.conn.closed:
            return None
        conn = self.conn
        total_bytes, total_requests = conn.usage
        meter = self.meter.meter
        # (the first stream's request counts while it may still come: the write may be
        # its first bytes)
        requests += conn.requests_pending
        cost = fee(meter.sla, total_bytes + nbytes, total_requests + requests)
        if cost <= meter.deposit:
            self.payable_bytes = self._payable_bytes()
            return None
        return (
            f"the deposit of connection {self.connection_id} ({meter.deposit} MIST) cannot "
            f"pay for this write: the usage would cost {cost} MIST (connect with a larger "
            "deposit, or top it up before it runs out)"
        )

    def on_server_receipt(self, data: bytes) -> None:
        """The server asks for a receipt (it paused service): pay all usage now."""
        self._pay_now()

    def top_up_on_ledger(self, amount: int) -> None:
        """``escrow::top_up`` of ``amount`` MIST, reserved on the spending cap (a ledger
        transaction: without the adapter's lock, then :meth:`topped_up` with it).
        InvalidArgument, or what the ledger raises: SpendingCapExceeded (a connection
        made without ``cap_id=`` has a cap of its deposit), InsufficientFunds,
        ConnectionStateError..."""
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount < 1 << 64:
            raise InvalidArgument(
                f"a top-up must be a positive int of MIST below 2**64, not {amount!r}"
            )
        with self._top_up_lock:
            self._top_ups += 1
            self.payable_bytes = U64_MAX  # (writes meanwhile wait for it, as the server)
        try:
            self._top_up_on_ledger(amount)
        except BaseException:
            self._top_up_ended()
            raise
        # (under way until topped_up(): the receipts up to the new deposit are signed then)

    def _top_up_ended(self) -> None:
        with self._top_up_lock:
            self._top_ups = max(0, self._top_ups - 1)
            self.payable_bytes = self._payable_bytes()

    def _top_up_on_ledger(self, amount: int) -> None:
        try:
            self.ledger.top_up(self.identity, self.escrow_id, amount)
        except SpendingCapExceeded as exc:
            raise SpendingCapExceeded(
                f"top_up({amount}): {exc} (the spending cap reserves the deposit and each "
                "top-up); to top up past it, connect with cap_id= of a spending cap that "
                "has room for it",
                name=exc.name,
                module=exc.module,
                code=exc.code,
            ) from None

    def topped_up(self, amount: int) -> None:
        """Sign up to the deposit a :meth:`top_up_on_ledger` raised (adapter's lock held):
        usage the old deposit did not cover is paid now. The server reads the escrow
        again when the deposit holds the connection, and serves on."""
        meter = self.meter
        receipt = meter.top_up(amount, self._now_ms)
        if receipt is not None and not self.conn.closed:
            self.conn.send_receipt(receipt.encode())
            self.receipts_sent += 1
        self.quiet_bytes, self.quiet_until = 0, 0.0  # the next tick looks again
        self._top_up_ended()

    def closing(self) -> None:
        """Queue the final receipt (call before the CLOSE frame is queued)."""
        self._pay_now()

    def _pay_now(self) -> None:
        conn = self.conn
        if conn.closed:
            return
        total_bytes, total_requests = conn.usage
        now_ms = self._now_ms  # the time of the last tick: no cadence depends on it here
        receipt = self.meter.update(now_ms, total_bytes, total_requests, force=True)
        receipt = self.meter.flush(now_ms) or receipt
        if receipt is not None:
            conn.send_receipt(receipt.encode())
            self.receipts_sent += 1

    def finish(self) -> None:
        """Half-close the connection on the ledger unless it is no longer Open (once;
        failures logged): a paid server usually settled it already (one read). The
        half-close starts the timeout after which the
        :class:`~dtp.payments._refunds.RefundCollector` settles (unless
        :attr:`collect_refunds` is False), for a server that crashed or left it to us
        (docs/escrow.md §7.1); skipped when the refund would not pay the gas."""
        if self._finished:
            return
        self._finished = True
        half_closed = False
        try:
            if self.ledger.connection_state(self.connection_id) != ConnectionState.OPEN:
                return
            if not self._refund_worth_gas():
                return
            self.ledger.close_connection(self.identity, self.connection_id)
            half_closed = True
        except ConnectionStateError as exc:
            # the server closed (and maybe settled) first: nothing left for us to do
            logger.debug("connection %s already closed on the ledger: %s", self.connection_id, exc)
        except DTPError as exc:
            logger.warning(
                "could not close connection %s on the ledger: %s", self.connection_id, exc
            )
        finally:
            if self.collect_refunds:
                connection_ended(
                    self.ledger, self.identity, self.connection_id, half_closed=half_closed
                )

    #: Whether :meth:`finish` has the process's refund collector settle a connection it
    #: half-closed once its timeout has passed.
    collect_refunds = True

    def _refund_worth_gas(self) -> bool:
        """Whether the refund covers the gas of the half-close and the settlement
        (:func:`~dtp.payments._refund_engine.worth_gas`, as the collector's)."""
        cost = refund_cost(RefundAction.HALF_CLOSE, self.ledger.end_gas())
        if not cost:
            return True
        balance = self.ledger.get_escrow(self.escrow_id).balance
        step = worth_gas(RefundStep(RefundAction.HALF_CLOSE, cost=cost), balance)
        if step.action is not RefundAction.SKIP:
            return True
        logger.info(
            "connection %s: the %d MIST left in its escrow is less than the %d MIST of gas "
            "its half-close and settlement cost; left on the ledger",
            self.connection_id,
            balance,
            cost,
        )
        return False


def claim_and_settle(
    ledger: Ledger,
    identity: HostIdentity,
    connection_id: str,
    store: ReceiptStore | ReceiptWriter | None,
    *,
    escrow: Escrow | None = None,
    connection: TransportControl | None = None,
    final: Receipt | None = None,
    final_is_newest: bool = False,
) -> Settlement | None:
    """The server's end of a connection: claim the latest receipt and settle, refunding
    the client the rest, in one transaction that also closes it when still Open
    (docs/escrow.md §7). Whatever the gas (:func:`end_connection` weighs it).

    ``store``: the :class:`ReceiptStore`, or the server's :class:`ReceiptWriter` (which
    knows receipts not yet fsynced). ``escrow``, ``connection``: as the caller read
    them, not read again (a stale escrow is refused as replayed, read afresh, tried
    once more; the connection is taken as it is where ``ledger.free_refusals``, else
    read when its version moved). ``final``: a checked receipt not stored (the one
    CLOSE came with); of it and the store's latest, the one for more is claimed; when
    the store cannot be read, without ``final``, ReceiptStoreError (settling without
    the latest receipt would refund what the client owes). ``final_is_newest``:
    ``final`` is for no less than any receipt the store holds of the connection (the
    gate that checked it checked every one stored, the store holding none before it: a
    paid server's connection billed by its bytes), and the store is not read.

    Returns None when already settled. The spending cap cannot refuse the claim: the
    deposit was reserved on it at the open (docs/escrow.md §4).
    """
    if (
        ledger.free_refusals
        and connection is not None
        and connection.id == normalize_id(connection_id, "connection ID")
    ):
        # the connection as known, not read: a settlement it no longer fits is refused
        # at no cost -- settled meanwhile (_settle_end reads it then), Open or
        # half-closed (settled all the same), deleted (read below, and found so)
        try:
            end = _read_end(
                ledger,
                connection_id,
                store,
                escrow,
                connection,
                final,
                known=True,
                final_is_newest=final_is_newest,
            )
            return None if end is None else _settle_end(ledger, identity, connection_id, store, end)
        except ObjectNotFound:
            pass
    end = _read_end(
        ledger, connection_id, store, escrow, connection, final, final_is_newest=final_is_newest
    )
    if end is None:
        return None
    return _settle_end(ledger, identity, connection_id, store, end)


@dataclass(frozen=True)
class _End:
    """A connection's end as read before its settlement."""

    tc: TransportControl
    stored: StoredReceipt | None
    """The receipt to claim (the store's latest, or the final one for more)."""
    escrow: Escrow | None
    """Its escrow (None once settled: not read)."""
    known: bool
    """The escrow is the caller's (it may be stale), not read here."""

    @property
    def fee(self) -> int:
        """MIST the receipt claims beyond what the escrow paid already."""
        if self.stored is None or self.escrow is None:
            return 0
        return claimable_with(self.stored.receipt, self.escrow)


def _read_end(
    ledger: Ledger,
    connection_id: str,
    store: ReceiptStore | ReceiptWriter | None,
    escrow: Escrow | None,
    connection: TransportControl | None,
    final: Receipt | None,
    *,
    known: bool = False,
    final_is_newest: bool = False,
) -> _End | None:
    """The connection's end as read (None: settled, and deleted since by its client).
    ``known``: ``connection`` is taken as it is, not read (nor its version);
    ``final_is_newest``: as :func:`claim_and_settle`'s."""
    try:
        tc = (
            connection
            if known and connection is not None
            else _current(ledger, connection_id, connection)
        )
    except ObjectNotFound:
        if deleted_once_settled(ledger, connection_id, store) is None:
            raise
        return None
    try:
        if final is not None and final_is_newest:
            stored = None  # (none for more than the final one: it is claimed below)
        else:
            stored = store.latest(connection_id) if store is not None else None
    except ReceiptStoreError:
        if final is None:
            raise  # settling without the latest receipt would refund what the client owes
        # the final receipt is the newest of its DTP connection (its gate checked it
        # against every one kept): claimed now, rather than left for a recovery that
        # would not find it in the store (see below for the case where it is not)
        logger.warning("reading the receipts of %s failed; claiming its final one", connection_id)
        stored = None
    if final is not None and (
        stored is None
        or (final.total_amount, final.nonce) > (stored.receipt.total_amount, stored.receipt.nonce)
    ):
        # the one for more: within a DTP connection the final is never lower (its gate
        # checks it against the receipts it kept), but a ledger connection served again
        # after a failed settlement has a gate seeded from the escrow, not the store
        stored = StoredReceipt(final, 0)
    if tc.settled:
        return _End(tc, stored, None, False)
    if escrow is None or escrow.id != tc.escrow:
        return _End(tc, stored, ledger.get_escrow(tc.escrow), False)
    return _End(tc, stored, escrow, True)


def _settle_end(
    ledger: Ledger,
    identity: HostIdentity,
    connection_id: str,
    store: ReceiptStore | ReceiptWriter | None,
    end: _End,
) -> Settlement | None:
    """Settle the connection as :func:`claim_and_settle` does, from what ``end`` read."""
    tc, stored = end.tc, end.stored
    if tc.settled or end.escrow is None:
        _write_off(ledger, connection_id, tc, store, stored)
        return None
    try:
        if not_its_server(tc, identity):
            # a subscribed connection of a host sold to us: ended by the subscription's
            # rule, its sold offer withdrawn first (docs/escrow.md §13)
            settlement = end_sold_subscription(ledger, identity, tc, end.escrow)
        else:
            settlement = _settle_or_retry(ledger, identity, end)
    except ConnectionStateError as exc:
        if exc.name not in ("EAlreadySettled", "EEscrowSettled"):
            raise
        # the client settled between our read and our transaction (its timeout had
        # passed): as if we had read it settled, the receipt is written off and marked,
        # not left unclaimed for every later start to try again
        tc = ledger.get_connection(connection_id)
        if not tc.settled:
            raise
        _write_off(ledger, connection_id, tc, store, stored)
        return None
    if stored is not None and store is not None:
        _mark_claimed(store, connection_id, settlement.claimed)
    logger.info(
        "settled %s: %d MIST claimed, %d refunded",
        connection_id,
        settlement.claimed,
        settlement.refunded,
    )
    return settlement


def _settle_or_retry(ledger: Ledger, identity: HostIdentity, end: _End) -> Settlement:
    """:func:`_settle` from what ``end`` read, once more with the escrow read again when
    the caller's was stale (claimed since it read it)."""
    assert end.escrow is not None
    try:
        return _settle(ledger, identity, end.tc, end.escrow, end.stored)
    except ReplayedReceipt:
        if not end.known:
            raise
        return _settle(ledger, identity, end.tc, ledger.get_escrow(end.tc.escrow), end.stored)


def end_connection(
    ledger: Ledger,
    identity: HostIdentity,
    connection_id: str,
    store: ReceiptStore | ReceiptWriter | None,
    *,
    rule: EndRule,
    batch: EndBatch | None = None,
    now: float = 0.0,
    escrow: Escrow | None = None,
    connection: TransportControl | None = None,
    final: Receipt | None = None,
    final_is_newest: bool = False,
) -> Settlement | EndLeft | EndDeferred | None:
    """A paid server's end of a connection, its gas weighed (:mod:`dtp.payments._ends`):
    what its receipts can claim against ``ledger.end_gas()`` decides between
    :func:`claim_and_settle` now, a place in ``batch`` (:class:`EndDeferred`) and
    leaving it to its client (:class:`EndLeft`, its receipt written off). Arguments as
    :func:`claim_and_settle`'s; without gas or ``rule.weigh_gas``, every end settles."""
    gas = ledger.end_gas() if rule.weigh_gas else None
    if gas is None or not gas.charged:
        return claim_and_settle(
            ledger,
            identity,
            connection_id,
            store,
            escrow=escrow,
            connection=connection,
            final=final,
            final_is_newest=final_is_newest,
        )
    end = _read_end(
        ledger, connection_id, store, escrow, connection, final, final_is_newest=final_is_newest
    )
    if end is None:
        return None
    # (a subscribed connection of a host sold to us is ended whatever the gas: that
    # withdraws its sold offer, which the holders' refunds wait on, docs/escrow.md §13)
    if end.tc.settled or end.escrow is None or not_its_server(end.tc, identity):
        return _settle_end(ledger, identity, connection_id, store, end)
    fee = end.fee
    choice = rule.choose(fee, gas)
    if choice is EndChoice.BATCH and end.stored is not None and batch is not None:
        # (its client may be free to settle alone soon: then it is left now)
        due = min(now + rule.batch_window, _client_may_settle(ledger, end.tc, now))
        if due > now:
            batch.add(
                Deferred(
                    end.tc.id,
                    end.stored.receipt,
                    fee,
                    due,
                    end.escrow.id,
                    end.escrow.spending_cap,
                )
            )
            logger.info(
                "connection %s waits to be settled with others: its fee of %d MIST is "
                "below the %d MIST of gas a settlement of its own costs",
                connection_id,
                fee,
                gas.settle_claim,
            )
            return EndDeferred(fee, due)
    if choice is EndChoice.SETTLE:
        return _settle_end(ledger, identity, connection_id, store, end)
    cost = gas.settle_claim if fee else gas.settle_refund
    leave(store, connection_id, end.stored, fee, cost, final)
    return EndLeft(fee, cost)


#: Seconds before its client may settle alone by which a deferred end is settled.
_DEADLINE_MARGIN = 60.0


def _client_may_settle(ledger: Ledger, tc: TransportControl, now: float) -> float:
    """When (on ``now``'s clock) the client of ``tc`` may settle alone, less a margin:
    a deferred end is settled or left before that. Without a half-close the client
    must make one first, and then wait the whole timeout."""
    if tc.half_closed_at_ms is None:
        return math.inf
    timeout_ms = half_close_timeout_ms(tc)
    try:
        elapsed_ms = ledger.clock_ms() - tc.half_closed_at_ms
    except ChainError:
        elapsed_ms = timeout_ms  # (not known: no time to wait)
    return now + (timeout_ms - elapsed_ms) / 1000 - _DEADLINE_MARGIN


def leave(
    store: ReceiptStore | ReceiptWriter | None,
    connection_id: str,
    stored: StoredReceipt | None,
    fee: int,
    gas: int,
    final: Receipt | None = None,
) -> None:
    """A connection's end left to its client (:attr:`EndChoice.LEAVE`): its receipt
    (``final``, not stored yet, kept first) is marked written off, so that no recovery
    claims it later, and a line says why. Nothing goes to the ledger."""
    if store is not None:
        if final is not None:
            _keep(store, final)
        if stored is not None:
            _mark_claimed(store, connection_id, stored.receipt.total_amount)
    if fee:
        logger.info(
            "connection %s left to its client: its fee of %d MIST is below the %d MIST "
            "of gas claiming it costs; the client gets it back when it settles",
            connection_id,
            fee,
            gas,
        )
    else:
        logger.info(
            "connection %s left to its client: nothing to claim, and settling it costs "
            "%d MIST of gas; the client settles it after the half-close timeout",
            connection_id,
            gas,
        )


def _keep(store: ReceiptStore | ReceiptWriter, receipt: Receipt) -> None:
    """Store ``receipt`` (through the writer, or straight in the store)."""
    try:
        if isinstance(store, ReceiptWriter):
            store.submit(receipt, lambda _: None)
        else:
            store.keep(receipt)
    except (ReceiptStoreError, RuntimeError) as exc:
        logger.warning(
            "the receipt of connection %s, left to its client, is not stored: %s",
            receipt.connection_id,
            exc,
        )


def settle_deferred(
    ledger: Ledger,
    identity: HostIdentity,
    store: ReceiptStore | ReceiptWriter | None,
    plan: BatchPlan,
    batch: EndBatch | None = None,
) -> tuple[list[tuple[str, Settlement]], list[tuple[str, EndLeft]]]:
    """Make an :class:`EndBatch`'s plan: settle its ends in one ``ledger.settle_batch``
    and leave the rest (:func:`leave`). A batch refused is read again: ends settled
    meanwhile are written off, the others wait on in ``batch`` (or are left). Returns
    what was settled and what was left."""
    settled: list[tuple[str, Settlement]] = []
    left: list[tuple[str, EndLeft]] = []
    gas = ledger.end_gas() if plan.leave else None
    for entry in plan.leave:
        cost = gas.batch_claim if gas is not None else 0
        leave(store, entry.connection_id, StoredReceipt(entry.receipt, 0), entry.fee, cost)
        left.append((entry.connection_id, EndLeft(entry.fee, cost)))
    if not plan.settle:
        return settled, left
    items = [SettleItem(e.connection_id, e.receipt, e.escrow_id, e.cap_id) for e in plan.settle]
    try:
        outcomes = ledger.settle_batch(identity, items)
    except ChainError as exc:
        logger.warning("settling %d connections in one transaction failed: %s", len(items), exc)
        _batch_failed(ledger, store, plan.settle, batch, left)
        return settled, left
    for entry, settlement in zip(plan.settle, outcomes, strict=True):
        if store is not None:
            _mark_claimed(store, entry.connection_id, entry.receipt.total_amount)
        settled.append((entry.connection_id, settlement))
    logger.info(
        "settled %d connections in one transaction: %d MIST claimed, %d refunded",
        len(outcomes),
        sum(s.claimed for s in outcomes),
        sum(s.refunded for s in outcomes),
    )
    return settled, left


def _batch_failed(
    ledger: Ledger,
    store: ReceiptStore | ReceiptWriter | None,
    entries: Iterable[Deferred],
    batch: EndBatch | None,
    left: list[tuple[str, EndLeft]],
) -> None:
    """The ends of a refused batch: written off when settled meanwhile, else back in
    ``batch`` (or left, without one)."""
    for entry in entries:
        try:
            tc = ledger.get_connection(entry.connection_id)
        except ChainError:
            tc = None
        if tc is not None and tc.settled:
            _write_off(ledger, entry.connection_id, tc, store, StoredReceipt(entry.receipt, 0))
        elif batch is not None:
            batch.add(entry)
        else:
            leave(store, entry.connection_id, StoredReceipt(entry.receipt, 0), entry.fee, 0)
            left.append((entry.connection_id, EndLeft(entry.fee, 0)))


def _write_off(
    ledger: Ledger,
    connection_id: str,
    tc: TransportControl,
    store: ReceiptStore | ReceiptWriter | None,
    stored: StoredReceipt | None,
) -> None:
    """``tc`` is settled: what ``stored`` has beyond the escrow's claims is lost."""
    if stored is not None and stored.unclaimed > 0 and store is not None:
        _written_off(store, connection_id, stored, ledger.get_escrow(tc.escrow).claimed)


def _written_off(
    store: ReceiptStore | ReceiptWriter, connection_id: str, stored: StoredReceipt, claimed: int
) -> None:
    """The settled connection's escrow paid ``claimed``: ``stored`` is done with."""
    if claimed < stored.receipt.total_amount:
        logger.warning(
            "connection %s was settled before its receipt for %d MIST was claimed "
            "(%d claimed): the rest is written off",
            connection_id,
            stored.receipt.total_amount,
            claimed,
        )
    # a settled escrow pays nothing more: the receipt is done with, as a whole (marked
    # with the escrow's claims only, it would stay unclaimed in the store, and every
    # start read the ledger for it and warn again, for good)
    _mark_claimed(store, connection_id, max(claimed, stored.receipt.total_amount))


#: A connection's settlement event (its ID is the connection's: docs/escrow.md §18).
SETTLED: Final = "dtp::transport_control::ConnectionSettled"


def deleted_once_settled(
    ledger: Ledger, connection_id: str, store: ReceiptStore | ReceiptWriter | None
) -> int | None:
    """What the escrow of the connection, not found, paid its server when it was
    settled, before it was deleted (docs/escrow.md §7, "Deletion", by its
    ConnectionSettled event); None: no settlement of it. Its receipt is written off, or
    every recovery round would try it for good."""
    wanted = EventFilter(type=SETTLED, object_id=normalize_id(connection_id, "connection ID"))
    settled = None
    cursor: str | None = None
    while True:  # (every page: on Sui the filter narrows to the event type, not the ID)
        got = ledger.read_events(cursor, wanted, 1000)
        if got.events:
            settled = got.events[-1]
        if got.at_end or (got.cursor == cursor and not got.events):
            break
        cursor = got.cursor
    if settled is None:
        return None
    claimed = int(settled["claimed"])
    stored = store.latest(connection_id) if store is not None else None
    if store is not None and stored is not None and stored.unclaimed > 0:
        _written_off(store, connection_id, stored, claimed)
    return claimed


def _mark_claimed(store: ReceiptStore | ReceiptWriter, connection_id: str, amount: int) -> None:
    """Mark in ``store`` what the ledger has settled. A mark that cannot be written is
    only logged: the next start derives it from the ledger again, and raised it hid the
    settlement from the caller and stopped a recovery."""
    try:
        store.mark_claimed(connection_id, amount)
    except (ReceiptStoreError, RuntimeError) as exc:
        logger.warning(
            "connection %s is settled, but its claim of %d MIST is not marked in the "
            "receipt store (the next start finds it settled on the ledger): %s",
            connection_id,
            amount,
            exc,
        )


def claimed(settlement: Settlement | None, receipt: Receipt) -> bool:
    """Whether ``settlement`` (from :func:`claim_and_settle`) claimed ``receipt``."""
    return settlement is not None and settlement.claimed >= receipt.total_amount


def _settle(
    ledger: Ledger,
    identity: HostIdentity,
    tc: TransportControl,
    escrow: Escrow,
    stored: StoredReceipt | None,
) -> Settlement:
    """Settle ``tc``, claiming ``stored`` when the escrow has not seen it yet; an Open
    connection is closed by the same transaction, or first where the ledger's package
    refuses that (it predates the server's settling an Open connection)."""
    # the IDs come from the connection and escrow: the ledger need not read them again;
    # a receipt that pays nothing more is not claimed (a transaction's worth of checks
    # for nothing)
    receipt = None if stored is None else stored.receipt
    if receipt is not None and not (
        receipt.nonce > escrow.latest_nonce and receipt.total_amount > escrow.claimed
    ):
        receipt = None

    def once() -> Settlement:
        if receipt is not None:
            return ledger.settle_with_receipt(
                identity, tc.id, receipt, escrow_id=tc.escrow, cap_id=escrow.spending_cap
            )
        return ledger.settle(identity, tc.id, escrow_id=tc.escrow, cap_id=escrow.spending_cap)

    try:
        return once()
    except ConnectionStateError as exc:
        if exc.name != "EConnectionOpen":
            raise
    with contextlib.suppress(ConnectionStateError):  # the client may close meanwhile
        ledger.close_connection(identity, tc.id)
    return once()


def _current(
    ledger: Ledger, connection_id: str, known: TransportControl | None
) -> TransportControl:
    """The connection as it is now: ``known`` when its version has not moved (where the
    ledger tells versions cheaply), else read."""
    version_of = getattr(ledger, "object_version", None)
    if (
        known is not None
        and version_of is not None
        and known.id == normalize_id(connection_id, "connection ID")
        and version_of(known.id) == known.version
    ):
        return known
    return ledger.get_connection(connection_id)


class ClaimBackoff(_ByConnection):
    """The receipts a live server's recovery failed to claim, per connection ID, in
    recovery rounds (:meth:`next_round`): one the ledger refuses for good was else tried
    every round by every server. After its n-th failure it waits 2**(n-1) rounds (at
    most ``max_rounds``); only its first is logged as a warning. Thread-safe."""

    def __init__(self, max_rounds: int) -> None:
        self.max_rounds = max_rounds
        self._failed: dict[str, tuple[int, int]] = {}  # ID -> (failures, round it is due)
        self._round = 0
        self._lock = threading.Lock()

    @property
    def rounds(self) -> int:
        """How many rounds have started."""
        with self._lock:
            return self._round

    def next_round(self) -> None:
        """A recovery round starts."""
        with self._lock:
            self._round += 1

    def _table(self) -> dict[str, tuple[int, int]]:
        return self._failed

    def failures(self, connection_id: str) -> int:
        """How many tries of ``connection_id`` failed in a row (0: none remembered)."""
        with self._lock:
            return self._failed.get(normalize_id(connection_id, "connection ID"), (0, 0))[0]

    def due(self, connection_id: str) -> bool:
        """Whether ``connection_id`` is to be tried in this round."""
        with self._lock:
            entry = self._failed.get(normalize_id(connection_id, "connection ID"))
            return entry is None or entry[1] <= self._round

    def failed(self, connection_id: str) -> int:
        """A try of ``connection_id`` failed: how many have, in a row."""
        key = normalize_id(connection_id, "connection ID")
        with self._lock:
            failures = self._failed.get(key, (0, 0))[0] + 1
            self._failed[key] = (failures, self._round + min(2 ** (failures - 1), self.max_rounds))
            return failures

    def forget(self, connection_id: str) -> None:
        """Nothing left to try of ``connection_id``."""
        with self._lock:
            self._failed.pop(normalize_id(connection_id, "connection ID"), None)

    def prune(self, store: ReceiptStore, listed: Iterable[StoredReceipt]) -> None:
        """Forget the IDs ``store`` no longer holds unclaimed, of those not ``listed``
        in this round (a row a dead run's lock held by another server's recovery keeps
        out of the list is still unclaimed: remembered)."""
        with self._lock:
            if not self._failed:
                return
            absent = set(self._failed).difference(s.receipt.connection_id for s in listed)
        for cid in absent:
            try:
                stored = store.latest(cid)
            except ReceiptStoreError:
                continue  # (not known gone: tried as due, and forgotten once claimed)
            if stored is None or stored.unclaimed == 0:
                self.forget(cid)


def recover_unclaimed(
    ledger: Ledger,
    identity: HostIdentity,
    store: ReceiptStore,
    receipts: Iterable[StoredReceipt] | None = None,
    stopped: Callable[[], bool] | None = None,
    backoff: ClaimBackoff | None = None,
    *,
    rule: EndRule | None = None,
    batch: EndBatch | None = None,
    now: float = 0.0,
) -> list[tuple[str, Settlement]]:
    """Claim and settle every connection the store holds an unclaimed receipt for (at
    start), or those of ``receipts``: failures are logged and skipped. Not a live
    server's (the paid servers pass :meth:`ReceiptStore.orphaned`). Stops once
    ``stopped()``. ``backoff``: :class:`ClaimBackoff`; ``rule``: each end's gas weighed
    (:func:`end_connection`). Returns the settlements made."""

    def claim(cid: str) -> Settlement | None:
        if rule is None:
            return claim_and_settle(ledger, identity, cid, store)
        outcome = end_connection(ledger, identity, cid, store, rule=rule, batch=batch, now=now)
        return outcome if isinstance(outcome, Settlement) else None

    done: list[tuple[str, Settlement]] = []
    for stored in list(store.unclaimed() if receipts is None else receipts):
        if stopped is not None and stopped():
            break
        cid = stored.receipt.connection_id
        if batch is not None and cid in batch:
            continue  # (waiting for its batch already)
        if backoff is None:
            try:
                settlement = claim(cid)
            except (ChainError, ReceiptStoreError) as exc:
                logger.warning("could not claim the stored receipt of %s: %s", cid, exc)
                continue
            except Exception:
                # (a bug, a ledger's surprise: with its traceback) caught: the recovery
                # goes on to the receipts after it, and the server starts
                logger.exception("could not claim the stored receipt of %s", cid)
                continue
        else:
            if not backoff.due(cid):
                continue
            settlement = _claim_with_backoff(claim, cid, backoff)
        if settlement is not None:
            done.append((cid, settlement))
    return done


def _claim_with_backoff(
    claim: Callable[[str], Settlement | None], cid: str, backoff: ClaimBackoff
) -> Settlement | None:
    """``claim(cid)`` of a receipt ``backoff`` found due: its failure noted there (and
    logged), its success (or its receipt found written off, or left) forgetting it."""
    try:
        settlement = claim(cid)
    except (ChainError, ReceiptStoreError) as exc:
        _claim_failed(backoff, cid, str(exc), trace=False)
        return None
    except Exception as exc:  # (a bug, a ledger's surprise: with its traceback)
        _claim_failed(backoff, cid, repr(exc), trace=True)
        return None
    backoff.forget(cid)
    return settlement


def _claim_failed(backoff: ClaimBackoff, cid: str, why: str, *, trace: bool) -> None:
    failures = backoff.failed(cid)
    if failures == 1:
        logger.warning(
            "could not claim the stored receipt of %s (tried again with backoff, further "
            "failures logged at debug level): %s",
            cid,
            why,
            exc_info=trace,
        )
    else:
        logger.debug(
            "claim %d of the stored receipt of %s failed: %s", failures, cid, why, exc_info=trace
        )


def publish_endpoint(
    ledger: Ledger, identity: HostIdentity, host_id: str, address: tuple[str, int]
) -> None:
    """Make the Host list this server: its TCP endpoint first (replacing the published
    list when it differs) and ``identity``'s Noise key. Only the host's authority can."""
    host = ledger.get_host(host_id)
    endpoint = f"tcp://{address[0]}:{address[1]}".encode()
    if host.noise_static_key != identity.noise_public:
        ledger.set_noise_static_key(identity, host_id, identity.noise_public)
    if tuple(host.endpoints) != (endpoint,):
        ledger.set_endpoints(identity, host_id, [endpoint])
