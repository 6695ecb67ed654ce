"""UDP through DTP: a local UDP flow's datagrams carried as DTP DATAGRAM frames.

Two halves, both blocking (threads), on :mod:`dtp.socket` connections:

- :func:`relay_udp` — the exposing side. For one accepted DTP connection it forwards each
  DTP datagram to a UDP backend from a UDP socket of its own (so the backend's replies
  come back to it), and each reply back as a DTP datagram, until the connection ends or
  sits idle.
- :class:`UdpForwarder` — the client side. A local UDP socket; each distinct source
  address gets a DTP connection of its own from a ``connect`` function (direct, or by
  host ID), NAT-style, closed after ``idle_timeout``; replies go back to that source.

UDP semantics are kept: nothing is retransmitted and nothing queues without bound;
every drop is counted in :class:`UdpStats`.

**Metering, per datagram** (docs/escrow.md §3 fees): the client pays exactly for what
the relay forwarded — each datagram the relay delivered to the backend is one request
plus its bytes, and each reply the relay sent back counts by its bytes. The relay counts
(:class:`UdpBilling`) and reports its totals on the connection's first stream every few
datagrams; the forwarder checks a report against what it sent and received (a relay
cannot bill more than that), signs a cumulative receipt for it with its
:class:`~dtp.payments.receipts.Meter` and sends it back. Datagrams lost on the way, before the relay
counted them, are never billed. The relay forwards a datagram only while the datagrams no
receipt covers stay below ``credit_datagrams``; others are dropped and counted as unpaid.
On close the forwarder asks for a final report and signs it, so the latest receipt
equals the relay's count.

Control stream (stream 0, both ways): frames of a 4-byte big-endian length and a body
whose first byte is the kind — ``U`` a usage report (u64 datagrams, u64 bytes, big-endian;
relay to forwarder), ``R`` a receipt (``Receipt.encode()``; forwarder to relay), ``F`` a
request for the final report (forwarder to relay), ``Z`` the final report (as ``U``).
A frame either side never sends (too long, an unknown kind, a kind meant for the other
direction) ends the connection at once, its reason in the CLOSE: a peer that breaks the
control protocol can no longer be paid or billed, and serving it on would mean forwarding
its datagrams with nobody reading its receipts.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import socket as _socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from dtp._poll import wait_ready
from dtp.errors import (
    DTPError,
    DTPTimeoutError,
    InsufficientFunds,
    InvalidArgument,
    RemoteProtocolError,
    TunnelError,
)
from dtp.ledger.receipt import RECEIPT_ENCODED_SIZE, Receipt, fee
from dtp.payments.ratelimit import datagram_charge
from dtp.payments.receipts import ConnectionTerms, Meter, check_next_receipt

if TYPE_CHECKING:
    from dtp.aio import DTPStreamWriter
    from dtp.ledger.interface import Ledger
    from dtp.ledger.objects import Sla
    from dtp.payments.ratelimit import ClientBuckets
    from dtp.socket import DTPSocket

__all__ = [
    "DEFAULT_LOSS_ALLOWANCE",
    "MAX_UDP_PAYLOAD",
    "FlowAccount",
    "UdpBilling",
    "UdpForwarder",
    "UdpStats",
    "relay_udp",
]

DEFAULT_LOSS_ALLOWANCE: Final = 0.02
"""A paid UDP server's default ``loss_allowance``: the share of its reply bytes written
off as lost on the way back, which the client never signs for (docs/udp.md)."""

logger = logging.getLogger(__name__)

#: Largest datagram relayed (a UDP payload over IPv4 is at most 65507 bytes; DTP's
#: default ``max_datagram_size`` is lower, 16000, and wins when smaller).
MAX_UDP_PAYLOAD = 65507
_LEN = struct.Struct(">I")
#: :class:`UdpBilling`'s default byte credit per datagram of credit.
_CREDIT_BYTES_PER_DATAGRAM = 16 * 1024


@dataclass
class UdpStats:
    """Counters of one relay or forwarder (all sessions)."""

    #: Datagrams (and bytes) from the UDP side sent into DTP.
    datagrams_out: int = 0
    bytes_out: int = 0
    #: Datagrams (and bytes) from DTP delivered to the UDP side.
    datagrams_in: int = 0
    bytes_in: int = 0
    #: Dropped: too large for a DTP datagram.
    dropped_oversized: int = 0
    #: Dropped: not covered by a receipt (relay) or beyond the deposit (forwarder).
    dropped_unpaid: int = 0
    #: Dropped: the session limit was reached, its connection could not be made or had
    #: ended (forwarder).
    dropped_no_session: int = 0
    #: Dropped: over the client's rate limits, the host firewall's (relay).
    dropped_rate_limited: int = 0
    #: Dropped: the DTP connection's carrier was backed up (more than
    #: ``dtp.protocol.connection.DATAGRAM_SEND_BACKLOG`` unsent): never queued behind it.
    dropped_backlog: int = 0
    #: Dropped: the UDP socket refused the send -- the backend's port is closed (an ICMP
    #: error left by an earlier datagram), unreachable or the buffer full (relay; such
    #: datagrams are not billed), or the same for the local client (forwarder).
    dropped_send_failed: int = 0
    #: Dropped: the relay was finishing (its daemon stopping): its final usage was
    #: reported, and a datagram forwarded after that would go unpaid.
    dropped_finishing: int = 0
    sessions_opened: int = 0
    #: Receipts signed and sent to relays (forwarder), and the MIST they added: the
    #: payments a forwarder made, for its owner's status.
    receipts_sent: int = 0
    fees_paid: int = 0
    sessions_closed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Add to counters atomically (sessions run in threads of their own)."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def snapshot(self) -> dict[str, int]:
        """The counters as a dict."""
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


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
    it for the disk (a :class:`~dtp.payments.receipt_writer.ReceiptWriter`): counted at once, the
    relay served on a receipt a crash could still lose, a receipt interval beyond the
    credit it means to risk (docs/escrow.md §6.1: a receipt is on disk before it counts).
    """

    def __init__(
        self,
        connection_id: str,
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
        self.connection_id = connection_id
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
        self._reported = (0, 0)
        # allowed and not counted yet (a datagram on its way to the backend, replies
        # on their way to the client): the request path and the reply path run in
        # different threads, and each judged what the other was about to send as not
        # there -- together they served past the deposit
        self._pending_datagrams = 0
        self._pending_bytes = 0
        self._lock = threading.Lock()

    @classmethod
    def from_ledger(cls, ledger: Ledger, connection_id: str, **kw: object) -> UdpBilling:
        """The check for a ledger connection (SLA, client key, deposit from the ledger)."""
        terms = ConnectionTerms.from_ledger(ledger, connection_id)
        return cls(connection_id, terms.sla, terms.client_public_key, terms.deposited, **kw)  # type: ignore[arg-type]

    @property
    def owed(self) -> int:
        """The fee of what was forwarded so far."""
        return fee(self.sla, self.bytes, self.datagrams)

    @property
    def paid_up(self) -> bool:
        """Whether the latest receipt covers everything forwarded so far (a relay
        finishing waits for this before it ends)."""
        with self._lock:
            latest = self.latest
            paid = (0, 0) if latest is None else (latest.total_requests, latest.total_bytes)
            return paid[0] >= self.datagrams and paid[1] >= self.bytes

    def receipt(self, encoded: bytes) -> bool:
        """Check and keep a receipt; False (and counted) when it is refused."""
        try:
            receipt = Receipt.decode(encoded)
            with self._lock:
                check_next_receipt(
                    receipt,
                    self.checked,
                    connection_id=self.connection_id,
                    sla=self.sla,
                    public_key=self.client_public_key,
                    deposited=self.deposited,
                )
                self.checked = receipt
                if not self.counts_when_kept:
                    self.latest = receipt
        except DTPError as exc:
            self.refused_receipts += 1
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
        writer that replaced it with a newer one may report either first)."""
        with self._lock:
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
        with self._lock:
            if not self._may_serve(nbytes, 1):
                return False
            self._pending_datagrams += 1
            self._pending_bytes += nbytes
            return True

    def not_forwarded(self, nbytes: int) -> None:
        """A datagram :meth:`may_forward` allowed was not delivered: not billed."""
        with self._lock:
            self._unreserve(nbytes, 1)

    def _unreserve(self, nbytes: int, datagrams: int) -> None:
        self._pending_bytes = max(0, self._pending_bytes - nbytes)
        self._pending_datagrams = max(0, self._pending_datagrams - datagrams)

    def _may_serve(self, nbytes: int, requests: int) -> bool:
        """(lock held) Credit and deposit left for ``nbytes`` and ``requests`` more,
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
        """(lock held) The bytes that may go unreceipted: the credit, and the replies
        written off as lost."""
        return self.credit_bytes + int(self.reply_bytes * self.loss_allowance)

    def replies_allowed(self, sizes: list[int]) -> int:
        """How many of the replies of these sizes (the first ones) may go: each while
        the bytes no receipt covers stay below ``credit_bytes`` and the deposit pays
        for it. Their bytes are reserved until the relays count those sent with
        :meth:`replied` (passing what was reserved)."""
        with self._lock:
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
        with self._lock:
            self._unreserve(nbytes, 1)
            self.datagrams += 1
            self.bytes += nbytes

    def admit(self, nbytes: int) -> bool:
        """Whether a datagram of ``nbytes`` from the client may be forwarded, counting
        it when it may (for a caller whose delivery cannot fail; the relays use
        :meth:`may_forward` and :meth:`forwarded`)."""
        with self._lock:
            if not self._may_serve(nbytes, 1):
                return False
            self.datagrams += 1
            self.bytes += nbytes
            return True

    def replied(self, nbytes: int, reserved: int = 0) -> None:
        """Count replies of ``nbytes`` sent to the client, releasing the ``reserved``
        bytes :meth:`replies_allowed` set aside for them."""
        with self._lock:
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
        with self._lock:
            self._reported = (self.datagrams, self.bytes)
            return self._reported

    def report_due(self, every: int, force: bool = False) -> tuple[int, int] | None:
        """The totals to report when ``every`` datagrams, or half of ``credit_bytes``,
        passed since the last report (or anything changed, with ``force``); None when
        no report is due. (By bytes too: a stream of replies, which are no requests,
        would otherwise run through its byte credit before a report was due.)"""
        with self._lock:
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


