"""UDP through DTP, the rules both drivers pump (docs/udp.md), sans-I/O: no socket,
clock, lock or ledger here (callers pass ``now`` and the facts; the blocking driver's
threads share an engine under one lock of the driver's). The relay's and the
forwarder's billing (:class:`UdpBilling`, :class:`FlowAccount`), the control stream's
codec (:class:`ControlDecoder`, :func:`control_frame`) and the relay's rules
(:class:`RelayEngine`: admission, replies, answers, reports, drain, end). The forwarders' rules
over their flows are :class:`dtp.hostid.udp._flow_table.FlowTable`; the counters,
:class:`dtp.hostid.udp._stats.UdpStats`."""

from __future__ import annotations

import functools
import logging
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dtp.errors import (
    DTPError,
    InsufficientFunds,
    RemoteProtocolError,
    UnsupportedReceiptVersion,
)
from dtp.ledger.receipt import RECEIPT_ENCODED_SIZE, Receipt, ReceiptScope, fee
from dtp.payments._ratelimit import datagram_charge
from dtp.payments.receipts import Meter, check_next_receipt

if TYPE_CHECKING:
    from dtp.ledger._objects import Sla
    from dtp.payments._ratelimit import ClientBuckets


DEFAULT_LOSS_ALLOWANCE: Final = 0.02
"""A paid UDP server's default ``loss_allowance``: the share of its reply bytes written
off as lost on the way back, which the client never signs for (docs/udp.md)."""

logger = logging.getLogger(__name__)

#: Largest datagram relayed (a UDP payload over IPv4 is at most 65507 bytes; DTP's
#: default ``max_datagram_size`` is lower, 16000, and wins when smaller).
MAX_UDP_PAYLOAD = 65507
LEN = struct.Struct(">I")
#: :class:`UdpBilling`'s default byte credit per datagram of credit.
_CREDIT_BYTES_PER_DATAGRAM = 16 * 1024


# -- the exposing side ---------------------------------------------------------------------


