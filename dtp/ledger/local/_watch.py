"""A ledger file's commits, waited for rather than polled: :class:`WalWatch`, Linux's
inotify on the file's write-ahead log (every commit of a WAL-mode SQLite file writes
it, whichever process commits), reached through libc by ctypes. Elsewhere there is no
watch, and a waiter polls on its timer as it would without one."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import struct
import sys
from collections.abc import Callable
from typing import Final

_IN_MODIFY: Final = 0x2
_IN_IGNORED: Final = 0x8000  # (the watch is gone: its file removed, or the fd closed)
_EVENT: Final = struct.Struct("iIII")  # struct inotify_event without its name


def _load_inotify() -> tuple[Callable[[int], int], Callable[[int, bytes, int], int]] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    init.argtypes = [ctypes.c_int]
    init.restype = ctypes.c_int
    add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    add.restype = ctypes.c_int
    return init, add


_INOTIFY = _load_inotify()


class WalWatch:
    """One ledger file's WAL, watched by a descriptor of its own: :meth:`wait` returns
    as soon as any process wrote the WAL (a commit, or a checkpoint restarting it) since
    the last :meth:`wait` or :meth:`drain`. A wake-up says the file may have changed,
    not that it did: the waiter still reads its change marker. Thread-safe, but two
    threads waiting at once share the events: one may take an event the other then
    waits out its timeout for."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        #: False once the watch is gone (the WAL removed, as when the file's last
        #: connection closes): a waiter falls back to its timer, and the ledger makes a
        #: new watch for its next waiter.
        self.live = True

    @classmethod
    def of(cls, wal_path: str) -> WalWatch | None:
        """A watch of ``wal_path`` (the ledger file's path + ``-wal``), or None where
        inotify is not available or the file cannot be watched (not there yet, out of
        inotify instances): the caller polls instead."""
        if _INOTIFY is None:
            return None
        init, add = _INOTIFY
        fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return None
        if add(fd, os.fsencode(wal_path), _IN_MODIFY) < 0:
            os.close(fd)
            return None
        return cls(fd)

    def drain(self) -> bool:
        """Forget the events so far: whether there were any (or the watch is closed)."""
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return False
        except OSError:  # (closed meanwhile)
            self.live = False
            return True
        offset = 0
        while offset + _EVENT.size <= len(data):
            _wd, mask, _cookie, size = _EVENT.unpack_from(data, offset)
            if mask & _IN_IGNORED:
                self.live = False
            offset += _EVENT.size + size
        if len(data) == 4096:
            self.drain()  # (more than one read's worth queued)
        return True

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` (rounded up to whole milliseconds) for a write of the
        WAL: whether one came (then forgotten, as :meth:`drain`)."""
        if not self.live:
            return False
        poller = select.poll()
        try:
            poller.register(self._fd, select.POLLIN)
            ready = poller.poll(seconds * 1000.0)
        except (OSError, ValueError):  # (closed meanwhile)
            self.live = False
            return False
        return bool(ready) and self.drain()

    def close(self) -> None:
        self.live = False
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        # a ledger dropped unclosed: its inotify instance goes with it (they are few,
        # 128 a user by default, and shared by every process of the user)
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
