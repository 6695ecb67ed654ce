"""Pub/sub: a node reads its peers' SUBSCRIBE frames whatever its own
``max_message_size`` (a frame of many long topics was skipped as too large, and the
peer's subscribers were never sent those topics); a message above the cap is still
refused.

Pub/sub: a node tells a peer at most MAX_PEER_TOPICS topics, the nearest
subscribers first, and withdrawals before new topics. A node with MAX_PEER_TOPICS
subscriptions two hops away (or a hostile peer's junk) filled the peer's table with
relayed topics, the peer refused the middle node's own subscription, and that
subscriber was never sent a message."""

from __future__ import annotations

import queue

import pytest

from dtp.messaging.pubsub import MAX_PEER_TOPICS, PubSubNode
from tests.messaging.mesh import Mesh
from tests.support.polling import wait_for


def test_a_node_with_a_small_cap_learns_a_long_subscription_list() -> None:
    mesh = Mesh(2, [], max_message_size=4096)
    try:
        mesh.link(0, 1)
        # 40 topics of 205 bytes: one SUBSCRIBE frame of about 8 KB, above node 1's cap
        topics = [f"t{i:03d}-" + "x" * 200 for i in range(40)]
        subs = [mesh.nodes[0].subscribe(t) for t in topics]
        assert mesh.nodes[1].wait_for_interest(topics[-1], timeout=10)
        assert mesh.nodes[1].links[0].violations == 0
        mesh.nodes[1].publish(topics[7], b"hello")
        assert subs[7].get(timeout=10).data == b"hello"
    finally:
        mesh.close()


def test_a_message_above_the_cap_is_still_refused() -> None:
    mesh = Mesh(2, [], max_message_size=4096)
    mesh.nodes[0] = PubSubNode("n0")  # the default cap, 256 KiB
    try:
        mesh.link(0, 1)
        sub = mesh.nodes[1].subscribe("big")
        assert mesh.nodes[0].wait_for_interest("big", timeout=10)
        mesh.nodes[0].publish("big", b"b" * 20_000)  # above node 1's cap, below the floor
        mesh.nodes[0].publish("big", b"small")
        assert sub.get(timeout=10).data == b"small"
        assert mesh.nodes[1].links[0].violations == 1
        with pytest.raises(queue.Empty):
            sub.get_nowait()
        assert wait_for(lambda: mesh.nodes[1].links[0].received == 1)
    finally:
        mesh.close()


def test_a_node_s_own_subscribers_beat_topics_relayed_from_afar() -> None:
    mesh = Mesh(3, [(0, 1), (1, 2)])
    try:
        far = [mesh.nodes[0].subscribe(f"junk/{i}") for i in range(MAX_PEER_TOPICS)]
        assert mesh.nodes[2].wait_for_interest(f"junk/{MAX_PEER_TOPICS - 1}", timeout=10)
        sub = mesh.nodes[1].subscribe("real")
        assert mesh.nodes[2].wait_for_interest("real", timeout=10)
        assert mesh.nodes[2].links[0].violations == 0
        mesh.nodes[2].publish("real", b"x")
        assert sub.get(timeout=10).data == b"x"
        # the peer's table stays within the limit: one relayed topic made room
        link = mesh.nodes[2].links[0]
        assert wait_for(lambda: link.remote is not None and len(link.remote) == MAX_PEER_TOPICS)
        assert len(far) == MAX_PEER_TOPICS
    finally:
        mesh.close()
