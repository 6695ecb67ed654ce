"""The blocking graph server, :class:`GraphServer`: a live sync session for every DTP
connection, each in a thread of its own, up to a cap; counted; closed with the sessions
it runs; announced on the LAN if asked (docs/graph.md, "LAN discovery")."""

from __future__ import annotations

import contextlib
import math
import threading
from typing import TYPE_CHECKING, Any

from dtp.errors import DTPError, RemoteProtocolError
from dtp.graph._arguments import check_int
from dtp.graph._store import Graph
from dtp.graph.sync._blocking import sync_blocking
from dtp.graph.sync._messages import VERSION
from dtp.graph.sync._run_checks import (
    HELLO_TIMEOUT,
    _check_timeout,
)
from dtp.graph.sync._session import _check_graph
from dtp.transport.carriers._tcp import check_listen_address

if TYPE_CHECKING:
    from dtp.discovery.lan import Announcement, LanDiscovery

MAX_SESSIONS = 64
"""GraphServer's default cap of sessions running at once."""

DEFAULT_NAMESPACE = "default"
"""The graph namespace a graph peer announces on the LAN when none is named: peers
sync with the peers of their own namespace only."""


class GraphServer:
    """Serve a graph over DTP: every connection runs a live sync session in a thread.

    ``server.address`` is where peers connect; ``server.noise_public_key`` is their
    ``server_key``. :attr:`sessions` counts finished sessions, :attr:`errors` those that
    ended with a protocol error (:meth:`counts` reads them all at one instant). At most
    ``max_sessions`` run at once (each holds a thread, buffers and up to its backlog of
    changes): a connection beyond them is closed at once with the reason ``"graph
    server busy: ..."`` (the peer's ``connect()`` raises
    :class:`~dtp.errors.ConnectionClosed` with it) and counted in :attr:`refused`.

    ``hello_timeout``: seconds a peer has, once connected, to send its HELLO; one that
    does not is cut off and counted in :attr:`errors`. Without it a peer that connects
    and stays silent would hold its session for good (DTP keepalives keep the
    connection from its idle timeout), and ``max_sessions`` such peers would lock
    everyone else out. None lifts the deadline. A peer that has sent HELLO may then
    stay quiet as long as it likes: a live subscriber does. Other keyword arguments go
    to :func:`dtp.socket.create_server`.

    ``announce=True``: announce the server on the LAN (mDNS, :mod:`dtp.discovery.lan`)
    as a graph peer of ``namespace`` -- on ``discovery``'s interfaces, or every
    interface -- until it closes; :attr:`announcement` is the announcement.

    :meth:`close` (and the end of a ``with`` block) stops accepting and ends the
    sessions running, waiting for them to be done with the graph.
    """

    def __init__(
        self,
        graph: Graph,
        address: tuple[str, int],
        identity: Any,
        *,
        max_sessions: int = MAX_SESSIONS,
        hello_timeout: float | None = HELLO_TIMEOUT,
        announce: bool = False,
        namespace: str = DEFAULT_NAMESPACE,
        discovery: LanDiscovery | None = None,
        **kw: Any,
    ) -> None:
        import dtp.socket

        _check_graph(graph)  # its sessions are made as peers come: check it now
        check_listen_address(address)
        check_int("max_sessions", max_sessions, 1)
        if not isinstance(announce, bool):
            raise TypeError(f"announce must be a bool, not {type(announce).__name__}")
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
        if hello_timeout is not None:
            _check_timeout("hello_timeout", hello_timeout)
        self.graph = graph
        self.max_sessions = max_sessions
        self.hello_timeout = hello_timeout
        self.sessions = 0
        self.errors = 0
        self.refused = 0
        self.active = 0  # sessions running now
        # guards every counter above and the sessions' sockets: sessions end in threads
        # of their own (and close() waits on it for them)
        self._count_lock = threading.Condition(threading.Lock())
        self._running: dict[int, Any] = {}  # id(sock) -> the socket of a running session
        self._closing = False
        self._server = dtp.socket.create_server(address, identity=identity, **kw)
        self.address = self._server.address
        self.noise_public_key = self._server.noise_public_key
        self.namespace = namespace
        self.announcement: Announcement | None = None
        """The server's announcement on the LAN (with ``announce=True``)."""
        if announce:
            from dtp.discovery import lan

            try:
                self.announcement = lan.announce(
                    self._server, graph=namespace, graph_sync=VERSION, discovery=discovery
                )
            except BaseException:
                self._server.close()
                raise
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(self._handle,), daemon=True
        )
        self._thread.start()

    def _handle(self, sock: Any) -> None:
        with self._count_lock:
            closing = self._closing
            busy = not closing and self.active >= self.max_sessions
            if busy:
                self.refused += 1
            elif not closing:
                self.active += 1
                self._running[id(sock)] = sock
        if closing:
            # (its handshake ended as close() began: it would have run on after it)
            sock.abort("graph server closed")
            return
        if busy:
            sock.abort(f"graph server busy: {self.max_sessions} sessions already running")
            return
        failed = False
        try:
            sync_blocking(self.graph, sock, hello_timeout=self.hello_timeout)
        except RemoteProtocolError:
            failed = True
            sock.abort("graph sync protocol error")
        except DTPError:
            pass
        finally:
            # (``errors += 1`` is a read and a write: two sessions failing at once
            # outside the lock could lose one)
            with self._count_lock:
                del self._running[id(sock)]
                self.active -= 1
                self.sessions += 1
                if failed:
                    self.errors += 1
                self._count_lock.notify_all()

    def session_keys(self) -> set[bytes]:
        """The Noise static keys of the peers whose sessions run now."""
        with self._count_lock:
            socks = list(self._running.values())
        return {key for sock in socks if (key := sock.peer_static_key) is not None}

    def counts(self) -> dict[str, int]:
        """``sessions``, ``errors``, ``refused`` and ``active``, read together (the end of
        each session updates its counters at once: ``errors <= sessions`` holds)."""
        with self._count_lock:
            return {
                "sessions": self.sessions,
                "errors": self.errors,
                "refused": self.refused,
                "active": self.active,
            }

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop accepting and end the sessions running: each one's connection is
        closed, which its peer sees as a server leaving (a live sync returns, a catch-up
        not yet done raises GraphSyncError), and this waits up to ``timeout`` seconds
        (None: as long as it takes) for their threads to be done with the graph. True
        when they all were, so that the graph may be closed; False when one is still
        finishing a write (its thread ends once the write does). Calling it again waits
        again."""
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 <= timeout < math.inf
        ):
            raise ValueError(f"timeout must be None or a finite number >= 0, not {timeout!r}")
        if self.announcement is not None:
            self.announcement.close()  # (first: peers stop coming as it goes)
        self._server.close()
        with self._count_lock:
            self._closing = True
            running = list(self._running.values())
        # each in a thread of its own: a close waits up to its linger (5 s) for what is
        # queued to a peer that does not read, and the sessions' ends must not queue up
        # behind one another. The thread of each session then raises SocketClosed in its read
        # or its send, which ends the session; its peer reads the end of the stream.
        for sock in running:
            threading.Thread(
                target=_close_quietly, args=(sock,), name="dtp-graph-close", daemon=True
            ).start()
        with self._count_lock:
            return self._count_lock.wait_for(lambda: not self._running, timeout)

    def __enter__(self) -> GraphServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_quietly(sock: Any) -> None:
    with contextlib.suppress(DTPError, OSError):
        sock.close()
