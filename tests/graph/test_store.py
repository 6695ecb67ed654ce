"""dtp.graph: values, hybrid clock, the Graph API, subscriptions, persistence, deferral
and the signed user space (docs/graph.md).

Graph store: subscribers hear of every committed change, also when the put() or
merge() that applied it fails afterwards.

put() and merge() first apply the deferred updates now due, then their own batch.
When that batch failed (a peer's malformed batch; a value too large, or a user-space
write without the identity), the exception skipped the delivery: the deferred updates
were in the table, logged and forwarded to sync peers, but no subscriber ever heard of
them.

Graph store: change streams end when the graph is closed; a damaged log
entry is a storage error.

``Graph.changes()`` readers waited for ever once the graph was closed (no change can
come any more): an ``async for`` over a closed graph's changes never ended.

put() of nested mappings that reach one node's field by two paths is refused whole
(it wrote both at one state, and the merge kept one of them by its bytes)."""

from __future__ import annotations

import asyncio
import itertools
import math
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.errors import LocalProtocolError, RemoteProtocolError
from dtp.graph import (
    Change,
    Graph,
    MergeReport,
    decode_value,
    encode_value,
    link,
    link_soul,
    namespace,
    user_soul,
)
from dtp.graph._clock import STEP, HybridClock
from dtp.graph._persist import GraphStorageError
from dtp.identity.keys import HostIdentity
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate

HAMS = ["c", "python"]

# what a Gun peer holds in a field (docs/graph.md, "Values")
gun_values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
    | st.text(min_size=1, max_size=8).filter(lambda s: s.isprintable()).map(link)
)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- values ------------------------------------------------------------------------------------


@given(gun_values)
def test_value_round_trip_and_canonical(value: object) -> None:
    data = encode_value(value)
    back = decode_value(data)
    assert back == value  # (as numbers: 2.0 may read back as 2)
    assert encode_value(back) == data  # canonical: re-encoding gives the same bytes


def test_value_encoding_is_deterministic() -> None:
    assert encode_value("é") == '"é"'.encode()
    assert encode_value(1) == encode_value(1.0) == b"1"  # one number type, as in Gun
    assert link("user/2") == {"#": "user/2"}
    assert encode_value(link("user/2")) == b'{"#":"user/2"}'
    assert link_soul({"#": "user/2"}) == "user/2"
    assert link_soul({"#": "x", "y": 1}) is None


