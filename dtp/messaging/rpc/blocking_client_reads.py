"""The reading of a blocking RPC client (:class:`ClientReads`): a thread waiting for its
call reads for everybody while nobody else does (the leader), the others wait for it (the
followers); what a read brings is fed to the protocol and settles calls."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dtp.errors import DTPError
from dtp.messaging import errors as E
from dtp.messaging.rpc.blocking_client_writes import ClientWrites
from dtp.messaging.rpc.streams import RECV_SIZE, TAKE_PIECE, BlockingStream

if TYPE_CHECKING:
    from dtp.messaging.rpc.blocking_client_state import RpcCall

#: The longest a client's read waits (seconds) before it looks whether the client was
#: closed (it does not own the stream, so it cannot end a read in progress).
_READ_SLICE = 1.0


class ClientReads(ClientWrites):
    """A blocking RPC client's reads and waits (leader/follower, under ``_lock``)."""

    def _absorb(
        self,
        data: bytes | None,
        failed: BaseException | None,
        timer: float | None,
        call: RpcCall,
        deadline: float | None,
    ) -> None:
        """Act on a read (lock held, the reader flag cleared): ``data`` (None: the read
        timed out; b"": the peer closed) or the error ``failed``; ``timer`` is the
        protocol timer the read waited for."""
        proto = self._proto
        if failed is not None:
            self._fail_all(E.RpcConnectionLost(f"the stream failed: {failed}"))
            return
        if data == b"":
            self._fail_all(E.RpcConnectionLost("the peer closed the stream"))
            return
        now = time.monotonic()
        if data:
            if timer is not None and len(data) > TAKE_PIECE:
                now = self._take(data, now, timer)
            else:
                proto.receive_data(data, now)
        # what was read only settles or adds deadlines after ``now``: only the timer
        # that was due before can be due
        if timer is not None and timer <= now:
            proto.handle_timer(now)
        self._dispatch(proto.events())  # wakes the followers
        if not call.done and deadline is not None and now >= deadline:
            self._expire(call, deadline)

    def _take(self, data: bytes, now: float, limit: float) -> float:
        """Feed a large read to the protocol piece by piece (lock held, the reader flag
        cleared) until ``limit`` (the timer the read waited for) passes; what is left
        then is the backlog, which the next reader takes before it reads the stream (in
        order: nobody reads meanwhile). Returns the time of the last look."""
        proto, end = self._proto, len(data)
        pos = 0
        while pos < end:
            proto.receive_data(data[pos : pos + TAKE_PIECE], now)
            pos += TAKE_PIECE
            now = time.monotonic()
            if now >= limit and pos < end:
                self._backlog = data[pos:]
                break
        return now

    @staticmethod
    def _read(stream: BlockingStream, size: int) -> tuple[bytes | None, BaseException | None]:
        """One read for everybody (the reader flag set): ``(data, None)`` -- b"" when
        the peer closed -- or ``(None, None)`` when the read timed out, ``(None, the
        error)`` when it failed (what :meth:`_absorb` takes)."""
        try:
            return stream.recv(size), None
        except TimeoutError:
            return None, None
        except (DTPError, OSError) as exc:
            return None, exc

    def _read_timeout(self, stream: BlockingStream, timeout: float | None) -> None:
        """Give the stream's reads ``timeout``, unless the one already set is as good: a
        little shorter (the wait ends a moment early and the loop comes back) or at most
        a millisecond longer (a deadline is late by that much at worst)."""
        current = self._current_timeout
        if timeout != current and not (
            timeout is not None
            and type(current) is float
            and timeout - 0.05 <= current <= timeout + 0.001
        ):
            stream.settimeout(timeout)
            self._current_timeout = timeout

    def _wait(self, call: RpcCall, deadline: float | None) -> None:
        """Wait until ``call`` is done, reading for everybody while nobody else does."""
        stream, proto, lock = self._stream, self._proto, self._lock
        monotonic = time.monotonic
        while True:
            with lock:
                while not call.done and self._reading:
                    wait = self._wait_time(deadline)
                    if wait is not None and wait <= 0:
                        # a deadline passed while another thread reads: it is kept here,
                        # not at the end of that read (which began, perhaps before this
                        # call was made, with up to _READ_SLICE to wait)
                        self._expire(call, deadline)
                        continue
                    self._followers += 1
                    try:
                        self._cond.wait(wait)
                    finally:
                        self._followers -= 1
                if call.done:
                    # (the CANCEL of a call that timed out here goes now, not with the
                    # next write: the peer stops working for it)
                    pending_out = bool(self._output)
                    break
                self._reading = True
                timer = proto.get_timer()
                backlog, self._backlog = self._backlog, b""
            leading = True
            try:
                if deadline is not None and (timer is None or deadline < timer):
                    timer = deadline
                data: bytes | None
                failed: BaseException | None
                if backlog:  # a reader before us left it: it comes before the stream
                    data, failed = backlog, None
                else:
                    # a slice at most: close() fails the calls, and the wait sees it
                    wait = (
                        _READ_SLICE
                        if timer is None
                        else min(max(timer - monotonic(), 1e-4), _READ_SLICE)
                    )
                    self._read_timeout(stream, wait)
                    data, failed = self._read(stream, RECV_SIZE)
                with lock:
                    self._reading = leading = False
                    self._absorb(data, failed, timer, call, deadline)
                    if failed is not None or data == b"":
                        return
                    pending_out = bool(self._output)
                if pending_out:
                    self._flush_soon()
                if self._notes:
                    self._run_notes(timer)
            except BaseException:
                with lock:  # let another thread read, and re-check
                    if leading:
                        self._reading = False
                    self._wake_followers()
                raise
            if call.done:
                return
        if pending_out:
            self._flush_soon()

    def _wait_time(self, deadline: float | None) -> float | None:
        """Seconds until the first of ``deadline`` and the protocol's next timer (the
        deadline of a call in flight) comes due: at most 0 once it has, None when there
        is neither (lock held)."""
        timer = self._proto.get_timer()
        if deadline is not None and (timer is None or deadline < timer):
            timer = deadline
        return None if timer is None else timer - time.monotonic()
