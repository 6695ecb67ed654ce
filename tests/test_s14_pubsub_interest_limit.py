"""Pub/sub, session 14: a node tells a peer at most MAX_PEER_TOPICS topics, the nearest
subscribers first, and withdrawals before new topics. A node with MAX_PEER_TOPICS
subscriptions two hops away (or a hostile peer's junk) filled the peer's table with
relayed topics, the peer refused the middle node's own subscription, and that
subscriber was never sent a message."""

from __future__ import annotations

from dtp.messaging.pubsub import MAX_PEER_TOPICS
from tests.polling import wait_for
from tests.test_messaging_pubsub import Mesh


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
