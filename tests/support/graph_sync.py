"""A Python peer for tests that run a graph node in another process (``python -m
dtp.graph gun --sync``, ``serve``): a graph in this process, synced live with it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from dtp.errors import DTPError
from dtp.graph import Graph, connect


@contextlib.contextmanager
def following(info: dict[str, Any]) -> Iterator[Graph]:
    """An in-memory graph in a live DTP sync session with the node whose printed line is
    ``info`` (its ``sync`` address and Noise ``key``), until the block ends."""
    graph = Graph(None)
    host, port = info["sync"]
    key = bytes.fromhex(info["key"])

    def follow() -> None:
        with contextlib.suppress(DTPError, OSError):
            connect(graph, (host, port), server_key=key, until_synced=False, timeout=20)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield graph
    finally:
        graph.close()  # (the live session ends within a tick)
        thread.join(10)
