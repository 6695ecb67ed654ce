"""Giving a server's freed heap back to the system after connection churn.

Each connection allocates and frees a few hundred kilobytes (its Session, the carrier's
read buffers, Noise state) among small objects that outlive it (the replay guard's
keys, the caches of keys made ahead). glibc's malloc keeps the freed pages between
those survivors for the next allocations rather than returning them: after 80,000
connections (at most ~93 open at once) an asyncio server held 420 MiB resident with
5-6 MiB in use, where an asyncio + TLS server held 45 MiB. ``malloc_trim(0)`` returns
the free pages, in the middle of the heap too (``MADV_DONTNEED``), and -- after a
collection of the reference cycles the connections left -- brought it back to 50 MiB.

:class:`HeapRelease` decides when, sans I/O: at a quiet moment -- no new connection for
:data:`QUIET` seconds after at least :data:`MIN_CHURN` of them, and once more
:data:`AGAIN` seconds later -- and, under steady
churn that leaves no quiet moment, every :data:`CHURN` connections at most every
:data:`INTERVAL` seconds. A trim walks the heap holding malloc's lock (a few ms for a
few hundred MiB; the collection as long), so it is not done per connection. Both servers drive it
(bench/compare.py ``churn_memory``; tests/transport/test_memory_churn.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
import threading
from collections.abc import Callable

__all__ = [
    "AGAIN",
    "CHURN",
    "INTERVAL",
    "MIN_CHURN",
    "QUIET",
    "HeapRelease",
    "release_free_heap",
]


QUIET = 1.0
"""Seconds without a new connection that make a quiet moment."""

MIN_CHURN = 64
"""Connections since the last trim that make a quiet moment worth one."""

CHURN = 8192
"""Connections after which, quiet moment or not, the heap is trimmed..."""

INTERVAL = 10.0
"""... but no more often than this (seconds)."""

AGAIN = 3.0
"""Seconds after a quiet moment's trim when the heap is trimmed once more."""


def _load_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    result: Callable[[int], int] = trim
    return result


_TRIM = _load_trim()


def release_free_heap() -> bool:
    """Collect the garbage reference cycles, then return the heap's free pages to the
    system (``malloc_trim(0)``): whether any page was released (False too where the C
    library has no such call). The collection first: a connection's objects refer to
    each other (protocol, session, streams), and freed only by the cyclic collector,
    whose oldest generation runs rarely, they would hold a third of the heap that stays
    resident after churn (20,000 objects after 5,000 connections)."""
    gc.collect()
    if _TRIM is None:
        return False
    return bool(_TRIM(0))


class HeapRelease:
    """When a server trims its heap: told of each new connection (:meth:`connected`),
    it says at each look (:meth:`due`) whether a trim is due, and when to look next
    (:meth:`next_look`). Times are seconds on any monotonic clock, passed in.
    Thread-safe (the blocking server's accepting thread counts, its admission thread
    looks)."""

    def __init__(
        self,
        quiet: float = QUIET,
        min_churn: int = MIN_CHURN,
        churn: int = CHURN,
        interval: float = INTERVAL,
    ) -> None:
        self.quiet = quiet
        self.min_churn = min_churn
        self.churn = churn
        self.interval = interval
        self._since = 0  # connections since the last trim
        self._last_connect = float("-inf")
        self._last_trim = float("-inf")
        # after a quiet moment's trim, one more (:data:`AGAIN` later): the connections
        # still closing at the first -- a linger, a handler's last steps, the threads
        # that served them -- free their memory after it
        self._again: float | None = None
        self._lock = threading.Lock()
        #: Trims done so far
        self.trims = 0

    def connected(self, now: float) -> None:
        """A new connection arrived at ``now``."""
        with self._lock:
            self._since += 1
            self._last_connect = now
            self._again = None  # (the next quiet moment trims again)

    def due(self, now: float) -> bool:
        """Whether to trim now; when True, the trim is counted as done (the caller
        calls :func:`release_free_heap`)."""
        with self._lock:
            quiet = self._since >= self.min_churn and now - self._last_connect >= self.quiet
            busy = self._since >= self.churn and now - self._last_trim >= self.interval
            again = self._again is not None and now >= self._again
            if not (quiet or busy or again):
                return False
            self._again = now + AGAIN if quiet else None
            self._since = 0
            self._last_trim = now
            self.trims += 1
            return True

    def next_look(self, now: float) -> float | None:
        """When :meth:`due` may say yes next (None: not before more connections)."""
        with self._lock:
            looks = [] if self._again is None else [self._again]
            if self._since >= self.min_churn:
                looks.append(self._last_connect + self.quiet)
            if self._since >= self.churn:
                looks.append(self._last_trim + self.interval)
            return max(now, min(looks)) if looks else None
