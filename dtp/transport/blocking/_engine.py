"""The blocking transport's engine: one connection over one carrier socket, driven by
whichever thread waits. :class:`Engine` is here whole: what it knows of itself, the
carrier writes, the carrier reads and the lent lane, the pump and its wakes, and its
lifetime (the timer thread, the close, the abort). Below it, :class:`TimerService`, the
timer thread every engine of the process shares (one, started on demand): keepalives,
idle timeouts and the closes no caller waits for."""

from __future__ import annotations

import atexit
import contextlib
import heapq
import logging
import os
import select
import socket as _socket
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from dtp.errors import CLOSE_PAYMENT_REQUIRED, DTPError, DTPTimeoutError, PaymentRequired
from dtp.native.types import DUE, EOF, FULL, NEED_MORE, OK, STOP, WAIT, WAKE
from dtp.protocol._state import SendState
from dtp.protocol.connection import DATAGRAM_SEND_BACKLOG, CloseCode
from dtp.transport._session import CARRIER_DRAIN, FIRST_RECV_CHUNK, RECV_CHUNK, UNSENT, Session
from dtp.transport.blocking import LINGER, sched

if TYPE_CHECKING:
    from dtp.transport._hooks import ConnectionHook

LOSSY_LINGER = 30.0  # the same over a lossy carrier (the ledger), where acks are slow


_IOV_MAX = 512  # buffers per sendmsg (Linux allows 1024)

# Buffers queued for the carrier beyond which a datagram is dropped whatever their size
# (each datagram sent while the carrier is full queues one): their sum stays cheap.
_BACKLOG_ENTRIES = 256

CREDIT_READ = 4096  # a sender's read for credit records (any stream data goes to the connection)
# Seconds a blocking write out of credit waits in the lane for the reader's next credit
# before it queues its bytes on the stream instead (wait_lent_credit): a reader that
# keeps up returns credit every quarter window, well within this; one that does not
# leaves the write to queue this much later.
CREDIT_WAIT = 0.02
READ_FIRST_SKIP = 8  # reads that wait at once after a read found nothing waiting

_READ_ON = frozenset((WAIT, NEED_MORE, OK))  # lent read statuses that wait and read again

_WAITED = frozenset((WAIT, NEED_MORE))  # ... of those, the ones after which time may be up

logger = logging.getLogger("dtp.transport.blocking._engine")

DRAIN_QUIET = 0.02  # seconds a closing carrier waits for more of the peer's bytes


# --------------------------------------------------------------------------------------
# the wake-up descriptor: how a thread makes the one waiting on the carrier (in ``poll``,
# or in the C lane's ``dtp_wait_readable``) look at its conditions again. On Linux an
# ``eventfd``: one descriptor, about 2.5 us to make and close, where a socket pair took
# two and about 12 us (docs/benchmark-history.md, "The transport's own connect and
# accept paths"); a simulated scheduler (``sched.install``) gets its own ``socketpair``.

_EVENTFD = hasattr(os, "eventfd")


class Waker:
    """The interface: ``fileno`` (-1 once closed), ``wake``, ``take``, ``close``."""

    __slots__ = ()

    def fileno(self) -> int:
        raise NotImplementedError

    def wake(self) -> None:
        """Make the descriptor readable (from any thread; after close, nothing)."""
        raise NotImplementedError

    def take(self) -> bool:
        """Make it quiet again: the wakes so far are seen. Whether there was one."""
        raise NotImplementedError

    def close(self) -> None:
        """Close it (once; again, nothing), waking a thread that waits on it."""
        raise NotImplementedError


class _EventWaker(Waker):
    __slots__ = ("_fds",)

    def __init__(self) -> None:
        # (a list taken with one pop, a single step under the GIL: of two threads
        # closing at once -- a release and a collected socket's close -- one closes)
        self._fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)]

    def fileno(self) -> int:
        fds = self._fds
        return fds[0] if fds else -1

    def wake(self) -> None:
        fds = self._fds
        if fds:
            with contextlib.suppress(OSError, IndexError):
                os.eventfd_write(fds[0], 1)

    def take(self) -> bool:
        fds = self._fds
        try:
            return bool(os.eventfd_read(fds[0]))
        except (OSError, IndexError):  # (BlockingIOError: no wake; IndexError: closed)
            return False

    def close(self) -> None:
        try:
            fd = self._fds.pop()
        except IndexError:
            return
        # a wake first: a thread polling it holds the file open past our close and
        # would sleep on (the pair's close woke it: its other end's hang-up)
        try:  # noqa: SIM105 (cheaper than contextlib.suppress, per connection)
            os.eventfd_write(fd, 1)
        except OSError:
            pass
        try:  # noqa: SIM105 (cheaper than contextlib.suppress, per connection)
            os.close(fd)
        except OSError:
            pass


class _PairWaker(Waker):
    __slots__ = ("_r", "_w")

    def __init__(self) -> None:
        self._r, self._w = sched.socketpair()
        try:
            self._r.setblocking(False)
            self._w.setblocking(False)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self._r.fileno()

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._w.send(b"\0")

    def take(self) -> bool:
        try:
            return bool(self._r.recv(4096))
        except OSError:
            return False

    def close(self) -> None:
        for s in (self._r, self._w):
            with contextlib.suppress(OSError):
                s.close()


def make_waker() -> Waker:
    """A new wake-up descriptor: an eventfd under the operating system's scheduler,
    else the installed scheduler's socket pair. OSError when out of descriptors."""
    if _EVENTFD and sched.socketpair is _socket.socketpair:
        return _EventWaker()
    return _PairWaker()


class AheadKeys(Protocol):
    """The next connect's keys still to make (``connect.NextConnectKeys``, which
    imports this module): made a step at a time while the engine would wait."""

    def make(self, carrier: _socket.socket | None = None) -> bool: ...


