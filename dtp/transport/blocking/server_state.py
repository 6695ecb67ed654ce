"""What a blocking :class:`~dtp.transport.blocking.server.DTPServer` knows of itself,
declared once for all its parts (``server_admission``, ``server_threads``,
``server_handshakes``, ``server_accept_queue``) so that each type-checks on its own; and
the jobs its connection threads are given. Declarations only: ``DTPServer.__init__``
sets every attribute and says what it holds."""

from __future__ import annotations

import queue
import socket as _socket
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.blocking import AcceptHook, AdmitHook
from dtp.transport.blocking.engine import Engine
from dtp.transport.blocking.server_arrival import _Arrival
from dtp.transport.blocking.socket import DTPSocket
from dtp.transport.handshake_gate import Admission
from dtp.transport.handshake_slots import AddressSlots
from dtp.transport.heap_release import HeapRelease
from dtp.transport.hooks import Listener, Reservations
from dtp.transport.replay_guard import ReplayGuard


class _AcceptTurn:
    """The job of a DTPServer connection thread whose turn it is to accept on the
    listener (there is one such job per listening server)."""


_ACCEPT_TURN = _AcceptTurn()

# what a connection thread is given: the turn to accept, or a connection whose handshake
# may start (it holds its slots)
_Job = _AcceptTurn | _Arrival


class ServerState:
    """The attributes of a blocking server, and the methods one of its parts calls in
    another (see ``DTPServer.__init__`` for what each holds)."""

    WORKER_IDLE: float
    identity: HostIdentity
    handshakes_failed: int
    refused: int
    busy_refused: int
    unproven_closed: int
    half_handshakes_evicted: int
    _admission: Admission[_Arrival]
    _address_slots: AddressSlots[_Arrival] | None
    _reading: dict[int, _Arrival]
    _heap: HeapRelease
    _local: threading.local
    _accept_hook: AcceptHook | None
    _admit_hook: AdmitHook | None
    _serving: Reservations | None
    _config: ConnectionConfig
    _listener: _socket.socket | None
    _address: tuple[str, int] | None
    _attached: Listener | None
    _ready: queue.Queue[DTPSocket | None]
    _places: threading.BoundedSemaphore
    _timeout: float | None
    _dispatch: Callable[[DTPSocket], None] | None
    _closed: threading.Event
    _jobs: queue.SimpleQueue[_Job | None]
    _idle: int
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

    if TYPE_CHECKING:
        # defined in server_admission.py
        def _take_in(self, arrival: _Arrival) -> None: ...

        # defined in server_threads.py
        def _give(self, job: _Job) -> None: ...

        # defined in server_handshakes.py
        def _handshake(self, arrival: _Arrival) -> DTPSocket | None: ...

        # defined in server_accept_queue.py
        def _take_place(self, engine: Engine, deadline: float) -> bool: ...
        def _drain_ready(self) -> None: ...
