"""Graph sync: a peer's END before its answers, and pushes made a batch at a time.

- A peer's END that comes before its answer to one of our SUMs is a protocol error
  (GraphSyncError): taken, the runners would stop reading at it and wait for our own
  END, which waits for that answer, and a one-shot catch-up (``connect()``,
  ``sync_stream(until_synced=True)``) would wait for good, whatever the socket's timeout.
- A push of summary nodes (and of the leaves a peer asked for again, WANT) is made a
  batch of about 1 MiB at a time, each read from the table as it is made, never whole
  in one step under the graph's lock (100 MiB for one soul of 200 fields of 512 KiB).
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.graph import Graph, GraphSyncError, connect, sync_stream
from dtp.graph._store import LEAF_LEVEL, soul_leaf
from dtp.graph.sync import END, HELLO, SUM, VERSION, WANT, SyncSession
from dtp.identity.keys import HostIdentity
from dtp.native.reference._ham import decode_ham_batch
from tests.graph.wire import frame

MIB = 1 << 20
BIG_VALUE = "x" * (256 << 10)  # 40 fields of it: a 10 MiB soul, one leaf
BIG_FIELDS = 40
BOUND = 2 * MIB  # what one data_to_send() may hand out: a batch, with room to spare


def _filled(fields: int) -> Graph:
    graph = Graph(None)
    for i in range(fields):
        graph.put(f"small/{i}", {"f": i})
    return graph


def _hasty_peer_bytes() -> bytes:
    # A peer whose table differs from ours and is too large to push whole: both sides
    # descend, and it owes us its SUM of the root's children. It sends END instead.
    return frame([HELLO, VERSION, os.urandom(16), 1000, 12345]) + frame([END])


# -- END before the peer's SUM ---------------------------------------------------------------


def test_an_end_before_the_peers_sum_is_a_protocol_error() -> None:
    graph = _filled(300)
    session = SyncSession(graph, live=False)
    session.start()
    session.receive_data(frame([HELLO, VERSION, os.urandom(16), 1000, 12345]))
    assert (0, 0) in session._sent  # our SUM of the root's children awaits the peer's
    with pytest.raises(GraphSyncError, match="END before the SUM"):
        session.receive_data(frame([END]))
    assert not session.end_received
    with pytest.raises(GraphSyncError):  # the session is over
        session.receive_data(frame([SUM, 0, 0, []]))
    graph.close()


def test_connect_raises_at_once_when_the_peer_ends_before_its_sum() -> None:
    identity = HostIdentity.generate()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    release = threading.Event()

    def handler(sock: dtp.socket.DTPSocket) -> None:
        sock.sendall(_hasty_peer_bytes())
        release.wait(30)  # connected and reading nothing more: no end of stream

    threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
    graph = _filled(100)
    outcome: list[BaseException | str] = []

    def run() -> None:
        try:
            connect(graph, server.address, server_key=server.noise_public_key, timeout=3)
            outcome.append("returned")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        # (the hang this guards against outlasted any timeout: a join, not pytest, ends it)
        thread.join(15)
        assert not thread.is_alive(), "connect() still waits for an END that will not come"
        assert len(outcome) == 1 and isinstance(outcome[0], GraphSyncError), outcome
        assert "END before the SUM" in str(outcome[0])
    finally:
        release.set()
        server.close()
        graph.close()  # (also ends a runner's wait that did not end: its writer fails)
        thread.join(5)


def test_sync_stream_raises_at_once_when_the_peer_ends_before_its_sum() -> None:
    async def main() -> None:
        identity = HostIdentity.generate()

        async def handle(reader: Any, writer: Any) -> None:
            writer.write(_hasty_peer_bytes())
            await writer.drain()
            while await reader.read(1 << 16):
                pass

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        graph = _filled(100)
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", server.address[1], server_key=identity.noise_public
        )
        try:
            with pytest.raises(GraphSyncError, match="END before the SUM"):
                await asyncio.wait_for(sync_stream(graph, reader, writer, until_synced=True), 10)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()
            graph.close()

    asyncio.run(main())


# -- bounded pushes --------------------------------------------------------------------------


def _with_a_big_soul() -> tuple[Graph, Graph]:
    """Two replicas of 2000 small fields; then ``a`` writes one soul of 10 MiB (one leaf,
    far under half the table: pushed as a summary node, not by the export)."""
    a = _filled(2000)
    b = Graph(None)
    for batch in a.export():
        b.merge(batch)
    a.put("big", {f"f{j}": BIG_VALUE for j in range(BIG_FIELDS)})
    return a, b


def _pump(a: SyncSession, b: SyncSession, between: Any = None) -> int:
    """Exchange until both are quiet; the largest one data_to_send() of ``a``."""
    largest = 0
    for _ in range(1000):
        x, y = a.data_to_send(), b.data_to_send()
        largest = max(largest, len(x))
        if not x and not y:
            return largest
        if x:
            b.receive_data(x)
        if y:
            a.receive_data(y)
        if between is not None:
            between()
    raise AssertionError("the sessions did not settle")


def test_a_node_push_is_made_a_bounded_batch_at_a_time() -> None:
    a, b = _with_a_big_soul()
    sa, sb = SyncSession(a), SyncSession(b)
    sa.start()
    sb.start()
    written = iter(range(20))

    def write_meanwhile() -> None:
        # fields added to the soul being pushed, and elsewhere, while the push is under
        # way: they go live, and the replicas still converge
        i = next(written, None)
        if i is not None:
            a.put("big", {f"late{i}": i})
            a.put(f"small/{i}", {"g": i})

    largest = _pump(sa, sb, write_meanwhile)
    assert largest <= BOUND, f"one data_to_send() handed out {largest / MIB:.1f} MiB"
    assert not sa._push_everything  # (the path under test: a node push, not the export)
    assert sa.synced and sb.synced
    assert a.snapshot() == b.snapshot() and a.root_summary() == b.root_summary()
    a.close()
    b.close()


def test_a_want_push_is_made_a_bounded_batch_at_a_time() -> None:
    a, b = _with_a_big_soul()
    for batch in a.export():
        b.merge(batch)
    sa, sb = SyncSession(a), SyncSession(b)
    sa.start()
    sb.start()
    _pump(sa, sb)
    assert sa.synced and sb.synced
    # the peer asks for the big soul's leaf again (as after a dropped update)
    sa.receive_data(frame([WANT, [soul_leaf(b"big")]]))
    sizes = []
    while data := sa.data_to_send():
        sizes.append(len(data))
        sb.receive_data(data)
    assert sum(sizes) > BIG_FIELDS * len(BIG_VALUE)  # it was all pushed again
    assert max(sizes) <= BOUND, f"one data_to_send() handed out {max(sizes) / MIB:.1f} MiB"
    a.close()
    b.close()


class _CountingTable:
    """The graph's HAM table, counting the entries read from it."""

    def __init__(self, table: Any) -> None:
        self._inner = table
        self.reads = 0

    def get(self, soul: bytes, field: bytes) -> Any:
        self.reads += 1
        return self._inner.get(soul, field)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_node_batches_read_the_table_a_bounded_batch_at_a_time() -> None:
    graph = Graph(None)
    graph.put("big", {f"f{j}": BIG_VALUE for j in range(BIG_FIELDS)})
    graph.put("wide", {f"f{j}": j for j in range(10_000)})
    counting = _CountingTable(graph._table)
    graph._table = counting
    big = graph.node_batches([(LEAF_LEVEL, soul_leaf(b"big"))])
    first = next(big)
    # the first batch read about 1 MiB of the leaf, not all 10 MiB of it
    assert counting.reads <= 8, counting.reads
    assert len(first) <= BOUND
    rest = list(big)
    assert all(len(batch) <= BOUND for batch in rest)
    assert sum(len(decode_ham_batch(b)) for b in [first, *rest]) == BIG_FIELDS
    # and a batch of small fields still holds up to 4096 of them
    wide = [decode_ham_batch(b) for b in graph.node_batches([(LEAF_LEVEL, soul_leaf(b"wide"))])]
    assert [len(batch) for batch in wide] == [4096, 4096, 10_000 - 8192]
    graph._table = counting._inner
    graph.close()
