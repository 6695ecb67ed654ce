"""The blocking transport's server: :class:`DTPServer`, whole -- its settings, counters
and closing; a new connection until its handshake starts (``_Arrival``); admission, the
first records and the lines for handshake slots (the rules are
:mod:`dtp.transport._admission`'s); the accepting and the connection threads; the
handshakes; :meth:`~DTPServer.accept` and :meth:`~DTPServer.serve_forever`, over the
:class:`AcceptQueue` the server holds. Also the checks of a server's settings that the
servers of the layers above make before they start."""

from __future__ import annotations

import contextlib
import errno
import logging
import operator
import queue
import select
import socket as _socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from dtp.errors import DTPError, DTPTimeoutError, LocalProtocolError, SocketClosed
from dtp.identity._ahead import prepare_ephemeral_key
from dtp.identity._noise import prepare_handshake
from dtp.identity._zklogin import node_refusal
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import CloseCode, ConnectionConfig
from dtp.transport._admission import (
    DEFAULT_FIRST_MESSAGE_TIMEOUT,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
    ENDINGS,
    SERVER_BUSY,
    AddressSlots,
    FirstMessage,
    Outcome,
    Progress,
    ReplayGuard,
    ServerSlots,
    Why,
    address_key,
    check_count,
    release_free_heap,
    unserved_counts,
)
from dtp.transport._hooks import Listener, PeerInfo, Reservations
from dtp.transport._server_base import AdmittingServer
from dtp.transport._session import CALLBACK_FAILED, HOOK_FAILED, Session, hook_calls, refusal_reason
from dtp.transport.blocking import AcceptHook, AdmitHook, sched
from dtp.transport.blocking._checks import OWN, Own, checked_timeout
from dtp.transport.blocking._engine import Engine
from dtp.transport.blocking._socket import DTPSocket


class _Arrival:
    """A blocking server's new connection until its handshake starts: its first record
    read (by the accepting thread or the reader thread), then waiting for its handshake
    slots, unread, with no thread, engine or Noise state -- and its entry in the
    server's :class:`~dtp.transport._admission.Admission` for good (its handshake's end
    releases its slots by it)."""

    __slots__ = (
        "config",
        "deadline",
        "engine",
        "gave_way",
        "key",
        "peer",
        "reader",
        "slots_freed",
        "tcp",
        "unproven_until",
    )

    def __init__(
        self, tcp: _socket.socket, peer: Any, config: ConnectionConfig, key: str | None
    ) -> None:
        self.tcp = tcp
        self.peer = peer
        self.config = config
        self.key = key  # its address's (None: a ledger bridge, not capped)
        self.deadline = 0.0  # its accept plus its handshake timeout (monotonic)
        self.reader = FirstMessage()
        self.engine: Engine | None = None  # made as its handshake starts
        self.gave_way = False
        self.slots_freed = False  # its handshake ended: its slots went on (_handshake_over)
        self.unproven_until = 0.0  # its first-message deadline, when it waits unproven


def _read_first(arrival: _Arrival) -> Progress | None:
    """Read what has come of ``arrival``'s first record, without waiting: its progress,
    or None when the client closed (or reset) its end first."""
    tcp = arrival.tcp
    try:
        while arrival.reader.state is Progress.NEED_MORE:
            data = tcp.recv(max(arrival.reader.wanted, 1))
            if not data:
                return None
            arrival.reader.feed(data)
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        return None
    return arrival.reader.state


def _waiting_gone(arrival: _Arrival) -> bool:
    """Whether the client of a connection waiting, unread, for a handshake slot has left
    (a peek reads end of file, or a reset). It consumes nothing and never waits (it runs
    under the line's lock): a look with no timeout first, then the peek with the
    socket's timeout at 0 -- with one, a peek that finds no data (poll woke for a TCP
    urgent byte alone) waited up to it, MSG_DONTWAIT or not, and counted the live client
    as gone."""
    tcp = arrival.tcp
    try:
        if not sched.wait_ready([tcp], [], 0)[0]:
            return False  # nothing came yet: still there
        timeout = tcp.gettimeout()
        if timeout:
            tcp.settimeout(0.0)
        try:
            # (more bytes, or the FIN that ends them: one byte tells which)
            return tcp.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT) == b""
        finally:
            if timeout:
                tcp.settimeout(timeout)
    except BlockingIOError:
        return False
    except (OSError, ValueError):  # reset (ConnectionResetError), or otherwise broken
        return True


class _AcceptTurn:
    """The job of a DTPServer connection thread whose turn it is to accept on the
    listener (there is one such job per listening server)."""


_ACCEPT_TURN = _AcceptTurn()

# what a connection thread is given: the turn to accept, or a connection whose handshake
# may start (it holds its slots)
_Job = _AcceptTurn | _Arrival

logger = logging.getLogger("dtp.transport.blocking._server")

_EXPIRY_POLL = 0.25
"""Seconds at most between two looks for connections waiting in a line for a slot past
their deadline (DTPServer._read_loop): they are closed at most this late."""

_ACCEPT_POLL = 0.5
"""Seconds at most the accepting thread waits before it looks whether the server was
closed (DTPServer._accept_next)."""

