"""The RPC fee engine (docs/messaging.md "Fees, step by step"): the order of the fee
steps, held once for the blocking and the asyncio drivers -- a paid call's on a client
(:class:`ClientFees`, which also files each call's prepaid escrow until the call ends),
a request's admission, end and ACK on a server (:class:`ServerCallFees`), and which of a
connection's requests its receipts cover (:class:`RequestCover`, the rules of
:class:`~dtp.messaging.rpc.fees.RequestPayments`). Sans-I/O: no
sockets, threads, tasks, locks or clock reads. The drivers pass ``now`` and the checks,
and run the steps the engine names (frozen dataclasses) on the driver-side helpers of
:mod:`dtp.messaging.rpc.fees`, which hold the locks, the ledger reads and their clocks:
inline, or in a worker thread; the drivers hold their own lock (or do not await) where
the engine says so."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from dtp.errors import DTPError
from dtp.ledger.receipt import Receipt, ReceiptScope
from dtp.messaging import errors as E
from dtp.payments.receipts import Meter, check_next_receipt

if TYPE_CHECKING:
    # (types only: fees.py's RequestPayments wraps this module's RequestCover)
    from dtp.ledger.objects import Sla
    from dtp.messaging.rpc.fees import RequestPayments, ResponseFeePolicy, ResponsePrepay

#: What a call's meta is while the engine adds its fee keys ("r", "re") to it: the
#: driver's own copy of the caller's meta (``streams.meta_copy``), or None for none.
Meta = dict[str, Any] | None
#: The driver's "can this request be sent now?": raises as sending it would (the stream
#: closed, too many in flight, too large with the fee's meta), queues nothing.
Check = Callable[[Meta], None]

#: Seconds of a prepaid call's escrow deadline when the call has no timeout.
UNTIMED_DEPOSIT = 60.0


def sign_request(meter: Meter, now_ms: int) -> bytes | None:
    """Count one request in ``meter``; the encoded receipt that covers it, when the
    meter signs one now (meta ``"r"``)."""
    receipt = meter.record(now_ms, requests=1) or meter.flush(now_ms)
    return None if receipt is None else receipt.encode()


class ClientFees:
    """A client's fees: a ``meter`` (per-request receipts) and a ``prepay`` (a response
    escrow per call), either or both, and the registry of the calls in flight that
    prepaid an escrow. One per client; :meth:`begin` starts each paid call's steps, and
    the driver reports how each call ended: :meth:`answered`, :meth:`unanswered`, or
    :meth:`all_unanswered` when every call fails at once (the stream lost, closed).
    Every escrow made is acknowledged or put to refund exactly once."""

    __slots__ = ("_escrows", "meter", "prepay")

    def __init__(self, meter: Meter | None, prepay: ResponsePrepay | None) -> None:
        self.meter = meter
        self.prepay = prepay
        # request ID -> (the escrow its call prepaid, the ResponsePrepay that made it),
        # until the call ends: a prepay replaced meanwhile still refunds its own escrows
        self._escrows: dict[int, tuple[str, ResponsePrepay]] = {}

    def begin(self, meta: Meta, timeout: float | None, check: Check) -> PaidCall:
        """Start a paid call: ``check`` it first, so that a request that cannot be sent
        is found out before it is paid for (no escrow made, nothing metered). Then the
        call's :attr:`PaidCall.deposit_timeout` says whether a deposit is due."""
        check(meta)
        paid = PaidCall(self, meta)
        if self.prepay is not None:
            paid.prepay = self.prepay
            paid.deposit_timeout = UNTIMED_DEPOSIT if timeout is None else timeout
        return paid

    def answered(self, request_id: int, body: bytes) -> bytes | None:
        """The call ``request_id`` was answered with ``body``: the signature
        acknowledging it, for the driver to send back in an ACK (the server claims the
        escrow with it); None when the call prepaid nothing or ended already. Both
        drivers ask this for every response: an answer reaching a call that ended
        (:meth:`unanswered`: timed out, cancelled, failed) is never acknowledged -- its
        caller never saw it, and its escrow waits for refund; a server that answered
        before the ledger deadline is paid by ``deliver`` instead (docs/escrow.md)."""
        entry = self._escrows.pop(request_id, None)
        if entry is None:
            return None
        escrow_id, prepay = entry
        return prepay.acknowledgement(escrow_id, body)

    def unanswered(self, request_id: int) -> None:
        """The call ``request_id`` ended with no response (failed, timed out,
        cancelled): its escrow, if it prepaid one, waits for
        :meth:`ResponsePrepay.refund_due`. A second report of the same call does nothing."""
        entry = self._escrows.pop(request_id, None)
        if entry is not None:
            entry[1].unanswered.append(entry[0])

    def all_unanswered(self) -> None:
        """Every call in flight ended with no response (the stream failed or the client
        closed): their escrows wait for refund."""
        escrows, self._escrows = self._escrows, {}
        for escrow_id, prepay in escrows.values():
            prepay.unanswered.append(escrow_id)

    @property
    def prepaid(self) -> int:
        """How many calls in flight hold a prepaid escrow."""
        return len(self._escrows)


