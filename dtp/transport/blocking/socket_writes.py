"""Writing to a blocking stream: :meth:`send`, :meth:`sendall` and :meth:`sendfile`,
through the lent lane when the connection lends the stream (the fast path), sealed at
once when flow control allows, and queued up to :data:`SEND_HIGH_WATER` otherwise."""

from __future__ import annotations

import operator
import socket as _socket
import time
from typing import Any

from dtp.errors import DTPTimeoutError
from dtp.transport.blocking.checks import checked_flags, readable
from dtp.transport.blocking.socket_state import StreamState
from dtp.transport.blocking.timers import TIMERS

SEND_HIGH_WATER = 512 * 1024  # bytes queued per stream before writers wait


class StreamWrites(StreamState):
    """The write calls of :class:`~dtp.transport.blocking.socket.DTPSocket`."""

    def send(self, data: Any, flags: int = 0) -> int:
        """Queue as much of ``data`` as fits; returns the count (blocks while none fits,
        up to the socket's timeout). ``flags``: 0, or ``socket.MSG_DONTWAIT`` to take
        only what fits now, whatever the timeout (BlockingIOError when nothing does)."""
        timeout = self._timeout
        if flags or type(flags) is not int:
            if operator.index(flags) != _socket.MSG_DONTWAIT:  # (TypeError for 1.5)
                checked_flags(flags)
            else:
                timeout = 0.0
        n = self._send(data, timeout)
        self._engine.leave_queued(self._stream_id)
        return n

    def _send(self, data: Any, timeout: float | None) -> int:
        """:meth:`send`, waiting up to ``timeout`` seconds (None: for good; 0: not)."""
        self._check_sendable()
        view = readable(data)
        if not len(view):
            return 0
        engine = self._engine
        with engine.lock:
            if engine.hook is not None:
                self._check_payable(len(view))  # (a paid client's deposit: PaymentRequired)
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
                    if engine.hook is not None:
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
                if engine.hook is not None:
                    # what the hook has to send, when it may have some: a flush on
                    # every such write also built and sent records the plain path
                    # leaves to batch (ACKs, credit), a cost only connections with a hook bore
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
            checked_flags(flags)
        if type(data) is not bytes:
            # the errors of a socket's (a str: TypeError; a strided view: BufferError)
            # before either path, and the bytes of an array('i'), not its items
            data = readable(data)
        engine = self._engine
        conn = engine.conn
        if conn.lent_stream_id == self._stream_id and self._fast_write:
            # the stream is lent (the usual case once it carries data): the whole of
            # a small write in one call (acquire / release: cheaper than a with block)
            lock = engine.lock
            watch = False
            lock.acquire()
            try:
                if engine.hook is not None:
                    self._check_payable(len(data))  # (a paid client's deposit)
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
                    hook = engine.hook
                    if hook is not None:
                        # tick_meter's first check, in place (once per send): the
                        # usage as Connection.usage counts it, against the meter's
                        # quiet bounds; the clock the lane stamped this send with
                        f = lane.flow
                        if (
                            f.conn_sent + f.rx.conn_received + conn.datagram_bytes
                            >= hook.quiet_bytes
                            or f.last_sent >= hook.quiet_until
                        ):
                            engine.tick_meter()
                    if not left:
                        watch = full  # nobody pumps: the timer thread writes
                        return
                    data = memoryview(data).cast("B")[-left:]
            finally:
                lock.release()
                if watch:
                    TIMERS.watch(engine)
        view = readable(data)
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
