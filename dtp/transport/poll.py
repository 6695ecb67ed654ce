"""Waiting for sockets to become readable or writable, for any descriptor number.

``select.select`` refuses descriptors of 1024 and above (``FD_SETSIZE``) with a
ValueError, so a process holding a thousand sockets (a server with many clients, a
daemon forwarding many tunnels) could open no further DTP connection. ``poll(2)`` has no
such limit, and for the one or two descriptors waited on here it is also cheaper.
"""

from __future__ import annotations

import errno
import select
from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["wait_ready"]

_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT
# select() reports a descriptor with an error or a hang-up as ready for both: the next
# read or write then tells what happened
_FAILED = select.POLLERR | select.POLLHUP


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


T = TypeVar("T", bound=_HasFileno)


def wait_ready(
    readers: Sequence[T], writers: Sequence[T], timeout: float | None
) -> tuple[list[T], list[T]]:
    """As ``select.select(readers, writers, [], timeout)[:2]``: the objects ready to be
    read and written within ``timeout`` seconds (None: no limit), for any descriptor
    number. A closed object (fileno -1) is a ValueError and a descriptor that is not
    open an OSError (EBADF), as with select."""
    poller = select.poll()
    by_fd: dict[int, tuple[T | None, T | None]] = {}
    for obj in readers:
        fd = _descriptor(obj)
        by_fd[fd] = (obj, by_fd.get(fd, (None, None))[1])
    for obj in writers:
        fd = _descriptor(obj)
        by_fd[fd] = (by_fd.get(fd, (None, None))[0], obj)
    for fd, (reader, writer) in by_fd.items():
        poller.register(
            fd, (_READ if reader is not None else 0) | (_WRITE if writer is not None else 0)
        )
    events = poller.poll(None if timeout is None else max(0.0, timeout * 1000.0))
    ready_r: list[T] = []
    ready_w: list[T] = []
    for fd, mask in events:
        if mask & select.POLLNVAL:
            raise OSError(errno.EBADF, f"descriptor {fd} is not open")
        reader, writer = by_fd[fd]
        if reader is not None and mask & (_READ | _FAILED):
            ready_r.append(reader)
        if writer is not None and mask & (_WRITE | _FAILED):
            ready_w.append(writer)
    return ready_r, ready_w


def _descriptor(obj: _HasFileno) -> int:
    fd = obj.fileno()
    if fd < 0:
        raise ValueError("file descriptor cannot be a negative integer")
    return fd
