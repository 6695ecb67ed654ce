"""Graph peers on the LAN (docs/graph.md, "LAN discovery"), in one process over real mDNS
on the loopback interface: a GraphServer announced as a graph peer of its namespace,
found by that namespace only and synced with at the key its record names; and
sync_with_lan, which finds the other peers of its namespace and keeps them in sync with
no address, key or ledger given. (The same across two machines on one bridge:
tests/graph/test_lan_two_machines.py.)"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dtp.discovery import lan
from dtp.graph import Graph, GraphServer, LanSync, connect, sync_with_lan
from dtp.graph.sync._messages import VERSION
from dtp.identity.keys import HostIdentity

LOOPBACK = ["127.0.0.1"]
RUN = f"{os.getpid()}-{secrets.token_hex(4)}"
"""In each namespace: other test processes may run these tests on the same loopback."""
ON_LOOPBACK = {"address": ("127.0.0.1", 0), "interfaces": LOOPBACK}


def peer(graph: Graph, namespace: str, **kwargs: Any) -> LanSync:
    """A LAN peer of ``graph`` in this run's ``namespace``, on loopback."""
    return sync_with_lan(
        graph, HostIdentity.generate(), namespace=f"{namespace}-{RUN}", **ON_LOOPBACK, **kwargs
    )


def eventually(check: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


@pytest.fixture
def discovery() -> Iterator[lan.LanDiscovery]:
    with lan.LanDiscovery(LOOPBACK) as mdns:
        yield mdns


def test_an_announced_graph_server_is_found_by_its_namespace_and_synced_with(
    discovery: lan.LanDiscovery,
) -> None:
    served, fresh = Graph(None), Graph(None)
    served.put("note/1", {"text": "found on the LAN"})
    server = GraphServer(
        served,
        ("127.0.0.1", 0),
        HostIdentity.generate(),
        announce=True,
        namespace="notes-" + RUN,
        discovery=discovery,
    )
    key = server.noise_public_key
    try:
        assert server.announcement is not None
        with (
            lan.browse(discovery=discovery, graph="notes-" + RUN, key=key) as notes,
            lan.browse(discovery=discovery, graph="votes-" + RUN, key=key) as votes,
        ):
            peer = notes.wait_for(timeout=10)
            assert (peer.graph, peer.record.graph_sync) == ("notes-" + RUN, VERSION)
            assert peer.endpoints == (server.address,)
            connect(fresh, peer.endpoints[0], server_key=peer.key, timeout=10)
            assert fresh.get("note/1") == {"text": "found on the LAN"}
            assert votes.peers() == []  # (another namespace's browser never saw it)
            server.close()
            assert server.announcement.closed
            eventually(lambda: notes.peers() == [])  # (its goodbye)
    finally:
        server.close()
        served.close()
        fresh.close()


def test_two_peers_find_each_other_and_stay_in_sync() -> None:
    a, b = Graph(None), Graph(None)
    a.put("from/a", {"n": 1})
    b.put("from/b", {"n": 2})
    try:
        with (
            peer(a, "t1") as on_a,
            peer(b, "t1") as on_b,
        ):
            assert [p.key for p in on_a.wait_for_peers(1, 20)] == [on_b.key]
            assert [p.key for p in on_b.wait_for_peers(1, 20)] == [on_a.key]
            eventually(lambda: a.get("from/b") and b.get("from/a"))
            assert (a.get("from/b"), b.get("from/a")) == ({"n": 2}, {"n": 1})
            # live: a change after the catch-up goes over the session
            a.put("later/a", {"n": 3})
            eventually(lambda: b.get("later/a") == {"n": 3})
            # one session between the two, whichever side made it
            assert on_a.server is not None and on_b.server is not None
            assert on_a.server.active + on_b.server.active == 1
            on_b.close()
            eventually(lambda: on_a.peers() == [])
    finally:
        a.close()
        b.close()


def test_allow_keeps_out_the_peers_it_does_not_name() -> None:
    a, b = Graph(None), Graph(None)
    b.put("from/b", {"n": 2})
    stranger = HostIdentity.generate().noise_public
    try:
        with (
            peer(a, "t2", allow={stranger}, grace=0.2) as closed,
            peer(b, "t2", grace=0.2) as open_,
        ):
            # b finds a and tries; a's server refuses it, and a does not try b
            eventually(lambda: open_.failures >= 1)
            assert closed.peers() == [] and open_.peers() == []
            assert a.get("from/b") is None
            assert closed.server is not None and closed.server.counts()["sessions"] == 0
    finally:
        a.close()
        b.close()


def test_peers_of_another_namespace_are_left_alone() -> None:
    a, b = Graph(None), Graph(None)
    b.put("from/b", {"n": 2})
    try:
        with (
            peer(a, "t3", grace=0.2) as x,
            peer(b, "t4", grace=0.2) as y,
        ):
            time.sleep(2.0)  # (each browser has seen the other's announcement by now)
            assert x.peers() == [] and y.peers() == []
            assert (x.sessions, y.sessions, x.failures, y.failures) == (0, 0, 0, 0)
            assert a.get("from/b") is None
    finally:
        a.close()
        b.close()


def test_arguments_are_checked() -> None:
    graph = Graph(None)
    try:
        with pytest.raises(TypeError, match="identity"):
            sync_with_lan(graph, "me")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="allow"):
            sync_with_lan(graph, HostIdentity.generate(), allow={b"short"}, **ON_LOOPBACK)
        with pytest.raises(ValueError, match="max_peers"):
            sync_with_lan(graph, HostIdentity.generate(), max_peers=0, **ON_LOOPBACK)
        with pytest.raises(TypeError, match="announce"):
            GraphServer(graph, ("127.0.0.1", 0), HostIdentity.generate(), announce="yes")  # type: ignore[arg-type]
    finally:
        graph.close()
