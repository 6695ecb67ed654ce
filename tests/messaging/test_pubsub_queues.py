"""Pub/sub: a link's queue is bounded in bytes too, so a peer that stops
reading holds at most ``link_queue_bytes`` of frames (it held ``link_queue`` frames of up
to ``max_message_size`` each: 256 MiB with the defaults), and a frame above the byte cap
still goes when the queue is empty."""

from __future__ import annotations

import threading
import time

import pytest

import dtp.socket
from dtp.messaging._framing import encode_frame
from dtp.messaging.pubsub import DEFAULT_LINK_QUEUE_BYTES, PubSubNode
from tests.messaging.mesh import Mesh
from tests.support.polling import wait_for


def test_a_peer_that_stops_reading_holds_at_most_link_queue_bytes() -> None:
    cap = 1 << 20
    mesh = Mesh(2, [], link_queue_bytes=cap)
    try:
        # node 0 is linked to a connection whose far side nobody reads (and which never
        # sends SUBSCRIBE, so it is sent every message)
        client = dtp.socket.create_connection(
            mesh.servers[1].address, server_key=mesh.ids[1].noise_public, timeout=10
        )
        stuck, _ = mesh.servers[1].accept(timeout=10)
        mesh.socks += [client, stuck]
        client.settimeout(None)
        link = mesh.nodes[0].attach(client, "0->stuck")
        size = 60_000
        for i in range(300):  # 18 MB: more than the connection's window and the cap
            mesh.nodes[0].publish("flood", bytes([i % 256]) * size)
            assert link.queued_bytes <= cap
            assert link._out.qsize() * size <= cap + size  # (and a control frame)
        assert link.dropped > 0
    finally:
        mesh.close()


def test_a_frame_above_the_byte_cap_goes_when_the_queue_is_empty() -> None:
    mesh = Mesh(2, [(0, 1)], link_queue_bytes=100_000)
    try:
        sub = mesh.nodes[1].subscribe("big")
        assert mesh.nodes[0].wait_for_interest("big", timeout=10)
        mesh.nodes[0].publish("big", b"b" * 200_000)
        assert sub.get(timeout=10).data == b"b" * 200_000
        assert mesh.nodes[0].links[0].dropped == 0
    finally:
        mesh.close()


def test_the_default_byte_cap() -> None:
    node = PubSubNode("n")
    assert node.link_queue_bytes == DEFAULT_LINK_QUEUE_BYTES == 16 << 20
    node.close()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"seen_cache": 0}, ValueError),  # each message was delivered once per path
        ({"link_queue": 0}, ValueError),  # queue.Queue(0) is unbounded
        ({"link_queue_bytes": 0}, ValueError),
        ({"max_message_size": 0}, ValueError),  # every link's reader died at once
        ({"max_message_size": 1 << 32}, ValueError),
        ({"max_hops": 256}, ValueError),
        ({"max_hops": -1}, ValueError),
        ({"link_queue": 8.0}, TypeError),
    ],
)
def test_node_sizes_out_of_range_are_refused(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        PubSubNode("n", **kwargs)


def test_a_loop_delivers_each_message_once_with_the_smallest_seen_cache() -> None:
    mesh = Mesh(2, [(0, 1), (1, 0)], seen_cache=1)  # two links: a loop
    try:
        sub = mesh.nodes[1].subscribe("t")
        assert mesh.nodes[0].wait_for_interest("t", 2, timeout=10)
        mesh.nodes[0].publish("t", b"once", hops=6)
        assert sub.get(timeout=10).data == b"once"
        # the copy over the other path (and its echoes) is a duplicate at node 1
        assert wait_for(lambda: mesh.nodes[1].duplicates >= 1)
        assert sub.qsize() == 0
    finally:
        mesh.close()


class _ScriptedStream:
    """A stream whose reader gets ``first``, then (once :attr:`go` is set) ``rest``; the
    events say when the reader asked for more (it had handled what it got). It blocks
    after that until the test ends it."""

    def __init__(self, first: list[bytes], rest: list[bytes] | None = None) -> None:
        self.batches = [list(first), list(rest or [])]
        self.first_done = threading.Event()
        self.go = threading.Event()
        self.drained = threading.Event()
        self.ended = threading.Event()

    def recv(self, bufsize: int) -> bytes:
        if self.batches[0]:
            return self.batches[0].pop(0)
        self.first_done.set()
        self.go.wait()
        if self.batches[1]:
            return self.batches[1].pop(0)
        self.drained.set()
        self.ended.wait()
        return b""

    def sendall(self, data: bytes) -> None:
        pass


def test_repeated_subscribe_frames_cost_the_node_nothing_new() -> None:
    # a peer re-sending the same 4096-topic SUBSCRIBE made the node recompute every
    # topic for every link, under the node's lock, each time (0.3 s a frame at 64 links)
    node = PubSubNode("n")
    quiet = [_ScriptedStream([]) for _ in range(63)]
    frame = encode_frame([12, [[f"t{i}", 3] for i in range(4096)]], 1 << 24)
    hostile = _ScriptedStream([frame], [frame] * 20)
    try:
        for stream in quiet:
            node.attach(stream)  # type: ignore[arg-type]
        node.attach(hostile)  # type: ignore[arg-type]
        assert hostile.first_done.wait(10)
        # the first frame changed every link's interest: let their writers tell them
        assert wait_for(lambda: not any(link._dirty.is_set() for link in node.links))
        # the process's CPU time, not the wall clock: the recomputation is CPU work
        # (6 s of it before), and other processes on a loaded machine do not stretch it
        start = time.process_time()
        hostile.go.set()
        assert hostile.drained.wait(10)
        elapsed = time.process_time() - start
        assert len(node.links[-1].remote or {}) == 4096
        assert elapsed < 2.0, f"20 identical SUBSCRIBE frames took {elapsed:.2f} s of CPU"
    finally:
        for stream in [*quiet, hostile]:
            stream.go.set()
            stream.ended.set()
        node.close()
