"""The ledger ends of a paid connection (docs/escrow.md §6.1, §7), shared by the blocking
and asyncio adapters.

Client: :class:`ClientPayment` meters a connection made by host ID (hooked into the
adapter's output path), sends the final receipt before CLOSE and then half-closes the
connection on the ledger unless the server already closed it there;
:func:`collect_refund` settles once the close timeout has passed when the server never
did.

Server: :func:`publish_endpoint` puts the server's endpoint and Noise key in the Host;
:func:`claim_and_settle` claims a connection's latest stored receipt and refunds the
client the rest, closing the connection in the same transaction when it is still Open;
:func:`recover_unclaimed` does it for every receipt a previous run left unclaimed (crash
recovery); :class:`ClaimBackoff` spaces out a live server's tries of those it fails.

A connection the client closes in-band thus costs two transactions in all, its open and
the server's settlement: a paid server settles before it closes its end of the carrier,
and the client, once that end closed, finds the connection settled and has nothing
left to do (docs/escrow.md §6.1).

These functions call the ledger and block: run them in a thread from asyncio.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from dtp.errors import (
    ChainError,
    ConnectionStateError,
    DTPError,
    InvalidArgument,
    ReceiptStoreError,
    ReplayedReceipt,
    SpendingCapExceeded,
)
from dtp.ledger.objects import (
    ConnectionState,
    Escrow,
    OpenedConnection,
    Settlement,
    TransportControl,
    normalize_id,
)
from dtp.ledger.receipt import ReceiptScope
from dtp.payments.metering import ClientMeter, MeteringConfig
from dtp.payments.receipt_store import StoredReceipt

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.ledger.receipt import Receipt
    from dtp.payments.receipt_store import ReceiptStore
    from dtp.payments.receipt_writer import ReceiptWriter

__all__ = [
    "ClaimBackoff",
    "ClientPayment",
    "MeteredConnection",
    "claim_and_settle",
    "collect_refund",
    "publish_endpoint",
    "recover_unclaimed",
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
    def closed(self) -> bool:
        """Whether the connection is closed (no receipt can be sent any more)."""
        ...

    def send_receipt(self, receipt: bytes) -> None:
        """Send a RECEIPT frame carrying ``receipt`` (an encoded receipt)."""
        ...


class ClientPayment:
    """The client side of one paid connection: meter, in-band receipts, ledger close.

    The adapter calls :meth:`tick` each time it collects the connection's output (cheap
    when nothing changed), :meth:`on_server_receipt` for RECEIPT frames from the server
    (a request for a receipt now), :meth:`closing` just before it closes the connection,
    and :meth:`finish` after, once the server closed its end of the carrier (the ledger
    half-close, when still needed; blocking).
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
        """``opened`` (what our ``open_connection`` returned, with its SLA and deposit)
        spares reading the connection and its escrow back: nothing can have been claimed
        from an escrow this new, as we have signed no receipt yet. Without it both are
        read. The spending cap is not: the open reserved the whole deposit on it, so the
        server can claim every receipt up to the deposit (docs/escrow.md §4)."""
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
        quiet_bytes, due_ms = self.meter.quiet_until()
        self.quiet_bytes = quiet_bytes
        self.quiet_until = math.inf if due_ms is None else due_ms / 1000

    def on_server_receipt(self, data: bytes) -> None:
        """The server asks for a receipt (it paused service): pay all usage now."""
        self._pay_now()

    def top_up_on_ledger(self, amount: int) -> None:
        """``escrow::top_up`` of ``amount`` MIST for this connection (blocking: a ledger
        transaction; call without the adapter's lock, then :meth:`topped_up` with it).
        The amount is reserved on the connection's spending cap. Raises InvalidArgument
        for an amount that is not a positive int, and what the ledger raises:
        SpendingCapExceeded for one past the cap's room this epoch (nothing moves: a
        connection by host ID made without ``cap_id=`` has a cap of its deposit, used up
        by the open), InsufficientFunds, ConnectionStateError once settled..."""
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount < 1 << 64:
            raise InvalidArgument(
                f"a top-up must be a positive int of MIST below 2**64, not {amount!r}"
            )
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
        failures are logged). A paid server that saw our CLOSE closes and settles it in
        one transaction before it closes its end of the carrier, so a caller that waited
        for that end finds it settled: one read, no transaction. Otherwise our half-close
        starts the timeout after which :func:`collect_refund` may settle without the
        server (a server that closed the connection itself started it already)."""
        if self._finished:
            return
        self._finished = True
        try:
            if self.ledger.connection_state(self.connection_id) != ConnectionState.OPEN:
                return
            self.ledger.close_connection(self.identity, self.connection_id)
        except ConnectionStateError as exc:
            # the server closed (and maybe settled) first: nothing left for us to do
            logger.debug("connection %s already closed on the ledger: %s", self.connection_id, exc)
        except DTPError as exc:
            logger.warning(
                "could not close connection %s on the ledger: %s", self.connection_id, exc
            )


def collect_refund(ledger: Ledger, identity: HostIdentity, connection_id: str) -> int:
    """The client's refund of a connection, in MIST.

    When the connection is already settled (the server settled it, the usual case),
    returns what that settlement refunded. Otherwise half-closes it if still Open and
    settles; that succeeds only once the half-close timeout has passed
    (``ConnectionStateError`` ``ETimeoutNotReached`` before), which leaves the server
    that long to claim its last receipt.
    """
    tc = ledger.get_connection(connection_id)
    if tc.settled:
        return ledger.get_escrow(tc.escrow).refunded
    try:
        if tc.state == ConnectionState.OPEN:
            ledger.close_connection(identity, connection_id)
        return ledger.settle(identity, connection_id).refunded
    except ConnectionStateError:
        # The server may settle between our read and our transaction (it does so as the
        # connection ends): the close then fails as EConnectionClosed and the settle as
        # EAlreadySettled, though the refund we came for has been paid. Report it, as
        # when we read the connection settled; anything else (the timeout not reached)
        # stands.
        tc = ledger.get_connection(connection_id)
        if tc.settled:
            return ledger.get_escrow(tc.escrow).refunded
        raise


def claim_and_settle(
    ledger: Ledger,
    identity: HostIdentity,
    connection_id: str,
    store: ReceiptStore | ReceiptWriter | None,
    *,
    escrow: Escrow | None = None,
    connection: TransportControl | None = None,
    final: Receipt | None = None,
) -> Settlement | None:
    """The server's end of a connection: claim the latest stored receipt and settle (the
    client is refunded the rest at once), in one transaction that also closes the
    connection when it is still Open (the server may settle at any time, docs/escrow.md
    §7; on a ledger whose package predates that, it half-closes first).

    ``store``: where the connection's latest receipt is, and where the claim is marked:
    the :class:`ReceiptStore`, or the server's :class:`ReceiptWriter` (which also knows the
    receipts still on their way to the disk: the claim need not wait for the fsync).
    ``escrow``: the connection's Escrow as the caller read it (a paid server, at
    admission): what is taken from it -- its ID, spending cap and latest claimed nonce --
    cannot have moved since unless the caller claimed, so it is not read again. Should it
    be stale all the same (claimed since), the ledger refuses the claim as replayed (it
    checks the nonce itself) and the escrow is read afresh for one more try.
    ``connection``: the TransportControl as the caller read it; where the ledger tells
    an object's version cheaply, it is read again only once its version moved.
    ``final``: a checked receipt newer than the store's that was not stored (the one the
    client's CLOSE came with: the claim on the ledger is its durable copy); the caller
    stores it should the settlement not claim it (:func:`claimed`). Of it and the
    store's latest, the one for more is claimed. When the store cannot be read, the
    final receipt is claimed; without one, the ReceiptStoreError is raised (settling
    without the latest receipt would refund what the client owes).

    Returns None when the connection was already settled. The client's spending cap
    cannot refuse the claim: the deposit was reserved on it at the open (docs/escrow.md
    §4).
    """
    tc = _current(ledger, connection_id, connection)
    try:
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
        _write_off(ledger, connection_id, tc, store, stored)
        return None
    if escrow is None or escrow.id != tc.escrow:
        escrow = ledger.get_escrow(tc.escrow)
        known = False
    else:
        known = True
    try:
        try:
            settlement = _settle(ledger, identity, tc, escrow, stored)
        except ReplayedReceipt:
            if not known:
                raise
            # the escrow was claimed since the caller read it: read it and try again
            settlement = _settle(ledger, identity, tc, ledger.get_escrow(tc.escrow), stored)
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


def _write_off(
    ledger: Ledger,
    connection_id: str,
    tc: TransportControl,
    store: ReceiptStore | ReceiptWriter | None,
    stored: StoredReceipt | None,
) -> None:
    """``tc`` is settled: what ``stored`` has beyond the escrow's claims is lost."""
    if stored is not None and stored.unclaimed > 0 and store is not None:
        escrow = ledger.get_escrow(tc.escrow)
        if escrow.claimed < stored.receipt.total_amount:
            logger.warning(
                "connection %s was settled before its receipt for %d MIST was claimed "
                "(%d claimed): the rest is written off",
                connection_id,
                stored.receipt.total_amount,
                escrow.claimed,
            )
        # a settled escrow pays nothing more: the receipt is done with, as a whole
        # (marked with the escrow's claims only, it would stay unclaimed in the store,
        # and every start read the ledger for it and warn again, for good)
        _mark_claimed(store, connection_id, max(escrow.claimed, stored.receipt.total_amount))


