"""The blocking transport's server: :class:`DTPServer` (its settings, counters and
closing), made of its parts: ``server_state`` (what it knows of itself),
``server_arrival`` (a new connection until its handshake starts), ``server_admission``
(first records and the lines for handshake slots: dtp.transport.handshake_gate),
``server_threads`` (the accepting and the connection threads), ``server_handshakes``
and ``server_accept_queue`` (:meth:`~DTPServer.accept`, :meth:`~DTPServer.serve_forever`).
Also the checks of a server's settings that the servers of the layers above make before
they start."""

from __future__ import annotations

import contextlib
import operator
import queue
import socket as _socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from dtp.errors import LocalProtocolError
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.blocking import AcceptHook, AdmitHook
from dtp.transport.blocking.engine import Engine
from dtp.transport.blocking.server_accept_queue import AcceptQueue
from dtp.transport.blocking.server_admission import ServerAdmission
from dtp.transport.blocking.server_arrival import _Arrival, _waiting_gone
from dtp.transport.blocking.server_handshakes import ServerHandshakes
from dtp.transport.blocking.server_state import _ACCEPT_TURN, _Job
from dtp.transport.blocking.server_threads import ServerThreads
from dtp.transport.blocking.socket import DTPSocket
from dtp.transport.carriers.tcp import listen_tcp
from dtp.transport.handshake_gate import (
    DEFAULT_FIRST_MESSAGE_TIMEOUT,
    Admission,
    checked_first_message_timeout,
)
from dtp.transport.handshake_slots import (
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
    AddressSlots,
    ServerSlots,
    check_count,
)
from dtp.transport.heap_release import HeapRelease
from dtp.transport.hooks import Listener, Reservations
from dtp.transport.replay_guard import ReplayGuard

# the largest listen() backlog: it takes a C int (OverflowError beyond)
_C_INT_MAX = 2 ** (8 * struct.calcsize("i") - 1) - 1


def check_server_identity(identity: Any) -> None:
    """TypeError unless ``identity`` is a :class:`~dtp.identity.keys.HostIdentity`: anything else
    listened, then failed each client's handshake (an AttributeError in a handshake
    thread, a misleading HandshakeError at the client)."""
    if not isinstance(identity, HostIdentity):
        raise TypeError(
            f"identity must be a dtp.identity.keys.HostIdentity (the server's keys), "
            f"not {type(identity).__name__}"
        )


def check_handshake_bounds(
    max_handshakes: int,
    max_handshakes_per_address: int | None,
    max_waiting_per_address: int,
    backlog: int,
) -> None:
    """Refuse the handshake bounds :func:`create_server` and :func:`dtp.aio.start_server`
    would refuse, as they do (the same classes check them: ValueError for a
    ``max_handshakes`` that is not an int of at least 1, a per-address cap below 1 or a
    line below 0; TypeError for a ``backlog`` that is no integer, OverflowError for one
    that does not fit the C int listen() takes), for a caller that must refuse them
    before it does anything -- the servers of the layers above, before their own
    work starts."""
    ServerSlots(max_handshakes, 1)
    if max_handshakes_per_address is not None:
        AddressSlots(max_handshakes_per_address, max_waiting_per_address)
    check_backlog(backlog)


def check_backlog(backlog: int) -> None:
    """Refuse a listen ``backlog`` as listen() would: TypeError for one that is no
    integer, OverflowError (with listen()'s message) for one that does not fit a C int.
    Before anything listens: :func:`socket.create_server` closes its socket only on an
    OSError, so listen()'s OverflowError left a bound socket to the garbage collector."""
    value = operator.index(backlog)
    if value > _C_INT_MAX:
        raise OverflowError("signed integer is greater than maximum")
    if value < -_C_INT_MAX - 1:
        raise OverflowError("signed integer is less than minimum")


