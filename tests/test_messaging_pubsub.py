"""Pub/sub over real DTP connections: convergence on a 5-peer mesh with loops (so every
message arrives over several paths), de-duplication, the hop limit, a slow subscriber and
a peer that stops reading (neither stalls the others; drops are counted and reported),
and malformed frames."""

from __future__ import annotations

import queue
import struct
import threading
import time
from collections.abc import Iterator

import pytest

import dtp.socket
from dtp.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.framing import encode_frame
from dtp.messaging.pubsub import PubSubNode


class Mesh:
    """Nodes linked by DTP connections on 127.0.0.1."""

    def __init__(self, n: int, edges: list[tuple[int, int]], **kw: object) -> None:
        self.nodes = [PubSubNode(f"n{i}", **kw) for i in range(n)]  # type: ignore[arg-type]
        self.ids = [HostIdentity.generate() for _ in range(n)]
        self.servers = [dtp.socket.create_server(("127.0.0.1", 0), identity=i) for i in self.ids]
        self.socks: list[dtp.socket.DTPSocket] = []
        for a, b in edges:
            self.link(a, b)

    def link(self, a: int, b: int) -> tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]:
        client = dtp.socket.create_connection(
            self.servers[b].address, server_key=self.ids[b].noise_public, timeout=10
        )
        server_side, _ = self.servers[b].accept(timeout=10)
        client.settimeout(None)
        server_side.settimeout(None)
        self.socks += [client, server_side]
        self.nodes[a].attach(client, f"{a}->{b}")
        self.nodes[b].attach(server_side, f"{b}<-{a}")
        return client, server_side

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        for sock in self.socks:
            sock.abort("test over")
        for server in self.servers:
            server.close()


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    # a ring plus chords: every message reaches most nodes over two or more paths
    m = Mesh(5, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 2), (1, 3)])
    yield m
    m.close()


def drain(sub: object, count: int, timeout: float = 10.0) -> list[bytes]:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        try:
            out.append(sub.get(timeout=0.05).data)  # type: ignore[attr-defined]
        except queue.Empty:
            continue
    return out


def test_five_peer_mesh_converges_without_duplicates(mesh: Mesh) -> None:
    subs = [node.subscribe("news") for node in mesh.nodes]
    other = mesh.nodes[3].subscribe("other")
    sent = []
    for i in range(40):
        publisher = mesh.nodes[i % 5]
        publisher.publish("news", f"m{i}".encode())
        sent.append(f"m{i}".encode())
    for sub in subs:
        got = drain(sub, 40)
        assert sorted(got) == sorted(sent)
    time.sleep(0.2)
    for sub in subs:
        assert sub.qsize() == 0  # nothing delivered twice
    assert sum(node.duplicates for node in mesh.nodes) > 0  # loops did carry copies
    assert other.qsize() == 0
    # messages from one publisher arrive in order at every subscriber
    one = [node.subscribe("ordered") for node in mesh.nodes]
    for i in range(30):
        mesh.nodes[2].publish("ordered", bytes([i]))
    for sub in one:
        assert drain(sub, 30) == [bytes([i]) for i in range(30)]


def test_hop_limit(mesh: Mesh) -> None:
    line = Mesh(4, [(0, 1), (1, 2), (2, 3)])
    try:
        subs = [node.subscribe("t") for node in line.nodes]
        line.nodes[0].publish("t", b"short", hops=2)
        assert drain(subs[2], 1) == [b"short"]
        time.sleep(0.3)
        assert subs[3].qsize() == 0 and subs[1].qsize() == 1
        assert line.nodes[2].hop_limited == 1
    finally:
        line.close()


def test_slow_subscriber_drops_are_counted_and_reported(mesh: Mesh) -> None:
    slow = mesh.nodes[1].subscribe("load", maxsize=5)
    fast = mesh.nodes[1].subscribe("load", maxsize=1000)
    for i in range(100):
        mesh.nodes[0].publish("load", bytes([i]))
    assert len(drain(fast, 100)) == 100
    assert slow.dropped == 95 and slow.delivered == 5
    first = [slow.get(timeout=1) for _ in range(5)]
    assert all(d.dropped_before == 0 for d in first)
    mesh.nodes[0].publish("load", b"after")
    nxt = slow.get(timeout=5)
    assert nxt.data == b"after" and nxt.dropped_before == 95


def test_peer_that_stops_reading_never_stalls_the_others() -> None:
    mesh = Mesh(3, [(0, 1)], link_queue=8)
    try:
        # node 2 is linked to node 0 over a connection whose node-2 side nobody reads
        client = dtp.socket.create_connection(
            mesh.servers[2].address, server_key=mesh.ids[2].noise_public, timeout=10
        )
        stuck, _ = mesh.servers[2].accept(timeout=10)
        mesh.socks += [client, stuck]
        client.settimeout(None)
        link = mesh.nodes[0].attach(client, "0->stuck")
        sub = mesh.nodes[1].subscribe("flood")
        payload = b"z" * 60_000
        start = time.monotonic()
        for i in range(100):  # paced by the healthy peer: each arrives while one is stuck
            mesh.nodes[0].publish("flood", payload[:-1] + bytes([i]))
            assert sub.get(timeout=10).data[-1] == i
        assert time.monotonic() - start < 30
        assert link.dropped > 0
        # the stuck peer starts reading again: it is told how many it missed
        mesh.nodes[2].attach(stuck, "stuck")
        deadline = time.monotonic() + 20
        mesh.nodes[0].publish("flood", b"tail")
        while time.monotonic() < deadline:
            reported = sum(lk.dropped_upstream for lk in mesh.nodes[2].links)
            if reported:
                break
            time.sleep(0.05)
            mesh.nodes[0].publish("flood", b"tail")
        assert 0 < reported <= link.dropped
    finally:
        mesh.close()


def test_malformed_frames_are_skipped(mesh: Mesh) -> None:
    sub = mesh.nodes[1].subscribe("x")
    raw = mesh.socks[0]  # node 0's side of the 0-1 link
    raw.sendall(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    raw.sendall(encode_frame([10, b"short-id", "x", 3, b"d", None]))
    raw.sendall(encode_frame([99]))
    mesh.nodes[0].publish("x", b"fine")
    assert drain(sub, 1) == [b"fine"]
    link = next(lk for lk in mesh.nodes[1].links if lk.name == "1<-0")
    assert link.violations == 3
    with pytest.raises(E.PubSubError):
        mesh.nodes[0].publish("", b"x")
    with pytest.raises(E.PubSubError):
        mesh.nodes[0].subscribe("t" * 300)


def test_close_is_clean(mesh: Mesh) -> None:
    mesh.nodes[0].close()
    assert mesh.nodes[0].links == []
    sub = mesh.nodes[0].subscribe("solo")
    mesh.nodes[0].publish("solo", b"local only")
    assert sub.get(timeout=1).data == b"local only"
    threading.Event().wait(0.05)