_REFUSAL_MARGIN = 0.5
"""Seconds (a quarter of the handshake timeout at most) before its handshake timeout
that a client still waiting for a place in the accept() queue is refused "server busy":
at the timeout itself the connection would end with no reply."""

_PLACE_POLL = 0.05
"""Seconds between two looks for a free place in the accept() queue, while a client
waits in its handshake for one (DTPServer._wait_for_accept_place)."""

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
    """Refuse the handshake bounds :func:`create_server` and
    :func:`dtp.aio.start_server` would refuse, with the same classes' checks, for the
    servers of the layers above, which must refuse them before their own work starts."""
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


class DTPServer(AdmittingServer[_Arrival]):
    """A listening DTP endpoint. Each connection's handshake runs in a thread of its
    own, so a slow or hostile client cannot stall :meth:`accept` for others; under
    :meth:`serve_forever` that thread then runs the handler. A connection whose first
    record came with its connect is served by the thread that accepted it, which passes
    the accepting on to another (leader/follower): no thread hand-off. Threads are
    reused: one whose connection is done waits a while (:attr:`WORKER_IDLE`) for the
    next turn to accept (or a connection to serve), so a steady stream of connections
    costs no thread start each. ``address`` None: no TCP listener (the
    connections come from an :meth:`attach`-ed listener).

    New connections are admitted by :class:`dtp.transport._admission.Admission`, as the
    asyncio server admits them (the rules and defaults: docs/protocol.md §8,
    "Admission"), counted in :attr:`unproven_closed`, :attr:`half_handshakes_evicted`
    and :attr:`busy_refused` as there. While unproven, a connection holds only its
    socket, one reader thread watching them all but the newest, which the accepting
    thread watches beside the listener until it accepts the next and serves it itself once
    its record is in (a client that connects ahead of its first record, as one by host
    ID does, is served with no thread hand-off); a record that came with the connect is
    read as it is accepted, so that connection never waits there. The accepting thread
    never waits for a slot: silent connections cannot hold the listen backlog, nor the
    handshake slots, against clients that speak. Accepted connections wait for
    :meth:`accept` in a queue of ``max_pending`` (128): a client the queue has no room
    for waits in its handshake, and is refused "server busy" at its handshake timeout
    (:meth:`_wait_for_accept_place`)."""

    WORKER_IDLE: float
    #: Connections closed unserved: their address's line, or the server's, was full,
    #: or they waited in it past their deadline; and clients refused "server busy" for
    #: want of room in the accept() queue
    busy_refused: int
    _reading: dict[int, _Arrival]
    _local: threading.local
    _accept_hook: AcceptHook | None
    _admit_hook: AdmitHook | None
    _config: ConnectionConfig
    _listener: _socket.socket | None
    _accepted_as: tuple[Any, Any, int] | None
    _address: tuple[str, int] | None
    _attached: Listener | None
    _queue: AcceptQueue
    _timeout: float | None
    _dispatch: Callable[[DTPSocket], None] | None
    _closed: threading.Event
    _closing: bool
    _waiting: list[queue.SimpleQueue[_Job | None]]
    _idle_lock: threading.Lock
    _turn_left: bool
    _orphans: deque[_Arrival]
    _orphan_wake: _socket.socket
    _orphan_sender: _socket.socket
    _stats_lock: threading.Lock
    _handshaking: set[Engine]
    _replays: ReplayGuard
    _reader_wake: _socket.socket
    _reader_waker: _socket.socket
    _reader: threading.Thread

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
        (:class:`~dtp.transport._hooks.Reservations`; the host-ID server passes its
        admission's)."""
        # first: a bad cap or identity must fail before we listen (and leave nothing open)
        check_server_identity(identity)
        check_count("max_handshakes", max_handshakes)
        check_count("max_pending", max_pending)  # (a queue of 0 or less is unbounded)
        if address is not None:
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
        # unproven connections the reader thread watches, by descriptor (_read_loop)
        self._reading: dict[int, _Arrival] = {}
        # the accepting thread's own next connection, when the admission starts it at
        # once (leader/follower: _accept_next)
        self._local = threading.local()
        self._accept_hook = accept
        self._admit_hook = admit
        base = config or ConnectionConfig(identity=identity, is_client=False)
        self._config = replace(base, identity=identity, is_client=False)
        self._listener = None if address is None else sched.listen_tcp(address, backlog)
        if self._listener is not None:
            # (the accepting thread waits for it and for orphans at once: _accept_next)
            self._listener.setblocking(False)
        # socket.accept less its look-ups: it reads the listener's family and type at
        # every call (each an enum made from an int), the same every time; read once
        # here for the operating system's own listener (a simulated network's has its
        # own accept, called as it is: _accept_next)
        self._accepted_as: tuple[Any, Any, int] | None = None
        if type(self._listener) is _socket.socket:
            listener = self._listener
            self._accepted_as = (listener.family, listener.type, listener.proto)
        self._address: tuple[str, int] | None = None
        if self._listener is not None:
            host, tcp_port = self._listener.getsockname()[:2]
            self._address = (str(host), int(tcp_port))
        self._attached: Listener | None = None  # (attach)
        self._queue = AcceptQueue(max_pending)
        self._timeout: float | None = None  # accept()'s by default (settimeout)
        self._dispatch: Callable[[DTPSocket], None] | None = None  # set by serve_forever
        self._closed = threading.Event()
        # (set with it, by close() alone: what the per-connection paths read, where
        # Event.is_set is a Python call)
        self._closing = False
        # connection threads waiting for work (a carrier to serve, or the turn to
        # accept on the listener) and not yet promised any, each by its own queue: a
        # job wakes the one thread it goes to (on one shared queue a job woke two
        # waiting threads, and the second took the interpreter's lock from the thread
        # serving the connection, to find nothing). The last to come free is the first
        # given work (see _hand_to_thread and _connection_thread)
        self._waiting: list[queue.SimpleQueue[_Job | None]] = []
        self._idle_lock = threading.Lock()
        self._turn_left = False  # the accepting, for the next thread free (_connection_thread)
        # connections whose handshake may start but no thread could be started for: the
        # next thread free serves them (the accepting one is woken for it)
        self._orphans: deque[_Arrival] = deque()
        self._orphan_wake, self._orphan_sender = sched.socketpair()
        self._orphan_wake.setblocking(False)
        self._orphan_sender.setblocking(False)
        # connection threads count at once: += on an attribute is a read and a write,
        # and two threads could each write back the same count
        self._stats_lock = threading.Lock()
        # engines whose handshake is in progress: close() wakes them, so that their
        # threads and descriptors go at once rather than at the handshake timeout
        self._handshaking: set[Engine] = set()
        # one thread reads the first records still coming and closes what waited too
        # long (for its first record, or in a line for a slot); made last, so that a
        # listener that failed leaves none of it behind
        self._reader_wake, self._reader_waker = sched.socketpair()
        self._reader_wake.setblocking(False)
        self._reader_waker.setblocking(False)
        self._reader = sched.Thread(target=self._read_loop, name="dtp-admission", daemon=True)
        self._reader.start()
        if self._listener is not None:
            self._hand_to_thread(_ACCEPT_TURN)

    @property
    def _idle(self) -> int:
        """Connection threads waiting for work, none promised them yet."""
        return len(self._waiting)

    @property
    def address(self) -> tuple[str, int]:
        """The TCP address listened on."""
        if self._address is None:
            raise LocalProtocolError("this server has no TCP listener (ledger carrier only)")
        return self._address

    def attach(self, listener: Listener) -> None:
        """Also serve the connections ``listener`` hands to :meth:`handoff` (the ledger
        carrier's: :meth:`dtp.hostid._blocking.DTPServer.listen_ledger`); it is closed
        with the server. One at a time (LocalProtocolError for a second)."""
        if self._attached is not None:
            raise LocalProtocolError("this server already serves another listener")
        self._attached = listener

    @property
    def noise_public_key(self) -> bytes:
        """The key clients pass as ``server_key``."""
        return self.identity.noise_public

    def close(self) -> None:
        """Stop listening. Connections accept() handed out (or serve_forever's handlers
        hold) stay open; those that completed their handshake but were never taken are
        closed."""
        if self._closed.is_set():
            return
        self._closing = True
        self._closed.set()
        with self._stats_lock:
            handshaking = list(self._handshaking)
        for engine in handshaking:
            engine._wake()  # its pump sees _closed and gives up (_authenticate)
        # those waiting for their first record or for a slot (never served)
        for arrival in self._admission.drain(sched.monotonic()):
            arrival.tcp.close()
        with self._stats_lock:
            self._reading.clear()
        with contextlib.suppress(OSError):
            self._reader_waker.send(b"\0")  # the reader thread sees _closed: it ends
        with self._idle_lock:
            waiting, self._waiting = self._waiting, []
            orphans = list(self._orphans)
            self._orphans.clear()
        for jobs in waiting:
            jobs.put(None)  # waiting connection threads end now
        for arrival in orphans:  # (no thread came free for them: never served)
            arrival.tcp.close()
            self._admission.ended(arrival, sched.monotonic())
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
        self._queue.close()

    def __enter__(self) -> DTPServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> Any:
        # as a listening socket's: a copy shared the listener and threads, and its
        # close() stopped the original's serving
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    # -- admission: first records, the lines for handshake slots -------------------------------

    def _admit_arrival(self, arrival: _Arrival) -> bool:
        """A new TCP connection: its first record is read now if it came with the
        connect (as a genuine client's does) -- then it goes on to the slots without
        waiting among the unproven, where it could make another give way -- else it
        waits there: True, and the caller watches it (the accepting thread, then the
        reader thread: _accept_next)."""
        now = sched.monotonic()
        arrival.deadline = now + arrival.config.handshake_timeout
        self._heap.connected(now)
        progress = _read_first(arrival)
        if progress is Progress.NEED_MORE:
            arrival.unproven_until = now + self._admission.unproven.timeout
            return self._admission.arrived(arrival, arrival.key, now)
        self._first_read(arrival, progress, waited=False)
        return False

    def _first_read(
        self, arrival: _Arrival, progress: Progress | None, *, waited: bool = True
    ) -> None:
        """``arrival``'s first record is in (COMPLETE: on to the slots), or is not DTP
        (INVALID), or its client left first (None): closed, its address struck.
        ``waited``: whether it waited among the unproven (else it came with its
        connect, and was never there)."""
        now = sched.monotonic()
        if progress is Progress.COMPLETE:
            self._admission.proven(arrival, arrival.key, arrival.deadline, now, waited=waited)
            return
        if waited:
            counted = self._admission.dropped(arrival, now)
        else:
            counted = True
            self._admission.struck(arrival.key, now)
        if counted and progress is Progress.INVALID:
            with self._stats_lock:
                self.handshakes_failed += 1
        arrival.tcp.close()

    def _watch(self, arrival: _Arrival) -> None:
        """Leave ``arrival``'s first record to the reader thread."""
        with self._stats_lock:
            fd = arrival.tcp.fileno()
            if self._closing or fd < 0:  # (or closed already: it timed out, or gave way)
                arrival.tcp.close()
                return
            self._reading[fd] = arrival
        try:  # noqa: SIM105 (cheaper than contextlib.suppress, per connection)
            self._reader_waker.send(b"\0")
        except OSError:
            pass

    def _read_loop(self) -> None:
        """The reader thread: the first records of the connections that are still
        sending theirs, read as they come, until their first-message timeout; and the
        connections waiting in a line for a slot, closed once past their deadline
        (looked at every :data:`_EXPIRY_POLL` seconds at most)."""
        wake = self._reader_wake
        wake_fd = wake.fileno()
        try:
            while not self._closing:
                poller = sched.poll()
                poller.register(wake, select.POLLIN)
                with self._stats_lock:
                    for fd in self._reading:
                        poller.register(fd, select.POLLIN)
                deadline = self._admission.next_deadline()
                wait = _EXPIRY_POLL
                if deadline is not None:
                    wait = min(max(deadline - sched.monotonic(), 0.0), wait)
                for fd, _ in poller.poll(wait * 1000.0 + 1):
                    if fd == wake_fd:
                        try:  # noqa: SIM105 (as in _watch)
                            wake.recv(4096)
                        except OSError:
                            pass
                        continue
                    with self._stats_lock:
                        arrival = self._reading.get(fd)
                    if arrival is None:
                        continue  # (closed meanwhile: it gave way, or timed out)
                    progress = _read_first(arrival)
                    if progress is not Progress.NEED_MORE:
                        with self._stats_lock:
                            if self._reading.get(fd) is arrival:  # (its number, not a newer one's)
                                del self._reading[fd]
                        self._guarded_first_read(arrival, progress)
                now = sched.monotonic()
                try:
                    self._admission.expire(now)
                except Exception:  # (as _guarded_first_read: never the thread)
                    logger.exception("closing connections past their first-message timeout")
                if self._heap.due(now):
                    # (after churn, at a quiet moment: dtp.transport._admission)
                    release_free_heap()
        except Exception:
            # (its end would leave the first records unread and the lines unexpired)
            logger.exception("the admission thread failed")
            raise
        finally:
            self._reader_waker.close()
            wake.close()

    def _guarded_first_read(self, arrival: _Arrival, progress: Progress | None) -> None:
        """:meth:`_first_read` in the reader thread: what it raises (a thread that could
        not start, say) closes that connection, never the thread."""
        try:
            self._first_read(arrival, progress)
        except Exception:
            logger.exception("a connection from %s could not be taken in", arrival.peer)
            arrival.tcp.close()

    def _begin(self, arrival: _Arrival) -> bool:
        """The admission's ``start``: ``arrival`` holds its slots; its handshake begins
        in a connection thread -- this one, when the accepting thread asked for it
        (:meth:`_accept_next`). False when it cannot (the server closed, the client
        left, no thread): closed."""
        if self._closing:
            arrival.tcp.close()
            return False
        mine: list[_Arrival] | None = getattr(self._local, "mine", None)
        if mine is not None and not mine:
            mine.append(arrival)
            return True
        try:
            self._hand_to_thread(arrival)
        except RuntimeError as exc:
            # the process is out of threads: the first thread free serves it (the
            # accepting one, woken for it, at the latest); a ledger connection is
            # closed, as a server on the ledger alone has no accepting thread and its
            # client's ledger connection is not held
            logger.warning("no thread for a connection from %s: %s", arrival.peer, exc)
            if arrival.key is None:
                arrival.tcp.close()
                return False
            with self._idle_lock:
                self._orphans.append(arrival)
            with contextlib.suppress(OSError):
                self._orphan_sender.send(b"\0")
        return True

    def _close_unserved(self, arrivals: list[_Arrival], why: Why) -> None:
        """The admission's ``close``: connections it turned away (``why``)."""
        if not arrivals:
            return
        busy, unproven = unserved_counts(why, len(arrivals))
        with self._stats_lock:
            self.busy_refused += busy
            self.unproven_closed += unproven
            # (closed under the lock: _watch, which looks at the descriptor under it,
            # then never files one that is leaving, nor a number it freed)
            for arrival in arrivals:
                with contextlib.suppress(OSError):
                    self._reading.pop(arrival.tcp.fileno(), None)
                arrival.tcp.close()
        for arrival in arrivals:
            logger.debug("closed a connection from %s unserved: %s", arrival.peer, why)

    def _give_way(self, arrival: _Arrival) -> None:
        """The admission's ``give_way``: end a half-handshake, for a proven connection
        waiting for a slot (its thread ends it, and its slot goes on)."""
        with self._stats_lock:
            self.half_handshakes_evicted += 1
        arrival.gave_way = True
        engine = arrival.engine
        if engine is not None:
            engine._wake()  # its pump looks at gave_way

    def handoff(self, carrier: _socket.socket, peer: Any, config: ConnectionConfig) -> bool:
        """Serve a carrier connection that came from elsewhere (a ledger bridge: an
        :meth:`attach`-ed listener's, from any thread): it
        waits for a handshake slot as a proven TCP connection does, until ``config``'s
        handshake timeout (a ledger connection's is longer, as its records take ledger
        transactions), holding no thread meanwhile. False (the carrier closed) once the
        server is closed, when the server's line is full, or when no thread can be
        started for it."""
        if self._closing:
            carrier.close()
            return False
        # no IP address to cap by: the ledger bridge is a local socket
        arrival = _Arrival(carrier, peer, config, None)
        now = sched.monotonic()
        arrival.deadline = now + config.handshake_timeout
        self._heap.connected(now)
        self._admission.proven(arrival, None, arrival.deadline, now)
        return carrier.fileno() >= 0  # (closed: no thread for it, or its line was full)

    # -- the accepting and the connection threads ----------------------------------------------

    def _accept_next(self) -> _Arrival | None:
        """The accepting thread's turn: the next TCP connection whose handshake may
        start at once, for this thread to serve -- one whose first record came with its
        connect (and whose slots were free), or the newest of those whose record had
        not come yet, which this thread watches with the listener until it accepts
        another (or until its first-message timeout, when the reader thread closes
        it): a client that connects a little ahead of its first record (a connection
        by host ID runs its ledger's work between the two) is served by the thread
        that read it, with no hand-off to the reader thread and from it to a
        connection thread. The others go to the reader thread, or to the lines, and
        this thread accepts on. None once the server is closed."""
        fresh: _Arrival | None = None
        try:
            while not self._closing:
                with self._idle_lock:
                    if self._orphans:
                        return self._orphans.popleft()
                got, fresh = self._accept_one(fresh)
                if got is not None:
                    return got
            return None
        finally:
            if fresh is not None:
                self._watch(fresh)  # (the reader thread's now; closed if the server is)

    def _accept_one(self, fresh: _Arrival | None) -> tuple[_Arrival | None, _Arrival | None]:
        """One wait of the accepting thread (for the listener, the orphans' wake, and
        ``fresh``'s first record) and what came of it: (the connection this thread is
        to serve, or None; the one it watches next, or None)."""
        listener = self._listener
        assert listener is not None
        try:
            # (woken by a connection, by an orphan, by close()'s shutdown, or by what
            # ``fresh`` sends; and every _ACCEPT_POLL at the latest: close() closes
            # what this waits on, whose numbers a new descriptor may take before this
            # poll begins. A closed one: a ValueError here, or POLLNVAL, whose accept
            # or recv fails)
            poller = sched.poll()
            fd = listener.fileno()
            poller.register(fd, select.POLLIN)
            poller.register(self._orphan_wake, select.POLLIN)
            fresh_fd = -2
            wait = _ACCEPT_POLL
            if fresh is not None:
                fresh_fd = fresh.tcp.fileno()
                if fresh_fd < 0:
                    fresh = None  # closed meanwhile: timed out, gave way, or the server closed
                else:
                    poller.register(fresh_fd, select.POLLIN)
                    # (until its first-message timeout at most: a descriptor another
                    # thread closes while this poll waits on it stays open until the
                    # poll ends -- the client was told of its timeout that much late)
                    left = fresh.unproven_until - sched.monotonic()
                    wait = min(wait, max(left, 0.0) + 0.001)
            accepting = False
            for ready, _ in poller.poll(wait * 1000.0):
                if ready == fresh_fd:
                    assert fresh is not None
                    done, serve = self._fresh_read(fresh)
                    if done:
                        return serve, None
                elif ready == fd:
                    accepting = True
            if not accepting:
                with contextlib.suppress(OSError):
                    self._orphan_wake.recv(4096)
                if fresh is not None and sched.monotonic() >= fresh.unproven_until:
                    # its timeout is the reader thread's to keep: woken, it closes it now
                    self._watch(fresh)
                    return None, None
                return None, fresh
            made = self._accepted_as
            if made is not None:
                # (as socket.accept; its return to blocking mode for a default timeout of
                # None is moot: the socket goes non-blocking below)
                accepted, peer = listener._accept()  # type: ignore[attr-defined]
                tcp = _socket.socket(*made, fileno=accepted)
            else:
                tcp, peer = listener.accept()
        except BlockingIOError:
            return None, fresh  # (another took it: none here)
        except (OSError, ValueError):
            if not self._closing:
                sched.sleep(0.05)
            return None, fresh
        try:
            tcp.setblocking(False)  # (tuned already: it has the listener's TCP_NODELAY)
        except OSError:
            tcp.close()  # (reset already)
            return None, fresh
        arrival = _Arrival(tcp, peer, self._config, address_key(str(peer[0])))
        mine: list[_Arrival] = []
        self._local.mine = mine
        try:
            if self._admit_arrival(arrival):
                # its record is not in yet: watched here, until the next one's turn
                if fresh is not None:
                    self._watch(fresh)
                fresh = arrival
        except Exception:
            # (a fault of ours at one connection: it goes, the accepting goes on --
            # escaping, it ended this thread and all accepting with it)
            logger.exception("a connection from %s could not be taken in", peer)
            tcp.close()
        finally:
            self._local.mine = None
        return (mine[0] if mine else None), fresh

    def _fresh_read(self, arrival: _Arrival) -> tuple[bool, _Arrival | None]:
        """Read what came of the first record of ``arrival``, which the accepting thread
        watches: (False, None) while it is still coming; else (True, ``arrival``) when
        its handshake may start at once, for this thread to serve, or (True, None)
        when not (it waits in a line, or was closed)."""
        progress = _read_first(arrival)
        if progress is Progress.NEED_MORE:
            return False, None
        mine: list[_Arrival] = []
        self._local.mine = mine
        try:
            self._first_read(arrival, progress)
        except Exception:
            logger.exception("a connection from %s could not be taken in", arrival.peer)
            arrival.tcp.close()
        finally:
            self._local.mine = None
        return True, (mine[0] if mine else None)

    def _hand_to_thread(self, job: _Job) -> None:
        """Hand ``job`` to a waiting connection thread, or to a new one."""
        with self._idle_lock:
            if self._waiting:
                self._waiting.pop().put(job)  # (that waiting thread is promised it)
                return
        thread = sched.Thread(
            target=self._connection_thread, args=(job,), name="dtp-handshake", daemon=True
        )
        thread.start()

    def _connection_thread(self, job: _Job | None) -> None:
        """A connection thread: do ``job``, then wait up to WORKER_IDLE for another.
        With the turn to accept, it accepts one connection, passes the turn on and
        serves that connection itself."""
        jobs: queue.SimpleQueue[_Job | None] | None = None  # (its own, once it waits)
        while job is not None:
            if isinstance(job, _AcceptTurn):
                accepted = self._accept_next()
                if accepted is None:
                    return  # closed: nobody accepts any more
                try:
                    self._hand_to_thread(_ACCEPT_TURN)  # the next client need not wait for this one
                except RuntimeError as exc:
                    # the process is out of threads: the turn is left for whichever
                    # thread is free first (lost, it stopped all accepting; kept while
                    # serving, it stopped accepting for the handler's whole run)
                    logger.warning("no thread to pass the accepting on to: %s", exc)
                    with self._idle_lock:
                        if self._waiting:  # one became free meanwhile (and waits)
                            self._waiting.pop().put(_ACCEPT_TURN)
                        else:
                            self._turn_left = True
                job = accepted
            self._serve_one(job)
            with self._idle_lock:
                if self._orphans:  # (one no thread could be started for)
                    job = self._orphans.popleft()
                    continue
                if self._turn_left:
                    self._turn_left = False
                    job = _ACCEPT_TURN
                    continue
                if self._closing:
                    return
                if jobs is None:
                    jobs = sched.SimpleQueue()
                self._waiting.append(jobs)
            try:
                job = jobs.get(timeout=self.WORKER_IDLE)
            except queue.Empty:
                with self._idle_lock:
                    if jobs in self._waiting:
                        self._waiting.remove(jobs)  # no job promised to us: leave
                        return
                # we were promised a job meanwhile: it is queued
                job = jobs.get()

    def _serve_one(self, arrival: _Arrival) -> None:
        """One connection's thread: the handshake, then (under serve_forever) the
        handler, with no thread hand-off between them. It holds its handshake slots
        until the handshake ends."""
        try:
            sock = self._handshake(arrival)
        finally:
            # however the handshake ended: its slots are free for the next client
            self._handshake_over(arrival)
        if sock is None:
            return
        if self._closing:
            sock.abort("the server is closed")  # nobody will take it now
            return
        dispatch = self._dispatch
        if dispatch is not None:
            self._queue.give_place(sock._engine)  # (serve_forever began meanwhile)
            dispatch(sock)
            return
        self._queue.put(sock)  # (its place was taken before its client was told it is in)
        if self._closing:
            self._queue.close()  # close() ran meanwhile and may have missed it

    def _handshake_over(self, arrival: _Arrival) -> None:
        """``arrival``'s handshake ended: its slots go to the next in line (once)."""
        if not arrival.slots_freed:
            arrival.slots_freed = True
            self._admission.ended(arrival, sched.monotonic())

    # -- handshakes: the handshake, the hooks, the verdict -------------------------------------

    def _handshake(self, arrival: _Arrival) -> DTPSocket | None:
        tcp, peer = arrival.tcp, arrival.peer
        session = Session(arrival.config, now=sched.monotonic())
        try:
            engine = Engine(tcp, session, name=f"server-{peer[0]}:{peer[1]}")
        except OSError as exc:
            # (its wake socketpair: out of descriptors, say) escaping, it ended the
            # thread with a traceback, uncounted, the carrier left to the collector
            logger.warning("handshake with %s not started: %s", peer, exc)
            with self._stats_lock:
                self.handshakes_failed += ENDINGS[Outcome.FAILED].failed
            tcp.close()
            return None
        engine.peername = peer
        arrival.engine = engine
        with self._stats_lock:
            self._handshaking.add(engine)
        try:
            # (close() sets _closed before it wakes what it finds in _handshaking)
            if self._closing:
                outcome, verdict = Outcome.CLOSED, ""
            else:
                outcome, verdict = self._authenticate(engine, arrival)
        except DTPError as exc:
            logger.debug("handshake with %s failed: %s", peer, exc)
            outcome, verdict = Outcome.FAILED, ""
        except Exception:
            logger.exception("handshake with %s failed", peer)
            engine.abort(CloseCode.INTERNAL_ERROR, "internal error")
            return None
        finally:
            with self._stats_lock:
                self._handshaking.discard(engine)
        # the engine's lock is not held here: abort() and friends take it themselves
        ending = ENDINGS[outcome]
        if ending.failed:
            # (refusals are counted in _authenticate, before the client can read them)
            with self._stats_lock:
                self.handshakes_failed += ending.failed
        if ending.code is not None:
            engine.abort(ending.code, verdict if ending.reason is None else ending.reason)
            return None
        engine.start_timer()
        return DTPSocket(engine, 0, primary=True)

    def _authenticate(self, engine: Engine, arrival: _Arrival) -> tuple[Outcome, str]:
        """Run the handshake and the accept hook: its outcome, and the refusal's reason
        (REFUSED, BUSY; else "": :data:`~dtp.transport._admission.ENDINGS` holds it)."""
        session = engine.session
        conn = session.conn
        # (a wait for a place ends a little before the connection's own handshake timer,
        # so that the refusal still goes out: _wait_for_accept_place)
        timeout = conn.config.handshake_timeout
        deadline = sched.monotonic() + timeout - min(_REFUSAL_MARGIN, timeout / 4)
        with engine.lock:
            first = arrival.reader.take()
            if first:
                # (the first record, read before the slots: the handshake's first input)
                conn.receive_data(first, sched.monotonic())
                engine._after_io()
            # IK: the client's proof comes with its first message and our reply waits
            # for the verdict; XX: the proof comes after the three messages
            if arrival.key is not None and session.authenticated_address is None:
                # its first record, read, got our reply: its client's next message is
                # due. (A ledger bridge's first record comes over the ledger, slowly: it
                # passed the ledger carrier's own admission, and never gives way)
                self._admission.waiting_for_client(arrival)
            engine.pump(
                lambda: (
                    session.authenticated_address is not None
                    or session.terminated is not None
                    or self._closing
                    or arrival.gave_way
                ),
                conn.config.handshake_timeout,
            )
            self._admission.authenticated(arrival)
            if self._closing:
                return Outcome.CLOSED, ""
            if arrival.gave_way:
                return Outcome.GAVE_WAY, ""
            if session.terminated is not None or session.authenticated_address is None:
                return Outcome.FAILED, ""
            # before the hooks: a replay must not reserve the client's ledger connection
            if self._replays.is_replay(conn, engine.peername):
                return Outcome.REPLAYED, ""
            check = session.zklogin_check
            if check is not None:
                # a zkLogin proof: a Sui node must confirm it before anyone decides on
                # the client (docs/protocol.md 8.4). Message 2 goes first, so that a
                # refusal travels, as in XX, in a CLOSE under the transport keys
                conn.answer()
                engine.flush()
                left = deadline - sched.monotonic()
                why = node_refusal(conn.config.zklogin_verifier, check, left)
                if session.terminated is not None:
                    return Outcome.FAILED, ""
                if why is not None:
                    return Outcome.PROOF_REFUSED, f"identity proof rejected: {why}"
            if self._accept_hook is not None or self._admit_hook is not None:
                # IK: message 2 goes now, and the client works on it while the hooks
                # (the ledger admission) decide; the verdict follows it. Without hooks
                # the verdict is at once: both go in one flight, as one wake-up
                conn.answer()
                engine.flush()
            peer = session.peer_info()
            verdict = self._run_hook(peer)
            if verdict is None and self._serving is not None:
                # (what the admission counts while the connection is served: hooks.Reservations)
                verdict, release = self._serving.take(peer)
                if release is not None:
                    engine.on_release.append(release)
                    engine.ends_carrier = self._serving.ends_carriers
            outcome = Outcome.REFUSED
            if verdict is None and not self._wait_for_accept_place(engine, deadline):
                outcome, verdict = Outcome.BUSY, SERVER_BUSY
                with self._stats_lock:  # (counted before the client can read it)
                    self.busy_refused += 1
            # The verdict is in: the slots go on before the client can read it, so a
            # client that connects again as soon as it reads it -- refused, or in --
            # finds them free (tests/transport/test_handshake_slots.py)
            self._handshake_over(arrival)
            if verdict is not None:
                if outcome is Outcome.REFUSED:
                    with self._stats_lock:  # (counted before the client can read it)
                        self.refused += ENDINGS[outcome].refused
                session.conn.refuse(verdict)  # sends CLOSE(REFUSED, reason)
                engine.flush()
                # (counted as refused already: a drain that times out or finds the carrier
                # gone does not make it a failed handshake too)
                with contextlib.suppress(DTPError):
                    engine.pump(lambda: not engine.out, 1.0)
                return outcome, verdict
            session.conn.accept()
            self._replays.accepted(conn)
            engine.flush()
            session.process_events()
            # our reply is out and the client works on it: make the next connection's
            # ephemeral key and start its Noise state meanwhile
            prepare_ephemeral_key()
            prepare_handshake(conn.config.identity.noise_private_bytes(), initiator=False)
            return Outcome.ACCEPTED, ""

    def _run_hook(self, peer: PeerInfo) -> str | None:
        """None to accept, or the refusal reason."""
        for call in hook_calls(peer, self._accept_hook, self._admit_hook):
            try:
                verdict = call.hook(call.arg)
            except Exception:
                logger.exception("accept hook failed for %s", peer.address)
                return HOOK_FAILED
            reason = refusal_reason(verdict)
            if reason is not None:
                return reason
        return None

    # -- the accept() queue --------------------------------------------------------------------

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
        if self._closing:
            raise SocketClosed("accept() on a closed server")
        try:
            sock = self._queue.take(wait)
        except queue.Empty:
            if own and wait == 0:
                raise BlockingIOError(errno.EAGAIN, "no connection ready") from None
            raise DTPTimeoutError("no connection within the timeout") from None
        if sock is None:
            raise SocketClosed("the server was closed")
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
                sched.Thread(target=run, args=(sock,), daemon=True).start()
            except RuntimeError as exc:
                # out of threads: the client reads "server busy" (and this loop goes
                # on, where the error ended serve_forever with the socket left open)
                logger.warning("no thread for a connection from %s: %s", sock.peer_address, exc)
                sock.abort("server busy")

        # From now on, each connection's handshake thread goes on to run its handler
        # (no thread hand-off); the loop below serves what was queued before.
        self._dispatch = run
        while not self._closing:
            try:
                sock, _ = self.accept(timeout=0.5)
            except DTPTimeoutError:
                continue
            except LocalProtocolError:
                return
            start(sock)

    def _wait_for_accept_place(self, engine: Engine, deadline: float) -> bool:
        """Before a client is told it is in: one of the ``max_pending`` places in the
        queue :meth:`accept` takes from (none is needed under :meth:`serve_forever`,
        whose handler runs in this thread). While none is free -- the application takes
        connections slower than they come -- the client waits in its handshake, until
        ``deadline`` (its handshake timeout): False then, and it is refused "server
        busy". A client told it is in is never dropped for want of room
        (tests/transport/test_accept_burst.py); this handshake's slot, held meanwhile,
        holds the next clients in the listen backlog. Lock held (the engine's: pumped
        while waiting, so a client that gives up is seen)."""
        if self._dispatch is not None:
            return True
        session = engine.session
        if self._queue.take_place(engine):
            return True
        # (IK without hooks: message 2 waited for the verdict; the client works on it
        # while we wait. A no-op where it went already)
        session.conn.answer()
        engine.flush()
        while not self._queue.take_place(engine):
            if self._dispatch is not None:
                return True
            left = deadline - sched.monotonic()
            if left <= 0 or self._closing or session.terminated is not None:
                return False
            with contextlib.suppress(DTPTimeoutError):
                engine.pump(lambda: session.terminated is not None, min(left, _PLACE_POLL))
        return True


class AcceptQueue:
    """The connections :meth:`DTPServer.accept` may take, in the order their handshakes
    completed. Each holds one of ``max_pending`` places, taken before its client is told
    it is in (:meth:`take_place`) and given back as accept() takes it: a client is never
    told it is in with no room left for it. The queue itself is unbounded, so that the
    end-of-server mark (None) always fits; once closed, every waiting and later
    :meth:`take` gets it."""

    def __init__(self, max_pending: int) -> None:
        self._ready: queue.Queue[DTPSocket | None] = sched.Queue()
        self._places = threading.BoundedSemaphore(max_pending)

    def take_place(self, engine: Engine) -> bool:
        """A place for ``engine``'s connection if one is free now (marked on the engine,
        so that exactly one :meth:`give_place` returns it)."""
        if not self._places.acquire(blocking=False):
            return False
        engine.holds_place = True
        return True

    def give_place(self, engine: Engine) -> None:
        """``engine``'s connection needs its place no more (taken by accept(), handed to
        serve_forever's handler, or closed): the next client may be told it is in."""
        if engine.holds_place:
            engine.holds_place = False
            self._places.release()

    def __len__(self) -> int:
        """Connections (and the end-of-server mark, once closed) waiting to be taken."""
        return self._ready.qsize()

    def put(self, sock: DTPSocket) -> None:
        """Queue a connection whose place was taken (:meth:`take_place`)."""
        self._ready.put(sock)

    def take(self, wait: float | None) -> DTPSocket | None:
        """The next connection, its place given back; None once the queue is closed.
        Waits ``wait`` seconds (None: forever, 0: not at all), then queue.Empty."""
        sock = self._ready.get(block=wait != 0, timeout=wait)
        if sock is None:
            # the end-of-server mark stays for the next waiter: every thread blocked in
            # accept() wakes, not only the first
            self._ready.put_nowait(None)
            return None
        self.give_place(sock._engine)
        return sock

    def close(self) -> None:
        """Abort the connections queued that accept() never took (the server is closed:
        nobody will) and leave the end-of-server mark for every taker. Safe to call
        again, for a connection queued while the server closed."""
        while True:
            try:
                sock = self._ready.get_nowait()
            except queue.Empty:
                break
            if sock is not None:
                self.give_place(sock._engine)
                sock.abort("the server is closed")
        self._ready.put_nowait(None)
