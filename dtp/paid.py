"""Serving a paid DTP service on a host, with blocking sockets (docs/escrow.md §6.1).

    server = dtp.socket.serve(host_id, 7000, handler, ledger=ledger, identity=host_key,
                              receipts="receipts.db")
    ...
    server.close()

:class:`PaidServer` publishes its endpoint and Noise key in the Host, claims whatever
receipts a previous run left unclaimed, and admits a client only through
:class:`~dtp.admission.LedgerAdmission`. Each handler gets a :class:`PaidSocket`: the
connection's first stream, which before every read and write

- checks the client's receipts (:class:`~dtp.payments.metering.ReceiptGate`): when the usage no
  receipt covers exceeds the allowance it stops reading and writing — the client's sends
  then block on flow control — asks for a receipt, resumes when one arrives, and closes
  the connection with :data:`~dtp.payments.metering.CLOSE_PAYMENT_REQUIRED` if none comes within
  the pause timeout. When it is the escrow's deposit that holds the connection (or a
  receipt comes above it), the escrow is read again, at most once a second: a client
  that topped it up while connected is served on;
- applies the host's per-client rate limits by waiting (back-pressure, never drops).

The Host is re-read every ``refresh_interval``: new limits apply to open connections,
and a client the firewall now denies is closed with
:data:`~dtp.payments.metering.CLOSE_FIREWALL_DENIED`. When a connection ends (either side closed,
or the client vanished), the server claims its latest receipt and the client is refunded
the rest (:func:`~dtp.payments.settlement.claim_and_settle`).

The Host's connection limits (``max_connections_per_client``, a service's
``max_connections``) are counted over the connections being served
(:mod:`dtp.served`): one counts until it ends, not until its settlement is done, and a
client refused at a limit has its ledger connection settled at once, its deposit
refunded whole (docs/escrow.md §2).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dtp._session import CALLBACK_FAILED
from dtp.admission import Admitted, ConnectionLimits, LedgerAdmission, checked_open_grace
from dtp.errors import (
    ChainError,
    DTPError,
    DTPTimeoutError,
    InvalidArgument,
    LocalProtocolError,
    MalformedReceipt,
    PaymentRequired,
    ReceiptStoreError,
    move_error,
)
from dtp.handshake_slots import (
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
)
from dtp.ledger.objects import Escrow, Settlement, TransportControl, normalize_id
from dtp.ledger.receipt import Receipt
from dtp.payments.metering import (
    CLOSE_FIREWALL_DENIED,
    CLOSE_LEDGER_CLOSED,
    CLOSE_PAYMENT_REQUIRED,
    RECEIPT_REQUEST,
    ConnectionIds,
    GateState,
    GateVerdict,
    MeteringConfig,
    ReceiptGate,
    ended_on_ledger,
    ledger_checks_due,
)
from dtp.payments.ratelimit import ClientBuckets, HostPolicy, RateLimiter, datagram_charge
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipt_writer import ReceiptWriter
from dtp.payments.settlement import (
    ClaimBackoff,
    claim_and_settle,
    claimed,
    collect_refund,
    publish_endpoint,
    recover_unclaimed,
)
from dtp.protocol.connection import CloseCode
from dtp.served import ServedConnections
from dtp.socket import (
    _SSIZE_MAX,
    _checked_flags,
    _checked_size,
    _checked_timeout,
    recv_into_target,
    stream_file,
)

if TYPE_CHECKING:
    from dtp.admission import PeerInfo
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.protocol.connection import ConnectionConfig
    from dtp.socket import DTPServer, DTPSocket

__all__ = [
    "MeteringConfig",
    "PaidServer",
    "PaidSocket",
    "ServicePolicy",
    "SettlementRetries",
    "collect_refund",
    "gate_for",
]

logger = logging.getLogger(__name__)

_SEND_SLICE = 256 * 1024  # sendall pieces: the gate and the rate limit act between them
_CREDIT_MAX = 4 << 20  # the gate is looked at again after at most this many bytes ...
_CALL_COST = 64 << 10  # ... each read or write counted as at least this many


@dataclass(frozen=True)
class ServicePolicy:
    """A paid server's own settings (the SLA and the firewall are on the ledger)."""

    allowance: int | None = None
    """MIST of usage served on credit before pausing; None: the SLA's ``min_deposit``
    (the server never serves more on credit than the minimum escrow guarantees)."""
    pause_timeout: float = 10.0
    """Seconds a paused connection waits for a covering receipt before it is closed."""
    refresh_interval: float = 2.0
    """Seconds between reads of the Host (limits and deny list reach open connections
    within this delay)."""
    request_interval: float = 0.2
    """Seconds between receipt requests while paused."""
    final_receipt_timeout: float = 1.0
    """When the handler ends a connection the client has not closed: how long to ask
    for a receipt covering everything before closing (the client pays at its own close
    otherwise, but a server that closes first would never see that one)."""
    ledger_check_interval: float = 30.0
    """Seconds between reads of each open connection's state on the ledger (at the
    Host's refreshes, so no more often than ``refresh_interval``): one its client closed
    there while still served is closed (``CLOSE_LEDGER_CLOSED``) and settled at once.
    Claims come only at the end of a connection, and once ``HALF_CLOSE_TIMEOUT_MS``
    (10 minutes) had passed since that half-close, the client could settle first and
    take the whole escrow back, the usage served meanwhile unpaid: keep this well
    below it."""

    def __post_init__(self) -> None:
        # Checked here, not where the values are used: a server takes its policy only
        # after it listens and has published its endpoint, and a bad value found there
        # would leave both behind.
        allowance = self.allowance
        if allowance is not None and (
            not isinstance(allowance, int)
            or isinstance(allowance, bool)
            or not 0 <= allowance < 2**64
        ):
            raise InvalidArgument(
                f"ServicePolicy.allowance must be None or an integer from 0 to 2**64-1 "
                f"(MIST), got {allowance!r}"
            )
        _seconds("pause_timeout", self.pause_timeout, zero=True)
        _seconds("refresh_interval", self.refresh_interval, zero=False)
        _seconds("request_interval", self.request_interval, zero=False)
        _seconds("final_receipt_timeout", self.final_receipt_timeout, zero=True)
        _seconds("ledger_check_interval", self.ledger_check_interval, zero=False)


