"""Blocking code on the deterministic network, replayed exactly: :class:`BlockingScheduler`
runs every thread of a blocking program (``dtp.socket`` and its engine, the server's
threads, the timer service) as a task of a :class:`~dtp.testing.network.VirtualEventLoop`,
one at a time, on the virtual clock.

    net = SimNetwork(seed=3)
    net.add_hosts("client", "server")
    answer = net.run_blocking(main, host="client")   # main(): blocking code

Each thread is a real thread, but only one of them -- or the loop -- runs at a time: a
thread runs until it would wait (for a carrier, a lock, a condition, a queue, a sleep, a
thread's end), then hands over; the loop then moves the bytes the thread wrote onto the
simulated links, delivers what is due, and resumes a thread whose wait is over -- one
drawn with the seed when several are. The blocking transport asks
:mod:`dtp.transport.blocking.sched` for its clock, waits, threads and carriers, and this
module is what :func:`~dtp.transport.blocking.sched.install` puts there for the run. A
connect to one of the network's hosts gets a carrier whose far end is the loop's (a
socket pair: what one end writes the other can read at once, so every read sees what the
simulation decided and nothing else), a server listening on one of them a listener the
simulation's connects reach. The lent lane -- the engine's fast path, whose C code reads
the system's clock -- is off: every read and write takes the general path.

So the same program with the same seed does the same things in the same order at the same
virtual times, with the same bytes. What the program does outside of DTP sockets breaks
that, as on the asyncio side: a wait of its own (``threading.Event``, ``time.sleep``, a
real socket) blocks the whole simulation -- use the ``sched`` ones, or ``dtp.socket``'s
timeouts -- and clocks and randomness of its own differ from run to run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import errno
import itertools
import math
import queue
import random
import re
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dtp.transport.blocking import sched
from dtp.transport.carriers._tcp import connect_error
from dtp.transport.carriers._tcp import wait_ready as _real_wait_ready

if TYPE_CHECKING:
    from dtp.testing.network._loop import VirtualEventLoop
    from dtp.testing.network._transports import SimServer

__all__ = ["BlockingScheduler", "SimulationEnded"]

T = TypeVar("T")
S = TypeVar("S", bound=socket.socket)

_CHUNK = 1 << 16


class _Host(Protocol):
    @property
    def ip(self) -> str: ...


class _Network(Protocol):
    """What the scheduler asks of its network (:class:`~dtp.testing.network.SimNetwork`,
    which imports this module to run blocking code)."""

    seed: int

    def knows(self, name: object) -> bool: ...

    def resolve(self, name: str) -> Any: ...

    def current_host(self) -> Any: ...

    def host_to_listen_on(self, host: object) -> Any: ...

    async def connect(
        self, host: str, port: int, protocol_factory: Callable[[], asyncio.BaseProtocol]
    ) -> tuple[Any, asyncio.BaseProtocol]: ...

    async def listen(
        self, host: Any, port: int, protocol_factory: Callable[[], asyncio.BaseProtocol]
    ) -> SimServer: ...

    def _note(self, what: str) -> None: ...


class SimulationEnded(BaseException):
    """Raised in a thread still waiting when its simulation ends (a BaseException, so
    that the blocking code's ``except Exception`` handlers let it through)."""


class _Task:
    """One thread of the program: its turn (``gate``), what it waits for, its end."""

    def __init__(self, serial: int, name: str) -> None:
        self.serial = serial
        self.name = name
        self.gate = threading.Semaphore(0)
        self.check: Callable[[], bool] | None = None  # while it waits: is the wait over?
        self.timer: asyncio.TimerHandle | None = None
        self.done = False
        self.ending = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.future: asyncio.Future[None] | None = None  # set as it ends (the loop's)


class BlockingScheduler:
    """The scheduler of one simulated run of blocking code (see the module docs); made,
    installed and closed by :meth:`SimNetwork.run_blocking
    <dtp.testing.network.SimNetwork.run_blocking>`."""

    lending = False

    def __init__(
        self, network: _Network, loop: VirtualEventLoop, *, turn_limit: float = 60.0
    ) -> None:
        from dtp.transport.blocking._engine import TimerService

        self.network = network
        self.loop = loop
        self._rng = random.Random(f"{network.seed}/threads")
        self._serial = itertools.count(1)
        self._tasks: dict[int, _Task] = {}  # by thread ident
        self._all: list[_Task] = []
        self._waiting: dict[_Task, None] = {}  # in the order they began to wait
        self._ready: list[_Task] = []
        self._dispatching = False
        self._ended = False  # (end() ran: no thread gets a turn any more)
        #: Real seconds a thread may take over its turn before the run fails (a wait of
        #: its own, outside the scheduler, holds every other thread up).
        self.turn_limit = turn_limit
        #: Why the run failed (a thread kept its turn), once it has.
        self.failure: BaseException | None = None
        self._baton = threading.Semaphore(0)  # the loop's turn
        self._bridges: list[_Bridge] = []
        self._listeners: list[_SimListener] = []
        # every socket made for the program: closed at the end if it left them open
        self._sockets: list[weakref.ref[socket.socket]] = []
        self.timers = TimerService()
        # (made by a thread not of the run -- the process's own, using DTP meanwhile --
        # they are the operating system's, as outside a run)
        sim_thread = self._sim_thread = _thread_class(self)

        def of_run() -> bool:
            return threading.get_ident() in self._tasks

        self.Thread: Callable[..., Any] = lambda *a, **k: (
            sim_thread if of_run() else threading.Thread
        )(*a, **k)
        self.Lock: Callable[..., Any] = lambda: _Lock(self) if of_run() else threading.Lock()
        self.Condition: Callable[..., Any] = lambda lock=None: (
            _Condition(self, lock) if of_run() else threading.Condition(lock)
        )
        self.Queue: Callable[..., Any] = lambda maxsize=0: (
            _Queue(self) if of_run() else queue.Queue(maxsize)
        )
        self.SimpleQueue: Callable[..., Any] = lambda: (
            _Queue(self) if of_run() else queue.SimpleQueue()
        )
        self.poll: Callable[..., Any] = lambda: _Poll(self) if of_run() else select.poll()

    # -- the clock --------------------------------------------------------------------------

    def monotonic(self) -> float:
        if threading.get_ident() not in self._tasks:
            return time.monotonic()  # (a thread of the process's own, not the program's)
        return self.loop.time()

    def sleep(self, seconds: float) -> None:
        task = self._tasks.get(threading.get_ident())
        if task is None:
            time.sleep(seconds)
            return
        self._block(task, _never, max(0.0, seconds))

    # -- waits ------------------------------------------------------------------------------

    def wait_ready(
        self, readers: list[Any], writers: list[Any], timeout: float | None = None
    ) -> tuple[list[Any], list[Any]]:
        task = self._tasks.get(threading.get_ident())
        if task is None:
            return _real_wait_ready(readers, writers, timeout)
        ready = _real_wait_ready(readers, writers, 0)
        if ready[0] or ready[1] or timeout == 0:
            return ready
        self._block(task, lambda: any(_real_wait_ready(readers, writers, 0)), timeout)
        return _real_wait_ready(readers, writers, 0)

    def _block(self, task: _Task, check: Callable[[], bool], timeout: float | None) -> None:
        """Wait (in ``task``'s thread) until ``check()`` or ``timeout`` seconds of virtual
        time have passed: the turn goes to the loop meanwhile."""
        if task.ending:
            raise SimulationEnded
        task.check = check
        self._waiting[task] = None
        if timeout is not None:
            now = self.loop.time()
            # (at least the next representable time: a wait for 1e-16 s must see the
            # clock move, or a caller waiting for its timer would wait again for ever)
            deadline = now + timeout if timeout <= 0 else max(now + timeout, _after(now))
            task.timer = self.loop.call_at(deadline, self._expire, task, deadline)
        self._baton.release()
        task.gate.acquire()
        if task.ending:
            raise SimulationEnded

    def _expire(self, task: _Task, deadline: float) -> None:
        task.timer = None
        self.loop.reach(deadline)
        if task in self._waiting:
            del self._waiting[task]
            self._make_ready(task)

    def _make_ready(self, task: _Task) -> None:
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        task.check = None
        if self._ended:
            return
        self._ready.append(task)
        if not self._dispatching:
            self._dispatching = True
            self.loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Give the turn to one thread whose wait is over (the seed picks which), then
        move what it wrote and see whose waits that ended."""
        self._dispatching = False
        if not self._ready or self._ended:
            return
        task = self._ready.pop(self._rng.randrange(len(self._ready)))
        self.network._note(f"thread {task.name} runs")
        task.gate.release()
        if not self._baton.acquire(timeout=self.turn_limit):
            self.failure = RuntimeError(
                f"the thread {task.name} kept its turn for {self.turn_limit} s of real time: "
                "a wait of its own, outside dtp.transport.blocking.sched (threading's "
                "Thread or Event, time.sleep, a real socket), holds the simulation up"
            )
            self._ended = True
            self.loop.stop()
            return
        self.step()
        if self._ready and not self._dispatching:
            self._dispatching = True
            self.loop.call_soon(self._dispatch)

    def step(self) -> None:
        """After a thread's turn or a delivery: the carriers' new bytes onto their links,
        then every wait that is over made ready (in the order the waits began)."""
        for bridge in list(self._bridges):
            bridge.pump()
        for task in list(self._waiting):
            check = task.check
            try:
                over = check is None or check()
            except (OSError, ValueError):
                over = True  # (a descriptor closed meanwhile: the thread finds out itself)
            if over:
                del self._waiting[task]
                self._make_ready(task)

    # -- threads ------------------------------------------------------------------------------

    def _started(self, thread: threading.Thread) -> _Task:
        serial = next(self._serial)
        # (a default name counts the process's threads: the run's own count, in traces)
        task = _Task(serial, re.sub(r"^Thread-\d+", f"Thread-{serial}", thread.name))
        self._all.append(task)
        return task

    def _running(self, task: _Task) -> None:
        self._tasks[threading.get_ident()] = task

    def _finished(self, task: _Task) -> None:
        task.done = True
        future = task.future
        if future is not None and not future.done() and not self.loop.is_closed():
            future.set_result(None)
        self._tasks.pop(threading.get_ident(), None)
        self._baton.release()

    def spawn(self, fn: Callable[..., Any], *args: Any, name: str = "main") -> _Task:
        """Start ``fn(*args)`` as a thread of the program (from the loop, in the
        current context: its host); its task's ``future`` is done when it ends."""
        thread = self._sim_thread(target=fn, args=args, name=name, daemon=True)
        thread.start()
        task: _Task = thread._sim_task  # type: ignore[attr-defined]
        task.future = self.loop.create_future()
        return task

    def stuck(self) -> bool:
        """Whether every thread alive waits with no timeout (and none is ready)."""
        alive = [t for t in self._all if not t.done]
        return not self._ready and all(t in self._waiting and t.timer is None for t in alive)

    def alive(self) -> list[str]:
        """The names of the program's threads that have not ended."""
        return [t.name for t in self._all if not t.done]

    def _await(self, coro: Coroutine[Any, Any, T], task: _Task) -> T:
        """Run ``coro`` on the loop (in the calling thread's context: its host) and wait
        for its result."""
        context = contextvars.copy_context()
        future = self.loop.create_task(coro, context=context)
        future.add_done_callback(lambda _: self.step())
        self._block(task, future.done, None)
        return future.result()

    def end(self) -> None:
        """End every thread still waiting (SimulationEnded raised in it), in the order
        they started, and close the carriers left."""
        self._ended = True
        self._ready.clear()
        for task in self._all:
            if task.done:
                continue
            task.ending = True
            self._waiting.pop(task, None)
            if task.timer is not None:
                task.timer.cancel()
            task.gate.release()
            if self.failure is not None:
                self._baton.acquire(timeout=1.0)  # (the thread holding the turn may not)
            else:
                self._baton.acquire()
        for bridge in list(self._bridges):
            bridge.close()
        for listener in list(self._listeners):
            listener.close()
        for ref in self._sockets:
            sock = ref()
            if sock is not None:
                sock.close()
        self._sockets.clear()
        self.timers.close()

    def _made(self, sock: S) -> S:
        self._sockets.append(weakref.ref(sock))
        return sock

    def socketpair(self) -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        if threading.get_ident() not in self._tasks:
            return a, b
        return self._made(a), self._made(b)

    # -- carriers -----------------------------------------------------------------------------

    def connect_tcp(self, address: tuple[str, int], timeout: float | None) -> socket.socket:
        task = self._tasks.get(threading.get_ident())
        network = self.network
        if task is None or not network.knows(address[0]):
            return sched.REAL.connect_tcp(address, timeout)  # type: ignore[no-any-return]
        mine, theirs = socket.socketpair()
        bridge = _Bridge(self, theirs)
        src = network.current_host()
        dst = network.resolve(address[0])

        async def reach() -> Any:
            work = network.connect(address[0], int(address[1]), lambda: bridge)
            return await (work if timeout is None else asyncio.wait_for(work, timeout))

        try:
            transport, _ = self._await(reach(), task)
        except OSError as exc:
            mine.close()
            bridge.close()
            raise connect_error(address, exc) from exc
        except BaseException:
            mine.close()
            bridge.close()
            raise
        local = transport.get_extra_info("sockname") or (src.ip, 0)
        return self._made(_carrier(mine, local, (dst.ip, int(address[1]))))

    def listen_tcp(self, address: tuple[str, int], backlog: int = 128) -> socket.socket:
        task = self._tasks.get(threading.get_ident())
        host = self.network.host_to_listen_on(address[0]) if task is not None else None
        if task is None or host is None:
            return sched.REAL.listen_tcp(address, backlog)  # type: ignore[no-any-return]
        return _SimListener.open(self, task, host, int(address[1]), backlog)


def _after(now: float) -> float:
    return math.nextafter(now, math.inf)


def _never() -> bool:
    return False


class _Bridge(asyncio.Protocol):
    """The loop's end of a carrier: what the simulated connection delivers is written to
    the program's end; what the program wrote there is sent on the connection (at each
    :meth:`BlockingScheduler.step`)."""

    def __init__(self, scheduler: BlockingScheduler, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.scheduler = scheduler
        self.sock: socket.socket | None = sock
        self.transport: asyncio.Transport | None = None
        self.inbox = bytearray()  # delivered, not yet taken by the program's end
        self.eof = False  # the peer's end came: passed on once the inbox is
        self.wrote_eof = False
        self.read_eof = False  # the program's end shut its side
        scheduler._bridges.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.inbox += data
        self.scheduler.step()

    def eof_received(self) -> bool:
        self.eof = True
        self.scheduler.step()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.transport = None
        self.scheduler.step()

    def pump(self) -> None:
        sock = self.sock
        if sock is None:
            return
        if self.inbox:
            try:
                n = sock.send(self.inbox)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self.close()
                return
            del self.inbox[:n]
        if self.eof and not self.inbox and not self.wrote_eof:
            self.wrote_eof = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        while not self.read_eof:
            try:
                data = sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            transport = self.transport
            if not data:
                # the program's end is shut (or closed: a later send fails, and closes)
                self.read_eof = True
                if transport is not None and not transport.is_closing():
                    transport.write_eof()
                break
            if transport is not None and not transport.is_closing():
                transport.write(data)
        if self.read_eof and (self.wrote_eof or self.transport is None):
            self.close()

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
        if self in self.scheduler._bridges:
            self.scheduler._bridges.remove(self)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()


class _SimSocket(socket.socket):
    """A carrier whose addresses are the simulated connection's (the socket under it is
    one end of a socket pair), and which takes TCP's options as a TCP socket would."""

    _sim_local: tuple[str, int] = ("0.0.0.0", 0)
    _sim_peer: tuple[str, int] = ("0.0.0.0", 0)

    def getsockname(self) -> Any:
        return self._sim_local

    def getpeername(self) -> Any:
        if self.fileno() < 0:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return self._sim_peer

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:
        if level == socket.IPPROTO_TCP:
            return  # (TCP_NODELAY: the simulated link has no Nagle)
        super().setsockopt(level, option, value, *rest)


def _carrier(sock: socket.socket, local: tuple[str, int], peer: tuple[str, int]) -> _SimSocket:
    carrier = _SimSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    carrier._sim_local = (str(local[0]), int(local[1]))
    carrier._sim_peer = (str(peer[0]), int(peer[1]))
    return carrier


_LISTENERS = itertools.count(1)


class _SimListener(socket.socket):
    """A server's listener on a host of the network: a Unix socket the simulation's
    connects reach (its accept gives carriers with the simulated addresses)."""

    _scheduler: BlockingScheduler
    _server: SimServer | None
    _name: tuple[str, int]
    _path: str
    _peers: collections.deque[tuple[str, int]]

    @classmethod
    def open(
        cls, scheduler: BlockingScheduler, task: _Task, host: _Host, port: int, backlog: int
    ) -> _SimListener:
        listener = cls(socket.AF_UNIX, socket.SOCK_STREAM)
        path = f"\0dtp-sim-{id(scheduler):x}-{next(_LISTENERS)}"
        listener.bind(path)
        listener.listen(max(backlog, 1))
        listener._scheduler = scheduler
        listener._path = path
        listener._peers = collections.deque()
        listener._server = None

        def arrive() -> asyncio.Protocol:
            near = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            near.setblocking(False)
            try:
                near.connect(path)
            except OSError:
                near.close()
                return _Refuse()
            bridge = _Bridge(scheduler, near)
            bridge_made = bridge.connection_made

            def made(transport: asyncio.BaseTransport) -> None:
                bridge_made(transport)
                peer = transport.get_extra_info("peername")
                listener._peers.append((str(peer[0]), int(peer[1])))
                scheduler.step()

            bridge.connection_made = made  # type: ignore[method-assign]
            return bridge

        try:
            server = scheduler._await(scheduler.network.listen(host, port, arrive), task)
        except BaseException:
            listener.close()
            raise
        listener._server = server
        listener._name = (host.ip, server.port)
        scheduler._listeners.append(listener)
        return scheduler._made(listener)

    def getsockname(self) -> Any:
        return self._name

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:
        if level == socket.IPPROTO_TCP:
            return
        super().setsockopt(level, option, value, *rest)

    def accept(self) -> tuple[socket.socket, Any]:
        fd, _ = self._accept()  # type: ignore[attr-defined]
        peer = self._peers.popleft() if self._peers else ("0.0.0.0", 0)
        carrier = _SimSocket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=fd)
        carrier._sim_local = self._name
        carrier._sim_peer = peer
        return self._scheduler._made(carrier), peer

    def close(self) -> None:
        server, self._server = getattr(self, "_server", None), None
        if server is not None:
            server.close()
        scheduler = getattr(self, "_scheduler", None)
        if scheduler is not None and self in scheduler._listeners:
            scheduler._listeners.remove(self)
        super().close()


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


# -- locks, conditions, queues, polls: waits that hand the turn over -------------------------


def _task_of(scheduler: BlockingScheduler) -> _Task:
    task = scheduler._tasks.get(threading.get_ident())
    if task is None:
        raise RuntimeError("a simulated run's lock or queue, used by a thread not of the run")
    return task


class _Lock:
    def __init__(self, scheduler: BlockingScheduler) -> None:
        self._scheduler = scheduler
        self._owner: _Task | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        task = _task_of(self._scheduler)
        if self._owner is None:
            self._owner = task
            return True
        if not blocking or timeout == 0:
            return False
        loop = self._scheduler.loop
        end = None if timeout < 0 else loop.time() + timeout
        while self._owner is not None:
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                return False
            self._scheduler._block(task, lambda: self._owner is None, left)
        self._owner = task
        return True

    def release(self) -> None:
        if self._owner is None:
            raise RuntimeError("release unlocked lock")
        self._owner = None

    def locked(self) -> bool:
        return self._owner is not None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Condition:
    def __init__(self, scheduler: BlockingScheduler, lock: _Lock | None) -> None:
        self._scheduler = scheduler
        self._lock = lock if lock is not None else _Lock(scheduler)
        self._waiters: collections.deque[list[bool]] = collections.deque()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def acquire(self, *args: Any) -> bool:
        return self._lock.acquire(*args)

    def release(self) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        task = _task_of(self._scheduler)
        mark = [False]
        self._waiters.append(mark)
        self._lock.release()
        try:
            self._scheduler._block(task, lambda: mark[0], timeout)
        finally:
            if not mark[0]:
                self._waiters.remove(mark)
            self._lock.acquire()
        return mark[0]

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        end = None if timeout is None else self._scheduler.loop.time() + timeout
        result = predicate()
        while not result:
            left = None if end is None else end - self._scheduler.loop.time()
            if left is not None and left <= 0:
                break
            self.wait(left)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        for _ in range(min(n, len(self._waiters))):
            self._waiters.popleft()[0] = True

    def notify_all(self) -> None:
        self.notify(len(self._waiters))


class _Queue:
    """queue.Queue's and queue.SimpleQueue's get and put, unbounded."""

    def __init__(self, scheduler: BlockingScheduler) -> None:
        self._scheduler = scheduler
        self._items: collections.deque[Any] = collections.deque()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self._items.append(item)

    put_nowait = put

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not self._items and block and timeout != 0:
            task = _task_of(self._scheduler)
            loop = self._scheduler.loop
            end = None if timeout is None else loop.time() + timeout
            while not self._items:
                left = None if end is None else end - loop.time()
                if left is not None and left <= 0:
                    break
                self._scheduler._block(task, lambda: bool(self._items), left)
        if not self._items:
            raise queue.Empty
        return self._items.popleft()

    def get_nowait(self) -> Any:
        return self.get(False)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class _Poll:
    """select.poll, whose waits hand the turn over."""

    def __init__(self, scheduler: BlockingScheduler) -> None:
        self._scheduler = scheduler
        self._real = select.poll()

    def register(self, fd: Any, eventmask: int = select.POLLIN | select.POLLOUT) -> None:
        self._real.register(fd, eventmask)

    def modify(self, fd: Any, eventmask: int) -> None:
        self._real.modify(fd, eventmask)

    def unregister(self, fd: Any) -> None:
        self._real.unregister(fd)

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        task = self._scheduler._tasks.get(threading.get_ident())
        if task is None:
            return self._real.poll(timeout)
        ready = self._real.poll(0)
        if ready or timeout == 0:
            return ready
        wait = None if timeout is None or timeout < 0 else timeout / 1000.0
        self._scheduler._block(task, lambda: bool(self._real.poll(0)), wait)
        return self._real.poll(0)


def _thread_class(scheduler: BlockingScheduler) -> type[threading.Thread]:
    class SimThread(threading.Thread):
        """A thread of the simulated program: it runs only in its turns."""

        _sim_task: _Task

        def start(self) -> None:
            task = self._sim_task = scheduler._started(self)
            self._sim_context = contextvars.copy_context()  # (its host, as a task's)
            super().start()
            scheduler._make_ready(task)

        def run(self) -> None:
            task = self._sim_task
            task.gate.acquire()
            scheduler._running(task)
            try:
                if not task.ending and self._target is not None:  # type: ignore[attr-defined]
                    task.result = self._sim_context.run(
                        self._target,  # type: ignore[attr-defined]
                        *self._args,  # type: ignore[attr-defined]
                        **self._kwargs,  # type: ignore[attr-defined]
                    )
            except SimulationEnded:
                pass
            except BaseException as exc:
                task.error = exc
                if task.future is None:  # (not the program's main: threading reports it)
                    raise
            finally:
                scheduler._finished(task)

        def join(self, timeout: float | None = None) -> None:
            waiter = scheduler._tasks.get(threading.get_ident())
            if waiter is None:
                super().join(timeout)
                return
            task = self._sim_task
            if not task.done:
                scheduler._block(waiter, lambda: task.done, timeout)

    return SimThread
