"""RPC fees (docs/escrow.md): per-request fees paid by receipts (:class:`RequestPayments`,
:func:`ledger_payments`) and prepaid response fees (:class:`ResponsePrepay`,
:class:`ResponseFeePolicy`): their rules in one place, for both clients and both servers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from dtp.errors import DTPError, ObjectNotFound
from dtp.hostid._admission import LedgerAdmission, while_opening
from dtp.ledger._objects import Sla, normalize_id
from dtp.ledger.receipt import Receipt, ReceiptScope
from dtp.messaging import errors as E
from dtp.messaging._protocol import _check_count
from dtp.messaging.rpc._cover import Refusal, RequestCover, Reread, metered_of
from dtp.payments.receipts import ConnectionTerms, Meter

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.payments.receipt_store import ReceiptStore


logger = logging.getLogger(__name__)


def check_one_meter(meter: Meter | None, stream: Any) -> None:
    """Refuse an RPC meter on a connection its transport meters already (one by host
    ID, metered by default): both would sign cumulative receipts for the one escrow,
    which takes one sequence of them -- a server claims the one and the other's fees
    are never collected (or its claim fails once the connection is settled)."""
    if meter is None:
        return
    # (a DTPSocket's or a dtp.aio writer's hook: the transport's metered payment)
    layer = getattr(stream, "layer", None)
    if layer is not None and layer.hook is not None:
        raise ValueError(
            "meter=: this connection is metered by its transport already (connected by "
            "host ID): its receipts and the meter's would compete for one escrow. Pay "
            "per request with a meter on a connection made with "
            "metering=MeteringConfig(enabled=False), or let the transport's receipts pay "
            "(no meter=)"
        )


#: Bytes of the cap a paid call keeps for its receipt and prepaid escrow ID (meta "r",
#: "re"), checked before they are made (RpcProtocol.check_request).
FEE_META_RESERVE = 512


def response_hash(body: bytes) -> bytes:
    """BLAKE2b-256 of a RESPONSE frame's msgpack body: what acknowledgements sign."""
    return hashlib.blake2b(body, digest_size=32).digest()


_T = TypeVar("_T")