def _seconds(name: str, value: object, *, zero: bool) -> None:
    """Refuse a ServicePolicy duration that is not a number of seconds above 0 (or at
    least 0 with ``zero``) and within what a thread can wait for: a NaN compares false
    both ways and would slip past a plain range check, an interval of 0 makes a loop
    that never waits, and a wait beyond threading.TIMEOUT_MAX raises OverflowError in
    the thread that waits, long after the server started."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 <= value <= threading.TIMEOUT_MAX
        or (value == 0 and not zero)
    ):
        low = "from 0" if zero else "above 0 and"
        raise InvalidArgument(
            f"ServicePolicy.{name} must be a number of seconds {low} up to "
            f"{threading.TIMEOUT_MAX:.0f}, got {value!r}"
        )


def gate_for(
    ledger: Ledger,
    connection_id: str,
    policy: ServicePolicy,
    store: ReceiptStore | None = None,
    *,
    admitted: Admitted | None = None,
) -> ReceiptGate:
    """A :class:`ReceiptGate` for an admitted connection, from its ledger objects: the
    escrow's key, deposit, claims and nonce. ``admitted``: the connection and escrow as
    admission just read them (:meth:`~dtp.admission.LedgerAdmission.take_admitted`), so
    that they are not read again. The client's spending cap is not read: the deposit was
    reserved on it at the open, so every receipt up to the deposit can be claimed
    (docs/escrow.md §4)."""
    if admitted is not None and admitted[0].id == normalize_id(connection_id, "connection ID"):
        # what the gate takes from them cannot have moved against the server since:
        # key and SLA are fixed, the deposit only grows, claims are the server's own
        tc, escrow = admitted[0], admitted[1]
    else:
        tc = ledger.get_connection(connection_id)
        escrow = ledger.get_escrow(tc.escrow)
    gate = ReceiptGate(
        connection_id=tc.id,
        client_public_key=escrow.client_public_key,
        sla=tc.sla,
        deposited=escrow.deposited,
        claimed=escrow.claimed,
        latest_nonce=escrow.latest_nonce,
        allowance=policy.allowance,
        pause_timeout_ms=int(policy.pause_timeout * 1000),
        store=store,
    )
    gate.escrow_id = escrow.id  # read again should the client top it up while served
    return gate


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


def _stored(receipt: Receipt) -> None:
    """A receipt nothing waits on is stored."""


def settle_ended(
    ledger: Ledger,
    identity: HostIdentity,
    connection_id: str,
    writer: ReceiptWriter,
    final: Receipt | None,
    *,
    escrow: Escrow | None = None,
    connection: TransportControl | None = None,
) -> Settlement | None:
    """A paid server's settlement of a connection that ended (:func:`claim_and_settle`;
    ``escrow`` and ``connection`` as the server read them, if it did). The claim is made
    from the receipt writer: its last receipt may still be on its way to the disk (the
    claim on the ledger does not wait for the fsync; the writer marks the claim in the
    store once the receipt is written). ``final``, the receipt the client's CLOSE came
    with, is handed to the writer should the settlement not claim it, kept for a later
    claim (the server's :class:`SettlementRetries`, to which it hands a settlement that
    returned None; recover_unclaimed at the next start). A ChainError, or a
    ReceiptStoreError (the store unreadable and no final receipt), is logged: None; so is
    anything else (a bug, a ledger error that is not a ChainError), with its traceback:
    the server's release of the connection -- its socket, its place in the limits, its
    cap share -- goes on after it, and the receipt stays for the retry. A claimed mark the
    writer cannot take (closed meanwhile) is logged, and the settlement made returned
    all the same (:func:`claim_and_settle`)."""
    settlement = None
    try:
        settlement = claim_and_settle(
            ledger,
            identity,
            connection_id,
            writer,
            escrow=escrow,
            connection=connection,
            final=final,
        )
    except (ChainError, ReceiptStoreError) as exc:
        # (a ReceiptStoreError: no final receipt, and its latest could not be read) it
        # stays for the server's retry (or the next start), which reads the store again
        logger.warning("could not settle connection %s: %s", connection_id, exc)
    except Exception:
        logger.exception("settling connection %s failed", connection_id)
    finally:
        if final is not None and not claimed(settlement, final):
            _keep_final(writer, final)
    return settlement


def _keep_final(writer: ReceiptWriter, final: Receipt) -> None:
    """Keep a final receipt the settlement did not claim, for a later claim: through the
    writer, or -- the writer closed meanwhile (a server stopped before this settlement
    ended) -- straight in its store; failing that, it is logged whole, for an operator
    to claim by hand (the RuntimeError from the closed writer would lose it silently)."""
    try:
        writer.submit(final, _stored)
        return
    except RuntimeError:
        pass
    try:
        writer.store.keep(final)
    except Exception as exc:
        logger.error(
            "final receipt of connection %s not stored (%s); receipt: %s",
            final.connection_id,
            exc,
            final.encode().hex(),
        )


#: The refusal (or abort reason) a client admitted as its server closes gets
CLOSED_REFUSAL = "the server is closed"


class _PaidAdmission(LedgerAdmission):
    """A :class:`PaidServer`'s admission: each decision counts as work its release waits
    for, and a client admitted as the server closes is refused and settled at once (its
    ledger connection closed, nothing claimed: its whole deposit refunded) rather than
    left Open until the half-close timeout."""

    def __init__(
        self,
        server: PaidServer,
        ledger: Ledger,
        host_id: str,
        port: int,
        open_grace: float | None = None,
    ) -> None:
        super().__init__(ledger, host_id, port, remember=True, open_grace=open_grace)
        self._server = server
        #: The DTPServer's served connections (dtp.served.served_connections takes them):
        #: they tell the paid server of every DTP connection it admitted ending
        self.served = _AdmittedIds(server)

    def __call__(self, peer: PeerInfo) -> str | None:
        return self._server._admit(peer, super().__call__)


class _AdmittedIds(ServedConnections):
    """The ledger connections of the DTP connections a :class:`PaidServer` admitted
    (reserved after its admission, released as the engine goes), reported to it: one the
    server never served -- its handshake finished as the server closed, and the
    DTPServer or :meth:`PaidServer._handle` aborted it -- is settled then."""

    def __init__(self, server: PaidServer) -> None:
        super().__init__()
        self._server = server

    def reserve(
        self,
        connection_id: str,
        client: str | None = None,
        limits: ConnectionLimits | None = None,
    ) -> str | None:
        refusal = super().reserve(connection_id, client, limits)
        self._server._reserved(connection_id, refusal is None)
        return refusal

    def release(self, connection_id: str) -> None:
        super().release(connection_id)
        self._server._unreserved(connection_id)

    def refused_at_limit(self, connection_id: str) -> None:
        self._server._refused_at_limit(connection_id)


class _PaidConnection:
    """The server's state of one paid connection (shared by its streams)."""

    def __init__(
        self,
        sock: DTPSocket,
        gate: ReceiptGate,
        buckets: ClientBuckets,
        limit_lock: threading.Lock,
        policy: ServicePolicy,
        writer: ReceiptWriter,
        ledger: Ledger | None = None,
    ) -> None:
        self.sock = sock
        self.receipt_writer = writer
        #: Where the escrow is read again when the deposit holds the connection (a
        #: top-up while it is open); None: never
        self.ledger = ledger
        # the engine is the connection's I/O driver; the paid layer waits on it while
        # paused, as the socket's own calls do
        self.engine = sock._engine
        self.client = sock.peer_address or ""
        self.connection_id = sock.peer_connection_id or ""
        self.gate = gate
        self.buckets = buckets
        self.limit_lock = limit_lock
        self.policy = policy
        self.receipts = 0
        #: When (monotonic) the connection's state on the ledger is read next
        self.ledger_check_due = time.monotonic() + policy.ledger_check_interval
        # Bytes that may still move before the gate is asked again: what it allowed at
        # its last look (at most _CREDIT_MAX), less every read and write since, each also
        # counted as _CALL_COST at least (what a handler moves around the PaidSocket is
        # then looked at within _CREDIT_MAX / _CALL_COST calls all the same)
        self._credit = 0
        # Writes have a credit of their own. The connection's streams may be driven from
        # several threads at once: a write takes its bytes from it before it sends
        # (reserve), and until they are in the usage (sent) they count as _sending, which
        # a look at the gate meanwhile deducts, with the bytes queued beyond the client's
        # window (the usage counts a byte once sent). Checked after and counted after,
        # each of N writers took the whole credit (a client paying nothing got N times
        # the allowance). Reads keep the plain credit: what they take is in the usage
        # already, and one waiting for writes that wait for the client to read could
        # wait for good.
        self._send_credit = 0
        self._cond = threading.Condition(threading.Lock())
        self._sending = 0
        self._waiters = 0
        # when a paused call last asked the client for a receipt (monotonic)
        self._asked_at = -math.inf
        # when the pause of a datagram send its timeout ended began (see _look)
        self._whole_paused_at: float | None = None
        #: The receipt that came with the end of the connection (the client's final one,
        #: in the read that brought its CLOSE): nothing is served on it any more, so it is
        #: not written first but claimed by the settlement at once, whose claim on the
        #: ledger is its durable copy; written only should the settlement not claim it
        self.final: Receipt | None = None

    def on_receipt(self, data: bytes) -> None:
        """A RECEIPT frame from the client (engine lock held): check it here, store it
        in the writer thread, count it once stored."""
        try:
            receipt = self.gate.check(data)
        except ChainError as exc:  # InvalidReceipt, SpendingCapExceeded
            # a violation closes the connection at the next look
            self._credit = self._send_credit = 0
            logger.warning("connection %s: %s", self.connection_id, exc)
            return
        if self.engine.conn.closed:
            self.final = receipt
            return
        self.receipt_writer.submit(receipt, self._kept)

    def _kept(self, receipt: Receipt) -> None:
        """The receipt is on disk (writer thread): count it, and wake a paused waiter."""
        self.gate.kept(receipt)
        self.receipts += 1
        self.engine._wake()

    def verdict(self, whole: int = 0) -> GateVerdict:
        """The gate's verdict on the usage, plus ``whole`` bytes about to go (see
        :meth:`reserve_datagrams`)."""
        total_bytes, total_requests = self.engine.conn.usage
        return self.gate.verdict(_now_ms(), total_bytes + whole, total_requests)

    def wait_paid(
        self,
        sock: DTPSocket | None = None,
        timeout: float | Literal["socket"] | None = "socket",
    ) -> None:
        """Return when the receipts cover the usage (within the allowance); while they
        do not, neither read nor write (so no flow-control credit goes back) and ask the
        client for a receipt. Raises PaymentRequired after closing the connection when
        none comes within the pause timeout.

        ``sock``: the socket whose call waits, and ``timeout`` the call's own
        (``"socket"``: ``sock``'s, as for recv; a number or None: recv_datagram's): a
        pause is waited out within it, then raises as the unpaid call would when nothing
        comes (:meth:`_look`). The gate's pause clock goes on across such calls:
        the connection closes once paused ``pause_timeout``, at the next call that looks."""
        if self._credit > 0:
            return  # within what the gate allowed at its last look
        self._look(False, 0, sock, timeout)

    def wait_send(self, sock: DTPSocket) -> None:
        """:meth:`wait_paid` for a write on ``sock`` (then :meth:`reserve`). Waiting for
        queued bytes to go is waiting for the client to read, as a plain send waits:
        within ``sock``'s timeout (DTPTimeoutError; BlockingIOError if non-blocking),
        and so is a pause for payment."""
        if self._send_credit > 0:
            return
        start = time.monotonic()
        while not self._look(True, 0, sock, "socket", start):
            timeout = sock.gettimeout()
            if timeout == 0:
                raise BlockingIOError(errno.EAGAIN, "operation would block")
            if timeout is not None and time.monotonic() - start >= timeout:
                raise DTPTimeoutError("timed out")

    def _look(
        self,
        writing: bool,
        whole: int = 0,
        sock: DTPSocket | None = None,
        timeout: float | Literal["socket"] | None = "socket",
        began: float | None = None,
    ) -> bool:
        """One look at the gate for :meth:`wait_paid` (:meth:`wait_send` if
        ``writing``): False when the credit it allows is all held by writes under way or
        queued (after waiting a little for some of them to go), so that the writer looks
        again. ``whole``: bytes of a write that cannot go in part (a datagram), judged
        as if in the usage already: paused until the credit covers all of them.
        ``sock``, ``timeout``: the call's timeout, which a pause is waited out within
        (:meth:`wait_paid`; None ``sock``: until the pause ends), counted from ``began``
        (the call's start; by default the pause's), then BlockingIOError (the socket's
        timeout 0) or DTPTimeoutError, as the unpaid call raises when nothing comes."""
        total_bytes, total_requests = self.engine.conn.usage
        gate = self.gate
        if gate.serving(total_bytes + whole, total_requests):
            # served again: a pause that comes later is a new one (kept, a datagram
            # send's timed-out pause made the next one, hours later, close at once)
            self._whole_paused_at = None
            self._asked_at = -math.inf
            return self._refill(writing, whole)
        self.read_deposit()
        verdict = self.verdict(whole)
        engine = self.engine
        # A pause for ``whole`` bytes is timed here: the gate's own pause clock restarts
        # whenever another call (a read in another thread) finds the usage without them
        # served, so a datagram no credit can cover waited for as long as others moved
        # data, never closing the connection. A call its timeout ended leaves the clock
        # running for the next one: a non-blocking sender that tried again never closed
        now = time.monotonic()
        paused_at = now
        if whole and self._whole_paused_at is not None:
            paused_at = self._whole_paused_at
        # the caller's timeout (the socket's, or recv_datagram's): the pause waited out
        # pause_timeout whatever it was, and a non-blocking handler's call blocked
        deadline = None
        nonblocking = False
        if sock is not None and verdict.state is GateState.PAUSE:
            if timeout == "socket":
                timeout = sock.gettimeout()
                nonblocking = timeout == 0
            else:
                timeout = _checked_timeout(timeout)  # (recv_datagram's, as it checks it)
            if timeout is not None:
                deadline = (now if began is None else began) + timeout
        while verdict.state is GateState.PAUSE:
            if whole and time.monotonic() - paused_at >= self.policy.pause_timeout:
                verdict = GateVerdict(
                    GateState.CLOSE,
                    verdict.owed,
                    f"payment required: no credit covered a datagram of {whole} bytes "
                    f"within {self.policy.pause_timeout} s",
                )
                break
            with engine.lock:
                if engine.session.terminated is not None or engine.closed:
                    return True  # the caller's own call reports how the connection ended
                now = time.monotonic()
                interval = self.policy.request_interval
                # (once an interval or so in one pause: a non-blocking handler trying
                # again at once asked the client for a receipt on every call)
                if now - self._asked_at >= interval / 2:
                    self._asked_at = now
                    with contextlib.suppress(DTPError):
                        engine.conn.send_receipt(RECEIPT_REQUEST)
                engine.flush()
                wait = interval if deadline is None else min(interval, deadline - now)
                if wait > 0:
                    with contextlib.suppress(DTPTimeoutError):
                        engine.pump(
                            lambda: (
                                self.verdict(whole).state is not GateState.PAUSE
                                or engine.session.terminated is not None
                            ),
                            wait,
                        )
                else:
                    engine.poll()  # one look at what came (a receipt, say)
            # (the engine lock let go: the escrow is read in this thread, not under it)
            self.read_deposit()
            verdict = self.verdict(whole)
            if (
                verdict.state is GateState.PAUSE
                and deadline is not None
                and time.monotonic() >= deadline
            ):
                if whole:
                    self._whole_paused_at = paused_at
                if nonblocking:
                    raise BlockingIOError(errno.EAGAIN, "operation would block")
                raise DTPTimeoutError("timed out")
        # the pause is over: the next one asks for a receipt at once
        self._asked_at = -math.inf
        if whole:
            self._whole_paused_at = None
        if verdict.state is GateState.CLOSE:
            logger.info("closing connection %s: %s", self.connection_id, verdict.reason)
            engine.abort(CLOSE_PAYMENT_REQUIRED, verdict.reason)
            raise PaymentRequired(verdict.reason, CLOSE_PAYMENT_REQUIRED)
        if verdict.state is GateState.SERVE:
            return self._refill(writing, whole)
        return True

    def read_deposit(self, *, ending: bool = False) -> None:
        """Read the escrow again when the gate wants it (the deposit holds a paused
        connection, or a receipt waits above it: the client may have topped it up while
        the connection was open; at most once per DEPOSIT_READ_INTERVAL_MS), and go on
        with what it holds now. A gate that kept the deposit admission read would hold a
        client that topped up to the old one, and close the connection as invalid at its
        first receipt above it. Called without the engine lock (a ledger read).

        ``ending`` (the connection is over, the settlement next): read it whenever a
        receipt still waits above the deposit, whatever the interval. A connection that
        was serving never looked at it, and the settlement claimed an older receipt: the
        client had topped up and signed for more, and the server lost the difference."""
        gate = self.gate
        ledger = self.ledger
        now = _now_ms()
        if ledger is None or gate.escrow_id is None:
            return
        if not gate.wants_deposit(now, *self.engine.conn.usage, ending=ending):
            return
        gate.deposit_reading(now)
        try:
            deposited = ledger.get_escrow(gate.escrow_id).deposited
        except ChainError as exc:
            logger.warning("connection %s: cannot read its escrow: %s", self.connection_id, exc)
            return
        pending = gate.deposit_read(deposited)
        if pending is not None:
            # the receipt that waited above the old deposit: through the usual path now
            with self.engine.lock:
                self.on_receipt(pending.encode())
        if gate.violation is not None:
            self._credit = self._send_credit = 0

    def _refill(self, writing: bool, whole: int = 0) -> bool:
        """Set the credit to what the gate allows (the connection serving); for writes,
        less the bytes written but not in the usage yet: those of writes under way, and
        those queued in the connection beyond the client's flow-control window (the
        usage counts a byte once it is sent). False when they hold all of it (or, for a
        write of ``whole`` bytes, too much of it for them), after waiting up to
        ``request_interval`` for some of them to go."""
        engine = self.engine
        if not writing:
            self._credit = min(self.gate.credit_bytes(*engine.conn.usage), _CREDIT_MAX)
            return True
        with self._cond:
            # usage and queue first, then _sending, all under this lock: a write that
            # ends in between (in them, not yet released) is counted twice, never not
            # at all
            with engine.lock:
                total_bytes, total_requests = engine.conn.usage
                queued = engine.conn.send_buffered()
                ended = engine.session.terminated is not None or engine.closed
            sending = self._sending
            credit = self.gate.credit_bytes(total_bytes + queued, total_requests) - sending
            if credit >= max(whole, 1) or not (sending or queued) or ended:
                self._send_credit = min(max(credit, 0), _CREDIT_MAX)
                return True
            if not queued:
                self._waiters += 1
                try:
                    self._cond.wait(self.policy.request_interval)
                finally:
                    self._waiters -= 1
                return False
        # the queued bytes go out as the client reads: drive the I/O until some did
        with engine.lock, contextlib.suppress(DTPTimeoutError):
            engine.pump(
                lambda: (
                    engine.conn.send_buffered() < queued
                    or engine.session.terminated is not None
                    or engine.closed
                ),
                self.policy.request_interval,
            )
        return False

    def reserve(self, nbytes: int) -> int:
        """How much of a write of ``nbytes`` may go now (after :meth:`wait_send`), taken
        from the credit at once and held as under way until :meth:`sent`."""
        with self._cond:
            credit = self._send_credit
            take = nbytes if nbytes <= credit else max(1, credit)
            self._send_credit = credit - max(take, _CALL_COST)
            self._credit -= max(take, _CALL_COST)  # reads look again as they did
            self._sending += take
        return take

    def reserve_datagrams(self, sock: DTPSocket, sizes: list[int], start: int) -> tuple[int, int]:
        """Wait until the credit covers the datagram of ``sizes[start]`` bytes whole
        (a datagram cannot go in part: its bytes are metered as they go), pausing for a
        receipt as a write does at the end of the credit; then take from the credit as
        many datagrams from ``start`` on as it covers, as :meth:`reserve` does. Returns
        (how many, their bytes held as under way until :meth:`sent`); (0, 0) once the
        connection ended (the send then reports how). Waits within ``sock``'s timeout,
        as :meth:`wait_send`."""
        engine = self.engine
        first = sizes[start]
        began = time.monotonic()
        while True:
            with self._cond:
                credit = self._send_credit
                if credit > 0 and credit >= first:
                    count = taken = 0
                    for i in range(start, len(sizes)):
                        size = sizes[i]
                        if count and (credit < size or credit <= 0):
                            break
                        credit -= max(size, _CALL_COST)
                        taken += size
                        count += 1
                    self._send_credit = credit
                    self._credit -= max(taken, _CALL_COST)  # reads look again as they did
                    self._sending += taken
                    return count, taken
            if engine.session.terminated is not None or engine.closed:
                return 0, 0
            if not self._look(True, first, sock, "socket", began):
                timeout = sock.gettimeout()
                if timeout == 0:
                    raise BlockingIOError(errno.EAGAIN, "operation would block")
                if timeout is not None and time.monotonic() - began >= timeout:
                    raise DTPTimeoutError("timed out")

    def sent(self, reserved: int) -> None:
        """A write :meth:`reserve` made room for ended: its bytes are in the usage."""
        with self._cond:
            self._sending -= reserved
            if self._waiters:
                self._cond.notify_all()

    def room(self, nbytes: int) -> int:
        """How much of a read of ``nbytes`` may go now (after :meth:`wait_paid`):
        no more than the gate's credit, so that one call cannot carry a client that pays
        nothing far past the allowance; at least 1 byte, since the gate said serve."""
        credit = self._credit
        if nbytes <= credit:
            return nbytes
        # Short of the read: ask the gate again before cutting it. Cut by the credit's
        # own bookkeeping (every _CREDIT_MAX bytes of a bulk read), the lane stopped
        # with the rest of a carrier read in hand, and that went the general path --
        # copied into the stream's buffer, then out again -- a few percent of a
        # metered bulk transfer's bytes. Now only what the gate allows cuts a read.
        credit = min(self.gate.credit_bytes(*self.engine.conn.usage), _CREDIT_MAX)
        self._credit = credit
        return nbytes if nbytes <= credit else max(1, credit)

    def request_final_receipt(self) -> None:
        """Before the server closes: ask for a receipt for all usage, and wait up to
        ``final_receipt_timeout`` for one (while the client is still there)."""
        engine = self.engine
        session = engine.session

        def done() -> bool:
            return session.terminated is not None or self.gate.settled_up(*engine.conn.usage)

        deadline = time.monotonic() + self.policy.final_receipt_timeout
        with engine.lock:
            while not engine.closed and not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                with contextlib.suppress(DTPError):
                    engine.conn.send_receipt(RECEIPT_REQUEST)
                    engine.flush()
                    engine.pump(done, min(left, self.policy.request_interval))

    def throttle(self, nbytes: int = 0, requests: int = 0) -> None:
        """Charge the client's rate limits and wait as long as they say (and count what
        moved against the gate's last look; a request ends it)."""
        if requests:
            self._credit = self._send_credit = 0
        else:
            self._credit -= max(nbytes, _CALL_COST)
        self.limit(nbytes, requests)

    def limit(self, nbytes: int = 0, requests: int = 0) -> None:
        """Charge the client's rate limits and wait as long as they say."""
        buckets = self.buckets
        if not buckets.bytes.rate and not buckets.requests.rate:
            return  # unlimited: the common case costs no clock read and no lock
        now = time.monotonic()
        with self.limit_lock:
            delay = max(buckets.bytes.charge(nbytes, now), buckets.requests.charge(requests, now))
        self._hold(delay, lambda now: max(buckets.bytes.delay(now), buckets.requests.delay(now)))

    def pace(self, nbytes: int) -> int:
        """How much of a read or write of ``nbytes`` stream bytes goes now under the
        client's bytes/s limit: at most the bucket's take, once the bucket holds it
        (waits until then, and while the requests/s limit is in debt). Unlimited: all of
        it at once (no clock read, no lock). See :attr:`dtp.payments.ratelimit.TokenBucket.take`."""
        buckets = self.buckets
        bucket = buckets.bytes
        if not bucket.rate:
            return nbytes
        size = max(bucket.take_of(nbytes), 0)

        def wait(now: float) -> float:
            return max(bucket.wait_for(size, now), buckets.requests.delay(now))

        with self.limit_lock:
            delay = wait(time.monotonic())
        self._hold(delay, wait)
        return size

    def _hold(self, delay: float, again: Callable[[float], float]) -> None:
        """Wait ``delay`` seconds, and then as long as ``again(now)`` says (under the
        limits' lock), or until the connection ends."""
        # a wait the connection's end cuts short: a large chunk's debt at a low rate
        # lasts long, and a plain sleep would hold the handler -- and so the settlement
        # and the server's release -- for all of it after the client had gone. Looked at
        # again each refresh interval: the Host may raise or lift the limit meanwhile,
        # and a wait worked out at the old rate would go on (300 s for 30 kB at 100 B/s)
        engine = self.engine

        def ended() -> bool:
            return engine.session.terminated is not None or engine.closed

        step = self.policy.refresh_interval
        while delay > 0:
            with engine.lock, contextlib.suppress(DTPTimeoutError):
                engine.pump(ended, min(delay, step))
            if ended():
                return
            with self.limit_lock:
                delay = again(time.monotonic())

    def deny(self) -> None:
        """The host's firewall now denies the client: close the connection."""
        logger.info(
            "closing connection %s: the firewall now denies %s", self.connection_id, self.client
        )
        self.engine.abort(CLOSE_FIREWALL_DENIED, "the host's firewall now denies this client")

    def closed_on_ledger(self) -> None:
        """The client closed the connection on the ledger while it is served: close it,
        for the settlement to claim now (see ServicePolicy.ledger_check_interval)."""
        logger.info("closing connection %s: its client closed it on the ledger", self.connection_id)
        self.engine.abort(CLOSE_LEDGER_CLOSED, "the connection was closed on the ledger")