class Engine:
    """One connection over one carrier socket, shared by the connection's streams."""

    def __init__(self, sock: _socket.socket, session: Session, name: str) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.session = session
        self.conn = session.conn
        self.name = name
        session.name = name  # (its logs name the connection)
        # its locks, its timer service and its lending: the scheduler's (sched), the
        # operating system's unless a simulation installed its own
        self.timers = sched.timers
        self.lending = sched.lending
        self.lock = sched.Lock()
        self.cond = sched.Condition(self.lock)
        self.pumping = False
        # the pumping thread's own pass runs (lock held): what its flushes leave queued
        # it waits on next, so they wake no one -- a wake to itself would end its wait
        # at once (test_socket_end_to_end.py::test_a_sender_waiting_for_a_full_carrier_sleeps)
        self.own_pass = False
        self.out: list[memoryview] = []
        self.carrier_closed = False
        self.closed = False
        # the carrier's read buffer starts small (a short connection never pays for
        # zeroing RECV_CHUNK) and doubles whenever a read fills it
        self._rbuf = bytearray(FIRST_RECV_CHUNK)
        self._rview = memoryview(self._rbuf)
        self._recv_scratch: memoryview | None = None  # recv()'s buffer, made on first use
        self._fd = sock.fileno()
        self._read_first_skip = 0  # reads to go before recv_lent tries one without waiting
        self._waker = make_waker()  # (an eventfd: _wake.py)
        self._wake_fd = self._waker.fileno()
        self.waiters = 0  # threads blocked in cond.wait: notify only when there are some
        # streams whose next (or current) blocking read ends in DTPTimeoutError at once
        # (DTPSocket.interrupt_recv)
        self.interrupted: set[int] = set()
        self.linger = LINGER if session.conn.config.reliable_carrier else LOSSY_LINGER
        # the first stream was reset (DTPSocket.reset): shutdown() waits for no reader
        self.abandoned = False
        self.hook: ConnectionHook | None = None  # a layer above (a metered client: dtp.hostid)
        # a server's: half-close the carrier once the peer closed the connection, nothing
        # being left to do at its end (Reservations.ends_carriers; see _end_carrier)
        self.ends_carrier = False
        self.timer_started = False  # (start_timer: one entry in the timer heap, ever)
        # a server's accepted connection holding one of its accept() queue's places
        self.holds_place = False
        # the next connect's keys still to make (NextConnectKeys), made while we would
        # wait on the carrier (_make_ahead)
        self.ahead: AheadKeys | None = None
        # run once as the engine is released (lock held: it must not block), or handed
        # to the timer thread by DTPSocket.__del__; a list, taken with one pop (a single
        # step under the GIL), so that whichever of the two comes first runs it, once
        self.on_release: list[Callable[[], None]] = []
        # streams whose sockets were garbage-collected unclosed (DTPSocket.__del__): they
        # are closed at the next I/O, under the lock (see _close_dropped)
        self.dropped: deque[int] = deque()
        try:
            self.peername = sock.getpeername()
            self.sockname = sock.getsockname()
        except OSError:
            self.peername = self.sockname = None

    # -- output: the carrier writes ------------------------------------------------------------

    def _send_some(self) -> None:
        """Write what the socket takes now, without blocking."""
        out = self.out
        if len(out) > 1 and not self.carrier_closed:
            # many buffers (records sealed in several calls): one writev, not one
            # send each
            try:
                n = self.sock.sendmsg(out[:_IOV_MAX])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._carrier_failed(exc)
                return
            while out and n >= len(out[0]):
                n -= len(out.pop(0))
            if n:
                out[0] = out[0][n:]
                return
        while out and not self.carrier_closed:
            head = self.out[0]
            try:
                n = self.sock.send(head)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._carrier_failed(exc)
                return
            if n == len(head):
                self.out.pop(0)
            else:
                self.out[0] = head[n:]
                return

    def flush(self) -> None:
        """Collect the connection's output and write what fits; lock held."""
        now = sched.monotonic()
        if self.hook is not None:
            self.hook.on_output(now)
        data = self.conn.data_to_send(now)
        if data:
            self.write(memoryview(data))
        elif self.out:
            self._send_some()
            if self.out and self.pumping and not self.own_pass:
                self._wake()

    def write(self, data: memoryview, reused: bool = False) -> None:
        """Write records after those queued: straight to the socket when none are (the
        common case), queueing only what it does not take now -- as a copy when
        ``reused`` (records the lane sealed into a buffer it writes over next time)."""
        if self.carrier_closed:
            return  # nothing will go out any more
        if not self.out:
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._carrier_failed(exc)
                return
            if n == len(data):
                return
            data = data[n:]
        self.out.append(memoryview(data.tobytes()) if reused else data)
        self._send_some()
        if self.out and self.pumping and not self.own_pass:
            self._wake()

    def backlog(self) -> int:
        """Bytes queued for the carrier that it has not taken, after offering them to it
        once more (lock held): what a datagram would wait behind. Only for when
        :attr:`out` is not empty. The sum runs over at most _BACKLOG_ENTRIES buffers
        (beyond that, ``DATAGRAM_SEND_BACKLOG``: full), so a datagram sent while the
        peer is stalled costs little even when it is dropped."""
        self._send_some()
        out = self.out
        if len(out) > _BACKLOG_ENTRIES:
            return DATAGRAM_SEND_BACKLOG
        return sum(map(len, out))

    def queued_output(self) -> bool:
        """Whether bytes wait to go out (lock held): records a full carrier did not
        take, or stream data the peer's flow control holds back."""
        return not self.carrier_closed and bool(self.out or self.conn.send_buffered())

    def leave_queued(self, stream_id: int) -> None:
        """A write on ``stream_id`` is returning to its caller (lock not held): if it
        leaves bytes queued, the timer thread watches the carrier for the credit or room
        that lets them out -- the application may not call in again for a long time."""
        # a look without the lock first (a list's and one stream's counts): the usual
        # write leaves nothing queued, and a lock per send() cost pipelined RPC 10 %
        if not self.out and not self.conn.send_buffered(stream_id):
            return
        with self.lock:
            queued = not self.closed and self.queued_output()
        if queued:
            self.timers.watch(self)

    def tick_meter(self) -> None:
        """A connection with a hook after a send (lock held): let the hook act when it
        may have something to do (ConnectionHook.quiet_bytes / quiet_until), and write
        what it queued -- which took the stream back -- without taking a lent stream
        back on every send."""
        hook = self.hook
        assert hook is not None
        now = sched.monotonic()
        # (the usage, datagrams included: the lane's counts alone would miss those)
        if self.conn.used_bytes() < hook.quiet_bytes and now < hook.quiet_until:
            return
        hook.on_output(now)
        if self.conn.lent_lane is None:
            self.flush()

    # -- reads: the carrier and the lent lane --------------------------------------------------

    def _read_available(self) -> bool:
        """Read what has arrived, without blocking; True if anything was read (or the
        carrier ended)."""
        # recv_into one reused buffer: a fresh 256 KiB object per recv() is an mmap,
        # page faults and an munmap every time (above malloc's mmap threshold)
        buf, view = self._rbuf, self._rview
        got = False
        for _ in range(64):  # bounded: give other work a turn on a firehose
            try:
                n = self.sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return got
            except OSError as exc:
                self._carrier_failed(exc)
                return True
            if not n:
                self._carrier_failed(None)
                return True
            got = True
            self.conn.receive_data(view[:n], sched.monotonic())
            if n < len(buf):
                return True
            if len(buf) < RECV_CHUNK:
                buf, view = self._grow_rbuf()
        return True

    def _grow_rbuf(self) -> tuple[bytearray, memoryview]:
        """A read filled the buffer: double it for the next ones."""
        self._rbuf = bytearray(min(2 * len(self._rbuf), RECV_CHUNK))
        self._rview = memoryview(self._rbuf)
        return self._rbuf, self._rview

    def read_fast(self, stream_id: int, dst: memoryview) -> int:
        """One non-blocking read of the carrier (lock held), with ``stream_id``'s next
        bytes going straight into ``dst``: returns how many landed there. Everything
        else the read brought takes the general path (the streams' buffers, events).
        Only for a stream with nothing buffered: those bytes would come first."""
        if self.carrier_closed:
            return 0
        try:
            n = self.sock.recv_into(self._rbuf)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self._carrier_failed(exc)
            return 0
        if not n:
            self._carrier_failed(None)
            return 0
        view = self._rview
        if n == len(view) and n < RECV_CHUNK:
            self._grow_rbuf()  # the next read may take more (this one is still in view)
        taken, attention = self.conn.take_fast(view[:n], stream_id, dst, sched.monotonic())
        if attention:
            self._after_io()
            if self.pumping:
                # another thread waits on the carrier (lock released): what we read may
                # be what it waits for, and it would not see the socket readable again
                self._wake()
        return taken

    def recv_scratch(self, size: int) -> memoryview:
        """A buffer of ``size`` bytes (at most RECV_CHUNK) for recv() to read into
        before copying out (lock held). Sized by the calls made: a connection that only
        ever asks for 100 bytes never pays for zeroing 256 KiB."""
        size = min(size, RECV_CHUNK)
        scratch = self._recv_scratch
        if scratch is None or len(scratch) < size:
            have = 0 if scratch is None else len(scratch)
            scratch = self._recv_scratch = memoryview(bytearray(max(size, 2 * have, 4096)))
        return scratch[:size]

    def lend(self, stream_id: int) -> Any:
        """The connection's lane with ``stream_id`` lent to it (lock held), or None when
        the connection cannot lend it now. (A metered client's meter reads the loan's
        counts through Connection.usage, and its sends tick it: tick_meter.)"""
        conn = self.conn
        if conn.lent_stream_id == stream_id:
            return conn.lent_lane
        if self.carrier_closed or self.closed or not self.lending:
            return None  # (not lending: a simulation's clock, which the lane's C code cannot read)
        # the lane takes the stream's bytes only while nothing is buffered for it (the
        # buffer's bytes come first), so a lent stream that may receive has none
        return conn.lend(stream_id, sched.monotonic(), not self.session.readable(stream_id))

    def recv_lent(self, stream_id: int, dst: Any, timeout: float | None) -> int:
        """Wait for the carrier and read it (lock held), with ``stream_id``'s next bytes
        going straight into ``dst`` through the lent lane: one C call per read, while
        the stream's records come in order (a read that ends inside a record keeps its
        start in the lane for the next). Returns how many bytes landed in ``dst``; 0
        when the general path must go on (nothing taken, the loan ended, another
        thread wants attention, a timer is due). Raises DTPTimeoutError when
        ``timeout`` passes with nothing read."""
        if self.pumping:
            return 0  # another thread reads the carrier: do not take its loan away
        conn = self.conn
        lane = conn.lent_lane if conn.lent_stream_id == stream_id else self.lend(stream_id)
        if lane is None or not conn.lent_can_recv:
            return 0
        return self.read_lent(lane, stream_id, dst, timeout)

    def read_lent(self, lane: Any, stream_id: int, dst: Any, timeout: float | None) -> int:
        """:meth:`recv_lent` once the stream is known to be lent and no other thread
        pumps. ``dst``: a writable buffer, or the size of a read into ``lane.own``.
        0 at once while records a full carrier did not take are queued: the lane's
        waits only read, so the peer could wait for them while we wait for it (the
        general path's wait writes them)."""
        if self.out:
            return 0
        # What we wait for has often arrived already (a reply that came while we were
        # sending): a read first saves the wait's syscall. Where it usually has not (a
        # server waiting for the next request), the read first is tried only now and
        # then.
        if self._read_first_skip:
            self._read_first_skip -= 1
        else:
            try:
                n: int = lane.recv(self._fd, dst)
            except OSError as exc:
                self._carrier_failed(exc)
                return 0
            if n:
                return n
            status = lane.status
            if status == WAIT:
                self._read_first_skip = READ_FIRST_SKIP
            elif status != NEED_MORE:
                deadline = None if timeout is None else sched.monotonic() + timeout
                return self._recv_lent_wait(lane, stream_id, dst, deadline, status)
        # nothing (or the start of a record) came: wait
        deadline = None if timeout is None else sched.monotonic() + timeout
        return self._recv_lent_wait(lane, stream_id, dst, deadline, WAIT)

    def _recv_lent_wait(
        self, lane: Any, stream_id: int, dst: Any, deadline: float | None, status: int
    ) -> int:
        """:meth:`recv_lent` after a read that took nothing (``status``), until the
        monotonic ``deadline`` (None: none)."""
        conn = self.conn
        while True:
            if status in _READ_ON:
                # (only here, before a wait: a status below has bytes the lane took from
                # the carrier and the connection must take back -- raised past, they
                # would be lost, and the stream after them out of order)
                if self.interrupted:
                    self.take_interrupt(stream_id)
                if self.ahead is not None:
                    self._make_ahead()  # (the wait below returns at once if input came)
                until = conn.lent_timer
                if deadline is not None and (until is None or deadline < until):
                    until = deadline
                ms = -1 if until is None else max(0, int((until - sched.monotonic()) * 1000) + 1)
                # the lock is released for the wait only; meanwhile other threads leave
                # the carrier to us (pumping) but may end the loan: the read then takes
                # nothing
                self.pumping = True
                try:
                    n: int = lane.wait_read(self.lock, self._fd, self._wake_fd, ms, dst, stream_id)
                except OSError as exc:
                    self._carrier_failed(exc)
                    return 0
                finally:
                    self.pumping = False
                    if self.waiters:
                        self.cond.notify_all()
                if n:
                    return n
                status = lane.status
                if status in _WAITED:
                    # the wait timed out, was interrupted, or brought part of a record
                    now = sched.monotonic()
                    if deadline is not None and now >= deadline:
                        raise DTPTimeoutError("timed out")
                    if until is not None and now >= until:
                        return 0  # a timer is due
                continue
            if status == WAKE:
                # another thread wants the general path, or took the lane; the wake is
                # for the thread waiting on the carrier, us: taken here, as _pump_once
                # takes it, or each of our waits would return at once until the general
                # path's next pump
                self._take_wake()
                if self.out:
                    # records a full carrier did not take: written now, the timer thread
                    # waiting for room for the rest (our caller may not call again for a
                    # long time)
                    self._send_some()
                    if self.out:
                        self.timers.watch(self)
                return 0
            if status == EOF:
                self._carrier_failed(None)
                return 0
            # something the lane does not take (or the loan ended meanwhile): the
            # connection goes on from there
            rx = lane.flow.rx
            taken: int = rx.taken
            if status == DUE:
                # all taken, but credit is owed: sealed in the loan, which goes on, unless a
                # meter hooks the output (the general path's); else the connection sends it
                # (what the lane keeps pending goes to it, and back with the next loan)
                now = sched.monotonic()
                if self.hook is None and (credit := conn.lent_credit(now)) is not None:
                    self.write(memoryview(credit))
                    return taken
                conn.take_back(now)
            else:
                spill = lane.flow_spill() if status == FULL and rx.spill_len else b""
                conn.take_back(sched.monotonic(), spill, lane.rview[rx.consumed : lane.io.end])
            self._after_io()
            return taken

    def take_lent_credit(self, lane: Any) -> bool:
        """The lent stream sealed nothing for want of credit (lock held): read the
        carrier once through the lane, which takes the peer's credit records as it takes
        the stream's data. True when only those came (or the start of a record), so the
        lane may seal again; False when the general path goes on: nothing came, or
        something the lane hands to the connection (which then has it)."""
        conn = self.conn
        if self.pumping or self.waiters or self.out or not lane.flow.take_credit:
            # (another thread reads the carrier, or waits on what the general path's
            # reads tell it; or the lane may not take credit: Connection.lend)
            return False
        try:
            n: int = lane.recv(self._fd, CREDIT_READ)
        except OSError as exc:
            self._carrier_failed(exc)
            return False
        status = lane.status
        if not n and status in (OK, NEED_MORE):
            return True
        if status == WAIT:
            return False
        if status == EOF:
            self._carrier_failed(None)
            return False
        # the stream's own bytes (the reader's next: as unread), or a record the lane
        # does not take (the general path's next)
        rx = lane.flow.rx
        data = bytes(lane.own[: rx.taken])
        rest: Any = b""
        if status in (FULL, STOP):
            if status == FULL and rx.spill_len:
                data += bytes(lane.flow_spill())
            rest = lane.rview[rx.consumed : lane.io.end]
        conn.take_back(sched.monotonic(), data, rest)
        self._after_io()
        return False

    def wait_lent_credit(self, lane: Any, stream_id: int, deadline: float) -> bool:
        """The lent stream ``stream_id`` sealed nothing for want of credit, and the
        carrier held none (lock held): wait for the carrier until the monotonic
        ``deadline``, then take what came as :meth:`take_lent_credit` does. True when
        the lane may seal again; False when the general path goes on: nothing came in
        time, another thread wants the connection, or the loan ended.

        A bulk writer whose reader keeps up runs out of credit every few MiB and has it
        back a moment later: waiting here keeps its bytes in the lane, where queued on
        the stream they would be copied, sealed by the general path and watched by the
        timer thread until the credit came. The wait flushes nothing, so the loan lasts
        through it (a flush takes the stream back)."""
        if self.pumping or self.waiters or self.out or self.carrier_closed:
            return False
        if not lane.flow.take_credit:
            return False  # (the lane may not take the credit: Connection.lend)
        wait = deadline - sched.monotonic()
        if wait <= 0:
            return False
        waker = self._waker
        rlist: list[Any] = [waker, self.sock]
        self.pumping = True  # (other threads leave the carrier to us, and wake us)
        self.lock.release()
        try:
            r, _ = sched.wait_ready(rlist, [], wait)
        except (OSError, ValueError):
            r = []  # (a failed carrier: the general path's next look reports it)
        finally:
            self.lock.acquire()
            self.pumping = False
            if self.waiters:
                self.cond.notify_all()
        if waker in r:
            waker.take()
            return False  # another thread wants the general path
        if not r or self.conn.lent_lane is not lane or self.conn.lent_stream_id != stream_id:
            return False
        return self.take_lent_credit(lane)

    def take_interrupt(self, stream_id: int) -> None:
        """Raise DTPTimeoutError when a read of ``stream_id`` was interrupted (lock
        held; the interruption is used up)."""
        if stream_id in self.interrupted:
            self.interrupted.discard(stream_id)
            raise DTPTimeoutError("interrupted (interrupt_recv)")

    # -- waits: the pump and its wakes ---------------------------------------------------------

    def _carrier_failed(self, exc: BaseException | None) -> None:
        if self.carrier_closed:
            return
        self.carrier_closed = True
        self.out.clear()
        # a carrier that keeps its own account of why it ended (a bridge's end:
        # BridgedEnd) says so, whichever read saw the end, as the asyncio driver's
        # connection_lost prefers it
        lost = getattr(self.sock, "lost_error", None)
        failure = lost() if callable(lost) else None
        if failure is not None:
            exc = failure
        if self.closed:  # (only DTPSocket.__del__ leaves a closed engine's carrier open)
            what = "the connection's first socket was garbage-collected without close()"
        elif exc:
            what = f"carrier error: {exc}"
        else:
            what = "the peer vanished (carrier closed)"
        logger.debug("%s: %s", self.name, what)
        self.session.carrier_lost(what, exc)  # (the cause of what our calls raise)
        self.session.process_events()

    def _wake(self) -> None:
        self._waker.wake()

    def _take_wake(self) -> None:
        """Quiet the wake descriptor: the wakes so far are seen (lock held, by the
        thread that waited on the carrier)."""
        self._waker.take()

    def wake_waiters(self) -> None:
        """Make every thread waiting on the connection look at its condition again
        (lock held): the one waiting on the carrier, and those waiting for it."""
        if self.pumping:
            self._wake()
        if self.waiters:
            self.cond.notify_all()

    def wait_io(self, deadline: float | None) -> None:
        """Wait (lock held on entry and exit) until the carrier may have bytes to read,
        a timer is due or another thread changed something; the caller reads.
        Raises DTPTimeoutError once ``deadline`` has passed."""
        now = sched.monotonic()
        if deadline is not None and now >= deadline:
            raise DTPTimeoutError("timed out")
        if self.pumping:
            self.waiters += 1
            try:
                self.cond.wait(None if deadline is None else deadline - now)
            finally:
                self.waiters -= 1
            return
        self._pump_once(deadline, read=False)

    def pump(self, ready: Callable[[], bool], timeout: float | None) -> None:
        """Drive I/O until ``ready()`` is true; lock held on entry and exit.

        Raises DTPTimeoutError when ``timeout`` (seconds) passes first.
        """
        self.pump_until(ready, None if timeout is None else sched.monotonic() + timeout)

    def pump_until(self, ready: Callable[[], bool], deadline: float | None) -> None:
        """:meth:`pump` until the monotonic ``deadline`` (None: for good), for a call
        whose waits share one (DTPSocket._send)."""
        while not ready():
            if self.carrier_closed and not self.out:
                return  # nothing more will happen; the caller reports the outcome
            now = sched.monotonic()
            if deadline is not None and now >= deadline:
                raise DTPTimeoutError("timed out")
            if self.pumping:
                wait = None if deadline is None else deadline - now
                self.waiters += 1
                try:
                    self.cond.wait(wait)
                finally:
                    self.waiters -= 1
                continue
            self._pump_once(deadline)

    def _pump_once(self, deadline: float | None, read: bool = True) -> None:
        """Flush, wait for the carrier, then act on what happened; ``read=False``
        leaves the reading to the caller (who reads straight into its own buffer)."""
        self.pumping = self.own_pass = True
        try:
            if self.hook is not None or self.out or self.conn.has_output():
                self.flush()  # (else it would send nothing: see _after_io)
            # What we wait for has often arrived already (a reply that came while we
            # were sending): a non-blocking read first saves the wait and its syscall.
            if read and not self.carrier_closed and self._read_available():
                self._after_io()
                return
            if self.ahead is not None and not self.carrier_closed:
                self._make_ahead()
            timer = self.conn.get_timer()
            if deadline is not None and (timer is None or deadline < timer):
                timer = deadline
            wait = None if timer is None else max(0.0, timer - sched.monotonic())
            wlist = [self.sock] if self.out and not self.carrier_closed else []
            waker = self._waker
            rlist: list[Any] = [waker] if self.carrier_closed else [waker, self.sock]
            self.own_pass = False  # (another thread's flush meanwhile wakes us)
            self.lock.release()
            try:
                r, w = sched.wait_ready(rlist, wlist, wait)
            except (OSError, ValueError) as exc:
                r, w = [], []
                if not self.carrier_closed:
                    self.lock.acquire()
                    try:
                        self._carrier_failed(exc)
                    finally:
                        self.lock.release()
            finally:
                self.lock.acquire()
            self.own_pass = True
            if waker in r:
                waker.take()
            if read and self.sock in r:
                self._read_available()
            if self.sock in w:
                self._send_some()
            self._after_io()
        finally:
            self.pumping = self.own_pass = False
            if self.waiters:
                self.cond.notify_all()

    def _after_io(self) -> None:
        if self.dropped:
            self._close_dropped()
        conn = self.conn
        timer = conn.get_timer()
        if timer is not None:
            now = sched.monotonic()
            if now >= timer:
                conn.handle_timer(now)
        self.session.process_events()
        if self.hook is not None or self.out or conn.has_output():
            # (else flush would send nothing: has_output is data_to_send's own test, held
            # by tests/protocol/test_waiting_checks.py; no timer here moves with a flush)
            self.flush()
        if self.ends_carrier and self.session.terminated is not None:
            self._end_carrier()

    def _end_carrier(self) -> None:
        """The connection ended: when the peer closed it, half-close the carrier now, as
        the asyncio server closes its end, not once the application closes its socket
        (lock held). A metered client waits for that end after its CLOSE
        (ConnectionHook.close_wait): a server that only admits ends it here, so that the
        client's close does not wait out close_wait while the application holds the
        socket (tests/hostid/test_admit_only_close.py). What is still queued goes first:
        the next pass looks again."""
        if self.out and not self.carrier_closed:
            return
        self.ends_carrier = False
        ended = self.session.terminated
        if self.carrier_closed or ended is None or not ended.by_peer:
            return
        with contextlib.suppress(OSError):
            self.sock.shutdown(_socket.SHUT_WR)

    def _close_dropped(self) -> None:
        """Close the streams whose sockets were garbage-collected unclosed, as their
        close() would have (lock held): their end goes out, the peer is asked to stop
        sending, and what they left unread gives its credit back -- held for good, it
        would stall the connection's other streams. (A finalizer does no protocol
        work: DTPSocket.__del__ only queues the stream here.)"""
        session, conn = self.session, self.conn
        while self.dropped:
            sid = self.dropped.popleft()
            if session.terminated is None:
                stream = conn.streams.by_id.get(sid)
                if stream is not None and stream.send_state is SendState.OPEN:
                    with contextlib.suppress(DTPError):
                        conn.send_stream_data(sid, b"", end_stream=True)
                buf = session.streams.get(sid)
                if stream is not None and not (buf is not None and buf.eof):
                    with contextlib.suppress(DTPError):
                        conn.stop_sending(sid)
            session.discard(sid)
            session.forget(sid)

    def poll(self) -> None:
        """One non-blocking pass (lock held): read what arrived, run timers, write."""
        if self.pumping or self.closed:
            return
        self.pumping = self.own_pass = True
        try:
            if not self.carrier_closed:
                self._read_available()
            self._after_io()
        finally:
            self.pumping = self.own_pass = False
            if self.waiters:
                self.cond.notify_all()

    def _make_ahead(self) -> None:
        """Make what is left of the next connect's keys (:class:`NextConnectKeys`),
        lock held, where we would wait on the carrier now -- the rest of the connect's
        own waits had none to spare -- step by step until the carrier has something to
        read (the rest at the next wait)."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None and not ahead.make(self.sock):
            self.ahead = ahead

    # -- lifetime: the timer thread, the close, the abort --------------------------------------

    def start_timer(self) -> None:
        """Put this connection on the timer thread, once: the heap re-pushes each entry
        after its pass, so a second add would double the passes for good."""
        if not self.timer_started:
            self.timer_started = True
            self.timers.add(self)

    def shutdown(self, linger: float) -> None:
        """Close gracefully: wait up to ``linger`` for queued data, then CLOSE; over a
        lossy carrier the CLOSE's resends come out of the same ``linger``
        (_linger_closing). After ``abandoned`` (DTPSocket.reset, a TCP reset's
        counterpart) the peer's reading is not waited for here but in the background
        (_drain_detached), so that the reset and the CLOSE behind what the peer has yet
        to read still reach it."""
        with self.lock:
            if self.closed:
                return
            if self.session.terminated is None:
                end = sched.monotonic() + linger  # (the drain's patience comes out of it)
                try:  # noqa: SIM105 (cheaper than contextlib.suppress, per connection)
                    self.pump(
                        lambda: (
                            (self.conn.send_buffered() == 0 and not self.conn.awaiting_acks())
                            or self.session.terminated is not None
                        ),
                        linger,
                    )
                except DTPError:
                    pass
                if self.hook is not None:
                    # the hook's last frames go out before CLOSE, in the same write:
                    # the server wakes once for both
                    self.hook.before_close()
                self.conn.take_back(sched.monotonic())  # (a lent stream's counts)
                unread = self.conn.peer_may_send_credit()
                if (
                    (self.hook is None or not self.hook.keeps_clean_close)
                    and self.conn.send_buffered()
                    and self.session.terminated is None
                ):
                    # the linger ran out with bytes never sent: the peer must read an
                    # error, not the clean end of a stream cut short (unless the hook
                    # keeps its clean CLOSE: ConnectionHook.keeps_clean_close)
                    self.conn.close(CloseCode.APPLICATION, UNSENT)
                else:
                    self.conn.close(CloseCode.NO_ERROR, "")
                self.flush()
                try:  # noqa: SIM105 (cheaper than contextlib.suppress, per connection)
                    self.pump(lambda: not self.out, min(linger, 1.0))
                except DTPError:
                    pass
                # (what is left of the linger: the close as a whole stays within it)
                self._linger_closing(max(0.0, end - sched.monotonic()))
                # the server's end of the carrier closes once its layer above is done
                # with the connection (ConnectionHook.close_wait)
                left = end - sched.monotonic()
                if unread and left > DRAIN_QUIET:
                    patience: float | None = left
                elif self.hook is not None:
                    patience = max(DRAIN_QUIET, min(left, self.hook.close_wait))
                else:
                    patience = None
                if self.abandoned and unread and self.hook is None and patience:
                    self._drain_detached(patience)
                else:
                    self._drain_carrier(min(linger, 1.0), patience)
                if self.hook is not None:
                    self.hook.after_close()
            else:
                self._linger_closing(linger)  # (a CLOSE of ours that ended it)
            self.session.process_events()
            self._release(closing=True)

    def _linger_closing(self, linger: float) -> None:
        """Lossy carriers: keep the carrier open, read and its timers run while our
        CLOSE may still be sent again (Connection.closing, docs/protocol.md 3.1), up to
        ``linger``; the peer closing its side ends the wait. Closed at once, the carrier's
        end could reach the peer without the CLOSE, which reads a lost connection."""
        if self.conn.closing and not self.carrier_closed:
            with contextlib.suppress(DTPError):
                self.pump(lambda: not self.conn.closing, linger)

    def _drain_carrier(self, timeout: float, patience: float | None = None) -> None:
        """Before closing the carrier: half-close it and read (discarding) until the
        peer closes its side, goes quiet for DRAIN_QUIET, or ``timeout``. A TCP socket
        closed with unread bytes is reset, and the reset can destroy what the peer has
        not read yet (RFC 1122 4.2.2.13): the end of our data. With ``patience``, going
        quiet ends nothing, only the peer's close or ``patience`` seconds do: for a peer
        still reading what we sent (Connection.peer_may_send_credit) at its own pace, or
        a hook's layer above that ends its side once done (ConnectionHook.close_wait)."""
        if self.carrier_closed or self.out:
            return
        try:
            self.sock.shutdown(_socket.SHUT_WR)
        except OSError:
            return
        patient = patience is not None
        deadline = sched.monotonic() + (patience if patience is not None else timeout)
        while True:
            try:
                if not self.sock.recv_into(self._rbuf):
                    return  # the peer closed its side too
                continue
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return
            left = deadline - sched.monotonic()
            if left <= 0:
                return
            if self.ahead is not None:
                # (after the deadline's check: a carrier that looks readable to
                # has_input while recv finds nothing would go round here for good)
                self._make_ahead()
                continue  # (what came meanwhile is read first)
            if not patient:
                left = min(left, DRAIN_QUIET)
            try:
                if not sched.wait_ready([self.sock], [], left)[0]:
                    # the deadline, or quiet: nothing more is coming that a reset could cut off
                    return
            except (OSError, ValueError):
                return

    def _drain_detached(self, patience: float) -> None:
        """:meth:`_drain_carrier`'s patient drain left to the timer thread, so that the
        caller, who abandoned the connection, returns at once (a carrier closed at once,
        the peer still reading, was reset: it lost the rest, our reset and CLOSE too)."""
        if not self.out:
            self._drain_in_background(patience)

    def abort(self, code: int, reason: str) -> None:
        """Close the connection at once with ``code`` and ``reason``, dropping queued
        data. A server's CLOSE for a reason, after the handshake, goes to the timer
        thread's drain (:meth:`TimerService.drain`), so it reaches the client whatever
        it is doing: closed with the client's bytes unread, the carrier was reset, and
        the reset overtook the CLOSE (tests/transport/test_close_code_delivery.py)."""
        with self.lock:
            if self.closed:
                return
            self.conn.close(code, reason)
            self.flush()
            self.session.process_events()
            if (
                code != CloseCode.NO_ERROR
                and not self.conn.is_client
                and self.conn.handshake_hash is not None
            ):
                self._drain_closing()
            self._release()

    def end_unpaid(self, reason: str) -> DTPError:
        """The connection's hook refused a write (``ConnectionHook.refuse_write``: the
        deposit cannot pay it), lock held: the connection ends at once, as a paid server
        would end it after its pause -- the hook's last frames (the final receipt), then
        CLOSE with CLOSE_PAYMENT_REQUIRED and ``reason`` -- and the error its calls
        raise from now on is returned, for the caller to raise. The carrier is drained
        as an abort's is; the hook's :meth:`after_close` runs at the socket's close."""
        if not self.closed and self.session.terminated is None:
            if self.hook is not None:
                self.hook.before_close()
            self.conn.close(CLOSE_PAYMENT_REQUIRED, reason)
            self.flush()
            self.session.process_events()
            # (a CLOSE of ours is a plain ConnectionClosed to our calls: this one is the
            # client's own payment error, for every later call too)
            self.session.error = PaymentRequired(reason, CLOSE_PAYMENT_REQUIRED)
            if self.conn.handshake_hash is not None:
                self._drain_closing()
            self._release()
        return self.session.error or PaymentRequired(reason, CLOSE_PAYMENT_REQUIRED)

    def take_release_hook(self) -> Callable[[], None] | None:
        """The :attr:`on_release` hook, taken (None when there is none, or it was taken)."""
        try:
            return self.on_release.pop()
        except IndexError:
            return None

    def _drain_closing(self) -> None:
        """Leave the carrier to the timer thread's drain (lock held; :meth:`abort`):
        a duplicate of it, with the output still queued, so that :meth:`_release` closes
        ours as it would."""
        self._drain_in_background(CARRIER_DRAIN)

    def _drain_in_background(self, patience: float) -> None:
        """Hand a duplicate of the carrier, with the output still queued, to the timer
        thread's drain (:meth:`TimerService.drain`) for up to ``patience`` seconds."""
        if self.carrier_closed:
            return
        try:
            carrier = self.sock.dup()
        except OSError:
            return  # (out of descriptors: closed at once, as before)
        out, self.out = self.out, []
        self.timers.drain(carrier, patience, out)

    def _release(self, closing: bool = False) -> None:
        """Close the carrier and wake every waiter (lock held). ``closing``: the
        application's close (:meth:`shutdown`), which makes what is left of the next
        connect's keys once the carrier is closed -- its waits may have had no time
        for them (the peer's end already there, or the peer closed first), and each
        connect leaves the next one its keys; an abort leaves them to the next connect."""
        self.closed = True
        self.carrier_closed = True
        ahead, self.ahead = self.ahead, None
        try:  # noqa: SIM105 (cheaper than contextlib.suppress, per connection)
            self.sock.close()
        except OSError:
            pass
        self._waker.close()
        self.cond.notify_all()
        hook = self.take_release_hook()
        if hook is not None:
            hook()
        if closing and ahead is not None:
            ahead.make()  # (its steps' failures are its own: they never raise here)


