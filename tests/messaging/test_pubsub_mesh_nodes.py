"""Pub/sub nodes keeping a gossip mesh (docs/messaging.md §4.3) over real DTP
connections: messages reach every subscriber through the mesh, nodes of the flooding
kind interoperate, a HELLO of another version is refused, and the wire frames are the
documented vectors."""

from __future__ import annotations

import time
from pathlib import Path

from dtp.messaging._framing import encode_frame
from dtp.messaging._pubsub_mesh import (
    GRAFT,
    HELLO,
    IHAVE,
    IWANT,
    PRUNE,
    MeshParams,
    UnsupportedVersion,
)
from dtp.messaging.pubsub import Link, PubSubNode, Verdict
from tests.messaging.mesh import Mesh, RawPeer, drain

FAST = MeshParams(heartbeat=0.05)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "messaging.md"


def _wait(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def test_mesh_nodes_deliver_every_message_through_meshes_of_bounded_degree() -> None:
    # a ring of 10 with chords: every node has 4 links, D=3 of them in its mesh
    edges = [(i, (i + 1) % 10) for i in range(10)] + [(i, (i + 5) % 10) for i in range(5)]
    edges += [(i, (i + 3) % 10) for i in range(0, 10, 2)]
    params = MeshParams(d=3, d_lo=2, d_hi=4, d_score=1, heartbeat=0.05)
    mesh = Mesh(10, edges, mesh=params)
    try:
        subs = [node.subscribe("t") for node in mesh.nodes]
        mesh.settle("t")
        assert _wait(lambda: all(len(n.mesh_peers("t")) >= 2 for n in mesh.nodes))
        for k in range(20):
            mesh.nodes[k % 10].publish("t", b"m%d" % k)
        for sub in subs:
            assert sorted(drain(sub, 20)) == sorted(b"m%d" % k for k in range(20))
        for node in mesh.nodes:
            assert len(node.mesh_peers("t")) <= params.d_hi
            # a full mesh peer is one of the node's links
            assert set(node.mesh_peers("t")) <= {lk.name for lk in node.links}
    finally:
        mesh.close()


def test_a_flooding_node_and_a_mesh_node_interoperate() -> None:
    mesh = Mesh(3, [], mesh=FAST)
    old = PubSubNode("old", mesh=None)  # the flooding kind: no HELLO, no mesh
    mesh.nodes[2] = old
    mesh.link(0, 1)
    mesh.link(1, 2)
    try:
        subs = [node.subscribe("t") for node in mesh.nodes]
        mesh.settle("t")
        mesh.nodes[0].publish("t", b"from the mesh")
        old.publish("t", b"from the flood")
        for sub in subs:
            assert sorted(drain(sub, 2)) == [b"from the flood", b"from the mesh"]
        middle = mesh.nodes[1]
        # the old node is outside the mesh; the new one counted the flooding node's
        # link as such, and the old node counted the HELLO as one malformed frame
        assert middle.mesh_peers("t") == ["1->0"] or middle.mesh_peers("t") == ["1<-0"]
        [old_link] = old.links
        assert old_link.violations == 1
    finally:
        mesh.close()


def test_a_hello_of_another_version_is_refused_with_the_link() -> None:
    mesh = Mesh(1, [], mesh=FAST)
    try:
        raw = RawPeer(mesh, 0)
        raw.send([HELLO, 3, "future", None])
        assert _wait(lambda: raw.link.closed.is_set())
        assert isinstance(raw.link.error, UnsupportedVersion)
        assert "version 3" in str(raw.link.error)
        assert raw.link.violations == 0  # refused, not scored
        # the node spoke first: its HELLO, then its interest
        assert raw.frames[0] == [HELLO, 2, "n0", None]
    finally:
        mesh.close()


def test_a_mesh_node_grafts_a_raw_peer_serves_its_iwant_and_keeps_its_peer_exchange() -> None:
    mesh = Mesh(1, [], mesh=FAST)
    try:
        sub = mesh.nodes[0].subscribe("t")
        raw = RawPeer(mesh, 0)
        raw.send([HELLO, 2, "raw", "raw-address"])
        raw.subscribe(["t"])
        assert _wait(lambda: [GRAFT, ["t"]] in raw.frames)
        message_id = mesh.nodes[0].publish("t", b"x")
        assert drain(sub, 1) == [b"x"]
        raw.send([IWANT, [message_id]])
        assert _wait(lambda: sum(1 for f in raw.frames if f[0] == 10) == 2)
        assert mesh.nodes[0].exchanged_peers() == {}
        raw.send([PRUNE, ["t"], 60, [["n9", "10.0.0.9:7000"], ["n8", None]]])
        assert _wait(lambda: mesh.nodes[0].mesh_peers("t") == [])
        # the PRUNE's peer exchange, for the application to link to
        assert mesh.nodes[0].exchanged_peers() == {"n9": "10.0.0.9:7000", "n8": None}
        raw.send([IHAVE, "t", [b"\x01" * 16]])
        assert _wait(lambda: [IWANT, [b"\x01" * 16]] in raw.frames)
        counters = mesh.nodes[0].mesh_counters()
        assert counters["graft_sent"] >= 1 and counters["iwant_served"] == 1
        assert counters["iwant_sent"] == 1
        assert _wait(lambda: raw.link.sent == 2)  # the two copies; control not counted
    finally:
        mesh.close()


#: The frames of docs/messaging.md §4.3, as the doc gives them.
VECTORS = {
    "HELLO": (
        [HELLO, 2, "n1", "10.0.0.1:7000"],
        "00000014940e02a26e31ad31302e302e302e313a37303030",
    ),
    "GRAFT": ([GRAFT, ["t"]], "00000005920f91a174"),
    "PRUNE": ([PRUNE, ["t"], 60, [["n2", None]]], "0000000c941091a1743c9192a26e32c0"),
    "IHAVE": (
        [IHAVE, "t", [bytes(range(16))]],
        "000000179311a17491c410000102030405060708090a0b0c0d0e0f",
    ),
    "IWANT": (
        [IWANT, [bytes(range(16))]],
        "00000015921291c410000102030405060708090a0b0c0d0e0f",
    ),
}


def test_the_mesh_frames_are_the_documented_vectors() -> None:
    text = DOCS.read_text()
    for name, (message, hexed) in VECTORS.items():
        assert encode_frame(message).hex() == hexed, name
        assert hexed in text, f"docs/messaging.md lacks the {name} vector"


def test_a_peer_that_sends_invalid_messages_is_pruned_and_not_grafted_again() -> None:
    mesh = Mesh(1, [], mesh=FAST)
    try:
        node = mesh.nodes[0]
        node.subscribe("t")
        node.set_validator("t", lambda message: Verdict.REJECT)
        raw = RawPeer(mesh, 0)
        raw.send([HELLO, 2, "raw", None])
        raw.subscribe(["t"])
        assert _wait(lambda: node.mesh_peers("t") == [raw.link.name])
        raw.send([10, b"\x02" * 16, "t", 3, b"invalid", "raw"])  # rejected: score -1
        assert _wait(lambda: node.mesh_peers("t") == [])
        assert _wait(lambda: any(f[0] == PRUNE for f in raw.frames))
        raw.send([GRAFT, ["t"]])
        assert _wait(lambda: sum(1 for f in raw.frames if f[0] == PRUNE) == 2)
        assert node.mesh_peers("t") == []
        assert node.mesh_counters()["graft_refused"] == 1
    finally:
        mesh.close()


class _Unread:
    """A stream nobody reads (the link's threads are not started)."""

    def recv(self, size: int) -> bytes:
        raise AssertionError("not read")

    def sendall(self, data: bytes) -> None:
        raise AssertionError("not written")


def test_the_meshs_control_frames_take_no_place_of_a_message_and_are_bounded() -> None:
    node = PubSubNode("n")
    link = Link(node, _Unread(), "l", maxsize=4, max_bytes=100_000)  # type: ignore[arg-type]
    graft = encode_frame([GRAFT, ["t"]])
    assert all(link.offer(graft) for _ in range(256))
    assert not link.offer(graft)
    assert link.control_dropped == 1 and link.dropped == 0
    # a message above the byte cap still goes, the queue holding no other message
    assert link.queued_bytes == 0
    assert link.offer(encode_frame([10, b"\x01" * 16, "t", 3, bytes(200_000), None]))
    assert not link.offer(encode_frame([10, b"\x02" * 16, "t", 3, b"small", None]))
    assert link.dropped == 1
