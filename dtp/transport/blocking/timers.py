"""The blocking transport's timer thread: keepalives, idle timeouts and the closes no
caller waits for, for every engine of the process (one thread, started on demand)."""

from __future__ import annotations

import atexit
import contextlib
import heapq
import logging
import os
import select
import socket as _socket
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from dtp.protocol.connection import CloseCode
from dtp.transport.blocking import LINGER, sched

if TYPE_CHECKING:
    from dtp.protocol.connection import Connection
    from dtp.transport.hooks import ConnectionHook
    from dtp.transport.session import Session


class TimedEngine(Protocol):
    """What the timer thread reads and calls of a connection's engine
    (:class:`~dtp.transport.blocking.engine.Engine`, which imports this module)."""

    _fd: int
    lock: threading.Lock
    closed: bool
    carrier_closed: bool
    pumping: bool
    name: str
    conn: Connection
    session: Session
    hook: ConnectionHook | None
    out: list[memoryview]

    def flush(self) -> None: ...
    def poll(self) -> None: ...
    def queued_output(self) -> bool: ...
    def _release(self, closing: bool = False) -> None: ...


class Closable(Protocol):
    """A stream's socket, as the timer thread closes it (``DTPSocket``, which imports
    this module): its close, and the files it may have left open at exit."""

    _close_deferred: bool
    _closed: bool
    _io_refs: int

    def close(self) -> None: ...
    def _flush_files(self) -> None: ...


logger = logging.getLogger(__name__)


