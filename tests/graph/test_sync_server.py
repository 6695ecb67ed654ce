"""The graph sync server and clock, over real DTP on 127.0.0.1:

1. ``GraphServer.errors`` was counted outside the lock that guards the other counters
   (two sessions failing at once could lose a count); it is now counted under it, with
   the other counters of the session, and :meth:`GraphServer.counts` reads them together.
2. A peer that connected and never sent HELLO held its session slot for good (DTP
   keepalives keep the connection from its idle timeout): ``max_sessions`` such peers
   locked every other peer out. The server now cuts off a peer without a HELLO after
   ``hello_timeout`` (10 s by default).
3. ``HybridClock.observe`` was never called, and need not be: a write takes a state
   past what the table holds for its fields, so it wins over a state just merged from
   a peer whose clock runs ahead. The dead method is gone; the tests hold the
   behaviour.

``GraphServer.close()`` ends the sessions it runs.

It does more than stop accepting: the connection of each running session is closed (its
peer sees the server leave: a live sync returns), and ``close()`` waits up to ``timeout``
for the session threads to be done with the graph, so that no session goes on writing
to it after ``close()`` or a ``with GraphServer`` block, and the graph can be closed.

Real DTP connections on 127.0.0.1, real SQLite graphs. What must happen has 60 s."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import dtp.socket
from dtp.errors import ConnectionClosed, DTPError
from dtp.graph import Graph, GraphServer, SyncSession, connect, sync_blocking
from dtp.graph.sync import HELLO, VERSION
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from tests.graph.wire import frame
from tests.support.polling import wait_for


def _wait(check: Callable[[], object], timeout: float = 60.0) -> bool:
    return wait_for(check, timeout, 0.05)


def _bad_session(server: GraphServer) -> None:
    """One peer that sends a HELLO then an unknown message; returns once aborted."""
    with dtp.socket.create_connection(server.address, 30, server_key=server.noise_public_key) as s:
        s.sendall(frame([HELLO, VERSION, b"r" * 16, 0, 0]) + frame([77]))
        with pytest.raises(DTPError, match="graph sync protocol error"):
            while s.recv(65536):
                pass


def _sync_retrying(graph: Graph, server: GraphServer, bound: float) -> float:
    """connect() until the server has room (``busy`` refusals only); the time it took."""
    start = time.monotonic()
    while True:
        try:
            connect(graph, server.address, server_key=server.noise_public_key, timeout=30)
            return time.monotonic() - start
        except ConnectionClosed as exc:
            assert "graph server busy" in str(exc)
            if time.monotonic() - start > bound:
                pytest.fail(f"the server was still busy after {bound} s ({server.active} active)")
            time.sleep(0.5)


# -- 1. errors counted under the lock ----------------------------------------------------------


def test_a_failed_session_is_counted_under_the_counters_lock() -> None:
    graph = Graph()
    graph.put("a", {"x": 1})
    server = GraphServer(graph, ("127.0.0.1", 0), HostIdentity.generate())
    try:
        with dtp.socket.create_connection(
            server.address, 30, server_key=server.noise_public_key
        ) as s:
            assert _wait(lambda: server.active == 1)
            with server._count_lock:
                s.sendall(frame([HELLO, VERSION, b"r" * 16, 0, 0]) + frame([77]))
                with pytest.raises(DTPError, match="graph sync protocol error"):
                    while s.recv(65536):
                        pass
                # the thread of the session is past its abort: a count made outside the lock
                # shows within moments; made under it, not while we hold it
                assert not _wait(lambda: server.errors != 0, 5.0)
        assert _wait(
            lambda: server.counts() == {"sessions": 1, "errors": 1, "refused": 0, "active": 0}
        )
    finally:
        server.close()
        graph.close()


def test_sessions_failing_at_once_are_all_counted() -> None:
    graph = Graph()
    graph.put("a", {"x": 1})
    server = GraphServer(graph, ("127.0.0.1", 0), HostIdentity.generate())
    try:
        peers = [threading.Thread(target=_bad_session, args=(server,)) for _ in range(6)]
        for p in peers:
            p.start()
        for p in peers:
            p.join(60)
        assert _wait(lambda: server.sessions == 6)
        assert (server.sessions, server.errors, server.active) == (6, 6, 0)
    finally:
        server.close()
        graph.close()


# -- 2. silent peers cannot hold every session slot ------------------------------------------------


@pytest.fixture
def four_slots(tmp_path: Path) -> Iterator[tuple[GraphServer, Graph]]:
    """A server of 4 sessions holding one document, with the connections' idle timeout
    (the only other bound on a silent peer) made huge: 600 s; and an empty peer."""
    identity = HostIdentity.generate()
    config = ConnectionConfig(identity=identity, is_client=False, idle_timeout=600.0)
    graph = Graph(tmp_path / "server.db")
    graph.put("doc", {"title": "hello"})
    server = GraphServer(graph, ("127.0.0.1", 0), identity, max_sessions=4, config=config)
    other = Graph(tmp_path / "client.db")
    try:
        yield server, other
    finally:
        server.close()
        graph.close()
        other.close()


def test_peers_that_never_say_hello_cannot_starve_the_server(
    four_slots: tuple[GraphServer, Graph],
) -> None:
    server, other = four_slots
    silent: list[dtp.socket.DTPSocket] = []
    try:
        for _ in range(4):  # every slot: real handshakes, then nothing at all
            silent.append(
                dtp.socket.create_connection(server.address, 30, server_key=server.noise_public_key)
            )
        assert _wait(lambda: server.active == 4)
        took = _sync_retrying(other, server, 60.0)
        assert other.get("doc") == {"title": "hello"}
        assert took < 60.0
        for s in silent:  # cut off, and told why
            with pytest.raises(DTPError, match="no HELLO"):
                while s.recv(65536):
                    pass
        assert _wait(lambda: server.errors == 4)
        assert server.hello_timeout == 10.0  # the default: DTP's own handshake timeout
    finally:
        for s in silent:
            s.close()


def test_a_peer_quiet_after_its_hello_keeps_its_live_session(tmp_path: Path) -> None:
    graph = Graph(tmp_path / "server.db")
    graph.put("doc", {"title": "hello"})
    server = GraphServer(graph, ("127.0.0.1", 0), HostIdentity.generate(), hello_timeout=0.5)
    try:
        with dtp.socket.create_connection(
            server.address, 30, server_key=server.noise_public_key
        ) as s:
            s.sendall(frame([HELLO, VERSION, b"q" * 16, 0, 0]))
            assert _wait(lambda: server.active == 1)
            time.sleep(2.0)  # well past the HELLO deadline: a live subscriber is quiet
            assert server.counts() == {"sessions": 0, "errors": 0, "refused": 0, "active": 1}
            graph.put("doc", {"title": "changed"})  # and still hears of changes
            s.settimeout(30)
            got = b""
            while b"changed" not in got:
                chunk = s.recv(65536)
                assert chunk
                got += chunk
    finally:
        server.close()
        graph.close()


def test_silent_raw_tcp_clients_hold_no_session_slot(
    four_slots: tuple[GraphServer, Graph],
) -> None:
    server, other = four_slots
    raw: list[socket.socket] = []
    try:
        for _ in range(4):  # TCP only, no DTP handshake: held by the listener, not by us
            raw.append(socket.create_connection(server.address, 30))
        _sync_retrying(other, server, 60.0)
        assert other.get("doc") == {"title": "hello"}
        assert server.refused == 0
    finally:
        for r in raw:
            with contextlib.suppress(OSError):
                r.close()


@pytest.mark.parametrize(
    ("bad", "exc"),
    [
        (0, ValueError),
        (-1.0, ValueError),
        (float("nan"), ValueError),
        (True, TypeError),
        ("10", TypeError),
    ],
)
def test_hello_timeout_is_checked(bad: object, exc: type[Exception]) -> None:
    with Graph() as graph, pytest.raises(exc, match="hello_timeout"):
        GraphServer(graph, ("127.0.0.1", 0), HostIdentity.generate(), hello_timeout=bad)  # type: ignore[arg-type]


# -- 3. a write after a merge wins over what was merged ---------------------------------------


def test_a_write_right_after_merging_a_peer_ahead_wins(tmp_path: Path) -> None:
    now = 1_800_000_000_000.0
    local_path = tmp_path / "local.db"
    local = Graph(local_path, now_ms=lambda: now)
    # the peer's clock runs 900 ms ahead: within the 1000 ms drift allowed, so what it
    # writes is merged at once, with a state ahead of everything our clock issued
    peer = Graph(tmp_path / "peer.db", now_ms=lambda: now + 900.0)
    local.put("doc", {"title": "first"})
    theirs = peer.put("doc", {"title": "peer"})
    server = GraphServer(peer, ("127.0.0.1", 0), HostIdentity.generate())
    try:
        connect(local, server.address, server_key=server.noise_public_key, timeout=30)
        assert local.get_field("doc", "title") == "peer"
        assert local.clock.last < theirs  # merging did not move the clock itself...
        mine = local.set("doc", "title", "mine")
        assert mine > theirs  # ...yet the write is newer than what it overwrites
        assert local.get_field("doc", "title") == "mine"
        # after a restart too (the clock comes back from the file; the table with it)
        local.close()
        local = Graph(local_path, now_ms=lambda: now)
        again = local.set("doc", "title", "again")
        assert again > mine
        connect(local, server.address, server_key=server.noise_public_key, timeout=30)
        assert _wait(lambda: peer.get_field("doc", "title") == "again")
        assert peer.state_of("doc", "title") == again
    finally:
        server.close()
        local.close()
        peer.close()


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
    # unacknowledged, and the close of the session waits out its linger (5 s) for it
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
