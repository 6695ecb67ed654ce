"""The RPC fee engine (docs/messaging.md "Fees, step by step"): the order of the fee
steps, held once for the blocking and the asyncio drivers -- a paid call's on a client
(:class:`ClientFees`). Sans-I/O: no sockets, threads, tasks, locks or clock reads. The
drivers pass ``now`` and the checks, run the ledger steps the engine names (inline, or
in a worker thread), and hold their own lock (or do not await) where it says so."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dtp.messaging.rpc.fees import ResponsePrepay
from dtp.payments.receipts import Meter

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
    escrow per call), either or both. One per client; :meth:`begin` starts each paid
    call's steps."""

    __slots__ = ("meter", "prepay")

    def __init__(self, meter: Meter | None, prepay: ResponsePrepay | None) -> None:
        self.meter = meter
        self.prepay = prepay

    @property
    def paid(self) -> bool:
        """Whether calls pay anything (else the drivers skip the engine)."""
        return self.meter is not None or self.prepay is not None

    def begin(self, meta: Meta, timeout: float | None, check: Check) -> PaidCall:
        """Start a paid call: ``check`` it first, so that a request that cannot be sent
        is found out before it is paid for (no escrow made, nothing metered). Then the
        call's :attr:`PaidCall.deposit_timeout` says whether a deposit is due."""
        check(meta)
        paid = PaidCall(self, meta)
        if self.prepay is not None:
            paid.deposit_timeout = UNTIMED_DEPOSIT if timeout is None else timeout
        return paid

    def unanswered(self, escrow_id: str | None) -> None:
        """A prepaid call ended with no response (failed, timed out, cancelled, never
        sent): its escrow waits for :meth:`ResponsePrepay.refund_due`."""
        if escrow_id is not None and self.prepay is not None:
            self.prepay.unanswered.append(escrow_id)

    def answered(self, escrow_id: str | None, body: bytes) -> bytes | None:
        """A call that prepaid ``escrow_id`` (None: none) was answered with ``body``:
        the signature acknowledging it, for the driver to send back in an ACK (the
        server claims the escrow with it); None when the call prepaid nothing."""
        if escrow_id is None or self.prepay is None:
            return None
        return self.prepay.acknowledgement(escrow_id, body)


class PaidCall:
    """One paid call's steps, in their order: checked (:meth:`ClientFees.begin`) →
    the response escrow deposited (:meth:`deposited`, when :attr:`deposit_timeout` is
    set) → checked again, metered and sent in one step (:meth:`send`). Whatever fails
    after the deposit leaves the escrow to ``refund_due``: a fee is never lost."""

    __slots__ = ("_fees", "deposit_timeout", "escrow_id", "meta")

    def __init__(self, fees: ClientFees, meta: Meta) -> None:
        self._fees = fees
        #: The call's meta with its fee keys, once added.
        self.meta = meta
        #: Seconds for ``ResponsePrepay.deposit`` when the call's escrow is still to be
        #: made (None: no deposit due).
        self.deposit_timeout: float | None = None
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

    def send(self, now_ms: int, check: Check, send: Callable[[Meta], int]) -> int:
        """Check the request again, meter it and ``send`` it (the driver's framing;
        returns the request ID), with nothing in between: the driver holds its lock
        across this call (or does not await in it), so receipts reach the server in
        their nonce order, and nothing (another call filling the in-flight limit, a
        close) can refuse a request the meter has counted. Any failure puts the
        call's escrow on ``unanswered`` and is raised."""
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
            return send(self.meta)
        except BaseException:
            self._fees.unanswered(self.escrow_id)
            raise
