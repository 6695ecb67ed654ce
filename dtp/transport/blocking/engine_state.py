"""What a blocking connection's :class:`~dtp.transport.blocking.engine.Engine` knows of
itself, declared once for all its parts (``engine_output``, ``engine_reads``,
``engine_waits``, ``engine_lifetime``) so that each type-checks on its own. Declarations
only: ``Engine.__init__`` sets every attribute and says what it holds."""

from __future__ import annotations

import socket as _socket
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dtp.protocol.connection import Connection
from dtp.transport.session import Session

if TYPE_CHECKING:
    from dtp.transport.blocking.connect import NextConnectKeys
    from dtp.transport.hooks import ConnectionHook


class EngineState:
    """The attributes of a blocking connection's engine, and the methods one of its parts
    calls in another (see ``Engine.__init__`` for what each holds). A part hands itself
    on as this type: the timer thread (:mod:`~dtp.transport.blocking.timers`) and the
    next connect's keys (``connect.NextConnectKeys``) take an engine by it."""

    sock: _socket.socket
    session: Session
    conn: Connection
    name: str
    lock: threading.Lock
    cond: threading.Condition
    pumping: bool
    out: list[memoryview]
    carrier_closed: bool
    closed: bool
    _rbuf: bytearray
    _rview: memoryview
    _recv_scratch: memoryview | None
    _fd: int
    _read_first_skip: int
    _wake_r: _socket.socket
    _wake_w: _socket.socket
    _wake_fd: int
    waiters: int
    interrupted: set[int]
    linger: float
    abandoned: bool
    hook: ConnectionHook | None
    timer_started: bool
    holds_place: bool
    ahead: NextConnectKeys | None
    on_release: list[Callable[[], None]]
    dropped: deque[int]
    peername: Any
    sockname: Any

    if TYPE_CHECKING:
        # defined in engine_output.py
        def _send_some(self) -> None: ...
        def flush(self) -> None: ...
        def queued_output(self) -> bool: ...

        # defined in engine_reads.py
        def _read_available(self) -> bool: ...

        # defined in engine_waits.py
        def _carrier_failed(self, exc: BaseException | None) -> None: ...
        def _wake(self) -> None: ...
        def _take_wake(self) -> None: ...
        def _after_io(self) -> None: ...
        def _make_ahead(self) -> None: ...
        def pump(self, ready: Callable[[], bool], timeout: float | None) -> None: ...
        def poll(self) -> None: ...

        # defined in engine_lifetime.py
        def _release(self, closing: bool = False) -> None: ...