class PaidCall:
    """One paid call's steps, in their order: checked (:meth:`ClientFees.begin`) →
    the response escrow deposited (:meth:`deposited`, when :attr:`deposit_timeout` is
    set) → checked again, metered and sent in one step (:meth:`send`), which files the
    escrow under the request's ID. Whatever fails after the deposit leaves the escrow
    to ``refund_due``: a fee is never lost."""

    __slots__ = ("_fees", "deposit_timeout", "escrow_id", "meta", "prepay")

    def __init__(self, fees: ClientFees, meta: Meta) -> None:
        self._fees = fees
        #: The call's meta with its fee keys, once added.
        self.meta = meta
        #: Seconds for ``ResponsePrepay.deposit`` when the call's escrow is still to be
        #: made (None: no deposit due).
        self.deposit_timeout: float | None = None
        #: What makes (and later refunds) the call's escrow: the client's ``prepay``
        #: when the call began (None: the call prepays nothing).
        self.prepay: ResponsePrepay | None = None
        #: The ResponseEscrow the call prepaid, once made.
        self.escrow_id: str | None = None

    def deposited(self, escrow_id: str) -> None:
        """The driver made the call's escrow: the request names it (meta ``"re"``).
        The escrow comes before the meter: a deposit the ledger refuses must leave the
        meter as it was (its next receipt would pay for a request never sent)."""
        self.escrow_id = escrow_id
        self.deposit_timeout = None
        meta = {} if self.meta is None else self.meta
        meta["re"] = escrow_id
        self.meta = meta

    def orphaned(self, escrow_id: str) -> None:
        """An escrow made for this call after the call was gone (cancelled while the
        deposit ran): no request names it, so it waits for refund."""
        if self.prepay is not None:
            self.prepay.unanswered.append(escrow_id)

    def send(self, now_ms: int, check: Check, send: Callable[[Meta], int]) -> int:
        """Check the request again, meter it and ``send`` it (the driver's framing;
        returns the request ID), with nothing in between: the driver holds its lock
        across this call (or does not await in it), so receipts reach the server in
        their nonce order, and nothing (another call filling the in-flight limit, a
        close) can refuse a request the meter has counted. The call's escrow is then
        filed under the request ID (:meth:`ClientFees.answered`/``unanswered``). Any
        failure puts the escrow on ``unanswered`` and is raised."""
        try:
            # again: the driver let go of its state for the deposit (or its lock)
            check(self.meta)
            meter = self._fees.meter
            if meter is not None:
                receipt = sign_request(meter, now_ms)
                if receipt is not None:
                    meta = {} if self.meta is None else self.meta
                    meta["r"] = receipt
                    self.meta = meta
            request_id = send(self.meta)
        except BaseException:
            if self.escrow_id is not None:
                self.orphaned(self.escrow_id)
            raise
        if self.escrow_id is not None and self.prepay is not None:
            self._fees._escrows[request_id] = (self.escrow_id, self.prepay)
        return request_id


@dataclass(frozen=True, slots=True)
class PayRequest:
    """Admission step: check the request's receipt and count it (``payments.admit``,
    or ``admit_async`` off an event loop); raises PaymentRequired."""

    payments: RequestPayments
    meta: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class TakeEscrow:
    """Admission step: take the response escrow the request prepaid (``policy.admit``,
    a ledger read: in a worker thread off an event loop); returns its ID (None: none,
    and not required); raises PaymentRequired."""

    policy: ResponseFeePolicy
    meta: Mapping[str, Any] | None
    peer: str | None


@dataclass(frozen=True, slots=True)
class KeepResponse:
    """End step: the request that prepaid ``escrow_id`` was answered with ``body``;
    the policy keeps it for the client's ACK (``policy.responded``)."""

    policy: ResponseFeePolicy
    escrow_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class ReleaseEscrow:
    """End step: the request that prepaid ``escrow_id`` ended with no response; the
    policy forgets the escrow, which it held so that no other request used it
    meanwhile (``policy.release``)."""

    policy: ResponseFeePolicy
    escrow_id: str


@dataclass(frozen=True, slots=True)
class CheckAck:
    """Keep the client's acknowledgement of a prepaid response if it verifies
    (``policy.acknowledged``, a ledger read: in a worker thread off an event loop)."""

    policy: ResponseFeePolicy
    escrow_id: str
    signature: bytes


