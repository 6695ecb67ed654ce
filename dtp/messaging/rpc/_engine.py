"""The RPC fee engine (docs/messaging.md "Fees, step by step"): the order of the fee
steps, held once for the blocking and the asyncio drivers -- a paid call's on a client
(:class:`ClientFees`, which also files each call's prepaid escrow until the call ends),
and a request's admission, end and ACK on a server (:class:`ServerCallFees`); which of a
connection's requests its receipts cover is :mod:`dtp.messaging.rpc._cover`. Sans-I/O: no
sockets, threads, tasks, locks or clock reads. The drivers pass ``now`` and the checks,
and run the steps the engine names (frozen dataclasses) on the driver-side helpers of
:mod:`dtp.messaging.rpc._fees`, which hold the locks, the ledger reads and their clocks:
inline, or in a worker thread; the drivers hold their own lock (or do not await) where
the engine says so."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dtp.messaging import errors as E
from dtp.messaging.method_rules import requests_for
from dtp.messaging.rpc._cover import COUNTED, METERED, counted_of, metered_of, uncounted
from dtp.payments.receipts import Charge, Meter

if TYPE_CHECKING:
    # (types only: _fees.py's helpers run the steps named here)
    from dtp.messaging.rpc._fees import RequestPayments, ResponseFeePolicy, ResponsePrepay

#: What a call's meta is while the engine adds its fee keys ("r", "re") to it: the
#: driver's own copy of the caller's meta (``protocol.meta_copy``), or None for none.
Meta = dict[str, Any] | None
#: The driver's "can this request be sent now?": raises as sending it would (the stream
#: closed, too many in flight, too large with the fee's meta), queues nothing.
Check = Callable[[Meta], None]

#: Seconds of a prepaid call's escrow deadline when the call has no timeout.
UNTIMED_DEPOSIT = 60.0


class ClientFees:
    """A client's fees: a ``meter`` (per-request receipts) and a ``prepay`` (a response
    escrow per call), either or both, and the registry of the calls in flight that
    prepaid an escrow. One per client; :meth:`begin` starts each paid call's steps, and
    the driver reports how each call ended: :meth:`answered`, :meth:`unanswered`, or
    :meth:`all_unanswered` when every call fails at once (the stream lost, closed).
    Every escrow made is acknowledged or put to refund exactly once."""

    __slots__ = ("charges", "escrows", "meter", "prepay")

    def __init__(self, meter: Meter | None, prepay: ResponsePrepay | None) -> None:
        self.meter = meter
        self.prepay = prepay
        #: request ID -> (the meter that counted the call, its charge), until the call
        #: ends: the meter is told how it ended (``Meter.settle``), so that a call the
        #: server refused costs nothing. A replaced meter still settles its own calls.
        self.charges: dict[int, tuple[Meter, Charge]] = {}
        #: request ID -> (the escrow its call prepaid, the ResponsePrepay that made it),
        #: until the call ends: a prepay replaced meanwhile still refunds its own escrows.
        #: Empty, no answer has anything to acknowledge: the drivers ask :meth:`answered`
        #: only when it is not (a call without fees costs no call into the engine).
        self.escrows: dict[int, tuple[str, ResponsePrepay]] = {}

    def begin(self, meta: Meta, timeout: float | None, check: Check, requests: int = 1) -> PaidCall:
        """Start a paid call, metered as ``requests`` requests of the SLA: ``check`` it
        first, so that a request that cannot be sent is found out before it is paid for
        (no escrow made, nothing metered). Then the call's
        :attr:`PaidCall.deposit_timeout` says whether a deposit is due."""
        check(meta)
        paid = PaidCall(self, meta, requests)
        if self.prepay is not None:
            paid.prepay = self.prepay
            paid.deposit_timeout = UNTIMED_DEPOSIT if timeout is None else timeout
        return paid

    def answered(
        self, request_id: int, body: bytes, meta: Mapping[str, Any] | None = None
    ) -> bytes | None:
        """The call ``request_id`` was answered with ``body`` (and ``meta``, which may
        say how many requests the server counted it as: its meter is told); the
        signature acknowledging it, for the driver to send back in an ACK (the server
        claims the escrow with it); None when the call prepaid nothing or ended
        already. The drivers ask this for each response while ``escrows`` or
        ``charges`` is not empty (with neither it would return None): an answer
        reaching a call that ended
        (:meth:`unanswered`: timed out, cancelled, failed) is never acknowledged -- its
        caller never saw it, and its escrow waits for refund; a server that answered
        before the ledger deadline is paid by ``deliver`` instead (docs/escrow.md)."""
        if self.charges:
            self._settle(request_id, counted_of(meta))
        entry = self.escrows.pop(request_id, None)
        if entry is None:
            return None
        escrow_id, prepay = entry
        return prepay.acknowledgement(escrow_id, body)

    def unanswered(self, request_id: int, error: BaseException | None = None) -> None:
        """The call ``request_id`` ended with no response (failed -- with ``error``, the
        server's answer -- timed out, cancelled): its escrow, if it prepaid one, waits
        for :meth:`ResponsePrepay.refund_due`; its meter takes it back when the
        server's refusal says it counted nothing (:func:`uncounted`). A second report
        of the same call does nothing."""
        if self.charges:
            data = error.data if isinstance(error, E.RemoteError) else None
            self._settle(request_id, counted_of(data))
        entry = self.escrows.pop(request_id, None)
        if entry is not None:
            entry[1].unanswered.append(entry[0])

    def all_unanswered(self) -> None:
        """Every call in flight ended with no response (the stream failed or the client
        closed): their escrows wait for refund; their charges stand (the server may
        have counted them)."""
        escrows, self.escrows = self.escrows, {}
        for escrow_id, prepay in escrows.values():
            prepay.unanswered.append(escrow_id)
        charges, self.charges = self.charges, {}
        for meter, charge in charges.values():
            meter.settle(charge)

    def _settle(self, request_id: int, counted: int | None) -> None:
        entry = self.charges.pop(request_id, None)
        if entry is not None:
            entry[0].settle(entry[1], counted)

    @property
    def prepaid(self) -> int:
        """How many calls in flight hold a prepaid escrow."""
        return len(self.escrows)


class PaidCall:
    """One paid call's steps, in their order: checked (:meth:`ClientFees.begin`) →
    the response escrow deposited (:meth:`deposited`, when :attr:`deposit_timeout` is
    set) → checked again, metered and sent in one step (:meth:`send`), which files the
    escrow under the request's ID. Whatever fails after the deposit leaves the escrow
    to ``refund_due``: a fee is never lost."""

    __slots__ = ("_fees", "deposit_timeout", "escrow_id", "meta", "prepay", "requests")

    def __init__(self, fees: ClientFees, meta: Meta, requests: int = 1) -> None:
        self._fees = fees
        #: How many requests of the SLA the call is metered as (its method's price).
        self.requests = requests
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
        filed under the request ID (:meth:`ClientFees.answered`/``unanswered``), and so
        is its charge. Any failure puts the escrow on ``unanswered``, takes the charge
        back (nothing was sent) and is raised."""
        meter = self._fees.meter
        charge = None
        try:
            # again: the driver let go of its state for the deposit (or its lock)
            check(self.meta)
            if meter is not None:
                charge = meter.charge(now_ms, self.requests)
                meta = {} if self.meta is None else self.meta
                meta[METERED] = self.requests
                if charge.receipt is not None:
                    meta["r"] = charge.receipt.encode()
                self.meta = meta
            request_id = send(self.meta)
        except BaseException:
            if self.escrow_id is not None:
                self.orphaned(self.escrow_id)
            if charge is not None:
                assert meter is not None
                meter.settle(charge, 0)
            raise
        if self.escrow_id is not None and self.prepay is not None:
            self._fees.escrows[request_id] = (self.escrow_id, self.prepay)
        if charge is not None:
            assert meter is not None
            self._fees.charges[request_id] = (meter, charge)
        return request_id


@dataclass(frozen=True, slots=True)
class PayRequest:
    """Admission step: check the request's receipt and count it as ``requests``
    requests of the SLA (``payments.admit``, or ``admit_async`` off an event loop);
    raises PaymentRequired."""

    payments: RequestPayments
    meta: Mapping[str, Any] | None
    requests: int = 1

    @property
    def counted(self) -> int | None:
        """What to tell the client its request, once admitted, was counted as: the
        count when the client metered it above that (its meter gives the rest back),
        else None (as metered, or a client that did not say)."""
        metered = metered_of(self.meta)
        return self.requests if metered is not None and metered > self.requests else None


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
        self,
        meta: Mapping[str, Any] | None,
        peer: str | None,
        prices: tuple[int | None, ...] = (None,),
    ) -> tuple[PayRequest | TakeEscrow, ...]:
        """The steps admitting one request, in their order: the connection refused
        outright first (PaymentRequired raised here), then the response escrow, then
        the per-request fee (its receipt; the request counted as the requests of the
        connection's SLA its ``prices`` come to, from the server's ``request_cost``:
        ValueError for a price no receipt can pay exactly). The receipt comes last: a
        request the escrow check refuses has counted nothing and kept no receipt (it
        costs nothing, docs/messaging.md §2.5), and one the receipt check refuses has
        the escrow it took released (:meth:`ended`). The driver runs each in turn."""
        if self.payments_error is not None:
            raise E.PaymentRequired(self.payments_error)
        steps: list[PayRequest | TakeEscrow] = []
        if self.response_fees is not None:
            steps.append(TakeEscrow(self.response_fees, meta, peer))
        if self.payments is not None:
            sla = self.payments.sla
            requests = sum(requests_for(sla, price) for price in prices)
            steps.append(PayRequest(self.payments, meta, requests))
        return tuple(steps)

    def refusal_data(self, data: Any) -> Any:
        """``data`` of a refusal of this stream made before its request was counted
        (unknown method, method rules, fee admission): marked so when the stream pays
        per request (:func:`uncounted`), for the client's meter to take the call back."""
        if self.payments is None and self.payments_error is None:
            return data
        return uncounted(data)

    @staticmethod
    def counted_meta(counted: int | None) -> dict[str, int] | None:
        """The RESPONSE meta of a request admitted with :attr:`PayRequest.counted`."""
        return None if counted is None else {COUNTED: counted}

    def refusal(self, exc: Exception) -> tuple[int, str, Any]:
        """The answer (code, message, data) to a request whose admission raised
        ``exc``: a RemoteError (PaymentRequired, MethodNotAllowed) as it is, its data
        marked as counting nothing (:meth:`refusal_data`); anything else is the check
        failing itself (``on_receipt`` with the disk full, a method priced off the
        SLA's step, say): that request's internal error, never the stream's end (the
        driver logs it), and not marked (the receipt may be kept: the call stays
        charged at the client)."""
        if isinstance(exc, E.RemoteError):
            return exc.code, exc.message, self.refusal_data(exc.data)
        return E.INTERNAL_ERROR, f"internal error ({type(exc).__name__})", None

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
