"""The asyncio DTP server: :class:`DTPServer`, whole -- its settings, counters,
listening, serving and closing; the hooks and the callback it is given; a new connection
until its handshake starts (``_Arrival``); admission, the first records and the lines
for handshake slots (the rules are :mod:`dtp.transport._admission`'s); each
connection's task (its handshake, then the client callback); and the handshakes."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from dtp.errors import DTPError, LocalProtocolError
from dtp.identity._zklogin import node_refusal_async
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import CloseCode, ConnectionConfig
from dtp.transport._admission import (
    DEFAULT_FIRST_MESSAGE_TIMEOUT,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
    ENDINGS,
    FirstMessage,
    Outcome,
    Progress,
    ReplayGuard,
    Why,
    address_key,
    release_free_heap,
    unserved_counts,
)
from dtp.transport._hooks import Listener, PeerInfo, Reservations
from dtp.transport._server_base import AdmittingServer
from dtp.transport._session import HOOK_FAILED, Session, hook_calls, refusal_reason
from dtp.transport.asyncio._listeners import close_listener
from dtp.transport.asyncio._protocol import (
    LIMIT,
    Protocol,
    abort,
    carrier_failure,
    peer_label,
    tune_transport,
)
from dtp.transport.asyncio._streams import DTPStreamReader, DTPStreamWriter
from dtp.transport.blocking._server import check_backlog
from dtp.transport.carriers._tcp import widen_listen_queue

if TYPE_CHECKING:
    # (ssl for its annotations only: a Python whose ssl module cannot load -- no system
    # libssl -- still serves TCP)
    import ssl

    from dtp.transport.carriers._websocket import WebSocketTransport

AcceptHook = Callable[[str], "bool | str | Awaitable[bool | str | None] | None"]

AdmitHook = Callable[[PeerInfo], "bool | str | Awaitable[bool | str | None] | None"]
"""Like AcceptHook but given a :class:`~dtp.hostid._admission.PeerInfo`. A plain (non-async)
admit hook runs in a worker thread, since it may read the ledger."""

ClientCallback = Callable[["DTPStreamReader", "DTPStreamWriter"], "Awaitable[None] | None"]


def _being_cancelled() -> bool:
    """Whether the current task was cancelled (``Task.cancelling``), rather than a
    CancelledError having come from something it awaited (a future cancelled
    elsewhere)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


logger = logging.getLogger("dtp.transport.asyncio._server")
#: Seconds of a handshake's time kept for its refusal to go out after a wait on a Sui node.
_CLOSE_MARGIN = 0.5


class _Arrival(asyncio.Protocol):
    """An asyncio server's new connection until its handshake starts, as the blocking
    server's (:class:`dtp.transport.blocking._server._Arrival`), with no Session, task
    or timer; once the handshake may start, the transport goes to the connection's
    :class:`Protocol` (:meth:`DTPServer._begin`)."""

    def __init__(
        self,
        server: DTPServer,
        config: ConnectionConfig,
        by_address: bool,
        peername: Any = None,
    ) -> None:
        self.server = server
        self.config = config
        #: capped by the client's address (TCP); else a ledger bridge, a local socket
        self.by_address = by_address
        self.peername = peername
        #: Protocol.carrier_failure of the connection (a handed-off ledger bridge's)
        self.carrier_failure: Callable[[], BaseException | None] | None = None
        self.transport: asyncio.Transport | None = None
        self.reader = FirstMessage()
        self.key: str | None = None
        self.deadline = 0.0  # its accept plus its handshake timeout (monotonic)
        self.proto: Protocol | None = None  # made as its handshake starts
        self.lost = False
        self.gave_way = False
        #: set at connection_lost, when a closed server closed it on arrival (wait_closed)
        self.gone: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (a stream transport, asyncio's or uvloop's: uvloop's are no asyncio.Transport
        # subclasses, so an isinstance check refused every connection on uvloop)
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        try:
            tune_transport(transport)
            self.server._arrived(self)
        except Exception:
            # (a server fault at a connection's start: closed, the server goes on)
            logger.exception("dtp: a new connection could not be taken in")
            transport.close()

    def data_received(self, data: bytes) -> None:
        progress = self.reader.feed(data)
        if progress is Progress.COMPLETE:
            assert self.transport is not None
            self.transport.pause_reading()  # (until its handshake starts)
            self.server._proven(self)
        elif progress is Progress.INVALID:
            self.server._not_dtp(self)

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)
        # (a client that hung up before its first record: its address is struck)
        self.server._admission.dropped(self, self.server._now())