class _OfCover(Generic[_T]):
    """An attribute of :class:`RequestPayments` that is its :class:`RequestCover`'s: one
    state, whichever face reads or sets it."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type) -> _OfCover[_T]: ...
    @overload
    def __get__(self, obj: RequestPayments, owner: type) -> _T: ...
    def __get__(self, obj: RequestPayments | None, owner: type) -> _OfCover[_T] | _T:
        if obj is None:
            return self
        return getattr(obj._cover, self._name)  # type: ignore[no-any-return]

    def __set__(self, obj: RequestPayments, value: _T) -> None:
        setattr(obj._cover, self._name, value)


class RequestPayments:
    """The server's per-request fee check for one connection's escrow.

    Each request may carry a receipt (meta ``"r"``); it is checked with
    :func:`dtp.payments.receipts.check_receipt` (the rules of ``escrow::claim``) and kept
    when valid.
    A request is served only while ``served < latest.total_requests + credit_requests``;
    otherwise it fails with :class:`~dtp.messaging.errors.PaymentRequired`. Claim
    :attr:`latest` on the ledger whenever convenient.

    The rules are :class:`~dtp.messaging.rpc._cover.RequestCover`'s (sans-I/O); this
    holds it under a lock for a server's threads and streams, and does its I/O: the
    clock, the deposit's re-read on the ledger, ``on_receipt``.
    """

    def __init__(
        self,
        scope: ReceiptScope,
        sla: Sla,
        client_public_key: bytes,
        deposited: int,
        *,
        credit_requests: int = 0,
        on_receipt: Callable[[Receipt], None] | None = None,
    ) -> None:
        # (checked here: a wrong one refused every request, or let them all through,
        # only once a client came)
        if not isinstance(scope, ReceiptScope):
            raise TypeError(
                "scope must be a ReceiptScope (package, escrow, connection), not "
                f"{type(scope).__name__!r}"
            )
        if not isinstance(sla, Sla):
            raise TypeError(f"sla must be an Sla, not {type(sla).__name__!r}")
        if type(client_public_key) is not bytes or len(client_public_key) != 32:
            raise TypeError("client_public_key must be the 32 bytes of an Ed25519 public key")
        _check_count("deposited", deposited, 0)
        _check_count("credit_requests", credit_requests, 0)
        if on_receipt is not None and not callable(on_receipt):
            raise TypeError(f"on_receipt must be callable, not {type(on_receipt).__name__!r}")
        self._cover = RequestCover(
            scope,
            sla,
            client_public_key,
            deposited,
            credit_requests,
        )
        #: Called with each accepted receipt (e.g. ``ReceiptStore.keep``), before the
        #: request it pays for is served.
        self.on_receipt = on_receipt
        #: Reads the escrow's deposit again (set by :meth:`from_ledger`): a client that
        #: topped up signs receipts beyond the deposit read at the start.
        self.read_deposit: Callable[[], int] | None = None
        # the re-read under way, if any: done once it ended (a thread waits on it, and
        # so does the event loop, with no thread)
        self._rereading: concurrent.futures.Future[None] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_ledger(
        cls,
        ledger: Ledger,
        connection_id: str,
        *,
        credit_requests: int = 0,
        on_receipt: Callable[[Receipt], None] | None = None,
    ) -> RequestPayments:
        """The check for a ledger connection, with its SLA, client key and deposit read
        from its TransportControl and Escrow (for servers reached by host ID)."""
        terms = ConnectionTerms.from_ledger(ledger, connection_id)
        payments = cls(
            terms.scope,
            terms.sla,
            terms.client_public_key,
            terms.deposited,
            credit_requests=credit_requests,
            on_receipt=on_receipt,
        )
        escrow_id = terms.escrow_id
        payments.read_deposit = lambda: ledger.get_escrow(escrow_id).deposited
        return payments

    # the rules' state is the cover's: read and set through it
    scope = _OfCover[ReceiptScope](
        "The package, escrow and connection the receipts must be signed for."
    )
    sla = _OfCover[Sla]("The connection's fees.")
    client_public_key = _OfCover[bytes]("The client's Ed25519 key, which signs the receipts.")
    deposited = _OfCover[int](
        "The escrow's deposit known (read again when a receipt goes beyond it)."
    )
    credit_requests = _OfCover[int]("Requests served ahead of the receipts covering them.")
    served = _OfCover[int]("Requests counted as served.")
    latest = _OfCover[Receipt | None]("The newest receipt accepted: what the server claims.")

    @property
    def connection_id(self) -> str:
        """The connection whose escrow pays (normalized)."""
        return self._cover.connection_id

    @connection_id.setter
    def connection_id(self, value: str) -> None:
        self._cover.scope = replace(self._cover.scope, connection_id=value)

    def resume(self, latest: Receipt) -> None:
        """Carry on from ``latest``, a receipt accepted earlier on this connection
        (kept in a :class:`~dtp.payments.receipt_store.ReceiptStore`): every request it pays for
        counts as served, so the client's receipts up to it pay for nothing more."""
        with self._lock:
            self._cover.resume(latest)

    @property
    def earned(self) -> int:
        """MIST the latest receipt lets the server claim."""
        return self._cover.earned

    def admit(self, meta: Mapping[str, Any] | None, requests: int = 1) -> None:
        """Check the request's receipt (if any) and count the request as ``requests``
        requests of the SLA (its method's price; 0: free), or raise PaymentRequired.

        A receipt at or below the latest one's nonce is not refused while the latest
        pays for more requests than were served: the client signed them in one order
        and they came in another (two streams sharing a meter), and the newer receipt
        already paid for this request. A receipt beyond the known deposit has the
        escrow's deposit read again first (the client may have topped up)."""
        refused = self._first_admit(meta, None, requests)
        if refused is None:
            return
        error, step, reading = refused
        if step is Reread.READ_NOW:
            if not self._read_deposit():
                raise error
        elif step is Reread.WAIT and reading is not None:
            done, _ = concurrent.futures.wait([reading], _REREAD_WAIT)
            if not done:
                raise error
        else:
            raise error
        self._readmit(meta, None, requests)

    async def admit_async(self, meta: Mapping[str, Any] | None, requests: int = 1) -> None:
        """:meth:`admit` for a server on an event loop: the deposit's re-read (a
        ledger read, perhaps over the network) runs in a worker thread; requests
        waiting for it wait on the loop. ``on_receipt`` runs in a worker thread too
        (:meth:`ReceiptStore.keep <dtp.payments.receipt_store.ReceiptStore.keep>` syncs the
        disk), and the request waits for it; concurrent requests' calls may overlap
        and end in any order (``keep`` stores the highest nonce whatever the order).
        A request whose receipt ``on_receipt`` fails to keep, or whose task is cancelled
        while it keeps it, is not counted, as with :meth:`admit`: it is never served
        (the receipt is kept all the same, and pays for the next request)."""
        accepted: list[Receipt] = []
        counted = False
        try:
            await self._admit_async(meta, accepted, requests)
            counted = True
        finally:
            if accepted and self.on_receipt is not None:
                loop = asyncio.get_running_loop()
                try:
                    for receipt in accepted:  # (shielded: a cancelled request's is kept too)
                        await asyncio.shield(loop.run_in_executor(None, self.on_receipt, receipt))
                except BaseException:  # (a cancellation too: _count's rule)
                    if counted:  # (refused with an internal error, or cancelled: not served)
                        with self._lock:
                            self._cover.not_served(requests)
                    raise

    async def _admit_async(
        self, meta: Mapping[str, Any] | None, accepted: list[Receipt], requests: int
    ) -> None:
        refused = self._first_admit(meta, accepted, requests)
        if refused is None:
            return
        error, step, reading = refused
        if step is Reread.READ_NOW:
            # submitted now, ahead of anything queued later for the executor, and
            # shielded: a request cancelled meanwhile does not cut short the read that
            # the requests waiting for it need (the thread records the deposit itself)
            loop = asyncio.get_running_loop()
            if not await asyncio.shield(loop.run_in_executor(None, self._read_deposit)):
                raise error
        elif step is Reread.WAIT and reading is not None:
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(reading)), _REREAD_WAIT)
            except TimeoutError:
                raise error from None
        else:
            raise error
        self._readmit(meta, accepted, requests)

    def _first_admit(
        self,
        meta: Mapping[str, Any] | None,
        accepted: list[Receipt] | None = None,
        requests: int = 1,
    ) -> tuple[E.PaymentRequired, Reread, concurrent.futures.Future[None] | None] | None:
        """:meth:`_count`; for a refusal, its error and what to do about it
        (:meth:`RequestCover.reread`: read the deposit again, wait for the re-read under
        way -- the future returned -- or refuse): a receipt signed after a top-up,
        behind another one's re-read, is covered once that read is in."""
        with self._lock:
            refused = self._count(meta, accepted, requests)
            if refused is None:
                return None
            if not refused.beyond_deposit or self.read_deposit is None:
                return refused.error, Reread.REFUSE, None
            step = self._cover.reread(time.monotonic())
            if step is Reread.READ_NOW:
                self._rereading = concurrent.futures.Future()
            return refused.error, step, self._rereading

    def _read_deposit(self) -> bool:
        """Read the escrow's deposit again (outside the lock: a ledger read) and record
        it, then wake the requests waiting for it. False when it could not be read (the
        request is refused as it was)."""
        assert self.read_deposit is not None
        deposited = None
        try:
            deposited = self.read_deposit()
        except DTPError as exc:
            logger.info("cannot read the deposit of %s again: %s", self.connection_id, exc)
            return False
        except Exception:
            # a failing read refuses the request as it is, as a typed one does, and is
            # logged, never raised into a cancelled request's shielded wait
            # (test_a_deposit_read_failing_untyped_refuses_the_request)
            logger.exception("reading the deposit of %s again failed", self.connection_id)
            return False
        finally:
            with self._lock:
                self._cover.deposit_read(deposited)
                done, self._rereading = self._rereading, None
            if done is not None:
                done.set_result(None)
        return True

    def _readmit(
        self,
        meta: Mapping[str, Any] | None,
        accepted: list[Receipt] | None = None,
        requests: int = 1,
    ) -> None:
        with self._lock:
            again = self._count(meta, accepted, requests)
        if again is not None:
            raise again.error

    def _count(
        self, meta: Mapping[str, Any] | None, accepted: list[Receipt] | None, requests: int = 1
    ) -> Refusal | None:
        """:meth:`RequestCover.admit` (``_lock`` held): None once the request is
        counted, else why not. A receipt it accepts goes to ``on_receipt`` now -- a
        request whose receipt it fails to keep is not counted -- or into ``accepted``
        for the caller to pass on (outside the lock)."""
        raw = None if meta is None else meta.get("r")
        outcome = self._cover.admit(raw, requests, metered_of(meta))
        if outcome is None or isinstance(outcome, Refusal):
            return outcome
        if accepted is not None:
            accepted.append(outcome)
        elif self.on_receipt is not None:
            try:
                self.on_receipt(outcome)
            except BaseException:
                self._cover.not_served(requests)
                raise
        return None