def _ended(sock: DTPSocket) -> bool:
    """Whether ``sock``'s connection has ended. Its idle timeout is a DTPTimeoutError
    too, as a read that timed out is, but raised at once by every later read: taken
    for a pause, the loop reading would spin on it."""
    return sock._engine.session.terminated is not None


def _read_exact(sock: DTPSocket, n: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        try:
            data = sock.recv(n - len(chunks))
        except DTPTimeoutError:
            if _ended(sock):
                raise
            # the socket's timeout (a client's is its connect timeout): a pause on the
            # control stream, not its end. Giving up here stopped the receipts for good
            # once traffic paused that long (the relay then dropped all as unpaid).
            continue
        if not data:
            return None
        chunks += data
    return bytes(chunks)


_MAX_CONTROL = 1 + RECEIPT_ENCODED_SIZE


class _BadControlFrame(RemoteProtocolError):
    """The peer sent a control frame no peer of ours sends (raised by the readers of
    the control stream, which then abort the connection with it as the reason)."""


def _check_control_size(size: int) -> None:
    """Raise :class:`_BadControlFrame` for a declared frame length out of bounds: its
    body is never waited for nor buffered."""
    if not 1 <= size <= _MAX_CONTROL:
        raise _BadControlFrame(f"UDP control frame of {size} bytes (1 to {_MAX_CONTROL})")


def _read_control(sock: DTPSocket) -> bytes | None:
    """The next control frame's body, or None at the end of the stream. Raises
    :class:`_BadControlFrame` for a length out of bounds."""
    header = _read_exact(sock, 4)
    if header is None:
        return None
    (size,) = _LEN.unpack(header)
    _check_control_size(size)
    return _read_exact(sock, size)


def _abort_control(sock: DTPSocket | DTPStreamWriter, exc: _BadControlFrame) -> None:
    """End the connection of a peer that broke the control protocol, with the reason
    (a blocking socket's or an asyncio writer's: both abort alike)."""
    logger.info("UDP control stream: %s: closing the connection", exc)
    with contextlib.suppress(DTPError, OSError):
        sock.abort(str(exc))


#: Receipts a relay refuses on one connection before it ends it: one is no fault (a
#: stale one, say), but each costs a verification and a log line, and a client sending
#: nothing else kept a relay's event loop (every service's) busy.
_REFUSED_RECEIPTS_MAX = 8


def _take_receipt(billing: UdpBilling, encoded: bytes) -> None:
    """A relay's receipt from the control stream (:meth:`UdpBilling.receipt`); raises
    :class:`_BadControlFrame` once more than :data:`_REFUSED_RECEIPTS_MAX` were refused."""
    if not billing.receipt(encoded) and billing.refused_receipts > _REFUSED_RECEIPTS_MAX:
        raise _BadControlFrame(f"{billing.refused_receipts} receipts refused")


def _check_final(finals: int) -> None:
    """A client asks for the final report once: answered again and again (5 bytes in,
    21 out, never drained), a client that did not read grew the relay's buffer without
    bound, or held its control thread in a blocked send."""
    if finals > 1:
        raise _BadControlFrame("a second request for the final report")


def _control(kind: bytes, body: bytes = b"") -> bytes:
    return _LEN.pack(1 + len(body)) + kind + body


_USAGE = struct.Struct(">QQ")


class _RelayControl:
    """The relay's end of the control stream: reports out, receipts in."""

    def __init__(self, sock: DTPSocket, billing: UdpBilling, report_every: int) -> None:
        self.sock = sock
        self.billing = billing
        self.report_every = report_every
        self.wlock = threading.Lock()
        #: Set when the control stream ended (its end, an error, a bad frame): the
        #: relay ends with it -- no receipt can come any more.
        self.ended = threading.Event()

    def report(self, force: bool = False) -> None:
        totals = self.billing.report_due(self.report_every, force)
        if totals is not None:
            with self.wlock:
                self.sock.sendall(_control(b"U", _USAGE.pack(*totals)))

    def run(self) -> None:
        finals = 0
        try:
            while (body := _read_control(self.sock)) is not None:
                if body[:1] == b"R":
                    _take_receipt(self.billing, body[1:])
                elif body == b"F":
                    finals += 1
                    _check_final(finals)
                    totals = self.billing.final_totals()
                    with self.wlock:
                        self.sock.sendall(_control(b"Z", _USAGE.pack(*totals)))
                else:
                    # (a usage report, say: the relay's own frame, sent back at it)
                    raise _BadControlFrame(f"unexpected UDP control frame {body[:1]!r}")
        except _BadControlFrame as exc:
            # returning quietly left the relay forwarding with nobody reading the
            # receipts: the client was served on credit, then dropped as unpaid for good
            _abort_control(self.sock, exc)
        except (DTPError, OSError):
            pass
        finally:
            self.ended.set()


def check_seconds(name: str, value: object, *, zero: bool = False) -> None:
    """Refuse a duration that is no number of seconds above 0 (from 0 with ``zero``;
    infinity is "never"), for the forwarders and relays of both APIs: an
    ``idle_timeout`` of 0 or less spun a sweeper, a NaN compares false both ways and no
    flow ever went idle, and a None or a str raised in a thread, task or callback long
    after the start (a sweeper died silently; a relay left its backend socket and
    connection open)."""
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


def relay_udp(
    sock: DTPSocket,
    backend: tuple[str, int],
    *,
    billing: UdpBilling | None = None,
    stats: UdpStats | None = None,
    idle_timeout: float = 60.0,
    report_every: int = 32,
    limits: ClientBuckets | None = None,
) -> UdpStats:
    """Relay one DTP connection's datagrams to ``backend`` and its replies back, until
    the connection ends or no datagram passes for ``idle_timeout`` seconds. Use it as a
    :meth:`dtp.socket.DTPServer.serve_forever` handler (``functools.partial``). With
    ``billing``, usage is reported every ``report_every`` datagrams (and when traffic
    pauses), receipts are read from the connection's first stream and unpaid datagrams
    are dropped. With ``limits`` (the client's firewall buckets, see
    :meth:`dtp.payments.ratelimit.RateLimiter.acquire`), each datagram is a request of its bytes
    and replies count by their bytes (both with their frame headers,
    :func:`dtp.payments.ratelimit.datagram_charge`); datagrams over the rate are dropped and counted
    (``dropped_rate_limited``) before they are billed -- a datagram cannot wait, and
    holding it back would only add delay the application did not ask for. A datagram
    the backend's socket refuses (its port closed, say) is dropped, counted
    (``dropped_send_failed``) and not billed. Returns the counters (``stats`` if given,
    shared). Raises :class:`~dtp.errors.TunnelError` when ``backend`` cannot be used
    as a UDP destination at all (``sock`` is closed then too, as at the end)."""
    stats = stats if stats is not None else UdpStats()
    try:
        # (before the backend socket: a None idle_timeout failed in the relay's loop,
        # its reply thread left running on the socket)
        check_seconds("idle_timeout", idle_timeout)
        check_count("report_every", report_every, 1)
        udp = _backend_socket(backend)
    except BaseException:  # (TunnelError, InvalidArgument, or no (host, port) at all)
        with contextlib.suppress(DTPError, OSError):
            sock.close()
        raise
    done = threading.Event()
    last = [time.monotonic()]
    if billing is not None:
        report_every = billing.report_interval(report_every)
    control = None if billing is None else _RelayControl(sock, billing, report_every)

    limit = sock.max_datagram_size

    def replies() -> None:
        with contextlib.suppress(OSError, DTPError):
            while not done.is_set():
                ready, _ = wait_ready([udp], [], 0.2)
                if not ready:
                    continue
                if _pass_replies(_drain(udp), limit, sock.send_datagrams, stats, billing, limits):
                    last[0] = time.monotonic()
                    if control is not None:
                        control.report()  # (replies alone may make one due)

    threads = [threading.Thread(target=replies, name="dtp-udp-replies", daemon=True)]
    if control is not None:
        threads.append(threading.Thread(target=control.run, name="dtp-udp-control", daemon=True))
    for thread in threads:
        thread.start()
    # short waits while billing, so a pause in traffic flushes the report promptly
    wait = 0.05 if control is not None else min(1.0, idle_timeout)
    try:
        while time.monotonic() - last[0] < idle_timeout:
            if control is not None and control.ended.is_set():
                break  # no receipts any more: the relay ends (docs/udp.md)
            try:
                batch = sock.recv_datagrams(256, wait)
            except TimeoutError:
                if _ended(sock):
                    break  # (its idle timeout)
                if control is not None:
                    control.report(force=True)
                continue
            except DTPError:
                break  # the connection ended
            last[0] = time.monotonic()
            limited = 0
            if limits is not None:
                admitted = limits.admit([len(d) for d in batch], last[0])
                limited = len(batch) - admitted
                del batch[admitted:]
            sent = nbytes = unpaid = failed = 0
            for data in batch:
                if billing is not None and not billing.may_forward(len(data)):
                    unpaid += 1
                    continue
                try:
                    udp.send(data)
                except OSError:
                    # e.g. ECONNREFUSED: an earlier datagram's ICMP error, reported on
                    # this send, which the kernel then discards -- nothing to bill
                    failed += 1
                    if billing is not None:
                        billing.not_forwarded(len(data))
                    continue
                if billing is not None:
                    billing.forwarded(len(data))
                sent += 1
                nbytes += len(data)
            stats.add(
                datagrams_in=sent,
                bytes_in=nbytes,
                dropped_unpaid=unpaid,
                dropped_rate_limited=limited,
                dropped_send_failed=failed,
            )
            if control is not None:
                control.report()
    except (DTPError, OSError) as exc:
        logger.info("UDP relay ended: %s", exc)
    finally:
        done.set()
        # the control stream may still hold the final receipt: let it be read to its
        # end (the peer's close) before closing our side
        for thread in threads:
            thread.join(2)
        with contextlib.suppress(DTPError, OSError):
            sock.close()
        # a control thread still reading (the peer had not closed) ends with the close:
        # returned before it did, the relay left it behind
        for thread in threads:
            thread.join(2)
        udp.close()
    return stats


# -- the client side -----------------------------------------------------------------------


class FlowAccount:
    """What one forwarded flow sent and received through DTP, and what its client signed
    for: the billing half shared by :class:`UdpForwarder` and
    :class:`dtp.udp_aio.AsyncUdpForwarder` (the caller serializes access)."""

    def __init__(self, meter: Meter | None = None) -> None:
        self.meter = meter
        self.sent_datagrams = 0
        self.sent_bytes = 0
        self.received_bytes = 0
        #: The relay's totals we last signed for: (datagrams, bytes).
        self.billed = (0, 0)
        #: MIST the receipts signed so far cover (the meter's total).
        self.paid = 0
        self._warned_unpaid = False

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

    def take(self, batch: list[bytes], limit: int) -> tuple[list[bytes], int, int]:
        """The datagrams of ``batch`` to send (counted as sent from here: the relay may
        bill each), and how many were too large (over ``limit``) or beyond the deposit."""
        out: list[bytes] = []
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
            # min_deposit is 0, say) dropped every datagram, and nothing said so
            self._warned_unpaid = True
            logger.warning(
                "UDP flow %s: datagrams dropped: the deposit of %d MIST cannot pay for "
                "them (raise the deposit)",
                self.meter.connection_id,
                self.meter.deposit,
            )
        return out, oversized, unpaid

    def unsent(self, dropped: list[bytes]) -> None:
        """Uncount datagrams :meth:`take` gave that the connection then dropped unsent
        (its carrier backed up): they never left, so no relay can bill them, and the
        deposit they were counted against is still there for later ones."""
        self.sent_datagrams -= len(dropped)
        self.sent_bytes -= sum(map(len, dropped))

    def sign(self, datagrams: int, nbytes: int) -> bytes | None:
        """The control frame carrying a receipt for the relay's reported totals, capped
        by what we sent and received; None when there is nothing new to sign."""
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
        now = _now_ms()
        receipt = meter.record(now, nbytes=nbytes - b0, requests=datagrams - d0)
        receipt = receipt or meter.flush(now)
        self.billed = (datagrams, nbytes)
        if receipt is None:
            return None
        self.paid = receipt.total_amount
        return _control(b"R", receipt.encode())

    def signed(self, stats: UdpStats, paid_before: int) -> None:
        """Count a receipt :meth:`sign` made (and that went out) in ``stats``."""
        stats.add(receipts_sent=1, fees_paid=self.paid - paid_before)


class _Session(FlowAccount):
    """One source address's DTP connection, and what it owes."""

    def __init__(
        self, source: tuple[str, int], sock: DTPSocket, meter: Meter | None, stats: UdpStats
    ) -> None:
        super().__init__(meter)
        self.source = source
        self.sock = sock
        self.stats = stats  # the forwarder's
        self.last = time.monotonic()
        self.closed = False
        self.lock = threading.Lock()  # counters, meter
        # the control stream's writes, apart: a send held up by a relay that stopped
        # reading stream 0 would otherwise hold `lock` too, and with it every datagram of
        # the forwarder (its loop waits for the lock of each session) and close()
        self.wlock = threading.Lock()
        self.final = threading.Event()

    def read_control(self) -> None:
        """Usage reports in, receipts out, until the stream ends."""
        try:
            self._control_loop()
        except _BadControlFrame as exc:
            _abort_control(self.sock, exc)
        except (DTPError, OSError):
            pass
        self.final.set()

    def _control_loop(self) -> None:
        """(read_control's loop) Raises :class:`_BadControlFrame` for a frame the relay
        never sends."""
        while (body := _read_control(self.sock)) is not None:
            kind = body[:1]
            if kind not in (b"U", b"Z") or len(body) != 1 + _USAGE.size:
                # the flow is aborted (its reply reader ends it): serving on, the
                # relay billed reports nobody signed until its credit ran out
                raise _BadControlFrame(f"unexpected UDP control frame {kind!r}")
            datagrams, nbytes = _USAGE.unpack(body[1:])
            try:
                with self.lock:
                    paid = self.paid
                    frame = self.sign(datagrams, nbytes)
                if frame is not None:
                    # (this thread alone signs: its receipts go out in nonce order)
                    with self.wlock:
                        self.sock.sendall(frame)
                    with self.lock:
                        self.signed(self.stats, paid)
            except InsufficientFunds as exc:
                logger.warning("UDP flow from %s: %s", self.source, exc)
            if kind == b"Z":
                self.final.set()


class _Connecting:
    """A source whose DTP connection is being made; its datagrams wait here."""

    def __init__(self, source: tuple[str, int]) -> None:
        self.source = source
        self.pending: list[bytes] = []
        self.thread: threading.Thread | None = None


#: How long :meth:`UdpForwarder.close` waits for connects in progress; one that returns
#: later still closes its new connection at once (its thread sees the forwarder closed).
_CLOSE_WAIT = 10.0


class UdpForwarder:
    """A local UDP endpoint whose flows go through DTP to a remote UDP service.

    ``connect()`` returns a new DTP connection to the relaying service (e.g. a
    ``functools.partial`` of :func:`dtp.socket.create_connection` with a ``dtp://``
    address). ``meter_for(sock)`` returns the :class:`~dtp.payments.receipts.Meter` of a new
    connection (None: unmetered): the forwarder signs the relay's usage reports with it
    and asks for a final one when a session ends (waiting up to ``final_timeout``).
    Datagrams the deposit cannot cover are dropped (``dropped_unpaid``). Runs in
    threads from construction until :meth:`close`.

    A new source's connection is made in a thread of its own, so a slow or unreachable
    service holds up only that source: up to ``max_pending`` of its datagrams wait for
    the connection, more are dropped (``dropped_no_session``). When ``connect()`` or
    ``meter_for()`` fails (any exception; unexpected ones are logged with their
    traceback) the waiting datagrams are dropped and counted, and that source's next
    attempt waits ``retry_after`` seconds (its datagrams meanwhile dropped and counted):
    each attempt at an unreachable service costs a connect timeout.
    """

    def __init__(
        self,
        listen: tuple[str, int],
        connect: Callable[[], DTPSocket],
        *,
        meter_for: Callable[[DTPSocket], Meter | None] | None = None,
        idle_timeout: float = 30.0,
        max_sessions: int = 256,
        final_timeout: float = 2.0,
        max_pending: int = 256,
        retry_after: float = 1.0,
    ) -> None:
        # before the bind (a None idle_timeout would end the forwarder's thread silently,
        # a float max_pending lose every new source's datagrams uncounted)
        check_seconds("idle_timeout", idle_timeout)
        check_seconds("final_timeout", final_timeout, zero=True)
        check_seconds("retry_after", retry_after, zero=True)
        check_count("max_sessions", max_sessions, 1)
        check_count("max_pending", max_pending, 0)
        self._connect = connect
        self._meter_for = meter_for
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.final_timeout = final_timeout
        self.max_pending = max_pending
        self.retry_after = retry_after
        self.stats = UdpStats()
        self._udp = _bind_udp(listen, blocking=True)
        self.address: tuple[str, int] = self._udp.getsockname()[:2]
        self._sessions: dict[tuple[str, int], _Session] = {}
        self._connecting: dict[tuple[str, int], _Connecting] = {}
        self._retry_at: dict[tuple[str, int], float] = {}
        self._ending: set[threading.Thread] = set()  # idle sessions being ended
        # the reply and control threads of each session, while they run: close() waits for
        # them (they end once its connection is closed), and returned with them still
        # alive
        self._workers: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # set when a close() has finished: a close() called while another is at work
        # waits for it, as AsyncUdpForwarder.close() does (returning at once, it left
        # the port bound and the flows open behind a caller that took them as closed)
        self._close_done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dtp-udp-forwarder", daemon=True)
        self._thread.start()

    @property
    def sessions(self) -> int:
        """Open sessions (source addresses with a DTP connection)."""
        with self._lock:
            return len(self._sessions)

    def _run(self) -> None:
        next_sweep = time.monotonic() + min(1.0, self.idle_timeout)
        while not self._closed.is_set():
            try:
                ready, _ = wait_ready([self._udp], [], 0.2)
                if ready:
                    for source, batch in _drain_by_source(self._udp).items():
                        self._forward(batch, source)
            except OSError:
                if self._closed.is_set():
                    return
            except Exception:
                # this thread reads for every flow: it must outlive any one flow's bug
                logger.exception("UDP forwarder on %s: unexpected error", self.address)
            if time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + min(1.0, self.idle_timeout)

    def _forward(self, batch: list[bytes], source: tuple[str, int]) -> None:
        with self._lock:
            session = self._sessions.get(source)
            if session is None:
                self._hold(batch, source)
                return
        self._send(session, batch)

    def _hold(self, batch: list[bytes], source: tuple[str, int]) -> None:
        """Keep a batch from a source without a session until its connection is made,
        starting the connect if none is in progress (called holding ``_lock``)."""
        connecting = self._connecting.get(source)
        if connecting is None:
            busy = len(self._sessions) + len(self._connecting) >= self.max_sessions
            waiting = self._retry_at.get(source, 0.0) > time.monotonic()
            if busy or waiting or self._closed.is_set():
                self.stats.add(dropped_no_session=len(batch))
                return
            connecting = _Connecting(source)
            self._connecting[source] = connecting
            connecting.thread = threading.Thread(
                target=self._open, args=(connecting,), name="dtp-udp-connect", daemon=True
            )
            connecting.thread.start()
        room = max(0, self.max_pending - len(connecting.pending))
        connecting.pending.extend(batch[:room])
        if len(batch) > room:
            self.stats.add(dropped_no_session=len(batch) - room)

    def _open(self, connecting: _Connecting) -> None:
        """Connect a new source (in a thread of its own), then send what it queued."""
        source = connecting.source
        sock: DTPSocket | None = None
        try:
            sock = self._connect()
            meter = self._meter_for(sock) if self._meter_for is not None else None
        except Exception as exc:
            if isinstance(exc, (DTPError, OSError)):
                logger.warning("UDP flow from %s: cannot reach the service: %s", source, exc)
            else:
                logger.exception("UDP flow from %s: connect() or meter_for() failed", source)
            if sock is not None:
                with contextlib.suppress(DTPError, OSError):
                    sock.close()
            with self._lock:
                del self._connecting[source]
                self._retry_at[source] = time.monotonic() + self.retry_after
                dropped = len(connecting.pending)
            self.stats.add(dropped_no_session=dropped)
            return
        session = _Session(source, sock, meter, self.stats)
        # held until the queued datagrams are sent: later ones from this source wait
        # for them in _send, so the flow keeps its order
        with session.lock:
            with self._lock:
                del self._connecting[source]
                closed = self._closed.is_set()
                if not closed:
                    self._sessions[source] = session
                pending, connecting.pending = connecting.pending, []
            if closed:
                # close() has taken its list of sessions: this one is ours to close
                with contextlib.suppress(DTPError, OSError):
                    sock.close()
                self.stats.add(dropped_no_session=len(pending))
                return
            self.stats.add(sessions_opened=1)
            self._start_worker(functools.partial(self._replies, session), "dtp-udp-session")
            if meter is not None:
                self._start_worker(session.read_control, "dtp-udp-control")
            sent = self._send_locked(session, pending)
        if not sent:
            self._end(session)

    def _start_worker(self, target: Callable[[], None], name: str) -> None:
        """Run ``target`` of a session in a thread :meth:`close` waits for."""

        def run() -> None:
            try:
                target()
            finally:
                with self._lock:
                    self._workers.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._workers.add(thread)
        try:
            thread.start()
        except BaseException:
            # (never started: close() joining it raised RuntimeError)
            with self._lock:
                self._workers.discard(thread)
            raise

    def _send(self, session: _Session, batch: list[bytes]) -> None:
        with session.lock:
            sent = self._send_locked(session, batch)
        if not sent:
            self._end(session)

    def _send_locked(self, session: _Session, batch: list[bytes]) -> bool:
        """Send a batch on a session (holding ``session.lock``); False when its
        connection has ended."""
        if session.closed:
            # ending: its final report was asked for, and what went after it would
            # never be paid for
            self.stats.add(dropped_no_session=len(batch))
            return False
        session.last = time.monotonic()
        out, oversized, unpaid = session.take(batch, session.sock.max_datagram_size)
        sent = 0
        if out:
            try:
                sent = session.sock.send_datagrams(out)
            except DTPError as exc:
                logger.info("UDP flow from %s ended: %s", session.source, exc)
                # none of them left: counted as dropped (they vanished uncounted), and
                # not as sent, which a relay's final report may not bill
                session.unsent(out)
                self.stats.add(
                    dropped_no_session=len(out),
                    dropped_oversized=oversized,
                    dropped_unpaid=unpaid,
                )
                return False
            if sent < len(out):
                session.unsent(out[sent:])
        self.stats.add(
            datagrams_out=sent,
            bytes_out=sum(map(len, out[:sent])),
            dropped_oversized=oversized,
            dropped_unpaid=unpaid,
            dropped_backlog=len(out) - sent,
        )
        return True

    def _replies(self, session: _Session) -> None:
        sock = session.sock
        while not session.closed:
            try:
                batch = sock.recv_datagrams(256, 0.5)
            except TimeoutError:
                if _ended(sock):
                    break  # (its idle timeout)
                continue
            except DTPError:
                break
            session.last = time.monotonic()
            with session.lock:
                session.received_bytes += sum(map(len, batch))
            delivered = nbytes = failed = 0
            for data in batch:
                try:
                    self._udp.sendto(data, session.source)
                except OSError:
                    failed += 1
                    continue
                delivered += 1
                nbytes += len(data)
            self.stats.add(datagrams_in=delivered, bytes_in=nbytes, dropped_send_failed=failed)
        self._end(session)

    def _sweep(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [s for s in self._sessions.values() if now - s.last >= self.idle_timeout]
            for source in [s for s, t in self._retry_at.items() if t <= now]:
                del self._retry_at[source]
        for session in idle:
            # ending waits for the relay's final report (up to final_timeout) and for
            # the close: not in this thread, which forwards every other flow meanwhile
            thread = threading.Thread(
                target=self._end_idle, args=(session,), name="dtp-udp-end", daemon=True
            )
            with self._lock:
                self._ending.add(thread)
            thread.start()

    def _end_idle(self, session: _Session) -> None:
        try:
            self._end(session)
        finally:
            with self._lock:
                self._ending.discard(threading.current_thread())

    def _end(self, session: _Session) -> None:
        self._end_all([session])

    def _end_all(self, sessions: list[_Session]) -> None:
        """End these sessions (those still open), together: each asks its relay for
        the final report and all wait for theirs at once, up to ``final_timeout`` in
        all. One after the other, a close() with many flows to a relay gone quiet took
        ``final_timeout`` per flow (256 flows: over 8 minutes)."""
        with self._lock:
            mine = [s for s in sessions if self._sessions.get(s.source) is s]
            for session in mine:
                del self._sessions[session.source]
        asked: list[_Session] = []
        for session in mine:
            with session.lock:  # (a batch being sent goes out before the final report)
                session.closed = True
            if session.meter is not None:
                # the relay's final count, signed, before the connection goes
                with contextlib.suppress(DTPError, OSError):
                    with session.wlock:
                        session.sock.sendall(_control(b"F"))
                    asked.append(session)
        deadline = time.monotonic() + self.final_timeout
        for session in asked:
            # at most what a thread can wait for: an infinite final_timeout
            # (check_seconds: "never" gives up), or a finite one past TIMEOUT_MAX, made
            # Event.wait raise OverflowError, and close() failed past every session and
            # the local port, all left open
            left = min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX)
            if not session.final.wait(left):
                logger.info("UDP flow from %s: no final report from the relay", session.source)
        for session in mine:
            with contextlib.suppress(DTPError, OSError):
                session.sock.close()
            self.stats.add(sessions_closed=1)

    def close(self) -> None:
        """Stop forwarding; each session settles its final receipt and closes. Connects
        in progress are waited for (up to 10 s) and their connections closed; so are the
        idle sessions still ending, and the threads of every session. A close() called while
        another is at work waits for it."""
        if self._closed.is_set():
            if not self._own_thread():
                self._close_done.wait()
            return
        self._closed.set()
        try:
            self._close()
        finally:
            self._close_done.set()

    def _own_thread(self) -> bool:
        """Whether this is one of the forwarder's threads (a close() from one, e.g. in
        ``connect()``, must not wait for the close() that waits for it)."""
        current = threading.current_thread()
        with self._lock:
            connects = {c.thread for c in self._connecting.values()}
            return current is self._thread or current in (self._workers | self._ending | connects)

    def _close(self) -> None:
        # none of the joins below is of this thread: a close() from connect() (or from
        # any thread of ours) would raise RuntimeError on joining itself, past the
        # sessions and the local port, which would be left open
        current = threading.current_thread()
        if self._thread is not current:
            self._thread.join(5)
        with self._lock:
            # no session is added after this: a connect that returns sees _closed
            sessions = list(self._sessions.values())
            connects = [
                c.thread
                for c in self._connecting.values()
                if c.thread is not None and c.thread is not current
            ]
            # the reader has stopped: no session starts ending after this
            ending = list(self._ending - {current})
        deadline = time.monotonic() + _CLOSE_WAIT
        for thread in connects:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._end_all(sessions)
        for thread in ending:
            thread.join()  # (bounded: final_timeout and the connection's close)
        self._udp.close()
        with self._lock:
            workers = list(self._workers - {current})
        # (each ends once its connection is closed: a read fails at once)
        deadline = time.monotonic() + _CLOSE_WAIT
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> UdpForwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _port_ok(port: object) -> bool:
    return isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 0xFFFF


def _check_listen(listen: tuple[str, int]) -> None:
    """Refuse a local address whose port is out of range before a socket is made for
    it: bind() raises OverflowError (untyped) and the socket would be left open. (The
    same error and words as :func:`dtp.paid.check_address`.) One that is no (host, port)
    tuple with a str host is a TypeError: a None or bytes host would fail on the family
    test with words about something else (``argument of type 'NoneType' is not
    iterable``)."""
    if (
        not isinstance(listen, tuple)
        or not 2 <= len(listen) <= 4  # (an IPv6 one may add flowinfo and scope_id)
        or not isinstance(listen[0], str)
    ):
        raise TypeError(
            f"listen must be a (host, port) tuple such as ('127.0.0.1', 0), got {listen!r}"
        )
    if not _port_ok(listen[1]):
        raise InvalidArgument(f"listen: port {listen[1]!r} is outside 0..65535")


def _bind_udp(listen: tuple[str, int], *, blocking: bool) -> _socket.socket:
    """The forwarders' local UDP socket, bound to ``listen`` (checked first). Closed on
    any failure, not only an OSError: bind() raises TypeError for an address it cannot
    take (a null character in the host, an IPv4 address with flowinfo), and the socket
    would be left to the garbage collector."""
    _check_listen(listen)
    family = _socket.AF_INET6 if ":" in listen[0] else _socket.AF_INET
    udp = _socket.socket(family, _socket.SOCK_DGRAM)
    try:
        udp.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 4 << 20)
        udp.setblocking(blocking)
        udp.bind(listen)
    except BaseException:
        udp.close()
        raise
    return udp


