"""The blocking DTP socket: one stream of a connection, with the :mod:`socket` module's
calls (send, recv, makefile, sendfile, shutdown, timeouts) and DTP's own (more streams,
datagrams). :class:`DTPSocket` holds its identity, timeouts, closing and streams, and is
made of its parts: ``socket_state`` (what it knows of itself), ``socket_reads``,
``socket_writes``, ``socket_datagrams`` and ``layer_access`` (the members for the layers
above)."""

from __future__ import annotations

import contextlib
import io
import logging
import operator
import socket as _socket
import time
from typing import Any

from dtp.errors import ConnectionClosed, DTPError, LocalProtocolError
from dtp.protocol.connection import CloseCode
from dtp.transport.blocking.checks import checked_timeout
from dtp.transport.blocking.files import stream_file
from dtp.transport.blocking.layer_access import LayerAccess
from dtp.transport.blocking.socket_datagrams import Datagrams
from dtp.transport.blocking.socket_reads import StreamReads
from dtp.transport.blocking.socket_writes import SEND_HIGH_WATER as SEND_HIGH_WATER
from dtp.transport.blocking.socket_writes import StreamWrites
from dtp.transport.blocking.timers import TIMERS
from dtp.transport.hooks import NOT_PAID

logger = logging.getLogger(__name__)

SHUT_RD = _socket.SHUT_RD
SHUT_WR = _socket.SHUT_WR
SHUT_RDWR = _socket.SHUT_RDWR

# A descriptor number no Linux process can have (above the kernel's largest possible
# nr_open): I/O on it fails with EBADF (the C lane refuses negative numbers)
_DEAD_FD = 2**31 - 1


class DTPSocket(StreamReads, StreamWrites, Datagrams, LayerAccess):
    """One stream of a DTP connection, with the blocking socket API.

    A stream is not a file descriptor: many streams share one carrier, whose bytes are
    decrypted and buffered here, so the carrier being readable says nothing about a
    stream. :meth:`fileno` therefore raises, and ``select`` / ``selectors`` do not apply:
    wait in threads (timeouts, :meth:`interrupt_recv`), or use :mod:`dtp.aio`."""

    # A connection by host ID (dtp.hostid.blocking.HostSocket) names its ledger objects;
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
            TIMERS.defer_close(self)
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
        host ID with a deposit: :class:`dtp.hostid.blocking.HostSocket`) can be topped
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
        :meth:`close` was deferred for it. This may run in a finalizer -- the file's, or
        that of an object wrapping it (an ``http.client.HTTPResponse``, a
        ``TextIOWrapper`` the application made), which no flag tells from the
        application's own close -- inside any allocation, perhaps with this connection's
        lock held: the deferred close is only queued here (a deque append and a pipe
        write) for a thread of its own, which the interpreter's exit waits for a while
        (TimerService.finish_closes)."""
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._close_deferred and self._io_refs == 0 and not self._closed:
            TIMERS.close_later(self)

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
                TIMERS.release_later(hook)
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
                # (it raised LocalProtocolError, "wait for one to finish", with no way
                # to wait; the peer's MAX_STREAMS comes as it reads what we sent)
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