class ServerCallFees:
    """One stream's fees on a server, request by request: the connection's per-request
    check (resolved as the stream starts: ``stream_payments``), the response fee
    policy, and the prepaid escrows of the requests answered, until their ACK comes.
    The driver runs the admission steps in the order :meth:`admission` gives them, then
    reports how each request ended (:meth:`ended`, whose step it runs) and each ACK
    (:meth:`acked`)."""

    __slots__ = ("_answered", "paid", "payments", "payments_error", "response_fees")

    def __init__(
        self,
        payments: RequestPayments | None,
        payments_error: str | None,
        response_fees: ResponseFeePolicy | None,
    ) -> None:
        self.payments = payments
        #: Why every request of the stream is refused (its connection's check could not
        #: be built), if it is.
        self.payments_error = payments_error
        self.response_fees = response_fees
        #: Whether the stream's requests pay anything (else the drivers skip
        #: :meth:`admission`).
        self.paid = payments is not None or payments_error is not None or response_fees is not None
        # request ID -> the prepaid escrow of a request answered, until its ACK
        self._answered: dict[int, str] = {}

    def needs_context(self, wants_ctx: bool) -> bool:
        """Whether a request needs a CallContext: its handler takes one, or it may carry
        a prepaid escrow (kept there): most calls need neither."""
        return wants_ctx or self.response_fees is not None

    def admission(
        self, meta: Mapping[str, Any] | None, peer: str | None
    ) -> tuple[PayRequest | TakeEscrow, ...]:
        """The steps admitting one request, in their order: the connection refused
        outright first (PaymentRequired raised here), then the per-request fee (its
        receipt), then the response escrow (taken last: a request the receipt check
        refuses does not hold an escrow). The driver runs each in turn."""
        if self.payments_error is not None:
            raise E.PaymentRequired(self.payments_error)
        steps: list[PayRequest | TakeEscrow] = []
        if self.payments is not None:
            steps.append(PayRequest(self.payments, meta))
        if self.response_fees is not None:
            steps.append(TakeEscrow(self.response_fees, meta, peer))
        return tuple(steps)

    @staticmethod
    def refusal(exc: Exception) -> tuple[int, str]:
        """The answer (code, message) to a request whose admission raised ``exc``: a
        RemoteError (PaymentRequired) as it is; anything else is the fee check failing
        itself (``on_receipt`` with the disk full, say): that request's internal error,
        never the stream's end (the driver logs it)."""
        if isinstance(exc, E.RemoteError):
            return exc.code, exc.message
        return E.INTERNAL_ERROR, f"internal error ({type(exc).__name__})"

    def ended(
        self, request_id: int, escrow_id: str | None, body: bytes | None
    ) -> KeepResponse | ReleaseEscrow | None:
        """The request ``request_id``, which prepaid ``escrow_id`` (None: nothing),
        ended: answered with ``body`` (the response's encoded result) -- its escrow is
        kept for the client's ACK -- or with no response (None: failed, cancelled, past
        its deadline, refused). The step for the policy (None: nothing prepaid), which
        the driver runs before the response can be sent: an ACK may come at once."""
        policy = self.response_fees
        if escrow_id is None or policy is None:
            return None
        if body is None:
            return ReleaseEscrow(policy, escrow_id)
        self._answered[request_id] = escrow_id
        return KeepResponse(policy, escrow_id, body)

    def acked(self, request_id: int, signature: bytes) -> CheckAck | None:
        """An ACK for ``request_id`` came with ``signature``: the step checking it (a
        ledger read), or None when the request prepaid nothing or was acknowledged
        already."""
        policy = self.response_fees
        escrow_id = self._answered.pop(request_id, None)
        if escrow_id is None or policy is None:
            return None
        return CheckAck(policy, escrow_id, signature)


# -- which requests a connection's receipts cover ------------------------------------------

#: Shortest time (seconds) between two reads of a connection's deposit
#: (:meth:`RequestCover.reread`: a receipt beyond the deposit known, perhaps a top-up).
DEPOSIT_REREAD: Final = 1.0


