"""Edit history (dtp.graph._history): versions written with each put to a tracked node,
read back checked and in one order; concurrent edits on two peers synced over DTP make
the same DAG on both (two heads, then a version with two parents), kept across a
restart; the rule a tracked prefix registers refuses forged history fields, and
history() skips a forged version a graph that does not track took in."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dtp.graph import Graph, GraphServer, connect
from dtp.graph._history import (
    Version,
    heads_soul,
    record_text,
    version_id,
    version_soul,
)
from dtp.graph.namespace import user_soul
from dtp.graph.rules import RuleRefused
from dtp.graph.values import encode_value
from dtp.identity.keys import HostIdentity
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate

HAMS = ["c", "python"]


def clock(start: float = 1.7e12) -> object:
    now = [start]

    def tick() -> float:
        now[0] += 10
        return now[0]

    return tick


@pytest.mark.parametrize("ham", HAMS)
def test_each_put_to_a_tracked_node_writes_a_version(ham: str) -> None:
    g = Graph(ham=ham)
    g.history.track("doc/")
    g.history.author = "alice"
    s1 = g.put("doc/1", {"title": "Draft", "body": "hello"})
    s2 = g.put("doc/1", {"title": "Final"})
    s3 = g.put("doc/1", {"body": None})
    g.put("other/1", {"x": 1})
    versions = g.history("doc/1")
    assert [(v.state, v.fields) for v in versions] == [
        (s1, {"body": "hello", "title": "Draft"}),
        (s2, {"title": "Final"}),
        (s3, {"body": None}),
    ]
    assert [v.parents for v in versions] == [(), (versions[0].id,), (versions[1].id,)]
    assert {(v.author, v.verified, v.soul) for v in versions} == {("alice", False, "doc/1")}
    assert versions[0].time.year >= 2023
    assert g.history.heads("doc/1") == [versions[2].id]
    assert g.history("other/1") == [] and g.history("doc/2") == []
    # the data node holds only what was written to it
    assert g.get("doc/1") == {"title": "Final", "body": None}
    assert g.history.node_at("doc/1", versions[1].id) == {"body": "hello", "title": "Final"}
    with pytest.raises(KeyError):
        g.history.node_at("doc/1", "0" * 64)
    # a version is named by its content
    text = g.get_field(version_soul("doc/1", versions[0].id), "v")
    assert isinstance(text, str) and version_id(text) == versions[0].id
    g.history.untrack("doc/")
    g.put("doc/1", {"title": "untracked"})
    assert len(g.history("doc/1")) == 3


def test_nested_nodes_keep_their_own_history_and_histories_have_none() -> None:
    g = Graph()
    g.history.track("user/")
    g.put("user/1", {"name": "a", "address": {"city": "Paris"}})
    assert [v.fields for v in g.history("user/1")] == [
        {"address": {"#": "user/1/address"}, "name": "a"}
    ]
    assert [v.fields for v in g.history("user/1/address")] == [{"city": "Paris"}]
    assert g.history(heads_soul("user/1")) == []
    with pytest.raises(ValueError):
        g.history.track("user/1/.history")
    with pytest.raises(ValueError):
        g.history.track("")


def test_in_a_signed_space_the_author_is_the_owner() -> None:
    owner = HostIdentity.generate()
    g = Graph(identity=owner)
    soul = user_soul(owner, "diary")
    g.history.track(soul)
    g.history.author = "someone else"  # (claimed only for public souls)
    g.put(soul, {"entry": "dear diary"})
    (version,) = g.history(soul)
    assert version.author == owner.sui_address and version.verified
    # the version node sits in the owner's space: signed like any field of it
    vsoul = version_soul(soul, version.id).encode()
    _, stored = g.snapshot()[vsoul, b"v"]
    assert len(stored) > 96 and stored[:32] == owner.ed25519_public  # key, signature, record


def test_a_put_a_rule_refuses_writes_no_version() -> None:
    g = Graph()
    g.history.track("doc/")
    g.rules.add("no-x", lambda u: u.field != "x", prefix="doc/", souls=r"doc/\d+")
    g.put("doc/1", {"a": 1})
    with pytest.raises(RuleRefused):
        g.put("doc/1", {"x": 1})
    assert len(g.history("doc/1")) == 1


def _sync(a: Graph, b: Graph) -> None:
    with GraphServer(a, ("127.0.0.1", 0), HostIdentity.generate()) as server:
        connect(b, server.address, server_key=server.noise_public_key, timeout=20)


@pytest.mark.parametrize("ham", HAMS)
def test_concurrent_edits_on_two_peers_make_one_dag_on_both(ham: str, tmp_path: Path) -> None:
    a = Graph(tmp_path / "a.db", ham=ham, now_ms=clock())  # type: ignore[arg-type]
    b = Graph(tmp_path / "b.db", ham=ham, now_ms=clock(1.7e12 + 3))  # type: ignore[arg-type]
    for g, name in ((a, "alice"), (b, "bob")):
        g.history.track("doc/")
        g.history.author = name
    a.put("doc/1", {"title": "one"})
    _sync(a, b)
    (first,) = b.history("doc/1")
    # concurrent: neither has seen the other's edit
    a.put("doc/1", {"title": "two (alice)"})
    b.put("doc/1", {"body": "bob's words"})
    _sync(a, b)
    history = a.history("doc/1")
    assert history == b.history("doc/1")
    assert len(history) == 3 and len(a.history.heads("doc/1")) == 2
    assert a.history.heads("doc/1") == b.history.heads("doc/1")
    branches = history[1:]
    assert {v.author for v in branches} == {"alice", "bob"}
    assert all(v.parents == (first.id,) for v in branches)
    # the next edit follows both heads: a version with two parents
    b.put("doc/1", {"title": "three"})
    _sync(a, b)
    history = a.history("doc/1")
    assert history == b.history("doc/1") and len(history) == 4
    merged = history[-1]
    assert merged.parents == tuple(sorted(v.id for v in branches))
    assert a.history.heads("doc/1") == b.history.heads("doc/1") == [merged.id]
    assert a.history.node_at("doc/1", merged.id) == {"body": "bob's words", "title": "three"}
    assert a.snapshot() == b.snapshot()
    a.close()
    b.close()
    reopened = Graph(tmp_path / "a.db", ham=ham)
    assert reopened.history("doc/1") == history
    reopened.close()


def _version_batch(soul: str, record: str, state: float, vid: str | None = None) -> bytes:
    vid = vid or version_id(record)
    return encode_ham_batch(
        [HamUpdate(version_soul(soul, vid).encode(), b"v", state, encode_value(record))]
    )


def test_the_history_rule_refuses_forged_fields() -> None:
    g = Graph(now_ms=lambda: 2e12)
    g.history.track("doc/")
    good = record_text("doc/1", 1e12, "eve", [], [("title", '"x"')])
    assert g.merge(_version_batch("doc/1", good, 1e12)).applied == 1
    forged = {
        "content that does not hash to its id": _version_batch("doc/1", good, 1e12, "a" * 64),
        "another state than recorded": _version_batch(
            "doc/1", record_text("doc/1", 1e12, "eve", [], [("t", "1")]), 1e12 + 5
        ),
        "another node": _version_batch(
            "doc/1", record_text("doc/2", 1e12, "eve", [], [("t", "1")]), 1e12
        ),
        "not canonical": _version_batch(
            "doc/1", record_text("doc/1", 1e12, "eve", [], [("t", "1")]).replace(":", ": ", 1), 1e12
        ),
        "not a record": _version_batch("doc/1", '{"hello":1}', 1e12),
        "a second field": encode_ham_batch(
            [HamUpdate(version_soul("doc/1", version_id(good)).encode(), b"w", 1e12, b"1")]
        ),
        "heads linking elsewhere": encode_ham_batch(
            [
                HamUpdate(
                    heads_soul("doc/1").encode(),
                    version_id(good).encode(),
                    1e12,
                    b'{"#":"elsewhere"}',
                )
            ]
        ),
        "heads not named by an id": encode_ham_batch(
            [HamUpdate(heads_soul("doc/1").encode(), b"head", 1e12, b"null")]
        ),
    }
    for why, batch in forged.items():
        report = g.merge(batch)
        assert report.refused == 1, why
    assert g.stats["refused_by_rule"] == {"history:doc/": len(forged)}
    link = encode_value({"#": version_soul("doc/1", version_id(good))})
    heads = encode_ham_batch(
        [HamUpdate(heads_soul("doc/1").encode(), version_id(good).encode(), 1e12, link)]
    )
    assert g.merge(heads).applied == 1
    (version,) = g.history("doc/1")
    assert (version.author, version.verified, version.fields) == ("eve", False, {"title": "x"})


def test_a_graph_that_does_not_track_takes_forgeries_but_history_skips_them() -> None:
    g = Graph(now_ms=lambda: 2e12)
    record = record_text("doc/1", 1e12, "eve", [], [("title", '"x"')])
    bogus_id = hashlib.sha256(b"something else").hexdigest()
    link = encode_value({"#": version_soul("doc/1", bogus_id)})
    g.merge(_version_batch("doc/1", record, 1e12, bogus_id))
    g.merge(
        encode_ham_batch([HamUpdate(heads_soul("doc/1").encode(), bogus_id.encode(), 1e12, link)])
    )
    assert g.history.heads("doc/1") == [bogus_id]
    assert g.history("doc/1") == []
    # and a put that tracks from now on does not follow it
    g.history.track("doc/")
    g.put("doc/1", {"title": "y"})
    (version,) = g.history("doc/1")
    assert isinstance(version, Version) and version.parents == ()
