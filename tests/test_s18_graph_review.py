"""Review of the graph sync server and clock (s18), over real DTP on 127.0.0.1:

1. ``GraphServer.errors`` was counted outside the lock that guards the other counters
   (two sessions failing at once could lose a count); it is now counted under it, with
   the session's other counters, and :meth:`GraphServer.counts` reads them together.
2. A peer that connected and never sent HELLO held its session slot for good (DTP
   keepalives keep the connection from its idle timeout): ``max_sessions`` such peers
   locked every other peer out. The server now cuts off a peer without a HELLO after
   ``hello_timeout`` (10 s by default).
3. ``HybridClock.observe`` was never called, and need not be: a write takes a state
   past what the table holds for its fields, so it wins over a state just merged from
   a peer whose clock runs ahead. The dead method is gone; the tests hold the
   behaviour.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import dtp.socket
from dtp.connection import ConnectionConfig
from dtp.errors import ConnectionClosed, DTPError
from dtp.graph import Graph, GraphServer, connect
from dtp.graph.sync import HELLO, VERSION
from dtp.keys import HostIdentity
from tests.graph_wire import frame
from tests.polling import wait_for


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
                # the session's thread is past its abort: a count made outside the lock
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