def _check_backend(backend: tuple[str, int]) -> None:
    """:class:`TunnelError` for a backend port out of range, before anything opens
    (connect() raised OverflowError, untyped, past the socket it left open); the same
    for a host that is no str (None failed on the family test, untyped)."""
    if not isinstance(backend, tuple) or len(backend) < 2 or not isinstance(backend[0], str):
        raise TunnelError(f"UDP backend {backend!r}: not a (host, port) tuple")
    if not _port_ok(backend[1]):
        raise TunnelError(f"UDP backend {backend}: port {backend[1]!r} is outside 0..65535")


def _backend_socket(
    backend: tuple[str, int],
    *,
    blocking: bool = True,
    resolved: tuple[int, tuple[object, ...]] | None = None,
) -> _socket.socket:
    """A UDP socket connected to ``backend`` (so only its replies come back), or
    :class:`TunnelError` when the address cannot be a UDP destination (e.g. a broadcast
    address, an unknown host, a port out of range) -- closed first, not left to the
    garbage collector. ``resolved``: ``(family, sockaddr)`` of ``backend`` already
    looked up (by an event loop, which must not wait on a blocking lookup here)."""
    _check_backend(backend)
    if resolved is not None:
        family, address = resolved
    else:
        family = _socket.AF_INET6 if ":" in backend[0] else _socket.AF_INET
        address = backend
    try:
        udp = _socket.socket(family, _socket.SOCK_DGRAM)
    except OSError as exc:
        raise TunnelError(f"UDP backend {backend}: no socket: {exc}") from exc
    try:
        udp.setblocking(blocking)
        udp.connect(address)
    except (OSError, ValueError, TypeError) as exc:
        # (ValueError: UnicodeError of a bad name; TypeError: an address connect()
        # cannot take, such as a null character in the host -- it would escape untyped,
        # past this socket and the relay's connection, both left open)
        udp.close()
        raise TunnelError(f"UDP backend {backend} cannot be used: {exc}") from exc
    except BaseException:
        udp.close()
        raise
    return udp