#: Longest a request beyond the deposit waits for another request's re-read of it.
_REREAD_WAIT = 30.0


# A server's ``payments``: one :class:`RequestPayments` for every stream, or a function
# from the ledger connection ID a client named in its handshake (None when it named none)
# to that connection's check (None: serve unpaid). The function runs once per connection
# and its result is shared by the connection's streams; a DTPError it raises refuses
# every request of the connection with PaymentRequired and that message.


def ledger_payments(
    ledger: Ledger,
    *,
    on_receipt: Callable[[Receipt], None] | None = None,
    receipts: ReceiptStore | None = None,
) -> Callable[[str | None], RequestPayments]:
    """A ``payments`` source for servers reached by host ID: each connection's check is
    built from its ledger connection (:meth:`RequestPayments.from_ledger`); requests of a
    client that named no ledger connection (or an unknown one) get PaymentRequired. A
    connection not found is looked for again for up to
    :attr:`~dtp.hostid._admission.LedgerAdmission.OPEN_GRACE` first, as the admission does: the
    client's open may still be landing when the stream starts. ``on_receipt`` sees every
    accepted receipt of every connection (keep them to claim).

    ``receipts`` (by default the store ``on_receipt`` is the ``keep`` of, if it is one):
    a connection's check carries on from its stored latest receipt
    (:meth:`RequestPayments.resume`), so a server restarted, or one that forgot the
    connection, does not take the client's receipts again as pay for new requests.
    Without a store the source remembers each connection's latest receipt in memory
    (a few hundred bytes per ledger connection that paid, for the source's life): a
    server forgets the checks of connections gone quiet, and a client coming back
    after that must not be served again for the receipts it sent before."""
    from dtp.payments.receipt_store import ReceiptStore

    if receipts is None and isinstance(getattr(on_receipt, "__self__", None), ReceiptStore):
        receipts = on_receipt.__self__  # type: ignore[union-attr]
    remembered: dict[str, Receipt] = {}
    remembered_lock = threading.Lock()
    keep = on_receipt

    if receipts is None:

        def keep(receipt: Receipt) -> None:
            key = normalize_id(receipt.connection_id, "connection")
            with remembered_lock:
                known = remembered.get(key)
                if known is None or receipt.nonce > known.nonce:
                    remembered[key] = receipt
            if on_receipt is not None:
                on_receipt(receipt)

    def read(connection_id: str) -> RequestPayments | None:
        try:
            payments = RequestPayments.from_ledger(ledger, connection_id, on_receipt=keep)
        except ObjectNotFound:
            return None
        if receipts is not None:
            stored = receipts.latest(payments.connection_id)
            if stored is not None:
                payments.resume(stored.receipt)
        else:
            with remembered_lock:
                latest = remembered.get(payments.connection_id)
            if latest is not None:
                payments.resume(latest)
        return payments

    def source(connection_id: str | None) -> RequestPayments:
        if connection_id is None:
            raise E.PaymentRequired("this service is paid: connect by host ID (dtp://…)")
        try:
            # a stream may start (and this run) while the client's open lands: the
            # client names its connection in the handshake before the open is done
            found = while_opening(lambda: read(connection_id), LedgerAdmission.OPEN_GRACE)
        except DTPError as exc:
            raise E.PaymentRequired(f"no ledger connection {connection_id}: {exc}") from None
        if found is None:
            raise E.PaymentRequired(f"no ledger connection {connection_id}")
        return found

    return source


