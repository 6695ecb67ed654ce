"""Pub/sub: churn on a mesh, and a stream attached twice.

A node refuses (PubSubError) to attach a stream that one of its links reads: a second
attach of the same stream, or a re-attach after the node (or the link) was closed. Two
readers would split the stream's frames between them, and a closed link's reader
discards what it reads next, frames and part of one, so the new link would skip or
misread nearly every frame. A node rejoins a peer on a new stream."""

from __future__ import annotations

import os
import queue
import threading
import time

import pytest

from dtp.messaging.errors import PubSubError
from dtp.messaging.pubsub import Subscription
from tests.messaging.mesh import Mesh


def _collect_all(sub: Subscription, expected: list[bytes], timeout: float = 45.0) -> list[bytes]:
    """What ``sub`` gets until every one of ``expected`` came, then whatever else arrives
    within 0.3 s (a duplicate would)."""
    out: list[bytes] = []
    missing = set(expected)
    deadline = time.monotonic() + timeout
    while missing and time.monotonic() < deadline:
        try:
            data = sub.get(timeout=0.1).data
        except queue.Empty:
            continue
        out.append(data)
        missing.discard(data)
    time.sleep(0.3)
    while sub.qsize():
        out.append(sub.get_nowait().data)
    return out


def _once(got: list[bytes], expected: list[bytes]) -> bool:
    """Whether ``got`` has each of ``expected`` and nothing twice (a message published
    while a subscriber was away may still reach it, from a neighbour's queue)."""
    return len(set(got)) == len(got) and set(expected) <= set(got)


def test_a_stream_attached_twice_is_refused_and_its_link_keeps_every_frame() -> None:
    mesh = Mesh(2, [])
    try:
        client, _ = mesh.link(0, 1)
        with pytest.raises(PubSubError):
            mesh.nodes[0].attach(client, "0->1 again")
        assert len(mesh.nodes[0].links) == 1
        sub = mesh.nodes[0].subscribe("t", 1000, 64 << 20)
        assert mesh.nodes[1].wait_for_interest("t", timeout=30)
        # frames of many DTP packets: another reading thread took a part of nearly each one
        sent = [os.urandom(100_000) for _ in range(100)]
        for data in sent:
            mesh.nodes[1].publish("t", data)
        assert _collect_all(sub, sent) == sent
        assert mesh.nodes[0].links[0].violations == 0
    finally:
        mesh.close()


def _publish(mesh: Mesh, publishers: list[int], tag: str, count: int) -> list[bytes]:
    """``count`` messages from each publisher, from threads at once; their data."""

    def run(i: int) -> None:
        for k in range(count):
            mesh.nodes[i].publish("c", f"{tag}:{i}:{k}".encode())
            time.sleep(0.001)

    threads = [threading.Thread(target=run, args=(i,)) for i in publishers]
    for thread in threads:
        thread.start()
    return [f"{tag}:{i}:{k}".encode() for i in publishers for k in range(count)]


def test_a_node_leaves_and_rejoins_while_messages_flow_and_one_is_killed() -> None:
    mesh = Mesh(5, [(0, 1), (1, 2), (2, 3), (0, 2), (1, 3)])  # plus 3 - 4 - 0: a ring
    mine = [mesh.link(3, 4)[1], mesh.link(4, 0)[0]]  # node 4's ends of its two links
    try:
        subs = [node.subscribe("c", 100_000) for node in mesh.nodes]
        mesh.settle("c")
        # node 4 leaves while messages flow
        before = _publish(mesh, [0, 1, 2], "before", 100)
        time.sleep(0.05)
        mesh.nodes[4].close()
        for sock in mine:
            # its closed links' readers still read these streams
            with pytest.raises(PubSubError):
                mesh.nodes[4].attach(sock, "the same stream")
            sock.abort("left")
        # ... and rejoins on new streams, twice to the same peer, and to itself
        mesh.link(3, 4)
        mesh.link(4, 0)
        mesh.link(4, 0)
        mesh.link(4, 4)
        subs[4] = mesh.nodes[4].subscribe("c", 100_000)
        mesh.settle("c")
        for i in range(3):
            got = _collect_all(subs[i], before)
            assert sorted(got) == sorted(before), f"node {i} before the rejoin"
        # node 3 is killed (its streams aborted) while messages flow
        after = _publish(mesh, [0, 1, 2], "after", 100)
        time.sleep(0.05)
        for link in mesh.nodes[3].links:
            link.stream.abort("killed")  # type: ignore[attr-defined]
        for i in (0, 1, 2, 4):
            got = _collect_all(subs[i], after)
            assert _once(got, after), f"node {i} after the rejoin"
        assert all(link.violations == 0 for node in mesh.nodes for link in node.links)
    finally:
        mesh.close()