class Reread(enum.Enum):
    """What a request refused beyond the deposit known does (:meth:`RequestCover.reread`)."""

    #: Read the escrow's deposit again now, then ask again (:meth:`RequestCover.admit`).
    READ_NOW = enum.auto()
    #: Wait for the re-read under way, then ask again.
    WAIT = enum.auto()
    #: Refused as it is: the deposit was read less than :data:`DEPOSIT_REREAD` ago.
    REFUSE = enum.auto()


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why :meth:`RequestCover.admit` did not count a request."""

    #: What to answer the request with.
    error: E.PaymentRequired
    #: The request's receipt, accepted though it does not cover the request: kept all
    #: the same (``on_receipt``), as it pays for what was served.
    accepted: Receipt | None = None
    #: The receipt exceeds the deposit known: the client may have topped up
    #: (:meth:`RequestCover.reread` says whether to read the deposit again).
    beyond_deposit: bool = False


class RequestCover:
    """The per-request fee rules of one connection's escrow (docs/escrow.md §3): each
    request may carry a cumulative receipt (meta ``"r"``), checked as ``escrow::claim``
    would (:func:`~dtp.payments.receipts.check_next_receipt`); a request is served only
    while ``served < latest.total_requests + credit_requests``. Sans-I/O and lock-free:
    :class:`~dtp.messaging.rpc.fees.RequestPayments` holds it under its lock, reads the
    clock and the ledger, and keeps the receipts."""

    __slots__ = (
        "_deposit_read_at",
        "_rereading",
        "client_public_key",
        "credit_requests",
        "deposited",
        "latest",
        "scope",
        "served",
        "sla",
    )

    def __init__(
        self,
        scope: ReceiptScope,
        sla: Sla,
        client_public_key: bytes,
        deposited: int,
        credit_requests: int,
    ) -> None:
        #: The package, escrow and connection the receipts must be signed for.
        self.scope = scope
        self.sla = sla
        self.client_public_key = client_public_key
        self.deposited = deposited
        self.credit_requests = credit_requests
        #: Requests counted as served.
        self.served = 0
        #: The newest receipt accepted: what the server claims.
        self.latest: Receipt | None = None
        self._deposit_read_at = -float("inf")
        self._rereading = False

    @property
    def connection_id(self) -> str:
        """The connection whose escrow pays."""
        return self.scope.connection_id

    @property
    def earned(self) -> int:
        """MIST the latest receipt lets the server claim."""
        return 0 if self.latest is None else self.latest.total_amount

    def resume(self, latest: Receipt) -> None:
        """Carry on from ``latest``, a receipt accepted earlier on this connection:
        every request it pays for counts as served, so the client's receipts up to it
        pay for nothing more."""
        if self.latest is None or latest.nonce > self.latest.nonce:
            self.latest = latest
        self.served = max(self.served, self.latest.total_requests)

    def admit(self, raw: Any) -> Receipt | Refusal | None:
        """Check a request's receipt (``raw``, meta ``"r"``; None: none) and count the
        request: None when counted, the receipt when counted and paid by that receipt,
        newly accepted (to keep), or a :class:`Refusal`.

        A receipt at or below the latest one's nonce is not refused while the latest
        pays for more requests than were served: the client signed them in one order
        and they came in another (two streams sharing a meter), and the newer receipt
        already paid for this request (the served count still bounds what it pays for)."""
        accepted = None
        if raw is not None:
            if not isinstance(raw, bytes):
                return Refusal(E.PaymentRequired("receipt must be bytes"))
            try:
                receipt = Receipt.decode(raw)
            except DTPError as exc:
                return Refusal(E.PaymentRequired(f"receipt refused: {exc}"))
            latest = self.latest
            if not (
                latest is not None
                and receipt.nonce <= latest.nonce
                and latest.total_requests > self.served
            ):
                try:
                    check_next_receipt(
                        receipt,
                        latest,
                        scope=self.scope,
                        sla=self.sla,
                        public_key=self.client_public_key,
                        deposited=self.deposited,
                    )
                except DTPError as exc:
                    error = E.PaymentRequired(f"receipt refused: {exc}")
                    return Refusal(error, beyond_deposit=receipt.total_amount > self.deposited)
                self.latest = accepted = receipt
        paid = 0 if self.latest is None else self.latest.total_requests
        if self.served >= paid + self.credit_requests:
            error = E.PaymentRequired(
                f"request {self.served + 1} is not covered (receipts cover {paid})"
            )
            return Refusal(error, accepted)
        self.served += 1
        return accepted

    def not_served(self) -> None:
        """A request :meth:`admit` counted was not served after all (the receipt paying
        for it could not be kept): it counts no more."""
        self.served -= 1

    def reread(self, now: float) -> Reread:
        """For a request refused beyond the deposit known (``now``: monotonic seconds):
        read the deposit again (at most once a :data:`DEPOSIT_REREAD`, so that a client
        sending receipts beyond its deposit cannot make the server hammer the ledger),
        wait for the re-read under way, or refuse. After ``READ_NOW`` the caller reports
        the read with :meth:`deposit_read`."""
        if self._rereading:
            return Reread.WAIT
        if now - self._deposit_read_at < DEPOSIT_REREAD:
            return Reread.REFUSE
        self._deposit_read_at = now
        self._rereading = True
        return Reread.READ_NOW

    def deposit_read(self, deposited: int | None) -> None:
        """The re-read :meth:`reread` asked for ended: the escrow's deposit, or None
        when it could not be read (a deposit never shrinks while the connection is open)."""
        if deposited is not None:
            self.deposited = max(self.deposited, deposited)
        self._rereading = False
