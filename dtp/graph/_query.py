"""Queries over a graph: start at souls, follow links and sets of links, keep the nodes
whose fields compare as asked (docs/graph.md, "Queries", says the steps, the results
and the comparisons).

A :class:`Query` is an immutable description: each step method returns a new one, and
nothing runs until :meth:`Query.souls`, :meth:`Query.nodes`, :meth:`Query.count` or
:meth:`Query.live`. The graph evaluates it (:mod:`dtp.graph._query_index`) in SQLite, one
statement per hop over the whole frontier. Values compare as Gun values
(:func:`comparable`): a comparison across types, or with a missing field, is false
whatever the operator (``!=`` included).
"""

from __future__ import annotations

import logging
import operator
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from dtp.errors import DTPError, LocalProtocolError
from dtp.graph._batch import Entry
from dtp.graph.values import (
    JSON,
    GraphValueError,
    GunValue,
    check_field_name,
    link_soul,
    value_text,
)

# (logs as dtp.graph._store, the module users know the graph by)
logger = logging.getLogger("dtp.graph._store")

OPERATORS = ("==", "!=", "<", "<=", ">", ">=")
"""The comparisons :meth:`Query.where` takes."""

# The kinds of Gun values a where tells apart (the ``kind`` column of query_value):
# values of different kinds never compare.
NULL, BOOLEAN, NUMBER, STRING, LINK = range(5)
_KIND_NAMES = ("null", "a boolean", "a number", "a string", "a link")
_ORDERED = (NUMBER, STRING)

Key = float | int | bytes | None
"""A value as a where compares it: a number as a float, a string as its UTF-16-BE bytes
(bytewise order is UTF-16 code unit order), a boolean as 0 or 1, a link as its soul's
UTF-8 bytes, null as None."""

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class QueryError(LocalProtocolError, ValueError):
    """A query that cannot be run as written: an unknown operator, a value Gun cannot
    hold, an order comparison of booleans, null or links, a bad soul or field name, a
    :meth:`~dtp.graph._store.Graph.find` on a field with no index."""


def comparable(value: JSON) -> tuple[int, Key] | None:
    """A field's value (as :meth:`~dtp.graph._store.Graph.get` reads it) as a where
    compares it: ``(kind, key)``; None for values that no where matches (arrays,
    objects other than links and ints beyond a binary64, which only a graph migrated
    from format 1 holds)."""
    if value is None:
        return NULL, None
    if value is True or value is False:
        return BOOLEAN, int(value)
    if isinstance(value, str):
        return STRING, value.encode("utf-16-be")
    if isinstance(value, float):
        return NUMBER, value
    if isinstance(value, int):
        # (an int that no binary64 holds is a format 1 relic, not a Gun number)
        try:
            number = float(value)
        except OverflowError:
            return None
        return (NUMBER, number) if int(number) == value else None
    soul = link_soul(value)
    return None if soul is None else (LINK, soul.encode())


@dataclass(frozen=True)
class Out:
    """Follow the link held in ``field`` (nodes where it is not a link drop out)."""

    field: str


@dataclass(frozen=True)
class Each:
    """Follow every field that holds a link: the members of a Gun set."""


@dataclass(frozen=True)
class Where:
    """Keep the nodes whose ``field`` compares with ``value`` by ``op``."""

    field: str
    op: str
    value: GunValue
    kind: int
    """The kind of ``value`` (NULL, BOOLEAN, NUMBER, STRING or LINK)."""
    key: Key
    """``value`` as compared (see :data:`Key`)."""

    def matches(self, found: tuple[int, Key] | None) -> bool:
        """Whether a field's value, as :func:`comparable` gives it, passes."""
        if found is None or found[0] != self.kind:
            return False
        return _COMPARE[self.op](found[1], self.key)

    def __str__(self) -> str:
        return f"where {self.field!r} {self.op} {self.value!r}"


Step = Out | Each | Where


