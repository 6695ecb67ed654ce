"""Graph sync: a dropped update is asked for again (WANT); the first exchange
is pushed as the peer reads; GraphServer caps its sessions.

1. An update ahead of the clock that finds the deferred queue full (a hostile peer keeps
   it full) is dropped; a live session never sent it again, so honest replicas differed
   until the next session. The session now asks for the update's leaf again once the
   clock reaches its state.
2. HELLO with count 0 made the session queue the whole table (a copy of it, framed) at
   once, before the peer read a byte; it is now pushed a batch at a time.
3. GraphServer ran any number of sessions; it now refuses beyond ``max_sessions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import threading
import time
from collections.abc import Callable

import msgpack
import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionClosed, DTPError
from dtp.graph import (
    Graph,
    GraphServer,
    GraphSyncError,
    SyncSession,
    connect,
    sync_blocking,
    sync_stream,
)
from dtp.graph._store import soul_leaf
from dtp.graph.sync import HELLO, VERSION
from dtp.identity.keys import HostIdentity
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate

WANT = 5  # the message type (docs/graph.md)
T0 = 1.75e12


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _frame(message: list[object]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _pump(a: SyncSession, b: SyncSession) -> None:
    for _ in range(10_000):
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db:
            return
        b.receive_data(da)
        a.receive_data(db)
    raise AssertionError("sync did not settle")


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _fill_queue(graph: Graph, far: float) -> None:
    """A hostile peer's far-future updates, tiny (15 bytes), until the queue is full: the
    room left is then less than any update of ours needs."""
    junk = [HamUpdate(b"h%d" % i, b"f", far, b"1") for i in range(2000)]
    report = graph.merge(encode_ham_batch(junk))
    assert report.dropped > 0 and report.deferred > 0


# -- 1. a dropped update is asked for again ------------------------------------------------------


def test_an_update_dropped_for_a_full_queue_is_asked_for_again() -> None:
    clock_b = FakeClock(T0)
    b = Graph(now_ms=clock_b, max_deferred_bytes=4096)
    a = Graph(now_ms=FakeClock(T0 + 5000))  # an honest peer whose clock runs 5 s ahead
    _fill_queue(b, T0 + 1e12)
    sa, sb = SyncSession(a), SyncSession(b)
    sa.start()
    sb.start()
    _pump(sa, sb)
    state = a.put("doc", {"title": "hello"})
    _pump(sa, sb)
    assert b.get("doc") is None  # dropped: the queue is full
    assert b.stats["dropped"] > 0
    # not before its time: asked for now, it would be dropped again
    assert sb.handle_timer() == 0
    clock_b.now = state  # B's machine state (clock + 1 s drift) is past the update's
    assert sb.handle_timer() == 1
    _pump(sa, sb)
    assert b.get("doc") == {"title": "hello"}
    assert b.snapshot()[b"doc", b"title"] == a.snapshot()[b"doc", b"title"]
    assert sb.stats["wants_sent"] == 1 and sa.stats["wants_received"] == 1
    # the hostile peer's junk (its leaves wait for a state far away) asks for nothing
    assert sb.handle_timer() == 0
    for s in (sa, sb):
        s.close()
    a.close()
    b.close()


def test_a_hostile_peers_dropped_junk_costs_at_most_one_entry_per_leaf() -> None:
    b = Graph(now_ms=FakeClock(T0), max_deferred_bytes=1024)
    hostile = SyncSession(Graph(now_ms=FakeClock(T0)))  # (only to speak the protocol)
    sb = SyncSession(b)
    sb.start()
    hostile.start()
    _pump(hostile, sb)
    souls = [b"junk/%d" % i for i in range(120_000)]
    for i in range(0, len(souls), 40_000):
        batch = encode_ham_batch(
            [HamUpdate(s, b"f", T0 + 1e12, b"1") for s in souls[i : i + 40_000]]
        )
        sb.receive_data(_frame([3, batch]))
    leaves = {soul_leaf(s) for s in souls}
    # (a few fitted in the queue before it filled: deferred, not dropped)
    assert len(leaves) - 100 < len(sb._wanted) <= len(leaves) <= 1 << 16
    assert sb.handle_timer() == 0  # all far ahead: nothing is asked for
    sb.close()
    hostile.close()
    hostile.graph.close()
    b.close()


def test_want_is_answered_with_the_leaves_and_bounded() -> None:
    a = Graph()
    for i in range(50):
        a.put(f"n/{i}", {"v": i})
    sa = SyncSession(a)
    sa.start()
    # a peer already in sync (same root): no comparison push
    digest, count = a.root_summary()
    sa.receive_data(_frame([HELLO, VERSION, os.urandom(16), count, digest]))
    sa.data_to_send()
    leaf = soul_leaf(b"n/7")
    # asked again and again, a leaf is pushed once
    for _ in range(3):
        sa.receive_data(_frame([WANT, [leaf]]))
    out = sa.data_to_send()
    assert b"n/7" in out and sa.stats["batches_sent"] == 1
    assert sa.data_to_send() == b""
    for bad in ([WANT], [WANT, [1 << 16]], [WANT, [True]], [WANT, 5]):
        s = SyncSession(a)
        s.receive_data(_frame([HELLO, VERSION, os.urandom(16), count, digest]))
        with pytest.raises(GraphSyncError):
            s.receive_data(_frame(bad))
        s.close()
    sa.close()
    a.close()


def test_over_dtp_a_hostile_peer_fills_the_queue_and_an_honest_update_still_converges() -> None:
    b = Graph(max_deferred_bytes=4096)  # the server, wall clock, 1 s drift allowed
    server = GraphServer(b, ("127.0.0.1", 0), HostIdentity.generate())
    hostile = Graph(now_ms=lambda: time.time() * 1000 + 1e9)  # its clock: days ahead
    honest = Graph(now_ms=lambda: time.time() * 1000 + 1800)  # 1.8 s ahead: 0.8 s past drift
    try:
        for i in range(400):
            hostile.put(f"h{i}", {"f": 1})
        connect(hostile, server.address, server_key=server.noise_public_key, timeout=5)
        assert _wait_for(lambda: b.stats["dropped"] > 0, 5)
        sock = dtp.socket.create_connection(server.address, 5, server_key=server.noise_public_key)
        runner = threading.Thread(target=lambda: _quietly(lambda: sync_blocking(honest, sock)))
        runner.start()
        try:
            dropped = b.stats["dropped"]
            honest.put("doc", {"title": "hello"})
            assert _wait_for(lambda: b.stats["dropped"] > dropped, 5)  # dropped...
            assert b.get("doc") is None
            # ... and asked for again once the server's clock reaches it
            assert _wait_for(lambda: b.get("doc") == {"title": "hello"}, 5)
            assert b.state_of("doc", "title") == honest.state_of("doc", "title")
        finally:
            sock.close()
            runner.join(5)
    finally:
        server.close()
        for g in (b, hostile, honest):
            g.close()


def _quietly(run: Callable[[], object]) -> None:
    with contextlib.suppress(DTPError):
        run()


# -- 2. the first exchange is pushed as the peer reads ------------------------------------------


def _big(n: int, size: int) -> Graph:
    graph = Graph()
    for i in range(n):
        graph.put(f"big/{i}", {"v": "x" * size})
    return graph


def test_hello_with_count_zero_does_not_queue_the_whole_table() -> None:
    a = _big(16, 1_000_000)  # 16 MB
    b = Graph()
    session, sb = SyncSession(a), SyncSession(b)
    session.start()
    sb.start()
    session.receive_data(sb.data_to_send())  # HELLO with count 0: "send me everything"
    first = session.data_to_send()
    # HELLO and one export batch (about 1 MiB), not 16 MB
    assert len(first) < 2_500_000
    assert not session.end_sent
    sb.receive_data(first)
    _pump(session, sb)
    assert session.synced and sb.synced
    assert b.snapshot() == a.snapshot()
    for s in (session, sb):
        s.close()
    a.close()
    b.close()


@pytest.mark.parametrize("ham", ["c", "python"])
def test_a_field_added_during_the_first_push_is_not_missed(ham: str) -> None:
    a = Graph(ham=ham)
    for i in range(40):
        a.put(f"big/{i}", {"v": "x" * 100_000})  # about 4 export batches
    session = SyncSession(a)
    session.start()
    b = Graph()
    sb = SyncSession(b)
    sb.start()
    session.receive_data(sb.data_to_send())
    sb.receive_data(session.data_to_send())  # HELLO and the first batch
    for i in range(100):  # new fields (and the table grows): the export's walk is invalid
        a.put(f"new/{i}", {"v": i})
    a.put("big/3", {"v": "changed"})
    _pump(session, sb)
    assert session.synced and sb.synced
    assert b.snapshot() == a.snapshot()
    for s in (session, sb):
        s.close()
    a.close()
    b.close()


def test_one_shot_connect_to_a_live_server_with_a_large_table() -> None:
    """Our END now follows pushes made by the writer: a one-shot catch-up whose peer
    stays connected must not wait in recv for bytes that never come."""
    a = _big(6, 1_000_000)
    server = GraphServer(a, ("127.0.0.1", 0), HostIdentity.generate())
    b = _big(3, 1_000_000)  # b pushes too (different fields)
    try:
        for g in (b,):
            g.put("mine", {"v": 1})
        session = connect(b, server.address, server_key=server.noise_public_key, timeout=5)
        assert session.synced
        assert len(b) == 6 + 1  # a's fields (same souls) plus its own
        assert _wait_for(lambda: a.get("mine") == {"v": 1}, 5)
    finally:
        server.close()
        a.close()
        b.close()


def test_one_shot_sync_stream_to_a_live_peer_with_a_large_table() -> None:
    async def main() -> None:
        a = _big(6, 1_000_000)
        b = Graph()
        b.put("mine", {"v": 1})

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            try:
                await sync_stream(a, reader, writer)  # live: stays connected
            except DTPError:
                pass
            finally:
                writer.close()

        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", server.address[1], server_key=identity.noise_public
        )
        try:
            session = await asyncio.wait_for(sync_stream(b, reader, writer, until_synced=True), 5)
            assert session.synced
            assert b.snapshot().keys() >= a.snapshot().keys()
        finally:
            writer.close()
            server.close()
            await server.wait_closed()
            a.close()
            b.close()

    asyncio.run(main())


# -- 3. GraphServer caps its sessions -----------------------------------------------------------


def test_graph_server_refuses_sessions_beyond_its_cap() -> None:
    graph = Graph()
    graph.put("a", {"x": 1})
    server = GraphServer(graph, ("127.0.0.1", 0), HostIdentity.generate(), max_sessions=1)
    other = Graph()
    try:
        with dtp.socket.create_connection(server.address, 5, server_key=server.noise_public_key):
            assert _wait_for(lambda: server.active == 1, 5)
            with pytest.raises(ConnectionClosed, match="graph server busy"):
                connect(other, server.address, server_key=server.noise_public_key, timeout=5)
            assert server.refused == 1
        assert _wait_for(lambda: server.active == 0, 5)
        connect(other, server.address, server_key=server.noise_public_key, timeout=5)
        assert other.get("a") == {"x": 1}
    finally:
        server.close()
        graph.close()
        other.close()


def test_graph_server_checks_max_sessions() -> None:
    graph = Graph()
    try:
        for bad, exc in ((0, ValueError), (True, TypeError), (1.5, TypeError)):
            with pytest.raises(exc, match="max_sessions"):
                GraphServer(graph, ("127.0.0.1", 0), HostIdentity.generate(), max_sessions=bad)
    finally:
        graph.close()


def _lag_while_pushing() -> None:
    graph = Graph()
    for i in range(30):
        graph.put(f"big/{i}", {"v": "x" * 200_000})
    session = SyncSession(graph, max_backlog=100_000)
    session.start()
    session.receive_data(_frame([HELLO, VERSION, os.urandom(16), 0, 0]))
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set() and not session.lagging:
            session.data_to_send()  # (the bytes go nowhere: only the steps matter)

    def put() -> None:
        i = 0
        while not stop.is_set() and not session.lagging:
            graph.put(f"live/{i % 50}", {"v": "y" * 50_000})
            i += 1

    # (daemon threads: stuck for good, they must not hold the test run)
    threads = [threading.Thread(target=f, daemon=True) for f in (write, put)]
    for thread in threads:
        thread.start()
    # a deadlock never ends; a slow run (the pure-Python core on a loaded machine: up
    # to 9 s for one round was seen) does
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stop.set()
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert session.lagging
    graph.close()


def test_a_session_lagging_while_its_writer_pushes_does_not_deadlock() -> None:
    """A lagging session closes itself from _on_change, under the graph's lock; the
    writer's push step holds the lock of the session and asks the graph for the next batch.
    close() took the lock of the session too: the two threads waited for each other."""
    for _ in range(20):  # (a race: it deadlocked in about one run in two)
        _lag_while_pushing()


def test_queued_pushes_wake_the_writer() -> None:
    """Pushes are made in data_to_send: queuing them must call on_output, or a runner's
    writer sleeps until its next tick (a fresh peer's catch-up took 0.25 s more)."""
    a = Graph()
    for i in range(50):
        a.put(f"n/{i}", {"v": i})
    session = SyncSession(a)
    calls: list[int] = []
    session.on_output = lambda: calls.append(1)
    session.start()
    session.data_to_send()
    calls.clear()
    session.receive_data(_frame([HELLO, VERSION, os.urandom(16), 0, 0]))  # push all
    assert calls
    while session.data_to_send():
        pass
    calls.clear()
    session.receive_data(_frame([WANT, [soul_leaf(b"n/1")]]))
    assert calls
    assert b"n/1" in session.data_to_send()
    session.close()
    a.close()
