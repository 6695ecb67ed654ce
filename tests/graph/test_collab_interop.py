"""Collaborative values interoperate with Yjs itself: the same updates through ``yjs``
13.6 in Node.js (``tools/yjs``) and through dtp give the same documents, both ways --
records a page's replica writes (``dtp/graph/gun/demo/yrecords.mjs``) read in dtp,
records dtp writes read by that replica and by plain Yjs, and seeded streams of three
replicas (partitions, reordered and duplicated delivery) stored as records and read
back where Yjs ended. Node and npm are needed (the runner installs ``yjs`` from its
package-lock on first use)."""

from __future__ import annotations

import base64
import random
from typing import Any

import pytest

pytest.importorskip("pycrdt")

from bench import yjs_edges
from dtp.graph import Graph
from dtp.graph.collab import Record, chunk_soul, decode_record, encode_record
from dtp.graph.values import link

pytestmark = pytest.mark.skipif(
    not yjs_edges.available(), reason="node and npm are needed to run Yjs (tools/yjs)"
)
SOUL, FIELD = "doc/1", "body"
DOC = f"{SOUL}/{FIELD}"


def content(g: Graph) -> dict[str, Any]:
    """What ``yjs.js`` calls CONTENT, read through dtp's replicas."""
    return {
        "text": g.text(SOUL, FIELD).value,
        "array": g.array(SOUL, FIELD).value,
        "map": dict(sorted(g.map(SOUL, FIELD).value.items())),
    }


def store(g: Graph, chunk: str, field: str, text: str) -> None:
    """A record as a peer's replica writes it: the record, the chunk's link, the field's."""
    g.put(chunk, {field: text})
    g.put(DOC, {chunk.rsplit("/", 1)[1]: link(chunk)})
    g.put(SOUL, {FIELD: link(DOC)})


def records_of(g: Graph) -> list[tuple[str, str, str]]:
    """Every record the graph holds of the document: (chunk, field, text)."""
    out = []
    for name, target in sorted((g.get(DOC) or {}).items()):
        chunk = f"{DOC}/{name}"
        assert target == link(chunk)
        for field, text in sorted((g.get(chunk) or {}).items()):
            out.append((chunk, field, text))
    return out


def test_a_pages_records_read_in_dtp_and_back() -> None:
    edits = [
        ["insert", 0, "héllo 😀 wörld"],
        ["insert", 9, "big "],  # UTF-16 units: the emoji counts two
        ["delete", 0, 1],
        ["push", 1],
        ["push", {"k": [1, 2.5]}],
        ["set", "title", "Notes"],
        ["set", "n", 3],
        ["unset", "n"],
    ]
    page = yjs_edges.run_yjs({"author": {"client": 4242, "edits": edits}})
    rnd = random.Random(1)
    written = list(page["records"])
    rnd.shuffle(written)
    g = Graph()
    for chunk, field, text in written:
        store(g, chunk, field, text)
    assert content(g) == page["content"]
    assert page["content"]["text"] == "éllo 😀 big wörld"
    # dtp edits on top, read back by the page's replica and by plain Yjs
    text = g.text(SOUL, FIELD)
    text.insert(0, "✓ ")
    g.array(SOUL, FIELD).append("from python")
    g.map(SOUL, FIELD).set("by", "python")
    texts = [t for _, _, t in records_of(g)]
    rnd.shuffle(texts)
    back = yjs_edges.run_yjs({"records": {"texts": texts}})
    assert back["waiting"] == 0 and back["skipped"] == 0
    assert back["content"] == content(g)
    updates = [base64.b64encode(decode_record(t).update).decode() for t in texts]
    assert yjs_edges.run_yjs({"replay": {"updates": updates}})["content"] == content(g)
    g.close()


def test_concurrent_dtp_edits_read_by_yjs_in_any_order() -> None:
    a, b = Graph(), Graph()
    ta, tb = a.text(SOUL, FIELD), b.text(SOUL, FIELD)
    ta.insert(0, "base text")
    for batch in list(a.export()):
        b.merge(batch)
    rnd = random.Random(5)
    for i in range(60):
        t = ta if i % 2 else tb
        v = t.value
        if v and rnd.random() < 0.3:
            t.delete(rnd.randrange(len(v)), 1)
        else:
            t.insert(rnd.randrange(len(v) + 1), rnd.choice(["a", "é", "😀", "xyz"]))
        if i % 10 == 0:
            a.array(SOUL, FIELD).append(i)
            b.map(SOUL, FIELD).set(f"k{i % 3}", i)
    for batch in list(a.export()):
        b.merge(batch)
    for batch in list(b.export()):
        a.merge(batch)
    assert content(a) == content(b)
    texts = [t for _, _, t in records_of(a)]
    for seed in range(3):
        random.Random(seed).shuffle(texts)
        answer = yjs_edges.run_yjs({"records": {"texts": texts}})
        assert answer["waiting"] == 0
        assert answer["content"] == content(a)
    a.close()
    b.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_seeded_streams_stored_as_records_end_where_yjs_ends(seed: int) -> None:
    answer = yjs_edges.run_yjs({"generate": {"seed": seed, "ops": 1500}})
    updates = answer["updates"]
    for r in range(3):
        g = Graph()
        for index in answer["logs"][r]:  # the replica's delivery order, duplicates too
            u = updates[index]
            deps = {int(c): t for c, t in u["deps"].items()}
            record = Record(u["client"], u["seq"], u["clock"], deps, base64.b64decode(u["update"]))
            text = encode_record(record)
            store(g, chunk_soul(DOC, record.client, record.seq), str(record.seq), text)
        assert content(g) == answer["final"][r]
        g.close()


@pytest.mark.parametrize("seed", [4, 6])
def test_the_installed_pycrdt_ends_where_yjs_ends_through_the_replica(seed: int) -> None:
    """bench/yjs_edges.py's measurement on two seeds, with the pycrdt installed: through
    the graph's replica (causal order) every replica of the stream ends where Yjs
    ended (``python -m bench.yjs_edges`` runs all 20, and the updates as they come)."""
    answer = yjs_edges.stream(seed, 2000)
    end_differs, _ = yjs_edges.replay(answer, yjs_edges.DtpReplica)
    assert not end_differs
