"""``GraphServer.close()`` ends the sessions it runs (s23).

It used to stop accepting only: every live session went on in its thread, holding its
connection and writing to the graph, after ``close()`` and after a ``with GraphServer``
block -- the graph could not be closed safely, and nothing could end those sessions but
their peers. Now each running session's connection is closed (its peer sees the server
leave: a live sync returns), and ``close()`` waits up to ``timeout`` for the session
threads to be done with the graph.

Real DTP connections on 127.0.0.1, real SQLite graphs. What must happen has 60 s."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import dtp.socket
from dtp.errors import ConnectionClosed
from dtp.graph import Graph, GraphServer, SyncSession, sync_blocking
from dtp.keys import HostIdentity
from tests.polling import wait_for

PATIENCE = 60.0


class _Live:
    """A live sync session of ``graph`` with ``server``, run in a thread."""

    def __init__(self, graph: Graph, server: GraphServer) -> None:
        self.sock = dtp.socket.create_connection(
            server.address, 30, server_key=server.noise_public_key
        )
        self.sock.settimeout(None)
        self.result: SyncSession | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = sync_blocking(graph, self.sock)
            except BaseException as exc:  # reported by the test's assertions
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.thread.join(PATIENCE)
        self.sock.close()


def _session_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "dtp-graph-sync-writer")


def _graph(tmp_path: Path, name: str, nodes: int = 1) -> Graph:
    graph = Graph(tmp_path / f"{name}.db")
    for i in range(nodes):
        graph.put(f"{name}{i}", {"v": i})
    return graph


def _running(server: GraphServer, n: int) -> Callable[[], bool]:
    return lambda: server.counts()["active"] == n


def test_close_ends_live_sessions_and_their_peers_see_the_server_leave(tmp_path: Path) -> None:
    served = _graph(tmp_path, "served")
    peers = [_graph(tmp_path, f"peer{i}") for i in range(3)]
    threads_before = _session_threads()
    server = GraphServer(served, ("127.0.0.1", 0), HostIdentity.generate())
    lives = [_Live(g, server) for g in peers]
    try:
        assert wait_for(_running(server, 3), PATIENCE)
        # live: a change on the served graph reaches every peer
        served.put("news", {"v": "before close"})
        for g in peers:
            assert wait_for(lambda g=g: g.get("news") == {"v": "before close"}, PATIENCE)

        assert server.close() is True

        assert server.counts() == {"sessions": 3, "errors": 0, "refused": 0, "active": 0}
        for live in lives:
            live.thread.join(PATIENCE)
            assert not live.thread.is_alive()
            # a live session returns when its peer leaves (no error)
            assert live.error is None and live.result is not None
        # no session of the server writes to the graph any more: it closes cleanly,
        # and a change after close reaches no peer
        served.put("late", {"v": 1})
        served.close()
        assert all(g.get("late") is None for g in peers)
        assert wait_for(lambda: _session_threads() == threads_before, PATIENCE)
    finally:
        for live in lives:
            live.close()
        server.close()
        for g in peers:
            g.close()


def test_the_with_block_ends_the_sessions_too(tmp_path: Path) -> None:
    served = _graph(tmp_path, "served")
    peer = _graph(tmp_path, "peer")
    with GraphServer(served, ("127.0.0.1", 0), HostIdentity.generate()) as server:
        live = _Live(peer, server)
        assert wait_for(_running(server, 1), PATIENCE)
    try:
        assert server.counts()["active"] == 0
        live.thread.join(PATIENCE)
        assert not live.thread.is_alive() and live.error is None
    finally:
        live.close()
        served.close()
        peer.close()


def test_close_ends_a_session_whose_peer_does_not_read(tmp_path: Path) -> None:
    # a peer that sent HELLO and reads nothing: what the session sent it stays
    # unacknowledged, and the session's close waits out its linger (5 s) for it
    served = Graph(tmp_path / "served.db")
    blob = "x" * 1000
    for i in range(4000):
        served.put(f"n{i}", {"blob": blob, "i": i})
    server = GraphServer(served, ("127.0.0.1", 0), HostIdentity.generate())
    sock = dtp.socket.create_connection(server.address, 30, server_key=server.noise_public_key)
    silent = Graph(tmp_path / "silent.db")
    try:
        hello = SyncSession(silent, live=True)
        hello.start()
        sock.sendall(hello.data_to_send())
        assert wait_for(_running(server, 1), PATIENCE)

        assert server.close(timeout=PATIENCE) is True

        assert server.counts()["active"] == 0
        served.close()  # nothing of the session touches it any more
    finally:
        sock.close()
        server.close()
        silent.close()


def test_close_may_return_before_the_sessions_ended_and_waits_again(tmp_path: Path) -> None:
    served = _graph(tmp_path, "served")
    peer = _graph(tmp_path, "peer")
    server = GraphServer(served, ("127.0.0.1", 0), HostIdentity.generate())
    live = _Live(peer, server)
    try:
        assert wait_for(_running(server, 1), PATIENCE)
        first = server.close(timeout=0)
        assert isinstance(first, bool)
        assert server.close(timeout=PATIENCE) is True  # (again: it waits again)
        assert server.counts()["active"] == 0
    finally:
        live.close()
        server.close()
        served.close()
        peer.close()


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf"), "1", True])
def test_a_bad_close_timeout_is_refused_before_anything_closes(
    tmp_path: Path, timeout: object
) -> None:
    served = _graph(tmp_path, "served")
    peer = _graph(tmp_path, "peer")
    server = GraphServer(served, ("127.0.0.1", 0), HostIdentity.generate())
    live: _Live | None = None
    try:
        with pytest.raises(ValueError, match="timeout"):
            server.close(timeout=timeout)  # type: ignore[arg-type]
        # still serving: a new peer gets a session
        live = _Live(peer, server)
        assert wait_for(_running(server, 1), PATIENCE)
    finally:
        server.close()
        if live is not None:
            live.close()
        served.close()
        peer.close()


def test_a_connection_whose_handshake_ends_as_close_begins_is_closed_with_a_reason(
    tmp_path: Path,
) -> None:
    # (the race itself cannot be timed from a test: the session start it would reach,
    # with a real connection, after close())
    served = _graph(tmp_path, "served")
    server = GraphServer(served, ("127.0.0.1", 0), HostIdentity.generate())
    assert server.close() is True
    other = dtp.socket.create_server(("127.0.0.1", 0), identity=HostIdentity.generate())
    client = dtp.socket.create_connection(other.address, 30, server_key=other.noise_public_key)
    try:
        accepted, _ = other.accept(timeout=30)
        server._handle(accepted)
        with pytest.raises(ConnectionClosed, match="graph server closed"):
            client.recv(1)
        assert server.counts() == {"sessions": 0, "errors": 0, "refused": 0, "active": 0}
    finally:
        client.close()
        other.close()
        served.close()
