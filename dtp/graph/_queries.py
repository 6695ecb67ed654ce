"""The state a graph's queries keep (docs/graph.md, "Queries"): :class:`QueryEngine`, the
SQLite tables of :mod:`dtp.graph._query_index` and the live queries to re-evaluate. The
methods users call are :class:`~dtp.graph._store.Graph`'s (``query``, ``find``, the
indexes)."""

from __future__ import annotations

import threading

from dtp.graph._batch import Entry, entries
from dtp.graph._query import LiveQuery
from dtp.graph._query_index import QueryIndex


class QueryEngine:
    """One graph's query state: its tables (None until its first query or index) and
    its live queries, with those a change made due. Called by the graph as changes commit
    (:meth:`touch` with its lock held, :meth:`deliver` after it is released)."""

    def __init__(self, lock: threading.RLock) -> None:
        self.index: QueryIndex | None = None
        self.live: list[LiveQuery] = []
        self.due: set[LiveQuery] = set()
        self._lock = lock

    def touch(self, batch: bytes, decoded: list[Entry] | None) -> list[Entry] | None:
        """A batch the table applied (lock held): the live queries that read one of its
        fields are made due. Returns the batch's entries when it decoded them
        (``decoded``, if given, is them)."""
        if self.live:
            if decoded is None:
                decoded = entries(batch)
            for live in self.live:
                if live not in self.due and live._reads.touched_by(decoded):
                    self.due.add(live)
        return decoded

    def deliver(self) -> None:
        """Evaluate the live queries made due and call back those whose result changed
        (the graph's lock released: callbacks may use the graph)."""
        with self._lock:
            due = list(self.due)
            self.due.clear()
        for live in due:
            live._run()

    def forget(self, live: LiveQuery) -> None:
        with self._lock:
            if live in self.live:
                self.live.remove(live)
            self.due.discard(live)

    def close(self) -> None:
        """The graph closed (lock held): no live query runs again."""
        for live in self.live:
            live.active = False
        self.live.clear()
        self.due.clear()
        if self.index is not None:
            self.index.close()
            self.index = None


__all__ = ["LiveQuery", "QueryEngine"]
