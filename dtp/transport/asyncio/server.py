"""The asyncio DTP server: :class:`DTPServer` (its settings, counters, listening, serving
and closing), made of its parts: ``server_state`` (what it knows of itself, the hooks
and the callback it is given), ``server_arrival`` (a new connection until its handshake
starts), ``server_admission`` (first records and the lines for handshake slots:
dtp.transport.handshake_gate), ``server_tasks`` (each connection's task: its handshake,
then the client callback) and ``server_handshakes`` (the handshake, the hooks, the
verdict)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dtp.errors import LocalProtocolError
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.asyncio.protocol import LIMIT
from dtp.transport.asyncio.server_admission import ServerAdmission, loop_time
from dtp.transport.asyncio.server_arrival import _Arrival, _waiting_gone
from dtp.transport.asyncio.server_handshakes import ServerHandshakes

# (re-exported: the hosts' servers and dtp.aio name them here)
from dtp.transport.asyncio.server_state import AcceptHook as AcceptHook
from dtp.transport.asyncio.server_state import AdmitHook as AdmitHook
from dtp.transport.asyncio.server_state import ClientCallback as ClientCallback
from dtp.transport.asyncio.server_tasks import ServerTasks
from dtp.transport.blocking.server import check_backlog
from dtp.transport.carriers.tcp import widen_listen_queue
from dtp.transport.handshake_gate import (
    DEFAULT_FIRST_MESSAGE_TIMEOUT,
    Admission,
    checked_first_message_timeout,
)
from dtp.transport.handshake_slots import (
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
)
from dtp.transport.heap_release import HeapRelease
from dtp.transport.hooks import Listener, Reservations
from dtp.transport.replay_guard import ReplayGuard

if TYPE_CHECKING:
    # (ssl for its annotations only: a Python whose ssl module cannot load -- no system
    # libssl -- still serves TCP)
    import ssl

    from dtp.transport.carriers.websocket import WebSocketTransport


class DTPServer(ServerTasks, ServerHandshakes, ServerAdmission):
    """A listening asyncio DTP server (see :func:`start_server`).

    New connections are admitted as :class:`dtp.socket.DTPServer` admits them, by the
    same engine (:class:`dtp.transport.handshake_gate.Admission`, docs/protocol.md §8):

    * until it has sent its complete first handshake record, within
      ``first_message_timeout`` (3 s), a connection holds only its socket: at most
      ``backlog`` of them on the server and ``max_handshakes_per_address +
      max_waiting_per_address`` from one address, the oldest (of a suspect address --
      one whose connections keep ending unproven -- first, else of the address holding
      the most) closed to make room for a newcomer, a suspect newcomer refused rather
      than displace another's (counted in :attr:`unproven_closed`, as those that time
      out);
    * then it takes one of the ``max_handshakes`` (32) slots of the server and one of
      the ``max_handshakes_per_address`` (8) of its IP address (an IPv6 /64; None lifts
      that cap), or waits for them, unread, in a line of at most ``backlog`` (the
      server's) or ``max_waiting_per_address`` (its address's), in arrival order, until
      its accept plus its handshake timeout. A proven connection that has to wait makes
      the oldest *half-handshake* -- one waiting for its client's next message -- give
      way (closed, counted in :attr:`half_handshakes_evicted`), so clients that stopped
      midway cannot hold the slots against clients that speak;
    * one that finds a line full, or waited past its deadline, is closed with no DTP
      reply, counted in :attr:`busy_refused`.

    Connections over the ledger carrier skip the first step and the address cap. A
    handshake's slots are free again however it ends (accepted, refused, failed, timed
    out, given way, cancelled), and :meth:`close` closes the connections still waiting
    (and any whose accept completes after it)."""

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
        self._admission: Admission[_Arrival] = Admission(
            max_handshakes=max_handshakes,
            max_handshakes_per_address=max_handshakes_per_address,
            max_waiting_per_address=max_waiting_per_address,
            max_waiting=max(backlog, 1),
            max_unproven=max(backlog, 1),
            first_message_timeout=checked_first_message_timeout(first_message_timeout),
            start=self._begin,
            close=self._close_unserved,
            give_way=self._give_way,
            gone=_waiting_gone,
        )
        self._handshake_slots = self._admission.server_slots
        self._address_slots = self._admission.address_slots
        self._expiry: asyncio.TimerHandle | None = None  # the admission's next deadline
        # the heap's free pages go back to the system after churn (dtp.transport.heap_release)
        self._heap = HeapRelease()
        self._heap_look: asyncio.TimerHandle | None = None
        self._serving = reservations
        self._limit = limit
        self._callback = callback
        self.identity = identity
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
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):  # (made outside a loop: get_loop() None)
            self._loop = asyncio.get_running_loop()
        self.handshakes_failed = 0
        self.refused = 0
        #: Connections closed unserved: their address's line, or the server's, was full,
        #: or they waited in it past the handshake timeout
        self.busy_refused = 0
        #: Connections closed before their complete first handshake record: timed out
        #: (``first_message_timeout``), or the oldest, making room for newer ones
        self.unproven_closed = 0
        #: Half-handshakes (waiting for their client's next message) ended to make room
        #: for proven connections waiting for a slot (also in :attr:`handshakes_failed`)
        self.half_handshakes_evicted = 0
        # IK first messages seen: a replayed one is turned away before the hooks, so it
        # never holds a client's ledger connection (dtp.transport.replay_guard)
        self._replays = ReplayGuard()

    @property
    def handshakes_in_progress(self) -> int:
        """Handshakes in progress now (at most ``max_handshakes``)."""
        return self._admission.in_progress

    @property
    def handshakes_waiting(self) -> int:
        """Connections waiting for one of the ``max_handshakes`` slots (not those
        waiting in their own address's line, nor for their first message)."""
        return self._admission.waiting

    @property
    def unproven(self) -> int:
        """Connections waiting for their complete first handshake record now."""
        return len(self._admission.unproven)

    @property
    def replays_refused(self) -> int:
        """Replayed IK first messages turned away (also counted in
        :attr:`handshakes_failed`): see :mod:`dtp.transport.replay_guard`."""
        return self._replays.refused

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
    def attached(self) -> Listener | None:
        """The listener :meth:`attach` gave this server, if any."""
        return self._attached

    @property
    def connection_config(self) -> ConnectionConfig:
        """The configuration the server's connections start from (its identity's)."""
        return self._config

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed.is_set()

    def attach(self, listener: Listener) -> None:
        """Also serve the connections ``listener`` hands to :meth:`handoff` (the ledger
        carrier's: :meth:`dtp.hostid.asyncio.DTPServer.listen_ledger`); call it from
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
        WebSocket request) gets its HTTP answer and counts in :attr:`handshakes_failed`.
        ``ssl``: a TLS context for ``wss://``; ``start_serving=False``: accept nothing
        until :meth:`start_serving`, as :meth:`listen`. May be called more than once."""
        from dtp.transport.carriers.websocket import accept_websocket, origin_rule

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
        backlog), its accept queue made :func:`~dtp.transport.carriers.tcp.listen_queue`'s."""
        for listener in server.sockets:
            widen_listen_queue(listener, self._backlogs.get(server, 128))

    def close(self) -> None:
        """Stop listening (handshakes in progress and connections already accepted go
        on; those still waiting for a handshake slot, their address's or the server's,
        are closed)."""
        if self._server is not None:
            self._server.close()
        for server in self._websockets:
            server.close()
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

    async def wait_closed(self) -> None:
        """Wait until the server is closed (as :meth:`asyncio.Server.wait_closed`, at
        once when it is already), its ledger listener's thread ended too (up to 5 s).
        A server on the ledger carrier alone returned at once however open it was."""
        if self._server is not None:
            await self._server.wait_closed()
        else:
            await self._closed.wait()
        for server in self._websockets:
            await server.wait_closed()
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
