"""The blocking DTP socket: one stream of a connection, with the :mod:`socket` module's
calls (send, recv, makefile, sendfile, shutdown, timeouts) and DTP's own (more streams,
datagrams). :class:`DTPSocket` is here whole: what it knows of itself, its identity,
timeouts, closing and streams, its reads, writes and datagrams, and the members for the
layers above."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import operator
import socket as _socket
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from threading import TIMEOUT_MAX
from typing import Any, Literal

from dtp.errors import (
    ConnectionClosed,
    DTPError,
    DTPTimeoutError,
    LocalProtocolError,
    SendAfterShutdown,
    SocketClosed,
)
from dtp.native.types import WAIT
from dtp.protocol.connection import CloseCode
from dtp.transport._hooks import NOT_PAID, ConnectionHook
from dtp.transport.blocking import sched
from dtp.transport.blocking._checks import (
    OWN,
    SSIZE_MAX,
    Own,
    check_sendfile,
    checked_flags,
    checked_size,
    checked_timeout,
    readable,
    recv_into_target,
    writable,
)
from dtp.transport.blocking._engine import CREDIT_WAIT, Engine
from dtp.transport.blocking._files import stream_file

SEND_HIGH_WATER = 512 * 1024  # bytes queued per stream before writers wait

logger = logging.getLogger(__name__)

SHUT_RD = _socket.SHUT_RD
SHUT_WR = _socket.SHUT_WR
SHUT_RDWR = _socket.SHUT_RDWR

# A descriptor number no Linux process can have (above the kernel's largest possible
# nr_open): I/O on it fails with EBADF (the C lane refuses negative numbers)
_DEAD_FD = 2**31 - 1


class DTPSocket:
    """One stream of a DTP connection, with the blocking socket API.

    A stream is not a file descriptor: many streams share one carrier, whose bytes are
    decrypted and buffered here, so the carrier being readable says nothing about a
    stream. :meth:`fileno` therefore raises, and ``select`` / ``selectors`` do not apply:
    wait in threads (timeouts, :meth:`interrupt_recv`), or use :mod:`dtp.aio`."""

    # -- what it knows -------------------------------------------------------------------------

    _engine: Engine
    """The connection's I/O driver, shared by all its streams' sockets."""
    _stream_id: int
    _primary: bool
    """The connection's first stream: closing it closes the connection."""
    _timeout: float | None
    """Seconds a blocking call may wait (None: forever, 0: non-blocking)."""
    _closed: bool
    _io_refs: int
    """Files from makefile() still open: close() waits for them, as a socket's close()
    does (the stream closes with the last of them)."""
    _close_deferred: bool
    """close() was called while files were open: the last of them closes the stream."""
    _files: weakref.WeakSet[Any]
    """The files makefile() made, as the application holds them (buffered, text)."""
    _wr_shut: bool
    _rd_shut: bool
    _fast_read: bool
    """Whether reads may take the lent stream's fast path, as far as this socket goes
    (open, not shut for reading, blocking): one check there."""
    _fast_write: bool
    """Whether writes may take the lent stream's fast path (open, not shut for writing)."""
    _existed: bool
    """The connection has known the stream (see _stream_ready_for_send)."""

    def __init__(self, engine: Engine, stream_id: int, primary: bool) -> None:
        self._engine = engine
        self._stream_id = stream_id
        self._primary = primary
        self._timeout = _socket.getdefaulttimeout()
        self._closed = False
        self._io_refs = 0
        self._close_deferred = False
        self._files = weakref.WeakSet()
        self._wr_shut = False
        self._rd_shut = False
        self._fast_read = self._timeout != 0
        self._fast_write = True
        self._existed = stream_id in engine.conn.streams.by_id

    def _check_open(self) -> None:
        if self._closed:
            raise SocketClosed("operation on a closed DTP socket")

    def _wait(self, ready: Callable[[], bool], timeout: float | Own | None = OWN) -> None:
        """Wait until ``ready()``: for ``timeout`` seconds (by default the socket's; 0:
        BlockingIOError at once unless it is ready after one look)."""
        engine = self._engine
        if isinstance(timeout, Own):
            timeout = self._timeout
        if timeout == 0:
            if not ready():
                engine.poll()
                if not ready():
                    raise BlockingIOError(errno.EAGAIN, "operation would block")
            return
        engine.pump(ready, timeout)

    def _wait_by(
        self, ready: Callable[[], bool], timeout: float | None, deadline: float | None
    ) -> float | None:
        """:meth:`_wait` for a call whose waits share one deadline: ``deadline``
        (monotonic), or ``timeout`` from now when this is the call's first wait (None:
        for good; 0: BlockingIOError unless ready after one look). Returns the deadline
        for the next wait; what is ready at once reads no clock."""
        if timeout == 0:
            self._wait(ready, 0.0)
        elif not ready():
            if deadline is None and timeout is not None:
                deadline = sched.monotonic() + timeout
            self._engine.pump_until(ready, deadline)
        return deadline

    def _check_sendable(self) -> None:
        """Raise when this socket sends no more: closed, or shut for writing (also by
        another thread while this one waited to send, as a socket's send() then fails
        with EPIPE)."""
        if self._closed:
            raise SocketClosed("operation on a closed DTP socket")
        if self._wr_shut:
            raise SendAfterShutdown("cannot send after shutdown(SHUT_WR)")

    def _check_payable(self, nbytes: int, requests: int = 0) -> None:
        """Lock held: on a connection whose hook pays for it (a paid client's), raise
        PaymentRequired, the connection ended, when what it pays cannot cover ``nbytes``
        more bytes and ``requests`` more streams, those queued included
        (``ConnectionHook.refuse_write``). One comparison while the usage stays below
        the hook's ``payable_bytes``."""
        engine = self._engine
        hook = engine.hook
        if hook is None:
            return
        conn = engine.conn
        queued = conn.send_buffered() + nbytes
        if not requests and conn.used_bytes() + queued <= hook.payable_bytes:
            return
        reason = hook.refuse_write(queued, requests)
        if reason is not None:
            raise engine.end_unpaid(reason)

    def _stream_ready_for_send(self) -> bool:
        """Whether the stream exists for sending: once the connection knows it (a
        server's first stream comes with the client's first bytes), or knew it and is
        done with it (both halves ended: nothing is waited for then)."""
        if self._stream_id in self._engine.conn.streams.by_id:
            self._existed = True
            return True
        return self._existed or self._engine.session.terminated is not None

    # A connection by host ID (dtp.hostid._blocking.HostSocket) names its ledger objects;
    # a plain one has none.
    connection_id: str | None = None
    """Client connected by host ID: the ledger connection (TransportControl) ID."""
    escrow_id: str | None = None
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

    @property
    def handshake_hash(self) -> bytes | None:
        """The Noise handshake hash: the same at both ends of this connection and of no
        other, for binding a proof to it (the asyncio writer's
        ``get_extra_info("handshake_hash")``)."""
        return self._engine.conn.handshake_hash

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
            conn.take_back(sched.monotonic())  # the counts of a lent stream
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
        self._timeout = checked_timeout(timeout)
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
                        and self._stream_id in engine.conn.streams.by_id
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
            self._engine.timers.defer_close(self)
            return
        if self._primary:
            self._engine.shutdown(self._engine.linger)
            if self._engine.hook is not None:
                self._engine.hook.after_close()  # half-close on the ledger
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
        """Raises :class:`~dtp.errors.LocalProtocolError`: only a paid connection (by
        host ID with a deposit: :class:`dtp.hostid._blocking.HostSocket`) can be topped
        up; SocketClosed on a closed socket."""
        self._check_open()
        raise LocalProtocolError(NOT_PAID)

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
        :meth:`close` was deferred for it. This may run in a finalizer (the file's, or
        that of an object wrapping it), inside any allocation, perhaps with this
        connection's lock held: the deferred close is only queued here, for a thread of
        its own (TimerService.close_later; the exit waits for it: finish_closes)."""
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._close_deferred and self._io_refs == 0 and not self._closed:
            self._engine.timers.close_later(self)

    def abort(self, reason: str = "aborted") -> None:
        """Close the whole connection at once, dropping queued data."""
        self._engine.abort(CloseCode.APPLICATION, reason)
        self._closed = True
        self._update_fast()
        if self._primary and self._engine.hook is not None:
            self._engine.hook.after_close()

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
        # A finalizer runs wherever the garbage collector starts, possibly in the middle
        # of a seal on this or another connection: it does no protocol work (no seal,
        # flush or lock) and only closes the carrier, as a collected socket.socket does.
        # The connection's other streams may live on in other threads, and the C lane
        # reads and writes by descriptor number, which the process may give to another
        # socket: so the numbers go first, and the carrier is left "open", its next I/O
        # failing (EBADF) and ending the connection under the lock, as a carrier error
        # does (ConnectionLost).
        if getattr(self, "_closed", True):
            return
        if self._primary:
            engine = self._engine
            engine._fd = engine._wake_fd = _DEAD_FD
            engine.closed = True
            with contextlib.suppress(OSError):
                engine.sock.close()
            engine._waker.close()
            # the release hook (a server's: its count of the connections it serves)
            # takes locks, so it runs in the timer thread; never run, the connection
            # would hold its place under the Host's connection limits for good
            hook = engine.take_release_hook()
            if hook is not None:
                engine.timers.release_later(hook)
        else:
            # another stream: the connection closes it at its next I/O (an append to a
            # deque is safe from here; the timer's next look at the latest)
            self._engine.dropped.append(self._stream_id)

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
                # (waits, as connect() does, rather than a LocalProtocolError the caller
                # cannot act on; the peer's MAX_STREAMS comes as it reads what we sent)
                self._wait(lambda: session.terminated is not None or conn.can_open_stream())
                session.check_writable(self._stream_id)
            if engine.hook is not None:
                self._check_payable(0, requests=1)  # (a stream is a request: paid for)
            stream_id = conn.open_stream()
            engine.flush()
        # (a stream of a connection by host ID is a HostSocket too: top_up works on it)
        sock = type(self)(engine, stream_id, primary=False)
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
        sock = type(self)(engine, stream_id, primary=False)
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

    # -- reads ---------------------------------------------------------------------------------

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
                    lane = conn.lent_lane
                    if bufsize <= lane.own_cap:
                        # (_read_lent's usual case, inline: a frame less per read)
                        n: int = engine.read_lent(lane, sid, bufsize, self._timeout)
                        if n:
                            data: bytes = lane.own[:n].tobytes()
                            return data
                    else:
                        got = self._read_lent(lane, bufsize)
                        if got is not None:
                            return got
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
                deadline = sched.monotonic() + self._timeout
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
            if not self._fast_write:  # (closed or shut: see _update_fast)
                self._check_sendable()  # (None would send the caller to sendall to be told)
        except BaseException:
            if release is not None:
                release.release()  # (raising first: the caller's lock is let go of)
            raise
        engine = self._engine
        conn = engine.conn
        sid = self._stream_id
        if not (
            conn.lent_stream_id == sid  # (and _fast_write: checked above)
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
                now = sched.monotonic()  # (one clock read for the deadline and the wait)
                deadline = None if self._timeout is None else now + self._timeout
                if bufsize <= lane.own_cap:
                    # the send and the wait for what comes back in one call (the usual case)
                    until = conn.lent_timer
                    if deadline is not None and (until is None or deadline < until):
                        until = deadline
                    if until is None:
                        ms = -1
                    elif (ms := int((until - now) * 1000) + 1) < 0:
                        ms = 0  # (past: a wait of none, without a call of max)
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

    # -- writes --------------------------------------------------------------------------------

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

    def _send(self, data: Any, timeout: float | None, deadline: float | None = None) -> int:
        """:meth:`send`, waiting up to ``timeout`` seconds (None: for good; 0: not) in
        all: its waits (for the carrier, the credit, the stream's room) share one
        ``deadline`` (monotonic), the caller's when it has one (sendall's), else taken at
        the first wait -- a send that waits for nothing reads no clock for it."""
        self._check_sendable()
        # bytes and views of bytes go as they are (what sendall takes them as); anything
        # else as a socket sends it (readable: an array('i') by its bytes, or the error)
        if type(data) is bytes or (
            type(data) is memoryview and data.format == "B" and data.ndim == 1 and data.c_contiguous
        ):
            view = data
        else:
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
                if deadline is None and timeout is not None:
                    deadline = sched.monotonic() + timeout
                engine.pump_until(
                    lambda: not engine.out or engine.carrier_closed or self._wr_shut, deadline
                )
                self._check_sendable()
            if conn.lent_stream_id == sid:
                lane = conn.lent_lane
            elif conn.send_buffered(sid):
                # the lane could not send (the queued bytes go first): a loan would
                # only be taken back by the general path below
                lane = None
            else:
                lane = engine.lend(sid)
            if lane is not None and not engine.out and not engine.carrier_closed:
                try:
                    n: int = len(view) - lane.send(engine._fd, view, engine.out)
                    if not n and engine.take_lent_credit(lane):
                        # out of credit, which the peer's records in the socket gave
                        n = len(view) - lane.send(engine._fd, view, engine.out)
                    if not n and timeout != 0:
                        # blocking: a reader that keeps up has its next credit on the
                        # way; waited for in the lane (Engine.wait_lent_credit), out
                        # of what is left of the timeout, not a wait of its own
                        now = sched.monotonic()
                        until = now + CREDIT_WAIT
                        if timeout is not None:
                            if deadline is None:
                                deadline = now + timeout
                            if deadline < until:
                                until = deadline
                        while (
                            engine.wait_lent_credit(lane, sid, until)
                            and not self._wr_shut
                            and not self._closed
                        ):
                            n = len(view) - lane.send(engine._fd, view, engine.out)
                            if n:
                                break
                except OSError as exc:
                    engine._carrier_failed(exc)
                    n = len(view)  # lost with the carrier: the next call reports it
                if not n:
                    self._check_sendable()  # (shut or closed by another thread as it waited)
                if n:
                    if engine.out and engine.pumping:
                        engine._wake()  # the carrier is full: the pumping thread writes
                    if engine.hook is not None:
                        engine.tick_meter()
                    return n
            sealed = conn.seal_fast(sid, view, sched.monotonic())
            if sealed is None and not engine.out and conn.send_buffered(sid) == 0:
                # out of credit, perhaps only because a sender never reads: the peer's
                # credit update may be waiting in the socket already
                engine.poll()
                sealed = conn.seal_fast(sid, view, sched.monotonic())
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
                if sid in conn.streams.by_id:
                    n = min(len(view), SEND_HIGH_WATER)
                    conn.send_stream_data(sid, view if n == len(view) else memoryview(view)[:n])
                    engine.flush()
                    return n
            deadline = self._wait_by(
                lambda: self._stream_ready_for_send() or self._wr_shut, timeout, deadline
            )
            self._check_sendable()
            engine.session.check_writable(self._stream_id)

            def room() -> bool:
                return (
                    engine.conn.send_buffered(self._stream_id) < SEND_HIGH_WATER
                    or engine.session.terminated is not None
                    or self._wr_shut
                )

            self._wait_by(room, timeout, deadline)
            self._check_sendable()
            engine.session.check_writable(self._stream_id)
            n = min(len(view), SEND_HIGH_WATER - engine.conn.send_buffered(self._stream_id))
            engine.conn.send_stream_data(self._stream_id, memoryview(view)[:n])  # (no copy)
            engine.flush()
            return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        """Send all of ``data`` (waits while the peer or the network is slow; ``flags``:
        0). The socket's timeout bounds the whole call, as for a socket: then
        DTPTimeoutError, with an unknown part of ``data`` sent."""
        if flags or type(flags) is not int:
            checked_flags(flags)
        if type(data) is not bytes and not (
            type(data) is memoryview and data.format == "B" and data.ndim == 1 and data.c_contiguous
        ):
            # the errors of a socket's (a str: TypeError; a strided view: BufferError)
            # before either path, and the bytes of an array('i') or of a view of rows,
            # not its items, which len() counts (a flat view of bytes, as an echo's
            # memoryview(buf)[:n], is taken as it is)
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
                hook = engine.hook
                f = None
                rest = 0
                if hook is not None and conn.lent_stream_id == self._stream_id:
                    # (a paid client's deposit) _check_payable's test, inline: a loan that
                    # may take credit began with no stream's bytes queued, and any call
                    # that queues some ends it first, so nothing is queued while it lasts
                    f = conn.lent_lane.flow
                    # the usage but the bytes sent, which the lane's send leaves as is
                    rest = f.rx.conn_received + conn.datagram_bytes
                    if not f.take_credit or f.conn_sent + rest + len(data) > hook.payable_bytes:
                        f = None
                if hook is not None and f is None:
                    self._check_payable(len(data))
                out = engine.out
                if conn.lent_stream_id == self._stream_id and not out and not engine.carrier_closed:
                    lane = conn.lent_lane
                    try:
                        left: int = lane.send(engine._fd, data, out)
                    except OSError as exc:
                        engine._carrier_failed(exc)
                        return  # lost with the carrier: the next call reports it
                    full = False
                    if out:  # (the records the full carrier did not take)
                        if engine.pumping:
                            engine._wake()  # the pumping thread writes them
                        else:
                            full = True
                    if hook is not None:
                        # tick_meter's first check, in place (once per send): the
                        # usage as Connection.usage counts it, against the meter's
                        # quiet bounds; the clock the lane stamped this send with
                        if f is None:
                            f = lane.flow
                            rest = f.rx.conn_received + conn.datagram_bytes
                        if (
                            f.conn_sent + rest >= hook.quiet_bytes
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
                    engine.timers.watch(engine)
        view = memoryview(data).cast("B")  # (bytes or a contiguous view: checked above)
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
            deadline = sched.monotonic() + timeout
            while len(view):
                remaining = deadline - sched.monotonic()
                if remaining <= 0:
                    raise DTPTimeoutError("timed out")
                n = self._send(view, remaining, deadline)
                view = view[n:]
        engine.leave_queued(self._stream_id)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send ``file`` (opened in binary mode) from ``offset`` until its end, or
        ``count`` bytes, as :meth:`socket.socket.sendfile` does; returns the bytes sent
        and leaves the file's position after the last of them. The socket's timeout
        bounds the whole call, as for :meth:`sendall`. Non-blocking sockets are not
        supported (ValueError, as for a socket)."""
        timeout = self._timeout
        check_sendfile(file, offset, count, timeout)
        deadline = None if timeout is None else sched.monotonic() + timeout
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
                    remaining = None if deadline is None else deadline - sched.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise DTPTimeoutError("timed out")
                    n = self._send(view, remaining, deadline)
                    view = view[n:]
                    sent += n
        finally:
            if sent and hasattr(file, "seek"):
                file.seek(offset + sent)
            self._engine.leave_queued(self._stream_id)
        return sent

    # -- datagrams -----------------------------------------------------------------------------

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
            if engine.hook is not None:
                self._check_payable(memoryview(data).nbytes)  # (a paid client's deposit)
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
            if engine.hook is not None:
                # (a paid client's deposit: all of them, as they go out together)
                datagrams = list(datagrams)
                self._check_payable(sum(memoryview(d).nbytes for d in datagrams))
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
        if timeout != "socket" and not (type(timeout) is float and 0.0 <= timeout <= TIMEOUT_MAX):
            timeout = checked_timeout(timeout)  # (else checked already: a relay's every run)
        if self._closed:  # (_check_open, inline)
            raise SocketClosed("operation on a closed DTP socket")
        with self._engine.lock:
            queue = self._queued_datagrams(timeout)
            out = [queue.popleft()]
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
            # (a negative one is refused, not taken for "one look": a typo such as -1
            # for None would look like a quiet peer)
            timeout = checked_timeout(timeout)
        self._check_open()
        with self._engine.lock:
            return self._queued_datagrams(timeout).popleft()

    def _queued_datagrams(self, timeout: float | Literal["socket"] | None) -> deque[bytes]:
        """The connection's queue of datagrams once it holds one (engine lock held),
        waiting for it as :meth:`recv_datagram` says (``timeout`` checked)."""
        engine = self._engine
        session = engine.session
        queue = session.datagrams  # (made once, never replaced)
        if not queue:

            def ready() -> bool:
                return bool(queue) or session.terminated is not None

            if timeout == "socket":
                self._wait(ready)
            elif timeout == 0:
                engine.poll()
                if not ready():
                    raise DTPTimeoutError("no datagram")
            else:
                engine.pump(ready, timeout)
            if not queue:
                raise session.error or ConnectionClosed("the connection is closed")
        return queue

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

    # -- what the layers above use ------------------------------------------------------------

    @property
    def layer(self) -> ConnectionLayer:
        """What a layer above this one (a connection by host ID's payment, a paid
        server's receipt gate) uses to ride on the connection: not for applications."""
        return ConnectionLayer(self)

    @property
    def connection_ended(self) -> bool:
        """Whether the connection has ended (closed, aborted or timed out): a loop
        reading this socket stops on it, where a read that timed out may only be a
        pause (after an idle timeout every read raises DTPTimeoutError at once)."""
        return self._engine.session.terminated is not None

    @property
    def reliable_carrier(self) -> bool:
        """Whether the connection's carrier is reliable and ordered (TCP), so that the
        connection itself does not acknowledge or retransmit
        (``ConnectionConfig.reliable_carrier``)."""
        return self._engine.conn.config.reliable_carrier

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


