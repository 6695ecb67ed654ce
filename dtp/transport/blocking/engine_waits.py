"""How a blocking connection waits (:class:`EngineWaits`): the pump -- one thread at a
time waits on the carrier, the others on the condition -- and what follows each of its
passes (timers, events, the streams dropped unclosed, output); the wake socket that ends
its wait early; the carrier's failure; and the next connect's keys, made where it would
wait."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from dtp.errors import DTPError, DTPTimeoutError
from dtp.protocol.state import SendState
from dtp.transport.blocking.engine_state import EngineState
from dtp.transport.poll import wait_ready

# (every part of the engine logs under its name: one logger to configure)
logger = logging.getLogger("dtp.transport.blocking.engine")


class EngineWaits(EngineState):
    """The pump of :class:`~dtp.transport.blocking.engine.Engine`."""

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

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _take_wake(self) -> None:
        """Empty the wake socket: the wakes so far are seen (lock held, by the thread
        that waited on the carrier)."""
        with contextlib.suppress(OSError):
            self._wake_r.recv(4096)

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
        """Make what is left of the next connect's keys (:class:`NextConnectKeys`),
        lock held, where we would wait on the carrier now -- the rest of the connect's
        own waits had none to spare -- step by step until the carrier has something to
        read (the rest at the next wait)."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None and not ahead.make(self):
            self.ahead = ahead
