"""The rules of one paid connection, written once for the blocking
(:class:`dtp.hostid.paid._blocking.PaidConnection`) and the asyncio
(:class:`dtp.hostid.paid._asyncio.PaidConnection`) driver (docs/escrow.md §6.1).

:class:`PaidConnectionEngine` is sans-I/O: no socket, thread, task, lock or clock. The
drivers pass it the connection's usage (total bytes, total requests), ``now`` (monotonic
seconds) and what came (a RECEIPT frame, an escrow's deposit read again); it answers
with what to do: store a receipt, keep it as the final one, read the escrow now (which
one), close the connection (with which code and reason). Storing, reading the ledger and
closing are the drivers' (the receipt writer's thread, a worker thread, the transport).
"""

from __future__ import annotations

import enum
import logging
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
    from dtp.hostid.paid._policy import ServicePolicy
    from dtp.ledger.receipt import Receipt
    from dtp.payments._ratelimit import ClientBuckets

logger = logging.getLogger(__name__)

#: A connection's usage as its driver reads it: (total bytes, total requests)
Usage = tuple[int, int]


class ReceiptStep(enum.Enum):
    """What a RECEIPT frame from the client asks of the driver
    (:meth:`PaidConnectionEngine.receipt_frame`)."""

    STORE = "store"
    """Checked: store it (the receipt writer), then count it
    (:meth:`~PaidConnectionEngine.kept`)."""
    FINAL = "final"
    """It came with the end of the connection: nothing is served on it any more, so it
    is not written first but held in :attr:`~PaidConnectionEngine.final`, claimed by the
    settlement at once (whose claim on the ledger is its durable copy)."""
    REFUSED = "refused"
    """The gate refused it (logged): a violation, which closes the connection at the
    next look at the gate."""


@dataclass(frozen=True)
class Close:
    """Close the connection with ``code`` (a CLOSE code of dtp.payments._gate) and ``reason``."""

    code: int
    reason: str


class PauseAction(enum.Enum):
    """What a paused call does next (:meth:`PausedCall.step`)."""

    OVER = "over"
    """The gate serves again: the call goes on (the pause is over)."""
    CLOSE = "close"
    """Payment did not come: close with :attr:`PauseStep.close`, then raise
    :class:`~dtp.errors.PaymentRequired`."""
    WAIT = "wait"
    """Send RECEIPT_REQUEST first if :attr:`PauseStep.ask`, then wait up to
    :attr:`PauseStep.wait` seconds (0: one look at what came) for a receipt, read the
    deposit if due and ask again."""
    TIMED_OUT = "timed out"
    """The caller's own deadline passed while paused: raise as the unpaid call would
    when nothing comes (DTPTimeoutError, or BlockingIOError without a timeout)."""


@dataclass(frozen=True)
class PauseStep:
    """One step of a paused call: what to do, and with which facts."""

    action: PauseAction
    ask: bool = False
    """(WAIT) Send RECEIPT_REQUEST now (counted as sent:
    :meth:`PaidConnectionEngine.request_due`)."""
    wait: float = 0.0
    """(WAIT) Seconds to wait for a receipt before the next step."""
    close: Close | None = None
    """(CLOSE) The close for want of payment."""


