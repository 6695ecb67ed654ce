"""Bad arguments found out late are refused where they are given: an RPC server's
options when it is made, a graph's export sizes and summary nodes at the call, before
any work and without taking the graph's lock; and the same objects, given good values,
go on working.

What was wrong: ``RpcServer(max_pending=0)`` (and a str, a bool or 0 as
``max_message_size``) was taken, and every client that connected then failed, as each
stream's RpcProtocol checked its limits; ``AsyncRpcServer`` likewise. ``workers=True``
or ``2.0`` made a pool, a payments source that is not callable refused every request
(logged at the first connection), a ``response_fees`` that is no ResponseFeePolicy
failed at the first prepaid request. ``Graph.export(0)``, ``export(-1)`` and
``export(True)`` (``export_stream`` too) were taken as the smallest batches, and a str
or float failed only at the first batch; ``child_summaries(2, 0)`` failed with "negative
shift count" and ``child_summaries("0", 0)`` with a str concatenation error, both under
the graph's lock; ``child_summaries(True, 0)`` answered for level 1 and
``child_summaries(1, 256)`` / ``(0, None)`` answered for nodes that do not exist;
``node_batches(None)`` failed only at the first next(). Real DTP connections on
127.0.0.1 (blocking and asyncio) and real SQLite graph files.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.graph import Graph
from dtp.graph._batch import entries
from dtp.graph.store import LEAF_LEVEL, soul_leaf
from dtp.keys import HostIdentity
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, ResponseFeePolicy, RpcServer
from tests.messaging.test_rpc import Served
from tests.polling import raised_within

#: Bound on a refusal, which is at once (a check that waited for the graph's lock, held
#: by another thread here, would wait until the end of the test).
PROMPT = 30.0

# -- RPC servers: options checked when the server is made ---------------------------------------

SERVER_CASES: dict[str, tuple[dict[str, Any], type[Exception]]] = {
    "max_pending 0": ({"max_pending": 0}, ValueError),
    "max_pending -1": ({"max_pending": -1}, ValueError),
    "max_pending bool": ({"max_pending": True}, TypeError),
    "max_pending float": ({"max_pending": 8.0}, TypeError),
    "max_pending str": ({"max_pending": "8"}, TypeError),
    "max_message_size 0": ({"max_message_size": 0}, ValueError),
    "max_message_size bool": ({"max_message_size": True}, TypeError),
    "max_message_size str": ({"max_message_size": "65536"}, TypeError),
    "payments int": ({"payments": 5}, TypeError),
    "response_fees object": ({"response_fees": object()}, TypeError),
}

#: The blocking server's own option: the size of its handler pool (0: inline).
WORKER_CASES: dict[str, tuple[dict[str, Any], type[Exception]]] = {
    "workers bool": ({"workers": True}, TypeError),
    "workers float": ({"workers": 2.0}, TypeError),
    "workers str": ({"workers": "2"}, TypeError),
    "workers -1": ({"workers": -1}, ValueError),  # (refused before, by the pool: kept)
}


def _echo(params: Any) -> Any:
    return params


@pytest.mark.parametrize("name", sorted(SERVER_CASES | WORKER_CASES))
def test_rpc_server_refuses_bad_options_when_made(name: str) -> None:
    options, error = (SERVER_CASES | WORKER_CASES)[name]
    threads = set(threading.enumerate())
    with pytest.raises(error, match=next(iter(options))):
        RpcServer(**options)
    assert not set(threading.enumerate()) - threads  # nothing started (others may end)


@pytest.mark.parametrize("name", sorted(SERVER_CASES))
def test_async_rpc_server_refuses_bad_options_when_made(name: str) -> None:
    options, error = SERVER_CASES[name]
    threads = set(threading.enumerate())
    with pytest.raises(error, match=next(iter(options))):
        AsyncRpcServer(**options)
    assert not set(threading.enumerate()) - threads


def test_rpc_server_at_the_lowest_limits_serves(tmp_path: Path) -> None:
    """The smallest values the checks let through serve a real connection: one request
    pending, an inline server, a real fee policy (prepaying optional: served free)."""
    ledger = LocalLedger(str(tmp_path / "ledger.db"), clock_ms=0)
    try:
        policy = ResponseFeePolicy(ledger, HostIdentity.generate(), 10, required=False)
        rpc = RpcServer(workers=0, max_pending=1, payments=None, response_fees=policy)
        rpc.register("echo", _echo)
        served = Served(rpc)
        try:
            client = served.connect(timeout=PROMPT)
            assert client.call("echo", [1, "a"]) == [1, "a"]
            assert client.call("echo", "b") == "b"
        finally:
            served.close()
    finally:
        ledger.close()


def test_async_rpc_server_at_the_lowest_limits_serves() -> None:
    identity = HostIdentity.generate()

    async def main() -> None:
        rpc = AsyncRpcServer(max_pending=1, payments=lambda connection_id: None)
        rpc.register("echo", _echo)
        server = await dtp.aio.start_server(rpc.serve, "127.0.0.1", 0, identity=identity)
        try:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            async with AsyncRpcClient(reader, writer, timeout=PROMPT) as client:
                assert await client.call("echo", [1, "a"]) == [1, "a"]
                assert await client.call("echo", "b") == "b"
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), PROMPT * 2))


# -- the graph: export sizes and summary nodes, checked at the call -------------------------------


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