# --- the timer thread -------------------------------------------------------------------


class Closable(Protocol):
    """A stream's socket, as the timer thread closes it (``DTPSocket``, whose module
    imports this one): its close, and the files it may have left open at exit."""

    _close_deferred: bool
    _closed: bool
    _io_refs: int

    def close(self) -> None: ...
    def _flush_files(self) -> None: ...


class TimerService:
    """Keepalives, idle timeouts and queued output for connections nobody drives now.

    One thread per process serves every engine (not one per connection: a thread start
    and exit per connect). It sleeps until the earliest engine is due (at most a second,
    as timers move while callers drive it), then does one non-blocking pass on each due
    engine whose lock is free and no caller is busy with; engines are held weakly. A
    write that returns with bytes queued (flow control, a full carrier) :meth:`watch`-es
    its engine, so the credit or the room lets them out when it comes, not at the next
    tick."""

    MAX_WAIT = 1.0
    MIN_WAIT = 0.005

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, weakref.ref[Engine]]] = []
        self._seq = 0
        self._thread: threading.Thread | None = None
        # made with the service (at import), not with the thread: a process that forks
        # makes its own when its first connection starts a thread there
        self._wake_fds: tuple[int, int] | None = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pid = os.getpid()
        # engines with output queued, by id: (the engine, when to look next, the
        # back-off after finding a caller busy with it, the number of the last watch()
        # call -- so that a pass that found nothing queued does not forget an engine a
        # write watched meanwhile)
        self._watched: dict[int, tuple[weakref.ref[Engine], float, float, int]] = {}
        self._watches = 0
        self._closing: deque[Closable] = deque()  # close_later()'s sockets
        # release hooks of engines whose first socket was garbage-collected unclosed
        # (DTPSocket.__del__, which takes no lock: release_later)
        self._releases: deque[Callable[[], None]] = deque()
        # ... closing in threads of their own, with their lingers
        self._closers: dict[threading.Thread, float] = {}
        # closed with a file still open: closed at exit if no file's close did it
        self._deferred: weakref.WeakSet[Closable] = weakref.WeakSet()
        # carriers abandoned with the peer still reading (Engine._drain_detached) or
        # still sending (Engine._drain_closing): their output written, then half-closed,
        # read and discarded until the peer closes its side or the deadline, then closed
        self._draining: dict[int, tuple[_socket.socket, float, list[memoryview]]] = {}
        self._drain_buf = bytearray(64 * 1024)  # (the thread's alone)

    def add(self, engine: Engine) -> None:
        with self._lock:
            head = self._heap[0][0] if self._heap else None
            self._push(engine, sched.monotonic())
            # (a thread just started needs no wake; one asleep until the old head is
            # woken only for an earlier one: every connect would wake it, on both sides)
            if self._started() and (head is None or self._heap[0][0] < head):
                self._wake()

    def _started(self) -> bool:
        """Start the thread unless it runs (lock held): whether it ran already."""
        if self._thread is not None and self._thread.is_alive():
            return True
        if self._wake_fds is None or self._pid != os.getpid():
            # (a forked child: the pipe it inherited is its parent's thread's too)
            self._wake_fds = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._pid = os.getpid()
        self._thread = sched.Thread(target=self._run, name="dtp-timers", daemon=True)
        self._thread.start()
        return False

    def close(self) -> None:
        """Close the wake pipe of a service whose thread has ended (a simulated run's:
        dtp.testing.network._blocking); the process's own service is never closed."""
        fds, self._wake_fds = self._wake_fds, None
        if fds is not None:
            for fd in fds:
                os.close(fd)

    def watch(self, engine: Engine) -> None:
        """Wait on ``engine``'s carrier from now on, until its queued output is out."""
        key = id(engine)
        with self._lock:
            self._watches += 1
            entry = self._watched.get(key)
            if entry is not None and entry[0]() is engine:
                self._watched[key] = (entry[0], 0.0, 0.0, self._watches)
                if entry[1] == 0.0:
                    return  # the thread waits on it already
            else:
                self._watched[key] = (weakref.ref(engine), 0.0, 0.0, self._watches)
            self._wake()

    def close_later(self, sock: Closable) -> None:
        """Run ``sock.close()`` in a thread of its own, soon. Safe in a finalizer: a
        deque append and a pipe write (the timer thread starts the closing thread).
        At interpreter exit, :meth:`finish_closes` waits for these closes a while."""
        self._closing.append(sock)
        self._wake()

    def drain(
        self, carrier: _socket.socket, patience: float, out: list[memoryview] | None = None
    ) -> None:
        """Write ``out`` (what its engine had queued) to the non-blocking ``carrier``,
        half-close it, and read (discarding) from it until its peer closes its side, an
        error, or ``patience`` seconds; then close it."""
        pending = out or []
        if not pending and not self._half_close(carrier):
            return
        with self._lock:
            self._draining[carrier.fileno()] = (carrier, sched.monotonic() + patience, pending)
            self._started()  # (a refused client's engine never started it)
        self._wake()

    @staticmethod
    def _half_close(carrier: _socket.socket) -> bool:
        """Shut ``carrier``'s sending side (closed when that fails: False)."""
        try:
            carrier.shutdown(_socket.SHUT_WR)
        except OSError:
            carrier.close()
            return False
        return True

    def _drain_ready(self, fd: int) -> None:
        with self._lock:
            entry = self._draining.get(fd)
        if entry is None:
            return
        carrier, _, pending = entry
        try:
            while pending:
                n = carrier.send(pending[0])
                if n < len(pending[0]):
                    pending[0] = pending[0][n:]
                    break
                pending.pop(0)
                if not pending and not self._half_close(carrier):
                    raise OSError  # (closed: dropped below)
            while carrier.recv_into(self._drain_buf):
                pass
        except (BlockingIOError, InterruptedError):
            return  # all written and read for now
        except OSError:
            pass
        with self._lock:
            self._draining.pop(fd, None)
        carrier.close()  # the peer closed its side too, or the carrier failed

    def release_later(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` in the timer thread, soon. Safe from a finalizer: an append to a
        deque and a write to the wake pipe, no lock."""
        self._releases.append(hook)
        self._wake()

    def _run_releases(self) -> None:
        while True:
            try:
                hook = self._releases.popleft()
            except IndexError:
                return
            self._guarded(hook)

    def _start_closes(self) -> None:
        """Start a closing thread for each socket close_later() queued."""
        while True:
            # taken off the queue and started under the lock: finish_closes (at exit, in
            # another thread) must see each close either queued or with its closer
            # started, or the exit would cut the close off mid-linger and the peer would
            # read a reset
            with self._lock:
                try:
                    sock = self._closing.popleft()
                except IndexError:  # (finish_closes may have taken the last one)
                    return
                thread = sched.Thread(target=self._close, args=(sock,), name="dtp-close")
                thread.daemon = True
                self._closers[thread] = _linger_of(sock)
                try:
                    thread.start()
                    started = True
                except RuntimeError:  # no thread to be had
                    self._closers.pop(thread, None)
                    started = False
            if not started:
                self._guarded(sock.close)  # here, then: late but closed
            del sock, thread

    def _close(self, sock: Closable) -> None:
        try:
            self._guarded(sock.close)
        finally:
            with self._lock:
                self._closers.pop(threading.current_thread(), None)

    def defer_close(self, sock: Closable) -> None:
        """``sock.close()`` was called with a file of it still open: the exit closes it
        if no file's close did by then (:meth:`finish_closes`)."""
        with self._lock:
            self._deferred.add(sock)

    def finish_closes(self, timeout: float | None = None) -> None:
        """Wait, at interpreter exit, for the closes close_later() queued and the
        carriers drained in the background, up to ``timeout`` seconds (by default the
        longest linger among them, and a second): their threads are daemons, and a close
        cut off mid-linger sent no CLOSE, its carrier reset with the peer's unread bytes
        lost. A socket closed with a file of it still open is closed now, if no file's
        close did it (that file's finalizer runs in the teardown, after this)."""
        if self._pid != os.getpid():
            return  # (a forked child: the threads were its parent's)
        with self._lock:
            # (files still open: once the last one closed, its close was queued already)
            left_open = [
                s for s in self._deferred if s._close_deferred and not s._closed and s._io_refs
            ]
            self._deferred.clear()
        for sock in left_open:
            sock._flush_files()
            sock._io_refs = 0  # (its files are closed by the teardown, after this)
            self._closing.append(sock)
        self._start_closes()
        start = sched.monotonic()
        while True:
            with self._lock:
                threads = list(self._closers.items())
                draining = bool(self._draining)
            if not threads and not draining:
                return
            if timeout is None:
                limit = max((linger for _, linger in threads), default=LINGER) + 1.0
            else:
                limit = timeout
            left = start + limit - sched.monotonic()
            if left <= 0:
                return
            if not threads:
                # a carrier the timer thread drains for a reset stream (_drain_detached):
                # cut off, the peer lost what it had not read, the reset and the CLOSE
                sched.sleep(min(left, 0.02))
                continue
            thread = threads[0][0]
            thread.join(left)
            if not thread.is_alive():
                with self._lock:
                    self._closers.pop(thread, None)

    def _wake(self) -> None:
        if self._wake_fds is not None:
            with contextlib.suppress(OSError):  # (a full pipe wakes the thread anyway)
                os.write(self._wake_fds[1], b"\0")

    def _push(self, engine: Engine, now: float, min_wait: float = 0.0) -> None:
        timer = engine.conn.get_timer()
        latest = now + (self.MAX_WAIT if engine.hook is None else engine.hook.max_timer_wait)
        due = latest if timer is None else min(latest, timer)
        due = max(due, now + min_wait)
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, weakref.ref(engine)))

    def _run(self) -> None:
        assert self._wake_fds is not None
        wake_fd = self._wake_fds[0]
        while True:
            if self._closing:
                self._start_closes()
            if self._releases:
                self._run_releases()
            due: weakref.ref[Engine] | None = None
            until: float | None = None
            watched: dict[int, Engine] = {}
            poller = sched.poll()
            poller.register(wake_fd, select.POLLIN)
            with self._lock:
                now = sched.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    _, _, due = heapq.heappop(self._heap)
                else:
                    until = self._heap[0][0] if self._heap else None
                    for fd, (carrier, deadline, pending) in list(self._draining.items()):
                        if deadline <= now:
                            del self._draining[fd]
                            carrier.close()
                        else:
                            until = deadline if until is None else min(until, deadline)
                            poller.register(fd, select.POLLIN | (select.POLLOUT if pending else 0))
                    for key, (ref, after, _, _) in list(self._watched.items()):
                        engine = ref()
                        if engine is None or engine.closed or engine.carrier_closed:
                            del self._watched[key]
                        elif after > now:
                            until = after if until is None else min(until, after)
                        else:
                            watched[engine._fd] = engine
                            out = select.POLLOUT if engine.out else 0
                            poller.register(engine._fd, select.POLLIN | out)
            if due is not None:
                self._guarded(self._tick, due)
                continue
            wait = None if until is None else max(0.0, until - now) * 1000.0
            for fd, _ in poller.poll(wait):
                if fd == wake_fd:
                    with contextlib.suppress(OSError):
                        os.read(wake_fd, 4096)
                elif fd in watched:
                    self._guarded(self._serve, watched[fd])
                elif fd in self._draining:
                    self._guarded(self._drain_ready, fd)
            del watched

    @staticmethod
    def _fail(engine: Engine, exc: BaseException) -> None:
        """A pass on ``engine`` raised ``exc`` (its lock held): abort the connection.
        Left as it is, it would never be scheduled again (no keepalive, idle timeout or
        retransmission, the carrier never released). ``exc`` may be anything, SystemExit
        too (a push callback's sys.exit() runs here): escaping the pass, it ended the
        thread and every other connection's timers with it."""
        logger.error(
            "dtp timer thread: a pass on %s raised: aborting the connection",
            engine.name,
            exc_info=exc,
        )

        def close() -> None:
            # Engine.abort's steps: abort() itself takes the lock, which is not reentrant
            engine.conn.close(CloseCode.INTERNAL_ERROR, "internal error")
            engine.flush()

        try:
            engine.session.end_after_fault(exc, close, engine.name)
        finally:
            engine._release()

    @staticmethod
    def _guarded(fn: Callable[..., object], *args: Any) -> None:
        """``fn(*args)``, logging what it raises: one connection's failure must not end
        the thread that keeps every other connection's timers."""
        try:
            fn(*args)
        except Exception:
            logger.exception("dtp timer thread: %s failed", getattr(fn, "__name__", fn))

    def _tick(self, ref: weakref.ref[Engine]) -> None:
        """A due engine: one non-blocking pass, then its next turn."""
        engine = ref()
        if engine is None or engine.closed:
            return
        queued = False
        if engine.lock.acquire(blocking=False):
            try:
                if not engine.closed:
                    engine.poll()
                    queued = engine.queued_output()
            except BaseException as exc:
                self._fail(engine, exc)
            finally:
                engine.lock.release()
        if not engine.closed:
            with self._lock:
                # a due timer that a busy caller is about to handle: look again
                # shortly rather than spin
                self._push(engine, sched.monotonic(), self.MIN_WAIT)
            if queued:
                self.watch(engine)

    def _serve(self, engine: Engine) -> None:
        """A watched engine's carrier is ready: read and write what it allows."""
        key = id(engine)
        with self._lock:
            entry = self._watched.get(key)
            if entry is None or entry[0]() is not engine:
                return
            watches = entry[3]
        busy = True
        queued = False
        if engine.lock.acquire(blocking=False):
            try:
                if not (engine.closed or engine.pumping):
                    busy = False
                    engine.poll()
                    queued = engine.queued_output()
            except BaseException as exc:
                # ended (closed: no longer watched): left watched, its carrier would
                # stay ready, and the thread would spin on a pass that raises again
                self._fail(engine, exc)
            finally:
                engine.lock.release()
        with self._lock:
            entry = self._watched.get(key)
            if entry is None or entry[0]() is not engine or entry[3] != watches:
                return  # forgotten meanwhile, or watched again by a write: look again
            if busy:
                # a caller drives it now; look again later, less often the longer it is
                # busy (the caller's own write re-arms this when it leaves)
                backoff = min(self.MAX_WAIT, max(self.MIN_WAIT, 2 * entry[2]))
                self._watched[key] = (entry[0], sched.monotonic() + backoff, backoff, watches)
            elif not queued or engine.closed or engine.carrier_closed:
                del self._watched[key]


TIMERS = TimerService()
sched.set_default_timers(TIMERS)  # (the one engines use unless a simulation's is installed)
# closes queued by files' finalizers, finished before the interpreter stops their threads
atexit.register(TIMERS.finish_closes)


def _linger_of(sock: object) -> float:
    """How long ``sock``'s close may linger (LINGER when it is not a DTP socket)."""
    engine = getattr(sock, "_engine", None)
    linger = getattr(engine, "linger", LINGER)
    return linger if isinstance(linger, float) else LINGER
