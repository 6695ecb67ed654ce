"""The graph: nodes ("souls") with fields, over the HAM table (docs/graph.md).

:class:`Graph` is the user-facing store. Each field is one entry of the HAM table
(``dtp.native.core.HamGraph``: C by default, the pure-Python twin with ``DTP_PUREPYTHON=1`` or
``ham="python"``), keyed by (soul, field) and holding (state, the value's Gun text in UTF-8).
Writes take their state from a :class:`~dtp.graph.clock.HybridClock`; updates from peers
go through the ownership check (:mod:`dtp.graph.namespace`) and then one C merge per
batch. Whatever a merge *changed* is, in this order: logged to SQLite
(:mod:`dtp.graph.persist`), folded into the sync summaries, forwarded to live sync
sessions and delivered to subscribers.

Per-field Python work is paid only for what needs it. The soul index and the sync
summaries (the *view*) are built lazily from the table's export and then kept up to
date; a merge that changes a large share of the table drops the view instead, to be
rebuilt on the next read (amortised O(1) per change). A bulk sync into a fresh replica
therefore costs one C merge and one SQLite row per batch.

A graph is made of parts, one module each, over the state they share
(:mod:`dtp.graph.store_base`): local writes (:mod:`~dtp.graph.writes`), merging what
peers send and the deferred updates (:mod:`~dtp.graph.merges`), what follows every change
(:mod:`~dtp.graph.commits`), reads (:mod:`~dtp.graph.reads`), queries
(:mod:`~dtp.graph.queries`), subscriptions (:mod:`~dtp.graph.changes`) and what sync
sessions use (:mod:`~dtp.graph.sync_source`,
over the summaries of :mod:`~dtp.graph.summaries`); the SQLite file is written back by its
own object (:mod:`~dtp.graph.writeback`). This module makes and closes a graph.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import threading
from collections.abc import Callable
from typing import Any

from dtp.errors import RemoteProtocolError
from dtp.graph.arguments import check_int as check_int
from dtp.graph.changes import Change, ChangeStream, GraphSubscriptions, Subscription
from dtp.graph.clock import MAX_DRIFT_MS, HybridClock, wall_clock_ms
from dtp.graph.commits import _BLIND_RETRY_MIN
from dtp.graph.formats import Migration, migrate_batch
from dtp.graph.history import History
from dtp.graph.merges import GraphMerges, MergeReport, canonical_states
from dtp.graph.persist import GraphStorage, GraphStorageError
from dtp.graph.queries import GraphQueries, QueryEngine
from dtp.graph.query_index import QueryIndex
from dtp.graph.rules import RuleSet
from dtp.graph.store_base import MAX_STATE, ChangeListener
from dtp.graph.summaries import (
    FANOUT_BITS,
    LEAF_BITS,
    LEAF_LEVEL,
    SummaryView,
    entry_hash,
    soul_leaf,
)
from dtp.graph.sync_source import SyncSource
from dtp.graph.tiers import GraphTiers
from dtp.graph.writeback import WriteBack
from dtp.graph.writes import GraphWrites
from dtp.identity.keys import HostIdentity
from dtp.native import core as _core
from dtp.native import reference as _reference

logger = logging.getLogger(__name__)


def _check_number(
    name: str, value: object, *, integral: bool = False, upper: int | None = None
) -> None:
    """Constructor argument check: a (finite, >= 0) real number, not a bool."""
    kind = numbers.Integral if integral else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an int" if integral else "a number"
        raise TypeError(f"Graph({name}=...) must be {what}, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        number = math.inf
    # (an int is compared exactly: 2**64 - 1 is a float's 2**64)
    exact = int(value) if isinstance(value, numbers.Integral) else number
    if not math.isfinite(number) or number < 0 or (upper is not None and exact >= upper):
        bound = "" if upper is None else " and < 2**64"
        raise ValueError(f"Graph({name}=...) must be finite, >= 0{bound}; got {repr(value)[:40]}")


class Graph(GraphWrites, GraphMerges, GraphQueries, GraphSubscriptions, SyncSource, GraphTiers):
    """A replicated graph of nodes and fields, persisted in SQLite, synced over DTP.

    ``path``: the SQLite file (None keeps the graph in memory only). ``identity``: the
    host key used to sign writes to its own user space ``~<address>/...``.
    ``now_ms``: the wall clock (injectable for tests); ``max_drift_ms``: how far ahead of
    it a peer's state may be before the update is deferred (0 to 2**44 ms). ``ham``: ``"c"``,
    ``"python"`` (the twin) or None for the process-wide backend
    (``dtp.native.core.HamGraph``). ``max_deferred_bytes``: cap of the deferred queue.

    Thread-safe: sync sessions in other threads merge while the application reads.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        identity: HostIdentity | None = None,
        now_ms: Callable[[], float] = wall_clock_ms,
        max_drift_ms: float = 1000.0,
        ham: str | None = None,
        max_deferred_bytes: int = 16 << 20,
        flush_interval: float = 0.25,
    ) -> None:
        # every argument is checked before anything is opened: a bad one is a programming
        # error, reported by name (not from deep inside, nor with a database left open)
        if path is not None and not isinstance(path, str | os.PathLike):
            raise TypeError(
                f"Graph(path=...) must be a str, a path or None, not {type(path).__name__}"
            )
        if identity is not None and not isinstance(identity, HostIdentity):
            raise TypeError(
                f"Graph(identity=...) must be a HostIdentity or None, not {type(identity).__name__}"
            )
        if not callable(now_ms):
            raise TypeError(f"Graph(now_ms=...) must be callable, not {type(now_ms).__name__}")
        _check_number("max_drift_ms", max_drift_ms)
        if float(max_drift_ms) > MAX_DRIFT_MS:
            # (a drift near the largest float let a peer's state there be merged, and the
            # next write of that field had no finite state left)
            raise ValueError(
                f"Graph(max_drift_ms=...) must be at most 2**44 ms; got {repr(max_drift_ms)[:40]}"
            )
        _check_number("max_deferred_bytes", max_deferred_bytes, integral=True, upper=1 << 64)
        _check_number("flush_interval", flush_interval)
        if ham is not None and not isinstance(ham, str):
            raise TypeError(f"Graph(ham=...) must be 'c', 'python' or None, not {ham!r}")
        table_type: Any
        if ham is None:
            table_type = _core.HamGraph
        elif ham == "c":
            table_type = _core.NativeHamGraph
        elif ham == "python":
            table_type = _reference.HamGraph
        else:
            # (a bad argument, as the docs say: ValueError naming it, like the others)
            raise ValueError(f"Graph(ham=...) must be 'c', 'python' or None, not {ham!r:.40}")
        self._table = table_type(max_deferred_bytes=int(max_deferred_bytes))
        self.ham_backend = "python" if table_type is _reference.HamGraph else "c"
        self.identity = identity
        self._lock = threading.RLock()
        self._view: SummaryView | None = SummaryView()
        self._subs: dict[str, list[Subscription]] = {}
        self._listeners: list[tuple[ChangeListener, object]] = []
        self._query = QueryEngine(self._lock)
        self.stats: dict[str, Any] = {
            "merged_batches": 0,
            "applied": 0,
            "deferred": 0,
            "dropped": 0,
            "refused": 0,
            "refused_by_reason": {},
            "refused_by_rule": {},
            "refused_by_peers": 0,
            "view_rebuilds": 0,
        }
        self.rules = RuleSet(self)
        self.history = History(self)
        # When the deferred queue may hold something due, without asking the table: a
        # table.advance() walks the whole queue (and the C one allocates its size), so a
        # peer that filled it with far-future updates made every put() and merge() pay
        # for that walk -- 22 ms each at the default cap. ``_due``: states of the queue,
        # sorted (at most _DUE_TRACKED, the smallest of those seen; ``_due_untracked``
        # when the queue holds more); ``_due_retry``: no untracked one is due before
        # this machine state (their smallest when they were dropped from ``_due``, then
        # past each advance -- backing off while such asks find nothing).
        self._due: list[float] = []
        self._due_untracked = False
        self._due_retry = 0.0
        self._due_backoff = _BLIND_RETRY_MIN
        storage: GraphStorage | None = None
        last = 0.0
        if path is not None:
            storage = GraphStorage(path, flush_interval=float(flush_interval))
            try:
                # (the reservation is above every state issued, flushed or not)
                last = max(storage.clock_last(), storage.clock_reserved())
                # a file of format 1 is migrated as it is read (dtp.graph.formats)
                migration = Migration() if storage.format == 1 else None
                for batch in storage.load():
                    try:
                        if migration is not None:
                            batch = migrate_batch(batch, migration)
                        # (a log written before states were canonicalised may hold -0.0)
                        self._table.merge(canonical_states(batch), MAX_STATE)
                    except RemoteProtocolError as exc:
                        # our own log, damaged: the file's fault, not a peer's
                        raise GraphStorageError(
                            f"graph database {str(path)!r} is corrupt: a log entry is "
                            f"not a valid HAM batch ({exc})"
                        ) from exc
                if migration is not None:
                    # written whole or not at all: a failure leaves the file of format 1
                    # (GraphStorageError out of the constructor), migrated again next time
                    storage.compact(self._table.export(), storage.clock_last(), migrated=True)
                    logger.info(
                        "graph: migrated %s from format 1: %d updates, %d values respelled "
                        "in Gun's text, %d signed ones and %d that Gun cannot hold kept "
                        "as they were; %d fields",
                        path,
                        migration.updates,
                        migration.respelled,
                        migration.signed_kept,
                        migration.not_gun_kept,
                        len(self._table),
                    )
                self.migration = migration
                self.replica_id = storage.replica_id()
                # query tables the file has, rebuilt when out of step with its log
                self._query.index = QueryIndex.open(
                    storage, self._table, self._value_of, migrated=migration is not None
                )
            except BaseException:
                # no Graph to close() comes out of a failed constructor: close the file here
                storage.close()
                raise
            if len(self._table):
                self._view = None
        else:
            self.replica_id = os.urandom(16)
            self.migration = None
        self.clock = HybridClock(now_ms, max_drift_ms=float(max_drift_ms), last=last)
        self._writeback = (
            None
            if storage is None
            else WriteBack(
                storage, self._lock, self.clock, self._table, float(flush_interval), last
            )
        )
        self._closed = False

    def flush(self) -> None:
        """Write buffered changes to SQLite now (compacting the log when it has grown).

        GraphStorageError if the file cannot be written (the changes stay buffered). A
        compaction that fails is logged, not raised (the changes are written by then),
        and not tried again for a minute."""
        with self._lock:
            self._check_open()
            if self._writeback is not None:
                self._writeback.flush_locked()

    @property
    def storage(self) -> GraphStorage | None:
        """The SQLite store, or None for an in-memory graph."""
        return None if self._writeback is None else self._writeback.storage

    def close(self) -> None:
        """Flush and close the SQLite file (idempotent). From then on writes, reads
        (``len()`` and ``in`` included), flush() and subscribe() raise
        LocalProtocolError (existing subscriptions can still cancel; :meth:`changes`
        iterators end once drained). If the final flush fails (GraphStorageError) the
        graph stays open, so that close() can be retried."""
        with self._lock:
            if self._closed:
                return
            flusher = None if self._writeback is None else self._writeback.close()
            self._closed = True
            self._query.close()
            ending = [sub for subs in self._subs.values() for sub in subs]
        if flusher is not None:
            # joined outside the lock: the thread may be waiting for it, and then finds
            # the graph closed
            flusher.close()
        for sub in ending:
            if sub._on_graph_close is not None:
                sub._on_graph_close()

    def __enter__(self) -> Graph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "FANOUT_BITS",
    "LEAF_BITS",
    "LEAF_LEVEL",
    "Change",
    "ChangeListener",
    "ChangeStream",
    "Graph",
    "MergeReport",
    "Subscription",
    "entry_hash",
    "soul_leaf",
]
