"""A ``Graph.changes()`` stream dropped without ``close()`` stops listening once it is
garbage-collected: the graph holds it weakly, so streams abandoned by their readers do
not pile up on a graph that stays open. A stream still referenced receives as before."""

from __future__ import annotations

import asyncio
import gc
import threading

from dtp.graph import Graph
from dtp.graph._changes import Change


def _listening(graph: Graph) -> int:
    return sum(len(subs) for subs in graph._subs.values())


def test_an_abandoned_stream_stops_listening_when_collected() -> None:
    graph = Graph()

    async def abandon(n: int) -> None:
        for i in range(n):
            graph.changes(f"chat/{i}")
            graph.changes("chat", field="text", maxsize=1)

    asyncio.run(abandon(50))
    gc.collect()
    assert _listening(graph) == 0
    assert graph._subs == {}
    graph.put("chat", {"text": "nobody reads this"})  # and nothing is delivered
    graph.close()


def test_a_stream_in_a_reference_cycle_goes_at_a_full_collection() -> None:
    graph = Graph()

    async def abandon() -> None:
        stream = graph.changes("chat")
        holder: list[object] = [stream]
        holder.append(holder)  # only the cycle collector frees it

    asyncio.run(abandon())
    gc.collect()
    assert _listening(graph) == 0
    graph.close()


def test_a_live_stream_still_receives_every_change_after_a_collection() -> None:
    graph = Graph()

    async def read() -> list[object]:
        stream = graph.changes("chat")
        dropped = graph.changes("chat")
        del dropped
        gc.collect()
        assert _listening(graph) == 1
        graph.put("chat", {"a": 1})
        graph.put("chat", {"a": 2})
        seen = []
        async for change in stream:
            seen.append(change.value)
            if len(seen) == 2:
                break
        stream.close()
        return seen

    assert asyncio.run(read()) == [1, 2]
    assert _listening(graph) == 0
    graph.close()


def test_a_reader_task_nobody_holds_still_receives_while_it_waits() -> None:
    # asyncio holds tasks weakly: the graph holds the stream a reader waits on, and so
    # the waiting task itself
    graph = Graph()

    async def run() -> list[object]:
        seen: list[object] = []
        done = asyncio.Event()

        async def reader() -> None:
            async for change in graph.changes("chat"):
                seen.append(change.value)
                done.set()

        asyncio.get_running_loop().create_task(reader())  # no reference kept
        await asyncio.sleep(0)  # the reader waits for its first change
        gc.collect()
        assert _listening(graph) == 1
        graph.put("chat", {"a": 1})
        await asyncio.wait_for(done.wait(), 30)
        return seen

    assert asyncio.run(run()) == [1]
    graph.close()


def test_a_collection_while_another_thread_holds_the_lock_is_done_later() -> None:
    graph = Graph()
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with graph._lock:
            holding.set()
            release.wait(timeout=30)

    async def open_stream() -> object:
        return graph.changes("chat")

    stream = asyncio.run(open_stream())
    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(timeout=30)
        del stream  # its finalizer must not wait for the lock the other thread holds
        gc.collect()
        assert _listening(graph) == 1  # left to whoever takes the lock next
    finally:
        release.set()
        holder.join(timeout=30)
    received: list[Change] = []
    sub = graph.subscribe("other", received.append)
    assert [s for subs in graph._subs.values() for s in subs] == [sub]
    graph.put("other", {"a": 1})
    assert [c.value for c in received] == [1]
    graph.close()


def test_a_stream_kept_still_ends_at_the_graph_close() -> None:
    graph = Graph()

    async def run() -> list[Change]:
        stream = graph.changes("chat")
        graph.put("chat", {"a": 1})
        graph.close()
        return [c async for c in stream]

    assert [c.value for c in asyncio.run(run())] == [1]