class _Unstarted:
    """A connection task's arrival until the task's first step takes it, and the
    task's done callback: it finds the arrival still here only when the task never
    started (:meth:`DTPServer._never_served`)."""

    __slots__ = ("arrival", "server")

    def __init__(self, server: DTPServer, arrival: _Arrival) -> None:
        self.server = server
        self.arrival: _Arrival | None = arrival

    def take(self) -> _Arrival:
        arrival = self.arrival
        assert arrival is not None
        self.arrival = None
        return arrival

    def done(self, task: asyncio.Task[None]) -> None:
        self.server._tasks.discard(task)
        if task.cancelled() and self.arrival is not None:
            self.server._never_served(self.take())


def _waiting_gone(arrival: _Arrival) -> bool:
    """Whether a connection waiting for a handshake slot was closed meanwhile."""
    return arrival.lost or arrival.transport is None or arrival.transport.is_closing()


def loop_time(loop: asyncio.AbstractEventLoop | None) -> float:
    """The clock the admission's deadlines are on: its event loop's, which its timers
    run by (``time.monotonic`` on asyncio's loops; a virtual clock on
    dtp.testing.network's), or ``time.monotonic`` before it has one."""
    return loop.time() if loop is not None else time.monotonic()


class DTPServer(AdmittingServer[_Arrival]):
    """A listening asyncio DTP server (see :func:`start_server`).

    New connections are admitted as :class:`dtp.socket.DTPServer` admits them, by the
    same engine (:class:`dtp.transport._admission.Admission`; the rules and defaults:
    docs/protocol.md §8, "Admission"): closed unproven ones count in
    :attr:`unproven_closed`, evicted half-handshakes in :attr:`half_handshakes_evicted`,
    those a full line or their deadline turned away in :attr:`busy_refused`. A
    handshake's slots are free again however it ends (accepted, refused, failed, timed
    out, given way, cancelled), and :meth:`close` closes the connections still waiting
    (and any whose accept completes after it)."""

    _expiry: asyncio.TimerHandle | None
    _heap_look: asyncio.TimerHandle | None
    _limit: int
    _callback: ClientCallback
    _accept: AcceptHook | None
    _admit: AdmitHook | None
    _config: ConnectionConfig
    _server: asyncio.base_events.Server | None
    _websockets: list[asyncio.base_events.Server]
    _attached: Listener | None
    _attached_watch: asyncio.Task[None] | None
    _closed: asyncio.Event
    _tasks: set[asyncio.Task[None]]
    _connections: set[Protocol]
    _aborted: list[asyncio.Future[None]]
    _loop: asyncio.AbstractEventLoop | None
    _replays: ReplayGuard

    def __init__(
        self,
        callback: ClientCallback,
        identity: HostIdentity,
        accept: AcceptHook | None,
        config: ConnectionConfig,
        admit: AdmitHook | None = None,
        max_handshakes_per_address: int | None = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
        max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
        limit: int = LIMIT,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        backlog: int = 128,
        first_message_timeout: float = DEFAULT_FIRST_MESSAGE_TIMEOUT,
        *,
        reservations: Reservations | None = None,
    ) -> None:
        """``max_handshakes`` (ValueError unless an int of at least 1, as the blocking
        server's), ``backlog`` (the longest line of connections waiting for one of
        them to end, and of those waiting for their first message; at least one) and
        ``first_message_timeout``: see the class docstring. ``reservations``: as the
        blocking server's."""
        # first: a bad bound fails before anything starts (a backlog listen() refuses
        # too: it left a bound socket open)
        check_backlog(backlog)
        self._admit_by(
            identity,
            config,
            reservations=reservations,
            max_handshakes=max_handshakes,
            max_handshakes_per_address=max_handshakes_per_address,
            max_waiting_per_address=max_waiting_per_address,
            backlog=backlog,
            first_message_timeout=first_message_timeout,
            gone=_waiting_gone,
        )
        self._expiry: asyncio.TimerHandle | None = None  # the admission's next deadline
        self._heap_look: asyncio.TimerHandle | None = None
        # the context the server's own bookkeeping callbacks run in (a connection's
        # count, its task's end): they read no context variable, and a future's
        # callback added without one copies the caller's, an object a connection. One
        # server serves on one loop, which never runs two callbacks at once
        self._bookkeeping = contextvars.Context()
        self._limit = limit
        self._callback = callback
        self._accept = accept
        self._admit = admit
        self._config = config
        self._server: asyncio.base_events.Server | None = None
        #: each listener's backlog (its accept queue is widened as it starts serving)
        self._backlogs: dict[asyncio.base_events.Server, int] = {}
        #: The WebSocket listeners (listen_websocket)
        self._websockets: list[asyncio.base_events.Server] = []
        self._attached: Listener | None = None  # (attach)
        self._attached_watch: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: every connection from its handshake's start until its carrier closed
        #: (abort_clients ends them)
        self._connections: set[Protocol] = set()
        #: the carriers abort_clients ended (and those close() met arriving after it),
        #: for wait_closed to wait for
        self._aborted: list[asyncio.Future[None]] = []
        #: the listeners close() stopped, until they are closed (close_listener)
        self._stopping: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):  # (made outside a loop: get_loop() None)
            self._loop = asyncio.get_running_loop()

    @property
    def noise_public_key(self) -> bytes:
        return self.identity.noise_public

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server else ()

    @property
    def address(self) -> tuple[str, int]:
        if not self.sockets:
            raise LocalProtocolError("this server has no TCP listener (ledger carrier only)")
        name = self.sockets[0].getsockname()
        return name[0], name[1]

    @property
    def websocket_addresses(self) -> tuple[tuple[str, int], ...]:
        """The addresses the server's WebSocket listeners are bound to
        (:meth:`listen_websocket`), in the order they were made."""
        names = [sock.getsockname() for server in self._websockets for sock in server.sockets]
        return tuple((name[0], name[1]) for name in names)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed.is_set()

    def attach(self, listener: Listener) -> None:
        """Also serve the connections ``listener`` hands to :meth:`handoff` (the ledger
        carrier's: :meth:`dtp.hostid._asyncio.DTPServer.listen_ledger`); call it from
        the event loop. It is closed with the server, and when the loop ends with the
        server still open. One at a time (LocalProtocolError for a second)."""
        if self._attached is not None:
            raise LocalProtocolError("this server already serves another listener")
        loop = asyncio.get_running_loop()
        self._attached = listener

        async def until_closed() -> None:
            await self._closed.wait()

        # The listener's thread lives no longer than the loop: asyncio.run ending with
        # the server still open (this task cancelled) stops it; it watched the ledger on
        # for good, and handed connections to a closed loop.
        self._attached_watch = loop.create_task(until_closed())
        self._attached_watch.add_done_callback(lambda _: listener.close(timeout=0))

    async def listen(
        self, host: str, port: int, backlog: int = 128, *, start_serving: bool = True
    ) -> None:
        """Listen for TCP connections on ``host:port`` (what ``start_server`` does once it
        made the server), accepting them at once unless ``start_serving`` is False
        (then at :meth:`start_serving`), as :meth:`asyncio.loop.create_server`. Once:
        LocalProtocolError on a server that listens already or is closed (a second
        listener would outlive :meth:`close`)."""
        if self._server is not None:
            raise LocalProtocolError("this server listens on TCP already")
        if self._closed.is_set():
            raise LocalProtocolError("this server is closed")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol_factory,
            host,
            port,
            backlog=backlog,
            reuse_address=True,
            start_serving=start_serving,
        )
        self._backlogs[self._server] = backlog
        if start_serving:
            self._widen(self._server)

    async def listen_websocket(
        self,
        host: str,
        port: int,
        *,
        origins: Iterable[str] | None = None,
        backlog: int = 128,
        ssl: ssl.SSLContext | None = None,
        start_serving: bool = True,
    ) -> tuple[str, int]:
        """Also accept DTP connections over WebSocket (docs/protocol.md §13) on
        ``host:port``, any path; returns the bound address. Needs the ``ws`` extra.

        A WebSocket client is admitted as a TCP one, from its TCP accept: its upgrade
        and its first record together must come within ``first_message_timeout``, it
        counts toward the same bounds on unproven connections and handshake slots of its
        address, and its handshake, hooks and callback are the same. ``origins``: the
        web origins whose pages may connect (``"https://app.example"``; ``"*"``: any);
        by default none, only clients that send no ``Origin`` (programs, not browsers).
        A refused upgrade (an origin not allowed, no ``dtp.v1`` subprotocol, not a
        WebSocket request, a request head too large) gets its HTTP answer (none for
        bytes that are no HTTP request) and counts in :attr:`handshakes_failed`.
        ``ssl``: a TLS context for ``wss://``; ``start_serving=False``: accept nothing
        until :meth:`start_serving`, as :meth:`listen`. May be called more than once."""
        from dtp.transport.carriers._websocket import accept_websocket, origin_rule

        if self._closed.is_set():
            raise LocalProtocolError("this server is closed")
        check_backlog(backlog)
        rule = origin_rule(origins)
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        server = await loop.create_server(
            lambda: accept_websocket(
                loop, self._websocket_arrived, self._upgrade_refused, origins=rule
            ),
            host,
            port,
            backlog=backlog,
            reuse_address=True,
            ssl=ssl,
            start_serving=start_serving,
        )
        self._backlogs[server] = backlog
        if start_serving:
            self._widen(server)
        self._websockets.append(server)
        name = server.sockets[0].getsockname()
        return name[0], name[1]

    def _websocket_arrived(self, carrier: WebSocketTransport) -> None:
        """A TCP connection on a WebSocket listener: admitted as a TCP client is (its
        arrival reads its first record once the carrier's upgrade is done)."""
        arrival = self._protocol_factory()
        carrier.set_protocol(arrival)
        arrival.connection_made(carrier)

    def _upgrade_refused(self, carrier: WebSocketTransport, reason: str) -> None:
        """A WebSocket upgrade refused (its HTTP answer sent): not a DTP client."""
        arrival = carrier.get_protocol()
        if isinstance(arrival, _Arrival):
            self._not_dtp(arrival)

    def get_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the server runs on (as :meth:`asyncio.Server.get_loop`)."""
        return self._loop

    def is_serving(self) -> bool:
        """True while the server accepts connections (as
        :meth:`asyncio.Server.is_serving`): started, and not closed."""
        if self._closed.is_set():
            return False
        if self._server is not None and self._server.is_serving():
            return True
        if any(server.is_serving() for server in self._websockets):
            return True
        return self._attached is not None

    async def start_serving(self) -> None:
        """Start accepting connections, if ``start_server(start_serving=False)`` held
        them back (nothing to do otherwise, or once closed), as
        :meth:`asyncio.Server.start_serving`."""
        if self._closed.is_set():
            return
        if self._server is not None:
            await self._server.start_serving()
            self._widen(self._server)
        for server in self._websockets:
            await server.start_serving()
            self._widen(server)

    def _widen(self, server: asyncio.base_events.Server) -> None:
        """Once ``server`` listens (asyncio listens as it starts serving, with its
        backlog), its accept queue made :func:`~dtp.transport.carriers._tcp.listen_queue`'s."""
        for listener in server.sockets:
            widen_listen_queue(listener, self._backlogs.get(server, 128))

    def close(self) -> None:
        """Stop listening (handshakes in progress and connections already accepted go
        on; those still waiting for a handshake slot, their address's or the server's,
        are closed, and those accepted as it ran as they arrive:
        :func:`~dtp.transport.asyncio._listeners.close_listener`)."""
        for listener in (self._server, *self._websockets):
            if listener is not None and (stopping := close_listener(listener)) is not None:
                self._stopping.append(stopping)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._heap_look is not None:
            self._heap_look.cancel()
            self._heap_look = None
        # those waiting for their first record or for a slot (the slots those in the
        # server's line held free again: nobody is left to take them)
        for arrival in self._admission.drain(loop_time(self._loop)):
            if arrival.transport is not None:
                arrival.transport.close()
        if self._attached is not None:
            # told to stop, not joined: its thread may be in a ledger read for seconds
            # (a Sui node's event poll), which would hold the event loop; wait_closed()
            # joins it, in a thread
            self._attached.close(timeout=0)
        self._closed.set()

    def abort_clients(self) -> None:
        """End every connection of the server at once, as
        :meth:`asyncio.Server.abort_clients` (Python 3.13) does: those waiting for their
        first record or a handshake slot (closed unserved), the handshakes in progress
        and the connections served (each sent CLOSE, its carrier aborted: what it could
        not write yet is dropped). :meth:`wait_closed` then waits until their carriers
        are closed, so that an event loop closed right after finds none of them open.
        Call :meth:`close` first: until then new connections still come."""
        for arrival in self._admission.drain(self._now()):
            if arrival.transport is not None:
                arrival.transport.abort()
        for proto in list(self._connections):
            ending = CloseCode.APPLICATION if proto.session.accepted else CloseCode.HANDSHAKE_FAILED
            abort(proto, ending, "the server is shutting down")  # (its CLOSE written)
            if proto.transport is not None:
                # at once: not half-closed waiting for the peer's end, nor for a peer
                # that stopped reading to take what is still queued
                proto.transport.abort()
            proto.session.process_events()
            proto._notify()  # (a handshake waiting on it ends now)
            self._aborted.append(proto.closed_future)

    async def wait_closed(self) -> None:
        """Wait until the server is closed (as :meth:`asyncio.Server.wait_closed`, at
        once when it is already), its ledger listener's thread ended too (up to 5 s),
        and the carriers :meth:`abort_clients` ended, and those of connections accepted
        as :meth:`close` ran, are closed. A server on the ledger carrier alone returned
        at once however open it was."""
        while self._stopping:
            # (their accepts' transports made first: then each is closed as it arrives)
            stopped = self._stopping[-1]
            await asyncio.shield(stopped)
            with contextlib.suppress(ValueError):  # (another wait_closed() took it)
                self._stopping.remove(stopped)
        if self._server is not None:
            await self._server.wait_closed()
        else:
            await self._closed.wait()
        for server in self._websockets:
            await server.wait_closed()
        while self._aborted:
            # (shielded: a cancelled wait must not cancel the connection's own future,
            # nor forget it; each ends within CARRIER_GRACE, dtp.transport.asyncio._protocol)
            carrier_closed = self._aborted[-1]
            await asyncio.shield(carrier_closed)
            with contextlib.suppress(ValueError):  # (another wait_closed() took it)
                self._aborted.remove(carrier_closed)
        listener = self._attached
        if listener is not None and listener.running:
            await asyncio.to_thread(listener.close)

    async def serve_forever(self) -> None:
        """Accept connections until cancelled; then the server is closed, as
        :meth:`asyncio.Server.serve_forever` (its ledger listener and the connections
        waiting for a handshake slot too: only the TCP listener was). On a closed server
        it raises RuntimeError, as asyncio's (one on the ledger carrier alone returned
        at once, as if it had served and ended)."""
        if self._closed.is_set():
            raise RuntimeError(f"server {self!r} is closed")
        await self.start_serving()
        try:
            if self._server is not None:
                await self._server.serve_forever()
                return
            await self._closed.wait()  # ledger carrier only: serve until closed
        except asyncio.CancelledError:
            if not self._closed.is_set():
                self.close()
            raise

    async def __aenter__(self) -> DTPServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # -- admission: first records, the lines for handshake slots -------------------------------

    def handoff(self, sock: Any, peername: Any, config: ConnectionConfig) -> None:
        """Serve a carrier connection that came from elsewhere (an :meth:`attach`-ed
        listener's local socket, with the peer's name): it goes through the same
        handshake slots (not capped by address), hooks and callback as a TCP one, with
        ``config``'s handshake timeout. Call it from the event loop."""
        loop = asyncio.get_running_loop()

        def factory() -> _Arrival:
            # by_address=False: the bridge is a local socket, not the client's IP
            arrival = self._protocol_factory(config, by_address=False)
            arrival.peername = peername
            arrival.carrier_failure = carrier_failure(sock)
            return arrival

        async def attach() -> None:
            try:
                await loop.connect_accepted_socket(factory, sock=sock)
            except OSError as exc:
                logger.warning("handed-off connection %s: %s", peername, exc)
                sock.close()

        task = loop.create_task(attach())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _protocol_factory(
        self, config: ConnectionConfig | None = None, *, by_address: bool = True
    ) -> _Arrival:
        """A new connection's protocol until its handshake starts (``by_address``: a TCP
        client, capped by its address and held to its first message; else a ledger
        bridge)."""
        return _Arrival(self, config or self._config, by_address)

    def _arrived(self, arrival: _Arrival) -> None:
        """A new connection (its transport just made): it waits for its first record
        (TCP), or for its slots at once (a ledger bridge)."""
        transport = arrival.transport
        assert transport is not None
        if self._closed.is_set():
            # accepted as close() ran (a ledger bridge handed over just before it, its
            # attach still under way; a TCP accept whose transport came after it):
            # closed unserved, as the blocking server closes what it accepted once
            # closed, rather than started after the server's end; wait_closed() waits
            # for its carrier too
            if not arrival.lost:
                arrival.gone = asyncio.get_running_loop().create_future()
                self._aborted.append(arrival.gone)
            transport.close()
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()  # (made outside it: its first connection)
        now = loop_time(self._loop)
        # the connection's own handshake timeout: a ledger connection's is longer (its
        # records take ledger transactions)
        arrival.deadline = now + arrival.config.handshake_timeout
        self._heap.connected(now)
        if self._heap_look is None:
            self._look_at_heap()
        if not arrival.by_address:
            transport.pause_reading()  # (its first record is read as its handshake starts)
            self._admission.proven(arrival, None, arrival.deadline, now)
            self._arm_expiry()
            return
        peer = transport.get_extra_info("peername")
        if not peer:
            transport.close()  # the client is gone already
            return
        arrival.key = address_key(str(peer[0]))
        self._admission.arrived(arrival, arrival.key, now)
        self._arm_expiry()

    def _now(self) -> float:
        """The admission's clock (:func:`loop_time`)."""
        return loop_time(self._loop)

    def _proven(self, arrival: _Arrival) -> None:
        """``arrival`` sent its complete first record: on to the handshake slots."""
        self._admission.proven(arrival, arrival.key, arrival.deadline, loop_time(self._loop))
        self._arm_expiry()  # (it may wait in a line, until its deadline)

    def _not_dtp(self, arrival: _Arrival) -> None:
        """``arrival``'s first bytes are not a DTP handshake record: closed, no reply."""
        if self._admission.dropped(arrival, self._now()):
            self.handshakes_failed += 1
        if arrival.transport is not None:
            arrival.transport.close()

    def _arm_expiry(self) -> None:
        """Have the next deadline -- a first-message timeout, a wait in a line -- met on
        time (one timer for them all)."""
        deadline = self._admission.next_deadline()
        loop = self._loop
        if deadline is None or loop is None or not loop.is_running():
            return  # (nothing waits; or the loop is ending: close() closes them)
        delay = max(deadline - loop.time(), 0.0)
        if self._expiry is not None:
            if self._expiry.when() <= loop.time() + delay:
                return  # (it fires first: then it looks again)
            self._expiry.cancel()
        self._expiry = loop.call_later(delay, self._expire)

    def _look_at_heap(self) -> None:
        """Trim the heap when :class:`~dtp.transport._admission.HeapRelease` says so, and look
        again when it says (one timer, made only while connections come)."""
        self._heap_look = None
        loop = self._loop
        if loop is None or not loop.is_running() or self._closed.is_set():
            return
        now = loop.time()
        if self._heap.due(now):
            release_free_heap()
        look = self._heap.next_look(now)
        if look is not None:
            self._heap_look = loop.call_later(max(look - now, 0.0), self._look_at_heap)

    def _expire(self) -> None:
        self._expiry = None
        self._admission.expire(loop_time(self._loop))
        self._arm_expiry()

    def _begin(self, arrival: _Arrival) -> bool:
        """The admission's ``start``: ``arrival`` holds its slots; its handshake begins
        (a Session, the transport handed to its :class:`Protocol`, its first record
        read). False when it cannot (the server closed, the client left): closed."""
        transport = arrival.transport
        if self._closed.is_set() or _waiting_gone(arrival) or transport is None:
            if transport is not None:
                transport.close()
            return False
        proto: Protocol | None = None
        try:
            loop = asyncio.get_running_loop()
            session = Session(arrival.config, now=loop.time())
            proto = Protocol(session, loop)
            proto.limit = self._limit
            proto.peername = arrival.peername
            proto.carrier_failure = arrival.carrier_failure
            arrival.proto = proto
            self._hold(proto)
            transport.set_protocol(proto)
            proto.connection_made(transport)
            first = arrival.reader.take()
            if first:
                proto.data_received(first)
            transport.resume_reading()
            self._start_serving(arrival)
        except Exception as exc:  # (out of memory for a task, say: the connection ends)
            if proto is not None:
                proto._fail(exc)
            else:
                transport.close()
            return False
        return True

    def _hold(self, proto: Protocol) -> None:
        """Count ``proto`` among the server's connections until its carrier closes."""
        self._connections.add(proto)
        # (a bound method: a closure would be three more objects a connection, each
        # one the garbage collector walks for as long as the connection lives)
        proto.held_in = self._connections
        proto.closed_future.add_done_callback(proto.leave_held_in, context=self._bookkeeping)

    def _close_unserved(self, arrivals: list[_Arrival], why: Why) -> None:
        """The admission's ``close``: connections it turned away (``why``)."""
        if not arrivals:
            return
        busy, unproven = unserved_counts(why, len(arrivals))
        self.busy_refused += busy
        self.unproven_closed += unproven
        for arrival in arrivals:
            transport = arrival.transport
            if transport is not None:
                logger.debug("closed a connection from %s unserved: %s", arrival.key, why)
                transport.close()

    def _give_way(self, arrival: _Arrival) -> None:
        """The admission's ``give_way``: end a half-handshake, for a proven connection
        waiting for a slot (its task ends it, and its slot goes on)."""
        self.half_handshakes_evicted += 1
        arrival.gave_way = True
        if arrival.proto is not None:
            ending = ENDINGS[Outcome.GAVE_WAY]
            assert ending.code is not None and ending.reason is not None
            abort(arrival.proto, ending.code, ending.reason)
            arrival.proto._notify()

    # -- the connection tasks ------------------------------------------------------------------

    def _start_serving(self, arrival: _Arrival) -> None:
        # the arrival until _serve's first step takes it (the task's done callback finds
        # it there only when the task never started); neither keeps it after the
        # handshake, for the collector to walk as long as the connection lives
        unstarted = _Unstarted(self, arrival)
        assert arrival.proto is not None
        task = arrival.proto.loop.create_task(self._serve(unstarted))
        self._tasks.add(task)
        task.add_done_callback(unstarted.done, context=self._bookkeeping)

    def _never_served(self, arrival: _Arrival) -> None:
        """``arrival``'s task was cancelled before its first step (the loop shutting
        down): none of :meth:`_serve` ran, its finally blocks included."""
        self._admission.ended(arrival, loop_time(self._loop), start_next=False)
        assert arrival.proto is not None
        abort(arrival.proto, CloseCode.HANDSHAKE_FAILED, "the server is shutting down")

    async def _serve(self, unstarted: _Unstarted) -> None:
        """One connection (the arrival ``unstarted`` holds, taken at once): the handshake
        and hooks, then the client callback. It holds its slots (one of the server's,
        one of its address's) until its handshake ends. Cancelled (the loop shutting
        down), it aborts the connection rather than leave the transport open."""
        arrival = unstarted.take()
        cancelled = False
        proto = arrival.proto
        assert proto is not None
        try:
            accepted = await self._handshake(proto, arrival)
        except asyncio.CancelledError:
            # (only a cancel of this task -- the loop ending -- closes those waiting: a
            # CancelledError of something it awaited leaves the server serving them)
            cancelled = _being_cancelled()
            abort(proto, CloseCode.HANDSHAKE_FAILED, "the server is shutting down")
            raise
        finally:
            # however the handshake ended (accepted, refused, failed, timed out, an error
            # or a cancellation): its slots are free for the next connections
            self._admission.ended(arrival, loop_time(self._loop), start_next=not cancelled)
            if not cancelled and not self._closed.is_set():
                self._arm_expiry()  # (those it handed on may wait in a line now)
            del arrival  # (see _start_serving)
        if not accepted:
            return
        session = proto.session
        reader = DTPStreamReader(proto, 0)
        writer = DTPStreamWriter(proto, 0, primary=True)
        # the connection stays open once the callback returned, as asyncio's server
        # keeps its writer (the callback may have handed the pair on, or kept neither)
        proto.pinned = writer._owner
        try:
            result = self._callback(reader, writer)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            writer.abort("the server is shutting down")
            # (the loop is ending: no drain can run on it, the carrier closes now)
            proto.close_carrier(drain=False)
            raise
        except DTPError as exc:
            if isinstance(exc, LocalProtocolError) and session.terminated is None:
                # the callback misused a live stream (a write after write_eof() or
                # close()): a bug of its own, reported as any other exception below.
                # At INFO, nobody saw it: the client only read an abort
                self._callback_failed(proto, exc)
                writer.abort("internal error")
                return
            logger.info("connection from %s ended: %s", session.authenticated_address, exc)
            if session.terminated is None and not writer._closing:
                # an error of the callback's own (a stream the peer reset) while the
                # connection goes on: nobody serves it any more, so the client must not
                # wait on it -- unless the first stream is closing, whose close ends the
                # connection after what is queued went out
                writer.abort("internal error")
        except Exception as exc:
            # then the connection ends, the peer reading an error, not a clean end
            self._callback_failed(proto, exc)
            writer.abort("internal error")

    @staticmethod
    def _callback_failed(proto: Protocol, exc: Exception) -> None:
        """Report what a client callback raised to the loop's exception handler, as
        asyncio.start_server reports it (a program that set its own handler saw
        nothing when this went to our logger)."""
        proto.loop.call_exception_handler(
            {
                "message": "Unhandled exception in client_connected_cb",
                "exception": exc,
                "transport": proto.transport,
                "peer_address": proto.session.authenticated_address,
            }
        )

    # -- handshakes: the handshake, the hooks, the verdict -------------------------------------

    async def _handshake(self, proto: Protocol, arrival: _Arrival) -> bool:
        """The handshake and the hooks: True once the client is accepted."""
        session = proto.session
        if arrival.by_address and session.authenticated_address is None:
            # its first record, read, got our reply: its client's next message is due.
            # (A ledger bridge's first record comes over the ledger, slowly: it passed
            # the ledger carrier's own admission, and never gives way)
            self._admission.waiting_for_client(arrival)
        # No timer of its own: the connection's handshake deadline, armed in the
        # protocol's timer since connection_made, ends it until accept(), and this wait
        # with it (a second timer was a TimerHandle and a context a connection, left in
        # the loop's heap).
        await proto.wait_for(
            lambda: (
                session.authenticated_address is not None
                or session.terminated is not None
                or arrival.gave_way
            )
        )
        self._admission.authenticated(arrival)
        if arrival.gave_way:
            # (_give_way closed it already)
            self.handshakes_failed += ENDINGS[Outcome.GAVE_WAY].failed
            return False
        if session.terminated is not None or session.authenticated_address is None:
            return self._end(proto, Outcome.FAILED)
        conn = session.conn
        # before the hooks: a replay must not reserve the client's ledger connection
        if self._replays.is_replay(conn, peer_label(proto)):
            return self._end(proto, Outcome.REPLAYED)
        check = session.zklogin_check
        if check is not None:
            # a zkLogin proof: a Sui node must confirm it before anyone decides on the
            # client (docs/protocol.md 8.4). Message 2 goes first, so that a refusal
            # travels, as in XX, in a CLOSE under the transport keys
            conn.answer()
            proto.flush()
            left = conn.handshake_deadline - loop_time(self._loop) - _CLOSE_MARGIN
            why = await node_refusal_async(conn.config.zklogin_verifier, check, left)
            if session.terminated is not None or conn.closed:
                return self._end(proto, Outcome.FAILED)
            if why is not None:
                return self._end(proto, Outcome.PROOF_REFUSED, f"identity proof rejected: {why}")
        if self._accept is not None or self._admit is not None:
            # IK: message 2 goes now, and the client works on it while the hooks (the
            # ledger admission) decide; the verdict follows it. Without hooks the verdict
            # is at once: both go in one flight, as one wake-up
            conn.answer()
            proto.flush()
        peer = session.peer_info()
        verdict = await self._run_hook(peer)
        if session.terminated is not None or conn.closed:
            # the client gave up (or vanished) while the hooks ran: nothing to accept
            # (accept() would raise, and the task's error never be retrieved)
            return self._end(proto, Outcome.FAILED)
        if verdict is None and self._serving is not None:
            # (what the admission counts while the connection is served: hooks.Reservations)
            verdict, release = self._serving.take(peer)
            if release is not None:
                # (never blocks the loop: what a release does that takes long, it does in a
                # thread of its own)
                proto.closed_future.add_done_callback(lambda _: release())
        if verdict is not None:
            self.refused += ENDINGS[Outcome.REFUSED].refused
            session.conn.refuse(verdict)  # sends CLOSE(REFUSED, verdict)
            proto.flush()
            proto.close_carrier()
            return False
        session.conn.accept()
        self._replays.accepted(conn)
        session.process_events()
        proto.flush()
        return True

    def _end(self, proto: Protocol, outcome: Outcome, reason: str = "") -> bool:
        """Count a handshake that ended with ``outcome`` and close it as
        :data:`~dtp.transport._admission.ENDINGS` says (with ``reason`` where it has
        none of its own): False (not accepted)."""
        ending = ENDINGS[outcome]
        self.handshakes_failed += ending.failed
        self.refused += ending.refused
        if ending.code is not None:
            abort(proto, ending.code, reason if ending.reason is None else ending.reason)
        return False

    async def _run_hook(self, peer: PeerInfo) -> str | None:
        """None to accept, or the refusal reason (``accept`` first, then ``admit``)."""
        for call in hook_calls(peer, self._accept, self._admit):
            hook, arg = call.hook, call.arg
            # (a plain admit hook may call the ledger: in a thread, never on the loop)
            threaded = call.admit and not inspect.iscoroutinefunction(hook)
            try:
                verdict = await asyncio.to_thread(hook, arg) if threaded else hook(arg)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception:
                logger.exception("accept hook failed for %s", peer.address)
                return HOOK_FAILED
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise  # the loop is ending: this handshake with it
                # the hook's own (it awaited a task cancelled elsewhere): a hook failure.
                # Passed on, it read as the server shutting down, and every connection
                # waiting for a handshake slot was closed with this one
                logger.exception("accept hook failed for %s", peer.address)
                return HOOK_FAILED
            reason = refusal_reason(verdict)
            if reason is not None:
                return reason
        return None
