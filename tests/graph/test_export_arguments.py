"""Graph.export's arguments: bad batch sizes and node levels refused at the call, good
ones still reading the whole table (dtp.graph)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.graph import Graph
from dtp.graph._batch import entries
from dtp.graph._store import LEAF_LEVEL, soul_leaf
from tests.support.polling import raised_within

#: Bound on a refusal, which is at once (a check that waited for the graph's lock, held
#: by another thread here, would wait until the end of the test).
PROMPT = 30.0


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[Graph]:
    with Graph(tmp_path / "g.sqlite") as g:
        g.put("a", {"x": 1, "child": {"y": 2}})
        g.put("b", {"z": "zz"})
        g.flush()
        yield g


GRAPH_CASES: dict[str, tuple[type[Exception], str, Callable[[Graph], Any]]] = {
    "export 0": (ValueError, "max_batch_bytes", lambda g: g.export(0)),
    "export -1": (ValueError, "max_batch_bytes", lambda g: g.export(-1)),
    "export bool": (TypeError, "max_batch_bytes", lambda g: g.export(True)),
    "export float": (TypeError, "max_batch_bytes", lambda g: g.export(4096.0)),
    "export str": (TypeError, "max_batch_bytes", lambda g: g.export("4096")),
    "export None": (TypeError, "max_batch_bytes", lambda g: g.export(None)),
    "export_stream 0": (ValueError, "max_batch_bytes", lambda g: g.export_stream(0)),
    "export_stream -5": (ValueError, "max_batch_bytes", lambda g: g.export_stream(-5)),
    "export_stream bool": (TypeError, "max_batch_bytes", lambda g: g.export_stream(False)),
    "export_stream str": (TypeError, "max_batch_bytes", lambda g: g.export_stream("1")),
    "children of a leaf": (ValueError, "level", lambda g: g.child_summaries(LEAF_LEVEL, 0)),
    "children level -1": (ValueError, "level", lambda g: g.child_summaries(-1, 0)),
    "children level str": (TypeError, "level", lambda g: g.child_summaries("0", 0)),
    "children level bool": (TypeError, "level", lambda g: g.child_summaries(True, 0)),
    "children prefix None": (TypeError, "prefix", lambda g: g.child_summaries(0, None)),
    "children prefix 256": (ValueError, "prefix", lambda g: g.child_summaries(1, 256)),
    "children root prefix 1": (ValueError, "prefix", lambda g: g.child_summaries(0, 1)),
    "children prefix -1": (ValueError, "prefix", lambda g: g.child_summaries(1, -1)),
    "nodes None": (TypeError, "pairs", lambda g: g.node_batches(None)),
    "nodes int": (TypeError, "pairs", lambda g: g.node_batches(5)),
    "nodes str": (TypeError, "pair", lambda g: g.node_batches("ab")),
    "nodes one pair": (TypeError, "pair", lambda g: g.node_batches((1, 0))),
    "nodes short": (TypeError, "pair", lambda g: g.node_batches([(1,)])),
    "nodes level past leaves": (ValueError, "level", lambda g: g.node_batches([(3, 0)])),
    "nodes level bool": (TypeError, "level", lambda g: g.node_batches([(True, 0)])),
    "nodes prefix str": (TypeError, "prefix", lambda g: g.node_batches([(0, "0")])),
    "nodes prefix 65536": (ValueError, "prefix", lambda g: g.node_batches([(2, 1 << 16)])),
    "nodes second bad": (ValueError, "prefix", lambda g: g.node_batches([(1, 0), (1, 256)])),
}


class _LockHeld:
    """The graph's lock held by another thread (a sync session merging, say) until
    :meth:`release`: a check must not wait for it."""

    def __init__(self, graph: Graph) -> None:
        self._release = threading.Event()
        held = threading.Event()

        def hold() -> None:
            with graph._lock:
                held.set()
                self._release.wait(PROMPT * 4)

        self._thread = threading.Thread(target=hold, daemon=True)
        self._thread.start()
        assert held.wait(PROMPT)

    def release(self) -> None:
        self._release.set()
        self._thread.join(PROMPT)


@pytest.mark.parametrize("name", sorted(GRAPH_CASES))
def test_graph_refuses_bad_export_sizes_and_nodes_at_the_call(graph: Graph, name: str) -> None:
    error, named, call = GRAPH_CASES[name]
    before = graph.snapshot()
    lock = _LockHeld(graph)
    try:
        # (a generator method raises here too: nothing is iterated)
        raised = raised_within(lambda: call(graph), PROMPT, unstick=lock.release)
    finally:
        lock.release()
    assert isinstance(raised, error), f"expected {error.__name__}, got {raised!r}"
    assert named in str(raised), raised
    assert graph.snapshot() == before
    graph.put("a", {"w": 4})  # still works
    assert graph.get_field("a", "w") == 4


def _fields(batches: Iterator[bytes]) -> set[tuple[bytes, bytes]]:
    return {(soul, field) for batch in batches for soul, field, *_ in entries(batch)}


def test_graph_good_export_sizes_and_nodes_still_read_the_table(graph: Graph) -> None:
    """The smallest size (1: raised to what one entry needs) and every level of node,
    with pairs as tuples or lists, read what they did; the table is read at the first
    batch, not at the call."""
    every = set(graph.snapshot())
    assert _fields(graph.export(1)) == every
    assert _fields(graph.export_stream(1)) == every
    assert _fields(graph.node_batches([(0, 0)])) == every
    assert _fields(graph.node_batches(())) == set()
    leaf = soul_leaf(b"b")
    under_b = {key for key in every if key[0] == b"b"}
    assert _fields(graph.node_batches([[LEAF_LEVEL, leaf]])) >= under_b
    assert _fields(graph.node_batches([(1, leaf >> 8)])) >= under_b
    root = graph.child_summaries(0, 0)
    assert sum(n for _, n in root.values()) == len(every)
    assert leaf in graph.child_summaries(1, leaf >> 8)
    # made now, read later: a field written in between is in the batches
    later = graph.export()
    graph.set("c", "v", 1)
    assert (b"c", b"v") in _fields(later)
