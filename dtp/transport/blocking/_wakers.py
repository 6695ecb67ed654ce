"""The wake-up descriptor of a blocking connection: how a thread makes the one waiting on
the carrier (in ``poll``, or in the C lane's ``dtp_wait_readable``) look at its
conditions again (:class:`dtp.transport.blocking._engine.Engine` holds one)."""

from __future__ import annotations

import contextlib
import os
import socket as _socket

from dtp.transport.blocking import sched

# On Linux an ``eventfd``: one descriptor, about 2.5 us to make and close, where a socket
# pair took two and about 12 us (docs/benchmark-history.md, "The transport's own connect
# and accept paths"); a simulated scheduler (``sched.install``) gets its own
# ``socketpair``.
_EVENTFD = hasattr(os, "eventfd")


class Waker:
    """The interface: ``fileno`` (-1 once closed), ``wake``, ``take``, ``close``."""

    __slots__ = ()

    def fileno(self) -> int:
        raise NotImplementedError

    def wake(self) -> None:
        """Make the descriptor readable (from any thread; after close, nothing)."""
        raise NotImplementedError

    def take(self) -> bool:
        """Make it quiet again: the wakes so far are seen. Whether there was one."""
        raise NotImplementedError

    def close(self) -> None:
        """Close it (once; again, nothing), waking a thread that waits on it."""
        raise NotImplementedError


class _EventWaker(Waker):
    __slots__ = ("_fds",)

    def __init__(self) -> None:
        # (a list taken with one pop, a single step under the GIL: of two threads
        # closing at once -- a release and a collected socket's close -- one closes)
        self._fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)]

    def fileno(self) -> int:
        fds = self._fds
        return fds[0] if fds else -1

    def wake(self) -> None:
        fds = self._fds
        if fds:
            with contextlib.suppress(OSError, IndexError):
                os.eventfd_write(fds[0], 1)

    def take(self) -> bool:
        fds = self._fds
        try:
            return bool(os.eventfd_read(fds[0]))
        except (OSError, IndexError):  # (BlockingIOError: no wake; IndexError: closed)
            return False

    def close(self) -> None:
        try:
            fd = self._fds.pop()
        except IndexError:
            return
        # a wake first: a thread polling it holds the file open past our close and
        # would sleep on (the pair's close woke it: its other end's hang-up)
        try:  # noqa: SIM105 (cheaper than contextlib.suppress, per connection)
            os.eventfd_write(fd, 1)
        except OSError:
            pass
        try:  # noqa: SIM105 (cheaper than contextlib.suppress, per connection)
            os.close(fd)
        except OSError:
            pass


class _PairWaker(Waker):
    __slots__ = ("_r", "_w")

    def __init__(self) -> None:
        self._r, self._w = sched.socketpair()
        try:
            self._r.setblocking(False)
            self._w.setblocking(False)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self._r.fileno()

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._w.send(b"\0")

    def take(self) -> bool:
        try:
            return bool(self._r.recv(4096))
        except OSError:
            return False

    def close(self) -> None:
        for s in (self._r, self._w):
            with contextlib.suppress(OSError):
                s.close()


def make_waker() -> Waker:
    """A new wake-up descriptor: an eventfd under the operating system's scheduler,
    else the installed scheduler's socket pair. OSError when out of descriptors."""
    if _EVENTFD and sched.socketpair is _socket.socketpair:
        return _EventWaker()
    return _PairWaker()