class UdpBilling:
    """The relay's check of one connection's per-datagram payments.

    ``credit_datagrams``: datagrams served ahead of the receipts covering them — the
    relay's risk, and the slack a fast stream needs while reports and receipts make
    their round trip (at 512 bytes, 1024 datagrams are 0.5 MB of traffic).
    ``credit_bytes`` (by default ``credit_datagrams`` x 16 KiB): the same for the bytes
    both ways, requests and replies, served ahead of the receipts covering them. A
    receipt pays for requests and bytes apart, and counting requests alone let a client
    sign for its datagrams but no bytes (on a service priced by the byte, nothing at
    all) and be served without bound, replies included. ``on_receipt`` sees every
    accepted receipt (e.g. ``ReceiptStore.keep``).

    ``loss_allowance``: the share of the reply bytes the relay writes off as lost on
    the way back. The forwarder signs for no more than it received, so each reply lost
    after the relay counted it stays unreceipted for good; without the write-off those
    bytes would add up until the credit is gone and a lossy flow is served nothing more.
    A client that claims losses it did not have gets at most this share of its replies
    for free: the relay's risk, with ``credit_bytes``.

    ``counts_when_kept``: a receipt accepted counts (pays, extends the credit) only once
    the caller passes it to :meth:`kept`, for a caller whose ``on_receipt`` only queues
    it for the disk (a :class:`~dtp.payments._receipt_writer.ReceiptWriter`): counted at once, the
    relay served on a receipt a crash could still lose, a receipt interval beyond the
    credit it means to risk (docs/escrow.md §6.1: a receipt is on disk before it counts).

    Sans-I/O and lock-free: one relay uses it at a time (the blocking relay's threads
    under its engine lock; the asyncio relay on its loop). ``kept`` may come from
    another thread (a receipt writer's): the blocking relay sets :attr:`run_kept` to
    count it under its engine lock; the asyncio relay sets none, so its caller calls
    ``kept`` on the relay's loop (the daemon, with ``call_soon_threadsafe``).
    """

    def __init__(
        self,
        scope: ReceiptScope,
        sla: Sla,
        client_public_key: bytes,
        deposited: int,
        *,
        credit_datagrams: int = 1024,
        credit_bytes: int | None = None,
        on_receipt: Callable[[Receipt], None] | None = None,
        counts_when_kept: bool = False,
        loss_allowance: float = DEFAULT_LOSS_ALLOWANCE,
    ) -> None:
        if not 0.0 <= loss_allowance < 1.0:
            raise ValueError(f"loss_allowance must be in [0, 1), got {loss_allowance!r}")
        if credit_datagrams < 0:
            raise ValueError("credit_datagrams cannot be negative")
        if credit_bytes is None:
            credit_bytes = credit_datagrams * _CREDIT_BYTES_PER_DATAGRAM
        if credit_bytes < 0:
            raise ValueError("credit_bytes cannot be negative")
        #: The package, escrow and connection the receipts must be signed for.
        self.scope = scope
        self.connection_id = scope.connection_id
        self.sla = sla
        self.client_public_key = client_public_key
        self.deposited = deposited
        self.credit_datagrams = credit_datagrams
        self.credit_bytes = credit_bytes
        self.on_receipt = on_receipt
        self.counts_when_kept = counts_when_kept
        self.loss_allowance = loss_allowance
        #: The newest receipt counted: what pays for the traffic served.
        self.latest: Receipt | None = None
        #: The newest receipt accepted (counted, or waiting for :meth:`kept`): the one a
        #: next receipt must follow.
        self.checked: Receipt | None = None
        #: What the relay forwarded for this client: its datagrams (requests) and the
        #: bytes both ways, i.e. what an exact receipt covers.
        self.datagrams = 0
        self.bytes = 0
        #: Of ``bytes``, those of replies sent to the client.
        self.reply_bytes = 0
        self.refused_receipts = 0
        #: Why the latest refused receipt was refused (None: none was).
        self.last_refusal: DTPError | None = None
        #: How :meth:`kept` runs its count: ``run_kept(count)`` calls ``count`` where
        #: the relay's other calls cannot overlap it (the blocking relay: under its
        #: engine lock). None: at once, in the caller's thread.
        self.run_kept: Callable[[Callable[[], None]], None] | None = None
        self._reported = (0, 0)
        # allowed and not counted yet (a datagram on its way to the backend, replies
        # on their way to the client): the request path and the reply path run apart
        # (threads, under the blocking driver's lock, or callbacks), and each must count
        # what the other is about to send, or together they would serve past the deposit
        self._pending_datagrams = 0
        self._pending_bytes = 0

    @property
    def owed(self) -> int:
        """The fee of what was forwarded so far."""
        return fee(self.sla, self.bytes, self.datagrams)

    @property
    def paid_up(self) -> bool:
        """Whether the latest receipt covers everything forwarded so far (a relay
        finishing waits for this before it ends)."""
        latest = self.latest
        paid = (0, 0) if latest is None else (latest.total_requests, latest.total_bytes)
        return paid[0] >= self.datagrams and paid[1] >= self.bytes

    def receipt(self, encoded: bytes) -> bool:
        """Check and keep a receipt; False (and counted) when it is refused."""
        try:
            receipt = Receipt.decode(encoded)
            check_next_receipt(
                receipt,
                self.checked,
                scope=self.scope,
                sla=self.sla,
                public_key=self.client_public_key,
                deposited=self.deposited,
            )
            self.checked = receipt
            if not self.counts_when_kept:
                self.latest = receipt
        except DTPError as exc:
            self.refused_receipts += 1
            self.last_refusal = exc
            logger.info("UDP receipt refused on %s: %s", self.connection_id, exc)
            return False
        if self.on_receipt is not None:
            try:
                self.on_receipt(receipt)
            except Exception:
                logger.exception("on_receipt failed for %s", self.connection_id)
        return True

    def kept(self, receipt: Receipt) -> None:
        """Count a receipt :meth:`receipt` accepted, now kept durably (with
        ``counts_when_kept``). One older than the newest counted changes nothing (a
        writer that replaced it with a newer one may report either first). Through
        :attr:`run_kept` when a relay set one."""
        run = self.run_kept
        if run is None:
            self._count_kept(receipt)
        else:
            run(functools.partial(self._count_kept, receipt))

    def _count_kept(self, receipt: Receipt) -> None:
        if self.latest is None or receipt.nonce > self.latest.nonce:
            self.latest = receipt

    def may_forward(self, nbytes: int = 0) -> bool:
        """Whether a datagram of ``nbytes`` from the client may go: the receipts so far
        leave credit for one more (its request and its bytes), and the deposit pays
        for it on top of everything served (beyond it, no receipt could). The relays
        ask this before sending and count with :meth:`forwarded` only once the
        backend's socket took the datagram: a send that fails is not billed (call
        :meth:`not_forwarded`). True reserves the datagram until then, so that the
        replies allowed meanwhile leave room for it."""
        if not self._may_serve(nbytes, 1):
            return False
        self._pending_datagrams += 1
        self._pending_bytes += nbytes
        return True

    def not_forwarded(self, nbytes: int) -> None:
        """A datagram :meth:`may_forward` allowed was not delivered: not billed."""
        self.delivered(1, nbytes, 0, 0)

    def delivered(self, reserved: int, reserved_bytes: int, sent: int, sent_bytes: int) -> None:
        """Count what went of datagrams :meth:`may_forward` allowed: ``sent`` of
        ``sent_bytes`` delivered to the backend, billed, and the reservation of all
        ``reserved`` (of ``reserved_bytes``) released -- those not sent are not
        billed. One call for a batch."""
        self._unreserve(reserved_bytes, reserved)
        self.datagrams += sent
        self.bytes += sent_bytes

    def _unreserve(self, nbytes: int, datagrams: int) -> None:
        self._pending_bytes = max(0, self._pending_bytes - nbytes)
        self._pending_datagrams = max(0, self._pending_datagrams - datagrams)

    def _may_serve(self, nbytes: int, requests: int) -> bool:
        """Credit and deposit left for ``nbytes`` and ``requests`` more,
        beyond what is counted and what is reserved."""
        latest = self.latest
        paid, paid_bytes = (0, 0) if latest is None else (latest.total_requests, latest.total_bytes)
        datagrams = self.datagrams + self._pending_datagrams
        served = self.bytes + self._pending_bytes
        return (
            datagrams - paid < self.credit_datagrams
            and served - paid_bytes < self._byte_credit()
            and fee(self.sla, served + nbytes, datagrams + requests) <= self.deposited
        )

    def _byte_credit(self) -> int:
        """The bytes that may go unreceipted: the credit, and the replies
        written off as lost."""
        return self.credit_bytes + int(self.reply_bytes * self.loss_allowance)

    def replies_allowed(self, sizes: list[int]) -> int:
        """How many of the replies of these sizes (the first ones) may go: each while
        the bytes no receipt covers stay below ``credit_bytes`` and the deposit pays
        for it. Their bytes are reserved until the relays count those sent with
        :meth:`replied` (passing what was reserved)."""
        paid_bytes = 0 if self.latest is None else self.latest.total_bytes
        start = nbytes = self.bytes + self._pending_bytes
        datagrams = self.datagrams + self._pending_datagrams
        credit = self._byte_credit()
        allowed = 0
        for size in sizes:
            if nbytes - paid_bytes >= credit:
                break
            if fee(self.sla, nbytes + size, datagrams) > self.deposited:
                break
            nbytes += size
            allowed += 1
        self._pending_bytes += nbytes - start
        return allowed

    def forwarded(self, nbytes: int) -> None:
        """Count a datagram of ``nbytes`` delivered to the backend."""
        self.delivered(1, nbytes, 1, nbytes)

    def admit(self, nbytes: int) -> bool:
        """Whether a datagram of ``nbytes`` from the client may be forwarded, counting
        it when it may (for a caller whose delivery cannot fail; the relays use
        :meth:`may_forward` and :meth:`forwarded`)."""
        if not self._may_serve(nbytes, 1):
            return False
        self.datagrams += 1
        self.bytes += nbytes
        return True

    def replied(self, nbytes: int, reserved: int = 0) -> None:
        """Count replies of ``nbytes`` sent to the client, releasing the ``reserved``
        bytes :meth:`replies_allowed` set aside for them."""
        self._unreserve(reserved, 0)
        self.bytes += nbytes
        self.reply_bytes += nbytes

    def report_interval(self, every: int) -> int:
        """``every`` (datagrams between usage reports), lowered to half the credit when
        that is less: the receipts must come back before the credit is used up. With
        a credit of 16 and reports every 32 datagrams, a steady stream got 16 through
        and then nothing (no report was due, and traffic never paused for the
        forced one)."""
        return max(1, min(every, self.credit_datagrams // 2))

    def final_totals(self) -> tuple[int, int]:
        """The totals now, reported as final."""
        self._reported = (self.datagrams, self.bytes)
        return self._reported

    def report_due(self, every: int, force: bool = False) -> tuple[int, int] | None:
        """The totals to report when ``every`` datagrams, or half of ``credit_bytes``,
        passed since the last report (or anything changed, with ``force``); None when
        no report is due. (By bytes too: a stream of replies, which are no requests,
        would otherwise run through its byte credit before a report was due.)"""
        last_datagrams, last_bytes = self._reported
        changed = (self.datagrams, self.bytes) != self._reported
        if not changed or not (
            force
            or self.datagrams - last_datagrams >= every
            or self.bytes - last_bytes >= max(1, self.credit_bytes // 2)
        ):
            return None
        self._reported = (self.datagrams, self.bytes)
        return self._reported


_MAX_CONTROL = 1 + RECEIPT_ENCODED_SIZE


class BadControlFrame(RemoteProtocolError):
    """The peer sent a control frame no peer of ours sends (raised by the readers of
    the control stream, which then abort the connection with it as the reason)."""


def check_control_size(size: int) -> None:
    """Raise :class:`BadControlFrame` for a declared frame length out of bounds: its
    body is never waited for nor buffered."""
    if not 1 <= size <= _MAX_CONTROL:
        raise BadControlFrame(f"UDP control frame of {size} bytes (1 to {_MAX_CONTROL})")


#: Receipts a relay refuses on one connection before it ends it: one is no fault (a
#: stale one, say), but each costs a verification and a log line, and a client sending
#: nothing else kept a relay's event loop (every service's) busy.
_REFUSED_RECEIPTS_MAX = 8


def keep_receipt(billing: UdpBilling, encoded: bytes) -> None:
    """A relay's receipt from the control stream (:meth:`UdpBilling.receipt`); raises
    :class:`BadControlFrame` once more than :data:`_REFUSED_RECEIPTS_MAX` were refused,
    and at once for a receipt of a format version this relay does not speak (a
    forwarder of another release: none of its receipts could ever pay)."""
    if billing.receipt(encoded):
        return
    if isinstance(billing.last_refusal, UnsupportedReceiptVersion):
        raise BadControlFrame(str(billing.last_refusal))
    if billing.refused_receipts > _REFUSED_RECEIPTS_MAX:
        raise BadControlFrame(f"{billing.refused_receipts} receipts refused")


def check_final(finals: int) -> None:
    """A client asks for the final report once: answered again and again (5 bytes in,
    21 out, never drained), a client that did not read grew the relay's buffer without
    bound, or held its control thread in a blocked send."""
    if finals > 1:
        raise BadControlFrame("a second request for the final report")


def control_frame(kind: bytes, body: bytes = b"") -> bytes:
    """A control frame of ``kind`` (one byte) and ``body``, its length in front."""
    return LEN.pack(1 + len(body)) + kind + body


USAGE = struct.Struct(">QQ")


#: Bytes a driver reads from a control stream at a time (a frame is at most
#: 4 + 1 + a receipt: one read takes a few).
CONTROL_READ = 4096


class ControlDecoder:
    """The control stream's frames from its bytes as they come, whatever their split
    (sans-I/O: the drivers read, this parses). A declared length out of bounds raises
    :class:`BadControlFrame` as soon as its header is in: its body is never waited
    for nor buffered."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def receive(self, data: bytes) -> None:
        """Bytes read from the control stream."""
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next whole frame's body (its kind first), or None until more bytes
        come. The frames before a bad header are all returned before it raises."""
        buffer = self._buffer
        if len(buffer) < LEN.size:
            return None
        (size,) = LEN.unpack_from(buffer)
        check_control_size(size)
        end = LEN.size + size
        if len(buffer) < end:
            return None
        body = bytes(buffer[LEN.size : end])
        del buffer[:end]
        return body


@dataclass(frozen=True, slots=True)
class Admission:
    """What the relay does with a batch of the client's datagrams
    (:meth:`RelayEngine.admit`)."""

    #: The datagrams to send to the backend, in arrival order; the billing holds them
    #: reserved until :meth:`RelayEngine.delivered` says which went.
    forward: list[bytes]
    #: Their bytes.
    nbytes: int
    #: Dropped: over the client's rate limits (``dropped_rate_limited``).
    rate_limited: int
    #: Dropped: not covered by a receipt, or beyond the deposit (``dropped_unpaid``).
    unpaid: int


@dataclass(frozen=True, slots=True)
class Replies:
    """What the relay does with a batch of the backend's replies
    (:meth:`RelayEngine.replies`)."""

    #: The replies to send to the client, in arrival order; the billing holds their
    #: bytes reserved until :meth:`RelayEngine.replied` says how many went.
    send: list[bytes]
    #: The bytes the billing reserved for them (0 unbilled).
    reserved: int
    #: Dropped: larger than a datagram of the connection (``dropped_oversized``).
    oversized: int
    #: Dropped: the billing's credit or the deposit would not cover them
    #: (``dropped_unpaid``).
    unpaid: int


#: Seconds a finishing relay waits for the receipt of its final report (over a lossy
#: carrier such as the ledger, whose round trips take seconds: the second).
FINAL_RECEIPT_WAIT = 5.0
LOSSY_FINAL_RECEIPT_WAIT = 30.0


class RelayEngine:
    """The rules of one relayed flow, held once for :func:`dtp.hostid.udp._blocking.relay_udp`
    and :func:`dtp.hostid.udp._asyncio.relay_udp_async` (docs/udp.md). Sans-I/O: the
    drivers pass ``now`` (``time.monotonic()``) and what happened, and send the control
    frames it returns.

    It admits the client's datagrams (:meth:`admit`, :meth:`delivered`) and the
    backend's replies (:meth:`replies`, :meth:`replied`), each with one call before
    and one after a batch is sent; answers the forwarder's control frames
    (:meth:`control_frame`), says when a
    usage report is due (:meth:`report`, :meth:`paused`), drains (:meth:`finish`) and
    says when the relay is over (:meth:`done`)."""

    def __init__(
        self,
        billing: UdpBilling | None,
        *,
        idle_timeout: float,
        report_every: int,
        limits: ClientBuckets | None = None,
    ) -> None:
        self.billing = billing
        self.limits = limits
        #: Whether :meth:`admit` may drop anything: without rate limits and billing,
        #: every datagram goes, and a driver need not ask per datagram.
        self.gated = billing is not None or limits is not None
        self.idle_timeout = idle_timeout
        #: Datagrams between usage reports (no more than half the credit: see
        #: :meth:`UdpBilling.report_interval`).
        self.report_every = (
            report_every if billing is None else billing.report_interval(report_every)
        )
        #: Seconds the drivers wait for traffic at a time: short while billing, so that
        #: a pause flushes the usage report promptly (:meth:`paused`).
        self.wait = 0.05 if billing is not None else min(1.0, idle_timeout)
        #: Set once the control stream ended (its end, an error, a bad frame): no
        #: receipt can come and no report go any more, so the relay ends.
        self.control_ended = False
        #: Set by :meth:`finish`: nothing is relayed any more (``dropped_finishing``).
        self.finishing = False
        self._finish_by = 0.0
        self._finals = 0

    def admit(self, batch: list[bytes], now: float) -> Admission:
        """Which of the client's datagrams ``batch`` go to the backend (docs/udp.md):
        first the rate limits (a datagram over them is dropped before it is billed: it
        cannot wait, and holding it back only adds delay), then the billing, datagram
        by datagram (:meth:`UdpBilling.may_forward`, which reserves each allowed one).
        ``now`` is ``time.monotonic()``. The driver sends :attr:`Admission.forward`
        and then calls :meth:`delivered` once for the batch."""
        limited = 0
        limits = self.limits
        if limits is not None:
            admitted = limits.admit([len(d) for d in batch], now)
            limited = len(batch) - admitted
            if limited:
                batch = batch[:admitted]
        billing = self.billing
        if billing is None:
            return Admission(batch, sum(map(len, batch)), limited, 0)
        may_forward = billing.may_forward
        forward = [d for d in batch if may_forward(len(d))]
        return Admission(forward, sum(map(len, forward)), limited, len(batch) - len(forward))

    def delivered(
        self, reserved: int, reserved_bytes: int, sent: int, sent_bytes: int
    ) -> bytes | None:
        """After sending what :meth:`admit` let through (``reserved`` datagrams of
        ``reserved_bytes``): ``sent`` of ``sent_bytes`` reached the backend's socket
        and are billed; the others (a send refused: the backend's port closed, say)
        are not. Returns the usage report now due, if any (:meth:`report`)."""
        billing = self.billing
        if billing is None:
            return None
        billing.delivered(reserved, reserved_bytes, sent, sent_bytes)
        return self.report()

    def replies(self, batch: list[bytes], limit: int) -> Replies:
        """Which of the backend's replies ``batch`` go to the client (docs/udp.md):
        those that fit a datagram of ``limit`` bytes, then the first ones the billing
        allows (:meth:`UdpBilling.replies_allowed`, which reserves their bytes). No
        rate limit holds a reply back (it is charged once sent, :meth:`replied`), so no
        ``now``. The driver sends :attr:`Replies.send` and then calls :meth:`replied`
        once for the batch, whether the send went or raised."""
        fits = [d for d in batch if len(d) <= limit]
        oversized = len(batch) - len(fits)
        billing = self.billing
        if billing is None:
            return Replies(fits, 0, oversized, 0)
        allowed = billing.replies_allowed(list(map(len, fits)))
        unpaid = len(fits) - allowed
        del fits[allowed:]
        return Replies(fits, sum(map(len, fits)), oversized, unpaid)

    def replied(self, replies: Replies, sent: int, sent_bytes: int, now: float) -> bytes | None:
        """After sending what :meth:`replies` let through: the first ``sent`` of
        :attr:`Replies.send` (``sent_bytes``) went to the client (0 when the send
        raised). They are billed and the reservation of all is released; the client's
        byte budget is charged each reply with its frame header, as the client's own
        datagrams are (:meth:`admit`; by payload alone, a backend's empty replies would
        cost the client nothing however many went). ``now`` is ``time.monotonic()``.
        Returns the usage report now due, if any (:meth:`report`; replies alone may
        make one due), as :meth:`delivered` does: one call per batch."""
        limits = self.limits
        if limits is not None and sent:
            went = replies.send if sent == len(replies.send) else replies.send[:sent]
            limits.charge_bytes(sum(map(datagram_charge, map(len, went))), now)
        billing = self.billing
        if billing is None:
            return None
        billing.replied(sent_bytes, replies.reserved)
        return self.report()

    def control_frame(self, body: bytes) -> bytes | None:
        """The answer to a frame from the forwarder: None for a receipt (``R``, kept),
        the final report (``Z``) for its request (``F``). Raises
        :class:`BadControlFrame` for any other frame (a usage report sent back at the
        relay, say), a second ``F``, or too many refused receipts: the driver aborts
        the connection with it, since a relay whose receipts nobody reads can only
        serve on credit and then drop everything as unpaid
        (tests/udp/test_control_stream_abuse.py)."""
        billing = self.billing
        assert billing is not None, "an unbilled relay reads no control stream"
        if body[:1] == b"R":
            keep_receipt(billing, body[1:])
            return None
        if body == b"F":
            self._finals += 1
            check_final(self._finals)
            return control_frame(b"Z", USAGE.pack(*billing.final_totals()))
        raise BadControlFrame(f"unexpected UDP control frame {body[:1]!r}")

    def report(self, force: bool = False) -> bytes | None:
        """The usage report (``U``) due now, if any: every ``report_every`` datagrams or
        half the byte credit (:meth:`UdpBilling.report_due`), or anything new with
        ``force``. None without billing or once the control stream ended."""
        billing = self.billing
        if billing is None or self.control_ended:
            return None
        totals = billing.report_due(self.report_every, force)
        return None if totals is None else control_frame(b"U", USAGE.pack(*totals))

    def paused(self, now: float, last: float) -> bytes | None:
        """The report forced by a pause: traffic (``last``, the latest datagram either
        way) stopped for :attr:`wait` seconds. Reports wait for ``report_every``
        datagrams, and a flow that pauses short of them would otherwise never be billed
        for its last ones, nor get the credit back that the receipt frees."""
        if now - last < self.wait:
            return None
        return self.report(force=True)

    def finish(self, now: float, *, reliable: bool) -> bytes | None:
        """Start the drain (a daemon stopping): from now on nothing is relayed
        (datagrams and replies are dropped, ``dropped_finishing``), and the final usage
        is reported (the frame returned); :meth:`done` then waits for a receipt that
        covers it up to :data:`FINAL_RECEIPT_WAIT` seconds
        (:data:`LOSSY_FINAL_RECEIPT_WAIT` over a lossy carrier, where a round trip
        alone may take that long), never past the idle timeout. Replies lost on the way
        back are never signed for, so a lossy flow's receipt may stay short: the wait
        is bounded. Cut at once instead, the usage since the last report would never be
        billed."""
        if self.finishing:
            return None
        self.finishing = True
        wait = FINAL_RECEIPT_WAIT if reliable else LOSSY_FINAL_RECEIPT_WAIT
        self._finish_by = now + min(self.idle_timeout, wait)
        return self.report(force=True)

    def done(self, now: float, last: float) -> bool:
        """Whether the relay is over: its control stream ended, no datagram passed
        either way since ``last`` for ``idle_timeout`` seconds, or, finishing, a
        receipt covers the final usage (or none came in time, or it is unbilled)."""
        if self.control_ended or now - last >= self.idle_timeout:
            return True
        if not self.finishing:
            return False
        billing = self.billing
        return billing is None or billing.paid_up or now >= self._finish_by

    @property
    def settled(self) -> bool:
        """Whether the relay finished with a receipt covering its final usage (no
        further receipt is worth waiting for on the control stream)."""
        billing = self.billing
        return self.finishing and billing is not None and billing.paid_up


def parse_report(body: bytes) -> tuple[int, int, bool]:
    """A forwarder's reading of a relay's usage report: its totals (datagrams, bytes)
    and whether it is the final one (``Z``, else ``U``). Raises
    :class:`BadControlFrame` for any other frame: the flow is aborted, as serving on,
    the relay billed reports nobody signed until its credit ran out."""
    kind = body[:1]
    if kind not in (b"U", b"Z") or len(body) != 1 + USAGE.size:
        raise BadControlFrame(f"unexpected UDP control frame {kind!r}")
    datagrams, nbytes = USAGE.unpack_from(body, 1)
    return datagrams, nbytes, kind == b"Z"


@dataclass(frozen=True, slots=True)
class ReportAnswer:
    """A forwarder's answer to one usage report of its relay (:meth:`FlowAccount.answer`)."""

    #: The receipt's control frame to send back; None when there is nothing to sign.
    receipt: bytes | None
    #: Whether the report was the final one (``Z``): the flow's end waits for it.
    final: bool
    #: What the receipts covered before this one (for :meth:`FlowAccount.signed`).
    paid_before: int


class FlowAccount:
    """What one forwarded flow sent and received through DTP, and what its client signed
    for: the billing half shared by :class:`UdpForwarder` and
    :class:`dtp.hostid.udp._asyncio.AsyncUdpForwarder` (the caller serializes access)."""

    def __init__(self, meter: Meter | None = None) -> None:
        self.meter = meter
        self.sent_datagrams = 0
        self.sent_bytes = 0
        self.received_bytes = 0
        #: The relay's totals we last signed for: (datagrams, bytes).
        self.billed = (0, 0)
        #: MIST the receipts signed so far cover (the meter's total).
        self.paid = 0
        #: Set once the flow ends (:meth:`final_request`): nothing more is sent on it.
        self.closed = False
        self._warned_unpaid = False

    def final_request(self) -> bytes | None:
        """End the flow: nothing more goes on it (what went after the final report
        would never be paid for), and a metered one asks its relay for the final
        report (the ``F`` frame returned), so that the latest receipt equals the
        relay's count. None when unmetered: there is nothing to ask."""
        self.closed = True
        return None if self.meter is None else control_frame(b"F")

    def affordable(self, nbytes: int) -> bool:
        """Whether the deposit covers this datagram on top of everything sent so far
        (the relay may bill all of it)."""
        meter = self.meter
        if meter is None:
            return True
        total = fee(
            meter.sla,
            self.sent_bytes + self.received_bytes + nbytes,
            self.sent_datagrams + 1,
        )
        return total <= meter.deposit

    def admit(self, batch: list[bytes], limit: int) -> tuple[list[bytes], int, int]:
        """The datagrams of ``batch`` to send (counted as sent from here: the relay may
        bill each), and how many were too large (over ``limit``) or beyond the deposit."""
        out: list[bytes]
        if self.meter is None:
            # unmetered: only the size decides (no deposit to ask per datagram)
            out = [data for data in batch if len(data) <= limit]
            self.sent_datagrams += len(out)
            self.sent_bytes += sum(map(len, out))
            return out, len(batch) - len(out), 0
        out = []
        oversized = unpaid = 0
        for data in batch:
            if len(data) > limit:
                oversized += 1
            elif not self.affordable(len(data)):
                unpaid += 1
            else:
                out.append(data)
                self.sent_datagrams += 1
                self.sent_bytes += len(data)
        if unpaid and not self._warned_unpaid and self.meter is not None:
            # once per flow: a deposit too small for the service (a paid SLA whose
            # min_deposit is 0, say) drops every datagram, and the log says why
            self._warned_unpaid = True
            logger.warning(
                "UDP flow %s: datagrams dropped: the deposit of %d MIST cannot pay for "
                "them (raise the deposit)",
                self.meter.connection_id,
                self.meter.deposit,
            )
        return out, oversized, unpaid

    def take(self, batch: list[bytes], limit: int) -> tuple[list[bytes], int, int]:
        """Deprecated alias of :meth:`admit` (removed in 0.3.0)."""
        warnings.warn(
            "FlowAccount.take is deprecated (removed in 0.3.0): use admit",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.admit(batch, limit)

    def count_send(
        self, out: list[bytes], sent: int | None, oversized: int, unpaid: int
    ) -> dict[str, int]:
        """Count a batch :meth:`admit` split: ``sent`` of its ``out`` left (the rest were
        dropped, the carrier backed up), or None when the connection had ended and
        none did -- then they are dropped (``dropped_no_session``), not sent: a relay's
        final report may not bill them. Returns the counts for the driver's
        :class:`~dtp.hostid.udp._stats.UdpStats` (``stats.add(**counts)``)."""
        if sent is None:
            self.unsent(out)
            return {
                "dropped_no_session": len(out),
                "dropped_oversized": oversized,
                "dropped_unpaid": unpaid,
            }
        if sent < len(out):
            self.unsent(out[sent:])
        return {
            "datagrams_out": sent,
            "bytes_out": sum(map(len, out[:sent])),
            "dropped_oversized": oversized,
            "dropped_unpaid": unpaid,
            "dropped_backlog": len(out) - sent,
        }

    def unsent(self, dropped: list[bytes]) -> None:
        """Uncount datagrams :meth:`admit` gave that the connection then dropped unsent
        (its carrier backed up): they never left, so no relay can bill them, and the
        deposit they were counted against is still there for later ones."""
        self.sent_datagrams -= len(dropped)
        self.sent_bytes -= sum(map(len, dropped))

    def sign(self, datagrams: int, nbytes: int, now_ms: int) -> bytes | None:
        """The control frame carrying a receipt for the relay's reported totals, capped
        by what we sent and received; None when there is nothing new to sign. ``now_ms``
        is the wall clock in milliseconds (the receipt's time)."""
        meter = self.meter
        if meter is None:
            return None
        datagrams = min(datagrams, self.sent_datagrams)
        nbytes = min(nbytes, self.sent_bytes + self.received_bytes)
        d0, b0 = self.billed
        if datagrams < d0 or nbytes < b0:
            logger.info("UDP relay reported less than before: ignored")
            return None
        if (datagrams, nbytes) == self.billed:
            return None
        receipt = meter.record(now_ms, nbytes=nbytes - b0, requests=datagrams - d0)
        receipt = receipt or meter.flush(now_ms)
        self.billed = (datagrams, nbytes)
        if receipt is None:
            return None
        self.paid = receipt.total_amount
        return control_frame(b"R", receipt.encode())

    def answer(self, body: bytes, flow: object, now_ms: int) -> ReportAnswer:
        """What to do with a control frame from the relay (``flow`` names the flow in
        the log; ``now_ms`` is the wall clock in milliseconds): a usage report gets the
        receipt for it (:meth:`sign`), when there is something new to sign and the
        deposit pays for it (else the refusal is logged: the relay's credit, not this
        flow, decides what is served next). Raises
        :class:`BadControlFrame` for a frame the relay never sends
        (:func:`parse_report`)."""
        datagrams, nbytes, final = parse_report(body)
        paid = self.paid
        try:
            frame = self.sign(datagrams, nbytes, now_ms)
        except InsufficientFunds as exc:
            logger.warning("UDP flow from %s: %s", flow, exc)
            frame = None
        return ReportAnswer(frame, final, paid)

    def signed(self, paid_before: int) -> dict[str, int]:
        """The counts of a receipt :meth:`sign` made (and that went out), for the
        driver's :class:`~dtp.hostid.udp._stats.UdpStats` (``stats.add(**counts)``)."""
        return {"receipts_sent": 1, "fees_paid": self.paid - paid_before}


#: How long :meth:`UdpForwarder.close` waits for connects in progress; one that returns
#: later still closes its new connection at once (its thread sees the forwarder closed).
CLOSE_WAIT = 10.0