class PausedCall:
    """One call (a read, a write, a datagram send) paused for payment, from its first
    look at the gate to its last: each :meth:`step` takes the gate's latest verdict and
    ``now`` and says what to do (docs/escrow.md §6.1; the driver only sends, waits and
    reads the deposit). Made by :meth:`PaidConnectionEngine.pause`."""

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
                # A pause for ``whole`` bytes is the connection's pause of datagram
                # sends, timed from its first drop at each step (datagrams_unpaid), not
                # by the gate's own pause clock, which restarts whenever another call
                # finds the usage served (tests/paid/test_datagram_allowance.py).
                # Recorded at every step, so that payment covering this datagram ends
                # that pause while the call waits (datagrams_covered_again), and the
                # step after it starts a new one (tests/paid/test_datagram_pause_rule.py)
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
    """What a write does after a look at the gate that serves, on the driver's send
    credit (:meth:`PaidConnectionEngine.refill_send`; the blocking driver's writers
    share it across threads, asyncio's take it one at a time)."""

    GO = "go"
    """The send credit is set: the write takes from it (:meth:`Credit.reserve`)."""
    WRITES = "writes"
    """Writes of other threads under way hold the credit, nothing is queued: wait (a
    request interval at most) for one of them to end (:meth:`Credit.sent`), then look
    again. (Blocking only: an asyncio write's bytes are in the usage or the queue as it
    returns.)"""
    QUEUE = "queue"
    """Bytes queued beyond the client's flow-control window hold it: drive the I/O (a
    request interval at most) until fewer are queued -- they go as the client reads --,
    then look again."""