def _left_of(
    sock: DTPSocket, timeout: float | Literal["socket"] | None, began: float
) -> float | Literal["socket"] | None:
    """What is left, at the wait for the datagram, of a receive's ``timeout`` (as
    :meth:`dtp.socket.DTPSocket.recv_datagram` takes it) that began at ``began`` and
    waited for payment first: the pause came out of it (the whole timeout again, the
    call lasted up to twice as long). None (no limit) and a non-blocking socket's
    "socket" stay as they are; 0 left is one look."""
    limit = _checked_timeout(sock.gettimeout() if timeout == "socket" else timeout)
    if limit is None or limit == 0:
        return timeout
    return max(0.0, limit - (time.monotonic() - began))


class PaidSocket:
    """A stream of a paid connection: a :class:`dtp.socket.DTPSocket` whose reads and
    writes wait for payment and for the rate limits first. Each read and write moves at
    most what the gate still allows (so a client that pays nothing gets no more than the
    allowance's worth, give or take the flow-control window it may fill unasked), and
    every call that moves stream bytes goes through them: :meth:`makefile`'s file too.
    The wrapped socket's attributes that move no data (timeouts, addresses, counters,
    shutdown) are forwarded; the others are refused."""

    def __init__(self, sock: DTPSocket, paid: _PaidConnection) -> None:
        self._sock = sock
        self._paid = paid

    @property
    def gate(self) -> ReceiptGate:
        """The connection's receipt gate (latest receipt, allowance)."""
        return self._paid.gate

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """:meth:`dtp.socket.DTPSocket.recv`, once the connection is paid up (it waits
        while paused for a receipt) and within the rate limits: at most what the gate
        still allows."""
        if (
            flags
            or type(bufsize) is not int
            or type(flags) is not int
            or not 0 <= bufsize <= _SSIZE_MAX
        ):
            # the socket's checks, before the wait (and the size as the int it stands
            # for: one that is an int only through __index__ failed the gate's
            # comparison with the credit, and one past what a socket takes was cut to
            # the credit and read)
            bufsize = _checked_size(bufsize, "recv")
            _checked_flags(flags)
        paid = self._paid
        if paid._credit <= 0:
            paid.wait_paid(self._sock)
        data = self._sock.recv(paid.pace(paid.room(bufsize)), flags)
        paid.throttle(len(data))
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """:meth:`dtp.socket.DTPSocket.recv_into`, metered as :meth:`recv`."""
        # wait_paid, room and throttle inline for the usual read that the credit
        # covers: a bulk reader makes one of these calls per carrier read, and the
        # three method calls were about a third of what the wrapper cost it
        if flags or type(nbytes) is not int or type(flags) is not int:
            # the socket's checks of the call as made, first (as a socket makes them
            # before it waits), then the size as the int it stands for: None or 0.0
            # read the whole buffer while the credit lasted, and a size that is an int
            # only through __index__ failed the comparison with the credit
            recv_into_target(buffer, nbytes, flags)
            nbytes, flags = operator.index(nbytes), operator.index(flags)
        paid = self._paid
        if paid._credit <= 0:
            paid.wait_paid(self._sock)
        size = nbytes or memoryview(buffer).nbytes
        if size > paid._credit:
            # the socket's checks of the call as made, before the gate cuts its size
            # (a size past the buffer, cut to the credit, would escape them: read)
            recv_into_target(buffer, nbytes, flags)
            size = paid.room(size)
        buckets = paid.buckets
        if buckets.bytes.rate:
            paced = paid.pace(size)
            if paced < size:
                recv_into_target(buffer, nbytes, flags)  # (as the gate's cut, above)
            size = paced
        if type(buffer) is bytearray and size == len(buffer):
            size = 0  # the whole buffer: the socket's one-call path (no size to check)
        n: int = self._sock.recv_into(buffer, size, flags)
        paid._credit -= n if n > _CALL_COST else _CALL_COST
        if buckets.bytes.rate or buckets.requests.rate:
            paid.limit(n)
        return n

    def send(self, data: Any, flags: int = 0) -> int:
        """:meth:`dtp.socket.DTPSocket.send`, once the connection is paid up and within
        the rate limits: sends at most what the gate still allows and returns how much
        was sent."""
        paid = self._paid
        paid.wait_send(self._sock)
        view = memoryview(data).cast("B")
        size = paid.pace(len(view))
        if size < len(view):
            view = view[:size]
        room = paid.reserve(size)
        try:
            n = self._sock.send(view if room == size else view[:room], flags)
        finally:
            paid.sent(room)
        paid.limit(n)
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        """Send all of ``data`` through :meth:`send`, piece by piece (waiting for payment
        and the rate limits between the pieces)."""
        view = memoryview(data).cast("B")
        while len(view):
            n = self.send(view[:_SEND_SLICE])
            view = view[n:]

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """:meth:`dtp.socket.DTPSocket.sendfile`, metered: the file goes out through
        :meth:`send`, piece by piece, so the gate and the rate limits act between the
        pieces (the wrapped socket's would send it all past them). Returns the bytes
        sent, the file's position left after the last of them. The socket's timeout
        bounds each piece, as for :meth:`sendall`."""
        if "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, not {offset!r}")
        if count is not None:
            if not isinstance(count, int) or isinstance(count, bool):
                raise TypeError(f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(f"count must be a positive integer (got {count!r})")
        if self._sock.gettimeout() == 0:
            raise ValueError("non-blocking sockets are not supported")
        if offset:
            file.seek(offset)
        sent = 0
        try:
            while count is None or sent < count:
                want = _SEND_SLICE if count is None else min(_SEND_SLICE, count - sent)
                data = file.read(want)
                if not data:
                    break
                view = memoryview(data).cast("B")
                while len(view):
                    n = self.send(view)
                    view = view[n:]
                    sent += n
        finally:
            if sent and hasattr(file, "seek"):
                file.seek(offset + sent)
        return sent

    def send_recv(self, data: bytes, bufsize: int, *, release: Any = None) -> bytes | None:
        """Always None, nothing sent (``release`` kept): the socket's one-call exchange
        would carry both ways past the gate; callers then :meth:`sendall` and
        :meth:`recv`, as its contract says, which look at the gate each."""
        return None

    def makefile(
        self,
        mode: str = "rb",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """A file object over this stream, as :meth:`socket.socket.makefile`, whose
        reads and writes are this socket's (the wrapped socket's file would skip the
        gate)."""
        return stream_file(self, mode, buffering, encoding, errors, newline)

    def send_datagram(self, data: bytes | bytearray | memoryview) -> None:
        """:meth:`dtp.socket.DTPSocket.send_datagram`, metered as :meth:`send`: the
        datagram goes once the gate's credit covers all of it (it waits while the
        connection is paused for payment) and within the rate limits."""
        self.send_datagrams((data,))

    def send_datagrams(self, datagrams: Iterable[bytes | bytearray | memoryview]) -> int:
        """:meth:`dtp.socket.DTPSocket.send_datagrams`, metered as :meth:`send_datagram`
        (in runs the credit covers, each after waiting for it): all of them, or (on a
        TypeError or LocalProtocolError for any one) none. Returns how many were
        queued. Those the carrier's backlog drops (``datagrams_send_dropped``) are not
        charged to the rate limits: they never go."""
        items = list(datagrams)
        sock = self._sock
        sizes = datagram_sizes(items, sock.max_datagram_size)
        paid = self._paid
        queued = start = 0
        while start < len(items):
            count, reserved = paid.reserve_datagrams(sock, sizes, start)
            if not count:
                # the connection ended: the socket's own call says how
                return queued + sock.send_datagrams(items[start:])
            try:
                sent = sock.send_datagrams(items[start : start + count])
            finally:
                paid.sent(reserved)
            queued += sent
            # the limits charged for the queued ones alone (as send() charges what went):
            # charged for all, a handler sending to a client that stopped reading waited
            # out the rate of datagrams the backlog dropped (the credit they took comes
            # back at the gate's next look: they are not in the usage)
            paid.limit(sum(map(datagram_charge, sizes[start : start + sent])))
            start += count
        return queued

    def recv_datagram(self, timeout: float | Literal["socket"] | None = "socket") -> bytes:
        """:meth:`dtp.socket.DTPSocket.recv_datagram`, after waiting while paused (the
        datagram is in the usage since it arrived), then within the rate limits."""
        paid = self._paid
        if paid._credit > 0:
            data = self._sock.recv_datagram(timeout)
        else:
            began = time.monotonic()
            paid.wait_paid(self._sock, timeout)
            data = self._sock.recv_datagram(_left_of(self._sock, timeout, began))
        paid.throttle(datagram_charge(len(data)))
        return data

    def recv_datagrams(
        self, max_count: int = 1024, timeout: float | Literal["socket"] | None = "socket"
    ) -> list[bytes]:
        """:meth:`dtp.socket.DTPSocket.recv_datagrams`, as :meth:`recv_datagram`."""
        paid = self._paid
        if paid._credit > 0:
            batch = self._sock.recv_datagrams(max_count, timeout)
        else:
            began = time.monotonic()
            paid.wait_paid(self._sock, timeout)
            batch = self._sock.recv_datagrams(max_count, _left_of(self._sock, timeout, began))
        paid.throttle(sum(datagram_charge(len(data)) for data in batch))
        return batch

    def accept_stream(self) -> PaidSocket:
        """Wait for the client to open a stream (one request) and return it."""
        self._paid.wait_paid(self._sock)
        stream = self._sock.accept_stream()
        self._paid.throttle(requests=1)
        return PaidSocket(stream, self._paid)

    def open_stream(self) -> PaidSocket:
        """Open another stream of this connection, metered as this one."""
        return PaidSocket(self._sock.open_stream(), self._paid)

    def close(self) -> None:
        """Close this stream (:meth:`dtp.socket.DTPSocket.close`; the first stream's
        close ends the connection, which the server then settles -- after asking the
        client for a receipt for all its usage, the final receipt of docs/escrow.md
        6.1: closed at once, the usage since its last receipt went unpaid)."""
        sock = self._sock
        if getattr(sock, "_primary", False) and not getattr(sock, "_closed", True):
            with contextlib.suppress(DTPError):
                self._paid.request_final_receipt()
        sock.close()

    def reset(self, code: int = 0) -> None:
        """:meth:`dtp.socket.DTPSocket.reset`: the client reads
        :class:`~dtp.errors.StreamReset` (a reset moves no data: no gate). On the first
        stream the connection ends without a final receipt (none comes over a reset
        stream): it is settled with the latest receipt, as after any abort."""
        self._sock.reset(code)

    def __enter__(self) -> PaidSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name in _FORWARDED:
            return getattr(self._sock, name)
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r} (a paid stream "
            f"forwards only what moves no data, so that nothing passes the receipt gate)"
        )

    def __repr__(self) -> str:
        return f"<PaidSocket of {self._sock!r}>"


def datagram_sizes(items: list[bytes | bytearray | memoryview], limit: int) -> list[int]:
    """The sizes of the datagrams ``items``, checked as the connection checks them
    before it sends any (TypeError, LocalProtocolError above ``limit``): a paid stream
    sends them in the runs its credit covers, and one refused midway would leave the
    earlier runs sent."""
    sizes = []
    for data in items:
        try:
            size = memoryview(data).nbytes
        except TypeError:
            raise TypeError(
                f"a bytes-like object is required, not {type(data).__name__!r}"
            ) from None
        if size > limit:
            raise LocalProtocolError(f"datagram of {size} bytes exceeds {limit}")
        sizes.append(size)
    return sizes


#: What PaidSocket takes from the wrapped socket as it is: none of it moves stream bytes
#: or datagrams. Anything else (a method added to DTPSocket later, say) is refused rather
#: than forwarded past the gate.
_FORWARDED = frozenset(
    {
        "stream_id",
        "peer_address",
        "peer_connection_id",
        "peer_port",
        "peer_static_key",
        "getpeername",
        "getsockname",
        "connection_stats",
        "settimeout",
        "gettimeout",
        "setblocking",
        "getblocking",
        "shutdown",
        "abort",
        "max_datagram_size",
        "datagrams_dropped",
        "datagrams_send_dropped",
        "connection_id",
        "escrow_id",
    }
)


Handler = Callable[[PaidSocket], None]


def open_store(receipts: ReceiptStore | str | Path | None) -> tuple[ReceiptStore, bool]:
    """The paid server's receipt store, and whether it was opened here (from a file
    path, or in memory for None) rather than passed in: one passed in stays its
    owner's to close."""
    if isinstance(receipts, ReceiptStore):
        return receipts, False
    if receipts is not None and not isinstance(receipts, str | Path):
        raise TypeError(
            f"receipts must be a ReceiptStore, a file path or None, got {type(receipts).__name__}"
        )
    return ReceiptStore(receipts or ":memory:"), True


def _receipts_held(writer: ReceiptWriter, connection_id: str) -> bool:
    """Whether the store holds receipts of ``connection_id`` (it was served): a damaged
    row (MalformedReceipt) counts, as the row is there (raised, it ended the handler
    with a traceback instead of refusing the connection)."""
    try:
        return writer.latest(connection_id) is not None
    except MalformedReceipt:
        return True


#: The abort reason of a DTP connection naming a ledger connection ID served before (or
#: being served): one DTP connection per ledger connection, and none after its receipts
SERVED_REFUSAL = "this connection ID is already served"
#: The abort reason when the receipt store cannot tell whether it was served before
UNKNOWN_RECEIPTS_REFUSAL = (
    "the server cannot read its receipts of this connection ID now; try again later"
)


def served_refusal(writer: ReceiptWriter, connection_id: str) -> str | None:
    """Why ``connection_id`` (reserved by the caller, so that no DTP connection on it is
    live) may not be served again, or None when its store holds no receipt of it.

    A ledger connection whose settlement failed (the ledger unavailable as it ended)
    stays Open, its receipts kept for a later claim; a client back on it
    would be served on a new gate seeded from the escrow (:func:`gate_for`), which knows
    nothing of them: a fresh allowance on top of the usage they cover, and its next
    receipts judged against the escrow's claims instead of the kept receipt. So a
    connection with receipts is refused, and so is one whose receipts cannot be read
    (the store unreadable: logged): serving it on the escrow's word is that same gate.
    (Raised, the ReceiptStoreError ended the handler with a traceback, the client told
    only of an internal error.)"""
    try:
        held = _receipts_held(writer, connection_id)
    except ReceiptStoreError as exc:
        logger.warning(
            "cannot read the receipts of connection %s (refused: it may have been served): %s",
            connection_id,
            exc,
        )
        return UNKNOWN_RECEIPTS_REFUSAL
    if held:
        logger.warning("refused connection %s: already served", connection_id)
        return SERVED_REFUSAL
    return None


def closes_store(receipts: ReceiptStore | str | Path | None) -> bool:
    """Whether a paid server's close() closes the store it opened: only one on a file.
    An in-memory store (None) holds no file, and ``server.store`` is the only place its
    receipts can still be read from after close (for :func:`recover_unclaimed`)."""
    return not isinstance(receipts, ReceiptStore) and bool(receipts)


def recover_store(
    ledger: Ledger,
    identity: HostIdentity,
    store: ReceiptStore,
    alone: bool,
    stopped: Callable[[], bool] | None = None,
    backoff: ClaimBackoff | None = None,
) -> list[tuple[str, Settlement]]:
    """A paid server's :func:`recover_unclaimed` of what dead server runs left in its
    store (:meth:`ReceiptStore.orphaned`): at its start (``alone``, as
    :meth:`ReceiptStore.attach_server` said: then every other run is dead) and every
    :data:`RECOVERY_INTERVAL` after (``alone`` False). A server killed while another
    was live on the same store left its receipts unclaimed for as long as any was
    (its restart was not alone either), and its clients' half-close timeouts refunded
    the fees they had paid. The receipts of live servers are never claimed: they are
    their connections', settled under them the service they go on giving is never
    paid. Once ``stopped()`` is true no further receipt is claimed. ``backoff``: the
    live server's memory of its failed claims (a call is one of its rounds): a receipt
    that failed is tried again only after 1, 2, 4 rounds... (at most
    :data:`RETRY_MAX_ROUNDS`), not in every round by every live server; the start's
    recovery has none, and tries every receipt once."""
    with store.orphaned(alone) as receipts:
        if backoff is not None:
            backoff.next_round()
            backoff.prune(store, receipts)
        if not receipts:
            return []
        return recover_unclaimed(ledger, identity, store, receipts, stopped, backoff)


#: How often a live paid server looks for server runs on its receipt store that died
#: with receipts unclaimed, and claims them (seconds; in its :class:`Recovery` thread). Well
#: below the 10-minute half-close timeout after which a client takes its deposit back.
RECOVERY_INTERVAL = 30.0


#: How long close() waits for a recovery claim under way before it leaves the release
#: to a thread of its own (seconds)
RECOVERY_CLOSE_WAIT = 5.0


#: The most recovery rounds a retried settlement (:class:`SettlementRetries`), or a dead
#: run's receipt whose claim (:func:`recover_store`) keeps failing, waits before its next
#: try: after its n-th failure it waits 2**(n-1) rounds, at most this many -- every 2
#: minutes at the default :data:`RECOVERY_INTERVAL`, so that one the ledger refuses for
#: good (a bad receipt) costs a try every 2 minutes, not every 30 s, while one failing for
#: an outage is still tried 6 times within the 10-minute half-close timeout after which its
#: client may take the whole deposit back.
RETRY_MAX_ROUNDS = 4


class SettlementRetries:
    """A live paid server's own failed settlements, tried again in its :class:`Recovery`
    rounds. A connection whose settlement failed as it ended (the ledger unavailable, a
    connection that could not be read) stays Open on the ledger, its receipt kept
    in the store; the dead-run recovery never claims a live run's rows, so the receipt
    waited for the server's next start -- while the client, which half-closed the
    connection as it left, may settle alone once the half-close timeout has passed and
    take back the whole deposit, the receipted fee with it.

    :meth:`add` is called by the server's settlement that claimed nothing (its reservation
    of the connection ID still held). Each round, a connection due is reserved in
    ``serving`` as a new DTP connection on it would be (one being served or settled right
    now is left for the next round), its latest receipt read from ``writer`` (which knows
    the final receipt still on its way to the disk and the claims not yet marked), and,
    when part of it is unclaimed, claimed and settled as the settlement would have
    (:func:`claim_and_settle`: a connection settled meanwhile -- its client settled alone
    -- has the receipt written off and marked, never claimed twice); what it settles goes
    to ``settlements``. Only the connections this server settled are retried: the rows of
    its run may also be another live server's on the same store handle. A retry that
    fails waits 1, 2, 4 rounds... (at most :data:`RETRY_MAX_ROUNDS`); its first failure is
    logged as a warning, the later ones at debug level (the settlement's own failure was
    a warning already). Lost with the server: a restart's recovery claims what is left."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        writer: ReceiptWriter,
        serving: ConnectionIds,
        settlements: deque[tuple[str, Settlement]],
    ) -> None:
        self.ledger, self.identity, self.writer = ledger, identity, writer
        self._serving = serving
        self._settlements = settlements
        self._pending: set[str] = set()  # the connections to retry
        # (their failures and when each is due: the dead runs' receipts' schedule)
        self._backoff = ClaimBackoff(RETRY_MAX_ROUNDS)
        self._lock = threading.Lock()

    def add(self, connection_id: str) -> None:
        """The settlement of ``connection_id`` claimed nothing: tried again from the next
        round, unless by then nothing of its receipts is unclaimed (none came, or the
        connection was found settled and its receipt written off)."""
        key = normalize_id(connection_id, "connection ID")
        with self._lock:
            self._pending.add(key)

    def __contains__(self, connection_id: object) -> bool:
        if not isinstance(connection_id, str):
            return False
        with self._lock:
            return normalize_id(connection_id, "connection ID") in self._pending

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def rounds(self) -> int:
        """How many rounds have started."""
        return self._backoff.rounds

    def run(self, stopped: Callable[[], bool] | None = None) -> list[tuple[str, Settlement]]:
        """One round: retry each settlement due (none once ``stopped()`` is true); what
        was settled."""
        self._backoff.next_round()
        with self._lock:
            due = [cid for cid in self._pending if self._backoff.due(cid)]
        done: list[tuple[str, Settlement]] = []
        for cid in due:
            if stopped is not None and stopped():
                break
            if not self._serving.reserve(cid):
                continue  # served or settled right now (its settlement adds it again)
            try:
                settlement = self._retry(cid)
            finally:
                self._serving.release(cid)
            if settlement is not None:
                done.append((cid, settlement))
                self._settlements.append((cid, settlement))
        return done

    def _retry(self, cid: str) -> Settlement | None:
        """Claim and settle ``cid`` (reserved) if its receipts hold MIST unclaimed."""
        try:
            if not self._unclaimed(cid):
                self._forget(cid)
                return None
            settlement = claim_and_settle(self.ledger, self.identity, cid, self.writer)
        except (ChainError, ReceiptStoreError) as exc:
            self._failed(cid, str(exc), trace=False)
            return None
        except Exception as exc:  # (a bug, a ledger's surprise: with its traceback)
            self._failed(cid, repr(exc), trace=True)
            return None
        tries = self._forget(cid)
        if settlement is not None:
            logger.info(
                "connection %s settled on retry %d: %d MIST claimed, %d refunded",
                cid,
                tries + 1,
                settlement.claimed,
                settlement.refunded,
            )
        return settlement

    def _unclaimed(self, cid: str) -> bool:
        stored = self.writer.latest(cid)
        return stored is not None and stored.unclaimed > 0

    def _forget(self, cid: str) -> int:
        """Nothing left to retry of ``cid``: how many retries of it had failed."""
        with self._lock:
            self._pending.discard(cid)
            failures = self._backoff.failures(cid)
            self._backoff.forget(cid)
        return failures

    def _failed(self, cid: str, why: str, *, trace: bool) -> None:
        with self._lock:
            self._pending.add(cid)
            failures = self._backoff.failed(cid)
        if failures == 1:
            logger.warning(
                "retrying the settlement of connection %s failed (its receipt stays kept; "
                "tried again with backoff, further failures logged at debug level): %s",
                cid,
                why,
                exc_info=trace,
            )
        else:
            logger.debug(
                "retry %d of the settlement of connection %s failed: %s",
                failures,
                cid,
                why,
                exc_info=trace,
            )


class Recovery:
    """A live paid server's recovery of what dead server runs left unclaimed in its
    store (:func:`recover_store`), and of its own settlements that failed
    (``retries``: :class:`SettlementRetries`), every :data:`RECOVERY_INTERVAL`, in a
    thread of its own: elsewhere its ledger transactions (one per receipt) would hold
    up the policy refreshes -- the firewall's enforcement on open connections -- for as
    long as they take, and go on after the server closed. :meth:`stop` ends it between two claims;
    :meth:`join` waits for that, before the store is released. What it settles of dead
    runs is appended to ``recovered``; ``retries`` appends its own to the server's
    settlements. A dead run's receipt whose claim fails is tried again after 1, 2, 4
    rounds... (:attr:`backoff`), its first failure logged as a warning, the later ones
    at debug level."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        store: ReceiptStore,
        recovered: list[tuple[str, Settlement]],
        retries: SettlementRetries | None = None,
    ) -> None:
        self.ledger, self.identity, self.store = ledger, identity, store
        self.recovered = recovered
        self.retries = retries
        #: The dead runs' receipts whose claim failed in this server's rounds
        self.backoff = ClaimBackoff(RETRY_MAX_ROUNDS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dtp-paid-recovery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RECOVERY_INTERVAL):
            if self.retries is not None:
                # (first: these have a client whose half-close timeout runs)
                try:
                    self.retries.run(self._stop.is_set)
                except Exception:
                    logger.exception("retrying failed settlements failed")
            try:
                self.recovered.extend(
                    recover_store(
                        self.ledger,
                        self.identity,
                        self.store,
                        False,
                        self._stop.is_set,
                        self.backoff,
                    )
                )
            except ReceiptStoreError as exc:
                logger.warning("cannot look for receipts dead servers left: %s", exc)
            except Exception:
                # (a bug, or a ledger's surprise: logged, and looked at again next time)
                logger.exception("recovering receipts dead servers left failed")

    def stop(self) -> None:
        """No further claim (the one under way ends first)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """:meth:`stop`, then wait for the thread (it ends after the claim under way) up
        to ``timeout`` seconds; True once it has ended."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()


