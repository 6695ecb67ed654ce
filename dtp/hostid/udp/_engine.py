"""UDP through DTP, the rules both drivers pump (docs/udp.md), sans-I/O (callers pass
``now`` and the facts): the relay's and the forwarder's billing (:class:`UdpBilling`,
:class:`FlowAccount`), the control stream's codec (:class:`ControlDecoder`,
:func:`control_frame`) and the relay's rules (:class:`RelayEngine`)."""

from __future__ import annotations

import functools
import logging
import math
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dtp.errors import (
    DTPError,
    InsufficientFunds,
    InvalidArgument,
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

    ``credit_datagrams``: datagrams served ahead of the receipts covering them (the
    relay's risk, and the slack a fast stream needs for the reports' round trip).
    ``credit_bytes`` (default ``credit_datagrams`` x 16 KiB): the same for the bytes both
    ways, for a receipt pays for requests and bytes apart and a client that signed for
    datagrams but no bytes was served without bound. ``on_receipt`` sees every accepted
    receipt (e.g. ``ReceiptStore.keep``).

    ``loss_allowance``: the share of the reply bytes written off as lost on the way back:
    the forwarder signs only for what it received, and without it a lossy flow's
    credit would run out for good.

    ``counts_when_kept``: a receipt counts only once passed to :meth:`kept` (on disk:
    docs/escrow.md §6.1), for an ``on_receipt`` that only queues it (a
    :class:`~dtp.payments._receipt_writer.ReceiptWriter`).

    Lock-free: one relay uses it at a time. ``kept`` may come from another thread: the
    blocking relay sets :attr:`run_kept` to count under its lock; the asyncio relay's
    caller calls it on the loop.
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
        #: How :meth:`kept` runs its count where no other call overlaps it (None: at once)
        self.run_kept: Callable[[Callable[[], None]], None] | None = None
        self._reported = (0, 0)
        # allowed and not counted yet: the request and reply paths run apart, and each
        # must count what the other is about to send, or together they pass the deposit
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
        """Count a receipt :meth:`receipt` accepted, now kept durably; an older one than
        the newest counted changes nothing (a writer may report either first)."""
        run = self.run_kept
        if run is None:
            self._count_kept(receipt)
        else:
            run(functools.partial(self._count_kept, receipt))

    def _count_kept(self, receipt: Receipt) -> None:
        if self.latest is None or receipt.nonce > self.latest.nonce:
            self.latest = receipt

    def may_forward(self, nbytes: int = 0) -> bool:
        """Whether a datagram of ``nbytes`` may go: the receipts leave credit for it and
        the deposit pays for it. True reserves it until :meth:`forwarded` counts what
        the backend's socket took (a failed send is not billed), so that replies allowed
        meanwhile leave room for it."""
        if not self._may_serve(nbytes, 1):
            return False
        self._pending_datagrams += 1
        self._pending_bytes += nbytes
        return True

    def not_forwarded(self, nbytes: int) -> None:
        """A datagram :meth:`may_forward` allowed was not delivered: not billed."""
        self.delivered(1, nbytes, 0, 0)

    def delivered(self, reserved: int, reserved_bytes: int, sent: int, sent_bytes: int) -> None:
        """Bill the ``sent`` of a batch :meth:`may_forward` allowed and release the
        reservation of all ``reserved``."""
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
        """How many of the first replies may go within ``credit_bytes`` and the
        deposit; reserved until :meth:`replied`."""
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
        """``every`` (datagrams between usage reports), at most half the credit: the
        receipts must come back before the credit is used up."""
        return max(1, min(every, self.credit_datagrams // 2))

    def final_totals(self) -> tuple[int, int]:
        """The totals now, reported as final."""
        self._reported = (self.datagrams, self.bytes)
        return self._reported

    def report_due(self, every: int, force: bool = False) -> tuple[int, int] | None:
        """The totals to report after ``every`` datagrams or half of ``credit_bytes``
        (by bytes too: replies are no requests), or any change with ``force``; else None."""
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


#: Receipts a relay refuses on one connection before it ends it: each costs a
#: verification, and a client sending nothing else kept a relay's loop busy.
_REFUSED_RECEIPTS_MAX = 8


def keep_receipt(billing: UdpBilling, encoded: bytes) -> None:
    """A relay's receipt from the control stream (:meth:`UdpBilling.receipt`);
    :class:`BadControlFrame` past :data:`_REFUSED_RECEIPTS_MAX` refused, or at once for
    a format version this relay does not speak (none of them could ever pay)."""
    if billing.receipt(encoded):
        return
    if isinstance(billing.last_refusal, UnsupportedReceiptVersion):
        raise BadControlFrame(str(billing.last_refusal))
    if billing.refused_receipts > _REFUSED_RECEIPTS_MAX:
        raise BadControlFrame(f"{billing.refused_receipts} receipts refused")


def check_final(finals: int) -> None:
    """A client asks for the final report once: answered again and again, an unread
    reply grew the relay's buffer without bound."""
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
    """The control stream's frames from its bytes, whatever their split; a length out
    of bounds raises :class:`BadControlFrame` at its header, the body never buffered."""

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


def check_seconds(name: str, value: object, *, zero: bool = False) -> None:
    """Refuse a duration that is no number of seconds above 0 (from 0 with ``zero``;
    infinity is "never"), NaN included: else it fails in a thread or task long after
    the start."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        low = "from 0" if zero else "above 0"
        raise InvalidArgument(f"{name} must be a number of seconds {low}, got {value!r}")


def check_count(name: str, value: object, least: int) -> None:
    """Refuse a count that is no int of at least ``least`` (a float ``max_pending``
    raised in the socket's reader for every new source, its datagrams lost uncounted;
    True passed as 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidArgument(f"{name} must be an int of at least {least}, got {value!r}")


class RelayEngine:
    """The rules of one relayed flow for :func:`dtp.hostid.udp._blocking.relay_udp` and
    :func:`dtp.hostid.udp._asyncio.relay_udp_async` (docs/udp.md): the drivers pass
    ``now`` and what happened, one call before and one after each batch, and send the
    control frames it returns."""

    def __init__(
        self,
        billing: UdpBilling | None,
        *,
        idle_timeout: float,
        report_every: int,
        limits: ClientBuckets | None = None,
    ) -> None:
        # (made before the driver's backend socket: a bad argument leaves nothing open,
        # tests/udp/test_arguments.py)
        check_seconds("idle_timeout", idle_timeout)
        check_count("report_every", report_every, 1)
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
        """Which of ``batch`` go to the backend: the rate limits first (one over them is
        dropped unbilled: waiting only adds delay), then :meth:`UdpBilling.may_forward`.
        The driver sends :attr:`Admission.forward`, then calls :meth:`delivered`."""
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
        """``sent`` of what :meth:`admit` let through reached the backend and are billed,
        the others not: the usage report now due, if any."""
        billing = self.billing
        if billing is None:
            return None
        billing.delivered(reserved, reserved_bytes, sent, sent_bytes)
        return self.report()

    def replies(self, batch: list[bytes], limit: int) -> Replies:
        """Which of ``batch`` go to the client: those that fit ``limit``, then the first
        ones :meth:`UdpBilling.replies_allowed` allows (charged to the rate limits once
        sent). The driver sends :attr:`Replies.send`, then calls :meth:`replied`."""
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
        """The first ``sent`` of :attr:`Replies.send` went (0 when the send raised):
        billed, and charged to the byte budget with their frame headers (else empty
        replies cost nothing); the usage report now due, if any."""
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
        """The answer to a frame from the forwarder: None for a receipt (``R``), the
        final report (``Z``) for ``F``. :class:`BadControlFrame` (the driver aborts) for
        any other, a second ``F`` or too many refused receipts
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
        """The usage report (``U``) due now (:meth:`UdpBilling.report_due`), if any."""
        billing = self.billing
        if billing is None or self.control_ended:
            return None
        totals = billing.report_due(self.report_every, force)
        return None if totals is None else control_frame(b"U", USAGE.pack(*totals))

    def paused(self, now: float, last: float) -> bytes | None:
        """The report forced when traffic stopped (since ``last``) for :attr:`wait`
        seconds: else a flow pausing short of ``report_every`` is never billed for its
        last datagrams."""
        if now - last < self.wait:
            return None
        return self.report(force=True)

    def finish(self, now: float, *, reliable: bool) -> bytes | None:
        """Start the drain: nothing more is relayed (``dropped_finishing``) and the final
        usage is reported (the frame returned); :meth:`done` waits for its receipt up to
        :data:`FINAL_RECEIPT_WAIT` (:data:`LOSSY_FINAL_RECEIPT_WAIT` over a lossy
        carrier, whose receipt may stay short), so the last usage is billed."""
        if self.finishing:
            return None
        self.finishing = True
        wait = FINAL_RECEIPT_WAIT if reliable else LOSSY_FINAL_RECEIPT_WAIT
        self._finish_by = now + min(self.idle_timeout, wait)
        return self.report(force=True)

    def done(self, now: float, last: float) -> bool:
        """Whether the relay is over: its control stream ended, idle for
        ``idle_timeout``, or, finishing, the final receipt came (or will not)."""
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
    """A relay's usage report: its totals (datagrams, bytes) and whether it is the
    final one (``Z``); :class:`BadControlFrame` (the flow aborted) for any other frame."""
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
        """End the flow (what went after the final report would never be paid for):
        the ``F`` frame that asks for the final report, None when unmetered."""
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
            # unmetered: only the size decides (no deposit to ask per datagram); a run
            # that all fits, the usual, is taken as it is
            if batch and max(map(len, batch)) <= limit:
                out = batch[:]
            else:
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
        """Count a batch :meth:`admit` split: ``sent`` of its ``out`` left (None: the
        connection had ended, all ``dropped_no_session``). The counts for
        ``stats.add(**counts)``."""
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
        """Uncount datagrams the connection dropped unsent: no relay can bill them."""
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
        """A control frame from the relay: a usage report gets its receipt
        (:meth:`sign`) when the deposit pays for it, else the refusal is logged (the
        relay's credit decides what is served next); :class:`BadControlFrame` for a frame
        the relay never sends."""
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
