"""A Gun put whose state is ahead of the clock, as gun.js's HAM treats one: taken and
acknowledged ``ok``, not readable (nor sent to the peers following the node) until the
clock reaches its state, and then merged without waiting for another write -- however
far ahead the state is (gun has no bound either); only a full queue refuses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dtp.graph import Graph
from dtp.graph.gun import GunServerThread, serve_in_thread
from tests.support.gun_wire import GunWireClient, node

NOW = 1.7e12


class Clock:
    def __init__(self) -> None:
        self.ms = NOW

    def __call__(self) -> float:
        return self.ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def graph(clock: Clock) -> Iterator[Graph]:
    g = Graph(None, now_ms=clock)
    yield g
    g.close()


@pytest.fixture
def server(graph: Graph) -> Iterator[GunServerThread]:
    with serve_in_thread(graph, site=None) as srv:
        yield srv


def test_a_future_state_is_acknowledged_and_merged_when_its_time_comes(
    server: GunServerThread, graph: Graph, clock: Clock
) -> None:
    with GunWireClient(server.url) as writer, GunWireClient(server.url) as follower:
        assert "put" not in follower.get("room")  # follows the node from now on
        ack = writer.put({"room": node("room", {"topic": "later"}, NOW + 60_000)})
        assert ack.get("ok") is True and "err" not in ack
        assert graph.deferred_count == 1
        assert graph.get("room") is None
        assert "put" not in writer.get("room")
        # the clock passes the state, and nobody writes: the endpoint merges it itself
        clock.ms = NOW + 60_000
        sent = follower.wait_for(lambda m: "room" in m.get("put", {}))
        assert sent["put"]["room"]["topic"] == "later"
        assert graph.get("room") == {"topic": "later"}
        assert graph.deferred_count == 0


def test_a_state_however_far_ahead_waits_rather_than_being_refused(
    server: GunServerThread, graph: Graph
) -> None:
    with GunWireClient(server.url) as peer:
        ack = peer.put({"far": node("far", {"a": 1}, 1e300)})
        assert ack.get("ok") is True
        assert graph.deferred_count == 1 and graph.get("far") is None
        assert "put" not in peer.get("far")


def test_a_full_queue_of_future_states_refuses_the_put(clock: Clock) -> None:
    graph = Graph(None, now_ms=clock, max_deferred_bytes=64)
    try:
        with serve_in_thread(graph, site=None) as server, GunWireClient(server.url) as peer:
            ack = peer.put({"big": node("big", {"a": "x" * 200}, NOW + 60_000)})
            assert "ok" not in ack and "dropped" in ack["err"]
            assert graph.deferred_count == 0
    finally:
        graph.close()
