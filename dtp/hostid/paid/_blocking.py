"""A paid connection with blocking sockets: :class:`PaidSocket`, the stream a
:class:`~dtp.hostid.paid._blocking_server.PaidServer` handler gets, and the connection state
its streams share (receipt gate, rate limits; docs/escrow.md §6.1)."""

from __future__ import annotations

import contextlib
import errno
import logging
import operator
import socket as _socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from dtp.errors import (
    ChainError,
    DTPError,
    DTPTimeoutError,
    PaymentRequired,
)
from dtp.hostid.paid._engine import (
    Close,
    Credit,
    PaidConnectionEngine,
    PauseAction,
    ReceiptStep,
    RefillStep,
)
from dtp.hostid.paid._policy import (
    CALL_COST,
    SEND_SLICE,
    ServicePolicy,
    datagram_sizes,
    not_forwarded,
)
from dtp.ledger.receipt import Receipt
from dtp.payments._gate import (
    RECEIPT_REQUEST,
    GateState,
    GateVerdict,
    ReceiptGate,
)
from dtp.payments._ratelimit import ClientBuckets, datagram_charge
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.transport.blocking._checks import (
    SSIZE_MAX,
    checked_flags,
    checked_size,
    checked_timeout,
    readable,
    recv_into_target,
)
from dtp.transport.blocking._files import stream_file

if TYPE_CHECKING:
    from dtp.ledger.interface import Ledger
    from dtp.protocol._events import ConnectionTerminated
    from dtp.transport.blocking._socket import DTPSocket


logger = logging.getLogger(__name__)