def _pass_replies(
    batch: list[bytes],
    limit: int,
    send: Callable[[list[bytes]], int],
    stats: UdpStats,
    billing: UdpBilling | None,
    limits: ClientBuckets | None,
) -> bool:
    """Hand the backend's replies ``batch`` to ``send`` (the connection's
    ``send_datagrams``): those that fit a datagram of ``limit`` bytes and that
    ``billing`` allows; then count what went -- stats, the client's byte budget in
    ``limits``, what the billing has replied. Returns whether ``send`` was called (the
    relay is not idle). Both relays' (blocking and asyncio) reply path."""
    fits = [d for d in batch if len(d) <= limit]
    if len(fits) < len(batch):
        stats.add(dropped_oversized=len(batch) - len(fits))
    unpaid = 0
    if billing is not None:
        allowed = billing.replies_allowed(list(map(len, fits)))
        unpaid = len(fits) - allowed
        del fits[allowed:]
    reserved = sum(map(len, fits))
    if not fits:
        stats.add(dropped_unpaid=unpaid)
        return False
    try:
        sent = send(fits)
    except BaseException:
        if billing is not None:
            billing.replied(0, reserved)  # nothing went: the reservation goes
        raise
    nbytes = sum(map(len, fits[:sent]))
    if limits is not None:
        # each with its frame header, as the client's datagrams are charged (admit)
        # and a paid server's sent ones: by payload alone, a backend's empty replies
        # cost the client nothing under a bytes/s limit however many went
        limits.charge_bytes(sum(map(datagram_charge, map(len, fits[:sent]))), time.monotonic())
    stats.add(
        datagrams_out=sent,
        bytes_out=nbytes,
        dropped_backlog=len(fits) - sent,
        dropped_unpaid=unpaid,
    )
    if billing is not None:
        billing.replied(nbytes, reserved)
    return True


