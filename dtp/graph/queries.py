"""A graph's queries, indexes and live queries (docs/graph.md, "Queries"): the methods
users call (:class:`GraphQueries`), and the state they keep (:class:`QueryEngine`: the
SQLite tables of :mod:`dtp.graph.query_index` and the live queries to re-evaluate)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from dtp.graph._batch import Entry, entries
from dtp.graph.query import (
    LiveQuery,
    Query,
    QueryError,
    QueryUpdate,
    Where,
    check_field,
    check_soul,
    make_where,
)
from dtp.graph.query_index import QueryIndex, ReadSet, explain
from dtp.graph.reads import GraphReads
from dtp.graph.values import JSON, GunValue


class QueryEngine:
    """One graph's query state: its tables (None until its first query or index) and
    its live queries, with those a change made due. Called by the graph's commits
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


class GraphQueries(GraphReads):
    """The graph's queries: :meth:`query`, :meth:`find`, and the indexes they use."""

    _query: QueryEngine
    """The query tables (made by the first query or index) and the live queries."""

    def query(self, *souls: str) -> Query:
        """A query starting at ``souls`` (see :class:`~dtp.graph.query.Query`), as in
        ``g.query("user/alice").out("posts").each().where("time", ">", t).souls()``."""
        if not souls:
            raise QueryError("query() takes at least one soul to start from")
        return Query(self, tuple(check_soul(s, "query()") for s in souls))

    def find(self, field: str, op: str, value: GunValue) -> Query:
        """A query starting at every node whose ``field`` compares with ``value`` (as
        :meth:`Query.where <dtp.graph.query.Query.where>`), found with the index on
        ``field`` (QueryError when there is none: :meth:`create_index` first)."""
        where = make_where(field, op, value)
        self._check_indexed(where)
        return Query(self, where)

    def create_index(self, field: str) -> bool:
        """Index ``field`` of every node, in SQLite: :meth:`find` uses it, and so does
        every :meth:`~dtp.graph.query.Query.where` on it. Kept with every change;
        persisted in the graph's file. False when it was indexed already."""
        name = check_field(field, "create_index()")
        with self._lock:
            self._check_open()
            if self._query.index is None:
                self._query_index(index=(name,))  # (the tables made indexing it: one pass)
                return True
            index = self._query_index()
            if index.is_indexed(name):
                return False
            index.add_field(name, self._table)
            return True

    def drop_index(self, field: str) -> bool:
        """Drop the index on ``field``; False when there was none."""
        name = check_field(field, "drop_index()")
        with self._lock:
            self._check_open()
            index = self._query.index
            if index is None or not index.is_indexed(name):
                return False
            self._query_index()  # (level with the table: the file's log is flushed)
            index.drop_field(name)
            return True

    def indexes(self) -> list[str]:
        """The indexed fields, sorted."""
        with self._lock:
            self._check_open()
            index = self._query.index
            return [] if index is None else index.fields

    # -- what queries call (dtp.graph.query.QueryRunner) ------------------------------

    def _run_query(self, query: Query) -> list[str]:
        with self._lock:
            self._check_open()
            return self._evaluate(query, None)

    def _query_nodes(self, query: Query) -> dict[str, dict[str, JSON]]:
        with self._lock:
            self._check_open()
            souls = self._evaluate(query, None)
            return {soul: self.get(soul) or {} for soul in souls}

    def _explain_query(self, query: Query) -> list[str]:
        with self._lock:
            self._check_open()
            index = self._query.index
            self._check_indexed_in(index, query.start)
            if index is None:  # (a graph not yet queried: no index, nothing to build)
                return explain(set(), query.start, query.steps)
            return index.explain(query.start, query.steps)

    def _live_query(self, query: Query, callback: Callable[[QueryUpdate], None]) -> LiveQuery:
        with self._lock:
            self._check_open()
            reads = ReadSet()
            souls = tuple(self._evaluate(query, reads))
            # registered under the lock that evaluated it: no change falls in between
            live = LiveQuery(self, query, callback, souls, reads)
            self._query.live.append(live)
        return live

    def _evaluate_live(self, live: LiveQuery) -> tuple[str, ...]:
        with self._lock:
            self._check_open()
            reads = ReadSet()
            souls = tuple(self._evaluate(live.query, reads))
            live._reads = reads
            return souls

    def _forget_live(self, live: LiveQuery) -> None:
        self._query.forget(live)

    # -- inside ---------------------------------------------------------------------

    def _query_index(self, index: tuple[str, ...] = ()) -> QueryIndex:
        """The query tables, made on first use (indexing ``index``), level with the
        table (lock held)."""
        writeback = self._writeback
        flush = None if writeback is None else writeback.flush_locked
        tables = self._query.index
        if tables is None:
            if flush is not None:
                flush()  # (the tables are built from the table: the log must hold it all)
            storage = None if writeback is None else writeback.storage
            tables = QueryIndex.create(storage, self._table, self._value_of, index)
            self._query.index = tables
        else:
            tables.catch_up(self._table, flush)
        return tables

    def _evaluate(self, query: Query, record: ReadSet | None) -> list[str]:
        index = self._query_index()
        self._check_indexed_in(index, query.start)
        found = index.evaluate(query.start, query.steps, self._table, record)
        souls = []
        for soul in found:
            try:
                souls.append(soul.decode())
            except UnicodeDecodeError:  # (no link names such a soul, nor a str)
                continue
        souls.sort()
        return souls

    def _check_indexed(self, where: Where) -> None:
        with self._lock:
            self._check_open()
            self._check_indexed_in(self._query.index, where)

    @staticmethod
    def _check_indexed_in(index: QueryIndex | None, start: tuple[str, ...] | Where) -> None:
        if isinstance(start, Where) and (index is None or not index.is_indexed(start.field)):
            raise QueryError(
                f"find() reads the index on {start.field!r}, and there is none: "
                f"create_index({start.field!r}) first"
            )


__all__ = ["GraphQueries", "LiveQuery", "QueryEngine"]
