"""Live queries (docs/graph.md, "Live queries"): the callback runs exactly when the
result changes -- after local puts, peers' batches, deferred updates applied and a real
sync over DTP -- is evaluated again only when a field the query read changed, never
overlaps itself, and stops at cancel() and close()."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.graph import Graph, GraphServer, QueryUpdate, connect, link
from dtp.identity.keys import HostIdentity
from tests.graph.query_model import SOULS, TEMPLATES, build, merge, naive, steps, writes

HAMS = ["c", "python"]


def _update(before: list[str], after: list[str]) -> QueryUpdate:
    return QueryUpdate(
        tuple(after),
        tuple(sorted(set(after) - set(before))),
        tuple(sorted(set(before) - set(after))),
    )


@settings(max_examples=100)
@given(
    ham=st.sampled_from(HAMS),
    ops=writes,
    plan=st.sampled_from(TEMPLATES) | steps,
    start=st.lists(st.sampled_from(SOULS), min_size=1, max_size=4),
    indexed=st.sets(st.sampled_from(["t", "x"])),
    deferred=st.lists(st.booleans(), min_size=24, max_size=24),
)
def test_a_live_query_calls_back_exactly_when_its_result_changes(
    ham: str,
    ops: list[tuple[Any, ...]],
    plan: list[tuple[Any, ...]],
    start: list[str],
    indexed: set[str],
    deferred: list[bool],
) -> None:
    clock = [10_000.0]
    g = Graph(None, ham=ham, now_ms=lambda: clock[0], max_drift_ms=0)
    for field in indexed:
        g.create_index(field)
    query = build(g, start, plan)
    if query is None:
        return
    heard: list[QueryUpdate] = []
    live = query.live(heard.append)
    result = naive(g, start, plan)
    assert live.souls == tuple(result)
    for op, later in zip(ops, deferred, strict=False):
        if op[0] == "put":
            g.put(op[1], op[2])
        elif later:
            # ahead of the clock: held, then applied by advance()
            merge(g, [(s, f, clock[0] + 5 + state, v) for s, f, state, v in op[1]])
            assert heard == []
            clock[0] += 20
            g.advance()
        else:
            merge(g, op[1])
        now = naive(g, start, plan)
        assert heard == ([] if now == result else [_update(result, now)])
        assert live.souls == tuple(now)
        heard.clear()
        result = now
    g.close()


@pytest.mark.parametrize("ham", HAMS)
def test_a_live_query_is_evaluated_again_only_when_a_field_it_read_changed(ham: str) -> None:
    g = Graph(None, ham=ham)
    g.put("a", {"posts": {"p1": link("p/1")}, "name": "alice"})
    g.put("p/1", {"time": 1})
    heard: list[QueryUpdate] = []
    live = g.query("a").out("posts").each().where("time", ">", 5).live(heard.append)
    assert live.souls == () and live.evaluations == 0
    g.put("a", {"name": "alicia"})  # a field of a's it does not read
    g.put("z", {"time": 9})  # a node it does not reach
    g.put("p/1", {"text": "hi"})  # a field of p/1's it does not read
    assert live.evaluations == 0
    g.put("p/1", {"time": 2})  # read, the result the same: evaluated, no callback
    assert live.evaluations == 1 and heard == []
    g.put("p/1", {"time": 6})
    assert live.evaluations == 2 and heard == [QueryUpdate(("p/1",), ("p/1",), ())]
    g.put("a/posts", {"p2": link("p/2")})  # the set grows: p/2 is read from now on
    assert live.evaluations == 3 and len(heard) == 1
    g.put("p/2", {"time": 7})
    assert live.evaluations == 4 and heard[-1] == QueryUpdate(("p/1", "p/2"), ("p/2",), ())
    g.put("p/1", {"time": 1})
    assert heard[-1] == QueryUpdate(("p/2",), (), ("p/1",))


def test_a_find_watches_its_field_on_every_node() -> None:
    g = Graph(None)
    g.create_index("t")
    heard: list[QueryUpdate] = []
    live = g.find("t", ">", 1).live(heard.append)
    g.put("anywhere", {"u": 5})
    assert live.evaluations == 0
    g.put("anywhere", {"t": 5})
    assert heard == [QueryUpdate(("anywhere",), ("anywhere",), ())]


def test_a_callback_that_writes_to_the_graph_is_called_again_not_recursively() -> None:
    g = Graph(None)
    depth = [0, 0]  # now, deepest
    heard: list[tuple[str, ...]] = []

    def grow(update: QueryUpdate) -> None:
        depth[0] += 1
        depth[1] = max(depth)
        heard.append(update.souls)
        if len(update.souls) < 4:  # each callback adds one more member
            n = len(update.souls)
            g.put("set", {f"m{n}": link(f"m/{n}")})
        depth[0] -= 1

    live = g.query("set").each().live(grow)
    g.put("set", {"first": link("m/first")})
    assert heard == [
        ("m/first",),
        ("m/1", "m/first"),
        ("m/1", "m/2", "m/first"),
        ("m/1", "m/2", "m/3", "m/first"),
    ]
    assert depth[1] == 1  # never inside itself
    assert live.souls == heard[-1]


def test_a_callback_that_raises_is_logged_and_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = Graph(None)
    heard: list[QueryUpdate] = []

    def broken(update: QueryUpdate) -> None:
        raise RuntimeError("boom")

    g.query("a").out("b").live(broken)
    g.query("a").out("b").live(heard.append)
    with caplog.at_level(logging.ERROR, logger="dtp.graph._store"):
        g.put("a", {"b": link("c")})
    assert heard == [QueryUpdate(("c",), ("c",), ())]
    assert "live query callback" in caplog.text and "boom" in caplog.text
    assert g.get_field("a", "b") == {"#": "c"}  # the put is done


def test_cancel_and_close_stop_the_callbacks(tmp_path: Path) -> None:
    g = Graph(tmp_path / "g.db")
    heard: list[QueryUpdate] = []
    with g.query("a").out("b").live(heard.append) as live:
        g.put("a", {"b": link("c")})
    assert not live.active
    g.put("a", {"b": link("d")})
    assert len(heard) == 1
    other = g.query("a").out("b").live(heard.append)
    g.close()
    assert not other.active
    other.cancel()  # (idempotent after close)
    with pytest.raises(Exception, match="closed"):
        g.put("a", {"b": link("e")})
    assert len(heard) == 1


@pytest.mark.parametrize("ham", HAMS)
def test_callbacks_never_overlap_and_the_last_tells_the_final_result(ham: str) -> None:
    g = Graph(None, ham=ham)
    g.create_index("n")
    inside = threading.Lock()
    overlaps = []
    heard: list[QueryUpdate] = []

    def slow(update: QueryUpdate) -> None:
        if not inside.acquire(blocking=False):
            overlaps.append(update)
            return
        try:
            heard.append(update)
            time.sleep(0.001)
        finally:
            inside.release()

    live = g.query("set").each().where("n", ">=", 0).live(slow)

    def writer(name: str) -> None:
        for i in range(60):
            g.put(f"{name}/{i}", {"n": i % 3 - 1})
            g.put("set", {f"{name}{i}": link(f"{name}/{i}")})

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
    final = g.query("set").each().where("n", ">=", 0).souls()
    assert len(final) == 80
    assert heard and heard[-1].souls == tuple(final) == live.souls


def test_a_peers_changes_over_a_real_sync_reach_a_live_query(tmp_path: Path) -> None:
    peer = Graph(None)
    peer.put("forum", {"posts": {"p1": link("post/1")}})
    peer.put("post/1", {"time": 5})
    local = Graph(tmp_path / "local.db")
    local.create_index("time")
    heard: list[QueryUpdate] = []
    live = local.query("forum").out("posts").each().where("time", ">", 3).live(heard.append)
    with GraphServer(peer, ("127.0.0.1", 0), HostIdentity.generate()) as server:
        connect(local, server.address, server_key=server.noise_public_key, timeout=30)
    assert heard == [QueryUpdate(("post/1",), ("post/1",), ())]
    assert live.souls == ("post/1",)
    local.close()
    peer.close()