#: Most ledger connections whose payments check a server keeps once none of their
#: streams is served (the least recently used go first).
_KEPT_PAYMENTS = 4096


class PaymentsCache:
    """Resolves a payments source per connection ID, once, for all its streams; a
    check built (a :class:`RequestPayments`) outlives the connection's streams, kept
    among the last :data:`_KEPT_PAYMENTS` connections used: a client reconnecting to the
    same ledger connection must not start again from nothing served (its last receipt
    would pay for its requests a second time). A failure to build one is forgotten with
    the connection's last stream: the next stream tries again."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self._lock = threading.Lock()
        # (insertion order: least recently used first, for eviction)
        self._by_connection: dict[str | None, Any] = {}
        self._users: dict[str | None, int] = {}

    def release(self, connection_id: str | None) -> None:
        """A stream of ``connection_id`` is no longer served."""
        with self._lock:
            left = self._users.get(connection_id, 0) - 1
            if left > 0:
                self._users[connection_id] = left
                return
            self._users.pop(connection_id, None)
            entry = self._by_connection.get(connection_id)
            if entry is not None and not isinstance(entry.value, RequestPayments):
                del self._by_connection[connection_id]
            self._evict()

    def _evict(self) -> None:
        """Forget the least recently used checks beyond :data:`_KEPT_PAYMENTS`, of
        connections with no stream served (``_lock`` held)."""
        excess = len(self._by_connection) - _KEPT_PAYMENTS
        if excess <= 0:
            return
        for key in [k for k in self._by_connection if k not in self._users][:excess]:
            del self._by_connection[key]

    def resolve(self, connection_id: str | None) -> RequestPayments | None:
        """The connection's check; raises the DTPError that building it raised.

        The source runs outside the lock (``ledger_payments`` looks for a connection
        for up to two seconds): under it, a client naming connections that do not exist
        held up every other stream's start, of every connection. The streams of one
        connection wait for the first one's result, and share it."""
        if self.source is None or isinstance(self.source, RequestPayments):
            return self.source
        if connection_id is None:  # never kept: each such stream asks on its own
            return self.source(None)  # type: ignore[no-any-return]
        with self._lock:
            entry = self._by_connection.pop(connection_id, None)
            building = entry is None
            if building:
                entry = _Resolving()
            self._by_connection[connection_id] = entry  # (now the most recently used)
            self._users[connection_id] = self._users.get(connection_id, 0) + 1
        assert entry is not None
        if building:
            try:
                entry.value = self.source(connection_id)
            except BaseException as exc:  # (a DTPError refuses the connection's requests)
                entry.value = exc
            entry.done.set()
        else:
            entry.done.wait()
        if isinstance(entry.value, BaseException):
            raise entry.value
        return entry.value  # type: ignore[no-any-return]


