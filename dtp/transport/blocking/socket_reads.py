"""Reading a blocking stream: :meth:`recv`, :meth:`recv_into` and :meth:`send_recv` (a
request and its answer under one hold of the lock), through the lent lane when the
connection lends the stream (the fast path) and through the stream's buffer otherwise."""

from __future__ import annotations

import errno
import time
from typing import Any

from dtp.errors import SocketClosed
from dtp.native.types import WAIT
from dtp.transport.blocking.checks import (
    SSIZE_MAX,
    checked_flags,
    checked_size,
    readable,
    recv_into_target,
    writable,
)
from dtp.transport.blocking.socket_state import StreamState


class StreamReads(StreamState):
    """The read calls of :class:`~dtp.transport.blocking.socket.DTPSocket`."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Up to ``bufsize`` bytes; b"" once the peer half-closed its side. ``flags``
        must be 0 (a DTP stream has no MSG_PEEK, MSG_OOB ...)."""
        if (
            flags
            or type(bufsize) is not int
            or type(flags) is not int
            or not 0 <= bufsize <= SSIZE_MAX
        ):
            # checked before either path, so that the lent one (which would hand the
            # lane a float) and the general one raise alike, as a socket does
            bufsize = checked_size(bufsize, "recv")
            checked_flags(flags)
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
            buffer = writable(buffer)  # (a TypeError now, not after a wait)
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
                data = readable(data)  # (the lane counts bytes: an array('i') by its items)
            if type(bufsize) is not int or not 0 <= bufsize <= SSIZE_MAX:
                bufsize = checked_size(bufsize, "recv")
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
            and engine.hook is None
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
