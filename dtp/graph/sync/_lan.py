"""A graph kept in sync with the graph peers of its namespace on the LAN, with no ledger:
:func:`sync_with_lan` / :class:`LanSync`. docs/graph.md, "LAN discovery", says who
connects (the lower Noise key; the other after ``grace``), the retries, and what an
announcement may be trusted with: a connection is made with ``server_key`` = the key
the peer announced, so the handshake reaches that key or fails; ``allow`` restricts
both directions to a set of keys.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from dtp.discovery.lan import Browser, LanDiscovery, LanEvent, LanPeer, browse
from dtp.errors import DTPError, DTPTimeoutError
from dtp.graph._store import Graph
from dtp.graph.sync._blocking import sync_blocking
from dtp.graph.sync._messages import VERSION
from dtp.graph.sync._server import DEFAULT_NAMESPACE, GraphServer
from dtp.identity.keys import HostIdentity

__all__ = ["DEFAULT_NAMESPACE", "LanSync", "sync_with_lan"]

logger = logging.getLogger("dtp.graph.sync._lan")

GRACE = 3.0
"""Seconds the peer with the higher key waits for the other to connect before it
connects itself."""

RETRY_FIRST = 1.0
RETRY_MAX = 30.0
"""The pause before a session to a peer is tried again: doubled on each failure from
:data:`RETRY_FIRST` up to :data:`RETRY_MAX` (with up to a quarter more, at random, so
that peers that failed together do not retry together)."""

MAX_PEERS = 32
"""Peers synced with at once by default (each holds a thread and a session)."""


@dataclass
class _Link:
    """What we do about one peer (by key): its latest announcement and the thread that
    keeps a session to it."""

    peer: LanPeer
    announced: bool = True
    thread: threading.Thread | None = None
    sock: Any = None
    connected: bool = False
    wake: threading.Event = field(default_factory=threading.Event)


class LanSync:
    """Keep ``graph`` in sync with the graph peers of ``namespace`` on the LAN.

    Serves the graph on ``address`` (default: every interface, a free port) with
    ``identity``, announces it, and syncs with each peer found (see the module). With
    ``discovery`` (a :class:`~dtp.discovery.lan.LanDiscovery`) mDNS runs on its
    interfaces, else on ``interfaces`` (None: all). ``allow``: the Noise keys of the
    only peers to sync with (None: any peer of the namespace). ``max_peers``: peers
    synced with at once. ``connect_timeout`` bounds each connect and the first
    exchange of a session. Other keyword arguments go to :class:`GraphServer`.

    :meth:`peers` lists the peers in session now; :meth:`wait_for_peers` waits for
    some. :meth:`close` (or the end of a ``with`` block) withdraws the announcement,
    stops browsing and ends every session; the graph stays open.
    """

    def __init__(
        self,
        graph: Graph,
        identity: HostIdentity,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        address: tuple[str, int] = ("0.0.0.0", 0),
        interfaces: Sequence[str] | None = None,
        discovery: LanDiscovery | None = None,
        allow: Collection[bytes] | None = None,
        max_peers: int = MAX_PEERS,
        connect_timeout: float = 10.0,
        grace: float = GRACE,
        **server_kw: Any,
    ) -> None:
        if not isinstance(graph, Graph):
            raise TypeError(f"graph must be a Graph, not {type(graph).__name__}")
        if not isinstance(identity, HostIdentity):
            raise TypeError(f"identity must be a HostIdentity, not {type(identity).__name__}")
        if isinstance(max_peers, bool) or not isinstance(max_peers, int) or max_peers < 1:
            raise ValueError(f"max_peers must be an int >= 1, not {max_peers!r}")
        for name, value in (("connect_timeout", connect_timeout), ("grace", grace)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value < 1e6
            ):
                raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
        if allow is not None:
            allow = frozenset(allow)
            if not all(isinstance(k, bytes) and len(k) == 32 for k in allow):
                raise ValueError("allow must hold 32-byte Noise static public keys")
        if discovery is not None and interfaces is not None:
            raise TypeError("interfaces are the discovery's own: give one or the other")
        self.graph = graph
        self.identity = identity
        self.namespace = namespace
        self.allow = allow
        self.max_peers = max_peers
        self.connect_timeout = connect_timeout
        self.grace = grace
        self.sessions = 0
        """Sessions this side started that ended (by either side)."""
        self.failures = 0
        """Connects and sessions this side started that failed."""
        self._lock = threading.Condition()
        self._links: dict[bytes, _Link] = {}
        self._closed = False
        self._owns_discovery = discovery is None
        self.discovery = discovery if discovery is not None else LanDiscovery(interfaces)
        self.server: GraphServer | None = None
        self._browser: Browser | None = None
        try:
            if allow is not None:
                server_kw.setdefault("admit", self._admit)
            self.server = GraphServer(
                graph,
                address,
                identity,
                announce=True,
                namespace=namespace,
                discovery=self.discovery,
                **server_kw,
            )
            self.key = self.server.noise_public_key
            self._browser = browse(
                graph=namespace, discovery=self.discovery, on_event=self._on_event
            )
        except BaseException:
            self.close()
            raise

    def _admit(self, peer: Any) -> str | None:
        assert self.allow is not None
        return None if peer.public_key in self.allow else "not a peer this graph syncs with"

    # -- what the browser finds ------------------------------------------------------------

    def _on_event(self, event: LanEvent) -> None:  # (in the browser's thread)
        peer = event.peer
        if peer.key == self.key or (self.allow is not None and peer.key not in self.allow):
            return
        if event.kind != "lost" and peer.record.graph_sync != VERSION:
            logger.info(
                "LAN sync: %s speaks graph sync version %s, not %s: left alone",
                peer.name,
                peer.record.graph_sync,
                VERSION,
            )
            return
        with self._lock:
            if self._closed:
                return
            link = self._links.get(peer.key)
            if event.kind == "lost":
                if link is not None:
                    link.announced = False
                    link.wake.set()  # (a session running goes on until it ends)
                return
            if link is None:
                if len(self._links) >= self.max_peers:
                    logger.warning(
                        "LAN sync: %s left alone: %d peers already", peer.name, self.max_peers
                    )
                    return
                link = _Link(peer)
                self._links[peer.key] = link
            link.peer = peer
            link.announced = True
            link.wake.set()
            if link.thread is None:
                link.thread = threading.Thread(
                    target=self._keep, args=(link,), name="dtp-graph-lan", daemon=True
                )
                link.thread.start()

    # -- one peer's sessions -----------------------------------------------------------------

    def _keep(self, link: _Link) -> None:
        """Keep a session with the peer while it is announced (in its own thread)."""
        pause = RETRY_FIRST
        try:
            while True:
                with self._lock:
                    if self._closed or not link.announced:
                        return
                if link.peer.key > self.key and self._wait_for_theirs(link):
                    continue  # (theirs ran, and ended: see again who connects)
                if self._closed or not link.announced:
                    return
                started = time.monotonic()
                if self._session(link):
                    pause = RETRY_FIRST
                elif time.monotonic() - started > RETRY_MAX:
                    pause = RETRY_FIRST  # (it ran a while before it failed)
                else:
                    pause = min(pause * 2, RETRY_MAX)
                link.wake.clear()
                link.wake.wait(pause * (1 + random.random() / 4))
        finally:
            with self._lock:
                link.thread = None
                if self._links.get(link.peer.key) is link and not link.announced:
                    del self._links[link.peer.key]
                self._lock.notify_all()

    def _wait_for_theirs(self, link: _Link) -> bool:
        """Ours is the higher key, so the peer is to connect: wait ``grace`` seconds for
        its session, and as long as one runs. True when one ran and ended (the caller
        looks again), False when none came in time (the caller connects)."""
        assert self.server is not None
        deadline = time.monotonic() + self.grace
        ran = False
        while not self._closed and link.announced:
            if link.peer.key in self.server.session_keys():
                ran = True
                with self._lock:
                    link.connected = True
                link.wake.wait(0.25)
                continue
            if ran:
                with self._lock:
                    link.connected = False
                    self._lock.notify_all()
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            link.wake.wait(min(left, 0.25))
        return ran

    def _session(self, link: _Link) -> bool:
        """One session we start with the peer: True when it ended cleanly."""
        peer = link.peer
        try:
            sock = peer.connect(self.connect_timeout, identity=self.identity)
        except (DTPError, OSError) as exc:
            with self._lock:
                self.failures += 1
            logger.info("LAN sync: cannot connect to %s: %s", peer.name, exc)
            return False
        with self._lock:
            if self._closed:
                with contextlib.suppress(DTPError, OSError):
                    sock.close()
                return False
            link.sock = sock
            link.connected = True
            self._lock.notify_all()
        logger.info("LAN sync: in session with %s", peer.name)
        failed = True
        try:
            sync_blocking(self.graph, sock, until_synced=False)
            failed = False
        except DTPTimeoutError as exc:
            logger.info("LAN sync: %s did not answer in time: %s", peer.name, exc)
        except (DTPError, OSError) as exc:
            if not self._closed:
                logger.info("LAN sync: session with %s ended: %s", peer.name, exc)
        finally:
            with self._lock:
                link.sock = None
                link.connected = False
                self.sessions += 1
                self.failures += failed
                self._lock.notify_all()
            with contextlib.suppress(DTPError, OSError):
                sock.close()
        return not failed

    # -- the public face ---------------------------------------------------------------------

    def peers(self) -> list[LanPeer]:
        """The peers in session with us now (either side having connected)."""
        keys = self.server.session_keys() if self.server is not None else set()
        with self._lock:
            return [link.peer for key, link in self._links.items() if link.connected or key in keys]

    def wait_for_peers(self, count: int = 1, timeout: float | None = 30.0) -> list[LanPeer]:
        """Wait until at least ``count`` peers are in session (:meth:`peers`);
        DTPTimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            peers = self.peers()
            if len(peers) >= count:
                return peers
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise DTPTimeoutError(
                    f"{len(peers)} of {count} LAN peers in session after {timeout} s"
                )
            with self._lock:
                # (incoming sessions are the server's: looked at again every 0.25 s)
                self._lock.wait(0.25 if left is None else min(left, 0.25))

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) this peer's :class:`GraphServer` listens on."""
        assert self.server is not None
        return self.server.address

    def close(self, timeout: float | None = 10.0) -> bool:
        """Withdraw the announcement, stop browsing, end every session (ours and the
        server's) and wait up to ``timeout`` for them to be done with the graph (True
        when they were)."""
        with self._lock:
            self._closed = True
            links = list(self._links.values())
        if self._browser is not None:
            self._browser.close()
        done = True
        if self.server is not None:
            done = self.server.close(timeout)
        for link in links:
            link.wake.set()
            sock = link.sock
            if sock is not None:
                with contextlib.suppress(DTPError, OSError):
                    sock.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        for link in links:
            thread = link.thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
                done = done and not thread.is_alive()
        if self._owns_discovery:
            self.discovery.close()
        return done

    def __enter__(self) -> LanSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sync_with_lan(graph: Graph, identity: HostIdentity, **kwargs: Any) -> LanSync:
    """Keep ``graph`` in sync with the graph peers of its namespace on the LAN: a
    :class:`LanSync` (close it, or use ``with``); arguments as there."""
    return LanSync(graph, identity, **kwargs)
