"""The rules of one paid connection, written once for the blocking
(:class:`dtp.hostid.paid._blocking.PaidConnection`) and the asyncio
(:class:`dtp.hostid.paid._asyncio.PaidConnection`) driver (docs/escrow.md §6.1).

:class:`PaidConnectionEngine` is sans-I/O: given the usage (total bytes, total
requests), ``now`` and what came, it says what to do (store a receipt, read an escrow,
close); the drivers store, read the ledger and close.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dtp.errors import CLOSE_SUBSCRIPTION_ENDED, ChainError, LocalProtocolError
from dtp.hostid.paid._policy import CALL_COST, CREDIT_MAX, SEND_SLICE
from dtp.payments._gate import (
    CLOSE_FIREWALL_DENIED,
    CLOSE_LEDGER_CLOSED,
    CLOSE_PAYMENT_REQUIRED,
    GateState,
    GateVerdict,
    ReceiptGate,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from dtp.hostid.paid._policy import ServicePolicy
    from dtp.ledger.interface import Ledger
    from dtp.ledger.receipt import Receipt
    from dtp.payments._ratelimit import ClientBuckets
    from dtp.payments._receipt_writer import ReceiptWriter

logger = logging.getLogger(__name__)

#: A connection's usage as its driver reads it: (total bytes, total requests)
Usage = tuple[int, int]


class ReceiptStep(enum.Enum):
    """What a RECEIPT frame from the client asks of the driver
    (:meth:`PaidConnectionEngine.receipt_frame`)."""

    STORE = "store"
    """Store it, then count it (:meth:`~PaidConnectionEngine.kept`)."""
    FINAL = "final"
    """It came with the end: held in :attr:`~PaidConnectionEngine.final` and claimed by
    the settlement at once (the claim is its durable copy), not written first."""
    REFUSED = "refused"
    """The gate refused it: the next look at the gate closes the connection."""


@dataclass(frozen=True)
class Close:
    """Close the connection with ``code`` (a CLOSE code of dtp.payments._gate) and ``reason``."""

    code: int
    reason: str


class PauseAction(enum.Enum):
    """What a paused call does next (:meth:`PausedCall.step`)."""

    OVER = "over"
    """The gate serves again: the call goes on."""
    CLOSE = "close"
    """Close with :attr:`PauseStep.close`, then raise :class:`~dtp.errors.PaymentRequired`."""
    WAIT = "wait"
    """Ask if :attr:`PauseStep.ask`, wait up to :attr:`PauseStep.wait` seconds for a
    receipt, read the deposit if due, step again."""
    TIMED_OUT = "timed out"
    """The caller's deadline passed: raise as the unpaid call would (DTPTimeoutError,
    or BlockingIOError without a timeout)."""


@dataclass(frozen=True)
class PauseStep:
    """One step of a paused call: what to do, and with which facts."""

    action: PauseAction
    ask: bool = False  # (WAIT) send RECEIPT_REQUEST now (PaidConnectionEngine.request_due)
    wait: float = 0.0  # (WAIT) seconds to wait for a receipt before the next step
    close: Close | None = None  # (CLOSE) the close for want of payment


class PausedCall:
    """One call (read, write, datagram send) paused for payment: each :meth:`step` turns
    the gate's latest verdict into what to do (docs/escrow.md §6.1)."""

    __slots__ = ("_core", "_deadline", "_waited", "whole")

    def __init__(
        self, core: PaidConnectionEngine, now: float, whole: int, deadline: float | None
    ) -> None:
        self._core = core
        #: Bytes of a write that cannot go in part (a datagram), judged with the usage
        self.whole = whole
        self._deadline = deadline
        self._waited = False

    def step(self, verdict: GateVerdict, now: float) -> PauseStep:
        """The next step at ``now``, the gate's verdict (with :attr:`whole`) ``verdict``."""
        core = self._core
        whole = self.whole
        if verdict.state is GateState.PAUSE:
            deadline = self._deadline
            # (a first look always asks: a non-blocking call asks for a receipt once)
            timed_out = self._waited and deadline is not None and now >= deadline
            if whole:
                # a datagram's pause is timed from its first drop (datagrams_unpaid), not
                # by the gate's clock, which restarts whenever another call is served
                # (tests/paid/test_datagram_allowance.py, test_datagram_pause_rule.py)
                since = core.datagrams_unpaid(now, whole)
                if not timed_out:
                    verdict = core.datagram_verdict(verdict, now, whole, since)
            if timed_out:
                return PauseStep(PauseAction.TIMED_OUT)
        if verdict.state is GateState.PAUSE:
            self._waited = True
            ask = core.request_due(now)
            wait = core.request_wait(now)
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - now))
            return PauseStep(PauseAction.WAIT, ask, wait)
        # the pause is over: the next one asks for a receipt at once
        core.pause_over()
        if whole:
            core.datagrams_paid()
        if verdict.state is GateState.CLOSE:
            return PauseStep(PauseAction.CLOSE, close=core.payment_required(verdict))
        return PauseStep(PauseAction.OVER)


