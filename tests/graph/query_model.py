"""A model of graph queries for tests: random graphs and plans (hypothesis strategies),
and the naive evaluation over ``get()`` that queries must agree with."""

from __future__ import annotations

import operator
from typing import Any

from hypothesis import strategies as st

from dtp.graph import Graph, Query, link, link_soul
from dtp.graph.values import encode_value
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate

SOULS = ["a", "b", "c", "d", "s/1", "é"]
FIELDS = ["x", "y", "t", "m"]
OPS = ["==", "!=", "<", "<=", ">", ">="]
Update = tuple[str | bytes, str | bytes, float, bytes]

scalars = st.integers(-1, 2) | st.sampled_from(
    [None, True, False, 2.5, 1e-7, 1e21, 2**53, "", "a", "b", "\uffff", "\U0001f600"]
)
links = st.sampled_from(SOULS).map(link)
# (links twice as likely as the rest: chains of hops that reach something are the point)
values = st.one_of(links, links, scalars)
# bytes only a format 1 graph or a misbehaving peer stores: get() reads or leaves them out
odd_bytes = st.sampled_from(
    [
        b"[1,2]",
        b'{"a":1}',
        b"1.0",
        b"9007199254740993",
        b"not json",
        b'{"#":"a","x":1}',
        b' {"#":"b"}',
        b'{"#":"\\u0061"}',
        b'{"#":""}',
        b'"\\ud800"',
        b"-0",
        b"1E5",
        b"2.50",
        b" 1",
        b"12345678901234567",
        b'"a\\u0062"',
        b'"\x7f\xc3\xa9"',
        b'"\xff"',
    ]
)


# (built once: a strategy made inside the draw loop is made and validated again for
# every update, which would be most of the random-query tests' time)
_update_counts = st.integers(0, 40)
_update_souls = st.sampled_from(SOULS) | st.just(b"\xff")
_update_fields = st.sampled_from(FIELDS) | st.just(b"x\xff")
_update_states = st.integers(1, 4)
_update_raws = values.map(encode_value) | odd_bytes


@st.composite
def updates(draw: st.DrawFn) -> list[Update]:
    """Peers' updates: few states (ties are many), some odd names and bytes."""
    out = []
    for _ in range(draw(_update_counts)):
        soul: str | bytes = draw(_update_souls)
        field: str | bytes = draw(_update_fields)
        state = float(draw(_update_states))
        raw = draw(_update_raws)
        out.append((soul, field, state, raw))
    return out


ordered = st.integers(-1, 2) | st.sampled_from(
    [2.5, 1e-7, 1e21, 2**53, "", "a", "b", "\uffff", "\U0001f600"]
)
wheres = st.one_of(
    st.tuples(st.just("where"), st.sampled_from(FIELDS), st.sampled_from(OPS), ordered),
    st.tuples(st.just("where"), st.sampled_from(FIELDS), st.sampled_from(["==", "!="]), values),
)
hops = st.tuples(st.just("out"), st.sampled_from(FIELDS)) | st.tuples(st.just("each"))
# (hops twice as likely as filters: a filter empties the frontier more often than not)
steps = st.lists(st.one_of(hops, hops, wheres), max_size=5)


# Plans run on every random graph, from every soul: chains of hops that reach nodes
# (random plans mostly end empty), and the filters after them.
TEMPLATES: list[list[tuple[Any, ...]]] = [
    [("each",)],
    [("each",), ("each",)],
    [("each",), ("each",), ("each",)],
    *([("out", f)] for f in FIELDS),
    *([("out", f), ("each",)] for f in FIELDS),
    *([("each",), ("out", f)] for f in FIELDS),
    *([("each",), ("out", f), ("out", f)] for f in FIELDS),
    [("each",), ("where", "x", "==", link("a"))],
    [("each",), ("where", "t", ">", 0), ("each",)],
    [("each",), ("each",), ("where", "y", "<", "b")],
    [("each",), ("each",), ("where", "m", "!=", 1)],
    [("where", "t", ">=", 0), ("each",), ("where", "x", "!=", link("b"))],
    [("each",), ("where", "y", "<", "\uffff")],
    [("each",), ("where", "x", ">", "\U0001f600")],
]


def kind(value: Any) -> str | None:
    """The kind of Gun value a value read by get() is, or None (what no where matches)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number" if float(value) == value else None
    if isinstance(value, str):
        return "string"
    if link_soul(value) is not None:
        return "link"
    return None


def compare(found: Any, op: str, wanted: Any) -> bool:
    """Gun's comparison, written out: the same kind or nothing; strings in UTF-16."""
    wanted_kind = kind(wanted)
    if kind(found) != wanted_kind or wanted_kind is None:
        return False
    if wanted_kind == "string":
        found, wanted = found.encode("utf-16-be"), wanted.encode("utf-16-be")
    elif wanted_kind == "link":
        found, wanted = link_soul(found), link_soul(wanted)
    if op in ("<", "<=", ">", ">=") and wanted_kind not in ("number", "string"):
        raise AssertionError("the query refuses this")
    operation = {
        "==": operator.eq,
        "!=": operator.ne,
        "<": operator.lt,
        "<=": operator.le,
        ">": operator.gt,
        ">=": operator.ge,
    }[op]
    return bool(operation(found, wanted))


def _read(g: Graph, soul: str, read: dict[str, dict[str, Any]]) -> dict[str, Any]:
    node = read.get(soul)
    if node is None:
        node = read[soul] = g.get(soul) or {}
    return node


def naive(g: Graph, start: list[str], plan: list[tuple[Any, ...]]) -> list[str]:
    """The query evaluated with get() and Python loops."""
    frontier = set(start)
    read: dict[str, dict[str, Any]] = {}  # (each node read once: nothing writes meanwhile)
    for step in plan:
        nodes = {soul: _read(g, soul, read) for soul in frontier}
        if step[0] == "out":
            frontier = {t for n in nodes.values() if (t := link_soul(n.get(step[1])))}
        elif step[0] == "each":
            frontier = {t for n in nodes.values() for v in n.values() if (t := link_soul(v))}
        else:
            _, field, op, wanted = step
            frontier = {s for s, n in nodes.items() if field in n and compare(n[field], op, wanted)}
    return sorted(frontier)


def build(g: Graph, start: list[str], plan: list[tuple[Any, ...]]) -> Query | None:
    """The plan as a query (None for one the query refuses)."""
    query = g.query(*start)
    for step in plan:
        if step[0] == "out":
            query = query.out(step[1])
        elif step[0] == "each":
            query = query.each()
        else:
            _, field, op, wanted = step
            if op not in ("==", "!=") and kind(wanted) not in ("number", "string"):
                return None  # (refused: test_query covers the error)
            query = query.where(field, op, wanted)
    return query


def merge(g: Graph, batch: list[Update]) -> None:
    """A peer's batch of these updates, merged."""
    ups = [
        HamUpdate(
            s.encode() if isinstance(s, str) else s, f.encode() if isinstance(f, str) else f, st_, v
        )
        for s, f, st_, v in batch
    ]
    if ups:
        g.merge(encode_ham_batch(ups))


# a graph's history: local puts and peers' batches
writes = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.sampled_from(SOULS),
            st.dictionaries(st.sampled_from(FIELDS), values, min_size=1),
        ),
        st.tuples(st.just("merge"), updates()),
    ),
    min_size=4,
    max_size=24,
)
