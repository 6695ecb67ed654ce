"""Where the blocking transport gets its time, its waits, its threads and its carriers.

The blocking transport calls these module attributes (``sched.monotonic()``,
``sched.wait_ready(...)``, ``sched.Thread``...) rather than :mod:`time`, :mod:`select`
and :mod:`threading`: by default they *are* those (an attribute read, no extra work),
and :func:`install` puts another scheduler's in their place for a while -- the
deterministic network (``dtp.testing.network._blocking``) runs every blocking thread as
a task on a virtual clock, so that a blocking program replays exactly from a seed
(docs/testing.md §3). A replacement (:class:`Scheduler` lists them all) keeps each one's
meaning here; its ``listen_tcp`` returns a tuned listener (TCP_NODELAY, as
:func:`dtp.transport.carriers._tcp.listen_tcp`'s), whose setting accepted sockets
inherit."""

from __future__ import annotations

import queue as _queue
import select as _select
import socket as _socket
import threading as _threading
import time as _time
from typing import Any, Protocol

from dtp.transport.carriers._tcp import connect_tcp as _connect_tcp
from dtp.transport.carriers._tcp import listen_tcp as _listen_tcp
from dtp.transport.carriers._tcp import wait_ready as _wait_ready

__all__ = ["REAL", "Scheduler", "install", "installed"]

#: The names a scheduler provides (and :func:`install` sets here).
NAMES = (
    "monotonic",
    "sleep",
    "wait_ready",
    "poll",
    "Lock",
    "Condition",
    "Thread",
    "Queue",
    "SimpleQueue",
    "connect_tcp",
    "listen_tcp",
    "socketpair",
    "lending",
    "timers",
)


class Scheduler(Protocol):
    """What a scheduler provides: the clock (``monotonic``, ``sleep``), the waits
    (``wait_ready``, ``poll``, and the ``Lock``, ``Condition``, ``Queue`` and
    ``SimpleQueue`` classes), the threads (``Thread``), the carriers (``connect_tcp``,
    ``listen_tcp``, as :mod:`dtp.transport.carriers._tcp`'s) and the wake-up pairs
    (``socketpair``), the timer service engines register with (``timers``), and
    ``lending``: whether an engine may lend a stream to the lane (whose C code reads the
    system's clock)."""

    @property
    def monotonic(self) -> Any: ...

    @property
    def sleep(self) -> Any: ...

    @property
    def wait_ready(self) -> Any: ...

    @property
    def poll(self) -> Any: ...

    @property
    def Lock(self) -> Any: ...

    @property
    def Condition(self) -> Any: ...

    @property
    def Thread(self) -> Any: ...

    @property
    def Queue(self) -> Any: ...

    @property
    def SimpleQueue(self) -> Any: ...

    @property
    def connect_tcp(self) -> Any: ...

    @property
    def listen_tcp(self) -> Any: ...

    @property
    def socketpair(self) -> Any: ...

    @property
    def lending(self) -> bool: ...

    @property
    def timers(self) -> Any: ...


class _Real:
    """The operating system's threads and clock (the default)."""

    monotonic = staticmethod(_time.monotonic)
    sleep = staticmethod(_time.sleep)
    wait_ready = staticmethod(_wait_ready)
    poll = staticmethod(_select.poll)
    Lock = _threading.Lock
    Condition = _threading.Condition
    Thread = _threading.Thread
    Queue = _queue.Queue
    SimpleQueue = _queue.SimpleQueue
    connect_tcp = staticmethod(_connect_tcp)
    listen_tcp = staticmethod(_listen_tcp)
    socketpair = staticmethod(_socket.socketpair)
    lending = True
    timers: Any = None  # (the process's TimerService, set by its module)


REAL: Scheduler = _Real()

monotonic = _time.monotonic
sleep = _time.sleep
wait_ready = _wait_ready
poll = _select.poll
Lock = _threading.Lock
Condition = _threading.Condition
Thread = _threading.Thread
Queue = _queue.Queue
SimpleQueue = _queue.SimpleQueue
connect_tcp = _connect_tcp
listen_tcp = _listen_tcp
socketpair = _socket.socketpair
lending = True
timers: Any = None

_current: Scheduler = REAL


def installed() -> Scheduler:
    """The scheduler in place (:data:`REAL` unless :func:`install` put another)."""
    return _current


def install(scheduler: Scheduler) -> Scheduler:
    """Put ``scheduler``'s clock, waits, threads and carriers in place for every blocking
    connection from now on; returns the one it replaces (install that to go back).
    Connections made under one scheduler must end under it: an engine keeps the locks
    and the carrier it was made with."""
    global _current
    previous = _current
    namespace = globals()
    for name in NAMES:
        namespace[name] = getattr(scheduler, name)
    _current = scheduler
    return previous


def set_default_timers(service: Any) -> None:
    """The process's timer service (``dtp.transport.blocking._engine.TIMERS``), which the
    default scheduler gives engines."""
    global timers
    _Real.timers = service
    if _current is REAL:
        timers = service
