"""What a blocking connection writes (:class:`EngineOutput`): the connection's records
go straight to the carrier when nothing is queued, else are queued and written as the
carrier takes them (one writev for many buffers); the backlog a datagram would wait
behind; the watch the timer thread keeps on what a write leaves queued; and a metered
connection's hook after a send."""

from __future__ import annotations

import time

from dtp.protocol.connection import DATAGRAM_SEND_BACKLOG
from dtp.transport.blocking.engine_state import EngineState
from dtp.transport.blocking.timers import TIMERS

_IOV_MAX = 512  # buffers per sendmsg (Linux allows 1024)
# Buffers queued for the carrier beyond which a datagram is dropped whatever their size
# (each datagram sent while the carrier is full queues one): their sum stays cheap.
_BACKLOG_ENTRIES = 256


class EngineOutput(EngineState):
    """The output of :class:`~dtp.transport.blocking.engine.Engine`."""

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
        if self.hook is not None:
            self.hook.on_output(now)
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
            TIMERS.watch(self)

    def tick_meter(self) -> None:
        """A connection with a hook after a send (lock held): let the hook act when it
        may have something to do (ConnectionHook.quiet_bytes / quiet_until), and write
        what it queued -- which took the stream back -- without taking a lent stream
        back on every send."""
        hook = self.hook
        assert hook is not None
        now = time.monotonic()
        # (the usage, datagrams included: the lane's counts alone would miss those)
        if self.conn.usage[0] < hook.quiet_bytes and now < hook.quiet_until:
            return
        hook.on_output(now)
        if self.conn.lent_lane is None:
            self.flush()
