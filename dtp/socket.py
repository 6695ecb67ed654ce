"""Blocking DTP sockets that feel like the :mod:`socket` module.

    import dtp.socket

    with dtp.socket.create_server(("127.0.0.1", 7000), identity=server_id) as server:
        ...  # in another thread / process:
    with dtp.socket.create_connection(("127.0.0.1", 7000), server_key=key) as sock:
        sock.sendall(b"hello")
        print(sock.recv(1024))

A connection carries many streams; the socket returned by ``create_connection`` /
``accept`` is its first stream, :meth:`DTPSocket.open_stream` opens more.

I/O is driven by the calling thread, as with :mod:`ssl` sockets: whoever waits does the
socket work, so a request/response costs no thread hand-off. A small per-connection
timer thread only steps in when no caller is active, to send keepalives and notice
idle timeouts. Sockets are thread-safe: different threads may use different streams
of one connection at once.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import heapq
import io
import logging
import numbers
import operator
import os
import queue
import select
import socket as _socket
import struct
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from dtp.errors import (
    ConnectionClosed,
    DTPError,
    DTPTimeoutError,
    HandshakeError,
    LocalProtocolError,
    SendAfterShutdown,
    SocketClosed,
)
from dtp.hostid.address import HostAddress
from dtp.hostid.admission import (
    HOOK_FAILED,
    LedgerAdmission,
    PeerInfo,
    check_open_grace_use,
    peer_info,
    refusal_reason,
)
from dtp.hostid.connect import (
    CarrierChoice,
    abandon_host_connection,
    check_connect_options,
    pinned_host_key,
    prepare_connecting_early,
)
from dtp.hostid.ledger_carrier.bridge import (
    LedgerBridge,
    LedgerCarrierOptions,
    LedgerListener,
    connect_ledger_carrier,
    ledger_config,
)
from dtp.hostid.served import served_connections
from dtp.identity.ahead import (
    next_ephemeral_public,
    prepare_anonymous_identity,
    prepare_ephemeral_key,
    prepare_static_secret,
    take_anonymous_identity,
)
from dtp.identity.keys import HostIdentity
from dtp.identity.noise import prepare_auth_proof, prepare_handshake, static_secret_kept
from dtp.native.types import DUE, EOF, FULL, NEED_MORE, OK, WAIT, WAKE
from dtp.payments.metering import MeteringConfig
from dtp.payments.settlement import ClientPayment
from dtp.protocol.connection import (
    DATAGRAM_SEND_BACKLOG,
    CloseCode,
    Connection,
    ConnectionConfig,
    direct_client_config,
)
from dtp.protocol.state import SendState
from dtp.transport.carriers.tcp import connect_any, connect_tcp, endpoint_text, listen_tcp, tune
from dtp.transport.handshake_gate import (
    DEFAULT_FIRST_MESSAGE_TIMEOUT,
    Admission,
    FirstMessage,
    Progress,
    Why,
    checked_first_message_timeout,
)
from dtp.transport.handshake_slots import (
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
    SERVER_BUSY,
    AddressSlots,
    ServerSlots,
    address_key,
)
from dtp.transport.heap_release import HeapRelease, release_free_heap
from dtp.transport.poll import wait_ready
from dtp.transport.replay_guard import ReplayGuard
from dtp.transport.session import (
    CALLBACK_FAILED,
    CARRIER_DRAIN,
    UNSENT,
    Session,
    bounded_by_caller,
    check_connect_timeout,
    connect_timed_out,
)

if TYPE_CHECKING:
    from pathlib import Path

    from dtp.ledger.interface import Ledger
    from dtp.paid import PaidServer, PaidSocket, ServicePolicy
    from dtp.payments.receipt_store import ReceiptStore

__all__ = [
    "SHUT_RD",
    "SHUT_RDWR",
    "SHUT_WR",
    "AcceptHook",
    "AdmitHook",
    "DTPServer",
    "DTPSocket",
    "PeerInfo",
    "create_connection",
    "create_server",
    "serve",
]

logger = logging.getLogger(__name__)

SHUT_RD = _socket.SHUT_RD
SHUT_WR = _socket.SHUT_WR
SHUT_RDWR = _socket.SHUT_RDWR

SEND_HIGH_WATER = 512 * 1024  # bytes queued per stream before writers wait
RECV_CHUNK = 256 * 1024  # the most one carrier read takes
FIRST_RECV_CHUNK = 16 * 1024
_IOV_MAX = 512  # buffers per sendmsg (Linux allows 1024)
# the largest listen() backlog: it takes a C int (OverflowError beyond)
_C_INT_MAX = 2 ** (8 * struct.calcsize("i") - 1) - 1
# Buffers queued for the carrier beyond which a datagram is dropped whatever their size
# (each datagram sent while the carrier is full queues one): their sum stays cheap.
_BACKLOG_ENTRIES = 256
LINGER = 5.0  # seconds close() waits for queued data to leave
LOSSY_LINGER = 30.0  # the same over a lossy carrier (the ledger), where acks are slow
DRAIN_QUIET = 0.02  # seconds a closing carrier waits for more of the peer's bytes
# seconds a paid client's close waits for the server's end of the carrier, which closes
# once the server settled on the ledger: about what a ledger transaction takes, the one
# the client would otherwise send itself (its half-close) and pay the gas of
PAID_CLOSE_WAIT = 3.0
# socket.create_connection's "timeout left out": the process's default socket timeout
# (typed Any so that it stands as the default of a ``float | None`` parameter, as in
# the stdlib's stubs)
_DEFAULT_TIMEOUT: Any = _socket._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]
READ_FIRST_SKIP = 8  # reads that wait at once after a read found nothing waiting
_READ_ON = frozenset((WAIT, NEED_MORE, OK))  # lent read statuses that wait and read again
_WAITED = frozenset((WAIT, NEED_MORE))  # ... of those, the ones after which time may be up
# A descriptor number no Linux process can have (above the kernel's largest possible
# nr_open): I/O on it fails with EBADF (the C lane refuses negative numbers)
_DEAD_FD = 2**31 - 1

AcceptHook = Callable[[str], "bool | str | None"]
"""Server accept hook: gets the client's verified Sui address; return True/None to
accept, False or a reason string to refuse."""

AdmitHook = Callable[[PeerInfo], "bool | str | None"]
"""Server admission hook: gets a :class:`~dtp.hostid.admission.PeerInfo` (verified address,
the ledger connection ID and port the client named); same verdicts as AcceptHook."""


class _Engine:
    """One connection over one carrier socket, shared by the connection's streams."""

    def __init__(self, sock: _socket.socket, session: Session, name: str) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.session = session
        self.conn = session.conn
        self.name = name
        session.name = name  # (its logs name the connection)
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.pumping = False
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
        self._wake_r, self._wake_w = _socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_fd = self._wake_r.fileno()
        self._wake_w.setblocking(False)
        self.waiters = 0  # threads blocked in cond.wait: notify only when there are some
        # streams whose next (or current) blocking read ends in DTPTimeoutError at once
        # (DTPSocket.interrupt_recv)
        self.interrupted: set[int] = set()
        self.linger = LINGER if session.conn.config.reliable_carrier else LOSSY_LINGER
        # the first stream was reset (DTPSocket.reset): shutdown() waits for no reader
        self.abandoned = False
        self.payment: ClientPayment | None = None  # a metered client connection (dtp.paid)
        # a server's accepted connection holding one of its accept() queue's places
        self.holds_place = False
        # the next connect's keys still to make (_NextConnectKeys), made while we would
        # wait on the carrier (_make_ahead)
        self.ahead: _NextConnectKeys | None = None
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

    # -- output ------------------------------------------------------------------------

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
        now = time.monotonic()
        if self.payment is not None:
            self.payment.tick(now)
        data = self.conn.data_to_send(now)
        if data:
            self.write(memoryview(data))
        elif self.out:
            self._send_some()
            if self.out and self.pumping:
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
        if self.out and self.pumping:
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

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _take_wake(self) -> None:
        """Empty the wake socket: the wakes so far are seen (lock held, by the thread
        that waited on the carrier)."""
        with contextlib.suppress(OSError):
            self._wake_r.recv(4096)

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
            _TIMERS.watch(self)

    def wake_waiters(self) -> None:
        """Make every thread waiting on the connection look at its condition again
        (lock held): the one waiting on the carrier, and those waiting for it."""
        if self.pumping:
            self._wake()
        if self.waiters:
            self.cond.notify_all()

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

    # -- input and waiting ---------------------------------------------------------------

    def _carrier_failed(self, exc: BaseException | None) -> None:
        if self.carrier_closed:
            return
        self.carrier_closed = True
        self.out.clear()
        if self.closed:  # (only DTPSocket.__del__ leaves a closed engine's carrier open)
            what = "the connection's first socket was garbage-collected without close()"
        elif exc:
            what = f"carrier error: {exc}"
        else:
            what = "the peer vanished (carrier closed)"
        logger.debug("%s: %s", self.name, what)
        self.session.carrier_lost(what, exc)  # (the cause of what our calls raise)
        self.session.process_events()

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
            self.conn.receive_data(view[:n], time.monotonic())
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
        taken, attention = self.conn.take_fast(view[:n], stream_id, dst, time.monotonic())
        if attention:
            self._after_io()
            if self.pumping:
                # another thread waits on the carrier (lock released): what we read may
                # be what it waits for, and it would not see the socket readable again
                self._wake()
        return taken

    def lend(self, stream_id: int) -> Any:
        """The connection's lane with ``stream_id`` lent to it (lock held), or None when
        the connection cannot lend it now. (A metered client's meter reads the loan's
        counts through Connection.usage, and its sends tick it: tick_meter.)"""
        conn = self.conn
        if conn.lent_stream_id == stream_id:
            return conn.lent_lane
        if self.carrier_closed or self.closed:
            return None
        # the lane takes the stream's bytes only while nothing is buffered for it (the
        # buffer's bytes come first), so a lent stream that may receive has none
        return conn.lend(stream_id, time.monotonic(), not self.session.readable(stream_id))

    def tick_meter(self) -> None:
        """A metered client after a send (lock held): tick the meter when it may have
        something to do, and write what it queued -- a receipt, which took the stream
        back -- without taking a lent stream back on every send."""
        payment = self.payment
        assert payment is not None
        now = time.monotonic()
        # (the usage, datagrams included: the lane's counts alone would miss those)
        if self.conn.usage[0] < payment.quiet_bytes and now < payment.quiet_until:
            return
        payment.tick(now)
        if self.conn.lent_lane is None:
            self.flush()

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
        # then, as it would cost a syscall of its own.
        if self._read_first_skip:
            self._read_first_skip -= 1
            status = WAIT
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
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._recv_lent_wait(lane, stream_id, dst, deadline, status)

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
                ms = -1 if until is None else max(0, int((until - time.monotonic()) * 1000) + 1)
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
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        raise DTPTimeoutError("timed out")
                    if until is not None and now >= until:
                        return 0  # a timer is due
                continue
            if status == WAKE:
                # another thread wants the general path, or took the lane; the wake is
                # for the thread that waits on the carrier, which is us: taken here, as
                # _pump_once takes it, or every wait of ours returned at once until the
                # general path's next pump (a paid server's stored receipt wakes it:
                # some twenty reads per receipt went the general path, one wait each)
                self._take_wake()
                if self.out:
                    # a sender queued records the full carrier did not take and woke
                    # us, the pumping thread, to write them: now, and the timer thread
                    # waits for room for the rest -- our caller may return with bytes
                    # the general path reads and not call again for a long time
                    self._send_some()
                    if self.out:
                        _TIMERS.watch(self)
                return 0
            if status == EOF:
                self._carrier_failed(None)
                return 0
            # something the lane does not take (or the loan ended meanwhile): the
            # connection goes on from there
            rx = lane.flow.rx
            taken: int = rx.taken
            if status == DUE:
                # all taken, but credit is owed: the connection sends it (what the lane
                # keeps pending of a record goes to the connection, and comes back
                # with the next loan)
                conn.take_back(time.monotonic())
            else:
                spill = lane.flow_spill() if status == FULL and rx.spill_len else b""
                conn.take_back(time.monotonic(), spill, lane.rview[rx.consumed : lane.io.end])
            self._after_io()
            return taken

    def take_interrupt(self, stream_id: int) -> None:
        """Raise DTPTimeoutError when a read of ``stream_id`` was interrupted (lock
        held; the interruption is used up)."""
        if stream_id in self.interrupted:
            self.interrupted.discard(stream_id)
            raise DTPTimeoutError("interrupted (interrupt_recv)")

    def wait_io(self, deadline: float | None) -> None:
        """Wait (lock held on entry and exit) until the carrier may have bytes to read,
        a timer is due or another thread changed something; the caller reads.
        Raises DTPTimeoutError once ``deadline`` has passed."""
        now = time.monotonic()
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
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            if self.carrier_closed and not self.out:
                return  # nothing more will happen; the caller reports the outcome
            now = time.monotonic()
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
        self.pumping = True
        try:
            self.flush()
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
            wait = None if timer is None else max(0.0, timer - time.monotonic())
            wlist = [self.sock] if self.out and not self.carrier_closed else []
            rlist = [self._wake_r] + ([] if self.carrier_closed else [self.sock])
            self.lock.release()
            try:
                r, w = wait_ready(rlist, wlist, wait)
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
            if self._wake_r in r:
                self._take_wake()
            if read and self.sock in r:
                self._read_available()
            if self.sock in w:
                self._send_some()
            self._after_io()
        finally:
            self.pumping = False
            if self.waiters:
                self.cond.notify_all()

    def _after_io(self) -> None:
        if self.dropped:
            self._close_dropped()
        conn = self.conn
        timer = conn.get_timer()
        if timer is not None:
            now = time.monotonic()
            if now >= timer:
                conn.handle_timer(now)
        self.session.process_events()
        self.flush()

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
                stream = conn._streams.get(sid)
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
        self.pumping = True
        try:
            if not self.carrier_closed:
                self._read_available()
            self._after_io()
        finally:
            self.pumping = False
            if self.waiters:
                self.cond.notify_all()

    def _make_ahead(self) -> None:
        """Make what is left of the next connect's keys (:class:`_NextConnectKeys`),
        lock held, where we would wait on the carrier now -- the rest of the connect's
        own waits had none to spare -- step by step until the carrier has something to
        read (the rest at the next wait)."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None and not ahead.make(self):
            self.ahead = ahead

    # -- lifetime -------------------------------------------------------------------------

    def start_timer(self) -> None:
        _TIMERS.add(self)

    def shutdown(self, linger: float) -> None:
        """Close gracefully: wait up to ``linger`` for queued data, then CLOSE. After
        ``abandoned`` (the first stream was reset: DTPSocket.reset, a TCP reset's
        counterpart) the peer's reading is not waited for here, as the patient drain of
        _drain_carrier would (up to the whole linger, with a peer that does not read):
        that drain goes on in the background (_drain_detached), so that the reset
        and the CLOSE behind what the peer has yet to read still reach it."""
        with self.lock:
            if self.closed:
                return
            if self.session.terminated is None:
                end = time.monotonic() + linger  # (the drain's patience comes out of it)
                with contextlib.suppress(DTPError):
                    self.pump(
                        lambda: (
                            (self.conn.send_buffered() == 0 and not self.conn.awaiting_acks())
                            or self.session.terminated is not None
                        ),
                        linger,
                    )
                if self.payment is not None:
                    # the final receipt goes out before CLOSE, in the same write: the
                    # server wakes once for both
                    self.payment.closing()
                self.conn.take_back(time.monotonic())  # (a lent stream's counts)
                unread = self.conn.peer_may_send_credit()
                if (
                    self.payment is None
                    and self.conn.send_buffered()
                    and self.session.terminated is None
                ):
                    # the linger ran out with bytes never sent: the peer must read an
                    # error, not the clean end of a stream cut short (a paid connection
                    # keeps its clean CLOSE: the server settles only after one)
                    self.conn.close(CloseCode.APPLICATION, UNSENT)
                else:
                    self.conn.close(CloseCode.NO_ERROR, "")
                self.flush()
                with contextlib.suppress(DTPError):
                    self.pump(lambda: not self.out, min(linger, 1.0))
                # the server's end of the carrier closes once it settled on the ledger:
                # the payment then has nothing left to do there (one read)
                left = end - time.monotonic()
                if unread and left > DRAIN_QUIET:
                    patience: float | None = left
                elif self.payment is not None:
                    patience = max(DRAIN_QUIET, min(left, PAID_CLOSE_WAIT))
                else:
                    patience = None
                if self.abandoned and unread and self.payment is None and patience:
                    self._drain_detached(patience)
                else:
                    self._drain_carrier(min(linger, 1.0), patience)
                if self.payment is not None:
                    self.payment.finish()
            self.session.process_events()
            self._release(closing=True)

    def _drain_carrier(self, timeout: float, patience: float | None = None) -> None:
        """Before closing the carrier: half-close it and read (discarding) until the peer
        closes its side, goes quiet for DRAIN_QUIET, or ``timeout``. Closing a TCP
        socket with unread bytes resets the connection, and the reset can destroy what
        the peer has not read yet (RFC 1122 4.2.2.13) -- the end of our data, when the
        peer, still reading it, sends flow-control updates after we stopped reading.
        ``patience``: going quiet ends nothing, only the peer's close or ``patience``
        seconds do. So when the peer is still reading what we sent
        (Connection.peer_may_send_credit), at its own pace (a slow reader lost the end of our data
        to the reset), and when it is a paid server: its end closes once it settled our
        connection on the ledger, which the payment then finds done (a quiet moment of
        its transaction must not make us send a half-close of our own)."""
        if self.carrier_closed or self.out:
            return
        try:
            self.sock.shutdown(_socket.SHUT_WR)
        except OSError:
            return
        patient = patience is not None
        deadline = time.monotonic() + (patience if patience is not None else timeout)
        while True:
            try:
                if not self.sock.recv_into(self._rbuf):
                    return  # the peer closed its side too
                continue
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.ahead is not None:
                # (after the deadline's check: a carrier that looks readable to
                # _has_input while recv finds nothing would go round here for good)
                self._make_ahead()
                continue  # (what came meanwhile is read first)
            if not patient:
                left = min(left, DRAIN_QUIET)
            try:
                if not wait_ready([self.sock], [], left)[0]:
                    if patient:
                        return  # (the deadline)
                    return  # quiet: nothing more is coming that a reset could cut off
            except (OSError, ValueError):
                return

    def _drain_detached(self, patience: float) -> None:
        """_drain_carrier's patient drain, left to the timer thread: half-close the
        carrier now, and read (discarding) from a duplicate of it until the peer closes
        its side or ``patience`` seconds pass, then close it -- the caller, who
        abandoned the connection, returns at once. (A carrier closed at once with the
        peer still reading was reset at its next flow-control update: the peer lost
        the rest, our reset and CLOSE too, and read ConnectionLost.)"""
        if self.carrier_closed or self.out:
            return
        try:
            carrier = self.sock.dup()
        except OSError:
            return
        _TIMERS.drain(carrier, patience)

    def abort(self, code: int, reason: str) -> None:
        """Close the connection at once with ``code`` and ``reason``, dropping queued
        data. A server's CLOSE for a reason, once the handshake is done, still reaches
        the client whatever it is doing: the carrier goes to the timer thread, which
        writes what is left of the CLOSE, half-closes, and reads (dropping) what the
        client still sends until it closes its side or CARRIER_DRAIN passes
        (:meth:`_TimerService.drain`). Closed with the client's bytes unread, the
        carrier was reset, and the reset overtook the CLOSE: a client denied in a
        sendall loop read a bare ConnectionLost (tests/transport/test_close_code_delivery.py)."""
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
        if self.carrier_closed:
            return
        try:
            carrier = self.sock.dup()
        except OSError:
            return  # (out of descriptors: closed at once, as before)
        out, self.out = self.out, []
        _TIMERS.drain(carrier, CARRIER_DRAIN, out)

    def _release(self, closing: bool = False) -> None:
        """Close the carrier and wake every waiter (lock held). ``closing``: the
        application's close (:meth:`shutdown`), which makes what is left of the next
        connect's keys once the carrier is closed -- its waits may have had no time
        for them (the peer's end already there, or the peer closed first), and each
        connect leaves the next one its keys; an abort leaves them to the next connect."""
        self.closed = True
        self.carrier_closed = True
        ahead, self.ahead = self.ahead, None
        for s in (self.sock, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                s.close()
        self.cond.notify_all()
        hook = self.take_release_hook()
        if hook is not None:
            hook()
        if closing and ahead is not None:
            ahead.make()  # (its steps' failures are its own: they never raise here)


class _TimerService:
    """Keepalives, idle timeouts and queued output for connections nobody drives now.

    One thread per process serves every engine (a thread per connection would cost a
    thread start and exit per connect). It sleeps until the earliest engine is due (at
    most a second, as the engine's timers may move while callers drive it), and then
    does one non-blocking pass on each due engine whose lock is free and which no
    caller is busy with. Engines are held weakly and dropped once closed.

    A write that returns with bytes still queued -- behind the peer's flow control, or
    a full carrier -- :meth:`watch`-es its engine: the thread then also waits on that
    carrier, so the peer's credit (or the room) lets the bytes out when it arrives,
    not at the next tick, while the application does something else.
    """

    MAX_WAIT = 1.0
    MIN_WAIT = 0.005
    # A metered client is looked at more often: a server about to close asks it for a
    # final receipt and waits ServicePolicy.final_receipt_timeout (1 s) for one, and a
    # client whose application did not read meanwhile answered at its next pass -- a
    # second later, after the server had settled without it (the usage since the last
    # receipt unpaid). A pass on an idle connection is one non-blocking read.
    METERED_MAX_WAIT = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, weakref.ref[_Engine]]] = []
        self._seq = 0
        self._thread: threading.Thread | None = None
        # made with the service (at import), not with the thread: a process that forks
        # makes its own when its first connection starts a thread there
        self._wake_fds: tuple[int, int] | None = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pid = os.getpid()
        # engines with output queued, by id: (the engine, when to look next, the back-off
        # after finding a caller busy with it -- the caller drives its I/O meanwhile, and
        # the number of the last watch() call, so that a pass that found nothing queued
        # does not forget an engine a write watched meanwhile)
        self._watched: dict[int, tuple[weakref.ref[_Engine], float, float, int]] = {}
        self._watches = 0
        self._closing: deque[DTPSocket] = deque()  # close_later()'s sockets
        # release hooks of engines whose first socket was garbage-collected unclosed
        # (DTPSocket.__del__, which takes no lock: release_later)
        self._releases: deque[Callable[[], None]] = deque()
        # ... closing in threads of their own, with their lingers
        self._closers: dict[threading.Thread, float] = {}
        # closed with a file still open: closed at exit if no file's close did it
        self._deferred: weakref.WeakSet[DTPSocket] = weakref.WeakSet()
        # carriers abandoned with the peer still reading (_Engine._drain_detached) or
        # still sending (_Engine._drain_closing): their output written, then half-closed,
        # read and discarded until the peer closes its side or the deadline, then closed
        self._draining: dict[int, tuple[_socket.socket, float, list[memoryview]]] = {}
        self._drain_buf = bytearray(64 * 1024)  # (the thread's alone)

    def add(self, engine: _Engine) -> None:
        with self._lock:
            head = self._heap[0][0] if self._heap else None
            self._push(engine, time.monotonic())
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
        self._thread = threading.Thread(target=self._run, name="dtp-timers", daemon=True)
        self._thread.start()
        return False

    def watch(self, engine: _Engine) -> None:
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

    def close_later(self, sock: DTPSocket) -> None:
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
            self._draining[carrier.fileno()] = (carrier, time.monotonic() + patience, pending)
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
            # another thread) sees a close either queued or running. Taken off outside
            # it, the exit could find neither and not wait; a closer it saw before it
            # ran made its join() raise RuntimeError. Either way the close was cut off
            # mid-linger, and the peer read a reset
            with self._lock:
                try:
                    sock = self._closing.popleft()
                except IndexError:  # (finish_closes may have taken the last one)
                    return
                thread = threading.Thread(target=self._close, args=(sock,), name="dtp-close")
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

    def _close(self, sock: DTPSocket) -> None:
        try:
            self._guarded(sock.close)
        finally:
            with self._lock:
                self._closers.pop(threading.current_thread(), None)

    def defer_close(self, sock: DTPSocket) -> None:
        """``sock.close()`` was called with a file of it still open: the exit closes it
        if no file's close did by then (:meth:`finish_closes`)."""
        with self._lock:
            self._deferred.add(sock)

    def finish_closes(self, timeout: float | None = None) -> None:
        """Wait for the closes close_later() queued and the carriers drained in the
        background (run at interpreter exit), up to ``timeout`` seconds; by default
        up to the longest linger among the closes, and a second. Their threads are
        daemons, which the interpreter stops at exit wherever they are: a close cut off
        while it lingered sent no CLOSE, and the carrier's kernel socket, closed with
        unread bytes, reset the connection -- the peer lost what it had not read yet.
        A socket closed while a file of it was still open is closed now, if none of its
        files' closes did it: a file left open to the end is closed by its finalizer
        during the interpreter's teardown, after this, and its close never ran."""
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
        start = time.monotonic()
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
            left = start + limit - time.monotonic()
            if left <= 0:
                return
            if not threads:
                # a carrier the timer thread drains for a reset stream (_drain_detached):
                # cut off, the peer lost what it had not read, the reset and the CLOSE
                time.sleep(min(left, 0.02))
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

    def _push(self, engine: _Engine, now: float, min_wait: float = 0.0) -> None:
        timer = engine.conn.get_timer()
        latest = now + (self.MAX_WAIT if engine.payment is None else self.METERED_MAX_WAIT)
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
            due: weakref.ref[_Engine] | None = None
            until: float | None = None
            watched: dict[int, _Engine] = {}
            poller = select.poll()
            poller.register(wake_fd, select.POLLIN)
            with self._lock:
                now = time.monotonic()
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
    def _fail(engine: _Engine, exc: BaseException) -> None:
        """A pass on ``engine`` raised ``exc`` (its lock held): abort the connection.

        Left as it is, it would live on half-alive: never scheduled again, so none of its
        timers would run (keepalive, idle timeout, retransmission), a peer that vanished
        would go unnoticed and the carrier never be released. Aborted, the peer reads
        INTERNAL_ERROR (as when a server's handshake code raises) and the application's
        calls raise ConnectionClosed, ``exc`` its cause. ``exc`` may be any exception,
        SystemExit too (a push callback's sys.exit() runs here): what escapes the pass
        ends the thread, and every other connection's timers with it."""
        logger.error(
            "dtp timer thread: a pass on %s raised: aborting the connection",
            engine.name,
            exc_info=exc,
        )

        def close() -> None:
            # _Engine.abort's steps: abort() itself takes the lock, which is not reentrant
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

    def _tick(self, ref: weakref.ref[_Engine]) -> None:
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
                self._push(engine, time.monotonic(), self.MIN_WAIT)
            if queued:
                self.watch(engine)

    def _serve(self, engine: _Engine) -> None:
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
                # ended (closed: no longer watched): left watched, its carrier would stay
                # ready, and the thread would come straight back to a pass that raises
                # again, spinning (and logging each time) for as long as the connection lives
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
                self._watched[key] = (entry[0], time.monotonic() + backoff, backoff, watches)
            elif not queued or engine.closed or engine.carrier_closed:
                del self._watched[key]


_TIMERS = _TimerService()
# closes queued by files' finalizers, finished before the interpreter stops their threads
atexit.register(_TIMERS.finish_closes)


def _linger_of(sock: object) -> float:
    """How long ``sock``'s close may linger (LINGER when it is not a DTP socket)."""
    engine = getattr(sock, "_engine", None)
    linger = getattr(engine, "linger", LINGER)
    return linger if isinstance(linger, float) else LINGER


def _writable(buffer: Any) -> memoryview:
    """``buffer`` as bytes to read into, or the TypeError a socket raises for it."""
    try:
        view = memoryview(buffer)
    except TypeError:
        raise TypeError(
            f"recv_into() needs a writable bytes-like buffer, not {type(buffer).__name__!r}"
        ) from None
    if view.readonly:
        what = type(buffer).__name__
        raise TypeError(f"recv_into() needs a writable buffer, not a read-only {what}")
    return view.cast("B")


_SSIZE_MAX = sys.maxsize  # the largest byte count a socket takes (a C ssize_t)


def recv_into_target(buffer: Any, nbytes: Any, flags: Any) -> Any:
    """What ``recv_into(buffer, nbytes, flags)`` reads into: ``buffer`` (as bytes), or
    its first ``nbytes``; or the error a socket raises for the call, in its order
    (TypeError for the buffer, then the size's TypeError, OverflowError or ValueError,
    then the flags', then ValueError for a size past the buffer)."""
    if type(buffer) is not bytearray:
        buffer = _writable(buffer)
    size = _checked_size(nbytes, "recv_into")
    _checked_flags(flags)
    if size > len(buffer):
        # (a socket's once silently read into a short buffer short)
        raise ValueError("buffer too small for requested bytes")
    if size and size < len(buffer):
        return memoryview(buffer)[:size]
    return buffer


def _readable(data: Any) -> memoryview:
    """``data`` as the bytes a socket sends of it (an ``array('i')``'s raw bytes), or
    the error a socket raises for it: TypeError when not bytes-like, BufferError when
    not contiguous."""
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not {type(data).__name__!r}") from None
    if not view.c_contiguous:
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    return view.cast("B")


def _checked_size(size: Any, call: str) -> int:
    """``size`` as a socket takes a byte count (recv's bufsize, recv_into's nbytes), or
    the error it raises: TypeError for a non-integer (1.5, "4"), OverflowError past
    what a C ssize_t holds, ValueError when negative."""
    n = operator.index(size)
    if not -_SSIZE_MAX - 1 <= n <= _SSIZE_MAX:
        raise OverflowError("Python int too large to convert to C ssize_t")
    if n < 0:
        raise ValueError(f"negative buffersize in {call}")
    return n


def _checked_flags(flags: Any) -> None:
    """Raise what a socket raises for ``flags`` that are not an integer (TypeError),
    then :func:`_no_flags` for any set: a DTP stream takes none."""
    if operator.index(flags):
        raise _no_flags(flags)


def _timeout_seconds(timeout: Any) -> float:
    """``timeout`` (not None) as a float of seconds, or the error a socket's settimeout
    raises for it: TypeError when not a number, ValueError for NaN, OverflowError past
    the longest wait a lock takes (``threading.TIMEOUT_MAX``; infinity too: a wait
    that long would fail later, in the middle of a read), either way (-inf: a socket's
    OverflowError, not the ValueError of a negative timeout)."""
    if not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    value = float(timeout)
    if value != value:
        raise ValueError("timeout must be >= 0 or None, not NaN")
    if abs(value) > threading.TIMEOUT_MAX:
        raise OverflowError(f"timeout out of range (at most {threading.TIMEOUT_MAX:.0f} s)")
    return value


def _checked_timeout(timeout: float | None) -> float | None:
    """``timeout`` as settimeout() stores it, or the error a socket's raises for it."""
    if timeout is None:
        return None
    value = _timeout_seconds(timeout)
    if value < 0:
        raise ValueError("timeout must be >= 0 or None")
    return value


class _Own:
    """The type of :data:`_OWN`."""


_OWN = _Own()  # (a timeout argument) the socket's own timeout


def _no_flags(flags: int) -> LocalProtocolError:
    """The error for socket flags given to a DTP stream, which takes none: ignoring
    MSG_PEEK would consume what the caller meant to leave, MSG_DONTWAIT would block."""
    return LocalProtocolError(
        f"DTP sockets take no flags (got {flags:#x}); use settimeout(0) for non-blocking calls"
    )


class DTPSocket:
    """One stream of a DTP connection, with the blocking socket API.

    A stream is not a file descriptor: many streams share one carrier, whose bytes are
    decrypted and buffered here, so the carrier being readable says nothing about a
    stream. :meth:`fileno` therefore raises, and ``select`` / ``selectors`` do not apply:
    wait in threads (timeouts, :meth:`interrupt_recv`), or use :mod:`dtp.aio`."""

    def __init__(self, engine: _Engine, stream_id: int, primary: bool) -> None:
        self._engine = engine
        self._stream_id = stream_id
        self._primary = primary
        self._timeout: float | None = _socket.getdefaulttimeout()
        self._closed = False
        # files from makefile() still open, and whether close() waits for them (as a
        # socket's close() does: the stream closes with the last of them)
        self._io_refs = 0
        self._close_deferred = False
        # the files makefile() made, as the application holds them (buffered, text)
        self._files: weakref.WeakSet[Any] = weakref.WeakSet()
        self._wr_shut = False
        self._rd_shut = False
        # whether reads / writes may take the lent stream's fast path, as far as this
        # socket goes (open, not shut down, and reads: blocking): one check there
        self._fast_read = self._timeout != 0
        self._fast_write = True
        # the connection has known the stream (see _stream_ready_for_send)
        self._existed = stream_id in engine.conn._streams
        self.connection_id: str | None = None
        """Client connected by host ID: the ledger connection (TransportControl) ID."""
        self.escrow_id: str | None = None
        """Client connected by host ID: the connection's escrow ID."""

    # -- identity --------------------------------------------------------------------------

    @property
    def stream_id(self) -> int:
        return self._stream_id

    @property
    def peer_address(self) -> str | None:
        """On a server: the client's verified Sui address."""
        return self._engine.conn.peer_address

    @property
    def peer_connection_id(self) -> str | None:
        """On a server: the ledger connection ID the client named in its handshake."""
        cid = self._engine.conn.peer_connection_id
        return None if cid is None else "0x" + cid.hex()

    @property
    def peer_port(self) -> int | None:
        """On a server: the DTP port the client named in its handshake."""
        return self._engine.conn.peer_port

    @property
    def peer_static_key(self) -> bytes | None:
        """The peer's Noise static key, authenticated by the handshake."""
        return self._engine.conn.peer_static

    def getpeername(self) -> Any:
        """The carrier's remote endpoint (the TCP address for direct connections)."""
        return self._engine.peername

    def getsockname(self) -> Any:
        """The local address of the connection's carrier, as :meth:`socket.socket.getsockname`."""
        return self._engine.sockname

    @property
    def connection_stats(self) -> dict[str, int]:
        engine = self._engine
        conn = engine.conn
        with engine.lock:
            conn.take_back(time.monotonic())  # the counts of a lent stream
        return {
            "bytes_sent": conn.bytes_sent,
            "bytes_received": conn.bytes_received,
            "records_sent": conn.records_sent,
            "records_received": conn.records_received,
        }

    def fileno(self) -> int:
        """Always raises :class:`io.UnsupportedOperation` (an OSError and a ValueError,
        as a file without a descriptor does): a stream has no descriptor of its own,
        and the carrier's would mislead a ``select`` -- bytes already buffered for this
        stream never make it readable, and another stream's bytes do. ``selectors``
        refuses the socket (ValueError) instead of polling the wrong thing."""
        raise io.UnsupportedOperation(
            "a DTP stream has no file descriptor, so select/selectors do not apply: "
            "wait in a thread (settimeout, interrupt_recv) or use dtp.aio"
        )

    # -- timeouts ------------------------------------------------------------------------

    def settimeout(self, timeout: float | None) -> None:
        """Seconds a blocking call may wait (None: forever, 0: non-blocking)."""
        self._timeout = _checked_timeout(timeout)
        self._update_fast()

    def gettimeout(self) -> float | None:
        """The timeout in seconds of blocking calls (None: none; 0: non-blocking)."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """Blocking (timeout None) or non-blocking (timeout 0) mode, as for a socket
        (whose ``flag`` is an integer: TypeError for "x", None or 1.5)."""
        self._timeout = None if operator.index(flag) else 0.0
        self._update_fast()

    def getblocking(self) -> bool:
        """False in non-blocking mode (timeout 0), as for a socket."""
        return self._timeout != 0

    def _update_fast(self) -> None:
        self._fast_read = self._timeout != 0 and not self._rd_shut and not self._closed
        self._fast_write = not self._wr_shut and not self._closed

    # -- reading -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SocketClosed("operation on a closed DTP socket")

    def _wait(self, ready: Callable[[], bool], timeout: float | _Own | None = _OWN) -> None:
        """Wait until ``ready()``: for ``timeout`` seconds (by default the socket's; 0:
        BlockingIOError at once unless it is ready after one look)."""
        engine = self._engine
        if isinstance(timeout, _Own):
            timeout = self._timeout
        if timeout == 0:
            if not ready():
                engine.poll()
                if not ready():
                    raise BlockingIOError(errno.EAGAIN, "operation would block")
            return
        engine.pump(ready, timeout)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Up to ``bufsize`` bytes; b"" once the peer half-closed its side. ``flags``
        must be 0 (a DTP stream has no MSG_PEEK, MSG_OOB ...)."""
        if (
            flags
            or type(bufsize) is not int
            or type(flags) is not int
            or not 0 <= bufsize <= _SSIZE_MAX
        ):
            # checked before either path, so that the lent one (which would hand the
            # lane a float) and the general one raise alike, as a socket does
            bufsize = _checked_size(bufsize, "recv")
            _checked_flags(flags)
        engine = self._engine
        conn = engine.conn
        sid = self._stream_id
        lent = False
        if conn.lent_stream_id == sid and self._fast_read and bufsize > 0:
            # the usual case once the stream carries data: it is lent, so nothing is
            # buffered for it (Engine.lend), and the lane reads straight into a buffer
            # of its own (acquire / release: cheaper than a with block)
            lock = engine.lock
            lock.acquire()
            try:
                if conn.lent_stream_id == sid and conn.lent_can_recv and not engine.pumping:
                    data = self._read_lent(conn.lent_lane, bufsize)
                    if data is not None:
                        return data
                    lent = True
            finally:
                lock.release()
        return self._recv_general(bufsize, lent)

    def _read_lent(self, lane: Any, bufsize: int) -> bytes | None:
        """A read of up to ``bufsize`` bytes through the lent ``lane`` (lock held); None
        when it took nothing (the general path goes on)."""
        engine = self._engine
        if bufsize <= lane.own_cap:
            n = engine.read_lent(lane, self._stream_id, bufsize, self._timeout)
            if n:
                data: bytes = lane.own[:n].tobytes()
                return data
            return None
        view = engine.recv_scratch(bufsize)
        n = engine.read_lent(lane, self._stream_id, view, self._timeout)
        return view[:n].tobytes() if n else None

    def _recv_general(self, bufsize: int, lent: bool) -> bytes:
        """:meth:`recv` past its lent fast path (``lent``: it was tried)."""
        engine = self._engine
        sid = self._stream_id
        if self._closed:
            raise SocketClosed("operation on a closed DTP socket")
        if bufsize < 0:
            raise ValueError("negative buffer size")
        if self._rd_shut or bufsize == 0:
            return b""  # (recv(0) returns at once, as on a socket)
        session = engine.session
        with engine.lock:
            buf = session.streams.get(sid)
            if (
                session.terminated is None
                and (
                    buf is None
                    or not (buf.data or buf.eof or buf.reset_code is not None or buf.discarded)
                )
                and bufsize
            ):
                # nothing buffered (Session.readable, inline)
                view = engine.recv_scratch(bufsize)
                n = 0
                if self._timeout != 0 and not lent:
                    n = engine.recv_lent(sid, view, self._timeout)
                if n or (
                    not session.readable(sid)
                    and (n := engine.read_fast(sid, view) or self._read_direct(view))
                ):
                    return view[:n].tobytes()
            if self._rd_shut:
                # shut (or closed) by another thread while this one waited: its buffer
                # may be gone already (Session.forget)
                return b""
            data = session.take(sid, bufsize)
            engine.flush()  # flow-control credit goes back promptly
            return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Read into a writable buffer; returns the number of bytes read (``flags``: 0).
        The buffer's bytes past that count are unspecified afterwards (a record that
        failed authentication may have been decrypted there), as with any recv_into."""
        if nbytes or flags or type(nbytes) is not int or type(flags) is not int:
            # checked before either path, as a socket does (both raise alike); the lane
            # reads into all it is given: a shorter view, and the common
            # recv_into(buf, n) takes the same one-call path as recv_into(buf)
            buffer = recv_into_target(buffer, nbytes, flags)
            nbytes = 0
        elif type(buffer) is not bytearray:
            buffer = _writable(buffer)  # (a TypeError now, not after a wait)
        engine = self._engine
        conn = engine.conn
        sid = self._stream_id
        lent = False
        if (
            conn.lent_stream_id == sid
            and self._fast_read
            and len(buffer)  # (an empty one returns at once, below, as a socket's does)
        ):
            # the usual case once the stream carries data: it is lent, so nothing is
            # buffered for it (Engine.lend), and the lane reads straight in
            lock = engine.lock
            lock.acquire()
            try:
                if conn.lent_stream_id == sid and conn.lent_can_recv and not engine.pumping:
                    n: int = engine.read_lent(conn.lent_lane, sid, buffer, self._timeout)
                    if n:
                        return n
                    lent = True
            finally:
                lock.release()
        if self._closed:
            raise SocketClosed("operation on a closed DTP socket")
        view = memoryview(buffer).cast("B")
        if self._rd_shut or not len(view):
            return 0
        session = engine.session
        with engine.lock:
            buf = session.streams.get(sid)
            if session.terminated is None and (
                buf is None
                or not (buf.data or buf.eof or buf.reset_code is not None or buf.discarded)
            ):
                # nothing buffered (Session.readable, inline): read straight in,
                # through the lent lane when the connection lends it -- unless the
                # general path took over and buffered the stream's next bytes
                n = 0
                if self._timeout != 0 and not lent:
                    n = engine.recv_lent(sid, view, self._timeout)
                if n or (
                    not session.readable(sid)
                    and (n := engine.read_fast(sid, view) or self._read_direct(view))
                ):
                    return n
            if self._rd_shut:
                return 0  # (as in recv)
            n = session.take_into(sid, view)
            engine.flush()
            return n

    def _read_direct(self, view: memoryview) -> int:
        """Nothing is buffered for this stream and nothing came with a first read
        (lock held): wait for the carrier as the timeout allows and read it, with the
        stream's next bytes going straight into ``view``. Returns how many did; 0 when
        they went to the stream's buffer instead or the connection ended (the caller
        takes from the buffer, or reports)."""
        engine = self._engine
        session = engine.session
        sid = self._stream_id
        deadline: float | None = None
        while True:
            if session.readable(sid) or self._rd_shut:
                return 0
            if engine.carrier_closed and not engine.out:
                return 0
            if self._timeout == 0:
                raise BlockingIOError(errno.EAGAIN, "operation would block")
            if engine.interrupted:
                engine.take_interrupt(sid)
            if deadline is None and self._timeout is not None:
                deadline = time.monotonic() + self._timeout
            engine.wait_io(deadline)
            if session.readable(sid) or self._rd_shut:
                return 0  # another thread read the carrier meanwhile: buffered bytes first
            n = engine.read_fast(sid, view)
            if n:
                return n

    # -- writing -------------------------------------------------------------------------

    def _check_sendable(self) -> None:
        """Raise when this socket sends no more: closed, or shut for writing (also by
        another thread while this one waited to send, as a socket's send() then fails
        with EPIPE)."""
        if self._closed:
            raise SocketClosed("operation on a closed DTP socket")
        if self._wr_shut:
            raise SendAfterShutdown("cannot send after shutdown(SHUT_WR)")

    def _stream_ready_for_send(self) -> bool:
        """Whether the stream exists for sending: once the connection knows it (a
        server's first stream comes with the client's first bytes), or knew it and is
        done with it (both halves ended: nothing is waited for then)."""
        if self._stream_id in self._engine.conn._streams:
            self._existed = True
            return True
        return self._existed or self._engine.session.terminated is not None

    def send(self, data: Any, flags: int = 0) -> int:
        """Queue as much of ``data`` as fits; returns the count (blocks while none fits,
        up to the socket's timeout). ``flags``: 0, or ``socket.MSG_DONTWAIT`` to take
        only what fits now, whatever the timeout (BlockingIOError when nothing does)."""
        timeout = self._timeout
        if flags or type(flags) is not int:
            if operator.index(flags) != _socket.MSG_DONTWAIT:  # (TypeError for 1.5)
                _checked_flags(flags)
            else:
                timeout = 0.0
        n = self._send(data, timeout)
        self._engine.leave_queued(self._stream_id)
        return n

    def _send(self, data: Any, timeout: float | None) -> int:
        """:meth:`send`, waiting up to ``timeout`` seconds (None: for good; 0: not)."""
        self._check_sendable()
        view = _readable(data)
        if not len(view):
            return 0
        engine = self._engine
        with engine.lock:
            conn = engine.conn
            sid = self._stream_id
            if engine.out and timeout != 0 and not engine.carrier_closed:
                # the carrier is full: wait (reading meanwhile) until it has taken what
                # is queued, rather than seal more behind it -- copies that only wait
                self._wait(
                    lambda: not engine.out or engine.carrier_closed or self._wr_shut, timeout
                )
                self._check_sendable()
            lane = conn.lent_lane if conn.lent_stream_id == sid else engine.lend(sid)
            if lane is not None and not engine.out and not engine.carrier_closed:
                try:
                    n: int = len(view) - lane.send(engine._fd, view, engine.out)
                except OSError as exc:
                    engine._carrier_failed(exc)
                    n = len(view)  # lost with the carrier: the next call reports it
                if n:
                    if engine.out and engine.pumping:
                        engine._wake()  # the carrier is full: the pumping thread writes
                    if engine.payment is not None:
                        engine.tick_meter()
                    return n
            sealed = conn.seal_fast(sid, view, time.monotonic())
            if sealed is None and not engine.out and conn.send_buffered(sid) == 0:
                # out of credit, perhaps only because a sender never reads: the peer's
                # credit update may be waiting in the socket already
                engine.poll()
                sealed = conn.seal_fast(sid, view, time.monotonic())
            if sealed is not None:
                records, n = sealed
                engine.write(records, reused=True)
                if engine.payment is not None:
                    # the meter's receipts, when it has one to send: a flush on every
                    # such write also built and sent records the plain path leaves to
                    # batch (ACKs, credit), a cost the metered client alone paid
                    engine.tick_meter()
                return n
            if engine.session.terminated is None and conn.send_buffered(sid) == 0:
                # the common case: the stream exists (or it would have nothing
                # buffered only if it was never opened) and has room
                engine.session.check_writable(sid)
                if sid in conn._streams:
                    n = min(len(view), SEND_HIGH_WATER)
                    conn.send_stream_data(sid, view if n == len(view) else view[:n])
                    engine.flush()
                    return n
            self._wait(lambda: self._stream_ready_for_send() or self._wr_shut, timeout)
            self._check_sendable()
            engine.session.check_writable(self._stream_id)

            def room() -> bool:
                return (
                    engine.conn.send_buffered(self._stream_id) < SEND_HIGH_WATER
                    or engine.session.terminated is not None
                    or self._wr_shut
                )

            self._wait(room, timeout)
            self._check_sendable()
            engine.session.check_writable(self._stream_id)
            n = min(len(view), SEND_HIGH_WATER - engine.conn.send_buffered(self._stream_id))
            engine.conn.send_stream_data(self._stream_id, view[:n])
            engine.flush()
            return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        """Send all of ``data`` (waits while the peer or the network is slow; ``flags``:
        0). The socket's timeout bounds the whole call, as for a socket: then
        DTPTimeoutError, with an unknown part of ``data`` sent."""
        if flags or type(flags) is not int:
            _checked_flags(flags)
        if type(data) is not bytes:
            # the errors of a socket's (a str: TypeError; a strided view: BufferError)
            # before either path, and the bytes of an array('i'), not its items
            data = _readable(data)
        engine = self._engine
        conn = engine.conn
        if conn.lent_stream_id == self._stream_id and self._fast_write:
            # the stream is lent (the usual case once it carries data): the whole of
            # a small write in one call (acquire / release: cheaper than a with block)
            lock = engine.lock
            watch = False
            lock.acquire()
            try:
                if (
                    conn.lent_stream_id == self._stream_id
                    and not engine.out
                    and not engine.carrier_closed
                ):
                    lane = conn.lent_lane
                    try:
                        left: int = lane.send(engine._fd, data, engine.out)
                    except OSError as exc:
                        engine._carrier_failed(exc)
                        return  # lost with the carrier: the next call reports it
                    full = bool(engine.out)
                    if full and engine.pumping:
                        engine._wake()  # the carrier is full: the pumping thread writes
                        full = False
                    payment = engine.payment
                    if payment is not None:
                        # tick_meter's first check, in place (once per send): the
                        # usage as Connection.usage counts it, against the meter's
                        # quiet bounds; the clock the lane stamped this send with
                        f = lane.flow
                        if (
                            f.conn_sent + f.rx.conn_received + conn.datagram_bytes
                            >= payment.quiet_bytes
                            or f.last_sent >= payment.quiet_until
                        ):
                            engine.tick_meter()
                    if not left:
                        watch = full  # nobody pumps: the timer thread writes
                        return
                    data = memoryview(data).cast("B")[-left:]
            finally:
                lock.release()
                if watch:
                    _TIMERS.watch(engine)
        view = _readable(data)
        if not view:
            # (an empty sendall sends nothing, so only this tells a closed or shut
            # socket, as a socket's sendall(b"") raises EBADF / EPIPE, and send(b"") here
            # does; any other goes through _send's checks)
            self._check_sendable()
        timeout = self._timeout
        if not timeout:  # None (no limit) or 0 (non-blocking: each send takes what fits)
            while len(view):
                n = self._send(view, timeout)
                view = view[n:]
        else:
            # the timeout bounds the whole call, as socket.sendall's does (Python 3.5+),
            # not each wait: a peer that reads slowly cannot stretch it without end
            deadline = time.monotonic() + timeout
            while len(view):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DTPTimeoutError("timed out")
                n = self._send(view, remaining)
                view = view[n:]
        engine.leave_queued(self._stream_id)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send ``file`` (opened in binary mode) from ``offset`` until its end, or
        ``count`` bytes, as :meth:`socket.socket.sendfile` does; returns the bytes sent
        and leaves the file's position after the last of them. The socket's timeout
        bounds the whole call, as for :meth:`sendall`. Non-blocking sockets are not
        supported (ValueError, as for a socket)."""
        if "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if isinstance(offset, bool) or not isinstance(offset, int):
            # (as a socket's: TypeError for 1.5)
            raise TypeError(f"offset must be a non-negative integer, not {offset!r}")
        if offset < 0:
            raise ValueError(f"offset must be a non-negative integer, not {offset!r}")
        if count is not None:
            if not isinstance(count, int) or isinstance(count, bool):
                raise TypeError(f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(f"count must be a positive integer (got {count!r})")
        timeout = self._timeout
        if timeout == 0:
            raise ValueError("non-blocking sockets are not supported")
        deadline = None if timeout is None else time.monotonic() + timeout
        if offset:
            file.seek(offset)
        chunk = bytearray(min(SEND_HIGH_WATER, count or SEND_HIGH_WATER))
        readinto = getattr(file, "readinto", None)
        sent = 0
        try:
            while count is None or sent < count:
                want = len(chunk) if count is None else min(len(chunk), count - sent)
                if readinto is not None:
                    n = readinto(memoryview(chunk)[:want])
                    data = memoryview(chunk)[:n] if n else b""
                else:
                    data = file.read(want)
                if not data:
                    break
                view = memoryview(data).cast("B")
                while len(view):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise DTPTimeoutError("timed out")
                    n = self._send(view, remaining)
                    view = view[n:]
                    sent += n
        finally:
            if sent and hasattr(file, "seek"):
                file.seek(offset + sent)
            self._engine.leave_queued(self._stream_id)
        return sent

    def send_recv(self, data: Any, bufsize: int, *, release: Any = None) -> bytes | None:
        """:meth:`sendall` ``data``, then :meth:`recv` up to ``bufsize`` bytes (a request,
        then its answer; or an answer, then the next request), under one hold of the
        connection's lock, when the stream is lent (the usual case once it carries
        data). The send never waits: what flow control does not let out at once is
        queued for the connection to send, so a TimeoutError is the read's. Returns
        None, with nothing sent, when the stream is not lent now (call :meth:`sendall`
        and :meth:`recv`).

        ``release``: a lock the caller holds to keep other writers off the stream
        (``acquire`` / ``release``), released as soon as ``data`` is on its way -- before
        the read waits -- or when this raises first; kept when None is returned.

        Bad arguments raise as :meth:`sendall` and :meth:`recv` would, whether or not
        the stream is lent, and before anything is sent."""
        try:
            if type(data) is not bytes:
                data = _readable(data)  # (the lane counts bytes: an array('i') by its items)
            if type(bufsize) is not int or not 0 <= bufsize <= _SSIZE_MAX:
                bufsize = _checked_size(bufsize, "recv")
            if self._closed or self._wr_shut:
                self._check_sendable()  # (None would send the caller to sendall to be told)
        except BaseException:
            if release is not None:
                release.release()  # (raising first: the caller's lock is let go of)
            raise
        engine = self._engine
        conn = engine.conn
        sid = self._stream_id
        if not (
            conn.lent_stream_id == sid
            and self._fast_write
            and self._fast_read
            and bufsize > 0
            and engine.payment is None
        ):
            return None
        lock = engine.lock
        owed = release  # until the lane has it
        try:
            lock.acquire()
            try:
                if (
                    conn.lent_stream_id != sid
                    or engine.out
                    or engine.carrier_closed
                    or engine.pumping
                ):
                    owed = None
                    return None
                lane: Any = conn.lent_lane
                lent = False
                deadline = None if self._timeout is None else time.monotonic() + self._timeout
                if bufsize <= lane.own_cap:
                    # the send and the wait for what comes back in one call (the usual case)
                    until = conn.lent_timer
                    if deadline is not None and (until is None or deadline < until):
                        until = deadline
                    ms = -1 if until is None else max(0, int((until - time.monotonic()) * 1000) + 1)
                    engine.pumping = True  # (others see it only while the wait lets go of lock)
                    owed = None
                    try:
                        n: int = lane.exchange(
                            lock,
                            engine._fd,
                            engine._wake_fd,
                            data,
                            engine.out,
                            release,
                            ms,
                            bufsize,
                            sid,
                        )
                    except OSError as exc:
                        engine._carrier_failed(exc)
                        n = -1  # the general path reports it
                    finally:
                        engine.pumping = False
                        if engine.waiters:
                            engine.cond.notify_all()
                    if n > 0:
                        got: bytes = lane.own[:n].tobytes()
                        return got
                    if n == 0:
                        n = engine._recv_lent_wait(lane, sid, bufsize, deadline, lane.status)
                        if n:
                            got = lane.own[:n].tobytes()
                            return got
                        lent = True
                    elif n < -1:
                        # out of credit: the rest is queued (this takes the stream back)
                        conn.send_stream_data(sid, memoryview(data).cast("B")[n + 1 :])
                        engine.flush()
                else:
                    owed = None
                    try:
                        left: int = lane.send(engine._fd, data, engine.out)
                    except OSError as exc:
                        engine._carrier_failed(exc)
                        left = 0  # lost with the carrier: the read reports it
                    finally:
                        if release is not None:
                            release.release()
                    if left:
                        conn.send_stream_data(sid, memoryview(data).cast("B")[-left:])
                        engine.flush()
                    elif not engine.out and conn.lent_stream_id == sid and conn.lent_can_recv:
                        view = engine.recv_scratch(bufsize)
                        n = engine._recv_lent_wait(lane, sid, view, deadline, WAIT)
                        if n:
                            return view[:n].tobytes()
                        lent = True
            finally:
                lock.release()
        finally:
            if owed is not None:
                owed.release()
        return self._recv_general(bufsize, lent)

    # -- closing ----------------------------------------------------------------------------

    def shutdown(self, how: int) -> None:
        """SHUT_WR sends end-of-stream; SHUT_RD stops reading; SHUT_RDWR both."""
        how = operator.index(how)  # (as a socket's: TypeError for 1.0, not SHUT_WR)
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise ValueError(f"shutdown() takes SHUT_RD, SHUT_WR or SHUT_RDWR, got {how!r}")
        self._check_open()
        engine = self._engine
        with engine.lock:
            try:
                if how in (SHUT_WR, SHUT_RDWR) and not self._wr_shut:
                    self._wr_shut = True
                    self._update_fast()
                    engine.wake_waiters()  # a thread blocked sending here fails now
                    self._wait(self._stream_ready_for_send)
                    if (
                        engine.session.terminated is None
                        and self._stream_id in engine.conn._streams
                    ):
                        # (a stream the connection is done with already has its end;
                        # one reset -- by reset(), or at the peer's STOP_SENDING --
                        # raises: closed for sending)
                        engine.conn.send_stream_data(self._stream_id, b"", end_stream=True)
            finally:
                # the read side is shut even when the write side raised: else close()
                # after a reset would leave the peer sending into a stream nobody reads,
                # its credit never returned -- the peer's sendall() waiting for good
                if how in (SHUT_RD, SHUT_RDWR) and not self._rd_shut:
                    self._shut_reading()
                engine.flush()

    def _shut_reading(self, code: int = 0) -> None:
        """The read half of :meth:`shutdown` (lock held): ask the peer to stop sending
        (with ``code``, the application's error code its sends then raise with),
        and drop what is unread and what comes before it stops, returning its credit; a
        thread blocked reading this stream gets b"" now, as on a socket, whether or not
        the peer answers."""
        engine = self._engine
        self._rd_shut = True
        self._update_fast()
        buf = engine.session.streams.get(self._stream_id)
        if engine.session.terminated is None and not (buf and buf.eof):
            with contextlib.suppress(DTPError):
                engine.conn.stop_sending(self._stream_id, code)
        engine.session.discard(self._stream_id)
        engine.wake_waiters()

    def close(self) -> None:
        """Close this stream; closing the first stream closes the connection (after
        up to 5 s for queued data to leave; 30 s over the ledger carrier). As with a
        socket, a file from :meth:`makefile` that is still open keeps the stream open
        and usable: it closes once the last such file is closed (then in the
        background, as the file's close may run in a finalizer; the interpreter's exit
        waits for such closes up to their linger and a second), or at the interpreter's
        exit when a file is left open to the end."""
        if self._closed:
            return
        if self._io_refs > 0:
            self._close_deferred = True
            _TIMERS.defer_close(self)
            return
        if self._primary:
            self._engine.shutdown(self._engine.linger)
            if self._engine.payment is not None:
                self._engine.payment.finish()  # half-close on the ledger
        else:
            with contextlib.suppress(DTPError):
                self.shutdown(SHUT_RDWR)
            engine = self._engine
            with engine.lock:
                engine.session.forget(self._stream_id)
        self._closed = True
        self._update_fast()

    def reset(self, code: int = 0) -> None:
        """Abandon this stream, as a TCP reset does: what is unsent is dropped and the
        peer's reads raise :class:`~dtp.errors.StreamReset` with ``code`` (an
        application error code, 0 to 2**62 - 1) instead of seeing a clean end; then the
        stream closes, as :meth:`close` (on the first stream, the connection with it;
        open files from :meth:`makefile` do not hold it back)."""
        if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code < 1 << 62:
            raise ValueError(f"a reset code is an int from 0 to 2**62 - 1, not {code!r}")
        if self._closed:
            return
        engine = self._engine
        with engine.lock:
            if engine.session.terminated is None:
                with contextlib.suppress(DTPError):  # (the stream ended already)
                    engine.conn.reset_stream(self._stream_id, code)
            if not self._rd_shut:
                # the read side too, now, with the same code: the peer's sends on this
                # stream raise StreamReset(code), as its reads do
                self._shut_reading(code)
            engine.flush()
        if self._primary:
            engine.abandoned = True  # the connection's close waits for nothing
        self._io_refs = 0  # a reset is not held back by open files
        self.close()

    def top_up(self, amount: int) -> None:
        """Add ``amount`` MIST to the deposit of this paid connection (one made by host
        ID with a ``deposit``) while it is open: an ``escrow::top_up`` transaction
        (blocking), then receipts are signed up to the new deposit -- usage the old one
        did not cover is paid at once. The server reads the escrow again when the
        deposit holds the connection (within about a second) and serves on.

        Raises :class:`~dtp.errors.LocalProtocolError` on a connection that is not paid
        or a closed socket, the connection's error (ConnectionClosed, ...) once it has
        ended -- before any transaction: what it added would only come back in the
        refund --, InvalidArgument for an amount that is not a positive int, and what
        the ledger raises (InsufficientFunds: the balance is short; nothing was added
        then)."""
        self._check_open()
        engine = self._engine
        payment = engine.payment
        if payment is None:
            raise LocalProtocolError(
                "top_up: not a paid connection (connect by host ID with a deposit)"
            )
        with engine.lock:
            if engine.session.terminated is not None:
                raise engine.session.error or ConnectionClosed("the connection is closed")
        payment.top_up_on_ledger(amount)  # (without the lock: a ledger transaction)
        with engine.lock:
            payment.topped_up(amount)
            if not engine.closed:
                engine.flush()

    def interrupt_recv(self) -> None:
        """End a blocking read of this stream that another thread is waiting in -- or,
        when none is, the next one -- at once with :class:`~dtp.errors.DTPTimeoutError`,
        as if its timeout had passed (nothing is lost: what arrives stays for the next
        read). For a reader that must look at something another thread changed, such
        as an RPC client whose call was cancelled or which was closed: without it, a
        read ends only with data, its timeout or the connection."""
        engine = self._engine
        with engine.lock:
            engine.interrupted.add(self._stream_id)
            engine.wake_waiters()

    def _flush_files(self) -> None:
        """Flush the files of this socket still open (at the interpreter's exit, before
        it closes the socket: their finalizers flush them only in the teardown, after
        that, and the bytes an application wrote without flushing would be lost while the
        peer reads a clean end). Each waits for the peer up to the linger at most."""
        files = [f for f in self._files if not f.closed]
        if not files:
            return
        with contextlib.suppress(DTPError, OSError, ValueError):
            self.settimeout(self._engine.linger)
        for file in files:
            try:
                file.flush()
            except Exception as exc:  # (whatever the file raises: the exit goes on)
                logger.info("a file of %r was not flushed at exit: %s", self, exc)

    def _release_file(self) -> None:
        """A file from :meth:`makefile` was closed; the last one closes the socket if
        :meth:`close` was deferred for it. This may run in a finalizer -- the file's, or
        that of an object wrapping it (an ``http.client.HTTPResponse``, a
        ``TextIOWrapper`` the application made), which no flag tells from the
        application's own close -- inside any allocation, perhaps with this connection's
        lock held: the deferred close is only queued here (a deque append and a pipe
        write) for a thread of its own, which the interpreter's exit waits for a while
        (_TimerService.finish_closes)."""
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._close_deferred and self._io_refs == 0 and not self._closed:
            _TIMERS.close_later(self)

    def abort(self, reason: str = "aborted") -> None:
        """Close the whole connection at once, dropping queued data."""
        self._engine.abort(CloseCode.APPLICATION, reason)
        self._closed = True
        self._update_fast()
        if self._primary and self._engine.payment is not None:
            self._engine.payment.finish()

    def __enter__(self) -> DTPSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> Any:
        # As a socket's: copy.copy and pickle refuse. A copy shared the engine and
        # believed itself open, so its finalizer closed the carrier under the
        # original -- dropping a copy ended the connection.
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    def __del__(self) -> None:
        # A finalizer runs wherever the garbage collector happens to start: inside any
        # allocation, possibly in the middle of sealing on this or another connection.
        # So it does no protocol work (no seal, no flush, no lock): it only closes the
        # carrier, as a garbage-collected socket.socket does; the peer sees the
        # connection end. (Sealing a CLOSE from here could re-enter a seal in progress.)
        # The connection's other streams may live on (and be in use in other threads):
        # their next call must end with a typed error, not read a closed descriptor's
        # number, which the process may already have given to another socket (the C
        # lane reads and writes by number). So the numbers go first, and the carrier is
        # left "open": the next I/O on it fails (EBADF) and ends the connection under
        # the lock, as a carrier error does (ConnectionLost).
        if getattr(self, "_closed", True):
            return
        if self._primary:
            engine = self._engine
            engine._fd = engine._wake_fd = _DEAD_FD
            engine.closed = True
            for s in (engine.sock, engine._wake_r, engine._wake_w):
                with contextlib.suppress(OSError):
                    s.close()
            # the release hook (a server's: its count of the connections it serves)
            # takes locks, so it runs in the timer thread; never run, the connection
            # would hold its place under the Host's connection limits for good
            hook = engine.take_release_hook()
            if hook is not None:
                _TIMERS.release_later(hook)
        else:
            # another stream: the connection closes it at its next I/O (an append to a
            # deque is safe from here; the timer's next look at the latest)
            self._engine.dropped.append(self._stream_id)

    # -- datagrams -------------------------------------------------------------------------

    def send_datagram(self, data: bytes | bytearray | memoryview) -> None:
        """Send one unreliable datagram on this connection (not on a stream): it arrives
        whole or not at all, unordered, never retransmitted. At most
        ``ConnectionConfig.max_datagram_size`` bytes (else LocalProtocolError). Never
        blocks: while more than ``dtp.protocol.connection.DATAGRAM_SEND_BACKLOG`` bytes (1 MiB),
        or 256 writes, wait for the carrier (the peer is stalled or slow), the datagram
        is dropped and counted in :attr:`datagrams_send_dropped`, as UDP drops what
        does not fit its socket buffer."""
        self._check_open()
        engine = self._engine
        with engine.lock:
            if engine.session.terminated is not None:
                raise engine.session.error or ConnectionClosed("the connection is closed")
            if engine.conn.send_datagram(data, engine.backlog() if engine.out else 0):
                engine.flush()

    def send_datagrams(self, datagrams: Iterable[bytes | bytearray | memoryview]) -> int:
        """:meth:`send_datagram` for many at once (sealed and written together). When
        one of them is not bytes-like (TypeError) or too large (LocalProtocolError),
        none is sent; those that do not fit the backlog are dropped and counted.
        Returns how many went out: the first ones."""
        self._check_open()
        engine = self._engine
        with engine.lock:
            if engine.session.terminated is not None:
                raise engine.session.error or ConnectionClosed("the connection is closed")
            sent = engine.conn.send_datagrams(datagrams, engine.backlog() if engine.out else 0)
            if sent:
                engine.flush()
            return sent

    def recv_datagrams(
        self, max_count: int = 1024, timeout: float | Literal["socket"] | None = "socket"
    ) -> list[bytes]:
        """Wait as :meth:`recv_datagram` does, then return every queued datagram (at
        most ``max_count``, which is at least 1)."""
        max_count = operator.index(max_count)
        if max_count < 1:
            raise ValueError(f"max_count must be at least 1, not {max_count}")
        first = self.recv_datagram(timeout)
        out = [first]
        queue = self._engine.session.datagrams
        with self._engine.lock:
            while queue and len(out) < max_count:
                out.append(queue.popleft())
        return out

    def recv_datagram(self, timeout: float | Literal["socket"] | None = "socket") -> bytes:
        """Wait for the connection's next datagram: up to ``timeout`` seconds (None:
        forever; 0: one look), then DTPTimeoutError. By default the socket's timeout
        applies, as for :meth:`recv`: a non-blocking socket (timeout 0) raises
        BlockingIOError at once when none is queued, as the socket module's do.
        Datagrams not read in time are dropped oldest first (``datagrams_dropped``).
        A ``timeout`` :meth:`settimeout` refuses raises as there (TypeError when not a
        number, ValueError when negative or NaN, OverflowError when too long), before
        any wait."""
        if timeout != "socket":
            # (a negative one was taken for "one look": a typo such as -1 for None then
            # looked like a quiet peer)
            timeout = _checked_timeout(timeout)
        self._check_open()
        engine = self._engine
        session = engine.session
        with engine.lock:
            if not session.datagrams:

                def ready() -> bool:
                    return bool(session.datagrams) or session.terminated is not None

                if timeout == "socket":
                    self._wait(ready)
                elif timeout == 0:
                    engine.poll()
                    if not ready():
                        raise DTPTimeoutError("no datagram")
                else:
                    engine.pump(ready, timeout)
            if not session.datagrams:
                raise session.error or ConnectionClosed("the connection is closed")
            return session.datagrams.popleft()

    @property
    def max_datagram_size(self) -> int:
        """The largest datagram :meth:`send_datagram` takes (over the ledger carrier,
        less than the config's ``max_datagram_size``: a datagram fits one record)."""
        return self._engine.conn.max_datagram_size

    @property
    def datagrams_dropped(self) -> int:
        """Datagrams that arrived but were dropped because they were not read in time."""
        return self._engine.session.datagrams_dropped

    @property
    def datagrams_send_dropped(self) -> int:
        """Datagrams :meth:`send_datagram` / :meth:`send_datagrams` dropped because the
        carrier was backed up (for the whole connection)."""
        return self._engine.conn.datagrams_send_dropped

    # -- streams ---------------------------------------------------------------------------

    def open_stream(self) -> DTPSocket:
        """Open another stream on this connection; at the peer's stream limit, wait
        until it allows another (one of ours finished) within the socket's timeout
        (DTPTimeoutError; BlockingIOError if non-blocking), as :func:`dtp.aio`'s does.
        Raises the connection's error if it ends first."""
        self._check_open()
        engine = self._engine
        session = engine.session
        conn = engine.conn
        with engine.lock:
            session.check_writable(self._stream_id)
            if not conn.can_open_stream():
                # (it raised LocalProtocolError, "wait for one to finish", with no way
                # to wait; the peer's MAX_STREAMS comes as it reads what we sent)
                self._wait(lambda: session.terminated is not None or conn.can_open_stream())
                session.check_writable(self._stream_id)
            stream_id = conn.open_stream()
            engine.flush()
        sock = DTPSocket(engine, stream_id, primary=False)
        sock.settimeout(self._timeout)
        return sock

    def accept_stream(self) -> DTPSocket:
        """Wait for the peer to open a stream and return it."""
        self._check_open()
        engine = self._engine
        session = engine.session
        primary = self._primary_stream_id()
        with engine.lock:

            def ready() -> bool:
                while session.incoming_streams and session.incoming_streams[0] == primary:
                    session.incoming_streams.popleft()
                return bool(session.incoming_streams) or session.terminated is not None

            self._wait(ready)
            if not session.incoming_streams:
                raise session.error or ConnectionClosed("the connection is closed")
            stream_id = session.incoming_streams.popleft()
        sock = DTPSocket(engine, stream_id, primary=False)
        sock.settimeout(self._timeout)
        return sock

    def _primary_stream_id(self) -> int:
        return 0

    def makefile(
        self,
        mode: str = "rb",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """A file object over this stream, as :meth:`socket.socket.makefile` (which
        :meth:`close` waits for, as a socket's does)."""
        return stream_file(self, mode, buffering, encoding, errors, newline, owner=self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<DTPSocket stream={self._stream_id} {state} peer={self.getpeername()}>"


class FileStream(Protocol):
    """What :func:`stream_file` reads and writes through."""

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0, /) -> int: ...

    def send(self, data: Any, flags: int = 0, /) -> int: ...


def stream_file(
    sock: FileStream,
    mode: str = "rb",
    buffering: int | None = None,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    *,
    owner: DTPSocket | None = None,
) -> Any:
    """A file object over ``sock``'s ``recv_into`` and ``send``, as
    :meth:`socket.socket.makefile` makes one (``mode`` of r, w and b; neither r nor w:
    read-only). ``owner``: the DTP socket whose :meth:`~DTPSocket.close` waits until
    this file is closed."""
    if not set(mode) <= {"r", "w", "b"}:
        raise ValueError(f"invalid mode {mode!r} (only r, w, b)")
    writing = "w" in mode
    reading = "r" in mode or not writing  # ("b" alone reads, as a socket's file does)
    if buffering is None or buffering < 0:
        buffering = io.DEFAULT_BUFFER_SIZE
    if buffering == 0 and "b" not in mode:
        raise ValueError("unbuffered streams must be binary")
    raw = _StreamIO(sock, reading, writing, owner)
    if buffering == 0:
        return _held(raw, owner)
    buffered: io.BufferedIOBase
    if reading and writing:
        buffered = io.BufferedRWPair(raw, raw, buffering)
    elif reading:
        buffered = io.BufferedReader(raw, buffering)
    else:
        buffered = io.BufferedWriter(raw, buffering)
    if "b" in mode:
        return _held(buffered, owner)
    text: Any = io.TextIOWrapper(buffered, encoding, errors, newline)
    text.mode = mode  # (as socket.makefile sets it)
    return _held(text, owner)


def _held(file: Any, owner: DTPSocket | None) -> Any:
    """``file``, known to ``owner`` (which flushes it at the interpreter's exit)."""
    if owner is not None:
        owner._files.add(file)
    return file


class _StreamIO(io.RawIOBase):
    """The raw file under :func:`stream_file`, with :class:`socket.SocketIO`'s contract.

    A read that times out (or is interrupted: :meth:`DTPSocket.interrupt_recv`) may
    leave bytes taken from the stream in the buffered file above, which drops them when
    the error goes through it; so, as a socket's file, the file then refuses to read on
    (OSError) rather than go on after a gap. On a non-blocking socket, a read that
    would block returns None and a write sends what fits now and returns its count (or
    None: nothing fits), so that the buffered file above neither loses bytes nor sends
    one twice (a blocking write goes on until all of it is sent or the socket's timeout
    passes: what went then is the count)."""

    def __init__(
        self, sock: FileStream, reading: bool, writing: bool, owner: DTPSocket | None
    ) -> None:
        super().__init__()
        self._sock = sock
        self._reading = reading
        self._writing = writing
        self._timed_out = False
        self._owner = owner
        if owner is not None:
            owner._io_refs += 1

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release_file()

    @property
    def mode(self) -> str:
        """As :class:`socket.SocketIO`'s: ``rb``, ``wb`` or ``rwb``."""
        return ("r" if self._reading else "") + ("w" if self._writing else "") + "b"

    @property
    def name(self) -> str:
        """What the file reads and writes (a socket's file names its descriptor, which
        a DTP stream has not: :meth:`DTPSocket.fileno`)."""
        stream = getattr(self._sock, "_stream_id", None)
        return "<dtp stream>" if stream is None else f"<dtp stream {stream}>"

    def readable(self) -> bool:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        return self._reading

    def writable(self) -> bool:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        return self._writing

    def readinto(self, b: Any) -> int | None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        if not self._reading:
            raise io.UnsupportedOperation("File or stream is not readable.")
        if self._timed_out:
            raise OSError("cannot read from timed out object")
        try:
            return self._sock.recv_into(b)
        except TimeoutError:  # (DTPTimeoutError: a timeout, or interrupt_recv)
            self._timed_out = True
            raise
        except BlockingIOError:
            return None  # non-blocking, nothing there

    def write(self, b: Any) -> int | None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        if not self._writing:
            raise io.UnsupportedOperation("File or stream is not writable.")
        view = memoryview(b).cast("B")
        try:
            sent = self._sock.send(view)
        except BlockingIOError:
            return None  # non-blocking, no room
        # a blocking socket's send takes what fits (a socket's takes it all): on with
        # the rest until the socket would wait no more, then the count of what went --
        # an error raised past it would have the file send those bytes again
        while 0 < sent < len(view):
            try:
                sent += self._sock.send(view[sent:])
            except (BlockingIOError, TimeoutError):
                break  # (the next write finds it again)
        return sent


# -----------------------------------------------------------------------------------------
# client


def create_connection(
    address: tuple[str, int] | str | HostAddress,
    timeout: float | None = _DEFAULT_TIMEOUT,
    *,
    server_key: bytes | None = None,
    expected_server_key: bytes | None = None,
    identity: HostIdentity | None = None,
    config: ConnectionConfig | None = None,
    ledger: Ledger | None = None,
    deposit: int | None = None,
    cap_id: str | None = None,
    carrier: CarrierChoice = "auto",
    ledger_options: LedgerCarrierOptions | None = None,
    metering: MeteringConfig | None = None,
    subscription: str | None = None,
    sponsor_pool: str | None = None,
) -> DTPSocket:
    """Connect to a DTP server and return the connection's first stream.

    ``address``: the server's carrier endpoint ``(host, port)``, or a DTP address
    (``"dtp://0x<host id>:<port>"`` or a :class:`~dtp.hostid.address.HostAddress`). ``server_key``:
    its Noise static public key (32 bytes) if known — the handshake is then Noise IK and a
    server without that key cannot answer; without it the handshake is Noise XX and
    ``expected_server_key`` may pin the key the server must present. ``identity``: our
    keys (a fresh anonymous identity when omitted). A ``config``'s identity and server
    keys stand where these arguments are omitted (a key given both ways must agree:
    ValueError). Raises ConnectionRefused when the
    server refuses us, HandshakeError when the handshake fails, DTPTimeoutError when
    ``timeout`` passes first. ``timeout`` left out is, as for
    :func:`socket.create_connection`, the process's :func:`socket.getdefaulttimeout`
    (None, blocking, unless set), which the stream then has as its timeout too.

    **Connecting by host ID.** With a DTP address, ``ledger`` and ``identity`` (the
    paying Sui key) are required. In order: the Host is read (``ObjectNotFound``); the
    service must exist (``ServiceNotFound``), the firewall must permit us
    (``FirewallDenied``), ``deposit`` (default: the SLA's ``min_deposit``) must reach
    the minimum and our balance (``InsufficientFunds``), and with ``carrier="tcp"`` the host
    must publish a TCP endpoint (:class:`~dtp.hostid.connect.NoCarrierEndpoint`) — all before
    any money moves.
    Then, when ``cap_id`` is None, a new SpendingCap owned by us with
    ``max_per_epoch = deposit`` is created (pass ``cap_id`` to reuse one); the connection
    is opened on the ledger (``deposit`` MIST into its escrow); and we connect to the
    host's first TCP endpoint with Noise IK to the host's published ``noise_static_key``
    (``server_key`` may not disagree with it), naming the connection ID and port in the
    handshake. The socket's ``connection_id`` and ``escrow_id`` name the ledger objects.
    When the host publishes no TCP endpoint (``carrier="auto"``), or with
    ``carrier="ledger"``, the records travel through pipes on the ledger instead (the
    IP-hiding mode, docs/ledger-carrier.md; ``ledger_options`` tunes it); the connection
    then acknowledges and retransmits itself and its handshake timeout is at least 30 s.
    If anything fails after the ledger open (refused, timeout, handshake), we close the
    connection on the ledger (our half-close), so that the deposit can be refunded once
    the close timeout has passed (docs/escrow.md §7); the original error is raised.
    ``timeout`` bounds the carrier connect to each of the host's endpoints in turn
    (:func:`dtp.transport.carriers.tcp.connect_any`) and then the handshake, not the ledger calls.
    The connection is metered (signed cumulative receipts in-band, a final one at
    close, then our half-close on the ledger; docs/escrow.md §6.1) unless
    ``metering=MeteringConfig(enabled=False)``; ``metering`` also sets the cadence.
    ``subscription`` (a live Subscription of ours to this service: the connection opens
    unmetered, ``deposit`` defaulting to 0) or ``sponsor_pool`` (the service's
    SponsorPool, which pledges its share of the deposit) pay another way (docs/escrow.md
    §13-14; :func:`dtp.hostid.connect.prepare_host_connection`).
    """
    if timeout is _DEFAULT_TIMEOUT:
        # left out, or passed on as socket.create_connection takes it (http.client and
        # others do): the process's default socket timeout
        timeout = _socket.getdefaulttimeout()
    check_connect_timeout(timeout)
    if isinstance(address, (str, HostAddress)):
        return _connect_by_host_id(
            HostAddress.parse(address) if isinstance(address, str) else address,
            timeout,
            server_key=pinned_host_key(server_key, expected_server_key),
            identity=identity,
            config=config,
            ledger=ledger,
            deposit=deposit,
            cap_id=cap_id,
            carrier=carrier,
            ledger_options=ledger_options,
            metering=metering,
            subscription=subscription,
            sponsor_pool=sponsor_pool,
        )
    if (
        ledger is not None
        or deposit is not None
        or cap_id is not None
        or carrier == "ledger"
        or ledger_options is not None
        or subscription is not None
        or sponsor_pool is not None
    ):
        raise ValueError("ledger, deposit, cap_id and the ledger carrier need a DTP address")
    cfg, anonymous = direct_client_config(
        config, identity, server_key, expected_server_key, take_anonymous_identity
    )
    return _connect(address, timeout, cfg, anonymous=anonymous)


def _connect_by_host_id(
    address: HostAddress,
    timeout: float | None,
    *,
    server_key: bytes | None,
    identity: HostIdentity | None,
    config: ConnectionConfig | None,
    ledger: Ledger | None,
    deposit: int | None,
    cap_id: str | None,
    carrier: CarrierChoice = "auto",
    ledger_options: LedgerCarrierOptions | None = None,
    metering: MeteringConfig | None = None,
    subscription: str | None = None,
    sponsor_pool: str | None = None,
) -> DTPSocket:
    """create_connection for a DTP address (see there)."""
    if ledger is None:
        raise ValueError("connecting to a DTP address needs the ledger (ledger=...)")
    if identity is None:
        raise ValueError("connecting to a DTP address needs the paying identity (identity=...)")
    check_connect_options(metering, ledger_options)
    prepared, early = prepare_connecting_early(
        ledger,
        address,
        identity,
        deposit=deposit,
        cap_id=cap_id,
        server_key=server_key,
        config=config,
        carrier=carrier,
        subscription=subscription,
        sponsor_pool=sponsor_pool,
    )
    payments: list[ClientPayment] = []
    metered = metering is None or metering.enabled

    def while_waiting(conn: Connection) -> None:
        # While the server works on our first message: the open lands on the ledger (the
        # server's admission gives it a moment), then the meter is set up from it
        opened = prepared.opened
        if prepared.pending_open is not None:
            opened = prepared.pending_open.execute()
        if metered:
            payments.append(
                ClientPayment(
                    ledger,
                    identity,
                    address.host_id,
                    prepared.connection_id,
                    conn,
                    metering,
                    now=time.monotonic(),
                    opened=opened,
                )
            )

    try:
        if prepared.endpoint is None:
            bridge = connect_ledger_carrier(
                ledger, identity, prepared.connection_id, prepared.server_address, ledger_options
            )
            sock = _connect(
                bridge.peername,
                timeout,
                prepared.config,
                str(address),
                bridge.socket,
                while_waiting=while_waiting,
                timer=False,
            )
        else:
            # the host's endpoints in turn until one answers (each with the timeout)
            tcp, reached = connect_any(early, prepared.endpoints, timeout)
            early = None  # (finished: what it made is tcp, or closed)
            sock = _connect(
                reached,
                timeout,
                prepared.config,
                name=str(address),
                carrier=tcp,
                while_waiting=while_waiting,
                timer=False,
            )
    except BaseException as exc:
        if early is not None:
            early.close()
        abandon_host_connection(ledger, identity, address, prepared, exc)
        raise
    sock.connection_id = prepared.connection_id
    sock.escrow_id = prepared.escrow_id
    engine = sock._engine
    if payments:
        with engine.lock:
            engine.payment = payments[0]
            engine.session.on_receipt = payments[0].on_server_receipt
    engine.start_timer()  # (after the payment: a metered engine's passes come sooner)
    return sock


def _connect(
    address: tuple[str, Any],
    timeout: float | None,
    cfg: ConnectionConfig,
    name: str | None = None,
    carrier: _socket.socket | None = None,
    *,
    while_waiting: Callable[[Connection], None] | None = None,
    anonymous: bool = False,
    timer: bool = True,
) -> DTPSocket:
    """Carrier connect + handshake + acceptance with a ready client config; with
    ``carrier`` (a connected socket, e.g. a ledger bridge's), over that instead of TCP.
    ``while_waiting(connection)`` runs once the first handshake message is out, while
    the server works on it; what it raises fails the connect. ``anonymous``: the
    identity is a throwaway one (the next connect will want another). ``timer=False``:
    the caller starts the engine's timers (``_Engine.start_timer``) once it has set the
    engine up (a metered client's payment: its passes come more often)."""
    start = time.monotonic()
    cfg = bounded_by_caller(cfg, timeout)
    tcp = connect_tcp(address, timeout) if carrier is None else carrier
    try:
        session = Session(cfg)  # (starts the handshake: a bad server key fails here)
        engine = _Engine(tcp, session, name=name or f"client-{address[0]}:{address[1]}")
    except BaseException:
        tcp.close()
        raise
    if carrier is not None:
        engine.peername = address

    def open_first_stream() -> None:
        # as the handshake completes: the stream's opening shares the record (and the
        # send) that carries our AUTH proof
        session.on_handshake = None
        if not engine.conn.closed:  # a refusal can come in the same read (IK)
            engine.conn.open_stream()

    session.on_handshake = open_first_stream
    keys = _NextConnectKeys(cfg, anonymous)
    try:
        with engine.lock:
            engine.flush()
            # the server now works on our first message. What it may wait for (the open
            # landing) goes first; then the next connect's keys (off its critical path,
            # until the reply is here), betting it goes to the same server
            if while_waiting is not None:
                while_waiting(engine.conn)
            keys.make(engine)
            remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            engine.pump(
                lambda: session.conn.handshake_hash is not None or session.terminated is not None,
                remaining,
            )
            if session.terminated is None:
                if session.on_handshake is not None:
                    open_first_stream()
                    engine.flush()
                if not session.accepted:
                    # (the rest of them while the verdict comes: an IK server answers
                    # before its hooks decide)
                    keys.make(engine)
                remaining = None if timeout is None else timeout - (time.monotonic() - start)
                engine.pump(
                    lambda: session.accepted or session.terminated is not None,
                    None if remaining is None else max(0.0, remaining),
                )
            if not session.accepted:
                raise HandshakeError.for_client(session.error)
    except DTPTimeoutError:
        engine.abort(CloseCode.HANDSHAKE_FAILED, "client gave up")
        if timeout is None:
            raise  # (a ledger call's, in while_waiting)
        # (the pump's "timed out" names neither the server nor the bound)
        raise connect_timed_out(name or endpoint_text(*address), timeout) from None
    except BaseException:
        engine.abort(CloseCode.HANDSHAKE_FAILED, "client gave up")
        raise
    # what the waits left unmade (the verdict came with the reply) is made at the
    # connection's next wait on the carrier (_Engine._make_ahead): a reply it waits
    # for, or its close's wait for the peer's end -- here it delayed what the caller
    # does next, and the next connect too when it went into its own waits instead
    if not keys.done:
        with engine.lock:
            engine.ahead = keys
    if timer:
        engine.start_timer()
    sock = DTPSocket(engine, 0, primary=True)
    sock.settimeout(timeout)
    return sock


class _NextConnectKeys:
    """Keys for a next connect like this one (dtp.identity.ahead), made in steps while this
    connect waits: an ephemeral key and, in IK, its DH with the server's key; an
    anonymous identity (a process that connects anonymously once usually does again),
    or our static key's DH with the server's (unless dtp.identity.noise keeps it already); and
    in IK the Noise state started for that identity and server, and the identity proof
    for that ephemeral key (dtp.identity.noise.prepare_auth_proof).

    :meth:`make` stops between steps once the server's reply is here: the reply is
    worked on first, and the rest is made during the next wait (for the verdict), or
    the connection's next waits (:meth:`_Engine._make_ahead`), at the latest its
    close (:meth:`_Engine._release`)."""

    def __init__(self, cfg: ConnectionConfig, anonymous: bool) -> None:
        self._cfg = cfg
        self._anonymous = anonymous
        self._identity: HostIdentity | None = cfg.identity
        self._steps = [self._ephemeral, self._static, self._noise_state, self._auth_proof]

    @property
    def done(self) -> bool:
        """Whether every step is made."""
        return not self._steps

    def make(self, engine: _Engine | None = None) -> bool:
        """Make the steps left, stopping early once ``engine``'s carrier has something
        to read (every step when it is None); whether all are made (or given up).

        A step that fails gives up the rest: they are a bet on a next connect, made
        in the waits of this connect or, later, of the connection's reads and close,
        none of which may fail for it -- a close that raised here never released its
        carrier. The next connect makes its own keys (and meets the failure itself)."""
        steps = self._steps
        while steps:
            if engine is not None and _has_input(engine):
                return False
            step = steps.pop(0)
            try:
                step()
            except Exception:
                steps.clear()
                logger.debug("keys for the next connect not made", exc_info=True)
        return True

    def _ephemeral(self) -> None:
        prepare_ephemeral_key(self._cfg.server_static)

    def _static(self) -> None:
        server_key = self._cfg.server_static
        if self._anonymous:
            self._identity = prepare_anonymous_identity(server_key)
        elif server_key is not None and not static_secret_kept(self._cfg.identity, server_key):
            prepare_static_secret(self._cfg.identity, server_key)

    def _noise_state(self) -> None:
        server_key = self._cfg.server_static
        if self._identity is not None and server_key is not None:
            prepare_handshake(self._identity.noise_private_bytes(), server_key, initiator=True)

    def _auth_proof(self) -> None:
        server_key = self._cfg.server_static
        ephemeral = next_ephemeral_public()
        if self._identity is not None and server_key is not None and ephemeral is not None:
            prepare_auth_proof(self._identity, server_key, ephemeral)


def _has_input(engine: _Engine) -> bool:
    """Whether ``engine``'s carrier has bytes to read now (a look, no wait)."""
    try:
        return bool(wait_ready([engine.sock], [], 0)[0])
    except (OSError, ValueError):  # closed meanwhile: the pump says how
        return True


# -----------------------------------------------------------------------------------------
# server


class _AcceptTurn:
    """The job of a DTPServer connection thread whose turn it is to accept on the
    listener (there is one such job per listening server)."""


_ACCEPT_TURN = _AcceptTurn()

_ACCEPT_POLL = 0.5
"""Seconds at most the accepting thread waits before it looks whether the server was
closed (DTPServer._accept_next)."""

_EXPIRY_POLL = 0.25
"""Seconds at most between two looks for connections waiting in a line for a slot past
their deadline (DTPServer._read_loop): they are closed at most this late."""

_PLACE_POLL = 0.05
"""Seconds between two looks for a free place in the accept() queue, while a client
waits in its handshake for one (DTPServer._take_place)."""

_REFUSAL_MARGIN = 0.5
"""Seconds (a quarter of the handshake timeout at most) before its handshake timeout
that a client still waiting for a place in the accept() queue is refused "server busy":
at the timeout itself the connection would end with no reply."""


class _Arrival:
    """A blocking server's new connection until its handshake starts (dtp.transport.handshake_gate):
    its first record is read (by the accepting thread, or the server's reader thread),
    then it waits for its handshake slots unread, holding its socket and what the
    client sent -- no thread, engine or Noise state. It stays the connection's entry in
    the server's :class:`~dtp.transport.handshake_gate.Admission` (its handshake's end releases
    its slots by it)."""

    __slots__ = ("config", "deadline", "engine", "gave_way", "key", "peer", "reader", "tcp")

    def __init__(
        self, tcp: _socket.socket, peer: Any, config: ConnectionConfig, key: str | None
    ) -> None:
        self.tcp = tcp
        self.peer = peer
        self.config = config
        self.key = key  # its address's (None: a ledger bridge, not capped)
        self.deadline = 0.0  # its accept plus its handshake timeout (monotonic)
        self.reader = FirstMessage()
        self.engine: _Engine | None = None  # made as its handshake starts
        self.gave_way = False


# what a connection thread is given: the turn to accept, or a connection whose handshake
# may start (it holds its slots)
_Job = _AcceptTurn | _Arrival


def _read_first(arrival: _Arrival) -> Progress | None:
    """Read what has come of ``arrival``'s first record, without waiting: its progress,
    or None when the client closed (or reset) its end first."""
    tcp = arrival.tcp
    try:
        while arrival.reader.state is Progress.NEED_MORE:
            data = tcp.recv(max(arrival.reader.wanted, 1))
            if not data:
                return None
            arrival.reader.feed(data)
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        return None
    return arrival.reader.state


def _waiting_gone(arrival: _Arrival) -> bool:
    """Whether the client of a connection waiting, unread, in a line for a handshake
    slot has left already: it closed its end (a peek reads end of file) or reset it.
    Nothing is consumed (its handshake reads what came, in its turn), and nothing waits
    -- it runs under the line's lock: a look with no timeout first, as a peek on a
    socket with a timeout would wait for data up to that timeout. The peek itself runs
    with the socket's timeout at 0: with one, a peek that finds no data (poll woke for
    a TCP urgent byte alone, which a peek skips) waits for some up to that timeout,
    MSG_DONTWAIT or not, and then counted the live client as gone."""
    tcp = arrival.tcp
    try:
        if not wait_ready([tcp], [], 0)[0]:
            return False  # nothing came yet: still there
        timeout = tcp.gettimeout()
        if timeout:
            tcp.settimeout(0.0)
        try:
            # (more bytes, or the FIN that ends them: one byte tells which)
            return tcp.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT) == b""
        finally:
            if timeout:
                tcp.settimeout(timeout)
    except BlockingIOError:
        return False
    except (OSError, ValueError):  # reset (ConnectionResetError), or otherwise broken
        return True


def _check_server_identity(identity: Any) -> None:
    """TypeError unless ``identity`` is a :class:`~dtp.identity.keys.HostIdentity`: anything else
    listened, then failed each client's handshake (an AttributeError in a handshake
    thread, a misleading HandshakeError at the client)."""
    if not isinstance(identity, HostIdentity):
        raise TypeError(
            f"identity must be a dtp.identity.keys.HostIdentity (the server's keys), "
            f"not {type(identity).__name__}"
        )


def _check_handshake_bounds(
    max_handshakes: int,
    max_handshakes_per_address: int | None,
    max_waiting_per_address: int,
    backlog: int,
) -> None:
    """Refuse the handshake bounds :func:`create_server` and :func:`dtp.aio.start_server`
    would refuse, as they do (the same classes check them: ValueError for a
    ``max_handshakes`` that is not an int of at least 1, a per-address cap below 1 or a
    line below 0; TypeError for a ``backlog`` that is no integer, OverflowError for one
    that does not fit the C int listen() takes), for a caller that must refuse them
    before it does anything -- the paid servers, before the ledger is read or written
    and their receipts recovered."""
    ServerSlots(max_handshakes, 1)
    if max_handshakes_per_address is not None:
        AddressSlots(max_handshakes_per_address, max_waiting_per_address)
    _check_backlog(backlog)


def _check_backlog(backlog: int) -> None:
    """Refuse a listen ``backlog`` as listen() would: TypeError for one that is no
    integer, OverflowError (with listen()'s message) for one that does not fit a C int.
    Before anything listens: :func:`socket.create_server` closes its socket only on an
    OSError, so listen()'s OverflowError left a bound socket to the garbage collector."""
    value = operator.index(backlog)
    if value > _C_INT_MAX:
        raise OverflowError("signed integer is greater than maximum")
    if value < -_C_INT_MAX - 1:
        raise OverflowError("signed integer is less than minimum")


class DTPServer:
    """A listening DTP endpoint. Each connection's handshake runs in a thread of its
    own, so a slow or hostile client cannot stall :meth:`accept` for others; under
    :meth:`serve_forever` that thread then runs the handler. A connection whose first
    record came with its connect is served by the thread that accepted it, which passes
    the accepting on to another (leader/follower): no thread hand-off. Threads are
    reused: one whose connection is done waits a while (:attr:`WORKER_IDLE`) for the
    next turn to accept (or a connection to serve), so a steady stream of connections
    costs no thread start each. ``address`` None: no TCP listener (see
    :meth:`listen_ledger`).

    New connections are admitted by :class:`dtp.transport.handshake_gate.Admission`, as the
    asyncio server admits them (docs/protocol.md §8):

    * until it has sent its complete first handshake record, within
      ``first_message_timeout`` (3 s), a connection holds only its socket (one reader
      thread watches them all): at most ``backlog`` of them on the server and
      ``max_handshakes_per_address + max_waiting_per_address`` from one address, the
      oldest (of the address holding the most) closed to make room for a newcomer
      (counted in :attr:`unproven_closed`, as those that time out). The
      accepting thread never waits for a slot: silent connections cannot hold the
      listen backlog, nor the handshake slots, against clients that speak;
    * then it takes one of the ``max_handshakes`` (32) slots of the server and one of
      the ``max_handshakes_per_address`` (8) of its IP address (an IPv6 /64; None lifts
      that cap), or waits for them, unread and holding no thread, in a line of at most
      ``backlog`` (the server's) or ``max_waiting_per_address`` (its address's), in
      arrival order, until its accept plus its handshake timeout. A proven connection
      that has to wait makes the oldest *half-handshake* -- one waiting for its
      client's next message -- give way (closed, counted in
      :attr:`half_handshakes_evicted`);
    * one that finds a line full, or waited past its deadline, is closed with no DTP
      reply, counted in :attr:`busy_refused`.

    Connections over the ledger carrier skip the first step and the address cap.
    Accepted connections wait for :meth:`accept` in a queue of ``max_pending`` (128):
    a client the queue has no room for waits in its handshake, and is refused "server
    busy" at its handshake timeout (:meth:`_take_place`)."""

    WORKER_IDLE = 2.0
    """Seconds a connection thread with nothing to do waits for a new connection."""

    def __init__(
        self,
        address: tuple[str, int] | None,
        identity: HostIdentity,
        *,
        accept: AcceptHook | None = None,
        admit: AdmitHook | None = None,
        config: ConnectionConfig | None = None,
        backlog: int = 128,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        max_pending: int = 128,
        max_handshakes_per_address: int | None = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
        max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
        settle_on_close: bool = False,
        first_message_timeout: float = DEFAULT_FIRST_MESSAGE_TIMEOUT,
    ) -> None:
        """``accept``: hook given the client's verified Sui address; ``admit``: hook
        given a :class:`PeerInfo` (address plus the ledger connection ID and port the
        client named). Both run when both are given, ``accept`` first.
        ``max_handshakes_per_address`` / ``max_waiting_per_address`` /
        ``first_message_timeout``: see the class docstring (ValueError below 1 / below
        0 / not above 0). ``settle_on_close``: with a
        :class:`~dtp.hostid.admission.LedgerAdmission` hook, close and settle each client's
        ledger connection on the ledger as its DTP connection ends (see
        :func:`create_server`; ValueError with another hook)."""
        # first: a bad cap or identity must fail before we listen (and leave nothing open)
        _check_server_identity(identity)
        for name, value in (("max_handshakes", max_handshakes), ("max_pending", max_pending)):
            # (0 handshakes served nobody; a queue of 0 or less is unbounded)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int of at least 1, not {value!r}")
        if address is not None:
            _check_backlog(backlog)
        self._admission: Admission[_Arrival] = Admission(
            max_handshakes=max_handshakes,
            max_handshakes_per_address=max_handshakes_per_address,
            max_waiting_per_address=max_waiting_per_address,
            max_waiting=max(backlog, 1),
            max_unproven=max(backlog, 1),
            first_message_timeout=checked_first_message_timeout(first_message_timeout),
            start=self._begin,
            close=self._close_unserved,
            give_way=self._give_way,
            gone=_waiting_gone,
        )
        self._address_slots = self._admission.address_slots
        # unproven connections the reader thread watches, by descriptor (_read_loop)
        self._reading: dict[int, _Arrival] = {}
        # the heap's free pages go back to the system after churn (dtp.transport.heap_release)
        self._heap = HeapRelease()
        # the accepting thread's own next connection, when the admission starts it at
        # once (leader/follower: _accept_next)
        self._local = threading.local()
        self.identity = identity
        self._accept_hook = accept
        self._admit_hook = admit
        self._serving = served_connections(admit, identity, settle_on_close)
        base = config or ConnectionConfig(identity=identity, is_client=False)
        self._config = replace(base, identity=identity, is_client=False)
        self._listener = None if address is None else listen_tcp(address, backlog)
        if self._listener is not None:
            # (the accepting thread waits for it and for orphans at once: _accept_next)
            self._listener.setblocking(False)
        self._address: tuple[str, int] | None = None
        if self._listener is not None:
            host, tcp_port = self._listener.getsockname()[:2]
            self._address = (str(host), int(tcp_port))
        self._ledger_listener: LedgerListener | None = None
        # connections accept() may take; each holds one of max_pending places, taken
        # before its client is told it is in (_take_place) and given back as accept()
        # takes it (the queue itself is unbounded: its end-of-server mark always fits)
        self._ready: queue.Queue[DTPSocket | None] = queue.Queue()
        self._places = threading.BoundedSemaphore(max_pending)
        self._timeout: float | None = None  # accept()'s by default (settimeout)
        self._dispatch: Callable[[DTPSocket], None] | None = None  # set by serve_forever
        self._closed = threading.Event()
        # connection threads waiting for work (a carrier to serve, or the turn to
        # accept on the listener): _idle counts those not yet promised a job from _jobs
        # (see _give and _work)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._idle = 0
        self._idle_lock = threading.Lock()
        self._turn_left = False  # the accepting, for the next thread free (_work)
        # connections whose handshake may start but no thread could be started for: the
        # next thread free serves them (the accepting one is woken for it)
        self._orphans: deque[_Arrival] = deque()
        self._orphan_wake, self._orphan_sender = _socket.socketpair()
        self._orphan_wake.setblocking(False)
        self._orphan_sender.setblocking(False)
        # connection threads count at once: += on an attribute is a read and a write,
        # and two threads could each write back the same count
        self._stats_lock = threading.Lock()
        # engines whose handshake is in progress: close() wakes them, so that their
        # threads and descriptors go at once rather than at the handshake timeout
        self._handshaking: set[_Engine] = set()
        self.handshakes_failed = 0
        self.refused = 0
        #: Connections closed unserved: their address's line, or the server's, was
        #: full, or they waited in it past their deadline; and clients refused "server
        #: busy" for want of room in the accept() queue
        self.busy_refused = 0
        #: Connections closed before their complete first handshake record: timed out
        #: (``first_message_timeout``), or the oldest, making room for newer ones
        self.unproven_closed = 0
        #: Half-handshakes (waiting for their client's next message) ended to make room
        #: for proven connections waiting for a slot (also in :attr:`handshakes_failed`)
        self.half_handshakes_evicted = 0
        # IK first messages seen: a replayed one is turned away before the hooks, so it
        # never holds a client's ledger connection (dtp.transport.replay_guard)
        self._replays = ReplayGuard()
        # one thread reads the first records still coming and closes what waited too
        # long (for its first record, or in a line for a slot); made last, so that a
        # listener that failed leaves none of it behind
        self._reader_wake, self._reader_waker = _socket.socketpair()
        self._reader_wake.setblocking(False)
        self._reader_waker.setblocking(False)
        self._reader = threading.Thread(target=self._read_loop, name="dtp-admission", daemon=True)
        self._reader.start()
        if self._listener is not None:
            self._give(_ACCEPT_TURN)

    @property
    def address(self) -> tuple[str, int]:
        """The TCP address listened on."""
        if self._address is None:
            raise LocalProtocolError("this server has no TCP listener (ledger carrier only)")
        return self._address

    def listen_ledger(
        self,
        ledger: Ledger,
        host_id: str,
        port: int,
        options: LedgerCarrierOptions | None = None,
    ) -> LedgerListener:
        """Also accept connections to ``host_id``:``port`` that come over the ledger
        carrier (the IP-hiding mode): each one, bridged to a local socket, goes through
        the same handshake, hooks and :meth:`accept` / :meth:`serve_forever` as TCP
        connections. Our identity must be the host's authority (NotAuthorized otherwise;
        ObjectNotFound when there is no such host)."""
        if self._ledger_listener is not None:
            raise LocalProtocolError("this server already listens on the ledger")
        config = ledger_config(self._config)

        def handoff(bridge: LedgerBridge) -> None:
            self._handoff(bridge.socket, bridge.peername, config)

        self._ledger_listener = LedgerListener(
            ledger, self.identity, host_id, port, handoff, options=options
        )
        return self._ledger_listener

    @property
    def noise_public_key(self) -> bytes:
        """The key clients pass as ``server_key``."""
        return self.identity.noise_public

    @property
    def handshakes_in_progress(self) -> int:
        """Handshakes in progress now (at most ``max_handshakes``)."""
        return self._admission.in_progress

    @property
    def handshakes_waiting(self) -> int:
        """Connections waiting for one of the ``max_handshakes`` slots (not those
        waiting in their own address's line, nor for their first message)."""
        return self._admission.waiting

    @property
    def unproven(self) -> int:
        """Connections waiting for their complete first handshake record now."""
        return len(self._admission.unproven)

    def _accept_next(self) -> _Arrival | None:
        """The accepting thread's turn: the next TCP connection whose handshake may
        start at once (its first record came with its connect, and its slots were
        free), for this thread to serve; the others go to the reader thread, or to the
        lines, and this thread accepts on. None once the server is closed."""
        listener = self._listener
        assert listener is not None
        while not self._closed.is_set():
            with self._idle_lock:
                if self._orphans:
                    return self._orphans.popleft()
            try:
                # (woken by a connection, by an orphan, or by close()'s shutdown; and
                # every _ACCEPT_POLL at the latest: close() closes what this waits on,
                # whose numbers a new descriptor may take before this poll begins)
                ready = wait_ready([listener, self._orphan_wake], [], _ACCEPT_POLL)[0]
                if listener not in ready:
                    with contextlib.suppress(OSError):
                        self._orphan_wake.recv(4096)
                    continue
                tcp, peer = listener.accept()
            except BlockingIOError:
                continue  # (another took it: none here)
            except (OSError, ValueError):
                if self._closed.is_set():
                    return None
                time.sleep(0.05)
                continue
            try:
                tcp.setblocking(False)
                tune(tcp)
            except OSError:
                tcp.close()  # (reset already)
                continue
            arrival = _Arrival(tcp, peer, self._config, address_key(str(peer[0])))
            mine: list[_Arrival] = []
            self._local.mine = mine
            try:
                self._take_in(arrival)
            except Exception:
                # (a fault of ours at one connection: it goes, the accepting goes on --
                # escaping, it ended this thread and all accepting with it)
                logger.exception("a connection from %s could not be taken in", peer)
                tcp.close()
                continue
            finally:
                self._local.mine = None
            if mine:
                return mine[0]
        return None

    def _take_in(self, arrival: _Arrival) -> None:
        """A new TCP connection: its first record is read now if it came with the
        connect (as a genuine client's does), else the reader thread waits for it."""
        now = time.monotonic()
        arrival.deadline = now + arrival.config.handshake_timeout
        self._admission.arrived(arrival, arrival.key, now)
        self._heap.connected(now)
        progress = _read_first(arrival)
        if progress is Progress.NEED_MORE:
            self._watch(arrival)
        else:
            self._first_read(arrival, progress)

    def _first_read(self, arrival: _Arrival, progress: Progress | None) -> None:
        """``arrival``'s first record is in (COMPLETE: on to the slots), or is not DTP
        (INVALID), or its client left first (None): closed."""
        if progress is Progress.COMPLETE:
            self._admission.proven(arrival, arrival.key, arrival.deadline, time.monotonic())
            return
        if self._admission.dropped(arrival) and progress is Progress.INVALID:
            with self._stats_lock:
                self.handshakes_failed += 1
        arrival.tcp.close()

    def _watch(self, arrival: _Arrival) -> None:
        """Leave ``arrival``'s first record to the reader thread."""
        with self._stats_lock:
            if self._closed.is_set():
                arrival.tcp.close()
                return
            self._reading[arrival.tcp.fileno()] = arrival
        with contextlib.suppress(OSError):
            self._reader_waker.send(b"\0")

    def _read_loop(self) -> None:
        """The reader thread: the first records of the connections that are still
        sending theirs, read as they come, until their first-message timeout; and the
        connections waiting in a line for a slot, closed once past their deadline
        (looked at every :data:`_EXPIRY_POLL` seconds at most)."""
        wake = self._reader_wake
        try:
            while not self._closed.is_set():
                poller = select.poll()
                poller.register(wake, select.POLLIN)
                with self._stats_lock:
                    for fd in self._reading:
                        poller.register(fd, select.POLLIN)
                deadline = self._admission.next_deadline()
                wait = _EXPIRY_POLL
                if deadline is not None:
                    wait = min(max(deadline - time.monotonic(), 0.0), wait)
                for fd, _ in poller.poll(wait * 1000.0 + 1):
                    if fd == wake.fileno():
                        with contextlib.suppress(OSError):
                            wake.recv(4096)
                        continue
                    with self._stats_lock:
                        arrival = self._reading.get(fd)
                    if arrival is None:
                        continue  # (closed meanwhile: it gave way, or timed out)
                    progress = _read_first(arrival)
                    if progress is not Progress.NEED_MORE:
                        with self._stats_lock:
                            self._reading.pop(fd, None)
                        self._guarded_first_read(arrival, progress)
                now = time.monotonic()
                try:
                    self._admission.expire(now)
                except Exception:  # (as _guarded_first_read: never the thread)
                    logger.exception("closing connections past their first-message timeout")
                if self._heap.due(now):
                    # (after churn, at a quiet moment: dtp.transport.heap_release)
                    release_free_heap()
        except Exception:
            # (its end would leave the first records unread and the lines unexpired)
            logger.exception("the admission thread failed")
            raise
        finally:
            self._reader_waker.close()
            wake.close()

    def _guarded_first_read(self, arrival: _Arrival, progress: Progress | None) -> None:
        """:meth:`_first_read` in the reader thread: what it raises (a thread that could
        not start, say) closes that connection, never the thread."""
        try:
            self._first_read(arrival, progress)
        except Exception:
            logger.exception("a connection from %s could not be taken in", arrival.peer)
            arrival.tcp.close()

    def _begin(self, arrival: _Arrival) -> bool:
        """The admission's ``start``: ``arrival`` holds its slots; its handshake begins
        in a connection thread -- this one, when the accepting thread asked for it
        (:meth:`_accept_next`). False when it cannot (the server closed, the client
        left, no thread): closed."""
        if self._closed.is_set():
            arrival.tcp.close()
            return False
        mine: list[_Arrival] | None = getattr(self._local, "mine", None)
        if mine is not None and not mine:
            mine.append(arrival)
            return True
        try:
            self._give(arrival)
        except RuntimeError as exc:
            # the process is out of threads: the first thread free serves it -- the
            # accepting one, woken for it, at the latest (as it serves what it accepts).
            # A ledger connection is closed: a server on the ledger alone has no
            # accepting thread, and its client's ledger connection is not held meanwhile
            logger.warning("no thread for a connection from %s: %s", arrival.peer, exc)
            if arrival.key is None:
                arrival.tcp.close()
                return False
            with self._idle_lock:
                self._orphans.append(arrival)
            with contextlib.suppress(OSError):
                self._orphan_sender.send(b"\0")
        return True

    def _close_unserved(self, arrivals: list[_Arrival], why: Why) -> None:
        """The admission's ``close``: connections it turned away (``why``)."""
        if not arrivals:
            return
        with self._stats_lock:
            if why == "busy":
                self.busy_refused += len(arrivals)
            elif why != "gone":
                self.unproven_closed += len(arrivals)
            for arrival in arrivals:
                with contextlib.suppress(OSError):
                    self._reading.pop(arrival.tcp.fileno(), None)
        for arrival in arrivals:
            logger.debug("closed a connection from %s unserved: %s", arrival.peer, why)
            arrival.tcp.close()

    def _give_way(self, arrival: _Arrival) -> None:
        """The admission's ``give_way``: end a half-handshake, for a proven connection
        waiting for a slot (its thread ends it, and its slot goes on)."""
        with self._stats_lock:
            self.half_handshakes_evicted += 1
        arrival.gave_way = True
        engine = arrival.engine
        if engine is not None:
            engine._wake()  # its pump looks at gave_way

    def _handoff(self, carrier: _socket.socket, peer: Any, config: ConnectionConfig) -> bool:
        """Serve a carrier connection that came from elsewhere (a ledger bridge): it
        waits for a handshake slot as a proven TCP connection does, until ``config``'s
        handshake timeout (a ledger connection's is longer, as its records take ledger
        transactions), holding no thread meanwhile. False (the carrier closed) once the
        server is closed, when the server's line is full, or when no thread can be
        started for it."""
        if self._closed.is_set():
            carrier.close()
            return False
        # no IP address to cap by: the ledger bridge is a local socket
        arrival = _Arrival(carrier, peer, config, None)
        now = time.monotonic()
        arrival.deadline = now + config.handshake_timeout
        self._heap.connected(now)
        self._admission.proven(arrival, None, arrival.deadline, now)
        return carrier.fileno() >= 0  # (closed: no thread for it, or its line was full)

    def _give(self, job: _Job) -> None:
        """Hand ``job`` to a waiting connection thread, or to a new one."""
        with self._idle_lock:
            if self._idle:
                self._idle -= 1  # that waiting thread is promised this job
                self._jobs.put(job)
                return
        thread = threading.Thread(target=self._work, args=(job,), name="dtp-handshake", daemon=True)
        thread.start()

    def _work(self, job: _Job | None) -> None:
        """A connection thread: do ``job``, then wait up to WORKER_IDLE for another.
        With the turn to accept, it accepts one connection, passes the turn on and
        serves that connection itself."""
        while job is not None:
            if isinstance(job, _AcceptTurn):
                accepted = self._accept_next()
                if accepted is None:
                    return  # closed: nobody accepts any more
                try:
                    self._give(_ACCEPT_TURN)  # the next client need not wait for this one
                except RuntimeError as exc:
                    # the process is out of threads. Lost, the turn stopped all
                    # accepting for good; kept by us, serving this connection, it
                    # stopped it for as long as that lasted (under serve_forever, the
                    # handler's whole run): left for whichever thread is free first --
                    # we, or one whose connection ends sooner
                    logger.warning("no thread to pass the accepting on to: %s", exc)
                    with self._idle_lock:
                        if self._idle:  # one became free meanwhile (and waits)
                            self._idle -= 1
                            self._jobs.put(_ACCEPT_TURN)
                        else:
                            self._turn_left = True
                job = accepted
            self._serve_one(job)
            with self._idle_lock:
                if self._orphans:  # (one no thread could be started for)
                    job = self._orphans.popleft()
                    continue
                if self._turn_left:
                    self._turn_left = False
                    job = _ACCEPT_TURN
                    continue
                if self._closed.is_set():
                    return
                self._idle += 1
            try:
                job = self._jobs.get(timeout=self.WORKER_IDLE)
            except queue.Empty:
                with self._idle_lock:
                    if self._idle:
                        self._idle -= 1  # no job promised to us: leave
                        return
                # every waiting thread was promised a job, we included: it is queued
                job = self._jobs.get()

    def _serve_one(self, arrival: _Arrival) -> None:
        """One connection's thread: the handshake, then (under serve_forever) the
        handler, with no thread hand-off between them. It holds its handshake slots
        until the handshake ends."""
        try:
            sock = self._handshake(arrival)
        finally:
            # however the handshake ended: its slots are free for the next client
            self._admission.ended(arrival, time.monotonic())
        if sock is None:
            return
        if self._closed.is_set():
            sock.abort("the server is closed")  # nobody will take it now
            return
        dispatch = self._dispatch
        if dispatch is not None:
            if sock._engine.holds_place:  # (serve_forever began during its handshake)
                sock._engine.holds_place = False
                self._places.release()
            dispatch(sock)
            return
        self._ready.put(sock)  # (its place was taken before its client was told it is in)
        if self._closed.is_set():
            self._drain_ready()  # close() ran meanwhile and may have missed it

    def _drain_ready(self) -> None:
        """Close the connections that completed their handshake but that accept() never
        took (the server is closed: nobody will); a waiting accept() still gets the
        end-of-server mark."""
        ended = False
        while True:
            try:
                sock = self._ready.get_nowait()
            except queue.Empty:
                break
            if sock is None:
                ended = True
            else:
                self._give_place(sock)
                sock.abort("the server is closed")
        if ended:
            self._ready.put_nowait(None)

    def _handshake(self, arrival: _Arrival) -> DTPSocket | None:
        tcp, peer = arrival.tcp, arrival.peer
        session = Session(arrival.config)
        try:
            engine = _Engine(tcp, session, name=f"server-{peer[0]}:{peer[1]}")
        except OSError as exc:
            # (its wake socketpair: out of descriptors, say) escaping, it ended the
            # thread with a traceback, uncounted, the carrier left to the collector
            logger.warning("handshake with %s not started: %s", peer, exc)
            with self._stats_lock:
                self.handshakes_failed += 1
            tcp.close()
            return None
        engine.peername = peer
        arrival.engine = engine
        with self._stats_lock:
            self._handshaking.add(engine)
        try:
            # (close() sets _closed before it wakes what it finds in _handshaking)
            if self._closed.is_set():
                outcome, reason = "closed", "the server is closed"
            else:
                outcome, reason = self._authenticate(engine, arrival)
        except DTPError as exc:
            logger.debug("handshake with %s failed: %s", peer, exc)
            outcome, reason = "failed", "handshake failed"
        except Exception:
            logger.exception("handshake with %s failed", peer)
            engine.abort(CloseCode.INTERNAL_ERROR, "internal error")
            return None
        finally:
            with self._stats_lock:
                self._handshaking.discard(engine)
        # the engine's lock is not held here: abort() and friends take it themselves
        if outcome == "closed":
            engine.abort(CloseCode.HANDSHAKE_FAILED, reason)
            return None
        if outcome in ("failed", "replayed", "gave way"):
            with self._stats_lock:
                self.handshakes_failed += 1
            engine.abort(CloseCode.HANDSHAKE_FAILED, reason)
            return None
        if outcome == "refused":
            with self._stats_lock:
                self.refused += 1
            engine.abort(CloseCode.REFUSED, reason)
            return None
        if outcome == "busy":
            engine.abort(CloseCode.REFUSED, reason)
            return None
        engine.start_timer()
        return DTPSocket(engine, 0, primary=True)

    def _authenticate(self, engine: _Engine, arrival: _Arrival) -> tuple[str, str]:
        """Run the handshake and the accept hook: ("accepted" | "refused" | "busy" |
        "failed" | "replayed" | "gave way" | "closed", reason)."""
        session = engine.session
        conn = session.conn
        # (a wait for a place ends a little before the connection's own handshake timer,
        # so that the refusal still goes out: _take_place)
        timeout = conn.config.handshake_timeout
        deadline = time.monotonic() + timeout - min(_REFUSAL_MARGIN, timeout / 4)
        with engine.lock:
            first = arrival.reader.take()
            if first:
                # (the first record, read before the slots: the handshake's first input)
                conn.receive_data(first, time.monotonic())
                engine._after_io()
            # IK: the client's proof comes with its first message and our reply waits
            # for the verdict; XX: the proof comes after the three messages
            closed = self._closed
            if arrival.key is not None and session.authenticated_address is None:
                # its first record, read, got our reply: its client's next message is
                # due. (A ledger bridge's first record comes over the ledger, slowly: it
                # passed the ledger carrier's own admission, and never gives way)
                self._admission.waiting_for_client(arrival)
            engine.pump(
                lambda: (
                    session.authenticated_address is not None
                    or session.terminated is not None
                    or closed.is_set()
                    or arrival.gave_way
                ),
                conn.config.handshake_timeout,
            )
            self._admission.authenticated(arrival)
            if closed.is_set():
                return "closed", "the server is closed"
            if arrival.gave_way:
                return "gave way", "gave way to a waiting client"
            if session.terminated is not None or session.authenticated_address is None:
                return "failed", "handshake failed"
            # before the hooks: a replay must not reserve the client's ledger connection
            if self._replays.is_replay(conn, engine.peername):
                return "replayed", "handshake failed"
            if self._accept_hook is not None or self._admit_hook is not None:
                # IK: message 2 goes now, and the client works on it while the hooks
                # (the ledger admission) decide; the verdict follows it. Without hooks
                # the verdict is at once: both go in one flight, as one wake-up
                conn.answer()
                engine.flush()
            peer = peer_info(
                session.authenticated_address,
                conn.peer_connection_id,
                conn.peer_port,
                conn.peer_static,
            )
            verdict = self._run_hook(peer)
            if verdict is None and isinstance(self._admit_hook, LedgerAdmission):
                verdict = self._serve_once(engine, peer)
            outcome = "refused"
            if verdict is None and not self._take_place(engine, deadline):
                outcome, verdict = "busy", SERVER_BUSY
                with self._stats_lock:  # (counted before the client can read it)
                    self.busy_refused += 1
            if verdict is not None:
                session.conn.refuse(verdict)  # sends CLOSE(REFUSED, reason)
                engine.flush()
                engine.pump(lambda: not engine.out, 1.0)
                return outcome, verdict
            session.conn.accept()
            self._replays.accepted(conn)
            engine.flush()
            session.process_events()
            # our reply is out and the client works on it: make the next connection's
            # ephemeral key and start its Noise state meanwhile
            prepare_ephemeral_key()
            prepare_handshake(conn.config.identity.noise_private_bytes(), initiator=False)
            return "accepted", ""

    def _take_place(self, engine: _Engine, deadline: float) -> bool:
        """Before a client is told it is in: one of the ``max_pending`` places in the
        queue :meth:`accept` takes from (none is needed under :meth:`serve_forever`,
        whose handler runs in this thread). While none is free -- the application takes
        connections slower than they come -- the client waits in its handshake, until
        ``deadline`` (its handshake timeout): False then, and it is refused "server
        busy". Told it was in and then dropped, a client of a burst died on its first
        write (42-55 % of 1,000 connects to an accept() loop, uncounted); and this
        handshake's slot, held meanwhile, holds the next clients in the listen backlog.
        Lock held (the engine's: pumped while waiting, so a client that gives up is
        seen)."""
        if self._dispatch is not None:
            return True
        session = engine.session
        if self._places.acquire(blocking=False):
            engine.holds_place = True
            return True
        # (IK without hooks: message 2 waited for the verdict; the client works on it
        # while we wait. A no-op where it went already)
        session.conn.answer()
        engine.flush()
        while not self._places.acquire(blocking=False):
            if self._dispatch is not None:
                return True
            left = deadline - time.monotonic()
            if left <= 0 or self._closed.is_set() or session.terminated is not None:
                return False
            with contextlib.suppress(DTPTimeoutError):
                engine.pump(lambda: session.terminated is not None, min(left, _PLACE_POLL))
        engine.holds_place = True
        return True

    def _give_place(self, sock: DTPSocket) -> None:
        """``sock`` left the accept() queue: its place is free for the next client."""
        engine = sock._engine
        if engine.holds_place:
            engine.holds_place = False
            self._places.release()

    def _serve_once(self, engine: _Engine, peer: PeerInfo) -> str | None:
        """A client the ledger admitted: one DTP connection per ledger connection at a
        time, within the connection limits the Host publishes (None, the ID taken until
        the engine is released), or the refusal (docs/escrow.md §2)."""
        cid = peer.connection_id
        assert cid is not None  # (the ledger admitted it by this ID)
        assert isinstance(self._admit_hook, LedgerAdmission)
        refusal = self._serving.reserve(cid, peer.address, self._admit_hook.limits)
        if refusal is None:
            engine.on_release.append(functools.partial(self._serving.release, cid))
        return refusal

    def _run_hook(self, peer: PeerInfo) -> str | None:
        """None to accept, or the refusal reason."""
        hooks: list[tuple[Callable[[Any], bool | str | None], Any]] = []
        if self._accept_hook is not None:
            hooks.append((self._accept_hook, peer.address))
        if self._admit_hook is not None:
            hooks.append((self._admit_hook, peer))
        for hook, arg in hooks:
            try:
                verdict = hook(arg)
            except Exception:
                logger.exception("accept hook failed for %s", peer.address)
                return HOOK_FAILED
            reason = refusal_reason(verdict)
            if reason is not None:
                return reason
        return None

    @property
    def replays_refused(self) -> int:
        """Replayed IK first messages turned away (also counted in
        :attr:`handshakes_failed`): see :mod:`dtp.transport.replay_guard`."""
        return self._replays.refused

    def wait_settled(self, timeout: float | None = None) -> bool:
        """With ``settle_on_close``: wait until the ledger connections of the DTP
        connections that ended so far are settled (True), or ``timeout`` seconds
        (False). Without it there is nothing to wait for (True). A ``timeout``
        :meth:`settimeout` refuses raises as there, with or without it."""
        return self._serving.wait_settled(_checked_timeout(timeout))

    def settimeout(self, timeout: float | None) -> None:
        """The seconds :meth:`accept` waits when called without a timeout, as a
        listening socket's timeout (None, the initial value: forever; 0: non-blocking,
        BlockingIOError at once when no connection is ready)."""
        self._timeout = _checked_timeout(timeout)

    def gettimeout(self) -> float | None:
        """The timeout :meth:`settimeout` set (None: none; 0: non-blocking)."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """Blocking (timeout None) or non-blocking (timeout 0) accept(), as for a socket
        (whose ``flag`` is an integer: TypeError for "x", None or 1.5)."""
        self._timeout = None if operator.index(flag) else 0.0

    def getblocking(self) -> bool:
        """False in non-blocking mode (timeout 0), as for a socket."""
        return self._timeout != 0

    def accept(self, timeout: float | _Own | None = _OWN) -> tuple[DTPSocket, str]:
        """Wait for the next accepted connection: (its first stream, client address).
        ``timeout``: seconds (None: forever), then DTPTimeoutError; by default the
        server's own (:meth:`settimeout`), with which 0 raises BlockingIOError. A
        ``timeout`` :meth:`settimeout` refuses raises as there."""
        own = isinstance(timeout, _Own)
        # (checked first: NaN would wait for good, and a negative one raise queue's error)
        wait = self._timeout if isinstance(timeout, _Own) else _checked_timeout(timeout)
        if self._closed.is_set():
            raise SocketClosed("accept() on a closed server")
        try:
            sock = self._ready.get(block=wait != 0, timeout=wait)
        except queue.Empty:
            if own and wait == 0:
                raise BlockingIOError(errno.EAGAIN, "no connection ready") from None
            raise DTPTimeoutError("no connection within the timeout") from None
        if sock is None:
            # the end-of-server mark stays for the next waiter: every thread blocked in
            # accept() wakes, not only the first
            self._ready.put_nowait(None)
            raise SocketClosed("the server was closed")
        self._give_place(sock)  # (the next client may be told it is in)
        assert sock.peer_address is not None
        return sock, sock.peer_address

    def serve_forever(self, handler: Callable[[DTPSocket], None]) -> None:
        """Accept connections until closed, running ``handler(sock)`` in a thread each.
        The socket is closed when the handler returns; when it raises, the connection
        is aborted instead (the client reads ConnectionClosed "internal error", as from
        a :func:`dtp.aio.start_server` callback that raises) and the error is logged."""

        def run(sock: DTPSocket) -> None:
            failed = True
            try:
                handler(sock)
                failed = False
            except DTPError as exc:
                logger.info("connection from %s ended: %s", sock.peer_address, exc)
            except Exception:
                logger.exception("handler failed for %s", sock.peer_address)
            finally:
                # a clean close would let the client take a reply cut short by the
                # failure for a complete one
                if failed:
                    sock.abort(CALLBACK_FAILED)  # (dtp.aio's reason and code)
                else:
                    sock.close()

        def start(sock: DTPSocket) -> None:
            try:
                threading.Thread(target=run, args=(sock,), daemon=True).start()
            except RuntimeError as exc:
                # out of threads: the client reads "server busy" (and this loop goes
                # on, where the error ended serve_forever with the socket left open)
                logger.warning("no thread for a connection from %s: %s", sock.peer_address, exc)
                sock.abort("server busy")

        # From now on, each connection's handshake thread goes on to run its handler
        # (no thread hand-off); the loop below serves what was queued before.
        self._dispatch = run
        while not self._closed.is_set():
            try:
                sock, _ = self.accept(timeout=0.5)
            except DTPTimeoutError:
                continue
            except LocalProtocolError:
                return
            start(sock)

    def close(self) -> None:
        """Stop listening. Connections accept() handed out (or serve_forever's handlers
        hold) stay open; those that completed their handshake but were never taken are
        closed."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._stats_lock:
            handshaking = list(self._handshaking)
        for engine in handshaking:
            engine._wake()  # its pump sees _closed and gives up (_authenticate)
        # those waiting for their first record or for a slot (never served)
        for arrival in self._admission.drain(time.monotonic()):
            arrival.tcp.close()
        with self._stats_lock:
            self._reading.clear()
        with contextlib.suppress(OSError):
            self._reader_waker.send(b"\0")  # the reader thread sees _closed: it ends
        with self._idle_lock:
            idle, self._idle = self._idle, 0
            orphans = list(self._orphans)
            self._orphans.clear()
        for _ in range(idle):
            self._jobs.put(None)  # waiting connection threads end now
        for arrival in orphans:  # (no thread came free for them: never served)
            arrival.tcp.close()
            self._admission.ended(arrival, time.monotonic())
        if self._ledger_listener is not None:
            self._ledger_listener.close()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                # wakes the thread waiting to accept (close() alone would not, and
                # would leave the port listening until that thread ends)
                self._listener.shutdown(_socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._listener.close()
        with contextlib.suppress(OSError):
            # (the accepting thread waits on the listener and on this: a listener's
            # shutdown alone does not always end a poll on it)
            self._orphan_sender.send(b"\0")
        for end in (self._orphan_sender, self._orphan_wake):
            end.close()
        self._drain_ready()
        self._ready.put_nowait(None)

    def __enter__(self) -> DTPServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> Any:
        # as a listening socket's: a copy shared the listener and threads, and its
        # close() stopped the original's serving
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")


def create_server(
    address: tuple[str, int] | None,
    *,
    identity: HostIdentity,
    accept: AcceptHook | None = None,
    admit: AdmitHook | None = None,
    config: ConnectionConfig | None = None,
    backlog: int = 128,
    ledger: Ledger | None = None,
    host_id: str | None = None,
    port: int | None = None,
    carriers: tuple[str, ...] | None = None,
    ledger_options: LedgerCarrierOptions | None = None,
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
    max_handshakes_per_address: int | None = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
    settle_on_close: bool = False,
    first_message_timeout: float = DEFAULT_FIRST_MESSAGE_TIMEOUT,
    open_grace: float | None = None,
) -> DTPServer:
    """Listen for DTP connections on ``address`` with the host's ``identity``.

    ``accept`` / ``admit``: see :class:`DTPServer`. With ``ledger``, ``host_id`` and
    ``port`` (the DTP port served, a service of that Host), clients are admitted only
    through :class:`~dtp.hostid.admission.LedgerAdmission`: their handshake must name an Open
    ledger connection of theirs to this host and port with a funded escrow, and the
    host's firewall must permit them; others get ConnectionRefused with the reason. One
    DTP connection is served per ledger connection at a time, within the Host's
    connection limits (``max_connections_per_client``, the service's
    ``max_connections``), counted over the DTP connections the server serves now: one
    beyond them is refused (``ConnectionLimitReached`` at the client). Such a server
    only admits: it claims nothing. By default it does not close its side of the ledger
    connection either, so a client may reconnect on the same ledger connection, but its
    deposit waits for the half-close timeout (10 minutes) -- as does that of a client
    refused at a limit, which half-closes its ledger connection as it meets the refusal
    and collects its refund once the timeout has passed (``dtp refund``).
    ``settle_on_close=True`` closes and settles each ledger connection as its DTP
    connection ends, and each one refused at a limit as it is refused (in a thread of
    the server's: the client is refunded its whole deposit at once;
    :meth:`DTPServer.wait_settled`); ``identity`` must then be the host's authority. A
    paid service is :func:`serve`'s (which claims what the client's receipts say and
    settles each connection as it ends, and refunds one refused at a limit at once).

    ``carriers``: ``("tcp",)``, ``("ledger",)`` or both (default: ``("tcp",)``, or
    ``("ledger",)`` when ``address`` is None). With ``"ledger"`` the server also accepts
    connections that come over the ledger carrier — how a host that publishes no endpoint
    (IP-hiding) is reached: it needs ``ledger``/``host_id``/``port``, ``identity`` must be
    the host's authority, and the same admission applies (docs/ledger-carrier.md).

    ``max_handshakes`` / ``max_handshakes_per_address`` / ``max_waiting_per_address``: at
    most that many handshakes in progress at once, and at most that many from one client
    IP address (an IPv6 /64), whose further connections wait in a line of at most that
    many, so one client cannot hold every handshake slot (None: no per-address cap).
    ``first_message_timeout``: seconds a new connection has to send its complete first
    handshake record (ValueError unless a number > 0); at most ``backlog`` connections
    wait for theirs, the oldest closed to make room. See :class:`DTPServer`.

    ``open_grace``: with ledger admission, seconds a connection a client names is looked
    for on the ledger before it is refused as unknown (its open may still be landing:
    the client's open overlaps its handshake); by default
    :attr:`~dtp.hostid.admission.LedgerAdmission.OPEN_GRACE` (2 s). On Sui, where the host's
    full node may show an open later than the client's did, a longer one spares clients
    a refusal (the daemon's default there is 3 s). InvalidArgument unless None or a
    finite number >= 0, or when given without ledger admission.
    """
    check_open_grace_use(open_grace, ledger)
    if carriers is None:
        carriers = ("tcp",) if address is not None else ("ledger",)
    if not carriers or not set(carriers) <= {"tcp", "ledger"}:
        raise ValueError(f"carriers must be 'tcp' and/or 'ledger', got {carriers!r}")
    if ("tcp" in carriers) != (address is not None):
        raise ValueError("an address is needed for the 'tcp' carrier, and only for it")
    if "ledger" in carriers and (ledger is None or host_id is None or port is None):
        raise ValueError("the ledger carrier needs ledger, host_id and port")
    if ledger is not None or host_id is not None or port is not None:
        if ledger is None or host_id is None or port is None:
            raise ValueError("ledger admission needs ledger, host_id and port together")
        if admit is not None:
            raise ValueError("pass either admit or ledger/host_id/port, not both")
        admit = LedgerAdmission(ledger, host_id, port, open_grace=open_grace)
    server = DTPServer(
        address,
        identity,
        accept=accept,
        admit=admit,
        config=config,
        backlog=backlog,
        max_handshakes=max_handshakes,
        max_handshakes_per_address=max_handshakes_per_address,
        max_waiting_per_address=max_waiting_per_address,
        settle_on_close=settle_on_close,
        first_message_timeout=first_message_timeout,
    )
    if "ledger" in carriers:
        assert ledger is not None and host_id is not None and port is not None
        try:
            server.listen_ledger(ledger, host_id, port, ledger_options)
        except BaseException:
            server.close()  # its TCP listener and threads, started already
            raise
    return server


def serve(
    host_id: str,
    port: int,
    handler: Callable[[PaidSocket], None],
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
) -> PaidServer:
    """Serve a paid DTP service on ``port`` of the Host ``host_id``: publish the endpoint
    and Noise key in the Host, admit clients through the ledger, meter them, apply the
    host's firewall at runtime and settle each connection when it ends. Returns the
    running :class:`~dtp.paid.PaidServer` (``close()`` stops it); see :mod:`dtp.paid`.

    ``backlog``, ``max_handshakes``, ``max_handshakes_per_address``,
    ``max_waiting_per_address`` and ``open_grace``: the listen backlog, the bounds on
    handshakes in progress and the admission's grace for an open still landing, as
    :func:`create_server`'s (same defaults; refused as there, but before the ledger is
    read or written)."""
    from dtp.paid import PaidServer

    # before the ledger is read or written (PaidServer checks the handshake bounds first)
    _check_server_identity(identity)
    return PaidServer(
        host_id,
        port,
        handler,
        ledger=ledger,
        identity=identity,
        address=address,
        receipts=receipts,
        policy=policy,
        config=config,
        endpoint=endpoint,
        backlog=backlog,
        max_handshakes=max_handshakes,
        max_handshakes_per_address=max_handshakes_per_address,
        max_waiting_per_address=max_waiting_per_address,
        open_grace=open_grace,
    )
