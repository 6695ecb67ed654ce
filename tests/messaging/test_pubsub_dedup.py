"""Pub/sub de-duplication and node IDs (docs/messaging.md §4), over real DTP connections:

- the seen cache binds a message id to the message's topic and data, so a bad
  neighbour's copy of a genuine id with other content cannot make the genuine message a
  duplicate (neither delivered nor forwarded at the node);
- ``PubSubNode`` refuses a ``node_id`` its peers would refuse as a PUBLISH origin, rather
  than have every message it publishes lost at the first hop.
"""

from __future__ import annotations

import os
import queue
import time

import pytest

from dtp.messaging import pubsub
from dtp.messaging.pubsub import PubSubNode, Subscription
from tests.messaging.mesh import Mesh, RawPeer
from tests.support.polling import wait_for

PUBLISH = 10


def until(sub: Subscription, marker: bytes, timeout: float = 30.0) -> list[bytes]:
    """The data ``sub`` gets before ``marker`` (which must come within ``timeout``)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"{marker!r} never came; got {got!r}")
        try:
            data = sub.get(timeout=left).data
        except queue.Empty:
            continue  # the deadline check above ends the wait
        if data == marker:
            return got
        got.append(data)


@pytest.mark.parametrize(
    "poison",
    [
        # the same id on a topic nobody subscribes to
        {"topic": "nobody/listens", "data": b"", "origin": None},
        # the same id and topic with other data: delivered as what it is (any peer can
        # publish), but not in place of the genuine message
        {"topic": "news", "data": b"fake news", "origin": "publisher"},
    ],
    ids=["topic", "data"],
)
def test_a_copy_of_an_id_with_other_content_does_not_shadow_the_message(
    poison: dict[str, object],
) -> None:
    mesh = Mesh(2, [(0, 1)])  # node 0 (N) with node 1 (M) behind it
    try:
        n, m = mesh.nodes
        attacker = RawPeer(mesh, 0, "attacker")
        honest = RawPeer(mesh, 0, "honest")
        sub_n, sub_m = n.subscribe("news"), m.subscribe("news")
        assert n.wait_for_interest("news", timeout=30)  # M's interest reached N
        x = os.urandom(16)  # the id of a genuine message the attacker saw elsewhere
        attacker.send([PUBLISH, x, poison["topic"], 255, poison["data"], poison["origin"]])
        # the attacker's marker comes after its copy on the same link: once it is
        # delivered, the copy is in N's cache
        attacker.send([PUBLISH, os.urandom(16), "news", 8, b"marker 1", "attacker"])
        until(sub_n, b"marker 1")
        until(sub_m, b"marker 1")

        honest.send([PUBLISH, x, "news", 8, b"real news", "publisher"])
        honest.send([PUBLISH, os.urandom(16), "news", 8, b"marker 2", "publisher"])
        assert until(sub_n, b"marker 2") == [b"real news"]  # delivered at N...
        assert until(sub_m, b"marker 2") == [b"real news"]  # ...and forwarded beyond it

        # a true copy (same id, topic and data) is still a duplicate, whatever origin it
        # states (nobody checks one): not delivered again
        duplicates = n.duplicates
        honest.send([PUBLISH, x, "news", 8, b"real news", "publisher"])
        attacker.send([PUBLISH, x, "news", 8, b"real news", "impostor"])
        honest.send([PUBLISH, os.urandom(16), "news", 8, b"marker 3", "publisher"])
        assert wait_for(lambda: n.duplicates == duplicates + 2, timeout=30)
        assert until(sub_n, b"marker 3") == []
        assert until(sub_m, b"marker 3") == []
    finally:
        mesh.close()


@pytest.mark.parametrize(
    ("node_id", "error"),
    [
        ("n" * 257, ValueError),  # peers refuse an origin over 256 characters
        ("", ValueError),  # (was silently replaced by a random id)
        ("a\ud800", ValueError),  # a lone surrogate: not text the wire can carry
        (b"0123456789abcdef", TypeError),
        (42, TypeError),
    ],
    ids=["too-long", "empty", "surrogate", "bytes", "int"],
)
def test_a_node_id_peers_would_refuse_is_refused(node_id: object, error: type) -> None:
    with pytest.raises(error, match="node_id"):
        PubSubNode(node_id)  # type: ignore[arg-type]


def test_the_longest_node_id_is_the_receivers_limit() -> None:
    """256 characters (the receiver's MAX_ORIGIN_LENGTH; 2-byte ones here, the limit is
    in characters) reach a peer over a real link with no violation there, and one more
    is refused at once instead of lost at the peer. On a loop, the node's own message
    coming back is a duplicate: a published message is remembered under the key its
    copies get (origin: the node id)."""
    with pytest.raises(ValueError, match="node_id"):
        PubSubNode("n" * 257)
    assert pubsub.MAX_ORIGIN_LENGTH == 256  # the limit the receiver checks an origin by
    node_id = "é" * pubsub.MAX_ORIGIN_LENGTH  # 512 bytes of UTF-8
    mesh = Mesh(2, [])
    try:
        mesh.nodes[0] = PubSubNode(node_id)
        mesh.link(0, 1)
        mesh.link(1, 0)  # two links: every message comes back round the loop
        a, b = mesh.nodes
        sub_a, sub_b = a.subscribe("t"), b.subscribe("t")
        mesh.settle("t")
        mid = a.publish("t", b"hello")
        got = sub_b.get(timeout=30)
        assert (got.data, got.message_id, got.origin) == (b"hello", mid, node_id)
        assert sub_a.get(timeout=30).data == b"hello"
        assert wait_for(lambda: a.duplicates >= 1, timeout=30)  # it came back...
        a.publish("t", b"marker")
        assert until(sub_a, b"marker") == []  # ...and was not delivered again
        assert until(sub_b, b"marker") == []
        assert [link.violations for link in b.links] == [0, 0]
    finally:
        mesh.close()
