"""What one blocking stream socket knows of itself: its connection's engine, its stream,
timeout, and how far it is closed or shut down; and the checks and the wait that its reads,
writes, datagrams and closing all use (:class:`~dtp.transport.blocking.socket.DTPSocket` is
made of these parts)."""

from __future__ import annotations

import errno
import socket as _socket
import weakref
from collections.abc import Callable
from typing import Any

from dtp.errors import SendAfterShutdown, SocketClosed
from dtp.transport.blocking.checks import OWN, Own
from dtp.transport.blocking.engine import Engine


class StreamState:
    """The state of one stream's socket, declared once for every part of
    :class:`~dtp.transport.blocking.socket.DTPSocket`."""

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
        self._existed = stream_id in engine.conn._streams

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
        if not requests and conn.usage[0] + queued <= hook.payable_bytes:
            return
        reason = hook.refuse_write(queued, requests)
        if reason is not None:
            raise engine.end_unpaid(reason)

    def _stream_ready_for_send(self) -> bool:
        """Whether the stream exists for sending: once the connection knows it (a
        server's first stream comes with the client's first bytes), or knew it and is
        done with it (both halves ended: nothing is waited for then)."""
        if self._stream_id in self._engine.conn._streams:
            self._existed = True
            return True
        return self._existed or self._engine.session.terminated is not None
