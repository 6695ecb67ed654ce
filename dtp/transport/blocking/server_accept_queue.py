"""A blocking server's accept() queue (:class:`AcceptQueue`): the connections whose
handshake is done, each holding one of ``max_pending`` places until :meth:`accept` takes
it (a client waits in its handshake for a place); :meth:`serve_forever`; and the
timeouts of :meth:`accept`, as a listening socket's."""

from __future__ import annotations

import contextlib
import errno
import logging
import operator
import queue
import threading
import time
from collections.abc import Callable

from dtp.errors import DTPError, DTPTimeoutError, LocalProtocolError, SocketClosed
from dtp.transport.blocking.checks import OWN, Own, checked_timeout
from dtp.transport.blocking.engine import Engine
from dtp.transport.blocking.server_state import ServerState
from dtp.transport.blocking.socket import DTPSocket
from dtp.transport.session import CALLBACK_FAILED

# (every part of the server logs under its name: one logger to configure)
logger = logging.getLogger("dtp.transport.blocking.server")

_PLACE_POLL = 0.05
"""Seconds between two looks for a free place in the accept() queue, while a client
waits in its handshake for one (DTPServer._take_place)."""


class AcceptQueue(ServerState):
    """The accept() queue of :class:`~dtp.transport.blocking.server.DTPServer`."""

    def settimeout(self, timeout: float | None) -> None:
        """The seconds :meth:`accept` waits when called without a timeout, as a
        listening socket's timeout (None, the initial value: forever; 0: non-blocking,
        BlockingIOError at once when no connection is ready)."""
        self._timeout = checked_timeout(timeout)

    def gettimeout(self) -> float | None:
        """The timeout :meth:`settimeout` set (None: none; 0: non-blocking)."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """Blocking (timeout None) or non-blocking (timeout 0) accept(), as for a socket
        (whose ``flag`` is an integer: TypeError for "x", None or 1.5)."""
        self._timeout = None if operator.index(flag) else 0.0

    def getblocking(self) -> bool:
        """False in non-blocking mode (timeout 0), as for a socket."""
        return self._timeout != 0

    def accept(self, timeout: float | Own | None = OWN) -> tuple[DTPSocket, str]:
        """Wait for the next accepted connection: (its first stream, client address).
        ``timeout``: seconds (None: forever), then DTPTimeoutError; by default the
        server's own (:meth:`settimeout`), with which 0 raises BlockingIOError. A
        ``timeout`` :meth:`settimeout` refuses raises as there."""
        own = isinstance(timeout, Own)
        # (checked first: NaN would wait for good, and a negative one raise queue's error)
        wait = self._timeout if isinstance(timeout, Own) else checked_timeout(timeout)
        if self._closed.is_set():
            raise SocketClosed("accept() on a closed server")
        try:
            sock = self._ready.get(block=wait != 0, timeout=wait)
        except queue.Empty:
            if own and wait == 0:
                raise BlockingIOError(errno.EAGAIN, "no connection ready") from None
            raise DTPTimeoutError("no connection within the timeout") from None
        if sock is None:
            # the end-of-server mark stays for the next waiter: every thread blocked in
            # accept() wakes, not only the first
            self._ready.put_nowait(None)
            raise SocketClosed("the server was closed")
        self._give_place(sock)  # (the next client may be told it is in)
        assert sock.peer_address is not None
        return sock, sock.peer_address

    def serve_forever(self, handler: Callable[[DTPSocket], None]) -> None:
        """Accept connections until closed, running ``handler(sock)`` in a thread each.
        The socket is closed when the handler returns; when it raises, the connection
        is aborted instead (the client reads ConnectionClosed "internal error", as from
        a :func:`dtp.aio.start_server` callback that raises) and the error is logged."""

        def run(sock: DTPSocket) -> None:
            failed = True
            try:
                handler(sock)
                failed = False
            except DTPError as exc:
                logger.info("connection from %s ended: %s", sock.peer_address, exc)
            except Exception:
                logger.exception("handler failed for %s", sock.peer_address)
            finally:
                # a clean close would let the client take a reply cut short by the
                # failure for a complete one
                if failed:
                    sock.abort(CALLBACK_FAILED)  # (dtp.aio's reason and code)
                else:
                    sock.close()

        def start(sock: DTPSocket) -> None:
            try:
                threading.Thread(target=run, args=(sock,), daemon=True).start()
            except RuntimeError as exc:
                # out of threads: the client reads "server busy" (and this loop goes
                # on, where the error ended serve_forever with the socket left open)
                logger.warning("no thread for a connection from %s: %s", sock.peer_address, exc)
                sock.abort("server busy")

        # From now on, each connection's handshake thread goes on to run its handler
        # (no thread hand-off); the loop below serves what was queued before.
        self._dispatch = run
        while not self._closed.is_set():
            try:
                sock, _ = self.accept(timeout=0.5)
            except DTPTimeoutError:
                continue
            except LocalProtocolError:
                return
            start(sock)

    def _take_place(self, engine: Engine, deadline: float) -> bool:
        """Before a client is told it is in: one of the ``max_pending`` places in the
        queue :meth:`accept` takes from (none is needed under :meth:`serve_forever`,
        whose handler runs in this thread). While none is free -- the application takes
        connections slower than they come -- the client waits in its handshake, until
        ``deadline`` (its handshake timeout): False then, and it is refused "server
        busy". Told it was in and then dropped, a client of a burst died on its first
        write (42-55 % of 1,000 connects to an accept() loop, uncounted); and this
        handshake's slot, held meanwhile, holds the next clients in the listen backlog.
        Lock held (the engine's: pumped while waiting, so a client that gives up is
        seen)."""
        if self._dispatch is not None:
            return True
        session = engine.session
        if self._places.acquire(blocking=False):
            engine.holds_place = True
            return True
        # (IK without hooks: message 2 waited for the verdict; the client works on it
        # while we wait. A no-op where it went already)
        session.conn.answer()
        engine.flush()
        while not self._places.acquire(blocking=False):
            if self._dispatch is not None:
                return True
            left = deadline - time.monotonic()
            if left <= 0 or self._closed.is_set() or session.terminated is not None:
                return False
            with contextlib.suppress(DTPTimeoutError):
                engine.pump(lambda: session.terminated is not None, min(left, _PLACE_POLL))
        engine.holds_place = True
        return True

    def _give_place(self, sock: DTPSocket) -> None:
        """``sock`` left the accept() queue: its place is free for the next client."""
        engine = sock._engine
        if engine.holds_place:
            engine.holds_place = False
            self._places.release()

    def _drain_ready(self) -> None:
        """Close the connections that completed their handshake but that accept() never
        took (the server is closed: nobody will); a waiting accept() still gets the
        end-of-server mark."""
        ended = False
        while True:
            try:
                sock = self._ready.get_nowait()
            except queue.Empty:
                break
            if sock is None:
                ended = True
            else:
                self._give_place(sock)
                sock.abort("the server is closed")
        if ended:
            self._ready.put_nowait(None)