def _mark_claimed(store: ReceiptStore | ReceiptWriter, connection_id: str, amount: int) -> None:
    """Mark in ``store`` what the ledger has settled. A mark that cannot be written (a
    store locked, read-only or full: ReceiptStoreError; the writer closed:
    RuntimeError) is logged only: it is bookkeeping, which the next start derives from
    the ledger again, while the settlement is done on the ledger for good. Raised, it
    hid that settlement from the caller (a paid server then kept the final receipt it
    had just claimed as unclaimed) and stopped a recovery before its other receipts."""
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
    try:
        return _settle_once(ledger, identity, tc, escrow, stored)
    except ConnectionStateError as exc:
        if exc.name != "EConnectionOpen":
            raise
    with contextlib.suppress(ConnectionStateError):  # the client may close meanwhile
        ledger.close_connection(identity, tc.id)
    return _settle_once(ledger, identity, tc, escrow, stored)


def _settle_once(
    ledger: Ledger,
    identity: HostIdentity,
    tc: TransportControl,
    escrow: Escrow,
    stored: StoredReceipt | None,
) -> Settlement:
    # the IDs come from the connection and escrow: the ledger need not read them again;
    # a receipt that pays nothing more is not claimed (a transaction's worth of checks
    # for nothing)
    if (
        stored is not None
        and stored.receipt.nonce > escrow.latest_nonce
        and stored.receipt.total_amount > escrow.claimed
    ):
        return ledger.settle_with_receipt(
            identity, tc.id, stored.receipt, escrow_id=tc.escrow, cap_id=escrow.spending_cap
        )
    return ledger.settle(identity, tc.id, escrow_id=tc.escrow, cap_id=escrow.spending_cap)


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


