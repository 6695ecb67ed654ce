"""Collaborative values (dtp.graph.collab): Yjs documents in fields, edited through the
graph's one write path, stored as records, synced with the graph, in every tier."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("pycrdt")

from dtp import HostIdentity
from dtp.errors import NotAReader, NotTheAuthor
from dtp.graph import Graph, GraphServer, connect
from dtp.graph.collab import (
    CHUNK,
    CollabError,
    Record,
    chunk_soul,
    decode_record,
    encode_record,
)
from dtp.graph.rules import RuleRefused, Update


def sync(a: Graph, b: Graph) -> None:
    """What a sync session carries, both ways."""
    for batch in list(a.export()):
        b.merge(batch)
    for batch in list(b.export()):
        a.merge(batch)


def wait_for(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_text_edits_in_code_points_read_back() -> None:
    g = Graph()
    note = g.text("note/1", "body")
    note.insert(0, "héllo")
    note.insert(5, " 😀 wörld")
    note.delete(0, 1)
    note.append("!")
    assert note.value == "éllo 😀 wörld!"
    assert len(note) == len("éllo 😀 wörld!")
    note.insert(6, "x")  # after the emoji: a code point, not its UTF-8 bytes
    assert note.value == "éllo 😀x wörld!"
    # the field links to the document's node, which links to the chunk of records
    assert g.get("note/1") == {"body": {"#": "note/1/body"}}
    chunk = chunk_soul("note/1/body", note.client_id, 0)
    assert g.get("note/1/body") == {chunk.rsplit("/", 1)[1]: {"#": chunk}}
    assert sorted(g.get(chunk)) == ["0", "1", "2", "3", "4"]
    g.close()


def test_a_position_outside_the_text_is_refused_and_changes_nothing() -> None:
    g = Graph()
    note = g.text("note/1", "body")
    note.insert(0, "ab😀")
    before = g.snapshot()
    for bad in (
        lambda: note.insert(4, "x"),
        lambda: note.insert(-1, "x"),
        lambda: note.delete(2, 2),
        lambda: note.insert(True, "x"),
        lambda: note.insert(0, 5),
        lambda: note.insert(0, "\ud800"),
    ):
        with pytest.raises(CollabError):
            bad()
    assert note.value == "ab😀"
    assert g.snapshot() == before
    g.close()


def test_array_and_map_hold_json() -> None:
    g = Graph()
    items = g.array("board/1", "items")
    items.append(1, "two", {"three": [3, 3.5]}, None, True)
    items.insert(1, 1.5)
    items.delete(0)
    assert items.value == [1.5, "two", {"three": [3, 3.5]}, None, True]
    meta = g.map("board/1", "meta")
    meta.set("title", "Board")
    meta.update({"cols": 3, "owner": None})
    meta.delete("owner")
    meta.delete("nothing")  # nothing to delete: no record
    assert meta.value == {"title": "Board", "cols": 3}
    for bad in (
        lambda: items.append(float("nan")),
        lambda: items.append(2**60),
        lambda: items.append(object()),
        lambda: meta.set("k", {1: "x"}),
        lambda: items.delete(5),
    ):
        with pytest.raises(CollabError):
            bad()
    g.close()


def test_record_text_round_trips() -> None:
    record = Record(client=2**32 - 1, seq=300, clock=70000, deps={5: 9, 1: 2**40}, update=b"\x00")
    text = encode_record(record)
    assert text.startswith("y1:")
    assert decode_record(text) == record
    for bad in ("y1:", "y1:!!", "y2:AAAA", 5, None, "y1:" + "gICA"):
        assert decode_record(bad) is None


def test_two_replicas_editing_at_once_lose_nothing() -> None:
    a, b = Graph(), Graph()
    ta, tb = a.text("note/1", "body"), b.text("note/1", "body")
    ta.insert(0, "hello")
    sync(a, b)
    assert tb.value == "hello"
    ta.insert(5, " world")  # concurrently, at both ends
    tb.insert(0, "Oh, ")
    tb.delete(4, 1)
    sync(a, b)
    assert ta.value == tb.value == "Oh, ello world"
    # last-writer-wins would have kept one of the two edits
    a.close()
    b.close()


def test_a_new_replica_reads_what_is_stored_and_a_reopened_file_too(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    g = Graph(path)
    note = g.text("note/1", "body")
    for i in range(2 * CHUNK + 5):  # three chunks
        note.append(chr(ord("a") + i % 26))
    expected = note.value
    g.close()
    g = Graph(path)
    again = g.text("note/1", "body")
    assert again.value == expected
    assert again.client_id != note.client_id
    again.insert(0, ">")
    assert again.value == ">" + expected
    g.close()


def test_a_rule_refusing_a_record_raises_and_the_edit_is_undone() -> None:
    g = Graph()
    limit = 3

    def small(update: Update) -> str | None:
        if update.soul.startswith("note/1/body/") and int(update.field) >= limit:
            return "three edits at most"
        return None

    g.rules.add("small", small, prefix="note/")
    note = g.text("note/1", "body")
    for ch in "abc":
        note.append(ch)
    with pytest.raises(RuleRefused) as refused:
        note.append("d")
    assert refused.value.refusal.rule == "small"
    assert note.value == "abc"
    assert g.stats["refused_by_rule"] == {"small": 1}
    g.rules.remove("small")
    note.append("e")  # the replica goes on from what is stored
    other = Graph()
    sync(g, other)
    assert other.text("note/1", "body").value == "abce"
    g.close()
    other.close()


def test_records_sync_over_dtp_live_both_ways() -> None:
    server_graph, client_graph = Graph(), Graph()
    key = HostIdentity.generate()
    with GraphServer(server_graph, ("127.0.0.1", 0), key) as server:
        ts = server_graph.text("doc/1", "body")
        ts.insert(0, "start ")
        done = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                connect(
                    client_graph,
                    server.address,
                    server_key=server.noise_public_key,
                    until_synced=False,
                )
            except BaseException as exc:  # (the server's close ends the session)
                errors.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert wait_for(lambda: client_graph.get("doc/1") is not None)
        tc = client_graph.text("doc/1", "body")
        assert wait_for(lambda: tc.value == "start ")
        for i in range(50):  # both ends type at once
            ts.append(f"s{i} ")
            tc.insert(0, f"c{i} ")
        assert wait_for(lambda: ts.value == tc.value and len(ts.value) == len(tc.value) > 300)
        text = ts.value
        for i in range(50):
            assert f"s{i} " in text and f"c{i} " in text
    thread.join(10)
    server_graph.close()
    client_graph.close()


def test_offline_edits_merge_when_the_peers_meet_again() -> None:
    a, b, c = Graph(), Graph(), Graph()
    texts = [g.text("doc/1", "body") for g in (a, b, c)]
    texts[0].insert(0, "shared")
    sync(a, b)
    sync(b, c)
    texts[0].insert(0, "A:")  # each offline
    texts[1].append(":B")
    texts[2].insert(3, "-C-")
    sync(a, b)
    sync(b, c)
    sync(a, b)
    assert texts[0].value == texts[1].value == texts[2].value
    for part in ("A:", ":B", "sha-C-red"):
        assert part in texts[0].value
    for g in (a, b, c):
        g.close()


def test_protected_value_only_its_author_writes() -> None:
    alice, mallory = HostIdentity.generate(), HostIdentity.generate()
    mine = Graph(identity=alice)
    note = mine.protected("notes/1", alice).text("body")
    note.insert(0, "signed")
    theirs = Graph()
    sync(mine, theirs)
    read = theirs.protected("notes/1", author=alice.sui_address).text("body")
    assert read.value == "signed"
    forged = theirs.protected("notes/1", mallory, author=alice.sui_address).text("body")
    with pytest.raises(NotTheAuthor):
        forged.insert(0, "mallory")
    assert forged.value == "signed"
    # Graph.text on a ~0x soul signs with the graph's identity, as put() does
    assert mine.text(note.soul, "body").value == "signed"
    mine.close()
    theirs.close()


def test_private_value_a_relay_holds_and_cannot_read() -> None:
    alice, bob, relay_key, eve = (HostIdentity.generate() for _ in range(4))
    mine, relay, bobs = Graph(), Graph(), Graph()
    diary = mine.private("diary/today", alice)
    diary.child("x")  # (the handle's children are nodes of the space)
    mine.private("diary", alice).add_reader(bob)
    text = diary.text("body")
    text.insert(0, "dear diary")
    sync(mine, relay)
    sync(relay, bobs)
    his = bobs.private("diary/today", bob, author=alice.sui_address).text("body")
    assert his.value == "dear diary"
    # the relay holds the records, as strings it cannot open
    chunk = chunk_soul(text.doc_soul, text.client_id, 0)
    assert relay.get(chunk)["0"].startswith("dtp/p1:")
    blind = relay.private("diary/today", relay_key, author=alice.sui_address).text("body")
    assert blind.value == "" and blind.skipped >= 1
    with pytest.raises(NotTheAuthor):
        his.insert(0, "bob was here")
    # a reader removed reads what came before, not what comes after
    mine.private("diary", alice).remove_reader(bob)
    text.append(", again")
    sync(mine, relay)
    sync(relay, bobs)
    assert text.value == "dear diary, again"
    assert his.value == "dear diary"
    with pytest.raises(NotAReader):
        eve_node = bobs.private("diary/today", eve, author=alice.sui_address)
        eve_node.get_field("body")
    for g in (mine, relay, bobs):
        g.close()


def test_graph_text_refuses_a_private_soul() -> None:
    alice = HostIdentity.generate()
    g = Graph(identity=alice)
    soul = g.private("diary", alice).soul
    with pytest.raises(Exception, match="private"):
        g.text(soul, "body")
    g.close()


def test_subscribers_hear_local_and_remote_changes() -> None:
    a, b = Graph(), Graph()
    ta, tb = a.text("n", "t"), b.text("n", "t")
    heard: list[str] = []
    cancel = tb.subscribe(heard.append)
    ta.insert(0, "x")
    sync(a, b)
    tb.append("y")
    sync(a, b)
    assert heard == ["x", "xy"]
    cancel()
    ta.append("z")
    sync(a, b)
    assert heard == ["x", "xy"]
    assert tb.value == "xyz"
    a.close()
    b.close()


def test_a_tracked_node_gets_no_version_of_its_documents_records() -> None:
    g = Graph()
    g.history.track("note/")
    g.put("note/1", {"title": "t"})
    note = g.text("note/1", "body")
    for ch in "abc":
        note.append(ch)
    assert [v.fields for v in g.history("note/1")] == [{"title": "t"}]
    assert g.history(note.doc_soul) == []
    assert note.value == "abc"
    g.close()


def test_state_vector_and_whole_update_carry_every_replicas_edits() -> None:
    """``state_vector()`` counts each author's Yjs clock (one a UTF-16 unit inserted),
    and ``as_update()`` rebuilds the same text in a plain Yjs document outside the graph."""
    pycrdt = pytest.importorskip("pycrdt")
    a, b = Graph(), Graph()
    ta, tb = a.text("note/1", "body"), b.text("note/1", "body")
    ta.insert(0, "héllo")
    sync(a, b)
    tb.insert(5, " 😀")  # three UTF-16 units: the emoji is a surrogate pair
    tb.delete(0, 1)  # a deletion makes no struct: the clock does not move
    sync(a, b)
    assert ta.state_vector() == tb.state_vector() == {ta.client_id: 5, tb.client_id: 3}
    outside = pycrdt.Doc()
    outside.apply_update(ta.as_update())
    assert str(outside.get("text", type=pycrdt.Text)) == ta.value == "éllo 😀"
    a.close()
    b.close()