class Credit:
    """The credit a driver keeps between looks at the gate: the blocking driver's reads
    and writes, under its own lock (the connection's streams may be driven from several
    threads); asyncio's held writes, which refill it at each look (its reads ask
    :meth:`PaidConnectionEngine.read_room` at each call).

    ``read`` is what may still move before the gate is asked again: what it allowed at
    its last look (at most CREDIT_MAX), less every read and write since, each counted
    as CALL_COST at least (so that the gate is asked again within CREDIT_MAX /
    CALL_COST calls whatever they move). Writes take from ``send``, their own, before
    they send (:meth:`reserve`), and count as ``sending`` until they are in the usage
    (:meth:`sent`): a look at the gate meanwhile deducts them, so that N writers share
    the credit rather than each take all of it (tests/paid/test_credit_ceiling.py).
    Reads keep ``read``: what they take is in the usage already."""

    __slots__ = ("read", "send", "sending")

    def __init__(self) -> None:
        self.read = 0
        self.send = 0
        self.sending = 0

    def void(self) -> None:
        """The credit cached is void (a refused receipt, a new request): the next call
        looks at the gate."""
        self.read = self.send = 0

    def spent(self, nbytes: int) -> None:
        """A read of ``nbytes`` (or a datagram's charge) went: counted against ``read``."""
        self.read -= nbytes if nbytes > CALL_COST else CALL_COST

    def reserve(self, nbytes: int) -> int:
        """How much of a write of ``nbytes`` may go now (after the send credit was
        refilled), taken from the credit at once and under way until :meth:`sent`: at
        least 1 byte (the gate said serve)."""
        credit = self.send
        take = nbytes if nbytes <= credit else max(1, credit)
        cost = take if take > CALL_COST else CALL_COST
        self.send = credit - cost
        self.read -= cost  # reads look again as they did
        self.sending += take
        return take

    def reserve_datagrams(self, sizes: list[int], start: int) -> tuple[int, int]:
        """Take from the send credit as many datagrams of ``sizes`` from ``start`` on as
        it covers, each whole (:meth:`PaidConnectionEngine.datagrams_covered`, each
        counted as CALL_COST at least): (how many, their bytes, under way until
        :meth:`sent`); (0, 0) when it does not cover the first."""
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
    """The receipt path of one paid connection (see the module docs): ``gate`` judges
    the receipts and the usage, ``policy`` is the service's, ``connection_id`` and
    ``client`` name it in the logs."""

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
        #: The receipt that came with the end of the connection (:attr:`ReceiptStep.FINAL`):
        #: written only should the settlement not claim it
        self.final: Receipt | None = None
        #: Since when (the drivers' ``now``) datagram sends have found no credit that
        #: covers them whole; None: they do not (:meth:`datagrams_unpaid`)
        self.unpaid_datagrams_since: float | None = None
        #: The bytes of the datagram such a send found no credit for last
        #: (:meth:`datagrams_covered_again`)
        self.unpaid_size = 0
        #: When (the drivers' ``now``) a paused call last asked the client for a
        #: receipt; None: not in this pause (:meth:`request_due`)
        self.asked_at: float | None = None
        #: The bytes/s limit the connection's credit is paced at (:meth:`credit_pace`)
        self.credit_rate = 0.0

    # -- receipts --------------------------------------------------------------------

    def receipt_frame(self, data: bytes, *, closed: bool) -> tuple[ReceiptStep, Receipt | None]:
        """A RECEIPT frame ``data`` came; ``closed``: the connection has ended. Returns
        the step, with the receipt to store for :attr:`ReceiptStep.STORE`."""
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
        """Whether no further receipt is to be expected for ``usage`` (the final
        receipt's wait ends)."""
        return self.gate.settled_up(*usage)

    def final_receipt_deadline(self, now: float) -> float:
        """When the wait for the final receipt, asked for at ``now`` as the server
        ends the connection, gives up (the policy's ``final_receipt_timeout``)."""
        return now + self.policy.final_receipt_timeout

    def final_receipt_step(
        self, usage: Usage, now: float, deadline: float, *, ended: bool
    ) -> float:
        """The wait for the final receipt at ``now`` (``deadline`` from
        :meth:`final_receipt_deadline`): 0 when it is over -- the connection ``ended``,
        the receipts cover ``usage`` (:meth:`settled_up`) or the deadline passed --, else
        ask the client (again) and wait this long (:meth:`final_receipt_wait`)."""
        if self.final_receipt_over(usage, ended=ended):
            return 0.0
        return self.final_receipt_wait(now, deadline)

    def final_receipt_over(self, usage: Usage, *, ended: bool) -> bool:
        """Whether the wait for the final receipt is over before its deadline: the
        connection ``ended``, or the receipts cover ``usage`` (:meth:`settled_up`). The
        drivers wait on this between two steps of :meth:`final_receipt_step`."""
        return ended or self.settled_up(usage)

    def final_receipt_wait(self, now: float, deadline: float) -> float:
        """After asking (again) at ``now``: how long to wait for the final receipt
        before asking again (a request interval at most); 0 once ``deadline`` passed."""
        left = deadline - now
        return 0.0 if left <= 0 else min(left, self.policy.request_interval)

    # -- the pause: asking the client for a receipt ----------------------------------

    def request_due(self, now: float) -> bool:
        """Whether a paused call sends RECEIPT_REQUEST at ``now`` (counted as sent when
        True): once per ``request_interval`` for the whole connection, whichever of its
        calls or datagram sends is paused (docs/escrow.md §6.1: "asks for a receipt every
        200 ms"), not once per paused call or per retry; the first call of a pause asks
        at once (tests/paid/test_receipt_request_cadence.py)."""
        asked = self.asked_at
        if asked is not None and now - asked < self.policy.request_interval:
            return False
        self.asked_at = now
        return True

    def request_wait(self, now: float) -> float:
        """Seconds a paused call waits at ``now`` for a receipt before it looks again:
        until the next request is due (a request interval after the last one; 0 when
        none was made in this pause)."""
        asked = self.asked_at
        if asked is None:
            return 0.0
        interval = self.policy.request_interval
        # (as request_due reckons: positive whenever no request is due)
        return min(interval, max(0.0, interval - (now - asked)))

    def pause_over(self) -> None:
        """The usage is served again: a pause that comes later is a new one, whose first
        call asks at once."""
        self.asked_at = None

    @staticmethod
    def call_deadline(timeout: float | None, began: float | None, now: float) -> float | None:
        """When a call with a timeout of ``timeout`` seconds (None: none), begun at
        ``began`` (None: ``now``, as the pause begins), stops waiting for payment or
        credit: a pause is waited out within the call's own timeout, as the unpaid call
        waits (tests/paid/test_datagrams.py), then it raises as the unpaid call would
        when nothing comes."""
        if timeout is None:
            return None
        return (now if began is None else began) + timeout

    def pause(self, now: float, *, whole: int = 0, deadline: float | None = None) -> PausedCall:
        """A call paused at ``now`` (the gate's verdict PAUSE, or CLOSE): its steps.
        ``whole``: bytes of a write that cannot go in part (a datagram); ``deadline``: the
        caller's own (:meth:`call_deadline`; None: the pause is waited out, to its end)."""
        return PausedCall(self, now, whole, deadline)

    # -- room: how much may move before the gate is asked again ------------------------

    def read_credit(self, usage: Usage) -> int:
        """The bytes reads may take at one look: the gate's credit on ``usage`` (0 when
        it does not serve), at most CREDIT_MAX, so that one call cannot carry a client
        that pays nothing far past the allowance."""
        return min(self.gate.credit_bytes(*usage), CREDIT_MAX)

    def write_credit(self, usage: Usage, queued: int) -> int:
        """The gate's credit for writes: on ``usage`` plus the ``queued`` bytes waiting
        beyond the client's flow-control window: the usage counts a byte only once it
        is sent, so the queued bytes are spent credit too, or a client that reads
        nothing gets its queue filled on credit it never pays for
        (tests/paid/test_credit.py)."""
        total_bytes, total_requests = usage
        return self.gate.credit_bytes(total_bytes + queued, total_requests)

    def write_room(self, usage: Usage, queued: int, under_way: int, nbytes: int) -> int:
        """How much of a write of ``nbytes`` may go now, the gate serving: its
        :meth:`write_credit` less the bytes ``under_way`` (taken from the credit by
        writes of other threads, not in the usage yet), at most CREDIT_MAX. At least 1
        byte when nothing is queued or under way (the gate said serve); 0 when what is
        queued or under way holds all of it: the writer waits for it to go (for the
        client to read), then asks again."""
        credit = min(self.write_credit(usage, queued) - under_way, CREDIT_MAX)
        if nbytes <= credit:
            return nbytes
        if credit > 0:
            return credit
        return 0 if queued or under_way else 1

    def refill_send(
        self, credit: Credit, usage: Usage, queued: int, whole: int, *, ended: bool
    ) -> RefillStep:
        """Set ``credit``'s send credit to the :meth:`write_room` of a look at the gate
        (serving) on ``usage``, the ``queued`` bytes and those under way:
        :attr:`RefillStep.GO` when it covers a byte (``whole`` bytes for a datagram),
        when nothing is queued or under way (the gate said serve: a byte goes), or the
        connection ``ended`` (the write reports how). Else the bytes on their way hold
        the credit and the writer waits for some of them to go, then looks again:
        :attr:`RefillStep.QUEUE` when bytes are queued (they go as the client reads),
        :attr:`RefillStep.WRITES` when only writes under way hold it."""
        sending = credit.sending
        room = self.write_room(usage, queued, sending, CREDIT_MAX)
        if room >= max(whole, 1) or not (sending or queued) or ended:
            credit.send = room
            return RefillStep.GO
        return RefillStep.QUEUE if queued else RefillStep.WRITES

    def read_room(self, usage: Usage, nbytes: int) -> tuple[int, int]:
        """How much of a read of ``nbytes`` may go at one look on ``usage``: (that, the
        credit it was judged on, :meth:`read_credit`); at least 1 byte (the gate serving,
        or the read that reports how the connection ended; the credit of 0 then says the
        gate does not serve)."""
        credit = self.read_credit(usage)
        return (nbytes if nbytes <= credit else max(1, credit)), credit

    def datagram_room(self, usage: Usage, queued: int, sizes: list[int]) -> int:
        """How many datagrams of ``sizes`` (the first ones) may go now, each whole, on
        the :meth:`write_credit` of ``usage`` and ``queued`` bytes; none when the gate
        does not serve."""
        if not self.gate.serving(*usage):
            return 0
        return self.datagrams_covered(self.write_credit(usage, queued), sizes)[0]

    def datagrams_covered_again(self, usage: Usage, queued: int) -> bool:
        """Payment came (a receipt kept, a top-up read; ``usage`` and the ``queued``
        bytes as they are then): whether the credit now covers the datagram that a send
        last found no credit for, ending a pause of datagram sends (the rule: see
        :meth:`datagrams_unpaid`). Judged as payment comes, not at the next send, so
        that stream bytes spending that credit before the next datagram do not undo a
        payment that covered it
        (tests/paid/test_datagram_pause_rule.py)."""
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
        """How many of the datagrams of ``sizes[start:]`` (their bytes each) go on
        ``credit`` bytes: in order, each only whole (a datagram cannot go in part: its
        bytes are metered as they go), each taking ``least`` bytes of the credit at
        least (the blocking driver's CALL_COST, which bounds how long a cached credit
        lasts: none go once it is spent). Returns (how many, their bytes, the credit
        left)."""
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
        """The escrow to read again now, its read begun (None: no read is due). Due when
        the deposit holds a paused connection or a receipt waits above it -- the client
        may have topped it up while the connection was open -- at most once per
        DEPOSIT_READ_INTERVAL_MS; ``ending`` (the settlement next): whenever a receipt
        still waits above the deposit, or it goes unclaimed."""
        gate = self.gate
        escrow_id = gate.escrow_id
        now_ms = int(now * 1000)
        if escrow_id is None or not gate.wants_deposit(now_ms, *usage, ending=ending):
            return None
        gate.deposit_reading(now_ms)
        return escrow_id

    def deposit_read(self, deposited: int) -> Receipt | None:
        """The escrow holds ``deposited`` MIST: the receipt that waited above the old
        deposit when the new one covers it (the driver hands it to its receipt path
        again), else None."""
        return self.gate.deposit_read(deposited)

    def deposit_read_failed(self, exc: ChainError) -> None:
        """The read of the escrow failed (tried again an interval later)."""
        logger.warning("connection %s: cannot read its escrow: %s", self.connection_id, exc)

    # -- datagrams no credit covers --------------------------------------------------

    def datagrams_unpaid(self, now: float, size: int = 0) -> float:
        """A datagram send found no credit covering its datagram (of ``size`` bytes)
        whole (a datagram cannot go in part): the pause of datagram sends is timed from
        the first such send, across the calls, and the connection closes once it lasted
        ``pause_timeout`` (:meth:`datagram_verdict`). Returns when it began.

        One rule for both drivers: the pause ends only when payment covers the datagram
        dropped (:meth:`datagrams_covered_again`) or a datagram send goes whole
        (:meth:`datagrams_paid`; an empty batch is no send). A read or a stream write
        that finds the usage served does not end it (the gate's own pause clock restarts
        then): a datagram no credit covers would never close the connection of a client
        that pays nothing while streams moved a few bytes; and payment that came, then
        spent on stream bytes, is no longer there to cover the next datagram: its pause
        is a new one (tests/paid/test_datagram_pause_rule.py)."""
        self.unpaid_size = size
        since = self.unpaid_datagrams_since
        if since is None:
            self.unpaid_datagrams_since = since = now
        return since

    def datagrams_now(
        self, usage: Usage, queued: int, sizes: list[int], now: float | None
    ) -> tuple[int, bool]:
        """A datagram send that never waits (asyncio's) of datagrams of ``sizes``: how
        many of them go (the first ones), and whether the rest are dropped for want of
        payment (a pause: the driver takes its step from :meth:`datagrams_dropped`).
        ``now`` is needed only under a bytes/s limit (``buckets.bytes.rate``; else None: an
        unlimited sender reads no clock per send). None go while that limit is in debt,
        which is no pause (its debt is waited for by a drain, which a sender of
        datagrams alone need never call: sent, they went past the limit for good). A
        batch that goes whole ends a pause of datagram sends, an empty one does not
        (tests/paid/test_datagram_pause.py). ``now`` None under a bytes/s limit is
        refused (:class:`~dtp.errors.LocalProtocolError`): it would skip the limit."""
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
        """A datagram send that never waits (asyncio's) dropped datagrams no credit
        covered, the first of ``size`` bytes, at ``now`` on ``usage``: the step of
        a paused blocking send without its wait. CLOSE once they have been dropped for
        want of payment for ``pause_timeout`` (or at once on a bad receipt), else WAIT
        (``ask``: send RECEIPT_REQUEST, once a request interval; the wait is the next
        send's). Dropping them for good instead would let a sender of datagrams alone to
        a client that pays nothing go on for the life of the connection."""
        since = self.datagrams_unpaid(now, size)
        verdict = self.datagram_verdict(self.verdict(usage, now), now, size, since)
        if verdict.state is GateState.CLOSE:
            return PauseStep(PauseAction.CLOSE, close=self.payment_required(verdict))
        return PauseStep(PauseAction.WAIT, self.request_due(now))

    def datagrams_paid(self) -> None:
        """Payment covers datagram sends again: a pause of them is over (and the next
        one asks for a receipt at once: :meth:`pause_over`)."""
        self.unpaid_datagrams_since = None
        self.asked_at = None

    def datagram_verdict(
        self, verdict: GateVerdict, now: float, size: int, since: float
    ) -> GateVerdict:
        """``verdict``, or CLOSE once datagram sends (the first of ``size`` bytes) have
        found no credit covering them since ``since`` for the policy's ``pause_timeout``."""
        timeout = self.policy.pause_timeout
        if verdict.state is GateState.CLOSE or now - since < timeout:
            return verdict
        return GateVerdict(
            GateState.CLOSE,
            verdict.owed,
            f"payment required: no credit covered a datagram of {size} bytes within {timeout} s",
        )

    # -- the client's rate limits ----------------------------------------------------
    # (its token buckets, shared by its connections: the blocking driver calls these
    # under the limiter's lock; a driver checks ``buckets.*.rate`` itself first, so that
    # an unlimited client costs no call)

    def charge(self, nbytes: int, requests: int, now: float) -> float:
        """Charge ``nbytes`` and ``requests`` to the rate limits at ``now``: the seconds
        to hold the connection back for them."""
        buckets = self.buckets
        return max(buckets.bytes.charge(nbytes, now), buckets.requests.charge(requests, now))

    def debt(self, now: float) -> float:
        """Seconds until neither rate limit is in debt."""
        return max(self.buckets.bytes.delay(now), self.buckets.requests.delay(now))

    def credit_pace(self) -> float | None:
        """The bytes/s limit to pace the connection's flow-control credit at
        (:meth:`dtp.protocol.connection._core.Connection.pace_credit`; 0: unpaced), when
        it changed since the last call; else None. The drivers ask before each paced read
        and give it to the connection: a client's limit, set or changed on the Host,
        then paces what it may send as it paces what the handler reads."""
        rate = self.buckets.bytes.rate
        if rate == self.credit_rate:
            return None
        self.credit_rate = rate
        return rate

    def pace_take(self, nbytes: int) -> int:
        """How much of a read or write of ``nbytes`` goes at once under the bytes/s
        limit: the bucket's take (:attr:`dtp.payments._ratelimit.TokenBucket.take`)."""
        return max(self.buckets.bytes.take_of(nbytes), 0)

    def pace_wait(self, size: int, now: float) -> float:
        """Seconds until the bytes/s bucket holds ``size`` bytes and the requests/s
        limit is out of debt (what :meth:`pace_take` sent waits for)."""
        return max(self.buckets.bytes.wait_for(size, now), self.buckets.requests.delay(now))

    def hold_wait(self, delay: float) -> float:
        """How long a wait of ``delay`` seconds for the rate limits waits before it asks
        them again: a refresh interval at most, so that a limit the Host raised or lifted
        meanwhile reaches a wait already under way (300 s for 30 kB at 100 B/s else)."""
        return min(delay, self.policy.refresh_interval)

    def charge_sent(self, nbytes: int, now: float) -> bool:
        """Charge ``nbytes`` sent by a call that never waits (asyncio's write, datagram
        sends) to the bytes/s limit at ``now``, without a wait: its debt holds back the
        next read or write. Whether a limit took it (the debt is then waited for at the
        next drain)."""
        bucket = self.buckets.bytes
        if not bucket.rate:
            return False
        bucket.charge(nbytes, now)
        return True

    def send_slice(self) -> int:
        """The most bytes to let out between two looks at the rate limits: SEND_SLICE,
        or the bytes/s limit's take when smaller
        (:attr:`dtp.payments._ratelimit.TokenBucket.take`)."""
        bucket = self.buckets.bytes
        if not bucket.rate:
            return SEND_SLICE
        return min(SEND_SLICE, bucket.take_of(SEND_SLICE))

    def write_slice(self) -> int:
        """The most bytes of a write that never waits to let out at once:
        :meth:`send_slice` under a bytes/s limit, else CREDIT_MAX."""
        return self.send_slice() if self.buckets.bytes.rate else CREDIT_MAX

    def in_debt(self, now: float) -> bool:
        """Whether the bytes/s limit is in debt at ``now`` (what went must be paid for by
        a wait before more goes)."""
        bucket = self.buckets.bytes
        return bool(bucket.rate) and bucket.delay(now) > 0

    def write_now(self, usage: Usage, queued: int, nbytes: int, now: float | None) -> int:
        """How much of a write of ``nbytes`` that never waits (asyncio's) goes at once
        on ``usage`` and the ``queued`` bytes, the rest held and let out as payment and
        the rate limits allow: nothing while the gate does not serve or the bytes/s
        bucket has not refilled for a piece (:meth:`held_back`), else its
        :meth:`write_room`, one :meth:`write_slice` at most (so a large write keeps to
        the limit: tests/paid/test_rate_limit_asyncio_callback.py). ``now`` is needed
        only under a bytes/s limit (``buckets.bytes.rate``; else None: no clock read per write);
        None under one is refused (:class:`~dtp.errors.LocalProtocolError`)."""
        if now is None:
            if self.buckets.bytes.rate:  # (looked at only when the driver read no clock)
                raise _clock_needed("write_now")
        elif self.held_back(nbytes, now):
            return 0
        if not self.gate.serving(*usage):
            return 0
        return min(self.write_room(usage, queued, 0, nbytes), self.write_slice())

    def held_back(self, nbytes: int, now: float) -> bool:
        """Whether the bytes/s limit holds back a write of ``nbytes`` at ``now``: its
        bucket does not hold the first piece of it yet."""
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
        """The client closed the connection on the ledger while it is served (see
        ServicePolicy.ledger_check_interval): closed, for the settlement to claim now."""
        logger.info("closing connection %s: its client closed it on the ledger", self.connection_id)
        return Close(CLOSE_LEDGER_CLOSED, "the connection was closed on the ledger")

    def subscription_ended(self, why: str) -> Close:
        """The subscription the connection was opened with is over on the ledger (``why``:
        :meth:`~dtp.ledger.interface.Ledger.subscription_over`): its fees are all zero,
        so nothing pays for it any more. Closed (the client raises
        :class:`~dtp.errors.SubscriptionEnded`), and settled as any connection's end:
        nothing is owed."""
        logger.info("closing connection %s: %s", self.connection_id, why)
        return Close(CLOSE_SUBSCRIPTION_ENDED, f"the subscription is over: {why}")


def _clock_needed(method: str) -> LocalProtocolError:
    """The error for a driver that called ``method`` with ``now`` None under a bytes/s
    limit (``buckets.bytes.rate``): without the time the limit would be
    skipped, so nothing is decided."""
    return LocalProtocolError(
        f"{method}: now is required while the client has a bytes/s limit; None would skip the limit"
    )