@pytest.mark.parametrize(
    "bad", [math.nan, math.inf, {1: 2}, {"a": 1}, [1], (1,), object(), b"bytes", 2**53 + 1]
)
def test_value_rejects_non_json(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode_value(bad)


def test_decode_value_rejects_garbage() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_value(b"\xff\xfe")


# -- clock ----------------------------------------------------------------------------------------


def test_clock_orders_writes_within_one_millisecond() -> None:
    fake = FakeClock(1000.4)
    clock = HybridClock(fake)
    states = [clock.next() for _ in range(1000)]
    assert states[0] == 1000.0
    assert all(b > a for a, b in itertools.pairwise(states))
    assert states[1] - states[0] == STEP
    fake.now = 5000.0
    assert clock.next() == 5000.0


def test_clock_never_goes_back_and_passes_after() -> None:
    fake = FakeClock(1000.0)
    clock = HybridClock(fake, last=2000.0)
    assert clock.next() > 2000.0
    assert clock.next(after=3000.0) > 3000.0
    assert clock.machine_state() == 1000.0 + clock.max_drift_ms


# -- the Graph API --------------------------------------------------------------------------------


@pytest.mark.parametrize("ham", HAMS)
def test_put_get_links_walk(ham: str) -> None:
    g = Graph(ham=ham)
    g.put("user/1", {"name": "alice", "age": 30, "friend": link("user/2"), "tags": "a b"})
    g.put("user/2", {"name": "bob", "address": {"city": "Paris"}})
    assert g.get("user/1") == {
        "name": "alice",
        "age": 30,
        "friend": {"#": "user/2"},
        "tags": "a b",
    }
    assert g.get("user/2") == {"name": "bob", "address": {"#": "user/2/address"}}
    assert g.get("user/2/address") == {"city": "Paris"}
    assert g.walk("user/1", "friend", "address") == "user/2/address"
    assert g.get_field("user/1", "name") == "alice"
    assert g.get_field("user/1", "missing", "x") == "x"
    assert g.get("nobody") is None
    assert g.souls() == ["user/1", "user/2", "user/2/address"]
    assert "user/1" in g and "nobody" not in g
    with pytest.raises(KeyError):
        g.walk("user/1", "name")
    with pytest.raises(LocalProtocolError):
        g.put("", {"a": 1})
    with pytest.raises(LocalProtocolError):
        g.put("x", {})


@pytest.mark.parametrize("ham", HAMS)
def test_successive_writes_win_within_one_millisecond(ham: str) -> None:
    fake = FakeClock()
    g = Graph(ham=ham, now_ms=fake)
    for i in range(50):
        g.set("counter", "value", i)
    assert g.get_field("counter", "value") == 49
    assert g.state_of("counter", "value") == fake.now + 49 * STEP


@pytest.mark.parametrize("ham", HAMS)
def test_subscriptions_callbacks(ham: str) -> None:
    g = Graph(ham=ham)
    seen: list[Change] = []
    names: list[Change] = []
    sub = g.subscribe("user/1", seen.append)
    g.subscribe("user/1", names.append, field="name")
    g.put("user/1", {"name": "alice", "age": 1})
    g.put("user/2", {"name": "other"})
    remote = Graph(ham=ham)
    remote.put("user/1", {"name": "carol"})
    for batch in remote.export():
        g.merge(batch)
    assert [(c.field, c.value) for c in seen] == [("name", "alice"), ("age", 1), ("name", "carol")]
    assert [c.value for c in names] == ["alice", "carol"]
    sub.cancel()
    g.set("user/1", "age", 2)
    assert len(seen) == 3 and len(names) == 2


def test_async_change_stream() -> None:
    async def main() -> list[object]:
        g = Graph()
        stream = g.changes("doc", field="text")
        g.set("doc", "text", "hello")
        g.set("doc", "other", 1)
        g.set("doc", "text", "world")
        got = [(await stream.__anext__()).value, (await stream.__anext__()).value]
        stream.close()
        return got

    assert asyncio.run(main()) == ["hello", "world"]


# -- deferral -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ham", HAMS)
def test_future_timestamp_is_deferred_not_applied(ham: str) -> None:
    fake = FakeClock(1_000_000.0)
    g = Graph(ham=ham, now_ms=fake, max_drift_ms=1000.0)
    g.set("doc", "title", "honest")
    evil = encode_ham_batch([HamUpdate(b"doc", b"title", 1e15, encode_value("from the future"))])
    report = g.merge(evil)
    assert report.deferred == 1 and report.applied == 0
    assert g.get_field("doc", "title") == "honest"
    assert g.deferred_count == 1
    fake.now = 2_000_000.0
    assert g.advance() == 0  # still ahead of the clock
    fake.now = 1e15
    assert g.advance() == 1
    assert g.get_field("doc", "title") == "from the future"


@pytest.mark.parametrize("ham", HAMS)
def test_small_drift_is_applied(ham: str) -> None:
    fake = FakeClock(1_000_000.0)
    g = Graph(ham=ham, now_ms=fake, max_drift_ms=1000.0)
    batch = encode_ham_batch([HamUpdate(b"doc", b"t", 1_000_500.0, encode_value("x"))])
    assert g.merge(batch).applied == 1
    # our next write to that field still wins over what we have seen
    g.set("doc", "t", "mine")
    assert g.get_field("doc", "t") == "mine"


def test_malformed_batch_raises_typed_error() -> None:
    g = Graph()
    with pytest.raises(RemoteProtocolError):
        g.merge(b"\x01\x05\x00\x00\x00garbage")
    assert len(g) == 0


# -- persistence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ham", HAMS)
def test_restart_from_sqlite_gives_the_same_state(tmp_path: Path, ham: str) -> None:
    path = tmp_path / "g.db"
    fake = FakeClock()
    g = Graph(path, ham=ham, now_ms=fake)
    for i in range(300):
        g.put(f"n/{i % 37}", {"v": i, "w": {"deep": i}})
    remote = Graph(ham=ham)
    remote.put("r", {"x": 1})
    for batch in remote.export():
        g.merge(batch)
    before = g.snapshot()
    last = g.clock.last
    g.close()
    h = Graph(path, ham=ham, now_ms=FakeClock(fake.now - 10_000))  # the wall clock went back
    assert h.snapshot() == before
    assert h.get("n/3") == g_node(before, "n/3")
    assert h.set("n/3", "v", "after") > last  # states keep increasing after a restart
    h.close()


def g_node(
    snapshot: dict[tuple[bytes, bytes], tuple[float, bytes]], soul: str
) -> dict[str, object]:
    return {
        f.decode(): decode_value(v) for (s, f), (_, v) in snapshot.items() if s == soul.encode()
    }


def test_writes_are_batched_and_log_compacted(tmp_path: Path) -> None:
    g = Graph(tmp_path / "g.db", flush_interval=3600)
    for i in range(5000):
        g.set("hot", "counter", i)
    storage = g.storage
    assert storage is not None
    assert storage.flushes <= 5  # 1024 batches per transaction, not one each
    g.flush()
    assert storage.compactions >= 1  # 5000 versions of one field collapse to one row
    assert storage.log_rows < 1100
    g.close()
    h = Graph(tmp_path / "g.db")
    assert h.get_field("hot", "counter") == 4999
    h.close()


def test_unflushed_writes_are_lost_only_without_close(tmp_path: Path) -> None:
    g = Graph(tmp_path / "g.db", flush_interval=3600)
    g.set("a", "b", 1)
    g.close()
    with pytest.raises(LocalProtocolError):
        g.set("a", "b", 2)
    assert Graph(tmp_path / "g.db").get_field("a", "b") == 1


# -- the signed user space -------------------------------------------------------------------------


@pytest.mark.parametrize("ham", HAMS)
def test_owner_writes_are_accepted_everywhere(ham: str) -> None:
    owner = HostIdentity.generate()
    mine = Graph(ham=ham, identity=owner)
    soul = user_soul(owner, "profile")
    mine.put(soul, {"name": "alice", "links": {"home": "https://x"}})
    assert mine.get(soul) == {"name": "alice", "links": {"#": soul + "/links"}}
    other = Graph(ham=ham)
    for batch in mine.export():
        report = other.merge(batch)
        assert report.refused == 0
    assert other.get(soul) == {"name": "alice", "links": {"#": soul + "/links"}}
    assert other.stats["refused"] == 0


@pytest.mark.parametrize("ham", HAMS)
def test_forged_writes_are_rejected_and_counted(ham: str) -> None:
    owner, mallory = HostIdentity.generate(), HostIdentity.generate()
    soul = user_soul(owner, "profile")
    honest = Graph(ham=ham, identity=owner)
    honest.set(soul, "name", "alice")
    victim = Graph(ham=ham)
    for batch in honest.export():
        victim.merge(batch)

    value = encode_value("mallory was here")
    state = 1e12
    unsigned = HamUpdate(soul.encode(), b"name", state, value)
    wrong_key = HamUpdate(
        soul.encode(),
        b"name",
        state,
        mallory.ed25519_public
        + mallory.sign(namespace.signing_message(soul.encode(), b"name", state, value))
        + value,
    )
    good = namespace.seal(owner, soul.encode(), b"name", state, value)
    tampered = HamUpdate(soul.encode(), b"name", state, good[:-2] + b'!"')
    replayed = HamUpdate(soul.encode(), b"other", state, good)  # signature of another field
    look_alike = ("~0x" + owner.sui_address[2:].upper() + "/profile").encode()
    bad_soul = HamUpdate(look_alike, b"name", state, value)
    public = HamUpdate(b"public", b"note", state, value)
    report = victim.merge(
        encode_ham_batch([unsigned, wrong_key, tampered, replayed, bad_soul, public])
    )
    assert report.refused == 5 and report.applied == 1
    assert victim.get_field(soul, "name") == "alice"
    assert victim.stats["refused"] == 5
    assert victim.stats["refused_by_reason"] == {
        namespace.UNSIGNED: 1,
        namespace.WRONG_KEY: 1,
        namespace.BAD_SIGNATURE: 2,
        namespace.BAD_SOUL: 1,
    }


def test_local_writes_to_foreign_user_space_are_refused() -> None:
    owner = HostIdentity.generate()
    g = Graph(identity=HostIdentity.generate())
    with pytest.raises(LocalProtocolError):
        g.set(user_soul(owner, "x"), "a", 1)
    with pytest.raises(LocalProtocolError):
        Graph().set(user_soul(owner, "x"), "a", 1)
    with pytest.raises(LocalProtocolError):
        g.set("~0x" + "A" * 64, "a", 1)
    g.set("~bob", "a", 1)  # not a Sui address: a public soul
    assert g.get("~bob") == {"a": 1}


T0 = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _graph_with_a_due_update(ham: str) -> tuple[Graph, Clock, list[Change]]:
    clock = Clock()
    graph = Graph(now_ms=clock, max_drift_ms=0, ham=ham)
    seen: list[Change] = []
    graph.subscribe("s", seen.append)
    report = graph.merge(encode_ham_batch([HamUpdate(b"s", b"f", T0 + 500, b'"later"')]))
    assert report.deferred == 1
    clock.now += 1000  # now due: the next put() or merge() applies it first
    return graph, clock, seen


@pytest.mark.parametrize("ham", ["c", "python"])
def test_a_malformed_batch_does_not_swallow_the_deferred_changes_it_applied(ham: str) -> None:
    graph, _, seen = _graph_with_a_due_update(ham)
    with pytest.raises(RemoteProtocolError):
        graph.merge(b"\x01\x05\x00\x00\x00garbage")
    assert graph.get_field("s", "f") == "later"
    assert [(c.soul, c.field, c.value) for c in seen] == [("s", "f", "later")]
    graph.close()


@pytest.mark.parametrize(
    ("soul", "fields"),
    [
        ("t", {"big": "x" * 2_000_000}),  # a value beyond HAM's 1 MiB
        ("~0x" + "ab" * 32, {"name": "no identity"}),  # user space, no identity
    ],
)
def test_a_failing_put_does_not_swallow_the_deferred_changes_it_applied(
    soul: str, fields: dict[str, str]
) -> None:
    graph, _, seen = _graph_with_a_due_update("c")
    with pytest.raises(LocalProtocolError):
        graph.put(soul, fields)
    assert graph.get_field("s", "f") == "later"
    assert [(c.soul, c.field, c.value) for c in seen] == [("s", "f", "later")]
    graph.close()


def test_change_streams_end_when_the_graph_closes() -> None:
    async def main() -> None:
        graph = Graph()
        stream = graph.changes("a")
        other = graph.changes("b", field="x")
        got: list[Change] = []

        async def read() -> None:
            async for change in stream:
                got.append(change)

        reader = asyncio.create_task(read())
        graph.put("a", {"x": 1})
        graph.put("a", {"x": 2})
        graph.close()
        # what was queued is still read, then the iteration ends
        await asyncio.wait_for(reader, 2)
        assert [c.value for c in got] == [1, 2]
        assert [c async for c in other] == []
        stream.close()  # (idempotent, also after the graph closed it)

    asyncio.run(main())


def test_a_change_stream_closed_from_another_thread_at_graph_close() -> None:
    async def main() -> None:
        graph = Graph()
        stream = graph.changes("a")
        waiting = asyncio.ensure_future(anext(stream, None))
        await asyncio.sleep(0)
        await asyncio.to_thread(graph.close)  # from a thread: woken through the loop
        assert await asyncio.wait_for(waiting, 2) is None

    asyncio.run(main())


def test_merge_reports_stay_hashable() -> None:
    """MergeReport gained dropped_leaves (a dict): a frozen dataclass hashes its fields,
    so hash() of any report raised TypeError, as it had not before."""
    graph = Graph(max_deferred_bytes=0)  # every update ahead of the clock is dropped
    report = graph.merge(encode_ham_batch([HamUpdate(b"a", b"f", 1e15, b"1")]))
    assert report.dropped == 1 and len(report.dropped_leaves) == 1
    assert hash(report) == hash(MergeReport(dropped=1))
    graph.close()


@pytest.mark.parametrize(
    "row",
    [
        b"\x01\x05\x00\x00\x00garbage",  # a count far beyond what follows
        b"\x07\x00\x00\x00\x00",  # an unknown batch version
        b"",  # nothing at all
    ],
)
def test_a_damaged_log_entry_is_a_storage_error(tmp_path: Path, row: bytes) -> None:
    """A log row that is not a HAM batch raised RemoteProtocolError at open -- blaming
    a peer for the file's damage -- where a corrupt file is a GraphStorageError."""
    path = tmp_path / "g.db"
    with Graph(path) as graph:
        graph.put("a", {"x": 1})
    db = sqlite3.connect(path)
    db.execute("INSERT INTO log (batch) VALUES (?)", (row,))
    db.commit()
    db.close()
    with pytest.raises(GraphStorageError, match="corrupt"):
        Graph(path)
    # the failed open let go of the file: repaired, it opens
    db = sqlite3.connect(path)
    db.execute("DELETE FROM log WHERE batch = ?", (row,))
    db.commit()
    db.close()
    with Graph(path) as graph:
        assert graph.get("a") == {"x": 1}


def test_two_paths_to_one_child_field_are_refused(tmp_path: Path) -> None:
    graph = Graph(tmp_path / "g.db")
    try:
        with pytest.raises(LocalProtocolError, match="twice"):
            graph.put("a", {"b": {"c": {"x": "first"}}, "b/c": {"x": "second"}})
        assert graph.get("a/b/c") is None and graph.get("a") is None  # nothing written
        graph.put("a", {"b": {"c": {"x": "first"}}, "b/d": {"x": "second"}})
        assert graph.get("a/b/c") == {"x": "first"}
        assert graph.get("a/b/d") == {"x": "second"}
    finally:
        graph.close()
