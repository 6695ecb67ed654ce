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

from dtp.errors import ChainError, DTPError, DTPTimeoutError, PaymentRequired
from dtp.hostid.paid._engine import (
    Close,
    PaidConnectionEngine,
    PaidConnectionState,
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
from dtp.payments._gate import RECEIPT_REQUEST, GateState, GateVerdict, ReceiptGate
from dtp.payments._ratelimit import ClientBuckets, datagram_charge
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.transport.blocking._checks import (
    SSIZE_MAX,
    check_sendfile,
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


class PaidConnection(PaidConnectionState):
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
        named = (sock.peer_connection_id or "", sock.peer_address or "")
        super().__init__(gate, buckets, policy, writer, ledger, *named)
        self.sock = sock
        # the engine is the connection's I/O driver; the paid layer waits on it while
        # paused, as the socket's own calls do (the one place it is taken from the
        # socket: the rest goes through ended(), wake(), abort() and attach())
        self.engine = sock.layer.driver
        self.limit_lock = limit_lock
        # (the credit is what may move before the gate is asked again, under _cond
        # where writes take from it; taken as ``with self._lock``, its condition's own
        # lock: Condition's __enter__ and __exit__ are two Python calls each, several
        # times a request)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
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

    # (blocking only: the server reads the end of the session here; asyncio's off proto)
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
        """Payment came: a pause of datagram sends may end
        (:meth:`~dtp.hostid.paid._engine.PaidConnectionEngine.datagrams_covered_again`)."""
        if self.core.unpaid_datagrams_since is None:
            # no pause: the engine lock is not taken, so that the receipt writer's
            # thread never waits on it (a server's release holds it waiting for that writer)
            return
        engine = self.engine
        # under the engine lock, which a waiting datagram send holds across its step: no
        # step judges by a pause a payment ended (tests/paid/test_datagram_pause_rule.py)
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
        """Return when the receipts cover the usage; meanwhile move nothing (no
        flow-control credit goes back) and ask for a receipt; PaymentRequired, the
        connection closed, when none comes within the pause timeout. A pause is waited
        out within ``timeout`` (``"socket"``: ``sock``'s), then raises as the unpaid call
        would (:meth:`_look_at_gate`)."""
        if self.credit.read > 0:
            return  # within what the gate allowed at its last look
        self._look_at_gate(False, 0, sock, timeout)

    def wait_send(
        self, sock: DTPSocket, nowait: bool = False, deadline: float | None = None
    ) -> None:
        """:meth:`wait_paid` for a write on ``sock`` (then :meth:`reserve`): queued bytes
        and a pause are waited for within ``sock``'s timeout, as a plain send waits.
        ``nowait``: one look, then BlockingIOError when the credit covers none of it;
        ``deadline`` (monotonic): the call's own end in place of the timeout (sendall)."""
        if self.credit.send > 0:
            return
        start = time.monotonic()
        timeout: float | Literal["socket"] = (
            "socket" if deadline is None else max(0.0, deadline - start)
        )
        first = sock.stream_id == 0  # (its bytes may make the first stream's request)
        while not self._look_at_gate(
            True, 0, sock, timeout, start, nowait=nowait, ends=deadline, first=first
        ):
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
        first: bool = False,
    ) -> bool:
        """One look at the gate for :meth:`wait_paid` / :meth:`wait_send`
        (``writing``; ``first``: on the first stream, its request counted ahead): False
        when writes under way or queued hold all the credit, so the writer looks again.
        ``whole``: bytes that cannot go in part, judged as in the usage already. A pause
        is waited out within the call's timeout from ``began`` (None ``sock``: to its
        end), then raises as the unpaid call would; ``ends`` bounds the wait for writes."""
        total_bytes, total_requests = self.engine.conn.usage
        if self.gate.serving(total_bytes + whole, total_requests):
            return self._refill(writing, whole, nowait, ends, first)
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
        return self._refill(writing, whole, nowait, ends, first)

    def read_deposit(self, *, ending: bool = False) -> None:
        """Read the escrow again when the gate wants it
        (:meth:`~dtp.hostid.paid._engine.PaidConnectionEngine.escrow_to_read`), so that a
        client that topped up is served on rather than held to the old deposit. Without
        the engine lock (a ledger read). ``ending``: also whenever a receipt waits above
        the deposit, or the settlement claims an older one
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
        self,
        writing: bool,
        whole: int = 0,
        nowait: bool = False,
        deadline: float | None = None,
        first: bool = False,
    ) -> bool:
        """Set the credit to what the gate allows, for writes less the bytes under way
        or queued; False when they hold all of it (or too much for ``whole``), after
        waiting up to ``request_interval`` for some to go (``nowait``: one look;
        ``deadline``: no later)."""
        engine = self.engine
        wait = self.policy.request_interval
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        if not writing:
            self.credit.read = self.core.read_credit(engine.conn.usage)
            return True
        with self._lock:
            # usage and queue first, then what is under way, all under this lock: a write that
            # ends in between (in them, not yet released) is counted twice, never not
            # at all
            with engine.lock:
                usage = engine.conn.usage
                queued = engine.conn.send_buffered()
                ended = self.ended()
                pending = engine.conn.requests_pending if first else 0
            step = self.core.refill_send(
                self.credit, usage, queued, whole, ended=ended, pending=pending
            )
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
        with self._lock:
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
        """Wait (as :meth:`wait_send`) until the credit covers ``sizes[start]`` whole,
        then take as many datagrams as it covers (:meth:`Credit.reserve_datagrams`):
        (how many, their bytes under way until :meth:`sent`); (0, 0) once ended."""
        first = sizes[start]
        began = time.monotonic()
        timeout: float | Literal["socket"] = (
            "socket" if deadline is None else max(0.0, deadline - began)
        )
        while True:
            with self._lock:
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
        with self._lock:
            self.credit.sent(reserved)
            if self._waiters:
                self._cond.notify_all()

    def room(self, nbytes: int) -> int:
        """How much of a read of ``nbytes`` may go now (after :meth:`wait_paid`); short of
        the cached credit the gate is asked again first
        (tests/paid/test_receipt_gate_read_room.py)."""
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
        """Return once neither rate limit is in debt (``nowait``: BlockingIOError;
        ``deadline``: DTPTimeoutError): a datagram goes whole, so it waits for the debt
        alone, not for a take as stream bytes do (:meth:`pace`)."""
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
        """How much of ``nbytes`` goes now under the bytes/s limit, once the bucket holds
        its take (waits as :meth:`wait_debt`, nothing charged on a raise); unlimited:
        all at once, no clock read, no lock."""
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
        # a wait the connection's end cuts short (a sleep would hold the settlement
        # after the client had gone), looked at again each refresh interval (hold_wait)
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

    def received(self, batch: list[bytes]) -> int:
        """How many of ``batch`` go to the application now
        (:meth:`~dtp.hostid.paid._engine.PaidConnectionEngine.datagrams_received`, under
        the engine lock); the rest are read again once paid for. At an unpaid end they
        are dropped, so the next read reports the end rather than take them again."""
        engine = self.engine
        with engine.lock:
            queue = engine.session.datagrams
            usage = engine.conn.usage
            count = self.core.datagrams_received(usage, batch, queue)
            if count < len(batch):
                if self.ended() and not self.gate.serving(*usage):
                    queue.clear()
                else:
                    queue.extendleft(reversed(batch[count:]))
        if count < len(batch):
            with self._lock:
                self.credit.void()
        if count:
            self.credit.spent(sum(map(len, batch[:count])))
        return count

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
    """What is left of a receive's ``timeout``, begun at ``began``, after it waited for
    payment: the call lasts no longer than its timeout (None and "socket" as they are)."""
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
        the rate limits: sends at most what the gate still allows; returns how much.

        ``flags``: 0, or ``socket.MSG_DONTWAIT`` to wait for nothing, payment included:
        when the credit covers none of the send now (paused, or held by writes under
        way or queued) or the rate limits would hold it back, the call looks once at
        what came (a paused connection asks for a receipt and reads the escrow again, at
        most once a second) and raises BlockingIOError, nothing sent or charged. What it
        sends is charged to the rate limits without a wait, the debt holding back the
        next call. Other flags raise as the socket's send does; an empty send returns 0.

        A non-blocking socket sends as MSG_DONTWAIT does; a positive timeout bounds
        every wait of the call, payment and the rate limits included (DTPTimeoutError,
        nothing sent or charged)."""
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
        """Send all of ``data`` through :meth:`send`, piece by piece; the timeout bounds
        the whole call, as :meth:`dtp.socket.DTPSocket.sendall`'s does."""
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
        """:meth:`dtp.socket.DTPSocket.sendfile` through :meth:`send`, piece by piece, so
        that the gate and the rate limits act between the pieces (the wrapped socket's
        would pass them). Returns the bytes sent; the timeout bounds each piece."""
        check_sendfile(file, offset, count, self._sock.gettimeout())
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
        (in runs the credit covers): all of them, or none on a TypeError or
        LocalProtocolError for any one. Returns how many were queued; those the
        carrier's backlog drops are not charged to the rate limits.

        A non-blocking socket waits for nothing, as :meth:`send`; a positive timeout
        bounds all the waits together. Either way it returns how many of the first ones
        went when some did, else raises (BlockingIOError; DTPTimeoutError): the rest are
        neither sent nor charged."""
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
        datagram is in the usage since it arrived: one that took it past what the gate
        serves waits for payment, :meth:`PaidConnection.received`), then within the
        rate limits."""
        return self._received(timeout, None)[0]

    def recv_datagrams(
        self, max_count: int = 1024, timeout: float | Literal["socket"] | None = "socket"
    ) -> list[bytes]:
        """:meth:`dtp.socket.DTPSocket.recv_datagrams`, as :meth:`recv_datagram`: the
        first datagrams the credit covers, the rest queued."""
        return self._received(timeout, max_count)

    def _received(
        self, timeout: float | Literal["socket"] | None, max_count: int | None
    ) -> list[bytes]:
        """The datagrams a receive hands out (``max_count``; None: one): it waits while
        paused, within ``timeout`` (tests/paid/test_datagrams.py), takes what came, and
        waits again while the credit covers none of it (judged as taken: one that came
        meanwhile may be past what the gate serves)."""
        sock = self._sock
        paid = self._paid
        began = time.monotonic()
        left = timeout
        if paid.credit.read <= 0:
            paid.wait_paid(sock, timeout)
            left = _left_of(sock, timeout, began)
        while True:
            if max_count is None:
                batch = [sock.recv_datagram(left)]
            else:
                batch = sock.recv_datagrams(max_count, left)
            count = paid.received(batch)
            if count:
                break
            paid.wait_paid(sock, _left_of(sock, timeout, began))
            left = _left_of(sock, timeout, began)
        if count < len(batch):
            del batch[count:]
        # (the rate limits only: received() spent their bytes from the read credit)
        paid.limit(sum(map(datagram_charge, map(len, batch))))
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