class RefillStep(enum.Enum):
    """What a write does after a serving look at the gate
    (:meth:`PaidConnectionEngine.refill_send`)."""

    GO = "go"
    """The send credit is set: take from it (:meth:`Credit.reserve`)."""
    WRITES = "writes"
    """(Blocking only) other threads' writes under way hold the credit: wait for one to
    end (:meth:`Credit.sent`, a request interval at most), then look again."""
    QUEUE = "queue"
    """Bytes queued beyond the client's window hold it: drive the I/O until fewer are
    queued (a request interval at most), then look again."""


class Credit:
    """The credit a driver keeps between looks at the gate (blocking: under its lock;
    asyncio: its held writes).

    ``read``: what may still move before the next look (at most CREDIT_MAX), each call
    counted as CALL_COST at least, so the gate is asked again within CREDIT_MAX /
    CALL_COST calls. Writes take from ``send`` first (:meth:`reserve`) and count as
    ``sending`` until in the usage (:meth:`sent`), so that N writers share the credit
    rather than each take all of it (tests/paid/test_credit_ceiling.py)."""

    __slots__ = ("read", "send", "sending")

    def __init__(self) -> None:
        self.read = 0
        self.send = 0
        self.sending = 0

    def void(self) -> None:
        """Void the credit (a refused receipt, a new request): the next call looks."""
        self.read = self.send = 0

    def spent(self, nbytes: int) -> None:
        """A read of ``nbytes`` (or a datagram's charge) went: counted against ``read``."""
        self.read -= nbytes if nbytes > CALL_COST else CALL_COST

    def reserve(self, nbytes: int) -> int:
        """How much of a write of ``nbytes`` goes now (at least 1 byte: the gate
        serves), taken from the credit and under way until :meth:`sent`."""
        credit = self.send
        take = nbytes if nbytes <= credit else max(1, credit)
        cost = take if take > CALL_COST else CALL_COST
        self.send = credit - cost
        self.read -= cost  # reads look again as they did
        self.sending += take
        return take

    def reserve_datagrams(self, sizes: list[int], start: int) -> tuple[int, int]:
        """Take as many whole datagrams of ``sizes[start:]`` as the send credit covers
        (:meth:`PaidConnectionEngine.datagrams_covered`): (how many, their bytes)."""
        count, taken, left = PaidConnectionEngine.datagrams_covered(
            self.send, sizes, start, CALL_COST
        )
        if count:
            self.send = left
            self.read -= taken if taken > CALL_COST else CALL_COST
            self.sending += taken
        return count, taken

    def sent(self, reserved: int) -> None:
        """A write :meth:`reserve` made room for ended: its bytes are in the usage."""
        self.sending -= reserved