class PaidConnection:
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
        # paused, as the socket's own calls do (the one place it is taken from the
        # socket: the rest goes through ended(), wake(), abort() and attach())
        self.engine = sock.layer.driver
        self.client = sock.peer_address or ""
        self.connection_id = sock.peer_connection_id or ""
        self.gate = gate
        #: The receipt path's rules (shared with the asyncio driver)
        self.core = PaidConnectionEngine(gate, buckets, policy, self.connection_id, self.client)
        self.buckets = buckets
        self.limit_lock = limit_lock
        self.policy = policy
        #: When (monotonic) the connection's state on the ledger is read next
        self.ledger_check_due = time.monotonic() + policy.ledger_check_interval
        #: What may move before the gate is asked again (the engine's arithmetic, under
        #: ``_cond`` where writes take from it: the streams may be driven from threads)
        self.credit = Credit()
        self._cond = threading.Condition(threading.Lock())
        self._waiters = 0

    # -- the connection's I/O driver -------------------------------------------------

    def attach(self) -> None:
        """Take the connection's RECEIPT frames from now on (:meth:`on_receipt`), those
        that came before first."""
        engine = self.engine
        with engine.lock:
            engine.session.on_receipt = self.on_receipt
            while engine.session.receipts:
                self.on_receipt(engine.session.receipts.popleft())

    # (blocking only: the server reads the session's end here; asyncio's reads it off proto)
    @property
    def terminated(self) -> ConnectionTerminated | None:
        """How the connection's session ended (None: not yet)."""
        return self.engine.session.terminated

    def ended(self) -> bool:
        """Whether the connection has ended (its session, or the engine closed)."""
        engine = self.engine
        return engine.session.terminated is not None or engine.closed

    def wake(self) -> None:
        """Wake the calls waiting on the connection (a paused one looks again)."""
        self.sock.layer.wake()

    def abort(self, close: Close) -> None:
        """End the connection as the engine decided (``close``: code and reason)."""
        self.engine.abort(close.code, close.reason)

    def on_receipt(self, data: bytes) -> None:
        """A RECEIPT frame from the client (engine lock held): check it here, store it
        in the writer thread, count it once stored."""
        step, receipt = self.core.receipt_frame(data, closed=self.engine.conn.closed)
        if step is ReceiptStep.REFUSED:
            # the violation closes the connection at the next look (the next call)
            self.credit.void()
        elif receipt is not None:
            self.receipt_writer.submit(receipt, self._kept)

    @property
    def final(self) -> Receipt | None:
        """The receipt that came with the end of the connection (the client's final one,
        in the read that brought its CLOSE), claimed by the settlement at once."""
        return self.core.final

    def _kept(self, receipt: Receipt) -> None:
        """The receipt is on disk (writer thread): count it, and wake a paused waiter."""
        self.core.kept(receipt)
        self.credit_grew()
        self.wake()

    def credit_grew(self) -> None:
        """Payment came (a receipt kept, a top-up read): a pause of datagram sends ends
        once the credit covers the datagram a send last found no credit for
        (:meth:`~dtp.hostid.paid._engine.PaidConnectionEngine.datagrams_covered_again`,
        as asyncio's)."""
        if self.core.unpaid_datagrams_since is None:
            # no pause of datagram sends: the engine lock is not taken, so that the
            # receipt writer's thread never waits on it (a server's release holds it
            # while it waits for that writer to finish). A pause a send begins after
            # this look is timed from after the payment, which its verdict then sees.
            return
        engine = self.engine
        # the test, the judgment and the clear under the engine lock, which a waiting
        # datagram send holds from its step's read of the pause's start to its use
        # (_look_at_gate): a step never judges by a start from before a payment that ended
        # that pause (tests/paid/test_datagram_pause_rule.py)
        with engine.lock:
            self.core.datagrams_covered_again(
                engine.conn.usage, engine.conn.send_buffered() + self.credit.sending
            )

    def verdict(self, whole: int = 0) -> GateVerdict:
        """The gate's verdict on the usage, plus ``whole`` bytes about to go (see
        :meth:`reserve_datagrams`)."""
        return self.core.verdict(self.engine.conn.usage, time.monotonic(), whole)

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
        comes (:meth:`_look_at_gate`). The gate's pause clock goes on across such calls:
        the connection closes once paused ``pause_timeout``, at the next call that looks."""
        if self.credit.read > 0:
            return  # within what the gate allowed at its last look
        self._look_at_gate(False, 0, sock, timeout)

    def wait_send(
        self, sock: DTPSocket, nowait: bool = False, deadline: float | None = None
    ) -> None:
        """:meth:`wait_paid` for a write on ``sock`` (then :meth:`reserve`). Waiting for
        queued bytes to go is waiting for the client to read, as a plain send waits:
        within ``sock``'s timeout (DTPTimeoutError; BlockingIOError if non-blocking),
        and so is a pause for payment. ``nowait`` (a send with MSG_DONTWAIT, or on a
        non-blocking socket): one look at the gate and at what came, waiting for
        nothing, then BlockingIOError when the credit covers none of the write (a
        paused connection asks for a receipt as any paused call does). ``deadline``
        (monotonic): the call's own end, in place of ``sock``'s timeout from now (a
        sendall's, which bounds the whole call)."""
        if self.credit.send > 0:
            return
        start = time.monotonic()
        timeout: float | Literal["socket"] = (
            "socket" if deadline is None else max(0.0, deadline - start)
        )
        while not self._look_at_gate(True, 0, sock, timeout, start, nowait=nowait, ends=deadline):
            if nowait:
                raise BlockingIOError(errno.EAGAIN, "operation would block")
            _timed_out(sock, start, deadline)

    # (blocking only: wait_paid and wait_send share one look, the credit cached between looks)
    def _look_at_gate(
        self,
        writing: bool,
        whole: int = 0,
        sock: DTPSocket | None = None,
        timeout: float | Literal["socket"] | None = "socket",
        began: float | None = None,
        *,
        nowait: bool = False,
        ends: float | None = None,
    ) -> bool:
        """One look at the gate for :meth:`wait_paid` (:meth:`wait_send` if
        ``writing``): False when the credit it allows is all held by writes under way or
        queued (after waiting a little for some of them to go; ``nowait``: not at all,
        and a pause is waited out as on a non-blocking socket), so that the writer looks
        again. ``whole``: bytes of a write that cannot go in part (a datagram), judged
        as if in the usage already: paused until the credit covers all of them.
        ``sock``, ``timeout``: the call's timeout, which a pause is waited out within
        (:meth:`wait_paid`; None ``sock``: until the pause ends), counted from ``began``
        (the call's start; by default the pause's), then BlockingIOError (the socket's
        timeout 0) or DTPTimeoutError, as the unpaid call raises when nothing comes.
        ``ends``: the call's end, which a wait for writes to go stops at too."""
        total_bytes, total_requests = self.engine.conn.usage
        if self.gate.serving(total_bytes + whole, total_requests):
            return self._refill(writing, whole, nowait, ends)
        self.read_deposit()
        verdict = self.verdict(whole)
        now = time.monotonic()
        # the caller's timeout (the socket's, or recv_datagram's) bounds the pause
        deadline = None
        nonblocking = False
        if sock is not None and verdict.state is GateState.PAUSE:
            if nowait:
                timeout, nonblocking = 0.0, True
            elif timeout == "socket":
                timeout = sock.gettimeout()
                nonblocking = timeout == 0
            else:
                timeout = checked_timeout(timeout)  # (recv_datagram's, as it checks it)
            deadline = self.core.call_deadline(timeout, began, now)
        pause = self.core.pause(now, whole=whole, deadline=deadline)
        engine = self.engine
        while True:
            with engine.lock:
                # (the step reads and sets the pause of datagram sends: under the lock
                # that credit_grew and reserve_datagrams clear it under)
                step = pause.step(verdict, time.monotonic())
                if step.action is not PauseAction.WAIT:
                    break
                if self.ended():
                    return True  # the caller's own call reports how the connection ended
                if step.ask:
                    with contextlib.suppress(DTPError):
                        engine.conn.send_receipt(RECEIPT_REQUEST)
                engine.flush()
                if step.wait > 0:
                    with contextlib.suppress(DTPTimeoutError):
                        engine.pump(
                            lambda: (
                                self.verdict(whole).state is not GateState.PAUSE
                                or engine.session.terminated is not None
                            ),
                            step.wait,
                        )
                else:
                    engine.poll()  # one look at what came (a receipt, say)
            # (the engine lock let go: the escrow is read in this thread, not under it)
            self.read_deposit()
            verdict = self.verdict(whole)
        if step.action is PauseAction.TIMED_OUT:
            if nonblocking:
                raise BlockingIOError(errno.EAGAIN, "operation would block")
            raise DTPTimeoutError("timed out")
        if step.close is not None:
            self.abort(step.close)
            raise PaymentRequired(step.close.reason, step.close.code)
        return self._refill(writing, whole, nowait, ends)

    def read_deposit(self, *, ending: bool = False) -> None:
        """Read the escrow again when the gate wants it (the deposit holds a paused
        connection, or a receipt waits above it: the client may have topped it up while
        the connection was open; at most once per DEPOSIT_READ_INTERVAL_MS), and go on
        with what it holds now. A gate that kept the deposit admission read would hold a
        client that topped up to the old one, and close the connection as invalid at its
        first receipt above it. Called without the engine lock (a ledger read).

        ``ending`` (the connection is over, the settlement next): read it whenever a
        receipt still waits above the deposit, whatever the interval: a connection still
        serving need not have read it, and the settlement would claim an older receipt
        than the one the client signed after its top-up
        (tests/paid/test_top_up_over_deposit.py)."""
        ledger = self.ledger
        if ledger is None:
            return
        escrow_id = self.core.escrow_to_read(
            self.engine.conn.usage, time.monotonic(), ending=ending
        )
        if escrow_id is None:
            return
        try:
            deposited = ledger.get_escrow(escrow_id).deposited
        except ChainError as exc:
            self.core.deposit_read_failed(exc)
            return
        pending = self.core.deposit_read(deposited)
        self.credit_grew()  # (a top-up)
        if pending is not None:
            # the receipt that waited above the old deposit: through the usual path now
            with self.engine.lock:
                self.on_receipt(pending.encode())
        if self.gate.violation is not None:
            self.credit.void()

    def _refill(
        self, writing: bool, whole: int = 0, nowait: bool = False, deadline: float | None = None
    ) -> bool:
        """Set the credit to what the gate allows (the connection serving); for writes,
        less the bytes written but not in the usage yet: those of writes under way, and
        those queued in the connection beyond the client's flow-control window (the
        usage counts a byte once it is sent). False when they hold all of it (or, for a
        write of ``whole`` bytes, too much of it for them), after waiting up to
        ``request_interval`` for some of them to go (``nowait``: after one look at what
        came; ``deadline``: no longer than until then)."""
        engine = self.engine
        wait = self.policy.request_interval
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        if not writing:
            self.credit.read = self.core.read_credit(engine.conn.usage)
            return True
        with self._cond:
            # usage and queue first, then what is under way, all under this lock: a write that
            # ends in between (in them, not yet released) is counted twice, never not
            # at all
            with engine.lock:
                usage = engine.conn.usage
                queued = engine.conn.send_buffered()
                ended = self.ended()
            step = self.core.refill_send(self.credit, usage, queued, whole, ended=ended)
            if step is RefillStep.GO:
                return True
            if step is RefillStep.WRITES:
                if nowait:
                    return False
                self._waiters += 1
                try:
                    self._cond.wait(wait)
                finally:
                    self._waiters -= 1
                return False
        # (RefillStep.QUEUE) drive the I/O until some of the queued bytes went
        if nowait:
            with engine.lock:
                engine.poll()
            return False
        with engine.lock, contextlib.suppress(DTPTimeoutError):
            engine.pump(lambda: engine.conn.send_buffered() < queued or self.ended(), wait)
        return False

    def reserve(self, nbytes: int) -> int:
        """How much of a write of ``nbytes`` may go now (after :meth:`wait_send`), taken
        from the credit at once and held as under way until :meth:`sent`."""
        with self._cond:
            return self.credit.reserve(nbytes)

    # (blocking only: a datagram send waits for credit (asyncio's drops: datagrams_now))
    def reserve_datagrams(
        self,
        sock: DTPSocket,
        sizes: list[int],
        start: int,
        nowait: bool = False,
        deadline: float | None = None,
    ) -> tuple[int, int]:
        """Wait until the credit covers the datagram of ``sizes[start]`` bytes whole
        (a datagram cannot go in part: its bytes are metered as they go), pausing for a
        receipt as a write does at the end of the credit; then take from the credit as
        many datagrams from ``start`` on as it covers (:meth:`Credit.reserve_datagrams`).
        Returns (how many, their bytes held as under way until :meth:`sent`); (0, 0)
        once the connection ended (the send then reports how). Waits as
        :meth:`wait_send` does: ``nowait``, for nothing (BlockingIOError when the
        credit does not cover the datagram now); else until ``deadline`` (monotonic;
        None: within ``sock``'s timeout from now), then DTPTimeoutError."""
        first = sizes[start]
        began = time.monotonic()
        timeout: float | Literal["socket"] = (
            "socket" if deadline is None else max(0.0, deadline - began)
        )
        while True:
            with self._cond:
                count, taken = self.credit.reserve_datagrams(sizes, start)
            if count:
                core = self.core
                if core.unpaid_datagrams_since is not None:
                    # a send that goes whole ends a datagram pause (cleared under the
                    # engine lock, as credit_grew clears it: see there)
                    with self.engine.lock:
                        core.datagrams_paid()
                return count, taken
            if self.ended():
                return 0, 0
            if not self._look_at_gate(
                True, first, sock, timeout, began, nowait=nowait, ends=deadline
            ):
                if nowait:
                    raise BlockingIOError(errno.EAGAIN, "operation would block")
                _timed_out(sock, began, deadline)

    def sent(self, reserved: int) -> None:
        """A write :meth:`reserve` made room for ended: its bytes are in the usage."""
        with self._cond:
            self.credit.sent(reserved)
            if self._waiters:
                self._cond.notify_all()

    def room(self, nbytes: int) -> int:
        """How much of a read of ``nbytes`` may go now (after :meth:`wait_paid`): no more
        than the gate's credit, at least 1 byte (the gate said serve; 0 once the
        connection ended while it does not). Short of the cached credit, the gate is
        asked again before the read is cut (tests/paid/test_receipt_gate_read_room.py)."""
        credit = self.credit
        if nbytes <= credit.read:
            return nbytes
        usage = self.engine.conn.usage
        if self.ended() and not self.gate.serving(*usage):
            # the connection ended while paused for payment (wait_paid returns then):
            # what is still buffered is unpaid, and no read serves it, so a handler's
            # recv loop ends with its connection (tests/paid/test_unpaid_end.py)
            return 0
        room, credit.read = self.core.read_room(usage, nbytes)
        return room

    def request_final_receipt(self) -> None:
        """Before the server closes: ask for a receipt for all usage, and wait up to
        ``final_receipt_timeout`` for one (while the client is still there)."""
        engine = self.engine
        core = self.core

        def done() -> bool:
            return core.final_receipt_over(engine.conn.usage, ended=self.ended())

        deadline = core.final_receipt_deadline(time.monotonic())
        with engine.lock:
            while wait := core.final_receipt_step(
                engine.conn.usage, time.monotonic(), deadline, ended=self.ended()
            ):
                with contextlib.suppress(DTPError):
                    engine.conn.send_receipt(RECEIPT_REQUEST)
                    engine.flush()
                    engine.pump(done, wait)

    def throttle(self, nbytes: int = 0, requests: int = 0) -> None:
        """Charge the client's rate limits and wait as long as they say (and count what
        moved against the gate's last look; a request ends it)."""
        if requests:
            self.credit.void()
        else:
            self.credit.spent(nbytes)
        self.limit(nbytes, requests)

    # (blocking only: throttle less the read credit's count: a send took its bytes already)
    def limit(self, nbytes: int = 0, requests: int = 0, *, hold: bool = True) -> None:
        """Charge the client's rate limits and wait as long as they say (``hold``
        False: not at all; the debt then holds back the next :meth:`pace`)."""
        buckets = self.buckets
        if not buckets.bytes.rate and not buckets.requests.rate:
            return  # unlimited: the common case costs no clock read and no lock
        now = time.monotonic()
        core = self.core
        with self.limit_lock:
            delay = core.charge(nbytes, requests, now)
        if hold:
            self._hold(delay, core.debt)

    def wait_debt(self, nowait: bool = False, deadline: float | None = None) -> None:
        """Return once neither rate limit is in debt (what went before was charged
        without a wait: a timed or non-blocking send's): at once when unlimited;
        ``nowait``: BlockingIOError instead of a wait; ``deadline``: DTPTimeoutError
        once it passes first. A datagram goes whole or not at all, so it waits for the
        debt alone, not for a take of the bucket as stream bytes do (:meth:`pace`)."""
        buckets = self.buckets
        if not buckets.bytes.rate and not buckets.requests.rate:
            return
        core = self.core
        with self.limit_lock:
            delay = core.debt(time.monotonic())
        if nowait and delay > 0:
            raise BlockingIOError(errno.EAGAIN, "operation would block")
        self._hold(delay, core.debt, deadline)

    def pace(self, nbytes: int, nowait: bool = False, deadline: float | None = None) -> int:
        """How much of a read or write of ``nbytes`` stream bytes goes now under the
        client's bytes/s limit: at most the bucket's take, once the bucket holds it
        (waits until then, and while the requests/s limit is in debt; ``nowait``:
        BlockingIOError instead of a wait; ``deadline``: DTPTimeoutError once it
        passes first -- nothing charged either way). Unlimited: all of it at once (no
        clock read, no lock).
        See :attr:`dtp.payments._ratelimit.TokenBucket.take`."""
        core = self.core
        if not self.buckets.bytes.rate and not core.credit_rate:
            return nbytes
        rate = core.credit_pace()
        if rate is not None:
            with self.engine.lock:
                self.engine.conn.pace_credit(rate)
        if not self.buckets.bytes.rate:
            return nbytes
        size = core.pace_take(nbytes)

        def wait(now: float) -> float:
            return core.pace_wait(size, now)

        with self.limit_lock:
            delay = wait(time.monotonic())
        if nowait and delay > 0:
            raise BlockingIOError(errno.EAGAIN, "operation would block")
        self._hold(delay, wait, deadline)
        return size

    def _hold(
        self, delay: float, again: Callable[[float], float], deadline: float | None = None
    ) -> None:
        """Wait ``delay`` seconds, and then as long as ``again(now)`` says (under the
        limits' lock), or until the connection ends; past ``deadline``, DTPTimeoutError
        instead."""
        # a wait the connection's end cuts short: a large chunk's debt at a low rate
        # lasts long, and a plain sleep would hold the handler -- and so the settlement
        # and the server's release -- for all of it after the client had gone. Looked at
        # again each refresh interval: the Host may raise or lift the limit meanwhile,
        # and a wait worked out at the old rate would go on (300 s for 30 kB at 100 B/s)
        engine = self.engine
        ended = self.ended
        while delay > 0:
            step = self.core.hold_wait(delay)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DTPTimeoutError("timed out")
                step = min(step, left)
            with engine.lock, contextlib.suppress(DTPTimeoutError):
                engine.pump(ended, step)
            if ended():
                return
            with self.limit_lock:
                delay = again(time.monotonic())

    def deny(self) -> None:
        """The host's firewall now denies the client: close the connection."""
        self.abort(self.core.denied())

    def closed_on_ledger(self) -> None:
        """The client closed the connection on the ledger while it is served: close it,
        for the settlement to claim now (see ServicePolicy.ledger_check_interval)."""
        self.abort(self.core.closed_on_ledger())

    @property
    def subscription(self) -> str | None:
        """The Subscription the connection was opened with (None: a metered one)."""
        return self.gate.subscription

    def subscription_ended(self, why: str) -> None:
        """The subscription the connection was opened with is over on the ledger: close
        it (:meth:`PaidConnectionEngine.subscription_ended`)."""
        self.abort(self.core.subscription_ended(why))


def _ends_connection(sock: DTPSocket) -> bool:
    """Whether closing ``sock`` ends its connection: the first stream, still open."""
    return bool(getattr(sock, "_primary", False)) and not getattr(sock, "_closed", True)


def _timed_out(sock: DTPSocket, began: float, deadline: float | None = None) -> None:
    """Raise as an unpaid call on ``sock`` that began at ``began`` would, once its
    timeout (or its own ``deadline``) passed (BlockingIOError at once for a
    non-blocking socket); else return."""
    timeout = sock.gettimeout()
    if timeout == 0:
        raise BlockingIOError(errno.EAGAIN, "operation would block")
    now = time.monotonic()
    if deadline is None:
        deadline = PaidConnectionEngine.call_deadline(timeout, began, now)
    if deadline is not None and now >= deadline:
        raise DTPTimeoutError("timed out")


def _send_within(sock: DTPSocket, view: memoryview, timeout: float) -> int:
    """``sock.send(view)``, waiting up to ``timeout`` seconds rather than the socket's
    own timeout: what is left of a paid call's, which its waits for payment and the
    rate limits took from (as DTPSocket.sendall bounds its pieces)."""
    n = sock._send(view, timeout)
    sock._engine.leave_queued(sock._stream_id)
    return n


def _left_of(
    sock: DTPSocket, timeout: float | Literal["socket"] | None, began: float
) -> float | Literal["socket"] | None:
    """What is left, at the wait for the datagram, of a receive's ``timeout`` (as
    :meth:`dtp.socket.DTPSocket.recv_datagram` takes it) that began at ``began`` and
    waited for payment first: the pause comes out of it, so that the call lasts no
    longer than its timeout. None (no limit) and a non-blocking socket's
    "socket" stay as they are; 0 left is one look."""
    limit = checked_timeout(sock.gettimeout() if timeout == "socket" else timeout)
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

    def __init__(self, sock: DTPSocket, paid: PaidConnection) -> None:
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
            or not 0 <= bufsize <= SSIZE_MAX
        ):
            # the socket's checks before the wait, and the size as the int it stands
            # for (tests/paid/test_socket_calls.py)
            bufsize = checked_size(bufsize, "recv")
            checked_flags(flags)
        paid = self._paid
        if paid.credit.read <= 0:
            paid.wait_paid(self._sock)
        room = paid.room(bufsize)
        if not room and bufsize:
            return b""  # (ended unpaid, see room(): nothing buffered is served)
        data = self._sock.recv(paid.pace(room), flags)
        paid.throttle(len(data))
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """:meth:`dtp.socket.DTPSocket.recv_into`, metered as :meth:`recv`."""
        # wait_paid, room and throttle inline for the usual read that the credit covers:
        # a bulk reader makes one call per carrier read (bench/compare.py paid_bulk)
        if flags or type(nbytes) is not int or type(flags) is not int:
            # the socket's checks of the call as made before the wait, then the size as
            # the int it stands for (tests/paid/test_socket_recv_into.py)
            recv_into_target(buffer, nbytes, flags)
            nbytes, flags = operator.index(nbytes), operator.index(flags)
        paid = self._paid
        credit = paid.credit
        if credit.read <= 0:
            paid.wait_paid(self._sock)
        size = nbytes or memoryview(buffer).nbytes
        if size > credit.read:
            # the socket's checks before the gate cuts the size (a size past the buffer
            # would escape them: tests/paid/test_socket_recv_into.py)
            recv_into_target(buffer, nbytes, flags)
            size = paid.room(size)
            if not size:
                return 0  # (ended unpaid, see room(): a size of 0 is the whole buffer)
        buckets = paid.buckets
        if buckets.bytes.rate:
            paced = paid.pace(size)
            if paced < size:
                recv_into_target(buffer, nbytes, flags)  # (as the gate's cut, above)
            size = paced
        if type(buffer) is bytearray and size == len(buffer):
            size = 0  # the whole buffer: the socket's one-call path (no size to check)
        n: int = self._sock.recv_into(buffer, size, flags)
        credit.read -= n if n > CALL_COST else CALL_COST  # (Credit.spent, inline)
        if buckets.bytes.rate or buckets.requests.rate:
            paid.limit(n)
        return n

    def send(self, data: Any, flags: int = 0) -> int:
        """:meth:`dtp.socket.DTPSocket.send`, once the connection is paid up and within
        the rate limits: sends at most what the gate still allows and returns how much
        was sent.

        ``flags``: 0, or ``socket.MSG_DONTWAIT`` to wait for nothing, payment included,
        whatever the timeout: when the gate's credit covers none of the send now (the
        connection paused for a receipt, or its credit held by writes under way or
        queued), the call looks once at what came (a paused connection asks the client
        for a receipt, as any paused call does, and reads the escrow again at most once a
        second, a ledger read: how a top-up is seen) and raises BlockingIOError, as the
        socket's send does when nothing fits: nothing sent, nothing charged; send again
        later. So too when the rate limits would hold the send back; what it sends is
        charged to them without a wait, the debt holding back the next call. Other
        flags raise as the socket's send does, before any wait. An empty send returns 0
        at once, paused or not, as the socket's does.

        A non-blocking socket (``settimeout(0)``, ``setblocking(False)``) sends as
        MSG_DONTWAIT does; a positive timeout bounds every wait of the call, payment and
        the rate limits included (DTPTimeoutError, ``socket.timeout``, nothing sent or
        charged), the debt of what it sent holding back the next call."""
        nowait = False
        if flags or type(flags) is not int:
            if operator.index(flags) != _socket.MSG_DONTWAIT:  # (TypeError for 1.5)
                checked_flags(flags)  # (False, a numpy 0: no flag, as the socket's send)
            else:
                nowait = True
        # the socket's error for a view it does not send (a strided one: BufferError),
        # before any wait; a view of rows counted by its bytes
        view = readable(data)
        if not len(view):
            return self._sock.send(view, flags)  # (nothing to pay for: 0, as a socket's)
        timeout = self._sock.gettimeout()
        if timeout == 0:
            nowait = True
        deadline = None if timeout is None or nowait else time.monotonic() + timeout
        return self._send(view, nowait, deadline)

    def _send(self, view: memoryview, nowait: bool, deadline: float | None) -> int:
        """:meth:`send` of the non-empty ``view``: waiting for nothing (``nowait``), or
        until ``deadline`` (None: for good)."""
        paid = self._paid
        sock = self._sock
        paid.wait_send(sock, nowait, deadline)
        size = paid.pace(len(view), nowait, deadline)
        room = paid.reserve(size)
        try:
            if nowait:
                n = sock.send(view[:room], _socket.MSG_DONTWAIT)
            elif deadline is None:
                n = sock.send(view[:room])
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DTPTimeoutError("timed out")
                n = _send_within(sock, view[:room], left)
        finally:
            paid.sent(room)
        if not n:
            # never 0 for bytes given: a caller's loop would go round for good
            raise BlockingIOError(errno.EAGAIN, "operation would block")
        # without a timeout the debt of what went is waited out now; with one, by the
        # next call, within its own
        paid.limit(n, hold=deadline is None and not nowait)
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        """Send all of ``data`` through :meth:`send`, piece by piece (waiting for payment
        and the rate limits between the pieces). The socket's timeout bounds the whole
        call, as :meth:`dtp.socket.DTPSocket.sendall`'s does (DTPTimeoutError, an
        unknown part of ``data`` sent); a non-blocking socket sends what goes now,
        then BlockingIOError, as a socket's sendall does."""
        if flags or type(flags) is not int:
            checked_flags(flags)  # the socket's error for any (the pieces go without)
        view = readable(data)  # (as send)
        timeout = self._sock.gettimeout()
        nowait = timeout == 0
        deadline = None if timeout is None or nowait else time.monotonic() + timeout
        while len(view):
            n = self._send(view[:SEND_SLICE], nowait, deadline)
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
                want = SEND_SLICE if count is None else min(SEND_SLICE, count - sent)
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
        connection is paused for payment) and within the rate limits. The socket's
        timeout bounds those waits, as :meth:`send_datagrams` says."""
        self.send_datagrams((data,))

    def send_datagrams(self, datagrams: Iterable[bytes | bytearray | memoryview]) -> int:
        """:meth:`dtp.socket.DTPSocket.send_datagrams`, metered as :meth:`send_datagram`
        (in runs the credit covers, each after waiting for it): all of them, or (on a
        TypeError or LocalProtocolError for any one) none. Returns how many were
        queued. Those the carrier's backlog drops (``datagrams_send_dropped``) are not
        charged to the rate limits: they never go.

        A non-blocking socket (``settimeout(0)``) waits for nothing, as :meth:`send`:
        when the credit does not cover the next datagram now (the connection paused,
        or its credit held by writes under way or queued) or the rate limits are in
        debt, the call stops there; a positive timeout bounds all its waits together.
        Either way it returns how many of the first ones went when some did, else
        raises (BlockingIOError; DTPTimeoutError past the timeout): the rest are
        neither sent nor charged. What went is charged to the rate limits without a
        wait, its debt holding back the next call."""
        items = list(datagrams)
        sock = self._sock
        sizes = datagram_sizes(items, sock.max_datagram_size)
        paid = self._paid
        timeout = sock.gettimeout()
        nowait = timeout == 0
        deadline = None if timeout is None or nowait else time.monotonic() + timeout
        queued = start = 0
        while start < len(items):
            try:
                paid.wait_debt(nowait, deadline)
                count, reserved = paid.reserve_datagrams(sock, sizes, start, nowait, deadline)
            except (BlockingIOError, DTPTimeoutError):
                if start:
                    return queued  # (the first ones went: a short count, as send's)
                raise
            if not count:
                # the connection ended: the socket's own call says how
                return queued + sock.send_datagrams(items[start:])
            try:
                sent = sock.send_datagrams(items[start : start + count])
            finally:
                paid.sent(reserved)
            queued += sent
            # the limits charged for the queued ones alone, as send() charges what went
            # (the credit the dropped ones took comes back at the gate's next look)
            paid.limit(
                sum(map(datagram_charge, sizes[start : start + sent])),
                hold=deadline is None and not nowait,
            )
            start += count
        return queued

    def recv_datagram(self, timeout: float | Literal["socket"] | None = "socket") -> bytes:
        """:meth:`dtp.socket.DTPSocket.recv_datagram`, after waiting while paused (the
        datagram is in the usage since it arrived), then within the rate limits."""
        data = self._sock.recv_datagram(self._paid_within(timeout))
        self._paid.throttle(datagram_charge(len(data)))
        return data

    def recv_datagrams(
        self, max_count: int = 1024, timeout: float | Literal["socket"] | None = "socket"
    ) -> list[bytes]:
        """:meth:`dtp.socket.DTPSocket.recv_datagrams`, as :meth:`recv_datagram`."""
        batch = self._sock.recv_datagrams(max_count, self._paid_within(timeout))
        self._paid.throttle(sum(map(datagram_charge, map(len, batch))))
        return batch

    def _paid_within(
        self, timeout: float | Literal["socket"] | None
    ) -> float | Literal["socket"] | None:
        """Wait while the connection is paused for payment, within a receive's
        ``timeout`` (as recv_datagram takes it); returns what is left of it for the
        receive itself (the pause comes out of it: tests/paid/test_datagrams.py)."""
        paid = self._paid
        if paid.credit.read > 0:
            return timeout
        began = time.monotonic()
        paid.wait_paid(self._sock, timeout)
        return _left_of(self._sock, timeout, began)

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
        6.1: without it the usage since the last receipt would go unpaid)."""
        sock = self._sock
        if _ends_connection(sock):
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
        raise not_forwarded(self, name)

    def __repr__(self) -> str:
        return f"<PaidSocket of {self._sock!r}>"


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
