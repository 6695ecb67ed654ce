"""Graph store, session 14: change streams end when the graph is closed; a damaged log
entry is a storage error.

``Graph.changes()`` readers waited for ever once the graph was closed (no change can
come any more): an ``async for`` over a closed graph's changes never ended."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from dtp._core import encode_ham_batch
from dtp._types import HamUpdate
from dtp.graph import Change, Graph, MergeReport
from dtp.graph.persist import GraphStorageError


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