#: How long a closed paid server's release waits for its receipt writer to finish
#: (seconds): one still writing then (a stalled disk) is left the store, open, and the
#: rest of the release (the detach, closing the store) is the writer's last step.
RELEASE_WRITER_WAIT = 30.0


def release_receipts(
    writer: ReceiptWriter,
    store: ReceiptStore,
    own_store: bool,
    then: Callable[[], None] | None = None,
) -> None:
    """A closed paid server's last step: stop the receipt writer (after it wrote
    everything, within :data:`RELEASE_WRITER_WAIT`), then run ``then`` (the server's
    :meth:`ReceiptStore.detach_server`) and close the store if the server opened it.
    Receipts the writer gave up (the store refused them, or was closed under it) are
    logged whole by the writer, and counted here: the store is closed all the same, as
    nothing writes to it any more.

    A writer still writing after the wait (a stalled disk, a commit blocked on a lock)
    keeps the store, and ``then`` and the close wait for it: they run in its thread once
    it stops (:meth:`ReceiptWriter.when_stopped`). Detached before, the run's lock file
    was let go of (or removed) while the writer still held receipts of it: another
    server taking the run for a dead one claimed the older receipt stored for a
    connection whose settlement had failed, and the newer one written after was worth
    nothing; and closed under the writer, the store lost what it held."""
    if not writer.close(RELEASE_WRITER_WAIT) and not writer.stopped:
        logger.error(
            "the receipt writer did not finish within %g s: the receipt store stays in "
            "use (and this server's run on it live) until it does",
            RELEASE_WRITER_WAIT,
        )
        writer.when_stopped(lambda: _writer_released(writer, store, own_store, then))
        return
    _writer_released(writer, store, own_store, then)


