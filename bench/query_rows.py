"""The graph query row of bench/compare.py.

``graph_query_1m``: a forum of 1,003,000 fields in a graph persisted in SQLite -- 1,000
users in the set ``users``, each with a set of 10 posts, each post with a set of 24
replies (a reply: text, time, a link to its author) -- and one three-hop filtered
traversal over it: every user's posts' replies newer than a time (10% of them)::

    g.query("users").each().out("posts").each().out("replies").each()
     .where("time", ">", t)

*Ours*: that query, with an index on ``time`` (``create_index``), evaluated in SQLite a
hop at a time. *Peer*: the same traversal written with ``get``/``walk``/``get_field``
loops, as an application would without queries. Both read the same open graph, in this
process, and find the same 24,000 souls (checked before timing). Building the graph,
its query tables and its index is setup, not timed (the note gives those times).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workload import Workload
from dtp.graph import Graph, Query, link, link_soul
from dtp.graph.values import encode_value
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate

T0 = 1_700_000_000_000.0
"""The replies' times are T0 .. T0 + 999 ms."""
SINCE = T0 + 899
"""The filter: replies newer than this (10% of them)."""


def forum_updates(users: int, posts: int = 10, replies: int = 24) -> list[HamUpdate]:
    """The forum's fields: 3 * users + 4 * users * posts * (1 + replies)."""
    out: list[HamUpdate] = []

    def put(soul: str, field: str, value: object) -> None:
        out.append(HamUpdate(soul.encode(), field.encode(), 1.0, encode_value(value)))

    for u in range(users):
        user = f"user/{u}"
        put("users", user, link(user))
        put(user, "name", f"user {u}")
        put(user, "posts", link(f"{user}/posts"))
        for p in range(posts):
            post = f"post/{u}/{p}"
            put(f"{user}/posts", post, link(post))
            put(post, "text", "a post")
            put(post, "time", T0 + p)
            put(post, "replies", link(f"{post}/replies"))
            for r in range(replies):
                reply = f"reply/{u}/{p}/{r}"
                put(f"{post}/replies", reply, link(reply))
                put(reply, "text", "a reply")
                put(reply, "time", T0 + (u * 7919 + p * 31 + r * 17) % 1000)
                put(reply, "author", link(f"user/{(u + r) % users}"))
    return out


def build_forum(path: Path, users: int) -> Graph:
    """The forum in a new graph at ``path``, flushed."""
    graph = Graph(path)
    updates = forum_updates(users)
    for i in range(0, len(updates), 4096):
        graph.merge(encode_ham_batch(updates[i : i + 4096]))
    graph.flush()
    return graph


def recent_replies(graph: Graph) -> Query:
    """Ours: the traversal as a query."""
    return (
        graph.query("users")
        .each()
        .out("posts")
        .each()
        .out("replies")
        .each()
        .where("time", ">", SINCE)
    )


def recent_replies_by_hand(graph: Graph) -> list[str]:
    """The peer: the same traversal with get / walk / get_field loops."""
    found = set()
    for user_link in (graph.get("users") or {}).values():
        user = link_soul(user_link)
        if user is None:
            continue
        posts = graph.walk(user, "posts")
        for post_link in (graph.get(posts) or {}).values():
            post = link_soul(post_link)
            if post is None:
                continue
            replies = graph.walk(post, "replies")
            for reply_link in (graph.get(replies) or {}).values():
                reply = link_soul(reply_link)
                if reply is None:
                    continue
                when = graph.get_field(reply, "time")
                if isinstance(when, int | float) and not isinstance(when, bool) and when > SINCE:
                    found.add(reply)
    return sorted(found)


def graph_query(users: int = 1000) -> Workload:
    tmp = tempfile.mkdtemp(prefix="dtp-graph-query-bench-")
    try:
        start = time.perf_counter()
        graph = build_forum(Path(tmp) / "forum.db", users)
        built = time.perf_counter() - start
        start = time.perf_counter()
        graph.create_index("time")  # (and the query tables, on first use)
        indexed = time.perf_counter() - start
        query = recent_replies(graph)
        expected = recent_replies_by_hand(graph)
        if query.souls() != expected or not expected:
            raise RuntimeError("graph_query: the query and the loops found other souls")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    def ours() -> None:
        if len(query.souls()) != len(expected):
            raise RuntimeError("graph_query: the query's result changed")

    def peer() -> None:
        if len(recent_replies_by_hand(graph)) != len(expected):
            raise RuntimeError("graph_query: the loops' result changed")

    def close() -> None:
        graph.close()
        shutil.rmtree(tmp, ignore_errors=True)

    return Workload(
        "graph_query_1m",
        "queries/s",
        1,
        ours,
        peer,
        bar=10.0,
        note=f"users -> posts -> replies where time > t ({len(expected):,} of "
        f"{users * 240:,} replies) on a persisted graph of {len(graph):,} fields; "
        f"peer = the same with get/walk/get_field loops. Setup: graph {built:.1f} s, "
        f"query tables + index on time {indexed:.1f} s",
        close=close,
    )


def graph_query_1m() -> Workload:
    return graph_query(1000)


__all__ = ["build_forum", "graph_query", "graph_query_1m", "recent_replies"]