class ClaimBackoff:
    """A live server's memory of the receipts its recovery failed to claim (for
    :func:`recover_unclaimed`'s ``backoff``), per connection ID, counted in recovery
    rounds (:meth:`next_round`). A dead run's receipt the ledger refuses for good (the
    client's cap this epoch, a connection that cannot be read, a receipt it rejects)
    was tried -- a ledger call and a warning -- every round by every live server on the
    store, for as long as it lasted. After its n-th failure it waits 2**(n-1) rounds, at
    most ``max_rounds``, before it is tried again; its first failure is logged as a
    warning, the later ones at debug level. Forgotten once claimed, or once its row is
    no longer unclaimed (claimed by another server, or written off). Thread-safe."""

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

    def __len__(self) -> int:
        with self._lock:
            return len(self._failed)

    def __contains__(self, connection_id: object) -> bool:
        if not isinstance(connection_id, str):
            return False
        with self._lock:
            return normalize_id(connection_id, "connection ID") in self._failed

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
) -> list[tuple[str, Settlement]]:
    """Claim and settle every connection the store holds an unclaimed receipt for (run at
    start: a previous run's connections are gone), or those of ``receipts`` (read from
    it). Failures (the ledger's, the store's, any other exception) are logged and
    skipped: one receipt's stops none of the others. Not the receipts of a server still
    serving from the store: it would settle its live connections (the paid servers claim
    those of dead runs only, :meth:`ReceiptStore.orphaned`). Once ``stopped()`` is true
    no further receipt is claimed (those left stay unclaimed in the store). With
    ``backoff`` (a live server's rounds), a receipt whose last tries failed is tried
    only once due, its failures are remembered there, and only its first is logged as
    a warning."""
    done: list[tuple[str, Settlement]] = []
    for stored in list(store.unclaimed() if receipts is None else receipts):
        if stopped is not None and stopped():
            break
        cid = stored.receipt.connection_id
        if backoff is None:
            try:
                settlement = claim_and_settle(ledger, identity, cid, store)
            except (ChainError, ReceiptStoreError) as exc:
                logger.warning("could not claim the stored receipt of %s: %s", cid, exc)
                continue
            except Exception:
                # (a bug, a ledger's surprise: with its traceback) Let out, it ended the
                # recovery -- the receipts after it unclaimed -- and the server's start,
                # on every restart alike
                logger.exception("could not claim the stored receipt of %s", cid)
                continue
        else:
            if not backoff.due(cid):
                continue
            settlement = _claim_with_backoff(ledger, identity, store, cid, backoff)
        if settlement is not None:
            done.append((cid, settlement))
    return done


def _claim_with_backoff(
    ledger: Ledger, identity: HostIdentity, store: ReceiptStore, cid: str, backoff: ClaimBackoff
) -> Settlement | None:
    """:func:`claim_and_settle` of a receipt ``backoff`` found due: its failure noted
    there (and logged), its success (or its receipt found written off) forgetting it."""
    try:
        settlement = claim_and_settle(ledger, identity, cid, store)
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