def make_where(field: object, op: object, value: object) -> Where:
    """A checked :class:`Where` (QueryError naming what is wrong)."""
    name = check_field(field, "where()")
    if not isinstance(op, str) or op not in _COMPARE:
        raise QueryError(f"where() takes one of {', '.join(OPERATORS)} as operator, not {op!r}")
    try:
        value_text(value)
    except GraphValueError as exc:
        raise QueryError(f"where({name!r}, {op!r}, ...): {exc}") from None
    found = comparable(value)  # type: ignore[arg-type]  # (value_text took it: a Gun value)
    assert found is not None
    kind, key = found
    if op not in ("==", "!=") and kind not in _ORDERED:
        raise QueryError(
            f"where({name!r}, {op!r}, ...) orders numbers or strings, not {_KIND_NAMES[kind]}"
            " (booleans, null and links compare with == and != only)"
        )
    return Where(name, op, value, kind, key)  # type: ignore[arg-type]


def check_field(field: object, what: str) -> str:
    """A field name a query may read (QueryError otherwise)."""
    if not isinstance(field, str) or not field:
        raise QueryError(f"{what} takes a field name, a non-empty str, not {field!r:.60}")
    try:
        field.encode()
        check_field_name(field)
    except UnicodeEncodeError:
        raise QueryError(f"{what}: field name {field[:60]!r} holds a lone surrogate") from None
    except GraphValueError as exc:
        raise QueryError(f"{what}: {exc}") from None
    return field


def check_soul(soul: object, what: str) -> str:
    """A soul a query may start from (QueryError otherwise)."""
    if not isinstance(soul, str) or not soul:
        raise QueryError(f"{what} takes souls, non-empty strs, not {soul!r:.60}")
    try:
        soul.encode()
    except UnicodeEncodeError:
        raise QueryError(f"{what}: soul {soul[:60]!r} holds a lone surrogate") from None
    return soul


class QueryRunner(Protocol):
    """What a query needs of its graph (:class:`~dtp.graph._store.Graph`)."""

    def _run_query(self, query: Query) -> list[str]: ...

    def _query_nodes(self, query: Query) -> dict[str, dict[str, JSON]]: ...

    def _explain_query(self, query: Query) -> list[str]: ...

    def _live_query(self, query: Query, callback: Callable[[QueryUpdate], None]) -> LiveQuery: ...


class Query:
    """A traversal of a graph: where it starts and its steps (see the module docstring).

    Made by :meth:`Graph.query <dtp.graph._store.Graph.query>` (start at souls) or
    :meth:`Graph.find <dtp.graph._store.Graph.find>` (start at the nodes an index finds).
    Immutable: every step method returns a new query, so a query can be extended in
    several ways. Steps that take names check them at once (:class:`QueryError`).
    """

    __slots__ = ("_graph", "start", "steps")

    def __init__(
        self, graph: QueryRunner, start: tuple[str, ...] | Where, steps: tuple[Step, ...] = ()
    ) -> None:
        self._graph = graph
        self.start = start
        """The souls the traversal starts at, or the :class:`Where` an index answers."""
        self.steps = steps
        """The steps, in order."""

    def _then(self, step: Step) -> Query:
        return Query(self._graph, self.start, (*self.steps, step))

    def out(self, *fields: str) -> Query:
        """Follow the link in each field in turn: ``out("a", "b")`` is
        ``out("a").out("b")``. A node whose field is missing or holds no link drops out."""
        if not fields:
            raise QueryError("out() takes at least one field name")
        query = self
        for field in fields:
            query = query._then(Out(check_field(field, "out()")))
        return query

    def each(self) -> Query:
        """Follow every field that holds a link (a Gun set's members; fields holding other
        values are skipped)."""
        return self._then(Each())

    def where(self, field: str, op: str, value: GunValue) -> Query:
        """Keep the nodes whose ``field`` compares with ``value``: ``op`` is one of
        ``== != < <= > >=``; ``value`` a Gun value (None, a bool, a number, a str, a
        link). Across kinds nothing matches; order comparisons take numbers or strings."""
        return self._then(make_where(field, op, value))

    def souls(self) -> list[str]:
        """The souls the traversal reaches, sorted (a soul reached by several paths is
        listed once). Nodes reached need not have fields: a link may point to a node
        not yet known."""
        return self._graph._run_query(self)

    def nodes(self) -> dict[str, dict[str, JSON]]:
        """The result's nodes, read with the same snapshot: soul -> its fields (as
        :meth:`~dtp.graph._store.Graph.get` reads them; ``{}`` for a node with none)."""
        return self._graph._query_nodes(self)

    def count(self) -> int:
        """How many souls :meth:`souls` lists."""
        return len(self.souls())

    def explain(self) -> list[str]:
        """How the graph runs each step, one line each (which steps are SQL
        statements, which where uses an index, which runs in Python)."""
        return self._graph._explain_query(self)

    def live(self, callback: Callable[[QueryUpdate], None]) -> LiveQuery:
        """A live query: ``callback(update)`` each time the result changes, until the
        returned :class:`~dtp.graph._queries.LiveQuery` is cancelled (docs/graph.md,
        "Live queries", tells what the callback sees)."""
        if not callable(callback):
            raise QueryError(f"live() takes a callable, not {type(callback).__name__}")
        return self._graph._live_query(self, callback)

    def __repr__(self) -> str:
        start = f"find({self.start})" if isinstance(self.start, Where) else repr(self.start)
        steps = "".join(
            f".out({s.field!r})"
            if isinstance(s, Out)
            else ".each()"
            if isinstance(s, Each)
            else f".where({s.field!r}, {s.op!r}, {s.value!r})"
            for s in self.steps
        )
        return f"<Query {start}{steps}>"