def _drain(udp: _socket.socket, limit: int = 256) -> list[bytes]:
    """Every datagram waiting on a ready socket (at most ``limit``; those read before
    an ICMP error when the readiness was one, e.g. the backend's port is closed or its
    host unreachable)."""
    out: list[bytes] = []
    try:
        while len(out) < limit:
            out.append(udp.recv(MAX_UDP_PAYLOAD, _socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        pass
    except OSError as exc:
        # the kernel reports an earlier datagram's ICMP error once, on this read, and
        # clears it: ECONNREFUSED, but also EHOSTUNREACH, ENETUNREACH... (a backend on
        # another host gone away). Raised, it would end the blocking relay's reply
        # thread for good -- requests still forwarded and billed, no reply ever back --
        # and the replies read before it would be lost uncounted
        logger.debug("UDP backend %s: %s", _peer_name(udp), exc)
    return out


def _peer_name(udp: _socket.socket) -> object:
    """The backend a relay's socket is connected to, for a log line."""
    try:
        return udp.getpeername()
    except OSError:
        return "?"


def _drain_by_source(udp: _socket.socket, limit: int = 256) -> dict[tuple[str, int], list[bytes]]:
    """Every datagram waiting on a ready socket (at most ``limit``), grouped by source
    address in arrival order: each flow's burst is then sealed and sent together."""
    flows: dict[tuple[str, int], list[bytes]] = {}
    with contextlib.suppress(BlockingIOError, InterruptedError):
        for _ in range(limit):
            data, source = udp.recvfrom(MAX_UDP_PAYLOAD, _socket.MSG_DONTWAIT)
            flows.setdefault((source[0], source[1]), []).append(data)
    return flows


def _now_ms() -> int:
    return int(time.time() * 1000)