def _writer_released(
    writer: ReceiptWriter,
    store: ReceiptStore,
    own_store: bool,
    then: Callable[[], None] | None,
) -> None:
    """The rest of :func:`release_receipts` once the writer has stopped."""
    if writer.given_up:
        logger.error(
            "%d receipt(s) could not be stored and were given up (each logged whole "
            "above, to be claimed by hand): their fees are unclaimed",
            len(writer.given_up),
        )
    try:
        if then is not None:
            then()
    finally:
        if own_store:
            store.close()


def check_address(address: object, what: str) -> None:
    """Refuse a listening or published address that is not a (host, port) tuple before
    anything opens (a string such as "127.0.0.1:0" would fail only in bind(), leaving
    the socket it was made for behind)."""
    if (
        not isinstance(address, tuple)
        or not 2 <= len(address) <= 4  # (an IPv6 one may add flowinfo and scope_id)
        or not isinstance(address[0], str)
        or not isinstance(address[1], int)
        or isinstance(address[1], bool)
    ):
        raise TypeError(
            f"{what} must be a (host, port) tuple such as ('127.0.0.1', 0), got {address!r}"
        )
    if not 0 <= address[1] <= 0xFFFF:
        raise InvalidArgument(f"{what}: port {address[1]} is outside 0..65535")


