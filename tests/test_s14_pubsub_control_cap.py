"""Pub/sub, session 14: a node reads its peers' SUBSCRIBE frames whatever its own
``max_message_size`` (a frame of many long topics was skipped as too large, and the
peer's subscribers were never sent those topics); a message above the cap is still
refused."""

from __future__ import annotations

import queue

import pytest

from dtp.messaging.pubsub import PubSubNode
from tests.polling import wait_for
from tests.test_messaging_pubsub import Mesh


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
