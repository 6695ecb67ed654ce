"""Pub/sub: frames whose kind is not an int are refused (10.0 passed for PUBLISH), a
topic that is not encodable text is a PubSubError (was a UnicodeEncodeError); a loop
A-B-C-A delivers each message once, and a node leaving while messages flow stalls no
one; subscribe/unsubscribe racing with publishers. Real DTP connections on 127.0.0.1."""

from __future__ import annotations

import os
import queue
import threading
import time

import msgpack
import pytest

from dtp.messaging import errors as E
from dtp.messaging.framing import encode_frame
from dtp.messaging.pubsub import MAX_TOPIC_LENGTH, PubSubNode
from tests.polling import wait_for
from tests.test_messaging_pubsub import Mesh, drain


def test_a_frame_kind_that_is_not_an_int_is_refused() -> None:
    """``[10.0, ...]`` was taken for PUBLISH (10.0 == 10) and delivered; ``[12.0, ...]``
    for SUBSCRIBE. Each is a violation now, and the link goes on."""
    mesh = Mesh(2, [(0, 1)])
    try:
        sub = mesh.nodes[1].subscribe("t")
        assert mesh.nodes[0].wait_for_interest("t", timeout=10)  # node 0's writer is idle
        link = mesh.nodes[1].links[0]
        raw = mesh.socks[0]  # node 0's side: write to node 1 directly
        raw.sendall(encode_frame([10.0, os.urandom(16), "t", 3, b"float kind", None]))
        raw.sendall(encode_frame([12.0, [["u", 0]]]))
        raw.sendall(encode_frame([True, 5]))
        raw.sendall(encode_frame([10, os.urandom(16), "t", 3, b"int kind", None]))
        assert drain(sub, 1) == [b"int kind"]
        time.sleep(0.1)
        assert sub.qsize() == 0
        assert link.violations == 3
        assert "u" not in (link.remote or {})
    finally:
        mesh.close()


@pytest.mark.parametrize("topic", ["\ud800", "a\udfffb", "", "x" * (MAX_TOPIC_LENGTH + 1)])
def test_a_topic_that_is_not_valid_is_a_pubsub_error(topic: str) -> None:
    node = PubSubNode("n")
    with pytest.raises(E.PubSubError):
        node.subscribe(topic)
    with pytest.raises(E.PubSubError):
        node.publish(topic, b"x")
    node.close()


def test_topic_limits_in_bytes() -> None:
    node = PubSubNode("n")
    longest = "é" * (MAX_TOPIC_LENGTH // 2)  # 2 bytes each: exactly the cap
    sub = node.subscribe(longest)
    node.publish(longest, b"fits")
    assert sub.get(timeout=1).data == b"fits"
    with pytest.raises(E.PubSubError):
        node.subscribe(longest + "e")
    node.close()


def test_a_triangle_delivers_each_message_once_and_survives_a_node_leaving() -> None:
    mesh = Mesh(3, [(0, 1), (1, 2), (2, 0)])
    try:
        subs = [node.subscribe("tri") for node in mesh.nodes]
        mesh.settle("tri")
        for i in range(30):
            mesh.nodes[i % 3].publish("tri", bytes([i]))
        for sub in subs:
            assert sorted(drain(sub, 30)) == [bytes([i]) for i in range(30)]
        time.sleep(0.2)
        assert all(sub.qsize() == 0 for sub in subs)
        # node 2 leaves while node 0 publishes: 0 and 1 go on, each message once
        stop = threading.Event()
        sent: list[bytes] = []

        def publish() -> None:
            i = 0
            while not stop.is_set() and i < 2000:
                data = i.to_bytes(4, "big")
                mesh.nodes[0].publish("tri", data)
                sent.append(data)
                i += 1
                time.sleep(0.0005)

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        time.sleep(0.1)
        mesh.nodes[2].close()  # it leaves: its links, then its streams (its owner's)
        for sock in (mesh.socks[3], mesh.socks[4]):  # node 2's ends of 1-2 and 2-0
            sock.abort("node 2 left")
        time.sleep(0.1)
        stop.set()
        publisher.join(5)
        got = drain(subs[1], len(sent), timeout=10)
        assert sorted(got) == sorted(sent)  # the direct link carries them all, once
        time.sleep(0.2)
        assert subs[1].qsize() == 0
        assert wait_for(lambda: len(mesh.nodes[0].links) == 1, 5)
        assert mesh.nodes[0].interested_links("tri") == ["0->1"]
    finally:
        mesh.close()


def test_subscribe_and_unsubscribe_race_with_publishers() -> None:
    """Subscriptions opened and closed in a loop while two threads publish: each
    subscription gets each message at most once, a closed one's get() ends with
    PubSubError, and the node's table is empty at the end."""
    node = PubSubNode("n")
    stop = threading.Event()

    def publish(tag: int) -> None:
        i = 0
        while not stop.is_set():
            node.publish("race", msgpack.packb([tag, i]))
            i += 1

    publishers = [threading.Thread(target=publish, args=(t,), daemon=True) for t in (1, 2)]
    for thread in publishers:
        thread.start()
    try:
        for _ in range(200):
            sub = node.subscribe("race", maxsize=64)
            time.sleep(0.0005)
            sub.close()
            seen = []
            while True:
                try:
                    seen.append(sub.get(timeout=1).data)
                except E.PubSubError:
                    break
                except queue.Empty:  # pragma: no cover - the marker is always queued
                    pytest.fail("get() on a closed subscription waited")
            assert len(seen) == len(set(seen)) <= 64
    finally:
        stop.set()
        for thread in publishers:
            thread.join(5)
    assert node._subs == {}
    node.close()