#: How long one wait of :meth:`PaidServer.wait_released` without a timeout lasts for a
#: receipt writer still writing, before it waits again (seconds).
_WRITER_WAIT = 60.0


class PaidServer:
    """A paid service on ``port`` of the Host ``host_id`` (see the module docs); serving
    in background threads from construction until :meth:`close`.

    ``identity`` must be the host's authority (it publishes the endpoint and signs the
    claims). ``receipts``: a :class:`ReceiptStore` or its file path (keep it across
    restarts: that is what makes earned fees survive a crash); None keeps them in
    memory only. ``endpoint``: what to publish when it differs from the listening
    address (e.g. listening on 0.0.0.0). ``backlog``, ``max_handshakes``,
    ``max_handshakes_per_address``, ``max_waiting_per_address``: the listen backlog and
    the bounds on handshakes in progress, as :func:`dtp.socket.create_server`'s (same
    defaults; refused as there -- ValueError, TypeError for a backlog that is no
    integer -- but before the ledger is read or written). ``open_grace``: seconds the
    admission looks for a connection a client names whose open may still be landing,
    as :func:`dtp.socket.create_server`'s (InvalidArgument, also before the ledger is
    read or written).
    """

    def __init__(
        self,
        host_id: str,
        port: int,
        handler: Handler,
        *,
        ledger: Ledger,
        identity: HostIdentity,
        address: tuple[str, int] = ("127.0.0.1", 0),
        receipts: ReceiptStore | str | Path | None = None,
        policy: ServicePolicy | None = None,
        config: ConnectionConfig | None = None,
        endpoint: tuple[str, int] | None = None,
        backlog: int = 128,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        max_handshakes_per_address: int | None = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
        max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
        open_grace: float | None = None,
    ) -> None:
        from dtp.socket import _check_handshake_bounds, create_server

        check_address(address, "address")
        # (create_server checks them too, but only after the store's recovery claimed
        # on the ledger)
        _check_handshake_bounds(
            max_handshakes, max_handshakes_per_address, max_waiting_per_address, backlog
        )
        checked_open_grace(open_grace)
        if endpoint is not None:
            check_address(endpoint, "endpoint")
        self.ledger = ledger
        self.identity = identity
        self.host_id = normalize_id(host_id, "host ID")
        self.port = port
        self.handler = handler
        self.policy = policy or ServicePolicy()
        self._live: dict[int, _PaidConnection] = {}
        #: Connection IDs being served or settled: one DTP connection per ledger
        #: connection at a time
        self._serving = ConnectionIds()
        self._live_lock = threading.Lock()
        self._closed = threading.Event()
        # _handle calls, admissions and settlements of connections admitted but not
        # served running (they may still use the receipt writer): the release waits
        # until none is left
        self._handling = 0
        self._releasing = False  # the release is decided: nothing may count in any more
        #: The DTP connections admitted (by ledger connection ID) whose engine is not
        #: released yet: True once _handle took it (its settlement is _serve_paid's)
        self._admitted: dict[str, bool] = {}
        #: Set by the release: closed, every connection ended and settled, the receipt
        #: writer stopped (what wait_released() waits for)
        self._released = threading.Event()
        # marks the threads running _handle: wait_released() there waits for itself
        self._in_handler = threading.local()
        self._threads: list[threading.Thread] = []
        self.settlements: deque[tuple[str, Settlement]] = deque(maxlen=1024)
        """The most recent settlements: (connection ID, outcome)."""
        self.store, opened = open_store(receipts)
        self._own_store = closes_store(receipts)
        try:
            self.receipt_writer = ReceiptWriter(self.store)
        except BaseException:
            if opened:
                self.store.close()
            raise
        #: The settlements that failed, retried by the recovery thread
        self.retries = SettlementRetries(
            ledger, identity, self.receipt_writer, self._serving, self.settlements
        )
        self.server: DTPServer | None = None
        self._attached = False  # attach_server() made: detach_server() at the release
        self._recovery: Recovery | None = None  # (once the start's recovery is done)
        try:
            host = ledger.get_host(self.host_id)
            if port not in host.services:
                raise move_error("host", "EServiceNotFound", f"port {port} of host {self.host_id}")
            alone = self.store.attach_server()
            self._attached = True
            self.recovered = recover_store(ledger, identity, self.store, alone)
            """(connection ID, settlement) of what dead server runs left unclaimed: at
            the start, then every :data:`RECOVERY_INTERVAL` (this server's own
            settlements retried then go to :attr:`settlements`)."""
            self._recovery = recovery = Recovery(
                ledger, identity, self.store, self.recovered, self.retries
            )
            # our own LedgerAdmission (what create_server would make from ledger,
            # host_id and port), remembering what it read for the gate
            self.admission = _PaidAdmission(self, ledger, self.host_id, port, open_grace)
            self.server = create_server(
                address,
                identity=identity,
                admit=self.admission,
                config=config,
                backlog=backlog,
                max_handshakes=max_handshakes,
                max_handshakes_per_address=max_handshakes_per_address,
                max_waiting_per_address=max_waiting_per_address,
            )
            self.address = self.server.address
            publish_endpoint(ledger, identity, self.host_id, endpoint or self.address)
            now = time.monotonic()
            self.host_policy = HostPolicy(host, now, self.policy.refresh_interval)
            self.limiter = RateLimiter(
                host.firewall.max_bytes_per_sec, host.firewall.max_requests_per_sec
            )
            self._limit_lock = threading.Lock()
            self._threads = [
                threading.Thread(
                    target=self.server.serve_forever,
                    args=(self._handle,),
                    name="dtp-paid",
                    daemon=True,
                ),
                threading.Thread(target=self._policy_loop, name="dtp-paid-policy", daemon=True),
            ]
            for thread in self._threads:
                thread.start()
            recovery.start()
        except BaseException:
            # nothing was served yet: whatever started so far stops with the error, the
            # store too (in memory as well: nobody gets this server)
            self._own_store = opened
            self.close()
            raise

    # -- connections -------------------------------------------------------------------

    def _admit(self, peer: PeerInfo, check: Callable[[PeerInfo], str | None]) -> str | None:
        """The admission of ``peer`` (``check``: the ledger's verdict). Counted until
        the DTP connection it admits ends (:meth:`_unreserved`), so that the release
        cannot stop the receipt writer before that connection is served or settled."""
        with self._live_lock:
            if self._releasing:
                return CLOSED_REFUSAL
            self._handling += 1
        carried = False
        try:
            verdict = check(peer)
            if verdict is not None or peer.connection_id is None:
                return verdict
            if not self._closed.is_set():
                # the DTPServer reserves the connection ID next, in this thread, and the
                # count goes on with that reservation (_reserved)
                carried = True
                return None
            # admitted as the server closes: nobody will serve it. Settled before the
            # refusal goes out, so the client finds its deposit refunded.
            self._settle_unserved(peer.connection_id)
            return CLOSED_REFUSAL
        finally:
            if not carried:
                self._done()

    def _reserved(self, cid: str, reserved: bool) -> None:
        """The DTPServer reserved ``cid`` for the DTP connection just admitted, or
        refused it -- one is served on it already, or the Host's connection limits
        leave no room for it (:meth:`_refused_at_limit` has its settlement under way
        then) -- and the admission's count ends here."""
        if not reserved:
            self._done()
            return
        with self._live_lock:
            self._admitted[normalize_id(cid, "connection ID")] = False

    def _unreserved(self, cid: str) -> None:
        """The engine of an admitted DTP connection is released (under its lock, in
        whichever thread ended it). Never served -- its handshake finished as the server
        closed, and it was aborted -- it is settled now, in a thread of its own (a
        ledger transaction); the admission's count ends once it is."""
        with self._live_lock:
            served = self._admitted.pop(normalize_id(cid, "connection ID"), True)
        if served:
            self._done()
            return
        self._settle_aside(cid)

    def _refused_at_limit(self, cid: str) -> None:
        """The DTPServer refused ``cid`` at one of the Host's connection limits (in the
        handshake's thread, the admission still counted): a valid, funded connection
        nobody will serve, settled now, nothing claimed, in a thread of its own, so that
        the client's deposit comes back whole at once rather than after the half-close
        timeout (docs/escrow.md §2, as the daemon does)."""
        with self._live_lock:
            self._handling += 1  # (the release waits for the settlement)
        self._settle_aside(cid)

    def _settle_aside(self, cid: str) -> None:
        """:meth:`_settle_dropped` in a thread of its own (a ledger transaction)."""
        try:
            threading.Thread(
                target=self._settle_dropped, args=(cid,), name="dtp-paid-settle", daemon=True
            ).start()
        except RuntimeError:  # the process is out of threads
            self._settle_dropped(cid)

    def _settle_dropped(self, cid: str) -> None:
        try:
            self._settle_unserved(cid)
        finally:
            self._done()

    def _settle_unserved(self, cid: str) -> None:
        """Close and settle the ledger connection of an admitted DTP connection the
        server will not serve: no receipt came on it, so nothing is claimed and the
        client is refunded its whole deposit at once. Left alone when another DTP
        connection on it is being served or settled (that one's settlement closes it)."""
        key = normalize_id(cid, "connection ID")
        with self._live_lock:
            live = key in self._admitted
        if live or not self._serving.reserve(key):
            return
        try:
            known = self.admission.take_admitted(key)
            self._settle(cid, known if known is not None and known[0].id == key else None)
        finally:
            self._serving.release(key)

    def _done(self) -> None:
        """One _handle call, admission or settlement ended: the last one after close()
        releases the server."""
        with self._live_lock:
            self._handling -= 1
            last = self._closed.is_set() and self._handling == 0 and not self._releasing
            if last:
                self._releasing = True
        if last:
            self._release()

    def _handle(self, sock: DTPSocket) -> None:
        cid = sock.peer_connection_id
        key = None if cid is None else normalize_id(cid, "connection ID")
        with self._live_lock:
            closed = self._closed.is_set()
            if not closed:
                self._handling += 1
                if key in self._admitted:
                    self._admitted[key] = True  # its settlement is ours now
        if closed:
            # a handshake that finished as the server closed: aborted, its admission
            # settles it once the engine is released (_unreserved)
            sock.abort(CLOSED_REFUSAL)
            return
        self._in_handler.active = True
        try:
            self._serve(sock)
        finally:
            # (the DTPServer's threads serve one connection after another)
            self._in_handler.active = False
            self._done()

    def _serve(self, sock: DTPSocket) -> None:
        cid = sock.peer_connection_id
        client = sock.peer_address
        if cid is None or client is None:  # LedgerAdmission refuses these already
            sock.abort("no ledger connection")
            return
        admitted = self.admission.take_admitted(cid)
        key = normalize_id(cid, "connection ID")
        # A second DTP connection on the same ledger connection: on a gate of its own it
        # would count the first one's receipts again (the client paying once for twice
        # the service) and take another allowance from one escrow. Nor may one come back
        # after its receipts (its settlement failed: still Open), or when they cannot
        # be read: its new gate would count them once more (served_refusal).
        if not self._serving.reserve(key):
            logger.warning("refused connection %s: already served", cid)
            sock.abort(SERVED_REFUSAL)
            return
        try:
            refusal = served_refusal(self.receipt_writer, key)
            if refusal is not None:
                sock.abort(refusal)
                return
            self._serve_paid(sock, cid, client, admitted)
        finally:
            self._serving.release(key)

    def _serve_paid(
        self, sock: DTPSocket, cid: str, client: str, admitted: Admitted | None
    ) -> None:
        """Serve and settle an admitted connection (its ID reserved by :meth:`_serve`)."""
        try:
            gate = gate_for(self.ledger, cid, self.policy, admitted=admitted)
        except ChainError as exc:
            logger.warning("cannot meter connection %s: %s", cid, exc)
            sock.abort("the server cannot read the connection on the ledger")
            return
        with self._limit_lock:
            buckets = self.limiter.acquire(client, time.monotonic())
        paid = _PaidConnection(
            sock,
            gate,
            buckets,
            self._limit_lock,
            self.policy,
            self.receipt_writer,
            self.ledger,
        )
        engine = paid.engine
        with engine.lock:
            engine.session.on_receipt = paid.on_receipt
            while engine.session.receipts:  # those that came before the callback was set
                paid.on_receipt(engine.session.receipts.popleft())
        with self._live_lock:
            self._live[id(paid)] = paid
        # a handler that failed while the connection goes on: the client must read an
        # error, not a clean end that makes a reply cut short look whole
        failed = False
        try:
            paid.throttle(requests=1)  # the first stream is the first request
            self.handler(PaidSocket(sock, paid))
        except PaymentRequired as exc:
            logger.info("connection %s ended: %s", cid, exc)
        except DTPError as exc:
            logger.info("connection %s ended: %s", cid, exc)
            failed = engine.session.terminated is None
        except Exception:
            logger.exception("handler failed for connection %s", cid)
            failed = True
        finally:
            with contextlib.suppress(DTPError):
                paid.request_final_receipt()
            # a receipt the client signed above the deposit as admission read it (it
            # topped up) is judged before the settlement, or it goes unclaimed
            try:
                paid.read_deposit(ending=True)
            except Exception:  # (the settlement must run all the same)
                logger.exception("connection %s: reading its escrow at the end failed", cid)
            # the connection and escrow as admission read them: only we claim from the
            # escrow, so it is current; the connection is read again once it changed
            known = (
                admitted if admitted is not None and admitted[0].id == gate.connection_id else None
            )
            ended = engine.session.terminated
            client_closed = (
                ended is not None and ended.by_peer and ended.error_code == CloseCode.NO_ERROR
            )
            # it no longer counts against the Host's connection limits: the client may
            # connect again at once, while the settlement (three transactions on Sui)
            # goes on; its ID stays reserved until the engine goes (docs/escrow.md §2)
            self.admission.served.ended(cid)
            if client_closed:
                # settle (closing the connection on the ledger in the same transaction)
                # before our end of the carrier closes: the client waits for that end
                # and then finds nothing left to do on the ledger
                self._settle(cid, known, paid.final)
            if failed:
                sock.abort(CALLBACK_FAILED)  # (as dtp.socket's and dtp.aio's servers)
            else:
                sock.close()
            with self._live_lock:
                self._live.pop(id(paid), None)
            with self._limit_lock:
                self.limiter.release(client)
            if not client_closed:
                self._settle(cid, known, paid.final)

    def _settle(
        self, cid: str, known: Admitted | None = None, final: Receipt | None = None
    ) -> None:
        settlement = settle_ended(
            self.ledger,
            self.identity,
            cid,
            self.receipt_writer,
            final,
            escrow=known[1] if known is not None else None,
            connection=known[0] if known is not None else None,
        )
        if settlement is not None:
            self.settlements.append((cid, settlement))
        else:
            # (the ID still reserved: the retry cannot start before we are done)
            self.retries.add(cid)

    # -- the host's policy -------------------------------------------------------------

    def _policy_loop(self) -> None:
        while not self._closed.wait(self.policy.refresh_interval):
            try:
                self.refresh_policy()
            except Exception:
                # (a ChainError is handled in there) Anything else -- a bug, a value
                # a ledger should not return -- must not end the loop: the firewall
                # and the limits of open connections would go unenforced for the life
                # of the server, silently. One refresh, so one log, per interval.
                logger.exception(
                    "refreshing the policy of host %s failed; trying again in %g s",
                    self.host_id,
                    self.policy.refresh_interval,
                )

    def refresh_policy(self) -> None:
        """Read the Host now and apply its firewall to open connections."""
        try:
            host = self.ledger.get_host(self.host_id)
        except ChainError as exc:
            logger.warning("cannot read host %s: %s", self.host_id, exc)
            return
        with self._live_lock:
            live = list(self._live.values())
        now = time.monotonic()
        change = self.host_policy.refresh(host, now, frozenset(p.client for p in live))
        if change.limits_changed:
            with self._limit_lock:
                self.limiter.set_limits(
                    change.firewall.max_bytes_per_sec, change.firewall.max_requests_per_sec, now
                )
        for paid in live:
            if paid.client in change.denied:
                paid.deny()
        self._check_on_ledger(live, now)

    def _check_on_ledger(self, live: list[_PaidConnection], now: float) -> None:
        """Close the open connections no longer Open on the ledger (each read every
        policy ``ledger_check_interval``)."""
        due = ledger_checks_due(live, now, self.policy.ledger_check_interval)
        if not due:
            return
        try:
            ended = ended_on_ledger(self.ledger, due)
        except ChainError as exc:
            logger.warning("cannot read the state of open connections: %s", exc)
            return
        for paid in ended:
            paid.closed_on_ledger()

    @property
    def open_connections(self) -> int:
        with self._live_lock:
            return len(self._live)

    # -- lifetime -----------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Block until :meth:`close`."""
        self._closed.wait()

    def close(self) -> None:
        """Stop accepting and refreshing. Open connections finish and settle (in their
        own threads, after this returns); once the last has (at once when there are
        none), the receipt writer writes what it holds and stops, and a store the server
        opened from ``receipts`` (a path) is closed. A :class:`ReceiptStore` passed in
        stays open: the caller's to close, once :meth:`wait_released` returned True.
        A client whose admission or handshake ends as the server closes is refused (or
        its connection aborted) and its ledger connection settled at once, nothing
        claimed, before the release. May be called from a handler (its own connection
        is then one still served)."""
        with self._live_lock:
            if self._closed.is_set():
                return
            self._closed.set()
            idle = self._handling == 0
            if idle:
                self._releasing = True
        if self._recovery is not None:
            self._recovery.stop()
        if self.server is not None:
            self.server.close()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(5.0)
        if idle:
            if self._recovery is None or self._recovery.join(RECOVERY_CLOSE_WAIT):
                self._release()
            else:
                # a claim under way takes longer (a ledger slow to answer): released
                # once it ends, in a thread of its own -- close() returns, and
                # wait_released() is the wait with a bound of the caller's choosing
                threading.Thread(target=self._release, name="dtp-paid-release", daemon=True).start()
        else:
            # what is waiting is written now; the last connection to end stops the writer
            self.receipt_writer.flush(timeout=5.0)

    def _release(self) -> None:
        """Stop the receipt writer and close our own store (once, when the server is
        closed and no connection can write any more)."""
        # (a recovery under way first: it claims from the store; then the writer, and
        # the detach only once it stopped: release_receipts)
        if self._recovery is not None:
            self._recovery.join()
        try:
            release_receipts(self.receipt_writer, self.store, self._own_store, self._detach)
        finally:
            # also when the detach (or the store's close) raised: the writer has stopped
            # all the same, and unset, wait_released() said False for good (while the
            # same failure in the writer's last step is only logged)
            self._released.set()

    def _detach(self) -> None:
        """Leave the store (:meth:`ReceiptStore.detach_server`) once the receipt writer
        has stopped: until then the run's lock file says its rows are a live server's."""
        if self._attached:
            self._attached = False
            self.store.detach_server()

    def wait_released(self, timeout: float | None = None) -> bool:
        """After :meth:`close`: wait until every connection the server was serving
        ended and settled and the receipt writer stopped (True), or ``timeout`` seconds
        (False). Then a :class:`ReceiptStore` passed in may be closed: closed before,
        a settlement still to come failed on it, its fees unclaimed. Waits as long as a
        client keeps its connection open. (False at once when the server is not
        closed.) Not from a handler: it would wait for its own connection
        (:class:`~dtp.errors.LocalProtocolError`)."""
        if getattr(self._in_handler, "active", False):
            raise LocalProtocolError("wait_released() in a handler waits for its own connection")
        if not self._closed.is_set():
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._released.wait(timeout):
            return False
        # The release waits for the writer only so long (release_receipts); one still
        # writing then (a stalled disk) uses the store yet: closed under it, the
        # receipts it holds are lost. (A writer that gave receipts up has stopped: its
        # close() says False, but it no longer uses the store.)
        while True:
            left = _WRITER_WAIT if deadline is None else max(0.0, deadline - time.monotonic())
            if self.receipt_writer.close(left) or self.receipt_writer.stopped:
                return True
            if deadline is not None:
                return False

    def __enter__(self) -> PaidServer:
        return self

    def __exit__(self, *exc: object) -> None:
        """:meth:`close` (connections still served settle after it: see
        :meth:`wait_released`)."""
        self.close()