class PaidConnectionEngine:
    """The receipt path of one paid connection: ``gate`` judges receipts and usage;
    ``connection_id`` and ``client`` name it in the logs."""

    def __init__(
        self,
        gate: ReceiptGate,
        buckets: ClientBuckets,
        policy: ServicePolicy,
        connection_id: str,
        client: str,
    ) -> None:
        self.gate = gate
        self.buckets = buckets
        self.policy = policy
        self.connection_id = connection_id
        self.client = client
        #: Receipts checked, stored and counted
        self.receipts = 0
        #: The receipt that came with the end (:attr:`ReceiptStep.FINAL`)
        self.final: Receipt | None = None
        #: Since when datagram sends found no credit covering them (:meth:`datagrams_unpaid`)
        self.unpaid_datagrams_since: float | None = None
        #: The size of the last datagram so refused (:meth:`datagrams_covered_again`)
        self.unpaid_size = 0
        #: When a paused call last asked for a receipt; None: not in this pause
        self.asked_at: float | None = None
        #: The bytes/s limit the connection's credit is paced at (:meth:`credit_pace`)
        self.credit_rate = 0.0

    # -- receipts --------------------------------------------------------------------

    def receipt_frame(self, data: bytes, *, closed: bool) -> tuple[ReceiptStep, Receipt | None]:
        """A RECEIPT frame came (``closed``: after the end): the step, with the receipt
        to store for :attr:`ReceiptStep.STORE`."""
        try:
            receipt = self.gate.check(data)
        except ChainError as exc:  # InvalidReceipt, SpendingCapExceeded
            logger.warning("connection %s: %s", self.connection_id, exc)
            return ReceiptStep.REFUSED, None
        if closed:
            self.final = receipt
            return ReceiptStep.FINAL, None
        return ReceiptStep.STORE, receipt

    def kept(self, receipt: Receipt) -> None:
        """``receipt`` is stored: it counts now."""
        self.gate.kept(receipt)
        self.receipts += 1

    def verdict(self, usage: Usage, now: float, whole: int = 0) -> GateVerdict:
        """The gate's verdict at ``now`` on ``usage``, plus ``whole`` bytes about to go
        that cannot go in part (a datagram)."""
        total_bytes, total_requests = usage
        return self.gate.verdict(int(now * 1000), total_bytes + whole, total_requests)

    def settled_up(self, usage: Usage) -> bool:
        """Whether the receipts cover ``usage`` (the final receipt's wait ends)."""
        return self.gate.settled_up(*usage)

    def final_receipt_deadline(self, now: float) -> float:
        """When the wait for the final receipt, begun at ``now``, gives up."""
        return now + self.policy.final_receipt_timeout

    def final_receipt_step(
        self, usage: Usage, now: float, deadline: float, *, ended: bool
    ) -> float:
        """0 when the wait for the final receipt is over (:meth:`final_receipt_over`,
        or ``deadline`` passed), else ask again and wait this long."""
        if self.final_receipt_over(usage, ended=ended):
            return 0.0
        return self.final_receipt_wait(now, deadline)

    def final_receipt_over(self, usage: Usage, *, ended: bool) -> bool:
        """Whether the connection ``ended`` or the receipts cover ``usage``: what the
        drivers wait on between two :meth:`final_receipt_step`."""
        return ended or self.settled_up(usage)

    def final_receipt_wait(self, now: float, deadline: float) -> float:
        """How long to wait before asking again (a request interval at most; 0 past
        ``deadline``)."""
        left = deadline - now
        return 0.0 if left <= 0 else min(left, self.policy.request_interval)

    # -- the pause: asking the client for a receipt ----------------------------------

    def request_due(self, now: float) -> bool:
        """Whether a paused call sends RECEIPT_REQUEST now (counted as sent): once per
        ``request_interval`` for the whole connection, not per call (docs/escrow.md §6.1);
        a pause's first call asks at once (tests/paid/test_receipt_request_cadence.py)."""
        asked = self.asked_at
        if asked is not None and now - asked < self.policy.request_interval:
            return False
        self.asked_at = now
        return True

    def request_wait(self, now: float) -> float:
        """Seconds a paused call waits for a receipt: until the next request is due."""
        asked = self.asked_at
        if asked is None:
            return 0.0
        interval = self.policy.request_interval
        # (as request_due reckons: positive whenever no request is due)
        return min(interval, max(0.0, interval - (now - asked)))

    def pause_over(self) -> None:
        """The usage is served again: the next pause asks at once."""
        self.asked_at = None

    @staticmethod
    def call_deadline(timeout: float | None, began: float | None, now: float) -> float | None:
        """When a call with ``timeout``, begun at ``began`` (None: ``now``), stops waiting
        for payment: within its own timeout, as the unpaid call (tests/paid/test_datagrams.py)."""
        if timeout is None:
            return None
        return (now if began is None else began) + timeout

    def pause(self, now: float, *, whole: int = 0, deadline: float | None = None) -> PausedCall:
        """A call paused at ``now``: ``whole``, bytes that cannot go in part (a
        datagram); ``deadline``, the caller's (:meth:`call_deadline`; None: none)."""
        return PausedCall(self, now, whole, deadline)

    # -- room: how much may move before the gate is asked again ------------------------

    def read_credit(self, usage: Usage) -> int:
        """The bytes reads may take at one look, at most CREDIT_MAX: one call cannot
        carry a client that pays nothing far past the allowance."""
        return min(self.gate.credit_bytes(*usage), CREDIT_MAX)

    def write_credit(self, usage: Usage, queued: int, pending: int = 0) -> int:
        """The gate's credit for writes, the ``queued`` bytes counted as spent (else a
        client that reads nothing gets its queue filled on credit it never pays for:
        tests/paid/test_credit.py), and the ``pending`` requests the writes may make
        (``Connection.requests_pending``) counted ahead."""
        total_bytes, total_requests = usage
        return self.gate.credit_bytes(total_bytes + queued, total_requests + pending)

    def write_room(
        self, usage: Usage, queued: int, under_way: int, nbytes: int, pending: int = 0
    ) -> int:
        """How much of a write of ``nbytes`` goes now: :meth:`write_credit` less the
        bytes ``under_way`` in other threads, at most CREDIT_MAX; 1 when nothing is
        queued or under way (the gate serves), 0 when those hold it all (wait, ask again)."""
        credit = min(self.write_credit(usage, queued, pending) - under_way, CREDIT_MAX)
        if nbytes <= credit:
            return nbytes
        if credit > 0:
            return credit
        return 0 if queued or under_way else 1

    def refill_send(
        self,
        credit: Credit,
        usage: Usage,
        queued: int,
        whole: int,
        *,
        ended: bool,
        pending: int = 0,
    ) -> RefillStep:
        """Set the send credit to the :meth:`write_room` of a serving look: GO when it
        covers a byte (``whole`` for a datagram), nothing is on its way, or the
        connection ``ended``; else QUEUE or WRITES, by what holds the credit."""
        sending = credit.sending
        room = self.write_room(usage, queued, sending, CREDIT_MAX, pending)
        if room >= max(whole, 1) or not (sending or queued) or ended:
            credit.send = room
            return RefillStep.GO
        return RefillStep.QUEUE if queued else RefillStep.WRITES

    def read_room(self, usage: Usage, nbytes: int) -> tuple[int, int]:
        """(How much of a read of ``nbytes`` goes, at least 1 byte; the
        :meth:`read_credit` it was judged on, 0 when the gate does not serve)."""
        credit = self.read_credit(usage)
        return (nbytes if nbytes <= credit else max(1, credit)), credit

    def datagram_room(self, usage: Usage, queued: int, sizes: list[int]) -> int:
        """How many of the datagrams of ``sizes`` go now, each whole."""
        if not self.gate.serving(*usage):
            return 0
        return self.datagrams_covered(self.write_credit(usage, queued), sizes)[0]

    def datagrams_received(
        self, usage: Usage, taken: Sequence[bytes], queued: Iterable[bytes]
    ) -> int:
        """How many of the datagrams a receive took (``taken``, oldest first, before the
        ``queued`` ones) go to the application now; the rest wait for payment. Each is
        judged on the usage as it was when it came, so none is served beyond what is
        signed for plus the allowance (docs/escrow.md §6.1,
        tests/paid/test_connection_engine.py); an empty one counts as a byte."""
        if self.gate.serving(*usage):
            return len(taken)  # (the usage with all of them is served: so is each)
        total_bytes, total_requests = usage
        sizes = [len(data) for data in taken]
        before = total_bytes - sum(map(len, queued)) - sum(sizes)  # (before the first)
        credit = self.gate.credit_bytes(before, total_requests)
        return self.datagrams_covered(credit, sizes, least=1)[0]

    def datagrams_covered_again(self, usage: Usage, queued: int) -> bool:
        """Payment came: whether it covers the datagram last refused, ending the pause
        of datagram sends. Judged now, not at the next send, so stream bytes spent
        meanwhile do not undo it (tests/paid/test_datagram_pause_rule.py)."""
        if self.unpaid_datagrams_since is None:
            return False
        if not self.datagram_room(usage, queued, [self.unpaid_size]):
            return False
        self.datagrams_paid()
        return True

    @staticmethod
    def datagrams_covered(
        credit: int, sizes: list[int], start: int = 0, least: int = 0
    ) -> tuple[int, int, int]:
        """(How many, their bytes, the credit left): the datagrams of ``sizes[start:]``
        that go on ``credit``, in order and each whole, each taking ``least`` at least
        (the blocking driver's CALL_COST)."""
        count = taken = 0
        for i in range(start, len(sizes)):
            size = sizes[i]
            if size > credit or (least and credit <= 0):
                break
            credit -= size if size > least else least
            taken += size
            count += 1
        return count, taken, credit

    # -- the escrow read again -------------------------------------------------------

    def escrow_to_read(self, usage: Usage, now: float, *, ending: bool = False) -> str | None:
        """The escrow to read again now (None: none due): when the deposit holds the
        connection or a receipt waits above it (a top-up may have come), once per
        DEPOSIT_READ_INTERVAL_MS; ``ending``: whenever a receipt waits above it."""
        gate = self.gate
        escrow_id = gate.escrow_id
        now_ms = int(now * 1000)
        if escrow_id is None or not gate.wants_deposit(now_ms, *usage, ending=ending):
            return None
        gate.deposit_reading(now_ms)
        return escrow_id

    def deposit_read(self, deposited: int) -> Receipt | None:
        """The escrow holds ``deposited``: the receipt that waited above the old deposit
        if the new one covers it (for the receipt path again)."""
        return self.gate.deposit_read(deposited)

    def deposit_read_failed(self, exc: ChainError) -> None:
        """The read of the escrow failed (tried again an interval later)."""
        logger.warning("connection %s: cannot read its escrow: %s", self.connection_id, exc)

    # -- datagrams no credit covers --------------------------------------------------

    def datagrams_unpaid(self, now: float, size: int = 0) -> float:
        """A datagram send found no credit for its datagram of ``size``: returns when
        this pause of datagram sends began (across calls; it closes after
        ``pause_timeout``, :meth:`datagram_verdict`).

        It ends only when payment covers that datagram (:meth:`datagrams_covered_again`)
        or a datagram send goes whole (:meth:`datagrams_paid`), not when a stream call
        is served: else a client paying nothing would never be closed while streams
        move a few bytes (tests/paid/test_datagram_pause_rule.py)."""
        self.unpaid_size = size
        since = self.unpaid_datagrams_since
        if since is None:
            self.unpaid_datagrams_since = since = now
        return since

    def datagrams_now(
        self, usage: Usage, queued: int, sizes: list[int], now: float | None
    ) -> tuple[int, bool]:
        """A datagram send that never waits (asyncio's): how many of ``sizes`` go, and
        whether the rest are dropped for want of payment (then :meth:`datagrams_dropped`).
        None go while the bytes/s limit is in debt (no pause). ``now`` may be None only
        without a bytes/s limit (no clock read per send; else LocalProtocolError). A
        batch that goes whole ends a pause (tests/paid/test_datagram_pause.py)."""
        if now is None:
            if self.buckets.bytes.rate:  # (looked at only when the driver read no clock)
                raise _clock_needed("datagrams_now")
        elif self.in_debt(now):
            return 0, False
        take = self.datagram_room(usage, queued, sizes)
        if take < len(sizes):
            return take, True
        if take:
            self.datagrams_paid()
        return take, False

    def datagrams_dropped(self, usage: Usage, now: float, size: int) -> PauseStep:
        """An asyncio datagram send dropped datagrams (the first of ``size``): a paused
        blocking send's step without its wait. CLOSE after ``pause_timeout`` of drops,
        else WAIT (``ask`` once a request interval), so that a client paying nothing is
        not sent datagrams for the life of the connection."""
        since = self.datagrams_unpaid(now, size)
        verdict = self.datagram_verdict(self.verdict(usage, now), now, size, since)
        if verdict.state is GateState.CLOSE:
            return PauseStep(PauseAction.CLOSE, close=self.payment_required(verdict))
        return PauseStep(PauseAction.WAIT, self.request_due(now))

    def datagrams_paid(self) -> None:
        """Payment covers datagram sends again: their pause is over."""
        self.unpaid_datagrams_since = None
        self.asked_at = None

    def datagram_verdict(
        self, verdict: GateVerdict, now: float, size: int, since: float
    ) -> GateVerdict:
        """``verdict``, or CLOSE once datagram sends found no credit since ``since`` for
        ``pause_timeout``."""
        timeout = self.policy.pause_timeout
        if verdict.state is GateState.CLOSE or now - since < timeout:
            return verdict
        return GateVerdict(
            GateState.CLOSE,
            verdict.owed,
            f"payment required: no credit covered a datagram of {size} bytes within {timeout} s",
        )

    # -- the client's rate limits ----------------------------------------------------
    # (buckets shared by its connections; the drivers check ``buckets.*.rate`` first,
    # so that an unlimited client costs no call)

    def charge(self, nbytes: int, requests: int, now: float) -> float:
        """Charge the rate limits: the seconds to hold the connection back."""
        buckets = self.buckets
        return max(buckets.bytes.charge(nbytes, now), buckets.requests.charge(requests, now))

    def debt(self, now: float) -> float:
        """Seconds until neither rate limit is in debt."""
        return max(self.buckets.bytes.delay(now), self.buckets.requests.delay(now))

    def credit_pace(self) -> float | None:
        """The bytes/s limit to pace the flow-control credit at
        (:meth:`dtp.protocol.connection._core.Connection.pace_credit`; 0: unpaced) when
        it changed, else None: a limit set on the Host then paces what the client sends."""
        rate = self.buckets.bytes.rate
        if rate == self.credit_rate:
            return None
        self.credit_rate = rate
        return rate

    def pace_take(self, nbytes: int) -> int:
        """How much of ``nbytes`` goes at once under the bytes/s limit."""
        return max(self.buckets.bytes.take_of(nbytes), 0)

    def pace_wait(self, size: int, now: float) -> float:
        """Seconds until the bytes/s bucket holds ``size`` and requests/s is out of debt."""
        return max(self.buckets.bytes.wait_for(size, now), self.buckets.requests.delay(now))

    def hold_wait(self, delay: float) -> float:
        """How long to wait before asking the limits again: a refresh interval at most,
        so that a limit lifted meanwhile reaches a wait under way."""
        return min(delay, self.policy.refresh_interval)

    def charge_sent(self, nbytes: int, now: float) -> bool:
        """Charge what a call that never waits sent to the bytes/s limit (its debt holds
        back the next call); whether a limit took it."""
        bucket = self.buckets.bytes
        if not bucket.rate:
            return False
        bucket.charge(nbytes, now)
        return True

    def send_slice(self) -> int:
        """The most bytes between two looks at the rate limits: SEND_SLICE, or the
        bytes/s limit's take when smaller."""
        bucket = self.buckets.bytes
        if not bucket.rate:
            return SEND_SLICE
        return min(SEND_SLICE, bucket.take_of(SEND_SLICE))

    def write_slice(self) -> int:
        """The most bytes of a write that never waits to let out at once:
        :meth:`send_slice` under a bytes/s limit, else CREDIT_MAX."""
        return self.send_slice() if self.buckets.bytes.rate else CREDIT_MAX

    def in_debt(self, now: float) -> bool:
        """Whether the bytes/s limit is in debt (a wait is owed before more goes)."""
        bucket = self.buckets.bytes
        return bool(bucket.rate) and bucket.delay(now) > 0

    def write_now(
        self, usage: Usage, queued: int, nbytes: int, now: float | None, pending: int = 0
    ) -> int:
        """How much of a write that never waits (asyncio's) goes now: nothing while the
        gate does not serve or the limit holds it back (:meth:`held_back`), else its
        :meth:`write_room`, one :meth:`write_slice` at most
        (tests/paid/test_rate_limit_asyncio_callback.py). ``now`` as :meth:`datagrams_now`'s."""
        if now is None:
            if self.buckets.bytes.rate:  # (looked at only when the driver read no clock)
                raise _clock_needed("write_now")
        elif self.held_back(nbytes, now):
            return 0
        if not self.gate.serving(*usage):
            return 0
        return min(self.write_room(usage, queued, 0, nbytes, pending), self.write_slice())

    def held_back(self, nbytes: int, now: float) -> bool:
        """Whether the bytes/s bucket does not hold the first piece of ``nbytes`` yet."""
        bucket = self.buckets.bytes
        return bool(bucket.rate) and bucket.wait_for(nbytes, now) > 0

    # -- closes ----------------------------------------------------------------------

    def payment_required(self, verdict: GateVerdict) -> Close:
        """The gate's CLOSE ``verdict``: the connection closes for want of payment."""
        logger.info("closing connection %s: %s", self.connection_id, verdict.reason)
        return Close(CLOSE_PAYMENT_REQUIRED, verdict.reason)

    def denied(self) -> Close:
        """The host's firewall now denies the client."""
        logger.info(
            "closing connection %s: the firewall now denies %s", self.connection_id, self.client
        )
        return Close(CLOSE_FIREWALL_DENIED, "the host's firewall now denies this client")

    def closed_on_ledger(self) -> Close:
        """The client closed it on the ledger (ServicePolicy.ledger_check_interval)."""
        logger.info("closing connection %s: its client closed it on the ledger", self.connection_id)
        return Close(CLOSE_LEDGER_CLOSED, "the connection was closed on the ledger")

    def subscription_ended(self, why: str) -> Close:
        """Its subscription is over (``why``, from
        :meth:`~dtp.ledger.interface.Ledger.subscription_over`): nothing pays for it; the
        client raises :class:`~dtp.errors.SubscriptionEnded`."""
        logger.info("closing connection %s: %s", self.connection_id, why)
        return Close(CLOSE_SUBSCRIPTION_ENDED, f"the subscription is over: {why}")


