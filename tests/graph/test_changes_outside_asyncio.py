"""``Graph.changes()`` called with no event loop running -- as ``subscribe`` is called,
or as gun's ``on()`` is -- raises RuntimeError saying how to call it and what to use
instead, rather than asyncio's bare "no running event loop"."""

from __future__ import annotations

import asyncio

import pytest

from dtp.graph import Graph


def test_changes_without_a_running_loop_says_how_to_call_it() -> None:
    graph = Graph()
    with pytest.raises(RuntimeError) as raised:
        graph.changes("chat")
    message = str(raised.value)
    assert "async for change in graph.changes(soul)" in message
    assert "graph.subscribe(soul, callback)" in message
    graph.close()


def test_changes_in_a_coroutine_still_iterates() -> None:
    graph = Graph()

    async def first() -> object:
        stream = graph.changes("chat")
        graph.put("chat", {"a": 1})
        async for change in stream:
            await stream.aclose()
            return change.value
        return None

    assert asyncio.run(first()) == 1
    graph.close()