class _Resolving:
    """A connection's payments check being built (``done`` once ``value`` is set: the
    check, None, or what building it raised)."""

    __slots__ = ("done", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None


@dataclass
class ResponsePrepay:
    """Client side of response escrow: prepay ``amount`` MIST per call to ``server``
    (its Sui address) on ``ledger``; the fee comes back after the deadline when no
    response came. ``grace_ms`` is added to the call's timeout for the ledger deadline
    (ledger clock), so the server has time to claim."""

    ledger: Ledger
    identity: HostIdentity
    server: str
    amount: int
    grace_ms: int = 1000
    #: escrows whose call got no response: refund them with :meth:`refund_due`.
    unanswered: list[str] = field(default_factory=list)

    def deposit(self, timeout: float) -> str:
        """Create the ResponseEscrow for one call; returns its ID. ``timeout``: the
        call's, in seconds (finite, not negative: InvalidArgument otherwise)."""
        from dtp.errors import InvalidArgument

        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout < 0
        ):
            # (a timeout is finite and >= 0: int() of nan or inf raises untyped, and a
            # negative one is a deadline already past)
            raise InvalidArgument(f"timeout must be finite seconds >= 0, not {timeout!r}")
        deadline = self.ledger.clock_ms() + int(timeout * 1000) + self.grace_ms
        return self.ledger.response_escrow_deposit(
            self.identity, self.server, os.urandom(16), self.amount, deadline
        )

    def refund_due(self) -> int:
        """Refund every unanswered escrow whose deadline passed; returns the MIST back.

        Escrows are taken off :attr:`unanswered` one by one and those not refunded put
        back at the end (list pops and extends are atomic): the calls of other threads
        add theirs meanwhile, and the list replaced whole at the end dropped one added
        after the last was looked at -- never refunded. An error (the ledger not
        answering) puts back the escrow it came on too."""
        from dtp.errors import ChainError
        from dtp.ledger._deletion import Deletions

        # the requester deletes what it refunds, in the same transaction, and what was
        # paid meanwhile: its deposit paid for the escrow's storage (docs/escrow.md §12)
        deletes = type(self.ledger).destroy_response_escrow is not (
            Deletions.destroy_response_escrow
        )
        refund = (
            self.ledger.refund_and_destroy_response_escrow
            if deletes
            else self.ledger.response_escrow_refund
        )
        total = 0
        keep: list[str] = []
        try:
            while True:
                try:
                    escrow_id = self.unanswered.pop(0)
                except IndexError:
                    break
                try:
                    esc = self.ledger.get_response_escrow(escrow_id)
                    if esc.state != 0:
                        if deletes:
                            with contextlib.suppress(ChainError):
                                self.ledger.destroy_response_escrow(self.identity, escrow_id)
                        continue
                    if self.ledger.clock_ms() <= esc.deadline_ms:
                        keep.append(escrow_id)
                        continue
                    try:
                        total += refund(self.identity, escrow_id)
                    except ChainError:
                        keep.append(escrow_id)
                except BaseException:
                    keep.append(escrow_id)
                    raise
        finally:
            self.unanswered.extend(keep)
        return total

    def acknowledgement(self, escrow_id: str, body: bytes) -> bytes:
        """The signature acknowledging ``body`` (the response's encoded result) as the
        answer to the call that prepaid ``escrow_id``: the client sends it in an ACK and
        the server claims the escrow with it (docs/escrow.md). Both clients sign so."""
        from dtp.ledger.interface import response_ack_message

        message = response_ack_message(self.ledger.package_id, escrow_id, response_hash(body))
        return self.identity.sign(message)