class DTPServer(AcceptQueue, ServerHandshakes, ServerThreads, ServerAdmission):
    """A listening DTP endpoint. Each connection's handshake runs in a thread of its
    own, so a slow or hostile client cannot stall :meth:`accept` for others; under
    :meth:`serve_forever` that thread then runs the handler. A connection whose first
    record came with its connect is served by the thread that accepted it, which passes
    the accepting on to another (leader/follower): no thread hand-off. Threads are
    reused: one whose connection is done waits a while (:attr:`WORKER_IDLE`) for the
    next turn to accept (or a connection to serve), so a steady stream of connections
    costs no thread start each. ``address`` None: no TCP listener (the
    connections come from an :meth:`attach`-ed listener).

    New connections are admitted by :class:`dtp.transport.handshake_gate.Admission`, as the
    asyncio server admits them (docs/protocol.md §8):

    * until it has sent its complete first handshake record, within
      ``first_message_timeout`` (3 s), a connection holds only its socket (one reader
      thread watches them all): at most ``backlog`` of them on the server and
      ``max_handshakes_per_address + max_waiting_per_address`` from one address, the
      oldest (of a suspect address -- one whose connections keep ending unproven --
      first, else of the address holding the most) closed to make room for a
      newcomer, a suspect newcomer refused rather than displace another's (counted in
      :attr:`unproven_closed`, as those that time out). A record that came with the
      connect is read as it is accepted: that connection never waits here. The
      accepting thread never waits for a slot: silent connections cannot hold the
      listen backlog, nor the handshake slots, against clients that speak;
    * then it takes one of the ``max_handshakes`` (32) slots of the server and one of
      the ``max_handshakes_per_address`` (8) of its IP address (an IPv6 /64; None lifts
      that cap), or waits for them, unread and holding no thread, in a line of at most
      ``backlog`` (the server's) or ``max_waiting_per_address`` (its address's), in
      arrival order, until its accept plus its handshake timeout. A proven connection
      that has to wait makes the oldest *half-handshake* -- one waiting for its
      client's next message -- give way (closed, counted in
      :attr:`half_handshakes_evicted`);
    * one that finds a line full, or waited past its deadline, is closed with no DTP
      reply, counted in :attr:`busy_refused`.

    Connections over the ledger carrier skip the first step and the address cap.
    Accepted connections wait for :meth:`accept` in a queue of ``max_pending`` (128):
    a client the queue has no room for waits in its handshake, and is refused "server
    busy" at its handshake timeout (:meth:`_take_place`)."""

    WORKER_IDLE = 2.0
    """Seconds a connection thread with nothing to do waits for a new connection."""

    def __init__(
        self,
        address: tuple[str, int] | None,
        identity: HostIdentity,
        *,
        accept: AcceptHook | None = None,
        admit: AdmitHook | None = None,
        config: ConnectionConfig | None = None,
        backlog: int = 128,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        max_pending: int = 128,
        max_handshakes_per_address: int | None = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
        max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
        first_message_timeout: float = DEFAULT_FIRST_MESSAGE_TIMEOUT,
        reservations: Reservations | None = None,
    ) -> None:
        """``accept``: hook given the client's verified Sui address; ``admit``: hook
        given a :class:`PeerInfo` (address plus the ledger connection ID and port the
        client named). Both run when both are given, ``accept`` first.
        ``max_handshakes_per_address`` / ``max_waiting_per_address`` /
        ``first_message_timeout``: see the class docstring (ValueError below 1 / below
        0 / not above 0). ``reservations``: taken for each connection the hooks accept
        (it may still refuse it) and given back as the connection ends
        (:class:`~dtp.transport.hooks.Reservations`; the host-ID server passes its
        admission's)."""
        # first: a bad cap or identity must fail before we listen (and leave nothing open)
        check_server_identity(identity)
        check_count("max_handshakes", max_handshakes)
        check_count("max_pending", max_pending)  # (a queue of 0 or less is unbounded)
        if address is not None:
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
        self._address_slots = self._admission.address_slots
        # unproven connections the reader thread watches, by descriptor (_read_loop)
        self._reading: dict[int, _Arrival] = {}
        # the heap's free pages go back to the system after churn (dtp.transport.heap_release)
        self._heap = HeapRelease()
        # the accepting thread's own next connection, when the admission starts it at
        # once (leader/follower: _accept_next)
        self._local = threading.local()
        self.identity = identity
        self._accept_hook = accept
        self._admit_hook = admit
        self._serving = reservations
        base = config or ConnectionConfig(identity=identity, is_client=False)
        self._config = replace(base, identity=identity, is_client=False)
        self._listener = None if address is None else listen_tcp(address, backlog)
        if self._listener is not None:
            # (the accepting thread waits for it and for orphans at once: _accept_next)
            self._listener.setblocking(False)
        self._address: tuple[str, int] | None = None
        if self._listener is not None:
            host, tcp_port = self._listener.getsockname()[:2]
            self._address = (str(host), int(tcp_port))
        self._attached: Listener | None = None  # (attach)
        # connections accept() may take; each holds one of max_pending places, taken
        # before its client is told it is in (_take_place) and given back as accept()
        # takes it (the queue itself is unbounded: its end-of-server mark always fits)
        self._ready: queue.Queue[DTPSocket | None] = queue.Queue()
        self._places = threading.BoundedSemaphore(max_pending)
        self._timeout: float | None = None  # accept()'s by default (settimeout)
        self._dispatch: Callable[[DTPSocket], None] | None = None  # set by serve_forever
        self._closed = threading.Event()
        # connection threads waiting for work (a carrier to serve, or the turn to
        # accept on the listener): _idle counts those not yet promised a job from _jobs
        # (see _give and _work)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._idle = 0
        self._idle_lock = threading.Lock()
        self._turn_left = False  # the accepting, for the next thread free (_work)
        # connections whose handshake may start but no thread could be started for: the
        # next thread free serves them (the accepting one is woken for it)
        self._orphans: deque[_Arrival] = deque()
        self._orphan_wake, self._orphan_sender = _socket.socketpair()
        self._orphan_wake.setblocking(False)
        self._orphan_sender.setblocking(False)
        # connection threads count at once: += on an attribute is a read and a write,
        # and two threads could each write back the same count
        self._stats_lock = threading.Lock()
        # engines whose handshake is in progress: close() wakes them, so that their
        # threads and descriptors go at once rather than at the handshake timeout
        self._handshaking: set[Engine] = set()
        self.handshakes_failed = 0
        self.refused = 0
        #: Connections closed unserved: their address's line, or the server's, was
        #: full, or they waited in it past their deadline; and clients refused "server
        #: busy" for want of room in the accept() queue
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
        # one thread reads the first records still coming and closes what waited too
        # long (for its first record, or in a line for a slot); made last, so that a
        # listener that failed leaves none of it behind
        self._reader_wake, self._reader_waker = _socket.socketpair()
        self._reader_wake.setblocking(False)
        self._reader_waker.setblocking(False)
        self._reader = threading.Thread(target=self._read_loop, name="dtp-admission", daemon=True)
        self._reader.start()
        if self._listener is not None:
            self._give(_ACCEPT_TURN)

    @property
    def address(self) -> tuple[str, int]:
        """The TCP address listened on."""
        if self._address is None:
            raise LocalProtocolError("this server has no TCP listener (ledger carrier only)")
        return self._address

    @property
    def attached(self) -> Listener | None:
        """The listener :meth:`attach` gave this server, if any."""
        return self._attached

    @property
    def connection_config(self) -> ConnectionConfig:
        """The configuration the server's connections start from (its identity's)."""
        return self._config

    def attach(self, listener: Listener) -> None:
        """Also serve the connections ``listener`` hands to :meth:`handoff` (the ledger
        carrier's: :meth:`dtp.hostid.blocking.DTPServer.listen_ledger`); it is closed
        with the server. One at a time (LocalProtocolError for a second)."""
        if self._attached is not None:
            raise LocalProtocolError("this server already serves another listener")
        self._attached = listener

    @property
    def noise_public_key(self) -> bytes:
        """The key clients pass as ``server_key``."""
        return self.identity.noise_public

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

    def close(self) -> None:
        """Stop listening. Connections accept() handed out (or serve_forever's handlers
        hold) stay open; those that completed their handshake but were never taken are
        closed."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._stats_lock:
            handshaking = list(self._handshaking)
        for engine in handshaking:
            engine._wake()  # its pump sees _closed and gives up (_authenticate)
        # those waiting for their first record or for a slot (never served)
        for arrival in self._admission.drain(time.monotonic()):
            arrival.tcp.close()
        with self._stats_lock:
            self._reading.clear()
        with contextlib.suppress(OSError):
            self._reader_waker.send(b"\0")  # the reader thread sees _closed: it ends
        with self._idle_lock:
            idle, self._idle = self._idle, 0
            orphans = list(self._orphans)
            self._orphans.clear()
        for _ in range(idle):
            self._jobs.put(None)  # waiting connection threads end now
        for arrival in orphans:  # (no thread came free for them: never served)
            arrival.tcp.close()
            self._admission.ended(arrival, time.monotonic())
        if self._attached is not None:
            self._attached.close()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                # wakes the thread waiting to accept (close() alone would not, and
                # would leave the port listening until that thread ends)
                self._listener.shutdown(_socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._listener.close()
        with contextlib.suppress(OSError):
            # (the accepting thread waits on the listener and on this: a listener's
            # shutdown alone does not always end a poll on it)
            self._orphan_sender.send(b"\0")
        for end in (self._orphan_sender, self._orphan_wake):
            end.close()
        self._drain_ready()
        self._ready.put_nowait(None)

    def __enter__(self) -> DTPServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> Any:
        # as a listening socket's: a copy shared the listener and threads, and its
        # close() stopped the original's serving
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")