class ConnectionLayer:
    """The members a layer above the transport uses on a blocking connection
    (:attr:`DTPSocket.layer`): its hook (:class:`~dtp.transport._hooks.ConnectionHook`),
    its timer, its lock and its waits. Kept off the socket's own face, which is the
    application's."""

    __slots__ = ("_engine", "_sock")

    def __init__(self, sock: DTPSocket) -> None:
        self._sock = sock
        self._engine = sock._engine

    @property
    def hook(self) -> ConnectionHook | None:
        """What a layer above has riding on this connection (a connection by host ID's
        metered payment), or None."""
        return self._engine.hook

    def set_hook(
        self, hook: ConnectionHook | None, on_receipt: Callable[[bytes], None] | None = None
    ) -> None:
        """Have ``hook`` ride on this connection (the driver calls it as
        :class:`~dtp.transport._hooks.ConnectionHook` says), and ``on_receipt`` take each
        RECEIPT frame's payload as it arrives (without one they queue, bounded)."""
        engine = self._engine
        with engine.lock:
            engine.hook = hook
            engine.session.on_receipt = on_receipt

    def start_timer(self) -> None:
        """Start the connection's timer, on a socket connected with ``timer=False``
        (:func:`dtp.transport.blocking._connect.connect`) once its hook is set."""
        self._engine.start_timer()

    def check_live(self) -> None:
        """Raise SocketClosed when the socket is closed, and the connection's error
        (ConnectionClosed, ...) once the connection has ended."""
        self._sock._check_open()
        engine = self._engine
        with engine.lock:
            if engine.session.terminated is not None:
                raise engine.session.error or ConnectionClosed("the connection is closed")

    def run_and_flush(self, action: Callable[[], None]) -> None:
        """Run ``action`` with the connection's lock held (it may queue frames: a
        hook's), then send what it queued, unless the connection is closed."""
        engine = self._engine
        with engine.lock:
            action()
            if not engine.closed:
                engine.flush()

    @property
    def driver(self) -> Engine:
        """The connection's I/O driver, for a layer above that runs its own rules on the
        connection under the driver's lock (a paid server's receipt gate:
        :class:`dtp.hostid.paid._blocking.PaidConnection`)."""
        return self._engine

    def wake(self) -> None:
        """Wake the thread waiting on the connection's carrier, so that it looks at its
        conditions again (from any thread, without the connection's lock)."""
        self._engine._wake()
