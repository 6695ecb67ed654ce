"""A blocking connection's lifetime (:class:`EngineLifetime`): its place on the timer
thread, its graceful close (the linger, CLOSE, the carrier's drain, here or on the timer
thread), its abort, and the release of its carrier and of every thread waiting on it."""

from __future__ import annotations

import contextlib
import socket as _socket
import time
from collections.abc import Callable

from dtp.errors import CLOSE_PAYMENT_REQUIRED, DTPError, PaymentRequired
from dtp.protocol.connection import CloseCode
from dtp.transport.blocking.engine_state import EngineState
from dtp.transport.blocking.timers import TIMERS
from dtp.transport.poll import wait_ready
from dtp.transport.session import CARRIER_DRAIN, UNSENT

DRAIN_QUIET = 0.02  # seconds a closing carrier waits for more of the peer's bytes


class EngineLifetime(EngineState):
    """The timer, close and abort of :class:`~dtp.transport.blocking.engine.Engine`."""

    def start_timer(self) -> None:
        """Put this connection on the timer thread, once: the heap re-pushes each entry
        after its pass, so a second add would double the passes for good."""
        if not self.timer_started:
            self.timer_started = True
            TIMERS.add(self)

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
                if self.hook is not None:
                    # the hook's last frames go out before CLOSE, in the same write:
                    # the server wakes once for both
                    self.hook.before_close()
                self.conn.take_back(time.monotonic())  # (a lent stream's counts)
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
                with contextlib.suppress(DTPError):
                    self.pump(lambda: not self.out, min(linger, 1.0))
                # the server's end of the carrier closes once its layer above is done
                # with the connection (ConnectionHook.close_wait)
                left = end - time.monotonic()
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
        to the reset), and when the connection has a hook: the peer's end closes once
        its layer above is done with the connection (ConnectionHook.close_wait; a quiet
        moment of its work must not end our wait)."""
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
                # has_input while recv finds nothing would go round here for good)
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
        TIMERS.drain(carrier, patience)

    def abort(self, code: int, reason: str) -> None:
        """Close the connection at once with ``code`` and ``reason``, dropping queued
        data. A server's CLOSE for a reason, once the handshake is done, still reaches
        the client whatever it is doing: the carrier goes to the timer thread, which
        writes what is left of the CLOSE, half-closes, and reads (dropping) what the
        client still sends until it closes its side or CARRIER_DRAIN passes
        (:meth:`TimerService.drain`). Closed with the client's bytes unread, the
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

    def end_unpaid(self, reason: str) -> DTPError:
        """The connection's hook refused a write (``ConnectionHook.refuse_write``: the
        deposit cannot pay it), lock held: the connection ends at once, as a paid server
        would end it after its pause -- the hook's last frames (the final receipt), then
        CLOSE with CLOSE_PAYMENT_REQUIRED and ``reason`` -- and the error its calls raise
        from now on is returned, for the caller to raise. The carrier is drained as an
        abort's is (the CLOSE behind what the peer has yet to read still reaches it);
        the hook's :meth:`after_close` runs at the socket's close, as ever."""
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
        if self.carrier_closed:
            return
        try:
            carrier = self.sock.dup()
        except OSError:
            return  # (out of descriptors: closed at once, as before)
        out, self.out = self.out, []
        TIMERS.drain(carrier, CARRIER_DRAIN, out)

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
