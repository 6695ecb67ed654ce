"""dtp.graph sync: convergence of replicas (hypothesis, against a reference model), the
sans-I/O session (efficiency, bad input), and real peers over DTP on 127.0.0.1.

Replicas converge: dtp.testing's GraphMachine -- graphs in a ring or a star of live
sync sessions (sans-I/O, bytes delivered in random splits), links cut at random (what
was in flight is lost) and joined again, puts of every value type, deferred and tying
updates -- on replicas of both HAM implementations, with writer threads putting on
random replicas while the links carry bytes. Once every link has drained, every
replica holds the same table and summary."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

import dtp.aio
from dtp.errors import DTPError, RemoteProtocolError
from dtp.graph import Graph, GraphServer, GraphSyncError, SyncSession, connect, sync_stream
from dtp.graph.sync import DATA, END, HELLO, SUM, VERSION
from dtp.identity.keys import HostIdentity
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate
from dtp.testing.machines import GraphMachine
from tests.support.paths import ROOT
from tests.support.polling import wait_for

T0 = 1_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def model(updates: list[HamUpdate]) -> dict[tuple[bytes, bytes], tuple[float, bytes]]:
    """The reference: per field, the maximum (state, value) -- HAM's rules."""
    out: dict[tuple[bytes, bytes], tuple[float, bytes]] = {}
    for soul, field, state, value in updates:
        cur = out.get((soul, field))
        if cur is None or (state, value) > cur:
            out[soul, field] = (state, value)
    return out


