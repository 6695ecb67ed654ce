"""The graph sync runners check their graph (and the server its address) before
anything runs: ``connect(None, ...)`` makes no connection, ``GraphServer(None, ...)``
serves nothing, and a ``"host:port"`` string as the server's address is named as the
wrong type, each with a TypeError."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dtp.graph import Graph, GraphServer, SyncSession, connect, sync_blocking, sync_stream
from dtp.identity.keys import HostIdentity


def test_connect_checks_the_graph_before_connecting() -> None:
    # port 1 refuses: a graph checked after connecting would raise the refusal instead
    with pytest.raises(TypeError, match=r"graph must be a dtp\.graph\.Graph, not NoneType"):
        connect(None, ("127.0.0.1", 1), timeout=5)  # type: ignore[arg-type]


def test_the_server_checks_its_graph_and_address() -> None:
    identity = HostIdentity.generate()
    with pytest.raises(TypeError, match=r"graph must be a dtp\.graph\.Graph, not NoneType"):
        GraphServer(None, ("127.0.0.1", 0), identity)  # type: ignore[arg-type]
    graph = Graph()
    bad: list[Any] = ["127.0.0.1:7400", ["127.0.0.1", 0], ("127.0.0.1", "0"), ("127.0.0.1",)]
    for address in bad:
        with pytest.raises(TypeError, match=r"address must be a \(host, port\) tuple"):
            GraphServer(graph, address, identity)
    with GraphServer(graph, ("127.0.0.1", 0), identity) as server:
        assert server.address[1] > 0
    graph.close()


def test_a_session_and_its_runners_check_the_graph() -> None:
    with pytest.raises(TypeError, match=r"graph must be a dtp\.graph\.Graph, not str"):
        SyncSession("notes.db")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"graph must be a dtp\.graph\.Graph"):
        sync_blocking(None, object())  # type: ignore[arg-type]

    async def stream() -> None:
        await sync_stream(None, object(), object())  # type: ignore[arg-type]

    with pytest.raises(TypeError, match=r"graph must be a dtp\.graph\.Graph"):
        asyncio.run(stream())
