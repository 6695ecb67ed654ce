"""How a blocking connection reads its carrier (:class:`EngineReads`): what arrived, into
one reused buffer that grows with the reads; a stream's next bytes straight into the
caller's buffer (``read_fast``); and the lent lane's reads and waits, one C call per read
while the stream's records come in order."""

from __future__ import annotations

import time
from typing import Any

from dtp.errors import DTPTimeoutError
from dtp.native.types import DUE, EOF, FULL, NEED_MORE, OK, WAIT, WAKE
from dtp.transport.blocking.engine_state import EngineState
from dtp.transport.blocking.timers import TIMERS
from dtp.transport.session import RECV_CHUNK

READ_FIRST_SKIP = 8  # reads that wait at once after a read found nothing waiting
_READ_ON = frozenset((WAIT, NEED_MORE, OK))  # lent read statuses that wait and read again
_WAITED = frozenset((WAIT, NEED_MORE))  # ... of those, the ones after which time may be up


class EngineReads(EngineState):
    """The carrier reads of :class:`~dtp.transport.blocking.engine.Engine`."""

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
        if self.carrier_closed or self.closed:
            return None
        # the lane takes the stream's bytes only while nothing is buffered for it (the
        # buffer's bytes come first), so a lent stream that may receive has none
        return conn.lend(stream_id, time.monotonic(), not self.session.readable(stream_id))

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
                # general path's next pump (a server's layer above wakes it for each
                # frame it took in: some twenty reads per wake went the general path)
                self._take_wake()
                if self.out:
                    # a sender queued records the full carrier did not take and woke
                    # us, the pumping thread, to write them: now, and the timer thread
                    # waits for room for the rest -- our caller may return with bytes
                    # the general path reads and not call again for a long time
                    self._send_some()
                    if self.out:
                        TIMERS.watch(self)
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