updates_st = st.lists(
    st.builds(
        HamUpdate,
        st.sampled_from([b"a", b"b", b"node/1", b"node/2"]),
        st.sampled_from([b"x", b"y", b"name"]),
        # a few states are ahead of the replicas' clock (T0): deferred, applied later
        st.sampled_from([1.0, 2.0, 3.0, 999_999.0, T0, T0 + 5.0, T0 + 1e9]),
        st.sampled_from([b"1", b"2", b'"a"', b'"b"', b"null"]),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60)
@given(updates_st, st.integers(3, 5), st.randoms(use_true_random=False))
def test_replicas_converge_in_any_order(
    updates: list[HamUpdate], replicas: int, rnd: random.Random
) -> None:
    clock = FakeClock()
    graphs = [
        Graph(now_ms=clock, max_drift_ms=0, ham=rnd.choice(["c", "python"]))
        for _ in range(replicas)
    ]
    for g in graphs:
        # every replica gets every update, in its own order, some twice, in random batches
        mine = updates + rnd.sample(updates, k=rnd.randint(0, len(updates)))
        rnd.shuffle(mine)
        while mine:
            n = rnd.randint(1, len(mine))
            g.merge(encode_ham_batch(mine[:n]))
            mine = mine[n:]
    ahead = {u for u in updates if u.state > T0}  # (an identical update is queued once)
    assert all(g.deferred_count >= len(ahead) for g in graphs)  # held, not applied
    clock.now = T0 + 2e9  # time passes: deferred updates come due
    for g in graphs:
        g.advance()
    expected = model(updates)
    for g in graphs:
        assert g.snapshot() == expected


def _pump(a: SyncSession, b: SyncSession, rnd: random.Random | None = None) -> None:
    """Carry bytes both ways until quiet, split at random points when ``rnd`` is given."""
    for _ in range(10_000):
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db:
            return
        for data, to in ((da, b), (db, a)):
            while data:
                n = len(data) if rnd is None else rnd.randint(1, len(data))
                to.receive_data(data[:n])
                data = data[n:]
    raise AssertionError("sync did not settle")


def sync_pair(
    ga: Graph, gb: Graph, rnd: random.Random | None = None
) -> tuple[SyncSession, SyncSession]:
    a, b = SyncSession(ga), SyncSession(gb)
    a.start()
    b.start()
    _pump(a, b, rnd)
    assert a.synced and b.synced
    a.close()
    b.close()
    return a, b


@settings(max_examples=40)
@given(st.lists(updates_st, min_size=3, max_size=4), st.randoms(use_true_random=False))
def test_sync_sessions_converge(parts: list[list[HamUpdate]], rnd: random.Random) -> None:
    clock = FakeClock(T0 + 2e9)  # nothing deferred here: summaries compare tables
    graphs = [Graph(now_ms=clock, max_drift_ms=0, ham=rnd.choice(["c", "python"])) for _ in parts]
    for g, part in zip(graphs, parts, strict=True):
        g.merge(encode_ham_batch(part))
    # a chain of syncs in random order, then there and back along another: after the
    # second chain's way back everyone has everything
    order = list(range(len(graphs)))
    for chain in range(2):
        rnd.shuffle(order)
        pairs = list(itertools.pairwise(order))
        if chain:
            pairs += [(j, i) for i, j in reversed(pairs)]
        for i, j in pairs:
            sync_pair(graphs[i], graphs[j], rnd)
    expected = model([u for part in parts for u in part])
    for g in graphs:
        assert g.snapshot() == expected


def _filled(n_fields: int, prefix: str = "node", **kw: Any) -> Graph:
    g = Graph(**kw)
    for i in range(n_fields // 10):
        g.put(f"{prefix}/{i}", {f"f{j}": f"value {i}.{j}" for j in range(10)})
    return g


def _data_size(g: Graph) -> int:
    return sum(len(b) for b in g.export())


@pytest.mark.parametrize("ham", ["c", "python"])
def test_synced_peers_exchange_under_one_percent(ham: str) -> None:
    a = _filled(20_000, ham=ham)
    b = Graph(ham=ham)
    first_a, first_b = sync_pair(a, b)
    assert b.snapshot() == a.snapshot()
    size = _data_size(a)
    assert first_a.stats["bytes_sent"] >= size  # the fresh peer got it all ...
    assert first_b.stats["bytes_sent"] < 100  # ... and sent almost nothing back
    again_a, again_b = sync_pair(a, b)
    total = again_a.stats["bytes_sent"] + again_b.stats["bytes_sent"]
    assert total < size / 100, (total, size)
    # a few changes on each side: only the differing leaves move
    a.put("node/5", {"f1": "changed on a"})
    b.put("node/77", {"f2": "changed on b"})
    c_a, c_b = sync_pair(a, b)
    assert a.snapshot() == b.snapshot()
    assert c_a.stats["bytes_sent"] + c_b.stats["bytes_sent"] < size / 20


def test_offline_peer_catches_up_with_little_traffic() -> None:
    a = _filled(5_000)
    b = Graph()
    sync_pair(a, b)
    for i in range(20):  # b is offline while a keeps writing
        a.put(f"node/{i * 13}", {"f0": f"update {i}"})
    sa, _sb = sync_pair(a, b)
    assert b.snapshot() == a.snapshot()
    assert sa.stats["bytes_sent"] < _data_size(a) / 10


def test_live_updates_reach_every_peer_through_a_chain() -> None:
    a, b, c = Graph(), Graph(), Graph()
    ab, ba = SyncSession(a), SyncSession(b)
    bc, cb = SyncSession(b), SyncSession(c)
    for s in (ab, ba, bc, cb):
        s.start()
    _pump(ab, ba)
    _pump(bc, cb)
    a.put("doc", {"text": "from a"})
    c.put("doc", {"author": "c"})
    for _ in range(3):
        _pump(ab, ba)
        _pump(bc, cb)
    assert a.get("doc") == b.get("doc") == c.get("doc") == {"text": "from a", "author": "c"}
    assert a.snapshot() == b.snapshot() == c.snapshot()


# -- bad input ------------------------------------------------------------------------------------


def _frame(message: object) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


HELLO_OK = [HELLO, VERSION, b"r" * 16, 0, 0]


@pytest.mark.parametrize(
    "messages",
    [
        [[DATA, encode_ham_batch([])]],  # DATA before HELLO
        [[HELLO, 1, b"r" * 16, 0, 0]],  # version 1: ties bytewise, not Gun's order
        [[HELLO, 3, b"r" * 16, 0, 0]],  # unknown version
        [[HELLO, VERSION, b"short", 0, 0]],
        [HELLO_OK, HELLO_OK],
        [HELLO_OK, [99]],
        [HELLO_OK, [DATA, "not bytes"]],
        [HELLO_OK, [SUM, 0, 0, []]],  # a SUM for a node we never compared
        [HELLO_OK, [END], [END]],
        [{"a": 1}],
        [HELLO_OK, [HELLO, VERSION, b"r" * 16, -1, 0]],
    ],
)
def test_bad_messages_raise_graph_sync_error(messages: list[object]) -> None:
    session = SyncSession(Graph())
    session.start()
    data = b"".join(_frame(m) for m in messages)
    with pytest.raises(GraphSyncError):
        session.receive_data(data)


def test_bad_frames_and_batches() -> None:
    session = SyncSession(Graph(), max_message=1000)
    with pytest.raises(GraphSyncError) as err:
        session.receive_data((2000).to_bytes(4, "big"))
    assert "cap" in str(err.value)
    session = SyncSession(Graph())
    with pytest.raises(GraphSyncError):
        session.receive_data(b"\x00\x00\x00\x02\xc1\xc1")  # 0xc1 is never valid msgpack
    g = Graph()
    session = SyncSession(g)
    with pytest.raises(RemoteProtocolError):
        session.receive_data(_frame(HELLO_OK) + _frame([DATA, b"\x01\x09\x00\x00\x00zz"]))
    # incomplete input is not an error: it waits for more
    session = SyncSession(Graph())
    frame = _frame(HELLO_OK)
    for i in range(len(frame)):
        session.receive_data(frame[i : i + 1])
    assert session.peer_root == (0, 0) and session.end_sent


def test_bad_sum_entries() -> None:
    a, b = _filled(2000), _filled(2000, prefix="other")
    sa = SyncSession(a)
    sa.start()
    sa.receive_data(_frame([HELLO, VERSION, b"r" * 16, 2000, 12345]))
    assert (0, 0) in sa._sent  # it descended and waits for our SUM of the root's children
    with pytest.raises(GraphSyncError):
        sa.receive_data(_frame([SUM, 0, 0, [[999, 1, 1]]]))  # not a child of the root
    del b


# -- real peers over DTP ---------------------------------------------------------------------


@contextmanager
def graph_peer(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dtp.graph", "serve", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "graph peer did not start"
        yield proc, json.loads(line)
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def _ask(proc: subprocess.Popen[str], *command: object) -> Any:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(list(command)) + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def test_fresh_peer_syncs_from_another_process_and_catches_up(tmp_path: Path) -> None:
    with graph_peer("--fill", "3000", "--db", str(tmp_path / "server.db")) as (proc, info):
        address, key = ("127.0.0.1", info["port"]), bytes.fromhex(info["key"])
        local = Graph(tmp_path / "local.db")
        first = connect(local, address, server_key=key, timeout=30)
        remote = _ask(proc, "digest")
        assert len(local) == remote["count"] == 3000
        assert f"{local.root_summary()[0]:016x}" == remote["digest"]
        assert first.stats["bytes_received"] > 90_000
        local.close()

        # offline for a while: the server writes, we restart from SQLite and reconnect
        _ask(proc, "put", "node/7", {"f1": "new on the server"})
        local = Graph(tmp_path / "local.db")
        assert len(local) == 3000
        again = connect(local, address, server_key=key, timeout=30)
        assert local.get_field("node/7", "f1") == "new on the server"
        assert again.stats["bytes_received"] < first.stats["bytes_received"] / 20
        assert f"{local.root_summary()[0]:016x}" == _ask(proc, "digest")["digest"]
        local.close()


def test_live_sync_with_a_peer_process() -> None:
    with graph_peer() as (proc, info):
        local = Graph()
        got = threading.Event()
        local.subscribe("chat", lambda change: got.set(), field="msg")

        def run() -> None:
            import dtp.graph.sync as gs

            with contextlib.suppress(DTPError):  # the peer process exits at the end
                gs.connect(
                    local,
                    ("127.0.0.1", info["port"]),
                    server_key=bytes.fromhex(info["key"]),
                    until_synced=False,
                )

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        _ask(proc, "put", "chat", {"msg": "hello from the server"})
        assert got.wait(10)
        assert local.get_field("chat", "msg") == "hello from the server"
        local.put("chat", {"reply": "hi"})
        for _ in range(100):
            node = _ask(proc, "get", "chat")["node"]
            if node and node.get("reply") == "hi":
                break
            threading.Event().wait(0.05)
        else:
            raise AssertionError("the server never saw our write")


def test_server_survives_a_misbehaving_peer() -> None:
    import dtp.socket

    server_graph = _filled(100)
    identity = HostIdentity.generate()
    with GraphServer(server_graph, ("127.0.0.1", 0), identity) as server:
        with dtp.socket.create_connection(
            server.address, 10, server_key=server.noise_public_key
        ) as s:
            s.sendall(_frame([HELLO, VERSION, b"r" * 16, 0, 0]) + _frame([77]))
            with pytest.raises(DTPError, match="graph sync protocol error"):
                while s.recv(65536):
                    pass  # the server aborts only the session at fault
        other = Graph()
        connect(other, server.address, server_key=server.noise_public_key, timeout=10)
        assert other.snapshot() == server_graph.snapshot()
        # (the faulty session is counted as its thread ends, after the abort its client saw)
        assert wait_for(lambda: server.counts()["errors"] == 1, 10)


def test_asyncio_sync_stream() -> None:
    async def main() -> None:
        a, b = _filled(1000), Graph()
        b.put("from/b", {"x": 1})
        identity = HostIdentity.generate()
        done = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await sync_stream(a, reader, writer)
            writer.close()
            done.set()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", server.address[1], server_key=identity.noise_public
        )
        session = await sync_stream(b, reader, writer, until_synced=True)
        assert session.synced
        writer.close()
        await asyncio.wait_for(done.wait(), 10)
        assert a.snapshot() == b.snapshot()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_demo_graph_story_converges() -> None:
    from dtp.graph._demo import demo_graph_story

    lines: list[str] = []
    demo_graph_story(lines.append)
    assert any("converged: True" in line for line in lines), lines


def test_a_peer_that_does_not_read_cannot_grow_the_live_queue() -> None:
    from dtp.graph.sync import SyncBacklogExceeded

    graph = Graph()
    session = SyncSession(graph, max_backlog=20_000)
    session.start()
    session.data_to_send()  # HELLO went out; from here nobody drains the session
    for i in range(500):
        graph.put(f"note/{i}", {"text": "x" * 100})
    assert session.lagging
    queued = len(session.data_to_send())
    assert queued <= 20_000 + 1_000  # bounded (the backlog and one change), not 500 x ~150 bytes
    graph.put("note/late", {"text": "after the limit"})
    assert session.data_to_send() == b""  # the session stopped listening
    assert issubclass(SyncBacklogExceeded, DTPError)


class WritersRaceTheLinks(GraphMachine):
    """dtp.testing's GraphMachine (the replicas, the links, their cuts and the
    convergence check) on replicas of both HAM implementations, with a rule of its own:
    writer threads put on any replica while the links carry bytes."""

    replicas_count = 4

    def make_replicas(self, count: int) -> list[Graph]:
        hams = ("c", "python")
        return [
            Graph(None, now_ms=self.clock, max_drift_ms=1000.0, ham=hams[i % 2])
            for i in range(count)
        ]

    @rule(seed=st.integers(0, 2**32 - 1), writers=st.integers(1, 3))
    def writers_race_the_links(self, seed: int, writers: int) -> None:
        rnd = random.Random(seed)
        written: list[list[tuple[str, dict[str, Any]]]] = [[] for _ in range(writers)]

        def writer(k: int) -> None:
            r = random.Random(seed + k)
            for _ in range(50):
                soul, fields = f"node/{r.randrange(6)}", {f"f{r.randrange(4)}": r.randrange(1000)}
                self.replicas[r.randrange(len(self.replicas))].put(soul, fields)
                written[k].append((soul, fields))

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
        for thread in threads:
            thread.start()
        try:
            while any(thread.is_alive() for thread in threads):
                self.deliver(rnd.randrange(len(self.links)), rnd.random())
        finally:
            for thread in threads:
                thread.join()
        for writes in written:
            for soul, fields in writes:
                self.wrote(soul, fields)


class WritersRaceTheLinksInAStar(WritersRaceTheLinks):
    replicas_count = 5
    star = True


TestWritersRaceTheLinks = WritersRaceTheLinks.TestCase
TestWritersRaceTheLinks.settings = settings(max_examples=5, stateful_step_count=20, deadline=None)
TestWritersRaceTheLinksInAStar = WritersRaceTheLinksInAStar.TestCase
TestWritersRaceTheLinksInAStar.settings = TestWritersRaceTheLinks.settings
