"""The blocking transport's engine: one connection over one carrier socket, driven by
whichever thread waits. :class:`Engine` is made of its parts: ``engine_state`` (what it
knows of itself), ``engine_output`` (the carrier writes), ``engine_reads`` (the carrier
reads and the lent lane), ``engine_waits`` (the pump and its wakes) and
``engine_lifetime`` (the timer thread, the close, the abort)."""

from __future__ import annotations

import socket as _socket
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from dtp.transport.blocking import LINGER
from dtp.transport.blocking.engine_lifetime import DRAIN_QUIET as DRAIN_QUIET
from dtp.transport.blocking.engine_lifetime import EngineLifetime
from dtp.transport.blocking.engine_output import EngineOutput
from dtp.transport.blocking.engine_reads import READ_FIRST_SKIP as READ_FIRST_SKIP
from dtp.transport.blocking.engine_reads import EngineReads
from dtp.transport.blocking.engine_waits import EngineWaits
from dtp.transport.session import FIRST_RECV_CHUNK, Session

if TYPE_CHECKING:
    from dtp.transport.blocking.connect import NextConnectKeys
    from dtp.transport.hooks import ConnectionHook

LOSSY_LINGER = 30.0  # the same over a lossy carrier (the ledger), where acks are slow


class Engine(EngineReads, EngineOutput, EngineWaits, EngineLifetime):
    """One connection over one carrier socket, shared by the connection's streams."""

    def __init__(self, sock: _socket.socket, session: Session, name: str) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.session = session
        self.conn = session.conn
        self.name = name
        session.name = name  # (its logs name the connection)
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.pumping = False
        self.out: list[memoryview] = []
        self.carrier_closed = False
        self.closed = False
        # the carrier's read buffer starts small (a short connection never pays for
        # zeroing RECV_CHUNK) and doubles whenever a read fills it
        self._rbuf = bytearray(FIRST_RECV_CHUNK)
        self._rview = memoryview(self._rbuf)
        self._recv_scratch: memoryview | None = None  # recv()'s buffer, made on first use
        self._fd = sock.fileno()
        self._read_first_skip = 0  # reads to go before recv_lent tries one without waiting
        self._wake_r, self._wake_w = _socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_fd = self._wake_r.fileno()
        self._wake_w.setblocking(False)
        self.waiters = 0  # threads blocked in cond.wait: notify only when there are some
        # streams whose next (or current) blocking read ends in DTPTimeoutError at once
        # (DTPSocket.interrupt_recv)
        self.interrupted: set[int] = set()
        self.linger = LINGER if session.conn.config.reliable_carrier else LOSSY_LINGER
        # the first stream was reset (DTPSocket.reset): shutdown() waits for no reader
        self.abandoned = False
        self.hook: ConnectionHook | None = None  # a layer above (a metered client: dtp.hostid)
        self.timer_started = False  # (start_timer: one entry in the timer heap, ever)
        # a server's accepted connection holding one of its accept() queue's places
        self.holds_place = False
        # the next connect's keys still to make (NextConnectKeys), made while we would
        # wait on the carrier (_make_ahead)
        self.ahead: NextConnectKeys | None = None
        # run once as the engine is released (lock held: it must not block), or handed
        # to the timer thread by DTPSocket.__del__; a list, taken with one pop (a single
        # step under the GIL), so that whichever of the two comes first runs it, once
        self.on_release: list[Callable[[], None]] = []
        # streams whose sockets were garbage-collected unclosed (DTPSocket.__del__): they
        # are closed at the next I/O, under the lock (see _close_dropped)
        self.dropped: deque[int] = deque()
        try:
            self.peername = sock.getpeername()
            self.sockname = sock.getsockname()
        except OSError:
            self.peername = self.sockname = None