@dataclass(frozen=True)
class QueryUpdate:
    """What a live query's callback gets when its result changed."""

    souls: tuple[str, ...]
    """The whole new result, sorted."""
    added: tuple[str, ...]
    """Souls in the result that were not in the previous one, sorted."""
    removed: tuple[str, ...]
    """Souls of the previous result that are no longer in it, sorted."""


class FieldsRead(Protocol):
    """The fields a live query's result was read from
    (:class:`~dtp.graph._query_index.ReadSet`)."""

    def touched_by(self, changed: Iterable[Entry]) -> bool: ...


class _LiveRunner(Protocol):
    """What a live query needs of its graph."""

    def _evaluate_live(self, live: LiveQuery) -> tuple[str, ...]: ...

    def _forget_live(self, live: LiveQuery) -> None: ...


class LiveQuery:
    """A query whose callback runs each time its result changes (made by
    :meth:`Query.live <dtp.graph._query.Query.live>`); :meth:`cancel` stops it.

    The callback gets a :class:`~dtp.graph._query.QueryUpdate`: the whole new result,
    and what was added and removed. Each result is the query evaluated on one state of
    the graph, after the change that prompted it (docs/graph.md, "Live queries").
    """

    def __init__(
        self,
        graph: _LiveRunner,
        query: Query,
        callback: Callable[[QueryUpdate], None],
        souls: tuple[str, ...],
        reads: FieldsRead,
    ) -> None:
        self.query = query
        self.callback = callback
        self.souls = souls
        """The result the callback last heard of (at first, the result when it was made)."""
        self.active = True
        self.evaluations = 0
        """How many times a change made the query be evaluated again."""
        self._graph = graph
        self._reads = reads  # (read and replaced with the graph's lock held)
        self._state = threading.Lock()
        self._dirty = False
        self._running = False

    def cancel(self) -> None:
        """Stop calling back (idempotent). A callback running in another thread may
        still finish."""
        if self.active:
            self.active = False
            self._graph._forget_live(self)

    def __enter__(self) -> LiveQuery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def _run(self) -> None:
        """Evaluate again and call back if the result changed. One thread at a time
        runs this loop: a change meanwhile (from any thread) makes it go round once more,
        so callbacks never overlap, come in order, and the last one tells the result
        after the last change."""
        with self._state:
            self._dirty = True
            if self._running:
                return
            self._running = True
        while True:
            with self._state:
                if not self._dirty or not self.active:
                    self._running = False
                    return
                self._dirty = False
            try:
                souls = self._graph._evaluate_live(self)
            except DTPError as exc:
                # the file cannot be written (the next change tries again), or the graph
                # closed meanwhile (which made this query inactive: nothing to tell)
                if self.active:
                    logger.warning("graph: a live query could not be evaluated: %s", exc)
                continue
            self.evaluations += 1
            if souls == self.souls:
                continue
            before, after = set(self.souls), set(souls)
            update = QueryUpdate(
                souls, tuple(sorted(after - before)), tuple(sorted(before - after))
            )
            self.souls = souls
            try:
                self.callback(update)
            except Exception:
                # (as a subscriber's: the change is committed, the others still hear)
                logger.exception("graph: live query callback %r raised", self.callback)


__all__ = [
    "OPERATORS",
    "Each",
    "LiveQuery",
    "Out",
    "Query",
    "QueryError",
    "QueryRunner",
    "QueryUpdate",
    "Step",
    "Where",
    "comparable",
]