class PaidConnectionState:
    """What both drivers' ``PaidConnection`` hold of one paid connection, made in one
    place: its engine and send credit, and what they judge and pace it by."""

    def __init__(
        self,
        gate: ReceiptGate,
        buckets: ClientBuckets,
        policy: ServicePolicy,
        writer: ReceiptWriter,
        ledger: Ledger | None,
        connection_id: str,
        client: str,
    ) -> None:
        self.receipt_writer = writer
        #: Where the escrow is read again when the deposit holds the connection (a
        #: top-up while it is open); None: never
        self.ledger = ledger
        self.client = client
        self.connection_id = connection_id
        self.gate = gate
        #: The receipt path's rules (shared by the blocking and the asyncio driver)
        self.core = PaidConnectionEngine(gate, buckets, policy, connection_id, client)
        self.buckets = buckets
        self.policy = policy
        #: When (monotonic) the connection's state on the ledger is read next
        self.ledger_check_due = time.monotonic() + policy.ledger_check_interval
        #: The send credit writes take from (the blocking driver's reads too, under its
        #: condition: its streams may be driven from threads; asyncio reads ask the gate)
        self.credit = Credit()

    def final_is_newest(self) -> bool:
        """Whether the receipt the CLOSE came with is the last one the gate checked: of
        a connection billed by its bytes every stored receipt went through this gate
        (none was stored before it was served), which refuses one for less than any it
        checked, so its settlement need not read the store for one for more. False for
        no final receipt, or for one another receipt was checked after."""
        final = self.core.final
        return final is not None and self.gate.checked is final


def _clock_needed(method: str) -> LocalProtocolError:
    """``method`` was given no ``now`` under a bytes/s limit, which it would skip."""
    return LocalProtocolError(
        f"{method}: now is required while the client has a bytes/s limit; None would skip the limit"
    )
