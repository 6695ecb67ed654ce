"""A second open of a graph file held by another graph -- a script opening the file a
running ``python -m dtp.graph gun --db`` serves -- says how to share the data: a file
of its own, synced with the graph that holds this one."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtp.graph import Graph, GraphStorageError


def test_a_second_open_says_to_sync_instead(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    first = Graph(path)
    with pytest.raises(GraphStorageError) as raised:
        Graph(path)
    message = str(raised.value)
    assert "already open in another graph" in message
    assert "open a file of your own and sync with that graph" in message
    assert "connect()" in message and "--sync" in message
    first.close()
    Graph(path).close()  # free again once the first is closed