def _claim_refused_for_good(exc: BaseException) -> bool:
    """Whether a failed claim would fail again: a Move abort, an unknown or malformed
    object, a signer the escrow does not name (not an outage, gas or a busy object)."""
    from dtp.errors import ChainError, NotAuthorized, ObjectNotFound

    if not isinstance(exc, ChainError):
        return False
    return exc.code is not None or isinstance(exc, (ObjectNotFound, NotAuthorized, ValueError))


class ResponseFeePolicy:
    """Server side of response escrow: which prepaid escrows a request may use, and the
    acknowledgements collected for claiming.

    A request must name (meta ``"re"``) an open ResponseEscrow on ``ledger`` that pays
    ``identity``'s address at least ``min_amount`` with a deadline still ahead, prepaid by
    the client that sent it (the escrow's requester is the Sui address the client proved
    in its DTP handshake); otherwise it fails with PaymentRequired (when ``required``;
    else it is served unpaid).
    """

    def __init__(
        self, ledger: Ledger, identity: HostIdentity, min_amount: int, *, required: bool = True
    ) -> None:
        _check_count("min_amount", min_amount, 0)
        if not isinstance(required, bool):
            raise TypeError(f"required must be a bool, not {type(required).__name__!r}")
        self.ledger = ledger
        self.identity = identity
        self.min_amount = min_amount
        self.required = required
        self._lock = threading.Lock()
        #: escrow ID -> (response hash, response body) for answered requests
        self.answered: dict[str, tuple[bytes, bytes]] = {}
        #: escrow ID -> (response hash, requester signature): ready to claim
        self.acks: dict[str, tuple[bytes, bytes]] = {}
        #: MIST claimed or delivered so far
        self.claimed = 0
        #: acknowledged fees the ledger refused for good in :meth:`claim_all`
        self.claims_refused = 0

    def admit(self, meta: Mapping[str, Any] | None, peer: str | None = None) -> str | None:
        """The escrow ID a request prepaid with (None if none and not required).

        ``peer``: the Sui address the requesting client proved (None: not known, as on a
        plain socket). An escrow's ID is public (a shared object, its deposit event):
        served to anyone naming it, a third party had the server paid with the
        requester's fee for its own response; so only its requester may use it."""
        from dtp.errors import ChainError
        from dtp.ledger.interface import RESPONSE_ESCROW_OPEN

        escrow_id = None if meta is None else meta.get("re")
        if escrow_id is None:
            if self.required:
                raise E.PaymentRequired("this service needs a prepaid response fee")
            return None
        if not isinstance(escrow_id, str):
            raise E.PaymentRequired("re must be an object ID")
        try:
            esc = self.ledger.get_response_escrow(escrow_id)
        except ChainError as exc:
            raise E.PaymentRequired(f"no such response escrow: {exc}") from None
        if esc.state != RESPONSE_ESCROW_OPEN or esc.server != self.identity.sui_address:
            raise E.PaymentRequired("the response escrow is not open for this server")
        if peer is None or normalize_id(peer, "peer address") != normalize_id(
            esc.requester, "requester address"
        ):
            raise E.PaymentRequired(
                "the response escrow was not prepaid by this client (connect with the "
                "identity that made it)"
            )
        if esc.amount < self.min_amount:
            raise E.PaymentRequired(f"response fee {esc.amount} < {self.min_amount} MIST")
        try:
            now_ms = self.ledger.clock_ms()
        except ChainError as exc:  # (refused, not the stream ended: see acknowledged)
            raise E.PaymentRequired(f"the ledger's clock cannot be read: {exc}") from None
        if esc.deadline_ms <= now_ms:
            raise E.PaymentRequired("the response escrow's deadline has passed")
        with self._lock:
            if escrow_id in self.answered or escrow_id in self.acks:
                raise E.PaymentRequired("this response escrow was already used")
            self.answered[escrow_id] = (b"", b"")
        return escrow_id

    def responded(self, escrow_id: str, body: bytes) -> None:
        """The request that prepaid with ``escrow_id`` was answered with ``body``."""
        with self._lock:
            self.answered[escrow_id] = (response_hash(body), body)

    def release(self, escrow_id: str) -> None:
        """The request that named ``escrow_id`` ended with no response (its handler
        failed, it was cancelled or its deadline passed): forget the escrow, kept since
        :meth:`admit` so that no other request used it meanwhile (a second request may
        use it now: one response is paid once). Without this every such request left
        an entry for good."""
        with self._lock:
            entry = self.answered.get(escrow_id)
            if entry is not None and not entry[0]:
                del self.answered[escrow_id]

    def acknowledged(self, escrow_id: str, signature: bytes) -> bool:
        """Keep a requester's acknowledgement if it verifies; returns whether it did."""
        from dtp.errors import ChainError
        from dtp.identity._ed25519 import verify_memoized
        from dtp.ledger.interface import response_ack_message

        with self._lock:
            entry = self.answered.get(escrow_id)
        if entry is None or not entry[0]:
            return False
        try:
            esc = self.ledger.get_response_escrow(escrow_id)
        except ChainError as exc:
            # the ledger failing here must not end the stream (every call on it): the
            # response stays answered, for deliver_unacknowledged
            logger.info("cannot check the acknowledgement for %s: %s", escrow_id, exc)
            return False
        message = response_ack_message(self.ledger.package_id, escrow_id, entry[0])
        if not verify_memoized(esc.requester_public_key, signature, message):
            return False
        with self._lock:
            self.answered.pop(escrow_id, None)
            self.acks[escrow_id] = (entry[0], signature)
        return True

    def claim_all(self) -> int:
        """Claim every acknowledged response fee on the ledger; returns the MIST earned.

        Each claim stands alone: one the ledger refuses for good (a Move abort such as an
        escrow already settled or refunded, an unknown object) is dropped with a warning
        and counted in :attr:`claims_refused`; one that failed for a passing reason (the
        node unreachable, gas, a busy object) stays in :attr:`acks` for the next call, as
        do the claims not yet tried when the ledger stopped answering. Earlier claims of
        the same call are kept either way."""
        from dtp.errors import ChainError

        with self._lock:
            acks, self.acks = self.acks, {}
        items = list(acks.items())
        total = 0
        done = 0  # items[done:] are neither claimed, dropped nor kept yet
        try:
            for index, (escrow_id, (digest, signature)) in enumerate(items):
                try:
                    amount = self.ledger.response_escrow_claim(
                        self.identity, escrow_id, digest, signature
                    )
                except ChainError as exc:
                    if _claim_refused_for_good(exc):
                        done = index + 1
                        logger.warning("response fee for %s refused: %s", escrow_id, exc)
                        with self._lock:
                            self.claims_refused += 1
                        continue
                    logger.info("cannot claim the response fee for %s yet: %s", escrow_id, exc)
                    if exc.name == "LedgerUnavailable":
                        break  # every other claim would wait out the same outage
                    self._keep_acks([items[index]])
                    done = index + 1
                    continue
                done = index + 1
                total += amount
        finally:
            # also on an unexpected error: what was not claimed stays claimable
            self._keep_acks(items[done:])
            with self._lock:
                self.claimed += total
        return total

    def _keep_acks(self, items: list[tuple[str, tuple[bytes, bytes]]]) -> None:
        with self._lock:
            for escrow_id, ack in items:
                self.acks.setdefault(escrow_id, ack)

    def deliver_unacknowledged(self) -> int:
        """Post unacknowledged responses on the ledger (before their deadlines) to be paid
        without the requester's help; returns the MIST earned."""
        from dtp.errors import ChainError

        with self._lock:
            pending = {k: v for k, v in self.answered.items() if v[1]}
        total = 0
        for escrow_id, (_, body) in pending.items():
            try:
                total += self.ledger.response_escrow_deliver(self.identity, escrow_id, body)
            except ChainError as exc:
                logger.info("cannot deliver response for %s: %s", escrow_id, exc)
                continue
            with self._lock:
                self.answered.pop(escrow_id, None)
        with self._lock:
            self.claimed += total
        return total


def stream_payments(cache: PaymentsCache, stream: Any) -> tuple[RequestPayments | None, str | None]:
    """(the check for the stream's connection, or why there is none and requests must be
    refused)."""
    try:
        return cache.resolve(getattr(stream, "peer_connection_id", None)), None
    except DTPError as exc:
        # (a RemoteError's own text: str() prefixes its code, which the refusal adds)
        return None, exc.message if isinstance(exc, E.RemoteError) else str(exc)
    except Exception:
        # a failing payments source refuses the stream's requests (its cache entry is
        # released with the stream) rather than end the stream's thread untyped
        logger.exception("the payments source failed")
        return None, "the server's payments check failed"
