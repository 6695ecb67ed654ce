"""How a graph's changes reach its SQLite file (docs/graph.md, "Persistence"): buffered,
flushed when the buffer is full or by a thread once writes stop, the log compacted when it
has grown, the clock reserved ahead of the states writes issue, and what is buffered
written even by a graph that is dropped without close()."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from dtp.graph._clock import HybridClock
from dtp.graph._persist import GraphStorage, GraphStorageError, IdleFlusher

_CLOCK_RESERVE = 250.0  # ms of states persisted ahead of the clock (see WriteBack.reserve_clock)
_COMPACT_RETRY = 60.0  # s before a compaction that failed is tried again (its flush was done)

# (logs as dtp.graph._store, the module users know the graph by)
logger = logging.getLogger("dtp.graph._store")


class WriteBack:
    """The write-back of one graph's changes to its :class:`GraphStorage`.

    Every method but the flush thread's runs with the graph's lock held; the graph is
    given to none of them (the finalizer that flushes an unclosed graph must not hold it).
    """

    def __init__(
        self,
        storage: GraphStorage,
        lock: threading.RLock,
        clock: HybridClock,
        table: Any,
        flush_interval: float,
        clock_reserved: float,
    ) -> None:
        self.storage = storage
        self._lock = lock
        self._clock = clock
        self._table = table  # (compaction writes its export)
        self._flush_interval = flush_interval
        self._flusher: IdleFlusher | None = None
        self._compact_after = 0.0  # (monotonic) no compaction before then: one failed
        self._unclosed: weakref.finalize[..., WriteBack] | None = None
        self.clock_reserved = clock_reserved
        """States up to this one may be issued after a restart (see reserve_clock)."""
        self.closed = False

    def append(self, changed: bytes) -> None:
        """Buffer a merge's changed batch: flushed at once when the buffer is full, else
        by the flush thread once writes stop (one call per merge: the thread is armed
        here, not in a call of its own)."""
        try:
            if self.storage.append(changed):
                self.flush_locked()
                return
        except GraphStorageError as exc:
            # the change is in the table already: the view, the sync sessions and
            # the subscribers must still hear of it (a raise here left the summaries
            # and get() without it). The batch stays buffered; the flush is retried.
            logger.warning("graph: %s; the changes stay buffered and are retried", exc)
        flusher = self._flusher
        if flusher is None:
            flusher = self._start_flusher()
        flusher.arm()

    def reserve_clock(self, state: float) -> None:
        """Persist, before ``state`` leaves put(), that states up to a little past it
        may be issued.

        The state goes out at once -- returned, forwarded to sync peers -- while its
        batch and the clock reach the file only with the next flush. After a crash in
        between, a clock restarted from the last flushed state, with the wall clock
        behind, would give the next write of that field a lower state than the lost one
        a peer still holds, so the peer's older value would come back and win over the
        new one everywhere. Reserving 250 ms ahead costs one small SQLite write per 250 ms of
        states, not one per write.
        """
        reserved = state + _CLOCK_RESERVE
        try:
            self.storage.reserve_clock(reserved)
        except GraphStorageError as exc:
            # the write still takes effect (as when a flush fails); not retried per put
            logger.warning("graph: %s; the clock is persisted with the next flush", exc)
        self.clock_reserved = reserved

    def _start_flusher(self) -> IdleFlusher:
        """The thread that makes sure what is buffered reaches disk even if no later
        write comes. It starts with the first buffered write, so read-only graphs have
        none."""
        flusher = self._flusher = IdleFlusher(
            weakref.WeakMethod(self._flush_idle), self._flush_interval
        )
        self._unclosed = weakref.finalize(
            self, _flush_unclosed, self._lock, self.storage, self._clock, flusher
        )
        return flusher

    def _flush_idle(self) -> None:
        with self._lock:
            if not self.closed:
                self.flush_locked()

    def flush_locked(self) -> None:
        """Write what is buffered, and compact the log when it has grown (see
        :meth:`Graph.flush <dtp.graph._store.Graph.flush>`)."""
        storage = self.storage
        storage.flush(self._clock.last)
        if storage.should_compact() and time.monotonic() >= self._compact_after:
            try:
                storage.compact(self._table.export(), self._clock.last)
            except GraphStorageError as exc:
                # the flush is done: every change is on disk, in the log. A compaction
                # only rewrites it smaller, and one that fails (a full disk: it writes
                # the whole table once more) rolls back whole. Raised, it would fail the
                # flush -- and close(), which would then leave the graph open, for good
                # while the disk stays full -- and each later flush export the table again
                self._compact_after = time.monotonic() + _COMPACT_RETRY
                logger.warning(
                    "graph: compacting the log failed (%s); the log is kept as it is, "
                    "and compacted again in %.0f s at the earliest",
                    exc,
                    _COMPACT_RETRY,
                )

    def close(self) -> IdleFlusher | None:
        """Flush and close the file; returns the flush thread, to be stopped once the
        lock is released. A failed flush (GraphStorageError) leaves everything open."""
        self.flush_locked()
        self.storage.close()
        self.closed = True
        flusher, self._flusher = self._flusher, None
        if self._unclosed is not None:
            self._unclosed.detach()
            self._unclosed = None
        return flusher


def _flush_unclosed(
    lock: threading.RLock, storage: GraphStorage, clock: HybridClock, flusher: IdleFlusher
) -> None:
    """A graph collected, or still open at interpreter exit, without close(): write what
    is buffered (the flush thread covers a crash, but a clean exit would otherwise lose
    the last interval) and stop its thread. Holds no reference to the graph itself."""
    flusher.close(join=False)  # it may be the thread dropping the graph's last reference
    # at exit a daemon thread may hold the lock for good: better lose the tail than hang
    if not lock.acquire(timeout=5):
        return
    try:
        storage.flush(clock.last)
    except Exception:
        logger.exception("graph: writing buffered changes of an unclosed graph failed")
    finally:
        storage.close()  # (and its file lock: the file may be opened again)
        lock.release()