class TimerService:
    """Keepalives, idle timeouts and queued output for connections nobody drives now.

    One thread per process serves every engine (a thread per connection would cost a
    thread start and exit per connect). It sleeps until the earliest engine is due (at
    most a second, as the engine's timers may move while callers drive it), and then
    does one non-blocking pass on each due engine whose lock is free and which no
    caller is busy with. Engines are held weakly and dropped once closed.

    A write that returns with bytes still queued -- behind the peer's flow control, or
    a full carrier -- :meth:`watch`-es its engine: the thread then also waits on that
    carrier, so the peer's credit (or the room) lets the bytes out when it arrives,
    not at the next tick, while the application does something else.
    """

    MAX_WAIT = 1.0
    MIN_WAIT = 0.005

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, weakref.ref[TimedEngine]]] = []
        self._seq = 0
        self._thread: threading.Thread | None = None
        # made with the service (at import), not with the thread: a process that forks
        # makes its own when its first connection starts a thread there
        self._wake_fds: tuple[int, int] | None = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pid = os.getpid()
        # engines with output queued, by id: (the engine, when to look next, the back-off
        # after finding a caller busy with it -- the caller drives its I/O meanwhile, and
        # the number of the last watch() call, so that a pass that found nothing queued
        # does not forget an engine a write watched meanwhile)
        self._watched: dict[int, tuple[weakref.ref[TimedEngine], float, float, int]] = {}
        self._watches = 0
        self._closing: deque[Closable] = deque()  # close_later()'s sockets
        # release hooks of engines whose first socket was garbage-collected unclosed
        # (DTPSocket.__del__, which takes no lock: release_later)
        self._releases: deque[Callable[[], None]] = deque()
        # ... closing in threads of their own, with their lingers
        self._closers: dict[threading.Thread, float] = {}
        # closed with a file still open: closed at exit if no file's close did it
        self._deferred: weakref.WeakSet[Closable] = weakref.WeakSet()
        # carriers abandoned with the peer still reading (Engine._drain_detached) or
        # still sending (Engine._drain_closing): their output written, then half-closed,
        # read and discarded until the peer closes its side or the deadline, then closed
        self._draining: dict[int, tuple[_socket.socket, float, list[memoryview]]] = {}
        self._drain_buf = bytearray(64 * 1024)  # (the thread's alone)

    def add(self, engine: TimedEngine) -> None:
        with self._lock:
            head = self._heap[0][0] if self._heap else None
            self._push(engine, sched.monotonic())
            # (a thread just started needs no wake; one asleep until the old head is
            # woken only for an earlier one: every connect would wake it, on both sides)
            if self._started() and (head is None or self._heap[0][0] < head):
                self._wake()

    def _started(self) -> bool:
        """Start the thread unless it runs (lock held): whether it ran already."""
        if self._thread is not None and self._thread.is_alive():
            return True
        if self._wake_fds is None or self._pid != os.getpid():
            # (a forked child: the pipe it inherited is its parent's thread's too)
            self._wake_fds = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._pid = os.getpid()
        self._thread = sched.Thread(target=self._run, name="dtp-timers", daemon=True)
        self._thread.start()
        return False

    def close(self) -> None:
        """Close the wake pipe of a service whose thread has ended (a simulated run's:
        dtp.testing.network.blocking); the process's own service is never closed."""
        fds, self._wake_fds = self._wake_fds, None
        if fds is not None:
            for fd in fds:
                os.close(fd)

    def watch(self, engine: TimedEngine) -> None:
        """Wait on ``engine``'s carrier from now on, until its queued output is out."""
        key = id(engine)
        with self._lock:
            self._watches += 1
            entry = self._watched.get(key)
            if entry is not None and entry[0]() is engine:
                self._watched[key] = (entry[0], 0.0, 0.0, self._watches)
                if entry[1] == 0.0:
                    return  # the thread waits on it already
            else:
                self._watched[key] = (weakref.ref(engine), 0.0, 0.0, self._watches)
            self._wake()

    def close_later(self, sock: Closable) -> None:
        """Run ``sock.close()`` in a thread of its own, soon. Safe in a finalizer: a
        deque append and a pipe write (the timer thread starts the closing thread).
        At interpreter exit, :meth:`finish_closes` waits for these closes a while."""
        self._closing.append(sock)
        self._wake()

    def drain(
        self, carrier: _socket.socket, patience: float, out: list[memoryview] | None = None
    ) -> None:
        """Write ``out`` (what its engine had queued) to the non-blocking ``carrier``,
        half-close it, and read (discarding) from it until its peer closes its side, an
        error, or ``patience`` seconds; then close it."""
        pending = out or []
        if not pending and not self._half_close(carrier):
            return
        with self._lock:
            self._draining[carrier.fileno()] = (carrier, sched.monotonic() + patience, pending)
            self._started()  # (a refused client's engine never started it)
        self._wake()

    @staticmethod
    def _half_close(carrier: _socket.socket) -> bool:
        """Shut ``carrier``'s sending side (closed when that fails: False)."""
        try:
            carrier.shutdown(_socket.SHUT_WR)
        except OSError:
            carrier.close()
            return False
        return True

    def _drain_ready(self, fd: int) -> None:
        with self._lock:
            entry = self._draining.get(fd)
        if entry is None:
            return
        carrier, _, pending = entry
        try:
            while pending:
                n = carrier.send(pending[0])
                if n < len(pending[0]):
                    pending[0] = pending[0][n:]
                    break
                pending.pop(0)
                if not pending and not self._half_close(carrier):
                    raise OSError  # (closed: dropped below)
            while carrier.recv_into(self._drain_buf):
                pass
        except (BlockingIOError, InterruptedError):
            return  # all written and read for now
        except OSError:
            pass
        with self._lock:
            self._draining.pop(fd, None)
        carrier.close()  # the peer closed its side too, or the carrier failed

    def release_later(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` in the timer thread, soon. Safe from a finalizer: an append to a
        deque and a write to the wake pipe, no lock."""
        self._releases.append(hook)
        self._wake()

    def _run_releases(self) -> None:
        while True:
            try:
                hook = self._releases.popleft()
            except IndexError:
                return
            self._guarded(hook)

    def _start_closes(self) -> None:
        """Start a closing thread for each socket close_later() queued."""
        while True:
            # taken off the queue and started under the lock: finish_closes (at exit, in
            # another thread) sees a close either queued or running. Taken off outside
            # it, the exit could find neither and not wait; a closer it saw before it
            # ran made its join() raise RuntimeError. Either way the close was cut off
            # mid-linger, and the peer read a reset
            with self._lock:
                try:
                    sock = self._closing.popleft()
                except IndexError:  # (finish_closes may have taken the last one)
                    return
                thread = sched.Thread(target=self._close, args=(sock,), name="dtp-close")
                thread.daemon = True
                self._closers[thread] = _linger_of(sock)
                try:
                    thread.start()
                    started = True
                except RuntimeError:  # no thread to be had
                    self._closers.pop(thread, None)
                    started = False
            if not started:
                self._guarded(sock.close)  # here, then: late but closed
            del sock, thread

    def _close(self, sock: Closable) -> None:
        try:
            self._guarded(sock.close)
        finally:
            with self._lock:
                self._closers.pop(threading.current_thread(), None)

    def defer_close(self, sock: Closable) -> None:
        """``sock.close()`` was called with a file of it still open: the exit closes it
        if no file's close did by then (:meth:`finish_closes`)."""
        with self._lock:
            self._deferred.add(sock)

    def finish_closes(self, timeout: float | None = None) -> None:
        """Wait for the closes close_later() queued and the carriers drained in the
        background (run at interpreter exit), up to ``timeout`` seconds; by default
        up to the longest linger among the closes, and a second. Their threads are
        daemons, which the interpreter stops at exit wherever they are: a close cut off
        while it lingered sent no CLOSE, and the carrier's kernel socket, closed with
        unread bytes, reset the connection -- the peer lost what it had not read yet.
        A socket closed while a file of it was still open is closed now, if none of its
        files' closes did it: a file left open to the end is closed by its finalizer
        during the interpreter's teardown, after this, and its close never ran."""
        if self._pid != os.getpid():
            return  # (a forked child: the threads were its parent's)
        with self._lock:
            # (files still open: once the last one closed, its close was queued already)
            left_open = [
                s for s in self._deferred if s._close_deferred and not s._closed and s._io_refs
            ]
            self._deferred.clear()
        for sock in left_open:
            sock._flush_files()
            sock._io_refs = 0  # (its files are closed by the teardown, after this)
            self._closing.append(sock)
        self._start_closes()
        start = sched.monotonic()
        while True:
            with self._lock:
                threads = list(self._closers.items())
                draining = bool(self._draining)
            if not threads and not draining:
                return
            if timeout is None:
                limit = max((linger for _, linger in threads), default=LINGER) + 1.0
            else:
                limit = timeout
            left = start + limit - sched.monotonic()
            if left <= 0:
                return
            if not threads:
                # a carrier the timer thread drains for a reset stream (_drain_detached):
                # cut off, the peer lost what it had not read, the reset and the CLOSE
                sched.sleep(min(left, 0.02))
                continue
            thread = threads[0][0]
            thread.join(left)
            if not thread.is_alive():
                with self._lock:
                    self._closers.pop(thread, None)

    def _wake(self) -> None:
        if self._wake_fds is not None:
            with contextlib.suppress(OSError):  # (a full pipe wakes the thread anyway)
                os.write(self._wake_fds[1], b"\0")

    def _push(self, engine: TimedEngine, now: float, min_wait: float = 0.0) -> None:
        timer = engine.conn.get_timer()
        latest = now + (self.MAX_WAIT if engine.hook is None else engine.hook.max_timer_wait)
        due = latest if timer is None else min(latest, timer)
        due = max(due, now + min_wait)
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, weakref.ref(engine)))

    def _run(self) -> None:
        assert self._wake_fds is not None
        wake_fd = self._wake_fds[0]
        while True:
            if self._closing:
                self._start_closes()
            if self._releases:
                self._run_releases()
            due: weakref.ref[TimedEngine] | None = None
            until: float | None = None
            watched: dict[int, TimedEngine] = {}
            poller = sched.poll()
            poller.register(wake_fd, select.POLLIN)
            with self._lock:
                now = sched.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    _, _, due = heapq.heappop(self._heap)
                else:
                    until = self._heap[0][0] if self._heap else None
                    for fd, (carrier, deadline, pending) in list(self._draining.items()):
                        if deadline <= now:
                            del self._draining[fd]
                            carrier.close()
                        else:
                            until = deadline if until is None else min(until, deadline)
                            poller.register(fd, select.POLLIN | (select.POLLOUT if pending else 0))
                    for key, (ref, after, _, _) in list(self._watched.items()):
                        engine = ref()
                        if engine is None or engine.closed or engine.carrier_closed:
                            del self._watched[key]
                        elif after > now:
                            until = after if until is None else min(until, after)
                        else:
                            watched[engine._fd] = engine
                            out = select.POLLOUT if engine.out else 0
                            poller.register(engine._fd, select.POLLIN | out)
            if due is not None:
                self._guarded(self._tick, due)
                continue
            wait = None if until is None else max(0.0, until - now) * 1000.0
            for fd, _ in poller.poll(wait):
                if fd == wake_fd:
                    with contextlib.suppress(OSError):
                        os.read(wake_fd, 4096)
                elif fd in watched:
                    self._guarded(self._serve, watched[fd])
                elif fd in self._draining:
                    self._guarded(self._drain_ready, fd)
            del watched

    @staticmethod
    def _fail(engine: TimedEngine, exc: BaseException) -> None:
        """A pass on ``engine`` raised ``exc`` (its lock held): abort the connection.

        Left as it is, it would live on half-alive: never scheduled again, so none of its
        timers would run (keepalive, idle timeout, retransmission), a peer that vanished
        would go unnoticed and the carrier never be released. Aborted, the peer reads
        INTERNAL_ERROR (as when a server's handshake code raises) and the application's
        calls raise ConnectionClosed, ``exc`` its cause. ``exc`` may be any exception,
        SystemExit too (a push callback's sys.exit() runs here): what escapes the pass
        ends the thread, and every other connection's timers with it."""
        logger.error(
            "dtp timer thread: a pass on %s raised: aborting the connection",
            engine.name,
            exc_info=exc,
        )

        def close() -> None:
            # Engine.abort's steps: abort() itself takes the lock, which is not reentrant
            engine.conn.close(CloseCode.INTERNAL_ERROR, "internal error")
            engine.flush()

        try:
            engine.session.end_after_fault(exc, close, engine.name)
        finally:
            engine._release()

    @staticmethod
    def _guarded(fn: Callable[..., object], *args: Any) -> None:
        """``fn(*args)``, logging what it raises: one connection's failure must not end
        the thread that keeps every other connection's timers."""
        try:
            fn(*args)
        except Exception:
            logger.exception("dtp timer thread: %s failed", getattr(fn, "__name__", fn))

    def _tick(self, ref: weakref.ref[TimedEngine]) -> None:
        """A due engine: one non-blocking pass, then its next turn."""
        engine = ref()
        if engine is None or engine.closed:
            return
        queued = False
        if engine.lock.acquire(blocking=False):
            try:
                if not engine.closed:
                    engine.poll()
                    queued = engine.queued_output()
            except BaseException as exc:
                self._fail(engine, exc)
            finally:
                engine.lock.release()
        if not engine.closed:
            with self._lock:
                # a due timer that a busy caller is about to handle: look again
                # shortly rather than spin
                self._push(engine, sched.monotonic(), self.MIN_WAIT)
            if queued:
                self.watch(engine)

    def _serve(self, engine: TimedEngine) -> None:
        """A watched engine's carrier is ready: read and write what it allows."""
        key = id(engine)
        with self._lock:
            entry = self._watched.get(key)
            if entry is None or entry[0]() is not engine:
                return
            watches = entry[3]
        busy = True
        queued = False
        if engine.lock.acquire(blocking=False):
            try:
                if not (engine.closed or engine.pumping):
                    busy = False
                    engine.poll()
                    queued = engine.queued_output()
            except BaseException as exc:
                # ended (closed: no longer watched): left watched, its carrier would stay
                # ready, and the thread would come straight back to a pass that raises
                # again, spinning (and logging each time) for as long as the connection lives
                self._fail(engine, exc)
            finally:
                engine.lock.release()
        with self._lock:
            entry = self._watched.get(key)
            if entry is None or entry[0]() is not engine or entry[3] != watches:
                return  # forgotten meanwhile, or watched again by a write: look again
            if busy:
                # a caller drives it now; look again later, less often the longer it is
                # busy (the caller's own write re-arms this when it leaves)
                backoff = min(self.MAX_WAIT, max(self.MIN_WAIT, 2 * entry[2]))
                self._watched[key] = (entry[0], sched.monotonic() + backoff, backoff, watches)
            elif not queued or engine.closed or engine.carrier_closed:
                del self._watched[key]


TIMERS = TimerService()
sched.set_default_timers(TIMERS)  # (the one engines use unless a simulation's is installed)
# closes queued by files' finalizers, finished before the interpreter stops their threads
atexit.register(TIMERS.finish_closes)


def _linger_of(sock: object) -> float:
    """How long ``sock``'s close may linger (LINGER when it is not a DTP socket)."""
    engine = getattr(sock, "_engine", None)
    linger = getattr(engine, "linger", LINGER)
    return linger if isinstance(linger, float) else LINGER
